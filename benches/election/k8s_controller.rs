//! k8s-controller 0.15 (MaterializeInc), its `leader_election` module, in this process
//! (kube 5 and k8s-openapi 0.29, like ours), driven as its docs say: a `LeaderElection`
//! with the lease duration, renew deadline and retry period set, `with_lease(work)` in
//! a loop that rejoins the election when leadership is lost (the crate documentation's
//! controller loop), and on shutdown the `with_lease` future dropped, then `release`.
//! It renews on its own (GET, then PUT, every retry period) with no renewal hook: its
//! client records its requests, and a renewal is its PUT answered.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_controller::LeaderElection;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::k8s::NAMESPACE;
use leaderelection_bench_driver::client_log::{ClientLog, Sent};
use leaderelection_bench_driver::scenario::{LastRenewal, Library, Replica, Timings};
use leaderelection_bench_driver::stats::Samples;

/// Its name in the tables.
pub const LABEL: &str = "k8s-controller 0.15 (leader_election)";

/// Its name in the contention section's replicas and the prefix of its load users.
pub const ARG: &str = "k8s-controller";

/// What its handover row must say, read from its source.
pub const HANDOVER: &str = "releases (`release`: holderIdentity cleared), and its standby takes the Lease at its next poll, every retry period times a jitter of 1 to 1.5 (src/leader_election.rs, `acquire`)";

/// What its crash failover row must say, read from its source.
pub const CRASH: &str = "its standby counts the lease from when one of its polls (every 1 to 1.5 retry periods) first saw the last renewal, not from renewTime, and takes the Lease at its first poll after that (src/leader_election.rs, `try_acquire`)";

/// A `LeaderElection` at `t`, the lease duration taken whole seconds as the crate does.
pub fn election(
    client: kube::Client,
    election: &str,
    identity: &str,
    t: Timings,
) -> LeaderElection {
    LeaderElection::new(client, NAMESPACE, election, identity)
        .with_lease_duration(t.lease)
        .with_renew_deadline(t.renew)
        .with_retry_period(t.retry)
}

/// k8s-controller's `LeaderElection`, one client per candidate.
pub struct K8sController {
    pub config: kube::Config,
    pub timings: Timings,
    /// Every client started, for the renew latency.
    pub logs: Arc<Mutex<Vec<ClientLog>>>,
}

impl K8sController {
    pub fn new(config: kube::Config, timings: Timings) -> Self {
        Self {
            config,
            timings,
            logs: Arc::default(),
        }
    }

    /// A client that records its requests, and the instant its last PUT was answered.
    fn client(&self) -> Result<(kube::Client, LastRenewal), String> {
        let log = ClientLog::default();
        let last_put = LastRenewal::default();
        let client = kube::client::ClientBuilder::try_from(self.config.clone())
            .map_err(|e| e.to_string())?
            .with_layer(&log.layer())
            .with_layer(&PutStamp(last_put.clone()))
            .build();
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(log);
        Ok((client, last_put))
    }
}

impl Library for K8sController {
    fn start(
        &self,
        election_name: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let client = self.client();
        let t = self.timings;
        async move {
            let (client, last_put) = client?;
            let le = election(client, &election_name, &identity, t);
            let (leading_tx, leading) = watch::channel(None);
            let (release_tx, release_rx) = oneshot::channel::<()>();
            // A crash aborts this task: the `with_lease` future is dropped, and with it
            // the renewals, with no write to the Lease.
            let task = tokio::spawn(async move {
                let campaign = async {
                    loop {
                        // The work reports leading, then runs until `with_lease` drops
                        // it (leadership lost), when the loop rejoins the election.
                        le.with_lease(async {
                            let now = Instant::now();
                            leading_tx
                                .send_if_modified(|v| v.is_none() && v.replace(now).is_none());
                            std::future::pending::<()>().await
                        })
                        .await;
                    }
                };
                tokio::select! {
                    _ = release_rx => {}
                    _ = campaign => {}
                }
                le.release().await;
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

/// Renewals of k8s-controller: leaders of elections of their own at the short timings
/// (each renewing every retry period, on its own timer), as many as make a renewal
/// every `period` in all; each timed in its client from the GET sent to the answer of
/// the PUT that follows it.
pub async fn renewals(
    config: kube::Config,
    period: Duration,
    window: Duration,
    prefix: &str,
) -> Result<(Samples, usize), String> {
    let t = Timings::SHORT;
    let lib = K8sController::new(config, t);
    let leaders = (t.retry.as_millis() / period.as_millis()).max(1) as usize;
    let mut replicas = Vec::new();
    for i in 0..leaders {
        let mut r = lib.start(format!("{prefix}-{i}"), "renewer".into()).await?;
        if r.wait_leading(Duration::from_secs(30)).await.is_none() {
            return Err(format!("leader {i} did not lead within 30 s"));
        }
        replicas.push(r);
    }
    // Past the acquisitions' own writes.
    tokio::time::sleep(t.retry).await;
    let since = Instant::now();
    tokio::time::sleep(window).await;
    let logs: Vec<ClientLog> = lib.logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut samples = Samples::new();
    for log in &logs {
        let sent: Vec<Sent> = log
            .since(since)
            .into_iter()
            .filter(|s| s.end <= since + window)
            .collect();
        for s in get_then_put(&sent) {
            samples.push_secs(s);
        }
    }
    for r in replicas {
        (r.crash)();
    }
    Ok((samples, leaders))
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
/// peer that renews with a PUT ([`ClientLog`] stamps PATCHes).
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

// ---- one replica of the contention section, in a child process ---------------------

/// One replica of the contention section: `with_lease` around work that reports its
/// term and acts every `act_every` until `with_lease` drops it (leadership lost), in a
/// loop that rejoins the election; on shutdown the work is dropped, then `release`. It
/// exposes no token.
pub async fn contend(
    client: kube::Client,
    election_name: &str,
    identity: &str,
    t: Timings,
    act_every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    use leaderelection_testkit::child;
    let le = election(client, election_name, identity, t);
    let campaign = async {
        loop {
            le.with_lease(async {
                let term = child::Term::untimed(0, identity);
                let mut act = tokio::time::interval(act_every);
                // After a SIGSTOP, one action, not a burst of the ticks missed meanwhile.
                act.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    act.tick().await;
                    term.act();
                }
            })
            .await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = campaign => {}
    }
    le.release().await;
    Ok(())
}
