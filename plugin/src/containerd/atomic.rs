//! Atomic replacement of a file: a temp file in the same directory (`.<name>.tmp-<pid>`), written
//! and synced, given the original's mode and owner, renamed over the target, and the directory
//! synced. A reader (containerd at its next start) sees the old file or the new one, never a mix.
//! A backup of the file before our write (`<file>.kata-nri-manager.bak`) is written the same way,
//! and restoring it is one more atomic write.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{ContainerdError, Result};
use super::fault::{FaultHook, FaultPoint, FaultTarget};

/// Appended to a file's name for its backup.
pub const BACKUP_SUFFIX: &str = ".kata-nri-manager.bak";

/// The backup of `path`: `<path>.kata-nri-manager.bak`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(BACKUP_SUFFIX);
    path.with_file_name(name)
}

/// The temp file a process with `pid` writes before renaming it over `path`.
pub fn temp_path(path: &Path, pid: u32) -> PathBuf {
    path.with_file_name(format!(".{}.tmp-{pid}", file_name(path)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The mode a written file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Keep the mode (and owner) of the file being replaced; `if_new` when there is none.
    Preserve { if_new: u32 },
    /// Always this mode (state files: 0600), owner our own.
    Exactly(u32),
}

/// What the new file gets from the old one.
#[derive(Debug, Clone, Copy)]
struct Attributes {
    mode: u32,
    owner: Option<(u32, u32)>,
}

/// Writes files atomically; optionally calls a fault hook between steps (tests).
#[derive(Clone, Default)]
pub struct AtomicWriter {
    hook: Option<FaultHook>,
}

impl std::fmt::Debug for AtomicWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicWriter")
            .field("fault_hook", &self.hook.is_some())
            .finish()
    }
}

impl AtomicWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer that calls `hook` after every step (see [`FaultPoint`]).
    pub fn with_fault_hook(hook: FaultHook) -> Self {
        Self { hook: Some(hook) }
    }

    /// Replaces `path` (the file a symlink points at, when `path` is one) with `contents`.
    pub fn write(&self, path: &Path, contents: &[u8], mode: FileMode) -> Result<()> {
        let target = resolve(path)?;
        let current = attributes_of(&target)?;
        let attributes = match mode {
            FileMode::Preserve { if_new } => current.unwrap_or(Attributes {
                mode: if_new,
                owner: None,
            }),
            FileMode::Exactly(mode) => Attributes { mode, owner: None },
        };
        self.replace(FaultTarget::File, &target, contents, attributes)
    }

    /// Copies `path` to its backup, atomically. `None` when `path` does not exist.
    pub fn backup(&self, path: &Path) -> Result<Option<PathBuf>> {
        let target = resolve(path)?;
        let Some(attributes) = attributes_of(&target)? else {
            return Ok(None);
        };
        let contents = fs::read(&target).map_err(|e| ContainerdError::io("reading", &target, e))?;
        let backup = backup_path(&target);
        self.replace(FaultTarget::Backup, &backup, &contents, attributes)?;
        Ok(Some(backup))
    }

    /// Backs `path` up (when it exists), then replaces it.
    pub fn write_with_backup(&self, path: &Path, contents: &[u8], mode: FileMode) -> Result<()> {
        self.backup(path)?;
        self.write(path, contents, mode)
    }

    /// Puts the backup back in place of `path` (atomically), with the mode and owner it had.
    pub fn restore_backup(&self, path: &Path) -> Result<()> {
        let target = resolve(path)?;
        let backup = backup_path(&target);
        let contents = match fs::read(&backup) {
            Ok(contents) => contents,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(ContainerdError::NoBackup { path: backup });
            }
            Err(e) => return Err(ContainerdError::io("reading", &backup, e)),
        };
        let attributes = attributes_of(&backup)?.unwrap_or(Attributes {
            mode: 0o644,
            owner: None,
        });
        self.replace(FaultTarget::File, &target, &contents, attributes)
    }

    /// Removes `path` and syncs its directory. `false` when it did not exist.
    pub fn remove(&self, path: &Path) -> Result<bool> {
        let target = resolve(path)?;
        match fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ContainerdError::io("removing", &target, e)),
        }
        self.fault(FaultTarget::File, FaultPoint::AfterUnlink, &target);
        sync_dir(&target)?;
        self.fault(FaultTarget::File, FaultPoint::AfterFsyncDir, &target);
        Ok(true)
    }

    fn fault(&self, target: FaultTarget, point: FaultPoint, path: &Path) {
        if let Some(hook) = &self.hook {
            hook(target, point, path);
        }
    }

    fn replace(
        &self,
        kind: FaultTarget,
        target: &Path,
        contents: &[u8],
        attributes: Attributes,
    ) -> Result<()> {
        clean_stale_temps(target)?;
        self.fault(kind, FaultPoint::AfterCleanStale, target);
        let temp = temp_path(target, std::process::id());
        let guard = TempGuard(Some(temp.clone()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| ContainerdError::io("creating", &temp, e))?;
        self.fault(kind, FaultPoint::AfterCreateTemp, target);
        let (head, tail) = contents.split_at(contents.len() / 2);
        write_all(&mut file, head, &temp)?;
        self.fault(kind, FaultPoint::MidWriteTemp, target);
        write_all(&mut file, tail, &temp)?;
        self.fault(kind, FaultPoint::AfterWriteTemp, target);
        set_attributes(&file, &temp, attributes)?;
        self.fault(kind, FaultPoint::AfterSetPermissions, target);
        file.sync_all()
            .map_err(|e| ContainerdError::io("syncing", &temp, e))?;
        drop(file);
        self.fault(kind, FaultPoint::AfterFsyncTemp, target);
        fs::rename(&temp, target)
            .map_err(|e| ContainerdError::io("renaming into place", target, e))?;
        guard.disarm();
        self.fault(kind, FaultPoint::AfterRename, target);
        sync_dir(target)?;
        self.fault(kind, FaultPoint::AfterFsyncDir, target);
        Ok(())
    }
}

