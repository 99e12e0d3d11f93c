//! The Kubernetes API test server, through the real `kube` client and `kubectl`.
#![cfg(feature = "kube")]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::Status;
use leaderelection_testkit::apiserver::{
    ApiServer, ApiServerOptions, Fault, Kubectl, PolicyRule, User,
};

/// Generous bound for anything that should happen at once.
const SOON: Duration = Duration::from_secs(10);

fn lease(name: &str, holder: &str) -> Lease {
    let mut lease = Lease::default();
    lease.metadata.name = Some(name.into());
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        renew_time: Some(MicroTime(jiff::Timestamp::now())),
        ..LeaseSpec::default()
    });
    lease
}

fn status(err: kube::Error) -> Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv(lease: &Lease) -> u64 {
    lease
        .metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .expect("a numeric resourceVersion")
}

#[tokio::test]
async fn lease_crud_with_kube_client() {
    let server = ApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");

    let created = leases
        .create(&PostParams::default(), &lease("sched", "a"))
        .await
        .unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("kube-system"));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let got = leases.get("sched").await.unwrap();
    assert_eq!(got, created);

    let again = status(
        leases
            .create(&PostParams::default(), &lease("sched", "b"))
            .await
            .unwrap_err(),
    );
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));

    let mut renewed = got.clone();
    renewed.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let replaced = leases
        .replace("sched", &PostParams::default(), &renewed)
        .await
        .unwrap();
    assert!(rv(&replaced) > rv(&got));
    assert_eq!(replaced.metadata.uid, got.metadata.uid);

    // The old resourceVersion is stale now.
    let stale = status(
        leases
            .replace("sched", &PostParams::default(), &renewed)
            .await
            .unwrap_err(),
    );
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
    assert!(
        stale.message.contains("the object has been modified"),
        "{}",
        stale.message
    );

    let patch = serde_json::json!({"spec": {"leaseTransitions": 4}});
    let patched = leases
        .patch("sched", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(patched.spec.as_ref().unwrap().lease_transitions, Some(4));
    assert_eq!(
        patched.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("b")
    );
    assert!(rv(&patched) > rv(&replaced));

    let listed = leases
        .list(&ListParams::default().fields("metadata.name=sched"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.metadata.resource_version.is_some());
    let none = leases
        .list(
            &ListParams::default()
                .fields("metadata.name=other")
                .labels("a=b"),
        )
        .await
        .unwrap();
    assert!(none.items.is_empty());

    leases
        .delete("sched", &DeleteParams::default())
        .await
        .unwrap();
    let gone = status(leases.get("sched").await.unwrap_err());
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        gone.message,
        "leases.coordination.k8s.io \"sched\" not found"
    );
    assert_eq!(leases.get_opt("sched").await.unwrap(), None);
}

#[tokio::test]
async fn invalid_objects_are_refused_with_422() {
    let server = ApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    let mut bad = lease("Bad_Name", "a");
    bad.spec.as_mut().unwrap().lease_duration_seconds = Some(-1);
    let err = status(
        leases
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message
            .starts_with("Lease.coordination.k8s.io \"Bad_Name\" is invalid: ["),
        "{}",
        err.message
    );
    assert!(err
        .message
        .contains("spec.leaseDurationSeconds: Invalid value: -1: must be greater than 0"));
}

#[tokio::test]
async fn endpoints_configmaps_and_events_are_served() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ns1");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("lock".into());
    cm.metadata.annotations = Some(
        [(
            "control-plane.alpha.kubernetes.io/leader".to_string(),
            "{}".to_string(),
        )]
        .into(),
    );
    cms.create(&PostParams::default(), &cm).await.unwrap();
    // ConfigMaps are not created by a PUT.
    let mut other = cm.clone();
    other.metadata.name = Some("missing".into());
    let err = status(
        cms.replace("missing", &PostParams::default(), &other)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);

    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "ns2");
    let mut ep = Endpoints::default();
    ep.metadata.name = Some("lock".into());
    // Endpoints are.
    eps.replace("lock", &PostParams::default(), &ep)
        .await
        .unwrap();
    assert!(eps.get("lock").await.is_ok());

    let events: Api<Event> = Api::namespaced(client.clone(), "ns1");
    let mut ev = Event::default();
    ev.metadata.generate_name = Some("lock.".into());
    ev.reason = Some("LeaderElection".into());
    ev.message = Some("a became leader".into());
    let created = events.create(&PostParams::default(), &ev).await.unwrap();
    let name = created.metadata.name.unwrap();
    assert!(name.starts_with("lock.") && name.len() == 10, "{name}");

    // The same event through events.k8s.io/v1, stored once.
    let v1: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "ns1");
    let seen = v1.get(&name).await.unwrap();
    assert_eq!(seen.note.as_deref(), Some("a became leader"));

    // Every kind in every namespace: the all-namespaces list sees them.
    let all: Api<ConfigMap> = Api::all(client);
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

type Events = futures::stream::BoxStream<'static, kube::Result<WatchEvent<Lease>>>;

async fn next(stream: &mut Events) -> WatchEvent<Lease> {
    tokio::time::timeout(SOON, stream.try_next())
        .await
        .expect("an event")
        .unwrap()
        .expect("open")
}

