//! Two replicas on a real backend, and the check that a record deleted or rewritten
//! under the leader by someone else is not taken before the leader's lease ran out:
//! the leader's [start, stop] of work never overlaps the next leader's.
//!
//! Shared by the backends' test binaries through `#[path]`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaderelection::{Config, LeaderElector, Leadership, LeaseLock};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// One term as the work saw it: from its start until it had stopped.
#[derive(Clone, Debug)]
pub struct Span {
    pub who: String,
    pub start: Instant,
    pub end: Option<Instant>,
}

pub type Spans = Arc<Mutex<Vec<Span>>>;

/// How long the leader's work takes to stop after `lost` fires, as real work does: a
/// successor that leads before that overlaps it.
pub const WORK_STOP: Duration = Duration::from_millis(1000);

/// The work of replica `who`: records its span, and stops `WORK_STOP` after `lost`.
pub fn work(
    who: &str,
    spans: &Spans,
) -> impl FnMut(Leadership) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
    let (who, spans) = (who.to_owned(), spans.clone());
    move |leadership| {
        let (who, spans) = (who.clone(), spans.clone());
        Box::pin(async move {
            let index = {
                let mut s = spans.lock().unwrap();
                s.push(Span {
                    who,
                    start: Instant::now(),
                    end: None,
                });
                s.len() - 1
            };
            leadership.lost().await;
            sleep(WORK_STOP).await;
            spans.lock().unwrap()[index].end = Some(Instant::now());
        })
    }
}

/// A replica running in a task.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    pub is_leader: Box<dyn Fn() -> bool + Send + Sync>,
    pub leader: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

impl Running {
    pub fn elector(who: &str, lock: impl LeaseLock, config: Config, spans: &Spans) -> Self {
        let elector = LeaderElector::new(lock, config).expect("valid config");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (elector, shutdown, work) = (elector.clone(), shutdown.clone(), work(who, spans));
            async move { elector.run(shutdown, work).await }
        });
        let e = elector.clone();
        Self {
            shutdown,
            task,
            is_leader: Box::new(move || elector.is_leader()),
            leader: Box::new(move || e.leader()),
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the replica stops")
            .unwrap();
    }
}

pub async fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Short timings: lease 3s, renew deadline 2s, retry 0.5s.
pub fn fast(name: &str, identity: &str) -> Config {
    Config::new(name)
        .identity(identity)
        .lease_duration(Duration::from_secs(3))
        .renew_deadline(Duration::from_secs(2))
        .retry_period(Duration::from_millis(500))
}

/// Waits until `a` leads, then until `b` follows it by watch for a moment.
pub async fn leader_and_standby(a: &Running, b: &Running) {
    wait("a leads", Duration::from_secs(20), || (a.is_leader)()).await;
    wait("b follows a", Duration::from_secs(20), || {
        (b.leader)().as_deref() == Some("a")
    })
    .await;
    sleep(Duration::from_millis(700)).await;
}

/// The earliest a standby may take a record tampered with at `tampered_at` under a
/// leader with `lease` and `retry`: the leader renewed, and the standby saw it, at most
/// `retry` before; one more second for slow machines.
pub fn lease_out(tampered_at: Instant, lease: Duration, retry: Duration) -> Instant {
    tampered_at + lease - retry - Duration::from_secs(1)
}

/// After the record was tampered with at `tampered_at` while `a` led (retry `retry`):
/// `a` stops promptly, `b` takes over, not before `earliest` and not before `a`'s work
/// stopped. Stops both.
pub async fn check_takeover(
    what: &str,
    spans: &Spans,
    (a, b): (Running, Running),
    tampered_at: Instant,
    earliest: Instant,
    retry: Duration,
) {
    // b's work, a task of its own, records its span a moment after b leads.
    wait(&format!("{what}: b leads"), Duration::from_secs(30), || {
        (b.is_leader)() && spans.lock().unwrap().iter().any(|s| s.who == "b")
    })
    .await;
    wait(
        &format!("{what}: a's work stopped"),
        Duration::from_secs(10),
        || {
            spans
                .lock()
                .unwrap()
                .iter()
                .all(|s| s.end.is_some() || s.who != "a")
        },
    )
    .await;
    let all = spans.lock().unwrap().clone();
    let a_span = all.iter().find(|s| s.who == "a").expect("a led");
    let b_span = all.iter().find(|s| s.who == "b").expect("b led");
    let a_end = a_span.end.expect("a stopped");
    eprintln!(
        "{what}: a stopped {:?} and b led {:?} after the tampering",
        a_end - tampered_at,
        b_span.start - tampered_at
    );
    assert!(
        a_end <= b_span.start,
        "{what}: a's work ran until {:?} after b began: two leaders",
        a_end - b_span.start
    );
    assert!(
        b_span.start >= earliest,
        "{what}: b led {:?} after the tampering, before a's lease could have run out",
        b_span.start - tampered_at
    );
    // a itself stops promptly, not at its lease's end.
    assert!(
        a_end - tampered_at <= retry + WORK_STOP + Duration::from_secs(1),
        "{what}: a stopped only {:?} after the tampering",
        a_end - tampered_at
    );
    b.stop().await;
    a.stop().await;
}
