//! Whether an installed version will do: the class's link is ours and points at it, its files
//! are there with their sizes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Inner;
use super::kata::default_config_in_place;
use crate::artifacts::error::{ArtifactError, Result};
use crate::artifacts::kataconf;
use crate::artifacts::state::ClassState;
use crate::config::RuntimeClass;

impl Inner {
    pub(super) fn link(&self, class: &RuntimeClass) -> PathBuf {
        self.settings.artifacts_dir.join(&class.name)
    }

    /// `<artifactsDir>/<class>` must be our symlink or absent: never replace an operator's
    /// directory (k8s-kata-manager installs there as a plain directory).
    pub(super) fn check_link_is_ours(&self, class: &RuntimeClass) -> Result<()> {
        let link = self.link(class);
        match fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() => Ok(()),
            Ok(_) => Err(ArtifactError::NotManaged {
                class: class.name.clone(),
                path: link,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&class.name, "inspecting", &link)(e)),
        }
    }

    /// The link points at the recorded version and its files are there with their sizes.
    /// (Re-hashing every file is the repair check's job, not every start's.)
    pub(super) fn intact(&self, class: &RuntimeClass, state: &ClassState) -> bool {
        self.link_current(&class.name, state)
            && files_present(state)
            && default_config_in_place(class, state)
    }

    fn link_current(&self, class: &str, state: &ClassState) -> bool {
        let expected = Path::new(".store").join(&state.manifest_digest);
        fs::read_link(self.settings.artifacts_dir.join(class))
            .is_ok_and(|target| target == expected)
    }

    /// [`intact`](Self::intact), after pointing the link back at the recorded version when
    /// only the link is wrong (a crash between a link switch and the record's write).
    pub(super) fn usable(&self, class: &RuntimeClass, state: &ClassState) -> Result<bool> {
        if !files_present(state) {
            return Ok(false);
        }
        if !default_config_in_place(class, state) {
            tracing::warn!(digest = %state.manifest_digest, file = kataconf::DEFAULT_CONFIG_NAME, "the installed version lacks the kata configuration the class's stanza names (installed by an older kata-nri-manager, or the link was removed); pulling it again");
            return Ok(false);
        }
        if !self.link_current(&class.name, state) {
            tracing::warn!(digest = %state.manifest_digest, "class link does not point at the recorded version; switching it back");
            self.switch_link(&class.name, &state.manifest_digest)?;
        }
        Ok(true)
    }
}

/// Every recorded file of the version is there with its size.
fn files_present(state: &ClassState) -> bool {
    state.files.iter().all(|(rel, record)| {
        fs::symlink_metadata(state.path.join(rel))
            .is_ok_and(|m| m.is_file() && m.len() == record.size)
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn a_version_without_the_reserved_link_is_pulled_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let class = class("");
        // Installed by an older kata-nri-manager: the stanza now names a file it lacks.
        let old = installed_version(&store, &class, 'a', false);
        assert_eq!(store.verified(&class), None);
        assert!(!store.inner.usable(&class, &old).expect("usable"));
        // A class that names its configuration does not care.
        let named = self::class(", runtime: {configFile: configuration-qemu.toml}");
        assert!(store.verified(&named).is_some());

        let current = installed_version(&store, &class, 'b', true);
        assert_eq!(store.verified(&class), Some(current.clone()));
        // Lost since: pulled again, which links it.
        fs::remove_file(current.path.join(DEFAULT)).expect("remove");
        assert_eq!(store.verified(&class), None);
    }
}
