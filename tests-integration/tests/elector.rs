//! The election loop's behaviour on the in-memory lock, under tokio's paused clock:
//! every timing here is virtual, so the assertions are exact and never flaky.
//!
//! Every candidate is a [`Replica`] of the test kit: its work's terms are recorded
//! by a [`Checker`], which judges every run (no overlap, growing fencing tokens, no
//! stale token accepted).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leaderelection::{
    Config, ConfigError, ElectionEvent, LeaderElectionRecord, LeaderElector, LeaseLock, LockError,
    MemoryLock, MemoryStore, Version, Versioned,
};
use leaderelection_testkit::checker::{Checker, Interval};
use leaderelection_testkit::faults::{Faults, FaultyLock, WriteFault};
use leaderelection_testkit::replica::{wait_until, Link, Replica, Work};
use leaderelection_testkit::writes::Writes;
use rand::{Rng, SeedableRng};
use tokio::time::{sleep, Instant};

const NAME: &str = "scheduler";

fn config(id: &str) -> Config {
    Config::new(NAME).identity(id)
}

/// A replica on `store`'s lock whose work acts while its term is valid and stops as
/// soon as it is lost.
fn start(store: &MemoryStore, config: Config, checker: &Checker) -> Replica {
    Replica::memory(store, config, checker, Work::polite())
}

/// Like [`start`], with the lock's watch hidden (client-go's polling).
fn start_polling(store: &MemoryStore, config: Config, checker: &Checker) -> Replica {
    let lock = FaultyLock::new(store.lock(NAME));
    let link = Link::faults(lock.faults());
    Replica::new(Polling(lock), link, config, checker, Work::polite())
}

/// The switches of a replica's [`FaultyLock`].
fn faults(replica: &Replica) -> &Faults {
    replica
        .link
        .as_faults()
        .expect("a replica behind a FaultyLock")
}

/// The first term `identity` led, as the checker recorded it.
fn term_of(checker: &Checker, identity: &str) -> Option<Interval> {
    checker
        .intervals()
        .into_iter()
        .find(|t| t.identity == identity)
}

/// Starts `a` and, once it leads, `b`: a leader and its standby.
async fn leader_and_standby(store: &MemoryStore, checker: &Checker) -> (Replica, Replica) {
    let a = start(store, config("a"), checker);
    sleep(Duration::from_millis(10)).await;
    assert!(a.is_leader(), "a leads");
    (a, start(store, config("b"), checker))
}

/// Asserts that `replica`'s first events are those of one term: it saw itself lead,
/// started leading, and stopped.
async fn assert_led_then_stepped_down(replica: &Replica) {
    let me = Some(replica.id.clone());
    assert_eq!(
        replica.next_event().await,
        Some(ElectionEvent::NewLeader(me))
    );
    assert!(matches!(
        replica.next_event().await,
        Some(ElectionEvent::StartedLeading { .. })
    ));
    assert_eq!(
        replica.next_event().await,
        Some(ElectionEvent::StoppedLeading)
    );
}

fn leaders<'a>(replicas: impl IntoIterator<Item = &'a Replica>) -> usize {
    replicas.into_iter().filter(|r| r.is_leader()).count()
}

#[tokio::test(start_paused = true)]
async fn lone_candidate_leads_at_once() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let t0 = Instant::now();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_millis(1)).await;
    assert!(a.is_leader());
    assert_eq!(a.leader().as_deref(), Some("a"));
    assert_eq!(a.terms()[0].start, t0);
    a.stop().await;
    checker.report().assert_safe();
}

#[tokio::test(start_paused = true)]
async fn of_two_candidates_exactly_one_leads_and_keeps_leading() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    let b = start(&store, config("b"), &checker);
    for _ in 0..120 {
        sleep(Duration::from_secs(1)).await;
        assert_eq!(leaders([&a, &b]), 1);
    }
    let terms = checker.intervals();
    assert_eq!(terms.len(), 1, "leadership changed hands");
    let leader = terms[0].identity.clone();
    let standby = if leader == "a" { &b } else { &a };
    assert_eq!(standby.leader(), Some(leader));
    a.stop().await;
    b.stop().await;
    checker.report().assert_safe();
}

#[tokio::test(start_paused = true)]
async fn crashed_leader_is_replaced_at_lease_expiry_not_before() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let writes = Writes::follow(&store.lock(NAME));
    let (a, b) = leader_and_standby(&store, &checker).await;
    sleep(Duration::from_secs(7)).await;
    a.crash();
    sleep(Duration::from_secs(30)).await;
    assert!(b.is_leader());

    let last_renewal = writes.last_by("a");
    let takeover = writes.first_by("b");
    let gap = takeover - last_renewal;
    assert!(
        gap >= Duration::from_secs(15),
        "took over after {gap:?}, before the lease expired"
    );
    assert!(
        gap <= Duration::from_millis(15_050),
        "took over {gap:?} after the last renewal"
    );
    checker.report().assert_safe();
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn released_lease_is_taken_within_10ms() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let writes = Writes::follow(&store.lock(NAME));
    let (a, b) = leader_and_standby(&store, &checker).await;
    sleep(Duration::from_secs(5)).await;
    a.stop().await;
    sleep(Duration::from_secs(1)).await;
    assert!(b.is_leader());

    let all = writes.all();
    let release = all
        .iter()
        .find(|(_, r)| r.as_ref().is_some_and(|r| r.holder_identity.is_empty()))
        .expect("the leader did not release")
        .0;
    let gap = writes.first_by("b") - release;
    assert!(
        gap <= Duration::from_millis(10),
        "released lease taken after {gap:?}"
    );
    checker.report().assert_safe();
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn release_waits_for_the_work_to_stop() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let writes = Writes::follow(&store.lock(NAME));
    let slow = Work::polite().stopping_in(Duration::from_secs(3));
    let a = Replica::memory(&store, config("a"), &checker, slow);
    sleep(Duration::from_millis(10)).await;
    let b = start(&store, config("b"), &checker);
    sleep(Duration::from_secs(1)).await;
    let stop_at = Instant::now();
    a.stop().await;
    let a_end = term_of(&checker, "a").unwrap().end.unwrap();
    assert_eq!(a_end - stop_at, Duration::from_secs(3));
    // Still renewing while the work winds down: no takeover before the work ended.
    assert!(writes.first_by("b") >= a_end);
    sleep(Duration::from_millis(100)).await;
    assert!(b.is_leader());
    checker.report().assert_safe();
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn leader_whose_renewals_fail_steps_down_before_others_may_take_over() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let writes = Writes::follow(&store.lock(NAME));
    let (a, b) = leader_and_standby(&store, &checker).await;
    sleep(Duration::from_secs(5)).await;
    a.link.cut(true);
    sleep(Duration::from_secs(30)).await;

    let a_term = term_of(&checker, "a").unwrap();
    let last_renewal = writes.last_by("a");
    let a_end = a_term.end.expect("the token never fired");
    // The token fires at the renew deadline, 5s before the lease could expire.
    assert!(
        a_end <= last_renewal + Duration::from_secs(10),
        "stepped down at {:?}",
        a_end - last_renewal
    );
    assert!(a_end < last_renewal + Duration::from_secs(15));
    assert!(!a.is_leader());
    assert!(b.is_leader());
    checker.report().assert_safe();

    assert_led_then_stepped_down(&a).await;

    // Back in touch, it campaigns again as a standby and follows the new leader.
    a.link.cut(false);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(a.leader().as_deref(), Some("b"));
    assert_eq!(
        a.next_event().await,
        Some(ElectionEvent::NewLeader(Some("b".into())))
    );
    a.stop().await;
    b.stop().await;
}

