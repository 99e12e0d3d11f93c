//! The election loop: campaign, lead, step down, campaign again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use crate::config::Config;
use crate::error::{ConfigError, LockError};
use crate::leadership::Leadership;
use crate::lock::{LeaseLock, LockEvent, Version, Versioned, WatchStream};
use crate::record::{truncate, LeaderElectionRecord};
use crate::status::Reporter;
use crate::term::{observers, Core, Elected, Renewal, Term};

use crate::config::MAX_HONOURED_LEASE;

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
    core: Core,
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
    /// The last record with a holder seen in this campaign, kept while later states
    /// (deleted, blanked, garbled) replace it: their writer may not be that holder,
    /// who may still be acting until its lease runs out.
    live: Option<Live>,
    /// True when the record seen directly before `seen` was `live` itself, so that a
    /// release can be told from a blank written later by someone else.
    follows_live: bool,
    /// When the lease of the last holder other than this replica runs out, unless it
    /// released: in a coordinated election someone else names this replica, and it
    /// must not act beside the holder it replaces.
    others_until: Option<Instant>,
}

/// A holder last seen alive: its lease as honoured, from when its record last changed.
#[derive(Clone, Copy)]
struct Live {
    until: Instant,
    leader_transitions: i32,
}

/// The state a new leader starts from.
struct Acquired {
    record: LeaderElectionRecord,
    version: Version,
    sent_at: Instant,
}

impl LeaderElector {
    /// An elector for `lock`, after checking `config` as client-go does. `lock` may
    /// be a `Box<dyn LeaseLock>`, for a lock chosen at run time.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field and the rule when the timing is invalid or the
    /// identity is empty.
    pub fn new(lock: impl LeaseLock, config: Config) -> Result<Self, ConfigError> {
        Ok(Self {
            shared: Arc::new(Shared {
                lock: Box::new(lock),
                core: Core::new(config)?,
            }),
        })
    }

