//! The host's side, end to end through the daemon with real containerd:
//! - kernel modules (`node.kernelModules`, default `vhost_vsock`, `vhost_net`) loaded with the
//!   `modprobe` found on the daemon's `PATH` (a fake one here, recording its calls) before any
//!   class is served; one that fails leaves every class unserved, with the reason in `status`
//!   and `/readyz`, and no stanza in containerd's config;
//! - the CDI spec of the node's passthrough GPUs, read from a fake `/sys/bus/pci` tree (the
//!   daemon reads the kernel's files under `KATA_NRI_MANAGER_HOST_ROOT`): written while a GPU
//!   class is served, valid against the CDI schema, rewritten when a GPU is bound to
//!   `vfio-pci`, removed when the last GPU class leaves the config.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kata_nri_integration::node::{CLASS, Daemon, KataNode};
use kata_nri_integration::{NO_KERNEL_MODULES, Version, require_e2e};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");

/// A `modprobe` that appends its arguments to `<dir>/calls` and fails for the modules in
/// `<dir>/fail` (one per line), as modprobe does for a module the kernel does not have.
fn fake_modprobe(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("modprobe");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo \"$*\" >> {dir}/calls\n\
             if grep -qx \"$1\" {dir}/fail 2>/dev/null; then\n\
             \x20 echo \"modprobe: FATAL: Module $1 not found in directory /lib/modules/$(uname -r)\" >&2\n\
             \x20 exit 1\n\
             fi\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `status --output json` once it reports the running daemon `daemon` (the status file is
/// written by a background task, so right after a start it may still be the last run's).
async fn status_of(node: &KataNode, daemon: &Daemon, operator: &str, node_config: &str) -> Value {
    let pid = daemon.process.pid().map(u64::from);
    let mut status = Value::Null;
    daemon
        .wait_until("status reports this daemon", async || {
            status = node
                .status(daemon, operator, node_config, "json")
                .await
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or(Value::Null);
            status["daemonRunning"] == true && status["pid"].as_u64() == pid
        })
        .await
        .unwrap();
    status
}

fn stanza_written(node: &KataNode) -> bool {
    std::fs::read_to_string(&node.cd.layout().config)
        .unwrap_or_default()
        .contains(&format!("runtimes.{CLASS}]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kernel_modules_are_loaded_before_a_class_is_served() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let fake = tempfile::tempdir().unwrap();
    let bin = fake_modprobe(fake.path());
    // A kernel without either module (nothing under sys/module).
    let host_root = fake.path().join("root");
    std::fs::create_dir_all(host_root.join("sys/module")).unwrap();
    let path = path_with(&bin);
    let env = [
        ("PATH", path.as_str()),
        ("KATA_NRI_MANAGER_HOST_ROOT", host_root.to_str().unwrap()),
    ];
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    // The default kernelModules: the harness's "none" line taken out.
    let node_config = node.node_config(None).replace(NO_KERNEL_MODULES, "");
    assert!(!node_config.contains("kernelModules"));

    // vhost_vsock cannot be loaded: no class is served.
    std::fs::write(fake.path().join("fail"), "vhost_vsock\n").unwrap();
    let daemon = node
        .daemon(
            Path::new(PLUGIN),
            operator.clone(),
            node_config.clone(),
            &env,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        std::fs::read_to_string(fake.path().join("calls")).unwrap(),
        "vhost_vsock\nvhost_net\n",
        "every module is tried, in order"
    );
    let status = status_of(&node, &daemon, &operator, &node_config).await;
    let class = &status["classes"][0];
    assert_eq!(class["decision"], "deny", "{status:#}");
    assert_eq!(class["state"], "notServed", "{status:#}");
    let reason = class["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("kernel module vhost_vsock: ")
            && reason.contains("Module vhost_vsock not found in directory"),
        "{reason}"
    );
    assert_eq!(status["host"]["kernelModules"][1]["state"], "loaded");
    assert_eq!(
        node.status_code(&daemon, &operator, &node_config)
            .await
            .unwrap(),
        5
    );
    let text = node
        .status(&daemon, &operator, &node_config, "text")
        .await
        .unwrap();
    assert!(
        text.contains("kernel modules: vhost_vsock FAILED, vhost_net (loaded)"),
        "{text}"
    );
    let (code, body) = daemon.http("/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("not ready: no class is served: kernel module vhost_vsock: "),
        "{body}"
    );
    assert!(
        !stanza_written(&node),
        "no stanza for a class kata cannot run"
    );
    drop(daemon);

    // The module is there now: the next start serves the class.
    std::fs::remove_file(fake.path().join("fail")).unwrap();
    std::fs::remove_file(fake.path().join("calls")).unwrap();
    let daemon = node
        .daemon(
            Path::new(PLUGIN),
            operator.clone(),
            node_config.clone(),
            &env,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        std::fs::read_to_string(fake.path().join("calls")).unwrap(),
        "vhost_vsock\nvhost_net\n"
    );
    let status = status_of(&node, &daemon, &operator, &node_config).await;
    assert_eq!(status["classes"][0]["decision"], "serve", "{status:#}");
    assert!(stanza_written(&node));
    daemon
        .wait_until("ready", async || {
            daemon.http("/readyz").await.map(|(c, _)| c).unwrap_or(0) == 200
        })
        .await
        .unwrap();
    drop(daemon);

    // Modules the kernel already has are not loaded again.
    std::fs::remove_file(fake.path().join("calls")).unwrap();
    std::fs::create_dir_all(host_root.join("sys/module/vhost_vsock")).unwrap();
    std::fs::create_dir_all(host_root.join("sys/module/vhost_net")).unwrap();
    let daemon = node
        .daemon(
            Path::new(PLUGIN),
            operator.clone(),
            node_config.clone(),
            &env,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!fake.path().join("calls").exists(), "modprobe was not run");
    let status = status_of(&node, &daemon, &operator, &node_config).await;
    assert_eq!(status["host"]["kernelModules"][0]["state"], "present");
    assert_eq!(status["classes"][0]["decision"], "serve");
}

/// A PCI function in the fake sysfs tree under `root`.
fn pci(root: &Path, address: &str, class: &str, driver: &str, group: &str, cdev: Option<&str>) {
    let dir = root.join("sys/bus/pci/devices").join(address);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vendor"), "0x10de\n").unwrap();
    std::fs::write(dir.join("device"), "0x2330\n").unwrap();
    std::fs::write(dir.join("class"), format!("0x{class}\n")).unwrap();
    bind(root, address, driver);
    let group_dir = root.join("sys/kernel/iommu_groups").join(group);
    std::fs::create_dir_all(&group_dir).unwrap();
    symlink(&group_dir, dir.join("iommu_group")).unwrap();
    if let Some(cdev) = cdev {
        std::fs::create_dir_all(dir.join("vfio-dev").join(cdev)).unwrap();
    }
}

/// Binds the device to `driver`, as writing to `drivers/<driver>/bind` does.
fn bind(root: &Path, address: &str, driver: &str) {
    let link = root
        .join("sys/bus/pci/devices")
        .join(address)
        .join("driver");
    let _ = std::fs::remove_file(&link);
    let target = root.join("sys/bus/pci/drivers").join(driver);
    std::fs::create_dir_all(&target).unwrap();
    symlink(&target, link).unwrap();
}

/// The CDI specification's JSON schema, for the parts a spec of device nodes uses: our own
/// reading of the specification (container-device-interface SPEC.md), strict where it is.
fn cdi_schema() -> Value {
    serde_json::json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "required": ["cdiVersion", "kind", "devices"],
        "additionalProperties": false,
        "properties": {
            "cdiVersion": {"type": "string", "pattern": "^0\\.[3-8]\\.0$"},
            "kind": {
                "type": "string",
                "pattern": "^[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?/[a-zA-Z0-9]([a-zA-Z0-9_-]*[a-zA-Z0-9])?$"
            },
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "devices": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "containerEdits"],
                    "additionalProperties": false,
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-zA-Z0-9]([a-zA-Z0-9_.:-]*[a-zA-Z0-9])?$"},
                        "annotations": {"type": "object"},
                        "containerEdits": {"$ref": "#/definitions/containerEdits"}
                    }
                }
            },
            "containerEdits": {"$ref": "#/definitions/containerEdits"}
        },
        "definitions": {
            "containerEdits": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "env": {"type": "array", "items": {"type": "string"}},
                    "deviceNodes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["path"],
                            "additionalProperties": false,
                            "properties": {
                                "path": {"type": "string", "pattern": "^/"},
                                "hostPath": {"type": "string", "pattern": "^/"},
                                "type": {"type": "string", "enum": ["b", "c", "u", "p"]},
                                "major": {"type": "integer"},
                                "minor": {"type": "integer"},
                                "fileMode": {"type": "integer"},
                                "permissions": {"type": "string", "pattern": "^[rwm]*$"},
                                "uid": {"type": "integer"},
                                "gid": {"type": "integer"}
                            }
                        }
                    },
                    "hooks": {"type": "array"},
                    "mounts": {"type": "array"}
                }
            }
        }
    })
}

