//! Election scenarios over the Kubernetes locks, shared by `tests/kube.rs` (the
//! crate's API test server) and `tests/kind.rs` (a real cluster).
#![allow(dead_code)]

use std::sync::Once;
use std::time::Duration;

use leaderelection::lock::kube::{KubeLock, ResourceLockKind};
use leaderelection::{Config, ElectionEvent, LeaseLock};
use leaderelection_testkit::checker::Checker;
use leaderelection_testkit::replica::{wait_until, Link, Replica, Work};
use tokio::time::{sleep, timeout, Instant};

/// Short timings, still inside client-go's rules: lease 3s, renew deadline 2s, retry 0.5s.
pub const LEASE: Duration = Duration::from_secs(3);
pub const RENEW: Duration = Duration::from_secs(2);
pub const RETRY: Duration = Duration::from_millis(500);

/// How long any wait for a leader may take on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The longest a whole test may take: past it the test fails, naming itself, instead
/// of holding up the suite.
pub const TEST_LIMIT: Duration = Duration::from_secs(240);

/// Runs a test's body within [`TEST_LIMIT`].
pub async fn bounded(test: &str, body: impl std::future::Future<Output = ()>) {
    if timeout(TEST_LIMIT, body).await.is_err() {
        panic!("{test} did not finish within {TEST_LIMIT:?}: something hangs");
    }
}

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "leaderelection=info".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Where the scenarios run: a client, a namespace, and a prefix that keeps the lock
/// names of one run apart from those of others.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
    pub prefix: String,
}

impl Cluster {
    pub fn lock(&self, kind: ResourceLockKind, name: &str) -> KubeLock {
        KubeLock::new(kind, self.client.clone(), &self.namespace, name)
    }

    /// A lock name unique to this run.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }
}

pub fn config(identity: &str) -> Config {
    Config::new("kube-test")
        .identity(identity)
        .lease_duration(LEASE)
        .renew_deadline(RENEW)
        .retry_period(RETRY)
}

/// A replica on `lock` whose work records its terms in `checker`.
pub fn replica(lock: impl LeaseLock, config: Config, checker: &Checker) -> Replica {
    Replica::new(lock, Link::direct(), config, checker, Work::polite())
}

/// Waits until `cond` holds, checking every 10ms, or panics after [`PATIENCE`].
pub async fn wait_for(what: &str, cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    wait_until(what, PATIENCE, cond).await;
    start.elapsed()
}

/// The index of the one leader among `replicas`, waiting for there to be one.
pub async fn wait_for_leader(replicas: &[&Replica]) -> usize {
    wait_for("a leader", || replicas.iter().any(|r| r.is_leader())).await;
    let leaders: Vec<usize> = (0..replicas.len())
        .filter(|i| replicas[*i].is_leader())
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader");
    leaders[0]
}

/// Watches `checker` for `d` and fails if two replicas' work ever overlapped.
pub async fn never_two_leaders_for(checker: &Checker, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        checker.report().assert_safe();
        sleep(Duration::from_millis(20)).await;
    }
    checker.report().assert_safe();
}

/// The identities of the terms so far, in order.
pub fn leaders(checker: &Checker) -> Vec<String> {
    checker
        .intervals()
        .into_iter()
        .map(|t| t.identity)
        .collect()
}

// ---- the core's election scenarios ------------------------------------------

