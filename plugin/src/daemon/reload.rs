//! A changed config, picked up while the daemon runs (`docs/daemon.md`, "A changed config"): a
//! ConfigMap change reaches every node within a minute, because kubelet updates a mounted
//! ConfigMap in place.
//!
//! Every part of the daemon holds the config it started with, so a change is applied the way a
//! start applies it: the daemon replaces itself with a fresh run of the same binary and
//! arguments (`execve`: same PID, so kubelet and systemd see no restart), which reads the files,
//! re-plans, and syncs containerd through the restart slots like any start. Before that:
//!
//! - The files must read the same at two ticks in a row and load and validate: a file caught
//!   half-written (an empty file is a valid config with no classes) is never acted on.
//! - Any containerd sync under way ends first, and none begins after: a configure-and-restart cut
//!   short after the write would look done to the next run, which would never restart containerd.
//! - The gate connections open then are answered first (at most `gate.timeout`, counted from
//!   when the sync lock is ours): a gate whose connection closes fails its sandbox start.
//! - Every wait is cancellable: SIGTERM meanwhile stops the daemon, never execs it.
//! - The files are read once more: if they changed meanwhile, the daemon goes back to watching
//!   rather than exec into something it has not checked.
//!
//! Files that fail to load change nothing: the daemon keeps running what it has, logs why, and
//! sets `kata_nri_manager_config_rejected` until the files load again. While they are rejected
//! they are loaded at every tick (logged only when the reason changes), since the fix may be to a
//! directory on their path, which the snapshot does not see.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info};

use crate::config::{self, Config};
use crate::reconcile::Metrics;

/// How often the files are read.
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the open gate connections are counted again.
const GATE_POLL: Duration = Duration::from_millis(200);

/// The files `run` was started with, and the binary to run again.
#[derive(Debug, Clone)]
pub(crate) struct ConfigFiles {
    pub operator: PathBuf,
    pub node: Option<PathBuf>,
    /// Resolved at the first start: after an upgrade replaced the binary, `/proc/self/exe`
    /// would be the deleted old one.
    pub binary: PathBuf,
}

/// One file as read: its contents, and what the ownership checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    contents: Vec<u8>,
    inode: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// What the files held when read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot(Vec<FileState>);

impl ConfigFiles {
    /// The files as they are now, or why they cannot be read (naming the file).
    fn snapshot(&self) -> Result<Snapshot, String> {
        let read = |path: &Path| -> Result<FileState, String> {
            let failed = |e: std::io::Error| format!("reading {}: {e}", path.display());
            let metadata = std::fs::metadata(path).map_err(failed)?;
            Ok(FileState {
                contents: std::fs::read(path).map_err(failed)?,
                inode: metadata.ino(),
                mode: metadata.mode(),
                uid: metadata.uid(),
                gid: metadata.gid(),
            })
        };
        let mut files = vec![read(&self.operator)?];
        if let Some(node) = &self.node {
            files.push(read(node)?);
        }
        Ok(Snapshot(files))
    }
}

/// What a restart in place waits for.
pub(crate) struct Quiesce {
    /// Held while containerd is configured and restarted.
    pub containerd_sync: Arc<tokio::sync::Mutex<()>>,
    /// Gate connections not yet answered.
    pub gate_connections: Arc<AtomicUsize>,
    /// `gate.timeout`: how long a gate may be waiting on us.
    pub patience: Duration,
}

/// Watches the files and applies a change by restarting in place. Returns only if the exec
/// failed.
pub(crate) async fn apply_changes(
    files: &ConfigFiles,
    running: Arc<Config>,
    metrics: Arc<Metrics>,
    quiesce: &Quiesce,
) -> std::io::Error {
    loop {
        let checked = changed(files, &running, &metrics, WATCH_INTERVAL).await;
        if let Some(error) = restart_in_place(files, &checked, quiesce).await {
            return error;
        }
        info!("the config files changed again while the restart waited; checking them again");
    }
}

