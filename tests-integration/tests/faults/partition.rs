//! Real partitions: a leader process runs as a Unix user of its own; an iptables
//! owner rule on loopback marks that user's connections, and a second rule drops every
//! packet of them, both ways. Its connections hang with no reset, as behind a cut
//! link; the others, this process's replicas, still reach the server.
//!
//! Each scenario runs on the Lease, the ConfigMap (annotation) lock, the etcd record
//! lock and the etcd election: the leader cut off beside a watching standby; cut off,
//! then the record deleted or blanked and a fresh replica started; cut off while an
//! operator shortens the lease, or writes another holder with a short one. One etcd
//! member, the raft leader or a follower, is also cut off from its peers (each member
//! runs as a user of its own) while its clients still reach it.
//!
//! Needs root, `iptables` and `useradd` (scripts/test.sh installs iptables); where one
//! is missing the scenarios are reported as ignored, with the reason, never as passed.

use std::process::{Command as Process, ExitCode};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams};
use leaderelection::lock::etcd::etcd_client::Client;
use leaderelection::lock::etcd::{connect, EtcdLock, EtcdOptions, DEFAULT_PREFIX};
use leaderelection::lock::kube::{ConfigMapLock, KubeLeaseLock};
use leaderelection::{Config, EtcdElection, LeaderElector, LeaseLock};
use leaderelection_testkit::apiserver::ApiServer;
use leaderelection_testkit::checker::{Checker, Report};
use leaderelection_testkit::child::{self, Child, Command};
use leaderelection_testkit::etcd::{EtcdCluster, EtcdClusterOptions};
use serde::{Deserialize, Serialize};
use tokio::time::sleep;

use crate::support::{check, wait_until, Link, Replica, Timing, Work};
use crate::{Group, Reporter};

const NS: &str = "kube-system";
/// The role of a leader process cut off by [`Slot::cut`].
const ROLE: &str = "partition-leader";
/// Scenarios run side by side, each with a Unix user and a connection mark of its own.
const SLOTS: usize = 2;

/// Lease 3s, renew deadline 2s, retry 0.5s, as the other real-backend scenarios.
fn timing() -> Timing {
    Timing {
        lease: Duration::from_secs(3),
        renew: Duration::from_secs(2),
        retry: Duration::from_millis(500),
        slack: Duration::from_secs(3),
    }
}

/// Where the record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Lease,
    ConfigMap,
    Etcd,
    EtcdElection,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Lease, Kind::ConfigMap, Kind::Etcd, Kind::EtcdElection];

    fn name(self) -> &'static str {
        match self {
            Kind::Lease => "lease",
            Kind::ConfigMap => "configmap",
            Kind::Etcd => "etcd",
            Kind::EtcdElection => "etcd-election",
        }
    }
}

/// What an operator does to the record while the leader is cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    Delete,
    /// Clears the holder and keeps the lease: not what a releasing holder writes.
    Blank,
    /// Keeps the holder, sets `leaseDurationSeconds` to 1.
    Shorten,
    /// Names another holder with a one-second lease.
    OtherHolder,
}

#[derive(Clone, Copy, Debug)]
enum Plan {
    /// The leader cut off beside a watching standby.
    CutOff,
    /// Cut off, the record edited, then a fresh replica started.
    Fresh(Edit),
    /// Cut off beside a watching standby, the record edited under both.
    Edited(Edit),
    /// An etcd member cut off from its peers, the raft leader or a follower, beside
    /// two replicas whose clients may be pinned to it.
    MemberCut { raft_leader: bool },
}

struct Scenario {
    name: String,
    kind: Kind,
    plan: Plan,
}

