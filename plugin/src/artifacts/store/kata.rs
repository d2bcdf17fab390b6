//! A version's kata configurations: the `kata-nri-manager.toml` link, the rewrite to the final
//! directory, the host-path check, and the policies' kata settings rendered into the version.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Inner;
use super::disk::{blocking, copy_tree, hash_file};
use crate::artifacts::error::{ArtifactError, Result};
use crate::artifacts::hostpaths;
use crate::artifacts::kataconf;
use crate::artifacts::state::{self, ClassState, FileRecord};
use crate::config::RuntimeClass;
use crate::kata::KataSetting;

impl Inner {
    /// Links `kata-nri-manager.toml` for a class without `runtime.configFile`, rewrites the kata
    /// configurations to the final directory and records their new digests. Returns the
    /// rewritten files and the artifact's configuration the stanza names (for the record;
    /// `None`: the artifact has none).
    pub(super) async fn rewrite_kata_configs(
        &self,
        class: &RuntimeClass,
        root: &Path,
        final_dir: &Path,
        kata_settings: &[KataSetting],
        files: &mut BTreeMap<String, FileRecord>,
    ) -> Result<(Vec<String>, Option<String>)> {
        let (root, final_dir) = (root.to_owned(), final_dir.to_owned());
        let configured = class.runtime.config_file.clone();
        let name = class.name.clone();
        let allowed = self.settings.allowed_host_paths.clone();
        let binaries_from_version = class.runtime.from_artifact.is_some();
        let allowed_keys = self.settings.allowed_keys.clone();
        let allowed_arguments = self.settings.allowed_arguments.clone();
        let settings = kata_settings.to_vec();
        let (rewritten, rendered, config_file) = blocking(&name, move || {
            // Before the rewrite, which then rewrites the linked file through the link (once:
            // it resolves it), and renders the settings from it.
            let (config_file, recorded) = match configured {
                Some(file) => {
                    kataconf::check_reserved(&root)?;
                    let recorded = file.display().to_string();
                    (Some(file), Some(recorded))
                }
                None => match kataconf::link_default_config(&root)? {
                    Some(target) => (
                        Some(PathBuf::from(kataconf::DEFAULT_CONFIG_NAME)),
                        Some(target),
                    ),
                    None => (None, None),
                },
            };
            let files = kataconf::rewrite_all(
                &root,
                &final_dir,
                config_file.as_deref(),
                binaries_from_version,
            )?;
            // After the rewrite, so the paths checked are the ones kata will read; before the
            // commit, so a refused version never becomes current.
            let rule = hostpaths::HostPathRule {
                version_dir: &final_dir,
                allowed: &allowed,
                binaries_from_version,
                allowed_keys: &allowed_keys,
                allowed_arguments: &allowed_arguments,
            };
            rule.check_all(&root, &files)?;
            let rendered = match &config_file {
                Some(config_file) => render_checked(&rule, &root, config_file, &settings)?,
                None => None,
            };
            Ok::<_, kataconf::KataConfigError>((hash_all(&root, &files), rendered, recorded))
        })
        .await?
        .map_err(|e| kata_config_error(&name, e))?;
        if config_file.is_none() {
            // Installed all the same: refusing would change nothing for the class's pods (the
            // stanza names the file either way) and would hide the version's other problems.
            tracing::warn!(
                runtime_class = %class.name,
                config_path = %kataconf::config_path(&self.settings.artifacts_dir, class, kata_settings).display(),
                "kata will refuse to start pods of this class: the artifact has no *.toml at its top and runtime.configFile is unset, so the stanza's ConfigPath names a file this artifact does not provide; set runtime.configFile (to a kata configuration inside the artifact)"
            );
            if !kata_settings.is_empty() {
                tracing::warn!(runtime_class = %class.name, settings = ?kata_settings, "policies' kata settings not rendered: the artifact has no kata configuration to render them into");
            }
        }
        let mut names = Vec::new();
        for (rel, record) in rewritten {
            let record = record.map_err(self.io(&name, "hashing", Path::new(&rel)))?;
            files.insert(rel.clone(), record);
            names.push(rel);
        }
        if let Some((rel, record)) = rendered {
            let record = record.map_err(self.io(&name, "hashing", Path::new(&rel)))?;
            files.insert(rel, record);
        }
        Ok((names, config_file))
    }

