//! A node as the daemon's end-to-end tests and the demo need it: containerd, a registry holding
//! a class's artifacts, and a stand-in kata shim; and the daemon running on it.
//!
//! The stand-in shim is a script that refuses to start a sandbox unless the class's artifacts
//! are installed with the pushed bytes, notes the version the class's link points at, then
//! `exec`s runc's shim. containerd restarts the daemon
//! asks for (the `command` strategy appends a line to a marker file) are carried out through the
//! harness.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::registry::RegistryOptions;
use crate::{Containerd, ContainerdOptions, Deps, PluginOptions, PluginProcess, Registry, Version};

/// The class every node serves (a runc-typed stand-in for a kata class).
pub const CLASS: &str = "knm-kata";
/// The artifact files as pushed.
pub const VMLINUX: &[u8] = b"stand-in guest kernel\n";
pub const ROOTFS: &[u8] = b"stand-in guest rootfs image\n";
pub const KATA_TOML: &[u8] = b"[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\n";
/// The kata version the stand-in shim says it is (`--version`).
pub const STAND_IN_KATA_VERSION: &str = "3.2.0";
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

    /// The stand-in kata shim (the class's real shim).
    pub fn shim(&self) -> PathBuf {
        self.dir.path().join("containerd-shim-kata-stand-in")
    }

    /// The kernel the stand-in shim accepts from now on (a new artifact version's).
    pub fn expect_vmlinux(&self, bytes: &[u8]) -> Result<()> {
        Ok(std::fs::write(
            self.dir.path().join("expected-vmlinux"),
            bytes,
        )?)
    }

    /// The OCI spec (containerd's bundle `config.json`) of the last sandbox the stand-in shim
    /// started: what kata would have been given.
    pub fn last_sandbox_spec(&self) -> Option<Value> {
        let text = std::fs::read(self.dir.path().join("last-sandbox-spec.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The version (`.store/<digest>`) the class's link pointed at at each sandbox start.
    pub fn shim_starts(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("shim-starts"))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn write_stand_in_shim(&self) -> Result<()> {
        let expected = self.dir.path().join("expected-vmlinux");
        self.expect_vmlinux(VMLINUX)?;
        std::fs::write(
            self.dir.path().join("stand-in-version"),
            STAND_IN_KATA_VERSION,
        )?;
        let script = format!(
            "#!/bin/sh\n\
             # A stand-in kata shim: a sandbox starts only on installed, intact artifacts.\n\
             if [ \"$1\" = --version ]; then\n\
             \x20 echo \"Kata Containers containerd shim (Golang): id: \\\"io.containerd.kata.v2\\\", version: $(cat {version}), commit: stand-in\"\n\
             \x20 exit 0\n\
             fi\n\
             for arg in \"$@\"; do\n\
             \x20 if [ \"$arg\" = start ]; then\n\
             \x20   if ! cmp -s {installed} {expected}; then\n\
             \x20     echo \"stand-in kata shim: artifacts of {CLASS} are not installed\" >&2\n\
             \x20     exit 1\n\
             \x20   fi\n\
             \x20   readlink {link} >> {starts}\n\
             \x20   cp config.json {spec} 2>/dev/null || true\n\
             \x20 fi\n\
             done\n\
             exec {runc} \"$@\"\n",
            installed = self.artifacts().join(CLASS).join("vmlinux").display(),
            link = self.artifacts().join(CLASS).display(),
            starts = self.dir.path().join("shim-starts").display(),
            version = self.dir.path().join("stand-in-version").display(),
            spec = self.dir.path().join("last-sandbox-spec.json").display(),
            expected = expected.display(),
            runc = self.deps.runc_shim_bin(self.cd.version()).display(),
        );
        std::fs::write(self.shim(), script)?;
        std::fs::set_permissions(self.shim(), std::fs::Permissions::from_mode(0o755))?;
        Ok(())
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
             \x20 runtime: {{runtimeType: io.containerd.runc.v2, privilegedWithoutHostDevices: false}}\n",
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
        ensure!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
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
