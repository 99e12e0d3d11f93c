//! PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch and JSON patch
//! (RFC 6902). Apply patches are [`super::apply`]'s.
//!
//! A strategic merge patch is a merge patch that knows the Go types' lists: those
//! with a merge key merge item by item, lists of scalars with the merge strategy
//! merge as sets, other lists are replaced (see [`super::schema`]). It takes
//! apimachinery's directives: `$patch` (`replace`, `delete`, `merge`) on a map or in
//! a list, `$retainKeys`, `$deleteFromPrimitiveList/<field>` and
//! `$setElementOrder/<field>`.
//!
//! JSON patches are capped as kube-apiserver caps them: 10,000 operations, and 3 MiB
//! of values copied by `copy` operations; and they cannot nest the object deeper than
//! a JSON body can be (128 levels).

use serde_json::{Map, Value};

use super::schema::{self, Shape};
use super::status::ApiError;

/// The patch formats kube-apiserver accepts, by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    StrategicMerge,
    Json,
    Apply,
}

impl PatchKind {
    /// The format of `content_type`, or None when the server does not take it.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Why a patch could not be applied, in the classes kube-apiserver answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatchError {
    /// The patch does not apply to this object (422).
    Invalid(String),
    /// A strategic merge directive is malformed (400).
    BadRequest(String),
    /// An unknown `$patch` value, which kube-apiserver answers with a 500.
    Unknown(String),
    /// A JSON patch of more operations than kube-apiserver takes (413).
    TooLarge(String),
}

impl PatchError {
    pub fn into_api_error(self) -> ApiError {
        match self {
            Self::Invalid(why) => ApiError::new(
                422,
                "Invalid",
                format!("the server rejected our request due to an error in our request: {why}"),
            ),
            Self::BadRequest(why) => ApiError::bad_request(why),
            Self::Unknown(why) => ApiError::new(500, "", why),
            Self::TooLarge(why) => ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("Request entity too large: {why}"),
            ),
        }
    }
}

/// Applies `patch` to `target` (an object in the served version).
pub(crate) fn apply(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    match kind {
        PatchKind::Merge => {
            merge(target, patch);
            Ok(())
        }
        PatchKind::StrategicMerge => {
            let Value::Object(patch) = patch else {
                return Err(PatchError::BadRequest(
                    "invalid JSON document: a strategic merge patch must be an object".into(),
                ));
            };
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Value::Object(map) = target else {
                return Ok(());
            };
            match strategic_map(&mut Vec::new(), map, patch)? {
                Some(merged) => *map = merged,
                None => map.clear(),
            }
            Ok(())
        }
        PatchKind::Json => {
            let count = patch.as_array().map_or(0, Vec::len);
            if count > MAX_OPERATIONS {
                return Err(PatchError::TooLarge(format!(
                    "The allowed maximum operations in a JSON patch is {MAX_OPERATIONS}, got {count}"
                )));
            }
            json_patch(target, patch).map_err(PatchError::Invalid)
        }
        PatchKind::Apply => Err(PatchError::Invalid(
            "an apply patch is not applied as a patch".into(),
        )),
    }
}

fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";
const SET_ORDER: &str = "$setElementOrder/";

