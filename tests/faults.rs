//! Safety under faults: never two leaders, fencing tokens that only grow, and an
//! election that recovers, measured by the testkit's checker and printed as a summary.
//!
//! The same scenarios run against the in-memory lock under tokio's paused clock (many
//! random seeds each, in virtual time), against real backends where their features
//! are built, and hostile records are planted in the store. This file is its own test
//! harness (`harness = false`) so that it can print one summary table after every
//! scenario ran, and re-execute itself as a leader process that a scenario can SIGSTOP
//! or SIGKILL.
//!
//! `cargo test --features testkit --test faults [-- FILTER...] [--exact] [--list]`
//! runs the scenarios whose name contains a filter. `FAULTS_SEEDS=N` changes the
//! number of seeds per paused-clock scenario (default 100).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::Instant;

use leaderelection::testkit::checker::Summary;
use rand::rngs::StdRng;
use rand::SeedableRng;

// The crate root is tests/faults.rs, so its modules live in tests/faults/.
#[path = "faults/bad_input.rs"]
mod bad_input;
#[path = "faults/proxy.rs"]
mod proxy;
#[path = "faults/scenarios.rs"]
mod scenarios;
#[path = "faults/support.rs"]
mod support;

use support::{paused, Backend, Memory};

/// One named scenario: runs, adds its reports to the summary, panics on a violation.
struct Scenario {
    name: String,
    run: Box<dyn Fn(&mut Summary)>,
}

fn seeds() -> u64 {
    std::env::var("FAULTS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

type Generic = for<'a> fn(
    &'a dyn Backend,
    &'a mut StdRng,
    usize,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = leaderelection::testkit::checker::Report> + 'a>,
>;

/// The generic scenarios, with the number of rounds (faults) per run.
fn generic() -> Vec<(&'static str, Generic, usize)> {
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
    ]
}

fn memory_scenarios() -> Vec<Scenario> {
    generic()
        .into_iter()
        .map(|(name, f, rounds)| Scenario {
            name: format!("memory/{name}"),
            run: Box::new(move |summary: &mut Summary| {
                for seed in 0..seeds() {
                    let memory = Memory::default();
                    let mut rng = StdRng::seed_from_u64(seed);
                    let report =
                        catch_unwind(AssertUnwindSafe(|| paused(f(&memory, &mut rng, rounds))))
                            .unwrap_or_else(|e| {
                                panic!("memory/{name} failed with seed {seed}: {}", panic_text(&e))
                            });
                    summary.add(&format!("memory/{name}"), &report);
                }
            }),
        })
        .collect()
}

fn all_scenarios() -> Vec<Scenario> {
    let mut all = memory_scenarios();
    all.push(Scenario {
        name: "memory/bad-input".into(),
        run: Box::new(bad_input::all),
    });
    all
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
    let args = args();
    let selected: Vec<Scenario> = all_scenarios()
        .into_iter()
        .filter(|s| {
            let hit = |f: &String| {
                if args.exact {
                    s.name == *f
                } else {
                    s.name.contains(f.as_str())
                }
            };
            (args.filters.is_empty() || args.filters.iter().any(hit))
                && !args.skip.iter().any(|f| s.name.contains(f.as_str()))
        })
        .collect();
    if args.list {
        for s in &selected {
            println!("{}: test", s.name);
        }
        return ExitCode::SUCCESS;
    }

    let started = Instant::now();
    println!("\nrunning {} fault scenarios", selected.len());
    let mut summary = Summary::default();
    let mut failed = Vec::new();
    for s in &selected {
        let t = Instant::now();
        let mut local = Summary::default();
        let outcome = catch_unwind(AssertUnwindSafe(|| (s.run)(&mut local)));
        summary.merge(&local);
        match outcome {
            Ok(()) => println!("test {} ... ok ({:.1}s)", s.name, t.elapsed().as_secs_f64()),
            Err(e) => {
                println!(
                    "test {} ... FAILED ({:.1}s)",
                    s.name,
                    t.elapsed().as_secs_f64()
                );
                failed.push((s.name.clone(), panic_text(&e)));
            }
        }
    }

    println!("\nfault summary (virtual time for memory scenarios):\n{summary}");
    if !summary.is_safe() {
        println!("SAFETY VIOLATED: see the failures above");
    }
    for (name, why) in &failed {
        println!("\n---- {name} ----\n{why}");
    }
    let passed = selected.len() - failed.len();
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        all_scenarios().len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() && summary.is_safe() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