/// Work that never looks at `lost()` is aborted by the time another replica may
/// lead, whichever way its term ends: the leader cut off from the backend (it steps
/// down at its renew deadline), the record deleted under it (its watch ends the term
/// early), or a shutdown (the elector renews while it waits for the work, then aborts
/// it without releasing). The elector waits for the work until the lease could run
/// out for the others, then aborts it.
#[tokio::test(start_paused = true)]
async fn work_that_ignores_lost_is_aborted_before_another_replica_may_lead() {
    for end in ["cut off", "record deleted", "shutdown"] {
        let store = MemoryStore::new();
        let checker = Checker::new();
        let a = Replica::memory(&store, config("a"), &checker, Work::deaf());
        a.wait_leading(Duration::from_secs(1)).await;
        let b = start(&store, config("b"), &checker);
        sleep(Duration::from_secs(5)).await;
        match end {
            "cut off" => a.link.cut(true),
            "record deleted" => store.delete(NAME),
            _ => a.begin_stop(),
        }
        b.wait_leading(Duration::from_secs(60)).await;
        sleep(Duration::from_secs(1)).await;
        let a_term = term_of(&checker, "a").unwrap();
        let b_term = term_of(&checker, "b").unwrap();
        let a_end = a_term
            .end
            .unwrap_or_else(|| panic!("a's deaf work still runs ({end})"));
        assert!(
            a_end <= b_term.start,
            "a's deaf work ran beside b's ({end})"
        );
        // Acting past its validity is what deaf work does; acting beside b is not.
        let report = checker.report();
        assert_eq!(report.overlaps(), 0, "{}", report.explain());
        b.stop().await;
        a.link.cut(false);
        a.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn without_recampaign_run_returns_after_the_first_loss() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a").recampaign(false), &checker);
    sleep(Duration::from_secs(1)).await;
    a.link.cut(true);
    tokio::time::timeout(Duration::from_secs(30), a.join())
        .await
        .expect("run did not return after losing leadership");
    checker.report().assert_safe();
}

#[tokio::test(start_paused = true)]
async fn slow_backend_past_the_renew_deadline_costs_leadership() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_secs(1)).await;
    a.link.delay(Duration::from_secs(60));
    sleep(Duration::from_secs(12)).await;
    assert!(!a.is_leader());
    assert!(a.terms()[0].end.is_some());
    a.link.delay(Duration::ZERO);
    a.stop().await;
    checker.report().assert_safe();
}

/// One renewal stuck on a backend that stopped answering (a request to an etcd member
/// that died with it, a dropped packet) is abandoned after half the renew deadline, as
/// client-go's request timeout does, so the renewal after it, to a backend that answers
/// again, keeps the leadership.
#[tokio::test(start_paused = true)]
async fn a_stuck_renewal_is_abandoned_in_time_for_another_attempt() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_secs(1)).await;
    // The renewal due at 2 s hangs; the ones after it are answered at once.
    a.link.delay(Duration::from_secs(60));
    sleep(Duration::from_millis(1_500)).await;
    a.link.delay(Duration::ZERO);
    sleep(Duration::from_secs(20)).await;
    assert!(a.is_leader());
    assert_eq!(a.terms().len(), 1, "one term throughout");
    assert_eq!(a.terms()[0].end, None, "its work never stopped");
    a.stop().await;
    checker.report().assert_safe();
}

