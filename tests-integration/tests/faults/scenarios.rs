//! The fault scenarios, written once against any [`Backend`]: the in-memory lock under
//! the paused clock (many seeds), real etcd, the Kubernetes API test server.
//!
//! Each returns the checker's report; the caller asserts safety and the liveness bound
//! with [`check`](crate::support::check) and adds the report to the summary.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use leaderelection::{LeaderElectionRecord, LeaseLock, LockError, Version, Versioned, WatchStream};
use leaderelection_testkit::checker::Report;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::{sleep, Instant};

use crate::support::{check, Backend, Election, Link, Work};
use leaderelection_testkit::faults::WriteFault;

/// A random duration in `[lo, hi)`, in milliseconds.
pub fn between(rng: &mut StdRng, lo: Duration, hi: Duration) -> Duration {
    let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
    Duration::from_millis(rng.random_range(lo..hi.max(lo + 1)))
}

/// How long a standby may take to notice that a crashed or cut-off leader's lease ran
/// out and take it: the lease, one jittered poll, the backend's slack.
fn takeover_bound(e: &Election<'_>) -> Duration {
    e.timing.lease + e.timing.jittered_retry() + e.timing.slack
}

async fn start(e: &mut Election<'_>, rng: &mut StdRng) {
    for _ in 0..rng.random_range(2..=4) {
        e.join(None).await;
    }
}

/// The leader dies without releasing; half the time it comes back with the same
/// identity (a restarted process), otherwise a new replica joins.
pub async fn leader_crash(b: &dyn Backend, rng: &mut StdRng, rounds: usize) -> Report {
    let mut e = Election::new(b, "leader-crash");
    let t = e.timing;
    start(&mut e, rng).await;
    let bound = takeover_bound(&e);
    for _ in 0..rounds {
        e.wait_leader(bound).await;
        sleep(between(rng, t.retry, t.lease * 2)).await;
        let l = e.wait_leader(bound).await;
        let victim = e.remove(l);
        e.checker.fault(format!("crash leader {}", victim.id));
        victim.crash();
        let id = victim.id.clone();
        victim.join().await;
        sleep(between(rng, Duration::ZERO, t.lease * 2)).await;
        let rejoin = rng.random_bool(0.5).then_some(id);
        e.join(rejoin).await;
    }
    sleep(t.lease).await;
    let report = e.finish().await;
    check(&report, bound);
    assert!(report.intervals > rounds, "{}", report.explain());
    report
}

/// The leader stops being polled (a stalled task, SIGSTOP) for between half the renew
/// deadline and three leases, then runs on: it must learn it lost before acting.
pub async fn leader_stalled(b: &dyn Backend, rng: &mut StdRng, rounds: usize) -> Report {
    let mut e = Election::new(b, "leader-stalled");
    let t = e.timing;
    start(&mut e, rng).await;
    let bound = takeover_bound(&e);
    let mut takeovers_due = 0;
    for _ in 0..rounds {
        sleep(between(rng, t.retry, t.lease)).await;
        let l = e.wait_leader(bound).await;
        let pause = between(rng, t.renew / 2, t.lease * 3);
        e.checker
            .fault(format!("stall leader {} for {pause:?}", e.replicas[l].id));
        let terms_before = e.checker.intervals().len();
        e.replicas[l].stall(true);
        sleep(pause).await;
        if pause > bound {
            // Someone else must have taken over meanwhile.
            assert!(
                e.checker.intervals().len() > terms_before,
                "nobody took over from a leader stalled for {pause:?}\n{}",
                e.checker.report().explain()
            );
            takeovers_due += 1;
        }
        e.replicas[l].stall(false);
        sleep(t.slack).await;
        let leaders = e.replicas.iter().filter(|r| r.is_leader()).count();
        assert!(leaders <= 1, "{leaders} replicas believe they lead");
    }
    let report = e.finish().await;
    check(&report, bound);
    // Every stalled leader that was replaced learnt of it only after its term ran out.
    assert!(report.noticed_late >= takeovers_due, "{}", report.explain());
    report
}

