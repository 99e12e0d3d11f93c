//! The record lock on real etcd: its contract, elections on it, its native lease mode.

use super::*;

/// The lock contract suite on one cluster: keys under the lock's default prefix,
/// deleted and garbled through a raw client.
struct Etcd {
    client: Client,
    native_lease: bool,
}

#[async_trait::async_trait]
impl leaderelection_testkit::contract::Backend for Etcd {
    async fn lock(&self, name: &str) -> Box<dyn LeaseLock> {
        let lock = EtcdLock::from_client(self.client.clone(), name);
        Box::new(lock.native_lease(self.native_lease))
    }
    fn can_delete(&self) -> bool {
        true
    }
    async fn delete(&self, name: &str) {
        let key = format!("/leaderelection/{name}");
        self.client.clone().delete(key, None).await.unwrap();
    }
    fn can_corrupt(&self) -> bool {
        true
    }
    async fn corrupt(&self, name: &str) {
        let key = format!("/leaderelection/{name}");
        self.client
            .clone()
            .put(key, "{not json", None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn lock_keeps_the_contract() {
    let cluster = start(1);
    let (client, native_lease) = (raw(&cluster).await, false);
    leaderelection_testkit::contract::run_all(&Etcd {
        client,
        native_lease,
    })
    .await;
}

#[tokio::test]
async fn native_lease_lock_keeps_the_contract() {
    let cluster = start(1);
    let (client, native_lease) = (raw(&cluster).await, true);
    leaderelection_testkit::contract::run_all(&Etcd {
        client,
        native_lease,
    })
    .await;
}

#[tokio::test]
async fn lock_stores_client_go_json_at_its_key_and_mod_revision() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let lock = lock(&cluster, "basic", EtcdOptions::new()).await;
    assert_eq!(lock.key(), "/leaderelection/basic");
    assert_eq!(lock.describe(), "etcd:/leaderelection/basic");

    let v1 = lock.create(&record("a")).await.unwrap();
    let v2 = lock.update(&record("b"), &v1).await.unwrap();
    assert!(matches!(
        lock.update(&record("c"), &Version::new("not-a-revision"))
            .await,
        Err(LockError::Conflict)
    ));

    // The version is the key's mod revision; the value is client-go's JSON.
    let kv = client.get(lock.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(Version::from(kv.mod_revision() as u64), v2);
    assert_eq!(kv.value_str().unwrap(), record("b").to_json());
    assert_eq!(kv.lease(), 0, "no lease outside native lease mode");

    // Mod revisions grow cluster-wide: the fencing token of a later write is larger,
    // even after another key was written in between.
    client.put("/unrelated", "x", None).await.unwrap();
    let v3 = lock.update(&record("c"), &v2).await.unwrap();
    let (t2, t3) = (
        lock.fencing_token(&record("b"), &v2),
        lock.fencing_token(&record("c"), &v3),
    );
    assert!(t3 > t2 + 1, "{t2} then {t3}");
}

#[tokio::test]
async fn watch_reports_the_current_state_then_every_change() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let lock = lock(&cluster, "watched", EtcdOptions::new()).await;
    let v1 = lock.create(&record("a")).await.unwrap();

    let mut w = lock.watch().unwrap();
    match next(&mut w).await {
        Some(Ok(LockEvent::Changed(v))) => assert_eq!(v.version, v1),
        other => panic!("expected the current record, got {other:?}"),
    }
    let v2 = lock.update(&record("b"), &v1).await.unwrap();
    match next(&mut w).await {
        Some(Ok(LockEvent::Changed(v))) => {
            assert_eq!((v.version, v.record.holder_identity.as_str()), (v2, "b"))
        }
        other => panic!("expected the update, got {other:?}"),
    }
    client.delete(lock.key(), None).await.unwrap();
    assert!(matches!(next(&mut w).await, Some(Ok(LockEvent::Deleted))));
    let put = client.put(lock.key(), "garbage", None).await.unwrap();
    match next(&mut w).await {
        Some(Err(LockError::InvalidRecord { version, .. })) => {
            assert_eq!(
                version,
                Some(Version::from(put.header().unwrap().revision() as u64))
            )
        }
        other => panic!("expected an invalid record, got {other:?}"),
    }

    // A watch opened on an absent key starts by saying so.
    let other = EtcdLock::from_client(client.clone(), "absent");
    let mut w = other.watch().unwrap();
    assert!(matches!(next(&mut w).await, Some(Ok(LockEvent::Deleted))));
}

// ---- elections on the lock ---------------------------------------------------

#[tokio::test]
async fn elections_on_etcd_hand_over_at_once() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    // A long lease: any handover well before it expires was driven by the watch.
    let cfg = |id: &str| timing(id, 10_000, 6_000, 500);
    let mut replicas = Vec::new();
    for id in ["a", "b", "c"] {
        let l = lock(&cluster, "handover", EtcdOptions::new()).await;
        replicas.push(elector(id, l, cfg(id)));
    }
    let first = one_leader(&replicas, Duration::from_secs(20)).await;
    let first_token = replicas[first].tokens()[0];

    // Shutdown releases; a watching standby takes over at once.
    let leaving = replicas.remove(first);
    let released_at = Instant::now();
    leaving.stop().await;
    let second = one_leader(&replicas, Duration::from_secs(20)).await;
    let took = released_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} after a release"
    );
    let second_token = replicas[second].tokens()[0];
    assert!(second_token > first_token);

    // The key deleted under the leader: it steps down at once (its watch) or at its
    // next renewal. Nobody may create the record again before the leader's lease has
    // run out: the standbys time it from its last renewal they saw, and the old
    // leader, campaigning anew with no history, from when it first saw the key gone.
    let key = "/leaderelection/handover";
    let deleted_at = Instant::now();
    client.delete(key, None).await.unwrap();
    wait_until("a new term begins", Duration::from_secs(20), || {
        replicas.iter().flat_map(|r| r.tokens()).max() > Some(second_token)
    })
    .await;
    let took = deleted_at.elapsed();
    // The standbys saw the last renewal at most one retry period (0.5s) before.
    assert!(
        took >= Duration::from_millis(9_500) && took < Duration::from_secs(15),
        "took {took:?} after a delete"
    );
    let third = one_leader(&replicas, Duration::from_secs(20)).await;
    let record = client.get(key, None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        LeaderElectionRecord::from_json(record.value_str().unwrap())
            .unwrap()
            .holder_identity,
        replicas[third].id
    );
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn minority_of_members_down_no_transition() {
    let mut cluster = start(3);
    // When the killed member is etcd's raft leader, etcd needs a new election before it
    // commits again (seconds on a loaded machine): the renew deadline must outlast it,
    // as kube-scheduler's 10s does in production.
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = lock(&cluster, "minority", EtcdOptions::new()).await;
        replicas.push(elector(id, l, timing(id, 15_000, 10_000, 500)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].tokens()[0];
    for r in &mut replicas {
        r.drain_events();
    }
    // Each member in turn, so that whichever one a client talks to goes down once.
    for i in 0..3 {
        cluster.kill(i).unwrap();
        // The leader renews through the other members (after etcd's own raft
        // election, when the member was etcd's leader).
        let before = mod_revision(&cluster, i, "/leaderelection/minority").await;
        let started = Instant::now();
        while mod_revision(&cluster, i, "/leaderelection/minority").await == before {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no renewal with member {i} down"
            );
            sleep(Duration::from_millis(200)).await;
        }
        sleep(Duration::from_secs(2)).await;
        assert!(
            replicas[leader].is_leader(),
            "leader lost with member {i} down"
        );
        cluster.restart(i).unwrap();
        cluster.wait_healthy(i).unwrap();
    }
    for r in &mut replicas {
        let events = r.drain_events();
        assert!(
            !events.iter().any(|e| matches!(
                e,
                ElectionEvent::StartedLeading { .. } | ElectionEvent::StoppedLeading
            )),
            "{}: transition with a minority down: {events:?}",
            r.id
        );
    }
    assert_eq!(replicas[leader].tokens(), vec![token]);
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn frozen_member_no_transition() {
    let mut cluster = start(3);
    // A frozen (SIGSTOP) member accepts connections and never answers: requests to it
    // time out after 2s and the next ones go to another member.
    let options = || EtcdOptions::new().request_timeout(Duration::from_secs(2));
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = lock(&cluster, "frozen-member", options()).await;
        replicas.push(elector(id, l, timing(id, 15_000, 10_000, 500)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].tokens()[0];
    for r in &mut replicas {
        r.drain_events();
    }
    for i in 0..3 {
        cluster.pause(i).unwrap();
        // The leader renews through the other members (after etcd's own raft
        // election, when the member was etcd's leader).
        let before = mod_revision(&cluster, i, "/leaderelection/frozen-member").await;
        let started = Instant::now();
        while mod_revision(&cluster, i, "/leaderelection/frozen-member").await == before {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no renewal with member {i} frozen"
            );
            sleep(Duration::from_millis(200)).await;
        }
        sleep(Duration::from_secs(2)).await;
        assert!(
            replicas[leader].is_leader(),
            "leader lost with member {i} frozen"
        );
        cluster.resume(i).unwrap();
        cluster.wait_healthy(i).unwrap();
    }
    for r in &mut replicas {
        let events = r.drain_events();
        assert!(
            !events.iter().any(|e| matches!(
                e,
                ElectionEvent::StartedLeading { .. } | ElectionEvent::StoppedLeading
            )),
            "{}: transition with a member frozen: {events:?}",
            r.id
        );
    }
    assert_eq!(replicas[leader].tokens(), vec![token]);
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn invalid_record_is_overwritten_after_a_lease_duration() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    client
        .put("/leaderelection/garbled", "{\"holderIdentity\": 42", None)
        .await
        .unwrap();
    let started = Instant::now();
    let replica = elector(
        "a",
        lock(&cluster, "garbled", EtcdOptions::new()).await,
        fast("a"),
    );
    wait_until(
        "it overwrites the bad record",
        Duration::from_secs(15),
        || replica.is_leader(),
    )
    .await;
    // Someone might hold an unreadable record: it waits a whole lease first.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "overwrote after only {took:?}"
    );
    let kv = client
        .get("/leaderelection/garbled", None)
        .await
        .unwrap()
        .kvs()[0]
        .clone();
    assert_eq!(
        LeaderElectionRecord::from_json(kv.value_str().unwrap())
            .unwrap()
            .holder_identity,
        "a"
    );
    replica.stop().await;
}

