//! The etcd backends against real etcd processes: the lock, its native lease mode,
//! etcd's own election protocol (with `etcdctl elect`), member and process failures,
//! TLS and authentication.
//!
//! Leader processes that are killed or frozen are this test binary itself, re-run as
//! the `child_candidate` test with `LE_CHILD_*` variables set; they report on stdout.
#![cfg(feature = "etcd")]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use leaderelection::lock::etcd::etcd_client::{Client, GetOptions};
use leaderelection::lock::etcd::{connect, EtcdLock, EtcdOptions};
use leaderelection::{
    Config, ElectionEvent, EtcdElection, LeaderElectionRecord, LeaderElector, LeaseLock, LockError,
    LockEvent, Version,
};
#[cfg(feature = "etcd-tls")]
use leaderelection_testkit::etcd::TestCerts;
use leaderelection_testkit::etcd::{signal_pid, EtcdCluster, EtcdClusterOptions};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

// ---- helpers -----------------------------------------------------------------

/// Logs with `RUST_LOG=leaderelection=debug`.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn start(size: usize) -> EtcdCluster {
    init_logs();
    EtcdCluster::start(size).expect("start etcd (is etcd-server installed?)")
}

fn record(holder: &str) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder_identity: holder.into(),
        lease_duration_seconds: 3,
        ..Default::default()
    }
}

/// Short timings: lease 3s, renew deadline 2s, retry 0.5s.
fn fast(identity: &str) -> Config {
    timing(identity, 3000, 2000, 500)
}

fn timing(identity: &str, lease_ms: u64, renew_ms: u64, retry_ms: u64) -> Config {
    Config::new("test")
        .identity(identity)
        .lease_duration(Duration::from_millis(lease_ms))
        .renew_deadline(Duration::from_millis(renew_ms))
        .retry_period(Duration::from_millis(retry_ms))
}

/// A raw client on the cluster, for looking behind the lock's back.
async fn raw(cluster: &EtcdCluster) -> Client {
    Client::connect(cluster.endpoints(), None)
        .await
        .expect("raw etcd client")
}

/// The mod revision of `key`, read through the members other than `down` (retried:
/// etcd refuses reads while it elects a new raft leader).
async fn mod_revision(cluster: &EtcdCluster, down: usize, key: &str) -> i64 {
    let live: Vec<String> = (0..cluster.len())
        .filter(|i| *i != down)
        .map(|i| cluster.endpoint(i))
        .collect();
    let mut client = Client::connect(live, None).await.expect("raw etcd client");
    let started = Instant::now();
    loop {
        match timeout(Duration::from_secs(5), client.get(key, None)).await {
            Ok(Ok(resp)) => return resp.kvs()[0].mod_revision(),
            other => assert!(
                started.elapsed() < Duration::from_secs(20),
                "cannot read {key} through the live members: {other:?}"
            ),
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// One replica in this process: an elector (or an etcd election) running, with the
/// terms it led.
struct Replica {
    name: String,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    events: UnboundedReceiver<ElectionEvent>,
    /// (fencing token, lost) per term, in order.
    terms: Arc<Mutex<Vec<(u64, CancellationToken)>>>,
    is_leader: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Replica {
    fn elector(name: &str, lock: impl LeaseLock, config: Config) -> Self {
        let elector = LeaderElector::new(lock, config).expect("valid config");
        let events = elector.events();
        let shutdown = CancellationToken::new();
        let terms = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (elector, shutdown, terms) = (elector.clone(), shutdown.clone(), terms.clone());
            async move {
                elector
                    .run(shutdown, move |l| {
                        let terms = terms.clone();
                        async move {
                            let lost = CancellationToken::new();
                            terms
                                .lock()
                                .unwrap()
                                .push((l.fencing_token(), lost.clone()));
                            l.lost().await;
                            lost.cancel();
                        }
                    })
                    .await
            }
        });
        Self {
            name: name.into(),
            shutdown,
            task,
            events,
            terms,
            is_leader: Box::new(move || elector.is_leader()),
        }
    }

    fn election(name: &str, election: EtcdElection) -> Self {
        let events = election.events();
        let shutdown = CancellationToken::new();
        let terms = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (election, shutdown, terms) = (election.clone(), shutdown.clone(), terms.clone());
            async move {
                election
                    .run(shutdown, move |l| {
                        let terms = terms.clone();
                        async move {
                            let lost = CancellationToken::new();
                            terms
                                .lock()
                                .unwrap()
                                .push((l.fencing_token(), lost.clone()));
                            l.lost().await;
                            lost.cancel();
                        }
                    })
                    .await
            }
        });
        Self {
            name: name.into(),
            shutdown,
            task,
            events,
            terms,
            is_leader: Box::new(move || election.is_leader()),
        }
    }

    fn is_leader(&self) -> bool {
        (self.is_leader)()
    }

    fn terms(&self) -> Vec<u64> {
        self.terms.lock().unwrap().iter().map(|t| t.0).collect()
    }

    /// The lost token of the current (last) term.
    fn last_lost(&self) -> Option<CancellationToken> {
        self.terms.lock().unwrap().last().map(|t| t.1.clone())
    }

    fn drain_events(&mut self) -> Vec<ElectionEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    async fn stop(self) {
        self.shutdown.cancel();
        timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop", self.name))
            .unwrap();
    }
}

fn leaders(replicas: &[Replica]) -> Vec<&str> {
    replicas
        .iter()
        .filter(|r| r.is_leader())
        .map(|r| r.name.as_str())
        .collect()
}

/// Waits until exactly one replica leads and returns its index.
async fn one_leader(replicas: &[Replica], limit: Duration) -> usize {
    wait_until("one replica leads", limit, || leaders(replicas).len() == 1).await;
    replicas.iter().position(|r| r.is_leader()).unwrap()
}