fn scenarios() -> Vec<Scenario> {
    let mut all = Vec::new();
    for kind in Kind::ALL {
        let record = kind != Kind::EtcdElection;
        let mut plans = vec![
            ("leader-cut-off", Plan::CutOff),
            ("cut-off-deleted-fresh-replica", Plan::Fresh(Edit::Delete)),
        ];
        if record {
            plans.extend([
                ("cut-off-blanked-fresh-replica", Plan::Fresh(Edit::Blank)),
                ("cut-off-lease-shortened", Plan::Edited(Edit::Shorten)),
                (
                    "cut-off-other-holder-short-lease",
                    Plan::Edited(Edit::OtherHolder),
                ),
            ]);
        }
        if matches!(kind, Kind::Etcd | Kind::EtcdElection) {
            plans.extend([
                (
                    "member-cut-off-raft-leader",
                    Plan::MemberCut { raft_leader: true },
                ),
                (
                    "member-cut-off-follower",
                    Plan::MemberCut { raft_leader: false },
                ),
            ]);
        }
        for (what, plan) in plans {
            all.push(Scenario {
                name: format!("partition/{}-{what}", kind.name()),
                kind,
                plan,
            });
        }
    }
    all
}

/// What a leader process runs: one replica of `kind`.
#[derive(Serialize, Deserialize)]
struct Spec {
    id: String,
    election: String,
    kind: Kind,
    /// The API server's URL, for the Kubernetes kinds.
    url: String,
    /// etcd's client URLs, for the etcd kinds.
    endpoints: Vec<String>,
}

/// The servers every scenario's replicas reach.
struct Servers {
    api: ApiServer,
    etcd: EtcdCluster,
}

impl Servers {
    fn spec(&self, kind: Kind, election: &str, id: &str) -> Spec {
        Spec {
            id: id.to_owned(),
            election: election.to_owned(),
            kind,
            url: format!("http://{}", self.api.addr()),
            endpoints: self.etcd.endpoints(),
        }
    }
}

/// Something that campaigns: a [`LeaderElector`] on any lock, or an [`EtcdElection`].
enum Elect {
    Lock(LeaderElector),
    Election(EtcdElection),
}

/// The record's lock of `spec`, connected as `spec` says.
async fn lock_of(spec: &Spec) -> Box<dyn LeaseLock> {
    let kube = || {
        let url = spec.url.parse().expect("the server's URL");
        kube::Client::try_from(kube::Config::new(url)).expect("a kube client")
    };
    match spec.kind {
        Kind::Lease => Box::new(KubeLeaseLock::new(kube(), NS, spec.election.as_str())),
        Kind::ConfigMap => Box::new(ConfigMapLock::new(kube(), NS, spec.election.as_str())),
        Kind::Etcd => Box::new(
            EtcdLock::connect(&spec.endpoints, EtcdOptions::new(), spec.election.as_str())
                .await
                .expect("connect to etcd"),
        ),
        Kind::EtcdElection => panic!("the etcd election keeps no record"),
    }
}

/// The elector of `spec`, connected as `spec` says.
async fn elector(spec: &Spec, config: Config) -> Elect {
    if spec.kind != Kind::EtcdElection {
        let lock = lock_of(spec).await;
        return Elect::Lock(LeaderElector::new(lock, config).expect("a valid config"));
    }
    let client = connect(&spec.endpoints, &EtcdOptions::new())
        .await
        .expect("connect to etcd");
    let election = EtcdElection::new(client, spec.election.as_str(), config)
        .expect("a valid config")
        .etcd_election_timeout(leaderelection_testkit::etcd::ELECTION_TIMEOUT);
    Elect::Election(election)
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
        let t = timing();
        let tick = t.retry / 4;
        let work = move |l: leaderelection::Leadership| async move {
            let term = child::Term::begin(&l);
            while l.is_valid() {
                term.act();
                tokio::select! {
                    _ = l.lost() => break,
                    _ = sleep(tick) => {}
                }
            }
        };
        match elector(&spec, t.config(&spec.election, &spec.id)).await {
            Elect::Lock(e) => e.run(child::shutdown(), work).await,
            Elect::Election(e) => e.run(child::shutdown(), work).await,
        }
    });
    Some(ExitCode::SUCCESS)
}

/// A replica of this process, which the cuts do not touch.
enum Local {
    Lock(Replica),
    Election(Replica<EtcdElection>),
}

