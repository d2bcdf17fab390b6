//! One download for every class of a version: classes whose references resolve to the same
//! manifest (kata-deploy's one `kata-static` tree serving `kata-qemu`, `kata-clh`, …, each
//! naming its own `configFile`) share `.store/<digest>`. The first class to install it
//! downloads; the others take the version as it is, after checking its files against the
//! record of the class that installed it. Installs of one digest run one at a time, so a
//! second class waits for the first download rather than starting its own.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::Inner;
use super::disk::{blocking, hash_file, unix_now};
use super::kata::{config_file_of, default_config_in_place};
use crate::artifacts::error::{ArtifactError, Result};
use crate::artifacts::state::{self, ClassState};
use crate::config::RuntimeClass;

/// One async lock per manifest digest being installed.
#[derive(Default)]
pub(super) struct DigestLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl DigestLocks {
    /// Held while `digest` is installed or taken; dropped entries are pruned as they go.
    pub(super) async fn hold(&self, digest: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let entry = {
            let mut map = self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            map.retain(|_, m| Arc::strong_count(m) > 1);
            Arc::clone(map.entry(digest.to_owned()).or_default())
        };
        entry.lock_owned().await
    }
}

impl Inner {
    /// Makes `class` current on the version `digest` another class installed, when there is
    /// one whose files are intact, whose kata configurations were written under the same
    /// `runtime.fromArtifact` setting, and which holds the class's kata configuration.
    /// `None`: there is none; the caller downloads.
    pub(super) async fn take_shared(
        self: &Arc<Self>,
        class: &RuntimeClass,
        resolved: &str,
        digest: &str,
        signed_by: Option<String>,
    ) -> Result<Option<ClassState>> {
        let (inner, candidate_class, digest_owned) =
            (Arc::clone(self), class.clone(), digest.to_owned());
        let found = blocking(&class.name, move || {
            inner.intact_version_of_another(&candidate_class, &digest_owned)
        })
        .await??;
        let Some(other) = found else {
            return Ok(None);
        };
        tracing::info!(runtime_class = %class.name, digest, from_class = %other.class, "version already installed for another class; taking it without a download");
        let next = ClassState {
            class: class.name.clone(),
            reference: class.artifacts.url.as_str().to_owned(),
            resolved_digest: resolved.to_owned(),
            manifest_digest: digest.to_owned(),
            config_file: config_file_of(class, &other.path),
            path: other.path,
            installed_at: unix_now(),
            files: other.files,
            blobs: other.blobs,
            kata_configs: other.kata_configs,
            kata_version: other.kata_version,
            // Rendered by the caller's settle, as for an installed version.
            kata_settings: Vec::new(),
            served_by: other.served_by,
            signed_by,
            binaries_from_version: other.binaries_from_version,
            previous: Vec::new(),
            retired: Vec::new(),
            versions: Default::default(),
            rejected: Vec::new(),
        };
        Ok(Some(self.make_current(next).await?))
    }

    /// A version installed under the other setting of `runtime.fromArtifact` is refused: the
    /// install would rewrite the configurations another class's sandboxes read.
    fn intact_version_of_another(
        &self,
        class: &RuntimeClass,
        digest: &str,
    ) -> Result<Option<ClassState>> {
        let dir = &self.settings.artifacts_dir;
        let wants_binaries = class.runtime.from_artifact.is_some();
        let others: Vec<ClassState> = state::recorded_classes(dir)
            .into_iter()
            .filter(|other| *other != class.name)
            .filter_map(|other| state::read(dir, &other))
            .filter(|other| other.manifest_digest == digest)
            .collect();
        if let Some(other) = others
            .iter()
            .find(|other| other.binaries_from_version != wants_binaries)
        {
            return Err(ArtifactError::SharedVersion {
                class: class.name.clone(),
                digest: digest.to_owned(),
                other: other.class.clone(),
                other_from_artifact: other.binaries_from_version,
            });
        }
        Ok(others.into_iter().find(|other| {
            if !holds_config(class, other) {
                tracing::info!(runtime_class = %class.name, digest, other = %other.class, "version not shared: it was installed without this class's kata configuration rewritten; downloading");
                return false;
            }
            if !files_intact(other) {
                tracing::warn!(runtime_class = %class.name, digest, other = %other.class, "version not shared: its files changed since it was installed; downloading");
                return false;
            }
            true
        }))
    }
}

