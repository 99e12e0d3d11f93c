//! Server-side apply and `metadata.managedFields`: who owns which field, as
//! kube-apiserver's field manager (structured-merge-diff) keeps it.
//!
//! Every write records its manager: an apply patch owns exactly the fields of its
//! configuration (`operation: Apply`); any other write owns the fields it added or
//! changed (`operation: Update`, one entry per manager and API version). A field
//! changed by one manager leaves the sets of all others. An apply that would change
//! a field another manager owns is a conflict unless forced; a field a manager applied
//! before and no longer applies is removed when nobody else owns it.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::resources::Resource;
use super::schema::{self, Shape};
use super::status::ApiError;

/// Fields the field manager never tracks (its `stripSet`).
const UNTRACKED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// A set of field paths: `fieldsV1` in memory.
///
/// Keys are path elements as fieldsV1 spells them: `f:<field>`, `k:<key as JSON>`
/// for an item of a keyed list, `v:<value as JSON>` for an item of a set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSet {
    /// The node itself is in the set (a leaf, or `.` beside children).
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn child(&mut self, key: String) -> &mut FieldSet {
        self.children.entry(key).or_default()
    }

    /// Drops children that hold nothing.
    fn prune(mut self) -> Self {
        self.children = self
            .children
            .into_iter()
            .map(|(k, v)| (k, v.prune()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        self
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (key, theirs) in &other.children {
            let merged = match out.children.get(key) {
                Some(ours) => ours.union(theirs),
                None => theirs.clone(),
            };
            out.children.insert(key.clone(), merged);
        }
        out
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (key, ours) in &self.children {
            let left = match other.children.get(key) {
                Some(theirs) => ours.difference(theirs),
                None => ours.clone(),
            };
            out.children.insert(key.clone(), left);
        }
        out.prune()
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (key, ours) in &self.children {
            if let Some(theirs) = other.children.get(key) {
                out.children.insert(key.clone(), ours.intersection(theirs));
            }
        }
        out.prune()
    }

    /// Every member, as a path of elements, in order.
    fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (key, child) in &self.children {
            prefix.push(key.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The `fieldsV1` JSON.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), json!({}));
        }
        for (key, child) in &self.children {
            map.insert(key.clone(), child.to_json());
        }
        Value::Object(map)
    }

    /// Reads `fieldsV1`; the error says what is wrong with it.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let map = value
            .as_object()
            .ok_or_else(|| format!("fieldsV1 must be an object, not {value}"))?;
        let mut set = FieldSet {
            member: map.is_empty(),
            children: BTreeMap::new(),
        };
        for (key, child) in map {
            if key == "." {
                set.member = true;
                continue;
            }
            let ok = match key.split_once(':') {
                Some(("f", _)) => true,
                Some(("k" | "v", json)) => serde_json::from_str::<Value>(json).is_ok(),
                Some(("i", index)) => index.parse::<usize>().is_ok(),
                _ => false,
            };
            if !ok {
                return Err(format!("invalid path element {key:?} in fieldsV1"));
            }
            set.children
                .insert(key.clone(), FieldSet::from_json(child)?);
        }
        Ok(set)
    }

    /// Renames top-level fields (`f:note` to `f:message`, ...).
    fn renamed<'a>(&self, pairs: impl Iterator<Item = (&'a str, &'a str)>) -> FieldSet {
        let mut out = self.clone();
        for (from, to) in pairs {
            if let Some(child) = out.children.remove(&format!("f:{from}")) {
                out.children.insert(format!("f:{to}"), child);
            }
        }
        out
    }
}

/// A path as kube-apiserver prints it: `.spec.holderIdentity`,
/// `.metadata.ownerReferences[uid="..."]`, `.metadata.finalizers[="x"]`.
fn path_string(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        match element.split_once(':') {
            Some(("f", name)) => {
                out.push('.');
                out.push_str(name);
            }
            Some(("k", key)) => {
                let pairs: Vec<String> = serde_json::from_str::<Map<String, Value>>(key)
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                out.push_str(&format!("[{}]", pairs.join(",")));
            }
            Some(("v", value)) => out.push_str(&format!("[={value}]")),
            Some(("i", index)) => out.push_str(&format!("[{index}]")),
            _ => out.push_str(element),
        }
    }
    out
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    fields: FieldSet,
    subresource: Option<String>,
}

