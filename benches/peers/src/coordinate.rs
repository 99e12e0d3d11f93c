//! kube-coordinate 2.0.0-rc.0 (kube 2), driven as its README says: one spawned
//! `LeaderElector` per candidate, leadership read from its state channel, `shutdown`
//! to stop. It renews on its own, with no hook: its client records its requests
//! (`ClientLog`), and a renewal is its forced apply PATCH.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kube_coordinate::{Config, LeaderElector, LeaderState};
use leaderelection_bench_driver::client_log::{self, ClientLog};
use leaderelection_bench_driver::scenario::{Library, Replica, Timings};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::NAMESPACE;

/// The server-side apply field manager, one for the whole group as its docs ask.
const MANAGER: &str = "leaderelection-bench";

pub struct KubeCoordinate {
    pub url: String,
    pub token: String,
    pub timings: Timings,
    /// Every client started, for the renew latency.
    pub logs: Arc<Mutex<Vec<ClientLog>>>,
}

impl KubeCoordinate {
    fn client(&self) -> Result<(kube2::Client, ClientLog), String> {
        let uri = self
            .url
            .parse()
            .map_err(|e| format!("bad server URL: {e}"))?;
        let mut config = kube2::Config::new(uri);
        config.auth_info.token = Some(self.token.clone().into());
        let log = ClientLog::default();
        let client = kube2::client::ClientBuilder::try_from(config)
            .map_err(|e| e.to_string())?
            .with_layer(&log.layer())
            .build();
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(log.clone());
        Ok((client, log))
    }
}

impl Library for KubeCoordinate {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let t = self.timings;
        let client = self.client();
        async move {
            let (client, log) = client?;
            let config = Config::default()
                .name(&election)
                .namespace(NAMESPACE)
                .identity(&identity)
                .manager(MANAGER)
                .lease_duration(t.lease)
                .renew_deadline(t.renew)
                .retry_period(t.retry);
            let handle = LeaderElector::spawn(config, client).map_err(|e| e.to_string())?;
            let mut state = handle.state();
            let (leading_tx, leading) = watch::channel(None);
            let (release_tx, release_rx) = oneshot::channel::<()>();
            // Owns the handle: dropping it (a crash) ends the elector's task as
            // `shutdown` does, since neither writes to the Lease.
            let monitor = tokio::spawn(async move {
                let forward = async {
                    loop {
                        if *state.borrow_and_update() == LeaderState::Leading {
                            let now = Instant::now();
                            leading_tx
                                .send_if_modified(|v| v.is_none() && v.replace(now).is_none());
                        }
                        if state.changed().await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = release_rx => {}
                    _ = forward => {}
                }
                let _ = handle.shutdown().await;
            });
            let abort = monitor.abort_handle();
            Ok(Replica {
                leading,
                last_renewal: log.last_patch.clone(),
                release: Some(Box::new(move || {
                    let _ = release_tx.send(());
                })),
                crash: Box::new(move || abort.abort()),
                stopped: async move {
                    let _ = monitor.await;
                }
                .boxed(),
            })
        }
        .boxed()
    }
}

/// Renewals of `leaders` leaders (one election each) over `window`, each timed in its
/// client from the apply PATCH sent to its answer.
pub async fn renewals(
    url: &str,
    token: &str,
    prefix: &str,
    window: Duration,
    leaders: usize,
) -> Result<Vec<f64>, String> {
    let lib = KubeCoordinate {
        url: url.to_string(),
        token: token.to_string(),
        timings: Timings::SHORT,
        logs: Arc::default(),
    };
    let settle = lib.timings.retry;
    client_log::renewals_of_leaders(&lib, &lib.logs, prefix, leaders, settle, window, &[]).await
}
