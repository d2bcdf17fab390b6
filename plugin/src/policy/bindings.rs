//! The generated bindings of `policies-wasm/wit/policy.wit` and the conversions between them
//! and our own types. Nothing here is public outside the policy module.

use crate::kata::{KataSetting, VfioPort};

use super::types::{NodeFacts, PodInfo, Request, RuntimeOverrides, SourceSpec, Trigger};

/// In a module of its own: `use types.{…}` in the world puts the WIT types at the top level of
/// the generated code, where they would clash with ours.
mod generated {
    wasmtime::component::bindgen!({
        path: "../policies-wasm/wit",
        world: "policy",
    });
}

pub(crate) use generated::kata_nri_manager::policy::types as wit;

pub(crate) use generated::{
    Admission, Node, Pod, Policy, PolicyPre, RuntimeDecision, RuntimeSettings, Source,
    SourceDecision,
};

fn labels<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<wit::Label> {
    pairs
        .map(|(key, value)| wit::Label {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

impl From<&NodeFacts> for Node {
    fn from(node: &NodeFacts) -> Self {
        Node {
            arch: node.arch.clone(),
            kernel: node.kernel.clone(),
            cpu_flags: node.cpu_flags.join(" "),
            has_kvm: node.has_kvm,
            gpus: node
                .gpus
                .iter()
                .map(|gpu| wit::Gpu {
                    vendor_id: gpu.vendor_id,
                    device_id: gpu.device_id,
                    address: gpu.address.clone(),
                })
                .collect(),
            labels: node.labels.as_ref().map(|l| labels(l.iter())),
        }
    }
}

impl From<Trigger> for wit::Trigger {
    fn from(trigger: Trigger) -> Self {
        match trigger {
            Trigger::Startup => wit::Trigger::Startup,
            Trigger::PodAnnotation => wit::Trigger::PodAnnotation,
            Trigger::Gate => wit::Trigger::Gate,
            Trigger::Update => wit::Trigger::Update,
            Trigger::Cli => wit::Trigger::Cli,
        }
    }
}

impl From<&SourceSpec> for Source {
    fn from(source: &SourceSpec) -> Self {
        Source {
            reference: source.reference.clone(),
            digest: source.digest.clone(),
        }
    }
}

impl From<&Request> for wit::Request {
    fn from(request: &Request) -> Self {
        wit::Request {
            class_name: request.class_name.clone(),
            configured: Source::from(&request.configured),
            trigger: request.trigger.into(),
        }
    }
}

impl From<&PodInfo> for Pod {
    fn from(pod: &PodInfo) -> Self {
        Pod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            annotations: labels(pod.annotations.iter()),
        }
    }
}

impl From<VfioPort> for wit::VfioPort {
    fn from(port: VfioPort) -> Self {
        match port {
            VfioPort::NoPort => wit::VfioPort::NoPort,
            VfioPort::BridgePort => wit::VfioPort::BridgePort,
            VfioPort::RootPort => wit::VfioPort::RootPort,
            VfioPort::SwitchPort => wit::VfioPort::SwitchPort,
        }
    }
}

impl From<wit::VfioPort> for VfioPort {
    fn from(port: wit::VfioPort) -> Self {
        match port {
            wit::VfioPort::NoPort => VfioPort::NoPort,
            wit::VfioPort::BridgePort => VfioPort::BridgePort,
            wit::VfioPort::RootPort => VfioPort::RootPort,
            wit::VfioPort::SwitchPort => VfioPort::SwitchPort,
        }
    }
}

impl From<&KataSetting> for wit::KataSetting {
    fn from(setting: &KataSetting) -> Self {
        use wit::KataSetting as W;
        match setting.clone() {
            KataSetting::DefaultVcpus(n) => W::DefaultVcpus(n),
            KataSetting::DefaultMaxVcpus(n) => W::DefaultMaxVcpus(n),
            KataSetting::DefaultMemoryMib(n) => W::DefaultMemoryMib(n),
            KataSetting::MemorySlots(n) => W::MemorySlots(n),
            KataSetting::EnableIommu(b) => W::EnableIommu(b),
            KataSetting::HotPlugVfio(p) => W::HotPlugVfio(p.into()),
            KataSetting::ColdPlugVfio(p) => W::ColdPlugVfio(p.into()),
            KataSetting::PcieRootPorts(n) => W::PcieRootPorts(n),
            KataSetting::GuestKernelParams(s) => W::GuestKernelParams(s),
            KataSetting::StaticSandboxResourceMgmt(b) => W::StaticSandboxResourceMgmt(b),
            KataSetting::SandboxCgroupOnly(b) => W::SandboxCgroupOnly(b),
            KataSetting::AgentDialTimeoutSecs(n) => W::AgentDialTimeoutSecs(n),
        }
    }
}

impl From<wit::KataSetting> for KataSetting {
    fn from(setting: wit::KataSetting) -> Self {
        use wit::KataSetting as W;
        match setting {
            W::DefaultVcpus(n) => KataSetting::DefaultVcpus(n),
            W::DefaultMaxVcpus(n) => KataSetting::DefaultMaxVcpus(n),
            W::DefaultMemoryMib(n) => KataSetting::DefaultMemoryMib(n),
            W::MemorySlots(n) => KataSetting::MemorySlots(n),
            W::EnableIommu(b) => KataSetting::EnableIommu(b),
            W::HotPlugVfio(p) => KataSetting::HotPlugVfio(p.into()),
            W::ColdPlugVfio(p) => KataSetting::ColdPlugVfio(p.into()),
            W::PcieRootPorts(n) => KataSetting::PcieRootPorts(n),
            W::GuestKernelParams(s) => KataSetting::GuestKernelParams(s),
            W::StaticSandboxResourceMgmt(b) => KataSetting::StaticSandboxResourceMgmt(b),
            W::SandboxCgroupOnly(b) => KataSetting::SandboxCgroupOnly(b),
            W::AgentDialTimeoutSecs(n) => KataSetting::AgentDialTimeoutSecs(n),
        }
    }
}

impl From<&RuntimeOverrides> for RuntimeSettings {
    fn from(runtime: &RuntimeOverrides) -> Self {
        RuntimeSettings {
            pod_annotations: runtime.pod_annotations.clone(),
            container_annotations: runtime.container_annotations.clone(),
            privileged_without_host_devices: runtime.privileged_without_host_devices,
            kata_config: runtime.kata_config.iter().map(Into::into).collect(),
        }
    }
}
