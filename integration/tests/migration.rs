//! Migrating from NVIDIA's k8s-kata-manager: its config file is used as `--config` byte for byte,
//! next to a node file of the node's own (containerd's files, the restart, the real shim, the
//! pull secrets, a registry mirror), and kata really boots what was pulled.
//!
//! The artifacts carry NVIDIA's file names and sit in the local registry as NVIDIA's repository;
//! the node reaches them the way an air-gapped GPU node reaches NGC: a `hosts.toml` mirror of
//! the upstream registry (plain HTTP, no `registries.insecure`), with the pull secret holding
//! credentials for the upstream only (the mirror is asked anonymously). Every pod's sandbox is
//! checked through the kata stand-in's record (`kata_nri_integration::node`): configuration from
//! the stanza's `ConfigPath`, kernel and configuration the recorded files of the class's current
//! version.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use kata_nri_integration::node::{KataNode, check_kata_used};
use kata_nri_integration::{NO_KERNEL_MODULES, PodSpec, Version, repo_root, require_e2e};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");

/// The example config file of NVIDIA/k8s-kata-manager's README.md, byte for byte.
const K8S_KATA_MANAGER_CONFIG: &str = "\
artifactsDir: /opt/nvidia/artifacts/runtimeclasses
runtimeClasses:
  - name: kata-qemu-nvidia-gpu
    artifacts:
      url: stg.nvcr.io/nvidia/cloud-native/kata-gpu-artifacts:ubuntu22.04-525
      pullSecret: my-pull-secret
";

/// The `artifactsDir` that file fixes: a real host path, shared by every run on this machine.
const NVIDIA_ARTIFACTS_DIR: &str = "/opt/nvidia/artifacts/runtimeclasses";

/// The operator config the Helm chart renders with its nvidia-gpu example values, used as the
/// DaemonSet's ConfigMap (scripts/validate-deploy.sh checks it equals the rendering).
const OVERLAY_CONFIG: &str = "deploy/examples/nvidia-gpu-operator-config.yaml";

/// The artifact's files, with the names NVIDIA's kata GPU artifacts use.
const KERNEL: &str = "vmlinuz-nvidia-gpu.container";
const KERNEL_BYTES: &[u8] = b"stand-in nvidia gpu guest kernel\n";
const IMAGE: &str = "kata-ubuntu-jammy-nvidia-gpu.image";
const IMAGE_BYTES: &[u8] = b"stand-in ubuntu jammy nvidia gpu guest image\n";
const KATA_CONFIG: &str = "configuration-nvidia-gpu-qemu.toml";
/// Its kata configuration names the kernel and image relative to itself, as the artifact ships
/// them; no shared filesystem, so no virtiofsd.
const KATA_CONFIG_BYTES: &[u8] = b"[hypervisor.qemu]\n\
path = \"/usr/bin/qemu-system-x86_64\"\n\
kernel = \"vmlinuz-nvidia-gpu.container\"\n\
image = \"kata-ubuntu-jammy-nvidia-gpu.image\"\n\
shared_fs = \"none\"\n";

const REPOSITORY: &str = "nvidia/cloud-native/kata-gpu-artifacts";

/// Pushes NVIDIA's artifact to the node's registry as `REPOSITORY:tag`.
fn push_artifact(node: &KataNode, tag: &str) {
    node.registry
        .push_files(
            &format!("{REPOSITORY}:{tag}"),
            &[
                (KERNEL, KERNEL_BYTES),
                (IMAGE, IMAGE_BYTES),
                (KATA_CONFIG, KATA_CONFIG_BYTES),
            ],
        )
        .unwrap_or_else(|e| panic!("pushing {tag}: {e:#}"));
}

/// Writes `<dir>/<name>/.dockerconfigjson` as a mounted `kubernetes.io/dockerconfigjson` Secret
/// holding dummy credentials for `upstream` only.
fn write_pull_secret(dir: &Path, name: &str, upstream: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode("$oauthtoken:dummy-ngc-api-key");
    let secret = dir.join(name);
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(
        secret.join(".dockerconfigjson"),
        format!(r#"{{"auths": {{"{upstream}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
}

/// Writes `<certs>/<upstream>/hosts.toml`: the node's registry (plain HTTP, named as such) mirrors
/// `upstream`, which stays the fallback.
fn write_mirror(certs: &Path, upstream: &str, mirror: &str) {
    let dir = certs.join(upstream);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"https://{upstream}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
}

/// Points containerd's own registry configuration (`config_path`) at `certs`, as a node that
/// mirrors its images does; the daemon reads the same directory.
fn set_containerd_config_path(node: &KataNode, certs: &Path) {
    let table = match node.cd.version() {
        Version::V2_1 => "plugins.\"io.containerd.cri.v1.images\".registry",
        _ => "plugins.\"io.containerd.grpc.v1.cri\".registry",
    };
    let config = &node.cd.layout().config;
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "\n[{table}]\n  config_path = \"{}\"\n",
        certs.display()
    ));
    std::fs::write(config, text).unwrap();
}

