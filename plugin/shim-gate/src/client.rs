//! The gate's side of the protocol: ask the daemon, wait, bounded.
//!
//! Blocking std I/O on purpose: the gate is a short-lived process that must start fast and print
//! nothing before it execs the real shim.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{GateError, Result};
use crate::shared::protocol::{EnsureReply, EnsureRequest, MAX_LINE};

/// First wait before connecting again to a daemon that is not there; doubles up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Asks the daemon at `socket` to make `request.class` ready, waiting at most `timeout`.
///
/// A daemon being restarted (a DaemonSet update, a crash, a node's boot order) is waited for:
/// no socket, a stale socket that refuses, or a daemon that closes the connection without an
/// answer are tried again, with backoff, until `timeout`. A sandbox start then costs the
/// restart's seconds, not a failure.
pub fn ensure(socket: &Path, request: &EnsureRequest, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut delay = FIRST_RETRY;
    loop {
        match ask(socket, request, deadline, timeout) {
            Err(Attempt::Again(reason)) => {
                let now = Instant::now();
                if now + delay >= deadline {
                    return Err(GateError::DaemonUnreachable {
                        class: request.class.clone(),
                        socket: socket.to_path_buf(),
                        reason: format!(
                            "{reason} (tried for {} s)",
                            now.duration_since(started).as_secs()
                        ),
                    });
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_RETRY);
            }
            Err(Attempt::Final(e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
}

/// How one attempt ended without an answer.
enum Attempt {
    /// The daemon is not (yet, or any more) there: worth another attempt.
    Again(String),
    Final(GateError),
}

fn ask(
    socket: &Path,
    request: &EnsureRequest,
    deadline: Instant,
    timeout: Duration,
) -> std::result::Result<(), Attempt> {
    let class = request.class.clone();
    let unreachable = |reason: String| {
        Attempt::Final(GateError::DaemonUnreachable {
            class: class.clone(),
            socket: socket.to_path_buf(),
            reason,
        })
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(Attempt::Again(e.to_string()));
        }
        Err(e) => return Err(unreachable(e.to_string())),
    };
    let mut line = serde_json::to_vec(request).map_err(|e| unreachable(e.to_string()))?;
    line.push(b'\n');
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.write_all(&line))
        .map_err(|e| unreachable(e.to_string()))?;

    let remaining = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(remaining.max(Duration::from_millis(1))))
        .map_err(|e| unreachable(e.to_string()))?;
    let mut reply = String::new();
    let read = BufReader::new(stream.take(MAX_LINE as u64)).read_line(&mut reply);
    match read {
        // A daemon stopping between accept and answer: the next one answers.
        Ok(0) => Err(Attempt::Again(
            "the daemon closed the connection without an answer".into(),
        )),
        Ok(_) => match serde_json::from_str::<EnsureReply>(&reply) {
            Ok(EnsureReply::Ready) => Ok(()),
            Ok(EnsureReply::Failed { reason }) => {
                Err(Attempt::Final(GateError::Denied { class, reason }))
            }
            Err(e) => Err(unreachable(format!("unreadable answer: {e}"))),
        },
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(Attempt::Final(GateError::Timeout {
                class,
                seconds: timeout.as_secs(),
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Err(Attempt::Again(e.to_string()))
        }
        Err(e) => Err(unreachable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    use super::*;

    fn request() -> EnsureRequest {
        EnsureRequest {
            class: "kata".into(),
            sandbox_id: None,
            pod_namespace: None,
            pod_name: None,
        }
    }

    /// A daemon at `socket` after `after`: the first `drop_first` connections are closed unread
    /// (a daemon stopping), the next is answered `Ready`.
    fn daemon_later(
        socket: PathBuf,
        after: Duration,
        drop_first: usize,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let _ = std::fs::remove_file(&socket);
            let listener = UnixListener::bind(&socket).expect("bind");
            for _ in 0..drop_first {
                drop(listener.accept().expect("accept"));
            }
            let (stream, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&stream)
                .read_line(&mut line)
                .expect("request");
            let mut reply = serde_json::to_vec(&EnsureReply::Ready).expect("reply");
            reply.push(b'\n');
            (&stream).write_all(&reply).expect("answer");
        })
    }

    #[test]
    fn a_daemon_that_comes_up_later_is_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("gate.sock");
        // No socket yet (the daemon is restarting).
        let daemon = daemon_later(socket.clone(), Duration::from_millis(300), 0);
        ensure(&socket, &request(), Duration::from_secs(20)).expect("ready");
        daemon.join().expect("daemon");
    }

    #[test]
    fn a_stale_socket_and_a_dropped_connection_are_tried_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("gate.sock");
        // The socket file of a daemon that is gone: connecting is refused.
        drop(UnixListener::bind(&socket).expect("bind"));
        let daemon = daemon_later(socket.clone(), Duration::from_millis(300), 1);
        ensure(&socket, &request(), Duration::from_secs(20)).expect("ready");
        daemon.join().expect("daemon");
    }

    #[test]
    fn no_daemon_within_the_timeout_is_an_error_that_says_how_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("gate.sock");
        let err = ensure(&socket, &request(), Duration::from_millis(400)).unwrap_err();
        match err {
            GateError::DaemonUnreachable { reason, .. } => {
                assert!(reason.contains("(tried for 0 s)"), "{reason}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_refusal_is_not_tried_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("gate.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let daemon = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&stream)
                .read_line(&mut line)
                .expect("request");
            let mut reply = serde_json::to_vec(&EnsureReply::Failed {
                reason: "denied by policy p".into(),
            })
            .expect("reply");
            reply.push(b'\n');
            (&stream).write_all(&reply).expect("answer");
            // A second connection would block here: the gate must not make one.
            listener.set_nonblocking(true).expect("nonblocking");
            std::thread::sleep(Duration::from_millis(300));
            assert!(listener.accept().is_err(), "the gate asked again");
        });
        let err = ensure(&socket, &request(), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, GateError::Denied { .. }), "{err}");
        daemon.join().expect("daemon");
    }
}
