//! The REST verbs on one kind: get, list, create, update, patch, delete.
//!
//! This is kube-apiserver's generic registry in small: system fields set on create and
//! kept on update, resourceVersion preconditions, a guaranteed-update loop that
//! retries an unconditional write when it races, and the kind's validation.

use rand::Rng;
use serde_json::{json, Map, Value};

use super::apply;
use super::patch::{self, PatchKind};
use super::resources::Resource;
use super::selector::Selector;
use super::status::{ApiError, Cause};
use super::storage::{rv_of, Storage, StorageError};
use super::validation;

/// How often an update that raced with another write is tried again.
const UPDATE_ATTEMPTS: usize = 16;

/// The kind, namespace and name a request addresses.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `dryRun=All`: validate and answer, but store nothing.
    pub dry_run: bool,
    /// The `fieldManager` query parameter.
    pub field_manager: Option<String>,
    /// The `force` query parameter.
    pub force: Option<String>,
    /// The User-Agent, which names the manager of a write without `fieldManager`.
    pub user_agent: Option<String>,
}

impl Target {
    fn namespace(&self) -> Result<&str, ApiError> {
        self.namespace
            .as_deref()
            .ok_or_else(ApiError::method_not_allowed)
    }

    fn name(&self) -> Result<&str, ApiError> {
        self.name
            .as_deref()
            .ok_or_else(ApiError::method_not_allowed)
    }

    fn key(&self) -> Result<String, ApiError> {
        Ok(self.resource.key(self.namespace()?, self.name()?))
    }

    /// Who a write is recorded for in `managedFields`.
    fn manager(&self) -> String {
        match &self.field_manager {
            Some(manager) => manager.clone(),
            None => apply::manager_from_user_agent(self.user_agent.as_deref().unwrap_or("")),
        }
    }

    fn storage_error(&self, name: &str) -> impl Fn(StorageError) -> ApiError + '_ {
        let name = name.to_string();
        move |e| ApiError::served(self.resource, &name, e)
    }
}

pub(crate) async fn get(storage: &dyn Storage, target: &Target) -> Result<Value, ApiError> {
    let name = target.name()?;
    match storage
        .get(&target.key()?)
        .await
        .map_err(target.storage_error(name))?
    {
        Some(obj) => Ok(target.resource.served(obj)),
        None => Err(ApiError::not_found(target.resource, name)),
    }
}

