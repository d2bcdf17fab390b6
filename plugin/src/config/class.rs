//! One runtime class as a type: its artifacts (source, pin, signature), how it is provisioned and
//! updated, and the containerd stanza settings it controls.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::{Duration, DurationError};
use super::reference::{Digest, OciReference};

/// One Kata runtime class: also the containerd runtime handler name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeClass {
    pub name: String,
    /// The RuntimeClass's scheduling selector (k8s-kata-manager's meaning).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The RuntimeClass's pod overhead; unset parts take the default for the class's kind
    /// ([`PodOverhead::defaults_for`]).
    #[serde(default, skip_serializing_if = "PodOverhead::is_empty")]
    pub overhead: PodOverhead,
    /// The RuntimeClass's tolerations: kata pods then tolerate the taints of the nodes meant for
    /// them (GPU nodes are often tainted) without every pod spelling them out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub provision: Provision,
    #[serde(default)]
    pub update_policy: UpdatePolicy,
    /// What to do when the artifact declares a kata version the node's shim does not have.
    #[serde(default)]
    pub version_skew: VersionSkew,
    pub artifacts: Artifacts,
    #[serde(default)]
    pub runtime: RuntimeSettings,
}

impl RuntimeClass {
    /// The digest the artifacts are pinned to: the node's `runtime.fromArtifact.digest`, else
    /// `artifacts.digest`, else the one in the url. (A node pin that differs from the operator's
    /// fails every pull with both digests named.)
    pub fn pinned_digest(&self) -> Option<&Digest> {
        self.node_pin().or_else(|| self.operator_pin())
    }

    /// The operator's pin: `artifacts.digest`, or the digest in the url.
    pub fn operator_pin(&self) -> Option<&Digest> {
        self.artifacts
            .digest
            .as_ref()
            .or_else(|| self.artifacts.url.digest())
    }

    /// The node file's pin (`runtime.fromArtifact.digest`).
    pub fn node_pin(&self) -> Option<&Digest> {
        self.runtime
            .from_artifact
            .as_ref()
            .and_then(|f| f.digest.as_ref())
    }
}

/// `overhead`: what a pod of the class costs beyond its containers' requests (the VM: guest
/// kernel, agent, VMM), charged by the scheduler and kubelet. Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodOverhead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// A class whose pods ask for passthrough GPUs, by its name (as kata-deploy and the GPU Operator
/// name them: `kata-qemu-nvidia-gpu`, `…-gpu-snp`): its RuntimeClass overhead defaults to the
/// GPU kind's, and the daemon keeps the CDI spec of the node's GPUs while one is served.
pub fn is_gpu_class(name: &str) -> bool {
    name.contains("gpu")
}

impl PodOverhead {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }

    /// The overhead a class gets where its config says nothing, by the kind its name says (as
    /// kata-deploy names its classes): a GPU class's VM holds the GPU driver stack and pins
    /// its memory for the device's DMA; a QEMU VM costs more than the lighter VMMs.
    pub fn defaults_for(class: &str) -> (&'static str, &'static str) {
        if is_gpu_class(class) {
            ("1", "2Gi")
        } else if class.contains("qemu") {
            ("250m", "320Mi")
        } else {
            ("250m", "160Mi")
        }
    }

    /// This overhead with the kind's defaults filled in: `(cpu, memory)`.
    pub fn resolved(&self, class: &str) -> (String, String) {
        let (cpu, memory) = Self::defaults_for(class);
        (
            self.cpu.clone().unwrap_or_else(|| cpu.to_owned()),
            self.memory.clone().unwrap_or_else(|| memory.to_owned()),
        )
    }
}

/// A Kubernetes toleration, as a RuntimeClass's `scheduling.tolerations` holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifacts {
    pub url: OciReference,
    /// Name of a Kubernetes Secret of type `kubernetes.io/dockerconfigjson`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Node-local. The signature every version must carry before it is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// `artifacts.verify`: a cosign signature by this key, found where cosign stores it (the tag
/// `sha256-<hex>.sig` beside the artifact), checked before anything of a version is installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Verify {
    /// A cosign public key (PEM, as `cosign generate-key-pair` writes `cosign.pub`).
    pub cosign_key: PathBuf,
}

