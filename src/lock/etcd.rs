//! The etcd lock: the record's JSON under one key, compared and swapped on the key's
//! mod revision, watched for changes, and optionally bound to an etcd lease.
//!
//! Also the connection shared by the etcd backends: [`connect`] takes the endpoints
//! and [`EtcdOptions`] (TLS files and credentials named like kube-apiserver's
//! `--etcd-*` flags) and checks every endpoint, so that a wrong address, certificate
//! or password is reported by name.
//!
//! etcd's own election protocol, the one `etcdctl elect` and Go's `concurrency`
//! package speak, is [`EtcdElection`](crate::EtcdElection).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, TxnResponse, WatchOptions,
};
use tonic::Code;
use tracing::{debug, warn};

use super::{LeaseLock, LockEvent, Version, Versioned, WatchStream};
use crate::error::{BoxError, LockError};
use crate::record::{InvalidRecord, LeaderElectionRecord};

pub(crate) const BACKEND: &str = "etcd";

/// The prefix [`EtcdLock`] puts before the election name: the record of election
/// `kube-scheduler` lives under `/leaderelection/kube-scheduler`.
pub const DEFAULT_PREFIX: &str = "/leaderelection/";

/// How long [`connect`] waits for each endpoint by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for etcd to start answering by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach etcd and how [`EtcdLock`] stores its record.
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
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    user: Option<(String, String)>,
    prefix: String,
    native_lease: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
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

    /// What [`EtcdLock`] puts before the election name to form its key (verbatim, so
    /// end it with `/`). Default [`DEFAULT_PREFIX`].
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Whether [`EtcdLock`] binds the key to an etcd lease whose TTL is the holder's
    /// lease duration, so that etcd deletes the record when the leader dies and
    /// watching standbys take over at once. Default false.
    #[must_use]
    pub fn native_lease(mut self, on: bool) -> Self {
        self.native_lease = on;
        self
    }

    /// How long [`connect`] waits for each endpoint to answer. Default 5s.
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
    fn tls(&self) -> Result<Option<TlsOptions>, LockError> {
        if self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
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

    fn connect_options(&self, tls: Option<TlsOptions>, with_user: bool) -> ConnectOptions {
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
            o = o.with_tls(tls);
        }
        if let (true, Some((user, password))) = (with_user, &self.user) {
            o = o.with_user(user, password).with_auto_token_refresh(true);
        }
        o
    }
}

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
        failover::Pinned,
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

fn read_file(path: &Path, flag: &str) -> Result<Vec<u8>, LockError> {
    std::fs::read(path).map_err(|e| {
        config_error(format!(
            "cannot read the etcd TLS file {} ({flag}): {e}",
            path.display()
        ))
    })
}

/// A setting that cannot work, reported when connecting.
fn config_error(message: impl Into<String>) -> LockError {
    LockError::unavailable(BACKEND, message.into())
}

/// An etcd client error with what was being done, kept as the source of a [`LockError`].
#[derive(Debug)]
pub(crate) struct EtcdError {
    context: String,
    source: etcd_client::Error,
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, describe(&self.source))
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The client error and its causes on one line; gRPC statuses as `Code: message`.
fn describe(e: &etcd_client::Error) -> String {
    let mut text = match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    };
    let mut cause = std::error::Error::source(e);
    if let etcd_client::Error::GRpcStatus(s) = e {
        cause = std::error::Error::source(s);
    }
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// True when etcd refused the credentials or the permission.
fn is_auth_error(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(s) = e else {
        return false;
    };
    if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) {
        return true;
    }
    let m = s.message();
    m.contains("authentication failed")
        || m.contains("permission denied")
        || m.contains("invalid auth token")
        || m.contains("user name is empty")
}

/// True when etcd says the lease does not exist (expired or revoked).
pub(crate) fn is_lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::NotFound || s.message().contains("lease not found")
        }
        _ => false,
    }
}

/// Maps a client error: refused credentials are [`LockError::Forbidden`], everything
/// else (unreachable, no leader, timeouts) [`LockError::Unavailable`].
pub(crate) fn map_error(context: String, e: etcd_client::Error) -> LockError {
    let forbidden = is_auth_error(&e);
    let source: BoxError = Box::new(EtcdError { context, source: e });
    if forbidden {
        LockError::Forbidden {
            backend: BACKEND,
            source,
        }
    } else {
        LockError::Unavailable {
            backend: BACKEND,
            source,
        }
    }
}

