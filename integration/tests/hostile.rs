//! The hostile corpus (issue 8): inputs that try to cross the trust boundary of
//! docs/security.md. Each case is refused with an error naming the input and the rule, and
//! nothing is written: no class link, no version in `.store`, no staging left behind.
//!
//! ConfigMap cases go through `config check`, artifact cases through `pull` against a real
//! registry, both as an operator runs them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kata_nri_integration::registry::layer;
use kata_nri_integration::tarball::{Entry, tar_of};
use kata_nri_integration::{Registry, RegistryOptions, e2e_guard};

const KNM: &str = env!("CARGO_BIN_EXE_knm-under-test");
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const CLASS: &str = "kata-hostile";

fn write(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn knm(args: &[&str], files: &[&Path]) -> Output {
    let mut command = Command::new(KNM);
    command.args(args);
    for file in files {
        command.arg(file);
    }
    command.output().expect("run kata-nri-manager")
}

fn refused(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "accepted: {}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

#[test]
fn configmap_node_local_keys_next_to_a_node_config_are_refused() {
    let _deps = e2e_guard!();
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = dir.path().join("configmap.yaml");
    let node = dir.path().join("node.yaml");
    for (key, text) in [
        ("artifactsDir", "artifactsDir: /etc\n"),
        (
            "containerd.configPath",
            "containerd: {configPath: /etc/passwd}\n",
        ),
        (
            "containerd.restart.command",
            "containerd: {restart: {method: command, command: [/bin/sh, -c, id]}}\n",
        ),
        ("gate", "gate: {dir: /usr/bin}\n"),
        ("policies.dir", "policies: {dir: /tmp}\n"),
        ("kataConfig", "kataConfig: {allowedHostPaths: [/bin/sh]}\n"),
        (
            "runtimeClasses[0].runtime.runtimePath",
            "runtimeClasses:\n- name: kata\n  artifacts: {url: registry.local/kata:1}\n  runtime: {runtimePath: /bin/sh}\n",
        ),
    ] {
        write(&operator, text, 0o644);
        write(&node, "{}\n", 0o600);
        let stderr = refused(&knm(
            &["config", "check", "--config"],
            &[&operator, Path::new("--node-config"), &node],
        ));
        assert!(stderr.contains(&operator.display().to_string()), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{key}: node-local key not allowed in the operator config"
            )),
            "{key}: {stderr}"
        );
    }
}

