//! The gate process: decide, maybe wait for the daemon, then become the real shim.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::args::{ShimCall, classify};
use crate::client;
use crate::error::{GateError, Result};
use crate::pod_identity;
use crate::shared::links::GATE_LINK_PREFIX;
use crate::shared::protocol::EnsureRequest;
use crate::shared::state::GateState;

/// Where a gate invoked as `<gate dir>/kata-nri-gate.<class>` serves: (gate dir, class).
pub fn from_invocation(argv0: &Path) -> Option<(PathBuf, String)> {
    let name = argv0.file_name()?.to_str()?;
    let class = name.strip_prefix(GATE_LINK_PREFIX)?;
    if class.is_empty() {
        return None;
    }
    let dir = argv0.parent().filter(|d| !d.as_os_str().is_empty())?;
    Some((dir.to_path_buf(), class.to_owned()))
}

/// Runs the gate for `class` with the shim arguments `args` (argv without `argv[0]`). Returns only
/// on failure: on success the process has become the real shim.
pub fn run(gate_dir: &Path, class: &str, args: Vec<OsString>) -> GateError {
    match prepare(gate_dir, class, &args) {
        Ok(real_shim) => {
            // Same argv, environment, working directory and descriptors: exec replaces us.
            let source = Command::new(&real_shim).args(&args).exec();
            GateError::Exec {
                path: real_shim,
                source,
            }
        }
        Err(e) => e,
    }
}

/// Makes sure the class can serve this call; returns the real shim to exec.
fn prepare(gate_dir: &Path, class: &str, args: &[OsString]) -> Result<PathBuf> {
    let state = GateState::read(gate_dir, class)?;
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let sandbox_id = match classify(&args) {
        ShimCall::Other => return Ok(state.real_shim),
        // Ready, and its files still there as installed: no daemon involved.
        ShimCall::Start { .. } if state.ready && state.files_intact() => {
            return Ok(state.real_shim);
        }
        ShimCall::Start { id } => id,
    };
    let (pod_namespace, pod_name) = std::env::current_dir()
        .map(|bundle| pod_identity::read(&bundle))
        .unwrap_or_default();
    let request = EnsureRequest {
        class: class.to_owned(),
        sandbox_id,
        pod_namespace,
        pod_name,
    };
    client::ensure(&state.daemon_socket, &request, state.timeout())?;
    // The daemon may have installed a different real shim while we waited.
    Ok(GateState::read(gate_dir, class)?.real_shim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_comes_from_the_link_name() {
        assert_eq!(
            from_invocation(Path::new(
                "/opt/kata-nri-manager/bin/kata-nri-gate.kata-qemu"
            )),
            Some((
                PathBuf::from("/opt/kata-nri-manager/bin"),
                "kata-qemu".to_owned()
            ))
        );
        assert_eq!(
            from_invocation(Path::new("/usr/bin/kata-nri-manager")),
            None
        );
        assert_eq!(from_invocation(Path::new("kata-nri-gate.x")), None);
        assert_eq!(from_invocation(Path::new("/x/kata-nri-gate.")), None);
    }
}
