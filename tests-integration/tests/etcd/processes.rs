//! Leader processes killed and frozen: this test binary re-run as `child_candidate`.

use super::*;
use leaderelection_testkit::checker::Line;
use leaderelection_testkit::child::{self, Output};
use serde::{Deserialize, Serialize};

/// The role of the leader processes of these tests.
const ROLE: &str = "etcd-candidate";

/// What a leader process runs.
#[derive(Serialize, Deserialize)]
struct Spec {
    /// `lock` or `lease` (the native lease mode).
    mode: String,
    endpoints: String,
    name: String,
    identity: String,
    /// Lease, renew deadline and retry period, in milliseconds.
    ms: [u64; 3],
}

/// The leader process of a test: this binary re-run as `child_candidate`.
fn spawn(
    mode: &str,
    cluster: &EtcdCluster,
    name: &str,
    identity: &str,
    ms: [u64; 3],
) -> child::Child {
    let spec = Spec {
        mode: mode.into(),
        endpoints: cluster.endpoints().join(","),
        name: name.into(),
        identity: identity.into(),
        ms,
    };
    child::Command::role(ROLE, &spec)
        .expect("a candidate spec")
        .libtest("processes::child_candidate")
        .spawn()
        .expect("start the child candidate")
}

fn is_begin(o: &Output) -> bool {
    matches!(o.line(), Some(Line::Begin { .. }))
}

fn is_act(o: &Output) -> bool {
    matches!(o.line(), Some(Line::Act { .. }))
}

/// Not a test of its own: the leader process of the tests above, when its role is
/// set. Reports its terms as the checker's lines (`BEGIN`, `ACT` every 100ms while its
/// leadership is valid, `END`), `EXPIRED t` if it finds term `t` no longer valid, and
/// `STOPPED` when the elector stops leading.
#[test]
#[ignore = "the leader process of the process tests, which run it themselves"]
fn child_candidate() {
    let role = child::role()
        .filter(|r| r.name() == ROLE)
        .expect("a candidate role (the process tests set it)");
    let spec: Spec = role.spec().expect("a candidate spec");
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let endpoints = leaderelection::lock::etcd::parse_servers(&spec.endpoints);
    let [lease, renew, retry] = spec.ms;
    let config = timing(&spec.identity, lease, renew, retry);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        // An orphaned child ends by itself.
        let limit = sleep(Duration::from_secs(120));
        let options = EtcdOptions::new().native_lease(spec.mode == "lease");
        let lock = EtcdLock::connect(&endpoints, options, spec.name)
            .await
            .unwrap();
        let elector = LeaderElector::new(lock, config).unwrap();
        let mut events = elector.events();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if event == ElectionEvent::StoppedLeading {
                    child::say("STOPPED");
                }
            }
        });
        tokio::select! {
            _ = elector.run(shutdown, child_work) => {}
            _ = limit => {}
        }
    });
}

async fn child_work(leadership: leaderelection::Leadership) {
    let term = child::Term::begin(&leadership);
    let t = leadership.fencing_token();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            _ = leadership.lost() => break,
            _ = tick.tick() => {
                if leadership.is_valid() {
                    term.act();
                } else {
                    child::say(format!("EXPIRED {t}"));
                    leadership.lost().await;
                    break;
                }
            }
        }
    }
}

async fn killed_leader_standby_leads_after_the_ttl(mode: &str) {
    let cluster = start(1);
    let name = format!("killed-{mode}");
    let mut child = spawn(mode, &cluster, &name, "child", [3000, 2000, 500]);
    child
        .expect("BEGIN", Duration::from_secs(30), is_begin)
        .await
        .unwrap();
    let options = EtcdOptions::new().native_lease(mode == "lease");
    let standby = elector(
        "standby",
        lock(&cluster, &name, options).await,
        fast("standby"),
    );
    sleep(Duration::from_secs(1)).await;
    assert!(!standby.is_leader());

    child.kill().expect("kill the child");
    let killed_at = Instant::now();
    wait_until("the standby leads", Duration::from_secs(15), || {
        standby.is_leader()
    })
    .await;
    let took = killed_at.elapsed();
    // Not before the dead leader's lease could have run out (3s from its last
    // renewal, at most a retry period before the kill).
    assert!(
        took > Duration::from_millis(2000),
        "took over after only {took:?}"
    );
    eprintln!("{mode}: standby led {took:?} after SIGKILL");
    if mode == "lease" {
        let mut client = raw(&cluster).await;
        let kv = client
            .get(format!("/leaderelection/{name}"), None)
            .await
            .unwrap()
            .kvs()[0]
            .clone();
        // The standby's own timer and etcd's expiry of the dead leader's lease run
        // out together; either may come first. The dead lease goes either way.
        assert_ne!(kv.lease(), 0, "the standby bound the key to its own lease");
        let started = Instant::now();
        loop {
            let leases: Vec<i64> = client
                .leases()
                .await
                .unwrap()
                .leases()
                .iter()
                .map(|l| l.id())
                .collect();
            if leases == vec![kv.lease()] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "leases left: {leases:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }
    standby.stop().await;
}

#[tokio::test]
async fn killed_leader_process_standby_leads_after_the_lease() {
    killed_leader_standby_leads_after_the_ttl("lock").await;
}

#[tokio::test]
async fn killed_leader_process_native_lease_expires_and_standby_leads() {
    killed_leader_standby_leads_after_the_ttl("lease").await;
}

#[tokio::test]
async fn frozen_leader_knows_it_lost_before_acting() {
    let cluster = start(1);
    let mut child = spawn("lease", &cluster, "frozen", "child", [3000, 2000, 500]);
    let (leading, _) = child
        .expect("BEGIN", Duration::from_secs(30), is_begin)
        .await
        .unwrap();
    child
        .expect("ACT", Duration::from_secs(10), is_act)
        .await
        .unwrap();
    let standby = elector(
        "standby",
        lock(&cluster, "frozen", EtcdOptions::new().native_lease(true)).await,
        fast("standby"),
    );

    child.stop().expect("stop the child");
    let stopped_at = Instant::now();
    wait_until("the standby leads", Duration::from_secs(15), || {
        standby.is_leader()
    })
    .await;
    // Frozen for longer than the lease, then everything it printed before is read.
    sleep(Duration::from_secs(4).saturating_sub(stopped_at.elapsed())).await;
    child.drain();
    child.resume().expect("resume the child");

    // On resuming, the elector finds the term over and steps down. The work never acts:
    // its leadership is no longer valid (it may print EXPIRED and END, or be aborted
    // first, since the lease it ran under is over).
    let (_, before) = child
        .expect("STOPPED", Duration::from_secs(10), |o| {
            o.text() == Some("STOPPED")
        })
        .await
        .unwrap();
    sleep(Duration::from_secs(2)).await;
    let after: Vec<Output> = before.into_iter().chain(child.drain()).collect();
    assert!(
        !after.iter().any(|o| is_act(o) || is_begin(o)),
        "the resumed process acted or led again: {after:?}"
    );
    let token = leading.line().expect("a BEGIN line").token();
    for o in &after {
        let fine = match o.line() {
            Some(Line::End { token: t, .. }) => *t == token,
            Some(_) => false,
            None => o.text() == Some(format!("EXPIRED {token}").as_str()),
        };
        assert!(fine, "unexpected line after resuming: {o}");
    }
    assert!(standby.is_leader());
    standby.stop().await;
}
