//! Safety under contention: three replicas per library, each its own OS process, on
//! one Kubernetes Lease of the API test server, while their leaders are stopped
//! (SIGSTOP, later SIGCONT) and killed (SIGKILL, then restarted) at random and the
//! server is slowed for part of the run. Every replica prints the test kit checker's
//! [`Line`]s for the work it does while it believes it leads; one [`Checker`] per
//! library stamps them on arrival and judges the terms as the fault suite does.
//!
//! The replicas of our elector run in this benchmark's own program (in the test kit
//! child-process role [`ROLE`]); the peers that need another kube version run in the
//! peer program (`benches/peers`, its `contend` mode).

use std::path::PathBuf;
use std::time::Duration;

use leaderelection::lock::kube::KubeLeaseLock;
use leaderelection::{Config, LeaderElector};
use leaderelection_testkit::apiserver::ADMIN_TOKEN;
use leaderelection_testkit::checker::{Checker, Report, Violation};
use leaderelection_testkit::child::{self, Child, Command};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::k8s::{KLM, NAMESPACE, PEER_KC, PEER_KLE, PEER_KUBERT, PEER_KUNOBI};
use crate::{Env, Plan};
use leaderelection_bench_driver::scenario::Timings;
use leaderelection_bench_driver::stats::{fmt_secs, Table};

/// The child-process role that makes this program one replica of the section.
pub const ROLE: &str = "contend";

/// Replicas per library.
const REPLICAS: usize = 3;

/// How often a leader's work acts (prints `ACT`) while it believes it leads.
const ACT_EVERY: Duration = Duration::from_millis(100);

/// The latency the API server adds to every request during the slow part of the run.
/// Below `renew deadline - retry period` (500 ms), the time our elector leaves a
/// renewal before its validity runs out: a slower server costs our leader its
/// leadership at every renewal (safely, but the election is then mostly leaderless).
/// A GET and a PATCH, as kube-leader-election renews, take most of a retry period.
const LATENCY: Duration = Duration::from_millis(400);

/// Lease 2 s, renew deadline 1.5 s, retry 1 s, as in the handover and failover scenarios.
const TIMINGS: Timings = Timings::SHORT;

/// How a leader is disturbed.
#[derive(Clone, Copy, Debug)]
enum Disturb {
    /// SIGSTOP the leader, SIGCONT it after this long.
    Stop(Duration),
    /// SIGKILL the leader, start a new process in its place after this long.
    Kill(Duration),
}

/// One disturbance, at a time since the start of the run.
#[derive(Clone, Copy, Debug)]
struct Event {
    at: Duration,
    what: Disturb,
}

/// What one run does, the same for every library.
#[derive(Clone, Debug)]
struct Schedule {
    seed: u64,
    window: Duration,
    events: Vec<Event>,
    /// The stretch of the run during which the API server adds [`LATENCY`].
    slow: (Duration, Duration),
}

impl Schedule {
    /// Disturbances every 7 to 10 s from the sixth second to 8 s before the end, each
    /// a stop (the lease plus 0.5 to 2.5 s, so that a standby takes over while the
    /// stopped leader still believes it leads) or a kill (restarted 0.5 to 2 s later),
    /// at random; the server slow from 40 % to 70 % of the window.
    fn new(seed: u64, window: Duration) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut events = Vec::new();
        let mut at = Duration::from_secs(6);
        while at + Duration::from_secs(8) < window {
            let what = if rng.random_bool(0.5) {
                Disturb::Stop(TIMINGS.lease + Duration::from_secs_f64(rng.random_range(0.5..2.5)))
            } else {
                Disturb::Kill(Duration::from_secs_f64(rng.random_range(0.5..2.0)))
            };
            events.push(Event { at, what });
            at += Duration::from_secs_f64(rng.random_range(7.0..10.0));
        }
        Self {
            seed,
            window,
            events,
            slow: (window.mul_f64(0.4), window.mul_f64(0.7)),
        }
    }

    fn describe(&self) -> String {
        let events: Vec<String> = self
            .events
            .iter()
            .map(|e| match e.what {
                Disturb::Stop(d) => format!(
                    "{:.1} s SIGSTOP for {:.1} s",
                    e.at.as_secs_f64(),
                    d.as_secs_f64()
                ),
                Disturb::Kill(d) => format!(
                    "{:.1} s SIGKILL, restart {:.1} s later",
                    e.at.as_secs_f64(),
                    d.as_secs_f64()
                ),
            })
            .collect();
        format!(
            "seed {}, {:.0} s: the leader at {}; API server latency {LATENCY:?} from {:.0} s to {:.0} s",
            self.seed,
            self.window.as_secs_f64(),
            events.join("; "),
            self.slow.0.as_secs_f64(),
            self.slow.1.as_secs_f64()
        )
    }
}

