//! Request counts, for tests and benchmarks that measure API load.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What a request is counted under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey {
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`), or the lowercased HTTP method for paths outside the resources
    /// (discovery, `/version`).
    pub verb: String,
    /// The URL path, without the query.
    pub path: String,
    /// The authenticated user, or `system:anonymous` when authentication is off.
    pub user: String,
}

/// A snapshot of request counts; see [`ApiServer::requests`](super::ApiServer::requests).
///
/// Every request that reached the server is counted, failed ones included.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use leaderelection_testkit::apiserver::ApiServer;
///
/// let server = ApiServer::start().await?;
/// let before = server.requests();
/// // ... run an election for a while ...
/// let load = server.requests().since(&before);
/// println!("{} requests, {} updates", load.total(), load.verb("update"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestStats {
    counts: BTreeMap<RequestKey, u64>,
}

impl RequestStats {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Requests with the Kubernetes verb `verb`.
    pub fn verb(&self, verb: &str) -> u64 {
        self.count_where(|k| k.verb == verb)
    }

    /// Requests of the user named `user`.
    pub fn user(&self, user: &str) -> u64 {
        self.count_where(|k| k.user == user)
    }

    /// Requests whose key passes `filter`.
    pub fn count_where(&self, filter: impl Fn(&RequestKey) -> bool) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| filter(k))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every key with its count, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&RequestKey, u64)> {
        self.counts.iter().map(|(k, n)| (k, *n))
    }

    /// The requests made after `earlier` was taken.
    pub fn since(&self, earlier: &RequestStats) -> RequestStats {
        let counts = self
            .counts
            .iter()
            .map(|(k, n)| {
                (
                    k.clone(),
                    n - earlier.counts.get(k).copied().unwrap_or(0).min(*n),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        RequestStats { counts }
    }
}

/// The live counters behind the snapshots.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    stats: Mutex<RequestStats>,
}

impl Counter {
    fn lock(&self) -> std::sync::MutexGuard<'_, RequestStats> {
        // Counts stay meaningful after a panic elsewhere: recover them.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, verb: &str, path: &str, user: &str) {
        let key = RequestKey {
            verb: verb.to_string(),
            path: path.to_string(),
            user: user.to_string(),
        };
        *self.lock().counts.entry(key).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> RequestStats {
        self.lock().clone()
    }

    pub fn reset(&self) {
        self.lock().counts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_verb_user_and_since() {
        let c = Counter::default();
        c.record("get", "/a", "u");
        let before = c.snapshot();
        c.record("get", "/a", "u");
        c.record("update", "/a", "v");
        let now = c.snapshot();
        assert_eq!((now.total(), now.verb("get"), now.user("v")), (3, 2, 1));
        let delta = now.since(&before);
        assert_eq!((delta.total(), delta.verb("get")), (2, 1));
    }
}
