//! kubert 0.25's Lease manager (feature `lease`, kube-client 1.1), driven as its docs
//! and Linkerd's policy controller use it: the Lease created if missing,
//! `LeaseManager::init`, then `spawn(claimant, ClaimParams)`, which claims, renews
//! `renew_grace_period` before expiry, and vacates the Lease when every receiver of
//! its claim channel is dropped.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi_025::api::coordination::v1::{Lease, LeaseSpec};
use kube_client_1::api::{Api, PostParams};
use kubert::lease::{Claim, ClaimParams, LeaseManager};
use leaderelection_bench_driver::client_log::ClientLog;
use leaderelection_bench_driver::scenario::{Library, Replica, Timings};
use tokio::sync::{oneshot, watch};

use crate::common::{self, Setup};
use crate::NAMESPACE;

pub struct Kubert(pub Setup);

/// Renews `lease - retry` before expiry: every retry period, as the other libraries
/// here renew.
pub fn params(t: Timings) -> ClaimParams {
    ClaimParams {
        lease_duration: t.lease,
        renew_grace_period: t.lease.saturating_sub(t.retry),
    }
}

/// The manager of the Lease `name`, created first if missing: `LeaseManager::init`
/// needs the Lease to exist.
pub async fn manager(api: Api<Lease>, name: &str) -> Result<LeaseManager, String> {
    let mut lease = Lease {
        spec: Some(LeaseSpec::default()),
        ..Lease::default()
    };
    lease.metadata.name = Some(name.to_string());
    match api.create(&PostParams::default(), &lease).await {
        Ok(_) => {}
        Err(kube_client_1::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(format!("cannot create the Lease {name}: {e}")),
    }
    LeaseManager::init(api, name)
        .await
        .map_err(|e| e.to_string())
}

impl Library for Kubert {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let api = self.api();
        let params = params(self.0.timings);
        async move {
            let (api, log) = api?;
            let manager = manager(api, &election).await?;
            let (mut claims, task) = manager
                .spawn(identity.clone(), params)
                .await
                .map_err(|e| e.to_string())?;
            let (leading_tx, leading) = watch::channel(None);
            let (release_tx, release_rx) = oneshot::channel::<()>();
            // Holds the claim channel: dropping it is how the manager is told to
            // vacate the Lease and stop.
            let monitor = tokio::spawn(async move {
                let leads = |c: &Arc<Claim>| c.is_current_for(&identity);
                tokio::select! {
                    _ = release_rx => {}
                    _ = common::report_leading(&mut claims, leads, &leading_tx) => {}
                }
            });
            Ok(Replica::of_tasks(
                leading,
                log.last_patch,
                release_tx,
                task,
                monitor,
            ))
        }
        .boxed()
    }
}

impl Kubert {
    /// A Lease API whose client records its requests into the log returned with it.
    fn api(&self) -> Result<(Api<Lease>, ClientLog), String> {
        let log = ClientLog::default();
        let client = self.0.client(common::kube_client_1, Some(&log))?;
        Ok((Api::namespaced(client, NAMESPACE), log))
    }

    /// A lone leader's renewals: `ensure_claimed` with a grace period of the whole
    /// lease renews at every call; timed around the call.
    pub async fn renewals(&self, prefix: &str, window: Duration) -> Result<Vec<f64>, String> {
        let (api, _) = self.api()?;
        let manager = manager(api, prefix).await?;
        let params = ClaimParams {
            lease_duration: self.0.timings.lease,
            renew_grace_period: self.0.timings.lease,
        };
        let samples = common::lone_leader_renewals(window, async || {
            manager
                .ensure_claimed("renewer", &params)
                .await
                .is_ok_and(|c| c.holder == "renewer")
        })
        .await;
        let _ = manager.vacate("renewer").await;
        Ok(samples)
    }
}
