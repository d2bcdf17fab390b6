//! [`Policy`]: the `policy` world with the operator's settings parsed for every call and an
//! answer that changes nothing for each decision a policy does not make.
//!
//! Implementing [`Policy`] implements the generated [`Guest`] trait, so [`export!`](crate::export)
//! takes the type as it is. A policy that needs the raw calls implements [`Guest`] itself instead.

use alloc::string::String;
use alloc::vec::Vec;

use crate::settings::PolicySettings;
use crate::{
    Admission, Guest, Node, Pod, Request, RuntimeDecision, RuntimeSettings, Source, SourceDecision,
    keep_runtime, keep_sources,
};

/// A policy over its own settings type. Nothing is required but the settings type; every
/// decision left out keeps what the previous policy of the chain answered (or admits, for
/// `admit`).
pub trait Policy {
    /// The policy's settings, as [`parse_settings`](Self::parse_settings) makes them.
    type Settings: PolicySettings;

    /// Parses and checks the JSON text of the policy's `policies.settings` entry
    /// ([`PolicySettings::parse`]). An error here refuses the policy at load
    /// (`validate-settings`) and denies a decision.
    fn parse_settings(text: &str) -> Result<Self::Settings, String> {
        Self::Settings::parse(text)
    }

    /// `select-source`: the sources to pull from, in order, or skip or deny.
    fn select_source(
        _settings: &Self::Settings,
        _request: Request,
        _node: Node,
        current: Vec<Source>,
    ) -> SourceDecision {
        keep_sources(current)
    }

    /// `mutate-runtime`: the runtime stanza's settings and the kata settings, or deny.
    fn mutate_runtime(
        _settings: &Self::Settings,
        _request: Request,
        _node: Node,
        current: RuntimeSettings,
    ) -> RuntimeDecision {
        keep_runtime(current)
    }

    /// `admit`: whether a pod may trigger the class.
    fn admit(_settings: &Self::Settings, _request: Request, _node: Node, _pod: Pod) -> Admission {
        Admission::Allow
    }
}

impl<P: Policy> Guest for P {
    fn validate_settings(settings: String) -> Result<(), String> {
        P::parse_settings(&settings).map(drop)
    }

    fn select_source(
        settings: String,
        request: Request,
        node: Node,
        current: Vec<Source>,
    ) -> SourceDecision {
        match P::parse_settings(&settings) {
            Ok(settings) => <P as Policy>::select_source(&settings, request, node, current),
            Err(e) => SourceDecision::Deny(e),
        }
    }

    fn mutate_runtime(
        settings: String,
        request: Request,
        node: Node,
        current: RuntimeSettings,
    ) -> RuntimeDecision {
        match P::parse_settings(&settings) {
            Ok(settings) => <P as Policy>::mutate_runtime(&settings, request, node, current),
            Err(e) => RuntimeDecision::Deny(e),
        }
    }

    fn admit(settings: String, request: Request, node: Node, pod: Pod) -> Admission {
        match P::parse_settings(&settings) {
            Ok(settings) => <P as Policy>::admit(&settings, request, node, pod),
            Err(e) => Admission::Deny(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Label, Trigger};
    use std::prelude::rust_2024::*;
    use std::{format, vec};

    /// Overrides `admit` only; its settings are a namespace.
    struct OnlyIn;

    #[derive(serde::Deserialize)]
    #[serde(transparent)]
    struct Namespace(String);

    impl PolicySettings for Namespace {}

    impl Policy for OnlyIn {
        type Settings = Namespace;

        fn admit(settings: &Namespace, _request: Request, _node: Node, pod: Pod) -> Admission {
            let Namespace(namespace) = settings;
            if pod.namespace == *namespace {
                Admission::Allow
            } else {
                Admission::Deny(format!("only {namespace}"))
            }
        }
    }

    fn request() -> Request {
        Request {
            class_name: "kata".into(),
            configured: Source::new("r/a:1"),
            trigger: Trigger::Startup,
        }
    }

    fn node() -> Node {
        Node {
            arch: "x86_64".into(),
            kernel: "6.1".into(),
            cpu_flags: String::new(),
            has_kvm: true,
            gpus: vec![],
            labels: None,
        }
    }

    fn pod(namespace: &str) -> Pod {
        Pod {
            namespace: namespace.into(),
            name: "p".into(),
            annotations: vec![Label {
                key: "k".into(),
                value: "v".into(),
            }],
        }
    }

    #[test]
    fn decisions_left_out_keep_what_they_were_given() {
        let sources = vec![Source::new("r/a:1"), Source::new("r/b:2")];
        assert_eq!(
            <OnlyIn as Guest>::select_source("\"ci\"".into(), request(), node(), sources.clone()),
            SourceDecision::Pull(sources)
        );
        let runtime = RuntimeSettings {
            pod_annotations: vec!["io.katacontainers.*".into()],
            container_annotations: vec![],
            privileged_without_host_devices: true,
            kata_config: vec![],
        };
        assert_eq!(
            <OnlyIn as Guest>::mutate_runtime("\"ci\"".into(), request(), node(), runtime.clone()),
            RuntimeDecision::Settings(runtime)
        );
    }

    #[test]
    fn the_overridden_decision_sees_parsed_settings() {
        assert_eq!(
            <OnlyIn as Guest>::admit("\"ci\"".into(), request(), node(), pod("ci")),
            Admission::Allow
        );
        assert_eq!(
            <OnlyIn as Guest>::admit("\"ci\"".into(), request(), node(), pod("dev")),
            Admission::Deny("only ci".into())
        );
    }

    #[test]
    fn unparsable_settings_refuse_the_load_and_deny_every_decision() {
        let err = <OnlyIn as Guest>::validate_settings("{".into()).expect_err("bad JSON");
        assert!(err.starts_with("settings:"), "{err}");
        assert!(matches!(
            <OnlyIn as Guest>::select_source("{".into(), request(), node(), vec![]),
            SourceDecision::Deny(e) if e.starts_with("settings:")
        ));
        assert!(matches!(
            <OnlyIn as Guest>::admit("{".into(), request(), node(), pod("ci")),
            Admission::Deny(e) if e.starts_with("settings:")
        ));
    }
}
