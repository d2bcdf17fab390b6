//! `kata-nri-manager run`, and the launched (pre-registered) mode: the daemon.
//!
//! Start-up order matters: the policies decide what this node serves, the gate and its state
//! files are put in place, containerd's config gets every stanza in one edit and one restart
//! (before the gate socket listens, so no gate can be waiting while containerd restarts),
//! then the gate socket, the operations endpoint, the eager classes, GC, and NRI. A changed
//! config restarts the daemon in place (`reload.rs`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::RunArgs;
use super::configure::{self, Applied, NodeArgs};
use super::logging::{self, LogFormat};
use super::reload::{self, ConfigFiles, Quiesce};
use crate::artifacts::{ArtifactStore, StoreSettings};
use crate::config::{Config, Provision};
use crate::containerd::RuntimeStanza;
use crate::containerd::restart::Outcome;
use crate::gate;
use crate::nri::{self, LaunchEnv, PluginIdentity};
use crate::pods::PodInventory;
use crate::policy::{EngineOptions, Guard, NodeFacts, PolicyChain, PolicyEngine, WATCH_INTERVAL};
use crate::reconcile::deferred::DeferredHandler;
use crate::reconcile::gc::Collector;
use crate::reconcile::status::{ArtifactState, ContainerdStatus, STATUS_FILE};
use crate::reconcile::{
    ContainerdSync, GateEnsurer, Metrics, NriTriggers, Reconciler, StatusBoard, SyncOutcome, http,
};

/// Where a launched plugin logs: containerd gives it no stdout or stderr.
const LAUNCHED_LOG_DIR: &str = "/var/log/kata-nri-manager";
/// The config a launched plugin reads (containerd starts it without arguments).
const LAUNCHED_CONFIG: &str = "/etc/kata-nri-manager/config.yaml";
const ENV_CONFIG: &str = "KATA_NRI_MANAGER_CONFIG";
/// Where `deploy/nri/install.sh` puts a launched plugin's config by default: containerd's
/// `plugin_config_path`, as `<NN-name>.conf` (containerd also hands it over in Configure).
const NRI_CONF_DIR: &str = "/etc/nri/conf.d";
/// How often a failed containerd configuration is tried again.
const SYNC_RETRY: Duration = Duration::from_secs(30);

/// Runs the daemon against containerd's NRI socket until SIGTERM or SIGINT.
pub async fn external(args: RunArgs) -> Result<()> {
    let loaded = crate::config::load(&args.config, args.node_config.as_deref())
        .with_context(|| format!("loading config {}", args.config.display()))?;
    let files = ConfigFiles {
        operator: args.config.clone(),
        node: args.node_config.clone(),
        binary: std::env::current_exe().context("locating our own binary")?,
    };
    // What a changed file is compared with: the config as loaded, before the overrides below.
    let as_loaded = loaded.config.clone();
    let mut config = loaded.config;
    let format = args.log_format.unwrap_or(match config.log.format {
        crate::config::LogFormat::Text => LogFormat::Text,
        crate::config::LogFormat::Json => LogFormat::Json,
    });
    logging::init(format, None).context("setting up logging")?;
    for warning in &loaded.warnings {
        warn!(%warning, "config");
    }
    let identity = PluginIdentity::new(
        args.plugin_name
            .unwrap_or_else(|| config.nri.plugin_name.clone()),
        args.plugin_idx
            .unwrap_or_else(|| config.nri.plugin_idx.clone()),
    )?;
    let socket = args
        .nri_socket
        .clone()
        .unwrap_or_else(|| config.nri.socket.clone());
    info!(plugin = %identity, socket = %socket.display(), version = env!("CARGO_PKG_VERSION"), "starting");
    // A containerd restart waits for this socket to come back.
    config.nri.socket = socket.clone();

    let daemon = Daemon::start(config, args.node, args.gc_grace, true, args.gate_binary).await?;
    tokio::select! {
        result = nri::run_external(&socket, &identity, daemon.triggers.clone(), daemon.triggers.clone()) => {
            result.context("NRI connection")?;
        }
        signal = shutdown_signal() => {
            // SIGTERM never uninstalls: rolling updates send it.
            info!(signal, "stopping");
        }
        error = reload::apply_changes(&files, Arc::new(as_loaded), daemon.metrics.clone(), &daemon.quiesce) => {
            // Exiting instead: the supervisor (kubelet, systemd) starts us with the new config.
            return Err(anyhow::Error::new(error)
                .context(format!("executing {}", files.binary.display()))
                .context("cannot restart in place to apply the new config; exiting"));
        }
    }
    Ok(())
}

