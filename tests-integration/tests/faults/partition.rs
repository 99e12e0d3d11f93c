//! Real partitions: a leader process runs as a Unix user of its own; an iptables
//! owner rule on loopback marks that user's connections, and a second rule drops every
//! packet of them, both ways. Its connections hang with no reset, as behind a cut
//! link; the others, this process's replicas, still reach the API test server.
//!
//! Needs root, `iptables` and `useradd` (scripts/test.sh installs iptables); where one
//! is missing the scenarios are reported as ignored, with the reason, never as passed.

use std::process::{Command as Process, ExitCode};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use leaderelection::lock::kube::KubeLeaseLock;
use leaderelection::LeaderElector;
use leaderelection_testkit::apiserver::ApiServer;
use leaderelection_testkit::checker::{Checker, Report};
use leaderelection_testkit::child::{self, Child, Command};
use serde::{Deserialize, Serialize};
use tokio::time::sleep;

use crate::support::{check, wait_until, Link, Replica, Timing, Work};
use crate::{Group, Reporter};

const NS: &str = "kube-system";
/// The role of a leader process cut off by [`cut`].
const ROLE: &str = "partition-leader";
/// The Unix user the leader processes run as.
const USER: &str = "le-faults-1";

/// Lease 3s, renew deadline 2s, retry 0.5s, as the other real-backend scenarios.
fn timing() -> Timing {
    Timing {
        lease: Duration::from_secs(3),
        renew: Duration::from_secs(2),
        retry: Duration::from_millis(500),
        slack: Duration::from_secs(3),
    }
}

const SCENARIOS: [&str; 3] = [
    "partition/lease-leader-cut-off",
    "partition/lease-cut-off-deleted-fresh-replica",
    "partition/lease-cut-off-blanked-fresh-replica",
];

/// What a leader process runs: one replica on a Lease of the server at `url`.
#[derive(Serialize, Deserialize)]
struct Spec {
    id: String,
    election: String,
    url: String,
}

/// In a leader process: runs the replica, its terms reported as the checker's lines
/// until stdin closes. `None` in the test process.
pub fn child_main() -> Option<ExitCode> {
    let role = child::role().filter(|r| r.name() == ROLE)?;
    let spec: Spec = match role.spec() {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("partition leader: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let url = spec.url.parse().expect("the server's URL");
        let client = kube::Client::try_from(kube::Config::new(url)).expect("a kube client");
        let lock = KubeLeaseLock::new(client, NS, spec.election.as_str());
        let t = timing();
        let elector =
            LeaderElector::new(lock, t.config(&spec.election, &spec.id)).expect("a valid config");
        let tick = t.retry / 4;
        elector
            .run(child::shutdown(), move |l| async move {
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

/// Why these scenarios cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (iptables rules and a Unix user per replica)".into());
    }
    // The two rules the scenarios need, tried on a uid and a mark nobody uses: the
    // owner match, the connection mark and its match must all be there.
    let trial: [&[&str]; 2] = [
        &[
            "-t",
            "mangle",
            "OUTPUT",
            "-m",
            "owner",
            "--uid-owner",
            "4000000",
            "-j",
            "CONNMARK",
            "--set-mark",
            "0x7ffe",
        ],
        &[
            "-t", "filter", "OUTPUT", "-o", "lo", "-m", "connmark", "--mark", "0x7ffe", "-j",
            "DROP",
        ],
    ];
    for rule in trial {
        let (table, spec) = rule.split_at(2);
        let iptables = |op: &str| {
            Process::new("iptables")
                .arg("-w")
                .args(table)
                .arg(op)
                .args(spec)
                .output()
        };
        match iptables("-I") {
            Ok(o) if o.status.success() => {
                let _ = iptables("-D");
            }
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr);
                return Some(format!("iptables refuses {rule:?}: {}", why.trim()));
            }
            Err(e) => return Some(format!("no iptables ({e}); scripts/test.sh installs it")),
        }
    }
    user().err()
}

/// The uid and gid of [`USER`], created if missing.
fn user() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Option<u32> {
        let out = Process::new("id").args([flag, USER]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        let status = Process::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .map_err(|e| format!("no useradd ({e})"))?;
        if !status.success() {
            return Err(format!("useradd {USER} failed: {status}"));
        }
    }
    match (id("-u"), id("-g")) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(format!("no uid for {USER}")),
    }
}

/// The connection mark of [`USER`]'s connections.
const MARK: &str = "0x1e";

/// One iptables rule, inserted on creation and deleted when dropped (a failing
/// scenario's unwinding included).
struct Rule(Vec<String>);

impl Rule {
    fn insert(rule: &[&str]) -> Self {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        let (table, spec) = rule.split_at(2);
        let status = Process::new("iptables")
            .arg("-w")
            .args(table)
            .arg("-I")
            .args(spec)
            .status()
            .expect("run iptables");
        assert!(status.success(), "iptables -I {rule:?}: {status}");
        Self(rule)
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let (table, spec) = self.0.split_at(2);
        let _ = Process::new("iptables")
            .arg("-w")
            .args(table)
            .arg("-D")
            .args(spec)
            .status();
    }
}

