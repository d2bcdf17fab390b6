//! The host's check of every policy answer (`docs/architecture.md`, "Trust boundary"). A policy
//! can only express closed records; the guard bounds what is inside them: sources must be valid
//! references within `registries.allowed`, annotation patterns within the operator's allowlist
//! (and never reaching `io.katacontainers.config_path`), kata settings within their ranges,
//! every text within a size. A violation is the policy's invalid result.

use crate::config::{
    AnnotationPattern, Annotations, CONFIG_PATH_ANNOTATION, Config, Digest, OciReference,
    Registries,
};

use super::bindings::{RuntimeSettings, Source};
use super::loaded::bounded;
use super::types::{ArtifactSource, KataSetting, RuntimeOverrides, VfioPort};

/// Most sources one answer may list.
const MAX_SOURCES: usize = 16;
/// Most annotation patterns (each list) or kata settings one answer may list.
const MAX_ENTRIES: usize = 64;
/// Longest reason a policy may give.
const MAX_REASON: usize = 1024;
/// Longest guest kernel parameter string.
const MAX_KERNEL_PARAMS: usize = 1024;

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
        if settings.kata_config.len() > MAX_ENTRIES {
            return Err(format!("kata-config has more than {MAX_ENTRIES} settings"));
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

/// The host's rules for kata settings, each on its own and together: what the guard applies to
/// every `mutate-runtime` answer, and what the artifact store applies again before it writes
/// them into a kata configuration (settings may come back from a saved record, not only from a
/// guard that just ran).
pub fn validate_kata_settings(settings: &[KataSetting]) -> Result<(), String> {
    if settings.len() > MAX_ENTRIES {
        return Err(format!("kata-config has more than {MAX_ENTRIES} settings"));
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
