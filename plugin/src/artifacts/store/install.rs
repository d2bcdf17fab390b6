//! Installing a version: staging, the blobs the store lacks downloaded (`blobs.rs`), titled
//! files linked from their blobs and tar layers unpacked from theirs, the commit to
//! `.store/<digest>`, the record and the link switch, under the class's lock.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Inner;
use super::disk::{blocking, exchange, sync_filesystem, unix_now, unix_now_ms};
use super::kata::keep_renderings;
use crate::artifacts::error::{ArtifactError, Result};
use crate::artifacts::manifest::{self, Layer, LayerKind};
use crate::artifacts::paths;
use crate::artifacts::registry::Registry;
use crate::artifacts::staging::{self, Staging};
use crate::artifacts::state::{self, ClassState, FileRecord};
use crate::artifacts::unpack;
use crate::artifacts::versions;
use crate::config::RuntimeClass;
use crate::kata::KataSetting;

impl Inner {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn install(
        self: &Arc<Self>,
        class: &RuntimeClass,
        registry: &Registry,
        reference: &oci_client::Reference,
        layers: &[Layer],
        resolved: &str,
        digest: &str,
        kata_version: Option<String>,
        kata_settings: Vec<KataSetting>,
        signed_by: Option<String>,
        verify_reused: bool,
    ) -> Result<(ClassState, u64)> {
        let name = class.name.as_str();
        let dir = &self.settings.artifacts_dir;
        let staging = self.staging_dir(name).await?;
        let root = staging.path().join("tree");
        fs::create_dir(&root).map_err(self.io(name, "creating", &root))?;
        let final_dir = dir.join(".store").join(digest);

        let jobs = self.plan(class, layers, &root)?;
        // Held until the record names the blobs: collection must not take one in between.
        let held = self.hold_blobs(name).await?;
        // A fleet-wide turn only when bytes will cross the network: a node whose blob store
        // has every layer (another class's version, a re-install) installs at once. A repair
        // (`verify_reused`) re-downloads at most the damaged blob, without a turn.
        let turn = match self.pull_slots.get() {
            Some(slots) if self.missing_bytes(layers) > 0 => Some(slots.turn().await),
            _ => None,
        };
        let fetching = self
            .fetch_blobs(registry, reference, layers, verify_reused)
            .await;
        // Given back when the download ends, before unpacking: the registry is what the slots
        // protect, not this node's disk.
        if let Some(turn) = turn {
            turn.end().await;
        }
        let (blobs, fetched) = fetching?;
        let titled: Vec<(Layer, PathBuf)> = jobs
            .iter()
            .filter_map(|(layer, dest)| dest.clone().map(|dest| (layer.clone(), dest)))
            .collect();
        self.link_blobs(name, titled).await?;

        let mut files = BTreeMap::new();
        let mut budget = self.settings.limits.max_artifact_bytes.bytes();
        for (layer, _) in &jobs {
            match &layer.kind {
                LayerKind::File(title) => {
                    let rel = paths::relative(Path::new(title)).unwrap_or_default();
                    files.insert(
                        rel.display().to_string(),
                        FileRecord {
                            size: layer.size,
                            sha256: layer.digest.to_string(),
                        },
                    );
                    budget = budget.saturating_sub(layer.size);
                }
                LayerKind::Tar { into, compression } => {
                    // Unpacked afresh into each version (the files keep the modes the layer
                    // gives them); the compressed blob stays for the next version.
                    let blob = self.blobs().path(&layer.digest);
                    let unpacked = self
                        .unpack(class, layer, &blob, *compression, &root, into, budget)
                        .await?;
                    budget = budget.saturating_sub(unpacked.bytes);
                    files.extend(unpacked.files);
                }
            }
        }

        let (kata_configs, config_file) = self
            .rewrite_kata_configs(class, &root, &final_dir, &kata_settings, &mut files)
            .await?;
        // Another class's renderings in a version it shares with this one survive the exchange.
        keep_renderings(&final_dir, &root).map_err(self.io(
            name,
            "keeping the kata settings of",
            &final_dir,
        ))?;
        self.commit(name, staging.path(), &root, &final_dir).await?;
        drop(staging);

        let now = unix_now();
        let next = ClassState {
            class: name.to_owned(),
            reference: class.artifacts.url.as_str().to_owned(),
            resolved_digest: resolved.to_owned(),
            manifest_digest: digest.to_owned(),
            path: final_dir,
            installed_at: now,
            files,
            blobs,
            kata_configs,
            kata_version,
            kata_settings,
            config_file,
            served_by: Some(registry.context.registry.clone()),
            signed_by,
            binaries_from_version: class.runtime.from_artifact.is_some(),
            previous: Vec::new(),
            retired: Vec::new(),
            versions: BTreeMap::new(),
            rejected: Vec::new(),
        };
        let state = self.make_current(next).await?;
        drop(held);
        Ok((state, fetched))
    }

