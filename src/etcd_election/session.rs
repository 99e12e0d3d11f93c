//! A candidate's session: the etcd lease its key is bound to, granted with the key
//! when it joins, kept alive, and revoked (taking the key with it) when it leaves.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::time::Instant;
use tracing::warn;

use super::EtcdElection;
use crate::config::Config;
use crate::error::LockError;
use crate::lock::etcd::{is_lease_gone, BACKEND};

/// This candidate's session and key.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) lease: i64,
    pub(super) key: String,
    pub(super) create_revision: i64,
    /// When the last keep-alive (or the grant) that succeeded was sent.
    pub(super) alive_since: Instant,
}

pub(super) enum KeepAliveError {
    /// etcd no longer has the lease: the key is gone with it.
    Gone,
    Failed(LockError),
}

impl From<LockError> for KeepAliveError {
    fn from(e: LockError) -> Self {
        KeepAliveError::Failed(e)
    }
}

impl EtcdElection {
    /// Grants a session and puts this candidate's key (Go's `Campaign`, first half).
    pub(super) async fn join(&self) -> Result<Session, LockError> {
        let config = &self.shared.core.config;
        let sent = Instant::now();
        let resp = self
            .request("grant a session lease for", |c| async move {
                c.lease_client()
                    .grant(i64::from(config.lease_seconds()), None)
                    .await
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(LockError::unavailable(
                BACKEND,
                format!("etcd refused a session lease: {}", resp.error()),
            ));
        }
        let lease = resp.id();
        let key = format!("{}{:x}", self.shared.prefix, lease);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                config.identity.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = match self
            .request("put the candidate key in", |c| async move {
                c.kv_client().txn(txn).await
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // The put may have landed: revoking removes the key with the lease.
                self.revoke_quietly(lease).await;
                return Err(e);
            }
        };
        let create_revision = if resp.succeeded() {
            resp.header().map_or(0, |h| h.revision())
        } else {
            // The key of a fresh lease cannot exist, unless a previous attempt of this
            // very call landed; then it is ours.
            resp.op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
                    _ => None,
                })
                .unwrap_or(0)
        };
        if create_revision <= 0 {
            self.revoke_quietly(lease).await;
            return Err(LockError::unavailable(
                BACKEND,
                "etcd answered the candidate key's write without a revision",
            ));
        }
        Ok(Session {
            lease,
            key,
            create_revision,
            alive_since: sent,
        })
    }

    /// One keep-alive on the session; on success the session is alive from when it
    /// was sent.
    pub(super) async fn keep_alive(&self, session: &mut Session) -> Result<(), KeepAliveError> {
        let sent = Instant::now();
        let result = self
            .shared
            .core
            .call(async {
                self.shared
                    .client
                    .lease_client()
                    .keep_alive(session.lease)
                    .await
                    .map_err(|e| {
                        if is_lease_gone(&e) {
                            KeepAliveError::Gone
                        } else {
                            KeepAliveError::Failed(self.err("keep alive the session of", e))
                        }
                    })
            })
            .await;
        match result {
            Ok(_) => {
                session.alive_since = sent;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Revokes the session: etcd deletes our key with it. A failure only leaves the key
    /// until the session expires.
    pub(super) async fn end_session(&self, session: &Session) {
        let result = self
            .request("revoke the session of", |c| async move {
                c.lease_client().revoke(session.lease).await
            })
            .await;
        if let Err(e) = result {
            warn!(error = %e, key = %session.key, "failed to revoke the session; its key stays until the session expires");
        }
    }

    pub(super) async fn revoke_quietly(&self, lease: i64) {
        let _ = self
            .request(
                "revoke",
                |c| async move { c.lease_client().revoke(lease).await },
            )
            .await;
    }
}

/// How often a standby keeps its session alive: Go's `concurrency.Session` cadence, a
/// third of the TTL, and never more often than the retry period. Only a leader needs
/// the retry period: its renew deadline is measured from its last keep-alive.
pub(super) fn standby_cadence(config: &Config) -> Duration {
    let ttl = Duration::from_secs(u64::try_from(config.lease_seconds()).unwrap_or(1));
    (ttl / 3).max(config.retry_period)
}
