//! The Helm chart's uninstall hook, end to end: the command line `helm template` renders for the
//! pre-delete Job, run against real containerd (2.1) after the daemon served a class. The Job
//! mounts containerd's socket directory, so after its restart `uninstall` sees containerd serve
//! again: the stanza is gone, containerd restarted once, nothing put back.
//!
//! `helm` is the binary scripts/validate-deploy.sh unpacks into `.cache/deploy-venv/bin` (it runs
//! before the tests in scripts/test.sh).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_nri_integration::node::{CLASS, KataNode};
use kata_nri_integration::{Version, repo_root, require_e2e};
use serde_yaml::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");

/// `helm`, or `None` (the test skips) when scripts/validate-deploy.sh has not unpacked it; with
/// `KNM_REQUIRE_E2E=1` (CI) a missing helm fails instead.
fn helm() -> Option<PathBuf> {
    let helm = repo_root().join(".cache/deploy-venv/bin/helm");
    if helm.is_file() {
        return Some(helm);
    }
    let why = format!(
        "{} missing: run scripts/validate-deploy.sh (scripts/test.sh does) first",
        helm.display()
    );
    assert!(
        std::env::var("KNM_REQUIRE_E2E").as_deref() != Ok("1"),
        "{why}"
    );
    eprintln!("skipping: {why}");
    None
}

/// The hook Job as the chart renders it with `values` (extra `--set`s).
fn rendered_hook(helm: &Path, values: &[&str]) -> Value {
    let mut command = std::process::Command::new(helm);
    command
        .args(["template", "knm"])
        .arg(repo_root().join("deploy/helm/kata-nri-manager"))
        .args(["--show-only", "templates/uninstall-hook.yaml"])
        .args(["--set", "uninstall.nodeCount=1"]);
    for value in values {
        command.args(["--set", value]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml::from_slice(&output.stdout).unwrap()
}

fn container(job: &Value) -> &Value {
    &job["spec"]["template"]["spec"]["containers"][0]
}

/// The host path mounted at `mount_path` in the hook's container.
fn host_path_at(job: &Value, mount_path: &str) -> Option<String> {
    let pod = &job["spec"]["template"]["spec"];
    let name = container(job)["volumeMounts"]
        .as_sequence()?
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(mount_path))?["name"]
        .as_str()?
        .to_owned();
    pod["volumes"]
        .as_sequence()?
        .iter()
        .find(|v| v["name"].as_str() == Some(name.as_str()))?["hostPath"]["path"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn the_hook_mounts_containerd_s_socket_where_the_config_says() {
    let Some(helm) = helm() else {
        return;
    };
    for (values, socket_dir) in [
        (vec![], "/run/containerd"),
        (
            vec!["config.containerd.address=/run/k3s/containerd/containerd.sock"],
            "/run/k3s/containerd",
        ),
    ] {
        let job = rendered_hook(&helm, &values);
        assert_eq!(
            host_path_at(&job, socket_dir).as_deref(),
            Some(socket_dir),
            "{values:?}: the hook must see containerd's socket after its restart"
        );
        for needed in [
            "/var/lib/kata-nri-manager",
            "/etc/containerd",
            "/run/dbus/system_bus_socket",
        ] {
            assert!(
                host_path_at(&job, needed).is_some(),
                "{values:?}: {needed} not mounted"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hook_s_command_line_uninstalls_against_real_containerd() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let Some(helm) = helm() else {
        return;
    };
    let job = rendered_hook(&helm, &[]);
    let args: Vec<String> = container(&job)["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args[0], "uninstall", "{args:?}");

    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = node
        .daemon(
            Path::new(PLUGIN),
            operator.clone(),
            node_config.clone(),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let config_toml = node.cd.layout().config.clone();
    let stanza = format!("runtimes.{CLASS}]");
    assert!(
        std::fs::read_to_string(&config_toml)
            .unwrap()
            .contains(&stanza)
    );

    // The pod's files, where the test keeps them: the ConfigMap's config and the node file
    // (with the state directory the daemon used, which the pod mounts at the default path).
    let files = tempfile::tempdir().unwrap();
    let operator_file = files.path().join("config.yaml");
    std::fs::write(&operator_file, &operator).unwrap();
    let node_file = files.path().join("node.yaml");
    std::fs::write(
        &node_file,
        format!(
            "stateDir: {}\n{}",
            node.state_dir().display(),
            node_config.replace("{dir}", daemon.process.dir().to_str().unwrap())
        ),
    )
    .unwrap();
    let mapped: Vec<String> = args
        .iter()
        .map(|arg| match arg.as_str() {
            "/etc/kata-nri-manager/config/config.yaml" => operator_file.display().to_string(),
            "/host/etc/kata-nri-manager/node.yaml" => node_file.display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    assert_ne!(
        mapped, args,
        "the hook's file arguments are the ones the test maps"
    );

    let restarts_before = node.restarts_requested();
    let mut uninstall = tokio::process::Command::new(PLUGIN)
        .args(&mapped)
        .arg("--containerd-binary")
        .arg(node.deps.containerd_bin(Version::V2_1))
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Carry out the restart the node's restart command asks for, as systemd would.
    let started = Instant::now();
    let mut carried = restarts_before;
    let status = loop {
        if let Some(status) = uninstall.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "uninstall hangs"
        );
        if node.restarts_requested() > carried {
            carried += 1;
            node.cd.restart().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = uninstall.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("containerd restarted and serving"),
        "{stdout}\n{stderr}"
    );
    assert!(
        !std::fs::read_to_string(&config_toml)
            .unwrap()
            .contains(&stanza),
        "the stanza is gone"
    );
    assert_eq!(
        node.restarts_requested(),
        restarts_before + 1,
        "one restart, no rollback"
    );
}
