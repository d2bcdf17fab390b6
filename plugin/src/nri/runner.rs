//! The two ways a plugin runs: dialling the runtime's socket (and redialling whenever containerd
//! restarts), or launched by containerd with an already connected socket.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::error::{NriError, Result};
use super::handler::NriHandler;
use super::identity::PluginIdentity;
use super::session::{SessionEnd, run_session};

/// containerd's default NRI socket.
pub const DEFAULT_NRI_SOCKET: &str = "/var/run/nri/nri.sock";

/// Environment variables containerd sets for a plugin it launches.
pub const ENV_PLUGIN_SOCKET: &str = "NRI_PLUGIN_SOCKET";
pub const ENV_PLUGIN_NAME: &str = "NRI_PLUGIN_NAME";
pub const ENV_PLUGIN_IDX: &str = "NRI_PLUGIN_IDX";

/// Bounded exponential backoff between connection attempts.
///
/// The cap is short on purpose: containerd is back within a fraction of a second after a restart
/// and pods started meanwhile go without the plugin, so we redial fast; a connect attempt to a
/// missing socket costs next to nothing.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; each call doubles the following one up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(20), Duration::from_millis(500))
    }
}

/// How often a persisting connection problem is logged again at warning level.
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(30);

/// Counters an operator (and the tests) can read to see the plugin's connection history.
pub trait ConnectionObserver: Send + Sync + 'static {
    fn registered(&self, _elapsed: Duration) {}
    fn connection_lost(&self) {}
}

impl ConnectionObserver for () {}

