//! The Lease lock: the record is the spec of a coordination.k8s.io/v1 Lease.

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde_json::Value;

use super::object::{Format, Kind, ObjectLock};
use super::watch;
use crate::error::LockError;
use crate::lock::{LeaseLock, Version, Versioned, WatchStream};
use crate::record::{InvalidRecord, LeaderElectionRecord};

/// A lock on a `coordination.k8s.io/v1` Lease, client-go's `LeaseLock`: what
/// `--leader-elect-resource-lock=leases` selects, and what kube-scheduler and
/// kube-controller-manager use.
///
/// The record maps onto the Lease spec as client-go maps it:
/// `holderIdentity`, `leaseDurationSeconds`, `acquireTime` and `renewTime` (as
/// `MicroTime`), `leaseTransitions` (the record's `leaderTransitions`), and `strategy`
/// and `preferredHolder` when set. Updates replace the spec of the Lease as last read,
/// keeping its labels, annotations and owner references, with its resourceVersion as
/// the precondition.
///
/// # Examples
///
/// ```no_run
/// use leaderelection::lock::kube::KubeLeaseLock;
/// use leaderelection::{Config, LeaderElector};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = kube::Client::try_default().await?;
/// let lock = KubeLeaseLock::new(client, "kube-system", "my-controller");
/// let elector = LeaderElector::new(lock, Config::new("my-controller"))?;
/// # let _ = elector; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct KubeLeaseLock {
    pub(crate) object: ObjectLock,
}

impl KubeLeaseLock {
    /// A lock on the Lease `namespace/name`. The Lease is created on the first
    /// acquisition if it does not exist.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            object: ObjectLock::new(FORMAT, client, namespace.into(), name.into()),
        }
    }
}

#[async_trait]
impl LeaseLock for KubeLeaseLock {
    /// Reads the Lease: `GET .../leases/<name>`.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidRecord`] when the spec cannot be read (a field of the wrong
    /// type); [`LockError::Forbidden`] on 401/403; [`LockError::Unavailable`] otherwise.
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.object.get().await
    }

    /// Creates the Lease: `POST .../leases`.
    ///
    /// # Errors
    ///
    /// [`LockError::AlreadyExists`] when it exists.
    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        self.object.create(record).await
    }

    /// Replaces the spec: `PUT .../leases/<name>` with `expected` as resourceVersion.
    ///
    /// # Errors
    ///
    /// [`LockError::Conflict`] on 409, when the Lease is gone, or when `expected` is
    /// not a version this lock has read or written.
    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        self.object.update(record, expected).await
    }

    fn watch(&self) -> Option<WatchStream> {
        Some(watch::records(self.object.clone()))
    }

    fn describe(&self) -> String {
        self.object.describe()
    }
}

/// The record in the spec of a Lease.
pub(crate) const FORMAT: Format = Format {
    kind: Kind::Lease,
    decode,
    encode,
};

/// client-go's `LeaseSpecToLeaderElectionRecord`: absent fields read as zero values.
pub(crate) fn decode(object: &Value) -> Result<LeaderElectionRecord, InvalidRecord> {
    let spec = match object.get("spec") {
        None | Some(Value::Null) => LeaseSpec::default(),
        Some(spec) => serde_json::from_value::<LeaseSpec>(spec.clone()).map_err(|e| {
            InvalidRecord::new(
                format!("the Lease spec is malformed: {e}"),
                &spec.to_string(),
            )
        })?,
    };
    Ok(spec_to_record(spec))
}

/// client-go's `LeaderElectionRecordToLeaseSpec` written into the object: the whole
/// spec is replaced, as client-go replaces it.
pub(crate) fn encode(object: &mut Value, record: &LeaderElectionRecord) {
    let spec = serde_json::to_value(record_to_spec(record)).unwrap_or(Value::Null);
    if let Some(map) = object.as_object_mut() {
        map.insert("spec".to_owned(), spec);
    }
}

