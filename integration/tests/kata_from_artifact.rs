//! Kata itself from the artifact (`runtime.fromArtifact`), through real containerd (2.1 and 1.7):
//! an artifact shaped like kata-deploy's `kata-static` tarball (one tar layer of `opt/kata/...`)
//! carries the kata stand-in as `opt/kata/bin/containerd-shim-kata-v2` and Debian's qemu as the
//! hypervisor. Two classes (`kata-qemu`, `kata-clh`) are served from that one version, signed
//! with Debian's `cosign` and checked with the node's key:
//!
//! - both classes' first pods start on the first try, and the stand-in's records show that the
//!   shim that ran, the hypervisor and every file kata opened are the version's own;
//! - the tar layer is downloaded once for both classes;
//! - a class of the same tree without the opt-in never runs the artifact's programs: its stanza
//!   names the node's shim and its kata configuration the host's hypervisor path;
//! - an update installs a new version while a pod on the old one keeps running; new pods take
//!   the new version, and the old pod is deleted cleanly after.

use std::path::{Path, PathBuf};

use kata_nri_integration::node::{KataNode, WAIT};
use kata_nri_integration::registry::layer;
use kata_nri_integration::tarball::tar_of;
use kata_nri_integration::{Cosign, KeyPair, PodSpec, Version, require_e2e, skip};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const REPO: &str = "kata/static";
const SHIM: &str = "opt/kata/bin/containerd-shim-kata-v2";
const DEFAULTS: &str = "opt/kata/share/defaults/kata-containers";
const KERNEL_ONE: &[u8] = b"kata-static guest kernel, version one\n";
const KERNEL_TWO: &[u8] = b"kata-static guest kernel, version two\n";
const IMAGE: &[u8] = b"kata-static guest image\n";
/// A program the stand-in only checks is there and executable.
const PROGRAM: &[u8] = b"#!/bin/sh\nexit 0\n";

/// kata-deploy's configuration of a hypervisor, with its absolute `/opt/kata` paths.
fn kata_config(table: &str, hypervisor: &str) -> Vec<u8> {
    format!(
        "[hypervisor.{table}]\n\
         path = \"/opt/kata/bin/{hypervisor}\"\n\
         kernel = \"/opt/kata/share/kata-containers/vmlinux.container\"\n\
         image = \"/opt/kata/share/kata-containers/kata-containers.img\"\n\
         valid_hypervisor_paths = [\"/opt/kata/bin/{hypervisor}\"]\n\
         virtio_fs_daemon = \"/opt/kata/libexec/virtiofsd\"\n\
         valid_virtio_fs_daemon_paths = [\"/opt/kata/libexec/virtiofsd\"]\n"
    )
    .into_bytes()
}

/// The `kata-static` tree as one tar layer; `marker` makes a tree of another digest.
fn kata_static(shim: &[u8], qemu: &[u8], kernel: &[u8], marker: &[u8]) -> Vec<u8> {
    let regular = tar::EntryType::Regular;
    let qemu_toml = kata_config("qemu", "qemu-system-x86_64");
    let clh_toml = kata_config("clh", "cloud-hypervisor");
    let qemu_config = format!("{DEFAULTS}/configuration-qemu.toml");
    let clh_config = format!("{DEFAULTS}/configuration-clh.toml");
    tar_of(&[
        (SHIM, regular, 0o755, shim, None),
        (
            "opt/kata/bin/qemu-system-x86_64",
            regular,
            0o755,
            qemu,
            None,
        ),
        (
            "opt/kata/bin/cloud-hypervisor",
            regular,
            0o755,
            PROGRAM,
            None,
        ),
        ("opt/kata/libexec/virtiofsd", regular, 0o755, PROGRAM, None),
        (
            "opt/kata/share/kata-containers/vmlinux.container",
            regular,
            0o644,
            kernel,
            None,
        ),
        (
            "opt/kata/share/kata-containers/kata-containers.img",
            regular,
            0o644,
            IMAGE,
            None,
        ),
        (&qemu_config, regular, 0o644, &qemu_toml, None),
        (&clh_config, regular, 0o644, &clh_toml, None),
        ("opt/kata/VERSION", regular, 0o644, marker, None),
    ])
}

