//! etcd's own election protocol, the one of Go's `go.etcd.io/etcd/client/v3/concurrency`
//! package and of `etcdctl elect`, so that Rust replicas, Go services and operators'
//! shells take part in one election.
//!
//! The protocol: each candidate holds a session (an etcd lease kept alive) and puts
//! one key, `<name>/<lease id in hex>`, bound to it, with its identity as the value.
//! The candidate whose key has the lowest create revision leads; the others wait, in
//! create order, for the keys before theirs to be deleted. A leader resigns by
//! deleting its key (here: by revoking its session, which deletes the key); a dead
//! one loses its key when etcd expires its session.
//!
//! This is not a [`LeaseLock`](crate::LeaseLock): liveness lives in etcd's lease, not
//! in renewals of a record that standbys time, and nobody takes over a live leader's
//! key. [`EtcdElection`] therefore runs the protocol itself, with the same contract as
//! [`LeaderElector`](crate::LeaderElector): the same [`Config`], the same `run`, and
//! a [`Leadership`] whose fencing token is the create revision of the leader's key.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use crate::config::Config;
use crate::elector::MAX_HONOURED_LEASE;
use crate::error::{ConfigError, LockError};
use crate::leadership::Leadership;
use crate::lock::etcd::{is_lease_gone, map_error, BACKEND};
use crate::term::{observers, Core, Elected, Renewal, Term};

mod expiry;

use expiry::{Expiry, Verdict};

/// The key that leads an etcd election: the candidate key with the lowest create
/// revision under `<name>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdLeader {
    /// The key, `<name>/<lease id in hex>`.
    pub key: String,
    /// Its value: the leader's identity (what `etcdctl elect NAME PROPOSAL` calls the
    /// proposal). Invalid UTF-8 is replaced.
    pub value: String,
    /// The key's create revision: the fencing token of the leadership.
    pub create_revision: i64,
    /// The session lease the key is bound to.
    pub lease: i64,
}

