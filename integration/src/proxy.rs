//! A TCP proxy that cuts a connection after a number of bytes from upstream: a registry that
//! dies or a network that drops in the middle of a blob, on demand and at a known point. It
//! counts the bytes it carries downstream: what the registry served, headers included; and the
//! blob downloads in flight (a `GET …/blobs/…` from its request line to its response's last body
//! byte), with the most at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Forwards `127.0.0.1:<port>` to `upstream`. Aborts when dropped.
pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    /// Bytes one connection may carry downstream before it is cut; `u64::MAX`: never.
    cut_after: AtomicU64,
    cuts: AtomicUsize,
    cut: Notify,
    /// Bytes a connection may carry downstream before it stalls until [`CutProxy::release`].
    hold_after: AtomicU64,
    held: AtomicUsize,
    released: Notify,
    /// Bytes carried downstream over every connection.
    served: AtomicU64,
    /// Blob responses being carried now, and the most at once.
    blobs_in_flight: AtomicUsize,
    peak_blobs: AtomicUsize,
    /// Connections whose answers could not be framed (chunked, no length, an answer to no
    /// request): their later blob downloads are not counted in the peak.
    unframed: AtomicUsize,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            cut_after: AtomicU64::new(u64::MAX),
            cuts: AtomicUsize::new(0),
            cut: Notify::new(),
            hold_after: AtomicU64::new(u64::MAX),
            held: AtomicUsize::new(0),
            released: Notify::new(),
            served: AtomicU64::new(0),
            blobs_in_flight: AtomicUsize::new(0),
            peak_blobs: AtomicUsize::new(0),
            unframed: AtomicUsize::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, Arc::clone(&accept_shared)));
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Cuts the next connection that carries more than `bytes` downstream (once).
    pub fn cut_once_after(&self, bytes: u64) {
        self.shared.cut_after.store(bytes, Ordering::SeqCst);
    }

    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Stalls every connection that carries more than `bytes` downstream (a registry that hangs
    /// mid-blob) until [`release`](Self::release).
    pub fn hold_after(&self, bytes: u64) {
        self.shared.hold_after.store(bytes, Ordering::SeqCst);
    }

    /// Connections stalled so far.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Lets stalled connections go on, and stops holding new ones.
    pub fn release(&self) {
        self.shared.hold_after.store(u64::MAX, Ordering::SeqCst);
        self.shared.released.notify_waiters();
    }

    /// Bytes the upstream sent through the proxy so far (responses with their headers).
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// The most blob downloads (GET `…/blobs/…` answered 200 or 206) carried at once since the
    /// start or [`reset_peak`](Self::reset_peak).
    pub fn peak_blob_downloads(&self) -> usize {
        self.shared.peak_blobs.load(Ordering::SeqCst)
    }

    /// Connections the blob count lost track of (see [`peak_blob_downloads`]): when not 0, the
    /// peak is a lower bound.
    ///
    /// [`peak_blob_downloads`]: Self::peak_blob_downloads
    pub fn unframed_connections(&self) -> usize {
        self.shared.unframed.load(Ordering::SeqCst)
    }

    /// Starts counting the peak again (from the downloads in flight now).
    pub fn reset_peak(&self) {
        let now = self.shared.blobs_in_flight.load(Ordering::SeqCst);
        self.shared.peak_blobs.store(now, Ordering::SeqCst);
    }

    /// Resolves when a connection has been cut.
    pub async fn wait_cut(&self) {
        self.shared.cut.notified().await
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, shared: Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    // What each request on this connection was, in order: HTTP/1.1 answers in request order.
    let asked: Arc<Mutex<VecDeque<Asked>>> = Arc::default();
    let mut answers = Answers::new(asked.clone(), shared.clone());
    let up = tokio::spawn(async move {
        let mut requests = Requests::default();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Recorded before the request reaches the registry, so before its answer can come.
            for request in requests.feed(&buf[..n]) {
                if let Ok(mut asked) = asked.lock() {
                    asked.push_back(request);
                }
            }
            if upstream_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = upstream_write.shutdown().await;
    });
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match upstream_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let limit = shared.cut_after.load(Ordering::SeqCst);
        if sent + n as u64 > limit
            && shared
                .cut_after
                .compare_exchange(limit, u64::MAX, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            let keep = (limit - sent) as usize;
            if client_write.write_all(&buf[..keep]).await.is_ok() {
                shared.served.fetch_add(keep as u64, Ordering::SeqCst);
                answers.feed(&buf[..keep]);
            }
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            shared.cut.notify_one();
            break;
        }
        if sent + n as u64 > shared.hold_after.load(Ordering::SeqCst) {
            let released = shared.released.notified();
            shared.held.fetch_add(1, Ordering::SeqCst);
            // Checked again after registering: a release in between must not be missed.
            if shared.hold_after.load(Ordering::SeqCst) != u64::MAX {
                released.await;
            }
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        shared.served.fetch_add(n as u64, Ordering::SeqCst);
        answers.feed(&buf[..n]);
        sent += n as u64;
    }
    answers.close();
    up.abort();
}

/// A request as the answer's parser needs it.
#[derive(Debug, Clone, Copy)]
struct Asked {
    /// `HEAD`: the answer has no body, whatever its `Content-Length`.
    head: bool,
    blob: bool,
}

/// Splits the client's bytes into request heads (the registry's clients send no request
/// bodies on a pull).
#[derive(Default)]
struct Requests {
    pending: Vec<u8>,
}

impl Requests {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Asked> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = find(&self.pending, b"\r\n\r\n") {
            let head: Vec<u8> = self.pending.drain(..end + 4).collect();
            let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut words = line.split(' ');
            let method = words.next().unwrap_or_default();
            let path = words.next().unwrap_or_default();
            out.push(Asked {
                head: method == "HEAD",
                blob: method == "GET" && path.starts_with("/v2/") && path.contains("/blobs/"),
            });
        }
        out
    }
}