/// The node file: what only the node knows. `artifacts_dir` is the operator file's own when it
/// has one (the same value there is what lets it load unchanged); `extra` is more top-level YAML.
fn node_config(node: &KataNode, artifacts_dir: &Path, classes: &[&str], extra: &str) -> String {
    let mut text = format!(
        "artifactsDir: {artifacts}\n\
         pullSecretsDir: {secrets}\n\
         listen: 127.0.0.1:0\n\
         containerd:\n\
         \x20 configPath: {config}\n\
         \x20 address: {address}\n\
         \x20 restart: {{method: command, command: [/bin/sh, -c, 'echo >> {marker}'], timeout: 30s}}\n\
         gate: {{dir: {{dir}}/gate, socket: {{dir}}/run/gate.sock, timeout: 60s}}\n\
         policies: {{dir: {policies}}}\n\
         {NO_KERNEL_MODULES}\
         {extra}\
         runtimeClasses:\n",
        artifacts = artifacts_dir.display(),
        secrets = secrets_dir(node).display(),
        config = node.cd.layout().config.display(),
        address = node.cd.address().display(),
        marker = node.marker().display(),
        policies = node.dir().join("no-policies").display(),
    );
    for class in classes {
        text.push_str(&format!(
            "- name: {class}\n  runtime: {{runtimePath: {}}}\n",
            node.shim().display()
        ));
    }
    text
}

fn secrets_dir(node: &KataNode) -> PathBuf {
    node.dir().join("pull-secrets")
}

/// The digest of the version `<artifacts>/<class>` points at.
fn current_version(artifacts: &Path, class: &str) -> Option<String> {
    let target = std::fs::read_link(artifacts.join(class)).ok()?;
    Some(target.file_name()?.to_str()?.to_owned())
}

/// What the store recorded about the class's current version (`.state/<class>.json`).
fn state_record(artifacts: &Path, class: &str) -> Value {
    let path = artifacts.join(".state").join(format!("{class}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .unwrap()
}

/// Starts the daemon, waits until every class is installed (they are `eager`, as in
/// k8s-kata-manager), runs a pod of each, and checks that kata booted the pulled version and
/// that the mirror served it on behalf of `upstream`.
async fn serve_pods(
    node: &mut KataNode,
    operator: &str,
    node_file: &str,
    artifacts: &Path,
    classes: &[&str],
    upstream: &str,
) {
    let daemon = node
        .daemon(
            Path::new(PLUGIN),
            operator.to_owned(),
            node_file.to_owned(),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        std::fs::read_to_string(daemon.process.config_file()).unwrap(),
        operator,
        "the operator file is used as it is"
    );
    // The node file's `listen` (port 0) is the address: the ConfigMap sets none (the chart
    // passes `run --listen`).
    let address = daemon.address().unwrap();
    assert!(!address.ends_with(":9464"), "listening on {address}");
    daemon
        .wait_until("every class is installed", async || {
            classes
                .iter()
                .all(|class| artifacts.join(class).join(KERNEL).is_file())
        })
        .await
        .unwrap();
    let mut cri = node.cd.cri().await.unwrap();
    for class in classes {
        let pod = format!("pod-of-{class}");
        cri.run_pod(&PodSpec::new(&pod).handler(*class))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RunPodSandbox {class}: {e:#}\n{}\n{}",
                    node.cd.log_tail(40),
                    daemon.process.log()
                )
            });
        check_kata_used(
            artifacts,
            class,
            node.sandbox_record(&pod),
            current_version(artifacts, class),
            KERNEL_BYTES,
        )
        .unwrap_or_else(|e| panic!("pod {pod}: {e:#}\n{:?}", node.sandbox_record(&pod)));
        let record = state_record(artifacts, class);
        assert_eq!(
            record["servedBy"],
            node.registry.host(),
            "the mirror served {class}: {record}"
        );
    }
    assert!(
        node.registry.log().contains(&format!("ns={upstream}")),
        "the mirror was asked on behalf of {upstream}"
    );
    cri.remove_all_pods().await.unwrap();
}

