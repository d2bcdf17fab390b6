//! The README's end-to-end demo: a real containerd 2.1 with NRI, a local registry holding a
//! runtime class's artifacts (a real guest: Debian's kernel and a busybox initramfs), the
//! kata-nri-manager daemon, and a pod of that `onDemand` class that starts on its first try, its
//! artifacts pulled while the sandbox start waits at the gate. The class's shim is the kata
//! stand-in: it resolves the configuration as kata does, checks every file against the store's
//! record, and boots the resolved kernel and initrd under KVM before the sandbox starts. The
//! demo prints what kata would load and the guest's boot; then `status`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use kata_nri_integration::node::{ARTIFACT, CLASS};
use kata_nri_integration::{Deps, KataNode, PodSpec, Version};

#[tokio::main]
async fn main() -> Result<()> {
    let deps = Deps::from_env().map_err(|reason| {
        anyhow::anyhow!(
            "{}: run `bash scripts/install-deps.sh` as root first",
            reason.0
        )
    })?;
    let plugin_bin = sibling_binary("knm-under-test")?;

    println!(
        "==> starting a registry with the artifacts of runtime class {CLASS}, and containerd 2.1 (NRI on)"
    );
    let mut node = KataNode::start(deps, Version::V2_1).await?;
    let kernel = node.push_guest()?;
    println!(
        "    artifacts: {}/{ARTIFACT} (vmlinux: Debian's kernel, initrd.img: a busybox guest, configuration-guest.toml)",
        node.registry.host()
    );

    println!("==> starting kata-nri-manager with {CLASS} as an onDemand class");
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = node
        .daemon(&plugin_bin, operator.clone(), node_config.clone(), &[])
        .await?;
    println!(
        "    containerd got the {CLASS} stanza (runtime_path: the gate) and restarted once; the plugin is registered"
    );
    anyhow::ensure!(
        node.installed().is_none(),
        "artifacts present before any pod"
    );
    println!("    artifacts on disk: none yet");

    println!("==> creating a pod with runtimeClassName {CLASS} (through CRI, as kubelet would)");
    let mut cri = node.cd.cri().await?;
    let started = Instant::now();
    let id = cri
        .run_pod(&PodSpec::new("demo").handler(CLASS))
        .await
        .with_context(|| format!("daemon log:\n{}", daemon.process.log()))?;
    println!(
        "    pod sandbox {} is ready after {:.2}s, on the first try",
        &id[..12],
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        node.installed().is_some(),
        "the class's artifacts are not installed"
    );
    println!(
        "    artifacts installed: {}",
        node.artifacts().join(CLASS).display()
    );
    let record = node
        .kata_used("demo", None, &kernel)
        .context("what kata would have loaded")?;
    let r = &record["resolution"];
    let file = |role: &str| r["files"][role]["path"].as_str().unwrap_or("?").to_owned();
    let name = |role: &str| {
        let path = file(role);
        path.rsplit('/').next().unwrap_or(&path).to_owned()
    };
    println!(
        "    kata would load configuration {} (the stanza's {}),",
        file("configuration"),
        r["source"].as_str().unwrap_or("?"),
    );
    println!(
        "      boot kernel {} and initrd {} with {}, all from version {},",
        name("kernel"),
        name("initrd"),
        file("hypervisor"),
        r["version"].as_str().unwrap_or("?"),
    );
    println!("      each file's sha256 as the store recorded it at install");
    let guest = &record["guest"];
    let accel = match guest["accel"].as_str() {
        Some("kvm") => "under KVM",
        // This machine kind's /dev/kvm is paravirtual and cannot run a stock kernel.
        _ => "under qemu's software emulation (no hardware KVM here)",
    };
    println!(
        "    the guest kernel pulled from the registry booted: Linux {} {accel}, /init's marker after {} ms",
        guest["kernel"].as_str().unwrap_or("?"),
        guest["bootMs"],
    );

    // The status file is written within a second of a change.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    println!("==> kata-nri-manager status");
    print!(
        "{}",
        node.status(&daemon, &operator, &node_config, "text")
            .await?
    );

    cri.stop_pod(&id).await?;
    cri.remove_pod(&id).await?;
    daemon.process.stop().await?;
    println!("==> done: containerd, the registry, the daemon and the pod are cleaned up");
    Ok(())
}

/// A binary built next to this one (same cargo target directory).
fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it with `cargo build -p kata-nri-integration --bins`",
        path.display()
    );
    Ok(path)
}
