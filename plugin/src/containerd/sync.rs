//! containerd's config made to serve exactly the given stanzas of ours: the one code path of
//! `configure`, `uninstall` and the daemon. Plan the edit, check it with containerd, commit it,
//! and restart containerd once, rolling back if it does not come back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::{Config, ContainerdMode, Restart};
use crate::containerd::commit::{self, read_optional};
use crate::containerd::restart::{self, Outcome, ReadyProbe, Strategy};
use crate::containerd::systemd;
use crate::containerd::validate::{ContainerdCheck, DropinCandidate};
use crate::containerd::{
    AtomicWriter, ContainerdVersion, DropinChange, Edit, EditOptions, Mode, OwnershipRecord,
    RuntimeStanza, apply,
};

/// Writes containerd's config with exactly the given stanzas of ours and restarts it once if
/// anything changed. Blocking; the daemon runs it on a blocking thread.
pub trait ContainerdSync: Send + Sync + 'static {
    fn sync(&self, desired: &[RuntimeStanza]) -> Result<SyncOutcome, String>;
}

/// What a containerd sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The config already said this: no write, no restart.
    Unchanged,
    /// Written, containerd restarted and serving.
    Restarted { took: Duration },
    /// Written; containerd runs the old config until someone restarts it.
    Pending,
}

/// Node facts the command line may override (`--state-dir`, `--containerd-binary`); `None`:
/// the config's, and `containerd` on PATH.
#[derive(Debug, Clone, Default)]
pub struct NodePaths {
    /// The state directory (ownership record, status) [default: the config's `stateDir`].
    pub state_dir: Option<PathBuf>,
    /// The containerd binary (version, `config dump` check) [default: `containerd` on PATH].
    pub containerd_binary: Option<PathBuf>,
    /// Where the kernel's files (`/sys`, `/dev`) are read [default: /].
    pub host_root: Option<PathBuf>,
}

impl NodePaths {
    pub fn host_root(&self) -> PathBuf {
        self.host_root.clone().unwrap_or_else(|| PathBuf::from("/"))
    }
}

/// The ownership record's file name in the state dir.
pub const OWNERSHIP_FILE: &str = "containerd-ownership.json";

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
/// What the daemon cannot check before it writes containerd's config on this node, or `None`
/// when containerd checks every edit (`containerd config dump` with the new file). For
/// `status`: a check that is skipped must be visible where an operator looks, not only in the
/// log of a start long ago.
pub fn unchecked(config: &Config, node: &NodePaths) -> Option<String> {
    unchecked_with(
        config,
        containerd_binary(node.containerd_binary.as_deref()).as_deref(),
    )
}

fn unchecked_with(config: &Config, binary: Option<&Path>) -> Option<String> {
    let path = &config.containerd.config_path;
    if super::schema::is_template(path) {
        return Some(format!(
            "{} is a template: containerd checks it only once k3s renders it",
            path.display()
        ));
    }
    binary.is_none().then(|| {
        "no containerd binary here (none on PATH, no --containerd-binary): containerd does not check a new config before it is written (`containerd config dump`), and its version comes from the file's `version` key; in a pod, mount the host's binary (the chart's hostPaths.containerdBinary)".to_owned()
    })
}

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
pub struct Planned {
    pub edit: Edit,
    owned: OwnershipRecord,
    pub main_path: PathBuf,
    state_path: PathBuf,
    binary: Option<PathBuf>,
}

/// Reads containerd's config and our ownership record and computes the edit that makes the
/// config serve exactly `desired` (of ours).
pub fn plan(config: &Config, desired: &[RuntimeStanza], node: &NodePaths) -> Result<Planned> {
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
pub fn write_and_restart(
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
        tracing::info!(%change, "containerd config changed");
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
    node: &NodePaths,
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
pub fn state_dir(config: &Config, node: &NodePaths) -> PathBuf {
    node.state_dir
        .clone()
        .unwrap_or_else(|| config.state_dir.clone())
}

pub fn ownership_path(config: &Config, node: &NodePaths) -> PathBuf {
    state_dir(config, node).join(OWNERSHIP_FILE)
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

/// What the daemon holds while containerd restarts: one of the fleet's restart slots (in a
/// cluster), taken on a blocking thread and released when dropped.
pub type RestartPermit = Box<dyn Fn() -> Option<Box<dyn Send>> + Send + Sync>;

/// The daemon's [`ContainerdSync`]: containerd configured through the same code as `configure`.
pub struct ConfigSync {
    /// Held for each sync, so a restart in place never cuts one short.
    pub busy: Arc<tokio::sync::Mutex<()>>,
    pub config: Arc<Config>,
    pub node: NodePaths,
    pub may_restart: bool,
    /// Waits for a restart slot (in a cluster); held until dropped.
    pub restart_permit: RestartPermit,
}

impl ContainerdSync for ConfigSync {
    fn sync(&self, desired: &[RuntimeStanza]) -> Result<SyncOutcome, String> {
        // On a blocking thread (`configure_containerd`), where waiting is allowed.
        let _busy = self.busy.blocking_lock();
        let permit = || (self.restart_permit)();
        match sync(&self.config, desired, &self.node, !self.may_restart, permit) {
            Ok(Applied::Unchanged) => Ok(SyncOutcome::Unchanged),
            Ok(Applied::Written {
                restart: Some(Outcome::Restarted { took }),
            }) => Ok(SyncOutcome::Restarted { took }),
            Ok(Applied::Written { .. }) => Ok(SyncOutcome::Pending),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileKind, parse_str};

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

    /// `status` says what is not checked: a k3s template, or a node without containerd's binary.
    #[test]
    fn what_is_not_checked_is_named() {
        let mut config = Config::default();
        let binary = Some(Path::new("/usr/bin/containerd"));
        assert_eq!(unchecked_with(&config, binary), None);
        let gap = unchecked_with(&config, None).expect("no binary");
        assert!(gap.starts_with("no containerd binary here"), "{gap}");
        config.containerd.config_path =
            "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl".into();
        let gap = unchecked_with(&config, binary).expect("a template is not checked");
        assert!(
            gap.ends_with("is a template: containerd checks it only once k3s renders it"),
            "{gap}"
        );
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
