//! Test support: real servers for tests of code that uses this crate.
//!
//! Everything here starts real processes or real servers on loopback ports and stops
//! them when dropped, so tests exercise the same code paths as production. The
//! [`checker`] watches an election under test and fails on two leaders at once.

#[cfg(feature = "kube")]
#[cfg_attr(docsrs, doc(cfg(feature = "kube")))]
pub mod apiserver;
pub mod checker;
pub mod etcd;
