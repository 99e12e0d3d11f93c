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
//! leaderelection-bench-peers contend kube-leader-election URL TOKEN ELECTION IDENTITY
//! ```

use std::io::Write as _;
use std::time::Duration;

use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::scenario::Timings;

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
            "usage: contend kube-leader-election URL TOKEN ELECTION IDENTITY (got {} arguments)",
            args.len()
        ));
    };
    let uri = url
        .parse()
        .map_err(|e| format!("bad server URL {url:?}: {e}"))?;
    let mut config = kube::Config::new(uri);
    config.auth_info.token = Some(token.clone().into());
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let (leading, stepped_down) = match peer.as_str() {
        "kube-leader-election" => kube_leader_election(client, election, identity),
        other => return Err(format!("unknown peer {other:?}")),
    };
    work(leading, identity).await;
    stepped_down.await;
    Ok(())
}

/// What a replica's campaign tells its work: `Some(token)` while the library says it
/// leads, with the term's fencing token.
type Leading = watch::Receiver<Option<u64>>;

/// Stops the campaign (releasing if it leads) once the work has stopped.
type StepDown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// kube-leader-election as its README says: `try_acquire_or_renew` every retry period
/// in a task of its own, its result shared with the work. It leads while the last call
/// answered `Acquired` (an error counts as not leading). The token is the
/// `leaseTransitions` of the Lease that call returned: the library increments it when it
/// takes the Lease from another holder, with a merge patch that carries no
/// resourceVersion, so two candidates can take it at once with the same number.
fn kube_leader_election(
    client: kube::Client,
    election: &str,
    identity: &str,
) -> (Leading, StepDown) {
    let lock = LeaseLock::new(
        client,
        crate::NAMESPACE,
        LeaseLockParams {
            lease_name: election.to_owned(),
            holder_id: identity.to_owned(),
            lease_ttl: TIMINGS.lease,
        },
    );
    let (tx, rx) = watch::channel(None);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
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
            tx.send_if_modified(|v| std::mem::replace(v, token) != token);
        }
        if tx.borrow().is_some() {
            let _ = lock.step_down().await;
        }
    });
    let step_down = Box::pin(async move {
        let _ = stop_tx.send(());
        let _ = task.await;
    });
    (rx, step_down)
}

/// The leader's work: a term per stretch of `Some(token)`, an action every
/// [`ACT_EVERY`] within it; returns when standard input closes.
async fn work(mut leading: Leading, identity: &str) {
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
                if let Some(t) = &term {
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