/// Marks every connection [`USER`] opens, so that [`cut`] can drop both directions
/// of it: an owner match sees only the user's own packets, and the server's packets
/// to it (a watch event) would still arrive.
fn mark_connections(uid: u32) -> Rule {
    let uid = uid.to_string();
    Rule::insert(&[
        "-t",
        "mangle",
        "OUTPUT",
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "CONNMARK",
        "--set-mark",
        MARK,
    ])
}

/// Drops every packet of [`USER`]'s connections, both ways, while it lives: the
/// connections hang with no reset, as behind a cut link.
fn cut() -> Rule {
    Rule::insert(&[
        "-t", "filter", "OUTPUT", "-m", "connmark", "--mark", MARK, "-j", "DROP",
    ])
}

/// A leader process as [`USER`], its terms reported to `checker`.
fn leader(
    id: &str,
    election: &str,
    server: &ApiServer,
    uid: (u32, u32),
    checker: &Checker,
) -> Child {
    let spec = Spec {
        id: id.to_owned(),
        election: election.to_owned(),
        url: format!("http://{}", server.addr()),
    };
    let (u, g) = (uid.0.to_string(), uid.1.to_string());
    Command::role(ROLE, &spec)
        .expect("a leader spec")
        .prefix([
            "setpriv",
            "--reuid",
            &u,
            "--regid",
            &g,
            "--clear-groups",
            "--",
        ])
        .checker(checker)
        .spawn()
        .expect("start a leader process as its own user")
}

/// A replica of this process, which the cut does not touch.
fn replica(server: &ApiServer, election: &str, id: &str, checker: &Checker) -> Replica {
    let lock = KubeLeaseLock::new(server.client(), NS, election);
    Replica::new(
        lock,
        Link::direct(),
        timing().config(election, id),
        checker,
        Work::polite(),
    )
}

/// The leader process is cut off while a standby of this process watches: it must
/// stop acting (at its renew deadline) before the standby takes over (after the lease
/// as it saw it).
async fn leader_cut_off(server: &ApiServer, uid: (u32, u32)) -> Report {
    let (t, election) = (timing(), "partition-cut");
    let checker = Checker::new();
    let _marked = mark_connections(uid.0);
    let mut p1 = leader("p1", election, server, uid, &checker);
    wait_until("p1 leads", t.lease * 4, || p1.leads()).await;
    let standby = replica(server, election, "r", &checker);
    standby.wait_following("p1", t.lease * 2).await;
    sleep(t.lease).await;
    checker.fault("p1's packets dropped");
    let cut = cut();
    standby.wait_leading(t.lease + t.slack * 2).await;
    sleep(t.lease).await;
    checker.close();
    drop(cut);
    p1.kill().expect("kill p1");
    standby.stop().await;
    let report = checker.report();
    check(&report, t.lease + t.jittered_retry() + t.slack);
    assert!(report.intervals >= 2, "{}", report.explain());
    report
}

/// The leader process is cut off, then an operator deletes (or blanks) the Lease and a
/// fresh replica starts: it never saw the live record, yet must not act while the cut
/// leader may still act on its last renewal.
async fn cut_then_fresh_replica(server: &ApiServer, uid: (u32, u32), blank: bool) -> Report {
    let t = timing();
    let election = if blank {
        "partition-blank"
    } else {
        "partition-delete"
    };
    let checker = Checker::new();
    let _marked = mark_connections(uid.0);
    let mut p1 = leader("p1", election, server, uid, &checker);
    wait_until("p1 leads", t.lease * 4, || p1.leads()).await;
    sleep(t.lease).await;
    checker.fault("p1's packets dropped");
    let cut = cut();
    let leases: Api<Lease> = Api::namespaced(server.client(), NS);
    if blank {
        checker.fault("the Lease's holder blanked");
        let patch = serde_json::json!({"spec": {"holderIdentity": ""}});
        leases
            .patch(election, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("blank the Lease");
    } else {
        checker.fault("the Lease deleted");
        leases
            .delete(election, &DeleteParams::default())
            .await
            .expect("delete the Lease");
    }
    let fresh = replica(server, election, "fresh", &checker);
    fresh.wait_leading(t.lease + t.slack * 2).await;
    sleep(t.lease).await;
    checker.close();
    drop(cut);
    p1.kill().expect("kill p1");
    fresh.stop().await;
    let report = checker.report();
    check(&report, t.lease * 2 + t.slack);
    assert!(report.intervals >= 2, "{}", report.explain());
    report
}

pub fn group() -> Group {
    let run = Box::new(|reporter: &Reporter| {
        if let Some(why) = unavailable() {
            for name in SCENARIOS {
                reporter.ignore(name, &why);
            }
            return;
        }
        let uid = user().expect("the user checked above");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let server = ApiServer::start().await.expect("start the API test server");
            let [cut, deleted, blanked] = SCENARIOS;
            reporter
                .run(cut, async {
                    vec![(cut.into(), leader_cut_off(&server, uid).await)]
                })
                .await;
            reporter
                .run(deleted, async {
                    vec![(
                        deleted.into(),
                        cut_then_fresh_replica(&server, uid, false).await,
                    )]
                })
                .await;
            reporter
                .run(blanked, async {
                    vec![(
                        blanked.into(),
                        cut_then_fresh_replica(&server, uid, true).await,
                    )]
                })
                .await;
        });
    });
    Group {
        scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
        run,
    }
}