/// Pushes the tree as `REPO:tag`; returns the manifest's digest and the layer's.
fn push(node: &KataNode, tag: &str, tree: &[u8]) -> (String, String) {
    let (blob, size) = node.registry.push_blob(REPO, tree).expect("blob");
    let manifest = node
        .registry
        .push_image(&format!("{REPO}:{tag}"), &[layer(&blob, size, TAR, None)])
        .expect("manifest");
    (manifest, blob)
}

/// Successful GETs of `blob` in the registry's access log.
fn downloads(node: &KataNode, blob: &str) -> usize {
    node.registry
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{blob}")))
        .filter(|l| l.contains("\" 200 ") || l.contains("\" 206 "))
        .count()
}

/// `kata-qemu` and `kata-clh` (onDemand, kata from the signed artifact), and `kata-node` (the
/// same kind of tree under another tag, with the node's own shim).
fn configs(node: &KataNode, key: &KeyPair) -> (String, String) {
    let host = node.registry.host();
    let class = |name: &str, tag: &str, config: &str| {
        format!(
            "- name: {name}\n\
             \x20 provision: onDemand\n\
             \x20 artifacts: {{url: {host}/{REPO}:{tag}}}\n\
             \x20 runtime: {{runtimeType: io.containerd.kata.v2, privilegedWithoutHostDevices: false, configFile: {DEFAULTS}/{config}}}\n"
        )
    };
    let operator = format!(
        "listen: 127.0.0.1:0\n\
         registries: {{insecure: [\"{host}\"]}}\n\
         containerd: {{mode: inline, address: {address}}}\n\
         runtimeClasses:\n{}{}{}",
        class("kata-qemu", "1", "configuration-qemu.toml"),
        class("kata-clh", "1", "configuration-clh.toml"),
        class("kata-node", "plain", "configuration-qemu.toml"),
        address = node.cd.address().display(),
    );
    // The gate where a node keeps it, across daemon restarts: containerd's bundles of running
    // sandboxes name its path.
    let base = node.node_config(None).replace(
        "gate: {dir: {dir}/gate, socket: {dir}/run/gate.sock",
        &format!(
            "gate: {{dir: {gate}, socket: {gate}.sock",
            gate = node.dir().join("gate").display()
        ),
    );
    assert!(!base.contains("{dir}/gate"), "{base}");
    let (top, _) = base
        .split_once("runtimeClasses:\n")
        .expect("the harness's node config lists classes");
    let from_artifact = |name: &str| {
        format!(
            "- name: {name}\n\
             \x20 artifacts: {{verify: {{cosignKey: {key}}}}}\n\
             \x20 runtime: {{fromArtifact: {{shim: {SHIM}}}}}\n",
            key = key.public.display()
        )
    };
    let node_file = format!(
        "{top}runtimeClasses:\n{}{}- name: kata-node\n  runtime: {{runtimePath: {}}}\n",
        from_artifact("kata-qemu"),
        from_artifact("kata-clh"),
        node.shim().display()
    );
    (operator, node_file)
}

fn store(node: &KataNode, digest: &str) -> PathBuf {
    node.artifacts().join(".store").join(digest)
}

/// The stand-in's record of `pod`: started, by the shim inside version `digest`, with the
/// hypervisor `hypervisor` of that version and every file it opened from that version.
fn assert_kata_from_version(node: &KataNode, pod: &str, digest: &str, hypervisor: &str) -> Value {
    let record = node
        .sandbox_record(pod)
        .unwrap_or_else(|| panic!("no stand-in record of {pod}"));
    assert_eq!(record["outcome"], "started", "{record:#}");
    let version = store(node, digest);
    let shim = record["shim"].as_str().expect("the shim's path");
    let real = std::fs::canonicalize(shim).expect("the shim exists");
    assert_eq!(real, version.join(SHIM), "{pod}: the shim that ran");
    let resolution = &record["resolution"];
    assert_eq!(resolution["version"], digest, "{record:#}");
    let files = resolution["files"].as_object().expect("files");
    for (role, file) in files {
        let real = Path::new(file["real"].as_str().expect("real path"));
        assert!(
            real.starts_with(&version),
            "{pod}: {role} {} is not the version's",
            real.display()
        );
        assert_eq!(
            file["recorded"], true,
            "{pod}: {role} as the store installed it"
        );
    }
    assert_eq!(
        files["hypervisor"]["real"],
        version
            .join("opt/kata/bin")
            .join(hypervisor)
            .display()
            .to_string()
    );
    assert_eq!(
        resolution["validPaths"]["valid_hypervisor_paths"][0],
        version
            .join("opt/kata/bin")
            .join(hypervisor)
            .display()
            .to_string(),
        "the allowlist follows the path"
    );
    record
}

