//! What the daemon knows about each class and about its connections: the source of `status`,
//! `/readyz` and the status file the `status` command reads.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Provision;
use crate::host::modules::{ModuleLoad, ModuleState};
use crate::pods::PodRecord;

/// The status file's name in the state directory.
pub const STATUS_FILE: &str = "status.json";

/// Where a class's artifacts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ArtifactState {
    /// Not installed (an `onDemand` class nobody asked for yet).
    Absent,
    Pulling,
    Ready,
    /// The last attempt failed; `lastError` says why.
    Failed,
    /// Policies decided this node does not serve the class: no stanza, no artifacts.
    NotServed,
}

impl ArtifactState {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactState::Absent => "absent",
            ArtifactState::Pulling => "pulling",
            ArtifactState::Ready => "ready",
            ArtifactState::Failed => "failed",
            ArtifactState::NotServed => "not-served",
        }
    }
}

/// What the policies decided for a class on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClassDecision {
    /// Stanza written; artifacts pulled per the provisioning mode.
    Serve,
    /// A policy said `skip`: the class is not for this node.
    Skip,
    /// A policy (or the host's checks) denied it.
    Deny,
    /// Nobody asked the policies: `status` read the disk because no daemon runs.
    Unevaluated,
}

/// One runtime class as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassStatus {
    pub class: String,
    pub provision: Provision,
    pub decision: ClassDecision,
    /// Why the class is skipped or denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reference the artifacts come from (after policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The installed version (image manifest digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Versions kept for `rollback`, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<String>,
    /// A version the reference resolved to that was not installed: an operator rolled back
    /// from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
    /// The installed artifact needs a kata version the node's shim is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_skew: Option<String>,
    pub state: ArtifactState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What kind of failure `last_error` is: `pull_failed`, `install_refused`,
    /// `skipped_by_policy`, … (the reconciler's `EnsureError::kind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_kind: Option<String>,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub failures: u32,
    /// Pods (`namespace/name`) whose runtime handler is this class.
    #[serde(default)]
    pub pods: Vec<String>,
    /// Seconds since the Unix epoch of the last change.
    pub updated_at: u64,
    /// The kata configuration the class's stanza names in the installed version: filled by
    /// `status` from the install record and the disk, not kept by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kata_config: Option<KataConfigStatus>,
}

/// The kata configuration an installed class's stanza names, and whether kata finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KataConfigStatus {
    /// The stanza's `ConfigPath`.
    pub config_path: String,
    /// The configuration it is, relative to the version: `runtime.configFile`, else
    /// `kata-nri-manager.toml`.
    pub file: String,
    /// The artifact's top-level `*.toml` that `kata-nri-manager.toml` links to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links_to: Option<String>,
    /// `ConfigPath` is a rendering of `file` with policies' kata settings.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub policy_settings: bool,
    /// Whether `ConfigPath` exists: kata refuses to start the class's pods when it does not.
    pub exists: bool,
    /// The shim the class's sandboxes run (`runtime.fromArtifact.shim` in the version,
    /// `runtimePath`, or the runtime type's shim on PATH); `None`: none found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<Provenance>,
    /// The hypervisor `ConfigPath` names (`[hypervisor.*] path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<Provenance>,
    /// The fingerprint of the cosign key whose signature the version carried at install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// A program kata runs, and whether it is the installed version's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub path: String,
    pub from_version: bool,
}

impl ClassStatus {
    /// Takes the installed version from the class's install record, the truth about versions
    /// (a `rollback` from the CLI changes it under a running daemon). Only a ready class
    /// follows; a held-back update no longer applies once the version moved. Returns whether
    /// anything changed.
    pub fn follow_record(&mut self, record: &crate::artifacts::ClassState) -> bool {
        if self.state != ArtifactState::Ready
            || (self.digest.as_ref() == Some(&record.manifest_digest)
                && self.previous == record.previous)
        {
            return false;
        }
        if self.digest.as_ref() != Some(&record.manifest_digest) {
            self.held_back = None;
        }
        self.digest = Some(record.manifest_digest.clone());
        self.previous = record.previous.clone();
        true
    }
}

/// The daemon's connection to containerd's NRI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NriStatus {
    pub connected: bool,
    pub registrations: u64,
    /// Whether the pod list is known (a Synchronize arrived): in-use tracking and GC need it.
    pub synchronized: bool,
}

