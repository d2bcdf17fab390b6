//! `kata-nri-manager configure` against real containerd (2.1 and 1.7): it writes a runc-typed
//! class into the harness's config.toml, restarts containerd through the `command` strategy (the
//! command signals the test, which restarts containerd through the harness), and the new handler
//! then runs pods while a pod started before the restart keeps running. A config containerd
//! rejects is never written.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use kata_nri_integration::config::{RestartIn, write_file, write_runc_class_configs};
use kata_nri_integration::{
    Containerd, ContainerdOptions, Deps, PodSandboxState, PodSpec, RuntimeHandler, Version,
    e2e_guard,
};

const CLASS: &str = "knm-runc";

fn write(path: &Path, text: &str, mode: u32) {
    write_file(path, text, mode).unwrap();
}

/// Operator and node config for `cd`, with the given node-local `restart` (YAML flow mapping).
fn configs(dir: &Path, cd: &Containerd, restart: &str) -> (PathBuf, PathBuf) {
    write_runc_class_configs(
        dir,
        CLASS,
        cd.address(),
        &cd.layout().config,
        RestartIn::Node(restart),
    )
    .unwrap()
}

fn knm(
    deps: &Deps,
    version: Version,
    dir: &Path,
    args: &[&str],
    operator: &Path,
    node: &Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_knm-under-test"));
    cmd.args(args)
        .arg("--config")
        .arg(operator)
        .arg("--node-config")
        .arg(node)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--containerd-binary")
        .arg(deps.containerd_bin(version))
        .kill_on_drop(true);
    cmd
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn configure_and_restart(version: Version) {
    let deps = e2e_guard!();
    let mut cd = Containerd::start(&deps, version, ContainerdOptions::default())
        .await
        .expect("containerd starts");
    let mut cri = cd.cri().await.unwrap();
    let before = cri
        .run_pod(&PodSpec::new("before").handler("runc"))
        .await
        .expect("pod before the restart");

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("restart-requested");
    let restart = format!(
        "{{method: command, command: [/bin/sh, -c, 'echo >> {}'], timeout: 30s}}",
        marker.display()
    );
    let (operator, node) = configs(dir.path(), &cd, &restart);

    // Dry run: prints the diff, changes nothing.
    let original = std::fs::read_to_string(&cd.layout().config).unwrap();
    let output = knm(
        &deps,
        version,
        dir.path(),
        &["configure", "--dry-run"],
        &operator,
        &node,
    )
    .output()
    .await
    .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("+[") && stdout.contains(CLASS),
        "{}",
        text(&output)
    );
    assert_eq!(
        std::fs::read_to_string(&cd.layout().config).unwrap(),
        original
    );

    // The real run: the restart command touches the marker; the test restarts containerd.
    let child = knm(&deps, version, dir.path(), &["configure"], &operator, &node)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waited = Instant::now();
    while !marker.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "configure never ran the restart command"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cd.restart().await.expect("containerd restarts");
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let config = std::fs::read_to_string(&cd.layout().config).unwrap();
    assert!(config.contains(CLASS), "{config}");
    assert!(config.starts_with(&original[..original.find('[').unwrap()]));

    let mut cri = cd.cri().await.unwrap();
    cd.expect_serves(&mut cri, CLASS, "after")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        cri.pod_state(&before).await.unwrap(),
        PodSandboxState::SandboxReady,
        "the pod from before the restart is still running"
    );

    // A second run changes nothing and restarts nothing.
    let output = knm(&deps, version, dir.path(), &["configure"], &operator, &node)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("already up to date"),
        "{}",
        text(&output)
    );
    assert_eq!(
        std::fs::read_to_string(&cd.layout().config).unwrap(),
        config
    );

    // Uninstall without restart: the file is back to what it was.
    let output = knm(
        &deps,
        version,
        dir.path(),
        &["uninstall", "--no-restart"],
        &operator,
        &node,
    )
    .output()
    .await
    .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("restart pending"),
        "{}",
        text(&output)
    );
    assert_eq!(
        std::fs::read_to_string(&cd.layout().config).unwrap(),
        original
    );
    cd.shutdown().await.unwrap();
}

