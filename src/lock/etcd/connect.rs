//! Connecting to an etcd cluster: every endpoint checked, requests pinned to one
//! member with failover.

use etcd_client::{Client, ConnectOptions};
use tonic::Code;
use tracing::warn;

use super::channel;
use super::error::{config_error, describe, map_error, BACKEND};
use super::options::EtcdOptions;
use crate::error::LockError;

/// Splits a comma-separated endpoint list, as in kube-apiserver's
/// `--etcd-servers=https://10.240.0.10:2379,https://10.240.0.11:2379`, dropping blanks.
/// [`connect`] checks each entry.
pub fn parse_servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Connects to an etcd cluster through all of `endpoints`, balancing requests across
/// those that answer, so the client keeps working while any minority of members is
/// down.
///
/// Each endpoint is asked for its status first, alone, so that a wrong address or
/// certificate is reported by name. Unreachable endpoints are logged and skipped while
/// at least one answers; then the credentials, if any, are checked.
///
/// # Errors
///
/// - [`LockError::Unavailable`] naming each endpoint and why, when none answers, when
///   an endpoint is not an `http://` or `https://` URL (or `host:port`), when a TLS
///   file cannot be read, or when an `https://` endpoint has no CA file;
/// - [`LockError::Forbidden`] naming the user when etcd refuses the credentials.
///
/// # Examples
///
/// ```no_run
/// use leaderelection::lock::etcd::{connect, EtcdOptions};
///
/// # async fn f() -> Result<(), leaderelection::LockError> {
/// let client = connect(&["http://127.0.0.1:2379"], &EtcdOptions::new()).await?;
/// # let _ = client; Ok(()) }
/// ```
pub async fn connect<E: AsRef<str>>(
    endpoints: &[E],
    options: &EtcdOptions,
) -> Result<Client, LockError> {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| e.as_ref().trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(config_error(
            "no etcd endpoint given; pass at least one, like --etcd-servers=https://127.0.0.1:2379",
        ));
    }
    let tls = options.tls()?;
    for e in &endpoints {
        check_endpoint(e, options)?;
    }

    let probes = futures::future::join_all(
        endpoints
            .iter()
            .map(|e| probe(e, options.connect_options(tls.clone(), false), options)),
    )
    .await;
    let mut failures = Vec::new();
    for (e, res) in endpoints.iter().zip(probes) {
        if let Err(why) = res {
            failures.push(format!("{e}: {why}"));
        }
    }
    if failures.len() == endpoints.len() {
        return Err(LockError::unavailable(
            BACKEND,
            format!(
                "no etcd endpoint answered; check the addresses and TLS files: {}",
                failures.join("; ")
            ),
        ));
    }
    for f in &failures {
        warn!(endpoint = %f, "etcd endpoint unreachable; using the others");
    }

    let joined = endpoints.join(",");
    Client::connect_with_balanced_channel(
        &endpoints,
        Some(options.connect_options(tls, true)),
        channel::Pinned,
    )
    .await
    .map_err(|e| {
        let what = match &options.user {
            Some((user, _)) => format!("cannot log in to etcd at {joined} as user {user:?}"),
            None => format!("cannot connect to etcd at {joined}"),
        };
        map_error(what, e)
    })
}

/// Asks one endpoint, alone, for its status. Any answer from etcd counts, even a
/// refusal: the point is to name endpoints that cannot be reached at all.
async fn probe(
    endpoint: &str,
    connect: ConnectOptions,
    options: &EtcdOptions,
) -> Result<(), String> {
    let attempt = async {
        let mut client = Client::connect([endpoint], Some(connect)).await?;
        client.status().await
    };
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Err(_) => Err(format!("no answer within {:?}", options.connect_timeout)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(etcd_client::Error::GRpcStatus(s))) if answered(&s) => Ok(()),
        Ok(Err(e)) => Err(describe(&e)),
    }
}

/// True when a status came from an etcd server rather than from the transport.
fn answered(s: &tonic::Status) -> bool {
    !matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

fn check_endpoint(e: &str, options: &EtcdOptions) -> Result<(), LockError> {
    let (tls, rest) = if let Some(rest) = e.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = e.strip_prefix("http://") {
        (false, rest)
    } else if e.contains("://") {
        return Err(config_error(format!(
            "etcd endpoint {e:?} has an unknown scheme; use http://host:port or https://host:port"
        )));
    } else {
        (options.ca_file.is_some(), e)
    };
    let host_port = rest.trim_end_matches('/');
    let port_ok = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok || host_port.contains('/') {
        return Err(config_error(format!(
            "etcd endpoint {e:?} is not a host:port URL like https://10.240.0.10:2379"
        )));
    }
    if tls && options.ca_file.is_none() {
        return Err(config_error(format!(
            "etcd endpoint {e:?} uses TLS but no CA file is set; pass --etcd-cafile"
        )));
    }
    let has_tls_files = options.ca_file.is_some() || options.cert_file.is_some();
    if !tls && has_tls_files {
        return Err(config_error(format!(
            "etcd endpoint {e:?} is plain http but TLS files are set; use https://"
        )));
    }
    Ok(())
}