#[tokio::test]
async fn quorum_loss_steps_the_leader_down_and_one_leader_returns() {
    let mut cluster = start(3);
    let mut replicas = Vec::new();
    for id in ["a", "b", "c"] {
        let l = lock(&cluster, "quorum", EtcdOptions::new()).await;
        replicas.push(elector(id, l, timing(id, 4_000, 3_000, 500)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].tokens()[0];
    let lost = replicas[leader].tokens().last().copied().unwrap();

    let killed_at = Instant::now();
    cluster.kill(1).unwrap();
    cluster.kill(2).unwrap();
    // No renewal can succeed now: the leader's token fires by its renew deadline.
    timeout(Duration::from_secs(3 + 3), replicas[leader].term_end(lost))
        .await
        .expect("the leader steps down within the renew deadline");
    let stepped_down = killed_at.elapsed();
    assert!(!replicas[leader].is_leader());
    // Nobody can lead without a quorum.
    sleep(Duration::from_secs(2)).await;
    assert_eq!(leaders(&replicas), Vec::<&str>::new());

    cluster.restart(1).unwrap();
    cluster.restart(2).unwrap();
    for i in 0..3 {
        cluster.wait_healthy(i).unwrap();
    }
    let back = one_leader(&replicas, Duration::from_secs(30)).await;
    // Exactly one, and it stays so.
    for _ in 0..20 {
        assert!(leaders(&replicas).len() <= 1, "{:?}", leaders(&replicas));
        sleep(Duration::from_millis(100)).await;
    }
    let new_token = *replicas[back].tokens().last().unwrap();
    assert!(new_token > token, "{token} then {new_token}");
    eprintln!("quorum loss: the leader stepped down {stepped_down:?} after the kill");
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn etcd_restarted_with_its_data_keeps_the_leader_and_the_revisions() {
    let mut cluster = start(1);
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = lock(&cluster, "restart", EtcdOptions::new()).await;
        replicas.push(elector(id, l, timing(id, 10_000, 8_000, 500)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].tokens()[0];
    for r in &mut replicas {
        r.drain_events();
    }

    cluster.restart(0).unwrap();
    cluster.wait_healthy(0).unwrap();
    let before = mod_revision(&cluster, usize::MAX, "/leaderelection/restart").await;
    // Renewals resume against the same revisions, within the renew deadline (8 s) of
    // the last one before the restart: no transition.
    let restarted = Instant::now();
    while mod_revision(&cluster, usize::MAX, "/leaderelection/restart").await == before {
        assert!(
            restarted.elapsed() < Duration::from_secs(8),
            "no renewal after the restart"
        );
        sleep(Duration::from_millis(200)).await;
    }
    sleep(Duration::from_secs(2)).await;
    assert!(replicas[leader].is_leader());
    for r in &mut replicas {
        let events = r.drain_events();
        assert!(
            !events.iter().any(|e| matches!(
                e,
                ElectionEvent::StartedLeading { .. } | ElectionEvent::StoppedLeading
            )),
            "{}: {events:?}",
            r.id
        );
    }
    // The revision survived the restart: the next leader's token is still larger.
    let old = replicas.remove(leader);
    old.stop().await;
    let next = one_leader(&replicas, Duration::from_secs(20)).await;
    let next_token = replicas[next].tokens()[0];
    assert!(next_token > token, "{token} then {next_token}");
    let mut client = raw(&cluster).await;
    let kv = client
        .get("/leaderelection/restart", None)
        .await
        .unwrap()
        .kvs()[0]
        .clone();
    let record = LeaderElectionRecord::from_json(kv.value_str().unwrap()).unwrap();
    assert_eq!(record.leader_transitions, 1);
    for r in replicas {
        r.stop().await;
    }
}

// ---- native lease mode -------------------------------------------------------

#[tokio::test]
async fn native_lease_binds_the_key_and_leaves_nothing_behind() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let a = lock(&cluster, "bound", EtcdOptions::new().native_lease(true)).await;
    let b = lock(&cluster, "bound", EtcdOptions::new().native_lease(true)).await;

    let v1 = a.create(&record("a")).await.unwrap();
    let lease = a.lease_id().expect("a lease after create");
    let kv = client.get(a.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), lease);
    let ttl = client.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3, "TTL = leaseDurationSeconds");

    // The loser of a create race keeps no lease.
    assert!(matches!(
        b.create(&record("b")).await,
        Err(LockError::AlreadyExists)
    ));
    assert_eq!(b.lease_id(), None);
    // Nor does the loser of a compare-and-swap.
    let v2 = a.update(&record("a"), &v1).await.unwrap();
    assert!(matches!(
        b.update(&record("b"), &v1).await,
        Err(LockError::Conflict)
    ));
    let leases: Vec<i64> = client
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(leases, vec![lease], "only the holder's lease exists");
    // A renewal keeps the same lease.
    assert_eq!(a.lease_id(), Some(lease));

    // Released: the record stays without a lease, and the lease is gone.
    let released = LeaderElectionRecord {
        lease_duration_seconds: 1,
        ..Default::default()
    };
    a.update(&released, &v2).await.unwrap();
    let kv = client.get(a.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), 0);
    assert!(client.leases().await.unwrap().leases().is_empty());
    assert_eq!(a.lease_id(), None);
}

