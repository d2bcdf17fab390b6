//! The versions of one class over time: which are kept for `rollback`, which are retired,
//! which a sandbox may still run on, and what a rollback changes. Pure functions over the
//! install record; the store does the files and the locking.

use super::state::{ClassState, VersionRecord};

/// Rejected digests remembered per class: enough for a few rollbacks, bounded for a record
/// that lives for years.
const MAX_REJECTED: usize = 16;

/// The record once `next` (a freshly installed version, its history empty) is current.
///
/// The old current version goes to the front of `previous`; versions beyond `keep` move to
/// `retired`, where the collector removes them once no sandbox can be running on them.
/// Installing the current version again (a repair) keeps the history as it was.
/// `now_ms`: milliseconds since the Unix epoch.
pub fn advance(
    prior: Option<ClassState>,
    mut next: ClassState,
    keep: usize,
    now_ms: u64,
) -> ClassState {
    let Some(prior) = prior else {
        return next;
    };
    let new = next.manifest_digest.clone();
    let mut versions = prior.versions.clone();
    let mut previous = prior.previous.clone();
    let mut retired = prior.retired.clone();
    if prior.manifest_digest != new {
        versions.insert(prior.manifest_digest.clone(), superseded(&prior, now_ms));
        previous.insert(0, prior.manifest_digest.clone());
    }
    previous.retain(|d| *d != new);
    dedup_keep_first(&mut previous);
    let overflow = previous.split_off(keep.min(previous.len()));
    retired.splice(0..0, overflow);
    retired.retain(|d| *d != new && !previous.contains(d));
    dedup_keep_first(&mut retired);
    versions.retain(|d, _| previous.contains(d) || retired.contains(d));
    let mut rejected = prior.rejected;
    rejected.retain(|d| *d != next.manifest_digest && *d != next.resolved_digest);
    next.previous = previous;
    next.retired = retired;
    next.versions = versions;
    next.rejected = rejected;
    next
}

/// Why a rollback cannot happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackRefused {
    #[error("no previous version is kept (limits.keepVersions, default 2, counts them)")]
    NoPrevious,
    #[error(
        "the previous version {0} has no file record (installed by an older kata-nri-manager); pull it again by digest instead"
    )]
    NoRecord(String),
}

/// The record after switching back to the newest previous version. The version left becomes
/// the newest previous one (so a second rollback undoes the first) and is remembered as
/// rejected, so an update does not switch to it again until the tag moves on.
pub fn roll_back(state: ClassState, now_ms: u64) -> Result<ClassState, RollbackRefused> {
    let target = state
        .previous
        .first()
        .cloned()
        .ok_or(RollbackRefused::NoPrevious)?;
    let record = state
        .versions
        .get(&target)
        .cloned()
        .ok_or_else(|| RollbackRefused::NoRecord(target.clone()))?;
    let left = superseded(&state, now_ms);
    let mut versions = state.versions.clone();
    versions.remove(&target);
    versions.insert(state.manifest_digest.clone(), left);
    let mut previous = state.previous[1..].to_vec();
    previous.insert(0, state.manifest_digest.clone());
    let mut rejected = state.rejected.clone();
    rejected.retain(|d| *d != target && *d != record.resolved_digest);
    for digest in [&state.resolved_digest, &state.manifest_digest] {
        if !rejected.contains(digest) {
            rejected.insert(0, digest.clone());
        }
    }
    rejected.truncate(MAX_REJECTED);
    Ok(ClassState {
        class: state.class,
        reference: record.reference,
        resolved_digest: record.resolved_digest,
        path: state.path.with_file_name(&target),
        manifest_digest: target,
        installed_at: record.installed_at,
        files: record.files,
        blobs: record.blobs,
        kata_configs: record.kata_configs,
        kata_version: record.kata_version,
        served_by: record.served_by,
        signed_by: record.signed_by,
        // A rollback stays within what the class installed, under its own setting.
        binaries_from_version: state.binaries_from_version,
        config_file: record.config_file,
        kata_settings: state.kata_settings,
        previous,
        retired: state.retired,
        versions,
        rejected,
    })
}

/// When a sandbox of the class was created, as far as anyone knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxAge {
    /// Milliseconds since the Unix epoch; `None` when unknown (NRI does not say).
    pub created_at_ms: Option<u64>,
}

/// Whether a sandbox may be running on `version`: one created before the version stopped
/// being current may be (kata reads its configuration through the class's link when the
/// sandbox starts); one created after cannot. A sandbox of unknown age may be.
pub fn may_be_running(version: &VersionRecord, sandboxes: &[SandboxAge]) -> bool {
    sandboxes.iter().any(|s| {
        s.created_at_ms
            .is_none_or(|created| created <= version.superseded_at_ms)
    })
}

