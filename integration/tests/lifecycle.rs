//! Artifact lifecycle end to end (issue 9): a tag that moves, `updatePolicy: onStart`,
//! `rollback`, `keepVersions` and the collection of retired versions, against real containerd
//! 2.1, a real registry and the daemon as a process. The stand-in kata shim notes which version
//! the class's link pointed at when each sandbox started. Also a changed config file, applied by
//! the daemon restarting itself in place (containerd 2.1 and 1.7).

use std::path::Path;
use std::time::Duration;

use kata_nri_integration::node::{
    self, ARTIFACT, CLASS, KATA_TOML, KataNode, ROOTFS, STAND_IN_KATA_VERSION, class_status,
};
use kata_nri_integration::{PodSandboxState, PodSpec, Version, require_e2e};
use kata_nri_manager::artifacts::KATA_VERSION_ANNOTATION;
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");
const V2: &[u8] = b"stand-in guest kernel, second version\n";
const V3: &[u8] = b"stand-in guest kernel, third version\n";

async fn daemon(node: &mut KataNode, operator: &str, node_config: &str) -> node::Daemon {
    node.daemon(
        Path::new(PLUGIN),
        operator.to_owned(),
        node_config.to_owned(),
        &[("KATA_NRI_MANAGER_GC_GRACE", "1s")],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn status(node: &KataNode, d: &node::Daemon, operator: &str, node_config: &str) -> Value {
    let text = node
        .status(d, operator, node_config, "json")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status: Value = serde_json::from_str(&text).unwrap();
    class_status(&status).cloned().unwrap()
}

/// Pushes a new version of the artifact under the same tag; returns its digest.
fn move_tag(node: &KataNode, vmlinux: &[u8]) -> String {
    node.registry
        .push_files(
            ARTIFACT,
            &[
                ("vmlinux", vmlinux),
                ("rootfs.img", ROOTFS),
                ("configuration-test.toml", KATA_TOML),
            ],
        )
        .unwrap()
}

fn record(node: &KataNode) -> Value {
    let path = node
        .artifacts()
        .join(".state")
        .join(format!("{CLASS}.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn version_dir(node: &KataNode, digest: &str) -> std::path::PathBuf {
    node.artifacts().join(".store").join(digest)
}

/// Panics unless kata, for pod `pod`, loaded `kernel` from version `version` through the
/// stanza's `ConfigPath`.
fn assert_kata_used(node: &KataNode, pod: &str, version: &str, kernel: &[u8]) {
    node.kata_used(pod, Some(version), kernel)
        .unwrap_or_else(|e| panic!("pod {pod}: {e:#}\n{:?}", node.sandbox_record(pod)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_tag_updates_on_start_rolls_back_and_retires_unused_versions() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let operator = node
        .operator_config(
            &node.registry.host(),
            "eager",
            "limits: {keepVersions: 1}\n",
        )
        .replace(
            "  provision: eager\n",
            "  provision: eager\n  updatePolicy: onStart\n",
        );
    let node_config = node.node_config(None);
    let mut cri = node.cd.cri().await.unwrap();

    // Version 1, and a pod running on it.
    let first = daemon(&mut node, &operator, &node_config).await;
    first
        .wait_until("the class is ready", async || {
            first.http("/readyz").await.map(|r| r.0).unwrap_or(0) == 200
        })
        .await
        .unwrap();
    let mut shown = Value::Null;
    first
        .wait_until("status shows the installed digest", async || {
            shown = status(&node, &first, &operator, &node_config).await;
            shown["digest"].is_string()
        })
        .await
        .unwrap();
    let v1 = shown["digest"].as_str().unwrap().to_owned();
    let old_pod = cri
        .run_pod(&PodSpec::new("on-v1").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.cd.log_tail(30)));
    assert_kata_used(&node, "on-v1", &v1, node::VMLINUX);

    // The tag moves while the daemon runs: with onStart nothing changes, and a pod's prepare
    // annotation takes the installed version without asking the registry.
    let v2 = move_tag(&node, V2);
    let manifests = node.registry.manifest_requests();
    cri.run_pod(
        &PodSpec::new("preparer")
            .handler("runc")
            .annotation("kata-nri-manager.io/prepare", CLASS),
    )
    .await
    .unwrap();
    first
        .process
        .wait_for_events(1, node::WAIT, |e| {
            e["message"] == "prepared on a pod's request"
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", first.process.log()));
    assert_eq!(node.registry.manifest_requests(), manifests);
    assert_ne!(node.installed().as_deref(), Some(V2));
    first.process.stop().await.unwrap();

    // The next start installs version 2; the pod on version 1 keeps running; new pods use 2.
    let second = daemon(&mut node, &operator, &node_config).await;
    second
        .wait_until("version 2 is installed", async || {
            node.installed().as_deref() == Some(V2)
        })
        .await
        .unwrap();
    second
        .wait_until("status shows version 2", async || {
            shown = status(&node, &second, &operator, &node_config).await;
            shown["digest"] == v2.as_str()
        })
        .await
        .unwrap();
    assert_eq!(shown["previous"], serde_json::json!([v1]), "{shown}");
    assert_eq!(
        cri.pod_state(&old_pod).await.unwrap(),
        PodSandboxState::SandboxReady
    );
    let new_pod = cri
        .run_pod(&PodSpec::new("on-v2").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.cd.log_tail(30)));
    assert_kata_used(&node, "on-v2", &v2, V2);
    second.process.stop().await.unwrap();

    // Version 3 retires version 1 (keepVersions: 1), which the old pod may still run on.
    let v3 = move_tag(&node, V3);
    let third = daemon(&mut node, &operator, &node_config).await;
    third
        .wait_until("version 3 is installed", async || {
            node.installed().as_deref() == Some(V3)
        })
        .await
        .unwrap();
    let kept = record(&node);
    assert_eq!(kept["previous"], serde_json::json!([v2]), "{kept}");
    assert_eq!(kept["retired"], serde_json::json!([v1]), "{kept}");
    // Several collection periods (1 s with this grace) pass: the old pod holds version 1.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        version_dir(&node, &v1).is_dir(),
        "a version a sandbox may run on is kept\n{}",
        third.process.log()
    );
    cri.stop_pod(&old_pod).await.unwrap();
    cri.remove_pod(&old_pod).await.unwrap();
    third
        .wait_until("version 1 is collected", async || {
            !version_dir(&node, &v1).exists()
        })
        .await
        .unwrap();
    assert!(version_dir(&node, &v2).is_dir(), "the kept version stays");
    assert!(record(&node).get("retired").is_none());

    // rollback: back to version 2 at once, no network, no containerd restart.
    let manifests = node.registry.manifest_requests();
    let restarts = node.restarts_requested();
    let out = node
        .cli(&third, &operator, &node_config, &["rollback", CLASS])
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("rolled back from {v3} to {v2}")),
        "{said}"
    );
    assert_eq!(node.installed().as_deref(), Some(V2));
    assert_eq!(node.registry.manifest_requests(), manifests);
    assert_eq!(node.restarts_requested(), restarts);
    let mut shown = status(&node, &third, &operator, &node_config).await;
    assert_eq!(shown["digest"], v2.as_str(), "{shown}");
    assert_eq!(shown["previous"], serde_json::json!([v3]), "{shown}");
    cri.run_pod(&PodSpec::new("after-rollback").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.cd.log_tail(30)));
    assert_kata_used(&node, "after-rollback", &v2, V2);
    third.process.stop().await.unwrap();

    // The next start resolves the tag to version 3 again and holds it back.
    let fourth = daemon(&mut node, &operator, &node_config).await;
    fourth
        .wait_until("the update is held back", async || {
            shown = status(&node, &fourth, &operator, &node_config).await;
            shown["heldBack"] == v3.as_str()
        })
        .await
        .unwrap();
    assert_eq!(shown["digest"], v2.as_str(), "{shown}");
    assert_eq!(node.installed().as_deref(), Some(V2));
    let text = node
        .status(&fourth, &operator, &node_config, "text")
        .await
        .unwrap();
    assert!(text.contains(&format!("held back: {v3}")), "{text}");

    // A second rollback undoes the first.
    node.cli_ok(&fourth, &operator, &node_config, &["rollback", CLASS])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(node.installed().as_deref(), Some(V3));
    drop(new_pod);
    cri.remove_all_pods().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_refuses_without_a_previous_version_and_with_a_changed_file() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let operator = node.operator_config(&node.registry.host(), "eager", "");
    let node_config = node.node_config(None);
    let d = daemon(&mut node, &operator, &node_config).await;
    d.wait_until("the class is installed", async || {
        node.installed().is_some()
    })
    .await
    .unwrap();
    let rollback = async || {
        node.cli(&d, &operator, &node_config, &["rollback", CLASS])
            .await
            .unwrap()
    };
    let out = rollback().await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(err.contains("no previous version is kept"), "{err}");

    let v2 = move_tag(&node, V2);
    node.cli_ok(&d, &operator, &node_config, &["pull", CLASS])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(node.installed().as_deref(), Some(V2));
    // The stanza's ConfigPath follows the pulled version.
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("after-pull").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.cd.log_tail(30)));
    assert_kata_used(&node, "after-pull", &v2, V2);
    cri.remove_all_pods().await.unwrap();
    let v1 = record(&node)["previous"][0].as_str().unwrap().to_owned();
    // Someone edits a file of the kept version: rolling back onto it is refused.
    std::fs::write(version_dir(&node, &v1).join("rootfs.img"), b"tampered").unwrap();
    let out = rollback().await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("rootfs.img of {v1} changed on disk")),
        "{err}"
    );
    assert_eq!(node.installed().as_deref(), Some(V2));
    assert_eq!(record(&node)["manifestDigest"], v2.as_str());
    let unknown = node
        .cli(&d, &operator, &node_config, &["rollback", "no-such-class"])
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("not a runtime class of the config"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_skew_shows_in_status_and_refuse_keeps_it_from_being_current() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let requirement = format!("{KATA_VERSION_ANNOTATION}=9.9.9");
    node.registry
        .push_annotated(
            ARTIFACT,
            &[
                ("vmlinux", node::VMLINUX),
                ("rootfs.img", ROOTFS),
                ("configuration-test.toml", KATA_TOML),
            ],
            &[&requirement],
        )
        .unwrap();
    let warn = node.operator_config(&node.registry.host(), "eager", "");
    let refuse = warn.replace(
        "  provision: eager\n",
        "  provision: eager\n  versionSkew: refuse\n",
    );
    let node_config = node.node_config(None);
    let skew = format!(
        "the artifact needs kata 9.9.9; {} is kata {STAND_IN_KATA_VERSION}",
        node.shim().display()
    );

    let refusing = daemon(&mut node, &refuse, &node_config).await;
    let mut shown = Value::Null;
    refusing
        .wait_until("status shows the skew", async || {
            shown = status(&node, &refusing, &refuse, &node_config).await;
            shown["lastError"]
                .as_str()
                .is_some_and(|e| e.contains(&skew))
        })
        .await
        .unwrap();
    assert_eq!(shown["state"], "failed", "{shown}");
    assert!(node.installed().is_none(), "not made current");
    refusing.process.stop().await.unwrap();

    let warning = daemon(&mut node, &warn, &node_config).await;
    warning
        .wait_until("installed with the skew reported", async || {
            shown = status(&node, &warning, &warn, &node_config).await;
            shown["state"] == "ready"
        })
        .await
        .unwrap();
    assert_eq!(shown["versionSkew"], skew.as_str(), "{shown}");
    assert!(node.installed().is_some());
    let text = node
        .status(&warning, &warn, &node_config, "text")
        .await
        .unwrap();
    assert!(text.contains(&format!("  version skew: {skew}")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mirror_in_containerds_hosts_toml_serves_the_daemon_while_the_upstream_is_down() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    // The class names an upstream where nothing listens; only containerd's own registry
    // configuration (config_path → certs.d/<upstream>/hosts.toml) knows the mirror.
    let upstream = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let certs = node.dir().join("certs.d");
    let hosts = certs.join(&upstream);
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"http://{upstream}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            node.registry.host()
        ),
    )
    .unwrap();
    let config = &node.cd.layout().config;
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"{}\"\n",
        certs.display()
    ));
    std::fs::write(config, text).unwrap();

    let operator = node.operator_config(&upstream, "eager", "");
    let node_config = node.node_config(None);
    let d = daemon(&mut node, &operator, &node_config).await;
    d.wait_until("the class is installed", async || {
        node.installed().is_some()
    })
    .await
    .unwrap();
    assert_eq!(node.installed().as_deref(), Some(node::VMLINUX));
    assert_eq!(
        record(&node)["servedBy"],
        node.registry.host(),
        "{}",
        record(&node)
    );
    assert!(
        node.registry.log().contains(&format!("ns={upstream}")),
        "the mirror was asked on behalf of the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interval_update_policy_takes_a_moved_tag_without_a_restart() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let operator = node
        .operator_config(&node.registry.host(), "onDemand", "")
        .replace(
            "  provision: onDemand\n",
            "  provision: onDemand\n  updatePolicy: 1s\n",
        );
    let node_config = node.node_config(None);
    let d = daemon(&mut node, &operator, &node_config).await;
    // Not installed: an onDemand class is not pulled by an update check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(node.installed().is_none());
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("first").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.process.log()));
    let v2 = move_tag(&node, V2);
    d.wait_until("the interval check installed version 2", async || {
        node.installed().as_deref() == Some(V2)
    })
    .await
    .unwrap();
    assert_eq!(record(&node)["manifestDigest"], v2.as_str());
    d.process
        .wait_for_events(1, node::WAIT, |e| {
            e["message"] == "updated to a new version" && e["digest"] == v2.as_str()
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    cri.run_pod(&PodSpec::new("second").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.process.log()));
    assert_kata_used(&node, "second", &v2, V2);
    cri.remove_all_pods().await.unwrap();
}