async fn lock(cluster: &EtcdCluster, name: &str, options: EtcdOptions) -> EtcdLock {
    EtcdLock::connect(&cluster.endpoints(), options, name)
        .await
        .expect("connect the lock")
}

async fn next(w: &mut leaderelection::WatchStream) -> Option<Result<LockEvent, LockError>> {
    timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a watch event within 10s")
}

// ---- the lock ----------------------------------------------------------------

/// The lock contract suite on one cluster: keys under the lock's default prefix,
/// deleted and garbled through a raw client.
struct Etcd {
    client: Client,
    native_lease: bool,
}

#[async_trait::async_trait]
impl leaderelection_testkit::contract::Backend for Etcd {
    async fn lock(&self, name: &str) -> Box<dyn LeaseLock> {
        let lock = EtcdLock::from_client(self.client.clone(), name);
        Box::new(lock.native_lease(self.native_lease))
    }
    fn can_delete(&self) -> bool {
        true
    }
    async fn delete(&self, name: &str) {
        let key = format!("/leaderelection/{name}");
        self.client.clone().delete(key, None).await.unwrap();
    }
    fn can_corrupt(&self) -> bool {
        true
    }
    async fn corrupt(&self, name: &str) {
        let key = format!("/leaderelection/{name}");
        self.client
            .clone()
            .put(key, "{not json", None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn lock_keeps_the_contract() {
    let cluster = start(1);
    let (client, native_lease) = (raw(&cluster).await, false);
    leaderelection_testkit::contract::run_all(&Etcd {
        client,
        native_lease,
    })
    .await;
}

#[tokio::test]
async fn native_lease_lock_keeps_the_contract() {
    let cluster = start(1);
    let (client, native_lease) = (raw(&cluster).await, true);
    leaderelection_testkit::contract::run_all(&Etcd {
        client,
        native_lease,
    })
    .await;
}

#[tokio::test]
async fn lock_stores_client_go_json_at_its_key_and_mod_revision() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let lock = lock(&cluster, "basic", EtcdOptions::new()).await;
    assert_eq!(lock.key(), "/leaderelection/basic");
    assert_eq!(lock.describe(), "etcd:/leaderelection/basic");

    let v1 = lock.create(&record("a")).await.unwrap();
    let v2 = lock.update(&record("b"), &v1).await.unwrap();
    assert!(matches!(
        lock.update(&record("c"), &Version::new("not-a-revision"))
            .await,
        Err(LockError::Conflict)
    ));

    // The version is the key's mod revision; the value is client-go's JSON.
    let kv = client.get(lock.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(Version::from(kv.mod_revision() as u64), v2);
    assert_eq!(kv.value_str().unwrap(), record("b").to_json());
    assert_eq!(kv.lease(), 0, "no lease outside native lease mode");

    // Mod revisions grow cluster-wide: the fencing token of a later write is larger,
    // even after another key was written in between.
    client.put("/unrelated", "x", None).await.unwrap();
    let v3 = lock.update(&record("c"), &v2).await.unwrap();
    let (t2, t3) = (
        lock.fencing_token(&record("b"), &v2),
        lock.fencing_token(&record("c"), &v3),
    );
    assert!(t3 > t2 + 1, "{t2} then {t3}");
}

#[tokio::test]
async fn watch_reports_the_current_state_then_every_change() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let lock = lock(&cluster, "watched", EtcdOptions::new()).await;
    let v1 = lock.create(&record("a")).await.unwrap();

    let mut w = lock.watch().unwrap();
    match next(&mut w).await {
        Some(Ok(LockEvent::Changed(v))) => assert_eq!(v.version, v1),
        other => panic!("expected the current record, got {other:?}"),
    }
    let v2 = lock.update(&record("b"), &v1).await.unwrap();
    match next(&mut w).await {
        Some(Ok(LockEvent::Changed(v))) => {
            assert_eq!((v.version, v.record.holder_identity.as_str()), (v2, "b"))
        }
        other => panic!("expected the update, got {other:?}"),
    }
    client.delete(lock.key(), None).await.unwrap();
    assert!(matches!(next(&mut w).await, Some(Ok(LockEvent::Deleted))));
    let put = client.put(lock.key(), "garbage", None).await.unwrap();
    match next(&mut w).await {
        Some(Err(LockError::InvalidRecord { version, .. })) => {
            assert_eq!(
                version,
                Some(Version::from(put.header().unwrap().revision() as u64))
            )
        }
        other => panic!("expected an invalid record, got {other:?}"),
    }

    // A watch opened on an absent key starts by saying so.
    let other = EtcdLock::from_client(client.clone(), "absent");
    let mut w = other.watch().unwrap();
    assert!(matches!(next(&mut w).await, Some(Ok(LockEvent::Deleted))));
}

// ---- elections on the lock ---------------------------------------------------

#[tokio::test]
async fn elections_on_etcd_hand_over_at_once() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    // A long lease: any handover well before it expires was driven by the watch.
    let cfg = |id: &str| timing(id, 10_000, 6_000, 500);
    let mut replicas = Vec::new();
    for id in ["a", "b", "c"] {
        let l = lock(&cluster, "handover", EtcdOptions::new()).await;
        replicas.push(Replica::elector(id, l, cfg(id)));
    }
    let first = one_leader(&replicas, Duration::from_secs(20)).await;
    let first_token = replicas[first].terms()[0];

    // Shutdown releases; a watching standby takes over at once.
    let leaving = replicas.remove(first);
    let released_at = Instant::now();
    leaving.stop().await;
    let second = one_leader(&replicas, Duration::from_secs(20)).await;
    let took = released_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} after a release"
    );
    let second_token = replicas[second].terms()[0];
    assert!(second_token > first_token);

    // The key deleted under the leader: it finds out at its next renewal and steps
    // down; a standby creates the record again at once.
    let key = "/leaderelection/handover";
    let deleted_at = Instant::now();
    client.delete(key, None).await.unwrap();
    wait_until("a new term begins", Duration::from_secs(20), || {
        replicas.iter().flat_map(|r| r.terms()).max() > Some(second_token)
    })
    .await;
    let took = deleted_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} after a delete"
    );
    let third = one_leader(&replicas, Duration::from_secs(20)).await;
    let record = client.get(key, None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        LeaderElectionRecord::from_json(record.value_str().unwrap())
            .unwrap()
            .holder_identity,
        replicas[third].name
    );
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn minority_of_members_down_no_transition() {
    let mut cluster = start(3);
    // When the killed member is etcd's raft leader, etcd needs a new election before it
    // commits again (seconds on a loaded machine): the renew deadline must outlast it,
    // as kube-scheduler's 10s does in production.
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = lock(&cluster, "minority", EtcdOptions::new()).await;
        replicas.push(Replica::elector(id, l, timing(id, 15_000, 10_000, 500)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].terms()[0];
    for r in &mut replicas {
        r.drain_events();
    }
    // Each member in turn, so that whichever one a client talks to goes down once.
    for i in 0..3 {
        cluster.kill(i).unwrap();
        // The leader renews through the other members (after etcd's own raft
        // election, when the member was etcd's leader).
        let before = mod_revision(&cluster, i, "/leaderelection/minority").await;
        let started = Instant::now();
        while mod_revision(&cluster, i, "/leaderelection/minority").await == before {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no renewal with member {i} down"
            );
            sleep(Duration::from_millis(200)).await;
        }
        sleep(Duration::from_secs(2)).await;
        assert!(
            replicas[leader].is_leader(),
            "leader lost with member {i} down"
        );
        cluster.restart(i).unwrap();
        cluster.wait_healthy(i).unwrap();
    }
    for r in &mut replicas {
        let events = r.drain_events();
        assert!(
            !events.iter().any(|e| matches!(
                e,
                ElectionEvent::StartedLeading { .. } | ElectionEvent::StoppedLeading
            )),
            "{}: transition with a minority down: {events:?}",
            r.name
        );
    }
    assert_eq!(replicas[leader].terms(), vec![token]);
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn frozen_member_no_transition() {
    let mut cluster = start(3);
    // A frozen (SIGSTOP) member accepts connections and never answers: requests to it
    // time out after 2s and the next ones go to another member.
    let options = || EtcdOptions::new().request_timeout(Duration::from_secs(2));
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = lock(&cluster, "frozen-member", options()).await;
        replicas.push(Replica::elector(id, l, timing(id, 15_000, 10_000, 500)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].terms()[0];
    for r in &mut replicas {
        r.drain_events();
    }
    for i in 0..3 {
        cluster.pause(i).unwrap();
        // The leader renews through the other members (after etcd's own raft
        // election, when the member was etcd's leader).
        let before = mod_revision(&cluster, i, "/leaderelection/frozen-member").await;
        let started = Instant::now();
        while mod_revision(&cluster, i, "/leaderelection/frozen-member").await == before {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no renewal with member {i} frozen"
            );
            sleep(Duration::from_millis(200)).await;
        }
        sleep(Duration::from_secs(2)).await;
        assert!(
            replicas[leader].is_leader(),
            "leader lost with member {i} frozen"
        );
        cluster.resume(i).unwrap();
        cluster.wait_healthy(i).unwrap();
    }
    for r in &mut replicas {
        let events = r.drain_events();
        assert!(
            !events.iter().any(|e| matches!(
                e,
                ElectionEvent::StartedLeading { .. } | ElectionEvent::StoppedLeading
            )),
            "{}: transition with a member frozen: {events:?}",
            r.name
        );
    }
    assert_eq!(replicas[leader].terms(), vec![token]);
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn invalid_record_is_overwritten_after_a_lease_duration() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    client
        .put("/leaderelection/garbled", "{\"holderIdentity\": 42", None)
        .await
        .unwrap();
    let started = Instant::now();
    let replica = Replica::elector(
        "a",
        lock(&cluster, "garbled", EtcdOptions::new()).await,
        fast("a"),
    );
    wait_until(
        "it overwrites the bad record",
        Duration::from_secs(15),
        || replica.is_leader(),
    )
    .await;
    // Someone might hold an unreadable record: it waits a whole lease first.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "overwrote after only {took:?}"
    );
    let kv = client
        .get("/leaderelection/garbled", None)
        .await
        .unwrap()
        .kvs()[0]
        .clone();
    assert_eq!(
        LeaderElectionRecord::from_json(kv.value_str().unwrap())
            .unwrap()
            .holder_identity,
        "a"
    );
    replica.stop().await;
}

