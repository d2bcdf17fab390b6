//! The kata-nri-manager daemon as a real process, the way an operator runs it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

/// A config that configures nothing: enough for the NRI tests. The operations endpoint takes
/// any free port so that tests can run side by side.
pub const EMPTY_CONFIG: &str = "listen: 127.0.0.1:0\nruntimeClasses: []\n";

/// The node file's line that loads no kernel modules. The test machines' kernel has no vhost
/// modules (nor modprobe) at all, so a daemon with the default `[vhost_vsock, vhost_net]` would
/// serve no class there; `integration/tests/kernel_modules.rs` tests the loading itself with a
/// fake modprobe.
pub const NO_KERNEL_MODULES: &str = "node: {kernelModules: []}\n";

/// The node-local config every test daemon gets unless it brings its own: everything the daemon
/// writes stays in its temporary directory (`{dir}` is replaced with it).
pub const NODE_CONFIG_TEMPLATE: &str = "artifactsDir: {dir}/artifacts\n\
containerd:\n  configPath: {dir}/containerd/config.toml\n  restart: {method: none}\n\
gate: {dir: {dir}/gate, socket: {dir}/run/gate.sock}\n\
policies: {dir: {dir}/policies.d}\n\
node: {kernelModules: []}\n";

/// How a test starts the daemon.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    pub name: String,
    pub idx: String,
    pub config: String,
    /// The node-local config; `{dir}` is replaced with the daemon's temporary directory.
    pub node_config: String,
    /// The daemon's state directory (ownership record, status); default: in its temporary
    /// directory. Give one to keep state across daemon restarts, as a node does.
    pub state_dir: Option<PathBuf>,
    pub extra_args: Vec<String>,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            name: "kata-nri-manager".into(),
            idx: "42".into(),
            config: EMPTY_CONFIG.into(),
            node_config: NODE_CONFIG_TEMPLATE.into(),
            state_dir: None,
            extra_args: Vec::new(),
        }
    }
}

impl PluginOptions {
    pub fn idx(mut self, idx: &str) -> Self {
        self.idx = idx.into();
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// The name containerd logs for the plugin: `NN-name`.
    pub fn full_name(&self) -> String {
        format!("{}-{}", self.idx, self.name)
    }
}

/// The integration package's build of the shim gate, beside the daemon under test.
pub const GATE_UNDER_TEST: &str = "knm-gate-under-test";

/// A running `kata-nri-manager run` with JSON logs captured to a file. Killed on drop.
pub struct PluginProcess {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PluginProcess {
    /// Starts `binary run` against `nri_socket`.
    pub fn start(binary: &Path, nri_socket: &Path, opts: &PluginOptions) -> Result<Self> {
        Self::start_with_env(binary, nri_socket, opts, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    pub fn start_with_env(
        binary: &Path,
        nri_socket: &Path,
        opts: &PluginOptions,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("knm-plugin-").tempdir()?;
        let config = dir.path().join("config.yaml");
        fs::write(&config, &opts.config)?;
        // The daemon refuses an operator config that others may write.
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600))?;
        let node_config = dir.path().join("node.yaml");
        let dir_text = dir
            .path()
            .to_str()
            .context("temporary directory is not UTF-8")?;
        fs::write(&node_config, opts.node_config.replace("{dir}", dir_text))?;
        fs::set_permissions(&node_config, fs::Permissions::from_mode(0o600))?;
        let log = dir.path().join("plugin.log");
        let log_file = fs::File::create(&log)?;
        let mut command = Command::new(binary);
        command.arg("run");
        // The gate built beside the daemon under test (`cargo` names it knm-gate-under-test;
        // a node has kata-nri-shim-gate there, which the daemon finds by itself).
        let gate = binary.with_file_name(GATE_UNDER_TEST);
        if gate.exists() {
            command.arg("--gate-binary").arg(gate);
        }
        let child = command
            .arg("--config")
            .arg(&config)
            .arg("--node-config")
            .arg(&node_config)
            .arg("--state-dir")
            .arg(
                opts.state_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("state")),
            )
            .arg("--nri-socket")
            .arg(nri_socket)
            .args(["--plugin-name", &opts.name, "--plugin-idx", &opts.idx])
            .args(["--log-format", "json"])
            .args(&opts.extra_args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            log,
            _dir: dir,
        })
    }

    /// The operator config file the daemon was started with (rewrite it to change the config).
    pub fn config_file(&self) -> PathBuf {
        self._dir.path().join("config.yaml")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The daemon's temporary directory (its node-local paths live here).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The raw log (JSON lines).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's JSON events (lines that are not JSON are skipped).
    pub fn events(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Events whose `message` is `message`.
    pub fn events_with_message(&self, message: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["message"] == message)
            .collect()
    }

    /// Waits until `count` events satisfy `pred`.
    pub async fn wait_for_events(
        &self,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Value> = self.events().into_iter().filter(|e| pred(e)).collect();
            if found.len() >= count {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!(
                    "waited {timeout:?} for {count} matching plugin log events, saw {}; log:\n{}",
                    found.len(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the `n`th "registered with the runtime" event.
    pub async fn wait_registered(&self, n: usize, timeout: Duration) -> Result<()> {
        self.wait_for_events(n, timeout, |e| {
            e["message"] == "registered with the runtime"
        })
        .await
        .map(|_| ())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Open file descriptors of the process.
    pub fn fd_count(&self) -> Result<usize> {
        let pid = self.pid().context("plugin exited")?;
        Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("plugin exited")?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn stop(mut self) -> Result<std::process::ExitStatus> {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a pid we own; no memory involved.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        Ok(tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await??)
    }
}

/// Runs the daemon binary with `args` to completion, returning exit status and stderr.
pub async fn run_to_completion(binary: &Path, args: &[&str]) -> Result<(i32, String)> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .context("command did not finish in 30 s")??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