/// A changed config file is applied while the daemon runs: it replaces itself (same PID, as
/// kubelet and systemd see it) and the new run syncs containerd with the changed stanza and
/// sweeps what interrupted pulls left. A broken file before that changes nothing and is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_config_is_applied_in_place_and_a_broken_one_changes_nothing_2_1() {
    a_changed_config_is_applied_in_place_and_a_broken_one_changes_nothing(Version::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_config_is_applied_in_place_and_a_broken_one_changes_nothing_1_7() {
    a_changed_config_is_applied_in_place_and_a_broken_one_changes_nothing(Version::V1_7).await;
}

async fn a_changed_config_is_applied_in_place_and_a_broken_one_changes_nothing(version: Version) {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, version).await.unwrap();
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let d = daemon(&mut node, &operator, &node_config).await;
    let pid = d.process.pid();
    // Written beside and renamed over, as kubelet swaps a ConfigMap's files.
    let write = |text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let file = d.process.config_file();
        let next = file.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&next, &file).unwrap();
    };
    let stanza_privileged = |node: &KataNode| {
        std::fs::read_to_string(&node.cd.layout().config)
            .unwrap()
            .contains("privileged_without_host_devices = true")
    };
    assert!(!stanza_privileged(&node));

    write("runtimeClasses: [{name: kata-test, artifacts: {url: ]\n");
    d.process
        .wait_for_events(1, node::WAIT, |e| {
            e["message"]
                == "config change rejected: still running the config the daemon started with"
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        d.metric("kata_nri_manager_config_rejected").await.unwrap(),
        1.0
    );
    assert_eq!(
        d.process.events_with_message("daemon started").len(),
        1,
        "a broken config restarted the daemon\n{}",
        d.process.log()
    );

    // What a pull cut short by a kill leaves behind; the new run removes it.
    let leftover = node.artifacts().join(".staging").join("kata-test-leftover");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("blob"), b"partial").unwrap();

    let requested = node.restarts_requested();
    write(&operator.replace(
        "privilegedWithoutHostDevices: false",
        "privilegedWithoutHostDevices: true",
    ));
    // The new run writes the stanza and asks for a containerd restart, which this node's
    // restart command leaves to the test.
    d.wait_until("the new run asked for a containerd restart", async || {
        node.restarts_requested() > requested
    })
    .await
    .unwrap();
    node.cd.restart().await.unwrap();
    d.wait_until("the new run started", async || {
        d.process.events_with_message("daemon started").len() == 2
    })
    .await
    .unwrap();
    assert_eq!(d.process.pid(), pid, "restarted in place, not respawned");
    assert!(!leftover.exists(), "{}", d.process.log());
    assert!(stanza_privileged(&node), "{}", d.process.log());
    let changed = d.process.events_with_message("config changed");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["changed"], "[\"runtimeClasses\"]");
    assert_eq!(
        d.metric("kata_nri_manager_config_rejected").await.unwrap(),
        0.0
    );
}
