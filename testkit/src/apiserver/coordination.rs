//! Coordinated leader election (KEP-4355), as kube-apiserver runs it with the
//! `CoordinatedLeaderElection` feature gate on: the leader election controller of
//! `pkg/controlplane/controller/leaderelection/leaderelection_controller.go` and
//! `election.go`, and the LeaseCandidate garbage collector of
//! `leasecandidategc_controller.go` (coordination.k8s.io/v1beta1, one `strategy` per
//! candidate).
//!
//! Components that want the server to pick their leader each write a LeaseCandidate
//! naming the Lease they run for, their binary and emulation versions and a strategy.
//! For each such Lease the controller steps through an election, from the state of
//! the Lease and its candidates alone, as kube-apiserver does:
//!
//! 1. no election is needed while the Lease is held, unexpired, by the best candidate;
//! 2. candidates that have not renewed within the election duration are pinged (their
//!    `pingTime` set), and the controller waits up to the election duration for each
//!    to ack (a `renewTime` after its `pingTime`);
//! 3. among the candidates that acked, the strategy of the highest binary version wins
//!    and, with `OldestEmulationVersion`, the lowest emulation version, then the lowest
//!    binary version, then the oldest candidate leads;
//! 4. the Lease is created for the electee, or, when it exists, given to the electee if
//!    it has no holder or has expired, or else marked with the electee as its
//!    `preferredHolder`, for the holder to step down.
//!
//! Writes go through the server's own REST handlers (resourceVersion preconditions,
//! validation, `managedFields` under the manager `kube-apiserver`), so watches see
//! them exactly as a client's write; they are not counted in
//! [`ApiServer::requests`](super::ApiServer::requests), nor subject to faults.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::resources::Resource;
use super::rest::{self, Target};
use super::semver::Version;
use super::storage::Storage;

/// How long an election waits for candidates to ack a ping (kube-apiserver's
/// `electionDuration`).
pub(crate) const ELECTION_DURATION: Duration = Duration::from_secs(5);
/// How often a Lease with candidates is looked at again (`defaultRequeueInterval`).
pub(crate) const REQUEUE_INTERVAL: Duration = Duration::from_secs(5);
/// The `leaseDurationSeconds` of the Leases the controller writes
/// (`defaultLeaseDurationSeconds`).
pub(crate) const LEASE_DURATION_SECONDS: i64 = 5;
/// A candidate that has not renewed for this long takes no part in elections and is
/// deleted (`leaseCandidateValidDuration`).
pub(crate) const CANDIDATE_VALID_DURATION: Duration = Duration::from_secs(30 * 60);
/// How often expired candidates are deleted (kube-apiserver's LeaseCandidate GC
/// period).
pub(crate) const GC_PERIOD: Duration = Duration::from_secs(30 * 60);

/// The one strategy the controller elects with; others leave the Lease to someone else.
const OLDEST_EMULATION_VERSION: &str = "OldestEmulationVersion";
/// Who the controller's writes are recorded for, as kube-apiserver's loopback client.
const MANAGER: &str = "kube-apiserver";
/// How long to wait before listing again after the watches broke.
const RELIST_PAUSE: Duration = Duration::from_millis(100);

/// The controller's timing: kube-apiserver's by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// How long an election waits for acks.
    pub election: Duration,
    /// How often a Lease with candidates is looked at again.
    pub requeue: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            election: ELECTION_DURATION,
            requeue: REQUEUE_INTERVAL,
        }
    }
}

/// The Lease an election is for: namespace and name.
type Key = (String, String);

/// Runs the controller until `stop` fires.
pub(crate) async fn run(storage: Arc<dyn Storage>, timing: Timing, stop: CancellationToken) {
    let controller = Controller { storage, timing };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            () = controller.session() => {}
        }
        // The watches broke (history compacted, storage unreachable): list again.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RELIST_PAUSE) => {}
        }
    }
}

fn leases() -> &'static Resource {
    Resource::find("coordination.k8s.io", "v1", "leases").expect("Leases are served")
}

fn candidates() -> &'static Resource {
    Resource::find("coordination.k8s.io", "v1beta1", "leasecandidates")
        .expect("LeaseCandidates are served")
}

struct Controller {
    storage: Arc<dyn Storage>,
    timing: Timing,
}

/// The Leases due for a step, each at the earliest time asked for (client-go's
/// workqueue: an `Add` or `AddAfter` of a queued key keeps the earlier one).
#[derive(Debug, Default)]
struct Queue {
    due: HashMap<Key, Instant>,
}

