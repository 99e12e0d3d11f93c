//! etcd client errors as [`LockError`]s, with what was being done.

use std::error::Error;
use std::fmt;

use tonic::Code;

use crate::error::{BoxError, LockError};

/// The backend's name in [`LockError`]s.
pub(crate) const BACKEND: &str = "etcd";

/// An etcd client error with what was being done, kept as the source of a [`LockError`].
#[derive(Debug)]
pub(crate) struct EtcdError {
    context: String,
    source: etcd_client::Error,
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, describe(&self.source))
    }
}

impl Error for EtcdError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// The client error and its causes on one line; gRPC statuses as `Code: message`.
pub(super) fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            with_causes(format!("{:?}: {}", s.code(), s.message()), s.source())
        }
        other => with_causes(other.to_string(), other.source()),
    }
}

/// `text` followed by each cause that does not repeat what is already said, since
/// transport errors often embed their source's message.
pub(super) fn with_causes(mut text: String, mut cause: Option<&(dyn Error + 'static)>) -> String {
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// True when etcd refused the credentials or the permission.
fn is_auth_error(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(s) = e else {
        return false;
    };
    if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) {
        return true;
    }
    let m = s.message();
    m.contains("authentication failed")
        || m.contains("permission denied")
        || m.contains("invalid auth token")
        || m.contains("user name is empty")
}

/// True when etcd says the lease does not exist (expired or revoked).
pub(crate) fn is_lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::NotFound || s.message().contains("lease not found")
        }
        _ => false,
    }
}

/// Maps a client error: refused credentials are [`LockError::Forbidden`], everything
/// else (unreachable, no leader, timeouts) [`LockError::Unavailable`].
pub(crate) fn map_error(context: String, e: etcd_client::Error) -> LockError {
    let forbidden = is_auth_error(&e);
    let source: BoxError = Box::new(EtcdError { context, source: e });
    if forbidden {
        LockError::Forbidden {
            backend: BACKEND,
            source,
        }
    } else {
        LockError::Unavailable {
            backend: BACKEND,
            source,
        }
    }
}

/// A setting that cannot work, reported when connecting.
pub(super) fn config_error(message: impl Into<String>) -> LockError {
    LockError::unavailable(BACKEND, message.into())
}