/// A directory the test must use at a fixed host path: emptied first, and removed afterwards,
/// with the parents the test created for it, even when the test fails.
struct FixedDir {
    /// What to remove: the topmost directory that did not exist before, or the path itself.
    remove: PathBuf,
}

impl FixedDir {
    fn claim(path: &Path) -> Self {
        let remove = path
            .ancestors()
            .take_while(|dir| !dir.exists())
            .last()
            .unwrap_or(path)
            .to_path_buf();
        if path.exists() {
            std::fs::remove_dir_all(path).unwrap();
        }
        Self { remove }
    }
}

impl Drop for FixedDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.remove)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("removing {}: {e}", self.remove.display());
        }
    }
}

/// k8s-kata-manager's README config, byte for byte, as `--config`: its `artifactsDir` is
/// node-local, and loads because the node file sets the same value. The class is pulled from
/// `stg.nvcr.io` through the node's containerd `hosts.toml` mirror and served on containerd 2.1,
/// then 1.7.
///
/// The file fixes `artifactsDir` to a real host path, `/opt/nvidia/artifacts/runtimeclasses`, so
/// the two containerd versions run one after the other inside this one test (never two daemons
/// on that directory at once), and the directory is removed before and after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn k8s_kata_managers_readme_config_serves_kata_unchanged_on_2_1_and_1_7() {
    for version in [Version::V2_1, Version::V1_7] {
        let Some(deps) = require_e2e() else {
            return;
        };
        let artifacts = Path::new(NVIDIA_ARTIFACTS_DIR);
        let _claimed = FixedDir::claim(artifacts);
        let mut node = KataNode::start(deps, version)
            .await
            .expect("containerd and the registry start");
        let upstream = "stg.nvcr.io";
        let class = "kata-qemu-nvidia-gpu";
        push_artifact(&node, "ubuntu22.04-525");
        write_pull_secret(&secrets_dir(&node), "my-pull-secret", upstream);
        let certs = node.dir().join("certs.d");
        write_mirror(&certs, upstream, &node.registry.host());
        set_containerd_config_path(&node, &certs);
        let node_file = node_config(&node, artifacts, &[class], "");
        serve_pods(
            &mut node,
            K8S_KATA_MANAGER_CONFIG,
            &node_file,
            artifacts,
            &[class],
            upstream,
        )
        .await;
        assert!(
            artifacts.join(class).join(KATA_CONFIG).is_file(),
            "{version:?}: installed under the file's own artifactsDir"
        );
        drop(node);
    }
}

/// The nvidia-gpu overlay's operator config, read from the repository and used unchanged as
/// `--config`: its socket, listen address and systemd restart give way to the node file's, its
/// two classes are pulled from `nvcr.io` (allowed: `nvcr.io/nvidia`) through a mirror in the
/// node's `registries.hostsDir`, and a pod of each boots the pulled version.
async fn the_nvidia_gpu_overlay_config_serves_both_classes(version: Version) {
    let Some(deps) = require_e2e() else {
        return;
    };
    let operator = std::fs::read_to_string(repo_root().join(OVERLAY_CONFIG)).unwrap();
    let mut node = KataNode::start(deps, version)
        .await
        .expect("containerd and the registry start");
    let upstream = "nvcr.io";
    let classes = ["kata-qemu-nvidia-gpu", "kata-qemu-nvidia-gpu-snp"];
    // Both classes from the same artifact, under the two tags the overlay names.
    push_artifact(&node, "ubuntu22.04-535");
    push_artifact(&node, "ubuntu22.04-535-snp");
    write_pull_secret(&secrets_dir(&node), "ngc-secret", upstream);
    let certs = node.dir().join("certs.d");
    write_mirror(&certs, upstream, &node.registry.host());
    let artifacts = node.artifacts();
    let node_file = node_config(
        &node,
        &artifacts,
        &classes,
        &format!("registries: {{hostsDir: {}}}\n", certs.display()),
    );
    serve_pods(
        &mut node, &operator, &node_file, &artifacts, &classes, upstream,
    )
    .await;
    // The overlay's restart (systemd) was replaced by the node file's command: the harness
    // carried out what the daemon asked for.
    assert!(node.restarts_requested() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nvidia_gpu_overlay_config_serves_both_classes_2_1() {
    the_nvidia_gpu_overlay_config_serves_both_classes(Version::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nvidia_gpu_overlay_config_serves_both_classes_1_7() {
    the_nvidia_gpu_overlay_config_serves_both_classes(Version::V1_7).await;
}