pub(crate) async fn list(
    storage: &dyn Storage,
    target: &Target,
    fields: &Selector,
    labels: &Selector,
) -> Result<Value, ApiError> {
    let prefix = target.resource.prefix(target.namespace.as_deref());
    let (items, rv) = storage
        .list(&prefix)
        .await
        .map_err(target.storage_error(""))?;
    let items: Vec<Value> = items
        .into_iter()
        .map(|obj| target.resource.served(obj))
        .filter(|obj| fields.matches(obj) && labels.matches(obj))
        .map(|mut obj| {
            // kube-apiserver leaves kind and apiVersion off list items.
            if let Some(map) = obj.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            obj
        })
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    // KEP-5866: a list filtered by a shard selector says so, echoing the selector,
    // which is how a client tells it from the full list of a server without them.
    if let Some(shards) = fields.shards().or(labels.shards()) {
        metadata["shardInfo"] = json!({"selector": shards.text()});
    }
    Ok(json!({
        "kind": format!("{}List", target.resource.kind),
        "apiVersion": target.resource.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

pub(crate) async fn create(
    storage: &dyn Storage,
    target: &Target,
    body: &[u8],
) -> Result<Value, ApiError> {
    let namespace = target.namespace()?;
    if target.name.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    check_field_manager(target, "CreateOptions")?;
    let mut obj = validation::decode(target.resource, body)?;
    check_namespace(&mut obj, namespace)?;
    // kube-apiserver's etcd store refuses this with a 500, as here.
    if meta_str(&obj, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if meta_str(&obj, "name").unwrap_or("").is_empty() {
        if let Some(prefix) = meta_str(&obj, "generateName").filter(|p| !p.is_empty()) {
            let name = generate_name(prefix);
            meta_mut(&mut obj).insert("name".into(), Value::from(name));
        }
    }
    prepare_create(&mut obj);
    apply::record_update(target.resource, None, &mut obj, &target.manager());
    validation::validate(target.resource, &obj, None)?;
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    if target.dry_run {
        return Ok(target.resource.served(obj));
    }
    let key = target.resource.key(namespace, &name);
    let stored = storage
        .create(&key, obj)
        .await
        .map_err(target.storage_error(&name))?;
    Ok(target.resource.served(stored))
}

/// A PUT: returns the object and whether it was created.
pub(crate) async fn update(
    storage: &dyn Storage,
    target: &Target,
    body: &[u8],
) -> Result<(Value, bool), ApiError> {
    check_field_manager(target, "UpdateOptions")?;
    let new = validation::decode(target.resource, body)?;
    let create = target.resource.create_on_update;
    let manager = target.manager();
    guaranteed_update(storage, target, create, Some(&manager), |_| Ok(new.clone())).await
}

/// A PATCH: returns the object and whether it was created (only an apply creates).
pub(crate) async fn patch(
    storage: &dyn Storage,
    target: &Target,
    content_type: &str,
    body: &[u8],
) -> Result<(Value, bool), ApiError> {
    let kind = PatchKind::from_content_type(content_type).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {content_type:?})"),
        )
    })?;
    check_field_manager(target, "PatchOptions")?;
    if kind == PatchKind::Apply {
        return apply_patch(storage, target, body).await;
    }
    if target.force.is_some() {
        return Err(patch_options_invalid(Cause::forbidden(
            "force",
            "may not be specified for non-apply patch",
        )));
    }
    let patch_doc: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let resource = target.resource;
    let manager = target.manager();
    guaranteed_update(storage, target, false, Some(&manager), |existing| {
        let Some(existing) = existing else {
            return Err(ApiError::not_found(
                resource,
                target.name.as_deref().unwrap_or(""),
            ));
        };
        // Patches apply to the object as the client sees it, in this version.
        let mut obj = resource.served(existing.clone());
        patch::apply(kind, &mut obj, &patch_doc).map_err(patch::PatchError::into_api_error)?;
        let obj = resource.stored(obj);
        validation::check_decoded(resource, &obj)?;
        Ok(obj)
    })
    .await
}

/// A server-side apply patch: creates the object when absent, else merges the
/// configuration into it with field ownership (see [`apply`]).
async fn apply_patch(
    storage: &dyn Storage,
    target: &Target,
    body: &[u8],
) -> Result<(Value, bool), ApiError> {
    let manager = match target.field_manager.as_deref() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => {
            return Err(patch_options_invalid(Cause::required(
                "fieldManager",
                "is required for apply patch",
            )))
        }
    };
    let force = match target.force.as_deref() {
        None | Some("false" | "0" | "") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid value for force: {other:?}: must be true or false"
            )))
        }
    };
    let resource = target.resource;
    let config = decode_apply(resource, body)?;
    guaranteed_update(storage, target, true, None, |existing| {
        let live = existing.map(|e| resource.served(e.clone()));
        let merged = apply::apply(resource, live.as_ref(), &config, &manager, force)?;
        let obj = resource.stored(merged);
        validation::check_decoded(resource, &obj)?;
        Ok(obj)
    })
    .await
}

/// An apply configuration: YAML (JSON is YAML too) naming this kind and version.
fn decode_apply(resource: &Resource, body: &[u8]) -> Result<Value, ApiError> {
    let config: Value = match serde_json::from_slice(body) {
        Ok(config) => config,
        Err(_) => serde_norway::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
    };
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the apply configuration is not an object",
        ));
    }
    let api_version = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if api_version != resource.api_version() {
        return Err(ApiError::bad_request(format!(
            "Incorrect version specified in apply patch. Specified patch version: {api_version}, expected: {}",
            resource.api_version()
        )));
    }
    let kind = config.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != resource.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the apply patch ({kind:?}) does not match the expected kind ({})",
            resource.kind
        )));
    }
    if !config
        .pointer("/metadata/managedFields")
        .is_none_or(Value::is_null)
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    validation::check_decoded(resource, &resource.stored(config.clone()))?;
    Ok(config)
}