    /// The kata settings this ensure renders: the daemon's decision for the class, else what
    /// its record says.
    pub(super) fn wanted_settings(
        &self,
        class: &RuntimeClass,
        recorded: Option<&ClassState>,
    ) -> Vec<KataSetting> {
        let decided = self
            .kata_settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&class.name)
            .cloned();
        decided
            .or_else(|| recorded.map(|state| state.kata_settings.clone()))
            .unwrap_or_default()
    }

    /// The installed version with `wanted` rendered into it: a new file in the version (never
    /// a changed one), checked like the rest of its configuration, then recorded. Unchanged
    /// when it already has that rendering.
    pub(super) async fn settle(
        self: &Arc<Self>,
        class: &RuntimeClass,
        state: &ClassState,
        wanted: &[KataSetting],
    ) -> Result<ClassState> {
        if state.kata_settings == wanted && rendered_there(class, wanted, state) {
            return Ok(state.clone());
        }
        let (inner, class, state, wanted) = (
            Arc::clone(self),
            class.clone(),
            state.clone(),
            wanted.to_vec(),
        );
        blocking(&class.name.clone(), move || {
            let name = class.name.as_str();
            let _lock = inner.lock_class(name)?;
            // A fresh read under the lock: a rollback meanwhile is what this must build on.
            let mut fresh = state::read(&inner.settings.artifacts_dir, name)
                .filter(|fresh| fresh.manifest_digest == state.manifest_digest)
                .unwrap_or(state);
            match config_in_version(&class, &fresh) {
                None if !wanted.is_empty() => {
                    tracing::warn!(settings = ?wanted, "policies' kata settings not rendered: the installed artifact has no kata configuration to render them into");
                }
                _ => {}
            }
            if !rendered_there(&class, &wanted, &fresh)
                && let Some(config_file) = config_in_version(&class, &fresh)
            {
                let rule = hostpaths::HostPathRule {
                    version_dir: &fresh.path,
                    allowed: &inner.settings.allowed_host_paths,
                    binaries_from_version: class.runtime.from_artifact.is_some(),
                    allowed_keys: &inner.settings.allowed_keys,
                    allowed_arguments: &inner.settings.allowed_arguments,
                };
                let rendered = render_checked(&rule, &fresh.path, &config_file, &wanted)
                    .map_err(|e| kata_config_error(name, e))?;
                if let Some((rel, record)) = rendered {
                    let record = record.map_err(inner.io(name, "hashing", Path::new(&rel)))?;
                    tracing::info!(file = %rel, "policy kata settings rendered into the installed version");
                    fresh.files.insert(rel, record);
                }
            }
            fresh.kata_settings = wanted;
            inner.record(&fresh)?;
            Ok(fresh)
        })
        .await?
    }
}

/// Whether `state`'s version has `wanted` rendered into it (or needs no rendering).
fn rendered_there(class: &RuntimeClass, wanted: &[KataSetting], state: &ClassState) -> bool {
    config_in_version(class, state).is_none_or(|config| {
        wanted.is_empty()
            || state.files.contains_key(
                &kataconf::settings_path(&config, wanted)
                    .display()
                    .to_string(),
            )
    })
}

/// The configuration the class's stanza names that `state`'s version provides, relative to the
/// version: `runtime.configFile`, else `kata-nri-manager.toml` when the install linked it;
/// `None` when the artifact has none (nothing to render settings into).
pub(super) fn config_in_version(class: &RuntimeClass, state: &ClassState) -> Option<PathBuf> {
    match &class.runtime.config_file {
        Some(file) => Some(file.clone()),
        None => state
            .config_file
            .is_some()
            .then(|| PathBuf::from(kataconf::DEFAULT_CONFIG_NAME)),
    }
}

