//! The daemon end to end (issue 6): real containerd (2.1 and 1.7), a real registry, the daemon
//! as a process, pods through CRI. A class's "real shim" is a stand-in kata shim: a script that
//! refuses to start a sandbox unless the class's artifacts are installed with the pushed bytes,
//! then `exec`s runc's shim. containerd restarts requested by the daemon (the `command`
//! strategy) are carried out by the test through the harness.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_nri_integration::{
    Containerd, ContainerdOptions, CutProxy, Deps, PluginOptions, PluginProcess, PodSpec, Registry,
    RegistryOptions, Version,
};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");
const CLASS: &str = "knm-kata";
const VMLINUX: &[u8] = b"stand-in guest kernel\n";
const ROOTFS: &[u8] = b"stand-in guest rootfs image\n";
const KATA_TOML: &[u8] = b"[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\n";
const WAIT: Duration = Duration::from_secs(90);

/// A node: containerd, a registry holding the class's artifacts, the stand-in shim.
struct Node {
    deps: Deps,
    cd: Containerd,
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start(version: Version) -> Option<Self> {
        let deps = kata_nri_integration::require_e2e()?;
        let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry starts");
        registry
            .push_files(
                "kata/artifacts:1",
                &[
                    ("vmlinux", VMLINUX),
                    ("rootfs.img", ROOTFS),
                    ("configuration-test.toml", KATA_TOML),
                ],
            )
            .expect("oras push");
        let cd = Containerd::start(&deps, version, ContainerdOptions::default())
            .await
            .expect("containerd starts");
        let dir = tempfile::tempdir().unwrap();
        let node = Node {
            deps,
            cd,
            registry,
            dir,
        };
        node.write_stand_in_shim();
        Some(node)
    }

    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// The daemon's state directory: it outlives a daemon, as on a node.
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn marker(&self) -> PathBuf {
        self.dir.path().join("restart-requested")
    }