    /// Records `next` as the class's current version and points its link at it, keeping the
    /// history of the record on disk.
    pub(super) async fn make_current(self: &Arc<Self>, next: ClassState) -> Result<ClassState> {
        let inner = Arc::clone(self);
        let name = next.class.clone();
        blocking(&name, move || {
            let name = next.class.clone();
            let digest = next.manifest_digest.clone();
            // Under the class's lock and from a fresh read: a `rollback` run meanwhile is
            // history this install must keep.
            let _lock = inner.lock_class(&name)?;
            let prior = state::read(&inner.settings.artifacts_dir, &name);
            let keep = inner.settings.limits.keep_versions as usize;
            let state = versions::advance(prior, next, keep, unix_now_ms());
            // Record first, as `rollback` does: whoever sees the new link finds its record, and
            // a crash in between leaves a record whose link the next ensure points (`usable`).
            inner.record(&state)?;
            inner.switch_link(&name, &digest)?;
            Ok(state)
        })
        .await?
    }

    pub(super) fn record(&self, state: &ClassState) -> Result<()> {
        let dir = &self.settings.artifacts_dir;
        let state_file = state::file(dir, &state.class);
        state::write(dir, state).map_err(self.io(
            &state.class,
            "recording the installed version in",
            &state_file,
        ))?;
        Ok(())
    }

