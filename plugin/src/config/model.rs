//! The operator config as types: keys, defaults, and small queries other modules need.
//! The schema walk (`schema.rs`) must name the same keys; a test keeps the two in step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::class::RuntimeClass;
use super::duration::Duration;
use super::pattern::AnnotationPattern;
use super::quantity::ByteSize;
use super::reference::{self, OciReference};

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
    /// Node-local as a whole: what the host needs before any class is served.
    pub node: NodeSetup,
    /// The CDI spec of the node's passthrough GPUs.
    pub cdi: Cdi,
    pub runtime_classes: Vec<RuntimeClass>,
}

/// `node`: the host's side of serving kata classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeSetup {
    /// Loaded before any class is served (kata talks to its guest over vsock, and its default
    /// network model uses vhost-net). A module the kernel already has is not loaded again.
    pub kernel_modules: Vec<String>,
    /// The program (and leading arguments) that loads a module; the module's name is appended.
    /// `None`: `modprobe` from the daemon's `PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modprobe: Option<Vec<String>>,
    /// Run `modprobe` with its root changed to this directory: the host's `/` as a container
    /// mounts it (k8s-kata-manager's `chroot /host modprobe`), so the host's own modprobe and
    /// modules are used, not the image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modprobe_root: Option<PathBuf>,
}

/// The kernel modules kata needs on every node: vsock to its guest, vhost-net for its network.
pub const DEFAULT_KERNEL_MODULES: &[&str] = &["vhost_vsock", "vhost_net"];

impl Default for NodeSetup {
    fn default() -> Self {
        Self {
            kernel_modules: DEFAULT_KERNEL_MODULES
                .iter()
                .map(|m| (*m).to_owned())
                .collect(),
            modprobe: None,
            modprobe_root: None,
        }
    }
}

/// `cdi`: a CDI spec naming every passthrough GPU (bound to `vfio-pci`) of one PCI vendor, so
/// pods of a GPU class can ask for one (`cdi.k8s.io/…: nvidia.com/pgpu=0`), as k8s-kata-manager
/// wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Cdi {
    /// Written while this node serves a GPU class (a class whose name contains `gpu`).
    pub enabled: bool,
    /// The spec's kind, `vendor/class`: devices are `<kind>=<name>`.
    pub kind: String,
    /// The PCI vendor ID (hex) whose display controllers are listed.
    pub pci_vendor: String,
    /// Node-local. Where the spec is written (containerd's `cdi_spec_dirs` includes it).
    pub dir: PathBuf,
}

impl Default for Cdi {
    fn default() -> Self {
        Self {
            enabled: true,
            kind: "nvidia.com/pgpu".to_owned(),
            pci_vendor: "10de".to_owned(),
            dir: PathBuf::from("/var/run/cdi"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Fleet {
    /// Nodes that may restart containerd at the same time (Kubernetes Leases; in-cluster only).
    pub max_concurrent_restarts: u32,
    /// Nodes that may download artifacts at the same time (Kubernetes Leases; in-cluster
    /// only); 0: no limit.
    pub max_concurrent_pulls: u32,
    /// Most a node waits, at random, before asking for a pull slot: a rollout that reaches
    /// every node at once does not reach the API server at once.
    pub pull_jitter: Duration,
}

/// Long enough to spread a thousand nodes' first requests over the API server, short next to
/// the download they wait for.
pub const DEFAULT_PULL_JITTER: Duration = Duration::from_secs(10);

impl Default for Fleet {
    fn default() -> Self {
        Self {
            max_concurrent_restarts: 1,
            max_concurrent_pulls: 0,
            pull_jitter: DEFAULT_PULL_JITTER,
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
            node: NodeSetup::default(),
            cdi: Cdi::default(),
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
    /// Keys kata's configuration may hold beyond those kata reads, and settings that weaken the
    /// host processes' sandbox the node accepts: a name or a dotted path.
    pub allowed_keys: Vec<String>,
    /// Arguments to host programs (virtiofsd, qemu's `-cpu`, `-machine`, `-sandbox`) accepted
    /// beyond those of kata's own configurations.
    pub allowed_arguments: Vec<String>,
}

/// Where kata's own packages (kata-deploy under `/opt/kata`, distribution packages under `/usr`)
/// put hypervisors, jailers, virtiofsd and guest assets: an artifact carrying only a kernel and
/// an image runs with the node's kata install without any configuration.
pub const DEFAULT_ALLOWED_HOST_PATHS: &[&str] = &[
    "/opt/kata/bin/qemu-system-x86_64",
    "/opt/kata/bin/qemu-system-x86_64-snp-experimental",
    "/opt/kata/bin/qemu-system-x86_64-tdx-experimental",
    "/opt/kata/bin/qemu-system-x86_64-no-shared-fs",
    "/opt/kata/bin/qemu-system-aarch64",
    "/opt/kata/bin/qemu-system-s390x",
    "/opt/kata/bin/qemu-system-ppc64",
    "/opt/kata/bin/cloud-hypervisor",
    "/opt/kata/bin/firecracker",
    "/opt/kata/bin/jailer",
    "/opt/kata/bin/stratovirt",
    "/opt/kata/bin/openvmm",
    "/opt/kata/libexec/virtiofsd",
    "/opt/kata/share/kata-containers/",
    "/opt/kata/share/kata-qemu/",
    "/opt/kata/share/ovmf/",
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/qemu-system-x86_64-snp-experimental",
    "/usr/bin/qemu-system-x86_64-tdx-experimental",
    "/usr/bin/qemu-system-x86_64-no-shared-fs",
    "/usr/bin/qemu-system-aarch64",
    "/usr/bin/cloud-hypervisor",
    "/usr/bin/firecracker",
    "/usr/bin/jailer",
    "/usr/bin/stratovirt",
    "/usr/bin/openvmm",
    "/usr/libexec/qemu-kvm",
    "/usr/libexec/virtiofsd",
    "/usr/share/kata-containers/",
    "/usr/share/cloud-hypervisor/",
    "/usr/share/ovmf/",
];

impl Default for KataConfig {
    fn default() -> Self {
        Self {
            allowed_host_paths: DEFAULT_ALLOWED_HOST_PATHS
                .iter()
                .map(PathBuf::from)
                .collect(),
            allowed_keys: Vec::new(),
            allowed_arguments: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
