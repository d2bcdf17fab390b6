//! The artifact store: makes a class's artifacts current (`ensure`), one pull per class at a
//! time shared by every caller, installed by rename and a symlink switch so a class's files
//! appear all at once or not at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tracing::Instrument;

use super::download;
use super::error::{ArtifactError, Result};
use super::hostpaths;
use super::kataconf;
use super::manifest::{self, Layer, LayerKind, Parsed};
use super::mirrors;
use super::paths;
use super::progress::{NoProgress, PullObserver};
use super::registry::{Registry, RetryPolicy};
use super::skew::{self, KATA_VERSION_ANNOTATION, Skew};
use super::staging::{self, Staging};
use super::state::{self, ClassState, FileRecord};
use super::unpack;
use super::versions::{self, RollbackRefused, SandboxAge};
use crate::config::{ByteSize, Config, Limits, Registries, RuntimeClass, VersionSkew};
use crate::policy::KataSetting;

/// Layers fetched at once: enough to fill a link with a few large files, few enough that the
/// write buffers stay small.
const DEFAULT_PARALLEL_LAYERS: usize = 3;

/// What the store needs from the config, plus knobs tests turn.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub artifacts_dir: PathBuf,
    pub pull_secrets_dir: PathBuf,
    pub registries: Registries,
    pub limits: Limits,
    pub parallel_layers: usize,
    pub retry: RetryPolicy,
    /// `kataConfig.allowedHostPaths`: host files an installed kata configuration may name.
    pub allowed_host_paths: Vec<PathBuf>,
    /// containerd's certs directories (`<dir>/<host>/hosts.toml`) for mirrors and per-host CAs,
    /// searched in order; empty: every pull goes to the reference's registry.
    pub hosts_dirs: Vec<PathBuf>,
}

impl StoreSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            artifacts_dir: config.artifacts_dir.clone(),
            pull_secrets_dir: config.pull_secrets_dir.clone(),
            registries: config.registries.clone(),
            limits: config.limits.clone(),
            parallel_layers: DEFAULT_PARALLEL_LAYERS,
            retry: RetryPolicy::default(),
            allowed_host_paths: config.kata_config.allowed_host_paths.clone(),
            // Ours overrides containerd's, as the node's own statement of what pulls use.
            hosts_dirs: match &config.registries.hosts_dir {
                Some(dir) => vec![dir.clone()],
                None => {
                    crate::containerd::certs::registry_config_dirs(&config.containerd.config_path)
                }
            },
        }
    }
}

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

type SharedPull = Shared<BoxFuture<'static, std::result::Result<Installed, Arc<ArtifactError>>>>;

/// Pulls, verifies and installs runtime class artifacts under `artifactsDir`. Cheap to clone.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<Inner>,
}

