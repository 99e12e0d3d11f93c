//! Timing and identity of an elector, with client-go's defaults and validation.

use std::time::Duration;

use rand::Rng;

use crate::error::ConfigError;

/// Longest lease a standby honours from a record. A holder asking for more is
/// treated as asking for this much, so a hostile or corrupt record cannot stall the
/// election for days; a [`Config`] asking for more is refused, since standbys would
/// take over while such a leader may still act.
pub const MAX_HONOURED_LEASE: Duration = Duration::from_secs(3600);

/// client-go's `JitterFactor`: a standby waits between `retry_period` and
/// `retry_period * (1 + JITTER_FACTOR)` between attempts.
pub const JITTER_FACTOR: f64 = 1.2;

/// How an elector times its lease, and who it is.
///
/// The defaults are kube-scheduler's and kube-controller-manager's: lease 15s, renew
/// deadline 10s, retry 2s. [`validate`](Self::validate) applies client-go's rules:
/// `lease_duration > renew_deadline > retry_period * 1.2 > 0`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leaderelection::Config;
///
/// let config = Config::new("kube-scheduler")
///     .identity("node-a")
///     .lease_duration(Duration::from_secs(30))
///     .renew_deadline(Duration::from_secs(20))
///     .retry_period(Duration::from_secs(4));
/// config.validate()?;
/// # Ok::<(), leaderelection::ConfigError>(())
/// ```
///
/// The fields are public to read (`config.identity`), as in kube-runtime's
/// `watcher::Config`; set them with the builder methods, and let
/// [`LeaderElector::new`](crate::LeaderElector::new) validate the result.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The election name, for logs, metrics and health messages.
    pub name: String,
    /// This replica's identity, written as `holderIdentity`.
    pub identity: String,
    /// client-go's `LeaseDuration`: how long standbys wait after the last observed
    /// renewal before taking over.
    pub lease_duration: Duration,
    /// client-go's `RenewDeadline`: how long the leader retries a failed renewal
    /// before it steps down; leadership is valid this long after a renewal began.
    pub renew_deadline: Duration,
    /// client-go's `RetryPeriod`: how often the leader renews and a standby without
    /// a watch polls.
    pub retry_period: Duration,
    /// client-go's `ReleaseOnCancel`.
    pub release_on_cancel: bool,
    /// Whether the elector campaigns again after losing leadership.
    pub recampaign: bool,
    /// client-go's `Coordinated`: whether the election is Kubernetes' coordinated
    /// leader election, where kube-apiserver picks the holder.
    pub coordinated: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self::new("leaderelection")
    }
}

