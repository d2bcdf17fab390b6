//! One private containerd per test: own temp dir, config, sockets, log; cleaned up on drop.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::config::{ContainerdOptions, FileSource, Layout, Version, render_config};
use crate::cri::Cri;
use crate::deps::Deps;

mod teardown;

/// Set to `1` to keep each test's containerd directory (config, log, root) after the test.
pub const KEEP_ENV: &str = "KNM_E2E_KEEP";

/// Where shims put their sockets whatever containerd's own paths are.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// The CRI namespace.
pub const K8S_NAMESPACE: &str = "k8s.io";

static INSTANCE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A running containerd of a given version, owned by one test.
///
/// Everything it writes lives in its own temp dir except shim sockets (`/run/containerd/s/`,
/// named by a hash of our socket path, so instances do not collide) and pod cgroups (under a
/// cgroup parent unique to the instance). Drop removes its pods through CRI, stops it, kills
/// anything left, unmounts, removes the cgroups and the temp dir.
pub struct Containerd {
    version: Version,
    deps: Deps,
    opts: ContainerdOptions,
    layout: Layout,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    cgroup_base: String,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("version", &self.version)
            .field("dir", &self.layout.dir)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl Containerd {
    /// Writes the config into a fresh temp dir, starts containerd, waits until CRI reports
    /// RuntimeReady (and the NRI socket exists when NRI is on), then imports the pause image
    /// and waits until CRI sees it.
    pub async fn start(
        deps: &Deps,
        version: Version,
        opts: ContainerdOptions,
    ) -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("knm-e2e-{}-", version.as_str().replace('.', "")))
            .tempdir()
            .context("creating the containerd temp dir")?;
        let layout = Layout::new(dir.path());
        let cgroup_base = format!(
            "/knm-e2e-{}-{}",
            std::process::id(),
            INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut cd = Containerd {
            version,
            deps: deps.clone(),
            opts,
            layout,
            dir: Some(dir),
            child: None,
            cgroup_base,
        };
        cd.prepare()?;
        cd.spawn()?;
        cd.wait_ready().await?;
        if cd.opts.import_pause_image {
            cd.import_pause_image().await?;
        }
        Ok(cd)
    }