#[tokio::test(start_paused = true)]
async fn transitions_count_holder_changes_only() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let read = || LeaderElectionRecord::from_json(&store.get_raw(NAME).unwrap()).unwrap();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(read().leader_transitions, 0, "renewals must not count");
    let b = start(&store, config("b"), &checker);
    sleep(Duration::from_secs(1)).await;
    a.stop().await; // release: holder "" keeps the count
    assert_eq!(
        read().leader_transitions,
        1,
        "b took over from a released lease"
    );
    sleep(Duration::from_secs(60)).await;
    assert_eq!(read().holder_identity, "b");
    assert_eq!(read().leader_transitions, 1);
    b.crash();
    let c = start(&store, config("c"), &checker);
    sleep(Duration::from_secs(30)).await;
    assert_eq!(read().holder_identity, "c");
    assert_eq!(read().leader_transitions, 2);
    checker.report().assert_safe();
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn standby_honours_the_holders_lease_duration_not_its_own() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let writes = Writes::follow(&store.lock(NAME));
    let long = config("a")
        .lease_duration(Duration::from_secs(60))
        .renew_deadline(Duration::from_secs(40));
    let a = start(&store, long, &checker);
    sleep(Duration::from_millis(10)).await;
    let b = start(&store, config("b"), &checker);
    sleep(Duration::from_secs(3)).await;
    a.crash();
    sleep(Duration::from_secs(90)).await;
    let gap = writes.first_by("b") - writes.last_by("a");
    assert!(
        gap >= Duration::from_secs(60),
        "took over after {gap:?} despite a 60s lease"
    );
    checker.report().assert_safe();
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_candidate_that_wins_at_once_opens_only_the_leaders_watch() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_secs(61)).await;
    // The read, the question whether the record was ever held, the create, the
    // leader's watch on its own record, then one compare-and-swap every 2s (at 2s,
    // 4s, .. 60s). No standby's watch.
    assert_eq!(faults(&a).requests(), 3 + 1 + 30);
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn standby_that_watches_makes_almost_no_requests() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let (a, b) = leader_and_standby(&store, &checker).await;
    sleep(Duration::from_secs(600)).await;
    // In ten minutes: a read, the watch, and a read after opening it.
    let standby_requests = faults(&b).requests();
    assert!(
        standby_requests <= 3,
        "standby made {standby_requests} requests"
    );
    // The leader: one compare-and-swap per retry period, no read before it.
    let leader_requests = faults(&a).requests();
    assert!(
        (295..=305).contains(&leader_requests),
        "leader made {leader_requests} requests"
    );
    a.stop().await;
    b.stop().await;
}

/// The memory lock with its watch hidden, to exercise client-go's polling path.
#[derive(Debug)]
struct Polling(FaultyLock<MemoryLock>);

#[async_trait]
impl LeaseLock for Polling {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.0.get().await
    }
    async fn create(&self, r: &LeaderElectionRecord) -> Result<Version, LockError> {
        self.0.create(r).await
    }
    async fn update(&self, r: &LeaderElectionRecord, v: &Version) -> Result<Version, LockError> {
        self.0.update(r, v).await
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn proves_vacancy(&self) -> Result<bool, LockError> {
        self.0.proves_vacancy().await
    }
}

#[tokio::test(start_paused = true)]
async fn polling_standby_retries_every_jittered_retry_period() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let writes = Writes::follow(&store.lock(NAME));
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_millis(10)).await;
    let b = start_polling(&store, config("b"), &checker);
    sleep(Duration::from_secs(60)).await;
    // Between 2s and 4.4s apart: 14 to 30 reads a minute.
    let reads = faults(&b).requests();
    assert!((13..=31).contains(&reads), "{reads} polls in a minute");
    a.crash();
    sleep(Duration::from_secs(30)).await;
    assert!(b.is_leader());
    let gap = writes.first_by("b") - writes.last_by("a");
    // Polling: at most one jittered retry period past the lease.
    assert!(
        gap >= Duration::from_secs(15) && gap <= Duration::from_millis(19_400),
        "{gap:?}"
    );
    checker.report().assert_safe();
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn invalid_record_is_overwritten_after_a_lease_of_no_change() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    store.put_raw(NAME, "{\"holderIdentity\": 42");
    let t0 = Instant::now();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_secs(14)).await;
    assert!(
        !a.is_leader(),
        "took an unreadable lock before a lease passed"
    );
    sleep(Duration::from_secs(2)).await;
    assert!(a.is_leader());
    assert!(a.terms()[0].start - t0 >= Duration::from_secs(15));
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn hostile_lease_durations_are_bounded() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    // A holder that claims an i32::MAX-second lease and never renews.
    let hostile = LeaderElectionRecord {
        holder_identity: "ghost".into(),
        lease_duration_seconds: i32::MAX,
        ..Default::default()
    };
    store.put_raw(NAME, hostile.to_json());
    let a = start(&store, config("a"), &checker);
    sleep(leaderelection::MAX_HONOURED_LEASE + Duration::from_secs(1)).await;
    assert!(a.is_leader());
    a.stop().await;

    // A negative duration is not a free pass: the standby waits its own lease.
    let store = MemoryStore::new();
    store.put_raw(
        NAME,
        LeaderElectionRecord {
            lease_duration_seconds: -5,
            ..hostile
        }
        .to_json(),
    );
    let checker = Checker::new();
    let b = start(&store, config("b"), &checker);
    sleep(Duration::from_secs(14)).await;
    assert!(!b.is_leader());
    sleep(Duration::from_secs(2)).await;
    assert!(b.is_leader());
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_check_fails_only_for_a_stuck_leader() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_secs(30)).await;
    assert!(a.elector.check_health(Duration::from_secs(20)).is_ok());
    let b = LeaderElector::new(store.lock(NAME), config("b")).unwrap();
    assert!(
        b.check_health(Duration::ZERO).is_ok(),
        "a standby is healthy"
    );
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_check_fails_for_a_leader_whose_loop_is_stuck() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    let tolerance = Duration::from_secs(1);
    sleep(Duration::from_secs(30)).await;
    assert!(a.is_leader());
    assert!(
        a.elector.check_health(tolerance).is_ok(),
        "a renewing leader is healthy"
    );

    // From here on the loop is not polled, as under a blocked runtime: nothing renews,
    // yet the replica still believes it leads.
    a.stall(true);
    sleep(Duration::from_secs(15) + tolerance + Duration::from_millis(1)).await;
    assert!(a.is_leader());
    let err = a
        .elector
        .check_health(tolerance)
        .expect_err("a leader stuck past lease + tolerance is unhealthy");
    assert_eq!(err.name, NAME);
    assert!(err.since > Duration::from_secs(16));
    a.crash();
}

