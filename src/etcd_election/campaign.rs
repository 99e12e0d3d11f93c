//! A candidate's campaign: join, then wait in create order for the keys before ours
//! to go, and for the last leader's session to end, before leading.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, SortOrder, SortTarget, WatchOptions};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::expiry::{Expiry, Verdict};
use super::leader::{lease_of, EtcdLeader};
use super::session::{standby_cadence, KeepAliveError, Session};
use super::EtcdElection;
use crate::config::MAX_HONOURED_LEASE;
use crate::error::LockError;

pub(super) enum Turn {
    /// Our key is first; `revision` is that of the read that showed it.
    Leader {
        revision: i64,
    },
    Shutdown,
    SessionLost(String),
}

impl EtcdElection {
    /// Joins the election and waits for this candidate's turn; `None` on shutdown.
    pub(super) async fn campaign(&self, shutdown: &CancellationToken) -> Option<(Session, i64)> {
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let mut session = match self.join().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "failed to join the etcd election; retrying");
                    if !self.shared.core.back_off(shutdown).await {
                        return None;
                    }
                    continue;
                }
            };
            debug!(key = %session.key, create_revision = session.create_revision, "joined the etcd election");
            match self.wait_turn(&mut session, shutdown).await {
                Turn::Leader { revision } => return Some((session, revision)),
                Turn::Shutdown => {
                    self.end_session(&session).await;
                    return None;
                }
                Turn::SessionLost(why) => {
                    warn!(reason = %why, "lost the etcd session while waiting; joining again");
                    self.end_session(&session).await;
                    if !self.shared.core.back_off(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits until no key created before ours is left (Go's `waitDeletes`), keeping
    /// the session alive meanwhile, and then until the session of the last leader seen
    /// has ended too.
    ///
    /// Anyone can delete the leader's key (`etcdctl del`) while its session, and so
    /// perhaps its work, is still alive: that leader steps down when it sees the
    /// delete and then revokes its session. Leading before that would overlap its
    /// work, so the next candidate waits until etcd no longer has that session (revoked,
    /// or expired), or for one session TTL from the delete, by when a leader of ours has
    /// stopped its work. A leader of ours resigns by revoking its session, and is
    /// followed at once; Go's `Resign` keeps its session, and is followed after the TTL.
    ///
    /// The keys before ours are read once and then followed on a watch of the prefix,
    /// so the delete that puts ours first needs no read. A standby keeps its session
    /// alive as often as Go's `concurrency.Session` does (a third of the TTL); only a
    /// leader keeps the retry-period cadence its renew deadline is measured against.
    /// The standby next in line asks etcd now and then how long the leader's session
    /// has left, and revokes it once it is provably past expiry on the server
    /// (`docs/safety.md`, "Crash takeover"), instead of waiting for etcd's next
    /// 500 ms lessor tick.
    pub(super) async fn wait_turn(
        &self,
        session: &mut Session,
        shutdown: &CancellationToken,
    ) -> Turn {
        let config = &self.shared.core.config;
        let cadence = standby_cadence(config);
        let mut watch: Option<etcd_client::WatchStream> = None;
        let mut next_keepalive = session.alive_since + cadence;
        // The keys created before ours, oldest first; `None` until read.
        let mut before: Option<Vec<EtcdLeader>> = None;
        // The keys before ours as last known, kept across a reread.
        let mut known: Vec<EtcdLeader> = Vec::new();
        let mut read_at = Instant::now();
        // The revision up to which `before` is known.
        let mut revision = 0;
        // Every key that went while it was first, so may have led, with when we saw it
        // go: each one's session must have ended before ours leads, not only the last
        // one's (a deleted leader may still act while a successor comes and goes).
        let mut departed: Vec<(EtcdLeader, Instant)> = Vec::new();
        // A session this replica revoked itself, past its expiry: known gone.
        let mut revoked: Option<i64> = None;
        // When to ask again whether a departed key's session ended.
        let mut recheck_at: Option<Instant> = None;
        // A candidate that finds no key before its own at its first read has no
        // history: a leader whose key was deleted just before may still act on it.
        // etcd keeps no trace of a deleted key that would tell, so it waits its own
        // lease from that read, the longest such a leader acts after its last
        // keep-alive.
        let mut hidden_until: Option<Instant> = None;
        let mut first_read = true;
        // The leader's lease as learned by the standby next in line, and when to ask
        // about it again (`None`: never).
        let mut expiry: Option<(i64, Expiry, Option<Instant>)> = None;
        let mut evaluate = false;
        loop {
            if before.is_none() && Instant::now() >= read_at {
                watch = None;
                match self.candidates_before(session).await {
                    Ok(Some((keys, at))) => {
                        // Keys that went while we did not watch: any of them may have
                        // been first meanwhile.
                        let now = Instant::now();
                        for gone in std::mem::take(&mut known) {
                            if keys.iter().all(|k| k.key != gone.key) {
                                departed.push((gone, now));
                            }
                        }
                        if std::mem::take(&mut first_read) && keys.is_empty() {
                            debug!("no history: waiting out any leader whose key was deleted");
                            hidden_until = Some(now + config.lease_duration);
                        }
                        before = Some(keys);
                        revision = at;
                        watch = self.watch_prefix(at).await;
                        evaluate = true;
                    }
                    Ok(None) => return Turn::SessionLost("our candidate key is gone".into()),
                    Err(e) => {
                        warn!(error = %e, "failed to read the etcd election; retrying");
                        read_at = Instant::now() + config.jittered_retry();
                    }
                }
            }
            if let (true, Some(keys)) = (evaluate, &before) {
                evaluate = false;
                recheck_at = None;
                if let Some(first) = keys.first() {
                    debug!(leader = %first.value, "waiting for the keys created before ours");
                    self.shared
                        .core
                        .report
                        .set_leader(Some(first.value.clone()), false);
                    // Only the next in line watches the leader's session.
                    let lease = (keys.len() == 1).then(|| lease_of(first)).flatten();
                    if expiry.as_ref().map(|e| e.0) != lease {
                        expiry = lease.map(|l| {
                            (l, Expiry::new(self.revocable_above()), Some(Instant::now()))
                        });
                    }
                } else {
                    expiry = None;
                    // No session is honoured for longer: older departures need no question.
                    let now = Instant::now();
                    departed.retain(|(_, since)| now < *since + MAX_HONOURED_LEASE);
                    let mut waiting = None;
                    let mut left = Vec::new();
                    for (p, since) in std::mem::take(&mut departed) {
                        if revoked.is_some() && lease_of(&p) == revoked {
                            continue;
                        }
                        match self.session_alive(&p).await {
                            Ok(None) => {}
                            // A leader of ours stops its work within its lease of
                            // losing its key; Go's `Resign` deletes the key and keeps
                            // the session, which cannot be told from a stray delete:
                            // both are followed one session TTL after the delete.
                            Ok(Some(ttl)) if Instant::now() >= since + ttl => {}
                            alive => {
                                if let Err(e) = alive {
                                    debug!(error = %e, "cannot tell whether a departed leader's session ended; asking again");
                                } else {
                                    info!(predecessor = %p.key, "a leader's key was deleted but its session lives; waiting for it to end");
                                }
                                waiting.get_or_insert_with(|| p.value.clone());
                                left.push((p, since));
                            }
                        }
                    }
                    departed = left;
                    if let Some(holder) = waiting {
                        self.shared.core.report.set_leader(Some(holder), false);
                        recheck_at = Some(Instant::now() + config.retry_period);
                    } else if let Some(until) = hidden_until.filter(|u| Instant::now() < *u) {
                        recheck_at = Some(until);
                    } else {
                        // Our turn. The term starts from the last keep-alive when it
                        // leaves the first renewal (sent at once) a retry period;
                        // otherwise from a fresh one.
                        if Instant::now() + config.retry_period
                            <= session.alive_since + config.renew_deadline
                        {
                            return Turn::Leader { revision };
                        }
                        match self.keep_alive(session).await {
                            Ok(()) => return Turn::Leader { revision },
                            Err(KeepAliveError::Gone) => {
                                return Turn::SessionLost("the session lease is gone".into())
                            }
                            Err(KeepAliveError::Failed(e)) => {
                                warn!(error = %e, "failed to keep the session alive");
                                recheck_at = Some(Instant::now() + config.retry_period);
                            }
                        }
                    }
                }
            }
            let ask_at = expiry.as_ref().and_then(|e| e.2);
            tokio::select! {
                _ = shutdown.cancelled() => return Turn::Shutdown,
                _ = sleep_until(next_keepalive) => {
                    let now = Instant::now();
                    match self.keep_alive(session).await {
                        Ok(()) => next_keepalive = session.alive_since + cadence,
                        Err(KeepAliveError::Gone) => {
                            return Turn::SessionLost("the session lease is gone".into())
                        }
                        Err(KeepAliveError::Failed(e)) => {
                            if now >= session.alive_since + config.renew_deadline {
                                return Turn::SessionLost(format!("keep-alive failed for the renew deadline: {e}"));
                            }
                            debug!(error = %e, "failed to keep the session alive; retrying");
                            next_keepalive = now + config.retry_period;
                        }
                    }
                }
                _ = sleep_until(read_at), if before.is_none() => {}
                _ = sleep_until(recheck_at.unwrap_or(read_at)), if recheck_at.is_some() => {
                    // Once: while the keys are being read again, the evaluation waits
                    // for the read instead of firing on every pass.
                    recheck_at = None;
                    evaluate = true;
                }
                _ = sleep_until(ask_at.unwrap_or(read_at)), if ask_at.is_some() => {
                    if let Some((lease, state, at)) = expiry.as_mut() {
                        if self.ask_expiry(*lease, state, at).await {
                            revoked = Some(*lease);
                            expiry = None;
                        }
                    }
                }
                message = next_message(&mut watch) => match message {
                    Ok(Some(resp)) if resp.canceled() => {
                        // Read again and reopen the watch.
                        watch = None;
                        known = before.take().unwrap_or(known);
                    }
                    Ok(Some(resp)) => {
                        if let Some(keys) = before.as_mut() {
                            for event in resp.events() {
                                let Some(kv) = event.kv() else { continue };
                                revision = revision.max(kv.mod_revision());
                                if event.event_type() == EventType::Delete {
                                    if kv.key() == session.key.as_bytes() {
                                        return Turn::SessionLost("our candidate key is gone".into());
                                    }
                                    if keys.first().is_some_and(|k| k.key.as_bytes() == kv.key()) {
                                        departed.push((keys.remove(0), Instant::now()));
                                    }
                                    keys.retain(|k| k.key.as_bytes() != kv.key());
                                } else if kv.create_revision() < session.create_revision {
                                    // A predecessor's value changed (Go's `Proclaim`).
                                    let key = EtcdLeader::from_kv(kv);
                                    keys.retain(|k| k.key != key.key);
                                    let at = keys.partition_point(|k| k.create_revision < key.create_revision);
                                    keys.insert(at, key);
                                }
                            }
                            evaluate = true;
                        }
                    }
                    Ok(None) | Err(_) => {
                        // Read again and reopen the watch. The broken stream goes now:
                        // polled again, it would answer at once, every pass.
                        watch = None;
                        known = before.take().unwrap_or(known);
                        read_at = Instant::now() + config.jittered_retry();
                    }
                },
            }
        }
    }

    /// Asks how long `lease` has left and feeds the answer to `state`; true when the
    /// lease was past expiry on the server and is now revoked.
    pub(super) async fn ask_expiry(
        &self,
        lease: i64,
        state: &mut Expiry,
        at: &mut Option<Instant>,
    ) -> bool {
        let retry = self.shared.core.config.retry_period;
        let sent = Instant::now();
        let (ttl, granted) = match self.lease_ttl(lease).await {
            Ok(answer) => answer,
            Err(e) => {
                debug!(error = %e, "cannot ask how long the leader's session has left");
                *at = Some(Instant::now() + retry);
                return false;
            }
        };
        match state.observe(sent, Instant::now(), ttl, granted) {
            Verdict::AskAt(next) => *at = Some(next),
            Verdict::Never => *at = None,
            Verdict::Expired => {
                info!(
                    lease,
                    "the leader's session is past expiry on the server; revoking it"
                );
                let result = self
                    .lease_request(
                        "revoke the expired session of the leader of",
                        |c| async move { c.lease_client().revoke(lease).await },
                    )
                    .await;
                match result {
                    // Revoked now, or already gone.
                    Ok(_) => return true,
                    Err(e) => {
                        debug!(error = %e, "failed to revoke the leader's expired session; etcd will");
                        *at = Some(Instant::now() + retry);
                    }
                }
            }
        }
        false
    }

    /// The candidate keys `options` select, oldest first, and the revision of the read.
    pub(super) async fn candidates(
        &self,
        options: GetOptions,
    ) -> Result<(Vec<EtcdLeader>, i64), LockError> {
        let options = options
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let resp = self
            .request("read", |c| async move {
                c.kv_client()
                    .get(self.shared.prefix.as_str(), Some(options))
                    .await
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((
            resp.kvs().iter().map(EtcdLeader::from_kv).collect(),
            revision,
        ))
    }

    /// The first candidate key by create revision, and the revision of the read.
    pub(super) async fn first_candidate(&self) -> Result<(Option<EtcdLeader>, i64), LockError> {
        let (keys, revision) = self.candidates(GetOptions::new().with_limit(1)).await?;
        Ok((keys.into_iter().next(), revision))
    }

    /// The keys created before ours, oldest first, and the revision of the read;
    /// `None` when our key is gone.
    pub(super) async fn candidates_before(
        &self,
        session: &Session,
    ) -> Result<Option<(Vec<EtcdLeader>, i64)>, LockError> {
        let options = GetOptions::new().with_max_create_revision(session.create_revision);
        let (mut keys, revision) = self.candidates(options).await?;
        match keys.pop() {
            Some(ours) if ours.key == session.key => Ok(Some((keys, revision))),
            _ => Ok(None),
        }
    }

    /// A watch on the prefix from just after `revision`; `None` when it cannot be
    /// opened (the keys are read again after a pause).
    pub(super) async fn watch_prefix(&self, revision: i64) -> Option<etcd_client::WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        match self
            .shared
            .client
            .watch_client()
            .watch(self.shared.prefix.as_str(), Some(options))
            .await
        {
            Ok(w) => Some(w),
            Err(e) => {
                debug!(error = %self.err("watch", e), "watch failed; reading again");
                None
            }
        }
    }

    /// etcd's answer on `lease`: the time to live, whole seconds truncated toward zero
    /// (-1 when etcd no longer has it), and the granted TTL.
    pub(super) async fn lease_ttl(&self, lease: i64) -> Result<(i64, i64), LockError> {
        let resp = self
            .lease_request("ask the session of the last leader in", |c| async move {
                c.lease_client().time_to_live(lease, None).await
            })
            .await?;
        Ok(resp.map_or((-1, 0), |r| (r.ttl(), r.granted_ttl())))
    }

    /// The granted TTL of the session lease of `leader`'s key while etcd still has it;
    /// `None` once it is gone.
    pub(super) async fn session_alive(
        &self,
        leader: &EtcdLeader,
    ) -> Result<Option<Duration>, LockError> {
        let Some(lease) = lease_of(leader) else {
            return Ok(None);
        };
        let (ttl, granted) = self.lease_ttl(lease).await?;
        if ttl < 0 {
            return Ok(None);
        }
        let granted = Duration::from_secs(u64::try_from(granted).unwrap_or(0));
        Ok(Some(granted.min(MAX_HONOURED_LEASE)))
    }
}

async fn next_message(
    watch: &mut Option<etcd_client::WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}
