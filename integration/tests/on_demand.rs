//! The daemon end to end: real containerd (2.1 and 1.7), a real registry, the daemon as a
//! process, pods through CRI. The class's real shim is the harness's kata stand-in
//! (`kata_nri_integration::node`): it resolves the sandbox's kata configuration as kata does and
//! refuses the sandbox unless every file kata would open is the store's installed, recorded file.
//! Every pod of the class that starts here is checked for what kata would have loaded.

use std::path::Path;
use std::time::Duration;

use kata_nri_integration::node::{
    self, ARTIFACT, CLASS, KATA_TOML, KataNode, VMLINUX, WAIT, class_status,
};
use kata_nri_integration::{CutProxy, PodSpec, Version, require_e2e};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");

async fn start(version: Version) -> Option<KataNode> {
    let deps = require_e2e()?;
    Some(
        KataNode::start(deps, version)
            .await
            .expect("containerd and the registry start"),
    )
}

async fn daemon(
    node: &mut KataNode,
    operator: &str,
    node_config: &str,
    env: &[(&str, &str)],
) -> node::Daemon {
    node.daemon(
        Path::new(PLUGIN),
        operator.to_owned(),
        node_config.to_owned(),
        env,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn metric(daemon: &node::Daemon, sample: &str) -> f64 {
    daemon.metric(sample).await.unwrap()
}

async fn readyz(daemon: &node::Daemon) -> u16 {
    daemon.http("/readyz").await.unwrap().0
}

async fn status_json(
    node: &KataNode,
    d: &node::Daemon,
    operator: &str,
    node_config: &str,
) -> Value {
    let text = node
        .status(d, operator, node_config, "json")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    serde_json::from_str(&text).unwrap()
}

/// Panics unless kata, for pod `pod`, loaded the class's current version through `ConfigPath`.
fn assert_kata_used(node: &KataNode, pod: &str) {
    node.kata_used(pod, None, VMLINUX)
        .unwrap_or_else(|e| panic!("pod {pod}: {e:#}\n{:?}", node.sandbox_record(pod)));
}

/// A sandbox start while the daemon is being restarted (a DaemonSet update, a crash) waits for
/// it: the daemon is stopped, a pod of the class starts, the daemon comes back 3 s later, and the
/// pod starts on its first try. The gate stays where a node keeps it across the restart.
async fn a_start_during_a_daemon_restart_waits_for_the_daemon(version: Version) {
    let Some(mut node) = start(version).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let gate = node.dir().join("gate");
    let node_config = node.node_config(None).replace(
        "gate: {dir: {dir}/gate, socket: {dir}/run/gate.sock",
        &format!(
            "gate: {{dir: {}, socket: {}.sock",
            gate.display(),
            gate.display()
        ),
    );
    assert!(!node_config.contains("{dir}/gate"), "{node_config}");
    let first = daemon(&mut node, &operator, &node_config, &[]).await;
    first.process.stop().await.expect("stop");

    let socket = node.cd.address().to_path_buf();
    let cgroup = node.cd.cgroup_base().to_owned();
    let pod = tokio::spawn(async move {
        let mut cri = kata_nri_integration::Cri::connect(socket, cgroup)
            .await
            .unwrap();
        cri.run_pod(&PodSpec::new("during-restart").handler(CLASS))
            .await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!pod.is_finished(), "the start waits for the daemon");
    let second = daemon(&mut node, &operator, &node_config, &[]).await;
    pod.await
        .unwrap()
        .unwrap_or_else(|e| panic!("the start failed: {e:#}\n{}", second.process.log()));
    assert_kata_used(&node, "during-restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_during_a_daemon_restart_waits_for_the_daemon_2_1() {
    a_start_during_a_daemon_restart_waits_for_the_daemon(Version::V2_1).await;
}

/// A ready class whose installed kernel was cut short since (a disk fault, a person) is repaired
/// before the sandbox that would boot it: the gate finds the recorded size off, asks the daemon,
/// and the pod starts on its first try with the kernel as installed.
async fn a_damaged_ready_class_is_repaired_before_the_start(version: Version) {
    let Some(mut node) = start(version).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = daemon(&mut node, &operator, &node_config, &[]).await;
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("first").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("first pod: {e:#}\n{}", daemon.process.log()));
    assert_kata_used(&node, "first");

    let kernel = std::fs::canonicalize(node.artifacts().join(CLASS).join("vmlinux")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&kernel)
        .and_then(|f| f.set_len(3))
        .unwrap();
    let gets = node.registry.blob_gets();
    cri.run_pod(&PodSpec::new("after-damage").handler(CLASS))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the start after the damage: {e:#}\n{}",
                daemon.process.log()
            )
        });
    assert_kata_used(&node, "after-damage");
    assert_eq!(
        std::fs::read(&kernel).unwrap(),
        VMLINUX,
        "repaired in place"
    );
    assert!(node.registry.blob_gets() > gets, "pulled again by digest");
    cri.remove_all_pods().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_ready_class_is_repaired_before_the_start_2_1() {
    a_damaged_ready_class_is_repaired_before_the_start(Version::V2_1).await;
}

const PULLED: &str = "kata_nri_manager_artifact_downloads_total{class=\"knm-kata\"}";

async fn on_demand_pods_start_on_the_first_try(version: Version, pods: usize) {
    let Some(mut node) = start(version).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = daemon(&mut node, &operator, &node_config, &[]).await;
    assert_eq!(node.restarts_requested(), 1, "one restart for the stanza");
    assert!(
        node.installed().is_none(),
        "nothing pulled before a pod asks"
    );
    let gets_before = node.registry.blob_gets();

    // `pods` sandboxes of the class at once, on an empty node: each starts on its first try.
    let mut starts = Vec::new();
    for i in 0..pods {
        let socket = node.cd.address().to_path_buf();
        let cgroup = node.cd.cgroup_base().to_owned();
        starts.push(tokio::spawn(async move {
            let mut cri = kata_nri_integration::Cri::connect(socket, cgroup)
                .await
                .unwrap();
            cri.run_pod(&PodSpec::new(format!("od-{i}")).handler(CLASS))
                .await
        }));
    }
    for start in starts {
        start
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}\n{}", node.cd.log_tail(40)));
    }
    assert_eq!(node.installed().as_deref(), Some(VMLINUX));
    for i in 0..pods {
        assert_kata_used(&node, &format!("od-{i}"));
    }
    assert_eq!(
        metric(&daemon, PULLED).await,
        1.0,
        "one pull for {pods} pods"
    );
    // The starts that asked the daemon waited at the gate, and the wait was measured.
    let waited = "kata_nri_manager_gate_wait_seconds_count{class=\"knm-kata\",result=\"ready\"}";
    assert!(
        metric(&daemon, waited).await >= 1.0,
        "no gate wait observed"
    );
    assert_eq!(metric(&daemon, "kata_nri_manager_nri_connected").await, 1.0);
    let pulled_at =
        "kata_nri_manager_artifact_last_successful_pull_timestamp_seconds{class=\"knm-kata\"}";
    assert!(
        metric(&daemon, pulled_at).await > 1.7e9,
        "no last successful pull time"
    );
    assert_eq!(
        node.registry.blob_gets() - gets_before,
        3,
        "each file downloaded once"
    );

    // status: ready, digest, the pods using it (NRI saw them).
    let mut status = Value::Null;
    daemon
        .wait_until("status lists every pod", async || {
            status = status_json(&node, &daemon, &operator, &node_config).await;
            class_status(&status).and_then(|c| c["pods"].as_array().map(Vec::len)) == Some(pods)
        })
        .await
        .unwrap();
    let class = class_status(&status).unwrap();
    assert_eq!(status["daemonRunning"], true);
    assert_eq!(class["state"], "ready");
    assert_eq!(class["provision"], "onDemand");
    assert!(
        class["digest"].as_str().unwrap().starts_with("sha256:"),
        "{class}"
    );
    assert_eq!(readyz(&daemon).await, 200);
    let text = node
        .status(&daemon, &operator, &node_config, "text")
        .await
        .unwrap();
    assert!(text.contains("daemon: running"), "{text}");
    assert!(
        text.contains(&format!("{CLASS}  onDemand  serve")),
        "{text}"
    );
    node.cd
        .cri()
        .await
        .unwrap()
        .remove_all_pods()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_pods_start_on_the_first_try_2_1() {
    on_demand_pods_start_on_the_first_try(Version::V2_1, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_pods_start_on_the_first_try_1_7() {
    on_demand_pods_start_on_the_first_try(Version::V1_7, 3).await;
}

async fn an_eager_class_is_ready_after_start(version: Version) {
    let Some(mut node) = start(version).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "eager", "");
    let node_config = node.node_config(None);
    let daemon = daemon(&mut node, &operator, &node_config, &[]).await;
    daemon
        .wait_until("/readyz says ready", async || readyz(&daemon).await == 200)
        .await
        .unwrap();
    assert_eq!(node.installed().as_deref(), Some(VMLINUX));
    let config = std::fs::read_to_string(&node.cd.layout().config).unwrap();
    // An eager class runs its real shim directly, no gate.
    assert!(
        config.contains(&node.shim().display().to_string()),
        "{config}"
    );
    let mut cri = node.cd.cri().await.unwrap();
    node.cd
        .expect_serves(&mut cri, CLASS, "eager")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_kata_used(&node, "eager");
    // For scripts: 0 while the daemon runs and no class has failed.
    assert_eq!(
        node.status_code(&daemon, &operator, &node_config)
            .await
            .unwrap(),
        0
    );
    cri.remove_all_pods().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_eager_class_is_ready_after_start_2_1() {
    an_eager_class_is_ready_after_start(Version::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_eager_class_is_ready_after_start_1_7() {
    an_eager_class_is_ready_after_start(Version::V1_7).await;
}

async fn a_prepare_annotation_on_any_pod_makes_the_class_ready(version: Version) {
    let Some(mut node) = start(version).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = daemon(&mut node, &operator, &node_config, &[]).await;
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("preparer").handler("runc").annotation(
        "kata-nri-manager.io/prepare",
        format!("{CLASS}, not-a-class"),
    ))
    .await
    .unwrap();
    daemon
        .wait_until("the annotation's class is installed", async || {
            node.installed().is_some()
        })
        .await
        .unwrap();
    assert_eq!(node.installed().as_deref(), Some(VMLINUX));
    daemon
        .wait_until("the pull is counted", async || {
            metric(&daemon, PULLED).await == 1.0
        })
        .await
        .unwrap();
    // The unknown class is reported, not fatal.
    daemon
        .process
        .wait_for_events(1, WAIT, |e| {
            e["message"] == "prepare annotation not honoured" && e["runtime_class"] == "not-a-class"
        })
        .await
        .unwrap();
    cri.run_pod(&PodSpec::new("after-prepare").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_kata_used(&node, "after-prepare");
    assert_eq!(
        metric(&daemon, PULLED).await,
        1.0,
        "prepared, not pulled again"
    );
    cri.remove_all_pods().await.unwrap();
}

async fn a_policy_denial_fails_the_start_with_the_policy_and_reason(version: Version) {
    let Some(mut node) = start(version).await else {
        return;
    };
    let policies = node.dir().join("policies.d");
    std::fs::create_dir_all(&policies).unwrap();
    let built = kata_nri_integration::built_policy("namespace_gate");
    std::fs::copy(&built, policies.join("10-namespace-gate.wasm")).unwrap();
    let operator = node.operator_config(
        &node.registry.host(),
        "onDemand",
        &format!(
            "policies:\n  settings: {{namespace-gate: {{namespaces: [ml-team], classes: [{CLASS}]}}}}\n"
        ),
    );
    let node_config = node.node_config(Some(&policies));
    let daemon = daemon(&mut node, &operator, &node_config, &[]).await;
    let mut cri = node.cd.cri().await.unwrap();
    let err = cri
        .run_pod(&PodSpec::new("outsider").handler(CLASS).namespace("team-b"))
        .await
        .expect_err("a pod outside the listed namespaces is refused");
    let message = format!("{err:#}");
    assert!(
        message.contains("namespace-gate") && message.contains("team-b"),
        "the error names the policy and the reason: {message}"
    );
    assert!(
        node.installed().is_none(),
        "nothing pulled for a denied pod"
    );
    assert_eq!(metric(&daemon, PULLED).await, 0.0);
    assert!(
        node.sandbox_record("outsider").is_none(),
        "a denied pod never reaches kata"
    );
    cri.run_pod(&PodSpec::new("insider").handler(CLASS).namespace("ml-team"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.process.log()));
    assert_eq!(node.installed().as_deref(), Some(VMLINUX));
    assert_kata_used(&node, "insider");
    cri.remove_all_pods().await.unwrap();
}

async fn a_daemon_killed_mid_pull_leaves_no_partial_files_and_recovers(version: Version) {
    let Some(mut node) = start(version).await else {
        return;
    };
    let upstream = node.registry.host().parse().unwrap();
    let proxy = CutProxy::start(upstream).await.unwrap();
    // Big enough that a blob is mid-transfer when the registry stalls.
    let big = vec![7u8; 4 << 20];
    node.registry
        .push_files(
            ARTIFACT,
            &[
                ("vmlinux", VMLINUX),
                ("rootfs.img", &big),
                ("configuration-test.toml", KATA_TOML),
            ],
        )
        .unwrap();
    proxy.hold_after(1 << 20);
    let operator = node.operator_config(&proxy.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let first = daemon(&mut node, &operator, &node_config, &[]).await;
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(
        &PodSpec::new("preparer")
            .handler("runc")
            .annotation("kata-nri-manager.io/prepare", CLASS),
    )
    .await
    .unwrap();
    first
        .wait_until("the pull stalls mid-blob", async || proxy.held() > 0)
        .await
        .unwrap();
    let pid = first.process.pid().unwrap();
    // SAFETY: kill(2) on the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = first.process.stop().await;
    assert!(
        std::fs::symlink_metadata(node.artifacts().join(CLASS)).is_err(),
        "no class link before the install completes"
    );
    // The blob store (`.store/blobs`) may hold the interrupted download's temp file, which the
    // next start sweeps; a version is a `.store/<digest>` directory.
    let versions: Vec<_> = std::fs::read_dir(node.artifacts().join(".store"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|name| name != "blobs")
                .collect()
        })
        .unwrap_or_default();
    assert!(versions.is_empty(), "no version in the store: {versions:?}");

    proxy.release();
    // The annotated pod is still there: the new daemon's Synchronize prepares the class again.
    let second = daemon(&mut node, &operator, &node_config, &[]).await;
    second
        .wait_until("the class is installed", async || {
            node.installed().is_some()
        })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(node.artifacts().join(CLASS).join("rootfs.img")).unwrap(),
        big
    );
    cri.run_pod(&PodSpec::new("after-recovery").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", second.process.log()));
    let record = node.kata_used("after-recovery", None, VMLINUX).unwrap();
    let image = &record["resolution"]["files"]["image"];
    assert_eq!(
        image["sha256"].as_str().unwrap(),
        format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&big)),
        "kata reads the whole image: {image}"
    );
    cri.remove_all_pods().await.unwrap();
}

async fn a_class_removed_from_the_config_loses_its_stanza_then_its_artifacts(version: Version) {
    let Some(mut node) = start(version).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let first = daemon(&mut node, &operator, &node_config, &[]).await;
    let mut cri = node.cd.cri().await.unwrap();
    let pod = cri
        .run_pod(&PodSpec::new("user").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", first.process.log()));
    assert!(node.installed().is_some());
    assert_kata_used(&node, "user");
    let _ = first.process.stop().await;

    let empty = format!(
        "listen: 127.0.0.1:0\ncontainerd: {{mode: inline, address: {}}}\nruntimeClasses: []\n",
        node.cd.address().display()
    );
    let without_class = node_config[..node_config.find("runtimeClasses:").unwrap()].to_owned();
    let restarts = node.restarts_requested();
    let second = daemon(
        &mut node,
        &empty,
        &without_class,
        &[("KATA_NRI_MANAGER_GC_GRACE", "1s")],
    )
    .await;
    assert_eq!(node.restarts_requested(), restarts + 1, "one restart");
    let config = std::fs::read_to_string(&node.cd.layout().config).unwrap();
    assert!(!config.contains(CLASS), "stanza removed:\n{config}");

    // A pod of the class still runs: its artifacts stay, well past the grace period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        node.installed().is_some(),
        "artifacts kept while a pod uses them"
    );
    cri.stop_pod(&pod).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
    let store_is_empty = || {
        std::fs::read_dir(node.artifacts().join(".store"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    };
    // Removal order: the link, each version, then the record (see ArtifactStore::remove).
    let record = node
        .artifacts()
        .join(".state")
        .join(format!("{CLASS}.json"));
    second
        .wait_until("the artifacts are collected", async || !record.exists())
        .await
        .unwrap();
    assert!(node.installed().is_none(), "the class link is gone");
    assert!(store_is_empty(), "every version removed");
    second
        .wait_until("the removal is counted", async || {
            metric(
                &second,
                "kata_nri_manager_gc_removed_classes_total{class=\"knm-kata\"}",
            )
            .await
                == 1.0
        })
        .await
        .unwrap();
    assert!(
        metric(
            &second,
            "kata_nri_manager_gc_removed_versions_total{class=\"knm-kata\"}",
        )
        .await
            >= 1.0,
        "the class's versions are counted too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prepare_annotation_on_any_pod_makes_the_class_ready_2_1() {
    a_prepare_annotation_on_any_pod_makes_the_class_ready(Version::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prepare_annotation_on_any_pod_makes_the_class_ready_1_7() {
    a_prepare_annotation_on_any_pod_makes_the_class_ready(Version::V1_7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_denial_fails_the_start_with_the_policy_and_reason_2_1() {
    a_policy_denial_fails_the_start_with_the_policy_and_reason(Version::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_denial_fails_the_start_with_the_policy_and_reason_1_7() {
    a_policy_denial_fails_the_start_with_the_policy_and_reason(Version::V1_7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_killed_mid_pull_leaves_no_partial_files_and_recovers_2_1() {
    a_daemon_killed_mid_pull_leaves_no_partial_files_and_recovers(Version::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_killed_mid_pull_leaves_no_partial_files_and_recovers_1_7() {
    a_daemon_killed_mid_pull_leaves_no_partial_files_and_recovers(Version::V1_7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_class_removed_from_the_config_loses_its_stanza_then_its_artifacts_2_1() {
    a_class_removed_from_the_config_loses_its_stanza_then_its_artifacts(Version::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_class_removed_from_the_config_loses_its_stanza_then_its_artifacts_1_7() {
    a_class_removed_from_the_config_loses_its_stanza_then_its_artifacts(Version::V1_7).await;
}
