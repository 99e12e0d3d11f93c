//! k8s-controller 0.15 (MaterializeInc), its `leader_election` module, in this process
//! (kube 5 and k8s-openapi 0.29, like ours), driven as its docs say: a `LeaderElection`
//! with the lease duration, renew deadline and retry period set, `with_lease(work)` in
//! a loop that rejoins the election when leadership is lost (the crate documentation's
//! controller loop), and on shutdown the `with_lease` future dropped, then `release`.
//! It renews on its own (GET, then PUT, every retry period) with no renewal hook: its
//! client records its requests (`ClientLog`), and a renewal is its PUT answered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_controller::LeaderElection;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::k8s::NAMESPACE;
use leaderelection_bench_driver::client_log::{renewals_of_leaders_as, ClientLog};
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

/// A renewal, as its client sees it: a GET, then the PUT that writes the Lease back.
const RENEWAL: &[http::Method] = &[http::Method::GET, http::Method::PUT];

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
        let log = ClientLog::kept_in(&self.logs);
        let client = kube::client::ClientBuilder::try_from(self.config.clone())
            .map_err(|e| e.to_string())?
            .with_layer(&log.layer())
            .build();
        Ok((client, log.last_put))
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
    let found =
        renewals_of_leaders_as(&lib, &lib.logs, prefix, leaders, RENEWAL, t.retry, window).await?;
    let mut samples = Samples::new();
    for s in found {
        samples.push_secs(s);
    }
    Ok((samples, leaders))
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
