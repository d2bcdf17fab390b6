//! The pre-registered NRI plugin layout as `deploy/nri/install.sh` installs it, against real
//! containerd 2.1 and 1.7: containerd launches the plugin from its `plugin_path` on its next start,
//! hands it the `.conf` through Configure, and the plugin sees pods.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kata_nri_integration::{
    Containerd, ContainerdOptions, PodSpec, TEST_HANDLER, Version, e2e_guard,
};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");
const INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nri/install.sh");
/// A launched instance never restarts containerd itself (containerd would stop it for good).
const CONF: &str = "containerd: {restart: {method: none}}\nruntimeClasses: []\n";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Polls the launched plugin's log for a JSON line matching `found`.
async fn wait_log_line(log: &Path, what: &str, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|line| found(line))
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in {}: {text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn installed_by_the_script_and_launched(version: Version, idx: &str) {
    let deps = e2e_guard!();
    let full_name = format!("{idx}-kata-nri-manager");
    let log = Path::new("/var/log/kata-nri-manager").join(format!("{full_name}.log"));
    let _ = std::fs::remove_file(&log);
    let mut cd = Containerd::start(&deps, version, ContainerdOptions::default())
        .await
        .unwrap();
    let plugin_dir = cd.layout().nri_plugin_dir.clone();
    let conf_dir = cd.layout().nri_plugin_config_dir.clone();

    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.yaml");
    std::fs::write(&config, CONF).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new("bash")
        .arg(INSTALL)
        .arg("--binary")
        .arg(PLUGIN)
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
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), CONF);

    // containerd launches pre-registered plugins when it starts, as after an install.
    let mark = cd.log_mark();
    cd.restart().await.unwrap();
    cd.wait_nri_registered(&full_name, mark, Duration::from_secs(10))
        .await
        .unwrap();
    let configured = wait_log_line(&log, "Configure", |line| {
        line["message"] == "configured by the runtime"
    })
    .await;
    assert_eq!(configured["config_bytes"], CONF.len());

    let mut cri = cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("preregistered").handler(TEST_HANDLER))
        .await
        .unwrap();
    wait_log_line(&log, "RunPodSandbox", |line| {
        line.to_string().contains("\"RunPodSandbox\"")
    })
    .await;

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

#[tokio::test]
async fn installed_by_the_script_and_launched_2_1() {
    installed_by_the_script_and_launched(Version::V2_1, "45").await;
}

#[tokio::test]
async fn installed_by_the_script_and_launched_1_7() {
    installed_by_the_script_and_launched(Version::V1_7, "46").await;
}
