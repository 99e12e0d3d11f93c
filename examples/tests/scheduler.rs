//! The example scheduler, run as a newcomer runs it: separate processes, their output
//! read line by line, their HTTP endpoints queried.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The scheduler binary: cargo builds a package's binaries, with the test's
/// features, before its integration tests run.
fn scheduler() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scheduler"))
}

fn run_to_end(args: &[&str]) -> Output {
    Command::new(scheduler())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the example scheduler")
}

#[test]
fn bad_flags_and_invalid_timings_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
        (
            &["--leader-elect-lease-duration", "15"],
            "for '--leader-elect-lease-duration <DURATION>': time: missing unit",
        ),
        (
            &["--leader-elect-renew-deadline=20s"],
            "--leader-elect-lease-duration: 15s must be greater than --leader-elect-renew-deadline (20s)",
        ),
        (
            &["--leader-elect-retry-period=10s"],
            "--leader-elect-renew-deadline: 10s must be greater than 1.2 * --leader-elect-retry-period",
        ),
        (&["--leader-elect", "false"], "--leader-elect=false"),
        (&["--lock-file=/no/such/dir/x.json"], "--lock-file: directory /no/such/dir does not exist"),
    ];
    for (args, message) in cases {
        let out = run_to_end(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} started anyway");
    }
}

