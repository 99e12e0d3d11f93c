//! Coordinated leader election on the API test server, driven by the real `kube`
//! client with k8s-openapi's coordination.k8s.io/v1beta1 LeaseCandidates: the
//! controller of kube-apiserver's
//! `pkg/controlplane/controller/leaderelection/leaderelection_controller.go`, and
//! the validation of `pkg/apis/coordination/validation/validation.go`.

use std::future::Future;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::coordination::v1beta1::{LeaseCandidate, LeaseCandidateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions, Kubectl};
use tokio::task::JoinHandle;

const NS: &str = "kube-system";
const LEASE: &str = "kube-scheduler";
/// Short enough for tests, long enough for a loaded machine's acks.
const ELECTION: Duration = Duration::from_millis(300);
/// How long a test waits for the controller.
const PATIENCE: Duration = Duration::from_secs(15);

async fn server() -> ApiServer {
    ApiServer::start_with(
        ApiServerOptions::new()
            .coordinated_leader_election()
            .coordinated_election_duration(ELECTION),
    )
    .await
    .expect("start the API test server")
}

fn ago(seconds: i64) -> MicroTime {
    let now = jiff::Timestamp::now();
    MicroTime(now - jiff::SignedDuration::from_secs(seconds))
}

fn candidate(name: &str, binary: &str, emulation: &str, renewed_ago: i64) -> LeaseCandidate {
    LeaseCandidate {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseCandidateSpec {
            lease_name: LEASE.into(),
            binary_version: binary.into(),
            emulation_version: Some(emulation.into()),
            strategy: "OldestEmulationVersion".into(),
            renew_time: Some(ago(renewed_ago)),
            ping_time: None,
        }),
    }
}

