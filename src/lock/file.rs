//! A lock in a file, shared by the processes of one host: the embedded default that
//! runs active/standby with no cluster at all.
//!
//! The record lives in `<path>` as `{"version":N,"record":{...client-go's JSON...}}`.
//! Every operation takes an advisory lock (`flock`) on the side file `<path>.lock`,
//! reads, compares the counter, and writes a temporary file `<path>.tmp` that it
//! syncs and renames over `<path>`, so readers see the old state or the new one,
//! never half of a write. The side file also keeps the highest counter ever written,
//! so the counter (the fencing token) keeps growing even if `<path>` is deleted or
//! damaged.
//!
//! A watch follows `<path>` through file events on its directory (`notify`: inotify on
//! Linux) and falls back to polling the file's metadata when there are none.

mod events;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tracing::{debug, warn};

use self::events::Events;
use super::{LeaseLock, LockEvent, Version, Versioned, WatchStream};
use crate::error::LockError;
use crate::record::{InvalidRecord, LeaderElectionRecord};

const BACKEND: &str = "file";

/// How often a watch without file events checks the file, unless
/// [`FileLock::poll_interval`] says otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A watch reads the file at least this often (or every poll interval, if that is
/// longer) whatever it heard: with events, in case one was lost; when polling, in case
/// two writes between polls left the same size, time and inode behind.
const FORCED_READ_EVERY: Duration = Duration::from_secs(1);

/// Set once a watch said that file events are unavailable: a process with many watches
/// (past the system's limit of inotify instances) warns once, not once per watch.
static WARNED_NO_EVENTS: AtomicBool = AtomicBool::new(false);

