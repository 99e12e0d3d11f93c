//! Discovery documents: `/api`, `/apis`, the group and version lists, `/version`, and
//! the OpenAPI v3 documents of [`openapi`](super::openapi).
//!
//! Only the legacy (unaggregated) documents are served, with `Content-Type:
//! application/json`: clients that ask for aggregated discovery first (kubectl does)
//! see a server that does not offer it and fall back, as they do with older servers.

use std::net::SocketAddr;

use serde_json::{json, Value};

use super::resources::{groups, versions, Resource, RESOURCES};

/// The Kubernetes version the server presents itself as: 1.33, the first to serve
/// `coordination.k8s.io/v1beta1` LeaseCandidates (kubectl 1.32 is within one minor).
pub(crate) const MAJOR: &str = "1";
pub(crate) const MINOR: &str = "33";

/// The discovery document at `path`, or None when `path` is not one.
pub(crate) fn document(path: &str, addr: SocketAddr) -> Option<Value> {
    let path = path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match segments.as_slice() {
        ["openapi", "v3", ..] => super::openapi::document(path),
        ["version"] => Some(json!({
            "major": MAJOR,
            "minor": MINOR,
            "gitVersion": format!("v{MAJOR}.{MINOR}.0"),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "",
            "compiler": "rust",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
        })),
        ["api", "v1"] => Some(resource_list("", "v1")),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups().into_iter().map(group).collect::<Vec<_>>(),
        })),
        ["apis", g] if groups().contains(g) => {
            let mut doc = group(g);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            Some(doc)
        }
        ["apis", g, v] if RESOURCES.iter().any(|r| r.group == *g && r.version == *v) => {
            Some(resource_list(g, v))
        }
        _ => None,
    }
}

/// An APIGroup: every served version, preferred first, as kube-apiserver lists them.
fn group(name: &str) -> Value {
    let versions: Vec<Value> = versions(name)
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": name, "versions": versions, "preferredVersion": preferred})
}

fn resource_list(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r: &Resource| {
            let mut doc = json!({
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": true,
                "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            });
            if !r.short_names.is_empty() {
                doc["shortNames"] = json!(r.short_names);
            }
            doc
        })
        .collect();
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_list_the_served_kinds() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let core = document("/api/v1", addr).unwrap();
        let names: Vec<_> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].clone())
            .collect();
        assert_eq!(
            names,
            vec![json!("endpoints"), json!("configmaps"), json!("events")]
        );
        let apis = document("/apis/", addr).unwrap();
        assert_eq!(apis["groups"][0]["name"], "coordination.k8s.io");
        assert_eq!(
            document("/apis/coordination.k8s.io/v1", addr).unwrap()["resources"][0]["kind"],
            "Lease"
        );
        assert_eq!(
            document("/apis/events.k8s.io", addr).unwrap()["kind"],
            "APIGroup"
        );
        assert!(document("/apis/apps/v1", addr).is_none());
    }

    #[test]
    fn coordination_serves_v1_preferred_and_v1beta1() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let group = document("/apis/coordination.k8s.io", addr).unwrap();
        assert_eq!(
            group["versions"],
            json!([
                {"groupVersion": "coordination.k8s.io/v1", "version": "v1"},
                {"groupVersion": "coordination.k8s.io/v1beta1", "version": "v1beta1"},
            ])
        );
        assert_eq!(group["preferredVersion"]["version"], "v1");
        let apis = document("/apis", addr).unwrap();
        assert_eq!(apis["groups"][0], {
            let mut g = group.clone();
            g.as_object_mut().unwrap().remove("kind");
            g.as_object_mut().unwrap().remove("apiVersion");
            g
        });
        let beta = document("/apis/coordination.k8s.io/v1beta1", addr).unwrap();
        assert_eq!(beta["groupVersion"], "coordination.k8s.io/v1beta1");
        assert_eq!(
            beta["resources"],
            json!([{
                "name": "leasecandidates", "singularName": "leasecandidate",
                "namespaced": true, "kind": "LeaseCandidate",
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }])
        );
        let version = document("/version", addr).unwrap();
        assert_eq!(
            (version["major"].as_str(), version["minor"].as_str()),
            (Some("1"), Some("33"))
        );
        assert_eq!(version["gitVersion"], "v1.33.0");
    }
}