/// Runs as a plugin containerd launched from its `plugin_path`, until containerd closes the socket.
///
/// Its config is the `.conf` containerd hands over in Configure (read by containerd from its
/// root-owned `plugin_config_path`), else a root-owned file; without either it only tracks pods.
pub async fn launched(launch: nri::Result<LaunchEnv>) -> Result<()> {
    let launch = launch.context("starting as a launched NRI plugin")?;
    let log_file = PathBuf::from(LAUNCHED_LOG_DIR).join(format!("{}.log", launch.identity));
    logging::init(LogFormat::Json, Some(&log_file))
        .with_context(|| format!("opening log file {}", log_file.display()))?;
    let name = launch.identity.to_string();
    info!(plugin = %name, version = env!("CARGO_PKG_VERSION"), "starting as a launched plugin");

    let (deferred, config_text) = DeferredHandler::new();
    let session = nri::run_launched(launch, deferred.clone(), deferred.clone());
    tokio::pin!(session);
    let text = tokio::select! {
        text = config_text => text.unwrap_or_default(),
        end = &mut session => return session_ended(end),
        signal = shutdown_signal() => {
            info!(signal, "stopping");
            return Ok(());
        }
    };
    let triggers = match launched_config(&name, &text)? {
        Some(config) => {
            // containerd launched us and stops us when it stops: restarting it is not ours to do.
            let node = NodeArgs {
                state_dir: None,
                containerd_binary: None,
            };
            // No flags here: the gate binary is looked for beside our own executable.
            Daemon::start(config, node, None, false, None)
                .await?
                .triggers
        }
        None => {
            warn!(
                "no config: tracking pods only (install the config as {NRI_CONF_DIR}/{name}.conf or {LAUNCHED_CONFIG})"
            );
            Arc::new(NriTriggers::new(
                Arc::new(PodInventory::new()),
                BTreeSet::new(),
                mpsc::unbounded_channel().0,
                Arc::new(Metrics::new()),
                Arc::new(StatusBoard::new([])),
            ))
        }
    };
    deferred.install(triggers);
    tokio::select! {
        end = &mut session => session_ended(end),
        signal = shutdown_signal() => {
            info!(signal, "stopping");
            Ok(())
        }
    }
}

fn session_ended(end: nri::Result<nri::SessionEnd>) -> Result<()> {
    match end {
        Ok(end) => {
            info!(
                ?end,
                "runtime closed the connection; a launched plugin exits (containerd relaunches it on its next start)"
            );
            Ok(())
        }
        Err(e) => {
            error!(error = %e, "launched plugin failed");
            Err(e.into())
        }
    }
}

/// A launched plugin's config: the `.conf` text containerd handed over, else
/// `KATA_NRI_MANAGER_CONFIG` or `/etc/kata-nri-manager/config.yaml` when present (root-owned, as
/// `run` requires without `--node-config`); `None` when there is none.
fn launched_config(plugin: &str, conf: &str) -> Result<Option<Config>> {
    if !conf.trim().is_empty() {
        let origin = PathBuf::from(format!("{NRI_CONF_DIR}/{plugin}.conf (from containerd)"));
        return Ok(Some(
            crate::config::parse_str(conf, &origin, crate::config::FileKind::Trusted)
                .with_context(|| format!("loading config {}", origin.display()))?,
        ));
    }
    let path = std::env::var_os(ENV_CONFIG)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(LAUNCHED_CONFIG));
    if !path.exists() {
        return Ok(None);
    }
    let loaded = crate::config::load(&path, None)
        .with_context(|| format!("loading config {}", path.display()))?;
    for warning in &loaded.warnings {
        warn!(%warning, "config");
    }
    Ok(Some(loaded.config))
}