/// A lone candidate leads, writes its identity into the object, and releases it on
/// shutdown.
pub async fn lone_candidate_leads(cluster: &Cluster, kind: ResourceLockKind) {
    let name = cluster.name(&format!("{kind}-lone"));
    let checker = Checker::new();
    let a = replica(cluster.lock(kind, &name), config("a"), &checker);
    let cold = wait_for("the lone candidate to lead", || a.is_leader()).await;
    // No history and no proof that nobody holds it: one lease (3s) before it leads.
    eprintln!("{kind}: cold start {cold:?} (lease {LEASE:?})");
    assert!(
        cold + Duration::from_millis(50) >= LEASE,
        "{kind}: led after {cold:?}"
    );
    let stored = cluster
        .lock(kind, &name)
        .get()
        .await
        .unwrap()
        .expect("the lock object exists");
    assert_eq!(stored.record.holder_identity, "a", "{kind}");
    assert_eq!(stored.record.lease_duration_seconds, 3);
    assert!(stored.record.renew_time.is_some());
    // client-go's callbacks, in order: OnNewLeader(a), OnStartedLeading.
    let first = timeout(PATIENCE, a.next_event()).await.expect("an event");
    assert_eq!(
        first,
        Some(ElectionEvent::NewLeader(Some("a".into()))),
        "{kind}"
    );
    let second = timeout(PATIENCE, a.next_event()).await.expect("an event");
    assert!(
        matches!(second, Some(ElectionEvent::StartedLeading { .. })),
        "{kind}: {second:?}"
    );
    a.stop().await;
    let stored = cluster.lock(kind, &name).get().await.unwrap().unwrap();
    assert!(
        stored.record.is_released(),
        "released on shutdown: {:?}",
        stored.record
    );
    checker.report().assert_safe();
}

/// Of two candidates exactly one leads, and stays the only one.
pub async fn two_candidates_one_leads(cluster: &Cluster, kind: ResourceLockKind) {
    let name = cluster.name(&format!("{kind}-two"));
    let checker = Checker::new();
    let a = replica(cluster.lock(kind, &name), config("a"), &checker);
    let b = replica(cluster.lock(kind, &name), config("b"), &checker);
    let leader = wait_for_leader(&[&a, &b]).await;
    // Two lease durations: the leader renews, the other never takes over.
    never_two_leaders_for(&checker, 2 * LEASE).await;
    assert_eq!(
        wait_for_leader(&[&a, &b]).await,
        leader,
        "{kind}: the leader kept its lease"
    );
    let who = [&a, &b][leader].id.clone();
    wait_for("the standby to know the leader", || {
        b.elector.leader().as_deref() == Some(&who)
    })
    .await;
    assert_eq!(leaders(&checker), vec![who]);
    a.stop().await;
    b.stop().await;
}

/// A leader that releases its lease on shutdown is replaced at once, not after the
/// lease runs out. Returns the takeover time.
pub async fn release_gives_fast_takeover(cluster: &Cluster, kind: ResourceLockKind) -> Duration {
    let name = cluster.name(&format!("{kind}-release"));
    // A long lease, so that a takeover on expiry could not pass for a fast one.
    let long = |id: &str| {
        Config::new("kube-test")
            .identity(id)
            .lease_duration(Duration::from_secs(20))
            .renew_deadline(Duration::from_secs(15))
            .retry_period(Duration::from_secs(1))
    };
    let checker = Checker::new();
    let a = replica(cluster.lock(kind, &name), long("a"), &checker);
    wait_for("a to lead", || a.is_leader()).await;
    let b = replica(cluster.lock(kind, &name), long("b"), &checker);
    wait_for("b to see a", || b.elector.leader().as_deref() == Some("a")).await;
    let start = Instant::now();
    a.stop().await;
    wait_for("b to take over", || b.is_leader()).await;
    let takeover = start.elapsed();
    eprintln!("{kind}: takeover {takeover:?} after the leader released");
    assert!(
        takeover < Duration::from_secs(10),
        "{kind}: takeover after release took {takeover:?}, as if the 20s lease had to run out"
    );
    checker.report().assert_safe();
    b.stop().await;
    takeover
}

