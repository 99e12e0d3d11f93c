//! What an election reports: the observed leader, and each change of leadership.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::{mpsc, watch};
use tracing::info;

#[cfg(feature = "metrics")]
use crate::metrics::{ElectionMetrics, Metrics};
use crate::record::truncate;
use crate::sync::lock_unpoisoned;

/// What the elector last saw, published through `subscribe` (of [`LeaderElector`](crate::LeaderElector) and `EtcdElection`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The holder in the last record observed; `None` when released or absent.
    pub leader: Option<String>,
    /// Whether this replica leads.
    pub is_leader: bool,
}

/// A change of leadership, reported once each through `events`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElectionEvent {
    /// This replica became leader (client-go's `OnStartedLeading`).
    StartedLeading {
        /// The fencing token of the new term.
        fencing_token: u64,
    },
    /// This replica stopped leading (client-go's `OnStoppedLeading`).
    StoppedLeading,
    /// The observed holder changed (client-go's `OnNewLeader`); `None` when the lease
    /// was released or the record is absent.
    NewLeader(Option<String>),
}

/// The published side of an election: its [`Status`] and the subscribers of its
/// [`ElectionEvent`]s, its readiness and its metrics. Shared by every election loop
/// of the crate: the loops report what happened, this decides what it shows.
#[derive(Debug)]
pub(crate) struct Reporter {
    identity: String,
    status: watch::Sender<Status>,
    events: Subscribers,
    /// Set once the loop has read the record (or the election) once.
    observed: AtomicBool,
    #[cfg(feature = "metrics")]
    metrics: Mutex<Option<ElectionMetrics>>,
}

impl Reporter {
    pub(crate) fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_owned(),
            status: watch::Sender::new(Status::default()),
            events: Subscribers::default(),
            observed: AtomicBool::new(false),
            #[cfg(feature = "metrics")]
            metrics: Mutex::new(None),
        }
    }

    /// Whether the loop has observed the election once.
    pub(crate) fn is_ready(&self) -> bool {
        self.observed.load(Ordering::Acquire)
    }

    /// Publishes from now on into `metrics`, as election `name`.
    #[cfg(feature = "metrics")]
    pub(crate) fn set_metrics(&self, metrics: &Metrics, name: &str) {
        let m = metrics.election(name);
        let status = self.status.borrow().clone();
        m.master_status.set(i64::from(status.is_leader));
        if self.is_ready() && status.leader.is_none() {
            m.leaderless.start();
        }
        *lock_unpoisoned(&self.metrics) = Some(m);
    }

    #[cfg(feature = "metrics")]
    fn with_metrics(&self, f: impl FnOnce(&ElectionMetrics)) {
        if let Some(m) = lock_unpoisoned(&self.metrics).as_ref() {
            f(m);
        }
    }

    /// A renewal attempt ended after `took`; `failed` when the backend failed or
    /// timed out (a lost term is not a failure).
    pub(crate) fn renewal(&self, _took: std::time::Duration, _failed: bool) {
        #[cfg(feature = "metrics")]
        self.with_metrics(|m| {
            m.renewal_duration.observe(_took.as_secs_f64());
            if _failed {
                m.renewal_failures.inc();
            }
        });
    }

    /// A renewal's compare-and-swap hit a conflict and the record had to be read
    /// again (client-go's slow path).
    pub(crate) fn slow_path(&self) {
        #[cfg(feature = "metrics")]
        self.with_metrics(|m| {
            m.slowpath.inc();
        });
    }

    /// The observed holder's lease ran out (or the lease is free): nobody leads as
    /// this replica sees it, until a holder is published again.
    pub(crate) fn no_live_leader(&self) {
        #[cfg(feature = "metrics")]
        self.with_metrics(|m| m.leaderless.start());
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.status.borrow().is_leader
    }

    pub(crate) fn leader(&self) -> Option<String> {
        self.status.borrow().leader.clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub(crate) fn events(&self) -> mpsc::UnboundedReceiver<ElectionEvent> {
        self.events.subscribe()
    }

    /// Publishes the observed leader; a change of leader is reported once.
    pub(crate) fn set_leader(&self, leader: Option<String>, is_leader: bool) {
        self.observed.store(true, Ordering::Release);
        #[cfg(feature = "metrics")]
        self.with_metrics(|m| {
            m.master_status.set(i64::from(is_leader));
            match leader {
                None => m.leaderless.start(),
                Some(_) => m.leaderless.stop(),
            }
        });
        let mut new_leader = None;
        self.status.send_if_modified(|s| {
            if s.leader != leader {
                new_leader = Some(leader.clone());
                if let Some(l) = &leader {
                    if !is_leader && *l != self.identity {
                        // The identity comes from the store: quote only its start.
                        info!(leader = %truncate(l, 256), "new leader elected");
                    }
                }
            }
            let changed = s.leader != leader || s.is_leader != is_leader;
            s.leader = leader;
            s.is_leader = is_leader;
            changed
        });
        if let Some(l) = new_leader {
            self.emit(ElectionEvent::NewLeader(l));
        }
    }

    pub(crate) fn emit(&self, event: ElectionEvent) {
        #[cfg(feature = "metrics")]
        if matches!(event, ElectionEvent::StartedLeading { .. }) {
            self.with_metrics(|m| {
                m.transitions.inc();
            });
        }
        self.events.send(&event);
    }
}

