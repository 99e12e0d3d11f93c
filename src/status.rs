//! What an election reports: the observed leader, and each change of leadership.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::record::truncate;

/// What the elector last saw, published through `subscribe` (of [`LeaderElector`](crate::LeaderElector) and `EtcdElection`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The holder in the last record observed; `None` when released or absent.
    pub leader: Option<String>,
    /// Whether this replica leads.
    pub is_leader: bool,
}

/// A change of leadership, reported once each through `events`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElectionEvent {
    /// This replica became leader (client-go's `OnStartedLeading`).
    StartedLeading {
        /// The fencing token of the new term.
        fencing_token: u64,
    },
    /// This replica stopped leading (client-go's `OnStoppedLeading`).
    StoppedLeading,
    /// The observed holder changed (client-go's `OnNewLeader`); `None` when the lease
    /// was released or the record is absent.
    NewLeader(Option<String>),
}

/// The published side of an election: its [`Status`] and the subscribers of its
/// [`ElectionEvent`]s. Shared by every election loop of the crate.
#[derive(Debug)]
pub(crate) struct Reporter {
    identity: String,
    status: watch::Sender<Status>,
    events: Mutex<Vec<mpsc::UnboundedSender<ElectionEvent>>>,
}

impl Reporter {
    pub(crate) fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_owned(),
            status: watch::Sender::new(Status::default()),
            events: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.status.borrow().is_leader
    }

    pub(crate) fn leader(&self) -> Option<String> {
        self.status.borrow().leader.clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub(crate) fn events(&self) -> mpsc::UnboundedReceiver<ElectionEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock_unpoisoned(&self.events).push(tx);
        rx
    }

    /// Publishes the observed leader; a change of leader is reported once.
    pub(crate) fn set_leader(&self, leader: Option<String>, is_leader: bool) {
        let mut new_leader = None;
        self.status.send_if_modified(|s| {
            if s.leader != leader {
                new_leader = Some(leader.clone());
                if let Some(l) = &leader {
                    if !is_leader && *l != self.identity {
                        // The identity comes from the store: quote only its start.
                        info!(leader = %truncate(l, 256), "new leader elected");
                    }
                }
            }
            let changed = s.leader != leader || s.is_leader != is_leader;
            s.leader = leader;
            s.is_leader = is_leader;
            changed
        });
        if let Some(l) = new_leader {
            self.emit(ElectionEvent::NewLeader(l));
        }
    }

    pub(crate) fn emit(&self, event: ElectionEvent) {
        lock_unpoisoned(&self.events).retain(|tx| tx.send(event.clone()).is_ok());
    }
}

/// A poisoned mutex only means a panic elsewhere; the data behind it is still whole.
pub(crate) fn lock_unpoisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