/// Removes every `$` directive, for a part of a patch that replaces what it finds.
fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| i.get(PATCH).is_none())
                .map(without_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Merges `patch` into `original` (apimachinery's `mergeMap`); None when the patch
/// deletes the map.
fn strategic_map(
    path: &mut Vec<String>,
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get(PATCH) {
        None => {}
        Some(Value::String(p)) if p == "merge" => {}
        Some(Value::String(p)) if p == "replace" => {
            return Ok(Some(
                without_directives(&Value::Object(patch.clone()))
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ))
        }
        Some(Value::String(p)) if p == "delete" => return Ok(None),
        Some(other) => {
            return Err(PatchError::Unknown(format!(
                "unknown patch type: {} in map: {}",
                other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
                Value::Object(patch.clone())
            )))
        }
    }
    let mut out = original.clone();
    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let keys = retain
            .as_array()
            .filter(|keys| keys.iter().all(Value::is_string))
            .ok_or_else(|| PatchError::BadRequest("invalid patch format of retainKeys".into()))?;
        let listed = |k: &str| keys.iter().any(|key| key.as_str() == Some(k));
        for (key, value) in patch {
            if key.starts_with('$') || value.is_null() {
                continue;
            }
            if !listed(key) {
                return Err(PatchError::Invalid(format!(
                    "the patch has field {key:?} that is not in $retainKeys"
                )));
            }
        }
        out.retain(|k, _| listed(k));
    }
    let mut orders = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM) {
            let doomed = value.as_array().ok_or_else(|| {
                PatchError::BadRequest("invalid patch format of primitive list".into())
            })?;
            if let Some(Value::Array(items)) = out.get_mut(field) {
                items.retain(|i| !doomed.contains(i));
            }
        } else if let Some(field) = key.strip_prefix(SET_ORDER) {
            let order = value.as_array().ok_or_else(|| {
                PatchError::BadRequest("invalid patch format of setElementOrder list".into())
            })?;
            orders.push((field.to_string(), order.clone()));
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            out.remove(key);
            continue;
        }
        path.push(key.clone());
        let merged = strategic_value(path, out.get(key), value)?;
        path.pop();
        match merged {
            Some(v) => out.insert(key.clone(), v),
            None => out.remove(key),
        };
    }
    for (field, order) in orders {
        path.push(field.clone());
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        let shape = schema::shape(&names, &Value::Array(Vec::new()));
        path.pop();
        if let Some(Value::Array(items)) = out.get_mut(&field) {
            reorder(items, &order, shape);
        }
    }
    Ok(Some(out))
}

fn strategic_value(
    path: &mut Vec<String>,
    original: Option<&Value>,
    patch: &Value,
) -> Result<Option<Value>, PatchError> {
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    let shape = schema::shape(&names, patch);
    match (original, patch) {
        (orig, Value::Object(patch)) => {
            let empty = Map::new();
            let orig = orig.and_then(Value::as_object).unwrap_or(&empty);
            Ok(strategic_map(path, orig, patch)?.map(Value::Object))
        }
        (orig, Value::Array(patch)) => {
            let none = Vec::new();
            let orig = orig.and_then(Value::as_array).unwrap_or(&none);
            strategic_list(orig, patch, shape).map(|l| Some(Value::Array(l)))
        }
        (_, scalar) => Ok(Some(scalar.clone())),
    }
}

