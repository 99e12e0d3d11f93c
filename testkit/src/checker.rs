//! A safety checker for elections under test: never two leaders, fencing tokens that
//! only grow, and the figures that show how the election fared.
//!
//! Every elector under test hands each [`Leadership`] it is given to the same
//! [`Checker`] (most simply through [`Checker::hold`] as the leader's work). The
//! checker keeps one [`Interval`] per term as the term's own handle reports it:
//! identity, fencing token, start ([`Leadership::acquired_at`]) and end (when the work
//! saw the loss, but never later than [`Leadership::valid_until`], the instant up to
//! which the handle said acting was safe). All instants are on the host's monotonic
//! clock (tokio's clock, so paused-clock tests work too).
//!
//! [`Checker::report`] then finds every [`Violation`]: two intervals that overlap, or
//! a term whose fencing token is not greater than that of every earlier term; and it
//! measures the share of the observed window during which someone led and the worst
//! leaderless gap. A [`Summary`] gathers reports across runs and scenarios into the
//! table a fault suite prints.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use leaderelection::Leadership;

/// How long after its validity ended a term's work may notice the loss before it
/// counts as [noticed late](Interval::noticed_late). On the real clock the elector fires
/// `lost` a timer tick after `valid_until`; only a stall takes longer than this.
pub const LATE_AFTER: Duration = Duration::from_millis(250);

/// The record of one election's leadership terms, shared by every elector under test.
///
/// Cheap to clone; clones share the same record. The observed window opens when the
/// checker is created and closes at [`close`](Self::close) (or at the report).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leaderelection_testkit::checker::Checker;
/// use leaderelection::{Config, LeaderElector, MemoryStore};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new();
/// let checker = Checker::new();
/// let shutdown = CancellationToken::new();
/// let mut runs = Vec::new();
/// for id in ["a", "b"] {
///     let elector = LeaderElector::new(store.lock("jobs"), Config::new("jobs").identity(id))?;
///     let (checker, shutdown) = (checker.clone(), shutdown.clone());
///     runs.push(tokio::spawn(async move {
///         elector.run(shutdown, move |leadership| checker.clone().hold(leadership)).await
///     }));
/// }
/// tokio::time::sleep(Duration::from_secs(60)).await;
/// checker.close();
/// shutdown.cancel();
/// for run in runs {
///     run.await?;
/// }
/// let report = checker.report();
/// report.assert_safe();
/// assert_eq!(report.intervals, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Checker {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    opened: Instant,
    closed: Option<Instant>,
    intervals: Vec<Interval>,
    faults: Vec<(Instant, String)>,
}

/// One term of leadership, as its [`Leadership`] handle reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// The leader's identity.
    pub identity: String,
    /// The term's fencing token.
    pub fencing_token: u64,
    /// When the term began: [`Leadership::acquired_at`], the moment the acquiring
    /// write was sent (no later than the moment it took effect).
    pub start: Instant,
    /// When the term ended: the moment the work saw the loss, or the term's last
    /// [`Leadership::valid_until`] if that came first. `None` while it lasts.
    pub end: Option<Instant>,
    /// When the work saw the loss. Later than `end` when the leader was stalled past
    /// its validity (a paused process): such a leader must check
    /// [`Leadership::is_valid`] or rely on fencing downstream.
    pub noticed: Option<Instant>,
}

impl Interval {
    /// True when the work noticed the loss more than [`LATE_AFTER`] after the term had
    /// stopped being valid: it was stalled (a paused process, a starved runtime).
    pub fn noticed_late(&self) -> bool {
        matches!((self.end, self.noticed), (Some(e), Some(n)) if n > e + LATE_AFTER)
    }

