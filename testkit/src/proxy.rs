//! A fault-injecting TCP proxy: a test points one client (one replica) at the proxy
//! instead of its server, and can then cut it off, stall it or slow it down while
//! other clients still reach the server directly, and count what passed.
//!
//! One [`Proxy`] is one set of switches over one or more listeners, each forwarding to
//! its own target (a replica's way to every member of an etcd cluster, say). Every
//! listener is on a free loopback port. The proxy stops, and every connection through
//! it closes, when its last clone is dropped.
//!
//! - [`cut`](Proxy::cut): open connections are closed, new ones closed at once (a
//!   refused connection, a crashed network path);
//! - [`blackhole`](Proxy::blackhole): nothing passes either way, connections stay
//!   open, and what was sent meanwhile is delivered when it is lifted (dropped packets
//!   as TCP sees them: it retransmits);
//! - [`delay`](Proxy::delay): every chunk of data, both ways, is held this long;
//! - counters ([`connections`](Proxy::connections), [`bytes`](Proxy::bytes)), and an
//!   [observer](Builder::observe) per connection and direction that sees every chunk
//!   as it arrives, for counting what a protocol sent.
//!
//! # Examples
//!
//! A proxy in front of an echo server, cut off and back:
//!
//! ```
//! use leaderelection_testkit::proxy::{Direction, Proxy};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! // An echo server.
//! let server = TcpListener::bind("127.0.0.1:0").await?;
//! let target = server.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut conn, _)) = server.accept().await {
//!         tokio::spawn(async move {
//!             let (mut r, mut w) = conn.split();
//!             let _ = tokio::io::copy(&mut r, &mut w).await;
//!         });
//!     }
//! });
//!
//! let proxy = Proxy::start(target).await?;
//! let mut conn = TcpStream::connect(proxy.addr()).await?;
//! conn.write_all(b"ping").await?;
//! let mut buf = [0u8; 4];
//! conn.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"ping");
//! assert_eq!(proxy.connections(), 1);
//! assert_eq!(proxy.bytes(Direction::ToServer), 4);
//!
//! // Cut off: the open connection is closed, a new one closed at once.
//! proxy.cut(true);
//! assert_eq!(conn.read(&mut buf).await?, 0);
//! let mut refused = TcpStream::connect(proxy.addr()).await?;
//! assert_eq!(refused.read(&mut buf).await?, 0);
//!
//! // Back.
//! proxy.cut(false);
//! let mut conn = TcpStream::connect(proxy.addr()).await?;
//! conn.write_all(b"pong").await?;
//! conn.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"pong");
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

/// Which way data goes through a [`Proxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the server: requests.
    ToServer,
    /// From the server to the client: responses.
    ToClient,
}

/// Sees every chunk of data one connection carries one way, as the proxy reads it
/// (before any delay). Made by the factory given to [`Builder::observe`].
pub type Observer = Box<dyn FnMut(&[u8]) + Send>;

type MakeObserver = Arc<dyn Fn(Direction) -> Observer + Send + Sync>;

/// The options of a [`Proxy`] before it starts: [`Proxy::builder`].
#[must_use]
pub struct Builder {
    observe: Option<MakeObserver>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("observe", &self.observe.is_some())
            .finish()
    }
}

impl Builder {
    /// Calls `make` for each new connection and direction; the [`Observer`] it returns
    /// sees every chunk that connection carries that way. Default: none.
    ///
    /// # Examples
    ///
    /// Counting the lines a client sends:
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use leaderelection_testkit::proxy::{Direction, Observer, Proxy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let target = server.local_addr()?;
    /// let lines = Arc::new(AtomicU64::new(0));
    /// let counted = lines.clone();
    /// let proxy = Proxy::builder()
    ///     .observe(move |direction| -> Observer {
    ///         let counted = counted.clone();
    ///         Box::new(move |bytes: &[u8]| {
    ///             if direction == Direction::ToServer {
    ///                 let n = bytes.iter().filter(|b| **b == b'\n').count();
    ///                 counted.fetch_add(n as u64, Ordering::Relaxed);
    ///             }
    ///         })
    ///     })
    ///     .start(target)
    ///     .await?;
    /// # drop(proxy);
    /// # Ok(()) }
    /// ```
    pub fn observe(mut self, make: impl Fn(Direction) -> Observer + Send + Sync + 'static) -> Self {
        self.observe = Some(Arc::new(make));
        self
    }

    /// Starts one listener in front of `target`.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(self, target: SocketAddr) -> io::Result<Proxy> {
        self.start_many(&[target]).await
    }

