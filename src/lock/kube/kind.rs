//! The lock kinds by their `--leader-elect-resource-lock` names, and the checks of
//! the flags that name a lock.

use std::fmt;
use std::str::FromStr;

/// A lock kind by the name kube-scheduler's and kube-controller-manager's
/// `--leader-elect-resource-lock` flag gives it.
///
/// # Examples
///
/// ```
/// use leaderelection::lock::kube::ResourceLockKind;
///
/// let kind: ResourceLockKind = "endpointsleases".parse()?;
/// assert_eq!(kind, ResourceLockKind::EndpointsLeases);
/// assert_eq!(kind.to_string(), "endpointsleases");
/// assert!(kind.removed_from_client_go());
/// assert!("lease".parse::<ResourceLockKind>().is_err());
/// # Ok::<(), leaderelection::lock::kube::UnknownResourceLock>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResourceLockKind {
    /// `leases`: a coordination.k8s.io/v1 Lease.
    Leases,
    /// `endpoints`: the leader annotation of an Endpoints.
    Endpoints,
    /// `configmaps`: the leader annotation of a ConfigMap.
    ConfigMaps,
    /// `endpointsleases`: an Endpoints as primary and a Lease as secondary.
    EndpointsLeases,
    /// `configmapsleases`: a ConfigMap as primary and a Lease as secondary.
    ConfigMapsLeases,
}

impl ResourceLockKind {
    /// Every kind, in the order the error message lists them.
    pub const ALL: [ResourceLockKind; 5] = [
        Self::Leases,
        Self::Endpoints,
        Self::ConfigMaps,
        Self::EndpointsLeases,
        Self::ConfigMapsLeases,
    ];

    /// The flag value: `leases`, `endpoints`, `configmaps`, `endpointsleases` or
    /// `configmapsleases`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Leases => "leases",
            Self::Endpoints => "endpoints",
            Self::ConfigMaps => "configmaps",
            Self::EndpointsLeases => "endpointsleases",
            Self::ConfigMapsLeases => "configmapsleases",
        }
    }

    /// True for the kinds recent client-go versions refuse (all but `leases`). They
    /// keep working here so that deployments can migrate: `endpoints` ->
    /// `endpointsleases` -> `leases`.
    pub fn removed_from_client_go(self) -> bool {
        self != Self::Leases
    }
}

impl fmt::Display for ResourceLockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ResourceLockKind {
    type Err = UnknownResourceLock;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownResourceLock::Kind(s.to_owned()))
    }
}

/// A lock that
/// [`KubeLock::from_resource_lock_name`](super::KubeLock::from_resource_lock_name)
/// cannot build.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnknownResourceLock {
    /// The lock kind is not one of the names `--leader-elect-resource-lock` accepts.
    #[error(
        "unknown resource lock {0:?}: use one of leases, endpoints, configmaps, endpointsleases, configmapsleases (leases unless migrating from an older lock)"
    )]
    Kind(String),
    /// The namespace or the object name is not a valid Kubernetes name.
    #[error("invalid lock {what} {given:?}: {reason}")]
    Name {
        /// `namespace` or `name`.
        what: &'static str,
        /// The value given.
        given: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Object names are DNS subdomains (namespaces DNS labels): lowercase letters, digits,
/// `-` and `.`, starting and ending with a letter or digit.
pub(super) fn check_name(
    what: &'static str,
    given: &str,
    max: usize,
) -> Result<(), UnknownResourceLock> {
    let err = |reason| UnknownResourceLock::Name {
        what,
        given: given.to_owned(),
        reason,
    };
    if given.is_empty() {
        return Err(err("it must not be empty"));
    }
    if given.len() > max {
        return Err(err("it is too long"));
    }
    let dots = what == "name";
    if !given
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.'))
    {
        return Err(err(if dots {
            "use lowercase letters, digits, '-' and '.'"
        } else {
            "use lowercase letters, digits and '-'"
        }));
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(given.as_bytes()[0]) || !edge_ok(given.as_bytes()[given.len() - 1]) {
        return Err(err("it must start and end with a letter or a digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for kind in ResourceLockKind::ALL {
            assert_eq!(kind.name().parse::<ResourceLockKind>(), Ok(kind));
        }
        let e = "Leases"
            .parse::<ResourceLockKind>()
            .unwrap_err()
            .to_string();
        for kind in ResourceLockKind::ALL {
            assert!(e.contains(kind.name()), "{e}");
        }
        assert!(!ResourceLockKind::Leases.removed_from_client_go());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("name", "kube-scheduler", 253).is_ok());
        assert!(check_name("name", "a.b-c", 253).is_ok());
        assert!(check_name("namespace", "a.b", 63).is_err());
        assert!(check_name("name", "", 253).is_err());
        assert!(check_name("name", "Sched", 253).is_err());
        assert!(check_name("name", "a/b", 253).is_err());
        assert!(check_name("name", "-a", 253).is_err());
        assert!(check_name("namespace", &"a".repeat(64), 63).is_err());
    }
}
