//! File events for the watches of a process's file locks: one watcher per directory,
//! shared by every watch of a lock in it, each event routed to the watches of the
//! file it names.
//!
//! A watcher per watch costs an inotify instance and a thread each, and every one of
//! them hears every event of the directory: Linux allows 128 instances per user by
//! default, so a process with thousands of elections left all but the first watches
//! polling, and the others woke for every write of every election.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// The directories watched now, by absolute path.
static DIRS: LazyLock<Mutex<HashMap<PathBuf, Weak<Dir>>>> = LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One directory's watcher and the watches it serves.
struct Dir {
    routes: Arc<Mutex<Routes>>,
    // Kept for its `Drop`, which stops the watcher's thread and closes its descriptor
    // once the last watch of the directory is gone.
    _watcher: notify::RecommendedWatcher,
}

/// A watch's signal: marked changed on every event about its file; holds why, once
/// events stopped.
type Signal = watch::Sender<Option<String>>;

#[derive(Default)]
struct Routes {
    next_id: u64,
    by_name: HashMap<OsString, Vec<(u64, Signal)>>,
    /// Why the directory's events stopped (it was moved or removed, the watcher
    /// failed): its watches fall back to polling, and new ones get a new watcher.
    stopped: Option<String>,
}

impl Routes {
    fn all(&self) -> impl Iterator<Item = &Signal> {
        self.by_name.values().flatten().map(|(_, s)| s)
    }

    fn stop(&mut self, why: String) {
        for s in self.all() {
            s.send_replace(Some(why.clone()));
        }
        self.stopped = Some(why);
    }

    fn route(&self, event: &notify::Event) {
        if !changes(event) {
            return;
        }
        let mut names: Vec<&OsStr> = event.paths.iter().filter_map(|p| p.file_name()).collect();
        names.dedup();
        for name in names {
            for (_, s) in self.by_name.get(name).into_iter().flatten() {
                s.send_modify(|_| {});
            }
        }
    }
}

impl Dir {
    /// The watcher of `dir`, started unless one runs. Blocking: a new watcher confirms
    /// its watch.
    fn get(dir: &Path) -> Result<Arc<Dir>, notify::Error> {
        let mut dirs = lock(&DIRS);
        if let Some(d) = dirs.get(dir).and_then(Weak::upgrade) {
            if lock(&d.routes).stopped.is_none() {
                return Ok(d);
            }
        }
        dirs.retain(|_, d| d.strong_count() > 0);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (to, watched) = (routes.clone(), dir.to_owned());
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let mut r = lock(&to);
                match event {
                    Ok(e) if lost(&e, &watched) => {
                        r.stop(format!("{} was moved or removed", watched.display()));
                    }
                    // A rescan means events were dropped: one of them may have been
                    // about any file.
                    Ok(e) if e.need_rescan() => r.all().for_each(|s| s.send_modify(|_| {})),
                    Ok(e) => r.route(&e),
                    Err(e) => r.stop(e.to_string()),
                }
            })?;
        notify::Watcher::watch(&mut watcher, dir, notify::RecursiveMode::NonRecursive)?;
        let d = Arc::new(Dir {
            routes,
            _watcher: watcher,
        });
        dirs.insert(dir.to_owned(), Arc::downgrade(&d));
        Ok(d)
    }
}

/// File events about one lock's file. Dropping it unsubscribes; the directory's
/// watcher stops with its last subscriber.
pub(super) struct Events {
    dir: Arc<Dir>,
    name: OsString,
    id: u64,
    signal: watch::Receiver<Option<String>>,
}

impl Events {
    /// Subscribes to the events about `path`, watching its directory `dir` unless
    /// another watch of this process does. Blocking: a new watcher confirms its watch.
    pub(super) fn start(path: &Path, dir: &Path) -> Result<Self, notify::Error> {
        let name = path
            .file_name()
            .ok_or_else(|| notify::Error::generic("the lock's path has no file name"))?
            .to_owned();
        // Absolute, as the watcher names its events: to recognise the directory's own.
        let dir_path = std::path::absolute(dir).map_err(notify::Error::io)?;
        let dir = Dir::get(&dir_path)?;
        let (tx, signal) = watch::channel(None);
        let id = {
            let mut r = lock(&dir.routes);
            if let Some(why) = &r.stopped {
                // Stopped since `get`: poll, as the watches before this one do.
                tx.send_replace(Some(why.clone()));
            }
            r.next_id += 1;
            let id = r.next_id;
            r.by_name.entry(name.clone()).or_default().push((id, tx));
            id
        };
        Ok(Self {
            dir,
            name,
            id,
            signal,
        })
    }

    /// Waits for an event about the file, or `timeout`; `Err` with the reason once
    /// events stopped.
    pub(super) async fn wait(&mut self, timeout: Duration) -> Result<(), String> {
        tokio::select! {
            changed = self.signal.changed() => match changed {
                Ok(()) => self.signal.borrow_and_update().clone().map_or(Ok(()), Err),
                Err(_) => Err("the file watcher stopped".into()),
            },
            () = tokio::time::sleep(timeout) => Ok(()),
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let mut r = lock(&self.dir.routes);
        if let Some(subscribers) = r.by_name.get_mut(&self.name) {
            subscribers.retain(|(id, _)| *id != self.id);
            if subscribers.is_empty() {
                r.by_name.remove(&self.name);
            }
        }
    }
}

/// Whether `event` may have changed a file. Reads (`Access`) are not changes: waking
/// on them would have every standby's read wake all the others.
fn changes(event: &notify::Event) -> bool {
    use notify::EventKind::*;
    matches!(event.kind, Any | Create(_) | Modify(_) | Remove(_) | Other)
}

/// Whether the watched directory itself went away: its watch then reports nothing more.
fn lost(event: &notify::Event, dir: &Path) -> bool {
    use notify::event::ModifyKind;
    use notify::EventKind::*;
    matches!(event.kind, Remove(_) | Modify(ModifyKind::Name(_)))
        && event.paths.iter().any(|p| p == dir)
}
