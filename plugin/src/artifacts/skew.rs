//! Version skew between an artifact and the node's kata shim. A guest image and kernel are
//! built for one kata release (the agent protocol changes between releases); an artifact may
//! say which with the [`KATA_VERSION_ANNOTATION`] on its manifest, and the node's real shim
//! says what it is with `--version`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The manifest annotation naming the kata version an artifact needs: a version (`3.2.0`,
/// exactly that one) or a semver requirement (`>=3.2, <3.4`).
pub const KATA_VERSION_ANNOTATION: &str = "kata-nri-manager.io/kata-version";

/// How long `<shim> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// A mismatch between what the artifact needs and what the node has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skew {
    #[error(
        "the artifact needs kata {required}, and the real shim {} is not there (set runtimeClasses[].runtime.runtimePath)",
        shim.as_ref().map_or_else(|| "(none configured or on PATH)".to_owned(), |p| p.display().to_string())
    )]
    NoShim {
        required: String,
        shim: Option<PathBuf>,
    },
    #[error("the artifact needs kata {required}; the version of {} is unknown: {why}", shim.display())]
    Unknown {
        required: String,
        shim: PathBuf,
        why: String,
    },
    #[error("the artifact needs kata {required}; {} is kata {found}", shim.display())]
    Mismatch {
        required: String,
        shim: PathBuf,
        found: String,
    },
}

/// Checks `required` (the annotation's value) against `shim`. `Err` when the annotation is
/// not a version or requirement (the artifact is wrong, not the node).
pub fn check(required: &str, shim: Option<&Path>) -> Result<Option<Skew>, String> {
    let requirement = requirement(required)?;
    let required = required.trim().to_owned();
    let Some(shim) = shim.filter(|p| p.is_file()) else {
        return Ok(Some(Skew::NoShim {
            required,
            shim: shim.map(Path::to_path_buf),
        }));
    };
    let found = match cached_shim_version(shim) {
        Ok(found) => found,
        Err(why) => {
            return Ok(Some(Skew::Unknown {
                required,
                shim: shim.to_path_buf(),
                why,
            }));
        }
    };
    Ok((!requirement.matches(&found)).then(|| Skew::Mismatch {
        required,
        shim: shim.to_path_buf(),
        found: found.to_string(),
    }))
}

/// A bare version means exactly that version (semver's default, `^`, would accept any later
/// minor release, which kata's agent protocol does not).
fn requirement(text: &str) -> Result<semver::VersionReq, String> {
    let text = text.trim();
    let exact;
    let text = if semver::Version::parse(text.trim_start_matches('v')).is_ok() {
        exact = format!("={}", text.trim_start_matches('v'));
        exact.as_str()
    } else {
        text
    };
    semver::VersionReq::parse(text).map_err(|e| {
        format!("{KATA_VERSION_ANNOTATION} {text:?} is not a version or semver requirement: {e}")
    })
}

/// Runs `<shim> --version` and finds the version in what it prints.
/// A shim's answer, by what identifies the binary on disk: path, inode, size, mtime.
type ShimKey = (PathBuf, u64, u64, Option<std::time::SystemTime>);

/// [`shim_version`], asked once per binary: a gate's or an annotation's fast path ensures the
/// installed version on every sandbox start, and starting the shim each time would cost a
/// process (and up to the timeout) per start. A replaced shim is a new key, so it is asked again.
fn cached_shim_version(shim: &Path) -> Result<semver::Version, String> {
    use std::os::unix::fs::MetadataExt as _;
    type Answers = std::collections::HashMap<ShimKey, Result<semver::Version, String>>;
    static ANSWERS: std::sync::LazyLock<std::sync::Mutex<Answers>> =
        std::sync::LazyLock::new(Default::default);
    let Ok(meta) = std::fs::metadata(shim) else {
        return shim_version(shim);
    };
    let key = (
        shim.to_owned(),
        meta.ino(),
        meta.size(),
        meta.modified().ok(),
    );
    let answers = || ANSWERS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(answer) = answers().get(&key) {
        return answer.clone();
    }
    let answer = shim_version(shim);
    answers().insert(key, answer.clone());
    answer
}