/// Every request to the backend takes between half and twice the renew deadline, for
/// a while.
pub async fn backend_slow(b: &dyn Backend, rng: &mut StdRng, rounds: usize) -> Report {
    let mut e = Election::new(b, "backend-slow");
    let t = e.timing;
    start(&mut e, rng).await;
    let mut bound = takeover_bound(&e);
    for _ in 0..rounds {
        e.wait_leader(bound).await;
        sleep(between(rng, t.retry, t.lease)).await;
        let latency = between(rng, t.renew / 2, t.renew * 2);
        let lasting = between(rng, t.retry, t.lease * 4);
        e.checker
            .fault(format!("backend answers after {latency:?} for {lasting:?}"));
        let links = e.links();
        for l in &links {
            l.delay(latency);
        }
        sleep(lasting).await;
        for l in &links {
            l.delay(Duration::ZERO);
        }
        // Nobody can lead while every answer comes too late; once answers are fast again,
        // the lease of whoever wrote last runs out and someone takes it.
        bound = bound.max(lasting + latency + t.renew + t.lease + t.jittered_retry() * 2 + t.slack);
    }
    e.wait_leader(bound).await;
    let report = e.finish().await;
    check(&report, bound);
    report
}

/// The backend refuses every request for a while; or, half the time, each replica's
/// link flaps on its own.
pub async fn backend_errors(b: &dyn Backend, rng: &mut StdRng, rounds: usize) -> Report {
    let mut e = Election::new(b, "backend-errors");
    let t = e.timing;
    start(&mut e, rng).await;
    let mut bound = takeover_bound(&e);
    for _ in 0..rounds {
        e.wait_leader(bound).await;
        sleep(between(rng, t.retry, t.lease)).await;
        let lasting = between(rng, t.retry, t.lease * 3);
        let links = e.links();
        if rng.random_bool(0.5) {
            e.checker.fault(format!("backend down for {lasting:?}"));
            for l in &links {
                l.cut(true);
            }
            sleep(lasting).await;
        } else {
            e.checker.fault(format!("every link flaps for {lasting:?}"));
            let until = Instant::now() + lasting;
            while Instant::now() < until {
                for l in &links {
                    l.cut(rng.random_bool(0.5));
                }
                sleep(between(rng, t.retry / 5, t.retry * 2)).await;
            }
        }
        for l in &links {
            l.cut(false);
        }
        bound = bound.max(lasting + t.lease + t.jittered_retry() * 2 + t.slack);
    }
    e.wait_leader(bound).await;
    let report = e.finish().await;
    check(&report, bound);
    report
}

/// Only the leader loses its way to the backend; the standbys still reach it.
pub async fn leader_cut_off(b: &dyn Backend, rng: &mut StdRng, rounds: usize) -> Report {
    let mut e = Election::new(b, "leader-cut-off");
    let t = e.timing;
    start(&mut e, rng).await;
    let bound = takeover_bound(&e);
    for _ in 0..rounds {
        sleep(between(rng, t.retry, t.lease)).await;
        let l = e.wait_leader(bound).await;
        let lasting = between(rng, t.retry, t.lease * 4);
        let (id, link) = (e.replicas[l].id.clone(), e.replicas[l].link.clone());
        e.checker
            .fault(format!("cut leader {id} off for {lasting:?}"));
        link.cut(true);
        sleep(lasting).await;
        if lasting > bound {
            assert!(
                e.replicas[l].id == id && !e.replicas[l].is_leader(),
                "leader {id} cut off for {lasting:?} still believes it leads"
            );
        }
        link.cut(false);
    }
    let report = e.finish().await;
    check(&report, bound);
    report
}

