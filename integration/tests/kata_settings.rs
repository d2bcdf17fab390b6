//! Policies' kata settings end to end (issue 5): the example `kata-settings` policy sizes the
//! class; the daemon renders the values beside the class's `runtime.configFile` in the installed
//! version (`.kata-settings/<fingerprint>/…`) and points containerd's stanza at the rendering.
//! A change of settings is a new file and a new stanza, never a file changed under a sandbox;
//! the CLI, which runs no policies, renders the recorded settings into what it installs.

use std::path::{Path, PathBuf};

use kata_nri_integration::node::{self, ARTIFACT, CLASS, KATA_TOML, KataNode, ROOTFS};
use kata_nri_integration::{PodSpec, Version, built_policy, require_e2e};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");
const CONFIG_FILE: &str = "configuration-test.toml";

async fn daemon(node: &mut KataNode, operator: &str, node_config: &str) -> node::Daemon {
    node.daemon(
        Path::new(PLUGIN),
        operator.to_owned(),
        node_config.to_owned(),
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The eager class with `configFile`, sized by the `kata-settings` policy.
fn operator(node: &KataNode, vcpus: u32) -> String {
    let settings = format!(
        "policies:\n  settings: {{kata-settings: {{classes: {{{CLASS}: {{defaultVcpus: {vcpus}, memorySlots: 16, guestKernelParams: quiet}}}}}}}}\n"
    );
    node.operator_config(&node.registry.host(), "eager", &settings)
        .replace(
            "privilegedWithoutHostDevices: false}",
            &format!("privilegedWithoutHostDevices: false, configFile: {CONFIG_FILE}}}"),
        )
}

/// The renderings in the class's current version: `.kata-settings/<fingerprint>/<configFile>`.
fn renderings(node: &KataNode) -> Vec<PathBuf> {
    let dir = node.artifacts().join(CLASS).join(".kata-settings");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path().join(CONFIG_FILE)).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// Panics unless kata, for pod `pod`, booted `kernel` from the class's current version through
/// the stanza's `ConfigPath`, and that configuration was the one the stanza names now (a policy's
/// rendering); returns the configuration's text as kata read it.
fn assert_kata_used(node: &KataNode, pod: &str, kernel: &[u8]) -> String {
    let record: Value = node
        .kata_used(pod, None, kernel)
        .unwrap_or_else(|e| panic!("pod {pod}: {e:#}\n{:?}", node.sandbox_record(pod)));
    let config = &record["resolution"]["files"]["configuration"];
    assert_eq!(
        config["path"],
        stanza_config_path(node).as_str(),
        "{record}"
    );
    std::fs::read_to_string(config["real"].as_str().unwrap()).unwrap()
}

fn stanza_config_path(node: &KataNode) -> String {
    let config = std::fs::read_to_string(&node.cd.layout().config).unwrap();
    config
        .lines()
        .find_map(|line| line.trim().strip_prefix("ConfigPath = "))
        .unwrap_or_else(|| panic!("no ConfigPath in containerd's config:\n{config}"))
        .trim_matches('"')
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_settings_are_rendered_beside_the_configuration_and_named_by_the_stanza() {
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1).await.unwrap();
    let policies = node.dir().join("policies.d");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(
        built_policy("kata_settings"),
        policies.join("10-kata-settings.wasm"),
    )
    .unwrap();
    let node_config = node.node_config(Some(&policies));

    let (operator2, operator4) = (operator(&node, 2), operator(&node, 4));
    let first = daemon(&mut node, &operator2, &node_config).await;
    first
        .wait_until("the class is installed and served", async || {
            node.installed().is_some() && renderings(&node).len() == 1
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", first.process.log()));
    let rendered = renderings(&node).remove(0);
    let text = std::fs::read_to_string(&rendered).unwrap();
    for expected in [
        "default_vcpus = 2",
        "memory_slots = 16",
        "kernel_params = \"quiet\"",
        "path = \"/usr/bin/qemu-system-x86_64\"",
    ] {
        assert!(text.contains(expected), "{expected} in:\n{text}");
    }
    let own = std::fs::read_to_string(node.artifacts().join(CLASS).join(CONFIG_FILE)).unwrap();
    assert!(
        !own.contains("default_vcpus") && own.contains("shared_fs = \"none\""),
        "the artifact's own configuration is left as shipped (its paths pointed at the version):\n{own}"
    );
    first
        .wait_until("containerd's stanza names the rendering", async || {
            std::fs::read_to_string(&node.cd.layout().config)
                .is_ok_and(|c| c.contains(".kata-settings"))
        })
        .await
        .unwrap();
    let named = stanza_config_path(&node);
    assert_eq!(
        Path::new(&named),
        node.artifacts()
            .join(CLASS)
            .join(rendered.strip_prefix(node.artifacts().join(CLASS)).unwrap())
    );
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.artifacts().join(format!(".state/{CLASS}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["kataSettings"],
        serde_json::json!([
            {"key": "default-vcpus", "value": 2},
            {"key": "memory-slots", "value": 16},
            {"key": "guest-kernel-params", "value": "quiet"},
        ]),
        "{record}"
    );
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("sized").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.cd.log_tail(30)));
    assert!(assert_kata_used(&node, "sized", node::VMLINUX).contains("default_vcpus = 2"));
    first.process.stop().await.unwrap();

    // New settings: a second rendering in the same version, no download; the first stays for
    // the sandbox started on it, and the stanza names the new one.
    let blob_gets = node.registry.blob_gets();
    let second = daemon(&mut node, &operator4, &node_config).await;
    second
        .wait_until("the new settings are rendered", async || {
            renderings(&node).len() == 2
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", second.process.log()));
    assert_eq!(std::fs::read_to_string(&rendered).unwrap(), text);
    let newer = renderings(&node)
        .into_iter()
        .find(|r| *r != rendered)
        .unwrap();
    assert!(
        std::fs::read_to_string(&newer)
            .unwrap()
            .contains("default_vcpus = 4")
    );
    second
        .wait_until("containerd's stanza names the new rendering", async || {
            let named = stanza_config_path(&node);
            named.ends_with(
                newer
                    .strip_prefix(node.artifacts())
                    .unwrap()
                    .to_str()
                    .unwrap(),
            )
        })
        .await
        .unwrap();
    assert_eq!(node.registry.blob_gets(), blob_gets, "nothing downloaded");

    // The CLI runs no policies: a new version it pulls gets the recorded settings rendered in.
    node.registry
        .push_files(
            ARTIFACT,
            &[
                ("vmlinux", b"guest kernel, version 2\n"),
                ("rootfs.img", ROOTFS),
                (CONFIG_FILE, KATA_TOML),
            ],
        )
        .unwrap();
    node.cli_ok(&second, &operator4, &node_config, &["pull", CLASS])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        node.installed().as_deref(),
        Some(&b"guest kernel, version 2\n"[..])
    );
    let in_new_version = renderings(&node);
    assert_eq!(in_new_version.len(), 1, "{in_new_version:?}");
    assert_eq!(
        in_new_version[0]
            .strip_prefix(node.artifacts().join(CLASS))
            .unwrap(),
        newer.strip_prefix(node.artifacts().join(CLASS)).unwrap(),
        "the same settings, the same file name: the stanza still holds"
    );
    assert!(
        std::fs::read_to_string(&in_new_version[0])
            .unwrap()
            .contains("default_vcpus = 4")
    );
    cri.run_pod(&PodSpec::new("sized-v2").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.cd.log_tail(30)));
    let read = assert_kata_used(&node, "sized-v2", b"guest kernel, version 2\n");
    assert!(read.contains("default_vcpus = 4"), "{read}");
    second.process.stop().await.unwrap();

    // A rollback to a version rendered for other settings renders the class's settings into it
    // before it becomes current.
    let operator6 = operator(&node, 6);
    let third = daemon(&mut node, &operator6, &node_config).await;
    third
        .wait_until("the third settings are rendered", async || {
            renderings(&node).len() == 2
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", third.process.log()));
    node.cli_ok(&third, &operator6, &node_config, &["rollback", CLASS])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(node.installed().as_deref(), Some(node::VMLINUX));
    let back = renderings(&node);
    assert_eq!(back.len(), 3, "two of its own and the one it got: {back:?}");
    let named = stanza_config_path(&node);
    assert!(
        Path::new(&named).is_file(),
        "the stanza's configuration exists after the rollback: {named}"
    );
    assert!(
        std::fs::read_to_string(&named)
            .unwrap()
            .contains("default_vcpus = 6")
    );
    cri.run_pod(&PodSpec::new("after-rollback").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.cd.log_tail(30)));
    let read = assert_kata_used(&node, "after-rollback", node::VMLINUX);
    assert!(read.contains("default_vcpus = 6"), "{read}");
    cri.remove_all_pods().await.unwrap();
}
