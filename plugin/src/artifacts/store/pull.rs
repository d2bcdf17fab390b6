//! The pull pipeline up to the install: which version the class's reference resolves to, and
//! whether the installed one will do; the manifest's layers, the kata version it needs, its size.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::disk::{blocking, existing_ancestor, free_bytes};
use super::{Freshness, Inner, Installed};
use crate::artifacts::error::{ArtifactError, Result};
use crate::artifacts::manifest::{self, Layer, LayerKind, Parsed};
use crate::artifacts::mirrors;
use crate::artifacts::registry::Registry;
use crate::artifacts::skew::{self, KATA_VERSION_ANNOTATION, Skew};
use crate::artifacts::state::{self, ClassState};
use crate::config::{ByteSize, RuntimeClass, VersionSkew};

impl Inner {
    pub(super) async fn ensure(
        self: &Arc<Self>,
        class: &RuntimeClass,
        freshness: Freshness,
    ) -> Result<Installed> {
        let started = Instant::now();
        let settings = &self.settings;
        let source = &class.artifacts.url;
        if !settings.registries.allows(source) {
            return Err(ArtifactError::NotAllowed {
                class: class.name.clone(),
                reference: source.as_str().to_owned(),
                allowed: settings.registries.allowed.join(", "),
            });
        }
        self.check_link_is_ours(class)?;
        let previous = state::read(&settings.artifacts_dir, &class.name);
        let wanted = self.wanted_settings(class, previous.as_ref());
        // Whether the installed version carries the signature asked for now (reads the key once).
        let previous_signed = previous
            .as_ref()
            .is_some_and(|state| self.signature_current(class, state));
        let mut pin = class.pinned_digest().map(|d| d.to_string());
        let mut by_digest = None;
        let same_version = |state: &ClassState| {
            state.reference == source.as_str()
                && pin
                    .as_ref()
                    .is_none_or(|p| *p == state.resolved_digest || *p == state.manifest_digest)
        };
        if freshness == Freshness::Installed
            && let Some(state) = &previous
            && same_version(state)
            && previous_signed
        {
            if self.usable(class, state)? {
                let state = self.settle(class, state, &wanted).await?;
                return self.current(class, &state, started).await;
            }
            tracing::warn!(digest = %state.resolved_digest, "installed version damaged; pulling it again by digest");
            pin = Some(state.resolved_digest.clone());
            by_digest = pin.clone();
        }
        // The first endpoint of containerd's hosts.toml (or the registry) that serves the
        // manifest serves the blobs too.
        let mirrors::Served {
            registry,
            reference,
            body,
            digest: resolved,
        } = mirrors::resolve(class, settings, &self.pull_secrets, by_digest.as_deref()).await?;

        if let Some(state) = &previous
            && state.resolved_digest == resolved
            && pin
                .as_ref()
                .is_none_or(|p| *p == resolved || *p == state.manifest_digest)
            && previous_signed
            && self.usable(class, state)?
        {
            tracing::info!(digest = %state.manifest_digest, "artifacts up to date");
            let state = self.settle(class, state, &wanted).await?;
            return self.current(class, &state, started).await;
        }
        if let Some(state) = &previous
            && pin.is_none()
            && state.rejected.contains(&resolved)
            && previous_signed
            && self.usable(class, state)?
        {
            tracing::warn!(resolved = %resolved, current = %state.manifest_digest, "update held back: an operator rolled back from this version");
            let state = self.settle(class, state, &wanted).await?;
            let mut kept = installed(&state, self.link(class), 0, false, started);
            kept.held_back = Some(resolved);
            return Ok(kept);
        }

        let (layers, digest, annotations) = self
            .resolve(class, &registry, &reference, &body, &resolved)
            .await?;
        let kata_version = annotations.get(KATA_VERSION_ANNOTATION).cloned();
        let version_skew = match &kata_version {
            Some(required) => self.skew(class, required).await?,
            None => None,
        };
        if let Some(skew) = &version_skew {
            if class.version_skew == VersionSkew::Refuse {
                return Err(ArtifactError::VersionSkew {
                    class: class.name.clone(),
                    reference: source.as_str().to_owned(),
                    skew: Box::new(skew.clone()),
                });
            }
            tracing::warn!(%skew, "version skew (versionSkew: warn): installing anyway");
        }
        if let Some(pin) = &pin
            && *pin != resolved
            && *pin != digest
        {
            return Err(ArtifactError::PinnedDigestMismatch {
                class: class.name.clone(),
                reference: source.as_str().to_owned(),
                pinned: pin.clone(),
                actual: resolved,
            });
        }
        // Before any blob: an unsigned version costs the node nothing but its signatures.
        let signed_by = self.verify_signature(class, &registry, &resolved).await?;
        // One install of a version at a time: a class that shares it with another takes it
        // once the other's download is in place.
        let _installing = self.digest_locks.hold(&digest).await;
        if let Some(state) = self
            .take_shared(class, &resolved, &digest, signed_by.clone())
            .await?
        {
            let state = self.settle(class, &state, &wanted).await?;
            let mut done = installed(&state, self.link(class), 0, false, started);
            done.version_skew = version_skew.map(|skew| skew.to_string());
            return Ok(done);
        }
        let (total, missing) = self.check_size(class, &layers)?;
        tracing::info!(digest = %digest, layers = layers.len(), bytes = total, to_download = missing, "pulling artifacts");
        // Installing a version a record names again is a repair: its damaged file may be a
        // stored blob itself (they share an inode), so reused blobs are hashed first.
        let repair = self.recorded_anywhere(&digest);
        let installing = self
            .install(
                class,
                &registry,
                &reference,
                &layers,
                &resolved,
                &digest,
                kata_version,
                wanted,
                signed_by,
                repair,
            )
            .await;
        let (state, fetched) = match installing {
            Ok(done) => done,
            Err(e) => {
                self.collect_after_failure(&class.name).await;
                return Err(e);
            }
        };
        tracing::info!(digest = %state.manifest_digest, files = state.files.len(), bytes = total, downloaded = fetched, elapsed_ms = started.elapsed().as_millis() as u64, "artifacts installed");
        let mut done = installed(&state, self.link(class), fetched, true, started);
        done.version_skew = version_skew.map(|skew| skew.to_string());
        Ok(done)
    }

