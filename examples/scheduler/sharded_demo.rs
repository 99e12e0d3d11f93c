//! `--demo --shards N`: three replicas of this binary share N shards on file locks in
//! one directory; one is crashed (SIGKILL) and a fourth joins, and a timeline shows
//! how the shards move and how long each rebalancing took.

use std::collections::BTreeMap;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::demo::{keep_stderr, read_lines, Line};

const LEASE: &str = "2s";
const RENEW: &str = "1.5s";
const RETRY: &str = "500ms";
/// A step that has not happened by then has failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

struct Sharded {
    start: Timestamp,
    exe: std::path::PathBuf,
    lock_file: std::path::PathBuf,
    shards: u32,
    children: Vec<(String, Child, Arc<Mutex<String>>)>,
    tx: mpsc::UnboundedSender<Line>,
    lines: mpsc::UnboundedReceiver<Line>,
    /// The shards each replica said it owns last.
    owned: BTreeMap<usize, Vec<u32>>,
}

pub async fn run(shards: u32) -> ExitCode {
    println!(
        "leaderelection sharded demo: {shards} shards, each a lease of its own, over the
replicas alive. Each replica owns about {shards} / replicas and assigns only the pods
whose name hashes to a shard it owns. A crashed replica's shards are taken when their
leases run out; a joining replica is handed shards that the others release.
Timings: lease {LEASE}, renew deadline {RENEW}, retry period {RETRY}.\n"
    );
    let dir = match tempfile::Builder::new()
        .prefix("leaderelection-sharded-demo-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => return fail(&format!("cannot create a temporary directory: {e}")),
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(&format!("cannot find this program's path: {e}")),
    };
    let (tx, lines) = mpsc::unbounded_channel();
    let mut demo = Sharded {
        start: Timestamp::now(),
        exe,
        lock_file: dir.path().join("scheduler-demo.json"),
        shards,
        children: Vec::new(),
        tx,
        lines,
        owned: BTreeMap::new(),
    };
    println!("      time  event");
    let result = demo.script().await;
    for (_, child, _) in &mut demo.children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            for (name, _, stderr) in &demo.children {
                let text = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                if !text.trim().is_empty() {
                    eprintln!("--- {name} stderr ---\n{}", text.trim_end());
                }
            }
            fail(&message)
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("demo failed: {message}");
    ExitCode::FAILURE
}

impl Sharded {
    async fn script(&mut self) -> Result<String, String> {
        for _ in 0..3 {
            self.spawn()?;
        }
        let settled = self.balanced(&[0, 1, 2], "the three replicas").await?;

        let crashed_at = Timestamp::now();
        let lost = self.owned.get(&0).cloned().unwrap_or_default();
        let _ = self.children[0].1.start_kill();
        self.event(
            crashed_at,
            &format!("CRASH: SIGKILL to replica-1, which owns shards {lost:?}"),
        );
        self.owned.remove(&0);
        let recovered = self.balanced(&[1, 2], "the two survivors").await?;

        let joined_at = Timestamp::now();
        self.spawn()?;
        self.event(joined_at, "JOIN: replica-4 starts");
        let rejoined = self.balanced(&[1, 2, 3], "the three replicas").await?;

        Ok(format!(
            "\nsummary\n  start:  balanced {:>6} ms after the replicas started\n  crash:  balanced {:>6} ms after replica-1 was killed (its shards waited out their leases)\n  join:   balanced {:>6} ms after replica-4 started (shards released, taken at once)\n  each shard's safety (one owner at a time, growing fencing tokens) is what\n  tests-integration/tests/sharded.rs checks with one checker per shard",
            ms(settled, self.start),
            ms(recovered, crashed_at),
            ms(rejoined, joined_at),
        ))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let i = self.children.len();
        let name = format!("replica-{}", i + 1);
        let mut child = Command::new(&self.exe)
            .args([
                "--leader-elect-resource-lock=file",
                "--leader-elect-resource-name=scheduler-demo",
                &format!("--lock-file={}", self.lock_file.display()),
                &format!("--leader-elect-lease-duration={LEASE}"),
                &format!("--leader-elect-renew-deadline={RENEW}"),
                &format!("--leader-elect-retry-period={RETRY}"),
                &format!("--shards={}", self.shards),
                &format!("--identity={name}"),
                "--bind-address=127.0.0.1",
                "--port=0",
                "--assign-interval=400ms",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_lines(i, out, self.tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(keep_stderr(err, stderr.clone()));
        }
        self.children.push((name, child, stderr));
        Ok(())
    }

    /// Waits until every replica of `alive` owns its share (within one shard of the
    /// others, all shards owned), printing each change of ownership; the time of the
    /// line that completed it.
    async fn balanced(&mut self, alive: &[usize], who: &str) -> Result<Timestamp, String> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let counts: Vec<usize> = alive
                .iter()
                .map(|i| self.owned.get(i).map_or(0, Vec::len))
                .collect();
            let total: usize = counts.iter().sum();
            let (min, max) = (counts.iter().min(), counts.iter().max());
            if let (Some(min), Some(max)) = (min, max) {
                if total == self.shards as usize && max - min <= 1 && *min > 0 {
                    let at = Timestamp::now();
                    let shares: Vec<String> = counts.iter().map(usize::to_string).collect();
                    self.event(
                        at,
                        &format!("balanced over {who}: {} shards each", shares.join("/")),
                    );
                    return Ok(at);
                }
            }
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| format!("{who} did not balance within {STEP_TIMEOUT:?}"))?
                .ok_or("every replica exited")?;
            if line.event != "SHARDS" || !alive.contains(&line.replica) {
                continue;
            }
            let owned = parse_owned(&line.details);
            if self.owned.get(&line.replica) == Some(&owned) {
                // Only the member count changed.
                continue;
            }
            self.event(
                line.at,
                &format!("{} owns {:?}", self.children[line.replica].0, owned),
            );
            self.owned.insert(line.replica, owned);
        }
    }

    fn event(&self, at: Timestamp, text: &str) {
        println!("{:>9}  {text}", format!("+{:.3}s", secs(at, self.start)));
    }
}

/// The shard list of a `SHARDS own K of N shards [a, b, ...] (M members)` line.
fn parse_owned(details: &str) -> Vec<u32> {
    let Some(list) = details.split('[').nth(1).and_then(|r| r.split(']').next()) else {
        return Vec::new();
    };
    list.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn secs(at: Timestamp, since: Timestamp) -> f64 {
    (at.as_millisecond() - since.as_millisecond()) as f64 / 1000.0
}

fn ms(at: Timestamp, since: Timestamp) -> i64 {
    at.as_millisecond() - since.as_millisecond()
}
