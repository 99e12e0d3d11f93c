//! A term being recorded in this process.

use tokio::time::Instant;

use super::Checker;
use crate::fenced::{next_seq, Refused};
use leaderelection::Leadership;

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
    /// The term recorded as `checker`'s interval `index`.
    pub(super) fn new(checker: Checker, index: usize, leadership: Leadership) -> Self {
        Self {
            checker,
            index,
            leadership,
            ended: false,
        }
    }

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
