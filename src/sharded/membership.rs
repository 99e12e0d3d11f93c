//! Who is alive: one shared record, `<name>-members`, in which every replica bumps
//! its own heartbeat counter by compare-and-swap.
//!
//! The record is a [`LeaderElectionRecord`] whose `holderIdentity` is a JSON object
//! from identity to heartbeat counter, `{"a":17,"b":4}`, so it lives on any
//! [`LeaseLock`] backend. A member is alive while its counter has changed within the
//! last lease duration *as observed on the local monotonic clock*: record times and
//! other hosts' clocks are never read, as for the elector's own expiry.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::{timeout, Instant};
use tracing::debug;

use crate::error::LockError;
use crate::lock::{LeaseLock, Version};
use crate::record::LeaderElectionRecord;

/// Attempts at one heartbeat when other replicas write the record at the same time.
const CAS_ATTEMPTS: usize = 4;

#[derive(Debug)]
pub(crate) struct Membership {
    lock: Box<dyn LeaseLock>,
    identity: String,
    lease: Duration,
    call_timeout: Duration,
    counter: u64,
    /// Every other member seen, with its counter and when that counter was first seen.
    seen: HashMap<String, (u64, Instant)>,
    /// The version and entries last read, to skip one read per heartbeat.
    cached: Option<(Version, BTreeMap<String, u64>)>,
    pub(crate) requests: u64,
}

impl Membership {
    pub(crate) fn new(
        lock: Box<dyn LeaseLock>,
        identity: String,
        lease: Duration,
        call_timeout: Duration,
    ) -> Self {
        Self {
            lock,
            identity,
            lease,
            call_timeout,
            counter: 0,
            seen: HashMap::new(),
            cached: None,
            requests: 0,
        }
    }

    /// Reads the record: its version and entries (empty when absent or unreadable).
    async fn read(&mut self) -> Result<(Option<Version>, BTreeMap<String, u64>), LockError> {
        self.requests += 1;
        let got = timeout(self.call_timeout, self.lock.get())
            .await
            .map_err(|_| LockError::Timeout(self.call_timeout))?;
        match got {
            Ok(None) => Ok((None, BTreeMap::new())),
            Ok(Some(v)) => Ok((Some(v.version), parse(&v.record.holder_identity))),
            Err(LockError::InvalidRecord { version, .. }) => Ok((version, BTreeMap::new())),
            Err(e) => Err(e),
        }
    }

    async fn write(
        &mut self,
        version: Option<&Version>,
        entries: &BTreeMap<String, u64>,
    ) -> Result<Version, LockError> {
        let now = jiff::Timestamp::now();
        let record = LeaderElectionRecord {
            holder_identity: serde_json::to_string(entries).unwrap_or_default(),
            lease_duration_seconds: i32::try_from(self.lease.as_secs().max(1)).unwrap_or(i32::MAX),
            renew_time: Some(now),
            acquire_time: Some(now),
            ..Default::default()
        };
        self.requests += 1;
        let call = async {
            match version {
                Some(v) => self.lock.update(&record, v).await,
                None => self.lock.create(&record).await,
            }
        };
        timeout(self.call_timeout, call)
            .await
            .map_err(|_| LockError::Timeout(self.call_timeout))?
    }

    /// Notes the counters read; a counter that moved restarts that member's clock.
    fn observe(&mut self, entries: &BTreeMap<String, u64>) {
        let now = Instant::now();
        self.seen.retain(|id, _| entries.contains_key(id));
        for (id, &counter) in entries {
            if *id == self.identity {
                continue;
            }
            match self.seen.get_mut(id) {
                Some(entry) if entry.0 == counter => {}
                Some(entry) => *entry = (counter, now),
                None => {
                    self.seen.insert(id.clone(), (counter, now));
                }
            }
        }
    }

    fn is_alive(&self, id: &str) -> bool {
        id == self.identity
            || self
                .seen
                .get(id)
                .is_some_and(|&(_, since)| since.elapsed() < self.lease)
    }

    /// Bumps this replica's counter (and drops members observed dead), then returns
    /// the live members, sorted, this replica included.
    ///
    /// # Errors
    ///
    /// The backend's error when no write succeeded.
    pub(crate) async fn beat(&mut self) -> Result<Vec<String>, LockError> {
        self.counter += 1;
        let mut last = LockError::Conflict;
        for _ in 0..CAS_ATTEMPTS {
            let (version, mut entries) = match self.cached.take() {
                Some((v, e)) => (Some(v), e),
                None => self.read().await?,
            };
            self.observe(&entries);
            entries.retain(|id, _| self.is_alive(id));
            entries.insert(self.identity.clone(), self.counter);
            match self.write(version.as_ref(), &entries).await {
                Ok(v) => {
                    self.cached = Some((v, entries));
                    return Ok(self.alive());
                }
                Err(e) if e.is_contention() => {
                    debug!("members record changed meanwhile; reading again");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The live members as last observed, sorted, this replica included.
    pub(crate) fn alive(&self) -> Vec<String> {
        let mut alive: Vec<String> = self
            .seen
            .keys()
            .filter(|id| self.is_alive(id))
            .cloned()
            .collect();
        alive.push(self.identity.clone());
        alive.sort();
        alive.dedup();
        alive
    }

    /// Removes this replica's entry, so the others rebalance at once.
    pub(crate) async fn leave(&mut self) {
        for _ in 0..CAS_ATTEMPTS {
            let (version, mut entries) = match self.cached.take() {
                Some((v, e)) => (Some(v), e),
                None => match self.read().await {
                    Ok(read) => read,
                    Err(e) => {
                        debug!(error = %e, "failed to leave the members record; the others notice at its expiry");
                        return;
                    }
                },
            };
            if entries.remove(&self.identity).is_none() {
                return;
            }
            match self.write(version.as_ref(), &entries).await {
                Ok(_) => return,
                Err(e) if e.is_contention() => continue,
                Err(e) => {
                    debug!(error = %e, "failed to leave the members record; the others notice at its expiry");
                    return;
                }
            }
        }
    }
}

/// The entries of a members record; anything unreadable counts as no members.
fn parse(text: &str) -> BTreeMap<String, u64> {
    serde_json::from_str(text).unwrap_or_default()
}