#[tokio::test(start_paused = true)]
async fn dropping_run_fires_the_works_lost() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_secs(1)).await;
    assert!(a.is_leader());
    // Only the run future goes; the work, a task of its own, stays until lost() fires.
    a.abort_elector();
    a.join().await;
    sleep(Duration::from_millis(1)).await;
    assert!(
        a.terms()[0].end.is_some(),
        "the work's lost() fires when run's future is dropped"
    );
    checker.report().assert_safe();
}

#[tokio::test(start_paused = true)]
async fn the_last_leader_seen_is_kept_after_stepping_down() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a").recampaign(false), &checker);
    let status = a.elector.subscribe();
    sleep(Duration::from_secs(1)).await;
    assert!(a.is_leader());

    // Lost: renewals fail past the renew deadline; without recampaign, run returns.
    a.link.cut(true);
    tokio::time::timeout(Duration::from_secs(30), a.join())
        .await
        .expect("run returns after the loss without recampaign");
    assert!(!a.is_leader());
    assert_eq!(
        a.leader().as_deref(),
        Some("a"),
        "the last leader seen is kept"
    );
    assert_eq!(status.borrow().leader.as_deref(), Some("a"));
    assert_led_then_stepped_down(&a).await;
    assert!(a.drain_events().is_empty(), "no other change reported");

    // Shut down: the lease is released, the last leader seen still reported.
    a.link.cut(false);
    let b = start(&store, config("a"), &checker);
    sleep(Duration::from_secs(1)).await;
    assert!(b.is_leader());
    let elector = b.elector.clone();
    b.stop().await;
    assert!(!elector.is_leader());
    assert_eq!(elector.leader().as_deref(), Some("a"));
    assert!(store
        .lock(NAME)
        .get()
        .await
        .unwrap()
        .unwrap()
        .record
        .is_released());
    checker.report().assert_safe();
}

#[tokio::test(start_paused = true)]
async fn hundred_candidates_with_random_crashes_never_overlap() {
    for seed in 0..3u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let store = MemoryStore::new();
        let checker = Checker::new();
        let mut alive: Vec<Replica> = Vec::new();
        let mut next_id = 0;
        let mut spawn = |alive: &mut Vec<Replica>| {
            next_id += 1;
            alive.push(start(&store, config(&format!("c{next_id}")), &checker));
        };
        for _ in 0..100 {
            spawn(&mut alive);
        }
        let end = Instant::now() + Duration::from_secs(3600);
        while Instant::now() < end {
            sleep(Duration::from_millis(rng.random_range(100..60_000))).await;
            // Half the faults hit the leader, or failover would rarely happen.
            let i = match alive.iter().position(|c| c.is_leader()) {
                Some(l) if rng.random_bool(0.5) => l,
                _ => rng.random_range(0..alive.len()),
            };
            let victim = alive.swap_remove(i);
            match rng.random_range(0..3) {
                0 => victim.stop().await,
                1 => victim.crash(),
                _ => {
                    // Cut off from the store for a while, then back.
                    victim.link.cut(true);
                    sleep(Duration::from_millis(rng.random_range(1_000..30_000))).await;
                    victim.link.cut(false);
                    alive.push(victim);
                }
            }
            while alive.len() < 100 {
                spawn(&mut alive);
            }
            assert!(leaders(&alive) <= 1);
        }
        let n = checker.intervals().len();
        assert!(
            n > 5,
            "seed {seed}: only {n} terms, the scenario did not exercise failover"
        );
        checker.close();
        for c in alive {
            c.stop().await;
        }
        checker.report().assert_safe();
    }
}

#[test]
fn config_validation_mirrors_client_go() {
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    let check = |lease, renew, retry| {
        Config::default()
            .lease_duration(lease)
            .renew_deadline(renew)
            .retry_period(retry)
            .validate()
    };
    assert_eq!(check(s(15), s(10), s(2)), Ok(()));
    assert_eq!(check(s(3), s(2), ms(500)), Ok(()));
    assert!(matches!(
        check(s(10), s(10), s(2)),
        Err(ConfigError::LeaseNotAfterRenewDeadline { .. })
    ));
    assert!(matches!(
        check(s(5), s(10), s(2)),
        Err(ConfigError::LeaseNotAfterRenewDeadline { .. })
    ));
    // 1.2 * 2s = 2.4s: a renew deadline of 2.4s is not enough.
    assert!(matches!(
        check(s(15), ms(2400), s(2)),
        Err(ConfigError::RenewDeadlineNotAfterRetry { .. })
    ));
    assert_eq!(check(s(15), ms(2401), s(2)), Ok(()));
    assert_eq!(
        check(s(15), s(10), Duration::ZERO),
        Err(ConfigError::Zero {
            field: "retry_period"
        })
    );
    assert!(matches!(
        check(s(15), Duration::ZERO, s(2)),
        Err(ConfigError::RenewDeadlineNotAfterRetry { .. })
    ));
    assert_eq!(
        Config::default().identity("").validate(),
        Err(ConfigError::EmptyIdentity)
    );
    let e = check(s(10), s(10), s(2)).unwrap_err().to_string();
    assert!(
        e.contains("lease_duration") && e.contains("renew_deadline"),
        "{e}"
    );
    assert!(
        LeaderElector::new(MemoryStore::new().lock("x"), Config::default().identity("")).is_err()
    );
}

// ---- a record deleted or rewritten by someone other than the holder ----------------

/// What a third party does to the record while `a` leads.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// `kubectl delete lease`.
    Delete,
    /// `kubectl edit` clearing the holder, keeping the rest (lease 15).
    Blank,
    /// Another holder written over a live one.
    Overwrite,
    /// Text that is no record.
    Garble,
    /// `kubectl patch` of `leaseDurationSeconds` to 1, the holder kept.
    ShortenLease,
    /// Another holder with a one-second lease written over a live one.
    ShortOverwrite,
}

const TAMPERS: [Tamper; 6] = [
    Tamper::Delete,
    Tamper::Blank,
    Tamper::Overwrite,
    Tamper::Garble,
    Tamper::ShortenLease,
    Tamper::ShortOverwrite,
];

