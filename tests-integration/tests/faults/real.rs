//! The scenarios against real backends: a 3-member etcd cluster (each replica through
//! its own fault-injecting proxy), the Kubernetes API test server, leaders run as
//! child processes that get SIGSTOP and SIGKILL, and the seed's control plane in
//! miniature. Real time: short, generous timings.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use leaderelection::lock::etcd::{EtcdLock, EtcdOptions};
use leaderelection::lock::kube::KubeLeaseLock;
use leaderelection::{LeaderElector, LeaseLock};
use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions, Fault};
use leaderelection_testkit::checker::{Checker, Report};
use leaderelection_testkit::child::{self, Child, Command};
use leaderelection_testkit::etcd::EtcdCluster;
use leaderelection_testkit::proxy::Proxy;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::time::{sleep, Instant};

use crate::support::{check, wait_until, Backend, Election, Link, Replica, Timing, Work};
use crate::{generic, Group, Reporter};

/// Timing on real backends: lease 3s, renew deadline 2s, retry 0.5s; bounds allow 3s
/// more, for a loaded machine.
fn real_timing() -> Timing {
    Timing {
        lease: Duration::from_secs(3),
        renew: Duration::from_secs(2),
        retry: Duration::from_millis(500),
        slack: Duration::from_secs(3),
    }
}

/// Rounds of each generic scenario on a real backend (each round costs real seconds).
fn real_rounds(name: &str) -> usize {
    if name == "churn" {
        6
    } else {
        2
    }
}

/// The generic scenarios worth real time (the elector's own behaviour when its future
/// is dropped does not depend on the backend).
fn real_generic() -> Vec<(&'static str, crate::Generic, usize)> {
    generic()
        .into_iter()
        // The elector's own behaviour when its future is dropped, exact margins and
        // ambiguous writes need the paused clock and the memory lock's faults.
        .filter(|(n, _, _)| !["elector-dropped", "takeover-margin", "ambiguous-writes"].contains(n))
        .map(|(n, f, _)| (n, f, real_rounds(n)))
        .collect()
}

fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("a loopback address")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

// ---- etcd -----------------------------------------------------------------------

/// Elections on a real etcd cluster; every replica reaches each member through its own
/// proxy, so one replica can be cut off or slowed alone.
struct Etcd {
    members: Vec<SocketAddr>,
    timing: Timing,
}

#[async_trait]
impl Backend for Etcd {
    fn timing(&self) -> Timing {
        self.timing
    }
    async fn connect(&self, election: &str) -> (Box<dyn LeaseLock>, Link) {
        let proxy = Proxy::start_many(&self.members)
            .await
            .expect("start a proxy");
        let lock = EtcdLock::connect(&proxy.endpoints(), etcd_options(), election)
            .await
            .expect("connect to etcd");
        (Box::new(lock), Link::other(proxy))
    }
}

fn etcd_options() -> EtcdOptions {
    // Below renew_deadline - retry_period, so that a renewal stuck on a dead member
    // leaves time for one more on another.
    EtcdOptions::new()
        .request_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
}

fn etcd_group() -> Group {
    let mut names: Vec<String> = real_generic()
        .iter()
        .map(|(n, _, _)| format!("etcd/{n}"))
        .collect();
    for n in ["quorum-loss", "member-paused", "leader-process-signals"] {
        names.push(format!("etcd/{n}"));
    }
    let run = Box::new(|reporter: &Reporter| {
        let mut cluster = EtcdCluster::start(3).expect("start etcd (is etcd-server installed?)");
        let backend = Etcd {
            members: cluster.endpoints().iter().map(|e| addr(e)).collect(),
            timing: real_timing(),
        };
        let rt = runtime();
        rt.block_on(async {
            for (name, f, rounds) in real_generic() {
                let full = format!("etcd/{name}");
                reporter
                    .run(&full.clone(), async {
                        let mut rng = StdRng::seed_from_u64(7);
                        vec![(full, f(&backend, &mut rng, rounds).await)]
                    })
                    .await;
            }
            reporter
                .run("etcd/quorum-loss", async {
                    vec![(
                        "etcd/quorum-loss".into(),
                        quorum_loss(&backend, &mut cluster).await,
                    )]
                })
                .await;
            reporter
                .run("etcd/member-paused", async {
                    vec![(
                        "etcd/member-paused".into(),
                        member_paused(&backend, &mut cluster).await,
                    )]
                })
                .await;
            reporter
                .run("etcd/leader-process-signals", async {
                    vec![(
                        "etcd/leader-process-signals".into(),
                        leader_process_signals(&backend, &cluster.endpoints()).await,
                    )]
                })
                .await;
        });
    });
    Group {
        scenarios: names,
        run,
    }
}