/// Resolves with the files' snapshot once they hold a valid config other than `running` (as
/// loaded at start, before any command-line override) and read the same twice in a row. Each
/// tick reads and loads the files on a blocking thread: the async workers serve the gate and NRI.
async fn changed(
    files: &ConfigFiles,
    running: &Arc<Config>,
    metrics: &Arc<Metrics>,
    interval: Duration,
) -> Snapshot {
    let mut watch = Watch::default();
    loop {
        tokio::time::sleep(interval).await;
        let (files, running, metrics) = (files.clone(), running.clone(), metrics.clone());
        let ticked = tokio::task::spawn_blocking(move || {
            let found = watch.tick(&files, &running, &metrics);
            (watch, found)
        })
        .await;
        match ticked {
            Ok((_, Some(snapshot))) => return snapshot,
            Ok((kept, None)) => watch = kept,
            Err(e) => {
                error!(error = %e, "checking the config files failed; checking them again");
                watch = Watch::default();
            }
        }
    }
}

/// What the watch remembers from one tick to the next.
#[derive(Default)]
struct Watch {
    /// The last tick's read, or why it failed.
    previous: Option<Result<Snapshot, String>>,
    /// The snapshot last found to hold the running config.
    accepted: Option<Snapshot>,
    /// The reason of the rejection last logged.
    rejected: Option<String>,
}

impl Watch {
    /// One look at the files (blocking): their snapshot if they hold a changed, valid config
    /// that read the same at the last tick.
    fn tick(
        &mut self,
        files: &ConfigFiles,
        running: &Config,
        metrics: &Metrics,
    ) -> Option<Snapshot> {
        let read = files.snapshot();
        if self.previous.as_ref() != Some(&read) {
            // Changed since the last tick (or swapped at this very moment): wait for it to
            // hold still.
            self.previous = Some(read);
            return None;
        }
        let snapshot = match read {
            Ok(snapshot) => snapshot,
            // Missing or unreadable for a whole tick.
            Err(reason) => {
                self.reject(files, metrics, reason);
                return None;
            }
        };
        // A rejected snapshot is loaded again at every tick: the fix may be to a directory on
        // the files' path, which the snapshot does not see.
        if self.accepted.as_ref() == Some(&snapshot) {
            self.accept(metrics);
            return None;
        }
        match config::load(&files.operator, files.node.as_deref()) {
            Err(e) => self.reject(files, metrics, format!("{e:#}")),
            // Comments, order, spelling out a default: nothing to apply.
            Ok(loaded) if loaded.config == *running => {
                self.accept(metrics);
                self.accepted = Some(snapshot);
            }
            Ok(loaded) => {
                info!(
                    changed = ?changed_keys(running, &loaded.config),
                    "config changed"
                );
                return Some(snapshot);
            }
        }
        None
    }

    fn reject(&mut self, files: &ConfigFiles, metrics: &Metrics, reason: String) {
        metrics.config_rejected.set(1);
        if self.rejected.as_ref() != Some(&reason) {
            error!(
                config = %files.operator.display(),
                error = %reason,
                "config change rejected: still running the config the daemon started with"
            );
            self.rejected = Some(reason);
        }
    }

    fn accept(&mut self, metrics: &Metrics) {
        metrics.config_rejected.set(0);
        self.rejected = None;
    }
}

/// The top-level keys whose values differ (names only: a config holds no secrets, but values can
/// be long).
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut keys: Vec<String> = old
        .iter()
        .filter(|(key, value)| new.get(*key) != Some(*value))
        .map(|(key, _)| key.clone())
        .chain(new.keys().filter(|key| !old.contains_key(*key)).cloned())
        .collect();
    keys.sort();
    keys
}

