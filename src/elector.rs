//! The election loop: campaign, lead, step down, campaign again.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::error::{ConfigError, LockError};
use crate::leadership::Leadership;
use crate::lock::{LeaseLock, LockEvent, Version, Versioned, WatchStream};
use crate::record::{truncate, LeaderElectionRecord};
use crate::status::{lock_unpoisoned, ElectionEvent, Reporter, Status};

/// Longest lease a standby honours from a record. A holder asking for more is
/// treated as asking for this much, so a hostile or corrupt record cannot stall the
/// election for days.
pub const MAX_HONOURED_LEASE: Duration = Duration::from_secs(3600);

/// The elector is unhealthy: it believes it leads but has not renewed for longer than
/// the lease plus the tolerance. Returned by [`LeaderElector::check_health`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("failed election to renew leadership on lease {name}: last renewal {since:?} ago")]
pub struct HealthError {
    /// The election name.
    pub name: String,
    /// Time since the last successful renewal began.
    pub since: Duration,
}

/// Runs one replica's side of an election over a [`LeaseLock`].
///
/// Cheap to clone; clones share the same state. [`run`](Self::run) drives the loop,
/// the other methods observe it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leaderelection::{Config, LeaderElector, MemoryStore};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), leaderelection::ConfigError> {
/// let store = MemoryStore::new();
/// let elector = LeaderElector::new(store.lock("scheduler"), Config::new("scheduler").identity("a"))?;
/// let shutdown = CancellationToken::new();
///
/// let run = tokio::spawn({
///     let (elector, shutdown) = (elector.clone(), shutdown.clone());
///     async move {
///         elector
///             .run(shutdown, |leadership| async move {
///                 // Act as leader until leadership is lost or given up.
///                 leadership.lost().await;
///             })
///             .await
///     }
/// });
///
/// tokio::time::sleep(Duration::from_millis(10)).await;
/// assert!(elector.is_leader());
/// shutdown.cancel(); // stops the work, then releases the lease
/// run.await.unwrap();
/// assert!(!elector.is_leader());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LeaderElector {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    lock: Box<dyn LeaseLock>,
    config: Config,
    report: Reporter,
    last_renewal: Mutex<Option<Instant>>,
}

/// What a standby knows of the record.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Absent,
    Record(Versioned),
    Invalid { version: Option<Version> },
}

impl Seen {
    fn version(&self) -> Option<&Version> {
        match self {
            Seen::Absent => None,
            Seen::Record(v) => Some(&v.version),
            Seen::Invalid { version } => version.as_ref(),
        }
    }
}

/// A standby's observation: what it saw, and when it first saw that version.
struct Observation {
    seen: Seen,
    since: Instant,
}

/// The state a new leader starts from.
struct Acquired {
    record: LeaderElectionRecord,
    version: Version,
    sent_at: Instant,
}

enum LeadOutcome {
    Lost,
    Shutdown,
}

impl LeaderElector {
    /// An elector for `lock`, after checking `config` as client-go does.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field and the rule when the timing is invalid or the
    /// identity is empty.
    pub fn new(lock: impl LeaseLock, config: Config) -> Result<Self, ConfigError> {
        Self::from_boxed(Box::new(lock), config)
    }