/// The record of one election in a file, for replicas on one host.
///
/// Processes (and tasks) that open a `FileLock` on the same path contend for the same
/// election. Compare-and-swap is on a counter stored with the record; it grows on
/// every write and is the fencing token. The directory must exist; the lock creates
/// `<path>`, `<path>.lock` and `<path>.tmp` in it.
///
/// [`watch`](LeaseLock::watch) wakes on file events, so standbys notice a released
/// lease as soon as it is written. It watches the lock's *directory* through the
/// [`notify`](https://docs.rs/notify) crate (inotify on Linux, FSEvents on macOS,
/// kqueue on the BSDs, `ReadDirectoryChangesW` on Windows), since every write renames
/// a new file over `<path>` and a watch on the file itself would be lost with the old
/// one; events about other names are ignored. Each event about `<path>` makes the
/// watch read the file, as a poll that saw a change does. Events can still be lost
/// (an event queue that overflows, a filesystem that reports only some changes), so
/// the watch also reads the file once a second, or once per
/// [`poll_interval`](Self::poll_interval) if that is longer, whatever it heard.
///
/// When there are no events, because the watcher cannot be set up (no inotify, the
/// system's limit of inotify instances reached), it fails later, or the directory is
/// moved or removed under it, the watch falls back to polling the file's metadata
/// (a `stat` call every [`poll_interval`](Self::poll_interval), 50 ms by default) and
/// reads the file when it changed; [`file_events(false)`](Self::file_events) asks for
/// polling from the start. Either way the load stays on this host. The watches of one
/// process share one watcher per directory (on Linux, one inotify instance and one
/// thread, whatever the number of elections), which stops with the last of them.
///
/// The advisory lock only binds processes that use it: do not edit the file by hand
/// while replicas run. A damaged file is reported as
/// [`LockError::InvalidRecord`] with a version, so the elector overwrites it after a
/// lease duration; deleting the file is also safe.
///
/// # Examples
///
/// ```
/// use leaderelection::{Config, FileLock, LeaderElector};
///
/// # fn main() -> Result<(), leaderelection::ConfigError> {
/// let path = std::env::temp_dir().join("leaderelection-doc-scheduler.json");
/// // Run this in two processes: one leads, the other stands by.
/// let elector = LeaderElector::new(FileLock::new(&path), Config::new("scheduler"))?;
/// # let _ = elector;
/// # Ok(()) }
/// ```
///
/// One operation at a time:
///
/// ```
/// use leaderelection::{FileLock, LeaseLock, LeaderElectionRecord};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("leaderelection-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let lock = FileLock::new(dir.join("jobs.json"));
/// # let _ = std::fs::remove_file(lock.path());
/// assert!(lock.get().await?.is_none());
/// let record = LeaderElectionRecord { holder_identity: "a".into(), lease_duration_seconds: 15, ..Default::default() };
/// let v1 = lock.create(&record).await?;
/// let v2 = lock.update(&record, &v1).await?;
/// assert!(lock.update(&record, &v1).await.unwrap_err().is_contention());
/// # let _ = v2; std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct FileLock {
    paths: Arc<Paths>,
    poll_interval: Duration,
    file_events: bool,
    // One blocking call at a time per handle: a call abandoned by a timeout keeps its
    // thread until the advisory lock is granted, and later calls queue here (async,
    // cancellable) instead of piling up more blocked threads.
    gate: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct Paths {
    path: PathBuf,
    lock: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

impl FileLock {
    /// A lock whose record is stored in `path` (created on the first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let with_suffix = |suffix: &str| {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self {
            paths: Arc::new(Paths {
                lock: with_suffix(".lock"),
                tmp: with_suffix(".tmp"),
                dir,
                path,
            }),
            poll_interval: DEFAULT_POLL_INTERVAL,
            file_events: true,
            gate: Arc::default(),
        }
    }

    /// How often a [`watch`](LeaseLock::watch) without file events checks the file's
    /// metadata: the fallback's interval, used only when events are unavailable or
    /// turned off with [`file_events`](Self::file_events). Default
    /// [`DEFAULT_POLL_INTERVAL`] (50 ms); a longer one makes such standbys notice a
    /// released lease later. A watch with events still reads the file once per poll
    /// interval or once a second, whichever is longer, because events can be lost (an
    /// overflowing inotify queue). Zero is taken as one millisecond.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Whether a [`watch`](LeaseLock::watch) wakes on file events (default `true`).
    /// With `false` it polls every [`poll_interval`](Self::poll_interval) from the
    /// start, as it does when events are unavailable: for a filesystem that reports
    /// no events, or to spare the system's inotify instances (one per directory and
    /// process).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use leaderelection::FileLock;
    ///
    /// let lock = FileLock::new("/run/scheduler/leader.json")
    ///     .file_events(false)
    ///     .poll_interval(Duration::from_millis(20));
    /// # let _ = lock;
    /// ```
    #[must_use]
    pub fn file_events(mut self, enabled: bool) -> Self {
        self.file_events = enabled;
        self
    }

    /// The file that holds the record.
    pub fn path(&self) -> &Path {
        &self.paths.path
    }

    /// Runs `f` on the blocking pool, one call per handle at a time.
    async fn blocking<T, F>(&self, f: F) -> Result<T, LockError>
    where
        T: Send + 'static,
        F: FnOnce(&Paths) -> Result<T, LockError> + Send + 'static,
    {
        let gate = self.gate.clone().lock_owned().await;
        let paths = self.paths.clone();
        tokio::task::spawn_blocking(move || {
            let _gate = gate;
            f(&paths)
        })
        .await
        .map_err(|e| LockError::unavailable(BACKEND, format!("file lock worker failed: {e}")))?
    }
}

/// An I/O failure, naming the file, kept as the source of [`LockError::Unavailable`].
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
struct FileError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LockError + 'a {
    move |source| {
        LockError::unavailable(
            BACKEND,
            FileError {
                action,
                path: path.to_path_buf(),
                source,
            },
        )
    }
}

/// What the data file holds.
#[derive(Debug, Clone, PartialEq)]
enum Stored {
    Missing,
    Valid(Versioned),
    /// Unreadable; `counter` when the version could still be read.
    Invalid {
        counter: Option<u64>,
        error: InvalidRecord,
    },
}

