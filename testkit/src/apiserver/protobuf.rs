//! Kubernetes' protobuf encoding of the served kinds, to and from the JSON the server
//! stores.
//!
//! A body is the magic `k8s\0` then a `runtime.Unknown` whose `raw` holds the object's
//! message. The objects' messages are described by tables of field numbers (from
//! `generated.proto` of each API group) walked by one codec in each direction: the
//! server keeps JSON, so typed structs would only be a detour, written twice per
//! message. The tests check the tables against `k8s-pb`'s generated types.
//!
//! As Go's decoder does, unknown fields are skipped, and a scalar that is not a
//! pointer in Go comes out absent when zero (its JSON field is `omitempty`).

use base64::Engine as _;
use serde_json::{Map, Value};

use super::resources::Resource;
use super::status::ApiError;

/// The protobuf media type kube-apiserver serves.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Str,
    Int32,
    Int64,
    Bool,
    /// metav1.Time: `{seconds, nanos}`, RFC 3339 in JSON.
    Time,
    /// metav1.MicroTime: as Time, with six fractional digits in JSON.
    MicroTime,
    /// `map<string, string>`.
    StrMap,
    /// `map<string, bytes>`, base64 in JSON.
    BytesMap,
    /// metav1.FieldsV1: JSON bytes in `raw`, an object in JSON.
    FieldsV1,
    Msg(&'static Message),
}

/// A protobuf message and its OpenAPI component name.
#[derive(Debug)]
pub(crate) struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Card {
    /// A Go value field: zero is absent.
    Value,
    /// A Go pointer: zero is kept.
    Pointer,
    Repeated,
}

#[derive(Debug)]
pub(super) struct Field {
    pub tag: u32,
    pub name: &'static str,
    pub kind: Kind,
    pub card: Card,
}

const fn value(tag: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        tag,
        name,
        kind,
        card: Card::Value,
    }
}

const fn pointer(tag: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        tag,
        name,
        kind,
        card: Card::Pointer,
    }
}

const fn repeated(tag: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        tag,
        name,
        kind,
        card: Card::Repeated,
    }
}

pub(super) use Kind::{Bool, BytesMap, FieldsV1, Int32, Int64, MicroTime, Msg, Str, StrMap, Time};

const OWNER_REFERENCE: Message = Message {
    name: "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference",
    fields: &[
        value(1, "kind", Str),
        value(3, "name", Str),
        value(4, "uid", Str),
        value(5, "apiVersion", Str),
        pointer(6, "controller", Bool),
        pointer(7, "blockOwnerDeletion", Bool),
    ],
};

const MANAGED_FIELDS_ENTRY: Message = Message {
    name: "io.k8s.apimachinery.pkg.apis.meta.v1.ManagedFieldsEntry",
    fields: &[
        value(1, "manager", Str),
        value(2, "operation", Str),
        value(3, "apiVersion", Str),
        pointer(4, "time", Time),
        value(6, "fieldsType", Str),
        pointer(7, "fieldsV1", FieldsV1),
        value(8, "subresource", Str),
    ],
};

const OBJECT_META: Message = Message {
    name: "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    fields: &[
        value(1, "name", Str),
        value(2, "generateName", Str),
        value(3, "namespace", Str),
        value(4, "selfLink", Str),
        value(5, "uid", Str),
        value(6, "resourceVersion", Str),
        value(7, "generation", Int64),
        value(8, "creationTimestamp", Time),
        pointer(9, "deletionTimestamp", Time),
        pointer(10, "deletionGracePeriodSeconds", Int64),
        value(11, "labels", StrMap),
        value(12, "annotations", StrMap),
        repeated(13, "ownerReferences", Msg(&OWNER_REFERENCE)),
        repeated(14, "finalizers", Str),
        repeated(17, "managedFields", Msg(&MANAGED_FIELDS_ENTRY)),
    ],
};

const LIST_META: Message = Message {
    name: "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
    fields: &[
        value(1, "selfLink", Str),
        value(2, "resourceVersion", Str),
        value(3, "continue", Str),
        pointer(4, "remainingItemCount", Int64),
    ],
};

const LEASE_SPEC: Message = Message {
    name: "io.k8s.api.coordination.v1.LeaseSpec",
    fields: &[
        pointer(1, "holderIdentity", Str),
        pointer(2, "leaseDurationSeconds", Int32),
        pointer(3, "acquireTime", MicroTime),
        pointer(4, "renewTime", MicroTime),
        pointer(5, "leaseTransitions", Int32),
        pointer(6, "strategy", Str),
        pointer(7, "preferredHolder", Str),
    ],
};

const LEASE: Message = Message {
    name: "io.k8s.api.coordination.v1.Lease",
    fields: &[
        pointer(1, "metadata", Msg(&OBJECT_META)),
        pointer(2, "spec", Msg(&LEASE_SPEC)),
    ],
};

