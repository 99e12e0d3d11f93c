//! Coordinated leader election (KEP-4355): an elector with
//! [`Config::coordinated`] never takes the lease itself; someone else (kube-apiserver's
//! coordinated election controller) names the holder, and asks it to hand over by
//! setting `preferredHolder`.
//!
//! The first tests play the controller's writes by hand on the in-memory lock, under
//! tokio's paused clock, so that every instant is exact; the ones at the end run the
//! test kit's API server with its coordinated election controller on, which follows
//! kube-apiserver's own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use leaderelection::{Config, LeaderElectionRecord, LeaseLock, LockEvent, MemoryStore};
use leaderelection_testkit::checker::Checker;
use leaderelection_testkit::faults::FaultyLock;
use leaderelection_testkit::replica::{Link, Replica, Work};
use tokio::time::{sleep, Instant};

const NAME: &str = "scheduler";
const STRATEGY: &str = "OldestEmulationVersion";

fn coordinated(id: &str) -> Config {
    Config::new(NAME).identity(id).coordinated(true)
}

/// Every record written, with the virtual instant of the write.
#[derive(Clone, Default)]
struct Writes(Arc<Mutex<Vec<(Instant, Option<LeaderElectionRecord>)>>>);

impl Writes {
    fn follow(store: &MemoryStore) -> Self {
        let writes = Self::default();
        let mut stream = store.lock(NAME).watch().unwrap();
        let w = writes.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                let record = match event {
                    LockEvent::Changed(v) => Some(v.record),
                    _ => None,
                };
                w.0.lock().unwrap().push((Instant::now(), record));
            }
        });
        writes
    }

    fn records(&self) -> Vec<LeaderElectionRecord> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, r)| r.clone())
            .collect()
    }

    fn first_released(&self) -> Option<(Instant, LeaderElectionRecord)> {
        self.0.lock().unwrap().iter().find_map(|(t, r)| {
            r.as_ref()
                .filter(|r| r.holder_identity.is_empty())
                .map(|r| (*t, r.clone()))
        })
    }
}

/// What kube-apiserver's controller writes when it elects `holder`: a five-second
/// lease with the strategy, and no `preferredHolder`.
async fn name_holder(store: &MemoryStore, holder: &str) {
    let lock = store.lock(NAME);
    let now = jiff::Timestamp::now();
    let record = |old: Option<&LeaderElectionRecord>| LeaderElectionRecord {
        holder_identity: holder.into(),
        lease_duration_seconds: 5,
        renew_time: Some(now),
        strategy: STRATEGY.into(),
        leader_transitions: old.map_or(0, |o| o.leader_transitions),
        ..Default::default()
    };
    match lock.get().await.unwrap() {
        None => {
            lock.create(&record(None)).await.unwrap();
        }
        Some(v) => {
            lock.update(&record(Some(&v.record)), &v.version)
                .await
                .unwrap();
        }
    }
}

/// What the controller writes when a better candidate than the holder appears.
async fn prefer(store: &MemoryStore, preferred: &str) {
    let lock = store.lock(NAME);
    let v = lock.get().await.unwrap().expect("a Lease to mark");
    let mut record = v.record.clone();
    record.preferred_holder = preferred.into();
    lock.update(&record, &v.version).await.unwrap();
}

fn start(store: &MemoryStore, config: Config, checker: &Checker) -> Replica {
    Replica::memory(store, config, checker, Work::polite())
}

#[tokio::test(start_paused = true)]
async fn a_coordinated_replica_never_takes_the_lease_itself() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, coordinated("a"), &checker);
    sleep(Duration::from_secs(60)).await;
    assert!(!a.is_leader());
    assert!(
        store.lock(NAME).get().await.unwrap().is_none(),
        "a wrote the Lease"
    );
    // A holder that stopped renewing long ago is not replaced either.
    name_holder(&store, "gone").await;
    sleep(Duration::from_secs(60)).await;
    assert!(!a.is_leader());
    let record = store.lock(NAME).get().await.unwrap().unwrap().record;
    assert_eq!(record.holder_identity, "gone");
    a.stop().await;
    checker.report().assert_safe();
}

