//! The sharded elector: one owner per shard under crashes, stalls, joins and leaves
//! (the test kit's checker, one per shard), balance across replicas, and the same on
//! real etcd and on the test kit's Kubernetes API server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaderelection::{Config, LeaseLock, MemoryStore, ShardedElector};
use leaderelection_testkit::checker::Checker;
use leaderelection_testkit::faults::{Faults, FaultyLock};
use leaderelection_testkit::replica::{handover_gaps, Cut, Link, Ownership, Work};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::{sleep, Instant};

/// Lease 3s, renew deadline 2s, retry 0.5s.
fn timing(identity: &str) -> Config {
    Config::new("jobs")
        .identity(identity)
        .lease_duration(Duration::from_secs(3))
        .renew_deadline(Duration::from_secs(2))
        .retry_period(Duration::from_millis(500))
}

/// One checker per shard.
fn checkers(shards: u32) -> Arc<Vec<Checker>> {
    Arc::new((0..shards).map(|_| Checker::new()).collect())
}

/// A replica: a sharded elector whose work of shard `s` reports to `checkers[s]`.
type Replica = leaderelection_testkit::replica::Replica<ShardedElector>;

/// The switches of every lock a sharded replica opened: cutting it off makes all of
/// them unavailable, those opened later too.
#[derive(Debug, Default)]
struct ShardLinks {
    down: AtomicBool,
    faults: Mutex<Vec<Faults>>,
}

impl Cut for ShardLinks {
    fn cut(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        for f in self.faults.lock().unwrap().iter() {
            f.set_unavailable(down);
        }
    }
    fn delay(&self, by: Duration) {
        for f in self.faults.lock().unwrap().iter() {
            f.set_latency(by);
        }
    }
}

fn start_with<L: LeaseLock>(
    config: Config,
    shards: u32,
    checkers: &Arc<Vec<Checker>>,
    locks: impl Fn(&str) -> L + Send + Sync + 'static,
) -> Replica {
    start_working(config, shards, checkers, locks, Work::polite())
}

fn start_working<L: LeaseLock>(
    config: Config,
    shards: u32,
    checkers: &Arc<Vec<Checker>>,
    locks: impl Fn(&str) -> L + Send + Sync + 'static,
    work: Work,
) -> Replica {
    let links = Arc::new(ShardLinks::default());
    let factory = {
        let links = links.clone();
        move |name: &str| {
            let lock = FaultyLock::new(locks(name));
            let f = lock.faults();
            f.set_unavailable(links.down.load(Ordering::SeqCst));
            links.faults.lock().unwrap().push(f);
            Box::new(lock) as Box<dyn LeaseLock>
        }
    };
    let (id, tick) = (config.identity.clone(), config.retry_period / 4);
    let elector = ShardedElector::new(config, shards, factory).expect("valid config");
    let link = Link::other(links);
    Replica::spawn_sharded(id, elector, link, checkers, work, tick)
}

fn start(store: &MemoryStore, id: &str, shards: u32, checkers: &Arc<Vec<Checker>>) -> Replica {
    let store = store.clone();
    start_with(timing(id), shards, checkers, move |name| store.lock(name))
}

async fn settle(replicas: &[&Replica], shards: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !Ownership::of(replicas.iter().copied(), shards).is_balanced() {
        assert!(
            Instant::now() < deadline,
            "not balanced within {limit:?}: {:?}",
            Ownership::of(replicas.iter().copied(), shards)
        );
        sleep(Duration::from_millis(100)).await;
    }
}

fn assert_safe(checkers: &[Checker]) {
    for (shard, c) in checkers.iter().enumerate() {
        c.close();
        let report = c.report();
        assert!(report.is_safe(), "shard {shard}: {}", report.explain());
    }
}

async fn stop(replicas: Vec<Replica>) {
    for r in &replicas {
        r.begin_stop();
    }
    for r in replicas {
        r.join().await;
    }
}

#[tokio::test(start_paused = true)]
async fn sixty_four_shards_over_four_replicas_settle_within_one_shard() {
    let (store, checkers) = (MemoryStore::new(), checkers(64));
    let replicas: Vec<Replica> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| start(&store, id, 64, &checkers))
        .collect();
    let refs: Vec<&Replica> = replicas.iter().collect();
    settle(&refs, 64, Duration::from_secs(60)).await;
    // And it stays settled: no shard moves once balanced.
    let terms: usize = checkers.iter().map(|c| c.intervals().len()).sum();
    sleep(Duration::from_secs(60)).await;
    assert!(Ownership::of(refs.iter().copied(), 64).is_balanced());
    assert_eq!(
        terms,
        checkers.iter().map(|c| c.intervals().len()).sum::<usize>()
    );
    assert!(replicas.iter().all(|r| r.elector.members().len() == 4));
    stop(replicas).await;
    assert_safe(&checkers);
}

