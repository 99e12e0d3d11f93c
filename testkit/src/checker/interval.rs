//! A term of leadership as the checker records it.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

#[cfg(doc)]
use super::Checker;
use crate::fenced::next_seq;
#[cfg(doc)]
use leaderelection::Leadership;

/// How long after its validity ended a term's work may stop before it counts as
/// [noticed late](Interval::noticed_late). On the real clock the elector fires `lost`
/// a timer tick after `valid_until`; only a stall takes longer than this.
pub const LATE_AFTER: Duration = Duration::from_millis(250);

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
    /// The term's last [`Leadership::valid_until`] as its work saw it. For a term in
    /// another process, whose clock is not this one: the arrival of its last line that
    /// carried its [remaining validity](super::Line::valid_for), plus that; `None`
    /// when no line did.
    pub valid_until: Option<Instant>,
    /// True when the test stalled the leader during the term ([`Checker::stalled`]):
    /// the term is then judged by its accepted writes only.
    pub stalled: bool,
    /// True when the test asked the leader to step down gracefully
    /// ([`Checker::stepping_down`]): it releases the lease after its work stopped, so
    /// the next term may follow at once.
    pub handed_over: bool,
    pub(super) start_seq: u64,
    pub(super) end_seq: u64,
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
