//! containerd's side of a runtime class: its handler stanza in containerd's config.
//!
//! - `schema`: which config layout (version 2 or 3) a file uses, and k3s/rke2 generated files.
//! - `stanza`: the stanza the rest of the product asks for.
//! - `edit`: what an edit is; `editor`: the format-preserving edit of the main file, read back
//!   by `verify`; `dropin`: our drop-in.
//! - `ownership`: the record of what we wrote, so that we change nothing else.
//! - [`atomic`] and [`fault`]: atomic file replacement with a backup, and its test fault points.
//! - [`validate`]: does the result parse, and does containerd accept it (`config dump`).
//! - [`diff`]: the unified diff `configure --dry-run` prints.
//! - `commit`: writes an edit's files in a crash-safe order and can roll them back.
//! - [`restart`]: the restart strategies and the rollback; [`systemd`]: the unit over D-Bus;
//!   `child`: the wait for a child process with a deadline, which both run.
//! - [`certs`]: containerd's registry config directories; [`cri`]: the CRI client.
//! - [`ConfigSync`] and [`sync()`]: all of the above in order, for `configure`, `uninstall` and
//!   the daemon ([`ContainerdSync`]).

pub mod atomic;
pub mod certs;
mod child;
mod commit;
pub mod cri;
pub mod diff;
mod dropin;
mod edit;
mod editor;
mod error;
pub mod fault;
mod imports;
mod layout;
mod ownership;
mod render;
pub mod restart;
mod schema;
mod splice;
mod stanza;
mod sync;
pub mod systemd;
mod template;
pub mod validate;
mod verify;

pub use atomic::{AtomicWriter, FileMode};
pub use dropin::DropinChange;
pub use edit::{Change, Edit, EditOptions, Mode, Placement};
pub use editor::apply;
pub use error::{ContainerdError, Result};
pub use ownership::{DropinRecord, OwnershipRecord};
pub use schema::{ContainerdVersion, Schema};
pub use stanza::{OptionValue, RuntimeStanza};
pub use sync::{
    Applied, ConfigSync, ContainerdSync, NodePaths, OWNERSHIP_FILE, Planned, RestartPermit,
    SyncOutcome, ownership_path, plan, state_dir, sync, unchecked, write_and_restart,
};

/// Where `binary` is on `PATH`, as containerd looks up its own helpers and shims.
pub fn find_on_path(binary: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// containerd's shim binary name for a runtime type: `io.containerd.kata-qemu.v2` →
/// `containerd-shim-kata-qemu-v2`.
pub fn shim_binary_name(runtime_type: &str) -> Option<String> {
    let rest = runtime_type.strip_prefix("io.containerd.")?;
    let (name, version) = rest.rsplit_once('.')?;
    Some(format!("containerd-shim-{name}-{version}"))
}

/// Where containerd would find the shim of `runtime_type` on PATH.
pub fn shim_on_path(runtime_type: &str) -> Option<std::path::PathBuf> {
    find_on_path(&shim_binary_name(runtime_type)?)
}

/// The shim a class's sandboxes really run: `runtime.runtimePath`, else the runtime type's
/// shim on PATH.
pub fn real_shim(runtime: &crate::config::RuntimeSettings) -> Option<std::path::PathBuf> {
    runtime
        .runtime_path
        .clone()
        .or_else(|| shim_on_path(&runtime.runtime_type))
}

/// The shim a class's sandboxes run: `runtime.fromArtifact.shim` inside the class's current
/// version (through its link `<artifactsDir>/<class>`, so a start takes the version current at
/// that moment and a running sandbox keeps the binary it was started with), else
/// [`real_shim`].
pub fn class_shim(
    artifacts_dir: &std::path::Path,
    class: &crate::config::RuntimeClass,
) -> Option<std::path::PathBuf> {
    match &class.runtime.from_artifact {
        Some(from) => Some(artifacts_dir.join(&class.name).join(&from.shim)),
        None => real_shim(&class.runtime),
    }
}

#[cfg(test)]
mod shim_name_tests {
    use super::*;

    #[test]
    fn shim_names_follow_containerd() {
        assert_eq!(
            shim_binary_name("io.containerd.kata-qemu-nvidia-gpu.v2").as_deref(),
            Some("containerd-shim-kata-qemu-nvidia-gpu-v2")
        );
        assert_eq!(
            shim_binary_name("io.containerd.runc.v2").as_deref(),
            Some("containerd-shim-runc-v2")
        );
        assert_eq!(shim_binary_name("kata"), None);
    }
}
