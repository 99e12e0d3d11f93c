//! Leaders in other processes: a test re-runs its own binary (or runs another
//! program) as a replica that reports its terms as the [checker's lines](Line) on
//! stdout, and kills it, stops it and resumes it with real signals.
//!
//! **The parent** builds a [`Command`]: [`Command::role`] runs this same program with
//! one environment variable, [`ROLE_VAR`], carrying the child's role and a spec (any
//! `serde` value the test defines, as JSON); [`Command::program`] runs another program
//! that speaks the same protocol. A command can be wrapped in a prefix (`faketime`,
//! `strace`, a user switch) and, for a libtest binary, pointed at an ignored test as
//! its entry point ([`Command::libtest`]). Its stdout is read as it comes, on a thread
//! of its own: every [`Line`] goes to the [`Checker`] given (stamped on arrival with
//! the parent's clock), the terms it reported open are tracked ([`Child::leads`]), and
//! every line, term event or other text, is an [`Output`] the test can wait for
//! ([`Child::expect`]) or receive in a callback ([`Command::on_output`]). A line that
//! starts like a term event but does not parse is reported on stderr and passed on as
//! text, never a panic. [`Child`] signals the process: [`kill`](Child::kill)
//! (SIGKILL: its open terms end now), [`stop`](Child::stop) (SIGSTOP: its open terms
//! are [stalled](Checker::stalled)), [`resume`](Child::resume) (SIGCONT),
//! [`close_stdin`](Child::close_stdin) (a graceful shutdown for a child that uses
//! [`shutdown`]) and [`terminate`](Child::terminate) (SIGTERM, the same for a child
//! that also uses [`cancel_on_sigterm`]).
//!
//! **The child** calls [`role`] first thing (in `main`, or in the ignored test that is
//! its entry point) and, when it returns a role, runs it: its work reports each term
//! with a [`Term`] (`BEGIN` now, [`act`](Term::act) for each write, `END` when dropped,
//! as a crashed or aborted work is) and other lines with [`say`], and it ends when
//! [`shutdown`]'s token is cancelled.
//!
//! # Examples
//!
//! A test binary with its own `main` (`harness = false`), re-run as two candidates:
//!
//! ```no_run
//! use std::time::Duration;
//! use leaderelection::{Config, FileLock, LeaderElector};
//! use leaderelection_testkit::checker::Checker;
//! use leaderelection_testkit::child::{self, Command};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Candidate {
//!     path: String,
//!     identity: String,
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let rt = tokio::runtime::Runtime::new()?;
//!     if let Some(role) = child::role() {
//!         // In a child: run one candidate until the parent ends it.
//!         let spec: Candidate = role.spec()?;
//!         return rt.block_on(async move {
//!             let config = Config::new("jobs").identity(spec.identity);
//!             let elector = LeaderElector::new(FileLock::new(spec.path), config)?;
//!             elector
//!                 .run(child::shutdown(), |l| {
//!                     child::act_while_valid(l, Duration::from_millis(100))
//!                 })
//!                 .await;
//!             Ok::<(), Box<dyn std::error::Error>>(())
//!         });
//!     }
//!     rt.block_on(async {
//!         let checker = Checker::new();
//!         let mut children = Vec::new();
//!         for id in ["a", "b"] {
//!             let spec = Candidate { path: "/tmp/jobs.json".into(), identity: id.into() };
//!             children.push(Command::role("candidate", &spec)?.checker(&checker).spawn()?);
//!         }
//!         tokio::time::sleep(Duration::from_secs(20)).await;
//!         for c in &mut children {
//!             if c.leads() {
//!                 checker.fault("SIGKILL the leader");
//!                 c.kill()?;
//!             }
//!         }
//!         tokio::time::sleep(Duration::from_secs(20)).await;
//!         checker.close();
//!         for c in &mut children {
//!             c.kill()?;
//!         }
//!         checker.report().assert_safe();
//!         Ok::<(), Box<dyn std::error::Error>>(())
//!     })
//! }
//! ```

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, BufRead, BufReader, Write as _};
use std::process::{ChildStderr, ChildStdin, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use leaderelection::Leadership;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checker::{Checker, Line};
use crate::etcd::signal_pid;

/// The environment variable that carries a child's role: its name, a space, and its
/// spec as JSON. Set by [`Command::role`], read by [`role`].
pub const ROLE_VAR: &str = "LEADERELECTION_TESTKIT_CHILD";

/// What can go wrong starting, driving or reading a child process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The spec could not be written as JSON, or read back as the type asked for.
    #[error("bad spec for child role {role}: {source}")]
    Spec {
        /// The role.
        role: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The program could not be started (is it installed, is the path right?).
    #[error("failed to start {program}: {source}")]
    Spawn {
        /// The program, with its prefix if any.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The process had already exited: a signal would reach nobody, or another
    /// process that was given its pid.
    #[error("child {pid} had already exited ({status})")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it exited.
        status: ExitStatus,
    },
    /// A signal, a wait or a write to its stdin failed.
    #[error("failed to {what} child {pid}: {source}")]
    Io {
        /// What was attempted (`send SIGSTOP to`, `wait for`, `write to`).
        what: String,
        /// Its pid.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// [`Child::expect`] saw no matching output in time.
    #[error("child {pid} printed no {what} within {within:?}; it printed {seen:?}")]
    Timeout {
        /// Its pid.
        pid: u32,
        /// What was waited for.
        what: String,
        /// How long.
        within: Duration,
        /// What it printed meanwhile, as text.
        seen: Vec<String>,
    },
    /// [`Child::expect`]: stdout closed (the child exited) before a matching output.
    #[error("child {pid} closed its stdout before printing {what}; it printed {seen:?}")]
    Closed {
        /// Its pid.
        pid: u32,
        /// What was waited for.
        what: String,
        /// What it printed meanwhile, as text.
        seen: Vec<String>,
    },
}

// ---- the child's side ------------------------------------------------------------

/// The role this process was started in by [`Command::role`]; `None` in a process
/// that is no one's child (the test itself).
///
/// # Examples
///
/// ```
/// // In the test process, no role is set.
/// assert!(leaderelection_testkit::child::role().is_none());
/// ```
pub fn role() -> Option<Role> {
    let value = std::env::var(ROLE_VAR).ok()?;
    let (name, spec) = value.split_once(' ').unwrap_or((value.as_str(), "null"));
    Some(Role {
        name: name.to_owned(),
        spec: spec.to_owned(),
    })
}

/// A child's role and spec, as [`role`] found them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    name: String,
    spec: String,
}

impl Role {
    /// The role's name, as given to [`Command::role`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec, read as `S`.
    ///
    /// # Errors
    ///
    /// [`ChildError::Spec`] when it is not an `S` (parent and child disagree on the
    /// type).
    pub fn spec<S: DeserializeOwned>(&self) -> Result<S, ChildError> {
        serde_json::from_str(&self.spec).map_err(|source| ChildError::Spec {
            role: self.name.clone(),
            source,
        })
    }
}

/// Writes `line` and a newline to stdout at once (flushed, under stdout's lock, so
/// lines from several threads do not mix): a [`Line`] or any other text the parent
/// waits for. Errors are ignored: a parent that stopped reading does not care.
pub fn say(line: impl fmt::Display) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A token cancelled when the parent asks for a graceful shutdown by closing stdin
/// ([`Child::close_stdin`]). Lines on stdin are ignored; see [`commands`]. To end on
/// SIGTERM too ([`Child::terminate`]), pass the token to [`cancel_on_sigterm`].
pub fn shutdown() -> CancellationToken {
    commands(|_| {})
}

/// As [`shutdown`], handing every line the parent writes to stdin ([`Child::send`])
/// to `on_line`, on a thread of its own.
///
/// # Examples
///
/// ```no_run
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
///
/// # #[tokio::main] async fn main() {
/// let cut = Arc::new(AtomicBool::new(false));
/// let c = cut.clone();
/// let shutdown = leaderelection_testkit::child::commands(move |line| {
///     if line == "CUT" {
///         c.store(true, Ordering::SeqCst);
///     }
/// });
/// shutdown.cancelled().await;
/// # }
/// ```
pub fn commands(mut on_line: impl FnMut(&str) + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let stop = token.clone();
    std::thread::spawn(move || {
        let stdin = io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => on_line(line.trim_end_matches(['\r', '\n'])),
            }
        }
        stop.cancel();
    });
    token
}

