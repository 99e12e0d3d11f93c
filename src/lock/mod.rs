//! The lock abstraction: where the record lives, and the backends that keep it.
//!
//! A lock only stores and compares records. It never sleeps, never retries and never
//! decides who leads: the [`LeaderElector`](crate::LeaderElector) does all of that.

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::LockError;
use crate::record::LeaderElectionRecord;
pub use crate::version::Version;

#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd;
#[cfg(feature = "file")]
#[cfg_attr(docsrs, doc(cfg(feature = "file")))]
pub mod file;
#[cfg(feature = "kube")]
#[cfg_attr(docsrs, doc(cfg(feature = "kube")))]
pub mod kube;
pub mod memory;

/// A record as read, with the version to pass to [`LeaseLock::update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The record.
    pub record: LeaderElectionRecord,
    /// The stored version it was read at.
    pub version: Version,
}

/// A change a [`LeaseLock::watch`] stream reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockEvent {
    /// The record was created or written.
    Changed(Versioned),
    /// The record was deleted.
    Deleted,
}

/// A stream of changes to one lock's record. It ends or yields an error when the
/// backend connection breaks; the elector then reads again and opens a new one.
pub type WatchStream = BoxStream<'static, Result<LockEvent, LockError>>;

/// Where an election's record is stored: one object, compared and swapped.
///
/// Implementations are thin: one request per call, no retries, no sleeping. Errors
/// separate contention ([`LockError::Conflict`], [`LockError::AlreadyExists`]) from
/// a broken backend and from unreadable data.
///
/// # Cancel safety
///
/// Every method may be cancelled (the elector wraps each call in a timeout). A
/// cancelled `create` or `update` may or may not have been applied; compare-and-swap
/// makes either outcome safe.
///
/// # Examples
///
/// ```
/// use leaderelection::{LeaseLock, LeaderElectionRecord, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leaderelection::LockError> {
/// let store = MemoryStore::new();
/// let lock = store.lock("scheduler");
/// assert!(lock.get().await?.is_none());
/// let record = LeaderElectionRecord { holder_identity: "a".into(), lease_duration_seconds: 15, ..Default::default() };
/// let v1 = lock.create(&record).await?;
/// let v2 = lock.update(&record, &v1).await?;
/// // The old version no longer matches: someone (here, we) wrote in between.
/// assert!(lock.update(&record, &v1).await.unwrap_err().is_contention());
/// # let _ = v2; Ok(()) }
/// ```
#[async_trait]
pub trait LeaseLock: Send + Sync + fmt::Debug + 'static {
    /// Reads the record, or `None` when the object does not exist.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidRecord`] when the object exists but its record is unreadable.
    async fn get(&self) -> Result<Option<Versioned>, LockError>;

    /// Creates the object holding `record`.
    ///
    /// # Errors
    ///
    /// [`LockError::AlreadyExists`] when it exists already.
    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError>;

    /// Replaces the record if the stored version is still `expected`.
    ///
    /// # Errors
    ///
    /// [`LockError::Conflict`] when the version moved (or the object is gone).
    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError>;

    /// A stream of changes, for locks whose backend can push them. `None` (the
    /// default) makes standbys poll every retry period, as client-go does.
    fn watch(&self) -> Option<WatchStream> {
        None
    }

    /// What and where the lock is, for logs: `leases/kube-system/kube-scheduler`.
    fn describe(&self) -> String;

    /// True only when the backend proves that no holder of this lock can still be
    /// acting while its record is absent: the name never held a record (a fresh
    /// in-memory store, a lock file that never existed). A standby with no history
    /// that finds the record absent creates it at once on that proof; without it (the
    /// default, and every lock whose record an operator can delete) it first waits as
    /// long as a leader may still act after its last renewal.
    ///
    /// A lock that wraps another (to count, time or fault its calls) forwards this
    /// too, or its elections lose the proof and every cold start waits.
    ///
    /// # Errors
    ///
    /// A backend error, as [`get`](Self::get)'s; the standby then waits.
    async fn proves_vacancy(&self) -> Result<bool, LockError> {
        Ok(false)
    }

    /// The fencing token of a leadership that began by writing `version`: a number
    /// that grows with every change of leader.
    ///
    /// The default is the version when it is a number (a counter, or Kubernetes'
    /// resourceVersion, which is etcd's revision), otherwise `leaderTransitions`.
    fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
        version
            .as_str()
            .parse()
            .unwrap_or(record.leader_transitions.max(0) as u64)
    }
}