fn read_spec(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let spec: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&cdi_schema()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&spec)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{path:?} is not a valid CDI spec: {errors:?}\n{text}"
    );
    Some(spec)
}

fn device_names(spec: &Value) -> Vec<(String, String)> {
    spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["containerEdits"]["deviceNodes"][0]["path"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cdi_spec_follows_the_passthrough_gpus_and_the_gpu_classes() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let fake = tempfile::tempdir().unwrap();
    let root = fake.path().join("root");
    // Two GPUs on vfio-pci, one on nvidia; the kernel has iommufd (/dev/vfio/devices).
    pci(
        &root,
        "0000:3b:00.0",
        "030200",
        "vfio-pci",
        "42",
        Some("vfio0"),
    );
    pci(
        &root,
        "0000:86:00.0",
        "030200",
        "vfio-pci",
        "77",
        Some("vfio1"),
    );
    pci(&root, "0000:af:00.0", "030200", "nvidia", "90", None);
    std::fs::create_dir_all(root.join("dev/vfio/devices")).unwrap();
    let cdi_dir = fake.path().join("cdi");
    let env = [("KATA_NRI_MANAGER_HOST_ROOT", root.to_str().unwrap())];

    // The test class renamed into a GPU class: only the name makes it one.
    let gpu_class = format!("{CLASS}-gpu");
    let operator = node
        .operator_config(&node.registry.host(), "onDemand", "")
        .replace(&format!("name: {CLASS}\n"), &format!("name: {gpu_class}\n"));
    let node_config = node
        .node_config(None)
        .replace(&format!("name: {CLASS}\n"), &format!("name: {gpu_class}\n"))
        .replace(
            NO_KERNEL_MODULES,
            &format!("{NO_KERNEL_MODULES}cdi: {{dir: {}}}\n", cdi_dir.display()),
        );
    let spec_path = cdi_dir.join("kata-nri-manager-nvidia.com-pgpu.json");
    let daemon = node
        .daemon(
            Path::new(PLUGIN),
            operator.clone(),
            node_config.clone(),
            &env,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    daemon
        .wait_until("the CDI spec is written", async || spec_path.exists())
        .await
        .unwrap();
    let spec = read_spec(&spec_path).unwrap();
    assert_eq!(spec["kind"], "nvidia.com/pgpu");
    assert_eq!(
        device_names(&spec),
        [
            ("0".to_owned(), "/dev/vfio/42".to_owned()),
            ("1".to_owned(), "/dev/vfio/77".to_owned()),
            ("42".to_owned(), "/dev/vfio/42".to_owned()),
            ("77".to_owned(), "/dev/vfio/77".to_owned()),
            ("vfio0".to_owned(), "/dev/vfio/devices/vfio0".to_owned()),
            ("vfio1".to_owned(), "/dev/vfio/devices/vfio1".to_owned()),
        ]
    );
    let text = node
        .status(&daemon, &operator, &node_config, "text")
        .await
        .unwrap();
    assert!(
        text.contains(&format!(
            "CDI spec: {} (nvidia.com/pgpu=0, nvidia.com/pgpu=1, nvidia.com/pgpu=42",
            spec_path.display()
        )),
        "{text}"
    );

    // The third GPU is bound to vfio-pci (as the GPU Operator's vfio-manager does): the spec
    // follows within its rescan.
    bind(&root, "0000:af:00.0", "vfio-pci");
    daemon
        .wait_until("the third GPU is in the spec", async || {
            read_spec(&spec_path)
                .map(|spec| {
                    device_names(&spec).contains(&("2".to_owned(), "/dev/vfio/90".to_owned()))
                })
                .unwrap_or(false)
        })
        .await
        .unwrap();

    // The GPU class leaves the config: the daemon restarts in place and removes the spec.
    let without_gpu_class = node
        .operator_config(&node.registry.host(), "onDemand", "")
        .replace(&format!("- name: {CLASS}\n"), "- name: knm-other\n");
    std::fs::write(daemon.process.config_file(), &without_gpu_class).unwrap();
    daemon
        .wait_until("the CDI spec is removed", async || !spec_path.exists())
        .await
        .unwrap();
    assert!(cdi_dir.is_dir(), "only our file goes");
}

/// The busybox-static the guest's initramfs is built from: a static binary that runs in a
/// root of its own.
fn static_busybox() -> PathBuf {
    let pkgs = kata_nri_integration::deps::default_cache_dir().join("pkgs");
    std::fs::read_dir(&pkgs)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin/busybox"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no busybox-static under {}", pkgs.display()))
}

