//! What an installed kata configuration may say besides paths: only keys kata reads (a key it
//! does not know today may be one a later kata reads, silently widening what an artifact
//! decides), only arguments to host programs the node allows, and no setting that weakens the
//! sandbox of the host processes kata starts unless the node allows that key. The node extends
//! each list in its own config (`kataConfig.allowedKeys`, `kataConfig.allowedArguments`).
//!
//! The keys are those of kata's Go runtime parser (`src/runtime/pkg/katautils/config.go`, the
//! `toml` tags of its `hypervisor`, `agent`, `runtime` and `factory` structs) in kata 4.1, with
//! the keys earlier releases (2.0 on) read and later ones dropped, and those of kata's Rust
//! runtime (runtime-rs: the serde structs of `src/libs/kata-types/src/config/`, 3.0 to 4.1, whose
//! configurations kata-static ships beside the Go ones), so artifacts made for any of them
//! install. Names are compared lower-cased: kata's Go TOML decoder matches them without regard to
//! case.

use toml_edit::{DocumentMut, Item, Value};

/// The hypervisor tables kata accepts (`[hypervisor.<name>]`; any other name is an error there):
/// the Go runtime's, and runtime-rs's (`openvmm`, and `cloud-hypervisor` from 3.2 to 3.29).
const HYPERVISOR_NAMES: &[&str] = &[
    "clh",
    "cloud-hypervisor",
    "dragonball",
    "firecracker",
    "openvmm",
    "qemu",
    "remote",
    "stratovirt",
];

/// `[hypervisor.<name>]`.
const HYPERVISOR_KEYS: &[&str] = &[
    "block_device_aio",
    "block_device_cache_direct",
    "block_device_cache_noflush",
    "block_device_cache_set",
    "block_device_driver",
    "block_device_logical_sector_size",
    "block_device_physical_sector_size",
    "cold_plug_vfio",
    "confidential_guest",
    "cpu_features",
    "default_bridges",
    "default_maxmemory",
    "default_maxvcpus",
    "default_memory",
    "default_vcpus",
    "disable_block_device_use",
    "disable_guest_selinux",
    "disable_image_nvdimm",
    "disable_nesting_checks",
    "disable_seccomp",
    "disable_selinux",
    "disable_vhost_net",
    "disk_rate_limiter_bw_max_rate",
    "disk_rate_limiter_bw_one_time_burst",
    "disk_rate_limiter_ops_max_rate",
    "disk_rate_limiter_ops_one_time_burst",
    "enable_annotations",
    "enable_debug",
    "enable_guest_swap",
    "enable_hugepages",
    "enable_iommu",
    "enable_iommu_platform",
    "enable_iothreads",
    "enable_mem_prealloc",
    "enable_numa",
    "enable_vhost_user_store",
    "enable_virtio_mem",
    "entropy_source",
    "extra_monitor_socket",
    "firmware",
    "firmware_volume",
    "guest_extension_images",
    "guest_hook_path",
    "guest_memory_dump_paging",
    "guest_memory_dump_path",
    "hot_plug_vfio",
    "hypervisor_loglevel",
    "image",
    "indep_iothreads",
    "initrd",
    "jailer_path",
    "kernel",
    "kernel_params",
    "kernel_verity_params",
    "machine_accelerators",
    "machine_type",
    "measurement_algo",
    "memory_offset",
    "memory_slots",
    "msize_9p",
    "net_rate_limiter_bw_max_rate",
    "net_rate_limiter_bw_one_time_burst",
    "net_rate_limiter_ops_max_rate",
    "net_rate_limiter_ops_one_time_burst",
    "numa_mapping",
    "path",
    "pcie_root_port",
    "pcie_switch_port",
    "pflashes",
    "reclaim_guest_freed_memory",
    "remote_hypervisor_socket",
    "remote_hypervisor_timeout",
    "rootfs_type",
    "rootless",
    "rx_rate_limiter_max_rate",
    "seccompsandbox",
    "sev_snp_guest",
    "shared_fs",
    "snp_guest_policy",
    "snp_id_auth",
    "snp_id_block",
    "tdx_quote_generation_service_socket_port",
    "tx_rate_limiter_max_rate",
    "use_legacy_serial",
    "valid_entropy_sources",
    "valid_hypervisor_paths",
    "valid_jailer_paths",
    "valid_vhost_user_store_paths",
    "valid_virtio_fs_daemon_paths",
    "vhost_user_reconnect_timeout_sec",
    "vhost_user_store_path",
    "virtio_fs_cache",
    "virtio_fs_cache_size",
    "virtio_fs_daemon",
    "virtio_fs_extra_args",
    "virtio_fs_queue_size",
];

