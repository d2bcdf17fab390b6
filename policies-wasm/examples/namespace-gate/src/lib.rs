//! `namespace-gate`: only pods of listed namespaces may trigger or start the gated classes.
//!
//! Settings: `{"namespaces": ["ml-team", "ci-*"], "classes": ["kata-qemu-nvidia-gpu"]}`. A
//! namespace entry ending in `*` is a prefix. `classes` limits the gate to those classes (all
//! classes when absent). Sources and runtime settings pass through unchanged.

#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use kata_policy_sdk::{Admission, Node, Pod, Policy, PolicySettings, Request};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub classes: Option<Vec<String>>,
}

impl PolicySettings for Settings {
    fn check(&self) -> Result<(), String> {
        if let Some(bad) = self
            .namespaces
            .iter()
            .find(|n| n.is_empty() || n[..n.len() - 1].contains('*'))
        {
            return Err(format!("settings: namespaces: {bad:?} may only end in '*'"));
        }
        Ok(())
    }
}

impl Settings {
    fn gates(&self, class: &str) -> bool {
        self.classes
            .as_ref()
            .is_none_or(|classes| classes.iter().any(|c| c == class))
    }

    fn lists(&self, namespace: &str) -> bool {
        self.namespaces
            .iter()
            .any(|entry| match entry.strip_suffix('*') {
                Some(prefix) => namespace.starts_with(prefix),
                None => namespace == entry,
            })
    }
}

/// Whether `pod` may trigger `class`.
pub fn admit(settings: &Settings, class: &str, pod: &Pod) -> Admission {
    if !settings.gates(class) || settings.lists(&pod.namespace) {
        Admission::Allow
    } else {
        Admission::Deny(format!(
            "pods of namespace {:?} may not trigger {class}",
            pod.namespace
        ))
    }
}

struct NamespaceGate;

impl Policy for NamespaceGate {
    type Settings = Settings;

    fn admit(settings: &Settings, request: Request, _node: Node, pod: Pod) -> Admission {
        admit(settings, &request.class_name, &pod)
    }
}

kata_policy_sdk::no_std_runtime!();
kata_policy_sdk::export!(NamespaceGate);

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str) -> Pod {
        Pod {
            namespace: namespace.into(),
            name: "p".into(),
            annotations: vec![],
        }
    }

    #[test]
    fn admits_listed_namespaces_and_prefixes() {
        let s = Settings::parse(r#"{"namespaces":["ml","ci-*"]}"#).expect("settings");
        assert!(matches!(admit(&s, "kata", &pod("ml")), Admission::Allow));
        assert!(matches!(admit(&s, "kata", &pod("ci-42")), Admission::Allow));
        match admit(&s, "kata", &pod("mlx")) {
            Admission::Deny(reason) => {
                assert_eq!(reason, r#"pods of namespace "mlx" may not trigger kata"#)
            }
            Admission::Allow => panic!("mlx is not listed"),
        }
    }

    #[test]
    fn gates_only_the_listed_classes() {
        let s =
            Settings::parse(r#"{"namespaces":["ml"],"classes":["kata-gpu"]}"#).expect("settings");
        assert!(matches!(
            admit(&s, "kata-qemu", &pod("default")),
            Admission::Allow
        ));
        assert!(matches!(
            admit(&s, "kata-gpu", &pod("default")),
            Admission::Deny(_)
        ));
    }

    #[test]
    fn refuses_inner_stars() {
        assert!(Settings::parse(r#"{"namespaces":["a*b"]}"#).is_err());
        assert!(Settings::parse(r#"{"namespaces":[""]}"#).is_err());
    }
}