    /// Like [`new`](Self::new), for a lock chosen at run time.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    #[deprecated(
        since = "0.2.0",
        note = "LeaderElector::new takes a Box<dyn LeaseLock> now"
    )]
    pub fn from_boxed(lock: Box<dyn LeaseLock>, config: Config) -> Result<Self, ConfigError> {
        Self::new(lock, config)
    }

    observers!(
        "The holder in the last record observed (this replica when it leads, and the \
         last holder seen after it steps down, until it reads the record again)."
    );

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
        let config = &self.shared.core.config;
        let span = info_span!("leader_election", name = %config.name, identity = %config.identity);
        let (this, shutdown) = (self, &shutdown);
        let campaign =
            move || async move { this.campaign(shutdown).await.map(|a| this.elected(a)) };
        self.shared
            .core
            .run(
                span,
                self.shared.lock.describe(),
                shutdown,
                campaign,
                &mut on_started_leading,
            )
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
                let seen = match self.shared.core.call(lock.get()).await {
                    Ok(v) => v.map_or(Seen::Absent, Seen::Record),
                    Err(LockError::InvalidRecord { source, version }) => {
                        self.warn_invalid(&source);
                        Seen::Invalid { version }
                    }
                    Err(e) => {
                        warn!(error = %e, "failed to read the lock; retrying");
                        if !self.shared.core.back_off(shutdown).await {
                            return None;
                        }
                        continue;
                    }
                };
                // Asked before the observation, which starts the leaderless clock.
                let hidden = obs.is_none() && self.may_hide_a_holder(&seen).await;
                self.observe(&mut obs, seen);
                if hidden {
                    debug!("no history: waiting out any leader that may still act");
                    self.suspect_a_hidden_holder(&mut obs, Instant::now());
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
                    wait_until.min(Instant::now() + self.shared.core.config.jittered_retry())
                };
                let wake = match rewatch_at {
                    Some(t) => wake.min(t),
                    None => wake,
                };
                // A record without a version cannot be written over: when its wait
                // ends, read it again instead of trying the cached observation.
                let unwritable = matches!(o.seen, Seen::Invalid { version: None });
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = sleep_until(wake) => {
                        if rewatch_at.is_some_and(|t| t <= Instant::now()) {
                            // Reopened on the next pass, after a read.
                            rewatch_at = None;
                        } else if Instant::now() >= wait_until {
                            // Expired as observed: try at once with the cached version.
                            must_read = unwritable;
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
                                rewatch_at = Some(Instant::now() + self.shared.core.config.jittered_retry());
                            }
                        }
                    },
                }
                continue;
            }

            self.shared.core.report.no_live_leader();
            match self.try_acquire(o).await {
                Ok(acquired) => return Some(acquired),
                Err(e) if e.is_contention() => {
                    debug!("another candidate wrote first; reading again");
                    // Its record may be gone before we read (deleted, blanked): the
                    // holder we never saw is waited out as if we had.
                    self.suspect_a_hidden_holder(&mut obs, Instant::now());
                }
                Err(e) => {
                    warn!(error = %e, "failed to acquire the lease; retrying");
                    if !self.shared.core.back_off(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// `Some(instant)` when another holder's lease is still running on our clock;
    /// `None` when this replica may try to take it.
    ///
    /// A record that is gone, blank or unreadable is free only once the last holder
    /// seen alive has run out of lease: anyone with write access (an operator's
    /// `kubectl delete`, an editor) can produce it while that holder still acts. Only
    /// the holder's own release is taken at once; see [`is_release`].
    fn expiry(&self, o: &Observation) -> Option<Instant> {
        let config = &self.shared.core.config;
        if config.coordinated {
            return self.coordinated_expiry(o);
        }
        let live_until = o.live.map(|l| l.until);
        let until = match &o.seen {
            Seen::Record(v) if v.record.holder_identity == config.identity => return None,
            Seen::Record(v) if v.record.is_released() => {
                if o.follows_live && o.live.is_some_and(|l| is_release(&v.record, l)) {
                    return None;
                }
                live_until?
            }
            Seen::Absent => live_until?,
            // What was seen only moves the takeover later: an edit that shortens the
            // lease, or names another holder with a short one, leaves the wait for the
            // holder seen before.
            Seen::Record(v) => live_until.unwrap_or_else(|| {
                o.since + honoured_lease(v.record.lease_duration_seconds, config)
            }),
            // Nobody can tell who holds an unreadable record: wait one full lease of
            // ours after it last changed, in case a holder is alive, then overwrite it.
            Seen::Invalid { version: Some(_) } => {
                let ours = o.since + config.lease_duration;
                live_until.map_or(ours, |l| l.max(ours))
            }
            Seen::Invalid { version: None } => return Some(Instant::now() + config.retry_period),
        };
        (until > Instant::now()).then_some(until)
    }

    /// [`expiry`](Self::expiry) in a coordinated election: the Lease is taken only
    /// once someone else (kube-apiserver's controller) names this replica, not as the
    /// preferred holder's predecessor, and only after the holder it last saw has run
    /// out of lease or released. Otherwise it waits for the record to change, reading
    /// it every retry period where it cannot watch.
    fn coordinated_expiry(&self, o: &Observation) -> Option<Instant> {
        let identity = &self.shared.core.config.identity;
        let named = matches!(&o.seen, Seen::Record(v)
            if v.record.holder_identity == *identity
                && (v.record.preferred_holder.is_empty() || v.record.preferred_holder == *identity));
        if !named {
            return Some(Instant::now() + MAX_HONOURED_LEASE);
        }
        o.others_until.filter(|until| *until > Instant::now())
    }

    async fn try_acquire(&self, o: &Observation) -> Result<Acquired, LockError> {
        let config = &self.shared.core.config;
        let now = jiff::Timestamp::now();
        let mut record = LeaderElectionRecord {
            holder_identity: config.identity.clone(),
            lease_duration_seconds: config.lease_seconds(),
            acquire_time: Some(now),
            renew_time: Some(now),
            ..Default::default()
        };
        if let Seen::Record(old) = &o.seen {
            // Written back as read: they belong to kube-apiserver's coordinated
            // election, which client-go's plain update would clear.
            record.strategy.clone_from(&old.record.strategy);
            record
                .preferred_holder
                .clone_from(&old.record.preferred_holder);
            let ours = old.record.holder_identity == config.identity;
            record.leader_transitions = if ours {
                // kube-apiserver names a coordinated holder without an acquire time.
                record.acquire_time = old.record.acquire_time.or(record.acquire_time);
                old.record.leader_transitions
            } else {
                old.record.leader_transitions.saturating_add(1)
            };
        }
        let sent_at = Instant::now();
        let version = match o.seen.version() {
            None => {
                self.shared
                    .core
                    .call(self.shared.lock.create(&record))
                    .await?
            }
            Some(v) => {
                self.shared
                    .core
                    .call(self.shared.lock.update(&record, v))
                    .await?
            }
        };
        Ok(Acquired {
            record,
            version,
            sent_at,
        })
    }

    /// Records what was seen; the lease clock restarts whenever the version moves.
    fn observe(&self, obs: &mut Option<Observation>, seen: Seen) {
        // `Seen` carries the version: any write, even one that left the record's
        // bytes as they were, restarts the holder's lease.
        let changed = obs.as_ref().is_none_or(|o| o.seen != seen);
        if !changed {
            return;
        }
        let now = Instant::now();
        let config = &self.shared.core.config;
        let holder = match &seen {
            Seen::Record(v) if !v.record.is_released() => Some(v.record.holder_identity.clone()),
            _ => None,
        };
        let (live, follows_live) = match (&seen, obs.as_ref()) {
            (Seen::Record(v), prev) if !v.record.is_released() => {
                let until = now + honoured_lease(v.record.lease_duration_seconds, config);
                let before = prev.and_then(|p| p.live).map(|l| l.until);
                (
                    Some(Live {
                        until: before.map_or(until, |b| b.max(until)),
                        leader_transitions: v.record.leader_transitions,
                    }),
                    false,
                )
            }
            (_, Some(prev)) => {
                let prev_live = matches!(&prev.seen, Seen::Record(v) if !v.record.is_released());
                (prev.live, prev_live)
            }
            (_, None) => (None, false),
        };
        let prev_others = obs.as_ref().and_then(|p| p.others_until);
        let others_until = match &seen {
            // Only a coordinated election is named by someone else and needs this.
            _ if !config.coordinated => None,
            Seen::Record(v)
                if !v.record.is_released() && v.record.holder_identity != config.identity =>
            {
                let until = now + honoured_lease(v.record.lease_duration_seconds, config);
                Some(prev_others.map_or(until, |b| b.max(until)))
            }
            Seen::Record(v) if follows_live && live.is_some_and(|l| is_release(&v.record, l)) => {
                None
            }
            _ => prev_others,
        };
        *obs = Some(Observation {
            seen,
            since: now,
            live,
            follows_live,
            others_until,
        });
        self.shared.core.report.set_leader(holder, false);
    }

    /// A standby with no history that finds the record absent, garbled or blanked by
    /// someone other than a releasing holder cannot know whether a leader still acts
    /// on it: it waits as long as a leader may act after its last renewal (the renew
    /// deadline, with the clock-rate margin: our lease) from first sight, unless the
    /// lock proves that nobody held the record. True when `seen`, the first state of a
    /// campaign, may hide such a leader.
    async fn may_hide_a_holder(&self, seen: &Seen) -> bool {
        match seen {
            Seen::Absent => {
                let asked = self
                    .shared
                    .core
                    .call(self.shared.lock.proves_vacancy())
                    .await;
                !asked.unwrap_or_else(|e| {
                    debug!(error = %e, "could not ask the lock whether the record was ever held");
                    false
                })
            }
            // In a coordinated election someone else names this replica: the holder
            // it replaced may still be acting.
            Seen::Record(v)
                if self.shared.core.config.coordinated
                    && v.record.holder_identity == self.shared.core.config.identity =>
            {
                true
            }
            Seen::Record(_) => is_outside_blank(seen),
            Seen::Invalid { .. } => true,
        }
    }

    /// Waits out, from `since`, a holder this replica has not seen: the one
    /// [`may_hide_a_holder`](Self::may_hide_a_holder) suspects, or the one whose write
    /// beat ours.
    fn suspect_a_hidden_holder(&self, obs: &mut Option<Observation>, since: Instant) {
        let Some(o) = obs.as_mut() else { return };
        let until = since + self.shared.core.config.lease_duration;
        o.others_until = Some(o.others_until.map_or(until, |u| u.max(until)));
        o.live = Some(Live {
            until: o.live.map_or(until, |l| l.until.max(until)),
            // No transitions are known: no blank seen after this one reads as a
            // release of this suspected holder.
            leader_transitions: i32::MIN,
        });
    }

    // ---- leader --------------------------------------------------------------

    /// The term that begins with the write that acquired the lease.
    fn elected(&self, acquired: Acquired) -> Elected<LeaseTerm<'_>> {
        let Acquired {
            record,
            version,
            sent_at,
        } = acquired;
        Elected {
            fencing_token: self.shared.lock.fencing_token(&record, &version),
            acquired_at: sent_at,
            valid_from: sent_at,
            term: LeaseTerm {
                lock: &*self.shared.lock,
                config: &self.shared.core.config,
                report: &self.shared.core.report,
                record,
                version,
                watch: None,
                may_watch: true,
                rewatched_at: None,
                yielded: None,
            },
        }
    }

    // ---- helpers -------------------------------------------------------------

    fn warn_invalid(&self, e: &crate::record::InvalidRecord) {
        warn!(
            reason = %e.reason,
            text = truncate(&e.text, 256),
            "the lock holds an invalid record; it is overwritten if it stays unchanged for a lease duration"
        );
    }
}

/// True when `record`, seen directly after the live holder's record `live`, is what
/// that holder writes to release (client-go's `release()`): no holder, a one-second
/// lease, and the holder's `leaderTransitions` kept. A blank written by anyone else
/// (`kubectl edit`, a tool that clears the holder) almost always differs in one of
/// these; one that matches exactly cannot be told apart (docs/safety.md).
fn is_release(record: &LeaderElectionRecord, live: Live) -> bool {
    record.is_released()
        && record.lease_duration_seconds == 1
        && record.leader_transitions == live.leader_transitions
}

/// True for a record without a holder that is not what a releasing holder writes
/// (client-go's released record keeps a one-second lease): someone else blanked it.
fn is_outside_blank(seen: &Seen) -> bool {
    matches!(seen, Seen::Record(v) if v.record.is_released() && v.record.lease_duration_seconds != 1)
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

/// A term over a [`LeaseLock`]: renewed by compare-and-swap on the version written
/// last, released by writing client-go's released record, and ended early when the
/// lock's watch shows the record taken, deleted, blanked or garbled.
struct LeaseTerm<'a> {
    lock: &'a dyn LeaseLock,
    config: &'a Config,
    report: &'a Reporter,
    record: LeaderElectionRecord,
    version: Version,
    /// The watch on our own record. Kept here, not in the `lost_early` future, which
    /// is dropped whenever the renewal timer fires first.
    watch: Option<WatchStream>,
    /// False while there is no reason to open the watch again: it was just opened,
    /// or the lock said it cannot watch (asked again after each renewal).
    may_watch: bool,
    /// When the watch on our record was last reopened after it broke.
    rewatched_at: Option<Instant>,
    /// The record that asked this coordinated leader to hand over to its
    /// `preferredHolder`: released once the work has stopped.
    yielded: Option<Versioned>,
}

impl LeaseTerm<'_> {
    /// True when a record that still names us differs from what we wrote in what a
    /// standby times or compares: the lease or the transitions. Only someone else
    /// writes that; a touch of other fields (labels, renew time) is not a takeover.
    fn edited_under_us(&self, seen: &LeaderElectionRecord) -> bool {
        seen.lease_duration_seconds != self.record.lease_duration_seconds
            || seen.leader_transitions != self.record.leader_transitions
    }

    /// In a coordinated election, the replica a record naming us asks to hand over
    /// to (client-go stops renewing then). Remembers the record, to release it.
    fn asked_to_yield(&mut self, seen: &Versioned) -> Option<String> {
        let preferred = &seen.record.preferred_holder;
        if !self.config.coordinated || preferred.is_empty() || *preferred == self.config.identity {
            return None;
        }
        info!(preferred_holder = %truncate(preferred, 256), "the coordinated election prefers another holder; stepping down");
        self.yielded = Some(seen.clone());
        Some(preferred.clone())
    }

    /// The verdict on a write that returned our version: one that answers with the
    /// version it was given changed nothing (a server skips a write that stores the
    /// same bytes, as whole-second annotation times can), so it proves nobody else
    /// wrote, but not that the lease was extended for the others.
    fn renewed(&mut self, attempt_at: Instant, expected: &Version) -> Result<Instant, Renewal> {
        if self.version == *expected {
            return Err(Renewal::Failed(LockError::NotApplied {
                lock: self.lock.describe(),
                version: expected.clone(),
            }));
        }
        if self.watch.is_none() {
            self.may_watch = true;
        }
        Ok(attempt_at)
    }
}

