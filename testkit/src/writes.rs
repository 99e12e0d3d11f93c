//! Every write to a record, with the instant it landed: for tests that time a
//! takeover from the writes themselves (the last renewal of one holder, the first
//! write of the next, a release).

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use leaderelection::{LeaderElectionRecord, LeaseLock, LockEvent};
use tokio::time::Instant;

/// When a write landed and what it stored (`None`: the record was deleted).
pub type Write = (Instant, Option<LeaderElectionRecord>);

/// The writes to one lock's record, followed through its watch from the moment
/// [`follow`](Self::follow) is called.
///
/// # Examples
///
/// ```
/// use leaderelection::{LeaderElectionRecord, LeaseLock, MemoryStore};
/// use leaderelection_testkit::writes::Writes;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let store = MemoryStore::new();
/// let writes = Writes::follow(&store.lock("scheduler"));
/// let record = LeaderElectionRecord { holder_identity: "a".into(), ..Default::default() };
/// store.lock("scheduler").create(&record).await.unwrap();
/// tokio::task::yield_now().await;
/// assert_eq!(writes.records()[0].holder_identity, "a");
/// # }
/// ```
#[derive(Clone, Default, Debug)]
pub struct Writes(Arc<Mutex<Vec<Write>>>);

impl Writes {
    /// Follows `lock`'s record in a task of its own.
    ///
    /// # Panics
    ///
    /// When the lock cannot watch (a test's mistake).
    pub fn follow(lock: &dyn LeaseLock) -> Self {
        let writes = Self::default();
        let mut stream = lock.watch().expect("a lock that can watch");
        let w = writes.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                let record = match event {
                    LockEvent::Changed(v) => Some(v.record),
                    _ => None,
                };
                w.lock().push((Instant::now(), record));
            }
        });
        writes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Write>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every write so far.
    pub fn all(&self) -> Vec<Write> {
        self.lock().clone()
    }

    /// The records written so far, deletions left out.
    pub fn records(&self) -> Vec<LeaderElectionRecord> {
        self.lock().iter().filter_map(|(_, r)| r.clone()).collect()
    }

    /// The last write naming `holder` as holder.
    ///
    /// # Panics
    ///
    /// When there is none.
    pub fn last_by(&self, holder: &str) -> Instant {
        self.by(holder).next_back().expect("no write by holder")
    }

    /// The first write naming `holder` as holder.
    ///
    /// # Panics
    ///
    /// When there is none.
    pub fn first_by(&self, holder: &str) -> Instant {
        self.by(holder).next().expect("no write by holder")
    }

    fn by(&self, holder: &str) -> impl DoubleEndedIterator<Item = Instant> {
        let times: Vec<Instant> = self
            .lock()
            .iter()
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r.holder_identity == holder))
            .map(|(t, _)| *t)
            .collect();
        times.into_iter()
    }

    /// The first record written without a holder (a release, or a blank), and when.
    pub fn first_released(&self) -> Option<(Instant, LeaderElectionRecord)> {
        self.lock().iter().find_map(|(t, r)| {
            r.as_ref()
                .filter(|r| r.holder_identity.is_empty())
                .map(|r| (*t, r.clone()))
        })
    }
}
