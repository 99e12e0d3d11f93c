//! `leaderelection::controller::run_controller`: a kube-runtime Controller on the test
//! kit's API server that reconciles only within its replica's terms. Every reconcile
//! is judged by the checker as the term's work: one interval per reconcile, with the
//! term's fencing token and validity, and a write to the fenced store.
#![cfg(feature = "kube")]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use leaderelection::controller::{run_controller, Leading};
use leaderelection::lock::kube::KubeLeaseLock;
use leaderelection::{
    LeaderElectionRecord, LeaderElector, LeaseLock, LockError, Version, Versioned, WatchStream,
};
use leaderelection_testkit::apiserver::ApiServer;
use leaderelection_testkit::checker::{Checker, Interval};
use leaderelection_testkit::faults::{Faults, FaultyLock};
use leaderelection_testkit::replica::Timing;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

const NS: &str = "default";

/// What the reconciles of one election (or of one shard) report to.
#[derive(Default)]
struct Judge {
    checker: Checker,
    /// Each term as its reconciles saw it, by fencing token: from the term's start to
    /// the end of its last reconcile.
    terms: Mutex<BTreeMap<u64, Interval>>,
    /// Reconciles that began when their term was already lost or no longer valid.
    outside: AtomicUsize,
    /// Reconciles of objects outside the term's shard range.
    foreign: AtomicUsize,
    /// Who reconciled, one entry a reconcile.
    reconciles: Mutex<Vec<String>>,
}

impl Judge {
    /// The terms, recorded in the checker for it to judge.
    fn report(&self) -> leaderelection_testkit::checker::Report {
        for interval in self.terms.lock().unwrap().values() {
            self.checker.record(interval.clone());
        }
        self.checker.report()
    }
}

/// The judges, one per shard (one in all without shards).
type Judges = Vec<Arc<Judge>>;

async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Leading<Judges>>) -> Result<Action, Infallible> {
    let leadership = &ctx.leadership;
    let judge = &ctx.context[ctx.shard.map_or(0, |(shard, _)| shard as usize)];
    if leadership.token().is_cancelled() || !leadership.is_valid() {
        judge.outside.fetch_add(1, Ordering::SeqCst);
    }
    if !ctx.owns(&*cm) {
        judge.foreign.fetch_add(1, Ordering::SeqCst);
    }
    let (identity, token) = (leadership.identity(), leadership.fencing_token());
    let _ = judge.checker.store().write(identity, token);
    // Some work per object, so that a loss can arrive mid-reconcile.
    sleep(Duration::from_millis(10)).await;
    let ended = Instant::now();
    {
        let mut terms = judge.terms.lock().unwrap();
        let term = terms
            .entry(token)
            .or_insert_with(|| Interval::new(identity, token, leadership.acquired_at()));
        term.valid_until = Some(leadership.valid_until());
        *term = term.clone().ended(ended);
    }
    judge.reconciles.lock().unwrap().push(identity.to_owned());
    Ok(Action::requeue(Duration::from_millis(200)))
}

/// Asserts what every judge saw: reconciles, none outside a term or a shard's
/// range, and terms that never overlap.
fn assert_judged(judges: &Judges) {
    for (shard, judge) in judges.iter().enumerate() {
        let reconciles = judge.reconciles.lock().unwrap().clone();
        assert!(!reconciles.is_empty(), "shard {shard} never reconciled");
        let outside = judge.outside.load(Ordering::SeqCst);
        assert_eq!(outside, 0, "shard {shard}: reconciles began outside a term");
        let foreign = judge.foreign.load(Ordering::SeqCst);
        assert_eq!(foreign, 0, "shard {shard}: another shard's objects");
        judge.report().assert_safe();
    }
}

/// Creates a ConfigMap every `every`, until aborted.
fn keep_creating(server: &ApiServer, every: Duration) -> JoinHandle<()> {
    let configmaps: Api<ConfigMap> = Api::namespaced(server.client(), NS);
    tokio::spawn(async move {
        for i in 0.. {
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("cm-{i}")),
                    ..Default::default()
                },
                ..Default::default()
            };
            let _ = configmaps.create(&PostParams::default(), &cm).await;
            sleep(every).await;
        }
    })
}

