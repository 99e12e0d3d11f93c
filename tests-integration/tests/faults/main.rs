//! Safety under faults: never two leaders, fencing tokens that only grow, and an
//! election that recovers, measured by the testkit's checker and printed as a summary.
//!
//! The same scenarios run against the in-memory lock under tokio's paused clock (many
//! random seeds each, in virtual time), against a real 3-member etcd cluster and
//! against the Kubernetes API test server (with the `etcd` and `kube` features), and
//! hostile records are planted in the store. One scenario rebuilds the seed's control
//! plane in miniature. This file is its own test harness (`harness = false`) so that
//! it prints one summary table after every scenario ran, runs the real-backend groups
//! side by side, and re-executes itself as a leader process that a scenario can
//! SIGSTOP or SIGKILL.
//!
//! `cargo test -p leaderelection-tests-integration --test faults [-- FILTER...] [--exact] [--list]`
//! runs the scenarios whose name contains a filter. `FAULTS_SEEDS=N` changes the
//! number of seeds per paused-clock scenario (default 100); `FAULTS_FILTER=a,b` adds
//! filters as the command line does.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use futures::FutureExt;
use leaderelection_testkit::checker::{Report, Summary};
use rand::rngs::StdRng;
use rand::SeedableRng;

// A folder test: the crate root is tests/faults/main.rs, its modules beside it.
mod bad_input;
#[cfg(all(feature = "etcd", feature = "kube"))]
mod partition;
#[cfg(all(feature = "etcd", feature = "kube"))]
mod real;
mod scenarios;
mod support;

use support::{paused, Backend, Memory};

