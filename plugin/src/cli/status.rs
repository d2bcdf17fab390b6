//! `kata-nri-manager status --config FILE [--output json]`: each class's mode, policy decision,
//! source, digest, state, last error and pods, from the running daemon's status file; when no
//! daemon runs, from what is installed on disk.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::Output;

use super::configure::NodeArgs;
use crate::artifacts::{
    ArtifactStore, ClassState, DEFAULT_CONFIG_NAME, StoreSettings, kata_config_file,
    kata_config_path,
};
use crate::config::{Config, RuntimeClass};
use crate::host::modules::ModuleState;
use crate::reconcile::status::{self, HostStatus, now};
use crate::reconcile::{
    ArtifactState, ClassDecision, ClassStatus, KataConfigStatus, Provenance, StatusReport,
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Operator config (YAML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Node-local config (root-owned YAML).
    #[arg(long, value_name = "FILE")]
    pub node_config: Option<PathBuf>,
    /// `text` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// The report and where it came from.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Shown {
    /// Whether a daemon is running and wrote this report.
    daemon_running: bool,
    #[serde(flatten)]
    report: StatusReport,
}

/// How `status` ends, for scripts: its exit code says it without parsing the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusExit {
    /// 0: the daemon runs and no class it serves has failed.
    Healthy,
    /// 3: no daemon runs (the report is what the disk holds).
    NoDaemon,
    /// 4: the daemon runs and a class has failed (`state: failed`).
    ClassFailed,
    /// 5: the daemon runs and the host lacks what kata needs (a kernel module): no class is
    /// served.
    HostNotReady,
}

impl StatusExit {
    pub fn code(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::NoDaemon => 3,
            Self::ClassFailed => 4,
            Self::HostNotReady => 5,
        }
    }

    fn of(shown: &Shown) -> Self {
        if !shown.daemon_running {
            Self::NoDaemon
        } else if shown.report.host.problem().is_some() {
            Self::HostNotReady
        } else if shown
            .report
            .classes
            .iter()
            .any(|c| c.state == ArtifactState::Failed)
        {
            Self::ClassFailed
        } else {
            Self::Healthy
        }
    }
}

pub fn run(args: StatusArgs) -> Result<StatusExit> {
    let loaded = crate::config::load(&args.config, args.node_config.as_deref())
        .with_context(|| format!("loading config {}", args.config.display()))?;
    let config = loaded.config;
    let file = crate::daemon::status_file(&config, &args.node.paths());
    let shown = match status::read(&file) {
        Ok(mut report) if process_alive(report.pid) => {
            overlay_records(&config, &mut report);
            Shown {
                daemon_running: true,
                report,
            }
        }
        Ok(_) | Err(_) => Shown {
            daemon_running: false,
            report: from_disk(&config),
        },
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&shown)?),
        Output::Text => print!("{}", render(&shown)),
    }
    Ok(StatusExit::of(&shown))
}

/// What the artifacts directory says when no daemon reports.
fn from_disk(config: &Config) -> StatusReport {
    let store = ArtifactStore::new(StoreSettings::from_config(config));
    let classes = config
        .runtime_classes
        .iter()
        .map(|class| {
            let installed = store.verified(class);
            ClassStatus {
                class: class.name.clone(),
                provision: class.provision,
                decision: ClassDecision::Unevaluated,
                reason: Some("policies not evaluated: the daemon is not running".into()),
                source: installed
                    .as_ref()
                    .map(|s| s.reference.clone())
                    .or_else(|| Some(class.artifacts.url.as_str().to_owned())),
                digest: installed.as_ref().map(|s| s.manifest_digest.clone()),
                previous: installed
                    .as_ref()
                    .map(|s| s.previous.clone())
                    .unwrap_or_default(),
                held_back: None,
                version_skew: None,
                state: if installed.is_some() {
                    ArtifactState::Ready
                } else {
                    ArtifactState::Absent
                },
                last_error: None,
                last_error_kind: None,
                failures: 0,
                pods: Vec::new(),
                updated_at: installed
                    .as_ref()
                    .map(|s| s.installed_at)
                    .unwrap_or_default(),
                kata_config: installed
                    .as_ref()
                    .map(|record| kata_config(config, class, record)),
            }
        })
        .collect();
    StatusReport {
        pid: 0,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: 0,
        nri: Default::default(),
        containerd: Default::default(),
        host: Default::default(),
        classes,
    }
}

