//! `kata-nri-manager run`, and the launched (pre-registered) mode: the flags, the config files
//! and logging; the daemon itself is [`crate::daemon`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use tracing::{info, warn};

use super::RunArgs;
use super::logging::{self, LogFormat};
use crate::daemon::{self, ConfigFiles, External};
use crate::nri::{self, LaunchEnv, PluginIdentity};

/// Where a launched plugin logs: containerd gives it no stdout or stderr.
const LAUNCHED_LOG_DIR: &str = "/var/log/kata-nri-manager";

/// Runs the daemon against containerd's NRI socket until SIGTERM or SIGINT.
pub async fn external(args: RunArgs) -> Result<()> {
    if let Some(node) = &args.node_config
        && !node.exists()
    {
        // Logging and the endpoint come from the operator file, read here as well as it reads:
        // the full load, after the wait, reports anything wrong with it.
        let early = early_settings(&args);
        logging::init(early.format, None).context("setting up logging")?;
        let waited = daemon::wait_for_node_file(node, early.listen, daemon::shutdown_signal())
            .await
            .with_context(|| format!("serving /readyz on {} while waiting", early.listen))?;
        if let daemon::Waited::Stopped(signal) = waited {
            info!(signal, "stopping");
            return Ok(());
        }
        return start(args, true).await;
    }
    start(args, false).await
}

/// What the daemon needs before its config is loaded: where to log and listen.
struct EarlySettings {
    format: LogFormat,
    listen: std::net::SocketAddr,
}

fn early_settings(args: &RunArgs) -> EarlySettings {
    let operator = std::fs::read_to_string(&args.config)
        .ok()
        .and_then(|text| {
            crate::config::parse_str(&text, &args.config, crate::config::FileKind::Operator).ok()
        })
        .unwrap_or_default();
    EarlySettings {
        format: args.log_format.unwrap_or(operator.log.format.into()),
        listen: args.listen.unwrap_or(operator.listen),
    }
}

async fn start(args: RunArgs, logging_ready: bool) -> Result<()> {
    let loaded = crate::config::load(&args.config, args.node_config.as_deref())
        .with_context(|| format!("loading config {}", args.config.display()))?;
    let files = ConfigFiles {
        operator: args.config.clone(),
        node: args.node_config.clone(),
        binary: std::env::current_exe().context("locating our own binary")?,
    };
    // What a changed file is compared with: the config as loaded, before the overrides below.
    let as_loaded = loaded.config.clone();
    let mut config = loaded.config;
    if !logging_ready {
        let format = args.log_format.unwrap_or(config.log.format.into());
        logging::init(format, None).context("setting up logging")?;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    for warning in &loaded.warnings {
        warn!(%warning, "config");
    }
    let identity = PluginIdentity::new(
        args.plugin_name
            .unwrap_or_else(|| config.nri.plugin_name.clone()),
        args.plugin_idx
            .unwrap_or_else(|| config.nri.plugin_idx.clone()),
    )?;
    let socket = args
        .nri_socket
        .clone()
        .unwrap_or_else(|| config.nri.socket.clone());
    info!(plugin = %identity, socket = %socket.display(), version = env!("CARGO_PKG_VERSION"), "starting");
    // A containerd restart waits for this socket to come back.
    config.nri.socket = socket.clone();

    daemon::external(External {
        config,
        as_loaded,
        files,
        identity,
        socket,
        node: args.node.paths(),
        gc_grace: args.gc_grace,
        gate_binary: args.gate_binary,
    })
    .await
}

/// Runs as a plugin containerd launched from its `plugin_path`, until containerd closes the socket.
///
/// Its config is the `.conf` containerd hands over in Configure (read by containerd from its
/// root-owned `plugin_config_path`), else a root-owned file; without either it only tracks pods.
pub async fn launched(launch: nri::Result<LaunchEnv>) -> Result<()> {
    let launch = launch.context("starting as a launched NRI plugin")?;
    let log_file = PathBuf::from(LAUNCHED_LOG_DIR).join(format!("{}.log", launch.identity));
    logging::init(LogFormat::Json, Some(&log_file))
        .with_context(|| format!("opening log file {}", log_file.display()))?;
    daemon::launched(launch).await
}
