//! An installed kata configuration may name only files of its own version or host files the node
//! allowlists (`kataConfig.allowedHostPaths`; `docs/architecture.md`, "Trust boundary"). The shim
//! runs as root and execs the hypervisor, jailer and virtiofsd it is told, and feeds the kernel,
//! image and firmware to the guest: a path outside those would let an artifact run or read any
//! host file.
//! Checked after the rewrite (`kataconf.rs`), before the version becomes current.

use std::fs;
use std::path::{Component, Path, PathBuf};

use toml_edit::{DocumentMut, Item, Value};

use super::kataconf::{self, KataConfigError};

/// Keys of a `[hypervisor.*]` table that name a host file the shim executes or reads.
const PATH_KEYS: [&str; 9] = [
    "path",
    "ctlpath",
    "jailer_path",
    "virtio_fs_daemon",
    "kernel",
    "image",
    "initrd",
    "firmware",
    "firmware_volume",
];

/// Hypervisor annotations (`io.katacontainers.config.hypervisor.<name>`) whose value is a host
/// path, besides those named like [`PATH_KEYS`]: `enable_annotations` may not let a pod set any.
const MORE_PATH_ANNOTATIONS: [&str; 5] = [
    "pflashes",
    "file_mem_backend",
    "entropy_source",
    "vhost_user_store_path",
    "sandbox_bind_mounts",
];

/// Entropy devices kata may feed the guest from (`entropy_source`): anything else is a host file
/// whose content the pod would read through virtio-rng.
const ENTROPY_DEVICES: [&str; 3] = ["/dev/urandom", "/dev/random", "/dev/hwrng"];

/// Where guest memory files may be created (`file_mem_backend`): shared-memory and hugepage
/// mounts, never a directory of host files.
const MEMORY_BACKEND_DIRS: [&str; 2] = ["/dev/shm", "/dev/hugepages"];

/// Where vhost-user sockets may live (`vhost_user_store_path`): runtime directories.
const SOCKET_DIRS: [&str; 2] = ["/run", "/var/run"];

/// Characters with a meaning in Go's `regexp`, the syntax of `enable_annotations` entries.
const REGEX_SYNTAX: &[char] = &[
    '.', '*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '^', '$', '\\',
];

/// Where an installed configuration may point.
#[derive(Debug, Clone, Copy)]
pub struct HostPathRule<'a> {
    /// `<artifactsDir>/.store/<digest>`: the version's own files.
    pub version_dir: &'a Path,
    /// `kataConfig.allowedHostPaths`: exact paths, or directories when they end in `/`.
    pub allowed: &'a [PathBuf],
    /// `runtime.fromArtifact`: the programs of [`kataconf::BINARY_KEYS`] may be the version's
    /// own.
    pub binaries_from_version: bool,
}

/// One refused value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: String,
    pub value: String,
    pub rule: String,
}

