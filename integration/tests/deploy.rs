//! The pre-registered NRI plugin layout as `deploy/nri/install.sh` installs it, against real
//! containerd 2.1 and 1.7: containerd launches the plugin from its `plugin_path` on its next
//! start, hands it the `.conf` through Configure, and the plugin does its job: it writes the
//! `onDemand` class's stanza (restart pending: a launched plugin never restarts containerd), and
//! after the operator's restart a pod of the class starts on its first try, its artifacts pulled
//! at the gate.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kata_nri_integration::node::{ARTIFACT, CLASS, VMLINUX};
use kata_nri_integration::{KataNode, NO_KERNEL_MODULES, PodSpec, Version, require_e2e};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");
const GATE: &str = env!("CARGO_BIN_EXE_knm-gate-under-test");
const INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nri/install.sh");

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Polls the launched plugin's log for `count` JSON lines matching `found`.
async fn wait_log_lines(log: &Path, what: &str, count: usize, found: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let seen = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|line| found(line))
            .count();
        if seen >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} (×{count}) in {}: {text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn installed_by_the_script_and_launched(version: Version, idx: &str) {
    let Some(deps) = require_e2e() else {
        return;
    };
    let full_name = format!("{idx}-kata-nri-manager");
    let log = Path::new("/var/log/kata-nri-manager").join(format!("{full_name}.log"));
    let _ = std::fs::remove_file(&log);
    let work = tempfile::tempdir().unwrap();
    let mut node = KataNode::start(deps, version).await.unwrap();
    let plugin_dir = node.cd.layout().nri_plugin_dir.clone();
    let conf_dir = node.cd.layout().nri_plugin_config_dir.clone();
    let registry = node.registry.host();

    // One trusted file (root's, 0600): a launched plugin has no --node-config.
    let conf_text = format!(
        "listen: 127.0.0.1:0\n\
         artifactsDir: {artifacts}\n\
         stateDir: {work}/state\n\
         registries: {{insecure: [\"{registry}\"]}}\n\
         containerd:\n\
         \x20 configPath: {config}\n\
         \x20 address: {address}\n\
         \x20 mode: inline\n\
         \x20 restart: {{method: none}}\n\
         gate: {{dir: {work}/gate, socket: {work}/run/gate.sock}}\n\
         policies: {{dir: {work}/policies.d}}\n\
         {NO_KERNEL_MODULES}\
         runtimeClasses:\n\
         - name: {CLASS}\n\
         \x20 provision: onDemand\n\
         \x20 artifacts: {{url: {registry}/{ARTIFACT}}}\n\
         \x20 runtime: {{runtimeType: io.containerd.kata.v2, runtimePath: {shim}, privilegedWithoutHostDevices: false}}\n",
        artifacts = node.artifacts().display(),
        config = node.cd.layout().config.display(),
        address = node.cd.address().display(),
        work = work.path().display(),
        shim = node.shim().display(),
    );
    let config = work.path().join("config.yaml");
    std::fs::write(&config, &conf_text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new("bash")
        .arg(INSTALL)
        .arg("--binary")
        .arg(PLUGIN)
        .arg("--gate-binary")
        .arg(GATE)
        .arg("--config")
        .arg(&config)
        .args(["--index", idx])
        .arg("--plugin-path")
        .arg(&plugin_dir)
        .arg("--conf-dir")
        .arg(&conf_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "install.sh failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // No warning: the config sets restart method none.
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    let installed = plugin_dir.join(&full_name);
    let conf = conf_dir.join(format!("{full_name}.conf"));
    assert_eq!(mode(&installed), 0o755);
    assert_eq!(mode(&conf), 0o600);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), conf_text);

    // containerd launches pre-registered plugins when it starts, as after an install.
    let mark = node.cd.log_mark();
    node.cd.restart().await.unwrap();
    node.cd
        .wait_nri_registered(&full_name, mark, Duration::from_secs(10))
        .await
        .unwrap();
    wait_log_lines(&log, "Configure with the .conf", 1, |line| {
        line["message"] == "configured by the runtime" && line["config_bytes"] == conf_text.len()
    })
    .await;
    // Its job, launched: the stanza is written, and the restart left to the operator.
    wait_log_lines(&log, "daemon started", 1, |line| {
        line["message"] == "daemon started"
    })
    .await;
    let written = std::fs::read_to_string(&node.cd.layout().config).unwrap();
    assert!(written.contains(CLASS), "stanza written:\n{written}");
    wait_log_lines(&log, "a pending restart", 1, |line| {
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("restart pending"))
    })
    .await;

    // The operator restarts containerd; the relaunched plugin finds everything in place.
    let mark = node.cd.log_mark();
    node.cd.restart().await.unwrap();
    node.cd
        .wait_nri_registered(&full_name, mark, Duration::from_secs(10))
        .await
        .unwrap();
    wait_log_lines(&log, "a second start", 2, |line| {
        line["message"] == "daemon started"
    })
    .await;
    assert!(
        node.installed().is_none(),
        "nothing pulled before a pod asks"
    );
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("preregistered").handler(CLASS))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    assert_eq!(node.installed().as_deref(), Some(VMLINUX));
    node.kata_used("preregistered", None, VMLINUX)
        .unwrap_or_else(|e| panic!("{e:#}"));
    cri.remove_all_pods().await.unwrap();

    // --uninstall removes both files; containerd no longer launches the plugin after a restart.
    let output = Command::new("bash")
        .arg(INSTALL)
        .args(["--uninstall", "--index", idx])
        .arg("--plugin-path")
        .arg(&plugin_dir)
        .arg("--conf-dir")
        .arg(&conf_dir)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(!installed.exists() && !conf.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn installed_by_the_script_and_launched_2_1() {
    installed_by_the_script_and_launched(Version::V2_1, "45").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn installed_by_the_script_and_launched_1_7() {
    installed_by_the_script_and_launched(Version::V1_7, "46").await;
}
