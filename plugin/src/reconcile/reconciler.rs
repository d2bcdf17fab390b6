//! The reconciler: the desired state (the config, and the policies' decisions for this node)
//! against the observed one (installed artifacts, containerd's stanzas, the pods that run). One
//! ensure per class at a time, whoever asks (start-up, a gate, a pod's annotation, a pod in
//! use); the work runs on its own task, so a caller that goes away cancels nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::{info, warn};

use super::error::EnsureError;
use super::metrics::{ClassLabels, GateLabels, Metrics, PullLabels};
use super::status::{ArtifactState, ClassDecision, StatusBoard};
use super::triggers::PodSignal;
use crate::artifacts::{ArtifactStore, ClassState, Freshness};
use crate::config::{Config, Provision, RuntimeClass, UpdatePolicy};
use crate::containerd::RuntimeStanza;
use crate::gate::{self, EnsureRequest, Ensurer, GateState, Refusal};
use crate::policy::{
    AdmitOutcome, IgnoredFailure, NodeFacts, PodInfo, PolicyChain, Request, RuntimeOutcome,
    RuntimeOverrides, SourceOutcome, Trigger,
};
use crate::single_flight::SingleFlight;

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

    /// Asks the policies about every class and returns the stanzas of the classes this node
    /// serves. Classes whose artifacts are installed and intact are marked ready (no network).
    pub async fn plan(&self) -> Vec<RuntimeStanza> {
        let mut plans = BTreeMap::new();
        for class in &self.config.runtime_classes {
            let plan = self.plan_class(class).await;
            match &plan {
                Plan::Serve(served) => {
                    let class = &served.class;
                    let verified = self.store.verified(class);
                    self.metrics.set_ready(&class.name, verified.is_some());
                    self.board.update_class(&class.name, |status| {
                        status.decision = ClassDecision::Serve;
                        status.reason = None;
                        match &verified {
                            Some(installed) => {
                                status.state = ArtifactState::Ready;
                                status.digest = Some(installed.manifest_digest.clone());
                                status.source = Some(installed.reference.clone());
                            }
                            None => status.state = ArtifactState::Absent,
                        }
                    });
                }
                Plan::NotServed { reason } => {
                    warn!(runtime_class = %class.name, %reason, "runtime class not served on this node");
                    self.metrics.set_ready(&class.name, false);
                }
            }
            plans.insert(class.name.clone(), plan);
        }
        let stanzas = plans
            .values()
            .filter_map(|plan| match plan {
                Plan::Serve(served) => Some(served.stanza.clone()),
                Plan::NotServed { .. } => None,
            })
            .collect();
        *lock(&self.plans) = plans;
        stanzas
    }

    async fn plan_class(&self, class: &RuntimeClass) -> Plan {
        let request = Request::for_class(class, Trigger::Startup);
        let source = self
            .policies
            .select_source(request.clone(), self.node.clone())
            .await;
        self.log_ignored(&class.name, &source.ignored);
        match source.outcome {
            SourceOutcome::Pull { sources } => {
                self.metrics.decision(&class.name, "select-source", "allow");
                let first = sources.first().map(|s| s.reference.as_str().to_owned());
                self.board.update_class(&class.name, |s| s.source = first);
            }
            SourceOutcome::Skip { policy, reason } => {
                self.metrics.decision(&class.name, "select-source", "skip");
                return self.not_served(
                    class,
                    ClassDecision::Skip,
                    format!("skipped by policy {policy}: {reason}"),
                );
            }
            SourceOutcome::Deny(denial) => {
                self.metrics.decision(&class.name, "select-source", "deny");
                return self.not_served(class, ClassDecision::Deny, denial.to_string());
            }
        }
        let runtime = self
            .policies
            .mutate_runtime(
                request,
                self.node.clone(),
                RuntimeOverrides::from(&class.runtime),
            )
            .await;
        self.log_ignored(&class.name, &runtime.ignored);
        let overrides = match runtime.outcome {
            RuntimeOutcome::Settings { settings } => {
                self.metrics
                    .decision(&class.name, "mutate-runtime", "allow");
                settings
            }
            RuntimeOutcome::Deny(denial) => {
                self.metrics.decision(&class.name, "mutate-runtime", "deny");
                return self.not_served(class, ClassDecision::Deny, denial.to_string());
            }
        };
        // Rendered into the installed version by the ensures to come (an empty list undoes an
        // earlier one).
        self.store
            .set_kata_settings(&class.name, overrides.kata_config.clone());

        let mut stanza = RuntimeStanza::new(&class.name, &class.runtime.runtime_type);
        stanza.pod_annotations = overrides.pod_annotations;
        stanza.container_annotations = overrides.container_annotations;
        stanza.privileged_without_host_devices = Some(overrides.privileged_without_host_devices);
        // The class's link, then the configuration kata reads: the artifact's own
        // (`runtime.configFile`, else the `kata-nri-manager.toml` every install links), or its
        // rendering with the policies' settings (a different file per settings list, so a
        // change of settings is a change of stanza, never a file changed under a sandbox).
        // Always set, and known before any pull: without it kata would boot the node's default
        // configuration, not the artifact's kernel and image.
        stanza.config_path = Some(
            crate::artifacts::kata_config_path(
                &self.config.artifacts_dir,
                class,
                &overrides.kata_config,
            )
            .display()
            .to_string(),
        );
        let real_shim = crate::containerd::real_shim(&class.runtime);
        match class.provision {
            Provision::Eager => {
                stanza.runtime_path = class
                    .runtime
                    .runtime_path
                    .as_ref()
                    .map(|p| p.display().to_string());
            }
            Provision::OnDemand => {
                if real_shim.is_none() {
                    return self.not_served(
                        class,
                        ClassDecision::Deny,
                        format!(
                            "no real shim for the gate to start: set runtimeClasses[].runtime.runtimePath in the node-local config, or put {} on PATH",
                            crate::containerd::shim_binary_name(&class.runtime.runtime_type)
                                .unwrap_or_else(|| "the shim".to_owned())
                        ),
                    );
                }
                stanza.runtime_path = Some(
                    gate::link_path(&self.config.gate.dir, &class.name)
                        .display()
                        .to_string(),
                );
            }
        }
        if let Err(e) = stanza.validate() {
            return self.not_served(class, ClassDecision::Deny, e.to_string());
        }
        Plan::Serve(Box::new(Served {
            class: class.clone(),
            stanza,
            real_shim,
        }))
    }

    fn not_served(&self, class: &RuntimeClass, decision: ClassDecision, reason: String) -> Plan {
        self.board.update_class(&class.name, |status| {
            status.decision = decision;
            status.state = ArtifactState::NotServed;
            status.reason = Some(reason.clone());
        });
        Plan::NotServed { reason }
    }

    fn log_ignored(&self, class: &str, ignored: &[IgnoredFailure]) {
        for failure in ignored {
            warn!(runtime_class = class, policy = %failure.policy, error = %failure, "policy failed; skipped (failurePolicy: ignore)");
        }
    }

    /// Installs the gate (the binary `locate` finds as `<gate.dir>/shim-gate`, a link per
    /// `onDemand` class) and writes each gated class's state file. `locate` is asked only when a
    /// class is gated: a node with no `onDemand` class needs no gate binary. Classes gated before
    /// but no longer served keep their link (containerd may still run their sandboxes' `delete`
    /// through it) and are marked not ready, so a start asks the daemon, which refuses it.
    pub fn prepare_gate(
        &self,
        locate: impl FnOnce() -> Result<PathBuf, String>,
    ) -> Result<(), String> {
        let gated: Vec<(String, PathBuf)> = lock(&self.plans)
            .values()
            .filter_map(|plan| match plan {
                Plan::Serve(served) if served.class.provision == Provision::OnDemand => served
                    .real_shim
                    .clone()
                    .map(|real| (served.class.name.clone(), real)),
                _ => None,
            })
            .collect();
        let gate_dir = &self.config.gate.dir;
        if !gated.is_empty() {
            let names: Vec<&str> = gated.iter().map(|(name, _)| name.as_str()).collect();
            let binary = locate()?;
            gate::links::install(gate_dir, &binary, &names).map_err(|e| e.to_string())?;
        }
        for (name, real_shim) in &gated {
            let ready = self.board.class(name).map(|s| s.state) == Some(ArtifactState::Ready);
            self.write_gate_state(name, real_shim.clone(), ready)?;
        }
        let state_dir = gate_dir.join(gate::state::STATE_DIR);
        for entry in std::fs::read_dir(&state_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let file = entry.file_name();
            let Some(class) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if gated.iter().any(|(name, _)| name == class) {
                continue;
            }
            if let Ok(mut state) = GateState::read(gate_dir, class)
                && state.ready
            {
                state.ready = false;
                state.digest = None;
                state.write(gate_dir).map_err(|e| e.to_string())?;
                info!(
                    runtime_class = class,
                    "gate of a class no longer served now refuses starts"
                );
            }
        }
        Ok(())
    }

    fn write_gate_state(&self, class: &str, real_shim: PathBuf, ready: bool) -> Result<(), String> {
        let digest = self.board.class(class).and_then(|s| s.digest);
        GateState {
            class: class.to_owned(),
            real_shim,
            ready,
            digest: if ready { digest } else { None },
            daemon_socket: self.config.gate.socket.clone(),
            timeout_ms: u64::try_from(self.config.gate.timeout.get().as_millis())
                .unwrap_or(u64::MAX),
        }
        .write(&self.config.gate.dir)
        .map_err(|e| e.to_string())
    }

    /// Makes `class` ready: `admit` for the asking pod (if any), then `select-source`, then the
    /// artifacts. Concurrent calls for one class share one ensure.
    pub async fn ensure(
        self: &Arc<Self>,
        class: &str,
        trigger: Trigger,
        pod: Option<PodInfo>,
    ) -> Result<Ready, EnsureError> {
        self.ensure_fresh(class, trigger, pod, None).await
    }

    /// [`ensure`](Self::ensure) with the freshness chosen by the caller instead of by the
    /// class's `updatePolicy` and the trigger.
    async fn ensure_fresh(
        self: &Arc<Self>,
        class: &str,
        trigger: Trigger,
        pod: Option<PodInfo>,
        freshness: Option<Freshness>,
    ) -> Result<Ready, EnsureError> {
        let planned = match lock(&self.plans).get(class) {
            None => {
                return Err(EnsureError::NotConfigured {
                    class: class.to_owned(),
                });
            }
            Some(Plan::NotServed { reason }) => {
                return Err(EnsureError::NotServed {
                    class: class.to_owned(),
                    reason: reason.clone(),
                });
            }
            Some(Plan::Serve(served)) => served.class.clone(),
        };
        if let Some(pod) = pod {
            let who = format!("{}/{}", pod.namespace, pod.name);
            let admit = self
                .policies
                .admit(
                    Request::for_class(&planned, trigger),
                    self.node.clone(),
                    pod,
                )
                .await;
            self.log_ignored(class, &admit.ignored);
            match admit.outcome {
                AdmitOutcome::Allow => self.metrics.decision(class, "admit", "allow"),
                AdmitOutcome::Deny(denial) => {
                    self.metrics.decision(class, "admit", "deny");
                    return Err(EnsureError::PodDenied { pod: who, denial });
                }
            }
        }
        let name = planned.name.clone();
        let shared = self.inflight.run(
            class,
            || {
                let freshness = freshness.unwrap_or_else(|| freshness_for(&planned, trigger));
                self.start(planned, trigger, freshness)
            },
            move |e| {
                Err(EnsureError::Interrupted {
                    class: name,
                    reason: e.to_string(),
                })
            },
        );
        shared.await
    }

    fn start(
        self: &Arc<Self>,
        class: RuntimeClass,
        trigger: Trigger,
        freshness: Freshness,
    ) -> impl Future<Output = Result<Ready, EnsureError>> + Send + 'static {
        let this = Arc::clone(self);
        async move {
            this.board.update_class(&class.name, |s| {
                if s.state != ArtifactState::Ready {
                    s.state = ArtifactState::Pulling;
                }
            });
            let result = this.pull(&class, trigger, freshness).await;
            // Reads the install record and stats the version's files: off the async workers.
            let (store, checked) = (this.store.clone(), class.clone());
            let on_disk = tokio::task::spawn_blocking(move || {
                (store.installed(&checked.name), store.verified(&checked))
            })
            .await
            .unwrap_or((None, None));
            this.record(&class, &result, on_disk);
            result
        }
    }

    async fn pull(
        &self,
        class: &RuntimeClass,
        trigger: Trigger,
        freshness: Freshness,
    ) -> Result<Ready, EnsureError> {
        let decision = self
            .policies
            .select_source(Request::for_class(class, trigger), self.node.clone())
            .await;
        self.log_ignored(&class.name, &decision.ignored);
        let sources = match decision.outcome {
            SourceOutcome::Pull { sources } => {
                self.metrics.decision(&class.name, "select-source", "allow");
                sources
            }
            SourceOutcome::Skip { policy, reason } => {
                self.metrics.decision(&class.name, "select-source", "skip");
                return Err(EnsureError::SkippedByPolicy { policy, reason });
            }
            SourceOutcome::Deny(denial) => {
                self.metrics.decision(&class.name, "select-source", "deny");
                return Err(EnsureError::DeniedByPolicy(denial));
            }
        };
        let mut sources = sources;
        if freshness == Freshness::Installed
            && let Some(installed) = self.store.installed(&class.name)
        {
            // The source the installed version came from first: it needs no network.
            sources.sort_by_key(|s| s.reference.as_str() != installed.reference);
        }
        let mut failures = Vec::new();
        for source in sources {
            let mut attempt = class.clone();
            attempt.artifacts.url = source.reference.clone();
            if source.digest.is_some() {
                attempt.artifacts.digest = source.digest.clone();
            }
            match self.store.ensure_with(&attempt, freshness).await {
                Ok(installed) => {
                    let labels = ClassLabels {
                        class: class.name.clone(),
                    };
                    let result = if installed.pulled {
                        self.metrics
                            .pull_bytes
                            .get_or_create(&labels)
                            .inc_by(installed.bytes);
                        self.metrics
                            .pull_seconds
                            .get_or_create(&labels)
                            .observe(installed.duration.as_secs_f64());
                        "pulled"
                    } else {
                        "up_to_date"
                    };
                    self.count_pull(&class.name, result);
                    return Ok(Ready {
                        digest: installed.digest,
                        source: source.reference.as_str().to_owned(),
                        pulled: installed.pulled,
                        held_back: installed.held_back,
                        version_skew: installed.version_skew,
                    });
                }
                Err(e) => {
                    self.count_pull(&class.name, "failed");
                    failures.push(crate::errors::chain(&*e));
                }
            }
        }
        Err(if failures.is_empty() {
            EnsureError::NoSource
        } else {
            EnsureError::PullFailed { failures }
        })
    }

    fn count_pull(&self, class: &str, result: &'static str) {
        self.metrics
            .pulls
            .get_or_create(&PullLabels {
                class: class.to_owned(),
                result,
            })
            .inc();
    }

    /// `on_disk`: the class's install record, and the same only when its files are intact.
    fn record(
        &self,
        class: &RuntimeClass,
        result: &Result<Ready, EnsureError>,
        on_disk: (Option<ClassState>, Option<ClassState>),
    ) {
        let (recorded, intact) = on_disk;
        match result {
            Ok(ready) => {
                info!(runtime_class = %class.name, digest = %ready.digest, source = %ready.source, pulled = ready.pulled, "runtime class ready");
                let previous = recorded.map(|state| state.previous).unwrap_or_default();
                self.board.update_class(&class.name, |s| {
                    s.state = ArtifactState::Ready;
                    s.digest = Some(ready.digest.clone());
                    s.source = Some(ready.source.clone());
                    s.previous = previous;
                    s.held_back = ready.held_back.clone();
                    s.version_skew = ready.version_skew.clone();
                    s.last_error = None;
                    s.failures = 0;
                });
                self.metrics.set_ready(&class.name, true);
                let real_shim = match lock(&self.plans).get(&class.name) {
                    Some(Plan::Serve(served)) => served.real_shim.clone(),
                    _ => None,
                };
                if class.provision == Provision::OnDemand
                    && let Some(real) = real_shim
                    && let Err(e) = self.write_gate_state(&class.name, real, true)
                {
                    warn!(runtime_class = %class.name, error = %e, "gate state not written: starts keep asking the daemon");
                }
            }
            Err(e) => {
                // A failed update check leaves the installed version serving.
                let installed = intact;
                match &installed {
                    Some(state) => {
                        warn!(runtime_class = %class.name, error = %e, digest = %state.manifest_digest, "update failed; the installed version stays current")
                    }
                    None => {
                        warn!(runtime_class = %class.name, error = %e, "runtime class not ready")
                    }
                }
                self.board.update_class(&class.name, |s| {
                    match &installed {
                        Some(state) => {
                            s.state = ArtifactState::Ready;
                            s.digest = Some(state.manifest_digest.clone());
                        }
                        None if s.state != ArtifactState::Ready => s.state = ArtifactState::Failed,
                        None => {}
                    }
                    s.last_error = Some(e.to_string());
                    s.failures += 1;
                });
            }
        }
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
                    warn!(runtime_class = %class, error = %e, retry_in_s = delay.as_secs(), "eager runtime class failed; retrying");
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
            Err(e) => warn!(runtime_class = %class.name, error = %e, "update check failed"),
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
                            Err(e) => {
                                warn!(runtime_class = %class, pod = %who, error = %e, "prepare annotation not honoured")
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

/// The gate socket's side: each waiting gate is an ensure with the pod's identity.
pub struct GateEnsurer(pub Arc<Reconciler>);

impl Ensurer for GateEnsurer {
    fn ensure(&self, request: EnsureRequest) -> BoxFuture<'static, Result<(), Refusal>> {
        let reconciler = Arc::clone(&self.0);
        Box::pin(async move {
            // An unknown identity is an empty one: a namespace rule then denies, never admits.
            let pod = PodInfo {
                namespace: request.pod_namespace.unwrap_or_default(),
                name: request.pod_name.unwrap_or_default(),
                annotations: BTreeMap::new(),
            };
            let result = reconciler
                .ensure(&request.class, Trigger::Gate, Some(pod))
                .await;
            reconciler
                .metrics
                .gate_requests
                .get_or_create(&GateLabels {
                    class: request.class.clone(),
                    result: if result.is_ok() { "ready" } else { "failed" },
                })
                .inc();
            result.map(|_| ()).map_err(Refusal::from)
        })
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
