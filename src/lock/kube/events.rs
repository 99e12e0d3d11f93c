//! Events on the lock object, as client-go's `RecordEvent` posts them: `kubectl
//! describe lease <name>` then shows who became leader and who stopped leading.

use std::fmt;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::task::JoinHandle;
use tracing::warn;

use super::error::classify;
use super::kind::ResourceLockKind;
use super::object::{Format, ObjectLock};
use super::{annotation, lease};
use crate::error::LockError;
use crate::{ElectionEvent, LeaderElector};

/// Posts an Event with reason `LeaderElection` on the lock's objects whenever this
/// replica starts or stops leading, with client-go's messages: `<identity> became
/// leader`, `<identity> stopped leading`. For `endpointsleases` and
/// `configmapsleases` the event goes on both objects, as client-go's MultiLock does.
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
/// ```no_run
/// use leaderelection::lock::kube::{EventRecorder, KubeLeaseLock, ResourceLockKind};
/// use leaderelection::{Config, LeaderElector};
///
/// # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::new("my-controller").identity("pod-a");
/// let lock = KubeLeaseLock::new(client.clone(), "default", "my-controller");
/// let elector = LeaderElector::new(lock, config)?;
/// EventRecorder::new(ResourceLockKind::Leases, client, "default", "my-controller", "pod-a")
///     .component("my-controller")
///     .spawn(&elector);
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

    /// Posts `became leader` and `stopped leading` as `elector` reports them, until
    /// the elector is dropped. Failures are logged.
    ///
    /// Call it before [`LeaderElector::run`]: it reports the changes from the moment
    /// it is called.
    pub fn spawn(self, elector: &LeaderElector) -> JoinHandle<()> {
        let mut events = elector.events();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let action = match event {
                    ElectionEvent::StartedLeading { .. } => "became leader",
                    ElectionEvent::StoppedLeading => "stopped leading",
                    _ => continue,
                };
                if let Err(e) = self.record(action).await {
                    warn!(error = %e, action, "failed to post the leader election event");
                }
            }
        })
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

fn recorder(client: &kube::Client, component: &str, identity: &str) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: component.to_owned(),
            instance: Some(identity.to_owned()),
        },
    )
}