#[tokio::test]
async fn quorum_loss_steps_the_leader_down_and_one_leader_returns() {
    let mut cluster = start(3);
    let mut replicas = Vec::new();
    for id in ["a", "b", "c"] {
        let l = lock(&cluster, "quorum", EtcdOptions::new()).await;
        replicas.push(Replica::elector(id, l, timing(id, 4_000, 3_000, 500)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].terms()[0];
    let lost = replicas[leader].last_lost().unwrap();

    let killed_at = Instant::now();
    cluster.kill(1).unwrap();
    cluster.kill(2).unwrap();
    // No renewal can succeed now: the leader's token fires by its renew deadline.
    timeout(Duration::from_secs(3 + 3), lost.cancelled())
        .await
        .expect("the leader steps down within the renew deadline");
    let stepped_down = killed_at.elapsed();
    assert!(!replicas[leader].is_leader());
    // Nobody can lead without a quorum.
    sleep(Duration::from_secs(2)).await;
    assert_eq!(leaders(&replicas), Vec::<&str>::new());

    cluster.restart(1).unwrap();
    cluster.restart(2).unwrap();
    for i in 0..3 {
        cluster.wait_healthy(i).unwrap();
    }
    let back = one_leader(&replicas, Duration::from_secs(30)).await;
    // Exactly one, and it stays so.
    for _ in 0..20 {
        assert!(leaders(&replicas).len() <= 1, "{:?}", leaders(&replicas));
        sleep(Duration::from_millis(100)).await;
    }
    let new_token = *replicas[back].terms().last().unwrap();
    assert!(new_token > token, "{token} then {new_token}");
    eprintln!("quorum loss: the leader stepped down {stepped_down:?} after the kill");
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn etcd_restarted_with_its_data_keeps_the_leader_and_the_revisions() {
    let mut cluster = start(1);
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = lock(&cluster, "restart", EtcdOptions::new()).await;
        replicas.push(Replica::elector(id, l, timing(id, 10_000, 8_000, 500)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].terms()[0];
    for r in &mut replicas {
        r.drain_events();
    }

    cluster.restart(0).unwrap();
    cluster.wait_healthy(0).unwrap();
    // Renewals resume against the same revisions: no transition.
    sleep(Duration::from_secs(2)).await;
    assert!(replicas[leader].is_leader());
    for r in &mut replicas {
        let events = r.drain_events();
        assert!(
            !events.iter().any(|e| matches!(
                e,
                ElectionEvent::StartedLeading { .. } | ElectionEvent::StoppedLeading
            )),
            "{}: {events:?}",
            r.name
        );
    }
    // The revision survived the restart: the next leader's token is still larger.
    let old = replicas.remove(leader);
    old.stop().await;
    let next = one_leader(&replicas, Duration::from_secs(20)).await;
    let next_token = replicas[next].terms()[0];
    assert!(next_token > token, "{token} then {next_token}");
    let mut client = raw(&cluster).await;
    let kv = client
        .get("/leaderelection/restart", None)
        .await
        .unwrap()
        .kvs()[0]
        .clone();
    let record = LeaderElectionRecord::from_json(kv.value_str().unwrap()).unwrap();
    assert_eq!(record.leader_transitions, 1);
    for r in replicas {
        r.stop().await;
    }
}

// ---- native lease mode -------------------------------------------------------

#[tokio::test]
async fn native_lease_binds_the_key_and_leaves_nothing_behind() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let a = lock(&cluster, "bound", EtcdOptions::new().native_lease(true)).await;
    let b = lock(&cluster, "bound", EtcdOptions::new().native_lease(true)).await;

    let v1 = a.create(&record("a")).await.unwrap();
    let lease = a.lease_id().expect("a lease after create");
    let kv = client.get(a.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), lease);
    let ttl = client.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3, "TTL = leaseDurationSeconds");

    // The loser of a create race keeps no lease.
    assert!(matches!(
        b.create(&record("b")).await,
        Err(LockError::AlreadyExists)
    ));
    assert_eq!(b.lease_id(), None);
    // Nor does the loser of a compare-and-swap.
    let v2 = a.update(&record("a"), &v1).await.unwrap();
    assert!(matches!(
        b.update(&record("b"), &v1).await,
        Err(LockError::Conflict)
    ));
    let leases: Vec<i64> = client
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(leases, vec![lease], "only the holder's lease exists");
    // A renewal keeps the same lease.
    assert_eq!(a.lease_id(), Some(lease));

    // Released: the record stays without a lease, and the lease is gone.
    let released = LeaderElectionRecord {
        lease_duration_seconds: 1,
        ..Default::default()
    };
    a.update(&released, &v2).await.unwrap();
    let kv = client.get(a.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), 0);
    assert!(client.leases().await.unwrap().leases().is_empty());
    assert_eq!(a.lease_id(), None);
}

