//! Kubernetes locks: the record in a coordination.k8s.io/v1 Lease, in the leader
//! annotation of an Endpoints or ConfigMap, or in two objects at once while migrating.
//!
//! Every lock speaks client-go's wire format, so a Rust replica and a Go replica
//! (kube-scheduler, kube-controller-manager, an operator built on client-go) can contend
//! for the same object and respect each other:
//!
//! | `--leader-elect-resource-lock` | lock | where the record is |
//! | --- | --- | --- |
//! | `leases` | [`KubeLeaseLock`] | the spec of a `coordination.k8s.io/v1` Lease |
//! | `endpoints` | [`EndpointsLock`] | the annotation [`LEADER_ANNOTATION`] of a v1 Endpoints |
//! | `configmaps` | [`ConfigMapLock`] | the annotation [`LEADER_ANNOTATION`] of a v1 ConfigMap |
//! | `endpointsleases` | [`MultiLock`] | an Endpoints (primary) and a Lease (secondary) |
//! | `configmapsleases` | [`MultiLock`] | a ConfigMap (primary) and a Lease (secondary) |
//!
//! client-go has removed all but `leases`; the others are kept here so that old
//! deployments can migrate to Leases without a moment with two leaders (see
//! `docs/kubernetes.md`).
//!
//! Each operation is one request (two for a [`MultiLock`]); updates are PUTs carrying
//! the `resourceVersion` that was read, so the API server refuses them with 409 Conflict
//! when someone wrote in between. The version of a record is the object's
//! `resourceVersion`, which kube-apiserver takes from etcd's revision: it grows with
//! every write, so it is also the fencing token.
//!
//! Standbys follow the object with kube-runtime's watcher (a list, then a watch, with
//! a field selector on its name), resumed from the last `resourceVersion` seen when
//! the server ends a watch.
//!
//! # RBAC
//!
//! A replica needs `get`, `update`, `list` and `watch` on the named object and
//! `create` on the resource (RBAC cannot restrict `create` by name); a Role and a
//! RoleBinding are in `deploy/`. Without `list` and `watch` the lock still works, by
//! polling every retry period. [`EventRecorder`] needs `create` and `patch` on
//! `events.k8s.io` `events`.
//!
//! # Examples
//!
//! ```no_run
//! use leaderelection::lock::kube::KubeLock;
//! use leaderelection::{Config, LeaderElector};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let lock = KubeLock::from_resource_lock_name("leases", client, "kube-system", "my-scheduler")?;
//! let elector = LeaderElector::new(lock, Config::new("my-scheduler"))?;
//! elector
//!     .run(CancellationToken::new(), |leadership| async move {
//!         leadership.lost().await;
//!     })
//!     .await;
//! # Ok(()) }
//! ```

use async_trait::async_trait;

use crate::error::LockError;
use crate::lock::{LeaseLock, Version, Versioned, WatchStream};
use crate::record::LeaderElectionRecord;

mod annotation;
mod candidate;
mod error;
mod events;
mod kind;
mod lease;
mod multi;
mod object;
mod watch;

pub use annotation::{ConfigMapLock, EndpointsLock, LEADER_ANNOTATION};
pub use candidate::{
    InvalidCandidate, LeaseCandidate, CANDIDATE_RENEW_INTERVAL, OLDEST_EMULATION_VERSION,
};
pub use error::ApiError;
pub use events::EventRecorder;
pub use kind::{ResourceLockKind, UnknownResourceLock};
pub use lease::KubeLeaseLock;
pub use multi::{MultiLock, UNKNOWN_LEADER};

use kind::check_name;

/// Any of this module's locks, chosen at run time by kind.
///
/// [`from_resource_lock_name`](Self::from_resource_lock_name) builds one from the
/// value of a `--leader-elect-resource-lock` flag.
///
/// # Examples
///
/// ```no_run
/// use leaderelection::lock::kube::{KubeLock, ResourceLockKind};
/// use leaderelection::{Config, LeaderElector};
///
/// # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let lock = KubeLock::new(ResourceLockKind::EndpointsLeases, client, "kube-system", "kube-scheduler");
/// assert_eq!(lock.kind(), ResourceLockKind::EndpointsLeases);
/// let elector = LeaderElector::new(lock, Config::new("kube-scheduler"))?;
/// # let _ = elector; Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum KubeLock {
    /// `leases`.
    Lease(KubeLeaseLock),
    /// `endpoints`.
    Endpoints(EndpointsLock),
    /// `configmaps`.
    ConfigMap(ConfigMapLock),
    /// `endpointsleases`.
    EndpointsLeases(MultiLock<EndpointsLock, KubeLeaseLock>),
    /// `configmapsleases`.
    ConfigMapsLeases(MultiLock<ConfigMapLock, KubeLeaseLock>),
}