/// How to start one replica of a library.
#[derive(Clone, Debug)]
struct Spec {
    library: String,
    /// What the replicas hand the checker as the fencing token; `None` for a library
    /// that exposes none: its terms all carry 0, so the checker's fenced store cannot
    /// refuse a deposed leader's writes, as no downstream system could.
    token: Option<&'static str>,
    launch: Launch,
}

/// The program that runs a library's replicas.
#[derive(Clone, Debug)]
enum Launch {
    /// This program, in the role [`ROLE`], for this library.
    Role(String),
    /// Another program: `program args... URL TOKEN ELECTION IDENTITY`.
    Program { program: PathBuf, args: Vec<String> },
}

/// What one replica of this program runs.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReplicaSpec {
    library: String,
    url: String,
    token: String,
    election: String,
    identity: String,
}

/// One replica process; its lines go to the library's checker as they arrive, each
/// term under its own name (`r0-1/3`: the process's third), so that two terms of one
/// process are never confused, even when a library gives every term the same token.
struct Proc {
    id: String,
    child: Child,
}

impl Proc {
    fn start(
        spec: &Spec,
        url: &str,
        election: &str,
        id: &str,
        checker: &Checker,
    ) -> Result<Self, String> {
        let command = match &spec.launch {
            Launch::Role(library) => {
                let replica = ReplicaSpec {
                    library: library.clone(),
                    url: url.to_owned(),
                    token: ADMIN_TOKEN.to_owned(),
                    election: election.to_owned(),
                    identity: id.to_owned(),
                };
                Command::role(ROLE, &replica).map_err(|e| e.to_string())?
            }
            Launch::Program { program, args } => {
                Command::program(program)
                    .args(args)
                    .args([url, ADMIN_TOKEN, election, id])
            }
        };
        // A thread of its own per replica: each line is stamped as soon as it arrives,
        // however busy the runtime is.
        let child = command
            .checker(checker)
            .number_terms()
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            id: id.to_owned(),
            child,
        })
    }

    fn leads(&self) -> bool {
        self.child.leads()
    }

    /// Waits a little for it to exit after its standard input was closed (it stops its
    /// work and releases).
    async fn wait_exit(mut self) {
        let _ = self.child.wait_exit(Duration::from_secs(5)).await;
    }
}

/// What was done to one library's leaders.
#[derive(Debug, Default)]
struct Applied {
    stops: usize,
    kills: usize,
    /// Disturbances skipped because no replica led at the time.
    skipped: usize,
    errors: Vec<String>,
}

/// One library's three replicas on an election of their own.
struct Group {
    spec: Spec,
    url: String,
    election: String,
    checker: Checker,
    slots: Vec<Option<Proc>>,
    /// Processes started per slot, for fresh identities after a restart.
    starts: Vec<usize>,
    applied: Applied,
}

impl Group {
    fn new(spec: Spec, url: String) -> Self {
        let election = format!("contend-{}", spec.library.split(' ').next().unwrap_or("x"));
        Self {
            spec,
            url,
            election,
            checker: Checker::new(),
            slots: (0..REPLICAS).map(|_| None).collect(),
            starts: vec![0; REPLICAS],
            applied: Applied::default(),
        }
    }