#[tokio::test(start_paused = true)]
async fn a_killed_replicas_shards_are_owned_again_after_the_lease() {
    let (store, checkers) = (MemoryStore::new(), checkers(64));
    let mut replicas: Vec<Replica> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| start(&store, id, 64, &checkers))
        .collect();
    settle(
        &replicas.iter().collect::<Vec<_>>(),
        64,
        Duration::from_secs(60),
    )
    .await;
    let victim = replicas.remove(1);
    let orphaned = victim.elector.owned();
    victim.crash();
    victim.join().await;
    let killed_at = Instant::now();
    // Membership notices after a lease, the new owners' electors wait a lease of
    // their own from when they first saw each record, and then take over.
    settle(
        &replicas.iter().collect::<Vec<_>>(),
        64,
        Duration::from_secs(20),
    )
    .await;
    for &shard in &orphaned {
        let taken = checkers[shard as usize]
            .intervals()
            .iter()
            .any(|t| t.start > killed_at && t.identity != "b");
        assert!(taken, "shard {shard} not taken over");
    }
    assert!(replicas.iter().all(|r| r.elector.members().len() == 3));
    stop(replicas).await;
    assert_safe(&checkers);
}

#[tokio::test(start_paused = true)]
async fn after_a_join_balance_returns_with_released_handovers() {
    let (store, checkers) = (MemoryStore::new(), checkers(64));
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| start(&store, id, 64, &checkers))
        .collect();
    settle(
        &replicas.iter().collect::<Vec<_>>(),
        64,
        Duration::from_secs(60),
    )
    .await;
    let joined_at = Instant::now();
    replicas.push(start(&store, "d", 64, &checkers));
    settle(
        &replicas.iter().collect::<Vec<_>>(),
        64,
        Duration::from_secs(10),
    )
    .await;
    assert!(!replicas[3].elector.owned().is_empty());
    // Every shard that moved was released by its old owner and taken at once, not
    // left to expire.
    let gaps = handover_gaps(&checkers, joined_at);
    assert!(!gaps.is_empty());
    let worst = gaps.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_millis(100),
        "a shard was leaderless {worst:?}"
    );
    stop(replicas).await;
    assert_safe(&checkers);
}

#[tokio::test(start_paused = true)]
async fn a_graceful_leave_hands_every_shard_over() {
    let (store, checkers) = (MemoryStore::new(), checkers(12));
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| start(&store, id, 12, &checkers))
        .collect();
    settle(
        &replicas.iter().collect::<Vec<_>>(),
        12,
        Duration::from_secs(60),
    )
    .await;
    let left_at = Instant::now();
    let leaver = replicas.remove(0);
    leaver.begin_stop();
    leaver.join().await;
    assert!(leaver.elector.owned().is_empty());
    settle(
        &replicas.iter().collect::<Vec<_>>(),
        12,
        Duration::from_secs(10),
    )
    .await;
    let worst = handover_gaps(&checkers, left_at)
        .into_iter()
        .max()
        .unwrap_or_default();
    assert!(
        worst < Duration::from_millis(100),
        "a shard was leaderless {worst:?}"
    );
    stop(replicas).await;
    assert_safe(&checkers);
}

/// A shard handed over and assigned back while its old term's work still drains: the
/// new elector of the same identity waits for the old one to end, or it would take the
/// record naming it at once and run beside the draining term.
#[tokio::test(start_paused = true)]
async fn a_shard_assigned_back_while_its_work_drains_waits_for_the_old_term() {
    let store = MemoryStore::new();
    let checkers = checkers(2);
    let drain = Work::polite().stopping_in(Duration::from_secs(5));
    let locks = {
        let store = store.clone();
        move |name: &str| store.lock(name)
    };
    let a = start_working(timing("a"), 2, &checkers, locks.clone(), drain);
    settle(&[&a], 2, Duration::from_secs(10)).await;
    // b joins: a hands one shard over after a retry period and its work drains...
    let b = start_working(timing("b"), 2, &checkers, locks, drain);
    sleep(Duration::from_secs(2)).await;
    // ...and b leaves before the drain ends: the shard is assigned back to a.
    b.stop().await;
    settle(&[&a], 2, Duration::from_secs(30)).await;
    sleep(Duration::from_secs(10)).await;
    stop(vec![a]).await;
    assert_safe(&checkers);
    let terms: usize = checkers.iter().map(|c| c.intervals().len()).sum();
    assert!(terms >= 3, "the shard never moved: {terms} terms");
}