/// Two of three members die: no quorum, so nobody can renew and nobody may lead; the
/// members come back and the election recovers.
async fn quorum_loss(b: &Etcd, cluster: &mut EtcdCluster) -> Report {
    let mut e = Election::new(b, "quorum-loss");
    let t = e.timing;
    for _ in 0..3 {
        e.join(None).await;
    }
    let bound = t.lease + t.jittered_retry() + t.slack;
    e.wait_leader(bound).await;
    sleep(t.lease).await;
    e.checker.fault("kill etcd members 1 and 2: quorum lost");
    tokio::task::block_in_place(|| {
        cluster.kill(1).expect("kill member 1");
        cluster.kill(2).expect("kill member 2");
    });
    // The leader steps down at its renew deadline; nobody takes over without quorum.
    sleep(t.renew + t.slack).await;
    assert!(
        e.leader().is_none(),
        "a replica leads without an etcd quorum"
    );
    let terms = e.checker.intervals().len();
    sleep(t.lease * 2).await;
    assert_eq!(
        e.checker.intervals().len(),
        terms,
        "a term began without an etcd quorum"
    );
    e.checker.fault("restart etcd members 1 and 2");
    tokio::task::block_in_place(|| {
        cluster.restart(1).expect("restart member 1");
        cluster.restart(2).expect("restart member 2");
        cluster.wait_healthy(1).expect("member 1 healthy");
        cluster.wait_healthy(2).expect("member 2 healthy");
    });
    e.wait_leader(bound * 2).await;
    sleep(t.lease).await;
    let report = e.finish().await;
    // The outage itself is a leaderless gap by design: bound it by what was waited.
    check(&report, t.renew + t.slack + t.lease * 2 + bound * 3);
    report
}

/// Each member in turn is frozen (SIGSTOP) for two leases, then resumed: requests to
/// it hang, and clients must move to the others in time.
async fn member_paused(b: &Etcd, cluster: &mut EtcdCluster) -> Report {
    let mut e = Election::new(b, "member-paused");
    let t = e.timing;
    for _ in 0..3 {
        e.join(None).await;
    }
    let bound = t.lease + t.jittered_retry() + t.slack;
    for i in 0..cluster.len() {
        e.wait_leader(bound).await;
        e.checker.fault(format!("freeze etcd member {i}"));
        cluster.pause(i).expect("pause a member");
        sleep(t.lease * 2).await;
        cluster.resume(i).expect("resume a member");
        e.checker.fault(format!("thaw etcd member {i}"));
        sleep(t.lease).await;
    }
    let report = e.finish().await;
    check(&report, bound);
    report
}

// ---- leaders as child processes ---------------------------------------------------

/// The role of a leader process started by [`leader_process_signals`].
const LEADER_ROLE: &str = "faults-leader";

/// What a leader process runs: one replica on etcd.
#[derive(Serialize, Deserialize)]
struct LeaderSpec {
    id: String,
    election: String,
    endpoints: Vec<String>,
}

/// In a leader process started by [`leader_process_signals`]: runs one replica on etcd
/// whose work writes every tick while valid, and reports its term's events as the
/// checker's lines on stdout until its stdin closes. `None` in the test process.
pub fn child_main() -> Option<ExitCode> {
    let role = child::role().filter(|r| r.name() == LEADER_ROLE)?;
    let spec: LeaderSpec = match role.spec() {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("leader process: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    let t = real_timing();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let lock = EtcdLock::connect(&spec.endpoints, etcd_options(), spec.election.as_str())
            .await
            .expect("child: connect to etcd");
        let elector =
            LeaderElector::new(lock, t.config(&spec.election, &spec.id)).expect("child: config");
        // The parent ends us by closing stdin (or by SIGKILL).
        let shutdown = child::shutdown();
        let tick = t.retry / 4;
        elector
            .run(shutdown, move |l| async move {
                // Dropped (the elector aborts work that outlived its lease, as after a
                // SIGSTOP) or ending, the term reports its end.
                let term = child::Term::begin(&l);
                while l.is_valid() {
                    term.act();
                    tokio::select! {
                        _ = l.lost() => break,
                        _ = sleep(tick) => {}
                    }
                }
            })
            .await;
    });
    Some(ExitCode::SUCCESS)
}

