//! Checks of single values, run by the schema walk on each file so a problem is reported at its
//! own key in its own file. Rules that compare keys live in `validate.rs`.

use std::net::SocketAddr;
use std::path::{Component, Path};
use std::str::FromStr;

use super::class::UpdatePolicy;
use super::duration::Duration;
use super::names;
use super::pattern::{AnnotationPattern, CONFIG_PATH_ANNOTATION};
use super::quantity::ByteSize;
use super::reference::{self, Digest, OciReference};

/// kubelet gives up on a runtime call after 2 minutes (`--runtime-request-timeout`): a gate that
/// waits longer lets the pod fail with a timeout instead of our reason.
const KUBELET_RUNTIME_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

fn parse<T>(text: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    text.parse::<T>().map_err(|e| e.to_string())
}

pub(super) fn parses_as<T>(text: &str) -> Result<(), String>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    parse::<T>(text).map(drop)
}

pub(super) fn absolute_path(text: &str) -> Result<(), String> {
    if Path::new(text).is_absolute() {
        Ok(())
    } else {
        Err(format!("{text:?} is not an absolute path"))
    }
}

/// A file inside the class's artifacts: relative and unable to climb out of them.
pub(super) fn path_inside_artifacts(text: &str) -> Result<(), String> {
    let path = Path::new(text);
    let inside = !text.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(format!(
            "{text:?} must be a relative path inside the artifacts, without '..' \
             (e.g. configuration-qemu.toml)"
        ));
    }
    // The install never lets an artifact ship this name, and links it only for classes without
    // configFile: naming it here could never find a file.
    let reserved = super::class::DEFAULT_KATA_CONFIG;
    if path
        .components()
        .filter(|c| *c != Component::CurDir)
        .eq([Component::Normal(reserved.as_ref())])
    {
        return Err(format!(
            "{text:?} is the name kata-nri-manager reserves for the artifact's top-level *.toml \
             of classes without configFile: leave configFile unset for that, or name the \
             artifact's own file (e.g. configuration-qemu.toml)"
        ));
    }
    Ok(())
}

pub(super) fn duration(text: &str) -> Result<(), String> {
    parses_as::<Duration>(text)
}

pub(super) fn positive_duration(text: &str) -> Result<(), String> {
    if parse::<Duration>(text)?.is_zero() {
        Err(format!("must be longer than 0, got {text:?}"))
    } else {
        Ok(())
    }
}

pub(super) fn gate_timeout(text: &str) -> Result<(), String> {
    positive_duration(text)?;
    if parse::<Duration>(text)? >= KUBELET_RUNTIME_REQUEST_TIMEOUT {
        Err(format!(
            "{text} is not below {KUBELET_RUNTIME_REQUEST_TIMEOUT}: kubelet abandons the pod's \
             sandbox request after 2 minutes, so a longer wait only hides the real error \
             (use e.g. 100s)"
        ))
    } else {
        Ok(())
    }
}

pub(super) fn positive_size(text: &str) -> Result<(), String> {
    if parse::<ByteSize>(text)?.bytes() == 0 {
        Err(format!("must be more than 0, got {text:?}"))
    } else {
        Ok(())
    }
}

