//! Our own types for what goes into and comes out of a policy decision. They mirror the WIT
//! records (`policies-wasm/wit/policy.wit`) but belong to this crate: the rest of the daemon and
//! the CLI's JSON never see a wasmtime type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{self, Digest, OciReference};
use crate::kata::KataSetting;

use super::error::{FailureKind, PolicyFailure};

/// A PCI display or 3D controller of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PciGpu {
    pub vendor_id: u16,
    pub device_id: u16,
    /// `domain:bus:device.function`.
    pub address: String,
}

/// What the daemon tells policies about the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeFacts {
    pub arch: String,
    pub kernel: String,
    pub cpu_flags: Vec<String>,
    pub has_kvm: bool,
    pub gpus: Vec<PciGpu>,
    /// `None` when the labels are unknown (no API access), not the same as no labels.
    pub labels: Option<BTreeMap<String, String>>,
}

/// Why a decision is asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Startup,
    PodAnnotation,
    Gate,
    Update,
    #[default]
    Cli,
}

/// A source as written (by the operator, or a policy before the guard checked it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl From<&config::Artifacts> for SourceSpec {
    fn from(artifacts: &config::Artifacts) -> Self {
        Self {
            reference: artifacts.url.as_str().to_owned(),
            digest: artifacts.digest.as_ref().map(|d| d.as_str().to_owned()),
        }
    }
}

/// What is being decided: no pod data here (pods reach policies only through `admit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    pub class_name: String,
    pub configured: SourceSpec,
    #[serde(default)]
    pub trigger: Trigger,
}

impl Request {
    pub fn for_class(class: &config::RuntimeClass, trigger: Trigger) -> Self {
        Self {
            class_name: class.name.clone(),
            configured: SourceSpec::from(&class.artifacts),
            trigger,
        }
    }
}

/// The pod asking to trigger or start a class, for `admit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

/// The runtime settings policies may change (the WIT `runtime-settings`): a closed record. The
/// host owns every other stanza key (`runtime_type`, `runtime_path`, `ConfigPath`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RuntimeOverrides {
    pub pod_annotations: Vec<String>,
    pub container_annotations: Vec<String>,
    pub privileged_without_host_devices: bool,
    pub kata_config: Vec<KataSetting>,
}

impl Default for RuntimeOverrides {
    fn default() -> Self {
        Self::from(&config::RuntimeSettings::default())
    }
}

impl From<&config::RuntimeSettings> for RuntimeOverrides {
    /// The operator's `runtime` block: what the first policy of a chain sees.
    fn from(runtime: &config::RuntimeSettings) -> Self {
        Self {
            pod_annotations: runtime.pod_annotations.clone(),
            container_annotations: Vec::new(),
            privileged_without_host_devices: runtime.privileged_without_host_devices,
            kata_config: Vec::new(),
        }
    }
}

/// A source the guard accepted: a valid reference inside `registries.allowed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactSource {
    pub reference: OciReference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

/// A refusal, named after the policy (or `host` for the host's own checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Denial {
    pub policy: String,
    pub reason: String,
    /// Set when the policy failed (and its failure policy is `deny`) rather than said no.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
}

impl Denial {
    pub(crate) fn said(policy: &str, reason: String) -> Self {
        Self {
            policy: policy.to_owned(),
            reason,
            failure: None,
        }
    }

    pub(crate) fn failed(failure: PolicyFailure) -> Self {
        Self {
            reason: failure.to_string(),
            policy: failure.policy,
            failure: Some(failure.kind),
        }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.failure {
            Some(_) => f.write_str(&self.reason),
            None => write!(f, "denied by policy {}: {}", self.policy, self.reason),
        }
    }
}

/// The answer of the chain's `select-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "decision")]
pub enum SourceOutcome {
    /// Try these in order.
    Pull {
        sources: Vec<ArtifactSource>,
    },
    /// Do not serve the class on this node.
    Skip {
        policy: String,
        reason: String,
    },
    Deny(Denial),
}

/// The answer of the chain's `mutate-runtime`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "decision")]
pub enum RuntimeOutcome {
    Settings { settings: RuntimeOverrides },
    Deny(Denial),
}

/// The answer of the chain's `admit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "decision")]
pub enum AdmitOutcome {
    Allow,
    Deny(Denial),
}

/// A failure that `failurePolicy: ignore` let pass: the policy was skipped.
pub type IgnoredFailure = PolicyFailure;

/// A chain's answer and the failures it ignored on the way (to log and count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision<T> {
    #[serde(flatten)]
    pub outcome: T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<IgnoredFailure>,
}
