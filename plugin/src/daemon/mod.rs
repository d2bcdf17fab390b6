//! The daemon (`kata-nri-manager run`, and the launched mode): its composition root.
//!
//! Start-up order matters: the policies decide what this node serves, the gate and its state
//! files are put in place, containerd's config gets every stanza in one edit and one restart
//! (before the gate socket listens, so no gate can be waiting while containerd restarts),
//! then the gate socket, the operations endpoint, the eager classes, GC, and NRI. A changed
//! config restarts the daemon in place (`reload.rs`).
//!
//! - `Daemon::start` (here): builds the parts and starts their tasks.
//! - `external.rs` and `launched.rs`: the two ways to run, until what ends them.
//! - `configure.rs`: containerd at start-up and its retry, through
//!   [`crate::containerd::ConfigSync`].
//! - `reload.rs`: a changed config applied by a restart in place.
//! - `status_writer.rs`: the status file; `gc.rs`: the garbage collection loop.
//! - The gate server (`crate::gate::serve`) and the operations endpoint
//!   (`crate::reconcile::http`) are started here and live with what they serve.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

mod configure;
mod external;
mod gc;
mod host_setup;
mod launched;
mod node_file;
mod reload;
mod signal;
mod status_writer;

pub(crate) use external::{External, external};
pub(crate) use launched::launched;
pub(crate) use node_file::{Waited, wait_until_present as wait_for_node_file};
pub(crate) use reload::ConfigFiles;
pub(crate) use signal::shutdown_signal;
pub use status_writer::status_file;

use self::configure::{RestartSlots, configure_containerd, failed, retry_containerd};
use self::gc::collect_garbage;
use self::reload::Quiesce;
use self::status_writer::write_status;
use crate::artifacts::{ArtifactStore, StoreSettings};
use crate::config::{Config, Provision};
use crate::containerd::{ConfigSync, ContainerdSync, NodePaths};
use crate::gate;
use crate::pods::PodInventory;
use crate::policy::{EngineOptions, Guard, NodeFacts, PolicyChain, PolicyEngine, WATCH_INTERVAL};
use crate::reconcile::status::STATUS_FILE;
use crate::reconcile::{GateEnsurer, Metrics, NriTriggers, Reconciler, StatusBoard, http};

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
        node: NodePaths,
        gc_grace: Option<Duration>,
        may_restart: bool,
        gate_binary: Option<PathBuf>,
    ) -> Result<Self> {
        let config = Arc::new(config);
        let state_dir = crate::containerd::state_dir(&config, &node);
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
        let unchecked = crate::containerd::unchecked(&config, &node);
        if let Some(gap) = &unchecked {
            warn!(reason = %gap, "containerd's config check is skipped on this node");
        }
        board.update_containerd(|c| c.unchecked = unchecked);
        let host_root = node.host_root();
        let node_facts = Arc::new(
            tokio::task::spawn_blocking({
                let root = host_root.clone();
                move || NodeFacts::probe_at(&root)
            })
            .await?,
        );
        host_setup::load_kernel_modules(&config, &host_root, &board).await;

        let store = ArtifactStore::new(StoreSettings::from_config(&config));
        // Before the eager ensures start: a rollout to every node downloads a few at a time.
        #[cfg(feature = "kube")]
        if let Some(slots) = crate::reconcile::lease::pull_slots(&config.fleet) {
            store.use_pull_slots(slots);
        }
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
        // A pull killed between fetching a blob and recording its version left the blob
        // unreferenced (and maybe a temp file): gone before anything new is pulled.
        let collecting = store.clone();
        match tokio::task::spawn_blocking(move || collecting.collect_blobs()).await? {
            Ok(collected) if collected.busy => {
                info!("blob collection deferred: another process is installing")
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, dir = %config.artifacts_dir.display(), "cannot collect unreferenced blobs")
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
        tokio::spawn(host_setup::keep_cdi_spec(
            config.clone(),
            host_root.clone(),
            reconciler
                .served()
                .iter()
                .any(|class| crate::config::is_gpu_class(class)),
            board.clone(),
        ));
        let locate_gate =
            || gate::binary::locate(gate_binary.as_deref()).map_err(|e| e.to_string());
        if let Err(e) = reconciler.prepare_gate(locate_gate) {
            error!(error = %e, gate_dir = %config.gate.dir.display(), "gate not installed: onDemand classes cannot start");
        }

        #[cfg(feature = "kube")]
        let restart_lease = if may_restart {
            let lease = crate::reconcile::lease::LeaseSlots::in_cluster(
                crate::reconcile::lease::RESTART,
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
        let slots = RestartSlots {
            #[cfg(feature = "kube")]
            restart_lease,
            runtime: tokio::runtime::Handle::current(),
        };
        let sync: Arc<dyn ContainerdSync> = Arc::new(ConfigSync {
            busy: containerd_sync.clone(),
            config: config.clone(),
            node,
            may_restart,
            restart_permit: Box::new(move || slots.restart_permit()),
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
