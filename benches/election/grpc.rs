//! Counting one replica's gRPC requests to etcd, and noting when its last response
//! arrived, by reading the HTTP/2 frames as they pass through the test kit's proxy.
//!
//! etcd's own metrics count requests per server, not per client; a proxy per replica
//! tells the leader's load from each standby's.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use leaderelection_testkit::proxy::{Direction, Observer, Proxy};
use tokio::time::Instant;

use leaderelection_bench_driver::scenario::LastRenewal;

/// What passed through one proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// gRPC request messages from the client: one per unary call, one per message on
    /// a stream (each lease keep-alive, each watch request).
    pub requests: AtomicU64,
    /// When the last gRPC response message from the server arrived.
    pub last_response: LastRenewal,
}

/// A proxy on a loopback port in front of one etcd member, counting what passes.
#[derive(Debug)]
pub struct CountedProxy {
    proxy: Proxy,
    pub stats: Arc<ProxyStats>,
}

impl CountedProxy {
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let stats = Arc::new(ProxyStats::default());
        let counted = stats.clone();
        let proxy = Proxy::builder()
            .observe(move |direction| -> Observer {
                let stats = counted.clone();
                match direction {
                    Direction::ToServer => {
                        let mut frames = Frames::new(true);
                        Box::new(move |bytes: &[u8]| {
                            let messages = frames.feed(bytes).messages;
                            stats.requests.fetch_add(messages, Ordering::Relaxed);
                        })
                    }
                    Direction::ToClient => {
                        let mut frames = Frames::new(false);
                        Box::new(move |bytes: &[u8]| {
                            if frames.feed(bytes).messages > 0 {
                                *stats
                                    .last_response
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                            }
                        })
                    }
                }
            })
            .start(target)
            .await?;
        Ok(Self { proxy, stats })
    }

    pub fn endpoint(&self) -> String {
        self.proxy.endpoint()
    }
}

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;
const PADDED: u8 = 0x8;
const GRPC_PREFIX: usize = 5;

/// One direction of an HTTP/2 connection, split into frames, with the gRPC messages
/// in its DATA frames counted.
struct Frames {
    skip: usize,
    buf: Vec<u8>,
    streams: HashMap<u32, Message>,
}

#[derive(Default)]
struct Message {
    prefix: Vec<u8>,
    body_left: usize,
}

struct Fed {
    messages: u64,
}

impl Frames {
    fn new(from_client: bool) -> Self {
        Self {
            skip: if from_client { PREFACE_LEN } else { 0 },
            buf: Vec::new(),
            streams: HashMap::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Fed {
        let mut fed = Fed { messages: 0 };
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
        }
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while self.buf.len() - at >= FRAME_HEADER {
            let h = &self.buf[at..at + FRAME_HEADER];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if self.buf.len() - at < FRAME_HEADER + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let payload = &self.buf[at + FRAME_HEADER..at + FRAME_HEADER + len];
            match kind {
                DATA => {
                    let data = if flags & PADDED != 0 && !payload.is_empty() {
                        let pad = usize::from(payload[0]);
                        &payload[1..payload.len().saturating_sub(pad).max(1)]
                    } else {
                        payload
                    };
                    let m = self.streams.entry(stream).or_default();
                    fed.messages += m.consume(data);
                    if flags & END_STREAM != 0 {
                        self.streams.remove(&stream);
                    }
                }
                HEADERS if flags & END_STREAM != 0 => {
                    self.streams.remove(&stream);
                }
                RST_STREAM => {
                    self.streams.remove(&stream);
                }
                _ => {}
            }
            at += FRAME_HEADER + len;
        }
        self.buf.drain(..at);
        fed
    }
}

impl Message {
    /// Consumes DATA bytes of one stream; returns the messages that began in them.
    fn consume(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            let need = GRPC_PREFIX - self.prefix.len();
            let n = need.min(data.len());
            self.prefix.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.prefix.len() == GRPC_PREFIX {
                started += 1;
                let p = &self.prefix;
                self.body_left = u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
                self.prefix.clear();
            }
        }
        started
    }
}
