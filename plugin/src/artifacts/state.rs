//! The per-class record of what is installed: `<artifactsDir>/.state/<class>.json`, root-only
//! (0700 directory, 0600 file), written atomically. The digests in it are those of the files
//! as installed, after our rewrite of the kata configuration, so checking them never loops.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One installed regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    /// `sha256:<hex>` (older records of files unpacked from a tar layer hold the bare hex).
    pub sha256: String,
}

impl FileRecord {
    /// The same bytes as `other`, whichever spelling of the digest each record has.
    pub fn same_content(&self, other: &FileRecord) -> bool {
        fn hex(digest: &str) -> &str {
            digest.strip_prefix("sha256:").unwrap_or(digest)
        }
        self.size == other.size && hex(&self.sha256) == hex(&other.sha256)
    }
}

/// What is installed for one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassState {
    pub class: String,
    /// The reference as configured.
    pub reference: String,
    /// The digest the reference resolved to (the index's, for a multi-platform artifact).
    pub resolved_digest: String,
    /// The image manifest installed (the platform's, for an index); names the store directory.
    pub manifest_digest: String,
    /// The version's directory, `<artifactsDir>/.store/<manifest digest>`.
    pub path: PathBuf,
    /// Seconds since the Unix epoch.
    pub installed_at: u64,
    /// Every regular file by path relative to the version's directory.
    pub files: BTreeMap<String, FileRecord>,
    /// The blobs of `.store/blobs` the version was built from (its layers' digests, sorted):
    /// a blob no version of any class names is collected. Empty in records written before
    /// the blob store, whose versions own all their files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
    /// Kata configurations rewritten to point at this version's files.
    #[serde(default)]
    pub kata_configs: Vec<String>,
    /// The kata version the artifact declared it needs (its `kata-nri-manager.io/kata-version`
    /// annotation), checked again against the shim on later ensures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kata_version: Option<String>,
    /// Versions installed before this one, newest first, at most `limits.keepVersions`: what
    /// `rollback` can return to.
    #[serde(default)]
    pub previous: Vec<String>,
    /// Versions beyond `keepVersions`, removed once no sandbox can be running on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
    /// What is known of each version in `previous` and `retired`, by manifest digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, VersionRecord>,
    /// Versions an operator rolled back from (both digests: resolved and manifest): an update
    /// that resolves to one of them keeps the current version instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<String>,
    /// `host[:port]` this version was pulled from: a mirror of containerd's hosts.toml or the
    /// registry itself. Absent in records written before mirrors were supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// The fingerprint (`sha256:` of the DER) of the cosign key whose signature this version
    /// carried when it was installed (`artifacts.verify`); `None`: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// The version's kata configurations name its own programs (`runtime.fromArtifact`): only a
    /// class with the same setting may share the version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binaries_from_version: bool,
    /// Policies' kata settings for the class (`mutate-runtime`), rendered into the current
    /// version beside `runtime.configFile` (see `kataconf::SETTINGS_DIR`). Kept for callers
    /// that run no policies (the CLI), so what they install gets the same rendering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kata_settings: Vec<crate::kata::KataSetting>,
    /// The artifact's kata configuration the class's stanza names, relative to the version:
    /// `runtime.configFile`, or the file `kata-nri-manager.toml` links to when it is unset.
    /// `None`: the artifact has none, so kata refuses to start the class's pods (`status` says
    /// so); also in records written before this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
}

impl ClassState {
    /// Every version the record names: the current one, then `previous`, then `retired`.
    pub fn all_versions(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.manifest_digest)
            .chain(&self.previous)
            .chain(&self.retired)
    }

    /// The blobs of every version the record names: what collection must keep for the class.
    pub fn all_blobs(&self) -> impl Iterator<Item = &String> {
        self.blobs
            .iter()
            .chain(self.versions.values().flat_map(|v| &v.blobs))
    }
}

/// A version that is no longer current: enough to verify it before a rollback makes it current
/// again, and to tell which sandboxes may still run on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRecord {
    pub reference: String,
    pub resolved_digest: String,
    pub installed_at: u64,
    /// Milliseconds since the Unix epoch when it stopped being current: a sandbox created
    /// later cannot be running on it.
    pub superseded_at_ms: u64,
    pub files: BTreeMap<String, FileRecord>,
    /// As [`ClassState::blobs`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
    #[serde(default)]
    pub kata_configs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kata_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// The fingerprint (`sha256:` of the DER) of the cosign key whose signature this version
    /// carried when it was installed (`artifacts.verify`); `None`: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
}

