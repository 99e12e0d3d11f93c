//! The file lock: the lock contract, its file format, damaged files, watch (on file
//! events and by polling), and elections between real processes on one host.
//!
//! The process tests re-run this test binary as candidates: the ignored
//! `child_candidate`, run in a role of the test kit's child-process helper, runs an
//! elector on a file until its stdin closes. It is not a test of its own, so a plain
//! run counts it as ignored, not passed.
#![cfg(feature = "file")]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use leaderelection::{
    Config, FileLock, LeaderElectionRecord, LeaderElector, LeaseLock, LockError, LockEvent, Version,
};
use leaderelection_testkit::checker::{self, Checker};
use leaderelection_testkit::child::{self, Child, Command, OutputKind};
use leaderelection_testkit::contract::{self, Backend};
use leaderelection_testkit::replica::{Link, Replica, Work};
use serde::{Deserialize, Serialize};

// Generous for a loaded machine: a renewal is a flock, a write, two fsyncs and a rename.
const LEASE: Duration = Duration::from_secs(4);
const RENEW: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(500);

fn rec(holder: &str) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder_identity: holder.into(),
        lease_duration_seconds: 15,
        ..Default::default()
    }
}

fn version(n: u64) -> Version {
    Version::from(n)
}

/// A watch that would poll only this rarely: within [`EVENT_WITHIN`], only a file event
/// can deliver a change.
const SLOW_POLL: Duration = Duration::from_secs(10);
const EVENT_WITHIN: Duration = Duration::from_secs(2);

/// A filesystem the suite may delete and garble files in: one file per record name;
/// watches on file events, or polling only.
struct Files(tempfile::TempDir, bool);

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(format!("{name}.json"))
    }
}

#[async_trait]
impl Backend for Files {
    async fn lock(&self, name: &str) -> Box<dyn LeaseLock> {
        // Polling watches poll often, so that the suite does not wait on them.
        let lock = FileLock::new(self.path(name)).file_events(self.1);
        Box::new(lock.poll_interval(Duration::from_millis(10)))
    }

    fn can_delete(&self) -> bool {
        true
    }

    async fn delete(&self, name: &str) {
        std::fs::remove_file(self.path(name)).unwrap();
    }

    fn can_corrupt(&self) -> bool {
        true
    }

    async fn corrupt(&self, name: &str) {
        std::fs::write(self.path(name), "{oops").unwrap();
    }
}

#[tokio::test]
async fn file_lock_keeps_the_contract() {
    contract::run_all(&Files(tempfile::tempdir().unwrap(), true)).await;
}

#[tokio::test]
async fn file_lock_keeps_the_contract_when_polling() {
    contract::run_all(&Files(tempfile::tempdir().unwrap(), false)).await;
}

#[tokio::test]
async fn the_file_is_client_go_json_with_a_counter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.json");
    let lock = FileLock::new(&path);

    let v1 = lock.create(&rec("a")).await.unwrap();
    assert_eq!(v1, version(1));
    let v2 = lock.update(&rec("b"), &v1).await.unwrap();
    assert_eq!(v2, version(2));
    assert_eq!(lock.fencing_token(&rec("b"), &v2), 2);

    // The file is the record in client-go's JSON with the counter, readable by people.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        format!("{{\"version\":2,\"record\":{}}}\n", rec("b").to_json())
    );
    assert!(!dir.path().join("jobs.json.tmp").exists());
    assert_eq!(lock.describe(), format!("file:{}", path.display()));
}

#[tokio::test]
async fn counter_keeps_growing_after_the_file_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.json");
    let lock = FileLock::new(&path);
    let v1 = lock.create(&rec("a")).await.unwrap();
    let v2 = lock.update(&rec("a"), &v1).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(lock.get().await.unwrap().is_none());
    // A fencing token must never repeat: the side file remembers the highest counter.
    let v3 = lock.create(&rec("b")).await.unwrap();
    assert_eq!((v2, v3), (version(2), version(3)));
}

#[tokio::test]
async fn damaged_file_with_a_readable_counter_is_overwritten_by_compare_and_swap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.json");
    std::fs::write(&path, r#"{"version":7,"record":{"holderIdentity":5}}"#).unwrap();
    let lock = FileLock::new(&path);

    let (source, v) = match lock.get().await {
        Err(LockError::InvalidRecord { source, version }) => (source, version),
        other => panic!("expected InvalidRecord, got {other:?}"),
    };
    assert_eq!(v, Some(version(7)));
    assert!(source.reason.contains("record"), "{source}");
    assert!(source.text.contains("holderIdentity"), "{source}");

    assert!(matches!(
        lock.create(&rec("a")).await,
        Err(LockError::AlreadyExists)
    ));
    assert!(matches!(
        lock.update(&rec("a"), &version(6)).await,
        Err(LockError::Conflict)
    ));
    assert_eq!(
        lock.update(&rec("a"), &version(7)).await.unwrap(),
        version(8)
    );
    assert_eq!(lock.get().await.unwrap().unwrap().record, rec("a"));
}