/// The receivers of an election's [`ElectionEvent`]s: each gets every event sent
/// after it subscribed, in order; a dropped receiver is forgotten at the next send.
#[derive(Debug, Default)]
pub(crate) struct Subscribers(Mutex<Vec<mpsc::UnboundedSender<ElectionEvent>>>);

impl Subscribers {
    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<ElectionEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock_unpoisoned(&self.0).push(tx);
        rx
    }

    pub(crate) fn send(&self, event: &ElectionEvent) {
        lock_unpoisoned(&self.0).retain(|tx| tx.send(event.clone()).is_ok());
    }
}

/// The readiness and metrics methods every election type exposes, over its
/// `self.shared.core`.
macro_rules! reporting {
    () => {
        /// Readiness: true once this replica has observed the election (read the
        /// record, or the election's keys, once), so what it reports means something.
        /// Serve it as a readiness probe beside [`check_health`](Self::check_health)
        /// as the liveness probe.
        ///
        /// # Examples
        ///
        /// `/healthz` and `/readyz` on axum:
        ///
        /// ```no_run
        /// # use leaderelection::{Config, LeaderElector, MemoryStore};
        /// use axum::{http::StatusCode, routing::get, Router};
        /// use std::time::Duration;
        ///
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let elector = LeaderElector::new(MemoryStore::new().lock("a"), Config::new("a"))?;
        /// let (live, ready) = (elector.clone(), elector.clone());
        /// let app = Router::new()
        ///     .route("/healthz", get(move || async move {
        ///         match live.check_health(Duration::from_secs(20)) {
        ///             Ok(()) => (StatusCode::OK, "ok".to_owned()),
        ///             Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        ///         }
        ///     }))
        ///     .route("/readyz", get(move || async move {
        ///         if ready.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
        ///     }));
        /// let listener = tokio::net::TcpListener::bind("127.0.0.1:10259").await?;
        /// axum::serve(listener, app).await?;
        /// # Ok(()) }
        /// ```
        pub fn is_ready(&self) -> bool {
            self.shared.core.report.is_ready()
        }

        /// Publishes this election's metrics into `metrics` from now on, labelled
        /// with [`Config::name`](crate::Config::name); one [`Metrics`](crate::Metrics)
        /// serves many elections.
        #[cfg(feature = "metrics")]
        #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
        pub fn set_metrics(&self, metrics: &$crate::Metrics) {
            self.shared
                .core
                .report
                .set_metrics(metrics, &self.shared.core.config.name);
        }

        /// Registers the election [`Metrics`](crate::Metrics) into `registry` and
        /// publishes this election's into them: [`Metrics::new`](crate::Metrics::new)
        /// then [`set_metrics`](Self::set_metrics). For several elections in one
        /// registry, call those two instead.
        #[cfg(feature = "metrics")]
        #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
        pub fn register_metrics(
            &self,
            registry: &mut prometheus_client::registry::Registry,
        ) -> $crate::Metrics {
            let metrics = $crate::Metrics::new(registry);
            self.set_metrics(&metrics);
            metrics
        }
    };
}
pub(crate) use reporting;
