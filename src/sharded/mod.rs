//! Sharded leadership: `N` shards, each one election on its own lock, balanced across
//! the live replicas.
//!
//! Built on the public pieces only: one [`LeaderElector`] per shard this replica
//! should own, on the lock named `<name>-shard-<i>`, and a shared members record,
//! `<name>-members`, for the count of live replicas. See `docs/sharding.md`.

mod balance;
mod membership;
mod range;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

pub use balance::shard_for_key;
pub use range::ShardRange;

use crate::config::Config;
use crate::elector::LeaderElector;
use crate::error::ConfigError;
use crate::leadership::Leadership;
use crate::lock::LeaseLock;
use crate::status::{ElectionEvent, Subscribers};
use crate::sync::lock_unpoisoned;
use membership::Membership;

/// Makes the lock of one object by name: `<name>-shard-<i>` for each shard and
/// `<name>-members` for the members record.
pub type LockFactory = Arc<dyn Fn(&str) -> Box<dyn LeaseLock> + Send + Sync>;

/// What a [`ShardedElector`] publishes: the shards this replica owns and the live
/// replicas it sees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStatus {
    /// The shards whose work runs on this replica now.
    pub owned: BTreeSet<u32>,
    /// The shards this replica campaigns for (its target share).
    pub assigned: BTreeSet<u32>,
    /// The live replicas as last observed, sorted, this one included.
    pub members: Vec<String>,
}

/// Runs one replica's side of a sharded election: `shards` shards (numbered
/// `0..shards`), each an election on its own lock, spread over the live replicas so
/// that each holds at most `ceil(shards / alive)`.
///
/// Every retry period the replica bumps its counter in the members record and
/// recomputes the target owner of every shard from the live members (rendezvous
/// hashing with a cap, the same table on every replica). It runs a [`LeaderElector`]
/// for each shard assigned to it, and stops (gracefully, releasing the lease after
/// the work stopped) the electors of shards assigned elsewhere for a full retry
/// period, so that the new owner, already watching, takes over at once. Each shard's
/// ownership is a [`Leadership`] of its own, with its own fencing token. Safety is
/// per shard and is the elector's: membership only decides who campaigns.
///
/// Cheap to clone; clones share the same state.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leaderelection::{Config, LeaseLock, MemoryStore, ShardedElector};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), leaderelection::ConfigError> {
/// let store = MemoryStore::new();
/// let config = Config::new("scheduler").identity("replica-a");
/// let elector = ShardedElector::new(config, 12, move |name: &str| {
///     Box::new(store.lock(name)) as Box<dyn LeaseLock>
/// })?;
/// let shutdown = CancellationToken::new();
/// let run = tokio::spawn({
///     let (elector, shutdown) = (elector.clone(), shutdown.clone());
///     async move {
///         elector
///             .run(shutdown, |shard, leadership| async move {
///                 // Work on the keys of `shard` (see `shard_for_key`), fenced by
///                 // `leadership.fencing_token()`, until the shard is lost.
///                 leadership.lost().await;
///                 let _ = shard;
///             })
///             .await
///     }
/// });
/// tokio::time::sleep(Duration::from_secs(5)).await;
/// assert_eq!(elector.owned().len(), 12); // alone, it owns every shard
/// shutdown.cancel();
/// run.await.unwrap();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ShardedElector {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    shards: u32,
    locks: LockFactory,
    status: watch::Sender<ShardStatus>,
    events: ShardSubscribers,
}

/// The receivers of each shard's events, shared with the shards' electors.
type ShardSubscribers = Arc<Mutex<BTreeMap<u32, Subscribers>>>;

impl fmt::Debug for ShardedElector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedElector")
            .field("config", &self.shared.config)
            .field("shards", &self.shared.shards)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

