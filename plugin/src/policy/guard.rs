//! The host's check of every policy answer (`docs/architecture.md`, "Trust boundary"). A policy
//! can only express closed records; the guard bounds what is inside them: sources must be valid
//! references within `registries.allowed`, annotation patterns within the operator's allowlist
//! (and never reaching `io.katacontainers.config_path`), kata settings within their ranges,
//! every text within a size. A violation is the policy's invalid result.

use crate::config::{
    AnnotationPattern, Annotations, CONFIG_PATH_ANNOTATION, Config, Digest, OciReference,
    Registries,
};

use crate::kata::{KataSetting, MAX_SETTINGS, validate_kata_settings};

use super::bindings::{RuntimeSettings, Source};
use super::error::bounded;
use super::types::{ArtifactSource, RuntimeOverrides};

/// Most sources one answer may list.
const MAX_SOURCES: usize = 16;
/// Most annotation patterns one list of an answer may hold.
const MAX_ENTRIES: usize = 64;
/// Longest reason a policy may give.
const MAX_REASON: usize = 1024;

/// What the operator allows policies to choose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    registries: Registries,
    annotations: Annotations,
}

impl Guard {
    pub fn new(registries: Registries, annotations: Annotations) -> Self {
        Self {
            registries,
            annotations,
        }
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(config.registries.clone(), config.annotations.clone())
    }

    /// A `pull` answer as sources we may use.
    pub(crate) fn sources(&self, sources: Vec<Source>) -> Result<Vec<ArtifactSource>, String> {
        if sources.is_empty() {
            return Err("pull with no source (answer skip or deny instead)".into());
        }
        if sources.len() > MAX_SOURCES {
            return Err(format!("{} sources (at most {MAX_SOURCES})", sources.len()));
        }
        sources.into_iter().map(|s| self.source(s)).collect()
    }

    fn source(&self, source: Source) -> Result<ArtifactSource, String> {
        let reference: OciReference = source
            .reference
            .parse()
            .map_err(|e| bounded(format!("{e}")))?;
        let digest = source
            .digest
            .map(|d| d.parse::<Digest>().map_err(|e| bounded(format!("{e}"))))
            .transpose()?;
        if let (Some(pinned), Some(inline)) = (&digest, reference.digest())
            && pinned != inline
        {
            return Err(format!(
                "source {reference} carries digest {inline} but is pinned to {pinned}"
            ));
        }
        if !self.registries.allows(&reference) {
            return Err(format!(
                "source {reference} is outside registries.allowed ({})",
                self.registries.allowed.join(", ")
            ));
        }
        Ok(ArtifactSource { reference, digest })
    }

    /// A `settings` answer as overrides we may apply.
    pub(crate) fn runtime(&self, settings: RuntimeSettings) -> Result<RuntimeOverrides, String> {
        self.patterns("pod-annotations", &settings.pod_annotations)?;
        self.patterns("container-annotations", &settings.container_annotations)?;
        // Bounded before the conversion, which would otherwise copy a huge list first.
        if settings.kata_config.len() > MAX_SETTINGS {
            return Err(format!("kata-config has more than {MAX_SETTINGS} settings"));
        }
        let kata_config: Vec<KataSetting> =
            settings.kata_config.into_iter().map(Into::into).collect();
        validate_kata_settings(&kata_config)?;
        Ok(RuntimeOverrides {
            pod_annotations: settings.pod_annotations,
            container_annotations: settings.container_annotations,
            privileged_without_host_devices: settings.privileged_without_host_devices,
            kata_config,
        })
    }

    fn patterns(&self, field: &str, patterns: &[String]) -> Result<(), String> {
        if patterns.len() > MAX_ENTRIES {
            return Err(format!("{field} has more than {MAX_ENTRIES} patterns"));
        }
        for pattern in patterns {
            let parsed = AnnotationPattern::parse(pattern)
                .map_err(|why| bounded(format!("{field}: pattern {pattern:?} {why}")))?;
            // Checked on its own as well: the allowlist never covers it, but this rule must
            // not depend on the operator's file being right.
            if parsed.matches(CONFIG_PATH_ANNOTATION) {
                return Err(format!(
                    "{field}: pattern {pattern:?} would let pods choose the kata config \
                     ({CONFIG_PATH_ANNOTATION})"
                ));
            }
            if !self.annotations.permits(pattern) {
                return Err(bounded(format!(
                    "{field}: pattern {pattern:?} is not covered by annotations.allowed"
                )));
            }
        }
        Ok(())
    }

