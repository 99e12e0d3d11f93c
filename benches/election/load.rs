//! Requests per minute to the backend at the default timings, for the leader and for
//! each standby: every library's election runs at the same time, counted over one
//! window (at the API server per user; through a proxy per replica on etcd).

use std::collections::BTreeMap;

use tokio::time::Instant;

use crate::{Env, Plan};
use leaderelection_bench_driver::scenario::{Library, Replica, Timings};
use leaderelection_bench_driver::stats::{fmt_rate, ratio, Table};

/// Candidates per library: one leader, two standbys.
pub const LOAD_REPLICAS: usize = 3;

/// Requests of one replica so far, in all and by kind.
#[derive(Clone, Debug, Default)]
struct Count {
    by: BTreeMap<String, u64>,
}

impl Count {
    fn total(&self) -> u64 {
        self.by.values().sum()
    }

    fn since(&self, earlier: &Count) -> Count {
        let mut by = BTreeMap::new();
        for (k, v) in &self.by {
            let d = v.saturating_sub(earlier.by.get(k).copied().unwrap_or(0));
            if d > 0 {
                by.insert(k.clone(), d);
            }
        }
        Count { by }
    }

    fn describe(&self) -> String {
        if self.by.is_empty() {
            return "none".into();
        }
        self.by
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What one snapshot reads once for every entry.
struct Ctx {
    kube: Option<leaderelection_testkit::apiserver::RequestStats>,
}

impl Ctx {
    fn take(env: &Env) -> Self {
        Ctx {
            kube: env.kube.as_ref().map(|k| k.server.requests()),
        }
    }
}

/// Reads the requests of each replica of one election from a snapshot.
type Counter = Box<dyn Fn(&Ctx) -> Vec<Count> + Send + Sync>;

/// Where a set of etcd replicas registers its proxies' counters.
type ProxyList = std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<crate::grpc::ProxyStats>>>>;

/// One library's election under measurement.
struct Entry {
    backend: &'static str,
    library: String,
    /// The base of the ratios of its backend.
    ours: bool,
    /// Requests of the leader and of each standby so far, in replica order.
    counts: Counter,
    error: Option<String>,
}

pub async fn section(plan: &Plan, env: &Env) -> String {
    let timings = Timings::DEFAULT;
    let mut entries: Vec<Entry> = Vec::new();
    let mut stops: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();

    if let Some(k) = &env.kube {
        kube_entries(k, timings, &mut entries, &mut stops).await;
    }
    if let Some(e) = &env.etcd {
        etcd_entries(e, timings, &mut entries, &mut stops).await;
    }
    if entries.is_empty() {
        return String::new();
    }

    // Let the standbys settle (first read, watch opened), then count.
    tokio::time::sleep(timings.retry * 2).await;
    let ctx = Ctx::take(env);
    let before: Vec<Vec<Count>> = entries.iter().map(|e| (e.counts)(&ctx)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(plan.load_window).await;
    let ctx = Ctx::take(env);
    let after: Vec<Vec<Count>> = entries.iter().map(|e| (e.counts)(&ctx)).collect();
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    futures::future::join_all(stops).await;

    // Leader and mean standby rates per entry.
    let rates: Vec<Option<(f64, f64, String)>> = entries
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(e, (b, a))| {
            if e.error.is_some() || a.len() < 2 || a.len() != b.len() {
                return None;
            }
            let delta: Vec<Count> = a.iter().zip(b).map(|(a, b)| a.since(b)).collect();
            let leader = delta[0].total() as f64 / minutes;
            let standbys = &delta[1..];
            let standby = standbys.iter().map(|d| d.total() as f64).sum::<f64>()
                / standbys.len() as f64
                / minutes;
            let detail = format!(
                "{}; {}",
                delta[0].describe(),
                standbys
                    .iter()
                    .map(Count::describe)
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
            Some((leader, standby, detail))
        })
        .collect();

    let mut t = Table::new(&[
        "backend",
        "library",
        "leader req/min",
        "leader peer/ours",
        "each standby req/min",
        "standby peer/ours",
        "what was sent (leader; standbys)",
        "notes",
    ]);
    for (i, e) in entries.iter().enumerate() {
        let Some((leader, standby, detail)) = &rates[i] else {
            t.row(vec![
                e.backend.to_string(),
                e.library.clone(),
                "–".into(),
                "".into(),
                "–".into(),
                "".into(),
                "".into(),
                format!(
                    "not measured: {}",
                    e.error.clone().unwrap_or_else(|| "no counts".into())
                ),
            ]);
            continue;
        };
        let base = entries
            .iter()
            .position(|b| b.ours && b.backend == e.backend)
            .and_then(|j| rates[j].as_ref());
        let (rl, rs) = match base {
            Some((bl, bs, _)) if !e.ours => (
                ratio(Some(*leader), Some(*bl)),
                ratio(Some(*standby), Some(*bs)),
            ),
            _ => (String::new(), String::new()),
        };
        t.row(vec![
            e.backend.to_string(),
            e.library.clone(),
            fmt_rate(*leader),
            rl,
            fmt_rate(*standby),
            rs,
            detail.clone(),
            String::new(),
        ]);
    }
    format!(
        "### Requests per minute to the backend ({}; one leader and two standbys per library, all at once, over {:.0} s)\n\nKubernetes: counted by the API test server per user (one user per replica). etcd: gRPC request messages (each unary call, each lease keep-alive, each watch request) counted by a proxy in front of each replica.\n\n{}\n",
        timings.describe(),
        minutes * 60.0,
        t.render()
    )
}

fn stop_later(replicas: Vec<Replica>) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let stops = replicas.into_iter().map(|r| async move {
            if let Some(release) = r.release {
                release();
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), r.stopped).await;
        });
        futures::future::join_all(stops).await;
    })
}

