//! Kata settings: the allowlisted changes a policy may make to a class's kata configuration,
//! and the host's rules for them. A model shared by the policy host, which checks every
//! `mutate-runtime` answer against these rules, and the artifact store, which checks them again
//! before it writes the settings into a kata configuration.

use serde::{Deserialize, Serialize};

/// Most kata settings one list may hold.
pub(crate) const MAX_SETTINGS: usize = 64;
/// Longest guest kernel parameter string.
const MAX_KERNEL_PARAMS: usize = 1024;

/// How kata plugs VFIO devices (`hot_plug_vfio` / `cold_plug_vfio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VfioPort {
    NoPort,
    BridgePort,
    RootPort,
    SwitchPort,
}

impl VfioPort {
    /// The value kata's configuration spells.
    pub fn kata_value(self) -> &'static str {
        match self {
            VfioPort::NoPort => "no-port",
            VfioPort::BridgePort => "bridge-port",
            VfioPort::RootPort => "root-port",
            VfioPort::SwitchPort => "switch-port",
        }
    }
}

/// Which table of kata's configuration a [`KataSetting`] goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KataSection {
    /// `[hypervisor.<name>]`, whichever hypervisor the class's configuration has.
    Hypervisor,
    /// `[runtime]`.
    Runtime,
    /// `[agent.kata]`.
    Agent,
}

/// One allowlisted change to a class's kata configuration (the WIT `kata-setting`), checked by
/// the guard. No variant names a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "key", content = "value")]
pub enum KataSetting {
    DefaultVcpus(u32),
    DefaultMaxVcpus(u32),
    DefaultMemoryMib(u32),
    MemorySlots(u32),
    EnableIommu(bool),
    HotPlugVfio(VfioPort),
    ColdPlugVfio(VfioPort),
    PcieRootPorts(u32),
    GuestKernelParams(String),
    StaticSandboxResourceMgmt(bool),
    SandboxCgroupOnly(bool),
    AgentDialTimeoutSecs(u32),
}

impl KataSetting {
    /// The table and key this setting writes in kata's `configuration-*.toml`.
    pub fn toml_key(&self) -> (KataSection, &'static str) {
        use KataSection::*;
        match self {
            KataSetting::DefaultVcpus(_) => (Hypervisor, "default_vcpus"),
            KataSetting::DefaultMaxVcpus(_) => (Hypervisor, "default_maxvcpus"),
            KataSetting::DefaultMemoryMib(_) => (Hypervisor, "default_memory"),
            KataSetting::MemorySlots(_) => (Hypervisor, "memory_slots"),
            KataSetting::EnableIommu(_) => (Hypervisor, "enable_iommu"),
            KataSetting::HotPlugVfio(_) => (Hypervisor, "hot_plug_vfio"),
            KataSetting::ColdPlugVfio(_) => (Hypervisor, "cold_plug_vfio"),
            KataSetting::PcieRootPorts(_) => (Hypervisor, "pcie_root_port"),
            KataSetting::GuestKernelParams(_) => (Hypervisor, "kernel_params"),
            KataSetting::StaticSandboxResourceMgmt(_) => (Runtime, "static_sandbox_resource_mgmt"),
            KataSetting::SandboxCgroupOnly(_) => (Runtime, "sandbox_cgroup_only"),
            KataSetting::AgentDialTimeoutSecs(_) => (Agent, "dial_timeout"),
        }
    }
}

/// The host's rules for kata settings, each on its own and together: what the guard applies to
/// every `mutate-runtime` answer, and what the artifact store applies again before it writes
/// them into a kata configuration (settings may come back from a saved record, not only from a
/// guard that just ran).
pub fn validate_kata_settings(settings: &[KataSetting]) -> Result<(), String> {
    if settings.len() > MAX_SETTINGS {
        return Err(format!("kata-config has more than {MAX_SETTINGS} settings"));
    }
    for setting in settings {
        check_kata_setting(setting)?;
    }
    check_kata_settings_together(settings)
}

