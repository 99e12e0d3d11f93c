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

/// The etcd client crate this backend is built on, for [`EtcdLock::from_client`].
pub use etcd_client;
