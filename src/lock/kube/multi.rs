//! MultiLock: the record in two locks at once, to migrate an election from one kind
//! of object to another without a moment with two leaders.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::StreamExt;

use super::annotation::{ConfigMapLock, EndpointsLock};
use super::lease::KubeLeaseLock;
use crate::error::LockError;
use crate::lock::{LeaseLock, LockEvent, Version, Versioned, WatchStream};
use crate::record::{InvalidRecord, LeaderElectionRecord};

/// The holder a [`MultiLock`] reports when its two records name different holders,
/// client-go's `UnknownLeader`: nobody is known to lead, so standbys wait for the
/// lease to run out unchanged before taking both.
pub const UNKNOWN_LEADER: &str = "leaderelection.k8s.io/unknown";

/// Two locks written together, client-go's `MultiLock`: what
/// `--leader-elect-resource-lock=endpointsleases` and `=configmapsleases` select.
///
/// It is the middle step of a migration between kinds of lock, for example from
/// Endpoints to Leases: replicas on `endpoints` only, on `endpointsleases` and on
/// `leases` only can run side by side during rolling upgrades, and at most one of them
/// leads (see `docs/kubernetes.md`). Semantics, as client-go's:
///
/// - `get` reads both and reports the primary's record; when the secondary names
///   another holder, the holder reads as [`UNKNOWN_LEADER`]; a missing secondary is
///   ignored (an old replica that writes only the primary holds the lock);
/// - `create` creates both; `update` writes the primary and then the secondary, and
///   creates the secondary when it is missing;
/// - the version combines both objects' versions, so a write to either one counts as
///   a change (a standby never takes over while either record is being renewed);
/// - `watch` follows both objects.
///
/// Stricter than client-go: the secondary is written with its own version as
/// precondition (client-go reads it again and overwrites it), and a primary that
/// appeared since it was read makes `create` fail with [`LockError::AlreadyExists`]
/// (client-go ignores it and goes on to create the secondary, which can let two
/// candidates believe they won).
///
/// # Examples
///
/// ```no_run
/// use leaderelection::lock::kube::MultiLock;
/// use leaderelection::{Config, LeaderElector};
///
/// # async fn run(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// // Step two of moving kube-scheduler from Endpoints to Leases.
/// let lock = MultiLock::endpoints_leases(client, "kube-system", "kube-scheduler");
/// let elector = LeaderElector::new(lock, Config::new("kube-scheduler"))?;
/// # let _ = elector; Ok(()) }
/// ```
pub struct MultiLock<P, S> {
    primary: Arc<P>,
    secondary: Arc<S>,
}

impl<P, S> Clone for MultiLock<P, S> {
    fn clone(&self) -> Self {
        Self {
            primary: self.primary.clone(),
            secondary: self.secondary.clone(),
        }
    }
}

impl<P: fmt::Debug, S: fmt::Debug> fmt::Debug for MultiLock<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiLock")
            .field("primary", &self.primary)
            .field("secondary", &self.secondary)
            .finish()
    }
}

impl MultiLock<EndpointsLock, KubeLeaseLock> {
    /// `endpointsleases`: the Endpoints `namespace/name` as primary and the Lease of
    /// the same name as secondary.
    pub fn endpoints_leases(
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        let (namespace, name) = (namespace.into(), name.into());
        Self::new(
            EndpointsLock::new(client.clone(), namespace.clone(), name.clone()),
            KubeLeaseLock::new(client, namespace, name),
        )
    }
}

impl MultiLock<ConfigMapLock, KubeLeaseLock> {
    /// `configmapsleases`: the ConfigMap `namespace/name` as primary and the Lease of
    /// the same name as secondary.
    pub fn configmaps_leases(
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        let (namespace, name) = (namespace.into(), name.into());
        Self::new(
            ConfigMapLock::new(client.clone(), namespace.clone(), name.clone()),
            KubeLeaseLock::new(client, namespace, name),
        )
    }
}

