//! etcd's own election protocol, with `etcdctl elect`.

use super::*;

#[tokio::test]
async fn etcd_election_queues_candidates_by_create_revision() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let mut replicas = Vec::new();
    let mut handles = Vec::new();
    // A long session and renew deadline: anything faster than them is the protocol
    // handing over, not a session expiring.
    for id in ["a", "b", "c"] {
        let e = new_election(&cluster, "queue", timing(id, 10_000, 6_000, 500)).await;
        handles.push(e.clone());
        replicas.push(election(id, e));
        // Join one after the other, so the queue order is known.
        sleep(Duration::from_millis(500)).await;
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    assert_eq!(replicas[leader].id, "a", "the first to join leads");

    // Keys as Go's concurrency package writes them; the token is the create revision.
    let current = handles[0].current_leader().await.unwrap().unwrap();
    assert_eq!(current.value, "a");
    assert_eq!(current.key, format!("queue/{:x}", current.lease));
    assert_eq!(replicas[leader].tokens()[0], current.create_revision as u64);
    let keys = client
        .get("queue/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys.kvs().len(), 3);
    assert_eq!(handles[2].leader().as_deref(), Some("a"));

    // Resigning hands over at once to the next in line.
    let first = replicas.remove(0);
    let resigned_at = Instant::now();
    first.stop().await;
    wait_until("b leads", Duration::from_secs(5), || {
        replicas[0].is_leader()
    })
    .await;
    let took = resigned_at.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} after a resignation"
    );
    assert!(replicas[0].tokens()[0] > current.create_revision as u64);

    // The session revoked under the leader: it loses at once (no phantom leader), and
    // c, next in line, leads; b joins again at the back.
    let b_lost = replicas[0].tokens().last().copied().unwrap();
    let b_key = handles[1].current_leader().await.unwrap().unwrap();
    let revoked_at = Instant::now();
    client.lease_revoke(b_key.lease).await.unwrap();
    timeout(Duration::from_secs(3), replicas[0].term_end(b_lost))
        .await
        .expect("b steps down at its next keep-alive");
    wait_until("c leads", Duration::from_secs(5), || {
        replicas[1].is_leader()
    })
    .await;
    eprintln!(
        "etcd election: revoked leader replaced after {:?}",
        revoked_at.elapsed()
    );
    sleep(Duration::from_secs(1)).await;
    assert_eq!(leaders(&replicas), vec!["c"]);
    let queue = client
        .get("queue/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(queue.kvs().len(), 2, "b joined again with a new key");

    for r in replicas {
        r.stop().await;
    }
    let left = client
        .get("queue/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(left.kvs().is_empty(), "keys left behind: {:?}", left.kvs());
    assert!(client.leases().await.unwrap().leases().is_empty());
}

/// `etcdctl elect` (etcd's Go client) on the cluster.
fn etcdctl_elect(cluster: &EtcdCluster, args: &[&str]) -> ChildLines {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(cluster.endpoints().join(","))
        .arg("elect")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run etcdctl (is etcd-client installed?)");
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(VecDeque::new()));
    std::thread::spawn({
        let lines = lines.clone();
        move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push_back(line);
            }
        }
    });
    ChildLines { child, lines }
}

struct ChildLines {
    child: Child,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl ChildLines {
    fn seen(&self, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l == text)
    }

