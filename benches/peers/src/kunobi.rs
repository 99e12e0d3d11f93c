//! kunobi-ha 0.6.1's `leader` module (kube 4), driven as its README says: a
//! `LeaderElection` built with the lease duration, renew deadline and retry period,
//! `acquire().await` for a `LeaderGuard`, `guard.lost()` watched beside the work, and
//! `guard.step_down()` to release. It renews on its own (GET, then PUT, every retry
//! period) with no renewal hook: its client records its requests (`ClientLog`), and a
//! renewal is its PUT answered.

use futures::future::BoxFuture;
use futures::FutureExt;
use kunobi_ha::leader::LeaderElection;
use leaderelection_bench_driver::client_log::ClientLog;
use leaderelection_bench_driver::scenario::{Library, Replica, Timings};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::common::{self, Setup};
use crate::NAMESPACE;

/// A renewal, as its client sees it: a GET, then the PUT that writes the Lease back.
pub const RENEWAL: &[http::Method] = &[http::Method::GET, http::Method::PUT];

pub struct Kunobi(pub Setup);

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

/// Campaigns with `le` until `stop` fires, as its README says: `acquire().await` for a
/// guard, `guard.lost()` watched, the election rejoined when leadership is lost, and
/// `guard.step_down()` on `stop`. `leads` hears each change: true once it acquired,
/// false once it lost or stops.
pub async fn campaign(
    le: LeaderElection,
    mut stop: oneshot::Receiver<()>,
    mut leads: impl FnMut(bool),
) {
    loop {
        let mut guard = tokio::select! {
            _ = &mut stop => return,
            acquired = le.acquire() => match acquired {
                Ok(guard) => guard,
                Err(e) => {
                    eprintln!("kunobi-ha: acquire failed: {e}");
                    return;
                }
            },
        };
        leads(true);
        tokio::select! {
            _ = &mut stop => {
                leads(false);
                guard.step_down().await;
                return;
            }
            // Not leading any more: rejoin the election.
            _ = guard.lost() => leads(false),
        }
    }
}

impl Library for Kunobi {
    fn start(
        &self,
        election_name: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let log = ClientLog::kept_in(&self.0.logs);
        let client = self.0.client(common::kube4, Some(&log));
        let t = self.0.timings;
        async move {
            let le = election(client?, &election_name, &identity, t);
            let (leading_tx, leading) = watch::channel(None);
            let (release_tx, release_rx) = oneshot::channel::<()>();
            // Owns the election and its guard: a crash aborts it, and the guard dropped
            // stops its renewals with no write to the Lease (its `Drop`).
            let task = tokio::spawn(campaign(le, release_rx, move |leads| {
                if leads {
                    common::mark_leading(&leading_tx, Instant::now());
                }
            }));
            Ok(common::replica_of_task(
                leading,
                log.last_put,
                release_tx,
                task,
            ))
        }
        .boxed()
    }
}
