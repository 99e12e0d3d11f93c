//! Runs one peer library's side of the election benchmark against a Kubernetes API
//! server and prints the results as one JSON line. Started by the benchmark
//! (`benches/election/kube.rs`), which owns the server and counts its requests.
//!
//! ```text
//! leaderelection-bench-peers kube-leader-election URL TOKEN handover|failover N PREFIX
//! leaderelection-bench-peers kube-leader-election URL TOKEN renew SECONDS PREFIX
//! leaderelection-bench-peers kube-leader-election URL TOKEN steady PREFIX TOKEN...
//! leaderelection-bench-peers contend kube-leader-election URL TOKEN ELECTION IDENTITY
//! ```
//!
//! `contend` runs one replica of the contention section (see `contend.rs`).
//! `renew` times the renewals of a lone leader renewing every 50 ms. `steady` starts
//! one candidate per token at the default timings (the first leads), prints `ready`
//! when the first leads, and releases when its standard input closes.

mod contend;
#[allow(dead_code)]
#[path = "../../election/scenario.rs"]
mod scenario;
#[allow(dead_code)]
#[path = "../../election/stats.rs"]
mod stats;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::scenario::{Departure, Library, Replica, Timings};

const NAMESPACE: &str = "default";

/// kube-leader-election driven as its README says: `try_acquire_or_renew` every retry
/// period, `step_down` to release.
struct KubeLeaderElection {
    url: String,
    token: Option<String>,
    timings: Timings,
}

impl KubeLeaderElection {
    fn client(&self, token: Option<&str>) -> Result<kube::Client, String> {
        let uri = self
            .url
            .parse()
            .map_err(|e| format!("bad server URL: {e}"))?;
        let mut config = kube::Config::new(uri);
        config.auth_info.token = token.map(|t| t.to_string().into());
        kube::Client::try_from(config).map_err(|e| e.to_string())
    }
}

impl Library for KubeLeaderElection {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let client = self.client(self.token.as_deref());
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

fn timings(short: bool) -> Timings {
    if short {
        Timings::SHORT
    } else {
        Timings::DEFAULT
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("contend") {
        if let Err(e) = contend::run(&args[1..]).await {
            eprintln!("contend: {e}");
            std::process::exit(2);
        }
        return;
    }
    if let Err(e) = run(&args).await {
        println!("{}", serde_json::json!({ "error": e }));
        std::process::exit(1);
    }
}

async fn run(args: &[String]) -> Result<(), String> {
    let (peer, url, token, mode, rest) = match args {
        [peer, url, token, mode, rest @ ..] => (peer, url, token, mode, rest),
        _ => return Err("usage: PEER URL TOKEN handover|failover N PREFIX | renew SECONDS PREFIX | steady PREFIX TOKEN...".into()),
    };
    if peer != "kube-leader-election" {
        return Err(format!("unknown peer {peer:?}"));
    }
    match (mode.as_str(), rest) {
        (m @ ("handover" | "failover"), [n, prefix]) => {
            let n: usize = n.parse().map_err(|e| format!("bad N: {e}"))?;
            let lib = Arc::new(KubeLeaderElection {
                url: url.clone(),
                token: Some(token.clone()),
                timings: timings(true),
            });
            let departure = if m == "handover" {
                Departure::Release
            } else {
                Departure::Crash
            };
            let out = scenario::run(lib, prefix, n, n, Timings::SHORT, departure).await;
            println!(
                "{}",
                serde_json::json!({ "samples": out.samples.values(), "failures": out.failures })
            );
            Ok(())
        }
        ("renew", [secs, prefix]) => {
            let secs: f64 = secs.parse().map_err(|e| format!("bad SECONDS: {e}"))?;
            let lib = KubeLeaderElection {
                url: url.clone(),
                token: Some(token.clone()),
                timings: timings(true),
            };
            let lock = LeaseLock::new(
                lib.client(Some(token))?,
                NAMESPACE,
                LeaseLockParams {
                    lease_name: prefix.clone(),
                    holder_id: "renewer".into(),
                    lease_ttl: Duration::from_secs(1),
                },
            );
            let mut samples = Vec::new();
            let mut leading = false;
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut tick = tokio::time::interval(Duration::from_millis(50));
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
            println!("{}", serde_json::json!({ "samples": samples }));
            Ok(())
        }
        ("steady", [prefix, tokens @ ..]) if !tokens.is_empty() => {
            let mut replicas = Vec::new();
            for (i, token) in tokens.iter().enumerate() {
                let lib = KubeLeaderElection {
                    url: url.clone(),
                    token: Some(token.clone()),
                    timings: timings(false),
                };
                let mut r = lib.start(prefix.clone(), format!("candidate-{i}")).await?;
                if i == 0 {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while r.leading.borrow_and_update().is_none() {
                        if tokio::time::timeout_at(deadline, r.leading.changed())
                            .await
                            .is_err()
                        {
                            return Err("the first candidate did not lead within 30 s".into());
                        }
                    }
                }
                replicas.push(r);
            }
            println!("ready");
            // Run until the benchmark closes our standard input.
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
            for r in replicas {
                if let Some(release) = r.release {
                    release();
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), r.stopped).await;
            }
            Ok(())
        }
        _ => Err(format!("bad arguments for {mode}")),
    }
}