/// What the record says the class's stanza names in the version at `version_dir`: its
/// `runtime.configFile`, else what `kata-nri-manager.toml` links to.
pub(super) fn config_file_of(class: &RuntimeClass, version_dir: &Path) -> Option<String> {
    match &class.runtime.config_file {
        Some(file) => Some(file.display().to_string()),
        None => kataconf::default_config_target(version_dir).map(|t| t.display().to_string()),
    }
}

/// Whether the version has the configuration a class without `runtime.configFile` reads
/// (`kata-nri-manager.toml`), or cannot have one (its artifact has no top-level `*.toml`). A
/// version installed before that link existed, or one that lost it, has neither: it is pulled
/// again, and the install links it. Other entries of a version are not checked; this one is, as
/// the stanza names it.
pub(super) fn default_config_in_place(class: &RuntimeClass, state: &ClassState) -> bool {
    class.runtime.config_file.is_some()
        || state.path.join(kataconf::DEFAULT_CONFIG_NAME).is_file()
        || (state.config_file.is_none()
            && kataconf::top_level_configs(&state.path).is_ok_and(|found| found.is_empty()))
}

/// Renders `settings` into the version at `root` (see [`kataconf::render_settings`]), checks
/// the rendering's paths like the version's own configurations, and hashes it.
pub(super) fn render_checked(
    rule: &hostpaths::HostPathRule<'_>,
    root: &Path,
    config_file: &Path,
    settings: &[KataSetting],
) -> std::result::Result<Option<(String, io::Result<FileRecord>)>, kataconf::KataConfigError> {
    let Some(rel) = kataconf::render_settings(root, config_file, settings)? else {
        return Ok(None);
    };
    if let Err(e) = rule.check_all(root, std::slice::from_ref(&rel)) {
        let _ = fs::remove_file(root.join(&rel));
        return Err(e);
    }
    let record = hash_file(&root.join(&rel));
    Ok(Some((rel.display().to_string(), record)))
}

fn hash_all(root: &Path, files: &[PathBuf]) -> Vec<(String, io::Result<FileRecord>)> {
    files
        .iter()
        .map(|rel| (rel.display().to_string(), hash_file(&root.join(rel))))
        .collect()
}

pub(super) fn kata_config_error(class: &str, e: kataconf::KataConfigError) -> ArtifactError {
    ArtifactError::KataConfig {
        class: class.to_owned(),
        file: match &e {
            kataconf::KataConfigError::Bad { file, .. }
            | kataconf::KataConfigError::Refused { file, .. } => PathBuf::from(file),
            kataconf::KataConfigError::Missing(file) => PathBuf::from(file),
            kataconf::KataConfigError::SeveralConfigs(_) | kataconf::KataConfigError::Reserved => {
                PathBuf::from(kataconf::DEFAULT_CONFIG_NAME)
            }
        },
        why: match &e {
            kataconf::KataConfigError::Refused {
                key, value, rule, ..
            } => format!("{key} = {value:?}: {rule}"),
            // Their message starts with the file name, which the outer one already gives.
            kataconf::KataConfigError::SeveralConfigs(_) | kataconf::KataConfigError::Reserved => e
                .to_string()
                .strip_prefix(&format!("{}: ", kataconf::DEFAULT_CONFIG_NAME))
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string()),
            _ => e.to_string(),
        },
    }
}

