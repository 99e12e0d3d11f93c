//! The watches of a process share one watcher per directory, and dropping the last of
//! them stops it: no inotify descriptor or thread is left behind. A test binary of its own, so that no other test opens descriptors or
//! threads while this one counts them.
#![cfg(all(feature = "file", target_os = "linux"))]

use std::time::{Duration, Instant};

use futures::StreamExt;
use leaderelection::{FileLock, LeaseLock, LockEvent};

/// Descriptors of this process, and how many of them are inotify instances.
fn descriptors() -> (usize, usize) {
    let mut all = 0;
    let mut inotify = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        all += 1;
        if std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().contains("inotify")) {
            inotify += 1;
        }
    }
    (all, inotify)
}

/// Threads of this process that are file watchers (notify names them so; the kernel
/// keeps 15 characters of a name).
fn watcher_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("notify-rs"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_leave_no_descriptor_or_thread() {
    const WATCHES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let lock = FileLock::new(dir.path().join("e.json"));
    // Warm up the runtime's blocking pool and the lock's own files.
    let mut warm = lock.clone().file_events(false).watch().unwrap();
    assert!(matches!(warm.next().await, Some(Ok(LockEvent::Deleted))));
    drop(warm);
    let (before, inotify_before) = descriptors();
    let threads_before = watcher_threads();

    for round in 0..5 {
        let mut watches = Vec::new();
        for _ in 0..WATCHES {
            let mut watch = lock.watch().unwrap();
            // The first event comes once the watcher is set up.
            assert!(matches!(watch.next().await, Some(Ok(LockEvent::Deleted))));
            watches.push(watch);
        }
        let (_, inotify_open) = descriptors();
        assert_eq!(
            (inotify_open, watcher_threads()),
            (inotify_before + 1, threads_before + 1),
            "round {round}: {WATCHES} open watches of one directory should share one \
             inotify instance and one thread"
        );
        drop(watches);

        // A watcher's thread closes its descriptor as it ends, just after the drop.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (now, inotify_now) = descriptors();
            let threads_now = watcher_threads();
            if now <= before && inotify_now <= inotify_before && threads_now <= threads_before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: after dropping {WATCHES} watches, {now} descriptors \
                 ({inotify_now} inotify) and {threads_now} watcher threads are open, \
                 from {before} ({inotify_before} inotify) and {threads_before}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
