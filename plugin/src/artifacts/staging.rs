//! Staging directories of pulls in progress: `<artifactsDir>/.staging/<class>-<random>`.
//!
//! A pull removes its staging directory whatever happens, as long as the process lives to do it.
//! One that is killed, or that the daemon cuts short by restarting itself in place, leaves it
//! behind. Each pull therefore holds an advisory lock on its directory for as long as it uses it;
//! the kernel drops the lock with the process (and at `execve`: the descriptor is close-on-exec).
//! A directory nobody holds a lock on is a leftover, which [`sweep`] removes. The daemon and the
//! CLI may pull at the same time, so a directory in use is never touched: a pull creates its
//! directory under a shared lock on `.state/.staging.lock` and locks the directory before letting
//! that go, and the sweep holds the same lock exclusively, so it never sees a directory between
//! its creation and its lock.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::state;

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
        let creating = creation_lock(artifacts_dir)?;
        creating.lock_shared()?;
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

/// `.state/.staging.lock`: shared while a pull creates and locks its directory, exclusive while
/// the sweep looks.
fn creation_lock(artifacts_dir: &Path) -> io::Result<fs::File> {
    let dir = state::dir(artifacts_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(".staging.lock"))
}

/// Removes the staging directories no pull holds; returns what was removed. A directory that
/// cannot be removed is logged and left for the next sweep. Nothing to sweep is not an error.
pub(crate) fn sweep(artifacts_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(parent(artifacts_dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let creating = creation_lock(artifacts_dir)?;
    creating.lock()?;
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let Ok(lock) = fs::File::open(&path) else {
            continue;
        };
        // Held while removing, so no pull can be using what goes.
        if lock.try_lock().is_ok() {
            match fs::remove_dir_all(&path) {
                Ok(()) => removed.push(path),
                Err(e) => tracing::warn!(
                    dir = %path.display(),
                    error = %e,
                    "cannot remove what an interrupted pull left behind"
                ),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a killed pull leaves: its directory, with nobody's lock on it.
    fn leftover(artifacts: &Path) -> PathBuf {
        let left = Staging::create(artifacts, "kata-qemu").expect("staging");
        let Staging { dir, _lock } = left;
        let kept = dir.keep();
        fs::write(kept.join("blob"), b"partial").expect("write");
        kept
    }

    #[test]
    fn a_leftover_is_swept_and_a_directory_in_use_is_not() {
        let artifacts = tempfile::tempdir().expect("tempdir");
        let in_use = Staging::create(artifacts.path(), "kata-qemu").expect("staging");
        fs::write(in_use.path().join("blob"), b"partial").expect("write");
        let left = leftover(artifacts.path());

        let removed = sweep(artifacts.path()).expect("sweep");
        assert_eq!(removed, vec![left.clone()]);
        assert!(!left.exists());
        assert!(
            in_use.path().join("blob").exists(),
            "a pull in progress lost its files"
        );
    }

    #[test]
    fn the_sweep_waits_for_a_pull_between_creating_and_locking_its_directory() {
        let artifacts = tempfile::tempdir().expect("tempdir");
        let left = leftover(artifacts.path());
        // A pull that has created its directory but not locked it yet holds this, shared.
        let creating = creation_lock(artifacts.path()).expect("lock file");
        creating.lock_shared().expect("shared");
        let sweeper = std::thread::spawn({
            let dir = artifacts.path().to_owned();
            move || sweep(&dir).expect("sweep")
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            left.exists(),
            "swept while a pull was between create and lock"
        );
        drop(creating);
        assert_eq!(sweeper.join().expect("sweeper"), vec![left.clone()]);
        assert!(!left.exists());
    }

    #[test]
    fn nothing_to_sweep_is_not_an_error() {
        let artifacts = tempfile::tempdir().expect("tempdir");
        assert!(sweep(artifacts.path()).expect("sweep").is_empty());
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
