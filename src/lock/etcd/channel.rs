//! The client's channel: every request goes to one endpoint, the pinned one, until a
//! request to it fails in transport or etcd answers `Unavailable` (a member without a
//! leader); then the next endpoint is pinned. Requests are never retried here: the
//! failed one reports its error (naming the endpoint), the next goes elsewhere.
//!
//! etcd-client's default channel balances with power-of-two-choices over all
//! endpoints, which keeps sending a share of the requests to a dead member (refused
//! connections, requests stuck until the elector's deadline): one member down would
//! cost renewals. Pinning with failover is what etcd's own clients do.

use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use etcd_client::{BalancedChannelBuilder, Channel};
use futures::future::BoxFuture;
use http::Uri;
use rand::Rng;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};
use tracing::debug;

use super::error::with_causes;

/// Builds a [`Failover`] channel for `Client::connect_with_balanced_channel`.
pub(super) struct Pinned;

impl BalancedChannelBuilder for Pinned {
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(Channel, mpsc::Sender<Change<Uri, Endpoint>>), Self::Error> {
        let (tx, rx) = mpsc::channel(buffer_size.max(1));
        let service = Failover {
            shared: Arc::new(Shared {
                endpoints: Mutex::new(Endpoints {
                    changes: rx,
                    channels: Vec::new(),
                }),
                // Replicas start on different members, so one member does not
                // carry every election.
                pinned: AtomicUsize::new(rand::rng().random_range(0..1024)),
            }),
        };
        Ok((Channel::Custom(BoxCloneSyncService::new(service)), tx))
    }
}

#[derive(Clone)]
struct Failover {
    shared: Arc<Shared>,
}

struct Shared {
    endpoints: Mutex<Endpoints>,
    /// A counter; the pinned endpoint is `pinned % endpoints`.
    pinned: AtomicUsize,
}

struct Endpoints {
    /// Endpoints as etcd-client adds them (all of them while it connects).
    changes: mpsc::Receiver<Change<Uri, Endpoint>>,
    channels: Vec<(Uri, tonic::transport::Channel)>,
}

impl Shared {
    /// The pinned endpoint, after applying the endpoint changes received so far.
    fn pick(&self) -> Option<(usize, Uri, tonic::transport::Channel)> {
        let mut e = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        while let Ok(change) = e.changes.try_recv() {
            match change {
                Change::Insert(uri, endpoint) => {
                    e.channels.retain(|(u, _)| *u != uri);
                    e.channels.push((uri, endpoint.connect_lazy()));
                }
                Change::Remove(uri) => e.channels.retain(|(u, _)| *u != uri),
            }
        }
        if e.channels.is_empty() {
            return None;
        }
        let counter = self.pinned.load(Ordering::SeqCst);
        let (uri, channel) = e.channels[counter % e.channels.len()].clone();
        Some((counter, uri, channel))
    }

    /// Moves the pin on, unless another request already did.
    fn failed(&self, counter: usize, uri: &Uri, why: &str) {
        if self
            .pinned
            .compare_exchange(
                counter,
                counter.wrapping_add(1),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
        {
            debug!(endpoint = %uri, reason = why, "etcd endpoint failed; switching to the next");
        }
    }
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is that of the endpoint picked for each call, awaited there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some((counter, uri, channel)) = shared.pick() else {
                return Err(Status::unavailable("no etcd endpoint configured").into());
            };
            let mut pending = Pending {
                shared: &shared,
                counter,
                uri: &uri,
                answered: false,
            };
            let result = channel.oneshot(request).await;
            pending.answered = true;
            match result {
                Ok(response) => {
                    if grpc_status(&response) == Some(Code::Unavailable) {
                        shared.failed(counter, &uri, "etcd answered Unavailable");
                    }
                    Ok(response)
                }
                Err(e) => {
                    let message = format!(
                        "etcd endpoint {uri}: {}",
                        with_causes(e.to_string(), e.source())
                    );
                    shared.failed(counter, &uri, &message);
                    let code = Status::from_error(Box::new(e)).code();
                    Err(Status::new(code, message).into())
                }
            }
        })
    }
}

/// A request on its way. Dropped unanswered (its caller gave up waiting: a slow or
/// frozen member), it moves the pin on like a failure.
struct Pending<'a> {
    shared: &'a Shared,
    counter: usize,
    uri: &'a Uri,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.shared.failed(
                self.counter,
                self.uri,
                "the request was abandoned before etcd answered",
            );
        }
    }
}

/// The gRPC status of a trailers-only response (how etcd answers errors).
fn grpc_status(response: &http::Response<Body>) -> Option<Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}