/// A ConfigMap cannot make a kata class run in another runtime (its pods would run in runc,
/// outside any VM); the node file can, and then `config check` accepts it.
#[test]
fn a_configmap_names_only_kata_runtime_types() {
    let _deps = e2e_guard!();
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = dir.path().join("configmap.yaml");
    let node = dir.path().join("node.yaml");
    let class = "runtimeClasses:\n- name: kata-qemu\n  artifacts: {url: registry.local/kata:1}\n";
    write(
        &operator,
        &format!("{class}  runtime: {{runtimeType: io.containerd.runc.v2}}\n"),
        0o644,
    );
    write(&node, "{}\n", 0o600);
    let check = || {
        knm(
            &["config", "check", "--config"],
            &[&operator, Path::new("--node-config"), &node],
        )
    };
    let stderr = refused(&check());
    assert!(
        stderr.contains("runtimeClasses[0].runtime.runtimeType: \"io.containerd.runc.v2\" is not a kata runtime type"),
        "{stderr}"
    );
    write(&operator, class, 0o644);
    write(
        &node,
        "runtimeClasses:\n- {name: kata-qemu, runtime: {runtimeType: io.containerd.runc.v2}}\n",
        0o600,
    );
    let output = check();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_group_writable_config_without_a_node_config_is_refused() {
    let _deps = e2e_guard!();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    write(&config, "artifactsDir: /etc\n", 0o664);
    for command in [&["config", "check", "--config"][..], &["run", "--config"]] {
        let stderr = refused(&knm(command, &[&config]));
        assert!(stderr.contains(&config.display().to_string()), "{stderr}");
        assert!(
            stderr.contains("writable by group or others (mode 0664)"),
            "{stderr}"
        );
    }
}

#[test]
fn annotation_patterns_reaching_config_path_are_refused() {
    let _deps = e2e_guard!();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    for pattern in ["io.katacontainers.*", "*", "io.katacontainers.config?path"] {
        write(
            &config,
            &format!("annotations: {{allowed: [\"{pattern}\"]}}\n"),
            0o600,
        );
        let stderr = refused(&knm(&["config", "check", "--config"], &[&config]));
        assert!(stderr.contains("annotations.allowed"), "{stderr}");
        assert!(
            stderr.contains("lets pods set io.katacontainers.config_path"),
            "{pattern}: {stderr}"
        );
    }
}

/// A registry, an artifacts dir, and `pull` against them.
struct Puller {
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Puller {
    fn new(registry: Registry) -> Self {
        Self {
            registry,
            dir: tempfile::Builder::new()
                .prefix("knm-hostile-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// Pushes `tar` as the one layer of `repo_tag`; returns the layer's digest.
    fn push_tar(&self, repo_tag: &str, tar: &[u8]) -> String {
        let repo = repo_tag.split(':').next().expect("repo");
        let (digest, size) = self.registry.push_blob(repo, tar).expect("blob");
        self.registry
            .push_image(repo_tag, &[layer(&digest, size, TAR, None)])
            .expect("manifest");
        digest
    }

    fn pull(&self, repo_tag: &str) -> Output {
        let config = self.dir.path().join("config.yaml");
        write(
            &config,
            &format!(
                "artifactsDir: {}\nregistries: {{insecure: [\"{host}\"]}}\nruntimeClasses:\n- name: {CLASS}\n  artifacts: {{url: {host}/{repo_tag}}}\n  runtime: {{configFile: configuration-qemu.toml}}\n",
                self.artifacts().display(),
                host = self.registry.host(),
            ),
            0o600,
        );
        knm(&["pull", "--config"], &[&config])
    }

    /// Nothing of the refused version: no class link, no version, no staging directory.
    fn assert_nothing_installed(&self) {
        let artifacts = self.artifacts();
        assert!(
            fs::symlink_metadata(artifacts.join(CLASS)).is_err(),
            "class link written"
        );
        for sub in [".store", ".staging"] {
            let left: Vec<_> = fs::read_dir(artifacts.join(sub))
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{sub} holds {left:?}");
        }
    }
}

const GOOD_CONFIG: &[u8] =
    b"[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"vmlinux\"\n";

#[test]
fn hostile_tar_layers_are_refused_naming_layer_entry_and_rule() {
    use tar::EntryType::{Block, Char, Fifo, Link, Regular, Symlink};
    let deps = e2e_guard!();
    let puller = Puller::new(Registry::start(&deps, RegistryOptions::plain()).expect("registry"));
    let cases: [(&str, Entry<'_>, &str); 7] = [
        (
            "setuid",
            ("bin/virtiofsd", Regular, 0o4755, b"elf", None),
            "setuid file (mode 4755): artifacts may not carry setuid/setgid files",
        ),
        (
            "setgid",
            ("bin/virtiofsd", Regular, 0o2755, b"elf", None),
            "setgid file (mode 2755)",
        ),
        (
            "chardev",
            ("dev/kmsg", Char, 0o600, b"", None),
            "character device node: artifacts may not carry device nodes",
        ),
        (
            "blockdev",
            ("dev/sda", Block, 0o600, b"", None),
            "block device node",
        ),
        ("fifo", ("run/fifo", Fifo, 0o600, b"", None), "FIFO"),
        (
            "symlink",
            ("etc", Symlink, 0o777, b"", Some("/etc")),
            "inside the artifact",
        ),
        (
            "dotdot",
            ("../../etc/cron.d/x", Regular, 0o644, b"x", None),
            "`..`",
        ),
    ];
    for (tag, entry, rule) in cases {
        let name = entry.0;
        let digest = puller.push_tar(
            &format!("hostile/tar:{tag}"),
            &tar_of(&[
                ("configuration-qemu.toml", Regular, 0o644, GOOD_CONFIG, None),
                ("vmlinux", Regular, 0o644, b"kernel", None),
                entry,
                ("after", Link, 0o644, b"", Some("vmlinux")),
            ]),
        );
        let stderr = refused(&puller.pull(&format!("hostile/tar:{tag}")));
        assert!(stderr.contains(&digest), "{tag}: no layer digest: {stderr}");
        assert!(
            stderr.contains(&format!("refused {name:?}")),
            "{tag}: {stderr}"
        );
        assert!(stderr.contains(rule), "{tag}: no rule {rule:?}: {stderr}");
        puller.assert_nothing_installed();
    }
    // The same registry and node take a clean artifact: the refusals above were about content.
    puller.push_tar(
        "hostile/tar:clean",
        &tar_of(&[
            ("configuration-qemu.toml", Regular, 0o644, GOOD_CONFIG, None),
            ("vmlinux", Regular, 0o644, b"kernel", None),
        ]),
    );
    let output = puller.pull("hostile/tar:clean");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(puller.artifacts().join(CLASS).join("vmlinux").is_file());
}

#[test]
fn kata_configs_pointing_outside_are_refused_naming_file_key_value_and_rule() {
    let deps = e2e_guard!();
    let puller = Puller::new(Registry::start(&deps, RegistryOptions::plain()).expect("registry"));
    for (tag, line, key, value, rule) in [
        (
            "sh",
            "path = \"/bin/sh\"",
            "[hypervisor.qemu] path",
            "/bin/sh",
            "nor in kataConfig.allowedHostPaths",
        ),
        (
            "jailer",
            "jailer_path = \"/usr/bin/env\"",
            "[hypervisor.qemu] jailer_path",
            "/usr/bin/env",
            "nor in kataConfig.allowedHostPaths",
        ),
        (
            "valid",
            "valid_hypervisor_paths = [\"/usr/bin/*\"]",
            "[hypervisor.qemu] valid_hypervisor_paths",
            "/usr/bin/*",
            "nor in kataConfig.allowedHostPaths",
        ),
        (
            "annotations",
            "enable_annotations = [\"kernel_params\", \"path\"]",
            "[hypervisor.qemu] enable_annotations",
            "path",
            "enables the path annotation io.katacontainers.config.hypervisor.path",
        ),
    ] {
        let config = format!("[hypervisor.qemu]\nkernel = \"vmlinux\"\n{line}\n");
        puller.push_tar(
            &format!("hostile/config:{tag}"),
            &tar_of(&[
                (
                    "configuration-qemu.toml",
                    tar::EntryType::Regular,
                    0o644,
                    config.as_bytes(),
                    None,
                ),
                ("vmlinux", tar::EntryType::Regular, 0o644, b"kernel", None),
            ]),
        );
        let stderr = refused(&puller.pull(&format!("hostile/config:{tag}")));
        let expected = format!(
            "installing {CLASS}: kata configuration configuration-qemu.toml: {key} = {value:?}: "
        );
        assert!(stderr.contains(&expected), "{tag}: {stderr}");
        assert!(stderr.contains(rule), "{tag}: {stderr}");
        puller.assert_nothing_installed();
    }
}

/// One hostile kata configuration and the refusal it must get.
struct Case {
    tag: String,
    config: String,
    drop_in: Option<String>,
    file: &'static str,
    key: String,
    value: String,
    rule: &'static str,
}

/// The rule, not a list: a host path in any key kata reads (here `guest_memory_dump_path`, where
/// kata, as root, writes guest memory dumps), in every TOML spelling (tables, dotted keys,
/// inline tables, quoted keys, another case, which kata's decoder matches), in a `config.d`
/// drop-in kata merges, a network endpoint, an argument to virtiofsd the node did not allow, a
/// key no kata reads, a setting that weakens the hypervisor's sandbox; shipped as a tar layer
/// and as plain file layers. Each is refused at install with the file, key and value named, and the
/// version installed before stays current.
#[test]
fn kata_configurations_are_refused_by_rule_in_every_spelling() {
    let deps = e2e_guard!();
    let puller = Puller::new(Registry::start(&deps, RegistryOptions::plain()).expect("registry"));
    // A good version first: every refusal below must leave it current.
    puller.push_tar(
        "hostile/rule:good",
        &tar_of(&[
            (
                "configuration-qemu.toml",
                tar::EntryType::Regular,
                0o644,
                GOOD_CONFIG,
                None,
            ),
            ("vmlinux", tar::EntryType::Regular, 0o644, b"kernel", None),
        ]),
    );
    let good = puller.pull("hostile/rule:good");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let current = || fs::read_link(puller.artifacts().join(CLASS)).expect("class link");
    let installed = current();

    // Each rule in every TOML spelling kata reads the same: (rule, key, TOML value, value
    // refused, what the refusal says).
    let rules = [
        (
            "path",
            "guest_memory_dump_path",
            "\"/etc/cron.d\"",
            "/etc/cron.d",
            "nor in kataConfig.allowedHostPaths",
        ),
        (
            "unknown",
            "guest_memory_dump_dir",
            "\"/tmp\"",
            "/tmp",
            "kataConfig.allowedKeys",
        ),
        (
            "weaken",
            "disable_selinux",
            "true",
            "true",
            "without its SELinux label",
        ),
        (
            "argument",
            "virtio_fs_extra_args",
            "[\"--thread-pool-size=1\", \"--sandbox=none\"]",
            "--sandbox=none",
            "kataConfig.allowedArguments",
        ),
    ];
    let mut cases: Vec<Case> = Vec::new();
    for (rule, key, toml, value, says) in rules {
        let upper = key.to_ascii_uppercase();
        for (spelling, config, shown) in [
            (
                "table",
                format!("[hypervisor.qemu]\nkernel = \"vmlinux\"\n{key} = {toml}\n"),
                format!("[hypervisor.qemu] {key}"),
            ),
            (
                "dotted",
                format!("hypervisor.qemu.kernel = \"vmlinux\"\nhypervisor.qemu.{key} = {toml}\n"),
                format!("[hypervisor.qemu] {key}"),
            ),
            (
                "inline",
                format!("hypervisor = {{ qemu = {{ kernel = \"vmlinux\", {key} = {toml} }} }}\n"),
                format!("[hypervisor.qemu] {key}"),
            ),
            (
                "quoted",
                format!("[\"hypervisor\".\"qemu\"]\nkernel = \"vmlinux\"\n\"{key}\" = {toml}\n"),
                format!("[hypervisor.qemu] {key}"),
            ),
            (
                "case",
                format!("[HYPERVISOR.QEMU]\nKERNEL = \"vmlinux\"\n{upper} = {toml}\n"),
                format!("[HYPERVISOR.QEMU] {upper}"),
            ),
        ] {
            cases.push(Case {
                tag: format!("{rule}-{spelling}"),
                config,
                drop_in: None,
                file: "configuration-qemu.toml",
                key: shown,
                value: value.to_owned(),
                rule: says,
            });
        }
    }
    let dump = "guest_memory_dump_path = \"/etc/cron.d\"";
    cases.push(Case {
        tag: "endpoint".into(),
        config: "[hypervisor.qemu]\nkernel = \"vmlinux\"\n[runtime]\njaeger_endpoint = \"http://collector.example:14268/api/traces\"\n".into(),
        drop_in: None,
        file: "configuration-qemu.toml",
        key: "[runtime] jaeger_endpoint".into(),
        value: "http://collector.example:14268/api/traces".into(),
        rule: "a network endpoint",
    });
    cases.push(Case {
        tag: "dropin".into(),
        config: String::from_utf8_lossy(GOOD_CONFIG).into_owned(),
        drop_in: Some(format!("[hypervisor.qemu]\n{dump}\n")),
        file: "config.d/50-debug.toml",
        key: "[hypervisor.qemu] guest_memory_dump_path".into(),
        value: "/etc/cron.d".into(),
        rule: "nor in kataConfig.allowedHostPaths",
    });
    for Case {
        tag,
        config,
        drop_in,
        file,
        key,
        value,
        rule,
    } in cases
    {
        let mut files: Vec<(&str, &[u8])> = vec![
            ("configuration-qemu.toml", config.as_bytes()),
            ("vmlinux", b"kernel"),
        ];
        if let Some(drop_in) = &drop_in {
            files.push(("config.d/50-debug.toml", drop_in.as_bytes()));
        }
        let tar = tar_of(
            &files
                .iter()
                .map(|(name, data)| (*name, tar::EntryType::Regular, 0o644, *data, None))
                .collect::<Vec<_>>(),
        );
        let as_tar = format!("hostile/rule:{tag}-tar");
        puller.push_tar(&as_tar, &tar);
        let as_files = format!("hostile/rule:{tag}-files");
        puller
            .registry
            .push_files(&as_files, &files)
            .expect("file layers");
        for reference in [as_tar, as_files] {
            let stderr = refused(&puller.pull(&reference));
            let expected =
                format!("installing {CLASS}: kata configuration {file}: {key} = {value:?}: ");
            assert!(stderr.contains(&expected), "{reference}: {stderr}");
            assert!(stderr.contains(rule), "{reference}: {stderr}");
            assert_eq!(current(), installed, "{reference}: the good version stays");
        }
    }
}

/// The daemon with two classes: a hostile artifact fails its class in `status` and installs
/// nothing, and the daemon goes on serving the other class (its pod runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_refuses_a_hostile_class_and_serves_the_others() {
    use kata_nri_integration::node::{CLASS as GOOD, KataNode, VMLINUX};
    use kata_nri_integration::{PodSpec, Version, require_e2e};
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1)
        .await
        .expect("containerd and the registry start");
    let host = node.registry.host();
    let (digest, size) = node
        .registry
        .push_blob(
            "hostile/daemon",
            &tar_of(&[
                (
                    "configuration-qemu.toml",
                    tar::EntryType::Regular,
                    0o644,
                    GOOD_CONFIG,
                    None,
                ),
                ("vmlinux", tar::EntryType::Regular, 0o4755, b"kernel", None),
            ]),
        )
        .expect("blob");
    node.registry
        .push_image("hostile/daemon:1", &[layer(&digest, size, TAR, None)])
        .expect("manifest");
    let operator = format!(
        "{}- name: {CLASS}\n  provision: eager\n  artifacts: {{url: {host}/hostile/daemon:1}}\n  runtime: {{runtimeType: io.containerd.kata.v2}}\n",
        node.operator_config(&host, "onDemand", "")
    );
    let node_config = format!(
        "{}- name: {CLASS}\n  runtime: {{runtimePath: {}}}\n",
        node.node_config(None),
        node.shim().display()
    );
    let daemon = node
        .daemon(Path::new(KNM), operator.clone(), node_config.clone(), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    let mut error = String::new();
    let mut kind = String::new();
    daemon
        .wait_until("the hostile class failed", async || {
            let text = node
                .status(&daemon, &operator, &node_config, "json")
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
            let status: serde_json::Value = serde_json::from_str(&text).expect("json");
            let class = status["classes"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["class"] == CLASS).cloned());
            match class {
                Some(class) if class["state"] == "failed" => {
                    error = class["lastError"].as_str().unwrap_or_default().to_owned();
                    kind = class["lastErrorKind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    true
                }
                _ => false,
            }
        })
        .await
        .expect("status shows the failure");
    assert!(error.contains(&digest), "{error}");
    assert!(
        error.contains("refused \"vmlinux\": setuid file"),
        "{error}"
    );
    // Typed, not text: the artifact arrived whole and its content was refused.
    assert_eq!(kind, "install_refused", "{error}");
    // And for scripts: status exits 4 while a class has failed.
    assert_eq!(
        node.status_code(&daemon, &operator, &node_config)
            .await
            .expect("status"),
        4
    );
    let refused = format!(
        "kata_nri_manager_ensure_failures_total{{class=\"{CLASS}\",kind=\"install_refused\"}}"
    );
    assert!(
        daemon.metric(&refused).await.expect("metrics") >= 1.0,
        "{refused} not counted"
    );
    // One failure, one line: the ensure's own record (with its kind), not the store's and the
    // retry loop's as well. A retry is another failure, with a line of its own.
    let log = daemon.process.log();
    let mentions: Vec<&str> = log.lines().filter(|l| l.contains("setuid file")).collect();
    assert!(
        !mentions.is_empty()
            && mentions
                .iter()
                .all(|l| l.contains("runtime class not ready") && l.contains("install_refused")),
        "{log}"
    );
    assert!(fs::symlink_metadata(node.artifacts().join(CLASS)).is_err());

    let mut cri = node.cd.cri().await.expect("cri");
    cri.run_pod(&PodSpec::new("good").handler(GOOD))
        .await
        .unwrap_or_else(|e| panic!("the good class's pod: {e:#}\n{}", daemon.process.log()));
    assert_eq!(node.installed().as_deref(), Some(VMLINUX));
    node.kata_used("good", None, VMLINUX)
        .unwrap_or_else(|e| panic!("{e:#}"));
    cri.remove_all_pods().await.expect("cleanup");
}

/// A policy's closed record has no field for a runtime path, `BinaryName`, `base_runtime_spec`
/// or `ConfigPath` (policies-wasm/wit/policy.wit), so the remaining ways out are the values it
/// does return. A source outside `registries.allowed` (here the example mirror sending
/// nvcr.io to another registry) is the policy's invalid result, whatever the guest says.
#[test]
fn a_policy_source_outside_registries_allowed_is_denied() {
    let _deps = e2e_guard!();
    let built = kata_nri_integration::built_policy("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let request = dir.path().join("request.json");
    let eval = |allowed: &str| {
        write(
            &request,
            &format!(
                "{{\"className\": \"kata-qemu\", \"source\": {{\"reference\": \"nvcr.io/nvidia/kata:1.0\"}}, \
                 \"calls\": [\"select-source\"], \"registries\": {{\"allowed\": [{allowed}]}}}}"
            ),
            0o600,
        );
        knm(
            &[
                "policy",
                "eval",
                "--settings",
                r#"{"from": "nvcr.io", "to": "evil.example:5000"}"#,
                "--policy",
            ],
            &[&built, Path::new("--request"), &request],
        )
    };
    let denied = eval("\"nvcr.io\"");
    let stdout = String::from_utf8_lossy(&denied.stdout);
    assert!(
        stdout
            .contains("evil.example:5000/nvidia/kata:1.0 is outside registries.allowed (nvcr.io)"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // The same answer within the allowlist passes: the refusal is the guard's, not the guest's.
    let allowed = eval("\"nvcr.io\", \"evil.example:5000\"");
    let stdout = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        stdout.contains("evil.example:5000/nvidia/kata:1.0"),
        "{stdout}"
    );
    assert!(!stdout.contains("outside registries.allowed"), "{stdout}");
}

/// A policy answering the pod annotation pattern `io.katacontainers.*` (the hostile guest's
/// `annotations` mode) would let pods set `io.katacontainers.config_path`: the guard refuses
/// the answer as the policy's invalid result.
#[test]
fn a_policy_annotation_pattern_reaching_config_path_is_refused() {
    let _deps = e2e_guard!();
    let built = kata_nri_integration::built_policy("misbehave");
    let dir = tempfile::tempdir().expect("tempdir");
    let request = dir.path().join("request.json");
    write(
        &request,
        "{\"className\": \"kata-qemu\", \"source\": {\"reference\": \"nvcr.io/nvidia/kata:1.0\"}, \
         \"calls\": [\"mutate-runtime\"], \
         \"annotations\": {\"allowed\": [\"io.katacontainers.config.hypervisor.*\"]}}",
        0o600,
    );
    let output = knm(
        &[
            "policy",
            "eval",
            "--settings",
            r#"{"mode": "annotations"}"#,
            "--policy",
        ],
        &[&built, Path::new("--request"), &request],
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("policy eval prints JSON");
    let decision = &report["mutateRuntime"];
    assert_eq!(decision["decision"], "deny", "{report}");
    assert_eq!(decision["failure"], "invalid-result", "{report}");
    let reason = decision["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(
            "pattern \"io.katacontainers.*\" would let pods choose the kata config (io.katacontainers.config_path)"
        ),
        "{reason}"
    );
}

/// A pod that names its own kata configuration (`io.katacontainers.config_path`, which kata
/// reads before the stanza's `ConfigPath`) next to an allowed hypervisor annotation: containerd,
/// filtering by the stanza kata-nri-manager wrote, hands the shim the allowed one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pods_config_path_annotation_never_reaches_the_shim() {
    use kata_nri_integration::node::{CLASS as GOOD, KataNode};
    use kata_nri_integration::{PodSpec, Version, require_e2e};
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1)
        .await
        .expect("containerd and the registry start");
    let host = node.registry.host();
    let operator = node
        .operator_config(
            &host,
            "eager",
            "annotations: {allowed: [\"io.katacontainers.config.hypervisor.*\"]}\n",
        )
        .replace(
            "privilegedWithoutHostDevices: false}",
            "privilegedWithoutHostDevices: false, podAnnotations: [\"io.katacontainers.config.hypervisor.*\"]}",
        );
    let node_config = node.node_config(None);
    let daemon = node
        .daemon(Path::new(KNM), operator, node_config, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    daemon
        .wait_until("the class is installed", async || {
            node.installed().is_some()
        })
        .await
        .expect("installed");
    let config = fs::read_to_string(&node.cd.layout().config).expect("containerd config");
    assert!(
        config.contains("io.katacontainers.config.hypervisor.*"),
        "{config}"
    );

    let mut cri = node.cd.cri().await.expect("cri");
    cri.run_pod(
        &PodSpec::new("sneaky")
            .handler(GOOD)
            .annotation(
                "io.katacontainers.config_path",
                "/tmp/evil-configuration.toml",
            )
            .annotation("io.katacontainers.config.hypervisor.kernel_params", "quiet"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", node.cd.log_tail(30)));
    let spec = node
        .last_sandbox_spec()
        .expect("the shim saw a sandbox spec");
    let annotations = spec["annotations"].as_object().expect("annotations");
    assert_eq!(
        annotations["io.katacontainers.config.hypervisor.kernel_params"], "quiet",
        "{annotations:?}"
    );
    assert!(
        !annotations.contains_key("io.katacontainers.config_path"),
        "{annotations:?}"
    );
    // kata took the stanza's ConfigPath, not the pod's choice.
    node.kata_used("sneaky", None, kata_nri_integration::node::VMLINUX)
        .unwrap_or_else(|e| panic!("{e:#}"));
    cri.remove_all_pods().await.expect("cleanup");
}

/// A compiled policy in the cache that is not what the daemon wrote (one byte flipped: machine
/// code nobody checked) is never loaded: the next start recompiles from the `.wasm`, rewrites the
/// entry, and decides as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_compiled_policy_is_recompiled_not_run() {
    use kata_nri_integration::node::{CLASS as GOOD, KataNode};
    use kata_nri_integration::{PodSpec, Version, require_e2e};
    let Some(deps) = require_e2e() else {
        return;
    };
    let mut node = KataNode::start(deps, Version::V2_1)
        .await
        .expect("containerd and the registry start");
    let policies = node.dir().join("policies.d");
    fs::create_dir_all(&policies).expect("policies dir");
    let built = kata_nri_integration::built_policy("namespace_gate");
    fs::copy(&built, policies.join("10-namespace-gate.wasm")).expect("policy");
    let operator = node.operator_config(
        &node.registry.host(),
        "onDemand",
        &format!(
            "policies:\n  settings: {{namespace-gate: {{namespaces: [ml-team], classes: [{GOOD}]}}}}\n"
        ),
    );
    let node_config = node.node_config(Some(&policies));
    let first = node
        .daemon(Path::new(KNM), operator.clone(), node_config.clone(), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    first.process.stop().await.expect("stops");

    let cache = node.state_dir().join("policy-cache");
    let compiled: Vec<PathBuf> = fs::read_dir(&cache)
        .expect("the cache was written")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(compiled.len(), 1, "{compiled:?}");
    let mut bytes = fs::read(&compiled[0]).expect("compiled");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&compiled[0], &bytes).expect("tamper");

    let second = node
        .daemon(Path::new(KNM), operator, node_config, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        second
            .process
            .events_with_message(
                "compiled policy does not match the digest we recorded; recompiling"
            )
            .len(),
        1,
        "{}",
        second.process.log()
    );
    assert_ne!(
        fs::read(&compiled[0]).expect("rewritten"),
        bytes,
        "the entry was rewritten"
    );
    let mut cri = node.cd.cri().await.expect("cri");
    let err = cri
        .run_pod(&PodSpec::new("outsider").handler(GOOD).namespace("team-b"))
        .await
        .expect_err("the recompiled policy still denies");
    assert!(
        format!("{err:#}").contains("namespace-gate"),
        "{err:#}\n{}\n{}",
        second.process.log(),
        node.cd.log_tail(30)
    );
    cri.run_pod(&PodSpec::new("insider").handler(GOOD).namespace("ml-team"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", second.process.log()));
    cri.remove_all_pods().await.expect("cleanup");
}
