//! `gpu-variant`: pick the artifact variant that fits the node's GPU, and skip GPU classes on
//! nodes without one.
//!
//! Settings:
//! ```json
//! {"gpuClasses": ["kata-qemu-nvidia-gpu"],
//!  "vendors": {"10de": "nvidia", "1002": "amd"},
//!  "devices": {"10de:2330": "h100"},
//!  "coldPlugVfio": true}
//! ```
//! For a class in `gpuClasses`: on a node without a GPU the class is skipped; otherwise the tag
//! of every source gets `-<variant>` appended, the variant named by the first GPU found in
//! `devices` (`vendor:device`, hex) or else in `vendors` (hex vendor id). A node whose GPUs have
//! no variant skips the class too. With `coldPlugVfio`, `mutate-runtime` asks kata to cold-plug
//! the GPUs on root ports (one per GPU). Classes not in `gpuClasses` pass through unchanged.

#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use alloc::collections::BTreeMap;

use kata_policy_sdk::{
    Gpu, KataSetting, Node, Policy, PolicySettings, Request, RuntimeDecision, RuntimeSettings,
    Source, SourceDecision, VfioPort, reference,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    pub gpu_classes: Vec<String>,
    #[serde(default)]
    pub vendors: BTreeMap<String, String>,
    #[serde(default)]
    pub devices: BTreeMap<String, String>,
    #[serde(default)]
    pub cold_plug_vfio: bool,
}

impl PolicySettings for Settings {
    fn check(&self) -> Result<(), String> {
        let tag_word = |v: &str| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        for (key, variant) in self.vendors.iter().chain(&self.devices) {
            if !tag_word(variant) {
                return Err(format!(
                    "settings: variant {variant:?} of {key:?} may only have letters, digits, '.', '_', '-'"
                ));
            }
        }
        Ok(())
    }
}

impl Settings {
    fn variant_of(&self, gpu: &Gpu) -> Option<&str> {
        let device = format!("{:04x}:{:04x}", gpu.vendor_id, gpu.device_id);
        self.devices
            .get(&device)
            .or_else(|| self.vendors.get(&format!("{:04x}", gpu.vendor_id)))
            .map(String::as_str)
    }

    fn is_gpu_class(&self, class: &str) -> bool {
        self.gpu_classes.iter().any(|c| c == class)
    }
}

/// The variant for this node: `Ok(None)` when the class is not a GPU class, `Err` with the
/// reason to skip when the node has no fitting GPU.
pub fn choose_variant<'s>(
    settings: &'s Settings,
    class: &str,
    node: &Node,
) -> Result<Option<&'s str>, String> {
    if !settings.is_gpu_class(class) {
        return Ok(None);
    }
    if node.gpus.is_empty() {
        return Err(format!("{class} needs a GPU and this node has none"));
    }
    node.gpus
        .iter()
        .find_map(|gpu| settings.variant_of(gpu))
        .map(Some)
        .ok_or_else(|| {
            let ids: Vec<String> = node
                .gpus
                .iter()
                .map(|g| format!("{:04x}:{:04x}", g.vendor_id, g.device_id))
                .collect();
            format!(
                "no variant of {class} for this node's GPUs ({})",
                ids.join(", ")
            )
        })
}

/// The sources with the variant appended to their tags (`latest` when a source has none).
pub fn apply_variant(variant: &str, current: Vec<Source>) -> Vec<Source> {
    current
        .into_iter()
        .map(|source| {
            let (_, tag, _) = reference::split(&source.reference);
            let tag = format!("{}-{variant}", tag.unwrap_or("latest"));
            Source::new(reference::with_tag(&source.reference, &tag))
        })
        .collect()
}

/// The runtime settings with VFIO cold-plug for the node's GPUs, when asked for.
pub fn with_vfio(
    settings: &Settings,
    class: &str,
    node: &Node,
    mut current: RuntimeSettings,
) -> RuntimeSettings {
    if settings.cold_plug_vfio && settings.is_gpu_class(class) && !node.gpus.is_empty() {
        let ports = u32::try_from(node.gpus.len()).unwrap_or(u32::MAX);
        current
            .kata_config
            .push(KataSetting::ColdPlugVfio(VfioPort::RootPort));
        current.kata_config.push(KataSetting::PcieRootPorts(ports));
    }
    current
}