    /// SIGINT: etcdctl resigns, or stops campaigning, and exits.
    async fn interrupt(mut self) {
        signal_pid(self.child.id(), libc::SIGINT).unwrap();
        let exited = timeout(Duration::from_secs(10), async {
            while self.child.try_wait().unwrap().is_none() {
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(exited.is_ok(), "etcdctl did not exit on SIGINT");
    }
}

impl Drop for ChildLines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn etcd_election_interoperates_with_etcdctl_elect() {
    let cluster = start(1);
    // etcdctl leads first; ours waits behind it and sees it as leader.
    let go = etcdctl_elect(&cluster, &["interop", "go-proposal"]);
    wait_until("etcdctl leads", Duration::from_secs(15), || {
        go.seen("go-proposal")
    })
    .await;
    let ours = new_election(&cluster, "interop", fast("rust")).await;
    let replica = election("rust", ours.clone());
    wait_until("ours sees etcdctl lead", Duration::from_secs(10), || {
        ours.leader().as_deref() == Some("go-proposal")
    })
    .await;
    sleep(Duration::from_secs(1)).await;
    assert!(!replica.is_leader());

    // etcdctl resigns (Go's `Resign`: the key is deleted, the session kept). That
    // cannot be told from a stray `etcdctl del` while the session lives, so ours waits;
    // once the session goes (Go's `Session.Close` revokes it), ours leads at once, and
    // etcdctl's observer mode sees it.
    let go_lease = ours.current_leader().await.unwrap().unwrap().lease;
    go.interrupt().await;
    sleep(Duration::from_secs(1)).await;
    assert!(
        !replica.is_leader(),
        "led while the resigned leader's session lived"
    );
    let resigned_at = Instant::now();
    raw(&cluster).await.lease_revoke(go_lease).await.unwrap();
    wait_until("ours leads", Duration::from_secs(5), || replica.is_leader()).await;
    eprintln!(
        "etcdctl resigned; ours led after {:?}",
        resigned_at.elapsed()
    );
    let observer = etcdctl_elect(&cluster, &["-l", "interop"]);
    wait_until("etcdctl observes ours", Duration::from_secs(10), || {
        observer.seen("rust")
    })
    .await;

    // A second etcdctl campaigns behind ours, and leads once ours shuts down.
    let go2 = etcdctl_elect(&cluster, &["interop", "go-2"]);
    sleep(Duration::from_secs(2)).await;
    assert!(!go2.seen("go-2"), "etcdctl elected while ours leads");
    assert!(replica.is_leader());
    replica.stop().await;
    wait_until(
        "etcdctl leads after ours resigned",
        Duration::from_secs(5),
        || go2.seen("go-2"),
    )
    .await;
    wait_until("the observer sees it", Duration::from_secs(10), || {
        observer.seen("go-2")
    })
    .await;
    go2.interrupt().await;
}

#[tokio::test]
async fn etcd_election_dropping_run_fires_the_works_lost() {
    let cluster = start(1);
    let e = new_election(&cluster, "dropped", fast("a")).await;
    let replica = election("a", e);
    wait_until("a leads", Duration::from_secs(10), || replica.is_leader()).await;
    let lost = replica.tokens().last().copied().unwrap();
    assert!(!replica.term_ended(lost));

    // The run future goes (an aborted task, a caller's select!): the work, a task of
    // its own, must learn at once that nobody keeps the session alive any more.
    replica.abort_elector();
    timeout(Duration::from_secs(2), replica.term_end(lost))
        .await
        .expect("the work's lost() fires when run's future is dropped");
}

#[tokio::test]
async fn etcd_election_health_check_fails_for_a_leader_whose_loop_is_stuck() {
    let cluster = start(1);
    // Session TTL 2s (lease), keep-alive every 0.5s.
    let e = new_election(&cluster, "stuck", timing("a", 2000, 1500, 500)).await;
    let tolerance = Duration::from_millis(500);
    let mut run = Box::pin(e.run(CancellationToken::new(), |l| async move { l.lost().await }));
    tokio::select! {
        _ = &mut run => panic!("run returned while leading"),
        _ = async {
            wait_until("a leads", Duration::from_secs(10), || e.is_leader()).await;
            // A few keep-alives: a leader that keeps its session alive is healthy.
            sleep(Duration::from_secs(2)).await;
        } => {}
    }
    assert!(e.is_leader());
    assert!(
        e.check_health(Duration::from_secs(5)).is_ok(),
        "a leader keeping its session alive is healthy"
    );

    // From here on the loop is not polled, as under a blocked runtime: no keep-alive can
    // be sent, however fast the machine, yet the replica still believes it leads.
    sleep(Duration::from_millis(2000) + tolerance + Duration::from_millis(500)).await;
    assert!(e.is_leader());
    let err = e
        .check_health(tolerance)
        .expect_err("a leader stuck past lease + tolerance is unhealthy");
    assert_eq!(err.name, "test");
    assert!(err.since > Duration::from_millis(2000) + tolerance);
    drop(run);
}

#[tokio::test]
async fn etcd_election_keeps_the_last_leader_seen_after_stepping_down() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    let e = new_election(&cluster, "last", fast("a").recampaign(false)).await;
    let status = e.subscribe();

    // Lost: an operator deletes our key; the term ends and run returns.
    let replica = election("a", e.clone());
    wait_until("a leads", Duration::from_secs(10), || replica.is_leader()).await;
    let key = e.current_leader().await.unwrap().unwrap().key;
    client.delete(key, None).await.unwrap();
    timeout(Duration::from_secs(10), replica.join())
        .await
        .expect("run returns after the loss without recampaign");
    assert!(!e.is_leader());
    assert_eq!(
        e.leader().as_deref(),
        Some("a"),
        "the last leader seen is kept"
    );
    assert_eq!(status.borrow().leader.as_deref(), Some("a"));
    let events = replica.drain_events();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0], ElectionEvent::NewLeader(Some("a".into())));
    assert!(matches!(events[1], ElectionEvent::StartedLeading { .. }));
    assert_eq!(events[2], ElectionEvent::StoppedLeading);

