//! Prometheus metrics of an election, on the `prometheus-client` crate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::sync::lock_unpoisoned;

/// The label of every election metric: the election's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

fn renewal_histogram() -> Histogram {
    // 1 ms to about 33 s: a local lock answers in microseconds, a remote one in
    // milliseconds, a struggling one up to the renew deadline.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

type HistogramCtor = fn() -> Histogram;

/// The election metrics, registered once into the caller's [`Registry`] (no global
/// state) and shared by the elections that publish through it (cheap to clone).
///
/// | metric | type | what it counts |
/// | --- | --- | --- |
/// | `leader_election_master_status{name}` | gauge | 1 while this replica leads, else 0 (client-go's) |
/// | `leader_election_slowpath_total{name}` | counter | renewals whose compare-and-swap hit a conflict and had to read the record again (client-go's) |
/// | `leader_election_transitions_total{name}` | counter | terms this replica won; summed over the replicas, the election's changes of leader |
/// | `leader_election_renewal_duration_seconds{name}` | histogram | how long each renewal attempt took, successful or not |
/// | `leader_election_renewal_failures_total{name}` | counter | renewal attempts that failed (a backend error or a timeout) |
/// | `leader_election_leaderless_seconds_total{name}` | counter | seconds this replica saw no live leader: no holder in the record (released, deleted, not created yet) or the holder's lease expired as observed; it grows while the outage lasts, so `rate()` of it is the leaderless fraction of time |
///
/// `name` is [`Config::name`](crate::Config::name). One [`Metrics`] serves any number
/// of elections (each its own `name`), of either loop.
///
/// # Examples
///
/// ```
/// use leaderelection::{Config, LeaderElector, MemoryStore, Metrics};
/// use prometheus_client::registry::Registry;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut registry = Registry::default();
/// let metrics = Metrics::new(&mut registry);
/// let store = MemoryStore::new();
/// for name in ["scheduler", "controller"] {
///     let elector = LeaderElector::new(store.lock(name), Config::new(name).identity("a"))?;
///     elector.set_metrics(&metrics);
/// }
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains(r#"leader_election_master_status{name="scheduler"} 0"#));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Metrics {
    master_status: Family<NameLabel, Gauge>,
    slowpath: Family<NameLabel, Counter>,
    transitions: Family<NameLabel, Counter>,
    renewal_duration: Family<NameLabel, Histogram, HistogramCtor>,
    renewal_failures: Family<NameLabel, Counter>,
    leaderless: Family<NameLabel, Leaderless>,
}

impl Metrics {
    /// Registers the election metrics (see the table on [`Metrics`]) into `registry`.
    ///
    /// Call it once per registry; a second call registers the names twice.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            master_status: Family::default(),
            slowpath: Family::default(),
            transitions: Family::default(),
            renewal_duration: Family::new_with_constructor(renewal_histogram),
            renewal_failures: Family::default(),
            leaderless: Family::default(),
        };
        registry.register(
            "leader_election_master_status",
            "Whether this replica leads the election (1) or not (0)",
            m.master_status.clone(),
        );
        registry.register(
            "leader_election_slowpath",
            "Renewals that hit a conflict and had to read the record again",
            m.slowpath.clone(),
        );
        registry.register(
            "leader_election_transitions",
            "Terms this replica won",
            m.transitions.clone(),
        );
        registry.register(
            "leader_election_renewal_duration_seconds",
            "Time each renewal attempt took, successful or not",
            m.renewal_duration.clone(),
        );
        registry.register(
            "leader_election_renewal_failures",
            "Renewal attempts that failed with a backend error or a timeout",
            m.renewal_failures.clone(),
        );
        registry.register(
            "leader_election_leaderless_seconds",
            "Seconds this replica saw no live leader",
            m.leaderless.clone(),
        );
        m
    }

    /// The series of one election.
    pub(crate) fn election(&self, name: &str) -> ElectionMetrics {
        let label = NameLabel {
            name: name.to_owned(),
        };
        ElectionMetrics {
            master_status: self.master_status.get_or_create_owned(&label),
            slowpath: self.slowpath.get_or_create_owned(&label),
            transitions: self.transitions.get_or_create_owned(&label),
            renewal_duration: self.renewal_duration.get_or_create_owned(&label),
            renewal_failures: self.renewal_failures.get_or_create_owned(&label),
            leaderless: self.leaderless.get_or_create_owned(&label),
        }
    }
}

/// One election's series, held by its reporter.
#[derive(Clone, Debug)]
pub(crate) struct ElectionMetrics {
    pub(crate) master_status: Gauge,
    pub(crate) slowpath: Counter,
    pub(crate) transitions: Counter,
    pub(crate) renewal_duration: Histogram,
    pub(crate) renewal_failures: Counter,
    pub(crate) leaderless: Leaderless,
}

/// A counter of leaderless seconds that includes the leaderless period still going
/// on at scrape time, on tokio's clock (so paused-clock tests can read it).
#[derive(Clone, Debug, Default)]
pub(crate) struct Leaderless(Arc<Mutex<LeaderlessState>>);

#[derive(Debug, Default)]
struct LeaderlessState {
    total: Duration,
    since: Option<Instant>,
}

impl Leaderless {
    /// A leaderless period begins now, unless one is already running.
    pub(crate) fn start(&self) {
        let mut s = lock_unpoisoned(&self.0);
        if s.since.is_none() {
            s.since = Some(Instant::now());
        }
    }

    /// A leader is seen: the running period, if any, ends now.
    pub(crate) fn stop(&self) {
        let mut s = lock_unpoisoned(&self.0);
        if let Some(since) = s.since.take() {
            s.total += since.elapsed();
        }
    }

    fn seconds(&self) -> f64 {
        let s = lock_unpoisoned(&self.0);
        (s.total + s.since.map_or(Duration::ZERO, |t| t.elapsed())).as_secs_f64()
    }
}

impl TypedMetric for Leaderless {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Leaderless {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.seconds(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
