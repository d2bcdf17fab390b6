//! Staging directories of pulls in progress: `<artifactsDir>/.staging/<class>-<random>`.
//!
//! A pull removes its staging directory whatever happens, as long as the process lives to do it.
//! One that is killed, or that the daemon cuts short by restarting itself in place, leaves it
//! behind. Each pull therefore holds an advisory lock on its directory for as long as it uses it;
//! the kernel drops the lock with the process (and at `execve`: the descriptor is close-on-exec).
//! A directory nobody holds a lock on is a leftover, which [`sweep`] removes. The daemon and the
//! CLI may pull at the same time, so a directory in use is never touched: a pull creates its
//! directory under a shared lock on `.staging` itself and locks the directory before letting that
//! go, and the sweep holds the same lock exclusively, so it never sees a directory between its
//! creation and its lock. `.staging` is removed when empty (a refused pull leaves nothing), under
//! the exclusive lock too, so a pull never creates its directory in one that is going away.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

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
        let _creating = lock_parent(artifacts_dir, Lock::Shared)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{class}-"))
            .tempdir_in(&parent)?;
        let lock = fs::File::open(dir.path())?;
        lock.lock()?;
        Ok(Self { dir, _lock: lock })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// A pull creating its directory (made if missing).
    Shared,
    /// The sweep, or removing `.staging` when empty (`None` if there is none).
    Exclusive,
}

/// `.staging`, open and locked. The lock is on the directory itself: one removed and made again
/// between our open and our lock is not the one at the path any more, so it is opened again.
fn lock_parent(artifacts_dir: &Path, how: Lock) -> io::Result<fs::File> {
    let parent = parent(artifacts_dir);
    loop {
        if how == Lock::Shared {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(artifacts_dir)?;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&parent)?;
        }
        let dir = match fs::File::open(&parent) {
            Ok(dir) => dir,
            // Removed by another pull between our create and our open.
            Err(e) if e.kind() == io::ErrorKind::NotFound && how == Lock::Shared => continue,
            Err(e) => return Err(e),
        };
        match how {
            Lock::Shared => dir.lock_shared()?,
            Lock::Exclusive => dir.lock()?,
        }
        let held = dir.metadata()?;
        match fs::metadata(&parent) {
            Ok(now) if same_dir(&held, &now) => return Ok(dir),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound && how == Lock::Shared => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes `.staging` if it is empty and no pull is creating a directory in it; a pull's
/// leftovers stay for the sweep. Best effort: nothing depends on it.
pub(crate) fn remove_parent_if_empty(artifacts_dir: &Path) {
    let parent = parent(artifacts_dir);
    let Ok(dir) = fs::File::open(&parent) else {
        return;
    };
    // Locked and still the one at the path (as `lock_parent` checks): one removed and made
    // again meanwhile may be a pull's, created under its shared lock and not yet used.
    if dir.try_lock().is_ok() && is_at(&dir, &parent) {
        // Fails, harmlessly, when it is not empty.
        let _ = fs::remove_dir(&parent);
    }
}

/// Whether `dir` is the directory now at `path`.
fn is_at(dir: &fs::File, path: &Path) -> bool {
    match (dir.metadata(), fs::metadata(path)) {
        (Ok(held), Ok(now)) => same_dir(&held, &now),
        _ => false,
    }
}

fn same_dir(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.ino() == b.ino() && a.dev() == b.dev()
}

/// Removes the staging directories no pull holds; returns what was removed. A directory that
/// cannot be removed is logged and left for the next sweep. Nothing to sweep is not an error.
pub(crate) fn sweep(artifacts_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let _sweeping = match lock_parent(artifacts_dir, Lock::Exclusive) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let entries = fs::read_dir(parent(artifacts_dir))?;
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
    // Empty now, most likely: a fresh start leaves no `.staging` behind.
    let _ = fs::remove_dir(parent(artifacts_dir));
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
        let creating = lock_parent(artifacts.path(), Lock::Shared).expect("shared");
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

    #[test]
    fn an_empty_staging_parent_is_removed_unless_a_pull_is_creating_in_it() {
        let artifacts = tempfile::tempdir().expect("tempdir");
        let creating = lock_parent(artifacts.path(), Lock::Shared).expect("shared");
        remove_parent_if_empty(artifacts.path());
        assert!(parent(artifacts.path()).exists(), "removed under a pull");
        drop(creating);
        remove_parent_if_empty(artifacts.path());
        assert!(!parent(artifacts.path()).exists());
        // The sweep leaves none behind either.
        drop(leftover(artifacts.path()));
        sweep(artifacts.path()).expect("sweep");
        assert_eq!(
            fs::read_dir(artifacts.path()).expect("read").count(),
            0,
            "a fresh artifactsDir stays empty"
        );
    }
}
