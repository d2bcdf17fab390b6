//! `kata-nri-manager configure` and `kata-nri-manager uninstall`: write (or remove) every runtime
//! class's stanza in containerd's config in one edit, check it with containerd, commit it, and
//! restart containerd once (the edit itself: [`crate::containerd::sync()`], which the daemon runs
//! too).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::Output;

use crate::config::{Config, Provision};
use crate::containerd::diff::edit_diff;
use crate::containerd::restart::Outcome;
use crate::containerd::{
    Applied, NodePaths, OwnershipRecord, RuntimeStanza, ownership_path, plan, write_and_restart,
};

/// Arguments of `configure` and `uninstall`.
#[derive(Debug, Args)]
pub struct ConfigureArgs {
    /// Operator config (YAML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Node-local config (root-owned YAML).
    #[arg(long, value_name = "FILE")]
    pub node_config: Option<PathBuf>,
    /// Print the unified diff of what would be written; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the config but do not restart containerd (a restart is pending).
    #[arg(long)]
    pub no_restart: bool,
    /// `text`: a sentence per change; `json`: one document (`config`, `changes`, `result`).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// `uninstall` takes the same arguments as `configure`.
pub type UninstallArgs = ConfigureArgs;

/// Node facts, hidden: for tests and unusual nodes.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The state directory (ownership record, status) [default: the config's `stateDir`].
    #[arg(
        long,
        value_name = "DIR",
        hide = true,
        env = "KATA_NRI_MANAGER_STATE_DIR"
    )]
    pub state_dir: Option<PathBuf>,
    /// The containerd binary (version, `config dump` check) [default: `containerd` on PATH].
    #[arg(long, value_name = "FILE", hide = true)]
    pub containerd_binary: Option<PathBuf>,
    /// Where the kernel's files (`/sys`, `/dev`) are read: kernel modules, PCI devices, GPUs
    /// [default: /]. A fake tree in tests.
    #[arg(
        long,
        value_name = "DIR",
        hide = true,
        env = "KATA_NRI_MANAGER_HOST_ROOT"
    )]
    pub host_root: Option<PathBuf>,
}

impl NodeArgs {
    /// The overrides as the containerd sync and the daemon take them.
    pub fn paths(&self) -> NodePaths {
        NodePaths {
            state_dir: self.state_dir.clone(),
            containerd_binary: self.containerd_binary.clone(),
            host_root: self.host_root.clone(),
        }
    }
}

/// `configure`: makes containerd's config serve exactly the config's runtime classes.
pub fn configure(args: ConfigureArgs) -> Result<()> {
    let config = load(&args)?;
    run(
        &config,
        &stanzas(&config),
        &args.node.paths(),
        args.dry_run,
        args.no_restart,
        args.output,
    )
}

/// `uninstall`: removes every stanza (and the drop-in and its `imports` entry) we wrote.
pub fn uninstall(args: UninstallArgs) -> Result<()> {
    let node_file_missing = args.node_config.as_ref().filter(|node| !node.exists());
    let config = match node_file_missing {
        // A node the daemon never configured (it waits for its node file before touching
        // anything): the defaults say where its record would be. An uninstall run on every
        // labelled node (the Helm chart's hook) must not fail on such a node.
        Some(_) => {
            let _ = super::logging::init(super::LogFormat::Text, None);
            let text = std::fs::read_to_string(&args.config)
                .with_context(|| format!("reading config {}", args.config.display()))?;
            crate::config::parse_str(&text, &args.config, crate::config::FileKind::Operator)?
        }
        None => load(&args)?,
    };
    let record = ownership_path(&config, &args.node.paths());
    if let Some(node_file) = node_file_missing
        && !OwnershipRecord::load(&record)?.is_empty()
    {
        anyhow::bail!(
            "the node file {} is missing, but {} records stanzas kata-nri-manager wrote: put the node file back (it says where containerd's config is) and run uninstall again",
            node_file.display(),
            record.display()
        );
    }
    if !args.dry_run {
        remove_cdi_spec(&config);
    }
    if OwnershipRecord::load(&record)?.is_empty() {
        // Nothing of ours to remove: containerd's file is not ours to read, let alone edit or
        // restart for (it may be one we cannot parse, on a node we never configured).
        match args.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&Report {
                    config: &config.containerd.config_path,
                    changes: &[],
                    result: "unchanged",
                    restart_seconds: None,
                    diff: None,
                })?
            ),
            Output::Text => println!(
                "containerd config {}: nothing of kata-nri-manager's to remove (no stanza recorded in {})",
                config.containerd.config_path.display(),
                record.display()
            ),
        }
        return Ok(());
    }
    run(
        &config,
        &[],
        &args.node.paths(),
        args.dry_run,
        args.no_restart,
        args.output,
    )
}