/// Removes the temp file of a write that failed part-way (not after a kill: then the next
/// write's stale clean-up does).
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

fn write_all(file: &mut File, bytes: &[u8], path: &Path) -> Result<()> {
    file.write_all(bytes)
        .map_err(|e| ContainerdError::io("writing", path, e))
}

/// Follows a symlink to the file it names: replacing the link itself would cut it.
fn resolve(path: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path)
            .map_err(|e| ContainerdError::io("following the symlink", path, e)),
        _ => Ok(path.to_path_buf()),
    }
}

fn attributes_of(path: &Path) -> Result<Option<Attributes>> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(Attributes {
            mode: meta.mode() & 0o7777,
            owner: Some((meta.uid(), meta.gid())),
        })),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ContainerdError::io("reading the metadata of", path, e)),
    }
}

fn set_attributes(file: &File, path: &Path, attributes: Attributes) -> Result<()> {
    if let Some((uid, gid)) = attributes.owner {
        let meta = file
            .metadata()
            .map_err(|e| ContainerdError::io("reading the metadata of", path, e))?;
        // Only root may give a file away; skip the call when it would change nothing.
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid))
                .map_err(|e| ContainerdError::io("setting the owner of", path, e))?;
        }
    }
    // After chown: changing the owner clears setuid/setgid bits.
    file.set_permissions(Permissions::from_mode(attributes.mode))
        .map_err(|e| ContainerdError::io("setting the mode of", path, e))
}

