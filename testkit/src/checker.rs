//! A safety checker for elections under test: it judges what each leader's work did,
//! not what the elector claimed.
//!
//! Every elector under test hands each [`Leadership`] it is given to the same
//! [`Checker`]. The leader's work records its term with [`Checker::begin`] and acts
//! through [`Term::act`]: a write, with the term's fencing token, to the checker's
//! [`FencedStore`], which refuses a token lower than one it has accepted and logs
//! every attempt. Work in another process reports the same events as [`Line`]s,
//! stamped by [`Checker::receive`] on arrival with the checking process's own clock.
//!
//! A term runs from [`Leadership::acquired_at`] until its work actually stopped: the
//! work's future finished or was dropped (or, for another process, its `END` line,
//! its last action, or its kill). [`Checker::report`] then finds every [`Violation`]:
//!
//! - **overlap**: a term began before an earlier term's work stopped;
//! - **acted after validity**: a write the store accepted, made when the term's own
//!   [`Leadership::valid_until`] had passed;
//! - **stale token accepted**: the store accepted a write whose token is lower than
//!   that of a term that had already begun;
//! - **fencing regression**: a term whose token is not greater than every earlier one.
//!
//! A term the test [stalled](Checker::stalled) (a process under SIGSTOP, a task no
//! longer polled) is judged by its accepted writes only: a stalled leader whose late
//! writes the store refused is fenced, not two leaders, and is counted in
//! [`Report::refused`]. The report also measures, per takeover, the margin between the
//! old term's last activity and the new term's first write, the share of the observed
//! window during which someone led and the worst leaderless gap. A [`Summary`]
//! gathers reports across runs and scenarios into the table a fault suite prints.
//!
//! Instants are on tokio's clock, so paused-clock tests work too. Events at one
//! instant (common under a paused clock) keep the order in which they happened.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::fenced::{next_seq, FencedStore, Refused, Write};
use leaderelection::Leadership;

/// How long after its validity ended a term's work may stop before it counts as
/// [noticed late](Interval::noticed_late). On the real clock the elector fires `lost`
/// a timer tick after `valid_until`; only a stall takes longer than this.
pub const LATE_AFTER: Duration = Duration::from_millis(250);

/// The record of one election's leadership terms and of what their work did, shared
/// by every elector under test.
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
///         elector
///             .run(shutdown, move |leadership| {
///                 // Write to the fenced store every second while valid.
///                 checker.clone().act_while_valid(leadership, Duration::from_secs(1))
///             })
///             .await
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
/// assert!(report.actions >= 59);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Checker {
    inner: Arc<Mutex<State>>,
    store: FencedStore,
}

#[derive(Debug)]
struct State {
    opened: Instant,
    closed: Option<Instant>,
    intervals: Vec<Interval>,
    faults: Vec<(Instant, String)>,
    /// Writes (by sequence number) made after the writer's `valid_until`.
    late_writes: Vec<(u64, Instant)>,
}

/// One term of leadership: when it began and when its work stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Interval {
    /// The leader's identity.
    pub identity: String,
    /// The term's fencing token.
    pub fencing_token: u64,
    /// When the term began: [`Leadership::acquired_at`], the moment the acquiring
    /// write was sent (for another process, when its `BEGIN` line arrived).
    pub start: Instant,
    /// When the work stopped: its future finished or was dropped. `None` while it runs.
    pub end: Option<Instant>,
    /// The term's last [`Leadership::valid_until`] as its work saw it; `None` when the
    /// term ran in another process, whose clock is not this one.
    pub valid_until: Option<Instant>,
    /// True when the test stalled the leader during the term ([`Checker::stalled`]):
    /// the term is then judged by its accepted writes only.
    pub stalled: bool,
    /// True when the test asked the leader to step down gracefully
    /// ([`Checker::stepping_down`]): it releases the lease after its work stopped, so
    /// the next term may follow at once.
    pub handed_over: bool,
    start_seq: u64,
    end_seq: u64,
}

impl Interval {
    /// A term that began at `start` and still runs, as a test reports one by hand.
    pub fn new(identity: impl Into<String>, fencing_token: u64, start: Instant) -> Self {
        Self {
            identity: identity.into(),
            fencing_token,
            start,
            end: None,
            valid_until: None,
            stalled: false,
            handed_over: false,
            start_seq: next_seq(),
            end_seq: 0,
        }
    }

