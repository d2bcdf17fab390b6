//! containerd versions, the options a test gives, and the config.toml they become.

use crate::NO_KERNEL_MODULES;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The containerd builds the harness runs (Debian's packages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// containerd 2.1.x (Debian sid): NRI v0.8.0, config version 3, NRI on by default.
    V2_1,
    /// containerd 1.7.24 (Debian trixie): NRI v0.6.1, config version 2, NRI off by default.
    V1_7,
    /// containerd 1.6.20 (Debian bookworm): no NRI at all (the NRI section is ignored).
    V1_6,
}

impl Version {
    /// Every version, newest first.
    pub const ALL: [Version; 3] = [Version::V2_1, Version::V1_7, Version::V1_6];

    /// The `version =` of its config file.
    pub fn config_version(self) -> u32 {
        match self {
            Version::V2_1 => 3,
            Version::V1_7 | Version::V1_6 => 2,
        }
    }

    /// Whether this containerd has NRI.
    pub fn has_nri(self) -> bool {
        !matches!(self, Version::V1_6)
    }

    /// `KNM_CONTAINERD_2_1` and so on.
    pub fn env_key(self) -> &'static str {
        match self {
            Version::V2_1 => "KNM_CONTAINERD_2_1",
            Version::V1_7 => "KNM_CONTAINERD_1_7",
            Version::V1_6 => "KNM_CONTAINERD_1_6",
        }
    }

    /// "2.1", "1.7", "1.6".
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V2_1 => "2.1",
            Version::V1_7 => "1.7",
            Version::V1_6 => "1.6",
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "containerd {}", self.as_str())
    }
}

/// A CRI runtime handler stanza (`containerd.runtimes.<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeHandler {
    /// The handler name a pod asks for (`RunPodSandboxRequest.runtime_handler`).
    pub name: String,
    /// `runtime_type`, e.g. `io.containerd.runc.v2` or `io.containerd.kata.v2`.
    pub runtime_type: String,
    /// `runtime_path`: the shim binary containerd runs instead of looking one up by type.
    pub runtime_path: Option<PathBuf>,
    /// `pod_annotations`: annotation prefixes passed through to the runtime.
    pub pod_annotations: Vec<String>,
    /// Raw TOML lines put inside the stanza (after the fields above).
    pub extra: String,
    /// Raw TOML lines of its `options` table. `None`: for `io.containerd.runc.v2` the harness
    /// writes `SystemdCgroup = false` and a runc root of its own; for other types nothing.
    pub options: Option<String>,
}

impl RuntimeHandler {
    /// A handler run by runc: `runtime_type = "io.containerd.runc.v2"`.
    pub fn runc(name: impl Into<String>) -> Self {
        Self::new(name, "io.containerd.runc.v2")
    }

    /// A handler with any runtime type.
    pub fn new(name: impl Into<String>, runtime_type: impl Into<String>) -> Self {
        RuntimeHandler {
            name: name.into(),
            runtime_type: runtime_type.into(),
            runtime_path: None,
            pod_annotations: Vec::new(),
            extra: String::new(),
            options: None,
        }
    }

    /// Sets `runtime_path` (e.g. a wrapper that execs the real shim).
    pub fn runtime_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.runtime_path = Some(path.into());
        self
    }

    /// Adds a `pod_annotations` entry.
    pub fn pod_annotation(mut self, prefix: impl Into<String>) -> Self {
        self.pod_annotations.push(prefix.into());
        self
    }

    /// Appends raw TOML lines to the stanza.
    pub fn extra(mut self, toml: impl Into<String>) -> Self {
        self.extra.push_str(&toml.into());
        self.extra.push('\n');
        self
    }

    /// Replaces the `options` table's body with raw TOML lines.
    pub fn options(mut self, toml: impl Into<String>) -> Self {
        self.options = Some(toml.into());
        self
    }

    fn is_runc(&self) -> bool {
        self.runtime_type == "io.containerd.runc.v2"
    }
}

