//! Entry points for the fuzz targets in `fuzz/`: a request body sent through the same
//! path an HTTP request takes (content type, decoder, verb, then the status the
//! handler answers with), against a fresh in-memory store, with no socket.
//!
//! Not a stable API: it exists behind the `fuzzing` feature so that the fuzz package
//! can reach the server's crate-private decoders, and may change with them.
//!
//! Every function takes a `selector`, the fuzz input's first byte, that picks what
//! the body is sent to:
//!
//! | bits | picks |
//! | --- | --- |
//! | 0-2 | the kind, in the order of the served resources (Lease, Endpoints, ConfigMap, core/v1 Event, events.k8s.io/v1 Event), wrapping |
//! | 3 | whether the store holds an object named `a` of that kind |
//! | 4 | `fieldValidation=Strict` rather than the default `Warn` |
//! | 5-6 | what the function says |
//!
//! The object named `a` was written by an apply of manager `seed` and a merge patch of
//! manager `writer`, so it carries both kinds of `managedFields` entries; every
//! request here is made by manager `fuzz`, in namespace `ns`.
//!
//! Requests run on the caller's thread. The fuzzer's main thread has an 8 MiB stack
//! where a tokio worker has 2 MiB, so recursion that overflows only the smaller one
//! passes here; the server's own depth caps are tested in its unit tests.

use std::sync::LazyLock;

use bytes::Bytes;
use futures::executor::block_on;
use serde_json::{json, Value};

use super::http;
use super::openapi::FieldValidation;
use super::protobuf;
use super::resources::{Resource, RESOURCES};
use super::rest::Target;
use super::status::ApiError;
use super::storage::{MemoryStorage, Storage};

const NAMESPACE: &str = "ns";
const NAME: &str = "a";
const APPLY: &str = "application/apply-patch+yaml";

/// A request the server refused: the status it answers with and its Status body's
/// reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status.
    pub code: u16,
    /// The Status `reason` (`BadRequest`, `Invalid`, ...; empty where kube-apiserver
    /// leaves it empty).
    pub reason: &'static str,
    /// The Status `message`.
    pub message: String,
}

impl Refused {
    /// Whether this is one of the 500s kube-apiserver itself answers a bad body with,
    /// which the server copies: a create carrying `metadata.resourceVersion` (its etcd
    /// store refuses it), and an unknown `$patch` directive in a strategic merge patch
    /// (apimachinery's error has no HTTP status).
    pub fn kube_apiserver_answers_500(&self) -> bool {
        self.code == 500
            && (self.message == "resourceVersion should not be set on objects to be created"
                || self.reason.is_empty() && self.message.starts_with("unknown patch type: "))
    }
}

/// What the server answers: the success status (200 or 201), or the refusal.
pub type Answer = Result<u16, Refused>;

/// `body` as a Kubernetes protobuf request (`application/vnd.kubernetes.protobuf`),
/// as kubectl's typed clients send them. Bits 5-6 of `selector` pick the verb: a
/// create (POST to the collection), an update (PUT to `a`), a delete of `a` (the body
/// as DeleteOptions), or a create again.
pub fn protobuf(selector: u8, body: &[u8]) -> Answer {
    let verb = match (selector >> 5) & 3 {
        1 => "update",
        2 => "delete",
        _ => "create",
    };
    let name = (verb != "create").then_some(NAME);
    send(selector, verb, name, protobuf::MEDIA_TYPE, None, body)
}

/// `body` as a server-side apply configuration (`application/apply-patch+yaml`,
/// YAML or JSON) to `a`. Bit 5 of `selector` adds `force=true`.
pub fn apply(selector: u8, body: &[u8]) -> Answer {
    let force = (selector & 0x20 != 0).then_some("true");
    send(selector, "patch", Some(NAME), APPLY, force, body)
}

/// `body` as a PATCH of `a`. Bits 5-6 of `selector` pick the content type: a JSON
/// merge patch, a strategic merge patch, a JSON patch, or an apply configuration.
pub fn patch(selector: u8, body: &[u8]) -> Answer {
    let content_type = match (selector >> 5) & 3 {
        0 => "application/merge-patch+json",
        1 => "application/strategic-merge-patch+json",
        2 => "application/json-patch+json",
        _ => APPLY,
    };
    send(selector, "patch", Some(NAME), content_type, None, body)
}

