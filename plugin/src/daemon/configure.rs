//! containerd configured at start-up with every served stanza, and tried again while that
//! fails; the fleet's restart slots it waits for (`kube`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::containerd::{ContainerdSync, RuntimeStanza, SyncOutcome};
use crate::reconcile::metrics::ConfigApplied;
use crate::reconcile::status::ContainerdStatus;
use crate::reconcile::{Metrics, Reconciler, StatusBoard};

/// How often a failed containerd configuration is tried again.
const SYNC_RETRY: Duration = Duration::from_secs(30);

/// Where a containerd restart gets its slot: one of `fleet.maxConcurrentRestarts` (in a
/// cluster), held while containerd restarts.
pub(super) struct RestartSlots {
    #[cfg(feature = "kube")]
    pub restart_lease: Option<crate::reconcile::lease::LeaseSlots>,
    /// The daemon's runtime, for the slot's API calls from the blocking sync.
    #[cfg_attr(not(feature = "kube"), allow(dead_code))]
    pub runtime: tokio::runtime::Handle,
}

impl RestartSlots {
    /// Waits for a restart slot (in a cluster); held until dropped.
    pub(super) fn restart_permit(&self) -> Option<Box<dyn Send>> {
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

pub(super) async fn configure_containerd(
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
    metrics.config_applied(match &result {
        Ok(SyncOutcome::Unchanged) => ConfigApplied::Unchanged,
        Ok(SyncOutcome::Restarted { .. }) => ConfigApplied::Restarted,
        Ok(SyncOutcome::Pending) => ConfigApplied::Pending,
        Err(_) => ConfigApplied::Failed,
    });
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
pub(super) async fn retry_containerd<F>(
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

/// The configuration step failed (not merely waiting for an operator's restart).
pub(super) fn failed(containerd: &ContainerdStatus) -> bool {
    !containerd.configured && !containerd.restart_pending
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
