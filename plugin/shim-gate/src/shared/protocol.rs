//! The gate ⇄ daemon protocol: one JSON line each way over the gate's unix socket.

use serde::{Deserialize, Serialize};

/// Largest line either side reads; a request or reply is a few hundred bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// A gate asks the daemon to make a class ready for a sandbox start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsureRequest {
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Pod identity from the CRI annotations in the bundle's config.json (NRI has not seen the
    /// pod yet), for policies that admit pods by namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum EnsureReply {
    /// The class is ready: the gate may exec the real shim.
    Ready,
    /// The class cannot be made ready (policy denial, pull failure, …), with why.
    Failed { reason: String },
}