#[tokio::test]
async fn garbage_file_gets_the_highest_counter_written_so_it_can_be_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.json");
    let lock = FileLock::new(&path);
    let v1 = lock.create(&rec("a")).await.unwrap();
    let v2 = lock.update(&rec("a"), &v1).await.unwrap();

    for garbage in [&b""[..], b"\x00\x01 not json", b"{\"version\":\"two\"}"] {
        std::fs::write(&path, garbage).unwrap();
        match lock.get().await {
            Err(LockError::InvalidRecord { version: v, .. }) => assert_eq!(v, Some(v2.clone())),
            other => panic!("expected InvalidRecord, got {other:?}"),
        }
    }
    let v3 = lock.update(&rec("b"), &v2).await.unwrap();
    assert_eq!(v3, version(3));
    assert_eq!(lock.get().await.unwrap().unwrap().record, rec("b"));
}

#[tokio::test]
async fn io_errors_are_unavailable_and_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("no-such-dir");
    let lock = FileLock::new(missing_dir.join("e.json"));
    for err in [
        lock.get().await.unwrap_err(),
        lock.create(&rec("a")).await.unwrap_err(),
        lock.update(&rec("a"), &version(1)).await.unwrap_err(),
    ] {
        match &err {
            LockError::Unavailable { backend, .. } => assert_eq!(*backend, "file"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&missing_dir.display().to_string()),
            "{message}"
        );
    }

    // A directory where the record should be: reading it fails, and says where.
    std::fs::create_dir(dir.path().join("d.json")).unwrap();
    let err = FileLock::new(dir.path().join("d.json"))
        .get()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("d.json"), "{err}");
}

#[tokio::test]
async fn watch_reports_the_current_state_then_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.json");
    let lock = FileLock::new(&path).poll_interval(Duration::from_millis(10));
    let writer = FileLock::new(&path);
    let mut watch = lock.watch().expect("the file lock can watch");
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("a watch event within 10s")
            .expect("the watch stream does not end")
    };

    assert!(matches!(next().await, Ok(LockEvent::Deleted)));
    let v1 = writer.create(&rec("a")).await.unwrap();
    match next().await {
        Ok(LockEvent::Changed(v)) => assert_eq!((v.version, v.record), (v1.clone(), rec("a"))),
        other => panic!("{other:?}"),
    }
    let v2 = writer.update(&rec("b"), &v1).await.unwrap();
    match next().await {
        Ok(LockEvent::Changed(v)) => assert_eq!((v.version, v.record), (v2.clone(), rec("b"))),
        other => panic!("{other:?}"),
    }
    std::fs::write(&path, "{oops").unwrap();
    match next().await {
        Err(LockError::InvalidRecord { version, .. }) => assert_eq!(version, Some(v2)),
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(next().await, Ok(LockEvent::Deleted)));
}

/// Waits for the next event of a watch that would not poll within [`EVENT_WITHIN`].
async fn next_by_event(watch: &mut leaderelection::WatchStream) -> Result<LockEvent, LockError> {
    tokio::time::timeout(EVENT_WITHIN, watch.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no watch event within {EVENT_WITHIN:?} of a change, with the next poll \
                 {SLOW_POLL:?} away: file events did not wake the watch"
            )
        })
        .expect("the watch stream does not end")
}

