//! OpenAPI v3 documents of the served group versions, and server-side field
//! validation (`fieldValidation=Strict|Warn|Ignore`) against the same schemas.
//!
//! kubectl (1.32) reads `/openapi/v3`, then the document of the manifest's group
//! version, and looks for a PATCH operation of the kind (its
//! `x-kubernetes-group-version-kind`) that takes a `fieldValidation` parameter. When it
//! finds one it validates nothing itself and sends `fieldValidation=Strict`, so the
//! server reports unknown fields; otherwise it downloads `/openapi/v2` to validate
//! on its own. The schemas are generated from the protobuf tables, the one list of
//! each kind's fields here.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use super::protobuf::{self, Card, Kind, Message};
use super::resources::{Resource, RESOURCES};
use super::status::ApiError;

/// The OpenAPI document at `path` (`/openapi/v3` or `/openapi/v3/<group version>`),
/// or None when `path` is not one.
pub(crate) fn document(path: &str) -> Option<Value> {
    let path = path.trim_end_matches('/');
    if path == "/openapi/v3" {
        return Some(INDEX.clone());
    }
    let gv = path.strip_prefix("/openapi/v3/")?;
    DOCUMENTS.get(gv).cloned()
}

/// The document of each group version (`api/v1`, `apis/<group>/<version>`), built
/// once: they depend only on the served kinds.
static DOCUMENTS: LazyLock<BTreeMap<String, Value>> = LazyLock::new(|| {
    let mut gvs: BTreeMap<String, Vec<&'static Resource>> = BTreeMap::new();
    for r in RESOURCES {
        let name = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        gvs.entry(name).or_default().push(r);
    }
    gvs.into_iter()
        .map(|(name, resources)| (name, group_version(&resources)))
        .collect()
});

static INDEX: LazyLock<Value> = LazyLock::new(|| {
    let paths: Map<String, Value> = DOCUMENTS
        .iter()
        .map(|(name, document)| {
            let mut hasher = DefaultHasher::new();
            document.to_string().hash(&mut hasher);
            // kubectl caches each document under its hash.
            let url = format!("/openapi/v3/{name}?hash={:016X}", hasher.finish());
            (name.clone(), json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
});

fn group_version(resources: &[&'static Resource]) -> Value {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for r in resources {
        let gvk = json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
        for (message, kind) in [
            (protobuf::object_message(r), r.kind.to_string()),
            (protobuf::list_message(r), format!("{}List", r.kind)),
        ] {
            add_schemas(message, &mut schemas);
            let schema = schemas
                .get_mut(message.name)
                .and_then(Value::as_object_mut)
                .expect("added above");
            let properties = schema["properties"]
                .as_object_mut()
                .expect("objects have properties");
            properties.insert("apiVersion".into(), json!({"type": "string"}));
            properties.insert("kind".into(), json!({"type": "string"}));
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "version": r.version, "kind": kind}]),
            );
        }
        paths.extend(resource_paths(r, &gvk[0]));
    }
    for message in protobuf::shared_messages() {
        add_schemas(message, &mut schemas);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", super::discovery::MAJOR, super::discovery::MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn reference(message: &Message) -> Value {
    json!({"$ref": format!("#/components/schemas/{}", message.name)})
}

