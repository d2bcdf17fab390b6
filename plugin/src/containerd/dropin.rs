//! Our drop-in file: where it lives, what it says, and whether an existing one is ours. Used on
//! containerd 2.x, which deep-merges the files of `imports` into the main config.

use std::path::{Path, PathBuf};

use super::error::{ContainerdError, Result};
use super::ownership::{DropinRecord, OwnershipRecord};
use super::render::{self, Look};
use super::schema::Schema;
use super::stanza::RuntimeStanza;

/// The first line of our drop-in: how a later run knows the file is ours even if its record was
/// lost in a crash.
pub const DROPIN_MARKER: &str = "# Written by kata-nri-manager";

/// The drop-in's name next to the main file: `<dir>/conf.d/kata-nri-manager.toml`.
pub fn default_dropin_path(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .unwrap_or(Path::new("/"))
        .join("conf.d/kata-nri-manager.toml")
}

/// What becomes of our drop-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropinChange {
    /// Nothing to do (absent and not wanted, or already as wanted).
    Untouched,
    Write {
        path: PathBuf,
        old: Option<String>,
        text: String,
    },
    Remove {
        path: PathBuf,
        old: String,
    },
}

/// Our drop-in: a marker, the main file's `version` (when it has one), and the stanzas.
pub(crate) fn render_dropin(
    schema: Schema,
    with_version: bool,
    desired: &[RuntimeStanza],
) -> String {
    let mut out = format!(
        "{DROPIN_MARKER}: the runtime handlers of its runtime classes.\n\
         # It rewrites this file when its configuration changes and deletes it on uninstall.\n"
    );
    if with_version {
        out.push_str(&format!("version = {}\n", schema.version()));
    }
    let look = Look::runtimes(schema, "\n");
    for stanza in desired {
        out.push('\n');
        out.push_str(&render::render_stanza(stanza, &look));
    }
    out
}

/// Our drop-in when the record does not name it (a crash lost the record): its marker says it
/// is ours, and its path in `imports` is the entry we would have added. Leaving that entry behind
/// a deleted file would be worse than a stale file: containerd 2.1 silently stops reading imports
/// at a missing one.
pub(crate) fn recognised_dropin(path: &Path, text: Option<&str>) -> Option<DropinRecord> {
    text.filter(|t| t.starts_with(DROPIN_MARKER))
        .map(|_| DropinRecord {
            path: path.to_path_buf(),
            import_entry: Some(path.to_string_lossy().into_owned()),
            created_imports_key: false,
        })
}

pub(crate) fn dropin_change(
    path: &Path,
    current: Option<&str>,
    owned: &OwnershipRecord,
    wanted: Option<String>,
) -> Result<DropinChange> {
    let ours = owned.dropin.as_ref().is_some_and(|d| d.path == path)
        || current.is_some_and(|text| text.starts_with(DROPIN_MARKER));
    let path_buf = path.to_path_buf();
    match (current, wanted) {
        (Some(current), Some(text)) if current == text => Ok(DropinChange::Untouched),
        (Some(_), Some(_)) if !ours => Err(ContainerdError::DropinNotOwned { path: path_buf }),
        (old, Some(text)) => Ok(DropinChange::Write {
            path: path_buf,
            old: old.map(str::to_string),
            text,
        }),
        (Some(old), None) if ours => Ok(DropinChange::Remove {
            path: path_buf,
            old: old.to_string(),
        }),
        _ => Ok(DropinChange::Untouched),
    }
}