/// A replica in a child process; its lines go to the checker as they arrive.
fn start_leader(id: &str, election: &str, endpoints: &[String], checker: &Checker) -> Child {
    let spec = LeaderSpec {
        id: id.to_owned(),
        election: election.to_owned(),
        endpoints: endpoints.to_vec(),
    };
    // With RUST_LOG set, the child logs to the test's stderr (see main).
    Command::role(LEADER_ROLE, &spec)
        .expect("a leader spec")
        .checker(checker)
        .spawn()
        .expect("start a leader process")
}

/// Leaders as processes: one is frozen with SIGSTOP past its lease and thawed (it must
/// learn it lost before acting), another is killed with SIGKILL.
async fn leader_process_signals(b: &Etcd, endpoints: &[String]) -> Report {
    let name = "process-signals";
    let mut e = Election::new(b, name);
    let t = e.timing;
    let bound = t.lease + t.jittered_retry() + t.slack;
    let mut c1 = start_leader("p1", name, endpoints, &e.checker);
    wait_until("p1 leading", bound * 2, || c1.leads()).await;
    let mut c2 = start_leader("p2", name, endpoints, &e.checker);
    e.join(None).await;
    sleep(t.lease).await;

    e.checker.fault("SIGSTOP the leader process p1");
    c1.stop().expect("stop a leader process");
    sleep(t.lease * 2 + t.slack).await;
    assert!(
        c2.leads() || e.leader().is_some(),
        "nobody took over from a frozen leader"
    );
    e.checker.fault("SIGCONT p1");
    c1.resume().expect("resume a leader process");
    // Thawed, it must learn at its next renewal that it lost; any write it made
    // meanwhile carries its old token, which the fenced store refuses.
    wait_until("p1 noticing its loss", bound, || !c1.leads()).await;

    // Make a process lead, then SIGKILL it.
    if !c2.leads() {
        let l = e.wait_leader(bound).await;
        let r = e.remove(l);
        e.checker.fault(format!("crash in-process leader {}", r.id));
        r.crash();
        r.join().await;
        wait_until("a process leading", bound * 2, || c1.leads() || c2.leads()).await;
    }
    let (victim, id) = if c1.leads() {
        (&mut c1, "p1")
    } else {
        (&mut c2, "p2")
    };
    e.checker.fault(format!("SIGKILL the leader process {id}"));
    victim.kill().expect("kill a leader process");
    if e.replicas.is_empty() {
        e.join(None).await;
    }
    wait_until("a takeover from the killed process", bound * 2, || {
        c1.leads() || c2.leads() || e.leader().is_some()
    })
    .await;
    sleep(t.lease).await;
    e.checker.close();
    for c in [&mut c1, &mut c2] {
        c.kill().expect("kill a leader process");
    }
    let report = e.finish().await;
    check(&report, bound * 2);
    assert!(report.stalled >= 1, "{}", report.explain());
    report
}

// ---- Kubernetes API test server ---------------------------------------------------

const NS: &str = "kube-system";

/// Elections on Leases of the API test server; every replica reaches it through its
/// own proxy.
struct Kube {
    server: SocketAddr,
    config: kube::Config,
    timing: Timing,
}

#[async_trait]
impl Backend for Kube {
    fn timing(&self) -> Timing {
        self.timing
    }
    async fn connect(&self, election: &str) -> (Box<dyn LeaseLock>, Link) {
        let proxy = Proxy::start(self.server).await.expect("start a proxy");
        let mut config = self.config.clone();
        config.cluster_url = proxy.endpoint().parse().expect("a URL");
        let client = kube::Client::try_from(config).expect("a kube client");
        let lock = KubeLeaseLock::new(client, NS, election);
        (Box::new(lock), Link::other(proxy))
    }
}