/// coordination.k8s.io/v1beta1 LeaseCandidateSpec. `leaseName` and `binaryVersion`
/// are required in Go (values, no `omitempty`); the times are pointers.
const LEASE_CANDIDATE_SPEC: Message = Message {
    name: "io.k8s.api.coordination.v1beta1.LeaseCandidateSpec",
    fields: &[
        value(1, "leaseName", Str),
        pointer(2, "pingTime", MicroTime),
        pointer(3, "renewTime", MicroTime),
        value(4, "binaryVersion", Str),
        value(5, "emulationVersion", Str),
        value(6, "strategy", Str),
    ],
};

const LEASE_CANDIDATE: Message = Message {
    name: "io.k8s.api.coordination.v1beta1.LeaseCandidate",
    fields: &[
        pointer(1, "metadata", Msg(&OBJECT_META)),
        pointer(2, "spec", Msg(&LEASE_CANDIDATE_SPEC)),
    ],
};

const CONFIG_MAP: Message = Message {
    name: "io.k8s.api.core.v1.ConfigMap",
    fields: &[
        pointer(1, "metadata", Msg(&OBJECT_META)),
        value(2, "data", StrMap),
        value(3, "binaryData", BytesMap),
        pointer(4, "immutable", Bool),
    ],
};

const OBJECT_REFERENCE: Message = Message {
    name: "io.k8s.api.core.v1.ObjectReference",
    fields: &[
        value(1, "kind", Str),
        value(2, "namespace", Str),
        value(3, "name", Str),
        value(4, "uid", Str),
        value(5, "apiVersion", Str),
        value(6, "resourceVersion", Str),
        value(7, "fieldPath", Str),
    ],
};

const ENDPOINT_ADDRESS: Message = Message {
    name: "io.k8s.api.core.v1.EndpointAddress",
    fields: &[
        value(1, "ip", Str),
        pointer(2, "targetRef", Msg(&OBJECT_REFERENCE)),
        value(3, "hostname", Str),
        pointer(4, "nodeName", Str),
    ],
};

const ENDPOINT_PORT: Message = Message {
    name: "io.k8s.api.core.v1.EndpointPort",
    fields: &[
        value(1, "name", Str),
        value(2, "port", Int32),
        value(3, "protocol", Str),
        pointer(4, "appProtocol", Str),
    ],
};

const ENDPOINT_SUBSET: Message = Message {
    name: "io.k8s.api.core.v1.EndpointSubset",
    fields: &[
        repeated(1, "addresses", Msg(&ENDPOINT_ADDRESS)),
        repeated(2, "notReadyAddresses", Msg(&ENDPOINT_ADDRESS)),
        repeated(3, "ports", Msg(&ENDPOINT_PORT)),
    ],
};

const ENDPOINTS: Message = Message {
    name: "io.k8s.api.core.v1.Endpoints",
    fields: &[
        pointer(1, "metadata", Msg(&OBJECT_META)),
        repeated(2, "subsets", Msg(&ENDPOINT_SUBSET)),
    ],
};

const EVENT_SOURCE: Message = Message {
    name: "io.k8s.api.core.v1.EventSource",
    fields: &[value(1, "component", Str), value(2, "host", Str)],
};

const EVENT_SERIES: Message = Message {
    name: "io.k8s.api.core.v1.EventSeries",
    fields: &[
        value(1, "count", Int32),
        value(2, "lastObservedTime", MicroTime),
    ],
};

const CORE_EVENT: Message = Message {
    name: "io.k8s.api.core.v1.Event",
    fields: &[
        pointer(1, "metadata", Msg(&OBJECT_META)),
        pointer(2, "involvedObject", Msg(&OBJECT_REFERENCE)),
        value(3, "reason", Str),
        value(4, "message", Str),
        pointer(5, "source", Msg(&EVENT_SOURCE)),
        value(6, "firstTimestamp", Time),
        value(7, "lastTimestamp", Time),
        value(8, "count", Int32),
        value(9, "type", Str),
        value(10, "eventTime", MicroTime),
        pointer(11, "series", Msg(&EVENT_SERIES)),
        value(12, "action", Str),
        pointer(13, "related", Msg(&OBJECT_REFERENCE)),
        value(14, "reportingComponent", Str),
        value(15, "reportingInstance", Str),
    ],
};

const EVENTS_V1_SERIES: Message = Message {
    name: "io.k8s.api.events.v1.EventSeries",
    fields: &[
        value(1, "count", Int32),
        value(2, "lastObservedTime", MicroTime),
    ],
};

const EVENTS_V1_EVENT: Message = Message {
    name: "io.k8s.api.events.v1.Event",
    fields: &[
        pointer(1, "metadata", Msg(&OBJECT_META)),
        value(2, "eventTime", MicroTime),
        pointer(3, "series", Msg(&EVENTS_V1_SERIES)),
        value(4, "reportingController", Str),
        value(5, "reportingInstance", Str),
        value(6, "action", Str),
        value(7, "reason", Str),
        pointer(8, "regarding", Msg(&OBJECT_REFERENCE)),
        pointer(9, "related", Msg(&OBJECT_REFERENCE)),
        value(10, "note", Str),
        value(11, "type", Str),
        pointer(12, "deprecatedSource", Msg(&EVENT_SOURCE)),
        value(13, "deprecatedFirstTimestamp", Time),
        value(14, "deprecatedLastTimestamp", Time),
        value(15, "deprecatedCount", Int32),
    ],
};

