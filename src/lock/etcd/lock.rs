//! [`EtcdLock`]: the record under one key, compare-and-swap on its mod revision.

use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnResponse};
use tracing::{debug, warn};

use super::connect::connect;
use super::error::{describe, is_lease_gone, map_error, BACKEND};
use super::kv::{parse_kv, version};
use super::options::{EtcdOptions, DEFAULT_PREFIX};
use super::watch;
use crate::error::LockError;
use crate::lock::{LeaseLock, Version, Versioned, WatchStream};
use crate::record::LeaderElectionRecord;
use crate::sync::lock_unpoisoned;

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
        Some(watch::records(
            self.client.clone(),
            self.key.clone(),
            self.endpoints.clone(),
        ))
    }

    fn describe(&self) -> String {
        format!("etcd:{}", self.key)
    }
}

/// The revision a successful write transaction created.
fn revision(resp: &TxnResponse) -> Result<i64, LockError> {
    resp.header()
        .map(|h| h.revision())
        .filter(|r| *r > 0)
        .ok_or_else(|| LockError::unavailable(BACKEND, "etcd answered a write without a revision"))
}
