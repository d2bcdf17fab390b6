//! Syntax of the names the config hands to Kubernetes, containerd and NRI. Each check returns
//! the operator-facing reason on failure.

const DNS_LABEL_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;
const LABEL_VALUE_MAX: usize = 63;

fn lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A DNS-1123 label: what a RuntimeClass `handler` must be, and safe as a containerd runtime
/// name, a TOML key, a file name under `artifactsDir` and the name part of a node label.
pub(super) fn check_dns_label(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err("must not be empty".into());
    }
    if bytes.len() > DNS_LABEL_MAX {
        return Err(format!(
            "{name:?} is longer than {DNS_LABEL_MAX} characters"
        ));
    }
    let edges_ok = bytes.first().copied().is_some_and(lower_alnum)
        && bytes.last().copied().is_some_and(lower_alnum);
    if !edges_ok || !bytes.iter().all(|&b| lower_alnum(b) || b == b'-') {
        return Err(format!(
            "{name:?} is not a DNS-1123 label (lowercase letters, digits and '-', \
             starting and ending with a letter or digit), as a RuntimeClass handler must be"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: the name of a Kubernetes Secret. It is also a directory name under
/// `pullSecretsDir`, so this keeps `..` and `/` out of that path.
pub(super) fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > DNS_SUBDOMAIN_MAX {
        return Err(format!(
            "{name:?} is longer than {DNS_SUBDOMAIN_MAX} characters"
        ));
    }
    if name.split('.').all(|label| check_dns_label(label).is_ok()) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a Kubernetes object name (DNS-1123 subdomain: lowercase letters, \
             digits, '-' and '.')"
        ))
    }
}

/// A label name or value body: letters, digits, `-`, `_`, `.`, alphanumeric at both ends.
fn label_word_ok(word: &str) -> bool {
    let bytes = word.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters.
pub(super) fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && check_dns_subdomain(prefix).is_err()
    {
        return Err(format!(
            "label key {key:?}: prefix {prefix:?} is not a DNS subdomain"
        ));
    }
    if name.len() > DNS_LABEL_MAX || !label_word_ok(name) {
        return Err(format!(
            "{key:?} is not a label key (name of at most 63 letters, digits, '-', '_' or '.', \
             alphanumeric at both ends, after an optional DNS prefix and '/')"
        ));
    }
    Ok(())
}

pub(super) fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= LABEL_VALUE_MAX && label_word_ok(value)) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a label value (at most 63 letters, digits, '-', '_' or '.', \
             alphanumeric at both ends)"
        ))
    }
}

/// An NRI plugin name: containerd joins it with the index into a file and socket name.
/// Public for command-line overrides (`--plugin-name`).
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-');
    if !name.is_empty() && name.bytes().all(ok) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an NRI plugin name (letters, digits, '_', '.', '+' and '-')"
        ))
    }
}

/// NRI orders plugins by a two-digit index, as in `50-kata-nri-manager`. Public for
/// command-line overrides (`--plugin-idx`).
pub fn check_plugin_index(index: &str) -> Result<(), String> {
    if index.len() == 2 && index.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("must be exactly two digits, got {index:?}"))
    }
}

/// A containerd runtime type: containerd turns `io.containerd.<name>.<version>` into the shim
/// binary `containerd-shim-<name>-<version>` looked up in its PATH. A path would name the binary
/// itself, which only node-local config may choose.
pub(super) fn check_runtime_type(runtime_type: &str) -> Result<(), String> {
    let word_ok = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    };
    let parts: Vec<&str> = runtime_type.split('.').collect();
    let version_ok = parts.last().is_some_and(|v| {
        v.strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if parts.len() >= 3 && parts.iter().all(|w| word_ok(w)) && version_ok {
        Ok(())
    } else {
        Err(format!(
            "{runtime_type:?} is not a containerd runtime type (use e.g. io.containerd.kata.v2; \
             a shim path belongs in runtime.runtimePath of the node config)"
        ))
    }
}

/// A kata runtime type: `io.containerd.kata.v2`, or `io.containerd.kata-<name>.v2` (a shim
/// containerd finds as `containerd-shim-kata-<name>-v2`, kata-deploy's per-hypervisor names).
pub(super) fn is_kata_runtime_type(runtime_type: &str) -> bool {
    match runtime_type
        .strip_prefix("io.containerd.kata")
        .and_then(|rest| rest.strip_suffix(".v2"))
    {
        Some("") => true,
        Some(name) => name.strip_prefix('-').is_some_and(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        }),
        None => false,
    }
}

/// A systemd unit that can be restarted: a `.service`.
pub(super) fn check_service_unit(unit: &str) -> Result<(), String> {
    let ok =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'@' | b'-' | b'\\');
    match unit.strip_suffix(".service") {
        Some(stem) if !stem.is_empty() && unit.bytes().all(ok) => Ok(()),
        _ => Err(format!(
            "{unit:?} is not a systemd service unit name (e.g. containerd.service)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["kata-qemu", "kata", "a", "k8s-1", &"a".repeat(63)] {
            assert!(check_dns_label(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Kata",
            "kata_qemu",
            "-kata",
            "kata-",
            "kata.qemu",
            &"a".repeat(64),
            ".store",
        ] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["my-pull-secret", "a.b.c", "nvcr-creds"] {
            assert!(check_dns_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", "../etc", "a/b", "<my-k8s-secret>", "A", "a..b"] {
            assert!(check_dns_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "nvidia.com/gpu.present",
            "kubernetes.io/arch",
            "feature_x",
            "a",
        ] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/x",
            "Nvidia.com/x",
            "a/b/c",
            "x/",
            "-x",
            &"a".repeat(64),
        ] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        for ok in ["true", "", "A_b.c-1"] {
            assert!(check_label_value(ok).is_ok(), "{ok}");
        }
        for bad in ["a b", "-x", "x.", &"a".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plugin_name_and_index() {
        assert!(check_plugin_name("kata-nri-manager").is_ok());
        assert!(check_plugin_name("a_b.c+d").is_ok());
        assert!(check_plugin_name("").is_err());
        assert!(check_plugin_name("a/b").is_err());
        assert!(check_plugin_index("50").is_ok());
        assert!(check_plugin_index("05").is_ok());
        assert_eq!(
            check_plugin_index("5"),
            Err("must be exactly two digits, got \"5\"".into())
        );
        assert!(check_plugin_index("500").is_err());
        assert!(check_plugin_index("a5").is_err());
    }

    #[test]
    fn runtime_types() {
        for ok in [
            "io.containerd.kata.v2",
            "io.containerd.kata-qemu-nvidia-gpu.v2",
        ] {
            assert!(check_runtime_type(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/opt/kata/bin/containerd-shim-kata-v2",
            "kata",
            "io.containerd.kata",
            "io..kata.v2",
        ] {
            assert!(check_runtime_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_units() {
        assert!(check_service_unit("containerd.service").is_ok());
        assert!(check_service_unit("k3s.service").is_ok());
        assert!(check_service_unit("containerd").is_err());
        assert!(check_service_unit(".service").is_err());
        assert!(check_service_unit("a b.service").is_err());
    }
}
