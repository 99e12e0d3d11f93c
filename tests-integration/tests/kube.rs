//! The Kubernetes locks against the crate's API test server, through the real `kube`
//! client: the election scenarios with every lock kind, the migration from Endpoints to
//! Leases, RBAC, API server restarts, malformed records, watch, and client-go's bytes.
#![cfg(feature = "kube")]

mod kube_scenarios;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use leaderelection::lock::kube::{
    ApiError, EventRecorder, KubeLeaseLock, KubeLock, ResourceLockKind, LEADER_ANNOTATION,
    UNKNOWN_LEADER,
};
use leaderelection::{
    Config, ElectionEvent, LeaderElectionRecord, LeaderElector, LeaseLock, LockError, LockEvent,
    Version,
};
use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions, Fault, PolicyRule, User};
use leaderelection_testkit::checker::Checker;
use leaderelection_testkit::contract::{self, Backend};
use leaderelection_testkit::replica::{handover, Link, Replica, Timing, Work};
use tokio::time::{sleep, timeout, Instant};

use kube_scenarios::*;

const NS: &str = "kube-system";

async fn server() -> (ApiServer, Cluster) {
    init_tracing();
    let server = ApiServer::start().await.expect("start the API test server");
    let cluster = Cluster {
        client: server.client(),
        namespace: NS.to_owned(),
        prefix: "t".to_owned(),
    };
    (server, cluster)
}

fn rec(holder: &str) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder_identity: holder.into(),
        lease_duration_seconds: 15,
        acquire_time: Some(jiff::Timestamp::now()),
        renew_time: Some(jiff::Timestamp::now()),
        ..Default::default()
    }
}

fn api_error(e: &LockError) -> &ApiError {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<ApiError>())
        .unwrap_or_else(|| panic!("no ApiError behind {e:?}"))
}

// ---- the election scenarios with every lock kind --------------------------------

macro_rules! scenarios {
    ($name:ident, $kind:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            bounded(stringify!($name), async {
                let (_server, cluster) = server().await;
                all_scenarios(&cluster, $kind).await;
            })
            .await
        }
    };
}