/// `node.modprobeRoot`: modprobe runs inside the host's root as a container mounts it (here a
/// directory with a static busybox and a modprobe script), so the host's modprobe and modules
/// are used, not the image's; the daemon changes root itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modprobe_runs_inside_the_host_root() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let fake = tempfile::tempdir().unwrap();
    let host = fake.path().join("host");
    std::fs::create_dir_all(host.join("bin")).unwrap();
    std::fs::create_dir_all(host.join("sbin")).unwrap();
    std::fs::copy(static_busybox(), host.join("bin/busybox")).unwrap();
    let modprobe = host.join("sbin/modprobe");
    // Written where the script sees `/`: only a chrooted run finds /calls there.
    std::fs::write(&modprobe, "#!/bin/busybox sh\necho \"$*\" >> /calls\n").unwrap();
    std::fs::set_permissions(&modprobe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sys = fake.path().join("sys-root");
    std::fs::create_dir_all(sys.join("sys/module")).unwrap();
    let env = [("KATA_NRI_MANAGER_HOST_ROOT", sys.to_str().unwrap())];
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None).replace(
        NO_KERNEL_MODULES,
        &format!(
            "node: {{kernelModules: [vhost_vsock], modprobe: [/sbin/modprobe], modprobeRoot: {}}}\n",
            host.display()
        ),
    );
    let daemon = node
        .daemon(
            Path::new(PLUGIN),
            operator.clone(),
            node_config.clone(),
            &env,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        std::fs::read_to_string(host.join("calls")).unwrap(),
        "vhost_vsock\n"
    );
    let status = status_of(&node, &daemon, &operator, &node_config).await;
    assert_eq!(
        status["host"]["kernelModules"][0]["state"], "loaded",
        "{status:#}"
    );
    assert_eq!(status["classes"][0]["decision"], "serve");
}