fn send(
    selector: u8,
    verb: &str,
    name: Option<&str>,
    content_type: &str,
    force: Option<&str>,
    body: &[u8],
) -> Answer {
    let index = usize::from(selector & 7) % RESOURCES.len();
    let resource = &RESOURCES[index];
    let validation = if selector & 0x10 != 0 {
        FieldValidation::Strict
    } else {
        FieldValidation::Warn
    };
    let storage = MemoryStorage::new(16);
    if selector & 8 != 0 {
        block_on(storage.create(&resource.key(NAMESPACE, NAME), LIVE[index].clone()))
            .expect("an empty store takes the object");
    }
    let target = Target {
        resource,
        namespace: Some(NAMESPACE.into()),
        name: name.map(str::to_string),
        dry_run: false,
        field_manager: Some("fuzz".into()),
        force: force.map(str::to_string),
        user_agent: None,
    };
    let written = block_on(http::write(
        &storage,
        &target,
        verb,
        content_type,
        Bytes::copy_from_slice(body),
        validation,
    ));
    // A client that prefers protobuf gets the object or the Status encoded: the
    // encoder sees whatever the decoders let through.
    match written {
        Ok((code, obj, _)) => {
            let _ = protobuf::encode(&obj);
            Ok(code.as_u16())
        }
        Err(e) => {
            let _ = protobuf::encode(&e.to_json());
            Err(refused(e))
        }
    }
}

fn refused(e: ApiError) -> Refused {
    Refused {
        code: e.code,
        reason: e.reason,
        message: e.message,
    }
}

/// The object named `a` of each served kind, in stored form, written once through
/// the same path as the fuzzed requests.
static LIVE: LazyLock<Vec<Value>> = LazyLock::new(|| RESOURCES.iter().map(live).collect());

fn live(resource: &'static Resource) -> Value {
    let storage = MemoryStorage::new(16);
    let write = |manager: &str, content_type: &str, body: &Value| {
        let target = Target {
            resource,
            namespace: Some(NAMESPACE.into()),
            name: Some(NAME.into()),
            dry_run: false,
            field_manager: Some(manager.into()),
            force: None,
            user_agent: None,
        };
        let body = Bytes::from(body.to_string());
        block_on(http::write(
            &storage,
            &target,
            "patch",
            content_type,
            body,
            FieldValidation::Strict,
        ))
        .unwrap_or_else(|e| panic!("{} {content_type}: {}", resource.kind, e.message))
    };
    write("seed", APPLY, &config(resource));
    let labelled = json!({"metadata": {"labels": {"tier": "control-plane"}}});
    write("writer", "application/merge-patch+json", &labelled);
    block_on(storage.get(&resource.key(NAMESPACE, NAME)))
        .ok()
        .flatten()
        .expect("written above")
}

