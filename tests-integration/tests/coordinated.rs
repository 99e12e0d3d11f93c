//! Coordinated leader election (KEP-4355): an elector with
//! [`Config::coordinated`] never takes the lease itself; someone else (kube-apiserver's
//! coordinated election controller) names the holder, and asks it to hand over by
//! setting `preferredHolder`.
//!
//! The first tests play the controller's writes by hand on the in-memory lock, under
//! tokio's paused clock, so that every instant is exact; the ones at the end run the
//! test kit's API server with its coordinated election controller on, which follows
//! kube-apiserver's own.

use std::time::Duration;

use leaderelection::{Config, LeaderElectionRecord, LeaseLock, MemoryStore};
use leaderelection_testkit::checker::Checker;
use leaderelection_testkit::faults::FaultyLock;
use leaderelection_testkit::replica::{Link, Replica, Work};
use leaderelection_testkit::writes::Writes;
use tokio::time::{sleep, Instant};

const NAME: &str = "scheduler";
const STRATEGY: &str = "OldestEmulationVersion";

fn coordinated(id: &str) -> Config {
    Config::new(NAME).identity(id).coordinated(true)
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
    let writes = Writes::follow(&store.lock(NAME));
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
    let writes = Writes::follow(&store.lock(NAME));
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

/// On the test kit's API server with kube-apiserver's coordinated election controller
/// (`testkit/src/apiserver/coordination.rs`), through the real `kube` client.
#[cfg(feature = "kube")]
mod on_the_api_server {
    use std::time::Duration;

    use k8s_openapi::api::coordination::v1::Lease;
    use leaderelection::lock::kube::{KubeLeaseLock, LeaseCandidate};
    use leaderelection::Config;
    use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions};
    use leaderelection_testkit::checker::Checker;
    use leaderelection_testkit::replica::{Link, Replica, Timing, Work};
    use tokio::task::JoinHandle;
    use tokio::time::{sleep, Instant};
    use tokio_util::sync::CancellationToken;

    const NS: &str = "kube-system";
    const LEASE: &str = "kube-scheduler";
    /// The controller's wait for answers to its pings, shortened from 5 s.
    const ELECTION: Duration = Duration::from_millis(500);
    /// Long enough for a ping, the wait for answers and a write, on a loaded machine.
    const ELECTED_WITHIN: Duration = Duration::from_secs(20);

    async fn server() -> ApiServer {
        ApiServer::start_with(
            ApiServerOptions::new()
                .coordinated_leader_election()
                .coordinated_election_duration(ELECTION),
        )
        .await
        .expect("start the API test server")
    }

    /// One control-plane replica: an elector and its LeaseCandidate.
    struct Member {
        emulation: &'static str,
        replica: Replica,
        candidacy: CancellationToken,
        candidate: JoinHandle<()>,
    }

    impl Member {
        fn start(
            server: &ApiServer,
            checker: &Checker,
            id: &str,
            binary: &'static str,
            emulation: &'static str,
        ) -> Self {
            let config = Timing::short().config(LEASE, id).coordinated(true);
            Self::with_config(server, checker, config, binary, emulation)
        }

        fn with_config(
            server: &ApiServer,
            checker: &Checker,
            config: Config,
            binary: &'static str,
            emulation: &'static str,
        ) -> Self {
            let lock = KubeLeaseLock::new(server.client(), NS, LEASE);
            let candidate =
                LeaseCandidate::for_lock(&lock, &config.identity, binary, emulation).unwrap();
            let candidacy = CancellationToken::new();
            let token = candidacy.clone();
            let candidate = tokio::spawn(async move { candidate.run(token).await });
            let replica = Replica::new(lock, Link::direct(), config, checker, Work::polite());
            Self {
                emulation,
                replica,
                candidacy,
                candidate,
            }
        }

        async fn stop(self) {
            self.replica.stop().await;
            self.candidacy.cancel();
            self.candidate.await.unwrap();
        }
    }

    async fn holder(server: &ApiServer) -> Option<String> {
        let leases: kube::Api<Lease> = kube::Api::namespaced(server.client(), NS);
        leases
            .get_opt(LEASE)
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
    }

    /// Waits until one of `members` leads, and returns it.
    async fn leader(members: &[Member]) -> &Member {
        let until = Instant::now() + ELECTED_WITHIN;
        loop {
            if let Some(m) = members.iter().find(|m| m.replica.is_leader()) {
                return m;
            }
            assert!(Instant::now() < until, "nobody was elected");
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Three replicas on 1.34 are replaced one at a time by 1.35 ones, as a rolling
    /// upgrade of a control plane: while any replica emulates 1.34 one of them leads,
    /// and every hand-over is judged by the checker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rolling_upgrade_keeps_the_oldest_emulation_version_leading() {
        let server = server().await;
        let checker = Checker::new();
        let mut members: Vec<Member> = ["a", "b", "c"]
            .iter()
            .map(|id| Member::start(&server, &checker, id, "1.34.0", "1.34.0"))
            .collect();
        let first = leader(&members).await.replica.id.clone();
        for (step, old) in ["a", "b", "c"].iter().enumerate() {
            let i = members.iter().position(|m| m.replica.id == *old).unwrap();
            members.remove(i).stop().await;
            let new = format!("{old}-1.35");
            members.push(Member::start(&server, &checker, &new, "1.35.0", "1.35.0"));
            // Give the controller its ping round, then check who leads.
            sleep(ELECTION * 4).await;
            let led = leader(&members).await;
            let oldest = members.iter().map(|m| m.emulation).min().unwrap();
            assert_eq!(
                led.emulation, oldest,
                "step {step}: {} ({}) leads beside an older emulation version",
                led.replica.id, led.emulation
            );
        }
        let last = leader(&members).await.replica.id.clone();
        assert!(last.ends_with("-1.35"), "{last}");
        assert_ne!(first, last);
        for m in members {
            m.stop().await;
        }
        checker.report().assert_safe();
        let intervals = checker.intervals();
        assert!(intervals.len() >= 2, "no hand-over happened: {intervals:?}");
    }

    /// A newer replica leads while it is the only candidate; an older one joining is
    /// preferred, and the leader hands over to it once its own work has stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_candidate_joining_is_handed_the_lease() {
        let server = server().await;
        let checker = Checker::new();
        let new = Member::start(&server, &checker, "new", "1.35.0", "1.35.0");
        new.replica.wait_leading(ELECTED_WITHIN).await;
        let old = Member::start(&server, &checker, "old", "1.35.0", "1.34.0");
        old.replica.wait_leading(ELECTED_WITHIN).await;
        assert!(!new.replica.is_leader());
        assert_eq!(holder(&server).await.as_deref(), Some("old"));
        new.stop().await;
        old.stop().await;
        checker.report().assert_safe();
        assert_eq!(checker.intervals().len(), 2);
    }

    /// An uncoordinated replica takes the free Lease at once and keeps it; the
    /// controller can only mark the coordinated one preferred. When the uncoordinated
    /// one stops and releases, the coordinated one is named.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_coordinated_replica_beside_an_uncoordinated_one() {
        let server = server().await;
        let checker = Checker::new();
        let lock = KubeLeaseLock::new(server.client(), NS, LEASE);
        let plain = Replica::new(
            lock,
            Link::direct(),
            Timing::short().config(LEASE, "plain"),
            &checker,
            Work::polite(),
        );
        plain.wait_leading(ELECTED_WITHIN).await;
        let coordinated = Member::start(&server, &checker, "coordinated", "1.34.0", "1.34.0");
        sleep(ELECTION * 6).await;
        assert!(
            plain.is_leader(),
            "the uncoordinated replica keeps its lease"
        );
        assert!(!coordinated.replica.is_leader());
        plain.stop().await;
        coordinated.replica.wait_leading(ELECTED_WITHIN).await;
        coordinated.stop().await;
        checker.report().assert_safe();
    }

    /// A candidate that does not answer pings (its process is gone, its
    /// LeaseCandidate left behind and renewed a minute ago) is not picked, even with
    /// the older emulation version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_candidate_that_stops_answering_pings_is_not_picked() {
        use k8s_openapi::api::coordination::v1beta1::{
            LeaseCandidate as Object, LeaseCandidateSpec,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

        let server = server().await;
        let checker = Checker::new();
        let candidates: kube::Api<Object> = kube::Api::namespaced(server.client(), NS);
        let a_minute_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
        let silent = Object {
            metadata: ObjectMeta {
                name: Some("silent".into()),
                ..Default::default()
            },
            spec: Some(LeaseCandidateSpec {
                lease_name: LEASE.into(),
                binary_version: "1.34.0".into(),
                emulation_version: Some("1.34.0".into()),
                strategy: "OldestEmulationVersion".into(),
                renew_time: Some(MicroTime(a_minute_ago)),
                ping_time: None,
            }),
        };
        candidates
            .create(&Default::default(), &silent)
            .await
            .unwrap();
        let answering = Member::start(&server, &checker, "answering", "1.35.0", "1.35.0");
        answering.replica.wait_leading(ELECTED_WITHIN).await;
        assert_eq!(holder(&server).await.as_deref(), Some("answering"));
        let pinged = candidates.get("silent").await.unwrap().spec.unwrap();
        assert!(
            pinged.ping_time.is_some(),
            "the silent candidate was never pinged"
        );
        answering.stop().await;
        checker.report().assert_safe();
    }
}
