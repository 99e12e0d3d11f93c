//! This replica's `LeaseCandidate`, its candidacy in Kubernetes' coordinated leader
//! election (KEP-4355): client-go's `leaderelection.NewCandidate`.
//!
//! kube-apiserver's coordinated election controller picks the holder of a Lease among
//! the candidates that name it, by the strategy they ask for (`OldestEmulationVersion`:
//! the lowest emulation version, then the lowest binary version, then the oldest
//! candidate). Before it picks, it pings every candidate by setting `pingTime`, and
//! waits for each to answer by renewing (`renewTime` after `pingTime`); a candidate
//! that does not answer is not picked.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1beta1::{
    LeaseCandidate as CandidateObject, LeaseCandidateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error::{classify, Failure};
use super::KubeLeaseLock;
use crate::error::LockError;

/// client-go's `requeueInterval`: how often a candidate renews unasked, well within
/// the 30 minutes after which kube-apiserver stops counting a candidate.
pub const CANDIDATE_RENEW_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The strategy kube-apiserver's controller implements.
pub const OLDEST_EMULATION_VERSION: &str = "OldestEmulationVersion";

/// How long a candidate waits before it tries again after a failed request.
const RETRY: Duration = Duration::from_secs(2);

/// A candidacy that cannot be published: a version or strategy kube-apiserver would
/// refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LeaseCandidate: {field}: {message}")]
#[non_exhaustive]
pub struct InvalidCandidate {
    /// The field: `binaryVersion`, `emulationVersion` or `strategy`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// This replica's `coordination.k8s.io/v1beta1` LeaseCandidate, kept while
/// [`run`](Self::run) runs: created, renewed every [`CANDIDATE_RENEW_INTERVAL`] and
/// whenever kube-apiserver pings it, created again if deleted, and deleted on
/// shutdown.
///
/// Run it beside a [`LeaderElector`](crate::LeaderElector) whose config is
/// [`coordinated`](crate::Config::coordinated), on the same Lease and with the same
/// identity: the candidate is named for the identity, since that is what the
/// controller writes as `holderIdentity`.
///
/// RBAC: `get`, `create`, `update`, `delete`, `list` and `watch` on
/// `coordination.k8s.io` `leasecandidates` in the Lease's namespace.
///
/// # Examples
///
/// ```no_run
/// use leaderelection::lock::kube::{KubeLeaseLock, LeaseCandidate};
/// use leaderelection::{Config, LeaderElector};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = kube::Client::try_default().await?;
/// let lock = KubeLeaseLock::new(client, "kube-system", "my-scheduler");
/// let config = Config::new("my-scheduler").coordinated(true);
/// let candidate = LeaseCandidate::for_lock(&lock, &config.identity, "1.35.0", "1.34.0")?;
/// let elector = LeaderElector::new(lock, config)?;
///
/// let shutdown = CancellationToken::new();
/// let candidacy = tokio::spawn({
///     let shutdown = shutdown.clone();
///     async move { candidate.run(shutdown).await }
/// });
/// elector
///     .run(shutdown, |leadership| async move { leadership.lost().await })
///     .await;
/// candidacy.await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LeaseCandidate {
    api: Api<CandidateObject>,
    name: String,
    lease_name: String,
    binary_version: String,
    emulation_version: String,
    strategy: String,
    renew_interval: Duration,
}

