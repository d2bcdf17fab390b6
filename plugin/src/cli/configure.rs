//! `kata-nri-manager configure` and `kata-nri-manager uninstall`: write (or remove) every runtime
//! class's stanza in containerd's config in one edit, check it with containerd, commit it, and
//! restart containerd once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::config::{Config, ContainerdMode, Provision, Restart};
use crate::containerd::commit::{self, read_optional};
use crate::containerd::diff::edit_diff;
use crate::containerd::restart::{self, Outcome, ReadyProbe, Strategy};
use crate::containerd::systemd;
use crate::containerd::validate::{ContainerdCheck, DropinCandidate};
use crate::containerd::{
    AtomicWriter, ContainerdVersion, DropinChange, Edit, EditOptions, Mode, OwnershipRecord,
    RuntimeStanza, apply,
};

/// The ownership record's file name in the state dir.
pub const OWNERSHIP_FILE: &str = "containerd-ownership.json";

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
}

/// `configure`: makes containerd's config serve exactly the config's runtime classes.
pub fn configure(args: ConfigureArgs) -> Result<()> {
    let config = load(&args)?;
    run(
        &config,
        &stanzas(&config),
        &args.node,
        args.dry_run,
        args.no_restart,
    )
}

/// `uninstall`: removes every stanza (and the drop-in and its `imports` entry) we wrote.
pub fn uninstall(args: UninstallArgs) -> Result<()> {
    let config = load(&args)?;
    let record = ownership_path(&config, &args.node);
    if OwnershipRecord::load(&record)?.is_empty() {
        // Nothing of ours to remove: containerd's file is not ours to read, let alone edit or
        // restart for (it may be one we cannot parse, on a node we never configured).
        println!(
            "containerd config {}: nothing of kata-nri-manager's to remove (no stanza recorded in {})",
            config.containerd.config_path.display(),
            record.display()
        );
        return Ok(());
    }
    run(&config, &[], &args.node, args.dry_run, args.no_restart)
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

/// The classes whose existing stanza (not written by us) the node lets us take over.
pub fn adopted(config: &Config) -> BTreeSet<String> {
    config
        .runtime_classes
        .iter()
        .filter(|class| class.runtime.adopt)
        .map(|class| class.name.clone())
        .collect()
}

fn mode(mode: ContainerdMode) -> Mode {
    match mode {
        ContainerdMode::Auto => Mode::Auto,
        ContainerdMode::Inline => Mode::Inline,
        ContainerdMode::Dropin => Mode::Dropin,
    }
}

/// The restart strategy of the config.
pub fn strategy(restart: &Restart) -> Strategy {
    match restart {
        Restart::Systemd(s) => Strategy::Systemd {
            unit: s.unit.clone(),
            timeout: s.timeout.get(),
        },
        Restart::Command(c) => Strategy::Command {
            argv: c.command.clone(),
            timeout: c.timeout.get(),
        },
        Restart::None => Strategy::None,
    }
}

/// The containerd binary: the flag, else `containerd` on PATH.
fn containerd_binary(flag: Option<&Path>) -> Option<PathBuf> {
    match flag {
        Some(path) => Some(path.to_path_buf()),
        None => crate::containerd::find_on_path("containerd"),
    }
}

fn containerd_version(binary: &Path) -> Result<ContainerdVersion> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} --version failed ({}): {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(ContainerdVersion::from_version_output(
        &String::from_utf8_lossy(&output.stdout),
    )?)
}

/// An edit of containerd's config, computed and not yet written.
struct Planned {
    edit: Edit,
    owned: OwnershipRecord,
    main_path: PathBuf,
    state_path: PathBuf,
    binary: Option<PathBuf>,
}

/// Reads containerd's config and our ownership record and computes the edit that makes the
/// config serve exactly `desired` (of ours).
fn plan(config: &Config, desired: &[RuntimeStanza], node: &NodeArgs) -> Result<Planned> {
    let main_path = config.containerd.config_path.clone();
    let state_path = ownership_path(config, node);
    let binary = containerd_binary(node.containerd_binary.as_deref());
    let version = match &binary {
        Some(binary) => Some(containerd_version(binary)?),
        None => {
            tracing::warn!(
                "no containerd binary on PATH: the schema comes from the file's `version`, and containerd does not check the new config before it is written"
            );
            None
        }
    };
    let original = read_optional(&main_path)?.unwrap_or_default();
    let owned = OwnershipRecord::load(&state_path)?;
    let mut opts = EditOptions::new(&main_path);
    opts.containerd_version = version;
    opts.enable_nri = !desired.is_empty();
    opts.dropin_text = read_optional(&opts.dropin_path())?;
    opts.adopt = adopted(config);
    let edit = apply(
        &original,
        desired,
        &owned,
        mode(config.containerd.mode),
        &opts,
    )?;
    Ok(Planned {
        edit,
        owned,
        main_path,
        state_path,
        binary,
    })
}

/// What `write_and_restart` did.
pub enum Applied {
    Unchanged,
    Written { restart: Option<Outcome> },
}

