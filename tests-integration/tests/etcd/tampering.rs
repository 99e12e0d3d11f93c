//! A record deleted or rewritten by someone other than the holder.

use leaderelection_testkit::replica::{handover, Timing};

use super::*;

/// How long the leader's work takes to stop after `lost` fires, as real work does: a
/// successor that leads before that overlaps it.
const WORK_STOP: Duration = Duration::from_millis(1000);

/// Leader a, watching standby b, both `EtcdLock`s (`native` lease mode or not); the
/// key deleted or blanked behind their backs. b must not take it before a's lease ran
/// out, and a's work must have stopped first.
async fn etcd_lock_tampered(cluster: &EtcdCluster, native: bool, blank: bool) {
    let name = format!("tamper-{}-{}", native as u8, blank as u8);
    let what = format!("etcd lock, native lease {native}, blank {blank}");
    let (t, checker) = (Timing::short(), Checker::new());
    let work = Work::polite().stopping_in(WORK_STOP);
    let options = || EtcdOptions::new().native_lease(native);
    let a_lock = lock(cluster, &name, options()).await;
    let a_config = t.config(&name, "a").recampaign(false);
    let a = Replica::new(a_lock, Link::direct(), a_config, &checker, work);
    // a leads before b starts, or b may win the first race and a, which does not
    // campaign again, never leads.
    a.wait_leading(Duration::from_secs(20)).await;
    let b_lock = lock(cluster, &name, options()).await;
    let b = Replica::new(b_lock, Link::direct(), t.config(&name, "b"), &checker, work);
    b.wait_following("a", Duration::from_secs(20)).await;
    sleep(Duration::from_millis(700)).await;

    let mut client = raw(cluster).await;
    let key = format!("/leaderelection/{name}");
    let tampered_at = Instant::now();
    if blank {
        let kv = client.get(key.as_str(), None).await.unwrap().kvs()[0].clone();
        let mut record = LeaderElectionRecord::from_json(kv.value_str().unwrap()).unwrap();
        record.holder_identity.clear();
        client
            .put(key.as_str(), record.to_json(), None)
            .await
            .unwrap();
    } else {
        client.delete(key.as_str(), None).await.unwrap();
    }
    // a renewed, and b saw it, at most a retry period before the tampering.
    let earliest = tampered_at + t.lease - t.retry - t.slack;
    let h = handover(&checker, "a", &b, Duration::from_secs(30)).await;
    h.assert_bounds(&what, tampered_at, earliest, t.retry + WORK_STOP + t.slack);
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn etcd_lock_deleted_or_blanked_record_is_not_taken_while_the_leader_may_act() {
    let cluster = start(1);
    for native in [false, true] {
        for blank in [false, true] {
            etcd_lock_tampered(&cluster, native, blank).await;
        }
    }
}

#[tokio::test]
async fn etcd_election_leaders_key_deleted_next_waits_for_its_session() {
    let cluster = start(1);
    let (t, checker) = (Timing::short(), Checker::new());
    let work = Work::polite().stopping_in(WORK_STOP);
    let run = |who: &str, e: EtcdElection| {
        Replica::spawn(who, e, Link::direct(), &checker, work, t.retry)
    };
    let a_election = new_election(
        &cluster,
        "tamper",
        t.config("tamper", "a").recampaign(false),
    )
    .await;
    let a = run("a", a_election.clone());
    a.wait_leading(Duration::from_secs(20)).await;
    let b = run(
        "b",
        new_election(&cluster, "tamper", t.config("tamper", "b")).await,
    );
    b.wait_following("a", Duration::from_secs(20)).await;
    sleep(Duration::from_millis(700)).await;

    // An operator's `etcdctl del` of the leader's key: its session is still alive.
    let key = a_election.current_leader().await.unwrap().unwrap().key;
    let mut client = raw(&cluster).await;
    let tampered_at = Instant::now();
    client.delete(key.as_str(), None).await.unwrap();
    // The successor may lead once a's session is revoked, after a's work stopped.
    let earliest = tampered_at + WORK_STOP;
    let h = handover(&checker, "a", &b, Duration::from_secs(30)).await;
    h.assert_bounds(
        "etcd election",
        tampered_at,
        earliest,
        t.retry + WORK_STOP + t.slack,
    );
    b.stop().await;
    a.stop().await;
}

/// Candidate a of election `name` (campaigning once) through a TCP proxy of its own,
/// which a test can blackhole: a's packets held, its connections open, as behind a
/// cut link.
async fn election_through_a_proxy(
    cluster: &EtcdCluster,
    name: &str,
    config: Config,
) -> (leaderelection_testkit::proxy::Proxy, EtcdElection) {
    let proxy = leaderelection_testkit::proxy::Proxy::start(cluster.client_addr(0))
        .await
        .unwrap();
    let client = connect(&proxy.endpoints(), &EtcdOptions::new())
        .await
        .unwrap();
    let election = EtcdElection::new(client, name, config.recampaign(false))
        .unwrap()
        .etcd_election_timeout(leaderelection_testkit::etcd::ELECTION_TIMEOUT);
    (proxy, election)
}

/// Every key that led while a candidate waited is waited out, not only the last one
/// seen first. a's key is deleted while a is cut off (packets dropped: its session
/// lives on in etcd and its work acts until its renew deadline); b, first after it,
/// waits for a's session and leaves (stopped: its session revoked); c must still wait
/// for a's session, not lead as soon as b's is gone.
#[tokio::test]
async fn etcd_election_next_waits_for_every_departed_leader_not_only_the_last() {
    let cluster = start(1);
    let (t, checker) = (Timing::short(), Checker::new());
    let name = "departed";
    let (proxy, a_election) = election_through_a_proxy(&cluster, name, t.config(name, "a")).await;
    let run = |who: &str, e: EtcdElection, link: Link| {
        Replica::spawn(who, e, link, &checker, Work::polite(), t.retry)
    };
    let a = run("a", a_election.clone(), Link::other(proxy.clone()));
    a.wait_leading(Duration::from_secs(20)).await;
    let b = run(
        "b",
        new_election(&cluster, name, t.config(name, "b")).await,
        Link::direct(),
    );
    b.wait_following("a", Duration::from_secs(20)).await;
    let c = run(
        "c",
        new_election(&cluster, name, t.config(name, "c")).await,
        Link::direct(),
    );
    c.wait_following("a", Duration::from_secs(20)).await;

    let key = a_election.current_leader().await.unwrap().unwrap().key;
    proxy.blackhole(true);
    checker.fault("a's packets dropped, then its key deleted");
    raw(&cluster)
        .await
        .delete(key.as_str(), None)
        .await
        .unwrap();
    sleep(t.retry).await;
    assert!(
        !b.is_leader() && !c.is_leader(),
        "led while a's session lives"
    );
    checker.fault("b stopped while first in line");
    b.stop().await;
    // c leads once a's session has expired (a lease after a's last keep-alive).
    c.wait_leading(t.lease * 2 + t.slack).await;
    sleep(t.retry).await;
    checker.close();
    let report = checker.report();
    report.assert_safe();
    c.stop().await;
    proxy.blackhole(false);
    a.stop().await;
}

/// A candidate with no history (no key before its own at its first read) waits its
/// own lease before it leads: a's key is deleted while a is cut off (its work acts
/// until its renew deadline), then c starts afresh and finds the election empty.
#[tokio::test]
async fn etcd_election_fresh_candidate_waits_out_a_deleted_leader_it_never_saw() {
    let cluster = start(1);
    let (t, checker) = (Timing::short(), Checker::new());
    let name = "fresh";
    let (proxy, a_election) = election_through_a_proxy(&cluster, name, t.config(name, "a")).await;
    let run = |who: &str, e: EtcdElection, link: Link| {
        Replica::spawn(who, e, link, &checker, Work::polite(), t.retry)
    };
    let started = Instant::now();
    let a = run("a", a_election.clone(), Link::other(proxy.clone()));
    a.wait_leading(t.lease + t.slack).await;
    // a found the election empty too: it waited its own lease first.
    assert!(
        started.elapsed() >= t.lease,
        "a led after {:?}",
        started.elapsed()
    );
    sleep(t.retry).await;

    let key = a_election.current_leader().await.unwrap().unwrap().key;
    proxy.blackhole(true);
    checker.fault("a's packets dropped, then its key deleted");
    raw(&cluster)
        .await
        .delete(key.as_str(), None)
        .await
        .unwrap();
    let c = run(
        "c",
        new_election(&cluster, name, t.config(name, "c")).await,
        Link::direct(),
    );
    c.wait_leading(t.lease + t.slack).await;
    sleep(t.retry).await;
    checker.close();
    checker.report().assert_safe();
    c.stop().await;
    proxy.blackhole(false);
    a.stop().await;
}

/// A leader whose watch on its key stalls while its keep-alives still succeed (the
/// member serving the watch holds its packets; the client has failed over to another
/// member for every new request) notices the key's deletion at its next renewal,
/// within a retry period, and steps down before the next candidate, which waits out
/// its session from the delete, leads.
#[tokio::test]
async fn etcd_election_leader_with_a_stalled_watch_notices_a_delete_within_a_retry() {
    use leaderelection_testkit::proxy::{Direction, Proxy};
    let cluster = start(1);
    let (t, checker) = (Timing::short(), Checker::new());
    let name = "stalled";
    let (pa, pb) = (
        Proxy::start(cluster.client_addr(0)).await.unwrap(),
        Proxy::start(cluster.client_addr(0)).await.unwrap(),
    );
    let client = connect(&[pa.endpoint(), pb.endpoint()], &EtcdOptions::new())
        .await
        .unwrap();
    let a_election = EtcdElection::new(client.clone(), name, t.config(name, "a").recampaign(false))
        .unwrap()
        .etcd_election_timeout(leaderelection_testkit::etcd::ELECTION_TIMEOUT);
    let run = |who: &str, e: EtcdElection| {
        Replica::spawn(who, e, Link::direct(), &checker, Work::polite(), t.retry)
    };
    let a = run("a", a_election.clone());
    a.wait_leading(t.lease + t.slack).await;
    let b = run("b", new_election(&cluster, name, t.config(name, "b")).await);
    b.wait_following("a", Duration::from_secs(20)).await;

    // a's client sends every request to one endpoint: the one whose traffic grows.
    let traffic = || [&pa, &pb].map(|p| p.bytes(Direction::ToClient));
    let before = traffic();
    sleep(t.retry * 2).await;
    let after = traffic();
    let (stalled, other) = if after[0] > before[0] {
        (&pa, &pb)
    } else {
        (&pb, &pa)
    };
    assert!(
        after[0] == before[0] || after[1] == before[1],
        "a's client used both endpoints"
    );
    let other_before = other.bytes(Direction::ToClient);
    stalled.blackhole(true);
    checker.fault("the member serving a's watch holds its packets");
    // A request abandoned there moves a's client on to the other endpoint.
    let mut probe = client.clone();
    let _ = timeout(Duration::from_millis(200), probe.get("probe", None)).await;
    sleep(t.retry * 2).await;
    assert!(
        other.bytes(Direction::ToClient) > other_before,
        "a's client did not fail over"
    );
    assert!(
        a.is_leader(),
        "a lost its term although its keep-alives reach etcd"
    );

    let token = a.tokens()[0];
    let key = a_election.current_leader().await.unwrap().unwrap().key;
    checker.fault("a's key deleted");
    raw(&cluster)
        .await
        .delete(key.as_str(), None)
        .await
        .unwrap();
    timeout(t.retry * 2 + t.slack, a.term_end(token))
        .await
        .expect("a notices the delete within a retry period");
    b.wait_leading(t.lease + t.slack).await;
    sleep(t.retry).await;
    checker.close();
    checker.report().assert_safe();
    b.stop().await;
    stalled.blackhole(false);
    a.stop().await;
}

/// A candidate whose watch on the election breaks (its connection reset) reads the
/// keys again and follows on: once the leader resigns, it leads. A broken stream kept
/// and polled again answers at once, every pass: the candidate then spun a core and
/// never read again. Two workers, so that such a spin fails the test instead of
/// stalling its clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_election_candidate_whose_watch_breaks_reads_again_and_leads() {
    let cluster = start(1);
    let (t, checker) = (Timing::short(), Checker::new());
    let name = "rewatch";
    let a = Replica::spawn(
        "a",
        new_election(&cluster, name, t.config(name, "a")).await,
        Link::direct(),
        &checker,
        Work::polite(),
        t.retry,
    );
    a.wait_leading(t.lease + t.slack).await;
    let (proxy, b_election) = election_through_a_proxy(&cluster, name, t.config(name, "b")).await;
    let b = Replica::spawn(
        "b",
        b_election,
        Link::other(proxy.clone()),
        &checker,
        Work::polite(),
        t.retry,
    );
    b.wait_following("a", Duration::from_secs(20)).await;
    // Reset b's connections, then let it reconnect.
    proxy.cut(true);
    sleep(t.retry).await;
    proxy.cut(false);
    sleep(t.retry * 2).await;
    let resigned = Instant::now();
    a.stop().await;
    b.wait_leading(t.lease + t.slack).await;
    eprintln!("b led {:?} after a resigned", resigned.elapsed());
    checker.close();
    checker.report().assert_safe();
    b.stop().await;
}
