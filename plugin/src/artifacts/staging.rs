//! Staging directories of pulls in progress: `<artifactsDir>/.staging/<class>-<random>`.
//!
//! A pull removes its staging directory whatever happens, as long as the process lives to do it.
//! One that is killed, or that the daemon cuts short by restarting itself in place, leaves it
//! behind. Each pull therefore holds an advisory lock on its directory for as long as it uses it;
//! the kernel drops the lock with the process (and at `execve`: the descriptor is close-on-exec).
//! A directory nobody holds a lock on is a leftover, which [`sweep`] removes. The daemon and the
//! CLI may pull at the same time, so a directory in use is never touched.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The parent of every staging directory.
pub(crate) fn parent(artifacts_dir: &Path) -> PathBuf {
    artifacts_dir.join(".staging")
}

/// A pull's staging directory, locked while it lives and removed when dropped.
pub(crate) struct Staging {
    // Declared first, so it is removed before the lock is let go.
    dir: tempfile::TempDir,
    _lock: fs::File,
}

impl Staging {
    /// A new staging directory for `class`, on the store's filesystem (the install is a rename).
    pub(crate) fn create(artifacts_dir: &Path, class: &str) -> io::Result<Self> {
        let parent = parent(artifacts_dir);
        let make = || -> io::Result<tempfile::TempDir> {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(artifacts_dir)?;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&parent)?;
            tempfile::Builder::new()
                .prefix(&format!("{class}-"))
                .tempdir_in(&parent)
        };
        // Another pull may remove the (empty) parent between our create and tempdir: once more.
        let dir = make().or_else(|_| make())?;
        let lock = fs::File::open(dir.path())?;
        lock.lock()?;
        Ok(Self { dir, _lock: lock })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the staging directories no pull holds, older than `min_age` (a pull locks its
/// directory just after creating it); returns what was removed. Nothing to sweep is not an error.
pub(crate) fn sweep(artifacts_dir: &Path, min_age: Duration) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(parent(artifacts_dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Ok(metadata) = fs::symlink_metadata(&path) else {
            continue;
        };
        let age = metadata
            .modified()
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .unwrap_or_default();
        if !metadata.is_dir() || age < min_age {
            continue;
        }
        let Ok(lock) = fs::File::open(&path) else {
            continue;
        };
        // Held while removing, so no pull can be using what goes.
        if lock.try_lock().is_ok() {
            fs::remove_dir_all(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_is_swept_and_a_directory_in_use_is_not() {
        let artifacts = tempfile::tempdir().expect("tempdir");
        let in_use = Staging::create(artifacts.path(), "kata-qemu").expect("staging");
        fs::write(in_use.path().join("blob"), b"partial").expect("write");
        // What a killed pull leaves: a directory with nobody's lock on it.
        let left = Staging::create(artifacts.path(), "kata-qemu").expect("staging");
        let left_path = left.path().to_owned();
        let kept = left.dir.keep();
        drop(left._lock);
        fs::write(kept.join("blob"), b"partial").expect("write");

        let removed = sweep(artifacts.path(), Duration::ZERO).expect("sweep");
        assert_eq!(removed, vec![left_path.clone()]);
        assert!(!left_path.exists());
        assert!(
            in_use.path().join("blob").exists(),
            "a pull in progress lost its files"
        );
        // Too young to tell: a pull may not have locked it yet.
        let young = Staging::create(artifacts.path(), "kata-qemu").expect("staging");
        let young_path = young.dir.keep();
        assert!(
            sweep(artifacts.path(), Duration::from_secs(60))
                .expect("sweep")
                .is_empty()
        );
        assert!(young_path.exists());
        drop(in_use);
    }

    #[test]
    fn nothing_to_sweep_is_not_an_error() {
        let artifacts = tempfile::tempdir().expect("tempdir");
        assert!(
            sweep(artifacts.path(), Duration::ZERO)
                .expect("sweep")
                .is_empty()
        );
    }

    #[test]
    fn a_dropped_staging_directory_is_gone() {
        let artifacts = tempfile::tempdir().expect("tempdir");
        let staging = Staging::create(artifacts.path(), "kata-qemu").expect("staging");
        let path = staging.path().to_owned();
        drop(staging);
        assert!(!path.exists());
    }
}