/// Checks, commits and (unless `no_restart`) restarts containerd onto a planned edit, rolling
/// back if containerd does not come back.
fn write_and_restart(
    config: &Config,
    planned: &Planned,
    desired: &[RuntimeStanza],
    no_restart: bool,
) -> Result<Applied> {
    let Planned {
        edit,
        owned,
        main_path,
        state_path,
        binary,
    } = planned;
    if edit.is_noop() {
        commit::commit(edit, main_path, state_path, owned, &AtomicWriter::new())?;
        return Ok(Applied::Unchanged);
    }
    let strategy = strategy(&config.containerd.restart);
    if !no_restart && let Strategy::Systemd { unit, timeout } = &strategy {
        // Before writing: an unreachable bus, a missing unit or a KillMode that would kill every
        // pod would otherwise leave a config on disk that nobody restarts onto.
        systemd::check_unit(unit, *timeout)?;
    }
    if let Some(binary) = binary {
        check(binary, main_path, edit, desired)?;
    }
    let writer = AtomicWriter::new();
    let committed = commit::commit(edit, main_path, state_path, owned, &writer)?;
    for change in &edit.changes {
        tracing::info!(?change, "containerd config changed");
    }
    if no_restart {
        return Ok(Applied::Written { restart: None });
    }
    let probe = ReadyProbe::new(&config.containerd.address)
        .with_handlers(desired.iter().map(|stanza| stanza.name.clone()))
        .with_nri_socket(&config.nri.socket);
    let outcome = restart::restart_or_roll_back(&strategy, &probe, &committed, &writer)?;
    Ok(Applied::Written {
        restart: Some(outcome),
    })
}

/// Makes containerd's config serve exactly `desired` of ours, restarting once if it changed
/// (unless `no_restart`): the daemon's side of `configure`.
///
/// `permit` runs once it is known that containerd will be restarted, before anything is
/// written, and what it returns is held until the restart is over: the daemon's fleet-wide
/// restart slot.
pub fn sync<P>(
    config: &Config,
    desired: &[RuntimeStanza],
    node: &NodeArgs,
    no_restart: bool,
    permit: impl FnOnce() -> P,
) -> Result<Applied> {
    if desired.is_empty() && OwnershipRecord::load(&ownership_path(config, node))?.is_empty() {
        // Nothing to write and nothing of ours to remove: containerd's file is not ours to read.
        return Ok(Applied::Unchanged);
    }
    let planned = plan(config, desired, node)?;
    let restarts = !planned.edit.is_noop()
        && !no_restart
        && !matches!(config.containerd.restart, crate::config::Restart::None);
    let _permit = restarts.then(permit);
    write_and_restart(config, &planned, desired, no_restart)
}

/// The daemon's state directory: the flag, else the config's `stateDir`.
pub fn state_dir(config: &Config, node: &NodeArgs) -> PathBuf {
    node.state_dir
        .clone()
        .unwrap_or_else(|| config.state_dir.clone())
}

fn ownership_path(config: &Config, node: &NodeArgs) -> PathBuf {
    state_dir(config, node).join(OWNERSHIP_FILE)
}

fn run(
    config: &Config,
    desired: &[RuntimeStanza],
    node: &NodeArgs,
    dry_run: bool,
    no_restart: bool,
) -> Result<()> {
    let planned = plan(config, desired, node)?;
    let main_path = &planned.main_path;
    if dry_run {
        let diff = edit_diff(&planned.edit, main_path);
        if diff.is_empty() {
            println!("containerd config {}: no change", main_path.display());
        } else {
            print!("{diff}");
        }
        return Ok(());
    }
    for change in &planned.edit.changes {
        println!("{change:?}");
    }
    match write_and_restart(config, &planned, desired, no_restart)? {
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

/// Asks containerd whether it accepts the new files and sees every desired runtime in them.
fn check(binary: &Path, main_path: &Path, edit: &Edit, desired: &[RuntimeStanza]) -> Result<()> {
    let dropin = match &edit.dropin {
        DropinChange::Write { path, text, .. } => Some(DropinCandidate {
            path: path.as_path(),
            text: text.as_str(),
        }),
        _ => None,
    };
    let names: Vec<&str> = desired.iter().map(|s| s.name.as_str()).collect();
    let accepted = ContainerdCheck::new(binary).check(main_path, &edit.main, dropin, &names)?;
    for warning in &accepted.warnings {
        tracing::warn!(%warning, "containerd accepted the new config with a warning");
    }
    if let Some(why) = &accepted.skipped {
        tracing::warn!(reason = %why, "containerd's config check skipped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn adopted_classes_are_those_the_node_hands_over() {
        let config = parse_str(
            "runtimeClasses:\n\
             - {name: kata, artifacts: {url: nvcr.io/kata/qemu:1}, runtime: {adopt: true}}\n\
             - {name: kata-clh, artifacts: {url: nvcr.io/kata/clh:1}}\n",
            Path::new("node.yaml"),
            FileKind::Trusted,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(adopted(&config), BTreeSet::from(["kata".to_string()]));
    }

    #[test]
    fn restart_methods_map_to_strategies() {
        assert_eq!(strategy(&Restart::None), Strategy::None);
        assert!(matches!(
            strategy(&Restart::default()),
            Strategy::Systemd { ref unit, .. } if unit == "containerd.service"
        ));
    }
}