impl LeaseCandidate {
    /// The candidate `name` (this replica's identity) for the Lease `lease_name` in
    /// `namespace`, with the `OldestEmulationVersion` strategy. Versions are
    /// `major.minor` or `major.minor.patch`, with or without a leading `v`; they are
    /// written as `major.minor.patch`.
    ///
    /// # Errors
    ///
    /// [`InvalidCandidate`] when a version does not parse, or when the emulation
    /// version is newer than the binary version (a binary cannot emulate a release
    /// after its own).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: impl Into<String>,
        lease_name: impl Into<String>,
        binary_version: &str,
        emulation_version: &str,
    ) -> Result<Self, InvalidCandidate> {
        let binary = parse_version("binaryVersion", binary_version)?;
        let emulation = parse_version("emulationVersion", emulation_version)?;
        if emulation > binary {
            return Err(InvalidCandidate {
                field: "emulationVersion",
                message: format!(
                    "{emulation_version} is newer than the binary version {binary_version}"
                ),
            });
        }
        let text = |(a, b, c): (u64, u64, u64)| format!("{a}.{b}.{c}");
        Ok(Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            lease_name: lease_name.into(),
            binary_version: text(binary),
            emulation_version: text(emulation),
            strategy: OLDEST_EMULATION_VERSION.to_owned(),
            renew_interval: CANDIDATE_RENEW_INTERVAL,
        })
    }

    /// The candidate for `lock`'s Lease, in its namespace, with its client.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn for_lock(
        lock: &KubeLeaseLock,
        identity: &str,
        binary_version: &str,
        emulation_version: &str,
    ) -> Result<Self, InvalidCandidate> {
        let object = &lock.object;
        Self::new(
            object.api.clone().into_client(),
            &object.namespace,
            identity,
            object.name.clone(),
            binary_version,
            emulation_version,
        )
    }

    /// The strategy this candidate asks for (default `OldestEmulationVersion`, the
    /// one kube-apiserver implements). Others must be qualified names
    /// (`example.com/mine`), for a controller of one's own.
    ///
    /// # Errors
    ///
    /// [`InvalidCandidate`] when kube-apiserver would refuse the name.
    pub fn strategy(mut self, strategy: &str) -> Result<Self, InvalidCandidate> {
        check_strategy(strategy)?;
        self.strategy = strategy.to_owned();
        Ok(self)
    }

    /// How often the candidate renews unasked. Default [`CANDIDATE_RENEW_INTERVAL`].
    #[must_use]
    pub fn renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// The versions as written: `(binaryVersion, emulationVersion)`.
    pub fn versions(&self) -> (&str, &str) {
        (&self.binary_version, &self.emulation_version)
    }

    /// Keeps the LeaseCandidate until `shutdown` is cancelled, then deletes it.
    ///
    /// Failed requests are logged and retried; they never end the candidacy.
    pub async fn run(&self, shutdown: CancellationToken) {
        let selector = format!("metadata.name={}", self.name);
        let mut events = watcher(
            self.api.clone(),
            watcher::Config::default().fields(&selector),
        )
        .boxed();
        let mut next_renewal = Instant::now();
        let mut watch_failed_at: Option<Instant> = None;
        info!(candidate = %self.name, lease = %self.lease_name, binary_version = %self.binary_version,
              emulation_version = %self.emulation_version, "publishing the LeaseCandidate");
        loop {
            if Instant::now() >= next_renewal {
                next_renewal = match self.ensure().await {
                    Ok(()) => Instant::now() + self.renew_interval,
                    Err(e) => {
                        warn!(error = %e, "failed to renew the LeaseCandidate; retrying");
                        Instant::now() + RETRY
                    }
                };
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next_renewal) => {}
                _ = async { sleep(RETRY).await }, if watch_failed_at.is_some() => {
                    watch_failed_at = None;
                }
                event = events.next(), if watch_failed_at.is_none() => match event {
                    Some(Ok(Event::Apply(o) | Event::InitApply(o))) if self.is_ours(&o) && pinged(&o) => {
                        debug!("pinged by the coordinated election; answering");
                        next_renewal = Instant::now();
                    }
                    Some(Ok(Event::Delete(o))) if self.is_ours(&o) => {
                        info!("the LeaseCandidate was deleted; creating it again");
                        next_renewal = Instant::now();
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        // The watcher retries by itself on the next poll; do not spin.
                        debug!(error = %e, "watch on the LeaseCandidate failed");
                        watch_failed_at = Some(Instant::now());
                    }
                    None => watch_failed_at = Some(Instant::now()),
                },
            }
        }
        match timeout(RETRY, self.api.delete(&self.name, &DeleteParams::default())).await {
            Ok(Ok(_)) => info!("deleted the LeaseCandidate"),
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {}
            Ok(Err(e)) => {
                warn!(error = %e, "failed to delete the LeaseCandidate; kube-apiserver drops it after 30 minutes")
            }
            Err(_) => warn!(
                "timed out deleting the LeaseCandidate; kube-apiserver drops it after 30 minutes"
            ),
        }
    }

    fn is_ours(&self, object: &CandidateObject) -> bool {
        object.metadata.name.as_deref() == Some(self.name.as_str())
    }

    fn describe(&self) -> String {
        format!("leasecandidates/{}", self.name)
    }

    /// Creates the candidate, or renews it: `renewTime` now, the versions and the
    /// strategy as configured, every other field as read. A write that loses to
    /// another (the controller's ping) is read and tried once more; a second loss is
    /// left to the next renewal.
    async fn ensure(&self) -> Result<(), LockError> {
        if self.write().await? || self.write().await? {
            Ok(())
        } else {
            Err(LockError::Conflict)
        }
    }

    /// One read and write of the candidate: false when another write came between.
    async fn write(&self) -> Result<bool, LockError> {
        let object = self.describe();
        let now = MicroTime(jiff::Timestamp::now());
        let current = match self.api.get_opt(&self.name).await {
            Ok(c) => c,
            Err(e) => return Err(classify("get", &object, e).into_error()),
        };
        let result = match current {
            None => {
                let candidate = CandidateObject {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseCandidateSpec {
                        lease_name: self.lease_name.clone(),
                        binary_version: self.binary_version.clone(),
                        emulation_version: Some(self.emulation_version.clone()),
                        strategy: self.strategy.clone(),
                        renew_time: Some(now),
                        ping_time: None,
                    }),
                };
                self.api
                    .create(&PostParams::default(), &candidate)
                    .await
                    .map_err(|e| ("create", e))
            }
            Some(mut candidate) => {
                let spec = candidate.spec.get_or_insert_with(Default::default);
                if spec.lease_name != self.lease_name {
                    // leaseName is immutable: the object names another Lease.
                    return Err(LockError::unavailable(
                        super::error::BACKEND,
                        format!(
                            "{object} names the Lease {:?}, not {:?}; delete it or choose another identity",
                            spec.lease_name, self.lease_name
                        ),
                    ));
                }
                spec.binary_version.clone_from(&self.binary_version);
                spec.emulation_version = Some(self.emulation_version.clone());
                spec.strategy.clone_from(&self.strategy);
                spec.renew_time = Some(now);
                self.api
                    .replace(&self.name, &PostParams::default(), &candidate)
                    .await
                    .map_err(|e| ("update", e))
            }
        };
        match result {
            Ok(_) => {
                debug!("renewed the LeaseCandidate");
                Ok(true)
            }
            Err((verb, e)) => match classify(verb, &object, e) {
                Failure::Conflict | Failure::AlreadyExists => Ok(false),
                other => Err(other.into_error()),
            },
        }
    }
}

