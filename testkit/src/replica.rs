//! Replicas in one process: an elector of any backend in a task, whose work's terms
//! are recorded by a [`Checker`], and which a test can crash, stop, pause and cut off.
//!
//! This is the harness every election test of this repository runs on, and the one to
//! use for your own controller's tests: start a few [`Replica`]s on one lock, do to
//! them what production does (a crash, a rolling restart, a cut link, a stopped
//! process), then judge the run with [`Checker::report`].
//!
//! - [`Replica`]: one candidate, on a [`LeaderElector`] or any other [`Elector`]
//!   (the etcd election protocol);
//! - [`Work`]: what its leader's work does: writes to the checker's fenced store every
//!   tick while it may, stops as its [`Style`] says, possibly slowly;
//! - [`Link`]: the replica's way to its backend, which a test cuts or slows;
//! - [`Election`] over a [`Backend`]: replicas joining one election with fresh
//!   identities, waits for a (new) leader, and the report at the end;
//! - [`paused`], [`check`], [`wait_until`]: a paused-clock runtime for one seed, the
//!   usual assertions, and a bounded wait.
//!
//! # Examples
//!
//! Two replicas on the in-memory lock under tokio's paused clock; the leader crashes
//! and the standby takes over once the lease ran out, never beside it:
//!
//! ```
//! use std::time::Duration;
//! use leaderelection::MemoryStore;
//! use leaderelection_testkit::checker::Checker;
//! use leaderelection_testkit::replica::{Replica, Timing, Work};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let store = MemoryStore::new();
//! let checker = Checker::new();
//! let timing = Timing::virtual_default(); // client-go's 15s / 10s / 2s
//! let start = |id: &str| {
//!     let config = timing.config("scheduler", id);
//!     Replica::memory(&store, config, &checker, Work::polite())
//! };
//! let a = start("a");
//! a.wait_leading(Duration::from_secs(1)).await;
//! let b = start("b");
//! a.crash();
//! b.wait_leading(timing.lease + timing.jittered_retry()).await;
//! b.stop().await;
//! checker.close();
//! let report = checker.report();
//! report.assert_safe();
//! assert_eq!(report.intervals, 2);
//! assert!(report.takeovers[0].margin >= timing.lease - timing.renew);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use leaderelection::{
    Config, ElectionEvent, LeaderElector, Leadership, LeaseLock, MemoryStore, ShardedElector,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::checker::{Checker, Report};
use crate::faults::{Faults, FaultyLock};

/// How an election is timed on a backend, and how much slack its liveness bounds
/// allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// `LeaseDuration`.
    pub lease: Duration,
    /// `RenewDeadline`.
    pub renew: Duration,
    /// `RetryPeriod`.
    pub retry: Duration,
    /// Added to every liveness bound: scheduling and request latency on this backend.
    pub slack: Duration,
}

impl Timing {
    /// client-go's defaults (15s, 10s, 2s), for the paused clock where time costs
    /// nothing.
    pub fn virtual_default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            renew: Duration::from_secs(10),
            retry: Duration::from_secs(2),
            slack: Duration::from_millis(100),
        }
    }

    /// Short timings for real servers and real clocks, still within client-go's rules:
    /// lease 3s, renew deadline 2s, retry 0.5s, one second of slack.
    pub fn short() -> Self {
        Self {
            lease: Duration::from_secs(3),
            renew: Duration::from_secs(2),
            retry: Duration::from_millis(500),
            slack: Duration::from_secs(1),
        }
    }

    /// The longest a standby waits between two polls: retry plus jitter.
    pub fn jittered_retry(&self) -> Duration {
        self.retry.mul_f64(1.0 + leaderelection::JITTER_FACTOR)
    }

    /// The election's [`Config`] for `identity` with these timings.
    pub fn config(&self, name: &str, identity: &str) -> Config {
        Config::new(name)
            .identity(identity)
            .lease_duration(self.lease)
            .renew_deadline(self.renew)
            .retry_period(self.retry)
    }
}

/// What a test can do to a replica's connection: a [`FaultyLock`]'s [`Faults`], a
/// TCP [`Proxy`](crate::proxy::Proxy), a packet filter.
pub trait Cut: Send + Sync + fmt::Debug {
    /// Cuts the connection off (`true`) or restores it (`false`).
    fn cut(&self, down: bool);
    /// Delays every request (or packet) by `by`; zero restores it.
    fn delay(&self, by: Duration);
}