/// `[[hypervisor.<name>.guest_extension_images]]`.
const GUEST_EXTENSION_IMAGE_KEYS: &[&str] = &["name", "path", "verity_params"];

/// `[agent.<name>]` (kata does not check the name).
const AGENT_KEYS: &[&str] = &[
    "cdh_api_timeout",
    "debug_console_enabled",
    "dial_timeout",
    "enable_debug",
    "enable_tracing",
    "kernel_modules",
    "launch_process_timeout",
    "visible_cdi_devices",
];

/// `[runtime]`.
const RUNTIME_KEYS: &[&str] = &[
    "create_container_timeout",
    "dan_conf",
    "disable_guest_empty_dir",
    "disable_guest_seccomp",
    "disable_new_netns",
    "emptydir_mode",
    "enable_debug",
    "enable_pprof",
    "enable_tracing",
    "enable_vcpus_pinning",
    "experimental",
    "experimental_force_guest_pull",
    "guest_selinux_label",
    "internetworking_model",
    "jaeger_endpoint",
    "jaeger_password",
    "jaeger_user",
    "kubelet_root_dir",
    "pod_resource_api_sock",
    "sandbox_bind_mounts",
    "sandbox_cgroup_only",
    "static_sandbox_resource_mgmt",
    "vfio_mode",
];

/// `[factory]`.
const FACTORY_KEYS: &[&str] = &[
    "enable_template",
    "template_path",
    "vm_cache_endpoint",
    "vm_cache_number",
];

/// Keys releases from 2.0 on read that 4.1 does not, per table (the last release that read
/// each in the comment): still accepted (kata ignores what it no longer reads), so artifacts
/// made for those releases install. Their values meet the same rules as any other.
const EARLIER_KEYS: &[(&str, &str)] = &[
    ("hypervisor", "enable_swap"),              // 2.3
    ("hypervisor", "hotplug_vfio_on_root_bus"), // 3.1
    ("hypervisor", "ctlpath"),                  // 3.9 (ACRN)
    ("hypervisor", "valid_ctlpaths"),           // 3.9
    ("hypervisor", "snp_certs_path"),           // 3.13
    ("hypervisor", "file_mem_backend"),         // 3.31
    ("hypervisor", "valid_file_mem_backends"),  // 3.31
    ("agent", "trace_mode"),                    // 2.2
    ("agent", "trace_type"),                    // 2.2
    ("image", "provision"),                     // 3.3
    ("image", "service_offload"),               // 3.3
];

/// Keys only runtime-rs reads, per table (3.0 to 4.1).
const RUNTIME_RS_KEYS: &[(&str, &str)] = &[
    ("hypervisor", "boot_from_template"),
    ("hypervisor", "boot_to_be_template"),
    ("hypervisor", "dbg_monitor_socket"),
    ("hypervisor", "default_gpu_model"),
    ("hypervisor", "default_gpus"),
    ("hypervisor", "device_state_path"),
    ("hypervisor", "disable_nested_virtualization"),
    ("hypervisor", "enable_balloon_f_reporting"),
    ("hypervisor", "guest_swap_create_threshold_secs"),
    ("hypervisor", "guest_swap_path"),
    ("hypervisor", "guest_swap_size_percent"),
    ("hypervisor", "hugepage_type"),
    ("hypervisor", "hypervisor_socket"),
    ("hypervisor", "hypervisor_timeout"),
    ("hypervisor", "initdata"),
    ("hypervisor", "log_level"),
    ("hypervisor", "memory_path"),
    ("hypervisor", "network_queues"),
    ("hypervisor", "num_queues"),
    ("hypervisor", "overhead_memory"),
    ("hypervisor", "overhead_vcpus"),
    ("hypervisor", "prefetch_list_path"),
    ("hypervisor", "queue_size"),
    ("hypervisor", "seccomp_sandbox"),
    ("hypervisor", "selinux_label"),
    ("hypervisor", "virtio_fs_is_dax"),
    ("hypervisor", "vm_rootfs_driver"),
    ("agent", "cdh_api_timeout_ms"),
    ("agent", "container_pipe_size"),
    ("agent", "create_container_timeout"),
    ("agent", "dial_timeout_ms"),
    ("agent", "health_check_request_timeout_ms"),
    ("agent", "log_level"),
    ("agent", "log_port"),
    ("agent", "passfd_listener_port"),
    ("agent", "policy"),
    ("agent", "reconnect_timeout_ms"),
    ("agent", "request_timeout_ms"),
    ("agent", "server_port"),
    ("runtime", "agent_name"),
    ("runtime", "hypervisor_name"),
    ("runtime", "keep_abnormal"),
    ("runtime", "log_level"),
    ("runtime", "name"),
    ("runtime", "passfd_listener_port"),
    ("runtime", "static_resource_mgmt"),
    ("runtime", "use_passfd_io"),
];

