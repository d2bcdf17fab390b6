//! The store's use of the blob store (`artifacts/blobs.rs`): the blobs a version needs, fetched
//! once per digest across classes and versions, and the collection of blobs no recorded
//! version names.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use futures::{StreamExt, TryStreamExt};

use super::disk::{blocking, hash_file};
use super::{ArtifactStore, Inner};
use crate::artifacts::blobs::{BLOB_MODE, Blobs, Lock};
use crate::artifacts::download;
use crate::artifacts::error::Result;
use crate::artifacts::manifest::Layer;
use crate::artifacts::registry::Registry;
use crate::artifacts::state;

/// What [`ArtifactStore::collect_blobs`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobsCollected {
    /// Digests of the blobs removed.
    pub blobs: Vec<String>,
    pub bytes: u64,
    /// Temp files of interrupted downloads removed.
    pub temps: usize,
    /// An install held the store: nothing was collected this time.
    pub busy: bool,
}

impl ArtifactStore {
    /// Removes the blobs no version of any class's record names, and the temp files of
    /// interrupted downloads. Skipped (`busy`) while an install, in this process or another,
    /// holds the store: the next call does it. Versions keep their files either way (a version
    /// links its blobs; removing one only drops the store's name for it).
    pub fn collect_blobs(&self) -> std::io::Result<BlobsCollected> {
        self.inner.collect_blobs()
    }

    /// [`collect_blobs`](Self::collect_blobs) after something left the records, logged rather
    /// than returned: the removal it follows has succeeded whatever happens here.
    pub(super) fn collect_blobs_quietly(&self) {
        self.inner.collect_blobs_quietly();
    }
}

impl Inner {
    fn collect_blobs(&self) -> std::io::Result<BlobsCollected> {
        let dir = &self.settings.artifacts_dir;
        // Read under the exclusive lock (inside `collect`): an install records its blobs
        // before it lets the shared lock go, so none is missed.
        let referenced = || -> HashSet<String> {
            state::recorded_classes(dir)
                .into_iter()
                .filter_map(|class| state::read(dir, &class))
                .flat_map(|s| s.all_blobs().cloned().collect::<Vec<_>>())
                .collect()
        };
        Ok(match self.blobs().collect(referenced)? {
            None => BlobsCollected {
                busy: true,
                ..Default::default()
            },
            Some(c) => {
                if !c.blobs.is_empty() || c.temps > 0 {
                    tracing::info!(
                        blobs = c.blobs.len(),
                        bytes = c.bytes,
                        temps = c.temps,
                        "unreferenced blobs removed"
                    );
                }
                BlobsCollected {
                    blobs: c.blobs,
                    bytes: c.bytes,
                    temps: c.temps,
                    busy: false,
                }
            }
        })
    }

    pub(super) fn collect_blobs_quietly(&self) {
        match self.collect_blobs() {
            Ok(c) if c.busy => {
                tracing::debug!("blob collection deferred: an install holds the store")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "unreferenced blobs not removed"),
        }
    }

    /// After a failed install: the blobs it fetched that no version records go at once (a
    /// refused or failed pull leaves the store as it found it), unless another install is
    /// under way, which may be using them; then the next collection takes them.
    pub(super) async fn collect_after_failure(self: &Arc<Self>, class: &str) {
        let inner = Arc::clone(self);
        if let Err(e) = blocking(class, move || inner.collect_blobs_quietly()).await {
            tracing::warn!(error = %e, "unreferenced blobs not removed");
        }
    }

    pub(super) fn blobs(&self) -> Blobs {
        Blobs::new(&self.settings.artifacts_dir)
    }

    /// Bytes of `layers` the blob store lacks: what an install would download.
    pub(super) fn missing_bytes(&self, layers: &[Layer]) -> u64 {
        let blobs = self.blobs();
        let mut seen = HashSet::new();
        layers
            .iter()
            .filter(|layer| seen.insert(layer.digest.as_str()))
            .filter(|layer| blobs.find(&layer.digest, layer.size).is_none())
            .map(|layer| layer.size)
            .sum()
    }

    /// The store, held shared for an install: no blob it finds or fetches is collected before
    /// its record names it. Dropped after the record is written.
    pub(super) async fn hold_blobs(&self, class: &str) -> Result<fs::File> {
        let blobs = self.blobs();
        let held = blocking(class, move || blobs.lock(Lock::Shared, true)).await?;
        let lock = crate::artifacts::blobs::root(&self.settings.artifacts_dir);
        match held.map_err(self.io(class, "locking", &lock))? {
            Some(file) => Ok(file),
            // A blocking shared lock is always taken.
            None => Err(self.io(class, "locking", &lock)(std::io::Error::other(
                "the blob store lock was not taken",
            ))),
        }
    }