#[tokio::test]
async fn native_lease_revoked_the_leader_steps_down_at_once() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    // A long lease and renew deadline: anything faster than them is the lease at work.
    let cfg = |id: &str| timing(id, 10_000, 8_000, 500);
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = lock(&cluster, "revoked", EtcdOptions::new().native_lease(true)).await;
        replicas.push(Replica::elector(id, l, cfg(id)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].terms()[0];
    let lost = replicas[leader].last_lost().unwrap();
    let kv = client
        .get("/leaderelection/revoked", None)
        .await
        .unwrap()
        .kvs()[0]
        .clone();
    assert_ne!(kv.lease(), 0);

    let revoked_at = Instant::now();
    client.lease_revoke(kv.lease()).await.unwrap();
    // The next renewal's keep-alive finds the lease gone: no waiting for the deadline.
    timeout(Duration::from_secs(4), lost.cancelled())
        .await
        .expect("the leader steps down at its next renewal");
    let stepped_down = revoked_at.elapsed();
    // etcd deleted the key with the lease; the standby took it at once.
    let standby = 1 - leader;
    wait_until("the standby leads", Duration::from_secs(4), || {
        replicas[standby].is_leader()
    })
    .await;
    let took_over = revoked_at.elapsed();
    assert!(replicas[standby].terms()[0] > token);
    assert!(!replicas[leader].is_leader());
    eprintln!(
        "revoked lease: stepped down after {stepped_down:?}, standby led after {took_over:?}"
    );
    for r in replicas {
        r.stop().await;
    }
    // Shut down with release: no lease is left, the key holds a released record.
    assert!(client.leases().await.unwrap().leases().is_empty());
    let kv = client
        .get("/leaderelection/revoked", None)
        .await
        .unwrap()
        .kvs()[0]
        .clone();
    assert!(LeaderElectionRecord::from_json(kv.value_str().unwrap())
        .unwrap()
        .is_released());
}

