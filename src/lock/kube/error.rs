//! Failed requests to the Kubernetes API, sorted into what a lock reports.

use crate::error::LockError;

/// The backend's name in [`LockError`]s.
pub(crate) const BACKEND: &str = "kubernetes";

/// A failed request to the Kubernetes API: the source of the [`LockError`] a lock
/// returns, with what was asked and what the server (or the connection) said.
///
/// Downcast the error's source to read the HTTP code:
///
/// ```
/// use leaderelection::lock::kube::ApiError;
/// use leaderelection::LockError;
///
/// fn http_code(e: &LockError) -> Option<u16> {
///     let source = std::error::Error::source(e)?;
///     source.downcast_ref::<ApiError>()?.code
/// }
/// # assert_eq!(http_code(&LockError::Conflict), None);
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{verb} {object}: {message}")]
#[non_exhaustive]
pub struct ApiError {
    /// The request: `get`, `list`, `watch`, `create` or `update`.
    pub verb: &'static str,
    /// The object: `leases/kube-system/kube-scheduler`.
    pub object: String,
    /// The HTTP status, `None` when no answer came (connection refused, reset).
    pub code: Option<u16>,
    /// The Kubernetes `Status` reason (`Forbidden`, `ServiceUnavailable`), if any.
    pub reason: String,
    /// What went wrong, with what to do about it.
    pub message: String,
    /// The client's error, when the request got no answer.
    pub client_error: Option<kube::Error>,
}

/// How a failed request is to be read by the lock.
pub(crate) enum Failure {
    /// 404: the object (or its namespace) does not exist.
    NotFound(LockError),
    /// 409 AlreadyExists.
    AlreadyExists,
    /// 409 Conflict (or any other 409).
    Conflict,
    /// 410 Gone: a watch's resourceVersion is too old.
    Gone,
    /// Anything else, already mapped.
    Other(LockError),
}

impl Failure {
    /// The error for a request where a missing object is not expected.
    pub(crate) fn into_error(self) -> LockError {
        match self {
            Failure::NotFound(e) | Failure::Other(e) => e,
            Failure::AlreadyExists => LockError::AlreadyExists,
            Failure::Conflict => LockError::Conflict,
            Failure::Gone => LockError::unavailable(BACKEND, "resource version too old (410 Gone)"),
        }
    }
}

/// Sorts a client error into what the lock reports: contention, absence, or a broken
/// backend with a message that says what to do.
pub(crate) fn classify(verb: &'static str, object: &str, e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(status) => classify_status(verb, object, &status),
        other => Failure::Other(LockError::Unavailable {
            backend: BACKEND,
            source: Box::new(ApiError {
                verb,
                object: object.to_owned(),
                code: None,
                reason: String::new(),
                message: format!("no answer from the API server: {other}"),
                client_error: Some(other),
            }),
        }),
    }
}

pub(crate) fn classify_status(
    verb: &'static str,
    object: &str,
    status: &kube::core::Status,
) -> Failure {
    let error = |hint: &str| ApiError {
        verb,
        object: object.to_owned(),
        code: Some(status.code),
        reason: status.reason.clone(),
        message: if status.message.is_empty() {
            format!("HTTP {} {}{hint}", status.code, status.reason)
        } else {
            format!("{} (HTTP {}){hint}", status.message, status.code)
        },
        client_error: None,
    };
    match status.code {
        404 => Failure::NotFound(LockError::unavailable(
            BACKEND,
            error("; create the namespace, or check the lock's namespace and name"),
        )),
        409 if status.reason == "AlreadyExists" => Failure::AlreadyExists,
        409 => Failure::Conflict,
        410 => Failure::Gone,
        401 => Failure::Other(LockError::Forbidden {
            backend: BACKEND,
            source: Box::new(error("; the API server refused the credentials: check the token or kubeconfig")),
        }),
        403 => Failure::Other(LockError::Forbidden {
            backend: BACKEND,
            source: Box::new(error(
                "; grant get, create, update, list and watch on the lock object (see docs/kubernetes.md, RBAC)",
            )),
        }),
        _ => Failure::Other(LockError::unavailable(BACKEND, error(""))),
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, reason).with_code(code)))
    }

    #[test]
    fn statuses_map_onto_lock_errors() {
        let obj = "leases/ns/x";
        assert!(matches!(
            classify(
                "update",
                obj,
                status(409, "Conflict", "the object has been modified")
            ),
            Failure::Conflict
        ));
        assert!(matches!(
            classify("create", obj, status(409, "AlreadyExists", "exists")),
            Failure::AlreadyExists
        ));
        assert!(matches!(
            classify("watch", obj, status(410, "Expired", "too old")),
            Failure::Gone
        ));
        assert!(matches!(
            classify("get", obj, status(404, "NotFound", "")),
            Failure::NotFound(_)
        ));
        for code in [401, 403] {
            let Failure::Other(e) = classify(
                "get",
                obj,
                status(code, "Forbidden", "user cannot get leases"),
            ) else {
                panic!("{code}")
            };
            assert!(matches!(e, LockError::Forbidden { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("user cannot get leases") && text.contains(obj),
                "{text}"
            );
        }
        for code in [429, 500, 503, 504, 422] {
            let Failure::Other(e) = classify("update", obj, status(code, "", "busy")) else {
                panic!("{code}")
            };
            assert!(matches!(e, LockError::Unavailable { .. }), "{code}: {e}");
            let api = std::error::Error::source(&e)
                .unwrap()
                .downcast_ref::<ApiError>()
                .unwrap();
            assert_eq!(api.code, Some(code));
        }
    }
}
