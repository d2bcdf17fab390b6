//! The gate: the binary containerd runs as a class's shim (`runtime_path`), the only code that
//! runs before a kata VM boots. For a sandbox start of a class that is not ready it asks the
//! daemon to prepare the class and waits (bounded); then it `exec`s the real shim with the same
//! argv, environment, working directory and descriptors. Everything else goes straight through.
//!
//! It prints nothing of its own before `exec` (containerd parses the shim's output) and never
//! reads stdin (the shim's options arrive there).

pub mod args;
pub mod client;
pub mod error;
pub mod links;
pub mod pod_identity;
pub mod protocol;
pub mod run;
pub mod server;
pub mod state;

pub use error::{GateError, Result};
pub use links::{GATE_BINARY, GATE_LINK_PREFIX, link_path};
pub use protocol::{EnsureReply, EnsureRequest};
pub use server::{Ensurer, serve};
pub use state::GateState;
