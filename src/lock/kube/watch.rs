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
    let state = State {
        lock,
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
                match open(&self.lock, &rv).await {
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
                    self.lock.remember(&object);
                    return Some(Ok(ObjectEvent::Present(object)));
                }
                Some(Ok(WatchEvent::Deleted(object))) => {
                    self.seen(resource_version(&object).map(str::to_owned));
                    return Some(Ok(ObjectEvent::Absent));
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
) -> Result<BoxStream<'static, Result<WatchEvent<Value>, kube::Error>>, Failure> {
    let object = lock.describe();
    let selector = format!("metadata.name={}", lock.name);
    let req = Request::new(lock.collection_path())
        .watch(&WatchParams::default().fields(&selector), rv)
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
