//! What driving the peers has in common, whatever their kube version: how a peer runs
//! (`Setup`), its clients, a replica of one task, the report of leading, and the
//! timing of a lone leader's renewals.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use leaderelection_bench_driver::client_log::ClientLog;
use leaderelection_bench_driver::scenario::{LastRenewal, Replica, Timings};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// How a peer runs: the API server its clients talk to, and its timings.
pub struct Setup {
    /// The API server's URL.
    pub url: String,
    /// The bearer token its clients send.
    pub token: String,
    /// Lease, renew deadline and retry period.
    pub timings: Timings,
    /// Every client started by a peer that records its clients, for the renew latency.
    pub logs: Arc<Mutex<Vec<ClientLog>>>,
}

/// Makes a client of one kube version: [`kube4`], [`kube2`] or [`kube_client_1`].
pub type Make<C> = fn(http::Uri, &str, Option<&ClientLog>) -> Result<C, String>;

impl Setup {
    /// A peer of the server at `url`, with `token`, at `timings`; no client logged yet.
    pub fn new(url: &str, token: &str, timings: Timings) -> Self {
        Self {
            url: url.to_string(),
            token: token.to_string(),
            timings,
            logs: Arc::default(),
        }
    }

    /// A client for the server, made by `make`: plain, or recording into `log`.
    pub fn client<C>(&self, make: Make<C>, log: Option<&ClientLog>) -> Result<C, String> {
        let uri = self
            .url
            .parse()
            .map_err(|e| format!("bad server URL: {e}"))?;
        make(uri, &self.token, log)
    }
}

/// Clients of the kube versions the peers are built on, one body for all: the same
/// calls, in crates of different versions.
macro_rules! clients {
    ($($(#[$doc:meta])* $name:ident => $kube:ident;)*) => {$(
        $(#[$doc])*
        /// A client for the server at `uri` with the bearer `token`: plain, or
        /// recording its requests into `log`.
        pub fn $name(
            uri: http::Uri,
            token: &str,
            log: Option<&ClientLog>,
        ) -> Result<$kube::Client, String> {
            let mut config = $kube::Config::new(uri);
            config.auth_info.token = Some(token.to_string().into());
            let Some(log) = log else {
                return $kube::Client::try_from(config).map_err(|e| e.to_string());
            };
            Ok($kube::client::ClientBuilder::try_from(config)
                .map_err(|e| e.to_string())?
                .with_layer(&log.layer())
                .build())
        }
    )*};
}

clients! {
    /// kube 4, for kube-leader-election and kunobi-ha.
    kube4 => kube;
    /// kube 2, for kube-coordinate.
    kube2 => kube2;
    /// kube-client 1.1, for kubert.
    kube_client_1 => kube_client_1;
}

/// Stamps `now` as when this replica first led, if it had not led before.
pub fn mark_leading(tx: &watch::Sender<Option<Instant>>, now: Instant) {
    tx.send_if_modified(|v| v.is_none() && v.replace(now).is_none());
}

/// Marks leading (`mark_leading`) whenever the library's channel `rx` says `leads`;
/// returns when the channel closes.
pub async fn report_leading<T>(
    rx: &mut watch::Receiver<T>,
    leads: impl Fn(&T) -> bool,
    tx: &watch::Sender<Option<Instant>>,
) {
    loop {
        if leads(&rx.borrow_and_update()) {
            mark_leading(tx, Instant::now());
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// A replica run by one `task`, which stops when `release` fires: a crash aborts it,
/// and the replica has stopped when it ended.
pub fn replica_of_task<T: Send + 'static>(
    leading: watch::Receiver<Option<Instant>>,
    last_renewal: LastRenewal,
    release: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<T>,
) -> Replica {
    let abort = task.abort_handle();
    Replica {
        leading,
        last_renewal,
        release: Some(Box::new(move || {
            let _ = release.send(());
        })),
        crash: Box::new(move || abort.abort()),
        stopped: async move {
            let _ = task.await;
        }
        .boxed(),
    }
}

/// A lone leader's renewals over `window`: `renew` (true while it holds the Lease)
/// called every [`crate::RENEW_PERIOD`], and the calls timed that renewed a Lease it
/// held already.
pub async fn lone_leader_renewals(
    window: Duration,
    mut renew: impl AsyncFnMut() -> bool,
) -> Vec<f64> {
    let mut samples = Vec::new();
    let mut leading = false;
    let end = Instant::now() + window;
    let mut tick = tokio::time::interval(crate::RENEW_PERIOD);
    while Instant::now() < end {
        tick.tick().await;
        let t0 = Instant::now();
        let held = renew().await;
        if held && leading {
            samples.push(t0.elapsed().as_secs_f64());
        }
        leading = held;
    }
    samples
}
