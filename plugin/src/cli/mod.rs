//! The command line: clap types and the commands (which module serves which command:
//! `docs/architecture.md`, "Modules"; flags and output: the README, "Using it").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod config;
pub mod configure;
pub mod logging;
pub mod policy;
pub mod pull;
pub mod rollback;
pub mod run;
pub mod runtimeclass;
pub mod status;

pub use logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "kata-nri-manager",
    version,
    about = "Provisions Kata Containers runtime classes on containerd nodes, as an NRI plugin"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: register with containerd's NRI and manage the configured runtime classes.
    Run(RunArgs),
    /// Work with the operator config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Pull, verify and install runtime classes' artifacts now, as the daemon would.
    Pull(pull::PullArgs),
    /// Try and check Wasm policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Write the runtime classes' stanzas into containerd's config and restart containerd once.
    Configure(configure::ConfigureArgs),
    /// Show each runtime class's mode, policy decision, source, digest, state and pods.
    Status(status::StatusArgs),
    /// Switch a runtime class back to its previous installed version (run again to undo).
    Rollback(rollback::RollbackArgs),
    /// Remove every stanza kata-nri-manager wrote from containerd's config; restart once.
    Uninstall(configure::UninstallArgs),
    /// Print the Kubernetes RuntimeClass objects (YAML) for the config's runtime classes.
    Runtimeclass(runtimeclass::RuntimeClassArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file and print every problem with its path in the file.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Node-local config file (root-owned), as the daemon would get it.
        #[arg(long, value_name = "FILE")]
        node_config: Option<PathBuf>,
        /// Check FILE as an operator config alone (a ConfigMap's): node-local keys are errors
        /// and its owner does not matter, so any user may check it. The default when not root
        /// and without --node-config.
        #[arg(long, conflicts_with = "node_config")]
        operator: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Operator config (YAML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Node-local config (root-owned YAML) holding the keys the operator config may not set.
    #[arg(long, value_name = "FILE")]
    pub node_config: Option<PathBuf>,
    /// containerd's NRI socket [default: the config's nri.socket, else /var/run/nri/nri.sock].
    #[arg(long, value_name = "PATH")]
    pub nri_socket: Option<PathBuf>,
    /// Name to register under [default: the config's nri.pluginName].
    #[arg(long, value_name = "NAME")]
    pub plugin_name: Option<String>,
    /// Two-digit index that orders plugins in containerd [default: the config's nri.pluginIdx].
    #[arg(long, value_name = "NN")]
    pub plugin_idx: Option<String>,
    /// Log format [default: the config's log.format, else text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address of /metrics, /healthz and /readyz [default: the config's listen, else
    /// 127.0.0.1:9464]. For an address known only at start, e.g. the node's IP from the
    /// Kubernetes downward API: `--listen=$(HOST_IP):9464`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// How long a class that left the config stays unused before its artifacts are removed.
    #[arg(long, value_name = "DURATION", hide = true, env = "KATA_NRI_MANAGER_GC_GRACE", value_parser = parse_duration)]
    pub gc_grace: Option<std::time::Duration>,
    /// The shim gate binary installed for onDemand classes [default: kata-nri-shim-gate beside
    /// this executable].
    #[arg(long, value_name = "PATH")]
    pub gate_binary: Option<PathBuf>,
    #[command(flatten)]
    pub node: configure::NodeArgs,
}

/// `--output` of the commands that report: `text` for people, `json` for scripts (one document
/// on stdout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<crate::config::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}
