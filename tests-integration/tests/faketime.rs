//! Real clocks changed with libfaketime: replicas run as child processes of this test
//! binary (the `child_replica` test, run with `--ignored --exact`) under
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

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaderelection::{Config, FileLock, LeaderElector};
use leaderelection_testkit::checker::{Checker, Line, Report};
use leaderelection_testkit::faults::FaultyLock;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

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

/// One replica in this process, as a child started by a test: an elector over the
/// file `LE_FT_PATH` whose work writes every tick until its `valid_until`. It prints
/// the checker's lines and `WALL <unix seconds>` with each write; `CUT` on stdin cuts
/// it off from the file, end of stdin shuts it down. With `LE_FT_MODE=sleep` it only
/// prints `SLEPT` after a one-second tokio sleep.
#[test]
#[ignore = "child process of the faketime tests; they run it with --ignored --exact"]
fn child_replica() {
    let Ok(path) = std::env::var("LE_FT_PATH") else {
        return;
    };
    let id = std::env::var("LE_FT_ID").unwrap_or_else(|_| "child".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if std::env::var("LE_FT_MODE").is_ok_and(|m| m == "sleep") {
        rt.block_on(async { sleep(Duration::from_secs(1)).await });
        say("SLEPT");
        return;
    }
    rt.block_on(async move {
        let lock = FaultyLock::new(FileLock::new(path).poll_interval(TICK));
        let faults = lock.faults();
        let config = Config::new("faketime")
            .identity(id)
            .lease_duration(LEASE)
            .renew_deadline(RENEW)
            .retry_period(RETRY);
        let elector = LeaderElector::new(lock, config).expect("child: config");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                match line {
                    Ok(l) if l == "CUT" => faults.set_unavailable(true),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            stop.cancel();
        });
        let stopping = shutdown.clone();
        elector
            .run(shutdown, move |l| {
                let stopping = stopping.clone();
                async move {
                    say(&Line::begin(&l).to_string());
                    // Acts until valid_until, as its own clock tells.
                    loop {
                        let now = Instant::now();
                        let valid_until = l.valid_until();
                        if stopping.is_cancelled() || (l.is_lost() && now >= valid_until) {
                            break;
                        }
                        if now < valid_until {
                            say(&Line::act(&l).to_string());
                            let wall = jiff::Timestamp::now().as_second();
                            say(&format!("WALL {wall}"));
                        }
                        sleep(
                            TICK.min(valid_until.saturating_duration_since(now))
                                .max(Duration::from_millis(1)),
                        )
                        .await;
                    }
                    say(&Line::end(&l).to_string());
                }
            })
            .await;
    });
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A child replica, its lines going to the checker as they arrive.
struct Replica {
    child: Child,
    id: String,
    walls: Arc<Mutex<Vec<i64>>>,
    leads: Arc<Mutex<bool>>,
    slept: Arc<Mutex<Option<Instant>>>,
}

impl Replica {
    fn start(id: &str, path: &Path, env: &[(&str, String)], checker: &Checker) -> Self {
        let exe = std::env::current_exe().expect("the test binary");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "child_replica",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LE_FT_PATH", path)
        .env("LE_FT_ID", id)
        .env("LD_PRELOAD", libfaketime())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start a child replica");
        let stdout = child.stdout.take().expect("piped stdout");
        let walls: Arc<Mutex<Vec<i64>>> = Arc::default();
        let leads: Arc<Mutex<bool>> = Arc::default();
        let slept: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (w, l, s, c) = (walls.clone(), leads.clone(), slept.clone(), checker.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // The harness may write `test child_replica ... ` before the first line.
                let line = line.rsplit("... ").next().unwrap_or_default();
                if let Some(wall) = line.strip_prefix("WALL ") {
                    w.lock().unwrap().extend(wall.parse::<i64>().ok());
                } else if line == "SLEPT" {
                    *s.lock().unwrap() = Some(Instant::now());
                } else if let Ok(event) = line.parse::<Line>() {
                    c.receive(&event);
                    match event {
                        Line::Begin { .. } => *l.lock().unwrap() = true,
                        Line::End { .. } => *l.lock().unwrap() = false,
                        Line::Act { .. } => {}
                    }
                }
            }
        });
        Self {
            child,
            id: id.to_owned(),
            walls,
            leads,
            slept,
        }
    }

    fn leads(&self) -> bool {
        *self.leads.lock().unwrap()
    }

    fn cut(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "CUT").expect("tell the child");
    }

    fn kill(&mut self, checker: &Checker) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        checker.killed(&self.id);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut a = Replica::start("a", &path, a_env, &checker);
    wait_for("a leading", Duration::from_secs(10), || a.leads()).await;
    let mut b = Replica::start("b", &path, b_env, &checker);
    sleep(LEASE).await;
    checker.fault("cut a off the file");
    a.cut();
    wait_for("b taking over", Duration::from_secs(15), || b.leads()).await;
    sleep(LEASE * 2).await;
    checker.close();
    a.kill(&checker);
    b.kill(&checker);
    checker.report()
}

fn rate(r: &str) -> Vec<(&'static str, String)> {
    vec![("FAKETIME", format!("+0 x{r}"))]
}

#[tokio::test]
async fn tokio_timers_follow_a_faked_monotonic_clock() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let checker = Checker::new();
    let mut env = rate("0.5");
    env.push(("LE_FT_MODE", "sleep".into()));
    let started = Instant::now();
    let child = Replica::start("sleeper", &record_file(&dir), &env, &checker);
    wait_for(
        "the child's one-second sleep",
        Duration::from_secs(20),
        || child.slept.lock().unwrap().is_some(),
    )
    .await;
    let took = child.slept.lock().unwrap().expect("slept") - started;
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
    let a = Replica::start("a", &path, &env, &checker);
    wait_for("a leading", Duration::from_secs(10), || a.leads()).await;
    let b = Replica::start("b", &path, &[], &checker);
    sleep(LEASE).await;
    for jump in ["+1h", "+0", "-1h", "+0"] {
        checker.fault(format!("a's wall clock at {jump}"));
        std::fs::write(&rc, format!("{jump}\n")).expect("write the faketime file");
        sleep(LEASE * 2).await;
    }
    checker.close();
    let walls = a.walls.lock().unwrap().clone();
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
