//! CPU and memory of one process holding K elections at the default timings, measured
//! in a child process of its own so that nothing else counts.

use std::io::Read as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leaderelection::{
    Config, LeaderElectionRecord, LeaderElector, LeaseLock, LockError, MemoryStore, Version,
    Versioned, WatchStream,
};
use leaderelection_testkit::child::{self, Command};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::procstat;

#[derive(Debug, Serialize, Deserialize)]
pub struct ScaleResult {
    pub backend: String,
    pub k: usize,
    /// CPU seconds per wall-clock second over the window (1.0 = one core).
    pub cores: f64,
    pub rss: u64,
    pub peak_rss: u64,
    /// Resident memory of the runtime before anything was created.
    pub rss_base: u64,
    /// What the backend's own state added (the in-memory store's records and channels).
    pub rss_backend: u64,
    /// Resident memory after returning free heap pages to the kernel.
    pub rss_trimmed: u64,
    /// Lock requests per second over the window (renewals), as a check.
    pub requests_per_sec: f64,
    pub window_secs: f64,
    /// Terms begun after every election was first won: each one a term lost (a
    /// renewal past its deadline) and won again. Zero when the backend keeps up.
    pub lost_terms: usize,
}

/// The child-process role that makes this program the measured process.
pub const ROLE: &str = "scale";

/// What the measured process holds, and for how long.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScaleSpec {
    pub backend: String,
    pub k: usize,
    pub warmup: Duration,
    pub window: Duration,
}

/// Runs the child for `backend` with `k` elections and reads its result.
pub fn measure(
    backend: &str,
    k: usize,
    warmup: Duration,
    window: Duration,
) -> Result<ScaleResult, String> {
    let spec = ScaleSpec {
        backend: backend.to_owned(),
        k,
        warmup,
        window,
    };
    let mut child = Command::role(ROLE, &spec)
        .map_err(|e| e.to_string())?
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the scale child: {e}"))?;
    // Read while it runs, so that a full pipe never blocks it.
    let stderr = child.take_stderr().map(|mut e| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = e.read_to_string(&mut text);
            text
        })
    });
    let status = child.wait().map_err(|e| e.to_string())?;
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let outputs = child.drain();
    let line = outputs
        .iter()
        .rev()
        .filter_map(|o| o.text())
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| {
            format!(
                "the scale child printed no result (status {status}): {}",
                stderr.trim()
            )
        })?;
    serde_json::from_str(line).map_err(|e| format!("bad scale result {line:?}: {e}"))
}

/// The child's side: hold `k` elections, wait until all lead, warm up, measure.
pub fn child(spec: ScaleSpec) -> Result<(), String> {
    let ScaleSpec {
        backend,
        k,
        warmup,
        window,
    } = spec;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(hold(&backend, k, warmup, window))?;
    child::say(serde_json::to_string(&result).map_err(|e| e.to_string())?);
    Ok(())
}

async fn hold(
    backend: &str,
    k: usize,
    warmup: Duration,
    window: Duration,
) -> Result<ScaleResult, String> {
    let mut electors = Vec::with_capacity(k);
    let requests = Arc::new(AtomicU64::new(0));
    let rss_base = procstat::rss();
    let store = MemoryStore::new();
    if backend == "memory" {
        // The store's own share: every record present before any elector runs.
        let released = LeaderElectionRecord::default().to_json();
        for i in 0..k {
            store.put_raw(&format!("e{i}"), released.clone());
        }
    }
    let rss_backend = procstat::rss();
    let dir = std::env::temp_dir().join(format!("leaderelection-bench-{}", std::process::id()));
    // Each election as a user runs one: an elector whose work holds its term until it
    // is lost. Nothing of the benchmark's (no checker, no event log) sits beside it, so
    // the memory and CPU are the library's.
    let shutdown = CancellationToken::new();
    let led = Arc::new(AtomicUsize::new(0));
    for i in 0..k {
        let lock: Box<dyn LeaseLock> = match backend {
            "memory" => Box::new(store.lock(format!("e{i}"))),
            "file" => {
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                Box::new(leaderelection::FileLock::new(dir.join(format!("e{i}"))))
            }
            other => return Err(format!("unknown scale backend {other:?}")),
        };
        let lock = Counted {
            inner: lock,
            requests: requests.clone(),
        };
        let config = Config::new(format!("e{i}")).identity("scale");
        let elector = LeaderElector::new(lock, config).map_err(|e| e.to_string())?;
        let (shutdown, led) = (shutdown.clone(), led.clone());
        electors.push(tokio::spawn(async move {
            elector
                .run(shutdown, |leadership| {
                    led.fetch_add(1, Ordering::Relaxed);
                    async move { leadership.lost().await }
                })
                .await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while led.load(Ordering::Relaxed) < k {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {k} elections were won within 60 s",
                led.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let won = led.load(Ordering::Relaxed);
    tokio::time::sleep(warmup).await;
    let count = || requests.load(Ordering::Relaxed);
    let (cpu0, wall0, req0) = (procstat::cpu_time(), Instant::now(), count());
    tokio::time::sleep(window).await;
    let (cpu1, wall1, req1) = (procstat::cpu_time(), Instant::now(), count());
    let rss = procstat::rss();
    let peak_rss = procstat::peak_rss();
    // What is live, without the pages the allocator keeps after frees (the start-up
    // burst of K campaigns frees much of what it allocated).
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { libc::malloc_trim(0) };
    let rss_trimmed = procstat::rss();
    let wall = (wall1 - wall0).as_secs_f64();
    let lost_terms = led.load(Ordering::Relaxed) - won;
    for e in electors {
        e.abort();
    }
    // File operations already on blocking threads finish after the crash and may
    // write into the directory while it is being removed: try again until it is gone.
    for _ in 0..20 {
        if !dir.exists() || std::fs::remove_dir_all(&dir).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(ScaleResult {
        backend: backend.to_string(),
        k,
        cores: (cpu1 - cpu0).as_secs_f64() / wall,
        rss,
        peak_rss,
        rss_base,
        rss_backend: rss_backend.saturating_sub(rss_base),
        rss_trimmed,
        requests_per_sec: (req1 - req0) as f64 / wall,
        window_secs: wall,
        lost_terms,
    })
}

/// Counts the calls made to a lock (a watch counts once, when opened).
#[derive(Debug)]
struct Counted {
    inner: Box<dyn LeaseLock>,
    requests: Arc<AtomicU64>,
}

#[async_trait]
impl LeaseLock for Counted {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.get().await
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.create(record).await
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.update(record, expected).await
    }

    fn watch(&self) -> Option<WatchStream> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.watch()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn proves_vacancy(&self) -> Result<bool, LockError> {
        self.inner.proves_vacancy().await
    }

    fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
        self.inner.fencing_token(record, version)
    }
}