// ---- leader processes killed and frozen --------------------------------------

/// The leader process of a test: this binary re-run as `child_candidate`.
struct ChildCandidate {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildCandidate {
    fn spawn(mode: &str, cluster: &EtcdCluster, name: &str, identity: &str, ms: [u64; 3]) -> Self {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "child_candidate",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LE_CHILD_MODE", mode)
            .env("LE_CHILD_ENDPOINTS", cluster.endpoints().join(","))
            .env("LE_CHILD_NAME", name)
            .env("LE_CHILD_IDENTITY", identity)
            .env("LE_CHILD_TIMING", format!("{},{},{}", ms[0], ms[1], ms[2]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child candidate");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness writes `test child_candidate ... ` before the first line.
                let line = line.rsplit("... ").next().unwrap_or_default().to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line starting with `prefix`; returns it with the lines before it.
    async fn expect(&mut self, prefix: &str, limit: Duration) -> (String, Vec<String>) {
        let started = Instant::now();
        let mut before = Vec::new();
        loop {
            match self.lines.try_recv() {
                Ok(line) if line.starts_with(prefix) => return (line, before),
                Ok(line) => before.push(line),
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    assert!(
                        started.elapsed() < limit,
                        "child: no {prefix:?} line within {limit:?}; saw {before:?}"
                    );
                    sleep(Duration::from_millis(20)).await;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    panic!("child exited before printing {prefix:?}; saw {before:?}")
                }
            }
        }
    }

    fn drain(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    fn signal(&self, sig: libc::c_int) {
        signal_pid(self.child.id(), sig).expect("signal the child");
    }
}

impl Drop for ChildCandidate {
    fn drop(&mut self) {
        let _ = signal_pid(self.child.id(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test of its own: the leader process of the tests above, when `LE_CHILD_MODE`
/// is set. Prints `LEADING t`, then `ACT t` every 100ms while its leadership is valid,
/// `EXPIRED t` if it finds it no longer valid, and `LOST t` when it is lost.
#[test]
#[ignore = "the leader process of the process tests, which run it themselves"]
fn child_candidate() {
    let mode = std::env::var("LE_CHILD_MODE").expect("LE_CHILD_MODE (the process tests set it)");
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let ms: Vec<u64> = var("LE_CHILD_TIMING")
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let (endpoints, name, identity) = (
        leaderelection::lock::etcd::parse_servers(&var("LE_CHILD_ENDPOINTS")),
        var("LE_CHILD_NAME"),
        var("LE_CHILD_IDENTITY"),
    );
    let config = timing(&identity, ms[0], ms[1], ms[2]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        // An orphaned child ends by itself.
        let limit = sleep(Duration::from_secs(120));
        let options = EtcdOptions::new().native_lease(mode == "lease");
        let lock = EtcdLock::connect(&endpoints, options, name).await.unwrap();
        let elector = LeaderElector::new(lock, config).unwrap();
        let mut events = elector.events();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if event == ElectionEvent::StoppedLeading {
                    println!("STOPPED");
                }
            }
        });
        tokio::select! {
            _ = elector.run(shutdown, child_work) => {}
            _ = limit => {}
        }
    });
}

async fn child_work(leadership: leaderelection::Leadership) {
    let t = leadership.fencing_token();
    println!("LEADING {t}");
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            _ = leadership.lost() => break,
            _ = tick.tick() => {
                if leadership.is_valid() {
                    println!("ACT {t}");
                } else {
                    println!("EXPIRED {t}");
                    leadership.lost().await;
                    break;
                }
            }
        }
    }
    println!("LOST {t}");
}

async fn killed_leader_standby_leads_after_the_ttl(mode: &str) {
    let cluster = start(1);
    let name = format!("killed-{mode}");
    let mut child = ChildCandidate::spawn(mode, &cluster, &name, "child", [3000, 2000, 500]);
    child.expect("LEADING", Duration::from_secs(30)).await;
    let options = EtcdOptions::new().native_lease(mode == "lease");
    let standby = Replica::elector(
        "standby",
        lock(&cluster, &name, options).await,
        fast("standby"),
    );
    sleep(Duration::from_secs(1)).await;
    assert!(!standby.is_leader());

    child.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    wait_until("the standby leads", Duration::from_secs(15), || {
        standby.is_leader()
    })
    .await;
    let took = killed_at.elapsed();
    // Not before the dead leader's lease could have run out (3s from its last
    // renewal, at most a retry period before the kill).
    assert!(
        took > Duration::from_millis(2000),
        "took over after only {took:?}"
    );
    eprintln!("{mode}: standby led {took:?} after SIGKILL");
    if mode == "lease" {
        let mut client = raw(&cluster).await;
        let kv = client
            .get(format!("/leaderelection/{name}"), None)
            .await
            .unwrap()
            .kvs()[0]
            .clone();
        // The standby's own timer and etcd's expiry of the dead leader's lease run
        // out together; either may come first. The dead lease goes either way.
        assert_ne!(kv.lease(), 0, "the standby bound the key to its own lease");
        let started = Instant::now();
        loop {
            let leases: Vec<i64> = client
                .leases()
                .await
                .unwrap()
                .leases()
                .iter()
                .map(|l| l.id())
                .collect();
            if leases == vec![kv.lease()] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "leases left: {leases:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }
    standby.stop().await;
}

#[tokio::test]
async fn killed_leader_process_standby_leads_after_the_lease() {
    killed_leader_standby_leads_after_the_ttl("lock").await;
}

#[tokio::test]
async fn killed_leader_process_native_lease_expires_and_standby_leads() {
    killed_leader_standby_leads_after_the_ttl("lease").await;
}

#[tokio::test]
async fn frozen_leader_knows_it_lost_before_acting() {
    let cluster = start(1);
    let mut child = ChildCandidate::spawn("lease", &cluster, "frozen", "child", [3000, 2000, 500]);
    let (leading, _) = child.expect("LEADING", Duration::from_secs(30)).await;
    child.expect("ACT", Duration::from_secs(10)).await;
    let standby = Replica::elector(
        "standby",
        lock(&cluster, "frozen", EtcdOptions::new().native_lease(true)).await,
        fast("standby"),
    );

    child.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    wait_until("the standby leads", Duration::from_secs(15), || {
        standby.is_leader()
    })
    .await;
    // Frozen for longer than the lease, then everything it printed before is read.
    sleep(Duration::from_secs(4).saturating_sub(stopped_at.elapsed())).await;
    child.drain();
    child.signal(libc::SIGCONT);

    // On resuming, the elector finds the term over and steps down. The work never acts:
    // its leadership is no longer valid (it may print EXPIRED or LOST, or be aborted
    // first, since the lease it ran under is over).
    let (_, before) = child.expect("STOPPED", Duration::from_secs(10)).await;
    sleep(Duration::from_secs(2)).await;
    let after: Vec<String> = before.into_iter().chain(child.drain()).collect();
    assert!(
        !after
            .iter()
            .any(|l| l.starts_with("ACT") || l.starts_with("LEADING")),
        "the resumed process acted or led again: {after:?}"
    );
    let token = leading.trim_start_matches("LEADING ");
    for line in &after {
        assert!(
            *line == format!("EXPIRED {token}") || *line == format!("LOST {token}"),
            "unexpected line after resuming: {line:?}"
        );
    }
    assert!(standby.is_leader());
    standby.stop().await;
}

// ---- etcd's election protocol ------------------------------------------------

async fn election(cluster: &EtcdCluster, name: &str, config: Config) -> EtcdElection {
    let client = connect(&cluster.endpoints(), &EtcdOptions::new())
        .await
        .unwrap();
    EtcdElection::new(client, name, config).unwrap()
}

#[tokio::test]
async fn etcd_election_queues_candidates_by_create_revision() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let mut replicas = Vec::new();
    let mut handles = Vec::new();
    // A long session and renew deadline: anything faster than them is the protocol
    // handing over, not a session expiring.
    for id in ["a", "b", "c"] {
        let e = election(&cluster, "queue", timing(id, 10_000, 6_000, 500)).await;
        handles.push(e.clone());
        replicas.push(Replica::election(id, e));
        // Join one after the other, so the queue order is known.
        sleep(Duration::from_millis(500)).await;
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    assert_eq!(replicas[leader].name, "a", "the first to join leads");

    // Keys as Go's concurrency package writes them; the token is the create revision.
    let current = handles[0].current_leader().await.unwrap().unwrap();
    assert_eq!(current.value, "a");
    assert_eq!(current.key, format!("queue/{:x}", current.lease));
    assert_eq!(replicas[leader].terms()[0], current.create_revision as u64);
    let keys = client
        .get("queue/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys.kvs().len(), 3);
    assert_eq!(handles[2].leader().as_deref(), Some("a"));

    // Resigning hands over at once to the next in line.
    let first = replicas.remove(0);
    let resigned_at = Instant::now();
    first.stop().await;
    wait_until("b leads", Duration::from_secs(5), || {
        replicas[0].is_leader()
    })
    .await;
    let took = resigned_at.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} after a resignation"
    );
    assert!(replicas[0].terms()[0] > current.create_revision as u64);

    // The session revoked under the leader: it loses at once (no phantom leader), and
    // c, next in line, leads; b joins again at the back.
    let b_lost = replicas[0].last_lost().unwrap();
    let b_key = handles[1].current_leader().await.unwrap().unwrap();
    let revoked_at = Instant::now();
    client.lease_revoke(b_key.lease).await.unwrap();
    timeout(Duration::from_secs(3), b_lost.cancelled())
        .await
        .expect("b steps down at its next keep-alive");
    wait_until("c leads", Duration::from_secs(5), || {
        replicas[1].is_leader()
    })
    .await;
    eprintln!(
        "etcd election: revoked leader replaced after {:?}",
        revoked_at.elapsed()
    );
    sleep(Duration::from_secs(1)).await;
    assert_eq!(leaders(&replicas), vec!["c"]);
    let queue = client
        .get("queue/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(queue.kvs().len(), 2, "b joined again with a new key");

    for r in replicas {
        r.stop().await;
    }
    let left = client
        .get("queue/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(left.kvs().is_empty(), "keys left behind: {:?}", left.kvs());
    assert!(client.leases().await.unwrap().leases().is_empty());
}

/// `etcdctl elect` (etcd's Go client) on the cluster.
fn etcdctl_elect(cluster: &EtcdCluster, args: &[&str]) -> ChildLines {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(cluster.endpoints().join(","))
        .arg("elect")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run etcdctl (is etcd-client installed?)");
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(VecDeque::new()));
    std::thread::spawn({
        let lines = lines.clone();
        move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push_back(line);
            }
        }
    });
    ChildLines { child, lines }
}

struct ChildLines {
    child: Child,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl ChildLines {
    fn seen(&self, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l == text)
    }

