//! metav1.Status failures, worded as kube-apiserver words them.

use serde_json::{json, Map, Value};

use super::resources::Resource;
use super::storage::StorageError;

/// One field error of a 422 Invalid.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: &'static str,
    /// `spec.leaseDurationSeconds`
    pub field: String,
    /// `Invalid value: -1: must be greater than 0`
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value}: {detail}"),
        }
    }

    /// `field.Required`; an empty `detail` is Go's bare `Required value`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ),
        }
    }
}

/// A failed request: an HTTP code and the Status body that goes with it.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429 and the like).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    fn named(resource: &Resource, name: &str) -> Value {
        let mut details = Map::new();
        details.insert("name".into(), Value::from(name));
        if !resource.group.is_empty() {
            details.insert("group".into(), Value::from(resource.group));
        }
        details.insert("kind".into(), Value::from(resource.plural));
        Value::Object(details)
    }

    pub fn not_found(resource: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", resource.qualified()),
        )
        .with_details(Self::named(resource, name))
    }

    pub fn already_exists(resource: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", resource.qualified()),
        )
        .with_details(Self::named(resource, name))
    }

    pub fn conflict(resource: &Resource, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                resource.qualified()
            ),
        )
        .with_details(Self::named(resource, name))
    }

    /// The optimistic-lock failure of a stale PUT.
    pub fn modified(resource: &Resource, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(resource: &Resource, name: &str, causes: Vec<Cause>) -> Self {
        let listed: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let summary = if listed.len() == 1 {
            listed[0].clone()
        } else {
            format!("[{}]", listed.join(", "))
        };
        let mut details = Map::new();
        details.insert("name".into(), Value::from(name));
        if !resource.group.is_empty() {
            details.insert("group".into(), Value::from(resource.group));
        }
        details.insert("kind".into(), Value::from(resource.kind));
        details.insert(
            "causes".into(),
            causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect(),
        );
        Self::new(
            422,
            "Invalid",
            format!(
                "{} {name:?} is invalid: {summary}",
                resource.qualified_kind()
            ),
        )
        .with_details(Value::Object(details))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// RBAC's denial, worded like kube-apiserver's authorizer.
    pub fn forbidden(
        resource: &Resource,
        name: Option<&str>,
        user: &str,
        verb: &str,
        namespace: Option<&str>,
    ) -> Self {
        let object = match name {
            Some(name) => format!("{} {name:?}", resource.qualified()),
            None => resource.qualified(),
        };
        let scope = match namespace {
            Some(ns) => format!(" in the namespace {ns:?}"),
            None => " at the cluster scope".to_string(),
        };
        let mut details = Map::new();
        if let Some(name) = name {
            details.insert("name".into(), Value::from(name));
        }
        if !resource.group.is_empty() {
            details.insert("group".into(), Value::from(resource.group));
        }
        details.insert("kind".into(), Value::from(resource.plural));
        Self::new(
            403,
            "Forbidden",
            format!(
                "{object} is forbidden: User {user:?} cannot {verb} resource {:?} in API group {:?}{scope}",
                resource.plural, resource.group
            ),
        )
        .with_details(Value::Object(details))
    }

    /// A path the server does not serve, inside the API space.
    pub fn no_such_path() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// An injected failure: the reason kube-apiserver gives with that code.
    pub fn injected(code: u16) -> Self {
        let (reason, message) = match code {
            400 => ("BadRequest", "injected fault: bad request"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "injected fault: forbidden"),
            404 => ("NotFound", "injected fault: not found"),
            409 => ("Conflict", "injected fault: conflict"),
            410 => ("Expired", "injected fault: gone"),
            429 => (
                "TooManyRequests",
                "Too many requests, please try again later.",
            ),
            503 => ("ServiceUnavailable", "injected fault: service unavailable"),
            504 => ("Timeout", "injected fault: the request timed out"),
            _ => ("InternalError", "injected fault: internal error"),
        };
        let mut error = Self::new(code, reason, message);
        if code == 429 || code == 503 {
            error.retry_after = Some(1);
        }
        error
    }

    /// A storage failure on `name` (or on the collection when `name` is None).
    pub fn served(resource: &Resource, name: &str, error: StorageError) -> Self {
        match error {
            StorageError::NotFound => Self::not_found(resource, name),
            StorageError::AlreadyExists => Self::already_exists(resource, name),
            StorageError::Conflict => Self::modified(resource, name),
            StorageError::Expired { requested, oldest } => Self::expired(requested, oldest),
            StorageError::Unavailable(why) => Self::new(
                500,
                "ServerTimeout",
                format!(
                    "The operation against {} could not be completed at this time, please try again. ({why})",
                    resource.qualified()
                ),
            )
            .with_details(json!({"name": "", "kind": resource.plural, "retryAfterSeconds": 2})),
            StorageError::Corrupt(why) => Self::internal(why),
        }
    }

    /// 410 Gone for a watch or list from a compacted resourceVersion.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// The Status body.
    pub fn to_json(&self) -> Value {
        let mut status = Map::new();
        status.insert("kind".into(), Value::from("Status"));
        status.insert("apiVersion".into(), Value::from("v1"));
        status.insert("metadata".into(), json!({}));
        status.insert("status".into(), Value::from("Failure"));
        status.insert("message".into(), Value::from(self.message.clone()));
        status.insert("reason".into(), Value::from(self.reason));
        if let Some(details) = &self.details {
            status.insert("details".into(), details.clone());
        }
        status.insert("code".into(), Value::from(self.code));
        Value::Object(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_kube_apiserver() {
        let leases = Resource::find("coordination.k8s.io", "v1", "leases").expect("served");
        assert_eq!(
            ApiError::not_found(leases, "x").to_json(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"leases.coordination.k8s.io \"x\" not found","reason":"NotFound",
                   "details":{"name":"x","group":"coordination.k8s.io","kind":"leases"},"code":404})
        );
    }

    #[test]
    fn forbidden_names_user_verb_and_namespace() {
        let leases = Resource::find("coordination.k8s.io", "v1", "leases").expect("served");
        let e = ApiError::forbidden(leases, Some("x"), "y", "update", Some("z"));
        assert_eq!(
            e.message,
            "leases.coordination.k8s.io \"x\" is forbidden: User \"y\" cannot update resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"z\""
        );
    }

    #[test]
    fn invalid_lists_causes() {
        let cms = Resource::find("", "v1", "configmaps").expect("served");
        let e = ApiError::invalid(
            cms,
            "c",
            vec![Cause::required(
                "metadata.name",
                "name or generateName is required",
            )],
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "ConfigMap \"c\" is invalid: metadata.name: Required value: name or generateName is required"
        );
        assert_eq!(
            e.to_json()["details"]["causes"][0]["field"],
            "metadata.name"
        );
    }
}