impl<P: LeaseLock, S: LeaseLock> MultiLock<P, S> {
    /// Any two locks: the primary decides, the secondary follows.
    pub fn new(primary: P, secondary: S) -> Self {
        Self {
            primary: Arc::new(primary),
            secondary: Arc::new(secondary),
        }
    }

    /// The primary lock.
    pub fn primary(&self) -> &P {
        &self.primary
    }

    /// The secondary lock.
    pub fn secondary(&self) -> &S {
        &self.secondary
    }
}

/// What one side of the pair holds.
#[derive(Debug)]
enum Side {
    Absent,
    Record(Versioned),
    Invalid(InvalidRecord, Option<Version>),
}

impl Side {
    fn read(got: Result<Option<Versioned>, LockError>) -> Result<Side, LockError> {
        match got {
            Ok(None) => Ok(Side::Absent),
            Ok(Some(v)) => Ok(Side::Record(v)),
            Err(LockError::InvalidRecord { source, version }) => Ok(Side::Invalid(source, version)),
            Err(e) => Err(e),
        }
    }

    fn event(event: Result<LockEvent, LockError>) -> Result<Side, LockError> {
        match event {
            Ok(LockEvent::Changed(v)) => Ok(Side::Record(v)),
            Ok(LockEvent::Deleted) => Ok(Side::Absent),
            Err(e) => Side::read(Err(e)),
        }
    }

    /// `None` when the side is absent or its version unknown.
    fn version(&self) -> Option<&Version> {
        match self {
            Side::Absent => None,
            Side::Record(v) => Some(&v.version),
            Side::Invalid(_, v) => v.as_ref(),
        }
    }
}

/// The combined version: both versions as a JSON array, the secondary `null` when it
/// does not exist. Versions are opaque; JSON keeps any text unambiguous.
fn join(primary: &Version, secondary: Option<&Version>) -> Version {
    let pair = (primary.as_str(), secondary.map(Version::as_str));
    Version::new(serde_json::to_string(&pair).unwrap_or_default())
}

fn split(version: &Version) -> Option<(Version, Option<Version>)> {
    let (p, s): (String, Option<String>) = serde_json::from_str(version.as_str()).ok()?;
    Some((Version::new(p), s.map(Version::new)))
}

/// client-go's `MultiLock.Get`, given what both sides hold.
fn combine(primary: Side, secondary: Side) -> Result<Option<Versioned>, LockError> {
    let version = match (primary.version(), &secondary) {
        (None, _) => None,
        (Some(p), Side::Absent) => Some(join(p, None)),
        (Some(p), s) => s.version().map(|s| join(p, Some(s))),
    };
    let mut record = match primary {
        Side::Absent => return Ok(None),
        Side::Invalid(source, _) => return Err(LockError::InvalidRecord { source, version }),
        Side::Record(v) => v.record,
    };
    match secondary {
        Side::Invalid(source, _) => Err(LockError::InvalidRecord { source, version }),
        Side::Absent | Side::Record(_) => {
            if let Side::Record(s) = &secondary {
                if s.record.holder_identity != record.holder_identity {
                    record.holder_identity = UNKNOWN_LEADER.to_owned();
                }
            }
            let version = version.ok_or_else(|| LockError::InvalidRecord {
                source: InvalidRecord::new("the record has no version", ""),
                version: None,
            })?;
            Ok(Some(Versioned { record, version }))
        }
    }
}

