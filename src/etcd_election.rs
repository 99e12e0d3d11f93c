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

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::error::{ConfigError, LockError};
use crate::leadership::Leadership;
use crate::lock::etcd::{is_lease_gone, map_error, BACKEND};
use crate::status::{ElectionEvent, Reporter, Status};

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
/// duration is the session TTL (rounded up to whole seconds), which is how long a dead
/// leader holds the election; the retry period is the keep-alive interval; the leader
/// steps down when no keep-alive has succeeded for the renew deadline, which ends
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
    config: Config,
    report: Reporter,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdElection")
            .field("name", &self.name)
            .field("config", &self.config)
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

enum LeadOutcome {
    Lost,
    Shutdown,
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
        config.validate()?;
        let name = name.into();
        let report = Reporter::new(&config.identity);
        Ok(Self {
            shared: Arc::new(Shared {
                report,
                client,
                prefix: format!("{name}/"),
                name,
                config,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The prefix of the candidate keys, `<name>/`.
    pub fn key_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.shared.report.is_leader()
    }

    /// The value of the leader key last observed (this replica's identity when it
    /// leads).
    pub fn leader(&self) -> Option<String> {
        self.shared.report.leader()
    }

    /// The current [`Status`], updated on every change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.shared.report.subscribe()
    }

    /// Every change of leadership from now on, each reported once, in order.
    pub fn events(&self) -> mpsc::UnboundedReceiver<ElectionEvent> {
        self.shared.report.events()
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
    /// resigning. Cancel `shutdown` instead.
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, mut on_started_leading: F)
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = &self.shared.config;
        let span =
            info_span!("etcd_election", name = %self.shared.name, identity = %config.identity);
        async {
            info!(prefix = %self.shared.prefix, "starting etcd election");
            while let Some((session, revision)) = self.campaign(&shutdown).await {
                let outcome = self
                    .lead(session, revision, &shutdown, &mut on_started_leading)
                    .await;
                if matches!(outcome, LeadOutcome::Shutdown) || !config.recampaign {
                    break;
                }
            }
            info!("etcd election stopped");
        }
        .instrument(span)
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
                    if !self
                        .pause(self.shared.config.jittered_retry(), shutdown)
                        .await
                    {
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
                    if !self
                        .pause(self.shared.config.jittered_retry(), shutdown)
                        .await
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// Grants a session and puts this candidate's key (Go's `Campaign`, first half).
    async fn join(&self) -> Result<Session, LockError> {
        let config = &self.shared.config;
        let sent = Instant::now();
        let resp = self
            .call(async {
                self.shared
                    .client
                    .lease_client()
                    .grant(i64::from(config.lease_seconds()), None)
                    .await
                    .map_err(|e| self.err("grant a session lease for", e))
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
            .call(async {
                self.shared
                    .client
                    .kv_client()
                    .txn(txn)
                    .await
                    .map_err(|e| self.err("put the candidate key in", e))
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
    /// the session alive meanwhile.
    async fn wait_turn(&self, session: &mut Session, shutdown: &CancellationToken) -> Turn {
        let config = &self.shared.config;
        let mut watch: Option<etcd_client::WatchStream> = None;
        let mut next_keepalive = session.alive_since + config.retry_period;
        let mut read = true;
        loop {
            if read {
                read = false;
                match self.first_candidate().await {
                    Ok((leader, revision)) => {
                        self.set_leader(leader.as_ref().map(|l| l.value.clone()), false);
                        match leader {
                            Some(l) if l.key == session.key => {
                                // Our turn. Lead from a fresh keep-alive, so the term
                                // starts with the whole session ahead of it.
                                match self.keep_alive(session).await {
                                    Ok(()) => return Turn::Leader { revision },
                                    Err(KeepAliveError::Gone) => {
                                        return Turn::SessionLost(
                                            "the session lease is gone".into(),
                                        )
                                    }
                                    Err(KeepAliveError::Failed(e)) => {
                                        warn!(error = %e, "failed to keep the session alive");
                                        read = true;
                                    }
                                }
                            }
                            Some(l) if l.create_revision < session.create_revision => {
                                debug!(leader = %l.value, "waiting for the keys created before ours");
                            }
                            _ => return Turn::SessionLost("our candidate key is gone".into()),
                        }
                        if watch.is_none() && !read {
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
                                Ok(w) => watch = Some(w),
                                Err(e) => {
                                    debug!(error = %self.err("watch", e), "watch failed; reading every retry period");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "failed to read the etcd election; retrying");
                        // Read again with the next keep-alive.
                        watch = None;
                    }
                }
                if read {
                    // Retry the read after a pause, with the keep-alive below.
                    next_keepalive =
                        next_keepalive.min(Instant::now() + self.shared.config.jittered_retry());
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Turn::Shutdown,
                _ = sleep_until(next_keepalive) => {
                    let now = Instant::now();
                    match self.keep_alive(session).await {
                        Ok(()) => next_keepalive = session.alive_since + config.retry_period,
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
                    if watch.is_none() {
                        read = true;
                    }
                }
                message = next_message(&mut watch) => match message {
                    Ok(Some(resp)) if resp.canceled() => {
                        watch = None;
                        read = true;
                    }
                    Ok(Some(resp)) => read = !resp.events().is_empty(),
                    Ok(None) | Err(_) => {
                        // Read again at the next keep-alive and reopen the watch.
                        watch = None;
                    }
                },
            }
        }
    }

    // ---- leader --------------------------------------------------------------

    async fn lead<F, Fut>(
        &self,
        mut session: Session,
        revision: i64,
        shutdown: &CancellationToken,
        on_started_leading: &mut F,
    ) -> LeadOutcome
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = &self.shared.config;
        let fencing_token = u64::try_from(session.create_revision).unwrap_or(0);
        let lost = CancellationToken::new();
        let (valid_tx, valid_rx) = watch::channel(session.alive_since + config.renew_deadline);
        info!(fencing_token, key = %session.key, "elected, started leading");
        self.set_leader(Some(config.identity.clone()), true);
        self.emit(ElectionEvent::StartedLeading { fencing_token });
        let leadership = Leadership::new(
            config.identity.clone(),
            fencing_token,
            session.alive_since,
            lost.clone(),
            valid_rx,
        );
        let mut work: JoinHandle<()> = tokio::spawn(on_started_leading(leadership));
        let mut work_done = false;
        let mut stopping_since: Option<Instant> = None;
        let mut next_keepalive = session.alive_since + config.retry_period;
        // Our key deleted by anyone (an operator's `etcdctl del`, a revoke) ends the
        // term at once.
        let mut own = self.watch_own(&session.key, revision).await;

        let outcome = loop {
            let deadline = session.alive_since + config.renew_deadline;
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if stopping_since.is_none() => {
                    info!("shutting down: stopping the leader's work");
                    lost.cancel();
                    stopping_since = Some(Instant::now());
                    if work_done {
                        break LeadOutcome::Shutdown;
                    }
                }
                res = &mut work, if !work_done => {
                    work_done = true;
                    if let Err(e) = res {
                        error!(error = %e, "the leader's work panicked");
                    }
                    if stopping_since.is_some() {
                        break LeadOutcome::Shutdown;
                    }
                }
                _ = sleep_until(next_keepalive) => {
                    if let Some(since) = stopping_since {
                        if Instant::now() >= since + config.lease_duration {
                            error!("the leader's work did not stop within the lease duration; aborting it and not resigning");
                            work.abort();
                            self.step_down(&lost, &mut work, work_done, session.alive_since).await;
                            return LeadOutcome::Shutdown;
                        }
                    }
                    let attempt_at = Instant::now();
                    match timeout_at(deadline, self.keep_alive(&mut session)).await {
                        Ok(Ok(())) => {
                            valid_tx.send_replace(session.alive_since + config.renew_deadline);
                            next_keepalive = session.alive_since + config.retry_period;
                            if own.is_none() {
                                own = self.recheck_own(&session.key).await;
                                if matches!(own, Some(OwnKey::Gone)) {
                                    info!("our election key was deleted; stepping down");
                                    break LeadOutcome::Lost;
                                }
                            }
                        }
                        Ok(Err(KeepAliveError::Gone)) => {
                            info!("the session lease expired or was revoked; stepping down");
                            break LeadOutcome::Lost;
                        }
                        Ok(Err(KeepAliveError::Failed(e))) if attempt_at < deadline => {
                            warn!(error = %e, "failed to keep the session alive; retrying");
                            next_keepalive = (Instant::now() + config.retry_period).min(deadline);
                        }
                        Ok(Err(KeepAliveError::Failed(e))) => {
                            error!(error = %e, "failed to keep the session alive within the renew deadline; stepping down");
                            break LeadOutcome::Lost;
                        }
                        Err(_) => {
                            error!("failed to keep the session alive within the renew deadline; stepping down");
                            break LeadOutcome::Lost;
                        }
                    }
                }
                deleted = own_deleted(&mut own) => {
                    if deleted {
                        info!("our election key was deleted; stepping down");
                        break LeadOutcome::Lost;
                    }
                    // The watch broke: checked again after the next keep-alive.
                    own = None;
                }
            }
        };

        match outcome {
            LeadOutcome::Shutdown => {
                if config.release_on_cancel {
                    // The work has stopped: resign so the next candidate leads at once.
                    self.end_session(&session).await;
                    info!("resigned");
                }
                self.step_down(&lost, &mut work, true, session.alive_since)
                    .await;
            }
            LeadOutcome::Lost => {
                self.step_down(&lost, &mut work, work_done, session.alive_since)
                    .await;
                // Whatever is left of the session goes, key included.
                self.end_session(&session).await;
            }
        }
        outcome
    }

    /// Ends a term: fires the token, waits for the work until the session could
    /// expire, and publishes the change.
    async fn step_down(
        &self,
        lost: &CancellationToken,
        work: &mut JoinHandle<()>,
        work_done: bool,
        alive_since: Instant,
    ) {
        lost.cancel();
        self.set_leader(None, false);
        info!("stopped leading");
        self.emit(ElectionEvent::StoppedLeading);
        if work_done {
            return;
        }
        let others_may_lead = alive_since + self.shared.config.lease_duration;
        match timeout_at(others_may_lead, &mut *work).await {
            Ok(Err(e)) if e.is_panic() => error!(error = %e, "the leader's work panicked"),
            Ok(_) => {}
            Err(_) => {
                error!("the leader's work outlived its session; aborting it");
                work.abort();
            }
        }
    }

    /// A watch on our own key from just after `revision`.
    async fn watch_own(&self, key: &str, revision: i64) -> Option<OwnKey> {
        let options = WatchOptions::new().with_start_revision(revision + 1);
        match self
            .shared
            .client
            .watch_client()
            .watch(key, Some(options))
            .await
        {
            Ok(w) => Some(OwnKey::Watching(Box::new(w))),
            Err(e) => {
                debug!(error = %self.err("watch", e), "cannot watch our key; checking it after each keep-alive");
                None
            }
        }
    }

    /// Reads our key and watches it again from that read.
    async fn recheck_own(&self, key: &str) -> Option<OwnKey> {
        let resp = self
            .call(async {
                self.shared
                    .client
                    .kv_client()
                    .get(key, None)
                    .await
                    .map_err(|e| self.err("read", e))
            })
            .await
            .ok()?;
        if resp.kvs().is_empty() {
            return Some(OwnKey::Gone);
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        self.watch_own(key, revision).await
    }

    // ---- requests ------------------------------------------------------------

    /// The first candidate key by create revision, and the revision of the read.
    async fn first_candidate(&self) -> Result<(Option<EtcdLeader>, i64), LockError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let resp = self
            .call(async {
                self.shared
                    .client
                    .kv_client()
                    .get(self.shared.prefix.as_str(), Some(options))
                    .await
                    .map_err(|e| self.err("read", e))
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((resp.kvs().first().map(EtcdLeader::from_kv), revision))
    }

    /// One keep-alive on the session; on success the session is alive from when it
    /// was sent.
    async fn keep_alive(&self, session: &mut Session) -> Result<(), KeepAliveError> {
        let sent = Instant::now();
        let result = self
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
            .call(async {
                self.shared
                    .client
                    .lease_client()
                    .revoke(session.lease)
                    .await
                    .map_err(|e| self.err("revoke the session of", e))
            })
            .await;
        if let Err(e) = result {
            warn!(error = %e, key = %session.key, "failed to revoke the session; its key stays until the session expires");
        }
    }

    async fn revoke_quietly(&self, lease: i64) {
        let _ = self
            .call(async {
                self.shared
                    .client
                    .lease_client()
                    .revoke(lease)
                    .await
                    .map_err(|e| self.err("revoke", e))
            })
            .await;
    }

    /// One request, bounded by the renew deadline.
    async fn call<T, E: From<LockError>>(
        &self,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let limit = self.shared.config.renew_deadline;
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err(E::from(LockError::Timeout(limit))))
    }

    fn err(&self, op: &str, e: etcd_client::Error) -> LockError {
        map_error(
            format!("failed to {op} etcd election {}", self.shared.name),
            e,
        )
    }

    // ---- helpers -------------------------------------------------------------

    async fn pause(&self, d: Duration, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    fn set_leader(&self, leader: Option<String>, is_leader: bool) {
        self.shared.report.set_leader(leader, is_leader);
    }

    fn emit(&self, event: ElectionEvent) {
        self.shared.report.emit(event);
    }
}

impl From<LockError> for KeepAliveError {
    fn from(e: LockError) -> Self {
        KeepAliveError::Failed(e)
    }
}

/// What the leader knows of its own key.
enum OwnKey {
    Watching(Box<etcd_client::WatchStream>),
    Gone,
}

/// Completes with true when our key is deleted, false when the watch breaks.
async fn own_deleted(own: &mut Option<OwnKey>) -> bool {
    let Some(OwnKey::Watching(w)) = own else {
        return std::future::pending().await;
    };
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
