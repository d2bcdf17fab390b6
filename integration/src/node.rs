//! A node as the daemon's end-to-end tests and the demo need it: containerd, a registry holding
//! a class's artifacts, and a stand-in kata shim; and the daemon running on it.
//!
//! The class's shim is `kata-shim-stand-in` (this crate's binary, `src/bin/kata-shim-stand-in`):
//! kata's `containerd-shim-kata-v2` up to the hypervisor's launch (the configuration resolved from
//! containerd's runtime options in kata's order, every file it names checked against the store's
//! record), then runc's shim. It appends what kata would have loaded for each sandbox to a record
//! the tests read ([`KataNode::sandbox_records`], [`KataNode::kata_used`]). containerd restarts
//! the daemon asks for (the `command` strategy appends a line to a marker file) are carried out
//! through the harness.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::registry::RegistryOptions;
use crate::{
    Containerd, ContainerdOptions, Deps, NO_KERNEL_MODULES, PluginOptions, PluginProcess, Registry,
    Version,
};

/// The class every node serves (a kata class: `io.containerd.kata.v2`, shim the stand-in).
pub const CLASS: &str = "knm-kata";
/// The artifact files as pushed.
pub const VMLINUX: &[u8] = b"stand-in guest kernel\n";
pub const ROOTFS: &[u8] = b"stand-in guest rootfs image\n";
/// The artifact's kata configuration: its files named relative to it, as kata's artifacts ship
/// them (the store points them at the installed version); no shared filesystem, so no virtiofsd.
pub const KATA_TOML: &[u8] = b"[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"vmlinux\"\nimage = \"rootfs.img\"\nshared_fs = \"none\"\n";
/// The kata configuration of a real guest ([`KataNode::push_guest`]): Debian's kernel and a
/// busybox initramfs, which the stand-in boots under KVM when asked to.
pub const GUEST_TOML: &[u8] = b"[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"vmlinux\"\ninitrd = \"initrd.img\"\nshared_fs = \"none\"\n";
/// The kata version the stand-in shim says it is (`--version`).
pub const STAND_IN_KATA_VERSION: &str = "3.2.0";
/// The stand-in's binary name (this crate's `src/bin/kata-shim-stand-in`).
pub const STAND_IN_BIN: &str = "kata-shim-stand-in";
/// Overrides where the harness finds the stand-in.
pub const STAND_IN_ENV: &str = "KNM_STAND_IN";
/// The artifact's repository and tag in the registry.
pub const ARTIFACT: &str = "kata/artifacts:1";
/// How long waits last before they fail (generous: they catch hangs, not slowness).
pub const WAIT: Duration = Duration::from_secs(90);

/// containerd, a registry with the artifacts, and the stand-in shim, on temp dirs.
pub struct KataNode {
    pub deps: Deps,
    pub cd: Containerd,
    pub registry: Registry,
    dir: tempfile::TempDir,
}

impl KataNode {
    pub async fn start(deps: Deps, version: Version) -> Result<Self> {
        Self::start_with(deps, version, ContainerdOptions::default()).await
    }

    /// [`start`](Self::start) with containerd options of the caller's.
    pub async fn start_with(
        deps: Deps,
        version: Version,
        options: ContainerdOptions,
    ) -> Result<Self> {
        let registry = Registry::start(&deps, RegistryOptions::plain())?;
        registry.push_files(
            ARTIFACT,
            &[
                ("vmlinux", VMLINUX),
                ("rootfs.img", ROOTFS),
                ("configuration-test.toml", KATA_TOML),
            ],
        )?;
        let cd = Containerd::start(&deps, version, options).await?;
        let dir = tempfile::Builder::new().prefix("knm-node-").tempdir()?;
        let node = Self {
            deps,
            cd,
            registry,
            dir,
        };
        node.write_stand_in_shim()?;
        Ok(node)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// The daemon's state directory: it outlives a daemon, as on a node.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn marker(&self) -> PathBuf {
        self.dir.path().join("restart-requested")
    }

