//! A record deleted or rewritten by someone other than the holder.

use super::*;

#[path = "../takeover/mod.rs"]
mod takeover;

/// Leader a, watching standby b, both `EtcdLock`s (`native` lease mode or not); the
/// key deleted or blanked behind their backs. b must not take it before a's lease ran
/// out, and a's work must have stopped first.
async fn etcd_lock_tampered(cluster: &EtcdCluster, native: bool, blank: bool) {
    let name = format!("tamper-{}-{}", native as u8, blank as u8);
    let what = format!("etcd lock, native lease {native}, blank {blank}");
    let spans = takeover::Spans::default();
    let options = || EtcdOptions::new().native_lease(native);
    let a = takeover::Running::elector(
        "a",
        lock(cluster, &name, options()).await,
        takeover::fast(&name, "a").recampaign(false),
        &spans,
    );
    // a leads before b starts, or b may win the first race and a, which does not
    // campaign again, never leads.
    takeover::wait("a leads", Duration::from_secs(20), || (a.is_leader)()).await;
    let b_lock = lock(cluster, &name, options()).await;
    let b = takeover::Running::elector("b", b_lock, takeover::fast(&name, "b"), &spans);
    takeover::leader_and_standby(&a, &b).await;

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
    let retry = Duration::from_millis(500);
    let earliest = takeover::lease_out(tampered_at, Duration::from_secs(3), retry);
    takeover::check_takeover(&what, &spans, (a, b), tampered_at, earliest, retry).await;
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
    let spans = takeover::Spans::default();
    let run = |who: &'static str, e: EtcdElection| {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (e, shutdown, work) = (e.clone(), shutdown.clone(), takeover::work(who, &spans));
            async move { e.run(shutdown, work).await }
        });
        let e2 = e.clone();
        takeover::Running {
            shutdown,
            task,
            is_leader: Box::new(move || e.is_leader()),
            leader: Box::new(move || e2.leader()),
        }
    };
    let a_election = new_election(
        &cluster,
        "tamper",
        takeover::fast("tamper", "a").recampaign(false),
    )
    .await;
    let a = run("a", a_election.clone());
    wait_until("a leads", Duration::from_secs(20), || (a.is_leader)()).await;
    let b = run(
        "b",
        new_election(&cluster, "tamper", takeover::fast("tamper", "b")).await,
    );
    takeover::leader_and_standby(&a, &b).await;

    // An operator's `etcdctl del` of the leader's key: its session is still alive.
    let key = a_election.current_leader().await.unwrap().unwrap().key;
    let mut client = raw(&cluster).await;
    let tampered_at = Instant::now();
    client.delete(key.as_str(), None).await.unwrap();
    let retry = Duration::from_millis(500);
    // The successor may lead once a's session is revoked, after a's work stopped.
    let earliest = tampered_at + takeover::WORK_STOP;
    takeover::check_takeover(
        "etcd election",
        &spans,
        (a, b),
        tampered_at,
        earliest,
        retry,
    )
    .await;
}