impl Queue {
    fn add(&mut self, key: Key, at: Instant) {
        let due = self.due.entry(key).or_insert(at);
        *due = (*due).min(at);
    }

    fn next(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    fn take_due(&mut self, now: Instant) -> Vec<Key> {
        let keys: Vec<Key> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            self.due.remove(key);
        }
        keys
    }
}

impl Controller {
    /// Lists, then follows the changes of Leases and LeaseCandidates until the watches
    /// break, stepping through the elections they call for.
    async fn session(&self) {
        let storage = &*self.storage;
        let listed = async {
            let (all, candidates_rv) = storage.list(&candidates().prefix(None)).await?;
            let (_, leases_rv) = storage.list(&leases().prefix(None)).await?;
            let candidate_events = storage
                .watch(&candidates().prefix(None), candidates_rv)
                .await?;
            let lease_events = storage.watch(&leases().prefix(None), leases_rv).await?;
            Ok::<_, super::storage::StorageError>((all, candidate_events, lease_events))
        };
        let (all, mut candidate_events, mut lease_events) = match listed.await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::debug!(error = ?e, "leader election controller cannot list");
                return;
            }
        };
        let mut queue = Queue::default();
        // As kube-apiserver's controller does when it starts: every candidate's Lease.
        for candidate in &all {
            if let Some(key) = candidate_key(candidate) {
                queue.add(key, Instant::now());
            }
        }
        // The garbage collector runs at once, then every period.
        self.collect_garbage(Timestamp::now()).await;
        let mut gc = tokio::time::interval_at(Instant::now() + GC_PERIOD, GC_PERIOD);
        loop {
            let next = queue.next();
            // Without a due key, the timer is an hour away and disabled anyway.
            let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                event = candidate_events.next() => match event {
                    Some(Ok(event)) => {
                        if let Some(key) = candidate_key(&event.object) {
                            queue.add(key, Instant::now());
                        }
                    }
                    _ => return,
                },
                event = lease_events.next() => match event {
                    Some(Ok(event)) => {
                        if let Some(key) = object_key(&event.object) {
                            queue.add(key, Instant::now());
                        }
                    }
                    _ => return,
                },
                _ = tokio::time::sleep_until(wake), if next.is_some() => {
                    for key in queue.take_due(Instant::now()) {
                        if let Some(after) = self.reconcile(&key, Timestamp::now()).await {
                            queue.add(key, Instant::now() + after);
                        }
                    }
                }
                _ = gc.tick() => self.collect_garbage(Timestamp::now()).await,
            }
        }
    }

    /// One step of the election of the Lease `key` at wall-clock time `now`; returns
    /// when to step again (None: only on the next change).
    async fn reconcile(&self, key: &Key, now: Timestamp) -> Option<Duration> {
        match self.step(key, now).await {
            Ok(requeue) => requeue,
            Err(failed) => {
                tracing::debug!(
                    namespace = %key.0, lease = %key.1, error = %failed.message,
                    "leader election controller step failed"
                );
                failed.requeue
            }
        }
    }

    /// `reconcileElectionStep`.
    async fn step(&self, key: &Key, now: Timestamp) -> Result<Option<Duration>, Failed> {
        let (namespace, name) = key;
        let requeue = Some(self.timing.requeue);
        let election = self.timing.election;
        let candidates = self
            .admissible_candidates(key, now)
            .await
            .map_err(|e| Failed::new(requeue, e))?;
        if candidates.is_empty() {
            return Ok(None);
        }
        let lease = self
            .storage
            .get(&leases().key(namespace, name))
            .await
            .map_err(|e| Failed::new(requeue, format!("cannot read the Lease: {e:?}")))?;
        match election_needed(&candidates, lease.as_ref(), now) {
            Ok(true) => {}
            Ok(false) => return Ok(requeue),
            Err(e) => return Err(Failed::new(requeue, e)),
        }

        let mut can_vote_yet = true;
        for candidate in &candidates {
            if let (Some(ping), Some(renew)) = (candidate.ping, candidate.renew) {
                if plus(ping, election) > now && renew < ping {
                    // Still waiting for this one to ack.
                    can_vote_yet = false;
                    continue;
                }
            }
            if candidate
                .renew
                .is_some_and(|renew| plus(renew, election) > now)
            {
                continue;
            }
            // A candidate is pinged again only once it acked the last ping.
            let ping_again = match candidate.ping {
                None => true,
                Some(ping) => {
                    plus(ping, election) < now && candidate.renew.is_some_and(|r| ping < r)
                }
            };
            if ping_again {
                self.ping(candidate, now)
                    .await
                    .map_err(|e| Failed::new(requeue, e))?;
                can_vote_yet = false;
            }
        }
        if !can_vote_yet {
            return Ok(requeue);
        }
        for candidate in &candidates {
            let Some(ping) = candidate.ping else { continue };
            if candidate.renew.is_some_and(|renew| ping < renew) {
                continue;
            }
            if plus(ping, election) > now {
                return Ok(None);
            }
        }

        let acked: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.renew.is_some_and(|renew| plus(renew, election) > now))
            .collect();
        if acked.is_empty() {
            return Err(Failed::new(None, "no available candidates"));
        }
        let strategy = pick_best_strategy(&acked).map_err(|e| Failed::new(None, e))?;
        let electee = if strategy == OLDEST_EMULATION_VERSION {
            let electee = pick_best_leader(&acked)
                .ok_or_else(|| Failed::new(None, "could not find a suitable electee"))?;
            Some(electee.name.clone())
        } else {
            // Left to another controller; the Lease is created without a holder.
            tracing::debug!(%namespace, lease = %name, %strategy, "strategy not handled by the leader election controller");
            None
        };

        let mut spec = json!({
            "strategy": strategy,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": micro_time(now),
        });
        if let Some(electee) = &electee {
            spec["holderIdentity"] = json!(electee);
        }
        let created = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        });
        match rest::create(
            &*self.storage,
            &target(leases(), namespace, None),
            created.to_string().as_bytes(),
        )
        .await
        {
            Ok(_) => {
                tracing::debug!(%namespace, lease = %name, holder = ?electee, "leader election controller created the Lease");
                return Ok(requeue);
            }
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(Failed::new(None, e.message)),
        }

        let existing = rest::get(&*self.storage, &target(leases(), namespace, Some(name)))
            .await
            .map_err(|e| Failed::new(None, e.message))?;
        let Some(updated) = elect(&existing, &strategy, electee.as_deref(), now) else {
            return Ok(requeue);
        };
        rest::update(
            &*self.storage,
            &target(leases(), namespace, Some(name)),
            updated.to_string().as_bytes(),
        )
        .await
        .map_err(|e| Failed::new(None, e.message))?;
        Ok(requeue)
    }

    /// `listAdmissableCandidates`: the unexpired candidates for the Lease `key`.
    async fn admissible_candidates(
        &self,
        key: &Key,
        now: Timestamp,
    ) -> Result<Vec<Candidate>, String> {
        let (all, _) = self
            .storage
            .list(&candidates().prefix(Some(&key.0)))
            .await
            .map_err(|e| format!("cannot list LeaseCandidates: {e:?}"))?;
        Ok(all
            .into_iter()
            .map(Candidate::from)
            .filter(|c| c.lease_name == key.1)
            .filter(|c| {
                let expired = c.is_expired(now);
                if expired {
                    tracing::debug!(namespace = %key.0, candidate = %c.name, "LeaseCandidate is expired");
                }
                !expired
            })
            .collect())
    }

    /// Asks a candidate to ack by setting its `pingTime`.
    async fn ping(&self, candidate: &Candidate, now: Timestamp) -> Result<(), String> {
        let mut object = candidate.object.clone();
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return Err(format!("LeaseCandidate {} has no spec", candidate.name));
        };
        spec.insert("pingTime".into(), Value::from(micro_time(now)));
        tracing::debug!(namespace = %candidate.namespace, candidate = %candidate.name, "leader election controller pings a candidate");
        let target = target(candidates(), &candidate.namespace, Some(&candidate.name));
        rest::update(&*self.storage, &target, object.to_string().as_bytes())
            .await
            .map(drop)
            .map_err(|e| e.message)
    }

    /// The LeaseCandidate garbage collector: deletes the candidates that have not
    /// renewed for [`CANDIDATE_VALID_DURATION`], checked again just before.
    async fn collect_garbage(&self, now: Timestamp) {
        let Ok((all, _)) = self.storage.list(&candidates().prefix(None)).await else {
            return;
        };
        for candidate in all.into_iter().map(Candidate::from) {
            if !candidate.is_expired(now) {
                continue;
            }
            let target = target(candidates(), &candidate.namespace, Some(&candidate.name));
            let Ok(fresh) = rest::get(&*self.storage, &target).await else {
                continue;
            };
            if !Candidate::from(fresh.clone()).is_expired(now) {
                continue;
            }
            // Deleted only if unchanged since read.
            let options = json!({"preconditions": {"resourceVersion": fresh.pointer("/metadata/resourceVersion")}});
            match rest::delete(&*self.storage, &target, options.to_string().as_bytes()).await {
                Ok(_) => {
                    tracing::debug!(namespace = %candidate.namespace, candidate = %candidate.name, "expired LeaseCandidate deleted")
                }
                Err(e) => {
                    tracing::debug!(namespace = %candidate.namespace, candidate = %candidate.name, error = %e.message, "expired LeaseCandidate not deleted")
                }
            }
        }
    }
}