#[tokio::test]
async fn watch_wakes_on_file_events_long_before_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.json");
    let writer = FileLock::new(&path);
    let mut version = writer.create(&rec("a")).await.unwrap();
    let mut watch = FileLock::new(&path)
        .poll_interval(SLOW_POLL)
        .watch()
        .expect("the file lock can watch");
    // The first event is read once the watcher is set up: it proves nothing yet.
    match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
        Ok(Some(Ok(LockEvent::Changed(v)))) => assert_eq!(v.version, version),
        other => panic!("{other:?}"),
    }

    // Renewals, a new holder, a release: each written by rename, each seen at once.
    for holder in ["a", "b", ""] {
        version = writer.update(&rec(holder), &version).await.unwrap();
        match next_by_event(&mut watch).await {
            Ok(LockEvent::Changed(v)) => {
                assert_eq!((v.version, v.record), (version.clone(), rec(holder)))
            }
            other => panic!("{other:?}"),
        }
    }
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        next_by_event(&mut watch).await,
        Ok(LockEvent::Deleted)
    ));
    // Files beside it are not the record: a write to one wakes nobody, and the next
    // event is still the next change of the record.
    std::fs::write(dir.path().join("other.json"), "{}").unwrap();
    let v = writer.create(&rec("c")).await.unwrap();
    match next_by_event(&mut watch).await {
        Ok(LockEvent::Changed(got)) => assert_eq!(got.version, v),
        other => panic!("{other:?}"),
    }
}

/// The watches of many locks in one directory share one watcher: one inotify instance
/// and one thread for the process, not one each. With one each, the watches past
/// Linux's default limit of 128 instances per user polled (here every 10 s, so they
/// would miss the 2 s bound), and every watcher woke for every write in the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_of_many_locks_in_one_directory_share_one_watcher() {
    const LOCKS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let before = inotify_instances();
    let mut watches = Vec::new();
    for i in 0..LOCKS {
        let path = dir.path().join(format!("e{i}.json"));
        let mut watch = FileLock::new(&path)
            .poll_interval(SLOW_POLL)
            .watch()
            .expect("the file lock can watch");
        match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
            Ok(Some(Ok(LockEvent::Deleted))) => {}
            other => panic!("watch {i}: {other:?}"),
        }
        watches.push((FileLock::new(&path), watch));
    }
    if let (Some(before), Some(after)) = (before, inotify_instances()) {
        // Other tests of this binary may hold a watcher or two meanwhile.
        let grew = after.saturating_sub(before);
        assert!(
            grew <= 10,
            "{grew} more inotify instances for {LOCKS} watches"
        );
    }
    for (i, (writer, watch)) in watches.iter_mut().enumerate() {
        let version = writer.create(&rec("a")).await.unwrap();
        match next_by_event(watch).await {
            Ok(LockEvent::Changed(v)) => assert_eq!(v.version, version, "watch {i}"),
            other => panic!("watch {i}: {other:?}"),
        }
    }
}

/// The inotify instances this process holds (Linux: its descriptors that are one).
fn inotify_instances() -> Option<usize> {
    let fds = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        fds.filter_map(Result::ok)
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify")
            })
            .count(),
    )
}

