//! kubert 0.25's Lease manager (feature `lease`, kube-client 1.1), driven as its docs
//! and Linkerd's policy controller use it: the Lease created if missing,
//! `LeaseManager::init`, then `spawn(claimant, ClaimParams)`, which claims, renews
//! `renew_grace_period` before expiry, and vacates the Lease when every receiver of
//! its claim channel is dropped.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi_025::api::coordination::v1::{Lease, LeaseSpec};
use kube_client_1::api::{Api, PostParams};
use kubert::lease::{ClaimParams, LeaseManager};
use leaderelection_bench_driver::client_log::ClientLog;
use leaderelection_bench_driver::scenario::{Library, Replica, Timings};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::NAMESPACE;

pub struct Kubert {
    pub url: String,
    pub token: String,
    pub timings: Timings,
}

impl Kubert {
    fn api(&self) -> Result<(Api<Lease>, ClientLog), String> {
        let uri = self
            .url
            .parse()
            .map_err(|e| format!("bad server URL: {e}"))?;
        let mut config = kube_client_1::Config::new(uri);
        config.auth_info.token = Some(self.token.clone().into());
        let log = ClientLog::default();
        let client = kube_client_1::client::ClientBuilder::try_from(config)
            .map_err(|e| e.to_string())?
            .with_layer(&log.layer())
            .build();
        Ok((Api::namespaced(client, NAMESPACE), log))
    }

    /// Renews `lease - retry` before expiry: every retry period, as the other
    /// libraries here renew.
    fn params(&self) -> ClaimParams {
        ClaimParams {
            lease_duration: self.timings.lease,
            renew_grace_period: self.timings.lease.saturating_sub(self.timings.retry),
        }
    }
}

/// `LeaseManager::init` needs the Lease to exist.
pub(crate) async fn create_lease(api: &Api<Lease>, name: &str) -> Result<(), String> {
    let mut lease = Lease {
        spec: Some(LeaseSpec::default()),
        ..Lease::default()
    };
    lease.metadata.name = Some(name.to_string());
    match api.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube_client_1::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(format!("cannot create the Lease {name}: {e}")),
    }
}

impl Library for Kubert {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let api = self.api();
        let params = self.params();
        async move {
            let (api, log) = api?;
            create_lease(&api, &election).await?;
            let manager = LeaseManager::init(api, &election)
                .await
                .map_err(|e| e.to_string())?;
            let (mut claims, task) = manager
                .spawn(identity.clone(), params)
                .await
                .map_err(|e| e.to_string())?;
            let (leading_tx, leading) = watch::channel(None);
            let (release_tx, release_rx) = oneshot::channel::<()>();
            // Holds the claim channel: dropping it is how the manager is told to
            // vacate the Lease and stop.
            let monitor = tokio::spawn(async move {
                let forward = async {
                    loop {
                        if claims.borrow_and_update().is_current_for(&identity) {
                            let now = Instant::now();
                            leading_tx
                                .send_if_modified(|v| v.is_none() && v.replace(now).is_none());
                        }
                        if claims.changed().await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = release_rx => {}
                    _ = forward => {}
                }
            });
            Ok(Replica::of_tasks(
                leading,
                log.last_patch.clone(),
                release_tx,
                task,
                monitor,
            ))
        }
        .boxed()
    }
}

/// A lone leader's renewals every `period`: `ensure_claimed` with a grace period of
/// the whole lease renews at every call; timed around the call.
pub async fn renewals(
    url: &str,
    token: &str,
    prefix: &str,
    window: Duration,
    period: Duration,
) -> Result<Vec<f64>, String> {
    let lib = Kubert {
        url: url.to_string(),
        token: token.to_string(),
        timings: Timings::SHORT,
    };
    let (api, _) = lib.api()?;
    create_lease(&api, prefix).await?;
    let manager = LeaseManager::init(api, prefix)
        .await
        .map_err(|e| e.to_string())?;
    let params = ClaimParams {
        lease_duration: lib.timings.lease,
        renew_grace_period: lib.timings.lease,
    };
    let mut samples = Vec::new();
    let mut leading = false;
    let end = Instant::now() + window;
    let mut tick = tokio::time::interval(period);
    while Instant::now() < end {
        tick.tick().await;
        let t0 = Instant::now();
        let held = manager
            .ensure_claimed("renewer", &params)
            .await
            .is_ok_and(|c| c.holder == "renewer");
        if held && leading {
            samples.push(t0.elapsed().as_secs_f64());
        }
        leading = held;
    }
    let _ = manager.vacate("renewer").await;
    Ok(samples)
}
