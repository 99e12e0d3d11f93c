//! The election scenarios against a real cluster: the one in `KUBECONFIG` (a kind
//! cluster started by `scripts/kind.sh`, which runs them with `--ignored`). They are
//! ignored by default, so a run without a cluster counts them as ignored, never as
//! passed; asked for without a reachable cluster, they fail saying why.
//!
//! Locks are created in `LEADERELECTION_TEST_NAMESPACE` (default `default`) under
//! names unique to the run, and deleted at the end.
#![cfg(feature = "kube")]

mod kube_scenarios;

use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use leaderelection::lock::kube::{KubeLock, ResourceLockKind};
use leaderelection::LeaseLock;
use leaderelection_testkit::checker::Checker;

use kube_scenarios::*;

/// How long the reachability check may take before the cluster counts as absent.
const PROBE: Duration = Duration::from_secs(5);

/// The cluster in `KUBECONFIG` (or `~/.kube/config`).
///
/// # Panics
///
/// When there is none or it does not answer, with the reason.
async fn cluster(test: &str) -> Cluster {
    init_tracing();
    let skip = |why: String| -> Cluster {
        panic!(
            "kind test {test}: {why}; run scripts/kind.sh to start a cluster and run these tests"
        )
    };
    let kubeconfig = match Kubeconfig::read() {
        Ok(k) => k,
        Err(e) => return skip(format!("no kubeconfig ({e})")),
    };
    let config =
        match kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await
        {
            Ok(mut c) => {
                c.connect_timeout = Some(PROBE);
                c
            }
            Err(e) => return skip(format!("the kubeconfig is not usable ({e})")),
        };
    let client = match kube::Client::try_from(config) {
        Ok(c) => c,
        Err(e) => return skip(format!("cannot build a client ({e})")),
    };
    match tokio::time::timeout(PROBE, client.apiserver_version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return skip(format!(
                "the cluster in the kubeconfig is not reachable ({e})"
            ))
        }
        Err(_) => return skip(format!("the cluster did not answer within {PROBE:?}")),
    }
    let namespace =
        std::env::var("LEADERELECTION_TEST_NAMESPACE").unwrap_or_else(|_| "default".to_owned());
    let suffix: u32 = rand_suffix();
    Cluster {
        client,
        namespace,
        prefix: format!("le-{test}-{suffix:08x}").replace('_', "-"),
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Deletes the objects this run created.
async fn cleanup(cluster: &Cluster) {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Endpoints};
    let ns = &cluster.namespace;
    let mine = |name: Option<&String>| name.is_some_and(|n| n.starts_with(&cluster.prefix));
    macro_rules! delete_all {
        ($t:ty) => {{
            let api: Api<$t> = Api::namespaced(cluster.client.clone(), ns);
            if let Ok(list) = api.list(&ListParams::default()).await {
                for o in list.items {
                    if mine(o.metadata.name.as_ref()) {
                        let _ = api
                            .delete(
                                o.metadata.name.as_deref().unwrap_or_default(),
                                &DeleteParams::default(),
                            )
                            .await;
                    }
                }
            }
        }};
    }
    delete_all!(Lease);
    delete_all!(Endpoints);
    delete_all!(ConfigMap);
}

macro_rules! kind_test {
    ($name:ident, $kind:expr) => {
        #[ignore = "needs a Kubernetes cluster in KUBECONFIG: run scripts/kind.sh"]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            bounded(stringify!($name), async {
                let cluster = cluster(stringify!($name)).await;
                all_scenarios(&cluster, $kind).await;
                cleanup(&cluster).await;
            })
            .await
        }
    };
}

kind_test!(leases, ResourceLockKind::Leases);
kind_test!(endpoints, ResourceLockKind::Endpoints);
kind_test!(configmaps, ResourceLockKind::ConfigMaps);
kind_test!(endpointsleases, ResourceLockKind::EndpointsLeases);
kind_test!(configmapsleases, ResourceLockKind::ConfigMapsLeases);

#[ignore = "needs a Kubernetes cluster in KUBECONFIG: run scripts/kind.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_endpoints_to_leases() {
    bounded("migration_from_endpoints_to_leases", async {
        let cluster = cluster("migration").await;
        migration_never_has_two_leaders(&cluster, false).await;
        cleanup(&cluster).await;
    })
    .await
}

/// With `LEADERELECTION_SA_TOKEN` set (scripts/kind.sh sets it to a token of the
/// ServiceAccount in `deploy/`), a replica authenticated as that account can lead on
/// the Lease the Role names: the RBAC rules in `deploy/` are enough, watch included.
#[ignore = "needs a Kubernetes cluster in KUBECONFIG: run scripts/kind.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_is_enough_to_lead() {
    bounded("deploy_rbac_is_enough_to_lead", async {
    let cluster = cluster("rbac").await;
    let token = std::env::var("LEADERELECTION_SA_TOKEN")
        .expect("LEADERELECTION_SA_TOKEN: a token of deploy/'s ServiceAccount (scripts/kind.sh sets it)");
    let namespace = std::env::var("LEADERELECTION_SA_NAMESPACE")
        .unwrap_or_else(|_| "leaderelection-demo".into());
    let name =
        std::env::var("LEADERELECTION_SA_LEASE").unwrap_or_else(|_| "example-scheduler".into());
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let client = kube::Client::try_from(config).expect("client");
    let sa = Cluster {
        client,
        namespace: namespace.clone(),
        prefix: String::new(),
    };
    let checker = Checker::new();
    let lock = |_| {
        KubeLock::new(
            ResourceLockKind::Leases,
            sa.client.clone(),
            &namespace,
            &name,
        )
    };
    let a = replica(lock(()), config_for("sa-a"), &checker);
    let b = replica(lock(()), config_for("sa-b"), &checker);
    let leader = wait_for_leader(&[&a, &b]).await;
    let who = [&a, &b][leader].id.clone();
    // The standby learns the leader, through the watch or its polling.
    let other = [&a, &b][1 - leader];
    wait_for("the standby to follow", || {
        other.elector.leader().as_deref() == Some(&who)
    })
    .await;
    let got = lock(())
        .get()
        .await
        .expect("get is allowed")
        .expect("the lease exists");
    assert_eq!(got.record.holder_identity, who);
    a.stop().await;
    b.stop().await;
    drop(cluster);
    })
    .await
}

fn config_for(id: &str) -> leaderelection::Config {
    config(id)
}
