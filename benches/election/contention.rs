//! Safety under contention: three replicas per library, each its own OS process, on
//! one Kubernetes Lease of the API test server, while their leaders are stopped
//! (SIGSTOP, later SIGCONT) and killed (SIGKILL, then restarted) at random and the
//! server is slowed for part of the run. Every replica prints the test kit checker's
//! [`Line`]s for the work it does while it believes it leads; one [`Checker`] per
//! library stamps them on arrival and judges the terms as the fault suite does.
//!
//! The replicas of our elector run in this benchmark's own program
//! (`--contend-child`); the peers that need another kube version run in the peer
//! program (`benches/peers`, its `contend` mode).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaderelection::lock::kube::KubeLeaseLock;
use leaderelection::{Config, LeaderElector, Leadership};
use leaderelection_testkit::apiserver::ADMIN_TOKEN;
use leaderelection_testkit::checker::{Checker, Line, Report, Violation};
use leaderelection_testkit::etcd::signal_pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::k8s::{KLM, NAMESPACE, PEER_KC, PEER_KLE, PEER_KUBERT};
use crate::scenario::Timings;
use crate::stats::{fmt_secs, Table};
use crate::{Env, Plan};

/// The flag that makes this program one replica of the section.
pub const CHILD_FLAG: &str = "--contend-child";

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

/// How to start one replica of a library: `program args... URL TOKEN ELECTION IDENTITY`.
#[derive(Clone, Debug)]
struct Spec {
    library: String,
    /// What the replicas hand the checker as the fencing token; `None` for a library
    /// that exposes none: its terms all carry 0, so the checker's fenced store cannot
    /// refuse a deposed leader's writes, as no downstream system could.
    token: Option<&'static str>,
    program: PathBuf,
    args: Vec<String>,
}

/// One replica process; its lines go to the library's checker as they arrive.
struct Proc {
    id: String,
    child: Child,
    open: Arc<Mutex<Open>>,
}

/// The terms a replica process reported begun and not ended.
#[derive(Debug, Default)]
struct Open {
    /// The checker's name of each open term, by token.
    terms: HashMap<u64, String>,
    /// Terms begun so far.
    begun: usize,
}

impl Open {
    /// The line as the checker gets it: the identity names the process's term
    /// (`r0-1/3`: its third), so that two terms of one process are never confused,
    /// even when a library gives every term the same token.
    fn rename(&mut self, line: Line) -> Line {
        match line {
            Line::Begin {
                token,
                identity,
                valid_for,
            } => {
                self.begun += 1;
                let identity = format!("{identity}/{}", self.begun);
                self.terms.insert(token, identity.clone());
                Line::Begin {
                    token,
                    identity,
                    valid_for,
                }
            }
            Line::Act {
                token,
                identity,
                valid_for,
            } => Line::Act {
                identity: self.terms.get(&token).cloned().unwrap_or(identity),
                token,
                valid_for,
            },
            Line::End { token, identity } => Line::End {
                identity: self.terms.remove(&token).unwrap_or(identity),
                token,
            },
        }
    }
}

