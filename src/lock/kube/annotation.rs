//! The Endpoints and ConfigMap locks: the record's JSON in the annotation
//! `control-plane.alpha.kubernetes.io/leader`, as client-go kept it before Leases.

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use super::object::{Format, Kind, ObjectLock};
use super::watch;
use crate::error::LockError;
use crate::lock::{LeaseLock, Version, Versioned, WatchStream};
use crate::record::{InvalidRecord, LeaderElectionRecord};

/// The annotation under which [`EndpointsLock`] and [`ConfigMapLock`] keep the record's
/// JSON, client-go's `LeaderElectionRecordAnnotationKey`.
///
/// # Examples
///
/// ```
/// use leaderelection::lock::kube::LEADER_ANNOTATION;
///
/// assert_eq!(LEADER_ANNOTATION, "control-plane.alpha.kubernetes.io/leader");
/// ```
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

macro_rules! annotation_lock {
    ($(#[$doc:meta])* $name:ident, $format:expr, $flag:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            pub(crate) object: ObjectLock,
        }

        impl $name {
            #[doc = concat!("A lock on the annotation of `namespace/name`, what `--leader-elect-resource-lock=", $flag, "` selects. The object is created on the first acquisition if it does not exist.")]
            pub fn new(
                client: kube::Client,
                namespace: impl Into<String>,
                name: impl Into<String>,
            ) -> Self {
                Self {
                    object: ObjectLock::new($format, client, namespace.into(), name.into()),
                }
            }
        }

        #[async_trait]
        impl LeaseLock for $name {
            /// Reads the object and the record in its annotation. An object without the
            /// annotation holds an empty record (nobody leads), as client-go reads it.
            ///
            /// # Errors
            ///
            /// [`LockError::InvalidRecord`] when the annotation is not a record;
            /// [`LockError::Forbidden`] on 401/403; [`LockError::Unavailable`] otherwise.
            async fn get(&self) -> Result<Option<Versioned>, LockError> {
                self.object.get().await
            }

            /// Creates the object with only the annotation.
            ///
            /// # Errors
            ///
            /// [`LockError::AlreadyExists`] when it exists.
            async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
                self.object.create(record).await
            }

            /// Rewrites the annotation of the object as last read, keeping everything
            /// else, with `expected` as resourceVersion.
            ///
            /// # Errors
            ///
            /// [`LockError::Conflict`] on 409, when the object is gone, or when
            /// `expected` is not a version this lock has read or written.
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
    };
}

annotation_lock!(
    /// A lock on the leader annotation of a v1 Endpoints, client-go's `EndpointsLock`.
    ///
    /// Recent client-go versions refuse `endpoints`; it is kept
    /// for replicas that still share an election with old ones, and for the first step
    /// of a migration to Leases through [`MultiLock`](super::MultiLock). New
    /// deployments use [`KubeLeaseLock`](super::KubeLeaseLock).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use leaderelection::lock::kube::EndpointsLock;
    /// use leaderelection::{Config, LeaderElector};
    ///
    /// # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let lock = EndpointsLock::new(client, "kube-system", "kube-scheduler");
    /// let elector = LeaderElector::new(lock, Config::new("kube-scheduler"))?;
    /// # let _ = elector; Ok(()) }
    /// ```
    EndpointsLock,
    ENDPOINTS,
    "endpoints"
);

annotation_lock!(
    /// A lock on the leader annotation of a v1 ConfigMap, client-go's `ConfigMapLock`.
    ///
    /// Recent client-go versions refuse `configmaps`; it is kept
    /// for old elections and for migrations through [`MultiLock`](super::MultiLock).
    /// The ConfigMap's data is left as it is.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use leaderelection::lock::kube::ConfigMapLock;
    /// use leaderelection::{Config, LeaderElector};
    ///
    /// # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let lock = ConfigMapLock::new(client, "default", "my-operator");
    /// let elector = LeaderElector::new(lock, Config::new("my-operator"))?;
    /// # let _ = elector; Ok(()) }
    /// ```
    ConfigMapLock,
    CONFIG_MAP,
    "configmaps"
);

/// The record in the leader annotation of an Endpoints.
pub(crate) const ENDPOINTS: Format = Format {
    kind: Kind::Endpoints,
    decode,
    encode,
};

/// The record in the leader annotation of a ConfigMap.
pub(crate) const CONFIG_MAP: Format = Format {
    kind: Kind::ConfigMap,
    decode,
    encode,
};

/// client-go's `Get` of an annotation lock: no annotation is an empty record.
pub(crate) fn decode(object: &Value) -> Result<LeaderElectionRecord, InvalidRecord> {
    let annotations = match object.pointer("/metadata/annotations") {
        None | Some(Value::Null) => return Ok(LeaderElectionRecord::default()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(InvalidRecord::new(
                "metadata.annotations is not a map",
                &other.to_string(),
            ))
        }
    };
    match annotations.get(LEADER_ANNOTATION) {
        None => Ok(LeaderElectionRecord::default()),
        Some(Value::String(text)) => {
            LeaderElectionRecord::from_json(text).map_err(|e| InvalidRecord {
                reason: format!("annotation {LEADER_ANNOTATION}: {}", e.reason),
                ..e
            })
        }
        Some(other) => Err(InvalidRecord::new(
            format!("annotation {LEADER_ANNOTATION} is not a string"),
            &other.to_string(),
        )),
    }
}