    /// Makes every blob of `layers` present, downloading the missing ones (in parallel, one
    /// download per digest however many installs want it). `verify_reused`: hash blobs found
    /// in the store before using them (a repair: the damaged file may be the blob itself, which
    /// shares its inode). Returns the digests (sorted, for the record) and the bytes downloaded.
    /// The caller holds [`hold_blobs`](Self::hold_blobs).
    pub(super) async fn fetch_blobs(
        self: &Arc<Self>,
        registry: &Registry,
        reference: &oci_client::Reference,
        layers: &[Layer],
        verify_reused: bool,
    ) -> Result<(Vec<String>, u64)> {
        let mut unique = Vec::new();
        let mut digests = BTreeSet::new();
        for layer in layers {
            if digests.insert(layer.digest.to_string()) {
                unique.push(layer.clone());
            }
        }
        // Boxed so the stream's type names no closure: a closure over borrowed data inside a
        // spawned future trips the compiler's higher-ranked `Send` check.
        let fetches: Vec<BoxFuture<'_, Result<u64>>> = unique
            .iter()
            .map(|layer| {
                self.fetch_blob(registry, reference, layer, verify_reused)
                    .boxed()
            })
            .collect();
        let fetched: Vec<u64> = futures::stream::iter(fetches)
            .buffer_unordered(self.settings.parallel_layers.max(1))
            .try_collect()
            .await?;
        Ok((digests.into_iter().collect(), fetched.iter().sum()))
    }

    /// One blob: found in the store, or downloaded to a temp name and committed. Returns the
    /// bytes downloaded.
    async fn fetch_blob(
        self: &Arc<Self>,
        registry: &Registry,
        reference: &oci_client::Reference,
        layer: &Layer,
        verify_reused: bool,
    ) -> Result<u64> {
        let class = registry.context.class.clone();
        // Another install of this process fetching the same blob finishes first; this one then
        // finds it.
        let _one = self
            .digest_locks
            .hold(&format!("blob {}", layer.digest))
            .await;
        let blobs = self.blobs();
        if let Some(found) = blobs.find(&layer.digest, layer.size) {
            if !verify_reused || self.still_whole(&class, &found, layer).await? {
                tracing::debug!(layer = %layer.name(), digest = %layer.digest, "blob already stored; not downloading it");
                return Ok(0);
            }
            tracing::warn!(layer = %layer.name(), digest = %layer.digest, "stored blob does not match its digest; downloading it again");
            let _ = fs::remove_file(&found);
        }
        let temp = blobs.temp(&layer.digest).map_err(self.io(
            &class,
            "creating a blob in",
            &blobs.path(&layer.digest),
        ))?;
        let downloaded =
            download::fetch(registry, reference, layer, &temp, BLOB_MODE, &self.observer).await;
        if let Err(e) = downloaded {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        let digest = layer.digest.clone();
        let (committing, at) = (blobs.clone(), temp.clone());
        let committed = blocking(&class, move || committing.commit(&at, &digest)).await?;
        if let Err(e) = committed {
            let _ = fs::remove_file(&temp);
            return Err(self.io(&class, "storing the blob", &temp)(e));
        }
        Ok(layer.size)
    }

    /// Whether the stored blob at `path` still hashes to its digest.
    async fn still_whole(&self, class: &str, path: &Path, layer: &Layer) -> Result<bool> {
        let path = path.to_owned();
        let hashed = blocking(class, move || hash_file(&path)).await?;
        Ok(hashed.is_ok_and(|found| found.sha256 == layer.digest.as_str()))
    }

    /// Puts each titled file's blob at its place in the staged tree.
    pub(super) async fn link_blobs(
        &self,
        class: &str,
        files: Vec<(Layer, std::path::PathBuf)>,
    ) -> Result<()> {
        let blobs = self.blobs();
        let linked = blocking(class, move || {
            for (layer, dest) in &files {
                if let Err(e) = blobs.link_into(&layer.digest, dest) {
                    return Err((dest.clone(), e));
                }
            }
            Ok(())
        })
        .await?;
        linked.map_err(|(dest, e)| self.io(class, "linking the blob to", &dest)(e))
    }
}
