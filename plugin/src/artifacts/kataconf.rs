//! Points a kata configuration at the files of its own version: `[hypervisor.*]` `kernel`,
//! `image`, `initrd` and `firmware` are rewritten (format-preserving, toml_edit) to paths in
//! `<artifactsDir>/.store/<digest>/`, so a sandbox never mixes files of two versions.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Value};

/// The keys of a hypervisor section that name files of the artifact.
pub const PATH_KEYS: [&str; 4] = ["kernel", "image", "initrd", "firmware"];

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

/// Rewrites the kata configurations under `root` (the staging directory) so their file paths
/// point below `final_dir` (where `root` will be renamed to). Returns the rewritten files,
/// relative to the root.
pub fn rewrite_all(
    root: &Path,
    final_dir: &Path,
    config_file: Option<&Path>,
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
        let rewritten = rewrite(&text, &|value| {
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

/// Rewrites the path keys of every `[hypervisor.*]` table through `locate`, keeping comments and
/// layout. `None` when nothing changed.
pub fn rewrite(text: &str, locate: &Locator<'_>) -> Result<Option<String>, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let mut changed = false;
    let Some(hypervisors) = doc.get_mut("hypervisor").and_then(Item::as_table_like_mut) else {
        return Ok(None);
    };
    for (name, section) in hypervisors.iter_mut() {
        let Some(section) = section.as_table_like_mut() else {
            continue;
        };
        for key in PATH_KEYS {
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
        let out = rewrite(CONFIG, &|v| {
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
        let files = rewrite_all(&root, final_dir, None).expect("rewritten");
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
        let error = rewrite_all(dir.path(), Path::new("/x"), None).expect_err("ambiguous");
        assert!(error.to_string().contains("matches 2 files"), "{error}");
    }
}