async fn rejected_config_is_never_written(version: Version) {
    let deps = e2e_guard!();
    let cd = Containerd::start(&deps, version, ContainerdOptions::default())
        .await
        .expect("containerd starts");
    // The fault: a key containerd decodes as an integer, given as a string, in the operator's
    // part of the file (the running containerd read the file before it).
    let config_path = cd.layout().config.clone();
    let good = std::fs::read_to_string(&config_path).unwrap();
    let version_line = good.lines().find(|l| l.starts_with("version")).unwrap();
    let faulty = good.replacen(
        version_line,
        &format!("{version_line}\noom_score = \"very high\""),
        1,
    );
    std::fs::write(&config_path, &faulty).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (operator, node) = configs(dir.path(), &cd, "{method: none}");
    let output = knm(&deps, version, dir.path(), &["configure"], &operator, &node)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("containerd refuses the new config"),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains("oom_score") || stderr.contains("very high") || stderr.contains("int"),
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), faulty);
    assert!(!dir.path().join("state/containerd-ownership.json").exists());
    cd.shutdown().await.unwrap();
}

#[tokio::test]
async fn configure_then_command_restart_serves_the_class_on_2_1() {
    configure_and_restart(Version::V2_1).await;
}

#[tokio::test]
async fn configure_then_command_restart_serves_the_class_on_1_7() {
    configure_and_restart(Version::V1_7).await;
}

#[tokio::test]
async fn a_config_containerd_rejects_is_never_written_on_2_1() {
    rejected_config_is_never_written(Version::V2_1).await;
}

#[tokio::test]
async fn a_config_containerd_rejects_is_never_written_on_1_7() {
    rejected_config_is_never_written(Version::V1_7).await;
}

/// The restart command's runs, as the test sees them: each run appends a line to `marker`.
async fn wait_for_runs(marker: &Path, runs: usize) {
    let waited = Instant::now();
    loop {
        let seen = std::fs::read_to_string(marker)
            .map(|text| text.lines().count())
            .unwrap_or(0);
        if seen >= runs {
            return;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "configure ran the restart command {seen} times, not {runs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// containerd does not come back after the restart onto the new config: the backup is
/// restored, the command runs again (and containerd comes back), and configure fails saying so.
async fn restart_that_never_serves_is_rolled_back(version: Version) {
    let deps = e2e_guard!();
    let mut cd = Containerd::start(&deps, version, ContainerdOptions::default())
        .await
        .expect("containerd starts");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("restart-requested");
    let restart = format!(
        "{{method: command, command: [/bin/sh, -c, 'echo >> {}'], timeout: 3s}}",
        marker.display()
    );
    let (operator, node) = configs(dir.path(), &cd, &restart);
    let original = std::fs::read(&cd.layout().config).unwrap();

    let child = knm(&deps, version, dir.path(), &["configure"], &operator, &node)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // First run (new config): containerd goes down and stays down past the timeout.
    wait_for_runs(&marker, 1).await;
    cd.stop().await.expect("containerd stops");
    // Second run (the restored config): containerd comes back.
    wait_for_runs(&marker, 2).await;
    assert_eq!(
        std::fs::read(&cd.layout().config).unwrap(),
        original,
        "the backup is back before the second restart"
    );
    cd.start_again().await.expect("containerd starts again");
    let output = child.wait_with_output().await.unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("containerd did not serve again") && stderr.contains("within 3s"),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains("the previous containerd config was restored and containerd restarted"),
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::read(&cd.layout().config).unwrap(), original);

    // containerd serves the old config: the class is unknown to it.
    let mut cri = cd.cri().await.unwrap();
    if version == Version::V2_1 {
        let status = cri.status().await.unwrap();
        assert!(
            !status.runtime_handlers.iter().any(|h| h == CLASS),
            "{:?}",
            status.runtime_handlers
        );
    }
    let err = cri
        .run_pod(&PodSpec::new("after").handler(CLASS))
        .await
        .expect_err("the class is not served after the rollback");
    assert!(format!("{err:#}").contains("no runtime for"), "{err:#}");
    cri.run_pod(&PodSpec::new("runc").handler("runc"))
        .await
        .expect("containerd still runs pods");
    cd.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_that_never_serves_is_rolled_back_on_2_1() {
    restart_that_never_serves_is_rolled_back(Version::V2_1).await;
}

#[tokio::test]
async fn a_restart_that_never_serves_is_rolled_back_on_1_7() {
    restart_that_never_serves_is_rolled_back(Version::V1_7).await;
}

/// containerd restarts but reads another file than the one configure wrote (a node whose
/// `containerd.configPath` is wrong): CRI Status does not list the class, so the restart counts
/// as failed, the written file is restored, and configure says what containerd serves.
#[tokio::test]
async fn a_restart_that_does_not_serve_the_class_is_rolled_back_on_2_1() {
    let deps = e2e_guard!();
    let version = Version::V2_1;
    let mut cd = Containerd::start(&deps, version, ContainerdOptions::default())
        .await
        .expect("containerd starts");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("restart-requested");
    let restart = format!(
        "{{method: command, command: [/bin/sh, -c, 'echo >> {}'], timeout: 5s}}",
        marker.display()
    );
    let (operator, node) = configs(dir.path(), &cd, &restart);
    // The node config names a copy: containerd never reads it.
    let copy = dir.path().join("config-copy.toml");
    std::fs::copy(&cd.layout().config, &copy).unwrap();
    let node_text = std::fs::read_to_string(&node).unwrap().replace(
        &cd.layout().config.display().to_string(),
        &copy.display().to_string(),
    );
    write(&node, &node_text, 0o600);
    let original = std::fs::read(&copy).unwrap();

    let child = knm(&deps, version, dir.path(), &["configure"], &operator, &node)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_runs(&marker, 1).await;
    assert_ne!(
        std::fs::read(&copy).unwrap(),
        original,
        "the stanza was written"
    );
    cd.restart()
        .await
        .expect("containerd restarts (on its own file)");
    wait_for_runs(&marker, 2).await;
    cd.restart().await.expect("containerd restarts again");
    let output = child.wait_with_output().await.unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "does not serve the runtime handler(s) {CLASS} (CRI Status lists:"
        )) && stderr.contains("is containerd reading the config file that was written?"),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains("the previous containerd config was restored"),
        "{}",
        text(&output)
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        original,
        "the written file is restored"
    );
    cd.shutdown().await.unwrap();
}