    /// Like [`new`](Self::new), for a lock chosen at run time.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_boxed(lock: Box<dyn LeaseLock>, config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let report = Reporter::new(&config.identity);
        Ok(Self {
            shared: Arc::new(Shared {
                report,
                lock,
                config,
                last_renewal: Mutex::new(None),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.shared.report.is_leader()
    }

    /// The holder in the last record observed (this replica when it leads).
    pub fn leader(&self) -> Option<String> {
        self.shared.report.leader()
    }

    /// The current [`Status`], updated on every change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.shared.report.subscribe()
    }

    /// Every change of leadership from now on, each reported once, in order.
    ///
    /// The channel is unbounded; drop the receiver when no longer interested.
    pub fn events(&self) -> mpsc::UnboundedReceiver<ElectionEvent> {
        self.shared.report.events()
    }

    /// client-go's `HealthzAdaptor`: healthy unless this replica believes it leads and
    /// its last successful renewal began more than `lease_duration + tolerance` ago
    /// (the elector is stuck: a blocked runtime, a hung backend call).
    ///
    /// # Errors
    ///
    /// [`HealthError`] with the time since the last renewal.
    pub fn check_health(&self, tolerance: Duration) -> Result<(), HealthError> {
        if !self.is_leader() {
            return Ok(());
        }
        let Some(last) = *lock_unpoisoned(&self.shared.last_renewal) else {
            return Ok(());
        };
        let since = last.elapsed();
        if since > self.shared.config.lease_duration + tolerance {
            return Err(HealthError {
                name: self.shared.config.name.clone(),
                since,
            });
        }
        Ok(())
    }

    /// Campaigns, leads, and campaigns again after a loss, until `shutdown` is
    /// cancelled (or, with [`Config::recampaign`] off, until leadership is lost once).
    ///
    /// Each time this replica becomes leader, `on_started_leading` is called with the
    /// new [`Leadership`] and the future it returns is spawned as the leader's work.
    /// The work must return soon after [`Leadership::lost`] fires. The elector waits
    /// for it before campaigning again, and on shutdown waits for it, renewing
    /// meanwhile, before it releases the lease, so two replicas' work never overlaps.
    /// Work still running when the lease could expire for the others is aborted.
    ///
    /// Backend errors never end the loop: they are logged, retried, and cost the
    /// leadership when they last past the renew deadline.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future stops renewing without releasing and
    /// without waiting for the work (the work's [`Leadership::lost`] still fires, at
    /// once). Cancel `shutdown` instead.
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, mut on_started_leading: F)
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = &self.shared.config;
        let span = info_span!("leader_election", name = %config.name, identity = %config.identity);
        async {
            info!(lock = %self.shared.lock.describe(), "starting leader election");
            while let Some(acquired) = self.campaign(&shutdown).await {
                let outcome = self
                    .lead(acquired, &shutdown, &mut on_started_leading)
                    .await;
                if matches!(outcome, LeadOutcome::Shutdown) || !config.recampaign {
                    break;
                }
            }
            info!("leader election stopped");
        }
        .instrument(span)
        .await
    }

    // ---- standby -------------------------------------------------------------