scenarios!(scenarios_leases, ResourceLockKind::Leases);
scenarios!(scenarios_endpoints, ResourceLockKind::Endpoints);
scenarios!(scenarios_configmaps, ResourceLockKind::ConfigMaps);
scenarios!(scenarios_endpointsleases, ResourceLockKind::EndpointsLeases);
scenarios!(
    scenarios_configmapsleases,
    ResourceLockKind::ConfigMapsLeases
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_endpoints_to_leases_never_has_two_leaders() {
    bounded(
        "migration_from_endpoints_to_leases_never_has_two_leaders",
        async {
            let (_server, cluster) = server().await;
            migration_never_has_two_leaders(&cluster, false).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_configmaps_to_leases_never_has_two_leaders() {
    bounded(
        "migration_from_configmaps_to_leases_never_has_two_leaders",
        async {
            let (_server, cluster) = server().await;
            migration_never_has_two_leaders(&cluster, true).await;
        },
    )
    .await
}

// ---- the lock contract ------------------------------------------------------------

/// One lock kind on the API test server, for the lock contract suite: objects deleted
/// through the API, annotations garbled with a merge patch.
struct Kind {
    cluster: Cluster,
    kind: ResourceLockKind,
}

impl Kind {
    fn has_lease(&self) -> bool {
        use ResourceLockKind::*;
        matches!(self.kind, Leases | EndpointsLeases | ConfigMapsLeases)
    }

    fn has_endpoints(&self) -> bool {
        use ResourceLockKind::*;
        matches!(self.kind, Endpoints | EndpointsLeases)
    }

    fn has_configmap(&self) -> bool {
        use ResourceLockKind::*;
        matches!(self.kind, ConfigMaps | ConfigMapsLeases)
    }
}

#[async_trait::async_trait]
impl Backend for Kind {
    async fn lock(&self, name: &str) -> Box<dyn LeaseLock> {
        Box::new(self.cluster.lock(self.kind, name))
    }

    fn can_delete(&self) -> bool {
        true
    }

    async fn delete(&self, name: &str) {
        let client = self.cluster.client.clone();
        let dp = DeleteParams::default();
        if self.has_endpoints() {
            let api: Api<Endpoints> = Api::namespaced(client.clone(), NS);
            api.delete(name, &dp).await.unwrap();
        }
        if self.has_configmap() {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
            api.delete(name, &dp).await.unwrap();
        }
        if self.has_lease() {
            let api: Api<Lease> = Api::namespaced(client, NS);
            api.delete(name, &dp).await.unwrap();
        }
    }

    /// The API test server validates Leases as kube-apiserver does, so only an
    /// annotation (the primary of a MultiLock) can be garbled through the API.
    fn can_corrupt(&self) -> bool {
        self.kind != ResourceLockKind::Leases
    }

    async fn corrupt(&self, name: &str) {
        let client = self.cluster.client.clone();
        let patch = serde_json::json!({"metadata": {"annotations": {(LEADER_ANNOTATION): "{\"holderIdentity\": 5"}}});
        let (pp, patch) = (PatchParams::default(), Patch::Merge(&patch));
        if self.has_endpoints() {
            let api: Api<Endpoints> = Api::namespaced(client, NS);
            api.patch(name, &pp, &patch).await.unwrap();
        } else {
            let api: Api<ConfigMap> = Api::namespaced(client, NS);
            api.patch(name, &pp, &patch).await.unwrap();
        }
    }
}

macro_rules! contract {
    ($name:ident, $kind:expr) => {
        #[tokio::test]
        async fn $name() {
            bounded(stringify!($name), async {
                let (_server, cluster) = server().await;
                let kind = $kind;
                contract::run_all(&Kind { cluster, kind }).await;
            })
            .await
        }
    };
}

contract!(contract_leases, ResourceLockKind::Leases);
contract!(contract_endpoints, ResourceLockKind::Endpoints);
contract!(contract_configmaps, ResourceLockKind::ConfigMaps);
contract!(contract_endpointsleases, ResourceLockKind::EndpointsLeases);
contract!(
    contract_configmapsleases,
    ResourceLockKind::ConfigMapsLeases
);

/// What the contract suite cannot know: a version this handle never saw, and the
/// lock's name in its description.
#[tokio::test]
async fn every_lock_kind_refuses_unknown_versions_and_names_its_objects() {
    bounded(
        "every_lock_kind_refuses_unknown_versions_and_names_its_objects",
        async {
            let (_server, cluster) = server().await;
            for kind in ResourceLockKind::ALL {
                let name = format!("cas-{kind}");
                let lock = cluster.lock(kind, &name);
                lock.create(&rec("a")).await.unwrap();
                assert!(
                    matches!(
                        lock.update(&rec("c"), &Version::new("999999")).await,
                        Err(LockError::Conflict)
                    ),
                    "{kind}"
                );
                assert!(lock.describe().contains(&name), "{}", lock.describe());
            }
        },
    )
    .await
}

#[tokio::test]
async fn server_errors_are_unavailable_with_the_code() {
    bounded("server_errors_are_unavailable_with_the_code", async {
        let (server, cluster) = server().await;
        let lock = cluster.lock(ResourceLockKind::Leases, "faulty");
        server
            .faults()
            .inject(Fault::error(500).for_verb("get").times(1));
        let e = lock.get().await.unwrap_err();
        assert!(matches!(e, LockError::Unavailable { .. }), "{e:?}");
        assert_eq!(api_error(&e).code, Some(500));
        assert!(e.to_string().contains("leases/kube-system/faulty"), "{e}");
        // The fault was for one request only.
        assert_eq!(lock.get().await.unwrap(), None);
    })
    .await
}

#[tokio::test]
async fn no_server_is_unavailable_without_a_code() {
    bounded("no_server_is_unavailable_without_a_code", async {
        let (server, cluster) = server().await;
        server.stop().await;
        let lock = cluster.lock(ResourceLockKind::Endpoints, "nowhere");
        let e = timeout(PATIENCE, lock.get()).await.unwrap().unwrap_err();
        assert!(matches!(e, LockError::Unavailable { .. }), "{e:?}");
        assert_eq!(api_error(&e).code, None);
        assert!(
            e.to_string().contains("no answer from the API server"),
            "{e}"
        );
    })
    .await
}

#[tokio::test]
async fn unknown_lock_names_are_refused_with_the_valid_ones() {
    bounded(
        "unknown_lock_names_are_refused_with_the_valid_ones",
        async {
            let (_server, cluster) = server().await;
            let e = KubeLock::from_resource_lock_name("lease", cluster.client.clone(), NS, "x")
                .unwrap_err();
            let text = e.to_string();
            for kind in ResourceLockKind::ALL {
                assert!(text.contains(kind.name()), "{text}");
            }
            assert!(KubeLock::from_resource_lock_name(
                "leases",
                cluster.client.clone(),
                "Kube System",
                "x"
            )
            .is_err());
            assert!(
                KubeLock::from_resource_lock_name("leases", cluster.client.clone(), NS, "a/b")
                    .is_err()
            );
            for kind in ResourceLockKind::ALL {
                let name = format!("named-{kind}");
                let lock = KubeLock::from_resource_lock_name(
                    kind.name(),
                    cluster.client.clone(),
                    NS,
                    &name,
                )
                .unwrap();
                let d = lock.describe();
                match kind {
                    ResourceLockKind::EndpointsLeases => {
                        assert_eq!(
                            d,
                            format!("endpoints/kube-system/{name}/leases/kube-system/{name}")
                        )
                    }
                    ResourceLockKind::ConfigMapsLeases => {
                        assert_eq!(
                            d,
                            format!("configmaps/kube-system/{name}/leases/kube-system/{name}")
                        )
                    }
                    _ => assert_eq!(d, format!("{kind}/kube-system/{name}")),
                }
                lock.create(&rec("a")).await.unwrap();
                assert_eq!(
                    lock.get().await.unwrap().unwrap().record.holder_identity,
                    "a"
                );
            }
        },
    )
    .await
}

// ---- client-go's bytes ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_records_are_client_go_records() {
    bounded("stored_records_are_client_go_records", async {
        let (_server, cluster) = server().await;
        let checker = Checker::new();
        for kind in [
            ResourceLockKind::Endpoints,
            ResourceLockKind::ConfigMaps,
            ResourceLockKind::Leases,
        ] {
            let name = format!("bytes-{kind}");
            let a = replica(cluster.lock(kind, &name), config("node-a_1"), &checker);
            wait_for("a to lead", || a.is_leader()).await;
            let text = match kind {
                ResourceLockKind::Endpoints => {
                    let api: Api<Endpoints> = Api::namespaced(cluster.client.clone(), NS);
                    api.get(&name).await.unwrap().metadata.annotations.unwrap()[LEADER_ANNOTATION]
                        .clone()
                }
                ResourceLockKind::ConfigMaps => {
                    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), NS);
                    api.get(&name).await.unwrap().metadata.annotations.unwrap()[LEADER_ANNOTATION]
                        .clone()
                }
                _ => {
                    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), NS);
                    let spec = api.get(&name).await.unwrap().spec.unwrap();
                    assert_eq!(spec.holder_identity.as_deref(), Some("node-a_1"));
                    assert_eq!(spec.lease_duration_seconds, Some(3));
                    assert_eq!(spec.lease_transitions, Some(0));
                    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
                    assert_eq!(spec.strategy, None);
                    a.stop().await;
                    continue;
                }
            };
            // The exact shape of json.Marshal(LeaderElectionRecord) in client-go.
            let prefix = r#"{"holderIdentity":"node-a_1","leaseDurationSeconds":3,"acquireTime":""#;
            assert!(text.starts_with(prefix), "{text}");
            assert!(text.ends_with(r#"Z","leaderTransitions":0}"#), "{text}");
            let renew = text.split(r#""renewTime":""#).nth(1).unwrap();
            assert_eq!(renew.find('Z'), Some(19), "whole seconds in UTC: {text}");
            a.stop().await;
        }
    })
    .await
}

/// A record written by a Go replica is honoured: its lease runs out on our clock
/// before we take over, and we count one more transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_replicas_record_is_respected() {
    bounded("a_go_replicas_record_is_respected", async {
    let (_server, cluster) = server().await;
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let go = format!(
        r#"{{"holderIdentity":"go-replica","leaseDurationSeconds":3,"acquireTime":"{now}","renewTime":"{now}","leaderTransitions":7}}"#
    );
    let api: Api<Endpoints> = Api::namespaced(cluster.client.clone(), NS);
    let mut ep = Endpoints::default();
    ep.metadata.name = Some("go".into());
    ep.metadata.annotations = Some([(LEADER_ANNOTATION.to_owned(), go)].into());
    api.create(&PostParams::default(), &ep).await.unwrap();

    let checker = Checker::new();
    let start = Instant::now();
    let a = replica(
        cluster.lock(ResourceLockKind::Endpoints, "go"),
        config("rust"),
        &checker,
    );
    wait_for("a to see the Go leader", || {
        a.elector.leader().as_deref() == Some("go-replica")
    })
    .await;
    wait_for("a to take over", || a.is_leader()).await;
    assert!(
        start.elapsed() >= LEASE - Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    let got = cluster
        .lock(ResourceLockKind::Endpoints, "go")
        .get()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.record.leader_transitions, 8);
    a.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_keep_everything_else_on_the_object() {
    bounded("updates_keep_everything_else_on_the_object", async {
        let (_server, cluster) = server().await;
        let client = cluster.client.clone();
        let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
        let mut lease = Lease::default();
        lease.metadata.name = Some("kept".into());
        lease.metadata.labels = Some([("app".to_owned(), "sched".to_owned())].into());
        lease.metadata.annotations = Some([("note".to_owned(), "keep me".to_owned())].into());
        leases.create(&PostParams::default(), &lease).await.unwrap();
        let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), NS);
        let ep: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kept", "annotations": {"note": "keep me"}},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 443}]}],
        }))
        .unwrap();
        endpoints.create(&PostParams::default(), &ep).await.unwrap();

        let checker = Checker::new();
        let a = replica(
            cluster.lock(ResourceLockKind::EndpointsLeases, "kept"),
            config("a"),
            &checker,
        );
        let mut events = a.elector.events();
        wait_for("a to lead", || a.is_leader()).await;
        // Someone labels the Lease while a leads: a's next renewal finds a new version,
        // reads, sees it still holds the lease, and renews without dropping the label.
        let patch = serde_json::json!({"metadata": {"labels": {"added": "later"}}});
        leases
            .patch("kept", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let before = leases.get("kept").await.unwrap().spec.unwrap().renew_time;
        wait_for_renewal(&leases, "kept", before).await;
        assert!(a.is_leader());
        let lease = leases.get("kept").await.unwrap();
        let labels = lease.metadata.labels.unwrap();
        assert_eq!(
            (labels["app"].as_str(), labels["added"].as_str()),
            ("sched", "later")
        );
        assert_eq!(lease.metadata.annotations.unwrap()["note"], "keep me");
        let ep = endpoints.get("kept").await.unwrap();
        let annotations = ep.metadata.annotations.unwrap();
        assert_eq!(annotations["note"], "keep me");
        assert!(annotations[LEADER_ANNOTATION].contains(r#""holderIdentity":"a""#));
        let subsets = ep.subsets.unwrap();
        assert_eq!(subsets[0].addresses.as_ref().unwrap()[0].ip, "10.0.0.1");
        a.stop().await;
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        assert_eq!(
            seen.iter()
                .filter(|e| matches!(e, ElectionEvent::StoppedLeading))
                .count(),
            1,
            "led once, without interruption: {seen:?}"
        );
    })
    .await
}

async fn wait_for_renewal(
    leases: &Api<Lease>,
    name: &str,
    before: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>,
) {
    let start = Instant::now();
    loop {
        let now = leases.get(name).await.unwrap().spec.unwrap().renew_time;
        if now != before {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "no renewal");
        sleep(Duration::from_millis(50)).await;
    }
}

// ---- malformed records ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_annotation_is_a_clear_error_then_overwritten() {
    bounded(
        "malformed_annotation_is_a_clear_error_then_overwritten",
        async {
            let (_server, cluster) = server().await;
            for kind in [
                ResourceLockKind::Endpoints,
                ResourceLockKind::ConfigMaps,
                ResourceLockKind::EndpointsLeases,
            ] {
                let name = format!("bad-{kind}");
                let meta = serde_json::json!({
                    "name": name,
                    "annotations": {(LEADER_ANNOTATION): "{\"holderIdentity\": 5", "other": "x"},
                });
                let rv = if kind == ResourceLockKind::ConfigMaps {
                    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), NS);
                    let cm: ConfigMap = serde_json::from_value(
                        serde_json::json!({"metadata": meta, "data": {"k": "v"}}),
                    )
                    .unwrap();
                    api.create(&PostParams::default(), &cm)
                        .await
                        .unwrap()
                        .metadata
                        .resource_version
                } else {
                    let api: Api<Endpoints> = Api::namespaced(cluster.client.clone(), NS);
                    let ep: Endpoints =
                        serde_json::from_value(serde_json::json!({"metadata": meta})).unwrap();
                    api.create(&PostParams::default(), &ep)
                        .await
                        .unwrap()
                        .metadata
                        .resource_version
                };
                let lock = cluster.lock(kind, &name);
                match lock.get().await {
                    Err(LockError::InvalidRecord { source, version }) => {
                        let text = source.to_string();
                        assert!(text.contains(LEADER_ANNOTATION), "{text}");
                        assert!(
                            text.contains("holderIdentity"),
                            "quotes the stored text: {text}"
                        );
                        let version = version.expect("the bad record's version");
                        if kind == ResourceLockKind::Endpoints {
                            assert_eq!(Some(version.as_str().to_owned()), rv);
                        }
                    }
                    other => panic!("{kind}: expected InvalidRecord, got {other:?}"),
                }
                // An elector waits one lease (a live holder might have written it), then
                // overwrites it, keeping the rest of the object.
                let checker = Checker::new();
                let start = Instant::now();
                let a = replica(lock, config("a"), &checker);
                wait_for("a to overwrite the bad record", || a.is_leader()).await;
                assert!(
                    start.elapsed() >= LEASE - Duration::from_millis(200),
                    "{kind}: {:?}",
                    start.elapsed()
                );
                let got = cluster.lock(kind, &name).get().await.unwrap().unwrap();
                assert_eq!(got.record.holder_identity, "a");
                if kind == ResourceLockKind::ConfigMaps {
                    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), NS);
                    let cm = api.get(&name).await.unwrap();
                    assert_eq!(cm.data.unwrap()["k"], "v");
                    assert_eq!(cm.metadata.annotations.unwrap()["other"], "x");
                }
                a.stop().await;
            }
        },
    )
    .await
}

