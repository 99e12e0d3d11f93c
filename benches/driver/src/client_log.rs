//! A tower layer for a Kubernetes client that records each request it sends and when
//! its answer came: the hook for peers that expose no renewal of their own (when the
//! leader's last renewal was answered, how long a renewal took). Shared by the
//! benchmark and `benches/peers`, so it names no kube version: any client whose
//! service speaks `http` 1 takes it (`ClientBuilder::with_layer`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use std::time::Duration;

use tokio::time::Instant;

use crate::scenario::{LastRenewal, Library};

/// One request and its answer (response headers), as the client saw them.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The request's method.
    pub method: http::Method,
    /// When it was sent.
    pub start: Instant,
    /// When its answer came.
    pub end: Instant,
    /// A 2xx answer.
    pub ok: bool,
}

/// What one client sent; clones share it.
#[derive(Clone, Debug, Default)]
pub struct ClientLog {
    sent: Arc<Mutex<Vec<Sent>>>,
    /// When the last successful PATCH was answered: the renewal of the peers that
    /// renew with a PATCH.
    pub last_patch: LastRenewal,
    /// When the last successful PUT was answered: the renewal of the peers that read
    /// the Lease, then write it back whole.
    pub last_put: LastRenewal,
}

impl ClientLog {
    /// The layer to add to a client (`ClientBuilder::with_layer`) that records into this log.
    pub fn layer(&self) -> RecordLayer {
        RecordLayer(self.clone())
    }

    /// A new log, kept in `logs` for reading once the client is gone.
    pub fn kept_in(logs: &Mutex<Vec<ClientLog>>) -> Self {
        let log = Self::default();
        logs.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(log.clone());
        log
    }

    /// The requests that started at or after `since`, in the order they ended.
    pub fn since(&self, since: Instant) -> Vec<Sent> {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.start >= since)
            .cloned()
            .collect()
    }

    fn push(&self, sent: Sent) {
        let last = match sent.method {
            http::Method::PATCH => Some(&self.last_patch),
            http::Method::PUT => Some(&self.last_put),
            _ => None,
        };
        if let Some(last) = last.filter(|_| sent.ok) {
            *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent.end);
        }
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sent);
    }
}

/// Durations of renewals in a log: each run of successful requests, one after the
/// other, whose methods are those of `renewal` in order, from the first one sent to the
/// last one answered.
pub fn runs(sent: &[Sent], renewal: &[http::Method]) -> Vec<f64> {
    if renewal.is_empty() {
        return Vec::new();
    }
    sent.windows(renewal.len())
        .filter(|w| w.iter().zip(renewal).all(|(s, m)| s.ok && s.method == *m))
        .map(|w| {
            let (first, last) = (&w[0], &w[w.len() - 1]);
            last.end
                .saturating_duration_since(first.start)
                .as_secs_f64()
        })
        .collect()
}

/// [`renewals_of_leaders_as`] for a peer that renews with a PATCH: each successful
/// PATCH, through the answer of the `then` requests that follow it (a peer that reads
/// the Lease back after renewing).
pub async fn renewals_of_leaders(
    lib: &dyn Library,
    logs: &Mutex<Vec<ClientLog>>,
    prefix: &str,
    leaders: usize,
    settle: Duration,
    window: Duration,
    then: &[http::Method],
) -> Result<Vec<f64>, String> {
    let renewal: Vec<_> = std::iter::once(http::Method::PATCH)
        .chain(then.iter().cloned())
        .collect();
    renewals_of_leaders_as(lib, logs, prefix, leaders, &renewal, settle, window).await
}

/// Renewals of a peer that renews on its own timer: starts `leaders` leaders of
/// elections of their own, lets them settle for `settle`, then returns the renewals
/// their clients (each logged into `logs` by `lib`) timed over `window`, each a run of
/// the requests `renewal` as [`runs`] reads them.
pub async fn renewals_of_leaders_as(
    lib: &dyn Library,
    logs: &Mutex<Vec<ClientLog>>,
    prefix: &str,
    leaders: usize,
    renewal: &[http::Method],
    settle: Duration,
    window: Duration,
) -> Result<Vec<f64>, String> {
    let mut replicas = Vec::new();
    for i in 0..leaders {
        let mut r = lib.start(format!("{prefix}-{i}"), "renewer".into()).await?;
        if r.wait_leading(Duration::from_secs(30)).await.is_none() {
            return Err(format!("leader {i} did not lead within 30 s"));
        }
        replicas.push(r);
    }
    // Past the acquisitions' own writes.
    tokio::time::sleep(settle).await;
    let since = Instant::now();
    tokio::time::sleep(window).await;
    let logs: Vec<ClientLog> = logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut samples = Vec::new();
    for log in &logs {
        let sent: Vec<_> = log
            .since(since)
            .into_iter()
            .filter(|s| s.end <= since + window)
            .collect();
        samples.extend(runs(&sent, renewal));
    }
    for r in replicas {
        (r.crash)();
    }
    Ok(samples)
}

#[derive(Clone)]
/// A tower layer recording every request of the service it wraps into a [`ClientLog`].
pub struct RecordLayer(ClientLog);

impl<S> tower::Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            log: self.0.clone(),
        }
    }
}

/// The service [`RecordLayer`] wraps: forwards each request and records it.
pub struct Record<S> {
    inner: S,
    log: ClientLog,
}

type Answer<R, E> = Pin<Box<dyn Future<Output = Result<http::Response<R>, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Record<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Answer<R, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.method().clone();
        let log = self.log.clone();
        let start = Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await;
            log.push(Sent {
                method,
                start,
                end: Instant::now(),
                ok: matches!(&res, Ok(r) if r.status().is_success()),
            });
            res
        })
    }
}
