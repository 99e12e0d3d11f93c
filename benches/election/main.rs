//! Benchmarks of leader election: how long a component is leaderless when its leader
//! goes away, how much load the replicas put on the backend, and how many elections one
//! process can hold, beside the peers a user would pick instead, measured in one run.
//!
//! Run (takes a few minutes; see docs/benchmarks.md):
//!
//! ```text
//! cargo bench --bench election --all-features
//! cargo bench --bench election --all-features -- --quick       # a fast smoke run
//! cargo bench --bench election --all-features -- --only scale  # one section
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it prints how to run it and
//! exits, so the test suite never runs the benchmark.

mod ours;
mod procstat;
mod scale;
mod scenario;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use leaderelection::{LeaseLock, MemoryStore};

use crate::ours::{MakeLock, Ours};
use crate::scenario::{Departure, Library, Outcome, Timings};
use crate::stats::{fmt_opt_secs, fmt_secs, ratio, Table};

/// What a run measures and for how long.
#[derive(Clone, Debug)]
struct Plan {
    sections: Vec<String>,
    /// Elections per handover or failover scenario (one sample each).
    reps: usize,
    scale_ks: Vec<usize>,
    scale_warmup: Duration,
    scale_window: Duration,
    renew_window: Duration,
    load_window: Duration,
}

const SECTIONS: [&str; 4] = ["scale", "renew", "failover", "load"];

impl Plan {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut plan = Plan {
            sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
            reps: 100,
            scale_ks: vec![1, 100, 10_000],
            scale_warmup: Duration::from_secs(5),
            scale_window: Duration::from_secs(30),
            renew_window: Duration::from_secs(5),
            load_window: Duration::from_secs(60),
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
                "--reps" => {
                    plan.reps = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--reps needs a number")?;
                }
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
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--scale-child") {
        if let Err(e) = scale::child(&args[1..]) {
            eprintln!("scale child: {e}");
            std::process::exit(1);
        }
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "the election benchmark runs only under `cargo bench --bench election --all-features`"
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
}

impl Figure {
    fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    fn add(&mut self, backend: &str, library: &str, ours: bool, outcome: Outcome) {
        eprintln!(
            "  {backend} / {library}: p50 {} p99 {} (n={}) {}",
            fmt_opt_secs(outcome.samples.p50()),
            fmt_opt_secs(outcome.samples.p99()),
            outcome.samples.len(),
            outcome.note()
        );
        self.rows.push(Row {
            backend: backend.into(),
            library: library.into(),
            outcome,
            ours,
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
                r.outcome.note(),
            ]);
        }
        format!("### {}\n\n{}", self.title, t.render())
    }
}

/// The backends and libraries compared on each.
struct Contender {
    backend: String,
    library: String,
    ours: bool,
    lib: Arc<dyn Library>,
}

fn memory_make_lock() -> MakeLock {
    let store = MemoryStore::new();
    Arc::new(move |name: String| {
        let lock: Box<dyn LeaseLock> = Box::new(store.lock(name));
        async move { Ok(lock) }.boxed()
    })
}

