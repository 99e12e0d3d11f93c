//! This crate's elector as a [`Library`], over any lock, with a wrapper that times the
//! lock calls the elector makes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::FutureExt;
use leaderelection::{
    Config, LeaderElectionRecord, LeaderElector, LeaseLock, LockError, Version, Versioned,
    WatchStream,
};
use leaderelection_testkit::checker::Checker;
use leaderelection_testkit::replica::{self as harness, Link, Work};
use tokio::time::Instant;

use leaderelection_bench_driver::scenario::{LastRenewal, Library, Replica, Timings};
use leaderelection_bench_driver::stats::Samples;

/// Makes a fresh lock handle on the record of an election.
pub type MakeLock =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Box<dyn LeaseLock>, String>> + Send + Sync>;

/// Our elector over locks from `make_lock`.
pub struct Ours {
    pub make_lock: MakeLock,
    pub timings: Timings,
}

impl Ours {
    pub fn config(&self, election: &str, identity: &str) -> Config {
        Config::new(election)
            .identity(identity)
            .lease_duration(self.timings.lease)
            .renew_deadline(self.timings.renew)
            .retry_period(self.timings.retry)
    }
}

impl Library for Ours {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let make = self.make_lock.clone();
        let config = self.config(&election, &identity);
        async move {
            let lock = make(election).await?;
            let timed = Timed::new(lock);
            let last_renewal = timed.last_success.clone();
            spawn_elector(Box::new(timed), config, last_renewal)
        }
        .boxed()
    }
}

/// Runs an elector whose work holds its term until the loss of leadership, as a
/// [`Replica`]: the test kit's harness, its terms judged by a checker of its own.
pub fn spawn_elector(
    lock: Box<dyn LeaseLock>,
    config: Config,
    last_renewal: LastRenewal,
) -> Result<Replica, String> {
    let (id, tick) = (config.identity.clone(), config.retry_period);
    let elector = LeaderElector::new(lock, config).map_err(|e| e.to_string())?;
    // The work acts once and holds its term: the figures are the elector's.
    let work = Work::polite().every(Duration::from_secs(3600));
    let replica = Arc::new(harness::Replica::spawn(
        id,
        elector,
        Link::direct(),
        &Checker::new(),
        work,
        tick,
    ));
    let (release, crash) = (replica.clone(), replica.clone());
    Ok(Replica {
        leading: replica.led_at(),
        last_renewal,
        release: Some(Box::new(move || release.begin_stop())),
        crash: Box::new(move || crash.crash()),
        stopped: async move { replica.join().await }.boxed(),
    })
}

/// A lock that passes every call through and times the writes.
#[derive(Debug)]
pub struct Timed {
    inner: Box<dyn LeaseLock>,
    /// End of the last successful create or update.
    pub last_success: LastRenewal,
    /// Durations of successful updates by a holder (renewals and acquisitions).
    pub updates: Arc<Mutex<Samples>>,
}

impl Timed {
    pub fn new(inner: Box<dyn LeaseLock>) -> Self {
        Self {
            inner,
            last_success: Arc::default(),
            updates: Arc::default(),
        }
    }
}

#[async_trait]
impl LeaseLock for Timed {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.inner.get().await
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        let r = self.inner.create(record).await;
        if r.is_ok() {
            *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        r
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        let t0 = Instant::now();
        let r = self.inner.update(record, expected).await;
        let t1 = Instant::now();
        if r.is_ok() && !record.is_released() {
            *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) = Some(t1);
            self.updates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t1 - t0);
        }
        r
    }

    fn watch(&self) -> Option<WatchStream> {
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

/// Renew latency: the elector's renewals on one election against raw `update` calls on
/// another, at the same rate and at the same time, on the same backend.
pub struct RenewLatency {
    pub raw: Samples,
    pub renew: Samples,
}

/// Measures [`RenewLatency`] for `window` with renewals every `period`.
pub async fn renew_latency(
    make_lock: &MakeLock,
    prefix: &str,
    period: Duration,
    window: Duration,
) -> Result<RenewLatency, String> {
    let timings = Timings {
        lease: period * 20,
        renew: period * 10,
        retry: period,
    };
    let ours = Ours {
        make_lock: make_lock.clone(),
        timings,
    };
    let lock = make_lock(format!("{prefix}-elector")).await?;
    let timed = Timed::new(lock);
    let updates = timed.updates.clone();
    let last = timed.last_success.clone();
    let mut replica = spawn_elector(
        Box::new(timed),
        ours.config(&format!("{prefix}-elector"), "renewer"),
        last,
    )?;

    // The raw side: the same write a renewal makes, straight to the lock.
    let raw_lock = make_lock(format!("{prefix}-raw")).await?;
    let now = jiff::Timestamp::now();
    let mut record = LeaderElectionRecord {
        holder_identity: "raw".into(),
        lease_duration_seconds: timings.lease.as_secs().max(1) as i32,
        acquire_time: Some(now),
        renew_time: Some(now),
        ..Default::default()
    };
    let mut version = match raw_lock.get().await.map_err(|e| e.to_string())? {
        Some(v) => v.version,
        None => raw_lock.create(&record).await.map_err(|e| e.to_string())?,
    };
    let mut raw = Samples::new();
    let end = Instant::now() + window;
    let mut next = Instant::now();
    while Instant::now() < end {
        next += period;
        tokio::time::sleep_until(next).await;
        record.renew_time = Some(jiff::Timestamp::now());
        let t0 = Instant::now();
        version = raw_lock
            .update(&record, &version)
            .await
            .map_err(|e| e.to_string())?;
        raw.push(t0.elapsed());
    }
    if replica.leading.borrow().is_none() {
        return Err("the elector never led".into());
    }
    if let Some(release) = replica.release.take() {
        release();
    }
    replica.stopped.await;
    let mut renew = updates.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The first update may be the acquisition of an existing record; keep renewals.
    renew.drop_first();
    Ok(RenewLatency { raw, renew })
}