impl<C: Cut + ?Sized> Cut for Arc<C> {
    fn cut(&self, down: bool) {
        (**self).cut(down);
    }
    fn delay(&self, by: Duration) {
        (**self).delay(by);
    }
}

impl Cut for Faults {
    fn cut(&self, down: bool) {
        self.set_unavailable(down);
    }
    fn delay(&self, by: Duration) {
        self.set_latency(by);
    }
}

impl Cut for crate::proxy::Proxy {
    fn cut(&self, down: bool) {
        crate::proxy::Proxy::cut(self, down);
    }
    fn delay(&self, by: Duration) {
        crate::proxy::Proxy::delay(self, by);
    }
}

/// One replica's way to its backend, which a test can cut or slow.
#[derive(Clone, Debug, Default)]
pub struct Link(Option<LinkKind>, Arc<std::sync::atomic::AtomicBool>);

#[derive(Clone, Debug)]
enum LinkKind {
    Faults(Faults),
    Other(Arc<dyn Cut>),
}

impl Link {
    /// A link that tests cannot cut: cutting or slowing it panics.
    pub fn direct() -> Self {
        Self::default()
    }

    /// A link through a [`FaultyLock`]'s switches.
    pub fn faults(faults: Faults) -> Self {
        Self(Some(LinkKind::Faults(faults)), Default::default())
    }

    /// A link through any other [`Cut`] (a TCP proxy, a packet filter).
    pub fn other(cut: impl Cut + 'static) -> Self {
        Self(Some(LinkKind::Other(Arc::new(cut))), Default::default())
    }

    /// The [`FaultyLock`] switches behind this link, if it is one.
    pub fn as_faults(&self) -> Option<&Faults> {
        match &self.0 {
            Some(LinkKind::Faults(f)) => Some(f),
            _ => None,
        }
    }

    fn control(&self) -> &dyn Cut {
        match &self.0 {
            Some(LinkKind::Faults(f)) => f,
            Some(LinkKind::Other(c)) => c.as_ref(),
            None => panic!("this replica has a direct link, which tests cannot cut or slow"),
        }
    }