/// One lock call of a term, finished by `deadline` and within the request timeout,
/// so that one stuck request does not spend the whole renew deadline. Not a method:
/// the term holds a watch stream, which is not `Sync`, so it cannot be borrowed
/// across an await.
async fn by<T>(
    config: &Config,
    deadline: Instant,
    fut: impl Future<Output = Result<T, LockError>>,
) -> Result<T, Renewal> {
    let start = Instant::now();
    let limit = deadline.min(start + config.request_timeout());
    match timeout_at(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Renewal::Failed(e)),
        Err(_) => Err(Renewal::Failed(LockError::Timeout(limit - start))),
    }
}

#[async_trait]
impl Term for LeaseTerm<'_> {
    async fn renew(&mut self, deadline: Instant) -> Result<Instant, Renewal> {
        let attempt_at = Instant::now();
        self.record.renew_time = Some(jiff::Timestamp::now());
        // Fast path: one compare-and-swap with the version we wrote last.
        match by(
            self.config,
            deadline,
            self.lock.update(&self.record, &self.version),
        )
        .await
        {
            Ok(v) => {
                let expected = std::mem::replace(&mut self.version, v);
                return self.renewed(attempt_at, &expected);
            }
            Err(Renewal::Failed(LockError::Conflict)) => self.report.slow_path(),
            Err(e) => return Err(e),
        }
        // The version moved: read to learn whether someone else holds it now, or only
        // touched the object (labels, a Go client's annotation rewrite).
        let current = match by(self.config, deadline, self.lock.get()).await {
            Ok(Some(v)) => v,
            Ok(None) | Err(Renewal::Failed(LockError::InvalidRecord { .. })) => {
                return Err(Renewal::Lost(None))
            }
            Err(e) => return Err(e),
        };
        if current.record.holder_identity != self.config.identity {
            let holder = Some(current.record.holder_identity).filter(|h| !h.is_empty());
            return Err(Renewal::Lost(holder));
        }
        if self.edited_under_us(&current.record) {
            info!("the record naming this replica was edited by someone else");
            return Err(Renewal::Lost(None));
        }
        if let Some(preferred) = self.asked_to_yield(&current) {
            return Err(Renewal::Lost(Some(preferred)));
        }
        // Fields this replica does not write are written back as they are now.
        self.record.strategy = current.record.strategy;
        self.record.preferred_holder = current.record.preferred_holder;
        self.version = by(
            self.config,
            deadline,
            self.lock.update(&self.record, &current.version),
        )
        .await?;
        self.renewed(attempt_at, &current.version)
    }

    async fn lost_early(&mut self) -> Option<String> {
        loop {
            if self.watch.is_none() {
                if self.may_watch {
                    self.watch = self.lock.watch();
                    self.may_watch = false;
                }
                if self.watch.is_none() {
                    // Until the next renewal reopens it, only renewals can tell.
                    return std::future::pending().await;
                }
            }
            match next_event(&mut self.watch).await {
                Some(Ok(LockEvent::Changed(v))) => {
                    if v.record.holder_identity == self.config.identity {
                        if self.edited_under_us(&v.record) {
                            // Standbys may time the edited lease: stop acting now.
                            info!("the record naming this replica was edited by someone else");
                            return None;
                        }
                        if let Some(preferred) = self.asked_to_yield(&v) {
                            return Some(preferred);
                        }
                        // Our own renewal, or a touch that kept us as holder (labels,
                        // a Go client's annotation rewrite): the next renewal's
                        // compare-and-swap sorts out the version.
                        continue;
                    }
                    let holder = v.record.holder_identity;
                    info!(holder = %truncate(&holder, 256), "the record no longer names this replica");
                    return Some(holder).filter(|h| !h.is_empty());
                }
                Some(Ok(LockEvent::Deleted)) => {
                    info!("the record was deleted");
                    return None;
                }
                Some(Err(LockError::InvalidRecord { source, .. })) => {
                    info!(reason = %source.reason, "the record became unreadable");
                    return None;
                }
                other => {
                    // A broken watch says nothing about the lease; renewals still do.
                    // It is reopened at once, and at most once a retry period, so that
                    // an outside edit is not missed until the next renewal.
                    if let Some(Err(e)) = other {
                        debug!(error = %e, "watch on our record failed; reopening it");
                    }
                    self.watch = None;
                    let now = Instant::now();
                    if let Some(t) = self
                        .rewatched_at
                        .filter(|t| now < *t + self.config.retry_period)
                    {
                        sleep_until(t + self.config.retry_period).await;
                    }
                    self.rewatched_at = Some(Instant::now());
                    self.may_watch = true;
                }
            }
        }
    }

    async fn release(&mut self, last_success: Instant) {
        let deadline = (last_success + self.config.renew_deadline).max(Instant::now());
        write_release(self.lock, &self.record, &self.version, deadline).await;
    }

    /// A coordinated leader asked to hand over releases once its work has stopped,
    /// so that kube-apiserver names the preferred holder at once rather than after
    /// the lease runs out. The compare-and-swap fails if anyone wrote since.
    async fn abandon(&mut self) {
        if let Some(seen) = self.yielded.take() {
            let deadline = Instant::now() + self.config.renew_deadline;
            write_release(self.lock, &seen.record, &seen.version, deadline).await;
        }
    }
}

