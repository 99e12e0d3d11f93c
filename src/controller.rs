//! A kube-runtime [`Controller`] that runs only while this replica leads: one call for
//! kube-rs users.
//!
//! Each term starts a fresh controller (so its watches and queue start from the state
//! of the cluster, not from what a previous term left), hands the reconcilers the
//! term's [`Leadership`] with the context, and shuts the controller down gracefully
//! when leadership ends: no reconcile starts after that, the running ones finish, and
//! only then may the elector release the lease or campaign again. Leadership ends for
//! the controller when it is lost or at the instant [`Leadership::valid_until`] passes
//! unrenewed, whichever is first: a busy runtime may run the elector's task, which
//! cancels the term, a while later. A reconcile that
//! does not finish is aborted with the term's work before another replica may lead
//! (see [`LeaderElector::run`]).

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::{future, Stream, StreamExt, TryFuture, TryFutureExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{LeaderElector, Leadership, ShardRange, ShardedElector};

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
    /// The shard the term is for, and its range of object uids, under
    /// [`run_sharded_controller`]; `None` under [`run_controller`].
    pub shard: Option<(u32, ShardRange)>,
}

impl<Ctx> Leading<Ctx> {
    /// Whether `object` belongs to this term: always without shards; with them, when
    /// its `metadata.uid` falls in the shard's range (an object without a uid, not
    /// yet stored, belongs to no shard).
    pub fn owns<K: Resource>(&self, object: &K) -> bool {
        match &self.shard {
            None => true,
            Some((_, range)) => object
                .meta()
                .uid
                .as_deref()
                .is_some_and(|uid| range.contains_key(uid)),
        }
    }
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
            let controller = controller(&leadership);
            let leading = Leading {
                leadership,
                context: Arc::clone(&context),
                shard: None,
            };
            lead(controller, leading, reconcile.clone(), error_policy.clone())
        })
        .await
}

/// Like [`run_controller`], on a [`ShardedElector`]: a controller per shard this
/// replica owns, each in the shard's own term. `controller` is given the shard, its
/// [`ShardRange`] and the term.
///
/// Each shard's controller must act only on the shard's objects. The simplest way is
/// to skip the others in the reconciler with [`Leading::owns`], as below; every
/// shard's controller then caches every object. To cache only the shard's objects,
/// build the controller on [`shard_events`] with kube-runtime's
/// `Controller::for_stream` (its `unstable-runtime-stream-control` feature):
/// `Controller::for_stream(reflector(writer, shard_events(api, config, range)).applied_objects(), reader)`.
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::sync::Arc;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::runtime::controller::{Action, Controller};
/// use kube::runtime::watcher;
/// use kube::Api;
/// use leaderelection::controller::{run_sharded_controller, Leading};
/// use leaderelection::lock::kube::KubeLeaseLock;
/// use leaderelection::{Config, LeaseLock, ShardedElector};
/// use tokio_util::sync::CancellationToken;
///
/// async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Leading<()>>) -> Result<Action, Infallible> {
///     if !ctx.owns(&*cm) {
///         return Ok(Action::await_change()); // another shard's object
///     }
///     Ok(Action::await_change())
/// }
///
/// # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let locks = client.clone();
/// let elector = ShardedElector::new(Config::new("cm-controller"), 8, move |name: &str| {
///     Box::new(KubeLeaseLock::new(locks.clone(), "default", name)) as Box<dyn LeaseLock>
/// })?;
/// run_sharded_controller(
///     &elector,
///     CancellationToken::new(),
///     move |_shard, _range, _| {
///         Controller::new(Api::<ConfigMap>::default_namespaced(client.clone()), watcher::Config::default())
///     },
///     reconcile,
///     |_, e: &Infallible, _| match *e {},
///     Arc::new(()),
/// )
/// .await;
/// # Ok(()) }
/// ```
pub async fn run_sharded_controller<K, Ctx, Make, Rec, RecFut, Policy>(
    elector: &ShardedElector,
    shutdown: CancellationToken,
    controller: Make,
    reconcile: Rec,
    error_policy: Policy,
    context: Arc<Ctx>,
) where
    K: Clone + Resource + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Debug + Eq + Hash + Clone + Unpin + Send + Sync,
    Ctx: Send + Sync + 'static,
    Make: Fn(u32, ShardRange, &Leadership) -> Controller<K> + Send + Sync + 'static,
    Rec: FnMut(Arc<K>, Arc<Leading<Ctx>>) -> RecFut + Clone + Send + Sync + 'static,
    RecFut: TryFuture<Ok = Action> + Send + 'static,
    RecFut::Error: std::error::Error + Send + 'static,
    Policy: Fn(Arc<K>, &RecFut::Error, Arc<Leading<Ctx>>) -> Action + Clone + Send + Sync + 'static,
{
    let shards = elector.shards();
    elector
        .run(shutdown, move |shard, leadership| {
            let range = ShardRange::of(shard, shards);
            let controller = controller(shard, range, &leadership);
            let leading = Leading {
                leadership,
                context: Arc::clone(&context),
                shard: Some((shard, range)),
            };
            lead(controller, leading, reconcile.clone(), error_policy.clone())
        })
        .await
}

