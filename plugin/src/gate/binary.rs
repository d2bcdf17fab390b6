//! Where the daemon finds the gate binary it installs into `gate.dir`: `run --gate-binary PATH`,
//! else `kata-nri-shim-gate` beside the daemon's own executable. The image, the systemd install
//! and the pre-registered NRI install put it there; a launched plugin has no flags, so beside is
//! the one place that works for every way the daemon runs.

use std::path::{Path, PathBuf};

use super::GATE_PROGRAM;

/// Why there is no gate binary to install.
#[derive(Debug, thiserror::Error)]
pub enum GateBinaryError {
    #[error("cannot locate our own executable to find {GATE_PROGRAM} beside it: {0}")]
    OwnExe(#[source] std::io::Error),
    #[error("no shim gate binary at {}: {source}; {hint}", path.display())]
    Missing {
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the shim gate binary {} is not a regular file; {hint}", path.display())]
    NotAFile { path: PathBuf, hint: &'static str },
}

/// The gate binary to install: `explicit` (`run --gate-binary`), else [`GATE_PROGRAM`] beside our
/// own executable. The error names the path looked at.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, GateBinaryError> {
    let (path, hint) = match explicit {
        Some(path) => (path.to_path_buf(), "check `run --gate-binary`"),
        None => {
            let exe = std::env::current_exe().map_err(GateBinaryError::OwnExe)?;
            (
                exe.with_file_name(GATE_PROGRAM),
                "install kata-nri-shim-gate beside the daemon's binary (the image and deploy/*/install.sh do), or pass `run --gate-binary PATH`",
            )
        }
    };
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(GateBinaryError::NotAFile { path, hint }),
        Err(source) => Err(GateBinaryError::Missing { path, hint, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_gate_names_where_it_was_looked_for() {
        let beside = std::env::current_exe()
            .unwrap()
            .with_file_name(GATE_PROGRAM);
        if !beside.exists() {
            let err = locate(None).unwrap_err().to_string();
            assert!(err.contains(&beside.display().to_string()), "{err}");
            assert!(err.contains("--gate-binary"), "{err}");
        }
        let err = locate(Some(Path::new("/nonexistent/gate")))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("no shim gate binary at /nonexistent/gate: "),
            "{err}"
        );
    }

    #[test]
    fn an_explicit_gate_is_taken_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("my-gate");
        std::fs::write(&gate, b"").unwrap();
        assert_eq!(locate(Some(&gate)).unwrap(), gate);
        assert!(matches!(
            locate(Some(dir.path())),
            Err(GateBinaryError::NotAFile { .. })
        ));
    }
}