impl KubeLock {
    /// The lock of `kind` on the object `namespace/name`.
    ///
    /// Names are not checked here; an invalid one fails every request with the API
    /// server's message. [`from_resource_lock_name`](Self::from_resource_lock_name)
    /// checks them first.
    pub fn new(
        kind: ResourceLockKind,
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        let (namespace, name) = (namespace.into(), name.into());
        match kind {
            ResourceLockKind::Leases => Self::Lease(KubeLeaseLock::new(client, namespace, name)),
            ResourceLockKind::Endpoints => {
                Self::Endpoints(EndpointsLock::new(client, namespace, name))
            }
            ResourceLockKind::ConfigMaps => {
                Self::ConfigMap(ConfigMapLock::new(client, namespace, name))
            }
            ResourceLockKind::EndpointsLeases => {
                Self::EndpointsLeases(MultiLock::endpoints_leases(client, namespace, name))
            }
            ResourceLockKind::ConfigMapsLeases => {
                Self::ConfigMapsLeases(MultiLock::configmaps_leases(client, namespace, name))
            }
        }
    }

    /// The lock that kube-scheduler's `--leader-elect-resource-lock=<resource_lock>`,
    /// `--leader-elect-resource-namespace=<namespace>` and
    /// `--leader-elect-resource-name=<name>` describe, boxed: a `Box<dyn LeaseLock>`
    /// is a lock, for [`LeaderElector::new`](crate::LeaderElector::new) and the rest.
    ///
    /// # Errors
    ///
    /// [`UnknownResourceLock`] listing the valid names when `resource_lock` is not one
    /// of them, or when `namespace` or `name` is not a valid Kubernetes name.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use leaderelection::lock::kube::KubeLock;
    ///
    /// # async fn run(client: kube::Client) {
    /// let lock = KubeLock::from_resource_lock_name("leases", client.clone(), "kube-system", "sched");
    /// assert!(lock.is_ok());
    /// let err = KubeLock::from_resource_lock_name("lease", client, "kube-system", "sched").unwrap_err();
    /// assert!(err.to_string().contains("endpointsleases"));
    /// # }
    /// ```
    pub fn from_resource_lock_name(
        resource_lock: &str,
        client: kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Box<dyn LeaseLock>, UnknownResourceLock> {
        let kind: ResourceLockKind = resource_lock.parse()?;
        check_name("namespace", namespace, 63)?;
        check_name("name", name, 253)?;
        Ok(Box::new(Self::new(kind, client, namespace, name)))
    }

    /// Which kind of lock this is.
    pub fn kind(&self) -> ResourceLockKind {
        match self {
            Self::Lease(_) => ResourceLockKind::Leases,
            Self::Endpoints(_) => ResourceLockKind::Endpoints,
            Self::ConfigMap(_) => ResourceLockKind::ConfigMaps,
            Self::EndpointsLeases(_) => ResourceLockKind::EndpointsLeases,
            Self::ConfigMapsLeases(_) => ResourceLockKind::ConfigMapsLeases,
        }
    }

    /// The lock of this kind: the one place that chooses by kind, so that every
    /// [`LeaseLock`] method forwards in one line and none can miss a kind.
    fn inner(&self) -> &dyn LeaseLock {
        match self {
            Self::Lease(l) => l,
            Self::Endpoints(l) => l,
            Self::ConfigMap(l) => l,
            Self::EndpointsLeases(l) => l,
            Self::ConfigMapsLeases(l) => l,
        }
    }
}

#[async_trait]
impl LeaseLock for KubeLock {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.inner().get().await
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        self.inner().create(record).await
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        self.inner().update(record, expected).await
    }

    fn watch(&self) -> Option<WatchStream> {
        self.inner().watch()
    }

    fn describe(&self) -> String {
        self.inner().describe()
    }

    fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
        self.inner().fencing_token(record, version)
    }
}
