//! Errors of the gate. Their text reaches the pod's events, so each says what to do.

use std::path::PathBuf;

/// What stops the gate, and what goes wrong with the files it shares with the daemon.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(
        "kata-nri-manager gate: runtime class {class} has no gate state ({path}): kata-nri-manager has not set this class up on this node; check its log and `kata-nri-manager status`"
    )]
    NoState { class: String, path: PathBuf },
    #[error(
        "kata-nri-manager gate: {path} is not trusted (owner uid {uid}, mode {mode:o}): it must be owned by root and writable by nobody else"
    )]
    UntrustedState { path: PathBuf, uid: u32, mode: u32 },
    #[error("kata-nri-manager gate: bad state file {path}: {reason}")]
    BadState { path: PathBuf, reason: String },
    #[error(
        "kata-nri-manager gate: cannot reach the kata-nri-manager daemon at {socket} to prepare runtime class {class}: {reason}; is the daemon running?"
    )]
    DaemonUnreachable {
        class: String,
        socket: PathBuf,
        reason: String,
    },
    #[error(
        "kata-nri-manager gate: runtime class {class} was not ready within {seconds} s; its artifacts are still being prepared, retry shortly or see `kata-nri-manager status`"
    )]
    Timeout { class: String, seconds: u64 },
    #[error("kata-nri-manager gate: runtime class {class} cannot be prepared: {reason}")]
    Denied { class: String, reason: String },
    #[error("kata-nri-manager gate: starting the real shim {path}: {source}")]
    Exec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kata-nri-manager gate: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kata-nri-manager gate: cannot tell the runtime class from the gate path {0}: containerd runs the gate through a class's link, <gate.dir>/kata-nri-gate.<class>, which the kata-nri-manager daemon makes"
    )]
    UnknownClass(String),
}

pub type Result<T, E = GateError> = std::result::Result<T, E>;
