//! Points a kata configuration at the files of its own version: `[hypervisor.*]` `kernel`,
//! `image`, `initrd` and `firmware` are rewritten (format-preserving, toml_edit) to paths in
//! `<artifactsDir>/.store/<digest>/`, so a sandbox never mixes files of two versions. Policies'
//! kata settings (`mutate-runtime`'s `kata-config`, an allowlist with no path-valued key) are
//! written beside the class's configuration by [`render_settings`] (see [`SETTINGS_DIR`]).
//! A class without `runtime.configFile` reads [`DEFAULT_CONFIG_NAME`], a link the install makes to
//! the artifact's one top-level `*.toml` ([`link_default_config`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use toml_edit::{DocumentMut, Item, Table, Value};

use crate::config::{RuntimeClass, RuntimeSettings};
use crate::kata::{KataSection, KataSetting, validate_kata_settings};

/// The keys of a hypervisor section that name files of the artifact.
pub const PATH_KEYS: [&str; 4] = ["kernel", "image", "initrd", "firmware"];

/// The configuration of a class without `runtime.configFile`, at the top of every version: a
/// relative symlink to the artifact's one top-level `*.toml`, made by the install. The name is
/// the config's (it reserves it for `runtime.configFile`), so it lives there.
pub use crate::config::DEFAULT_KATA_CONFIG as DEFAULT_CONFIG_NAME;

/// The configuration a class's stanza names, relative to its version: `runtime.configFile`, else
/// [`DEFAULT_CONFIG_NAME`].
pub fn config_file(runtime: &RuntimeSettings) -> &Path {
    runtime.kata_config_file()
}

/// The stanza's `ConfigPath` for `class` with policies' `settings`: through the class's link
/// (`<artifactsDir>/<class>`), so it never changes with the version.
pub fn config_path(
    artifacts_dir: &Path,
    class: &RuntimeClass,
    settings: &[KataSetting],
) -> PathBuf {
    artifacts_dir
        .join(&class.name)
        .join(settings_path(config_file(&class.runtime), settings))
}

/// Why a kata configuration could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum KataConfigError {
    #[error("{file}: {why}")]
    Bad { file: String, why: String },
    #[error("runtime.configFile {0:?} is not in the artifacts")]
    Missing(String),
    /// A path-valued key pointing where the version may not (`hostpaths.rs`).
    #[error("{file}: {key} = {value:?}: {rule}")]
    Refused {
        file: String,
        key: String,
        value: String,
        rule: String,
    },
    /// `runtime.configFile` unset and more than one configuration to choose from: which one kata
    /// runs is the operator's decision, never a guess.
    #[error(
        "{DEFAULT_CONFIG_NAME}: runtime.configFile is unset and the artifact has several *.toml files at its top ({}): set runtime.configFile to the one kata should use",
        .0.join(", ")
    )]
    SeveralConfigs(Vec<String>),
    /// The artifact ships the name the install links for classes without `runtime.configFile`.
    #[error(
        "{DEFAULT_CONFIG_NAME}: the artifact has an entry of this name at its top, a name kata-nri-manager reserves in every version (for the configuration of classes without runtime.configFile): rename it in the artifact"
    )]
    Reserved,
}

/// Every file and symlink of the tree by file name, as paths relative to the root.
fn index_tree(root: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut index: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(child),
                Ok(_) => index
                    .entry(entry.file_name().to_string_lossy().into_owned())
                    .or_default()
                    .push(child),
                Err(_) => {}
            }
        }
    }
    index
}

/// Which configurations to rewrite: `config_file` (the class's `runtime.configFile`) and every
/// regular `configuration*.toml` in the tree.
fn targets(
    root: &Path,
    index: &BTreeMap<String, Vec<PathBuf>>,
    config_file: Option<&Path>,
) -> Result<Vec<PathBuf>, KataConfigError> {
    let mut out: Vec<PathBuf> = index
        .iter()
        .filter(|(name, _)| name.starts_with("configuration") && name.ends_with(".toml"))
        .flat_map(|(_, paths)| paths.iter().cloned())
        .filter(|rel| fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.file_type().is_file()))
        .collect();
    if let Some(wanted) = config_file {
        let rel = resolve_inside(root, wanted)
            .ok_or_else(|| KataConfigError::Missing(wanted.display().to_string()))?;
        if !out.contains(&rel) {
            out.push(rel);
        }
    }
    out.sort();
    Ok(out)
}

/// `rel` inside `root`, following symlinks but never out of the root.
fn resolve_inside(root: &Path, rel: &Path) -> Option<PathBuf> {
    let root = fs::canonicalize(root).ok()?;
    let real = fs::canonicalize(root.join(rel)).ok()?;
    let inside = real.strip_prefix(&root).ok()?.to_path_buf();
    real.is_file().then_some(inside)
}

