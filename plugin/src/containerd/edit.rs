//! What an edit of containerd's config is: the operator's say ([`Mode`], [`EditOptions`]) and
//! the result ([`Edit`], its [`Change`]s), apart from the editor that computes it and the check
//! that reads it back.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::dropin::{DropinChange, default_dropin_path};
use super::ownership::OwnershipRecord;
use super::schema::{ContainerdVersion, Schema};

/// Where the operator wants the stanzas (the config's `containerd.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A drop-in where containerd deep-merges imports (config version 3, containerd 2.x), else
    /// inline: containerd 1.x replaces whole plugin sections from a drop-in.
    #[default]
    Auto,
    Inline,
    Dropin,
}

/// Where the stanzas end up after `Mode::Auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Inline,
    Dropin,
}

/// What the editor needs besides the text: paths, containerd's version, and the operator's say.
#[derive(Debug, Clone, Default)]
pub struct EditOptions {
    /// The main config file (messages, the k3s template check, relative `imports`).
    pub config_path: PathBuf,
    /// Our drop-in; [`default_dropin_path`] when unset.
    pub dropin_path: Option<PathBuf>,
    /// The drop-in's current text, when the file exists.
    pub dropin_text: Option<String>,
    /// The running containerd's version: decides the schema of a file without `version`.
    pub containerd_version: Option<ContainerdVersion>,
    /// Stanzas we did not create that we may take over (replace, and later remove).
    pub adopt: BTreeSet<String>,
    /// Make sure containerd runs NRI (1.7 needs `disable = false`; on 2.x an explicit
    /// `disable = true` is flipped).
    pub enable_nri: bool,
}

impl EditOptions {
    pub fn new(config_path: impl Into<PathBuf>) -> Self {
        Self {
            config_path: config_path.into(),
            ..Self::default()
        }
    }

    pub fn dropin_path(&self) -> PathBuf {
        self.dropin_path
            .clone()
            .unwrap_or_else(|| default_dropin_path(&self.config_path))
    }
}

/// One thing the edit does, for logs and the CLI's summary: a sentence (`Display`) for people,
/// `{"change": "added", "subject": "kata-qemu"}` (`Serialize`) for scripts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", tag = "change", content = "subject")]
pub enum Change {
    Added(String),
    Updated(String),
    Adopted(String),
    Removed(String),
    /// Moved between the main file and the drop-in (the mode changed).
    Moved(String),
    NriEnabled,
    VersionAdded(i64),
    ImportAdded(String),
    ImportRemoved(String),
    DropinWritten(PathBuf),
    DropinRemoved(PathBuf),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Added(class) => write!(f, "runtime class {class}: stanza added"),
            Self::Updated(class) => write!(f, "runtime class {class}: stanza updated"),
            Self::Adopted(class) => write!(
                f,
                "runtime class {class}: the node's stanza taken over (runtime.adopt)"
            ),
            Self::Removed(class) => write!(f, "runtime class {class}: stanza removed"),
            Self::Moved(class) => write!(
                f,
                "runtime class {class}: stanza moved between the main file and the drop-in"
            ),
            Self::NriEnabled => write!(f, "NRI enabled"),
            Self::VersionAdded(version) => write!(f, "version = {version} added"),
            Self::ImportAdded(path) => write!(f, "imports: {path} added"),
            Self::ImportRemoved(path) => write!(f, "imports: {path} removed"),
            Self::DropinWritten(path) => write!(f, "drop-in {} written", path.display()),
            Self::DropinRemoved(path) => write!(f, "drop-in {} removed", path.display()),
        }
    }
}

/// The result of [`apply`](super::apply): new texts, and the ownership record to store once they are written.
#[derive(Debug, Clone)]
pub struct Edit {
    pub schema: Schema,
    pub placement: Placement,
    /// The main file as it was.
    pub original: String,
    /// The main file as it should be (equal to `original` when nothing changes there).
    pub main: String,
    pub dropin: DropinChange,
    /// What we own once the edit is written.
    pub owned: OwnershipRecord,
    pub changes: Vec<Change>,
}

impl Edit {
    pub fn main_changed(&self) -> bool {
        self.main != self.original
    }

    /// Whether writing the edit would change no file (the ownership record may still change).
    pub fn is_noop(&self) -> bool {
        !self.main_changed() && self.dropin == DropinChange::Untouched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_reads_as_a_sentence_and_as_json() {
        let added = Change::Added("kata-qemu".into());
        assert_eq!(added.to_string(), "runtime class kata-qemu: stanza added");
        assert_eq!(
            serde_json::to_value(&added).expect("json"),
            serde_json::json!({"change": "added", "subject": "kata-qemu"})
        );
        assert_eq!(
            serde_json::to_value(Change::NriEnabled).expect("json"),
            serde_json::json!({"change": "nriEnabled"})
        );
        assert_eq!(
            Change::DropinWritten("/etc/containerd/conf.d/kata.toml".into()).to_string(),
            "drop-in /etc/containerd/conf.d/kata.toml written"
        );
    }
}