/// Cancels `token` when SIGTERM arrives ([`Child::terminate`]), instead of dying of
/// it.
///
/// Not under libfaketime with a wall clock that jumps: tokio's signal handling was
/// seen to stall the child's renewals there.
///
/// # Errors
///
/// When the signal handler cannot be installed (outside a tokio runtime with its I/O
/// driver enabled).
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// use leaderelection_testkit::child;
///
/// let shutdown = child::shutdown();
/// child::cancel_on_sigterm(&shutdown)?;
/// shutdown.cancelled().await;
/// # Ok(()) }
/// ```
pub fn cancel_on_sigterm(token: &CancellationToken) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let stop = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    });
    Ok(())
}

/// One term of a leader in a child process, reported on stdout: `BEGIN` when made,
/// `ACT` at each [`act`](Self::act), `END` when dropped (its work returned, or was
/// dropped mid-term).
///
/// # Examples
///
/// ```no_run
/// use leaderelection::Leadership;
/// use leaderelection_testkit::child;
///
/// async fn work(leadership: Leadership) {
///     let term = child::Term::begin(&leadership);
///     while leadership.is_valid() {
///         term.act();
///         tokio::time::sleep(std::time::Duration::from_millis(100)).await;
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Term {
    leadership: Option<Leadership>,
    token: u64,
    identity: String,
}