impl Local {
    /// The replica `spec` describes, in this process.
    async fn start(spec: &Spec, checker: &Checker) -> Self {
        let t = timing();
        let config = t.config(&spec.election, &spec.id);
        if spec.kind != Kind::EtcdElection {
            let lock = lock_of(spec).await;
            let work = Work::polite();
            return Local::Lock(Replica::new(lock, Link::direct(), config, checker, work));
        }
        let Elect::Election(e) = elector(spec, config).await else {
            unreachable!("an etcd election")
        };
        Local::Election(Replica::spawn(
            spec.id.as_str(),
            e,
            Link::direct(),
            checker,
            Work::polite(),
            t.retry / 4,
        ))
    }

    async fn wait_leading(&self, within: Duration) {
        match self {
            Local::Lock(r) => r.wait_leading(within).await,
            Local::Election(r) => r.wait_leading(within).await,
        }
    }

    async fn wait_following(&self, leader: &str, within: Duration) {
        match self {
            Local::Lock(r) => r.wait_following(leader, within).await,
            Local::Election(r) => r.wait_following(leader, within).await,
        }
    }

    fn is_leader(&self) -> bool {
        match self {
            Local::Lock(r) => r.is_leader(),
            Local::Election(r) => r.is_leader(),
        }
    }

    async fn stop(self) {
        match self {
            Local::Lock(r) => r.stop().await,
            Local::Election(r) => r.stop().await,
        }
    }
}

async fn etcd_client(etcd: &EtcdCluster) -> Client {
    connect(&etcd.endpoints(), &EtcdOptions::new())
        .await
        .expect("connect to etcd")
}

/// An operator's edit of the record of `election`, behind the replicas' backs.
async fn edit(servers: &Servers, kind: Kind, election: &str, edit: Edit) {
    match (kind, edit) {
        (Kind::Lease, Edit::Delete) => {
            let leases: Api<Lease> = Api::namespaced(servers.api.client(), NS);
            leases
                .delete(election, &DeleteParams::default())
                .await
                .expect("delete the Lease");
        }
        (Kind::ConfigMap, Edit::Delete) => {
            let maps: Api<ConfigMap> = Api::namespaced(servers.api.client(), NS);
            maps.delete(election, &DeleteParams::default())
                .await
                .expect("delete the ConfigMap");
        }
        (Kind::Etcd, Edit::Delete) => {
            let key = format!("{DEFAULT_PREFIX}{election}");
            let mut client = etcd_client(&servers.etcd).await;
            client.delete(key, None).await.expect("delete the key");
        }
        (Kind::EtcdElection, Edit::Delete) => {
            let client = etcd_client(&servers.etcd).await;
            let observer = EtcdElection::new(client.clone(), election, Config::new(election))
                .expect("a valid config");
            let leader = observer
                .current_leader()
                .await
                .expect("read the election")
                .expect("a leader");
            let mut client = client;
            client
                .delete(leader.key, None)
                .await
                .expect("delete the leader's key");
        }
        (Kind::EtcdElection, _) => panic!("the etcd election keeps no record to edit"),
        (_, edit) => {
            let lock = lock_of(&servers.spec(kind, election, "operator")).await;
            let current = lock
                .get()
                .await
                .expect("read the record")
                .expect("a record");
            let mut record = current.record.clone();
            match edit {
                Edit::Blank => record.holder_identity.clear(),
                Edit::Shorten => record.lease_duration_seconds = 1,
                Edit::OtherHolder => {
                    record.holder_identity = "intruder".into();
                    record.lease_duration_seconds = 1;
                }
                Edit::Delete => unreachable!("handled above"),
            }
            lock.update(&record, &current.version)
                .await
                .expect("write the edited record");
        }
    }
}

