//! Waiting for a child process with a deadline: the restart command and containerd's
//! `config dump` both run one that must not hang the daemon.

use std::io;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// Waits for `child` to exit, polling every `poll`, for at most `timeout`. `Ok(None)`: it did
/// not exit in time, and was killed and reaped.
pub(crate) fn wait_with_deadline(
    child: &mut Child,
    timeout: Duration,
    poll: Duration,
) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait()? {
            Some(status) => return Ok(Some(status)),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            None => thread::sleep(poll),
        }
    }
}
