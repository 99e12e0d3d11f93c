//! Benchmarks of leader election: how long a component is leaderless when its leader
//! goes away, how much load the replicas put on the backend, and how many elections one
//! process can hold, beside the peers a user would pick instead, measured in one run.
//!
//! Run (takes a few minutes; see docs/benchmarks.md):
//!
//! ```text
//! cargo bench -p leaderelection-bench --bench election
//! cargo bench -p leaderelection-bench --bench election -- --quick       # a fast smoke run
//! cargo bench -p leaderelection-bench --bench election -- --only scale  # one section
//! cargo bench -p leaderelection-bench --bench election -- --only failover --backends file
//! cargo bench -p leaderelection-bench --bench election -- --only contention --seed 7
//! cargo bench -p leaderelection-bench --bench election -- --plots target/plots
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it prints how to run it and
//! exits, so the test suite never runs the benchmark.

mod contention;
mod etcd;
mod grpc;
mod heap;
mod k8s;
mod k8s_controller;
mod load;
mod ours;
mod plot;
mod procstat;
mod scale;
mod sharded;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use leaderelection::{LeaseLock, MemoryStore};

use crate::ours::{MakeLock, Ours};
use leaderelection_bench_driver::scenario::{self, Departure, Library, Outcome, Timings};
use leaderelection_bench_driver::stats::{fmt_opt_secs, fmt_secs, ratio, Samples, Table};

/// What a run measures and for how long.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub sections: Vec<String>,
    /// Backends of the renew, failover and load sections: keys of [`BACKENDS`].
    backends: Vec<String>,
    /// Elections per handover or failover scenario (one sample each).
    reps: usize,
    scale_ks: Vec<usize>,
    scale_warmup: Duration,
    scale_window: Duration,
    renew_window: Duration,
    pub load_window: Duration,
    /// The contention section's run, and the seed of its random disturbances.
    pub contention_window: Duration,
    pub seed: u64,
    /// Where the pictures go (`--plots DIR`).
    pub plots: std::path::PathBuf,
    /// The scale section also profiles the heap of this many elections (`--heap-profile`).
    heap_profile: Option<usize>,
}

const SECTIONS: [&str; 6] = [
    "scale",
    "renew",
    "failover",
    "load",
    "sharded",
    "contention",
];
const BACKENDS: [&str; 4] = ["memory", "file", "kube", "etcd"];

impl Plan {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut plan = Plan {
            sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
            backends: BACKENDS.iter().map(|s| s.to_string()).collect(),
            reps: 100,
            scale_ks: vec![1, 100, 10_000],
            scale_warmup: Duration::from_secs(5),
            scale_window: Duration::from_secs(20),
            renew_window: Duration::from_secs(3),
            load_window: Duration::from_secs(60),
            contention_window: Duration::from_secs(100),
            seed: 2026,
            plots: plot::default_dir(),
            heap_profile: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bench" => {}
                "--quick" => {
                    plan.reps = 20;
                    plan.scale_warmup = Duration::from_secs(2);
                    plan.scale_window = Duration::from_secs(6);
                    plan.renew_window = Duration::from_secs(2);
                    plan.load_window = Duration::from_secs(20);
                    plan.contention_window = Duration::from_secs(60);
                }
                "--only" => {
                    let list = it
                        .next()
                        .ok_or("--only needs a list, e.g. scale,failover")?;
                    plan.sections = list.split(',').map(str::to_string).collect();
                    if let Some(bad) = plan
                        .sections
                        .iter()
                        .find(|s| !SECTIONS.contains(&s.as_str()))
                    {
                        return Err(format!(
                            "unknown section {bad:?}; sections: {}",
                            SECTIONS.join(",")
                        ));
                    }
                }
                "--backends" => {
                    let list = it
                        .next()
                        .ok_or("--backends needs a list, e.g. memory,file")?;
                    plan.backends = list.split(',').map(str::to_string).collect();
                    if let Some(bad) = plan
                        .backends
                        .iter()
                        .find(|b| !BACKENDS.contains(&b.as_str()))
                    {
                        return Err(format!(
                            "unknown backend {bad:?}; backends: {}",
                            BACKENDS.join(",")
                        ));
                    }
                }
                "--reps" => {
                    plan.reps = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--reps needs a number")?;
                }
                "--seed" => {
                    plan.seed = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--seed needs a number")?;
                }
                "--plots" => {
                    let dir = it.next().ok_or("--plots needs a directory")?;
                    plan.plots = plot::resolve(dir);
                }
                "--heap-profile" => plan.heap_profile = Some(HEAP_PROFILE_K),
                "--scale-secs" => {
                    let secs: f64 = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--scale-secs needs a number of seconds")?;
                    plan.scale_window = Duration::from_secs_f64(secs);
                }
                // libtest's flags, passed by `cargo bench` filters: ignore.
                other if other.starts_with("--") => {
                    return Err(format!("unknown option {other}"));
                }
                _ => {}
            }
        }
        Ok(plan)
    }

    fn wants(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }

    /// Whether a backend, named as in the tables, is measured.
    fn wants_backend(&self, backend: &str) -> bool {
        let key = match backend {
            "memory" | "file" => backend,
            KUBE => "kube",
            _ => "etcd",
        };
        self.backends.iter().any(|b| b == key)
    }
}