impl Term {
    /// Reports `BEGIN` for `leadership`'s term, with its remaining validity.
    pub fn begin(leadership: &Leadership) -> Self {
        say(Line::begin(leadership));
        Self {
            leadership: Some(leadership.clone()),
            token: leadership.fencing_token(),
            identity: leadership.identity().to_owned(),
        }
    }

    /// Reports `BEGIN` for a term known only by its token and identity (a library
    /// that hands out no [`Leadership`]): its lines carry no validity.
    pub fn untimed(token: u64, identity: impl Into<String>) -> Self {
        let identity = identity.into();
        say(Line::Begin {
            token,
            identity: identity.clone(),
            valid_for: None,
        });
        Self {
            leadership: None,
            token,
            identity,
        }
    }

    /// Reports one action: `ACT`, with the remaining validity when known.
    pub fn act(&self) {
        say(match &self.leadership {
            Some(l) => Line::act(l),
            None => Line::Act {
                token: self.token,
                identity: self.identity.clone(),
                valid_for: None,
            },
        });
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        say(Line::End {
            token: self.token,
            identity: self.identity.clone(),
        });
    }
}

/// A leader's work in a child process, the twin of
/// [`Checker::act_while_valid`]: reports its term, acts at once and then every `every`
/// while [`Leadership::is_valid`] holds, waits while its validity has run out (a
/// renewal may yet succeed), and stops when leadership is lost.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future reports the term's end, as its work stopped.
pub async fn act_while_valid(leadership: Leadership, every: Duration) {
    let term = Term::begin(&leadership);
    crate::checker::act_while_valid_with(&leadership, every, || {
        term.act();
        true
    })
    .await;
}

// ---- the parent's side -----------------------------------------------------------

/// One line a child printed, stamped when it arrived.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Output {
    /// When the parent read it, on the parent's (tokio) clock.
    pub at: Instant,
    /// What it was.
    pub kind: OutputKind,
}

/// What a child's line was.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum OutputKind {
    /// A term event, as the checker got it (with [`Command::number_terms`], under
    /// the numbered identity).
    Line(Line),
    /// Any other text.
    Text(String),
}

impl Output {
    /// The term event, if it was one.
    pub fn line(&self) -> Option<&Line> {
        match &self.kind {
            OutputKind::Line(l) => Some(l),
            OutputKind::Text(_) => None,
        }
    }

    /// The text, if it was not a term event.
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            OutputKind::Line(_) => None,
            OutputKind::Text(t) => Some(t),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            OutputKind::Line(l) => l.fmt(f),
            OutputKind::Text(t) => f.write_str(t),
        }
    }
}

type OnOutput = Box<dyn FnMut(Output) + Send>;

/// How to start a child process: the program, its role or arguments, and where its
/// lines go. Built with [`role`](Self::role) or [`program`](Self::program), started
/// with [`spawn`](Self::spawn).
///
/// By default stdin is piped (closing it asks the child to shut down), stdout is read
/// by the helper, stderr is the parent's.
#[must_use]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    prefix: Vec<OsString>,
    libtest: Option<String>,
    stderr: Option<Stdio>,
    checker: Option<Checker>,
    number_terms: bool,
    on_output: Option<OnOutput>,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("prefix", &self.prefix)
            .field("libtest", &self.libtest)
            .field("checker", &self.checker.is_some())
            .field("number_terms", &self.number_terms)
            .finish_non_exhaustive()
    }
}

