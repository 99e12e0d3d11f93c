//! Reports of many runs, as the table a fault suite prints.

use std::fmt;
use std::time::Duration;

use super::Report;

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
