//! A fault-injecting TCP proxy for one client: the test points a replica's client at
//! the proxy's addresses, and can then cut that replica off from the backend (open
//! connections are reset, new ones closed at once) or delay everything it sends and
//! receives, while other replicas still reach the backend directly.
// Only the real-backend groups cut connections.
#![cfg_attr(not(all(feature = "etcd", feature = "kube")), allow(dead_code))]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

/// The switches of one proxy group.
#[derive(Clone, Debug)]
pub struct Handle {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    cut: watch::Sender<bool>,
    delay: Arc<AtomicU64>,
    /// Ends every listener and connection when the group is dropped.
    _tasks: std::sync::Mutex<JoinSet<()>>,
}

impl leaderelection_testkit::replica::Cut for Handle {
    fn cut(&self, down: bool) {
        Handle::cut(self, down)
    }
    fn delay(&self, by: Duration) {
        Handle::delay(self, by)
    }
}

impl Handle {
    /// Cuts the client off (true) or lets it through again (false).
    pub fn cut(&self, down: bool) {
        self.state.cut.send_replace(down);
    }

    /// Delays every chunk of data, both ways, by `d`.
    pub fn delay(&self, d: Duration) {
        self.state
            .delay
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

/// Starts one listener per target on a free loopback port; returns the addresses to
/// give the client, in the order of `targets`, and the group's switches.
pub async fn start(targets: &[SocketAddr]) -> std::io::Result<(Vec<SocketAddr>, Handle)> {
    let cut = watch::Sender::new(false);
    let delay = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let mut addrs = Vec::new();
    for &target in targets {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        tasks.spawn(accept_loop(listener, target, cut.clone(), delay.clone()));
    }
    let handle = Handle {
        state: Arc::new(State {
            cut,
            delay,
            _tasks: std::sync::Mutex::new(tasks),
        }),
    };
    Ok((addrs, handle))
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    cut: watch::Sender<bool>,
    delay: Arc<AtomicU64>,
) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *cut.borrow() {
            // Refused: closed before a byte is exchanged.
            drop(client);
            continue;
        }
        let (cut, delay) = (cut.subscribe(), delay.clone());
        conns.spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let mut cut = cut;
            tokio::select! {
                _ = pipe(cr, sw, delay.clone()) => {}
                _ = pipe(sr, cw, delay) => {}
                _ = cut.wait_for(|c| *c) => {}
            }
            // Dropping both halves closes both connections.
        });
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
}

/// Copies `from` to `to`, each chunk delayed by the delay in force when it was read,
/// in order.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Arc<AtomicU64>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