/// Dials `socket`, registers, serves, and redials with bounded backoff whenever the connection
/// ends. Returns only on an error that retrying cannot fix (none today): callers stop it by
/// dropping the future.
pub async fn run_external(
    socket: &Path,
    identity: &PluginIdentity,
    handler: Arc<dyn NriHandler>,
    observer: Arc<dyn ConnectionObserver>,
) -> Result<()> {
    let mut backoff = Backoff::default();
    let mut last_warning: Option<(String, Instant)> = None;
    let peer = socket.display().to_string();
    loop {
        let outcome = match connect(socket).await {
            Ok(stream) => {
                let observer = observer.clone();
                run_session(stream, &peer, identity, handler.clone(), move |elapsed| {
                    observer.registered(elapsed)
                })
                .await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(end) => {
                observer.connection_lost();
                backoff.reset();
                last_warning = None;
                match end {
                    SessionEnd::PeerClosed => {
                        info!(socket = %peer, "runtime closed the connection; reconnecting")
                    }
                    SessionEnd::Shutdown => {
                        info!(socket = %peer, "runtime asked the plugin to shut down; reconnecting")
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                let repeat = matches!(&last_warning, Some((m, at)) if *m == message && at.elapsed() < REPEAT_WARNING_EVERY);
                if repeat {
                    debug!(socket = %peer, error = %message, "still cannot connect to the runtime");
                } else {
                    warn!(socket = %peer, error = %message, "cannot connect to the runtime; retrying with backoff");
                    last_warning = Some((message, Instant::now()));
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).await.map_err(|source| {
        let path = socket.to_path_buf();
        match source.kind() {
            std::io::ErrorKind::NotFound => NriError::SocketMissing(path),
            std::io::ErrorKind::ConnectionRefused => NriError::SocketRefused(path),
            std::io::ErrorKind::PermissionDenied => NriError::SocketPermission(path),
            _ => NriError::Connect { path, source },
        }
    })
}

/// What containerd passes to a plugin it launches.
#[derive(Debug)]
pub struct LaunchEnv {
    pub identity: PluginIdentity,
    pub socket_fd: RawFd,
}

impl LaunchEnv {
    /// Reads the launch environment; `None` when the process was not launched by containerd.
    pub fn from_env() -> Option<Result<Self>> {
        let fd = std::env::var_os(ENV_PLUGIN_SOCKET)?;
        Some(Self::parse(
            &fd.to_string_lossy(),
            std::env::var(ENV_PLUGIN_NAME).ok().as_deref(),
            std::env::var(ENV_PLUGIN_IDX).ok().as_deref(),
        ))
    }

    pub fn parse(fd: &str, name: Option<&str>, idx: Option<&str>) -> Result<Self> {
        let socket_fd: RawFd = fd.trim().parse().map_err(|_| NriError::LaunchEnv {
            name: ENV_PLUGIN_SOCKET,
            problem: format!("{fd:?}, not a file descriptor number"),
        })?;
        let missing = |name| NriError::LaunchEnv {
            name,
            problem: "not set".into(),
        };
        let identity = PluginIdentity::new(
            name.ok_or_else(|| missing(ENV_PLUGIN_NAME))?,
            idx.ok_or_else(|| missing(ENV_PLUGIN_IDX))?,
        )?;
        Ok(Self {
            identity,
            socket_fd,
        })
    }

    /// Takes ownership of the inherited socket.
    pub fn into_stream(self) -> Result<UnixStream> {
        if !is_socket(self.socket_fd) {
            return Err(NriError::LaunchEnv {
                name: ENV_PLUGIN_SOCKET,
                problem: format!("{}, which is not an open socket", self.socket_fd),
            });
        }
        // SAFETY: containerd hands this descriptor to us alone; we checked it is an open socket
        // and take ownership of it exactly once (self is consumed).
        let fd = unsafe { OwnedFd::from_raw_fd(self.socket_fd) };
        let std_stream = std::os::unix::net::UnixStream::from(fd);
        let launch_err = |e: std::io::Error| NriError::LaunchEnv {
            name: ENV_PLUGIN_SOCKET,
            problem: format!("{}, which cannot be used: {e}", self.socket_fd),
        };
        std_stream.set_nonblocking(true).map_err(launch_err)?;
        UnixStream::from_std(std_stream).map_err(launch_err)
    }
}

fn is_socket(fd: RawFd) -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat only writes into the buffer we pass and does not take ownership of fd.
    let rc = unsafe { libc::fstat(fd, stat.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it initialised the buffer.
    let mode = unsafe { stat.assume_init() }.st_mode;
    mode & libc::S_IFMT == libc::S_IFSOCK
}

/// Serves the runtime over the socket containerd launched us with, until it closes it. A launched
/// plugin is never relaunched by containerd, so there is nothing to redial.
pub async fn run_launched(
    launch: LaunchEnv,
    handler: Arc<dyn NriHandler>,
    observer: Arc<dyn ConnectionObserver>,
) -> Result<SessionEnd> {
    let identity = launch.identity.clone();
    let peer = format!("fd {} ({ENV_PLUGIN_SOCKET})", launch.socket_fd);
    let stream = launch.into_stream()?;
    let end = run_session(stream, &peer, &identity, handler, |elapsed| {
        observer.registered(elapsed)
    })
    .await;
    observer.connection_lost();
    end
}

/// The socket path to dial: the flag, else the default.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(DEFAULT_NRI_SOCKET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_millis(100));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [20, 40, 80, 100, 100]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(20));
    }

    #[test]
    fn launch_env_is_validated() {
        let ok = LaunchEnv::parse("3", Some("kata-nri-manager"), Some("50")).unwrap();
        assert_eq!(ok.socket_fd, 3);
        assert_eq!(ok.identity.to_string(), "50-kata-nri-manager");
        let err = LaunchEnv::parse("x", Some("a"), Some("10")).unwrap_err();
        assert!(err.to_string().contains("NRI_PLUGIN_SOCKET"), "{err}");
        let err = LaunchEnv::parse("3", None, Some("10")).unwrap_err();
        assert!(
            err.to_string().contains("NRI_PLUGIN_NAME is not set"),
            "{err}"
        );
        let err = LaunchEnv::parse("3", Some("a"), Some("7")).unwrap_err();
        assert!(err.to_string().contains("exactly two digits"), "{err}");
    }

    #[test]
    fn a_descriptor_that_is_not_a_socket_is_refused() {
        let file = tempfile::tempfile().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let launch = LaunchEnv::parse(&fd.to_string(), Some("a"), Some("10")).unwrap();
        let err = launch.into_stream().unwrap_err();
        assert!(err.to_string().contains("not an open socket"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_socket_names_the_likely_causes() {
        let err = connect(Path::new("/nonexistent/nri.sock"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/nri.sock does not exist"),
            "{text}"
        );
        assert!(text.contains("disable = false"), "{text}");
    }
}