/// Adds the schema of `message` and of every message it holds.
fn add_schemas(message: &'static Message, schemas: &mut Map<String, Value>) {
    if schemas.contains_key(message.name) {
        return;
    }
    let mut properties = Map::new();
    let mut nested = Vec::new();
    for field in message.fields {
        let schema = match field.kind {
            Kind::Str => json!({"type": "string"}),
            Kind::Int32 => json!({"type": "integer", "format": "int32"}),
            Kind::Int64 => json!({"type": "integer", "format": "int64"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::Time | Kind::MicroTime => json!({"type": "string", "format": "date-time"}),
            Kind::StrMap => json!({"type": "object", "additionalProperties": {"type": "string"}}),
            Kind::BytesMap => json!({"type": "object",
                "additionalProperties": {"type": "string", "format": "byte"}}),
            Kind::FieldsV1 => json!({"type": "object"}),
            Kind::Msg(inner) => {
                nested.push(inner);
                reference(inner)
            }
        };
        let mut schema = if field.card == Card::Repeated {
            json!({"type": "array", "items": schema})
        } else {
            schema
        };
        if let Some((_, _, key)) = MERGED_LISTS
            .iter()
            .find(|(m, f, _)| *m == message.name && *f == field.name)
        {
            schema["x-kubernetes-patch-strategy"] = json!("merge");
            if let Some(key) = key {
                schema["x-kubernetes-patch-merge-key"] = json!(key);
            }
        }
        properties.insert(field.name.into(), schema);
    }
    schemas.insert(
        message.name.into(),
        json!({"type": "object", "properties": properties}),
    );
    for inner in nested {
        add_schemas(inner, schemas);
    }
}

/// The patches the server takes; kubectl's client-side apply looks for the strategic
/// one before it computes a strategic merge patch from these schemas.
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// The lists of the served kinds that strategic merge patches merge rather than
/// replace (`patchStrategy` in Go): message, field, merge key.
const MERGED_LISTS: &[(&str, &str, Option<&str>)] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        Some("uid"),
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        None,
    ),
];

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description,
           "schema": {"type": "string", "uniqueItems": true}})
}

fn write_parameters() -> Value {
    json!([
        query("dryRun", "When present, indicates that modifications should not be persisted."),
        query("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
        query("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default) and Strict."),
    ])
}

fn operation(r: &Resource, action: &str, gvk: &Value, body: &[&str], reply: &str) -> Value {
    let mut op = json!({
        "operationId": format!("{action}{}", r.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "responses": {"200": {"description": "OK", "content": {
            "application/json": {"schema": {"$ref": format!("#/components/schemas/{reply}")}},
            protobuf::MEDIA_TYPE: {"schema": {"$ref": format!("#/components/schemas/{reply}")}},
        }}},
    });
    if !body.is_empty() {
        op["parameters"] = write_parameters();
        let schema = reference(protobuf::object_message(r));
        let content: Map<String, Value> = body
            .iter()
            .map(|media| (media.to_string(), json!({"schema": schema})))
            .collect();
        op["requestBody"] = json!({"required": true, "content": content});
    }
    op
}

fn resource_paths(r: &'static Resource, gvk: &Value) -> Map<String, Value> {
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let object = protobuf::object_message(r).name;
    let list = protobuf::list_message(r).name;
    let path_param = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}});
    let mut paths = Map::new();
    paths.insert(
        format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
        json!({
            "parameters": [path_param("namespace")],
            "get": operation(r, "list", gvk, &[], list),
            "post": operation(r, "post", gvk, &["*/*"], object),
        }),
    );
    paths.insert(
        format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
        json!({
            "parameters": [path_param("name"), path_param("namespace")],
            "get": operation(r, "get", gvk, &[], object),
            "put": operation(r, "put", gvk, &["*/*"], object),
            "patch": operation(r, "patch", gvk, PATCH_TYPES, object),
            "delete": operation(r, "delete", gvk, &[], "io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
        }),
    );
    paths.insert(
        format!("{prefix}/{}", r.plural),
        json!({"get": operation(r, "list", gvk, &[], list)}),
    );
    paths
}

/// What the request's `fieldValidation` asks for unknown fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Drop them.
    Ignore,
    /// Drop them and say so in `Warning` headers (kube-apiserver's default).
    Warn,
    /// Refuse the request.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter; absent is `Warn`.
    ///
    /// # Errors
    ///
    /// A 400 BadRequest for another value, worded as kube-apiserver's.
    pub(crate) fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("" | "Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            ))),
        }
    }
}

/// What a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    /// A whole object (create, update).
    Object,
    /// A merge or strategic merge patch: directives such as `$patch` are not fields.
    Patch,
}

/// Drops the fields of a JSON body that `resource`'s kind does not have, as decoding
/// into Go's types does, and answers as `validation` asks: the body to go on with and
/// the warnings to send.
///
/// # Errors
///
/// With `Strict`, a 400 BadRequest naming every unknown field, worded as
/// kube-apiserver's strict decoding error.
pub(crate) fn check(
    resource: &Resource,
    body: &[u8],
    validation: FieldValidation,
    kind: Payload,
) -> Result<(Vec<u8>, Vec<String>), ApiError> {
    // A body that is not an object fails in decoding, with its own message.
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return Ok((body.to_vec(), vec![]));
    };
    let mut unknown = Vec::new();
    walk(
        protobuf::object_message(resource),
        &mut obj,
        "",
        kind,
        &mut unknown,
    );
    if unknown.is_empty() {
        return Ok((body.to_vec(), vec![]));
    }
    let warnings = answer(resource, unknown, validation, kind)?;
    Ok((Value::Object(obj).to_string().into_bytes(), warnings))
}