    /// The interval as one line of JSON with instants as `CLOCK_MONOTONIC` nanoseconds,
    /// so that a child process can report its terms to the test that checks them
    /// (the monotonic clock is shared by every process of a host).
    ///
    /// Only meaningful on tokio's real clock, not a paused one.
    pub fn to_wire(&self) -> String {
        let wire = Wire {
            identity: self.identity.clone(),
            fencing_token: self.fencing_token,
            start_ns: to_monotonic_ns(self.start),
            end_ns: self.end.map(to_monotonic_ns),
            noticed_ns: self.noticed.map(to_monotonic_ns),
        };
        // A struct of strings and integers always serializes.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Reads a line written by [`to_wire`](Self::to_wire), possibly in another process.
    ///
    /// # Errors
    ///
    /// [`InvalidInterval`] when the line is not such an interval.
    pub fn from_wire(line: &str) -> Result<Self, InvalidInterval> {
        let wire: Wire =
            serde_json::from_str(line.trim()).map_err(|e| InvalidInterval(e.to_string()))?;
        Ok(Self {
            identity: wire.identity,
            fencing_token: wire.fencing_token,
            start: from_monotonic_ns(wire.start_ns),
            end: wire.end_ns.map(from_monotonic_ns),
            noticed: wire.noticed_ns.map(from_monotonic_ns),
        })
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            // At most 64 characters: identities come from records anyone can write.
            "{:.64} (fencing token {}",
            self.identity, self.fencing_token
        )?;
        match self.end {
            Some(end) => write!(f, ", led {:?})", end.saturating_duration_since(self.start)),
            None => write!(f, ", still leading)"),
        }
    }
}

/// A line that [`Interval::from_wire`] could not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid interval line (expected the JSON that Interval::to_wire writes): {0}")]
pub struct InvalidInterval(String);

#[derive(Serialize, Deserialize)]
struct Wire {
    identity: String,
    fencing_token: u64,
    start_ns: u64,
    end_ns: Option<u64>,
    noticed_ns: Option<u64>,
}

/// Nanoseconds on `CLOCK_MONOTONIC` now. Rust's `Instant` reads the same clock on
/// Linux, which is what makes instants of different processes comparable.
fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

fn to_monotonic_ns(t: Instant) -> u64 {
    let now = Instant::now();
    let now_ns = monotonic_now_ns();
    if t <= now {
        now_ns.saturating_sub((now - t).as_nanos() as u64)
    } else {
        now_ns.saturating_add((t - now).as_nanos() as u64)
    }
}

fn from_monotonic_ns(ns: u64) -> Instant {
    let now = Instant::now();
    let now_ns = monotonic_now_ns();
    if ns <= now_ns {
        now.checked_sub(Duration::from_nanos(now_ns - ns))
            .unwrap_or(now)
    } else {
        now + Duration::from_nanos(ns - now_ns)
    }
}

/// One term being recorded: ends when [`end`](Self::end) is called or when dropped
/// (a crashed process's work is dropped mid-term).
#[derive(Debug)]
pub struct Term {
    checker: Checker,
    index: usize,
    leadership: Leadership,
    ended: bool,
}

impl Term {
    /// Ends the term now, or at the handle's [`Leadership::valid_until`] if that passed
    /// already.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let now = Instant::now();
        let end = now.min(self.leadership.valid_until());
        let mut state = self.checker.state();
        let interval = &mut state.intervals[self.index];
        interval.end = Some(end);
        interval.noticed = Some(now);
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

impl Checker {
    /// A checker whose observed window opens now.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                opened: Instant::now(),
                closed: None,
                intervals: Vec::new(),
                faults: Vec::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread cannot leave an interval half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts recording the term `leadership` stands for.
    pub fn begin(&self, leadership: &Leadership) -> Term {
        let index = {
            let mut state = self.state();
            state.intervals.push(Interval {
                identity: leadership.identity().to_owned(),
                fencing_token: leadership.fencing_token(),
                start: leadership.acquired_at(),
                end: None,
                noticed: None,
            });
            state.intervals.len() - 1
        };
        Term {
            checker: self.clone(),
            index,
            leadership: leadership.clone(),
            ended: false,
        }
    }

