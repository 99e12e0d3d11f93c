//! kube-coordinate 2.0.0-rc.0 (kube 2), driven as its README says: one spawned
//! `LeaderElector` per candidate, leadership read from its state channel, `shutdown`
//! to stop. It renews on its own, with no hook: its client records its requests
//! (`ClientLog`), and a renewal is its forced apply PATCH.

use futures::future::BoxFuture;
use futures::FutureExt;
use kube_coordinate::{Config, LeaderElector, LeaderState};
use leaderelection_bench_driver::client_log::ClientLog;
use leaderelection_bench_driver::scenario::{Library, Replica, Timings};
use tokio::sync::{oneshot, watch};

use crate::common::{self, Setup};
use crate::NAMESPACE;

/// The server-side apply field manager, one for the whole group as its docs ask.
const MANAGER: &str = "leaderelection-bench";

/// A renewal, as its client sees it: the apply PATCH.
pub const RENEWAL: &[http::Method] = &[http::Method::PATCH];

pub struct KubeCoordinate(pub Setup);

/// A `LeaderElector`'s configuration for `election` and `identity` at `t`.
pub fn config(election: &str, identity: &str, t: Timings) -> Config {
    Config::default()
        .name(election)
        .namespace(NAMESPACE)
        .identity(identity)
        .manager(MANAGER)
        .lease_duration(t.lease)
        .renew_deadline(t.renew)
        .retry_period(t.retry)
}

impl Library for KubeCoordinate {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let t = self.0.timings;
        let log = ClientLog::kept_in(&self.0.logs);
        let client = self.0.client(common::kube2, Some(&log));
        async move {
            let config = config(&election, &identity, t);
            let handle = LeaderElector::spawn(config, client?).map_err(|e| e.to_string())?;
            let mut state = handle.state();
            let (leading_tx, leading) = watch::channel(None);
            let (release_tx, release_rx) = oneshot::channel::<()>();
            // Owns the handle: dropping it (a crash) ends the elector's task as
            // `shutdown` does, since neither writes to the Lease.
            let monitor = tokio::spawn(async move {
                let leads = |s: &LeaderState| *s == LeaderState::Leading;
                tokio::select! {
                    _ = release_rx => {}
                    _ = common::report_leading(&mut state, leads, &leading_tx) => {}
                }
                let _ = handle.shutdown().await;
            });
            Ok(common::replica_of_task(
                leading,
                log.last_patch,
                release_tx,
                monitor,
            ))
        }
        .boxed()
    }
}
