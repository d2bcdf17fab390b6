//! The record of what kata-nri-manager wrote into containerd's config: the stanzas it created
//! (or adopted), its drop-in and `imports` entry. Later runs change only what this record names,
//! so an operator's own `kata` stanza is never touched. Kept as JSON in a root-only state file
//! (0600 in a 0700 directory), written atomically and checked before it is believed.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::{AtomicWriter, FileMode};
use super::error::{ContainerdError, Result};

/// The record's format; a newer one is refused rather than misread.
const FORMAT: u32 = 1;

/// What kata-nri-manager owns in containerd's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnershipRecord {
    #[serde(default = "format")]
    pub format: u32,
    /// The main config file the record is about.
    #[serde(default)]
    pub config_path: Option<PathBuf>,
    /// Runtime stanzas we created or adopted, by handler name.
    #[serde(default)]
    pub runtimes: BTreeSet<String>,
    /// Our drop-in, when we wrote one.
    #[serde(default)]
    pub dropin: Option<DropinRecord>,
    /// We switched NRI on (left on at uninstall: other NRI plugins may rely on it).
    #[serde(default)]
    pub nri_enabled: bool,
}

fn format() -> u32 {
    FORMAT
}

impl Default for OwnershipRecord {
    fn default() -> Self {
        Self {
            format: FORMAT,
            config_path: None,
            runtimes: BTreeSet::new(),
            dropin: None,
            nri_enabled: false,
        }
    }
}

/// Our drop-in file and how the main file imports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DropinRecord {
    pub path: PathBuf,
    /// The `imports` entry we added; `None` when an entry of the operator (a glob) covers it.
    #[serde(default)]
    pub import_entry: Option<String>,
    /// We added the `imports` key itself (so we remove the line when our entry goes).
    #[serde(default)]
    pub created_imports_key: bool,
}

impl OwnershipRecord {
    pub fn owns(&self, name: &str) -> bool {
        self.runtimes.contains(name)
    }

    /// Whether the record names nothing at all.
    pub fn is_empty(&self) -> bool {
        self.runtimes.is_empty() && self.dropin.is_none() && !self.nri_enabled
    }

    /// Everything either record owns: stored before a write, so that a crash between writing the
    /// config and recording the result never leaves a stanza of ours that no record names.
    pub fn union(&self, other: &OwnershipRecord) -> OwnershipRecord {
        OwnershipRecord {
            format: FORMAT,
            config_path: other
                .config_path
                .clone()
                .or_else(|| self.config_path.clone()),
            runtimes: self.runtimes.union(&other.runtimes).cloned().collect(),
            dropin: merge_dropin(self.dropin.as_ref(), other.dropin.as_ref()),
            nri_enabled: self.nri_enabled || other.nri_enabled,
        }
    }

    /// Reads the record at `path`; a missing file is an empty record. The file must be a regular
    /// file of ours that nobody else can read or write: it decides what we may delete.
    pub fn load(path: &Path) -> Result<Self> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(ContainerdError::io("reading", path, e)),
        };
        check_private(
            path,
            &meta,
            0o077,
            "a file only its owner may read or write",
        )?;
        if !meta.file_type().is_file() {
            return Err(unsafe_file(path, "not a regular file".into(), REMOVE_HINT));
        }
        let text = fs::read_to_string(path).map_err(|e| ContainerdError::io("reading", path, e))?;
        let record: OwnershipRecord =
            serde_json::from_str(&text).map_err(|e| ContainerdError::Record {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if record.format > FORMAT {
            return Err(ContainerdError::Record {
                path: path.to_path_buf(),
                message: format!(
                    "format {} was written by a newer kata-nri-manager (this one reads {FORMAT})",
                    record.format
                ),
            });
        }
        Ok(record)
    }

    /// Writes the record atomically as a 0600 file, creating its directory 0700.
    pub fn store(&self, path: &Path, writer: &AtomicWriter) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            ensure_private_dir(dir)?;
        }
        let mut json = serde_json::to_string_pretty(self).map_err(|e| ContainerdError::Record {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        json.push('\n');
        writer.write(path, json.as_bytes(), FileMode::Exactly(0o600))
    }
}