/// True when kube-apiserver asked the candidate to answer: a `pingTime` after its
/// `renewTime`.
fn pinged(object: &CandidateObject) -> bool {
    let Some(spec) = &object.spec else {
        return false;
    };
    match (&spec.ping_time, &spec.renew_time) {
        (Some(ping), Some(renew)) => ping.0 > renew.0,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// `major.minor[.patch]`, with an optional leading `v`, as kube-apiserver's tolerant
/// parse reads it.
fn parse_version(field: &'static str, text: &str) -> Result<(u64, u64, u64), InvalidCandidate> {
    let invalid = || InvalidCandidate {
        field,
        message: format!("{text:?} is not a version such as 1.34 or 1.34.2"),
    };
    let digits = text.trim().strip_prefix('v').unwrap_or(text.trim());
    let parts: Vec<&str> = digits.split('.').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(invalid());
    }
    let number = |p: &str| {
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || (p.len() > 1 && p.starts_with('0'))
        {
            return Err(invalid());
        }
        p.parse::<u64>().map_err(|_| invalid())
    };
    let patch = parts.get(2).map_or(Ok(0), |p| number(p))?;
    Ok((number(parts[0])?, number(parts[1])?, patch))
}

/// kube-apiserver's `ValidateCoordinatedLeaseStrategy`: a name without a `/` must be
/// one Kubernetes defines; one with a `/` a qualified name.
fn check_strategy(strategy: &str) -> Result<(), InvalidCandidate> {
    let invalid = |message: String| InvalidCandidate {
        field: "strategy",
        message,
    };
    match strategy.split_once('/') {
        None if strategy == OLDEST_EMULATION_VERSION => Ok(()),
        None => Err(invalid(format!(
            "{strategy:?} is not supported: the supported value is \"{OLDEST_EMULATION_VERSION}\", or a qualified name such as example.com/mine"
        ))),
        Some((prefix, name)) => {
            let dns = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            let name_ok = !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
            if dns && name_ok {
                Ok(())
            } else {
                Err(invalid(format!("{strategy:?} is not a qualified name such as example.com/mine")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_kube_apiserver_reads_them() {
        assert_eq!(parse_version("v", "1.34"), Ok((1, 34, 0)));
        assert_eq!(parse_version("v", "v1.35.2"), Ok((1, 35, 2)));
        for bad in [
            "",
            "1",
            "1.34.0.1",
            "1.x",
            "01.34",
            "1..2",
            "1.34-rc.1",
            "-1.2",
        ] {
            let e = parse_version("binaryVersion", bad).unwrap_err();
            assert_eq!(e.field, "binaryVersion", "{bad}");
            assert!(e.to_string().contains("binaryVersion"), "{e}");
        }
    }

    #[test]
    fn strategies_follow_kube_apiservers_rule() {
        assert!(check_strategy(OLDEST_EMULATION_VERSION).is_ok());
        assert!(check_strategy("example.com/mine").is_ok());
        for bad in ["Newest", "", "/x", "Example.com/x", "example.com/", "a/b/c"] {
            assert!(check_strategy(bad).is_err(), "{bad}");
        }
        let e = check_strategy("Newest").unwrap_err();
        assert!(e.to_string().contains("OldestEmulationVersion"), "{e}");
    }

    #[test]
    fn a_ping_is_a_ping_time_after_the_renew_time() {
        let at = |s: &str| Some(MicroTime(s.parse().unwrap()));
        let with = |ping, renew| CandidateObject {
            spec: Some(LeaseCandidateSpec {
                ping_time: ping,
                renew_time: renew,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(pinged(&with(
            at("2026-01-01T00:00:01Z"),
            at("2026-01-01T00:00:00Z")
        )));
        assert!(!pinged(&with(
            at("2026-01-01T00:00:00Z"),
            at("2026-01-01T00:00:01Z")
        )));
        assert!(!pinged(&with(None, at("2026-01-01T00:00:00Z"))));
        assert!(pinged(&with(at("2026-01-01T00:00:00Z"), None)));
    }
}