/// Sets the annotation, creating `metadata.annotations` if needed and keeping the
/// other annotations.
pub(crate) fn encode(object: &mut Value, record: &LeaderElectionRecord) {
    let Some(object) = object.as_object_mut() else {
        return;
    };
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if !metadata.is_object() {
        *metadata = Value::Object(Default::default());
    }
    let Some(metadata) = metadata.as_object_mut() else {
        return;
    };
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    if !annotations.is_object() {
        *annotations = Value::Object(Default::default());
    }
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(
            LEADER_ANNOTATION.to_owned(),
            Value::String(annotation_text(record)),
        );
    }
}

/// The annotation's text, byte for byte what client-go writes: every client-go that
/// keeps the record in an annotation predates `strategy` and `preferredHolder`, so
/// those two are written only when set (they never are outside Lease-based
/// coordinated elections).
pub(crate) fn annotation_text(record: &LeaderElectionRecord) -> String {
    if !record.strategy.is_empty() || !record.preferred_holder.is_empty() {
        return record.to_json();
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ClientGoRecord<'a> {
        holder_identity: &'a str,
        lease_duration_seconds: i32,
        acquire_time: Option<String>,
        renew_time: Option<String>,
        leader_transitions: i32,
    }
    // metav1.Time: RFC 3339 in UTC with whole seconds; the zero time is null.
    let go_time =
        |t: Option<jiff::Timestamp>| t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    serde_json::to_string(&ClientGoRecord {
        holder_identity: &record.holder_identity,
        lease_duration_seconds: record.lease_duration_seconds,
        acquire_time: go_time(record.acquire_time),
        renew_time: go_time(record.renew_time),
        leader_transitions: record.leader_transitions,
    })
    // Strings, integers and nulls always serialize.
    .unwrap_or_else(|_| record.to_json())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    #[allow(deprecated)]
    fn the_old_root_path_names_the_same_annotation() {
        assert_eq!(crate::LEADER_ANNOTATION, LEADER_ANNOTATION);
    }

    #[test]
    fn writes_the_bytes_client_go_writes() {
        let r = LeaderElectionRecord {
            holder_identity: "master-1_4f2c0a".into(),
            lease_duration_seconds: 15,
            acquire_time: Some("2024-05-01T10:00:00.999Z".parse().unwrap()),
            renew_time: Some("2024-05-01T12:00:08+02:00".parse().unwrap()),
            leader_transitions: 2,
            ..Default::default()
        };
        // As json.Marshal(LeaderElectionRecord) in the client-go releases with annotation locks.
        assert_eq!(
            annotation_text(&r),
            r#"{"holderIdentity":"master-1_4f2c0a","leaseDurationSeconds":15,"acquireTime":"2024-05-01T10:00:00Z","renewTime":"2024-05-01T10:00:08Z","leaderTransitions":2}"#
        );
        let released = LeaderElectionRecord {
            lease_duration_seconds: 1,
            leader_transitions: 3,
            ..Default::default()
        };
        assert_eq!(
            annotation_text(&released),
            r#"{"holderIdentity":"","leaseDurationSeconds":1,"acquireTime":null,"renewTime":null,"leaderTransitions":3}"#
        );
    }

    #[test]
    fn keeps_other_annotations_and_fields() {
        let mut object = json!({
            "metadata": {"name": "x", "resourceVersion": "7", "annotations": {"a": "b"}},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}],
        });
        let r = LeaderElectionRecord {
            holder_identity: "h".into(),
            lease_duration_seconds: 15,
            ..Default::default()
        };
        encode(&mut object, &r);
        assert_eq!(object["metadata"]["annotations"]["a"], "b");
        assert_eq!(object["subsets"][0]["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(object["metadata"]["resourceVersion"], "7");
        assert_eq!(decode(&object).unwrap(), r);

        let mut bare = json!({"metadata": {"name": "x"}, "data": {"k": "v"}});
        encode(&mut bare, &r);
        assert_eq!(bare["data"]["k"], "v");
        assert_eq!(decode(&bare).unwrap(), r);
    }

    #[test]
    fn missing_annotation_is_an_empty_record() {
        let empty = LeaderElectionRecord::default();
        assert_eq!(decode(&json!({"metadata": {"name": "x"}})).unwrap(), empty);
        assert_eq!(
            decode(&json!({"metadata": {"annotations": {"a": "b"}}})).unwrap(),
            empty
        );
        assert!(decode(&json!({})).unwrap().is_released());
    }

    #[test]
    fn malformed_annotation_is_an_invalid_record() {
        for bad in [
            json!("{not json"),
            json!(""),
            json!({"holderIdentity": 1}),
            json!(5),
        ] {
            let object = json!({"metadata": {"annotations": { (LEADER_ANNOTATION): bad }}});
            let e = decode(&object).unwrap_err();
            assert!(e.reason.contains(LEADER_ANNOTATION), "{e}");
        }
        assert!(decode(&json!({"metadata": {"annotations": ["x"]}})).is_err());
    }

    #[test]
    fn reads_records_of_every_client_go_version() {
        let old = r#"{"holderIdentity":"a","leaseDurationSeconds":15,"acquireTime":"2019-01-01T00:00:00Z","renewTime":"2019-01-01T00:00:10Z","leaderTransitions":0}"#;
        let object = json!({"metadata": {"annotations": { (LEADER_ANNOTATION): old }}});
        let r = decode(&object).unwrap();
        assert_eq!(r.holder_identity, "a");
        assert_eq!(annotation_text(&r), old);
    }
}
