//! The reconciler: the desired state (the config, and the policies' decisions for this node)
//! against the observed one (installed artifacts, containerd's stanzas, the pods that run). One
//! ensure per class at a time, whoever asks (start-up, a gate, a pod's annotation, a pod in
//! use); the work runs on its own task, so a caller that goes away cancels nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};

use super::error::EnsureError;
use super::metrics::Metrics;
use super::status::StatusBoard;
use super::triggers::PodSignal;
use crate::artifacts::{ArtifactStore, Freshness};
use crate::config::{Config, Provision, RuntimeClass, UpdatePolicy};
use crate::containerd::RuntimeStanza;
use crate::policy::{NodeFacts, PolicyChain, Trigger};
use crate::single_flight::SingleFlight;

mod ensure;
mod gating;
mod plan;

pub use gating::GateEnsurer;

/// A class made ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub digest: String,
    pub source: String,
    /// Whether this ensure downloaded (false: the installed version was current).
    pub pulled: bool,
    /// What the reference resolved to but was not installed (an operator rolled back from it).
    pub held_back: Option<String>,
    /// The artifact needs a kata version the node's shim is not.
    pub version_skew: Option<String>,
}

/// What the node does with a class.
#[derive(Debug, Clone)]
enum Plan {
    Serve(Box<Served>),
    NotServed { reason: String },
}

/// A class this node serves.
#[derive(Debug, Clone)]
struct Served {
    class: RuntimeClass,
    stanza: RuntimeStanza,
    /// The shim the gate hands over to (`onDemand`).
    real_shim: Option<PathBuf>,
}

/// First wait after a failed eager ensure; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(300);

