//! Guest SDK for kata-nri-manager policies.
//!
//! A policy is a `cdylib` crate that implements [`Policy`] (its settings, and the decisions it
//! makes) and calls [`export!`]:
//!
//! ```ignore
//! use kata_policy_sdk::*;
//!
//! struct MyPolicy;
//! impl settings::PolicySettings for MySettings {} // `check` what serde cannot
//! impl Policy for MyPolicy {
//!     type Settings = MySettings;
//!     // select_source, mutate_runtime, admit: only those the policy decides
//! }
//! kata_policy_sdk::export!(MyPolicy);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`: the `.wasm` cargo writes is
//! already a component of the `policy` world (`../wit/policy.wit`, the contract). Keep the
//! decision logic in plain functions over these types so it can be unit-tested on the host.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

use alloc::string::String;
use alloc::vec::Vec;

// The bindings name this crate by its path, as the policy crates see it.
extern crate self as kata_policy_sdk;

mod policy;
pub mod reference;
#[doc(hidden)]
pub mod runtime;
pub mod settings;

pub use policy::Policy;
pub use settings::PolicySettings;

/// The generated bindings of `wit/policy.wit`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "policy",
        // Tests compare decisions.
        additional_derives: [PartialEq],
        // The export macro is used from the policy crates, which depend on this crate only.
        default_bindings_module: "kata_policy_sdk::bindings",
        runtime_path: "kata_policy_sdk::rt",
        pub_export_macro: true,
        export_macro_name: "export",
    });
}

/// The bindings' runtime support, re-exported for the code [`export!`] expands to.
#[doc(hidden)]
pub use wit_bindgen::rt;

pub use bindings::export;
pub use bindings::kata_nri_manager::policy::types::{Gpu, KataSetting, Label, Trigger, VfioPort};
pub use bindings::{
    Admission, Guest, Node, Pod, Request, RuntimeDecision, RuntimeSettings, Source, SourceDecision,
};

/// PCI vendor ids of the GPU makers policies most often ask about.
pub mod pci_vendor {
    pub const NVIDIA: u16 = 0x10de;
    pub const AMD: u16 = 0x1002;
    pub const INTEL: u16 = 0x8086;
}

impl Node {
    /// Whether the node has a GPU of `vendor_id`.
    pub fn has_gpu_of(&self, vendor_id: u16) -> bool {
        self.gpus.iter().any(|gpu| gpu.vendor_id == vendor_id)
    }

    /// The node's CPU feature flags (`vmx`, `avx2`, …).
    pub fn cpu_flags(&self) -> impl Iterator<Item = &str> {
        self.cpu_flags.split_ascii_whitespace()
    }

    /// Whether the node's CPU has feature `flag` (`vmx`, `svm`, `avx512f`, …).
    pub fn has_cpu_flag(&self, flag: &str) -> bool {
        self.cpu_flags().any(|f| f == flag)
    }

    /// The value of a node label, when labels are known and it is set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .as_ref()?
            .iter()
            .find(|label| label.key == key)
            .map(|label| label.value.as_str())
    }
}

impl Pod {
    /// The value of one of the pod's annotations.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|label| label.key == key)
            .map(|label| label.value.as_str())
    }
}

impl Source {
    /// A source without a digest pin.
    pub fn new(reference: impl Into<String>) -> Self {
        Self {
            reference: reference.into(),
            digest: None,
        }
    }
}

/// The answer of a policy that keeps the sources it was given.
pub fn keep_sources(current: Vec<Source>) -> SourceDecision {
    SourceDecision::Pull(current)
}

/// The answer of a policy that keeps the runtime settings it was given.
pub fn keep_runtime(current: RuntimeSettings) -> RuntimeDecision {
    RuntimeDecision::Settings(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2024::*;
    use std::vec;

    #[test]
    fn cpu_flags_are_looked_up_whole() {
        let node = Node {
            arch: "x86_64".into(),
            kernel: "6.1".into(),
            cpu_flags: "fpu vmx avx512f".into(),
            has_kvm: true,
            gpus: vec![],
            labels: None,
        };
        assert!(node.has_cpu_flag("vmx"));
        assert!(node.has_cpu_flag("avx512f"));
        assert!(!node.has_cpu_flag("avx512"), "a prefix is not a flag");
        assert!(!node.has_cpu_flag("svm"));
        assert_eq!(node.cpu_flags().count(), 3);
    }
}