impl EtcdLeader {
    fn from_kv(kv: &KeyValue) -> Self {
        Self {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

/// One replica's side of an etcd election (Go's `concurrency.Election`), with the
/// contract of [`LeaderElector`](crate::LeaderElector).
///
/// From the [`Config`]: the identity is the value of this candidate's key; the lease
/// duration is the session TTL (rounded up to whole seconds), which is at most how long
/// a dead leader holds the election (the next in line revokes its session once etcd's
/// answers prove it expired); the retry period is the leader's keep-alive interval
/// (standbys keep alive every third of the TTL, as Go's `concurrency.Session` does);
/// the leader steps down when no keep-alive has succeeded for the renew deadline, which ends
/// before its session can expire. When etcd reports the session gone (expired or
/// revoked) or the leader's key deleted, leadership is lost at once: unlike Go's
/// `Campaign`, a lost session never leaves a leader that believes it leads. After any
/// error the session is revoked, so no candidate key is left behind.
///
/// Cheap to clone; clones share state.
///
/// # Examples
///
/// ```no_run
/// use leaderelection::lock::etcd::{connect, EtcdOptions};
/// use leaderelection::{Config, EtcdElection};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let client = connect(&["http://127.0.0.1:2379"], &EtcdOptions::new()).await?;
/// // Same election as `etcdctl elect kube-scheduler <proposal>`.
/// let election = EtcdElection::new(client, "kube-scheduler", Config::new("kube-scheduler"))?;
/// election
///     .run(CancellationToken::new(), |leadership| async move {
///         println!("leading with fencing token {}", leadership.fencing_token());
///         leadership.lost().await;
///     })
///     .await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EtcdElection {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    name: String,
    prefix: String,
    core: Core,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdElection")
            .field("name", &self.name)
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

/// This candidate's session and key.
#[derive(Debug, Clone)]
struct Session {
    lease: i64,
    key: String,
    create_revision: i64,
    /// When the last keep-alive (or the grant) that succeeded was sent.
    alive_since: Instant,
}

enum Turn {
    /// Our key is first; `revision` is that of the read that showed it.
    Leader {
        revision: i64,
    },
    Shutdown,
    SessionLost(String),
}

enum KeepAliveError {
    /// etcd no longer has the lease: the key is gone with it.
    Gone,
    Failed(LockError),
}

impl EtcdElection {
    /// An election named `name` on `client`, after checking `config` as
    /// [`LeaderElector::new`](crate::LeaderElector::new) does.
    ///
    /// `name` is used verbatim as Go's election prefix: candidate keys are
    /// `<name>/<lease id in hex>`, as with `etcdctl elect <name>` and
    /// `concurrency.NewElection(session, "<name>")`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the timing is invalid or the identity empty.
    pub fn new(
        client: Client,
        name: impl Into<String>,
        config: Config,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        Ok(Self {
            shared: Arc::new(Shared {
                core: Core::new(config)?,
                client,
                prefix: format!("{name}/"),
                name,
            }),
        })
    }

    observers!(
        "The value of the leader key last observed (this replica's identity when it \
         leads, and the last leader seen after it steps down, until it reads the keys \
         again)."
    );

    /// The prefix of the candidate keys, `<name>/`.
    pub fn key_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Reads who leads now (Go's `Election.Leader`): the candidate key with the lowest
    /// create revision, or `None` when nobody campaigns.
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] or [`LockError::Forbidden`] when etcd cannot be read.
    pub async fn current_leader(&self) -> Result<Option<EtcdLeader>, LockError> {
        Ok(self.first_candidate().await?.0)
    }

    /// Campaigns, leads, and campaigns again after a loss, until `shutdown` is
    /// cancelled (or, with [`Config::recampaign`] off, until leadership is lost once).
    ///
    /// The contract is that of [`LeaderElector::run`](crate::LeaderElector::run): the
    /// future `on_started_leading` returns is spawned as the leader's work, it must
    /// return soon after [`Leadership::lost`] fires, and on shutdown the session is
    /// revoked (the key deleted, the next candidate elected) only after the work has
    /// stopped.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future stops keeping the session alive without
    /// resigning and without waiting for the work (the work's [`Leadership::lost`]
    /// still fires, at once). Cancel `shutdown` instead.
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, mut on_started_leading: F)
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = &self.shared.core.config;
        let span =
            info_span!("etcd_election", name = %self.shared.name, identity = %config.identity);
        let (this, shutdown) = (self, &shutdown);
        let campaign = move || async move {
            let (session, revision) = this.campaign(shutdown).await?;
            Some(this.elected(session, revision))
        };
        self.shared
            .core
            .run(
                span,
                self.shared.prefix.clone(),
                shutdown,
                campaign,
                &mut on_started_leading,
            )
            .await
    }

    // ---- candidate -----------------------------------------------------------

    /// Joins the election and waits for this candidate's turn; `None` on shutdown.
    async fn campaign(&self, shutdown: &CancellationToken) -> Option<(Session, i64)> {
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let mut session = match self.join().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "failed to join the etcd election; retrying");
                    if !self.shared.core.back_off(shutdown).await {
                        return None;
                    }
                    continue;
                }
            };
            debug!(key = %session.key, create_revision = session.create_revision, "joined the etcd election");
            match self.wait_turn(&mut session, shutdown).await {
                Turn::Leader { revision } => return Some((session, revision)),
                Turn::Shutdown => {
                    self.end_session(&session).await;
                    return None;
                }
                Turn::SessionLost(why) => {
                    warn!(reason = %why, "lost the etcd session while waiting; joining again");
                    self.end_session(&session).await;
                    if !self.shared.core.back_off(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Grants a session and puts this candidate's key (Go's `Campaign`, first half).
    async fn join(&self) -> Result<Session, LockError> {
        let config = &self.shared.core.config;
        let sent = Instant::now();
        let resp = self
            .request("grant a session lease for", |c| async move {
                c.lease_client()
                    .grant(i64::from(config.lease_seconds()), None)
                    .await
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(LockError::unavailable(
                BACKEND,
                format!("etcd refused a session lease: {}", resp.error()),
            ));
        }
        let lease = resp.id();
        let key = format!("{}{:x}", self.shared.prefix, lease);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                config.identity.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = match self
            .request("put the candidate key in", |c| async move {
                c.kv_client().txn(txn).await
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // The put may have landed: revoking removes the key with the lease.
                self.revoke_quietly(lease).await;
                return Err(e);
            }
        };
        let create_revision = if resp.succeeded() {
            resp.header().map_or(0, |h| h.revision())
        } else {
            // The key of a fresh lease cannot exist, unless a previous attempt of this
            // very call landed; then it is ours.
            resp.op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
                    _ => None,
                })
                .unwrap_or(0)
        };
        if create_revision <= 0 {
            self.revoke_quietly(lease).await;
            return Err(LockError::unavailable(
                BACKEND,
                "etcd answered the candidate key's write without a revision",
            ));
        }
        Ok(Session {
            lease,
            key,
            create_revision,
            alive_since: sent,
        })
    }

    /// Waits until no key created before ours is left (Go's `waitDeletes`), keeping
    /// the session alive meanwhile, and then until the session of the last leader seen
    /// has ended too.
    ///
    /// Anyone can delete the leader's key (`etcdctl del`) while its session, and so
    /// perhaps its work, is still alive: that leader steps down when it sees the
    /// delete and then revokes its session. Leading before that would overlap its
    /// work, so the next candidate waits until etcd no longer has that session (revoked,
    /// or expired), or for one session TTL from the delete, by when a leader of ours has
    /// stopped its work. A leader of ours resigns by revoking its session, and is
    /// followed at once; Go's `Resign` keeps its session, and is followed after the TTL.
    ///
    /// The keys before ours are read once and then followed on a watch of the prefix,
    /// so the delete that puts ours first needs no read. A standby keeps its session
    /// alive as often as Go's `concurrency.Session` does (a third of the TTL); only a
    /// leader keeps the retry-period cadence its renew deadline is measured against.
    /// The standby next in line asks etcd now and then how long the leader's session
    /// has left, and revokes it once it is provably past expiry on the server
    /// (`docs/safety.md`, "Crash takeover"), instead of waiting for etcd's next
    /// 500 ms lessor tick.
    async fn wait_turn(&self, session: &mut Session, shutdown: &CancellationToken) -> Turn {
        let config = &self.shared.core.config;
        let cadence = standby_cadence(config);
        let mut watch: Option<etcd_client::WatchStream> = None;
        let mut next_keepalive = session.alive_since + cadence;
        // The keys created before ours, oldest first; `None` until read.
        let mut before: Option<Vec<EtcdLeader>> = None;
        let mut read_at = Instant::now();
        // The revision up to which `before` is known.
        let mut revision = 0;
        // The last other key seen leading; checked once ours is first.
        let mut predecessor: Option<EtcdLeader> = None;
        // A session this replica revoked itself, past its expiry: known gone.
        let mut revoked: Option<i64> = None;
        // When ours was first seen first while the predecessor's session lived, and
        // when to ask again whether that session ended.
        let mut vanished_at: Option<Instant> = None;
        let mut recheck_at: Option<Instant> = None;
        // The leader's lease as learned by the standby next in line, and when to ask
        // about it again (`None`: never).
        let mut expiry: Option<(i64, Expiry, Option<Instant>)> = None;
        let mut evaluate = false;
        loop {
            if before.is_none() && Instant::now() >= read_at {
                watch = None;
                match self.candidates_before(session).await {
                    Ok(Some((keys, at))) => {
                        before = Some(keys);
                        revision = at;
                        watch = self.watch_prefix(at).await;
                        evaluate = true;
                    }
                    Ok(None) => return Turn::SessionLost("our candidate key is gone".into()),
                    Err(e) => {
                        warn!(error = %e, "failed to read the etcd election; retrying");
                        read_at = Instant::now() + config.jittered_retry();
                    }
                }
            }
            if let (true, Some(keys)) = (evaluate, &before) {
                evaluate = false;
                recheck_at = None;
                if let Some(first) = keys.first() {
                    debug!(leader = %first.value, "waiting for the keys created before ours");
                    self.shared
                        .core
                        .report
                        .set_leader(Some(first.value.clone()), false);
                    vanished_at = None;
                    // Only the next in line watches the leader's session.
                    let lease = (keys.len() == 1).then(|| lease_of(first)).flatten();
                    if expiry.as_ref().map(|e| e.0) != lease {
                        expiry = lease.map(|l| (l, Expiry::new(), Some(Instant::now())));
                    }
                    predecessor = Some(first.clone());
                } else {
                    expiry = None;
                    let gone = match predecessor.as_ref() {
                        None => true,
                        Some(p) if revoked.is_some() && lease_of(p) == revoked => true,
                        Some(p) => {
                            let since = *vanished_at.get_or_insert_with(Instant::now);
                            match self.session_alive(p).await {
                                Ok(None) => true,
                                // A leader of ours stops its work within its lease of
                                // losing its key; Go's `Resign` deletes the key and keeps
                                // the session, which cannot be told from a stray delete:
                                // both are followed one session TTL after the delete.
                                Ok(Some(ttl)) if Instant::now() >= since + ttl => true,
                                alive => {
                                    if let Err(e) = alive {
                                        debug!(error = %e, "cannot tell whether the last leader's session ended; asking again");
                                    } else {
                                        info!(predecessor = %p.key, "the leader's key was deleted but its session lives; waiting for it to end");
                                    }
                                    self.shared
                                        .core
                                        .report
                                        .set_leader(Some(p.value.clone()), false);
                                    recheck_at = Some(Instant::now() + config.retry_period);
                                    false
                                }
                            }
                        }
                    };
                    if gone {
                        // Our turn. The term starts from the last keep-alive when it
                        // leaves the first renewal (sent at once) a retry period;
                        // otherwise from a fresh one.
                        if Instant::now() + config.retry_period
                            <= session.alive_since + config.renew_deadline
                        {
                            return Turn::Leader { revision };
                        }
                        match self.keep_alive(session).await {
                            Ok(()) => return Turn::Leader { revision },
                            Err(KeepAliveError::Gone) => {
                                return Turn::SessionLost("the session lease is gone".into())
                            }
                            Err(KeepAliveError::Failed(e)) => {
                                warn!(error = %e, "failed to keep the session alive");
                                recheck_at = Some(Instant::now() + config.retry_period);
                            }
                        }
                    }
                }
            }
            let ask_at = expiry.as_ref().and_then(|e| e.2);
            tokio::select! {
                _ = shutdown.cancelled() => return Turn::Shutdown,
                _ = sleep_until(next_keepalive) => {
                    let now = Instant::now();
                    match self.keep_alive(session).await {
                        Ok(()) => next_keepalive = session.alive_since + cadence,
                        Err(KeepAliveError::Gone) => {
                            return Turn::SessionLost("the session lease is gone".into())
                        }
                        Err(KeepAliveError::Failed(e)) => {
                            if now >= session.alive_since + config.renew_deadline {
                                return Turn::SessionLost(format!("keep-alive failed for the renew deadline: {e}"));
                            }
                            debug!(error = %e, "failed to keep the session alive; retrying");
                            next_keepalive = now + config.retry_period;
                        }
                    }
                }
                _ = sleep_until(read_at), if before.is_none() => {}
                _ = sleep_until(recheck_at.unwrap_or(read_at)), if recheck_at.is_some() => {
                    evaluate = true;
                }
                _ = sleep_until(ask_at.unwrap_or(read_at)), if ask_at.is_some() => {
                    if let Some((lease, state, at)) = expiry.as_mut() {
                        if self.ask_expiry(*lease, state, at).await {
                            revoked = Some(*lease);
                            expiry = None;
                        }
                    }
                }
                message = next_message(&mut watch) => match message {
                    Ok(Some(resp)) if resp.canceled() => before = None,
                    Ok(Some(resp)) => {
                        if let Some(keys) = before.as_mut() {
                            for event in resp.events() {
                                let Some(kv) = event.kv() else { continue };
                                revision = revision.max(kv.mod_revision());
                                if event.event_type() == EventType::Delete {
                                    if kv.key() == session.key.as_bytes() {
                                        return Turn::SessionLost("our candidate key is gone".into());
                                    }
                                    keys.retain(|k| k.key.as_bytes() != kv.key());
                                } else if kv.create_revision() < session.create_revision {
                                    // A predecessor's value changed (Go's `Proclaim`).
                                    let key = EtcdLeader::from_kv(kv);
                                    keys.retain(|k| k.key != key.key);
                                    let at = keys.partition_point(|k| k.create_revision < key.create_revision);
                                    keys.insert(at, key);
                                }
                            }
                            evaluate = true;
                        }
                    }
                    Ok(None) | Err(_) => {
                        // Read again and reopen the watch.
                        before = None;
                        read_at = Instant::now() + config.jittered_retry();
                    }
                },
            }
        }
    }

    /// Asks how long `lease` has left and feeds the answer to `state`; true when the
    /// lease was past expiry on the server and is now revoked.
    async fn ask_expiry(&self, lease: i64, state: &mut Expiry, at: &mut Option<Instant>) -> bool {
        let retry = self.shared.core.config.retry_period;
        let sent = Instant::now();
        let (ttl, granted) = match self.lease_ttl(lease).await {
            Ok(answer) => answer,
            Err(e) => {
                debug!(error = %e, "cannot ask how long the leader's session has left");
                *at = Some(Instant::now() + retry);
                return false;
            }
        };
        match state.observe(sent, Instant::now(), ttl, granted) {
            Verdict::AskAt(next) => *at = Some(next),
            Verdict::Never => *at = None,
            Verdict::Expired => {
                info!(
                    lease,
                    "the leader's session is past expiry on the server; revoking it"
                );
                let result = self
                    .lease_request(
                        "revoke the expired session of the leader of",
                        |c| async move { c.lease_client().revoke(lease).await },
                    )
                    .await;
                match result {
                    // Revoked now, or already gone.
                    Ok(_) => return true,
                    Err(e) => {
                        debug!(error = %e, "failed to revoke the leader's expired session; etcd will");
                        *at = Some(Instant::now() + retry);
                    }
                }
            }
        }
        false
    }

    // ---- leader --------------------------------------------------------------

    /// The term of the session whose key leads, as of the read at `revision`.
    fn elected(&self, session: Session, revision: i64) -> Elected<SessionTerm<'_>> {
        debug!(key = %session.key, "elected");
        Elected {
            fencing_token: u64::try_from(session.create_revision).unwrap_or(0),
            acquired_at: session.alive_since,
            term: SessionTerm {
                election: self,
                session,
                own: OwnKey::From(revision),
            },
        }
    }

    /// A watch on our own key from just after `revision`; `Unknown` when it cannot be
    /// opened.
    async fn watch_own(&self, key: &str, revision: i64) -> OwnKey {
        let options = WatchOptions::new().with_start_revision(revision + 1);
        match self
            .shared
            .client
            .watch_client()
            .watch(key, Some(options))
            .await
        {
            Ok(w) => OwnKey::Watching(Box::new(w)),
            Err(e) => {
                debug!(error = %self.err("watch", e), "cannot watch our key; checking it after each keep-alive");
                OwnKey::Unknown
            }
        }
    }

    /// Reads our key and watches it again from that read.
    async fn recheck_own(&self, key: &str) -> OwnKey {
        let read = self
            .request(
                "read",
                |c| async move { c.kv_client().get(key, None).await },
            )
            .await;
        match read {
            Err(_) => OwnKey::Unknown,
            Ok(resp) if resp.kvs().is_empty() => OwnKey::Gone,
            Ok(resp) => {
                let revision = resp.header().map_or(0, |h| h.revision());
                self.watch_own(key, revision).await
            }
        }
    }

    // ---- requests ------------------------------------------------------------

    /// The candidate keys `options` select, oldest first, and the revision of the read.
    async fn candidates(&self, options: GetOptions) -> Result<(Vec<EtcdLeader>, i64), LockError> {
        let options = options
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let resp = self
            .request("read", |c| async move {
                c.kv_client()
                    .get(self.shared.prefix.as_str(), Some(options))
                    .await
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((
            resp.kvs().iter().map(EtcdLeader::from_kv).collect(),
            revision,
        ))
    }

    /// The first candidate key by create revision, and the revision of the read.
    async fn first_candidate(&self) -> Result<(Option<EtcdLeader>, i64), LockError> {
        let (keys, revision) = self.candidates(GetOptions::new().with_limit(1)).await?;
        Ok((keys.into_iter().next(), revision))
    }

    /// The keys created before ours, oldest first, and the revision of the read;
    /// `None` when our key is gone.
    async fn candidates_before(
        &self,
        session: &Session,
    ) -> Result<Option<(Vec<EtcdLeader>, i64)>, LockError> {
        let options = GetOptions::new().with_max_create_revision(session.create_revision);
        let (mut keys, revision) = self.candidates(options).await?;
        match keys.pop() {
            Some(ours) if ours.key == session.key => Ok(Some((keys, revision))),
            _ => Ok(None),
        }
    }

    /// A watch on the prefix from just after `revision`; `None` when it cannot be
    /// opened (the keys are read again after a pause).
    async fn watch_prefix(&self, revision: i64) -> Option<etcd_client::WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        match self
            .shared
            .client
            .watch_client()
            .watch(self.shared.prefix.as_str(), Some(options))
            .await
        {
            Ok(w) => Some(w),
            Err(e) => {
                debug!(error = %self.err("watch", e), "watch failed; reading again");
                None
            }
        }
    }

    /// etcd's answer on `lease`: the time to live, whole seconds truncated toward zero
    /// (-1 when etcd no longer has it), and the granted TTL.
    async fn lease_ttl(&self, lease: i64) -> Result<(i64, i64), LockError> {
        let resp = self
            .lease_request("ask the session of the last leader in", |c| async move {
                c.lease_client().time_to_live(lease, None).await
            })
            .await?;
        Ok(resp.map_or((-1, 0), |r| (r.ttl(), r.granted_ttl())))
    }

    /// The granted TTL of the session lease of `leader`'s key while etcd still has it;
    /// `None` once it is gone.
    async fn session_alive(&self, leader: &EtcdLeader) -> Result<Option<Duration>, LockError> {
        let Some(lease) = lease_of(leader) else {
            return Ok(None);
        };
        let (ttl, granted) = self.lease_ttl(lease).await?;
        if ttl < 0 {
            return Ok(None);
        }
        let granted = Duration::from_secs(u64::try_from(granted).unwrap_or(0));
        Ok(Some(granted.min(MAX_HONOURED_LEASE)))
    }

    /// One keep-alive on the session; on success the session is alive from when it
    /// was sent.
    async fn keep_alive(&self, session: &mut Session) -> Result<(), KeepAliveError> {
        let sent = Instant::now();
        let result = self
            .shared
            .core
            .call(async {
                self.shared
                    .client
                    .lease_client()
                    .keep_alive(session.lease)
                    .await
                    .map_err(|e| {
                        if is_lease_gone(&e) {
                            KeepAliveError::Gone
                        } else {
                            KeepAliveError::Failed(self.err("keep alive the session of", e))
                        }
                    })
            })
            .await;
        match result {
            Ok(_) => {
                session.alive_since = sent;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Revokes the session: etcd deletes our key with it. A failure only leaves the key
    /// until the session expires.
    async fn end_session(&self, session: &Session) {
        let result = self
            .request("revoke the session of", |c| async move {
                c.lease_client().revoke(session.lease).await
            })
            .await;
        if let Err(e) = result {
            warn!(error = %e, key = %session.key, "failed to revoke the session; its key stays until the session expires");
        }
    }

    async fn revoke_quietly(&self, lease: i64) {
        let _ = self
            .request(
                "revoke",
                |c| async move { c.lease_client().revoke(lease).await },
            )
            .await;
    }

    /// One request, bounded by the renew deadline, its error saying what was done.
    async fn request<T, Fut>(
        &self,
        op: &str,
        send: impl FnOnce(Client) -> Fut,
    ) -> Result<T, LockError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let sent = send(self.shared.client.clone());
        self.shared
            .core
            .call(async { sent.await.map_err(|e| self.err(op, e)) })
            .await
    }

    /// [`request`](Self::request) on a lease: `None` when etcd no longer has it.
    async fn lease_request<T, Fut>(
        &self,
        op: &str,
        send: impl FnOnce(Client) -> Fut,
    ) -> Result<Option<T>, LockError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let sent = send(self.shared.client.clone());
        self.shared
            .core
            .call(async {
                match sent.await {
                    Ok(v) => Ok(Some(v)),
                    Err(e) if is_lease_gone(&e) => Ok(None),
                    Err(e) => Err(self.err(op, e)),
                }
            })
            .await
    }

    fn err(&self, op: &str, e: etcd_client::Error) -> LockError {
        map_error(
            format!("failed to {op} etcd election {}", self.shared.name),
            e,
        )
    }
}

/// The session lease of a candidate key: etcd's, or, for a key etcd reports without
/// one, the lease Go names the key after.
fn lease_of(key: &EtcdLeader) -> Option<i64> {
    if key.lease != 0 {
        return Some(key.lease);
    }
    let hex = key.key.rsplit('/').next().unwrap_or_default();
    i64::from_str_radix(hex, 16).ok()
}

/// How often a standby keeps its session alive: Go's `concurrency.Session` cadence, a
/// third of the TTL, and never more often than the retry period. Only a leader needs
/// the retry period: its renew deadline is measured from its last keep-alive.
fn standby_cadence(config: &Config) -> Duration {
    let ttl = Duration::from_secs(u64::try_from(config.lease_seconds()).unwrap_or(1));
    (ttl / 3).max(config.retry_period)
}

impl From<LockError> for KeepAliveError {
    fn from(e: LockError) -> Self {
        KeepAliveError::Failed(e)
    }
}

/// What the leader knows of its own key.
enum OwnKey {
    /// Not watched yet: to be watched from after this revision, the read that elected.
    From(i64),
    Watching(Box<etcd_client::WatchStream>),
    /// The watch broke or never opened: read again after the next keep-alive.
    Unknown,
    Gone,
}

/// A term of an etcd election: kept by keep-alives on the session, ended early when our
/// key is deleted, given up by revoking the session (which deletes the key).
struct SessionTerm<'a> {
    election: &'a EtcdElection,
    session: Session,
    own: OwnKey,
}

