//! Object storage: the compare-and-swap primitives kube-apiserver's registry builds on,
//! and the in-memory implementation.
//!
//! Objects are JSON values keyed by `<storage path>/<namespace>/<name>`. Every write
//! takes the next value of one counter, which becomes the object's
//! `metadata.resourceVersion` (etcd's revision in etcd storage). Stored values carry no
//! resourceVersion; it is set on the way out, as kube-apiserver's etcd store does.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::{stream, Stream, StreamExt};
use serde_json::Value;
use tokio::sync::broadcast;

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StorageError {
    NotFound,
    AlreadyExists,
    /// The object's resourceVersion is not the expected one.
    Conflict,
    /// The requested resourceVersion is older than the kept history.
    Expired {
        requested: u64,
        oldest: u64,
    },
    /// The backend could not be reached.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Unavailable(String),
    /// A stored value is not a JSON object.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Corrupt(String),
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One change, in resourceVersion order.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    pub kind: EventKind,
    pub key: String,
    /// The object after the change (before it, for a deletion), with the event's
    /// resourceVersion.
    pub object: Value,
    /// The object before the change, when there was one.
    pub prev: Option<Value>,
    pub rv: u64,
}

pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<StoredEvent, StorageError>> + Send>>;

/// The primitives the REST handlers need; every write is a compare-and-swap.
#[async_trait]
pub(crate) trait Storage: Send + Sync + 'static {
    /// The object at `key`.
    async fn get(&self, key: &str) -> Result<Option<Value>, StorageError>;
    /// Every object under `prefix`, in key order, and the resourceVersion of that view.
    async fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StorageError>;
    /// Stores a new object; `AlreadyExists` when `key` is taken.
    async fn create(&self, key: &str, object: Value) -> Result<Value, StorageError>;
    /// Replaces the object if its resourceVersion is still `expected`.
    async fn update(&self, key: &str, object: Value, expected: u64) -> Result<Value, StorageError>;
    /// Deletes the object if its resourceVersion is still `expected`; returns it with
    /// the resourceVersion of the deletion.
    async fn delete(&self, key: &str, expected: u64) -> Result<Value, StorageError>;
    /// The changes under `prefix` after resourceVersion `after`, then live ones.
    async fn watch(&self, prefix: &str, after: u64) -> Result<EventStream, StorageError>;
}

/// Sets `metadata.resourceVersion`.
pub(crate) fn with_rv(mut object: Value, rv: u64) -> Value {
    if let Some(map) = object.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("resourceVersion".into(), Value::from(rv.to_string()));
        }
    }
    object
}

/// Removes `metadata.resourceVersion`, which storage keeps out of the stored value.
pub(crate) fn without_rv(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    object
}