fn check_kata_setting(setting: &KataSetting) -> Result<(), String> {
    let in_range = |value: u32, lo: u32, hi: u32| {
        if (lo..=hi).contains(&value) {
            Ok(())
        } else {
            let (_, key) = setting.toml_key();
            Err(format!(
                "kata-config {key} = {value} is outside {lo}..={hi}"
            ))
        }
    };
    match setting {
        KataSetting::DefaultVcpus(n) | KataSetting::DefaultMaxVcpus(n) => in_range(*n, 1, 1024),
        KataSetting::DefaultMemoryMib(n) => in_range(*n, 64, 4 << 20),
        KataSetting::MemorySlots(n) => in_range(*n, 1, 1024),
        KataSetting::PcieRootPorts(n) => in_range(*n, 0, 64),
        KataSetting::AgentDialTimeoutSecs(n) => in_range(*n, 1, 600),
        KataSetting::GuestKernelParams(params) => check_kernel_params(params),
        KataSetting::EnableIommu(_)
        | KataSetting::HotPlugVfio(_)
        | KataSetting::ColdPlugVfio(_)
        | KataSetting::StaticSandboxResourceMgmt(_)
        | KataSetting::SandboxCgroupOnly(_) => Ok(()),
    }
}

/// Rules between the settings of one answer. The daemon writes the list into the class's kata
/// configuration as it stands, so it must mean one thing: each key at most once, and no pair
/// that kata itself would refuse when the sandbox starts (a failure we would otherwise only see
/// at the first pod).
fn check_kata_settings_together(settings: &[KataSetting]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for setting in settings {
        let (_, key) = setting.toml_key();
        if !seen.insert(key) {
            return Err(format!(
                "kata-config sets {key} more than once (give each key once)"
            ));
        }
    }
    let find = |pick: fn(&KataSetting) -> Option<u32>| settings.iter().find_map(pick);
    let vcpus = find(|s| match s {
        KataSetting::DefaultVcpus(n) => Some(*n),
        _ => None,
    });
    let max_vcpus = find(|s| match s {
        KataSetting::DefaultMaxVcpus(n) => Some(*n),
        _ => None,
    });
    if let (Some(vcpus), Some(max)) = (vcpus, max_vcpus)
        && vcpus > max
    {
        return Err(format!(
            "kata-config default_vcpus = {vcpus} is above default_maxvcpus = {max}"
        ));
    }
    let plugged = |s: &KataSetting| match s {
        KataSetting::HotPlugVfio(port) => Some((true, *port)),
        KataSetting::ColdPlugVfio(port) => Some((false, *port)),
        _ => None,
    };
    let ports: Vec<(bool, VfioPort)> = settings.iter().filter_map(plugged).collect();
    let hot = ports.iter().any(|(hot, p)| *hot && *p != VfioPort::NoPort);
    let cold = ports.iter().any(|(hot, p)| !*hot && *p != VfioPort::NoPort);
    if hot && cold {
        return Err(
            "kata-config sets both hot_plug_vfio and cold_plug_vfio to a port (kata accepts one)"
                .into(),
        );
    }
    Ok(())
}

/// Guest kernel parameter names a policy may not set: they choose what the guest runs first,
/// where its root comes from, or configure the kata agent (debug console, its own config file
/// and policy), which the installed configuration owns.
const DENIED_KERNEL_PARAMS: [&str; 6] = [
    "init",
    "rdinit",
    "root",
    "rootfstype",
    "rootflags",
    "agent.",
];

/// Space-separated `key[=value]` words only: no quotes or newlines (nothing that could end the
/// TOML string or smuggle a second key), no `/` (no path can be expressed), and none of
/// [`DENIED_KERNEL_PARAMS`].
fn check_kernel_params(params: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"._,:=+-".contains(&b);
    if params.len() > MAX_KERNEL_PARAMS {
        return Err(format!(
            "kata-config kernel_params has {} bytes (at most {MAX_KERNEL_PARAMS})",
            params.len()
        ));
    }
    if let Some(b) = params.bytes().find(|b| !allowed(*b) && *b != b' ') {
        return Err(format!(
            "kata-config kernel_params has the character {:?}; only letters, digits and ._,:=+- are allowed",
            char::from(b)
        ));
    }
    for word in params.split(' ').filter(|w| !w.is_empty()) {
        let name = word.split_once('=').map_or(word, |(name, _)| name);
        if name.is_empty() {
            return Err(format!(
                "kata-config kernel_params word {word:?} has no name"
            ));
        }
        let denied = DENIED_KERNEL_PARAMS
            .iter()
            .any(|d| match d.strip_suffix('.') {
                Some(prefix) => name == prefix || name.starts_with(d),
                None => name == *d,
            });
        if denied {
            return Err(format!(
                "kata-config kernel_params may not set {name:?} (the installed configuration owns it)"
            ));
        }
    }
    Ok(())
}
