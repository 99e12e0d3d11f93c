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
//!
//! The checker is split by concern: [`Interval`] (a term as recorded), [`Line`] (the
//! protocol of terms in another process), [`Term`] (a term being recorded here),
//! [`Checker`] (the record), [`Report`] (the judging) and [`Summary`] (the table).
//!
//! # Examples
//!
//! Terms reported by other processes, one of which starts while another still works:
//!
//! ```
//! use leaderelection_testkit::checker::{Checker, Line, Violation};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let checker = Checker::new();
//! for line in ["BEGIN 1 a", "ACT 1 a", "END 1 a", "BEGIN 2 b", "ACT 2 b"] {
//!     checker.receive(&line.parse::<Line>()?);
//! }
//! assert!(checker.report().is_safe());
//!
//! // c begins while b's work still runs: two leaders at once.
//! checker.receive(&"BEGIN 3 c".parse::<Line>()?);
//! checker.close();
//! let report = checker.report();
//! assert_eq!(report.overlaps(), 1);
//! assert!(matches!(report.violations[0], Violation::Overlap { .. }));
//! # Ok(()) }
//! ```

#[cfg(doc)]
use crate::fenced::FencedStore;
#[cfg(doc)]
use leaderelection::Leadership;

mod interval;
mod line;
mod record;
mod report;
mod summary;
mod term;

pub use interval::{Interval, LATE_AFTER};
pub use line::{InvalidLine, Line};
pub(crate) use record::act_while_valid_with;
pub use record::Checker;
pub use report::{Report, Takeover, Violation};
pub use summary::{Row, Summary};
pub use term::Term;
