//! Unpacking a verified tar layer into a version's directory, refusing every entry that would
//! land outside it. Runs on a blocking thread: tar, gzip and zstd readers are synchronous.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::manifest::Compression;
use super::paths::{self, PathError};
use super::state::FileRecord;

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("refused {entry:?}: {why}")]
    Unsafe { entry: String, why: String },
    #[error("{0}")]
    Bad(String),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What an unpacked layer left behind.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Regular files by relative path.
    pub files: BTreeMap<String, FileRecord>,
    /// Bytes written.
    pub bytes: u64,
}

/// Unpacks `blob` (a tar, maybe compressed) under `root/into`, writing at most `max_bytes`.
pub fn unpack(
    blob: &Path,
    compression: Compression,
    root: &Path,
    into: &Path,
    max_bytes: u64,
) -> Result<Unpacked, UnpackError> {
    let file = File::open(blob).map_err(|source| UnpackError::Io {
        action: "opening",
        path: blob.to_owned(),
        source,
    })?;
    let reader = BufReader::with_capacity(256 << 10, file);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| UnpackError::Bad(format!("not zstd: {e}")))?,
        ),
    };
    Unpacker {
        root,
        into,
        max_bytes,
        out: Unpacked::default(),
        dir_modes: Vec::new(),
    }
    .run(reader)
}

struct Unpacker<'a> {
    root: &'a Path,
    into: &'a Path,
    max_bytes: u64,
    out: Unpacked,
    /// Directory modes applied last, deepest first, so a read-only directory can still be filled.
    dir_modes: Vec<(PathBuf, u32)>,
}

fn unsafe_entry(entry: &Path, why: impl ToString) -> UnpackError {
    UnpackError::Unsafe {
        entry: entry.display().to_string(),
        why: why.to_string(),
    }
}

fn io_at<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// No setuid/setgid file from an artifact (`docs/architecture.md`, "Trust boundary"). Refused, not
/// dropped: a kata bundle never needs one, so its presence means the artifact was not built for us.
fn refuse_special_bits(name: &Path, mode: u32) -> Result<(), UnpackError> {
    let what = match (mode & 0o4000 != 0, mode & 0o2000 != 0) {
        (true, true) => "setuid and setgid",
        (true, false) => "setuid",
        (false, true) => "setgid",
        (false, false) => return Ok(()),
    };
    Err(unsafe_entry(
        name,
        format!(
            "{what} file (mode {:04o}): artifacts may not carry setuid/setgid files",
            mode & 0o7777
        ),
    ))
}

