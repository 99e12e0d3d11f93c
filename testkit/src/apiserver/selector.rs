//! Field, label and shard selectors of list and watch requests.
//!
//! Field selectors match any dotted path of the object (`metadata.name`,
//! `involvedObject.uid`, ...), a superset of what kube-apiserver allows per kind, so
//! that every selector a client sends to a real server works here too.
//!
//! Shard selectors are KEP-5866's (server-side sharded list and watch, alpha in
//! Kubernetes 1.36 behind `ShardedListAndWatch`), as the API reference of
//! `ListOptions.shardSelector` gives them: one or more
//! `shardRange(<field>, '<hexStart>', '<hexEnd>')` joined by `||`, all on the same
//! field, `object.metadata.uid` or `object.metadata.namespace`; the bounds are quoted
//! `0x`-prefixed hexadecimal, the start inclusive, the end exclusive and at most
//! `'0x10000000000000000'` (2^64); an object is selected when the 64-bit FNV-1a hash
//! of the field's bytes is in one of the ranges.

use serde_json::Value;

use super::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// A parsed `fieldSelector` or `labelSelector`: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<(String, Op)>,
    labels: bool,
    shards: Option<ShardSelector>,
}

impl Selector {
    /// Parses `metadata.name=x,metadata.namespace!=y`.
    pub fn fields(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let (key, op) = if let Some((k, v)) = term.split_once("!=") {
                (k, Op::NotEq(unescape(v)))
            } else if let Some((k, v)) = term.split_once("==") {
                (k, Op::Eq(unescape(v)))
            } else if let Some((k, v)) = term.split_once('=') {
                (k, Op::Eq(unescape(v)))
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {text:?}: {term:?} is not of the form key=value"
                )));
            };
            requirements.push((key.trim().to_string(), op));
        }
        Ok(Self {
            requirements,
            labels: false,
            shards: None,
        })
    }

    /// Parses `app=x,tier!=y,env in (a,b),!legacy`.
    pub fn labels(text: &str) -> Result<Self, ApiError> {
        let bad = |term: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement: {term:?} in label selector {text:?}"
            ))
        };
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            let requirement = if let Some(key) = term.strip_prefix('!') {
                (key.trim().to_string(), Op::NotExists)
            } else if let Some((k, v)) = term.split_once("!=") {
                (k.trim().to_string(), Op::NotEq(v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once("==") {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once('=') {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if let Some((k, set)) = term.split_once(" notin ") {
                (
                    k.trim().to_string(),
                    Op::NotIn(parse_set(set).ok_or_else(|| bad(term))?),
                )
            } else if let Some((k, set)) = term.split_once(" in ") {
                (
                    k.trim().to_string(),
                    Op::In(parse_set(set).ok_or_else(|| bad(term))?),
                )
            } else if !term.contains([' ', '(', ')', '<', '>']) {
                (term.to_string(), Op::Exists)
            } else {
                return Err(bad(term));
            };
            requirements.push(requirement);
        }
        Ok(Self {
            requirements,
            labels: true,
            shards: None,
        })
    }

    /// The name this selector pins with `metadata.name=X`, if any.
    pub fn name(&self) -> Option<&str> {
        self.requirements.iter().find_map(|(k, op)| match op {
            Op::Eq(v) if !self.labels && k == "metadata.name" => Some(v.as_str()),
            _ => None,
        })
    }

    /// This selector and, when `text` is not empty, the `shardSelector` `text` too
    /// (both must hold).
    pub fn with_shards(mut self, text: &str) -> Result<Self, ApiError> {
        self.shards = ShardSelector::parse(text)?;
        Ok(self)
    }

    /// The shard selector this selector carries, if any.
    pub fn shards(&self) -> Option<&ShardSelector> {
        self.shards.as_ref()
    }

    pub fn matches(&self, object: &Value) -> bool {
        if self.shards.as_ref().is_some_and(|s| !s.matches(object)) {
            return false;
        }
        self.requirements.iter().all(|(key, op)| {
            let value = if self.labels {
                object
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(key))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            } else {
                Some(field_value(object, key))
            };
            let value = value.as_deref();
            match op {
                Op::Eq(v) => value == Some(v.as_str()),
                Op::NotEq(v) => value != Some(v.as_str()),
                Op::In(set) => value.is_some_and(|x| set.iter().any(|v| v == x)),
                Op::NotIn(set) => !value.is_some_and(|x| set.iter().any(|v| v == x)),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        })
    }
}

/// The field paths KEP-5866 allows in `shardRange`, and where they are in an object.
const SHARD_FIELDS: [(&str, &str); 2] = [
    ("object.metadata.uid", "/metadata/uid"),
    ("object.metadata.namespace", "/metadata/namespace"),
];

/// A parsed `shardSelector`: the object's field hash must be in one of the ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardSelector {
    /// The selector as the client sent it, echoed in a list's `metadata.shardInfo`.
    text: String,
    /// The JSON pointer of the hashed field.
    pointer: &'static str,
    /// `[start, end)`, `end` `None` for 2^64.
    ranges: Vec<(u64, Option<u64>)>,
}

impl ShardSelector {
    /// Parses `shardRange(object.metadata.uid, '0x0', '0x8000000000000000') || ...`;
    /// None for an empty text (no shard selector).
    pub fn parse(text: &str) -> Result<Option<Self>, ApiError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let bad =
            |why: String| ApiError::bad_request(format!("invalid shardSelector {text:?}: {why}"));
        let mut field: Option<&str> = None;
        let mut pointer = "";
        let mut ranges = Vec::new();
        for term in text.split("||") {
            let term = term.trim();
            let args = term
                .strip_prefix("shardRange")
                .map(str::trim_start)
                .and_then(|t| t.strip_prefix('('))
                .and_then(|t| t.strip_suffix(')'))
                .ok_or_else(|| {
                    bad(format!(
                        "{term:?} is not of the form shardRange(<field>, '<hexStart>', '<hexEnd>')"
                    ))
                })?;
            let args: Vec<&str> = args.split(',').map(str::trim).collect();
            let [path, start, end] = args[..] else {
                return Err(bad(format!(
                    "shardRange takes 3 arguments (field, start, end), got {}",
                    args.len()
                )));
            };
            let Some(&(known, at)) = SHARD_FIELDS.iter().find(|(f, _)| *f == path) else {
                return Err(bad(format!(
                    "unsupported field path {path:?}: supported paths are \"object.metadata.uid\" and \"object.metadata.namespace\""
                )));
            };
            if field.is_some_and(|f| f != known) {
                return Err(bad(format!(
                    "all shardRange terms must use the same field path, got {:?} and {path:?}",
                    field.unwrap_or_default()
                )));
            }
            field = Some(known);
            pointer = at;
            let start = parse_bound(start).map_err(|why| bad(format!("start: {why}")))?;
            let end = parse_bound(end).map_err(|why| bad(format!("end: {why}")))?;
            let start = match start {
                Some(start) => start,
                None => return Err(bad("start: must be less than 0x10000000000000000".into())),
            };
            if end.is_some_and(|end| end <= start) {
                return Err(bad(format!(
                    "start {start:#x} must be less than end {:#x}",
                    end.unwrap_or_default()
                )));
            }
            ranges.push((start, end));
        }
        Ok(Some(Self {
            text: text.to_string(),
            pointer,
            ranges,
        }))
    }

    /// The selector as the client sent it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the FNV-1a hash of the object's field (empty when absent) is in one
    /// of the ranges.
    pub fn matches(&self, object: &Value) -> bool {
        let value = object
            .pointer(self.pointer)
            .and_then(Value::as_str)
            .unwrap_or("");
        let hash = fnv1a64(value.as_bytes());
        self.ranges
            .iter()
            .any(|&(start, end)| hash >= start && end.is_none_or(|end| hash < end))
    }
}

