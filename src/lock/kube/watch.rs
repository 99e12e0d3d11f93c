//! Following one lock object with the Kubernetes watch API.
//!
//! The stream lists the object (field selector on its name) when it has no
//! resourceVersion to start from, then watches from the last resourceVersion seen:
//! it resumes when the server ends a watch normally (its timeout), re-lists after
//! 410 Gone, and ends on any other failure so the elector polls and reopens it after
//! its retry period. It never sleeps.

use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use kube::core::params::WatchParams;
use kube::core::{Request, WatchEvent};
use serde_json::Value;

use super::object::{resource_version, ObjectLock};
use super::{classify, classify_status, Failure};
use crate::error::LockError;
use crate::lock::{LockEvent, WatchStream};

/// A watch that ends this soon after it opened without reporting anything is not
/// resumed at once: the server is closing watches early, and reopening in a loop
/// would hammer it. The stream ends instead and the elector reopens it later.
const MIN_QUIET_WATCH: Duration = Duration::from_secs(1);

/// Re-lists in a row without an event in between before giving up on the stream.
const MAX_RELISTS: u32 = 3;

/// A state of the watched object.
#[derive(Debug, Clone)]
pub(crate) enum ObjectEvent {
    /// The object as created or written.
    Present(Value),
    /// The object does not exist (deleted, or absent when listed).
    Absent,
}

/// The lock's record changes, for [`LeaseLock::watch`](crate::LeaseLock::watch).
pub(crate) fn records(lock: ObjectLock) -> WatchStream {
    let from = lock.last_seen_version();
    let reader = lock.clone();
    objects(lock, from)
        .map(move |event| match event? {
            ObjectEvent::Present(object) => reader.read(&object).map(LockEvent::Changed),
            ObjectEvent::Absent => Ok(LockEvent::Deleted),
        })
        .boxed()
}

struct State {
    lock: ObjectLock,
    timeout_secs: Option<u32>,
    /// Where the next watch starts; `None` re-lists first.
    rv: Option<String>,
    events: Option<BoxStream<'static, Result<WatchEvent<Value>, kube::Error>>>,
    opened_at: Instant,
    reported: bool,
    relists: u32,
    done: bool,
}

/// The object's states from `from` on (or from a fresh list when `None`, whose
/// result is reported first).
pub(crate) fn objects(
    lock: ObjectLock,
    from: Option<String>,
) -> BoxStream<'static, Result<ObjectEvent, LockError>> {
    objects_with_timeout(lock, from, None)
}

/// [`objects`] with each watch request asking the server to end it after
/// `timeout_secs` (kube's default, 290s, when `None`).
fn objects_with_timeout(
    lock: ObjectLock,
    from: Option<String>,
    timeout_secs: Option<u32>,
) -> BoxStream<'static, Result<ObjectEvent, LockError>> {
    let state = State {
        lock,
        timeout_secs,
        rv: from,
        events: None,
        opened_at: Instant::now(),
        reported: false,
        relists: 0,
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    })
    .boxed()
}

impl State {
    fn fail(&mut self, e: LockError) -> Option<Result<ObjectEvent, LockError>> {
        self.done = true;
        self.events = None;
        Some(Err(e))
    }

