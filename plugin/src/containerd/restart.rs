//! Getting containerd to read its new config: the restart strategies, the wait until it serves
//! again, and the way back to the previous config when it does not.
//!
//! - `command`: the operator's argv, run without a shell, bounded by the strategy's timeout.
//! - `none`: nothing is restarted; the caller reports that a restart is pending.
//! - `systemd`: D-Bus `RestartUnit` of containerd's unit, refused unless its `KillMode` spares the
//!   shims (see [`super::systemd`]).
//!
//! Ready means: containerd's gRPC socket was created again (containerd removes and recreates it
//! on every start, so a changed inode proves a new process) and accepts connections, and still
//! does after a short settle; then CRI `Status` says the runtime is ready and lists every runtime
//! handler the new config names (containerd 2.x lists them; 1.x lists none and is taken at its
//! socket's word, as is a containerd without CRI); and NRI's socket, if it was there before, is
//! back. A containerd that restarted but does not serve the handlers (it reads another config
//! file than the one written, or dropped the runtime) is a failed restart, rolled back like one
//! that never came up. Restarts are coalesced by the caller: one edit holds every class, then
//! one restart.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::atomic::AtomicWriter;
use super::child::wait_with_deadline;
use super::commit::Committed;
use super::error::ContainerdError;
use super::systemd::{self, SystemdError};

/// How containerd is restarted (the config's `containerd.restart`, resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Run `argv` (`argv[0]` an absolute path); it must exit 0 within `timeout`, and containerd
    /// must serve again within the same `timeout`.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
    /// systemd's `RestartUnit` over D-Bus.
    Systemd { unit: String, timeout: Duration },
    /// Never restart: a restart is pending.
    None,
}

impl Strategy {
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Strategy::Command { timeout, .. } | Strategy::Systemd { timeout, .. } => Some(*timeout),
            Strategy::None => None,
        }
    }
}

/// What a restart did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// containerd was restarted and serves again.
    Restarted { took: Duration },
    /// Strategy `none`: containerd still runs with the old config until someone restarts it.
    Pending,
}

/// Why containerd could not be restarted onto the new config.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("restart command is empty: set containerd.restart.command to an argv")]
    EmptyCommand,
    #[error(
        "restart command {program:?} is not an absolute path: give the full path of the program"
    )]
    RelativeCommand { program: String },
    #[error("starting restart command {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("restart command {argv:?} {status}{stderr}")]
    CommandFailed {
        argv: Vec<String>,
        status: String,
        stderr: String,
    },
    #[error("restart command {argv:?} did not finish within {timeout:?} (killed)")]
    CommandTimeout {
        argv: Vec<String>,
        timeout: Duration,
    },
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(
        "containerd did not serve again on {address} within {timeout:?} after the restart: {detail}"
    )]
    NotReady {
        address: PathBuf,
        timeout: Duration,
        detail: String,
    },
    #[error(
        "{cause}; the previous containerd config was restored and containerd restarted with it: look at containerd's log for why it did not start with the new config"
    )]
    RolledBack {
        #[source]
        cause: Box<RestartError>,
    },
    #[error(
        "{cause}; nothing was restarted, and the previous containerd config was put back (containerd still runs with it)"
    )]
    NotRestarted {
        #[source]
        cause: Box<RestartError>,
    },
    #[error(
        "containerd was restarted onto the new config, but its socket {} could not be seen before the restart nor after it ({cause}), so whether it serves is unknown; the new config stays (nothing showed it at fault, and a rollback would restart containerd again just as blindly): check containerd (e.g. systemctl status containerd), and if this runs in a container, mount the socket's directory (containerd.address)",
        address.display()
    )]
    Unverified {
        address: PathBuf,
        #[source]
        cause: Box<RestartError>,
    },
    #[error(
        "{cause}; restoring the previous containerd config then failed too ({rollback}): the node may be left without a working containerd, restore the backups (*.kata-nri-manager.bak) by hand"
    )]
    RollbackFailed {
        #[source]
        cause: Box<RestartError>,
        rollback: String,
    },
}

/// Waits for containerd at `address` to serve after a restart.
#[derive(Debug, Clone)]
pub struct ReadyProbe {
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// How long the socket must keep answering before containerd counts as up (its CRI plugin
    /// loads the runtimes just after the socket is served).
    pub settle: Duration,
    /// Poll interval.
    pub interval: Duration,
    /// Runtime handlers CRI `Status` must list after the restart.
    pub handlers: Vec<String>,
    /// containerd's NRI socket: when it was there before the restart, it must come back.
    pub nri_socket: Option<PathBuf>,
}

