//! Field and label selectors of list and watch requests.
//!
//! Field selectors match any dotted path of the object (`metadata.name`,
//! `involvedObject.uid`, ...), a superset of what kube-apiserver allows per kind, so
//! that every selector a client sends to a real server works here too.

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
        })
    }

    /// The name this selector pins with `metadata.name=X`, if any.
    pub fn name(&self) -> Option<&str> {
        self.requirements.iter().find_map(|(k, op)| match op {
            Op::Eq(v) if !self.labels && k == "metadata.name" => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
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
}