    /// containerd restarts the daemons asked for so far.
    pub fn restarts_requested(&self) -> usize {
        std::fs::read_to_string(self.marker())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// The class's real shim: a wrapper that runs the stand-in with this node's settings.
    pub fn shim(&self) -> PathBuf {
        self.dir.path().join("containerd-shim-kata-v2")
    }

    /// Where the stand-in keeps its records (`sandboxes.jsonl`), its version and its log.
    pub fn stand_in_dir(&self) -> PathBuf {
        self.dir.path().join("stand-in")
    }

    /// The kata version the stand-in reports from now on.
    pub fn set_kata_version(&self, version: &str) -> Result<()> {
        Ok(std::fs::write(
            self.stand_in_dir().join("version"),
            version,
        )?)
    }

    /// The OCI spec (containerd's bundle `config.json`) of the last sandbox the stand-in shim
    /// started: what kata would have been given.
    pub fn last_sandbox_spec(&self) -> Option<Value> {
        let text = std::fs::read(self.stand_in_dir().join("last-sandbox-spec.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Every sandbox the stand-in saw created, in order: what kata resolved (`resolution`), or
    /// why it refused (`outcome: refused`, `reason`).
    pub fn sandbox_records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.stand_in_dir().join("sandboxes.jsonl"))
            .map(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last record of the pod named `pod`.
    pub fn sandbox_record(&self, pod: &str) -> Option<Value> {
        self.sandbox_records()
            .into_iter()
            .rev()
            .find(|r| r["pod"] == pod)
    }

    /// The version (`.store/<digest>`) kata used for each sandbox started, in order.
    pub fn shim_starts(&self) -> Vec<String> {
        self.sandbox_records()
            .iter()
            .filter(|r| r["outcome"] == "started")
            .filter_map(|r| r["resolution"]["version"].as_str())
            .map(|v| format!(".store/{v}"))
            .collect()
    }

    /// The digest of the version the class's link points at now.
    pub fn current_version(&self) -> Option<String> {
        let target = std::fs::read_link(self.artifacts().join(CLASS)).ok()?;
        Some(target.file_name()?.to_str()?.to_owned())
    }

    /// Checks that kata, for pod `pod`'s sandbox, loaded the class's configuration through the
    /// stanza's `ConfigPath` and booted `kernel` (its bytes) from the installed `version` (the
    /// class's current one when `None`); returns the stand-in's record.
    pub fn kata_used(&self, pod: &str, version: Option<&str>, kernel: &[u8]) -> Result<Value> {
        check_kata_used(
            &self.artifacts(),
            CLASS,
            self.sandbox_record(pod),
            version
                .map(str::to_owned)
                .or_else(|| self.current_version()),
            kernel,
        )
    }

    fn write_stand_in_shim(&self) -> Result<()> {
        write_stand_in_wrapper(
            &self.shim(),
            &self.stand_in_dir(),
            &self.deps.runc_shim_bin(self.cd.version()),
            Some(&self.cd.layout().runc_root),
            false,
        )?;
        self.set_kata_version(STAND_IN_KATA_VERSION)
    }

    /// Pushes a real guest as the artifact (the tag moves): Debian's kernel, the busybox
    /// initramfs and [`GUEST_TOML`]; from now on the stand-in boots what kata would boot before
    /// it lets a sandbox start. Returns the kernel's bytes.
    pub fn push_guest(&self) -> Result<Vec<u8>> {
        let guest = self
            .deps
            .guest
            .as_ref()
            .map_err(|r| anyhow::anyhow!("{r}"))?;
        let kernel = std::fs::read(&guest.kernel)?;
        let initrd = std::fs::read(&guest.initrd)?;
        self.registry.push_files(
            ARTIFACT,
            &[
                ("vmlinux", &kernel),
                ("initrd.img", &initrd),
                ("configuration-guest.toml", GUEST_TOML),
            ],
        )?;
        write_stand_in_wrapper(
            &self.shim(),
            &self.stand_in_dir(),
            &self.deps.runc_shim_bin(self.cd.version()),
            Some(&self.cd.layout().runc_root),
            true,
        )?;
        Ok(kernel)
    }

    /// Operator config serving [`CLASS`] from `registry` (a `host:port`), `provision` `eager` or
    /// `onDemand`; `extra` is inserted as top-level YAML lines.
    pub fn operator_config(&self, registry: &str, provision: &str, extra: &str) -> String {
        format!(
            "listen: 127.0.0.1:0\n\
             registries: {{insecure: [\"{registry}\"]}}\n\
             containerd: {{mode: inline, address: {address}}}\n\
             {extra}\
             runtimeClasses:\n\
             - name: {CLASS}\n\
             \x20 provision: {provision}\n\
             \x20 artifacts: {{url: {registry}/{ARTIFACT}}}\n\
             \x20 runtime: {{runtimeType: io.containerd.kata.v2, privilegedWithoutHostDevices: false}}\n",
            address = self.cd.address().display(),
        )
    }

    /// Node-local config: the artifacts dir, containerd's config, restarts through the marker,
    /// the stand-in shim as the class's real shim. `{dir}` is the daemon's temp dir.
    pub fn node_config(&self, policies: Option<&Path>) -> String {
        format!(
            "artifactsDir: {artifacts}\n\
             containerd:\n\
             \x20 configPath: {config}\n\
             \x20 restart: {{method: command, command: [/bin/sh, -c, 'echo >> {marker}'], timeout: 30s}}\n\
             gate: {{dir: {{dir}}/gate, socket: {{dir}}/run/gate.sock, timeout: 60s}}\n\
             policies: {{dir: {policies}}}\n\
             {NO_KERNEL_MODULES}\
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

    /// Starts the daemon (`binary run`) and carries out each containerd restart it asks for
    /// until it reports that it started; returns once it is registered with containerd's NRI.
    pub async fn daemon(
        &mut self,
        binary: &Path,
        operator: String,
        node: String,
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        let carried_before = self.restarts_requested();
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
        let process = PluginProcess::start_with_env(binary, self.cd.nri_socket(), &opts, env)?;
        let daemon = Daemon {
            process,
            binary: binary.to_path_buf(),
        };
        let mut carried = carried_before;
        let mut mark = None;
        let started = Instant::now();
        while daemon
            .process
            .events_with_message("daemon started")
            .is_empty()
        {
            if started.elapsed() > WAIT {
                bail!("the daemon did not start\n{}", daemon.process.log());
            }
            if self.restarts_requested() > carried {
                carried += 1;
                mark = Some(self.cd.log_mark());
                self.cd.restart().await?;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match mark {
            Some(mark) => self
                .cd
                .wait_nri_registered(&opts.full_name(), mark, WAIT)
                .await
                .with_context(|| daemon.process.log())?,
            None => daemon
                .process
                .wait_registered(1, WAIT)
                .await
                .with_context(|| daemon.process.log())?,
        }
        Ok(daemon)
    }

    /// The installed kernel's bytes, if the class is installed.
    pub fn installed(&self) -> Option<Vec<u8>> {
        std::fs::read(self.artifacts().join(CLASS).join("vmlinux")).ok()
    }

    /// `status` as the operator runs it (`json` or `text`), with the daemon's configs.
    pub async fn status(
        &self,
        daemon: &Daemon,
        operator: &str,
        node: &str,
        output: &str,
    ) -> Result<String> {
        let out = self
            .cli(daemon, operator, node, &["status", "--output", output])
            .await?;
        // 3: no daemon runs; 4: a class failed; 5: the host lacks a kernel module. Each still
        // prints the report.
        ensure!(
            matches!(out.status.code(), Some(0 | 3 | 4 | 5)),
            "status failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `status`'s exit code (0 healthy, 3 no daemon, 4 a class failed, 5 a kernel module missing).
    pub async fn status_code(&self, daemon: &Daemon, operator: &str, node: &str) -> Result<i32> {
        let out = self
            .cli(daemon, operator, node, &["status", "--output", "json"])
            .await?;
        out.status
            .code()
            .with_context(|| format!("status ended by a signal: {}", out.status))
    }

    /// [`cli`](Self::cli) that must succeed; returns its stdout.
    pub async fn cli_ok(
        &self,
        daemon: &Daemon,
        operator: &str,
        node: &str,
        args: &[&str],
    ) -> Result<String> {
        let out = self.cli(daemon, operator, node, args).await?;
        ensure!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// A `kata-nri-manager` command (`args`, then `--config`, `--node-config` and
    /// `--state-dir`) with the daemon's binary and configs, as an operator on the node runs it.
    pub async fn cli(
        &self,
        daemon: &Daemon,
        operator: &str,
        node: &str,
        args: &[&str],
    ) -> Result<std::process::Output> {
        let dir = daemon.process.dir();
        let operator_file = dir.join("cli-operator.yaml");
        let node_file = dir.join("cli-node.yaml");
        write_private(&operator_file, operator)?;
        let dir_text = dir.to_str().context("temp dir is not UTF-8")?;
        write_private(&node_file, &node.replace("{dir}", dir_text))?;
        let mut command = tokio::process::Command::new(&daemon.binary);
        command
            .args(args)
            .arg("--config")
            .arg(&operator_file)
            .arg("--node-config")
            .arg(&node_file);
        if args.first() == Some(&"status") {
            command.arg("--state-dir").arg(self.state_dir());
        }
        Ok(command.output().await?)
    }
}

/// The daemon running on a [`KataNode`].
pub struct Daemon {
    pub process: PluginProcess,
    binary: PathBuf,
}

impl Daemon {
    /// The operations endpoint's address, from the daemon's log (its latest run's, after a
    /// restart in place).
    pub fn address(&self) -> Result<String> {
        self.process
            .events_with_message("operations endpoint listening (/metrics, /healthz, /readyz)")
            .last()
            .and_then(|e| e["address"].as_str().map(str::to_owned))
            .context("the daemon did not log its operations address")
    }

    /// `GET path` on the operations endpoint: status code and the whole response.
    pub async fn http(&self, path: &str) -> Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.address()?).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: knm\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, response))
    }

    /// The value of one metric sample (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let (_, text) = self.http("/metrics").await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// Polls `done` every 100 ms until it holds; fails after [`WAIT`] with the daemon's log.
    pub async fn wait_until(&self, what: &str, mut done: impl AsyncFnMut() -> bool) -> Result<()> {
        let started = Instant::now();
        while !done().await {
            if started.elapsed() > WAIT {
                bail!("timed out waiting until {what}\n{}", self.process.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// Writes `path`, a kata shim for a stanza's `runtime_path`: a script that runs the stand-in
/// with its records in `dir`, ending in `runc_shim` (runc's root `runc_root`, runc's default
/// without one); with `boot`, it boots the resolved guest under KVM first.
pub fn write_stand_in_wrapper(
    path: &Path,
    dir: &Path,
    runc_shim: &Path,
    runc_root: Option<&Path>,
    boot: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut root = runc_root
        .map(|r| format!(" KNM_STANDIN_RUNC_ROOT={}", r.display()))
        .unwrap_or_default();
    if boot {
        root.push_str(" KNM_STANDIN_BOOT=1");
    }
    let script = format!(
        "#!/bin/sh\n\
         # A kata shim on this test node: the stand-in, with the node's settings.\n\
         export KNM_STANDIN_RUNC_SHIM={runc} KNM_STANDIN_DIR={dir}{root}\n\
         export KNM_STANDIN_SHIM=\"$0\"\n\
         exec {bin} \"$@\"\n",
        runc = runc_shim.display(),
        dir = dir.display(),
        bin = stand_in_binary()?.display(),
    );
    std::fs::write(path, script)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Where the stand-in binary is: `$KNM_STAND_IN`, else beside the running executable (a bin of
/// this crate) or one directory up (a test or bench in `deps/`).
pub fn stand_in_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(STAND_IN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(STAND_IN_BIN))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{STAND_IN_BIN} is not built beside {}: `cargo build -p kata-nri-integration --bins` (or set {STAND_IN_ENV})",
                exe.display()
            )
        })
}

/// [`KataNode::kata_used`] for any class and artifacts dir: the record says the sandbox started
/// with its configuration from `ConfigPath`, that configuration and the kernel inside
/// `<artifacts>/.store/<version>` and recorded by the store, and the kernel's bytes `kernel`.
pub fn check_kata_used(
    artifacts: &Path,
    class: &str,
    record: Option<Value>,
    version: Option<String>,
    kernel: &[u8],
) -> Result<Value> {
    let record = record.context("the stand-in saw no sandbox of that pod")?;
    ensure!(
        record["outcome"] == "started",
        "kata would not have started the sandbox: {}",
        record["reason"]
    );
    let r = &record["resolution"];
    let version = version.with_context(|| format!("class {class} has no current version"))?;
    ensure!(
        r["source"] == "ConfigPath",
        "kata took its configuration from {} ({}), not the stanza's ConfigPath",
        r["source"],
        r["configPath"]
    );
    ensure!(
        r["version"] == version.as_str(),
        "kata used version {} of the artifacts, not {version}",
        r["version"]
    );
    let in_version = artifacts.join(".store").join(&version);
    for role in ["configuration", "kernel"] {
        let real = r["files"][role]["real"].as_str().unwrap_or_default();
        ensure!(
            Path::new(real).starts_with(&in_version) && r["files"][role]["recorded"] == true,
            "kata's {role} {real} is not a recorded file of {}",
            in_version.display()
        );
    }
    let want = format!("{:x}", Sha256::digest(kernel));
    ensure!(
        r["files"]["kernel"]["sha256"] == want.as_str(),
        "kata booted kernel {} (sha256 {}), not the expected one ({want})",
        r["files"]["kernel"]["path"],
        r["files"]["kernel"]["sha256"]
    );
    Ok(record)
}

/// The class's record in a `status --output json` document.
pub fn class_status(status: &Value) -> Option<&Value> {
    status["classes"]
        .as_array()?
        .iter()
        .find(|c| c["class"] == CLASS)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