impl Command {
    /// This program ([`std::env::current_exe`]) in `role` with `spec`: the child's
    /// [`role`] returns them.
    ///
    /// # Errors
    ///
    /// [`ChildError::Spec`] when `spec` cannot be written as JSON;
    /// [`ChildError::Spawn`] when this program's path cannot be found.
    ///
    /// # Examples
    ///
    /// ```
    /// use leaderelection_testkit::child::Command;
    ///
    /// let cmd = Command::role("candidate", &("/tmp/lock.json", "c1"))?;
    /// # Ok::<(), leaderelection_testkit::child::ChildError>(())
    /// ```
    pub fn role(name: &str, spec: &impl Serialize) -> Result<Self, ChildError> {
        let json = serde_json::to_string(spec).map_err(|source| ChildError::Spec {
            role: name.to_owned(),
            source,
        })?;
        let exe = std::env::current_exe().map_err(|source| ChildError::Spawn {
            program: "this program (current_exe)".into(),
            source,
        })?;
        Ok(Self::program(exe).env(ROLE_VAR, format!("{name} {json}")))
    }

    /// Another program, which reports its terms with the same [`Line`]s.
    pub fn program(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            prefix: Vec::new(),
            libtest: None,
            stderr: None,
            checker: None,
            number_terms: false,
            on_output: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the child (`LD_PRELOAD`, `FAKETIME`, ...).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the program through `prefix`: `["faketime", "+1h"]`, `["strace", "-f",
    /// "-o", "trace"]`, a user switch. The first word is the program run.
    pub fn prefix<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, prefix: I) -> Self {
        self.prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    /// The program is a libtest test binary whose entry point for the child is the
    /// ignored test `test` (its full path, `module::name`): runs it alone
    /// (`--exact test --ignored --nocapture --test-threads=1`) and keeps libtest's
    /// own text (`running 1 test`, `test name ... `, `test result`) out of the output.
    pub fn libtest(mut self, test: &str) -> Self {
        self.libtest = Some(test.to_owned());
        self
    }

    /// The child's stderr; default: the parent's.
    pub fn stderr(mut self, stderr: impl Into<Stdio>) -> Self {
        self.stderr = Some(stderr.into());
        self
    }

    /// Gives every [`Line`] the child prints to `checker`, stamped on arrival
    /// ([`Checker::receive`]); [`Child::stop`] and [`Child::kill`] then mark its open
    /// terms stalled or ended.
    pub fn checker(mut self, checker: &Checker) -> Self {
        self.checker = Some(checker.clone());
        self
    }

    /// Names each term after the child's identity and the term's number in this
    /// process (`r0/3`: its third), so that two terms of one process are never
    /// confused, even when a library gives every term the same token.
    pub fn number_terms(mut self) -> Self {
        self.number_terms = true;
        self
    }

    /// Hands every [`Output`] to `f`, on the reading thread, as it arrives, instead of
    /// queueing it for [`Child::expect`] and the other readers.
    pub fn on_output(mut self, f: impl FnMut(Output) + Send + 'static) -> Self {
        self.on_output = Some(Box::new(f));
        self
    }

    /// The command line, for messages.
    fn describe(&self) -> String {
        let words: Vec<&OsStr> = self
            .prefix
            .iter()
            .chain(std::iter::once(&self.program))
            .map(OsString::as_os_str)
            .collect();
        words
            .iter()
            .map(|w| w.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts the child, its stdout read on a thread of its own.
    ///
    /// # Errors
    ///
    /// [`ChildError::Spawn`] when it cannot be started.
    pub fn spawn(mut self) -> Result<Child, ChildError> {
        let describe = self.describe();
        let mut words = self
            .prefix
            .iter()
            .cloned()
            .chain(std::iter::once(self.program.clone()));
        let first = words.next().unwrap_or_default();
        let mut cmd = std::process::Command::new(first);
        cmd.args(words).args(&self.args);
        if let Some(test) = &self.libtest {
            cmd.args([
                "--exact",
                test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ]);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(self.stderr.take().unwrap_or_else(Stdio::inherit));
        let mut child = cmd.spawn().map_err(|source| ChildError::Spawn {
            program: describe,
            source,
        })?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let shared = Arc::new(Mutex::new(Terms::default()));
        let (tx, outputs) = mpsc::channel();
        let reader = Reader {
            pid,
            libtest: self.libtest.map(|t| format!("test {t} ... ")),
            checker: self.checker.clone(),
            number_terms: self.number_terms,
            terms: shared.clone(),
            deliver: match self.on_output {
                Some(f) => Deliver::Callback(f),
                None => Deliver::Queue(tx),
            },
        };
        if let Some(stdout) = stdout {
            std::thread::spawn(move || reader.run(stdout));
        }
        Ok(Child {
            child,
            pid,
            stdin,
            terms: shared,
            outputs,
            checker: self.checker,
        })
    }
}

/// The terms a child reported begun and not ended.
#[derive(Debug, Default)]
struct Terms {
    /// The checker's identity of each open term, by token.
    open: HashMap<u64, String>,
    /// Terms begun so far.
    begun: usize,
}

enum Deliver {
    Queue(mpsc::Sender<Output>),
    Callback(OnOutput),
}

/// Reads one child's stdout.
struct Reader {
    pid: u32,
    /// libtest's prefix of the first line, `test <name> ... `.
    libtest: Option<String>,
    checker: Option<Checker>,
    number_terms: bool,
    terms: Arc<Mutex<Terms>>,
    deliver: Deliver,
}

impl Reader {
    fn run(mut self, stdout: impl io::Read) {
        let mut stdout = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdout.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches(['\r', '\n']);
            let Some(output) = self.take(text) else {
                continue;
            };
            match &mut self.deliver {
                Deliver::Queue(tx) => {
                    // The Child is gone: nobody reads; the checker still gets lines.
                    let _ = tx.send(output);
                }
                Deliver::Callback(f) => f(output),
            }
        }
    }

    /// One line: a term event goes to the checker (numbered, under one lock with the
    /// open terms, so that a stop or a kill sees every term begun); libtest's text is
    /// dropped.
    fn take(&mut self, text: &str) -> Option<Output> {
        let mut text = text;
        if let Some(prefix) = &self.libtest {
            if let Some(rest) = text.strip_prefix(prefix.as_str()) {
                text = rest;
            }
            if text.is_empty()
                || text == "running 1 test"
                || text == "ok"
                || text.starts_with("test result: ")
            {
                return None;
            }
        }
        let first = text.split(' ').next().unwrap_or_default();
        if !matches!(first, "BEGIN" | "ACT" | "END") {
            return Some(Output {
                at: Instant::now(),
                kind: OutputKind::Text(text.to_owned()),
            });
        }
        let line = match text.parse::<Line>() {
            Ok(line) => line,
            Err(e) => {
                eprintln!("child {}: {e}", self.pid);
                return Some(Output {
                    at: Instant::now(),
                    kind: OutputKind::Text(text.to_owned()),
                });
            }
        };
        let mut terms = lock(&self.terms);
        let token = line.token();
        let name = match &line {
            Line::Begin { identity, .. } => {
                terms.begun += 1;
                let name = if self.number_terms {
                    format!("{identity}/{}", terms.begun)
                } else {
                    identity.clone()
                };
                terms.open.insert(token, name.clone());
                Some(name)
            }
            Line::Act { .. } => terms.open.get(&token).cloned(),
            Line::End { .. } => terms.open.remove(&token),
        };
        let line = match name {
            Some(name) => line.with_identity(name),
            None => line,
        };
        if let Some(c) = &self.checker {
            c.receive(&line);
        }
        drop(terms);
        Some(Output {
            at: Instant::now(),
            kind: OutputKind::Line(line),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The reading thread does not panic while holding it; a test thread may.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running child process started by [`Command::spawn`].
///
/// Dropped, it is resumed and killed (SIGCONT, SIGKILL) and reaped, unless it had
/// exited already.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    terms: Arc<Mutex<Terms>>,
    outputs: mpsc::Receiver<Output>,
    checker: Option<Checker>,
}

impl Child {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True while it has reported a term begun and not ended (and was not killed).
    pub fn leads(&self) -> bool {
        !lock(&self.terms).open.is_empty()
    }

    /// The terms it reported begun and not ended: token and identity (as the checker
    /// knows it).
    pub fn open_terms(&self) -> Vec<(u64, String)> {
        lock(&self.terms)
            .open
            .iter()
            .map(|(t, i)| (*t, i.clone()))
            .collect()
    }

    /// The number of terms it reported begun.
    pub fn terms_begun(&self) -> usize {
        lock(&self.terms).begun
    }

    /// Sends `sig` unless it has exited and been reaped (its pid may then belong to
    /// another process).
    fn signal(&mut self, sig: libc::c_int, name: &str) -> Result<(), ChildError> {
        let pid = self.pid;
        if let Some(status) = self.try_wait()? {
            return Err(ChildError::Exited { pid, status });
        }
        signal_pid(pid, sig).map_err(|source| ChildError::Io {
            what: format!("send {name} to"),
            pid,
            source,
        })
    }

    /// SIGSTOP: freezes it, and returns once every thread of it has stopped (up to a
    /// second): the signal only asks, and a thread running on another core would
    /// otherwise act on what is sent to it next. Its open terms are first marked
    /// [stalled](Checker::stalled) in the checker: they are judged by their accepted
    /// writes only.
    ///
    /// # Errors
    ///
    /// [`ChildError::Exited`] when it had exited; [`ChildError::Io`] when the signal
    /// failed.
    pub fn stop(&mut self) -> Result<(), ChildError> {
        if let Some(c) = &self.checker {
            let terms = lock(&self.terms);
            for identity in terms.open.values() {
                c.stalled(identity);
            }
        }
        self.signal(libc::SIGSTOP, "SIGSTOP")?;
        let until = std::time::Instant::now() + Duration::from_secs(1);
        while !all_threads_stopped(self.pid) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// SIGCONT: resumes it after [`stop`](Self::stop).
    ///
    /// # Errors
    ///
    /// As [`stop`](Self::stop).
    pub fn resume(&mut self) -> Result<(), ChildError> {
        self.signal(libc::SIGCONT, "SIGCONT")
    }

    /// SIGTERM: a graceful shutdown for a child that [cancels its shutdown token on
    /// it](cancel_on_sigterm); others die of it.
    ///
    /// # Errors
    ///
    /// As [`stop`](Self::stop).
    pub fn terminate(&mut self) -> Result<(), ChildError> {
        self.signal(libc::SIGTERM, "SIGTERM")
    }

    /// SIGKILL, and waits for it: its open terms end now in the checker
    /// ([`Checker::killed`]), as its work dies with it. Killing a child that had
    /// exited only ends its open terms.
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] when it cannot be waited for.
    pub fn kill(&mut self) -> Result<(), ChildError> {
        if self.try_wait()?.is_none() {
            let _ = self.child.kill();
        }
        self.wait()?;
        let mut terms = lock(&self.terms);
        if let Some(c) = &self.checker {
            for identity in terms.open.values() {
                c.killed(identity);
            }
        }
        terms.open.clear();
        Ok(())
    }

    /// Its stderr, once, when the command made it [piped](Command::stderr). Read it
    /// while the child runs (on a thread) if it may write much: a full pipe blocks it.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Closes its stdin: a graceful shutdown for a child that uses [`shutdown`].
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Writes `line` and a newline to its stdin (a command for [`commands`]).
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] when stdin was closed or the write failed.
    pub fn send(&mut self, line: &str) -> Result<(), ChildError> {
        let pid = self.pid;
        let io = |source| ChildError::Io {
            what: "write to the stdin of".into(),
            pid,
            source,
        };
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io(io::Error::from(io::ErrorKind::BrokenPipe)))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(io)
    }

    /// Waits for it to exit (blocking).
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] when waiting fails.
    pub fn wait(&mut self) -> Result<ExitStatus, ChildError> {
        let pid = self.pid;
        self.child.wait().map_err(|source| ChildError::Io {
            what: "wait for".into(),
            pid,
            source,
        })
    }

    /// Its exit status if it has exited, without blocking.
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] when waiting fails.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ChildError> {
        let pid = self.pid;
        self.child.try_wait().map_err(|source| ChildError::Io {
            what: "wait for".into(),
            pid,
            source,
        })
    }

    /// Waits up to `within` for it to exit, polling; `None` if it still runs.
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] when waiting fails.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<Option<ExitStatus>, ChildError> {
        let until = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if std::time::Instant::now() >= until {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next output, waiting up to `within` (blocking); `None` when none came or
    /// stdout closed. (Nothing is queued with [`Command::on_output`].)
    pub fn recv_timeout(&self, within: Duration) -> Option<Output> {
        self.outputs.recv_timeout(within).ok()
    }

    /// Every output queued so far, without waiting.
    pub fn drain(&self) -> Vec<Output> {
        self.outputs.try_iter().collect()
    }

    /// Waits up to `within` for an output that `matches`; returns it, with the outputs
    /// before it. `what` names it in errors.
    ///
    /// # Errors
    ///
    /// [`ChildError::Timeout`] when none came in time, [`ChildError::Closed`] when
    /// stdout closed first.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(child: leaderelection_testkit::child::Child) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use leaderelection_testkit::checker::Line;
    ///
    /// let (begin, _) = child
    ///     .expect("BEGIN", Duration::from_secs(30), |o| matches!(o.line(), Some(Line::Begin { .. })))
    ///     .await?;
    /// let (ready, _) = child
    ///     .expect("READY", Duration::from_secs(5), |o| o.text() == Some("READY"))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn expect(
        &self,
        what: &str,
        within: Duration,
        mut matches: impl FnMut(&Output) -> bool,
    ) -> Result<(Output, Vec<Output>), ChildError> {
        let until = std::time::Instant::now() + within;
        let mut before = Vec::new();
        let seen = |before: &[Output]| before.iter().map(Output::to_string).collect();
        loop {
            match self.outputs.try_recv() {
                Ok(o) if matches(&o) => return Ok((o, before)),
                Ok(o) => before.push(o),
                Err(mpsc::TryRecvError::Empty) => {
                    if std::time::Instant::now() >= until {
                        return Err(ChildError::Timeout {
                            pid: self.pid,
                            what: what.to_owned(),
                            within,
                            seen: seen(&before),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(ChildError::Closed {
                        pid: self.pid,
                        what: what.to_owned(),
                        seen: seen(&before),
                    })
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = signal_pid(self.pid, libc::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// True when every thread of process `pid` is stopped (state `T` in
/// `/proc/<pid>/task/*/stat`); false where that cannot be read.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "T" || state == "t")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(libtest: Option<&str>, checker: &Checker, number: bool) -> Reader {
        let (tx, _) = mpsc::channel();
        Reader {
            pid: 1,
            libtest: libtest.map(|t| format!("test {t} ... ")),
            checker: Some(checker.clone()),
            number_terms: number,
            terms: Arc::default(),
            deliver: Deliver::Queue(tx),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lines_go_to_the_checker_and_other_text_is_passed_on() {
        let c = Checker::new();
        let mut r = reader(Some("child"), &c, false);
        let said: Vec<Option<String>> = [
            "",
            "running 1 test",
            "test child ... BEGIN 4 a valid_for=100",
            "READY",
            "ACT 4 a",
            "ACT x a",
            "END 4 a",
            "ok",
            "test result: ok. 1 passed",
        ]
        .iter()
        .map(|t| r.take(t).map(|o| o.to_string()))
        .collect();
        let said: Vec<String> = said.into_iter().flatten().collect();
        assert_eq!(
            said,
            [
                "BEGIN 4 a valid_for=100",
                "READY",
                "ACT 4 a",
                "ACT x a",
                "END 4 a"
            ]
        );
        let report = c.report();
        assert_eq!((report.intervals, report.actions), (1, 1));
        assert!(lock(&r.terms).open.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn numbered_terms_are_told_apart_even_with_one_token() {
        let c = Checker::new();
        let mut r = reader(None, &c, true);
        for t in [
            "BEGIN 0 r0",
            "ACT 0 r0",
            "END 0 r0",
            "BEGIN 0 r0",
            "ACT 0 r0",
        ] {
            r.take(t);
        }
        let ids: Vec<String> = c.intervals().into_iter().map(|i| i.identity).collect();
        assert_eq!(ids, ["r0/1", "r0/2"]);
        assert_eq!(
            lock(&r.terms).open.values().cloned().collect::<Vec<_>>(),
            ["r0/2"]
        );
        // Two terms, one after the other (the same token is a fencing regression).
        let r = c.report();
        assert_eq!(
            (r.overlaps(), r.fencing_regressions()),
            (0, 1),
            "{}",
            r.explain()
        );
    }
}
