//! A tower layer for a Kubernetes client that records each request it sends and when
//! its answer came: the hook for peers that expose no renewal of their own (when the
//! leader's last renewal was answered, how long a renewal took). Shared with
//! `benches/peers`, so it names no kube version: any client whose
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
    /// When the last successful PATCH was answered: the peers here renew with a PATCH.
    pub last_patch: LastRenewal,
}

impl ClientLog {
    /// The layer to add to a client (`ClientBuilder::with_layer`) that records into this log.
    pub fn layer(&self) -> RecordLayer {
        RecordLayer(self.clone())
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
        if sent.ok && sent.method == http::Method::PATCH {
            *self.last_patch.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent.end);
        }
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sent);
    }
}

/// Durations of renewals in a log: each successful PATCH, through the answer of the
/// `then` requests that follow it (a peer that reads the Lease back after renewing).
pub fn renewals(sent: &[Sent], then: &[http::Method]) -> Vec<f64> {
    let mut out = Vec::new();
    for (i, s) in sent.iter().enumerate() {
        if s.method != http::Method::PATCH || !s.ok {
            continue;
        }
        let follow = &sent[i + 1..];
        if follow.len() < then.len()
            || follow
                .iter()
                .zip(then)
                .any(|(f, m)| f.method != *m || !f.ok)
        {
            continue;
        }
        let end = follow[..then.len()].last().map_or(s.end, |f| f.end);
        out.push(end.saturating_duration_since(s.start).as_secs_f64());
    }
    out
}

/// Renewals of a peer that renews on its own timer: starts `leaders` leaders of
/// elections of their own, lets them settle for `settle`, then returns the renewals
/// their clients (each logged into `logs` by `lib`) timed over `window`, as
/// [`renewals`] reads them.
pub async fn renewals_of_leaders(
    lib: &dyn Library,
    logs: &Mutex<Vec<ClientLog>>,
    prefix: &str,
    leaders: usize,
    settle: Duration,
    window: Duration,
    then: &[http::Method],
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
        samples.extend(renewals(&sent, then));
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