struct Member {
    shutdown: CancellationToken,
    run: JoinHandle<()>,
    elector: LeaderElector,
}

/// The Lease lock of these tests, with faults to inject.
fn faulty_lock(server: &ApiServer) -> (FaultyLock<KubeLeaseLock>, Faults) {
    let lock = FaultyLock::new(KubeLeaseLock::new(server.client(), NS, "controller"));
    let faults = lock.faults();
    (lock, faults)
}

fn start(server: &ApiServer, judges: &Judges, id: &str, lock: impl LeaseLock + 'static) -> Member {
    let client = server.client();
    let elector =
        LeaderElector::new(lock, Timing::short().config("controller", id)).expect("a valid config");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (elector, shutdown, judges) = (elector.clone(), shutdown.clone(), judges.clone());
        async move {
            run_controller(
                &elector,
                shutdown,
                move |_| {
                    // One reconcile at a time per replica, so that a term's
                    // reconciles follow each other.
                    Controller::new(
                        Api::<ConfigMap>::namespaced(client.clone(), NS),
                        watcher::Config::default(),
                    )
                    .with_config(controller::Config::default().concurrency(1))
                },
                reconcile,
                |_, e: &Infallible, _| match *e {},
                Arc::new(judges),
            )
            .await
        }
    });
    Member {
        shutdown,
        run,
        elector,
    }
}

