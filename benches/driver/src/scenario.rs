//! The measured scenarios, for any library: graceful handover and crash failover over
//! many elections run side by side, each release or crash at a random phase.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

use crate::stats::Samples;

/// Lease, renew deadline and retry period, the same for every library in a scenario.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// `LeaseDuration`.
    pub lease: Duration,
    /// `RenewDeadline`.
    pub renew: Duration,
    /// `RetryPeriod`.
    pub retry: Duration,
}

impl Timings {
    /// client-go's and kube-scheduler's defaults.
    pub const DEFAULT: Timings = Timings {
        lease: Duration::from_secs(15),
        renew: Duration::from_secs(10),
        retry: Duration::from_secs(2),
    };
    /// Short timings for repetitions, in whole seconds because some peers take only
    /// whole seconds.
    pub const SHORT: Timings = Timings {
        lease: Duration::from_secs(2),
        renew: Duration::from_millis(1500),
        retry: Duration::from_secs(1),
    };

    /// The three, for a table's caption.
    pub fn describe(&self) -> String {
        format!(
            "lease {:?}, renew deadline {:?}, retry {:?}",
            self.lease, self.renew, self.retry
        )
    }
}

/// When a replica's leader last renewed successfully, as its client saw the answer.
pub type LastRenewal = Arc<Mutex<Option<Instant>>>;

/// One running candidate of one election, of some library.
pub struct Replica {
    /// Set to the instant this replica first started leading.
    pub leading: watch::Receiver<Option<Instant>>,
    /// End of this replica's last successful renewal while leading.
    pub last_renewal: LastRenewal,
    /// Asks for a graceful release (returns at once); `None` when the library has none.
    pub release: Option<Box<dyn FnOnce() + Send>>,
    /// Stops the replica dead: no more requests, no release.
    pub crash: Box<dyn FnOnce() + Send>,
    /// Completes when the replica has stopped after `release`.
    pub stopped: BoxFuture<'static, ()>,
}

impl Replica {
    /// A replica run by a library's `task` and a `monitor` that reports its leading
    /// and holds what the library releases on (it ends when `release` fires): a crash
    /// aborts both, and the replica has stopped when both ended.
    pub fn of_tasks<A: Send + 'static, B: Send + 'static>(
        leading: watch::Receiver<Option<Instant>>,
        last_renewal: LastRenewal,
        release: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<A>,
        monitor: tokio::task::JoinHandle<B>,
    ) -> Replica {
        let abort_task = task.abort_handle();
        let abort_monitor = monitor.abort_handle();
        Replica {
            leading,
            last_renewal,
            release: Some(Box::new(move || {
                let _ = release.send(());
            })),
            crash: Box::new(move || {
                abort_task.abort();
                abort_monitor.abort();
            }),
            stopped: Box::pin(async move {
                let _ = monitor.await;
                let _ = task.await;
            }),
        }
    }

