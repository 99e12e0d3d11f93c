//! The Kubernetes side: our Lease lock against the crate's API test server, beside
//! kube-leader-election (in a process of its own, see `benches/peers`) and
//! kube-lease-manager, with the same server, the same timings, and requests counted at
//! the server per user.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use leaderelection::lock::kube::KubeLeaseLock;
use leaderelection::{LeaseLock, LockEvent};
use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions, User, ADMIN_TOKEN};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ours::{MakeLock, Ours};
use crate::scenario::{Departure, LastRenewal, Library, Outcome, Replica, Timings};
use crate::stats::Samples;

pub const NAMESPACE: &str = "default";
pub const KLE: &str = "kube-leader-election 0.44";
pub const KLM: &str = "kube-lease-manager 0.13";

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
    for lib in [
        "leaderelection",
        "kube-leader-election",
        "kube-lease-manager",
    ] {
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
/// before expiry, so `grace = lease - retry` renews every retry period.
pub struct KubeLeaseManager {
    pub config: kube::Config,
    pub timings: Timings,
}

impl Library for KubeLeaseManager {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let config = self.config.clone();
        let t = self.timings;
        async move {
            let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
            let duration = t.lease.as_secs();
            let grace = duration.saturating_sub(t.retry.as_secs()).max(1);
            let last_renewal = observe_holder(client.clone(), &election, &identity);
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
            let abort_task = task.abort_handle();
            let abort_monitor = monitor.abort_handle();
                        let abort_observer = last_renewal.1;
            let stop_observer = abort_observer.clone();
            Ok(Replica {
                leading,
                last_renewal: last_renewal.0,
                release: Some(Box::new(move || {
                    let _ = release_tx.send(());
                })),
                crash: Box::new(move || {
                    abort_task.abort();
                    abort_monitor.abort();
                    abort_observer.abort();
                }),
                                stopped: async move {
                    let _ = monitor.await;
                    let _ = task.await;
                    stop_observer.abort();
                }
                .boxed(),
            })
        }
        .boxed()
    }
}

/// The instant of the last write by `identity` to the Lease, as a watch sees it: the
/// last renewal of a library that gives no hook for it.
fn observe_holder(
    client: kube::Client,
    election: &str,
    identity: &str,
) -> (LastRenewal, tokio::task::AbortHandle) {
    let last: LastRenewal = Arc::default();
    let lock = KubeLeaseLock::new(client, NAMESPACE, election);
    let identity = identity.to_string();
    let task = tokio::spawn({
        let last = last.clone();
        async move {
            loop {
                if let Some(mut events) = lock.watch() {
                    while let Some(event) = events.next().await {
                        if let Ok(LockEvent::Changed(v)) = event {
                            if v.record.holder_identity == identity {
                                *last.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(Instant::now());
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (last, task.abort_handle())
}

/// Whether the server takes the server-side apply patches kube-lease-manager acquires
/// with; the reason when it does not.
pub async fn apply_supported(server: &ApiServer) -> Result<(), String> {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let api: Api<Lease> = Api::namespaced(server.client(), NAMESPACE);
    let mut lease = Lease::default();
    lease.metadata.name = Some("apply-probe".into());
    let _ = api.create(&PostParams::default(), &lease).await;
    let patch = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "spec": { "holderIdentity": "probe" },
    });
    api.patch("apply-probe", &PatchParams::apply("probe"), &Patch::Apply(patch))
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(status) => format!(
                "it acquires with server-side apply (application/apply-patch+yaml), which the API test server answers with {} {}",
                status.code, status.reason
            ),
            other => format!("it acquires with server-side apply, which failed: {other}"),
        })
}

// ---- kube-leader-election, in its own process -------------------------------------

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

/// Runs a handover or failover scenario of kube-leader-election in the peer process.
pub async fn peer_scenario(
    bin: &Path,
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
            "kube-leader-election",
            &server.url(),
            ADMIN_TOKEN,
            mode,
            &n.to_string(),
            prefix,
        ])
        .stdin(Stdio::null())
        .output()
        .await;
    let fail = |e: String| Outcome {
        samples: Samples::new(),
        failures: vec![e],
    };
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
    let mut samples = Samples::new();
    for s in v["samples"].as_array().into_iter().flatten() {
        if let Some(s) = s.as_f64() {
            samples.push_secs(s);
        }
    }
    let failures = v["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    Outcome { samples, failures }
}

/// Renewals of kube-leader-election (`try_acquire_or_renew` while leading), timed in
/// the peer process.
pub async fn peer_renewals(
    bin: &Path,
    server: &ApiServer,
    window: Duration,
    prefix: &str,
) -> Result<Samples, String> {
    let out = Command::new(bin)
        .args([
            "kube-leader-election",
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
        server: &ApiServer,
        election: &str,
        users: &[String],
    ) -> Result<Self, String> {
        let mut cmd = Command::new(bin);
        cmd.args([
            "kube-leader-election",
            &server.url(),
            ADMIN_TOKEN,
            "steady",
            election,
        ]);
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
