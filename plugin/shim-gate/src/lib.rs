//! The shim gate: the binary containerd runs as an `onDemand` runtime class's shim
//! (`runtime_path`), the only code that runs before a kata VM boots. For a sandbox start of a class
//! that is not ready it asks the kata-nri-manager daemon to prepare the class and waits (bounded);
//! then it `exec`s the real shim with the same argv, environment, working directory and
//! descriptors. Everything else goes straight through.
//!
//! It prints nothing of its own before `exec` (containerd parses the shim's output) and never
//! reads stdin (the shim's options arrive there). It runs on every shim invocation of a gated class
//! and must outlive every sandbox, so it is a small program of its own: std and serde_json, no
//! async runtime. [`shared`] is what it and the daemon agree on; the daemon depends on this crate
//! for it.

mod args;
pub mod client;
pub mod error;
mod pod_identity;
pub mod run;
pub mod shared;

pub use error::{GateError, Result};
