//! Runs one peer library's side of the election benchmark against a Kubernetes API
//! server and prints the results as one JSON line. Started by the benchmark
//! (`benches/election/k8s.rs`), which owns the server and counts its requests.
//!
//! ```text
//! leaderelection-bench-peers PEER URL TOKEN handover|failover N PREFIX
//! leaderelection-bench-peers PEER URL TOKEN renew SECONDS PREFIX
//! leaderelection-bench-peers PEER URL TOKEN steady PREFIX TOKEN...
//! leaderelection-bench-peers contend PEER URL TOKEN ELECTION IDENTITY
//! ```
//!
//! PEER is `kube-leader-election`, `kube-coordinate`, `kubert` or `kunobi-ha`. `renew` times the
//! renewals of a leader over SECONDS. `steady` starts one candidate per token at the
//! default timings (the first leads), prints `ready` when the first leads, and releases
//! when its standard input closes. `contend` runs one replica of the contention
//! section (see `contend.rs`).

mod common;
mod contend;
mod coordinate;
mod kle;
mod kubert_lease;
mod kunobi;

use std::sync::Arc;
use std::time::Duration;

use common::Setup;
use leaderelection_bench_driver::client_log;
use leaderelection_bench_driver::scenario::{self, Departure, Library, Timings};
use tokio::io::AsyncReadExt;

const NAMESPACE: &str = "default";

/// The renew latency's cadence: a renewal every 50 ms, one leader renewing at that
/// rate or, for a peer whose renewals run on its own timer, as many leaders as make
/// the same rate.
const RENEW_PERIOD: Duration = Duration::from_millis(50);

const PEERS: [&str; 4] = [
    "kube-leader-election",
    "kube-coordinate",
    "kubert",
    "kunobi-ha",
];

fn library(peer: &str, setup: Setup) -> Arc<dyn Library> {
    match peer {
        "kube-coordinate" => Arc::new(coordinate::KubeCoordinate(setup)),
        "kubert" => Arc::new(kubert_lease::Kubert(setup)),
        "kunobi-ha" => Arc::new(kunobi::Kunobi(setup)),
        _ => Arc::new(kle::KubeLeaderElection(setup)),
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
    if !PEERS.contains(&peer.as_str()) {
        return Err(format!(
            "unknown peer {peer:?}; peers: {}",
            PEERS.join(", ")
        ));
    }
    match (mode.as_str(), rest) {
        (m @ ("handover" | "failover"), [n, prefix]) => {
            let n: usize = n.parse().map_err(|e| format!("bad N: {e}"))?;
            let lib = library(peer, Setup::new(url, token, Timings::SHORT));
            let departure = if m == "handover" {
                Departure::Release
            } else {
                Departure::Crash
            };
            let out = scenario::run(lib, prefix, n, n, Timings::SHORT, departure).await;
            println!(
                "{}",
                serde_json::json!({ "samples": out.samples.values(), "cold": out.cold.values(), "failures": out.failures })
            );
            Ok(())
        }
        ("renew", [secs, prefix]) => {
            let secs: f64 = secs.parse().map_err(|e| format!("bad SECONDS: {e}"))?;
            let window = Duration::from_secs_f64(secs);
            let t = Timings::SHORT;
            let setup = Setup::new(url, token, t);
            let samples = match peer.as_str() {
                "kubert" => kubert_lease::Kubert(setup).renewals(prefix, window).await?,
                "kube-leader-election" => {
                    kle::KubeLeaderElection(setup)
                        .renewals(prefix, window)
                        .await?
                }
                own_timer => {
                    // kube-coordinate renews every renew deadline, kunobi-ha every retry
                    // period, each on its own timer: as many leaders as make a renewal
                    // every RENEW_PERIOD, timed in their clients.
                    let (every, renewal) = match own_timer {
                        "kube-coordinate" => (t.renew, coordinate::RENEWAL),
                        _ => (t.retry, kunobi::RENEWAL),
                    };
                    let leaders = (every.as_millis() / RENEW_PERIOD.as_millis()) as usize;
                    let logs = setup.logs.clone();
                    let lib = library(own_timer, setup);
                    client_log::renewals_of_leaders_as(
                        &*lib, &logs, prefix, leaders, renewal, t.retry, window,
                    )
                    .await?
                }
            };
            println!("{}", serde_json::json!({ "samples": samples }));
            Ok(())
        }
        ("steady", [prefix, tokens @ ..]) if !tokens.is_empty() => {
            let mut replicas = Vec::new();
            for (i, token) in tokens.iter().enumerate() {
                let lib = library(peer, Setup::new(url, token, Timings::DEFAULT));
                let mut r = lib.start(prefix.clone(), format!("candidate-{i}")).await?;
                if i == 0 && r.wait_leading(Duration::from_secs(30)).await.is_none() {
                    return Err("the first candidate did not lead within 30 s".into());
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
