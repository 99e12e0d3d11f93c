//! etcd's own election protocol, the one of Go's `go.etcd.io/etcd/client/v3/concurrency`
//! package and of `etcdctl elect`, so that Rust replicas, Go services and operators'
//! shells take part in one election.
//!
//! The protocol: each candidate holds a session (an etcd lease kept alive) and puts
//! one key, `<name>/<lease id in hex>`, bound to it, with its identity as the value.
//! The candidate whose key has the lowest create revision leads; the others wait, in
//! create order, for the keys before theirs to be deleted. A leader resigns by
//! deleting its key (here: by revoking its session, which deletes the key); a dead
//! one loses its key when etcd expires its session.
//!
//! This is not a [`LeaseLock`](crate::LeaseLock): liveness lives in etcd's lease, not
//! in renewals of a record that standbys time, and nobody takes over a live leader's
//! key. [`EtcdElection`] therefore runs the protocol itself, with the same contract as
//! [`LeaderElector`](crate::LeaderElector): the same [`Config`], the same `run`, and
//! a [`Leadership`] whose fencing token is the create revision of the leader's key.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio_util::sync::CancellationToken;
use tracing::info_span;

use crate::config::Config;
use crate::error::{ConfigError, LockError};
use crate::leadership::Leadership;
use crate::term::{observers, Core};

mod campaign;
mod expiry;
mod leader;
mod request;
mod session;
mod term;

pub use leader::EtcdLeader;

/// etcd's default `--election-timeout`.
const DEFAULT_ETCD_ELECTION_TIMEOUT_MS: u64 = 1000;

/// One replica's side of an etcd election (Go's `concurrency.Election`), with the
/// contract of [`LeaderElector`](crate::LeaderElector).
///
/// From the [`Config`]: the identity is the value of this candidate's key; the lease
/// duration is the session TTL (rounded up to whole seconds), which is at most how long
/// a dead leader holds the election (the next in line revokes its session once etcd's
/// answers prove it expired); the retry period is the leader's keep-alive interval
/// (standbys keep alive every third of the TTL, as Go's `concurrency.Session` does);
/// the leader steps down when no keep-alive has succeeded for the renew deadline, which ends
/// before its session can expire. When etcd reports the session gone (expired or
/// revoked) or the leader's key deleted, leadership is lost at once: unlike Go's
/// `Campaign`, a lost session never leaves a leader that believes it leads. After any
/// error the session is revoked, so no candidate key is left behind.
///
/// Cheap to clone; clones share state.
///
/// # Examples
///
/// ```no_run
/// use leaderelection::lock::etcd::{connect, EtcdOptions};
/// use leaderelection::{Config, EtcdElection};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let client = connect(&["http://127.0.0.1:2379"], &EtcdOptions::new()).await?;
/// // Same election as `etcdctl elect kube-scheduler <proposal>`.
/// let election = EtcdElection::new(client, "kube-scheduler", Config::new("kube-scheduler"))?;
/// election
///     .run(CancellationToken::new(), |leadership| async move {
///         println!("leading with fencing token {}", leadership.fencing_token());
///         leadership.lost().await;
///     })
///     .await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EtcdElection {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    name: String,
    prefix: String,
    core: Core,
    /// The etcd cluster's `--election-timeout`, in milliseconds.
    etcd_election_timeout_ms: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdElection")
            .field("name", &self.name)
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

impl EtcdElection {
    /// An election named `name` on `client`, after checking `config` as
    /// [`LeaderElector::new`](crate::LeaderElector::new) does.
    ///
    /// `name` is used verbatim as Go's election prefix: candidate keys are
    /// `<name>/<lease id in hex>`, as with `etcdctl elect <name>` and
    /// `concurrency.NewElection(session, "<name>")`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the timing is invalid or the identity empty.
    pub fn new(
        client: Client,
        name: impl Into<String>,
        config: Config,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        Ok(Self {
            shared: Arc::new(Shared {
                core: Core::new(config)?,
                client,
                prefix: format!("{name}/"),
                name,
                etcd_election_timeout_ms: AtomicU64::new(DEFAULT_ETCD_ELECTION_TIMEOUT_MS),
            }),
        })
    }

    /// The etcd cluster's `--election-timeout` (etcd's default, 1 s, unless set).
    ///
    /// The standby next in line revokes a crashed leader's session as soon as etcd's
    /// answers prove it past expiry, instead of waiting for etcd's lessor. An old raft
    /// leader cut off from its peers keeps answering as the lease primary for up to
    /// twice this timeout (CheckQuorum), without the keep-alives that now reach the
    /// new primary; so the early revoke is used only for a session TTL (the lease
    /// duration) longer than twice this timeout plus the retry period, and is left to
    /// etcd otherwise (docs/safety.md, "What it assumes of etcd").
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(client: leaderelection::lock::etcd::etcd_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use leaderelection::{Config, EtcdElection};
    ///
    /// // etcd started with --election-timeout=5000
    /// let election = EtcdElection::new(client, "scheduler", Config::new("scheduler"))?
    ///     .etcd_election_timeout(Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn etcd_election_timeout(self, timeout: Duration) -> Self {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.shared
            .etcd_election_timeout_ms
            .store(ms, Ordering::Relaxed);
        self
    }

    /// The shortest session TTL whose expiry a standby may prove from etcd's answers:
    /// more than an old primary's answers can outlast its quorum.
    fn revocable_above(&self) -> Duration {
        let timeout = self.shared.etcd_election_timeout_ms.load(Ordering::Relaxed);
        Duration::from_millis(timeout).saturating_mul(2) + self.shared.core.config.retry_period
    }

    observers!(
        "The value of the leader key last observed (this replica's identity when it \
         leads, and the last leader seen after it steps down, until it reads the keys \
         again)."
    );

    /// The prefix of the candidate keys, `<name>/`.
    pub fn key_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Reads who leads now (Go's `Election.Leader`): the candidate key with the lowest
    /// create revision, or `None` when nobody campaigns.
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] or [`LockError::Forbidden`] when etcd cannot be read.
    pub async fn current_leader(&self) -> Result<Option<EtcdLeader>, LockError> {
        Ok(self.first_candidate().await?.0)
    }

    /// Campaigns, leads, and campaigns again after a loss, until `shutdown` is
    /// cancelled (or, with [`Config::recampaign`] off, until leadership is lost once).
    ///
    /// The contract is that of [`LeaderElector::run`](crate::LeaderElector::run): the
    /// future `on_started_leading` returns is spawned as the leader's work, it must
    /// return soon after [`Leadership::lost`] fires, and on shutdown the session is
    /// revoked (the key deleted, the next candidate elected) only after the work has
    /// stopped.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future stops keeping the session alive without
    /// resigning and without waiting for the work (the work's [`Leadership::lost`]
    /// still fires, at once). Cancel `shutdown` instead.
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, mut on_started_leading: F)
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = &self.shared.core.config;
        let span =
            info_span!("etcd_election", name = %self.shared.name, identity = %config.identity);
        let (this, shutdown) = (self, &shutdown);
        let campaign = move || async move {
            let (session, revision) = this.campaign(shutdown).await?;
            Some(this.elected(session, revision))
        };
        self.shared
            .core
            .run(
                span,
                self.shared.prefix.clone(),
                shutdown,
                campaign,
                &mut on_started_leading,
            )
            .await
    }
}
