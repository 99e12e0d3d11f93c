//! etcd's election protocol: how often standbys keep their sessions alive, and how
//! fast, and how safely, the next in line takes over from a leader that crashed.

use leaderelection::lock::etcd::etcd_client::{self, PutOptions};

use super::*;

/// etcd's `LeaseTimeToLive` answer for `lease` (whole seconds, -1 when gone).
async fn ttl(client: &mut Client, lease: i64) -> i64 {
    client
        .lease_time_to_live(lease, None)
        .await
        .map(|r| r.ttl())
        .unwrap_or(-1)
}

/// The session lease of the candidate whose identity is `value`.
async fn lease_of(client: &mut Client, prefix: &str, value: &str) -> i64 {
    let keys = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    keys.kvs()
        .iter()
        .find(|kv| kv.value() == value.as_bytes())
        .unwrap_or_else(|| panic!("no candidate key with value {value}"))
        .lease()
}

/// The lowest `LeaseTimeToLive` answer for `lease` over `how_long`, asked every 100 ms.
async fn lowest_ttl(client: &mut Client, lease: i64, how_long: Duration) -> i64 {
    let until = Instant::now() + how_long;
    let mut lowest = i64::MAX;
    while Instant::now() < until {
        lowest = lowest.min(ttl(client, lease).await);
        sleep(Duration::from_millis(100)).await;
    }
    lowest
}

#[tokio::test]
async fn etcd_election_standbys_keep_alive_at_a_third_of_the_ttl_and_leaders_every_retry() {
    let cluster = start(1);
    let mut client = raw(&cluster).await;
    // Session TTL 9 s, keep-alive every 0.5 s for the leader: its session never shows
    // less than 8.5 s less a slow keep-alive. A standby keeps alive every 3 s (Go's
    // `concurrency.Session`), so its session shows less than 8 s for a second of each.
    let config = |id| timing(id, 9000, 6000, 500);
    let a = election("a", new_election(&cluster, "cadence", config("a")).await);
    wait_until("a leads", Duration::from_secs(10), || a.is_leader()).await;
    let b = election("b", new_election(&cluster, "cadence", config("b")).await);
    sleep(Duration::from_millis(500)).await;
    let a_lease = lease_of(&mut client, "cadence/", "a").await;
    let b_lease = lease_of(&mut client, "cadence/", "b").await;

    let mut other = raw(&cluster).await;
    let (leader, standby) = tokio::join!(
        lowest_ttl(&mut other, a_lease, Duration::from_secs(7)),
        lowest_ttl(&mut client, b_lease, Duration::from_secs(7)),
    );
    eprintln!("lowest TTL answers over 7 s: leader {leader} s, standby {standby} s");
    assert!(leader >= 7, "the leader let its session fall to {leader} s");
    assert!(
        standby <= 7,
        "the standby kept its session above {standby} s: keep-alives every retry period"
    );

    // b leads on a's resignation, from the same session, and keeps it alive every
    // retry period from its first renewal on.
    a.stop().await;
    wait_until("b leads", Duration::from_secs(5), || b.is_leader()).await;
    assert_eq!(lease_of(&mut client, "cadence/", "b").await, b_lease);
    sleep(Duration::from_millis(300)).await;
    let led = lowest_ttl(&mut client, b_lease, Duration::from_secs(5)).await;
    eprintln!("lowest TTL answer of the new leader over 5 s: {led} s");
    assert!(led >= 7, "the new leader let its session fall to {led} s");
    b.stop().await;
}

/// A leader of the election that is not a replica of ours: a session and a key made
/// with a raw client, kept alive by the test.
struct FakeLeader {
    client: Client,
    lease: i64,
}