fn kube_group() -> Group {
    let mut names: Vec<String> = real_generic()
        .iter()
        .map(|(n, _, _)| format!("kube-lease/{n}"))
        .collect();
    for n in ["server-errors", "server-slow", "apiserver-restart"] {
        names.push(format!("kube-lease/{n}"));
    }
    let run = Box::new(|reporter: &Reporter| {
        let rt = runtime();
        rt.block_on(async {
            let mut server = ApiServer::start().await.expect("start the API test server");
            let backend = Kube {
                server: server.addr(),
                config: server.config(),
                timing: real_timing(),
            };
            for (name, f, rounds) in real_generic() {
                let full = format!("kube-lease/{name}");
                reporter
                    .run(&full.clone(), async {
                        let mut rng = StdRng::seed_from_u64(7);
                        vec![(full, f(&backend, &mut rng, rounds).await)]
                    })
                    .await;
            }
            reporter
                .run("kube-lease/server-errors", async {
                    vec![(
                        "kube-lease/server-errors".into(),
                        server_errors(&backend, &server).await,
                    )]
                })
                .await;
            reporter
                .run("kube-lease/server-slow", async {
                    vec![(
                        "kube-lease/server-slow".into(),
                        server_slow(&backend, &server).await,
                    )]
                })
                .await;
            reporter
                .run("kube-lease/apiserver-restart", async {
                    vec![(
                        "kube-lease/apiserver-restart".into(),
                        apiserver_restart(&backend, &mut server).await,
                    )]
                })
                .await;
        });
    });
    Group {
        scenarios: names,
        run,
    }
}

/// The server answers 500 to every request, then 503, each for longer than the renew
/// deadline.
async fn server_errors(b: &Kube, server: &ApiServer) -> Report {
    let mut e = Election::new(b, "server-errors");
    let t = e.timing;
    for _ in 0..3 {
        e.join(None).await;
    }
    let bound = t.lease + t.jittered_retry() + t.slack;
    for status in [500, 503] {
        e.wait_leader(bound).await;
        sleep(t.lease).await;
        e.checker
            .fault(format!("API server answers {status} for two leases"));
        server.faults().inject(Fault::error(status));
        sleep(t.renew + t.slack).await;
        assert!(
            e.leader().is_none(),
            "a replica leads while every request fails"
        );
        sleep(t.lease * 2 - t.renew - t.slack).await;
        server.faults().clear();
    }
    e.wait_leader(bound).await;
    let report = e.finish().await;
    check(&report, t.lease * 2 + bound);
    report
}

/// The server answers after one and a half renew deadlines, for two leases.
async fn server_slow(b: &Kube, server: &ApiServer) -> Report {
    let mut e = Election::new(b, "server-slow");
    let t = e.timing;
    for _ in 0..3 {
        e.join(None).await;
    }
    let bound = t.lease + t.jittered_retry() + t.slack;
    e.wait_leader(bound).await;
    sleep(t.lease).await;
    e.checker
        .fault("API server answers after 1.5 renew deadlines");
    server.faults().set_latency(t.renew * 3 / 2);
    sleep(t.lease * 2).await;
    server.faults().clear();
    e.checker.fault("API server fast again");
    e.wait_leader(bound + t.renew * 2).await;
    let report = e.finish().await;
    check(&report, t.lease * 2 + t.renew * 2 + bound);
    report
}

/// The API server restarts (connections and watches dropped, storage kept): a quick
/// restart must not cost the leader its lease; a long outage must end with a leader.
async fn apiserver_restart(b: &Kube, server: &mut ApiServer) -> Report {
    let mut e = Election::new(b, "apiserver-restart");
    let t = e.timing;
    for _ in 0..3 {
        e.join(None).await;
    }
    let bound = t.lease + t.jittered_retry() + t.slack;
    e.wait_leader(bound).await;
    sleep(t.lease).await;
    for _ in 0..3 {
        let terms = e.checker.intervals().len();
        e.checker.fault("restart the API server");
        server.restart().await;
        sleep(t.lease).await;
        assert_eq!(
            e.checker.intervals().len(),
            terms,
            "a quick API server restart changed the leader"
        );
    }
    e.checker.fault("API server down for two leases");
    server.stop_serving().await;
    sleep(t.lease * 2).await;
    assert!(
        e.leader().is_none(),
        "a replica leads while the API server is down"
    );
    server.resume_serving().await.expect("serve again");
    e.checker.fault("API server back");
    e.wait_leader(bound).await;
    let report = e.finish().await;
    check(&report, t.lease * 2 + bound);
    report
}