/// `runtime.fromArtifact`: kata itself (the shim, the hypervisor, virtiofsd) from the class's
/// installed version, not from the node. Binaries from a registry run as root, so the version
/// must be pinned here (`digest`) or signed (`artifacts.verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromArtifact {
    /// The shim inside the artifact, e.g. `opt/kata/bin/containerd-shim-kata-v2`.
    pub shim: PathBuf,
    /// The one version whose binaries may run (node-local pin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Provision {
    /// Ready at daemon start.
    #[default]
    Eager,
    /// Pulled when the first sandbox of the class starts (through the gate) or a pod asks.
    OnDemand,
}

/// What a version skew between an artifact (its `kata-nri-manager.io/kata-version`
/// annotation) and the node's real shim (`--version`) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VersionSkew {
    /// Install it; report the skew in `status` and the log.
    #[default]
    Warn,
    /// Do not make it current: the installed version (if any) stays.
    Refuse,
}

/// When the artifacts' tag is resolved again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpdatePolicy {
    /// Never: the class is pinned by digest.
    Pinned,
    /// At each daemon start.
    #[default]
    OnStart,
    /// Every so often.
    Every(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an update policy (use pinned, onStart or an interval like 6h)")]
pub struct UpdatePolicyError(String);

impl FromStr for UpdatePolicy {
    type Err = UpdatePolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "pinned" => Ok(Self::Pinned),
            "onStart" => Ok(Self::OnStart),
            _ => text
                .parse()
                .map(Self::Every)
                .map_err(|_: DurationError| UpdatePolicyError(text.to_owned())),
        }
    }
}

impl fmt::Display for UpdatePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pinned => f.write_str("pinned"),
            Self::OnStart => f.write_str("onStart"),
            Self::Every(interval) => write!(f, "{interval}"),
        }
    }
}

impl Serialize for UpdatePolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UpdatePolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The containerd runtime stanza's settings the operator controls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RuntimeSettings {
    pub runtime_type: String,
    /// Node-local. The real shim; unset: containerd finds the shim from `runtimeType` in its PATH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_path: Option<PathBuf>,
    /// Patterns of pod annotations passed to kata; each within `annotations.allowed`.
    pub pod_annotations: Vec<String>,
    pub privileged_without_host_devices: bool,
    /// The kata configuration inside the artifacts (relative); becomes `ConfigPath`. Unset:
    /// `kata-nri-manager.toml`, which the install links to the artifact's one top-level `*.toml`
    /// (the file k8s-kata-manager used); see [`RuntimeSettings::kata_config_file`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    /// Node-local. Take over a stanza of this name that kata-nri-manager did not write (the
    /// node's own `kata`, kata-deploy's): replaced now, removed when the class goes. Without it
    /// such a stanza is an error, never touched.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
    /// Node-local. The shim and host binaries come from the installed version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_artifact: Option<FromArtifact>,
}

/// The kata configuration of a class without `runtime.configFile`, at the top of every installed
/// version: a relative symlink the install makes to the artifact's one top-level `*.toml`. A
/// fixed name, so the stanza's `ConfigPath` is known before anything is pulled (an `onDemand`
/// class's stanza is written before its artifacts exist), as k8s-kata-manager's top-level
/// `*.toml` was; `runtime.configFile` may not name it.
pub const DEFAULT_KATA_CONFIG: &str = "kata-nri-manager.toml";

impl RuntimeSettings {
    /// The configuration the class's stanza names, relative to its version:
    /// `runtime.configFile`, else [`DEFAULT_KATA_CONFIG`].
    pub fn kata_config_file(&self) -> &Path {
        self.config_file
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_KATA_CONFIG))
    }
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            runtime_type: "io.containerd.kata.v2".into(),
            runtime_path: None,
            pod_annotations: Vec::new(),
            // k8s-kata-manager's choice, kept so its files behave the same: a privileged pod in a
            // VM gets the VM's devices, not the host's.
            privileged_without_host_devices: true,
            config_file: None,
            adopt: false,
            from_artifact: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_policy_parses_words_and_intervals() {
        assert_eq!("pinned".parse(), Ok(UpdatePolicy::Pinned));
        assert_eq!("onStart".parse(), Ok(UpdatePolicy::OnStart));
        assert_eq!(
            "6h".parse(),
            Ok(UpdatePolicy::Every(Duration::from_secs(6 * 3600)))
        );
        assert_eq!(
            "daily".parse::<UpdatePolicy>().map_err(|e| e.to_string()),
            Err(
                "\"daily\" is not an update policy (use pinned, onStart or an interval like 6h)"
                    .into()
            )
        );
        assert_eq!(
            UpdatePolicy::Every(Duration::from_secs(21600)).to_string(),
            "6h"
        );
    }
}