    /// Cut off (requests fail, connections hang or are refused) or back.
    ///
    /// # Panics
    ///
    /// On a [`direct`](Self::direct) link.
    pub fn cut(&self, down: bool) {
        self.control().cut(down);
        self.1.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// True while this link is cut off (by [`cut`](Self::cut)).
    pub fn is_cut(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Delays every request by `by`.
    ///
    /// # Panics
    ///
    /// On a [`direct`](Self::direct) link.
    pub fn delay(&self, by: Duration) {
        self.control().delay(by);
    }
}

/// The leader's work of a term: a boxed future, as the harness hands it to any
/// [`Elector`].
pub type WorkFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Something that campaigns and runs a leader's work per term: [`LeaderElector`],
/// `EtcdElection`, a [`ShardedElector`] (one term per shard), or your own wrapper.
#[async_trait]
pub trait Elector: Clone + Send + Sync + 'static {
    /// Campaigns until `shutdown`, running `work` for every term won, with the term's
    /// shard (0 for an elector of one lock).
    async fn run(
        &self,
        shutdown: CancellationToken,
        work: Box<dyn FnMut(u32, Leadership) -> WorkFuture + Send>,
    );
    /// True while this replica leads (for a sharded elector: owns any shard).
    fn is_leader(&self) -> bool;
    /// The leader this replica last knew of.
    fn leader(&self) -> Option<String>;
    /// Its events from now on, where it reports them.
    fn events(&self) -> Option<mpsc::UnboundedReceiver<ElectionEvent>> {
        None
    }
}

#[async_trait]
impl Elector for LeaderElector {
    async fn run(
        &self,
        shutdown: CancellationToken,
        work: Box<dyn FnMut(u32, Leadership) -> WorkFuture + Send>,
    ) {
        let mut work = work;
        LeaderElector::run(self, shutdown, move |leadership| work(0, leadership)).await
    }
    fn is_leader(&self) -> bool {
        LeaderElector::is_leader(self)
    }
    fn leader(&self) -> Option<String> {
        LeaderElector::leader(self)
    }
    fn events(&self) -> Option<mpsc::UnboundedReceiver<ElectionEvent>> {
        Some(LeaderElector::events(self))
    }
}

#[cfg(feature = "etcd")]
#[async_trait]
impl Elector for leaderelection::EtcdElection {
    async fn run(
        &self,
        shutdown: CancellationToken,
        work: Box<dyn FnMut(u32, Leadership) -> WorkFuture + Send>,
    ) {
        let mut work = work;
        let work = move |leadership| work(0, leadership);
        leaderelection::EtcdElection::run(self, shutdown, work).await
    }
    fn is_leader(&self) -> bool {
        leaderelection::EtcdElection::is_leader(self)
    }
    fn leader(&self) -> Option<String> {
        leaderelection::EtcdElection::leader(self)
    }
    fn events(&self) -> Option<mpsc::UnboundedReceiver<ElectionEvent>> {
        Some(leaderelection::EtcdElection::events(self))
    }
}

#[async_trait]
impl Elector for ShardedElector {
    async fn run(
        &self,
        shutdown: CancellationToken,
        work: Box<dyn FnMut(u32, Leadership) -> WorkFuture + Send>,
    ) {
        // The sharded elector calls the work from its shards' tasks: one at a time.
        let work = Mutex::new(work);
        let work = move |shard, leadership| {
            (work.lock().unwrap_or_else(|e| e.into_inner()))(shard, leadership)
        };
        ShardedElector::run(self, shutdown, work).await
    }
    fn is_leader(&self) -> bool {
        !self.owned().is_empty()
    }
    fn leader(&self) -> Option<String> {
        None
    }
}

/// A switch that stops a task from being polled, as SIGSTOP stops a process: its
/// timers run out meanwhile, and it sees that only when it is resumed.
#[derive(Clone, Debug)]
pub struct Gate(watch::Sender<bool>);

impl Default for Gate {
    fn default() -> Self {
        Self(watch::Sender::new(false))
    }
}

impl Gate {
    /// Stops (`true`) or resumes (`false`) every future run through this gate.
    pub fn stall(&self, stalled: bool) {
        self.0.send_replace(stalled);
    }

    /// Runs `fut` while the gate is open; ends it (dropping it) when `killed` fires,
    /// stalled or not.
    pub async fn run<F: Future<Output = ()>>(self, killed: CancellationToken, fut: F) {
        let mut rx = self.0.subscribe();
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                _ = killed.cancelled() => return,
                _ = rx.wait_for(|stalled| !*stalled) => {}
            }
            tokio::select! {
                biased;
                _ = killed.cancelled() => return,
                _ = rx.wait_for(|stalled| *stalled) => continue,
                _ = &mut fut => return,
            }
        }
    }
}

/// How a replica's work decides that it may act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Acts while [`Leadership::is_valid`], and stops when `lost` fires.
    Polite,
    /// Acts until [`Leadership::valid_until`], whatever `lost` says, and stops only
    /// then or when its process shuts down: it tests the promise `valid_until` makes.
    Eager,
    /// Never looks at `lost` or `valid_until`: it acts every tick until the elector
    /// aborts it (past the lease) or its process shuts down. The elector must stop it
    /// before another replica may lead.
    Deaf,
}

/// What a leader's work does in each term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    /// How it decides that it may act.
    pub style: Style,
    /// How often it writes to the checker's fenced store; `None`: a quarter of the
    /// retry period.
    pub tick: Option<Duration>,
    /// How long it takes to stop once it decided to (real work drains): a successor
    /// that leads before it stopped overlaps it.
    pub stop_delay: Duration,
}

impl Work {
    /// [`Style::Polite`], stopping at once.
    pub fn polite() -> Self {
        Self {
            style: Style::Polite,
            tick: None,
            stop_delay: Duration::ZERO,
        }
    }

    /// [`Style::Eager`], stopping at once.
    pub fn eager() -> Self {
        Self {
            style: Style::Eager,
            ..Self::polite()
        }
    }

    /// [`Style::Deaf`]: only the elector's abort stops it.
    pub fn deaf() -> Self {
        Self {
            style: Style::Deaf,
            ..Self::polite()
        }
    }