    /// The leader's work of a test: records the term until leadership is lost.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future ends the term at that moment, as a crash would.
    pub async fn hold(self, leadership: Leadership) {
        let term = self.begin(&leadership);
        leadership.lost().await;
        term.end();
    }

    /// Adds a term recorded elsewhere, such as one read with [`Interval::from_wire`]
    /// from a child process.
    pub fn record(&self, interval: Interval) {
        self.state().intervals.push(interval);
    }

    /// Notes that a fault was injected now (`what` appears in violation reports).
    pub fn fault(&self, what: impl Into<String>) {
        self.state().faults.push((Instant::now(), what.into()));
    }

    /// The faults noted so far, with when they were injected.
    pub fn faults(&self) -> Vec<(Instant, String)> {
        self.state().faults.clone()
    }

    /// Every term recorded so far, in the order they began to be recorded.
    pub fn intervals(&self) -> Vec<Interval> {
        self.state().intervals.clone()
    }

    /// Closes the observed window now; terms still running are counted as leading up
    /// to here. Call it before stopping the electors, so the final hand-over does not
    /// count as a leaderless gap. The first call wins.
    pub fn close(&self) {
        let mut state = self.state();
        if state.closed.is_none() {
            state.closed = Some(Instant::now());
        }
    }

    /// Checks every term against every other and measures the window.
    ///
    /// Two terms overlap when one begins before another has ended (a term still
    /// running overlaps every term that begins after it). A fencing regression is a
    /// term whose token is not greater than the token of every term that began
    /// before it.
    pub fn report(&self) -> Report {
        let state = self.state();
        let closed = state.closed.unwrap_or_else(Instant::now);
        let mut terms = state.intervals.clone();
        terms.sort_by_key(|t| (t.start, t.fencing_token));

        let mut violations = Vec::new();
        // The term that ends last among those seen, and the term with the greatest token.
        let mut last_ending: Option<&Interval> = None;
        let mut greatest: Option<&Interval> = None;
        for t in &terms {
            if let Some(prev) = last_ending {
                if prev.end.is_none_or(|end| t.start < end) {
                    violations.push(Violation::Overlap {
                        first: prev.clone(),
                        second: t.clone(),
                    });
                }
            }
            if let Some(g) = greatest {
                if t.fencing_token <= g.fencing_token {
                    violations.push(Violation::FencingRegression {
                        earlier: g.clone(),
                        later: t.clone(),
                    });
                }
            }
            if last_ending.is_none_or(|p| p.end.is_some() && t.end.is_none_or(|e| Some(e) > p.end))
            {
                last_ending = Some(t);
            }
            if greatest.is_none_or(|g| t.fencing_token > g.fencing_token) {
                greatest = Some(t);
            }
        }

        // Coverage: the union of the terms clipped to the window.
        let opened = state.opened;
        let window = closed.saturating_duration_since(opened);
        let mut led = Duration::ZERO;
        let mut worst_gap = Duration::ZERO;
        let mut covered_to = opened;
        for t in &terms {
            let start = t.start.clamp(opened, closed);
            let end = t.end.unwrap_or(closed).clamp(opened, closed);
            if start > covered_to {
                worst_gap = worst_gap.max(start - covered_to);
            }
            if end > covered_to {
                led += end - start.max(covered_to);
                covered_to = end;
            }
        }
        worst_gap = worst_gap.max(closed.saturating_duration_since(covered_to));

        Report {
            intervals: terms.len(),
            faults: state.faults.len(),
            noticed_late: terms.iter().filter(|t| t.noticed_late()).count(),
            window,
            led,
            worst_gap,
            violations,
            terms,
            fault_log: state
                .faults
                .iter()
                .map(|(at, what)| (at.saturating_duration_since(opened), what.clone()))
                .collect(),
            opened,
        }
    }
}

/// A breach of the election's safety found by [`Checker::report`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// `second` began before `first` ended: two leaders at once.
    Overlap {
        /// The term that began first.
        first: Interval,
        /// The term that began while `first` still ran.
        second: Interval,
    },
    /// `later` began after `earlier` with a token that is not greater.
    FencingRegression {
        /// The earlier term with the greatest token so far.
        earlier: Interval,
        /// The term whose token did not grow.
        later: Interval,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Overlap { first, second } => {
                let after = second.start.saturating_duration_since(first.start);
                write!(
                    f,
                    "two leaders at once: {second} began {after:?} after {first} began"
                )?;
                if let Some(end) = first.end {
                    write!(
                        f,
                        ", {:?} before it ended",
                        end.saturating_duration_since(second.start)
                    )?;
                }
                Ok(())
            }
            Violation::FencingRegression { earlier, later } => write!(
                f,
                "fencing token did not grow: {later} began {:?} after {earlier} began",
                later.start.saturating_duration_since(earlier.start)
            ),
        }
    }
}

