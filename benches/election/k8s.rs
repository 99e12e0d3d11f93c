//! The Kubernetes side: our Lease lock against the crate's API test server, beside
//! kube-lease-manager and k8s-controller (in this process, see `k8s_controller.rs` for
//! the latter) and kube-leader-election, kube-coordinate, kubert and kunobi-ha (in a
//! process of their own, see `benches/peers`), with the same server, the same timings,
//! and requests counted at the server per user.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use leaderelection::lock::kube::KubeLeaseLock;
use leaderelection::LeaseLock;
use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions, User, ADMIN_TOKEN};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ours::{MakeLock, Ours};
use leaderelection_bench_driver::client_log::{self, ClientLog};
use leaderelection_bench_driver::scenario::{Departure, Library, Outcome, Replica, Timings};
use leaderelection_bench_driver::stats::Samples;

pub const NAMESPACE: &str = "default";
pub const KLE: &str = "kube-leader-election 0.44";
pub const KLM: &str = "kube-lease-manager 0.13";
pub const KC: &str = "kube-coordinate 2.0.0-rc.0";
pub const KUBERT: &str = "kubert 0.25 (lease)";
pub const KUNOBI: &str = "kunobi-ha 0.6.1 (leader)";

/// A peer in the peer program: its name there (and the prefix of its users) and its
/// name in the tables.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub arg: &'static str,
    pub label: &'static str,
}

pub const PEER_KLE: Peer = Peer {
    arg: "kube-leader-election",
    label: KLE,
};
pub const PEER_KC: Peer = Peer {
    arg: "kube-coordinate",
    label: KC,
};
pub const PEER_KUBERT: Peer = Peer {
    arg: "kubert",
    label: KUBERT,
};
pub const PEER_KUNOBI: Peer = Peer {
    arg: "kunobi-ha",
    label: KUNOBI,
};
/// The peers the peer program runs.
pub const PROGRAM_PEERS: [Peer; 4] = [PEER_KLE, PEER_KC, PEER_KUBERT, PEER_KUNOBI];

/// What kube-lease-manager's handover row must say, read from its source.
pub const KLM_HANDOVER: &str = "releases, but its standby learns of it only when the lease it last read expires: it sleeps until then (src/manager.rs, `watcher_step`)";

/// What a program peer's handover row must say, read from its source.
pub fn handover_note(p: Peer) -> Option<&'static str> {
    match p.arg {
        "kube-coordinate" => Some("never releases: `shutdown` ends its task with no write to the Lease (src/lib.rs, `LeaderElector::run`), so the standby takes over once the lease ran out, after up to 1.2 leases of jitter"),
        "kubert" => Some("releases (`vacate`), but its standby learns of it only when the claim it last read expires: it sleeps until then (src/lease.rs, `LeaseManager::spawn`)"),
        _ => None,
    }
}

/// What a program peer's crash failover row must say, read from its source.
pub fn crash_note(p: Peer) -> Option<&'static str> {
    match p.arg {
        "kunobi-ha" => Some("can take over before the lease ran out since the last renewal (a negative sample): it writes renewTime in whole seconds (`chrono_to_timestamp`, `Timestamp::from_second`), and its standby takes the Lease once its wall clock passes renewTime + leaseDurationSeconds (src/leader.rs, `try_acquire`), up to 1 s early"),
        _ => None,
    }
}

/// What a renewal of a program peer is, and how it is timed.
pub fn renew_description(p: Peer) -> (&'static str, &'static str) {
    match p.arg {
        "kube-coordinate" => (
            "forced apply PATCH",
            "30 leaders renewing every 1.5 s (its renew deadline, on its own timer), the same rate; timed in its client, PATCH sent to answered",
        ),
        "kubert" => ("strategic merge PATCH (`ensure_claimed`)", ""),
        "kunobi-ha" => (
            "GET, then PUT",
            "20 leaders renewing every 1 s (its retry period, on its own timer), the same rate; timed in its client, GET sent to PUT answered",
        ),
        _ => ("GET, then PATCH", ""),
    }
}