#[tokio::test]
async fn watch_polls_when_file_events_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.json");
    let writer = FileLock::new(&path);
    // No watcher: the watch must find changes by polling its metadata.
    let mut watch = FileLock::new(&path)
        .file_events(false)
        .poll_interval(Duration::from_millis(20))
        .watch()
        .expect("the file lock can watch");
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("a polled watch event within 10s")
            .expect("the watch stream does not end")
    };
    assert!(matches!(next().await, Ok(LockEvent::Deleted)));
    let mut version = writer.create(&rec("a")).await.unwrap();
    for holder in ["a", "b", ""] {
        match next().await {
            Ok(LockEvent::Changed(v)) => assert_eq!(v.version, version),
            other => panic!("{other:?}"),
        }
        version = writer.update(&rec(holder), &version).await.unwrap();
    }
    match next().await {
        Ok(LockEvent::Changed(v)) => assert_eq!((v.version, v.record), (version, rec(""))),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn watch_polls_once_its_directory_is_replaced() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("locks");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("e.json");
    let writer = FileLock::new(&path);
    let mut watch = FileLock::new(&path)
        .poll_interval(Duration::from_millis(20))
        .watch()
        .expect("the file lock can watch");
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("a watch event within 30s")
            .expect("the watch stream does not end")
    };
    assert!(matches!(next().await, Ok(LockEvent::Deleted)));

    // The watched directory goes away and another takes its path: the watcher would
    // report nothing more, so the watch polls.
    std::fs::rename(&dir, parent.path().join("old")).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let mut version = writer.create(&rec("a")).await.unwrap();
    // Each change is seen before the next is written. Polling every 20 ms, all of them
    // take well under the bound; left to the once-a-second forced read, at least 20 s.
    let started = Instant::now();
    for i in 0..20 {
        match next().await {
            Ok(LockEvent::Changed(v)) => assert_eq!(v.version, version),
            other => panic!("{other:?}"),
        }
        version = writer
            .update(&rec(&format!("h{i}")), &version)
            .await
            .unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "20 changes took {took:?} to be seen: the watch did not poll after losing its directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_a_released_lease_on_the_file_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("election.json");
    let checker = Checker::new();
    let start = |id: &str| {
        // A minute's lease and a 10 s poll: only the file event can hand over in time.
        let config = Config::new("file-events")
            .identity(id)
            .lease_duration(Duration::from_secs(60))
            .renew_deadline(Duration::from_secs(40))
            .retry_period(Duration::from_secs(1));
        let lock = FileLock::new(&path).poll_interval(SLOW_POLL);
        Replica::new(lock, Link::direct(), config, &checker, Work::polite())
    };

    let a = start("a");
    a.wait_leading(Duration::from_secs(30)).await;
    let b = start("b");
    // Let b read the record and settle on its watch, so the release reaches it as an
    // event rather than on its first read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.stop().await;
    let released = Instant::now();
    b.wait_leading(SLOW_POLL).await;
    let took = released.elapsed();
    assert!(took < EVENT_WITHIN, "handover took {took:?}");
    b.stop().await;
    checker.report().assert_safe();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_through_separate_handles_never_lose_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.json");
    FileLock::new(&path).create(&rec("init")).await.unwrap();

    let mut tasks = Vec::new();
    for w in 0..6 {
        let lock = FileLock::new(&path);
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..20 {
                let current = lock.get().await.unwrap().unwrap();
                match lock
                    .update(&rec(&format!("w{w}-{i}")), &current.version)
                    .await
                {
                    Ok(v) => won.push(v.as_str().parse::<u64>().unwrap()),
                    Err(LockError::Conflict) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            won
        }));
    }
    let mut won: Vec<u64> = Vec::new();
    for t in tasks {
        won.extend(t.await.unwrap());
    }
    won.sort_unstable();
    // Every successful swap got its own version, with no gap and no repeat: no
    // write was lost or applied on top of a state its writer had not read.
    let expected: Vec<u64> = (2..2 + won.len() as u64).collect();
    assert_eq!(won, expected);
    let last = FileLock::new(&path).get().await.unwrap().unwrap();
    assert_eq!(last.version, version(1 + won.len() as u64));
}

// ---- durability ---------------------------------------------------------------------

/// The role of the writer process of the durability test; its spec is the lock file.
const SYNC_ROLE: &str = "file-lock-sync-writer";

/// Takes the lock, releases it and takes it again, for the test below to count the
/// syncs under strace.
#[test]
#[ignore = "the writer process of writes_that_take_the_lock_are_synced_and_a_release_is_not"]
fn child_sync_writer() {
    let role = child::role()
        .filter(|r| r.name() == SYNC_ROLE)
        .expect("a writer role (the parent test sets it)");
    let path: PathBuf = role.spec().expect("the lock file");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let lock = FileLock::new(&path).file_events(false);
        let held = lock.create(&rec("a")).await.unwrap();
        let released = lock.update(&rec(""), &held).await.unwrap();
        lock.update(&rec("b"), &released).await.unwrap();
    });
}

/// A write that takes or keeps the lock must survive a power loss (its fencing token
/// must never reappear lower); a release need not (losing it leaves the holder's record,
/// which candidates wait out). Counted as fsync calls of a real writer process.
#[test]
fn writes_that_take_the_lock_are_synced_and_a_release_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.json");
    let trace = dir.path().join("trace");
    let strace = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=fsync,fdatasync,sync_file_range,syncfs",
        "-o",
    ];
    let prefix = strace
        .map(OsString::from)
        .into_iter()
        .chain([trace.clone().into()]);
    let status = Command::role(SYNC_ROLE, &path)
        .unwrap()
        .prefix(prefix)
        .libtest("child_sync_writer")
        .spawn()
        .expect(
            "strace must be on PATH for this test (Debian's strace; scripts/test.sh installs it)",
        )
        .wait()
        .unwrap();
    assert!(status.success(), "the writer process failed: {status}");
    let trace = std::fs::read_to_string(&trace).unwrap();
    let syncs = trace
        .lines()
        .filter(|l| !l.contains("resumed") && !l.contains("+++"))
        .count();
    // Two acquiring writes, each syncing its file and its directory; none for the release.
    assert_eq!(
        syncs, 4,
        "expected 4 syncs (2 per acquiring write, 0 for the release):\n{trace}"
    );
}

// ---- elections between processes ---------------------------------------------------

/// The role of the candidate processes.
const CANDIDATE_ROLE: &str = "file-lock-candidate";

