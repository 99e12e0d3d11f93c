//! What kube-apiserver refuses before storing an object.
//!
//! Two layers, as in kube-apiserver: decoding (a field of the wrong JSON type, or a
//! timestamp in the wrong format, is a 400 BadRequest, since Go cannot decode it into
//! the typed struct), then validation (a value the kind does not allow is a 422
//! Invalid listing every offending field).

use serde_json::Value;

use super::resources::Resource;
use super::semver::Version;
use super::status::{ApiError, Cause};

#[derive(Debug, Clone, Copy)]
enum Type {
    Str,
    Int32,
    Bool,
    Object,
    Array,
    StrMap,
    /// metav1.Time: RFC 3339.
    Time,
    /// metav1.MicroTime: RFC 3339 with exactly six fractional digits, as Go parses it.
    MicroTime,
}

const METADATA: &[(&str, Type)] = &[
    ("metadata", Type::Object),
    ("metadata.name", Type::Str),
    ("metadata.generateName", Type::Str),
    ("metadata.namespace", Type::Str),
    ("metadata.uid", Type::Str),
    ("metadata.resourceVersion", Type::Str),
    ("metadata.labels", Type::StrMap),
    ("metadata.annotations", Type::StrMap),
    ("metadata.finalizers", Type::Array),
    ("metadata.ownerReferences", Type::Array),
];

fn fields(resource: &Resource) -> &'static [(&'static str, Type)] {
    match resource.kind {
        "Lease" => &[
            ("spec", Type::Object),
            ("spec.holderIdentity", Type::Str),
            ("spec.leaseDurationSeconds", Type::Int32),
            ("spec.acquireTime", Type::MicroTime),
            ("spec.renewTime", Type::MicroTime),
            ("spec.leaseTransitions", Type::Int32),
            ("spec.strategy", Type::Str),
            ("spec.preferredHolder", Type::Str),
        ],
        "LeaseCandidate" => &[
            ("spec", Type::Object),
            ("spec.leaseName", Type::Str),
            ("spec.pingTime", Type::MicroTime),
            ("spec.renewTime", Type::MicroTime),
            ("spec.binaryVersion", Type::Str),
            ("spec.emulationVersion", Type::Str),
            ("spec.strategy", Type::Str),
        ],
        "ConfigMap" => &[
            ("data", Type::StrMap),
            ("binaryData", Type::StrMap),
            ("immutable", Type::Bool),
        ],
        "Endpoints" => &[("subsets", Type::Array)],
        // Stored (core/v1) field names: events.k8s.io bodies are renamed first.
        "Event" => &[
            ("involvedObject", Type::Object),
            ("reason", Type::Str),
            ("message", Type::Str),
            ("type", Type::Str),
            ("count", Type::Int32),
            ("firstTimestamp", Type::Time),
            ("lastTimestamp", Type::Time),
            ("eventTime", Type::MicroTime),
            ("action", Type::Str),
            ("reportingComponent", Type::Str),
            ("reportingInstance", Type::Str),
        ],
        _ => &[],
    }
}

/// kube-apiserver's 400 for a body it cannot decode as the kind.
pub(crate) fn cannot_handle(resource: &Resource, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: {why}",
        kind = resource.kind,
        version = resource.version
    ))
}

/// Parses a request body into a JSON object of the kind's shape (in stored form).
pub(crate) fn decode(resource: &Resource, body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| cannot_handle(resource, e))?;
    if !value.is_object() {
        return Err(cannot_handle(resource, "the body is not a JSON object"));
    }
    check_identity(resource, &value)?;
    let value = resource.stored(value);
    check_types(resource, &value).map_err(|why| cannot_handle(resource, why))?;
    Ok(value)
}

/// Checks the types of a patched object, already in stored form.
pub(crate) fn check_decoded(resource: &Resource, value: &Value) -> Result<(), ApiError> {
    check_types(resource, value).map_err(|why| cannot_handle(resource, why))
}

fn check_identity(resource: &Resource, value: &Value) -> Result<(), ApiError> {
    if let Some(api_version) = value.get("apiVersion").and_then(Value::as_str) {
        if api_version != resource.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                resource.api_version()
            )));
        }
    }
    if let Some(kind) = value.get("kind").and_then(Value::as_str) {
        if kind != resource.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                resource.kind
            )));
        }
    }
    Ok(())
}