/// Tables nested in a table (runtime-rs): (table family, key, the nested table's keys).
const NESTED_TABLES: &[(&str, &str, &[&str])] = &[
    (
        "hypervisor",
        "factory",
        &["enable_template", "template_path"],
    ),
    (
        "hypervisor",
        "rootless_user",
        &["gid", "groups", "uid", "user_name"],
    ),
    (
        "agent",
        "mem_agent",
        &[
            "compact_disable",
            "compact_force_times",
            "compact_order",
            "compact_period_psi_percent_limit",
            "compact_period_secs",
            "compact_psi_percent_limit",
            "compact_sec_max",
            "compact_threshold",
            "enable",
            "mem_agent_enable",
            "memcg_disable",
            "memcg_eviction_psi_percent_limit",
            "memcg_eviction_run_aging_count_min",
            "memcg_period_psi_percent_limit",
            "memcg_period_secs",
            "memcg_swap",
            "memcg_swappiness_max",
        ],
    ),
    (
        "runtime",
        "shared_mounts",
        &["dst_ctr", "dst_path", "name", "src_ctr", "src_path"],
    ),
];

/// Keys whose values are handed to host programs as arguments (virtiofsd's command line,
/// qemu's `-cpu`, `-machine` and `-sandbox` options), split at commas when they are strings.
const ARGUMENT_KEYS: &[&str] = &[
    "virtio_fs_extra_args",
    "cpu_features",
    "machine_accelerators",
    "seccompsandbox",
    "seccomp_sandbox",
];

/// The arguments kata's own configurations pass (2.x to 4.1: virtiofsd's `-o` spelling and
/// the Rust virtiofsd's flags, qemu's `-cpu pmu=off`, ppc64le's `-machine` capabilities,
/// qemu's recommended `-sandbox`): accepted without the node listing them.
pub const DEFAULT_ARGUMENTS: &[&str] = &[
    "--thread-pool-size=1",
    "--announce-submounts",
    "-o",
    "announce_submounts",
    "pmu=off",
    "cap-cfpc=broken",
    "cap-sbbc=broken",
    "cap-ibs=broken",
    "cap-large-decr=off",
    "cap-ccf-assist=off",
    "on",
    "obsolete=deny",
    "spawn=deny",
    "resourcecontrol=deny",
];

/// One refused key or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRefusal {
    pub key: String,
    pub value: String,
    pub rule: String,
}

/// What the node allows beyond kata's keys and arguments (`kataConfig.allowedKeys`,
/// `kataConfig.allowedArguments`).
#[derive(Debug, Clone, Copy)]
pub struct KeyRule<'a> {
    pub allowed_keys: &'a [String],
    pub allowed_arguments: &'a [String],
}