/// What identifies a socket file (inode and change time).
type SocketIdentity = (u64, i64, i64);

/// The sockets as they were before a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Before {
    containerd: Option<SocketIdentity>,
    nri: Option<SocketIdentity>,
}

impl ReadyProbe {
    pub fn new(address: impl Into<PathBuf>) -> Self {
        Self {
            address: address.into(),
            settle: Duration::from_millis(500),
            interval: Duration::from_millis(50),
            handlers: Vec::new(),
            nri_socket: None,
        }
    }

    /// Also waits until CRI `Status` lists `handlers`.
    pub fn with_handlers(mut self, handlers: impl IntoIterator<Item = String>) -> Self {
        self.handlers = handlers.into_iter().collect();
        self
    }

    /// Also waits for NRI's socket to come back, if it is there before the restart.
    pub fn with_nri_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.nri_socket = Some(socket.into());
        self
    }

    /// The sockets now, before a restart. NRI's counts only when something listens on it: a
    /// stale file nobody serves would never come back.
    pub fn before(&self) -> Before {
        Before {
            containerd: self.socket_identity(),
            nri: self
                .nri_socket
                .as_deref()
                .filter(|socket| UnixStream::connect(socket).is_ok())
                .and_then(identity),
        }
    }

    /// Waits until containerd serves again after a restart: [`wait`](Self::wait), then CRI
    /// and NRI ([`wait_serving`](Self::wait_serving)).
    pub fn wait_restarted(
        &self,
        before: Before,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), RestartError> {
        self.wait(before.containerd, deadline, timeout)?;
        self.wait_serving(before.nri, deadline, timeout)
    }

    /// Waits until CRI `Status` reports the runtime ready with every handler of
    /// [`handlers`](Self::handlers), and NRI's socket is a new one when there was one before.
    pub fn wait_serving(
        &self,
        nri_before: Option<SocketIdentity>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), RestartError> {
        let mut cri_done = false;
        loop {
            let mut last = None;
            if !cri_done {
                match cri_status(&self.address) {
                    Ok(status) => match serving(&status, &self.handlers) {
                        Ok(()) => cri_done = true,
                        Err(why) => last = Some(why),
                    },
                    // No CRI (disabled, or older than Status): the socket's word stands.
                    Err(e) if e.unimplemented() => cri_done = true,
                    Err(e) => last = Some(e.to_string()),
                }
            }
            if cri_done {
                match (&self.nri_socket, nri_before) {
                    (Some(socket), Some(old)) => {
                        let now = identity(socket);
                        if now.is_some() && now != Some(old) && UnixStream::connect(socket).is_ok()
                        {
                            return Ok(());
                        }
                        last = Some(format!(
                            "NRI's socket {} is not back (it was there before the restart)",
                            socket.display()
                        ));
                    }
                    _ => return Ok(()),
                }
            }
            if Instant::now() >= deadline {
                return Err(RestartError::NotReady {
                    address: self.address.clone(),
                    timeout,
                    detail: last.unwrap_or_default(),
                });
            }
            thread::sleep(self.interval.max(Duration::from_millis(100)));
        }
    }

    /// What identifies the running containerd's socket (inode and change time), if it exists.
    pub fn socket_identity(&self) -> Option<SocketIdentity> {
        identity(&self.address)
    }

    /// Waits until the socket differs from `before` (a new containerd made it), accepts a
    /// connection, and accepts one again after `settle`; gives up at `deadline`.
    pub fn wait(
        &self,
        before: Option<SocketIdentity>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), RestartError> {
        let mut last = String::from("the socket does not exist");
        loop {
            let identity = self.socket_identity();
            if identity.is_some() && identity != before {
                match UnixStream::connect(&self.address) {
                    Ok(_) => {
                        let settled = Instant::now() + self.settle;
                        if settled > deadline {
                            thread::sleep(deadline.saturating_duration_since(Instant::now()));
                        } else {
                            thread::sleep(self.settle);
                        }
                        match UnixStream::connect(&self.address) {
                            Ok(_) if self.socket_identity() == identity => return Ok(()),
                            Ok(_) => last = "containerd restarted again while settling".into(),
                            Err(e) => last = format!("connecting after the settle: {e}"),
                        }
                    }
                    Err(e) => last = format!("connecting: {e}"),
                }
            } else if identity.is_some() {
                last = "the socket is still the one of the containerd before the restart".into();
            }
            if Instant::now() >= deadline {
                return Err(RestartError::NotReady {
                    address: self.address.clone(),
                    timeout,
                    detail: last,
                });
            }
            thread::sleep(self.interval);
        }
    }
}

