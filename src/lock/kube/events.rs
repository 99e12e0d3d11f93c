//! Events on the lock object, as client-go's `RecordEvent` posts them: `kubectl
//! describe lease <name>` then shows who became leader and who stopped leading.

use std::fmt;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::warn;

use super::error::classify;
use super::kind::ResourceLockKind;
use super::object::{Format, ObjectLock};
use super::{annotation, lease};
use crate::error::LockError;
use crate::status::ElectionEvent;

/// Posts an Event with reason `LeaderElection` on the lock's objects whenever this
/// replica starts or stops leading, with client-go's messages: `<identity> became
/// leader`, `<identity> stopped leading`. For `endpointsleases` and
/// `configmapsleases` the event goes on both objects, as client-go's MultiLock does.
///
/// [`run`](Self::run) takes the [`ElectionEvent`]s of any election: the `events()`
/// of [`LeaderElector`](crate::LeaderElector) and
/// [`EtcdElection`](crate::EtcdElection), or the
/// [`shard_events`](crate::ShardedElector::shard_events) of one shard of a
/// [`ShardedElector`](crate::ShardedElector).
///
/// Events go through kube-runtime's [`Recorder`] as `events.k8s.io/v1` Events
/// (`kubectl get events` and `kubectl describe` show them like client-go's core/v1
/// ones); a repeat within minutes updates the earlier event's series.
///
/// Events are informational: a failure to post one is logged and never affects the
/// election. The service account needs `create` and `patch` on `events` in the
/// `events.k8s.io` group.
///
/// # Examples
///
/// A [`LeaderElector`](crate::LeaderElector) on a Lease, its events on that Lease:
///
/// ```no_run
/// use leaderelection::lock::kube::{EventRecorder, KubeLeaseLock, ResourceLockKind};
/// use leaderelection::{Config, LeaderElector};
///
/// # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::new("my-controller").identity("pod-a");
/// let lock = KubeLeaseLock::new(client.clone(), "default", "my-controller");
/// let elector = LeaderElector::new(lock, config)?;
/// let recorder =
///     EventRecorder::new(ResourceLockKind::Leases, client, "default", "my-controller", "pod-a")
///         .component("my-controller");
/// // Subscribe before `run`, so the first term is reported.
/// tokio::spawn(recorder.run(elector.events()));
/// # Ok(()) }
/// ```
///
/// Each shard of a [`ShardedElector`](crate::ShardedElector) on its own Lease:
///
/// ```no_run
/// use leaderelection::lock::kube::{EventRecorder, KubeLeaseLock, ResourceLockKind};
/// use leaderelection::{Config, LeaseLock, ShardedElector};
///
/// # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let locks = client.clone();
/// let elector = ShardedElector::new(Config::new("jobs").identity("pod-a"), 8, move |name: &str| {
///     Box::new(KubeLeaseLock::new(locks.clone(), "default", name)) as Box<dyn LeaseLock>
/// })?;
/// for shard in 0..elector.shards() {
///     let recorder = EventRecorder::new(
///         ResourceLockKind::Leases,
///         client.clone(),
///         "default",
///         elector.shard_lock_name(shard),
///         "pod-a",
///     );
///     tokio::spawn(recorder.run(elector.shard_events(shard)));
/// }
/// # Ok(()) }
/// ```
///
/// An [`EtcdElection`](crate::EtcdElection) has no Kubernetes object of its own: the
/// events go on the object that stands for the component, here its Lease:
///
/// ```no_run
/// # #[cfg(feature = "etcd")]
/// # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use leaderelection::lock::etcd::{connect, EtcdOptions};
/// use leaderelection::lock::kube::{EventRecorder, ResourceLockKind};
/// use leaderelection::{Config, EtcdElection};
///
/// let etcd = connect(&["http://127.0.0.1:2379"], &EtcdOptions::new()).await?;
/// let election = EtcdElection::new(etcd, "my-controller", Config::new("my-controller").identity("pod-a"))?;
/// let recorder =
///     EventRecorder::new(ResourceLockKind::Leases, client, "default", "my-controller", "pod-a");
/// tokio::spawn(recorder.run(election.events()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventRecorder {
    objects: Vec<ObjectLock>,
    client: kube::Client,
    identity: String,
    component: String,
    recorder: Recorder,
}

impl fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRecorder")
            .field(
                "objects",
                &self
                    .objects
                    .iter()
                    .map(ObjectLock::describe)
                    .collect::<Vec<_>>(),
            )
            .field("identity", &self.identity)
            .field("component", &self.component)
            .finish()
    }
}

impl EventRecorder {
    /// A recorder for the lock of `kind` on `namespace/name`, reporting `identity`
    /// (the identity in the elector's [`Config`](crate::Config)). The reporting
    /// component defaults to `leaderelection`.
    pub fn new(
        kind: ResourceLockKind,
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        let formats: &[Format] = match kind {
            ResourceLockKind::Leases => &[lease::FORMAT],
            ResourceLockKind::Endpoints => &[annotation::ENDPOINTS],
            ResourceLockKind::ConfigMaps => &[annotation::CONFIG_MAP],
            ResourceLockKind::EndpointsLeases => &[annotation::ENDPOINTS, lease::FORMAT],
            ResourceLockKind::ConfigMapsLeases => &[annotation::CONFIG_MAP, lease::FORMAT],
        };
        let (namespace, name) = (namespace.into(), name.into());
        let objects = formats
            .iter()
            .map(|f| ObjectLock::new(*f, client.clone(), namespace.clone(), name.clone()))
            .collect();
        let identity = identity.into();
        let component = "leaderelection".to_owned();
        Self {
            recorder: recorder(&client, &component, &identity),
            objects,
            client,
            identity,
            component,
        }
    }