#[async_trait]
impl<P: LeaseLock, S: LeaseLock> LeaseLock for MultiLock<P, S> {
    /// Reads the primary, then the secondary.
    ///
    /// # Errors
    ///
    /// Either lock's errors; [`LockError::InvalidRecord`] (with the combined version)
    /// when either record is unreadable.
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        let primary = Side::read(self.primary.get().await)?;
        if matches!(primary, Side::Absent) {
            return Ok(None);
        }
        let secondary = Side::read(self.secondary.get().await)?;
        combine(primary, secondary)
    }

    /// Creates the primary, then the secondary.
    ///
    /// # Errors
    ///
    /// [`LockError::AlreadyExists`] when either exists.
    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        let primary = self.primary.create(record).await?;
        let secondary = self.secondary.create(record).await?;
        Ok(join(&primary, Some(&secondary)))
    }

    /// Updates the primary with its version in `expected`, then the secondary with its
    /// own, or creates the secondary when `expected` says it was missing.
    ///
    /// # Errors
    ///
    /// [`LockError::Conflict`] when either moved or `expected` is not a version of this
    /// lock. When the primary was written and the secondary failed, the two now name
    /// different holders; the next read reports [`UNKNOWN_LEADER`].
    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        let (p, s) = split(expected).ok_or(LockError::Conflict)?;
        let primary = self.primary.update(record, &p).await?;
        let secondary = match s {
            Some(s) => self.secondary.update(record, &s).await?,
            None => self.secondary.create(record).await?,
        };
        Ok(join(&primary, Some(&secondary)))
    }

    /// Follows both objects: reads both, reports the combined record, then reports it
    /// again whenever either changes.
    fn watch(&self) -> Option<WatchStream> {
        let (primary, secondary) = (self.primary.clone(), self.secondary.clone());
        let stream = futures::stream::once(async move {
            let p = match Side::read(primary.get().await) {
                Ok(p) => p,
                Err(e) => return futures::stream::iter([Err(e)]).boxed(),
            };
            let s = match Side::read(secondary.get().await) {
                Ok(s) => s,
                Err(e) => return futures::stream::iter([Err(e)]).boxed(),
            };
            // Opened after the reads, so they start from the versions just read.
            let (Some(pw), Some(sw)) = (primary.watch(), secondary.watch()) else {
                return futures::stream::empty().boxed();
            };
            let first = to_event(combine_ref(&p, &s));
            let merged = futures::stream::select(pw.map(|e| (true, e)), sw.map(|e| (false, e)));
            let rest = merged
                .scan((p, s, false), |(p, s, failed), (is_primary, event)| {
                    if *failed {
                        return futures::future::ready(None);
                    }
                    let side = match Side::event(event) {
                        Ok(side) => side,
                        Err(e) => {
                            *failed = true;
                            return futures::future::ready(Some(Err(e)));
                        }
                    };
                    if is_primary {
                        *p = side;
                    } else {
                        *s = side;
                    }
                    futures::future::ready(Some(to_event(combine_ref(p, s))))
                })
                .boxed();
            futures::stream::iter([first]).chain(rest).boxed()
        })
        .flatten();
        Some(stream.boxed())
    }

    /// `primary/secondary`, as `endpoints/kube-system/x/leases/kube-system/x`.
    fn describe(&self) -> String {
        format!("{}/{}", self.primary.describe(), self.secondary.describe())
    }

    /// The greater of the two locks' tokens: both grow with every write (Kubernetes
    /// resourceVersions of one cluster share one counter), and the secondary is
    /// written last, so the token keeps growing when the migration moves on to the
    /// secondary alone.
    fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
        match split(version) {
            Some((p, s)) => {
                let p = self.primary.fencing_token(record, &p);
                let s = s.map_or(0, |s| self.secondary.fencing_token(record, &s));
                p.max(s)
            }
            None => record.leader_transitions.max(0) as u64,
        }
    }
}

fn combine_ref(primary: &Side, secondary: &Side) -> Result<Option<Versioned>, LockError> {
    let clone = |side: &Side| match side {
        Side::Absent => Side::Absent,
        Side::Record(v) => Side::Record(v.clone()),
        Side::Invalid(e, v) => Side::Invalid(e.clone(), v.clone()),
    };
    combine(clone(primary), clone(secondary))
}

