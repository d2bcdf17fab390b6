//! The operator config as types: keys, defaults, and small queries other modules need.
//! The schema walk (`schema.rs`) must name the same keys; a test keeps the two in step.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::{Duration, DurationError};
use super::pattern::AnnotationPattern;
use super::quantity::ByteSize;
use super::reference::{self, Digest, OciReference};

/// Everything kata-nri-manager is told, merged from the operator file and, when given, the node
/// file. A superset of k8s-kata-manager's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Node-local. `<artifactsDir>/<class>` links to `.store/<digest>`.
    pub artifacts_dir: PathBuf,
    /// Node-local. `<dir>/<pullSecret>/.dockerconfigjson` when not reading Secrets from the API.
    pub pull_secrets_dir: PathBuf,
    /// Node-local. The daemon's own state: ownership record, status file, compiled policies.
    pub state_dir: PathBuf,
    pub registries: Registries,
    pub limits: Limits,
    pub containerd: Containerd,
    pub nri: Nri,
    /// Node-local as a whole.
    pub gate: Gate,
    pub policies: Policies,
    pub annotations: Annotations,
    /// Node-local as a whole: which host files installed kata configurations may name.
    pub kata_config: KataConfig,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    pub log: Log,
    /// Coordination across the nodes of a cluster.
    pub fleet: Fleet,
    pub runtime_classes: Vec<RuntimeClass>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Fleet {
    /// Nodes that may restart containerd at the same time (Kubernetes Leases; in-cluster only).
    pub max_concurrent_restarts: u32,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            max_concurrent_restarts: 1,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            artifacts_dir: PathBuf::from("/opt/kata-nri-manager/artifacts"),
            pull_secrets_dir: PathBuf::from("/etc/kata-nri-manager/pull-secrets"),
            state_dir: PathBuf::from("/var/lib/kata-nri-manager"),
            registries: Registries::default(),
            limits: Limits::default(),
            containerd: Containerd::default(),
            nri: Nri::default(),
            gate: Gate::default(),
            policies: Policies::default(),
            annotations: Annotations::default(),
            kata_config: KataConfig::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            log: Log::default(),
            fleet: Fleet::default(),
            runtime_classes: Vec::new(),
        }
    }
}

impl Config {
    pub fn class(&self, name: &str) -> Option<&RuntimeClass> {
        self.runtime_classes.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Registries {
    /// `host` or `host/path` prefixes; empty means any registry.
    pub allowed: Vec<String>,
    /// `host[:port]` reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Node-local. Extra CA bundle (PEM) for TLS registries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Node-local. containerd's registry host directory (`certs.d`: `<dir>/<host>/hosts.toml`)
    /// for mirrors and per-host CAs; replaces the `registry.config_path` of containerd's config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts_dir: Option<PathBuf>,
}

impl Registries {
    /// Whether a source may be pulled from: under one of `allowed`, or anything when none is set.
    /// Policies' `select-source` answers go through this too.
    pub fn allows(&self, source: &OciReference) -> bool {
        self.allowed.is_empty()
            || self
                .allowed
                .iter()
                .any(|prefix| reference::is_under(source, prefix))
    }

    /// Whether `registry` (`host[:port]`, as in [`OciReference::registry`]) is reached over HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure.iter().any(|host| host == registry)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// Largest artifact (sum of its layers) we agree to pull.
    pub max_artifact_bytes: ByteSize,
    /// Previous versions kept per class for `rollback`.
    pub keep_versions: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_artifact_bytes: ByteSize::gibibytes(8),
            keep_versions: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Containerd {
    /// Node-local. containerd's main config file.
    pub config_path: PathBuf,
    pub mode: ContainerdMode,
    /// containerd's gRPC socket, for CRI health checks and `ListPodSandbox`.
    pub address: PathBuf,
    /// How to restart containerd. `command` is node-local.
    pub restart: Restart,
}

impl Default for Containerd {
    fn default() -> Self {
        Self {
            config_path: PathBuf::from("/etc/containerd/config.toml"),
            mode: ContainerdMode::default(),
            address: PathBuf::from("/run/containerd/containerd.sock"),
            restart: Restart::default(),
        }
    }
}

/// Where the runtime stanzas are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerdMode {
    /// A drop-in on containerd 2.x, inline on 1.x (whose drop-ins replace whole sections).
    #[default]
    Auto,
    Inline,
    Dropin,
}

/// How containerd is restarted after its config changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Restart {
    /// Through systemd over D-Bus (refused unless the unit's `KillMode` spares the shims).
    Systemd(SystemdRestart),
    /// A program of the node's choosing (node-local).
    Command(CommandRestart),
    /// Never: restarts are reported as pending (launched mode, or left to the operator).
    None,
}

impl Default for Restart {
    fn default() -> Self {
        Restart::Systemd(SystemdRestart::default())
    }
}

impl Restart {
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Restart::Systemd(s) => Some(s.timeout),
            Restart::Command(c) => Some(c.timeout),
            Restart::None => None,
        }
    }
}