impl KeyRule<'_> {
    /// The first unknown key, disallowed argument or weakening setting of `doc`.
    pub fn check(&self, doc: &DocumentMut) -> Option<KeyRefusal> {
        doc.iter().find_map(|(table, item)| {
            let name = table.to_ascii_lowercase();
            match name.as_str() {
                "hypervisor" => {
                    self.named_tables(table, item, Some(HYPERVISOR_NAMES), HYPERVISOR_KEYS)
                }
                "agent" => self.named_tables(table, item, None, AGENT_KEYS),
                "runtime" => self.keys(table, item, RUNTIME_KEYS),
                "factory" => self.keys(table, item, FACTORY_KEYS),
                // Read from 2.2 to 3.3: its keys are all in `EARLIER_KEYS`.
                "image" => self.keys(table, item, &[]),
                _ => self.unknown(table, "", item),
            }
        })
    }

    /// `[hypervisor.<name>]`, `[agent.<name>]`: each sub-table's keys.
    fn named_tables(
        &self,
        table: &str,
        item: &Item,
        names: Option<&[&str]>,
        known: &[&str],
    ) -> Option<KeyRefusal> {
        let Some(tables) = item.as_table_like() else {
            return self.unknown(table, "", item);
        };
        tables.iter().find_map(|(name, item)| {
            let at = format!("{table}.{name}");
            let lower = name.to_ascii_lowercase();
            if names.is_some_and(|names| !names.contains(&lower.as_str())) {
                return Some(KeyRefusal {
                    key: format!("[{at}]"),
                    value: String::new(),
                    rule: format!(
                        "kata has no hypervisor {name:?} (it knows {})",
                        HYPERVISOR_NAMES.join(", ")
                    ),
                });
            }
            self.keys(&at, item, known)
        })
    }

    /// The keys of one table: known, or allowed by the node; then the values' own rules.
    fn keys(&self, table: &str, item: &Item, known: &[&str]) -> Option<KeyRefusal> {
        let Some(keys) = item.as_table_like() else {
            return self.unknown(table, "", item);
        };
        let family = table
            .split('.')
            .next()
            .unwrap_or(table)
            .to_ascii_lowercase();
        keys.iter().find_map(|(key, value)| {
            let lower = key.to_ascii_lowercase();
            let other_release = EARLIER_KEYS
                .iter()
                .chain(RUNTIME_RS_KEYS)
                .any(|(f, k)| *f == family && *k == lower);
            if let Some((_, _, nested)) = NESTED_TABLES
                .iter()
                .find(|(f, k, _)| *f == family && *k == lower)
            {
                return self.nested(&format!("{table}.{key}"), value, nested);
            }
            if !known.contains(&lower.as_str()) && !other_release {
                return self.unknown(table, key, value);
            }
            if lower == "guest_extension_images" {
                return self.nested(&format!("{table}.{key}"), value, GUEST_EXTENSION_IMAGE_KEYS);
            }
            let full = format!("[{table}] {key}");
            if ARGUMENT_KEYS.contains(&lower.as_str()) {
                return self.arguments(&full, value);
            }
            if lower.starts_with("snp_id_") {
                return base64_only(&full, value);
            }
            self.weakening(&full, &lower, &family, value)
        })
    }

    /// A nested table (or array of tables) and its keys, which must be `known`.
    fn nested(&self, at: &str, item: &Item, known: &[&str]) -> Option<KeyRefusal> {
        let tables: Vec<&dyn toml_edit::TableLike> = match item {
            Item::ArrayOfTables(tables) => tables
                .iter()
                .map(|t| t as &dyn toml_edit::TableLike)
                .collect(),
            Item::Value(Value::Array(array)) => array
                .iter()
                .filter_map(|v| v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike))
                .collect(),
            item => item.as_table_like().into_iter().collect(),
        };
        if tables.is_empty() {
            return self.unknown(at, "", item);
        }
        tables.into_iter().find_map(|table| {
            table.iter().find_map(|(key, value)| {
                (!known.contains(&key.to_ascii_lowercase().as_str()))
                    .then(|| self.unknown(at, key, value))
                    .flatten()
            })
        })
    }

    fn unknown(&self, table: &str, key: &str, item: &Item) -> Option<KeyRefusal> {
        let full = if key.is_empty() {
            table.to_owned()
        } else {
            format!("{table}.{key}")
        };
        if self.key_allowed(&full) {
            return None;
        }
        Some(KeyRefusal {
            key: if key.is_empty() {
                format!("[{table}]")
            } else {
                format!("[{table}] {key}")
            },
            value: shown(item),
            rule: format!(
                "no kata release from 2.0 to 4.1 reads such a key, so a later kata might give it a meaning nobody checked: remove it, or list {:?} in kataConfig.allowedKeys of the node config",
                full.to_ascii_lowercase()
            ),
        })
    }

    /// `kataConfig.allowedKeys` names a key by its dotted path (`hypervisor.qemu.x`) or its name.
    fn key_allowed(&self, full: &str) -> bool {
        let full = full.to_ascii_lowercase();
        let leaf = full.rsplit('.').next().unwrap_or(&full);
        self.allowed_keys.iter().any(|allowed| {
            allowed.eq_ignore_ascii_case(&full) || allowed.eq_ignore_ascii_case(leaf)
        })
    }

    fn arguments(&self, key: &str, item: &Item) -> Option<KeyRefusal> {
        let words: Vec<String> = match item.as_value() {
            Some(Value::String(text)) => text
                .value()
                .split(',')
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(Value::Array(array)) => array
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect(),
            _ => Vec::new(),
        };
        words.into_iter().find_map(|word| {
            let allowed = DEFAULT_ARGUMENTS.contains(&word.as_str())
                || self.allowed_arguments.contains(&word);
            (!allowed).then(|| KeyRefusal {
                key: key.to_owned(),
                value: word,
                rule: "an argument to a host program kata starts as root: list it in kataConfig.allowedArguments of the node config if it is meant".into(),
            })
        })
    }

    /// Settings that weaken the sandbox of the host processes kata starts, or send data off
    /// the node, refused unless the node lists the key.
    fn weakening(&self, key: &str, lower: &str, family: &str, item: &Item) -> Option<KeyRefusal> {
        let on = item.as_value().and_then(Value::as_bool) == Some(true);
        let set = item
            .as_value()
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        let why = match (family, lower) {
            ("hypervisor", "disable_seccomp") if on => "turns off the hypervisor's seccomp filter",
            ("hypervisor", "disable_selinux") if on => {
                "runs the hypervisor without its SELinux label"
            }
            ("hypervisor", "extra_monitor_socket" | "dbg_monitor_socket") if set => {
                "opens a second monitor socket on the hypervisor, from which the VM can be driven"
            }
            ("runtime", "enable_pprof") if on => "serves the shim's profiling endpoint",
            ("runtime", "disable_new_netns") if on => {
                "runs the shim and hypervisor in the host's network namespace"
            }
            ("runtime", "enable_tracing") if on => "sends traces to a collector",
            _ => return None,
        };
        if self.key_allowed(lower) {
            return None;
        }
        Some(KeyRefusal {
            key: key.to_owned(),
            value: shown(item),
            rule: format!(
                "{why}: list {lower:?} in kataConfig.allowedKeys of the node config if it is meant"
            ),
        })
    }
}