#[tokio::test]
async fn native_lease_revoked_the_leader_steps_down_at_once() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    // A long lease and renew deadline: anything faster than them is the lease at work.
    let cfg = |id: &str| timing(id, 10_000, 8_000, 500);
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = lock(&cluster, "revoked", EtcdOptions::new().native_lease(true)).await;
        replicas.push(elector(id, l, cfg(id)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    let token = replicas[leader].tokens()[0];
    let lost = replicas[leader].tokens().last().copied().unwrap();
    let kv = client
        .get("/leaderelection/revoked", None)
        .await
        .unwrap()
        .kvs()[0]
        .clone();
    assert_ne!(kv.lease(), 0);

    let revoked_at = Instant::now();
    client.lease_revoke(kv.lease()).await.unwrap();
    // The next renewal's keep-alive finds the lease gone: no waiting for the deadline.
    timeout(Duration::from_secs(4), replicas[leader].term_end(lost))
        .await
        .expect("the leader steps down at its next renewal");
    let stepped_down = revoked_at.elapsed();
    // etcd deleted the key with the lease. To the standby that is a delete by someone
    // else: it waits out the leader's lease (10s) as it observed it. The old leader
    // campaigns anew with no history and waits its own lease from first sight.
    wait_until("a new term begins", Duration::from_secs(15), || {
        replicas.iter().flat_map(|r| r.tokens()).max() > Some(token)
    })
    .await;
    let took_over = revoked_at.elapsed();
    // Whoever leads next, standby or old leader, waited out the leader's lease.
    assert!(
        took_over >= Duration::from_secs(8),
        "took over after {took_over:?}"
    );
    assert!(replicas.iter().flat_map(|r| r.tokens()).max() > Some(token));
    eprintln!(
        "revoked lease: stepped down after {stepped_down:?}, standby led after {took_over:?}"
    );
    for r in replicas {
        r.stop().await;
    }
    // Shut down with release: no lease is left, the key holds a released record.
    assert!(client.leases().await.unwrap().leases().is_empty());
    let kv = client
        .get("/leaderelection/revoked", None)
        .await
        .unwrap()
        .kvs()[0]
        .clone();
    assert!(LeaderElectionRecord::from_json(kv.value_str().unwrap())
        .unwrap()
        .is_released());
}
