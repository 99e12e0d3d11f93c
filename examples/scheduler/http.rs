//! `/healthz` and `/metrics` over plain HTTP/1.1, one request per connection: all a
//! kubelet probe or a Prometheus scrape needs, without a web framework.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leaderelection::LeaderElector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// kube components' tolerance: unhealthy once the leader is 20s past its lease
/// without renewing (`NewLeaderHealthzAdaptor(20 * time.Second)`).
pub const HEALTH_TOLERANCE: Duration = Duration::from_secs(20);

const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints report on.
pub struct State {
    /// The election; `None` with `--leader-elect=false` (always healthy, always active).
    pub elector: Option<LeaderElector>,
    /// The election name, the `name` label of the gauge.
    pub name: String,
    /// Pods assigned by this replica.
    pub assignments: AtomicU64,
}

/// Serves until `shutdown` is cancelled.
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
        tokio::spawn(handle(stream, state.clone()));
    }
}

async fn handle(mut stream: TcpStream, state: Arc<State>) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => respond(&head, &state),
        Ok(None) => reply(400, "text/plain", "bad request\n".into()),
        Err(_) => reply(408, "text/plain", "request timeout\n".into()),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the end of the request head; `None` if it is too long or cut short.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

fn respond(head: &str, state: &State) -> String {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return reply(405, "text/plain", "only GET is supported\n".into());
    }
    let path = target.split('?').next().unwrap_or("");
    let response = match path {
        "/healthz" | "/livez" => health(state),
        "/metrics" => reply(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(state),
        ),
        _ => reply(
            404,
            "text/plain",
            "not found; try /healthz or /metrics\n".into(),
        ),
    };
    if method == "HEAD" {
        // Same headers, no body.
        return response
            .split_once("\r\n\r\n")
            .map_or(response.clone(), |(h, _)| format!("{h}\r\n\r\n"));
    }
    response
}

fn health(state: &State) -> String {
    match state
        .elector
        .as_ref()
        .map(|e| e.check_health(HEALTH_TOLERANCE))
    {
        None | Some(Ok(())) => reply(200, "text/plain", "ok".into()),
        Some(Err(e)) => reply(500, "text/plain", format!("leaderElection failed: {e}\n")),
    }
}

/// Prometheus text: client-go's `leader_election_master_status`, and our own counter.
pub fn metrics(state: &State) -> String {
    let leading = state.elector.as_ref().is_none_or(LeaderElector::is_leader);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP leader_election_master_status [ALPHA] Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name."
    );
    let _ = writeln!(out, "# TYPE leader_election_master_status gauge");
    let _ = writeln!(
        out,
        "leader_election_master_status{{name=\"{}\"}} {}",
        escape_label(&state.name),
        u8::from(leading)
    );
    let _ = writeln!(
        out,
        "# HELP scheduler_example_assignments_total Pods this replica assigned while it led."
    );
    let _ = writeln!(out, "# TYPE scheduler_example_assignments_total counter");
    let _ = writeln!(
        out,
        "scheduler_example_assignments_total {}",
        state.assignments.load(Ordering::Relaxed)
    );
    out
}

/// Prometheus label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn reply(code: u16, content_type: &str, body: String) -> String {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Internal Server Error",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