/// Why a step failed, and when to step again.
struct Failed {
    requeue: Option<Duration>,
    message: String,
}

impl Failed {
    fn new(requeue: Option<Duration>, message: impl Into<String>) -> Self {
        Self {
            requeue,
            message: message.into(),
        }
    }
}

fn target(resource: &'static Resource, namespace: &str, name: Option<&str>) -> Target {
    Target {
        resource,
        namespace: Some(namespace.to_string()),
        name: name.map(str::to_string),
        dry_run: false,
        field_manager: Some(MANAGER.to_string()),
        force: None,
        user_agent: None,
    }
}

/// The Lease a candidate's change calls to elect for, unless the change is the
/// controller's own ping awaiting its ack (kube-apiserver's `enqueueCandidate`).
fn candidate_key(object: &Value) -> Option<Key> {
    let candidate = Candidate::from(object.clone());
    if let (Some(ping), Some(renew)) = (candidate.ping, candidate.renew) {
        if renew < ping {
            return None;
        }
    }
    if candidate.namespace.is_empty() {
        return None;
    }
    Some((candidate.namespace, candidate.lease_name))
}

/// An object's namespace and name.
fn object_key(object: &Value) -> Option<Key> {
    let meta = |field: &str| {
        object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Some((meta("namespace")?, meta("name")?))
}

/// A LeaseCandidate as the election reads it; whatever is missing or malformed in the
/// stored object reads as Go's zero value.
#[derive(Debug, Clone)]
struct Candidate {
    namespace: String,
    name: String,
    created: Option<Timestamp>,
    lease_name: String,
    ping: Option<Timestamp>,
    renew: Option<Timestamp>,
    binary_version: String,
    emulation_version: String,
    strategy: String,
    /// The object as stored, with its resourceVersion: what a ping writes back.
    object: Value,
}

impl From<Value> for Candidate {
    fn from(object: Value) -> Self {
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let time = |pointer: &str| text(pointer).parse::<Timestamp>().ok();
        Candidate {
            namespace: text("/metadata/namespace"),
            name: text("/metadata/name"),
            created: time("/metadata/creationTimestamp"),
            lease_name: text("/spec/leaseName"),
            ping: time("/spec/pingTime"),
            renew: time("/spec/renewTime"),
            binary_version: text("/spec/binaryVersion"),
            emulation_version: text("/spec/emulationVersion"),
            strategy: text("/spec/strategy"),
            object,
        }
    }
}

impl Candidate {
    /// `isLeaseCandidateExpired`: never renewed, or not for [`CANDIDATE_VALID_DURATION`].
    fn is_expired(&self, now: Timestamp) -> bool {
        self.renew
            .is_none_or(|renew| plus(renew, CANDIDATE_VALID_DURATION) < now)
    }

    fn binary(&self) -> Version {
        Version::parse_tolerant(&self.binary_version).unwrap_or_default()
    }

    fn emulation(&self) -> Version {
        Version::parse_tolerant(&self.emulation_version).unwrap_or_default()
    }
}

/// `electionNeeded`: whether the Lease is missing, free, expired or held by other than
/// the best candidate, or a candidate is due for the periodic refresh (half its
/// validity without renewing).
fn election_needed(
    candidates: &[Candidate],
    lease: Option<&Value>,
    now: Timestamp,
) -> Result<bool, String> {
    let Some(lease) = lease else {
        return Ok(true);
    };
    let holder = lease
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("");
    if is_lease_expired(lease, now) || holder.is_empty() {
        return Ok(true);
    }
    if candidates.iter().any(|c| {
        c.renew
            .is_some_and(|renew| plus(renew, CANDIDATE_VALID_DURATION / 2) < now)
    }) {
        return Ok(true);
    }
    let all: Vec<&Candidate> = candidates.iter().collect();
    if pick_best_strategy(&all)? != OLDEST_EMULATION_VERSION {
        return Ok(false);
    }
    Ok(pick_best_leader(&all).is_some_and(|best| best.name != holder))
}

/// `pickBestStrategy`: the strategy of the candidate with the highest binary version;
/// two candidates at that version naming different strategies are an error.
fn pick_best_strategy(candidates: &[&Candidate]) -> Result<String, String> {
    let (first, rest) = candidates.split_first().ok_or("no candidates")?;
    let (mut name, mut strategy, mut highest) = (&first.name, &first.strategy, first.binary());
    for c in rest {
        let binary = c.binary();
        if binary > highest {
            (name, strategy, highest) = (&c.name, &c.strategy, binary);
        } else if binary == highest && c.strategy != *strategy {
            return Err(format!(
                "candidates {name:?}, {:?} at same binary version but received differing strategies {strategy}, {}",
                c.name, c.strategy
            ));
        }
    }
    Ok(strategy.clone())
}

/// `pickBestLeaderOldestEmulationVersion`: among the candidates whose versions parse,
/// the lowest emulation version, then the lowest binary version, then the oldest.
fn pick_best_leader<'a>(candidates: &[&'a Candidate]) -> Option<&'a Candidate> {
    let mut electee: Option<&Candidate> = None;
    for c in candidates.iter().copied() {
        let valid = Version::parse_tolerant(&c.emulation_version).is_some()
            && Version::parse_tolerant(&c.binary_version).is_some();
        if !valid {
            continue;
        }
        if electee.is_none_or(|e| better(c, e)) {
            electee = Some(c);
        }
    }
    electee
}

