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
use super::katakeys::KeyRule;

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

/// Host places kata's own configurations name outside the version (kata 3.x and 4.x templates,
/// `src/runtime/config/configuration-*.toml.in`): each key may hold kata's value, or a path in the
/// version or on `kataConfig.allowedHostPaths`.
const KATA_HOST_PLACES: [(&str, &str); 8] = [
    ("template_path", "/run/vc/vm/template"),
    ("vm_cache_endpoint", "/var/run/kata-containers/cache.sock"),
    ("dan_conf", "/run/kata-containers/dans"),
    ("kubelet_root_dir", "/var/lib/kubelet"),
    (
        "pod_resource_api_sock",
        "/var/lib/kubelet/pod-resources/kubelet.sock",
    ),
    ("remote_hypervisor_socket", "/run/peerpod/hypervisor.sock"),
    // runtime-rs's name for it.
    ("hypervisor_socket", "/run/peerpod/hypervisor.sock"),
    // runtime-rs: where guest swap files are made.
    ("guest_swap_path", "/run/kata-containers/swap"),
];

/// Keys whose values are read in the guest, not on the host (the guest kernel's command line,
/// the guest's hook directory and SELinux label, the guest's kernel modules): the path rule does
/// not apply to them.
const GUEST_KEYS: [&str; 9] = [
    "kernel_params",
    "kernel_verity_params",
    "guest_hook_path",
    "guest_selinux_label",
    "kernel_modules",
    // runtime-rs's `[[runtime.shared_mounts]]`: paths in the pod's containers.
    "src_path",
    "dst_path",
    // base64 (may start with `/`), checked as such by `katakeys`.
    "snp_id_block",
    "snp_id_auth",
];

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
    /// `kataConfig.allowedKeys` and `.allowedArguments` ([`katakeys`]).
    pub allowed_keys: &'a [String],
    pub allowed_arguments: &'a [String],
}

/// One refused value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: String,
    pub value: String,
    pub rule: String,
}