/// Name of the runc-backed test handler in the default options.
pub const TEST_HANDLER: &str = "kata-test";

/// A file the harness puts into a directory before containerd starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// Copy this file (mode preserved).
    Copy(PathBuf),
    /// A symlink to this path.
    Symlink(PathBuf),
    /// These bytes, with this mode (e.g. `0o755` for a script).
    Contents(Vec<u8>, u32),
}

/// What a test wants from its containerd. `Default`: NRI enabled with containerd's default
/// timeouts, handlers `runc` (default) and `kata-test`, both runc, pause image imported.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// Enable NRI (`disable = false`). Ignored by 1.6, which has no NRI.
    pub nri: bool,
    /// Files for NRI's `plugin_path` (launched plugins, named `NN-name`).
    pub nri_plugins: Vec<(String, FileSource)>,
    /// Files for NRI's `plugin_config_path` (`NN-name.conf`).
    pub nri_plugin_configs: Vec<(String, FileSource)>,
    /// `plugin_registration_timeout` (containerd's default 5 s when `None`).
    pub nri_registration_timeout: Option<Duration>,
    /// `plugin_request_timeout` (containerd's default 2 s when `None`).
    pub nri_request_timeout: Option<Duration>,
    /// The runtime handlers (CRI `containerd.runtimes`).
    pub runtimes: Vec<RuntimeHandler>,
    /// `default_runtime_name`; `None`: `runc` if present, else the first handler.
    pub default_runtime: Option<String>,
    /// Raw TOML appended to the end of config.toml.
    pub extra_toml: String,
    /// Import the pause image and wait until CRI sees it (needed to run pods).
    pub import_pause_image: bool,
    /// containerd's `--log-level` (`info` by default; `debug` shows every NRI exchange).
    pub log_level: String,
    /// Extra environment variables for containerd (and so for the shims it starts).
    pub env: Vec<(String, String)>,
    /// How long `start`/`restart` wait for readiness.
    pub ready_timeout: Duration,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            nri: true,
            nri_plugins: Vec::new(),
            nri_plugin_configs: Vec::new(),
            nri_registration_timeout: None,
            nri_request_timeout: None,
            runtimes: vec![
                RuntimeHandler::runc("runc"),
                RuntimeHandler::runc(TEST_HANDLER),
            ],
            default_runtime: None,
            extra_toml: String::new(),
            import_pause_image: true,
            log_level: "info".into(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl ContainerdOptions {
    /// Disables NRI.
    pub fn without_nri(mut self) -> Self {
        self.nri = false;
        self
    }

    /// Adds a runtime handler (or replaces the one with the same name).
    pub fn handler(mut self, handler: RuntimeHandler) -> Self {
        self.runtimes.retain(|h| h.name != handler.name);
        self.runtimes.push(handler);
        self
    }

    /// Replaces all runtime handlers.
    pub fn handlers(mut self, handlers: Vec<RuntimeHandler>) -> Self {
        self.runtimes = handlers;
        self
    }

    /// Puts a launched NRI plugin (`NN-name`) into `plugin_path`.
    pub fn nri_plugin(mut self, name: impl Into<String>, file: FileSource) -> Self {
        self.nri_plugins.push((name.into(), file));
        self
    }

    /// Puts a file (`NN-name.conf`) into `plugin_config_path`.
    pub fn nri_plugin_config(mut self, name: impl Into<String>, file: FileSource) -> Self {
        self.nri_plugin_configs.push((name.into(), file));
        self
    }

    /// Sets NRI's `plugin_registration_timeout`.
    pub fn registration_timeout(mut self, d: Duration) -> Self {
        self.nri_registration_timeout = Some(d);
        self
    }

    /// Sets NRI's `plugin_request_timeout`.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.nri_request_timeout = Some(d);
        self
    }

    /// Appends raw TOML to config.toml.
    pub fn extra_toml(mut self, toml: impl Into<String>) -> Self {
        self.extra_toml.push_str(&toml.into());
        self.extra_toml.push('\n');
        self
    }

    /// Sets containerd's log level.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// Adds an environment variable for containerd.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Skips the pause image import (containerd then cannot run pods).
    pub fn no_pause_image(mut self) -> Self {
        self.import_pause_image = false;
        self
    }
}