/// Whether `rhs` is a better leader than `lhs`, as kube-apiserver's `compare`
/// answers 1: on equal versions, the later-created loses.
fn better(rhs: &Candidate, lhs: &Candidate) -> bool {
    let by_version = (lhs.emulation(), lhs.binary()).cmp(&(rhs.emulation(), rhs.binary()));
    match by_version {
        std::cmp::Ordering::Equal => lhs.created > rhs.created,
        order => order == std::cmp::Ordering::Greater,
    }
}

/// `isLeaseExpired`: no renewal or duration recorded, or the duration has run out
/// since the renewal.
fn is_lease_expired(lease: &Value, now: Timestamp) -> bool {
    let renew = lease
        .pointer("/spec/renewTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<Timestamp>().ok());
    let duration = lease
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64);
    match (renew, duration) {
        (Some(renew), Some(secs)) => {
            let end = renew.saturating_add(SignedDuration::from_secs(secs));
            end.is_ok_and(|end| end < now)
        }
        _ => true,
    }
}

/// The existing Lease as the election leaves it, or None when it stays as it is:
/// given to `electee` when it has no holder or has expired, else marked with the
/// electee as `preferredHolder` when another holds it.
fn elect(existing: &Value, strategy: &str, electee: Option<&str>, now: Timestamp) -> Option<Value> {
    let mut lease = existing.clone();
    let expired = is_lease_expired(existing, now);
    let spec = lease
        .as_object_mut()?
        .entry("spec")
        .or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    let spec = spec.as_object_mut()?;
    let holder = spec
        .get("holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if spec.get("strategy").and_then(Value::as_str) != Some(strategy) {
        spec.insert("strategy".into(), Value::from(strategy));
    }
    if let Some(electee) = electee {
        if holder.is_empty() || expired && holder != electee {
            tracing::debug!(lease = ?existing.pointer("/metadata/name"), %holder, %electee, expired, "leader election controller sets the holder");
            spec.remove("preferredHolder");
            spec.insert("holderIdentity".into(), Value::from(electee));
            spec.insert("renewTime".into(), Value::from(micro_time(now)));
            spec.insert(
                "leaseDurationSeconds".into(),
                Value::from(LEASE_DURATION_SECONDS),
            );
            spec.remove("acquireTime");
        } else if holder != electee {
            tracing::debug!(lease = ?existing.pointer("/metadata/name"), %holder, %electee, "leader election controller sets the preferred holder");
            spec.insert("preferredHolder".into(), Value::from(electee));
        }
    }
    (lease != *existing).then_some(lease)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    t.saturating_add(d).unwrap_or(Timestamp::MAX)
}

