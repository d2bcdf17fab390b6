//! Rules that compare keys with each other, run on the decoded operator config. Single values
//! were already checked by the schema walk.

use std::collections::HashMap;

use super::class::{FromArtifact, RuntimeClass, UpdatePolicy, Verify};
use super::error::Problems;
use super::model::Config;
use super::pattern::AnnotationPattern;
use super::walk::{Role, index, join};

/// `classes` pairs each decoded class with its index in the file, which paths must name even
/// when earlier entries were set aside as broken.
/// `role`: the file the config came from; an operator file (beside a node file) is held to
/// what a ConfigMap may decide.
pub(super) fn validate(
    config: &Config,
    classes: &[(usize, &RuntimeClass)],
    role: Role,
    problems: &mut Problems,
) {
    let names: Vec<(usize, &str)> = classes.iter().map(|(i, c)| (*i, c.name.as_str())).collect();
    duplicate_names(&names, problems);
    if config.fleet.max_concurrent_restarts == 0 {
        problems.push(
            "fleet.maxConcurrentRestarts",
            "must be at least 1 (0 would never let a node restart containerd)",
        );
    }
    for (i, class) in classes {
        let path = index("runtimeClasses", *i);
        source_is_allowed(config, class, &path, problems);
        digests_agree(class, &path, problems);
        update_policy_fits_pin(class, &path, problems);
        pod_annotations_are_allowed(config, class, &path, problems);
        if role == Role::Operator {
            runtime_type_is_kata(class, &path, problems);
        }
        runs_only_trusted_binaries(
            class.runtime.from_artifact.as_ref(),
            class.artifacts.verify.as_ref(),
            class.runtime.runtime_path.as_deref(),
            &path,
            problems,
        );
    }
}

/// A ConfigMap serves kata: a class named `kata-qemu` whose pods run in runc would be a sandbox
/// quietly lost. Another runtime type is the node's decision (the node file's `runtimeType`).
fn runtime_type_is_kata(class: &RuntimeClass, path: &str, problems: &mut Problems) {
    let runtime_type = &class.runtime.runtime_type;
    if !super::names::is_kata_runtime_type(runtime_type) {
        problems.push(
            format!("{path}.runtime.runtimeType"),
            format!(
                "{runtime_type:?} is not a kata runtime type (io.containerd.kata.v2 or \
                 io.containerd.kata-<name>.v2): the operator config may only name kata's; \
                 another runtime type belongs in runtimeClasses[].runtime.runtimeType of the node config"
            ),
        );
    }
}

/// `runtime.fromArtifact` runs binaries from a registry as root: only those of a version the
/// same (root-owned) file pins or whose signature a key of that file checks. Not with
/// `runtimePath`, which names the node's own shim. Checked in the node file, or in the one
/// trusted file of a node without one.
pub(super) fn runs_only_trusted_binaries(
    from: Option<&FromArtifact>,
    verify: Option<&Verify>,
    runtime_path: Option<&std::path::Path>,
    class_path: &str,
    problems: &mut Problems,
) {
    let Some(from) = from else {
        return;
    };
    let path = format!("{class_path}.runtime.fromArtifact");
    if from.digest.is_none() && verify.is_none() {
        problems.push(
            path.clone(),
            "the artifact's binaries would run as root unchecked: pin its version here \
             (fromArtifact.digest) or require its cosign signature (artifacts.verify.cosignKey)",
        );
    }
    if runtime_path.is_some() {
        problems.push(
            path,
            "set either runtimePath (the node's shim) or fromArtifact (the artifact's), not both",
        );
    }
}

/// Two classes with one name would fight over one containerd stanza and one artifacts link.
pub(super) fn duplicate_names(names: &[(usize, &str)], problems: &mut Problems) {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names {
        match first_seen.get(name) {
            Some(first) => problems.push(
                join(&index("runtimeClasses", *i), "name"),
                format!("duplicate class {name:?} (also runtimeClasses[{first}])"),
            ),
            None => {
                first_seen.insert(name, *i);
            }
        }
    }
}

fn source_is_allowed(config: &Config, class: &RuntimeClass, path: &str, problems: &mut Problems) {
    let url = &class.artifacts.url;
    if !config.registries.allows(url) {
        problems.push(
            format!("{path}.artifacts.url"),
            format!(
                "{:?} is not under any of registries.allowed ({}); add its registry there or \
                 pull from an allowed one",
                url.as_str(),
                config.registries.allowed.join(", ")
            ),
        );
    }
}

fn digests_agree(class: &RuntimeClass, path: &str, problems: &mut Problems) {
    if let (Some(pin), Some(in_url)) = (&class.artifacts.digest, class.artifacts.url.digest())
        && pin != in_url
    {
        problems.push(
            format!("{path}.artifacts.digest"),
            format!("{pin} differs from the digest in artifacts.url ({in_url}); keep one of them"),
        );
    }
}

fn update_policy_fits_pin(class: &RuntimeClass, path: &str, problems: &mut Problems) {
    let pinned = class.pinned_digest().is_some();
    match class.update_policy {
        UpdatePolicy::Pinned if !pinned => problems.push(
            format!("{path}.updatePolicy"),
            "\"pinned\" needs a digest: set artifacts.digest or end artifacts.url with @sha256:…",
        ),
        UpdatePolicy::Every(interval) if pinned => problems.push(
            format!("{path}.updatePolicy"),
            format!(
                "every {interval} re-resolves the tag, but the artifacts are pinned to a digest; \
                 use pinned, or drop the digest"
            ),
        ),
        _ => {}
    }
}