/// A [`LeaseLock`] on etcd: the record's JSON under one key (`prefix + name`,
/// [`DEFAULT_PREFIX`] by default), the same JSON client-go writes.
///
/// - `get` reads the key; the version is its `mod_revision`, which grows across the
///   whole cluster with every write, so it doubles as the fencing token.
/// - `create` is a transaction that requires the key to be absent
///   (`create_revision == 0`); `update` one that requires `mod_revision == expected`
///   ([`LockError::Conflict`] otherwise). No write is ever blind.
/// - `watch` follows the key with an etcd watch, so standbys wake on every change and
///   take a released or deleted record at once.
///
/// # Native lease mode
///
/// With [`native_lease(true)`](Self::native_lease) the key is bound to an etcd lease
/// whose TTL is the holder's `leaseDurationSeconds`. Each renewal sends one
/// keep-alive on that lease, then the compare-and-swap write; there is no background
/// keep-alive task. When the leader dies, etcd deletes the key once the TTL runs out
/// and watching standbys take over at once. When the lease is gone (expired or
/// revoked), the next renewal fails with [`LockError::Conflict`] and, the key being
/// gone, the elector steps down at once: no leader survives its lease. A lease
/// granted for a write that fails is revoked, so no key or lease is left behind; a
/// release writes the record without a lease and revokes it.
///
/// Do not share one `EtcdLock` between electors: in native lease mode it holds the
/// lease of its own last write. Give each elector its own (clients are cheap to clone).
///
/// # Examples
///
/// ```no_run
/// use leaderelection::lock::etcd::{EtcdLock, EtcdOptions};
/// use leaderelection::{Config, LeaderElector};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let endpoints = ["http://10.240.0.10:2379", "http://10.240.0.11:2379", "http://10.240.0.12:2379"];
/// let lock = EtcdLock::connect(&endpoints, EtcdOptions::new().native_lease(true), "kube-scheduler").await?;
/// let elector = LeaderElector::new(lock, Config::new("kube-scheduler"))?;
/// elector
///     .run(CancellationToken::new(), |leadership| async move {
///         leadership.lost().await;
///     })
///     .await;
/// # Ok(()) }
/// ```
pub struct EtcdLock {
    client: Client,
    name: String,
    key: String,
    native_lease: bool,
    /// The endpoints, for error messages; empty when built from a client.
    endpoints: String,
    /// The lease our last write bound the key to, with that write's revision.
    held: Mutex<Option<HeldLease>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeldLease {
    id: i64,
    revision: i64,
}

impl fmt::Debug for EtcdLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLock")
            .field("key", &self.key)
            .field("native_lease", &self.native_lease)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdLock {
    /// Connects with [`connect`] and makes a lock for election `name`, with the prefix
    /// and lease mode of `options`.
    ///
    /// # Errors
    ///
    /// As [`connect`]: [`LockError::Unavailable`] naming the endpoints that cannot be
    /// reached or the setting that cannot work, [`LockError::Forbidden`] naming the
    /// user etcd refused.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use leaderelection::lock::etcd::{EtcdLock, EtcdOptions};
    ///
    /// # async fn f() -> Result<(), leaderelection::LockError> {
    /// let options = EtcdOptions::new()
    ///     .ca_file("/etc/kubernetes/pki/etcd/ca.crt")
    ///     .cert_file("/etc/kubernetes/pki/apiserver-etcd-client.crt")
    ///     .key_file("/etc/kubernetes/pki/apiserver-etcd-client.key");
    /// let lock = EtcdLock::connect(&["https://127.0.0.1:2379"], options, "kube-scheduler").await?;
    /// assert_eq!(lock.key(), "/leaderelection/kube-scheduler");
    /// # Ok(()) }
    /// ```
    pub async fn connect<E: AsRef<str>>(
        endpoints: &[E],
        options: EtcdOptions,
        name: impl Into<String>,
    ) -> Result<Self, LockError> {
        let client = connect(endpoints, &options).await?;
        let mut lock = Self::from_client(client, name)
            .prefix(options.prefix)
            .native_lease(options.native_lease);
        lock.endpoints = endpoints
            .iter()
            .map(|e| e.as_ref().trim())
            .collect::<Vec<_>>()
            .join(",");
        Ok(lock)
    }

    /// A lock for election `name` on an existing client, under [`DEFAULT_PREFIX`],
    /// without native lease. Build the client with [`connect`] or etcd-client's own
    /// `Client::connect` (re-exported as [`etcd_client`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use leaderelection::lock::etcd::{etcd_client::Client, EtcdLock};
    ///
    /// # async fn f() -> Result<(), etcd_client::Error> {
    /// let client = Client::connect(["http://127.0.0.1:2379"], None).await?;
    /// let lock = EtcdLock::from_client(client, "jobs").prefix("/my-app/elections/");
    /// assert_eq!(lock.key(), "/my-app/elections/jobs");
    /// # Ok(()) }
    /// ```
    pub fn from_client(client: Client, name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            client,
            key: format!("{DEFAULT_PREFIX}{name}"),
            name,
            native_lease: false,
            endpoints: String::new(),
            held: Mutex::new(None),
        }
    }