fn merge_dropin(old: Option<&DropinRecord>, new: Option<&DropinRecord>) -> Option<DropinRecord> {
    match (old, new) {
        (Some(old), Some(new)) => Some(DropinRecord {
            path: new.path.clone(),
            import_entry: new
                .import_entry
                .clone()
                .or_else(|| old.import_entry.clone()),
            created_imports_key: new.created_imports_key || old.created_imports_key,
        }),
        (old, new) => new.or(old).cloned(),
    }
}

const REMOVE_HINT: &str = "fix or remove it (as root)";

fn unsafe_file(path: &Path, problem: String, hint: &'static str) -> ContainerdError {
    ContainerdError::UnsafeFile {
        path: path.to_path_buf(),
        problem,
        hint,
    }
}

/// Refuses a file or directory owned by someone else or open to others beyond `forbidden` bits.
fn check_private(path: &Path, meta: &fs::Metadata, forbidden: u32, wanted: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(unsafe_file(
            path,
            format!(
                "owned by uid {}, not by this process (uid {euid})",
                meta.uid()
            ),
            REMOVE_HINT,
        ));
    }
    if meta.mode() & forbidden != 0 {
        return Err(unsafe_file(
            path,
            format!("mode {:04o}, not {wanted}", meta.mode() & 0o7777),
            REMOVE_HINT,
        ));
    }
    Ok(())
}

/// Creates `dir` (and missing parents) as 0700, or checks that the existing one is ours and not
/// writable by others.
fn ensure_private_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            check_private(dir, &meta, 0o022, "a directory only its owner may write")
        }
        Ok(_) => Err(unsafe_file(dir, "not a directory".into(), REMOVE_HINT)),
        Err(e) if e.kind() == ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ContainerdError::io("creating the state directory", dir, e)),
        Err(e) => Err(ContainerdError::io("reading", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn record() -> OwnershipRecord {
        OwnershipRecord {
            config_path: Some("/etc/containerd/config.toml".into()),
            runtimes: ["kata-qemu".to_string()].into(),
            dropin: Some(DropinRecord {
                path: "/etc/containerd/conf.d/kata-nri-manager.toml".into(),
                import_entry: Some("/etc/containerd/conf.d/kata-nri-manager.toml".into()),
                created_imports_key: false,
            }),
            ..OwnershipRecord::default()
        }
    }

    #[test]
    fn store_and_load_round_trip_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/containerd.json");
        assert_eq!(
            OwnershipRecord::load(&path).unwrap(),
            OwnershipRecord::default()
        );
        record().store(&path, &AtomicWriter::new()).unwrap();
        assert_eq!(OwnershipRecord::load(&path).unwrap(), record());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn open_files_and_newer_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "{\"format\": 9}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = OwnershipRecord::load(&path).unwrap_err().to_string();
        assert!(err.contains("mode 0644"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = OwnershipRecord::load(&path).unwrap_err().to_string();
        assert!(err.contains("newer kata-nri-manager"), "{err}");
        fs::write(&path, "{\"runtimes\": 1}").unwrap();
        assert!(matches!(
            OwnershipRecord::load(&path),
            Err(ContainerdError::Record { .. })
        ));
    }

    #[test]
    fn union_keeps_everything_either_side_owns() {
        let old = record();
        let new = OwnershipRecord {
            runtimes: ["kata-clh".to_string()].into(),
            ..OwnershipRecord::default()
        };
        let both = old.union(&new);
        assert!(both.owns("kata-qemu") && both.owns("kata-clh"));
        assert_eq!(both.dropin, old.dropin);
        assert!(!both.is_empty());
    }
}