/// Follows the answers on one connection: where each body ends, and whether it is a blob's.
struct Answers {
    asked: Arc<Mutex<VecDeque<Asked>>>,
    shared: Arc<Shared>,
    state: Answer,
}

enum Answer {
    Head(Vec<u8>),
    Body {
        left: u64,
        blob: bool,
    },
    /// A body whose end this parser cannot see (chunked, no length): stop following.
    Lost,
}

impl Answers {
    fn new(asked: Arc<Mutex<VecDeque<Asked>>>, shared: Arc<Shared>) -> Self {
        Self {
            asked,
            shared,
            state: Answer::Head(Vec::new()),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                Answer::Lost => return,
                Answer::Body { left, blob } => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[take as usize..];
                    if *left == 0 {
                        if *blob {
                            self.shared.blobs_in_flight.fetch_sub(1, Ordering::SeqCst);
                        }
                        self.state = Answer::Head(Vec::new());
                    }
                }
                Answer::Head(pending) => {
                    let before = pending.len();
                    pending.extend_from_slice(bytes);
                    let Some(end) = find(pending, b"\r\n\r\n") else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    bytes = &bytes[end + 4 - before..];
                    self.state = self.answer(&head);
                    if matches!(self.state, Answer::Lost) {
                        self.shared.unframed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    }

    /// The state after an answer's head.
    fn answer(&mut self, head: &str) -> Answer {
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) {
            return Answer::Head(Vec::new());
        }
        let Some(asked) = self.asked.lock().ok().and_then(|mut a| a.pop_front()) else {
            return Answer::Lost;
        };
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        if asked.head || status == 204 || status == 304 {
            return Answer::Head(Vec::new());
        }
        if header("transfer-encoding").is_some() {
            return Answer::Lost;
        }
        let Some(length) = header("content-length").and_then(|l| l.parse::<u64>().ok()) else {
            return Answer::Lost;
        };
        let blob = asked.blob && (status == 200 || status == 206) && length > 0;
        if blob {
            let now = self.shared.blobs_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared.peak_blobs.fetch_max(now, Ordering::SeqCst);
        }
        if length == 0 {
            return Answer::Head(Vec::new());
        }
        Answer::Body { left: length, blob }
    }

    /// The connection ended: a blob cut short is no longer in flight.
    fn close(&mut self) {
        if let Answer::Body { blob: true, .. } = self.state {
            self.shared.blobs_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        self.state = Answer::Lost;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