/// kube-apiserver validates Leases, so a malformed one only exists when something
/// wrote etcd directly; the API test server over etcd serves such a key as stored.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lease_is_a_clear_error_then_overwritten() {
    bounded("malformed_lease_is_a_clear_error_then_overwritten", async {
    use leaderelection_testkit::etcd::EtcdCluster;
    init_tracing();
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .unwrap()
        .expect("start etcd");
    let endpoints = etcd.endpoints();
    let server =
        ApiServer::start_with(ApiServerOptions::new().etcd(endpoints.clone(), "/registry"))
            .await
            .expect("API server over etcd");
    let lock = KubeLeaseLock::new(server.client(), NS, "corrupt");
    lock.create(&rec("a")).await.unwrap();
    let bad = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "corrupt", "namespace": NS, "uid": "u1", "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"holderIdentity": "a", "renewTime": "yesterday", "leaseDurationSeconds": "fifteen"},
    });
    let status = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &endpoints.join(","),
            "put",
            "/registry/leases/kube-system/corrupt",
        ])
        .arg(bad.to_string())
        .status()
        .expect("run etcdctl");
    assert!(status.success());
    match lock.get().await {
        Err(LockError::InvalidRecord { source, version }) => {
            assert!(
                source.reason.contains("Lease spec is malformed"),
                "{source}"
            );
            assert!(source.text.contains("yesterday"), "{source}");
            assert!(version.is_some());
        }
        other => panic!("expected InvalidRecord, got {other:?}"),
    }
    let checker = Checker::new();
    let b = replica(
        KubeLeaseLock::new(server.client(), NS, "corrupt"),
        config("b"),
        &checker,
    );
    wait_for("b to overwrite the bad lease", || b.is_leader()).await;
    let got = lock.get().await.unwrap().unwrap();
    assert_eq!(got.record.holder_identity, "b");
    b.stop().await;
    drop(server);
    drop(etcd);
    })
    .await
}

