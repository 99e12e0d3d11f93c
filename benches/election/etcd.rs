//! The etcd side: our record lock (compare-and-swap plus watch, with and without a
//! native lease) and our implementation of etcd's election protocol, beside etcd's own
//! election API (`v3election`: campaign, resign) driven through `etcd-client`, all on
//! one real etcd member. Each replica talks through a proxy of its own that counts its
//! requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::FutureExt;
use leaderelection::lock::etcd::{connect, EtcdOptions};
use leaderelection::{
    Config, EtcdElection, EtcdLock, LeaderElectionRecord, LeaseLock, LockError, Version, Versioned,
    WatchStream,
};
use leaderelection_testkit::etcd::EtcdCluster;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::grpc::{CountedProxy, ProxyStats};
use crate::ours::{MakeLock, Ours};
use leaderelection_bench_driver::scenario::{Library, Replica, Timings};

pub const PEER: &str = "etcd v3election API (etcd-client 0.21)";

pub struct EtcdEnv {
    _cluster: EtcdCluster,
    pub target: SocketAddr,
}

impl EtcdEnv {
    pub fn start() -> Result<Self, String> {
        let cluster = EtcdCluster::start(1).map_err(|e| format!("cannot start etcd: {e}"))?;
        let endpoint = cluster.endpoint(0);
        let target = endpoint
            .trim_start_matches("http://")
            .parse()
            .map_err(|e| format!("bad etcd endpoint {endpoint}: {e}"))?;
        Ok(Self {
            _cluster: cluster,
            target,
        })
    }
}

/// A lock that keeps its replica's proxy alive as long as itself.
#[derive(Debug)]
struct Proxied {
    inner: Box<dyn LeaseLock>,
    _proxy: CountedProxy,
}

#[async_trait]
impl LeaseLock for Proxied {
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.inner.get().await
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        self.inner.create(record).await
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        self.inner.update(record, expected).await
    }

    fn watch(&self) -> Option<WatchStream> {
        self.inner.watch()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn proves_vacancy(&self) -> Result<bool, LockError> {
        self.inner.proves_vacancy().await
    }

    fn fencing_token(&self, record: &LeaderElectionRecord, version: &Version) -> u64 {
        self.inner.fencing_token(record, version)
    }
}

/// Our [`EtcdLock`] through a proxy of its own; `stats` receives each proxy's counters.
pub fn lock_maker(
    target: SocketAddr,
    native_lease: bool,
    stats: Option<Arc<std::sync::Mutex<Vec<Arc<ProxyStats>>>>>,
) -> MakeLock {
    Arc::new(move |name: String| {
        let stats = stats.clone();
        async move {
            let proxy = CountedProxy::start(target)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(s) = &stats {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(proxy.stats.clone());
            }
            let options = EtcdOptions::new().native_lease(native_lease);
            let lock = EtcdLock::connect(&[proxy.endpoint()], options, name)
                .await
                .map_err(|e| e.to_string())?;
            let lock: Box<dyn LeaseLock> = Box::new(Proxied {
                inner: Box::new(lock),
                _proxy: proxy,
            });
            Ok(lock)
        }
        .boxed()
    })
}

pub fn ours_lock(target: SocketAddr, native_lease: bool, timings: Timings) -> Ours {
    Ours {
        make_lock: lock_maker(target, native_lease, None),
        timings,
    }
}

// ---- our implementation of etcd's election protocol -------------------------------

pub struct OursElection {
    pub target: SocketAddr,
    pub timings: Timings,
    /// Receives each replica's proxy counters, for the load measurement.
    pub stats: Option<Arc<std::sync::Mutex<Vec<Arc<ProxyStats>>>>>,
}

