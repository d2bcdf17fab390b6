//! The README's end-to-end demo: a real containerd 2.1 with NRI, kata-nri-manager registered as
//! an NRI plugin, and a pod whose annotation asks for a runtime class; prints what the plugin saw.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kata_nri_integration::{
    Containerd, ContainerdOptions, Deps, PluginOptions, PluginProcess, PodSpec, TEST_HANDLER,
    Version,
};

#[tokio::main]
async fn main() -> Result<()> {
    let deps = Deps::from_env().map_err(|reason| {
        anyhow::anyhow!(
            "{}: run `bash scripts/install-deps.sh` as root first",
            reason.0
        )
    })?;
    let plugin_bin = sibling_binary("knm-under-test")?;

    println!("==> starting containerd 2.1 (NRI enabled) on a temp dir");
    let cd = Containerd::start(&deps, Version::V2_1, ContainerdOptions::default()).await?;
    println!("    NRI socket: {}", cd.nri_socket().display());

    println!("==> starting kata-nri-manager and waiting for it to register");
    let opts = PluginOptions::default();
    let mark = cd.log_mark();
    let plugin = PluginProcess::start(&plugin_bin, cd.nri_socket(), &opts)?;
    cd.wait_nri_registered(&opts.full_name(), mark, Duration::from_secs(10))
        .await
        .with_context(|| format!("plugin log:\n{}", plugin.log()))?;
    println!("    containerd: plugin \"{}\" registered", opts.full_name());

    println!("==> creating a pod that asks for runtime class kata-qemu");
    let mut cri = cd.cri().await?;
    let id = cri
        .run_pod(
            &PodSpec::new("demo")
                .handler(TEST_HANDLER)
                .annotation("kata-nri-manager.io/prepare", "kata-qemu"),
        )
        .await?;
    println!("    pod sandbox {id} is ready");

    let seen = plugin
        .wait_for_events(1, Duration::from_secs(10), |e| {
            e["event"] == "RunPodSandbox" && e["pod_id"] == id.as_str()
        })
        .await?;
    println!("==> the plugin saw the pod:");
    println!("{}", serde_json::to_string_pretty(&seen[0])?);

    cri.stop_pod(&id).await?;
    cri.remove_pod(&id).await?;
    plugin.stop().await?;
    println!("==> done: containerd, the plugin and the pod are cleaned up");
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