fn main() {
    // This program re-run as a child process: the scale section's measured process,
    // or one replica of the contention section.
    if let Some(role) = leaderelection_testkit::child::role() {
        let (what, code, result) = match role.name() {
            scale::ROLE => (
                "scale child",
                1,
                role.spec()
                    .map_err(|e| e.to_string())
                    .and_then(scale::child),
            ),
            contention::ROLE => (
                "contention replica",
                2,
                role.spec()
                    .map_err(|e| e.to_string())
                    .and_then(contention::child),
            ),
            other => ("child", 2, Err(format!("unknown role {other:?}"))),
        };
        if let Err(e) = result {
            eprintln!("{what}: {e}");
            std::process::exit(code);
        }
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "the election benchmark runs only under `cargo bench -p leaderelection-bench --bench election`"
        );
        return;
    }
    let plan = match Plan::parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = rt.block_on(run(plan));
    println!("{report}");
}

/// A figure measured for several libraries on several backends.
struct Figure {
    title: String,
    rows: Vec<Row>,
}

struct Row {
    backend: String,
    library: String,
    outcome: Outcome,
    /// Whether this row is ours (the base of the ratios of its backend).
    ours: bool,
    note: String,
}

impl Figure {
    fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    fn add(
        &mut self,
        backend: &str,
        library: &str,
        ours: bool,
        outcome: Outcome,
        note: Option<&str>,
    ) {
        let note = [note.unwrap_or(""), &outcome.note()]
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        eprintln!(
            "  {backend} / {library}: p50 {} p99 {} (n={}) {note}",
            fmt_opt_secs(outcome.samples.p50()),
            fmt_opt_secs(outcome.samples.p99()),
            outcome.samples.len(),
        );
        self.rows.push(Row {
            backend: backend.into(),
            library: library.into(),
            outcome,
            ours,
            note,
        });
    }

    fn render(&self) -> String {
        let mut t = Table::new(&[
            "backend",
            "library",
            "n",
            "p50",
            "p99",
            "p50 peer/ours",
            "p99 peer/ours",
            "notes",
        ]);
        for r in &self.rows {
            let base = self.rows.iter().find(|b| b.ours && b.backend == r.backend);
            let (r50, r99) = match base {
                Some(b) if !r.ours => (
                    ratio(r.outcome.samples.p50(), b.outcome.samples.p50()),
                    ratio(r.outcome.samples.p99(), b.outcome.samples.p99()),
                ),
                _ => ("".into(), "".into()),
            };
            t.row(vec![
                r.backend.clone(),
                r.library.clone(),
                r.outcome.samples.len().to_string(),
                fmt_opt_secs(r.outcome.samples.p50()),
                fmt_opt_secs(r.outcome.samples.p99()),
                r50,
                r99,
                r.note.clone(),
            ]);
        }
        format!("### {}\n\n{}", self.title, t.render())
    }
}

