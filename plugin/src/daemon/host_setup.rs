//! The host's part of the daemon's start and life: kernel modules before the plan, and the CDI
//! spec of the node's passthrough GPUs kept equal to the devices while a GPU class is served.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use crate::config::Config;
use crate::host::cdi::CdiChange;
use crate::host::{CdiSpec, CdiWriter, load_modules, scan};
use crate::reconcile::StatusBoard;
use crate::reconcile::status::CdiStatus;

/// How often the PCI devices are read again: binding a GPU to `vfio-pci` (the GPU Operator's
/// vfio-manager does it at its own pace) shows in the spec within this.
const CDI_RESCAN: Duration = Duration::from_secs(10);

/// Loads `node.kernelModules` and puts the outcome on the board, before the plan reads it.
pub(super) async fn load_kernel_modules(
    config: &Config,
    host_root: &std::path::Path,
    board: &StatusBoard,
) {
    let loads = load_modules(&config.node, host_root).await;
    board.update_host(|host| host.kernel_modules = loads);
}

/// Keeps the CDI spec while `gpu_served` (a served GPU class): written at once, then whenever
/// the set of passthrough GPUs changes. Without a served GPU class (or with `cdi.enabled:
/// false`) our spec is removed once, so the last GPU class takes it along.
pub(super) async fn keep_cdi_spec(
    config: Arc<Config>,
    host_root: PathBuf,
    gpu_served: bool,
    board: Arc<StatusBoard>,
) {
    let writer = CdiWriter::new(&config.cdi.dir, &config.cdi.kind);
    let wanted = config.cdi.enabled && gpu_served;
    let vendor = u16::from_str_radix(config.cdi.pci_vendor.trim_start_matches("0x"), 16);
    let Ok(vendor) = vendor else {
        // The config walk checked it; nothing to write against.
        return;
    };
    loop {
        let spec = if wanted {
            let root = host_root.clone();
            let kind = config.cdi.kind.clone();
            tokio::task::spawn_blocking(move || {
                let iommufd = root.join("dev/vfio/devices").is_dir();
                CdiSpec::passthrough_gpus(&kind, vendor, &scan(&root), iommufd)
            })
            .await
            .ok()
            .flatten()
        } else {
            None
        };
        let result = {
            let (writer, spec) = (writer.clone(), spec.clone());
            tokio::task::spawn_blocking(move || writer.sync(spec.as_ref())).await
        };
        let outcome = match result {
            Ok(outcome) => outcome.map_err(|e| e.to_string()),
            Err(join) => Err(join.to_string()),
        };
        let devices: Vec<String> = spec
            .iter()
            .flat_map(|s| s.devices.iter().map(|d| format!("{}={}", s.kind, d.name)))
            .collect();
        match &outcome {
            Ok(CdiChange::Written) => {
                info!(path = %writer.path().display(), devices = ?devices, "CDI spec written")
            }
            Ok(CdiChange::Removed) => info!(path = %writer.path().display(), "CDI spec removed"),
            Ok(CdiChange::Unchanged) => {}
            Err(e) => error!(error = %e, "CDI spec not updated"),
        }
        board.update_host(|host| {
            host.cdi = wanted.then(|| CdiStatus {
                path: writer.path().display().to_string(),
                devices,
                last_error: outcome.as_ref().err().cloned(),
            });
        });
        if !wanted {
            return;
        }
        tokio::time::sleep(CDI_RESCAN).await;
    }
}