    /// The installed version as it is. The shim may have changed since the install: a skew is
    /// reported, never acted on here.
    async fn current(
        &self,
        class: &RuntimeClass,
        state: &ClassState,
        started: Instant,
    ) -> Result<Installed> {
        let mut current = installed(state, self.link(class), 0, false, started);
        if let Some(required) = &state.kata_version {
            current.version_skew = self
                .skew(class, required)
                .await?
                .map(|skew| skew.to_string());
        }
        Ok(current)
    }

    /// What `required` (an artifact's kata version) says about the class's real shim. A
    /// requirement that is no version is the artifact's fault: a bad manifest.
    async fn skew(&self, class: &RuntimeClass, required: &str) -> Result<Option<Skew>> {
        if class.runtime.from_artifact.is_some() {
            // The shim comes with the version: they cannot disagree.
            return Ok(None);
        }
        let shim = crate::containerd::real_shim(&class.runtime);
        let text = required.to_owned();
        let checked = blocking(&class.name, move || skew::check(&text, shim.as_deref())).await?;
        checked.map_err(|why| ArtifactError::BadManifest {
            class: class.name.clone(),
            reference: class.artifacts.url.as_str().to_owned(),
            why,
        })
    }

    /// The layers of the node's image manifest and that manifest's digest.
    async fn resolve(
        &self,
        class: &RuntimeClass,
        registry: &Registry,
        reference: &oci_client::Reference,
        body: &[u8],
        resolved: &str,
    ) -> Result<(Vec<Layer>, String, BTreeMap<String, String>)> {
        let bad = |why: String| ArtifactError::BadManifest {
            class: class.name.clone(),
            reference: class.artifacts.url.as_str().to_owned(),
            why,
        };
        let (layers, digest, annotations) = match manifest::parse(body).map_err(bad)? {
            Parsed::Image {
                layers,
                annotations,
            } => (layers, resolved.to_owned(), annotations),
            Parsed::Index { manifests } => {
                let (os, arch) = manifest::node_platform();
                let entry = manifest::pick_platform(&manifests, os, arch).map_err(|available| {
                    ArtifactError::NoPlatform {
                        class: class.name.clone(),
                        reference: class.artifacts.url.as_str().to_owned(),
                        platform: format!("{os}/{arch}"),
                        available,
                    }
                })?;
                let (body, digest) = registry
                    .manifest(&reference.clone_with_digest(entry.digest.clone()))
                    .await?;
                match manifest::parse(&body).map_err(bad)? {
                    Parsed::Image {
                        layers,
                        annotations,
                    } => (layers, digest, annotations),
                    Parsed::Index { .. } => {
                        return Err(bad(format!(
                            "{os}/{arch} entry is an index, not an image manifest"
                        )));
                    }
                }
            }
        };
        if digest.parse::<crate::config::Digest>().is_err() {
            return Err(bad(format!("manifest digest {digest} is not sha256")));
        }
        let layers: Vec<Layer> = layers
            .iter()
            .map(manifest::classify)
            .collect::<std::result::Result<_, _>>()
            .map_err(bad)?;
        if layers.is_empty() {
            return Err(bad("the manifest has no layers".into()));
        }
        let mut titles = HashSet::new();
        for layer in &layers {
            if let LayerKind::File(title) = &layer.kind
                && !titles.insert(title.clone())
            {
                return Err(bad(format!("two layers are titled {title:?}")));
            }
        }
        Ok((layers, digest, annotations))
    }