impl HostPathRule<'_> {
    /// Checks the files (relative to `root`, the staged tree) `kataconf::rewrite_all` returned.
    pub fn check_all(&self, root: &Path, files: &[PathBuf]) -> Result<(), KataConfigError> {
        for rel in files {
            let file = rel.display().to_string();
            let text = fs::read_to_string(root.join(rel)).map_err(|e| KataConfigError::Bad {
                file: file.clone(),
                why: format!("cannot read: {e}"),
            })?;
            self.check(&text)
                .map_err(|why| KataConfigError::Bad {
                    file: file.clone(),
                    why,
                })?
                .map_or(Ok(()), |refusal| {
                    Err(KataConfigError::Refused {
                        file: file.clone(),
                        key: refusal.key,
                        value: refusal.value,
                        rule: refusal.rule,
                    })
                })?;
        }
        Ok(())
    }

    /// The first refused value of one configuration; `Err` when it is not TOML.
    pub fn check(&self, text: &str) -> Result<Option<Refusal>, String> {
        let doc: DocumentMut = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
        // Host paths bind-mounted into the sandbox, which the pod then reads.
        if let Some(mounts) = doc
            .get("runtime")
            .and_then(Item::as_table_like)
            .and_then(|runtime| runtime.get("sandbox_bind_mounts"))
        {
            let key = "[runtime] sandbox_bind_mounts";
            if let Some(refusal) = strings(mounts).find_map(|entry| {
                let path = entry
                    .strip_suffix(":ro")
                    .or_else(|| entry.strip_suffix(":rw"))
                    .unwrap_or(entry);
                self.path(key, path)
            }) {
                return Ok(Some(refusal));
            }
        }
        let Some(hypervisors) = doc.get("hypervisor").and_then(Item::as_table_like) else {
            return Ok(None);
        };
        for (name, section) in hypervisors.iter() {
            let Some(section) = section.as_table_like() else {
                continue;
            };
            for (key, item) in section.iter() {
                let full_key = format!("[hypervisor.{name}] {key}");
                let binary = kataconf::BINARY_KEYS.contains(&key)
                    || kataconf::BINARY_LIST_KEYS.contains(&key);
                let refusal = if binary && !self.binaries_from_version {
                    strings_or_one(item).find_map(|value| self.host_binary(&full_key, value))
                } else if PATH_KEYS.contains(&key) {
                    item.as_str().and_then(|value| self.path(&full_key, value))
                } else if key == "pflashes" {
                    strings(item).find_map(|value| self.path(&full_key, value))
                } else if key == "entropy_source" {
                    item.as_str().and_then(|value| {
                        self.host_place(&full_key, value, &ENTROPY_DEVICES, false)
                    })
                } else if key == "file_mem_backend" {
                    item.as_str().and_then(|value| {
                        self.host_place(&full_key, value, &MEMORY_BACKEND_DIRS, true)
                    })
                } else if key == "vhost_user_store_path" {
                    item.as_str()
                        .and_then(|value| self.host_place(&full_key, value, &SOCKET_DIRS, true))
                } else if key.starts_with("valid_") && key.ends_with("paths") {
                    strings(item).find_map(|value| self.path(&full_key, value))
                } else if key == "enable_annotations" {
                    strings(item).find_map(|value| annotation(&full_key, value))
                } else {
                    None
                };
                if refusal.is_some() {
                    return Ok(refusal);
                }
            }
        }
        Ok(None)
    }

    /// A host place of a known kind (a device, a memory or socket directory): `value` must be
    /// one of `places` (or below one, with `below`), or allowlisted; unset is kata's default.
    fn host_place(&self, key: &str, value: &str, places: &[&str], below: bool) -> Option<Refusal> {
        if value.is_empty() {
            return None;
        }
        let path = Path::new(value);
        let known = path.is_absolute()
            && !path.components().any(|c| c == Component::ParentDir)
            && places
                .iter()
                .any(|place| path == Path::new(place) || (below && path.starts_with(place)));
        if known || self.path(key, value).is_none() {
            return None;
        }
        Some(Refusal {
            key: key.to_owned(),
            value: value.to_owned(),
            rule: format!(
                "must be {}{} (or in kataConfig.allowedHostPaths)",
                if below { "in or below " } else { "" },
                places.join(", ")
            ),
        })
    }

    /// A program the shim runs, without `runtime.fromArtifact`: a host path on the allowlist,
    /// never one of the version's files (a registry's binary would run as root).
    fn host_binary(&self, key: &str, value: &str) -> Option<Refusal> {
        let path = Path::new(value);
        if path.starts_with(self.version_dir) && path != self.version_dir {
            return Some(Refusal {
                key: key.to_owned(),
                value: value.to_owned(),
                rule: "a program of the artifact runs as root only with runtime.fromArtifact in the node config".into(),
            });
        }
        self.path(key, value)
    }

    /// `None` when `value` is unset, inside the version, or allowlisted.
    fn path(&self, key: &str, value: &str) -> Option<Refusal> {
        if value.is_empty() {
            // Kata's "not set": the hypervisor's own default, nothing we hand over.
            return None;
        }
        let refuse = |rule: String| {
            Some(Refusal {
                key: key.to_owned(),
                value: value.to_owned(),
                rule,
            })
        };
        let path = Path::new(value);
        if !path.is_absolute() {
            return refuse("a relative path resolves against the shim's working directory: use an absolute path inside the installed version".into());
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return refuse("`..` may climb out of the installed version".into());
        }
        if path.starts_with(self.version_dir) && path != self.version_dir {
            return None;
        }
        let allowed = self.allowed.iter().any(|entry| {
            let text = entry.as_os_str().to_string_lossy();
            if text.ends_with('/') {
                path.starts_with(entry) && path != entry.as_path()
            } else {
                path == entry.as_path()
            }
        });
        if allowed {
            return None;
        }
        refuse(format!(
            "neither inside the installed version ({}) nor in kataConfig.allowedHostPaths",
            self.version_dir.display()
        ))
    }
}

/// A string value, or the strings of an array value.
fn strings_or_one(item: &Item) -> impl Iterator<Item = &str> {
    item.as_str().into_iter().chain(strings(item))
}

/// The strings of an array value (and nothing for any other value).
fn strings(item: &Item) -> impl Iterator<Item = &str> {
    item.as_array()
        .into_iter()
        .flat_map(|array| array.iter().filter_map(Value::as_str))
}

