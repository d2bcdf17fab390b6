//! The gate on the host: one binary at a stable path and one link per class.
//!
//! containerd records a sandbox's `runtime_path` in its bundle and, after a restart, deletes
//! bundles whose binary is missing; so the gate binary and its links are replaced atomically and
//! never removed while a sandbox of the class may exist.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{GateError, Result};

/// The gate program's file name as built and shipped: the daemon installs the copy it finds beside
/// its own executable under this name.
pub const GATE_PROGRAM: &str = "kata-nri-shim-gate";
/// File name of the installed gate binary inside the gate directory.
pub const GATE_BINARY: &str = "shim-gate";
/// Per-class links are named `kata-nri-gate.<class>`; the gate reads its class from the name.
pub const GATE_LINK_PREFIX: &str = "kata-nri-gate.";

/// The path a class's stanza names as `runtime_path`.
pub fn link_path(gate_dir: &Path, class: &str) -> PathBuf {
    gate_dir.join(format!("{GATE_LINK_PREFIX}{class}"))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> GateError {
    move |source| GateError::Io { what, source }
}

/// Installs `binary` as the gate (copy, then atomic rename; 0755 root-owned in a 0755 dir) and a
/// link for each class. Returns the links' paths.
pub fn install(gate_dir: &Path, binary: &Path, classes: &[&str]) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(gate_dir).map_err(io(format!("creating {}", gate_dir.display())))?;
    let target = gate_dir.join(GATE_BINARY);
    let tmp = gate_dir.join(format!(".{GATE_BINARY}.tmp-{}", std::process::id()));
    fs::copy(binary, &tmp).map_err(io(format!(
        "copying {} to {}",
        binary.display(),
        tmp.display()
    )))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .and_then(|()| fs::File::open(&tmp)?.sync_all())
        .map_err(io(format!("preparing {}", tmp.display())))?;
    fs::rename(&tmp, &target).map_err(io(format!("installing {}", target.display())))?;

    classes
        .iter()
        .map(|class| {
            let link = link_path(gate_dir, class);
            let tmp_link = gate_dir.join(format!(".{GATE_LINK_PREFIX}{class}.tmp"));
            let _ = fs::remove_file(&tmp_link);
            std::os::unix::fs::symlink(GATE_BINARY, &tmp_link)
                .and_then(|()| fs::rename(&tmp_link, &link))
                .map_err(io(format!("linking {}", link.display())))?;
            Ok(link)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_binary_and_relative_links_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("src-bin");
        fs::write(&bin, b"#!/bin/sh\n").unwrap();
        let gate_dir = dir.path().join("gate");
        for _ in 0..2 {
            let links = install(&gate_dir, &bin, &["kata-qemu", "kata-clh"]).unwrap();
            assert_eq!(links[0], gate_dir.join("kata-nri-gate.kata-qemu"));
        }
        let link = fs::read_link(gate_dir.join("kata-nri-gate.kata-clh")).unwrap();
        assert_eq!(link, PathBuf::from(GATE_BINARY));
        assert_eq!(
            fs::read(gate_dir.join(GATE_BINARY)).unwrap(),
            b"#!/bin/sh\n"
        );
        let leftovers: Vec<_> = fs::read_dir(&gate_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }
}