fn pod_annotations_are_allowed(
    config: &Config,
    class: &RuntimeClass,
    path: &str,
    problems: &mut Problems,
) {
    for (j, pattern) in class.runtime.pod_annotations.iter().enumerate() {
        // Unparsable patterns never get here: the walk removed them.
        if AnnotationPattern::parse(pattern).is_ok() && !config.annotations.permits(pattern) {
            problems.push(
                index(&format!("{path}.runtime.podAnnotations"), j),
                format!(
                    "{pattern:?} is not covered by annotations.allowed; add it (or a pattern \
                     covering it) there, or narrow this one"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::class::Artifacts;
    use crate::config::reference::OciReference;

    const HEX_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HEX_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn class(name: &str, url: &str) -> RuntimeClass {
        let url: OciReference = url.parse().expect("url");
        RuntimeClass {
            name: name.into(),
            node_selector: Default::default(),
            overhead: Default::default(),
            tolerations: Vec::new(),
            provision: Default::default(),
            update_policy: Default::default(),
            version_skew: Default::default(),
            artifacts: Artifacts {
                url,
                pull_secret: None,
                digest: None,
                verify: None,
            },
            runtime: Default::default(),
        }
    }

    fn check(config: &Config) -> Vec<String> {
        let classes: Vec<(usize, &RuntimeClass)> =
            config.runtime_classes.iter().enumerate().collect();
        let mut problems = Problems::default();
        validate(config, &classes, Role::Trusted, &mut problems);
        problems
            .into_vec()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn duplicate_names_point_at_the_first() {
        let config = Config {
            runtime_classes: vec![
                class("kata-qemu", "nvcr.io/a"),
                class("kata-qemu", "nvcr.io/b"),
                class("kata-qemu", "nvcr.io/c"),
            ],
            ..Config::default()
        };
        assert_eq!(
            check(&config),
            [
                "runtimeClasses[1].name: duplicate class \"kata-qemu\" (also runtimeClasses[0])",
                "runtimeClasses[2].name: duplicate class \"kata-qemu\" (also runtimeClasses[0])",
            ]
        );
    }

    #[test]
    fn sources_must_be_under_an_allowed_registry_when_any_is_listed() {
        let mut config = Config {
            runtime_classes: vec![class("a", "nvcr.io/nvidia/x:1"), class("b", "ghcr.io/x:1")],
            ..Config::default()
        };
        assert!(check(&config).is_empty());
        config.registries.allowed = vec!["nvcr.io/nvidia".into()];
        assert_eq!(
            check(&config),
            [
                "runtimeClasses[1].artifacts.url: \"ghcr.io/x:1\" is not under any of registries.allowed (nvcr.io/nvidia); add its registry there or pull from an allowed one"
            ]
        );
    }

    #[test]
    fn digest_pins_must_agree_and_fit_the_update_policy() {
        let mut pinned_in_url = class("a", &format!("nvcr.io/x@sha256:{HEX_A}"));
        pinned_in_url.artifacts.digest = Some(format!("sha256:{HEX_B}").parse().expect("digest"));
        let mut pinned_without_digest = class("b", "nvcr.io/x:1");
        pinned_without_digest.update_policy = UpdatePolicy::Pinned;
        let mut interval_with_digest = class("c", &format!("nvcr.io/x@sha256:{HEX_A}"));
        interval_with_digest.update_policy = "6h".parse().expect("policy");
        let mut fine = class("d", "nvcr.io/x:1");
        fine.artifacts.digest = Some(format!("sha256:{HEX_A}").parse().expect("digest"));
        fine.update_policy = UpdatePolicy::Pinned;
        let config = Config {
            runtime_classes: vec![
                pinned_in_url,
                pinned_without_digest,
                interval_with_digest,
                fine,
            ],
            ..Config::default()
        };
        assert_eq!(
            check(&config),
            [
                format!("runtimeClasses[0].artifacts.digest: sha256:{HEX_B} differs from the digest in artifacts.url (sha256:{HEX_A}); keep one of them"),
                "runtimeClasses[1].updatePolicy: \"pinned\" needs a digest: set artifacts.digest or end artifacts.url with @sha256:…".into(),
                "runtimeClasses[2].updatePolicy: every 6h re-resolves the tag, but the artifacts are pinned to a digest; use pinned, or drop the digest".into(),
            ]
        );
    }

    #[test]
    fn pod_annotations_must_stay_within_the_allowlist() {
        let mut kata = class("kata", "nvcr.io/x:1");
        kata.runtime.pod_annotations = vec![
            "io.katacontainers.config.hypervisor.default_vcpus".into(),
            "io.katacontainers.config.agent.*".into(),
        ];
        let mut config = Config {
            runtime_classes: vec![kata],
            ..Config::default()
        };
        config.annotations.allowed = vec!["io.katacontainers.config.hypervisor.*".into()];
        assert_eq!(
            check(&config),
            [
                "runtimeClasses[0].runtime.podAnnotations[1]: \"io.katacontainers.config.agent.*\" is not covered by annotations.allowed; add it (or a pattern covering it) there, or narrow this one"
            ]
        );
    }

    #[test]
    fn paths_use_the_index_in_the_file() {
        let config = Config {
            runtime_classes: vec![class("a", "nvcr.io/x"), class("a", "nvcr.io/y")],
            ..Config::default()
        };
        let classes = vec![
            (0, &config.runtime_classes[0]),
            (3, &config.runtime_classes[1]),
        ];
        let mut problems = Problems::default();
        validate(&config, &classes, Role::Trusted, &mut problems);
        assert_eq!(problems.into_vec()[0].path, "runtimeClasses[3].name");
    }
}
