//! A changed config, picked up while the daemon runs (DESIGN.md "Fleet safety": a config change
//! reaches every node within a minute; kubelet updates a mounted ConfigMap in place).
//!
//! Every part of the daemon holds the config it started with, so a change is applied the way a
//! start applies it: once the new files load and validate, the daemon lets the gates waiting on
//! it finish (bounded by `gate.timeout`: a gate whose connection closes fails its sandbox start),
//! waits for any containerd sync under way, then replaces itself with a fresh run of the same binary and arguments
//! (`execve`: same PID, so kubelet and systemd see no restart). The new run reads the new files,
//! re-plans, and syncs containerd through the restart slots like any start. Waiting for the
//! sync matters: a configure-and-restart cut short after the file was written would look done
//! to the next run, which would then never restart containerd.
//!
//! Files that fail to load change nothing: the daemon keeps running what it has, logs why, and
//! sets `kata_nri_manager_config_rejected` until the files load again.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::config::{self, Config};
use crate::reconcile::Metrics;

/// The files `run` was started with.
#[derive(Debug, Clone)]
pub(crate) struct ConfigFiles {
    pub operator: PathBuf,
    pub node: Option<PathBuf>,
}

impl ConfigFiles {
    fn read(&self) -> std::io::Result<(Vec<u8>, Option<Vec<u8>>)> {
        let node = match &self.node {
            Some(path) => Some(std::fs::read(path)?),
            None => None,
        };
        Ok((std::fs::read(&self.operator)?, node))
    }
}

/// Resolves with the new config once the files hold a valid config other than `running` (as
/// loaded at start, before any command-line override).
pub(crate) async fn changed(
    files: &ConfigFiles,
    running: &Config,
    metrics: &Metrics,
    interval: Duration,
) -> Config {
    let mut seen = None;
    loop {
        tokio::time::sleep(interval).await;
        // A file missing or half-swapped now is read again at the next tick.
        let Ok(bytes) = files.read() else { continue };
        if seen.as_ref() == Some(&bytes) {
            continue;
        }
        seen = Some(bytes);
        match config::load(&files.operator, files.node.as_deref()) {
            Err(e) => {
                metrics.config_rejected.set(1);
                error!(
                    config = %files.operator.display(),
                    error = %format!("{e:#}"),
                    "config change rejected: still running the config the daemon started with"
                );
            }
            // Comments, order, spelling out a default: nothing to apply.
            Ok(loaded) if loaded.config == *running => {
                metrics.config_rejected.set(0);
            }
            Ok(loaded) => {
                info!(
                    changed = ?changed_keys(running, &loaded.config),
                    "config changed"
                );
                return loaded.config;
            }
        }
    }
}

/// The top-level keys whose values differ (names only: a config holds no secrets, but values can
/// be long).
pub(crate) fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
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

/// How often the gates still waiting are counted again.
const GATE_POLL: Duration = Duration::from_millis(200);

/// Waits until no gate waits (at most `patience`) and no containerd sync is under way, then
/// replaces this process with a fresh run of the same binary and arguments. Returns only if that
/// could not be done.
pub(crate) async fn restart_in_place(
    containerd_sync: Arc<Mutex<()>>,
    waiting_gates: impl Fn() -> usize,
    patience: Duration,
) -> std::io::Error {
    let deadline = Instant::now() + patience;
    let mut said = false;
    while waiting_gates() > 0 && Instant::now() < deadline {
        if !said {
            info!(
                gates = waiting_gates(),
                "restart to apply the new config waits for the gates waiting on pulls"
            );
            said = true;
        }
        tokio::time::sleep(GATE_POLL).await;
    }
    let exec = tokio::task::spawn_blocking(move || {
        // Held through the exec: no configure-and-restart begins once we have it.
        let _idle = containerd_sync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        info!("restarting in place to apply the new config");
        let mut args = std::env::args_os();
        let arg0 = args
            .next()
            .unwrap_or_else(|| OsString::from("kata-nri-manager"));
        // /proc/self/exe: the binary this process runs, even if its path was replaced since.
        Command::new("/proc/self/exe").arg0(arg0).args(args).exec()
    });
    match exec.await {
        Ok(error) => error,
        Err(join) => std::io::Error::other(join.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn write_private(path: &std::path::Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    #[tokio::test]
    async fn a_rejected_change_is_reported_and_a_valid_one_is_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ConfigFiles {
            operator: dir.path().join("config.yaml"),
            node: None,
        };
        write_private(&files.operator, "listen: 127.0.0.1:9464\n");
        let running = config::load(&files.operator, None).expect("load").config;
        let metrics = Metrics::new();
        let tick = Duration::from_millis(20);

        let watching = changed(&files, &running, &metrics, tick);
        tokio::pin!(watching);
        // The same config, said differently: nothing to apply.
        write_private(&files.operator, "# a comment\nlisten: 127.0.0.1:9464\n");
        tokio::select! {
            _ = &mut watching => panic!("an equal config is not a change"),
            _ = tokio::time::sleep(tick * 10) => {}
        }
        assert_eq!(metrics.config_rejected.get(), 0);
        // Broken: reported, and still not a change.
        write_private(&files.operator, "listen: [not an address\n");
        tokio::select! {
            _ = &mut watching => panic!("a broken config is not a change"),
            _ = tokio::time::sleep(tick * 10) => {}
        }
        assert_eq!(metrics.config_rejected.get(), 1);
        // Fixed, with a real change: returned.
        write_private(&files.operator, "listen: 127.0.0.1:9465\n");
        let new = tokio::time::timeout(Duration::from_secs(10), &mut watching)
            .await
            .expect("the change is seen");
        assert_eq!(new.listen.port(), 9465);
    }
}