async fn run(plan: Plan) -> String {
    let started = std::time::Instant::now();
    let mut out = String::new();
    out.push_str(&machine());

    if plan.wants("scale") {
        eprintln!("scale: one process holding K elections at the default timings");
        out.push_str(&scale_section(&plan));
    }

    if plan.wants("renew") {
        eprintln!("renew latency");
        let mut t = Table::new(&[
            "backend",
            "raw update p50",
            "raw p99",
            "elector renew p50",
            "renew p99",
            "added p50",
            "requests per renewal",
        ]);
        let backends: Vec<(&str, MakeLock)> = vec![("memory", memory_make_lock())];
        for (backend, make) in backends {
            match ours::renew_latency(
                &make,
                &format!("renew-{backend}"),
                Duration::from_millis(50),
                plan.renew_window,
            )
            .await
            {
                Ok(r) => t.row(vec![
                    backend.to_string(),
                    fmt_opt_secs(r.raw.p50()),
                    fmt_opt_secs(r.raw.p99()),
                    fmt_opt_secs(r.renew.p50()),
                    fmt_opt_secs(r.renew.p99()),
                    match (r.renew.p50(), r.raw.p50()) {
                        (Some(a), Some(b)) => fmt_secs(a - b),
                        _ => "–".into(),
                    },
                    "1 (compare-and-swap update)".into(),
                ]),
                Err(e) => t.row(vec![backend.to_string(), format!("failed: {e}")]),
            }
        }
        out.push_str(&format!(
            "### Renew latency added by the library\n\nThe elector's renewals (timed around its lock call) against raw `update` calls on another record, both every 50 ms for {:?}.\n\n{}\n",
            plan.renew_window,
            t.render()
        ));
    }

    if plan.wants("failover") {
        let timings = Timings::SHORT;
        let contenders = vec![Contender {
            backend: "memory".into(),
            library: "leaderelection".into(),
            ours: true,
            lib: Arc::new(Ours {
                make_lock: memory_make_lock(),
                timings,
            }),
        }];
        let mut handover = Figure::new(format!(
            "Graceful handover gap: release asked → standby leading ({})",
            timings.describe()
        ));
        let mut crash = Figure::new(format!(
            "Crash failover: leader's last renewal → standby leading, minus the lease ({})",
            timings.describe()
        ));
        for (i, c) in contenders.iter().enumerate() {
            eprintln!("handover: {} / {}", c.backend, c.library);
            let o = scenario::run(
                c.lib.clone(),
                &format!("ho{i}"),
                plan.reps,
                timings,
                Departure::Release,
            )
            .await;
            handover.add(&c.backend, &c.library, c.ours, o);
            eprintln!("crash failover: {} / {}", c.backend, c.library);
            let o = scenario::run(
                c.lib.clone(),
                &format!("cf{i}"),
                plan.reps,
                timings,
                Departure::Crash,
            )
            .await;
            crash.add(&c.backend, &c.library, c.ours, o);
        }
        out.push_str(&handover.render());
        out.push('\n');
        out.push_str(&crash.render());
        out.push('\n');
    }

    out.push_str(&format!(
        "Total run time: {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    out
}

fn scale_section(plan: &Plan) -> String {
    let mut t = Table::new(&[
        "backend",
        "K",
        "CPU (cores)",
        "RSS",
        "RSS live (after malloc_trim)",
        "of which runtime at start",
        "of which backend state",
        "electors (rest)",
        "per election",
        "renewals/s",
        "target",
    ]);
    let backends = vec!["memory"];
    for backend in backends {
        for &k in &plan.scale_ks {
            eprintln!("  {backend} K={k}");
            match scale::measure(backend, k, plan.scale_warmup, plan.scale_window) {
                Ok(r) => {
                    let target = if k == 10_000 {
                        let ok = r.cores < 0.5 && r.rss < 64 * 1024 * 1024;
                        if ok {
                            "met (< 0.5 core, < 64 MiB)"
                        } else {
                            "MISSED (< 0.5 core, < 64 MiB)"
                        }
                    } else {
                        ""
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
                        format!("{:.1} KiB", rest as f64 / 1024.0 / k as f64),
                        format!("{:.0}", r.requests_per_sec),
                        target.into(),
                    ]);
                }
                Err(e) => t.row(vec![backend.into(), k.to_string(), format!("failed: {e}")]),
            }
        }
    }
    format!(
        "### One process holding K elections (default timings: lease 15 s, renew deadline 10 s, retry 2 s)\n\nEach K in a fresh child process: every election won by it, {:?} of warm-up, then CPU time (getrusage) over {:?} of real time; RSS from /proc/self/status at the end.\n\n{}\n",
        plan.scale_warmup,
        plan.scale_window,
        t.render()
    )
}

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
    format!("Machine: {cores} cores ({cpu}), {mem} memory.\n\n")
}
