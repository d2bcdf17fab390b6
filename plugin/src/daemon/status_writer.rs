//! The status file `status` reads, written while the daemon runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::artifacts::ArtifactStore;
use crate::config::Config;
use crate::containerd::NodePaths;
use crate::pods::PodInventory;
use crate::reconcile::StatusBoard;
use crate::reconcile::status::{ArtifactState, STATUS_FILE};

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

pub(super) async fn write_status(
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

/// The daemon's status file.
pub fn status_file(config: &Config, node: &NodePaths) -> PathBuf {
    crate::containerd::state_dir(config, node).join(STATUS_FILE)
}
