//! An active/standby scheduler replica, with kube-scheduler's leader election flags.
//!
//! Only the leader assigns pending pods (and logs each assignment with its fencing
//! token); standbys wait and take over when it stops renewing. With no flags it runs
//! on a file lock in the temp directory, so the same command in two terminals shows
//! one active and one standby:
//!
//! ```text
//! cargo run -p leaderelection-examples --bin scheduler            # terminal 1: ACTIVE
//! cargo run -p leaderelection-examples --bin scheduler            # terminal 2: STANDBY
//! cargo run -p leaderelection-examples --bin scheduler -- --demo  # three replicas, a crash, a handover
//! cargo run -p leaderelection-examples --bin scheduler -- --demo --shards 12  # sharded: balance, a crash, a join
//! ```
//!
//! Each replica prints one line per event on stdout
//! (`<time> <identity> <EVENT> <details>`), logs to stderr (`RUST_LOG`), and serves
//! `/healthz`, `/readyz` and `/metrics` (the library's `leader_election_*` metrics).
//! SIGTERM or Ctrl-C stops the work, then releases the lease.

use std::fmt::Display;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use leaderelection::{
    shard_for_key, ElectionEvent, FileLock, LeaderElector, LeaseLock, Metrics, ShardedElector,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

mod demo;
mod flags;
mod http;
mod sharded_demo;

use flags::{go, LockKind, Options};

fn main() -> ExitCode {
    let opts = Options::parse_or_exit();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if opts.demo && opts.shards > 0 {
        runtime.block_on(sharded_demo::run(opts.shards))
    } else if opts.demo {
        runtime.block_on(demo::run())
    } else {
        runtime.block_on(replica(opts))
    }
}

fn usage_error(e: impl Display) -> ExitCode {
    eprintln!("error: {e}");
    eprintln!("Run with --help for usage.");
    ExitCode::from(2)
}

/// Prints this replica's event lines: `<time> <identity> <EVENT> <details>`.
#[derive(Clone)]
struct Out {
    identity: Arc<str>,
}

impl Out {
    fn say(&self, event: &str, details: impl Display) {
        let now = jiff::Timestamp::now();
        println!("{now:.3} {} {event:<8} {details}", self.identity);
    }
}

async fn replica(opts: Options) -> ExitCode {
    let config = opts.config();
    let out = Out {
        identity: config.identity.as_str().into(),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signals(shutdown.clone(), out.clone(), opts.leader_elect));

    if opts.leader_elect && opts.shards > 0 {
        return sharded_replica(opts, config, out, shutdown).await;
    }
    let mut lock_description = String::from("leader election disabled: always active");
    let elector = if opts.leader_elect {
        let lock = match build_lock(&opts).await {
            Ok(lock) => lock,
            Err(SetupError::Usage(message)) => return usage_error(message),
            Err(SetupError::Failed(message)) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        };
        lock_description = format!(
            "lock {}, lease {}, renew deadline {}, retry period {}",
            lock.describe(),
            go(opts.lease_duration),
            go(opts.renew_deadline),
            go(opts.retry_period)
        );
        if opts.coordinated {
            lock_description += &format!(
                ", coordinated (binary version {}, emulation version {})",
                opts.binary_version,
                opts.emulation_version()
            );
        }
        match LeaderElector::new(lock, config.clone()) {
            Ok(elector) => Some(elector),
            Err(e) => return usage_error(e),
        }
    } else {
        None
    };
    let candidacy = match candidacy(&opts, &config.identity, &shutdown).await {
        Ok(c) => c,
        Err(SetupError::Usage(message)) => return usage_error(message),
        Err(SetupError::Failed(message)) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };

    let mut registry = Registry::default();
    if let Some(elector) = &elector {
        elector.set_metrics(&Metrics::new(&mut registry));
    }
    let assignments = Counter::default();
    registry.register(
        "scheduler_example_assignments",
        "Pods this replica assigned while it led",
        assignments.clone(),
    );
    let listener = match bind(&opts).await {
        Ok(listener) => listener,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let state = Arc::new(http::State {
        elector: elector.clone(),
        registry,
    });
    let server = tokio::spawn(http::serve(listener, state, shutdown.clone()));
    out.say(
        "READY",
        format!("{lock_description}; serving http://{addr}/healthz (and /readyz, /metrics)"),
    );

    let work = Work {
        out: out.clone(),
        interval: opts.assign_interval,
        assignments,
        shutdown: shutdown.clone(),
    };
    match elector {
        None => {
            let stop = shutdown.clone();
            work.assign_pods(None, stop, || true).await;
        }
        Some(elector) => {
            let leaders = tokio::spawn(report_leaders(elector.clone(), out.clone()));
            // Subscribed before `run`, so that the first term is recorded.
            let events = record_events(&opts, &elector).await;
            elector
                .run(shutdown.clone(), move |leadership| {
                    let work = work.clone();
                    async move {
                        let stop = leadership.token();
                        work.assign_pods(Some(leadership.fencing_token()), stop, || {
                            leadership.is_valid()
                        })
                        .await;
                    }
                })
                .await;
            // The last Event ("stopped leading") is posted before the process exits:
            // once every handle on the elector is gone its events end, and the
            // recorder returns after posting what it was sent.
            leaders.abort();
            if let Some(candidacy) = candidacy {
                // It deletes the LeaseCandidate once shutdown is cancelled.
                let _ = candidacy.await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
            drop(elector);
            if let Some(events) = events {
                let _ = tokio::time::timeout(Duration::from_secs(5), events).await;
            }
        }
    }
    out.say("EXIT", "stopped");
    ExitCode::SUCCESS
}

/// A sharded replica: one lease per shard; it assigns only the pods whose name hashes
/// to a shard it owns, and prints the shards it owns whenever they change.
async fn sharded_replica(
    opts: Options,
    config: leaderelection::Config,
    out: Out,
    shutdown: CancellationToken,
) -> ExitCode {
    let locks = match lock_factory(&opts).await {
        Ok(f) => f,
        Err(SetupError::Usage(message)) => return usage_error(message),
        Err(SetupError::Failed(message)) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let shards = opts.shards;
    let elector = match ShardedElector::new(config, shards, move |name: &str| locks(name)) {
        Ok(e) => e,
        Err(e) => return usage_error(e),
    };
    out.say(
        "READY",
        format!(
            "{shards} shards on {} locks named {}-shard-<i>, members in {}",
            opts.resource_lock.name(),
            opts.resource_name,
            elector.members_lock_name()
        ),
    );
    tokio::spawn(report_shards(elector.clone(), out.clone()));
    let interval = opts.assign_interval;
    let work_out = out.clone();
    elector
        .run(shutdown, move |shard, leadership| {
            let out = work_out.clone();
            async move { assign_shard(out, interval, shards, shard, leadership).await }
        })
        .await;
    out.say("EXIT", "stopped");
    ExitCode::SUCCESS
}

/// One shard's work: every interval a pending pod arrives with a random name; assign it
/// only when its name hashes to this shard (the owner of its shard does otherwise).
async fn assign_shard(
    out: Out,
    interval: Duration,
    shards: u32,
    shard: u32,
    leadership: leaderelection::Leadership,
) {
    let token = leadership.fencing_token();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = leadership.lost() => break,
            _ = tick.tick() => {
                if !leadership.is_valid() {
                    break;
                }
                let pod = format!("pod-{:04x}", rand::rng().random::<u16>());
                if shard_for_key(&pod, shards) == shard {
                    out.say("ASSIGN", format!("{pod} -> node-a (shard {shard}, fencing token {token})"));
                }
            }
        }
    }
}

/// Prints the shards this replica owns and the live members whenever they change.
async fn report_shards(elector: ShardedElector, out: Out) {
    let mut status = elector.subscribe();
    let mut last = None;
    while status.changed().await.is_ok() {
        let now = {
            let s = status.borrow_and_update();
            (s.owned.iter().copied().collect::<Vec<_>>(), s.members.len())
        };
        if last.as_ref() != Some(&now) {
            out.say(
                "SHARDS",
                format!(
                    "own {} of {} shards {:?} ({} members)",
                    now.0.len(),
                    elector.shards(),
                    now.0,
                    now.1
                ),
            );
            last = Some(now);
        }
    }
}

type Locks = Box<dyn Fn(&str) -> Box<dyn LeaseLock> + Send + Sync>;

/// Makes the lock of each shard (and of the members record) by object name.
async fn lock_factory(opts: &Options) -> Result<Locks, SetupError> {
    match opts.resource_lock {
        LockKind::File => {
            let dir = opts
                .lock_file()
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(std::env::temp_dir);
            Ok(Box::new(move |name: &str| {
                Box::new(FileLock::new(dir.join(format!("leaderelection-{name}.json"))))
                    as Box<dyn LeaseLock>
            }))
        }
        #[cfg(feature = "etcd")]
        LockKind::Etcd => {
            use leaderelection::lock::etcd::{connect, EtcdLock, EtcdOptions};
            let client = connect(&opts.etcd_servers, &EtcdOptions::new())
                .await
                .map_err(|e| SetupError::Failed(format!("--etcd-servers: {e}")))?;
            let ns = opts.resource_namespace.clone();
            Ok(Box::new(move |name: &str| {
                Box::new(EtcdLock::from_client(client.clone(), format!("{ns}/{name}")))
                    as Box<dyn LeaseLock>
            }))
        }
        #[cfg(feature = "kube")]
        LockKind::Leases => {
            let client = kube_client(opts).await?;
            let ns = opts.resource_namespace.clone();
            Ok(Box::new(move |name: &str| {
                Box::new(leaderelection::lock::kube::KubeLeaseLock::new(
                    client.clone(),
                    ns.clone(),
                    name,
                )) as Box<dyn LeaseLock>
            }))
        }
        kind => Err(SetupError::Usage(format!(
            "--shards with --leader-elect-resource-lock={}: sharding runs on file, etcd (feature etcd) and leases (feature kube)",
            kind.name()
        ))),
    }
}

/// The leader's work: assign a pending pod every interval, until told to stop.
#[derive(Clone)]
struct Work {
    out: Out,
    interval: Duration,
    assignments: Counter,
    shutdown: CancellationToken,
}

impl Work {
    async fn assign_pods(
        &self,
        fencing_token: Option<u64>,
        stop: CancellationToken,
        still_valid: impl Fn() -> bool,
    ) {
        let (role, token) = match fencing_token {
            Some(t) => (
                format!("leading with fencing token {t}"),
                format!("fencing token {t}"),
            ),
            None => (
                "active without an election".into(),
                "no fencing token".into(),
            ),
        };
        self.out.say(
            "ACTIVE",
            format!(
                "{role}; assigning a pending pod every {}",
                go(self.interval)
            ),
        );
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut assigned = 0u64;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    // Never act on a leadership that may have lapsed, even if the
                    // elector has not said so yet.
                    if !still_valid() {
                        break;
                    }
                    let (pod, node) = {
                        let mut rng = rand::rng();
                        (rng.random::<u16>(), ["node-a", "node-b", "node-c"][rng.random_range(0..3)])
                    };
                    // A real scheduler sends the token with the binding, so the API
                    // side can refuse a deposed leader's late writes.
                    self.out.say("ASSIGN", format!("pod-{pod:04x} -> {node} ({token})"));
                    assigned += 1;
                    self.assignments.inc();
                }
            }
        }
        let why = if !self.shutdown.is_cancelled() {
            "leadership lost"
        } else if fencing_token.is_some() {
            "shutting down; the lease is released next"
        } else {
            "shutting down"
        };
        self.out.say(
            "STOPPED",
            format!(
                "stopped assigning after {assigned} pod{}: {why}",
                if assigned == 1 { "" } else { "s" }
            ),
        );
    }
}

