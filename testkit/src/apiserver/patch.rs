//! PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch and JSON patch
//! (RFC 6902).
//!
//! A strategic merge patch is applied as a merge patch, leaving out `$` directives:
//! the served kinds have no lists with merge keys a leader election client touches,
//! so the two agree on them.

use serde_json::Value;

/// The patch formats kube-apiserver accepts, by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    StrategicMerge,
    Json,
}

impl PatchKind {
    /// The format of `content_type`, or None when the server does not take it.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/json-patch+json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Applies `patch` to `target`; the error says what in the patch is wrong.
pub(crate) fn apply(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), String> {
    match kind {
        PatchKind::Merge => {
            merge(target, patch, false);
            Ok(())
        }
        PatchKind::StrategicMerge => {
            merge(target, patch, true);
            Ok(())
        }
        PatchKind::Json => json_patch(target, patch),
    }
}

fn merge(target: &mut Value, patch: &Value, strategic: bool) {
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
        if strategic && key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            map.remove(key);
        } else {
            merge(
                map.entry(key.clone()).or_insert(Value::Null),
                value,
                strategic,
            );
        }
    }
}

fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
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
                let copied = target
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("doc is missing from path: {from:?}"))?;
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

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
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
            PatchKind::StrategicMerge,
            &mut doc,
            &json!({"metadata": {"annotations": {"a": null, "c": "3"}}, "$retainKeys": ["x"]}),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}}, "data": {"k": "v"}})
        );
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