    /// The same term, ended at `end`.
    #[must_use]
    pub fn ended(mut self, end: Instant) -> Self {
        self.end = Some(end);
        self.end_seq = next_seq();
        self
    }

    /// True when the work stopped more than [`LATE_AFTER`] after the term had stopped
    /// being valid: it was stalled (a paused process, a starved runtime).
    pub fn noticed_late(&self) -> bool {
        matches!((self.valid_until, self.end), (Some(v), Some(e)) if e > v + LATE_AFTER)
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
        if self.stalled {
            write!(f, ", stalled")?;
        }
        match self.end {
            Some(end) => write!(
                f,
                ", worked {:?})",
                end.saturating_duration_since(self.start)
            ),
            None => write!(f, ", still working)"),
        }
    }
}

/// One event of a term in another process, as a line of text on its stdout:
/// `BEGIN <token> <identity>`, `ACT <token> <identity>` (a write to the fenced store)
/// or `END <token> <identity>`. The checking process stamps each line when it arrives
/// ([`Checker::receive`]), so every term is on one clock even when the reporting
/// process's clocks are faked.
///
/// # Examples
///
/// ```
/// use leaderelection_testkit::checker::Line;
///
/// let line: Line = "ACT 42 node a".parse().unwrap();
/// assert_eq!(line, Line::Act { token: 42, identity: "node a".into() });
/// assert_eq!(line.to_string(), "ACT 42 node a");
/// assert!("hello".parse::<Line>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// The term's work started.
    Begin {
        /// The term's fencing token.
        token: u64,
        /// The leader's identity.
        identity: String,
    },
    /// The term's work wrote to the fenced store.
    Act {
        /// The term's fencing token.
        token: u64,
        /// The leader's identity.
        identity: String,
    },
    /// The term's work stopped.
    End {
        /// The term's fencing token.
        token: u64,
        /// The leader's identity.
        identity: String,
    },
}

impl Line {
    /// The line for `kind` (`BEGIN`, `ACT` or `END`) of `leadership`'s term.
    fn of(kind: fn(u64, String) -> Line, leadership: &Leadership) -> Line {
        kind(leadership.fencing_token(), leadership.identity().to_owned())
    }

    /// `BEGIN` for `leadership`'s term.
    pub fn begin(leadership: &Leadership) -> Line {
        Self::of(
            |token, identity| Line::Begin { token, identity },
            leadership,
        )
    }

    /// `ACT` for `leadership`'s term.
    pub fn act(leadership: &Leadership) -> Line {
        Self::of(|token, identity| Line::Act { token, identity }, leadership)
    }

    /// `END` for `leadership`'s term.
    pub fn end(leadership: &Leadership) -> Line {
        Self::of(|token, identity| Line::End { token, identity }, leadership)
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, token, identity) = match self {
            Line::Begin { token, identity } => ("BEGIN", token, identity),
            Line::Act { token, identity } => ("ACT", token, identity),
            Line::End { token, identity } => ("END", token, identity),
        };
        write!(f, "{kind} {token} {identity}")
    }
}

/// A line that is not a [`Line`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a term event (expected `BEGIN|ACT|END <token> <identity>`): {0:.80}")]
pub struct InvalidLine(String);

impl FromStr for Line {
    type Err = InvalidLine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidLine(s.to_owned());
        let mut parts = s.trim().splitn(3, ' ');
        let kind = parts.next().ok_or_else(bad)?;
        let token = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let identity = parts.next().ok_or_else(bad)?.to_owned();
        match kind {
            "BEGIN" => Ok(Line::Begin { token, identity }),
            "ACT" => Ok(Line::Act { token, identity }),
            "END" => Ok(Line::End { token, identity }),
            _ => Err(bad()),
        }
    }
}

/// One term being recorded: its work acts through [`act`](Self::act); it ends when
/// [`end`](Self::end) is called or when dropped (a crashed process's work is dropped
/// mid-term).
#[derive(Debug)]
pub struct Term {
    checker: Checker,
    index: usize,
    leadership: Leadership,
    ended: bool,
}