/// Every replica's wall clock jumps at random (to 1970, decades back, centuries ahead,
/// minutes either way) and the leader crashes now and then. Expiry must be judged on
/// the monotonic clock: no takeover while the leader renews, and a takeover one lease
/// after its last renewal, whatever the timestamps in the record say.
pub async fn wall_clock_jumps(b: &dyn Backend, rng: &mut StdRng, rounds: usize) -> Report {
    let skewed = Skewed {
        inner: b,
        seed: AtomicU64::new(rng.random()),
    };
    let mut e = Election::new(&skewed, "wall-clock");
    let t = e.timing;
    start(&mut e, rng).await;
    let bound = takeover_bound(&e);
    for _ in 0..rounds {
        let l = e.wait_leader(bound).await;
        let terms = e.checker.intervals().len();
        e.checker.fault("wall clocks jump on every write");
        sleep(between(rng, t.lease, t.lease * 3)).await;
        assert_eq!(
            e.checker.intervals().len(),
            terms,
            "a standby took over from a live leader whose records carry jumped timestamps\n{}",
            e.checker.report().explain()
        );
        let victim = e.remove(l);
        e.checker.fault(format!("crash leader {}", victim.id));
        let crashed_at = Instant::now();
        victim.crash();
        victim.join().await;
        let n = e.wait_new_leader("", bound).await;
        // The new leader's work, a task of its own, records its term a moment after
        // the elector reports leading.
        let recorded_by = Instant::now() + Duration::from_secs(10);
        let took = loop {
            let took = e
                .checker
                .intervals()
                .iter()
                .filter(|i| i.identity == e.replicas[n].id && i.start > crashed_at)
                .map(|i| i.start)
                .max();
            if let Some(took) = took {
                break took;
            }
            assert!(
                Instant::now() < recorded_by,
                "the new leader's term was not recorded"
            );
            sleep(Duration::from_millis(1)).await;
        };
        let after = took - crashed_at;
        // The last renewal happened at most one retry period before the crash.
        assert!(
            after + t.retry + t.slack >= t.lease && after <= t.lease + t.jittered_retry() + t.slack,
            "took over {after:?} after the crash; the lease is {:?}",
            t.lease
        );
        e.join(None).await;
    }
    let report = e.finish().await;
    check(&report, bound);
    report
}

/// The leader's `run` future is dropped (its task aborted) while its work, a task of
/// its own, lives on: the work must be told it no longer leads before anyone else may
/// take over.
pub async fn elector_dropped(b: &dyn Backend, rng: &mut StdRng, rounds: usize) -> Report {
    let mut e = Election::new(b, "elector-dropped");
    let t = e.timing;
    start(&mut e, rng).await;
    let bound = takeover_bound(&e);
    let mut orphans = Vec::new();
    for _ in 0..rounds {
        sleep(between(rng, t.retry, t.lease * 2)).await;
        let l = e.wait_leader(bound).await;
        let r = e.remove(l);
        e.checker
            .fault(format!("drop the elector of leader {}", r.id));
        r.abort_elector();
        orphans.push(r);
        e.join(None).await;
    }
    sleep(t.lease * 2).await;
    // The orphaned work still runs while the report is made: if it was never told, its
    // term is still open and overlaps its successors.
    e.checker.close();
    let report = e.checker.report();
    let report = {
        let _ = e.finish().await;
        report
    };
    drop(orphans);
    check(&report, bound);
    report
}