/// How a contender's scenarios run: in this process, or in the peer program.
enum Runner {
    InProcess(Arc<dyn Library>),
    Peer(std::path::PathBuf, k8s::Peer),
    /// Not measured, and why.
    Skipped(String),
}

/// A library on a backend, compared with ours on the same backend.
struct Contender {
    backend: String,
    library: String,
    ours: bool,
    runner: Runner,
    /// Elections run at once; `None` for all of them, and both scenarios at once.
    parallel: Option<usize>,
    /// What the handover row must say of the library, read from its source.
    handover_note: Option<&'static str>,
    /// What the crash failover row must say of the library, read from its source.
    crash_note: Option<&'static str>,
    /// Its own timings, where the section's do not suit the backend.
    timings: Option<Timings>,
}

impl Contender {
    fn ours(backend: &str, lib: impl Library + 'static) -> Self {
        Self {
            backend: backend.into(),
            library: "leaderelection".into(),
            ours: true,
            runner: Runner::InProcess(Arc::new(lib)),
            parallel: None,
            handover_note: None,
            crash_note: None,
            timings: None,
        }
    }

    fn peer(backend: &str, library: &str, runner: Runner) -> Self {
        Self {
            backend: backend.into(),
            library: library.into(),
            ours: false,
            runner,
            parallel: None,
            handover_note: None,
            crash_note: None,
            timings: None,
        }
    }
}

fn memory_make_lock() -> MakeLock {
    let store = MemoryStore::new();
    Arc::new(move |name: String| {
        let lock: Box<dyn LeaseLock> = Box::new(store.lock(name));
        async move { Ok(lock) }.boxed()
    })
}

/// Where this run's file locks live; removed at the end of the run.
fn file_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("leaderelection-bench-{}", std::process::id()))
}

fn file_make_lock() -> MakeLock {
    let dir = file_dir();
    Arc::new(move |name: String| {
        let dir = dir.clone();
        async move {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let lock: Box<dyn LeaseLock> = Box::new(leaderelection::FileLock::new(dir.join(name)));
            Ok(lock)
        }
        .boxed()
    })
}

/// The servers and programs the backends' sections share.
pub(crate) struct Env {
    pub kube: Option<KubeEnv>,
    pub etcd: Option<etcd::EtcdEnv>,
    /// Why the Kubernetes comparisons are missing, when they are.
    notes: Vec<String>,
}

pub(crate) struct KubeEnv {
    pub server: leaderelection_testkit::apiserver::ApiServer,
    /// The peer program, or why it is missing.
    pub peers: Result<std::path::PathBuf, String>,
}