fn shim_version(shim: &Path) -> Result<semver::Version, String> {
    let mut child = Command::new(shim)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running it: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child
            .try_wait()
            .map_err(|e| format!("waiting for it: {e}"))?
        {
            Some(status) => break status,
            None if started.elapsed() > VERSION_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`--version` did not answer within {}s",
                    VERSION_TIMEOUT.as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(64 * 1024).read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("`--version` failed ({status})"));
    }
    parse_version(&out).ok_or_else(|| {
        format!(
            "no version in its `--version` output {:?}",
            out.lines().next().unwrap_or_default()
        )
    })
}

/// The first semver in the text: kata prints `… id: "io.containerd.kata.v2", version: 3.2.0,
/// commit: …`.
fn parse_version(text: &str) -> Option<semver::Version> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '"')
        .map(|token| token.trim_start_matches('v'))
        .find_map(|token| semver::Version::parse(token).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn shim(dir: &Path, output: &str) -> PathBuf {
        let path = dir.join("containerd-shim-kata-v2");
        std::fs::write(&path, format!("#!/bin/sh\necho '{output}'\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    const KATA: &str = r#"Kata Containers containerd shim (Golang): id: "io.containerd.kata.v2", version: 3.2.0, commit: 1a2b3c"#;

    #[test]
    fn a_shim_is_asked_once_until_it_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("containerd-shim-kata-v2");
        let count = dir.path().join("asked");
        // Installed as a package manager does: a new file renamed over the old one.
        let write = |version: &str| {
            let new = dir.path().join("new");
            std::fs::write(
                &new,
                format!(
                    "#!/bin/sh\necho x >> {}\necho 'Kata Containers containerd shim (Golang): id: \"io.containerd.kata.v2\", version: {version}, commit: c'\n",
                    count.display()
                ),
            )
            .expect("write");
            std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            std::fs::rename(&new, &path).expect("rename");
        };
        let asked = || {
            std::fs::read_to_string(&count)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        write("3.2.0");
        assert_eq!(check("3.2.0", Some(&path)), Ok(None));
        assert_eq!(check("3.2.0", Some(&path)), Ok(None));
        assert_eq!(asked(), 1, "the second check used the first answer");
        // A new shim (another file): asked again.
        write("3.10.0");
        assert!(matches!(
            check("3.2.0", Some(&path)),
            Ok(Some(Skew::Mismatch { .. }))
        ));
        assert_eq!(asked(), 2);
    }

    #[test]
    fn finds_the_version_kata_prints() {
        assert_eq!(parse_version(KATA), Some(semver::Version::new(3, 2, 0)));
        assert_eq!(
            parse_version("kata-runtime v3.10.1-rc0"),
            semver::Version::parse("3.10.1-rc0").ok()
        );
        assert_eq!(parse_version("no version here 3.2"), None);
    }

    #[test]
    fn a_bare_version_is_exact_and_ranges_work() {
        let exact = requirement("3.2.0").expect("req");
        assert!(exact.matches(&semver::Version::new(3, 2, 0)));
        assert!(!exact.matches(&semver::Version::new(3, 3, 0)));
        let range = requirement(">=3.2, <3.4").expect("req");
        assert!(range.matches(&semver::Version::new(3, 3, 1)));
        assert!(
            requirement("three")
                .unwrap_err()
                .contains(KATA_VERSION_ANNOTATION)
        );
    }

    #[test]
    fn reports_mismatch_missing_and_unknown_shims() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kata = shim(dir.path(), KATA);
        assert_eq!(check("3.2.0", Some(&kata)), Ok(None));
        let skew = check("3.3.0", Some(&kata)).expect("check").expect("skew");
        assert_eq!(
            skew.to_string(),
            format!(
                "the artifact needs kata 3.3.0; {} is kata 3.2.0",
                kata.display()
            )
        );
        let missing = dir.path().join("absent");
        assert!(matches!(
            check("3.2.0", Some(&missing)),
            Ok(Some(Skew::NoShim { .. }))
        ));
        assert!(matches!(
            check("3.2.0", None),
            Ok(Some(Skew::NoShim { .. }))
        ));
        let silent = shim(dir.path(), "hello");
        let unknown = check("3.2.0", Some(&silent)).expect("check").expect("skew");
        assert!(
            unknown
                .to_string()
                .contains("no version in its `--version` output"),
            "{unknown}"
        );
    }
}
