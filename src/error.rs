//! Errors of locks, of the elector's configuration and of its health check.

use std::time::Duration;

use crate::record::InvalidRecord;
use crate::version::Version;

/// A boxed error from a backend's client, kept as the source of [`LockError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a [`LeaseLock`](crate::LeaseLock) operation can fail with.
///
/// The variants fall in three groups, which the elector treats differently:
/// someone else won ([`Conflict`](Self::Conflict), [`AlreadyExists`](Self::AlreadyExists)):
/// read again and follow the new holder; the backend broke
/// ([`Unavailable`](Self::Unavailable), [`Timeout`](Self::Timeout),
/// [`Forbidden`](Self::Forbidden)): retry, and step down if it lasts past the renew
/// deadline; the stored data is bad ([`InvalidRecord`](Self::InvalidRecord)): wait a
/// lease duration in case a holder is alive, then overwrite.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The record changed since the version given to `update` was read.
    #[error("the record changed since it was read (compare-and-swap failed)")]
    Conflict,
    /// `create` found a record already there.
    #[error("the record already exists")]
    AlreadyExists,
    /// The backend could not be reached or answered with a server error.
    #[error("{backend} backend unavailable: {source}")]
    Unavailable {
        /// Which backend (`"kubernetes"`, `"etcd"`, `"file"`, `"memory"`).
        backend: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The backend refused the credentials or the permission (HTTP 401/403, etcd auth).
    /// Fix the RBAC rules or the credentials; the elector keeps retrying meanwhile.
    #[error("{backend} backend denied access: {source}")]
    Forbidden {
        /// Which backend.
        backend: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A write answered with the version it was given: the backend stored nothing (a
    /// server skips a write that changes no byte). A renewal that wrote nothing did not
    /// extend the lease for the others, so the elector retries it until the renew
    /// deadline. Make each write differ (the record's `renewTime` does, unless renewals
    /// come faster than the backend's time precision).
    #[error("the write to {lock} was not applied: the record stayed at version {version}")]
    NotApplied {
        /// The lock, as [`LeaseLock::describe`](crate::LeaseLock::describe) names it.
        lock: String,
        /// The version before and after the write.
        version: Version,
    },
    /// The stored record could not be parsed.
    #[error("{source}")]
    InvalidRecord {
        /// What is wrong, with the start of the stored text.
        #[source]
        source: InvalidRecord,
        /// The version of the bad record, so that it can be overwritten by
        /// compare-and-swap once its lease has surely run out.
        version: Option<Version>,
    },
}

impl LockError {
    /// An [`Unavailable`](Self::Unavailable) error from any client error.
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            backend,
            source: source.into(),
        }
    }

    /// True for [`Conflict`](Self::Conflict) and [`AlreadyExists`](Self::AlreadyExists):
    /// another candidate wrote first.
    pub fn is_contention(&self) -> bool {
        matches!(self, Self::Conflict | Self::AlreadyExists)
    }
}

/// A [`Config`](crate::Config) that client-go would refuse, or one that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `lease_duration` must be greater than `renew_deadline`, so that a leader that
    /// gives up at its renew deadline stops before others may take over.
    #[error("lease_duration ({lease:?}) must be greater than renew_deadline ({renew:?})")]
    LeaseNotAfterRenewDeadline {
        /// The lease duration given.
        lease: Duration,
        /// The renew deadline given.
        renew: Duration,
    },
    /// `renew_deadline` must be greater than `retry_period * 1.2` (the jitter factor),
    /// so that a leader gets at least one retry before it gives up.
    #[error("renew_deadline ({renew:?}) must be greater than retry_period * 1.2 ({jittered:?})")]
    RenewDeadlineNotAfterRetry {
        /// The renew deadline given.
        renew: Duration,
        /// The retry period times the jitter factor.
        jittered: Duration,
    },
    /// A duration was zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// `lease_duration`, `renew_deadline` or `retry_period`.
        field: &'static str,
    },
    /// The lease duration is stored in whole seconds in an `i32`.
    #[error("lease_duration ({0:?}) is longer than a record can store")]
    LeaseTooLong(Duration),
    /// Standbys honour at most [`MAX_HONOURED_LEASE`](crate::MAX_HONOURED_LEASE) of
    /// any record's lease: a longer one would let them take over while the leader may
    /// still act.
    #[error(
        "lease_duration ({lease:?}) is longer than standbys honour ({max:?}); use at most {max:?}"
    )]
    LeaseBeyondHonoured {
        /// The lease duration given.
        lease: Duration,
        /// The longest lease a standby honours.
        max: Duration,
    },
    /// An empty identity would read as "nobody holds the lease".
    #[error("identity must not be empty")]
    EmptyIdentity,
    /// A [`ShardedElector`](crate::ShardedElector) needs at least one shard.
    #[error("shards must be at least 1")]
    NoShards,
}

/// The elector is unhealthy: it believes it leads but has not renewed for longer than
/// the lease plus the tolerance. Returned by `check_health` of
/// [`LeaderElector`](crate::LeaderElector) and `EtcdElection`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("failed election to renew leadership on lease {name}: last renewal {since:?} ago")]
pub struct HealthError {
    /// The election name.
    pub name: String,
    /// Time since the last successful renewal began.
    pub since: Duration,
}