/// On a Kubernetes lock, records the election's Events on the lock's objects, as
/// kube-scheduler does (reason `LeaderElection`: "<identity> became leader",
/// "<identity> stopped leading"), so that `kubectl get events` and `kubectl describe
/// lease` show them.
#[cfg(feature = "kube")]
async fn record_events(
    opts: &Options,
    elector: &LeaderElector,
) -> Option<tokio::task::JoinHandle<()>> {
    use leaderelection::lock::kube::{EventRecorder, ResourceLockKind};

    let kind: ResourceLockKind = opts.resource_lock.name().parse().ok()?;
    let client = match kube_client(opts).await {
        Ok(client) => client,
        Err(SetupError::Usage(e) | SetupError::Failed(e)) => {
            tracing::warn!(error = %e, "cannot record leader election events");
            return None;
        }
    };
    let recorder = EventRecorder::new(
        kind,
        client,
        &opts.resource_namespace,
        &opts.resource_name,
        &elector.config().identity,
    )
    .component(&opts.resource_name);
    Some(tokio::spawn(recorder.run(elector.events())))
}

#[cfg(not(feature = "kube"))]
async fn record_events(
    _opts: &Options,
    _elector: &LeaderElector,
) -> Option<tokio::task::JoinHandle<()>> {
    None
}

