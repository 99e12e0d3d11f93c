//! The Events a Kubernetes lock posts, read back the way an operator reads them: with
//! the real `kubectl get events` against the test kit's API server.
#![cfg(feature = "kube")]

use std::time::Duration;

use leaderelection::lock::kube::{EventRecorder, KubeLeaseLock, ResourceLockKind};
use leaderelection::{Config, LeaderElector};
use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions, Kubectl};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

const NS: &str = "kube-system";
const NAME: &str = "evented-scheduler";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_events_shows_became_leader_and_stopped_leading() {
    // kubectl sends credentials only over TLS.
    let server = ApiServer::start_with(ApiServerOptions::new().tls().auth())
        .await
        .unwrap();
    let kubectl = Kubectl::new(&server).unwrap();

    let client = server.client();
    let config = Config::new(NAME)
        .identity("pod-a")
        .lease_duration(Duration::from_secs(4))
        .renew_deadline(Duration::from_secs(3))
        .retry_period(Duration::from_secs(1));
    let elector = LeaderElector::new(KubeLeaseLock::new(client.clone(), NS, NAME), config).unwrap();
    let recorder = EventRecorder::new(ResourceLockKind::Leases, client, NS, NAME, "pod-a")
        .component("test-scheduler");
    let recorder = tokio::spawn(recorder.run(elector.events()));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (elector, shutdown) = (elector.clone(), shutdown.clone());
        async move {
            elector
                .run(shutdown, |l| async move { l.lost().await })
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !elector.is_leader() {
        assert!(Instant::now() < deadline, "pod-a never led");
        sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    run.await.unwrap();

    // kubectl's own table: TYPE, REASON, OBJECT and MESSAGE columns.
    let wanted = ["pod-a became leader", "pod-a stopped leading"];
    let table = loop {
        let table = kubectl.ok(&["get", "events", "-n", NS]).await;
        if wanted.iter().all(|w| table.contains(w)) {
            break table;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl get events shows:\n{table}"
        );
        sleep(Duration::from_millis(100)).await;
    };
    for message in wanted {
        let line = table
            .lines()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} in:\n{table}"));
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert!(columns.contains(&"Normal"), "{line}");
        assert!(columns.contains(&"LeaderElection"), "{line}");
        assert!(
            columns.contains(&format!("lease/{NAME}").as_str()),
            "{line}"
        );
    }
    // The reporting component of each, in core/v1's field.
    let jsonpath = "jsonpath={.items[*].reportingComponent}";
    let components = kubectl
        .ok(&["get", "events", "-n", NS, "-o", jsonpath])
        .await;
    assert_eq!(
        components.split_whitespace().collect::<Vec<_>>(),
        ["test-scheduler"; 2]
    );
    recorder.abort();
}