fn parse_stored(bytes: &[u8]) -> Stored {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return Stored::Invalid {
                counter: None,
                error: InvalidRecord::new(
                    format!("the file is not UTF-8 text: {e}"),
                    &String::from_utf8_lossy(bytes),
                ),
            }
        }
    };
    let invalid = |counter, reason: String| Stored::Invalid {
        counter,
        error: InvalidRecord::new(reason, text),
    };
    let map = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return invalid(None, "the file is not a JSON object".into()),
        Err(e) => return invalid(None, format!("the file is not JSON: {e}")),
    };
    let Some(counter) = map.get("version").and_then(Value::as_u64) else {
        return invalid(
            None,
            "the file has no \"version\" counter (a non-negative integer)".into(),
        );
    };
    let Some(record) = map.get("record") else {
        return invalid(Some(counter), "the file has no \"record\"".into());
    };
    match serde_json::from_value::<LeaderElectionRecord>(record.clone()) {
        Ok(record) => Stored::Valid(Versioned {
            record,
            version: counter.into(),
        }),
        Err(e) => invalid(Some(counter), format!("bad \"record\": {e}")),
    }
}

fn render(counter: u64, record: &LeaderElectionRecord) -> String {
    format!(
        "{{\"version\":{counter},\"record\":{}}}\n",
        record.to_json()
    )
}

/// The side file, locked for the length of one operation.
struct Guard {
    file: File,
    path: PathBuf,
}

impl Guard {
    fn acquire(paths: &Paths, exclusive: bool) -> Result<Self, LockError> {
        let path = &paths.lock;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_error("open", path))?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .map_err(io_error("lock", path))?;
        Ok(Self {
            file,
            path: path.clone(),
        })
    }

    /// The highest counter ever written; 0 when unknown (a new or damaged side file:
    /// it is a safeguard, and the data file's own counter still counts).
    fn high_water(&mut self) -> Result<u64, LockError> {
        let mut text = String::new();
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_to_string(&mut text))
            .map_err(io_error("read", &self.path))?;
        Ok(text.trim().parse().unwrap_or(0))
    }

    fn set_high_water(&mut self, counter: u64) -> Result<(), LockError> {
        let f = &mut self.file;
        f.set_len(0)
            .and_then(|_| f.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(f, "{counter}"))
            .map_err(io_error("write", &self.path))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first says so plainly.
        let _ = self.file.unlock();
    }
}

