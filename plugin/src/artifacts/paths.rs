//! Where a layer title or a tar entry may write: only below the version's directory. Paths are
//! checked as text (no `..`, not absolute), and parents must be real directories, so that what
//! the text says is where the bytes land (a symlink planted by an earlier entry cannot redirect
//! a later one).

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("absolute paths are not allowed")]
    Absolute,
    #[error("`..` is not allowed")]
    Parent,
    #[error("the path is empty")]
    Empty,
    #[error("a symlink must point inside the artifact (target {0:?})")]
    LinkOutside(String),
    #[error("{0:?} is a symlink or not a directory; entries may not be written through it")]
    ThroughLink(String),
}

/// `title` or a tar entry name as a relative path with only normal components (`./` dropped).
pub fn relative(name: &Path) -> Result<PathBuf, PathError> {
    let mut out = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::Parent),
            Component::RootDir | Component::Prefix(_) => return Err(PathError::Absolute),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    Ok(out)
}

/// Checks that a symlink at `link` (relative to the root) with `target` stays inside the root,
/// resolving the target as text from the link's directory. Absolute targets are refused: they
/// would name host files.
pub fn check_link_target(link: &Path, target: &Path) -> Result<(), PathError> {
    let outside = || PathError::LinkOutside(target.display().to_string());
    let mut depth: Vec<&std::ffi::OsStr> = link
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(part) => Some(part),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for component in target.components() {
        match component {
            Component::Normal(part) => depth.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                depth.pop().ok_or_else(outside)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    Ok(())
}

/// Creates the parent directories of `root/rel` (mode 0755) and checks that each existing one
/// is a real directory, not a symlink. Returns the full path.
pub fn prepare_parent(root: &Path, rel: &Path) -> io::Result<Result<PathBuf, PathError>> {
    let mut current = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for component in parent.components() {
            current.push(component);
            match std::fs::symlink_metadata(&current) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Ok(Err(PathError::ThroughLink(
                        current
                            .strip_prefix(root)
                            .unwrap_or(&current)
                            .display()
                            .to_string(),
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir(&current)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(Ok(root.join(rel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escaping_names() {
        assert_eq!(relative(Path::new("../x")), Err(PathError::Parent));
        assert_eq!(relative(Path::new("a/../../x")), Err(PathError::Parent));
        assert_eq!(relative(Path::new("/etc/passwd")), Err(PathError::Absolute));
        assert_eq!(relative(Path::new("./")), Err(PathError::Empty));
        assert_eq!(
            relative(Path::new("./opt/kata/bin/x")),
            Ok(PathBuf::from("opt/kata/bin/x"))
        );
    }

    #[test]
    fn symlink_targets_must_stay_inside() {
        let link = Path::new("opt/kata/share/vmlinux.container");
        assert!(check_link_target(link, Path::new("vmlinux-6.1")).is_ok());
        assert!(check_link_target(link, Path::new("../../bin/x")).is_ok());
        assert!(check_link_target(link, Path::new("../../../x")).is_ok());
        assert!(check_link_target(link, Path::new("../../../../x")).is_err());
        assert!(check_link_target(link, Path::new("/etc/shadow")).is_err());
        assert!(check_link_target(Path::new("top"), Path::new("..")).is_err());
    }

    #[test]
    fn parents_must_be_real_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).expect("symlink");
        let through = prepare_parent(dir.path(), Path::new("link/x")).expect("io");
        assert_eq!(through, Err(PathError::ThroughLink("link".into())));
        let made = prepare_parent(dir.path(), Path::new("a/b/c"))
            .expect("io")
            .expect("ok");
        assert_eq!(made, dir.path().join("a/b/c"));
        assert!(dir.path().join("a/b").is_dir());
    }
}