/// The running daemon's parts that outlive start-up.
struct Daemon {
    triggers: Arc<NriTriggers>,
    metrics: Arc<Metrics>,
    /// What a restart in place to apply a changed config waits for.
    quiesce: Quiesce,
}

impl Daemon {
    async fn start(
        config: Config,
        node: NodeArgs,
        gc_grace: Option<Duration>,
        may_restart: bool,
        gate_binary: Option<PathBuf>,
    ) -> Result<Self> {
        let config = Arc::new(config);
        let state_dir = configure::state_dir(&config, &node);
        let metrics = Arc::new(Metrics::new());
        let board = Arc::new(StatusBoard::new(
            config
                .runtime_classes
                .iter()
                .map(|c| (c.name.clone(), c.provision)),
        ));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {} (config key `listen`)", config.listen))?;
        info!(address = %listener.local_addr().unwrap_or(config.listen), "operations endpoint listening (/metrics, /healthz, /readyz)");
        tokio::spawn({
            let (metrics, board) = (metrics.clone(), board.clone());
            async move {
                if let Err(e) = http::serve(listener, metrics, board).await {
                    error!(error = %e, "operations endpoint stopped");
                }
            }
        });

        let engine = PolicyEngine::new(EngineOptions {
            limits: config.policies.limits.clone(),
            cache_dir: Some(state_dir.join("policy-cache")),
        })
        .context("starting the policy engine")?;
        let (policies, errors) =
            PolicyChain::start(engine, config.policies.clone(), Guard::from_config(&config));
        if !config.policies.dir.exists() {
            info!(dir = %config.policies.dir.display(), "no policies directory: every class is served as configured");
        } else {
            for e in errors {
                warn!(error = %e, dir = %config.policies.dir.display(), "policy not loaded");
            }
        }
        policies.watch(WATCH_INTERVAL);
        let node_facts = Arc::new(tokio::task::spawn_blocking(NodeFacts::probe).await?);

        let store = ArtifactStore::new(StoreSettings::from_config(&config));
        let sweeping = store.clone();
        match tokio::task::spawn_blocking(move || sweeping.sweep_staging()).await? {
            Ok(removed) => {
                for dir in removed {
                    info!(dir = %dir.display(), "removed what an interrupted pull left behind");
                }
            }
            Err(e) => {
                warn!(error = %e, dir = %config.artifacts_dir.display(), "cannot sweep interrupted pulls' staging directories")
            }
        }
        let reconciler = Reconciler::new(
            config.clone(),
            store.clone(),
            policies,
            node_facts,
            board.clone(),
            metrics.clone(),
        );
        let stanzas = reconciler.plan().await;
        let locate_gate =
            || gate::binary::locate(gate_binary.as_deref()).map_err(|e| e.to_string());
        if let Err(e) = reconciler.prepare_gate(locate_gate) {
            error!(error = %e, gate_dir = %config.gate.dir.display(), "gate not installed: onDemand classes cannot start");
        }

        #[cfg(feature = "kube")]
        let restart_lease = if may_restart {
            let lease = crate::reconcile::lease::RestartLease::in_cluster(
                config.fleet.max_concurrent_restarts,
            );
            if lease.is_none() {
                info!(
                    "not in a Kubernetes cluster (no in-cluster credentials, NODE_NAME or POD_NAMESPACE): containerd restarts are not coordinated"
                );
            }
            lease
        } else {
            None
        };
        let containerd_sync = Arc::new(tokio::sync::Mutex::new(()));
        let sync: Arc<dyn ContainerdSync> = Arc::new(CliSync {
            busy: containerd_sync.clone(),
            config: config.clone(),
            node,
            may_restart,
            #[cfg(feature = "kube")]
            restart_lease,
            runtime: tokio::runtime::Handle::current(),
        });
        configure_containerd(&reconciler, &sync, stanzas.clone(), &metrics).await;
        // Gate connections open now, counted by the gate server from accept until the answer is
        // written: no containerd retry or restart in place is started while one is open.
        let gate_connections = Arc::new(AtomicUsize::new(0));
        if failed(&board.containerd()) {
            let (reconciler, sync, metrics) = (reconciler.clone(), sync.clone(), metrics.clone());
            tokio::spawn(retry_containerd(
                board.clone(),
                gate_connections.clone(),
                move || {
                    let (reconciler, sync, metrics, stanzas) = (
                        reconciler.clone(),
                        sync.clone(),
                        metrics.clone(),
                        stanzas.clone(),
                    );
                    async move { configure_containerd(&reconciler, &sync, stanzas, &metrics).await }
                },
            ));
        }

        tokio::spawn({
            let socket = config.gate.socket.clone();
            let ensurer = Arc::new(GateEnsurer(reconciler.clone()));
            let connections = gate_connections.clone();
            async move {
                if let Err(e) = gate::serve(&socket, ensurer, connections).await {
                    error!(error = %e, "gate socket stopped: onDemand starts fail until the daemon restarts");
                }
            }
        });
        reconciler.start_eager();
        reconciler.start_updates();

        let inventory = Arc::new(PodInventory::new());
        let (signals, mut received) = mpsc::unbounded_channel();
        let classes: BTreeSet<String> = config
            .runtime_classes
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let triggers = Arc::new(NriTriggers::new(
            inventory.clone(),
            classes,
            signals,
            metrics.clone(),
            board.clone(),
        ));
        tokio::spawn({
            let reconciler = reconciler.clone();
            async move {
                while let Some(signal) = received.recv().await {
                    reconciler.handle(signal);
                }
            }
        });
        tokio::spawn(write_status(
            board.clone(),
            inventory.clone(),
            store.clone(),
            state_dir.join(STATUS_FILE),
        ));
        tokio::spawn(collect_garbage(
            reconciler,
            store,
            inventory,
            metrics.clone(),
            config.containerd.address.clone(),
            gc_grace.unwrap_or(crate::reconcile::gc::DEFAULT_GRACE),
        ));
        #[cfg(feature = "kube")]
        match crate::reconcile::labels::NodeLabeler::in_cluster().await {
            Some(labeler) => {
                tokio::spawn(labeler.run(board.clone()));
            }
            None => info!(
                "not in a Kubernetes cluster (no in-cluster credentials or NODE_NAME): no node labels"
            ),
        }
        let on_demand = config
            .runtime_classes
            .iter()
            .filter(|c| c.provision == Provision::OnDemand)
            .count();
        info!(
            classes = config.runtime_classes.len(),
            on_demand, "daemon started"
        );
        Ok(Self {
            triggers,
            metrics,
            quiesce: Quiesce {
                containerd_sync,
                gate_connections,
                patience: config.gate.timeout.get(),
            },
        })
    }
}