    /// A policy's reason text, checked for size.
    pub(crate) fn reason(&self, reason: String) -> Result<String, String> {
        if reason.len() > MAX_REASON {
            return Err(format!(
                "a reason of {} bytes (at most {MAX_REASON})",
                reason.len()
            ));
        }
        Ok(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::super::bindings::wit;
    use super::*;

    fn guard() -> Guard {
        Guard::new(
            Registries {
                allowed: vec!["registry.local:5000".into(), "nvcr.io/nvidia".into()],
                ..Registries::default()
            },
            Annotations {
                allowed: vec!["io.katacontainers.config.hypervisor.*".into()],
            },
        )
    }

    fn source(reference: &str, digest: Option<&str>) -> Source {
        Source {
            reference: reference.into(),
            digest: digest.map(Into::into),
        }
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn sources_must_be_valid_and_allowed() {
        let g = guard();
        let ok = g
            .sources(vec![source(
                "nvcr.io/nvidia/kata:1",
                Some(&format!("sha256:{HEX}")),
            )])
            .expect("allowed");
        assert_eq!(ok[0].reference.registry(), "nvcr.io");
        let outside = g
            .sources(vec![source("nvcr.io/other/kata:1", None)])
            .expect_err("outside");
        assert!(outside.contains("outside registries.allowed"), "{outside}");
        let bad = g
            .sources(vec![source("https://x/y", None)])
            .expect_err("bad");
        assert!(bad.contains("not a valid OCI reference"), "{bad}");
        let digest = g.sources(vec![source("registry.local:5000/k:1", Some("md5:x"))]);
        assert!(digest.expect_err("digest").contains("is not a digest"));
        assert!(g.sources(vec![]).is_err());
        assert!(
            g.sources(vec![source("registry.local:5000/k:1", None); 17])
                .is_err()
        );
    }

    fn settings(pod_annotations: &[&str], kata_config: Vec<wit::KataSetting>) -> RuntimeSettings {
        RuntimeSettings {
            pod_annotations: pod_annotations.iter().map(|s| s.to_string()).collect(),
            container_annotations: vec![],
            privileged_without_host_devices: true,
            kata_config,
        }
    }

    #[test]
    fn annotation_patterns_stay_in_the_allowlist_and_off_config_path() {
        let g = guard();
        assert!(
            g.runtime(settings(
                &["io.katacontainers.config.hypervisor.default_memory"],
                vec![]
            ))
            .is_ok()
        );
        let wide = g
            .runtime(settings(&["io.katacontainers.*"], vec![]))
            .expect_err("wide");
        assert!(wide.contains(CONFIG_PATH_ANNOTATION), "{wide}");
        let open = Guard::new(
            Registries::default(),
            Annotations {
                allowed: vec!["*".into()],
            },
        );
        let sneaky = open.runtime(settings(&["io.katacontainers.config?path"], vec![]));
        assert!(
            sneaky
                .expect_err("config path")
                .contains("choose the kata config")
        );
        let other = g.runtime(settings(&["io.katacontainers.config.agent.*"], vec![]));
        assert!(other.expect_err("outside").contains("not covered"));
    }

    #[test]
    fn kata_settings_stay_in_range_and_plain() {
        let g = guard();
        assert!(
            g.runtime(settings(&[], vec![wit::KataSetting::DefaultVcpus(4)]))
                .is_ok()
        );
        assert!(
            g.runtime(settings(&[], vec![wit::KataSetting::DefaultVcpus(0)]))
                .is_err()
        );
        let quote = wit::KataSetting::GuestKernelParams("a=1\"\npath=\"/bin/sh".into());
        assert!(
            g.runtime(settings(&[], vec![quote]))
                .expect_err("quote")
                .contains("character")
        );
        let ok = wit::KataSetting::GuestKernelParams("iommu=pt pci=realloc".into());
        assert!(g.runtime(settings(&[], vec![ok])).is_ok());
    }

    #[test]
    fn kernel_params_cannot_name_paths_or_what_the_guest_runs() {
        let g = guard();
        let check = |params: &str| {
            g.runtime(settings(
                &[],
                vec![wit::KataSetting::GuestKernelParams(params.into())],
            ))
        };
        assert!(check("iommu=pt  nvidia.NVreg_EnableGpuFirmware=1 quiet").is_ok());
        assert!(check("").is_ok());
        let path = check("console=ttyS0 foo=/bin/sh").expect_err("path");
        assert!(path.contains("'/'"), "{path}");
        for denied in [
            "init=x",
            "rdinit=x",
            "root=vda1",
            "agent.debug_console",
            "agent",
        ] {
            let error = check(&format!("quiet {denied}")).expect_err(denied);
            assert!(error.contains("may not set"), "{denied}: {error}");
        }
        // A name that merely starts like a denied one is fine.
        assert!(check("initcall_debug rootwait=1").is_ok());
        assert!(check("=1").expect_err("nameless").contains("no name"));
        assert!(check("a\tb").is_err());
    }

    #[test]
    fn kata_settings_must_agree_with_each_other() {
        let g = guard();
        use wit::{KataSetting as K, VfioPort as P};
        let twice = g.runtime(settings(&[], vec![K::DefaultVcpus(2), K::DefaultVcpus(4)]));
        assert!(twice.expect_err("twice").contains("more than once"));
        let params = g.runtime(settings(
            &[],
            vec![
                K::GuestKernelParams("a".into()),
                K::GuestKernelParams("b".into()),
            ],
        ));
        assert!(params.is_err());
        let above = g.runtime(settings(
            &[],
            vec![K::DefaultVcpus(8), K::DefaultMaxVcpus(4)],
        ));
        assert!(above.expect_err("above").contains("default_maxvcpus"));
        assert!(
            g.runtime(settings(
                &[],
                vec![K::DefaultVcpus(4), K::DefaultMaxVcpus(4)]
            ))
            .is_ok()
        );
        let both = g.runtime(settings(
            &[],
            vec![K::HotPlugVfio(P::RootPort), K::ColdPlugVfio(P::RootPort)],
        ));
        assert!(both.expect_err("both").contains("accepts one"));
        assert!(
            g.runtime(settings(
                &[],
                vec![K::HotPlugVfio(P::NoPort), K::ColdPlugVfio(P::RootPort)]
            ))
            .is_ok()
        );
    }

    #[test]
    fn reasons_are_bounded() {
        assert!(guard().reason("no".into()).is_ok());
        assert!(guard().reason("x".repeat(10 << 20)).is_err());
    }
}