fn to_event(state: Result<Option<Versioned>, LockError>) -> Result<LockEvent, LockError> {
    state.map(|v| v.map_or(LockEvent::Deleted, LockEvent::Changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn rec(holder: &str) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder_identity: holder.into(),
            lease_duration_seconds: 15,
            ..Default::default()
        }
    }

    #[test]
    fn versions_round_trip() {
        let v = join(&Version::new("12"), Some(&Version::new("a,\"b")));
        assert_eq!(
            split(&v),
            Some((Version::new("12"), Some(Version::new("a,\"b"))))
        );
        let v = join(&Version::new("12"), None);
        assert_eq!(v.as_str(), r#"["12",null]"#);
        assert_eq!(split(&v), Some((Version::new("12"), None)));
        assert_eq!(split(&Version::new("12")), None);
    }

    #[tokio::test]
    async fn client_go_semantics_over_two_stores() {
        let (old, new) = (MemoryStore::new(), MemoryStore::new());
        let multi = MultiLock::new(old.lock("e"), new.lock("e"));
        assert_eq!(multi.get().await.unwrap(), None);

        // An old replica holds the primary only: it is reported as the holder.
        let pv = old.lock("e").create(&rec("old")).await.unwrap();
        let got = multi.get().await.unwrap().unwrap();
        assert_eq!(got.record.holder_identity, "old");

        // Taking over writes the primary and creates the secondary.
        let v = multi.update(&rec("m"), &got.version).await.unwrap();
        assert_eq!(
            new.lock("e")
                .get()
                .await
                .unwrap()
                .unwrap()
                .record
                .holder_identity,
            "m"
        );
        let got = multi.get().await.unwrap().unwrap();
        assert_eq!(
            (got.record.holder_identity.as_str(), &got.version),
            ("m", &v)
        );
        assert!(multi.fencing_token(&got.record, &v) > pv.as_str().parse().unwrap());

        // A replica on the secondary alone takes it: the holders differ.
        let sv = new.lock("e").get().await.unwrap().unwrap().version;
        new.lock("e").update(&rec("lease-only"), &sv).await.unwrap();
        let got = multi.get().await.unwrap().unwrap();
        assert_eq!(got.record.holder_identity, UNKNOWN_LEADER);

        // The old version no longer matches on either side.
        assert!(matches!(
            multi.update(&rec("m"), &v).await,
            Err(LockError::Conflict)
        ));
        assert!(matches!(
            multi.update(&rec("m"), &Version::new("7")).await,
            Err(LockError::Conflict)
        ));
        assert!(matches!(
            multi.create(&rec("m")).await,
            Err(LockError::AlreadyExists)
        ));
    }

    #[tokio::test]
    async fn invalid_records_carry_the_combined_version() {
        let (old, new) = (MemoryStore::new(), MemoryStore::new());
        let multi = MultiLock::new(old.lock("e"), new.lock("e"));
        old.put_raw("e", "{garbage");
        new.put_raw("e", rec("x").to_json());
        let Err(LockError::InvalidRecord {
            version: Some(v), ..
        }) = multi.get().await
        else {
            panic!("expected an invalid record")
        };
        // Overwriting after the lease works with that version.
        multi.update(&rec("y"), &v).await.unwrap();
        assert_eq!(
            multi.get().await.unwrap().unwrap().record.holder_identity,
            "y"
        );
    }

    #[tokio::test]
    async fn watch_follows_both() {
        let (old, new) = (MemoryStore::new(), MemoryStore::new());
        let multi = MultiLock::new(old.lock("e"), new.lock("e"));
        let v = multi.create(&rec("a")).await.unwrap();
        let mut w = multi.watch().unwrap();
        match w.next().await {
            Some(Ok(LockEvent::Changed(got))) => assert_eq!(got.version, v),
            other => panic!("{other:?}"),
        }
        let sv = new.lock("e").get().await.unwrap().unwrap().version;
        new.lock("e").update(&rec("b"), &sv).await.unwrap();
        match w.next().await {
            Some(Ok(LockEvent::Changed(got))) => {
                assert_eq!(got.record.holder_identity, UNKNOWN_LEADER)
            }
            other => panic!("{other:?}"),
        }
        old.delete("e");
        assert!(matches!(w.next().await, Some(Ok(LockEvent::Deleted))));
    }
}