/// kube-apiserver's 422 for bad write options (`CreateOptions`, `UpdateOptions`,
/// `PatchOptions`) in the query.
fn options_invalid(kind: &str, causes: &[Cause]) -> ApiError {
    let listed: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let summary = match listed.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    ApiError::new(
        422,
        "Invalid",
        format!("{kind}.meta.k8s.io \"\" is invalid: {summary}"),
    )
    .with_details(json!({
        "group": "meta.k8s.io",
        "kind": kind,
        "causes": causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect::<Vec<_>>(),
    }))
}

fn patch_options_invalid(cause: Cause) -> ApiError {
    options_invalid("PatchOptions", &[cause])
}

/// `ValidateFieldManager`: at most 128 bytes, printable characters only.
fn check_field_manager(target: &Target, kind: &str) -> Result<(), ApiError> {
    let Some(manager) = target.field_manager.as_deref() else {
        return Ok(());
    };
    let mut causes = Vec::new();
    if manager.len() > 128 {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: "fieldManager".into(),
            message: "Too long: may not be more than 128 bytes".into(),
        });
    }
    for (at, c) in manager.char_indices().filter(|(_, c)| c.is_control()) {
        causes.push(Cause::invalid(
            "fieldManager",
            &Value::from(manager),
            &format!("invalid character U+{:04X} (at position {at})", c as u32),
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(options_invalid(kind, &causes))
    }
}

/// Reads, changes and writes with a resourceVersion precondition until the write
/// lands, as kube-apiserver's `GuaranteedUpdate`. `change` gets the stored object
/// (None when absent) and returns the new one; when the new one carries a
/// resourceVersion, a mismatch is a 409 Conflict and no retry happens. With a
/// `manager`, the write is recorded in `managedFields` as an Update by it.
async fn guaranteed_update(
    storage: &dyn Storage,
    target: &Target,
    create_allowed: bool,
    manager: Option<&str>,
    change: impl Fn(Option<&Value>) -> Result<Value, ApiError>,
) -> Result<(Value, bool), ApiError> {
    let namespace = target.namespace()?;
    let name = target.name()?;
    let key = target.key()?;
    let resource = target.resource;
    for _ in 0..UPDATE_ATTEMPTS {
        let existing = storage
            .get(&key)
            .await
            .map_err(target.storage_error(name))?;
        let mut obj = change(existing.as_ref())?;
        check_namespace(&mut obj, namespace)?;
        match meta_str(&obj, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            Some(_) => {}
            None => {
                meta_mut(&mut obj).insert("name".into(), Value::from(name));
            }
        }
        if let Some(manager) = manager {
            apply::record_update(resource, existing.as_ref(), &mut obj, manager);
        }
        let Some(existing) = existing else {
            if !create_allowed {
                return Err(ApiError::not_found(resource, name));
            }
            // kube-apiserver takes the body's uid as a precondition, checked against
            // the empty object it finds: a PUT carrying the uid of a deleted object
            // fails instead of creating a new one.
            if let Some(uid) = meta_str(&obj, "uid").filter(|u| !u.is_empty()) {
                return Err(ApiError::conflict(
                    resource,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: "
                    ),
                ));
            }
            meta_mut(&mut obj).remove("resourceVersion");
            prepare_create(&mut obj);
            validation::validate(resource, &obj, None)?;
            if target.dry_run {
                return Ok((resource.served(obj), true));
            }
            match storage.create(&key, obj).await {
                Ok(stored) => return Ok((resource.served(stored), true)),
                Err(StorageError::AlreadyExists) => continue,
                Err(e) => return Err(ApiError::served(resource, name, e)),
            }
        };
        let current = rv_of(&existing);
        let requested = meta_str(&obj, "resourceVersion").unwrap_or("").to_string();
        if !requested.is_empty() && requested != current.to_string() {
            return Err(ApiError::modified(resource, name));
        }
        let existing_uid = meta_str(&existing, "uid").unwrap_or("").to_string();
        if let Some(uid) = meta_str(&obj, "uid").filter(|u| !u.is_empty() && *u != existing_uid) {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {existing_uid}"),
            ));
        }
        // System fields stay as they were.
        for field in ["uid", "creationTimestamp"] {
            match existing.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta_mut(&mut obj).insert(field.into(), v.clone()),
                None => meta_mut(&mut obj).remove(field),
            };
        }
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::from(current.to_string()));
        validation::validate(resource, &obj, Some(&existing))?;
        // A write that changes nothing is not made, and the resourceVersion stays.
        if obj == existing || target.dry_run {
            return Ok((resource.served(obj), false));
        }
        match storage.update(&key, obj, current).await {
            Ok(stored) => return Ok((resource.served(stored), false)),
            Err(StorageError::Conflict | StorageError::NotFound) => continue,
            Err(e) => return Err(ApiError::served(resource, name, e)),
        }
    }
    Err(ApiError::modified(resource, name))
}