// ---- RBAC ---------------------------------------------------------------------------

/// Captures the log lines of the current thread, so the test can read what an
/// operator would see.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Without permission a replica gets a clear Forbidden error, logs it, keeps trying
/// and never crashes; with read-only permission it follows the leader but cannot
/// take over.
#[tokio::test]
async fn rbac_denied_is_a_clear_error_and_no_crash() {
    bounded("rbac_denied_is_a_clear_error_and_no_crash", async {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .with_ansi(false)
            .with_env_filter("leaderelection=debug")
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let lease_rule = |verbs: &[&str]| {
            PolicyRule::new(verbs.iter().copied(), ["leases"])
                .in_namespace(NS)
                .named("rbac")
        };
        let server = ApiServer::start_with(
            ApiServerOptions::new()
                .token("nobody-token", User::new("nobody"))
                .token(
                    "reader-token",
                    User::new("reader").allow(lease_rule(&["get", "list", "watch"])),
                )
                .token(
                    "sched-token",
                    User::new("sched")
                        .allow(lease_rule(&["get", "update", "list", "watch"]))
                        .allow(PolicyRule::new(["create"], ["leases"]).in_namespace(NS)),
                ),
        )
        .await
        .unwrap();
        let lock = |token: &str| KubeLeaseLock::new(server.client_with_token(token), NS, "rbac");

        let e = lock("nobody-token").get().await.unwrap_err();
        assert!(matches!(e, LockError::Forbidden { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("denied access") && text.contains("leases/kube-system/rbac"),
            "{text}"
        );
        assert!(
            text.contains("nobody"),
            "the server's message names the user: {text}"
        );
        assert!(text.contains("grant"), "says what to do: {text}");
        assert_eq!(api_error(&e).code, Some(403));
        let e = lock("nobody-token").create(&rec("x")).await.unwrap_err();
        assert!(matches!(e, LockError::Forbidden { .. }), "{e:?}");
        let e = KubeLeaseLock::new(server.client_with_token("wrong"), NS, "rbac")
            .get()
            .await
            .unwrap_err();
        assert!(matches!(e, LockError::Forbidden { .. }), "{e:?}");
        assert_eq!(api_error(&e).code, Some(401));

        let checker = Checker::new();
        let nobody = replica(lock("nobody-token"), config("nobody"), &checker);
        let reader = replica(lock("reader-token"), config("reader"), &checker);
        let sched = replica(lock("sched-token"), config("sched"), &checker);
        wait_for("sched to lead", || sched.is_leader()).await;
        wait_for("the reader to follow", || {
            reader.elector.leader().as_deref() == Some("sched")
        })
        .await;
        sleep(LEASE).await;
        // The leader releases: the reader sees it, tries to take over, and is refused.
        sched.stop().await;
        sleep(LEASE).await;
        assert!(!nobody.is_leader() && !reader.is_leader());
        assert_eq!(leaders(&checker), vec!["sched".to_owned()]);
        let requests = server.requests();
        assert!(
            requests.user("nobody") >= 3,
            "keeps retrying: {}",
            requests.user("nobody")
        );
        assert!(requests.user("reader") >= 2);
        let logs = logs.text();
        assert!(logs.contains("failed to read the lock; retrying"), "{logs}");
        assert!(logs.contains("denied access"), "{logs}");
        assert!(
            logs.contains("failed to acquire the lease; retrying"),
            "{logs}"
        );
        // Both are still running, and stop cleanly.
        nobody.stop().await;
        reader.stop().await;
    })
    .await
}

// ---- API server restarts --------------------------------------------------------------

/// A restart shorter than the renew deadline costs the leader nothing; the standby's
/// watch reconnects and it still follows the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_api_server_restart_keeps_the_leader() {
    bounded("short_api_server_restart_keeps_the_leader", async {
        let (mut server, cluster) = server().await;
        let checker = Checker::new();
        let a = replica(
            cluster.lock(ResourceLockKind::Leases, "restart"),
            config("a"),
            &checker,
        );
        wait_for("a to lead", || a.is_leader()).await;
        let b = replica(
            cluster.lock(ResourceLockKind::Leases, "restart"),
            config("b"),
            &checker,
        );
        wait_for("b to follow", || b.elector.leader().as_deref() == Some("a")).await;
        let mut a_events = a.elector.events();
        server.restart().await;
        never_two_leaders_for(&checker, 2 * LEASE).await;
        assert!(a.is_leader(), "a kept its lease through the restart");
        assert!(a_events.try_recv().is_err(), "a never stopped leading");
        assert_eq!(b.elector.leader().as_deref(), Some("a"));
        // The standby follows through the reconnected watch: a release reaches it at once.
        let start = Instant::now();
        a.stop().await;
        wait_for("b to take over", || b.is_leader()).await;
        assert!(
            start.elapsed() < LEASE + Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        b.stop().await;
    })
    .await
}

/// An outage longer than the renew deadline: the leader steps down while the server
/// is still down (before anyone could take over), and after the restart exactly one
/// replica leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_api_server_outage_makes_the_leader_step_down_in_time() {
    bounded(
        "long_api_server_outage_makes_the_leader_step_down_in_time",
        async {
            let (mut server, cluster) = server().await;
            let checker = Checker::new();
            let a = replica(
                cluster.lock(ResourceLockKind::Leases, "outage"),
                config("a"),
                &checker,
            );
            wait_for("a to lead", || a.is_leader()).await;
            let b = replica(
                cluster.lock(ResourceLockKind::Leases, "outage"),
                config("b"),
                &checker,
            );
            wait_for("b to follow", || b.elector.leader().as_deref() == Some("a")).await;
            server.stop_serving().await;
            let down = Instant::now();
            let stepped_down = wait_for("a to step down", || !a.is_leader()).await;
            assert!(!server.is_serving());
            assert!(
                stepped_down < LEASE,
                "a must stop before its lease could expire for others: {stepped_down:?}"
            );
            assert!(!b.is_leader());
            // Keep the server down past the lease.
            let rest = (LEASE + Duration::from_secs(1)).saturating_sub(down.elapsed());
            sleep(rest).await;
            server.resume_serving().await.unwrap();
            let leader = wait_for_leader(&[&a, &b]).await;
            never_two_leaders_for(&checker, LEASE).await;
            assert_eq!(wait_for_leader(&[&a, &b]).await, leader);
            assert!(leaders(&checker).len() >= 2, "{:?}", leaders(&checker));
            a.stop().await;
            b.stop().await;
        },
    )
    .await
}

// ---- watch ------------------------------------------------------------------------------

/// A standby follows the renewing leader through the watch: it makes (almost) no
/// requests, where a polling standby would make one every retry period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_follows_by_watch_without_polling() {
    bounded("standby_follows_by_watch_without_polling", async {
        init_tracing();
        let server = ApiServer::start_with(
            ApiServerOptions::new()
                .token("a-token", User::new("a").allow(PolicyRule::all()))
                .token("b-token", User::new("b").allow(PolicyRule::all())),
        )
        .await
        .unwrap();
        let checker = Checker::new();
        let lock = |t: &str| KubeLeaseLock::new(server.client_with_token(t), NS, "quiet");
        let a = replica(lock("a-token"), config("a"), &checker);
        wait_for("a to lead", || a.is_leader()).await;
        let b = replica(lock("b-token"), config("b"), &checker);
        wait_for("b to follow", || b.elector.leader().as_deref() == Some("a")).await;
        sleep(Duration::from_millis(500)).await;
        let before = server.requests();
        sleep(Duration::from_secs(5)).await;
        let during = server.requests().since(&before);
        assert!(
            during.user("a") >= 5,
            "the leader renews: {}",
            during.user("a")
        );
        assert!(
            during.user("b") <= 1,
            "the standby polled: {} requests",
            during.user("b")
        );
        a.stop().await;
        wait_for("b to take over", || b.is_leader()).await;
        b.stop().await;
    })
    .await
}

