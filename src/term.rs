//! A leader's term, supervised the same way for every election loop.
//!
//! An election loop (the [`LeaderElector`](crate::LeaderElector) over a lock,
//! `EtcdElection` over etcd's election keys) campaigns in its own way; once it wins,
//! it hands a [`Term`] to [`Core::run`], which owns everything a leader does: spawn
//! the work with its [`Leadership`], renew on the retry period within the renew
//! deadline, move `valid_until`, step down at once when the backend says the term is
//! over, abort work that will not stop, release after the work stopped, and publish
//! status, events and health. One implementation, so the loops cannot drift apart.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument, Span};

use crate::config::Config;
use crate::error::{ConfigError, HealthError, LockError};
use crate::leadership::Leadership;
use crate::record::truncate;
use crate::status::{ElectionEvent, Reporter};
use crate::sync::lock_unpoisoned;

/// Why a renewal did not succeed.
pub(crate) enum Renewal {
    /// Someone else holds the leadership, or it is gone; the holder when known.
    Lost(Option<String>),
    /// The backend failed; retried until the renew deadline.
    Failed(LockError),
}

/// The backend's side of one term: what renewing and giving up mean there.
#[async_trait]
pub(crate) trait Term: Send {
    /// One renewal, finished by `deadline`. On success, the instant the renewal that
    /// succeeded began: the leader may act until then plus the renew deadline.
    async fn renew(&mut self, deadline: Instant) -> Result<Instant, Renewal>;

    /// Completes when the backend shows, between renewals, that the term is over (the
    /// holder that took over, when known); a backend that cannot tell stays pending.
    ///
    /// Cancel safe: it is polled beside the renewal timer and dropped when that fires.
    async fn lost_early(&mut self) -> Option<String>;

    /// Gives the leadership up for the others to take at once; the work has stopped.
    async fn release(&mut self, last_success: Instant);

    /// Cleans up after the term was lost, once the work has stopped.
    async fn abandon(&mut self) {}
}

/// A term just won, with what its [`Leadership`] starts from.
pub(crate) struct Elected<T> {
    pub(crate) term: T,
    pub(crate) fencing_token: u64,
    /// When the term began: the acquiring request's send, or for a queue (the etcd
    /// election) the moment the candidate learned that it leads.
    pub(crate) acquired_at: Instant,
    /// What validity counts from: the acquiring request's send, or the keep-alive the
    /// term starts from, which can be much older than the term.
    pub(crate) valid_from: Instant,
}

enum Outcome {
    Lost,
    Shutdown,
}

/// What every election loop has: its configuration, what it reports, and the health
/// of the current term.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) report: Reporter,
    last_renewal: Mutex<Option<Instant>>,
}

