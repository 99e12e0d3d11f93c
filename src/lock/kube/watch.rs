//! Following one lock object with kube-runtime's watcher: a list and then a watch,
//! both with a field selector on the object's name.
//!
//! The watcher resumes a watch the server ended (its timeout) from the last
//! resourceVersion seen, bookmarks included. Any failure, 410 Gone too, ends the
//! stream instead of letting the watcher retry at once: the elector then polls and
//! opens a new watch after its retry period, so a failing server is never hammered.

use futures::stream::{self, StreamExt};
use kube::runtime::watcher::{self, watcher, Event};
use serde_json::Value;

use super::error::{classify, classify_status, BACKEND};
use super::object::{to_value, ObjectLock};
use crate::error::LockError;
use crate::lock::{LockEvent, WatchStream};

/// The lock's record changes, for [`LeaseLock::watch`](crate::LeaseLock::watch): the
/// listed state first, then every change.
pub(crate) fn records(lock: ObjectLock) -> WatchStream {
    let selector = format!("metadata.name={}", lock.name);
    let events = watcher(
        lock.api.clone(),
        watcher::Config::default().fields(&selector),
    )
    .boxed();
    // Whether the object was in the current list, so that one without it reads as
    // deleted.
    let listed = false;
    stream::unfold(Some((events, lock, listed)), |state| async move {
        let (mut events, lock, mut listed) = state?;
        loop {
            let (object, deleted) = match events.next().await? {
                Ok(Event::Init) => {
                    listed = false;
                    continue;
                }
                Ok(Event::InitDone) if !listed => {
                    return Some((Ok(LockEvent::Deleted), Some((events, lock, listed))));
                }
                Ok(Event::InitDone) => continue,
                Ok(Event::InitApply(o) | Event::Apply(o)) => (o, false),
                Ok(Event::Delete(o)) => (o, true),
                Err(e) => return Some((Err(watch_error(&lock, e)), None)),
            };
            // A server or proxy that ignored the field selector must not make another
            // object's record look like ours.
            if object.metadata.name.as_deref() != Some(lock.name.as_str()) {
                continue;
            }
            if deleted {
                return Some((Ok(LockEvent::Deleted), Some((events, lock, listed))));
            }
            listed = true;
            let event = to_value(object).and_then(|object: Value| {
                lock.remember(&object);
                lock.read(&object).map(LockEvent::Changed)
            });
            return Some((event, Some((events, lock, listed))));
        }
    })
    .boxed()
}

fn watch_error(lock: &ObjectLock, e: watcher::Error) -> LockError {
    let object = lock.describe();
    match e {
        watcher::Error::InitialListFailed(e) => classify("list", &object, e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            classify("watch", &object, e)
        }
        watcher::Error::WatchError(status) => classify_status("watch", &object, &status),
        watcher::Error::NoResourceVersion => {
            return LockError::unavailable(
                BACKEND,
                format!("watch {object}: the answer has no metadata.resourceVersion"),
            )
        }
    }
    .into_error()
}