/// Copies the renderings of `existing` (a version directory about to be exchanged for the
/// staged `root` of the same digest) that `root` lacks, and its `kata-nri-manager.toml` link:
/// they belong to other classes (a class with `runtime.configFile` stages no link).
pub(super) fn keep_renderings(existing: &Path, root: &Path) -> io::Result<()> {
    let link = existing.join(kataconf::DEFAULT_CONFIG_NAME);
    let into = root.join(kataconf::DEFAULT_CONFIG_NAME);
    if let Ok(target) = fs::read_link(&link)
        && fs::symlink_metadata(&into).is_err()
    {
        // Same digest, same tree: the target means the same file in `root`.
        std::os::unix::fs::symlink(target, &into)?;
    }
    let from = existing.join(kataconf::SETTINGS_DIR);
    let Ok(entries) = fs::read_dir(&from) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let into = root.join(kataconf::SETTINGS_DIR).join(entry.file_name());
        if !into.exists() {
            copy_tree(&entry.path(), &into)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[tokio::test]
    async fn a_class_without_config_file_gets_the_one_top_level_toml_through_the_reserved_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let class = class("");
        let root = staged(dir.path(), &["configuration-qemu.toml"]);
        let artifacts = &store.settings().artifacts_dir;
        let final_dir = artifacts.join(".store").join(digest('a'));
        let settings = [KataSetting::DefaultVcpus(4)];
        let mut files = BTreeMap::new();
        let (configs, config_file) = store
            .inner
            .rewrite_kata_configs(&class, &root, &final_dir, &settings, &mut files)
            .await
            .expect("installed");
        assert_eq!(configs, ["configuration-qemu.toml"]);
        assert_eq!(config_file.as_deref(), Some("configuration-qemu.toml"));
        let rendering = kataconf::settings_path(Path::new(DEFAULT), &settings);
        assert!(files.contains_key("configuration-qemu.toml"), "{files:?}");
        assert!(
            files.contains_key(&rendering.display().to_string()),
            "{files:?}"
        );

        // What the commit and the link switch make of it: the stanza's ConfigPath exists.
        fs::create_dir_all(final_dir.parent().expect("store")).expect("mkdir");
        fs::rename(&root, &final_dir).expect("commit");
        std::os::unix::fs::symlink(Path::new(".store").join(digest('a')), artifacts.join("gpu"))
            .expect("link");
        for settings in [&settings[..], &[]] {
            let config_path = kataconf::config_path(artifacts, &class, settings);
            let text = fs::read_to_string(&config_path).expect("the stanza's file");
            assert!(
                text.contains(&format!("{}/share/vmlinux.container", final_dir.display())),
                "{text}"
            );
        }
        assert_eq!(
            kataconf::config_path(artifacts, &class, &[]),
            artifacts.join("gpu/kata-nri-manager.toml")
        );
        let mut state = record(&class, final_dir, files);
        state.config_file = config_file;
        state.kata_settings = settings.to_vec();
        assert!(default_config_in_place(&class, &state));
        assert!(rendered_there(&class, &settings, &state));
    }

    #[tokio::test]
    async fn several_top_level_tomls_refuse_the_install_and_list_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let root = staged(
            dir.path(),
            &["configuration-qemu.toml", "configuration-clh.toml"],
        );
        let final_dir = store
            .settings()
            .artifacts_dir
            .join(".store")
            .join(digest('a'));
        let error = store
            .inner
            .rewrite_kata_configs(&class(""), &root, &final_dir, &[], &mut BTreeMap::new())
            .await
            .expect_err("refused");
        assert_eq!(
            error.to_string(),
            "installing gpu: kata configuration kata-nri-manager.toml: runtime.configFile is unset and the artifact has several *.toml files at its top (configuration-clh.toml, configuration-qemu.toml): set runtime.configFile to the one kata should use"
        );
        // Refused before the commit: nothing links, nothing is rewritten, nothing is in the store.
        assert!(fs::symlink_metadata(root.join(DEFAULT)).is_err());
        assert_eq!(
            fs::read_to_string(root.join("configuration-qemu.toml")).expect("read"),
            CONFIG
        );
        assert!(!final_dir.exists());

        // Naming one is the way out.
        let chosen = class(", runtime: {configFile: configuration-qemu.toml}");
        let (_, config_file) = store
            .inner
            .rewrite_kata_configs(&chosen, &root, &final_dir, &[], &mut BTreeMap::new())
            .await
            .expect("installed");
        assert_eq!(config_file.as_deref(), Some("configuration-qemu.toml"));
        assert!(fs::symlink_metadata(root.join(DEFAULT)).is_err());
    }

    #[test]
    fn no_top_level_toml_installs_with_a_warning_and_records_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let class = class("");
        let root = staged(dir.path(), &[]);
        let final_dir = store
            .settings()
            .artifacts_dir
            .join(".store")
            .join(digest('a'));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (result, log) = logs(|| {
            runtime.block_on(store.inner.rewrite_kata_configs(
                &class,
                &root,
                &final_dir,
                &[KataSetting::DefaultVcpus(2)],
                &mut BTreeMap::new(),
            ))
        });
        let (configs, config_file) = result.expect("installed");
        assert!(configs.is_empty());
        assert_eq!(config_file, None);
        assert!(log.contains("WARN"), "{log}");
        assert!(
            log.contains("kata will refuse to start pods of this class"),
            "{log}"
        );
        assert!(log.contains("runtime_class=gpu"), "{log}");
        assert!(
            log.contains(&format!(
                "config_path={}",
                store
                    .settings()
                    .artifacts_dir
                    .join("gpu/.kata-settings")
                    .display()
            )),
            "{log}"
        );
        assert!(log.contains("set runtime.configFile"), "{log}");
        assert!(
            log.contains("policies' kata settings not rendered"),
            "{log}"
        );
        let state = record(&class, root, BTreeMap::new());
        // Nothing to link, nothing to pull again for.
        assert!(default_config_in_place(&class, &state));
        assert!(rendered_there(
            &class,
            &[KataSetting::DefaultVcpus(2)],
            &state
        ));
    }

    #[tokio::test]
    async fn an_artifact_with_the_reserved_name_is_refused() {
        for runtime in ["", ", runtime: {configFile: configuration-qemu.toml}"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = store(dir.path());
            let root = staged(dir.path(), &["configuration-qemu.toml", DEFAULT]);
            let final_dir = store
                .settings()
                .artifacts_dir
                .join(".store")
                .join(digest('a'));
            let error = store
                .inner
                .rewrite_kata_configs(
                    &class(runtime),
                    &root,
                    &final_dir,
                    &[],
                    &mut BTreeMap::new(),
                )
                .await
                .expect_err("refused");
            assert!(
                error.to_string().starts_with("installing gpu: kata configuration kata-nri-manager.toml: the artifact has an entry of this name at its top, a name kata-nri-manager reserves"),
                "{error}"
            );
        }
    }

    #[test]
    fn an_exchanged_version_keeps_the_renderings_of_other_classes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let existing = dir.path().join("existing");
        let staged = dir.path().join("staged");
        let theirs = existing.join(kataconf::SETTINGS_DIR).join("aaaa/sub");
        fs::create_dir_all(&theirs).expect("mkdir");
        fs::write(theirs.join("configuration.toml"), "theirs").expect("write");
        let both = existing.join(kataconf::SETTINGS_DIR).join("bbbb");
        fs::create_dir_all(&both).expect("mkdir");
        fs::write(both.join("configuration.toml"), "old copy").expect("write");
        let ours = staged.join(kataconf::SETTINGS_DIR).join("bbbb");
        fs::create_dir_all(&ours).expect("mkdir");
        fs::write(ours.join("configuration.toml"), "ours").expect("write");

        // Another class's link to the artifact's configuration (this one names its own).
        std::os::unix::fs::symlink("configuration.toml", existing.join(DEFAULT)).expect("alias");

        keep_renderings(&existing, &staged).expect("keep");
        assert_eq!(
            fs::read_link(staged.join(DEFAULT)).expect("kept"),
            Path::new("configuration.toml")
        );
        let read = |p: PathBuf| fs::read_to_string(p).expect("read");
        assert_eq!(
            read(staged.join(".kata-settings/aaaa/sub/configuration.toml")),
            "theirs"
        );
        assert_eq!(
            read(staged.join(".kata-settings/bbbb/configuration.toml")),
            "ours",
            "the staged rendering wins"
        );
        // Nothing to keep: nothing done.
        keep_renderings(&dir.path().join("absent"), &staged).expect("absent");
    }
}