/// Writes client-go's released record over `last` (at `version`): no holder, a
/// one-second lease, the transitions kept; `strategy` and `preferredHolder` stay.
/// Not a method, for the reason [`by`] is not.
async fn write_release(
    lock: &dyn LeaseLock,
    last: &LeaderElectionRecord,
    version: &Version,
    deadline: Instant,
) {
    let now = jiff::Timestamp::now();
    let released = LeaderElectionRecord {
        leader_transitions: last.leader_transitions,
        lease_duration_seconds: 1,
        acquire_time: Some(now),
        renew_time: Some(now),
        strategy: last.strategy.clone(),
        preferred_holder: last.preferred_holder.clone(),
        ..Default::default()
    };
    match timeout_at(deadline, lock.update(&released, version)).await {
        Ok(Ok(_)) => info!("released lease"),
        Ok(Err(e)) => {
            warn!(error = %e, "failed to release lease; standbys take over when it expires")
        }
        Err(_) => warn!("timed out releasing lease; standbys take over when it expires"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::MemoryStore;

    #[test]
    fn an_elector_takes_a_lock_chosen_at_run_time() {
        let lock: Box<dyn LeaseLock> = Box::new(MemoryStore::new().lock("a"));
        assert!(LeaderElector::new(lock, Config::new("a")).is_ok());
        let shared = Arc::new(MemoryStore::new().lock("b"));
        assert!(LeaderElector::new(Arc::clone(&shared), Config::new("b")).is_ok());
    }
}