/// A DELETE, with the preconditions of the DeleteOptions body if any.
pub(crate) async fn delete(
    storage: &dyn Storage,
    target: &Target,
    body: &[u8],
) -> Result<Value, ApiError> {
    let name = target.name()?;
    let key = target.key()?;
    let resource = target.resource;
    let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let want_rv = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str);
    let want_uid = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str);
    // DELETE carries dryRun in its DeleteOptions body rather than in the query.
    let dry_run = target.dry_run
        || options
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| !d.is_empty());
    for _ in 0..UPDATE_ATTEMPTS {
        let existing = storage
            .get(&key)
            .await
            .map_err(target.storage_error(name))?
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let current = rv_of(&existing);
        let uid = meta_str(&existing, "uid").unwrap_or("").to_string();
        if let Some(want) = want_rv.filter(|w| *w != current.to_string()) {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!("Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {current}"),
            ));
        }
        if let Some(want) = want_uid.filter(|w| *w != uid) {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            ));
        }
        if !dry_run {
            match storage.delete(&key, current).await {
                Ok(_) => {}
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(ApiError::served(resource, name, e)),
            }
        }
        let mut details = Map::new();
        details.insert("name".into(), Value::from(name));
        if !resource.group.is_empty() {
            details.insert("group".into(), Value::from(resource.group));
        }
        details.insert("kind".into(), Value::from(resource.plural));
        details.insert("uid".into(), Value::from(uid));
        return Ok(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }));
    }
    Err(ApiError::modified(resource, name))
}

/// Fills in the namespace from the URL, or refuses a body naming another one.
fn check_namespace(obj: &mut Value, namespace: &str) -> Result<(), ApiError> {
    match meta_str(obj, "namespace") {
        Some(ns) if !ns.is_empty() && ns != namespace => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta_mut(obj).insert("namespace".into(), Value::from(namespace));
            Ok(())
        }
    }
}

/// The system fields of a new object, as `rest.BeforeCreate` sets them.
fn prepare_create(obj: &mut Value) {
    let meta = meta_mut(obj);
    meta.insert("uid".into(), Value::from(new_uid()));
    meta.insert(
        "creationTimestamp".into(),
        Value::from(
            jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        ),
    );
    for field in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        meta.remove(field);
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("made an object above");
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("made an object above")
}

/// A random (version 4) UUID.
fn new_uid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `generateName` plus five characters from the alphabet kube-apiserver uses.
fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    // kube-apiserver cuts the bytes; a str can only be cut between characters.
    let mut keep = prefix.len().min(63 - 5);
    while !prefix.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &prefix[..keep])
}

#[cfg(test)]
mod tests {
    use super::super::storage::MemoryStorage;
    use super::*;

    fn target(name: Option<&str>) -> Target {
        Target {
            resource: Resource::find("coordination.k8s.io", "v1", "leases").expect("served"),
            namespace: Some("ns".into()),
            name: name.map(Into::into),
            dry_run: false,
            field_manager: None,
            force: None,
            user_agent: None,
        }
    }

