//! Faults in front of any lock: one replica's connection cut off or slowed, and its
//! requests counted, while the other replicas still reach the same record.
//!
//! [`FaultyLock`] wraps a [`LeaseLock`] and delegates every call to it, unless its
//! [`Faults`] handle says otherwise. The handle is cloneable, so a test keeps it after
//! handing the lock to an elector. Latency is on tokio's clock: under a paused clock
//! a slowed replica costs no real time.
//!
//! Writes can also be *ambiguous* ([`WriteFault`]): applied by the store while the
//! caller sees an error or no answer in time, so that it must read again to learn what
//! happened, as after a timeout on a real network.
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

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    write_fault: Mutex<Option<WriteFault>>,
    ambiguous: AtomicU64,
}

/// What happens to a write (`create` or `update`) that reaches the store while set
/// with [`Faults::set_write_fault`]: it is applied, but the caller cannot tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteFault {
    /// Applied, then the reply is lost: the caller gets [`LockError::Unavailable`].
    LoseReply,
    /// Applied, then the reply comes this much later: past the caller's timeout when
    /// longer, so that the caller gives up on a write that took effect.
    ReplyAfter(Duration),
    /// Applied this much later, even if the caller stopped waiting meanwhile (a request
    /// in flight when its client gave up); the caller gets the reply when it lands.
    LandAfter(Duration),
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

    /// Makes every write from now on ambiguous as `fault` says; `None` for none.
    ///
    /// # Examples
    ///
    /// ```
    /// use leaderelection::{LeaderElectionRecord, LeaseLock, LockError, MemoryStore};
    /// use leaderelection_testkit::faults::{FaultyLock, WriteFault};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// let lock = FaultyLock::new(store.lock("jobs"));
    /// lock.faults().set_write_fault(Some(WriteFault::LoseReply));
    /// let record = LeaderElectionRecord { holder_identity: "a".into(), ..Default::default() };
    /// // The caller sees an error, but the record was written.
    /// assert!(matches!(lock.create(&record).await, Err(LockError::Unavailable { .. })));
    /// assert_eq!(store.lock("jobs").get().await.unwrap().unwrap().record.holder_identity, "a");
    /// assert_eq!(lock.faults().ambiguous_writes(), 1);
    /// # }
    /// ```
    pub fn set_write_fault(&self, fault: Option<WriteFault>) {
        *self.0.write_fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Writes applied under a [`WriteFault`] so far.
    pub fn ambiguous_writes(&self) -> u64 {
        self.0.ambiguous.load(Ordering::SeqCst)
    }

    fn write_fault(&self) -> Option<WriteFault> {
        *self.0.write_fault.lock().unwrap_or_else(|e| e.into_inner())
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
    inner: Arc<L>,
    faults: Faults,
}

impl<L: LeaseLock> FaultyLock<L> {
    /// `inner` behind switches that start off: no fault, no latency.
    pub fn new(inner: L) -> Self {
        Self {
            inner: Arc::new(inner),
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

    /// One write through the faults: `write` applies it to the wrapped lock.
    async fn write<F, Fut>(&self, write: F) -> Result<Version, LockError>
    where
        F: FnOnce(Arc<L>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Version, LockError>> + Send + 'static,
    {
        self.faults.enter().await?;
        let inner = self.inner.clone();
        let fault = self.faults.write_fault();
        let applied = |r: &Result<Version, LockError>| {
            if r.is_ok() && fault.is_some() {
                self.faults.0.ambiguous.fetch_add(1, Ordering::SeqCst);
            }
        };
        match fault {
            None => write(inner).await,
            Some(WriteFault::LoseReply) => {
                let r = write(inner).await;
                applied(&r);
                r?;
                Err(LockError::unavailable(
                    BACKEND,
                    "injected fault: the write was applied but its reply was lost",
                ))
            }
            Some(WriteFault::ReplyAfter(d)) => {
                let r = write(inner).await;
                applied(&r);
                tokio::time::sleep(d).await;
                r
            }
            Some(WriteFault::LandAfter(d)) => {
                // A task of its own: the write lands even if the caller gives up.
                let faults = self.faults.clone();
                let landing = tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let r = write(inner).await;
                    if r.is_ok() {
                        faults.0.ambiguous.fetch_add(1, Ordering::SeqCst);
                    }
                    r
                });
                landing.await.unwrap_or_else(|e| {
                    Err(LockError::unavailable(
                        BACKEND,
                        format!("injected fault: the delayed write failed: {e}"),
                    ))
                })
            }
        }
    }
}

#[async_trait]
impl<L: LeaseLock> LeaseLock for FaultyLock<L> {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.faults.enter().await?;
        self.inner.get().await
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        let record = record.clone();
        self.write(move |inner| async move { inner.create(&record).await })
            .await
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        let (record, expected) = (record.clone(), expected.clone());
        self.write(move |inner| async move { inner.update(&record, &expected).await })
            .await
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

    async fn proves_vacancy(&self) -> Result<bool, LockError> {
        self.faults.enter().await?;
        self.inner.proves_vacancy().await
    }

    fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
        self.inner.fencing_token(record, version)
    }
}