/// An apply configuration of `resource`'s kind with every list and map a patch can
/// merge into.
fn config(resource: &Resource) -> Value {
    let mut config = json!({
        "apiVersion": resource.api_version(),
        "kind": resource.kind,
        "metadata": {
            "name": NAME,
            "labels": {"app": "scheduler"},
            "annotations": {"example.com/note": "seed"},
            "finalizers": ["example.com/keep"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "u-1"}],
        },
    });
    let fields = match (resource.group, resource.kind) {
        (_, "Lease") => json!({"spec": {
            "holderIdentity": "node-a",
            "leaseDurationSeconds": 15,
            "acquireTime": "2024-01-01T00:00:00.000000Z",
            "renewTime": "2024-01-01T00:00:10.000000Z",
            "leaseTransitions": 1,
        }}),
        (_, "LeaseCandidate") => json!({"spec": {
            "leaseName": "kube-scheduler",
            "pingTime": "2024-01-01T00:00:00.000000Z",
            "renewTime": "2024-01-01T00:00:01.000000Z",
            "binaryVersion": "1.33.0",
            "emulationVersion": "1.32.0",
            "strategy": "OldestEmulationVersion",
        }}),
        (_, "ConfigMap") => json!({"data": {"k": "v"}, "binaryData": {"b": "AAE="}}),
        (_, "Endpoints") => json!({"subsets": [{
            "addresses": [{"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "name": "p"}}],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP"}],
        }]}),
        ("", "Event") => json!({
            "involvedObject": {"kind": "Lease", "namespace": NAMESPACE, "name": NAME},
            "reason": "LeaderElection",
            "message": "node-a became leader",
            "type": "Normal",
            "count": 1,
            "source": {"component": "kube-scheduler"},
            "firstTimestamp": "2024-01-01T00:00:00Z",
            "lastTimestamp": "2024-01-01T00:00:00Z",
        }),
        (_, "Event") => json!({
            "regarding": {"kind": "Lease", "namespace": NAMESPACE, "name": NAME},
            "reason": "LeaderElection",
            "note": "node-a became leader",
            "type": "Normal",
            "action": "Leading",
            "eventTime": "2024-01-01T00:00:00.000000Z",
            "reportingController": "kube-scheduler",
            "reportingInstance": "node-a",
        }),
        _ => json!({}),
    };
    if let (Some(config), Value::Object(fields)) = (config.as_object_mut(), fields) {
        config.extend(fields);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_live_object() {
        for (resource, live) in RESOURCES.iter().zip(LIVE.iter()) {
            let managers: Vec<&str> = live["metadata"]["managedFields"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: {live}", resource.kind))
                .iter()
                .filter_map(|e| e["manager"].as_str())
                .collect();
            assert_eq!(managers, ["seed", "writer"], "{}", resource.kind);
            assert_eq!(live["metadata"]["labels"]["tier"], "control-plane");
        }
    }

    #[test]
    fn selectors_reach_each_verb_and_kind() {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": "a"}, "spec": {"holderIdentity": "fuzz"}})
        .to_string();
        let lease = lease.as_bytes();
        // Lease, empty store: the apply creates.
        assert_eq!(apply(0, lease), Ok(201));
        // Lease, live object: another manager's field is a conflict, unless forced.
        assert_eq!(apply(0x08, lease).unwrap_err().code, 409);
        assert_eq!(apply(0x28, lease), Ok(200));
        // ConfigMap, live object: a strategic merge patch merges the finalizers.
        let merged = patch(0x2a, br#"{"metadata":{"finalizers":["x"]}}"#);
        assert_eq!(merged, Ok(200));
        // The same patch of an absent object.
        assert_eq!(patch(0x22, b"{}").unwrap_err().code, 404);
        // Strict validation refuses an unknown field; Warn drops it.
        assert_eq!(patch(0x18, br#"{"colour":1}"#).unwrap_err().code, 400);
        assert_eq!(patch(0x08, br#"{"colour":1}"#), Ok(200));
        // A JSON patch, and a protobuf body that is not protobuf.
        let ops = br#"[{"op":"replace","path":"/spec/holderIdentity","value":"b"}]"#;
        assert_eq!(patch(0x48, ops), Ok(200));
        assert_eq!(protobuf(0, b"{}").unwrap_err().code, 400);
    }

    #[test]
    fn the_500s_of_kube_apiserver_are_told_apart() {
        let rv = br#"{"metadata":{"name":"a","resourceVersion":"1"}}"#;
        let created = json_create(rv);
        assert!(created.kube_apiserver_answers_500(), "{created:?}");
        let unknown = patch(0x28, br#"{"spec":{"$patch":"bogus"}}"#).unwrap_err();
        assert!(unknown.kube_apiserver_answers_500(), "{unknown:?}");
        let other = Refused {
            code: 500,
            reason: "InternalError",
            message: "anything else".into(),
        };
        assert!(!other.kube_apiserver_answers_500());
    }

    /// A JSON create, through the same path as the protobuf ones.
    fn json_create(body: &[u8]) -> Refused {
        let target = Target {
            resource: &RESOURCES[0],
            namespace: Some(NAMESPACE.into()),
            name: None,
            dry_run: false,
            field_manager: None,
            force: None,
            user_agent: None,
        };
        let storage = MemoryStorage::new(16);
        let written = block_on(http::write(
            &storage,
            &target,
            "create",
            "application/json",
            Bytes::copy_from_slice(body),
            FieldValidation::Warn,
        ));
        refused(written.unwrap_err())
    }
}