/// What [`Checker::report`] found in one run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// Terms recorded.
    pub intervals: usize,
    /// Faults noted with [`Checker::fault`].
    pub faults: usize,
    /// Terms whose work noticed the loss well after the term's validity ran out
    /// ([`Interval::noticed_late`]).
    pub noticed_late: usize,
    /// Length of the observed window.
    pub window: Duration,
    /// Time within the window during which some replica led.
    pub led: Duration,
    /// The longest stretch of the window without a leader.
    pub worst_gap: Duration,
    /// Overlaps and fencing regressions; empty when the run was safe.
    pub violations: Vec<Violation>,
    /// Every term, in order of start.
    pub terms: Vec<Interval>,
    /// Every fault, with its time since the window opened.
    pub fault_log: Vec<(Duration, String)>,
    /// When the observed window opened.
    pub opened: Instant,
}

impl Report {
    /// Number of overlapping pairs of terms found.
    pub fn overlaps(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| matches!(v, Violation::Overlap { .. }))
            .count()
    }

    /// Number of terms whose fencing token did not grow.
    pub fn fencing_regressions(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| matches!(v, Violation::FencingRegression { .. }))
            .count()
    }

    /// Share of the window with a leader, from 0 to 1.
    pub fn leader_share(&self) -> f64 {
        if self.window.is_zero() {
            return 0.0;
        }
        self.led.as_secs_f64() / self.window.as_secs_f64()
    }

    /// True when no violation was found.
    pub fn is_safe(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics with every violation, the terms and the faults, unless the run was safe.
    ///
    /// # Panics
    ///
    /// When a violation was found.
    pub fn assert_safe(&self) {
        if !self.is_safe() {
            panic!("{}", self.explain());
        }
    }

    /// The violations, terms and faults of the run, as text for a failure message.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        for v in &self.violations {
            s.push_str(&format!("VIOLATION: {v}\n"));
        }
        s.push_str("terms (start since the window opened):\n");
        for t in &self.terms {
            let at = t.start.saturating_duration_since(self.opened);
            s.push_str(&format!("  {at:?}: {t}\n"));
        }
        s.push_str("faults (time since the window opened):\n");
        for (at, what) in &self.fault_log {
            s.push_str(&format!("  {at:?}: {what}\n"));
        }
        s
    }
}

/// Reports of many runs, gathered per scenario into the table a fault suite prints.
///
/// # Examples
///
/// ```
/// use leaderelection_testkit::checker::{Checker, Summary};
///
/// let mut summary = Summary::default();
/// summary.add("memory/leader-crash", &Checker::new().report());
/// assert!(summary.is_safe());
/// println!("{summary}");
/// ```
#[derive(Clone, Debug, Default)]
pub struct Summary {
    rows: Vec<Row>,
}

