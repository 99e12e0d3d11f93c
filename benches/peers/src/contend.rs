//! One replica of a peer library for the election benchmark's contention section
//! (`benches/election/contention.rs`): it campaigns on one Lease, and its work prints
//! the test kit checker's lines while the library says it leads:
//!
//! ```text
//! BEGIN <token> <identity>    the work starts (the library reports leading)
//! ACT <token> <identity>      one action, every 100 ms while leading
//! END <token> <identity>      the work stops (the library reports not leading)
//! ```
//!
//! It runs until its standard input closes; the benchmark stops it with SIGSTOP and
//! kills it with SIGKILL meanwhile.
//!
//! ```text
//! leaderelection-bench-peers contend kube-leader-election|kube-coordinate|kubert|kunobi-ha URL TOKEN ELECTION IDENTITY
//! ```

use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::time::Duration;

use kube_leader_election::LeaseLockResult;
use leaderelection_bench_driver::scenario::Timings;
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, watch};

use crate::common;

/// How often a leader's work acts while it believes it leads.
const ACT_EVERY: Duration = Duration::from_millis(100);

/// Lease 2 s, renew deadline 1.5 s, retry 1 s, as for our replicas.
const TIMINGS: Timings = Timings::SHORT;

/// Runs one replica: `PEER URL TOKEN ELECTION IDENTITY`.
///
/// # Errors
///
/// Bad arguments, or a replica that cannot start.
pub async fn run(args: &[String]) -> Result<(), String> {
    let [peer, url, token, election, identity] = args else {
        return Err(format!(
            "usage: contend kube-leader-election|kube-coordinate|kubert|kunobi-ha URL TOKEN ELECTION IDENTITY (got {} arguments)",
            args.len()
        ));
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("bad server URL {url:?}: {e}"))?;
    let campaign = match peer.as_str() {
        "kube-leader-election" => {
            kube_leader_election(common::kube4(uri, token, None)?, election, identity)
        }
        "kube-coordinate" => kube_coordinate(common::kube2(uri, token, None)?, election, identity)?,
        "kubert" => kubert(common::kube_client_1(uri, token, None)?, election, identity).await?,
        "kunobi-ha" => kunobi(common::kube4(uri, token, None)?, election, identity),
        other => return Err(format!("unknown peer {other:?}")),
    };
    work(campaign.leading, campaign.may_act, identity).await;
    campaign.step_down.await;
    Ok(())
}

/// What a replica's campaign tells its work.
struct Campaign {
    /// `Some(token)` while the library says this replica leads, with the term's fencing
    /// token (0 for a library that exposes none).
    leading: watch::Receiver<Option<u64>>,
    /// Asked before each action: whether the library still lets this replica act.
    may_act: Box<dyn Fn() -> bool + Send>,
    /// Stops the campaign (releasing where the library does) once the work stopped.
    step_down: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// A campaign whose `task` publishes into `rx`'s channel until `stop` fires.
fn campaign(
    rx: watch::Receiver<Option<u64>>,
    may_act: Box<dyn Fn() -> bool + Send>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
) -> Campaign {
    Campaign {
        leading: rx,
        may_act,
        step_down: Box::pin(async move {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }),
    }
}

/// Publishes `token` when it differs from the last one.
fn publish(tx: &watch::Sender<Option<u64>>, token: Option<u64>) {
    tx.send_if_modified(|v| std::mem::replace(v, token) != token);
}

/// kube-leader-election as its README says: `try_acquire_or_renew` every retry period
/// in a task of its own, its result shared with the work. It leads while the last call
/// answered `Acquired` (an error counts as not leading). The token is the
/// `leaseTransitions` of the Lease that call returned: the library increments it when it
/// takes the Lease from another holder, with a merge patch that carries no
/// resourceVersion, so two candidates can take it at once with the same number.
fn kube_leader_election(client: kube::Client, election: &str, identity: &str) -> Campaign {
    let lock = crate::kle::lock(client, election, identity, TIMINGS.lease);
    let (tx, rx) = watch::channel(None);
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TIMINGS.retry);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tick.tick() => {}
            }
            let token = match lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(lease)) => Some(
                    lease
                        .spec
                        .and_then(|s| s.lease_transitions)
                        .map_or(0, |t| t.max(0) as u64),
                ),
                Ok(LeaseLockResult::NotAcquired(_)) | Err(_) => None,
            };
            // A new token while leading is a new term: the Lease was taken meanwhile.
            publish(&tx, token);
        }
        if tx.borrow().is_some() {
            let _ = lock.step_down().await;
        }
    });
    campaign(rx, Box::new(|| true), stop_tx, task)
}