/// The regular `*.toml` files at the top of the tree at `root` (not in its directories, not
/// symlinks, not [`DEFAULT_CONFIG_NAME`]), sorted: what k8s-kata-manager took as the class's
/// configuration.
pub fn top_level_configs(root: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") && name != DEFAULT_CONFIG_NAME && entry.file_type()?.is_file() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Refuses a tree that has its own [`DEFAULT_CONFIG_NAME`] at the top: the name is ours in every
/// version, whichever class installs it (classes may share a version).
pub fn check_reserved(root: &Path) -> Result<(), KataConfigError> {
    match fs::symlink_metadata(root.join(DEFAULT_CONFIG_NAME)) {
        Ok(_) => Err(KataConfigError::Reserved),
        Err(_) => Ok(()),
    }
}

/// Links [`DEFAULT_CONFIG_NAME`] in the staged tree at `root` to its one top-level `*.toml` (a
/// relative symlink, so it holds after the rename into the store) and returns that file's name;
/// `None` when the tree has none (the install goes on: the class's pods cannot start, which
/// `status` says). Several are an error. Run before [`rewrite_all`], which rewrites the file
/// through the link.
pub fn link_default_config(root: &Path) -> Result<Option<String>, KataConfigError> {
    check_reserved(root)?;
    let bad = |why: String| KataConfigError::Bad {
        file: DEFAULT_CONFIG_NAME.to_owned(),
        why,
    };
    let mut configs =
        top_level_configs(root).map_err(|e| bad(format!("cannot list the artifact: {e}")))?;
    match configs.len() {
        0 => Ok(None),
        1 => {
            let target = configs.remove(0);
            std::os::unix::fs::symlink(&target, root.join(DEFAULT_CONFIG_NAME))
                .map_err(|e| bad(format!("cannot link it to {target}: {e}")))?;
            Ok(Some(target))
        }
        _ => Err(KataConfigError::SeveralConfigs(configs)),
    }
}

/// What [`DEFAULT_CONFIG_NAME`] of the installed version at `version_dir` resolves to, relative
/// to the version; `None` when it is absent or leads out of the version.
pub fn default_config_target(version_dir: &Path) -> Option<PathBuf> {
    resolve_inside(version_dir, Path::new(DEFAULT_CONFIG_NAME))
}

/// Rewrites the kata configurations under `root` (the staging directory) so their file paths
/// point below `final_dir` (where `root` will be renamed to). Returns the rewritten files,
/// relative to the root.
pub fn rewrite_all(
    root: &Path,
    final_dir: &Path,
    config_file: Option<&Path>,
    binaries: bool,
) -> Result<Vec<PathBuf>, KataConfigError> {
    let index = index_tree(root);
    let files = targets(root, &index, config_file)?;
    for rel in &files {
        let path = root.join(rel);
        let bad = |why: String| KataConfigError::Bad {
            file: rel.display().to_string(),
            why,
        };
        let text = fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let config_dir = rel.parent().unwrap_or(Path::new(""));
        // Paths in the version's final directory, known before the rename.
        let found_in = |value: &str| locate(root, &index, config_dir, value);
        let keys = if binaries {
            Keys::FilesAndBinaries
        } else {
            Keys::Files
        };
        let rewritten = rewrite(&text, keys, &|value| {
            found_in(value).map(|rel| rel.map(|rel| final_dir.join(rel).display().to_string()))
        })
        .map_err(bad)?;
        if let Some(new_text) = rewritten {
            // A fresh file (temp + rename) so a hard link to the original stays unchanged.
            let tmp = path.with_extension("toml.knm-tmp");
            let mode = fs::metadata(&path)
                .map(|m| m.permissions())
                .map_err(|e| bad(e.to_string()))?;
            fs::write(&tmp, new_text).map_err(|e| bad(format!("cannot write: {e}")))?;
            fs::set_permissions(&tmp, mode).map_err(|e| bad(e.to_string()))?;
            fs::rename(&tmp, &path).map_err(|e| bad(format!("cannot replace: {e}")))?;
        }
    }
    Ok(files)
}

/// Where a configured path is found in the tree, relative to the root: the same absolute path
/// under the root (a bundle with `opt/kata/...`), else relative to the configuration, else the
/// one file of that name. `None`: not shipped with the artifact (left as the operator wrote it).
fn locate(
    root: &Path,
    index: &BTreeMap<String, Vec<PathBuf>>,
    config_dir: &Path,
    value: &str,
) -> Result<Option<PathBuf>, String> {
    let as_path = Path::new(value);
    let direct = if as_path.is_absolute() {
        super::paths::relative(as_path.strip_prefix("/").unwrap_or(as_path)).ok()
    } else {
        super::paths::relative(&config_dir.join(as_path)).ok()
    };
    if let Some(rel) = direct
        && fs::symlink_metadata(root.join(&rel)).is_ok()
    {
        return Ok(Some(rel));
    }
    let Some(name) = as_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return Ok(None);
    };
    match index.get(&name).map(Vec::as_slice) {
        Some([one]) => Ok(Some(one.clone())),
        Some(many) if many.len() > 1 => Err(format!(
            "{value:?} matches {} files of the artifact ({}): use the path inside the artifact",
            many.len(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Ok(None),
    }
}

type Locator<'a> = dyn Fn(&str) -> Result<Option<String>, String> + 'a;

/// Which keys of a hypervisor table [`rewrite`] points into the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// The guest's files ([`PATH_KEYS`]).
    Files,
    /// Those, and the programs the shim runs with the lists kata checks them against
    /// ([`BINARY_KEYS`], [`BINARY_LIST_KEYS`]): `runtime.fromArtifact`.
    FilesAndBinaries,
}

/// The programs of a hypervisor table, rewritten with `runtime.fromArtifact`.
pub const BINARY_KEYS: [&str; 4] = ["path", "ctlpath", "jailer_path", "virtio_fs_daemon"];
/// The lists kata checks those programs against (entries may be globs; an entry the artifact
/// ships is rewritten like the key, others are left as written).
pub const BINARY_LIST_KEYS: [&str; 4] = [
    "valid_hypervisor_paths",
    "valid_ctlpaths",
    "valid_jailer_paths",
    "valid_virtio_fs_daemon_paths",
];

/// Rewrites the path keys of every `[hypervisor.*]` table through `locate`, keeping comments and
/// layout. `None` when nothing changed.
pub fn rewrite(text: &str, keys: Keys, locate: &Locator<'_>) -> Result<Option<String>, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let mut changed = false;
    let Some(hypervisors) = doc.get_mut("hypervisor").and_then(Item::as_table_like_mut) else {
        return Ok(None);
    };
    for (name, section) in hypervisors.iter_mut() {
        let Some(section) = section.as_table_like_mut() else {
            continue;
        };
        let binaries: &[&str] = match keys {
            Keys::Files => &[],
            Keys::FilesAndBinaries => &BINARY_KEYS,
        };
        if keys == Keys::FilesAndBinaries {
            for key in BINARY_LIST_KEYS {
                let Some(Item::Value(Value::Array(list))) = section.get_mut(key) else {
                    continue;
                };
                for entry in list.iter_mut() {
                    let Value::String(current) = entry else {
                        continue;
                    };
                    let value = current.value().clone();
                    if let Ok(Some(new)) = locate(&value)
                        && new != value
                    {
                        let decor = current.decor().clone();
                        let mut replacement = toml_edit::Formatted::new(new);
                        *replacement.decor_mut() = decor;
                        *current = replacement;
                        changed = true;
                    }
                }
            }
        }
        for key in PATH_KEYS.iter().chain(binaries) {
            let key = *key;
            let Some(Item::Value(Value::String(current))) = section.get_mut(key) else {
                continue;
            };
            let value = current.value().clone();
            if value.is_empty() {
                continue;
            }
            match locate(&value) {
                Ok(Some(new)) if new != value => {
                    let decor = current.decor().clone();
                    let mut replacement = toml_edit::Formatted::new(new);
                    *replacement.decor_mut() = decor;
                    *current = replacement;
                    changed = true;
                }
                Ok(_) => {
                    tracing::warn!(hypervisor = %name.get(), key, path = %value, "kata configuration names a file the artifact does not ship; left unchanged");
                }
                Err(why) => return Err(format!("[hypervisor.{}] {key}: {why}", name.get())),
            }
        }
    }
    Ok(changed.then(|| doc.to_string()))
}

/// Writes policies' kata settings into the text of a kata configuration, keeping comments and
/// layout: each `[hypervisor.*]` setting into every hypervisor table of the file (a kata
/// configuration has one), `[runtime]` and `[agent.kata]` settings into those tables (created
/// when absent). A value the file already has is replaced in place, with its comment;
/// `guest-kernel-params` is appended to the file's own `kernel_params`, so the artifact's
/// parameters stay. Apply to the artifact's own text, once: a second application would append the
/// kernel parameters again.
///
/// The settings are validated again here ([`validate_kata_settings`]): this writes a file kata
/// runs from as root, and the caller may hold settings from a saved record rather than fresh
/// from the guard. `file` is for messages.
pub fn apply_settings(
    file: &str,
    text: &str,
    settings: &[KataSetting],
) -> Result<String, KataConfigError> {
    let bad = |why: String| KataConfigError::Bad {
        file: file.to_owned(),
        why,
    };
    validate_kata_settings(settings)
        .map_err(|why| bad(format!("policy settings refused: {why}")))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| bad(format!("not valid TOML: {e}")))?;
    for setting in settings {
        let (section, key) = setting.toml_key();
        // The setting list has no path-valued key; this keeps it so if the list ever grows.
        if PATH_KEYS.contains(&key) || key.ends_with("path") || key.contains("paths") {
            return Err(bad(format!(
                "{key} is a path-valued key; policies may not set it"
            )));
        }
        match section {
            KataSection::Hypervisor => {
                let hypervisors = doc
                    .get_mut("hypervisor")
                    .and_then(Item::as_table_like_mut)
                    .ok_or_else(|| {
                        bad("no [hypervisor.*] table to apply policy settings to".into())
                    })?;
                let mut applied = false;
                for (_, section) in hypervisors.iter_mut() {
                    if let Some(table) = section.as_table_like_mut() {
                        set_value(table, key, setting);
                        applied = true;
                    }
                }
                if !applied {
                    return Err(bad(
                        "no [hypervisor.*] table to apply policy settings to".into()
                    ));
                }
            }
            KataSection::Runtime => {
                let table = table_at(&mut doc, &["runtime"]).map_err(bad)?;
                set_value(table, key, setting);
            }
            KataSection::Agent => {
                let table = table_at(&mut doc, &["agent", "kata"]).map_err(bad)?;
                set_value(table, key, setting);
            }
        }
    }
    Ok(doc.to_string())
}

/// Where policies' settings for a class's configuration are written inside a version:
/// `.kata-settings/<fingerprint>/<configFile>`. Keyed by the settings, so classes that share a
/// version each get theirs, and a file once written never changes under a running sandbox.
pub const SETTINGS_DIR: &str = ".kata-settings";

/// The configuration kata reads for a class (relative to the version's directory):
/// `config_file` itself without settings, its rendering with them.
pub fn settings_path(config_file: &Path, settings: &[KataSetting]) -> PathBuf {
    if settings.is_empty() {
        return config_file.to_owned();
    }
    Path::new(SETTINGS_DIR)
        .join(settings_fingerprint(settings))
        .join(config_file)
}

/// Writes `config_file` of the version in `version_dir` with `settings` applied to
/// [`settings_path`] (a fresh file: temp + rename, mode 0644), unless it is there already.
/// Returns that path, relative to `version_dir`; `None` when there are no settings.
pub fn render_settings(
    version_dir: &Path,
    config_file: &Path,
    settings: &[KataSetting],
) -> Result<Option<PathBuf>, KataConfigError> {
    if settings.is_empty() {
        return Ok(None);
    }
    let name = config_file.display().to_string();
    let bad = |why: String| KataConfigError::Bad {
        file: name.clone(),
        why,
    };
    if !config_file
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(KataConfigError::Missing(name.clone()));
    }
    let source = resolve_inside(version_dir, config_file)
        .ok_or_else(|| KataConfigError::Missing(name.clone()))?;
    let rel = settings_path(config_file, settings);
    let target = version_dir.join(&rel);
    if target.is_file() {
        return Ok(Some(rel));
    }
    let text = fs::read_to_string(version_dir.join(&source))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let rendered = apply_settings(&name, &text, settings)?;
    let parent = target.parent().unwrap_or(version_dir);
    fs::create_dir_all(parent)
        .map_err(|e| bad(format!("cannot create {}: {e}", parent.display())))?;
    let tmp = target.with_extension("toml.knm-tmp");
    fs::write(&tmp, rendered).map_err(|e| bad(format!("cannot write: {e}")))?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(|e| bad(e.to_string()))?;
    fs::rename(&tmp, &target).map_err(|e| bad(format!("cannot install: {e}")))?;
    Ok(Some(rel))
}