/// metav1.MicroTime as Go writes it: six fractional digits.
fn micro_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// As kube-apiserver's `election_test.go` and `leaderelection_controller_test.go` of
/// `pkg/controlplane/controller/leaderelection/`.
#[cfg(test)]
mod tests {
    use super::super::storage::MemoryStorage;
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn candidate(name: &str, binary: &str, emulation: &str, created: i64) -> Candidate {
        Candidate::from(json!({
            "metadata": {"name": name, "namespace": "kube-system",
                         "creationTimestamp": at(created).to_string()},
            "spec": {"leaseName": "kube-scheduler", "binaryVersion": binary,
                     "emulationVersion": emulation, "strategy": OLDEST_EMULATION_VERSION,
                     "renewTime": micro_time(at(0))},
        }))
    }

    #[test]
    fn the_oldest_emulation_version_leads_then_the_oldest_binary_then_the_oldest_candidate() {
        let a = candidate("a", "1.33.0", "1.32.0", 0);
        let b = candidate("b", "1.32.0", "1.32.0", 5);
        let c = candidate("c", "1.32.0", "1.32.0", 1);
        let d = candidate("d", "1.34.0", "1.33.0", 0);
        let garbled = candidate("e", "x", "1.0.0", 0);
        let best = pick_best_leader(&[&a, &b, &c, &d, &garbled]).unwrap();
        assert_eq!(best.name, "c");
        assert_eq!(pick_best_leader(&[&a, &d]).unwrap().name, "a");
        assert!(pick_best_leader(&[&garbled]).is_none());
        // Equal in everything: the first one seen stays.
        let twin = candidate("twin", "1.32.0", "1.32.0", 1);
        assert_eq!(pick_best_leader(&[&c, &twin]).unwrap().name, "c");
    }

