//! Samples, quantiles and the printed table.

use std::fmt::Write as _;
use std::time::Duration;

/// Durations measured over repetitions.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    values: Vec<f64>,
}

impl Samples {
    /// No sample yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.values.push(d.as_secs_f64());
    }

    /// Signed samples (seconds), for figures that can be negative.
    pub fn push_secs(&mut self, s: f64) {
        self.values.push(s);
    }

    /// The samples in seconds, in the order taken.
    #[allow(dead_code)]
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Forgets the first sample (a warm-up).
    pub fn drop_first(&mut self) {
        if !self.values.is_empty() {
            self.values.remove(0);
        }
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Nearest-rank quantile, `q` in 0..=1; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }

    /// The median, in seconds.
    pub fn p50(&self) -> Option<f64> {
        self.quantile(0.5)
    }

    /// The 99th percentile, in seconds.
    pub fn p99(&self) -> Option<f64> {
        self.quantile(0.99)
    }
}

/// A duration in seconds, printed with a unit that suits it.
pub fn fmt_secs(s: f64) -> String {
    let a = s.abs();
    if a >= 10.0 {
        format!("{s:.1} s")
    } else if a >= 1.0 {
        format!("{s:.2} s")
    } else if a >= 0.01 {
        format!("{:.1} ms", s * 1e3)
    } else if a >= 0.001 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

/// Seconds as [`fmt_secs`] prints them, or a dash for none.
pub fn fmt_opt_secs(s: Option<f64>) -> String {
    s.map_or_else(|| "–".to_string(), fmt_secs)
}

/// `peer / ours`, printed as a factor.
pub fn ratio(peer: Option<f64>, ours: Option<f64>) -> String {
    match (peer, ours) {
        (Some(p), Some(o)) if o.abs() > f64::EPSILON => {
            let r = p / o;
            if r.abs() >= 100.0 {
                format!("{r:.0}×")
            } else if r.abs() >= 10.0 {
                format!("{r:.1}×")
            } else {
                format!("{r:.2}×")
            }
        }
        (Some(p), Some(_)) if p.abs() > f64::EPSILON => "∞".to_string(),
        (Some(_), Some(_)) => "1×".to_string(),
        _ => "–".to_string(),
    }
}

/// A Markdown table built row by row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of cells.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table in Markdown.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", self.header.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            self.header.iter().map(|_| " --- |").collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out
    }
}

/// A rate per minute.
#[allow(dead_code)]
pub fn fmt_rate(per_min: f64) -> String {
    if per_min >= 10.0 {
        format!("{per_min:.0}")
    } else {
        format!("{per_min:.1}")
    }
}
