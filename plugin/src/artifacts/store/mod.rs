//! The artifact store: makes a class's artifacts current (`ensure`), one pull per class at a
//! time shared by every caller, installed by rename and a symlink switch so a class's files
//! appear all at once or not at all.
//!
//! One job per file: this one is the API and the single-flight of pulls; `pull.rs` resolves a
//! class's version, `install.rs` downloads, unpacks and installs it, `kata.rs` handles its kata
//! configurations, `intact.rs` checks an installed version, `lifecycle.rs` removes, rolls back
//! and collects versions, `blobs.rs` fetches each layer once into the blob store and collects
//! the blobs no version records, `disk.rs` holds the filesystem helpers.

mod blobs;
mod disk;
mod install;
mod intact;
mod kata;
mod lifecycle;
mod pull;
mod share;
mod signature;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use super::error::ArtifactError;
use super::progress::{NoProgress, PullObserver};
use super::pull_secrets::PullSecrets;
use super::settings::StoreSettings;
use super::slots::PullSlots;
use super::staging;
use super::state::{self, ClassState, FileRecord};
use crate::config::RuntimeClass;
use crate::kata::KataSetting;
use crate::single_flight::SingleFlight;
pub use blobs::BlobsCollected;

/// A class's artifacts as installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Installed {
    pub class: String,
    pub reference: String,
    /// The image manifest installed; names the version's directory.
    pub digest: String,
    /// What the reference resolved to (the index, for a multi-platform artifact).
    pub resolved_digest: String,
    /// `<artifactsDir>/.store/<digest>`.
    pub path: PathBuf,
    /// `<artifactsDir>/<class>`, a symlink to `path`.
    pub link: PathBuf,
    pub files: BTreeMap<String, FileRecord>,
    pub kata_configs: Vec<String>,
    /// Bytes downloaded by this call (0 when it was up to date).
    pub bytes: u64,
    /// Whether this call pulled (false: already installed, only the manifest was checked).
    pub pulled: bool,
    /// A version the reference resolved to but that was not installed, because an operator
    /// rolled back from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
    /// The artifact needs a kata version the node's shim is not (`versionSkew: warn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_skew: Option<String>,
    /// `host[:port]` the installed version was pulled from (a mirror or the registry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// How current an ensure must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Freshness {
    /// Ask the registry what the reference resolves to now, and install it if it changed.
    #[default]
    Latest,
    /// The installed version will do when it is intact and still comes from the configured
    /// reference (and pin): no network. A damaged one is pulled again by its recorded digest,
    /// so a repair never moves a class to a newer version.
    Installed,
}

/// The outcome of [`ArtifactStore::rollback`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolledBack {
    pub class: String,
    pub from: String,
    pub to: String,
}

/// What a pull gives every caller that shares it.
type PullResult = std::result::Result<Installed, Arc<ArtifactError>>;

/// Pulls, verifies and installs runtime class artifacts under `artifactsDir`. Cheap to clone.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<Inner>,
}

struct Inner {
    settings: StoreSettings,
    observer: Arc<dyn PullObserver>,
    /// Pulls in progress by class: later callers join the running one.
    inflight: SingleFlight<String, PullResult>,
    /// Policies' kata settings by class, as the daemon decided them; a class without an entry
    /// keeps what its record says (the CLI runs no policies).
    kata_settings: Mutex<HashMap<String, Vec<KataSetting>>>,
    /// Installs by manifest digest: classes sharing a version download it once.
    digest_locks: share::DigestLocks,
    /// The classes' pull secrets: mounted, or read through the Kubernetes API and cached.
    pull_secrets: PullSecrets,
    /// The fleet's pull slots (`fleet.maxConcurrentPulls`, in a cluster); unset: downloads go
    /// at once.
    pull_slots: OnceLock<PullSlots>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("artifacts_dir", &self.inner.settings.artifacts_dir)
            .finish_non_exhaustive()
    }
}

impl ArtifactStore {
    pub fn new(settings: StoreSettings) -> Self {
        Self::with_observer(settings, Arc::new(NoProgress))
    }

    /// Removes the staging directories that interrupted pulls left behind (a killed process, a
    /// daemon that restarted itself in place); a pull in progress, in this process or another,
    /// keeps its own. Returns what was removed.
    pub fn sweep_staging(&self) -> io::Result<Vec<PathBuf>> {
        staging::sweep(&self.inner.settings.artifacts_dir)
    }

    /// A store that reports layer progress to `observer` (the CLI's progress bars).
    ///
    /// Pull secrets come from `pullSecretsDir`, and in a cluster (`kube` feature, in-cluster
    /// credentials, `POD_NAMESPACE`) from the Kubernetes API too: [`PullSecrets::detect`].
    pub fn with_observer(settings: StoreSettings, observer: Arc<dyn PullObserver>) -> Self {
        let pull_secrets = PullSecrets::detect(&settings.pull_secrets_dir);
        Self::with_pull_secrets(settings, observer, pull_secrets)
    }