    /// Serializes changes to one class's record between processes (the daemon and the CLI).
    pub(super) fn lock_class(&self, class: &str) -> Result<fs::File> {
        let dir = state::dir(&self.settings.artifacts_dir);
        let path = dir.join(format!(".{class}.lock"));
        let open = || -> io::Result<fs::File> {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)?;
            file.lock()?;
            Ok(file)
        };
        open().map_err(self.io(class, "locking", &path))
    }

    /// `<artifactsDir>/.staging/<class>-<random>`, on the same filesystem as the store so the
    /// install is a rename. Removed when dropped, whatever happened (see `staging.rs` for a
    /// process that does not live to drop it). Made on a blocking thread: it may wait for a
    /// sweep's lock.
    async fn staging_dir(&self, class: &str) -> Result<Staging> {
        let dir = self.settings.artifacts_dir.clone();
        let name = class.to_owned();
        blocking(class, move || Staging::create(&dir, &name))
            .await?
            .map_err(self.io(
                class,
                "creating a staging directory in",
                &staging::parent(&self.settings.artifacts_dir),
            ))
    }

    /// Where each layer goes: a titled file at its place in the tree (`Some`), a tar layer
    /// into its directory (made here; `None`). Every title is checked before anything is
    /// fetched.
    fn plan(
        &self,
        class: &RuntimeClass,
        layers: &[Layer],
        root: &Path,
    ) -> Result<Vec<(Layer, Option<PathBuf>)>> {
        let unsafe_title = |layer: &Layer, entry: &str, why: String| ArtifactError::UnsafeEntry {
            class: class.name.clone(),
            reference: class.artifacts.url.as_str().to_owned(),
            layer: layer.digest.to_string(),
            entry: entry.to_owned(),
            why,
        };
        let mut jobs = Vec::new();
        for layer in layers {
            let dest = match &layer.kind {
                LayerKind::File(title) => {
                    let rel = paths::relative(Path::new(title))
                        .map_err(|why| unsafe_title(layer, title, format!("layer title: {why}")))?;
                    Some(
                        paths::prepare_parent(root, &rel)
                            .map_err(self.io(
                                &class.name,
                                "creating the parents of",
                                &root.join(&rel),
                            ))?
                            .map_err(|why| unsafe_title(layer, title, why.to_string()))?,
                    )
                }
                LayerKind::Tar { into, .. } => {
                    if !into.is_empty() {
                        let rel = paths::relative(Path::new(into)).map_err(|why| {
                            unsafe_title(layer, into, format!("layer title: {why}"))
                        })?;
                        let dir = paths::prepare_parent(root, &rel.join("x"))
                            .map_err(self.io(&class.name, "creating", &root.join(&rel)))?
                            .map_err(|why| unsafe_title(layer, into, why.to_string()))?;
                        drop(dir);
                    }
                    None
                }
            };
            jobs.push((layer.clone(), dest));
        }
        Ok(jobs)
    }

    #[allow(clippy::too_many_arguments)]
    async fn unpack(
        &self,
        class: &RuntimeClass,
        layer: &Layer,
        blob: &Path,
        compression: manifest::Compression,
        root: &Path,
        into: &str,
        budget: u64,
    ) -> Result<unpack::Unpacked> {
        let (blob, root, into_path) = (blob.to_owned(), root.to_owned(), PathBuf::from(into));
        let result = blocking(&class.name, move || {
            unpack::unpack(&blob, compression, &root, &into_path, budget)
        })
        .await?;
        let reference = class.artifacts.url.as_str().to_owned();
        result.map_err(|e| match e {
            unpack::UnpackError::Unsafe { entry, why } => ArtifactError::UnsafeEntry {
                class: class.name.clone(),
                reference,
                layer: layer.label(),
                entry,
                why,
            },
            unpack::UnpackError::Bad(why) => ArtifactError::BadLayer {
                class: class.name.clone(),
                reference,
                layer: layer.label(),
                why,
            },
            unpack::UnpackError::Io {
                action,
                path,
                source,
            } => ArtifactError::Io {
                class: class.name.clone(),
                action,
                path,
                source,
            },
        })
    }

    /// Makes the staged tree durable and renames it to `.store/<digest>`. An existing
    /// directory of that digest (installed for another class, or left by a crash before the
    /// link switch) is exchanged atomically, then removed with the staging directory.
    pub(super) async fn commit(
        &self,
        class: &str,
        staging: &Path,
        root: &Path,
        final_dir: &Path,
    ) -> Result<()> {
        let store = self.settings.artifacts_dir.join(".store");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&store)
            .map_err(self.io(class, "creating", &store))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(self.io(
            class,
            "setting the mode of",
            root,
        ))?;
        let sync_root = root.to_owned();
        // One syncfs instead of an fsync per file: the version must be on disk before a link
        // makes it current, or a power cut could leave the class pointing at empty files.
        blocking(class, move || sync_filesystem(&sync_root))
            .await?
            .map_err(self.io(class, "syncing", staging))?;
        match fs::rename(root, final_dir) {
            Ok(()) => Ok(()),
            Err(e) if final_dir.is_dir() => {
                tracing::debug!(error = %e, path = %final_dir.display(), "version directory exists; exchanging it");
                exchange(root, final_dir).map_err(self.io(class, "installing", final_dir))
            }
            Err(e) => Err(self.io(class, "installing", final_dir)(e)),
        }
    }

    /// Points `<artifactsDir>/<class>` at `.store/<digest>`: a new symlink renamed over the old
    /// one, so readers see the old version or the new one, never neither.
    pub(super) fn switch_link(&self, class: &str, digest: &str) -> Result<()> {
        let dir = &self.settings.artifacts_dir;
        let link = dir.join(class);
        let tmp = dir.join(format!(".{class}.link-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let target = Path::new(".store").join(digest);
        std::os::unix::fs::symlink(&target, &tmp).map_err(self.io(class, "creating", &tmp))?;
        fs::rename(&tmp, &link).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io(class, "switching", &link)(e)
        })?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