/// containerd configured through the same code as `configure`.
struct CliSync {
    /// Held for each sync, so a restart in place never cuts one short.
    busy: Arc<tokio::sync::Mutex<()>>,
    config: Arc<Config>,
    node: NodeArgs,
    may_restart: bool,
    /// In a cluster: one of `fleet.maxConcurrentRestarts` slots is held while containerd
    /// restarts.
    #[cfg(feature = "kube")]
    restart_lease: Option<crate::reconcile::lease::RestartLease>,
    /// The daemon's runtime, for the slot's API calls from the blocking sync.
    #[cfg_attr(not(feature = "kube"), allow(dead_code))]
    runtime: tokio::runtime::Handle,
}

impl CliSync {
    /// Waits for a restart slot (in a cluster); held until dropped.
    fn restart_permit(&self) -> Option<Box<dyn Send>> {
        #[cfg(feature = "kube")]
        if let Some(lease) = &self.restart_lease {
            let permit = self.runtime.block_on(lease.acquire());
            return Some(Box::new(crate::reconcile::lease::HeldOn {
                permit: Some(permit),
                runtime: self.runtime.clone(),
            }));
        }
        None
    }
}

impl ContainerdSync for CliSync {
    fn sync(&self, desired: &[RuntimeStanza]) -> Result<SyncOutcome, String> {
        // On a blocking thread (`configure_containerd`), where waiting is allowed.
        let _busy = self.busy.blocking_lock();
        let permit = || self.restart_permit();
        match configure::sync(&self.config, desired, &self.node, !self.may_restart, permit) {
            Ok(Applied::Unchanged) => Ok(SyncOutcome::Unchanged),
            Ok(Applied::Written {
                restart: Some(Outcome::Restarted { took }),
            }) => Ok(SyncOutcome::Restarted { took }),
            Ok(Applied::Written { .. }) => Ok(SyncOutcome::Pending),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

async fn configure_containerd(
    reconciler: &Reconciler,
    sync: &Arc<dyn ContainerdSync>,
    stanzas: Vec<RuntimeStanza>,
    metrics: &Metrics,
) {
    let board = reconciler.board().clone();
    let count = stanzas.len();
    let sync = sync.clone();
    let result = tokio::task::spawn_blocking(move || sync.sync(&stanzas))
        .await
        .unwrap_or_else(|e| Err(format!("configuring containerd did not finish: {e}")));
    let label = match &result {
        Ok(SyncOutcome::Unchanged) => "unchanged",
        Ok(SyncOutcome::Restarted { .. }) => "restarted",
        Ok(SyncOutcome::Pending) => "pending",
        Err(_) => "failed",
    };
    metrics
        .containerd_restarts
        .get_or_create(&crate::reconcile::metrics::ResultLabels { result: label })
        .inc();
    match result {
        Ok(SyncOutcome::Pending) => {
            warn!(
                stanzas = count,
                "containerd config written; restart containerd to serve it (restart pending)"
            );
            board.update_containerd(|c| {
                c.configured = false;
                c.restart_pending = true;
                c.last_error = Some(
                    "restart pending: restart containerd to serve the new runtime handlers".into(),
                );
            });
        }
        Ok(outcome) => {
            info!(
                stanzas = count,
                ?outcome,
                "containerd serves the runtime classes"
            );
            board.update_containerd(|c| {
                c.configured = true;
                c.restart_pending = false;
                c.last_error = None;
            });
        }
        Err(e) => {
            error!(error = %e, "containerd not configured");
            board.update_containerd(|c| {
                c.configured = false;
                c.last_error = Some(e);
            });
        }
    }
}

/// Tries a failed containerd configuration again (`configure`) until it is configured. A try
/// is not started while a gate connection is open: a restart would kill the sandbox start the
/// gate waits for. (A gate that connects once a try has begun meets the restart; kubelet then
/// retries its sandbox.)
async fn retry_containerd<F>(
    board: Arc<StatusBoard>,
    gate_connections: Arc<AtomicUsize>,
    mut configure: impl FnMut() -> F,
) where
    F: Future<Output = ()>,
{
    loop {
        tokio::time::sleep(SYNC_RETRY).await;
        if !failed(&board.containerd()) {
            return;
        }
        if gate_connections.load(Ordering::SeqCst) > 0 {
            continue;
        }
        configure().await;
    }
}

/// The install records are the truth about versions: a `rollback` run from the CLI shows in
/// the status (and the node annotation) without waiting for the next ensure.
fn follow_install_records(board: &StatusBoard, store: &ArtifactStore) {
    for mut class in board.report(&[]).classes {
        if class.state != ArtifactState::Ready {
            continue;
        }
        if let Some(record) = store.installed(&class.class)
            && class.follow_record(&record)
        {
            board.update_class(&class.class, |s| {
                s.follow_record(&record);
            });
        }
    }
}

/// The configuration step failed (not merely waiting for an operator's restart).
fn failed(containerd: &ContainerdStatus) -> bool {
    !containerd.configured && !containerd.restart_pending
}

async fn write_status(
    board: Arc<StatusBoard>,
    inventory: Arc<PodInventory>,
    store: ArtifactStore,
    path: PathBuf,
) {
    let mut warned = false;
    loop {
        let (board, pods, file) = (board.clone(), inventory.snapshot(), path.clone());
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            follow_install_records(&board, &store);
            board.write_if_changed(&file, &pods)
        })
        .await;
        if let Ok(Err(e)) = written
            && !warned
        {
            warn!(path = %path.display(), error = %e, "status file not written; `status` will not see this daemon");
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn collect_garbage(
    reconciler: Arc<Reconciler>,
    store: ArtifactStore,
    inventory: Arc<PodInventory>,
    metrics: Arc<Metrics>,
    cri_address: PathBuf,
    grace: Duration,
) {
    let mut collector = Collector::new(grace);
    let period = (grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut cri_warned = false;
    loop {
        let served: BTreeSet<String> = reconciler.served().into_iter().collect();
        let recorded = store.recorded_classes();
        let retiring = store.classes_with_retired_versions();
        if recorded.iter().all(|class| served.contains(class)) && retiring.is_empty() {
            tokio::time::sleep(period).await;
            continue;
        }
        // CRI knows every sandbox; NRI misses the removal of a sandbox whose handler is gone.
        let pods = match crate::containerd::cri::list_sandboxes(&cri_address).await {
            Ok(pods) => Some(pods),
            Err(e) => {
                if !cri_warned {
                    warn!(error = %e, "CRI unavailable: garbage collection relies on NRI's pod list");
                    cri_warned = true;
                }
                let synchronized = reconciler.board().nri().synchronized;
                synchronized.then(|| inventory.snapshot())
            }
        };
        if let Some(pods) = &pods {
            for class in retiring.iter().filter(|c| !reconciler.busy(c)) {
                let ages = crate::reconcile::gc::sandbox_ages(pods, class);
                let (store, name) = (store.clone(), class.clone());
                match tokio::task::spawn_blocking(move || store.collect_retired(&name, &ages)).await
                {
                    Ok(Ok(versions)) if !versions.is_empty() => {
                        info!(runtime_class = %class, ?versions, "retired versions removed")
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        warn!(runtime_class = %class, error = %e, "retired versions not removed")
                    }
                    Err(e) => {
                        warn!(runtime_class = %class, error = %e, "retired versions not removed")
                    }
                }
            }
        }
        for class in collector.sweep(&recorded, &served, pods.as_deref(), Instant::now()) {
            match remove(&store, &class).await {
                Ok(versions) => {
                    info!(runtime_class = %class, ?versions, "artifacts of a class no longer served removed");
                    metrics
                        .gc_removed
                        .get_or_create(&crate::reconcile::metrics::ClassLabels {
                            class: class.clone(),
                        })
                        .inc();
                    collector.removed(&class);
                }
                Err(e) => warn!(runtime_class = %class, error = %e, "artifacts not removed"),
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn remove(store: &ArtifactStore, class: &str) -> Result<Vec<String>> {
    let (store, class) = (store.clone(), class.to_owned());
    Ok(tokio::task::spawn_blocking(move || store.remove(&class)).await??)
}

/// The daemon's status file.
pub fn status_file(config: &Config, node: &NodeArgs) -> PathBuf {
    configure::state_dir(config, node).join(STATUS_FILE)
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_containerd_config_is_retried_only_while_no_gate_is_open() {
        let board = Arc::new(StatusBoard::new(Vec::new()));
        let gates = Arc::new(AtomicUsize::new(1));
        let tries = Arc::new(AtomicU32::new(0));
        let retry = tokio::spawn(retry_containerd(board.clone(), gates.clone(), {
            let (board, tries) = (board.clone(), tries.clone());
            move || {
                // The second try succeeds.
                if tries.fetch_add(1, Ordering::SeqCst) == 1 {
                    board.update_containerd(|c| c.configured = true);
                }
                std::future::ready(())
            }
        }));
        tokio::time::sleep(SYNC_RETRY * 3 + Duration::from_secs(1)).await;
        assert_eq!(
            tries.load(Ordering::SeqCst),
            0,
            "retried while a gate was open"
        );
        gates.store(0, Ordering::SeqCst);
        tokio::time::sleep(SYNC_RETRY).await;
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        tokio::time::sleep(SYNC_RETRY).await;
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        tokio::time::sleep(SYNC_RETRY).await;
        assert!(
            retry.is_finished(),
            "retries go on once containerd is configured"
        );
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }
}