/// Merges a list: keyed lists item by item, sets as a union, others replaced.
fn strategic_list(
    original: &[Value],
    patch: &[Value],
    shape: Shape,
) -> Result<Vec<Value>, PatchError> {
    // `{"$patch": "replace"}` in a list: the rest of the patch list is the list.
    let replace = patch
        .iter()
        .any(|i| i.get(PATCH).and_then(Value::as_str) == Some("replace"));
    if replace || !matches!(shape, Shape::Keyed(_) | Shape::Set) {
        return Ok(patch
            .iter()
            .filter(|i| i.get(PATCH).is_none())
            .map(without_directives)
            .collect());
    }
    let mut out = original.to_vec();
    match shape {
        Shape::Set => {
            for item in patch {
                if item.is_object() || item.is_array() {
                    return Err(PatchError::BadRequest(
                        "invalid patch format of primitive list".into(),
                    ));
                }
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
        }
        Shape::Keyed(key) => {
            for item in patch {
                let Some(wanted) = item.get(key) else {
                    return Err(PatchError::BadRequest(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let at = out.iter().position(|o| o.get(key) == Some(wanted));
                match item.get(PATCH).and_then(Value::as_str) {
                    Some("delete") => {
                        out.retain(|o| o.get(key) != Some(wanted));
                        continue;
                    }
                    Some("merge") | None => {}
                    Some(other) => {
                        return Err(PatchError::Unknown(format!(
                            "unknown patch type: {other} in map: {item}"
                        )))
                    }
                }
                let patch_map = item.as_object().cloned().unwrap_or_default();
                let empty = Map::new();
                let orig = at
                    .and_then(|i| out[i].as_object())
                    .unwrap_or(&empty)
                    .clone();
                let merged = strategic_map(&mut Vec::new(), &orig, &patch_map)?;
                match (at, merged) {
                    (Some(i), Some(m)) => out[i] = Value::Object(m),
                    (Some(i), None) => {
                        out.remove(i);
                    }
                    (None, Some(m)) => out.push(Value::Object(m)),
                    (None, None) => {}
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

/// Orders `items` as `order` lists them (by merge key for keyed lists); items it
/// does not list keep their relative order after the listed ones.
fn reorder(items: &mut Vec<Value>, order: &[Value], shape: Shape) {
    let rank = |item: &Value| {
        order.iter().position(|o| match shape {
            Shape::Keyed(key) => o.get(key).is_some() && o.get(key) == item.get(key),
            _ => o == item,
        })
    };
    let mut ranked: Vec<(usize, usize, Value)> = items
        .drain(..)
        .enumerate()
        .map(|(i, item)| (rank(&item).unwrap_or(usize::MAX), i, item))
        .collect();
    ranked.sort_by_key(|(rank, i, _)| (*rank, *i));
    items.extend(ranked.into_iter().map(|(_, _, item)| item));
}

/// kube-apiserver's `maxJSONPatchOperations`.
const MAX_OPERATIONS: usize = 10_000;
/// kube-apiserver's default `--json-patch-max-copy-bytes` (its largest request body):
/// without a cap, each copy of an object into itself doubles it, and a patch of a
/// few dozen copies takes all memory.
const MAX_COPY_BYTES: usize = 3 * 1024 * 1024;

fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    // As evanphx/json-patch counts it: the JSON length of every value copied.
    let mut copied_bytes = 0;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).ok_or("missing op")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing path in {name} operation"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("missing value in {name} operation"))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("missing from in {name} operation"))
        };
        match name {
            "add" => add(target, path, value()?)?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, value()?)?;
            }
            "move" => {
                let moved = remove(target, from()?)?;
                add(target, path, moved)?;
            }
            "copy" => {
                let from = from()?;
                let source = target
                    .pointer(from)
                    .ok_or_else(|| format!("doc is missing from path: {from:?}"))?;
                copied_bytes += serde_json::to_vec(source).map_or(usize::MAX, |b| b.len());
                if copied_bytes > MAX_COPY_BYTES {
                    return Err(format!(
                        "Unable to complete the copy, the accumulated size increase of copy is {copied_bytes}, exceeding the limit {MAX_COPY_BYTES}"
                    ));
                }
                let copied = source.clone();
                add(target, path, copied)?;
            }
            "test" => {
                if target.pointer(path) != Some(&value()?) {
                    return Err(format!("test operation at {path:?} failed"));
                }
            }
            other => return Err(format!("unknown patch operation {other:?}")),
        }
    }
    Ok(())
}

/// The parent of `path` and the last token, unescaped.
fn split(path: &str) -> Result<(&str, String), String> {
    let at = path
        .rfind('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    let token = path[at + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..at], token))
}

/// How deep a patched object may nest: as deep as serde_json reads a body. Each JSON
/// patch operation can add that much below the last, and the code that diffs, stores
/// and serializes objects recurses once per level, on a task's stack.
const MAX_DEPTH: usize = 128;

/// The levels of objects and arrays in `value`, counted without recursion.
fn nesting(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0)];
    while let Some((value, above)) = pending.pop() {
        match value {
            Value::Object(map) => pending.extend(map.values().map(|v| (v, above + 1))),
            Value::Array(items) => pending.extend(items.iter().map(|v| (v, above + 1))),
            _ => continue,
        }
        deepest = deepest.max(above + 1);
    }
    deepest
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    // The value lands below one level per token of the path.
    let depth = path.matches('/').count() + nesting(&value);
    if depth > MAX_DEPTH {
        return Err(format!(
            "the patched object would nest {depth} levels deep, more than {MAX_DEPTH}"
        ));
    }
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, token) = split(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if token == "-" {
                items.len()
            } else {
                token
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| format!("invalid array index in {path:?}"))?
            };
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("doc is missing path: {path:?}")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, token) = split(path)?;
    let removed = match target.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token),
        Some(Value::Array(items)) => token
            .parse::<usize>()
            .ok()
            .filter(|i| *i < items.len())
            .map(|i| items.remove(i)),
        _ => None,
    };
    removed.ok_or_else(|| format!("doc is missing path: {path:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_removes() {
        let mut doc =
            json!({"metadata": {"annotations": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
        apply(
            PatchKind::Merge,
            &mut doc,
            &json!({"metadata": {"annotations": {"a": null, "c": "3"}}}),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}}, "data": {"k": "v"}})
        );
    }

    fn strategic(doc: &mut Value, patch: Value) -> Result<(), PatchError> {
        apply(PatchKind::StrategicMerge, doc, &patch)
    }

    #[test]
    fn strategic_lists_merge_by_key_or_as_sets_and_others_are_replaced() {
        let mut doc = json!({
            "metadata": {
                "finalizers": ["a", "b"],
                "ownerReferences": [{"uid": "1", "name": "x"}, {"uid": "2", "name": "y"}]
            },
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]
        });
        strategic(&mut doc, json!({
            "metadata": {
                "finalizers": ["c", "a"],
                "ownerReferences": [{"uid": "2", "name": "z"}, {"uid": "3", "name": "w"}, {"uid": "1", "$patch": "delete"}]
            },
            "subsets": [{"addresses": [{"ip": "10.0.0.2"}]}]
        }))
        .unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["a", "b", "c"]));
        assert_eq!(
            doc["metadata"]["ownerReferences"],
            json!([{"uid": "2", "name": "z"}, {"uid": "3", "name": "w"}])
        );
        assert_eq!(doc["subsets"], json!([{"addresses": [{"ip": "10.0.0.2"}]}]));
    }

    #[test]
    fn strategic_directives() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y", "z"]},
                             "data": {"k": "v", "l": "w"}, "spec": {"holderIdentity": "h", "leaseTransitions": 1}});
        strategic(
            &mut doc,
            json!({
                "metadata": {
                    "labels": {"$patch": "replace", "c": "3"},
                    "$deleteFromPrimitiveList/finalizers": ["y"],
                    "$setElementOrder/finalizers": ["z", "x"]
                },
                "data": {"$patch": "delete"},
                "spec": {"$retainKeys": ["holderIdentity"], "holderIdentity": "g"}
            }),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"c": "3"}, "finalizers": ["z", "x"]},
                   "spec": {"holderIdentity": "g"}})
        );
        // A replace item in a list: the list is the rest of the patch's items.
        strategic(
            &mut doc,
            json!({"metadata": {"finalizers": [{"$patch": "replace"}, "q"]}}),
        )
        .unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["q"]));
        let mut refs = json!({"metadata": {"ownerReferences": [{"uid": "1"}]}});
        strategic(
            &mut refs,
            json!({"metadata": {"ownerReferences": [{"$patch": "replace"}, {"uid": "9"}]}}),
        )
        .unwrap();
        assert_eq!(refs["metadata"]["ownerReferences"], json!([{"uid": "9"}]));
        assert!(matches!(
            strategic(&mut doc, json!({"spec": {"$patch": "bogus"}})),
            Err(PatchError::Unknown(_))
        ));
        assert!(matches!(
            strategic(&mut doc, json!({"spec": {"$retainKeys": "x"}})),
            Err(PatchError::BadRequest(_))
        ));
        assert!(matches!(
            strategic(
                &mut doc,
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "x"}})
            ),
            Err(PatchError::BadRequest(_))
        ));
    }

    /// Each copy doubles `spec`: 40 of them, about 2 KB of patch, would ask for
    /// terabytes.
    #[test]
    fn json_patch_copies_are_capped_as_kube_apiserver_caps_them() {
        let mut doc = json!({"spec": {"holderIdentity": "a"}});
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/spec", "path": format!("/spec/x{i}")}))
            .collect();
        let err = apply(PatchKind::Json, &mut doc, &Value::Array(ops)).unwrap_err();
        let PatchError::Invalid(why) = err else {
            panic!("{err:?}")
        };
        assert!(
            why.starts_with(
                "Unable to complete the copy, the accumulated size increase of copy is "
            ),
            "{why}"
        );
        assert!(why.ends_with(", exceeding the limit 3145728"), "{why}");
        let small = json!([{"op": "copy", "from": "/spec", "path": "/spec/x"}]);
        let mut doc = json!({"spec": {"holderIdentity": "a"}});
        apply(PatchKind::Json, &mut doc, &small).unwrap();
        assert_eq!(doc["spec"]["x"], json!({"holderIdentity": "a"}));
    }

    #[test]
    fn json_patches_of_more_than_ten_thousand_operations_are_too_large() {
        let test = json!({"op": "test", "path": "/spec", "value": {}});
        let mut doc = json!({"spec": {}});
        apply(
            PatchKind::Json,
            &mut doc,
            &Value::Array(vec![test.clone(); 10_000]),
        )
        .unwrap();
        let err = apply(PatchKind::Json, &mut doc, &Value::Array(vec![test; 10_001]))
            .unwrap_err()
            .into_api_error();
        assert_eq!((err.code, err.reason), (413, "RequestEntityTooLarge"));
        assert_eq!(
            err.message,
            "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
    }

    #[test]
    fn json_patches_cannot_nest_the_object_deeper_than_a_body_can() {
        let mut nested = json!(1);
        for _ in 0..100 {
            nested = json!({ "a": nested });
        }
        let ops = json!([
            {"op": "add", "path": "/spec/x", "value": nested},
            {"op": "add", "path": format!("/spec/x{}", "/a".repeat(100)), "value": nested},
        ]);
        let mut doc = json!({"spec": {}});
        let err = apply(PatchKind::Json, &mut doc, &ops).unwrap_err();
        assert_eq!(
            err,
            PatchError::Invalid(
                "the patched object would nest 202 levels deep, more than 128".into()
            )
        );
        assert_eq!(nesting(&json!({"a": [1, {"b": {}}], "c": 2})), 4);
        assert_eq!(nesting(&json!("x")), 0);
    }

    #[test]
    fn json_patch_operations() {
        let mut doc = json!({"spec": {"holderIdentity": "a", "list": [1, 3]}});
        apply(
            PatchKind::Json,
            &mut doc,
            &json!([
                {"op": "test", "path": "/spec/holderIdentity", "value": "a"},
                {"op": "replace", "path": "/spec/holderIdentity", "value": "b"},
                {"op": "add", "path": "/spec/list/1", "value": 2},
                {"op": "copy", "from": "/spec/holderIdentity", "path": "/spec/copy"},
                {"op": "move", "from": "/spec/copy", "path": "/spec/moved"},
                {"op": "remove", "path": "/spec/list/0"}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"holderIdentity": "b", "list": [2, 3], "moved": "b"}})
        );
        let err = apply(
            PatchKind::Json,
            &mut doc,
            &json!([{"op": "test", "path": "/spec/holderIdentity", "value": "a"}]),
        );
        assert!(err.is_err());
        assert!(apply(
            PatchKind::Json,
            &mut doc,
            &json!([{"op": "remove", "path": "/nope"}])
        )
        .is_err());
    }
}
