//! What every fault scenario runs on: replicas that can crash or stall, links that
//! can be cut or slowed, backends that hand out locks, and the runner of seeds.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use leaderelection::{Config, ElectionEvent, LeaderElector, Leadership, LeaseLock, MemoryStore};
use leaderelection_testkit::checker::{Checker, Report};
use leaderelection_testkit::faults::{Faults, FaultyLock};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

/// How an election is timed on a backend, and how much slack its bounds allow.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease: Duration,
    pub renew: Duration,
    pub retry: Duration,
    /// Added to every liveness bound: scheduling and request latency on this backend.
    pub slack: Duration,
}

impl Timing {
    /// client-go's defaults, for the paused clock where time costs nothing.
    pub fn virtual_default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            renew: Duration::from_secs(10),
            retry: Duration::from_secs(2),
            slack: Duration::from_millis(100),
        }
    }

    /// The longest a standby waits between two polls: retry plus jitter.
    pub fn jittered_retry(&self) -> Duration {
        self.retry.mul_f64(1.0 + leaderelection::JITTER_FACTOR)
    }

    pub fn config(&self, name: &str, id: &str) -> Config {
        Config::new(name)
            .identity(id)
            .lease_duration(self.lease)
            .renew_deadline(self.renew)
            .retry_period(self.retry)
    }
}

/// One replica's way to its backend, which a scenario can cut or slow.
#[derive(Clone, Debug)]
pub enum Link {
    Memory(Faults),
    #[allow(dead_code)] // built only with the real backends' features
    Proxy(leaderelection_testkit::proxy::Proxy),
    /// A replica that scenarios do not cut off or slow.
    #[allow(dead_code)]
    Direct,
}

impl Link {
    /// Cut off (requests fail, connections refused) or back.
    pub fn cut(&self, down: bool) {
        match self {
            Link::Memory(c) => c.set_unavailable(down),
            Link::Proxy(p) => p.cut(down),
            Link::Direct => panic!("this replica has no link to cut"),
        }
    }

    /// Delays every request (memory) or every packet (proxy) by `d`.
    pub fn delay(&self, d: Duration) {
        match self {
            Link::Memory(c) => c.set_latency(d),
            Link::Proxy(p) => p.delay(d),
            Link::Direct => panic!("this replica has no link to slow"),
        }
    }
}

/// Where elections are held: hands out one lock (one client) per replica.
#[async_trait]
pub trait Backend: Send + Sync {
    fn timing(&self) -> Timing;
    /// A new client's lock on `election`, with the link a scenario can cut.
    async fn connect(&self, election: &str) -> (Box<dyn LeaseLock>, Link);
}

/// The in-memory lock under the paused clock.
#[derive(Default)]
pub struct Memory {
    pub store: MemoryStore,
}

