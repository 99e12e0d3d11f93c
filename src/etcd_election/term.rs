//! A term of an etcd election, for the term supervisor: renewed by keep-alives on
//! the session, lost early when our key is deleted, ended by revoking the session.

use async_trait::async_trait;
use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info};

use super::session::{KeepAliveError, Session};
use super::EtcdElection;
use crate::error::LockError;
use crate::term::{Elected, Renewal, Term};

/// What the leader knows of its own key.
enum OwnKey {
    /// Not watched yet: to be watched from after this revision, the read that elected.
    From(i64),
    Watching(Box<etcd_client::WatchStream>),
    /// The watch broke or never opened: read again after the next keep-alive.
    Unknown,
    Gone,
}

/// A term of an etcd election: kept by keep-alives on the session, ended early when our
/// key is deleted, given up by revoking the session (which deletes the key).
pub(super) struct SessionTerm<'a> {
    election: &'a EtcdElection,
    session: Session,
    own: OwnKey,
}

#[async_trait]
impl Term for SessionTerm<'_> {
    async fn renew(&mut self, deadline: Instant) -> Result<Instant, Renewal> {
        let election = self.election;
        match timeout_at(deadline, election.keep_alive(&mut self.session)).await {
            Ok(Ok(())) => {}
            Ok(Err(KeepAliveError::Gone)) => {
                info!("the session lease expired or was revoked");
                return Err(Renewal::Lost(None));
            }
            Ok(Err(KeepAliveError::Failed(e))) => return Err(Renewal::Failed(e)),
            Err(_) => {
                let limit = election.shared.core.config.renew_deadline;
                return Err(Renewal::Failed(LockError::Timeout(limit)));
            }
        }
        // A watch can stall without breaking (a member that falls behind keeps the
        // stream open and delivers nothing while keep-alives, forwarded to the lease
        // primary, still succeed): each renewal also reads our key, so a delete is
        // noticed within a retry period whatever the watch does.
        let key = self.session.key.as_str();
        let read = election.request("read our key in", |c| async move {
            c.kv_client()
                .get(key, Some(GetOptions::new().with_count_only()))
                .await
        });
        match timeout_at(deadline, read).await {
            Ok(Ok(resp)) if resp.count() == 0 => {
                info!("our election key was deleted");
                self.own = OwnKey::Gone;
                return Err(Renewal::Lost(None));
            }
            Ok(Ok(resp)) => {
                if matches!(self.own, OwnKey::Unknown) {
                    let revision = resp.header().map_or(0, |h| h.revision());
                    self.own = election.watch_own(key, revision).await;
                }
            }
            Ok(Err(e)) => return Err(Renewal::Failed(e)),
            Err(_) => {
                let limit = election.shared.core.config.renew_deadline;
                return Err(Renewal::Failed(LockError::Timeout(limit)));
            }
        }
        Ok(self.session.alive_since)
    }

    async fn lost_early(&mut self) -> Option<String> {
        // Our key deleted by anyone (an operator's `etcdctl del`, a revoke) ends the
        // term at once.
        loop {
            match &mut self.own {
                OwnKey::From(revision) => {
                    let revision = *revision;
                    self.own = self.election.watch_own(&self.session.key, revision).await;
                }
                OwnKey::Watching(w) => {
                    if own_deleted(w).await {
                        info!("our election key was deleted");
                        self.own = OwnKey::Gone;
                        return None;
                    }
                    self.own = OwnKey::Unknown;
                }
                OwnKey::Unknown => std::future::pending::<()>().await,
                OwnKey::Gone => return None,
            }
        }
    }

    async fn release(&mut self, _last_success: Instant) {
        // The work has stopped: resign so the next candidate leads at once.
        self.election.end_session(&self.session).await;
        info!("resigned");
    }

    async fn abandon(&mut self) {
        // Whatever is left of the session goes, key included.
        self.election.end_session(&self.session).await;
    }
}

/// Completes with true when our key is deleted, false when the watch breaks.
async fn own_deleted(w: &mut etcd_client::WatchStream) -> bool {
    loop {
        match w.message().await {
            Ok(Some(resp)) if resp.canceled() => return false,
            Ok(Some(resp)) => {
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return true;
                }
            }
            Ok(None) | Err(_) => return false,
        }
    }
}

impl EtcdElection {
    /// The term of the session whose key leads, as of the read at `revision`.
    pub(super) fn elected(&self, session: Session, revision: i64) -> Elected<SessionTerm<'_>> {
        debug!(key = %session.key, "elected");
        Elected {
            fencing_token: u64::try_from(session.create_revision).unwrap_or(0),
            // The session was kept alive long before this term: a term that began at
            // its last keep-alive would seem to overlap the predecessor's.
            acquired_at: Instant::now(),
            valid_from: session.alive_since,
            term: SessionTerm {
                election: self,
                session,
                own: OwnKey::From(revision),
            },
        }
    }

    /// A watch on our own key from just after `revision`; `Unknown` when it cannot be
    /// opened.
    async fn watch_own(&self, key: &str, revision: i64) -> OwnKey {
        let options = WatchOptions::new().with_start_revision(revision + 1);
        match self
            .shared
            .client
            .watch_client()
            .watch(key, Some(options))
            .await
        {
            Ok(w) => OwnKey::Watching(Box::new(w)),
            Err(e) => {
                debug!(error = %self.err("watch", e), "cannot watch our key; checking it after each keep-alive");
                OwnKey::Unknown
            }
        }
    }
}