fn seeds() -> u64 {
    std::env::var("FAULTS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

/// A scenario written once for any backend.
pub type Generic = for<'a> fn(
    &'a dyn Backend,
    &'a mut StdRng,
    usize,
) -> std::pin::Pin<Box<dyn Future<Output = Report> + 'a>>;

/// The generic scenarios, with the number of rounds (faults) per paused-clock run.
pub fn generic() -> Vec<(&'static str, Generic, usize)> {
    vec![
        (
            "leader-crash",
            |b, r, n| Box::pin(scenarios::leader_crash(b, r, n)),
            4,
        ),
        (
            "leader-stalled",
            |b, r, n| Box::pin(scenarios::leader_stalled(b, r, n)),
            4,
        ),
        (
            "backend-slow",
            |b, r, n| Box::pin(scenarios::backend_slow(b, r, n)),
            3,
        ),
        (
            "backend-errors",
            |b, r, n| Box::pin(scenarios::backend_errors(b, r, n)),
            3,
        ),
        (
            "leader-cut-off",
            |b, r, n| Box::pin(scenarios::leader_cut_off(b, r, n)),
            4,
        ),
        (
            "wall-clock-jumps",
            |b, r, n| Box::pin(scenarios::wall_clock_jumps(b, r, n)),
            3,
        ),
        ("churn", |b, r, n| Box::pin(scenarios::churn(b, r, n)), 20),
        (
            "elector-dropped",
            |b, r, n| Box::pin(scenarios::elector_dropped(b, r, n)),
            3,
        ),
        (
            "takeover-margin",
            |b, r, n| Box::pin(scenarios::takeover_margin(b, r, n)),
            3,
        ),
        (
            "ambiguous-writes",
            |b, r, n| Box::pin(scenarios::ambiguous_writes(b, r, n)),
            4,
        ),
    ]
}

/// Runs scenarios, prints a line for each, and gathers reports and failures. Shared by
/// the groups that run side by side.
pub struct Reporter {
    args: Args,
    summary: Mutex<Summary>,
    failed: Mutex<Vec<(String, String)>>,
    passed: AtomicUsize,
    skipped: AtomicUsize,
    /// Scenarios that cannot run on this machine, with the reason.
    ignored: Mutex<Vec<(String, String)>>,
}

impl Reporter {
    /// Whether `name` was selected on the command line.
    pub fn selected(&self, name: &str) -> bool {
        let hit = |f: &String| {
            if self.args.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        (self.args.filters.is_empty() || self.args.filters.iter().any(hit))
            && !self.args.skip.iter().any(|f| name.contains(f.as_str()))
    }

    /// Runs one scenario, unless filtered out; it returns the reports of its runs, each
    /// under a summary row. A panic fails the scenario and is reported at the end.
    pub async fn run<F>(&self, name: &str, scenario: F)
    where
        F: Future<Output = Vec<(String, Report)>>,
    {
        if !self.selected(name) {
            self.skipped.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let t = Instant::now();
        match AssertUnwindSafe(scenario).catch_unwind().await {
            Ok(reports) => {
                let mut summary = self.summary.lock().unwrap();
                for (row, report) in &reports {
                    summary.add(row, report);
                }
                self.passed.fetch_add(1, Ordering::SeqCst);
                println!("test {name} ... ok ({:.1}s)", t.elapsed().as_secs_f64());
            }
            Err(e) => {
                println!("test {name} ... FAILED ({:.1}s)", t.elapsed().as_secs_f64());
                self.failed
                    .lock()
                    .unwrap()
                    .push((name.to_owned(), panic_text(&e)));
            }
        }
    }

    /// Counts a scenario that cannot run here as ignored, with the reason, unless it
    /// was filtered out.
    pub fn ignore(&self, name: &str, why: &str) {
        if !self.selected(name) {
            self.skipped.fetch_add(1, Ordering::SeqCst);
            return;
        }
        println!("test {name} ... ignored, {why}");
        self.ignored
            .lock()
            .unwrap()
            .push((name.to_owned(), why.to_owned()));
    }

    /// As [`run`](Self::run), for a scenario that does its own blocking.
    pub fn run_blocking(&self, name: &str, scenario: impl FnOnce() -> Vec<(String, Report)>) {
        futures::executor::block_on(self.run(name, async move { scenario() }));
    }
}

/// Runs the scenarios of a group, one after another.
pub type GroupFn = Box<dyn Fn(&Reporter) + Send + Sync>;

/// A group of scenarios that run one after another; groups run side by side.
pub struct Group {
    /// The names of its scenarios, for filters and `--list`.
    pub scenarios: Vec<String>,
    /// Runs them.
    pub run: GroupFn,
}

fn memory_group() -> Group {
    let mut names: Vec<String> = generic()
        .iter()
        .map(|(n, _, _)| format!("memory/{n}"))
        .collect();
    names.push("memory/bad-input".into());
    Group {
        scenarios: names,
        run: Box::new(|reporter| {
            for (name, f, rounds) in generic() {
                let full = format!("memory/{name}");
                reporter.run_blocking(&full.clone(), || {
                    (0..seeds())
                        .map(|seed| {
                            let memory = Memory::default();
                            let mut rng = StdRng::seed_from_u64(seed);
                            let report = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                paused(f(&memory, &mut rng, rounds))
                            }))
                            .unwrap_or_else(|e| {
                                panic!("{full} failed with seed {seed}: {}", panic_text(&e))
                            });
                            (full.clone(), report)
                        })
                        .collect()
                });
            }
            reporter.run_blocking("memory/bad-input", bad_input::all);
        }),
    }
}

fn groups() -> Vec<Group> {
    #[allow(unused_mut)]
    let mut groups = vec![memory_group()];
    #[cfg(all(feature = "etcd", feature = "kube"))]
    groups.extend(real::groups());
    #[cfg(all(feature = "etcd", feature = "kube"))]
    groups.push(partition::group());
    groups
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(non-text panic)".into())
}

/// libtest's command line, as far as it matters here: filters, `--exact`, `--skip`,
/// `--list`; other flags (`--nocapture`, `--test-threads`, ...) are accepted and ignored.
struct Args {
    filters: Vec<String>,
    skip: Vec<String>,
    exact: bool,
    list: bool,
}