/// Prints who leads whenever that changes and it is not us.
async fn report_leaders(elector: LeaderElector, out: Out) {
    let mut events = elector.events();
    let me = elector.config().identity.to_owned();
    while let Some(event) = events.recv().await {
        if let ElectionEvent::NewLeader(Some(leader)) = event {
            if leader != me {
                out.say("STANDBY", format!("following leader {leader}"));
            }
        }
    }
}

/// SIGTERM or SIGINT stop the replica gracefully; a second one exits at once.
async fn on_signals(shutdown: CancellationToken, out: Out, elected: bool) {
    let name = next_signal().await;
    let then = if elected {
        ", then releasing the lease"
    } else {
        ""
    };
    out.say("SHUTDOWN", format!("{name}: stopping the work{then}"));
    shutdown.cancel();
    let name = next_signal().await;
    eprintln!("{name} again: exiting now, without waiting for the work or the release");
    std::process::exit(130);
}

#[cfg(unix)]
async fn next_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_signal() -> &'static str {
    match tokio::signal::ctrl_c().await {
        Ok(()) => "Ctrl-C",
        Err(_) => std::future::pending().await,
    }
}

/// The health server's socket. A busy default port falls back to a free one, so that
/// two replicas started with the same command on one host both run.
async fn bind(opts: &Options) -> Result<TcpListener, String> {
    let addr = SocketAddr::new(opts.bind_address, opts.port.unwrap_or(flags::DEFAULT_PORT));
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if opts.port.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
            TcpListener::bind(SocketAddr::new(opts.bind_address, 0))
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", opts.bind_address))
        }
        Err(e) => Err(format!("--port: cannot listen on {addr}: {e}")),
    }
}