impl Term {
    /// One action of the work: a write to the checker's fenced store with the term's
    /// fencing token, now.
    ///
    /// # Errors
    ///
    /// [`Refused`] when a later term wrote first: the work should stop.
    pub fn act(&self) -> Result<(), Refused> {
        let now = Instant::now();
        let valid_until = self.leadership.valid_until();
        let (seq, result) = self.checker.store.logged_write(
            self.leadership.identity(),
            self.leadership.fencing_token(),
            now,
        );
        let mut state = self.checker.state();
        state.intervals[self.index].valid_until = Some(valid_until);
        if now >= valid_until {
            state.late_writes.push((seq, valid_until));
        }
        result
    }

    /// The leadership this term records.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Ends the term now: the work stopped.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let now = Instant::now();
        let valid_until = self.leadership.valid_until();
        let mut state = self.checker.state();
        let interval = &mut state.intervals[self.index];
        interval.end = Some(now);
        interval.end_seq = next_seq();
        interval.valid_until = Some(valid_until);
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

/// An instant with its place among events at that instant.
type At = (Instant, u64);

impl Checker {
    /// A checker whose observed window opens now, with an empty fenced store.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                opened: Instant::now(),
                closed: None,
                intervals: Vec::new(),
                faults: Vec::new(),
                late_writes: Vec::new(),
            })),
            store: FencedStore::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread cannot leave an interval half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fenced store the terms' work writes to.
    pub fn store(&self) -> &FencedStore {
        &self.store
    }

    /// Starts recording the term `leadership` stands for.
    pub fn begin(&self, leadership: &Leadership) -> Term {
        let index = {
            let mut state = self.state();
            let mut interval = Interval::new(
                leadership.identity(),
                leadership.fencing_token(),
                leadership.acquired_at(),
            );
            interval.valid_until = Some(leadership.valid_until());
            state.intervals.push(interval);
            state.intervals.len() - 1
        };
        Term {
            checker: self.clone(),
            index,
            leadership: leadership.clone(),
            ended: false,
        }
    }

    /// A leader's work that records the term and does nothing until leadership is
    /// lost: for tests that check who led, not what the work did.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future ends the term at that moment, as a crash would.
    pub async fn hold(self, leadership: Leadership) {
        let term = self.begin(&leadership);
        leadership.lost().await;
        term.end();
    }

    /// A leader's work that writes to the fenced store at once and then every `every`
    /// while [`Leadership::is_valid`] holds, waits while its validity has run out (a
    /// renewal may yet succeed), and stops when leadership is lost or a write is refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future ends the term at that moment, as a crash would.
    pub async fn act_while_valid(self, leadership: Leadership, every: Duration) {
        let term = self.begin(&leadership);
        while !leadership.is_lost() {
            let now = Instant::now();
            let next = if leadership.is_valid() {
                if term.act().is_err() {
                    break;
                }
                (now + every).min(leadership.valid_until())
            } else {
                now + every
            };
            tokio::select! {
                _ = leadership.lost() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
        term.end();
    }

    /// Marks the terms `identity` is leading now as stalled: the test stopped the
    /// process or task. A stalled term is judged by its accepted writes only.
    pub fn stalled(&self, identity: &str) {
        for i in &mut self.state().intervals {
            if i.identity == identity && i.end.is_none() {
                i.stalled = true;
            }
        }
    }

    /// Marks the terms `identity` is leading now as handed over: the test shuts the
    /// leader down gracefully, and it releases the lease once its work stopped. The
    /// takeover that follows is left out of [`Report::min_margin`].
    pub fn stepping_down(&self, identity: &str) {
        for i in &mut self.state().intervals {
            if i.identity == identity && i.end.is_none() {
                i.handed_over = true;
            }
        }
    }

    /// Takes a line reported by another process, stamped now: `BEGIN` starts a term,
    /// `ACT` writes to the fenced store, `END` ends the term. Returns whether an `ACT`
    /// was accepted (true for other lines).
    pub fn receive(&self, line: &Line) -> bool {
        let now = Instant::now();
        match line {
            Line::Begin { token, identity } => {
                self.record(Interval::new(identity.clone(), *token, now));
                true
            }
            Line::Act { token, identity } => self.store.write_at(identity, *token, now).is_ok(),
            Line::End { token, identity } => {
                self.end_open(
                    |i| i.identity == *identity && i.fencing_token == *token,
                    now,
                );
                true
            }
        }
    }

    /// Ends now every open term of `identity`: its process was killed.
    pub fn killed(&self, identity: &str) {
        self.end_open(|i| i.identity == identity, Instant::now());
    }

    fn end_open(&self, which: impl Fn(&Interval) -> bool, at: Instant) {
        for i in &mut self.state().intervals {
            if i.end.is_none() && which(i) {
                i.end = Some(at);
                i.end_seq = next_seq();
            }
        }
    }

    /// Adds a term recorded elsewhere.
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

    /// Checks every term against every other and against the fenced store's log, and
    /// measures the window.
    ///
    /// A term's work runs from its start until its work stopped; a stalled term's,
    /// until its last accepted write (or its start). Two terms overlap when one begins
    /// before another's work stopped (a term still working overlaps every term that
    /// begins after it).
    pub fn report(&self) -> Report {
        let writes = self.store.writes();
        let state = self.state();
        let closed = state.closed.unwrap_or_else(Instant::now);
        let mut terms = state.intervals.clone();
        terms.sort_by_key(|t| (t.start, t.start_seq, t.fencing_token));
        let of = |t: &Interval| -> Vec<&Write> {
            writes
                .iter()
                .filter(|w| w.identity == t.identity && w.token == t.fencing_token)
                .collect()
        };
        // When each term's work stopped, as far as its acts tell; None: still working.
        let stop: Vec<Option<At>> = terms
            .iter()
            .map(|t| {
                if t.stalled {
                    let last = of(t)
                        .into_iter()
                        .filter(|w| w.accepted)
                        .map(|w| (w.at, w.seq))
                        .max();
                    Some(last.unwrap_or((t.start, t.start_seq)))
                } else {
                    let acts = of(t).into_iter().map(|w| (w.at, w.seq)).max();
                    t.end
                        .map(|e| (e, t.end_seq))
                        .map(|e| acts.map_or(e, |a| a.max(e)))
                }
            })
            .collect();
        let first_act: Vec<Option<Instant>> =
            terms.iter().map(|t| of(t).first().map(|w| w.at)).collect();

        let mut violations = Vec::new();
        // The term whose work stops last among those seen, and the greatest token.
        let mut last_stopping: Option<usize> = None;
        let mut greatest: Option<usize> = None;
        let mut takeovers = Vec::new();
        for (i, t) in terms.iter().enumerate() {
            let began = (t.start, t.start_seq);
            if let Some(p) = last_stopping {
                match stop[p] {
                    Some(s) if s <= began => takeovers.push(Takeover {
                        from: terms[p].clone(),
                        to: t.clone(),
                        margin: first_act[i]
                            .unwrap_or(t.start)
                            .saturating_duration_since(s.0),
                    }),
                    _ => violations.push(Violation::Overlap {
                        first: terms[p].clone(),
                        second: t.clone(),
                    }),
                }
            }
            if let Some(g) = greatest {
                if t.fencing_token <= terms[g].fencing_token {
                    violations.push(Violation::FencingRegression {
                        earlier: terms[g].clone(),
                        later: t.clone(),
                    });
                }
            }
            let later = |a: Option<At>, b: Option<At>| match (a, b) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a > b,
            };
            if last_stopping.is_none_or(|p| stop[p].is_some() && later(stop[i], stop[p])) {
                last_stopping = Some(i);
            }
            if greatest.is_none_or(|g| t.fencing_token > terms[g].fencing_token) {
                greatest = Some(i);
            }
        }

        // Accepted writes after the writer's validity, and accepted stale tokens.
        for (seq, valid_until) in &state.late_writes {
            if let Some(w) = writes.iter().find(|w| w.seq == *seq && w.accepted) {
                violations.push(Violation::ActedAfterValidity {
                    write: w.clone(),
                    valid_until: *valid_until,
                });
            }
        }
        for w in writes.iter().filter(|w| w.accepted) {
            let newer = terms
                .iter()
                .filter(|t| t.fencing_token > w.token && (t.start, t.start_seq) < (w.at, w.seq))
                .max_by_key(|t| t.fencing_token);
            if let Some(t) = newer {
                violations.push(Violation::StaleTokenAccepted {
                    write: w.clone(),
                    newer: t.clone(),
                });
            }
        }

        // Coverage: the union of the terms' work, clipped to the window.
        let opened = state.opened;
        let window = closed.saturating_duration_since(opened);
        let mut led = Duration::ZERO;
        let mut worst_gap = Duration::ZERO;
        let mut covered_to = opened;
        for (t, s) in terms.iter().zip(&stop) {
            let start = t.start.clamp(opened, closed);
            let end = s.map_or(closed, |s| s.0).clamp(opened, closed);
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
            stalled: terms.iter().filter(|t| t.stalled).count(),
            actions: writes.len(),
            refused: writes.iter().filter(|w| !w.accepted).count(),
            window,
            led,
            worst_gap,
            violations,
            takeovers,
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

/// A change of leader without overlap, found by [`Checker::report`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Takeover {
    /// The term whose work stopped.
    pub from: Interval,
    /// The term that began after it.
    pub to: Interval,
    /// From the old term's last activity (its work stopping or its last write, for a
    /// stalled term its last accepted write) to the new term's first write (its start
    /// if it never wrote). For a leader that stopped renewing, the election promises
    /// at least `lease_duration - renew_deadline` here.
    pub margin: Duration,
}

/// A breach of the election's safety found by [`Checker::report`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// `second` began before the work of `first` stopped: two leaders at once.
    Overlap {
        /// The term that began first.
        first: Interval,
        /// The term that began while the work of `first` still ran.
        second: Interval,
    },
    /// The store accepted `write`, made after its term's validity had run out.
    ActedAfterValidity {
        /// The write.
        write: Write,
        /// The writer's `valid_until` when it wrote.
        valid_until: Instant,
    },
    /// The store accepted `write`, whose token is lower than that of `newer`, a term
    /// that had already begun: fencing did not protect.
    StaleTokenAccepted {
        /// The write.
        write: Write,
        /// The newest term that had begun before it.
        newer: Interval,
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
                        ", {:?} before its work stopped",
                        end.saturating_duration_since(second.start)
                    )?;
                }
                Ok(())
            }
            Violation::ActedAfterValidity { write, valid_until } => write!(
                f,
                "{:.64} (fencing token {}) wrote {:?} after its validity ran out, and the store accepted it",
                write.identity,
                write.token,
                write.at.saturating_duration_since(*valid_until)
            ),
            Violation::StaleTokenAccepted { write, newer } => write!(
                f,
                "the store accepted fencing token {} from {:.64} {:?} after {newer} began",
                write.token,
                write.identity,
                write.at.saturating_duration_since(newer.start)
            ),
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
    /// Terms whose work stopped well after the term's validity ran out
    /// ([`Interval::noticed_late`]).
    pub noticed_late: usize,
    /// Terms the test stalled ([`Checker::stalled`]).
    pub stalled: usize,
    /// Writes to the fenced store, accepted or refused.
    pub actions: usize,
    /// Writes the fenced store refused: late writes of deposed leaders.
    pub refused: usize,
    /// Length of the observed window.
    pub window: Duration,
    /// Time within the window during which some replica's work ran.
    pub led: Duration,
    /// The longest stretch of the window without a leader.
    pub worst_gap: Duration,
    /// Every violation; empty when the run was safe.
    pub violations: Vec<Violation>,
    /// Every change of leader without overlap, in order.
    pub takeovers: Vec<Takeover>,
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
        self.count(|v| matches!(v, Violation::Overlap { .. }))
    }

    /// Number of terms whose fencing token did not grow.
    pub fn fencing_regressions(&self) -> usize {
        self.count(|v| matches!(v, Violation::FencingRegression { .. }))
    }

    /// Number of accepted writes made after validity, or with a stale token.
    pub fn bad_writes(&self) -> usize {
        self.count(|v| {
            matches!(
                v,
                Violation::ActedAfterValidity { .. } | Violation::StaleTokenAccepted { .. }
            )
        })
    }

    fn count(&self, f: impl Fn(&Violation) -> bool) -> usize {
        self.violations.iter().filter(|v| f(v)).count()
    }

    /// The smallest [takeover margin](Takeover::margin) between two identities after
    /// a term that was not [handed over](Interval::handed_over), if any. (A replica
    /// that finds its own identity in the record resumes at once, by design.)
    pub fn min_margin(&self) -> Option<Duration> {
        self.takeovers
            .iter()
            .filter(|t| !t.from.handed_over && t.from.identity != t.to.identity)
            .map(|t| t.margin)
            .min()
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
    /// Writes of the terms' work to the fenced store.
    pub actions: usize,
    /// Overlapping pairs of terms (must be 0).
    pub overlaps: usize,
    /// Accepted writes after validity or with a stale token (must be 0).
    pub bad_writes: usize,
    /// Terms whose fencing token did not grow (must be 0).
    pub fencing_regressions: usize,
    /// Terms the test stalled.
    pub stalled: usize,
    /// Terms whose work stopped well after its validity ran out.
    pub noticed_late: usize,
    /// Writes the fenced store refused (late writes of deposed leaders).
    pub refused: usize,
    /// Total observed time.
    pub window: Duration,
    /// Total time with a leader.
    pub led: Duration,
    /// The longest leaderless gap of any run.
    pub worst_gap: Duration,
    /// The smallest takeover margin of any run.
    pub min_margin: Option<Duration>,
}

