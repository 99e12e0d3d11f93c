//! The checker: what each term's work did, recorded as it happens.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

#[cfg(doc)]
use super::Report;
use super::{Interval, Line, Term};
use crate::fenced::{next_seq, FencedStore};
use leaderelection::Leadership;

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
    pub(super) inner: Arc<Mutex<State>>,
    pub(super) store: FencedStore,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) opened: Instant,
    pub(super) closed: Option<Instant>,
    pub(super) intervals: Vec<Interval>,
    pub(super) faults: Vec<(Instant, String)>,
    /// Writes (by sequence number) made after the writer's `valid_until`.
    pub(super) late_writes: Vec<(u64, Instant)>,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

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

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
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
        Term::new(self.clone(), index, leadership.clone())
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
        act_while_valid_with(&leadership, every, || term.act().is_ok()).await;
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
    ///
    /// A `BEGIN` or `ACT` that carries its [remaining validity](Line::valid_for) sets
    /// the term's [`valid_until`](Interval::valid_until) to now plus that; an `ACT`
    /// with none left that the store accepted is an [acted after
    /// validity](super::Violation::ActedAfterValidity).
    pub fn receive(&self, line: &Line) -> bool {
        let now = Instant::now();
        let valid_until = line.valid_for().map(|v| now + v);
        match line {
            Line::Begin {
                token, identity, ..
            } => {
                let mut interval = Interval::new(identity.clone(), *token, now);
                interval.valid_until = valid_until;
                self.record(interval);
                true
            }
            Line::Act {
                token, identity, ..
            } => {
                let (seq, result) = self.store.logged_write(identity, *token, now);
                if let Some(valid_until) = valid_until {
                    let mut state = self.state();
                    // The term's latest interval: a line after its END still counts.
                    if let Some(i) = state
                        .intervals
                        .iter_mut()
                        .rev()
                        .find(|i| i.identity == *identity && i.fencing_token == *token)
                    {
                        i.valid_until = Some(valid_until);
                    }
                    if now >= valid_until {
                        state.late_writes.push((seq, valid_until));
                    }
                }
                result.is_ok()
            }
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

    pub(super) fn end_open(&self, which: impl Fn(&Interval) -> bool, at: Instant) {
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
}

/// The loop of [`Checker::act_while_valid`] and its twin in a child process: `act` at
/// once and then every `every` while valid, wait while not, stop when leadership is
/// lost or `act` returns false.
pub(crate) async fn act_while_valid_with(
    leadership: &Leadership,
    every: Duration,
    mut act: impl FnMut() -> bool,
) {
    while !leadership.is_lost() {
        let now = Instant::now();
        let next = if leadership.is_valid() {
            if !act() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test(start_paused = true)]
    async fn a_child_act_with_no_validity_left_acted_after_its_validity() {
        let c = Checker::new();
        c.receive(&"BEGIN 3 p1 valid_for=2000".parse().unwrap());
        c.receive(&"ACT 3 p1 valid_for=1500".parse().unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(c.report().is_safe());
        // The child's own clock says its validity ran out, and it still wrote.
        assert!(c.receive(&"ACT 3 p1 valid_for=0".parse().unwrap()));
        let r = c.report();
        assert_eq!(r.bad_writes(), 1, "{}", r.explain());
        assert!(matches!(
            r.violations[0],
            crate::checker::Violation::ActedAfterValidity { .. }
        ));
        // A line without the validity is not judged by it.
        let c = Checker::new();
        c.receive(&"BEGIN 3 p1".parse().unwrap());
        c.receive(&"ACT 3 p1".parse().unwrap());
        assert!(c.report().is_safe());
        assert_eq!(c.intervals()[0].valid_until, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_term_ending_long_after_its_validity_was_noticed_late() {
        let c = Checker::new();
        c.receive(&"BEGIN 3 p1 valid_for=1000".parse().unwrap());
        tokio::time::advance(Duration::from_millis(500)).await;
        c.receive(&"ACT 3 p1 valid_for=1000".parse().unwrap());
        let renewed = Instant::now() + Duration::from_secs(1);
        assert_eq!(c.intervals()[0].valid_until, Some(renewed));
        tokio::time::advance(Duration::from_secs(5)).await;
        c.receive(&"END 3 p1".parse().unwrap());
        let r = c.report();
        assert!(r.is_safe(), "{}", r.explain());
        assert_eq!(r.noticed_late, 1);
    }
}