#[tokio::test]
async fn watch_follows_changes_and_resumes_from_a_resource_version() {
    let server = ApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    let first = leases
        .create(&PostParams::default(), &lease("a", "x"))
        .await
        .unwrap();
    leases
        .create(&PostParams::default(), &lease("other", "x"))
        .await
        .unwrap();

    let params = WatchParams::default().fields("metadata.name=a").timeout(30);
    let mut stream = leases
        .watch(&params, &rv(&first).to_string())
        .await
        .unwrap()
        .boxed();
    let mut changed = first.clone();
    changed.spec.as_mut().unwrap().holder_identity = Some("y".into());
    let changed = leases
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    leases.delete("a", &DeleteParams::default()).await.unwrap();

    match next(&mut stream).await {
        WatchEvent::Modified(l) => assert_eq!(l, changed),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    match next(&mut stream).await {
        WatchEvent::Deleted(l) => assert_eq!(l.metadata.name.as_deref(), Some("a")),
        other => panic!("expected DELETED, got {other:?}"),
    }

    // Resuming from the first version replays what happened after it.
    let mut replay = leases
        .watch(&params, &rv(&first).to_string())
        .await
        .unwrap()
        .boxed();
    assert!(matches!(next(&mut replay).await, WatchEvent::Modified(_)));
    assert!(matches!(next(&mut replay).await, WatchEvent::Deleted(_)));

    // From "0", the current state comes first.
    let mut from_now = leases
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .unwrap()
        .boxed();
    match next(&mut from_now).await {
        WatchEvent::Added(l) => assert_eq!(l.metadata.name.as_deref(), Some("other")),
        other => panic!("expected ADDED, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_410_gone() {
    let server = ApiServer::start_with(ApiServerOptions::new().watch_history(3))
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    let first = leases
        .create(&PostParams::default(), &lease("a", "x"))
        .await
        .unwrap();
    for i in 0..5 {
        leases
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"leaseTransitions": i}})),
            )
            .await
            .unwrap();
    }
    let mut stream = leases
        .watch(&WatchParams::default(), &rv(&first).to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(SOON, stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_sends_bookmarks_and_ends_at_its_timeout() {
    let options = ApiServerOptions::new().bookmark_interval(Duration::from_millis(100));
    let server = ApiServer::start_with(options).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    let created = leases
        .create(&PostParams::default(), &lease("a", "x"))
        .await
        .unwrap();
    let params = WatchParams::default().timeout(1);
    let events: Vec<_> = tokio::time::timeout(
        SOON,
        leases
            .watch(&params, &rv(&created).to_string())
            .await
            .unwrap()
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ends after timeoutSeconds");
    assert!(!events.is_empty());
    for event in events {
        match event.unwrap() {
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.resource_version, rv(&created).to_string())
            }
            other => panic!("expected only bookmarks, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn tokens_are_checked_401_and_403() {
    let options = ApiServerOptions::new().token(
        "sched-token",
        User::new("scheduler").allow(
            PolicyRule::new(["get", "update", "watch", "list"], ["leases"])
                .in_namespace("kube-system")
                .named("kube-scheduler"),
        ),
    );
    let server = ApiServer::start_with(options).await.unwrap();
    let admin: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    admin
        .create(&PostParams::default(), &lease("kube-scheduler", "a"))
        .await
        .unwrap();
    admin
        .create(&PostParams::default(), &lease("other", "a"))
        .await
        .unwrap();

    let stranger: Api<Lease> = Api::namespaced(server.client_with_token("nope"), "kube-system");
    let err = status(stranger.get("kube-scheduler").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (401, "Unauthorized"));

    let sched: Api<Lease> = Api::namespaced(server.client_with_token("sched-token"), "kube-system");
    let mine = sched.get("kube-scheduler").await.unwrap();
    sched
        .replace("kube-scheduler", &PostParams::default(), &mine)
        .await
        .unwrap();
    let pinned = ListParams::default().fields("metadata.name=kube-scheduler");
    assert_eq!(sched.list(&pinned).await.unwrap().items.len(), 1);
    let err = status(sched.get("other").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        err.message,
        "leases.coordination.k8s.io \"other\" is forbidden: User \"scheduler\" cannot get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-system\""
    );
    let err = status(
        sched
            .delete("kube-scheduler", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 403);
    let err = status(
        sched
            .create(&PostParams::default(), &lease("new", "a"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 403);
    let elsewhere: Api<Lease> = Api::namespaced(server.client_with_token("sched-token"), "default");
    assert_eq!(
        status(elsewhere.get("kube-scheduler").await.unwrap_err()).code,
        403
    );
    assert!(server.requests().user("scheduler") >= 7);
}

#[tokio::test]
async fn faults_inject_errors_and_latency() {
    let server = ApiServer::start().await.unwrap();
    let mut config = server.config();
    // Without kube's own retries, one call is one request.
    config.default_retry = false;
    let leases: Api<Lease> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    leases
        .create(&PostParams::default(), &lease("a", "x"))
        .await
        .unwrap();

    server
        .faults()
        .inject(Fault::error(500).times(2).for_verb("get"));
    assert_eq!(status(leases.get("a").await.unwrap_err()).code, 500);
    assert!(
        leases.list(&ListParams::default()).await.is_ok(),
        "a list is not a get"
    );
    assert_eq!(status(leases.get("a").await.unwrap_err()).code, 500);
    assert!(leases.get("a").await.is_ok(), "the faults are used up");
    server.faults().fail_next(503, 1);
    let err = status(leases.get("a").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (503, "ServiceUnavailable"));
    assert!(leases.get("a").await.is_ok());

    server.faults().set_latency(Duration::from_millis(300));
    let started = std::time::Instant::now();
    leases.get("a").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.faults().clear();

    server
        .faults()
        .inject(Fault::error(429).for_token("someone-else"));
    assert!(
        leases.get("a").await.is_ok(),
        "faults for another token do not apply"
    );
}

#[tokio::test]
async fn restart_drops_connections_and_keeps_data() {
    let mut server = ApiServer::start().await.unwrap();
    let url = server.url();
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    let created = leases
        .create(&PostParams::default(), &lease("a", "x"))
        .await
        .unwrap();
    let mut stream = leases
        .watch(
            &WatchParams::default().timeout(300),
            &rv(&created).to_string(),
        )
        .await
        .unwrap()
        .boxed();

    server.restart().await;
    assert_eq!(server.url(), url);
    // The watch connection was dropped: the stream ends or fails.
    let end = tokio::time::timeout(SOON, stream.next())
        .await
        .expect("the watch is cut");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");

    let fresh: Api<Lease> = Api::namespaced(server.client(), "default");
    assert_eq!(fresh.get("a").await.unwrap(), created);

    server.stop_serving().await;
    assert!(fresh.get("a").await.is_err());
    server.resume_serving().await.unwrap();
    assert_eq!(fresh.get("a").await.unwrap(), created);
}

#[tokio::test]
async fn kubectl_gets_describes_and_deletes_a_lease() {
    // kubectl sends credentials only over TLS.
    let server = ApiServer::start_with(ApiServerOptions::new().tls().auth())
        .await
        .unwrap();
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let kubectl = Kubectl::new(&server).unwrap();

    let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    let created = leases
        .create(
            &PostParams::default(),
            &lease("kube-scheduler", "node-a_4f2c"),
        )
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(server.client(), "kube-system");
    let mut event = Event::default();
    event.metadata.name = Some("kube-scheduler.17a".into());
    event.involved_object.kind = Some("Lease".into());
    event.involved_object.name = Some("kube-scheduler".into());
    event.involved_object.namespace = Some("kube-system".into());
    event.involved_object.uid = created.metadata.uid.clone();
    event.reason = Some("LeaderElection".into());
    event.message = Some("node-a_4f2c became leader".into());
    event.type_ = Some("Normal".into());
    events.create(&PostParams::default(), &event).await.unwrap();

    let table = kubectl.ok(&["get", "lease", "-n", "kube-system"]).await;
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "HOLDER", "AGE"], "{table}");
    assert_eq!(lines[1][..2], ["kube-scheduler", "node-a_4f2c"], "{table}");

    let holder = kubectl
        .ok(&[
            "get",
            "lease",
            "kube-scheduler",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await;
    assert_eq!(holder, "node-a_4f2c");

    let described = kubectl
        .ok(&["describe", "lease", "kube-scheduler", "-n", "kube-system"])
        .await;
    assert!(
        described.contains("Holder Identity:         node-a_4f2c"),
        "{described}"
    );
    assert!(
        described.contains("Lease Duration Seconds:  15"),
        "{described}"
    );
    assert!(
        described.contains("node-a_4f2c became leader"),
        "the lease's events: {described}"
    );

    let deleted = kubectl
        .ok(&["delete", "lease", "kube-scheduler", "-n", "kube-system"])
        .await;
    assert_eq!(
        deleted.trim(),
        "lease.coordination.k8s.io \"kube-scheduler\" deleted"
    );
    assert_eq!(leases.get_opt("kube-scheduler").await.unwrap(), None);
    let by_kubectl = server
        .requests()
        .count_where(|k| k.path.ends_with("/leases/kube-scheduler"));
    assert!(by_kubectl >= 3, "{:?}", server.requests());
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use leaderelection_testkit::etcd::EtcdCluster;

    async fn cluster(size: usize) -> EtcdCluster {
        tokio::task::spawn_blocking(move || EtcdCluster::start(size))
            .await
            .unwrap()
            .expect("etcd must be on PATH for this test")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_over_one_etcd_share_objects_and_watches() {
        let etcd = cluster(3).await;
        let options = || ApiServerOptions::new().etcd(etcd.endpoints(), "/registry");
        let one = ApiServer::start_with(options()).await.unwrap();
        let two = ApiServer::start_with(options()).await.unwrap();
        let on_one: Api<Lease> = Api::namespaced(one.client(), "kube-system");
        let on_two: Api<Lease> = Api::namespaced(two.client(), "kube-system");

        let created = on_one
            .create(&PostParams::default(), &lease("sched", "a"))
            .await
            .unwrap();
        assert_eq!(on_two.get("sched").await.unwrap(), created);
        let err = status(
            on_two
                .create(&PostParams::default(), &lease("sched", "b"))
                .await
                .unwrap_err(),
        );
        assert_eq!(err.reason, "AlreadyExists");

        let params = WatchParams::default()
            .fields("metadata.name=sched")
            .timeout(60);
        let mut watch_two: Events = on_two
            .watch(&params, &rv(&created).to_string())
            .await
            .unwrap()
            .boxed();

        // A write through one server makes the other's resourceVersion stale.
        let mut taken = created.clone();
        taken.spec.as_mut().unwrap().holder_identity = Some("b".into());
        let taken = on_two
            .replace("sched", &PostParams::default(), &taken)
            .await
            .unwrap();
        let err = status(
            on_one
                .replace("sched", &PostParams::default(), &created)
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));

        match next(&mut watch_two).await {
            WatchEvent::Modified(l) => assert_eq!(l, taken),
            other => panic!("expected MODIFIED, got {other:?}"),
        }
        // The version is etcd's revision: the other server lists at it or later.
        let listed = on_one.list(&ListParams::default()).await.unwrap();
        let list_rv: u64 = listed.metadata.resource_version.unwrap().parse().unwrap();
        assert!(list_rv >= rv(&taken));

        // A change made through the first server reaches a watch on the second.
        on_one
            .delete("sched", &DeleteParams::default())
            .await
            .unwrap();
        match next(&mut watch_two).await {
            WatchEvent::Deleted(l) => assert_eq!(l.metadata.name.as_deref(), Some("sched")),
            other => panic!("expected DELETED, got {other:?}"),
        }

        // kube-apiserver's layout: one key per object under the prefix.
        let mut client = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap();
        on_one
            .create(&PostParams::default(), &lease("sched", "c"))
            .await
            .unwrap();
        let got = client
            .get("/registry/leases/kube-system/sched", None)
            .await
            .unwrap();
        let stored: serde_json::Value = serde_json::from_slice(got.kvs()[0].value()).unwrap();
        assert_eq!(stored["spec"]["holderIdentity"], "c");
        let on_two_now = on_two.get("sched").await.unwrap();
        assert_eq!(rv(&on_two_now), got.kvs()[0].mod_revision() as u64);

        // After etcd compacts its history, resuming from before it is 410 Gone.
        let revision = got.header().unwrap().revision();
        client.compact(revision, None).await.unwrap();
        let mut stale: Events = on_one
            .watch(&params, &rv(&created).to_string())
            .await
            .unwrap()
            .boxed();
        match next(&mut stale).await {
            WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
            other => panic!("expected a 410 ERROR event, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_storage_survives_a_server_restart_and_reports_etcd_down() {
        let mut etcd = cluster(1).await;
        let mut server =
            ApiServer::start_with(ApiServerOptions::new().etcd(etcd.endpoints(), "/test"))
                .await
                .unwrap();
        let leases: Api<Lease> = Api::namespaced(server.client(), "default");
        let created = leases
            .create(&PostParams::default(), &lease("a", "x"))
            .await
            .unwrap();
        server.restart().await;
        let leases: Api<Lease> = Api::namespaced(server.client(), "default");
        assert_eq!(leases.get("a").await.unwrap(), created);

        tokio::task::spawn_blocking(move || {
            etcd.kill(0).unwrap();
            etcd
        })
        .await
        .unwrap();
        let err = status(leases.get("a").await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (500, "ServerTimeout"));
    }
}

#[tokio::test]
async fn a_client_from_before_a_restart_works_again() {
    let mut server = ApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    leases
        .create(&PostParams::default(), &lease("a", "x"))
        .await
        .unwrap();
    server.restart().await;
    // A pooled connection may be found dead once; then the client connects anew.
    let mut failures = 0;
    while leases.get("a").await.is_err() {
        failures += 1;
        assert!(failures < 3, "the client reconnects");
    }
}

#[tokio::test]
async fn streaming_lists_send_the_state_then_a_marked_bookmark() {
    let server = ApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    let created = leases
        .create(&PostParams::default(), &lease("a", "x"))
        .await
        .unwrap();
    let params = WatchParams::streaming_lists().timeout(30);
    let mut stream: Events = leases.watch(&params, "0").await.unwrap().boxed();
    match next(&mut stream).await {
        WatchEvent::Added(l) => assert_eq!(l, created),
        other => panic!("expected ADDED, got {other:?}"),
    }
    match next(&mut stream).await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str),
                Some("true")
            );
            assert_eq!(b.metadata.resource_version, rv(&created).to_string());
        }
        other => panic!("expected the initial-events-end BOOKMARK, got {other:?}"),
    }
}

/// Server-side apply and strategic merge patch, as kube-apiserver does them.
mod apply {
    use super::*;
    use serde_json::{json, Value};

    const NS: &str = "default";

    fn lease_config(holder: &str, duration: Option<i64>) -> Value {
        let mut spec = json!({ "holderIdentity": holder });
        if let Some(d) = duration {
            spec["leaseDurationSeconds"] = json!(d);
        }
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": "sched" },
            "spec": spec,
        })
    }

    /// (manager, operation, fieldsV1) of each managedFields entry.
    fn managed<K: serde::Serialize>(object: &K) -> Vec<(String, String, Value)> {
        let object = serde_json::to_value(object).unwrap();
        object["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap_or("").to_string(),
                    e["operation"].as_str().unwrap_or("").to_string(),
                    e["fieldsV1"].clone(),
                )
            })
            .collect()
    }

    /// One plain HTTP/1.1 request to a server without TLS or tokens: the status code
    /// and the JSON body, for what the kube client does not show (201, query errors).
    async fn raw(
        server: &ApiServer,
        method: &str,
        path: &str,
        ctype: &str,
        body: &str,
    ) -> (u16, Value) {
        let head = format!("{method} {path} HTTP/1.1\r\nContent-Type: {ctype}");
        let (head, body) = super::raw_request(server, &head, body.as_bytes()).await;
        let code = head[9..12].parse().unwrap();
        (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn apply_creates_owns_conflicts_forces_and_prunes() {
        let server = ApiServer::start().await.unwrap();
        let leases: Api<Lease> = Api::namespaced(server.client(), NS);

        let created = leases
            .patch(
                "sched",
                &PatchParams::apply("one"),
                &Patch::Apply(lease_config("a", Some(15))),
            )
            .await
            .unwrap();
        assert_eq!(
            created.spec.as_ref().unwrap().holder_identity.as_deref(),
            Some("a")
        );
        let entry =
            serde_json::to_value(&created.metadata.managed_fields.as_ref().unwrap()[0]).unwrap();
        assert_eq!(entry["manager"], "one");
        assert_eq!(entry["operation"], "Apply");
        assert_eq!(entry["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(entry["fieldsType"], "FieldsV1");
        assert_eq!(
            entry["fieldsV1"],
            json!({"f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}}})
        );
        assert!(entry["time"].as_str().unwrap().ends_with('Z'));

        // Another manager applying another holder: a conflict, worded as kube-apiserver.
        let conflict = status(
            leases
                .patch(
                    "sched",
                    &PatchParams::apply("two"),
                    &Patch::Apply(lease_config("b", None)),
                )
                .await
                .unwrap_err(),
        );
        assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
        assert_eq!(
            conflict.message,
            "Apply failed with 1 conflict: conflict with \"one\": .spec.holderIdentity"
        );
        let cause = &conflict.details.as_ref().unwrap().causes[0];
        assert_eq!(
            (
                cause.reason.as_str(),
                cause.message.as_str(),
                cause.field.as_str()
            ),
            (
                "FieldManagerConflict",
                "conflict with \"one\"",
                ".spec.holderIdentity"
            )
        );
        assert_eq!(leases.get("sched").await.unwrap(), created);

        // The same value is shared ownership, not a conflict.
        let shared = leases
            .patch(
                "sched",
                &PatchParams::apply("two"),
                &Patch::Apply(lease_config("a", None)),
            )
            .await
            .unwrap();
        assert_eq!(shared.spec, created.spec);
        assert_eq!(managed(&shared).len(), 2);

        // Force moves the field: "one" keeps only the duration.
        let forced = leases
            .patch(
                "sched",
                &PatchParams::apply("three").force(),
                &Patch::Apply(lease_config("c", None)),
            )
            .await
            .unwrap();
        assert_eq!(
            forced.spec.as_ref().unwrap().holder_identity.as_deref(),
            Some("c")
        );
        assert_eq!(
            managed(&forced),
            vec![
                (
                    "one".into(),
                    "Apply".into(),
                    json!({"f:spec": {"f:leaseDurationSeconds": {}}})
                ),
                (
                    "three".into(),
                    "Apply".into(),
                    json!({"f:spec": {"f:holderIdentity": {}}})
                ),
            ]
        );

        // "one" stops applying the duration, which nobody else owns: it is removed.
        let pruned = leases
            .patch(
                "sched",
                &PatchParams::apply("one"),
                &Patch::Apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "sched"}})),
            )
            .await
            .unwrap();
        assert_eq!(pruned.spec.as_ref().unwrap().lease_duration_seconds, None);
        assert_eq!(
            pruned.spec.as_ref().unwrap().holder_identity.as_deref(),
            Some("c")
        );

        // An update by another manager owns what it changed, named with its version.
        let renew = PatchParams {
            field_manager: Some("renewer".into()),
            ..PatchParams::default()
        };
        leases
            .patch(
                "sched",
                &renew,
                &Patch::Merge(json!({"spec": {"holderIdentity": "d"}})),
            )
            .await
            .unwrap();
        let conflict = status(
            leases
                .patch(
                    "sched",
                    &PatchParams::apply("three"),
                    &Patch::Apply(lease_config("c", None)),
                )
                .await
                .unwrap_err(),
        );
        assert_eq!(
            conflict.message,
            "Apply failed with 1 conflict: conflict with \"renewer\" using coordination.k8s.io/v1: .spec.holderIdentity"
        );

        // resourceVersion in a configuration is a precondition.
        let mut stale = lease_config("d", None);
        stale["metadata"]["resourceVersion"] = json!(created.metadata.resource_version);
        let stale = status(
            leases
                .patch(
                    "sched",
                    &PatchParams::apply("renewer"),
                    &Patch::Apply(stale),
                )
                .await
                .unwrap_err(),
        );
        assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
        assert!(
            stale.message.contains("the object has been modified"),
            "{}",
            stale.message
        );

        // dryRun answers with the result and stores nothing.
        let before = leases.get("sched").await.unwrap();
        let dry = leases
            .patch(
                "sched",
                &PatchParams::apply("three").force().dry_run(),
                &Patch::Apply(lease_config("e", None)),
            )
            .await
            .unwrap();
        assert_eq!(
            dry.spec.as_ref().unwrap().holder_identity.as_deref(),
            Some("e")
        );
        assert_eq!(leases.get("sched").await.unwrap(), before);
    }

    #[tokio::test]
    async fn apply_answers_201_on_create_and_refuses_bad_requests() {
        let server = ApiServer::start().await.unwrap();
        let path = "/api/v1/namespaces/default/configmaps/cfg";
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  a: \"1\"\n";
        let (code, body) = raw(&server, "PATCH", path, "application/apply-patch+yaml", yaml).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(
            body["message"],
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        );
        let apply_path = format!("{path}?fieldManager=ops");
        let (code, body) = raw(
            &server,
            "PATCH",
            &apply_path,
            "application/apply-patch+yaml",
            yaml,
        )
        .await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["data"], json!({"a": "1"}));
        assert_eq!(
            body["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:data": {"f:a": {}}})
        );
        let (code, _) = raw(
            &server,
            "PATCH",
            &apply_path,
            "application/apply-patch+yaml",
            yaml,
        )
        .await;
        assert_eq!(code, 200);

        let (code, body) = raw(
            &server,
            "PATCH",
            &format!("{path}?force=true"),
            "application/merge-patch+json",
            "{}",
        )
        .await;
        assert_eq!((code, body["message"].as_str()), (422, Some("PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch")));
        let wrong = "apiVersion: v2\nkind: ConfigMap\nmetadata:\n  name: cfg\n";
        let (code, body) = raw(
            &server,
            "PATCH",
            &apply_path,
            "application/apply-patch+yaml",
            wrong,
        )
        .await;
        assert_eq!(code, 400);
        assert_eq!(
            body["message"],
            "Incorrect version specified in apply patch. Specified patch version: v2, expected: v1"
        );
        let junk = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  managedFields: []\n";
        let (code, body) = raw(
            &server,
            "PATCH",
            &apply_path,
            "application/apply-patch+yaml",
            junk,
        )
        .await;
        assert_eq!(
            (code, body["message"].as_str()),
            (400, Some("metadata.managedFields must be nil"))
        );
        let (code, _) = raw(
            &server,
            "PATCH",
            &apply_path,
            "application/apply-patch+yaml",
            "a: [",
        )
        .await;
        assert_eq!(code, 400);
        let long = format!("{path}?fieldManager={}", "m".repeat(129));
        let (code, body) = raw(
            &server,
            "PATCH",
            &long,
            "application/apply-patch+yaml",
            yaml,
        )
        .await;
        assert_eq!(code, 422);
        assert_eq!(
            body["message"],
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes"
        );
    }

    #[tokio::test]
    async fn every_kind_takes_apply_and_events_own_fields_across_versions() {
        let server = ApiServer::start().await.unwrap();
        let client = server.client();
        let eps: Api<Endpoints> = Api::namespaced(client.clone(), NS);
        let ep = eps
            .patch(
                "sched",
                &PatchParams::apply("e"),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "sched", "annotations": {"x": "1"}}})),
            )
            .await
            .unwrap();
        assert_eq!(
            managed(&ep)[0].2,
            json!({"f:metadata": {"f:annotations": {"f:x": {}}}})
        );

        let v1: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
        v1.patch(
            "ev",
            &PatchParams::apply("recorder"),
            &Patch::Apply(json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "ev"},
                                 "eventTime": "2025-01-01T00:00:00.000000Z", "note": "became leader",
                                 "reportingController": "c", "reportingInstance": "i", "action": "a", "reason": "r", "type": "Normal"})),
        )
        .await
        .unwrap();
        // The core version calls `note` `message`: the owner is the same, and the field
        // is named in the owner's version, as structured-merge-diff compares there.
        let core: Api<Event> = Api::namespaced(client, NS);
        let conflict = status(
            core.patch(
                "ev",
                &PatchParams::apply("other"),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "ev"}, "message": "lost"})),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(
            conflict.message,
            "Apply failed with 1 conflict: conflict with \"recorder\": .note"
        );
    }

    #[tokio::test]
    async fn managed_fields_survive_junk_and_reset_on_an_empty_list() {
        let server = ApiServer::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(server.client(), NS);
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("c".into());
        cm.data = Some([("k".to_string(), "v".to_string())].into());
        let pp = PostParams {
            field_manager: Some("creator".into()),
            ..PostParams::default()
        };
        let created = cms.create(&pp, &cm).await.unwrap();
        assert_eq!(
            managed(&created),
            vec![(
                "creator".into(),
                "Update".into(),
                json!({"f:data": {".": {}, "f:k": {}}})
            )]
        );
        let mut body = serde_json::to_value(&created).unwrap();
        body["metadata"]["managedFields"] =
            json!([{"manager": "liar", "operation": "Apply", "fieldsType": "FieldsV9"}]);
        body["data"]["l"] = json!("w");
        let replaced: ConfigMap = serde_json::from_value(body.clone()).unwrap();
        let replaced = cms.replace("c", &pp, &replaced).await.unwrap();
        assert_eq!(
            managed(&replaced),
            vec![(
                "creator".into(),
                "Update".into(),
                json!({"f:data": {".": {}, "f:k": {}, "f:l": {}}})
            )]
        );
        let mut reset = serde_json::to_value(&replaced).unwrap();
        reset["metadata"]["managedFields"] = json!([]);
        let reset: ConfigMap = serde_json::from_value(reset).unwrap();
        let reset = cms.replace("c", &pp, &reset).await.unwrap();
        assert!(reset.metadata.managed_fields.is_none(), "{reset:?}");
    }

    #[tokio::test]
    async fn strategic_merge_patch_merges_keyed_lists_and_takes_directives() {
        let server = ApiServer::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(server.client(), NS);
        let mut cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "c", "finalizers": ["a/x", "a/y"], "labels": {"keep": "1", "drop": "2"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p1", "uid": "u1"},
                                             {"apiVersion": "v1", "kind": "Pod", "name": "p2", "uid": "u2"}]},
            "data": {"a": "1", "b": "2"}
        }))
        .unwrap();
        cm = cms.create(&PostParams::default(), &cm).await.unwrap();
        let patched = cms
            .patch("c", &PatchParams::default(), &Patch::Strategic(json!({
                "metadata": {
                    "finalizers": ["a/z"],
                    "$deleteFromPrimitiveList/finalizers": ["a/x"],
                    "$setElementOrder/finalizers": ["a/z", "a/y"],
                    "labels": {"drop": null},
                    "ownerReferences": [{"uid": "u1", "$patch": "delete"},
                                        {"apiVersion": "v1", "kind": "Pod", "name": "p3", "uid": "u3"}]
                },
                "data": {"$patch": "replace", "c": "3"}
            })))
            .await
            .unwrap();
        assert_eq!(
            patched.metadata.finalizers,
            Some(vec!["a/z".into(), "a/y".into()])
        );
        assert_eq!(
            patched.metadata.labels,
            Some([("keep".to_string(), "1".to_string())].into())
        );
        let owners: Vec<&str> = patched
            .metadata
            .owner_references
            .as_ref()
            .unwrap()
            .iter()
            .map(|o| o.uid.as_str())
            .collect();
        assert_eq!(owners, ["u2", "u3"]);
        assert_eq!(
            patched.data,
            Some([("c".to_string(), "3".to_string())].into())
        );
        assert!(
            rv(&Lease {
                metadata: patched.metadata.clone(),
                ..Lease::default()
            }) > rv(&Lease {
                metadata: cm.metadata.clone(),
                ..Lease::default()
            })
        );

        let bad = status(
            cms.patch(
                "c",
                &PatchParams::default(),
                &Patch::Strategic(json!({"metadata": {"$retainKeys": "labels"}})),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(
            (bad.code, bad.message.as_str()),
            (400, "invalid patch format of retainKeys")
        );
    }
}