/// A quoted `'0x...'` bound: up to 16 hex digits, or 2^64 (`None`) written with 17.
fn parse_bound(text: &str) -> Result<Option<u64>, String> {
    let quoted = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| text.strip_prefix('"').and_then(|t| t.strip_suffix('"')));
    let Some(quoted) = quoted else {
        return Err(format!(
            "{text:?} must be a quoted string literal such as '0x8000000000000000'"
        ));
    };
    let Some(digits) = quoted.strip_prefix("0x") else {
        return Err(format!("{quoted:?} must start with 0x"));
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{quoted:?} is not a hexadecimal number"));
    }
    match u128::from_str_radix(digits, 16) {
        Ok(v) if digits.len() <= 17 && v <= 1 << 64 => Ok(u64::try_from(v).ok()),
        _ => Err(format!(
            "{quoted:?} is greater than 0x10000000000000000 or longer than 17 digits"
        )),
    }
}

/// FNV-1a, 64 bits, of `bytes`: the hash KEP-5866 filters by.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A field's value as a field selector sees it: strings as they are, other scalars
/// printed, absent as the empty string.
fn field_value(object: &Value, path: &str) -> String {
    let pointer: String = path.split('.').map(|p| format!("/{p}")).collect();
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Splits on commas outside parentheses and not escaped with a backslash.
fn split_terms(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            ',' if depth == 0 => terms.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    terms.push(current);
    terms.retain(|t| !t.trim().is_empty());
    terms
}

fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_set(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_selectors_match_paths() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}, "involvedObject": {"kind": "Lease"}});
        let s = Selector::fields("metadata.name=a,involvedObject.kind==Lease").unwrap();
        assert!(s.matches(&obj));
        assert_eq!(s.name(), Some("a"));
        assert!(!Selector::fields("metadata.name!=a").unwrap().matches(&obj));
        assert!(Selector::fields("metadata.uid=").unwrap().matches(&obj));
        assert!(Selector::fields("nonsense").is_err());
    }

    #[test]
    fn label_selectors_match_labels() {
        let obj = json!({"metadata": {"labels": {"app": "x", "env": "prod"}}});
        for (sel, want) in [
            ("app=x", true),
            ("app!=x", false),
            ("env in (dev, prod)", true),
            ("env notin (prod)", false),
            ("app,!legacy", true),
            ("legacy", false),
            ("", true),
        ] {
            assert_eq!(Selector::labels(sel).unwrap().matches(&obj), want, "{sel}");
        }
        assert!(Selector::labels("a in b").is_err());
    }

    fn uid(uid: &str) -> Value {
        json!({"metadata": {"name": "x", "namespace": "ns", "uid": uid}})
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shard_selectors_filter_by_the_fnv_hash_of_the_field() {
        // FNV-1a("a") is 0xaf63dc4c8601ec8c, in the third quarter.
        let quarter = |i: u64| {
            let end = if i == 3 {
                "0x10000000000000000".to_string()
            } else {
                format!("0x{:016x}", (i + 1) << 62)
            };
            format!(
                "shardRange(object.metadata.uid, '0x{:016x}', '{end}')",
                i << 62
            )
        };
        let hits: Vec<bool> = (0..4)
            .map(|i| {
                Selector::default()
                    .with_shards(&quarter(i))
                    .unwrap()
                    .matches(&uid("a"))
            })
            .collect();
        assert_eq!(hits, [false, false, true, false]);
        for (sel, want) in [
            ("shardRange(object.metadata.uid, '0x0', '0x10000000000000000')", true),
            ("shardRange(object.metadata.uid,'0xaf63dc4c8601ec8c','0xaf63dc4c8601ec8d')", true),
            ("shardRange(object.metadata.uid, '0xaf63dc4c8601ec8d', '0xffffffffffffffff')", false),
            ("shardRange(object.metadata.uid, '0x0', '0x8000000000000000') || shardRange(object.metadata.uid, '0xa000000000000000', '0xb000000000000000')", true),
            ("shardRange(object.metadata.uid, \"0x0\", \"0x8000000000000000\")", false),
            // The namespace "ns", not the UID, is hashed.
            ("shardRange(object.metadata.namespace, '0xaf63dc4c8601ec8c', '0xaf63dc4c8601ec8d')", false),
            ("", true),
        ] {
            let s = Selector::default().with_shards(sel).unwrap();
            assert_eq!(s.matches(&uid("a")), want, "{sel}");
        }
        let ns = fnv1a64(b"ns");
        let sel = format!(
            "shardRange(object.metadata.namespace, '0x{ns:x}', '0x{:x}')",
            ns + 1
        );
        assert!(Selector::default()
            .with_shards(&sel)
            .unwrap()
            .matches(&uid("a")));
    }

    #[test]
    fn shard_selectors_combine_with_field_and_label_selectors() {
        let all = "shardRange(object.metadata.uid, '0x0', '0x10000000000000000')";
        let none = "shardRange(object.metadata.uid, '0x0', '0x1')";
        let obj = uid("a");
        let s = Selector::fields("metadata.name=x").unwrap();
        assert!(s.clone().with_shards(all).unwrap().matches(&obj));
        assert!(!s.with_shards(none).unwrap().matches(&obj));
        let s = Selector::fields("metadata.name=y").unwrap();
        assert!(!s.with_shards(all).unwrap().matches(&obj));
    }

    #[test]
    fn malformed_shard_selectors_are_bad_requests() {
        for (sel, says) in [
            ("shardRange(object.metadata.uid, 0x0, 0x8000000000000000)", "quoted"),
            ("shardRange(object.metadata.uid, '0', '0x8000000000000000')", "0x"),
            ("shardRange(object.metadata.uid, '0x', '0x80')", "hexadecimal"),
            ("shardRange(object.metadata.uid, '0x0g', '0x80')", "hexadecimal"),
            ("shardRange(object.metadata.uid, '0x0', '0x10000000000000001')", "greater"),
            ("shardRange(object.metadata.uid, '0x0', '0x000000000000000000')", "longer"),
            ("shardRange(object.metadata.uid, '0x10000000000000000', '0x10000000000000000')", "start"),
            ("shardRange(object.metadata.uid, '0x80', '0x80')", "less than"),
            ("shardRange(object.metadata.name, '0x0', '0x80')", "unsupported field path"),
            ("shardRange(metadata.uid, '0x0', '0x80')", "unsupported field path"),
            ("shardRange(object.metadata.uid, '0x0')", "3 arguments"),
            ("shardRange(object.metadata.uid, '0x0', '0x80'", "not of the form"),
            ("range(object.metadata.uid, '0x0', '0x80')", "not of the form"),
            ("shardRange(object.metadata.uid, '0x0', '0x80') ||", "not of the form"),
            ("shardRange(object.metadata.uid, '0x0', '0x80') || shardRange(object.metadata.namespace, '0x80', '0x90')", "same field path"),
        ] {
            let err = Selector::default().with_shards(sel).unwrap_err().to_json();
            assert_eq!(err["code"], 400, "{sel}");
            assert_eq!(err["reason"], "BadRequest", "{sel}");
            let message = err["message"].as_str().unwrap();
            assert!(message.starts_with("invalid shardSelector"), "{sel}: {message}");
            assert!(message.contains(says), "{sel}: {message}");
        }
    }
}