struct Inner {
    settings: StoreSettings,
    observer: Arc<dyn PullObserver>,
    /// Pulls in progress by class: later callers join the running one.
    inflight: Mutex<HashMap<String, SharedPull>>,
    /// Policies' kata settings by class, as the daemon decided them; a class without an entry
    /// keeps what its record says (the CLI runs no policies).
    kata_settings: Mutex<HashMap<String, Vec<KataSetting>>>,
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
    pub fn with_observer(settings: StoreSettings, observer: Arc<dyn PullObserver>) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                observer,
                inflight: Mutex::new(HashMap::new()),
                kata_settings: Mutex::new(HashMap::new()),
            }),
        }
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
        let dir = state::dir(&self.inner.settings.artifacts_dir);
        let mut classes: Vec<String> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let class = name.strip_suffix(".json")?;
                (!class.starts_with('.')).then(|| class.to_owned())
            })
            .collect();
        classes.sort();
        classes
    }

    /// The classes whose record has retired versions waiting for [`collect_retired`](Self::collect_retired).
    pub fn classes_with_retired_versions(&self) -> Vec<String> {
        let dir = &self.inner.settings.artifacts_dir;
        self.recorded_classes()
            .into_iter()
            .filter(|class| state::read(dir, class).is_some_and(|s| !s.retired.is_empty()))
            .collect()
    }

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
        let _lock = self.inner.lock_class(class)?;
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
                Ok(found) if found == *record => {}
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
        let _lock = self.inner.lock_class(class)?;
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
        Ok(removed)
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
        let pull = {
            let mut inflight = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match inflight.get(&class.name) {
                Some(running) => running.clone(),
                None => {
                    let pull = self.start(class.clone(), freshness);
                    inflight.insert(class.name.clone(), pull.clone());
                    pull
                }
            }
        };
        pull.await
    }

    fn start(&self, class: RuntimeClass, freshness: Freshness) -> SharedPull {
        let inner = Arc::clone(&self.inner);
        let name = class.name.clone();
        let span = tracing::info_span!("ensure", runtime_class = %class.name, registry = %class.artifacts.url.registry());
        let task = tokio::spawn(
            async move {
                let result = inner.ensure(&class, freshness).await.map_err(Arc::new);
                // Leave no empty `.staging` behind (it fails harmlessly while another pull uses it).
                staging::remove_parent_if_empty(&inner.settings.artifacts_dir);
                if let Err(e) = &result {
                    tracing::error!(error = %e, "artifacts not installed");
                }
                inner
                    .inflight
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .remove(&class.name);
                result
            }
            .instrument(span),
        );
        async move {
            task.await.unwrap_or_else(|e| {
                Err(Arc::new(ArtifactError::Task {
                    class: name,
                    why: e.to_string(),
                }))
            })
        }
        .boxed()
        .shared()
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

    async fn ensure(
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
        } = mirrors::resolve(class, settings, by_digest.as_deref()).await?;

        if let Some(state) = &previous
            && state.resolved_digest == resolved
            && pin
                .as_ref()
                .is_none_or(|p| *p == resolved || *p == state.manifest_digest)
            && self.usable(class, state)?
        {
            tracing::info!(digest = %state.manifest_digest, "artifacts up to date");
            let state = self.settle(class, state, &wanted).await?;
            return self.current(class, &state, started).await;
        }
        if let Some(state) = &previous
            && pin.is_none()
            && state.rejected.contains(&resolved)
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
        let total = self.check_size(class, &layers)?;
        tracing::info!(digest = %digest, layers = layers.len(), bytes = total, "pulling artifacts");
        let state = self
            .install(
                class,
                &registry,
                &reference,
                &layers,
                &resolved,
                &digest,
                kata_version,
                wanted,
            )
            .await?;
        tracing::info!(digest = %state.manifest_digest, files = state.files.len(), bytes = total, elapsed_ms = started.elapsed().as_millis() as u64, "artifacts installed");
        let mut done = installed(&state, self.link(class), total, true, started);
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
        let shim = crate::containerd::real_shim(&class.runtime);
        let text = required.to_owned();
        let checked = blocking(&class.name, move || skew::check(&text, shim.as_deref())).await?;
        checked.map_err(|why| ArtifactError::BadManifest {
            class: class.name.clone(),
            reference: class.artifacts.url.as_str().to_owned(),
            why,
        })
    }

    fn link(&self, class: &RuntimeClass) -> PathBuf {
        self.settings.artifacts_dir.join(&class.name)
    }

    /// `<artifactsDir>/<class>` must be our symlink or absent: never replace an operator's
    /// directory (k8s-kata-manager installs there as a plain directory).
    fn check_link_is_ours(&self, class: &RuntimeClass) -> Result<()> {
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
    fn intact(&self, class: &RuntimeClass, state: &ClassState) -> bool {
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
    fn usable(&self, class: &RuntimeClass, state: &ClassState) -> Result<bool> {
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
    /// twice that much free space (room for the new version while the old one stays).
    fn check_size(&self, class: &RuntimeClass, layers: &[Layer]) -> Result<u64> {
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
        let dir = existing_ancestor(&self.settings.artifacts_dir);
        if let Some(available) = free_bytes(&dir) {
            let needed = total.saturating_mul(2);
            if available < needed {
                return Err(ArtifactError::NoSpace {
                    class: class.name.clone(),
                    reference,
                    dir,
                    total,
                    needed,
                    available,
                });
            }
        }
        Ok(total)
    }

    #[allow(clippy::too_many_arguments)]
    async fn install(
        self: &Arc<Self>,
        class: &RuntimeClass,
        registry: &Registry,
        reference: &oci_client::Reference,
        layers: &[Layer],
        resolved: &str,
        digest: &str,
        kata_version: Option<String>,
        kata_settings: Vec<KataSetting>,
    ) -> Result<ClassState> {
        let name = class.name.as_str();
        let dir = &self.settings.artifacts_dir;
        let staging = self.staging_dir(name).await?;
        let root = staging.path().join("tree");
        let blobs = staging.path().join("blobs");
        for d in [&root, &blobs] {
            fs::create_dir(d).map_err(self.io(name, "creating", d))?;
        }
        let final_dir = dir.join(".store").join(digest);

        let jobs = self.plan(class, layers, &root, &blobs)?;
        // Boxed so the stream's type names no closure: a closure over borrowed data inside a
        // spawned future trips the compiler's higher-ranked `Send` check.
        let downloads: Vec<BoxFuture<'_, Result<()>>> = jobs
            .iter()
            .map(|(layer, dest)| {
                download::fetch(registry, reference, layer, dest, 0o644, &self.observer).boxed()
            })
            .collect();
        futures::stream::iter(downloads)
            .buffer_unordered(self.settings.parallel_layers.max(1))
            .try_collect::<Vec<()>>()
            .await?;

        let mut files = BTreeMap::new();
        let mut budget = self.settings.limits.max_artifact_bytes.bytes();
        for (layer, dest) in &jobs {
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
                    let unpacked = self
                        .unpack(class, layer, dest, *compression, &root, into, budget)
                        .await?;
                    budget = budget.saturating_sub(unpacked.bytes);
                    files.extend(unpacked.files);
                    // The compressed blob is not needed once unpacked: free the space now.
                    let _ = fs::remove_file(dest);
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
            kata_configs,
            kata_version,
            kata_settings,
            config_file,
            served_by: Some(registry.context.registry.clone()),
            previous: Vec::new(),
            retired: Vec::new(),
            versions: BTreeMap::new(),
            rejected: Vec::new(),
        };
        let inner = Arc::clone(self);
        let digest = digest.to_owned();
        blocking(name, move || {
            let name = next.class.clone();
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

    fn record(&self, state: &ClassState) -> Result<()> {
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
    fn lock_class(&self, class: &str) -> Result<fs::File> {
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

    /// Where each layer goes: a titled file at its place in the tree, a tar blob beside it.
    /// Every title is checked before anything is fetched.
    fn plan(
        &self,
        class: &RuntimeClass,
        layers: &[Layer],
        root: &Path,
        blobs: &Path,
    ) -> Result<Vec<(Layer, PathBuf)>> {
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
                    paths::prepare_parent(root, &rel)
                        .map_err(self.io(&class.name, "creating the parents of", &root.join(&rel)))?
                        .map_err(|why| unsafe_title(layer, title, why.to_string()))?
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
                    blobs.join(layer.digest.hex())
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

    /// Links `kata-nri-manager.toml` for a class without `runtime.configFile`, rewrites the kata
    /// configurations to the final directory and records their new digests. Returns the
    /// rewritten files and the artifact's configuration the stanza names (for the record;
    /// `None`: the artifact has none).
    async fn rewrite_kata_configs(
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
            let files = kataconf::rewrite_all(&root, &final_dir, config_file.as_deref())?;
            // After the rewrite, so the paths checked are the ones kata will read; before the
            // commit, so a refused version never becomes current.
            let rule = hostpaths::HostPathRule {
                version_dir: &final_dir,
                allowed: &allowed,
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
    fn wanted_settings(
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
    async fn settle(
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

    /// Makes the staged tree durable and renames it to `.store/<digest>`. An existing
    /// directory of that digest (installed for another class, or left by a crash before the
    /// link switch) is exchanged atomically, then removed with the staging directory.
    async fn commit(
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
    fn switch_link(&self, class: &str, digest: &str) -> Result<()> {
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

fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
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
fn config_in_version(class: &RuntimeClass, state: &ClassState) -> Option<PathBuf> {
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
fn config_file_of(class: &RuntimeClass, version_dir: &Path) -> Option<String> {
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
fn default_config_in_place(class: &RuntimeClass, state: &ClassState) -> bool {
    class.runtime.config_file.is_some()
        || state.path.join(kataconf::DEFAULT_CONFIG_NAME).is_file()
        || (state.config_file.is_none()
            && kataconf::top_level_configs(&state.path).is_ok_and(|found| found.is_empty()))
}

/// Runs `work` on a blocking thread, in the caller's span: a file lock another process holds,
/// an fsync or a hash must not stall an async worker (the NRI hooks and the gate share them).
async fn blocking<T: Send + 'static>(
    class: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    // The caller's span (the class being ensured) stays on what the work logs.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|e| ArtifactError::Task {
            class: class.to_owned(),
            why: e.to_string(),
        })
}

/// Renders `settings` into the version at `root` (see [`kataconf::render_settings`]), checks
/// the rendering's paths like the version's own configurations, and hashes it.
fn render_checked(
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

fn kata_config_error(class: &str, e: kataconf::KataConfigError) -> ArtifactError {
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
fn keep_renderings(existing: &Path, root: &Path) -> io::Result<()> {
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

/// Regular files and directories only (a rendering is nothing else).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        fs::copy(from, to)?;
    }
    Ok(())
}

/// Every recorded file of the version is there with its size.
fn files_present(state: &ClassState) -> bool {
    state.files.iter().all(|(rel, record)| {
        fs::symlink_metadata(state.path.join(rel))
            .is_ok_and(|m| m.is_file() && m.len() == record.size)
    })
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

/// `sha256:<64 hex>`: the only names a version directory has (a record naming anything else
/// is not followed out of the store).
fn is_digest_name(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn hash_file(path: &Path) -> io::Result<FileRecord> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher)?;
    Ok(FileRecord {
        size,
        sha256: format!("sha256:{}", super::hex(&hasher.finalize())),
    })
}

/// The directory itself or its nearest existing ancestor (for free space before it exists).
fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// Bytes available to us on the filesystem of `dir`, `None` when unknown.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: path is NUL-terminated and stat points to writable memory of the right type.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

fn sync_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(path)?;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Atomically swaps two paths (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are NUL-terminated C strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = kataconf::DEFAULT_CONFIG_NAME;

    const CONFIG: &str = "[hypervisor.qemu]\nkernel = \"/opt/kata/share/vmlinux.container\"\nimage = \"/opt/kata/share/kata-containers.img\"\n";

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn store(dir: &Path) -> ArtifactStore {
        ArtifactStore::new(StoreSettings {
            artifacts_dir: dir.join("artifacts"),
            pull_secrets_dir: dir.join("secrets"),
            registries: Registries::default(),
            limits: Limits::default(),
            parallel_layers: 1,
            retry: RetryPolicy::default(),
            allowed_host_paths: Vec::new(),
            hosts_dirs: Vec::new(),
        })
    }

    /// A class as k8s-kata-manager's config gives it (no `runtime`), or with `runtime`.
    fn class(runtime: &str) -> RuntimeClass {
        let text = format!(
            "runtimeClasses:\n- {{name: gpu, artifacts: {{url: nvcr.io/nvidia/kata:1, pullSecret: ngc}}{runtime}}}\n"
        );
        let config =
            crate::config::parse_str(&text, Path::new("c.yaml"), crate::config::FileKind::Trusted)
                .unwrap_or_else(|e| panic!("{e}"));
        config.runtime_classes[0].clone()
    }

    /// A staged tree with `tomls` at its top (each a kata configuration) and the files they name.
    fn staged(dir: &Path, tomls: &[&str]) -> PathBuf {
        let root = dir.join("staging/tree");
        fs::create_dir_all(root.join("share")).expect("mkdir");
        fs::write(root.join("share/vmlinux.container"), "k").expect("kernel");
        fs::write(root.join("share/kata-containers.img"), "i").expect("image");
        for name in tomls {
            fs::write(root.join(name), CONFIG).expect("toml");
        }
        root
    }

    /// What the install records for the staged tree, as `install` would build it.
    fn record(
        class: &RuntimeClass,
        path: PathBuf,
        files: BTreeMap<String, FileRecord>,
    ) -> ClassState {
        let digest = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        ClassState {
            class: class.name.clone(),
            reference: class.artifacts.url.as_str().to_owned(),
            resolved_digest: digest.clone(),
            manifest_digest: digest,
            path,
            installed_at: 1,
            files,
            kata_configs: Vec::new(),
            kata_version: None,
            previous: Vec::new(),
            retired: Vec::new(),
            versions: BTreeMap::new(),
            rejected: Vec::new(),
            served_by: None,
            kata_settings: Vec::new(),
            config_file: None,
        }
    }

    /// Log lines written while `work` runs (on this thread: a current-thread runtime's).
    fn logs<T>(work: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, work);
        let text = String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(|p| p.into_inner()))
            .into_owned();
        (out, text)
    }

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

    /// An installed class: `<artifactsDir>/.store/<digest>` with a top-level toml, the link, the
    /// record.
    fn installed_version(
        store: &ArtifactStore,
        class: &RuntimeClass,
        c: char,
        alias: bool,
    ) -> ClassState {
        let artifacts = &store.settings().artifacts_dir;
        let version = artifacts.join(".store").join(digest(c));
        fs::create_dir_all(&version).expect("version");
        fs::write(version.join("configuration-qemu.toml"), CONFIG).expect("toml");
        if alias {
            std::os::unix::fs::symlink("configuration-qemu.toml", version.join(DEFAULT))
                .expect("alias");
        }
        let link = artifacts.join(&class.name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new(".store").join(digest(c)), &link).expect("link");
        let mut state = record(class, version, BTreeMap::new());
        state.config_file = alias.then(|| "configuration-qemu.toml".to_owned());
        state::write(artifacts, &state).expect("record");
        state
    }

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