fn check_types(resource: &Resource, value: &Value) -> Result<(), String> {
    for (path, ty) in METADATA.iter().chain(fields(resource)) {
        let pointer: String = path.split('.').map(|p| format!("/{p}")).collect();
        let field = match value.pointer(&pointer) {
            None | Some(Value::Null) => continue,
            Some(field) => field,
        };
        let ok = match ty {
            Type::Str => field.is_string(),
            Type::Bool => field.is_boolean(),
            Type::Object => field.is_object(),
            Type::Array => field.is_array(),
            Type::Int32 => field.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            Type::StrMap => field
                .as_object()
                .is_some_and(|m| m.values().all(|v| v.is_string() || v.is_null())),
            Type::Time => field
                .as_str()
                .is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok()),
            Type::MicroTime => field.as_str().is_some_and(is_micro_time),
        };
        if !ok {
            let want = match ty {
                Type::Str => "string",
                Type::Bool => "bool",
                Type::Object => "object",
                Type::Array => "array",
                Type::Int32 => "int32",
                Type::StrMap => "map[string]string",
                Type::Time => "an RFC 3339 time (2006-01-02T15:04:05Z07:00)",
                Type::MicroTime => {
                    "an RFC 3339 time with six fractional digits (2006-01-02T15:04:05.000000Z07:00)"
                }
            };
            return Err(format!(
                "json: cannot unmarshal {field} into field {path} of type {want}"
            ));
        }
    }
    Ok(())
}

/// Go parses MicroTime with the layout `2006-01-02T15:04:05.000000Z07:00`, which wants
/// exactly six fractional digits.
fn is_micro_time(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.len() > 26
        && bytes[10] == b'T'
        && bytes[19] == b'.'
        && bytes[20..26].iter().all(u8::is_ascii_digit)
        && matches!(bytes[26], b'Z' | b'+' | b'-')
        && s.parse::<jiff::Timestamp>().is_ok()
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const ANNOTATIONS_MAX: usize = 256 * 1024;
const CONFIGMAP_MAX: usize = 1024 * 1024;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_qualified_name(s: &str) -> bool {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return false;
            }
            name
        }
        None => s,
    };
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name(s) && !s.contains('/')
}

/// Validates an object (in stored form) about to be stored: created when `old` is
/// None, else replacing `old`.
pub(crate) fn validate(
    resource: &Resource,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if resource.kind == "LeaseCandidate" {
        // `ValidLeaseCandidateName`: a ConfigMap key, so `node_a` and `Node.A` pass.
        for message in config_map_key_errors(name) {
            causes.push(Cause::invalid(
                "metadata.name",
                &Value::from(name),
                &message,
            ));
        }
    } else if !is_dns_subdomain(name) {
        causes.push(Cause::invalid(
            "metadata.name",
            &Value::from(name),
            SUBDOMAIN_MSG,
        ));
    }
    if let Some(ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        if !is_dns_label(ns) {
            causes.push(Cause::invalid(
                "metadata.namespace",
                &Value::from(ns),
                LABEL_MSG,
            ));
        }
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (key, value) in labels {
            if !is_qualified_name(key) {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    &Value::from(key.as_str()),
                    QUALIFIED_MSG,
                ));
            }
            if !is_label_value(value.as_str().unwrap_or("")) {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    value,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
    }
    if let Some(annotations) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut size = 0;
        for (key, value) in annotations {
            size += key.len() + value.as_str().map_or(0, str::len);
            if !is_qualified_name(key) {
                causes.push(Cause::invalid(
                    "metadata.annotations",
                    &Value::from(key.as_str()),
                    QUALIFIED_MSG,
                ));
            }
        }
        if size > ANNOTATIONS_MAX {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!("Too long: may not be more than {ANNOTATIONS_MAX} bytes"),
            });
        }
    }
    match resource.kind {
        "Lease" => validate_lease(obj, &mut causes),
        "LeaseCandidate" => validate_lease_candidate(obj, old, &mut causes),
        "ConfigMap" => validate_configmap(obj, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(resource, name, causes))
    }
}

fn validate_lease(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        return;
    };
    if let Some(d) = spec.get("leaseDurationSeconds").filter(|v| !v.is_null()) {
        if d.as_i64().unwrap_or(0) <= 0 {
            causes.push(Cause::invalid(
                "spec.leaseDurationSeconds",
                d,
                "must be greater than 0",
            ));
        }
    }
    if let Some(t) = spec.get("leaseTransitions").filter(|v| !v.is_null()) {
        if t.as_i64().unwrap_or(0) < 0 {
            causes.push(Cause::invalid(
                "spec.leaseTransitions",
                t,
                "must be greater than or equal to 0",
            ));
        }
    }
    // Go's `*string`: a strategy that is present is validated, even when empty.
    let strategy = spec.get("strategy").and_then(Value::as_str);
    if let Some(strategy) = strategy {
        validate_strategy(strategy, causes);
    }
    let strategy = strategy.unwrap_or("");
    let preferred = spec
        .get("preferredHolder")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !preferred.is_empty() && strategy.is_empty() {
        causes.push(Cause::forbidden(
            "spec.preferredHolder",
            "may only be specified if `strategy` is defined",
        ));
    }
}