impl Entry {
    /// Whether `self` is the entry of this manager and operation: appliers have one
    /// entry, updaters one per API version, as `BuildManagerIdentifier` keys them.
    fn is(&self, manager: &str, operation: &str, api_version: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.is_none()
            && (operation == "Apply" || self.api_version == api_version)
    }

    /// The manager as kube-apiserver's conflict messages print it.
    fn printed(&self) -> String {
        if self.operation == "Update" {
            format!("{:?} using {}", self.manager, self.api_version)
        } else {
            format!("{:?}", self.manager)
        }
    }

    /// The JSON identifier conflict messages sort by.
    fn identifier(&self) -> String {
        let mut map = Map::new();
        map.insert("manager".into(), Value::from(self.manager.clone()));
        map.insert("operation".into(), Value::from(self.operation.clone()));
        if self.operation != "Apply" {
            map.insert("apiVersion".into(), Value::from(self.api_version.clone()));
        }
        Value::Object(map).to_string()
    }

    fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("manager".into(), Value::from(self.manager.clone()));
        map.insert("operation".into(), Value::from(self.operation.clone()));
        map.insert("apiVersion".into(), Value::from(self.api_version.clone()));
        if let Some(time) = &self.time {
            map.insert("time".into(), Value::from(time.clone()));
        }
        map.insert("fieldsType".into(), Value::from("FieldsV1"));
        map.insert("fieldsV1".into(), self.fields.to_json());
        if let Some(subresource) = &self.subresource {
            map.insert("subresource".into(), Value::from(subresource.clone()));
        }
        Value::Object(map)
    }

    fn from_json(value: &Value) -> Result<Self, String> {
        let text = |field: &str| -> Result<Option<String>, String> {
            match value.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("{field} must be a string, not {other}")),
            }
        };
        if text("fieldsType")?.as_deref() != Some("FieldsV1") {
            return Err("only known fieldsType is FieldsV1".into());
        }
        let time = text("time")?;
        if let Some(time) = &time {
            time.parse::<jiff::Timestamp>()
                .map_err(|e| format!("invalid time {time:?}: {e}"))?;
        }
        Ok(Entry {
            manager: text("manager")?.unwrap_or_default(),
            operation: text("operation")?.unwrap_or_default(),
            api_version: text("apiVersion")?.unwrap_or_default(),
            time,
            fields: match value.get("fieldsV1") {
                None | Some(Value::Null) => FieldSet::default(),
                Some(fields) => FieldSet::from_json(fields)?,
            },
            subresource: text("subresource")?.filter(|s| !s.is_empty()),
        })
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The entries of an object; None when they are not valid managed fields.
fn decode(object: &Value) -> Option<Vec<Entry>> {
    match object.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(|e| Entry::from_json(e).ok()).collect(),
        Some(_) => None,
    }
}

/// Writes `entries` into `object`, sorted as kube-apiserver sorts them.
fn encode(object: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|p, q| {
        let seconds = |e: &Entry| {
            e.time
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map_or(0, |t| t.as_second())
        };
        (
            p.operation.as_str(),
            seconds(p),
            p.manager.as_str(),
            &p.api_version,
        )
            .cmp(&(
                q.operation.as_str(),
                seconds(q),
                q.manager.as_str(),
                &q.api_version,
            ))
    });
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            entries.iter().map(Entry::to_json).collect(),
        );
    }
}

/// The object without the fields the manager does not track.
fn tracked(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in UNTRACKED_METADATA {
                meta.remove(*field);
            }
        }
    }
    object
}

fn item_key(item: &Value, key: &str) -> Option<String> {
    let value = item.get(key)?;
    Some(format!("k:{}", json!({ key: value })))
}