    /// Twenty operations, each adding 50 levels below the last: 1,000 levels, which
    /// overflowed a test thread's stack in the diff of managed fields.
    #[tokio::test]
    async fn a_json_patch_cannot_nest_the_object_past_what_the_server_recurses_through() {
        let s = MemoryStorage::new(100);
        create(&s, &target(None), br#"{"metadata":{"name":"a"},"spec":{}}"#)
            .await
            .unwrap();
        let mut nested = json!(1);
        for _ in 0..50 {
            nested = json!({ "a": nested });
        }
        let ops: Vec<Value> = (0..20)
            .map(|k| {
                let path = format!("/spec/x{}", "/a".repeat(k * 50));
                json!({"op": "add", "path": path, "value": nested})
            })
            .collect();
        let body = Value::Array(ops).to_string();
        let err = patch(
            &s,
            &target(Some("a")),
            "application/json-patch+json",
            body.as_bytes(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, 422, "{}", err.message);
        assert!(err.message.ends_with("more than 128"), "{}", err.message);
    }

    /// A prefix past the 58 bytes kept, cut inside a character.
    #[tokio::test]
    async fn a_long_generate_name_is_cut_on_a_character_boundary() {
        let s = MemoryStorage::new(100);
        let prefix = format!("a{}", "\u{e9}".repeat(30));
        let body = json!({"metadata": {"generateName": prefix}}).to_string();
        let err = create(&s, &target(None), body.as_bytes())
            .await
            .unwrap_err();
        assert_eq!(err.code, 422, "{}", err.message);
    }

    #[tokio::test]
    async fn create_update_patch_delete() {
        let s = MemoryStorage::new(100);
        let created = create(
            &s,
            &target(None),
            br#"{"metadata":{"name":"a"},"spec":{"holderIdentity":"x"}}"#,
        )
        .await
        .unwrap();
        assert_eq!(created["kind"], "Lease");
        assert_eq!(created["metadata"]["namespace"], "ns");
        assert_eq!(created["metadata"]["resourceVersion"], "1");
        assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
        let again = create(&s, &target(None), br#"{"metadata":{"name":"a"}}"#).await;
        assert_eq!(again.unwrap_err().reason, "AlreadyExists");

        let stale =
            br#"{"metadata":{"name":"a","resourceVersion":"7"},"spec":{"holderIdentity":"y"}}"#;
        assert_eq!(
            update(&s, &target(Some("a")), stale)
                .await
                .unwrap_err()
                .code,
            409
        );
        let fresh =
            br#"{"metadata":{"name":"a","resourceVersion":"1"},"spec":{"holderIdentity":"y"}}"#;
        let (updated, created_now) = update(&s, &target(Some("a")), fresh).await.unwrap();
        assert!(!created_now);
        assert_eq!(updated["metadata"]["resourceVersion"], "2");
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        assert_eq!(
            updated["metadata"]["creationTimestamp"],
            created["metadata"]["creationTimestamp"]
        );

        // The same content again is no write.
        let (same, _) = update(
            &s,
            &target(Some("a")),
            br#"{"metadata":{"name":"a"},"spec":{"holderIdentity":"y"}}"#,
        )
        .await
        .unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], "2");

        let (patched, _) = patch(
            &s,
            &target(Some("a")),
            "application/merge-patch+json",
            br#"{"spec":{"leaseTransitions":3}}"#,
        )
        .await
        .unwrap();
        assert_eq!(
            patched["spec"],
            json!({"holderIdentity": "y", "leaseTransitions": 3})
        );
        assert_eq!(patched["metadata"]["resourceVersion"], "3");

        let wrong = br#"{"preconditions":{"resourceVersion":"2"}}"#;
        assert_eq!(
            delete(&s, &target(Some("a")), wrong)
                .await
                .unwrap_err()
                .code,
            409
        );
        let done = delete(&s, &target(Some("a")), b"").await.unwrap();
        assert_eq!(done["status"], "Success");
        assert_eq!(get(&s, &target(Some("a"))).await.unwrap_err().code, 404);
        // Leases are created by a PUT to a missing name.
        let (_, created_now) = update(&s, &target(Some("b")), br#"{"metadata":{"name":"b"}}"#)
            .await
            .unwrap();
        assert!(created_now);
    }
}
