//! `--demo`: three replicas of this binary as separate processes on one file lock; the
//! leader is crashed (SIGKILL), the next one stopped gracefully (SIGTERM), and a
//! timeline shows who led when and how long the election was leaderless.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

const REPLICAS: usize = 3;
const LEASE: &str = "2s";
const RENEW: &str = "1.5s";
const RETRY: &str = "500ms";
/// How long each leader works before the next step, so its assignments show.
const WORK_FOR: Duration = Duration::from_secs(2);
/// A step that has not happened by then has failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

const INTRO: &str = "\
leaderelection demo: three replicas of the example scheduler run as separate
processes on this host and elect a leader through one lock file. Only the leader
assigns pods; the other two stand by. Timings are short for the demo: lease 2s,
renew deadline 1.5s, retry period 500ms (kube-scheduler uses 15s, 10s and 2s).

Two things happen to the leaders:
  CRASH     the leader is killed with SIGKILL. It cannot release its lease, so the
            standbys wait until the lease runs out (about 2s) and one takes over.
  GRACEFUL  the next leader gets SIGTERM. It stops its work, then releases the
            lease, and a standby takes over within milliseconds.
";

/// One line a replica printed: `<time> <identity> <EVENT> <details>`.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) replica: usize,
    pub(crate) at: Timestamp,
    pub(crate) event: String,
    pub(crate) details: String,
}

struct Replica {
    name: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
    alive: bool,
}

/// Everything seen so far, to check at the end that no two replicas overlapped.
#[derive(Default)]
struct Log {
    /// (time, replica, +1 started acting / -1 stopped acting)
    activity: Vec<(Timestamp, usize, i32)>,
    assigned: HashMap<usize, u64>,
    /// Replicas already shown assigning in the current term.
    shown_assign: Vec<usize>,
}

struct Demo {
    start: Timestamp,
    replicas: Vec<Replica>,
    lines: mpsc::UnboundedReceiver<Line>,
    log: Log,
}