    /// Puts the key under `prefix` (verbatim: end it with `/`) instead of
    /// [`DEFAULT_PREFIX`].
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key = format!("{}{}", prefix.into(), self.name);
        self
    }

    /// Binds the key to an etcd lease kept alive by each renewal (see
    /// [Native lease mode](Self#native-lease-mode)). Default false.
    #[must_use]
    pub fn native_lease(mut self, on: bool) -> Self {
        self.native_lease = on;
        self
    }

    /// The etcd key holding the record.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The client, for reads and tests of your own.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The etcd lease the key is bound to by this lock's last write, in native lease
    /// mode while this replica holds the record.
    pub fn lease_id(&self) -> Option<i64> {
        self.held().map(|h| h.id)
    }

    fn held(&self) -> Option<HeldLease> {
        *lock_unpoisoned(&self.held)
    }

    fn set_held(&self, held: Option<HeldLease>) -> Option<HeldLease> {
        std::mem::replace(&mut *lock_unpoisoned(&self.held), held)
    }

    fn err(&self, op: &str, e: etcd_client::Error) -> LockError {
        let at = if self.endpoints.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.endpoints)
        };
        map_error(format!("failed to {op} {} on etcd{at}", self.key), e)
    }

    /// One transaction: if the key is at `expected` (0: absent), put `json`.
    async fn put_if(
        &self,
        op: &str,
        compare: Compare,
        json: String,
        lease: Option<i64>,
    ) -> Result<Option<i64>, LockError> {
        let put = lease.map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(self.key.as_str(), json, put)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.err(op, e))?;
        if !resp.succeeded() {
            return Ok(None);
        }
        revision(&resp).map(Some)
    }

    async fn grant(&self, record: &LeaderElectionRecord) -> Result<i64, LockError> {
        let ttl = i64::from(record.lease_duration_seconds.max(1));
        let resp = self
            .client
            .lease_client()
            .grant(ttl, None)
            .await
            .map_err(|e| self.err("grant a lease for", e))?;
        if !resp.error().is_empty() {
            return Err(LockError::unavailable(
                BACKEND,
                format!("etcd refused a lease for {}: {}", self.key, resp.error()),
            ));
        }
        Ok(resp.id())
    }

    /// Revokes a lease we no longer need. Failure only delays its expiry.
    async fn revoke_quietly(&self, id: i64) {
        if let Err(e) = self.client.lease_client().revoke(id).await {
            if !is_lease_gone(&e) {
                debug!(lease = id, error = %describe(&e), "could not revoke an unused etcd lease; it expires by itself");
            }
        }
    }

    /// Acquires by compare-and-swap with a fresh lease; the lease is revoked unless
    /// the write is known to have succeeded.
    async fn acquire_with_lease(
        &self,
        record: &LeaderElectionRecord,
        compare: Compare,
        contention: LockError,
    ) -> Result<Version, LockError> {
        let id = self.grant(record).await?;
        match self
            .put_if("write", compare, record.to_json(), Some(id))
            .await
        {
            Ok(Some(revision)) => {
                let old = self.set_held(Some(HeldLease { id, revision }));
                if let Some(old) = old.filter(|o| o.id != id) {
                    self.revoke_quietly(old.id).await;
                }
                Ok(version(revision))
            }
            Ok(None) => {
                self.revoke_quietly(id).await;
                Err(contention)
            }
            Err(e) => {
                // The write may have landed: revoking deletes the key with it, so no
                // record is left that nobody renews.
                self.revoke_quietly(id).await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl LeaseLock for EtcdLock {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        let resp = self
            .client
            .kv_client()
            .get(self.key.as_str(), None)
            .await
            .map_err(|e| self.err("read", e))?;
        resp.kvs().first().map(parse_kv).transpose()
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        let absent = Compare::create_revision(self.key.as_str(), CompareOp::Equal, 0);
        if self.native_lease && !record.is_released() {
            return self
                .acquire_with_lease(record, absent, LockError::AlreadyExists)
                .await;
        }
        match self
            .put_if("create", absent, record.to_json(), None)
            .await?
        {
            Some(rev) => Ok(version(rev)),
            None => Err(LockError::AlreadyExists),
        }
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        // A version that is not a revision cannot be the stored one.
        let Ok(expected_rev) = expected.as_str().parse::<i64>() else {
            return Err(LockError::Conflict);
        };
        let at_expected = Compare::mod_revision(self.key.as_str(), CompareOp::Equal, expected_rev);
        if !self.native_lease {
            return match self
                .put_if("update", at_expected, record.to_json(), None)
                .await?
            {
                Some(rev) => Ok(version(rev)),
                None => Err(LockError::Conflict),
            };
        }
        if record.is_released() {
            // Released: the record stays (with its leaderTransitions) but is bound to
            // no lease, and ours goes.
            let rev = self
                .put_if("release", at_expected, record.to_json(), None)
                .await?
                .ok_or(LockError::Conflict)?;
            if let Some(held) = self.set_held(None) {
                self.revoke_quietly(held.id).await;
            }
            return Ok(version(rev));
        }
        match self.held() {
            Some(held) if held.revision == expected_rev => {
                // A renewal: one keep-alive, then the compare-and-swap.
                if let Err(e) = self.client.lease_client().keep_alive(held.id).await {
                    if is_lease_gone(&e) {
                        // etcd deleted the key with the lease: the record is not ours.
                        self.set_held(None);
                        warn!(key = %self.key, lease = held.id, "the etcd lease is gone (expired or revoked)");
                        return Err(LockError::Conflict);
                    }
                    return Err(self.err("keep alive the lease of", e));
                }
                match self
                    .put_if("renew", at_expected, record.to_json(), Some(held.id))
                    .await
                {
                    Ok(Some(revision)) => {
                        self.set_held(Some(HeldLease {
                            id: held.id,
                            revision,
                        }));
                        Ok(version(revision))
                    }
                    Ok(None) => Err(LockError::Conflict),
                    Err(e) => Err(e),
                }
            }
            _ => {
                self.acquire_with_lease(record, at_expected, LockError::Conflict)
                    .await
            }
        }
    }

    fn watch(&self) -> Option<WatchStream> {
        let ctx = WatchCtx {
            client: self.client.clone(),
            key: self.key.clone(),
            endpoints: self.endpoints.clone(),
        };
        Some(Box::pin(futures::stream::unfold(
            (ctx, WatchState::Open),
            |(ctx, state)| async move { ctx.next(state).await },
        )))
    }

    fn describe(&self) -> String {
        format!("etcd:{}", self.key)
    }
}

struct WatchCtx {
    client: Client,
    key: String,
    endpoints: String,
}

enum WatchState {
    Open,
    Watching(Box<etcd_client::WatchStream>),
    Done,
}

type WatchItem = Result<LockEvent, LockError>;

impl WatchCtx {
    fn err(&self, e: etcd_client::Error) -> LockError {
        let at = if self.endpoints.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.endpoints)
        };
        map_error(format!("failed to watch {} on etcd{at}", self.key), e)
    }

    async fn next(self, state: WatchState) -> Option<(WatchItem, (Self, WatchState))> {
        match state {
            WatchState::Done => None,
            WatchState::Open => {
                // Read first and watch from just after that read: no change between the
                // elector's last read and the watch is missed, and the current state
                // comes first (the elector ignores it when it knew it already).
                let resp = match self.client.kv_client().get(self.key.as_str(), None).await {
                    Ok(r) => r,
                    Err(e) => return Some((Err(self.err(e)), (self, WatchState::Done))),
                };
                let from = resp.header().map_or(0, |h| h.revision()) + 1;
                let current = match resp.kvs().first() {
                    Some(kv) => parse_kv(kv).map(LockEvent::Changed),
                    None => Ok(LockEvent::Deleted),
                };
                let options = WatchOptions::new().with_start_revision(from);
                match self
                    .client
                    .watch_client()
                    .watch(self.key.as_str(), Some(options))
                    .await
                {
                    Ok(w) => Some((current, (self, WatchState::Watching(Box::new(w))))),
                    Err(e) => Some((Err(self.err(e)), (self, WatchState::Done))),
                }
            }
            WatchState::Watching(mut w) => loop {
                match w.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            let e = LockError::unavailable(
                                BACKEND,
                                format!(
                                    "etcd cancelled the watch on {}: {} (compacted at {})",
                                    self.key,
                                    resp.cancel_reason(),
                                    resp.compact_revision()
                                ),
                            );
                            return Some((Err(e), (self, WatchState::Done)));
                        }
                        // Only the last state matters to a standby.
                        let Some(event) = resp.events().last() else {
                            continue;
                        };
                        let item = match (event.event_type(), event.kv()) {
                            (EventType::Put, Some(kv)) => parse_kv(kv).map(LockEvent::Changed),
                            (EventType::Put, None) => continue,
                            (EventType::Delete, _) => Ok(LockEvent::Deleted),
                        };
                        return Some((item, (self, WatchState::Watching(w))));
                    }
                    Ok(None) => return None,
                    Err(e) => return Some((Err(self.err(e)), (self, WatchState::Done))),
                }
            },
        }
    }
}

