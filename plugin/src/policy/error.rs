//! Errors of the policy host: loading (an operator must fix a file or a setting) and failing
//! at run time (a decision the policy could not make).

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

/// Why a policy, or a policy set, could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy}: cannot read {}", file.display())]
    Read {
        policy: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the policies directory {}", dir.display())]
    ListDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a component, truncated, or not valid WebAssembly.
    #[error("policy {policy}: {} is not a WebAssembly component this host can compile: {reason}", file.display())]
    Compile {
        policy: String,
        file: PathBuf,
        reason: String,
    },
    /// A component, but not of the `kata-nri-manager:policy` world (or it imports more than WASI).
    #[error("policy {policy}: {} does not implement the kata-nri-manager:policy@0.2.0 world: {reason}", file.display())]
    WrongWorld {
        policy: String,
        file: PathBuf,
        reason: String,
    },
    /// `validate-settings` refused the operator's settings, or failed.
    #[error(
        "policy {policy}: settings refused: {reason} (policies.settings.{policy} in the config)"
    )]
    Settings { policy: String, reason: String },
    #[error("policy engine: {0}")]
    Engine(String),
    /// Several policies of one set failed to load.
    #[error("{}", Lines(.0))]
    Several(Vec<PolicyError>),
}

struct Lines<'a>(&'a [PolicyError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Why the compile cache could not be used. The host then compiles in memory.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("policy cache {}: {what}", dir.display())]
    Io {
        dir: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("policy cache {}: {problem}: it must be a directory owned by uid {owner} with mode 0700", dir.display())]
    Untrusted {
        dir: PathBuf,
        problem: String,
        owner: u32,
    },
}

/// How a policy failed to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// It trapped: a panic, `unreachable`, a stack overflow, an out-of-bounds access.
    Trap,
    /// It ran past its deadline.
    Deadline,
    /// It tried to grow its memory past the cap.
    MemoryCap,
    /// It answered, but the answer broke the contract (a bad reference, a source outside
    /// `registries.allowed`, an annotation outside the allowlist, …).
    InvalidResult,
    /// It could not be loaded when the chain was built.
    Unloadable,
}

/// A policy's failure to decide, named after the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("policy {policy} {}", describe(*kind, message))]
pub struct PolicyFailure {
    pub policy: String,
    pub kind: FailureKind,
    pub message: String,
}

fn describe(kind: FailureKind, message: &str) -> String {
    match kind {
        FailureKind::Trap => format!("trapped: {message}"),
        FailureKind::Deadline => format!("ran past its deadline of {message}"),
        FailureKind::MemoryCap => format!("hit its memory cap of {message}"),
        FailureKind::InvalidResult => format!("returned an invalid result: {message}"),
        FailureKind::Unloadable => format!("could not be loaded: {message}"),
    }
}

/// Longest text of a policy's we repeat in a message.
const MAX_MESSAGE: usize = 1024;

/// Text from a policy, cut to a size fit for a log line.
pub(crate) fn bounded(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