fn not_null(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

/// The fields of an applied configuration, as structured-merge-diff's `ToFieldSet`:
/// leaves and list items, not the structs and maps that hold them.
fn applied_set(path: &mut Vec<String>, value: &Value, set: &mut FieldSet) {
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    match (schema::shape(&names, value), value) {
        (Shape::Struct | Shape::Map, Value::Object(map)) => {
            for (key, child) in map {
                if child.is_null() {
                    continue;
                }
                path.push(key.clone());
                applied_set(path, child, set.child(format!("f:{key}")));
                path.pop();
            }
        }
        (Shape::Set, Value::Array(items)) => {
            for item in items {
                set.child(format!("v:{item}")).member = true;
            }
        }
        (Shape::Keyed(key), Value::Array(items))
            if items.iter().all(|i| item_key(i, key).is_some()) =>
        {
            for item in items {
                if let Some(k) = item_key(item, key) {
                    set.child(k).member = true;
                }
            }
        }
        _ => set.member = true,
    }
}

/// What changed from `old` to `new`, as structured-merge-diff's `Compare`: the fields
/// added or modified, and the fields removed. A map or list that appears is itself a
/// member (the `.` of fieldsV1); a struct is not.
fn compare(
    path: &mut Vec<String>,
    old: Option<&Value>,
    new: Option<&Value>,
    changed: &mut FieldSet,
    removed: &mut FieldSet,
) {
    let (old, new) = (not_null(old), not_null(new));
    let Some(value) = new.or(old) else { return };
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    let shape = schema::shape(&names, value);
    let same_type = match (old, new) {
        (Some(o), Some(n)) => o.is_object() == n.is_object() && o.is_array() == n.is_array(),
        _ => true,
    };
    let whole = |changed: &mut FieldSet, removed: &mut FieldSet| match (old, new) {
        (_, Some(n)) if old != Some(n) => changed.member = true,
        (Some(_), None) => removed.member = true,
        _ => {}
    };
    if !same_type {
        whole(changed, removed);
        return;
    }
    let appeared = |changed: &mut FieldSet, removed: &mut FieldSet| match (old, new) {
        (None, Some(_)) => changed.member = true,
        (Some(_), None) => removed.member = true,
        _ => {}
    };
    let empty = Map::new();
    match shape {
        Shape::Struct | Shape::Map if value.is_object() => {
            if shape == Shape::Map {
                appeared(changed, removed);
            }
            let old = old.and_then(Value::as_object).unwrap_or(&empty);
            let new = new.and_then(Value::as_object).unwrap_or(&empty);
            let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for key in keys {
                let element = format!("f:{key}");
                path.push(key.clone());
                compare(
                    path,
                    old.get(key),
                    new.get(key),
                    changed.child(element.clone()),
                    removed.child(element),
                );
                path.pop();
            }
        }
        Shape::Set if value.is_array() => {
            appeared(changed, removed);
            let none = Vec::new();
            let old = old.and_then(Value::as_array).unwrap_or(&none);
            let new = new.and_then(Value::as_array).unwrap_or(&none);
            for item in new.iter().filter(|i| !old.contains(i)) {
                changed.child(format!("v:{item}")).member = true;
            }
            for item in old.iter().filter(|i| !new.contains(i)) {
                removed.child(format!("v:{item}")).member = true;
            }
        }
        Shape::Keyed(key) if value.is_array() => {
            let none = Vec::new();
            let old = old.and_then(Value::as_array).unwrap_or(&none);
            let new = new.and_then(Value::as_array).unwrap_or(&none);
            let keyed = |items: &Vec<Value>| -> Option<BTreeMap<String, Value>> {
                items
                    .iter()
                    .map(|i| item_key(i, key).map(|k| (k, i.clone())))
                    .collect()
            };
            let (Some(old_items), Some(new_items)) = (keyed(old), keyed(new)) else {
                whole(changed, removed);
                return;
            };
            appeared(changed, removed);
            for (k, item) in &new_items {
                if old_items.get(k) != Some(item) {
                    changed.child(k.clone()).member = true;
                }
            }
            for k in old_items.keys().filter(|k| !new_items.contains_key(*k)) {
                removed.child(k.clone()).member = true;
            }
        }
        _ => whole(changed, removed),
    }
}

/// Changed and removed fields between two objects (either may be absent).
fn diff(old: Option<&Value>, new: Option<&Value>) -> (FieldSet, FieldSet) {
    let (mut changed, mut removed) = (FieldSet::default(), FieldSet::default());
    let old = old.map(tracked);
    let new = new.map(tracked);
    compare(
        &mut Vec::new(),
        Some(old.as_ref().unwrap_or(&json!({}))),
        Some(new.as_ref().unwrap_or(&json!({}))),
        &mut changed,
        &mut removed,
    );
    (changed.prune(), removed.prune())
}

/// Merges an applied configuration into the live object: structs and maps field by
/// field, sets as a union, keyed lists item by item, everything else replaced.
fn merge(path: &mut Vec<String>, live: &mut Value, config: &Value) {
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    match (schema::shape(&names, config), &mut *live, config) {
        (Shape::Struct | Shape::Map, Value::Object(live), Value::Object(config)) => {
            for (key, value) in config {
                if value.is_null() {
                    live.remove(key);
                    continue;
                }
                path.push(key.clone());
                match live.get_mut(key) {
                    Some(existing) => merge(path, existing, value),
                    None => {
                        live.insert(key.clone(), value.clone());
                    }
                }
                path.pop();
            }
        }
        (Shape::Set, Value::Array(live), Value::Array(config)) => {
            for item in config {
                if !live.contains(item) {
                    live.push(item.clone());
                }
            }
        }
        (Shape::Keyed(key), Value::Array(live), Value::Array(config)) => {
            for item in config {
                let k = item_key(item, key);
                match live
                    .iter_mut()
                    .find(|l| k.is_some() && item_key(l, key) == k)
                {
                    Some(existing) => *existing = item.clone(),
                    None => live.push(item.clone()),
                }
            }
        }
        _ => *live = config.clone(),
    }
}

/// Removes the members of `set` from `value`; a map left empty goes too.
fn remove(path: &mut Vec<String>, value: &mut Value, set: &FieldSet) {
    match value {
        Value::Object(map) => {
            for (element, child) in &set.children {
                let Some(("f", name)) = element.split_once(':') else {
                    continue;
                };
                if child.member {
                    map.remove(name);
                    continue;
                }
                let Some(inner) = map.get_mut(name) else {
                    continue;
                };
                path.push(name.to_string());
                remove(path, inner, child);
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                let emptied = schema::shape(&names, inner) == Shape::Map
                    && inner.as_object().is_some_and(Map::is_empty);
                path.pop();
                if emptied {
                    map.remove(name);
                }
            }
        }
        Value::Array(items) => {
            let names: Vec<&str> = path.iter().map(String::as_str).collect();
            let shape = schema::shape(&names, &Value::Array(Vec::new()));
            items.retain(|item| {
                let element = match shape {
                    Shape::Keyed(key) => item_key(item, key),
                    Shape::Set => Some(format!("v:{item}")),
                    _ => None,
                };
                !element
                    .and_then(|e| set.children.get(&e))
                    .is_some_and(|c| c.member)
            });
        }
        _ => {}
    }
}

/// Field sets are kept in the API version of their entry; events.k8s.io/v1 and core
/// v1 Events name some fields differently.
fn convert(set: &FieldSet, from: &str, to: &str, resource: &Resource) -> FieldSet {
    if from == to {
        return set.clone();
    }
    let version = |api_version: &str| {
        super::resources::RESOURCES
            .iter()
            .find(|r| r.storage == resource.storage && r.api_version() == api_version)
    };
    let stored = match version(from) {
        Some(r) => set.renamed(r.renames.iter().copied()),
        None => set.clone(),
    };
    match version(to) {
        Some(r) => stored.renamed(r.renames.iter().map(|(served, core)| (*core, *served))),
        None => stored,
    }
}

/// The managed fields a write starts from: those in the request when they are valid
/// and not empty, none when the request resets them (`[]` or `[{}]`), else the live
/// object's (so a client that does not know them cannot drop them).
fn live_or_new(live: Option<&Value>, new: &Value) -> Vec<Entry> {
    let from_live = || live.and_then(decode).unwrap_or_default();
    match new.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => from_live(),
        Some(Value::Array(items))
            if items.is_empty()
                || (items.len() == 1 && items[0].as_object().is_some_and(Map::is_empty)) =>
        {
            Vec::new()
        }
        Some(_) => match decode(new) {
            Some(entries) if !entries.is_empty() => entries,
            _ => from_live(),
        },
    }
}