/// What a candidate process runs.
#[derive(Serialize, Deserialize)]
struct Candidate {
    path: PathBuf,
    id: String,
}

/// A candidate process, re-executed by the tests below: reports `BEGIN` when it leads
/// and `END` when its work stopped.
#[test]
#[ignore = "a candidate process of the election tests, which run it themselves"]
fn child_candidate() {
    let role = child::role()
        .filter(|r| r.name() == CANDIDATE_ROLE)
        .expect("a candidate role (the election tests set it)");
    let spec: Candidate = role.spec().expect("a candidate spec");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let config = Config::new("file-lock-test")
            .identity(spec.id)
            .lease_duration(LEASE)
            .renew_deadline(RENEW)
            .retry_period(RETRY);
        let elector = LeaderElector::new(FileLock::new(spec.path), config).unwrap();
        // The parent closes our stdin to ask for a graceful shutdown.
        let shutdown = child::shutdown();
        elector
            .run(shutdown, |leadership| async move {
                let _term = child::Term::begin(&leadership);
                leadership.lost().await;
            })
            .await;
    });
}

/// One term event a candidate printed: who, and what.
#[derive(Debug)]
struct Line {
    from: usize,
    line: checker::Line,
}

fn spawn_candidates(path: &Path, n: usize) -> (Vec<Child>, mpsc::Receiver<Line>) {
    let (tx, rx) = mpsc::channel();
    let mut candidates = Vec::new();
    for i in 0..n {
        let spec = Candidate {
            path: path.to_owned(),
            id: format!("c{i}"),
        };
        let tx = tx.clone();
        let child = Command::role(CANDIDATE_ROLE, &spec)
            .unwrap()
            .libtest("child_candidate")
            .stderr(Stdio::null())
            .on_output(move |o| {
                if let OutputKind::Line(line) = o.kind {
                    let _ = tx.send(Line { from: i, line });
                }
            })
            .spawn()
            .expect("re-run the test binary as a candidate");
        candidates.push(child);
    }
    (candidates, rx)
}

fn next_line(rx: &mpsc::Receiver<Line>, within: Duration) -> Line {
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("no candidate reported within {within:?}"))
}

fn expect_leading(rx: &mpsc::Receiver<Line>, within: Duration) -> (usize, u64) {
    let line = next_line(rx, within);
    assert!(matches!(line.line, checker::Line::Begin { .. }), "{line:?}");
    (line.from, line.line.token())
}

#[test]
fn processes_elect_one_leader_fail_over_on_crash_and_hand_over_on_release() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("election.json");
    let (mut candidates, rx) = spawn_candidates(&path, 3);

    // Exactly one of three leads, and nobody else starts leading while it renews.
    let (first, t1) = expect_leading(&rx, Duration::from_secs(60));
    if let Ok(line) = rx.recv_timeout(LEASE) {
        panic!("only c{first} should lead, but got {line:?}");
    }

    // A crash: SIGKILL, no release. Another candidate takes over once the lease ran
    // out on its clock, not before.
    let killed_at = Instant::now();
    candidates[first].kill().unwrap();
    let (second, t2) = expect_leading(&rx, Duration::from_secs(60));
    let gap = killed_at.elapsed();
    assert_ne!(second, first);
    assert!(t2 > t1, "fencing tokens must grow: {t1} then {t2}");
    assert!(
        gap >= LEASE / 2,
        "c{second} took over {gap:?} after the kill, before the {LEASE:?} lease could run out"
    );

    // A graceful stop releases the lease: the last candidate takes over long before
    // the lease would have expired.
    let asked_at = Instant::now();
    candidates[second].close_stdin();
    let stopped = next_line(&rx, Duration::from_secs(60));
    assert!(
        matches!(stopped.line, checker::Line::End { .. }) && stopped.from == second,
        "{stopped:?}"
    );
    let (third, t3) = expect_leading(&rx, Duration::from_secs(60));
    let handover = asked_at.elapsed();
    assert!(third != first && third != second);
    assert!(t3 > t2, "fencing tokens must grow: {t2} then {t3}");
    assert!(
        handover < LEASE,
        "a released lease should be taken at once, took {handover:?}"
    );
    assert!(candidates[second].wait().unwrap().success());

    candidates[third].close_stdin();
    assert!(candidates[third].wait().unwrap().success());
    // Released on the way out: nobody holds the lease.
    let record = std::fs::read_to_string(&path).unwrap();
    assert!(record.contains(r#""holderIdentity":"""#), "{record}");
}
