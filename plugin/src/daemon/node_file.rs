//! A node that has the DaemonSet's pod but not its node file yet: the daemon waits for the file,
//! alive (`/healthz`) and not ready (`/readyz` says which file is missing), rather than failing
//! to start. A pod stuck on a hostPath mount (or crash-looping) would stall every DaemonSet
//! rollout with nothing in `kubectl describe` an operator can act on; a not-ready pod with a
//! reason is the state Kubernetes tools know how to show. Nothing on the node is touched until
//! the file exists: the node-local keys say where containerd's config and the artifacts are.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{error, info};

/// How often the file is looked for.
const POLL: Duration = Duration::from_secs(2);

/// How waiting ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The file exists (at once, or after a wait).
    Present,
    /// A signal stopped the daemon meanwhile.
    Stopped(&'static str),
}

/// Returns once `path` exists, serving `/healthz` and a not-ready `/readyz` on `listen` while it
/// does not. `stop` ends the wait early (the daemon's shutdown signals).
pub(crate) async fn wait_until_present(
    path: &Path,
    listen: SocketAddr,
    stop: impl std::future::Future<Output = &'static str>,
) -> std::io::Result<Waited> {
    if path.exists() {
        return Ok(Waited::Present);
    }
    let why = format!(
        "not ready: the node file {} is missing; create it (root-owned, not writable by others) \
         with this node's local keys (docs/operator-guide.md, \"The node file\"): nothing on this \
         node is changed until it exists\n",
        path.display()
    );
    error!(path = %path.display(), %listen, "node file missing: waiting for it, not ready");
    let listener = TcpListener::bind(listen).await?;
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let why = why.clone();
                async move { (StatusCode::SERVICE_UNAVAILABLE, why) }
            }),
        );
    let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, routes)
            .with_graceful_shutdown(async {
                let _ = done_rx.await;
            })
            .into_future(),
    );
    tokio::pin!(stop);
    let outcome = loop {
        tokio::select! {
            signal = &mut stop => break Waited::Stopped(signal),
            _ = tokio::time::sleep(POLL) => {
                if path.exists() {
                    info!(path = %path.display(), "node file present: starting");
                    break Waited::Present;
                }
            }
        }
    };
    // The address must be free again before the daemon's own endpoint binds it.
    let _ = done.send(());
    match server.await {
        Ok(served) => served?,
        Err(join) => error!(error = %join, "the waiting endpoint ended abnormally"),
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    fn free_address() -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address")
    }

    #[tokio::test]
    async fn a_present_file_is_not_waited_for_and_binds_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.yaml");
        std::fs::write(&path, "").expect("write");
        let listen = free_address();
        let waited = wait_until_present(&path, listen, std::future::pending())
            .await
            .expect("wait");
        assert_eq!(waited, Waited::Present);
        std::net::TcpListener::bind(listen).expect("the address was never taken");
    }

    #[tokio::test]
    async fn a_missing_file_is_alive_not_ready_and_starts_once_it_appears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.yaml");
        let listen = free_address();
        let waiting = tokio::spawn({
            let path = path.clone();
            async move { wait_until_present(&path, listen, std::future::pending()).await }
        });
        let mut health = String::new();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                health = get(listen, "/healthz").await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        let ready = get(listen, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(
            ready.contains(&format!("the node file {} is missing", path.display())),
            "{ready}"
        );

        std::fs::write(&path, "").expect("write");
        let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("ends after the file appears")
            .expect("task")
            .expect("wait");
        assert_eq!(waited, Waited::Present);
        std::net::TcpListener::bind(listen).expect("the address is free for the daemon");
    }

    #[tokio::test]
    async fn a_signal_stops_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.yaml");
        let waited = wait_until_present(&path, free_address(), async { "SIGTERM" })
            .await
            .expect("wait");
        assert_eq!(waited, Waited::Stopped("SIGTERM"));
        assert!(!path.exists());
    }
}