/// Records a write other than an apply (create, update, merge, strategic or JSON
/// patch) by `manager` in `new.metadata.managedFields`. Both objects are in stored
/// form; field sets are kept in `resource`'s version.
pub(crate) fn record_update(
    resource: &Resource,
    live: Option<&Value>,
    new: &mut Value,
    manager: &str,
) {
    let version = resource.api_version();
    let mut entries = live_or_new(live, new);
    let live_served = live.map(|l| resource.served(l.clone()));
    let (changed, removed) = diff(live_served.as_ref(), Some(&resource.served(new.clone())));
    let gone = changed.union(&removed);
    for entry in &mut entries {
        let theirs = convert(&gone, &version, &entry.api_version, resource);
        entry.fields = entry.fields.difference(&theirs);
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.is(manager, "Update", &version))
        {
            Some(entry) => {
                entry.fields = entry.fields.union(&changed);
                entry.time = Some(now());
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: version,
                time: Some(now()),
                fields: changed,
                subresource: None,
            }),
        }
    }
    encode(new, entries);
}

/// An apply of `config` by `manager` to `live` (None when absent), both served in
/// `resource`'s version: the merged object with its managed fields, or the 409 of a
/// conflict.
pub(crate) fn apply(
    resource: &Resource,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApiError> {
    let version = resource.api_version();
    let mut entries = live.and_then(decode).unwrap_or_default();
    let mut merged = live.cloned().unwrap_or_else(|| json!({}));
    if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    merge(&mut Vec::new(), &mut merged, config);

    let mut applied = FieldSet::default();
    applied_set(&mut Vec::new(), &tracked(config), &mut applied);
    let applied = applied.prune();
    let previous = entries
        .iter()
        .position(|e| e.is(manager, "Apply", &version));
    let last = previous.map(|i| entries.remove(i));
    let last_set = last.as_ref().map_or_else(FieldSet::default, |e| {
        convert(&e.fields, &e.api_version, &version, resource)
    });

    // A field this manager applied last time and not now goes, unless someone owns it.
    let owned = entries.iter().fold(applied.clone(), |all, e| {
        all.union(&convert(&e.fields, &e.api_version, &version, resource))
    });
    remove(&mut Vec::new(), &mut merged, &last_set.difference(&owned));

    let (changed, removed) = diff(live, Some(&merged));
    let mut conflicts: Vec<(String, String, String)> = Vec::new();
    for entry in &entries {
        let theirs = convert(&changed, &version, &entry.api_version, resource);
        for path in entry.fields.intersection(&theirs).members() {
            conflicts.push((entry.identifier(), entry.printed(), path_string(&path)));
        }
    }
    if !force && !conflicts.is_empty() {
        return Err(conflict(conflicts));
    }
    let gone = changed.union(&removed);
    for entry in &mut entries {
        let theirs = convert(&gone, &version, &entry.api_version, resource);
        entry.fields = entry.fields.difference(&theirs);
    }
    let object_changed = live.map(tracked) != Some(tracked(&merged));
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: version,
        time: match &last {
            Some(last) if !object_changed => last.time.clone(),
            _ => Some(now()),
        },
        fields: applied,
        subresource: None,
    });
    encode(&mut merged, entries);
    Ok(merged)
}