/// A watch opened when the lock's last read is older than the server's watch history
/// lists first, so it reports the current record instead of failing with 410 Gone.
#[tokio::test]
async fn watch_opened_after_many_writes_reports_the_current_record() {
    bounded(
        "watch_opened_after_many_writes_reports_the_current_record",
        async {
            init_tracing();
            let server = ApiServer::start_with(ApiServerOptions::new().watch_history(3))
                .await
                .unwrap();
            let writer = KubeLeaseLock::new(server.client(), NS, "old");
            let watcher = KubeLeaseLock::new(server.client(), NS, "old");
            let mut v = writer.create(&rec("w0")).await.unwrap();
            let seen = watcher.get().await.unwrap().unwrap();
            for i in 1..=10 {
                v = writer.update(&rec(&format!("w{i}")), &v).await.unwrap();
            }
            // The watcher's last seen version is ten writes old.
            let mut w = watcher.watch().unwrap();
            match timeout(PATIENCE, w.next()).await.unwrap() {
                Some(Ok(LockEvent::Changed(got))) => {
                    assert_eq!(got.version, v);
                    assert_eq!(got.record.holder_identity, "w10");
                    assert_ne!(got.version, seen.version);
                }
                other => panic!("expected the current record, got {other:?}"),
            }
            // And it goes on following.
            let v2 = writer.update(&rec("after"), &v).await.unwrap();
            match timeout(PATIENCE, w.next()).await.unwrap() {
                Some(Ok(LockEvent::Changed(got))) => assert_eq!(got.version, v2),
                other => panic!("{other:?}"),
            }
            let lists = server.requests().count_where(|k| k.verb == "list");
            assert_eq!(lists, 1, "one list");
        },
    )
    .await
}