/// The CDI spec the daemon writes for GPU classes goes with the classes. A failure is reported
/// and does not stop the uninstall: the stanzas are what makes a node run kata pods.
fn remove_cdi_spec(config: &Config) {
    let writer = crate::host::CdiWriter::new(&config.cdi.dir, &config.cdi.kind);
    match writer.sync(None) {
        Ok(crate::host::cdi::CdiChange::Removed) => {
            eprintln!("removed the CDI spec {}", writer.path().display())
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: {e}"),
    }
}

fn load(args: &ConfigureArgs) -> Result<Config> {
    // The edit's warnings and changes are logged; stdout stays the command's report.
    let _ = super::logging::init(super::LogFormat::Text, None);
    let loaded = crate::config::load(&args.config, args.node_config.as_deref())?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(loaded.config)
}

/// The stanza of each runtime class, as the config asks for it.
pub fn stanzas(config: &Config) -> Vec<RuntimeStanza> {
    config
        .runtime_classes
        .iter()
        .map(|class| {
            let runtime = &class.runtime;
            let mut stanza = RuntimeStanza::new(&class.name, &runtime.runtime_type);
            // An onDemand class starts through its gate link (the daemon installs the gate).
            stanza.runtime_path = match class.provision {
                Provision::OnDemand => Some(
                    crate::gate::link_path(&config.gate.dir, &class.name)
                        .display()
                        .to_string(),
                ),
                Provision::Eager => runtime
                    .runtime_path
                    .as_ref()
                    .map(|p| p.display().to_string()),
            };
            stanza.pod_annotations = runtime.pod_annotations.clone();
            stanza.privileged_without_host_devices = Some(runtime.privileged_without_host_devices);
            // The CLI runs no policies: the artifact's own configuration, as the daemon names
            // it without kata settings.
            stanza.config_path = Some(
                crate::artifacts::kata_config_path(&config.artifacts_dir, class, &[])
                    .display()
                    .to_string(),
            );
            stanza
        })
        .collect()
}

/// What `configure` and `uninstall` report, `--output json`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    config: &'a std::path::Path,
    changes: &'a [crate::containerd::Change],
    /// `unchanged`, `restartPending` (written, containerd not restarted), `restarted`, or
    /// `dryRun` (nothing written: `diff` is what would be).
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diff: Option<String>,
}