/// Why the lock could not be made.
enum SetupError {
    /// The flags ask for something this binary cannot do (exit status 2).
    Usage(String),
    /// The backend could not be set up (exit status 1): the locks that connect
    /// somewhere (etcd, Kubernetes) report their connection errors this way.
    #[cfg_attr(not(any(feature = "etcd", feature = "kube")), allow(dead_code))]
    Failed(String),
}

// ---- lock construction -------------------------------------------------------------
//
// Every backend the example can run on is built here, each behind its cargo feature,
// so a binary built without a backend says which feature to build with.

/// Builds the lock `--leader-elect-resource-lock` names.
async fn build_lock(opts: &Options) -> Result<Box<dyn LeaseLock>, SetupError> {
    match opts.resource_lock {
        LockKind::File => file_lock(opts),
        LockKind::Etcd => etcd_lock(opts).await,
        kind => kube_lock(kind, opts).await,
    }
}

fn file_lock(opts: &Options) -> Result<Box<dyn LeaseLock>, SetupError> {
    let path = opts.lock_file();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(SetupError::Usage(format!(
                "--lock-file: directory {} does not exist",
                dir.display()
            )));
        }
    }
    Ok(Box::new(FileLock::new(path)))
}

/// The etcd lock: a key holding the record under `--leader-elect-resource-namespace`
/// and `--leader-elect-resource-name`, on `--etcd-servers`.
#[cfg(feature = "etcd")]
async fn etcd_lock(opts: &Options) -> Result<Box<dyn LeaseLock>, SetupError> {
    use leaderelection::{EtcdLock, EtcdOptions};
    // The key is <prefix><namespace>/<name>, so elections in different "namespaces"
    // of one etcd cluster never meet.
    let name = format!("{}/{}", opts.resource_namespace, opts.resource_name);
    EtcdLock::connect(&opts.etcd_servers, EtcdOptions::new(), name)
        .await
        .map(|lock| Box::new(lock) as Box<dyn LeaseLock>)
        .map_err(|e| SetupError::Failed(format!("--etcd-servers: {e}")))
}