/// A quiet watch outlives the server's watch timeouts: the watch is reopened from
/// where it was, without listing again, and still reports the next change. The clock
/// is paused so that the server's 290 second timeouts pass at once.
#[tokio::test(start_paused = true)]
async fn watch_resumes_where_it_was_when_the_server_ends_it() {
    init_tracing();
    let server = ApiServer::start().await.unwrap();
    let writer = KubeLeaseLock::new(server.client(), NS, "quiet");
    let mut w = KubeLeaseLock::new(server.client(), NS, "quiet")
        .watch()
        .unwrap();
    assert!(matches!(w.next().await, Some(Ok(LockEvent::Deleted))));
    // Polled all along, as the elector polls it, while the server ends two watches.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = w.next().await {
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    sleep(Duration::from_secs(700)).await;
    assert!(rx.try_recv().is_err(), "nothing happened yet");
    let v = writer.create(&rec("a")).await.unwrap();
    match rx.recv().await {
        Some(Ok(LockEvent::Changed(got))) => assert_eq!(got.version, v),
        other => panic!("expected the created lease, got {other:?}"),
    }
    let requests = server.requests();
    assert!(requests.verb("watch") >= 3, "resumed: {requests:?}");
    assert_eq!(requests.verb("list"), 1, "resumed without listing again");
}