impl ShardedElector {
    /// A sharded elector for `shards` shards; `locks` makes the lock of an object by
    /// name (`<config.name>-shard-<i>`, `<config.name>-members`) on any backend.
    /// The timing in `config` applies to every shard and to the members record.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` is invalid (as for [`LeaderElector::new`]), or
    /// [`ConfigError::NoShards`] when `shards` is zero.
    pub fn new<F>(config: Config, shards: u32, locks: F) -> Result<Self, ConfigError>
    where
        F: Fn(&str) -> Box<dyn LeaseLock> + Send + Sync + 'static,
    {
        config.validate()?;
        if shards == 0 {
            return Err(ConfigError::NoShards);
        }
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                shards,
                locks: Arc::new(locks),
                status: watch::Sender::new(ShardStatus::default()),
                events: ShardSubscribers::default(),
            }),
        })
    }

    /// The configuration every shard's elector runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The number of shards.
    pub fn shards(&self) -> u32 {
        self.shared.shards
    }

    /// The shard of `key` (see [`shard_for_key`]).
    pub fn shard_for_key(&self, key: impl AsRef<[u8]>) -> u32 {
        shard_for_key(key, self.shared.shards)
    }

    /// The part of the 64-bit FNV-1a hash space that shard `shard` covers, in the
    /// mapping the Kubernetes API server can filter lists and watches by (KEP-5866):
    /// shard `i` of `n` covers `[floor(i * 2^64 / n), floor((i + 1) * 2^64 / n))`.
    ///
    /// A second mapping besides [`shard_for_key`](Self::shard_for_key): for a
    /// controller whose shard owner should list and watch only its own objects, pass
    /// `shard_range(shard).selector("object.metadata.uid")` as the request's
    /// `shardSelector`, and keep only the objects for which
    /// [`owns_uid`](Self::owns_uid) holds (servers without the selector ignore it and
    /// send every object). See `docs/sharding.md`.
    ///
    /// # Panics
    ///
    /// When `shard` is not less than [`shards`](Self::shards).
    ///
    /// # Examples
    ///
    /// ```
    /// use leaderelection::{Config, LeaseLock, MemoryStore, ShardedElector};
    ///
    /// # fn main() -> Result<(), leaderelection::ConfigError> {
    /// let store = MemoryStore::new();
    /// let elector = ShardedElector::new(Config::new("controller"), 2, move |name: &str| {
    ///     Box::new(store.lock(name)) as Box<dyn LeaseLock>
    /// })?;
    /// assert_eq!(
    ///     elector.shard_range(1).selector("object.metadata.uid"),
    ///     "shardRange(object.metadata.uid, '0x8000000000000000', '0x10000000000000000')",
    /// );
    /// # Ok(()) }
    /// ```
    pub fn shard_range(&self, shard: u32) -> ShardRange {
        ShardRange::of(shard, self.shared.shards)
    }

    /// The shard whose [`shard_range`](Self::shard_range) holds the FNV-1a hash of
    /// `key` (for API objects, their UID): the range mapping's counterpart of
    /// [`shard_for_key`](Self::shard_for_key), with which it mostly disagrees.
    pub fn range_shard_for_key(&self, key: impl AsRef<[u8]>) -> u32 {
        ShardRange::shard_for_key(key, self.shared.shards)
    }

    /// Whether the object with UID `uid` belongs to a shard this replica owns now, in
    /// the range mapping: the client-side filter of a shard owner's lists and watches,
    /// which servers without KEP-5866's `shardSelector` need (they return every
    /// object) and which costs nothing on servers that filter. For an action on the
    /// object, use the shard's [`Leadership`] (its fencing token and validity).
    pub fn owns_uid(&self, uid: impl AsRef<[u8]>) -> bool {
        self.owns(self.range_shard_for_key(uid))
    }

    /// The shards whose work runs on this replica now.
    pub fn owned(&self) -> BTreeSet<u32> {
        self.shared.status.borrow().owned.clone()
    }

    /// Whether this replica owns `shard` now. For an action on the shard's data, use
    /// the shard's [`Leadership`] instead (its fencing token and validity).
    pub fn owns(&self, shard: u32) -> bool {
        self.shared.status.borrow().owned.contains(&shard)
    }

    /// The live replicas as last observed, sorted, this one included.
    pub fn members(&self) -> Vec<String> {
        self.shared.status.borrow().members.clone()
    }

    /// Changes of the shards owned and assigned and of the members.
    pub fn subscribe(&self) -> watch::Receiver<ShardStatus> {
        self.shared.status.subscribe()
    }

    /// Every change of leadership of shard `shard` that this replica sees, from now
    /// on, each reported once, in order: the [`ElectionEvent`]s of the
    /// [`LeaderElector`]s this replica runs for the shard, one after the other as the
    /// shard is assigned here, handed over and assigned here again.
    /// [`ElectionEvent::StartedLeading`] carries the fencing token of each term.
    ///
    /// Nothing is reported while the shard is assigned elsewhere (no elector of this
    /// replica watches it then), nor for a shard past [`shards`](Self::shards). The
    /// channel is unbounded and closes when the elector and its shards' electors are
    /// gone; drop the receiver when no longer interested.
    ///
    /// # Examples
    ///
    /// ```
    /// use leaderelection::{Config, ElectionEvent, LeaseLock, MemoryStore, ShardedElector};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), leaderelection::ConfigError> {
    /// let store = MemoryStore::new();
    /// let elector = ShardedElector::new(Config::new("jobs").identity("a"), 4, move |name: &str| {
    ///     Box::new(store.lock(name)) as Box<dyn LeaseLock>
    /// })?;
    /// let mut events = elector.shard_events(2);
    /// let shutdown = CancellationToken::new();
    /// let run = tokio::spawn({
    ///     let (elector, shutdown) = (elector.clone(), shutdown.clone());
    ///     async move { elector.run(shutdown, |_, l| async move { l.lost().await }).await }
    /// });
    /// loop {
    ///     if let Some(ElectionEvent::StartedLeading { .. }) = events.recv().await {
    ///         break;
    ///     }
    /// }
    /// assert!(elector.owns(2));
    /// shutdown.cancel();
    /// run.await.unwrap();
    /// # Ok(()) }
    /// ```
    pub fn shard_events(&self, shard: u32) -> mpsc::UnboundedReceiver<ElectionEvent> {
        lock_unpoisoned(&self.shared.events)
            .entry(shard)
            .or_default()
            .subscribe()
    }

    /// The name of shard `shard`'s lock object: `<name>-shard-<shard>`.
    pub fn shard_lock_name(&self, shard: u32) -> String {
        format!("{}-shard-{shard}", self.shared.config.name)
    }

    /// The name of the members record: `<name>-members`.
    pub fn members_lock_name(&self) -> String {
        format!("{}-members", self.shared.config.name)
    }

    /// Joins the members, campaigns for this replica's share of the shards and runs
    /// `work(shard, leadership)` for every shard while it owns it, until `shutdown` is
    /// cancelled.
    ///
    /// The work of a shard must return soon after [`Leadership::lost`] fires, as for
    /// [`LeaderElector::run`]. On shutdown the replica leaves the members record
    /// first, waits about one retry period so the others start campaigning for its
    /// shards, then stops every shard's work and releases its leases.
    ///
    /// Backend errors never end the loop: a replica that cannot write the members
    /// record keeps its current assignment, and each shard's elector retries on its
    /// own.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future aborts every shard's elector without
    /// releasing (as a crash would; the shards' [`Leadership::lost`] fire at once and
    /// the others take over when the leases expire). Cancel `shutdown` instead.
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, work: F)
    where
        F: Fn(u32, Leadership) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = &self.shared.config;
        let span = info_span!("sharded_election", name = %config.name, identity = %config.identity);
        self.run_inner(shutdown, Arc::new(work))
            .instrument(span)
            .await
    }

    async fn run_inner<F, Fut>(&self, shutdown: CancellationToken, work: Arc<F>)
    where
        F: Fn(u32, Leadership) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = &self.shared.config;
        let mut members = Membership::new(
            (self.shared.locks)(&self.members_lock_name()),
            config.identity.clone(),
            config.lease_duration,
            config.retry_period,
        );
        // Dropping the set (the run future dropped) aborts every shard's elector.
        let mut tasks = JoinSet::new();
        let mut running: BTreeMap<u32, Running> = BTreeMap::new();
        // Shards handed over whose electors are still stopping (work draining, lease
        // being released): a new elector for such a shard, of the same identity,
        // would take the record naming us at once and run beside the old term.
        let mut stopping: BTreeMap<u32, CancellationToken> = BTreeMap::new();
        let mut surplus_since: BTreeMap<u32, Instant> = BTreeMap::new();

        loop {
            match members.beat().await {
                Ok(alive) => {
                    let owners = balance::assign(self.shared.shards, &alive);
                    let me = alive.iter().position(|m| *m == config.identity);
                    let assigned: BTreeSet<u32> = owners
                        .iter()
                        .enumerate()
                        .filter(|&(_, &o)| Some(o) == me)
                        .map(|(s, _)| s as u32)
                        .collect();
                    let now = Instant::now();
                    // Start campaigning at once for shards assigned here.
                    stopping.retain(|_, done| !done.is_cancelled());
                    for &shard in &assigned {
                        surplus_since.remove(&shard);
                        running.entry(shard).or_insert_with(|| {
                            let after = stopping.remove(&shard);
                            self.spawn(&mut tasks, shard, &work, after)
                        });
                    }
                    // Give up a shard assigned elsewhere after one full retry period,
                    // so its new owner has its elector watching when the lease is
                    // released.
                    let surplus: Vec<u32> = running
                        .keys()
                        .copied()
                        .filter(|s| !assigned.contains(s))
                        .collect();
                    for shard in surplus {
                        let since = *surplus_since.entry(shard).or_insert(now);
                        if now.duration_since(since) >= config.retry_period {
                            if let Some(r) = running.remove(&shard) {
                                debug!(shard, "handing the shard over");
                                r.stop.cancel();
                                stopping.insert(shard, r.done);
                            }
                            surplus_since.remove(&shard);
                        }
                    }
                    self.shared.status.send_modify(|s| {
                        if s.members != alive {
                            info!(members = ?alive, "members changed");
                        }
                        s.members = alive;
                        s.assigned = assigned;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "failed to renew membership; keeping the current shards");
                }
            }
            // Reap electors that ended (handed over).
            while let Some(res) = tasks.try_join_next() {
                if let Err(e) = res {
                    if e.is_panic() {
                        warn!("a shard's elector panicked");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sleep(config.retry_period) => {}
            }
        }

        // Leave first, so the others campaign for our shards before we release them.
        members.leave().await;
        if !running.is_empty() {
            sleep(config.retry_period.mul_f64(1.5)).await;
        }
        for r in running.values() {
            r.stop.cancel();
        }
        while tasks.join_next().await.is_some() {}
        self.shared.status.send_modify(|s| {
            s.assigned.clear();
            s.members.clear();
        });
    }

    /// Starts the elector of `shard`, once the elector it replaces (`after`) ended.
    fn spawn<F, Fut>(
        &self,
        tasks: &mut JoinSet<()>,
        shard: u32,
        work: &Arc<F>,
        after: Option<CancellationToken>,
    ) -> Running
    where
        F: Fn(u32, Leadership) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let config = self.shared.config.clone();
        let lock_name = self.shard_lock_name(shard);
        let config = Config {
            name: lock_name.clone(),
            recampaign: true,
            release_on_cancel: true,
            ..config
        };
        let lock = (self.shared.locks)(&lock_name);
        let status = self.shared.status.clone();
        let subscribers = Arc::clone(&self.shared.events);
        let work = Arc::clone(work);
        let token = stop.clone();
        let finished = done.clone().drop_guard();
        tasks.spawn(async move {
            let _finished = finished;
            if let Some(after) = after {
                tokio::select! {
                    _ = after.cancelled() => {}
                    _ = token.cancelled() => return,
                }
            }
            let elector = match LeaderElector::new(lock, config) {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, shard, "invalid shard configuration");
                    return;
                }
            };
            let mut events = elector.events();
            let run = elector.run(token, move |leadership| {
                let owned = Owned::new(status.clone(), shard);
                let fut = work(shard, leadership);
                async move {
                    fut.await;
                    drop(owned);
                }
            });
            tokio::pin!(run);
            loop {
                tokio::select! {
                    biased;
                    Some(event) = events.recv() => publish(&subscribers, shard, &event),
                    () = &mut run => break,
                }
            }
            // What the elector reported as it stopped.
            while let Ok(event) = events.try_recv() {
                publish(&subscribers, shard, &event);
            }
        });
        Running { stop, done }
    }
}