/// The record in a key-value, versioned by its mod revision.
fn parse_kv(kv: &KeyValue) -> Result<Versioned, LockError> {
    let version = version(kv.mod_revision());
    let record = match std::str::from_utf8(kv.value()) {
        Ok(text) => LeaderElectionRecord::from_json(text),
        Err(e) => Err(InvalidRecord::new(
            format!("the value is not UTF-8: {e}"),
            &String::from_utf8_lossy(kv.value()),
        )),
    };
    match record {
        Ok(record) => Ok(Versioned { record, version }),
        Err(source) => Err(LockError::InvalidRecord {
            source,
            version: Some(version),
        }),
    }
}

fn version(revision: i64) -> Version {
    Version::from(u64::try_from(revision).unwrap_or(0))
}

/// The revision a successful write transaction created.
fn revision(resp: &TxnResponse) -> Result<i64, LockError> {
    resp.header()
        .map(|h| h.revision())
        .filter(|r| *r > 0)
        .ok_or_else(|| LockError::unavailable(BACKEND, "etcd answered a write without a revision"))
}

fn lock_unpoisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The etcd client crate this backend is built on, for [`EtcdLock::from_client`].
pub use etcd_client;

/// The client's channel: every request goes to one endpoint, the pinned one, until a
/// request to it fails in transport or etcd answers `Unavailable` (a member without a
/// leader); then the next endpoint is pinned. Requests are never retried here: the
/// failed one reports its error (naming the endpoint), the next goes elsewhere.
///
/// etcd-client's default channel balances with power-of-two-choices over all
/// endpoints, which keeps sending a share of the requests to a dead member (refused
/// connections, requests stuck until the elector's deadline): one member down would
/// cost renewals. Pinning with failover is what etcd's own clients do.
mod failover {
    use std::error::Error as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use etcd_client::{BalancedChannelBuilder, Channel};
    use futures::future::BoxFuture;
    use http::Uri;
    use rand::Rng;
    use tokio::sync::mpsc;
    use tonic::body::Body;
    use tonic::transport::channel::Change;
    use tonic::transport::Endpoint;
    use tonic::{Code, Status};
    use tower::util::BoxCloneSyncService;
    use tower::{BoxError, Service, ServiceExt};
    use tracing::debug;