    /// Starts one listener per target, all under the same switches; their addresses
    /// are in [`Proxy::addrs`], in the order of `targets`.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start_many(self, targets: &[SocketAddr]) -> io::Result<Proxy> {
        let shared = Arc::new(Shared {
            cut: watch::Sender::new(false),
            blackhole: watch::Sender::new(false),
            delay_ms: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            to_server: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            observe: self.observe,
        });
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::with_capacity(targets.len());
        for &target in targets {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            tasks.spawn(accept_loop(listener, target, shared.clone()));
        }
        Ok(Proxy {
            inner: Arc::new(Inner {
                addrs,
                targets: targets.to_vec(),
                shared,
                _tasks: Mutex::new(tasks),
            }),
        })
    }
}

/// A running TCP proxy: listeners on loopback ports in front of one or more targets,
/// and the switches that cut, stall or slow everything passing through them. See the
/// [module docs](self) for an example.
///
/// Cheap to clone; clones share the listeners and switches. Dropping the last clone
/// stops the listeners and closes every connection.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    addrs: Vec<SocketAddr>,
    targets: Vec<SocketAddr>,
    shared: Arc<Shared>,
    /// Ends every listener and connection when the proxy is dropped.
    _tasks: Mutex<JoinSet<()>>,
}

/// What the listeners and connections read.
struct Shared {
    cut: watch::Sender<bool>,
    blackhole: watch::Sender<bool>,
    delay_ms: AtomicU64,
    connections: AtomicU64,
    to_server: AtomicU64,
    to_client: AtomicU64,
    observe: Option<MakeObserver>,
}

impl Shared {
    fn bytes(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addrs", &self.inner.addrs)
            .field("targets", &self.inner.targets)
            .field("cut", &*self.inner.shared.cut.borrow())
            .field("blackhole", &*self.inner.shared.blackhole.borrow())
            .field("delay", &self.current_delay())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Options for a proxy: an [observer](Builder::observe) of what passes.
    pub fn builder() -> Builder {
        Builder { observe: None }
    }

    /// Starts a proxy with one listener in front of `target`.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        Self::builder().start(target).await
    }

