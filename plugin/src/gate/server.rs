//! The daemon's side of the gate protocol.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::protocol::{EnsureReply, EnsureRequest, MAX_LINE};
use super::{GateError, Result};

/// Makes a class ready for a waiting gate.
///
/// Implementations run the work in a task of their own: a gate that gives up (its sandbox start
/// timed out, or containerd killed it) drops this future, and that must never cancel a pull.
pub trait Ensurer: Send + Sync + 'static {
    fn ensure(&self, request: EnsureRequest) -> BoxFuture<'static, Result<(), Refusal>>;
}

/// Why an [`Ensurer`] refused a gate: the reason goes on the wire as it is; the kind (a short
/// stable label, such as the reconciler's `EnsureError::kind`) is for the daemon's own logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: &'static str,
    pub reason: String,
    /// The ensurer logged the reason already: the gate's own line then says only who was
    /// refused, so one failure is logged once.
    pub logged: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A bare reason: a refusal of no particular kind.
impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self {
            kind: "refused",
            reason,
            logged: false,
        }
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        reason.to_owned().into()
    }
}

/// Binds the gate socket (root-only) and answers gates until the future is dropped.
pub async fn serve(
    socket: &Path,
    ensurer: Arc<dyn Ensurer>,
    connections: Arc<AtomicUsize>,
) -> Result<()> {
    let listener = bind(socket)?;
    info!(socket = %socket.display(), "gate socket listening");
    loop {
        let (stream, _) = listener.accept().await.map_err(|source| GateError::Io {
            what: format!("accepting on {}", socket.display()),
            source,
        })?;
        let ensurer = ensurer.clone();
        let open = Open::count(&connections);
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = answer(stream, ensurer, REQUEST_WAIT).await {
                debug!(error = %e, "gate connection ended early");
            }
        });
    }
}

/// One gate connection, counted from accept until its answer is written (or it ends early):
/// what a restart in place waits for.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn count(connections: &Arc<AtomicUsize>) -> Self {
        connections.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(connections))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn bind(socket: &Path) -> Result<UnixListener> {
    let io = |what: String| move |source| GateError::Io { what, source };
    // Only a directory made here is restricted: `gate.socket: /run/gate.sock` must not turn
    // `/run` into root's alone. An existing directory is the node's to set; the socket itself
    // is 0600 either way.
    if let Some(dir) = socket.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("securing {}", dir.display())))?;
    }
    // A socket left by a previous daemon would make bind fail.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing stale {}", socket.display()))(e)),
    }
    let listener =
        UnixListener::bind(socket).map_err(io(format!("binding {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("securing {}", socket.display())))?;
    Ok(listener)
}

/// How long a connection may take to send its request line. The gate writes it as soon as it
/// connects; a peer that sends nothing must not stay counted as an open gate, which would hold
/// back the containerd retry for good.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

async fn answer(
    stream: UnixStream,
    ensurer: Arc<dyn Ensurer>,
    request_wait: Duration,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE as u64));
    tokio::time::timeout(request_wait, reader.read_line(&mut line))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no request within {request_wait:?}"),
            )
        })??;
    let reply = match serde_json::from_str::<EnsureRequest>(&line) {
        Ok(request) => {
            info!(
                runtime_class = %request.class,
                sandbox = request.sandbox_id.as_deref().unwrap_or(""),
                pod = %format_args!("{}/{}", request.pod_namespace.as_deref().unwrap_or("?"), request.pod_name.as_deref().unwrap_or("?")),
                "gate waits for runtime class"
            );
            let class = request.class.clone();
            match ensurer.ensure(request).await {
                Ok(()) => EnsureReply::Ready,
                Err(Refusal {
                    kind,
                    reason,
                    logged,
                }) => {
                    if logged {
                        info!(runtime_class = %class, kind, "gate refused");
                    } else {
                        warn!(runtime_class = %class, kind, %reason, "gate refused");
                    }
                    EnsureReply::Failed { reason }
                }
            }
        }
        Err(e) => EnsureReply::Failed {
            reason: format!("unreadable request: {e}"),
        },
    };
    let mut body = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    body.push(b'\n');
    write.write_all(&body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_nri_shim_gate::client;

    #[tokio::test]
    async fn only_a_directory_made_here_is_restricted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dir.path().join("run");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        drop(bind(&shared.join("gate.sock")).expect("bind"));
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&shared), 0o755, "an existing directory keeps its mode");
        assert_eq!(mode(&shared.join("gate.sock")), 0o600);
        let own = dir.path().join("kata-nri-manager/run");
        drop(bind(&own.join("gate.sock")).expect("bind"));
        assert_eq!(
            mode(&own),
            0o700,
            "a directory made for the socket is root's alone"
        );
    }

    struct Scripted;

    impl Ensurer for Scripted {
        fn ensure(&self, request: EnsureRequest) -> BoxFuture<'static, Result<(), Refusal>> {
            Box::pin(async move {
                match request.class.as_str() {
                    "ready" => Ok(()),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        Ok(())
                    }
                    _ => Err("denied by policy 10-namespace-gate: namespace not allowed".into()),
                }
            })
        }
    }

    fn request(class: &str) -> EnsureRequest {
        EnsureRequest {
            class: class.into(),
            sandbox_id: Some("abc".into()),
            pod_namespace: Some("team-a".into()),
            pod_name: Some("p".into()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gates_get_ready_denied_or_timed_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/gate.sock");
        let connections = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let (socket, connections) = (socket.clone(), connections.clone());
            async move { serve(&socket, Arc::new(Scripted), connections).await }
        });
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let ask = |class: &'static str, timeout| {
            let socket = socket.clone();
            tokio::task::spawn_blocking(move || client::ensure(&socket, &request(class), timeout))
        };
        ask("ready", Duration::from_secs(5)).await.unwrap().unwrap();
        let denied = ask("other", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap_err();
        assert!(denied.to_string().contains("namespace-gate"), "{denied}");
        // Answered: no longer counted (the count drops just after the answer is written).
        tokio::time::timeout(Duration::from_secs(10), async {
            while connections.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("answered gates are no longer counted");
        let timed_out = ask("slow", Duration::from_millis(200))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(timed_out, GateError::Timeout { .. }),
            "{timed_out}"
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "a gate still being worked on counts until it is answered"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_peer_that_sends_no_request_is_let_go() {
        let (ours, _silent) = UnixStream::pair().unwrap();
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            answer(ours, Arc::new(Scripted), Duration::from_millis(50)),
        )
        .await
        .expect("the connection was not let go");
        let error = ended.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    }

    #[test]
    fn a_missing_daemon_is_named() {
        let err = client::ensure(
            Path::new("/nonexistent/gate.sock"),
            &request("x"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("is the daemon running?"), "{err}");
    }
}
