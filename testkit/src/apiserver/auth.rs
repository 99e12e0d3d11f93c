//! Bearer tokens and RBAC-like rules.

use std::collections::HashMap;

use super::resources::Resource;
use super::status::ApiError;

/// A permission, like one rule of an RBAC Role: some verbs on some resources, in some
/// namespaces, optionally only on some object names.
///
/// As in RBAC, a rule limited to names never allows `create` (the name is not known
/// when a create is authorized), and a `list` or `watch` with the field selector
/// `metadata.name=X` is authorized as a request for the object `X`.
///
/// # Examples
///
/// ```
/// use leaderelection_testkit::apiserver::PolicyRule;
///
/// // What kube-scheduler's role allows on its lease.
/// let rule = PolicyRule::new(["get", "update", "watch"], ["leases"])
///     .in_namespace("kube-system")
///     .named("kube-scheduler");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    verbs: Vec<String>,
    resources: Vec<String>,
    namespaces: Vec<String>,
    names: Vec<String>,
}

impl PolicyRule {
    /// Allows `verbs` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, or
    /// `*`) on `resources` (`leases`, `leases.coordination.k8s.io`, `configmaps`,
    /// `endpoints`, `events`, or `*`) in every namespace, on every name.
    pub fn new<V, R>(
        verbs: impl IntoIterator<Item = V>,
        resources: impl IntoIterator<Item = R>,
    ) -> Self
    where
        V: Into<String>,
        R: Into<String>,
    {
        Self {
            verbs: verbs.into_iter().map(Into::into).collect(),
            resources: resources.into_iter().map(Into::into).collect(),
            namespaces: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Allows everything, as the `cluster-admin` role does.
    pub fn all() -> Self {
        Self::new(["*"], ["*"])
    }

    /// Limits the rule to `namespace` (calls add up; none means every namespace).
    #[must_use]
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespaces.push(namespace.into());
        self
    }

    /// Limits the rule to objects named `name` (calls add up; none means every name).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.names.push(name.into());
        self
    }

    fn allows(
        &self,
        verb: &str,
        resource: &Resource,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        let any = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
        any(&self.verbs, verb)
            && (any(&self.resources, resource.plural)
                || any(&self.resources, &resource.qualified()))
            && (self.namespaces.is_empty() || namespace.is_some_and(|ns| any(&self.namespaces, ns)))
            && (self.names.is_empty() || name.is_some_and(|n| any(&self.names, n)))
    }
}

/// Who a bearer token authenticates as, and what that user may do.
///
/// # Examples
///
/// ```
/// use leaderelection_testkit::apiserver::{PolicyRule, User};
///
/// let reader = User::new("reader").allow(PolicyRule::new(["get", "list", "watch"], ["*"]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    name: String,
    rules: Vec<PolicyRule>,
}

impl User {
    /// A user named `name` who may do nothing until rules are added.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            rules: Vec::new(),
        }
    }

    /// A user named `name` who may do everything.
    pub fn admin(name: impl Into<String>) -> Self {
        Self::new(name).allow(PolicyRule::all())
    }

    /// Adds a permission.
    #[must_use]
    pub fn allow(mut self, rule: PolicyRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The user name, as Forbidden messages and request counts show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn allows(
        &self,
        verb: &str,
        resource: &Resource,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        self.rules
            .iter()
            .any(|r| r.allows(verb, resource, namespace, name))
    }
}

/// The user name requests carry when authentication is off.
pub(crate) const ANONYMOUS: &str = "system:anonymous";

/// Token authentication and rule-based authorization; `None` tokens accept everyone.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    pub tokens: Option<HashMap<String, User>>,
}

impl Auth {
    /// The user the `Authorization` header names: `Ok(None)` when authentication is
    /// off, 401 when it is on and the token is missing or unknown.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Option<&User>, ApiError> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        bearer(header)
            .and_then(|token| tokens.get(token))
            .map(Some)
            .ok_or_else(ApiError::unauthorized)
    }

    /// 403 unless `user` may do `verb` (every user may when authentication is off).
    pub fn authorize(
        &self,
        user: Option<&User>,
        verb: &str,
        resource: &Resource,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), ApiError> {
        match user {
            None => Ok(()),
            Some(user) if user.allows(verb, resource, namespace, name) => Ok(()),
            Some(user) => Err(ApiError::forbidden(
                resource, name, &user.name, verb, namespace,
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(header: Option<&str>) -> Option<&str> {
    header?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_rbac() {
        let leases = Resource::find("coordination.k8s.io", "v1", "leases").expect("served");
        let cms = Resource::find("", "v1", "configmaps").expect("served");
        let user = User::new("sched").allow(
            PolicyRule::new(["get", "update", "create"], ["leases.coordination.k8s.io"])
                .in_namespace("kube-system")
                .named("kube-scheduler"),
        );
        assert!(user.allows("get", leases, Some("kube-system"), Some("kube-scheduler")));
        assert!(!user.allows("get", leases, Some("default"), Some("kube-scheduler")));
        assert!(!user.allows("get", leases, Some("kube-system"), Some("other")));
        assert!(!user.allows("create", leases, Some("kube-system"), None));
        assert!(!user.allows(
            "delete",
            leases,
            Some("kube-system"),
            Some("kube-scheduler")
        ));
        assert!(!user.allows("get", cms, Some("kube-system"), Some("kube-scheduler")));
        assert!(User::admin("a").allows("delete", cms, None, None));
    }

    #[test]
    fn tokens_authenticate() {
        let auth = Auth {
            tokens: Some(HashMap::from([("t".to_string(), User::new("u"))])),
        };
        assert_eq!(
            auth.authenticate(Some("Bearer t")).unwrap().map(User::name),
            Some("u")
        );
        assert_eq!(auth.authenticate(Some("Bearer x")).unwrap_err().code, 401);
        assert_eq!(auth.authenticate(None).unwrap_err().code, 401);
        assert!(Auth::default().authenticate(None).unwrap().is_none());
    }
}