#[test]
fn locks_of_features_not_built_exit_2_saying_which_feature() {
    let kinds: &[(&str, &str, bool)] = &[
        ("leases", "kube", cfg!(feature = "kube")),
        ("configmapsleases", "kube", cfg!(feature = "kube")),
        ("etcd", "etcd", cfg!(feature = "etcd")),
    ];
    for (kind, feature, built) in kinds {
        if *built {
            continue;
        }
        let flag = format!("--leader-elect-resource-lock={kind}");
        let out = run_to_end(&[&flag]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{kind}: {stderr}");
        assert!(
            stderr.contains(&format!("--features {feature}")),
            "{kind}: {stderr}"
        );
    }
}

#[test]
fn help_lists_the_flags_and_exits_0() {
    let out = run_to_end(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--leader-elect[=<true|false>]",
        "--leader-elect-lease-duration",
        "--leader-elect-renew-deadline",
        "--leader-elect-retry-period",
        "--leader-elect-resource-lock",
        "--leader-elect-resource-name",
        "--leader-elect-resource-namespace",
        "--etcd-servers",
        "--kubeconfig",
        "--identity",
        "--bind-address",
        "--demo",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    // The locks that are a cargo feature away say which feature.
    assert!(help.contains("--features etcd") && help.contains("--features kube"));
}

/// A running replica and what it printed.
struct Replica {
    child: Child,
    name: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(replica index, event, details)` from the `<time> <identity> <EVENT> <details>` lines.
type Event = (usize, String, String);

fn start(lock_file: &Path, names: &[&str]) -> (Vec<Replica>, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let replicas = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut child = Command::new(scheduler())
                .args([
                    &format!("--lock-file={}", lock_file.display()),
                    "--leader-elect-resource-name=example-test",
                    // Generous for a loaded machine; the demo shows the fast settings.
                    "--leader-elect-lease-duration=3s",
                    "--leader-elect-renew-deadline=2s",
                    "--leader-elect-retry-period=500ms",
                    "--assign-interval=200ms",
                    "--port=0",
                    &format!("--identity={name}"),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the example scheduler");
            let stdout = child.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let mut parts = line.splitn(4, ' ');
                    let (_, _, Some(event), details) =
                        (parts.next(), parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let details = details.unwrap_or("").trim().to_owned();
                    if tx.send((i, event.to_owned(), details)).is_err() {
                        return;
                    }
                }
            });
            Replica {
                child,
                name: (*name).to_owned(),
            }
        })
        .collect();
    (replicas, rx)
}

fn next_event(rx: &mpsc::Receiver<Event>, deadline: Instant) -> Option<Event> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// Waits for an event matching `wanted`, returning it and whatever came before.
fn wait_for(
    rx: &mpsc::Receiver<Event>,
    what: &str,
    wanted: impl Fn(&Event) -> bool,
) -> (Event, Vec<Event>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut before = Vec::new();
    loop {
        match next_event(rx, deadline) {
            Some(e) if wanted(&e) => return (e, before),
            Some(e) => before.push(e),
            None => panic!("no {what} within 60s; saw {before:?}"),
        }
    }
}

/// A GET over a plain TCP connection: the status code and the body.
fn get(url_base: &str, path: &str) -> (u16, String) {
    let addr = url_base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, body.to_owned())
}

fn master_status(url: &str) -> String {
    let (code, body) = get(url, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with("leader_election_master_status{"))
        .unwrap_or_else(|| panic!("no leader_election_master_status in {body}"))
        .to_owned()
}

fn send_sigterm(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on a child we spawned and have not reaped only sends a signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

#[test]
fn two_replicas_one_active_failover_on_kill_and_release_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let lock_file = dir.path().join("example.json");
    let (mut replicas, rx) = start(&lock_file, &["alpha", "beta"]);

    // Both report where they serve; exactly one becomes active.
    let mut urls = vec![String::new(); 2];
    let mut active = None;
    let mut standby = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while urls.iter().any(String::is_empty) || active.is_none() || standby.is_none() {
        let Some((i, event, details)) = next_event(&rx, deadline) else {
            panic!("replicas did not settle within 60s: urls {urls:?}, active {active:?}, standby {standby:?}");
        };
        match event.as_str() {
            "READY" => {
                let url = details
                    .split_whitespace()
                    .find(|w| w.starts_with("http://"))
                    .map(|w| w.trim_end_matches("/healthz").to_owned())
                    .expect("READY names its URL");
                urls[i] = url;
            }
            "ACTIVE" => {
                assert_eq!(active, None, "two replicas became active");
                active = Some(i);
            }
            "STANDBY" => {
                standby = Some(i);
                let leader = &replicas[1 - i].name;
                assert!(details.contains(leader), "{details}");
            }
            _ => {}
        }
    }
    let (a, s) = (active.unwrap(), standby.unwrap());
    assert_ne!(a, s);

    // For a lease duration and more, the standby stays a standby and does no work.
    let quiet_until = Instant::now() + Duration::from_secs(4);
    while let Some((i, event, _)) = next_event(&rx, quiet_until) {
        assert!(
            i == a && event == "ASSIGN",
            "only the active replica should act: {} printed {event}",
            replicas[i].name
        );
    }

    // Both endpoints answer; the gauge tells the active from the standby.
    for url in &urls {
        assert_eq!(get(url, "/healthz"), (200, "ok".to_owned()));
        assert_eq!(get(url, "/readyz"), (200, "ok".to_owned()));
        let (_, metrics) = get(url, "/metrics");
        for series in [
            r#"leader_election_slowpath_total{name="example-test"} 0"#,
            r#"leader_election_transitions_total{name="example-test"}"#,
            r#"leader_election_renewal_duration_seconds_count{name="example-test"}"#,
            "# TYPE scheduler_example_assignments counter",
        ] {
            assert!(metrics.contains(series), "no {series} in {metrics}");
        }
    }
    assert_eq!(
        master_status(&urls[a]),
        r#"leader_election_master_status{name="example-test"} 1"#
    );
    assert_eq!(
        master_status(&urls[s]),
        r#"leader_election_master_status{name="example-test"} 0"#
    );
    assert_eq!(get(&urls[a], "/nope").0, 404);

    // Kill the active replica: the standby takes over.
    replicas[a].child.kill().unwrap();
    replicas[a].child.wait().unwrap();
    let ((_, _, details), _) = wait_for(&rx, "takeover", |(i, e, _)| *i == s && e == "ACTIVE");
    assert!(details.contains("fencing token"), "{details}");
    assert_eq!(
        master_status(&urls[s]),
        r#"leader_election_master_status{name="example-test"} 1"#
    );

    // SIGTERM: the work stops, then the lease is released, then the process exits 0.
    send_sigterm(&replicas[s].child);
    let (_, before) = wait_for(&rx, "the work to stop", |(i, e, _)| {
        *i == s && e == "STOPPED"
    });
    assert!(
        before.iter().all(|(_, e, _)| e != "EXIT"),
        "exited before its work stopped: {before:?}"
    );
    wait_for(&rx, "exit", |(i, e, _)| *i == s && e == "EXIT");
    assert!(replicas[s].child.wait().unwrap().success());
    let record = std::fs::read_to_string(&lock_file).unwrap();
    assert!(
        record.contains(r#""holderIdentity":"""#),
        "the lease should be released: {record}"
    );
}

#[test]
fn the_demo_runs_to_the_end_and_shows_both_handovers() {
    let started = Instant::now();
    let out = run_to_end(&["--demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for words in [
        "CRASH: SIGKILL",
        "GRACEFUL: SIGTERM",
        "ms without a leader",
        "at no moment were two replicas active at once",
    ] {
        assert!(stdout.contains(words), "no {words:?} in:\n{stdout}");
    }
    // Three leaders in turn, each with a larger fencing token.
    let tokens: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.split("fencing tokens ").nth(1))
        .expect("a summary of fencing tokens")
        .split(" -> ")
        .map(|t| t.trim().parse().expect("a token"))
        .collect();
    assert_eq!(tokens.len(), 3, "{stdout}");
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    // The README promises under 30 seconds; allow for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(90), "{stdout}");
}

#[test]
fn the_sharded_demo_balances_through_a_crash_and_a_join() {
    let out = run_to_end(&["--demo", "--shards", "12"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for words in [
        "balanced over the three replicas: 4/4/4 shards each",
        "CRASH: SIGKILL to replica-1",
        "balanced over the two survivors: 6/6 shards each",
        "JOIN: replica-4 starts",
    ] {
        assert!(stdout.contains(words), "no {words:?} in:\n{stdout}");
    }
    let balanced = stdout.matches("balanced over the three replicas").count();
    assert_eq!(
        balanced, 2,
        "balanced at the start and after the join:\n{stdout}"
    );
}

/// On a Kubernetes lock the scheduler records its leader election Events on the
/// Lease, as kube-scheduler does: "became leader" when it leads and, after a graceful
/// stop, "stopped leading", which `kubectl get events -n kube-system` lists.
#[cfg(feature = "testkit")]
#[test]
fn on_a_lease_it_records_its_leader_election_events() {
    use k8s_openapi::api::events::v1::Event;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(leaderelection_testkit::apiserver::ApiServer::start())
        .expect("start the API test server");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let mut child = Command::new(scheduler())
        .args(["--leader-elect", "--leader-elect-resource-lock", "leases"])
        .args(["--leader-elect-lease-duration", "3s"])
        .args(["--leader-elect-renew-deadline", "2s"])
        .args(["--leader-elect-retry-period", "1s"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the scheduler");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let assigned = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("ASSIGN"));
    assert!(assigned, "the scheduler never led");
    send_sigterm(&child);
    assert!(child.wait().unwrap().success());

    let listed = rt
        .block_on(async {
            let events: kube::Api<Event> = kube::Api::namespaced(server.client(), "kube-system");
            events.list(&Default::default()).await
        })
        .unwrap();
    let notes: Vec<String> = listed.items.iter().filter_map(|e| e.note.clone()).collect();
    assert!(
        notes.iter().any(|n| n.ends_with("became leader")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.ends_with("stopped leading")),
        "{notes:?}"
    );
    assert!(listed.items.iter().all(|e| e
        .regarding
        .as_ref()
        .is_some_and(|r| r.kind.as_deref() == Some("Lease"))));
}

/// With `--leader-elect-coordinated` the scheduler publishes its LeaseCandidate, leads
/// once the API server's coordinated election controller names it, and deletes the
/// candidate when it stops; a bad version exits 2 naming the flag.
#[cfg(feature = "testkit")]
#[test]
fn coordinated_it_leads_when_named_and_deletes_its_candidate_on_exit() {
    use k8s_openapi::api::coordination::v1beta1::LeaseCandidate;
    use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let options = ApiServerOptions::new()
        .coordinated_leader_election()
        .coordinated_election_duration(Duration::from_millis(500));
    let server = rt
        .block_on(ApiServer::start_with(options))
        .expect("start the API test server");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let scheduler_with = |extra: &[&str]| {
        let mut command = Command::new(scheduler());
        command
            .args(["--leader-elect-resource-lock=leases", "--identity=sched-a"])
            .args(["--leader-elect-lease-duration", "3s"])
            .args(["--leader-elect-renew-deadline", "2s"])
            .args(["--leader-elect-retry-period", "1s", "--port", "0"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(extra)
            .stdin(Stdio::null());
        command
    };

    let bad = scheduler_with(&["--leader-elect-coordinated", "--binary-version=1.x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--binary-version: \"1.x\" is not a version"),
        "{stderr}"
    );

    let mut child = scheduler_with(&[
        "--leader-elect-coordinated",
        "--binary-version=1.35",
        "--emulation-version=1.34",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("start the scheduler");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let assigned = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("ASSIGN"));
    assert!(assigned, "the scheduler never led");
    // The client's buffer task needs the runtime.
    let _runtime = rt.enter();
    let candidates: kube::Api<LeaseCandidate> =
        kube::Api::namespaced(server.client(), "kube-system");
    let spec = rt
        .block_on(candidates.get("sched-a"))
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(spec.lease_name, "kube-scheduler");
    assert_eq!(spec.binary_version, "1.35.0");
    assert_eq!(spec.emulation_version.as_deref(), Some("1.34.0"));
    assert_eq!(spec.strategy, "OldestEmulationVersion");
    send_sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert!(rt
        .block_on(candidates.get_opt("sched-a"))
        .unwrap()
        .is_none());
}