    /// Builds a [`Failover`] channel for `Client::connect_with_balanced_channel`.
    pub(super) struct Pinned;

    impl BalancedChannelBuilder for Pinned {
        type Error = etcd_client::Error;

        fn balanced_channel(
            self,
            buffer_size: usize,
        ) -> Result<(Channel, mpsc::Sender<Change<Uri, Endpoint>>), Self::Error> {
            let (tx, rx) = mpsc::channel(buffer_size.max(1));
            let service = Failover {
                shared: Arc::new(Shared {
                    endpoints: Mutex::new(Endpoints {
                        changes: rx,
                        channels: Vec::new(),
                    }),
                    // Replicas start on different members, so one member does not
                    // carry every election.
                    pinned: AtomicUsize::new(rand::rng().random_range(0..1024)),
                }),
            };
            Ok((Channel::Custom(BoxCloneSyncService::new(service)), tx))
        }
    }

    #[derive(Clone)]
    struct Failover {
        shared: Arc<Shared>,
    }

    struct Shared {
        endpoints: Mutex<Endpoints>,
        /// A counter; the pinned endpoint is `pinned % endpoints`.
        pinned: AtomicUsize,
    }

    struct Endpoints {
        /// Endpoints as etcd-client adds them (all of them while it connects).
        changes: mpsc::Receiver<Change<Uri, Endpoint>>,
        channels: Vec<(Uri, tonic::transport::Channel)>,
    }