    /// Refuses before any blob is fetched: more than `limits.maxArtifactBytes`, or less than
    /// twice what is to be written free (room for the new version while the old one stays):
    /// the blobs the store lacks, and every tar layer (unpacked afresh). Returns the artifact's
    /// size and the bytes to download.
    fn check_size(&self, class: &RuntimeClass, layers: &[Layer]) -> Result<(u64, u64)> {
        let limit = self.settings.limits.max_artifact_bytes;
        let reference = class.artifacts.url.as_str().to_owned();
        let total = manifest::total_size(layers).unwrap_or(u64::MAX);
        if total > limit.bytes() {
            return Err(ArtifactError::TooLarge {
                class: class.name.clone(),
                reference,
                total: ByteSize::from_bytes(total),
                limit,
            });
        }
        let missing = self.missing_bytes(layers);
        let unpacked: u64 = layers
            .iter()
            .filter(|layer| matches!(layer.kind, LayerKind::Tar { .. }))
            .map(|layer| layer.size)
            .sum();
        let dir = existing_ancestor(&self.settings.artifacts_dir);
        if let Some(available) = free_bytes(&dir) {
            let adds = missing.saturating_add(unpacked);
            let needed = adds.saturating_mul(2);
            if available < needed {
                return Err(ArtifactError::NoSpace {
                    class: class.name.clone(),
                    reference,
                    dir,
                    total: adds,
                    needed,
                    available,
                });
            }
        }
        Ok((total, missing))
    }

    /// Whether any class's record names the version `digest` (current, kept or retired).
    fn recorded_anywhere(&self, digest: &str) -> bool {
        let dir = &self.settings.artifacts_dir;
        state::recorded_classes(dir)
            .into_iter()
            .filter_map(|class| state::read(dir, &class))
            .any(|s| s.all_versions().any(|v| v == digest))
    }
}

fn installed(
    state: &ClassState,
    link: PathBuf,
    bytes: u64,
    pulled: bool,
    started: Instant,
) -> Installed {
    Installed {
        class: state.class.clone(),
        reference: state.reference.clone(),
        digest: state.manifest_digest.clone(),
        resolved_digest: state.resolved_digest.clone(),
        path: state.path.clone(),
        link,
        files: state.files.clone(),
        kata_configs: state.kata_configs.clone(),
        bytes,
        pulled,
        held_back: None,
        version_skew: None,
        served_by: state.served_by.clone(),
        duration: started.elapsed(),
    }
}
