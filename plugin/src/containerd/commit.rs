//! Writes an [`Edit`]'s files in an order that leaves a working config after a crash at any
//! point, and can put the previous files back (when containerd does not come back with the new
//! ones).
//!
//! Order: the ownership record first, naming everything before and after (a crash never leaves a
//! stanza of ours that no record names); a new drop-in before the main file imports it; the main
//! file; a removed drop-in after the main file stopped importing it; the final record last.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::atomic::{AtomicWriter, FileMode};
use super::dropin::DropinChange;
use super::edit::Edit;
use super::error::{ContainerdError, Result};
use super::ownership::OwnershipRecord;

/// containerd's config files are world-readable, as containerd writes them.
const CONFIG_MODE: u32 = 0o644;

/// Reads a file that may be absent.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ContainerdError::io("reading", path, e)),
    }
}

/// What a file was before the commit, to put it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// It existed; its backup (`<file>.kata-nri-manager.bak`) holds the old bytes.
    BackedUp(PathBuf),
    /// It did not exist: rolling back removes it.
    Absent(PathBuf),
}

/// The files a commit changed, in the order it changed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    pub changed: Vec<Previous>,
}

impl Committed {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }

    /// Puts every changed file back as it was, last change first. The ownership record is left
    /// naming the union, which stays true of the restored files.
    pub fn rollback(&self, writer: &AtomicWriter) -> Result<()> {
        for previous in self.changed.iter().rev() {
            match previous {
                Previous::BackedUp(path) => writer.restore_backup(path)?,
                Previous::Absent(path) => {
                    writer.remove(path)?;
                }
            }
        }
        Ok(())
    }
}

/// Writes `edit` for the main file `main_path`, keeping the record at `state_path`. `previous`
/// is the record the edit was computed from.
pub fn commit(
    edit: &Edit,
    main_path: &Path,
    state_path: &Path,
    previous: &OwnershipRecord,
    writer: &AtomicWriter,
) -> Result<Committed> {
    let mut committed = Committed::default();
    if edit.is_noop() {
        if &edit.owned != previous {
            edit.owned.store(state_path, writer)?;
        }
        return Ok(committed);
    }
    previous.union(&edit.owned).store(state_path, writer)?;
    if let DropinChange::Write { path, text, .. } = &edit.dropin {
        if let Some(dir) = path.parent() {
            create_config_dir(dir)?;
        }
        committed
            .changed
            .push(write_with_backup(writer, path, text)?);
    }
    if edit.main_changed() {
        committed
            .changed
            .push(write_with_backup(writer, main_path, &edit.main)?);
    }
    if let DropinChange::Remove { path, .. } = &edit.dropin {
        writer.backup(path)?;
        writer.remove(path)?;
        committed.changed.push(Previous::BackedUp(path.clone()));
    }
    edit.owned.store(state_path, writer)?;
    Ok(committed)
}

fn write_with_backup(writer: &AtomicWriter, path: &Path, text: &str) -> Result<Previous> {
    let previous = match writer.backup(path)? {
        Some(_) => Previous::BackedUp(path.to_path_buf()),
        None => Previous::Absent(path.to_path_buf()),
    };
    writer.write(
        path,
        text.as_bytes(),
        FileMode::Preserve {
            if_new: CONFIG_MODE,
        },
    )?;
    Ok(previous)
}

/// `conf.d` next to the main file, 0755 as `/etc/containerd` is.
fn create_config_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| ContainerdError::io("creating", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::edit::{EditOptions, Mode};
    use crate::containerd::editor::apply;
    use crate::containerd::schema::ContainerdVersion;
    use crate::containerd::stanza::RuntimeStanza;

    const MAIN: &str = "version = 3\nimports = []\n";

    fn options(dir: &Path, dropin_text: Option<String>) -> EditOptions {
        EditOptions {
            dropin_path: Some(dir.join("conf.d/kata-nri-manager.toml")),
            dropin_text,
            containerd_version: Some(ContainerdVersion::new(2, 1)),
            ..EditOptions::new(dir.join("config.toml"))
        }
    }

    #[test]
    fn commit_writes_in_order_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        let state = dir.path().join("state/containerd.json");
        let dropin = dir.path().join("conf.d/kata-nri-manager.toml");
        fs::write(&main, MAIN).unwrap();
        let writer = AtomicWriter::new();
        let before = OwnershipRecord::default();
        let stanza = RuntimeStanza::new("kata", "io.containerd.kata.v2");
        let edit = apply(
            MAIN,
            &[stanza],
            &before,
            Mode::Dropin,
            &options(dir.path(), None),
        )
        .unwrap();

        let committed = commit(&edit, &main, &state, &before, &writer).unwrap();
        assert_eq!(
            committed.changed,
            [
                Previous::Absent(dropin.clone()),
                Previous::BackedUp(main.clone())
            ]
        );
        assert_eq!(read_optional(&main).unwrap().unwrap(), edit.main);
        assert!(
            read_optional(&dropin)
                .unwrap()
                .unwrap()
                .contains("runtimes.kata]")
        );
        assert_eq!(OwnershipRecord::load(&state).unwrap(), edit.owned);

        committed.rollback(&writer).unwrap();
        assert_eq!(read_optional(&main).unwrap().unwrap(), MAIN);
        assert_eq!(read_optional(&dropin).unwrap(), None);
    }

    #[test]
    fn an_unchanged_config_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        let state = dir.path().join("state.json");
        fs::write(&main, MAIN).unwrap();
        let edit = apply(
            MAIN,
            &[],
            &OwnershipRecord::default(),
            Mode::Dropin,
            &options(dir.path(), None),
        )
        .unwrap();
        assert!(edit.is_noop());
        let committed = commit(
            &edit,
            &main,
            &state,
            &OwnershipRecord::default(),
            &AtomicWriter::new(),
        )
        .unwrap();
        assert!(committed.is_empty());
        assert!(!crate::containerd::atomic::backup_path(&main).exists());
    }
}