/// The install records are the truth about versions: a `rollback` run since the daemon last
/// wrote its report shows at once.
fn overlay_records(config: &Config, report: &mut StatusReport) {
    let store = ArtifactStore::new(StoreSettings::from_config(config));
    for status in &mut report.classes {
        if let Some(record) = store.installed(&status.class) {
            status.follow_record(&record);
            if status.decision == ClassDecision::Serve
                && let Some(class) = config
                    .runtime_classes
                    .iter()
                    .find(|c| c.name == status.class)
            {
                status.kata_config = Some(kata_config(config, class, &record));
            }
        }
    }
}

/// What the class's stanza names in the version `record` installed, and whether it is there
/// (looked at through the class's link, as kata looks).
fn kata_config(config: &Config, class: &RuntimeClass, record: &ClassState) -> KataConfigStatus {
    let path = kata_config_path(&config.artifacts_dir, class, &record.kata_settings);
    let link = config.artifacts_dir.join(&class.name);
    KataConfigStatus {
        config_path: path.display().to_string(),
        file: kata_config_file(&class.runtime).display().to_string(),
        links_to: class
            .runtime
            .config_file
            .is_none()
            .then(|| record.config_file.clone())
            .flatten(),
        policy_settings: !record.kata_settings.is_empty(),
        exists: path.is_file(),
        shim: crate::containerd::class_shim(&config.artifacts_dir, class)
            .map(|shim| provenance(&shim, &link, &record.path)),
        hypervisor: hypervisor_path(&path).map(|h| provenance(Path::new(&h), &link, &record.path)),
        signed_by: record.signed_by.clone(),
    }
}

/// `path`, and whether it is a file of the installed version (through the class's link or by
/// the version's own directory).
fn provenance(path: &Path, link: &Path, version_dir: &Path) -> Provenance {
    Provenance {
        path: path.display().to_string(),
        from_version: path.starts_with(link) || path.starts_with(version_dir),
    }
}

/// `[hypervisor.*] path` of the kata configuration at `config`, as kata reads it.
fn hypervisor_path(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let doc: toml_edit::DocumentMut = text.parse().ok()?;
    doc.get("hypervisor")?
        .as_table_like()?
        .iter()
        .find_map(|(_, table)| {
            table
                .as_table_like()?
                .get("path")?
                .as_str()
                .map(str::to_owned)
        })
}

/// The `shim:`, `hypervisor:` and `signature:` lines: where kata itself comes from.
fn provenance_lines(config: &KataConfigStatus) -> String {
    let line = |what: &str, program: &Provenance| {
        let place = if program.from_version {
            "from the version"
        } else {
            "from the node"
        };
        format!("  {what}: {} ({place})\n", program.path)
    };
    let mut out = String::new();
    match &config.shim {
        Some(shim) => out.push_str(&line("shim", shim)),
        None => out.push_str("  shim: NONE found (set runtime.runtimePath)\n"),
    }
    if let Some(hypervisor) = &config.hypervisor {
        out.push_str(&line("hypervisor", hypervisor));
    }
    match &config.signed_by {
        Some(key) => out.push_str(&format!("  signature: verified, cosign key {key}\n")),
        None => out.push_str("  signature: not checked (no artifacts.verify)\n"),
    }
    out
}