/// Replicas join, leave gracefully, crash, and come back under their old identity, at
/// random; two to six run at any time.
pub async fn churn(b: &dyn Backend, rng: &mut StdRng, steps: usize) -> Report {
    let mut e = Election::new(b, "churn");
    let t = e.timing;
    start(&mut e, rng).await;
    let bound = takeover_bound(&e);
    let mut crashed: Vec<String> = Vec::new();
    for _ in 0..steps {
        sleep(between(rng, Duration::ZERO, t.lease * 2)).await;
        let n = e.replicas.len();
        match rng.random_range(0..5) {
            0 | 1 if n > 2 => {
                // Leave: the leader half the time, or failover would rarely happen.
                let i = match e.leader() {
                    Some(l) if rng.random_bool(0.5) => l,
                    _ => rng.random_range(0..n),
                };
                let r = e.remove(i);
                if rng.random_bool(0.5) {
                    e.checker.fault(format!("{} leaves", r.id));
                    r.stop().await;
                } else {
                    e.checker.fault(format!("{} crashes", r.id));
                    r.crash();
                    crashed.push(r.id.clone());
                    r.join().await;
                }
            }
            2 if !crashed.is_empty() && n < 6 => {
                let id = crashed.swap_remove(rng.random_range(0..crashed.len()));
                e.checker.fault(format!("{id} restarts"));
                e.join(Some(id)).await;
            }
            _ if n < 6 => {
                let i = e.join(None).await;
                e.checker.fault(format!("{} joins", e.replicas[i].id));
            }
            _ => {}
        }
    }
    sleep(t.lease * 2).await;
    let report = e.finish().await;
    check(&report, bound);
    report
}

/// Only the leader loses its way to the backend, at a random moment between two
/// renewals, while its work acts until `valid_until`: the takeover must come exactly
/// `lease_duration - renew_deadline` after the old work's last activity (under the
/// paused clock, where requests take no time).
pub async fn takeover_margin(b: &dyn Backend, rng: &mut StdRng, rounds: usize) -> Report {
    let mut e = Election::new(b, "takeover-margin");
    e.work = Some(Work::eager());
    let t = e.timing;
    start(&mut e, rng).await;
    let bound = takeover_bound(&e);
    let mut cut = Vec::new();
    for _ in 0..rounds {
        // Long enough for every standby to watch again after the last cut.
        sleep(between(rng, t.lease * 2, t.lease * 3)).await;
        let l = e.wait_leader(bound).await;
        let (id, link) = (e.replicas[l].id.clone(), e.replicas[l].link.clone());
        e.checker.fault(format!("cut leader {id} off"));
        let term = e
            .checker
            .intervals()
            .into_iter()
            .rfind(|i| i.identity == id && i.end.is_none());
        cut.extend(term.map(|i| i.fencing_token));
        link.cut(true);
        e.wait_new_leader(&id, bound).await;
        link.cut(false);
    }
    let report = e.finish().await;
    check(&report, bound);
    let want = t.lease - t.renew;
    let margins: Vec<Duration> = report
        .takeovers
        .iter()
        .filter(|k| cut.contains(&k.from.fencing_token))
        .map(|k| k.margin)
        .collect();
    assert!(margins.len() >= rounds, "{margins:?}\n{}", report.explain());
    assert!(
        margins.iter().all(|m| *m == want),
        "takeover margins {margins:?}, expected lease - renew deadline = {want:?}\n{}",
        report.explain()
    );
    report
}

