//! Real clocks changed with libfaketime: replicas run as child processes of this test
//! binary (the `child_replica` test, in a role of the test kit's child-process helper) under
//! `LD_PRELOAD=libfaketime`, over one file lock. Each child's work reports its term's
//! events on stdout; this process stamps every line on arrival with its own clock, so
//! all terms share one time base while the children's clocks (wall and monotonic) are
//! faked.
//!
//! Timing: lease `D` = 2 s, renew deadline `R` = 1 s, retry 0.25 s. A leader whose
//! monotonic clock runs at rate `s` acts up to `R / s` of real time after its last
//! renewal; a standby whose clock runs at rate `f` waits `D / f`. Safe while
//! `R / s < D / f` (docs/safety.md): at rates 0.9 and 1.1, 1.11 s < 1.82 s; a leader at
//! rate 0.4 acts for 2.5 s, past the 2 s a true-rate standby waits.
#![cfg(feature = "file")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use leaderelection::{Config, FileLock, LeaderElector};
use leaderelection_testkit::checker::{Checker, Report};
use leaderelection_testkit::child::{self, Child, Command};
use leaderelection_testkit::faults::FaultyLock;
use serde::{Deserialize, Serialize};
use tokio::time::{sleep, Instant};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const LEASE: Duration = Duration::from_secs(2);
const RENEW: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_millis(250);
const TICK: Duration = Duration::from_millis(50);

fn libfaketime() -> &'static str {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's `faketime` package (scripts/test.sh does)"
    );
    LIBFAKETIME
}

/// The role of the child replicas.
const ROLE: &str = "faketime-replica";

/// What a child replica runs.
#[derive(Serialize, Deserialize)]
struct Spec {
    /// The file lock's record.
    path: PathBuf,
    id: String,
    /// Only sleep one second on tokio's clock, and print `SLEPT`.
    sleep: bool,
    /// Three times the timings: for a test that checks that nothing changes, where a
    /// loaded machine's slow fsync must not cost the leadership.
    #[serde(default)]
    generous: bool,
}

/// One replica in this process, as a child started by a test: an elector over the
/// spec's file whose work writes every tick until its `valid_until`. It prints the
/// checker's lines and `WALL <unix seconds>` with each write; `CUT` on stdin cuts it
/// off from the file, end of stdin shuts it down. With `sleep` it only prints `SLEPT`
/// after a one-second tokio sleep.
#[test]
#[ignore = "child process of the faketime tests, which run it themselves"]
fn child_replica() {
    let Some(role) = child::role().filter(|r| r.name() == ROLE) else {
        return;
    };
    let spec: Spec = role.spec().expect("a replica spec");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if spec.sleep {
        rt.block_on(async { sleep(Duration::from_secs(1)).await });
        child::say("SLEPT");
        return;
    }
    rt.block_on(async move {
        let lock = FaultyLock::new(FileLock::new(spec.path).poll_interval(TICK));
        let faults = lock.faults();
        let scale = if spec.generous { 3 } else { 1 };
        let config = Config::new("faketime")
            .identity(spec.id)
            .lease_duration(LEASE * scale)
            .renew_deadline(RENEW * scale)
            .retry_period(RETRY * scale);
        let elector = LeaderElector::new(lock, config).expect("child: config");
        let shutdown = child::commands(move |line| {
            if line == "CUT" {
                faults.set_unavailable(true);
            }
        });
        let stopping = shutdown.clone();
        elector
            .run(shutdown, move |l| {
                let stopping = stopping.clone();
                async move {
                    let term = child::Term::begin(&l);
                    // Acts until valid_until, as its own clock tells.
                    loop {
                        let now = Instant::now();
                        let valid_until = l.valid_until();
                        if stopping.is_cancelled() || (l.is_lost() && now >= valid_until) {
                            break;
                        }
                        if now < valid_until {
                            term.act();
                            let wall = jiff::Timestamp::now().as_second();
                            child::say(format!("WALL {wall}"));
                        }
                        sleep(
                            TICK.min(valid_until.saturating_duration_since(now))
                                .max(Duration::from_millis(1)),
                        )
                        .await;
                    }
                }
            })
            .await;
    });
}

/// A child replica under libfaketime, its lines going to the checker as they arrive.
fn start(id: &str, path: &Path, sleep: bool, env: &[(&str, String)], checker: &Checker) -> Child {
    spawn(
        Spec {
            path: path.to_owned(),
            id: id.to_owned(),
            sleep,
            generous: false,
        },
        env,
        checker,
    )
}

/// A child replica with three times the timings (see [`Spec::generous`]).
fn start_generous(id: &str, path: &Path, env: &[(&str, String)], checker: &Checker) -> Child {
    spawn(
        Spec {
            path: path.to_owned(),
            id: id.to_owned(),
            sleep: false,
            generous: true,
        },
        env,
        checker,
    )
}

