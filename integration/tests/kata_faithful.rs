//! The kata stand-in's negative controls: the checks every other end-to-end test relies on must
//! be able to fail. Through real containerd (2.1 and 1.7), a kata-typed stanza whose shim is the
//! stand-in refuses a sandbox when kata would not boot what kata-nri-manager installed:
//! - a stanza without `ConfigPath` (kata would fall back to the node's default configuration);
//! - a `ConfigPath` whose configuration names a host kernel and image, not installed files;
//! - an installed kernel replaced after the install (not the bytes the store recorded).
//!
//! Each refusal is one line in the pod's error and a `refused` record.
//!
//! And the positive control that matters most: a real guest (Debian's kernel and a busybox
//! initramfs) pulled from the registry is what the stand-in boots before the sandbox starts.

use std::path::Path;

use kata_nri_integration::node::{self, CLASS, KataNode, VMLINUX};
use kata_nri_integration::{
    Containerd, ContainerdOptions, PodSpec, RuntimeHandler, Version, require_e2e,
};

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");

/// The refusal of pod `pod`: the CRI error (which must carry `why`) and the stand-in's record.
async fn refused(
    cri: &mut kata_nri_integration::Cri,
    records: &Path,
    pod: &str,
    handler: &str,
    why: &str,
) {
    let err = cri
        .run_pod(&PodSpec::new(pod).handler(handler))
        .await
        .expect_err("kata would not start this sandbox");
    let message = format!("{err:#}");
    assert!(
        message.contains("kata-shim-stand-in refused sandbox") && message.contains(why),
        "{message}"
    );
    let text = std::fs::read_to_string(records.join("sandboxes.jsonl")).unwrap();
    let record: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .rfind(|r: &serde_json::Value| r["pod"] == pod)
        .unwrap_or_else(|| panic!("no record of {pod}: {text}"));
    assert_eq!(record["outcome"], "refused", "{record}");
    assert!(record["reason"].as_str().unwrap().contains(why), "{record}");
}

async fn stanzas_without_config_path_or_naming_host_files_are_refused(version: Version) {
    let Some(deps) = require_e2e() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("stand-in");
    let shim = dir.path().join("containerd-shim-kata-v2");
    node::write_stand_in_wrapper(&shim, &records, &deps.runc_shim_bin(version), None, false)
        .unwrap();
    // A configuration kata would happily boot, but of host files: nothing the store installed.
    let kernel = dir.path().join("vmlinuz-host");
    let image = dir.path().join("host.img");
    std::fs::write(&kernel, b"the node's own kernel").unwrap();
    std::fs::write(&image, b"the node's own image").unwrap();
    let host_toml = dir.path().join("configuration.toml");
    std::fs::write(
        &host_toml,
        format!(
            "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"{}\"\nimage = \"{}\"\nshared_fs = \"none\"\n",
            kernel.display(),
            image.display()
        ),
    )
    .unwrap();
    let options = ContainerdOptions::default()
        .handler(RuntimeHandler::new("kata-no-config", "io.containerd.kata.v2").runtime_path(&shim))
        .handler(
            RuntimeHandler::new("kata-host-files", "io.containerd.kata.v2")
                .runtime_path(&shim)
                .options(format!("ConfigPath = \"{}\"", host_toml.display())),
        );
    let cd = Containerd::start(&deps, version, options).await.unwrap();
    let mut cri = cd.cri().await.unwrap();

    refused(
        &mut cri,
        &records,
        "no-config",
        "kata-no-config",
        "no kata configuration",
    )
    .await;
    refused(
        &mut cri,
        &records,
        "host-kernel",
        "kata-host-files",
        &format!(
            "kernel {} is not an installed artifact file",
            kernel.display()
        ),
    )
    .await;
    // What arrived, and where: containerd sent kata's options type, with the path, to `Create`.
    let text = std::fs::read_to_string(records.join("sandboxes.jsonl")).unwrap();
    let host: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|r: &serde_json::Value| r["pod"] == "host-kernel")
        .unwrap();
    assert_eq!(
        host["createOptions"]["typeUrl"], "runtimeoptions.v1.Options",
        "{host}"
    );
    assert_eq!(
        host["createOptions"]["configPath"],
        host_toml.to_str().unwrap(),
        "{host}"
    );
    assert_eq!(
        host["startOptions"]["configPath"],
        host_toml.to_str().unwrap(),
        "{host}"
    );
    cri.remove_all_pods().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stanzas_without_config_path_or_naming_host_files_are_refused_2_1() {
    stanzas_without_config_path_or_naming_host_files_are_refused(Version::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stanzas_without_config_path_or_naming_host_files_are_refused_1_7() {
    stanzas_without_config_path_or_naming_host_files_are_refused(Version::V1_7).await;
}

/// An installed kernel replaced on disk (same path, other bytes) is refused; the intact install
/// before it was not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kernel_replaced_after_install_is_refused() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let operator = node.operator_config(&node.registry.host(), "eager", "");
    let node_config = node.node_config(None);
    let daemon = node
        .daemon(Path::new(PLUGIN), operator, node_config, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    daemon
        .wait_until("the class is installed", async || {
            node.installed().is_some()
        })
        .await
        .unwrap();
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("intact").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    node.kata_used("intact", None, VMLINUX)
        .unwrap_or_else(|e| panic!("{e:#}"));

    // The daemon repairs a class in use whose files changed (the intact pod's NRI event starts
    // that check): stopped, it cannot race the replacement. The eager class's stanza names the
    // shim directly, so pods still start without it.
    daemon.process.stop().await.unwrap();
    let kernel = node.artifacts().join(CLASS).join("vmlinux");
    std::fs::write(&kernel, b"a kernel nobody installed\n").unwrap();
    refused(
        &mut cri,
        &node.stand_in_dir(),
        "replaced",
        CLASS,
        "is not the file the store installed",
    )
    .await;
    cri.remove_all_pods().await.unwrap();
}

/// The artifact is a real guest: the onDemand pod starts only after the kernel and initrd kata
/// resolved from the pulled version booted and the guest's `/init` printed its marker. Under KVM
/// with hardware virtualization, else under qemu's software emulation (`guest.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_pulled_from_the_registry_boots_before_its_sandbox_starts() {
    let Some(deps) = require_e2e() else {
        return;
    };
    if let Err(reason) = &deps.guest {
        assert!(
            std::env::var(kata_nri_integration::REQUIRE_E2E_ENV).as_deref() != Ok("1"),
            "no guest to boot: {reason}"
        );
        eprintln!(
            "SKIPPED: a_guest_pulled_from_the_registry_boots_before_its_sandbox_starts: {reason}"
        );
        return;
    }
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let kernel = node.push_guest().unwrap();
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = node
        .daemon(Path::new(PLUGIN), operator, node_config, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("booted").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.process.log()));
    let record = node
        .kata_used("booted", None, &kernel)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let guest = &record["guest"];
    assert_eq!(guest["marker"], "KNM-GUEST-BOOTED", "{record}");
    assert!(
        guest["kernel"]
            .as_str()
            .is_some_and(|k| k.ends_with("-amd64")),
        "the guest reported the kernel it runs: {record}"
    );
    assert!(
        record["resolution"]["files"]["initrd"]["recorded"] == true,
        "{record}"
    );
    cri.remove_all_pods().await.unwrap();
}
