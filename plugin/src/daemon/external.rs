//! `run`: the daemon against containerd's NRI socket, until a signal, the end of the NRI
//! connection, or a failed restart in place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::info;

use super::Daemon;
use super::reload::{self, ConfigFiles};
use super::signal::shutdown_signal;
use crate::config::Config;
use crate::containerd::NodePaths;
use crate::nri::{self, PluginIdentity};

/// What `run` starts the daemon with, its flags applied.
pub(crate) struct External {
    /// The config to run, with the command line's overrides.
    pub config: Config,
    /// What a changed file is compared with: the config as loaded, before the overrides.
    pub as_loaded: Config,
    pub files: ConfigFiles,
    pub identity: PluginIdentity,
    pub socket: PathBuf,
    pub node: NodePaths,
    pub gc_grace: Option<Duration>,
    pub gate_binary: Option<PathBuf>,
}

/// Runs the daemon against containerd's NRI socket until SIGTERM or SIGINT.
pub(crate) async fn external(run: External) -> Result<()> {
    let External {
        config,
        as_loaded,
        files,
        identity,
        socket,
        node,
        gc_grace,
        gate_binary,
    } = run;
    let daemon = Daemon::start(config, node, gc_grace, true, gate_binary).await?;
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