/// Why these scenarios cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (iptables rules and a Unix user per replica)".into());
    }
    // The rules the scenarios need, tried on a uid and a mark nobody uses: the owner
    // match, the connection mark and its match, the port matches.
    let trial: [&[&str]; 3] = [
        &[
            "-t",
            "mangle",
            "OUTPUT",
            "-m",
            "owner",
            "--uid-owner",
            "4000000",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            "1,2",
            "-j",
            "CONNMARK",
            "--set-mark",
            "0x7ffe",
        ],
        &[
            "-t", "filter", "OUTPUT", "-o", "lo", "-m", "connmark", "--mark", "0x7ffe", "-j",
            "DROP",
        ],
        &[
            "-t", "filter", "OUTPUT", "-o", "lo", "-p", "tcp", "--sport", "1", "-j", "DROP",
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
    user("le-faults-1").err()
}

/// The uid and gid of the Unix user `name`, created if missing.
fn user(name: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Option<u32> {
        let out = Process::new("id").args([flag, name]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        let status = Process::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status()
            .map_err(|e| format!("no useradd ({e})"))?;
        if !status.success() {
            return Err(format!("useradd {name} failed: {status}"));
        }
    }
    match (id("-u"), id("-g")) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(format!("no uid for {name}")),
    }
}

/// One iptables rule, inserted on creation and deleted when dropped (a failing
/// scenario's unwinding included).
struct Rule(Vec<String>);

/// The comment on every rule these scenarios insert, so that a run killed before its
/// rules were dropped does not leave them to the next one.
const COMMENT: &str = "leaderelection-partition";

/// Deletes the rules a killed run left behind.
fn clear_stale_rules() {
    for table in ["filter", "mangle"] {
        let Ok(out) = Process::new("iptables")
            .args(["-w", "-t", table, "-S", "OUTPUT"])
            .output()
        else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(spec) = line.strip_prefix("-A OUTPUT ") else {
                continue;
            };
            if !spec.contains(COMMENT) {
                continue;
            }
            let _ = Process::new("iptables")
                .args(["-w", "-t", table, "-D", "OUTPUT"])
                .args(spec.split_whitespace())
                .status();
        }
    }
}

impl Rule {
    fn insert(rule: &[&str]) -> Self {
        let mut rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        // Before the target: `-m comment --comment ...` is a match.
        let target = rule.iter().position(|a| a == "-j").unwrap_or(rule.len());
        rule.splice(
            target..target,
            ["-m", "comment", "--comment", COMMENT].map(String::from),
        );
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

/// A Unix user and a connection mark for one scenario at a time.
#[derive(Clone, Copy)]
struct Slot {
    uid: (u32, u32),
    mark: u32,
}

impl Slot {
    fn mark(&self) -> String {
        format!("{:#x}", self.mark)
    }

    /// Marks every connection of the slot's user, so that [`cut`](Self::cut) can drop
    /// both directions of it: an owner match sees only the user's own packets, and the
    /// server's packets to it (a watch event) would still arrive.
    fn mark_connections(&self) -> Rule {
        let uid = self.uid.0.to_string();
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
            &self.mark(),
        ])
    }

    /// Drops every packet of the user's connections, both ways, while it lives: the
    /// connections hang with no reset, as behind a cut link.
    fn cut(&self) -> Rule {
        Rule::insert(&[
            "-t",
            "filter",
            "OUTPUT",
            "-m",
            "connmark",
            "--mark",
            &self.mark(),
            "-j",
            "DROP",
        ])
    }

    /// A leader process as the slot's user, its terms reported to `checker`.
    fn leader(&self, spec: &Spec, checker: &Checker) -> Child {
        let (u, g) = (self.uid.0.to_string(), self.uid.1.to_string());
        Command::role(ROLE, spec)
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
}

/// Whether the replica that takes over was there before the cut.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Successor {
    /// A standby that watched the leader: it must wait out the lease it saw, whatever
    /// an edit then writes (a shorter lease, another holder with a short one).
    Watching,
    /// A replica started after the cut and the edit: it never saw the live record,
    /// yet must not act while the cut leader may still act on its last renewal.
    Fresh,
}