/// A leader that stops without releasing is replaced once its lease has run out on
/// the standby's clock, and not before.
pub async fn crashed_leader_is_replaced_after_its_lease(cluster: &Cluster, kind: ResourceLockKind) {
    let name = cluster.name(&format!("{kind}-crash"));
    let checker = Checker::new();
    let a = replica(cluster.lock(kind, &name), config("a"), &checker);
    wait_for("a to lead", || a.is_leader()).await;
    let b = replica(cluster.lock(kind, &name), config("b"), &checker);
    wait_for("b to see a", || b.elector.leader().as_deref() == Some("a")).await;
    let start = Instant::now();
    a.crash();
    wait_for("b to take over", || b.is_leader()).await;
    let waited = start.elapsed();
    eprintln!("{kind}: takeover {waited:?} after the leader crashed (lease {LEASE:?})");
    // a renewed at most a retry period before it crashed.
    assert!(
        waited + RETRY + Duration::from_millis(200) >= LEASE,
        "{kind}: b took over {waited:?} after the crash, before a's {LEASE:?} lease ran out"
    );
    assert!(
        waited < LEASE + Duration::from_secs(10),
        "{kind}: takeover took {waited:?}"
    );
    let stored = cluster.lock(kind, &name).get().await.unwrap().unwrap();
    assert_eq!(stored.record.holder_identity, "b");
    assert_eq!(
        stored.record.leader_transitions, 1,
        "{kind}: one change of holder"
    );
    checker.report().assert_safe();
    b.stop().await;
}

/// Every scenario above for one kind of lock.
pub async fn all_scenarios(cluster: &Cluster, kind: ResourceLockKind) {
    lone_candidate_leads(cluster, kind).await;
    two_candidates_one_leads(cluster, kind).await;
    release_gives_fast_takeover(cluster, kind).await;
    crashed_leader_is_replaced_after_its_lease(cluster, kind).await;
}

// ---- migration ----------------------------------------------------------------

/// Rolling upgrades `endpoints` -> `endpointsleases` -> `leases` (or the ConfigMap
/// path), one replica at a time, leaders both stopped and crashed along the way:
/// at every moment at most one replica's work runs, and in the end a `leases`
/// replica leads with the Lease holding its identity.
pub async fn migration_never_has_two_leaders(cluster: &Cluster, via_configmaps: bool) {
    let (old, multi) = if via_configmaps {
        (
            ResourceLockKind::ConfigMaps,
            ResourceLockKind::ConfigMapsLeases,
        )
    } else {
        (
            ResourceLockKind::Endpoints,
            ResourceLockKind::EndpointsLeases,
        )
    };
    let name = cluster.name(&format!("migrate-{old}"));
    let checker = Checker::new();
    let start = |kind: ResourceLockKind, id: String| {
        replica(cluster.lock(kind, &name), config(&id), &checker)
    };

    let mut replicas: Vec<Replica> = (0..3).map(|i| start(old, format!("{old}-{i}"))).collect();
    wait_for("a leader on the old lock", || {
        replicas.iter().any(Replica::is_leader)
    })
    .await;

    for (step, kind) in [multi, ResourceLockKind::Leases].into_iter().enumerate() {
        for i in 0..3 {
            // Replace the leader first on the first replacement of each step, the way a
            // rolling update often hits it, and crash it on the second step.
            let victim = if i == 0 {
                replicas.iter().position(Replica::is_leader).unwrap_or(0)
            } else {
                replicas
                    .iter()
                    .position(|r| !r.id.starts_with(kind.name()) && !r.is_leader())
                    .or_else(|| replicas.iter().position(|r| !r.id.starts_with(kind.name())))
                    .expect("a replica left to replace")
            };
            let old_replica = replicas.remove(victim);
            if step == 1 && i == 0 {
                old_replica.crash();
            } else {
                old_replica.stop().await;
            }
            replicas.push(start(kind, format!("{kind}-{i}")));
            never_two_leaders_for(&checker, Duration::from_millis(500)).await;
        }
        wait_for("a leader after the step", || {
            replicas.iter().any(Replica::is_leader)
        })
        .await;
        never_two_leaders_for(&checker, LEASE).await;
    }

    let leader = replicas.iter().find(|r| r.is_leader()).expect("a leader");
    assert!(leader.id.starts_with("leases-"), "{}", leader.id);
    let lease = cluster
        .lock(ResourceLockKind::Leases, &name)
        .get()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.record.holder_identity, leader.id);
    checker.report().assert_safe();
    for r in replicas {
        r.stop().await;
    }
    checker.report().assert_safe();
}