    /// When this replica started leading, if it does within `limit`; `None` also
    /// when it stopped before.
    pub async fn wait_leading(&mut self, limit: Duration) -> Option<Instant> {
        let rx = &mut self.leading;
        timeout(limit, async {
            loop {
                if let Some(t) = *rx.borrow_and_update() {
                    return Some(t);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Graceful stop where the library has one, else a crash; bounded in time.
    async fn stop(self) {
        match self.release {
            Some(release) => {
                release();
                let _ = timeout(Duration::from_secs(10), self.stopped).await;
            }
            None => (self.crash)(),
        }
    }
}

/// A library under test: starts candidates of named elections.
pub trait Library: Send + Sync {
    /// Starts campaigning for `election` as `identity`.
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>>;
}

/// Results of a scenario run over many elections.
pub struct Outcome {
    /// One sample per election that completed.
    pub samples: Samples,
    /// Per election: from its first candidate's start, on an election nobody held
    /// before, to that candidate leading (the cold start).
    pub cold: Samples,
    /// Why the other elections did not.
    pub failures: Vec<String>,
}

impl Outcome {
    /// An outcome with no sample, failed for `why`.
    pub fn failed(why: String) -> Self {
        Self {
            samples: Samples::new(),
            cold: Samples::new(),
            failures: vec![why],
        }
    }

    /// An outcome of `samples` and no failure.
    pub fn of(samples: Samples) -> Self {
        Self {
            samples,
            cold: Samples::new(),
            failures: Vec::new(),
        }
    }

    /// The failures in a few words, for a table cell.
    pub fn note(&self) -> String {
        if self.failures.is_empty() {
            String::new()
        } else if self.samples.is_empty() && self.failures.len() == 1 {
            self.failures[0].clone()
        } else {
            format!(
                "{} of {} runs failed (first: {})",
                self.failures.len(),
                self.failures.len() + self.samples.len(),
                self.failures[0]
            )
        }
    }
}

/// How a leader goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// Release: time from asking the leader to release to the standby leading.
    Release,
    /// Crash: time from the leader's last renewal to the standby leading, minus the lease.
    Crash,
}

/// Runs `n` elections, `parallel` at a time, each with a leader and one standby, and
/// measures one departure per election. Each leader goes away at a random moment of its renew
/// cycle (uniform over one lease), so the samples cover every phase of the standby's
/// polling or watching.
pub async fn run(
    lib: Arc<dyn Library>,
    prefix: &str,
    n: usize,
    parallel: usize,
    timings: Timings,
    departure: Departure,
) -> Outcome {
    use futures::StreamExt;
    let runs = (0..n).map(|i| {
        let lib = lib.clone();
        let election = format!("{prefix}-{i}");
        async move { one(lib, election, timings, departure).await }
    });
    let mut out = Outcome {
        samples: Samples::new(),
        cold: Samples::new(),
        failures: Vec::new(),
    };
    let results: Vec<_> = futures::stream::iter(runs)
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    for r in results {
        match r {
            Ok((s, cold)) => {
                out.samples.push_secs(s);
                out.cold.push_secs(cold);
            }
            Err(e) => out.failures.push(e),
        }
    }
    out
}

async fn one(
    lib: Arc<dyn Library>,
    election: String,
    t: Timings,
    departure: Departure,
) -> Result<(f64, f64), String> {
    // Spread the starts so that n elections do not all begin in the same millisecond.
    sleep(random_within(t.retry)).await;
    let started = Instant::now();
    let mut a = lib.start(election.clone(), "candidate-a".into()).await?;
    let led = a
        .wait_leading(t.lease * 3 + Duration::from_secs(5))
        .await
        .ok_or_else(|| format!("{election}: the first candidate never led"))?;
    let cold = led.saturating_duration_since(started).as_secs_f64();
    // Replicas start at unrelated moments: a standby that polls does so at a random
    // phase of the leader's renewals.
    sleep(random_within(t.retry)).await;
    let mut b = lib.start(election.clone(), "candidate-b".into()).await?;
    // Let the standby settle (read the record, open its watch), then leave at a random
    // phase of the lease.
    sleep(t.retry + random_within(t.lease)).await;
    if b.leading.borrow().is_some() {
        return Err(format!(
            "{election}: the standby led while the leader was alive"
        ));
    }
    let limit = t.lease * 3 + Duration::from_secs(5);
    let sample = match departure {
        Departure::Release => {
            let release = a
                .release
                .take()
                .ok_or_else(|| format!("{election}: no release"))?;
            let t0 = Instant::now();
            release();
            let t1 = b.wait_leading(limit).await.ok_or_else(|| {
                format!("{election}: the standby did not take over after a release")
            })?;
            a.stopped.await;
            t1.saturating_duration_since(t0).as_secs_f64()
        }
        Departure::Crash => {
            // Crash right after a renewal the leader saw answered, so that no renewal
            // is in flight: one the backend applied but the leader never heard of
            // would make the failover look a renewal period longer than it was.
            let seen = *a.last_renewal.lock().unwrap_or_else(|e| e.into_inner());
            let wait_until = Instant::now() + t.retry * 3;
            while *a.last_renewal.lock().unwrap_or_else(|e| e.into_inner()) == seen {
                if Instant::now() > wait_until {
                    return Err(format!("{election}: the leader did not renew"));
                }
                sleep(Duration::from_millis(1)).await;
            }
            let crash = std::mem::replace(&mut a.crash, Box::new(|| {}));
            crash();
            let t1 = b.wait_leading(limit).await.ok_or_else(|| {
                format!("{election}: the standby did not take over after a crash")
            })?;
            let last = a
                .last_renewal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ok_or_else(|| format!("{election}: the leader never renewed"))?;
            let gap = t1.saturating_duration_since(last).as_secs_f64();
            gap - t.lease.as_secs_f64()
        }
    };
    b.stop().await;
    Ok((sample, cold))
}

fn random_within(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.0..1.0))
}