    #[test]
    fn the_highest_binary_version_names_the_strategy() {
        let mut old = candidate("old", "1.32.0", "1.32.0", 0);
        old.strategy = "example.com/Newest".into();
        let new = candidate("new", "1.33.0", "1.32.0", 0);
        assert_eq!(
            pick_best_strategy(&[&old, &new]).unwrap(),
            OLDEST_EMULATION_VERSION
        );
        let mut rival = candidate("rival", "1.33.0", "1.33.0", 0);
        rival.strategy = "example.com/Newest".into();
        let err = pick_best_strategy(&[&old, &new, &rival]).unwrap_err();
        assert!(err.contains("differing strategies"), "{err}");
        assert!(pick_best_strategy(&[]).is_err());
    }

    fn lease(holder: &str, renewed: i64) -> Value {
        json!({"metadata": {"name": "kube-scheduler", "namespace": "kube-system"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 5,
                        "renewTime": micro_time(at(renewed)), "strategy": OLDEST_EMULATION_VERSION}})
    }

    #[test]
    fn an_election_is_needed_unless_the_best_candidate_holds_the_lease() {
        let a = candidate("a", "1.32.0", "1.32.0", 0);
        let b = candidate("b", "1.33.0", "1.33.0", 0);
        let both = [a.clone(), b.clone()];
        assert_eq!(election_needed(&both, None, at(1)), Ok(true));
        assert_eq!(
            election_needed(&both, Some(&lease("a", 0)), at(1)),
            Ok(false)
        );
        assert_eq!(
            election_needed(&both, Some(&lease("b", 0)), at(1)),
            Ok(true)
        );
        assert_eq!(election_needed(&both, Some(&lease("", 0)), at(1)), Ok(true));
        // Expired: renewed at 0 for 5 seconds.
        assert_eq!(
            election_needed(&both, Some(&lease("a", 0)), at(6)),
            Ok(true)
        );
        // A candidate silent for half its validity is due for a ping.
        assert_eq!(
            election_needed(&both, Some(&lease("a", 1000)), at(1001)),
            Ok(true)
        );
        let mut other = b;
        other.strategy = "example.com/Newest".into();
        assert_eq!(
            election_needed(&[other], Some(&lease("x", 0)), at(1)),
            Ok(false)
        );
    }

