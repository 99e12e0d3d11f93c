//! Server-side printing: the meta.k8s.io/v1 Table that `kubectl get` asks for, with
//! the columns kube-apiserver prints for each kind.

use serde_json::{json, Value};

use super::resources::Resource;

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Include {
    None,
    #[default]
    Metadata,
    Object,
}

impl Include {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// Renders `objects` (in served form) as a Table at resourceVersion `rv`.
pub(crate) fn render(resource: &Resource, objects: &[Value], rv: u64, with_columns: bool) -> Value {
    render_with(resource, objects, rv, with_columns, Include::default())
}

pub(crate) fn render_with(
    resource: &Resource,
    objects: &[Value],
    rv: u64,
    with_columns: bool,
    include: Include,
) -> Value {
    let columns: Vec<Value> = columns(resource)
        .iter()
        .map(|(name, ty, description)| {
            json!({
                "name": name,
                "type": ty,
                "format": if *name == "Name" { "name" } else { "" },
                "description": description,
                "priority": 0,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(resource, obj)});
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
                    });
                }
                Include::Object => row["object"] = obj.clone(),
            }
            row
        })
        .collect();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "rows": rows,
    });
    if with_columns {
        table["columnDefinitions"] = Value::from(columns);
    }
    table
}

fn columns(resource: &Resource) -> &'static [(&'static str, &'static str, &'static str)] {
    const NAME: (&str, &str, &str) = ("Name", "string", "Name must be unique within a namespace.");
    const AGE: (&str, &str, &str) = ("Age", "string", "CreationTimestamp is a timestamp representing the server time when this object was created.");
    match resource.kind {
        "Lease" => &[NAME, ("Holder", "string", "The holder of the lease."), AGE],
        // pkg/printers/internalversion/printers.go `leaseCandidateColumnDefinitions`;
        // the two version columns take their (empty) description from ObjectMeta there.
        "LeaseCandidate" => &[
            NAME,
            (
                "LeaseName",
                "string",
                "LeaseName is the name of the lease for which this candidate is contending. The limits on this field are the same as on Lease.name. Multiple lease candidates may reference the same Lease.name. This field is immutable.",
            ),
            ("BinaryVersion", "string", ""),
            ("EmulationVersion", "string", ""),
            AGE,
        ],
        "ConfigMap" => &[NAME, ("Data", "string", "The number of keys."), AGE],
        "Endpoints" => &[
            NAME,
            ("Endpoints", "string", "The addresses and ports."),
            AGE,
        ],
        "Event" => &[
            ("Last Seen", "string", "The time the event was last seen."),
            ("Type", "string", "The type of the event."),
            ("Reason", "string", "Why the event happened."),
            ("Object", "string", "The object the event is about."),
            ("Message", "string", "What happened."),
        ],
        _ => &[NAME, AGE],
    }
}

fn text(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn cells(resource: &Resource, obj: &Value) -> Vec<Value> {
    let name = Value::from(text(obj, "/metadata/name"));
    let created = Value::from(age(&text(obj, "/metadata/creationTimestamp")));
    match resource.kind {
        "Lease" => vec![
            name,
            Value::from(text(obj, "/spec/holderIdentity")),
            created,
        ],
        "LeaseCandidate" => vec![
            name,
            Value::from(text(obj, "/spec/leaseName")),
            Value::from(text(obj, "/spec/binaryVersion")),
            Value::from(text(obj, "/spec/emulationVersion")),
            created,
        ],
        "ConfigMap" => {
            let count = ["data", "binaryData"]
                .iter()
                .filter_map(|f| obj.get(f).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name, Value::from(count), created]
        }
        "Endpoints" => vec![name, Value::from(endpoints(obj)), created],
        "Event" => {
            // The served form names the fields by version: core/v1 or events.k8s.io/v1.
            let (regarding, message, last) = if resource.group.is_empty() {
                ("/involvedObject", "/message", "/lastTimestamp")
            } else {
                ("/regarding", "/note", "/deprecatedLastTimestamp")
            };
            let mut seen = text(obj, last);
            if seen.is_empty() {
                seen = text(obj, "/eventTime");
            }
            let object = format!(
                "{}/{}",
                text(obj, &format!("{regarding}/kind")).to_lowercase(),
                text(obj, &format!("{regarding}/name"))
            );
            vec![
                Value::from(age(&seen)),
                Value::from(text(obj, "/type")),
                Value::from(text(obj, "/reason")),
                Value::from(object),
                Value::from(text(obj, message)),
            ]
        }
        _ => vec![name, created],
    }
}

fn endpoints(obj: &Value) -> String {
    let mut out = Vec::new();
    for subset in obj
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<String> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("port").map(Value::to_string))
            .collect();
        for address in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = text(address, "/ip");
            if ports.is_empty() {
                out.push(ip);
            } else {
                out.extend(ports.iter().map(|p| format!("{ip}:{p}")));
            }
        }
    }
    if out.is_empty() {
        "<none>".into()
    } else {
        out.join(",")
    }
}

/// The age since `timestamp`, as kubectl prints it (`45s`, `3m12s`, `5h`, `2d`).
fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = jiff::Timestamp::now().as_second() - then.as_second();
    human_duration(secs)
}

fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    let with = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    match secs {
        s if s < 120 => format!("{s}s"),
        s if m < 10 => with(m, "m", s % 60, "s"),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => with(h, "h", m % 60, "m"),
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => with(d, "d", h % 24, "h"),
        _ if d < 365 * 2 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_rows_show_holder() {
        let leases = Resource::find("coordination.k8s.io", "v1", "leases").expect("served");
        let t = render(
            leases,
            &[
                json!({"metadata": {"name": "a", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"holderIdentity": "h"}}),
            ],
            7,
            true,
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Holder");
        assert_eq!(t["rows"][0]["cells"][0], "a");
        assert_eq!(t["rows"][0]["cells"][1], "h");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn lease_candidate_rows_show_the_lease_and_versions() {
        let candidates =
            Resource::find("coordination.k8s.io", "v1beta1", "leasecandidates").expect("served");
        let t = render(
            candidates,
            &[
                json!({"metadata": {"name": "node-a", "creationTimestamp": "2020-01-01T00:00:00Z"},
                     "spec": {"leaseName": "kube-scheduler", "binaryVersion": "1.33.0",
                              "emulationVersion": "1.32.0"}}),
            ],
            7,
            true,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "LeaseName",
                "BinaryVersion",
                "EmulationVersion",
                "Age"
            ]
        );
        assert_eq!(
            t["rows"][0]["cells"].as_array().unwrap()[..4],
            [
                json!("node-a"),
                json!("kube-scheduler"),
                json!("1.33.0"),
                json!("1.32.0")
            ]
        );
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(5 * 3600), "5h");
        assert_eq!(human_duration(3 * 86400), "3d");
    }
}