fn identity(socket: &Path) -> Option<SocketIdentity> {
    std::fs::metadata(socket)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Whether `status` shows a ready runtime serving every one of `handlers`; why not otherwise.
/// An empty handler list is containerd before 2.0, which does not report them.
fn serving(status: &super::cri::CriStatus, handlers: &[String]) -> Result<(), String> {
    if !status.runtime_ready {
        return Err("CRI Status: the runtime is not ready".into());
    }
    if status.handlers.is_empty() {
        return Ok(());
    }
    let missing: Vec<&str> = handlers
        .iter()
        .filter(|h| !status.handlers.contains(h))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let listed: Vec<&str> = status
        .handlers
        .iter()
        .map(|h| {
            if h.is_empty() {
                "(default)"
            } else {
                h.as_str()
            }
        })
        .collect();
    Err(format!(
        "containerd restarted but does not serve the runtime handler(s) {} (CRI Status lists: {}): is containerd reading the config file that was written?",
        missing.join(", "),
        listed.join(", ")
    ))
}

/// CRI `Status`, from blocking code: on a thread of its own with its own runtime, so it works
/// whether or not the caller is inside one.
fn cri_status(address: &Path) -> Result<super::cri::CriStatus, super::cri::CriError> {
    let address = address.to_path_buf();
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| super::cri::CriError::Runtime(e.to_string()))?;
                runtime.block_on(super::cri::status(&address))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(super::cri::CriError::Runtime(
                    "the CRI call panicked".into(),
                ))
            })
    })
}

/// Restarts containerd per `strategy` and waits until it serves again.
pub fn restart(strategy: &Strategy, probe: &ReadyProbe) -> Result<Outcome, RestartError> {
    match strategy {
        Strategy::None => Ok(Outcome::Pending),
        Strategy::Systemd { unit, timeout } => {
            let start = Instant::now();
            let deadline = start + *timeout;
            let before = probe.before();
            systemd::restart_unit(unit, *timeout)?;
            probe.wait_restarted(before, deadline, *timeout)?;
            Ok(Outcome::Restarted {
                took: start.elapsed(),
            })
        }
        Strategy::Command { argv, timeout } => {
            let start = Instant::now();
            let deadline = start + *timeout;
            let before = probe.before();
            run_command(argv, *timeout)?;
            probe.wait_restarted(before, deadline, *timeout)?;
            Ok(Outcome::Restarted {
                took: start.elapsed(),
            })
        }
    }
}

/// Restarts containerd onto the config `committed` wrote. When the restart fails or containerd
/// does not come back in time, puts the previous files back, restarts again, and returns the
/// first failure (wrapped in [`RestartError::RolledBack`]).
pub fn restart_or_roll_back(
    strategy: &Strategy,
    probe: &ReadyProbe,
    committed: &Committed,
    writer: &AtomicWriter,
) -> Result<Outcome, RestartError> {
    // A probe that never saw containerd's socket proves nothing either way (an uninstall Job
    // without the socket's mount, a containerd that was down): its silence is no reason to put
    // the old config back and restart again.
    let seen_before = probe.socket_identity().is_some();
    restart(strategy, probe).map_err(|cause| {
        if !seen_before
            && probe.socket_identity().is_none()
            && matches!(cause, RestartError::NotReady { .. })
        {
            return RestartError::Unverified {
                address: probe.address.clone(),
                cause: Box::new(cause),
            };
        }
        roll_back(cause, strategy, probe, committed, writer)
    })
}

/// After the restart failed with `cause`: puts the previous files back and, unless nothing was
/// restarted, restarts containerd onto them. Returns the error to report.
fn roll_back(
    cause: RestartError,
    strategy: &Strategy,
    probe: &ReadyProbe,
    committed: &Committed,
    writer: &AtomicWriter,
) -> RestartError {
    // systemd refused before touching the unit: the old containerd still runs, so the old files
    // go back and nothing needs a second restart.
    let untouched = matches!(&cause, RestartError::Systemd(e) if e.nothing_restarted());
    let cause = Box::new(cause);
    if let Err(e) = committed.rollback(writer) {
        return RestartError::RollbackFailed {
            cause,
            rollback: rollback_detail(&e),
        };
    }
    if untouched {
        return RestartError::NotRestarted { cause };
    }
    // The cause is in the error this returns, logged once by whoever asked for the restart.
    tracing::warn!(
        "containerd did not come back with the new config: restarting it with the previous one"
    );
    // The previous config need not serve the new handlers: containerd serving at all is the aim.
    let previous = probe.clone().with_handlers(Vec::new());
    match restart(strategy, &previous) {
        Ok(_) => RestartError::RolledBack { cause },
        Err(e) => RestartError::RollbackFailed {
            cause,
            rollback: format!("containerd did not come back with the previous config either: {e}"),
        },
    }
}