/// `kubectl apply --server-side` against the test server.
mod kubectl_apply {
    use super::*;

    fn manifest(holder: &str) -> String {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: kube-scheduler\n  namespace: kube-system\nspec:\n  holderIdentity: {holder}\n  leaseDurationSeconds: 15\n"
        )
    }

    #[tokio::test]
    async fn kubectl_server_side_apply_creates_updates_conflicts_and_forces() {
        let server = ApiServer::start_with(ApiServerOptions::new().tls().auth())
            .await
            .unwrap();
        let kubectl = Kubectl::new(&server).unwrap();
        let file = kubectl.dir().join("lease.yaml");
        let file_arg = file.to_str().unwrap();
        let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
        let holder = |l: &Lease| l.spec.as_ref().and_then(|s| s.holder_identity.clone());

        std::fs::write(&file, manifest("node-a")).unwrap();
        let out = kubectl
            .ok(&["apply", "--server-side", "-f", file_arg])
            .await;
        assert_eq!(
            out.trim(),
            "lease.coordination.k8s.io/kube-scheduler serverside-applied"
        );
        let created = leases.get("kube-scheduler").await.unwrap();
        assert_eq!(holder(&created).as_deref(), Some("node-a"));
        let entries = created.metadata.managed_fields.clone().unwrap();
        assert_eq!(
            (
                entries[0].manager.as_deref(),
                entries[0].operation.as_deref()
            ),
            (Some("kubectl"), Some("Apply"))
        );

        std::fs::write(&file, manifest("node-b")).unwrap();
        kubectl
            .ok(&["apply", "--server-side", "-f", file_arg])
            .await;
        assert_eq!(
            holder(&leases.get("kube-scheduler").await.unwrap()).as_deref(),
            Some("node-b")
        );

        std::fs::write(&file, manifest("node-c")).unwrap();
        let refused = kubectl
            .run(&[
                "apply",
                "--server-side",
                "--field-manager=other",
                "-f",
                file_arg,
            ])
            .await
            .unwrap();
        assert!(!refused.success);
        assert!(
            refused.stderr.contains(
                "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.holderIdentity"
            ),
            "{}",
            refused.stderr
        );
        assert_eq!(
            holder(&leases.get("kube-scheduler").await.unwrap()).as_deref(),
            Some("node-b")
        );

        let out = kubectl
            .ok(&[
                "apply",
                "--server-side",
                "--field-manager=other",
                "--force-conflicts",
                "-f",
                file_arg,
            ])
            .await;
        assert_eq!(
            out.trim(),
            "lease.coordination.k8s.io/kube-scheduler serverside-applied"
        );
        let forced = leases.get("kube-scheduler").await.unwrap();
        assert_eq!(holder(&forced).as_deref(), Some("node-c"));
        let managers: Vec<_> = forced
            .metadata
            .managed_fields
            .unwrap()
            .into_iter()
            .map(|e| e.manager.unwrap_or_default())
            .collect();
        assert_eq!(managers, ["kubectl", "other"]);
    }
}

