//! `/healthz`, `/readyz` and `/metrics` on hyper's HTTP/1.1 server: the library's
//! health check, readiness and Prometheus registry, served by any HTTP stack the same
//! way.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use leaderelection::LeaderElector;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// kube components' tolerance: unhealthy once the leader is 20s past its lease
/// without renewing (`NewLeaderHealthzAdaptor(20 * time.Second)`).
pub const HEALTH_TOLERANCE: Duration = Duration::from_secs(20);

/// What the endpoints report on.
pub struct State {
    /// The election; `None` with `--leader-elect=false` (always healthy and ready).
    pub elector: Option<LeaderElector>,
    /// The library's metrics and the example's own.
    pub registry: Registry,
}

/// Serves until `shutdown` is cancelled, one request per connection (probes and
/// scrapes open a connection each).
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(respond(&req, &state)) }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

fn respond(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let elector = state.elector.as_ref();
    let (code, content_type, body) = match req.uri().path() {
        "/healthz" | "/livez" => match elector.map(|e| e.check_health(HEALTH_TOLERANCE)) {
            None | Some(Ok(())) => (StatusCode::OK, "text/plain", "ok".to_owned()),
            Some(Err(e)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("leaderElection failed: {e}\n"),
            ),
        },
        "/readyz" if elector.is_none_or(LeaderElector::is_ready) => {
            (StatusCode::OK, "text/plain", "ok".to_owned())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the election has not been observed yet\n".to_owned(),
        ),
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz or /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}
