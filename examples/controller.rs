//! A kube-rs controller that reconciles only while it leads.
//!
//! Every replica runs this; one leads and runs the `Controller`, the others wait. When
//! leadership is lost the controller shuts down gracefully (in-flight reconciles
//! finish, no new ones start) before another replica may take over; on Ctrl-C the
//! lease is released after that, so a standby takes over at once.
//!
//! ```text
//! cargo run -p leaderelection-examples --bin controller --features kube
//! cargo run -p leaderelection-examples --bin controller --features kube -- --shards 8
//! ```
//!
//! With `--shards N` the ConfigMaps are split into `N` shards by the FNV-1a hash of
//! their UID (the ranges Kubernetes' sharded list and watch filters by), each a Lease
//! of its own; every replica runs a controller per shard it owns, which reconciles
//! only that shard's ConfigMaps.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use leaderelection::controller::{run_controller, run_sharded_controller, Leading};
use leaderelection::lock::kube::KubeLeaseLock;
use leaderelection::{Config, LeaderElector, LeaseLock, ShardedElector};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let client = Client::try_default().await?;
    let lock_client = client.clone();

    let shards: u32 = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 0,
        [flag, n] if flag == "--shards" => n
            .parse()
            .map_err(|_| format!("--shards {n:?}: not a number"))?,
        other => {
            return Err(
                format!("unexpected arguments {other:?}; usage: controller [--shards N]").into(),
            )
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });
    let namespace = client.default_namespace().to_owned();
    let controller = move |_: &_| {
        Controller::new(
            Api::<ConfigMap>::default_namespaced(client.clone()),
            watcher::Config::default(),
        )
    };

    if shards > 0 {
        // One Lease per shard (configmap-controller-shard-<i>), balanced over the
        // replicas; a controller per owned shard.
        let locks = lock_client.clone();
        let elector = ShardedElector::new(
            Config::new("configmap-controller"),
            shards,
            move |name: &str| {
                Box::new(KubeLeaseLock::new(locks.clone(), namespace.clone(), name))
                    as Box<dyn LeaseLock>
            },
        )?;
        run_sharded_controller(
            &elector,
            shutdown,
            move |_, _, leadership| controller(leadership),
            reconcile,
            |_, e: &Infallible, _| match *e {},
            Arc::new(()),
        )
        .await;
        return Ok(());
    }

    // The replicas contend for a Lease in the client's namespace. In a pod, set the
    // identity from the pod name (downward API); the default is host name + suffix.
    let lock = KubeLeaseLock::new(lock_client, namespace, "configmap-controller");
    let elector = LeaderElector::new(lock, Config::new("configmap-controller"))?;

    // A fresh Controller every term, shut down gracefully when the term ends; its
    // reconcilers get the term's Leadership beside the context.
    run_controller(
        &elector,
        shutdown,
        controller,
        reconcile,
        |_, e: &Infallible, _| match *e {},
        Arc::new(()),
    )
    .await;
    Ok(())
}

async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Leading<()>>) -> Result<Action, Infallible> {
    // Under --shards, another shard's ConfigMap is its owner's to reconcile.
    if !ctx.owns(&*cm) {
        return Ok(Action::await_change());
    }
    let leadership = &ctx.leadership;
    // Act only while the lease is surely ours, and pass the fencing token along with
    // every write so that a deposed leader's late writes can be refused.
    if !leadership.is_valid() {
        return Ok(Action::await_change());
    }
    tracing::info!(
        configmap = %cm.name_any(),
        fencing_token = leadership.fencing_token(),
        "reconciled"
    );
    Ok(Action::requeue(Duration::from_secs(300)))
}