async fn tamper(store: &MemoryStore, how: Tamper) {
    let lock = store.lock(NAME);
    let current = lock.get().await.unwrap().expect("a record to tamper with");
    match how {
        Tamper::Delete => store.delete(NAME),
        Tamper::Blank | Tamper::Overwrite | Tamper::ShortenLease | Tamper::ShortOverwrite => {
            let mut record = current.record.clone();
            match how {
                Tamper::Blank => record.holder_identity.clear(),
                Tamper::ShortenLease => {}
                _ => record.holder_identity = "c".into(),
            }
            record.lease_duration_seconds = match how {
                Tamper::ShortenLease | Tamper::ShortOverwrite => 1,
                _ => 15,
            };
            lock.update(&record, &current.version).await.unwrap();
        }
        Tamper::Garble => {
            store.put_raw(NAME, "{\"holderIdentity\": [");
        }
    }
}

/// Leader `a`, standby `b`; at a random moment of a's term the record is tampered
/// with. `b` must not lead before a's lease, timed from a's last write as b saw it
/// (or the tampering itself when it left a new holder or garbage), has run out, and
/// `a` must stop at once. `polling` hides the watch from both.
async fn tampered_record(how: Tamper, seed: u64, polling: bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let store = MemoryStore::new();
    let checker = Checker::new();
    let writes = Writes::follow(&store.lock(NAME));
    let start = |cfg: Config| {
        if polling {
            start_polling(&store, cfg, &checker)
        } else {
            start(&store, cfg, &checker)
        }
    };
    // `a` does not campaign again, so that b's takeover is what is measured.
    let a = start(config("a").recampaign(false));
    sleep(Duration::from_millis(10)).await;
    let b = start(config("b"));
    sleep(Duration::from_millis(rng.random_range(0..20_000))).await;
    assert!(a.is_leader());
    let last_a = writes.last_by("a");
    let tampered_at = Instant::now();
    tamper(&store, how).await;
    sleep(Duration::from_secs(40)).await;

    let ctx = format!("{how:?}, seed {seed}, polling {polling}");
    let a_term = term_of(&checker, "a").unwrap();
    let a_end = a_term.end.unwrap_or_else(|| panic!("{ctx}: a still leads"));
    // With a watch, a stops as the change arrives; polling, at its next renewal.
    let promptly = if polling {
        Duration::from_millis(2_500)
    } else {
        Duration::from_millis(1)
    };
    assert!(
        a_end - tampered_at <= promptly,
        "{ctx}: a stopped {:?} after the tampering",
        a_end - tampered_at
    );
    let b_term = term_of(&checker, "b").unwrap_or_else(|| panic!("{ctx}: b never led"));
    // A polling standby may have last seen a's record change up to one poll (2s
    // jittered by client-go's factor 1.2: under 4.4s) before a's last write.
    let missed = if polling {
        Duration::from_millis(4_400)
    } else {
        Duration::ZERO
    };
    let a_lease_out = match how {
        // What a standby sees only moves its takeover later: a's own lease, as b last
        // saw a renew, stands whatever was written since.
        Tamper::Delete | Tamper::Blank | Tamper::ShortenLease | Tamper::ShortOverwrite => {
            last_a + Duration::from_secs(15) - missed
        }
        // A new holder, or an unreadable record: a full lease from the change.
        Tamper::Overwrite | Tamper::Garble => tampered_at + Duration::from_secs(15),
    };
    assert!(
        b_term.start >= a_lease_out,
        "{ctx}: b led {:?} before a's lease ran out",
        a_lease_out - b_term.start
    );
    assert!(
        b_term.start - a_lease_out <= Duration::from_millis(4_500) + missed,
        "{ctx}: b took {:?} after the lease ran out",
        b_term.start - a_lease_out
    );
    checker.report().assert_safe();
    b.stop().await;
    a.join().await;
}

#[tokio::test(start_paused = true)]
async fn deleted_record_is_not_taken_before_the_holders_lease_runs_out() {
    for seed in 0..8 {
        tampered_record(Tamper::Delete, seed, false).await;
    }
}

#[tokio::test(start_paused = true)]
async fn blanked_record_is_not_taken_before_the_holders_lease_runs_out() {
    for seed in 0..8 {
        tampered_record(Tamper::Blank, seed, false).await;
    }
}