/// The class's kata configuration is in the version, rewritten to it: `runtime.configFile`
/// among the rewritten files, or the version's `kata-nri-manager.toml` link.
fn holds_config(class: &RuntimeClass, other: &ClassState) -> bool {
    match &class.runtime.config_file {
        Some(file) => other
            .kata_configs
            .iter()
            .any(|rewritten| Path::new(rewritten) == file.as_path()),
        None => default_config_in_place(class, other),
    }
}

/// Every recorded file hashes to its record: what another class installed is taken only as it
/// was installed.
fn files_intact(state: &ClassState) -> bool {
    state.files.iter().all(|(rel, record)| {
        hash_file(&state.path.join(rel)).is_ok_and(|found| found.same_content(record))
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn renamed(class: &RuntimeClass, name: &str) -> RuntimeClass {
        let mut other = class.clone();
        other.name = name.into();
        other
    }

    /// The version of `class` with one hashed file, as an install records it.
    fn with_a_file(store: &super::super::ArtifactStore, class: &RuntimeClass) -> ClassState {
        let mut state = installed_version(store, class, 'a', true);
        std::fs::write(state.path.join("vmlinux"), "kernel").expect("file");
        let record = hash_file(&state.path.join("vmlinux")).expect("hash");
        state.files.insert("vmlinux".into(), record);
        state::write(&store.settings().artifacts_dir, &state).expect("record");
        state
    }

    #[tokio::test]
    async fn a_second_class_takes_an_intact_version_without_a_download() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let qemu = class("");
        let installed = with_a_file(&store, &qemu);
        let clh = renamed(&qemu, "clh");

        let taken = store
            .inner
            .take_shared(&clh, &digest('a'), &digest('a'), Some("sha256:key".into()))
            .await
            .expect("take")
            .expect("shared");
        assert_eq!(taken.path, installed.path);
        assert_eq!(taken.files, installed.files);
        assert_eq!(taken.signed_by.as_deref(), Some("sha256:key"));
        assert_eq!(
            taken.config_file.as_deref(),
            Some("configuration-qemu.toml")
        );
        let link = store.settings().artifacts_dir.join("clh");
        assert_eq!(
            std::fs::read_link(link).expect("link"),
            Path::new(".store").join(digest('a'))
        );
        assert_eq!(
            state::read(&store.settings().artifacts_dir, "clh").map(|s| s.manifest_digest),
            Some(digest('a'))
        );
    }

    #[tokio::test]
    async fn a_changed_file_or_a_missing_configuration_means_a_download() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let qemu = class("");
        let installed = with_a_file(&store, &qemu);

        // A configFile the version's install did not rewrite.
        let named = renamed(&class(", runtime: {configFile: other.toml}"), "named");
        let taken = store
            .inner
            .take_shared(&named, &digest('a'), &digest('a'), None)
            .await
            .expect("take");
        assert_eq!(taken, None);

        std::fs::write(installed.path.join("vmlinux"), "KERNEL").expect("tamper");
        let taken = store
            .inner
            .take_shared(&renamed(&qemu, "clh"), &digest('a'), &digest('a'), None)
            .await
            .expect("take");
        assert_eq!(taken, None);
    }

    #[tokio::test]
    async fn classes_sharing_a_version_must_agree_on_from_artifact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let qemu = class("");
        with_a_file(&store, &qemu);
        let mut kata = renamed(&qemu, "kata");
        kata.runtime.from_artifact = Some(crate::config::FromArtifact {
            shim: "opt/kata/bin/containerd-shim-kata-v2".into(),
            digest: None,
        });
        let err = store
            .inner
            .take_shared(&kata, &digest('a'), &digest('a'), None)
            .await
            .expect_err("mixed");
        assert!(
            err.to_string()
                .contains("is installed for class gpu without runtime.fromArtifact"),
            "{err}"
        );
    }
}
