//! The WebAssembly policy host. The contract is `policies-wasm/wit/policy.wit`; where the host
//! stands in the trust boundary is in `docs/architecture.md`, "Trust boundary".
//!
//! Policies are components in the policies directory, run as a [`Chain`] in file-name order,
//! each seeing the previous result. [`PolicyEngine`] owns the one wasmtime `Engine` (epoch
//! deadlines, memory caps, the on-disk compile cache); [`PolicyChain`] is what the daemon holds:
//! the current chain, swapped atomically when the directory changes, evaluated off the async
//! workers. Everything a policy returns is checked by a [`Guard`] before it counts; a policy
//! that traps, overruns, exhausts its memory or answers out of bounds fails, and its
//! `failurePolicy` says whether that denies or is skipped. No wasmtime type leaves this module.
//! `docs/policies.md` is the operator's side of all this.

mod bindings;
mod cache;
mod chain;
mod engine;
mod error;
mod guard;
mod limits;
mod loaded;
mod node;
mod store;
mod types;
mod watch;

pub use cache::CompileCache;
pub use chain::{Chain, PolicySummary, policy_files, policy_name};
pub use engine::{EngineOptions, PolicyEngine};
pub use error::{CacheError, FailureKind, PolicyError, PolicyFailure, Result};
pub use guard::Guard;
pub use loaded::LoadedPolicy;
pub use store::DecisionStore;
pub use types::{
    AdmitOutcome, ArtifactSource, Decision, Denial, IgnoredFailure, NodeFacts, PciGpu, PodInfo,
    Request, RuntimeOutcome, RuntimeOverrides, SourceOutcome, SourceSpec, Trigger,
};
pub use watch::{PolicyChain, ReloadOutcome, WATCH_INTERVAL};
