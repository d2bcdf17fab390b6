//! The daemon's side of the shim gate. The gate itself is a program of its own
//! (`plugin/shim-gate`, the `kata-nri-shim-gate` crate): containerd runs it as an `onDemand`
//! class's shim, so it carries none of the daemon (no async runtime, no registry or policy code).
//! Here: the socket the gate asks (`server`), and where to find the gate binary to install
//! (`binary`). The protocol, the state file and the names on the host are the gate crate's
//! `shared` module, re-exported so the daemon and the gate cannot drift apart.

pub mod binary;
pub mod server;

pub use kata_nri_shim_gate::shared::{links, protocol, state};
pub use kata_nri_shim_gate::{GateError, Result};
pub use links::{GATE_BINARY, GATE_LINK_PREFIX, GATE_PROGRAM, link_path};
pub use protocol::{EnsureReply, EnsureRequest};
pub use server::{Ensurer, Refusal, serve};
pub use state::GateState;