    /// SIGINT: etcdctl resigns, or stops campaigning, and exits.
    async fn interrupt(mut self) {
        signal_pid(self.child.id(), libc::SIGINT).unwrap();
        let exited = timeout(Duration::from_secs(10), async {
            while self.child.try_wait().unwrap().is_none() {
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(exited.is_ok(), "etcdctl did not exit on SIGINT");
    }
}

impl Drop for ChildLines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn etcd_election_interoperates_with_etcdctl_elect() {
    let cluster = start(1);
    // etcdctl leads first; ours waits behind it and sees it as leader.
    let go = etcdctl_elect(&cluster, &["interop", "go-proposal"]);
    wait_until("etcdctl leads", Duration::from_secs(15), || {
        go.seen("go-proposal")
    })
    .await;
    let ours = election(&cluster, "interop", fast("rust")).await;
    let replica = Replica::election("rust", ours.clone());
    wait_until("ours sees etcdctl lead", Duration::from_secs(10), || {
        ours.leader().as_deref() == Some("go-proposal")
    })
    .await;
    sleep(Duration::from_secs(1)).await;
    assert!(!replica.is_leader());

    // etcdctl resigns: ours leads at once, and etcdctl's observer mode sees it.
    let resigned_at = Instant::now();
    go.interrupt().await;
    wait_until("ours leads", Duration::from_secs(5), || replica.is_leader()).await;
    eprintln!(
        "etcdctl resigned; ours led after {:?}",
        resigned_at.elapsed()
    );
    let observer = etcdctl_elect(&cluster, &["-l", "interop"]);
    wait_until("etcdctl observes ours", Duration::from_secs(10), || {
        observer.seen("rust")
    })
    .await;

    // A second etcdctl campaigns behind ours, and leads once ours shuts down.
    let go2 = etcdctl_elect(&cluster, &["interop", "go-2"]);
    sleep(Duration::from_secs(2)).await;
    assert!(!go2.seen("go-2"), "etcdctl elected while ours leads");
    assert!(replica.is_leader());
    replica.stop().await;
    wait_until(
        "etcdctl leads after ours resigned",
        Duration::from_secs(5),
        || go2.seen("go-2"),
    )
    .await;
    wait_until("the observer sees it", Duration::from_secs(10), || {
        observer.seen("go-2")
    })
    .await;
    go2.interrupt().await;
}

#[tokio::test]
async fn etcd_election_dropping_run_fires_the_works_lost() {
    let cluster = start(1);
    let e = election(&cluster, "dropped", fast("a")).await;
    let replica = Replica::election("a", e);
    wait_until("a leads", Duration::from_secs(10), || replica.is_leader()).await;
    let lost = replica.last_lost().unwrap();
    assert!(!lost.is_cancelled());

    // The run future goes (an aborted task, a caller's select!): the work, a task of
    // its own, must learn at once that nobody keeps the session alive any more.
    replica.task.abort();
    let _ = replica.task.await;
    timeout(Duration::from_secs(2), lost.cancelled())
        .await
        .expect("the work's lost() fires when run's future is dropped");
}

#[tokio::test]
async fn etcd_election_health_check_fails_for_a_leader_whose_loop_is_stuck() {
    let cluster = start(1);
    // Session TTL 2s (lease), keep-alive every 0.5s.
    let e = election(&cluster, "stuck", timing("a", 2000, 1500, 500)).await;
    let tolerance = Duration::from_millis(500);
    let mut run = Box::pin(e.run(CancellationToken::new(), |l| async move { l.lost().await }));
    tokio::select! {
        _ = &mut run => panic!("run returned while leading"),
        _ = async {
            wait_until("a leads", Duration::from_secs(10), || e.is_leader()).await;
            // A few keep-alives: a leader that keeps its session alive is healthy.
            sleep(Duration::from_secs(2)).await;
        } => {}
    }
    assert!(e.is_leader());
    assert!(
        e.check_health(Duration::from_secs(5)).is_ok(),
        "a leader keeping its session alive is healthy"
    );

    // From here on the loop is not polled, as under a blocked runtime: no keep-alive can
    // be sent, however fast the machine, yet the replica still believes it leads.
    sleep(Duration::from_millis(2000) + tolerance + Duration::from_millis(500)).await;
    assert!(e.is_leader());
    let err = e
        .check_health(tolerance)
        .expect_err("a leader stuck past lease + tolerance is unhealthy");
    assert_eq!(err.name, "test");
    assert!(err.since > Duration::from_millis(2000) + tolerance);
    drop(run);
}

#[tokio::test]
async fn etcd_election_keeps_the_last_leader_seen_after_stepping_down() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let e = election(&cluster, "last", fast("a").recampaign(false)).await;
    let status = e.subscribe();

    // Lost: an operator deletes our key; the term ends and run returns.
    let mut replica = Replica::election("a", e.clone());
    wait_until("a leads", Duration::from_secs(10), || replica.is_leader()).await;
    let key = e.current_leader().await.unwrap().unwrap().key;
    client.delete(key, None).await.unwrap();
    let Replica { task, .. } = &mut replica;
    timeout(Duration::from_secs(10), task)
        .await
        .expect("run returns after the loss without recampaign")
        .unwrap();
    assert!(!e.is_leader());
    assert_eq!(
        e.leader().as_deref(),
        Some("a"),
        "the last leader seen is kept"
    );
    assert_eq!(status.borrow().leader.as_deref(), Some("a"));
    let events = replica.drain_events();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0], ElectionEvent::NewLeader(Some("a".into())));
    assert!(matches!(events[1], ElectionEvent::StartedLeading { .. }));
    assert_eq!(events[2], ElectionEvent::StoppedLeading);