/// The leader process is cut off (it stops acting at its renew deadline), an operator
/// may then edit the record, and `successor` takes over; never two leaders.
async fn cut_off(
    servers: &Servers,
    slot: Slot,
    kind: Kind,
    election: &str,
    edit_with: Option<Edit>,
    successor: Successor,
) -> Report {
    let t = timing();
    let checker = Checker::new();
    let _marked = slot.mark_connections();
    let mut p1 = slot.leader(&servers.spec(kind, election, "p1"), &checker);
    wait_until("p1 leads", t.lease * 4, || p1.leads()).await;
    let mut next = None;
    if successor == Successor::Watching {
        let standby = Local::start(&servers.spec(kind, election, "r"), &checker).await;
        standby.wait_following("p1", t.lease * 2).await;
        next = Some(standby);
    }
    sleep(t.lease).await;
    checker.fault("p1's packets dropped");
    let cut = slot.cut();
    if let Some(e) = edit_with {
        checker.fault(format!("the record edited: {e:?}"));
        edit(servers, kind, election, e).await;
    }
    let next = match next {
        Some(standby) => standby,
        None => Local::start(&servers.spec(kind, election, "fresh"), &checker).await,
    };
    next.wait_leading(t.lease + t.slack * 2).await;
    sleep(t.lease).await;
    checker.close();
    drop(cut);
    p1.kill().expect("kill p1");
    next.stop().await;
    let report = checker.report();
    // A fresh replica waits its own lease from first sight, after the cut.
    let bound = match successor {
        Successor::Watching => t.lease + t.jittered_retry() + t.slack,
        Successor::Fresh => t.lease * 2 + t.slack,
    };
    check(&report, bound);
    assert!(report.intervals >= 2, "{}", report.explain());
    report
}

/// Drops the traffic between etcd member `i` and its peers, both ways, while it
/// lives; its clients still reach it. The member runs as `uid`, so that its own
/// connections to the others' peer ports can be told from theirs.
fn cut_member_off(etcd: &EtcdCluster, i: usize, uid: u32, mark: u32) -> Vec<Rule> {
    let own = etcd.peer_addr(i).port().to_string();
    let others: Vec<String> = (0..etcd.len())
        .filter(|j| *j != i)
        .map(|j| etcd.peer_addr(j).port().to_string())
        .collect();
    let (uid, mark, others) = (uid.to_string(), format!("{mark:#x}"), others.join(","));
    vec![
        // The others' connections to its peer port, both ways.
        Rule::insert(&[
            "-t", "filter", "OUTPUT", "-o", "lo", "-p", "tcp", "--dport", &own, "-j", "DROP",
        ]),
        Rule::insert(&[
            "-t", "filter", "OUTPUT", "-o", "lo", "-p", "tcp", "--sport", &own, "-j", "DROP",
        ]),
        // Its own connections to theirs, both ways.
        Rule::insert(&[
            "-t",
            "mangle",
            "OUTPUT",
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &others,
            "-j",
            "CONNMARK",
            "--set-mark",
            &mark,
        ]),
        Rule::insert(&[
            "-t", "filter", "OUTPUT", "-o", "lo", "-m", "connmark", "--mark", &mark, "-j", "DROP",
        ]),
    ]
}

/// The index of the raft leader of `etcd`, as the members report it.
async fn raft_leader_of(etcd: &EtcdCluster) -> usize {
    let mut ids = Vec::new();
    let mut leader = 0;
    for i in 0..etcd.len() {
        let mut client = connect(&[etcd.endpoint(i)], &EtcdOptions::new())
            .await
            .expect("connect to a member");
        let status = client.status().await.expect("member status");
        ids.push(status.header().map_or(0, |h| h.member_id()));
        leader = status.leader();
    }
    ids.iter()
        .position(|id| *id == leader)
        .expect("a raft leader")
}