fn run(
    config: &Config,
    desired: &[RuntimeStanza],
    node: &NodePaths,
    dry_run: bool,
    no_restart: bool,
    output: Output,
) -> Result<()> {
    let planned = plan(config, desired, node)?;
    let main_path = &planned.main_path;
    let changes = &planned.edit.changes;
    let report = |result, restart_seconds, diff| Report {
        config: main_path,
        changes,
        result,
        restart_seconds,
        diff,
    };
    if dry_run {
        let diff = edit_diff(&planned.edit, main_path);
        match output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&report("dryRun", None, Some(diff)))?
            ),
            Output::Text if diff.is_empty() => {
                println!("containerd config {}: no change", main_path.display())
            }
            Output::Text => print!("{diff}"),
        }
        return Ok(());
    }
    if output == Output::Text {
        for change in changes {
            println!("{change}");
        }
    }
    let applied = write_and_restart(config, &planned, desired, no_restart)?;
    if output == Output::Json {
        let (result, seconds) = match &applied {
            Applied::Unchanged => ("unchanged", None),
            Applied::Written {
                restart: None | Some(Outcome::Pending),
            } => ("restartPending", None),
            Applied::Written {
                restart: Some(Outcome::Restarted { took }),
            } => ("restarted", Some(took.as_secs_f64())),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report(result, seconds, None))?
        );
        return Ok(());
    }
    match applied {
        Applied::Unchanged => println!(
            "containerd config {}: already up to date, no restart",
            main_path.display()
        ),
        Applied::Written { restart: None } => {
            println!("containerd config written: restart containerd to apply it (restart pending)")
        }
        Applied::Written {
            restart: Some(Outcome::Restarted { took }),
        } => println!(
            "containerd restarted and serving ({:.1}s)",
            took.as_secs_f64()
        ),
        Applied::Written {
            restart: Some(Outcome::Pending),
        } => println!(
            "containerd config written; restart method is none: restart containerd to apply it (restart pending)"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::config::{FileKind, parse_str};

    #[test]
    fn stanzas_follow_the_classes() {
        let config = parse_str(
            "artifactsDir: /opt/knm/artifacts\n\
             annotations: {allowed: [\"io.katacontainers.config.hypervisor.*\"]}\n\
             runtimeClasses:\n\
             - name: kata-qemu\n\
             \x20 artifacts: {url: nvcr.io/kata/qemu:1}\n\
             \x20 runtime: {runtimePath: /opt/kata/bin/shim, configFile: share/kata.toml, podAnnotations: [\"io.katacontainers.config.hypervisor.*\"]}\n\
             - name: plain\n\
             \x20 artifacts: {url: nvcr.io/kata/qemu:1}\n\
             \x20 runtime: {runtimeType: io.containerd.runc.v2, privilegedWithoutHostDevices: false}\n",
            Path::new("node.yaml"),
            FileKind::Trusted,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let stanzas = stanzas(&config);
        assert_eq!(stanzas.len(), 2);
        let kata = &stanzas[0];
        assert_eq!(kata.name, "kata-qemu");
        assert_eq!(kata.runtime_type, "io.containerd.kata.v2");
        assert_eq!(kata.runtime_path.as_deref(), Some("/opt/kata/bin/shim"));
        assert_eq!(
            kata.config_path.as_deref(),
            Some("/opt/knm/artifacts/kata-qemu/share/kata.toml")
        );
        assert_eq!(kata.privileged_without_host_devices, Some(true));
        assert_eq!(
            kata.pod_annotations,
            ["io.katacontainers.config.hypervisor.*"]
        );
        let plain = &stanzas[1];
        assert_eq!(plain.runtime_type, "io.containerd.runc.v2");
        assert_eq!(plain.runtime_path, None);
        // No runtime.configFile: the link the install makes to the artifact's top-level *.toml.
        assert_eq!(
            plain.config_path.as_deref(),
            Some("/opt/knm/artifacts/plain/kata-nri-manager.toml")
        );
        assert_eq!(plain.privileged_without_host_devices, Some(false));
    }

    /// k8s-kata-manager's config has no `runtime`: the stanza still names the artifact's kata
    /// configuration, an `onDemand` class's included (written before anything is pulled).
    #[test]
    fn a_class_without_config_file_names_the_reserved_configuration() {
        let config = parse_str(
            "artifactsDir: /opt/nvidia/kata-manager/artifacts\n\
             runtimeClasses:\n\
             - name: kata-qemu-nvidia-gpu\n\
             \x20 nodeSelector: {nvidia.com/gpu.workload.config: vm-passthrough}\n\
             \x20 artifacts: {url: nvcr.io/nvidia/cloud-native/kata-gpu-artifacts:ubuntu22.04-535, pullSecret: ngc-secret}\n\
             - name: kata-on-demand\n\
             \x20 provision: onDemand\n\
             \x20 artifacts: {url: nvcr.io/nvidia/cloud-native/kata-gpu-artifacts:ubuntu22.04-535-snp}\n",
            Path::new("node.yaml"),
            FileKind::Trusted,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let paths: Vec<Option<String>> = stanzas(&config)
            .into_iter()
            .map(|s| s.config_path)
            .collect();
        assert_eq!(
            paths,
            [
                Some(
                    "/opt/nvidia/kata-manager/artifacts/kata-qemu-nvidia-gpu/kata-nri-manager.toml"
                        .to_owned()
                ),
                Some(
                    "/opt/nvidia/kata-manager/artifacts/kata-on-demand/kata-nri-manager.toml"
                        .to_owned()
                ),
            ]
        );
    }
}