impl Core {
    /// A core for `config`, after checking it as client-go does.
    pub(crate) fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            report: Reporter::new(&config.identity),
            config,
            last_renewal: Mutex::new(None),
        })
    }

    /// See the `check_health` the election types expose.
    pub(crate) fn check_health(&self, tolerance: Duration) -> Result<(), HealthError> {
        if !self.report.is_leader() {
            return Ok(());
        }
        let Some(last) = *lock_unpoisoned(&self.last_renewal) else {
            return Ok(());
        };
        let since = last.elapsed();
        if since > self.config.lease_duration + tolerance {
            return Err(HealthError {
                name: self.config.name.clone(),
                since,
            });
        }
        Ok(())
    }

    /// Campaigns, leads each term won, and campaigns again after a loss, until
    /// shutdown (or, with `recampaign` off, the first loss). `campaign` returns `None`
    /// on shutdown. Logged in `span`; `on` says where the election is held.
    pub(crate) async fn run<T, C, F, Fut>(
        &self,
        span: Span,
        on: String,
        shutdown: &CancellationToken,
        mut campaign: impl FnMut() -> C,
        on_started_leading: &mut F,
    ) where
        T: Term,
        C: Future<Output = Option<Elected<T>>>,
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        async {
            info!(on = %on, "starting leader election");
            // Boxed, each only while it runs: inline, the loop's future is as large as
            // the larger of the two all the time (about 1.9 KiB), in every election.
            while let Some(elected) = Box::pin(campaign()).await {
                let outcome = Box::pin(self.lead(elected, shutdown, on_started_leading)).await;
                if matches!(outcome, Outcome::Shutdown) || !self.config.recampaign {
                    break;
                }
            }
            info!("leader election stopped");
        }
        .instrument(span)
        .await
    }

    async fn lead<T, F, Fut>(
        &self,
        elected: Elected<T>,
        shutdown: &CancellationToken,
        on_started_leading: &mut F,
    ) -> Outcome
    where
        T: Term,
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = &self.config;
        let Elected {
            mut term,
            fencing_token,
            acquired_at,
            valid_from,
        } = elected;
        let lost = CancellationToken::new();
        // If this future is dropped (the caller's select!, an aborted task, a panic in
        // a backend), the work, a task of its own, must still learn that nobody renews.
        let _lost_on_drop = lost.clone().drop_guard();
        let (valid_tx, valid_rx) = watch::channel(valid_from + config.renew_deadline);
        let mut last_success = valid_from;
        self.renewed(Some(valid_from));
        info!(fencing_token, "started leading");
        self.report.set_leader(Some(config.identity.clone()), true);
        self.report
            .emit(ElectionEvent::StartedLeading { fencing_token });

        let leadership = Leadership::new(
            config.identity.clone(),
            fencing_token,
            acquired_at,
            lost.clone(),
            valid_rx,
        );
        let mut work: JoinHandle<()> = tokio::spawn(on_started_leading(leadership));
        let mut work_done = false;
        let mut stopping_since: Option<Instant> = None;
        let mut next_renew = valid_from + config.retry_period;

        let outcome = loop {
            let deadline = last_success + config.renew_deadline;
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if stopping_since.is_none() => {
                    info!("shutting down: stopping the leader's work");
                    lost.cancel();
                    stopping_since = Some(Instant::now());
                    if work_done {
                        break Outcome::Shutdown;
                    }
                }
                res = &mut work, if !work_done => {
                    work_done = true;
                    if let Err(e) = res {
                        error!(error = %e, "the leader's work panicked");
                    }
                    if stopping_since.is_some() {
                        break Outcome::Shutdown;
                    }
                }
                _ = sleep_until(next_renew) => {
                    if let Some(since) = stopping_since {
                        if Instant::now() >= since + config.lease_duration {
                            error!("the leader's work did not stop within the lease duration; aborting it and not releasing");
                            work.abort();
                            // Not released: the work may still be in flight. Standbys
                            // take over when the lease expires.
                            self.step_down(&lost, &mut work, work_done, last_success).await;
                            return Outcome::Shutdown;
                        }
                    }
                    let attempt = Instant::now();
                    let renewal = term.renew(deadline).await;
                    self.report.renewal(attempt.elapsed(), matches!(renewal, Err(Renewal::Failed(_))));
                    match renewal {
                        Ok(at) => {
                            last_success = at;
                            self.renewed(Some(at));
                            valid_tx.send_replace(at + config.renew_deadline);
                            debug!("renewed");
                            next_renew = at + config.retry_period;
                        }
                        Err(Renewal::Lost(holder)) => {
                            info!(new_leader = ?holder.as_deref().map(|h| truncate(h, 256)), "leadership taken or gone; stepping down");
                            break Outcome::Lost;
                        }
                        Err(Renewal::Failed(e)) => {
                            let now = Instant::now();
                            if now >= deadline {
                                error!(error = %e, "failed to renew within the renew deadline; stepping down");
                                break Outcome::Lost;
                            }
                            warn!(error = %e, "failed to renew; retrying");
                            next_renew = (now + config.retry_period).min(deadline);
                        }
                    }
                }
                holder = term.lost_early() => {
                    info!(new_leader = ?holder.as_deref().map(|h| truncate(h, 256)), "leadership ended before the next renewal; stepping down");
                    break Outcome::Lost;
                }
            }
        };

        match outcome {
            Outcome::Shutdown => {
                // The work has stopped: release so a standby takes over at once.
                if config.release_on_cancel {
                    term.release(last_success).await;
                }
                self.step_down(&lost, &mut work, true, last_success).await;
            }
            Outcome::Lost => {
                self.step_down(&lost, &mut work, work_done, last_success)
                    .await;
                term.abandon().await;
            }
        }
        outcome
    }

    /// Ends a term: fires the token, waits for the work until the lease could expire
    /// for the others, and publishes the change.
    async fn step_down(
        &self,
        lost: &CancellationToken,
        work: &mut JoinHandle<()>,
        work_done: bool,
        last_success: Instant,
    ) {
        lost.cancel();
        // Who leads now is unknown until the next read; keep the last leader seen.
        self.report.set_leader(self.report.leader(), false);
        self.renewed(None);
        info!("stopped leading");
        self.report.emit(ElectionEvent::StoppedLeading);
        if work_done {
            return;
        }
        let others_may_lead = last_success + self.config.lease_duration;
        match timeout_at(others_may_lead, &mut *work).await {
            Ok(Err(e)) if e.is_panic() => error!(error = %e, "the leader's work panicked"),
            Ok(_) => {}
            Err(_) => {
                error!("the leader's work outlived its lease; aborting it");
                work.abort();
            }
        }
    }

    fn renewed(&self, at: Option<Instant>) {
        *lock_unpoisoned(&self.last_renewal) = at;
    }

    /// One backend call, bounded by [`Config::request_timeout`].
    pub(crate) async fn call<T, E: From<LockError>>(
        &self,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let limit = self.config.request_timeout();
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err(E::from(LockError::Timeout(limit))))
    }

    /// Sleeps a jittered retry period after a failure, unless shut down first; false
    /// on shutdown.
    pub(crate) async fn back_off(&self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(self.config.jittered_retry()) => true,
        }
    }
}