#[cfg(not(feature = "etcd"))]
async fn etcd_lock(_opts: &Options) -> Result<Box<dyn LeaseLock>, SetupError> {
    Err(not_built("etcd", "etcd", " (it needs protoc to build)"))
}

/// The Kubernetes locks: a Lease, or the leader annotation of an Endpoints or
/// ConfigMap, in `--leader-elect-resource-namespace`, through `--kubeconfig`.
#[cfg(feature = "kube")]
async fn kube_lock(kind: LockKind, opts: &Options) -> Result<Box<dyn LeaseLock>, SetupError> {
    use leaderelection::lock::kube::KubeLock;

    let client = kube_client(opts).await?;
    KubeLock::from_resource_lock_name(
        &kind.name(),
        client,
        &opts.resource_namespace,
        &opts.resource_name,
    )
    .map_err(|e| SetupError::Usage(format!("--leader-elect-resource-lock: {e}")))
}

/// A client through `--kubeconfig` (or the in-cluster configuration), without the
/// client's own retries. One per process: the lock, the Events and the LeaseCandidate
/// share its connections.
#[cfg(feature = "kube")]
async fn kube_client(opts: &Options) -> Result<kube::Client, SetupError> {
    static CLIENT: tokio::sync::OnceCell<kube::Client> = tokio::sync::OnceCell::const_new();
    CLIENT
        .get_or_try_init(|| new_kube_client(opts))
        .await
        .cloned()
}

#[cfg(feature = "kube")]
async fn new_kube_client(opts: &Options) -> Result<kube::Client, SetupError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};

    let mut config = match &opts.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| SetupError::Usage(format!("--kubeconfig: {e}")))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| SetupError::Usage(format!("--kubeconfig: {e}")))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            SetupError::Failed(format!(
                "no Kubernetes configuration (in-cluster, $KUBECONFIG or ~/.kube/config): {e}; \
                 pass --kubeconfig"
            ))
        })?,
    };
    // The elector owns retries and their timing; the client's own retries would make
    // one renewal several requests and eat into the renew deadline.
    config.default_retry = false;
    kube::Client::try_from(config)
        .map_err(|e| SetupError::Failed(format!("cannot build a Kubernetes client: {e}")))
}

/// With `--leader-elect-coordinated`, this replica's LeaseCandidate, kept until
/// shutdown, then deleted.
#[cfg(feature = "kube")]
async fn candidacy(
    opts: &Options,
    identity: &str,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, SetupError> {
    use leaderelection::lock::kube::LeaseCandidate;

    if !opts.coordinated {
        return Ok(None);
    }
    let client = kube_client(opts).await?;
    let candidate = LeaseCandidate::new(
        client,
        &opts.resource_namespace,
        identity,
        opts.resource_name.clone(),
        &opts.binary_version,
        opts.emulation_version(),
    )
    .map_err(|e| {
        let flag = if e.field == "binaryVersion" {
            "--binary-version"
        } else {
            "--emulation-version"
        };
        SetupError::Usage(format!("{flag}: {}", e.message))
    })?;
    let shutdown = shutdown.clone();
    Ok(Some(tokio::spawn(
        async move { candidate.run(shutdown).await },
    )))
}

#[cfg(not(feature = "kube"))]
async fn candidacy(
    opts: &Options,
    _identity: &str,
    _shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, SetupError> {
    if opts.coordinated {
        return Err(not_built("leases", "kube", ""));
    }
    Ok(None)
}

#[cfg(not(feature = "kube"))]
async fn kube_lock(kind: LockKind, _opts: &Options) -> Result<Box<dyn LeaseLock>, SetupError> {
    Err(not_built(&kind.name(), "kube", ""))
}

#[cfg(any(not(feature = "etcd"), not(feature = "kube")))]
fn not_built(kind: &str, feature: &str, note: &str) -> SetupError {
    SetupError::Usage(format!(
        "--leader-elect-resource-lock={kind}: this binary was built without the `{feature}` \
         feature; run it with `cargo run -p leaderelection-examples --bin scheduler --features {feature} -- ...`{note}"
    ))
}