#[tokio::test(start_paused = true)]
async fn overwritten_record_ends_the_term_and_is_timed_for_the_new_holder() {
    for seed in 0..8 {
        tampered_record(Tamper::Overwrite, seed, false).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_edit_that_shortens_the_lease_ends_the_term_and_does_not_shorten_the_wait() {
    for seed in 0..8 {
        tampered_record(Tamper::ShortenLease, seed, false).await;
    }
}

#[tokio::test(start_paused = true)]
async fn another_holder_with_a_short_lease_does_not_shorten_the_wait() {
    for seed in 0..8 {
        tampered_record(Tamper::ShortOverwrite, seed, false).await;
    }
}

#[tokio::test(start_paused = true)]
async fn garbled_record_ends_the_term_and_is_not_taken_early() {
    for seed in 0..8 {
        tampered_record(Tamper::Garble, seed, false).await;
    }
}

#[tokio::test(start_paused = true)]
async fn polling_replicas_do_not_take_a_tampered_record_early_either() {
    for (i, how) in TAMPERS.into_iter().enumerate() {
        for seed in 0..3 {
            tampered_record(how, 100 + 10 * i as u64 + seed, true).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_genuine_release_is_still_taken_at_once_at_any_moment() {
    for seed in 0..8 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let store = MemoryStore::new();
        let checker = Checker::new();
        let (a, b) = leader_and_standby(&store, &checker).await;
        sleep(Duration::from_millis(rng.random_range(0..20_000))).await;
        let released_at = Instant::now();
        a.stop().await;
        sleep(Duration::from_millis(10)).await;
        let b_term = term_of(&checker, "b")
            .unwrap_or_else(|| panic!("seed {seed}: b did not take the released lease"));
        assert!(b_term.start - released_at <= Duration::from_millis(10));
        checker.report().assert_safe();
        b.stop().await;
    }
}

/// A standby with no history cannot tell a blank written by someone else from one
/// left under a leader that still acts: it waits its own lease (the longest a leader
/// may act after its last renewal, with the clock-rate margin) from first sight. A
/// release-shaped record (no holder, a one-second lease) is taken at once, so rolling
/// updates stay fast.
#[tokio::test(start_paused = true)]
async fn a_standby_with_no_history_waits_out_an_outside_blank_and_takes_a_release_at_once() {
    for (lease_seconds, waits) in [(15, true), (1, false)] {
        let store = MemoryStore::new();
        let checker = Checker::new();
        let blank = LeaderElectionRecord {
            lease_duration_seconds: lease_seconds,
            leader_transitions: 4,
            ..Default::default()
        };
        store.lock(NAME).create(&blank).await.unwrap();
        let t0 = Instant::now();
        let a = start(&store, config("a"), &checker);
        a.wait_leading(Duration::from_secs(60)).await;
        let waited = Instant::now() - t0;
        if waits {
            assert!(
                waited >= Duration::from_secs(15),
                "took a blank after {waited:?}"
            );
            assert!(waited <= Duration::from_millis(15_100), "{waited:?}");
        } else {
            assert!(
                waited < Duration::from_millis(20),
                "a release waited {waited:?}"
            );
        }
        a.stop().await;
    }
}

/// A standby with no history that finds the record deleted waits its own lease before
/// it creates it; on a name that never held a record (the backend proves it) it leads
/// at once.
#[tokio::test(start_paused = true)]
async fn a_standby_with_no_history_waits_out_a_deleted_record_but_not_a_fresh_name() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let t0 = Instant::now();
    let a = start(&store, config("a"), &checker);
    a.wait_leading(Duration::from_secs(1)).await;
    assert!(Instant::now() - t0 < Duration::from_millis(20));
    a.crash();
    // An operator deletes the record while a's work may still act; b starts afresh.
    store.delete(NAME);
    let deleted_at = Instant::now();
    let b = start(&store, config("b"), &checker);
    b.wait_leading(Duration::from_secs(60)).await;
    let waited = Instant::now() - deleted_at;
    assert!(
        waited >= Duration::from_secs(15),
        "b created the record after {waited:?}"
    );
    checker.report().assert_safe();
    b.stop().await;
}

/// A candidate whose write loses to a holder it never saw has learnt that someone
/// holds the record: when an operator deletes that record before the candidate reads
/// again, it waits out the unseen holder as if it had seen it, instead of creating
/// the record at once beside a holder that may still act.
#[tokio::test(start_paused = true)]
async fn a_candidate_that_loses_a_race_waits_out_the_winner_it_never_saw() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    // A name that held a record before: the store cannot prove it vacant.
    store.lock(NAME).create(&held_by("old")).await.unwrap();
    store.delete(NAME);
    let t0 = Instant::now();
    let lock = FaultyLock::new(store.lock(NAME));
    let slow = lock.faults();
    let b = Replica::new(
        lock,
        Link::faults(slow.clone()),
        config("b"),
        &checker,
        Work::polite(),
    );
    // b waits out a hidden holder until 15 s; its requests then take 500 ms each.
    sleep(Duration::from_millis(14_900)).await;
    slow.set_latency(Duration::from_millis(500));
    // Another replica's create lands while b's is on its way (b never sees it) ...
    sleep(Duration::from_millis(200)).await;
    store.lock(NAME).create(&held_by("a")).await.unwrap();
    let a_wrote = Instant::now();
    // ... and is deleted by an operator before b reads again, at 16 s.
    sleep(Duration::from_millis(600)).await;
    store.delete(NAME);
    b.wait_leading(Duration::from_secs(60)).await;
    let b_led = term_of(&checker, "b").expect("b leads").start;
    assert!(
        b_led - a_wrote >= config("a").renew_deadline,
        "b led {:?} after a's write, within a's renew deadline",
        b_led - a_wrote
    );
    assert!(b_led - t0 < Duration::from_secs(32), "{:?}", b_led - t0);
    b.stop().await;
}

fn held_by(holder: &str) -> LeaderElectionRecord {
    let now = jiff::Timestamp::now();
    LeaderElectionRecord {
        holder_identity: holder.into(),
        lease_duration_seconds: 15,
        acquire_time: Some(now),
        renew_time: Some(now),
        ..Default::default()
    }
}

/// A lock whose writes, once switched on, answer with the version they were given
/// and store nothing, as a server that skips a write changing no byte.
#[derive(Debug)]
struct NoOpWrites {
    inner: MemoryLock,
    on: Arc<std::sync::atomic::AtomicBool>,
    skipped: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait]
impl LeaseLock for NoOpWrites {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.inner.get().await
    }
    async fn create(&self, r: &LeaderElectionRecord) -> Result<Version, LockError> {
        self.inner.create(r).await
    }
    async fn update(&self, r: &LeaderElectionRecord, v: &Version) -> Result<Version, LockError> {
        use std::sync::atomic::Ordering;
        if self.on.load(Ordering::SeqCst) {
            self.skipped.fetch_add(1, Ordering::SeqCst);
            return Ok(v.clone());
        }
        self.inner.update(r, v).await
    }
    fn watch(&self) -> Option<leaderelection::WatchStream> {
        self.inner.watch()
    }
    async fn proves_vacancy(&self) -> Result<bool, LockError> {
        self.inner.proves_vacancy().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_wrote_nothing_does_not_extend_the_lease() {
    use std::sync::atomic::Ordering;
    let store = MemoryStore::new();
    let checker = Checker::new();
    let lock = NoOpWrites {
        inner: store.lock(NAME),
        on: Arc::default(),
        skipped: Arc::default(),
    };
    let (on, skipped) = (lock.on.clone(), lock.skipped.clone());
    let t0 = Instant::now();
    let config = config("a").recampaign(false);
    let a = Replica::new(lock, Link::direct(), config, &checker, Work::polite());
    // Renewals at 2s and 4s are real; from 5s on every write is skipped.
    sleep(Duration::from_secs(5)).await;
    let leadership = a.leadership().expect("a leads");
    let valid_until = leadership.valid_until();
    assert_eq!(valid_until, t0 + Duration::from_secs(4 + 10));
    on.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), leadership.lost())
        .await
        .expect("renewals that wrote nothing kept the leadership");
    let lost_at = Instant::now();
    assert!(
        skipped.load(Ordering::SeqCst) >= 3,
        "renewals were not tried"
    );
    assert_eq!(
        leadership.valid_until(),
        valid_until,
        "a write that stored nothing extended the lease"
    );
    assert_eq!(
        lost_at, valid_until,
        "did not step down at the renew deadline"
    );
    a.join().await;
    checker.report().assert_safe();
}

/// Release is a compare-and-swap on the leader's own last version: a leader that did
/// not see another holder take the record (it polls, and the takeover came between
/// two renewals) must not blank that holder's record on its way out.
#[tokio::test(start_paused = true)]
async fn release_never_overwrites_a_record_someone_else_took() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start_polling(&store, config("a"), &checker);
    // Past one renewal, before the next.
    sleep(Duration::from_millis(2_500)).await;
    assert!(a.is_leader());
    let other = store.lock(NAME);
    let current = other.get().await.unwrap().expect("a's record");
    let taken = LeaderElectionRecord {
        holder_identity: "b".into(),
        lease_duration_seconds: 15,
        leader_transitions: current.record.leader_transitions + 1,
        ..current.record.clone()
    };
    other.update(&taken, &current.version).await.unwrap();

    a.stop().await;
    let after = other.get().await.unwrap().expect("the record");
    assert_eq!(
        after.record.holder_identity, "b",
        "a's release overwrote the record b holds"
    );
}