impl Unpacker<'_> {
    fn run(mut self, reader: Box<dyn Read>) -> Result<Unpacked, UnpackError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| UnpackError::Bad(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| UnpackError::Bad(format!("corrupt tar archive: {e}")))?;
            self.entry(entry)?;
        }
        self.dir_modes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, mode) in &self.dir_modes {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                .map_err(io_at("setting the mode of", path))?;
        }
        Ok(self.out)
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let name = entry
            .path()
            .map_err(|e| UnpackError::Bad(format!("entry with an unreadable name: {e}")))?
            .into_owned();
        let rel = match paths::relative(&name) {
            Ok(rel) => self.into.join(rel),
            // `./` itself: the top directory, which exists.
            Err(PathError::Empty) => return Ok(()),
            Err(why) => return Err(unsafe_entry(&name, why)),
        };
        let kind = entry.header().entry_type();
        let mode = entry
            .header()
            .mode()
            .map_err(|e| UnpackError::Bad(format!("{}: bad mode: {e}", name.display())))?;
        if let Some(whiteout) = rel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(".wh."))
        {
            return self.whiteout(&name, &rel, whiteout);
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                refuse_special_bits(&name, mode)?;
                self.regular(&name, &rel, mode & 0o777, &mut entry)
            }
            tar::EntryType::Directory => self.directory(&name, &rel, mode),
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Bad(format!("{}: bad link: {e}", name.display())))?
                    .ok_or_else(|| unsafe_entry(&name, "symlink without a target"))?
                    .into_owned();
                self.symlink(&name, &rel, &target)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Bad(format!("{}: bad link: {e}", name.display())))?
                    .ok_or_else(|| unsafe_entry(&name, "hard link without a target"))?
                    .into_owned();
                self.hard_link(&name, &rel, &target)
            }
            // A kata bundle has no device nodes or FIFOs; one in a layer is a crafted artifact, so
            // the whole install is refused rather than patched (`docs/security.md`, artifacts).
            tar::EntryType::Char => Err(unsafe_entry(
                &name,
                "character device node: artifacts may not carry device nodes",
            )),
            tar::EntryType::Block => Err(unsafe_entry(
                &name,
                "block device node: artifacts may not carry device nodes",
            )),
            tar::EntryType::Fifo => Err(unsafe_entry(
                &name,
                "FIFO: artifacts may carry only files, directories and links",
            )),
            tar::EntryType::GNUSparse => Err(UnpackError::Bad(format!(
                "{}: sparse files are not supported",
                name.display()
            ))),
            // PAX and GNU long-name headers are consumed by the tar reader; anything else
            // (e.g. GNU volume labels) carries no file.
            _ => Ok(()),
        }
    }

    fn parent(&self, name: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
        paths::prepare_parent(self.root, rel)
            .map_err(io_at("creating the parents of", &self.root.join(rel)))?
            .map_err(|why| unsafe_entry(name, why))
    }

    /// Removes what an earlier entry or layer left at `path` (a later entry wins, as in images).
    fn clear(&self, path: &Path, keep_dir: bool) -> Result<(), UnpackError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() && keep_dir => Ok(()),
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(io_at("replacing", path)),
            Ok(_) => fs::remove_file(path).map_err(io_at("replacing", path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at("inspecting", path)(e)),
        }
    }

    fn regular<R: Read>(
        &mut self,
        name: &Path,
        rel: &Path,
        mode: u32,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let path = self.parent(name, rel)?;
        self.clear(&path, false)?;
        // create_new: O_EXCL never follows a symlink at the final component.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io_at("creating", &path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(|e| {
                UnpackError::Bad(format!("{}: truncated archive: {e}", name.display()))
            })?;
            if n == 0 {
                break;
            }
            size += n as u64;
            self.out.bytes += n as u64;
            if self.out.bytes > self.max_bytes {
                return Err(UnpackError::Bad(format!(
                    "unpacks to more than limits.maxArtifactBytes ({} bytes)",
                    self.max_bytes
                )));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_at("writing", &path))?;
        }
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_at("setting the mode of", &path))?;
        self.out.files.insert(
            rel.display().to_string(),
            FileRecord {
                size,
                sha256: format!("sha256:{}", super::digest::hex(&hasher.finalize())),
            },
        );
        Ok(())
    }

    fn directory(&mut self, name: &Path, rel: &Path, mode: u32) -> Result<(), UnpackError> {
        let path = self.parent(name, rel)?;
        self.clear(&path, true)?;
        if !path.is_dir() {
            fs::create_dir(&path).map_err(io_at("creating", &path))?;
        }
        self.dir_modes.push((path, (mode & 0o777) | 0o700));
        Ok(())
    }

    fn symlink(&mut self, name: &Path, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        paths::check_link_target(rel, target).map_err(|why| unsafe_entry(name, why))?;
        let path = self.parent(name, rel)?;
        self.clear(&path, false)?;
        std::os::unix::fs::symlink(target, &path).map_err(io_at("creating the symlink", &path))?;
        self.out.files.remove(&rel.display().to_string());
        Ok(())
    }

    fn hard_link(&mut self, name: &Path, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        let target_rel = paths::relative(target)
            .map(|t| self.into.join(t))
            .map_err(|why| unsafe_entry(name, format!("hard link target: {why}")))?;
        let key = target_rel.display().to_string();
        // Only to a regular file this layer already wrote: never to a host file, never through
        // a symlink.
        let record = self.out.files.get(&key).cloned().ok_or_else(|| {
            unsafe_entry(
                name,
                format!("hard link target {key:?} is not a regular file unpacked before it"),
            )
        })?;
        let source = self.parent(name, &target_rel)?;
        let path = self.parent(name, rel)?;
        self.clear(&path, false)?;
        fs::hard_link(&source, &path).map_err(io_at("creating the hard link", &path))?;
        self.out.files.insert(rel.display().to_string(), record);
        Ok(())
    }

    fn whiteout(&mut self, name: &Path, rel: &Path, hidden: &str) -> Result<(), UnpackError> {
        if hidden == ".wh..opq" {
            // An opaque directory hides lower layers; we unpack into an empty tree, so only
            // this archive's earlier entries could be hidden, and images do not do that.
            return Ok(());
        }
        let target = rel.with_file_name(hidden);
        let path = self.parent(name, &target)?;
        self.clear(&path, false)?;
        let prefix = target.display().to_string();
        self.out
            .files
            .retain(|k, _| k != &prefix && !k.starts_with(&format!("{prefix}/")));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    use crate::tarball::tar_of;

    fn run(tar: &[u8]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let blob = dir.path().join("blob");
        fs::write(&blob, tar).expect("write");
        let root = dir.path().join("root");
        fs::create_dir(&root).expect("root");
        let result = unpack(&blob, Compression::None, &root, Path::new(""), 1 << 20);
        (dir, result)
    }

    use tar::EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};

    #[test]
    fn unpacks_with_modes_links_and_digests() {
        let (dir, result) = run(&tar_of(&[
            ("./opt/kata/bin/", Directory, 0o755, b"", None),
            ("./opt/kata/bin/qemu", Regular, 0o755, b"elf", None),
            (
                "./opt/kata/share/vmlinux-6",
                Regular,
                0o644,
                b"kernel",
                None,
            ),
            (
                "./opt/kata/share/vmlinux.container",
                Symlink,
                0o777,
                b"",
                Some("vmlinux-6"),
            ),
            (
                "./opt/kata/share/again",
                Link,
                0o644,
                b"",
                Some("./opt/kata/share/vmlinux-6"),
            ),
        ]));
        let out = result.expect("unpacked");
        let root = dir.path().join("root");
        let qemu = fs::metadata(root.join("opt/kata/bin/qemu")).expect("qemu");
        assert_eq!(qemu.mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(root.join("opt/kata/share/vmlinux.container")).expect("link"),
            Path::new("vmlinux-6")
        );
        assert_eq!(
            fs::read(root.join("opt/kata/share/again")).expect("hard link"),
            b"kernel"
        );
        assert_eq!(out.files["opt/kata/share/vmlinux-6"].size, 6);
        assert_eq!(out.bytes, 9);
    }

    #[test]
    fn refuses_entries_that_escape() {
        for (entries, expected) in [
            (vec![("../x", Regular, 0o644, &b"x"[..], None)], "`..`"),
            (
                vec![("/etc/x", Regular, 0o644, &b"x"[..], None)],
                "absolute",
            ),
            (
                vec![("l", Symlink, 0o777, &b""[..], Some("/etc"))],
                "inside the artifact",
            ),
            (
                vec![("a/l", Symlink, 0o777, &b""[..], Some("../../x"))],
                "inside the artifact",
            ),
            (
                vec![
                    ("l", Symlink, 0o777, &b""[..], Some(".")),
                    ("l/x", Regular, 0o644, &b"x"[..], None),
                ],
                "symlink or not a directory",
            ),
            (
                vec![("h", Link, 0o644, &b""[..], Some("/etc/passwd"))],
                "hard link target",
            ),
            (
                vec![("h", Link, 0o644, &b""[..], Some("../etc/passwd"))],
                "hard link target",
            ),
            (
                vec![("h", Link, 0o644, &b""[..], Some("missing"))],
                "not a regular file",
            ),
        ] {
            let (_dir, result) = run(&tar_of(&entries));
            let error = result.expect_err("refused").to_string();
            assert!(
                error.contains(expected),
                "{error} should mention {expected}"
            );
        }
    }

    #[test]
    fn refuses_setuid_setgid_devices_and_fifos() {
        for (entry, expected) in [
            (
                ("bin/qemu", Regular, 0o4755, &b"elf"[..], None),
                "setuid file (mode 4755)",
            ),
            (
                ("bin/qemu", Regular, 0o2755, &b"elf"[..], None),
                "setgid file (mode 2755)",
            ),
            (
                ("bin/qemu", Regular, 0o6755, &b"elf"[..], None),
                "setuid and setgid file",
            ),
            (
                ("dev/null", Char, 0o666, &b""[..], None),
                "character device node",
            ),
            (
                ("dev/sda", Block, 0o660, &b""[..], None),
                "block device node",
            ),
            (("run/pipe", Fifo, 0o600, &b""[..], None), "FIFO"),
        ] {
            let name = entry.0;
            let (dir, result) = run(&tar_of(&[
                ("ok", Regular, 0o644, b"fine", None),
                entry,
                ("after", Regular, 0o644, b"late", None),
            ]));
            let error = result.expect_err("refused").to_string();
            assert!(
                error.contains(expected),
                "{error} should mention {expected}"
            );
            assert!(error.contains(name), "{error} should name {name}");
            // The install stops at the entry: nothing after it, and the refused entry itself
            // never reaches the tree.
            let root = dir.path().join("root");
            assert!(
                fs::symlink_metadata(root.join(name)).is_err(),
                "{name} written"
            );
            assert!(!root.join("after").exists());
        }
    }

    #[test]
    fn stops_at_the_size_limit() {
        let big = vec![0u8; 2 << 20];
        let (_dir, result) = run(&tar_of(&[("big", Regular, 0o644, &big, None)]));
        assert!(
            result
                .expect_err("too big")
                .to_string()
                .contains("maxArtifactBytes")
        );
    }
}