pub(super) fn update_policy(text: &str) -> Result<(), String> {
    match text.parse::<UpdatePolicy>() {
        Ok(UpdatePolicy::Every(interval)) if interval.is_zero() => Err(format!(
            "the update interval must be longer than 0, got {text:?}"
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn oci_reference(text: &str) -> Result<(), String> {
    parses_as::<OciReference>(text)
}

pub(super) fn digest(text: &str) -> Result<(), String> {
    parses_as::<Digest>(text)
}

pub(super) fn class_name(text: &str) -> Result<(), String> {
    names::check_dns_label(text)
}

pub(super) fn secret_name(text: &str) -> Result<(), String> {
    names::check_dns_subdomain(text)
}

pub(super) fn label_key(text: &str) -> Result<(), String> {
    names::check_label_key(text)
}

pub(super) fn label_value(text: &str) -> Result<(), String> {
    names::check_label_value(text)
}

pub(super) fn plugin_name(text: &str) -> Result<(), String> {
    names::check_plugin_name(text)
}

pub(super) fn plugin_index(text: &str) -> Result<(), String> {
    names::check_plugin_index(text)
}

/// A kata configuration key, by name (`disable_seccomp`) or dotted path
/// (`hypervisor.qemu.disable_seccomp`).
pub(super) fn kata_key(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a kata configuration key (a name like disable_seccomp, or a dotted path like hypervisor.qemu.disable_seccomp)"
        ))
    }
}

pub(super) fn non_empty(text: &str) -> Result<(), String> {
    if text.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(())
    }
}

pub(super) fn runtime_type(text: &str) -> Result<(), String> {
    names::check_runtime_type(text)
}

pub(super) fn service_unit(text: &str) -> Result<(), String> {
    names::check_service_unit(text)
}

pub(super) fn policy_name(text: &str) -> Result<(), String> {
    if text.is_empty() {
        Err("a policy name must not be empty".into())
    } else {
        Ok(())
    }
}

pub(super) fn registry_prefix(text: &str) -> Result<(), String> {
    reference::check_registry_prefix(text)
}

pub(super) fn registry_host(text: &str) -> Result<(), String> {
    reference::check_host(text)
        .map_err(|why| format!("{text:?} is not a registry host[:port] ({why})"))
}

pub(super) fn listen_address(text: &str) -> Result<(), String> {
    text.parse::<SocketAddr>().map(drop).map_err(|_| {
        format!("{text:?} is not an IP address and port (e.g. 127.0.0.1:9464 or [::]:9464)")
    })
}

/// A kernel module as `modprobe` takes it: letters, digits, `_` and `-` (which the kernel treats
/// alike), never a path or an option.
pub(super) fn kernel_module(text: &str) -> Result<(), String> {
    let plain = !text.is_empty()
        && text.len() <= 64
        && !text.starts_with('-')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a kernel module name (e.g. vhost_vsock): letters, digits, `_` and `-`, not starting with `-`"
        ))
    }
}

/// A CDI kind, `vendor/class` (`nvidia.com/pgpu`), with the CDI specification's characters.
pub(super) fn cdi_kind(text: &str) -> Result<(), String> {
    let part = |p: &str, extra: &str| {
        !p.is_empty()
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric())
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    match text.split_once('/') {
        Some((vendor, class)) if part(vendor, "-_.") && part(class, "-_") => Ok(()),
        _ => Err(format!(
            "{text:?} is not a CDI kind `vendor/class` (e.g. nvidia.com/pgpu)"
        )),
    }
}

/// A PCI vendor ID: four hex digits (`10de`), as sysfs prints it without its `0x`.
pub(super) fn pci_vendor(text: &str) -> Result<(), String> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.len() == 4 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a PCI vendor ID: four hex digits, e.g. 10de (NVIDIA)"
        ))
    }
}

/// A Kubernetes resource quantity as a RuntimeClass's overhead holds it: a non-negative decimal
/// number and an optional suffix (`250m`, `1`, `0.5`, `320Mi`, `2Gi`, `1G`). Checked here so a
/// typo fails `config check` rather than the API server's validation of the RuntimeClass.
pub(super) fn quantity(text: &str) -> Result<(), String> {
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let well_formed = digits > 0 && number.matches('.').count() <= 1 && SUFFIXES.contains(&suffix);
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a Kubernetes quantity (e.g. 250m or 1 for CPU, 320Mi or 2Gi for memory)"
        ))
    }
}

