//! Following the record's key with an etcd watch.

use etcd_client::{Client, EventType, WatchOptions};

use super::error::{map_error, BACKEND};
use super::kv::parse_kv;
use crate::error::LockError;
use crate::lock::{LockEvent, WatchStream};

/// The record's changes from now on; the stream ends after the first error, and the
/// elector reads again and reopens it.
pub(super) fn records(client: Client, key: String, endpoints: String) -> WatchStream {
    let ctx = WatchCtx {
        client,
        key,
        endpoints,
    };
    Box::pin(futures::stream::unfold(
        (ctx, WatchState::Open),
        |(ctx, state)| async move { ctx.next(state).await },
    ))
}

struct WatchCtx {
    client: Client,
    key: String,
    endpoints: String,
}

enum WatchState {
    Open,
    Watching(Box<etcd_client::WatchStream>),
    Done,
}

type WatchItem = Result<LockEvent, LockError>;

impl WatchCtx {
    fn err(&self, e: etcd_client::Error) -> LockError {
        let at = if self.endpoints.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.endpoints)
        };
        map_error(format!("failed to watch {} on etcd{at}", self.key), e)
    }

    async fn next(self, state: WatchState) -> Option<(WatchItem, (Self, WatchState))> {
        match state {
            WatchState::Done => None,
            WatchState::Open => {
                // Read first and watch from just after that read: no change between the
                // elector's last read and the watch is missed, and the current state
                // comes first (the elector ignores it when it knew it already).
                let resp = match self.client.kv_client().get(self.key.as_str(), None).await {
                    Ok(r) => r,
                    Err(e) => return Some((Err(self.err(e)), (self, WatchState::Done))),
                };
                let from = resp.header().map_or(0, |h| h.revision()) + 1;
                let current = match resp.kvs().first() {
                    Some(kv) => parse_kv(kv).map(LockEvent::Changed),
                    None => Ok(LockEvent::Deleted),
                };
                let options = WatchOptions::new().with_start_revision(from);
                match self
                    .client
                    .watch_client()
                    .watch(self.key.as_str(), Some(options))
                    .await
                {
                    Ok(w) => Some((current, (self, WatchState::Watching(Box::new(w))))),
                    Err(e) => Some((Err(self.err(e)), (self, WatchState::Done))),
                }
            }
            WatchState::Watching(mut w) => loop {
                match w.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            let e = LockError::unavailable(
                                BACKEND,
                                format!(
                                    "etcd cancelled the watch on {}: {} (compacted at {})",
                                    self.key,
                                    resp.cancel_reason(),
                                    resp.compact_revision()
                                ),
                            );
                            return Some((Err(e), (self, WatchState::Done)));
                        }
                        // Only the last state matters to a standby.
                        let Some(event) = resp.events().last() else {
                            continue;
                        };
                        let item = match (event.event_type(), event.kv()) {
                            (EventType::Put, Some(kv)) => parse_kv(kv).map(LockEvent::Changed),
                            (EventType::Put, None) => continue,
                            (EventType::Delete, _) => Ok(LockEvent::Deleted),
                        };
                        return Some((item, (self, WatchState::Watching(w))));
                    }
                    Ok(None) => return None,
                    Err(e) => return Some((Err(self.err(e)), (self, WatchState::Done))),
                }
            },
        }
    }
}