impl Env {
    async fn start(plan: &Plan) -> Self {
        let mut notes = Vec::new();
        let servers = plan.wants("renew") || plan.wants("failover") || plan.wants("load");
        // The contention section runs its replicas on the Kubernetes Lease alone.
        let kube = if (servers || plan.wants("contention")) && plan.wants_backend(KUBE) {
            match k8s::start_server().await {
                Ok(server) => {
                    eprintln!("building the peer program (benches/peers)");
                    let peers = tokio::task::spawn_blocking(k8s::build_peers)
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                    if let Err(e) = &peers {
                        for p in k8s::PROGRAM_PEERS {
                            notes.push(format!("{}: not measured: {e}", p.label));
                        }
                    }
                    Some(KubeEnv { server, peers })
                }
                Err(e) => {
                    notes.push(format!("Kubernetes: not measured: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let etcd = if servers && plan.wants_backend(ETCD_RECORD) {
            match etcd::EtcdEnv::start() {
                Ok(e) => Some(e),
                Err(e) => {
                    notes.push(format!("etcd: not measured: {e}"));
                    None
                }
            }
        } else {
            None
        };
        Env { kube, etcd, notes }
    }

    /// Every library on every backend, for the handover and failover scenarios.
    fn contenders(&self, timings: Timings) -> Vec<Contender> {
        let mut v = vec![Contender::ours(
            "memory",
            Ours {
                make_lock: memory_make_lock(),
                timings,
            },
        )];
        // Every file renewal is an fsync: a hundred elections at once would measure
        // the disk's queue, not the lock.
        v.push(Contender {
            parallel: Some(FILE_PARALLEL),
            ..Contender::ours(
                "file",
                Ours {
                    make_lock: file_make_lock(),
                    timings,
                },
            )
        });
        if let Some(k) = &self.kube {
            v.push(Contender::ours(KUBE, k8s::ours(&k.server, timings)));
            v.push(Contender {
                handover_note: Some(k8s::KLM_HANDOVER),
                ..Contender::peer(
                    KUBE,
                    k8s::KLM,
                    Runner::InProcess(Arc::new(k8s::KubeLeaseManager::new(
                        k.server.config(),
                        timings,
                    ))),
                )
            });
            v.push(Contender {
                handover_note: Some(k8s_controller::HANDOVER),
                crash_note: Some(k8s_controller::CRASH),
                ..Contender::peer(
                    KUBE,
                    k8s_controller::LABEL,
                    Runner::InProcess(Arc::new(k8s_controller::K8sController::new(
                        k.server.config(),
                        timings,
                    ))),
                )
            });
            for p in k8s::PROGRAM_PEERS {
                let runner = match &k.peers {
                    Ok(bin) => Runner::Peer(bin.clone(), p),
                    Err(e) => Runner::Skipped(e.clone()),
                };
                v.push(Contender {
                    handover_note: k8s::handover_note(p),
                    crash_note: k8s::crash_note(p),
                    ..Contender::peer(KUBE, p.label, runner)
                });
            }
        }
        if let Some(e) = &self.etcd {
            v.push(Contender::ours(
                ETCD_RECORD,
                etcd::ours_lock(e.target, false, timings),
            ));
            v.push(Contender::ours(
                ETCD_NATIVE,
                etcd::ours_lock(e.target, true, timings),
            ));
            // A standby may revoke a crashed leader's session early only for a TTL
            // above twice etcd's election timeout plus the retry period (2 s on this
            // cluster): at a shorter lease both libraries wait for etcd's lessor.
            let (timings, note) = if timings.lease < ETCD_ELECTION_SHORT.lease {
                (ETCD_ELECTION_SHORT, Some(ETCD_ELECTION_NOTE))
            } else {
                (timings, None)
            };
            let mut ours = Contender::ours(
                ETCD_ELECTION,
                etcd::OursElection {
                    target: e.target,
                    timings,
                    stats: None,
                },
            );
            let mut peer = Contender::peer(
                ETCD_ELECTION,
                etcd::PEER,
                Runner::InProcess(Arc::new(etcd::EtcdClientElection {
                    target: e.target,
                    timings,
                    stats: None,
                })),
            );
            for c in [&mut ours, &mut peer] {
                c.timings = note.map(|_| timings);
                (c.handover_note, c.crash_note) = (note, note);
            }
            v.push(ours);
            v.push(peer);
        }
        v
    }

    /// Our lock factories per backend, for the renew latency.
    fn make_locks(&self) -> Vec<(String, MakeLock)> {
        let mut v = vec![("memory".to_string(), memory_make_lock())];
        v.push(("file".to_string(), file_make_lock()));
        if let Some(k) = &self.kube {
            v.push((
                KUBE.to_string(),
                k8s::ours_make_lock(&k.server, leaderelection_testkit::apiserver::ADMIN_TOKEN),
            ));
        }
        if let Some(e) = &self.etcd {
            v.push((
                ETCD_RECORD.to_string(),
                etcd::lock_maker(e.target, false, None),
            ));
            v.push((
                ETCD_NATIVE.to_string(),
                etcd::lock_maker(e.target, true, None),
            ));
        }
        v
    }
}

pub(crate) const KUBE: &str = "Kubernetes Lease (API test server)";
pub(crate) const ETCD_RECORD: &str = "etcd record (EtcdLock)";
pub(crate) const ETCD_NATIVE: &str = "etcd record, native lease";
pub(crate) const ETCD_ELECTION: &str = "etcd election protocol";

/// The etcd election's timings where the section's are shorter (the failover section).
const ETCD_ELECTION_SHORT: Timings = Timings {
    lease: Duration::from_secs(3),
    renew: Duration::from_secs(2),
    retry: Duration::from_secs(1),
};
const ETCD_ELECTION_NOTE: &str = "lease 3 s, renew deadline 2 s, retry 1 s: at a 2 s lease \
     no standby may revoke a crashed leader's session early on this etcd (500 ms election \
     timeout; docs/safety.md), so both would wait for etcd's lessor";

/// File elections run at once in the handover and failover scenarios.
const FILE_PARALLEL: usize = 25;

async fn run_contender(
    c: &Contender,
    env: &Env,
    prefix: &str,
    n: usize,
    timings: Timings,
    departure: Departure,
) -> Outcome {
    match &c.runner {
        Runner::InProcess(lib) => {
            scenario::run(
                lib.clone(),
                prefix,
                n,
                c.parallel.unwrap_or(n),
                timings,
                departure,
            )
            .await
        }
        Runner::Peer(bin, peer) => match &env.kube {
            Some(k) => k8s::peer_scenario(bin, *peer, &k.server, departure, n, prefix).await,
            None => Outcome::failed("no API server".into()),
        },
        Runner::Skipped(why) => Outcome::failed(format!("not measured: {why}")),
    }
}

async fn run(plan: Plan) -> String {
    let started = std::time::Instant::now();
    let mut out = String::new();
    out.push_str(&machine());

    let env = Env::start(&plan).await;

    // The scale children and the load window run at the same time: neither is a
    // latency, and the children's CPU time is their own.
    let scale = {
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || {
            if plan.wants("scale") {
                eprintln!("scale: one process holding K elections at the default timings");
                scale_section(&plan)
            } else {
                String::new()
            }
        })
    };
    let load = async {
        if plan.wants("load") {
            eprintln!(
                "backend load at the default timings for {:?}",
                plan.load_window
            );
            load::section(&plan, &env).await
        } else {
            String::new()
        }
    };
    let (scale, load) = tokio::join!(scale, load);
    out.push_str(&scale.unwrap_or_else(|e| format!("scale section failed: {e}\n")));

    if plan.wants("sharded") {
        eprintln!("sharded elector on the memory lock");
        out.push_str(&sharded::section(&plan).await);
    }

    if plan.wants("renew") {
        eprintln!("renew latency");
        out.push_str(&renew_section(&plan, &env).await);
    }

    if plan.wants("failover") {
        let timings = Timings::SHORT;
        let mut handover = Figure::new(format!(
            "Graceful handover gap: release asked → standby leading ({})",
            timings.describe()
        ));
        let mut crash = Figure::new(format!(
            "Crash failover: leader's last renewal → standby leading, minus the lease ({})",
            timings.describe()
        ));
        let mut cold = Figure::new(format!(
            "Cold start: the first candidate of an election nobody held started → leading ({})",
            timings.describe()
        ));
        let contenders = env.contenders(timings);
        let contenders = contenders.iter().filter(|c| plan.wants_backend(&c.backend));
        for (i, c) in contenders.enumerate() {
            eprintln!("handover and crash failover: {} / {}", c.backend, c.library);
            // Both scenarios of one library at once, on elections of their own.
            let (ho, cf) = (format!("ho{i}"), format!("cf{i}"));
            let t = c.timings.unwrap_or(timings);
            let handover_run = run_contender(c, &env, &ho, plan.reps, t, Departure::Release);
            let crash_run = run_contender(c, &env, &cf, plan.reps, t, Departure::Crash);
            let (h, f) = if c.parallel.is_some() {
                (handover_run.await, crash_run.await)
            } else {
                tokio::join!(handover_run, crash_run)
            };
            let mut starts = Samples::new();
            for s in h.cold.values().iter().chain(f.cold.values()) {
                starts.push_secs(*s);
            }
            let starts = Outcome::of(starts);
            handover.add(&c.backend, &c.library, c.ours, h, c.handover_note);
            crash.add(&c.backend, &c.library, c.ours, f, c.crash_note);
            let note = c.timings.and(c.crash_note);
            cold.add(&c.backend, &c.library, c.ours, starts, note);
        }
        out.push_str(&handover.render());
        out.push('\n');
        out.push_str(&plot::figure(&plan.plots, "handover", &handover));
        out.push_str(&crash.render());
        out.push('\n');
        out.push_str(&plot::figure(&plan.plots, "crash", &crash));
        out.push_str(&cold.render());
        out.push('\n');
    }

    if plan.wants("contention") {
        eprintln!("safety under contention, every library at once");
        out.push_str(&contention::section(&plan, &env).await);
    }

    out.push_str(&load);

    if !env.notes.is_empty() {
        out.push_str("Notes:\n\n");
        for n in &env.notes {
            out.push_str(&format!("- {n}\n"));
        }
        out.push('\n');
    }
    let _ = std::fs::remove_dir_all(file_dir());
    out.push_str(&format!(
        "Total run time: {:.0} s; load average at the end: {}.\n",
        started.elapsed().as_secs_f64(),
        loadavg()
    ));
    out
}

async fn renew_section(plan: &Plan, env: &Env) -> String {
    let period = Duration::from_millis(50);
    let mut t = Table::new(&[
        "backend",
        "library: what a renewal is",
        "n",
        "renewal p50",
        "renewal p99",
        "raw request p50",
        "added over raw p50",
        "p50 peer/ours",
        "notes",
    ]);
    for (backend, make) in env.make_locks() {
        if !plan.wants_backend(&backend) {
            continue;
        }
        let prefix = format!("renew-{}", backend.len());
        let (ours, raw) = match ours::renew_latency(&make, &prefix, period, plan.renew_window).await
        {
            Ok(r) => (Some(r.renew), Some(r.raw)),
            Err(e) => {
                t.row(vec![
                    backend.clone(),
                    "leaderelection".into(),
                    "0".into(),
                    format!("failed: {e}"),
                ]);
                (None, None)
            }
        };
        let raw_p50 = raw.as_ref().and_then(|r| r.p50());
        let mut row = |library: &str, s: &Samples, base: Option<&Samples>, note: String| {
            t.row(vec![
                backend.clone(),
                library.to_string(),
                s.len().to_string(),
                fmt_opt_secs(s.p50()),
                fmt_opt_secs(s.p99()),
                fmt_opt_secs(raw_p50),
                match (s.p50(), raw_p50) {
                    (Some(a), Some(b)) => fmt_secs(a - b),
                    _ => "–".into(),
                },
                base.map_or(String::new(), |b| ratio(s.p50(), b.p50())),
                note,
            ]);
        };
        if let Some(o) = &ours {
            row(
                "leaderelection: one compare-and-swap update",
                o,
                None,
                String::new(),
            );
        }
        if let (true, Some(k)) = (backend == KUBE, &env.kube) {
            match k8s::klm_renewals(&k.server, period, plan.renew_window, "renew-klm").await {
                Ok((s, leaders)) => row(
                    &format!("{}: PATCH, then GET", k8s::KLM),
                    &s,
                    ours.as_ref(),
                    format!(
                        "{leaders} leaders renewing every {:?} on its own timer (the same rate); timed in its client, PATCH sent to GET answered",
                        Timings::SHORT.retry
                    ),
                ),
                Err(e) => row(k8s::KLM, &Samples::new(), None, format!("failed: {e}")),
            }
            let config = k.server.config();
            match k8s_controller::renewals(config, period, plan.renew_window, "renew-kctl").await {
                Ok((s, leaders)) => row(
                    &format!("{}: GET, then PUT", k8s_controller::LABEL),
                    &s,
                    ours.as_ref(),
                    format!(
                        "{leaders} leaders renewing every {:?} on its own timer (the same rate); timed in its client, GET sent to PUT answered",
                        Timings::SHORT.retry
                    ),
                ),
                Err(e) => row(k8s_controller::LABEL, &Samples::new(), None, format!("failed: {e}")),
            }
            for p in k8s::PROGRAM_PEERS {
                let (what, note) = k8s::renew_description(p);
                match &k.peers {
                    Ok(bin) => {
                        let prefix = format!("renew-{}", p.arg);
                        match k8s::peer_renewals(bin, p, &k.server, plan.renew_window, &prefix)
                            .await
                        {
                            Ok(s) => row(
                                &format!("{}: {what}", p.label),
                                &s,
                                ours.as_ref(),
                                note.to_string(),
                            ),
                            Err(e) => row(p.label, &Samples::new(), None, format!("failed: {e}")),
                        }
                    }
                    Err(e) => row(p.label, &Samples::new(), None, format!("not measured: {e}")),
                }
            }
        }
    }
    format!(
        "### Renew latency: a lone leader renewing every {period:?} for {:?}, beside the same raw request sent at the same rate\n\n{}\n",
        plan.renew_window,
        t.render()
    )
}

fn scale_section(plan: &Plan) -> String {
    let mut t = Table::new(&[
        "backend",
        "K",
        "CPU (cores)",
        "RSS",
        "RSS after malloc_trim(0)",
        "of which runtime at start",
        "of which backend state",
        "electors (rest)",
        "per election",
        "renewals/s",
        "terms lost in the window",
        "target",
    ]);
    let mut backends = vec!["memory"];
    backends.push("file");
    for backend in backends {
        for &k in &plan.scale_ks {
            eprintln!("  {backend} K={k}");
            match scale::measure(backend, k, plan.scale_warmup, plan.scale_window) {
                Ok(r) => {
                    let target = if k == 10_000 {
                        let cpu = if r.cores < 0.05 { "met" } else { "MISSED" };
                        let mem = if r.rss <= 48 * 1024 * 1024 {
                            "met"
                        } else {
                            "MISSED"
                        };
                        format!("CPU < 0.05 core: {cpu}; RSS <= 48 MiB: {mem}")
                    } else {
                        String::new()
                    };
                    let rest = r.rss.saturating_sub(r.rss_base + r.rss_backend);
                    t.row(vec![
                        backend.into(),
                        k.to_string(),
                        format!("{:.4}", r.cores),
                        procstat::fmt_mib(r.rss),
                        procstat::fmt_mib(r.rss_trimmed),
                        procstat::fmt_mib(r.rss_base),
                        procstat::fmt_mib(r.rss_backend),
                        procstat::fmt_mib(rest),
                        // With few elections the rest is mostly fixed costs (threads, first
                        // allocations), not a per-election figure.
                        if k >= 100 {
                            format!("{:.1} KiB", rest as f64 / 1024.0 / k as f64)
                        } else {
                            String::new()
                        },
                        format!("{:.0}", r.requests_per_sec),
                        r.lost_terms.to_string(),
                        target,
                    ]);
                }
                Err(e) => t.row(vec![backend.into(), k.to_string(), format!("failed: {e}")]),
            }
        }
    }
    let mut out = format!(
        "### One process holding K elections (default timings: lease 15 s, renew deadline 10 s, retry 2 s)\n\nEach K in a fresh child process: every election won by it, {:?} of warm-up, then CPU time (getrusage) over {:?} of real time; RSS from /proc/self/status at the end.\n\n{}\n",
        plan.scale_warmup,
        plan.scale_window,
        t.render()
    );
    if let Some(k) = plan.heap_profile {
        eprintln!("  heap profile of memory K={k} under valgrind");
        let spec = scale::ScaleSpec {
            backend: "memory".into(),
            k,
            warmup: plan.scale_warmup,
            window: plan.scale_window.min(Duration::from_secs(5)),
        };
        match heap::profile(&spec) {
            Ok(p) => out.push_str(&heap::table(&p)),
            Err(e) => out.push_str(&format!("Heap profile failed: {e}\n")),
        }
        out.push('\n');
    }
    out
}

/// Elections in the heap profile: valgrind runs the child about fifty times slower,
/// so fewer than the scale section's largest K, enough for per-election figures.
const HEAP_PROFILE_K: usize = 2_000;

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "Machine: {cores} cores ({cpu}), {mem} memory; load average at the start: {}.\n\n",
        loadavg()
    )
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows in the tails.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}