async fn class_digest(
    node: &KataNode,
    daemon: &kata_nri_integration::Daemon,
    operator: &str,
    node_file: &str,
    class: &str,
) -> Option<String> {
    let text = node
        .status(daemon, operator, node_file, "json")
        .await
        .ok()?;
    let status: Value = serde_json::from_str(&text).ok()?;
    status["classes"]
        .as_array()?
        .iter()
        .find(|c| c["class"] == class)?["digest"]
        .as_str()
        .map(str::to_owned)
}

async fn two_classes_from_one_signed_kata_static(version: Version) {
    let Some(deps) = require_e2e() else {
        return;
    };
    let Some(cosign) = Cosign::require(&deps) else {
        return;
    };
    let qemu = match &deps.guest {
        Ok(guest) => guest.qemu.clone(),
        Err(reason) => {
            skip(reason);
            return;
        }
    };
    let mut node = KataNode::start(deps, version).await.expect("node");
    let key = cosign.generate_key_pair("node").expect("key");
    let host = node.registry.host();
    let shim = std::fs::read(node.shim()).expect("the stand-in's wrapper");
    let qemu = std::fs::read(&qemu).expect("Debian's qemu");

    let (one, blob_one) = push(&node, "1", &kata_static(&shim, &qemu, KERNEL_ONE, b"1"));
    cosign
        .sign(&key, &format!("{host}/{REPO}@{one}"))
        .expect("sign one");
    let (plain, _) = push(
        &node,
        "plain",
        &kata_static(&shim, &qemu, KERNEL_ONE, b"plain"),
    );

    let (operator, node_file) = configs(&node, &key);
    let mut daemon = node
        .daemon(Path::new(PLUGIN), operator.clone(), node_file.clone(), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Without a pin or a key in the node file, the artifact's programs would run unchecked:
    // nothing loads, so nothing runs.
    let unchecked = node_file.replace(
        &format!(
            "  artifacts: {{verify: {{cosignKey: {}}}}}\n",
            key.public.display()
        ),
        "",
    );
    assert_ne!(unchecked, node_file);
    let refused = node
        .cli(&daemon, &operator, &unchecked, &["config", "check"])
        .await
        .expect("config check runs");
    assert!(!refused.status.success(), "config check accepted it");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("runtime.fromArtifact: the artifact's binaries would run as root unchecked"),
        "{said}"
    );
    let mut cri = node.cd.cri().await.expect("cri");

    // Both classes' first pods start on the first try, from the one version.
    let qemu_pod = cri
        .run_pod(&PodSpec::new("pod-qemu").handler("kata-qemu"))
        .await
        .unwrap_or_else(|e| panic!("kata-qemu's first pod: {e:#}\n{}", daemon.process.log()));
    cri.run_pod(&PodSpec::new("pod-clh").handler("kata-clh"))
        .await
        .unwrap_or_else(|e| panic!("kata-clh's first pod: {e:#}\n{}", daemon.process.log()));
    assert_kata_from_version(&node, "pod-qemu", &one, "qemu-system-x86_64");
    assert_kata_from_version(&node, "pod-clh", &one, "cloud-hypervisor");
    assert_eq!(
        downloads(&node, &blob_one),
        1,
        "one download for both classes\n{}",
        daemon.process.log()
    );

    // Without the opt-in the same kind of tree's programs never run: the stanza names the
    // node's shim, the configuration the host's hypervisor (absent on this node, so kata fails
    // the sandbox, as it would).
    let refused = cri
        .run_pod(&PodSpec::new("pod-node").handler("kata-node"))
        .await;
    assert!(refused.is_err(), "no qemu at /opt/kata/bin on this node");
    let record = node
        .sandbox_record("pod-node")
        .expect("the node's shim ran");
    assert_eq!(record["outcome"], "refused", "{record:#}");
    assert_eq!(
        record["shim"],
        node.shim().display().to_string(),
        "the node's shim"
    );
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("/opt/kata/bin/qemu-system-x86_64"),
        "the host's hypervisor path, not the version's: {reason}"
    );
    let containerd_config =
        std::fs::read_to_string(&node.cd.layout().config).expect("containerd's config");
    assert!(
        !containerd_config.contains(&format!("{}/{SHIM}", store(&node, &plain).display())),
        "no stanza names the version's shim"
    );
    let config = std::fs::read_to_string(
        node.artifacts()
            .join("kata-node")
            .join(DEFAULTS)
            .join("configuration-qemu.toml"),
    )
    .expect("kata-node's configuration");
    assert!(
        config.contains("path = \"/opt/kata/bin/qemu-system-x86_64\""),
        "{config}"
    );
    assert!(
        config.contains(&format!(
            "kernel = \"{}/opt/kata/share/kata-containers/vmlinux.container\"",
            store(&node, &plain).display()
        )),
        "{config}"
    );

    // `status` says where kata comes from and that the version was signed (the daemon writes
    // its report as things change: wait for the last of them).
    let version = store(&node, &one);
    let lines = [
        format!(
            "  shim: {}/kata-qemu/{SHIM} (from the version)",
            node.artifacts().display()
        ),
        format!(
            "  hypervisor: {}/opt/kata/bin/cloud-hypervisor (from the version)",
            version.display()
        ),
        format!("  shim: {} (from the node)", node.shim().display()),
        "  hypervisor: /opt/kata/bin/qemu-system-x86_64 (from the node)".to_owned(),
    ];
    let started = std::time::Instant::now();
    loop {
        let shown = node
            .status(&daemon, &operator, &node_file, "text")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let signed = shown
            .matches("  signature: verified, cosign key sha256:")
            .count();
        let unsigned = shown.matches("  signature: not checked").count();
        if lines.iter().all(|l| shown.contains(l.as_str())) && signed == 2 && unsigned == 1 {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "status never showed {lines:#?}:\n{shown}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // An update (a new signed version under the tag, taken at the daemon's next start) while
    // pod-qemu runs on version one.
    let (two, _) = push(&node, "1", &kata_static(&shim, &qemu, KERNEL_TWO, b"2"));
    cosign
        .sign(&key, &format!("{host}/{REPO}@{two}"))
        .expect("sign two");
    daemon.process.stop().await.expect("stop");
    daemon = node
        .daemon(Path::new(PLUGIN), operator.clone(), node_file.clone(), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let started = std::time::Instant::now();
    while class_digest(&node, &daemon, &operator, &node_file, "kata-qemu")
        .await
        .as_deref()
        != Some(two.as_str())
    {
        assert!(
            started.elapsed() < WAIT,
            "kata-qemu did not move to {two}\n{}",
            daemon.process.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        store(&node, &one).join(SHIM).is_file(),
        "version one stays while its pod runs"
    );
    assert_eq!(
        cri.pod_state(&qemu_pod).await.expect("pod state"),
        kata_nri_integration::cri_api::PodSandboxState::SandboxReady,
        "the pod on version one keeps running through the update"
    );
    cri.run_pod(&PodSpec::new("pod-qemu-2").handler("kata-qemu"))
        .await
        .unwrap_or_else(|e| panic!("a pod after the update: {e:#}\n{}", daemon.process.log()));
    assert_kata_from_version(&node, "pod-qemu-2", &two, "qemu-system-x86_64");

    // The pod on version one ends cleanly, through the gate and the new version's shim.
    cri.remove_pod(&qemu_pod)
        .await
        .unwrap_or_else(|e| panic!("removing the pod on version one: {e:#}"));
    cri.remove_all_pods().await.expect("cleanup");
    daemon.process.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_classes_from_one_signed_kata_static_2_1() {
    two_classes_from_one_signed_kata_static(Version::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_classes_from_one_signed_kata_static_1_7() {
    two_classes_from_one_signed_kata_static(Version::V1_7).await;
}