/// The coordinated leader election strategies kube-apiserver knows.
const LEASE_STRATEGIES: &[&str] = &["OldestEmulationVersion"];

/// `ValidateCoordinatedLeaseStrategy` of kube-apiserver's
/// `pkg/apis/coordination/validation/validation.go`: a name without `/` is one of
/// Kubernetes' own strategies, a name with one is a qualified name (a third party's).
///
/// The field is `spec.strategy.strategy`, as kube-apiserver names it: its caller
/// passes the path of `strategy` and the function adds `strategy` again.
fn validate_strategy(strategy: &str, causes: &mut Vec<Cause>) {
    const FIELD: &str = "spec.strategy.strategy";
    if !strategy.contains('/') {
        if !LEASE_STRATEGIES.contains(&strategy) {
            causes.push(Cause::not_supported(
                FIELD,
                &Value::from(strategy),
                LEASE_STRATEGIES,
            ));
        }
    } else if !is_qualified_name(strategy) {
        causes.push(Cause::invalid(FIELD, &Value::from(strategy), QUALIFIED_MSG));
    }
}

/// `ValidateLeaseCandidateSpec` and, on update, `ValidateLeaseCandidateSpecUpdate` of
/// kube-apiserver's `pkg/apis/coordination/validation/validation.go` (coordination
/// v1beta1, one `strategy` per candidate): the Lease is named, the versions are strict
/// semantic versions with the binary one not below the emulated one, the strategy is
/// known, and the Lease a candidate runs for never changes.
fn validate_lease_candidate(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec_str = |obj: &Value, field: &str| {
        obj.get("spec")
            .and_then(|spec| spec.get(field))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let lease_name = spec_str(obj, "leaseName");
    if lease_name.is_empty() {
        causes.push(Cause::required("spec.leaseName", ""));
    }
    // An absent or invalid version is Go's zero version.
    let mut version = |field: &str, required: bool| {
        let text = spec_str(obj, field);
        let path = format!("spec.{field}");
        if text.is_empty() {
            if required {
                causes.push(Cause::required(path, ""));
            }
            return (text, Version::default());
        }
        match Version::parse(&text) {
            Some(v) => (text, v),
            None => {
                causes.push(Cause::invalid(
                    path,
                    &Value::from(text.as_str()),
                    "must be a valid semantic version",
                ));
                (text, Version::default())
            }
        }
    };
    let (emulation_text, emulation) = version("emulationVersion", false);
    let (binary_text, binary) = version("binaryVersion", true);
    if !binary_text.is_empty() && !emulation_text.is_empty() && binary < emulation {
        causes.push(Cause::invalid(
            "spec.binaryVersion",
            &Value::from(binary_text),
            "must be greater than or equal to `emulationVersion`",
        ));
    }
    let strategy = spec_str(obj, "strategy");
    if strategy.is_empty() {
        causes.push(Cause::required("spec.strategy", ""));
    } else {
        if strategy == "OldestEmulationVersion" && emulation.is_zero() {
            causes.push(Cause::required(
                "spec.emulationVersion",
                "must be specified when `strategy` is 'OldestEmulationVersion'",
            ));
        }
        validate_strategy(&strategy, causes);
    }
    if let Some(old) = old {
        let was = spec_str(old, "leaseName");
        if was != lease_name {
            causes.push(Cause::invalid(
                "spec.leaseName",
                &Value::from(lease_name),
                "field is immutable",
            ));
        }
    }
}

/// `IsConfigMapKey`: the messages for a name that is not one.
fn config_map_key_errors(key: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if key.len() > 253 {
        errors.push("must be no more than 253 characters".to_string());
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        errors.push(CONFIG_KEY_MSG.to_string());
    }
    match key {
        "." => errors.push("must not be '.'".to_string()),
        ".." => errors.push("must not be '..'".to_string()),
        _ if key.starts_with("..") => errors.push("must not start with '..'".to_string()),
        _ => {}
    }
    errors
}

const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

fn validate_configmap(obj: &Value, causes: &mut Vec<Cause>) {
    let mut size = 0;
    for field in ["data", "binaryData"] {
        let Some(map) = obj.get(field).and_then(Value::as_object) else {
            continue;
        };
        for (key, value) in map {
            size += value.as_str().map_or(0, str::len);
            let valid = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid {
                causes.push(Cause::invalid(
                    format!("{field}[{key}]"),
                    &Value::from(key.as_str()),
                    CONFIG_KEY_MSG,
                ));
            }
            if field == "binaryData" && obj.pointer(&format!("/data/{key}")).is_some() {
                causes.push(Cause::invalid(
                    format!("data[{key}]"),
                    &Value::from(key.as_str()),
                    "duplicate of key present in binaryData",
                ));
            }
        }
    }
    if size > CONFIGMAP_MAX {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: String::new(),
            message: format!("Too long: may not be more than {CONFIGMAP_MAX} bytes"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn leases() -> &'static Resource {
        Resource::find("coordination.k8s.io", "v1", "leases").expect("served")
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let body = br#"{"metadata":{"name":"a"},"spec":{"leaseDurationSeconds":"15"}}"#;
        let err = decode(leases(), body).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("spec.leaseDurationSeconds"),
            "{}",
            err.message
        );
        let body = br#"{"metadata":{"name":"a"},"spec":{"renewTime":"2024-01-01T00:00:00Z"}}"#;
        assert_eq!(decode(leases(), body).unwrap_err().code, 400);
        let body =
            br#"{"metadata":{"name":"a"},"spec":{"renewTime":"2024-01-01T00:00:00.123456Z"}}"#;
        assert!(decode(leases(), body).is_ok());
        assert_eq!(decode(leases(), b"[]").unwrap_err().code, 400);
        let body = br#"{"apiVersion":"v1","kind":"Lease"}"#;
        assert_eq!(decode(leases(), body).unwrap_err().code, 400);
    }

    #[test]
    fn invalid_values_are_listed() {
        let obj = json!({"metadata": {"name": "Bad_Name", "namespace": "ns"},
                         "spec": {"leaseDurationSeconds": -1, "preferredHolder": "x"}});
        let err = validate(leases(), &obj, None).unwrap_err();
        assert_eq!(err.code, 422);
        let causes = err.to_json()["details"]["causes"].clone();
        let fields: Vec<_> = causes
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.leaseDurationSeconds",
                "spec.preferredHolder"
            ]
        );
        let ok = json!({"metadata": {"name": "kube-scheduler", "namespace": "kube-system",
                        "annotations": {"control-plane.alpha.kubernetes.io/leader": "{}"}},
                        "spec": {"leaseDurationSeconds": 15}});
        assert!(validate(leases(), &ok, None).is_ok());
    }

    fn candidates() -> &'static Resource {
        Resource::find("coordination.k8s.io", "v1beta1", "leasecandidates").expect("served")
    }

    fn candidate(spec: Value) -> Value {
        json!({"metadata": {"name": "node-a", "namespace": "kube-system"}, "spec": spec})
    }

    /// Each cause's field and message.
    fn causes(err: &ApiError) -> Vec<(String, String)> {
        err.to_json()["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let text = |k: &str| c[k].as_str().unwrap().to_string();
                (text("field"), text("message"))
            })
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(f, m)| (f.to_string(), m.to_string()))
            .collect()
    }

    /// As `ValidateLeaseCandidate` and `ValidateLeaseCandidateUpdate` of kube-apiserver's
    /// `pkg/apis/coordination/validation/validation.go` (coordination v1beta1).
    #[test]
    fn lease_candidates_are_validated_as_kube_apiserver_does() {
        let good = json!({"leaseName": "kube-scheduler", "binaryVersion": "1.33.0",
                          "emulationVersion": "1.32.0", "strategy": "OldestEmulationVersion"});
        assert!(validate(candidates(), &candidate(good.clone()), None).is_ok());
        // A third party's strategy needs no emulation version.
        let third = json!({"leaseName": "l", "binaryVersion": "1.33.0",
                           "strategy": "example.com/Newest"});
        assert!(validate(candidates(), &candidate(third), None).is_ok());

        let err = validate(candidates(), &candidate(json!({})), None).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            causes(&err),
            pairs(&[
                ("spec.leaseName", "Required value"),
                ("spec.binaryVersion", "Required value"),
                ("spec.strategy", "Required value"),
            ])
        );
        assert!(
            err.message.starts_with(
                "LeaseCandidate.coordination.k8s.io \"node-a\" is invalid: [spec.leaseName: Required value"
            ),
            "{}",
            err.message
        );

        let bad = json!({"leaseName": "l", "binaryVersion": "1.33", "emulationVersion": "v1.32.0",
                         "strategy": "Newest"});
        let err = validate(candidates(), &candidate(bad), None).unwrap_err();
        assert_eq!(
            causes(&err),
            pairs(&[
                (
                    "spec.emulationVersion",
                    "Invalid value: \"v1.32.0\": must be a valid semantic version"
                ),
                (
                    "spec.binaryVersion",
                    "Invalid value: \"1.33\": must be a valid semantic version"
                ),
                (
                    "spec.strategy.strategy",
                    "Unsupported value: \"Newest\": supported values: \"OldestEmulationVersion\""
                ),
            ])
        );

        let older = json!({"leaseName": "l", "binaryVersion": "1.31.0", "emulationVersion": "1.32.0",
                           "strategy": "OldestEmulationVersion"});
        let err = validate(candidates(), &candidate(older), None).unwrap_err();
        assert_eq!(
            causes(&err),
            pairs(&[(
                "spec.binaryVersion",
                "Invalid value: \"1.31.0\": must be greater than or equal to `emulationVersion`"
            )])
        );

        let no_emulation = json!({"leaseName": "l", "binaryVersion": "1.33.0",
                                  "strategy": "OldestEmulationVersion"});
        let err = validate(candidates(), &candidate(no_emulation), None).unwrap_err();
        assert_eq!(
            causes(&err),
            pairs(&[(
                "spec.emulationVersion",
                "Required value: must be specified when `strategy` is 'OldestEmulationVersion'"
            )])
        );
        let bad_qualified = json!({"leaseName": "l", "binaryVersion": "1.33.0",
                                   "strategy": "example.com/-x"});
        let err = validate(candidates(), &candidate(bad_qualified), None).unwrap_err();
        assert_eq!(causes(&err)[0].0, "spec.strategy.strategy");

        // Names are ConfigMap keys.
        let mut named = candidate(good.clone());
        named["metadata"]["name"] = json!("Node_A.1");
        assert!(validate(candidates(), &named, None).is_ok());
        named["metadata"]["name"] = json!("..a");
        let err = validate(candidates(), &named, None).unwrap_err();
        assert_eq!(
            causes(&err),
            pairs(&[(
                "metadata.name",
                "Invalid value: \"..a\": must not start with '..'"
            )])
        );
        named["metadata"]["name"] = json!("a/b");
        assert_eq!(
            causes(&validate(candidates(), &named, None).unwrap_err())[0].0,
            "metadata.name"
        );

        // The Lease a candidate runs for is immutable.
        let mut moved = good.clone();
        moved["leaseName"] = json!("kube-controller-manager");
        let err = validate(
            candidates(),
            &candidate(moved),
            Some(&candidate(good.clone())),
        )
        .unwrap_err();
        assert_eq!(
            causes(&err),
            pairs(&[(
                "spec.leaseName",
                "Invalid value: \"kube-controller-manager\": field is immutable"
            )])
        );
        assert!(validate(
            candidates(),
            &candidate(good.clone()),
            Some(&candidate(good))
        )
        .is_ok());
    }

    /// As `ValidateLeaseSpec` of kube-apiserver's
    /// `pkg/apis/coordination/validation/validation.go`.
    #[test]
    fn lease_strategies_are_validated_when_set() {
        let lease = |spec: Value| json!({"metadata": {"name": "l"}, "spec": spec});
        let ok = lease(json!({"strategy": "OldestEmulationVersion", "preferredHolder": "node-b"}));
        assert!(validate(leases(), &ok, None).is_ok());
        assert!(validate(
            leases(),
            &lease(json!({"strategy": "example.com/mine"})),
            None
        )
        .is_ok());
        let err = validate(leases(), &lease(json!({"strategy": "Newest"})), None).unwrap_err();
        assert_eq!(
            causes(&err),
            pairs(&[(
                "spec.strategy.strategy",
                "Unsupported value: \"Newest\": supported values: \"OldestEmulationVersion\""
            )])
        );
        // Go's `*string`: an empty strategy that is present is not a known one.
        let err = validate(leases(), &lease(json!({"strategy": ""})), None).unwrap_err();
        assert_eq!(causes(&err)[0].0, "spec.strategy.strategy");
        let err =
            validate(leases(), &lease(json!({"preferredHolder": "node-b"})), None).unwrap_err();
        assert_eq!(
            causes(&err),
            pairs(&[(
                "spec.preferredHolder",
                "Forbidden: may only be specified if `strategy` is defined"
            )])
        );
    }
}
