//! The election metrics and readiness on the in-memory lock, under tokio's paused
//! clock: the registry is encoded as Prometheus scrapes it and the values read back.

use std::time::Duration;

use leaderelection::{Config, LeaderElectionRecord, LeaderElector, MemoryStore, Metrics};
use leaderelection_testkit::faults::FaultyLock;
use prometheus_client::registry::Registry;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

const NAME: &str = "scheduler";

/// The value of `metric{name="scheduler"}` in the text encoding of `registry`.
fn value(registry: &Registry, metric: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let prefix = format!("{metric}{{name=\"{NAME}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"));
    line[prefix.len()..].parse().unwrap()
}

fn held_by(holder: &str) -> String {
    let now = jiff::Timestamp::now();
    serde_json::to_string(&LeaderElectionRecord {
        holder_identity: holder.to_owned(),
        lease_duration_seconds: 15,
        acquire_time: Some(now),
        renew_time: Some(now),
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn metrics_follow_acquire_renewals_conflicts_failures_loss_and_release() {
    let store = MemoryStore::new();
    let lock = FaultyLock::new(store.lock(NAME));
    let control = lock.faults();
    control.set_latency(Duration::from_millis(5));
    let elector = LeaderElector::new(lock, Config::new(NAME).identity("a")).unwrap();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    elector.set_metrics(&metrics);
    assert!(!elector.is_ready());
    assert_eq!(value(&registry, "leader_election_master_status"), 0.0);

    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (elector, shutdown) = (elector.clone(), shutdown.clone());
        async move {
            elector
                .run(shutdown, |l| async move { l.lost().await })
                .await
        }
    });

    // Acquired at once, then renewed every retry period (2 s).
    sleep(Duration::from_millis(100)).await;
    assert!(elector.is_ready());
    assert_eq!(value(&registry, "leader_election_master_status"), 1.0);
    assert_eq!(value(&registry, "leader_election_transitions_total"), 1.0);
    sleep(Duration::from_secs(5)).await;
    let renewals = "leader_election_renewal_duration_seconds_count";
    assert_eq!(value(&registry, renewals), 2.0);
    let sum = value(&registry, "leader_election_renewal_duration_seconds_sum");
    assert!(
        (0.009..0.011).contains(&sum),
        "two 5 ms renewals took {sum}s"
    );
    assert_eq!(value(&registry, "leader_election_slowpath_total"), 0.0);

    // Someone touches the record, still naming us: the next renewal takes the slow path.
    store.put_raw(NAME, held_by("a"));
    sleep(Duration::from_secs(2)).await;
    assert_eq!(value(&registry, "leader_election_slowpath_total"), 1.0);
    assert_eq!(value(&registry, "leader_election_master_status"), 1.0);

    // The backend fails for one renewal; the retry succeeds within the renew deadline.
    control.set_unavailable(true);
    sleep(Duration::from_secs(2)).await;
    control.set_unavailable(false);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        value(&registry, "leader_election_renewal_failures_total"),
        1.0
    );
    assert_eq!(value(&registry, "leader_election_master_status"), 1.0);

    // Another holder takes the record: the leader's watch of its own record sees it and
    // steps down before any renewal, so the slow path is not taken again.
    store.put_raw(NAME, held_by("b"));
    sleep(Duration::from_secs(2)).await;
    assert_eq!(elector.leader().as_deref(), Some("b"));
    assert_eq!(value(&registry, "leader_election_master_status"), 0.0);
    assert_eq!(value(&registry, "leader_election_slowpath_total"), 1.0);
    // Leaderless only while the first record was being created (one 5 ms request).
    let leaderless = value(&registry, "leader_election_leaderless_seconds_total");
    assert!(
        (0.004..0.006).contains(&leaderless),
        "leaderless {leaderless}s"
    );

    // b never renews. When its lease runs out as observed, nobody leads until this
    // replica can reach the backend again and take over.
    sleep(Duration::from_secs(13)).await;
    control.set_unavailable(true);
    sleep(Duration::from_secs(10)).await;
    let leaderless = value(&registry, "leader_election_leaderless_seconds_total");
    assert!(
        (7.0..=10.0).contains(&leaderless),
        "leaderless {leaderless}s so far"
    );
    control.set_unavailable(false);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(value(&registry, "leader_election_master_status"), 1.0);
    assert_eq!(value(&registry, "leader_election_transitions_total"), 2.0);
    let leaderless = value(&registry, "leader_election_leaderless_seconds_total");
    assert!(
        (7.0..=15.0).contains(&leaderless),
        "leaderless {leaderless}s"
    );
    sleep(Duration::from_secs(10)).await;
    assert_eq!(
        value(&registry, "leader_election_leaderless_seconds_total"),
        leaderless,
        "a leader is seen again: the counter stopped"
    );

    // Release on shutdown.
    shutdown.cancel();
    run.await.unwrap();
    assert_eq!(value(&registry, "leader_election_master_status"), 0.0);
    assert_eq!(value(&registry, "leader_election_transitions_total"), 2.0);
}

#[tokio::test(start_paused = true)]
async fn one_registry_serves_several_elections_and_register_metrics_is_the_shortcut() {
    let store = MemoryStore::new();
    let mut registry = Registry::default();
    let a = LeaderElector::new(store.lock("a"), Config::new(NAME).identity("x")).unwrap();
    a.register_metrics(&mut registry);
    let b = LeaderElector::new(store.lock("b"), Config::new("other").identity("x")).unwrap();
    let metrics = Metrics::new(&mut Registry::default());
    b.set_metrics(&metrics);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("# TYPE leader_election_master_status gauge"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE leader_election_slowpath counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE leader_election_renewal_duration_seconds histogram"));
    assert!(
        !text.contains("other"),
        "b publishes into its own registry: {text}"
    );
}