/// kube-apiserver's 409 for apply conflicts (`NewConflictError`).
fn conflict(mut conflicts: Vec<(String, String, String)>) -> ApiError {
    conflicts.sort();
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(_, manager, field)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {manager}"), "field": field})
        })
        .collect();
    let message = if let [(_, manager, field)] = conflicts.as_slice() {
        format!("Apply failed with 1 conflict: conflict with {manager}: {field}")
    } else {
        let mut lines = Vec::new();
        let mut current = None;
        for (id, manager, field) in &conflicts {
            if current != Some(id) {
                lines.push(format!("conflicts with {manager}:"));
                current = Some(id);
            }
            lines.push(format!("- {field}"));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError::new(409, "Conflict", message).with_details(json!({ "causes": causes }))
}

/// The manager of a write without `fieldManager`: the User-Agent up to its first
/// `/`, printable characters only, at most 128 bytes (`prefixFromUserAgent`).
pub(crate) fn manager_from_user_agent(user_agent: &str) -> String {
    let mut out = String::new();
    for c in user_agent.split('/').next().unwrap_or("").chars() {
        if c.is_control() {
            continue;
        }
        if out.len() + c.len_utf8() > 128 {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases() -> &'static Resource {
        Resource::find("coordination.k8s.io", "v1", "leases").expect("served")
    }

    fn managed(object: &Value) -> Vec<(String, String, Value)> {
        object["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap().to_string(),
                    e["operation"].as_str().unwrap().to_string(),
                    e["fieldsV1"].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn fields_v1_round_trips() {
        let v = json!({"f:metadata": {"f:labels": {".": {}, "f:a": {}}}, "f:spec": {"f:holderIdentity": {}},
                       "f:metadata2": {"k:{\"uid\":\"1\"}": {}, "v:\"x\"": {}}});
        assert_eq!(FieldSet::from_json(&v).unwrap().to_json(), v);
        assert!(FieldSet::from_json(&json!({"bogus": {}})).is_err());
        assert_eq!(
            path_string(&["f:metadata".into(), "k:{\"uid\":\"1\"}".into()]),
            ".metadata[uid=\"1\"]"
        );
    }

    #[test]
    fn updates_own_what_they_changed_and_maps_get_a_dot() {
        let mut new = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"holderIdentity": "h"}});
        record_update(leases(), None, &mut new, "creator");
        assert_eq!(
            managed(&new),
            vec![(
                "creator".into(),
                "Update".into(),
                json!({"f:metadata": {"f:labels": {".": {}, "f:x": {}}}, "f:spec": {"f:holderIdentity": {}}})
            )]
        );
        let live = new.clone();
        let mut next = live.clone();
        next["spec"]["holderIdentity"] = json!("other");
        record_update(leases(), Some(&live), &mut next, "renewer");
        let entries = managed(&next);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0].2,
            json!({"f:metadata": {"f:labels": {".": {}, "f:x": {}}}})
        );
        assert_eq!(entries[1].2, json!({"f:spec": {"f:holderIdentity": {}}}));
    }

    #[test]
    fn apply_conflicts_shares_forces_and_prunes() {
        let cfg = |holder: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "a"}, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10}});
        let first = apply(leases(), None, &cfg("a"), "one", false).unwrap();
        // The same values from another manager: shared, no conflict.
        let shared = apply(leases(), Some(&first), &cfg("a"), "two", false).unwrap();
        assert_eq!(managed(&shared).len(), 2);
        let err = apply(leases(), Some(&shared), &cfg("b"), "three", false).unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 2 conflicts: conflicts with \"one\":\n- .spec.holderIdentity\nconflicts with \"two\":\n- .spec.holderIdentity"
        );
        let forced = apply(leases(), Some(&shared), &cfg("b"), "three", true).unwrap();
        assert_eq!(forced["spec"]["holderIdentity"], "b");
        let entries = managed(&forced);
        assert!(entries
            .iter()
            .filter(|e| e.0 != "three")
            .all(|e| e.2 == json!({"f:spec": {"f:leaseDurationSeconds": {}}})));
        // "three" drops leaseDurationSeconds: still owned by one and two, so it stays.
        let dropped = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "a"}, "spec": {"holderIdentity": "b"}});
        let kept = apply(leases(), Some(&forced), &dropped, "three", false).unwrap();
        assert_eq!(kept["spec"]["leaseDurationSeconds"], 10);
        // Alone, a manager that drops a field removes it.
        let alone = apply(leases(), None, &cfg("a"), "solo", false).unwrap();
        let pruned = apply(leases(), Some(&alone), &dropped, "solo", false).unwrap();
        assert_eq!(pruned["spec"], json!({"holderIdentity": "b"}));
    }

    #[test]
    fn requests_cannot_overwrite_managed_fields_with_junk_but_can_reset_them() {
        let mut live = json!({"metadata": {"name": "a"}, "spec": {"holderIdentity": "h"}});
        record_update(leases(), None, &mut live, "creator");
        let mut junk = live.clone();
        junk["metadata"]["managedFields"] = json!([{"manager": "x", "fieldsType": "FieldsV2"}]);
        record_update(leases(), Some(&live), &mut junk, "writer");
        assert_eq!(managed(&junk), managed(&live));
        let mut reset = live.clone();
        reset["metadata"]["managedFields"] = json!([]);
        record_update(leases(), Some(&live), &mut reset, "writer");
        assert!(reset["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn user_agent_prefix() {
        assert_eq!(
            manager_from_user_agent("kubectl/v1.32.0 (linux/amd64)"),
            "kubectl"
        );
        assert_eq!(manager_from_user_agent(""), "");
    }
}