impl Proc {
    fn start(
        spec: &Spec,
        url: &str,
        election: &str,
        id: &str,
        checker: &Checker,
    ) -> Result<Self, String> {
        let mut child = Command::new(&spec.program)
            .args(&spec.args)
            .args([url, ADMIN_TOKEN, election, id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let open: Arc<Mutex<Open>> = Arc::default();
        let (o, c) = (open.clone(), checker.clone());
        // A thread of its own per replica: each line is stamped as soon as it arrives,
        // however busy the runtime is.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let Ok(line) = line.parse::<Line>() else {
                    continue;
                };
                // Renamed and received under one lock, so that a stop or a kill
                // sees every term begun.
                let mut open = o.lock().unwrap_or_else(|e| e.into_inner());
                let line = open.rename(line);
                c.receive(&line);
            }
        });
        Ok(Self {
            id: id.to_owned(),
            child,
            open,
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leads(&self) -> bool {
        !self.open().terms.is_empty()
    }

    /// Marks its open terms as stalled, before it is stopped.
    fn stalled(&self, checker: &Checker) {
        for id in self.open().terms.values() {
            checker.stalled(id);
        }
    }

    /// Signals the process unless it has exited and been reaped (its pid may then
    /// belong to another process).
    fn signal(&mut self, sig: libc::c_int) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => signal_pid(self.child.id(), sig)
                .map_err(|e| format!("cannot signal {}: {e}", self.id)),
            Ok(Some(status)) => Err(format!("{} had exited: {status}", self.id)),
            Err(e) => Err(format!("cannot wait for {}: {e}", self.id)),
        }
    }

    /// SIGKILL: its open term ends now, as its work dies with it.
    fn kill(mut self, checker: &Checker) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (_, id) in self.open().terms.drain() {
            checker.killed(&id);
        }
    }

    /// Waits a little for it to exit after its standard input was closed (it stops its
    /// work and releases).
    async fn wait_exit(mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.signal(libc::SIGCONT).is_ok() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
            drop(p.child.stdin.take());
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
                p.stalled(&self.checker);
                p.signal(libc::SIGSTOP)?;
                sleep(d).await;
                p.signal(libc::SIGCONT)?;
                self.checker.fault(format!("SIGCONT {}", p.id));
                self.slots[slot] = Some(p);
                self.applied.stops += 1;
            }
            Disturb::Kill(d) => {
                self.checker.fault(format!("SIGKILL the leader {}", p.id));
                p.kill(&self.checker);
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
    match std::env::current_exe() {
        Ok(exe) => {
            specs.push(Spec {
                library: "leaderelection".into(),
                token: Some(
                    "`Leadership::fencing_token` (the Lease's resourceVersion at acquisition)",
                ),
                program: exe.clone(),
                args: vec![CHILD_FLAG.into(), "leaderelection".into()],
            });
            specs.push(Spec {
                library: KLM.into(),
                token: None,
                program: exe,
                args: vec![CHILD_FLAG.into(), "kube-lease-manager".into()],
            });
        }
        Err(e) => missing.push(format!(
            "leaderelection, {KLM}: cannot find this program: {e}"
        )),
    }
    let peers = [
        (
            PEER_KLE,
            Some("`leaseTransitions` of the Lease `try_acquire_or_renew` returned"),
        ),
        (PEER_KC, None),
        (PEER_KUBERT, None),
    ];
    for (peer, token) in peers {
        match env.kube.as_ref().map(|k| &k.peers) {
            Some(Ok(bin)) => specs.push(Spec {
                library: peer.label.into(),
                token,
                program: bin.clone(),
                args: vec!["contend".into(), peer.arg.into()],
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
    }
    let mut out = title;
    out.push_str(&format!(
        "Each replica is a process of its own; its work prints a line every {ACT_EVERY:?} while it believes it leads, stamped on arrival by one checker per library (the fault suite's). Schedule: {}.\n\n",
        schedule.describe()
    ));
    out.push_str(&t.render());
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

/// Runs one replica: `--contend-child LIBRARY URL TOKEN ELECTION IDENTITY`, until its
/// standard input closes.
///
/// # Errors
///
/// Bad arguments, or a replica that cannot start.
pub fn child(args: &[String]) -> Result<(), String> {
    let [library, url, token, election, identity] = args else {
        return Err(format!(
            "usage: {CHILD_FLAG} leaderelection|kube-lease-manager URL TOKEN ELECTION IDENTITY (got {} arguments)",
            args.len()
        ));
    };
    let uri = url
        .parse()
        .map_err(|e| format!("bad server URL {url:?}: {e}"))?;
    let mut config = kube::Config::new(uri);
    config.auth_info.token = Some(token.clone().into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    // The parent ends us by closing our standard input (or by SIGKILL).
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
        stop.cancel();
    });
    rt.block_on(async {
        let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
        match library.as_str() {
            "leaderelection" => ours(client, election, identity, shutdown).await,
            "kube-lease-manager" => kube_lease_manager(client, election, identity, shutdown).await,
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
    elector.run(shutdown, act_while_valid).await;
    Ok(())
}

/// The leader's work: acts every [`ACT_EVERY`] while [`Leadership::is_valid`] holds,
/// waits while its validity has run out (a renewal may yet succeed), and reports its
/// end when it returns or is dropped (the elector aborts work that outlives its lease,
/// as after a SIGSTOP).
async fn act_while_valid(l: Leadership) {
    let _term = ChildTerm::begin(&l);
    while !l.is_lost() {
        let now = Instant::now();
        let next = if l.is_valid() {
            say(&Line::act(&l));
            (now + ACT_EVERY).min(l.valid_until())
        } else {
            now + ACT_EVERY
        };
        tokio::select! {
            _ = l.lost() => break,
            _ = sleep_until(next) => {}
        }
    }
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
    let mut term: Option<ChildTerm> = None;
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
                    term = Some(ChildTerm::new(0, identity));
                    act.reset_immediately();
                } else if !leading {
                    term = None;
                }
            }
            _ = act.tick(), if term.is_some() => say(&Line::Act { token: 0, identity: identity.to_owned(), valid_for: None }),
        }
    }
    drop(term);
    drop(state);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    Ok(())
}

/// One term in a child process: `BEGIN` when made, `END` when dropped.
struct ChildTerm(Line);

impl ChildTerm {
    fn begin(l: &Leadership) -> Self {
        say(&Line::begin(l));
        Self(Line::end(l))
    }

    fn new(token: u64, identity: &str) -> Self {
        let identity = identity.to_owned();
        say(&Line::Begin {
            token,
            identity: identity.clone(),
            valid_for: None,
        });
        Self(Line::End { token, identity })
    }
}

impl Drop for ChildTerm {
    fn drop(&mut self) {
        say(&self.0);
    }
}

fn say(line: &Line) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
