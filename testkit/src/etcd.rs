//! Real etcd processes on free loopback ports, for tests.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a member may take to answer `/health` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An etcd cluster of one or more members, each a real `etcd` process with its own
/// temporary data directory, listening on free loopback ports.
///
/// Members are killed and the directories removed when the cluster is dropped. The
/// directories are on a RAM disk when there is one (`/dev/shm`), because etcd syncs
/// every write to disk and a busy disk stalls it for seconds; set
/// `LEADERELECTION_ETCD_DIR` to choose another place.
/// `etcd` must be on `PATH` (Debian: `apt-get install etcd-server`); the error says
/// so when it is not.
///
/// # Examples
///
/// ```no_run
/// use leaderelection_testkit::etcd::EtcdCluster;
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
    options: EtcdClusterOptions,
}

/// How [`EtcdCluster::start_with`] runs its members: TLS on the client port, extra
/// etcd flags.
///
/// # Examples
///
/// ```no_run
/// use leaderelection_testkit::etcd::{EtcdCluster, EtcdClusterOptions, TestCerts};
///
/// let dir = std::env::temp_dir().join("certs-for-my-test");
/// let certs = TestCerts::generate(&dir)?;
/// let cluster = EtcdCluster::start_with(1, EtcdClusterOptions::new().tls(&certs).arg("--auth-token-ttl=2"))?;
/// assert!(cluster.endpoint(0).starts_with("https://"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct EtcdClusterOptions {
    tls: Option<TestCerts>,
    args: Vec<String>,
    /// Members run as another Unix user: member index, uid, gid.
    users: Vec<(usize, u32, u32)>,
}

impl EtcdClusterOptions {
    /// Plain HTTP, no extra flags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve clients over HTTPS with the server certificate of `certs`, and require
    /// client certificates signed by its CA (`--client-cert-auth`).
    #[must_use]
    pub fn tls(mut self, certs: &TestCerts) -> Self {
        self.tls = Some(certs.clone());
        self
    }

    /// One more flag for every member, like `--auth-token-ttl=2`.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs member `i` as the Unix user `uid` (group `gid`), its data directory and
    /// log handed to that user. Packet filters match sockets by owner, so a test can
    /// then cut this one member off from its peers (iptables' owner match) while the
    /// others, and every client, still reach it. Needs root.
    #[must_use]
    pub fn member_user(mut self, i: usize, uid: u32, gid: u32) -> Self {
        self.users.retain(|(m, ..)| *m != i);
        self.users.push((i, uid, gid));
        self
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    /// Plain-HTTP `/health`, whatever the client port speaks.
    metrics: SocketAddr,
    child: Option<Child>,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// The members' `--election-timeout`: short, as loopback allows, so that a member's
/// failure and recovery are quick. Tell an `EtcdElection` on such a cluster
/// (`EtcdElection::etcd_election_timeout`).
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);

impl EtcdCluster {
    /// Starts `size` members and waits until every one reports healthy.
    ///
    /// # Errors
    ///
    /// When `etcd` is not installed, a port cannot be found, or a member does not
    /// become healthy within 30 seconds (its log is quoted).
    pub fn start(size: usize) -> io::Result<Self> {
        Self::start_with(size, EtcdClusterOptions::new())
    }

    /// Like [`start`](Self::start), with TLS or extra flags.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_with(size: usize, options: EtcdClusterOptions) -> io::Result<Self> {
        let dir = data_root().join(format!(
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
                metrics: free_port()?,
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
            options,
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
        format!("{}://{}", self.scheme(), self.members[i].client)
    }

    /// The client address of member `i`, for a proxy in front of it.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.members[i].client
    }

    /// The peer address of member `i`: where the other members reach it.
    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        self.members[i].peer
    }

