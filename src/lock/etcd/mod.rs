//! The etcd backend: [`EtcdLock`], the record's JSON under one key, compared and
//! swapped on the key's mod revision, watched for changes, and optionally bound to an
//! etcd lease.
//!
//! Also the connection shared by the etcd backends: [`connect`] takes the endpoints
//! and [`EtcdOptions`] (TLS files and credentials named like kube-apiserver's
//! `--etcd-*` flags) and checks every endpoint, so that a wrong address, certificate
//! or password is reported by name.
//!
//! etcd's own election protocol, the one `etcdctl elect` and Go's `concurrency`
//! package speak, is [`EtcdElection`](crate::EtcdElection): not a lock, a second
//! way to campaign.

mod channel;
mod connect;
mod error;
mod kv;
mod lock;
mod options;
mod watch;

pub use connect::{connect, parse_servers};
pub(crate) use error::{is_lease_gone, map_error, BACKEND};
pub use lock::EtcdLock;
pub use options::{EtcdOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREFIX, DEFAULT_REQUEST_TIMEOUT};

/// The etcd client crate this backend is built on, at the version it is built on.
///
/// The API takes and returns its `Client` ([`connect`], [`EtcdLock::from_client`],
/// [`EtcdLock::client`], [`EtcdElection::new`](crate::EtcdElection::new)), so
/// etcd-client is part of this crate's public API whether or not it is re-exported;
/// the re-export lets users name those types, or build a client of their own, without
/// a dependency of theirs that must match this one (TLS comes through the `etcd-tls`
/// feature, so they need none).
pub use etcd_client;