fn args() -> Args {
    let mut a = Args {
        filters: Vec::new(),
        skip: Vec::new(),
        exact: false,
        list: false,
    };
    // `FAULTS_FILTER` selects like a command-line filter, for runners that pass the
    // same arguments to every test binary (scripts/mutants.sh).
    if let Ok(f) = std::env::var("FAULTS_FILTER") {
        a.filters
            .extend(f.split(',').filter(|f| !f.is_empty()).map(str::to_owned));
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--exact" => a.exact = true,
            "--list" => a.list = true,
            "--skip" => a.skip.extend(it.next()),
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" | "--report-time" => {
                it.next();
            }
            s if s.starts_with('-') => {}
            s => a.filters.push(s.to_owned()),
        }
    }
    a
}

fn main() -> ExitCode {
    // RUST_LOG=leaderelection=debug shows what the electors and locks do.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
    #[cfg(all(feature = "etcd", feature = "kube"))]
    if let Some(code) = real::child_main() {
        return code;
    }
    #[cfg(all(feature = "etcd", feature = "kube"))]
    if let Some(code) = partition::child_main() {
        return code;
    }
    let reporter = Reporter {
        args: args(),
        summary: Mutex::default(),
        failed: Mutex::default(),
        passed: AtomicUsize::new(0),
        skipped: AtomicUsize::new(0),
        ignored: Mutex::default(),
    };
    let groups = groups();
    let selected: Vec<&Group> = groups
        .iter()
        .filter(|g| g.scenarios.iter().any(|s| reporter.selected(s)))
        .collect();
    if reporter.args.list {
        for g in &groups {
            for s in g.scenarios.iter().filter(|s| reporter.selected(s)) {
                println!("{s}: test");
            }
        }
        return ExitCode::SUCCESS;
    }

    let started = Instant::now();
    let count: usize = selected
        .iter()
        .map(|g| g.scenarios.iter().filter(|s| reporter.selected(s)).count())
        .sum();
    println!("\nrunning {count} fault scenarios");
    // The paused-clock group is CPU-bound and quick: run it first, alone, so that it
    // does not slow the real-time groups, which then run side by side.
    let (memory, real): (Vec<&Group>, Vec<&Group>) = selected
        .iter()
        .partition(|g| g.scenarios[0].starts_with("memory/"));
    for g in memory {
        (g.run)(&reporter);
    }
    std::thread::scope(|s| {
        for g in real {
            let reporter = &reporter;
            s.spawn(move || (g.run)(reporter));
        }
    });

    let mut summary = reporter.summary.lock().unwrap();
    // Groups finish in any order: list rows by backend, in the order scenarios are written.
    let order = |row: &str| -> (usize, usize) {
        let backend = [
            "memory/",
            "bad-input/",
            "etcd/",
            "kube-lease/",
            "control-plane/",
            "partition/",
        ]
        .iter()
        .position(|p| row.starts_with(p))
        .unwrap_or(usize::MAX);
        let scenario = groups
            .iter()
            .flat_map(|g| g.scenarios.iter())
            .position(|s| s == row)
            .unwrap_or(usize::MAX);
        (backend, scenario)
    };
    summary.sort_by_key(|r| order(&r.scenario));
    let failed = reporter.failed.lock().unwrap();
    println!("\nfault summary (memory: virtual time under the paused clock; others: real time):\n{summary}");
    if !summary.is_safe() {
        println!("SAFETY VIOLATED: see the failures below");
    }
    for (name, why) in failed.iter() {
        println!("\n---- {name} ----\n{why}");
    }
    let ignored = reporter.ignored.lock().unwrap();
    for (name, why) in ignored.iter() {
        println!("ignored: {name}: {why}");
    }
    let passed = reporter.passed.load(Ordering::SeqCst);
    let total: usize = groups.iter().map(|g| g.scenarios.len()).sum();
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {} ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        ignored.len(),
        total - passed - failed.len() - ignored.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() && summary.is_safe() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
