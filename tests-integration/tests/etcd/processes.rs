//! Leader processes killed and frozen: this test binary re-run as `child_candidate`.

use super::*;

/// The leader process of a test: this binary re-run as `child_candidate`.
struct ChildCandidate {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildCandidate {
    fn spawn(mode: &str, cluster: &EtcdCluster, name: &str, identity: &str, ms: [u64; 3]) -> Self {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "processes::child_candidate",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LE_CHILD_MODE", mode)
            .env("LE_CHILD_ENDPOINTS", cluster.endpoints().join(","))
            .env("LE_CHILD_NAME", name)
            .env("LE_CHILD_IDENTITY", identity)
            .env("LE_CHILD_TIMING", format!("{},{},{}", ms[0], ms[1], ms[2]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child candidate");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness writes `test child_candidate ... ` before the first line.
                let line = line.rsplit("... ").next().unwrap_or_default().to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line starting with `prefix`; returns it with the lines before it.
    async fn expect(&mut self, prefix: &str, limit: Duration) -> (String, Vec<String>) {
        let started = Instant::now();
        let mut before = Vec::new();
        loop {
            match self.lines.try_recv() {
                Ok(line) if line.starts_with(prefix) => return (line, before),
                Ok(line) => before.push(line),
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    assert!(
                        started.elapsed() < limit,
                        "child: no {prefix:?} line within {limit:?}; saw {before:?}"
                    );
                    sleep(Duration::from_millis(20)).await;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    panic!("child exited before printing {prefix:?}; saw {before:?}")
                }
            }
        }
    }

    fn drain(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    fn signal(&self, sig: libc::c_int) {
        signal_pid(self.child.id(), sig).expect("signal the child");
    }
}

impl Drop for ChildCandidate {
    fn drop(&mut self) {
        let _ = signal_pid(self.child.id(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test of its own: the leader process of the tests above, when `LE_CHILD_MODE`
/// is set. Prints `LEADING t`, then `ACT t` every 100ms while its leadership is valid,
/// `EXPIRED t` if it finds it no longer valid, and `LOST t` when it is lost.
#[test]
#[ignore = "the leader process of the process tests, which run it themselves"]
fn child_candidate() {
    let mode = std::env::var("LE_CHILD_MODE").expect("LE_CHILD_MODE (the process tests set it)");
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let ms: Vec<u64> = var("LE_CHILD_TIMING")
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let (endpoints, name, identity) = (
        leaderelection::lock::etcd::parse_servers(&var("LE_CHILD_ENDPOINTS")),
        var("LE_CHILD_NAME"),
        var("LE_CHILD_IDENTITY"),
    );
    let config = timing(&identity, ms[0], ms[1], ms[2]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        // An orphaned child ends by itself.
        let limit = sleep(Duration::from_secs(120));
        let options = EtcdOptions::new().native_lease(mode == "lease");
        let lock = EtcdLock::connect(&endpoints, options, name).await.unwrap();
        let elector = LeaderElector::new(lock, config).unwrap();
        let mut events = elector.events();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if event == ElectionEvent::StoppedLeading {
                    println!("STOPPED");
                }
            }
        });
        tokio::select! {
            _ = elector.run(shutdown, child_work) => {}
            _ = limit => {}
        }
    });
}

async fn child_work(leadership: leaderelection::Leadership) {
    let t = leadership.fencing_token();
    println!("LEADING {t}");
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            _ = leadership.lost() => break,
            _ = tick.tick() => {
                if leadership.is_valid() {
                    println!("ACT {t}");
                } else {
                    println!("EXPIRED {t}");
                    leadership.lost().await;
                    break;
                }
            }
        }
    }
    println!("LOST {t}");
}

async fn killed_leader_standby_leads_after_the_ttl(mode: &str) {
    let cluster = start(1);
    let name = format!("killed-{mode}");
    let mut child = ChildCandidate::spawn(mode, &cluster, &name, "child", [3000, 2000, 500]);
    child.expect("LEADING", Duration::from_secs(30)).await;
    let options = EtcdOptions::new().native_lease(mode == "lease");
    let standby = elector(
        "standby",
        lock(&cluster, &name, options).await,
        fast("standby"),
    );
    sleep(Duration::from_secs(1)).await;
    assert!(!standby.is_leader());

    child.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    wait_until("the standby leads", Duration::from_secs(15), || {
        standby.is_leader()
    })
    .await;
    let took = killed_at.elapsed();
    // Not before the dead leader's lease could have run out (3s from its last
    // renewal, at most a retry period before the kill).
    assert!(
        took > Duration::from_millis(2000),
        "took over after only {took:?}"
    );
    eprintln!("{mode}: standby led {took:?} after SIGKILL");
    if mode == "lease" {
        let mut client = raw(&cluster).await;
        let kv = client
            .get(format!("/leaderelection/{name}"), None)
            .await
            .unwrap()
            .kvs()[0]
            .clone();
        // The standby's own timer and etcd's expiry of the dead leader's lease run
        // out together; either may come first. The dead lease goes either way.
        assert_ne!(kv.lease(), 0, "the standby bound the key to its own lease");
        let started = Instant::now();
        loop {
            let leases: Vec<i64> = client
                .leases()
                .await
                .unwrap()
                .leases()
                .iter()
                .map(|l| l.id())
                .collect();
            if leases == vec![kv.lease()] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "leases left: {leases:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }
    standby.stop().await;
}

#[tokio::test]
async fn killed_leader_process_standby_leads_after_the_lease() {
    killed_leader_standby_leads_after_the_ttl("lock").await;
}

#[tokio::test]
async fn killed_leader_process_native_lease_expires_and_standby_leads() {
    killed_leader_standby_leads_after_the_ttl("lease").await;
}

#[tokio::test]
async fn frozen_leader_knows_it_lost_before_acting() {
    let cluster = start(1);
    let mut child = ChildCandidate::spawn("lease", &cluster, "frozen", "child", [3000, 2000, 500]);
    let (leading, _) = child.expect("LEADING", Duration::from_secs(30)).await;
    child.expect("ACT", Duration::from_secs(10)).await;
    let standby = elector(
        "standby",
        lock(&cluster, "frozen", EtcdOptions::new().native_lease(true)).await,
        fast("standby"),
    );

    child.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    wait_until("the standby leads", Duration::from_secs(15), || {
        standby.is_leader()
    })
    .await;
    // Frozen for longer than the lease, then everything it printed before is read.
    sleep(Duration::from_secs(4).saturating_sub(stopped_at.elapsed())).await;
    child.drain();
    child.signal(libc::SIGCONT);

    // On resuming, the elector finds the term over and steps down. The work never acts:
    // its leadership is no longer valid (it may print EXPIRED or LOST, or be aborted
    // first, since the lease it ran under is over).
    let (_, before) = child.expect("STOPPED", Duration::from_secs(10)).await;
    sleep(Duration::from_secs(2)).await;
    let after: Vec<String> = before.into_iter().chain(child.drain()).collect();
    assert!(
        !after
            .iter()
            .any(|l| l.starts_with("ACT") || l.starts_with("LEADING")),
        "the resumed process acted or led again: {after:?}"
    );
    let token = leading.trim_start_matches("LEADING ");
    for line in &after {
        assert!(
            *line == format!("EXPIRED {token}") || *line == format!("LOST {token}"),
            "unexpected line after resuming: {line:?}"
        );
    }
    assert!(standby.is_leader());
    standby.stop().await;
}
