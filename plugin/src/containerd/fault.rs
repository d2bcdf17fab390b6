//! Fault points of the atomic writer: named places between its steps where a test makes the
//! process die, to prove that a crash at any of them leaves the old file or the new one, never a
//! torn one. The library never reads the environment by itself; a binary or test that wants
//! `KNM_FAULT_POINT` calls [`hook_from_env`] and hands the hook to the writer.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// A step of the atomic writer just completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Stale temp files of an earlier crash removed.
    AfterCleanStale,
    /// The temp file exists, empty.
    AfterCreateTemp,
    /// Half of the new contents written to the temp file.
    MidWriteTemp,
    /// All of the new contents written to the temp file, not yet synced.
    AfterWriteTemp,
    /// The temp file has the original's mode and owner.
    AfterSetPermissions,
    /// The temp file is on disk (fsync).
    AfterFsyncTemp,
    /// The temp file replaced the target (rename), the directory not yet synced.
    AfterRename,
    /// The directory entry is on disk (fsync of the directory).
    AfterFsyncDir,
    /// The target was unlinked (removal), the directory not yet synced.
    AfterUnlink,
}

impl FaultPoint {
    /// Every point, in the order a write passes them (`AfterUnlink` only in a removal).
    pub const ALL: [FaultPoint; 9] = [
        FaultPoint::AfterCleanStale,
        FaultPoint::AfterCreateTemp,
        FaultPoint::MidWriteTemp,
        FaultPoint::AfterWriteTemp,
        FaultPoint::AfterSetPermissions,
        FaultPoint::AfterFsyncTemp,
        FaultPoint::AfterRename,
        FaultPoint::AfterFsyncDir,
        FaultPoint::AfterUnlink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::AfterCleanStale => "after-clean-stale",
            FaultPoint::AfterCreateTemp => "after-create-temp",
            FaultPoint::MidWriteTemp => "mid-write-temp",
            FaultPoint::AfterWriteTemp => "after-write-temp",
            FaultPoint::AfterSetPermissions => "after-set-permissions",
            FaultPoint::AfterFsyncTemp => "after-fsync-temp",
            FaultPoint::AfterRename => "after-rename",
            FaultPoint::AfterFsyncDir => "after-fsync-dir",
            FaultPoint::AfterUnlink => "after-unlink",
        }
    }
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        FaultPoint::ALL
            .into_iter()
            .find(|point| point.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FaultPoint::ALL.iter().map(|p| p.name()).collect();
                format!("unknown fault point {s:?}: one of {}", names.join(", "))
            })
    }
}

/// Which file a write is for: the target itself or its backup copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultTarget {
    File,
    Backup,
}

/// Called by the writer after each step.
pub type FaultHook = Arc<dyn Fn(FaultTarget, FaultPoint, &Path) + Send + Sync>;

/// The environment variable [`hook_from_env`] reads: `after-fsync-temp`, or `backup:after-rename`
/// for the backup copy's write.
pub const FAULT_ENV: &str = "KNM_FAULT_POINT";

/// A hook that kills the process with SIGKILL (what `kill -9` does: no destructors, no flushing,
/// and unlike `abort()` no core file) when the writer reaches `point` of a write to `target`.
pub fn die_at(target: FaultTarget, point: FaultPoint) -> FaultHook {
    Arc::new(move |t, p, _path| {
        if t == target && p == point {
            // SAFETY: getpid and kill have no preconditions; SIGKILL ends this process here.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            // SIGKILL to oneself is delivered before kill returns; abort covers the impossible.
            std::process::abort();
        }
    })
}

/// Parses `[backup:]<point>`.
pub fn parse_spec(spec: &str) -> Result<(FaultTarget, FaultPoint), String> {
    match spec.strip_prefix("backup:") {
        Some(point) => Ok((FaultTarget::Backup, point.parse()?)),
        None => Ok((FaultTarget::File, spec.parse()?)),
    }
}

/// The hook [`FAULT_ENV`] asks for, if it is set. For test builds of a binary only: a process
/// with this hook dies on purpose.
pub fn hook_from_env() -> Result<Option<FaultHook>, String> {
    match std::env::var(FAULT_ENV) {
        Ok(spec) if !spec.is_empty() => {
            let (target, point) = parse_spec(&spec)?;
            Ok(Some(die_at(target, point)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for point in FaultPoint::ALL {
            assert_eq!(point.name().parse::<FaultPoint>().unwrap(), point);
        }
        assert_eq!(
            parse_spec("backup:after-rename").unwrap(),
            (FaultTarget::Backup, FaultPoint::AfterRename)
        );
        let err = parse_spec("nope").unwrap_err();
        assert!(err.contains("after-fsync-temp"), "{err}");
    }
}