/// Runs kubectl at `-v=8`, which logs each request's headers to stderr.
async fn verbose(kubectl: &Kubectl, args: &[&str]) -> (bool, String, String) {
    let args: Vec<&str> = std::iter::once("-v=8")
        .chain(args.iter().copied())
        .collect();
    let output = kubectl.run(&args).await.expect("kubectl is on PATH");
    (output.success, output.stdout, output.stderr)
}

#[tokio::test]
async fn kubectl_create_configmap_sends_protobuf_and_reads_it_back() {
    let server = ApiServer::start_with(ApiServerOptions::new().tls().auth())
        .await
        .unwrap();
    let kubectl = Kubectl::new(&server).unwrap();

    let args = ["create", "configmap", "x", "--from-literal=a=b"];
    let (ok, stdout, stderr) = verbose(&kubectl, &args).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "configmap/x created");
    // kubectl's typed client speaks protobuf both ways, and the server answered so.
    assert!(
        stderr.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("Content-Type: application/vnd.kubernetes.protobuf")
            .count(),
        2,
        "the request's and the response's: {stderr}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let stored = configmaps.get("x").await.unwrap();
    assert_eq!(stored.data.unwrap()["a"], "b");

    // The failure comes back as a protobuf Status, which kubectl words as usual.
    let (ok, _, stderr) = verbose(&kubectl, &args).await;
    assert!(!ok);
    assert!(
        stderr.ends_with("error: failed to create configmap: configmaps \"x\" already exists\n"),
        "{stderr}"
    );

    let yaml = kubectl.ok(&["get", "configmap", "x", "-o", "yaml"]).await;
    for line in [
        "apiVersion: v1",
        "kind: ConfigMap",
        "data:\n  a: b\n",
        "  name: x\n",
        "  namespace: default\n",
    ] {
        assert!(yaml.contains(line), "{line:?} in:\n{yaml}");
    }
    let uid = stored.metadata.uid.unwrap();
    assert!(yaml.contains(&format!("  uid: {uid}\n")), "{yaml}");
}