pub(crate) fn spec_to_record(spec: LeaseSpec) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder_identity: spec.holder_identity.unwrap_or_default(),
        lease_duration_seconds: spec.lease_duration_seconds.unwrap_or_default(),
        acquire_time: spec.acquire_time.map(|t| t.0),
        renew_time: spec.renew_time.map(|t| t.0),
        leader_transitions: spec.lease_transitions.unwrap_or_default(),
        strategy: spec.strategy.unwrap_or_default(),
        preferred_holder: spec.preferred_holder.unwrap_or_default(),
    }
}

pub(crate) fn record_to_spec(record: &LeaderElectionRecord) -> LeaseSpec {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    LeaseSpec {
        // client-go always sets these, an empty holder included (a released lease).
        holder_identity: Some(record.holder_identity.clone()),
        lease_duration_seconds: Some(record.lease_duration_seconds),
        lease_transitions: Some(record.leader_transitions),
        // Go's zero time is written as null, the same as leaving it out.
        acquire_time: record.acquire_time.map(MicroTime),
        renew_time: record.renew_time.map(MicroTime),
        strategy: non_empty(&record.strategy),
        preferred_holder: non_empty(&record.preferred_holder),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record() -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder_identity: "node-a_1".into(),
            lease_duration_seconds: 15,
            acquire_time: Some("2024-05-01T10:00:00.123456Z".parse().unwrap()),
            renew_time: Some("2024-05-01T10:00:08.5Z".parse().unwrap()),
            leader_transitions: 3,
            ..Default::default()
        }
    }

    #[test]
    fn spec_is_what_client_go_writes() {
        let mut object =
            json!({"metadata": {"name": "x", "labels": {"app": "a"}}, "spec": {"old": 1}});
        encode(&mut object, &record());
        assert_eq!(
            object,
            json!({
                "metadata": {"name": "x", "labels": {"app": "a"}},
                "spec": {
                    "holderIdentity": "node-a_1",
                    "leaseDurationSeconds": 15,
                    "acquireTime": "2024-05-01T10:00:00.123456Z",
                    "renewTime": "2024-05-01T10:00:08.500000Z",
                    "leaseTransitions": 3,
                }
            })
        );
        assert_eq!(decode(&object).unwrap(), record());
    }

    #[test]
    fn released_lease_keeps_an_empty_holder_and_no_times() {
        let released = LeaderElectionRecord {
            lease_duration_seconds: 1,
            leader_transitions: 4,
            ..Default::default()
        };
        let mut object = json!({});
        encode(&mut object, &released);
        assert_eq!(
            object["spec"],
            json!({"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 4})
        );
        assert_eq!(decode(&object).unwrap(), released);
    }

    #[test]
    fn strategy_and_preferred_holder_only_when_set() {
        let r = LeaderElectionRecord {
            strategy: "OldestEmulationVersion".into(),
            preferred_holder: "node-b".into(),
            ..record()
        };
        let mut object = json!({});
        encode(&mut object, &r);
        assert_eq!(object["spec"]["strategy"], "OldestEmulationVersion");
        assert_eq!(object["spec"]["preferredHolder"], "node-b");
        assert_eq!(decode(&object).unwrap(), r);
    }

    #[test]
    fn missing_fields_read_as_zero_values() {
        assert_eq!(
            decode(&json!({"metadata": {}})).unwrap(),
            LeaderElectionRecord::default()
        );
        let r = decode(&json!({"spec": {"holderIdentity": "a"}})).unwrap();
        assert_eq!(r.holder_identity, "a");
        assert_eq!(r.lease_duration_seconds, 0);
        assert_eq!(r.renew_time, None);
    }

    #[test]
    fn malformed_spec_is_an_invalid_record() {
        for spec in [
            json!({"holderIdentity": 5}),
            json!({"renewTime": "yesterday"}),
            json!({"leaseDurationSeconds": 1e99}),
            json!("a string"),
        ] {
            let e = decode(&json!({ "spec": spec })).unwrap_err();
            assert!(e.reason.contains("Lease spec is malformed"), "{e}");
            assert!(!e.text.is_empty());
        }
    }
}
