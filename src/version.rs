//! The version of a stored record, the token of compare-and-swap. A leaf, so that
//! both the locks and their errors can name it.

use std::fmt;

/// An opaque token naming one stored state of a record (a Kubernetes
/// `resourceVersion`, an etcd `mod_revision`, a counter), used for compare-and-swap.
///
/// Compare versions only for equality, except through
/// [`LeaseLock::fencing_token`](crate::LeaseLock::fencing_token), which knows whether its backend's versions grow.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// Wraps a backend's version.
    pub fn new(v: impl Into<String>) -> Self {
        Self(v.into())
    }

    /// The backend's version text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<u64> for Version {
    fn from(v: u64) -> Self {
        Self(v.to_string())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
