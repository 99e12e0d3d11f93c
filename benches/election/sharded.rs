//! The sharded elector on the memory lock: time to settle, to recover from a killed
//! replica and to rebalance after a join; the leaderless gap of moved shards; lock
//! requests per shard per minute; CPU and memory per shard with 1,000 shards over 10
//! replicas in this process. Measured, never asserted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaderelection::{Config, LeaseLock, MemoryStore, ShardedElector};
use leaderelection_testkit::checker::Checker;
use leaderelection_testkit::faults::{Faults, FaultyLock};
use leaderelection_testkit::replica::{handover_gaps, Link, Ownership, Work};
use tokio::time::{sleep, Instant};

use crate::procstat;
use crate::Plan;
use leaderelection_bench_driver::stats::{fmt_secs, Table};

/// A sharded replica: the test kit's harness, its work of shard `s` judged by the
/// cluster's `checkers[s]`.
type Replica = leaderelection_testkit::replica::Replica<ShardedElector>;

struct Cluster {
    store: MemoryStore,
    shards: u32,
    config: Config,
    /// One checker per shard: the terms of different shards may overlap.
    checkers: Vec<Checker>,
    faults: Arc<Mutex<Vec<Faults>>>,
    replicas: Vec<Replica>,
}

impl Cluster {
    fn new(shards: u32, config: Config) -> Self {
        Self {
            store: MemoryStore::new(),
            shards,
            config,
            checkers: (0..shards).map(|_| Checker::new()).collect(),
            faults: Arc::default(),
            replicas: Vec::new(),
        }
    }

    fn join(&mut self, identity: &str) {
        let (store, faults) = (self.store.clone(), self.faults.clone());
        let config = self.config.clone().identity(identity);
        let tick = config.retry_period;
        let elector = ShardedElector::new(config, self.shards, move |name: &str| {
            let lock = FaultyLock::new(store.lock(name));
            faults.lock().unwrap().push(lock.faults());
            Box::new(lock) as Box<dyn LeaseLock>
        })
        .expect("valid config");
        // The work acts once and holds its term until lost: the figures are the
        // elector's, not a workload's.
        let work = Work::polite().every(Duration::from_secs(3600));
        let replica = Replica::spawn_sharded(
            identity,
            elector,
            Link::direct(),
            &self.checkers,
            work,
            tick,
        );
        self.replicas.push(replica);
    }

    fn balanced(&self) -> bool {
        Ownership::of(&self.replicas, self.shards).is_balanced()
    }

    /// Seconds until balanced, or `None` past `limit`.
    async fn settle(&self, limit: Duration) -> Option<f64> {
        let start = Instant::now();
        while !self.balanced() {
            if start.elapsed() > limit {
                return None;
            }
            sleep(Duration::from_millis(10)).await;
        }
        Some(start.elapsed().as_secs_f64())
    }

    /// The worst gap between consecutive terms of a shard that began after `after`.
    fn worst_gap(&self, after: Instant) -> Duration {
        let gaps = handover_gaps(&self.checkers, after);
        gaps.into_iter().max().unwrap_or_default()
    }

    fn requests(&self) -> u64 {
        self.faults
            .lock()
            .unwrap()
            .iter()
            .map(Faults::requests)
            .sum()
    }

    async fn stop(self) {
        for r in &self.replicas {
            r.begin_stop();
        }
        for r in self.replicas {
            r.join().await;
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "did not settle".into(), fmt_secs)
}

/// Lease 2s, renew deadline 1.5s, retry 0.3s.
fn short() -> Config {
    Config::new("bench")
        .lease_duration(Duration::from_secs(2))
        .renew_deadline(Duration::from_millis(1500))
        .retry_period(Duration::from_millis(300))
}

pub async fn section(plan: &Plan) -> String {
    let mut out = String::new();

    // Rebalance: 64 shards over 4 replicas, then a kill, then a join.
    let mut c = Cluster::new(64, short());
    for id in ["a", "b", "c", "d"] {
        c.join(id);
    }
    let limit = Duration::from_secs(60);
    let start = c.settle(limit).await;
    let victim = c.replicas.remove(0);
    victim.crash();
    victim.join().await;
    let kill = c.settle(limit).await;
    let joined_at = Instant::now();
    c.join("e");
    let join = c.settle(limit).await;
    let join_gap = c.worst_gap(joined_at);
    let left_at = Instant::now();
    let leaver = c.replicas.remove(0);
    leaver.begin_stop();
    leaver.join().await;
    let leave = c.settle(limit).await;
    let leave_gap = c.worst_gap(left_at);
    c.stop().await;
    let mut t = Table::new(&[
        "event (64 shards, 4 replicas)",
        "until balanced",
        "worst gap of a moved shard",
    ]);
    t.row(vec!["start".into(), opt(start), "".into()]);
    t.row(vec![
        "one killed (lease 2s)".into(),
        opt(kill),
        "(expiry)".into(),
    ]);
    t.row(vec![
        "one joins".into(),
        opt(join),
        fmt_secs(join_gap.as_secs_f64()),
    ]);
    t.row(vec![
        "one leaves (graceful)".into(),
        opt(leave),
        fmt_secs(leave_gap.as_secs_f64()),
    ]);
    out.push_str(&format!(
        "### Sharded elector on the memory lock: rebalancing (lease 2s, renew 1.5s, retry 0.3s)\n\n{}\n",
        t.render()
    ));

    // Load and cost at the default timings.
    let window = plan.load_window.min(Duration::from_secs(30));
    let mut t = Table::new(&[
        "shards / replicas",
        "settled in",
        "requests per shard per minute",
        "CPU per shard",
        "memory per shard",
    ]);
    for (shards, replicas) in [(64u32, 4usize), (1000, 10)] {
        let rss_before = procstat::rss();
        let mut c = Cluster::new(shards, Config::new("bench"));
        for i in 0..replicas {
            c.join(&format!("replica-{i}"));
        }
        let settled = c.settle(Duration::from_secs(120)).await;
        let (r0, cpu0, t0) = (c.requests(), procstat::cpu_time(), Instant::now());
        sleep(window).await;
        let (r1, cpu1, dt) = (c.requests(), procstat::cpu_time(), t0.elapsed());
        let rss = procstat::rss().saturating_sub(rss_before);
        let per_min = (r1 - r0) as f64 / shards as f64 / dt.as_secs_f64() * 60.0;
        let cores = (cpu1 - cpu0).as_secs_f64() / dt.as_secs_f64();
        t.row(vec![
            format!("{shards} / {replicas}"),
            opt(settled),
            format!("{per_min:.1}"),
            format!("{:.1} µs CPU/s", cores / shards as f64 * 1e6),
            format!("{:.1} KiB", rss as f64 / shards as f64 / 1024.0),
        ]);
        c.stop().await;
    }
    out.push_str(&format!(
        "### Sharded elector on the memory lock: load and cost (defaults: lease 15s, renew 10s, retry 2s; a single election's leader makes 30 requests per minute)\n\n{}\n",
        t.render()
    ));
    out
}