/// The object's `metadata.resourceVersion`, 0 when absent or not a number.
pub(crate) fn rv_of(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Storage in process memory, with a bounded history of changes for watches.
#[derive(Debug)]
pub(crate) struct MemoryStorage {
    inner: Mutex<Inner>,
    events: broadcast::Sender<StoredEvent>,
}

#[derive(Debug)]
struct Inner {
    /// Key -> (object without resourceVersion, resourceVersion).
    objects: BTreeMap<String, (Value, u64)>,
    rv: u64,
    history: VecDeque<StoredEvent>,
    capacity: usize,
    /// The newest resourceVersion dropped from the history.
    compacted: u64,
}

impl MemoryStorage {
    /// Empty storage keeping the last `history` changes for watches that resume.
    pub fn new(history: usize) -> Self {
        let (events, _) = broadcast::channel(history.clamp(16, 4096));
        Self {
            inner: Mutex::new(Inner {
                objects: BTreeMap::new(),
                rv: 0,
                history: VecDeque::new(),
                capacity: history,
                compacted: 0,
            }),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-written (every
        // write is a single insert or remove), so the data is still sound.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, inner: &mut Inner, event: StoredEvent) {
        inner.history.push_back(event.clone());
        while inner.history.len() > inner.capacity {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted = old.rv;
            }
        }
        // No receiver is fine: nobody watches.
        let _ = self.events.send(event);
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<Value>, StorageError> {
        let inner = self.lock();
        Ok(inner
            .objects
            .get(key)
            .map(|(obj, rv)| with_rv(obj.clone(), *rv)))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StorageError> {
        let inner = self.lock();
        let items = inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, (obj, rv))| with_rv(obj.clone(), *rv))
            .collect();
        Ok((items, inner.rv))
    }

    async fn create(&self, key: &str, object: Value) -> Result<Value, StorageError> {
        let mut inner = self.lock();
        if inner.objects.contains_key(key) {
            return Err(StorageError::AlreadyExists);
        }
        inner.rv += 1;
        let rv = inner.rv;
        let object = without_rv(object);
        inner.objects.insert(key.to_string(), (object.clone(), rv));
        let object = with_rv(object, rv);
        let event = StoredEvent {
            kind: EventKind::Added,
            key: key.to_string(),
            object: object.clone(),
            prev: None,
            rv,
        };
        self.record(&mut inner, event);
        Ok(object)
    }

    async fn update(&self, key: &str, object: Value, expected: u64) -> Result<Value, StorageError> {
        let mut inner = self.lock();
        let prev = match inner.objects.get(key) {
            None => return Err(StorageError::NotFound),
            Some((_, rv)) if *rv != expected => return Err(StorageError::Conflict),
            Some((prev, rv)) => with_rv(prev.clone(), *rv),
        };
        inner.rv += 1;
        let rv = inner.rv;
        let object = without_rv(object);
        inner.objects.insert(key.to_string(), (object.clone(), rv));
        let object = with_rv(object, rv);
        let event = StoredEvent {
            kind: EventKind::Modified,
            key: key.to_string(),
            object: object.clone(),
            prev: Some(prev),
            rv,
        };
        self.record(&mut inner, event);
        Ok(object)
    }

    async fn delete(&self, key: &str, expected: u64) -> Result<Value, StorageError> {
        let mut inner = self.lock();
        match inner.objects.get(key) {
            None => return Err(StorageError::NotFound),
            Some((_, rv)) if *rv != expected => return Err(StorageError::Conflict),
            Some(_) => {}
        }
        let Some((prev, prev_rv)) = inner.objects.remove(key) else {
            return Err(StorageError::NotFound);
        };
        inner.rv += 1;
        let rv = inner.rv;
        let object = with_rv(prev.clone(), rv);
        let event = StoredEvent {
            kind: EventKind::Deleted,
            key: key.to_string(),
            object: object.clone(),
            prev: Some(with_rv(prev, prev_rv)),
            rv,
        };
        self.record(&mut inner, event);
        Ok(object)
    }

    async fn watch(&self, prefix: &str, after: u64) -> Result<EventStream, StorageError> {
        let inner = self.lock();
        if after < inner.compacted {
            return Err(StorageError::Expired {
                requested: after,
                oldest: inner.compacted + 1,
            });
        }
        let backlog: Vec<StoredEvent> = inner
            .history
            .iter()
            .filter(|e| e.rv > after && e.key.starts_with(prefix))
            .cloned()
            .collect();
        // Subscribing under the lock: no change falls between backlog and live events.
        let receiver = self.events.subscribe();
        drop(inner);
        let last = backlog.last().map_or(after, |e| e.rv);
        let prefix = prefix.to_string();
        let live = stream::unfold(Some(receiver), move |receiver| {
            let prefix = prefix.clone();
            async move {
                let mut receiver = receiver?;
                loop {
                    match receiver.recv().await {
                        Ok(event) if event.rv <= last || !event.key.starts_with(&prefix) => {}
                        Ok(event) => return Some((Ok(event), Some(receiver))),
                        // A watcher that falls this far behind is cut off, as
                        // kube-apiserver cuts off slow watchers; clients re-list.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((
                                Err(StorageError::Expired {
                                    requested: last,
                                    oldest: last + 1,
                                }),
                                None,
                            ));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(stream::iter(backlog.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn writes_are_compare_and_swap_on_one_counter() {
        let s = MemoryStorage::new(10);
        let a = s
            .create("leases/ns/a", json!({"metadata": {"name": "a"}}))
            .await
            .unwrap();
        assert_eq!(rv_of(&a), 1);
        assert_eq!(
            s.create("leases/ns/a", json!({})).await.unwrap_err(),
            StorageError::AlreadyExists
        );
        let b = s.create("leases/ns/b", json!({})).await.unwrap();
        assert_eq!(rv_of(&b), 2);
        assert_eq!(
            s.update("leases/ns/a", json!({}), 2).await.unwrap_err(),
            StorageError::Conflict
        );
        let a2 = s.update("leases/ns/a", json!({"x": 1}), 1).await.unwrap();
        assert_eq!(rv_of(&a2), 3);
        let (items, rv) = s.list("leases/ns/").await.unwrap();
        assert_eq!((items.len(), rv), (2, 3));
        let gone = s.delete("leases/ns/a", 3).await.unwrap();
        assert_eq!(rv_of(&gone), 4);
        assert_eq!(s.get("leases/ns/a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn watch_replays_history_then_follows_and_expires_when_compacted() {
        let s = MemoryStorage::new(2);
        for name in ["a", "b", "c"] {
            s.create(&format!("leases/ns/{name}"), json!({}))
                .await
                .unwrap();
        }
        assert_eq!(
            s.watch("leases/", 0).await.err(),
            Some(StorageError::Expired {
                requested: 0,
                oldest: 2
            })
        );
        let mut w = s.watch("leases/", 1).await.unwrap();
        s.create("leases/ns/d", json!({})).await.unwrap();
        s.create("other/ns/e", json!({})).await.unwrap();
        s.create("leases/ns/f", json!({})).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(w.next().await.unwrap().unwrap().rv);
        }
        assert_eq!(seen, vec![2, 3, 4, 6]);
    }
}
