//! Faults in front of any lock: one replica's connection cut off or slowed, and its
//! requests counted, while the other replicas still reach the same record.
//!
//! [`FaultyLock`] wraps a [`LeaseLock`] and delegates every call to it, unless its
//! [`Faults`] handle says otherwise. The handle is cloneable, so a test keeps it after
//! handing the lock to an elector. Latency is on tokio's clock: under a paused clock
//! a slowed replica costs no real time.
//!
//! For faults on the wire (connections refused or reset, packets delayed) of a real
//! server, put a TCP proxy between the client and the server instead.
//!
//! # Examples
//!
//! ```
//! use leaderelection::{LeaseLock, LockError, MemoryStore};
//! use leaderelection_testkit::faults::FaultyLock;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let lock = FaultyLock::new(store.lock("jobs"));
//! let faults = lock.faults();
//! faults.set_unavailable(true);
//! assert!(matches!(lock.get().await, Err(LockError::Unavailable { .. })));
//! // Another replica's handle on the same record is unaffected.
//! assert!(store.lock("jobs").get().await.unwrap().is_none());
//! assert_eq!(faults.requests(), 1);
//! # }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use leaderelection::{LeaderElectionRecord, LeaseLock, LockError, Version, Versioned, WatchStream};

/// The backend name in the errors a [`FaultyLock`] injects.
pub const BACKEND: &str = "fault injection";

/// The switches of one [`FaultyLock`]: make its requests fail or slow, and count them.
/// Clones share the switches.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<State>);

#[derive(Debug, Default)]
struct State {
    unavailable: AtomicBool,
    latency_ms: AtomicU64,
    requests: AtomicU64,
}

impl Faults {
    /// While true, every request fails with [`LockError::Unavailable`] and open
    /// watches end at their next event.
    pub fn set_unavailable(&self, down: bool) {
        self.0.unavailable.store(down, Ordering::SeqCst);
    }

    /// Delays every request by `latency` (on tokio's clock); zero for none.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.0.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Requests made so far, failed ones included (a watch counts once, when it is
    /// first polled, as opening it is one request and later events are pushed).
    pub fn requests(&self) -> u64 {
        self.0.requests.load(Ordering::SeqCst)
    }

    fn is_unavailable(&self) -> bool {
        self.0.unavailable.load(Ordering::SeqCst)
    }

    async fn enter(&self) -> Result<(), LockError> {
        self.0.requests.fetch_add(1, Ordering::SeqCst);
        let ms = self.0.latency_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if self.is_unavailable() {
            return Err(LockError::unavailable(
                BACKEND,
                "injected fault: store unreachable",
            ));
        }
        Ok(())
    }
}

/// A lock that delegates to `L`, with [`Faults`] in front of it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leaderelection::{Config, LeaderElector, MemoryStore};
/// use leaderelection_testkit::faults::FaultyLock;
///
/// let store = MemoryStore::new();
/// let lock = FaultyLock::new(store.lock("jobs"));
/// let faults = lock.faults();
/// let elector = LeaderElector::new(lock, Config::new("jobs").identity("a"))?;
/// // Later, while it leads: slow its store down past the renew deadline.
/// faults.set_latency(Duration::from_secs(60));
/// # let _ = elector;
/// # Ok::<(), leaderelection::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct FaultyLock<L> {
    inner: L,
    faults: Faults,
}

impl<L: LeaseLock> FaultyLock<L> {
    /// `inner` behind switches that start off: no fault, no latency.
    pub fn new(inner: L) -> Self {
        Self {
            inner,
            faults: Faults::default(),
        }
    }

    /// The switches and request counter of this lock.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// The wrapped lock, to reach it without faults.
    pub fn inner(&self) -> &L {
        &self.inner
    }
}

#[async_trait]
impl<L: LeaseLock> LeaseLock for FaultyLock<L> {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.faults.enter().await?;
        self.inner.get().await
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        self.faults.enter().await?;
        self.inner.create(record).await
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        self.faults.enter().await?;
        self.inner.update(record, expected).await
    }

    fn watch(&self) -> Option<WatchStream> {
        // Subscribed now, so that no write between this call and the first poll is
        // missed; the request is counted and faulted at the first poll.
        let inner = self.inner.watch()?;
        let faults = self.faults.clone();
        Some(Box::pin(futures::stream::unfold(
            (inner, faults, false),
            |(mut inner, faults, opened)| async move {
                if !opened {
                    if let Err(e) = faults.enter().await {
                        return Some((Err(e), (inner, faults, true)));
                    }
                }
                let event = inner.next().await?;
                // A cut connection delivers nothing more.
                if faults.is_unavailable() {
                    return None;
                }
                Some((event, (inner, faults, true)))
            },
        )))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
        self.inner.fencing_token(record, version)
    }
}