    /// Starts a process in `slot` under a fresh identity: a restarted replica is a new
    /// incarnation, whatever record its predecessor left.
    fn start(&mut self, slot: usize) -> Result<(), String> {
        let id = format!("r{slot}-{}", self.starts[slot]);
        self.starts[slot] += 1;
        let p = Proc::start(&self.spec, &self.url, &self.election, &id, &self.checker)?;
        self.slots[slot] = Some(p);
        Ok(())
    }

    fn leader(&self) -> Option<usize> {
        self.slots
            .iter()
            .position(|p| p.as_ref().is_some_and(Proc::leads))
    }

    /// The leader now, waiting up to a few seconds for one.
    async fn wait_leader(&self) -> Option<usize> {
        let until = Instant::now() + TIMINGS.lease * 2;
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            if Instant::now() > until {
                return None;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    async fn run(&mut self, schedule: &Schedule, started: Instant) {
        for slot in 0..REPLICAS {
            if let Err(e) = self.start(slot) {
                self.applied.errors.push(e);
                return;
            }
            // Replicas start at unrelated moments.
            sleep(Duration::from_millis(300)).await;
        }
        for event in &schedule.events {
            sleep_until(started + event.at).await;
            let Some(l) = self.wait_leader().await else {
                self.checker.fault("no leader to disturb");
                self.applied.skipped += 1;
                continue;
            };
            if let Err(e) = self.disturb(l, event.what).await {
                self.applied.errors.push(e);
            }
        }
        sleep_until(started + schedule.window).await;
        self.checker.close();
        // All at once, so that a standby does not take over from a leader that stops.
        let mut procs: Vec<Proc> = self.slots.iter_mut().filter_map(Option::take).collect();
        for p in &mut procs {
            p.child.close_stdin();
        }
        for p in procs {
            p.wait_exit().await;
        }
    }

    async fn disturb(&mut self, slot: usize, what: Disturb) -> Result<(), String> {
        let Some(mut p) = self.slots[slot].take() else {
            return Ok(());
        };
        match what {
            Disturb::Stop(d) => {
                self.checker.fault(format!("SIGSTOP the leader {}", p.id));
                p.child.stop().map_err(|e| e.to_string())?;
                sleep(d).await;
                p.child.resume().map_err(|e| e.to_string())?;
                self.checker.fault(format!("SIGCONT {}", p.id));
                self.slots[slot] = Some(p);
                self.applied.stops += 1;
            }
            Disturb::Kill(d) => {
                self.checker.fault(format!("SIGKILL the leader {}", p.id));
                // Its open terms end now, as its work dies with it.
                p.child.kill().map_err(|e| e.to_string())?;
                self.applied.kills += 1;
                sleep(d).await;
                self.start(slot)?;
                self.checker.fault(format!("restart slot {slot}"));
            }
        }
        Ok(())
    }
}

/// The libraries whose replicas can run here, and why the others cannot.
fn specs(env: &Env) -> (Vec<Spec>, Vec<String>) {
    let mut specs = Vec::new();
    let mut missing = Vec::new();
    specs.push(Spec {
        library: "leaderelection".into(),
        token: Some("`Leadership::fencing_token` (the Lease's resourceVersion at acquisition)"),
        launch: Launch::Role("leaderelection".into()),
    });
    specs.push(Spec {
        library: KLM.into(),
        token: None,
        launch: Launch::Role("kube-lease-manager".into()),
    });
    specs.push(Spec {
        library: crate::k8s_controller::LABEL.into(),
        token: None,
        launch: Launch::Role(crate::k8s_controller::ARG.into()),
    });
    let peers = [
        (
            PEER_KLE,
            Some("`leaseTransitions` of the Lease `try_acquire_or_renew` returned"),
        ),
        (PEER_KC, None),
        (PEER_KUBERT, None),
        (PEER_KUNOBI, None),
    ];
    for (peer, token) in peers {
        match env.kube.as_ref().map(|k| &k.peers) {
            Some(Ok(bin)) => specs.push(Spec {
                library: peer.label.into(),
                token,
                launch: Launch::Program {
                    program: bin.clone(),
                    args: vec!["contend".into(), peer.arg.into()],
                },
            }),
            Some(Err(e)) => missing.push(format!("{}: {e}", peer.label)),
            None => {}
        }
    }
    (specs, missing)
}

pub async fn section(plan: &Plan, env: &Env) -> String {
    let title = format!(
        "### Safety under contention: {REPLICAS} replicas per library, each a process, leaders stopped and killed at random, the API server slowed ({})\n\n",
        TIMINGS.describe()
    );
    let Some(kube) = &env.kube else {
        return format!("{title}Not run: no API server.\n\n");
    };
    let schedule = Schedule::new(plan.seed, plan.contention_window);
    eprintln!("  {}", schedule.describe());
    let (specs, missing) = specs(env);
    let url = kube.server.url();
    let mut groups: Vec<Group> = specs
        .into_iter()
        .map(|s| Group::new(s, url.clone()))
        .collect();
    let checkers: Vec<Checker> = groups.iter().map(|g| g.checker.clone()).collect();
    let started = Instant::now();
    let slow = async {
        sleep_until(started + schedule.slow.0).await;
        for c in &checkers {
            c.fault(format!("API server latency {LATENCY:?}"));
        }
        kube.server.faults().set_latency(LATENCY);
        sleep_until(started + schedule.slow.1).await;
        kube.server.faults().clear();
        for c in &checkers {
            c.fault("API server fast again");
        }
    };
    let runs = futures::future::join_all(groups.iter_mut().map(|g| g.run(&schedule, started)));
    tokio::join!(slow, runs);

    let mut t = Table::new(&[
        "library",
        "fencing token",
        "faults applied",
        "terms",
        "overlaps",
        "stale tokens accepted",
        "token did not grow",
        "late writes refused",
        "worst leaderless gap",
        "led",
        "notes",
    ]);
    let slow_secs = (schedule.slow.1 - schedule.slow.0).as_secs_f64();
    let mut reports = Vec::new();
    for g in &groups {
        let r = g.checker.report();
        let a = &g.applied;
        eprintln!(
            "  {}: {} terms, {} overlaps, worst gap {}\n{}",
            g.spec.library,
            r.intervals,
            r.overlaps(),
            fmt_secs(r.worst_gap.as_secs_f64()),
            r.explain()
        );
        let mut faults = format!(
            "SIGSTOP ×{}, SIGKILL and restart ×{}, latency {LATENCY:?} for {slow_secs:.0} s",
            a.stops, a.kills
        );
        if a.skipped > 0 {
            faults.push_str(&format!(" ({} skipped: no leader)", a.skipped));
        }
        t.row(vec![
            g.spec.library.clone(),
            g.spec.token.unwrap_or("none (0 for every term)").into(),
            faults,
            r.intervals.to_string(),
            r.overlaps().to_string(),
            count(&r, |v| matches!(v, Violation::StaleTokenAccepted { .. })).to_string(),
            if g.spec.token.is_some() {
                r.fencing_regressions().to_string()
            } else {
                "–".into()
            },
            if g.spec.token.is_some() {
                r.refused.to_string()
            } else {
                "–".into()
            },
            fmt_secs(r.worst_gap.as_secs_f64()),
            format!("{:.1} %", r.leader_share() * 100.0),
            notes(g, &r),
        ]);
        reports.push((g.spec.library.clone(), r));
    }
    let heading = title.trim_start_matches("### ").trim_end().to_owned();
    let mut out = title;
    out.push_str(&format!(
        "Each replica is a process of its own; its work prints a line every {ACT_EVERY:?} while it believes it leads, stamped on arrival by one checker per library (the fault suite's). Schedule: {}.\n\n",
        schedule.describe()
    ));
    out.push_str(&t.render());
    let seed = format!(
        "seed {}, {:.0} s",
        schedule.seed,
        schedule.window.as_secs_f64()
    );
    let picture = crate::plot::contention(&plan.plots, &heading, &seed, REPLICAS, &reports);
    if !picture.is_empty() {
        out.push('\n');
        out.push_str(&picture);
    }
    for m in missing {
        out.push_str(&format!("\nNot run: {m}\n"));
    }
    out.push('\n');
    out
}

fn count(r: &Report, f: impl Fn(&Violation) -> bool) -> usize {
    r.violations.iter().filter(|v| f(v)).count()
}

fn notes(g: &Group, r: &Report) -> String {
    let mut notes: Vec<String> = g.applied.errors.clone();
    let ours = g.spec.library == "leaderelection";
    if ours && !r.is_safe() {
        notes.push("SAFETY VIOLATION: ours must show none".into());
    }
    if let Some(v) = r
        .violations
        .iter()
        .find(|v| matches!(v, Violation::Overlap { .. }))
    {
        notes.push(format!("first overlap: {v}"));
    }
    notes.join("; ")
}

// ---- one replica, in a child process ----------------------------------------------

/// Runs one replica (this program in the role [`ROLE`]), until its standard input
/// closes.
///
/// # Errors
///
/// A bad spec, or a replica that cannot start.
pub fn child(spec: ReplicaSpec) -> Result<(), String> {
    let ReplicaSpec {
        library,
        url,
        token,
        election,
        identity,
    } = spec;
    let uri = url
        .parse()
        .map_err(|e| format!("bad server URL {url:?}: {e}"))?;
    let mut config = kube::Config::new(uri);
    config.auth_info.token = Some(token.into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    // The parent ends us by closing our standard input (or by SIGKILL).
    let shutdown = child::shutdown();
    rt.block_on(async {
        let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
        match library.as_str() {
            "leaderelection" => ours(client, &election, &identity, shutdown).await,
            "kube-lease-manager" => {
                kube_lease_manager(client, &election, &identity, shutdown).await
            }
            crate::k8s_controller::ARG => {
                crate::k8s_controller::contend(
                    client, &election, &identity, TIMINGS, ACT_EVERY, shutdown,
                )
                .await
            }
            other => Err(format!("unknown library {other:?}")),
        }
    })
}

async fn ours(
    client: kube::Client,
    election: &str,
    identity: &str,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let lock = KubeLeaseLock::new(client, NAMESPACE, election);
    let config = Config::new(election)
        .identity(identity)
        .lease_duration(TIMINGS.lease)
        .renew_deadline(TIMINGS.renew)
        .retry_period(TIMINGS.retry);
    let elector = LeaderElector::new(lock, config).map_err(|e| e.to_string())?;
    // Acts every ACT_EVERY while valid, waits while its validity has run out (a
    // renewal may yet succeed), and reports its end when it returns or is dropped (the
    // elector aborts work that outlives its lease, as after a SIGSTOP).
    elector
        .run(shutdown, |l| child::act_while_valid(l, ACT_EVERY))
        .await;
    Ok(())
}

/// kube-lease-manager in its automatic mode (`LeaseManager::watch`), renewing `grace =
/// lease - retry` before expiry, i.e. every retry period, as the other sections drive
/// it; the work acts while its state channel says it leads. Dropping the channel makes
/// the manager release and stop. It exposes no token.
async fn kube_lease_manager(
    client: kube::Client,
    election: &str,
    identity: &str,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let duration = TIMINGS.lease.as_secs();
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, election)
        .with_namespace(NAMESPACE)
        .with_identity(identity)
        .with_duration(duration)
        .with_grace(duration.saturating_sub(TIMINGS.retry.as_secs()).max(1))
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let (mut state, task) = manager.watch().await;
    let mut term: Option<child::Term> = None;
    let mut act = tokio::time::interval(ACT_EVERY);
    // After a SIGSTOP, one action, not a burst of the ticks missed meanwhile.
    act.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                let leading = *state.borrow_and_update();
                if leading && term.is_none() {
                    term = Some(child::Term::untimed(0, identity));
                    act.reset_immediately();
                } else if !leading {
                    term = None;
                }
            }
            _ = act.tick(), if term.is_some() => {
                if let Some(t) = &term {
                    t.act();
                }
            }
        }
    }
    drop(term);
    drop(state);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    Ok(())
}
