//! The Events recorder takes an election's events channel, so it serves every elector
//! alike: a `LeaderElector`, an `EtcdElection` and each shard of a `ShardedElector`
//! post "became leader" and "stopped leading" on their Lease, read back through the
//! test kit's API server.
#![cfg(feature = "kube")]

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use leaderelection::lock::kube::{EventRecorder, KubeLeaseLock, ResourceLockKind};
use leaderelection::{Config, LeaderElector, LeaseLock, ShardedElector};
use leaderelection_testkit::apiserver::ApiServer;
use leaderelection_testkit::checker::Checker;
use leaderelection_testkit::replica::{Elector, Link, Replica, Timing, Work};
use tokio::time::{sleep, Instant};

const NS: &str = "kube-system";

fn recorder(server: &ApiServer, object: &str) -> EventRecorder {
    EventRecorder::new(
        ResourceLockKind::Leases,
        server.client(),
        NS,
        object,
        "pod-a",
    )
}

fn config(name: &str) -> Config {
    Timing::short().config(name, "pod-a")
}

/// Runs `replica` until it leads, stops it, and waits until the Lease `object` carries
/// both of its Events, in order.
async fn leads_then_stops<E: Elector>(server: &ApiServer, object: &str, replica: Replica<E>) {
    replica.wait_leading(Duration::from_secs(20)).await;
    replica.stop().await;
    let events: Api<Event> = Api::namespaced(server.client(), NS);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut mine: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(object))
            .collect();
        mine.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
        let messages: Vec<_> = mine.iter().filter_map(|e| e.message.clone()).collect();
        if messages == ["pod-a became leader", "pod-a stopped leading"] {
            assert!(mine
                .iter()
                .all(|e| e.involved_object.kind.as_deref() == Some("Lease")));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{object}: the events are {messages:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_elector_posts_its_events() {
    let server = ApiServer::start().await.unwrap();
    let lock = KubeLeaseLock::new(server.client(), NS, "plain");
    let elector = LeaderElector::new(lock, config("plain")).unwrap();
    tokio::spawn(recorder(&server, "plain").run(elector.events()));
    let replica = Replica::spawn(
        "pod-a",
        elector,
        Link::direct(),
        &Checker::new(),
        Work::polite(),
        Timing::short().retry,
    );
    leads_then_stops(&server, "plain", replica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_of_a_sharded_elector_posts_its_events_on_its_lease() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let locks = move |name: &str| -> Box<dyn LeaseLock> {
        Box::new(KubeLeaseLock::new(client.clone(), NS, name))
    };
    let elector = ShardedElector::new(config("sharded"), 2, locks).unwrap();
    let objects: Vec<String> = (0..2).map(|s| elector.shard_lock_name(s)).collect();
    for (shard, object) in (0..2).zip(&objects) {
        tokio::spawn(recorder(&server, object).run(elector.shard_events(shard)));
    }
    let checkers = [Checker::new(), Checker::new()];
    let replica = Replica::spawn_sharded(
        "pod-a",
        elector.clone(),
        Link::direct(),
        &checkers,
        Work::polite(),
        Timing::short().retry,
    );
    // A lone replica owns every shard.
    let deadline = Instant::now() + Duration::from_secs(20);
    while elector.owned().len() < 2 {
        assert!(Instant::now() < deadline, "owns only {:?}", elector.owned());
        sleep(Duration::from_millis(20)).await;
    }
    leads_then_stops(&server, &objects[0], replica).await;
    leads_then_stops_seen(&server, &objects[1]).await;
}

/// The events of `object` once its elector has already stopped.
async fn leads_then_stops_seen(server: &ApiServer, object: &str) {
    let events: Api<Event> = Api::namespaced(server.client(), NS);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        let messages: Vec<_> = list
            .items
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(object))
            .filter_map(|e| e.message.clone())
            .collect();
        if messages.contains(&"pod-a became leader".to_owned())
            && messages.contains(&"pod-a stopped leading".to_owned())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{object}: the events are {messages:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_election_posts_its_events_on_the_components_lease() {
    use leaderelection::lock::etcd::{connect, EtcdOptions};
    use leaderelection::EtcdElection;
    use leaderelection_testkit::etcd::EtcdCluster;

    let etcd = tokio::task::block_in_place(|| EtcdCluster::start(1))
        .expect("start etcd (is etcd-server installed?)");
    let server = ApiServer::start().await.unwrap();
    let client = connect(&etcd.endpoints(), &EtcdOptions::new())
        .await
        .unwrap();
    let election = EtcdElection::new(client, "etcd-elected", config("etcd-elected")).unwrap();
    // The etcd election has no Kubernetes object of its own: its Events go on the
    // component's Lease, which a plain elector could hold too.
    KubeLeaseLock::new(server.client(), NS, "etcd-elected")
        .create(&leaderelection::LeaderElectionRecord {
            lease_duration_seconds: 15,
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::spawn(recorder(&server, "etcd-elected").run(election.events()));
    let replica = Replica::spawn(
        "pod-a",
        election,
        Link::direct(),
        &Checker::new(),
        Work::polite(),
        Timing::short().retry,
    );
    leads_then_stops(&server, "etcd-elected", replica).await;
}