/// A pod annotation pattern, which must not let pods set the kata config path.
pub(super) fn annotation_pattern(text: &str) -> Result<(), String> {
    let pattern = AnnotationPattern::parse(text)
        .map_err(|why| format!("{text:?} is not an annotation pattern: it {why}"))?;
    if pattern.matches(CONFIG_PATH_ANNOTATION) {
        return Err(format!(
            "{text:?} lets pods set {CONFIG_PATH_ANNOTATION}, which kata reads before the \
             runtime's ConfigPath, so any pod author could choose any kata configuration on the \
             node; list the annotations you need instead (e.g. io.katacontainers.config.hypervisor.*)"
        ));
    }
    Ok(())
}

/// A restart command: argv run without a shell, so the program must be named by absolute path
/// (containerd's PATH is not ours).
pub(super) fn argv(items: &[String]) -> Result<(), String> {
    match items.first() {
        None => Err("must name a program: [/absolute/program, args…]".into()),
        Some(program) if !Path::new(program).is_absolute() => Err(format!(
            "the program {program:?} must be an absolute path (it is run without a shell or PATH)"
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(absolute_path("/opt/x").is_ok());
        assert_eq!(
            absolute_path("opt/x"),
            Err("\"opt/x\" is not an absolute path".into())
        );
        for ok in [
            "configuration.toml",
            "share/kata/configuration-qemu.toml",
            "./c.toml",
        ] {
            assert!(path_inside_artifacts(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/kata/configuration.toml",
            "../c.toml",
            "a/../../c.toml",
            "kata-nri-manager.toml",
            "./kata-nri-manager.toml",
        ] {
            assert!(path_inside_artifacts(bad).is_err(), "{bad}");
        }
        assert!(path_inside_artifacts("share/kata-nri-manager.toml").is_ok());
    }

    #[test]
    fn durations_must_be_positive_and_gates_below_kubelets_timeout() {
        assert!(positive_duration("60s").is_ok());
        assert_eq!(
            positive_duration("0s"),
            Err("must be longer than 0, got \"0s\"".into())
        );
        assert!(positive_duration("60").is_err());
        assert!(gate_timeout("100s").is_ok());
        assert!(gate_timeout("119s").is_ok());
        let err = gate_timeout("120s").expect_err("120s");
        assert!(err.starts_with("120s is not below 2m: kubelet"), "{err}");
        assert!(gate_timeout("0s").is_err());
    }

    #[test]
    fn sizes_must_be_positive() {
        assert!(positive_size("64Mi").is_ok());
        assert!(positive_size("0").is_err());
        assert_eq!(
            positive_size("8Gx"),
            Err("\"8Gx\" is not a size (use e.g. 8Gi, 500Mi)".into())
        );
    }

    #[test]
    fn update_policies() {
        assert!(update_policy("pinned").is_ok());
        assert!(update_policy("6h").is_ok());
        assert!(update_policy("0s").is_err());
        assert!(update_policy("Pinned").is_err());
    }

    #[test]
    fn annotation_patterns_never_reach_the_config_path() {
        assert!(annotation_pattern("io.katacontainers.config.hypervisor.*").is_ok());
        for bad in [
            "io.katacontainers.*",
            "*",
            "io.katacontainers.config?path",
            "io.*",
        ] {
            let err = annotation_pattern(bad).expect_err(bad);
            assert!(
                err.contains("lets pods set io.katacontainers.config_path"),
                "{err}"
            );
        }
        let err = annotation_pattern("io.kata[").expect_err("syntax");
        assert!(err.contains("is not an annotation pattern"), "{err}");
    }

    #[test]
    fn restart_argv() {
        assert!(
            argv(&[
                "/usr/bin/systemctl".into(),
                "restart".into(),
                "containerd".into()
            ])
            .is_ok()
        );
        assert!(argv(&[]).is_err());
        assert!(argv(&["systemctl".into()]).is_err());
    }

    #[test]
    fn listen_addresses() {
        assert!(listen_address("127.0.0.1:9464").is_ok());
        assert!(listen_address("[::]:9464").is_ok());
        assert!(listen_address("localhost:9464").is_err());
        assert!(listen_address(":9464").is_err());
    }
}
