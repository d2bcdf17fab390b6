//! Verified blobs by digest: `<artifactsDir>/.store/blobs/sha256/<hex>`, root-only (0700
//! directories), each blob read-only (0444). Versions are built from them: a titled file is a
//! hard link to its blob, a tar layer is unpacked from its blob. Nothing ever opens a blob or a
//! file linked to one for writing (a rewritten kata configuration replaces its link with a new
//! file), so versions sharing an inode cannot change each other.
//!
//! A blob is written to `.tmp-…` in the blob directory, fsynced, then renamed to its digest:
//! a crash leaves only temp files, never a digest name over partial bytes.
//!
//! Installs hold [`Lock::Shared`] on the `blobs` directory from before they look for a blob until
//! their record names it; collection holds it exclusively (and skips a round rather than
//! wait), so it never sees a blob that an install has fetched but not yet recorded, nor a temp
//! file still being written.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Digest;

/// Prefix of a blob being written: never a digest's name.
const TEMP_PREFIX: &str = ".tmp-";
/// Every blob's mode: a file's mode lives in its inode, shared by each version linking it, so
/// one mode for all (kata reads kernels, images and configurations; it runs none of them).
pub(crate) const BLOB_MODE: u32 = 0o444;

/// `<artifactsDir>/.store/blobs`.
pub(crate) fn root(artifacts_dir: &Path) -> PathBuf {
    artifacts_dir.join(".store").join("blobs")
}

/// The blob store of one `artifactsDir`.
#[derive(Debug, Clone)]
pub(crate) struct Blobs {
    root: PathBuf,
}

/// How [`Blobs::lock`] holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// An install: blobs may be added, none removed.
    Shared,
    /// Collection: nobody is adding a blob.
    Exclusive,
}

impl Blobs {
    pub(crate) fn new(artifacts_dir: &Path) -> Self {
        Self {
            root: root(artifacts_dir),
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    /// Where the blob of `digest` lives (whether or not it is there).
    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        self.dir().join(digest.hex())
    }

    /// Makes the directories (root-only: versions reach their files by their own paths).
    fn create(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.dir())
    }

    /// `.store/blobs` itself, locked as `how` until the file is dropped. `None` when `wait` is
    /// false and someone holds it in a conflicting way, or (exclusively) when there is no blob
    /// store. The lock is on the directory, which collection removes when it empties it: one
    /// removed between our open and our lock is not the one at the path any more, so a shared
    /// lock opens it again (as `staging.rs` does for `.staging`).
    pub(crate) fn lock(&self, how: Lock, wait: bool) -> io::Result<Option<fs::File>> {
        loop {
            if how == Lock::Shared {
                self.create()?;
            }
            let dir = match fs::File::open(&self.root) {
                Ok(dir) => dir,
                Err(e) if e.kind() == io::ErrorKind::NotFound => match how {
                    Lock::Shared => continue,
                    Lock::Exclusive => return Ok(None),
                },
                Err(e) => return Err(e),
            };
            let taken = match (how, wait) {
                (Lock::Shared, true) => dir.lock_shared().map(|()| true),
                (Lock::Exclusive, true) => dir.lock().map(|()| true),
                (Lock::Shared, false) => try_lock(dir.try_lock_shared()),
                (Lock::Exclusive, false) => try_lock(dir.try_lock()),
            }?;
            if !taken {
                return Ok(None);
            }
            if is_at(&dir, &self.root) {
                return Ok(Some(dir));
            }
            if how == Lock::Exclusive {
                // Emptied and made again meanwhile: someone is installing.
                return Ok(None);
            }
        }
    }