const STATUS_CAUSE: Message = Message {
    name: "io.k8s.apimachinery.pkg.apis.meta.v1.StatusCause",
    fields: &[
        value(1, "reason", Str),
        value(2, "message", Str),
        value(3, "field", Str),
    ],
};

const STATUS_DETAILS: Message = Message {
    name: "io.k8s.apimachinery.pkg.apis.meta.v1.StatusDetails",
    fields: &[
        value(1, "name", Str),
        value(2, "group", Str),
        value(3, "kind", Str),
        repeated(4, "causes", Msg(&STATUS_CAUSE)),
        value(5, "retryAfterSeconds", Int32),
        value(6, "uid", Str),
    ],
};

const STATUS: Message = Message {
    name: "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    fields: &[
        pointer(1, "metadata", Msg(&LIST_META)),
        value(2, "status", Str),
        value(3, "message", Str),
        value(4, "reason", Str),
        pointer(5, "details", Msg(&STATUS_DETAILS)),
        value(6, "code", Int32),
    ],
};

const PRECONDITIONS: Message = Message {
    name: "io.k8s.apimachinery.pkg.apis.meta.v1.Preconditions",
    fields: &[pointer(1, "uid", Str), pointer(2, "resourceVersion", Str)],
};

const DELETE_OPTIONS: Message = Message {
    name: "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    fields: &[
        pointer(1, "gracePeriodSeconds", Int64),
        pointer(2, "preconditions", Msg(&PRECONDITIONS)),
        pointer(3, "orphanDependents", Bool),
        pointer(4, "propagationPolicy", Str),
        repeated(5, "dryRun", Str),
    ],
};

/// `runtime.TypeMeta`, the envelope's (not metav1's: the numbers differ).
const TYPE_META: Message = Message {
    name: "io.k8s.apimachinery.pkg.runtime.TypeMeta",
    fields: &[value(1, "apiVersion", Str), value(2, "kind", Str)],
};

/// A list of `item`: `{metadata: ListMeta, items: [item]}`.
macro_rules! list {
    ($name:literal, $item:expr) => {
        Message {
            name: $name,
            fields: &[
                pointer(1, "metadata", Msg(&LIST_META)),
                repeated(2, "items", Msg($item)),
            ],
        }
    };
}

const LEASE_LIST: Message = list!("io.k8s.api.coordination.v1.LeaseList", &LEASE);
const LEASE_CANDIDATE_LIST: Message = list!(
    "io.k8s.api.coordination.v1beta1.LeaseCandidateList",
    &LEASE_CANDIDATE
);
const CONFIG_MAP_LIST: Message = list!("io.k8s.api.core.v1.ConfigMapList", &CONFIG_MAP);
const ENDPOINTS_LIST: Message = list!("io.k8s.api.core.v1.EndpointsList", &ENDPOINTS);
const CORE_EVENT_LIST: Message = list!("io.k8s.api.core.v1.EventList", &CORE_EVENT);
const EVENTS_V1_EVENT_LIST: Message = list!("io.k8s.api.events.v1.EventList", &EVENTS_V1_EVENT);

/// The message of `kind` in `api_version`, among the kinds with a protobuf form here.
pub(crate) fn message(api_version: &str, kind: &str) -> Option<&'static Message> {
    Some(match (api_version, kind) {
        ("coordination.k8s.io/v1", "Lease") => &LEASE,
        ("coordination.k8s.io/v1", "LeaseList") => &LEASE_LIST,
        ("coordination.k8s.io/v1beta1", "LeaseCandidate") => &LEASE_CANDIDATE,
        ("coordination.k8s.io/v1beta1", "LeaseCandidateList") => &LEASE_CANDIDATE_LIST,
        ("v1", "ConfigMap") => &CONFIG_MAP,
        ("v1", "ConfigMapList") => &CONFIG_MAP_LIST,
        ("v1", "Endpoints") => &ENDPOINTS,
        ("v1", "EndpointsList") => &ENDPOINTS_LIST,
        ("v1", "Event") => &CORE_EVENT,
        ("v1", "EventList") => &CORE_EVENT_LIST,
        ("events.k8s.io/v1", "Event") => &EVENTS_V1_EVENT,
        ("events.k8s.io/v1", "EventList") => &EVENTS_V1_EVENT_LIST,
        ("v1", "Status") => &STATUS,
        // DeleteOptions is sent under the request's group version or meta's.
        (_, "DeleteOptions") => &DELETE_OPTIONS,
        _ => return None,
    })
}

/// The message of `resource`'s objects.
pub(crate) fn object_message(resource: &Resource) -> &'static Message {
    message(&resource.api_version(), resource.kind).expect("every served kind has a message")
}