#[async_trait]
impl Term for SessionTerm<'_> {
    async fn renew(&mut self, deadline: Instant) -> Result<Instant, Renewal> {
        let election = self.election;
        match timeout_at(deadline, election.keep_alive(&mut self.session)).await {
            Ok(Ok(())) => {}
            Ok(Err(KeepAliveError::Gone)) => {
                info!("the session lease expired or was revoked");
                return Err(Renewal::Lost(None));
            }
            Ok(Err(KeepAliveError::Failed(e))) => return Err(Renewal::Failed(e)),
            Err(_) => {
                let limit = election.shared.core.config.renew_deadline;
                return Err(Renewal::Failed(LockError::Timeout(limit)));
            }
        }
        if matches!(self.own, OwnKey::Unknown) {
            self.own = election.recheck_own(&self.session.key).await;
            if matches!(self.own, OwnKey::Gone) {
                info!("our election key was deleted");
                return Err(Renewal::Lost(None));
            }
        }
        Ok(self.session.alive_since)
    }

    async fn lost_early(&mut self) -> Option<String> {
        // Our key deleted by anyone (an operator's `etcdctl del`, a revoke) ends the
        // term at once.
        loop {
            match &mut self.own {
                OwnKey::From(revision) => {
                    let revision = *revision;
                    self.own = self.election.watch_own(&self.session.key, revision).await;
                }
                OwnKey::Watching(w) => {
                    if own_deleted(w).await {
                        info!("our election key was deleted");
                        self.own = OwnKey::Gone;
                        return None;
                    }
                    self.own = OwnKey::Unknown;
                }
                OwnKey::Unknown => std::future::pending::<()>().await,
                OwnKey::Gone => return None,
            }
        }
    }

    async fn release(&mut self, _last_success: Instant) {
        // The work has stopped: resign so the next candidate leads at once.
        self.election.end_session(&self.session).await;
        info!("resigned");
    }

    async fn abandon(&mut self) {
        // Whatever is left of the session goes, key included.
        self.election.end_session(&self.session).await;
    }
}

/// Completes with true when our key is deleted, false when the watch breaks.
async fn own_deleted(w: &mut etcd_client::WatchStream) -> bool {
    loop {
        match w.message().await {
            Ok(Some(resp)) if resp.canceled() => return false,
            Ok(Some(resp)) => {
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return true;
                }
            }
            Ok(None) | Err(_) => return false,
        }
    }
}

async fn next_message(
    watch: &mut Option<etcd_client::WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}