    fn restarts_requested(&self) -> usize {
        std::fs::read_to_string(self.marker())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    fn shim(&self) -> PathBuf {
        self.dir.path().join("containerd-shim-kata-stand-in")
    }

    fn write_stand_in_shim(&self) {
        use std::os::unix::fs::PermissionsExt;
        let expected = self.dir.path().join("expected-vmlinux");
        std::fs::write(&expected, VMLINUX).unwrap();
        let script = format!(
            "#!/bin/sh\n\
             # A stand-in kata shim: a sandbox starts only on installed, intact artifacts.\n\
             for arg in \"$@\"; do\n\
             \x20 if [ \"$arg\" = start ] && ! cmp -s {installed} {expected}; then\n\
             \x20   echo \"stand-in kata shim: artifacts of {CLASS} are not installed\" >&2\n\
             \x20   exit 1\n\
             \x20 fi\n\
             done\n\
             exec {runc} \"$@\"\n",
            installed = self.artifacts().join(CLASS).join("vmlinux").display(),
            expected = expected.display(),
            runc = self.deps.runc_shim_bin(self.cd.version()).display(),
        );
        std::fs::write(self.shim(), script).unwrap();
        std::fs::set_permissions(self.shim(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Operator config: the class (with `extra` lines for the class), reading from `registry`.
    fn operator_config(&self, registry: &str, provision: &str, extra: &str) -> String {
        format!(
            "listen: 127.0.0.1:0\n\
             registries: {{insecure: [\"{registry}\"]}}\n\
             containerd: {{mode: inline, address: {address}}}\n\
             {extra}\
             runtimeClasses:\n\
             - name: {CLASS}\n\
             \x20 provision: {provision}\n\
             \x20 artifacts: {{url: {registry}/kata/artifacts:1}}\n\
             \x20 runtime: {{runtimeType: io.containerd.runc.v2, privilegedWithoutHostDevices: false}}\n",
            address = self.cd.address().display(),
        )
    }

    /// Node-local config: our artifacts dir, containerd's config, restarts through the marker.
    fn node_config(&self, policies: Option<&Path>) -> String {
        format!(
            "artifactsDir: {artifacts}\n\
             containerd:\n\
             \x20 configPath: {config}\n\
             \x20 restart: {{method: command, command: [/bin/sh, -c, 'echo >> {marker}'], timeout: 30s}}\n\
             gate: {{dir: {{dir}}/gate, socket: {{dir}}/run/gate.sock, timeout: 60s}}\n\
             policies: {{dir: {policies}}}\n\
             runtimeClasses:\n\
             - name: {CLASS}\n\
             \x20 runtime: {{runtimePath: {shim}}}\n",
            artifacts = self.artifacts().display(),
            config = self.cd.layout().config.display(),
            marker = self.marker().display(),
            policies = policies
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.dir.path().join("no-policies"))
                .display(),
            shim = self.shim().display(),
        )
    }

    /// Starts the daemon and carries out the containerd restart it asks for (if it asks).
    async fn daemon(&mut self, operator: String, node: String, env: &[(&str, &str)]) -> Daemon {
        let restarts_before = self.restarts_requested();
        let opts = PluginOptions {
            config: operator,
            node_config: node,
            state_dir: Some(self.state_dir()),
            extra_args: vec![
                "--containerd-binary".into(),
                self.deps
                    .containerd_bin(self.cd.version())
                    .display()
                    .to_string(),
            ],
            ..Default::default()
        };
        let process =
            PluginProcess::start_with_env(Path::new(PLUGIN), self.cd.nri_socket(), &opts, env)
                .expect("daemon starts");
        let daemon = Daemon { process };
        // The daemon configures containerd before anything else and waits for the restart it
        // asked for: carry each request out until it reports that it started.
        let mut carried_out = restarts_before;
        let mut mark = None;
        let started = Instant::now();
        while daemon
            .process
            .events_with_message("daemon started")
            .is_empty()
        {
            assert!(
                started.elapsed() < WAIT,
                "the daemon did not start\n{}",
                daemon.process.log()
            );
            if self.restarts_requested() > carried_out {
                carried_out += 1;
                mark = Some(self.cd.log_mark());
                self.cd.restart().await.expect("containerd restarts");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match mark {
            Some(mark) => self
                .cd
                .wait_nri_registered(&opts.full_name(), mark, WAIT)
                .await
                .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.process.log())),
            None => daemon
                .process
                .wait_registered(1, WAIT)
                .await
                .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.process.log())),
        }
        daemon
    }

    fn installed(&self) -> Option<Vec<u8>> {
        std::fs::read(self.artifacts().join(CLASS).join("vmlinux")).ok()
    }

    /// `status --output json` as the operator would run it.
    async fn status(&self, daemon: &Daemon, operator: &str, node: &str) -> Value {
        let dir = daemon.process.dir();
        let operator_file = dir.join("status-operator.yaml");
        let node_file = dir.join("status-node.yaml");
        write_private(&operator_file, operator);
        write_private(&node_file, &node.replace("{dir}", dir.to_str().unwrap()));
        let output = tokio::process::Command::new(PLUGIN)
            .args(["status", "--output", "json", "--config"])
            .arg(&operator_file)
            .arg("--node-config")
            .arg(&node_file)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

struct Daemon {
    process: PluginProcess,
}

impl Daemon {
    fn address(&self) -> String {
        self.process
            .events_with_message("operations endpoint listening (/metrics, /healthz, /readyz)")
            .first()
            .and_then(|e| e["address"].as_str().map(str::to_owned))
            .expect("the daemon logs its operations address")
    }

    async fn http(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.address())
            .await
            .unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: knm\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, response)
    }

    /// The value of one metric sample (`name{labels}`), 0 when absent.
    async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.http("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn wait_until(&self, what: &str, mut done: impl AsyncFnMut() -> bool) {
        let started = Instant::now();
        while !done().await {
            assert!(
                started.elapsed() < WAIT,
                "timed out waiting until {what}\n{}",
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn class_status(status: &Value) -> &Value {
    status["classes"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["class"] == CLASS))
        .unwrap_or_else(|| panic!("no {CLASS} in {status:#}"))
}

const PULLED: &str = "kata_nri_manager_artifact_pulls_total{class=\"knm-kata\",result=\"pulled\"}";

async fn on_demand_pods_start_on_the_first_try(version: Version, pods: usize) {
    let Some(mut node) = Node::start(version).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = node
        .daemon(operator.clone(), node_config.clone(), &[])
        .await;
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
    assert_eq!(daemon.metric(PULLED).await, 1.0, "one pull for {pods} pods");
    assert_eq!(
        node.registry.blob_gets() - gets_before,
        3,
        "each file downloaded once"
    );

    // status: ready, digest, the pods using it (NRI saw them).
    let mut status = Value::Null;
    daemon
        .wait_until("status lists every pod", async || {
            status = node.status(&daemon, &operator, &node_config).await;
            class_status(&status)["pods"].as_array().map(Vec::len) == Some(pods)
        })
        .await;
    let class = class_status(&status);
    assert_eq!(status["daemonRunning"], true);
    assert_eq!(class["state"], "ready");
    assert_eq!(class["provision"], "onDemand");
    assert!(
        class["digest"].as_str().unwrap().starts_with("sha256:"),
        "{class}"
    );
    assert_eq!(daemon.http("/readyz").await.0, 200);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_eager_class_is_ready_after_start() {
    let Some(mut node) = Node::start(Version::V2_1).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "eager", "");
    let daemon = node.daemon(operator, node.node_config(None), &[]).await;
    daemon
        .wait_until("/readyz says ready", async || {
            daemon.http("/readyz").await.0 == 200
        })
        .await;
    assert_eq!(node.installed().as_deref(), Some(VMLINUX));
    let config = std::fs::read_to_string(&node.cd.layout().config).unwrap();
    // An eager class runs its real shim directly, no gate.
    assert!(
        config.contains(&node.shim().display().to_string()),
        "{config}"
    );
    let mut cri = node.cd.cri().await.unwrap();
    let status = cri.status().await.unwrap();
    assert!(
        status.runtime_handlers.iter().any(|h| h == CLASS),
        "{:?}",
        status.runtime_handlers
    );
    cri.run_pod(&PodSpec::new("eager").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.cd.log_tail(30)));
    cri.remove_all_pods().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prepare_annotation_on_any_pod_makes_the_class_ready() {
    let Some(mut node) = Node::start(Version::V2_1).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let daemon = node.daemon(operator, node.node_config(None), &[]).await;
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
        .await;
    assert_eq!(node.installed().as_deref(), Some(VMLINUX));
    daemon
        .wait_until("the pull is counted", async || {
            daemon.metric(PULLED).await == 1.0
        })
        .await;
    // The unknown class is reported, not fatal.
    daemon
        .process
        .wait_for_events(1, WAIT, |e| {
            e["message"] == "prepare annotation not honoured" && e["runtime_class"] == "not-a-class"
        })
        .await
        .unwrap();
    cri.remove_all_pods().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_denial_fails_the_start_with_the_policy_and_reason() {
    let Some(mut node) = Node::start(Version::V2_1).await else {
        return;
    };
    let policies = node.dir.path().join("policies.d");
    std::fs::create_dir_all(&policies).unwrap();
    let built = kata_nri_integration::repo_root()
        .join("policies-wasm/target/wasm32-wasip2/release/namespace_gate.wasm");
    assert!(
        built.is_file(),
        "{} missing: run policies-wasm/build.sh",
        built.display()
    );
    std::fs::copy(&built, policies.join("10-namespace-gate.wasm")).unwrap();
    let operator = node.operator_config(
        &node.registry.host(),
        "onDemand",
        &format!(
            "policies:\n  settings: {{namespace-gate: {{namespaces: [ml-team], classes: [{CLASS}]}}}}\n"
        ),
    );
    let daemon = node
        .daemon(operator, node.node_config(Some(&policies)), &[])
        .await;
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
    assert_eq!(daemon.metric(PULLED).await, 0.0);
    cri.run_pod(&PodSpec::new("insider").handler(CLASS).namespace("ml-team"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.process.log()));
    assert_eq!(node.installed().as_deref(), Some(VMLINUX));
    cri.remove_all_pods().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_killed_mid_pull_leaves_no_partial_files_and_recovers() {
    let Some(mut node) = Node::start(Version::V2_1).await else {
        return;
    };
    let upstream = node.registry.host().parse().unwrap();
    let proxy = CutProxy::start(upstream).await.unwrap();
    // Big enough that a blob is mid-transfer when the registry stalls.
    let big = vec![7u8; 4 << 20];
    node.registry
        .push_files(
            "kata/artifacts:1",
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
    let mut daemon = node
        .daemon(operator.clone(), node_config.clone(), &[])
        .await;
    let mut cri = node.cd.cri().await.unwrap();
    cri.run_pod(
        &PodSpec::new("preparer")
            .handler("runc")
            .annotation("kata-nri-manager.io/prepare", CLASS),
    )
    .await
    .unwrap();
    daemon
        .wait_until("the pull stalls mid-blob", async || proxy.held() > 0)
        .await;
    let pid = daemon.process.pid().unwrap();
    // SAFETY: kill(2) on the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = daemon.process.stop().await;
    assert!(
        std::fs::symlink_metadata(node.artifacts().join(CLASS)).is_err(),
        "no class link before the install completes"
    );
    let versions: Vec<_> = std::fs::read_dir(node.artifacts().join(".store"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(versions.is_empty(), "no version in the store: {versions:?}");

    proxy.release();
    // The annotated pod is still there: the new daemon's Synchronize prepares the class again.
    daemon = node.daemon(operator, node_config, &[]).await;
    daemon
        .wait_until("the class is installed", async || {
            node.installed().is_some()
        })
        .await;
    assert_eq!(
        std::fs::read(node.artifacts().join(CLASS).join("rootfs.img")).unwrap(),
        big
    );
    cri.remove_all_pods().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_class_removed_from_the_config_loses_its_stanza_then_its_artifacts() {
    let Some(mut node) = Node::start(Version::V2_1).await else {
        return;
    };
    let operator = node.operator_config(&node.registry.host(), "onDemand", "");
    let node_config = node.node_config(None);
    let daemon = node.daemon(operator, node_config.clone(), &[]).await;
    let mut cri = node.cd.cri().await.unwrap();
    let pod = cri
        .run_pod(&PodSpec::new("user").handler(CLASS))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.process.log()));
    assert!(node.installed().is_some());
    let _ = daemon.process.stop().await;

    let empty = format!(
        "listen: 127.0.0.1:0\ncontainerd: {{mode: inline, address: {}}}\nruntimeClasses: []\n",
        node.cd.address().display()
    );
    let without_class = node_config[..node_config.find("runtimeClasses:").unwrap()].to_owned();
    let restarts = node.restarts_requested();
    let daemon = node
        .daemon(empty, without_class, &[("KATA_NRI_MANAGER_GC_GRACE", "1s")])
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
    daemon
        .wait_until("the artifacts are collected", async || {
            node.installed().is_none()
        })
        .await;
    assert!(
        std::fs::read_dir(node.artifacts().join(".store"))
            .unwrap()
            .flatten()
            .next()
            .is_none(),
        "every version removed"
    );
    assert_eq!(
        daemon
            .metric("kata_nri_manager_gc_removed_total{class=\"knm-kata\"}")
            .await,
        1.0
    );
}
