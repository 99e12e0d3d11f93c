//! Injected faults: added latency and failed requests.

use std::sync::Mutex;
use std::time::Duration;

/// What a fault does to a request it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Delay(Duration),
    Fail(u16),
}

/// One fault: a delay or an HTTP error, for every matching request or for the next
/// `n`, optionally only for one user, token, verb or resource.
///
/// Failures carry the Status body kube-apiserver sends with that code (429 and 503 with
/// `Retry-After: 1`). Note that `kube::Client` retries 429, 503 and 504 by itself
/// unless its config turns `default_retry` off, so one failed call of yours may be
/// several requests.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leaderelection_testkit::apiserver::Fault;
///
/// let two_errors = Fault::error(500).times(2).for_verb("update");
/// let slow_user = Fault::delay(Duration::from_millis(300)).for_user("scheduler-1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    action: Action,
    remaining: Option<u64>,
    user: Option<String>,
    token: Option<String>,
    verb: Option<String>,
    resource: Option<String>,
}

impl Fault {
    /// Fails matching requests with HTTP `status` (e.g. 500, 503, 429, 504).
    pub fn error(status: u16) -> Self {
        Self::new(Action::Fail(status))
    }

    /// Delays matching requests by `delay` before they are served.
    pub fn delay(delay: Duration) -> Self {
        Self::new(Action::Delay(delay))
    }

    fn new(action: Action) -> Self {
        Self {
            action,
            remaining: None,
            user: None,
            token: None,
            verb: None,
            resource: None,
        }
    }

    /// Applies to the next `n` matching requests only (default: until cleared).
    #[must_use]
    pub fn times(mut self, n: u64) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Applies only to requests of the user named `name` (with authentication on).
    #[must_use]
    pub fn for_user(mut self, name: impl Into<String>) -> Self {
        self.user = Some(name.into());
        self
    }

    /// Applies only to requests bearing `token` (with or without authentication).
    #[must_use]
    pub fn for_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Applies only to requests with the Kubernetes verb `verb` (`get`, `list`,
    /// `watch`, `create`, `update`, `patch`, `delete`).
    #[must_use]
    pub fn for_verb(mut self, verb: impl Into<String>) -> Self {
        self.verb = Some(verb.into());
        self
    }

    /// Applies only to requests on the resource `plural` (`leases`, `configmaps`, ...).
    #[must_use]
    pub fn for_resource(mut self, plural: impl Into<String>) -> Self {
        self.resource = Some(plural.into());
        self
    }

    fn matches(&self, request: &FaultTarget<'_>) -> bool {
        let same = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == got)
        };
        same(&self.user, Some(request.user))
            && same(&self.token, request.token)
            && same(&self.verb, Some(request.verb))
            && same(&self.resource, request.resource)
    }
}

/// What a fault can match a request on.
#[derive(Debug)]
pub(crate) struct FaultTarget<'a> {
    pub user: &'a str,
    pub token: Option<&'a str>,
    pub verb: &'a str,
    pub resource: Option<&'a str>,
}

/// What the faults decided for one request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub delay: Duration,
    pub fail: Option<u16>,
}

/// The server's fault hooks; see [`ApiServer::faults`](super::ApiServer::faults).
///
/// Faults apply to every request the server receives, discovery included, after
/// authentication and before authorization. Delays of all matching faults add up;
/// the first matching error fails the request.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use std::time::Duration;
/// use leaderelection_testkit::apiserver::{ApiServer, Fault};
///
/// let server = ApiServer::start().await?;
/// server.faults().set_latency(Duration::from_millis(50));
/// server.faults().inject(Fault::error(500).times(3));
/// // ...
/// server.faults().clear();
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Faults {
    faults: Mutex<Vec<Fault>>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        // The list is never left half-edited by a panic: recover it.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().push(fault);
    }

    /// Adds `latency` to every request until cleared.
    pub fn set_latency(&self, latency: Duration) {
        self.inject(Fault::delay(latency));
    }

    /// Fails the next `n` requests with HTTP `status`.
    pub fn fail_next(&self, status: u16, n: u64) {
        self.inject(Fault::error(status).times(n));
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Decides the fate of one request, using up one of each matching fault's times.
    pub(crate) fn on_request(&self, request: &FaultTarget<'_>) -> Verdict {
        let mut faults = self.lock();
        let mut verdict = Verdict::default();
        for fault in faults.iter_mut().filter(|f| f.matches(request)) {
            match fault.action {
                Action::Delay(d) => verdict.delay += d,
                Action::Fail(_) if verdict.fail.is_some() => continue,
                Action::Fail(code) => verdict.fail = Some(code),
            }
            if let Some(n) = fault.remaining.as_mut() {
                *n = n.saturating_sub(1);
            }
        }
        faults.retain(|f| f.remaining != Some(0));
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(user: &'a str, verb: &'a str) -> FaultTarget<'a> {
        FaultTarget {
            user,
            token: None,
            verb,
            resource: Some("leases"),
        }
    }

    #[test]
    fn faults_match_count_down_and_clear() {
        let faults = Faults::default();
        faults.inject(Fault::error(503).times(2).for_user("a"));
        faults.set_latency(Duration::from_millis(5));
        assert_eq!(faults.on_request(&request("b", "get")).fail, None);
        assert_eq!(faults.on_request(&request("a", "get")).fail, Some(503));
        let v = faults.on_request(&request("a", "get"));
        assert_eq!((v.fail, v.delay), (Some(503), Duration::from_millis(5)));
        assert_eq!(faults.on_request(&request("a", "get")).fail, None);
        faults.inject(Fault::error(500).for_verb("update"));
        assert_eq!(faults.on_request(&request("a", "update")).fail, Some(500));
        assert_eq!(faults.on_request(&request("a", "update")).fail, Some(500));
        faults.clear();
        assert_eq!(
            faults.on_request(&request("a", "update")),
            Verdict::default()
        );
    }
}