    /// A store with the pull secrets of `pull_secrets` rather than those [`PullSecrets::detect`]
    /// finds.
    pub fn with_pull_secrets(
        settings: StoreSettings,
        observer: Arc<dyn PullObserver>,
        pull_secrets: PullSecrets,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                observer,
                inflight: SingleFlight::new(),
                kata_settings: Mutex::new(HashMap::new()),
                digest_locks: Default::default(),
                pull_secrets,
                pull_slots: OnceLock::new(),
            }),
        }
    }

    /// Downloads wait for one of the fleet's pull slots from now on (up-to-date checks and
    /// installs from blobs already stored never do). Set once; a second call is ignored and
    /// returns false.
    pub fn use_pull_slots(&self, slots: PullSlots) -> bool {
        self.inner.pull_slots.set(slots).is_ok()
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.inner.settings
    }

    /// The kata settings policies decided for `class`: rendered into its installed version by
    /// the next ensure (and into every version installed after), beside the configuration its
    /// stanza names ([`kataconf::config_file`]) at [`kataconf::settings_path`]. An empty list
    /// means the configuration as shipped.
    pub fn set_kata_settings(&self, class: &str, settings: Vec<KataSetting>) {
        self.inner
            .kata_settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(class.to_owned(), settings);
    }

    /// `<artifactsDir>/<class>`.
    pub fn link(&self, class: &str) -> PathBuf {
        self.inner.settings.artifacts_dir.join(class)
    }

    /// What is recorded as installed for `class`.
    pub fn installed(&self, class: &str) -> Option<ClassState> {
        state::read(&self.inner.settings.artifacts_dir, class)
    }

    /// The recorded state of `class` when its link points at the recorded version and the
    /// version's files are there with their sizes; `None` otherwise. No network.
    pub fn verified(&self, class: &RuntimeClass) -> Option<ClassState> {
        let state = state::read(&self.inner.settings.artifacts_dir, &class.name)?;
        self.inner.intact(class, &state).then_some(state)
    }

    /// The classes that have an install record, sorted.
    pub fn recorded_classes(&self) -> Vec<String> {
        state::recorded_classes(&self.inner.settings.artifacts_dir)
    }

    /// The classes whose record has retired versions waiting for [`collect_retired`](Self::collect_retired).
    pub fn classes_with_retired_versions(&self) -> Vec<String> {
        let dir = &self.inner.settings.artifacts_dir;
        self.recorded_classes()
            .into_iter()
            .filter(|class| state::read(dir, class).is_some_and(|s| !s.retired.is_empty()))
            .collect()
    }

    /// Makes `class`'s artifacts current: checks the manifest and, when it changed (or nothing
    /// is installed, or the installed files are damaged), pulls and installs the new version.
    ///
    /// Concurrent calls for one class share one pull. The pull runs on its own task: a caller
    /// that goes away does not cancel it.
    pub async fn ensure(
        &self,
        class: &RuntimeClass,
    ) -> std::result::Result<Installed, Arc<ArtifactError>> {
        self.ensure_with(class, Freshness::Latest).await
    }

    /// [`ensure`](Self::ensure), or less when `freshness` allows: the installed version as it
    /// is, without asking the registry.
    pub async fn ensure_with(
        &self,
        class: &RuntimeClass,
        freshness: Freshness,
    ) -> std::result::Result<Installed, Arc<ArtifactError>> {
        let name = class.name.clone();
        let pull = self.inner.inflight.run(
            class.name.as_str(),
            || self.start(class.clone(), freshness),
            move |e| {
                Err(Arc::new(ArtifactError::Task {
                    class: name,
                    why: e.to_string(),
                }))
            },
        );
        pull.await
    }

    /// The pull of `class`, run once for every caller by [`SingleFlight`].
    fn start(
        &self,
        class: RuntimeClass,
        freshness: Freshness,
    ) -> impl Future<Output = PullResult> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let span = tracing::info_span!("ensure", runtime_class = %class.name, registry = %class.artifacts.url.registry());
        async move {
            let result = inner.ensure(&class, freshness).await.map_err(Arc::new);
            // Leave no empty `.staging` behind (it fails harmlessly while another pull uses it).
            staging::remove_parent_if_empty(&inner.settings.artifacts_dir);
            if let Err(e) = &result {
                // A refusal after the manifest (a blob, a signature) also means the cached
                // Secret may be stale: the next pull reads it again.
                if matches!(
                    **e,
                    ArtifactError::Unauthorized { .. } | ArtifactError::Forbidden { .. }
                ) && let Some(secret) = &class.artifacts.pull_secret
                {
                    inner.pull_secrets.forget(secret);
                }
            }
            result
        }
        .instrument(span)
    }
}

impl Inner {
    fn io(
        &self,
        class: &str,
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> ArtifactError {
        let class = class.to_owned();
        let path = path.to_owned();
        move |source| ArtifactError::Io {
            class,
            action,
            path,
            source,
        }
    }
}