const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SystemdRestart {
    pub unit: String,
    pub timeout: Duration,
}

impl Default for SystemdRestart {
    fn default() -> Self {
        Self {
            unit: "containerd.service".into(),
            timeout: DEFAULT_RESTART_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandRestart {
    /// argv; the first element is an absolute path, run without a shell.
    pub command: Vec<String>,
    #[serde(default = "default_restart_timeout")]
    pub timeout: Duration,
}

fn default_restart_timeout() -> Duration {
    DEFAULT_RESTART_TIMEOUT
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Nri {
    pub socket: PathBuf,
    pub plugin_name: String,
    /// Two digits; NRI orders plugins by it.
    pub plugin_idx: String,
}

impl Default for Nri {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/var/run/nri/nri.sock"),
            plugin_name: "kata-nri-manager".into(),
            plugin_idx: "50".into(),
        }
    }
}

/// The shim gate (node-local): what containerd runs for `onDemand` classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Gate {
    /// Stable host directory of the gate binary and its per-class links.
    pub dir: PathBuf,
    /// Where the daemon listens for gates.
    pub socket: PathBuf,
    /// How long a gate waits for its class to become ready; below kubelet's 2-minute runtime
    /// request timeout.
    pub timeout: Duration,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/opt/kata-nri-manager/bin"),
            socket: PathBuf::from("/run/kata-nri-manager/gate.sock"),
            timeout: Duration::from_secs(100),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Policies {
    /// Node-local. `*.wasm` policies, run in file-name order.
    pub dir: PathBuf,
    /// Settings per policy name, handed to the policy as JSON.
    pub settings: BTreeMap<String, serde_json::Value>,
    /// What a trap or timeout of a policy means; `deny` when not listed.
    pub failure_policy: BTreeMap<String, FailurePolicy>,
    pub limits: PolicyLimits,
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/etc/kata-nri-manager/policies.d"),
            settings: BTreeMap::new(),
            failure_policy: BTreeMap::new(),
            limits: PolicyLimits::default(),
        }
    }
}

