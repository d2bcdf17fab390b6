//! A reusable NRI plugin runtime on tokio.
//!
//! It knows the protocol — the multiplexer, ttrpc services, registration, `Configure`,
//! `Synchronize`, event dispatch, reconnects — and nothing of kata. A plugin implements
//! [`NriHandler`] and runs with [`run_external`] (dial containerd's socket) or [`run_launched`]
//! (started by containerd from its `plugin_path`).

pub mod error;
pub mod events;
pub mod frame;
pub mod handler;
pub mod identity;
pub mod mux;
pub mod runner;
mod service;
pub mod session;

pub use error::{NriError, Result};
pub use events::{Container, Event, EventMask, PodEvent, PodSandbox, RuntimeInfo};
pub use handler::NriHandler;
pub use identity::{IdentityError, PluginIdentity};
pub use runner::{
    Backoff, ConnectionObserver, DEFAULT_NRI_SOCKET, LaunchEnv, run_external, run_launched,
};
pub use session::{SessionEnd, run_session};