fn rollback_detail(e: &ContainerdError) -> String {
    format!("putting the previous files back: {e}")
}

/// Runs `argv` without a shell; it must exit 0 within `timeout`. Its stdout goes nowhere, the
/// end of its stderr goes into the error.
pub fn run_command(argv: &[String], timeout: Duration) -> Result<(), RestartError> {
    let Some(program) = argv.first() else {
        return Err(RestartError::EmptyCommand);
    };
    if !Path::new(program).is_absolute() {
        return Err(RestartError::RelativeCommand {
            program: program.clone(),
        });
    }
    let spawn_error = |source| RestartError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let stderr = child.stderr.take().map(|mut pipe| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = io::Read::read_to_string(&mut pipe, &mut text);
            text
        })
    });
    let Some(status) =
        wait_with_deadline(&mut child, timeout, Duration::from_millis(20)).map_err(spawn_error)?
    else {
        return Err(RestartError::CommandTimeout {
            argv: argv.to_vec(),
            timeout,
        });
    };
    if status.success() {
        return Ok(());
    }
    let text = stderr
        .and_then(|h| h.join().ok())
        .unwrap_or_default()
        .trim()
        .to_string();
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        let skip = chars.len().saturating_sub(2000);
        chars[skip..].iter().collect()
    };
    Err(RestartError::CommandFailed {
        argv: argv.to_vec(),
        status: match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => format!("was killed ({status})"),
        },
        stderr: if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_command_that_succeeds_is_ok() {
        run_command(&argv(&["/bin/true"]), Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_failing_command_reports_its_status_and_stderr() {
        let err = run_command(
            &argv(&["/bin/sh", "-c", "echo no unit >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("status 3"), "{text}");
        assert!(text.contains("no unit"), "{text}");
        let err = run_command(&argv(&["/bin/false"]), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, RestartError::CommandFailed { .. }), "{err}");
    }

    #[test]
    fn a_slow_command_is_killed_at_the_timeout() {
        let start = Instant::now();
        let err =
            run_command(&argv(&["/bin/sleep", "10"]), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, RestartError::CommandTimeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn relative_and_empty_commands_are_refused() {
        assert!(matches!(
            run_command(&[], Duration::from_secs(1)),
            Err(RestartError::EmptyCommand)
        ));
        assert!(matches!(
            run_command(&argv(&["systemctl"]), Duration::from_secs(1)),
            Err(RestartError::RelativeCommand { .. })
        ));
    }

    #[test]
    fn serving_needs_a_ready_runtime_and_every_handler_listed() {
        let status = |ready, handlers: &[&str]| super::super::cri::CriStatus {
            runtime_ready: ready,
            handlers: handlers.iter().map(|h| h.to_string()).collect(),
        };
        let wanted = vec!["kata-a".to_owned(), "kata-b".to_owned()];
        assert!(serving(&status(true, &["runc", "kata-a", "kata-b"]), &wanted).is_ok());
        let why = serving(&status(true, &["runc", "kata-a"]), &wanted).unwrap_err();
        assert!(
            why.contains(
                "does not serve the runtime handler(s) kata-b (CRI Status lists: runc, kata-a)"
            ),
            "{why}"
        );
        assert!(serving(&status(false, &["kata-a", "kata-b"]), &wanted).is_err());
        // containerd 1.x lists no handlers: the socket's word stands.
        assert!(serving(&status(true, &[]), &wanted).is_ok());
    }

    #[test]
    fn a_stale_nri_socket_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let probe = |socket: &Path| ReadyProbe::new("/nonexistent").with_nri_socket(socket);
        assert!(probe(&live).before().nri.is_some());
        assert!(probe(&stale).before().nri.is_none());
        assert!(probe(&dir.path().join("absent")).before().nri.is_none());
    }

    #[test]
    fn none_is_pending() {
        let probe = ReadyProbe::new("/nonexistent/containerd.sock");
        assert_eq!(restart(&Strategy::None, &probe).unwrap(), Outcome::Pending);
    }

    #[test]
    fn the_probe_waits_for_a_new_socket() {
        let dir = tempfile::tempdir().unwrap();
        let address = dir.path().join("containerd.sock");
        let old = std::os::unix::net::UnixListener::bind(&address).unwrap();
        let mut probe = ReadyProbe::new(&address);
        probe.settle = Duration::from_millis(20);
        let before = probe.socket_identity();
        // The same socket: not restarted.
        let timeout = Duration::from_millis(200);
        let err = probe
            .wait(before, Instant::now() + timeout, timeout)
            .unwrap_err();
        assert!(err.to_string().contains("still the one"), "{err}");
        drop(old);
        std::fs::remove_file(&address).unwrap();
        let _new = std::os::unix::net::UnixListener::bind(&address).unwrap();
        let timeout = Duration::from_secs(2);
        probe
            .wait(before, Instant::now() + timeout, timeout)
            .unwrap();
    }

    /// `config.toml` rewritten from "old" to "new" with a backup, as a commit leaves it.
    fn committed_new_config(dir: &Path) -> (PathBuf, AtomicWriter, Committed) {
        let main = dir.join("config.toml");
        std::fs::write(&main, "old").unwrap();
        let writer = AtomicWriter::new();
        writer
            .write_with_backup(
                &main,
                b"new",
                crate::containerd::FileMode::Preserve { if_new: 0o644 },
            )
            .unwrap();
        let committed = Committed {
            changed: vec![crate::containerd::commit::Previous::BackedUp(main.clone())],
        };
        (main, writer, committed)
    }

    #[test]
    fn a_refusal_before_the_restart_rolls_back_without_restarting() {
        let dir = tempfile::tempdir().unwrap();
        let (main, writer, committed) = committed_new_config(dir.path());
        // Restarting with this strategy would fail: a second restart would be RollbackFailed.
        let strategy = Strategy::Command {
            argv: argv(&["/bin/false"]),
            timeout: Duration::from_secs(2),
        };
        let probe = ReadyProbe::new(dir.path().join("containerd.sock"));
        let cause = RestartError::Systemd(SystemdError::UnsafeKillMode {
            unit: "containerd.service".into(),
            kill_mode: "control-group".into(),
        });
        let err = roll_back(cause, &strategy, &probe, &committed, &writer);
        assert!(matches!(err, RestartError::NotRestarted { .. }), "{err}");
        assert!(err.to_string().contains("nothing was restarted"), "{err}");
        assert_eq!(std::fs::read_to_string(&main).unwrap(), "old");
    }

    /// A restart whose probe never saw containerd's socket (before or after) keeps the new
    /// config: its silence shows no fault of the config, and restarting again is as blind.
    #[test]
    fn a_blind_probe_never_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let (main, writer, committed) = committed_new_config(dir.path());
        let marker = dir.path().join("restarts");
        let strategy = Strategy::Command {
            argv: argv(&["/bin/sh", "-c", &format!("echo >> {}", marker.display())]),
            timeout: Duration::from_millis(300),
        };
        let probe = ReadyProbe::new(dir.path().join("not-mounted/containerd.sock"));
        let err = restart_or_roll_back(&strategy, &probe, &committed, &writer).unwrap_err();
        assert!(matches!(err, RestartError::Unverified { .. }), "{err}");
        assert!(err.to_string().contains("the new config stays"), "{err}");
        assert_eq!(std::fs::read_to_string(&main).unwrap(), "new");
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            "\n",
            "restarted once, not again for a rollback"
        );
    }

    /// A containerd that was seen before the restart and does not come back is rolled back.
    #[test]
    fn a_containerd_seen_before_that_does_not_come_back_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let (main, writer, committed) = committed_new_config(dir.path());
        let address = dir.path().join("containerd.sock");
        let _old = std::os::unix::net::UnixListener::bind(&address).unwrap();
        let strategy = Strategy::Command {
            argv: argv(&["/bin/true"]),
            timeout: Duration::from_millis(300),
        };
        let probe = ReadyProbe::new(&address);
        let err = restart_or_roll_back(&strategy, &probe, &committed, &writer).unwrap_err();
        assert!(
            matches!(
                err,
                RestartError::RolledBack { .. } | RestartError::RollbackFailed { .. }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&main).unwrap(), "old");
    }

    #[test]
    fn a_failed_restart_rolls_the_files_back() {
        let dir = tempfile::tempdir().unwrap();
        let (main, writer, committed) = committed_new_config(dir.path());
        let strategy = Strategy::Command {
            argv: argv(&["/bin/false"]),
            timeout: Duration::from_secs(2),
        };
        let probe = ReadyProbe::new(dir.path().join("containerd.sock"));
        let err = restart_or_roll_back(&strategy, &probe, &committed, &writer).unwrap_err();
        // The second restart fails as well here (the command always fails).
        assert!(matches!(err, RestartError::RollbackFailed { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&main).unwrap(), "old");
    }
}