impl Policies {
    pub fn failure_policy_of(&self, policy: &str) -> FailurePolicy {
        self.failure_policy.get(policy).copied().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    #[default]
    Deny,
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicyLimits {
    /// Wall-clock budget of one policy call.
    pub deadline: Duration,
    /// Memory cap of one policy instance.
    pub memory: ByteSize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(10),
            memory: ByteSize::mebibytes(64),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Annotations {
    /// Pod annotation patterns (Go `path.Match` syntax, as containerd uses) any class or policy
    /// may pass through to kata. Never covers `io.katacontainers.config_path`.
    pub allowed: Vec<String>,
}

impl Annotations {
    /// Whether `pattern` (a class's or a policy's `pod_annotations` entry) stays inside the
    /// allowlist. Unparsable patterns are outside it.
    pub fn permits(&self, pattern: &str) -> bool {
        let Ok(narrow) = AnnotationPattern::parse(pattern) else {
            return false;
        };
        self.allowed
            .iter()
            .any(|allowed| AnnotationPattern::parse(allowed).is_ok_and(|wide| wide.covers(&narrow)))
    }
}

/// The host files an installed kata configuration may name besides its own version's files
/// (`docs/architecture.md`, "Trust boundary"). Node-local: which hypervisor binaries a node has is
/// a fact of the node, and widening the list lets an artifact pick what root runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KataConfig {
    /// Absolute paths allowed exactly; an entry ending in `/` allows everything below it.
    /// Setting the key replaces the default list.
    pub allowed_host_paths: Vec<PathBuf>,
}

/// Where kata's own packages (kata-deploy under `/opt/kata`, distribution packages under `/usr`)
/// put hypervisors, jailers, virtiofsd and guest assets: an artifact carrying only a kernel and
/// an image runs with the node's kata install without any configuration.
pub const DEFAULT_ALLOWED_HOST_PATHS: &[&str] = &[
    "/opt/kata/bin/qemu-system-x86_64",
    "/opt/kata/bin/qemu-system-aarch64",
    "/opt/kata/bin/qemu-system-s390x",
    "/opt/kata/bin/qemu-system-ppc64",
    "/opt/kata/bin/cloud-hypervisor",
    "/opt/kata/bin/firecracker",
    "/opt/kata/bin/jailer",
    "/opt/kata/bin/stratovirt",
    "/opt/kata/libexec/virtiofsd",
    "/opt/kata/share/kata-containers/",
    "/opt/kata/share/kata-qemu/",
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/qemu-system-aarch64",
    "/usr/libexec/qemu-kvm",
    "/usr/libexec/virtiofsd",
    "/usr/share/kata-containers/",
];

impl Default for KataConfig {
    fn default() -> Self {
        Self {
            allowed_host_paths: DEFAULT_ALLOWED_HOST_PATHS
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One Kata runtime class: also the containerd runtime handler name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeClass {
    pub name: String,
    /// The RuntimeClass's scheduling selector (k8s-kata-manager's meaning).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
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

    #[test]
    fn registries_allow_everything_until_restricted() {
        let source: OciReference = "nvcr.io/nvidia/kata:1".parse().expect("reference");
        let mut registries = Registries::default();
        assert!(registries.allows(&source));
        registries.allowed = vec!["registry.local:5000".into(), "nvcr.io/nvidia".into()];
        assert!(registries.allows(&source));
        registries.allowed = vec!["nvcr.io/other".into()];
        assert!(!registries.allows(&source));
    }

    #[test]
    fn annotations_permit_only_covered_patterns() {
        let annotations = Annotations {
            allowed: vec!["io.katacontainers.config.hypervisor.*".into()],
        };
        assert!(annotations.permits("io.katacontainers.config.hypervisor.default_memory"));
        assert!(annotations.permits("io.katacontainers.config.hypervisor.*"));
        assert!(!annotations.permits("io.katacontainers.*"));
        assert!(!annotations.permits("io.katacontainers.config_path"));
        assert!(!annotations.permits("["));
    }

    #[test]
    fn restart_serializes_with_its_method_tag() {
        let yaml = serde_yaml::to_string(&Restart::default()).expect("yaml");
        assert_eq!(
            yaml,
            "method: systemd\nunit: containerd.service\ntimeout: 1m\n"
        );
        let none: Restart = serde_yaml::from_str("method: none").expect("none");
        assert_eq!(none, Restart::None);
        let command: Restart =
            serde_yaml::from_str("{method: command, command: [/usr/bin/true]}").expect("command");
        assert_eq!(command.timeout(), Some(Duration::from_secs(60)));
        let unknown = serde_yaml::from_str::<Restart>("{method: systemd, unti: x}");
        assert!(unknown.is_err(), "serde must refuse unknown keys too");
    }
}