    /// Starts a proxy with one listener per target (a client's way to every member of
    /// a cluster), all under the same switches.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start_many(targets: &[SocketAddr]) -> io::Result<Self> {
        Self::builder().start_many(targets).await
    }

    /// The address of the first listener: the one for a proxy of one target.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addrs[0]
    }

    /// The listeners' addresses, in the order of the targets.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.inner.addrs
    }

    /// `http://` and the first listener's address: an endpoint for an etcd or
    /// Kubernetes client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `http://` and each listener's address, in the order of the targets.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect()
    }

    /// Cuts the client off (`true`): every open connection is closed and new ones are
    /// closed before a byte is exchanged; or lets it through again (`false`).
    pub fn cut(&self, down: bool) {
        self.inner.shared.cut.send_replace(down);
    }

    /// Stops everything from passing (`true`), both ways, keeping connections open:
    /// data sent meanwhile is held and delivered, in order, once lifted (`false`).
    /// New connections are accepted, and forward nothing until then.
    pub fn blackhole(&self, on: bool) {
        self.inner.shared.blackhole.send_replace(on);
    }

    /// Holds every chunk of data, both ways, for `d` (millisecond resolution) from when
    /// it was read; zero (the default) forwards at once. Order is kept.
    pub fn delay(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.inner.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    fn current_delay(&self) -> Duration {
        Duration::from_millis(self.inner.shared.delay_ms.load(Ordering::SeqCst))
    }

    /// Connections forwarded to a target so far (not those refused while cut).
    pub fn connections(&self) -> u64 {
        self.inner.shared.connections.load(Ordering::SeqCst)
    }

    /// Bytes forwarded `direction` so far, over every connection.
    pub fn bytes(&self, direction: Direction) -> u64 {
        self.inner.shared.bytes(direction).load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *shared.cut.borrow() {
            // Refused: closed before a byte is exchanged.
            drop(client);
            continue;
        }
        conns.spawn(connection(client, target, shared.clone()));
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
}

async fn connection(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let mut cut = shared.cut.subscribe();
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    shared.connections.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pipe(cr, sw, Direction::ToServer, shared.clone()) => {}
        _ = pipe(sr, cw, Direction::ToClient, shared.clone()) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
    // Dropping both halves closes both connections.
}

/// Copies `from` to `to`, each chunk held by the delay in force when it was read and
/// while the proxy is blackholed, in order.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    shared: Arc<Shared>,
) {
    let mut observer = shared.observe.as_ref().map(|make| make(direction));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = {
        let shared = shared.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if let Some(observe) = observer.as_mut() {
                            observe(&buf[..n]);
                        }
                        let delay = Duration::from_millis(shared.delay_ms.load(Ordering::SeqCst));
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut blackhole = shared.blackhole.subscribe();
        while let Some((due, chunk)) = rx.recv().await {
            // Without a delay, no timer: it would round up to the next millisecond.
            if due > Instant::now() {
                sleep_until(due).await;
            }
            if blackhole.wait_for(|on| !*on).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            shared
                .bytes(direction)
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> SocketAddr {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("an address");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = server.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(conn: &mut TcpStream, what: &[u8]) -> Vec<u8> {
        conn.write_all(what).await.expect("write");
        let mut buf = vec![0u8; what.len()];
        conn.read_exact(&mut buf).await.expect("read");
        buf
    }

    #[tokio::test]
    async fn delay_holds_every_chunk_both_ways() {
        let proxy = Proxy::start(echo().await).await.expect("a proxy");
        proxy.delay(Duration::from_millis(100));
        let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut conn, b"abc").await, b"abc");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(proxy.bytes(Direction::ToServer), 3);
        assert_eq!(proxy.bytes(Direction::ToClient), 3);
    }

    #[tokio::test]
    async fn a_blackhole_holds_data_until_lifted_and_keeps_the_connection() {
        let proxy = Proxy::start(echo().await).await.expect("a proxy");
        let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut conn, b"1").await, b"1");
        proxy.blackhole(true);
        conn.write_all(b"2").await.expect("write");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
        assert!(read.is_err(), "data passed a blackhole: {read:?}");
        proxy.blackhole(false);
        conn.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"2");
    }

    #[tokio::test]
    async fn one_proxy_switches_every_listener_and_observers_see_each_direction() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let proxy = Proxy::builder()
            .observe(move |d| -> Observer {
                let s = s.clone();
                Box::new(move |b: &[u8]| s.lock().unwrap().push((d, b.len())))
            })
            .start_many(&[echo().await, echo().await])
            .await
            .expect("a proxy");
        assert_eq!(proxy.endpoints().len(), 2);
        for &addr in proxy.addrs() {
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            assert_eq!(round_trip(&mut conn, b"xy").await, b"xy");
        }
        assert_eq!(proxy.connections(), 2);
        let seen = seen.lock().unwrap().clone();
        for d in [Direction::ToServer, Direction::ToClient] {
            let n: usize = seen.iter().filter(|(x, _)| *x == d).map(|(_, n)| n).sum();
            assert_eq!(n, 4, "{d:?}: {seen:?}");
        }
        proxy.cut(true);
        for &addr in proxy.addrs() {
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            let mut buf = [0u8; 1];
            assert_eq!(conn.read(&mut buf).await.expect("read"), 0);
        }
    }
}
