//! Leadership as a value: what a leader may act on, and until when.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// One term of leadership, handed to the work that runs while this replica leads.
///
/// Act only while [`is_valid`](Self::is_valid) holds, stop when [`lost`](Self::lost)
/// completes, and pass the [`fencing_token`](Self::fencing_token) to every system the
/// work writes to, so a deposed leader's late writes can be refused there.
///
/// The elector cancels the token when it stops renewing for any reason: a failed
/// renewal past the renew deadline, another holder found in the record, or shutdown.
/// It does so no later than [`valid_until`](Self::valid_until), which is before
/// any other replica can consider the lease expired (the margin is
/// `lease_duration - renew_deadline`, 5s by default).
///
/// # Examples
///
/// ```
/// use leaderelection::Leadership;
///
/// async fn schedule(leadership: Leadership) {
///     let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
///     loop {
///         tokio::select! {
///             _ = leadership.lost() => return,
///             _ = tick.tick() => {
///                 if !leadership.is_valid() { return; }
///                 println!("binding a pod with fencing token {}", leadership.fencing_token());
///             }
///         }
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Leadership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    identity: String,
    fencing_token: u64,
    acquired_at: Instant,
    lost: CancellationToken,
    valid_until: watch::Receiver<Instant>,
}

impl Leadership {
    pub(crate) fn new(
        identity: String,
        fencing_token: u64,
        acquired_at: Instant,
        lost: CancellationToken,
        valid_until: watch::Receiver<Instant>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                identity,
                fencing_token,
                acquired_at,
                lost,
                valid_until,
            }),
        }
    }

    /// This replica's identity, as written in `holderIdentity`.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// A number greater than that of every earlier leadership of this election (the
    /// backend's revision of the acquiring write, or `leaderTransitions`). Hand it to
    /// downstream systems and have them refuse writes with a smaller one.
    pub fn fencing_token(&self) -> u64 {
        self.inner.fencing_token
    }

    /// When this leadership began, on the local monotonic clock.
    pub fn acquired_at(&self) -> Instant {
        self.inner.acquired_at
    }

    /// The instant up to which acting is safe: the start of the last successful
    /// renewal plus the renew deadline. It moves forward with every renewal; the
    /// elector cancels [`lost`](Self::lost) by then if no renewal succeeds.
    pub fn valid_until(&self) -> Instant {
        *self.inner.valid_until.borrow()
    }

    /// True while leadership is neither lost nor past [`valid_until`](Self::valid_until).
    pub fn is_valid(&self) -> bool {
        !self.is_lost() && Instant::now() < self.valid_until()
    }

    /// True once leadership was lost or given up.
    pub fn is_lost(&self) -> bool {
        self.inner.lost.is_cancelled()
    }

    /// Completes when leadership is lost or given up.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: drop it and call again at will.
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.inner.lost.cancelled()
    }

    /// A token cancelled when leadership ends, for APIs that take a
    /// `CancellationToken`. Cancelling it yourself does not give up leadership.
    pub fn token(&self) -> CancellationToken {
        self.inner.lost.child_token()
    }
}
