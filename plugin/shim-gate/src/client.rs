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

/// Asks the daemon at `socket` to make `request.class` ready, waiting at most `timeout`.
pub fn ensure(socket: &Path, request: &EnsureRequest, timeout: Duration) -> Result<()> {
    let class = request.class.clone();
    let unreachable = |reason: String| GateError::DaemonUnreachable {
        class: class.clone(),
        socket: socket.to_path_buf(),
        reason,
    };
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(socket).map_err(|e| unreachable(e.to_string()))?;
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
        Ok(0) => Err(unreachable(
            "the daemon closed the connection without an answer".into(),
        )),
        Ok(_) => match serde_json::from_str::<EnsureReply>(&reply) {
            Ok(EnsureReply::Ready) => Ok(()),
            Ok(EnsureReply::Failed { reason }) => Err(GateError::Denied { class, reason }),
            Err(e) => Err(unreachable(format!("unreadable answer: {e}"))),
        },
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(GateError::Timeout {
                class,
                seconds: timeout.as_secs(),
            })
        }
        Err(e) => Err(unreachable(e.to_string())),
    }
}
