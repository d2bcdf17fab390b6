//! The per-class state file the daemon writes for the gate: where the real shim is, whether the
//! class is ready, and how to reach the daemon. It lets the gate `exec` at once, without asking
//! anyone, whenever the class is ready or the call is not a sandbox start.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{GateError, Result};

/// Subdirectory of the gate directory holding the state files.
pub const STATE_DIR: &str = "state";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GateState {
    pub class: String,
    /// The shim the gate hands over to.
    pub real_shim: PathBuf,
    /// True when the class's artifacts are installed and verified.
    pub ready: bool,
    /// Digest of the installed artifacts, when ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The daemon's gate socket.
    pub daemon_socket: PathBuf,
    /// How long a sandbox start may wait for the class, in milliseconds.
    pub timeout_ms: u64,
    /// The installed version's files and their sizes, when ready: a start checks them (stat
    /// only) before it trusts `ready`, so a file removed or cut short since (a disk fault, a
    /// person) is repaired before the sandbox that would read it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<PathBuf, u64>,
}

impl GateState {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Every recorded file is a regular file of its recorded size.
    pub fn files_intact(&self) -> bool {
        self.files
            .iter()
            .all(|(path, size)| fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == *size))
    }

    /// Path of `class`'s state file under `gate_dir`.
    pub fn path(gate_dir: &Path, class: &str) -> PathBuf {
        gate_dir.join(STATE_DIR).join(format!("{class}.json"))
    }

    /// Reads and checks a state file. It decides which binary runs as root, so it must be owned
    /// by us (root) and writable by nobody else.
    pub fn read(gate_dir: &Path, class: &str) -> Result<Self> {
        let path = Self::path(gate_dir, class);
        let file = fs::File::open(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => GateError::NoState {
                class: class.to_owned(),
                path: path.clone(),
            },
            _ => GateError::Io {
                what: format!("reading {}", path.display()),
                source,
            },
        })?;
        let meta = file.metadata().map_err(|source| GateError::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(GateError::UntrustedState {
                path,
                uid: meta.uid(),
                mode: meta.mode() & 0o7777,
            });
        }
        let state: Self = serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
            GateError::BadState {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        if state.class != class {
            return Err(GateError::BadState {
                path,
                reason: format!("it is for class {:?}", state.class),
            });
        }
        Ok(state)
    }

    /// Writes the state file atomically (temp file, fsync, rename), root-only.
    pub fn write(&self, gate_dir: &Path) -> Result<()> {
        let dir = gate_dir.join(STATE_DIR);
        let io = |what: String| move |source| GateError::Io { what, source };
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("securing {}", dir.display())))?;
        let path = Self::path(gate_dir, &self.class);
        let tmp = dir.join(format!(".{}.json.tmp-{}", self.class, std::process::id()));
        let body = serde_json::to_vec_pretty(self).map_err(|e| GateError::BadState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(format!("writing {}", tmp.display())))?;
        file.write_all(&body)
            .and_then(|()| file.sync_all())
            .map_err(io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io(format!("installing {}", path.display())))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("syncing {}", dir.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(class: &str) -> GateState {
        GateState {
            class: class.into(),
            real_shim: "/opt/kata/bin/containerd-shim-kata-v2".into(),
            ready: false,
            digest: None,
            daemon_socket: "/run/kata-nri-manager/gate.sock".into(),
            timeout_ms: 100_000,
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn files_intact_only_while_each_is_there_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        fs::write(&kernel, b"kernel").unwrap();
        let mut ready = state("kata-qemu");
        ready.files.insert(kernel.clone(), 6);
        assert!(ready.files_intact());
        fs::write(&kernel, b"kern").unwrap();
        assert!(!ready.files_intact(), "cut short");
        fs::remove_file(&kernel).unwrap();
        assert!(!ready.files_intact(), "removed");
        fs::create_dir(&kernel).unwrap();
        assert!(!ready.files_intact(), "not a file");
        assert!(
            state("k").files_intact(),
            "nothing recorded: nothing to check"
        );
    }

    #[test]
    fn round_trips_and_is_root_only() {
        let dir = tempfile::tempdir().unwrap();
        state("kata-qemu").write(dir.path()).unwrap();
        assert_eq!(
            GateState::read(dir.path(), "kata-qemu").unwrap(),
            state("kata-qemu")
        );
        let mode = fs::metadata(GateState::path(dir.path(), "kata-qemu"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_state_names_the_class() {
        let dir = tempfile::tempdir().unwrap();
        let err = GateState::read(dir.path(), "kata-clh").unwrap_err();
        assert!(err.to_string().contains("kata-clh"), "{err}");
    }

    #[test]
    fn a_writable_state_file_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        state("kata-qemu").write(dir.path()).unwrap();
        let path = GateState::path(dir.path(), "kata-qemu");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let err = GateState::read(dir.path(), "kata-qemu").unwrap_err();
        assert!(matches!(err, GateError::UntrustedState { .. }), "{err}");
    }

    #[test]
    fn a_state_for_another_class_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        state("kata-qemu").write(dir.path()).unwrap();
        fs::rename(
            GateState::path(dir.path(), "kata-qemu"),
            GateState::path(dir.path(), "kata-clh"),
        )
        .unwrap();
        assert!(matches!(
            GateState::read(dir.path(), "kata-clh"),
            Err(GateError::BadState { .. })
        ));
    }
}