    // Shut down: the session is revoked, the last leader seen still reported.
    let replica = Replica::election("a", e.clone());
    wait_until("a leads again", Duration::from_secs(10), || {
        replica.is_leader()
    })
    .await;
    replica.stop().await;
    assert!(!e.is_leader());
    assert_eq!(e.leader().as_deref(), Some("a"));
    assert!(e.current_leader().await.unwrap().is_none(), "resigned");
}

// ---- endpoints, TLS and credentials ------------------------------------------

#[tokio::test]
async fn unreachable_and_malformed_endpoints_are_named() {
    let cluster = start(1);
    let dead = format!(
        "http://{}",
        leaderelection_testkit::etcd::free_port().unwrap()
    );
    let err = EtcdLock::connect(&[dead.as_str()], EtcdOptions::new(), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&dead), "{err}");
    eprintln!("unreachable: {err}");

    // One dead endpoint among live ones: connects, and works.
    let endpoints = [dead.clone(), cluster.endpoint(0)];
    let lock = EtcdLock::connect(&endpoints, EtcdOptions::new(), "x")
        .await
        .unwrap();
    for _ in 0..4 {
        let _ = lock.get().await;
    }
    lock.create(&record("a")).await.unwrap();
    lock.get().await.unwrap().unwrap();

    for bad in [
        "ftp://127.0.0.1:2379",
        "http://127.0.0.1",
        "127.0.0.1:notaport",
    ] {
        let err = EtcdLock::connect(&[bad], EtcdOptions::new(), "x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains(bad), "{bad}: {err}");
    }
    let err = EtcdLock::connect(&[] as &[&str], EtcdOptions::new(), "x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no etcd endpoint"), "{err}");
}

#[cfg(feature = "etcd-tls")]
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("leaderelection-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[cfg(feature = "etcd-tls")]
#[tokio::test]
async fn tls_with_client_certificates() {
    init_logs();
    let dir = temp_dir("tls");
    let certs = TestCerts::generate(&dir).expect("generate certificates with openssl");
    let other = TestCerts::generate(&dir.join("other")).unwrap();
    let cluster = EtcdCluster::start_with(1, EtcdClusterOptions::new().tls(&certs)).unwrap();
    let endpoint = cluster.endpoint(0);
    assert!(endpoint.starts_with("https://"));
    let good = || {
        EtcdOptions::new()
            .ca_file(&certs.ca_file)
            .cert_file(&certs.client_cert)
            .key_file(&certs.client_key)
    };

    let lock = EtcdLock::connect(&[endpoint.as_str()], good(), "tls")
        .await
        .unwrap();
    let replica = Replica::elector("a", lock, fast("a"));
    wait_until("it leads over TLS", Duration::from_secs(20), || {
        replica.is_leader()
    })
    .await;
    replica.stop().await;

    // A server certificate from another CA: the endpoint is named.
    let wrong_ca = good().ca_file(&other.ca_file);
    let err = EtcdLock::connect(&[endpoint.as_str()], wrong_ca, "tls")
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&endpoint), "{err}");
    eprintln!("wrong CA: {err}");
    // No client certificate: etcd refuses the handshake.
    let no_cert = EtcdOptions::new().ca_file(&certs.ca_file);
    let err = EtcdLock::connect(&[endpoint.as_str()], no_cert, "tls")
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&endpoint), "{err}");
    // Settings that cannot work say which.
    let plain = endpoint.replace("https://", "http://");
    let err = EtcdLock::connect(&[plain.as_str()], good(), "tls")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("use https://"), "{err}");
    let err = EtcdLock::connect(&[endpoint.as_str()], EtcdOptions::new(), "tls")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--etcd-cafile"), "{err}");
    let missing = good().key_file(dir.join("missing.key"));
    let err = EtcdLock::connect(&[endpoint.as_str()], missing, "tls")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn user_and_password_with_expiring_tokens() {
    init_logs();
    // Tokens expire every second: renewals must outlive many of them.
    let cluster =
        EtcdCluster::start_with(1, EtcdClusterOptions::new().arg("--auth-token-ttl=1")).unwrap();
    let mut admin = raw(&cluster).await;
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("elector").await.unwrap();
    admin
        .role_grant_permission(
            "elector",
            leaderelection::lock::etcd::etcd_client::Permission::read_write("/leaderelection/")
                .with_prefix(),
        )
        .await
        .unwrap();
    admin.user_add("scheduler", "s3cret", None).await.unwrap();
    admin.user_grant_role("scheduler", "elector").await.unwrap();
    admin.auth_enable().await.unwrap();
    let endpoints = cluster.endpoints();

    let err = EtcdLock::connect(
        &endpoints,
        EtcdOptions::new().user("scheduler", "wrong"),
        "auth",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LockError::Forbidden { .. }), "{err}");
    assert!(err.to_string().contains("\"scheduler\""), "{err}");
    eprintln!("wrong password: {err}");
    let err = EtcdLock::connect(&endpoints, EtcdOptions::new().user("nobody", "x"), "auth")
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Forbidden { .. }), "{err}");
    // Without credentials the connection works, every request is refused.
    let anonymous = EtcdLock::connect(&endpoints, EtcdOptions::new(), "auth")
        .await
        .unwrap();
    let err = anonymous.get().await.unwrap_err();
    assert!(matches!(err, LockError::Forbidden { .. }), "{err}");

    let options = || {
        EtcdOptions::new()
            .user("scheduler", "s3cret")
            .native_lease(true)
    };
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = EtcdLock::connect(&endpoints, options(), "auth")
            .await
            .unwrap();
        replicas.push(Replica::elector(id, l, fast(id)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    for r in &mut replicas {
        r.drain_events();
    }
    sleep(Duration::from_secs(4)).await;
    assert!(
        replicas[leader].is_leader(),
        "renewals failed once tokens expired"
    );
    for r in &mut replicas {
        let events = r.drain_events();
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ElectionEvent::StoppedLeading)),
            "{}: {events:?}",
            r.name
        );
    }
    for r in replicas {
        r.stop().await;
    }
    let mut root = Client::connect(
        &endpoints,
        Some(
            leaderelection::lock::etcd::etcd_client::ConnectOptions::new()
                .with_user("root", "rootpw"),
        ),
    )
    .await
    .unwrap();
    assert!(
        root.leases().await.unwrap().leases().is_empty(),
        "a lease was left behind"
    );
}
