//! TLS for the test API server, with a fixed certificate.
//!
//! The files in `tls/` are a test CA and a certificate it signed for `127.0.0.1`
//! and `localhost`, valid from 2020 to 2120, with ECDSA P-256 keys. The private keys
//! are public in this crate's source: trust the CA only in tests (the clients and
//! kubeconfigs of [`ApiServer`](super::ApiServer) trust it for this server alone).
//! They were made with OpenSSL: a self-signed CA (`basicConstraints=critical,CA:TRUE`)
//! and a server certificate (`extendedKeyUsage=serverAuth`,
//! `subjectAltName=IP:127.0.0.1,DNS:localhost`), both with `openssl ca -startdate
//! 20200101000000Z -enddate 21200101000000Z`.

use std::io;
use std::sync::Arc;

use base64::Engine;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The CA that signed the server's certificate, PEM.
pub(crate) const CA_PEM: &str = include_str!("tls/ca.pem");
const CERT_PEM: &str = include_str!("tls/server.pem");
const KEY_PEM: &str = include_str!("tls/server-key.pem");

fn invalid(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("test API server {what}: {e}"),
    )
}

/// The server side: HTTP/1.1 over TLS with the fixed certificate.
pub(crate) fn acceptor() -> io::Result<TlsAcceptor> {
    let cert = CertificateDer::from_pem_slice(CERT_PEM.as_bytes())
        .map_err(|e| invalid("certificate", e))?;
    let ca = CertificateDer::from_pem_slice(CA_PEM.as_bytes()).map_err(|e| invalid("CA", e))?;
    let key = PrivateKeyDer::from_pem_slice(KEY_PEM.as_bytes()).map_err(|e| invalid("key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert, ca], key)
        .map_err(|e| invalid("TLS setup", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The CA certificate in DER, as `kube::Config::root_cert` takes it.
pub(crate) fn ca_der() -> Vec<u8> {
    CertificateDer::from_pem_slice(CA_PEM.as_bytes())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

/// The CA certificate as a kubeconfig's `certificate-authority-data`.
pub(crate) fn ca_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(CA_PEM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_certificate_loads() {
        assert!(acceptor().is_ok());
        assert!(!ca_der().is_empty());
        assert!(ca_base64().starts_with("LS0tLS1CRUdJTi"));
    }
}