/// The message of `resource`'s lists.
pub(crate) fn list_message(resource: &Resource) -> &'static Message {
    message(&resource.api_version(), &format!("{}List", resource.kind))
        .expect("every served kind has a list message")
}

/// Status and DeleteOptions, which every group version refers to.
pub(crate) fn shared_messages() -> [&'static Message; 2] {
    [&STATUS, &DELETE_OPTIONS]
}

/// Whether a `Content-Type` is Kubernetes protobuf.
pub(crate) fn is_protobuf(content_type: &str) -> bool {
    media(content_type) == MEDIA_TYPE
}

/// Whether the client's `Accept` asks for protobuf before JSON, as client-go's
/// `application/vnd.kubernetes.protobuf, application/json` does.
pub(crate) fn preferred(accept: &str) -> bool {
    accept.split(',').map(media).find(|m| {
        matches!(
            *m,
            MEDIA_TYPE | "application/json" | "application/*" | "*/*"
        )
    }) == Some(MEDIA_TYPE)
}

fn media(part: &str) -> &str {
    part.split(';').next().unwrap_or("").trim()
}

/// Turns a protobuf request body for `resource` (an object of the kind, or
/// DeleteOptions) into its JSON, with `apiVersion` and `kind` from the envelope.
///
/// # Errors
///
/// A 400 BadRequest worded as kube-apiserver's when the body is not a protobuf
/// message of a kind served here.
pub(crate) fn decode_body(resource: &Resource, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    decode(body)
        .map(|obj| obj.to_string().into_bytes())
        .map_err(|why| super::validation::cannot_handle(resource, why))
}

/// Decodes an enveloped object into JSON.
fn decode(body: &[u8]) -> Result<Value, String> {
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err(format!(
            "provided data does not appear to be a protobuf message, expected prefix {:?}",
            MAGIC
        ));
    };
    let mut raw: &[u8] = &[];
    let mut reader = Reader(envelope);
    let mut type_meta = Map::new();
    while let Some((tag, wire)) = reader.field()? {
        match (tag, wire) {
            (1, Wire::Len(bytes)) => type_meta = decode_message(&TYPE_META, bytes)?,
            (2, Wire::Len(bytes)) => raw = bytes,
            (1 | 2, _) => return Err(wrong_wire("Unknown", tag)),
            _ => {}
        }
    }
    let text = |key: &str| type_meta.get(key).and_then(Value::as_str).unwrap_or("");
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let message_of = message(api_version, kind).ok_or_else(|| {
        format!("no kind {kind:?} is registered for version {api_version:?} in this server's protobuf codec")
    })?;
    let mut obj = decode_message(message_of, raw)?;
    obj.insert("apiVersion".into(), Value::from(api_version));
    obj.insert("kind".into(), Value::from(kind));
    Ok(Value::Object(obj))
}

/// Encodes a JSON object with `apiVersion` and `kind` (a served object, a list of
/// them, or a Status) in its envelope; None for a kind without a protobuf form here.
pub(crate) fn encode(obj: &Value) -> Option<Vec<u8>> {
    let text = |key: &str| obj.get(key).and_then(Value::as_str).unwrap_or("");
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let message_of = message(api_version, kind)?;
    let map = obj.as_object()?;
    let mut type_meta = Vec::new();
    put_len(&mut type_meta, 1, api_version.as_bytes());
    put_len(&mut type_meta, 2, kind.as_bytes());
    let mut body = MAGIC.to_vec();
    put_len(&mut body, 1, &type_meta);
    put_len(&mut body, 2, &encode_message(message_of, map));
    // contentEncoding and contentType are empty: the raw bytes are plain protobuf.
    put_len(&mut body, 3, b"");
    put_len(&mut body, 4, b"");
    Some(body)
}

enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Fixed,
}

/// The fields of one message, in wire order.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or("proto: unexpected EOF")?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("proto: integer overflow".into())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "proto: negative length")?;
        if n > self.0.len() {
            return Err("proto: unexpected EOF".into());
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "proto: illegal tag")?;
        if tag == 0 {
            return Err("proto: illegal tag 0".into());
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let n = self.varint()?;
                Wire::Len(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            other => return Err(format!("proto: illegal wireType {other}")),
        };
        Ok(Some((tag, wire)))
    }
}

fn wrong_wire(message: &str, tag: u32) -> String {
    format!("proto: wrong wireType for field {tag} of {message}")
}

fn decode_message(message: &Message, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let fields = message.fields;
    let mut out = Map::new();
    let mut reader = Reader(bytes);
    while let Some((tag, wire)) = reader.field()? {
        // Unknown fields are skipped, as Go's generated code does.
        let Some(field) = fields.iter().find(|f| f.tag == tag) else {
            continue;
        };
        let value = decode_value(field, wire).map_err(|e| format!("{}: {e}", field.name))?;
        match field.kind {
            StrMap | BytesMap => {
                let Value::Object(entry) = value else {
                    unreachable!("maps decode to objects")
                };
                let map = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(map) = map.as_object_mut() {
                    map.extend(entry);
                }
            }
            _ if field.card == Card::Repeated => {
                let list = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Array(vec![]));
                if let Some(list) = list.as_array_mut() {
                    list.push(value);
                }
            }
            _ => {
                out.insert(field.name.into(), value);
            }
        }
    }
    // Go's zero values of value fields are absent in JSON (omitempty).
    out.retain(|name, value| {
        let field = fields.iter().find(|f| f.name == name);
        let pointer = field.is_some_and(|f| f.card == Card::Pointer);
        !(value.is_null() || !pointer && is_zero(value))
    });
    Ok(out)
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        Value::Object(map) => map.is_empty(),
        Value::Array(list) => list.is_empty(),
        Value::Null => true,
    }
}

