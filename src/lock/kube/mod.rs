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
//! let elector = LeaderElector::from_boxed(lock, Config::new("my-scheduler"))?;
//! elector
//!     .run(CancellationToken::new(), |leadership| async move {
//!         leadership.lost().await;
//!     })
//!     .await;
//! # Ok(()) }
//! ```
//!
//! [`LEADER_ANNOTATION`]: crate::LEADER_ANNOTATION

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;

use crate::error::LockError;
use crate::lock::{LeaseLock, Version, Versioned, WatchStream};
use crate::record::LeaderElectionRecord;

mod annotation;
mod events;
mod lease;
mod multi;
mod object;
mod watch;

pub use annotation::{ConfigMapLock, EndpointsLock};
pub use events::EventRecorder;
pub use lease::KubeLeaseLock;
pub use multi::{MultiLock, UNKNOWN_LEADER};

const BACKEND: &str = "kubernetes";

/// A lock kind by the name kube-scheduler's and kube-controller-manager's
/// `--leader-elect-resource-lock` flag gives it.
///
/// # Examples
///
/// ```
/// use leaderelection::lock::kube::ResourceLockKind;
///
/// let kind: ResourceLockKind = "endpointsleases".parse()?;
/// assert_eq!(kind, ResourceLockKind::EndpointsLeases);
/// assert_eq!(kind.to_string(), "endpointsleases");
/// assert!(kind.removed_from_client_go());
/// assert!("lease".parse::<ResourceLockKind>().is_err());
/// # Ok::<(), leaderelection::lock::kube::UnknownResourceLock>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResourceLockKind {
    /// `leases`: a coordination.k8s.io/v1 Lease.
    Leases,
    /// `endpoints`: the leader annotation of an Endpoints.
    Endpoints,
    /// `configmaps`: the leader annotation of a ConfigMap.
    ConfigMaps,
    /// `endpointsleases`: an Endpoints as primary and a Lease as secondary.
    EndpointsLeases,
    /// `configmapsleases`: a ConfigMap as primary and a Lease as secondary.
    ConfigMapsLeases,
}

impl ResourceLockKind {
    /// Every kind, in the order the error message lists them.
    pub const ALL: [ResourceLockKind; 5] = [
        Self::Leases,
        Self::Endpoints,
        Self::ConfigMaps,
        Self::EndpointsLeases,
        Self::ConfigMapsLeases,
    ];

    /// The flag value: `leases`, `endpoints`, `configmaps`, `endpointsleases` or
    /// `configmapsleases`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Leases => "leases",
            Self::Endpoints => "endpoints",
            Self::ConfigMaps => "configmaps",
            Self::EndpointsLeases => "endpointsleases",
            Self::ConfigMapsLeases => "configmapsleases",
        }
    }

    /// True for the kinds recent client-go versions refuse (all but `leases`). They
    /// keep working here so that deployments can migrate: `endpoints` ->
    /// `endpointsleases` -> `leases`.
    pub fn removed_from_client_go(self) -> bool {
        self != Self::Leases
    }
}

impl fmt::Display for ResourceLockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ResourceLockKind {
    type Err = UnknownResourceLock;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownResourceLock::Kind(s.to_owned()))
    }
}

/// A lock that [`KubeLock::from_resource_lock_name`] cannot build.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnknownResourceLock {
    /// The lock kind is not one of the names `--leader-elect-resource-lock` accepts.
    #[error(
        "unknown resource lock {0:?}: use one of leases, endpoints, configmaps, endpointsleases, configmapsleases (leases unless migrating from an older lock)"
    )]
    Kind(String),
    /// The namespace or the object name is not a valid Kubernetes name.
    #[error("invalid lock {what} {given:?}: {reason}")]
    Name {
        /// `namespace` or `name`.
        what: &'static str,
        /// The value given.
        given: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

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
    /// `--leader-elect-resource-name=<name>` describe, boxed for
    /// [`LeaderElector::from_boxed`](crate::LeaderElector::from_boxed).
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
}