impl FakeLeader {
    async fn join(cluster: &EtcdCluster, prefix: &str, ttl: i64) -> Self {
        let mut client = raw(cluster).await;
        let lease = client.lease_grant(ttl, None).await.unwrap().id();
        client
            .put(
                format!("{prefix}{lease:x}"),
                "fake",
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        Self { client, lease }
    }

    /// One keep-alive; returns when it was sent and when it was answered.
    async fn keep_alive(&mut self) -> (Instant, Instant) {
        let sent = Instant::now();
        fn gone<T>(e: etcd_client::Error) -> T {
            panic!("the fake leader's session is gone: {e}")
        }
        let (mut keeper, mut answers) = self
            .client
            .lease_keep_alive(self.lease)
            .await
            .unwrap_or_else(gone);
        keeper.keep_alive().await.unwrap_or_else(gone);
        let answer = answers.message().await.unwrap_or_else(gone).unwrap();
        assert!(answer.ttl() > 0, "the fake leader's session is gone");
        (sent, Instant::now())
    }
}

/// A replica of ours that records when it started leading.
fn recording(
    election: EtcdElection,
) -> (
    CancellationToken,
    Arc<Mutex<Option<Instant>>>,
    JoinHandle<()>,
) {
    let shutdown = CancellationToken::new();
    let led_at = Arc::new(Mutex::new(None));
    let task = tokio::spawn({
        let (shutdown, led_at) = (shutdown.clone(), led_at.clone());
        async move {
            election
                .run(shutdown, move |l| {
                    led_at.lock().unwrap().get_or_insert_with(Instant::now);
                    async move { l.lost().await }
                })
                .await
        }
    });
    (shutdown, led_at, task)
}

/// When etcd's lessor, which revokes expired leases every 500 ms, runs: the instant a
/// lease left to expire is deleted, less nothing (the revoke commits within
/// milliseconds on one member).
async fn lessor_tick(cluster: &EtcdCluster) -> Instant {
    let mut client = raw(cluster).await;
    let lease = client.lease_grant(2, None).await.unwrap().id();
    client
        .put("tick", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let mut events = client.watch("tick", None).await.unwrap();
    loop {
        let resp = timeout(Duration::from_secs(10), events.message())
            .await
            .expect("the lease expires")
            .unwrap()
            .unwrap();
        if !resp.events().is_empty() {
            return Instant::now();
        }
    }
}

#[tokio::test]
async fn etcd_election_next_in_line_revokes_a_crashed_leaders_expired_session() {
    let cluster = start(1);
    let tick = lessor_tick(&cluster).await;
    let mut past_expiry = Vec::new();
    for round in 0..4 {
        let prefix = format!("crash{round}/");
        let name = prefix.trim_end_matches('/').to_owned();
        let mut fake = FakeLeader::join(&cluster, &prefix, 3).await;
        let standby = new_election(&cluster, &name, fast("b").recampaign(false)).await;
        let (shutdown, led_at, task) = recording(standby.clone());
        wait_until("b sees the fake leader", Duration::from_secs(10), || {
            standby.leader().as_deref() == Some("fake")
        })
        .await;
        for _ in 0..3 {
            fake.keep_alive().await;
            sleep(Duration::from_millis(500)).await;
        }
        // The last keep-alive, timed so that the session expires 50 ms after a tick of
        // etcd's lessor: left to etcd it would go 450 ms past its expiry.
        let since_tick = (Instant::now() + Duration::from_secs(3) - tick).as_millis() % 500;
        sleep(Duration::from_millis(((550 - since_tick) % 500) as u64)).await;
        let (sent, _) = fake.keep_alive().await;
        let expiry = sent + Duration::from_secs(3);
        wait_until("b leads", Duration::from_secs(10), || {
            led_at.lock().unwrap().is_some()
        })
        .await;
        let led = led_at.lock().unwrap().unwrap();
        assert!(
            led > expiry,
            "b led {:?} before the session could expire",
            expiry - led
        );
        past_expiry.push(led - expiry);
        shutdown.cancel();
        task.await.unwrap();
    }
    eprintln!("crashed leader replaced this long past its session's expiry: {past_expiry:?}");
    for late in &past_expiry {
        assert!(
            *late < Duration::from_millis(300),
            "took {late:?} past expiry: etcd's lessor tick revoked it, not the next in line"
        );
    }
}

#[tokio::test]
async fn etcd_election_a_slow_leader_within_its_ttl_is_never_revoked() {
    let cluster = start(1);
    let mut fake = FakeLeader::join(&cluster, "slow/", 3).await;
    let standby = new_election(&cluster, "slow", fast("b")).await;
    let (shutdown, led_at, task) = recording(standby.clone());
    wait_until("b sees the fake leader", Duration::from_secs(10), || {
        standby.leader().as_deref() == Some("fake")
    })
    .await;
    // Keep-alives 2.5 s apart on a 3 s session: etcd answers 0 s left before each,
    // and the session is alive throughout.
    for _ in 0..5 {
        sleep(Duration::from_millis(2500)).await;
        fake.keep_alive().await;
        assert!(
            led_at.lock().unwrap().is_none(),
            "b led while the leader's session was alive"
        );
    }
    let mut client = raw(&cluster).await;
    assert!(
        ttl(&mut client, fake.lease).await > 0,
        "the slow leader's session was revoked"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn etcd_election_a_standby_leads_with_time_left_whatever_the_age_of_its_keep_alive() {
    let cluster = start(1);
    // A 9 s session kept alive every 3 s by a standby, and a renew deadline of 1 s: a
    // term started from a standby keep-alive older than 0.6 s would be over before its
    // first renewal could land. Handovers at different points of the standby's cadence.
    let mut left = Vec::new();
    for round in 0..4u64 {
        let name = format!("fresh{round}");
        let config = |id| timing(id, 9000, 1000, 400);
        let a = election("a", new_election(&cluster, &name, config("a")).await);
        wait_until("a leads", Duration::from_secs(10), || a.is_leader()).await;
        let b = new_election(&cluster, &name, config("b").recampaign(false)).await;
        let shutdown = CancellationToken::new();
        let started = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (b, shutdown, started) = (b.clone(), shutdown.clone(), started.clone());
            async move {
                b.run(shutdown, move |l| {
                    *started.lock().unwrap() =
                        Some(l.valid_until().checked_duration_since(Instant::now()));
                    async move { l.lost().await }
                })
                .await
            }
        });
        wait_until("b waits", Duration::from_secs(10), || {
            b.leader().as_deref() == Some("a")
        })
        .await;
        sleep(Duration::from_millis(700 + 900 * round)).await;
        a.stop().await;
        wait_until("b leads", Duration::from_secs(5), || {
            started.lock().unwrap().is_some()
        })
        .await;
        let time_left = started.lock().unwrap().unwrap();
        left.push(time_left);
        shutdown.cancel();
        task.await.unwrap();
    }
    eprintln!("time left in the new leader's first term when it started: {left:?}");
    for time_left in left {
        let time_left = time_left.expect("the term started already over");
        assert!(
            time_left >= Duration::from_millis(400),
            "the term started with {time_left:?} left, less than a retry period"
        );
    }
}