    #[test]
    fn the_lease_goes_to_the_electee_when_free_or_expired_else_it_is_preferred() {
        let free = elect(&lease("", 0), OLDEST_EMULATION_VERSION, Some("a"), at(1)).unwrap();
        assert_eq!(free["spec"]["holderIdentity"], "a");
        assert_eq!(free["spec"]["renewTime"], micro_time(at(1)));
        let mut marked = lease("b", 0);
        marked["spec"]["preferredHolder"] = json!("a");
        marked["spec"]["acquireTime"] = json!(micro_time(at(0)));
        let expired = elect(&marked, OLDEST_EMULATION_VERSION, Some("a"), at(10)).unwrap();
        assert_eq!(expired["spec"]["holderIdentity"], "a");
        assert!(expired["spec"].get("preferredHolder").is_none());
        assert!(expired["spec"].get("acquireTime").is_none());
        assert_eq!(
            expired["spec"]["leaseDurationSeconds"],
            LEASE_DURATION_SECONDS
        );
        let held = elect(&lease("b", 0), OLDEST_EMULATION_VERSION, Some("a"), at(1)).unwrap();
        assert_eq!(held["spec"]["holderIdentity"], "b");
        assert_eq!(held["spec"]["preferredHolder"], "a");
        assert!(elect(&lease("a", 0), OLDEST_EMULATION_VERSION, Some("a"), at(1)).is_none());
        // Another strategy: only the strategy is written.
        let theirs = elect(&lease("b", 0), "example.com/Newest", None, at(10)).unwrap();
        assert_eq!(theirs["spec"]["holderIdentity"], "b");
        assert_eq!(theirs["spec"]["strategy"], "example.com/Newest");
        // A garbled stored Lease is no panic.
        assert!(elect(&json!(3), OLDEST_EMULATION_VERSION, Some("a"), at(1)).is_none());
        let fixed = elect(
            &json!({"spec": 3}),
            OLDEST_EMULATION_VERSION,
            Some("a"),
            at(1),
        )
        .unwrap();
        assert_eq!(fixed["spec"]["holderIdentity"], "a");
        assert!(is_lease_expired(&json!({"spec": {"renewTime": 5}}), at(0)));
    }

    #[test]
    fn pings_awaiting_their_ack_call_for_no_step() {
        let mut pending = candidate("a", "1.32.0", "1.32.0", 0).object;
        pending["spec"]["pingTime"] = json!(micro_time(at(1)));
        assert_eq!(candidate_key(&pending), None);
        pending["spec"]["renewTime"] = json!(micro_time(at(2)));
        assert_eq!(
            candidate_key(&pending),
            Some(("kube-system".into(), "kube-scheduler".into()))
        );
        assert_eq!(candidate_key(&json!("garbage")), None);
        assert_eq!(object_key(&json!({"metadata": {"name": 1}})), None);
    }

    fn controller(storage: &Arc<MemoryStorage>) -> Controller {
        Controller {
            storage: storage.clone(),
            timing: Timing::default(),
        }
    }

    async fn write_candidate(
        storage: &MemoryStorage,
        name: &str,
        emulation: &str,
        renewed: Timestamp,
    ) {
        let body = json!({
            "metadata": {"name": name},
            "spec": {"leaseName": "kube-scheduler", "binaryVersion": "1.33.0",
                     "emulationVersion": emulation, "strategy": OLDEST_EMULATION_VERSION,
                     "renewTime": micro_time(renewed)},
        });
        rest::create(
            storage,
            &target(candidates(), "kube-system", None),
            body.to_string().as_bytes(),
        )
        .await
        .unwrap();
    }

    async fn read(storage: &MemoryStorage, resource: &'static Resource, name: &str) -> Value {
        rest::get(storage, &target(resource, "kube-system", Some(name)))
            .await
            .unwrap()
    }

    async fn ack(storage: &MemoryStorage, name: &str, now: Timestamp) {
        let mut object = read(storage, candidates(), name).await;
        object["spec"]["renewTime"] = json!(micro_time(now));
        rest::update(
            storage,
            &target(candidates(), "kube-system", Some(name)),
            object.to_string().as_bytes(),
        )
        .await
        .unwrap();
    }