// ---- the seed's control plane in miniature ----------------------------------------

fn control_plane_group() -> Group {
    let names = vec!["control-plane/miniature".to_owned()];
    let run = Box::new(|reporter: &Reporter| {
        let rt = runtime();
        rt.block_on(reporter.run("control-plane/miniature", async {
            vec![("control-plane/miniature".into(), control_plane().await)]
        }));
    });
    Group {
        scenarios: names,
        run,
    }
}

/// Three API servers active/active over a 3-member etcd cluster, three scheduler
/// replicas on Leases, each through a different API server. One API server dies (not
/// the leader's), then one etcd member, then the leader replica: the leader must not
/// change for the first two, must change exactly once for the third, and there are
/// never two leaders.
async fn control_plane() -> Report {
    let mut cluster = tokio::task::block_in_place(|| EtcdCluster::start(3))
        .expect("start etcd (is etcd-server installed?)");
    let mut servers = Vec::new();
    for _ in 0..3 {
        let options = ApiServerOptions::new().etcd(cluster.endpoints(), "/registry");
        servers.push(
            ApiServer::start_with(options)
                .await
                .expect("start an API server over etcd"),
        );
    }
    // Generous: renewals go through an API server and etcd, both under faults.
    let t = Timing {
        lease: Duration::from_secs(6),
        renew: Duration::from_secs(4),
        retry: Duration::from_secs(1),
        slack: Duration::from_secs(4),
    };
    let checker = Checker::new();
    let mut replicas: Vec<Replica> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let lock = KubeLeaseLock::new(s.client(), NS, "kube-scheduler");
            Replica::new(
                lock,
                Link::direct(),
                t.config("kube-scheduler", &format!("scheduler-{i}")),
                &checker,
                if i % 2 == 0 {
                    Work::eager()
                } else {
                    Work::polite()
                },
            )
        })
        .collect();
    let leader = |rs: &[Replica]| rs.iter().position(|r| r.is_leader());
    let bound = t.lease + t.jittered_retry() + t.slack;
    let until = Instant::now() + bound * 2;
    while leader(&replicas).is_none() {
        assert!(Instant::now() < until, "no scheduler leads");
        sleep(Duration::from_millis(20)).await;
    }
    sleep(t.lease).await;
    let l = leader(&replicas).expect("a leader");
    let terms = || checker.intervals().len();
    assert_eq!(terms(), 1);

    // 1. An API server dies: one a standby talks to.
    let dead_server = (l + 1) % 3;
    checker.fault(format!("kill API server {dead_server}"));
    servers[dead_server].stop_serving().await;
    sleep(t.lease * 2).await;
    assert_eq!(
        terms(),
        1,
        "killing a standby's API server changed the leader\n{}",
        checker.report().explain()
    );
    assert!(replicas[l].is_leader());

    // 2. An etcd member dies.
    checker.fault("kill etcd member 0");
    tokio::task::block_in_place(|| cluster.kill(0)).expect("kill etcd member 0");
    sleep(t.lease * 2).await;
    assert_eq!(
        terms(),
        1,
        "killing one etcd member changed the leader\n{}",
        checker.report().explain()
    );
    assert!(replicas[l].is_leader());

    // 3. The leader replica dies: exactly one takeover, by the replica whose API server
    // still serves.
    let crashed_at = Instant::now();
    checker.fault(format!("crash the leader scheduler-{l}"));
    replicas[l].crash();
    let survivor = 3 - l - dead_server;
    let until = crashed_at + bound;
    while !replicas[survivor].is_leader() {
        assert!(
            Instant::now() < until,
            "scheduler-{survivor} did not take over\n{}",
            checker.report().explain()
        );
        sleep(Duration::from_millis(20)).await;
    }
    sleep(t.lease * 2).await;
    assert_eq!(terms(), 2, "expected exactly one takeover");
    checker.close();
    for r in replicas.drain(..) {
        r.stop().await;
    }
    let report = checker.report();
    check(&report, bound);
    drop(servers);
    drop(cluster);
    report
}

/// The real-backend groups, each run on its own thread.
pub fn groups() -> Vec<Group> {
    vec![etcd_group(), kube_group(), control_plane_group()]
}