/// One `impl LeaseLock` for each smart pointer that owns or shares a lock: every
/// method forwards, so a pointer goes wherever a lock does.
macro_rules! forward_lease_lock {
    ($(#[$doc:meta])* $ptr:ty) => {
        $(#[$doc])*
        #[async_trait]
        impl<L: LeaseLock + ?Sized> LeaseLock for $ptr {
            async fn get(&self) -> Result<Option<Versioned>, LockError> {
                (**self).get().await
            }

            async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
                (**self).create(record).await
            }

            async fn update(
                &self,
                record: &LeaderElectionRecord,
                expected: &Version,
            ) -> Result<Version, LockError> {
                (**self).update(record, expected).await
            }

            fn watch(&self) -> Option<WatchStream> {
                (**self).watch()
            }

            fn describe(&self) -> String {
                (**self).describe()
            }

            async fn proves_vacancy(&self) -> Result<bool, LockError> {
                (**self).proves_vacancy().await
            }

            fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
                (**self).fencing_token(record, version)
            }
        }
    };
}

forward_lease_lock!(
    /// Forwards to the boxed lock, so that a lock chosen at run time
    /// (`Box<dyn LeaseLock>`) goes wherever a lock does, [`LeaderElector::new`]
    /// included.
    ///
    /// [`LeaderElector::new`]: crate::LeaderElector::new
    Box<L>
);

forward_lease_lock!(
    /// Forwards to the shared lock, so that one lock can be handed to an elector and
    /// kept for reads of one's own.
    std::sync::Arc<L>
);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A lock whose every provided method differs from the default, so that a
    /// wrapper that fell back to a default would be seen.
    #[derive(Debug)]
    struct Marked;

    #[async_trait]
    impl LeaseLock for Marked {
        async fn get(&self) -> Result<Option<Versioned>, LockError> {
            Ok(None)
        }
        async fn create(&self, _: &LeaderElectionRecord) -> Result<Version, LockError> {
            Ok(Version::new("created"))
        }
        async fn update(
            &self,
            _: &LeaderElectionRecord,
            _: &Version,
        ) -> Result<Version, LockError> {
            Err(LockError::Conflict)
        }
        fn watch(&self) -> Option<WatchStream> {
            Some(Box::pin(futures::stream::empty()))
        }
        fn describe(&self) -> String {
            "marked".to_owned()
        }
        fn fencing_token(&self, _: &LeaderElectionRecord, _: &Version) -> u64 {
            42
        }
    }

    async fn forwards(lock: &dyn LeaseLock) {
        let record = LeaderElectionRecord::default();
        assert!(lock.get().await.unwrap().is_none());
        assert_eq!(lock.create(&record).await.unwrap().as_str(), "created");
        assert!(matches!(
            lock.update(&record, &Version::from(1)).await,
            Err(LockError::Conflict)
        ));
        assert!(lock.watch().is_some());
        assert_eq!(lock.describe(), "marked");
        assert_eq!(lock.fencing_token(&record, &Version::from(7)), 42);
    }

    #[tokio::test]
    async fn boxed_and_shared_locks_forward_every_method() {
        let boxed: Box<dyn LeaseLock> = Box::new(Marked);
        forwards(&boxed).await;
        forwards(&Box::new(Marked)).await;
        let shared: Arc<dyn LeaseLock> = Arc::new(Marked);
        forwards(&shared).await;
        forwards(&Arc::new(Marked)).await;
    }
}