/// `<artifactsDir>/.state`.
pub fn dir(artifacts_dir: &Path) -> PathBuf {
    artifacts_dir.join(".state")
}

/// The classes that have a record, sorted.
pub fn recorded_classes(artifacts_dir: &Path) -> Vec<String> {
    let mut classes: Vec<String> = std::fs::read_dir(dir(artifacts_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let class = name.strip_suffix(".json")?;
            (!class.starts_with('.')).then(|| class.to_owned())
        })
        .collect();
    classes.sort();
    classes
}

pub fn file(artifacts_dir: &Path, class: &str) -> PathBuf {
    dir(artifacts_dir).join(format!("{class}.json"))
}

/// The recorded state, `None` when there is none or it cannot be read (then we pull again,
/// which rewrites it).
pub fn read(artifacts_dir: &Path, class: &str) -> Option<ClassState> {
    let path = file(artifacts_dir, class);
    let text = fs::read(&path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::warn!(runtime_class = class, path = %path.display(), error = %e, "unreadable artifact state ignored");
            None
        }
    }
}

/// Writes the state atomically (temp file in the same directory, then rename).
pub fn write(artifacts_dir: &Path, state: &ClassState) -> io::Result<PathBuf> {
    let dir = dir(artifacts_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    // An existing directory keeps its mode through create(): enforce root-only.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    let path = file(artifacts_dir, &state.class);
    let tmp = dir.join(format!(".{}.json.tmp-{}", state.class, std::process::id()));
    let text = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(&text)?;
    out.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn round_trips_root_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = ClassState {
            kata_settings: vec![],
            class: "kata-qemu".into(),
            reference: "r/x:1".into(),
            resolved_digest: "sha256:aa".into(),
            manifest_digest: "sha256:aa".into(),
            path: dir.path().join(".store/sha256:aa"),
            installed_at: 1,
            files: BTreeMap::from([(
                "vmlinux".into(),
                FileRecord {
                    size: 3,
                    sha256: "sha256:bb".into(),
                },
            )]),
            blobs: vec!["sha256:bb".into()],
            kata_configs: vec![],
            kata_version: None,
            previous: vec![],
            retired: vec![],
            versions: BTreeMap::new(),
            rejected: vec![],
            served_by: Some("mirror.example:5001".into()),
            signed_by: None,
            binaries_from_version: false,
            config_file: Some("configuration-qemu.toml".into()),
        };
        let path = write(dir.path(), &state).expect("write");
        assert_eq!(read(dir.path(), "kata-qemu"), Some(state));
        assert_eq!(fs::metadata(&path).expect("file").mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().expect("dir"))
                .expect("dir")
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(read(dir.path(), "other"), None);
    }

    #[test]
    fn a_file_record_matches_whichever_spelling_of_its_digest() {
        let hex = "ab".repeat(32);
        let bare = FileRecord {
            size: 3,
            sha256: hex.clone(),
        };
        let prefixed = FileRecord {
            size: 3,
            sha256: format!("sha256:{hex}"),
        };
        assert!(bare.same_content(&prefixed) && prefixed.same_content(&bare));
        let longer = FileRecord {
            size: 4,
            ..prefixed.clone()
        };
        assert!(!longer.same_content(&prefixed));
        let other = FileRecord {
            size: 3,
            sha256: format!("sha256:{}", "cd".repeat(32)),
        };
        assert!(!other.same_content(&bare));
    }

    #[test]
    fn records_without_served_by_still_load() {
        let old = r#"{"class": "k", "reference": "r/x:1", "resolvedDigest": "sha256:aa",
            "manifestDigest": "sha256:aa", "path": "/a/.store/sha256:aa", "installedAt": 1,
            "files": {}}"#;
        let state: ClassState = serde_json::from_str(old).expect("old record");
        assert_eq!(state.served_by, None);
        assert_eq!(state.config_file, None);
    }
}