    /// The same work, taking `delay` to stop.
    #[must_use]
    pub fn stopping_in(mut self, delay: Duration) -> Self {
        self.stop_delay = delay;
        self
    }

    /// The same work, acting every `tick`.
    #[must_use]
    pub fn every(mut self, tick: Duration) -> Self {
        self.tick = Some(tick);
        self
    }

    /// Runs one term: records it in `checker`, acts on the fenced store every tick
    /// while its style lets it (waiting while its validity has run out, since a
    /// renewal may yet succeed), stops as its style says, at the first refused write,
    /// or (eager and deaf work) on `shutdown`, then takes `stop_delay` to stop.
    pub async fn run(
        self,
        checker: Checker,
        leadership: Leadership,
        tick: Duration,
        shutdown: CancellationToken,
    ) {
        let tick = self.tick.unwrap_or(tick);
        let style = self.style;
        let term = checker.begin(&leadership);
        // Polite work listens to `lost` alone, which the elector fires on shutdown
        // before it releases; the others also stop with their process.
        let ends_with_process = style != Style::Polite;
        while !(ends_with_process && shutdown.is_cancelled()) {
            let now = Instant::now();
            let valid_until = leadership.valid_until();
            let (lost, valid) = (leadership.is_lost(), now < valid_until);
            let (stop, may) = match style {
                Style::Polite => (lost, valid && !lost),
                Style::Eager => (lost && !valid, valid),
                Style::Deaf => (false, true),
            };
            if stop || (may && term.act().is_err() && style != Style::Deaf) {
                break;
            }
            let next = if may && style != Style::Deaf {
                (now + tick).min(valid_until)
            } else {
                now + tick
            };
            tokio::select! {
                _ = leadership.lost(), if style == Style::Polite => break,
                _ = shutdown.cancelled(), if ends_with_process => break,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
        if !self.stop_delay.is_zero() {
            sleep(self.stop_delay).await;
        }
        term.end();
    }
}

/// One replica: an elector in a task whose work acts on the checker's fenced store.
///
/// Dropping a `Replica` crashes it (see [`crash`](Self::crash)).
pub struct Replica<E: Elector = LeaderElector> {
    /// Its identity.
    pub id: String,
    /// Its elector, for the test's own questions (status, events, health).
    pub elector: E,
    /// Its way to the backend.
    pub link: Link,
    events: Option<tokio::sync::Mutex<mpsc::UnboundedReceiver<ElectionEvent>>>,
    /// One checker per shard (one in all for an elector of one lock).
    checkers: Arc<[Checker]>,
    /// The [`Leadership`] of its latest term.
    latest: Arc<Mutex<Option<Leadership>>>,
    gate: Gate,
    shutdown: CancellationToken,
    killed: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    /// When its first term's work started.
    led_at: watch::Sender<Option<Instant>>,
}

impl<E: Elector> fmt::Debug for Replica<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl Replica<LeaderElector> {
    /// A [`LeaderElector`] on `lock` with `config`, its work judged by `checker`.
    ///
    /// # Panics
    ///
    /// When `config` is invalid (a test's mistake).
    pub fn new(
        lock: impl LeaseLock,
        link: Link,
        config: Config,
        checker: &Checker,
        work: Work,
    ) -> Self {
        let tick = config.retry_period / 4;
        let id = config.identity.to_owned();
        let elector = LeaderElector::new(lock, config).expect("a valid election config");
        Self::spawn(id, elector, link, checker, work, tick)
    }

    /// A [`LeaderElector`] on `store`'s lock named after the election, through a
    /// [`FaultyLock`] whose switches are its [`link`](Self::link).
    pub fn memory(store: &MemoryStore, config: Config, checker: &Checker, work: Work) -> Self {
        let lock = FaultyLock::new(store.lock(&config.name));
        let link = Link::faults(lock.faults());
        Self::new(lock, link, config, checker, work)
    }
}

impl<E: Elector> Replica<E> {
    /// Runs `elector` as replica `id`, its work acting every `tick` unless `work`
    /// names its own.
    pub fn spawn(
        id: impl Into<String>,
        elector: E,
        link: Link,
        checker: &Checker,
        work: Work,
        tick: Duration,
    ) -> Self {
        Self::spawn_sharded(id, elector, link, std::slice::from_ref(checker), work, tick)
    }

    /// Like [`spawn`](Self::spawn), for an elector of many shards: the terms of shard
    /// `s` are judged by `checkers[s]` (modulo their number), since the terms of
    /// different shards may overlap.
    ///
    /// # Panics
    ///
    /// When `checkers` is empty.
    pub fn spawn_sharded(
        id: impl Into<String>,
        elector: E,
        link: Link,
        checkers: &[Checker],
        work: Work,
        tick: Duration,
    ) -> Self {
        assert!(!checkers.is_empty(), "a replica needs a checker");
        let checkers: Arc<[Checker]> = checkers.into();
        // Subscribed before the elector runs, so that no event is missed.
        let events = elector.events().map(tokio::sync::Mutex::new);
        let gate = Gate::default();
        let shutdown = CancellationToken::new();
        let killed = CancellationToken::new();
        let led_at = watch::Sender::new(None);
        let latest = Arc::new(Mutex::new(None));
        let term = {
            let (checkers, gate, killed) = (checkers.clone(), gate.clone(), killed.clone());
            let (shutdown, led, latest) = (shutdown.clone(), led_at.clone(), latest.clone());
            move |shard: u32, leadership: Leadership| -> WorkFuture {
                let now = Instant::now();
                led.send_if_modified(|t| t.is_none() && t.replace(now).is_none());
                let checker = checkers[shard as usize % checkers.len()].clone();
                *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(leadership.clone());
                // The work is stalled and killed with the elector: one process.
                let work = work.run(checker, leadership, tick, shutdown.clone());
                Box::pin(gate.clone().run(killed.clone(), work))
            }
        };
        let task = tokio::spawn(gate.clone().run(killed.clone(), {
            let (elector, shutdown) = (elector.clone(), shutdown.clone());
            async move { elector.run(shutdown, Box::new(term)).await }
        }));
        Self {
            id: id.into(),
            elector,
            link,
            events,
            checkers,
            latest,
            gate,
            shutdown,
            killed,
            task: Mutex::new(Some(task)),
            led_at,
        }
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.elector.is_leader()
    }

    /// When its first term's work started (`None` until then): the moment a user's
    /// work would begin, as benchmarks time a takeover.
    pub fn led_at(&self) -> watch::Receiver<Option<Instant>> {
        self.led_at.subscribe()
    }

    /// Its terms so far, as the checker recorded them, in order.
    pub fn terms(&self) -> Vec<crate::checker::Interval> {
        let mut terms: Vec<_> = self.checkers.iter().flat_map(|c| c.intervals()).collect();
        terms.retain(|t| t.identity == self.id);
        terms.sort_by_key(|t| t.start);
        terms
    }

    /// The fencing tokens of its terms so far, in order.
    pub fn tokens(&self) -> Vec<u64> {
        self.terms().iter().map(|t| t.fencing_token).collect()
    }

    /// The [`Leadership`] its elector handed to the work of its latest term (for a
    /// sharded elector, of any shard), for tests of what a term promises: its
    /// validity, its `lost` signal. `None` before it first led.
    pub fn leadership(&self) -> Option<Leadership> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the work of its term with fencing token `token` has stopped.
    pub async fn term_end(&self, token: u64) {
        while !self.term_ended(token) {
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// True once the work of its term with fencing token `token` has stopped.
    pub fn term_ended(&self, token: u64) -> bool {
        self.terms()
            .iter()
            .any(|t| t.fencing_token == token && t.end.is_some())
    }

    /// The next event, waiting for it; `None` when the elector is gone.
    pub async fn next_event(&self) -> Option<ElectionEvent> {
        self.events.as_ref()?.lock().await.recv().await
    }

    /// The events reported so far.
    pub fn drain_events(&self) -> Vec<ElectionEvent> {
        let mut out = Vec::new();
        if let Some(Ok(mut rx)) = self.events.as_ref().map(|rx| rx.try_lock()) {
            while let Ok(e) = rx.try_recv() {
                out.push(e);
            }
        }
        out
    }

    /// The leader this replica last knew of.
    pub fn leader(&self) -> Option<String> {
        self.elector.leader()
    }

    /// Waits until this replica leads.
    ///
    /// # Panics
    ///
    /// When it does not lead `within`, with the checker's report.
    pub async fn wait_leading(&self, within: Duration) {
        let what = format!("{} leads", self.id);
        wait_until_or(&what, within, || self.is_working(), || self.explain()).await;
    }

    /// True while this replica leads and its term's work has begun (the elector
    /// reports leading a moment before the work, a task of its own, records its term).
    pub fn is_working(&self) -> bool {
        self.is_leader() && self.terms().last().is_some_and(|t| t.end.is_none())
    }

    /// Waits until this replica follows `leader` (its watch or poll saw it).
    ///
    /// # Panics
    ///
    /// When it does not `within`.
    pub async fn wait_following(&self, leader: &str, within: Duration) {
        let what = format!("{} follows {leader}", self.id);
        let follows = || self.leader().as_deref() == Some(leader);
        wait_until_or(&what, within, follows, || self.explain()).await;
    }

    fn explain(&self) -> String {
        let reports = self.checkers.iter().map(|c| c.report().explain());
        reports.collect::<Vec<_>>().join("\n")
    }

    /// Dies at once without releasing; its work dies with it, mid-term.
    pub fn crash(&self) {
        self.killed.cancel();
    }

    /// Drops the elector's `run` future, as a caller's `select!` or an aborted task
    /// would, while the leader's work (a task of its own) lives on.
    pub fn abort_elector(&self) {
        if let Some(task) = &*self.task.lock().unwrap_or_else(|e| e.into_inner()) {
            task.abort();
        }
    }

    /// Stops (or resumes) being polled, elector and work alike, as SIGSTOP and
    /// SIGCONT do to a process.
    pub fn stall(&self, stalled: bool) {
        if stalled {
            self.checkers.iter().for_each(|c| c.stalled(&self.id));
        }
        self.gate.stall(stalled);
    }

    /// Graceful shutdown: the work stops, then the lease is released.
    pub async fn stop(self) {
        self.begin_stop();
        self.join().await;
    }

    /// Asks for a graceful shutdown and returns at once; [`join`](Self::join) waits
    /// for it. Many replicas told at once stop side by side.
    pub fn begin_stop(&self) {
        self.checkers.iter().for_each(|c| c.stepping_down(&self.id));
        self.gate.stall(false);
        self.shutdown.cancel();
    }

    /// Waits for the replica's task to end by itself (after a crash, or a `run` that
    /// returned); a panic inside the elector fails the test.
    pub async fn join(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

impl<E: Elector> Drop for Replica<E> {
    fn drop(&mut self) {
        self.killed.cancel();
    }
}

/// Where elections are held: hands out one lock (one client) per replica.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The election's timings on this backend.
    fn timing(&self) -> Timing;
    /// A new client's lock on `election`, with the link a test can cut.
    async fn connect(&self, election: &str) -> (Box<dyn LeaseLock>, Link);
}

/// The in-memory lock under the paused clock: every replica's lock is a
/// [`FaultyLock`] on one [`MemoryStore`].
#[derive(Debug, Default)]
pub struct Memory {
    /// The store every replica's lock shares.
    pub store: MemoryStore,
}

#[async_trait]
impl Backend for Memory {
    fn timing(&self) -> Timing {
        Timing::virtual_default()
    }
    async fn connect(&self, election: &str) -> (Box<dyn LeaseLock>, Link) {
        let lock = FaultyLock::new(self.store.lock(election));
        let link = Link::faults(lock.faults());
        (Box::new(lock), link)
    }
}

/// One election on a [`Backend`], with its replicas and its checker.
pub struct Election<'a> {
    /// Where it is held.
    pub backend: &'a dyn Backend,
    /// The election's (lock's) name.
    pub name: String,
    /// Its timings: the backend's unless the test changes them before replicas join.
    pub timing: Timing,
    /// The checker every replica's work reports to.
    pub checker: Checker,
    /// The replicas that joined and were not removed.
    pub replicas: Vec<Replica>,
    /// The work of every replica that joins; `None` cycles through polite, polite
    /// taking a retry period to stop, and eager.
    pub work: Option<Work>,
    next_id: usize,
}

impl<'a> Election<'a> {
    /// An election named `name` on `backend`, with no replica yet.
    pub fn new(backend: &'a dyn Backend, name: &str) -> Self {
        Self {
            backend,
            name: name.to_owned(),
            timing: backend.timing(),
            checker: Checker::new(),
            replicas: Vec::new(),
            work: None,
            next_id: 0,
        }
    }

    /// Starts a replica with a new identity (or `id`, to rejoin as a crashed replica
    /// restarted with its old identity) and returns its index.
    pub async fn join(&mut self, id: Option<String>) -> usize {
        let id = id.unwrap_or_else(|| {
            self.next_id += 1;
            format!("r{}", self.next_id)
        });
        let (lock, link) = self.backend.connect(&self.name).await;
        let config = self.timing.config(&self.name, &id);
        // Work that stops at once when lost, that acts until its validity ends, and
        // that takes a retry period to stop, as real work draining its queue does.
        let work = self.work.unwrap_or(match self.next_id % 3 {
            0 => Work::eager(),
            1 => Work::polite(),
            _ => Work::polite().stopping_in(self.timing.retry),
        });
        self.replicas
            .push(Replica::new(lock, link, config, &self.checker, work));
        self.replicas.len() - 1
    }

    /// The index of the replica that leads now.
    pub fn leader(&self) -> Option<usize> {
        self.replicas.iter().position(|r| r.is_leader())
    }

    /// Waits until some replica leads and its work has begun.
    ///
    /// # Panics
    ///
    /// When none does `within`, with the report.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let working = || self.replicas.iter().any(|r| r.is_working());
        wait_until_or("a replica leads", within, working, || {
            self.checker.report().explain()
        })
        .await;
        self.replicas
            .iter()
            .position(|r| r.is_working())
            .unwrap_or_default()
    }

    /// Waits until a replica other than `old` leads and its work has begun.
    ///
    /// # Panics
    ///
    /// When none does `within`, with the report.
    pub async fn wait_new_leader(&self, old: &str, within: Duration) -> usize {
        let other = || {
            let working = self.replicas.iter().position(|r| r.is_working());
            working.filter(|&i| self.replicas[i].id != old)
        };
        wait_until_or(
            &format!("a new leader after {old}"),
            within,
            || other().is_some(),
            || self.checker.report().explain(),
        )
        .await;
        other().unwrap_or_default()
    }

    /// Takes replica `i` out of the election.
    pub fn remove(&mut self, i: usize) -> Replica {
        self.replicas.swap_remove(i)
    }

    /// Closes the checker's window, stops every replica, and returns the report.
    pub async fn finish(self) -> Report {
        self.checker.close();
        for r in self.replicas {
            r.stop().await;
        }
        self.checker.report()
    }

    /// Every link of every replica: a fault on the backend as all clients see it.
    pub fn links(&self) -> Vec<Link> {
        self.replicas.iter().map(|r| r.link.clone()).collect()
    }
}

/// Runs one seed of a scenario on a fresh current-thread runtime with the paused
/// clock.
///
/// # Panics
///
/// When the runtime cannot be built.
pub fn paused<T, F: Future<Output = T>>(f: F) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

/// Asserts that the run was safe and that its worst leaderless gap stayed within
/// `bound`.
///
/// # Panics
///
/// When it was not, with the report in the message.
pub fn check(report: &Report, bound: Duration) {
    report.assert_safe();
    assert!(
        report.worst_gap <= bound,
        "worst leaderless gap {:?} exceeds the bound {bound:?}\n{}",
        report.worst_gap,
        report.explain()
    );
}

/// Waits until `cond` holds, looking every 10 ms.
///
/// # Panics
///
/// When it does not hold `within`, naming `what`.
pub async fn wait_until(what: &str, within: Duration, cond: impl FnMut() -> bool) {
    wait_until_or(what, within, cond, String::new).await
}

async fn wait_until_or(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let until = Instant::now() + within;
    while !cond() {
        if Instant::now() >= until {
            panic!(
                "timed out after {within:?} waiting until {what}\n{}",
                explain()
            );
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// The two terms of a change of leader, as [`handover`] found them.
#[derive(Clone, Debug)]
pub struct Handover {
    /// The last term of the replica that led.
    pub from: crate::checker::Interval,
    /// The first term of the replica that took over.
    pub to: crate::checker::Interval,
}

impl Handover {
    /// When the old leader's work stopped.
    pub fn from_end(&self) -> Instant {
        self.from.end.unwrap_or(self.to.start)
    }

    /// Asserts that, after something happened at `since`, the new term began no
    /// earlier than `earliest` and the old leader's work stopped within `prompt`.
    ///
    /// # Panics
    ///
    /// When either bound is broken, naming `what`.
    pub fn assert_bounds(&self, what: &str, since: Instant, earliest: Instant, prompt: Duration) {
        let (stopped, led) = (self.from_end() - since, self.to.start - since);
        eprintln!(
            "{what}: {} stopped {stopped:?} and {} led {led:?} after it",
            self.from.identity, self.to.identity
        );
        assert!(
            self.to.start >= earliest,
            "{what}: {} led {led:?} after it, {:?} before the earliest allowed",
            self.to.identity,
            earliest - self.to.start
        );
        assert!(
            stopped <= prompt,
            "{what}: {} stopped only {stopped:?} after it",
            self.from.identity
        );
    }
}

/// Waits until `to` leads after `from` and `from`'s work has stopped, then checks the
/// run so far with the checker: no two leaders at once, no stale token accepted.
///
/// # Panics
///
/// When that does not happen `within`, or the run was not safe, with the report.
pub async fn handover<E: Elector>(
    checker: &Checker,
    from: &str,
    to: &Replica<E>,
    within: Duration,
) -> Handover {
    let terms = || checker.intervals();
    let led = |id: &str| terms().iter().any(|t| t.identity == id);
    wait_until_or(
        &format!("{} takes over from {from}", to.id),
        within,
        || to.is_leader() && led(&to.id),
        || checker.report().explain(),
    )
    .await;
    wait_until_or(
        &format!("the work of {from} stopped"),
        within,
        || {
            terms()
                .iter()
                .all(|t| t.identity != from || t.end.is_some())
        },
        || checker.report().explain(),
    )
    .await;
    let report = checker.report();
    report.assert_safe();
    let last_of = |id: &str| {
        report
            .terms
            .iter()
            .rev()
            .find(|t| t.identity == id)
            .cloned()
    };
    let first_of = |id: &str| report.terms.iter().find(|t| t.identity == id).cloned();
    match (last_of(from), first_of(&to.id)) {
        (Some(from), Some(to)) => Handover { from, to },
        _ => panic!("{from} never led\n{}", report.explain()),
    }
}

/// How the shards of one sharded election are spread over its replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// How many shards each replica owns, in the order given.
    pub per_replica: Vec<usize>,
    /// True when every shard has exactly one owner among them.
    pub one_owner_each: bool,
}

impl Ownership {
    /// The ownership of `shards` shards among `replicas`, as each believes it now.
    pub fn of<'a>(
        replicas: impl IntoIterator<Item = &'a Replica<ShardedElector>>,
        shards: u32,
    ) -> Self {
        let mut owners = vec![0u32; shards as usize];
        let per_replica = replicas
            .into_iter()
            .map(|r| {
                let owned = r.elector.owned();
                for &s in &owned {
                    if let Some(n) = owners.get_mut(s as usize) {
                        *n += 1;
                    }
                }
                owned.len()
            })
            .collect();
        let one_owner_each = owners.iter().all(|&n| n == 1);
        Self {
            per_replica,
            one_owner_each,
        }
    }

    /// One owner per shard, and no replica owns more than one shard more than another.
    pub fn is_balanced(&self) -> bool {
        let lo = self.per_replica.iter().min().copied().unwrap_or(0);
        let hi = self.per_replica.iter().max().copied().unwrap_or(0);
        self.one_owner_each && hi - lo <= 1
    }
}

/// The leaderless gaps between consecutive terms that began after `after`, per
/// checker (for a sharded election: one checker per shard, as
/// [`Replica::spawn_sharded`] takes them).
pub fn handover_gaps(checkers: &[Checker], after: Instant) -> Vec<Duration> {
    let mut gaps = Vec::new();
    for checker in checkers {
        let mut terms = checker.intervals();
        terms.sort_by_key(|t| t.start);
        for pair in terms.windows(2).filter(|w| w[1].start > after) {
            if let Some(end) = pair[0].end {
                gaps.push(pair[1].start.saturating_duration_since(end));
            }
        }
    }
    gaps
}
