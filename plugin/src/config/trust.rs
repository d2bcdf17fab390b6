//! Whether a file may be trusted with node-local keys: only its owner (root) can change what it
//! says or which file its path leads to.

use std::fs::{File, Metadata};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const GROUP_OR_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Problems that make `file` (opened from `path`) untrusted; empty when it is trusted.
/// `owner` is the uid trusted files belong to: root, except in tests.
///
/// The open file's own metadata is checked, so the file read is the file checked. Its directories
/// are checked along the resolved path: a user who can write one of them could swap the file.
pub(super) fn problems(path: &Path, file: &File, owner: u32) -> Vec<String> {
    let mut problems = Vec::new();
    match file.metadata() {
        Ok(metadata) => file_problems(path, &metadata, owner, &mut problems),
        Err(e) => problems.push(format!("cannot inspect the open file: {e}")),
    }
    match std::fs::canonicalize(path) {
        Ok(resolved) => {
            for dir in resolved.ancestors().skip(1) {
                match std::fs::metadata(dir) {
                    Ok(metadata) => dir_problems(dir, &metadata, owner, &mut problems),
                    Err(e) => problems.push(format!("cannot inspect {}: {e}", dir.display())),
                }
            }
        }
        Err(e) => problems.push(format!("cannot resolve the path: {e}")),
    }
    problems
}

fn who(uid: u32) -> String {
    if uid == 0 {
        "root".into()
    } else {
        format!("uid {uid}")
    }
}

fn file_problems(path: &Path, metadata: &Metadata, owner: u32, problems: &mut Vec<String>) {
    if !metadata.is_file() {
        problems.push("not a regular file".into());
    }
    if metadata.uid() != owner {
        problems.push(format!(
            "owned by {}, not {}: node-local keys are only taken from a file only {} can change; \
             run `chown {} {}`, or move them to a --node-config file",
            who(metadata.uid()),
            who(owner),
            who(owner),
            owner_arg(owner),
            path.display()
        ));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & GROUP_OR_OTHER_WRITE != 0 {
        problems.push(format!(
            "writable by group or others (mode {mode:04o}); run `chmod go-w {}`",
            path.display()
        ));
    }
}

fn dir_problems(dir: &Path, metadata: &Metadata, owner: u32, problems: &mut Vec<String>) {
    if metadata.uid() != 0 && metadata.uid() != owner {
        problems.push(format!(
            "its directory {} is owned by {}, who could replace the file; run `chown {} {}`",
            dir.display(),
            who(metadata.uid()),
            owner_arg(owner),
            dir.display()
        ));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    // A sticky directory (like /tmp) stops others from renaming or removing our file.
    if mode & GROUP_OR_OTHER_WRITE != 0 && mode & STICKY == 0 {
        problems.push(format!(
            "its directory {} is writable by group or others (mode {mode:04o}), who could \
             replace the file; run `chmod go-w {}`",
            dir.display(),
            dir.display()
        ));
    }
}

fn owner_arg(owner: u32) -> String {
    if owner == 0 {
        "root".into()
    } else {
        owner.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// The uid that owns what this test process creates: tests run as root or not.
    fn my_uid(dir: &Path) -> u32 {
        fs::metadata(dir).expect("metadata").uid()
    }

    fn file_in(dir: &Path, mode: u32) -> std::path::PathBuf {
        let path = dir.join("config.yaml");
        fs::write(&path, "{}").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_file_of_the_trusted_owner_without_group_or_other_write_is_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = my_uid(dir.path());
        let path = file_in(dir.path(), 0o644);
        let file = File::open(&path).expect("open");
        assert_eq!(problems(&path, &file, uid), Vec::<String>::new());
    }

    #[test]
    fn a_group_writable_file_is_not_trusted_and_the_fix_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = my_uid(dir.path());
        let path = file_in(dir.path(), 0o664);
        let file = File::open(&path).expect("open");
        assert_eq!(
            problems(&path, &file, uid),
            [format!(
                "writable by group or others (mode 0664); run `chmod go-w {}`",
                path.display()
            )]
        );
    }

    #[test]
    fn a_file_of_another_owner_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = my_uid(dir.path());
        let path = file_in(dir.path(), 0o644);
        let file = File::open(&path).expect("open");
        let other = uid + 1;
        let found = problems(&path, &file, other);
        assert!(
            found[0].starts_with(&format!("owned by {}, not uid {other}", who(uid))),
            "{found:?}"
        );
        assert!(found[0].contains(&format!("run `chown {other} {}`", path.display())));
    }

    #[test]
    fn a_writable_directory_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = my_uid(dir.path());
        let path = file_in(dir.path(), 0o600);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod dir");
        let file = File::open(&path).expect("open");
        let found = problems(&path, &file, uid);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("is writable by group or others (mode 0777)"));
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).expect("sticky");
        assert!(problems(&path, &file, uid).is_empty());
    }

    #[test]
    fn a_symlink_is_judged_by_its_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = my_uid(dir.path());
        let target = file_in(dir.path(), 0o666);
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let file = File::open(&link).expect("open");
        assert_eq!(problems(&link, &file, uid).len(), 1);
    }
}