    /// The component named as the event's source (`reportingController`, shown as
    /// `reportingComponent` in core/v1), such as `kube-scheduler`. Default
    /// `leaderelection`.
    #[must_use]
    pub fn component(mut self, component: impl Into<String>) -> Self {
        self.component = component.into();
        self.recorder = recorder(&self.client, &self.component, &self.identity);
        self
    }

    /// Posts `<identity> <action>` on every object of the lock, client-go's
    /// `RecordEvent(action)`.
    ///
    /// # Errors
    ///
    /// The first failure to post, mapped like a lock's errors (for example
    /// [`LockError::Forbidden`] without RBAC permission on events).
    pub async fn record(&self, action: &str) -> Result<(), LockError> {
        let mut first_error = None;
        for object in &self.objects {
            if let Err(e) = self.post(object, action).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Posts `became leader` and `stopped leading` for each
    /// [`ElectionEvent::StartedLeading`] and [`ElectionEvent::StoppedLeading`] in
    /// `events`, in order, until the channel closes (the election is dropped). Other
    /// events are skipped; failures to post are logged.
    ///
    /// Take `events` from the election before running it: the receiver gets the
    /// changes from the moment it was made. Spawn the returned future beside the
    /// election (`tokio::spawn(recorder.run(elector.events()))`).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the posting; an event being posted may or may not
    /// have been.
    pub async fn run(self, mut events: UnboundedReceiver<ElectionEvent>) {
        while let Some(event) = events.recv().await {
            let Some(action) = action(&event) else {
                continue;
            };
            if let Err(e) = self.record(action).await {
                warn!(error = %e, action, "failed to post the leader election event");
            }
        }
    }

    async fn post(&self, object: &ObjectLock, action: &str) -> Result<(), LockError> {
        if object.last_seen_uid().is_none() {
            // kubectl describe finds events by the object's uid; without one the event
            // is still posted, just not shown there.
            let _ = object.fetch().await;
        }
        let resource = object.kind().resource();
        let regarding = ObjectReference {
            api_version: Some(resource.api_version),
            kind: Some(resource.kind),
            namespace: Some(object.namespace.clone()),
            name: Some(object.name.clone()),
            uid: object.last_seen_uid(),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Normal,
            reason: "LeaderElection".to_owned(),
            note: Some(format!("{} {action}", self.identity)),
            // The recorder folds repeats of one action into a series, so each message
            // is its own action: a stop must not count as one more start.
            action: action.to_owned(),
            secondary: None,
        };
        self.recorder
            .publish(&event, &regarding)
            .await
            .map_err(|e| {
                classify("create", &format!("events/{}", object.namespace), e).into_error()
            })
    }
}

/// client-go's `RecordEvent` action for a change of leadership, if it is posted.
fn action(event: &ElectionEvent) -> Option<&'static str> {
    match event {
        ElectionEvent::StartedLeading { .. } => Some("became leader"),
        ElectionEvent::StoppedLeading => Some("stopped leading"),
        _ => None,
    }
}

fn recorder(client: &kube::Client, component: &str, identity: &str) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: component.to_owned(),
            instance: Some(identity.to_owned()),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn only_this_replicas_changes_of_leadership_are_posted() {
        assert_eq!(
            action(&ElectionEvent::StartedLeading { fencing_token: 7 }),
            Some("became leader")
        );
        assert_eq!(
            action(&ElectionEvent::StoppedLeading),
            Some("stopped leading")
        );
        assert_eq!(action(&ElectionEvent::NewLeader(Some("b".into()))), None);
        assert_eq!(action(&ElectionEvent::NewLeader(None)), None);
    }

    /// A recorder aimed at a port that accepts connections and drops them, and the
    /// count of connections made.
    async fn recorder_and_connections(kind: ResourceLockKind) -> (EventRecorder, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        let config = kube::Config::new(url.parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let recorder = EventRecorder::new(kind, client, "default", "sched", "pod-a");
        (recorder, connections)
    }

    #[tokio::test]
    async fn new_leaders_are_not_posted_and_the_recorder_ends_with_the_channel() {
        let (recorder, connections) = recorder_and_connections(ResourceLockKind::Leases).await;
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(ElectionEvent::NewLeader(Some("pod-b".into())))
            .unwrap();
        tx.send(ElectionEvent::NewLeader(None)).unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(30), recorder.run(rx))
            .await
            .expect("the recorder ends when the channel closes");
        assert_eq!(connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_failure_to_post_is_not_fatal() {
        let (recorder, connections) =
            recorder_and_connections(ResourceLockKind::EndpointsLeases).await;
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(ElectionEvent::StartedLeading { fencing_token: 3 })
            .unwrap();
        tx.send(ElectionEvent::StoppedLeading).unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(30), recorder.run(rx))
            .await
            .expect("the recorder goes on after failures and ends with the channel");
        assert!(connections.load(Ordering::SeqCst) > 0);
    }

    #[tokio::test]
    async fn a_multi_lock_recorder_posts_on_both_objects() {
        let (recorder, _) = recorder_and_connections(ResourceLockKind::ConfigMapsLeases).await;
        let objects: Vec<String> = recorder.objects.iter().map(ObjectLock::describe).collect();
        assert_eq!(
            objects,
            ["configmaps/default/sched", "leases/default/sched"]
        );
    }
}
