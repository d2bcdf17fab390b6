//! The on-disk cache of compiled policies. Loading a compiled component runs its machine code,
//! so a cache entry is used only when it is exactly what this host wrote: the directory is
//! owned by us and closed to others (0700, files 0600), and each entry's sha256 must match the
//! index entry (`<key>.sha256`) written next to it when we compiled it. Anything else is a miss
//! and the policy is compiled again (and the entry rewritten).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::error::CacheError;

/// A root-only directory of compiled components, keyed by the component's sha256 and the
/// engine's compatibility hash.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(Vec<u8>),
    Miss,
    /// An entry was there but did not match its index: it is ignored and will be overwritten.
    Tampered,
}

impl CompileCache {
    /// Opens (creating it 0700) the cache at `dir`. The directory must belong to the effective
    /// user; a mode open to others is tightened, as we own it.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let io = |what| {
            move |source| CacheError::Io {
                dir: dir.to_owned(),
                what,
                source,
            }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("cannot create the directory"))?;
        let meta = fs::symlink_metadata(dir).map_err(io("cannot inspect the directory"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner = unsafe { libc::geteuid() };
        let untrusted = |problem: String| CacheError::Untrusted {
            dir: dir.to_owned(),
            problem,
            owner,
        };
        if !meta.is_dir() {
            return Err(untrusted("not a directory".into()));
        }
        if meta.uid() != owner {
            return Err(untrusted(format!("owned by uid {}", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io("cannot make the directory private"))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.cwasm")),
            self.dir.join(format!("{key}.sha256")),
        )
    }

    /// The compiled bytes for `key`, if present and matching the index we wrote.
    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        let (data, index) = self.entry(key);
        let (Ok(bytes), Ok(recorded)) = (read_private(&data), read_private(&index)) else {
            return Lookup::Miss;
        };
        if hex_sha256(&bytes).as_bytes() == recorded.trim_ascii() {
            Lookup::Hit(bytes)
        } else {
            Lookup::Tampered
        }
    }

    /// Records compiled bytes: data first, then its index entry, each written to a temp file
    /// and renamed, so a reader sees either a complete pair or a miss.
    pub(crate) fn store(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let (data, index) = self.entry(key);
        write_private(&self.dir, &data, bytes)?;
        write_private(&self.dir, &index, hex_sha256(bytes).as_bytes())
    }
}

pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Reads a file only if it is a regular file of ours that nobody else may write.
fn read_private(path: &Path) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let owner = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != owner || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "cache file not private",
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    io::Read::read_to_end(&mut &file, &mut bytes)?;
    Ok(bytes)
}

fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_finds_entries_and_detects_tampering() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = CompileCache::open(&root.path().join("cache")).expect("open");
        let mode = fs::metadata(cache.dir()).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(matches!(cache.lookup("k"), Lookup::Miss));
        cache.store("k", b"compiled").expect("store");
        assert!(matches!(cache.lookup("k"), Lookup::Hit(b) if b == b"compiled"));
        let data = cache.dir().join("k.cwasm");
        assert_eq!(fs::metadata(&data).expect("meta").mode() & 0o777, 0o600);
        fs::write(&data, b"evil").expect("tamper");
        assert!(matches!(cache.lookup("k"), Lookup::Tampered));
    }

    #[test]
    fn tightens_a_directory_open_to_others() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("cache");
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        CompileCache::open(&dir).expect("open");
        assert_eq!(fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);
    }
}
