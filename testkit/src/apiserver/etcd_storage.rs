//! Storage in etcd, laid out as kube-apiserver lays it out: one key per object,
//! `<prefix>/<storage path>/<namespace>/<name>`, and the object's resourceVersion is
//! the key's mod revision. Writes are transactions comparing that revision, lists
//! read at one store revision, and watches are etcd watches from resourceVersion + 1,
//! so several servers over one etcd cluster serve one consistent API.
//!
//! Values are the objects' JSON (kube-apiserver writes protobuf for built-in kinds;
//! the layout and the revisions are the same).

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse, WatchOptions, WatchStream,
};
use futures::stream;
use serde_json::Value;

use super::storage::{
    with_rv, without_rv, EventKind, EventStream, Storage, StorageError, StoredEvent,
};

/// How long one etcd request may take before the API request fails (kube-apiserver
/// answers a ServerTimeout then too).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Objects in etcd under a key prefix.
pub(crate) struct EtcdStorage {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for EtcdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStorage")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("etcd: {e}"))
}

async fn timed<T>(
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StorageError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| unavailable("request timed out"))?
        .map_err(unavailable)
}

impl EtcdStorage {
    /// Connects to `endpoints` and checks that etcd answers.
    ///
    /// # Errors
    ///
    /// When no endpoint answers within a few seconds.
    pub async fn connect(endpoints: &[String], prefix: &str) -> io::Result<Self> {
        let cannot = |e: &dyn std::fmt::Display| {
            io::Error::other(format!(
                "test API server cannot reach etcd at {}: {e}",
                endpoints.join(",")
            ))
        };
        // The crate's etcd connection moves to another member when one stops answering,
        // as kube-apiserver's client does; etcd-client's own balancing keeps sending
        // requests to a dead member, so an API server would fail with it.
        let options = leaderelection::lock::etcd::EtcdOptions::new()
            .connect_timeout(REQUEST_TIMEOUT)
            .request_timeout(REQUEST_TIMEOUT);
        let client = leaderelection::lock::etcd::connect(endpoints, &options)
            .await
            .map_err(|e| cannot(&e))?;
        let storage = Self {
            client,
            prefix: format!("{}/", prefix.trim_end_matches('/')),
        };
        timed(storage.client.clone().get(storage.prefix.clone(), None))
            .await
            .map_err(|e| cannot(&format!("{e:?}")))?;
        Ok(storage)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn decode(&self, kv: &KeyValue, rv: i64) -> Result<Value, StorageError> {
        let object: Value = serde_json::from_slice(kv.value()).map_err(|e| {
            StorageError::Corrupt(format!(
                "the value at {:?} in etcd is not JSON: {e}",
                String::from_utf8_lossy(kv.key())
            ))
        })?;
        Ok(with_rv(object, u64::try_from(rv).unwrap_or(0)))
    }

    fn encode(object: Value) -> Vec<u8> {
        without_rv(object).to_string().into_bytes()
    }

    /// A write transaction: `then` when `compare` holds, else a read of `key` to tell
    /// why not.
    async fn write(&self, key: &str, compare: Compare, then: TxnOp) -> Result<i64, StorageError> {
        let txn = Txn::new()
            .when([compare])
            .and_then([then])
            .or_else([TxnOp::get(key, None)]);
        let response = timed(self.client.clone().txn(txn)).await?;
        if response.succeeded() {
            return Ok(response.header().map_or(0, |h| h.revision()));
        }
        let exists = response.op_responses().iter().any(|op| match op {
            TxnOpResponse::Get(get) => !get.kvs().is_empty(),
            _ => false,
        });
        Err(if exists {
            StorageError::Conflict
        } else {
            StorageError::NotFound
        })
    }
}

#[async_trait]
impl Storage for EtcdStorage {
    async fn get(&self, key: &str) -> Result<Option<Value>, StorageError> {
        let response = timed(self.client.clone().get(self.key(key), None)).await?;
        response
            .kvs()
            .first()
            .map(|kv| self.decode(kv, kv.mod_revision()))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Value>, u64), StorageError> {
        let options = GetOptions::new().with_prefix();
        let response = timed(self.client.clone().get(self.key(prefix), Some(options))).await?;
        let rv = response.header().map_or(0, |h| h.revision());
        let items = response
            .kvs()
            .iter()
            .map(|kv| self.decode(kv, kv.mod_revision()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((items, u64::try_from(rv).unwrap_or(0)))
    }

    async fn create(&self, key: &str, object: Value) -> Result<Value, StorageError> {
        let full = self.key(key);
        let compare = Compare::create_revision(full.clone(), CompareOp::Equal, 0);
        let put = TxnOp::put(full.clone(), Self::encode(object.clone()), None);
        match self.write(&full, compare, put).await {
            Ok(rv) => Ok(with_rv(object, u64::try_from(rv).unwrap_or(0))),
            Err(StorageError::Conflict) => Err(StorageError::AlreadyExists),
            Err(e) => Err(e),
        }
    }

    async fn update(&self, key: &str, object: Value, expected: u64) -> Result<Value, StorageError> {
        let full = self.key(key);
        let expected = i64::try_from(expected).map_err(|_| StorageError::Conflict)?;
        let compare = Compare::mod_revision(full.clone(), CompareOp::Equal, expected);
        let put = TxnOp::put(full.clone(), Self::encode(object.clone()), None);
        let rv = self.write(&full, compare, put).await?;
        Ok(with_rv(object, u64::try_from(rv).unwrap_or(0)))
    }

    async fn delete(&self, key: &str, expected: u64) -> Result<Value, StorageError> {
        let full = self.key(key);
        let expected = i64::try_from(expected).map_err(|_| StorageError::Conflict)?;
        let compare = Compare::mod_revision(full.clone(), CompareOp::Equal, expected);
        let options = DeleteOptions::new().with_prev_key();
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::delete(full.clone(), Some(options))])
            .or_else([TxnOp::get(full.clone(), None)]);
        let response = timed(self.client.clone().txn(txn)).await?;
        let rv = response.header().map_or(0, |h| h.revision());
        for op in response.op_responses() {
            match op {
                TxnOpResponse::Delete(deleted) if response.succeeded() => {
                    if let Some(prev) = deleted.prev_kvs().first() {
                        return self.decode(prev, rv);
                    }
                }
                TxnOpResponse::Get(get) if !get.kvs().is_empty() => {
                    return Err(StorageError::Conflict)
                }
                _ => {}
            }
        }
        Err(StorageError::NotFound)
    }