#[tokio::test(start_paused = true)]
async fn the_named_replica_leads_and_hands_over_when_another_is_preferred() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let writes = Writes::follow(&store);
    let a = start(&store, coordinated("a"), &checker);
    let b = start(&store, coordinated("b"), &checker);
    sleep(Duration::from_secs(1)).await;
    name_holder(&store, "a").await;
    a.wait_leading(Duration::from_millis(10)).await;
    assert!(!b.is_leader());
    sleep(Duration::from_secs(20)).await;
    assert!(a.is_leader(), "a renews its term");

    // A newer candidate's predecessor appears: the controller prefers b.
    let preferred_at = Instant::now();
    prefer(&store, "b").await;
    sleep(Duration::from_millis(10)).await;
    let a_end = checker
        .intervals()
        .into_iter()
        .find(|t| t.identity == "a")
        .and_then(|t| t.end)
        .expect("a stopped leading");
    assert!(
        a_end - preferred_at <= Duration::from_millis(1),
        "a stopped late"
    );
    let (released_at, released) = writes.first_released().expect("a released the Lease");
    assert!(released_at >= a_end, "released before its work stopped");
    assert_eq!(released.strategy, STRATEGY, "the release kept the strategy");
    assert!(!b.is_leader(), "b is not named yet");

    // The controller names b at once, on the released Lease; b saw a release.
    name_holder(&store, "b").await;
    b.wait_leading(Duration::from_millis(10)).await;
    sleep(Duration::from_secs(20)).await;
    assert!(b.is_leader() && !a.is_leader());
    for record in writes.records() {
        assert_eq!(record.strategy, STRATEGY, "{record:?}");
    }
    a.stop().await;
    b.stop().await;
    checker.report().assert_safe();
}

/// The controller judges expiry from `renewTime` on its own wall clock. A replica it
/// names must still not act beside the holder it last saw, whose lease it times on
/// its own clock; nor, when it has no history, beside a holder it never saw.
#[tokio::test(start_paused = true)]
async fn a_named_replica_waits_out_the_holder_it_replaces() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let lock = FaultyLock::new(store.lock(NAME));
    let link = Link::faults(lock.faults());
    let a = Replica::new(lock, link, coordinated("a"), &checker, Work::polite());
    sleep(Duration::from_millis(10)).await;
    name_holder(&store, "a").await;
    a.wait_leading(Duration::from_millis(10)).await;
    let b = start(&store, coordinated("b"), &checker);
    sleep(Duration::from_secs(3)).await;
    // a is cut off and keeps acting until its renew deadline; the controller, with a
    // clock ahead, names b at once.
    a.link.cut(true);
    let cut_at = Instant::now();
    name_holder(&store, "b").await;
    b.wait_leading(Duration::from_secs(30)).await;
    let b_waited = Instant::now() - cut_at;
    assert!(
        b_waited >= Duration::from_secs(13),
        "b led {b_waited:?} after a's last renewal was seen, within a's lease"
    );
    checker.report().assert_safe();

    // b stops; the controller names c before c first reads the Lease.
    b.crash();
    name_holder(&store, "c").await;
    let named_at = Instant::now();
    let c = start(&store, coordinated("c"), &checker);
    c.wait_leading(Duration::from_secs(30)).await;
    let c_waited = Instant::now() - named_at;
    assert!(
        c_waited >= Duration::from_secs(14),
        "c, with no history, led {c_waited:?} after it was named"
    );
    c.stop().await;
    a.stop().await;
    checker.report().assert_safe();
}

#[tokio::test(start_paused = true)]
async fn a_preferred_holder_naming_the_leader_itself_is_no_reason_to_stop() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, coordinated("a"), &checker);
    sleep(Duration::from_millis(10)).await;
    name_holder(&store, "a").await;
    a.wait_leading(Duration::from_millis(10)).await;
    prefer(&store, "a").await;
    sleep(Duration::from_secs(30)).await;
    assert!(a.is_leader());
    assert_eq!(checker.intervals().len(), 1);
    a.stop().await;
    checker.report().assert_safe();
}

/// client-go's plain update writes a whole spec without the strategy; an
/// uncoordinated replica here leaves a coordinated Lease's fields as they were.
#[tokio::test(start_paused = true)]
async fn an_uncoordinated_replica_keeps_the_strategy_and_preferred_holder() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    name_holder(&store, "gone").await;
    prefer(&store, "x").await;
    let writes = Writes::follow(&store);
    let plain = start(&store, Config::new(NAME).identity("plain"), &checker);
    plain.wait_leading(Duration::from_secs(30)).await;
    sleep(Duration::from_secs(10)).await;
    plain.stop().await;
    let records = writes.records();
    assert!(records.iter().any(|r| r.holder_identity == "plain"));
    assert!(
        records.iter().any(|r| r.holder_identity.is_empty()),
        "released"
    );
    for record in records.iter().filter(|r| r.holder_identity != "gone") {
        assert_eq!(record.strategy, STRATEGY, "{record:?}");
        assert_eq!(record.preferred_holder, "x", "{record:?}");
    }
    checker.report().assert_safe();
}