/// A lock whose writes fail while `failing` is set; reads work.
#[derive(Debug)]
struct WritesFail {
    inner: MemoryLock,
    failing: Arc<std::sync::atomic::AtomicBool>,
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl WritesFail {
    fn write(&self) -> Result<(), LockError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.writes.fetch_add(1, SeqCst);
        if self.failing.load(SeqCst) {
            return Err(LockError::unavailable("test", "writes are failing"));
        }
        Ok(())
    }
}

#[async_trait]
impl LeaseLock for WritesFail {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.inner.get().await
    }
    async fn create(&self, r: &LeaderElectionRecord) -> Result<Version, LockError> {
        self.write()?;
        self.inner.create(r).await
    }
    async fn update(&self, r: &LeaderElectionRecord, v: &Version) -> Result<Version, LockError> {
        self.write()?;
        self.inner.update(r, v).await
    }
    async fn proves_vacancy(&self) -> Result<bool, LockError> {
        self.inner.proves_vacancy().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A backend that refuses a candidate's writes costs it one attempt per jittered
/// retry period, never a busy loop, and it leads once the writes go through again.
#[tokio::test(start_paused = true)]
async fn a_failing_backend_is_retried_every_retry_period_then_won() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = MemoryStore::new();
    let checker = Checker::new();
    let lock = WritesFail {
        inner: store.lock(NAME),
        failing: Arc::new(true.into()),
        writes: Arc::default(),
    };
    let (failing, writes) = (lock.failing.clone(), lock.writes.clone());
    let a = Replica::new(lock, Link::direct(), config("a"), &checker, Work::polite());
    sleep(Duration::from_secs(20)).await;
    // 2s to 4.4s apart: 5 to 11 attempts in 20s.
    let attempts = writes.load(SeqCst);
    assert!((4..=11).contains(&attempts), "{attempts} attempts in 20s");
    assert!(a.terms().is_empty(), "a led while its writes failed");
    failing.store(false, SeqCst);
    sleep(Duration::from_secs(5)).await;
    assert!(a.is_leader(), "a did not lead once its writes went through");
    a.stop().await;
}

/// A candidate that loses the race to create the record reads again at once instead
/// of backing off: it knows the winner within milliseconds.
#[tokio::test(start_paused = true)]
async fn the_loser_of_a_creation_race_learns_the_winner_at_once() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let replicas: Vec<Replica> = ["a", "b"]
        .into_iter()
        .map(|id| {
            let replica = start(&store, config(id), &checker);
            replica.link.delay(Duration::from_millis(1));
            replica
        })
        .collect();
    sleep(Duration::from_millis(50)).await;
    let leaders: Vec<_> = replicas.iter().filter(|r| r.is_leader()).collect();
    assert_eq!(leaders.len(), 1, "exactly one of the two leads");
    let winner = leaders[0].id.clone();
    for r in &replicas {
        assert_eq!(r.leader().as_deref(), Some(winner.as_str()));
    }
    for r in replicas {
        r.stop().await;
    }
    checker.report().assert_safe();
}

/// A lock that reads an unreadable record it cannot name a version for.
#[derive(Debug)]
struct Unversioned {
    reads: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait]
impl LeaseLock for Unversioned {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(LockError::InvalidRecord {
            source: leaderelection::InvalidRecord::new("garbage", "{"),
            version: None,
        })
    }
    async fn create(&self, _: &LeaderElectionRecord) -> Result<Version, LockError> {
        Err(LockError::AlreadyExists)
    }
    async fn update(&self, _: &LeaderElectionRecord, _: &Version) -> Result<Version, LockError> {
        Err(LockError::Conflict)
    }
    fn describe(&self) -> String {
        "unversioned".into()
    }
}