async fn wait_leading(member: &Member) {
    let until = Instant::now() + Duration::from_secs(20);
    while !member.elector.is_leader() {
        assert!(Instant::now() < until, "not elected");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Two replicas; objects keep arriving. The leader is cut off from the Lease (its
/// controller's own client still works, so only the elector can stop it), then the
/// next one is stopped gracefully: no reconcile begins outside a term, and the
/// checker finds the reconciles of the terms never overlapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reconcile_runs_outside_a_term() {
    let server = ApiServer::start().await.expect("start the API test server");
    let judges: Judges = vec![Arc::default()];
    let creating = keep_creating(&server, Duration::from_millis(50));
    let (lock, a_faults) = faulty_lock(&server);
    let a = start(&server, &judges, "a", lock);
    wait_leading(&a).await;
    let b = start(&server, &judges, "b", faulty_lock(&server).0);
    sleep(Duration::from_secs(2)).await;

    a_faults.set_unavailable(true);
    wait_leading(&b).await;
    sleep(Duration::from_secs(2)).await;
    b.shutdown.cancel();
    b.run.await.unwrap();
    a_faults.set_unavailable(false);
    wait_leading(&a).await;
    sleep(Duration::from_secs(2)).await;
    a.shutdown.cancel();
    a.run.await.unwrap();
    creating.abort();

    let reconciles = judges[0].reconciles.lock().unwrap().clone();
    for id in ["a", "b"] {
        assert!(
            reconciles.iter().any(|r| r == id),
            "{id} never reconciled: {reconciles:?}"
        );
    }
    assert_judged(&judges);
}

/// A lock whose next call, once `stall` is set, holds its thread for `STALL` and then
/// fails: as when a blocking call elsewhere holds the worker thread the elector's task
/// waits on. The term's validity runs out before the elector can end it.
#[derive(Debug)]
struct StallingLock {
    inner: KubeLeaseLock,
    stall: Arc<AtomicBool>,
}

const STALL: Duration = Duration::from_secs(3);

impl StallingLock {
    fn enter(&self) -> Result<(), LockError> {
        if !self.stall.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        std::thread::sleep(STALL);
        Err(LockError::Unavailable {
            backend: "kubernetes",
            source: "stalled".into(),
        })
    }
}

#[async_trait::async_trait]
impl LeaseLock for StallingLock {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.enter()?;
        self.inner.get().await
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        self.enter()?;
        self.inner.create(record).await
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        self.enter()?;
        self.inner.update(record, expected).await
    }

    fn watch(&self) -> Option<WatchStream> {
        self.inner.watch()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The elector's thread is held past the term's validity, so the term is cancelled
/// late; objects keep arriving meanwhile. The controller must stop starting
/// reconciles when the validity ends, not when the elector gets round to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn no_reconcile_begins_past_the_validity_while_the_elector_is_held_up() {
    let server = ApiServer::start().await.expect("start the API test server");
    let judges: Judges = vec![Arc::default()];
    let creating = keep_creating(&server, Duration::from_millis(20));
    let stall = Arc::new(AtomicBool::new(false));
    let lock = StallingLock {
        inner: KubeLeaseLock::new(server.client(), NS, "controller"),
        stall: stall.clone(),
    };
    let a = start(&server, &judges, "a", lock);
    wait_leading(&a).await;
    sleep(Duration::from_secs(1)).await;
    stall.store(true, Ordering::SeqCst);
    sleep(STALL + Duration::from_secs(1)).await;
    assert!(!stall.load(Ordering::SeqCst), "the lock was never called");
    a.shutdown.cancel();
    a.run.await.unwrap();
    creating.abort();
    assert_judged(&judges);
}

/// Two sharded replicas, four shards, each shard's controller built on the shard's
/// objects only (`shard_events`): every reconcile is of an object in its term's
/// range, none begins outside its term, and each shard's terms are judged apart. One
/// replica leaves gracefully; its shards move to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_per_owned_shard_sees_only_its_range() {
    use kube::runtime::{reflector, WatchStreamExt};
    use leaderelection::controller::{run_sharded_controller, shard_events};
    use leaderelection::ShardedElector;

    const SHARDS: u32 = 4;
    let server = ApiServer::start().await.expect("start the API test server");
    let judges: Judges = (0..SHARDS).map(|_| Arc::default()).collect();
    let creating = keep_creating(&server, Duration::from_millis(20));
    let start = |id: &str| {
        let client = server.client();
        let locks = client.clone();
        let elector = ShardedElector::new(
            Timing::short().config("sharded-controller", id),
            SHARDS,
            move |name: &str| {
                Box::new(KubeLeaseLock::new(locks.clone(), NS, name)) as Box<dyn LeaseLock>
            },
        )
        .expect("a valid config");
        let shutdown = CancellationToken::new();
        let judges = judges.clone();
        let run = tokio::spawn({
            let (elector, shutdown) = (elector.clone(), shutdown.clone());
            async move {
                run_sharded_controller(
                    &elector,
                    shutdown,
                    move |_, range, _| {
                        let api = Api::<ConfigMap>::namespaced(client.clone(), NS);
                        let (reader, writer) = reflector::store();
                        let events = shard_events(api, watcher::Config::default(), range);
                        Controller::for_stream(reflector(writer, events).applied_objects(), reader)
                            .with_config(controller::Config::default().concurrency(1))
                    },
                    reconcile,
                    |_, e: &Infallible, _| match *e {},
                    Arc::new(judges),
                )
                .await
            }
        });
        (elector, shutdown, run)
    };
    let (a, a_stop, a_run) = start("a");
    let (b, b_stop, b_run) = start("b");
    let until = Instant::now() + Duration::from_secs(30);
    while !(a.owned().len() == 2 && b.owned().len() == 2) {
        let (a, b) = (a.owned(), b.owned());
        assert!(
            Instant::now() < until,
            "shards never balanced: a {a:?}, b {b:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_secs(2)).await;
    b_stop.cancel();
    b_run.await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while a.owned().len() < SHARDS as usize {
        assert!(
            Instant::now() < until,
            "a never took b's shards: {:?}",
            a.owned()
        );
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_secs(2)).await;
    a_stop.cancel();
    a_run.await.unwrap();
    creating.abort();
    assert_judged(&judges);
}