impl Config {
    /// A configuration with the defaults and the given election name (used in logs,
    /// metrics and health messages; the lock names the stored object).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            release_on_cancel: true,
            recampaign: true,
            coordinated: false,
        }
    }

    /// This replica's identity, written as `holderIdentity`. Default: the host name,
    /// an underscore and eight random hex digits, so two processes on one host differ.
    #[must_use]
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    /// How long standbys wait after the last observed renewal before taking over.
    /// Default 15s.
    #[must_use]
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d;
        self
    }

    /// How long the leader keeps retrying a failed renewal before it steps down.
    /// Default 10s.
    #[must_use]
    pub fn renew_deadline(mut self, d: Duration) -> Self {
        self.renew_deadline = d;
        self
    }

    /// How often the leader renews, and how often a standby without a watch polls.
    /// Default 2s.
    #[must_use]
    pub fn retry_period(mut self, d: Duration) -> Self {
        self.retry_period = d;
        self
    }

    /// Whether the leader clears `holderIdentity` when it is cancelled, after its
    /// work has stopped, so a standby takes over at once. Default true (client-go's
    /// default is false; kube-scheduler turns it on).
    #[must_use]
    pub fn release_on_cancel(mut self, release: bool) -> Self {
        self.release_on_cancel = release;
        self
    }

    /// Whether the elector campaigns again after losing leadership. Default true;
    /// false gives client-go's one-shot `Run`, which returns after the first loss.
    #[must_use]
    pub fn recampaign(mut self, recampaign: bool) -> Self {
        self.recampaign = recampaign;
        self
    }

    /// Takes part in Kubernetes' coordinated leader election (KEP-4355, client-go's
    /// `Coordinated`). Default false.
    ///
    /// A coordinated elector never takes the Lease itself: kube-apiserver's
    /// coordinated election controller (the `CoordinatedLeaderElection` gate) picks a
    /// holder among the replicas' `LeaseCandidate`s and writes it into the Lease;
    /// the replica it names renews from then on. It renews only while it is the
    /// holder, keeps the Lease's `strategy`, and stops renewing as soon as
    /// `preferredHolder` names another replica: its work is stopped, then it
    /// releases the Lease so that the preferred one is named at once. A replica that
    /// finds itself named by someone else first waits out the holder it last saw,
    /// as any standby would before taking over.
    ///
    /// Publish this replica's candidacy beside the elector with
    /// [`LeaseCandidate`](crate::lock::kube::LeaseCandidate); without a controller
    /// serving the Lease, a coordinated elector never leads. Only the Lease lock
    /// carries the fields; see `docs/kubernetes.md`.
    ///
    /// With it off (the default), a Lease that carries a `strategy` or a
    /// `preferredHolder` is contended for as any other, and both fields are written
    /// back as they were read, where client-go's plain update would clear them.
    #[must_use]
    pub fn coordinated(mut self, coordinated: bool) -> Self {
        self.coordinated = coordinated;
        self
    }

    /// Checks client-go's rules.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field and the rule it breaks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Same order as client-go's NewLeaderElector, so the same input gives the
        // same complaint.
        if self.lease_duration <= self.renew_deadline {
            return Err(ConfigError::LeaseNotAfterRenewDeadline {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        let jittered = self.retry_period.mul_f64(JITTER_FACTOR);
        if self.renew_deadline <= jittered {
            return Err(ConfigError::RenewDeadlineNotAfterRetry {
                renew: self.renew_deadline,
                jittered,
            });
        }
        for (field, d) in [
            ("lease_duration", self.lease_duration),
            ("renew_deadline", self.renew_deadline),
            ("retry_period", self.retry_period),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.lease_duration.as_secs() >= i32::MAX as u64 {
            return Err(ConfigError::LeaseTooLong(self.lease_duration));
        }
        if self.lease_duration > MAX_HONOURED_LEASE {
            return Err(ConfigError::LeaseBeyondHonoured {
                lease: self.lease_duration,
                max: MAX_HONOURED_LEASE,
            });
        }
        if self.identity.is_empty() {
            return Err(ConfigError::EmptyIdentity);
        }
        Ok(())
    }

    /// The limit of one backend request: half the renew deadline, at least a second,
    /// never past the renew deadline (client-go's `NewFromKubeconfig` sets its client's
    /// timeout so). A request stuck on a failed backend member then leaves the term
    /// time for another attempt, which reaches a member that answers.
    pub(crate) fn request_timeout(&self) -> Duration {
        (self.renew_deadline / 2)
            .max(Duration::from_secs(1))
            .min(self.renew_deadline)
    }

    /// client-go's `wait.JitterUntil(retryPeriod, 1.2)`: a standby's pause between
    /// attempts, the retry period plus up to 1.2 retry periods.
    pub(crate) fn jittered_retry(&self) -> Duration {
        let retry = self.retry_period;
        retry + retry.mul_f64(rand::rng().random_range(0.0..JITTER_FACTOR))
    }

    /// `leaseDurationSeconds` as stored: whole seconds, rounded up so that standbys
    /// never wait less than this replica's lease.
    pub(crate) fn lease_seconds(&self) -> i32 {
        let d = self.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// The host name, an underscore and eight random hex digits: client-go users write
/// `hostname + "_" + uuid` for the same reason, two processes on one host must differ.
pub fn default_identity() -> String {
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    let suffix: u32 = rand::rng().random();
    format!("{host}_{suffix:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_seconds_round_up() {
        let c = Config::default().lease_duration(Duration::from_millis(1500));
        assert_eq!(c.lease_seconds(), 2);
        assert_eq!(Config::default().lease_seconds(), 15);
    }

    #[test]
    fn identities_differ() {
        assert_ne!(default_identity(), default_identity());
        assert!(!default_identity().is_empty());
    }
}