    async fn next(&mut self) -> Option<Result<ObjectEvent, LockError>> {
        loop {
            if self.done {
                return None;
            }
            let Some(events) = self.events.as_mut() else {
                let Some(rv) = self.rv.clone() else {
                    self.relists += 1;
                    if self.relists > MAX_RELISTS {
                        return self.fail(LockError::unavailable(
                            super::BACKEND,
                            format!(
                                "watch {}: the server keeps answering 410 Gone right after a list",
                                self.lock.describe()
                            ),
                        ));
                    }
                    match self.lock.list().await {
                        Ok((object, rv)) => {
                            self.rv = Some(rv);
                            return Some(Ok(
                                object.map_or(ObjectEvent::Absent, ObjectEvent::Present)
                            ));
                        }
                        Err(e) => return self.fail(e),
                    }
                };
                match open(&self.lock, &rv, self.timeout_secs).await {
                    Ok(events) => {
                        self.events = Some(events);
                        self.opened_at = Instant::now();
                        self.reported = false;
                    }
                    Err(Failure::Gone) => self.rv = None,
                    Err(other) => return self.fail(other.into_error()),
                }
                continue;
            };
            match events.next().await {
                Some(Ok(WatchEvent::Added(object) | WatchEvent::Modified(object))) => {
                    self.seen(resource_version(&object).map(str::to_owned));
                    if self.is_ours(&object) {
                        self.lock.remember(&object);
                        return Some(Ok(ObjectEvent::Present(object)));
                    }
                }
                Some(Ok(WatchEvent::Deleted(object))) => {
                    self.seen(resource_version(&object).map(str::to_owned));
                    if self.is_ours(&object) {
                        return Some(Ok(ObjectEvent::Absent));
                    }
                }
                Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                    self.seen(Some(bookmark.metadata.resource_version));
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    match classify_status("watch", &self.lock.describe(), &status) {
                        Failure::Gone => self.gone(),
                        other => return self.fail(other.into_error()),
                    }
                }
                Some(Err(e)) => match classify("watch", &self.lock.describe(), e) {
                    Failure::Gone => self.gone(),
                    other => return self.fail(other.into_error()),
                },
                None => {
                    self.events = None;
                    if !self.reported && self.opened_at.elapsed() < MIN_QUIET_WATCH {
                        self.done = true;
                    }
                }
            }
        }
    }

    /// An event moved the stream forward to `rv`.
    fn seen(&mut self, rv: Option<String>) {
        if let Some(rv) = rv.filter(|rv| !rv.is_empty()) {
            self.rv = Some(rv);
        }
        self.reported = true;
        self.relists = 0;
    }

    /// Whether a watched object is the lock's: a server or proxy that ignored the
    /// field selector must not make another object's record look like ours.
    fn is_ours(&self, object: &Value) -> bool {
        object.pointer("/metadata/name").and_then(Value::as_str) == Some(self.lock.name.as_str())
    }

    /// The resourceVersion is too old for the server: list again.
    fn gone(&mut self) {
        self.events = None;
        self.rv = None;
    }
}

/// Opens a watch on the object from `rv`.
async fn open(
    lock: &ObjectLock,
    rv: &str,
    timeout_secs: Option<u32>,
) -> Result<BoxStream<'static, Result<WatchEvent<Value>, kube::Error>>, Failure> {
    let object = lock.describe();
    let selector = format!("metadata.name={}", lock.name);
    let mut params = WatchParams::default().fields(&selector);
    params.timeout = timeout_secs;
    let req = Request::new(lock.collection_path())
        .watch(&params, rv)
        .map_err(|e| {
            Failure::Other(LockError::unavailable(
                super::BACKEND,
                format!("watch {object}: could not build the request: {e}"),
            ))
        })?;
    match lock.client.request_events::<Value>(req).await {
        Ok(events) => Ok(events.boxed()),
        Err(e) => Err(classify("watch", &object, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::object::Kind;
    use super::*;
    use crate::lock::LeaseLock;
    use crate::LeaderElectionRecord;
    use leaderelection_testkit::apiserver::ApiServer;

    #[tokio::test]
    async fn resumes_where_it_was_when_the_server_ends_a_watch() {
        let server = ApiServer::start().await.unwrap();
        let lock = ObjectLock::new(Kind::Lease, server.client(), "ns".into(), "x".into());
        let writer = super::super::KubeLeaseLock::new(server.client(), "ns", "x");
        let mut events = objects_with_timeout(lock, None, Some(2));
        let first = tokio::time::timeout(Duration::from_secs(30), events.next()).await;
        assert!(
            matches!(first, Ok(Some(Ok(ObjectEvent::Absent)))),
            "{first:?}"
        );
        // Polled all along, as the elector polls it, while the server ends two quiet
        // watches.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if tx.send(e).is_err() {
                    return;
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(rx.try_recv().is_err(), "nothing happened yet");
        let record = LeaderElectionRecord {
            holder_identity: "a".into(),
            lease_duration_seconds: 15,
            ..Default::default()
        };
        let v = writer.create(&record).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(Ok(ObjectEvent::Present(o)))) => {
                assert_eq!(resource_version(&o), Some(v.as_str()))
            }
            other => panic!("expected the created object, got {other:?}"),
        }
        let requests = server.requests();
        assert!(requests.verb("watch") >= 3, "resumed: {requests:?}");
        assert_eq!(requests.verb("list"), 1, "resumed without listing again");
    }
}
