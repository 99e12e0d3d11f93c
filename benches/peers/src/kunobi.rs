//! kunobi-ha 0.6.1's `leader` module (kube 4), driven as its README says: a
//! `LeaderElection` built with the lease duration, renew deadline and retry period,
//! `acquire().await` for a `LeaderGuard`, `guard.lost()` watched beside the work, and
//! `guard.step_down()` to release. It renews on its own (GET, then PUT, every retry
//! period) with no renewal hook: its client records its requests, and a renewal is its
//! PUT answered.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kunobi_ha::leader::LeaderElection;
use leaderelection_bench_driver::client_log::{ClientLog, Sent};
use leaderelection_bench_driver::scenario::{LastRenewal, Library, Replica, Timings};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::NAMESPACE;

pub struct Kunobi {
    pub url: String,
    pub token: String,
    pub timings: Timings,
    /// Every client started, for the renew latency.
    pub logs: Arc<Mutex<Vec<ClientLog>>>,
}

/// A `LeaderElection` at `t`. Its per-renewal request timeout (default 5 s, half its
/// default renew deadline) must not exceed the renew deadline, which the short timings'
/// 1.5 s would break: half the renew deadline here too, its default at the default
/// timings.
pub fn election(
    client: kube::Client,
    election: &str,
    identity: &str,
    t: Timings,
) -> LeaderElection {
    LeaderElection::builder(client, NAMESPACE, election)
        .identity(identity)
        .lease_duration(t.lease)
        .renew_deadline(t.renew)
        .retry_period(t.retry)
        .renew_request_timeout(t.renew / 2)
        .build()
}

/// A client for `url` with `token`: plain, or recording its requests into `log` and
/// stamping its successful PUTs into `last_put`.
pub fn client(
    url: &str,
    token: &str,
    record: Option<(&ClientLog, &LastRenewal)>,
) -> Result<kube::Client, String> {
    let uri = url.parse().map_err(|e| format!("bad server URL: {e}"))?;
    let mut config = kube::Config::new(uri);
    config.auth_info.token = Some(token.to_string().into());
    let Some((log, last_put)) = record else {
        return kube::Client::try_from(config).map_err(|e| e.to_string());
    };
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(|e| e.to_string())?
        .with_layer(&log.layer())
        .with_layer(&PutStamp(last_put.clone()))
        .build())
}

impl Library for Kunobi {
    fn start(
        &self,
        election_name: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let log = ClientLog::default();
        let last_put = LastRenewal::default();
        let client = client(&self.url, &self.token, Some((&log, &last_put)));
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(log);
        let t = self.timings;
        async move {
            let le = election(client?, &election_name, &identity, t);
            let (leading_tx, leading) = watch::channel(None);
            let (release_tx, mut release_rx) = oneshot::channel::<()>();
            // Owns the election and its guard: a crash aborts it, and the guard dropped
            // stops its renewals with no write to the Lease (its `Drop`).
            let task = tokio::spawn(async move {
                loop {
                    let mut guard = tokio::select! {
                        _ = &mut release_rx => return,
                        acquired = le.acquire() => match acquired {
                            Ok(guard) => guard,
                            Err(e) => {
                                eprintln!("kunobi-ha: acquire failed: {e}");
                                return;
                            }
                        },
                    };
                    let now = Instant::now();
                    leading_tx.send_if_modified(|v| v.is_none() && v.replace(now).is_none());
                    tokio::select! {
                        _ = &mut release_rx => {
                            guard.step_down().await;
                            return;
                        }
                        // Not leading any more: rejoin the election.
                        _ = guard.lost() => {}
                    }
                }
            });
            let abort = task.abort_handle();
            Ok(Replica {
                leading,
                last_renewal: last_put,
                release: Some(Box::new(move || {
                    let _ = release_tx.send(());
                })),
                crash: Box::new(move || abort.abort()),
                stopped: async move {
                    let _ = task.await;
                }
                .boxed(),
            })
        }
        .boxed()
    }
}

/// Renewals of `leaders` leaders (one election each, renewing every retry period on
/// their own timer) over `window`, each timed in its client from the GET sent to the
/// answer of the PUT that follows it.
pub async fn renewals(
    url: &str,
    token: &str,
    prefix: &str,
    window: Duration,
    leaders: usize,
) -> Result<Vec<f64>, String> {
    let lib = Kunobi {
        url: url.to_string(),
        token: token.to_string(),
        timings: Timings::SHORT,
        logs: Arc::default(),
    };
    let mut replicas = Vec::new();
    for i in 0..leaders {
        let mut r = lib.start(format!("{prefix}-{i}"), "renewer".into()).await?;
        if r.wait_leading(Duration::from_secs(30)).await.is_none() {
            return Err(format!("leader {i} did not lead within 30 s"));
        }
        replicas.push(r);
    }
    // Past the acquisitions' own writes.
    tokio::time::sleep(lib.timings.retry).await;
    let since = Instant::now();
    tokio::time::sleep(window).await;
    let logs: Vec<ClientLog> = lib.logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut samples = Vec::new();
    for log in &logs {
        let sent: Vec<Sent> = log
            .since(since)
            .into_iter()
            .filter(|s| s.end <= since + window)
            .collect();
        samples.extend(get_then_put(&sent));
    }
    for r in replicas {
        (r.crash)();
    }
    Ok(samples)
}

/// Durations of GET-then-PUT renewals in a log: each successful PUT right after a
/// successful GET, from the GET sent to the PUT answered.
fn get_then_put(sent: &[Sent]) -> Vec<f64> {
    sent.windows(2)
        .filter(|w| {
            w[0].method == http::Method::GET
                && w[1].method == http::Method::PUT
                && w[0].ok
                && w[1].ok
        })
        .map(|w| w[1].end.saturating_duration_since(w[0].start).as_secs_f64())
        .collect()
}

/// A tower layer that stamps when a PUT was last answered 2xx: the renewal hook of a
/// peer that renews with a PUT (`ClientLog` stamps PATCHes).
#[derive(Clone)]
struct PutStamp(LastRenewal);

impl<S> tower::Layer<S> for PutStamp {
    type Service = PutStamped<S>;

    fn layer(&self, inner: S) -> PutStamped<S> {
        PutStamped {
            inner,
            last: self.0.clone(),
        }
    }
}

/// The service [`PutStamp`] wraps.
struct PutStamped<S> {
    inner: S,
    last: LastRenewal,
}

type Answer<R, E> = Pin<Box<dyn Future<Output = Result<http::Response<R>, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for PutStamped<S>
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
        let put = req.method() == http::Method::PUT;
        let last = self.last.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await;
            if put && matches!(&res, Ok(r) if r.status().is_success()) {
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            res
        })
    }
}
