//! A TCP proxy that cuts a connection after a number of bytes from upstream: a registry that
//! dies or a network that drops in the middle of a blob, on demand and at a known point. It
//! counts the bytes it carries downstream: what the registry served, headers included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
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
        sent += n as u64;
    }
    up.abort();
}