    async fn watch(&self, prefix: &str, after: u64) -> Result<EventStream, StorageError> {
        let start = i64::try_from(after).map_err(|_| StorageError::Expired {
            requested: after,
            oldest: 0,
        })? + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_prev_key();
        let watch = timed(self.client.clone().watch(self.key(prefix), Some(options))).await?;
        let state = Watching {
            watch,
            pending: VecDeque::new(),
            prefix: self.prefix.clone(),
            after,
            done: false,
        };
        Ok(Box::pin(stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })))
    }
}

/// An etcd watch turned into a stream of stored events.
struct Watching {
    watch: WatchStream,
    pending: VecDeque<StoredEvent>,
    prefix: String,
    after: u64,
    done: bool,
}

impl Watching {
    async fn next(&mut self) -> Option<Result<StoredEvent, StorageError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let response = match self.watch.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return None,
                Err(e) => {
                    self.done = true;
                    return Some(Err(unavailable(e)));
                }
            };
            if response.canceled() {
                self.done = true;
                let compacted = response.compact_revision();
                return Some(Err(if compacted > 0 {
                    StorageError::Expired {
                        requested: self.after,
                        oldest: u64::try_from(compacted).unwrap_or(0),
                    }
                } else {
                    unavailable(format!("watch canceled: {}", response.cancel_reason()))
                }));
            }
            for event in response.events() {
                match self.convert(event) {
                    Ok(Some(event)) => self.pending.push_back(event),
                    Ok(None) => {}
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    fn convert(&self, event: &etcd_client::Event) -> Result<Option<StoredEvent>, StorageError> {
        let Some(kv) = event.kv() else {
            return Ok(None);
        };
        let key = String::from_utf8_lossy(kv.key());
        let key = key.strip_prefix(&self.prefix).unwrap_or(&key).to_string();
        let rv = kv.mod_revision();
        let decode = |kv: &KeyValue, rv: i64| -> Result<Value, StorageError> {
            let object: Value = serde_json::from_slice(kv.value()).map_err(|e| {
                StorageError::Corrupt(format!("the value at {key:?} in etcd is not JSON: {e}"))
            })?;
            Ok(with_rv(object, u64::try_from(rv).unwrap_or(0)))
        };
        let prev = event
            .prev_kv()
            .map(|p| decode(p, p.mod_revision()))
            .transpose()?;
        let (kind, object) = match event.event_type() {
            EventType::Delete => {
                // A deletion's kv has no value: the object is the last one stored,
                // with the deletion's revision.
                let Some(prev_kv) = event.prev_kv() else {
                    return Ok(None);
                };
                (EventKind::Deleted, decode(prev_kv, rv)?)
            }
            EventType::Put if kv.create_revision() == kv.mod_revision() => {
                (EventKind::Added, decode(kv, rv)?)
            }
            EventType::Put => (EventKind::Modified, decode(kv, rv)?),
        };
        Ok(Some(StoredEvent {
            kind,
            key,
            object,
            prev,
            rv: u64::try_from(rv).unwrap_or(0),
        }))
    }
}