    // Shut down: the session is revoked, the last leader seen still reported.
    let replica = election("a", e.clone());
    wait_until("a leads again", Duration::from_secs(10), || {
        replica.is_leader()
    })
    .await;
    replica.stop().await;
    assert!(!e.is_leader());
    assert_eq!(e.leader().as_deref(), Some("a"));
    assert!(e.current_leader().await.unwrap().is_none(), "resigned");
}

/// The value of `metric{name="test"}` in the text encoding of `registry`.
#[cfg(feature = "metrics")]
fn metric(registry: &prometheus_client::registry::Registry, metric: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let prefix = format!("{metric}{{name=\"test\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"));
    line[prefix.len()..].parse().unwrap()
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn etcd_election_publishes_the_election_metrics() {
    use leaderelection::Metrics;
    use prometheus_client::registry::Registry;

    let cluster = start(1);
    let (mut registry_a, mut registry_b) = (Registry::default(), Registry::default());
    let a = new_election(&cluster, "metrics", fast("a")).await;
    a.set_metrics(&Metrics::new(&mut registry_a));
    let b = new_election(&cluster, "metrics", fast("b")).await;
    b.set_metrics(&Metrics::new(&mut registry_b));
    let master = |r: &Registry| metric(r, "leader_election_master_status");
    let transitions = |r: &Registry| metric(r, "leader_election_transitions_total");
    let renewals = |r: &Registry| metric(r, "leader_election_renewal_duration_seconds_count");

    let replica_a = election("a", a.clone());
    wait_until("a leads", Duration::from_secs(10), || replica_a.is_leader()).await;
    let replica_b = election("b", b.clone());
    wait_until("b sees a lead", Duration::from_secs(10), || {
        b.leader().as_deref() == Some("a")
    })
    .await;
    // Leading for a few retry periods: the keep-alives are the renewals.
    sleep(Duration::from_millis(1600)).await;
    assert_eq!((master(&registry_a), master(&registry_b)), (1.0, 0.0));
    assert_eq!(
        (transitions(&registry_a), transitions(&registry_b)),
        (1.0, 0.0)
    );
    assert!(
        renewals(&registry_a) >= 2.0,
        "a's keep-alives are timed as renewals"
    );
    assert_eq!(
        metric(&registry_a, "leader_election_renewal_failures_total"),
        0.0
    );

    // a resigns: b leads, each replica's gauge follows.
    replica_a.stop().await;
    wait_until("b leads", Duration::from_secs(10), || replica_b.is_leader()).await;
    assert_eq!((master(&registry_a), master(&registry_b)), (0.0, 1.0));
    assert_eq!(
        (transitions(&registry_a), transitions(&registry_b)),
        (1.0, 1.0)
    );
    replica_b.stop().await;
    assert_eq!(master(&registry_b), 0.0);
}
