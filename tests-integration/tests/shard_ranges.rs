//! Shard ranges on the test kit's Kubernetes API server: lists and watches with a
//! KEP-5866 `shardSelector` per shard, sent through the `kube` client, partition the
//! objects as `ShardRange::contains_key` does on the client, and a client that
//! filters a server's full answer itself (what it must do on a server that ignores
//! the parameter) gets the same partition.

#![cfg(feature = "kube")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::Request;
use leaderelection::{Config, LeaseLock, MemoryStore, ShardedElector};
use leaderelection_testkit::apiserver::ApiServer;
use serde_json::Value;

const NAMESPACE: &str = "default";
const SHARDS: u32 = 4;
const UID: &str = "object.metadata.uid";

fn elector(shards: u32) -> ShardedElector {
    let store = MemoryStore::new();
    ShardedElector::new(Config::new("controller"), shards, move |name: &str| {
        Box::new(store.lock(name)) as Box<dyn LeaseLock>
    })
    .unwrap()
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The request with `shardSelector=<selector>` added to its query (a macro, as the
/// request is an `http::Request`, a crate this package does not name).
macro_rules! with_shard_selector {
    ($request:expr, $selector:expr $(,)?) => {{
        let mut request = $request;
        let uri = request.uri().to_string();
        let sep = if uri.contains('?') { '&' } else { '?' };
        *request.uri_mut() = format!("{uri}{sep}shardSelector={}", encode($selector))
            .parse()
            .unwrap();
        request
    }};
}

fn configmaps() -> Request {
    Request::new(format!("/api/v1/namespaces/{NAMESPACE}/configmaps"))
}

/// Lists the ConfigMaps, with `selector` as the shard selector when given: the list
/// as JSON.
async fn list(client: &kube::Client, selector: Option<&str>) -> Value {
    let mut request = configmaps().list(&ListParams::default()).unwrap();
    if let Some(selector) = selector {
        request = with_shard_selector!(request, selector);
    }
    serde_json::from_str(&client.request_text(request).await.unwrap()).unwrap()
}

fn uids(list: &Value) -> BTreeSet<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["metadata"]["uid"].as_str().unwrap().to_string())
        .collect()
}

async fn create(api: &Api<ConfigMap>, names: impl Iterator<Item = String>) -> Vec<String> {
    let mut uids = Vec::new();
    for name in names {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "data": {"k": "v"},
        }))
        .unwrap();
        let created = api.create(&PostParams::default(), &cm).await.unwrap();
        uids.push(created.metadata.uid.unwrap());
    }
    uids
}

#[tokio::test]
async fn shard_selectors_partition_a_list_as_the_client_side_filter_does() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let all: BTreeSet<String> = create(&api, (0..200).map(|i| format!("cm-{i}")))
        .await
        .into_iter()
        .collect();
    assert_eq!(all.len(), 200);
    let elector = elector(SHARDS);

    // Server side: one list per shard.
    let mut served = BTreeMap::new();
    for shard in 0..SHARDS {
        let selector = elector.shard_range(shard).selector(UID);
        let list = list(&client, Some(&selector)).await;
        // A server that applied the selector says so, echoing it.
        assert_eq!(
            list["metadata"]["shardInfo"]["selector"], selector,
            "shard {shard}"
        );
        let got = uids(&list);
        for uid in &got {
            assert!(elector.shard_range(shard).contains_key(uid), "{uid}");
            assert_eq!(elector.range_shard_for_key(uid), shard, "{uid}");
        }
        served.insert(shard, got);
    }
    let total: usize = served.values().map(BTreeSet::len).sum();
    let union: BTreeSet<String> = served.values().flatten().cloned().collect();
    assert_eq!(total, 200, "the shards overlap: {served:?}");
    assert_eq!(union, all);
    // 200 random UIDs over 4 equal ranges: none is empty.
    assert!(served.values().all(|s| !s.is_empty()), "{served:?}");

    // A server that ignores the parameter answers with every object and no
    // shardInfo (as the list without it does); filtering on the client gives the
    // same partition.
    let full = list(&client, None).await;
    assert!(full["metadata"].get("shardInfo").is_none());
    for shard in 0..SHARDS {
        let range = elector.shard_range(shard);
        let filtered: BTreeSet<String> = uids(&full)
            .into_iter()
            .filter(|uid| range.contains_key(uid))
            .collect();
        assert_eq!(filtered, served[&shard], "shard {shard}");
    }

    // Combined with a label or field selector, both apply.
    let selector = elector.shard_range(0).selector(UID);
    let request = configmaps()
        .list(&ListParams::default().fields("metadata.name=cm-7"))
        .unwrap();
    let text = client
        .request_text(with_shard_selector!(request, &selector))
        .await
        .unwrap();
    let got = uids(&serde_json::from_str(&text).unwrap());
    let cm7 = api.get("cm-7").await.unwrap().metadata.uid.unwrap();
    let want: BTreeSet<String> = [cm7]
        .into_iter()
        .filter(|uid| elector.shard_range(0).contains_key(uid))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_malformed_shard_selector_is_a_bad_request() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let request = configmaps().list(&ListParams::default()).unwrap();
    let request = with_shard_selector!(
        request,
        "shardRange(object.metadata.name, '0x0', '0x8000000000000000')",
    );
    match client.request_text(request).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 400);
            assert_eq!(status.reason, "BadRequest");
            assert!(
                status.message.contains("invalid shardSelector"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_with_a_shard_selector_sees_only_its_range() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let elector = elector(SHARDS);
    let shard = 2;
    let range = elector.shard_range(shard);
    let rv = list(&client, None).await["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let request = configmaps()
        .watch(&WatchParams::default().timeout(3), &rv)
        .unwrap();
    let sharded = client
        .request_events::<ConfigMap>(with_shard_selector!(request, &range.selector(UID)))
        .await
        .unwrap();
    // The same watch without the selector, filtered on the client: the fallback.
    let request = configmaps()
        .watch(&WatchParams::default().timeout(3), &rv)
        .unwrap();
    let full = client.request_events::<ConfigMap>(request).await.unwrap();

    let created = create(&api, (0..40).map(|i| format!("new-{i}"))).await;
    let want: BTreeSet<String> = created
        .iter()
        .filter(|uid| range.contains_key(uid))
        .cloned()
        .collect();
    assert!(!want.is_empty() && want.len() < created.len(), "{want:?}");

    let added = |events: Vec<WatchEvent<ConfigMap>>| -> Vec<String> {
        events
            .into_iter()
            .filter_map(|e| match e {
                WatchEvent::Added(cm) => cm.metadata.uid,
                _ => None,
            })
            .collect()
    };
    let collect = |stream| async move {
        tokio::time::timeout(Duration::from_secs(10), TryStreamExt::try_collect(stream))
            .await
            .expect("the watch ends after its timeout")
            .unwrap()
    };
    let seen: Vec<String> = added(collect(sharded.boxed()).await);
    let seen_set: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), seen_set.len(), "an object was added twice");
    assert_eq!(seen_set, want);

    let fallback: BTreeSet<String> = added(collect(full.boxed()).await)
        .into_iter()
        .filter(|uid| range.contains_key(uid))
        .collect();
    assert_eq!(fallback, want);
}