impl HostPathRule<'_> {
    /// Checks the files (relative to `root`, the staged tree) `kataconf::rewrite_all` returned,
    /// and every file of a `config.d` directory beside one of them: kata merges each file there
    /// (whatever its name) into the configuration it reads.
    pub fn check_all(&self, root: &Path, files: &[PathBuf]) -> Result<(), KataConfigError> {
        let mut all: Vec<PathBuf> = files.to_vec();
        let dirs: std::collections::BTreeSet<PathBuf> = files
            .iter()
            .map(|rel| rel.parent().unwrap_or(Path::new("")).join("config.d"))
            .collect();
        for dir in dirs {
            let Ok(entries) = fs::read_dir(root.join(&dir)) else {
                continue;
            };
            let mut drop_ins: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
                .map(|e| dir.join(e.file_name()))
                .collect();
            drop_ins.sort();
            all.extend(drop_ins);
        }
        for rel in &all {
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
    ///
    /// Two layers: the rule, on every string anywhere in the file whatever its key (an absolute
    /// path, or one inside a `key=/path` argument or a list, must be in the version or on the
    /// allowlist; a URL is refused: kata would send data there), and the known keys' own checks
    /// on top. Kata matches key names without regard to case, so they are compared lower-cased.
    pub fn check(&self, text: &str) -> Result<Option<Refusal>, String> {
        let doc: DocumentMut = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
        let keys = KeyRule {
            allowed_keys: self.allowed_keys,
            allowed_arguments: self.allowed_arguments,
        };
        if let Some(refusal) = keys.check(&doc) {
            return Ok(Some(Refusal {
                key: refusal.key,
                value: refusal.value,
                rule: refusal.rule,
            }));
        }
        if let Some(refusal) = self.every_value(doc.as_item(), "") {
            return Ok(Some(refusal));
        }
        // Host paths bind-mounted into the sandbox, which the pod then reads.
        if let Some(mounts) = table_named(&doc, "runtime").and_then(|runtime| {
            runtime
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("sandbox_bind_mounts"))
                .map(|(_, item)| item)
        }) {
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
        let Some(hypervisors) = table_named(&doc, "hypervisor") else {
            return Ok(None);
        };
        for (name, section) in hypervisors.iter() {
            let Some(section) = section.as_table_like() else {
                continue;
            };
            for (key, item) in section.iter() {
                let full_key = format!("[hypervisor.{name}] {key}");
                let key = key.to_ascii_lowercase();
                let key = key.as_str();
                let binary = kataconf::BINARY_KEYS.contains(&key)
                    || kataconf::BINARY_LIST_KEYS.contains(&key);
                let refusal = if binary && !self.binaries_from_version {
                    strings_or_one(item).find_map(|value| self.host_binary(&full_key, value))
                } else if PATH_KEYS.contains(&key) {
                    item.as_str().and_then(|value| self.path(&full_key, value))
                } else if key == "pflashes" {
                    strings(item).find_map(|value| self.path(&full_key, value))
                } else if matches!(
                    key,
                    "entropy_source"
                        | "file_mem_backend"
                        | "vhost_user_store_path"
                        | "valid_vhost_user_store_paths"
                ) {
                    // Held to their kind of host place by the rule over every value
                    // (`one_string`), in any table.
                    None
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

    /// The rule on every string of `item` (a table, array, inline table or value) at `at`.
    fn every_value(&self, item: &Item, at: &str) -> Option<Refusal> {
        let key_of = |at: &str, key: &str| {
            if at.is_empty() {
                key.to_owned()
            } else {
                format!("{at}.{key}")
            }
        };
        match item {
            Item::Table(table) => table
                .iter()
                .find_map(|(key, item)| self.every_value(item, &key_of(at, key))),
            Item::ArrayOfTables(tables) => tables.iter().find_map(|table| {
                table
                    .iter()
                    .find_map(|(key, item)| self.every_value(item, &key_of(at, key)))
            }),
            Item::Value(value) => self.every_string(value, at),
            Item::None => None,
        }
    }

    fn every_string(&self, value: &Value, at: &str) -> Option<Refusal> {
        let leaf = at.rsplit('.').next().unwrap_or(at).to_ascii_lowercase();
        if GUEST_KEYS.contains(&leaf.as_str()) {
            return None;
        }
        match value {
            Value::String(text) => self.one_string(&leaf, at, text.value()),
            Value::Array(array) => array.iter().find_map(|v| self.every_string(v, at)),
            Value::InlineTable(table) => table.iter().find_map(|(key, v)| {
                let at = if at.is_empty() {
                    key.to_owned()
                } else {
                    format!("{at}.{key}")
                };
                self.every_string(v, &at)
            }),
            _ => None,
        }
    }

    fn one_string(&self, leaf: &str, at: &str, text: &str) -> Option<Refusal> {
        let key = display_key(at);
        match leaf {
            "entropy_source" | "valid_entropy_sources" => {
                return self.host_place(&key, text, &ENTROPY_DEVICES, false);
            }
            "file_mem_backend" | "valid_file_mem_backends" => {
                return self.host_place(&key, text, &MEMORY_BACKEND_DIRS, true);
            }
            "vhost_user_store_path" | "valid_vhost_user_store_paths" => {
                return self.host_place(&key, text, &SOCKET_DIRS, true);
            }
            // Regular expressions over annotation names: their own rule, below.
            "enable_annotations" => return None,
            _ => {}
        }
        if text.contains("://") {
            return Some(Refusal {
                key,
                value: text.to_owned(),
                rule: "a network endpoint: kata would send data there".into(),
            });
        }
        if KATA_HOST_PLACES
            .iter()
            .any(|(key, place)| *key == leaf && *place == text)
        {
            return None;
        }
        absolute_paths(text).find_map(|path| self.path(&key, path))
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

/// The top-level table `name`, spelled in any case (kata's TOML decoder matches names so).
fn table_named<'d>(doc: &'d DocumentMut, name: &str) -> Option<&'d dyn toml_edit::TableLike> {
    doc.iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, item)| item.as_table_like())
}

/// Every absolute path in `text`: the text itself, or a word of it (`key=/path`, `a,/path`,
/// `a:/path`, `/path:ro`), without a bind mount's `:ro`/`:rw`. A version's own paths contain a
/// colon (`sha256:…`), so a word is split at a colon only where a path follows it.
fn absolute_paths(text: &str) -> impl Iterator<Item = &str> {
    text.split([' ', '\t', '\n', '=', ',', ';'])
        .flat_map(|word| {
            let after_colons = word.match_indices(":/").map(move |(at, _)| &word[at + 1..]);
            std::iter::once(word).chain(after_colons)
        })
        .filter(|word| word.starts_with('/'))
        .map(|path| {
            path.strip_suffix(":ro")
                .or_else(|| path.strip_suffix(":rw"))
                .unwrap_or(path)
        })
}

/// `hypervisor.qemu.path` as the refusals name keys: `[hypervisor.qemu] path`.
fn display_key(at: &str) -> String {
    match at.rsplit_once('.') {
        Some((table, key)) => format!("[{table}] {key}"),
        None => at.to_owned(),
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
            allowed_keys: &[],
            allowed_arguments: &[],
        }
        .check(text)
        .expect("valid TOML")
    }

    /// Every value naming a host place in kata's own x86_64 configurations (kata 4.1's
    /// `configuration-*.toml.in`, Go runtime and runtime-rs, generated for the `/opt/kata` and
    /// `/usr` prefixes) passes the
    /// rule with the default `kataConfig.allowedHostPaths`: an artifact carrying kata's own
    /// configuration installs unchanged.
    #[test]
    fn kata_s_own_configurations_pass_with_the_default_allowlist() {
        let allowed: Vec<PathBuf> = crate::config::DEFAULT_ALLOWED_HOST_PATHS
            .iter()
            .map(PathBuf::from)
            .collect();
        let rule = HostPathRule {
            version_dir: Path::new(VERSION),
            allowed: &allowed,
            binaries_from_version: false,
            allowed_keys: &[],
            allowed_arguments: &[],
        };
        let refused: Vec<String> = KATA_DEFAULTS
            .iter()
            .filter_map(|(table, line)| {
                let text = format!("[{table}]\n{line}\n");
                rule.check(&text)
                    .expect("TOML")
                    .map(|r| format!("{table}: {line}: {}", r.rule))
            })
            .collect();
        assert!(refused.is_empty(), "{refused:#?}");
    }

    const KATA_DEFAULTS: &[(&str, &str)] = &[
        (
            "hypervisor.clh",
            "path = \"/opt/kata/bin/cloud-hypervisor\"",
        ),
        (
            "hypervisor.clh",
            "kernel = \"/usr/share/cloud-hypervisor/vmlinux.bin\"",
        ),
        (
            "hypervisor.clh",
            "image = \"/opt/kata/share/kata-containers/kata-containers-mariner.img\"",
        ),
        (
            "hypervisor.clh",
            "valid_hypervisor_paths = [\"/opt/kata/bin/cloud-hypervisor\"]",
        ),
        (
            "hypervisor.clh",
            "virtio_fs_daemon = \"/opt/kata/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.clh",
            "valid_virtio_fs_daemon_paths = [\"/opt/kata/libexec/virtiofsd\"]",
        ),
        ("runtime", "dan_conf = \"/run/kata-containers/dans\""),
        ("runtime", "kubelet_root_dir = \"/var/lib/kubelet\""),
        (
            "hypervisor.clh",
            "kernel = \"/opt/kata/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.clh",
            "image = \"/opt/kata/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.firecracker",
            "path = \"/opt/kata/bin/firecracker\"",
        ),
        (
            "hypervisor.firecracker",
            "kernel = \"/opt/kata/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.firecracker",
            "image = \"/opt/kata/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.firecracker",
            "valid_hypervisor_paths = [\"/opt/kata/bin/firecracker\"]",
        ),
        (
            "hypervisor.firecracker",
            "jailer_path = \"/opt/kata/bin/jailer\"",
        ),
        (
            "hypervisor.firecracker",
            "valid_jailer_paths = [\"/opt/kata/bin/jailer\"]",
        ),
        (
            "hypervisor.firecracker",
            "entropy_source = \"/dev/urandom\"",
        ),
        (
            "hypervisor.firecracker",
            "valid_entropy_sources = [\"/dev/urandom\"]",
        ),
        (
            "hypervisor.firecracker",
            "valid_entropy_sources = [\"/dev/random\"]",
        ),
        (
            "hypervisor.qemu",
            "path = \"/opt/kata/bin/qemu-system-x86_64\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/opt/kata/share/kata-containers/vmlinuz.container\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/opt/kata/share/kata-containers/kata-containers-confidential.img\"",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/opt/kata/bin/qemu-system-x86_64\"]",
        ),
        (
            "hypervisor.qemu",
            "virtio_fs_daemon = \"/opt/kata/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.qemu",
            "valid_virtio_fs_daemon_paths = [\"/opt/kata/libexec/virtiofsd\"]",
        ),
        (
            "hypervisor.qemu",
            "vhost_user_store_path = \"/var/run/kata-containers/vhost-user\"",
        ),
        (
            "hypervisor.qemu",
            "valid_vhost_user_store_paths = [\"/var/run/kata-containers/vhost-user\"]",
        ),
        ("hypervisor.qemu", "entropy_source = \"/dev/urandom\""),
        (
            "hypervisor.qemu",
            "valid_entropy_sources = [\"/dev/urandom\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_entropy_sources = [\"/dev/random\"]",
        ),
        ("factory", "template_path = \"/run/vc/vm/template\""),
        (
            "factory",
            "vm_cache_endpoint = \"/var/run/kata-containers/cache.sock\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/opt/kata/share/kata-containers/vmlinuz-nvidia-gpu.container\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/opt/kata/share/kata-containers/kata-containers-nvidia.img\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/opt/kata/bin/qemu-system-x86_64-snp-experimental\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/opt/kata/share/kata-containers/kata-containers-nvidia-gpu-confidential.img\"",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/opt/kata/bin/qemu-system-x86_64-snp-experimental\"]",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/opt/kata/share/ovmf/AMDSEV.fd\"",
        ),
        (
            "runtime",
            "pod_resource_api_sock = \"/var/lib/kubelet/pod-resources/kubelet.sock\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/opt/kata/bin/qemu-system-x86_64-tdx-experimental\"",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/opt/kata/bin/qemu-system-x86_64-tdx-experimental\"]",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/opt/kata/share/ovmf/OVMF.inteltdx.fd\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/opt/kata/share/kata-containers/kata-containers-nvidia-gpu.img\"",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/opt/kata/share/ovmf/OVMF.fd\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/opt/kata/share/kata-containers/kata-containers-se.img\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/opt/kata/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/opt/kata/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.remote",
            "remote_hypervisor_socket = \"/run/peerpod/hypervisor.sock\"",
        ),
        (
            "hypervisor.stratovirt",
            "path = \"/opt/kata/bin/stratovirt\"",
        ),
        (
            "hypervisor.stratovirt",
            "kernel = \"/opt/kata/share/kata-containers/vmlinuz.container\"",
        ),
        (
            "hypervisor.stratovirt",
            "image = \"/opt/kata/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.stratovirt",
            "valid_hypervisor_paths = [\"/opt/kata/bin/stratovirt\"]",
        ),
        (
            "hypervisor.stratovirt",
            "virtio_fs_daemon = \"/opt/kata/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.stratovirt",
            "valid_virtio_fs_daemon_paths = [\"/opt/kata/libexec/virtiofsd\"]",
        ),
        ("hypervisor.stratovirt", "entropy_source = \"/dev/urandom\""),
        ("hypervisor.clh", "path = \"/usr/bin/cloud-hypervisor\""),
        (
            "hypervisor.clh",
            "image = \"/usr/share/kata-containers/kata-containers-mariner.img\"",
        ),
        (
            "hypervisor.clh",
            "valid_hypervisor_paths = [\"/usr/bin/cloud-hypervisor\"]",
        ),
        (
            "hypervisor.clh",
            "virtio_fs_daemon = \"/usr/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.clh",
            "valid_virtio_fs_daemon_paths = [\"/usr/libexec/virtiofsd\"]",
        ),
        (
            "hypervisor.clh",
            "kernel = \"/usr/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.clh",
            "image = \"/usr/share/kata-containers/kata-containers.img\"",
        ),
        ("hypervisor.firecracker", "path = \"/usr/bin/firecracker\""),
        (
            "hypervisor.firecracker",
            "kernel = \"/usr/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.firecracker",
            "image = \"/usr/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.firecracker",
            "valid_hypervisor_paths = [\"/usr/bin/firecracker\"]",
        ),
        (
            "hypervisor.firecracker",
            "jailer_path = \"/usr/bin/jailer\"",
        ),
        (
            "hypervisor.firecracker",
            "valid_jailer_paths = [\"/usr/bin/jailer\"]",
        ),
        ("hypervisor.qemu", "path = \"/usr/bin/qemu-system-x86_64\""),
        (
            "hypervisor.qemu",
            "kernel = \"/usr/share/kata-containers/vmlinuz.container\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/usr/share/kata-containers/kata-containers-confidential.img\"",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64\"]",
        ),
        (
            "hypervisor.qemu",
            "virtio_fs_daemon = \"/usr/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.qemu",
            "valid_virtio_fs_daemon_paths = [\"/usr/libexec/virtiofsd\"]",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/usr/share/kata-containers/vmlinuz-nvidia-gpu.container\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/usr/share/kata-containers/kata-containers-nvidia.img\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/usr/bin/qemu-system-x86_64-snp-experimental\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/usr/share/kata-containers/kata-containers-nvidia-gpu-confidential.img\"",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64-snp-experimental\"]",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/usr/share/ovmf/AMDSEV.fd\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/usr/bin/qemu-system-x86_64-tdx-experimental\"",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64-tdx-experimental\"]",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/usr/share/ovmf/OVMF.inteltdx.fd\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/usr/share/kata-containers/kata-containers-nvidia-gpu.img\"",
        ),
        ("hypervisor.qemu", "firmware = \"/usr/share/ovmf/OVMF.fd\""),
        (
            "hypervisor.qemu",
            "kernel = \"/usr/share/kata-containers/kata-containers-se.img\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/usr/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/usr/share/kata-containers/kata-containers.img\"",
        ),
        ("hypervisor.stratovirt", "path = \"/usr/bin/stratovirt\""),
        (
            "hypervisor.stratovirt",
            "kernel = \"/usr/share/kata-containers/vmlinuz.container\"",
        ),
        (
            "hypervisor.stratovirt",
            "image = \"/usr/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.stratovirt",
            "valid_hypervisor_paths = [\"/usr/bin/stratovirt\"]",
        ),
        (
            "hypervisor.stratovirt",
            "virtio_fs_daemon = \"/usr/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.stratovirt",
            "valid_virtio_fs_daemon_paths = [\"/usr/libexec/virtiofsd\"]",
        ),
        // runtime-rs (kata-static ships its configurations beside the Go ones).
        (
            "hypervisor.clh",
            "guest_swap_path = \"/run/kata-containers/swap\"",
        ),
        (
            "hypervisor.clh",
            "image = \"/opt/kata/share/kata-containers/kata-containers-mariner.img\"",
        ),
        (
            "hypervisor.clh",
            "image = \"/opt/kata/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.clh",
            "image = \"/usr/share/kata-containers/kata-containers-mariner.img\"",
        ),
        (
            "hypervisor.clh",
            "image = \"/usr/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.clh",
            "kernel = \"/opt/kata/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.clh",
            "kernel = \"/usr/share/cloud-hypervisor/vmlinux.bin\"",
        ),
        (
            "hypervisor.clh",
            "kernel = \"/usr/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.clh",
            "path = \"/opt/kata/bin/cloud-hypervisor\"",
        ),
        (
            "hypervisor.clh",
            "valid_hypervisor_paths = [\"/opt/kata/bin/cloud-hypervisor\"]",
        ),
        (
            "hypervisor.clh",
            "valid_hypervisor_paths = [\"/usr/bin/cloud-hypervisor\"]",
        ),
        (
            "hypervisor.clh",
            "virtio_fs_daemon = \"/opt/kata/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.clh",
            "virtio_fs_daemon = \"/usr/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.clh.factory",
            "template_path = \"/run/vc/vm/template\"",
        ),
        (
            "hypervisor.dragonball",
            "guest_swap_path = \"/run/kata-containers/swap\"",
        ),
        (
            "hypervisor.dragonball",
            "image = \"/opt/kata/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.dragonball",
            "image = \"/usr/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.dragonball",
            "kernel = \"/opt/kata/share/kata-containers/vmlinux-dragonball-experimental.container\"",
        ),
        (
            "hypervisor.dragonball",
            "kernel = \"/usr/share/kata-containers/vmlinux-dragonball-experimental.container\"",
        ),
        (
            "hypervisor.dragonball.factory",
            "template_path = \"/run/vc/vm/template\"",
        ),
        (
            "hypervisor.firecracker",
            "entropy_source = \"/dev/urandom\"",
        ),
        (
            "hypervisor.firecracker",
            "image = \"/opt/kata/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.firecracker",
            "image = \"/usr/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.firecracker",
            "jailer_path = \"/opt/kata/bin/jailer\"",
        ),
        (
            "hypervisor.firecracker",
            "jailer_path = \"/usr/bin/jailer\"",
        ),
        (
            "hypervisor.firecracker",
            "kernel = \"/opt/kata/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.firecracker",
            "kernel = \"/usr/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.firecracker",
            "path = \"/opt/kata/bin/firecracker\"",
        ),
        (
            "hypervisor.firecracker",
            "valid_entropy_sources = [\"/dev/random\"]",
        ),
        (
            "hypervisor.firecracker",
            "valid_entropy_sources = [\"/dev/urandom\"]",
        ),
        (
            "hypervisor.firecracker",
            "valid_hypervisor_paths = [\"/opt/kata/bin/firecracker\"]",
        ),
        (
            "hypervisor.firecracker",
            "valid_hypervisor_paths = [\"/usr/bin/firecracker\"]",
        ),
        (
            "hypervisor.firecracker",
            "valid_jailer_paths = [\"/opt/kata/bin/jailer\"]",
        ),
        (
            "hypervisor.firecracker",
            "valid_jailer_paths = [\"/usr/bin/jailer\"]",
        ),
        (
            "hypervisor.openvmm",
            "guest_swap_path = \"/run/kata-containers/swap\"",
        ),
        (
            "hypervisor.openvmm",
            "image = \"/opt/kata/share/kata-containers/kata-containers-mariner.img\"",
        ),
        (
            "hypervisor.openvmm",
            "image = \"/usr/share/kata-containers/kata-containers-mariner.img\"",
        ),
        (
            "hypervisor.openvmm",
            "kernel = \"/opt/kata/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.openvmm",
            "kernel = \"/usr/share/kata-containers/vmlinux.container\"",
        ),
        ("hypervisor.openvmm", "path = \"/opt/kata/bin/openvmm\""),
        ("hypervisor.openvmm", "path = \"/usr/bin/openvmm\""),
        (
            "hypervisor.openvmm",
            "valid_hypervisor_paths = [\"/opt/kata/bin/openvmm\"]",
        ),
        (
            "hypervisor.openvmm",
            "valid_hypervisor_paths = [\"/usr/bin/openvmm\"]",
        ),
        (
            "hypervisor.openvmm",
            "virtio_fs_daemon = \"/opt/kata/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.openvmm",
            "virtio_fs_daemon = \"/usr/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/opt/kata/share/ovmf/AMDSEV.fd\"",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/opt/kata/share/ovmf/OVMF.fd\"",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/opt/kata/share/ovmf/OVMF.inteltdx.fd\"",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/usr/share/ovmf/AMDSEV.fd\"",
        ),
        (
            "hypervisor.qemu",
            "firmware = \"/usr/share/ovmf/OVMF.inteltdx.fd\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/opt/kata/share/kata-containers/kata-containers-nvidia.img\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/opt/kata/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/usr/share/kata-containers/kata-containers-nvidia.img\"",
        ),
        (
            "hypervisor.qemu",
            "image = \"/usr/share/kata-containers/kata-containers.img\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/opt/kata/share/kata-containers/kata-containers-se-runtime-rs.img\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/opt/kata/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/opt/kata/share/kata-containers/vmlinuz-nvidia-gpu.container\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/opt/kata/share/kata-containers/vmlinuz.container\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/usr/share/kata-containers/kata-containers-se-runtime-rs.img\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/usr/share/kata-containers/vmlinux.container\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/usr/share/kata-containers/vmlinuz-nvidia-gpu.container\"",
        ),
        (
            "hypervisor.qemu",
            "kernel = \"/usr/share/kata-containers/vmlinuz.container\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/opt/kata/bin/qemu-system-x86_64\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/opt/kata/bin/qemu-system-x86_64-no-shared-fs\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/opt/kata/bin/qemu-system-x86_64-snp-experimental\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/opt/kata/bin/qemu-system-x86_64-tdx-experimental\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/usr/bin/qemu-system-x86_64-no-shared-fs\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/usr/bin/qemu-system-x86_64-snp-experimental\"",
        ),
        (
            "hypervisor.qemu",
            "path = \"/usr/bin/qemu-system-x86_64-tdx-experimental\"",
        ),
        (
            "hypervisor.qemu",
            "valid_entropy_sources = [\"/dev/random\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_entropy_sources = [\"/dev/urandom\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/opt/kata/bin/qemu-system-x86_64\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/opt/kata/bin/qemu-system-x86_64-no-shared-fs\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/opt/kata/bin/qemu-system-x86_64-snp-experimental\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/opt/kata/bin/qemu-system-x86_64-tdx-experimental\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64-no-shared-fs\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64-snp-experimental\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64-tdx-experimental\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_vhost_user_store_paths = [\"/var/run/kata-containers/vhost-user\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_virtio_fs_daemon_paths = [\"/opt/kata/libexec/virtiofsd\"]",
        ),
        (
            "hypervisor.qemu",
            "valid_virtio_fs_daemon_paths = [\"/usr/libexec/virtiofsd\"]",
        ),
        (
            "hypervisor.qemu",
            "vhost_user_store_path = \"/var/run/kata-containers/vhost-user\"",
        ),
        (
            "hypervisor.qemu",
            "virtio_fs_daemon = \"/opt/kata/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.qemu",
            "virtio_fs_daemon = \"/usr/libexec/virtiofsd\"",
        ),
        (
            "hypervisor.qemu.factory",
            "template_path = \"/run/vc/vm/template\"",
        ),
        (
            "hypervisor.qemu.guest_extension_images",
            "path = \"/opt/kata/share/kata-containers/kata-containers-coco-extension.img\"",
        ),
        (
            "hypervisor.qemu.guest_extension_images",
            "path = \"/opt/kata/share/kata-containers/kata-containers-nvidia-gpu-extension.img\"",
        ),
        (
            "hypervisor.qemu.guest_extension_images",
            "path = \"/usr/share/kata-containers/kata-containers-coco-extension.img\"",
        ),
        (
            "hypervisor.qemu.guest_extension_images",
            "path = \"/usr/share/kata-containers/kata-containers-nvidia-gpu-extension.img\"",
        ),
        (
            "hypervisor.remote",
            "remote_hypervisor_socket = \"/run/peerpod/hypervisor.sock\"",
        ),
        (
            "runtime",
            "pod_resource_api_sock = \"/var/lib/kubelet/pod-resources/kubelet.sock\"",
        ),
    ];

    #[test]
    fn the_rule_reads_every_spelling_and_spares_guest_values_and_kata_s_places() {
        for (text, key, value) in [
            (
                "[hypervisor.qemu]\nguest_memory_dump_path = \"/etc/cron.d\"",
                "[hypervisor.qemu] guest_memory_dump_path",
                "/etc/cron.d",
            ),
            (
                "hypervisor.qemu.guest_memory_dump_path = \"/etc/cron.d\"",
                "[hypervisor.qemu] guest_memory_dump_path",
                "/etc/cron.d",
            ),
            (
                "hypervisor = { qemu = { pflashes = [\"a\", \"--log=/var/log/x\"] } }",
                "[hypervisor.qemu] pflashes",
                "/var/log/x",
            ),
            (
                "[[hypervisor.qemu.guest_extension_images]]\npath = \"/etc/shadow\"",
                "[hypervisor.qemu.guest_extension_images] path",
                "/etc/shadow",
            ),
            (
                "[Hypervisor.Qemu]\nEntropy_Source = \"/etc/shadow\"",
                "[Hypervisor.Qemu] Entropy_Source",
                "/etc/shadow",
            ),
            (
                "[runtime]\nsandbox_bind_mounts = [\"/etc/kubernetes:ro\"]",
                "[runtime] sandbox_bind_mounts",
                "/etc/kubernetes",
            ),
            (
                "[factory]\ntemplate_path = \"/etc\"",
                "[factory] template_path",
                "/etc",
            ),
            (
                "[runtime]\ndan_conf = \"a:/root/.ssh\"",
                "[runtime] dan_conf",
                "/root/.ssh",
            ),
        ] {
            let refusal = check(text).unwrap_or_else(|| panic!("{text} accepted"));
            assert_eq!(
                (refusal.key.as_str(), refusal.value.as_str()),
                (key, value),
                "{text}"
            );
        }
        let endpoint = check("[runtime]\njaeger_endpoint = \"http://collector:14268/api/traces\"")
            .expect("refused");
        assert!(endpoint.rule.contains("network endpoint"), "{endpoint:?}");
        for fine in [
            "[hypervisor.qemu]\nkernel_params = \"init=/sbin/init root=/dev/vda1\"\nguest_hook_path = \"/usr/share/oci/hooks\"",
            "[agent.kata]\nkernel_modules = [\"i915 enable_guc=/x\"]",
            "[factory]\ntemplate_path = \"/run/vc/vm/template\"",
            "[runtime]\nsandbox_bind_mounts = [\"/opt/kata/share/kata-containers/x:ro\"]",
        ] {
            assert_eq!(check(fine), None, "{fine}");
        }
        assert_eq!(
            absolute_paths("--a=/x,/y b:/z /opt/knm/.store/sha256:ab/k /m:ro").collect::<Vec<_>>(),
            ["/x", "/y", "/z", "/opt/knm/.store/sha256:ab/k", "/m"]
        );
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
            allowed_keys: &[],
            allowed_arguments: &[],
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
