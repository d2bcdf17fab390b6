//! `kata-settings`: sizes a class's VMs from the operator config, without writing a policy.
//!
//! Settings: `{"classes": {"kata-qemu": {"defaultVcpus": 2, "defaultMemoryMib": 4096}}}`. Each
//! class listed gets those kata configuration values (the daemon renders them beside the class's
//! `runtime.configFile`); other classes pass through unchanged. Keys: `defaultVcpus`,
//! `defaultMaxVcpus`, `defaultMemoryMib`, `memorySlots`, `enableIommu`, `pcieRootPorts`,
//! `guestKernelParams`, `staticSandboxResourceMgmt`, `sandboxCgroupOnly`,
//! `agentDialTimeoutSecs`: the host's allowlist, whose bounds it checks again. An unknown key is
//! an error when the settings are validated, so a typo never passes silently.

#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use alloc::collections::BTreeMap;

use kata_policy_sdk::{
    KataSetting, Node, Policy, PolicySettings, Request, RuntimeDecision, RuntimeSettings,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    pub classes: BTreeMap<String, ClassSettings>,
}

/// The values for one class; absent keys are left as the configuration has them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClassSettings {
    pub default_vcpus: Option<u32>,
    pub default_max_vcpus: Option<u32>,
    pub default_memory_mib: Option<u32>,
    pub memory_slots: Option<u32>,
    pub enable_iommu: Option<bool>,
    pub pcie_root_ports: Option<u32>,
    pub guest_kernel_params: Option<String>,
    pub static_sandbox_resource_mgmt: Option<bool>,
    pub sandbox_cgroup_only: Option<bool>,
    pub agent_dial_timeout_secs: Option<u32>,
}

impl PolicySettings for Settings {}

impl ClassSettings {
    /// The settings in the host's order (hypervisor, then runtime, then agent).
    pub fn kata_settings(&self) -> Vec<KataSetting> {
        let mut out = Vec::new();
        out.extend(self.default_vcpus.map(KataSetting::DefaultVcpus));
        out.extend(self.default_max_vcpus.map(KataSetting::DefaultMaxVcpus));
        out.extend(self.default_memory_mib.map(KataSetting::DefaultMemoryMib));
        out.extend(self.memory_slots.map(KataSetting::MemorySlots));
        out.extend(self.enable_iommu.map(KataSetting::EnableIommu));
        out.extend(self.pcie_root_ports.map(KataSetting::PcieRootPorts));
        out.extend(
            self.guest_kernel_params
                .clone()
                .map(KataSetting::GuestKernelParams),
        );
        out.extend(
            self.static_sandbox_resource_mgmt
                .map(KataSetting::StaticSandboxResourceMgmt),
        );
        out.extend(self.sandbox_cgroup_only.map(KataSetting::SandboxCgroupOnly));
        out.extend(
            self.agent_dial_timeout_secs
                .map(KataSetting::AgentDialTimeoutSecs),
        );
        out
    }
}

/// `current` with the class's values: a value an earlier policy set for the same key is
/// replaced, so the chain's answer has each key once.
pub fn with_settings(
    settings: &Settings,
    class: &str,
    mut current: RuntimeSettings,
) -> RuntimeSettings {
    let Some(values) = settings.classes.get(class) else {
        return current;
    };
    for setting in values.kata_settings() {
        let key = core::mem::discriminant(&setting);
        current
            .kata_config
            .retain(|existing| core::mem::discriminant(existing) != key);
        current.kata_config.push(setting);
    }
    current
}

struct KataSettings;

impl Policy for KataSettings {
    type Settings = Settings;

    fn mutate_runtime(
        settings: &Settings,
        request: Request,
        _node: Node,
        current: RuntimeSettings,
    ) -> RuntimeDecision {
        RuntimeDecision::Settings(with_settings(settings, &request.class_name, current))
    }
}

kata_policy_sdk::no_std_runtime!();
kata_policy_sdk::export!(KataSettings);

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(kata_config: Vec<KataSetting>) -> RuntimeSettings {
        RuntimeSettings {
            pod_annotations: vec![],
            container_annotations: vec![],
            privileged_without_host_devices: true,
            kata_config,
        }
    }

    #[test]
    fn listed_classes_get_their_values_once_each() {
        let s = Settings::parse(
            r#"{"classes": {"kata-qemu": {"defaultVcpus": 2, "guestKernelParams": "quiet", "sandboxCgroupOnly": true}}}"#,
        )
        .expect("settings");
        let out = with_settings(&s, "kata-qemu", runtime(vec![KataSetting::DefaultVcpus(8)]));
        assert_eq!(
            format!("{:?}", out.kata_config),
            format!(
                "{:?}",
                vec![
                    KataSetting::DefaultVcpus(2),
                    KataSetting::GuestKernelParams("quiet".into()),
                    KataSetting::SandboxCgroupOnly(true),
                ]
            )
        );
        let other = with_settings(&s, "kata-clh", runtime(vec![KataSetting::MemorySlots(4)]));
        assert_eq!(
            format!("{:?}", other.kata_config),
            format!("{:?}", vec![KataSetting::MemorySlots(4)])
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let error =
            Settings::parse(r#"{"classes": {"kata-qemu": {"defaultVcpu": 2}}}"#).expect_err("typo");
        assert!(error.contains("defaultVcpu"), "{error}");
        assert!(Settings::parse(r#"{"clases": {}}"#).is_err());
    }
}