#[tokio::test]
async fn watch_reports_changes_deletes_and_bad_records() {
    bounded("watch_reports_changes_deletes_and_bad_records", async {
        let (_server, cluster) = server().await;
        let lock = cluster.lock(ResourceLockKind::Endpoints, "watched");
        let mut w = lock.watch().unwrap();
        // Nothing yet: the first list reports it absent.
        assert!(matches!(
            timeout(PATIENCE, w.next()).await.unwrap(),
            Some(Ok(LockEvent::Deleted))
        ));
        let v = lock.create(&rec("a")).await.unwrap();
        match timeout(PATIENCE, w.next()).await.unwrap() {
            Some(Ok(LockEvent::Changed(got))) => assert_eq!(got.version, v),
            other => panic!("{other:?}"),
        }
        let api: Api<Endpoints> = Api::namespaced(cluster.client.clone(), NS);
        let patch =
            serde_json::json!({"metadata": {"annotations": {(LEADER_ANNOTATION): "garbage"}}});
        api.patch("watched", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        match timeout(PATIENCE, w.next()).await.unwrap() {
            Some(Err(LockError::InvalidRecord {
                version: Some(_), ..
            })) => {}
            other => panic!("{other:?}"),
        }
        api.delete("watched", &DeleteParams::default())
            .await
            .unwrap();
        assert!(matches!(
            timeout(PATIENCE, w.next()).await.unwrap(),
            Some(Ok(LockEvent::Deleted))
        ));
    })
    .await
}

#[tokio::test]
async fn watch_ends_with_an_error_when_the_server_goes_away() {
    bounded(
        "watch_ends_with_an_error_when_the_server_goes_away",
        async {
            let (mut server, cluster) = server().await;
            let lock = cluster.lock(ResourceLockKind::Leases, "bye");
            let mut w = lock.watch().unwrap();
            assert!(timeout(PATIENCE, w.next()).await.unwrap().is_some());
            server.stop_serving().await;
            // The stream does not hang: it reports the failure or ends, and the elector polls.
            let end = timeout(PATIENCE, async {
                loop {
                    match w.next().await {
                        None => return None,
                        Some(Err(e)) => return Some(e),
                        Some(Ok(_)) => {}
                    }
                }
            })
            .await
            .expect("the watch ends when the server goes away");
            if let Some(e) = end {
                assert!(matches!(e, LockError::Unavailable { .. }), "{e:?}");
                assert!(w.next().await.is_none(), "nothing after the error");
            }
        },
    )
    .await
}

#[tokio::test]
async fn multilock_watch_sees_both_objects() {
    bounded("multilock_watch_sees_both_objects", async {
        let (_server, cluster) = server().await;
        let multi = cluster.lock(ResourceLockKind::EndpointsLeases, "both");
        let v = multi.create(&rec("m")).await.unwrap();
        let mut w = multi.watch().unwrap();
        match timeout(PATIENCE, w.next()).await.unwrap() {
            Some(Ok(LockEvent::Changed(got))) => assert_eq!(got.version, v),
            other => panic!("{other:?}"),
        }
        // A `leases` replica takes the secondary: the holders now differ.
        let lease = cluster.lock(ResourceLockKind::Leases, "both");
        let seen = lease.get().await.unwrap().unwrap();
        lease
            .update(&rec("lease-only"), &seen.version)
            .await
            .unwrap();
        match timeout(PATIENCE, w.next()).await.unwrap() {
            Some(Ok(LockEvent::Changed(got))) => {
                assert_eq!(got.record.holder_identity, UNKNOWN_LEADER)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            multi.get().await.unwrap().unwrap().record.holder_identity,
            UNKNOWN_LEADER
        );
    })
    .await
}

// ---- events -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_say_who_became_leader_and_who_stopped() {
    bounded("events_say_who_became_leader_and_who_stopped", async {
        let (_server, cluster) = server().await;
        let checker = Checker::new();
        let recorder = EventRecorder::new(
            ResourceLockKind::Leases,
            cluster.client.clone(),
            NS,
            "evented",
            "pod-a",
        )
        .component("test-scheduler");
        // Attached before the elector runs, so that it sees the first StartedLeading.
        let elector = LeaderElector::new(
            cluster.lock(ResourceLockKind::Leases, "evented"),
            config("pod-a"),
        )
        .unwrap();
        tokio::spawn(recorder.run(elector.events()));
        let a = Replica::spawn(
            "pod-a",
            elector,
            Link::direct(),
            &checker,
            Work::polite(),
            RETRY,
        );
        wait_for("a to lead", || a.is_leader()).await;
        let events: Api<Event> = Api::namespaced(cluster.client.clone(), NS);
        let messages = || async {
            let list = events.list(&ListParams::default()).await.unwrap();
            list.items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some("evented"))
                .collect::<Vec<_>>()
        };
        let start = Instant::now();
        let became = loop {
            let found = messages().await;
            if let Some(e) = found
                .into_iter()
                .find(|e| e.message.as_deref() == Some("pod-a became leader"))
            {
                break e;
            }
            assert!(start.elapsed() < PATIENCE, "no event");
            sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(became.reason.as_deref(), Some("LeaderElection"));
        assert_eq!(became.type_.as_deref(), Some("Normal"));
        assert_eq!(became.involved_object.kind.as_deref(), Some("Lease"));
        assert_eq!(
            became.reporting_component.as_deref(),
            Some("test-scheduler")
        );
        assert_eq!(became.reporting_instance.as_deref(), Some("pod-a"));
        let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), NS);
        let uid = leases.get("evented").await.unwrap().metadata.uid;
        assert_eq!(
            became.involved_object.uid, uid,
            "kubectl describe finds events by uid"
        );
        a.stop().await;
        let start = Instant::now();
        while !messages()
            .await
            .iter()
            .any(|e| e.message.as_deref() == Some("pod-a stopped leading"))
        {
            assert!(start.elapsed() < PATIENCE, "no stopped-leading event");
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A MultiLock's events go on both of its objects, and a repeat updates the earlier
/// event instead of failing or adding one.
#[tokio::test]
async fn multilock_events_go_on_both_objects() {
    bounded("multilock_events_go_on_both_objects", async {
        let (_server, cluster) = server().await;
        let lock = cluster.lock(ResourceLockKind::EndpointsLeases, "both-evented");
        lock.create(&rec("pod-a")).await.unwrap();
        let recorder = EventRecorder::new(
            ResourceLockKind::EndpointsLeases,
            cluster.client.clone(),
            NS,
            "both-evented",
            "pod-a",
        );
        recorder.record("became leader").await.unwrap();
        recorder.record("became leader").await.unwrap();
        let events: Api<Event> = Api::namespaced(cluster.client.clone(), NS);
        let mut kinds: Vec<_> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("both-evented"))
            .map(|e| {
                assert_eq!(e.message.as_deref(), Some("pod-a became leader"));
                assert!(e.involved_object.uid.is_some(), "{e:?}");
                e.involved_object.kind.unwrap_or_default()
            })
            .collect();
        kinds.sort();
        assert_eq!(kinds, ["Endpoints", "Lease"]);
    })
    .await
}

// ---- a record deleted or rewritten by someone else -------------------------------

/// How long the leader's work takes to stop after `lost` fires, as real work does: a
/// successor that leads before that overlaps it.
const WORK_STOP: Duration = Duration::from_millis(1000);

/// Leader a, watching standby b on a Lease or an Endpoints lock; the object deleted
/// (`kubectl delete`) or its holder blanked (`kubectl edit`) behind their backs. b must
/// not take it before a's lease ran out, and a's work must have stopped first.
async fn kube_tampered(cluster: &Cluster, kind: ResourceLockKind, blank: bool) {
    let name = cluster
        .name(&format!("tamper-{kind}-{}", blank as u8))
        .to_lowercase();
    let what = format!("{kind}, blank {blank}");
    let (t, checker) = (Timing::short(), Checker::new());
    let work = Work::polite().stopping_in(WORK_STOP);
    let start = |config: Config| {
        Replica::new(
            cluster.lock(kind, &name),
            Link::direct(),
            config,
            &checker,
            work,
        )
    };
    let a = start(t.config(&name, "a").recampaign(false));
    a.wait_leading(Duration::from_secs(20)).await;
    let b = start(t.config(&name, "b"));
    b.wait_following("a", Duration::from_secs(20)).await;
    sleep(Duration::from_millis(700)).await;

    let client = cluster.client.clone();
    let tampered_at = Instant::now();
    match (kind, blank) {
        (ResourceLockKind::Leases, false) => {
            let api: Api<Lease> = Api::namespaced(client, NS);
            api.delete(&name, &DeleteParams::default()).await.unwrap();
        }
        (ResourceLockKind::Leases, true) => {
            let api: Api<Lease> = Api::namespaced(client, NS);
            let patch = serde_json::json!({"spec": {"holderIdentity": ""}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
        (_, false) => {
            let api: Api<Endpoints> = Api::namespaced(client, NS);
            api.delete(&name, &DeleteParams::default()).await.unwrap();
        }
        (_, true) => {
            let api: Api<Endpoints> = Api::namespaced(client, NS);
            let current = api.get(&name).await.unwrap();
            let text = current.metadata.annotations.unwrap()[LEADER_ANNOTATION].clone();
            let mut record = LeaderElectionRecord::from_json(&text).unwrap();
            record.holder_identity.clear();
            let patch = serde_json::json!({"metadata": {"annotations": {LEADER_ANNOTATION: record.to_json()}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    }
    // a renewed, and b saw it, at most a retry period before the tampering.
    let earliest = tampered_at + t.lease - t.retry - t.slack;
    let h = handover(&checker, "a", &b, Duration::from_secs(30)).await;
    h.assert_bounds(&what, tampered_at, earliest, t.retry + WORK_STOP + t.slack);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_or_blanked_lease_and_endpoints_are_not_taken_while_the_leader_may_act() {
    bounded(
        "deleted_or_blanked_lease_and_endpoints_are_not_taken_while_the_leader_may_act",
        async {
            let (_server, cluster) = server().await;
            for kind in [ResourceLockKind::Leases, ResourceLockKind::Endpoints] {
                for blank in [false, true] {
                    kube_tampered(&cluster, kind, blank).await;
                }
            }
        },
    )
    .await
}