    /// The blob of `digest`, when it is there with `size` bytes. A blob of another size is not
    /// ours to trust (its name was given by a verified write, so this is damage): it is
    /// replaced by the next fetch.
    pub(crate) fn find(&self, digest: &Digest, size: u64) -> Option<PathBuf> {
        let path = self.path(digest);
        fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file() && m.len() == size)
            .then_some(path)
    }

    /// A fresh temp name in the blob directory for a download of `digest` (same directory, so
    /// [`commit`](Self::commit) is a rename).
    pub(crate) fn temp(&self, digest: &Digest) -> io::Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.create()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Ok(self.dir().join(format!(
            "{TEMP_PREFIX}{}-{}-{n}",
            digest.hex(),
            std::process::id()
        )))
    }

    /// Makes the verified `temp` the blob of `digest`: read-only, on disk, then renamed (a blob
    /// named by its digest is always whole, even after a power cut). Replaces a damaged blob
    /// of that name; a version linking the old inode keeps it.
    pub(crate) fn commit(&self, temp: &Path, digest: &Digest) -> io::Result<PathBuf> {
        fs::set_permissions(temp, fs::Permissions::from_mode(BLOB_MODE))?;
        fs::File::open(temp)?.sync_all()?;
        let path = self.path(digest);
        fs::rename(temp, &path)?;
        Ok(path)
    }

    /// Puts the blob of `digest` at `dest` (absent): a hard link, or a copy where a link cannot
    /// be made (another filesystem, the link limit) — a copy is as read-only as the blob.
    pub(crate) fn link_into(&self, digest: &Digest, dest: &Path) -> io::Result<()> {
        let blob = self.path(digest);
        match fs::hard_link(&blob, dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
            Err(e) => {
                tracing::debug!(blob = %blob.display(), dest = %dest.display(), error = %e, "cannot link the blob; copying it");
                // copy_file_range: a reflink where the filesystem has them.
                fs::copy(&blob, dest)?;
                fs::set_permissions(dest, fs::Permissions::from_mode(BLOB_MODE))
            }
        }
    }

    /// Under the exclusive lock (`None`: an install holds it; try again later): removes every
    /// temp file (no install is writing one) and every blob whose digest `referenced` (called
    /// under the lock) does not return. Versions linking a removed blob keep their files: only
    /// the store's name goes.
    pub(crate) fn collect(
        &self,
        referenced: impl FnOnce() -> HashSet<String>,
    ) -> io::Result<Option<Collected>> {
        if !self.root.exists() {
            return Ok(Some(Collected::default()));
        }
        let Some(_held) = self.lock(Lock::Exclusive, false)? else {
            return Ok(if self.root.exists() {
                None
            } else {
                Some(Collected::default())
            });
        };
        let referenced = referenced();
        let mut collected = Collected::default();
        for entry in fs::read_dir(self.dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let kept = if name.starts_with(TEMP_PREFIX) {
                false
            } else {
                referenced.contains(&format!("sha256:{name}"))
            };
            if kept {
                continue;
            }
            let bytes = entry.metadata().map(|m| m.size()).unwrap_or_default();
            match fs::remove_file(&path) {
                Ok(()) if name.starts_with(TEMP_PREFIX) => collected.temps += 1,
                Ok(()) => {
                    collected.blobs.push(format!("sha256:{name}"));
                    collected.bytes += bytes;
                }
                Err(e) => {
                    tracing::warn!(blob = %path.display(), error = %e, "cannot remove an unreferenced blob")
                }
            }
        }
        // An empty store leaves no directories behind (a refused first pull leaves
        // artifactsDir as it found it); `.store` goes too when no version is in it. Each fails,
        // harmlessly, when not empty. An install waiting for the lock finds its directory gone
        // and makes a new one.
        if fs::remove_dir(self.dir()).is_ok()
            && fs::remove_dir(&self.root).is_ok()
            && let Some(store) = self.root.parent()
        {
            let _ = fs::remove_dir(store);
        }
        Ok(Some(collected))
    }
}

/// Whether `dir` is the directory now at `path`.
fn is_at(dir: &fs::File, path: &Path) -> bool {
    match (dir.metadata(), fs::metadata(path)) {
        (Ok(held), Ok(now)) => held.ino() == now.ino() && held.dev() == now.dev(),
        _ => false,
    }
}

