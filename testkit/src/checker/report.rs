//! Judging the record: violations, takeovers and the share of time led.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::{Checker, Interval};
use crate::fenced::Write;

/// An instant with its place among events at that instant.
type At = (Instant, u64);

impl Checker {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Summary;

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
}