pub async fn run() -> ExitCode {
    println!("{INTRO}");
    let dir = match tempfile::Builder::new()
        .prefix("leaderelection-demo-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => return fail(&format!("cannot create a temporary directory: {e}")),
    };
    let lock_file = dir.path().join("scheduler-demo.json");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(&format!("cannot find this program's path: {e}")),
    };
    println!("lock file: {}\n", lock_file.display());
    println!("      time  event");

    let (tx, rx) = mpsc::unbounded_channel();
    let mut demo = Demo {
        start: Timestamp::now(),
        replicas: Vec::new(),
        lines: rx,
        log: Log::default(),
    };
    for i in 0..REPLICAS {
        let name = format!("replica-{}", i + 1);
        let spawned = Command::new(&exe)
            .args([
                "--leader-elect-resource-lock=file",
                "--leader-elect-resource-name=scheduler-demo",
                &format!("--lock-file={}", lock_file.display()),
                &format!("--leader-elect-lease-duration={LEASE}"),
                &format!("--leader-elect-renew-deadline={RENEW}"),
                &format!("--leader-elect-retry-period={RETRY}"),
                &format!("--identity={name}"),
                "--bind-address=127.0.0.1",
                "--port=0",
                "--assign-interval=400ms",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return fail(&format!("cannot start {name}: {e}")),
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_lines(i, out, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(keep_stderr(err, stderr.clone()));
        }
        demo.replicas.push(Replica {
            name,
            child,
            stderr,
            alive: true,
        });
    }
    drop(tx);
    let started = demo
        .replicas
        .iter()
        .map(|r| format!("{} (pid {})", r.name, r.child.id().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ");
    demo.event(Timestamp::now(), &format!("started {started}"));

    let code = match demo.script().await {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            demo.dump_stderr();
            fail(&message)
        }
    };
    demo.stop_all().await;
    code
}

fn fail(message: &str) -> ExitCode {
    eprintln!("demo failed: {message}");
    ExitCode::FAILURE
}

impl Demo {
    async fn script(&mut self) -> Result<String, String> {
        let (first, t1) = self.wait_active(None, "a first leader").await?;
        self.work_a_while().await;
        let n1 = self.log.assigned.get(&first).copied().unwrap_or(0);

        // The crash.
        let killed_at = Timestamp::now();
        self.event(
            killed_at,
            &format!(
                "CRASH: SIGKILL to {} after {n1} pods; it cannot release its lease",
                self.replicas[first].name
            ),
        );
        self.kill(first).await;
        self.log.activity.push((killed_at, first, -1));
        let (second, t2) = self
            .wait_active(Some(first), "a new leader after the crash")
            .await?;
        let crash_gap = self.last_active_at().duration_since(killed_at);
        self.note(&format!("-> {} ms without a leader", crash_gap.as_millis()));
        self.work_a_while().await;
        let n2 = self.log.assigned.get(&second).copied().unwrap_or(0);

        // The graceful handover.
        let termed_at = Timestamp::now();
        self.event(
            termed_at,
            &format!(
                "GRACEFUL: SIGTERM to {} after {n2} pods",
                self.replicas[second].name
            ),
        );
        self.terminate(second)?;
        let stopped = self
            .wait_for("the leader to stop its work", |l| {
                l.replica == second && l.event == "STOPPED"
            })
            .await?;
        let stopped_at = stopped.at;
        self.event(
            stopped_at,
            &format!(
                "{} stopped its work and released the lease",
                self.replicas[second].name
            ),
        );
        let (third, t3) = self
            .wait_active(Some(second), "a new leader after the handover")
            .await?;
        let handover_gap = self.last_active_at().duration_since(stopped_at);
        self.note(&format!(
            "-> {} ms without a leader",
            handover_gap.as_millis()
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.drain();

        let overlap = self.overlap();
        let mut s = String::new();
        let _ = writeln!(s, "\nsummary");
        let _ = writeln!(
            s,
            "  crash (SIGKILL):    {:>5} ms without a leader: the standbys waited out {}'s {LEASE} lease",
            crash_gap.as_millis(),
            self.replicas[first].name
        );
        let _ = writeln!(
            s,
            "  graceful (SIGTERM): {:>5} ms without a leader: {} released its lease after its work stopped",
            handover_gap.as_millis(),
            self.replicas[second].name
        );
        let _ = writeln!(
            s,
            "  leaders: {} -> {} -> {}, fencing tokens {t1} -> {t2} -> {t3}",
            self.replicas[first].name, self.replicas[second].name, self.replicas[third].name
        );
        match overlap {
            None => {
                let _ = writeln!(s, "  at no moment were two replicas active at once");
            }
            Some(at) => {
                return Err(format!(
                    "two replicas were active at once at {}",
                    self.offset(at)
                ))
            }
        }
        let _ = write!(
            s,
            "\nTry it by hand: run `cargo run -p leaderelection-examples --bin scheduler` in two terminals, then stop\n\
             the ACTIVE one with Ctrl-C. `--help` lists the flags (kube-scheduler's)."
        );
        Ok(s)
    }

    /// Prints one timeline line.
    fn event(&self, at: Timestamp, text: &str) {
        println!("  {}  {text}", self.offset(at));
    }

    /// Adds to the line just printed, aligned under it.
    fn note(&self, text: &str) {
        println!("            {text}");
    }

    fn offset(&self, at: Timestamp) -> String {
        let secs = at.duration_since(self.start).as_secs_f64().max(0.0);
        format!("{secs:+7.3}s")
    }

    fn last_active_at(&self) -> Timestamp {
        self.log
            .activity
            .iter()
            .rev()
            .find(|(_, _, d)| *d > 0)
            .map_or(self.start, |(at, _, _)| *at)
    }

    async fn work_a_while(&mut self) {
        let until = Instant::now() + WORK_FOR;
        while let Ok(Some(line)) = tokio::time::timeout_at(until, self.lines.recv()).await {
            self.record(&line);
        }
    }

    /// Waits for a replica other than `not` to become active; its index and token.
    async fn wait_active(
        &mut self,
        not: Option<usize>,
        what: &str,
    ) -> Result<(usize, u64), String> {
        let line = self
            .wait_for(what, |l| l.event == "ACTIVE" && Some(l.replica) != not)
            .await?;
        let token = line
            .details
            .split_whitespace()
            .nth(4)
            .and_then(|t| t.trim_end_matches(';').parse().ok())
            .unwrap_or(0);
        Ok((line.replica, token))
    }

    async fn wait_for(
        &mut self,
        what: &str,
        mut wanted: impl FnMut(&Line) -> bool,
    ) -> Result<Line, String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Err(_) => return Err(format!("no sign of {what} within {STEP_TIMEOUT:?}")),
                Ok(None) => return Err(format!("every replica exited before {what}")),
                Ok(Some(line)) => {
                    self.record(&line);
                    if wanted(&line) {
                        return Ok(line);
                    }
                }
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.record(&line);
        }
    }

    /// Shows the lines a newcomer should see and keeps the rest for the checks.
    fn record(&mut self, line: &Line) {
        let name = &self.replicas[line.replica].name;
        match line.event.as_str() {
            "ACTIVE" => {
                self.log.activity.push((line.at, line.replica, 1));
                self.log.shown_assign.clear();
                self.event(line.at, &format!("{name} is ACTIVE: {}", line.details));
            }
            "STOPPED" => self.log.activity.push((line.at, line.replica, -1)),
            "STANDBY" => self.event(line.at, &format!("{name} stands by, {}", line.details)),
            "ASSIGN" => {
                *self.log.assigned.entry(line.replica).or_default() += 1;
                if !self.log.shown_assign.contains(&line.replica) {
                    self.log.shown_assign.push(line.replica);
                    self.event(
                        line.at,
                        &format!("{name} assigns {} (and so on)", line.details),
                    );
                }
            }
            _ => {}
        }
    }

    /// The first instant at which two replicas were active, judged on the replicas'
    /// own timestamps (one host, one clock).
    fn overlap(&self) -> Option<Timestamp> {
        let mut activity = self.log.activity.clone();
        // At equal times, count stops before starts.
        activity.sort_by_key(|(at, _, d)| (*at, *d));
        let mut active = 0;
        for (at, _, d) in activity {
            active += d;
            if active > 1 {
                return Some(at);
            }
        }
        None
    }

    async fn kill(&mut self, i: usize) {
        let r = &mut self.replicas[i];
        let _ = r.child.start_kill();
        let _ = r.child.wait().await;
        r.alive = false;
    }

    fn terminate(&mut self, i: usize) -> Result<(), String> {
        let r = &mut self.replicas[i];
        r.alive = false;
        send_sigterm(&r.child).map_err(|e| format!("cannot send SIGTERM to {}: {e}", r.name))
    }

    /// SIGTERM to the replicas still running, then waits for them (killing any that
    /// take too long).
    async fn stop_all(&mut self) {
        for r in &mut self.replicas {
            if r.alive {
                let _ = send_sigterm(&r.child);
            }
        }
        for r in &mut self.replicas {
            if tokio::time::timeout(Duration::from_secs(10), r.child.wait())
                .await
                .is_err()
            {
                let _ = r.child.start_kill();
                let _ = r.child.wait().await;
            }
        }
    }

    fn dump_stderr(&self) {
        for r in &self.replicas {
            let text = r.stderr.lock().map(|s| s.clone()).unwrap_or_default();
            if !text.trim().is_empty() {
                eprintln!("--- {} stderr ---\n{}", r.name, text.trim_end());
            }
        }
    }
}

#[cfg(unix)]
pub(crate) fn send_sigterm(child: &Child) -> std::io::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the process has already exited"))?;
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped) only sends
    // a signal; it touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
pub(crate) fn send_sigterm(_child: &Child) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "graceful stop by signal needs a Unix system",
    ))
}

pub(crate) async fn read_lines(
    replica: usize,
    stdout: tokio::process::ChildStdout,
    tx: mpsc::UnboundedSender<Line>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(text)) = lines.next_line().await {
        let mut parts = text.splitn(4, ' ');
        let (Some(at), Some(_identity), Some(event), details) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(at) = at.parse::<Timestamp>() else {
            continue;
        };
        let line = Line {
            replica,
            at,
            event: event.to_owned(),
            details: details.unwrap_or("").trim().to_owned(),
        };
        if tx.send(line).is_err() {
            return;
        }
    }
}

pub(crate) async fn keep_stderr(mut stderr: tokio::process::ChildStderr, into: Arc<Mutex<String>>) {
    let mut buf = Vec::new();
    let _ = stderr.read_to_end(&mut buf).await;
    if let Ok(mut s) = into.lock() {
        // The end is what explains a failure.
        let text = String::from_utf8_lossy(&buf);
        let start = text.len().saturating_sub(8 * 1024);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        s.push_str(&text[start..]);
    }
}
