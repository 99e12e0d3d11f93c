//! Leader election for control-plane components, the Rust counterpart of client-go's
//! `tools/leaderelection`.
//!
//! Replicas of a component contend for one lock; one leads, the others stand by and
//! take over when it stops renewing. The record is client-go's, byte for byte, so Rust
//! and Go replicas can share an election. Beyond client-go:
//!
//! - standbys whose lock can watch do not poll: they wake when the record changes or
//!   when the observed lease expires, and take a released lease at once;
//! - the leader renews with a single compare-and-swap write;
//! - leadership is a value, a [`Leadership`] with a cancellation token, a fencing
//!   token and the instant until which acting is safe;
//! - on shutdown the leader's work stops before the lease is released;
//! - after losing leadership the elector campaigns again;
//! - sharded leadership: [`ShardedElector`] spreads `N` shards, each an election of
//!   its own, over the live replicas (see `docs/sharding.md`).
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `file` | yes | [`FileLock`], a lock in a file for replicas on one host |
//! | `etcd` | no | etcd locks on the `etcd-client` crate (needs `protoc` to build) |
//! | `kube` | no | Kubernetes Lease, Endpoints, ConfigMap and Multi locks on the `kube` crate |
//! | `metrics` | no | [`Metrics`]: client-go's `leader_election_*` metrics and more, on `prometheus-client` |
//!
//! The in-memory lock, [`MemoryStore`], is always built. Test support (a Kubernetes
//! API test server, real etcd clusters, a checker of elections) is the
//! `leaderelection-testkit` crate.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use leaderelection::{Config, LeaderElector, MemoryStore};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let config = Config::new("scheduler")
//!     .lease_duration(Duration::from_secs(15))
//!     .renew_deadline(Duration::from_secs(10))
//!     .retry_period(Duration::from_secs(2));
//! let elector = LeaderElector::new(store.lock("scheduler"), config)?;
//! let shutdown = CancellationToken::new();
//! # let stop = shutdown.clone();
//! # tokio::spawn(async move { tokio::time::sleep(Duration::from_secs(5)).await; stop.cancel(); });
//! elector
//!     .run(shutdown, |leadership| async move {
//!         tracing::info!(fencing_token = leadership.fencing_token(), "leading");
//!         leadership.lost().await;
//!     })
//!     .await;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod compat;
mod config;
#[cfg(feature = "kube")]
#[cfg_attr(docsrs, doc(cfg(feature = "kube")))]
pub mod controller;
mod elector;
mod error;
#[cfg(feature = "etcd")]
mod etcd_election;
mod leadership;
pub mod lock;
#[cfg(feature = "metrics")]
mod metrics;
mod record;
mod sharded;
mod status;
mod sync;
mod term;
mod version;

// README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use config::{default_identity, Config, JITTER_FACTOR, MAX_HONOURED_LEASE};
pub use elector::LeaderElector;
pub use error::{BoxError, ConfigError, HealthError, LockError};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use etcd_election::{EtcdElection, EtcdLeader};
pub use leadership::Leadership;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use lock::etcd::{EtcdLock, EtcdOptions};
#[cfg(feature = "file")]
#[cfg_attr(docsrs, doc(cfg(feature = "file")))]
pub use lock::file::FileLock;
pub use lock::memory::{MemoryLock, MemoryStore};
pub use lock::{LeaseLock, LockEvent, Version, Versioned, WatchStream};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::Metrics;
pub use record::{InvalidRecord, LeaderElectionRecord};
pub use sharded::{shard_for_key, LockFactory, ShardRange, ShardStatus, ShardedElector};
pub use status::{ElectionEvent, Status};

/// The annotation under which Endpoints and ConfigMap locks keep the record.
///
/// It belongs to those locks: use `leaderelection::lock::kube::LEADER_ANNOTATION`
/// (feature `kube`). Kept here, with the same value, for builds without `kube`.
#[deprecated(
    since = "0.2.0",
    note = "use leaderelection::lock::kube::LEADER_ANNOTATION (feature `kube`)"
)]
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
