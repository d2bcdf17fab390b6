//! `kata-nri-manager run`, and the launched (pre-registered) mode.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tracing::{error, info};

use super::RunArgs;
use super::logging::{self, LogFormat};
use crate::nri::{self, LaunchEnv, PluginIdentity};
use crate::pods::PodInventory;

/// Where a launched plugin logs: containerd gives it no stdout or stderr.
const LAUNCHED_LOG_DIR: &str = "/var/log/kata-nri-manager";

/// Runs the daemon against containerd's NRI socket until SIGTERM or SIGINT.
pub async fn external(args: RunArgs) -> Result<()> {
    let loaded = crate::config::load(&args.config, args.node_config.as_deref())
        .with_context(|| format!("loading config {}", args.config.display()))?;
    let config = &loaded.config;
    let format = args.log_format.unwrap_or(match config.log.format {
        crate::config::LogFormat::Text => LogFormat::Text,
        crate::config::LogFormat::Json => LogFormat::Json,
    });
    logging::init(format, None).context("setting up logging")?;
    for warning in &loaded.warnings {
        tracing::warn!(%warning, "config");
    }

    let identity = PluginIdentity::new(
        args.plugin_name
            .unwrap_or_else(|| config.nri.plugin_name.clone()),
        args.plugin_idx
            .unwrap_or_else(|| config.nri.plugin_idx.clone()),
    )?;
    let socket = args.nri_socket.unwrap_or_else(|| config.nri.socket.clone());
    info!(plugin = %identity, socket = %socket.display(), version = env!("CARGO_PKG_VERSION"), "starting");

    let inventory = Arc::new(PodInventory::new());
    tokio::select! {
        result = nri::run_external(&socket, &identity, inventory, Arc::new(())) => {
            result.context("NRI connection")?;
        }
        signal = shutdown_signal() => {
            info!(signal, "stopping");
        }
    }
    Ok(())
}

/// Runs as a plugin containerd launched from its `plugin_path`, until containerd closes the socket.
pub async fn launched(launch: nri::Result<LaunchEnv>) -> Result<()> {
    let launch = launch.context("starting as a launched NRI plugin")?;
    let log_file = PathBuf::from(LAUNCHED_LOG_DIR).join(format!("{}.log", launch.identity));
    logging::init(LogFormat::Json, Some(&log_file))
        .with_context(|| format!("opening log file {}", log_file.display()))?;
    info!(plugin = %launch.identity, version = env!("CARGO_PKG_VERSION"), "starting as a launched plugin");
    let inventory = Arc::new(PodInventory::new());
    let end = tokio::select! {
        end = nri::run_launched(launch, inventory, Arc::new(())) => end,
        signal = shutdown_signal() => {
            info!(signal, "stopping");
            return Ok(());
        }
    };
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
