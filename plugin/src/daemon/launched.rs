//! The launched (pre-registered) mode: a plugin containerd started from its `plugin_path`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::Daemon;
use super::signal::shutdown_signal;
use crate::config::Config;
use crate::containerd::NodePaths;
use crate::nri::{self, LaunchEnv};
use crate::pods::PodInventory;
use crate::reconcile::deferred::DeferredHandler;
use crate::reconcile::{Metrics, NriTriggers, StatusBoard};

/// The config a launched plugin reads (containerd starts it without arguments).
const LAUNCHED_CONFIG: &str = "/etc/kata-nri-manager/config.yaml";
const ENV_CONFIG: &str = "KATA_NRI_MANAGER_CONFIG";
/// Where `deploy/nri/install.sh` puts a launched plugin's config by default: containerd's
/// `plugin_config_path`, as `<NN-name>.conf` (containerd also hands it over in Configure).
const NRI_CONF_DIR: &str = "/etc/nri/conf.d";

/// Runs as a plugin containerd launched from its `plugin_path`, until containerd closes the socket
/// (logging is set up by the caller).
///
/// Its config is the `.conf` containerd hands over in Configure (read by containerd from its
/// root-owned `plugin_config_path`), else a root-owned file; without either it only tracks pods.
pub(crate) async fn launched(launch: LaunchEnv) -> Result<()> {
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
            let node = NodePaths::default();
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