    fn scheme(&self) -> &'static str {
        if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        }
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
            if health(self.members[i].metrics) {
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
        let client_url = format!("{}://{}", self.scheme(), m.client);
        let mut command = Command::new("etcd");
        if let Some(&(_, uid, gid)) = self.options.users.iter().find(|(m, ..)| *m == i) {
            use std::os::unix::process::CommandExt;
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
            std::os::unix::fs::chown(data.with_extension("log"), Some(uid), Some(gid))?;
            command.uid(uid).gid(gid);
        }
        if let Some(certs) = &self.options.tls {
            command
                .arg("--cert-file")
                .arg(&certs.server_cert)
                .arg("--key-file")
                .arg(&certs.server_key)
                .arg("--trusted-ca-file")
                .arg(&certs.ca_file)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}", m.metrics))
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
            .args(["--heartbeat-interval", "50", "--election-timeout"])
            .arg(ELECTION_TIMEOUT.as_millis().to_string())
            .args(["--log-level", "warn"])
            .args(&self.options.args)
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

/// Where clusters keep their data: `LEADERELECTION_ETCD_DIR`, else `/dev/shm` when it
/// is a writable directory, else the temporary directory.
fn data_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("LEADERELECTION_ETCD_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let writable = fs::metadata(shm).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
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

/// A loopback address with a port that was free a moment ago, and that no earlier
/// call in this process returned (the port is released before etcd binds it, and the
/// kernel hands a released port out again readily: members of parallel tests must not
/// be given the same one).
///
/// # Errors
///
/// When no port can be bound.
pub fn free_port() -> io::Result<SocketAddr> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        if given.insert(addr.port()) {
            return Ok(addr);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no loopback port left that this process has not used",
    ))
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

/// A throwaway CA with a server certificate for `127.0.0.1`/`localhost` and a client
/// certificate, made with the `openssl` command, for tests of TLS connections.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestCerts {
    /// The CA certificate (PEM).
    pub ca_file: PathBuf,
    /// The server certificate (PEM), for `IP:127.0.0.1` and `DNS:localhost`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
    /// A client certificate (PEM), CN `leaderelection-client`.
    pub client_cert: PathBuf,
    /// The client's private key (PEM).
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Writes a fresh CA and certificates (P-256 keys, valid for a day) into `dir`.
    ///
    /// # Errors
    ///
    /// When `openssl` is not installed (the message says so) or fails (its output is
    /// quoted).
    pub fn generate(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let p = |name: &str| dir.join(name);
        let certs = Self {
            ca_file: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            Command::new("openssl")
                .args(["req", "-x509"])
                .args(ec)
                .arg("-keyout")
                .arg(p("ca.key"))
                .arg("-out")
                .arg(&certs.ca_file)
                .args(["-days", "1", "-subj", "/CN=leaderelection test CA"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        )?;
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            (
                "client",
                "leaderelection-client",
                "extendedKeyUsage=clientAuth\n",
            ),
        ] {
            let ext_file = p(&format!("{name}.ext"));
            fs::write(
                &ext_file,
                format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{ext}"),
            )?;
            openssl(
                Command::new("openssl")
                    .arg("req")
                    .args(ec)
                    .arg("-keyout")
                    .arg(p(&format!("{name}.key")))
                    .arg("-out")
                    .arg(p(&format!("{name}.csr")))
                    .args(["-subj", &format!("/CN={cn}")]),
            )?;
            openssl(
                Command::new("openssl")
                    .args(["x509", "-req", "-days", "1", "-set_serial"])
                    .arg(if name == "server" { "2" } else { "3" })
                    .arg("-in")
                    .arg(p(&format!("{name}.csr")))
                    .arg("-CA")
                    .arg(&certs.ca_file)
                    .arg("-CAkey")
                    .arg(p("ca.key"))
                    .arg("-extfile")
                    .arg(&ext_file)
                    .arg("-out")
                    .arg(p(&format!("{name}.crt"))),
            )?;
        }
        Ok(certs)
    }
}

fn openssl(command: &mut Command) -> io::Result<()> {
    let out = command.stdin(Stdio::null()).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run openssl ({e}); install it, e.g. `apt-get install openssl`"),
        )
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "openssl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}