/// A short stable name of a settings list (`sha256` of its JSON, first 16 hex digits; empty list
/// → `none`), to record beside an installed version: a different list needs the configuration
/// written again from the artifact's own text.
pub fn settings_fingerprint(settings: &[KataSetting]) -> String {
    if settings.is_empty() {
        return "none".to_owned();
    }
    // The settings serialize to plain JSON (no maps), so the text is stable.
    let json = serde_json::to_vec(settings).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The table at `path`, created (as a standard `[a.b]` table) when absent.
fn table_at<'d>(
    doc: &'d mut DocumentMut,
    path: &[&str],
) -> Result<&'d mut dyn toml_edit::TableLike, String> {
    let mut item = doc.as_item_mut();
    for (depth, name) in path.iter().enumerate() {
        let table = item
            .as_table_like_mut()
            .ok_or_else(|| format!("[{}] is not a table", path[..depth].join(".")))?;
        if table.get(name).is_none() {
            let mut new = Table::new();
            // An intermediate `[agent]` of its own would be an empty header: leave it implicit.
            new.set_implicit(depth + 1 < path.len());
            table.insert(name, Item::Table(new));
        }
        item = table
            .get_mut(name)
            .ok_or_else(|| format!("[{}] vanished", path[..=depth].join(".")))?;
    }
    item.as_table_like_mut()
        .ok_or_else(|| format!("[{}] is not a table", path.join(".")))
}