/// Object names are DNS subdomains (namespaces DNS labels): lowercase letters, digits,
/// `-` and `.`, starting and ending with a letter or digit.
fn check_name(what: &'static str, given: &str, max: usize) -> Result<(), UnknownResourceLock> {
    let err = |reason| UnknownResourceLock::Name {
        what,
        given: given.to_owned(),
        reason,
    };
    if given.is_empty() {
        return Err(err("it must not be empty"));
    }
    if given.len() > max {
        return Err(err("it is too long"));
    }
    let dots = what == "name";
    if !given
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.'))
    {
        return Err(err(if dots {
            "use lowercase letters, digits, '-' and '.'"
        } else {
            "use lowercase letters, digits and '-'"
        }));
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(given.as_bytes()[0]) || !edge_ok(given.as_bytes()[given.len() - 1]) {
        return Err(err("it must start and end with a letter or a digit"));
    }
    Ok(())
}

#[async_trait]
impl LeaseLock for KubeLock {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        match self {
            Self::Lease(l) => l.get().await,
            Self::Endpoints(l) => l.get().await,
            Self::ConfigMap(l) => l.get().await,
            Self::EndpointsLeases(l) => l.get().await,
            Self::ConfigMapsLeases(l) => l.get().await,
        }
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        match self {
            Self::Lease(l) => l.create(record).await,
            Self::Endpoints(l) => l.create(record).await,
            Self::ConfigMap(l) => l.create(record).await,
            Self::EndpointsLeases(l) => l.create(record).await,
            Self::ConfigMapsLeases(l) => l.create(record).await,
        }
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        match self {
            Self::Lease(l) => l.update(record, expected).await,
            Self::Endpoints(l) => l.update(record, expected).await,
            Self::ConfigMap(l) => l.update(record, expected).await,
            Self::EndpointsLeases(l) => l.update(record, expected).await,
            Self::ConfigMapsLeases(l) => l.update(record, expected).await,
        }
    }

    fn watch(&self) -> Option<WatchStream> {
        match self {
            Self::Lease(l) => l.watch(),
            Self::Endpoints(l) => l.watch(),
            Self::ConfigMap(l) => l.watch(),
            Self::EndpointsLeases(l) => l.watch(),
            Self::ConfigMapsLeases(l) => l.watch(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Lease(l) => l.describe(),
            Self::Endpoints(l) => l.describe(),
            Self::ConfigMap(l) => l.describe(),
            Self::EndpointsLeases(l) => l.describe(),
            Self::ConfigMapsLeases(l) => l.describe(),
        }
    }

    fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
        match self {
            Self::Lease(l) => l.fencing_token(record, version),
            Self::Endpoints(l) => l.fencing_token(record, version),
            Self::ConfigMap(l) => l.fencing_token(record, version),
            Self::EndpointsLeases(l) => l.fencing_token(record, version),
            Self::ConfigMapsLeases(l) => l.fencing_token(record, version),
        }
    }
}

/// A failed request to the Kubernetes API: the source of the [`LockError`] a lock
/// returns, with what was asked and what the server (or the connection) said.
///
/// Downcast the error's source to read the HTTP code:
///
/// ```
/// use leaderelection::lock::kube::ApiError;
/// use leaderelection::LockError;
///
/// fn http_code(e: &LockError) -> Option<u16> {
///     let source = std::error::Error::source(e)?;
///     source.downcast_ref::<ApiError>()?.code
/// }
/// # assert_eq!(http_code(&LockError::Conflict), None);
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{verb} {object}: {message}")]
#[non_exhaustive]
pub struct ApiError {
    /// The request: `get`, `list`, `watch`, `create` or `update`.
    pub verb: &'static str,
    /// The object: `leases/kube-system/kube-scheduler`.
    pub object: String,
    /// The HTTP status, `None` when no answer came (connection refused, reset).
    pub code: Option<u16>,
    /// The Kubernetes `Status` reason (`Forbidden`, `ServiceUnavailable`), if any.
    pub reason: String,
    /// What went wrong, with what to do about it.
    pub message: String,
    /// The client's error, when the request got no answer.
    pub client_error: Option<kube::Error>,
}

/// How a failed request is to be read by the lock.
pub(crate) enum Failure {
    /// 404: the object (or its namespace) does not exist.
    NotFound(LockError),
    /// 409 AlreadyExists.
    AlreadyExists,
    /// 409 Conflict (or any other 409).
    Conflict,
    /// 410 Gone: a watch's resourceVersion is too old.
    Gone,
    /// Anything else, already mapped.
    Other(LockError),
}

impl Failure {
    /// The error for a request where a missing object is not expected.
    pub(crate) fn into_error(self) -> LockError {
        match self {
            Failure::NotFound(e) | Failure::Other(e) => e,
            Failure::AlreadyExists => LockError::AlreadyExists,
            Failure::Conflict => LockError::Conflict,
            Failure::Gone => LockError::unavailable(BACKEND, "resource version too old (410 Gone)"),
        }
    }
}