/// An unreadable record without a version is never written over: the standby reads
/// it again every retry period, neither spinning nor going quiet.
#[tokio::test(start_paused = true)]
async fn an_unreadable_record_without_a_version_is_read_again_each_retry_period() {
    let checker = Checker::new();
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lock = Unversioned {
        reads: reads.clone(),
    };
    let a = Replica::new(lock, Link::direct(), config("a"), &checker, Work::polite());
    sleep(Duration::from_secs(20)).await;
    let n = reads.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (9..=12).contains(&n),
        "{n} reads in 20s with a 2s retry period"
    );
    assert!(!a.is_leader());
    assert!(a.terms().is_empty(), "a led on a record it cannot read");
    a.stop().await;
}

/// The record a new leader writes carries client-go's times, which Go tooling and
/// `kubectl describe` show: both set at acquisition, `acquireTime` kept by renewals.
#[tokio::test(start_paused = true)]
async fn an_acquired_record_carries_acquire_and_renew_times() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_millis(10)).await;
    let lock = store.lock(NAME);
    let first = lock.get().await.unwrap().expect("a's record").record;
    assert_eq!(first.holder_identity, "a");
    assert!(
        first.acquire_time.is_some() && first.renew_time.is_some(),
        "{first:?}"
    );
    sleep(Duration::from_secs(5)).await;
    let later = lock.get().await.unwrap().expect("a's record").record;
    assert_eq!(later.acquire_time, first.acquire_time);
    assert!(later.renew_time.is_some(), "{later:?}");
    a.stop().await;
}

/// `Leadership::is_valid`: true while the term runs, false once the renewals stopped
/// past `valid_until`, and false once leadership was given up even though
/// `valid_until` is still ahead.
#[tokio::test(start_paused = true)]
async fn is_valid_follows_the_renewals_and_the_loss() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    a.wait_leading(Duration::from_secs(1)).await;
    let first = a.leadership().expect("a term");
    assert!(first.is_valid(), "a fresh term is valid");
    sleep(Duration::from_secs(30)).await;
    assert!(first.is_valid(), "renewed terms stay valid");
    // Renewals fail from now on: valid until the last one's start + renew deadline.
    a.link.cut(true);
    let until = first.valid_until();
    sleep_until_before(until).await;
    assert!(first.is_valid(), "still valid just before valid_until");
    sleep(Duration::from_millis(2)).await;
    assert!(!first.is_valid(), "valid past valid_until");
    a.link.cut(false);

    let token = first.fencing_token();
    let leads_again = || a.leadership().is_some_and(|l| l.fencing_token() > token);
    wait_until("a leads again", Duration::from_secs(60), leads_again).await;
    let second = a.leadership().expect("a second term");
    assert!(second.is_valid());
    a.begin_stop();
    second.lost().await;
    assert!(
        second.valid_until() > Instant::now(),
        "valid_until still ahead"
    );
    assert!(!second.is_valid(), "a term given up is not valid");
    assert!(
        second.token().is_cancelled(),
        "the term's token is the one lost() waits on"
    );
    a.join().await;
    checker.report().assert_safe();
}

async fn sleep_until_before(t: Instant) {
    tokio::time::sleep_until(t - Duration::from_millis(1)).await;
}

/// The record a leader releases is client-go's release: no holder, a one-second lease,
/// the times of the release, and the transitions of the term, so the next holder
/// counts on from there. Released even when the backend takes a moment to answer.
#[tokio::test(start_paused = true)]
async fn a_release_keeps_the_transitions_and_sets_the_times() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    for (id, transitions) in [("a", 0), ("b", 1)] {
        let e = start(&store, config(id), &checker);
        e.link.delay(Duration::from_millis(5));
        sleep(Duration::from_secs(3)).await;
        assert!(e.is_leader(), "{id} leads");
        e.stop().await;
        let released = store
            .lock(NAME)
            .get()
            .await
            .unwrap()
            .expect("a record")
            .record;
        assert_eq!(released.holder_identity, "", "{id} released: {released:?}");
        assert_eq!(released.lease_duration_seconds, 1, "{released:?}");
        assert_eq!(released.leader_transitions, transitions, "{released:?}");
        assert!(
            released.acquire_time.is_some() && released.renew_time.is_some(),
            "{released:?}"
        );
    }
    checker.report().assert_safe();
}

/// A write that took effect but whose reply was lost leaves the leader leading: the
/// next renewal conflicts, reads, finds the record still naming it, and renews.
#[tokio::test(start_paused = true)]
async fn a_lost_reply_to_a_renewal_does_not_cost_the_leadership() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let a = start(&store, config("a"), &checker);
    sleep(Duration::from_secs(1)).await;
    faults(&a).set_write_fault(Some(WriteFault::LoseReply));
    sleep(Duration::from_secs(2)).await;
    faults(&a).set_write_fault(None);
    sleep(Duration::from_secs(20)).await;
    assert!(a.is_leader());
    assert_eq!(a.terms().len(), 1, "one term throughout");
    assert_eq!(a.terms()[0].end, None, "its work never stopped");
    a.stop().await;
}

/// A released record names nobody: a standby that reads one reports no leader, not a
/// leader with an empty name.
#[tokio::test(start_paused = true)]
async fn a_released_record_is_reported_as_no_leader() {
    let store = MemoryStore::new();
    let checker = Checker::new();
    let released = LeaderElectionRecord {
        lease_duration_seconds: 1,
        ..Default::default()
    };
    store.lock(NAME).create(&released).await.unwrap();
    let b = start(&store, config("b"), &checker);
    sleep(Duration::from_secs(1)).await;
    assert!(b.is_leader());
    b.begin_stop();
    b.join().await;
    let seen = b.drain_events();
    assert!(!seen.is_empty(), "no election events");
    for event in seen {
        assert_ne!(
            event,
            ElectionEvent::NewLeader(Some(String::new())),
            "an empty holder reported as a leader"
        );
    }
}

#[test]
fn a_version_displays_as_the_backends_text() {
    assert_eq!(Version::new("42").to_string(), "42");
    assert_eq!(Version::from(7).as_str(), "7");
}
