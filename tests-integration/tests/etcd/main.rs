//! The etcd backends against real etcd processes: the lock, its native lease mode,
//! etcd's own election protocol (with `etcdctl elect`), member and process failures,
//! TLS and authentication.
//!
//! One module per concern beside this file. Leader processes that are killed or frozen
//! are this test binary itself, re-run as the ignored `processes::child_candidate` test
//! in a role of the test kit's child-process helper; they report on stdout.
#![cfg(feature = "etcd")]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use leaderelection::lock::etcd::etcd_client::{Client, GetOptions};
use leaderelection::lock::etcd::{connect, EtcdLock, EtcdOptions};
use leaderelection::{
    Config, ElectionEvent, EtcdElection, LeaderElectionRecord, LeaderElector, LeaseLock, LockError,
    LockEvent, Version,
};
use leaderelection_testkit::checker::Checker;
#[cfg(feature = "etcd-tls")]
use leaderelection_testkit::etcd::TestCerts;
use leaderelection_testkit::etcd::{signal_pid, EtcdCluster, EtcdClusterOptions};
use leaderelection_testkit::replica::{Elector, Link, Work};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

mod connect;
mod election;
mod lock;
mod processes;
mod takeover;
mod tampering;

// ---- helpers -----------------------------------------------------------------

/// Logs with `RUST_LOG=leaderelection=debug`.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn start(size: usize) -> EtcdCluster {
    init_logs();
    EtcdCluster::start(size).expect("start etcd (is etcd-server installed?)")
}

fn record(holder: &str) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder_identity: holder.into(),
        lease_duration_seconds: 3,
        ..Default::default()
    }
}

/// Short timings: lease 3s, renew deadline 2s, retry 0.5s.
fn fast(identity: &str) -> Config {
    timing(identity, 3000, 2000, 500)
}

fn timing(identity: &str, lease_ms: u64, renew_ms: u64, retry_ms: u64) -> Config {
    Config::new("test")
        .identity(identity)
        .lease_duration(Duration::from_millis(lease_ms))
        .renew_deadline(Duration::from_millis(renew_ms))
        .retry_period(Duration::from_millis(retry_ms))
}

/// A raw client on the cluster, for looking behind the lock's back.
async fn raw(cluster: &EtcdCluster) -> Client {
    Client::connect(cluster.endpoints(), None)
        .await
        .expect("raw etcd client")
}

/// The mod revision of `key`, read through the members other than `down` (retried:
/// etcd refuses reads while it elects a new raft leader).
async fn mod_revision(cluster: &EtcdCluster, down: usize, key: &str) -> i64 {
    let live: Vec<String> = (0..cluster.len())
        .filter(|i| *i != down)
        .map(|i| cluster.endpoint(i))
        .collect();
    let mut client = Client::connect(live, None).await.expect("raw etcd client");
    let started = Instant::now();
    loop {
        match timeout(Duration::from_secs(5), client.get(key, None)).await {
            Ok(Ok(resp)) => return resp.kvs()[0].mod_revision(),
            other => assert!(
                started.elapsed() < Duration::from_secs(20),
                "cannot read {key} through the live members: {other:?}"
            ),
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// One replica in this process: an elector (or an etcd election) running, with the
/// terms it led.
type Replica<E = LeaderElector> = leaderelection_testkit::replica::Replica<E>;

/// A [`LeaderElector`] on `lock`, its terms recorded by a checker of its own.
fn elector(name: &str, lock: impl LeaseLock, config: Config) -> Replica {
    Replica::new(
        lock,
        Link::direct(),
        config.identity(name),
        &Checker::new(),
        Work::polite(),
    )
}

/// An [`EtcdElection`] running, its terms recorded by a checker of its own.
fn election(name: &str, election: EtcdElection) -> Replica<EtcdElection> {
    let tick = election.config().retry_period;
    let checker = Checker::new();
    Replica::spawn(
        name,
        election,
        Link::direct(),
        &checker,
        Work::polite(),
        tick,
    )
}

fn leaders<E: Elector>(replicas: &[Replica<E>]) -> Vec<&str> {
    replicas
        .iter()
        .filter(|r| r.is_leader())
        .map(|r| r.id.as_str())
        .collect()
}

/// Waits until exactly one replica leads and returns its index.
async fn one_leader<E: Elector>(replicas: &[Replica<E>], limit: Duration) -> usize {
    wait_until("one replica leads", limit, || leaders(replicas).len() == 1).await;
    replicas
        .iter()
        .position(|r| r.is_leader())
        .unwrap_or_default()
}

async fn lock(cluster: &EtcdCluster, name: &str, options: EtcdOptions) -> EtcdLock {
    EtcdLock::connect(&cluster.endpoints(), options, name)
        .await
        .expect("connect the lock")
}

async fn next(w: &mut leaderelection::WatchStream) -> Option<Result<LockEvent, LockError>> {
    timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a watch event within 10s")
}

async fn new_election(cluster: &EtcdCluster, name: &str, config: Config) -> EtcdElection {
    let client = connect(&cluster.endpoints(), &EtcdOptions::new())
        .await
        .unwrap();
    EtcdElection::new(client, name, config)
        .unwrap()
        .etcd_election_timeout(leaderelection_testkit::etcd::ELECTION_TIMEOUT)
}