async fn kube_entries(
    k: &crate::KubeEnv,
    timings: Timings,
    entries: &mut Vec<Entry>,
    stops: &mut Vec<futures::future::BoxFuture<'static, ()>>,
) {
    use crate::k8s;
    use crate::ours::Ours;

    let server = &k.server;
    let counts_of = |users: Vec<String>| -> Counter {
        Box::new(move |ctx: &Ctx| {
            let Some(s) = &ctx.kube else {
                return Vec::new();
            };
            users
                .iter()
                .map(|u| {
                    let mut c = Count::default();
                    for (key, n) in s.iter().filter(|(key, _)| key.user == *u) {
                        *c.by.entry(key.verb.clone()).or_default() += n;
                    }
                    c
                })
                .collect()
        })
    };

    // Ours.
    let users = k8s::load_users("leaderelection");
    let mut replicas = Vec::new();
    let mut error = None;
    for (i, user) in users.iter().enumerate() {
        let lib = Ours {
            make_lock: k8s::ours_make_lock(server, &k8s::token_of(user)),
            timings,
        };
        match start_one(&lib, "load-ours", i).await {
            Ok(r) => replicas.push(r),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    stops.push(stop_later(replicas));
    entries.push(Entry {
        backend: crate::KUBE,
        library: "leaderelection".into(),
        ours: true,
        counts: counts_of(users),
        error,
    });

    // kube-lease-manager, in this process.
    let users = k8s::load_users("kube-lease-manager");
    let mut replicas = Vec::new();
    let mut error = None;
    for (i, user) in users.iter().enumerate() {
        let lib =
            k8s::KubeLeaseManager::new(server.config_with_token(&k8s::token_of(user)), timings);
        match start_one(&lib, "load-klm", i).await {
            Ok(r) => replicas.push(r),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    stops.push(stop_later(replicas));
    entries.push(Entry {
        backend: crate::KUBE,
        library: k8s::KLM.into(),
        ours: false,
        counts: counts_of(users),
        error,
    });

    // k8s-controller, in this process.
    let users = k8s::load_users(crate::k8s_controller::ARG);
    let mut replicas = Vec::new();
    let mut error = None;
    for (i, user) in users.iter().enumerate() {
        let lib = crate::k8s_controller::K8sController::new(
            server.config_with_token(&k8s::token_of(user)),
            timings,
        );
        match start_one(&lib, "load-kctl", i).await {
            Ok(r) => replicas.push(r),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    stops.push(stop_later(replicas));
    entries.push(Entry {
        backend: crate::KUBE,
        library: crate::k8s_controller::LABEL.into(),
        ours: false,
        counts: counts_of(users),
        error,
    });

    // The others, in the peer program.
    for p in k8s::PROGRAM_PEERS {
        let users = k8s::load_users(p.arg);
        let election = format!("load-{}", p.arg);
        let error = match &k.peers {
            Ok(bin) => match k8s::SteadyPeer::start(bin, p, server, &election, &users).await {
                Ok(peer) => {
                    stops.push(Box::pin(peer.stop()));
                    None
                }
                Err(e) => Some(e),
            },
            Err(e) => Some(e.clone()),
        };
        entries.push(Entry {
            backend: crate::KUBE,
            library: p.label.into(),
            ours: false,
            counts: counts_of(users),
            error,
        });
    }
}

/// Starts replica `i` of an election; the first waits until it leads.
async fn start_one(lib: &dyn Library, election: &str, i: usize) -> Result<Replica, String> {
    let mut r = lib
        .start(election.to_string(), format!("candidate-{i}"))
        .await?;
    if i == 0
        && r.wait_leading(std::time::Duration::from_secs(60))
            .await
            .is_none()
    {
        return Err("the first candidate did not lead within 60 s".into());
    }
    Ok(r)
}

async fn etcd_entries(
    e: &crate::etcd::EtcdEnv,
    timings: Timings,
    entries: &mut Vec<Entry>,
    stops: &mut Vec<futures::future::BoxFuture<'static, ()>>,
) {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};

    use crate::etcd;
    use crate::grpc::ProxyStats;
    use crate::ours::Ours;

    let target = e.target;
    type MakeLibrary = Box<dyn Fn(ProxyList) -> Box<dyn Library>>;
    let sets: Vec<(&'static str, String, bool, MakeLibrary)> = vec![
        (
            crate::ETCD_RECORD,
            "leaderelection".into(),
            true,
            Box::new(move |s| {
                Box::new(Ours {
                    make_lock: etcd::lock_maker(target, false, Some(s)),
                    timings,
                })
            }),
        ),
        (
            crate::ETCD_NATIVE,
            "leaderelection".into(),
            true,
            Box::new(move |s| {
                Box::new(Ours {
                    make_lock: etcd::lock_maker(target, true, Some(s)),
                    timings,
                })
            }),
        ),
        (
            crate::ETCD_ELECTION,
            "leaderelection".into(),
            true,
            Box::new(move |s| {
                Box::new(etcd::OursElection {
                    target,
                    timings,
                    stats: Some(s),
                })
            }),
        ),
        (
            crate::ETCD_ELECTION,
            etcd::PEER.into(),
            false,
            Box::new(move |s| {
                Box::new(etcd::EtcdClientElection {
                    target,
                    timings,
                    stats: Some(s),
                })
            }),
        ),
    ];
    for (n, (backend, library, ours, make)) in sets.into_iter().enumerate() {
        let stats: Arc<Mutex<Vec<Arc<ProxyStats>>>> = Arc::default();
        let lib = make(stats.clone());
        let mut replicas = Vec::new();
        let mut error = None;
        for i in 0..LOAD_REPLICAS {
            match start_one(lib.as_ref(), &format!("load-etcd-{n}"), i).await {
                Ok(r) => replicas.push(r),
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
        stops.push(stop_later(replicas));
        entries.push(Entry {
            backend,
            library,
            ours,
            counts: Box::new(move |_: &Ctx| {
                stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|s| {
                        let mut c = Count::default();
                        c.by.insert("requests".into(), s.requests.load(Ordering::Relaxed));
                        c
                    })
                    .collect()
            }),
            error,
        });
    }
}