/// A stanza of the class's name that the node wrote itself stops configure, byte for byte
/// untouched, until the node config says `runtime.adopt: true`; then it is replaced and ours.
#[tokio::test]
async fn the_nodes_own_stanza_is_only_replaced_when_adopted() {
    let deps = e2e_guard!();
    let version = Version::V2_1;
    let node_own = RuntimeHandler::runc(CLASS).pod_annotation("io.example.node-own");
    let cd = Containerd::start(
        &deps,
        version,
        ContainerdOptions::default().handler(node_own),
    )
    .await
    .expect("containerd starts");
    let dir = tempfile::tempdir().unwrap();
    let (operator, node) = configs(dir.path(), &cd, "{method: none}");
    let original = std::fs::read_to_string(&cd.layout().config).unwrap();
    assert!(original.contains("io.example.node-own"), "{original}");

    let output = knm(&deps, version, dir.path(), &["configure"], &operator, &node)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!(
            "already has a runtime \"{CLASS}\" that kata-nri-manager did not create: set runtime.adopt: true"
        )),
        "{}",
        text(&output)
    );
    assert_eq!(
        std::fs::read_to_string(&cd.layout().config).unwrap(),
        original
    );

    let node_text = std::fs::read_to_string(&node).unwrap().replace(
        "runtime: {runtimeType: io.containerd.runc.v2}",
        "runtime: {runtimeType: io.containerd.runc.v2, adopt: true}",
    );
    assert!(node_text.contains("adopt: true"), "{node_text}");
    write(&node, &node_text, 0o600);
    let output = knm(&deps, version, dir.path(), &["configure"], &operator, &node)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!(
            "runtime class {CLASS}: the node's stanza taken over (runtime.adopt)"
        )),
        "{}",
        text(&output)
    );
    let config = std::fs::read_to_string(&cd.layout().config).unwrap();
    assert!(!config.contains("io.example.node-own"), "{config}");
    assert!(
        config.contains("privileged_without_host_devices = false"),
        "{config}"
    );
    let record =
        std::fs::read_to_string(dir.path().join("state/containerd-ownership.json")).unwrap();
    assert!(record.contains(CLASS), "{record}");
    // For scripts: one JSON document; a second run has nothing to do.
    let output = knm(
        &deps,
        version,
        dir.path(),
        &["configure", "--output", "json"],
        &operator,
        &node,
    )
    .output()
    .await
    .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(report["result"], "unchanged", "{report}");
    assert_eq!(report["changes"], serde_json::json!([]), "{report}");
    assert_eq!(report["config"], cd.layout().config.display().to_string());
    cd.shutdown().await.unwrap();
}