fn decode_value(field: &Field, wire: Wire<'_>) -> Result<Value, String> {
    let wrong = || "proto: wrong wireType".to_string();
    Ok(match (field.kind, wire) {
        (Str, Wire::Len(bytes)) => {
            Value::from(std::str::from_utf8(bytes).map_err(|_| "proto: invalid UTF-8 in a string")?)
        }
        // Go converts with int32(v): the low 32 bits.
        (Int32, Wire::Varint(v)) => Value::from(v as i32),
        (Int64, Wire::Varint(v)) => Value::from(v as i64),
        (Bool, Wire::Varint(v)) => Value::from(v != 0),
        (Time | MicroTime, Wire::Len(bytes)) => decode_time(field.kind, bytes)?,
        (StrMap | BytesMap, Wire::Len(bytes)) => {
            let mut reader = Reader(bytes);
            let (mut key, mut value) = (String::new(), Value::from(""));
            while let Some((tag, wire)) = reader.field()? {
                match (tag, wire) {
                    (1, Wire::Len(b)) => {
                        key = String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 key")?;
                    }
                    (2, Wire::Len(b)) if matches!(field.kind, BytesMap) => {
                        value = Value::from(base64::engine::general_purpose::STANDARD.encode(b));
                    }
                    (2, Wire::Len(b)) => {
                        value = Value::from(
                            std::str::from_utf8(b).map_err(|_| "proto: invalid UTF-8 value")?,
                        );
                    }
                    (1 | 2, _) => return Err(wrong()),
                    _ => {}
                }
            }
            let mut entry = Map::new();
            entry.insert(key, value);
            Value::Object(entry)
        }
        (FieldsV1, Wire::Len(bytes)) => {
            let mut raw: &[u8] = b"{}";
            let mut reader = Reader(bytes);
            while let Some((tag, wire)) = reader.field()? {
                if let (1, Wire::Len(b)) = (tag, wire) {
                    raw = b;
                }
            }
            serde_json::from_slice(raw).map_err(|e| format!("fieldsV1 is not JSON: {e}"))?
        }
        (Msg(message), Wire::Len(bytes)) => Value::Object(decode_message(message, bytes)?),
        _ => return Err(wrong()),
    })
}

fn decode_time(kind: Kind, bytes: &[u8]) -> Result<Value, String> {
    // An empty message is Go's zero time, null in JSON.
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut reader = Reader(bytes);
    while let Some((tag, wire)) = reader.field()? {
        match (tag, wire) {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(v)) => nanos = v as i32,
            _ => {}
        }
    }
    let time = jiff::Timestamp::new(seconds, nanos.clamp(0, 999_999_999))
        .map_err(|e| format!("time out of range: {e}"))?;
    let format = match kind {
        MicroTime => "%Y-%m-%dT%H:%M:%S%.6fZ",
        _ => "%Y-%m-%dT%H:%M:%SZ",
    };
    Ok(Value::from(time.strftime(format).to_string()))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, tag: u32, wire: u64) {
    put_varint(out, (u64::from(tag) << 3) | wire);
}