#[async_trait]
impl Backend for Memory {
    fn timing(&self) -> Timing {
        Timing::virtual_default()
    }
    async fn connect(&self, election: &str) -> (Box<dyn LeaseLock>, Link) {
        let lock = FaultyLock::new(self.store.lock(election));
        let link = Link::Memory(lock.faults());
        (Box::new(lock), link)
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
}

/// The work of a leader under test: writes to the checker's fenced store every `tick`
/// while its style lets it, waits while its validity has run out (a renewal may yet
/// succeed), and stops as its style says or at the first refused write.
pub async fn work(
    checker: Checker,
    leadership: Leadership,
    tick: Duration,
    style: Style,
    shutdown: CancellationToken,
) {
    let term = checker.begin(&leadership);
    while !shutdown.is_cancelled() {
        let now = Instant::now();
        let valid_until = leadership.valid_until();
        let (lost, may) = (leadership.is_lost(), now < valid_until);
        let (stop, may) = match style {
            Style::Polite => (lost, may && !lost),
            Style::Eager => (lost && !may, may),
        };
        if stop || (may && term.act().is_err()) {
            break;
        }
        let next = if may {
            (now + tick).min(valid_until)
        } else {
            now + tick
        };
        tokio::select! {
            _ = leadership.lost(), if style == Style::Polite => break,
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    term.end();
}

/// A replica: an elector in a task whose work acts on the checker's fenced store.
pub struct Replica {
    pub id: String,
    pub elector: LeaderElector,
    pub link: Link,
    pub events: Mutex<mpsc::UnboundedReceiver<ElectionEvent>>,
    checker: Checker,
    gate: Gate,
    shutdown: CancellationToken,
    killed: CancellationToken,
    task: JoinHandle<()>,
}

impl Replica {
    pub fn start(
        lock: Box<dyn LeaseLock>,
        link: Link,
        config: Config,
        checker: &Checker,
        style: Style,
    ) -> Self {
        let id = config.identity.to_owned();
        let tick = config.retry_period / 4;
        let elector = LeaderElector::from_boxed(lock, config).expect("valid config");
        let events = Mutex::new(elector.events());
        let gate = Gate::default();
        let shutdown = CancellationToken::new();
        let killed = CancellationToken::new();
        let work = {
            let (checker, gate, killed) = (checker.clone(), gate.clone(), killed.clone());
            let shutdown = shutdown.clone();
            move |leadership| {
                // The work is stalled and killed with the elector: one process.
                let work = work(checker.clone(), leadership, tick, style, shutdown.clone());
                gate.clone().run(killed.clone(), work)
            }
        };
        let task = tokio::spawn(gate.clone().run(killed.clone(), {
            let (elector, shutdown) = (elector.clone(), shutdown.clone());
            async move { elector.run(shutdown, work).await }
        }));
        Self {
            id,
            elector,
            link,
            events,
            checker: checker.clone(),
            gate,
            shutdown,
            killed,
            task,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.elector.is_leader()
    }

    /// Dies at once without releasing; its work dies with it.
    pub fn crash(&self) {
        self.killed.cancel();
    }

    /// Drops the elector's `run` future, as a caller's `select!` or an aborted task
    /// would, while the leader's work (a task of its own) lives on.
    pub fn abort_elector(&self) {
        self.task.abort();
    }

    /// Stops (or resumes) being polled, elector and work alike.
    pub fn stall(&self, stalled: bool) {
        if stalled {
            self.checker.stalled(&self.id);
        }
        self.gate.stall(stalled);
    }

    /// Graceful shutdown: the work stops, then the lease is released.
    pub async fn stop(self) {
        self.checker.stepping_down(&self.id);
        self.gate.stall(false);
        self.shutdown.cancel();
        self.join().await;
    }

    /// Waits for the replica's task; a panic inside the elector fails the scenario.
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }

    /// The events reported so far.
    pub fn drain_events(&self) -> Vec<ElectionEvent> {
        let mut rx = self.events.lock().unwrap();
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }
}

/// One election on a backend, with its replicas and its checker.
pub struct Election<'a> {
    pub backend: &'a dyn Backend,
    pub name: String,
    pub timing: Timing,
    pub checker: Checker,
    pub replicas: Vec<Replica>,
    /// The style of every replica's work; `None` alternates polite and eager.
    pub style: Option<Style>,
    next_id: usize,
}

impl<'a> Election<'a> {
    pub fn new(backend: &'a dyn Backend, name: &str) -> Self {
        Self {
            backend,
            name: name.to_owned(),
            timing: backend.timing(),
            checker: Checker::new(),
            replicas: Vec::new(),
            style: None,
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
        let style = self.style.unwrap_or(if self.next_id.is_multiple_of(2) {
            Style::Eager
        } else {
            Style::Polite
        });
        self.replicas
            .push(Replica::start(lock, link, config, &self.checker, style));
        self.replicas.len() - 1
    }

    pub fn leader(&self) -> Option<usize> {
        self.replicas.iter().position(|r| r.is_leader())
    }

    /// Waits until some replica leads; panics with the report if none does `within`.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let until = Instant::now() + within;
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            if Instant::now() >= until {
                panic!(
                    "no leader within {within:?}\n{}",
                    self.checker.report().explain()
                );
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a replica other than `old` leads.
    pub async fn wait_new_leader(&self, old: &str, within: Duration) -> usize {
        let until = Instant::now() + within;
        loop {
            if let Some(i) = self.leader() {
                if self.replicas[i].id != old {
                    return i;
                }
            }
            if Instant::now() >= until {
                panic!(
                    "no new leader after {old} within {within:?}\n{}",
                    self.checker.report().explain()
                );
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Takes replica `i` out of the election (after a crash, its task is joined).
    pub async fn remove(&mut self, i: usize) -> Replica {
        self.replicas.swap_remove(i)
    }

    /// Closes the window, stops every replica, and returns the checked report.
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

/// Runs one seed of a scenario on a fresh current-thread runtime with the paused clock.
pub fn paused<F: Future<Output = Report>>(f: F) -> Report {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("build a runtime")
        .block_on(f)
}

/// Asserts that the run was safe and that its worst leaderless gap stayed within
/// `bound`, with the report in the message.
pub fn check(report: &Report, bound: Duration) {
    report.assert_safe();
    assert!(
        report.worst_gap <= bound,
        "worst leaderless gap {:?} exceeds the bound {bound:?}\n{}",
        report.worst_gap,
        report.explain()
    );
}