/// Answers the controller's pings for `names`, as a candidate's elector does: a
/// `renewTime` after each `pingTime`.
fn ack_pings(api: Api<LeaseCandidate>, names: &[&str]) -> JoinHandle<()> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    tokio::spawn(async move {
        loop {
            for name in &names {
                let Ok(Some(mut c)) = api.get_opt(name).await else {
                    continue;
                };
                let Some(spec) = c.spec.as_mut() else {
                    continue;
                };
                let pending = match (&spec.ping_time, &spec.renew_time) {
                    (Some(ping), Some(renew)) => renew.0 < ping.0,
                    (Some(_), None) => true,
                    _ => false,
                };
                if pending {
                    spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
                    // A conflict with the controller is retried on the next pass.
                    let _ = api.replace(name, &PostParams::default(), &c).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Waits until the Lease satisfies `done`, and returns it.
async fn lease_until(leases: &Api<Lease>, what: &str, done: impl Fn(&LeaseSpec) -> bool) -> Lease {
    eventually(what, || async {
        let lease = leases.get_opt(LEASE).await.ok().flatten()?;
        done(lease.spec.as_ref()?).then_some(lease)
    })
    .await
}

async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, f: impl Fn() -> F) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn holder(spec: &LeaseSpec) -> &str {
    spec.holder_identity.as_deref().unwrap_or("")
}

#[tokio::test]
async fn the_oldest_emulation_version_is_elected() {
    let server = server().await;
    let candidates: Api<LeaseCandidate> = Api::namespaced(server.client(), NS);
    let leases: Api<Lease> = Api::namespaced(server.client(), NS);
    let pp = PostParams::default();
    // Silent for a minute: each is pinged and acks.
    for (name, binary, emulation) in [
        ("node-new", "1.34.0", "1.34.0"),
        ("node-old", "1.33.0", "1.32.0"),
        ("node-mid", "1.34.0", "1.33.0"),
    ] {
        candidates
            .create(&pp, &candidate(name, binary, emulation, 60))
            .await
            .unwrap();
    }
    let acks = ack_pings(candidates.clone(), &["node-new", "node-old", "node-mid"]);
    let lease = lease_until(&leases, "a holder", |s| !holder(s).is_empty()).await;
    let spec = lease.spec.unwrap();
    assert_eq!(holder(&spec), "node-old");
    assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
    assert_eq!(spec.lease_duration_seconds, Some(5));
    assert!(spec.renew_time.is_some());
    assert_eq!(spec.preferred_holder, None);
    for name in ["node-new", "node-old", "node-mid"] {
        let c = candidates.get(name).await.unwrap().spec.unwrap();
        assert!(c.ping_time.is_some(), "{name} was pinged");
        assert!(
            c.renew_time.unwrap().0 > c.ping_time.unwrap().0,
            "{name} acked"
        );
    }
    acks.abort();
}

#[tokio::test]
async fn a_candidate_that_never_acks_is_not_elected() {
    let server = server().await;
    let candidates: Api<LeaseCandidate> = Api::namespaced(server.client(), NS);
    let leases: Api<Lease> = Api::namespaced(server.client(), NS);
    let pp = PostParams::default();
    // The best versions, but nobody answers its pings.
    candidates
        .create(&pp, &candidate("node-deaf", "1.31.0", "1.31.0", 60))
        .await
        .unwrap();
    candidates
        .create(&pp, &candidate("node-b", "1.33.0", "1.33.0", 60))
        .await
        .unwrap();
    candidates
        .create(&pp, &candidate("node-a", "1.33.0", "1.32.0", 60))
        .await
        .unwrap();
    // The deaf candidate watches its own object, as the library's candidate does.
    let mut own = candidates
        .watch(
            &WatchParams::default().fields("metadata.name=node-deaf"),
            "0",
        )
        .await
        .unwrap()
        .boxed();
    let acks = ack_pings(candidates.clone(), &["node-a", "node-b"]);
    let lease = lease_until(&leases, "a holder", |s| !holder(s).is_empty()).await;
    assert_eq!(holder(lease.spec.as_ref().unwrap()), "node-a");
    // Its watch saw the ping it never answered (in its first state already, when the
    // controller pinged before the watch began).
    let pinged = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = own.try_next().await.unwrap() {
            if let WatchEvent::Added(c) | WatchEvent::Modified(c) = event {
                if c.spec.as_ref().is_some_and(|s| s.ping_time.is_some()) {
                    return c;
                }
            }
        }
        panic!("the watch of node-deaf ended");
    })
    .await
    .expect("node-deaf was pinged");
    assert_eq!(pinged.metadata.name.as_deref(), Some("node-deaf"));
    assert!(pinged.spec.unwrap().ping_time.is_some());
    acks.abort();
}

#[tokio::test]
async fn a_better_candidate_is_marked_as_preferred_while_the_lease_is_held() {
    let server = server().await;
    let candidates: Api<LeaseCandidate> = Api::namespaced(server.client(), NS);
    let leases: Api<Lease> = Api::namespaced(server.client(), NS);
    let pp = PostParams::default();
    candidates
        .create(&pp, &candidate("node-a", "1.34.0", "1.34.0", 60))
        .await
        .unwrap();
    let acks = ack_pings(candidates.clone(), &["node-a", "node-b"]);
    lease_until(&leases, "node-a to hold", |s| holder(s) == "node-a").await;
    // node-a renews its Lease as a holder does, so that it never expires here.
    let renewing = {
        let leases = leases.clone();
        tokio::spawn(async move {
            loop {
                let renew =
                    serde_json::json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
                let _ = leases
                    .patch(LEASE, &PatchParams::default(), &Patch::Merge(renew))
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    candidates
        .create(&pp, &candidate("node-b", "1.34.0", "1.33.0", 0))
        .await
        .unwrap();
    let lease = lease_until(&leases, "node-b preferred", |s| {
        s.preferred_holder.as_deref() == Some("node-b")
    })
    .await;
    assert_eq!(
        holder(lease.spec.as_ref().unwrap()),
        "node-a",
        "the holder is left to step down"
    );
    // The holder releases: the preferred candidate gets the Lease at once.
    renewing.abort();
    let release = serde_json::json!({"spec": {"holderIdentity": ""}});
    leases
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(release))
        .await
        .unwrap();
    let lease = lease_until(&leases, "node-b to hold", |s| holder(s) == "node-b").await;
    assert_eq!(lease.spec.unwrap().preferred_holder, None);
    acks.abort();
}

#[tokio::test]
async fn an_expired_lease_is_handed_to_the_best_candidate() {
    let server = server().await;
    let candidates: Api<LeaseCandidate> = Api::namespaced(server.client(), NS);
    let leases: Api<Lease> = Api::namespaced(server.client(), NS);
    let pp = PostParams::default();
    let stale = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("node-gone".into()),
            lease_duration_seconds: Some(1),
            renew_time: Some(ago(60)),
            acquire_time: Some(ago(120)),
            strategy: Some("OldestEmulationVersion".into()),
            preferred_holder: Some("node-gone-too".into()),
            lease_transitions: Some(3),
        }),
    };
    leases.create(&pp, &stale).await.unwrap();
    candidates
        .create(&pp, &candidate("node-b", "1.34.0", "1.34.0", 60))
        .await
        .unwrap();
    candidates
        .create(&pp, &candidate("node-a", "1.34.0", "1.33.0", 60))
        .await
        .unwrap();
    let acks = ack_pings(candidates.clone(), &["node-a", "node-b"]);
    let lease = lease_until(&leases, "node-a to hold", |s| holder(s) == "node-a").await;
    let spec = lease.spec.unwrap();
    assert_eq!(spec.preferred_holder, None);
    assert_eq!(spec.acquire_time, None);
    assert_eq!(spec.lease_duration_seconds, Some(5));
    assert_eq!(
        spec.lease_transitions,
        Some(3),
        "transitions are the holder's to count"
    );
    acks.abort();
}

/// A change that makes a valid candidate invalid.
type Spoil = fn(&mut LeaseCandidateSpec);

#[tokio::test]
async fn invalid_candidates_are_refused_naming_the_field() {
    let server = ApiServer::start().await.unwrap();
    let candidates: Api<LeaseCandidate> = Api::namespaced(server.client(), NS);
    let pp = PostParams::default();
    let cases: [(&str, Spoil, &str); 4] = [
        ("malformed", |s| s.binary_version = "1.33".into(), "spec.binaryVersion: Invalid value: \"1.33\": must be a valid semantic version"),
        ("unknown", |s| s.strategy = "Newest".into(), "spec.strategy.strategy: Unsupported value: \"Newest\": supported values: \"OldestEmulationVersion\""),
        ("unnamed", |s| s.lease_name = String::new(), "spec.leaseName: Required value"),
        ("older", |s| s.binary_version = "1.31.0".into(), "spec.binaryVersion: Invalid value: \"1.31.0\": must be greater than or equal to `emulationVersion`"),
    ];
    for (name, spoil, message) in cases {
        let mut c = candidate(name, "1.33.0", "1.32.0", 0);
        spoil(c.spec.as_mut().unwrap());
        let err = candidates.create(&pp, &c).await.unwrap_err();
        let kube::Error::Api(status) = err else {
            panic!("{name}: {err}");
        };
        assert_eq!(
            (status.code, status.reason.as_str()),
            (422, "Invalid"),
            "{name}"
        );
        let prefix = format!("LeaseCandidate.coordination.k8s.io {name:?} is invalid: ");
        assert!(
            status.message.starts_with(&prefix) && status.message.contains(message),
            "{name}: {}",
            status.message
        );
    }
    // The Lease a candidate runs for cannot change.
    let mut c = candidates
        .create(&pp, &candidate("node-a", "1.33.0", "1.32.0", 0))
        .await
        .unwrap();
    c.spec.as_mut().unwrap().lease_name = "kube-controller-manager".into();
    let err = candidates.replace("node-a", &pp, &c).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "spec.leaseName: Invalid value: \"kube-controller-manager\": field is immutable"
        ),
        "{err}"
    );
    // Nor is a LeaseCandidate created by a PUT, as kube-apiserver's strategy says.
    let err = candidates
        .replace("node-z", &pp, &candidate("node-z", "1.33.0", "1.32.0", 0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err}"
    );
    // A Lease's preferred holder needs a strategy.
    let leases: Api<Lease> = Api::namespaced(server.client(), NS);
    let mut lease = Lease::default();
    lease.metadata.name = Some(LEASE.into());
    lease.spec = Some(LeaseSpec {
        preferred_holder: Some("node-a".into()),
        ..LeaseSpec::default()
    });
    let err = leases.create(&pp, &lease).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined"
        ),
        "{err}"
    );
    lease.spec.as_mut().unwrap().strategy = Some("OldestEmulationVersion".into());
    let created = leases.create(&pp, &lease).await.unwrap().spec.unwrap();
    assert_eq!(created.preferred_holder.as_deref(), Some("node-a"));
    assert_eq!(created.strategy.as_deref(), Some("OldestEmulationVersion"));
}