impl Paths {
    fn read(&self) -> Result<Stored, LockError> {
        match fs::read(&self.path) {
            Ok(bytes) => Ok(parse_stored(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Stored::Missing),
            Err(e) => Err(io_error("read", &self.path)(e)),
        }
    }

    /// Reads under a shared lock and resolves the version of an unreadable file.
    fn observe(&self) -> Result<Observed, LockError> {
        let mut guard = Guard::acquire(self, false)?;
        Ok(match self.read()? {
            Stored::Missing => Observed::Missing,
            Stored::Valid(v) => Observed::Valid(v),
            Stored::Invalid { counter, error } => Observed::Invalid {
                version: counter.map_or_else(|| guard.high_water(), Ok)?,
                error,
            },
        })
    }

    /// Writes `counter` and `record`: side file first (so its mark is never behind the
    /// data), then a temporary file renamed over the data file, synced with its
    /// directory unless the record gives the lock up.
    ///
    /// A release need not survive a power loss: losing it leaves the previous holder's
    /// record, which every candidate waits out as if that holder had crashed, and the
    /// fencing token it carries is not new. Leaving its two syncs out halves a graceful
    /// handover, whose other write, the new leader's, stays durable.
    fn write(
        &self,
        guard: &mut Guard,
        counter: u64,
        record: &LeaderElectionRecord,
    ) -> Result<Version, LockError> {
        let durable = !record.is_released();
        guard.set_high_water(counter)?;
        let result = (|| {
            let mut tmp = File::create(&self.tmp).map_err(io_error("create", &self.tmp))?;
            tmp.write_all(render(counter, record).as_bytes())
                .and_then(|_| if durable { tmp.sync_all() } else { Ok(()) })
                .map_err(io_error("write", &self.tmp))?;
            drop(tmp);
            fs::rename(&self.tmp, &self.path).map_err(io_error("replace", &self.path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result?;
        if durable {
            sync_dir(&self.dir)?;
        }
        Ok(counter.into())
    }
}

/// Makes the rename durable. Only meaningful (and possible) on Unix.
fn sync_dir(dir: &Path) -> Result<(), LockError> {
    if cfg!(unix) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync directory", dir))?;
    }
    Ok(())
}

/// A state as a reader reports it; unreadable files carry a version to overwrite.
#[derive(Debug, Clone, PartialEq)]
enum Observed {
    Missing,
    Valid(Versioned),
    Invalid { version: u64, error: InvalidRecord },
}

impl Observed {
    fn into_result(self) -> Result<Option<Versioned>, LockError> {
        match self {
            Observed::Missing => Ok(None),
            Observed::Valid(v) => Ok(Some(v)),
            Observed::Invalid { version, error } => Err(LockError::InvalidRecord {
                source: error,
                version: Some(version.into()),
            }),
        }
    }

    fn into_event(self) -> Result<LockEvent, LockError> {
        self.into_result()
            .map(|v| v.map_or(LockEvent::Deleted, LockEvent::Changed))
    }
}

#[async_trait]
impl LeaseLock for FileLock {
    /// Reads the record under a shared lock.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidRecord`] when the file is damaged, with its counter if it
    /// can be read, else the highest counter written so far;
    /// [`LockError::Unavailable`] on I/O errors, naming the file.
    async fn get(&self) -> Result<Option<Versioned>, LockError> {
        self.blocking(|p| p.observe()?.into_result()).await
    }

    /// A file that never held a record: no data file, and no counter in the side
    /// file (which keeps the highest counter ever written, deletions included).
    async fn proves_vacancy(&self) -> Result<bool, LockError> {
        self.blocking(|p| {
            let mut guard = Guard::acquire(p, false)?;
            Ok(p.read()? == Stored::Missing && guard.high_water()? == 0)
        })
        .await
    }

    async fn create(&self, record: &LeaderElectionRecord) -> Result<Version, LockError> {
        let record = record.clone();
        self.blocking(move |p| {
            let mut guard = Guard::acquire(p, true)?;
            if p.read()? != Stored::Missing {
                return Err(LockError::AlreadyExists);
            }
            let counter = guard.high_water()?.saturating_add(1);
            p.write(&mut guard, counter, &record)
        })
        .await
    }

    async fn update(
        &self,
        record: &LeaderElectionRecord,
        expected: &Version,
    ) -> Result<Version, LockError> {
        let record = record.clone();
        let expected = expected.clone();
        self.blocking(move |p| {
            let mut guard = Guard::acquire(p, true)?;
            let high_water = guard.high_water()?;
            let current = match p.read()? {
                Stored::Missing => return Err(LockError::Conflict),
                Stored::Valid(v) => v.version,
                Stored::Invalid {
                    counter: Some(c), ..
                } => c.into(),
                Stored::Invalid { counter: None, .. } => high_water.into(),
            };
            if current != expected {
                return Err(LockError::Conflict);
            }
            let current: u64 = current.as_str().parse().unwrap_or(0);
            let counter = current.max(high_water).saturating_add(1);
            p.write(&mut guard, counter, &record)
        })
        .await
    }

    /// Reads the file on each file event about it, and at least once a second;
    /// without events, polls its metadata every
    /// [`poll_interval`](FileLock::poll_interval) and reads it when it changed (see
    /// [`FileLock`]). The first event is the state when watching began, read after the
    /// watcher was set up, so no later change goes unreported. After an I/O error the
    /// stream yields it and ends; dropping the stream stops its watcher.
    fn watch(&self) -> Option<WatchStream> {
        let state = WatchState {
            paths: self.paths.clone(),
            interval: self.poll_interval,
            forced_every: (FORCED_READ_EVERY.as_millis() / self.poll_interval.as_millis().max(1))
                .max(1) as u32,
            forced_after: FORCED_READ_EVERY.max(self.poll_interval),
            file_events: self.file_events,
            events: None,
            polls_since_read: 0,
            first: true,
            meta: None,
            last: None,
            done: false,
        };
        Some(Box::pin(futures::stream::unfold(state, watch_step)))
    }

    fn describe(&self) -> String {
        format!("file:{}", self.paths.path.display())
    }
}

struct WatchState {
    paths: Arc<Paths>,
    interval: Duration,
    /// Polls between forced reads, without events.
    forced_every: u32,
    /// The longest wait for an event before a read, with events.
    forced_after: Duration,
    file_events: bool,
    /// `None` before the first read and whenever the watch polls.
    events: Option<Events>,
    polls_since_read: u32,
    first: bool,
    meta: Option<MetaKey>,
    last: Option<Observed>,
    done: bool,
}

/// What changes whenever the file is replaced: every write renames a new inode in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MetaKey {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    ctime: (i64, i64),
}

fn meta_key(path: &Path) -> Result<Option<MetaKey>, LockError> {
    let m = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("stat", path)(e)),
    };
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    Ok(Some(MetaKey {
        len: m.len(),
        modified: m.modified().ok(),
        #[cfg(unix)]
        inode: (m.dev(), m.ino()),
        #[cfg(unix)]
        ctime: (m.ctime(), m.ctime_nsec()),
    }))
}

async fn watch_step(mut s: WatchState) -> Option<(Result<LockEvent, LockError>, WatchState)> {
    if s.done {
        return None;
    }
    loop {
        let first = std::mem::replace(&mut s.first, false);
        let force = if first {
            true
        } else if let Some(events) = &mut s.events {
            if let Err(reason) = events.wait(s.forced_after).await {
                warn!(path = %s.paths.path.display(), %reason, "file events stopped; polling the lock file instead");
                s.events = None;
            }
            // An event, the forced read, or the end of events (which may have taken
            // the news of a change with it): read in every case.
            true
        } else {
            tokio::time::sleep(s.interval).await;
            s.last.is_none() || s.polls_since_read >= s.forced_every
        };
        let start_events = first && s.file_events;
        let paths = s.paths.clone();
        let previous = s.meta.clone();
        let (events, polled) = tokio::task::spawn_blocking(move || {
            // Watch before the first read: a change after the read is then reported.
            let events = start_events.then(|| Events::start(&paths.path, &paths.dir));
            let polled = (|| {
                let meta = meta_key(&paths.path)?;
                if !force && meta == previous {
                    return Ok((meta, None));
                }
                Ok((meta, Some(paths.observe()?)))
            })();
            (events, polled)
        })
        .await
        .unwrap_or_else(|e| {
            let e = LockError::unavailable(BACKEND, format!("file lock watcher failed: {e}"));
            (None, Err(e))
        });
        match events {
            Some(Ok(events)) => s.events = Some(events),
            Some(Err(e)) => {
                let path = s.paths.path.display();
                if WARNED_NO_EVENTS.swap(true, Ordering::Relaxed) {
                    debug!(%path, error = %e, "no file events; polling the lock file");
                } else {
                    warn!(%path, error = %e, "no file events; polling the lock file (said once per process)");
                }
            }
            None => {}
        }
        match polled {
            Err(e) => {
                s.done = true;
                s.events = None;
                return Some((Err(e), s));
            }
            Ok((meta, None)) => {
                s.meta = meta;
                s.polls_since_read += 1;
            }
            Ok((meta, Some(observed))) => {
                s.meta = meta;
                s.polls_since_read = 0;
                if s.last.as_ref() != Some(&observed) {
                    s.last = Some(observed.clone());
                    return Some((observed.into_event(), s));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_renders() {
        let record = LeaderElectionRecord {
            holder_identity: "a".into(),
            lease_duration_seconds: 15,
            leader_transitions: 3,
            ..Default::default()
        };
        match parse_stored(render(42, &record).as_bytes()) {
            Stored::Valid(v) => {
                assert_eq!(v.version, Version::from(42));
                assert_eq!(v.record, record);
            }
            other => panic!("expected a valid record, got {other:?}"),
        }
    }

    #[test]
    fn damaged_files_keep_their_counter_when_readable() {
        let cases: [(&[u8], Option<u64>); 7] = [
            (b"", None),
            (b"{not json", None),
            (b"[1,2]", None),
            (b"{\"version\":-1,\"record\":{}}", None),
            (b"\xff\xfe{}", None),
            (b"{\"version\":7}", Some(7)),
            (
                b"{\"version\":9,\"record\":{\"holderIdentity\":5}}",
                Some(9),
            ),
        ];
        for (bytes, want) in cases {
            match parse_stored(bytes) {
                Stored::Invalid { counter, error } => {
                    assert_eq!(counter, want, "{:?}", String::from_utf8_lossy(bytes));
                    assert!(!error.reason.is_empty());
                }
                other => panic!("{:?} parsed as {other:?}", String::from_utf8_lossy(bytes)),
            }
        }
    }
}