/// A value as the refusal quotes it: a string's text, anything else as TOML writes it.
fn shown(item: &Item) -> String {
    match item.as_value() {
        Some(Value::String(text)) => text.value().clone(),
        Some(value) => value.to_string().trim().to_owned(),
        None => String::new(),
    }
}

/// `snp_id_block`, `snp_id_auth`: base64, which kata writes unescaped into qemu's
/// comma-separated `-object` option (a comma would add options of the artifact's choosing).
fn base64_only(key: &str, item: &Item) -> Option<KeyRefusal> {
    let text = item.as_value().and_then(Value::as_str)?;
    let ok = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    (!ok).then(|| KeyRefusal {
        key: key.to_owned(),
        value: text.to_owned(),
        rule: "not base64: kata passes it inside qemu's comma-separated options".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, keys: &[&str], arguments: &[&str]) -> Option<KeyRefusal> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let arguments: Vec<String> = arguments.iter().map(|a| (*a).to_owned()).collect();
        let doc: DocumentMut = text.parse().expect("TOML");
        KeyRule {
            allowed_keys: &keys,
            allowed_arguments: &arguments,
        }
        .check(&doc)
    }

    #[test]
    fn kata_s_keys_in_any_spelling_pass_and_others_are_named() {
        let known = "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nDEFAULT_VCPUS = 2\n\
                     virtio_fs_extra_args = [\"--thread-pool-size=1\", \"--announce-submounts\"]\n\
                     cpu_features = \"pmu=off\"\nfile_mem_backend = \"\"\n\
                     [[hypervisor.qemu.guest_extension_images]]\nname = \"a\"\npath = \"/x\"\n\
                     [agent.kata]\ndial_timeout = 45\n[Runtime]\nsandbox_cgroup_only = true\n\
                     [factory]\nenable_template = false\n[image]\nservice_offload = false\n";
        assert_eq!(check(known, &[], &[]), None);
        for (text, key) in [
            (
                "[hypervisor.qemu]\nguest_memory_dump_dir = \"/x\"",
                "[hypervisor.qemu] guest_memory_dump_dir",
            ),
            ("[hypervisor.bhyve]\npath = \"/x\"", "[hypervisor.bhyve]"),
            ("[netmon]\nenable_netmon = true", "[netmon]"),
            ("top = 1", "[top]"),
            (
                "[[hypervisor.qemu.guest_extension_images]]\nmount = \"/x\"",
                "[hypervisor.qemu.guest_extension_images] mount",
            ),
        ] {
            let refusal = check(text, &[], &[]).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(refusal.key, key, "{text}");
        }
        let unknown = check("[hypervisor.qemu]\nnew_knob = 1", &[], &[]).expect("unknown");
        assert!(
            unknown
                .rule
                .contains("\"hypervisor.qemu.new_knob\" in kataConfig.allowedKeys"),
            "{}",
            unknown.rule
        );
        // The node names it, by name or by path.
        assert_eq!(
            check("[hypervisor.qemu]\nnew_knob = 1", &["new_knob"], &[]),
            None
        );
        assert_eq!(
            check(
                "[hypervisor.qemu]\nnew_knob = 1",
                &["hypervisor.qemu.new_knob"],
                &[]
            ),
            None
        );
    }

    /// Every key of kata 4.1's own x86_64 configurations (the Go runtime's and runtime-rs's,
    /// generated for the `/opt/kata` and `/usr` prefixes), by table.
    const KATA_KEYS: &[(&str, &str)] = &[
        (
            "agent.kata",
            "cdh_api_timeout cdh_api_timeout_ms container_pipe_size create_container_timeout debug_console_enabled dial_timeout dial_timeout_ms enable_debug enable_tracing kernel_modules launch_process_timeout log_level reconnect_timeout_ms visible_cdi_devices",
        ),
        (
            "agent.kata.mem_agent",
            "compact_disable compact_force_times compact_order compact_period_psi_percent_limit compact_period_secs compact_psi_percent_limit compact_sec_max compact_threshold mem_agent_enable memcg_disable memcg_eviction_psi_percent_limit memcg_eviction_run_aging_count_min memcg_period_psi_percent_limit memcg_period_secs memcg_swap memcg_swappiness_max",
        ),
        (
            "factory",
            "enable_template template_path vm_cache_endpoint vm_cache_number",
        ),
        (
            "hypervisor.clh",
            "block_device_cache_direct block_device_cache_set block_device_driver cold_plug_vfio default_bridges default_maxmemory default_maxvcpus default_memory default_vcpus disable_block_device_use disable_guest_selinux disable_image_nvdimm disable_nested_virtualization disable_nesting_checks disable_seccomp disable_selinux disk_rate_limiter_bw_max_rate disk_rate_limiter_bw_one_time_burst disk_rate_limiter_ops_max_rate disk_rate_limiter_ops_one_time_burst enable_annotations enable_debug enable_guest_swap enable_hugepages enable_iommu enable_mem_prealloc firmware guest_hook_path guest_swap_create_threshold_secs guest_swap_path guest_swap_size_percent hot_plug_vfio hypervisor_loglevel image kernel kernel_params memory_slots net_rate_limiter_bw_max_rate net_rate_limiter_bw_one_time_burst net_rate_limiter_ops_max_rate net_rate_limiter_ops_one_time_burst network_queues num_queues overhead_memory overhead_vcpus path queue_size reclaim_guest_freed_memory rootfs_type rootless shared_fs valid_ctlpaths valid_hypervisor_paths valid_virtio_fs_daemon_paths virtio_fs_cache virtio_fs_cache_size virtio_fs_daemon virtio_fs_extra_args virtio_fs_queue_size vm_rootfs_driver",
        ),
        ("hypervisor.clh.factory", "enable_template template_path"),
        (
            "hypervisor.dragonball",
            "block_device_cache_direct block_device_driver ctlpath default_bridges default_maxmemory default_maxvcpus default_memory default_vcpus disable_nesting_checks disable_seccomp disable_vhost_net enable_annotations enable_debug enable_guest_swap enable_hugepages firmware guest_hook_path guest_swap_create_threshold_secs guest_swap_path guest_swap_size_percent image kernel kernel_params log_level network_queues num_queues overhead_memory overhead_vcpus path queue_size reclaim_guest_freed_memory rootfs_type shared_fs valid_ctlpaths valid_hypervisor_paths virtio_fs_cache virtio_fs_cache_size virtio_fs_extra_args vm_rootfs_driver",
        ),
        (
            "hypervisor.dragonball.factory",
            "enable_template template_path",
        ),
        (
            "hypervisor.firecracker",
            "block_device_cache_noflush block_device_cache_set block_device_driver default_bridges default_maxmemory default_maxvcpus default_memory default_vcpus disable_nesting_checks disable_seccomp disable_selinux disk_rate_limiter_bw_max_rate disk_rate_limiter_bw_one_time_burst disk_rate_limiter_ops_max_rate disk_rate_limiter_ops_one_time_burst enable_annotations enable_debug enable_hugepages enable_iommu enable_mem_prealloc entropy_source guest_hook_path image jailer_path kernel kernel_params memory_offset memory_slots msize_9p network_queues num_queues path queue_size rootfs_type rx_rate_limiter_max_rate tx_rate_limiter_max_rate valid_entropy_sources valid_hypervisor_paths valid_jailer_paths",
        ),
        (
            "hypervisor.openvmm",
            "block_device_cache_direct block_device_driver default_maxvcpus default_memory default_vcpus disable_nesting_checks disable_seccomp enable_annotations enable_debug enable_guest_swap enable_hugepages enable_mem_prealloc firmware guest_hook_path guest_swap_create_threshold_secs guest_swap_path guest_swap_size_percent image kernel kernel_params network_queues num_queues overhead_memory overhead_vcpus path queue_size reclaim_guest_freed_memory rootfs_type rootless shared_fs valid_ctlpaths valid_hypervisor_paths virtio_fs_cache virtio_fs_cache_size virtio_fs_daemon virtio_fs_extra_args virtio_fs_queue_size vm_rootfs_driver",
        ),
        (
            "hypervisor.qemu",
            "block_device_aio block_device_cache_direct block_device_cache_noflush block_device_cache_set block_device_driver block_device_logical_sector_size block_device_physical_sector_size cold_plug_vfio confidential_guest cpu_features default_bridges default_maxmemory default_maxvcpus default_memory default_vcpus disable_block_device_use disable_guest_selinux disable_image_nvdimm disable_nesting_checks disable_selinux disable_vhost_net enable_annotations enable_debug enable_guest_swap enable_hugepages enable_iommu enable_iommu_platform enable_iothreads enable_mem_prealloc enable_numa enable_vhost_user_store enable_virtio_mem entropy_source extra_monitor_socket firmware firmware_volume guest_hook_path guest_memory_dump_paging guest_memory_dump_path hot_plug_vfio image indep_iothreads kernel kernel_params kernel_verity_params machine_accelerators machine_type memory_offset memory_slots msize_9p network_queues num_queues numa_mapping overhead_memory overhead_vcpus path pcie_root_port pcie_switch_port pflashes queue_size reclaim_guest_freed_memory rootfs_type rootless rx_rate_limiter_max_rate seccomp_sandbox seccompsandbox sev_snp_guest shared_fs snp_guest_policy snp_id_auth snp_id_block tdx_quote_generation_service_socket_port tx_rate_limiter_max_rate use_legacy_serial valid_entropy_sources valid_hypervisor_paths valid_vhost_user_store_paths valid_virtio_fs_daemon_paths vhost_user_reconnect_timeout_sec vhost_user_store_path virtio_fs_cache virtio_fs_cache_size virtio_fs_daemon virtio_fs_extra_args virtio_fs_queue_size vm_rootfs_driver",
        ),
        ("hypervisor.qemu.factory", "enable_template template_path"),
        (
            "hypervisor.qemu.guest_extension_images",
            "name path verity_params",
        ),
        (
            "hypervisor.remote",
            "default_bridges default_maxvcpus default_memory default_vcpus disable_guest_selinux disable_selinux enable_annotations enable_debug firmware guest_hook_path kernel_params memory_slots remote_hypervisor_socket remote_hypervisor_timeout",
        ),
        (
            "hypervisor.stratovirt",
            "block_device_cache_direct block_device_cache_noflush block_device_cache_set block_device_driver block_device_logical_sector_size block_device_physical_sector_size default_bridges default_maxmemory default_maxvcpus default_memory default_vcpus disable_block_device_use disable_guest_selinux disable_nesting_checks disable_selinux enable_annotations enable_debug enable_hugepages enable_iommu entropy_source guest_hook_path image kernel kernel_params machine_type memory_offset memory_slots path rootfs_type shared_fs valid_hypervisor_paths valid_virtio_fs_daemon_paths virtio_fs_cache virtio_fs_cache_size virtio_fs_daemon virtio_fs_extra_args",
        ),
        (
            "runtime",
            "agent_name create_container_timeout dan_conf disable_guest_empty_dir disable_guest_seccomp disable_new_netns emptydir_mode enable_debug enable_pprof enable_tracing enable_vcpus_pinning experimental experimental_force_guest_pull guest_selinux_label hypervisor_name internetworking_model jaeger_endpoint jaeger_password jaeger_user keep_abnormal kubelet_root_dir log_level name passfd_listener_port pod_resource_api_sock sandbox_bind_mounts sandbox_cgroup_only static_sandbox_resource_mgmt use_passfd_io vfio_mode",
        ),
    ];

    #[test]
    fn every_key_of_kata_s_own_configurations_is_known() {
        let refused: Vec<String> = KATA_KEYS
            .iter()
            .flat_map(|(table, keys)| keys.split(' ').map(move |key| (*table, key)))
            .filter_map(|(table, key)| {
                check(&format!("[{table}]\n{key} = \"\""), &[], &[])
                    .map(|r| format!("{table}.{key}: {}", r.rule))
            })
            .collect();
        assert!(refused.is_empty(), "{refused:#?}");
    }

    #[test]
    fn arguments_to_host_programs_must_be_kata_s_or_the_node_s() {
        let refusal = check(
            "[hypervisor.qemu]\nvirtio_fs_extra_args = [\"--thread-pool-size=1\", \"--sandbox=none\"]",
            &[],
            &[],
        )
        .expect("refused");
        assert_eq!(
            (refusal.key.as_str(), refusal.value.as_str()),
            ("[hypervisor.qemu] virtio_fs_extra_args", "--sandbox=none")
        );
        assert!(
            refusal.rule.contains("kataConfig.allowedArguments"),
            "{}",
            refusal.rule
        );
        let cpu = check(
            "[hypervisor.qemu]\ncpu_features = \"pmu=off,+vmx\"",
            &[],
            &[],
        )
        .expect("cpu");
        assert_eq!(cpu.value, "+vmx");
        assert_eq!(
            check(
                "[hypervisor.qemu]\ncpu_features = \"pmu=off,+vmx\"",
                &[],
                &["+vmx"]
            ),
            None
        );
        let sandbox = check(
            "[hypervisor.qemu]\nseccompsandbox = \"on,obsolete=allow\"",
            &[],
            &[],
        )
        .expect("sandbox");
        assert_eq!(sandbox.value, "obsolete=allow");
        let snp = check(
            "[hypervisor.qemu]\nsnp_id_block = \"AAAA,policy=0\"",
            &[],
            &[],
        )
        .expect("snp");
        assert!(snp.rule.contains("not base64"), "{}", snp.rule);
        assert_eq!(
            check("[hypervisor.qemu]\nsnp_id_block = \"/+AAA=\"", &[], &[]),
            None
        );
    }

    #[test]
    fn settings_that_weaken_host_sandboxes_need_the_node() {
        for (text, key) in [
            (
                "[hypervisor.clh]\ndisable_seccomp = true",
                "disable_seccomp",
            ),
            (
                "[hypervisor.qemu]\ndisable_selinux = true",
                "disable_selinux",
            ),
            (
                "[hypervisor.qemu]\nextra_monitor_socket = \"hmp\"",
                "extra_monitor_socket",
            ),
            ("[runtime]\nenable_pprof = true", "enable_pprof"),
            ("[runtime]\ndisable_new_netns = true", "disable_new_netns"),
            ("[runtime]\nenable_tracing = true", "enable_tracing"),
        ] {
            let refusal = check(text, &[], &[]).unwrap_or_else(|| panic!("{text}"));
            assert!(
                refusal
                    .rule
                    .contains(&format!("list {key:?} in kataConfig.allowedKeys")),
                "{}",
                refusal.rule
            );
            assert_eq!(check(text, &[key], &[]), None, "{text} allowed");
        }
        // Their kata defaults, and the guest's own, are fine.
        assert_eq!(
            check(
                "[hypervisor.clh]\ndisable_seccomp = false\nextra_monitor_socket = \"\"\n[agent.kata]\nenable_tracing = true\n[runtime]\ndisable_guest_seccomp = true",
                &[],
                &[]
            ),
            None
        );
    }
}