    impl Shared {
        /// The pinned endpoint, after applying the endpoint changes received so far.
        fn pick(&self) -> Option<(usize, Uri, tonic::transport::Channel)> {
            let mut e = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            while let Ok(change) = e.changes.try_recv() {
                match change {
                    Change::Insert(uri, endpoint) => {
                        e.channels.retain(|(u, _)| *u != uri);
                        e.channels.push((uri, endpoint.connect_lazy()));
                    }
                    Change::Remove(uri) => e.channels.retain(|(u, _)| *u != uri),
                }
            }
            if e.channels.is_empty() {
                return None;
            }
            let counter = self.pinned.load(Ordering::SeqCst);
            let (uri, channel) = e.channels[counter % e.channels.len()].clone();
            Some((counter, uri, channel))
        }

        /// Moves the pin on, unless another request already did.
        fn failed(&self, counter: usize, uri: &Uri, why: &str) {
            if self
                .pinned
                .compare_exchange(
                    counter,
                    counter.wrapping_add(1),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
            {
                debug!(endpoint = %uri, reason = why, "etcd endpoint failed; switching to the next");
            }
        }
    }

    impl Service<http::Request<Body>> for Failover {
        type Response = http::Response<Body>;
        type Error = BoxError;
        type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            // Readiness is that of the endpoint picked for each call, awaited there.
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let shared = self.shared.clone();
            Box::pin(async move {
                let Some((counter, uri, channel)) = shared.pick() else {
                    return Err(Status::unavailable("no etcd endpoint configured").into());
                };
                let mut pending = Pending {
                    shared: &shared,
                    counter,
                    uri: &uri,
                    answered: false,
                };
                let result = channel.oneshot(request).await;
                pending.answered = true;
                match result {
                    Ok(response) => {
                        if grpc_status(&response) == Some(Code::Unavailable) {
                            shared.failed(counter, &uri, "etcd answered Unavailable");
                        }
                        Ok(response)
                    }
                    Err(e) => {
                        let message = format!("etcd endpoint {uri}: {}", chain(&e));
                        shared.failed(counter, &uri, &message);
                        let code = Status::from_error(Box::new(e)).code();
                        Err(Status::new(code, message).into())
                    }
                }
            })
        }
    }

    /// A request on its way. Dropped unanswered (its caller gave up waiting: a slow or
    /// frozen member), it moves the pin on like a failure.
    struct Pending<'a> {
        shared: &'a Shared,
        counter: usize,
        uri: &'a Uri,
        answered: bool,
    }

    impl Drop for Pending<'_> {
        fn drop(&mut self) {
            if !self.answered {
                self.shared.failed(
                    self.counter,
                    self.uri,
                    "the request was abandoned before etcd answered",
                );
            }
        }
    }

    /// The gRPC status of a trailers-only response (how etcd answers errors).
    fn grpc_status(response: &http::Response<Body>) -> Option<Code> {
        let value = response.headers().get("grpc-status")?.to_str().ok()?;
        Some(Code::from_i32(value.parse().ok()?))
    }

    /// An error and its causes on one line, without repeats.
    fn chain(e: &tonic::transport::Error) -> String {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let c_text = c.to_string();
            if !text.contains(&c_text) {
                text.push_str(": ");
                text.push_str(&c_text);
            }
            cause = c.source();
        }
        text
    }
}