    /// The steps of one election: pings, the wait for acks, then the Lease for the
    /// best candidate that acked.
    #[tokio::test]
    async fn an_election_pings_waits_and_elects_among_the_acks() {
        let storage = Arc::new(MemoryStorage::new(100));
        let c = controller(&storage);
        let key: Key = ("kube-system".into(), "kube-scheduler".into());
        let t0 = Timestamp::now();
        let t = |secs: i64| t0.saturating_add(SignedDuration::from_secs(secs)).unwrap();
        write_candidate(&storage, "deaf", "1.31.0", t(-60)).await;
        write_candidate(&storage, "new", "1.33.0", t(-60)).await;
        write_candidate(&storage, "old", "1.32.0", t(-60)).await;

        assert_eq!(c.reconcile(&key, t(0)).await, Some(REQUEUE_INTERVAL));
        for name in ["deaf", "new", "old"] {
            let pinged = read(&storage, candidates(), name).await;
            assert_eq!(pinged["spec"]["pingTime"], micro_time(t(0)), "{name}");
        }
        ack(&storage, "new", t(1)).await;
        ack(&storage, "old", t(1)).await;
        // "deaf" may still ack: no vote yet, and no second ping.
        assert_eq!(c.reconcile(&key, t(2)).await, Some(REQUEUE_INTERVAL));
        assert_eq!(
            read(&storage, candidates(), "deaf").await["spec"]["pingTime"],
            micro_time(t(0))
        );
        assert!(storage
            .get(&leases().key("kube-system", "kube-scheduler"))
            .await
            .unwrap()
            .is_none());
        // Past the election duration: the best of those that acked.
        assert_eq!(
            c.reconcile(
                &key,
                t(5).saturating_add(SignedDuration::from_millis(100))
                    .unwrap()
            )
            .await,
            Some(REQUEUE_INTERVAL)
        );
        let lease = read(&storage, leases(), "kube-scheduler").await;
        assert_eq!(lease["spec"]["holderIdentity"], "old");
        assert_eq!(lease["spec"]["strategy"], OLDEST_EMULATION_VERSION);
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 5);
        assert_eq!(lease["metadata"]["managedFields"][0]["manager"], MANAGER);
        // The best candidate holds it: nothing more to do.
        let rv = lease["metadata"]["resourceVersion"].clone();
        assert_eq!(c.reconcile(&key, t(6)).await, Some(REQUEUE_INTERVAL));
        assert_eq!(
            read(&storage, leases(), "kube-scheduler").await["metadata"]["resourceVersion"],
            rv
        );
    }

    #[tokio::test]
    async fn candidates_silent_for_30_minutes_are_left_out_and_deleted() {
        let storage = Arc::new(MemoryStorage::new(100));
        let c = controller(&storage);
        let now = Timestamp::now();
        let ago = |secs: i64| {
            now.saturating_add(SignedDuration::from_secs(-secs))
                .unwrap()
        };
        write_candidate(&storage, "gone", "1.30.0", ago(31 * 60)).await;
        write_candidate(&storage, "here", "1.33.0", ago(1)).await;
        let key: Key = ("kube-system".into(), "kube-scheduler".into());
        let admitted = c.admissible_candidates(&key, now).await.unwrap();
        let names: Vec<&str> = admitted.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["here"]);
        // "here" renewed within the election duration: elected without a ping.
        assert_eq!(c.reconcile(&key, now).await, Some(REQUEUE_INTERVAL));
        assert_eq!(
            read(&storage, leases(), "kube-scheduler").await["spec"]["holderIdentity"],
            "here"
        );
        c.collect_garbage(now).await;
        let (left, _) = storage.list(&candidates().prefix(None)).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["metadata"]["name"], "here");
    }

    #[tokio::test]
    async fn a_garbled_stored_candidate_is_no_panic() {
        let storage = Arc::new(MemoryStorage::new(100));
        let c = controller(&storage);
        let key = candidates().key("kube-system", "bad");
        storage
            .create(&key, json!({"metadata": {"name": "bad", "namespace": "kube-system"},
                                 "spec": {"leaseName": "l", "renewTime": micro_time(Timestamp::now()),
                                          "binaryVersion": 7, "strategy": ["x"]}}))
            .await
            .unwrap();
        storage
            .create(
                &candidates().key("kube-system", "worse"),
                json!("not an object"),
            )
            .await
            .unwrap();
        let lease: Key = ("kube-system".into(), "l".into());
        // The garbled candidate names no strategy: the Lease the controller would
        // write with it is refused by validation, as kube-apiserver's would be.
        assert_eq!(c.reconcile(&lease, Timestamp::now()).await, None);
        let lease_key = leases().key("kube-system", "l");
        assert!(storage.get(&lease_key).await.unwrap().is_none());
        c.collect_garbage(Timestamp::now()).await;
    }
}