/// The containerd configuration step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerdStatus {
    /// The stanzas of the served classes are in containerd's config.
    pub configured: bool,
    /// The config was written but containerd still runs the old one (restart method `none`).
    pub restart_pending: bool,
    /// What is not checked before containerd's config is written here, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchecked: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The host's side: kernel modules and the CDI spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_modules: Vec<ModuleLoad>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdi: Option<CdiStatus>,
}

/// The CDI spec of the node's passthrough GPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiStatus {
    /// The spec file (absent while there is no device).
    pub path: String,
    /// The devices as pods name them (`nvidia.com/pgpu=0`).
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl HostStatus {
    /// Why no class can be served on this host, if a required part is missing.
    pub fn problem(&self) -> Option<String> {
        let failed: Vec<&str> = self
            .kernel_modules
            .iter()
            .filter(|m| m.state == ModuleState::Failed)
            .filter_map(|m| m.error.as_deref())
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub pid: u32,
    pub version: String,
    pub started_at: u64,
    pub nri: NriStatus,
    pub containerd: ContainerdStatus,
    #[serde(default)]
    pub host: HostStatus,
    pub classes: Vec<ClassStatus>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The daemon's live status. Updates are short critical sections; the file is written by a
/// background task (`write_if_changed`), never on an NRI hook's path.
#[derive(Debug)]
pub struct StatusBoard {
    inner: Mutex<Board>,
}

#[derive(Debug)]
struct Board {
    report: StatusReport,
    classes: BTreeMap<String, ClassStatus>,
    written: Option<Vec<u8>>,
}

impl StatusBoard {
    pub fn new(classes: impl IntoIterator<Item = (String, Provision)>) -> Self {
        let started = now();
        let classes = classes
            .into_iter()
            .map(|(class, provision)| {
                let status = ClassStatus {
                    class: class.clone(),
                    provision,
                    decision: ClassDecision::Serve,
                    reason: None,
                    source: None,
                    digest: None,
                    previous: Vec::new(),
                    held_back: None,
                    version_skew: None,
                    state: ArtifactState::Absent,
                    last_error: None,
                    last_error_kind: None,
                    failures: 0,
                    pods: Vec::new(),
                    updated_at: started,
                    kata_config: None,
                };
                (class, status)
            })
            .collect();
        Self {
            inner: Mutex::new(Board {
                report: StatusReport {
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    started_at: started,
                    nri: NriStatus::default(),
                    containerd: ContainerdStatus::default(),
                    host: HostStatus::default(),
                    classes: Vec::new(),
                },
                classes,
                written: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        // Every update is a whole-field assignment: a panic cannot leave a record half-changed.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes one class's record (no-op for a class the board does not know).
    pub fn update_class(&self, class: &str, f: impl FnOnce(&mut ClassStatus)) {
        let mut board = self.lock();
        if let Some(status) = board.classes.get_mut(class) {
            f(status);
            status.updated_at = now();
        }
    }

    pub fn class(&self, class: &str) -> Option<ClassStatus> {
        self.lock().classes.get(class).cloned()
    }

    pub fn update_nri(&self, f: impl FnOnce(&mut NriStatus)) {
        f(&mut self.lock().report.nri);
    }

    pub fn nri(&self) -> NriStatus {
        self.lock().report.nri.clone()
    }

    pub fn containerd(&self) -> ContainerdStatus {
        self.lock().report.containerd.clone()
    }

    pub fn update_containerd(&self, f: impl FnOnce(&mut ContainerdStatus)) {
        f(&mut self.lock().report.containerd);
    }

    pub fn host(&self) -> HostStatus {
        self.lock().report.host.clone()
    }

    pub fn update_host(&self, f: impl FnOnce(&mut HostStatus)) {
        f(&mut self.lock().report.host);
    }

    /// The report, with each class's pods taken from `pods`.
    pub fn report(&self, pods: &[PodRecord]) -> StatusReport {
        let board = self.lock();
        let mut report = board.report.clone();
        report.classes = board
            .classes
            .values()
            .cloned()
            .map(|mut status| {
                status.pods = pods
                    .iter()
                    .filter(|p| p.runtime_handler == status.class)
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect();
                status
            })
            .collect();
        report
    }

    /// Why the node is not ready, or `None` when it is: containerd serves every class this node
    /// serves, and every served `eager` class is ready.
    pub fn not_ready(&self) -> Option<String> {
        let board = self.lock();
        if let Some(problem) = board.report.host.problem() {
            return Some(format!("no class is served: {problem}"));
        }
        let containerd = &board.report.containerd;
        if !containerd.configured {
            return Some(match &containerd.last_error {
                Some(e) => format!("containerd is not configured: {e}"),
                None => "containerd is not configured yet".to_owned(),
            });
        }
        let waiting: Vec<&str> = board
            .classes
            .values()
            .filter(|c| {
                c.provision == Provision::Eager
                    && c.decision == ClassDecision::Serve
                    && c.state != ArtifactState::Ready
            })
            .map(|c| c.class.as_str())
            .collect();
        (!waiting.is_empty()).then(|| format!("eager classes not ready: {}", waiting.join(", ")))
    }

    /// Writes the report to `path` (atomically, root-only) when it differs from the last one
    /// written.
    pub fn write_if_changed(&self, path: &Path, pods: &[PodRecord]) -> std::io::Result<bool> {
        let report = self.report(pods);
        let body = serde_json::to_vec_pretty(&report).map_err(std::io::Error::other)?;
        if self.lock().written.as_deref() == Some(body.as_slice()) {
            return Ok(false);
        }
        write_atomically(path, &body)?;
        self.lock().written = Some(body);
        Ok(true)
    }
}

/// Reads a status file the daemon wrote.
pub fn read(path: &Path) -> std::io::Result<StatusReport> {
    let text = fs::read(path)?;
    serde_json::from_slice(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let tmp: PathBuf = dir.join(format!(".{STATUS_FILE}.tmp-{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(body)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, handler: &str) -> PodRecord {
        PodRecord {
            id: name.into(),
            namespace: "default".into(),
            name: name.into(),
            runtime_handler: handler.into(),
            annotations: Default::default(),
            created_at_ms: None,
        }
    }

    #[test]
    fn a_ready_class_follows_its_install_record() {
        let record: crate::artifacts::ClassState = serde_json::from_value(serde_json::json!({
            "class": "k", "reference": "r/k:1", "resolvedDigest": "sha256:bb",
            "manifestDigest": "sha256:bb", "path": "/a/.store/sha256:bb", "installedAt": 1,
            "files": {}, "previous": ["sha256:aa"]
        }))
        .unwrap();
        let board = StatusBoard::new([("k".to_owned(), Provision::Eager)]);
        let mut status = board.report(&[]).classes.remove(0);
        assert!(
            !status.follow_record(&record),
            "an absent class does not follow"
        );
        status.state = ArtifactState::Ready;
        status.digest = Some("sha256:aa".into());
        status.held_back = Some("sha256:bb".into());
        assert!(status.follow_record(&record));
        assert_eq!(status.digest.as_deref(), Some("sha256:bb"));
        assert_eq!(status.previous, ["sha256:aa"]);
        assert_eq!(status.held_back, None);
        assert!(!status.follow_record(&record), "nothing left to change");
    }

    #[test]
    fn readiness_needs_containerd_and_every_eager_class() {
        let board = StatusBoard::new([
            ("eager".to_owned(), Provision::Eager),
            ("lazy".to_owned(), Provision::OnDemand),
            ("denied".to_owned(), Provision::Eager),
        ]);
        assert!(board.not_ready().unwrap().contains("not configured"));
        board.update_containerd(|c| c.configured = true);
        board.update_class("denied", |c| {
            c.decision = ClassDecision::Deny;
            c.state = ArtifactState::NotServed;
        });
        assert_eq!(
            board.not_ready().as_deref(),
            Some("eager classes not ready: eager")
        );
        board.update_class("eager", |c| c.state = ArtifactState::Ready);
        assert_eq!(board.not_ready(), None);
    }

    #[test]
    fn the_file_carries_pods_and_is_rewritten_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(STATUS_FILE);
        let board = StatusBoard::new([("kata".to_owned(), Provision::OnDemand)]);
        let pods = [pod("a", "kata"), pod("b", "runc")];
        assert!(board.write_if_changed(&path, &pods).unwrap());
        assert!(!board.write_if_changed(&path, &pods).unwrap());
        let report = read(&path).unwrap();
        assert_eq!(report.classes[0].pods, ["default/a"]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        board.update_class("kata", |c| c.state = ArtifactState::Pulling);
        assert!(board.write_if_changed(&path, &pods).unwrap());
        assert_eq!(
            read(&path).unwrap().classes[0].state,
            ArtifactState::Pulling
        );
    }
}