/// Writes are ambiguous for a while: applied while their reply is lost, comes after
/// the caller's timeout, or the write lands late after the caller gave up; for the
/// leader alone or for everyone, while the leader crashes or leaves now and then. The
/// elector must read again to learn what happened, and never lead twice.
pub async fn ambiguous_writes(b: &dyn Backend, rng: &mut StdRng, rounds: usize) -> Report {
    let mut e = Election::new(b, "ambiguous-writes");
    let t = e.timing;
    start(&mut e, rng).await;
    let mut bound = takeover_bound(&e);
    let faults = |links: &[Link]| -> Vec<leaderelection_testkit::faults::Faults> {
        links
            .iter()
            .filter_map(|l| l.as_faults().cloned())
            .collect()
    };
    let mut ambiguous = 0;
    for _ in 0..rounds {
        let l = e.wait_leader(bound).await;
        sleep(between(rng, t.retry, t.lease)).await;
        let fault = match rng.random_range(0..3) {
            0 => WriteFault::LoseReply,
            1 => WriteFault::ReplyAfter(between(rng, t.retry, t.renew * 2)),
            _ => WriteFault::LandAfter(between(rng, t.retry, t.lease * 2)),
        };
        let lasting = between(rng, t.retry, t.lease * 2);
        let targets = if rng.random_bool(0.5) {
            e.checker
                .fault(format!("{fault:?} for every write, for {lasting:?}"));
            faults(&e.links())
        } else {
            let id = &e.replicas[l].id;
            e.checker
                .fault(format!("{fault:?} for the writes of {id}, for {lasting:?}"));
            faults(std::slice::from_ref(&e.replicas[l].link))
        };
        for f in &targets {
            f.set_write_fault(Some(fault));
        }
        sleep(lasting).await;
        for f in &targets {
            ambiguous += f.ambiguous_writes();
            f.set_write_fault(None);
        }
        // A write landing late renews an old holder's record: it costs one lease more.
        bound = bound.max(lasting + t.lease * 3 + t.jittered_retry() * 2 + t.slack);
        if let Some(l) = e.leader() {
            let r = e.remove(l);
            if rng.random_bool(0.5) {
                e.checker.fault(format!("{} leaves", r.id));
                r.stop().await;
            } else {
                e.checker.fault(format!("crash leader {}", r.id));
                r.crash();
                r.join().await;
            }
            e.join(None).await;
        }
    }
    e.wait_leader(bound).await;
    let report = e.finish().await;
    check(&report, bound);
    assert!(
        ambiguous > 0,
        "no write was ambiguous\n{}",
        report.explain()
    );
    report
}

/// A backend whose replicas' wall clocks jump: every record written carries absurd
/// `acquireTime` and `renewTime` values. The stored record is what a host with a
/// broken clock would write; nothing else changes.
struct Skewed<'a> {
    inner: &'a dyn Backend,
    seed: AtomicU64,
}

#[async_trait]
impl Backend for Skewed<'_> {
    fn timing(&self) -> crate::support::Timing {
        self.inner.timing()
    }
    async fn connect(&self, election: &str) -> (Box<dyn LeaseLock>, Link) {
        let (inner, link) = self.inner.connect(election).await;
        let lock = JumpingClock {
            inner,
            rng: Mutex::new(StdRng::seed_from_u64(
                self.seed.fetch_add(1, Ordering::Relaxed),
            )),
        };
        (Box::new(lock), link)
    }
}

/// A lock that stamps every record it writes with a jumped wall clock.
struct JumpingClock {
    inner: Box<dyn LeaseLock>,
    rng: Mutex<StdRng>,
}

impl fmt::Debug for JumpingClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JumpingClock({})", self.inner.describe())
    }
}

impl JumpingClock {
    fn jumped(&self, record: &LeaderElectionRecord) -> LeaderElectionRecord {
        let mut rng = self.rng.lock().unwrap();
        let now = Timestamp::now();
        let mut jump = || -> Timestamp {
            match rng.random_range(0..5) {
                0 => Timestamp::UNIX_EPOCH,
                1 => Timestamp::MAX,
                2 => now - SignedDuration::from_hours(24 * 365 * 30),
                3 => now + SignedDuration::from_hours(24 * 365 * 100),
                _ => now + SignedDuration::from_secs(rng.random_range(-600..600)),
            }
        };
        LeaderElectionRecord {
            acquire_time: record.acquire_time.map(|_| jump()),
            renew_time: record.renew_time.map(|_| jump()),
            ..record.clone()
        }
    }
}

#[async_trait]
impl LeaseLock for JumpingClock {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.inner.get().await
    }
    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        let r = self.jumped(record);
        self.inner.create(&r).await
    }
    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        let r = self.jumped(record);
        self.inner.update(&r, expected).await
    }
    fn watch(&self) -> Option<WatchStream> {
        self.inner.watch()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
        self.inner.fencing_token(record, version)
    }
}