fn spawn(spec: Spec, env: &[(&str, String)], checker: &Checker) -> Child {
    let mut cmd = Command::role(ROLE, &spec)
        .expect("a replica spec")
        .libtest("child_replica")
        .env("LD_PRELOAD", libfaketime())
        .checker(checker);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd.spawn().expect("start a child replica")
}

/// The `WALL` seconds a replica printed so far.
fn walls(child: &Child) -> Vec<i64> {
    child
        .drain()
        .iter()
        .filter_map(|o| o.text()?.strip_prefix("WALL ")?.parse().ok())
        .collect()
}

async fn wait_for(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let until = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < until, "{what} within {within:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

fn record_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("record")
}

/// A leader `a` with `a_env`, a standby `b` with `b_env`; `a` is cut off from the file
/// while its work keeps acting until its own `valid_until`, and `b` takes over.
async fn cut_leader_off(a_env: &[(&str, String)], b_env: &[(&str, String)]) -> Report {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = record_file(&dir);
    let checker = Checker::new();
    let mut a = start("a", &path, false, a_env, &checker);
    wait_for("a leading", Duration::from_secs(10), || a.leads()).await;
    let mut b = start("b", &path, false, b_env, &checker);
    sleep(LEASE).await;
    checker.fault("cut a off the file");
    a.send("CUT").expect("tell the child");
    wait_for("b taking over", Duration::from_secs(15), || b.leads()).await;
    sleep(LEASE * 2).await;
    checker.close();
    a.kill().expect("kill a");
    b.kill().expect("kill b");
    checker.report()
}

fn rate(r: &str) -> Vec<(&'static str, String)> {
    vec![("FAKETIME", format!("+0 x{r}"))]
}

#[tokio::test]
async fn tokio_timers_follow_a_faked_monotonic_clock() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let checker = Checker::new();
    let started = Instant::now();
    let child = start("sleeper", &record_file(&dir), true, &rate("0.5"), &checker);
    let (slept, _) = child
        .expect("SLEPT", Duration::from_secs(20), |o| {
            o.text() == Some("SLEPT")
        })
        .await
        .expect("the child's one-second sleep");
    let took = slept.at - started;
    // One second on a clock at half speed is two real ones (plus the child's start).
    assert!(
        took >= Duration::from_millis(1900),
        "a one-second tokio sleep at clock rate 0.5 took {took:?}: timers do not follow the faked clock"
    );
}

#[tokio::test]
async fn wall_clock_jumps_an_hour_while_leading() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = record_file(&dir);
    let rc = dir.path().join("faketime.rc");
    std::fs::write(&rc, "+0\n").expect("write the faketime file");
    // Only the wall clock moves: the monotonic clock, which expiry is judged on, is
    // the host's.
    let env = vec![
        ("FAKETIME_TIMESTAMP_FILE", rc.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
    ];
    let checker = Checker::new();
    let a = start_generous("a", &path, &env, &checker);
    wait_for("a leading", Duration::from_secs(10), || a.leads()).await;
    let b = start_generous("b", &path, &[], &checker);
    sleep(LEASE).await;
    for jump in ["+1h", "+0", "-1h", "+0"] {
        checker.fault(format!("a's wall clock at {jump}"));
        std::fs::write(&rc, format!("{jump}\n")).expect("write the faketime file");
        sleep(LEASE * 2).await;
    }
    checker.close();
    let walls = walls(&a);
    drop((a, b));
    let report = checker.report();
    report.assert_safe();
    assert_eq!(
        report.intervals,
        1,
        "the leader changed\n{}",
        report.explain()
    );
    // The leader's wall clock did jump: an hour ahead, and an hour behind.
    let (lo, hi) = (walls.iter().min(), walls.iter().max());
    let spread = hi.zip(lo).map_or(0, |(h, l)| h - l);
    assert!(
        spread >= 7000,
        "the leader's wall clock spread over {spread}s only"
    );
}

#[tokio::test]
async fn clock_rates_within_the_tolerance_keep_terms_apart() {
    // A slow leader (rate 0.9) acts 1 s / 0.9 = 1.11 s after its last renewal; a fast
    // standby (rate 1.1) waits 2 s / 1.1 = 1.82 s.
    let report = cut_leader_off(&rate("0.9"), &rate("1.1")).await;
    println!("rates 0.9 / 1.1: takeover margin {:?}", report.min_margin());
    report.assert_safe();
    assert!(report.intervals >= 2, "{}", report.explain());
    let margin = report.min_margin().expect("a takeover");
    assert!(
        margin >= Duration::from_millis(500),
        "margin {margin:?}\n{}",
        report.explain()
    );
}

#[tokio::test]
async fn a_leader_clock_beyond_the_tolerance_overlaps_and_the_checker_says_so() {
    // A leader at rate 0.4 acts 1 s / 0.4 = 2.5 s after its last renewal; a true-rate
    // standby takes over after 2 s.
    let report = cut_leader_off(&rate("0.4"), &[]).await;
    println!("rate 0.4:\n{}", report.explain());
    assert_eq!(report.overlaps(), 1, "{}", report.explain());
}