    fn prepare(&self) -> Result<()> {
        for d in self.layout.dirs() {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        for (name, src) in &self.opts.nri_plugins {
            place(&self.layout.nri_plugin_dir.join(name), src)?;
        }
        for (name, src) in &self.opts.nri_plugin_configs {
            place(&self.layout.nri_plugin_config_dir.join(name), src)?;
        }
        let config = render_config(
            self.version,
            &self.layout,
            &self.opts,
            &self.deps.pause_image_ref,
        );
        fs::write(&self.layout.config, config)
            .with_context(|| format!("writing {}", self.layout.config.display()))?;
        Ok(())
    }

    fn path_env(&self) -> OsString {
        let mut dirs = vec![
            self.deps.containerd_dir(self.version).join("bin"),
            self.deps.runc_dir().to_path_buf(),
        ];
        if let Some(p) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&p));
        } else {
            dirs.extend(
                [
                    "/usr/local/sbin",
                    "/usr/local/bin",
                    "/usr/sbin",
                    "/usr/bin",
                    "/sbin",
                    "/bin",
                ]
                .map(PathBuf::from),
            );
        }
        std::env::join_paths(dirs).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("{} is already running (pid {:?})", self.version, self.pid());
        }
        // containerd leaves its NRI socket behind when it stops; a stale one would fool the
        // readiness check and make NRI fail to listen.
        let _ = fs::remove_file(&self.layout.nri_socket);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.layout.log)
            .with_context(|| format!("opening {}", self.layout.log.display()))?;
        let mut cmd = Command::new(self.deps.containerd_bin(self.version));
        cmd.arg("--config")
            .arg(&self.layout.config)
            .arg("--log-level")
            .arg(&self.opts.log_level)
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(&self.layout.dir);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        // containerd gets SIGTERM if the thread that started it dies (a killed test binary).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {}",
                self.deps.containerd_bin(self.version).display()
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    fn nri_expected(&self) -> bool {
        self.version.has_nri() && self.opts.nri
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let deadline = start + self.opts.ready_timeout;
        let mut last_err;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "{} exited during start ({status}); log {} ({KEEP_ENV}=1 keeps it):\n{}",
                    self.version,
                    self.layout.log.display(),
                    self.log_tail(40)
                );
            }
            match self.cri().await {
                Ok(mut cri) => match cri.status().await {
                    Ok(st) if st.runtime_ready() => {
                        if !self.nri_expected() || self.layout.nri_socket.exists() {
                            return Ok(());
                        }
                        last_err = format!(
                            "NRI socket {} not there yet",
                            self.layout.nri_socket.display()
                        );
                    }
                    Ok(st) => last_err = format!("runtime not ready: {:?}", st.conditions),
                    Err(e) => last_err = format!("{e:#}"),
                },
                Err(e) => last_err = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {:?} ({last_err}); log {} ({KEEP_ENV}=1 keeps it):\n{}",
                    self.version,
                    self.opts.ready_timeout,
                    self.layout.log.display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Imports the pause image archive with `ctr -n k8s.io images import` and waits until CRI's
    /// ImageStatus sees it. `start` does this unless told not to.
    pub async fn import_pause_image(&self) -> Result<()> {
        let tar = self.deps.pause_image.to_string_lossy().into_owned();
        self.ctr(&["images", "import", &tar]).await?;
        let mut cri = self.cri().await?;
        cri.wait_image(&self.deps.pause_image_ref, Duration::from_secs(10))
            .await?;
        Ok(())
    }

    /// Runs this version's `ctr --address <ours> -n k8s.io ARGS...`; returns its stdout.
    pub async fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(self.deps.ctr_bin(self.version))
            .arg("--address")
            .arg(&self.layout.address)
            .arg("-n")
            .arg(K8S_NAMESPACE)
            .args(args)
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .output()
            .await
            .context("running ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A new CRI connection (playing kubelet); pods it runs get this instance's cgroup parent.
    pub async fn cri(&self) -> Result<Cri> {
        Cri::connect(&self.layout.address, self.cgroup_base.clone()).await
    }

    /// The containerd version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The options it was started with.
    pub fn options(&self) -> &ContainerdOptions {
        &self.opts
    }

    /// All its paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The NRI socket (`socket_path`). Mount or watch its directory, not the file: containerd
    /// recreates it on restart.
    pub fn nri_socket(&self) -> &Path {
        &self.layout.nri_socket
    }

    /// NRI's `plugin_path` (launched plugins).
    pub fn nri_plugin_dir(&self) -> &Path {
        &self.layout.nri_plugin_dir
    }

    /// NRI's `plugin_config_path`.
    pub fn nri_plugin_config_dir(&self) -> &Path {
        &self.layout.nri_plugin_config_dir
    }

    /// The gRPC (CRI) socket.
    pub fn address(&self) -> &Path {
        &self.layout.address
    }

    /// The cgroup parent under which its pods' cgroups go (cgroupfs syntax).
    pub fn cgroup_base(&self) -> &str {
        &self.cgroup_base
    }

    /// Path of containerd's log file (stdout and stderr, kept across restarts).
    pub fn log_path(&self) -> &Path {
        &self.layout.log
    }

    /// containerd's whole log so far.
    pub fn log(&self) -> String {
        fs::read(&self.layout.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// containerd serves `handler`: CRI `Status` lists it (2.x; 1.x lists no handlers), and a
    /// pod named `pod` started with it runs on it. Returns the pod's id.
    pub async fn expect_serves(
        &self,
        cri: &mut crate::Cri,
        handler: &str,
        pod: &str,
    ) -> Result<String> {
        if self.version().config_version() >= 3 {
            let status = cri.status().await?;
            anyhow::ensure!(
                status.runtime_handlers.iter().any(|h| h == handler),
                "CRI Status does not list {handler}: {:?}",
                status.runtime_handlers
            );
        }
        let id = cri
            .run_pod(&crate::PodSpec::new(pod).handler(handler))
            .await
            .with_context(|| format!("RunPodSandbox with {handler}\n{}", self.log_tail(30)))?;
        let served_by = cri.pod_status(&id).await?.runtime_handler;
        anyhow::ensure!(
            served_by == handler,
            "pod {pod} runs on {served_by}, not {handler}"
        );
        Ok(id)
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log's current length: pass it to [`Self::wait_for_log_after`] to look only at what
    /// containerd writes from now on (the log is kept across restarts).
    pub fn log_mark(&self) -> usize {
        fs::metadata(&self.layout.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// The log from byte offset `mark` on.
    pub fn log_after(&self, mark: usize) -> String {
        let log = fs::read(&self.layout.log).unwrap_or_default();
        String::from_utf8_lossy(log.get(mark..).unwrap_or_default()).into_owned()
    }

    /// Waits until the log contains `needle` (checked every 10 ms).
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log_after(0, needle, timeout).await
    }

    /// Waits until the log written after `mark` contains `needle`.
    pub async fn wait_for_log_after(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_after(mark).contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{needle:?} not in {}'s log after {timeout:?}; tail:\n{}",
                    self.version,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until containerd logs that NRI plugin `NN-name` (e.g. `10-kata-nri-manager`)
    /// registered, after `mark`. 2.1 and 1.7 both log
    /// `plugin "external:NN-name[PID]" registered as "NN-name"` for an external plugin (PID: the
    /// plugin's), then 2.1 `plugin "NN-name" connected and synchronized`, 1.7
    /// `plugin "NN-name" connected`. Only the `registered as` part is matched.
    pub async fn wait_nri_registered(
        &self,
        plugin: &str,
        mark: usize,
        timeout: Duration,
    ) -> Result<()> {
        self.wait_for_log_after(mark, &format!("registered as \\\"{plugin}\\\""), timeout)
            .await
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGTERM, then wait for exit (SIGKILL after 10 s). Pods and shims keep running.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within 10 s of SIGTERM; killed",
                    self.version
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops containerd and starts it again on the same root, state and config; waits until
    /// ready (CRI, and the NRI socket when on). Pods stay up. Take a new [`Cri`] afterwards.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn()?;
        self.wait_ready().await
    }

    /// Starts a stopped containerd again (same root, state and config) and waits until ready.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn()?;
        self.wait_ready().await
    }

    /// Removes every pod, stops containerd and removes everything it left behind.
    /// Drop does the same; call this to see errors.
    pub async fn shutdown(mut self) -> Result<()> {
        let r = self.cleanup().await;
        self.finish();
        r
    }
}

/// The shim socket path containerd derives: `/run/containerd/s/<sha256(address/ns/id)>`.
pub fn shim_socket(address: &Path, namespace: &str, id: &str) -> PathBuf {
    let key = address.join(namespace).join(id);
    let digest = Sha256::digest(key.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SHIM_SOCKET_DIR).join(hex)
}

fn place(dest: &Path, src: &FileSource) -> Result<()> {
    let _ = fs::remove_file(dest);
    match src {
        FileSource::Copy(from) => {
            fs::copy(from, dest)
                .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
        }
        FileSource::Symlink(to) => {
            std::os::unix::fs::symlink(to, dest)
                .with_context(|| format!("linking {} to {}", dest.display(), to.display()))?;
        }
        FileSource::Contents(bytes, mode) => {
            fs::write(dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
            fs::set_permissions(dest, fs::Permissions::from_mode(*mode))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_socket_matches_containerd() {
        // containerd: sha256("<address>/<ns>/<id>") under /run/containerd/s.
        let p = shim_socket(
            Path::new("/run/containerd/containerd.sock"),
            "k8s.io",
            "abc",
        );
        let expect = Sha256::digest(b"/run/containerd/containerd.sock/k8s.io/abc");
        let hex: String = expect.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(p, Path::new("/run/containerd/s").join(hex));
    }
}
