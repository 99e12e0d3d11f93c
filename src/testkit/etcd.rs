//! Real etcd processes on free loopback ports, for tests.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a member may take to answer `/health` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An etcd cluster of one or more members, each a real `etcd` process with its own
/// temporary data directory, listening on free loopback ports.
///
/// Members are killed and the directories removed when the cluster is dropped.
/// `etcd` must be on `PATH` (Debian: `apt-get install etcd-server`); the error says
/// so when it is not.
///
/// # Examples
///
/// ```no_run
/// use leaderelection::testkit::etcd::EtcdCluster;
///
/// let mut cluster = EtcdCluster::start(3)?;
/// let endpoints = cluster.endpoints(); // ["http://127.0.0.1:41235", ...]
/// cluster.kill(0)?; // SIGKILL one member; the other two keep quorum
/// cluster.restart(0)?; // same name and data directory
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
}

#[derive(Debug)]
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl EtcdCluster {
    /// Starts `size` members and waits until every one reports healthy.
    ///
    /// # Errors
    ///
    /// When `etcd` is not installed, a port cannot be found, or a member does not
    /// become healthy within 30 seconds (its log is quoted).
    pub fn start(size: usize) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "leaderelection-etcd-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&dir)?;
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            members.push(Member {
                name: format!("m{i}"),
                client: free_port()?,
                peer: free_port()?,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir,
            members,
            initial_cluster,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    /// Client URLs of all members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.members[i].client)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least the members it was started with.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// SIGKILLs member `i` (no clean shutdown) and waits for it to exit.
    ///
    /// # Errors
    ///
    /// When the process cannot be signalled.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts member `i` again (killing it first if it runs) with its name and data
    /// directory. It does not wait: a member without quorum never reports healthy;
    /// call [`wait_healthy`](Self::wait_healthy) when the quorum is back.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i)?;
        self.spawn(i)?;
        Ok(())
    }

    /// Waits until member `i` reports healthy (which needs a quorum).
    ///
    /// # Errors
    ///
    /// When it does not within 30 seconds.
    pub fn wait_healthy(&mut self, i: usize) -> io::Result<()> {
        let start = Instant::now();
        loop {
            if health(self.members[i].client) {
                return Ok(());
            }
            if let Some(child) = self.members[i].child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "etcd member {} exited with {status}; log:\n{}",
                        self.members[i].name,
                        self.log_tail(i)
                    )));
                }
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd member {} not healthy after {START_TIMEOUT:?}; log:\n{}",
                        self.members[i].name,
                        self.log_tail(i)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pauses member `i` with SIGSTOP: it keeps its sockets but answers nothing.
    ///
    /// # Errors
    ///
    /// When the member is not running or cannot be signalled.
    pub fn pause(&mut self, i: usize) -> io::Result<()> {
        self.signal(i, libc::SIGSTOP)
    }

    /// Resumes a member paused with [`pause`](Self::pause).
    ///
    /// # Errors
    ///
    /// When the member is not running or cannot be signalled.
    pub fn resume(&mut self, i: usize) -> io::Result<()> {
        self.signal(i, libc::SIGCONT)
    }

    fn signal(&mut self, i: usize, sig: libc::c_int) -> io::Result<()> {
        let child = self.members[i]
            .child
            .as_ref()
            .ok_or_else(|| io::Error::other(format!("etcd member {i} is not running")))?;
        signal_pid(child.id(), sig)
    }

    fn member_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let data = self.member_dir(i);
        let state = if data.join("member").exists() {
            "existing"
        } else {
            "new"
        };
        fs::create_dir_all(&data)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))?;
        let m = &self.members[i];
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(self.dir.file_name().unwrap_or_default())
            // Loopback: fast heartbeats make member failure and recovery quick.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start etcd ({e}); install it, e.g. `apt-get install etcd-server`"
                    ),
                )
            })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn log_tail(&self, i: usize) -> String {
        let text = fs::read_to_string(self.member_dir(i).with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                // A paused member would ignore SIGKILL until resumed on some kernels'
                // accounting; resume it first.
                let _ = signal_pid(child.id(), libc::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sends `sig` to process `pid`.
///
/// # Errors
///
/// The OS error when the signal cannot be sent.
pub fn signal_pid(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A loopback address with a port that was free a moment ago.
///
/// # Errors
///
/// When no port can be bound.
pub fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn health(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