/// An `enable_annotations` entry, which kata matches (unanchored Go regexp) against the name
/// after `io.katacontainers.config.hypervisor.`. A pod allowed to set a path annotation chooses
/// the binary root runs, whatever the stanza says.
fn annotation(key: &str, entry: &str) -> Option<Refusal> {
    let refuse = |rule: String| {
        Some(Refusal {
            key: key.to_owned(),
            value: entry.to_owned(),
            rule,
        })
    };
    if entry.contains(REGEX_SYNTAX) {
        // Without a regexp engine of Go's dialect we cannot prove such an entry misses every
        // path annotation; plain names are what kata's own configurations use.
        return refuse(
            "enable_annotations entries must be plain annotation names (regular expressions could enable path annotations)".into(),
        );
    }
    if entry.is_empty() {
        return refuse("an empty enable_annotations entry matches every annotation".into());
    }
    PATH_KEYS
        .iter()
        .chain(&MORE_PATH_ANNOTATIONS)
        .find(|name| name.contains(entry))
        .and_then(|name| {
            refuse(format!(
                "enables the path annotation io.katacontainers.config.hypervisor.{name}: pods may not choose host paths"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = "/opt/knm/.store/sha256:ab";

    fn check(text: &str) -> Option<Refusal> {
        check_with(text, false)
    }

    fn check_with(text: &str, binaries_from_version: bool) -> Option<Refusal> {
        let allowed = [
            PathBuf::from("/usr/bin/qemu-system-x86_64"),
            PathBuf::from("/opt/kata/share/kata-containers/"),
        ];
        HostPathRule {
            version_dir: Path::new(VERSION),
            allowed: &allowed,
            binaries_from_version,
        }
        .check(text)
        .expect("valid TOML")
    }

    /// A program of the artifact runs as root only when the node opted in: without
    /// `runtime.fromArtifact` the hypervisor, virtiofsd, jailer and their allowlists must be host
    /// paths; with it they may be the version's.
    #[test]
    fn programs_of_the_version_need_from_artifact() {
        for key in [
            "path",
            "virtio_fs_daemon",
            "jailer_path",
            "ctlpath",
            "valid_hypervisor_paths",
            "valid_virtio_fs_daemon_paths",
        ] {
            let value = format!("{VERSION}/opt/kata/bin/program");
            let text = if key.starts_with("valid_") {
                format!(
                    "[hypervisor.qemu]\n{key} = [\"/usr/bin/qemu-system-x86_64\", \"{value}\"]\n"
                )
            } else {
                format!("[hypervisor.qemu]\n{key} = \"{value}\"\n")
            };
            assert_eq!(
                check(&text),
                Some(Refusal {
                    key: format!("[hypervisor.qemu] {key}"),
                    value: value.clone(),
                    rule: "a program of the artifact runs as root only with runtime.fromArtifact in the node config".into(),
                }),
                "{key}"
            );
            assert_eq!(check_with(&text, true), None, "{key} with fromArtifact");
        }
        // The host's programs stay under the allowlist either way.
        let host = "[hypervisor.qemu]\npath = \"/usr/local/bin/qemu\"\n";
        assert!(check(host).is_some());
        assert!(check_with(host, true).is_some());
        let allowed = "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\n";
        assert_eq!(check(allowed), None);
    }

    #[test]
    fn checks_data_paths_by_their_kind() {
        let ok = format!(
            "[runtime]\nsandbox_bind_mounts = [\"/opt/kata/share/kata-containers/certs:ro\", \"{VERSION}/extra\"]\n\
             [hypervisor.qemu]\nentropy_source = \"/dev/urandom\"\nfile_mem_backend = \"/dev/hugepages/kata\"\n\
             vhost_user_store_path = \"/var/run/kata-containers/vhost-user\"\npflashes = [\"{VERSION}/OVMF_VARS.fd\"]\n"
        );
        assert_eq!(check(&ok), None);
        for (text, key, value, rule) in [
            (
                "[runtime]\nsandbox_bind_mounts = [\"/etc/kubernetes:ro\"]",
                "[runtime] sandbox_bind_mounts",
                "/etc/kubernetes",
                "allowedHostPaths",
            ),
            (
                "[hypervisor.qemu]\nentropy_source = \"/etc/shadow\"",
                "[hypervisor.qemu] entropy_source",
                "/etc/shadow",
                "must be /dev/urandom, /dev/random, /dev/hwrng",
            ),
            (
                "[hypervisor.qemu]\nfile_mem_backend = \"/etc\"",
                "[hypervisor.qemu] file_mem_backend",
                "/etc",
                "must be in or below /dev/shm, /dev/hugepages",
            ),
            (
                "[hypervisor.qemu]\nfile_mem_backend = \"/dev/shm/../../etc\"",
                "[hypervisor.qemu] file_mem_backend",
                "/dev/shm/../../etc",
                "must be in or below",
            ),
            (
                "[hypervisor.qemu]\nvhost_user_store_path = \"/root\"",
                "[hypervisor.qemu] vhost_user_store_path",
                "/root",
                "must be in or below /run, /var/run",
            ),
            (
                "[hypervisor.qemu]\npflashes = [\"/boot/efi/secret.fd\"]",
                "[hypervisor.qemu] pflashes",
                "/boot/efi/secret.fd",
                "allowedHostPaths",
            ),
        ] {
            let refusal = check(text).unwrap_or_else(|| panic!("{text} refused"));
            assert_eq!(refusal.key, key);
            assert_eq!(refusal.value, value);
            assert!(refusal.rule.contains(rule), "{}", refusal.rule);
        }
    }

    #[test]
    fn accepts_version_files_and_allowlisted_host_files() {
        let text = format!(
            "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\n\
             kernel = \"{VERSION}/vmlinux\"\nimage = \"/opt/kata/share/kata-containers/kata.img\"\n\
             initrd = \"\"\nvalid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64\"]\n\
             enable_annotations = [\"enable_iommu\", \"kernel_params\", \"default_memory\"]\n\
             [runtime]\nenable_debug = true\n"
        );
        assert_eq!(check(&text), None);
    }

    #[test]
    fn refuses_paths_outside_naming_key_value_and_rule() {
        for (line, key, value, rule) in [
            (
                "path = \"/bin/sh\"",
                "[hypervisor.qemu] path",
                "/bin/sh",
                "allowedHostPaths",
            ),
            (
                "jailer_path = \"/usr/bin/env\"",
                "[hypervisor.qemu] jailer_path",
                "/usr/bin/env",
                "allowedHostPaths",
            ),
            (
                "virtio_fs_daemon = \"opt/virtiofsd\"",
                "[hypervisor.qemu] virtio_fs_daemon",
                "opt/virtiofsd",
                "relative path",
            ),
            (
                "kernel = \"/opt/knm/.store/sha256:ab/../sha256:cd/vmlinux\"",
                "[hypervisor.qemu] kernel",
                "/opt/knm/.store/sha256:ab/../sha256:cd/vmlinux",
                "`..`",
            ),
            (
                "image = \"/etc/shadow\"",
                "[hypervisor.qemu] image",
                "/etc/shadow",
                "allowedHostPaths",
            ),
            (
                "firmware = \"/opt/kata/share/kata-containers\"",
                "[hypervisor.qemu] firmware",
                "/opt/kata/share/kata-containers",
                "allowedHostPaths",
            ),
            (
                "valid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64\", \"/usr/bin/*\"]",
                "[hypervisor.qemu] valid_hypervisor_paths",
                "/usr/bin/*",
                "allowedHostPaths",
            ),
            (
                "enable_annotations = [\"default_memory\", \"path\"]",
                "[hypervisor.qemu] enable_annotations",
                "path",
                "hypervisor.path",
            ),
            (
                "enable_annotations = [\"virtio_fs\"]",
                "[hypervisor.qemu] enable_annotations",
                "virtio_fs",
                "virtio_fs_daemon",
            ),
            (
                "enable_annotations = [\".*\"]",
                "[hypervisor.qemu] enable_annotations",
                ".*",
                "plain annotation names",
            ),
        ] {
            let refusal = check(&format!("[hypervisor.qemu]\n{line}\n")).expect(line);
            assert_eq!(refusal.key, key, "{line}");
            assert_eq!(refusal.value, value, "{line}");
            assert!(refusal.rule.contains(rule), "{line}: {}", refusal.rule);
        }
    }

    #[test]
    fn reports_the_file_through_check_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("configuration-qemu.toml"),
            "[hypervisor.clh]\npath = \"/bin/sh\"\n",
        )
        .expect("config");
        let error = HostPathRule {
            version_dir: Path::new(VERSION),
            allowed: &[],
            binaries_from_version: false,
        }
        .check_all(dir.path(), &[PathBuf::from("configuration-qemu.toml")])
        .expect_err("refused")
        .to_string();
        assert_eq!(
            error,
            format!(
                "configuration-qemu.toml: [hypervisor.clh] path = \"/bin/sh\": neither inside the installed version ({VERSION}) nor in kataConfig.allowedHostPaths"
            )
        );
    }
}
