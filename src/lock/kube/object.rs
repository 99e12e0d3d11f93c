//! One lock object on the API server: reading, creating and replacing it, and the
//! objects recently seen, which updates start from.
//!
//! Requests go through `Api<DynamicObject>` rather than `Api<Lease>` and the like, and
//! objects are kept as JSON values, so that a PUT sends back every field the server
//! returned, including fields newer than this crate's Kubernetes types (all but
//! `metadata`, which is typed and stable), and so that a malformed record is reported
//! with its version instead of failing to parse whole.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{json, Value};

use super::error::{classify, Failure, BACKEND};
use crate::error::LockError;
use crate::lock::{Version, Versioned};
use crate::record::{InvalidRecord, LeaderElectionRecord};

/// Objects kept per lock: enough to update from any version a caller could still
/// hold after a race between a read and a watch event.
const SEEN: usize = 4;

/// The kind of object a lock stores its record in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Lease,
    Endpoints,
    ConfigMap,
}

impl Kind {
    pub(crate) fn resource(self) -> ApiResource {
        match self {
            Kind::Lease => ApiResource::erase::<Lease>(&()),
            Kind::Endpoints => ApiResource::erase::<Endpoints>(&()),
            Kind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
        }
    }

    pub(crate) fn plural(self) -> &'static str {
        match self {
            Kind::Lease => "leases",
            Kind::Endpoints => "endpoints",
            Kind::ConfigMap => "configmaps",
        }
    }
}

/// Where in its object a lock keeps the record. Each lock module supplies its own
/// (the Lease spec, the leader annotation), so this plumbing never depends on them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Format {
    /// The kind of object.
    pub(crate) kind: Kind,
    /// The record an object holds.
    pub(crate) decode: fn(&Value) -> Result<LeaderElectionRecord, InvalidRecord>,
    /// Writes the record into an object, leaving everything else as it is.
    pub(crate) encode: fn(&mut Value, &LeaderElectionRecord),
}

/// The `metadata.resourceVersion` of an object.
pub(crate) fn resource_version(object: &Value) -> Option<&str> {
    object.pointer("/metadata/resourceVersion")?.as_str()
}

/// The plumbing every Kubernetes lock shares: one object, addressed by kind,
/// namespace and name.
#[derive(Clone)]
pub(crate) struct ObjectLock {
    pub(crate) api: Api<DynamicObject>,
    format: Format,
    pub(crate) namespace: String,
    pub(crate) name: String,
    seen: Arc<Mutex<VecDeque<Value>>>,
}

impl fmt::Debug for ObjectLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectLock")
            .field("kind", &self.format.kind)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ObjectLock {
    pub(crate) fn new(
        format: Format,
        client: kube::Client,
        namespace: String,
        name: String,
    ) -> Self {
        Self {
            api: Api::namespaced_with(client, &namespace, &format.kind.resource()),
            format,
            namespace,
            name,
            seen: Arc::default(),
        }
    }

    /// `leases/kube-system/kube-scheduler`.
    pub(crate) fn describe(&self) -> String {
        format!("{}/{}/{}", self.kind().plural(), self.namespace, self.name)
    }

    pub(crate) fn kind(&self) -> Kind {
        self.format.kind
    }

    fn seen(&self) -> MutexGuard<'_, VecDeque<Value>> {
        // Entries are whole values, replaced in one step: a panic elsewhere cannot
        // leave one half-written.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `object` as the state at its resourceVersion, for later updates.
    pub(crate) fn remember(&self, object: &Value) {
        let Some(rv) = resource_version(object) else {
            return;
        };
        let mut seen = self.seen();
        seen.retain(|o| resource_version(o) != Some(rv));
        if seen.len() == SEEN {
            seen.pop_front();
        }
        seen.push_back(object.clone());
    }

    /// The object as seen at `version`, if it was.
    fn seen_at(&self, version: &str) -> Option<Value> {
        self.seen()
            .iter()
            .rev()
            .find(|o| resource_version(o) == Some(version))
            .cloned()
    }

    /// The metadata.uid of the object seen last.
    pub(crate) fn last_seen_uid(&self) -> Option<String> {
        self.seen()
            .back()
            .and_then(|o| o.pointer("/metadata/uid")?.as_str().map(str::to_owned))
    }

    /// The object, or `None` when it does not exist.
    pub(crate) async fn fetch(&self) -> Result<Option<Value>, LockError> {
        match self.api.get_opt(&self.name).await {
            Ok(Some(object)) => {
                let object = to_value(object)?;
                self.remember(&object);
                Ok(Some(object))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(classify("get", &self.describe(), e).into_error()),
        }
    }

    /// The record an object holds, at the object's version.
    pub(crate) fn read(&self, object: &Value) -> Result<Versioned, LockError> {
        let version = resource_version(object).map(Version::new);
        let record = (self.format.decode)(object).map_err(|source| LockError::InvalidRecord {
            source,
            version: version.clone(),
        })?;
        let version = version.ok_or_else(|| LockError::InvalidRecord {
            source: InvalidRecord::new(
                "the object has no metadata.resourceVersion",
                &object.to_string(),
            ),
            version: None,
        })?;
        Ok(Versioned { record, version })
    }

    pub(crate) async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.fetch().await?.map(|o| self.read(&o)).transpose()
    }

    /// POSTs a new object holding `record`.
    pub(crate) async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        let resource = self.kind().resource();
        let mut object = json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": { "name": self.name, "namespace": self.namespace },
        });
        (self.format.encode)(&mut object, record);
        match self
            .api
            .create(&PostParams::default(), &from_value(object)?)
            .await
        {
            Ok(created) => self.written("create", created),
            Err(e) => Err(match classify("create", &self.describe(), e) {
                // A plain 409 on create still means that someone else's object is there.
                Failure::Conflict => LockError::AlreadyExists,
                other => other.into_error(),
            }),
        }
    }

    /// PUTs the object as seen at `expected` with `record` in it. The body carries
    /// `expected` as its resourceVersion, so the API server refuses it with 409 when
    /// the object changed since.
    ///
    /// A version this lock never saw (from another handle) gives
    /// [`LockError::Conflict`]: without the object at that version, replacing it
    /// could drop fields someone else wrote. Reading again gives a usable version.
    pub(crate) async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        let Some(mut object) = self.seen_at(expected.as_str()) else {
            return Err(LockError::Conflict);
        };
        (self.format.encode)(&mut object, record);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &from_value(object)?)
            .await
        {
            Ok(updated) => self.written("update", updated),
            Err(e) => Err(match classify("update", &self.describe(), e) {
                // Deleted since it was read: the version moved.
                Failure::NotFound(_) | Failure::AlreadyExists => LockError::Conflict,
                other => other.into_error(),
            }),
        }
    }

    fn written(&self, verb: &str, object: DynamicObject) -> Result<Version, LockError> {
        let object = to_value(object)?;
        self.remember(&object);
        resource_version(&object).map(Version::new).ok_or_else(|| {
            LockError::unavailable(
                BACKEND,
                format!(
                    "{verb} {}: the answer has no metadata.resourceVersion",
                    self.describe()
                ),
            )
        })
    }
}

/// The object as JSON, every field the server sent kept: `DynamicObject` holds all but
/// `metadata` as a JSON value.
pub(crate) fn to_value(object: DynamicObject) -> Result<Value, LockError> {
    serde_json::to_value(object).map_err(|e| LockError::unavailable(BACKEND, e))
}

fn from_value(object: Value) -> Result<DynamicObject, LockError> {
    serde_json::from_value(object).map_err(|e| LockError::unavailable(BACKEND, e))
}