/// One term's work: `controller`, shut down gracefully when the term ends, run to its
/// end.
fn lead<K, Ctx, Rec, RecFut, Policy>(
    controller: Controller<K>,
    leading: Leading<Ctx>,
    reconcile: Rec,
    error_policy: Policy,
) -> impl Future<Output = ()> + Send + 'static
where
    K: Clone + Resource + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Debug + Eq + Hash + Clone + Unpin + Send + Sync,
    Ctx: Send + Sync + 'static,
    Rec: FnMut(Arc<K>, Arc<Leading<Ctx>>) -> RecFut + Send + 'static,
    RecFut: TryFuture<Ok = Action> + Send + 'static,
    RecFut::Error: std::error::Error + Send + 'static,
    Policy: Fn(Arc<K>, &RecFut::Error, Arc<Leading<Ctx>>) -> Action + Send + Sync + 'static,
{
    let ends = invalid(leading.leadership.clone());
    let stream = controller.graceful_shutdown_on(ends).run(
        guarded(reconcile),
        error_policy,
        Arc::new(leading),
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
}

/// A reconcile, or its skipped stand-in.
type Guarded<F> = future::Either<
    futures::future::IntoFuture<F>,
    future::Ready<Result<Action, <F as TryFuture>::Error>>,
>;

/// `reconcile`, skipped once its term is no longer valid. The controller is shutting
/// down then, but kube-runtime may still start a reconcile it had already scheduled.
fn guarded<K, Ctx, Rec, RecFut>(
    mut reconcile: Rec,
) -> impl FnMut(Arc<K>, Arc<Leading<Ctx>>) -> Guarded<RecFut>
where
    Rec: FnMut(Arc<K>, Arc<Leading<Ctx>>) -> RecFut,
    RecFut: TryFuture<Ok = Action>,
{
    move |object, leading| {
        if leading.leadership.is_valid() {
            future::Either::Left(reconcile(object, leading).into_future())
        } else {
            future::Either::Right(future::ready(Ok(Action::await_change())))
        }
    }
}

/// Completes when `leadership` stops being valid: when it is lost, or when
/// `valid_until` passes unrenewed. The elector cancels the term then too, but only
/// once its task runs; the controller must not wait for that.
async fn invalid(leadership: Leadership) {
    loop {
        let until = leadership.valid_until();
        tokio::select! {
            () = leadership.lost() => return,
            () = tokio::time::sleep_until(until) => {
                if leadership.valid_until() <= until {
                    return;
                }
            }
        }
    }
}

/// kube-runtime's [`watcher()`] of `api`, keeping only the objects whose
/// `metadata.uid` falls in `range`: the client-side form of the API server's
/// `shardSelector` (KEP-5866), which kube's watcher cannot send. An object never
/// moves between ranges: its uid never changes.
pub fn shard_events<K>(
    api: Api<K>,
    config: watcher::Config,
    range: ShardRange,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let ours = move |o: &K| {
        o.meta()
            .uid
            .as_deref()
            .is_some_and(|uid| range.contains_key(uid))
    };
    watcher(api, config).filter(move |event| {
        future::ready(match event {
            Ok(Event::Apply(o) | Event::InitApply(o) | Event::Delete(o)) => ours(o),
            _ => true,
        })
    })
}