/// One scenario's line in a [`Summary`].
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Row {
    /// The scenario's name.
    pub scenario: String,
    /// Runs (seeds) gathered.
    pub runs: usize,
    /// Faults injected, over all runs.
    pub faults: usize,
    /// Terms of leadership, over all runs.
    pub intervals: usize,
    /// Overlapping pairs of terms (must be 0).
    pub overlaps: usize,
    /// Terms whose fencing token did not grow (must be 0).
    pub fencing_regressions: usize,
    /// Terms whose work noticed the loss after its validity ran out (stalled leaders).
    pub noticed_late: usize,
    /// Total observed time.
    pub window: Duration,
    /// Total time with a leader.
    pub led: Duration,
    /// The longest leaderless gap of any run.
    pub worst_gap: Duration,
}

impl Row {
    /// Share of the observed time with a leader, from 0 to 1.
    pub fn leader_share(&self) -> f64 {
        if self.window.is_zero() {
            return 0.0;
        }
        self.led.as_secs_f64() / self.window.as_secs_f64()
    }
}

impl Summary {
    /// Adds one run of `scenario`.
    pub fn add(&mut self, scenario: &str, report: &Report) {
        let row = match self.rows.iter_mut().position(|r| r.scenario == scenario) {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    scenario: scenario.to_owned(),
                    ..Row::default()
                });
                self.rows.last_mut().expect("just pushed")
            }
        };
        row.runs += 1;
        row.faults += report.faults;
        row.intervals += report.intervals;
        row.overlaps += report.overlaps();
        row.fencing_regressions += report.fencing_regressions();
        row.noticed_late += report.noticed_late;
        row.window += report.window;
        row.led += report.led;
        row.worst_gap = row.worst_gap.max(report.worst_gap);
    }

    /// Adds every row of `other`.
    pub fn merge(&mut self, other: &Summary) {
        for r in &other.rows {
            match self.rows.iter_mut().find(|m| m.scenario == r.scenario) {
                Some(m) => {
                    m.runs += r.runs;
                    m.faults += r.faults;
                    m.intervals += r.intervals;
                    m.overlaps += r.overlaps;
                    m.fencing_regressions += r.fencing_regressions;
                    m.noticed_late += r.noticed_late;
                    m.window += r.window;
                    m.led += r.led;
                    m.worst_gap = m.worst_gap.max(r.worst_gap);
                }
                None => self.rows.push(r.clone()),
            }
        }
    }

    /// The rows, one per scenario, in the order scenarios were first added.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Orders the rows by `key` (stable: equal keys keep their order).
    pub fn sort_by_key<K: Ord>(&mut self, key: impl FnMut(&Row) -> K) {
        self.rows.sort_by_key(key);
    }

    /// True when no run of any scenario had a violation.
    pub fn is_safe(&self) -> bool {
        self.rows
            .iter()
            .all(|r| r.overlaps == 0 && r.fencing_regressions == 0)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|r| r.scenario.len())
            .chain([8])
            .max()
            .unwrap_or(8);
        writeln!(
            f,
            "{:<width$} {:>5} {:>6} {:>9} {:>8} {:>10} {:>7} {:>8} {:>11}",
            "scenario",
            "runs",
            "faults",
            "intervals",
            "overlaps",
            "fencing-",
            "late",
            "led",
            "worst gap"
        )?;
        writeln!(
            f,
            "{:<width$} {:>5} {:>6} {:>9} {:>8} {:>10} {:>7} {:>8} {:>11}",
            "", "", "", "", "", "regress.", "notice", "share", ""
        )?;
        let mut total = Row::default();
        for r in &self.rows {
            writeln!(
                f,
                "{:<width$} {:>5} {:>6} {:>9} {:>8} {:>10} {:>7} {:>7.2}% {:>10.3}s",
                r.scenario,
                r.runs,
                r.faults,
                r.intervals,
                r.overlaps,
                r.fencing_regressions,
                r.noticed_late,
                r.leader_share() * 100.0,
                r.worst_gap.as_secs_f64()
            )?;
            total.runs += r.runs;
            total.faults += r.faults;
            total.intervals += r.intervals;
            total.overlaps += r.overlaps;
            total.fencing_regressions += r.fencing_regressions;
            total.noticed_late += r.noticed_late;
        }
        write!(
            f,
            "{:<width$} {:>5} {:>6} {:>9} {:>8} {:>10} {:>7}",
            "total",
            total.runs,
            total.faults,
            total.intervals,
            total.overlaps,
            total.fencing_regressions,
            total.noticed_late
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(id: &str, token: u64, start: u64, end: Option<u64>) -> Interval {
        let base = Instant::now();
        Interval {
            identity: id.into(),
            fencing_token: token,
            start: base + Duration::from_secs(start),
            end: end.map(|e| base + Duration::from_secs(e)),
            noticed: end.map(|e| base + Duration::from_secs(e)),
        }
    }

    fn checker_with(terms: &[Interval]) -> Checker {
        let c = Checker::new();
        for t in terms {
            c.record(t.clone());
        }
        c
    }

    #[tokio::test(start_paused = true)]
    async fn disjoint_terms_with_growing_tokens_are_safe() {
        let c = checker_with(&[
            term("a", 1, 0, Some(10)),
            term("b", 5, 10, Some(20)),
            term("a", 9, 25, None),
        ]);
        tokio::time::advance(Duration::from_secs(30)).await;
        let r = c.report();
        assert!(r.is_safe(), "{}", r.explain());
        assert_eq!(r.intervals, 3);
        assert_eq!(r.worst_gap, Duration::from_secs(5));
        assert_eq!(r.led, Duration::from_secs(25));
    }

    #[tokio::test(start_paused = true)]
    async fn overlap_is_found_even_behind_a_short_term() {
        // a runs 0..30; b (5..10) and c (12..20) both begin while a still leads.
        let c = checker_with(&[
            term("a", 1, 0, Some(30)),
            term("b", 2, 5, Some(10)),
            term("c", 3, 12, Some(20)),
        ]);
        let r = c.report();
        assert_eq!(r.overlaps(), 2, "{}", r.explain());
        assert_eq!(r.fencing_regressions(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn open_term_overlaps_any_later_term() {
        let c = checker_with(&[term("a", 1, 0, None), term("b", 2, 100, Some(101))]);
        assert_eq!(c.report().overlaps(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fencing_token_must_exceed_every_earlier_one() {
        let c = checker_with(&[
            term("a", 7, 0, Some(1)),
            term("b", 3, 2, Some(3)),
            term("c", 7, 4, Some(5)),
            term("d", 8, 6, Some(7)),
        ]);
        let r = c.report();
        assert_eq!(r.fencing_regressions(), 2, "{}", r.explain());
        assert_eq!(r.overlaps(), 0);
        let mut s = Summary::default();
        s.add("x", &r);
        assert!(!s.is_safe());
        assert!(s.to_string().contains('x'));
    }

    #[tokio::test(start_paused = true)]
    async fn touching_terms_do_not_overlap() {
        let c = checker_with(&[term("a", 1, 0, Some(10)), term("b", 2, 10, Some(20))]);
        assert!(c.report().is_safe());
    }

    #[tokio::test]
    async fn wire_format_round_trips_across_the_monotonic_clock() {
        let start = Instant::now();
        let t = Interval {
            identity: "node a".into(),
            fencing_token: 42,
            start,
            end: Some(start + Duration::from_millis(1500)),
            noticed: None,
        };
        let back = Interval::from_wire(&t.to_wire()).unwrap();
        assert_eq!(back.identity, "node a");
        assert_eq!(back.fencing_token, 42);
        let drift = if back.start > t.start {
            back.start - t.start
        } else {
            t.start - back.start
        };
        assert!(drift < Duration::from_millis(5), "{drift:?}");
        assert!(Interval::from_wire("{not json").is_err());
    }
}