/// The users the load measurement counts requests of, one per replica.
pub fn load_users(library: &str) -> Vec<String> {
    (0..crate::load::LOAD_REPLICAS)
        .map(|i| format!("{library}-{i}"))
        .collect()
}

pub fn token_of(user: &str) -> String {
    format!("token-{user}")
}

pub async fn start_server() -> Result<ApiServer, String> {
    let mut options = ApiServerOptions::new();
    let libs = [
        "leaderelection",
        "kube-lease-manager",
        crate::k8s_controller::ARG,
    ]
    .into_iter()
    .chain(PROGRAM_PEERS.iter().map(|p| p.arg));
    for lib in libs {
        for user in load_users(lib) {
            options = options.token(token_of(&user), User::admin(user.clone()));
        }
    }
    ApiServer::start_with(options)
        .await
        .map_err(|e| format!("cannot start the API test server: {e}"))
}

/// Our Lease lock, each replica with a client of its own (as separate processes have).
pub fn ours_make_lock(server: &ApiServer, token: &str) -> MakeLock {
    let config = server.config_with_token(token);
    Arc::new(move |name: String| {
        let config = config.clone();
        async move {
            let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
            let lock: Box<dyn LeaseLock> = Box::new(KubeLeaseLock::new(client, NAMESPACE, name));
            Ok(lock)
        }
        .boxed()
    })
}

pub fn ours(server: &ApiServer, timings: Timings) -> Ours {
    Ours {
        make_lock: ours_make_lock(server, ADMIN_TOKEN),
        timings,
    }
}

// ---- kube-lease-manager, in this process ------------------------------------------

/// kube-lease-manager in its automatic mode (`LeaseManager::watch`): renews `grace`
/// before expiry, so `grace = lease - retry` renews every retry period. It has no
/// renewal hook: its client records its requests, and a renewal is a PATCH.
pub struct KubeLeaseManager {
    pub config: kube::Config,
    pub timings: Timings,
    /// Every client started, for the renew latency.
    pub logs: Arc<std::sync::Mutex<Vec<ClientLog>>>,
}

impl KubeLeaseManager {
    pub fn new(config: kube::Config, timings: Timings) -> Self {
        Self {
            config,
            timings,
            logs: Arc::default(),
        }
    }
}

impl Library for KubeLeaseManager {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let config = self.config.clone();
        let t = self.timings;
        let logs = self.logs.clone();
        async move {
            let log = ClientLog::default();
            let client = kube::client::ClientBuilder::try_from(config)
                .map_err(|e| e.to_string())?
                .with_layer(&log.layer())
                .build();
            logs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(log.clone());
            let duration = t.lease.as_secs();
            let grace = duration.saturating_sub(t.retry.as_secs()).max(1);
            let manager = kube_lease_manager::LeaseManagerBuilder::new(client, election)
                .with_namespace(NAMESPACE)
                .with_identity(identity)
                .with_duration(duration)
                .with_grace(grace)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let (mut state, task) = manager.watch().await;
            let (leading_tx, leading) = watch::channel(None);
            let (release_tx, mut release_rx) = tokio::sync::oneshot::channel::<()>();
            // Holds the state channel; dropping it makes the manager release and stop.
            let monitor = tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = &mut release_rx => break,
                        changed = state.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            if *state.borrow_and_update() {
                                let now = Instant::now();
                                leading_tx.send_if_modified(|v| v.is_none() && v.replace(now).is_none());
                            }
                        }
                    }
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

/// Renewals of kube-lease-manager: leaders of elections of their own at the short
/// timings (each renewing every second, on its own timer), as many as make a renewal
/// every `period` in all; each timed in its client from the PATCH sent to the answer
/// of the GET that reads the Lease back.
pub async fn klm_renewals(
    server: &ApiServer,
    period: Duration,
    window: Duration,
    prefix: &str,
) -> Result<(Samples, usize), String> {
    let t = Timings::SHORT;
    let lib = KubeLeaseManager::new(server.config(), t);
    let leaders = (t.retry.as_millis() / period.as_millis()).max(1) as usize;
    let then = [http::Method::GET];
    let found =
        client_log::renewals_of_leaders(&lib, &lib.logs, prefix, leaders, t.retry, window, &then)
            .await?;
    let mut samples = Samples::new();
    for s in found {
        samples.push_secs(s);
    }
    Ok((samples, leaders))
}