fn try_lock(result: Result<(), fs::TryLockError>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// What a collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Collected {
    /// Blobs no version referenced, by digest.
    pub(crate) blobs: Vec<String>,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Temp files an interrupted download left.
    pub(crate) temps: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> Digest {
        use sha2::{Digest as _, Sha256};
        format!(
            "sha256:{}",
            crate::artifacts::digest::hex(&Sha256::digest(bytes))
        )
        .parse()
        .expect("digest")
    }

    fn stored(blobs: &Blobs, bytes: &[u8]) -> Digest {
        let digest = digest_of(bytes);
        let temp = blobs.temp(&digest).expect("temp");
        fs::write(&temp, bytes).expect("write");
        blobs.commit(&temp, &digest).expect("commit");
        digest
    }

    #[test]
    fn a_committed_blob_is_read_only_found_by_size_and_linked_not_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(dir.path());
        let digest = stored(&blobs, b"kernel");
        let path = blobs.find(&digest, 6).expect("found");
        assert_eq!(fs::metadata(&path).expect("blob").mode() & 0o7777, 0o444);
        assert_eq!(
            fs::metadata(root(dir.path())).expect("root").mode() & 0o777,
            0o700
        );
        assert_eq!(blobs.find(&digest, 7), None, "another size is not the blob");

        let dest = dir.path().join("vmlinux");
        blobs.link_into(&digest, &dest).expect("link");
        let (blob, linked) = (
            fs::metadata(&path).expect("blob"),
            fs::metadata(&dest).expect("linked"),
        );
        assert_eq!((blob.ino(), blob.nlink()), (linked.ino(), 2));
        // Root-owned and read-only: a write must replace it, never change it in place (as root
        // could), and our code never opens one for writing.
        assert_eq!(linked.mode() & 0o222, 0);
    }

    #[test]
    fn collection_removes_temps_and_unreferenced_blobs_and_spares_linked_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(dir.path());
        let kept = stored(&blobs, b"kept");
        let dropped = stored(&blobs, b"dropped");
        let dest = dir.path().join("in-a-version");
        blobs.link_into(&dropped, &dest).expect("link");
        let temp = blobs.temp(&kept).expect("temp");
        fs::write(&temp, b"partial").expect("partial");

        let referenced = HashSet::from([kept.to_string()]);
        let collected = blobs
            .collect(|| referenced)
            .expect("collect")
            .expect("free");
        assert_eq!(collected.blobs, vec![dropped.to_string()]);
        assert_eq!((collected.bytes, collected.temps), (7, 1));
        assert!(blobs.find(&kept, 4).is_some());
        assert!(blobs.find(&dropped, 7).is_none());
        assert!(!temp.exists());
        assert_eq!(fs::read(&dest).expect("version file"), b"dropped");
    }

    #[test]
    fn collection_skips_while_an_install_holds_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(dir.path());
        let fetched = stored(&blobs, b"fetched, not yet recorded");
        let install = blobs.lock(Lock::Shared, true).expect("lock").expect("held");
        assert_eq!(blobs.collect(HashSet::new).expect("collect"), None);
        assert!(blobs.path(&fetched).exists());
        drop(install);
        let collected = blobs.collect(HashSet::new).expect("collect");
        assert_eq!(collected.map(|c| c.blobs), Some(vec![fetched.to_string()]));
        // Empty now: nothing of the store is left, and an install makes it again.
        assert!(!dir.path().join(".store").exists());
        assert!(blobs.lock(Lock::Shared, true).expect("lock").is_some());
        assert!(blobs.dir().is_dir());
    }

    #[test]
    fn nothing_stored_is_nothing_to_collect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(dir.path());
        assert_eq!(
            blobs.collect(HashSet::new).expect("collect"),
            Some(Collected::default())
        );
        assert!(!root(dir.path()).exists());
    }
}