/// The `configuration:` line of a class in the text output.
fn configuration_line(config: &KataConfigStatus) -> String {
    if !config.exists {
        let why = if config.file == DEFAULT_CONFIG_NAME {
            "the artifact has no *.toml at its top and runtime.configFile is unset, so kata refuses to start this class's pods: set runtime.configFile to a kata configuration inside the artifact"
        } else {
            "kata refuses to start this class's pods: pull the class again"
        };
        return format!(
            "  configuration: NONE: {} does not exist: {why}\n",
            config.config_path
        );
    }
    let mut line = format!("  configuration: {}", config.file);
    if let Some(target) = &config.links_to {
        line.push_str(&format!(" -> {target}"));
    }
    if config.policy_settings {
        line.push_str(&format!(
            " (with policies' kata settings: {})",
            config.config_path
        ));
    }
    line.push('\n');
    line
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// The host's lines: each kernel module, and the CDI spec while a GPU class is served.
fn render_host(host: &HostStatus) -> String {
    let mut out = String::new();
    if !host.kernel_modules.is_empty() {
        let modules: Vec<String> = host
            .kernel_modules
            .iter()
            .map(|m| match m.state {
                ModuleState::Loaded => format!("{} (loaded)", m.name),
                ModuleState::Present => format!("{} (present)", m.name),
                ModuleState::Failed => format!("{} FAILED", m.name),
            })
            .collect();
        out.push_str(&format!("kernel modules: {}\n", modules.join(", ")));
        if let Some(problem) = host.problem() {
            out.push_str(&format!("  no class is served: {problem}\n"));
        }
    }
    if let Some(cdi) = &host.cdi {
        match (&cdi.last_error, cdi.devices.is_empty()) {
            (Some(e), _) => out.push_str(&format!("CDI spec: not written: {e}\n")),
            (None, true) => out.push_str(&format!(
                "CDI spec: no passthrough GPU (none bound to vfio-pci), {} absent\n",
                cdi.path
            )),
            (None, false) => out.push_str(&format!(
                "CDI spec: {} ({})\n",
                cdi.path,
                cdi.devices.join(", ")
            )),
        }
    }
    out
}

fn render(shown: &Shown) -> String {
    let report = &shown.report;
    let mut out = String::new();
    if shown.daemon_running {
        out.push_str(&format!(
            "daemon: running (pid {}, version {}, up {}s); NRI {}{}; containerd {}\n",
            report.pid,
            report.version,
            now().saturating_sub(report.started_at),
            if report.nri.connected {
                "connected"
            } else {
                "not connected"
            },
            if report.nri.synchronized {
                ""
            } else {
                " (pods unknown)"
            },
            match (&report.containerd.configured, &report.containerd.last_error) {
                (true, _) => "configured".to_owned(),
                (false, Some(e)) => format!("not configured: {e}"),
                (false, None) => "not configured yet".to_owned(),
            }
        ));
        if let Some(gap) = &report.containerd.unchecked {
            out.push_str(&format!("  not checked: {gap}\n"));
        }
        out.push_str(&render_host(&report.host));
    } else {
        out.push_str("daemon: not running (state from the artifacts directory)\n");
    }
    let rows: Vec<[String; 7]> = report
        .classes
        .iter()
        .map(|c| {
            [
                c.class.clone(),
                format!("{:?}", c.provision)
                    .to_lowercase()
                    .replace("ondemand", "onDemand"),
                match c.decision {
                    ClassDecision::Serve => "serve",
                    ClassDecision::Skip => "skip",
                    ClassDecision::Deny => "deny",
                    ClassDecision::Unevaluated => "-",
                }
                .to_owned(),
                c.state.as_str().to_owned(),
                c.digest
                    .as_deref()
                    .map(|d| d.chars().take(19).collect())
                    .unwrap_or_else(|| "-".into()),
                c.pods.len().to_string(),
                c.source.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "CLASS", "MODE", "DECISION", "STATE", "DIGEST", "PODS", "SOURCE",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let mut text = cells
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    out.push_str(&line(&header.map(str::to_owned)));
    for (row, class) in rows.iter().zip(&report.classes) {
        out.push_str(&line(row));
        if let Some(reason) = &class.reason
            && class.decision != ClassDecision::Serve
        {
            out.push_str(&format!("  reason: {reason}\n"));
        }
        if let Some(error) = &class.last_error {
            match &class.last_error_kind {
                Some(kind) => out.push_str(&format!("  last error ({kind}): {error}\n")),
                None => out.push_str(&format!("  last error: {error}\n")),
            }
        }
        if let Some(config) = &class.kata_config {
            out.push_str(&configuration_line(config));
            out.push_str(&provenance_lines(config));
        }
        if !class.previous.is_empty() {
            out.push_str(&format!(
                "  previous: {} (kata-nri-manager rollback {})\n",
                class.previous.join(", "),
                class.class
            ));
        }
        if let Some(skew) = &class.version_skew {
            out.push_str(&format!("  version skew: {skew}\n"));
        }
        if let Some(held) = &class.held_back {
            out.push_str(&format!(
                "  held back: {held} (rolled back from; installed again when the tag moves on)\n"
            ));
        }
        if !class.pods.is_empty() {
            out.push_str(&format!("  pods: {}\n", class.pods.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Provision;

    fn class(name: &str, state: ArtifactState, decision: ClassDecision) -> ClassStatus {
        ClassStatus {
            class: name.into(),
            provision: Provision::OnDemand,
            decision,
            reason: Some("denied by policy 10-gpu: no GPU".into()),
            source: Some("registry.local/kata:1".into()),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            previous: vec![format!("sha256:{}", "b".repeat(64))],
            held_back: Some(format!("sha256:{}", "c".repeat(64))),
            version_skew: Some(
                "the artifact needs kata 3.3.0; /opt/kata/shim is kata 3.2.0".into(),
            ),
            state,
            last_error: None,
            last_error_kind: None,
            failures: 0,
            pods: vec!["default/p".into()],
            updated_at: 0,
            kata_config: None,
        }
    }

    #[test]
    fn the_exit_code_says_whether_the_daemon_runs_and_a_class_failed() {
        let shown = |daemon_running: bool, states: &[ArtifactState]| Shown {
            daemon_running,
            report: StatusReport {
                pid: 1,
                version: "0".into(),
                started_at: 0,
                nri: Default::default(),
                containerd: Default::default(),
                host: Default::default(),
                classes: states
                    .iter()
                    .map(|state| class("k", *state, ClassDecision::Serve))
                    .collect(),
            },
        };
        use ArtifactState::*;
        assert_eq!(StatusExit::of(&shown(true, &[Ready, Absent])).code(), 0);
        assert_eq!(StatusExit::of(&shown(true, &[Ready, Failed])).code(), 4);
        assert_eq!(StatusExit::of(&shown(false, &[Failed])).code(), 3);
        assert_eq!(StatusExit::of(&shown(false, &[])).code(), 3);
        let mut missing_module = shown(true, &[Ready]);
        missing_module.report.host.kernel_modules = vec![crate::host::ModuleLoad {
            name: "vhost_vsock".into(),
            state: ModuleState::Failed,
            error: Some("kernel module vhost_vsock: modprobe failed".into()),
        }];
        assert_eq!(StatusExit::of(&missing_module).code(), 5);
        let text = render(&missing_module);
        assert!(
            text.contains(
                "kernel modules: vhost_vsock FAILED\n  no class is served: kernel module vhost_vsock: modprobe failed\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn without_a_daemon_no_policy_decided_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::config::parse_str(
            &format!(
                "artifactsDir: {}\nruntimeClasses:\n- {{name: k, artifacts: {{url: nvcr.io/k:1}}}}\n",
                dir.path().display()
            ),
            Path::new("c.yaml"),
            crate::config::FileKind::Trusted,
        )
        .expect("config");
        let report = from_disk(&config);
        assert_eq!(report.classes[0].decision, ClassDecision::Unevaluated);
        let text = render(&Shown {
            daemon_running: false,
            report,
        });
        let row = text.lines().find(|l| l.starts_with("k ")).expect("row");
        assert!(!row.contains("serve"), "{row}");
        assert!(text.contains("reason: policies not evaluated"), "{text}");
    }

    #[test]
    fn says_where_kata_comes_from_and_whether_the_version_was_signed() {
        let config = |signed_by: Option<&str>| KataConfigStatus {
            config_path: "/a/k/kata-nri-manager.toml".into(),
            file: DEFAULT_CONFIG_NAME.into(),
            links_to: None,
            policy_settings: false,
            exists: true,
            shim: Some(provenance(
                Path::new("/a/k/opt/kata/bin/containerd-shim-kata-v2"),
                Path::new("/a/k"),
                Path::new("/a/.store/sha256:1"),
            )),
            hypervisor: Some(provenance(
                Path::new("/usr/bin/qemu-system-x86_64"),
                Path::new("/a/k"),
                Path::new("/a/.store/sha256:1"),
            )),
            signed_by: signed_by.map(str::to_owned),
        };
        assert_eq!(
            provenance_lines(&config(Some("sha256:f0"))),
            "  shim: /a/k/opt/kata/bin/containerd-shim-kata-v2 (from the version)\n\
             \x20 hypervisor: /usr/bin/qemu-system-x86_64 (from the node)\n\
             \x20 signature: verified, cosign key sha256:f0\n"
        );
        assert!(
            provenance_lines(&config(None))
                .ends_with("  signature: not checked (no artifacts.verify)\n")
        );
        let in_version = provenance(
            Path::new("/a/.store/sha256:1/opt/kata/bin/qemu-system-x86_64"),
            Path::new("/a/k"),
            Path::new("/a/.store/sha256:1"),
        );
        assert!(in_version.from_version);
    }

    #[test]
    fn renders_a_row_per_class_with_errors_and_pods() {
        let shown = Shown {
            daemon_running: false,
            report: StatusReport {
                pid: 0,
                version: "0".into(),
                started_at: 0,
                nri: Default::default(),
                containerd: Default::default(),
                host: Default::default(),
                classes: vec![
                    class("kata-a", ArtifactState::Ready, ClassDecision::Serve),
                    class("kata-b", ArtifactState::NotServed, ClassDecision::Deny),
                ],
            },
        };
        let text = render(&shown);
        assert!(text.contains("daemon: not running"), "{text}");
        assert!(
            text.contains("kata-a  onDemand  serve     ready       sha256:aaaaaaaaaaaa  1     registry.local/kata:1"),
            "{text}"
        );
        assert!(
            text.contains("  reason: denied by policy 10-gpu: no GPU"),
            "{text}"
        );
        assert_eq!(text.matches("reason:").count(), 1, "{text}");
        assert!(text.contains("  pods: default/p"), "{text}");
        assert!(
            text.contains(&format!(
                "  previous: sha256:{} (kata-nri-manager rollback kata-a)",
                "b".repeat(64)
            )),
            "{text}"
        );
        assert!(text.contains("  held back: sha256:ccc"), "{text}");
        assert!(
            text.contains("  version skew: the artifact needs kata 3.3.0;"),
            "{text}"
        );
    }

    #[test]
    fn shows_the_kata_configuration_each_installed_stanza_names() {
        use std::collections::BTreeMap;
        use std::fs;

        let dir = tempfile::tempdir().expect("tempdir");
        let artifacts = dir.path();
        let config = crate::config::parse_str(
            &format!(
                "artifactsDir: {}\n\
                 runtimeClasses:\n\
                 - {{name: gpu, artifacts: {{url: nvcr.io/nvidia/kata:1, pullSecret: ngc}}}}\n\
                 - {{name: bare, artifacts: {{url: nvcr.io/nvidia/kata:2}}}}\n\
                 - {{name: qemu, artifacts: {{url: nvcr.io/kata/qemu:1}}, runtime: {{configFile: configuration-qemu.toml}}}}\n",
                artifacts.display()
            ),
            std::path::Path::new("node.yaml"),
            crate::config::FileKind::Trusted,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let install = |class: &str, digest: &str, config_file: Option<&str>| {
            let version = artifacts.join(".store").join(digest);
            fs::create_dir_all(&version).expect("version");
            std::os::unix::fs::symlink(
                std::path::Path::new(".store").join(digest),
                artifacts.join(class),
            )
            .expect("link");
            let record = ClassState {
                class: class.into(),
                reference: "nvcr.io/nvidia/kata:1".into(),
                resolved_digest: digest.into(),
                manifest_digest: digest.into(),
                path: version,
                installed_at: 1,
                files: BTreeMap::new(),
                blobs: Vec::new(),
                kata_configs: Vec::new(),
                kata_version: None,
                previous: Vec::new(),
                retired: Vec::new(),
                versions: BTreeMap::new(),
                rejected: Vec::new(),
                served_by: None,
                signed_by: None,
                binaries_from_version: false,
                kata_settings: Vec::new(),
                config_file: config_file.map(str::to_owned),
            };
            fs::create_dir_all(artifacts.join(".state")).expect("state dir");
            fs::write(
                artifacts.join(".state").join(format!("{class}.json")),
                serde_json::to_vec(&record).expect("json"),
            )
            .expect("record");
        };
        let with_config = format!("sha256:{}", "a".repeat(64));
        let without = format!("sha256:{}", "b".repeat(64));
        let version = artifacts.join(".store").join(&with_config);
        fs::create_dir_all(&version).expect("version");
        fs::write(
            version.join("configuration-qemu.toml"),
            "[hypervisor.qemu]\n",
        )
        .expect("toml");
        std::os::unix::fs::symlink("configuration-qemu.toml", version.join(DEFAULT_CONFIG_NAME))
            .expect("alias");
        install("gpu", &with_config, Some("configuration-qemu.toml"));
        install("bare", &without, None);
        install("qemu", &with_config, Some("configuration-qemu.toml"));

        let report = from_disk(&config);
        let text = render(&Shown {
            daemon_running: false,
            report,
        });
        assert!(
            text.contains("gpu  ")
                && text.contains(
                    "  configuration: kata-nri-manager.toml -> configuration-qemu.toml\n"
                ),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "  configuration: NONE: {}/bare/kata-nri-manager.toml does not exist: the artifact has no *.toml at its top and runtime.configFile is unset, so kata refuses to start this class's pods: set runtime.configFile",
                artifacts.display()
            )),
            "{text}"
        );
        assert!(
            text.contains("  configuration: configuration-qemu.toml\n"),
            "{text}"
        );
        let shown = from_disk(&config);
        let json = serde_json::to_value(&shown.classes[0]).expect("json");
        assert_eq!(
            json["kataConfig"],
            serde_json::json!({
                "configPath": format!("{}/gpu/kata-nri-manager.toml", artifacts.display()),
                "file": "kata-nri-manager.toml",
                "linksTo": "configuration-qemu.toml",
                "exists": true,
            })
        );
        assert_eq!(
            serde_json::to_value(&shown.classes[1]).expect("json")["kataConfig"]["exists"],
            false
        );
    }
}