/// The observers every election type exposes, over its `self.shared.core`; the
/// argument documents `leader()`, whose source differs by backend.
macro_rules! observers {
    ($leader_doc:literal) => {
        $crate::status::reporting!();

        /// The configuration.
        pub fn config(&self) -> &$crate::Config {
            &self.shared.core.config
        }

        /// True while this replica leads.
        pub fn is_leader(&self) -> bool {
            self.shared.core.report.is_leader()
        }

        #[doc = $leader_doc]
        pub fn leader(&self) -> Option<String> {
            self.shared.core.report.leader()
        }

        /// The current [`Status`](crate::Status), updated on every change.
        pub fn subscribe(&self) -> tokio::sync::watch::Receiver<$crate::Status> {
            self.shared.core.report.subscribe()
        }

        /// Every change of leadership from now on, each reported once, in order.
        ///
        /// The channel is unbounded; drop the receiver when no longer interested.
        pub fn events(&self) -> tokio::sync::mpsc::UnboundedReceiver<$crate::ElectionEvent> {
            self.shared.core.report.events()
        }

        /// client-go's `HealthzAdaptor`: healthy unless this replica believes it leads
        /// and its last successful renewal began more than `lease_duration + tolerance`
        /// ago (the elector is stuck: a blocked runtime, a hung backend call).
        ///
        /// # Errors
        ///
        /// [`HealthError`](crate::HealthError) with the time since the last renewal.
        pub fn check_health(
            &self,
            tolerance: std::time::Duration,
        ) -> Result<(), $crate::HealthError> {
            self.shared.core.check_health(tolerance)
        }
    };
}
pub(crate) use observers;
