//! A kube-runtime [`Controller`] that runs only while this replica leads: one call for
//! kube-rs users.
//!
//! Each term starts a fresh controller (so its watches and queue start from the state
//! of the cluster, not from what a previous term left), hands the reconcilers the
//! term's [`Leadership`] with the context, and shuts the controller down gracefully
//! when leadership ends: no reconcile starts after that, the running ones finish, and
//! only then may the elector release the lease or campaign again. A reconcile that
//! does not finish is aborted with the term's work before another replica may lead
//! (see [`LeaderElector::run`]).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::{StreamExt, TryFuture};
use kube::runtime::controller::{Action, Controller};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{LeaderElector, Leadership};

/// What a reconciler run by [`run_controller`] is given beside the object: the term it
/// runs in and the caller's context.
#[derive(Debug)]
pub struct Leading<Ctx> {
    /// The term the reconcile runs in: check [`Leadership::is_valid`] before acting,
    /// and pass [`Leadership::fencing_token`] with writes that a deposed leader's late
    /// writes must not overtake.
    pub leadership: Leadership,
    /// The context given to [`run_controller`], shared by every term.
    pub context: Arc<Ctx>,
}

/// Runs a kube-runtime [`Controller`] in every term `elector` wins, until `shutdown`
/// is cancelled (see [`LeaderElector::run`] for what the elector does around it).
///
/// `controller` builds the term's controller (`Controller::new(api, config)` and its
/// `owns`, `watches`); it is given the term's [`Leadership`], so that it can also
/// stop on it. `reconcile` and `error_policy` are those of [`Controller::run`], with a
/// [`Leading`] as their context.
///
/// # Examples
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::sync::Arc;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::runtime::controller::{Action, Controller};
/// use kube::runtime::watcher;
/// use kube::Api;
/// use leaderelection::controller::{run_controller, Leading};
/// use leaderelection::lock::kube::KubeLeaseLock;
/// use leaderelection::{Config, LeaderElector};
/// use tokio_util::sync::CancellationToken;
///
/// async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Leading<()>>) -> Result<Action, Infallible> {
///     if ctx.leadership.is_valid() {
///         // act on `cm`, passing ctx.leadership.fencing_token() along
///     }
///     Ok(Action::await_change())
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = kube::Client::try_default().await?;
/// let lock = KubeLeaseLock::new(client.clone(), "default", "configmap-controller");
/// let elector = LeaderElector::new(lock, Config::new("configmap-controller"))?;
/// run_controller(
///     &elector,
///     CancellationToken::new(),
///     move |_| Controller::new(Api::<ConfigMap>::default_namespaced(client.clone()), watcher::Config::default()),
///     reconcile,
///     |_, e: &Infallible, _| match *e {},
///     Arc::new(()),
/// )
/// .await;
/// # Ok(()) }
/// ```
pub async fn run_controller<K, Ctx, Make, Rec, RecFut, Policy>(
    elector: &LeaderElector,
    shutdown: CancellationToken,
    mut controller: Make,
    reconcile: Rec,
    error_policy: Policy,
    context: Arc<Ctx>,
) where
    K: Clone + Resource + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Debug + Eq + Hash + Clone + Unpin + Send + Sync,
    Ctx: Send + Sync + 'static,
    Make: FnMut(&Leadership) -> Controller<K>,
    Rec: FnMut(Arc<K>, Arc<Leading<Ctx>>) -> RecFut + Clone + Send + 'static,
    RecFut: TryFuture<Ok = Action> + Send + 'static,
    RecFut::Error: std::error::Error + Send + 'static,
    Policy: Fn(Arc<K>, &RecFut::Error, Arc<Leading<Ctx>>) -> Action + Clone + Send + Sync + 'static,
{
    elector
        .run(shutdown, move |leadership| {
            let stop = leadership.token();
            let stream = controller(&leadership)
                .graceful_shutdown_on(stop.cancelled_owned())
                .run(
                    reconcile.clone(),
                    error_policy.clone(),
                    Arc::new(Leading {
                        leadership,
                        context: Arc::clone(&context),
                    }),
                );
            async move {
                stream
                    .for_each(|result| async move {
                        if let Err(e) = result {
                            debug!(error = %e, "controller");
                        }
                    })
                    .await;
                debug!("the controller stopped with the term");
            }
        })
        .await
}