/// Crashes, stalls (the replica's backend unreachable), joins and leaves at random,
/// over many seeds: never two owners of one shard, tokens growing per shard.
#[tokio::test(start_paused = true)]
async fn random_crashes_stalls_joins_and_leaves_keep_one_owner_per_shard() {
    const SHARDS: u32 = 16;
    let (mut total_terms, mut total_events) = (0, 0);
    for seed in 0..24u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (store, checkers) = (MemoryStore::new(), checkers(SHARDS));
        let mut next_id = 0;
        let mut new_id = || {
            next_id += 1;
            format!("r{next_id}")
        };
        let mut replicas: Vec<Replica> = (0..3)
            .map(|_| start(&store, &new_id(), SHARDS, &checkers))
            .collect();
        let mut events = Vec::new();
        for _ in 0..12 {
            sleep(Duration::from_millis(rng.random_range(200..6_000))).await;
            let pick = rng.random_range(0..replicas.len().max(1));
            match rng.random_range(0..5) {
                0 if replicas.len() > 1 => {
                    let r = replicas.swap_remove(pick);
                    r.crash();
                    r.join().await;
                    events.push("crash");
                }
                1 if !replicas.is_empty() => {
                    let down = !replicas[pick].link.is_cut();
                    replicas[pick].link.cut(down);
                    events.push(if down { "stall" } else { "resume" });
                }
                2 if replicas.len() > 1 => {
                    let r = replicas.swap_remove(pick);
                    r.begin_stop();
                    r.join().await;
                    events.push("leave");
                }
                _ if replicas.len() < 6 => {
                    replicas.push(start(&store, &new_id(), SHARDS, &checkers));
                    events.push("join");
                }
                _ => {}
            }
        }
        // Everyone healthy again: the shards settle, one owner each.
        for r in &replicas {
            r.link.cut(false);
        }
        settle(
            &replicas.iter().collect::<Vec<_>>(),
            SHARDS,
            Duration::from_secs(60),
        )
        .await;
        stop(replicas).await;
        let terms: usize = checkers.iter().map(|c| c.intervals().len()).sum();
        assert!(terms >= SHARDS as usize, "seed {seed}: only {terms} terms");
        total_terms += terms;
        total_events += events.len();
        for (shard, c) in checkers.iter().enumerate() {
            c.close();
            let report = c.report();
            assert!(
                report.is_safe(),
                "seed {seed}, events {events:?}, shard {shard}: {}",
                report.explain()
            );
        }
    }
    // The faults moved shards around: far more terms than one per shard per seed.
    assert!(
        total_terms > 24 * SHARDS as usize * 2,
        "{total_terms} terms"
    );
    assert!(total_events > 24 * 8, "{total_events} events");
}

/// The members record lists the live replicas; a leaver removes itself.
#[tokio::test(start_paused = true)]
async fn the_members_record_tracks_live_replicas() {
    let (store, checkers) = (MemoryStore::new(), checkers(4));
    let a = start(&store, "a", 4, &checkers);
    let b = start(&store, "b", 4, &checkers);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(a.elector.members(), ["a", "b"]);
    let raw = store.get_raw("jobs-members").expect("members record");
    assert!(
        raw.contains("\\\"a\\\"") && raw.contains("\\\"b\\\""),
        "{raw}"
    );
    b.begin_stop();
    b.join().await;
    sleep(Duration::from_secs(2)).await;
    assert_eq!(a.elector.members(), ["a"]);
    let counts: BTreeMap<&str, usize> = [("a", a.elector.owned().len())].into_iter().collect();
    assert_eq!(counts["a"], 4);
    stop(vec![a]).await;
    assert_safe(&checkers);
}

// ---- real backends -------------------------------------------------------------

/// Lease 2s, renew deadline 1.5s, retry 0.3s: short, with room for a loaded machine.
#[cfg(any(feature = "etcd", feature = "kube"))]
fn real_timing(identity: &str) -> Config {
    Config::new("jobs")
        .identity(identity)
        .lease_duration(Duration::from_secs(2))
        .renew_deadline(Duration::from_millis(1500))
        .retry_period(Duration::from_millis(300))
}

/// Three replicas over six shards: they settle, one is killed, the survivors own
/// every shard again, and the checkers find one owner per shard throughout.
#[cfg(any(feature = "etcd", feature = "kube"))]
async fn settle_kill_settle<L: LeaseLock>(
    locks: impl Fn(&str) -> L + Clone + Send + Sync + 'static,
) {
    const SHARDS: u32 = 6;
    let checkers = checkers(SHARDS);
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| start_with(real_timing(id), SHARDS, &checkers, locks.clone()))
        .collect();
    settle(
        &replicas.iter().collect::<Vec<_>>(),
        SHARDS,
        Duration::from_secs(30),
    )
    .await;
    let victim = replicas.remove(0);
    victim.crash();
    victim.join().await;
    settle(
        &replicas.iter().collect::<Vec<_>>(),
        SHARDS,
        Duration::from_secs(30),
    )
    .await;
    stop(replicas).await;
    assert_safe(&checkers);
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_killed_replicas_shards_move_with_one_owner_each() {
    use leaderelection::lock::etcd::{connect, EtcdLock, EtcdOptions};
    use leaderelection_testkit::etcd::EtcdCluster;

    let cluster = EtcdCluster::start(1).expect("start etcd (is etcd-server installed?)");
    let client = connect(&cluster.endpoints(), &EtcdOptions::new())
        .await
        .expect("connect to etcd");
    settle_kill_settle(move |name: &str| EtcdLock::from_client(client.clone(), name)).await;
}

#[cfg(feature = "kube")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_api_server_a_killed_replicas_shards_move_with_one_owner_each() {
    use leaderelection::lock::kube::KubeLeaseLock;
    use leaderelection_testkit::apiserver::ApiServer;

    let server = ApiServer::start().await.expect("start the API test server");
    let client = server.client();
    settle_kill_settle(move |name: &str| KubeLeaseLock::new(client.clone(), "default", name)).await;
}
