//! Watch streams: newline-delimited `{"type": ..., "object": ...}` events.
//!
//! As kube-apiserver: a watch without a resourceVersion (or with "0") first sends the
//! current objects as ADDED; a watch from resourceVersion N sends the changes after N,
//! or one ERROR event with a 410 Expired Status when N is older than the kept history;
//! BOOKMARK events (when asked for) carry the resourceVersion the stream has reached;
//! the stream ends after `timeoutSeconds`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::resources::Resource;
use super::selector::Selector;
use super::status::ApiError;
use super::storage::{EventKind, Storage, StorageError};
use super::table;

/// What a watch request asked for.
#[derive(Debug, Clone)]
pub(crate) struct WatchRequest {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub fields: Selector,
    pub labels: Selector,
    /// Start after this resourceVersion; None sends the current state first.
    pub after: Option<u64>,
    pub timeout: Duration,
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: a bookmark marks the end of the initial state.
    pub initial_events_end: bool,
    /// Send each object as a one-row Table (kubectl get --watch).
    pub table: bool,
    pub bookmark_interval: Duration,
}

/// Starts the watch; the receiver yields the body's lines.
///
/// # Errors
///
/// When storage cannot be reached. A too old resourceVersion is not an error here: it
/// is the stream's one ERROR event, as kube-apiserver sends it.
pub(crate) async fn start(
    storage: Arc<dyn Storage>,
    request: WatchRequest,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let resource = request.resource;
    let prefix = resource.prefix(request.namespace.as_deref());
    let storage_error = |e| ApiError::served(resource, "", e);
    let (initial, after) = match request.after {
        Some(rv) => (Vec::new(), rv),
        None => storage.list(&prefix).await.map_err(storage_error)?,
    };
    let events = match storage.watch(&prefix, after).await {
        Ok(events) => Ok(events),
        Err(StorageError::Expired { requested, oldest }) => {
            Err(ApiError::expired(requested, oldest))
        }
        Err(e) => return Err(storage_error(e)),
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut sender = Sender {
            tx,
            request: &request,
            first_table: true,
        };
        for obj in initial {
            let obj = resource.served(obj);
            if sender.selected(&obj) && !sender.send("ADDED", obj).await {
                return;
            }
        }
        if request.initial_events_end && !sender.bookmark(after, true).await {
            return;
        }
        let mut events = match events {
            Ok(events) => events,
            Err(status) => {
                sender.send("ERROR", status.to_json()).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(request.timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + request.bookmark_interval,
            request.bookmark_interval,
        );
        let mut reached = after;
        loop {
            tokio::select! {
                _ = sender.tx.closed() => return,
                _ = &mut deadline => {
                    if request.bookmarks {
                        sender.bookmark(reached, false).await;
                    }
                    return;
                }
                _ = ticker.tick(), if request.bookmarks => {
                    if !sender.bookmark(reached, false).await {
                        return;
                    }
                }
                event = events.next() => {
                    let event = match event {
                        None => return,
                        Some(Ok(event)) => event,
                        Some(Err(StorageError::Expired { requested, oldest })) => {
                            sender.send("ERROR", ApiError::expired(requested, oldest).to_json()).await;
                            return;
                        }
                        Some(Err(e)) => {
                            sender.send("ERROR", ApiError::served(resource, "", e).to_json()).await;
                            return;
                        }
                    };
                    reached = event.rv;
                    let obj = resource.served(event.object);
                    let was = event.prev.map(|p| resource.served(p));
                    let was_selected = was.as_ref().is_some_and(|p| sender.selected(p));
                    let kind = match (event.kind, was_selected, sender.selected(&obj)) {
                        (EventKind::Deleted, true, _) => "DELETED",
                        (EventKind::Deleted, false, _) => continue,
                        // An object that comes into or leaves the selection is added or
                        // deleted from the watcher's point of view.
                        (_, false, true) => "ADDED",
                        (_, true, true) => "MODIFIED",
                        (_, true, false) => "DELETED",
                        (_, false, false) => continue,
                    };
                    if !sender.send(kind, obj).await {
                        return;
                    }
                }
            }
        }
    });
    Ok(rx)
}

struct Sender<'a> {
    tx: mpsc::Sender<Bytes>,
    request: &'a WatchRequest,
    first_table: bool,
}

impl Sender<'_> {
    fn selected(&self, obj: &Value) -> bool {
        self.request.fields.matches(obj) && self.request.labels.matches(obj)
    }

    /// Sends one event; false when the client has gone.
    async fn send(&mut self, kind: &str, object: Value) -> bool {
        let object = if self.request.table && kind != "ERROR" && kind != "BOOKMARK" {
            let with_columns = std::mem::replace(&mut self.first_table, false);
            table::render(self.request.resource, &[object], 0, with_columns)
        } else {
            object
        };
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        self.tx.send(Bytes::from(line)).await.is_ok()
    }

    async fn bookmark(&mut self, rv: u64, initial_events_end: bool) -> bool {
        let resource = self.request.resource;
        let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": resource.kind,
            "apiVersion": resource.api_version(),
            "metadata": metadata,
        });
        self.send("BOOKMARK", object).await
    }
}