impl Library for OursElection {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let (target, t, stats) = (self.target, self.timings, self.stats.clone());
        async move {
            let proxy = CountedProxy::start(target)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(s) = &stats {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(proxy.stats.clone());
            }
            let client = connect(&[proxy.endpoint()], &EtcdOptions::new())
                .await
                .map_err(|e| e.to_string())?;
            let config = Config::new(election.clone())
                .identity(identity)
                .lease_duration(t.lease)
                .renew_deadline(t.renew)
                .retry_period(t.retry);
            let elector = EtcdElection::new(client, format!("/bench-election/{election}"), config)
                .map_err(|e| e.to_string())?
                .etcd_election_timeout(leaderelection_testkit::etcd::ELECTION_TIMEOUT);
            let (tx, rx) = watch::channel(None);
            let shutdown = CancellationToken::new();
            let last_renewal = proxy.stats.last_response.clone();
            let task = tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    let _proxy = proxy;
                    elector
                        .run(shutdown, move |leadership| {
                            let now = Instant::now();
                            tx.send_if_modified(|v| v.is_none() && v.replace(now).is_none());
                            async move { leadership.lost().await }
                        })
                        .await
                }
            });
            let abort = task.abort_handle();
            Ok(Replica {
                leading: rx,
                last_renewal,
                release: Some(Box::new(move || shutdown.cancel())),
                crash: Box::new(move || abort.abort()),
                stopped: async move {
                    let _ = task.await;
                }
                .boxed(),
            })
        }
        .boxed()
    }
}

// ---- etcd's own election API through etcd-client ----------------------------------

/// etcd's election service as its clients use it: a lease kept alive every third of
/// its TTL (as Go's `concurrency.Session` does), `campaign` (which returns once this
/// candidate leads), `resign` and revoke to release.
pub struct EtcdClientElection {
    pub target: SocketAddr,
    pub timings: Timings,
    pub stats: Option<Arc<std::sync::Mutex<Vec<Arc<ProxyStats>>>>>,
}

impl Library for EtcdClientElection {
    fn start(
        &self,
        election: String,
        identity: String,
    ) -> BoxFuture<'static, Result<Replica, String>> {
        let (target, t, stats) = (self.target, self.timings, self.stats.clone());
        async move {
            let proxy = CountedProxy::start(target)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(s) = &stats {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(proxy.stats.clone());
            }
            let mut client = etcd_client::Client::connect([proxy.endpoint()], None)
                .await
                .map_err(|e| e.to_string())?;
            let ttl = t.lease.as_secs().max(1) as i64;
            let lease = client
                .lease_grant(ttl, None)
                .await
                .map_err(|e| e.to_string())?
                .id();
            let last_renewal = proxy.stats.last_response.clone();
            let keepalive = tokio::spawn({
                let mut client = client.clone();
                async move {
                    let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
                        return;
                    };
                    loop {
                        tokio::time::sleep(Duration::from_secs_f64(ttl as f64 / 3.0)).await;
                        if keeper.keep_alive().await.is_err() {
                            return;
                        }
                        match stream.message().await {
                            Ok(Some(r)) if r.ttl() > 0 => {}
                            _ => return,
                        }
                    }
                }
            });
            let (tx, rx) = watch::channel(None);
            let (release_tx, mut release_rx) = tokio::sync::oneshot::channel::<()>();
            let name = format!("/bench-etcd-election/{election}");
            let campaign = tokio::spawn({
                let keepalive = keepalive.abort_handle();
                async move {
                    let _proxy = proxy;
                    let mut elections = client.election_client();
                    let won = tokio::select! {
                        r = elections.campaign(name, identity, lease) => r.ok(),
                        _ = &mut release_rx => None,
                    };
                    if let Some(mut won) = won {
                        let now = Instant::now();
                        tx.send_if_modified(|v| v.is_none() && v.replace(now).is_none());
                        // Lead until told to release (or until the handle is dropped).
                        let _ = (&mut release_rx).await;
                        if let Some(key) = won.take_leader() {
                            let _ = elections
                                .resign(Some(etcd_client::ResignOptions::new().with_leader(key)))
                                .await;
                        }
                    }
                    keepalive.abort();
                    let _ = client.lease_revoke(lease).await;
                }
            });
            let abort_c = campaign.abort_handle();
            let abort_k = keepalive.abort_handle();
            Ok(Replica {
                leading: rx,
                last_renewal,
                release: Some(Box::new(move || {
                    let _ = release_tx.send(());
                })),
                crash: Box::new(move || {
                    abort_c.abort();
                    abort_k.abort();
                }),
                stopped: async move {
                    let _ = campaign.await;
                }
                .boxed(),
            })
        }
        .boxed()
    }
}