#[tokio::test]
async fn kubectl_create_and_apply_validate_against_the_servers_openapi() {
    let server = ApiServer::start_with(ApiServerOptions::new().tls().auth())
        .await
        .unwrap();
    let kubectl = Kubectl::new(&server).unwrap();
    let manifest = |name: &str, text: &str| {
        let path = kubectl.dir().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };

    let configmap = manifest(
        "configmap.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  level: info\n",
    );
    let created = kubectl.ok(&["create", "-f", &configmap]).await;
    assert_eq!(created.trim(), "configmap/settings created");

    let lease = manifest(
        "lease.yaml",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: scheduler\n  namespace: kube-system\nspec:\n  holderIdentity: node-a\n  leaseDurationSeconds: 15\n",
    );
    let applied = kubectl.ok(&["apply", "-f", &lease]).await;
    assert_eq!(
        applied.trim(),
        "lease.coordination.k8s.io/scheduler created"
    );
    std::fs::write(
        &lease,
        std::fs::read_to_string(&lease)
            .unwrap()
            .replace("node-a", "node-b"),
    )
    .unwrap();
    let (ok, stdout, stderr) = verbose(&kubectl, &["apply", "-f", &lease]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "lease.coordination.k8s.io/scheduler configured"
    );
    // The patch is computed from the served schema, without /openapi/v2.
    assert!(
        stderr.contains("Content-Type: application/strategic-merge-patch+json"),
        "{stderr}"
    );
    assert!(!stderr.contains("/openapi/v2"), "{stderr}");
    let holder = kubectl
        .ok(&[
            "get",
            "lease",
            "scheduler",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await;
    assert_eq!(holder, "node-b");

    // An unknown field is the server's strict decoding error, as kube-apiserver words it.
    let invalid = manifest(
        "invalid.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndata:\n  a: b\ndta:\n  c: d\n",
    );
    for verb in ["create", "apply"] {
        let (ok, _, stderr) = verbose(&kubectl, &[verb, "-f", &invalid]).await;
        assert!(!ok, "{verb}: {stderr}");
        let want = format!(
            "Error from server (BadRequest): error when creating \"{invalid}\": ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"dta\"\n"
        );
        assert!(stderr.ends_with(&want), "{verb}: {stderr}");
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    assert_eq!(configmaps.get_opt("typo").await.unwrap(), None);
    // Asked to warn, the server stores the object without the field and says so.
    let (ok, stdout, stderr) =
        verbose(&kubectl, &["create", "-f", &invalid, "--validate=warn"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "configmap/typo created");
    assert!(
        stderr.contains("Warning: unknown field \"dta\""),
        "{stderr}"
    );
    let typo = serde_json::to_value(configmaps.get("typo").await.unwrap()).unwrap();
    assert!(typo.get("dta").is_none(), "{typo}");
    assert!(
        server
            .requests()
            .count_where(|k| k.path.starts_with("/openapi/v3"))
            >= 2
    );
}

/// Sends one HTTP/1.1 request to `server` and returns the response's head and body.
async fn raw_request(server: &ApiServer, head: &str, body: &[u8]) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    (head, response[split + 4..].to_vec())
}

#[tokio::test]
async fn a_garbled_protobuf_body_is_a_400_in_the_clients_format() {
    let server = ApiServer::start().await.unwrap();
    let post = "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nContent-Type: application/vnd.kubernetes.protobuf";
    // The envelope's typeMeta claims 255 bytes and has 1.
    let garbled = b"k8s\x00\x0a\xff\x01\x0a";

    let (head, body) = raw_request(
        &server,
        &format!("{post}\r\nAccept: application/json"),
        garbled,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400 Bad Request"), "{head}");
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["reason"], "BadRequest");
    assert_eq!(
        status["message"],
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: proto: unexpected EOF"
    );

    // A client that prefers protobuf gets the Status in protobuf.
    let accept = "Accept: application/vnd.kubernetes.protobuf, application/json";
    let (head, body) = raw_request(&server, &format!("{post}\r\n{accept}"), garbled).await;
    assert!(head.starts_with("HTTP/1.1 400 Bad Request"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/vnd.kubernetes.protobuf"),
        "{head}"
    );
    assert!(body.starts_with(b"k8s\x00"));
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("Status") && text.contains("proto: unexpected EOF"),
        "{text}"
    );

    // JSON sent as protobuf is refused, not guessed at.
    let (head, body) = raw_request(
        &server,
        &format!("{post}\r\nAccept: application/json"),
        br#"{"metadata":{"name":"x"}}"#,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400 Bad Request"), "{head}");
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .ends_with("provided data does not appear to be a protobuf message, expected prefix [107, 56, 115, 0]"),
        "{status}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    assert!(configmaps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
}