/// kube-coordinate as its README says: a spawned `LeaderElector`, leadership read from
/// its state channel, `shutdown` to stop. It exposes no token.
fn kube_coordinate(
    client: kube2::Client,
    election: &str,
    identity: &str,
) -> Result<Campaign, String> {
    let config = crate::coordinate::config(election, identity, TIMINGS);
    let handle =
        kube_coordinate::LeaderElector::spawn(config, client).map_err(|e| e.to_string())?;
    let mut state = handle.state();
    let (tx, rx) = watch::channel(None);
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            publish(&tx, state.borrow_and_update().is_leader().then_some(0));
            tokio::select! {
                _ = &mut stop_rx => break,
                changed = state.changed() => if changed.is_err() { break },
            }
        }
        let _ = handle.shutdown().await;
    });
    Ok(campaign(rx, Box::new(|| true), stop_tx, task))
}

/// kubert's Lease manager as its docs and Linkerd's policy controller use it: the Lease
/// created if missing, `LeaseManager::init`, then `spawn`, which claims and renews
/// `lease - retry` before expiry; the work acts while the claim `is_current_for` this
/// replica (its holder, and its expiry not yet passed on the wall clock). Dropping
/// every receiver of the claims vacates the Lease. It exposes no token.
async fn kubert(
    client: kube_client_1::Client,
    election: &str,
    identity: &str,
) -> Result<Campaign, String> {
    let api = kube_client_1::Api::namespaced(client, crate::NAMESPACE);
    let manager = crate::kubert_lease::manager(api, election).await?;
    let (mut claims, manager_task) = manager
        .spawn(identity.to_owned(), crate::kubert_lease::params(TIMINGS))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = watch::channel(None);
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let check = claims.clone();
    let id = identity.to_owned();
    let may_act = Box::new(move || check.borrow().is_current_for(&id));
    let id = identity.to_owned();
    let task = tokio::spawn(async move {
        loop {
            let claim = claims.borrow_and_update().clone();
            let current = claim.is_current_for(&id);
            publish(&tx, current.then_some(0));
            tokio::select! {
                _ = &mut stop_rx => break,
                changed = claims.changed() => if changed.is_err() { break },
                // The claim runs out on the wall clock without a change on the channel.
                _ = claim.expire(), if current => {}
            }
        }
        drop(claims);
        let _ = manager_task.await;
    });
    Ok(campaign(rx, may_act, stop_tx, task))
}

/// kunobi-ha as its README says: `acquire().await` for a guard, `guard.lost()` watched
/// beside the work, `guard.step_down()` to stop, and the election rejoined when
/// leadership is lost; the work acts while its `LeaderState` says it leads (the handle
/// its README gates readiness on). It exposes no token. The campaign is its handover
/// and failover replicas' (`kunobi::campaign`).
fn kunobi(client: kube::Client, election: &str, identity: &str) -> Campaign {
    let le = crate::kunobi::election(client, election, identity, TIMINGS);
    let state = le.state();
    let (tx, rx) = watch::channel(None);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(crate::kunobi::campaign(le, stop_rx, move |leads| {
        publish(&tx, leads.then_some(0));
    }));
    campaign(rx, Box::new(move || state.is_leader()), stop_tx, task)
}

/// The leader's work: a term per stretch of `Some(token)`, an action every
/// [`ACT_EVERY`] within it; returns when standard input closes.
async fn work(
    mut leading: watch::Receiver<Option<u64>>,
    may_act: Box<dyn Fn() -> bool + Send>,
    identity: &str,
) {
    let mut stdin_closed = Box::pin(async {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    });
    let mut term: Option<Term> = None;
    let mut act = tokio::time::interval(ACT_EVERY);
    // After a SIGSTOP, one action, not a burst of the ticks missed meanwhile.
    act.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stdin_closed => break,
            changed = leading.changed() => {
                if changed.is_err() {
                    break;
                }
                let token = *leading.borrow_and_update();
                if term.as_ref().map(|t| t.token) != token {
                    drop(term.take());
                    term = token.map(|token| Term::begin(token, identity));
                    act.reset_immediately();
                }
            }
            _ = act.tick(), if term.is_some() => {
                if let Some(t) = term.as_ref().filter(|_| may_act()) {
                    t.act();
                }
            }
        }
    }
}

/// One term: `BEGIN` when made, `END` when dropped.
struct Term {
    token: u64,
    identity: String,
}

impl Term {
    fn begin(token: u64, identity: &str) -> Self {
        let t = Self {
            token,
            identity: identity.to_owned(),
        };
        t.say("BEGIN");
        t
    }

    fn act(&self) {
        self.say("ACT");
    }

    fn say(&self, kind: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{kind} {} {}", self.token, self.identity);
        let _ = out.flush();
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.say("END");
    }
}