fn superseded(state: &ClassState, now_ms: u64) -> VersionRecord {
    VersionRecord {
        reference: state.reference.clone(),
        resolved_digest: state.resolved_digest.clone(),
        installed_at: state.installed_at,
        superseded_at_ms: now_ms,
        files: state.files.clone(),
        blobs: state.blobs.clone(),
        kata_configs: state.kata_configs.clone(),
        kata_version: state.kata_version.clone(),
        served_by: state.served_by.clone(),
        signed_by: state.signed_by.clone(),
        config_file: state.config_file.clone(),
    }
}

fn dedup_keep_first(list: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|d| seen.insert(d.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn version(n: u8) -> ClassState {
        let digest = format!("sha256:{}", format!("{n:02x}").repeat(32));
        ClassState {
            kata_settings: vec![],
            class: "kata".into(),
            reference: "r/kata:latest".into(),
            resolved_digest: digest.clone(),
            manifest_digest: digest.clone(),
            path: PathBuf::from("/a/.store").join(&digest),
            installed_at: u64::from(n),
            files: BTreeMap::new(),
            blobs: vec![],
            kata_configs: vec![],
            kata_version: None,
            previous: vec![],
            retired: vec![],
            versions: BTreeMap::new(),
            rejected: vec![],
            served_by: None,
            signed_by: None,
            binaries_from_version: false,
            config_file: Some(format!("configuration-{n}.toml")),
        }
    }

    fn digest(n: u8) -> String {
        version(n).manifest_digest
    }

    #[test]
    fn installs_keep_versions_and_retire_the_rest() {
        let mut state = version(1);
        for n in 2..=4 {
            state = advance(Some(state), version(n), 2, 100 + u64::from(n));
        }
        assert_eq!(state.manifest_digest, digest(4));
        assert_eq!(state.previous, [digest(3), digest(2)]);
        assert_eq!(state.retired, [digest(1)]);
        assert_eq!(state.versions.len(), 3);
        assert_eq!(state.versions[&digest(3)].superseded_at_ms, 104);
        assert_eq!(state.versions[&digest(1)].superseded_at_ms, 102);
    }

    #[test]
    fn reinstalling_the_current_version_keeps_history() {
        let state = advance(Some(version(1)), version(2), 2, 10);
        let again = advance(Some(state.clone()), version(2), 2, 20);
        assert_eq!(again.previous, state.previous);
        assert_eq!(again.versions, state.versions);
    }

    #[test]
    fn an_old_version_coming_back_leaves_previous_and_retired() {
        let mut state = version(1);
        for n in [2, 3, 1] {
            state = advance(Some(state), version(n), 1, u64::from(n));
        }
        assert_eq!(state.manifest_digest, digest(1));
        assert_eq!(state.previous, [digest(3)]);
        assert_eq!(state.retired, [digest(2)]);
        assert!(!state.versions.contains_key(&digest(1)));
    }

    #[test]
    fn keep_zero_retires_everything() {
        let state = advance(Some(version(1)), version(2), 0, 5);
        assert!(state.previous.is_empty());
        assert_eq!(state.retired, [digest(1)]);
    }

    #[test]
    fn rollback_switches_back_and_a_second_one_undoes_it() {
        let state = advance(Some(version(1)), version(2), 2, 10);
        let back = roll_back(state.clone(), 20).expect("rollback");
        assert_eq!(back.manifest_digest, digest(1));
        assert_eq!(back.path, PathBuf::from("/a/.store").join(digest(1)));
        assert_eq!(back.previous, [digest(2)]);
        assert_eq!(back.rejected, [digest(2)]);
        assert_eq!(back.versions[&digest(2)].superseded_at_ms, 20);
        // The configuration the stanza names is the version's own.
        assert_eq!(back.config_file.as_deref(), Some("configuration-1.toml"));
        let forward = roll_back(back, 30).expect("undo");
        assert_eq!(forward.manifest_digest, digest(2));
        assert_eq!(forward.rejected, [digest(1)]);
        // An update that installs a rejected version (a pin) clears it.
        let pinned = advance(Some(forward), version(1), 2, 40);
        assert!(pinned.rejected.is_empty());
    }

    #[test]
    fn rollback_needs_a_recorded_previous_version() {
        assert_eq!(roll_back(version(1), 1), Err(RollbackRefused::NoPrevious));
        let mut old = version(2);
        old.previous = vec![digest(1)];
        assert_eq!(roll_back(old, 1), Err(RollbackRefused::NoRecord(digest(1))));
    }

    #[test]
    fn sandboxes_created_before_a_switch_may_run_on_the_old_version() {
        let state = advance(Some(version(1)), version(2), 2, 100);
        let old = &state.versions[&digest(1)];
        let before = SandboxAge {
            created_at_ms: Some(99),
        };
        let after = SandboxAge {
            created_at_ms: Some(101),
        };
        let unknown = SandboxAge {
            created_at_ms: None,
        };
        assert!(may_be_running(old, &[after, before]));
        assert!(!may_be_running(old, &[after]));
        assert!(may_be_running(old, &[unknown]));
        assert!(!may_be_running(old, &[]));
    }
}
