//! kube-leader-election 0.44, driven as its README says: `try_acquire_or_renew` every
//! retry period, `step_down` to release.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use leaderelection_bench_driver::scenario::{Library, Replica, Timings};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::NAMESPACE;

pub struct KubeLeaderElection {
    pub url: String,
    pub token: String,
    pub timings: Timings,
}

fn client(url: &str, token: &str) -> Result<kube::Client, String> {
    let uri = url.parse().map_err(|e| format!("bad server URL: {e}"))?;
    let mut config = kube::Config::new(uri);
    config.auth_info.token = Some(token.to_string().into());
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

impl Library for KubeLeaderElection {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let client = client(&self.url, &self.token);
        let timings = self.timings;
        async move {
            let lock = LeaseLock::new(
                client?,
                NAMESPACE,
                LeaseLockParams {
                    lease_name: election,
                    holder_id: identity,
                    lease_ttl: timings.lease,
                },
            );
            Ok(spawn(lock, timings.retry))
        }
        .boxed()
    }
}

fn spawn(lock: LeaseLock, every: Duration) -> Replica {
    let (leading_tx, leading) = watch::channel(None);
    let last_renewal = Arc::new(Mutex::new(None));
    let (release_tx, mut release_rx) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let last_renewal = last_renewal.clone();
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut leading = false;
            loop {
                tokio::select! {
                    _ = &mut release_rx => break,
                    _ = tick.tick() => {}
                }
                match lock.try_acquire_or_renew().await {
                    Ok(LeaseLockResult::Acquired(_)) => {
                        let now = Instant::now();
                        leading = true;
                        *last_renewal.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                        leading_tx.send_if_modified(|v| v.is_none() && v.replace(now).is_none());
                    }
                    Ok(LeaseLockResult::NotAcquired(_)) => leading = false,
                    Err(_) => {}
                }
            }
            if leading {
                let _ = lock.step_down().await;
            }
        }
    });
    let abort = task.abort_handle();
    Replica {
        leading,
        last_renewal,
        release: Some(Box::new(move || {
            let _ = release_tx.send(());
        })),
        crash: Box::new(move || abort.abort()),
        stopped: async move {
            let _ = task.await;
        }
        .boxed(),
    }
}

/// A lone leader's renewals (`try_acquire_or_renew` while leading) every `period`,
/// timed around the call.
pub async fn renewals(
    url: &str,
    token: &str,
    prefix: &str,
    window: Duration,
    period: Duration,
) -> Result<Vec<f64>, String> {
    let lock = LeaseLock::new(
        client(url, token)?,
        NAMESPACE,
        LeaseLockParams {
            lease_name: prefix.to_string(),
            holder_id: "renewer".into(),
            lease_ttl: Duration::from_secs(1),
        },
    );
    let mut samples = Vec::new();
    let mut leading = false;
    let end = Instant::now() + window;
    let mut tick = tokio::time::interval(period);
    while Instant::now() < end {
        tick.tick().await;
        let t0 = Instant::now();
        let acquired = matches!(
            lock.try_acquire_or_renew().await,
            Ok(LeaseLockResult::Acquired(_))
        );
        if acquired && leading {
            samples.push(t0.elapsed().as_secs_f64());
        }
        leading = acquired;
    }
    let _ = lock.step_down().await;
    Ok(samples)
}