// ---- kube-leader-election, kube-coordinate, kubert and kunobi-ha, in the peer program

/// Builds the peer program (`benches/peers`, a package of its own) and returns its path.
pub fn build_peers() -> Result<PathBuf, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/Cargo.toml");
    let target = peers_target_dir()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        // A single Kubernetes version for k8s-openapi 0.28, as .cargo/config.toml names.
        .env("K8S_OPENAPI_ENABLED_VERSION", "1.33")
        .current_dir(manifest.parent().unwrap_or(Path::new(".")));
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo to build the peers: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "building benches/peers failed: {}",
            last.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    Ok(target.join("release/leaderelection-bench-peers"))
}

/// `<target>/peers`: beside this benchmark's own target directory, with a lock of
/// its own, since the outer cargo still holds this one.
fn peers_target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // <target>/release/deps/election-HASH
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or("cannot find the target directory")?;
    Ok(target.join("peers"))
}

/// Runs a handover or failover scenario of a peer in the peer program.
pub async fn peer_scenario(
    bin: &Path,
    peer: Peer,
    server: &ApiServer,
    departure: Departure,
    n: usize,
    prefix: &str,
) -> Outcome {
    let mode = match departure {
        Departure::Release => "handover",
        Departure::Crash => "failover",
    };
    let out = Command::new(bin)
        .args([
            peer.arg,
            &server.url(),
            ADMIN_TOKEN,
            mode,
            &n.to_string(),
            prefix,
        ])
        .stdin(Stdio::null())
        .output()
        .await;
    let fail = Outcome::failed;
    let out = match out {
        Ok(o) => o,
        Err(e) => return fail(format!("cannot start the peer program: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
        return fail(format!(
            "the peer program printed nothing ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    };
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return fail(format!("bad peer output {line:?}: {e}")),
    };
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return fail(e.to_string());
    }
    let samples_of = |key: &str| {
        let mut samples = Samples::new();
        for s in v[key].as_array().into_iter().flatten() {
            if let Some(s) = s.as_f64() {
                samples.push_secs(s);
            }
        }
        samples
    };
    let (samples, cold) = (samples_of("samples"), samples_of("cold"));
    let failures = v["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    Outcome {
        samples,
        cold,
        failures,
    }
}

/// Renewals of a peer, timed in the peer program.
pub async fn peer_renewals(
    bin: &Path,
    peer: Peer,
    server: &ApiServer,
    window: Duration,
    prefix: &str,
) -> Result<Samples, String> {
    let out = Command::new(bin)
        .args([
            peer.arg,
            &server.url(),
            ADMIN_TOKEN,
            "renew",
            &window.as_secs_f64().to_string(),
            prefix,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot start the peer program: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| {
            format!(
                "the peer program printed nothing: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(e.to_string());
    }
    let mut samples = Samples::new();
    for s in v["samples"].as_array().into_iter().flatten() {
        if let Some(s) = s.as_f64() {
            samples.push_secs(s);
        }
    }
    Ok(samples)
}

/// The peer program holding one election with a candidate per token at the default
/// timings, until [`SteadyPeer::stop`].
pub struct SteadyPeer {
    child: Child,
    // Kept open so that the program can still write.
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl SteadyPeer {
    pub async fn start(
        bin: &Path,
        peer: Peer,
        server: &ApiServer,
        election: &str,
        users: &[String],
    ) -> Result<Self, String> {
        let mut cmd = Command::new(bin);
        cmd.args([peer.arg, &server.url(), ADMIN_TOKEN, "steady", election]);
        for u in users {
            cmd.arg(token_of(u));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the peer program: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "ready" {
                    return Ok(());
                }
                if line.starts_with('{') {
                    return Err(line);
                }
            }
            Err("the peer program exited".to_string())
        })
        .await
        .map_err(|_| "the peer program was not ready within 60 s".to_string())?;
        ready?;
        Ok(Self {
            child,
            _stdout: lines,
        })
    }

    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}