fn answer(
    resource: &Resource,
    unknown: Vec<String>,
    validation: FieldValidation,
    kind: Payload,
) -> Result<Vec<String>, ApiError> {
    let unknown: Vec<String> = unknown
        .iter()
        .map(|path| format!("unknown field {path:?}"))
        .collect();
    match validation {
        FieldValidation::Strict if !unknown.is_empty() => {
            let why = format!("strict decoding error: {}", unknown.join(", "));
            Err(if kind == Payload::Object {
                super::validation::cannot_handle(resource, why)
            } else {
                ApiError::bad_request(why)
            })
        }
        FieldValidation::Warn => Ok(unknown),
        _ => Ok(vec![]),
    }
}

/// Collects and removes the keys of `obj` that `message` lacks.
fn walk(
    message: &Message,
    obj: &mut Map<String, Value>,
    path: &str,
    body: Payload,
    unknown: &mut Vec<String>,
) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    obj.retain(|key, value| {
        // The type's fields, and a patch's directives.
        if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind")
            || key.starts_with('$') && body == Payload::Patch
        {
            return true;
        }
        let Some(field) = message.fields.iter().find(|f| f.name == key) else {
            unknown.push(at(key));
            return false;
        };
        if let Kind::Msg(inner) = field.kind {
            match value {
                Value::Object(map) => walk(inner, map, &at(key), body, unknown),
                Value::Array(items) if field.card == Card::Repeated => {
                    for (i, item) in items.iter_mut().enumerate() {
                        if let Value::Object(map) = item {
                            walk(inner, map, &format!("{}[{i}]", at(key)), body, unknown);
                        }
                    }
                }
                _ => {}
            }
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(group: &str, plural: &str) -> &'static Resource {
        Resource::find(group, "v1", plural).expect("served")
    }

    #[test]
    fn the_index_points_at_each_group_version() {
        let index = document("/openapi/v3").unwrap();
        let paths = index["paths"].as_object().unwrap();
        let names: Vec<&str> = paths.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "api/v1",
                "apis/coordination.k8s.io/v1",
                "apis/coordination.k8s.io/v1beta1",
                "apis/events.k8s.io/v1"
            ]
        );
        for (name, entry) in paths {
            let url = entry["serverRelativeURL"].as_str().unwrap();
            let (path, hash) = url.split_once("?hash=").unwrap();
            assert_eq!(path, format!("/openapi/v3/{name}"));
            assert_eq!(hash.len(), 16);
            assert!(document(path).is_some(), "{path}");
        }
        assert!(document("/openapi/v3/apis/apps/v1").is_none());
    }

    /// What kubectl looks for before it leaves validation to the server.
    #[test]
    fn each_kind_has_a_patch_that_takes_field_validation() {
        for r in RESOURCES {
            let gv = if r.group.is_empty() {
                format!("api/{}", r.version)
            } else {
                format!("apis/{}/{}", r.group, r.version)
            };
            let doc = document(&format!("/openapi/v3/{gv}")).unwrap();
            let patch = doc["paths"]
                .as_object()
                .unwrap()
                .values()
                .filter_map(|p| p.get("patch"))
                .find(|op| op["x-kubernetes-group-version-kind"]["kind"] == r.kind)
                .unwrap_or_else(|| panic!("no PATCH of {}", r.kind));
            assert!(patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
            assert!(patch["requestBody"]["content"]
                .get("application/strategic-merge-patch+json")
                .is_some());
            let schema = &doc["components"]["schemas"][protobuf::object_message(r).name];
            assert_eq!(schema["x-kubernetes-group-version-kind"][0]["kind"], r.kind);
            // Every reference resolves in the same document.
            let text = doc.to_string();
            for reference in text.split("\"#/components/schemas/").skip(1) {
                let name = reference.split('"').next().unwrap();
                assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
            }
        }
    }

    /// What `kubectl explain leasecandidate.spec` and strict validation read.
    #[test]
    fn lease_candidates_have_their_document() {
        let doc = document("/openapi/v3/apis/coordination.k8s.io/v1beta1").unwrap();
        let schemas = &doc["components"]["schemas"];
        let candidate = &schemas["io.k8s.api.coordination.v1beta1.LeaseCandidate"];
        assert_eq!(
            candidate["x-kubernetes-group-version-kind"],
            json!([{"group": "coordination.k8s.io", "version": "v1beta1", "kind": "LeaseCandidate"}])
        );
        let spec = &schemas["io.k8s.api.coordination.v1beta1.LeaseCandidateSpec"]["properties"];
        let fields: Vec<&str> = spec
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            [
                "binaryVersion",
                "emulationVersion",
                "leaseName",
                "pingTime",
                "renewTime",
                "strategy"
            ]
        );
        assert_eq!(spec["pingTime"]["format"], "date-time");
        assert!(doc["paths"]
            .get("/apis/coordination.k8s.io/v1beta1/namespaces/{namespace}/leasecandidates/{name}")
            .is_some());
        // The Lease keeps the fields of coordinated leader election.
        let lease = document("/openapi/v3/apis/coordination.k8s.io/v1").unwrap();
        let spec = &lease["components"]["schemas"]["io.k8s.api.coordination.v1.LeaseSpec"];
        assert_eq!(spec["properties"]["strategy"]["type"], "string");
        assert_eq!(spec["properties"]["preferredHolder"]["type"], "string");

        let candidates =
            Resource::find("coordination.k8s.io", "v1beta1", "leasecandidates").unwrap();
        let body = br#"{"metadata":{"name":"a"},"spec":{"leaseName":"l","pingtime":"x"}}"#;
        let err = check(candidates, body, FieldValidation::Strict, Payload::Object).unwrap_err();
        assert!(
            err.message.ends_with("unknown field \"spec.pingtime\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_fields_are_refused_warned_or_dropped() {
        let leases = resource("coordination.k8s.io", "leases");
        let body = br#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"a","colour":"red"},"spec":{"holderIdentity":"x","foo":1},"extra":true}"#;
        let err = check(leases, body, FieldValidation::Strict, Payload::Object).unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "Lease in version \"v1\" cannot be handled as a Lease: strict decoding error: unknown field \"extra\", unknown field \"metadata.colour\", unknown field \"spec.foo\""
        );
        let (kept, warnings) = check(leases, body, FieldValidation::Warn, Payload::Object).unwrap();
        assert_eq!(warnings.len(), 3);
        assert_eq!(warnings[0], "unknown field \"extra\"");
        let kept: Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(
            kept,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "a"}, "spec": {"holderIdentity": "x"}})
        );
        let (_, warnings) = check(leases, body, FieldValidation::Ignore, Payload::Object).unwrap();
        assert!(warnings.is_empty());

        let endpoints = resource("", "endpoints");
        let body = br#"{"metadata":{"name":"e"},"subsets":[{"ports":[{"port":1,"nope":2}]}]}"#;
        let err = check(endpoints, body, FieldValidation::Strict, Payload::Object).unwrap_err();
        assert!(
            err.message
                .ends_with("unknown field \"subsets[0].ports[0].nope\""),
            "{}",
            err.message
        );
        let patch =
            br#"{"metadata":{"$setElementOrder/finalizers":["a"]},"data":{"k":"v"},"dta":{}}"#;
        let configmaps = resource("", "configmaps");
        let err = check(configmaps, patch, FieldValidation::Strict, Payload::Patch).unwrap_err();
        assert_eq!(err.message, "strict decoding error: unknown field \"dta\"");
        // Without Strict, the field is left out of the patch and so of the object.
        let (kept, warnings) =
            check(configmaps, patch, FieldValidation::Warn, Payload::Patch).unwrap();
        assert_eq!(warnings, ["unknown field \"dta\""]);
        let kept: Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(
            kept,
            json!({"metadata": {"$setElementOrder/finalizers": ["a"]}, "data": {"k": "v"}})
        );
        assert_eq!(FieldValidation::parse(None).unwrap(), FieldValidation::Warn);
        assert_eq!(
            FieldValidation::parse(Some("strict")).unwrap_err().code,
            400
        );
    }
}