/// `uninstall` on a node kata-nri-manager never configured: nothing recorded, so containerd's
/// file (here one without a `version` and no containerd binary to ask) is neither read nor
/// touched, and the command says so.
#[tokio::test]
async fn uninstall_with_nothing_recorded_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let original = "# the node's own containerd config\n[plugins]\n";
    write(&config, original, 0o644);
    let operator = dir.path().join("operator.yaml");
    write(
        &operator,
        "runtimeClasses:\n- name: knm-x\n  artifacts: {url: nvcr.io/kata/x:1}\n",
        0o644,
    );
    let node = dir.path().join("node.yaml");
    write(
        &node,
        &format!(
            "containerd:\n  configPath: {}\n  restart: {{method: none}}\n",
            config.display()
        ),
        0o600,
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_knm-under-test"))
        .arg("uninstall")
        .arg("--config")
        .arg(&operator)
        .arg("--node-config")
        .arg(&node)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--containerd-binary")
        .arg(dir.path().join("no-containerd"))
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("nothing of kata-nri-manager's to remove"),
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
}

/// `uninstall` on a labelled node whose node file was never put there (the Helm chart's hook
/// runs on every labelled node): the daemon never configured it, so there is nothing to remove
/// and the hook must not fail. Were stanzas recorded all the same, the command refuses to guess
/// where containerd's config is.
#[tokio::test]
async fn uninstall_without_the_node_file() {
    let dir = tempfile::tempdir().unwrap();
    let operator = dir.path().join("operator.yaml");
    write(
        &operator,
        "runtimeClasses:\n- name: knm-x\n  artifacts: {url: nvcr.io/kata/x:1}\n",
        0o644,
    );
    let state = dir.path().join("state");
    let missing = dir.path().join("no-such-node.yaml");
    let uninstall = || {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_knm-under-test"));
        cmd.arg("uninstall")
            .arg("--config")
            .arg(&operator)
            .arg("--node-config")
            .arg(&missing)
            .arg("--state-dir")
            .arg(&state)
            .arg("--containerd-binary")
            .arg(dir.path().join("no-containerd"));
        cmd
    };
    let output = uninstall().output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("nothing of kata-nri-manager's to remove"),
        "{}",
        text(&output)
    );

    std::fs::create_dir_all(&state).unwrap();
    write(
        &state.join("containerd-ownership.json"),
        "{\"format\": 1, \"runtimes\": [\"knm-x\"]}\n",
        0o600,
    );
    let output = uninstall().output().await.unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "the node file {} is missing, but {} records stanzas",
            missing.display(),
            state.join("containerd-ownership.json").display()
        )),
        "{}",
        text(&output)
    );
}

/// The CDI spec the daemon writes for GPU classes goes with the classes; another tool's spec in
/// the same directory stays.
#[tokio::test]
async fn uninstall_removes_our_cdi_spec_only() {
    let dir = tempfile::tempdir().unwrap();
    let cdi = dir.path().join("cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    write(
        &cdi.join("kata-nri-manager-nvidia.com-pgpu.json"),
        "{}",
        0o644,
    );
    write(&cdi.join("nvidia.com-gpu.yaml"), "{}", 0o644);
    let operator = dir.path().join("operator.yaml");
    write(
        &operator,
        "runtimeClasses:\n- name: knm-gpu\n  artifacts: {url: nvcr.io/kata/x:1}\n",
        0o644,
    );
    let node = dir.path().join("node.yaml");
    write(
        &node,
        &format!(
            "containerd:\n  configPath: {}\n  restart: {{method: none}}\ncdi: {{dir: {}}}\n",
            dir.path().join("config.toml").display(),
            cdi.display()
        ),
        0o600,
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_knm-under-test"))
        .arg("uninstall")
        .arg("--config")
        .arg(&operator)
        .arg("--node-config")
        .arg(&node)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("removed the CDI spec"),
        "{}",
        text(&output)
    );
    assert!(!cdi.join("kata-nri-manager-nvidia.com-pgpu.json").exists());
    assert!(cdi.join("nvidia.com-gpu.yaml").exists());
}