    /// Waits until this replica holds the lease, or `None` on shutdown.
    async fn campaign(&self, shutdown: &CancellationToken) -> Option<Acquired> {
        let lock = &*self.shared.lock;
        let mut watch: Option<WatchStream> = None;
        // Until the lock answers `watch()` with None.
        let mut can_watch = true;
        let mut rewatch_at: Option<Instant> = None;
        let mut obs: Option<Observation> = None;
        // Read the record before deciding, unless a watch event just told us.
        let mut must_read = true;

        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            if must_read {
                match self.call(lock.get()).await {
                    Ok(v) => self.observe(&mut obs, v.map_or(Seen::Absent, Seen::Record)),
                    Err(LockError::InvalidRecord { source, version }) => {
                        self.warn_invalid(&source);
                        self.observe(&mut obs, Seen::Invalid { version });
                    }
                    Err(e) => {
                        warn!(error = %e, "failed to read the lock; retrying");
                        if !self
                            .pause(self.shared.config.jittered_retry(), shutdown)
                            .await
                        {
                            return None;
                        }
                        continue;
                    }
                }
            }
            must_read = true;
            let Some(o) = obs.as_ref() else { continue };

            // Try to take the lease if it is free, expired or ours already.
            if let Some(wait_until) = self.expiry(o) {
                if watch.is_none() && can_watch && rewatch_at.is_none() {
                    // Watch only once someone else holds the lease: a candidate that
                    // wins at once never opens one. Read again after opening, so a
                    // change between the read and the opening is not missed.
                    watch = lock.watch();
                    can_watch = watch.is_some();
                    if can_watch {
                        continue;
                    }
                }
                // Held by someone else: sleep until it expires or the record changes.
                let wake = if watch.is_some() {
                    wait_until
                } else {
                    wait_until.min(Instant::now() + self.shared.config.jittered_retry())
                };
                let wake = match rewatch_at {
                    Some(t) => wake.min(t),
                    None => wake,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = sleep_until(wake) => {
                        if rewatch_at.is_some_and(|t| t <= Instant::now()) {
                            // Reopened on the next pass, after a read.
                            rewatch_at = None;
                        } else if Instant::now() >= wait_until {
                            // Expired as observed: try at once with the cached version.
                            must_read = false;
                        }
                    }
                    event = next_event(&mut watch) => match event {
                        Some(Ok(LockEvent::Changed(v))) => {
                            self.observe(&mut obs, Seen::Record(v));
                            must_read = false;
                        }
                        Some(Ok(LockEvent::Deleted)) => {
                            self.observe(&mut obs, Seen::Absent);
                            must_read = false;
                        }
                        Some(Err(LockError::InvalidRecord { source, version })) => {
                            self.warn_invalid(&source);
                            self.observe(&mut obs, Seen::Invalid { version });
                            must_read = false;
                        }
                        other => {
                            if let Some(Err(e)) = other {
                                debug!(error = %e, "watch failed; polling until it reopens");
                            }
                            watch = None;
                            if can_watch {
                                rewatch_at = Some(Instant::now() + self.shared.config.jittered_retry());
                            }
                        }
                    },
                }
                continue;
            }

            match self.try_acquire(o).await {
                Ok(acquired) => return Some(acquired),
                Err(e) if e.is_contention() => {
                    debug!("another candidate wrote first; reading again");
                }
                Err(e) => {
                    warn!(error = %e, "failed to acquire the lease; retrying");
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

    /// `Some(instant)` when another holder's lease is still running on our clock;
    /// `None` when this replica may try to take it.
    fn expiry(&self, o: &Observation) -> Option<Instant> {
        let config = &self.shared.config;
        let lease = match &o.seen {
            Seen::Absent => return None,
            Seen::Record(v) if v.record.is_released() => return None,
            Seen::Record(v) if v.record.holder_identity == config.identity => return None,
            Seen::Record(v) => honoured_lease(v.record.lease_duration_seconds, config),
            // Nobody can tell who holds an unreadable record: wait one full lease of
            // ours after it last changed, in case a holder is alive, then overwrite it.
            Seen::Invalid { version: Some(_) } => config.lease_duration,
            Seen::Invalid { version: None } => return Some(Instant::now() + config.retry_period),
        };
        let until = o.since + lease;
        (until > Instant::now()).then_some(until)
    }

    async fn try_acquire(&self, o: &Observation) -> Result<Acquired, LockError> {
        let config = &self.shared.config;
        let now = jiff::Timestamp::now();
        let mut record = LeaderElectionRecord {
            holder_identity: config.identity.clone(),
            lease_duration_seconds: config.lease_seconds(),
            acquire_time: Some(now),
            renew_time: Some(now),
            ..Default::default()
        };
        if let Seen::Record(old) = &o.seen {
            let ours = old.record.holder_identity == config.identity;
            record.leader_transitions = if ours {
                record.acquire_time = old.record.acquire_time;
                old.record.leader_transitions
            } else {
                old.record.leader_transitions.saturating_add(1)
            };
        }
        let sent_at = Instant::now();
        let version = match o.seen.version() {
            None => self.call(self.shared.lock.create(&record)).await?,
            Some(v) => self.call(self.shared.lock.update(&record, v)).await?,
        };
        Ok(Acquired {
            record,
            version,
            sent_at,
        })
    }

    /// Records what was seen; the lease clock restarts whenever the version moves.
    fn observe(&self, obs: &mut Option<Observation>, seen: Seen) {
        let changed = obs
            .as_ref()
            .is_none_or(|o| o.seen.version() != seen.version() || o.seen != seen);
        if !changed {
            return;
        }
        let holder = match &seen {
            Seen::Record(v) if !v.record.is_released() => Some(v.record.holder_identity.clone()),
            _ => None,
        };
        *obs = Some(Observation {
            seen,
            since: Instant::now(),
        });
        self.set_leader(holder, false);
    }

    // ---- leader --------------------------------------------------------------

    async fn lead<F, Fut>(
        &self,
        acquired: Acquired,
        shutdown: &CancellationToken,
        on_started_leading: &mut F,
    ) -> LeadOutcome
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = &self.shared.config;
        let lock = &*self.shared.lock;
        let Acquired {
            mut record,
            mut version,
            sent_at,
        } = acquired;
        let fencing_token = lock.fencing_token(&record, &version);
        let lost = CancellationToken::new();
        // If this future is dropped (the caller's select!, an aborted task, a panic in
        // a lock), the work, a task of its own, must still learn that nobody renews.
        let _lost_on_drop = lost.clone().drop_guard();
        let (valid_tx, valid_rx) = watch::channel(sent_at + config.renew_deadline);
        let mut last_success = sent_at;
        self.renewed(sent_at);
        info!(
            fencing_token,
            "successfully acquired lease, started leading"
        );
        self.set_leader(Some(config.identity.clone()), true);
        self.emit(ElectionEvent::StartedLeading { fencing_token });

        let leadership = Leadership::new(
            config.identity.clone(),
            fencing_token,
            sent_at,
            lost.clone(),
            valid_rx,
        );
        let mut work: JoinHandle<()> = tokio::spawn(on_started_leading(leadership));
        let mut work_done = false;
        let mut stopping_since: Option<Instant> = None;
        let mut next_renew = sent_at + config.retry_period;

        let outcome = loop {
            let deadline = last_success + config.renew_deadline;
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
                _ = sleep_until(next_renew) => {
                    if let Some(since) = stopping_since {
                        if Instant::now() >= since + config.lease_duration {
                            error!("the leader's work did not stop within the lease duration; aborting it and not releasing");
                            work.abort();
                            // Not released: the work may still be in flight. Standbys
                            // take over when the lease expires.
                            self.step_down(&lost, &mut work, work_done, last_success).await;
                            return LeadOutcome::Shutdown;
                        }
                    }
                    let attempt_at = Instant::now();
                    record.renew_time = Some(jiff::Timestamp::now());
                    match self.renew(&mut record, &version, deadline).await {
                        Ok(v) => {
                            version = v;
                            last_success = attempt_at;
                            self.renewed(attempt_at);
                            valid_tx.send_replace(attempt_at + config.renew_deadline);
                            debug!("renewed lease");
                            next_renew = attempt_at + config.retry_period;
                        }
                        Err(RenewError::Lost(holder)) => {
                            info!(new_leader = ?holder.as_deref().map(|h| truncate(h, 256)), "lease taken by another candidate");
                            break LeadOutcome::Lost;
                        }
                        Err(RenewError::Failed(e)) => {
                            let now = Instant::now();
                            if now >= deadline {
                                error!(error = %e, "failed to renew lease within the renew deadline; stepping down");
                                break LeadOutcome::Lost;
                            }
                            warn!(error = %e, "failed to renew lease; retrying");
                            next_renew = (now + config.retry_period).min(deadline);
                        }
                    }
                }
            }
        };

        match outcome {
            LeadOutcome::Shutdown => {
                // The work has stopped: release so a standby takes over at once.
                if config.release_on_cancel {
                    self.release(&record, &version, last_success).await;
                }
                self.step_down(&lost, &mut work, true, last_success).await;
            }
            LeadOutcome::Lost => {
                self.step_down(&lost, &mut work, work_done, last_success)
                    .await;
            }
        }
        outcome
    }

    /// Ends a term: fires the token, waits for the work until the lease could expire
    /// for the others, and publishes the change.
    async fn step_down(
        &self,
        lost: &CancellationToken,
        work: &mut JoinHandle<()>,
        work_done: bool,
        last_success: Instant,
    ) {
        lost.cancel();
        // Who holds the lease now is unknown until the next read; keep the last holder seen.
        let leader = self.leader();
        self.set_leader(leader, false);
        *lock_unpoisoned(&self.shared.last_renewal) = None;
        info!("stopped leading");
        self.emit(ElectionEvent::StoppedLeading);
        if work_done {
            return;
        }
        let others_may_lead = last_success + self.shared.config.lease_duration;
        match timeout_at(others_may_lead, &mut *work).await {
            Ok(Err(e)) if e.is_panic() => error!(error = %e, "the leader's work panicked"),
            Ok(_) => {}
            Err(_) => {
                error!("the leader's work outlived its lease; aborting it");
                work.abort();
            }
        }
    }

    async fn renew(
        &self,
        record: &mut LeaderElectionRecord,
        version: &Version,
        deadline: Instant,
    ) -> Result<Version, RenewError> {
        let lock = &*self.shared.lock;
        let identity = &self.shared.config.identity;
        // Fast path: one compare-and-swap with the version we wrote last.
        let err = match timeout_at(deadline, lock.update(record, version)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(RenewError::Failed(LockError::Timeout(
                    self.shared.config.renew_deadline,
                )))
            }
        };
        if !matches!(err, LockError::Conflict) {
            return Err(RenewError::Failed(err));
        }
        // The version moved: read to learn whether someone else holds it now, or only
        // touched the object (labels, a Go client's annotation rewrite).
        let current = match timeout_at(deadline, lock.get()).await {
            Ok(Ok(Some(v))) => v,
            Ok(Ok(None)) => return Err(RenewError::Lost(None)),
            Ok(Err(LockError::InvalidRecord { .. })) => return Err(RenewError::Lost(None)),
            Ok(Err(e)) => return Err(RenewError::Failed(e)),
            Err(_) => {
                return Err(RenewError::Failed(LockError::Timeout(
                    self.shared.config.renew_deadline,
                )))
            }
        };
        if current.record.holder_identity != *identity {
            let holder = Some(current.record.holder_identity).filter(|h| !h.is_empty());
            return Err(RenewError::Lost(holder));
        }
        record.leader_transitions = current.record.leader_transitions;
        match timeout_at(deadline, lock.update(record, &current.version)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RenewError::Failed(e)),
            Err(_) => Err(RenewError::Failed(LockError::Timeout(
                self.shared.config.renew_deadline,
            ))),
        }
    }

    async fn release(
        &self,
        record: &LeaderElectionRecord,
        version: &Version,
        last_success: Instant,
    ) {
        let now = jiff::Timestamp::now();
        // What client-go writes on release: no holder, a one-second lease.
        let released = LeaderElectionRecord {
            leader_transitions: record.leader_transitions,
            lease_duration_seconds: 1,
            acquire_time: Some(now),
            renew_time: Some(now),
            ..Default::default()
        };
        let deadline = (last_success + self.shared.config.renew_deadline).max(Instant::now());
        match timeout_at(deadline, self.shared.lock.update(&released, version)).await {
            Ok(Ok(_)) => info!("released lease"),
            Ok(Err(e)) => {
                warn!(error = %e, "failed to release lease; standbys take over when it expires")
            }
            Err(_) => warn!("timed out releasing lease; standbys take over when it expires"),
        }
    }

    // ---- helpers -------------------------------------------------------------

    /// One lock call, bounded by the renew deadline.
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let limit = self.shared.config.renew_deadline;
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err(LockError::Timeout(limit)))
    }

    /// Sleeps unless shut down first; false on shutdown.
    async fn pause(&self, d: Duration, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    fn renewed(&self, at: Instant) {
        *lock_unpoisoned(&self.shared.last_renewal) = Some(at);
    }

    fn set_leader(&self, leader: Option<String>, is_leader: bool) {
        self.shared.report.set_leader(leader, is_leader);
    }

    fn emit(&self, event: ElectionEvent) {
        self.shared.report.emit(event);
    }

    fn warn_invalid(&self, e: &crate::record::InvalidRecord) {
        warn!(
            reason = %e.reason,
            text = truncate(&e.text, 256),
            "the lock holds an invalid record; it is overwritten if it stays unchanged for a lease duration"
        );
    }
}

enum RenewError {
    /// Someone else holds the lease (or it is gone).
    Lost(Option<String>),
    /// The backend failed; retry until the deadline.
    Failed(LockError),
}

/// The lease a standby grants the holder: the holder's own `leaseDurationSeconds`,
/// ours when the record's is not positive, and at most [`MAX_HONOURED_LEASE`].
fn honoured_lease(seconds: i32, config: &Config) -> Duration {
    if seconds <= 0 {
        return config.lease_duration;
    }
    Duration::from_secs(seconds as u64).min(MAX_HONOURED_LEASE)
}

async fn next_event(watch: &mut Option<WatchStream>) -> Option<Result<LockEvent, LockError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