/// Two replicas of this process on a 3-member etcd cluster whose clients reach every
/// member; one member (the raft leader, or a follower) is cut off from its peers for
/// three leases while its clients still reach it. A leader pinned to it loses its
/// renewals or fails over; its watch there stalls. Never two leaders; one returns.
async fn member_cut_off(
    etcd: &EtcdCluster,
    users: &[(u32, u32)],
    kind: Kind,
    raft_leader: bool,
) -> Report {
    let t = timing();
    let checker = Checker::new();
    let election = format!("member-cut-{}-{raft_leader}", kind.name());
    let servers_spec = |id: &str| Spec {
        id: id.to_owned(),
        election: election.clone(),
        kind,
        url: String::new(),
        endpoints: etcd.endpoints(),
    };
    let a = Local::start(&servers_spec("a"), &checker).await;
    a.wait_leading(t.lease * 4).await;
    let b = Local::start(&servers_spec("b"), &checker).await;
    b.wait_following("a", t.lease * 2).await;
    sleep(t.lease).await;
    let leader = raft_leader_of(etcd).await;
    let member = if raft_leader {
        leader
    } else {
        (leader + 1) % etcd.len()
    };
    checker.fault(format!(
        "etcd member {member} cut off from its peers (raft leader: {raft_leader})"
    ));
    let cut = cut_member_off(etcd, member, users[member].0, 0x30 + member as u32);
    sleep(t.lease * 3).await;
    checker.fault("the member's peers reach it again");
    drop(cut);
    wait_until("one replica leads", t.lease * 4, || {
        a.is_leader() || b.is_leader()
    })
    .await;
    sleep(t.lease).await;
    checker.close();
    a.stop().await;
    b.stop().await;
    let report = checker.report();
    report.assert_safe();
    report
}

pub fn group() -> Group {
    let all = scenarios();
    let names: Vec<String> = all.iter().map(|s| s.name.clone()).collect();
    let run = Box::new(move |reporter: &Reporter| {
        if !all.iter().any(|s| reporter.selected(&s.name)) {
            // Counted as filtered out, without starting any server.
            futures::executor::block_on(async {
                for s in &all {
                    reporter.run(&s.name, async { Vec::new() }).await;
                }
            });
            return;
        }
        if let Some(why) = unavailable() {
            for s in &all {
                reporter.ignore(&s.name, &why);
            }
            return;
        }
        clear_stale_rules();
        let slots: Vec<Slot> = (1..=SLOTS)
            .map(|k| Slot {
                uid: user(&format!("le-faults-{k}")).expect("a user per slot"),
                mark: 0x1e + k as u32,
            })
            .collect();
        let members: Vec<(u32, u32)> = (0..3)
            .map(|i| user(&format!("le-etcd-{i}")).expect("a user per etcd member"))
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let servers = Servers {
                api: ApiServer::start().await.expect("start the API test server"),
                etcd: EtcdCluster::start(3).expect("start etcd"),
            };
            let options = members
                .iter()
                .enumerate()
                .fold(EtcdClusterOptions::new(), |o, (i, (u, g))| {
                    o.member_user(i, *u, *g)
                });
            let cut_cluster =
                EtcdCluster::start_with(3, options).expect("start etcd as its own users");
            let pool = Mutex::new(slots);
            let (servers, cut_cluster, pool, members) = (&servers, &cut_cluster, &pool, &members);
            // The member cuts share one cluster: one at a time, beside the others.
            let member_cuts = async {
                for s in all
                    .iter()
                    .filter(|s| matches!(s.plan, Plan::MemberCut { .. }))
                {
                    let Plan::MemberCut { raft_leader } = s.plan else {
                        continue;
                    };
                    reporter
                        .run(&s.name, async {
                            vec![(
                                s.name.clone(),
                                member_cut_off(cut_cluster, members, s.kind, raft_leader).await,
                            )]
                        })
                        .await;
                }
            };
            let client_cuts = futures::stream::iter(
                all.iter()
                    .filter(|s| !matches!(s.plan, Plan::MemberCut { .. })),
            )
            .for_each_concurrent(SLOTS, |s| async move {
                let slot = pool.lock().unwrap().pop().expect("a free slot");
                let election = s.name.replace('/', "-");
                reporter
                    .run(&s.name, async {
                        let (edit_with, successor) = match s.plan {
                            Plan::CutOff => (None, Successor::Watching),
                            Plan::Edited(e) => (Some(e), Successor::Watching),
                            Plan::Fresh(e) => (Some(e), Successor::Fresh),
                            Plan::MemberCut { .. } => unreachable!("run apart"),
                        };
                        let report =
                            cut_off(servers, slot, s.kind, &election, edit_with, successor).await;
                        vec![(s.name.clone(), report)]
                    })
                    .await;
                pool.lock().unwrap().push(slot);
            });
            futures::join!(member_cuts, client_cuts);
        });
    });
    Group {
        scenarios: names,
        run,
    }
}