impl Row {
    /// Share of the observed time with a leader, from 0 to 1.
    pub fn leader_share(&self) -> f64 {
        if self.window.is_zero() {
            return 0.0;
        }
        self.led.as_secs_f64() / self.window.as_secs_f64()
    }

    fn absorb(&mut self, r: &Row) {
        self.runs += r.runs;
        self.faults += r.faults;
        self.intervals += r.intervals;
        self.actions += r.actions;
        self.overlaps += r.overlaps;
        self.bad_writes += r.bad_writes;
        self.fencing_regressions += r.fencing_regressions;
        self.stalled += r.stalled;
        self.noticed_late += r.noticed_late;
        self.refused += r.refused;
        self.window += r.window;
        self.led += r.led;
        self.worst_gap = self.worst_gap.max(r.worst_gap);
        self.min_margin = match (self.min_margin, r.min_margin) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

impl Summary {
    /// Adds one run of `scenario`.
    pub fn add(&mut self, scenario: &str, report: &Report) {
        self.merge_row(Row {
            scenario: scenario.to_owned(),
            runs: 1,
            faults: report.faults,
            intervals: report.intervals,
            actions: report.actions,
            overlaps: report.overlaps(),
            bad_writes: report.bad_writes(),
            fencing_regressions: report.fencing_regressions(),
            stalled: report.stalled,
            noticed_late: report.noticed_late,
            refused: report.refused,
            window: report.window,
            led: report.led,
            worst_gap: report.worst_gap,
            min_margin: report.min_margin(),
        });
    }

    fn merge_row(&mut self, row: Row) {
        match self.rows.iter_mut().find(|m| m.scenario == row.scenario) {
            Some(m) => m.absorb(&row),
            None => self.rows.push(row),
        }
    }

    /// Adds every row of `other`.
    pub fn merge(&mut self, other: &Summary) {
        for r in &other.rows {
            self.merge_row(r.clone());
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
            .all(|r| r.overlaps == 0 && r.bad_writes == 0 && r.fencing_regressions == 0)
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
        let heads = [
            ("runs", ""),
            ("faults", ""),
            ("terms", ""),
            ("writes", ""),
            ("overlaps", ""),
            ("bad", "writes"),
            ("fencing", "regress."),
            ("stalled", ""),
            ("refused", "writes"),
            ("led", "share"),
            ("worst gap", ""),
            ("min", "margin"),
        ];
        for line in 0..2 {
            write!(f, "{:<width$}", if line == 0 { "scenario" } else { "" })?;
            for (a, b) in heads {
                write!(f, " {:>9}", if line == 0 { a } else { b })?;
            }
            writeln!(f)?;
        }
        let mut total = Row {
            scenario: "total".into(),
            ..Row::default()
        };
        let secs =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.3}s", d.as_secs_f64()));
        for r in &self.rows {
            writeln!(
                f,
                "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.2}% {:>9} {:>9}",
                r.scenario,
                r.runs,
                r.faults,
                r.intervals,
                r.actions,
                r.overlaps,
                r.bad_writes,
                r.fencing_regressions,
                r.stalled,
                r.refused,
                r.leader_share() * 100.0,
                secs(Some(r.worst_gap)),
                secs(r.min_margin),
            )?;
            total.absorb(r);
        }
        write!(
            f,
            "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "total",
            total.runs,
            total.faults,
            total.intervals,
            total.actions,
            total.overlaps,
            total.bad_writes,
            total.fencing_regressions,
            total.stalled,
            total.refused
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Instant {
        // One base for every test instant: the paused clock does not move meanwhile.
        thread_local!(static BASE: Instant = Instant::now());
        BASE.with(|b| *b + Duration::from_secs(s))
    }

    fn term(id: &str, token: u64, start: u64, end: Option<u64>) -> Interval {
        let t = Interval::new(id, token, at(start));
        match end {
            Some(e) => t.ended(at(e)),
            None => t,
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
        assert_eq!(r.takeovers.len(), 2);
        assert_eq!(r.min_margin(), Some(Duration::ZERO));
        let c = checker_with(&[term("a", 1, 0, None)]);
        c.stepping_down("a");
        c.end_open(|_| true, at(4));
        c.record(term("b", 2, 4, Some(5)));
        assert_eq!(c.report().min_margin(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn overlap_is_found_even_behind_a_short_term() {
        // a runs 0..30; b (5..10) and c (12..20) both begin while a still works.
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

    #[tokio::test(start_paused = true)]
    async fn a_write_after_the_end_extends_the_term() {
        // a reported its end at 10 but wrote at 12, after b began at 11.
        let c = checker_with(&[term("a", 1, 0, Some(10)), term("b", 2, 11, Some(20))]);
        c.store().write_at("a", 1, at(12)).unwrap();
        let r = c.report();
        assert_eq!(r.overlaps(), 1, "{}", r.explain());
        // The store had not seen b's token yet: a stale token accepted.
        assert_eq!(r.bad_writes(), 1, "{}", r.explain());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_term_whose_late_writes_were_refused_is_fenced() {
        let c = checker_with(&[term("a", 1, 0, None)]);
        c.store().write_at("a", 1, at(1)).unwrap();
        c.stalled("a");
        c.record(term("b", 2, 20, Some(30)));
        c.store().write_at("b", 2, at(20)).unwrap();
        // a resumes and writes once more before it learns that it lost.
        assert!(c.store().write_at("a", 1, at(25)).is_err());
        c.end_open(|i| i.identity == "a", at(25));
        let r = c.report();
        assert!(r.is_safe(), "{}", r.explain());
        assert_eq!((r.stalled, r.refused), (1, 1));
        assert_eq!(r.takeovers[0].margin, Duration::from_secs(19));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_term_whose_late_write_was_accepted_overlaps() {
        let c = checker_with(&[term("a", 1, 0, None)]);
        c.stalled("a");
        c.record(term("b", 2, 20, Some(30)));
        c.store().write_at("a", 1, at(21)).unwrap();
        c.store().write_at("b", 2, at(22)).unwrap();
        let r = c.report();
        assert_eq!((r.overlaps(), r.bad_writes()), (1, 1), "{}", r.explain());
    }

    #[tokio::test(start_paused = true)]
    async fn lines_from_another_process_are_stamped_on_arrival() {
        let c = Checker::new();
        for line in ["BEGIN 3 p1", "ACT 3 p1"] {
            assert!(c.receive(&line.parse().unwrap()));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        c.receive(&"END 3 p1".parse().unwrap());
        tokio::time::advance(Duration::from_secs(1)).await;
        c.receive(&"BEGIN 4 p2".parse().unwrap());
        c.receive(&"ACT 4 p2".parse().unwrap());
        c.killed("p2");
        let r = c.report();
        assert!(r.is_safe(), "{}", r.explain());
        assert_eq!(r.takeovers[0].margin, Duration::from_secs(1));
        // A write after its end, refused or not, from a term nobody stalled: the work
        // had not stopped, and the two terms overlap.
        assert!(!c.receive(&"ACT 3 p1".parse().unwrap()));
        let r = c.report();
        assert_eq!(
            (r.overlaps(), r.actions, r.refused),
            (1, 3, 1),
            "{}",
            r.explain()
        );
    }
}