/// Sorts a client error into what the lock reports: contention, absence, or a broken
/// backend with a message that says what to do.
pub(crate) fn classify(verb: &'static str, object: &str, e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(status) => classify_status(verb, object, &status),
        other => Failure::Other(LockError::Unavailable {
            backend: BACKEND,
            source: Box::new(ApiError {
                verb,
                object: object.to_owned(),
                code: None,
                reason: String::new(),
                message: format!("no answer from the API server: {other}"),
                client_error: Some(other),
            }),
        }),
    }
}

pub(crate) fn classify_status(
    verb: &'static str,
    object: &str,
    status: &kube::core::Status,
) -> Failure {
    let error = |hint: &str| ApiError {
        verb,
        object: object.to_owned(),
        code: Some(status.code),
        reason: status.reason.clone(),
        message: if status.message.is_empty() {
            format!("HTTP {} {}{hint}", status.code, status.reason)
        } else {
            format!("{} (HTTP {}){hint}", status.message, status.code)
        },
        client_error: None,
    };
    match status.code {
        404 => Failure::NotFound(LockError::unavailable(
            BACKEND,
            error("; create the namespace, or check the lock's namespace and name"),
        )),
        409 if status.reason == "AlreadyExists" => Failure::AlreadyExists,
        409 => Failure::Conflict,
        410 => Failure::Gone,
        401 => Failure::Other(LockError::Forbidden {
            backend: BACKEND,
            source: Box::new(error("; the API server refused the credentials: check the token or kubeconfig")),
        }),
        403 => Failure::Other(LockError::Forbidden {
            backend: BACKEND,
            source: Box::new(error(
                "; grant get, create, update, list and watch on the lock object (see docs/kubernetes.md, RBAC)",
            )),
        }),
        _ => Failure::Other(LockError::unavailable(BACKEND, error(""))),
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, reason).with_code(code)))
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for kind in ResourceLockKind::ALL {
            assert_eq!(kind.name().parse::<ResourceLockKind>(), Ok(kind));
        }
        let e = "Leases"
            .parse::<ResourceLockKind>()
            .unwrap_err()
            .to_string();
        for kind in ResourceLockKind::ALL {
            assert!(e.contains(kind.name()), "{e}");
        }
        assert!(!ResourceLockKind::Leases.removed_from_client_go());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("name", "kube-scheduler", 253).is_ok());
        assert!(check_name("name", "a.b-c", 253).is_ok());
        assert!(check_name("namespace", "a.b", 63).is_err());
        assert!(check_name("name", "", 253).is_err());
        assert!(check_name("name", "Sched", 253).is_err());
        assert!(check_name("name", "a/b", 253).is_err());
        assert!(check_name("name", "-a", 253).is_err());
        assert!(check_name("namespace", &"a".repeat(64), 63).is_err());
    }

    #[test]
    fn statuses_map_onto_lock_errors() {
        let obj = "leases/ns/x";
        assert!(matches!(
            classify(
                "update",
                obj,
                status(409, "Conflict", "the object has been modified")
            ),
            Failure::Conflict
        ));
        assert!(matches!(
            classify("create", obj, status(409, "AlreadyExists", "exists")),
            Failure::AlreadyExists
        ));
        assert!(matches!(
            classify("watch", obj, status(410, "Expired", "too old")),
            Failure::Gone
        ));
        assert!(matches!(
            classify("get", obj, status(404, "NotFound", "")),
            Failure::NotFound(_)
        ));
        for code in [401, 403] {
            let Failure::Other(e) = classify(
                "get",
                obj,
                status(code, "Forbidden", "user cannot get leases"),
            ) else {
                panic!("{code}")
            };
            assert!(matches!(e, LockError::Forbidden { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("user cannot get leases") && text.contains(obj),
                "{text}"
            );
        }
        for code in [429, 500, 503, 504, 422] {
            let Failure::Other(e) = classify("update", obj, status(code, "", "busy")) else {
                panic!("{code}")
            };
            assert!(matches!(e, LockError::Unavailable { .. }), "{code}: {e}");
            let api = std::error::Error::source(&e)
                .unwrap()
                .downcast_ref::<ApiError>()
                .unwrap();
            assert_eq!(api.code, Some(code));
        }
    }
}
