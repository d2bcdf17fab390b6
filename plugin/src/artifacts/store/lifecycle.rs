//! A class's versions over time: removing a class, rolling it back, collecting retired versions.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use super::disk::{hash_file, is_digest_name, unix_now_ms};
use super::kata::{
    config_file_of, config_in_version, default_config_in_place, kata_config_error, render_checked,
};
use super::{ArtifactStore, Inner, RolledBack};
use crate::artifacts::error::{ArtifactError, Result};
use crate::artifacts::hostpaths;
use crate::artifacts::kataconf;
use crate::artifacts::state;
use crate::artifacts::versions::{self, RollbackRefused, SandboxAge};
use crate::config::RuntimeClass;

impl ArtifactStore {
    /// Removes what we installed for `class`: its link, every version it recorded that no other
    /// class records, and then its record. Each version leaves the store by a rename before it
    /// is deleted, and the record goes last, so a crash midway leaves a class that a second
    /// call removes, never a half-deleted version anyone points at. Returns the versions removed.
    pub fn remove(&self, class: &str) -> Result<Vec<String>> {
        let dir = &self.inner.settings.artifacts_dir;
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ArtifactError::Io {
                class: class.to_owned(),
                action,
                path,
                source,
            }
        };
        if state::read(dir, class).is_none() {
            return Ok(Vec::new());
        }
        let lock = self.inner.lock_class(class)?;
        let Some(state) = state::read(dir, class) else {
            return Ok(Vec::new());
        };
        let link = dir.join(class);
        if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&link).map_err(io("removing", &link))?;
        }
        let others = self.versions_of_others(class);
        let mut removed = Vec::new();
        for digest in state.all_versions() {
            if !others.contains(digest) && self.inner.delete_version(class, digest)? {
                removed.push(digest.clone());
            }
        }
        let record = state::file(dir, class);
        fs::remove_file(&record).map_err(io("removing", &record))?;
        let _ = fs::remove_file(dir.join(".state").join(format!(".{class}.lock")));
        drop(lock);
        // After the record is gone: its blobs no other version names go with it.
        self.collect_blobs_quietly();
        Ok(removed)
    }

    /// Every version recorded by a class other than `class`: never deleted on its behalf.
    fn versions_of_others(&self, class: &str) -> HashSet<String> {
        let dir = &self.inner.settings.artifacts_dir;
        self.recorded_classes()
            .into_iter()
            .filter(|other| other != class)
            .filter_map(|other| state::read(dir, &other))
            .flat_map(|s| s.all_versions().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Switches `class` back to its newest previous version, after checking that version's
    /// files against their recorded digests. The version left is remembered as rejected: an
    /// update that resolves to it keeps the rolled-back version (a second rollback undoes the
    /// first). No network; containerd's stanza does not change (it names the class's link).
    pub fn rollback(&self, class: &RuntimeClass) -> Result<RolledBack> {
        let name = class.name.as_str();
        let refused = |why: String| ArtifactError::Rollback {
            class: name.to_owned(),
            why,
        };
        if let Some(pin) = class.pinned_digest() {
            return Err(refused(format!(
                "the config pins it to {pin}: change runtimeClasses[].artifacts.digest instead"
            )));
        }
        self.inner.check_link_is_ours(class)?;
        let _lock = self.inner.lock_class(name)?;
        let dir = &self.inner.settings.artifacts_dir;
        let state = state::read(dir, name)
            .ok_or_else(|| refused("nothing is installed for it".to_owned()))?;
        let from = state.manifest_digest.clone();
        let wanted = self.inner.wanted_settings(class, Some(&state));
        let mut back = versions::roll_back(state, unix_now_ms())
            .map_err(|e: RollbackRefused| refused(e.to_string()))?;
        for (rel, record) in &back.files {
            let path = back.path.join(rel);
            match hash_file(&path) {
                Ok(found) if found.same_content(record) => {}
                Ok(found) => {
                    return Err(refused(format!(
                        "{} of {} changed on disk ({} bytes, {}; recorded {} bytes, {}): pull it again instead",
                        rel,
                        back.manifest_digest,
                        found.size,
                        found.sha256,
                        record.size,
                        record.sha256
                    )));
                }
                Err(e) => {
                    return Err(refused(format!(
                        "{} of {} cannot be read ({e}): pull it again instead",
                        rel, back.manifest_digest
                    )));
                }
            }
        }
        // The stanza keeps naming kata-nri-manager.toml for a class without runtime.configFile:
        // a version installed before that link existed would leave kata without its
        // configuration.
        if !default_config_in_place(class, &back) {
            return Err(refused(format!(
                "{} has no {}, which the class's stanza names (installed by an older kata-nri-manager): pull it again by digest instead",
                back.manifest_digest,
                kataconf::DEFAULT_CONFIG_NAME
            )));
        }
        back.config_file = config_file_of(class, &back.path);
        // The version may predate the class's kata settings: render them into it too, before
        // it becomes current.
        if let Some(config_file) = config_in_version(class, &back) {
            let rel = kataconf::settings_path(&config_file, &wanted);
            if !back.files.contains_key(&rel.display().to_string()) {
                let rule = hostpaths::HostPathRule {
                    version_dir: &back.path,
                    allowed: &self.inner.settings.allowed_host_paths,
                    binaries_from_version: class.runtime.from_artifact.is_some(),
                    allowed_keys: &self.inner.settings.allowed_keys,
                    allowed_arguments: &self.inner.settings.allowed_arguments,
                };
                if let Some((rel, record)) =
                    render_checked(&rule, &back.path, &config_file, &wanted)
                        .map_err(|e| kata_config_error(name, e))?
                {
                    let record = record.map_err(self.inner.io(name, "hashing", Path::new(&rel)))?;
                    back.files.insert(rel, record);
                }
            }
        }
        back.kata_settings = wanted;
        // Record first: a crash before the switch leaves a record whose link the next ensure
        // points back (see `usable`), so the rollback holds.
        self.inner.record(&back)?;
        self.inner.switch_link(name, &back.manifest_digest)?;
        tracing::info!(runtime_class = name, from = %from, to = %back.manifest_digest, "rolled back");
        Ok(RolledBack {
            class: name.to_owned(),
            from,
            to: back.manifest_digest,
        })
    }

    /// Removes the retired versions of `class` that no sandbox can be running on: `sandboxes`
    /// are the class's sandboxes (their creation times, where known). Versions another class
    /// records are only forgotten here, not deleted. Returns the versions removed.
    pub fn collect_retired(&self, class: &str, sandboxes: &[SandboxAge]) -> Result<Vec<String>> {
        let dir = &self.inner.settings.artifacts_dir;
        match state::read(dir, class) {
            Some(state) if !state.retired.is_empty() => {}
            _ => return Ok(Vec::new()),
        }
        let lock = self.inner.lock_class(class)?;
        let Some(mut state) = state::read(dir, class) else {
            return Ok(Vec::new());
        };
        let others = self.versions_of_others(class);
        let mut removed = Vec::new();
        let mut kept = Vec::new();
        for digest in std::mem::take(&mut state.retired) {
            let busy = state
                .versions
                .get(&digest)
                .is_none_or(|record| versions::may_be_running(record, sandboxes));
            if busy && !others.contains(&digest) {
                kept.push(digest);
                continue;
            }
            if !others.contains(&digest) && self.inner.delete_version(class, &digest)? {
                removed.push(digest.clone());
            }
            state.versions.remove(&digest);
        }
        state.retired = kept;
        self.inner.record(&state)?;
        drop(lock);
        if !removed.is_empty() {
            // The record no longer names them: the blobs only they used go too.
            self.collect_blobs_quietly();
        }
        Ok(removed)
    }
}

impl Inner {
    /// Deletes `.store/<digest>`: renamed aside first, so a crash midway leaves no partial
    /// version under its name. False when there was nothing to delete.
    fn delete_version(&self, class: &str, digest: &str) -> Result<bool> {
        let store = self.settings.artifacts_dir.join(".store");
        let version = store.join(digest);
        if !is_digest_name(digest) || !version.exists() {
            return Ok(false);
        }
        let doomed = store.join(format!(
            ".gc-{}-{}",
            digest.replace(':', "-"),
            std::process::id()
        ));
        fs::rename(&version, &doomed).map_err(self.io(class, "moving aside", &version))?;
        fs::remove_dir_all(&doomed).map_err(self.io(class, "removing", &doomed))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::artifacts::state::ClassState;

    #[test]
    fn a_rollback_keeps_the_reserved_link_and_refuses_a_version_without_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let class = class("");
        let older = installed_version(&store, &class, 'a', false);
        let newer = installed_version(&store, &class, 'b', true);
        let history = |previous: &ClassState| {
            let mut state = versions::advance(Some(previous.clone()), newer.clone(), 2, 10);
            state.config_file = newer.config_file.clone();
            state::write(&store.settings().artifacts_dir, &state).expect("record");
        };
        history(&older);
        let refused = store.rollback(&class).expect_err("refused");
        assert!(
            refused
                .to_string()
                .contains("has no kata-nri-manager.toml, which the class's stanza names"),
            "{refused}"
        );
        assert_eq!(
            store.installed("gpu").map(|s| s.manifest_digest),
            Some(digest('b'))
        );

        let older = installed_version(&store, &class, 'c', true);
        history(&older);
        let back = store.rollback(&class).expect("rolled back");
        assert_eq!(back.to, digest('c'));
        let state = store.installed("gpu").expect("record");
        assert_eq!(
            state.config_file.as_deref(),
            Some("configuration-qemu.toml")
        );
        assert_eq!(store.verified(&class), Some(state));
        assert!(
            fs::read_to_string(kataconf::config_path(
                &store.settings().artifacts_dir,
                &class,
                &[]
            ))
            .is_ok(),
            "the stanza's file is there after the rollback"
        );
        // And forward again: the newer version kept its link.
        store.rollback(&class).expect("undone");
        assert!(store.verified(&class).is_some());
    }
}
