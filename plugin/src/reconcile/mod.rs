//! The daemon's brain (`docs/architecture.md`, "Data flow of one decision"): the policies decide
//! what this node serves, the artifact store makes classes ready, containerd gets the stanzas in
//! one edit and one restart, and the gate, NRI and the operations endpoint see the result.
//!
//! - [`Reconciler`]: the plan per class and one ensure per class at a time.
//! - [`NriTriggers`]: the NRI handler; records pods and hands their requests over.
//! - [`StatusBoard`]: what `status`, `/readyz` and the status file show.
//! - [`Metrics`] and [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`gc::Collector`]: when the artifacts of a class that left may go.

pub mod deferred;
mod error;
pub mod gc;
pub mod http;
#[cfg(feature = "kube")]
pub mod labels;
#[cfg(feature = "kube")]
pub mod lease;
pub mod metrics;
mod reconciler;
pub mod status;
pub mod triggers;

pub use error::EnsureError;
pub use metrics::Metrics;
pub use reconciler::{GateEnsurer, Ready, Reconciler};
pub use status::{
    ArtifactState, ClassDecision, ClassStatus, KataConfigStatus, Provenance, StatusBoard,
    StatusReport,
};
pub use triggers::{NriTriggers, PREPARE_ANNOTATION, PodSignal};