/// Without the option, as without kube-apiserver's feature gate: candidates are
/// served, and nobody elects.
#[tokio::test]
async fn without_the_option_nobody_elects() {
    let server = ApiServer::start().await.unwrap();
    let candidates: Api<LeaseCandidate> = Api::namespaced(server.client(), NS);
    let leases: Api<Lease> = Api::namespaced(server.client(), NS);
    candidates
        .create(
            &PostParams::default(),
            &candidate("node-a", "1.33.0", "1.32.0", 0),
        )
        .await
        .unwrap();
    tokio::time::sleep(ELECTION * 3).await;
    assert!(leases.get_opt(LEASE).await.unwrap().is_none());
    let listed = candidates.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].spec.as_ref().unwrap().ping_time, None);
}

/// kubectl 1.32 against a server presenting itself as 1.33, within its one minor.
#[tokio::test]
async fn kubectl_gets_applies_and_explains_lease_candidates() {
    let server = ApiServer::start().await.unwrap();
    let kubectl = Kubectl::new(&server).unwrap();
    let manifest = kubectl.dir().join("candidate.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: coordination.k8s.io/v1beta1\n\
         kind: LeaseCandidate\n\
         metadata:\n  name: node-a\n  namespace: kube-system\n\
         spec:\n  leaseName: kube-scheduler\n  binaryVersion: 1.33.0\n  emulationVersion: 1.32.0\n  strategy: OldestEmulationVersion\n",
    )
    .unwrap();
    let path = manifest.to_str().unwrap();
    let applied = kubectl.ok(&["apply", "-f", path]).await;
    assert_eq!(
        applied.trim(),
        "leasecandidate.coordination.k8s.io/node-a created"
    );
    let again = kubectl.ok(&["apply", "-f", path]).await;
    assert_eq!(
        again.trim(),
        "leasecandidate.coordination.k8s.io/node-a unchanged"
    );

    let table = kubectl.ok(&["get", "leasecandidates", "-n", NS]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "LEASENAME",
            "BINARYVERSION",
            "EMULATIONVERSION",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["node-a", "kube-scheduler", "1.33.0", "1.32.0"]);

    let explained = kubectl.ok(&["explain", "leasecandidate.spec"]).await;
    assert!(
        explained.contains("KIND:") && explained.contains("LeaseCandidate"),
        "{explained}"
    );
    for field in [
        "leaseName",
        "binaryVersion",
        "emulationVersion",
        "pingTime",
        "renewTime",
        "strategy",
    ] {
        assert!(explained.contains(field), "{field} in {explained}");
    }

    // Strict field validation, from the v1beta1 OpenAPI document.
    std::fs::write(&manifest, "apiVersion: coordination.k8s.io/v1beta1\nkind: LeaseCandidate\nmetadata:\n  name: node-b\n  namespace: kube-system\nspec:\n  leaseName: kube-scheduler\n  binaryVersion: 1.33.0\n  emulationVersion: 1.32.0\n  strategy: OldestEmulationVersion\n  colour: red\n").unwrap();
    let refused = kubectl.run(&["apply", "-f", path]).await.unwrap();
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("unknown field \"spec.colour\""),
        "{}",
        refused.stderr
    );
}
