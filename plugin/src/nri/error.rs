//! Errors of the NRI plugin runtime.

use std::path::PathBuf;

use super::identity::IdentityError;
use super::mux::MuxError;

/// Why a connection to the runtime could not be made or kept.
#[derive(Debug, thiserror::Error)]
pub enum NriError {
    #[error(
        "NRI socket {0} does not exist: containerd is not running, or its NRI is disabled (containerd 1.7: set [plugins.\"io.containerd.nri.v1.nri\"] disable = false and restart it; containerd 1.6 and older have no NRI)"
    )]
    SocketMissing(PathBuf),
    #[error("nothing accepts connections on NRI socket {0}: containerd is stopped or restarting")]
    SocketRefused(PathBuf),
    #[error("permission denied on NRI socket {0}: the plugin must run as root")]
    SocketPermission(PathBuf),
    #[error("connecting to NRI socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the peer closed the connection before registration completed: {peer} is not containerd's NRI socket, or containerd refused the plugin (see containerd's log)"
    )]
    ClosedBeforeRegistration { peer: String },
    #[error("registration with {peer} failed: {cause}: is it containerd's NRI socket?")]
    Protocol { peer: String, cause: MuxError },
    #[error("the runtime refused registration: {0}")]
    Refused(String),
    #[error("the runtime did not complete registration within {0:?}")]
    RegistrationTimeout(std::time::Duration),
    #[error("starting the plugin's ttrpc server: {0}")]
    Server(String),
    #[error("connection to the runtime failed: {0}")]
    Connection(#[from] MuxError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(
        "launched plugin: environment variable {name} is {problem}; containerd sets NRI_PLUGIN_NAME, NRI_PLUGIN_IDX and NRI_PLUGIN_SOCKET when it starts a plugin from its plugin_path"
    )]
    LaunchEnv { name: &'static str, problem: String },
}

/// Result of the NRI runtime.
pub type Result<T, E = NriError> = std::result::Result<T, E>;
