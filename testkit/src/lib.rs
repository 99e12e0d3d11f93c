//! Test support for [`leaderelection`]: real servers for tests of code that elects
//! leaders, ours and yours.
//!
//! Everything here starts real processes or real servers on loopback ports and stops
//! them when dropped, so tests exercise the same code paths as production:
//!
//! - [`apiserver`]: a Kubernetes API test server (Leases, Endpoints, ConfigMaps,
//!   Events) that `kube::Client` and kubectl talk to over HTTP or TLS, with faults to
//!   inject and objects in memory or in etcd;
//! - [`etcd`]: clusters of real `etcd` processes, members killed, stopped and
//!   restarted;
//! - [`checker`]: judges what each leader's work did and fails on two leaders at once;
//! - [`contract`]: the [`LeaseLock`](leaderelection::LeaseLock) contract as scenarios,
//!   to run against every lock, this crate's and your own;
//! - [`faults`]: a wrapper that cuts off, slows and counts one replica's requests to
//!   any lock, and writes applied whose reply is lost or late;
//! - [`fenced`]: the downstream store a leader's work writes to, refusing stale
//!   fencing tokens;
//! - [`child`]: terms run in another process (this test binary run again, under
//!   faketime or as another user), reported as the checker's lines;
//! - [`proxy`]: a TCP fault proxy in front of any server: cut, delay, drop, count;
//! - [`replica`]: the harness every election test runs on: replicas of any elector in
//!   tasks, their work judged by the checker, crashed, stopped, paused and cut off;
//! - [`writes`]: every write to a record, timed, to measure takeovers from the writes.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `kube` | yes | [`apiserver`], and the library's Kubernetes locks |
//! | `etcd` | yes | the API test server's etcd storage, and the library's etcd locks (needs `protoc` to build) |
//! | `fuzzing` | no | hidden and unstable: entry points for the repository's fuzz targets, not for use |
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "kube")]
#[cfg_attr(docsrs, doc(cfg(feature = "kube")))]
pub mod apiserver;
pub mod checker;
pub mod child;
pub mod contract;
pub mod etcd;
pub mod faults;
pub mod fenced;
pub mod proxy;
pub mod replica;
pub mod writes;