fn put_len(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_key(out, tag, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn encode_message(message: &Message, obj: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for field in message.fields {
        match obj.get(field.name) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if field.card == Card::Repeated => {
                for item in items {
                    encode_value(&mut out, field, item);
                }
            }
            Some(value) => encode_value(&mut out, field, value),
        }
    }
    out
}

/// Writes one field; a value of another type than the field's is left out.
fn encode_value(out: &mut Vec<u8>, field: &Field, value: &Value) {
    let tag = field.tag;
    match (field.kind, value) {
        (Str, Value::String(s)) => put_len(out, tag, s.as_bytes()),
        // Negative int32s are sign-extended to ten bytes, as protobuf does.
        (Int32 | Int64, Value::Number(n)) => {
            if let Some(n) = n.as_i64() {
                put_key(out, tag, 0);
                put_varint(out, n as u64);
            }
        }
        (Bool, Value::Bool(b)) => {
            put_key(out, tag, 0);
            put_varint(out, u64::from(*b));
        }
        (Time | MicroTime, Value::String(s)) => {
            if let Ok(time) = s.parse::<jiff::Timestamp>() {
                let mut message = Vec::new();
                put_key(&mut message, 1, 0);
                put_varint(&mut message, time.as_second() as u64);
                if time.subsec_nanosecond() != 0 {
                    put_key(&mut message, 2, 0);
                    put_varint(&mut message, time.subsec_nanosecond() as u64);
                }
                put_len(out, tag, &message);
            }
        }
        (StrMap | BytesMap, Value::Object(map)) => {
            for (key, value) in map {
                let bytes = match (field.kind, value) {
                    (BytesMap, Value::String(s)) => {
                        match base64::engine::general_purpose::STANDARD.decode(s) {
                            Ok(bytes) => bytes,
                            Err(_) => continue,
                        }
                    }
                    (_, Value::String(s)) => s.as_bytes().to_vec(),
                    _ => continue,
                };
                let mut entry = Vec::new();
                put_len(&mut entry, 1, key.as_bytes());
                put_len(&mut entry, 2, &bytes);
                put_len(out, tag, &entry);
            }
        }
        (FieldsV1, raw @ Value::Object(_)) => {
            let mut message = Vec::new();
            put_len(&mut message, 1, raw.to_string().as_bytes());
            put_len(out, tag, &message);
        }
        (Msg(message), Value::Object(map)) => put_len(out, tag, &encode_message(message, map)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use k8s_pb::api::coordination::v1 as coordination;
    use k8s_pb::api::coordination::v1beta1 as coordination_beta;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::api::events::v1 as events;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use prost::Message as _;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::*;

    fn s(text: &str) -> Option<String> {
        Some(text.to_string())
    }

    fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn time() -> Option<meta::Time> {
        Some(meta::Time {
            seconds: Some(1_700_000_000),
            nanos: None,
        })
    }

    fn micro_time() -> Option<meta::MicroTime> {
        Some(meta::MicroTime {
            seconds: Some(1_700_000_001),
            nanos: Some(123_456_000),
        })
    }

    /// Every field of ObjectMeta set.
    fn object_meta() -> Option<meta::ObjectMeta> {
        Some(meta::ObjectMeta {
            name: s("kube-scheduler"),
            generate_name: s("kube-"),
            namespace: s("kube-system"),
            self_link: s("/api/v1/x"),
            uid: s("0b5e0f4c-3f53-4d50-9b6e-0f2b8e1f7a11"),
            resource_version: s("42"),
            generation: Some(3),
            creation_timestamp: time(),
            deletion_timestamp: time(),
            deletion_grace_period_seconds: Some(30),
            labels: strings(&[("app", "scheduler"), ("tier", "control-plane")]),
            annotations: strings(&[("control-plane.alpha.kubernetes.io/leader", "{}")]),
            owner_references: vec![meta::OwnerReference {
                api_version: s("apps/v1"),
                kind: s("Deployment"),
                name: s("scheduler"),
                uid: s("c2a5d7f0-1111-2222-3333-444455556666"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }],
            finalizers: vec!["example.com/keep".into()],
            managed_fields: vec![meta::ManagedFieldsEntry {
                manager: s("kubectl"),
                operation: s("Update"),
                api_version: s("v1"),
                time: time(),
                fields_type: s("FieldsV1"),
                fields_v1: Some(meta::FieldsV1 {
                    raw: Some(br#"{"f:data":{"f:a":{}}}"#.to_vec()),
                }),
                subresource: s("status"),
            }],
        })
    }

    fn object_reference(name: &str) -> Option<core::ObjectReference> {
        Some(core::ObjectReference {
            kind: s("Lease"),
            namespace: s("kube-system"),
            name: s(name),
            uid: s("d1f6a3c2-aaaa-bbbb-cccc-ddddeeeeffff"),
            api_version: s("coordination.k8s.io/v1"),
            resource_version: s("7"),
            field_path: s("spec"),
        })
    }

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: s(api_version),
                kind: s(kind),
            }),
            raw: Some(raw),
            content_encoding: s(""),
            content_type: s(""),
        };
        [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
    }

    /// Go's encoding of `original` decodes to the JSON of the same object (as
    /// k8s-openapi reads and writes it), which encodes back to `original`.
    fn round_trip<P, J>(api_version: &str, kind: &str, original: P) -> Value
    where
        P: prost::Message + Default + PartialEq + Debug,
        J: Serialize + DeserializeOwned,
    {
        let body = envelope(api_version, kind, original.encode_to_vec());
        let json = decode(&body).unwrap();
        let typed: J = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&typed).unwrap(),
            json,
            "every field has its JSON name and type"
        );
        let encoded = encode(&json).unwrap();
        let unknown = Unknown::decode(encoded.strip_prefix(MAGIC).unwrap()).unwrap();
        let type_meta = unknown.type_meta.unwrap();
        assert_eq!(type_meta.api_version.as_deref(), Some(api_version));
        assert_eq!(type_meta.kind.as_deref(), Some(kind));
        assert_eq!(
            P::decode(unknown.raw.unwrap().as_slice()).unwrap(),
            original
        );
        json
    }

    #[test]
    fn leases_round_trip() {
        let lease = coordination::Lease {
            metadata: object_meta(),
            spec: Some(coordination::LeaseSpec {
                holder_identity: s("node-a_4f2c"),
                lease_duration_seconds: Some(15),
                acquire_time: micro_time(),
                renew_time: micro_time(),
                lease_transitions: Some(2),
                strategy: s("OldestEmulationVersion"),
                preferred_holder: s("node-b"),
            }),
        };
        let json = round_trip::<_, k8s_openapi::api::coordination::v1::Lease>(
            "coordination.k8s.io/v1",
            "Lease",
            lease.clone(),
        );
        assert_eq!(json["spec"]["renewTime"], "2023-11-14T22:13:21.123456Z");
        assert_eq!(
            json["metadata"]["creationTimestamp"],
            "2023-11-14T22:13:20Z"
        );
        let list = coordination::LeaseList {
            metadata: Some(meta::ListMeta {
                self_link: s(""),
                resource_version: s("9"),
                r#continue: s("next"),
                remaining_item_count: Some(4),
            }),
            items: vec![lease.clone(), lease],
        };
        // The items' fields are checked above (k8s-openapi's List writes their kind).
        let json = round_trip::<_, Value>(
            "coordination.k8s.io/v1",
            "LeaseList",
            // The empty selfLink is absent in JSON and so in the encoding.
            coordination::LeaseList {
                metadata: Some(meta::ListMeta {
                    self_link: None,
                    ..list.metadata.clone().unwrap()
                }),
                ..list
            },
        );
        let list_meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta =
            serde_json::from_value(json["metadata"].clone()).unwrap();
        assert_eq!(serde_json::to_value(list_meta).unwrap(), json["metadata"]);
        assert!(json["items"][1].get("kind").is_none(), "as Go lists them");
    }

    /// The field numbers of k8s.io/api coordination/v1beta1 `generated.proto`.
    #[test]
    fn lease_candidates_round_trip() {
        let candidate = coordination_beta::LeaseCandidate {
            metadata: object_meta(),
            spec: Some(coordination_beta::LeaseCandidateSpec {
                lease_name: s("kube-scheduler"),
                ping_time: micro_time(),
                renew_time: Some(meta::MicroTime {
                    seconds: Some(1_700_000_002),
                    nanos: Some(5_000),
                }),
                binary_version: s("1.33.0"),
                emulation_version: s("1.32.0"),
                strategy: s("OldestEmulationVersion"),
            }),
        };
        let json = round_trip::<_, k8s_openapi::api::coordination::v1beta1::LeaseCandidate>(
            "coordination.k8s.io/v1beta1",
            "LeaseCandidate",
            candidate.clone(),
        );
        assert_eq!(
            json["spec"],
            serde_json::json!({
                "leaseName": "kube-scheduler",
                "pingTime": "2023-11-14T22:13:21.123456Z",
                "renewTime": "2023-11-14T22:13:22.000005Z",
                "binaryVersion": "1.33.0",
                "emulationVersion": "1.32.0",
                "strategy": "OldestEmulationVersion",
            })
        );
        let list = coordination_beta::LeaseCandidateList {
            metadata: Some(meta::ListMeta {
                self_link: None,
                resource_version: s("9"),
                r#continue: None,
                remaining_item_count: None,
            }),
            items: vec![candidate.clone(), candidate],
        };
        let json =
            round_trip::<_, Value>("coordination.k8s.io/v1beta1", "LeaseCandidateList", list);
        assert_eq!(json["items"][1]["spec"]["binaryVersion"], "1.33.0");
    }

    #[test]
    fn configmaps_round_trip() {
        let mut binary = BTreeMap::new();
        binary.insert("blob".to_string(), vec![0u8, 159, 146, 150]);
        let configmap = core::ConfigMap {
            metadata: object_meta(),
            immutable: Some(false),
            data: strings(&[("a", "b"), ("config.yaml", "x: 1\n")]),
            binary_data: binary,
        };
        let json =
            round_trip::<_, k8s_openapi::api::core::v1::ConfigMap>("v1", "ConfigMap", configmap);
        assert_eq!(json["binaryData"]["blob"], "AJ+Slg==");
        assert_eq!(json["immutable"], false, "a pointer's false is kept");
    }

    #[test]
    fn endpoints_round_trip() {
        let address = core::EndpointAddress {
            ip: s("10.0.0.1"),
            hostname: s("a"),
            node_name: s("node-a"),
            target_ref: object_reference("pod-a"),
        };
        let endpoints = core::Endpoints {
            metadata: object_meta(),
            subsets: vec![core::EndpointSubset {
                addresses: vec![address.clone()],
                not_ready_addresses: vec![address],
                ports: vec![core::EndpointPort {
                    name: s("https"),
                    port: Some(443),
                    protocol: s("TCP"),
                    app_protocol: s("kubernetes.io/h2c"),
                }],
            }],
        };
        round_trip::<_, k8s_openapi::api::core::v1::Endpoints>("v1", "Endpoints", endpoints);
    }

    #[test]
    fn core_events_round_trip() {
        let event = core::Event {
            metadata: object_meta(),
            involved_object: object_reference("kube-scheduler"),
            reason: s("LeaderElection"),
            message: s("node-a became leader"),
            source: Some(core::EventSource {
                component: s("kube-scheduler"),
                host: s("node-a"),
            }),
            first_timestamp: time(),
            last_timestamp: time(),
            count: Some(2),
            r#type: s("Normal"),
            event_time: micro_time(),
            series: Some(core::EventSeries {
                count: Some(2),
                last_observed_time: micro_time(),
            }),
            action: s("Leading"),
            related: object_reference("other"),
            reporting_component: s("kube-scheduler"),
            reporting_instance: s("node-a"),
        };
        round_trip::<_, k8s_openapi::api::core::v1::Event>("v1", "Event", event);
    }

    #[test]
    fn events_v1_events_round_trip() {
        let event = events::Event {
            metadata: object_meta(),
            event_time: micro_time(),
            series: Some(events::EventSeries {
                count: Some(2),
                last_observed_time: micro_time(),
            }),
            reporting_controller: s("kube-scheduler"),
            reporting_instance: s("node-a"),
            action: s("Leading"),
            reason: s("LeaderElection"),
            regarding: object_reference("kube-scheduler"),
            related: object_reference("other"),
            note: s("node-a became leader"),
            r#type: s("Normal"),
            deprecated_source: Some(core::EventSource {
                component: s("kube-scheduler"),
                host: s("node-a"),
            }),
            deprecated_first_timestamp: time(),
            deprecated_last_timestamp: time(),
            deprecated_count: Some(2),
        };
        round_trip::<_, k8s_openapi::api::events::v1::Event>("events.k8s.io/v1", "Event", event);
    }

    #[test]
    fn status_and_delete_options_round_trip() {
        let status = meta::Status {
            metadata: Some(meta::ListMeta::default()),
            status: s("Failure"),
            message: s("configmaps \"x\" already exists"),
            reason: s("AlreadyExists"),
            details: Some(meta::StatusDetails {
                name: s("x"),
                group: s("g"),
                kind: s("configmaps"),
                uid: s("u"),
                causes: vec![meta::StatusCause {
                    reason: s("FieldValueInvalid"),
                    message: s("bad"),
                    field: s("metadata.name"),
                }],
                retry_after_seconds: Some(1),
            }),
            code: Some(409),
        };
        round_trip::<_, k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>(
            "v1", "Status", status,
        );
        let options = meta::DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Some(meta::Preconditions {
                uid: s("u"),
                resource_version: s("3"),
            }),
            orphan_dependents: Some(false),
            propagation_policy: s("Background"),
            dry_run: vec!["All".into()],
            ignore_store_read_error_with_cluster_breaking_potential: None,
        };
        round_trip::<_, k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(
            "v1",
            "DeleteOptions",
            options,
        );
    }

    /// What kubectl 1.32 sends for `kubectl create configmap x --from-literal=a=b`.
    const KUBECTL_CREATE_CONFIGMAP: &[u8] = b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09ConfigMap\x12\x1b\x0a\x11\x0a\x01x\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x06\x0a\x01a\x12\x01b\x1a\x00\x22\x00";

    #[test]
    fn kubectl_bodies_decode_as_go_would() {
        let json = decode(KUBECTL_CREATE_CONFIGMAP).unwrap();
        // Go's zero values (the empty strings, the zero creationTimestamp) are absent.
        assert_eq!(
            json,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": "x"}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn garbled_bodies_are_refused_without_panicking() {
        let configmaps = Resource::find("", "v1", "configmaps").unwrap();
        let err = decode_body(configmaps, br#"{"metadata":{}}"#).unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: provided data does not appear to be a protobuf message, expected prefix [107, 56, 115, 0]"
        );
        // Every truncation, and every byte flipped, of a valid body.
        let body = KUBECTL_CREATE_CONFIGMAP;
        for end in 0..body.len() {
            let _ = decode_body(configmaps, &body[..end]);
        }
        for i in 4..body.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut garbled = body.to_vec();
                garbled[i] ^= flip;
                let _ = decode_body(configmaps, &garbled);
            }
        }
        let truncated = decode_body(configmaps, &body[..body.len() - 3]).unwrap_err();
        assert!(
            truncated.message.ends_with("proto: unexpected EOF"),
            "{}",
            truncated.message
        );
        let unknown_kind = envelope("apps/v1", "Deployment", vec![]);
        assert!(decode_body(configmaps, &unknown_kind)
            .unwrap_err()
            .message
            .contains("no kind \"Deployment\" is registered for version \"apps/v1\""));
    }

    #[test]
    fn accept_headers() {
        assert!(preferred(
            "application/vnd.kubernetes.protobuf,application/json"
        ));
        assert!(preferred("application/vnd.kubernetes.protobuf"));
        assert!(!preferred(
            "application/json, application/vnd.kubernetes.protobuf"
        ));
        assert!(!preferred(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!preferred(""));
        assert!(is_protobuf(
            "application/vnd.kubernetes.protobuf; charset=utf-8"
        ));
    }
}
