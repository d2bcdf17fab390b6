//! The garbage collection loop: the artifacts of a class that left the config, once no sandbox
//! of it exists for the grace period, and retired versions no sandbox can run on
//! (`crate::reconcile::gc` decides; this loop asks CRI or NRI and removes).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};

use crate::artifacts::ArtifactStore;
use crate::pods::PodInventory;
use crate::reconcile::gc::Collector;
use crate::reconcile::{Metrics, Reconciler};

pub(super) async fn collect_garbage(
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
                        metrics.gc_removed(class, versions.len(), false);
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
                    metrics.gc_removed(&class, versions.len(), true);
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
