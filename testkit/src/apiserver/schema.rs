//! The few facts of the served kinds' Go types that merging needs: which objects are
//! maps rather than structs, and which lists merge by a key or as a set.
//!
//! Strategic merge patch reads them from the `patchStrategy` / `patchMergeKey` tags
//! and server-side apply from the `listType` / `listMapKey` markers; on the served
//! kinds the two agree. Everything not named here is a struct (an object) or an
//! atomic value (a scalar or a list replaced whole), as in the OpenAPI schema.

use serde_json::Value;

/// How a field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// An object whose fields are known names (`spec`, `metadata`).
    Struct,
    /// `map[string]string` (labels, annotations, data): keys are data.
    Map,
    /// A list of scalars merged as a set (`metadata.finalizers`).
    Set,
    /// A list of objects merged by the value of one field (`metadata.ownerReferences`
    /// by `uid`); its items are replaced whole (the Go type is an atomic struct).
    Keyed(&'static str),
    /// A scalar, or a list replaced whole.
    Atomic,
}

/// The shape of the field at `path` (field names from the object's root), holding
/// `value`.
pub(crate) fn shape(path: &[&str], value: &Value) -> Shape {
    match path {
        ["metadata", "labels" | "annotations"] | ["data" | "binaryData"] => Shape::Map,
        ["metadata", "finalizers"] => Shape::Set,
        ["metadata", "ownerReferences"] => Shape::Keyed("uid"),
        _ if value.is_object() => Shape::Struct,
        _ => Shape::Atomic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_fields_and_defaults() {
        assert_eq!(shape(&["data"], &json!({})), Shape::Map);
        assert_eq!(shape(&["metadata", "finalizers"], &json!([])), Shape::Set);
        assert_eq!(shape(&["spec"], &json!({})), Shape::Struct);
        assert_eq!(shape(&["subsets"], &json!([])), Shape::Atomic);
    }
}
