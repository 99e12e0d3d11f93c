//! How to reach etcd and where the record lives: [`EtcdOptions`].

use std::fmt;
#[cfg(feature = "etcd-tls")]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::ConnectOptions;
#[cfg(feature = "etcd-tls")]
use etcd_client::{Certificate, Identity, TlsOptions};

use super::error::config_error;
use crate::error::LockError;

/// The prefix [`EtcdLock`](super::EtcdLock) puts before the election name: the record of election
/// `kube-scheduler` lives under `/leaderelection/kube-scheduler`.
pub const DEFAULT_PREFIX: &str = "/leaderelection/";

/// How long [`connect`](super::connect) waits for each endpoint by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for etcd to start answering by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS settings of a connection: none can exist without the `etcd-tls` feature.
#[cfg(feature = "etcd-tls")]
pub(super) type Tls = TlsOptions;
#[cfg(not(feature = "etcd-tls"))]
#[derive(Clone)]
pub(super) enum Tls {}

/// How to reach etcd and how [`EtcdLock`](super::EtcdLock) stores its record.
///
/// The TLS and credential options carry the names of kube-apiserver's flags, so a
/// component can map its own `--etcd-servers`, `--etcd-cafile`, `--etcd-certfile` and
/// `--etcd-keyfile` onto them one to one.
///
/// # Examples
///
/// ```
/// use leaderelection::lock::etcd::{parse_servers, EtcdOptions};
///
/// // --etcd-servers=https://10.240.0.10:2379,https://10.240.0.11:2379 --etcd-cafile=...
/// let endpoints = parse_servers("https://10.240.0.10:2379,https://10.240.0.11:2379");
/// let options = EtcdOptions::new()
///     .ca_file("/etc/etcd/ca.pem")
///     .cert_file("/etc/etcd/kubernetes.pem")
///     .key_file("/etc/etcd/kubernetes-key.pem")
///     .native_lease(true);
/// # let _ = (endpoints, options);
/// ```
#[derive(Clone)]
pub struct EtcdOptions {
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) user: Option<(String, String)>,
    pub(super) prefix: String,
    pub(super) native_lease: bool,
    pub(super) connect_timeout: Duration,
    pub(super) request_timeout: Duration,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            // Never the password.
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("prefix", &self.prefix)
            .field("native_lease", &self.native_lease)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl EtcdOptions {
    /// Plain connections, no credentials, [`DEFAULT_PREFIX`], no native lease.
    pub fn new() -> Self {
        Self {
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            native_lease: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The CA bundle that signed the etcd servers' certificates (kube-apiserver's
    /// `--etcd-cafile`). Required for `https://` endpoints. Default: none.
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The client certificate presented to etcd (`--etcd-certfile`), with
    /// [`key_file`](Self::key_file). Default: none.
    #[must_use]
    pub fn cert_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(path.into());
        self
    }

    /// The private key of the client certificate (`--etcd-keyfile`). Default: none.
    #[must_use]
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// etcd user name and password (etcd's `--user`). The client renews its auth token
    /// by itself when etcd expires it. Default: none.
    #[must_use]
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// What [`EtcdLock`](super::EtcdLock) puts before the election name to form its key (verbatim, so
    /// end it with `/`). Default [`DEFAULT_PREFIX`].
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Whether [`EtcdLock`](super::EtcdLock) binds the key to an etcd lease whose TTL is the holder's
    /// lease duration, so that etcd deletes the record when the leader dies and
    /// watching standbys take over at once. Default false.
    #[must_use]
    pub fn native_lease(mut self, on: bool) -> Self {
        self.native_lease = on;
        self
    }

    /// How long [`connect`](super::connect) waits for each endpoint to answer. Default 5s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a request waits for the member to start answering before it fails and
    /// the next request goes to another endpoint. A frozen member keeps its connections
    /// open and never answers: this bounds what it costs. Keep it below the elector's
    /// `renew_deadline - retry_period` so that a renewal stuck on such a member leaves
    /// time for one more on another. Established watches are not affected. Default 5s.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The TLS settings, with the files read; `None` when no file is set.
    pub(super) fn tls(&self) -> Result<Option<Tls>, LockError> {
        if self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
        self.tls_files()
    }

    #[cfg(not(feature = "etcd-tls"))]
    fn tls_files(&self) -> Result<Option<Tls>, LockError> {
        Err(config_error(
            "TLS to etcd (--etcd-cafile, --etcd-certfile, --etcd-keyfile) needs \
             leaderelection's `etcd-tls` feature; this build has no TLS stack",
        ))
    }

    #[cfg(feature = "etcd-tls")]
    fn tls_files(&self) -> Result<Option<Tls>, LockError> {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_file(ca, "--etcd-cafile")?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_file(cert, "--etcd-certfile")?,
                    read_file(key, "--etcd-keyfile")?,
                ));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(config_error(
                    "an etcd client certificate (--etcd-certfile) needs its key (--etcd-keyfile)",
                ))
            }
            (None, Some(_)) => {
                return Err(config_error(
                    "an etcd client key (--etcd-keyfile) needs its certificate (--etcd-certfile)",
                ))
            }
        }
        Ok(Some(tls))
    }

    pub(super) fn connect_options(&self, tls: Option<Tls>, with_user: bool) -> ConnectOptions {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            // A member that lost its quorum must fail requests and end watches at once
            // instead of hanging until the elector's deadline.
            .with_require_leader(true)
            // Finds dead connections (a frozen member keeps its sockets open). etcd
            // refuses pings more often than every 5s and pings without a stream.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false);
        if let Some(tls) = tls {
            #[cfg(feature = "etcd-tls")]
            {
                o = o.with_tls(tls);
            }
            #[cfg(not(feature = "etcd-tls"))]
            match tls {}
        }
        if let (true, Some((user, password))) = (with_user, &self.user) {
            o = o.with_user(user, password).with_auto_token_refresh(true);
        }
        o
    }
}

#[cfg(feature = "etcd-tls")]
fn read_file(path: &Path, flag: &str) -> Result<Vec<u8>, LockError> {
    std::fs::read(path).map_err(|e| {
        config_error(format!(
            "cannot read the etcd TLS file {} ({flag}): {e}",
            path.display()
        ))
    })
}
