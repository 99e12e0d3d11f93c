//! A fenced store: the downstream system a leader's work writes to, which refuses a
//! write whose fencing token is lower than the highest it has seen.
//!
//! It is what `docs/safety.md` asks of every system a leader acts on, kept as small as
//! a test needs: one highest token, and a log of every write attempt (token, identity,
//! time, accepted or refused). The [`Checker`](crate::checker::Checker) owns one and
//! judges each term by the writes its work made there.
//!
//! # Examples
//!
//! ```
//! use leaderelection_testkit::fenced::FencedStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = FencedStore::new();
//! assert!(store.write("a", 5).is_ok());
//! assert!(store.write("b", 9).is_ok());
//! // A deposed leader's late write is refused.
//! let refused = store.write("a", 5).unwrap_err();
//! assert_eq!((refused.token, refused.highest), (5, 9));
//! assert_eq!(store.writes().len(), 3);
//! assert!(!store.writes()[2].accepted);
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

/// One write attempt, as the store logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Write {
    /// The writer's identity.
    pub identity: String,
    /// The fencing token the write carried.
    pub token: u64,
    /// When the write reached the store (tokio's clock).
    pub at: Instant,
    /// Order of arrival, to tell apart writes at one instant of a paused clock.
    pub seq: u64,
    /// True when the store applied it; false when it refused a lower token.
    pub accepted: bool,
}

/// A write refused by a [`FencedStore`]: its token is below one the store accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("write refused: fencing token {token} is lower than {highest}, already accepted from a later leader")]
#[non_exhaustive]
pub struct Refused {
    /// The token of the refused write.
    pub token: u64,
    /// The highest token the store had accepted.
    pub highest: u64,
}

/// A store that accepts a write only if its fencing token is at least the highest
/// accepted so far (equal tokens come from one term), and logs every attempt.
///
/// Cheap to clone; clones share the store.
#[derive(Clone, Debug, Default)]
pub struct FencedStore {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    highest: Option<u64>,
    writes: Vec<Write>,
}

/// One counter for every event the test kit orders (writes, term boundaries), so that
/// events at one instant of a paused clock keep the order in which they happened.
pub(crate) fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::SeqCst)
}

impl FencedStore {
    /// An empty store: it accepts any first token.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes now with `token` on behalf of `identity`.
    ///
    /// # Errors
    ///
    /// [`Refused`] when a write with a greater token was accepted before; the attempt
    /// is logged either way.
    pub fn write(&self, identity: &str, token: u64) -> Result<(), Refused> {
        self.write_at(identity, token, Instant::now())
    }

    /// Writes as of `at`: for writes reported by another process, stamped when the
    /// report arrived. Writes must be made in the order they reached the store.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_at(&self, identity: &str, token: u64, at: Instant) -> Result<(), Refused> {
        self.logged_write(identity, token, at).1
    }

    /// As [`write_at`](Self::write_at), with the write's sequence number.
    pub(crate) fn logged_write(
        &self,
        identity: &str,
        token: u64,
        at: Instant,
    ) -> (u64, Result<(), Refused>) {
        let mut state = self.state();
        let highest = state.highest;
        let accepted = highest.is_none_or(|h| token >= h);
        if accepted {
            state.highest = Some(token);
        }
        let seq = next_seq();
        state.writes.push(Write {
            identity: identity.to_owned(),
            token,
            at,
            seq,
            accepted,
        });
        let result = match highest {
            Some(h) if !accepted => Err(Refused { token, highest: h }),
            _ => Ok(()),
        };
        (seq, result)
    }

    /// The highest token accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.state().highest
    }

    /// Every write attempt so far, in order of arrival.
    pub fn writes(&self) -> Vec<Write> {
        self.state().writes.clone()
    }
}