/// Makes a rename or unlink in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ContainerdError::io("syncing the directory", dir, e))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Removes `.<name>.tmp-<pid>` files next to `path` left by a crashed write: those of processes
/// that no longer exist, and our own pid's (a container's daemon is often pid 1 every time).
pub fn clean_stale_temps(path: &Path) -> Result<Vec<PathBuf>> {
    let dir = parent_dir(path);
    let prefix = format!(".{}.tmp-", file_name(path));
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ContainerdError::io("listing", dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ContainerdError::io("listing", dir, e))?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || !process_exists(pid) {
            let stale = entry.path();
            match fs::remove_file(&stale) {
                Ok(()) => removed.push(stale),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ContainerdError::io(
                        "removing the stale temp file",
                        &stale,
                        e,
                    ));
                }
            }
        }
    }
    Ok(removed)
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists; it sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::fault::{self, FAULT_ENV};

    #[test]
    fn write_preserves_mode_and_replaces_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        let writer = AtomicWriter::new();
        writer
            .write_with_backup(&path, b"new\n", FileMode::Preserve { if_new: 0o644 })
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(fs::read_to_string(backup_path(&path)).unwrap(), "old\n");
        assert_eq!(
            fs::metadata(backup_path(&path)).unwrap().mode() & 0o7777,
            0o640
        );
        writer.restore_backup(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temp file is left: {names:?}");
    }

    #[test]
    fn new_files_get_the_requested_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let writer = AtomicWriter::new();
        writer
            .write(&path, b"{}", FileMode::Preserve { if_new: 0o644 })
            .unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        writer
            .write(&path, b"{}", FileMode::Exactly(0o600))
            .unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        assert!(writer.backup(&dir.path().join("absent")).unwrap().is_none());
        assert!(matches!(
            writer.restore_backup(&dir.path().join("absent")),
            Err(ContainerdError::NoBackup { .. })
        ));
        assert!(writer.remove(&path).unwrap());
        assert!(!writer.remove(&path).unwrap());
    }

    #[test]
    fn symlinks_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        let link = dir.path().join("config.toml");
        fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        AtomicWriter::new()
            .write(&link, b"new", FileMode::Preserve { if_new: 0o644 })
            .unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).unwrap(), "new");
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        // pid_max is at most 2^22: this pid cannot be running.
        let dead = temp_path(&path, 4_194_304 + 7);
        let mine = temp_path(&path, std::process::id());
        let alive = temp_path(&path, 1);
        for p in [&dead, &mine, &alive] {
            fs::write(p, "torn").unwrap();
        }
        AtomicWriter::new()
            .write(&path, b"new", FileMode::Preserve { if_new: 0o644 })
            .unwrap();
        assert!(!dead.exists() && !mine.exists());
        assert!(alive.exists(), "a live process's temp file is left alone");
    }

    const OLD: &str = "old contents, long enough to be split in two halves\n";
    const NEW: &str = "new contents, also long enough to be split in two\n";

    /// The child side of `a_crash_at_any_step_leaves_old_or_new`: does nothing unless the parent
    /// set the environment; then writes with a hook that kills it at the named point.
    #[test]
    fn crash_child() {
        let (Ok(spec), Ok(path)) = (std::env::var(FAULT_ENV), std::env::var("KNM_CRASH_PATH"))
        else {
            return;
        };
        let hook = fault::hook_from_env().unwrap().unwrap();
        let writer = AtomicWriter::with_fault_hook(hook);
        let path = PathBuf::from(path);
        if spec.ends_with("after-unlink") {
            writer.remove(&path).unwrap();
        } else {
            writer
                .write_with_backup(&path, NEW.as_bytes(), FileMode::Preserve { if_new: 0o644 })
                .unwrap();
        }
        // Reaching this line means the fault point was never passed.
        std::process::exit(3);
    }

    #[test]
    fn a_crash_at_any_step_leaves_old_or_new() {
        let exe = std::env::current_exe().unwrap();
        let specs = FaultPoint::ALL.iter().map(|p| p.name().to_string()).chain(
            FaultPoint::ALL[..8]
                .iter()
                .map(|p| format!("backup:{}", p.name())),
        );
        for spec in specs {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("config.toml");
            fs::write(&path, OLD).unwrap();
            let status = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "containerd::atomic::tests::crash_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(FAULT_ENV, &spec)
                .env("KNM_CRASH_PATH", &path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(
                !status.success() && status.code() != Some(3),
                "{spec}: the child must die at the fault point ({status})"
            );
            match fs::read_to_string(&path) {
                Ok(text) => assert!(text == OLD || text == NEW, "{spec}: torn file {text:?}"),
                Err(e) => assert!(
                    spec == "after-unlink" && e.kind() == ErrorKind::NotFound,
                    "{spec}: file lost: {e}"
                ),
            }
            if let Ok(backup) = fs::read_to_string(backup_path(&path)) {
                assert_eq!(backup, OLD, "{spec}: the backup is the old file or absent");
            }
            // The next write cleans up what the crash left and succeeds.
            AtomicWriter::new()
                .write(&path, NEW.as_bytes(), FileMode::Preserve { if_new: 0o644 })
                .unwrap();
            AtomicWriter::new().backup(&path).unwrap();
            let leftovers: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect();
            assert!(
                leftovers.is_empty(),
                "{spec}: stale temp files left: {leftovers:?}"
            );
        }
    }
}