/// Sets `key` in `table` to the setting's value, keeping the decor (comments, spacing) of a value
/// that was there.
fn set_value(table: &mut dyn toml_edit::TableLike, key: &str, setting: &KataSetting) {
    let old = table.get(key).and_then(Item::as_value);
    let new = match setting {
        KataSetting::DefaultVcpus(n)
        | KataSetting::DefaultMaxVcpus(n)
        | KataSetting::DefaultMemoryMib(n)
        | KataSetting::MemorySlots(n)
        | KataSetting::PcieRootPorts(n)
        | KataSetting::AgentDialTimeoutSecs(n) => Value::from(i64::from(*n)),
        KataSetting::EnableIommu(b)
        | KataSetting::StaticSandboxResourceMgmt(b)
        | KataSetting::SandboxCgroupOnly(b) => Value::from(*b),
        KataSetting::HotPlugVfio(port) | KataSetting::ColdPlugVfio(port) => {
            Value::from(port.kata_value())
        }
        KataSetting::GuestKernelParams(params) => {
            let own = old.and_then(Value::as_str).unwrap_or("").trim();
            let added = params
                .split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            Value::from(match (own.is_empty(), added.is_empty()) {
                (_, true) => own.to_owned(),
                (true, false) => added,
                (false, false) => format!("{own} {added}"),
            })
        }
    };
    match table.get_mut(key) {
        // In place: the key keeps its position, the value its comment.
        Some(Item::Value(old)) => {
            let decor = old.decor().clone();
            *old = new;
            *old.decor_mut() = decor;
        }
        Some(other) => *other = Item::Value(new),
        None => {
            table.insert(key, Item::Value(new));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"# kata configuration
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinux.container"   # the guest kernel
image = "/opt/kata/share/kata-containers/kata-containers.img"
initrd = ""
# firmware left out

[runtime]
enable_debug = false
"#;

    #[test]
    fn rewrites_paths_and_keeps_the_rest() {
        let out = rewrite(CONFIG, Keys::Files, &|v| {
            Ok(Some(format!(
                "/store/sha256:1{}",
                v.trim_start_matches("/opt/kata")
            )))
        })
        .expect("rewrite")
        .expect("changed");
        assert_eq!(
            out,
            CONFIG
                .replace(
                    "\"/opt/kata/share/kata-containers/vmlinux.container\"",
                    "\"/store/sha256:1/share/kata-containers/vmlinux.container\""
                )
                .replace(
                    "\"/opt/kata/share/kata-containers/kata-containers.img\"",
                    "\"/store/sha256:1/share/kata-containers/kata-containers.img\""
                )
        );
    }

    /// kata-deploy's `configuration-qemu.toml` with `runtime.fromArtifact`: the hypervisor,
    /// virtiofsd and their allowlists name the version's programs; entries it does not ship stay.
    #[test]
    fn from_artifact_points_the_programs_into_the_version() {
        let text = r#"[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinux.container"
valid_hypervisor_paths = ["/opt/kata/bin/qemu-system-x86_64", "/usr/bin/qemu-kvm"]
virtio_fs_daemon = "/opt/kata/libexec/virtiofsd"
valid_virtio_fs_daemon_paths = ["/opt/kata/libexec/virtiofsd"]
"#;
        let shipped = [
            "/opt/kata/bin/qemu-system-x86_64",
            "/opt/kata/share/kata-containers/vmlinux.container",
            "/opt/kata/libexec/virtiofsd",
        ];
        let locate = |v: &str| {
            Ok(shipped
                .contains(&v)
                .then(|| format!("/store/sha256:1{}", v.trim_start_matches("/opt/kata"))))
        };
        let out = rewrite(text, Keys::FilesAndBinaries, &locate)
            .expect("rewrite")
            .expect("changed");
        assert_eq!(
            out,
            r#"[hypervisor.qemu]
path = "/store/sha256:1/bin/qemu-system-x86_64"
kernel = "/store/sha256:1/share/kata-containers/vmlinux.container"
valid_hypervisor_paths = ["/store/sha256:1/bin/qemu-system-x86_64", "/usr/bin/qemu-kvm"]
virtio_fs_daemon = "/store/sha256:1/libexec/virtiofsd"
valid_virtio_fs_daemon_paths = ["/store/sha256:1/libexec/virtiofsd"]
"#
        );
        // Without the opt-in only the guest's files move.
        let files_only = rewrite(text, Keys::Files, &locate)
            .expect("rewrite")
            .expect("changed");
        assert!(files_only.contains("path = \"/opt/kata/bin/qemu-system-x86_64\""));
        assert!(files_only.contains("virtio_fs_daemon = \"/opt/kata/libexec/virtiofsd\""));
        assert!(files_only.contains("kernel = \"/store/sha256:1/share/"));
    }

    #[test]
    fn locates_files_in_a_bundle_or_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("staging");
        let share = root.join("opt/kata/share/kata-containers");
        let defaults = root.join("opt/kata/share/defaults/kata-containers");
        fs::create_dir_all(&share).expect("share");
        fs::create_dir_all(&defaults).expect("defaults");
        fs::write(share.join("vmlinux-6"), "k").expect("kernel");
        std::os::unix::fs::symlink("vmlinux-6", share.join("vmlinux.container")).expect("link");
        fs::write(root.join("kata-containers.img"), "i").expect("image");
        fs::write(defaults.join("configuration-qemu.toml"), CONFIG).expect("config");
        let final_dir = Path::new("/opt/knm/.store/sha256:ab");
        let files = rewrite_all(&root, final_dir, None, false).expect("rewritten");
        assert_eq!(
            files,
            vec![PathBuf::from(
                "opt/kata/share/defaults/kata-containers/configuration-qemu.toml"
            )]
        );
        let text = fs::read_to_string(defaults.join("configuration-qemu.toml")).expect("read");
        assert!(text.contains(
            "kernel = \"/opt/knm/.store/sha256:ab/opt/kata/share/kata-containers/vmlinux.container\"   # the guest kernel"
        ), "{text}");
        assert!(
            text.contains("image = \"/opt/knm/.store/sha256:ab/kata-containers.img\""),
            "{text}"
        );
        assert!(
            text.contains("path = \"/opt/kata/bin/qemu-system-x86_64\""),
            "{text}"
        );
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = rewrite_all(
            dir.path(),
            Path::new("/x"),
            Some(Path::new("configuration-x.toml")),
            false,
        )
        .expect_err("missing");
        assert!(error.to_string().contains("configuration-x.toml"));
    }

    #[test]
    fn ambiguous_names_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["a", "b"] {
            fs::create_dir_all(dir.path().join(sub)).expect("dir");
            fs::write(dir.path().join(sub).join("vmlinux"), "k").expect("kernel");
        }
        fs::write(
            dir.path().join("configuration.toml"),
            "[hypervisor.clh]\nkernel = \"/usr/share/vmlinux\"\n",
        )
        .expect("config");
        let error = rewrite_all(dir.path(), Path::new("/x"), None, false).expect_err("ambiguous");
        assert!(error.to_string().contains("matches 2 files"), "{error}");
    }

    const GPU_CONFIG: &str = r#"# kata configuration for GPUs
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel_params = "console=hvc0"  # the artifact's own
default_vcpus = 1 # boot vCPUs
cold_plug_vfio = "no-port"

[agent.kata]
enable_debug = false
"#;

    #[test]
    fn applies_policy_settings_in_place_and_keeps_the_rest() {
        use crate::kata::VfioPort;
        let settings = [
            KataSetting::DefaultVcpus(4),
            KataSetting::DefaultMemoryMib(8192),
            KataSetting::ColdPlugVfio(VfioPort::RootPort),
            KataSetting::PcieRootPorts(2),
            KataSetting::GuestKernelParams("iommu=pt  pci=realloc".into()),
            KataSetting::SandboxCgroupOnly(true),
            KataSetting::AgentDialTimeoutSecs(90),
        ];
        let out = apply_settings("configuration-qemu.toml", GPU_CONFIG, &settings).expect("apply");
        let expected = r#"# kata configuration for GPUs
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel_params = "console=hvc0 iommu=pt pci=realloc"  # the artifact's own
default_vcpus = 4 # boot vCPUs
cold_plug_vfio = "root-port"
default_memory = 8192
pcie_root_port = 2

[agent.kata]
enable_debug = false
dial_timeout = 90

[runtime]
sandbox_cgroup_only = true
"#;
        assert_eq!(out, expected);
        // The result is TOML kata can read, with the types kata expects.
        let doc: DocumentMut = out.parse().expect("toml");
        assert_eq!(
            doc["hypervisor"]["qemu"]["default_vcpus"].as_integer(),
            Some(4)
        );
        assert_eq!(doc["runtime"]["sandbox_cgroup_only"].as_bool(), Some(true));
    }

    #[test]
    fn applies_to_every_hypervisor_table_and_creates_kernel_params() {
        let text = "[hypervisor.clh]\npath = \"/opt/kata/bin/cloud-hypervisor\"\n";
        let settings = [
            KataSetting::EnableIommu(true),
            KataSetting::GuestKernelParams("quiet".into()),
        ];
        let out = apply_settings("c.toml", text, &settings).expect("apply");
        assert_eq!(
            out,
            "[hypervisor.clh]\npath = \"/opt/kata/bin/cloud-hypervisor\"\nenable_iommu = true\nkernel_params = \"quiet\"\n"
        );
        assert_eq!(apply_settings("c.toml", text, &[]).expect("none"), text);
    }

    #[test]
    fn refuses_bad_settings_and_files_without_a_hypervisor() {
        let refused = apply_settings(
            "c.toml",
            GPU_CONFIG,
            &[KataSetting::GuestKernelParams("init=/bin/sh".into())],
        )
        .expect_err("refused");
        assert!(
            refused.to_string().contains("policy settings refused"),
            "{refused}"
        );
        let out_of_range = apply_settings("c.toml", GPU_CONFIG, &[KataSetting::DefaultVcpus(0)]);
        assert!(out_of_range.is_err());
        let none = apply_settings("c.toml", "[runtime]\n", &[KataSetting::DefaultVcpus(2)])
            .expect_err("no hypervisor");
        assert!(
            none.to_string().contains("no [hypervisor.*] table"),
            "{none}"
        );
        assert!(apply_settings("c.toml", "[[x", &[]).is_err());
    }

    #[test]
    fn renders_settings_beside_the_configuration_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Path::new("share/configuration-qemu.toml");
        fs::create_dir_all(dir.path().join("share")).expect("mkdir");
        fs::write(dir.path().join(config), GPU_CONFIG).expect("write");
        let settings = [KataSetting::MemorySlots(16)];

        assert_eq!(
            render_settings(dir.path(), config, &[]).expect("none"),
            None
        );
        assert_eq!(settings_path(config, &[]), config);
        let rel = render_settings(dir.path(), config, &settings)
            .expect("render")
            .expect("a file");
        assert_eq!(rel, settings_path(config, &settings));
        assert!(rel.starts_with(SETTINGS_DIR));
        assert!(rel.ends_with(config));
        let text = fs::read_to_string(dir.path().join(&rel)).expect("read");
        assert!(text.contains("memory_slots = 16"), "{text}");
        assert_eq!(
            fs::read_to_string(dir.path().join(config)).expect("base"),
            GPU_CONFIG,
            "the artifact's own configuration is left as it is"
        );
        let mode = fs::metadata(dir.path().join(&rel))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        // Once written, a rendering is never written again (a sandbox may be reading it).
        fs::write(dir.path().join(&rel), "kept").expect("overwrite");
        render_settings(dir.path(), config, &settings).expect("again");
        assert_eq!(
            fs::read_to_string(dir.path().join(&rel)).expect("read"),
            "kept"
        );

        for bad in [
            "../configuration-qemu.toml",
            "/etc/kata.toml",
            "share/missing.toml",
        ] {
            assert!(matches!(
                render_settings(dir.path(), Path::new(bad), &settings),
                Err(KataConfigError::Missing(_))
            ));
        }
    }

    #[test]
    fn fingerprints_tell_setting_lists_apart() {
        let a = settings_fingerprint(&[KataSetting::DefaultVcpus(2)]);
        assert_eq!(a, settings_fingerprint(&[KataSetting::DefaultVcpus(2)]));
        assert_ne!(a, settings_fingerprint(&[KataSetting::DefaultVcpus(3)]));
        assert_eq!(a.len(), 16);
        assert_eq!(settings_fingerprint(&[]), "none");
    }

    /// A tree with `names` as regular files (`dir/name` makes the directory).
    fn tree(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in names {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, CONFIG).expect("write");
        }
        dir
    }

    #[test]
    fn links_the_one_top_level_toml_and_rewrites_it_once_through_the_link() {
        let dir = tree(&[
            "configuration-qemu.toml",
            "share/kata-containers/vmlinux.container",
            "share/extra.toml",
        ]);
        let root = dir.path();
        fs::write(root.join("kata-containers.img"), "i").expect("image");
        // Neither a symlink nor a file below the top is a candidate.
        std::os::unix::fs::symlink("configuration-qemu.toml", root.join("alias.toml"))
            .expect("symlink");

        assert_eq!(
            link_default_config(root).expect("linked").as_deref(),
            Some("configuration-qemu.toml")
        );
        let alias = root.join(DEFAULT_CONFIG_NAME);
        assert_eq!(
            fs::read_link(&alias).expect("a symlink"),
            Path::new("configuration-qemu.toml"),
            "relative, so it holds after the rename into the store"
        );
        let final_dir = Path::new("/opt/knm/.store/sha256:ab");
        let files = rewrite_all(root, final_dir, Some(Path::new(DEFAULT_CONFIG_NAME)), false)
            .expect("rewritten");
        assert_eq!(files, [PathBuf::from("configuration-qemu.toml")]);
        assert!(
            fs::symlink_metadata(&alias)
                .expect("alias")
                .file_type()
                .is_symlink(),
            "the rewrite replaces the file, not the link"
        );
        let text = fs::read_to_string(&alias).expect("read through the link");
        assert!(
            text.contains("image = \"/opt/knm/.store/sha256:ab/kata-containers.img\""),
            "{text}"
        );
        assert_eq!(
            default_config_target(root),
            Some("configuration-qemu.toml".into())
        );
    }

    #[test]
    fn a_top_level_toml_of_any_name_is_rewritten_through_the_link() {
        let dir = tree(&["kata-gpu.toml"]);
        fs::write(dir.path().join("kata-containers.img"), "i").expect("image");
        link_default_config(dir.path()).expect("linked");
        let files = rewrite_all(
            dir.path(),
            Path::new("/x"),
            Some(Path::new(DEFAULT_CONFIG_NAME)),
            false,
        )
        .expect("rewritten");
        assert_eq!(files, [PathBuf::from("kata-gpu.toml")]);
        let text = fs::read_to_string(dir.path().join("kata-gpu.toml")).expect("read");
        assert!(text.contains("\"/x/kata-containers.img\""), "{text}");
    }

    #[test]
    fn several_top_level_tomls_are_an_error_that_lists_them() {
        let dir = tree(&["b.toml", "a.toml", "sub/c.toml"]);
        let error = link_default_config(dir.path()).expect_err("several");
        assert!(
            matches!(&error, KataConfigError::SeveralConfigs(found) if found == &["a.toml", "b.toml"]),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "kata-nri-manager.toml: runtime.configFile is unset and the artifact has several *.toml files at its top (a.toml, b.toml): set runtime.configFile to the one kata should use"
        );
        assert!(fs::symlink_metadata(dir.path().join(DEFAULT_CONFIG_NAME)).is_err());
    }

    #[test]
    fn no_top_level_toml_links_nothing() {
        let dir = tree(&["opt/kata/share/defaults/kata-containers/configuration-qemu.toml"]);
        assert_eq!(link_default_config(dir.path()).expect("none"), None);
        assert!(fs::symlink_metadata(dir.path().join(DEFAULT_CONFIG_NAME)).is_err());
        assert_eq!(default_config_target(dir.path()), None);
    }

    #[test]
    fn an_artifact_may_not_carry_the_reserved_name() {
        let dir = tree(&[DEFAULT_CONFIG_NAME]);
        assert!(matches!(
            link_default_config(dir.path()),
            Err(KataConfigError::Reserved)
        ));
        assert!(matches!(
            check_reserved(dir.path()),
            Err(KataConfigError::Reserved)
        ));
        // A symlink of that name too: whatever it is, the name is ours.
        let link = tree(&["configuration.toml"]);
        std::os::unix::fs::symlink("configuration.toml", link.path().join(DEFAULT_CONFIG_NAME))
            .expect("symlink");
        let error = link_default_config(link.path()).expect_err("reserved");
        assert!(error.to_string().contains("reserves"), "{error}");
        assert!(check_reserved(tree(&["configuration.toml"]).path()).is_ok());
    }

    #[test]
    fn settings_render_through_the_link() {
        let dir = tree(&[]);
        fs::write(dir.path().join("configuration-qemu.toml"), GPU_CONFIG).expect("write");
        link_default_config(dir.path()).expect("linked");
        let settings = [KataSetting::DefaultVcpus(4)];
        let rel = render_settings(dir.path(), Path::new(DEFAULT_CONFIG_NAME), &settings)
            .expect("render")
            .expect("a file");
        assert_eq!(
            rel,
            settings_path(Path::new(DEFAULT_CONFIG_NAME), &settings)
        );
        assert!(rel.ends_with(DEFAULT_CONFIG_NAME));
        let rendered = dir.path().join(&rel);
        assert!(
            fs::symlink_metadata(&rendered)
                .expect("rendering")
                .file_type()
                .is_file()
        );
        let text = fs::read_to_string(&rendered).expect("read");
        assert!(text.contains("default_vcpus = 4 # boot vCPUs"), "{text}");
    }

    #[test]
    fn the_stanza_names_the_config_file_or_the_reserved_name() {
        let runtime = RuntimeSettings::default();
        assert_eq!(config_file(&runtime), Path::new(DEFAULT_CONFIG_NAME));
        let runtime = RuntimeSettings {
            config_file: Some("share/configuration-qemu.toml".into()),
            ..RuntimeSettings::default()
        };
        assert_eq!(
            config_file(&runtime),
            Path::new("share/configuration-qemu.toml")
        );
    }
}