fn publish(subscribers: &ShardSubscribers, shard: u32, event: &ElectionEvent) {
    if let Some(s) = lock_unpoisoned(subscribers).get(&shard) {
        s.send(event);
    }
}

/// A shard's elector, running.
struct Running {
    stop: CancellationToken,
    /// Cancelled when the shard's elector has ended: its work stopped, its lease
    /// released.
    done: CancellationToken,
}

/// Marks a shard owned while its work runs (dropped when the work ends or is aborted).
struct Owned {
    status: watch::Sender<ShardStatus>,
    shard: u32,
}

impl Owned {
    fn new(status: watch::Sender<ShardStatus>, shard: u32) -> Self {
        status.send_modify(|s| {
            s.owned.insert(shard);
        });
        Self { status, shard }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.status.send_modify(|s| {
            s.owned.remove(&self.shard);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::MemoryStore;

    fn elector(store: &MemoryStore, identity: &str) -> ShardedElector {
        let store = store.clone();
        ShardedElector::new(
            Config::new("jobs").identity(identity),
            3,
            move |name: &str| Box::new(store.lock(name)) as Box<dyn LeaseLock>,
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn shard_events_report_each_term_of_the_shard_and_close_with_the_elector() {
        let store = MemoryStore::new();
        let a = elector(&store, "a");
        let mut events = a.shard_events(1);
        let mut other_shard = a.shard_events(2);
        let mut past_the_shards = a.shard_events(3);
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let (a, shutdown) = (a.clone(), shutdown.clone());
            async move { a.run(shutdown, |_, l| async move { l.lost().await }).await }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        shutdown.cancel();
        run.await.unwrap();
        drop(a);

        let mut seen = Vec::new();
        while let Some(event) = events.recv().await {
            seen.push(event);
        }
        let started: Vec<_> = seen
            .iter()
            .filter(|e| matches!(e, ElectionEvent::StartedLeading { .. }))
            .collect();
        assert_eq!(started.len(), 1, "{seen:?}");
        assert_eq!(
            seen.last(),
            Some(&ElectionEvent::StoppedLeading),
            "{seen:?}"
        );
        assert!(
            seen.contains(&ElectionEvent::NewLeader(Some("a".into()))),
            "{seen:?}"
        );

        let mut others = 0;
        while other_shard.recv().await.is_some() {
            others += 1;
        }
        assert!(others > 0);
        assert_eq!(past_the_shards.recv().await, None);
    }
}