/// Quiesces (see the module doc), then replaces this process with a fresh run of the same binary
/// and arguments. `None`: the files no longer hold `checked`, nothing was done. `Some`: the
/// exec failed.
async fn restart_in_place(
    files: &ConfigFiles,
    checked: &Snapshot,
    quiesce: &Quiesce,
) -> Option<std::io::Error> {
    // The sync lock first, held through the exec: a sync under way ends, and none begins after.
    // Gates need no sync to be answered.
    let idle = Arc::clone(&quiesce.containerd_sync).lock_owned().await;
    let deadline = Instant::now() + quiesce.patience;
    let open = || quiesce.gate_connections.load(Ordering::SeqCst);
    if open() > 0 {
        info!(
            gates = open(),
            "the restart to apply the new config waits for the gates being answered"
        );
    }
    while open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(GATE_POLL).await;
    }
    let (files, checked) = (files.clone(), checked.clone());
    let exec = tokio::task::spawn_blocking(move || {
        let _idle = idle;
        if files.snapshot().as_ref() != Ok(&checked) {
            return None;
        }
        info!("restarting in place to apply the new config");
        let mut args = std::env::args_os();
        let arg0 = args
            .next()
            .unwrap_or_else(|| OsString::from("kata-nri-manager"));
        Some(Command::new(&files.binary).arg0(arg0).args(args).exec())
    });
    exec.await
        .unwrap_or_else(|join| Some(std::io::Error::other(join.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::atomic::{AtomicWriter, FileMode};

    fn parsed(yaml: &str) -> Config {
        serde_yaml::from_str(yaml).expect("config")
    }

    #[test]
    fn changed_keys_names_what_differs_and_nothing_else() {
        let old = parsed("listen: 127.0.0.1:9464\nruntimeClasses: []\n");
        let new = parsed(
            "listen: 127.0.0.1:9465\nruntimeClasses:\n- name: kata-qemu\n  artifacts: {url: registry.local/kata:1}\n",
        );
        assert_eq!(changed_keys(&old, &new), ["listen", "runtimeClasses"]);
        assert!(changed_keys(&old, &old).is_empty());
    }

    /// Written beside and renamed over, as kubelet swaps a ConfigMap's files.
    fn write_private(path: &Path, text: &str) {
        AtomicWriter::new()
            .write(path, text.as_bytes(), FileMode::Exactly(0o600))
            .expect("write");
    }

    fn files(dir: &Path) -> ConfigFiles {
        ConfigFiles {
            operator: dir.join("config.yaml"),
            node: None,
            binary: PathBuf::from("/nonexistent"),
        }
    }

    /// A daemon's files in a temporary directory, and the config it runs.
    struct Watched {
        _dir: tempfile::TempDir,
        files: ConfigFiles,
        running: Arc<Config>,
        metrics: Arc<Metrics>,
    }

    impl Watched {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let files = files(dir.path());
            write_private(&files.operator, "listen: 127.0.0.1:9464\n");
            let running = Arc::new(config::load(&files.operator, None).expect("load").config);
            Self {
                _dir: dir,
                files,
                running,
                metrics: Arc::new(Metrics::new()),
            }
        }

        fn write(&self, text: &str) {
            write_private(&self.files.operator, text);
        }

        /// Watching the files, a check every `tick`; pin it to poll it.
        fn watch(&self, tick: Duration) -> impl Future<Output = Snapshot> + '_ {
            changed(&self.files, &self.running, &self.metrics, tick)
        }

        fn chmod(&self, mode: u32) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.files.operator, std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        }
    }

    async fn not_within(watching: &mut (impl Future + Unpin), wait: Duration, why: &str) {
        tokio::select! {
            _ = watching => panic!("{why}"),
            _ = tokio::time::sleep(wait) => {}
        }
    }

    async fn within<F: Future + Unpin>(watching: &mut F, why: &str) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), watching)
            .await
            .expect(why)
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_change_is_reported_and_a_valid_one_is_returned() {
        let w = Watched::new();
        let tick = Duration::from_millis(20);
        let watching = w.watch(tick);
        tokio::pin!(watching);
        w.write("# a comment\nlisten: 127.0.0.1:9464\n");
        not_within(&mut watching, tick * 10, "an equal config is not a change").await;
        assert_eq!(w.metrics.config_rejected.get(), 0);
        w.write("listen: [not an address\n");
        not_within(&mut watching, tick * 10, "a broken config is not a change").await;
        assert_eq!(w.metrics.config_rejected.get(), 1);
        w.write("listen: 127.0.0.1:9465\n");
        within(&mut watching, "the fixed, changed config is seen").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_missing_for_a_tick_is_reported_until_it_is_back() {
        let w = Watched::new();
        let tick = Duration::from_millis(20);
        let watching = w.watch(tick);
        tokio::pin!(watching);
        not_within(
            &mut watching,
            tick * 5,
            "the running config is not a change",
        )
        .await;
        std::fs::remove_file(&w.files.operator).expect("remove");
        not_within(&mut watching, tick * 5, "a missing file is not a change").await;
        assert_eq!(w.metrics.config_rejected.get(), 1);
        w.write("listen: 127.0.0.1:9464\n");
        not_within(
            &mut watching,
            tick * 5,
            "the same config back is not a change",
        )
        .await;
        assert_eq!(w.metrics.config_rejected.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_does_not_hold_still_is_not_acted_on() {
        let w = Watched::new();
        let tick = Duration::from_millis(50);
        let watching = w.watch(tick);
        tokio::pin!(watching);
        // A different, valid config at every tick: never the same twice in a row.
        for port in 9500..9520 {
            w.write(&format!("listen: 127.0.0.1:{port}\n"));
            not_within(&mut watching, tick / 2, "acted on a file still changing").await;
        }
        within(&mut watching, "once it holds still, the change is seen").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_chmod_alone_gets_a_rejected_file_checked_again() {
        let w = Watched::new();
        let tick = Duration::from_millis(20);
        let watching = w.watch(tick);
        tokio::pin!(watching);
        // Writable by others: refused for its mode, whatever it says.
        w.write("listen: 127.0.0.1:9465\n");
        w.chmod(0o666);
        not_within(
            &mut watching,
            tick * 10,
            "a file others may write was accepted",
        )
        .await;
        assert_eq!(w.metrics.config_rejected.get(), 1);
        w.chmod(0o600);
        within(&mut watching, "the fixed mode is seen").await;
    }

    /// No containerd sync under way, `gates` open, and `patience` to wait for them.
    fn quiesce(gates: usize, patience: Duration) -> Quiesce {
        Quiesce {
            containerd_sync: Arc::default(),
            gate_connections: Arc::new(AtomicUsize::new(gates)),
            patience,
        }
    }

    #[tokio::test]
    async fn files_changed_during_the_wait_send_it_back_to_watching() {
        let w = Watched::new();
        let checked = w.files.snapshot().expect("snapshot");
        w.write("listen: 127.0.0.1:9466\n");
        let quiesce = quiesce(0, Duration::from_secs(1));
        // With the files as checked it would exec /nonexistent and fail; changed, it does not try.
        assert!(
            restart_in_place(&w.files, &checked, &quiesce)
                .await
                .is_none()
        );
        let checked = w.files.snapshot().expect("snapshot");
        let failed = restart_in_place(&w.files, &checked, &quiesce)
            .await
            .expect("an exec that fails is reported");
        assert_eq!(failed.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_waits_for_a_containerd_sync_then_for_the_open_gates() {
        let w = Watched::new();
        let checked = w.files.snapshot().expect("snapshot");
        let quiesce = quiesce(1, Duration::from_secs(100));
        let syncing = Arc::clone(&quiesce.containerd_sync).lock_owned().await;
        let restart = restart_in_place(&w.files, &checked, &quiesce);
        tokio::pin!(restart);
        let hour = Duration::from_secs(3600);
        not_within(&mut restart, hour, "went ahead during a containerd sync").await;
        drop(syncing);
        not_within(
            &mut restart,
            Duration::from_secs(10),
            "went ahead with a gate open",
        )
        .await;
        quiesce.gate_connections.store(0, Ordering::SeqCst);
        // It then execs `/nonexistent`, which fails.
        let failed = within(&mut restart, "went ahead once the gate was answered").await;
        assert_eq!(
            failed.expect("an exec was tried").kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_that_outlasts_the_patience_does_not_hold_the_restart_forever() {
        let w = Watched::new();
        let checked = w.files.snapshot().expect("snapshot");
        let quiesce = quiesce(1, Duration::from_secs(5));
        let failed = tokio::time::timeout(
            Duration::from_secs(60),
            restart_in_place(&w.files, &checked, &quiesce),
        )
        .await
        .expect("went ahead after the patience");
        assert!(failed.is_some());
    }
}
