//! kube-leader-election 0.44, driven as its README says: `try_acquire_or_renew` every
//! retry period, `step_down` to release.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use leaderelection_bench_driver::scenario::{Library, Replica};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::common::{self, Setup};
use crate::NAMESPACE;

pub struct KubeLeaderElection(pub Setup);

/// A `LeaseLock` on the Lease `election` for `identity`, held for `ttl`.
pub fn lock(client: kube::Client, election: &str, identity: &str, ttl: Duration) -> LeaseLock {
    LeaseLock::new(
        client,
        NAMESPACE,
        LeaseLockParams {
            lease_name: election.to_owned(),
            holder_id: identity.to_owned(),
            lease_ttl: ttl,
        },
    )
}

impl Library for KubeLeaderElection {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let client = self.0.client(common::kube4, None);
        let timings = self.0.timings;
        async move {
            let lock = lock(client?, &election, &identity, timings.lease);
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
                        common::mark_leading(&leading_tx, now);
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
    common::replica_of_task(leading, last_renewal, release_tx, task)
}

impl KubeLeaderElection {
    /// A lone leader's renewals (`try_acquire_or_renew` while leading), timed around
    /// the call.
    pub async fn renewals(&self, prefix: &str, window: Duration) -> Result<Vec<f64>, String> {
        let lock = lock(
            self.0.client(common::kube4, None)?,
            prefix,
            "renewer",
            Duration::from_secs(1),
        );
        let samples = common::lone_leader_renewals(window, async || {
            matches!(
                lock.try_acquire_or_renew().await,
                Ok(LeaseLockResult::Acquired(_))
            )
        })
        .await;
        let _ = lock.step_down().await;
        Ok(samples)
    }
}