/// Every path a containerd instance owns, all under one temporary directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The temporary directory itself.
    pub dir: PathBuf,
    /// config.toml.
    pub config: PathBuf,
    /// `root`.
    pub root: PathBuf,
    /// `state`.
    pub state: PathBuf,
    /// `grpc.address`.
    pub address: PathBuf,
    /// `ttrpc.address`.
    pub ttrpc_address: PathBuf,
    /// NRI `socket_path`.
    pub nri_socket: PathBuf,
    /// NRI `plugin_path`.
    pub nri_plugin_dir: PathBuf,
    /// NRI `plugin_config_path`.
    pub nri_plugin_config_dir: PathBuf,
    /// CNI `bin_dir` (empty).
    pub cni_bin_dir: PathBuf,
    /// CNI `conf_dir` (empty).
    pub cni_conf_dir: PathBuf,
    /// The opt plugin's `path`.
    pub opt_dir: PathBuf,
    /// runc's `--root` for the runc-type handlers.
    pub runc_root: PathBuf,
    /// containerd's log (stdout and stderr, appended across restarts).
    pub log: PathBuf,
}

impl Layout {
    /// The layout under `dir`.
    pub fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
            config: dir.join("config.toml"),
            root: dir.join("root"),
            state: dir.join("state"),
            address: dir.join("containerd.sock"),
            ttrpc_address: dir.join("containerd.sock.ttrpc"),
            nri_socket: dir.join("nri/nri.sock"),
            nri_plugin_dir: dir.join("nri/plugins"),
            nri_plugin_config_dir: dir.join("nri/conf.d"),
            cni_bin_dir: dir.join("cni/bin"),
            cni_conf_dir: dir.join("cni/net.d"),
            opt_dir: dir.join("opt"),
            runc_root: dir.join("runc"),
            log: dir.join("containerd.log"),
        }
    }

    /// Directories to create before start.
    pub fn dirs(&self) -> Vec<&Path> {
        vec![
            &self.root,
            &self.state,
            self.nri_socket.parent().unwrap_or(&self.dir),
            &self.nri_plugin_dir,
            &self.nri_plugin_config_dir,
            &self.cni_bin_dir,
            &self.cni_conf_dir,
            &self.opt_dir,
            &self.runc_root,
        ]
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn p(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

fn go_duration(d: Duration) -> String {
    toml_str(&format!("{}ms", d.as_millis()))
}

/// Renders config.toml for `version`.
pub fn render_config(
    version: Version,
    layout: &Layout,
    opts: &ContainerdOptions,
    pause_ref: &str,
) -> String {
    let mut c = String::new();
    let w = &mut c;
    let _ = writeln!(w, "# Written by kata-nri-integration for {version}.");
    let _ = writeln!(w, "version = {}", version.config_version());
    let _ = writeln!(w, "root = {}", p(&layout.root));
    let _ = writeln!(w, "state = {}", p(&layout.state));
    // Snapshotters the tests never use: skip their probing.
    let mut disabled = vec![
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.aufs",
    ];
    if version == Version::V2_1 {
        disabled.extend([
            "io.containerd.snapshotter.v1.erofs",
            "io.containerd.snapshotter.v1.blockfile",
        ]);
    }
    let disabled: Vec<String> = disabled.iter().map(|s| toml_str(s)).collect();
    let _ = writeln!(w, "disabled_plugins = [{}]", disabled.join(", "));
    let _ = writeln!(w);
    let _ = writeln!(w, "[grpc]\n  address = {}", p(&layout.address));
    let _ = writeln!(w, "[ttrpc]\n  address = {}", p(&layout.ttrpc_address));
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}",
        p(&layout.opt_dir)
    );
    let _ = writeln!(w);

    let default_runtime = opts.default_runtime.clone().unwrap_or_else(|| {
        if opts.runtimes.iter().any(|h| h.name == "runc") || opts.runtimes.is_empty() {
            "runc".into()
        } else {
            opts.runtimes[0].name.clone()
        }
    });

    // (runtime plugin section, images section, grpc section)
    let (rt, cni_bin) = match version {
        Version::V2_1 => {
            let images = "plugins.\"io.containerd.cri.v1.images\"";
            let _ = writeln!(w, "[{images}]\n  snapshotter = \"overlayfs\"");
            let _ = writeln!(
                w,
                "[{images}.pinned_images]\n  sandbox = {}",
                toml_str(pause_ref)
            );
            let _ = writeln!(w);
            let grpc = "plugins.\"io.containerd.grpc.v1.cri\"";
            let _ = writeln!(w, "[{grpc}]");
            let _ = writeln!(
                w,
                "  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\""
            );
            let _ = writeln!(w);
            let rt = "plugins.\"io.containerd.cri.v1.runtime\"";
            let _ = writeln!(w, "[{rt}]\n  restrict_oom_score_adj = true");
            (rt, format!("bin_dirs = [{}]", p(&layout.cni_bin_dir)))
        }
        Version::V1_7 | Version::V1_6 => {
            let rt = "plugins.\"io.containerd.grpc.v1.cri\"";
            let _ = writeln!(w, "[{rt}]");
            let _ = writeln!(w, "  sandbox_image = {}", toml_str(pause_ref));
            let _ = writeln!(w, "  restrict_oom_score_adj = true");
            let _ = writeln!(
                w,
                "  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\""
            );
            (rt, format!("bin_dir = {}", p(&layout.cni_bin_dir)))
        }
    };
    let _ = writeln!(
        w,
        "[{rt}.cni]\n  {cni_bin}\n  conf_dir = {}",
        p(&layout.cni_conf_dir)
    );
    let _ = writeln!(w, "[{rt}.containerd]");
    if version != Version::V2_1 {
        let _ = writeln!(w, "  snapshotter = \"overlayfs\"");
    }
    let _ = writeln!(w, "  default_runtime_name = {}", toml_str(&default_runtime));
    for h in &opts.runtimes {
        let key = format!("{rt}.containerd.runtimes.{}", toml_str(&h.name));
        let _ = writeln!(w, "[{key}]");
        let _ = writeln!(w, "  runtime_type = {}", toml_str(&h.runtime_type));
        if let Some(path) = &h.runtime_path {
            let _ = writeln!(w, "  runtime_path = {}", p(path));
        }
        if !h.pod_annotations.is_empty() {
            let list: Vec<String> = h.pod_annotations.iter().map(|a| toml_str(a)).collect();
            let _ = writeln!(w, "  pod_annotations = [{}]", list.join(", "));
        }
        if !h.extra.is_empty() {
            let _ = writeln!(w, "{}", h.extra.trim_end());
        }
        let options = match &h.options {
            Some(o) => Some(o.clone()),
            None if h.is_runc() => Some(format!(
                "SystemdCgroup = false\nRoot = {}",
                p(&layout.runc_root)
            )),
            None => None,
        };
        if let Some(o) = options {
            let _ = writeln!(w, "[{key}.options]\n{}", o.trim_end());
        }
    }
    let _ = writeln!(w);

    // 1.6 has no NRI and ignores the section; writing it keeps the negative test honest.
    let nri = "plugins.\"io.containerd.nri.v1.nri\"";
    let _ = writeln!(w, "[{nri}]");
    let _ = writeln!(w, "  disable = {}", !opts.nri);
    let _ = writeln!(w, "  socket_path = {}", p(&layout.nri_socket));
    let _ = writeln!(w, "  plugin_path = {}", p(&layout.nri_plugin_dir));
    let _ = writeln!(
        w,
        "  plugin_config_path = {}",
        p(&layout.nri_plugin_config_dir)
    );
    if let Some(d) = opts.nri_registration_timeout {
        let _ = writeln!(w, "  plugin_registration_timeout = {}", go_duration(d));
    }
    if let Some(d) = opts.nri_request_timeout {
        let _ = writeln!(w, "  plugin_request_timeout = {}", go_duration(d));
    }
    if !opts.extra_toml.is_empty() {
        let _ = writeln!(w, "\n# extra\n{}", opts.extra_toml.trim_end());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn config_mentions_everything() {
        let layout = Layout::new(Path::new("/tmp/x"));
        let opts = ContainerdOptions::default()
            .handler(RuntimeHandler::runc("kata-qemu").runtime_path("/w/shim"))
            .registration_timeout(Duration::from_millis(1500));
        let c21 = render_config(Version::V2_1, &layout, &opts, "registry.k8s.io/pause:3.10");
        assert!(c21.contains("version = 3"));
        assert!(c21.contains("sandbox = \"registry.k8s.io/pause:3.10\""));
        assert!(c21.contains("runtime_path = \"/w/shim\""));
        assert!(c21.contains("plugin_registration_timeout = \"1500ms\""));
        assert!(c21.contains("restrict_oom_score_adj = true"));
        let c17 = render_config(Version::V1_7, &layout, &opts, "registry.k8s.io/pause:3.10");
        assert!(c17.contains("version = 2"));
        assert!(c17.contains("sandbox_image = \"registry.k8s.io/pause:3.10\""));
        assert!(c17.contains("disable = false"));
        assert!(
            c17.contains(
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.\"kata-test\"]"
            )
        );
    }
}

/// Writes `text` to `path` with `mode` (config files: the daemon refuses a node-local config
/// others can write).
pub fn write_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Where `containerd.restart` goes: the operator config (`systemd`), or the node-local one
/// (`command`, `none`, and anything naming a host program).
#[derive(Debug, Clone, Copy)]
pub enum RestartIn<'a> {
    Operator(&'a str),
    Node(&'a str),
}

/// `<dir>/operator.yaml` (0644) and `<dir>/node.yaml` (0600) serving the runc-backed class
/// `class` through containerd at `address` with config file `config`, restarted as `restart`
/// (a YAML flow mapping). Returns (operator, node).
pub fn write_runc_class_configs(
    dir: &Path,
    class: &str,
    address: &Path,
    config: &Path,
    restart: RestartIn<'_>,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let (operator_restart, node_restart) = match restart {
        RestartIn::Operator(r) => (format!("  restart: {r}\n"), String::new()),
        RestartIn::Node(r) => (String::new(), format!("  restart: {r}\n")),
    };
    let operator = dir.join("operator.yaml");
    write_file(
        &operator,
        &format!(
            "containerd:\n  mode: inline\n  address: {}\n{operator_restart}\
             runtimeClasses:\n\
             - name: {class}\n  \
               artifacts: {{url: nvcr.io/kata/runc:1}}\n  \
               runtime: {{privilegedWithoutHostDevices: false}}\n",
            address.display()
        ),
        0o644,
    )?;
    // A runtime other than kata's is the node's to name.
    let node = dir.join("node.yaml");
    write_file(
        &node,
        &format!(
            "containerd:\n  configPath: {}\n{node_restart}\
             {NO_KERNEL_MODULES}\
             runtimeClasses:\n\
             - name: {class}\n  \
               runtime: {{runtimeType: io.containerd.runc.v2}}\n",
            config.display()
        ),
        0o600,
    )?;
    Ok((operator, node))
}
