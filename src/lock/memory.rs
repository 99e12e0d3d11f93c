//! An in-process lock: elections between tasks of one process, and the lock the
//! elector's own tests run on under tokio's paused clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{LeaseLock, LockEvent, Version, Versioned, WatchStream};
use crate::error::LockError;
use crate::record::LeaderElectionRecord;

const BACKEND: &str = "memory";

/// A shared map of records, one per election name, with a store-wide revision that
/// grows on every write (like etcd's), so versions double as fencing tokens.
///
/// Records are kept as JSON text, as real backends keep them, so a test can plant a
/// malformed one with [`put_raw`](Self::put_raw).
///
/// # Examples
///
/// ```
/// use leaderelection::{Config, LeaderElector, MemoryStore};
///
/// let store = MemoryStore::new();
/// let a = LeaderElector::new(store.lock("jobs"), Config::new("jobs").identity("a"))?;
/// let b = LeaderElector::new(store.lock("jobs"), Config::new("jobs").identity("b"))?;
/// # let _ = (a, b);
/// # Ok::<(), leaderelection::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

/// Events a watcher may fall behind by before its stream reports an error (as a
/// Kubernetes watch answers 410 Gone); the elector then reads afresh. Each watched
/// record holds a ring of this many slots, allocated up front: small, since an
/// elector only acts on the latest state (64 slots were 3.5 KiB per election, a
/// third of the heap of 10,000 elections).
const WATCH_BACKLOG: usize = 8;

type State = Option<(String, u64)>;

#[derive(Debug, Default)]
struct Inner {
    revision: u64,
    keys: HashMap<String, Key>,
}

#[derive(Debug)]
struct Key {
    current: State,
    /// True once anything was written under this name: from then on an absent record
    /// may have been deleted under a live holder.
    written: bool,
    // Every write is sent, none coalesced, as etcd and Kubernetes watches deliver them.
    // The channel exists only while someone watches, so that a process holding
    // thousands of elections keeps no ring for records that nobody watches.
    events: Option<broadcast::Sender<State>>,
}

impl Inner {
    fn key(&mut self, name: &str) -> &mut Key {
        self.keys.entry(name.to_owned()).or_insert_with(|| Key {
            current: None,
            written: false,
            events: None,
        })
    }

    fn write(&mut self, name: &str, text: Option<String>) -> u64 {
        self.revision += 1;
        let rev = self.revision;
        let key = self.key(name);
        key.current = text.map(|t| (t, rev));
        key.written = true;
        if let Some(events) = &key.events {
            // Sending fails only when nobody watches any more: free the ring.
            if events.send(key.current.clone()).is_err() {
                key.events = None;
            }
        }
        rev
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A lock on the record named `name`. Handles are cheap; each replica takes its
    /// own.
    pub fn lock(&self, name: impl Into<String>) -> MemoryLock {
        MemoryLock {
            store: self.clone(),
            name: name.into(),
        }
    }

    /// Stores `text` as the record of `name`, whatever it is, and returns its revision.
    pub fn put_raw(&self, name: &str, text: impl Into<String>) -> u64 {
        self.locked().write(name, Some(text.into()))
    }

    /// The stored text of `name`, if any.
    pub fn get_raw(&self, name: &str) -> Option<String> {
        self.locked()
            .key(name)
            .current
            .as_ref()
            .map(|(t, _)| t.clone())
    }

    /// Deletes the record of `name`.
    pub fn delete(&self, name: &str) {
        self.locked().write(name, None);
    }

    fn locked(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the map half-written: every write is one
        // `send_replace`. Keep serving after a poisoned lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle on one record of a [`MemoryStore`]. Watch is supported.
#[derive(Clone, Debug)]
pub struct MemoryLock {
    store: MemoryStore,
    name: String,
}

fn parse(text: &str, rev: u64) -> Result<Versioned, LockError> {
    LeaderElectionRecord::from_json(text)
        .map(|record| Versioned {
            record,
            version: rev.into(),
        })
        .map_err(|source| LockError::InvalidRecord {
            source,
            version: Some(rev.into()),
        })
}

#[async_trait]
impl LeaseLock for MemoryLock {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        let current = self.store.locked().key(&self.name).current.clone();
        current.map(|(text, rev)| parse(&text, rev)).transpose()
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        let mut inner = self.store.locked();
        if inner.key(&self.name).current.is_some() {
            return Err(LockError::AlreadyExists);
        }
        Ok(inner.write(&self.name, Some(record.to_json())).into())
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        let mut inner = self.store.locked();
        let current = inner.key(&self.name).current.as_ref().map(|(_, rev)| *rev);
        if current.map(Version::from).as_ref() != Some(expected) {
            return Err(LockError::Conflict);
        }
        Ok(inner.write(&self.name, Some(record.to_json())).into())
    }

    fn watch(&self) -> Option<WatchStream> {
        let rx = self
            .store
            .locked()
            .key(&self.name)
            .events
            .get_or_insert_with(|| broadcast::channel(WATCH_BACKLOG).0)
            .subscribe();
        Some(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            let state = match rx.recv().await {
                Ok(state) => state,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let e =
                        LockError::unavailable(BACKEND, format!("watch fell {n} events behind"));
                    return Some((Err(e), rx));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let event = match state {
                None => Ok(LockEvent::Deleted),
                Some((text, rev)) => parse(&text, rev).map(LockEvent::Changed),
            };
            Some((event, rx))
        })))
    }

    /// A name nothing was ever written under proves that nobody holds it.
    async fn proves_vacancy(&self) -> Result<bool, LockError> {
        let mut inner = self.store.locked();
        let key = inner.key(&self.name);
        Ok(!key.written && key.current.is_none())
    }

    fn describe(&self) -> String {
        format!("memory/{}", self.name)
    }
}
