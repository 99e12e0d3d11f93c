//! The kinds the server serves, and what differs between them.
//!
//! One generic handler serves every kind; this table holds the few facts that differ:
//! where the kind lives in the URL space, where kube-apiserver keeps it in etcd, and
//! how its strategy behaves on a PUT to a missing object.

use serde_json::{Map, Value};

/// A served kind.
#[derive(Debug)]
pub(crate) struct Resource {
    /// API group, empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// The plural resource name used in URLs and RBAC.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub short_names: &'static [&'static str],
    /// The storage path under the prefix, as kube-apiserver names it in etcd.
    pub storage: &'static str,
    /// Whether a PUT to a missing object creates it (the kind's `AllowCreateOnUpdate`).
    pub create_on_update: bool,
    /// Field renames between this version and the stored form (events.k8s.io/v1
    /// Events are stored as core/v1 Events, as kube-apiserver does).
    pub renames: &'static [(&'static str, &'static str)],
}

/// events.k8s.io/v1 field name, core/v1 field name.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

pub(crate) const RESOURCES: &[Resource] = &[
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        short_names: &[],
        storage: "leases",
        create_on_update: true,
        renames: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        short_names: &["ep"],
        storage: "services/endpoints",
        create_on_update: true,
        renames: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        short_names: &["cm"],
        storage: "configmaps",
        create_on_update: false,
        renames: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        storage: "events",
        create_on_update: true,
        renames: &[],
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        storage: "events",
        create_on_update: true,
        renames: EVENT_RENAMES,
    },
    // Coordinated leader election's candidates (KEP-4355), served in v1beta1 from
    // Kubernetes 1.33. Listed last: a group's first version (Lease's v1) is its
    // preferred one, and the fuzz targets pick kinds by their index here.
    Resource {
        group: "coordination.k8s.io",
        version: "v1beta1",
        plural: "leasecandidates",
        singular: "leasecandidate",
        kind: "LeaseCandidate",
        short_names: &[],
        storage: "leasecandidates",
        // kube-apiserver's leasecandidate strategy does not allow create on update.
        create_on_update: false,
        renames: &[],
    },
];

/// The API groups other than core, in the order of the table.
pub(crate) fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

/// The versions served of `group`, preferred first: in the order of the table, where
/// each group lists its GA version before its beta, as kube-apiserver prefers them.
pub(crate) fn versions(group: &str) -> Vec<&'static str> {
    let mut versions: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        if !versions.contains(&r.version) {
            versions.push(r.version);
        }
    }
    versions
}

impl Resource {
    /// Finds the kind served at `group`/`version`/`plural`.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// `coordination.k8s.io/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `leases.coordination.k8s.io`, or `configmaps` for the core group, as
    /// kube-apiserver names the resource in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Lease.coordination.k8s.io`, or `ConfigMap`, as validation errors name the kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The storage key of one object, relative to the storage prefix.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        format!("{}/{namespace}/{name}", self.storage)
    }

    /// The storage prefix of one namespace, or of all namespaces.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{}/{ns}/", self.storage),
            None => format!("{}/", self.storage),
        }
    }

    /// Turns a request body into the stored form.
    pub fn stored(&self, mut obj: Value) -> Value {
        if let Some(map) = obj.as_object_mut() {
            rename(map, self.renames.iter().map(|(from, to)| (*from, *to)));
            map.remove("kind");
            map.remove("apiVersion");
        }
        obj
    }

    /// Turns a stored object into this version, with its `kind` and `apiVersion`.
    pub fn served(&self, mut obj: Value) -> Value {
        if let Some(map) = obj.as_object_mut() {
            rename(map, self.renames.iter().map(|(to, from)| (*from, *to)));
            map.insert("kind".into(), Value::from(self.kind));
            map.insert("apiVersion".into(), Value::from(self.api_version()));
        }
        obj
    }
}

fn rename<'a>(map: &mut Map<String, Value>, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
    let pairs: Vec<_> = pairs.collect();
    let moved: Vec<_> = pairs
        .iter()
        .filter_map(|(from, to)| map.remove(*from).map(|v| (*to, v)))
        .collect();
    for (to, value) in moved {
        map.insert(to.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn groups_list_their_versions_preferred_first() {
        assert_eq!(groups(), ["coordination.k8s.io", "events.k8s.io"]);
        assert_eq!(versions("coordination.k8s.io"), ["v1", "v1beta1"]);
        assert_eq!(versions("events.k8s.io"), ["v1"]);
        assert!(versions("apps").is_empty());
        let candidates =
            Resource::find("coordination.k8s.io", "v1beta1", "leasecandidates").expect("served");
        assert_eq!(candidates.api_version(), "coordination.k8s.io/v1beta1");
        assert_eq!(
            candidates.key("kube-system", "a"),
            "leasecandidates/kube-system/a"
        );
        assert!(Resource::find("coordination.k8s.io", "v1", "leasecandidates").is_none());
    }

    #[test]
    fn events_v1_round_trip_through_the_core_form() {
        let events = Resource::find("events.k8s.io", "v1", "events").expect("served");
        let stored = events.stored(json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "note": "became leader", "regarding": {"name": "l"}
        }));
        assert_eq!(stored["message"], "became leader");
        assert_eq!(stored["involvedObject"]["name"], "l");
        assert!(stored.get("note").is_none());
        let back = events.served(stored);
        assert_eq!(back["note"], "became leader");
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
    }
}