struct GpuVariant;

impl Policy for GpuVariant {
    type Settings = Settings;

    fn select_source(
        settings: &Settings,
        request: Request,
        node: Node,
        current: Vec<Source>,
    ) -> SourceDecision {
        match choose_variant(settings, &request.class_name, &node) {
            Ok(Some(variant)) => SourceDecision::Pull(apply_variant(variant, current)),
            Ok(None) => SourceDecision::Pull(current),
            Err(reason) => SourceDecision::Skip(reason),
        }
    }

    fn mutate_runtime(
        settings: &Settings,
        request: Request,
        node: Node,
        current: RuntimeSettings,
    ) -> RuntimeDecision {
        RuntimeDecision::Settings(with_vfio(settings, &request.class_name, &node, current))
    }
}

kata_policy_sdk::no_std_runtime!();
kata_policy_sdk::export!(GpuVariant);

#[cfg(test)]
mod tests {
    use super::*;

    fn node(gpus: &[(u16, u16)]) -> Node {
        Node {
            arch: "x86_64".into(),
            kernel: "6.1.0".into(),
            cpu_flags: String::new(),
            has_kvm: true,
            gpus: gpus
                .iter()
                .map(|&(vendor_id, device_id)| Gpu {
                    vendor_id,
                    device_id,
                    address: "0000:01:00.0".into(),
                })
                .collect(),
            labels: None,
        }
    }

    fn settings() -> Settings {
        Settings::parse(
            r#"{"gpuClasses":["kata-gpu"],"vendors":{"10de":"nvidia"},"devices":{"10de:2330":"h100"},"coldPlugVfio":true}"#,
        )
        .expect("settings")
    }

    #[test]
    fn device_variant_wins_over_vendor_variant() {
        let s = settings();
        assert_eq!(
            choose_variant(&s, "kata-gpu", &node(&[(0x10de, 0x2330)])),
            Ok(Some("h100"))
        );
        assert_eq!(
            choose_variant(&s, "kata-gpu", &node(&[(0x10de, 0x1eb8)])),
            Ok(Some("nvidia"))
        );
    }

    #[test]
    fn gpu_classes_are_skipped_without_a_fitting_gpu() {
        let s = settings();
        let none = choose_variant(&s, "kata-gpu", &node(&[])).expect_err("no gpu");
        assert_eq!(none, "kata-gpu needs a GPU and this node has none");
        let other = choose_variant(&s, "kata-gpu", &node(&[(0x1002, 0x740f)])).expect_err("amd");
        assert!(other.contains("1002:740f"), "{other}");
        assert_eq!(choose_variant(&s, "kata-qemu", &node(&[])), Ok(None));
    }

    #[test]
    fn appends_the_variant_to_the_tag_and_drops_the_old_digest() {
        let current = vec![
            Source {
                reference: "r.io/kata:1.0@sha256:aa".into(),
                digest: Some("sha256:aa".into()),
            },
            Source::new("r.io/kata"),
        ];
        let out = apply_variant("nvidia", current);
        assert_eq!(
            out,
            vec![
                Source::new("r.io/kata:1.0-nvidia"),
                Source::new("r.io/kata:latest-nvidia")
            ]
        );
    }

    #[test]
    fn cold_plugs_one_root_port_per_gpu() {
        let current = RuntimeSettings {
            pod_annotations: vec![],
            container_annotations: vec![],
            privileged_without_host_devices: true,
            kata_config: vec![],
        };
        let out = with_vfio(
            &settings(),
            "kata-gpu",
            &node(&[(0x10de, 1), (0x10de, 2)]),
            current,
        );
        assert_eq!(out.kata_config.len(), 2);
        assert!(matches!(out.kata_config[1], KataSetting::PcieRootPorts(2)));
    }
}
