//! `kata-nri-manager status --config FILE [--output json]`: each class's mode, policy decision,
//! source, digest, state, last error and pods, from the running daemon's status file; when no
//! daemon runs, from what is installed on disk.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::configure::NodeArgs;
use crate::artifacts::{ArtifactStore, StoreSettings};
use crate::config::Config;
use crate::reconcile::status::{self, now};
use crate::reconcile::{ArtifactState, ClassDecision, ClassStatus, StatusReport};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Operator config (YAML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Node-local config (root-owned YAML).
    #[arg(long, value_name = "FILE")]
    pub node_config: Option<PathBuf>,
    /// `text` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = StatusOutput::Text)]
    pub output: StatusOutput,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    Text,
    Json,
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

pub fn run(args: StatusArgs) -> Result<()> {
    let loaded = crate::config::load(&args.config, args.node_config.as_deref())
        .with_context(|| format!("loading config {}", args.config.display()))?;
    let config = loaded.config;
    let file = super::run::status_file(&config, &args.node);
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
        StatusOutput::Json => println!("{}", serde_json::to_string_pretty(&shown)?),
        StatusOutput::Text => print!("{}", render(&shown)),
    }
    Ok(())
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
                decision: ClassDecision::Serve,
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
                failures: 0,
                pods: Vec::new(),
                updated_at: installed.map(|s| s.installed_at).unwrap_or_default(),
            }
        })
        .collect();
    StatusReport {
        pid: 0,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: 0,
        nri: Default::default(),
        containerd: Default::default(),
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
        }
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
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
            out.push_str(&format!("  last error: {error}\n"));
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

    #[test]
    fn renders_a_row_per_class_with_errors_and_pods() {
        let class = |name: &str, state, decision| ClassStatus {
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
            failures: 0,
            pods: vec!["default/p".into()],
            updated_at: 0,
        };
        let shown = Shown {
            daemon_running: false,
            report: StatusReport {
                pid: 0,
                version: "0".into(),
                started_at: 0,
                nri: Default::default(),
                containerd: Default::default(),
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
}