pub struct Reconciler {
    config: Arc<Config>,
    store: ArtifactStore,
    policies: Arc<PolicyChain>,
    node: Arc<NodeFacts>,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    plans: Mutex<BTreeMap<String, Plan>>,
    inflight: SingleFlight<String, Result<Ready, EnsureError>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a single insert, remove or replace.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reconciler {
    pub fn new(
        config: Arc<Config>,
        store: ArtifactStore,
        policies: Arc<PolicyChain>,
        node: Arc<NodeFacts>,
        board: Arc<StatusBoard>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            store,
            policies,
            node,
            board,
            metrics,
            plans: Mutex::new(BTreeMap::new()),
            inflight: SingleFlight::new(),
        })
    }

    pub fn board(&self) -> &Arc<StatusBoard> {
        &self.board
    }

    /// Whether an ensure of `class` runs now (a gate may be waiting on it).
    pub fn busy(&self, class: &str) -> bool {
        self.inflight.is_running(class)
    }

    /// Names of the classes this node serves.
    pub fn served(&self) -> Vec<String> {
        lock(&self.plans)
            .iter()
            .filter(|(_, plan)| matches!(plan, Plan::Serve(_)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Ensures every served `eager` class in the background, retrying with backoff until it
    /// is ready.
    pub fn start_eager(self: &Arc<Self>) {
        let eager: Vec<String> = lock(&self.plans)
            .values()
            .filter_map(|plan| match plan {
                Plan::Serve(served) if served.class.provision == Provision::Eager => {
                    Some(served.class.name.clone())
                }
                _ => None,
            })
            .collect();
        for class in eager {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let mut delay = FIRST_RETRY;
                while let Err(e) = this.ensure(&class, Trigger::Startup, None).await {
                    if e.logged() {
                        // The failure itself is logged once, by the ensure.
                        info!(runtime_class = %class, kind = e.kind(), retry_in_s = delay.as_secs(), "eager runtime class retried later");
                    } else {
                        warn!(runtime_class = %class, kind = e.kind(), error = %e, retry_in_s = delay.as_secs(), "eager runtime class failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            });
        }
    }

    /// Checks for new versions per each class's `updatePolicy`: once now for installed
    /// `onDemand` classes with `onStart` or an interval (eager ones were just ensured), then
    /// every interval for classes that have one. A failed check leaves the installed version
    /// serving.
    pub fn start_updates(self: &Arc<Self>) {
        let served: Vec<RuntimeClass> = lock(&self.plans)
            .values()
            .filter_map(|plan| match plan {
                Plan::Serve(served) => Some(served.class.clone()),
                Plan::NotServed { .. } => None,
            })
            .collect();
        for class in served {
            let interval = match class.update_policy {
                UpdatePolicy::Pinned => continue,
                UpdatePolicy::OnStart => None,
                UpdatePolicy::Every(interval) => Some(interval.get()),
            };
            let this = Arc::clone(self);
            tokio::spawn(async move {
                if class.provision == Provision::OnDemand {
                    this.check_for_update(&class).await;
                }
                let Some(interval) = interval else { return };
                loop {
                    tokio::time::sleep(interval).await;
                    this.check_for_update(&class).await;
                }
            });
        }
    }

    /// Re-resolves the class's reference when it is installed (or eager: then it must be).
    async fn check_for_update(self: &Arc<Self>, class: &RuntimeClass) {
        let installed = self.store.installed(&class.name).is_some();
        if !installed && class.provision == Provision::OnDemand {
            return;
        }
        match self.ensure(&class.name, Trigger::Update, None).await {
            Ok(ready) if ready.pulled => {
                info!(runtime_class = %class.name, digest = %ready.digest, "updated to a new version")
            }
            Ok(_) => {}
            // The ensure logged it ("update failed; the installed version stays current").
            Err(e) if e.logged() => {}
            Err(e) => {
                warn!(runtime_class = %class.name, kind = e.kind(), error = %e, "update check failed")
            }
        }
    }

    /// Acts on what a pod said (from an NRI hook, through the channel): never on the hook's
    /// path.
    pub fn handle(self: &Arc<Self>, signal: PodSignal) {
        match signal {
            PodSignal::Prepare { classes, pod } => {
                for class in classes {
                    let this = Arc::clone(self);
                    let pod = pod.clone();
                    tokio::spawn(async move {
                        let who = format!("{}/{}", pod.namespace, pod.name);
                        match this.ensure(&class, Trigger::PodAnnotation, Some(pod)).await {
                            Ok(ready) => {
                                info!(runtime_class = %class, pod = %who, digest = %ready.digest, "prepared on a pod's request")
                            }
                            Err(e) if e.logged() => {
                                info!(runtime_class = %class, pod = %who, kind = e.kind(), "prepare annotation not honoured")
                            }
                            Err(e) => {
                                warn!(runtime_class = %class, pod = %who, kind = e.kind(), error = %e, "prepare annotation not honoured")
                            }
                        }
                    });
                }
            }
            PodSignal::InUse { class } => {
                let planned = match lock(&self.plans).get(&class) {
                    Some(Plan::Serve(served)) => served.class.clone(),
                    _ => return,
                };
                if self.inflight.is_running(&class) {
                    return;
                }
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    // Reads the install record and stats every file: off the async workers.
                    let store = this.store.clone();
                    let intact = tokio::task::spawn_blocking(move || store.verified(&planned))
                        .await
                        .is_ok_and(|state| state.is_some());
                    if intact {
                        return;
                    }
                    warn!(runtime_class = %class, "a sandbox of this class runs but its artifacts are missing or damaged; repairing");
                    let _ = this
                        .ensure_fresh(&class, Trigger::Update, None, Some(Freshness::Installed))
                        .await;
                });
            }
        }
    }
}

/// How current an ensure must be: the registry is asked at start-up (eager classes), for
/// update checks and from the CLI; a gate, a pod's annotation or a repair takes the installed
/// version when it is intact, so a running node does not depend on the registry, and a tag
/// that moves changes nothing until the class's `updatePolicy` says so. A `pinned` class never
/// asks beyond its pin.
fn freshness_for(class: &RuntimeClass, trigger: Trigger) -> Freshness {
    match (class.update_policy, trigger) {
        (UpdatePolicy::Pinned, _) => Freshness::Installed,
        (_, Trigger::Startup | Trigger::Update | Trigger::Cli) => Freshness::Latest,
        (_, Trigger::Gate | Trigger::PodAnnotation) => Freshness::Installed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::StoreSettings;
    use crate::config::{FileKind, parse_str};
    use crate::policy::{EngineOptions, Guard, PolicyEngine};

    /// A class as k8s-kata-manager's config gives it (name, url, pull secret) gets a
    /// `ConfigPath` all the same, before anything is pulled: the link to the artifact's
    /// top-level `*.toml` every install makes. Without one kata would boot the node's default
    /// configuration, not the artifact's kernel and image.
    #[tokio::test]
    async fn every_served_stanza_names_a_kata_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "artifactsDir: {artifacts}\n\
             policies: {{dir: {policies}}}\n\
             runtimeClasses:\n\
             - name: kata-qemu-nvidia-gpu\n\
             \x20 artifacts: {{url: nvcr.io/nvidia/cloud-native/kata-gpu-artifacts:ubuntu22.04-535, pullSecret: ngc-secret}}\n\
             - name: kata-qemu\n\
             \x20 artifacts: {{url: nvcr.io/kata/qemu:1}}\n\
             \x20 runtime: {{configFile: share/configuration-qemu.toml}}\n",
            artifacts = dir.path().join("artifacts").display(),
            policies = dir.path().join("policies").display(),
        );
        let config = Arc::new(
            parse_str(&text, std::path::Path::new("node.yaml"), FileKind::Trusted)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let engine = PolicyEngine::new(EngineOptions::default()).expect("engine");
        // No policies directory: every class is served as configured.
        let (policies, _) =
            PolicyChain::start(engine, config.policies.clone(), Guard::from_config(&config));
        let board = Arc::new(StatusBoard::new(
            config
                .runtime_classes
                .iter()
                .map(|c| (c.name.clone(), c.provision)),
        ));
        let reconciler = Reconciler::new(
            config.clone(),
            ArtifactStore::new(StoreSettings::from_config(&config)),
            policies,
            Arc::new(NodeFacts::default()),
            board,
            Arc::new(Metrics::new()),
        );
        let stanzas = reconciler.plan().await;
        let config_paths: Vec<(&str, Option<&str>)> = stanzas
            .iter()
            .map(|s| (s.name.as_str(), s.config_path.as_deref()))
            .collect();
        let artifacts = dir.path().join("artifacts");
        let gpu = artifacts.join("kata-qemu-nvidia-gpu/kata-nri-manager.toml");
        let qemu = artifacts.join("kata-qemu/share/configuration-qemu.toml");
        assert_eq!(
            config_paths,
            [
                ("kata-qemu", qemu.to_str()),
                ("kata-qemu-nvidia-gpu", gpu.to_str()),
            ]
        );
    }
}
