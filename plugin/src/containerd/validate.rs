//! Checks before anything is written: the new text parses as TOML, and (when the containerd
//! binary is at hand) containerd itself accepts it and sees our runtimes in it.
//!
//! `containerd --config F config dump` loads F the way the daemon does (imports included) and
//! prints the merged config; it exits non-zero with the reason on stderr when it refuses it. The
//! check runs on temp copies next to the real file, so relative `imports` resolve the same way and
//! the real files stay untouched until the check passed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use toml_edit::DocumentMut;

use super::child::wait_with_deadline;
use super::error::{ContainerdError, Result};
use super::schema::{self, Schema};
use super::template;

/// Checks that `text` parses as TOML (a template's `{{ … }}` actions blanked first).
pub fn parses(path: &Path, text: &str) -> Result<()> {
    let masked = template::mask(path, text, schema::is_template(path))?;
    toml_edit::Document::parse(masked.as_ref())
        .map(|_| ())
        .map_err(|e| ContainerdError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().to_string(),
        })
}

/// What containerd said about a config it accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Its warnings (unknown keys it ignores, deprecations), temp paths replaced by real ones.
    pub warnings: Vec<String>,
    /// Why containerd was not asked (a k3s template is not TOML until k3s renders it).
    pub skipped: Option<String>,
}

/// Runs `containerd config dump` on a candidate config.
#[derive(Debug, Clone)]
pub struct ContainerdCheck {
    pub binary: PathBuf,
    pub timeout: Duration,
}

/// The drop-in to check along with the main file.
#[derive(Debug, Clone, Copy)]
pub struct DropinCandidate<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const TEMP_PREFIX: &str = ".kata-nri-manager-validate-";

impl ContainerdCheck {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Asks containerd whether it accepts `main_text` as `main_path` (with `dropin` in place of
    /// our drop-in, when given) and whether it then sees each of `runtimes`.
    pub fn check(
        &self,
        main_path: &Path,
        main_text: &str,
        dropin: Option<DropinCandidate<'_>>,
        runtimes: &[&str],
    ) -> Result<Accepted> {
        if schema::is_template(main_path) {
            return Ok(Accepted {
                warnings: Vec::new(),
                skipped: Some(format!(
                    "{} is a template: containerd can check it only once k3s renders it",
                    main_path.display()
                )),
            });
        }
        let dir = temp_dir_for(main_path);
        let mut renames = Vec::new();
        let dropin_temp = match dropin {
            Some(candidate) => {
                let file = temp_file(&dir, candidate.text)?;
                renames.push((file.path().to_path_buf(), candidate.path.to_path_buf()));
                Some((file, candidate.path))
            }
            None => None,
        };
        let main_for_check = match &dropin_temp {
            Some((file, real)) => point_import_at(main_path, main_text, real, file.path())?,
            None => main_text.to_string(),
        };
        let main_temp = temp_file(&dir, &main_for_check)?;
        renames.push((main_temp.path().to_path_buf(), main_path.to_path_buf()));
        let output = self.run(main_temp.path(), main_path)?;
        let stderr = real_names(&output.stderr, &renames);
        if !output.success {
            return Err(ContainerdError::Rejected {
                path: main_path.to_path_buf(),
                stderr: reason(&stderr),
            });
        }
        for name in runtimes {
            check_served(main_path, &output.stdout, name).map_err(|e| {
                explain_missing_imports(e, main_path, main_text, dropin.map(|d| d.path))
            })?;
        }
        Ok(Accepted {
            warnings: stderr
                .lines()
                .filter(|line| line.contains("level=warning"))
                .map(str::to_string)
                .collect(),
            skipped: None,
        })
    }

    fn run(&self, config: &Path, real: &Path) -> Result<Output> {
        let spawn_error = |source| ContainerdError::ValidatorSpawn {
            binary: self.binary.clone(),
            source,
        };
        let mut child = Command::new(&self.binary)
            .arg("--config")
            .arg(config)
            .args(["config", "dump"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        // Read both pipes while waiting: a full pipe would block containerd forever.
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let Some(status) = wait_with_deadline(&mut child, self.timeout, Duration::from_millis(10))
            .map_err(spawn_error)?
        else {
            return Err(ContainerdError::ValidatorTimeout {
                binary: self.binary.clone(),
                path: real.to_path_buf(),
                timeout: self.timeout,
            });
        };
        let join = |handle: Option<thread::JoinHandle<String>>| {
            handle.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        Ok(Output {
            success: status.success(),
            stdout: join(stdout),
            stderr: join(stderr),
        })
    }
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The directory of the real file, so relative imports resolve alike; a temp dir if it is gone.
fn temp_dir_for(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if dir.is_dir() => dir.to_path_buf(),
        _ => std::env::temp_dir(),
    }
}

fn temp_file(dir: &Path, text: &str) -> Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".toml")
        .tempfile_in(dir)
        .map_err(|e| ContainerdError::io("creating a temp file in", dir, e))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .map_err(|e| ContainerdError::io("writing", file.path().to_path_buf(), e))?;
    Ok(file)
}

/// The main text with our drop-in's `imports` entry pointing at the candidate instead (or the
/// candidate appended, when a glob of the operator imports our drop-in).
fn point_import_at(main_path: &Path, text: &str, real: &Path, candidate: &Path) -> Result<String> {
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| ContainerdError::Parse {
                path: main_path.to_path_buf(),
                message: e.to_string().trim().to_string(),
            })?;
    let real = real.to_string_lossy();
    let candidate = candidate.to_string_lossy().into_owned();
    let imports = doc
        .entry("imports")
        .or_insert_with(|| toml_edit::value(toml_edit::Array::new()))
        .as_array_mut()
        .ok_or_else(|| ContainerdError::Shape {
            path: main_path.to_path_buf(),
            what: "imports".into(),
            shape: "not an array",
        })?;
    let mut replaced = false;
    for entry in imports.iter_mut() {
        if entry.as_str() == Some(real.as_ref()) {
            *entry = candidate.as_str().into();
            replaced = true;
        }
    }
    if !replaced {
        imports.push(candidate.as_str());
    }
    Ok(doc.to_string())
}

/// containerd's stderr with the temp files' names replaced by the files they stand for.
fn real_names(stderr: &str, renames: &[(PathBuf, PathBuf)]) -> String {
    renames
        .iter()
        .fold(stderr.to_string(), |text, (temp, real)| {
            let temp = temp.to_string_lossy();
            let real = real.to_string_lossy();
            text.replace(temp.as_ref(), real.as_ref())
        })
}

/// The reason in containerd's stderr: its last line (`containerd: failed to load TOML …`),
/// without the log lines before it.
fn reason(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty() && !line.contains("level=warning"))
        .unwrap_or("containerd exited non-zero without saying why")
        .trim()
        .to_string()
}

/// containerd 2.1 stops reading `imports` at an entry naming a missing file and says nothing
/// (the daemon and `config dump` both ignore "not found" from the config loader): such entries
/// are the likely reason a runtime of a drop-in is not seen.
fn explain_missing_imports(
    error: ContainerdError,
    main_path: &Path,
    main_text: &str,
    ours: Option<&Path>,
) -> ContainerdError {
    let ContainerdError::NotServed { path, name, detail } = error else {
        return error;
    };
    let missing = missing_imports(main_path, main_text, ours);
    if missing.is_empty() {
        return ContainerdError::NotServed { path, name, detail };
    }
    let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
    ContainerdError::NotServed {
        path,
        name,
        detail: format!(
            "{detail}; containerd silently stops reading imports at a missing file, and {} does not exist",
            list.join(", ")
        ),
    }
}

/// Entries of `imports` (globs aside) whose file does not exist, resolved as containerd does.
fn missing_imports(main_path: &Path, main_text: &str, ours: Option<&Path>) -> Vec<PathBuf> {
    let Ok(doc) = toml_edit::Document::parse(main_text) else {
        return Vec::new();
    };
    let Some(imports) = doc.as_table().get("imports").and_then(|i| i.as_array()) else {
        return Vec::new();
    };
    let dir = main_path.parent().unwrap_or(Path::new("/"));
    imports
        .iter()
        .filter_map(|entry| entry.as_str())
        .filter(|entry| !entry.contains('*'))
        .map(|entry| dir.join(entry))
        .filter(|path| Some(path.as_path()) != ours && !path.exists())
        .collect()
}

/// Looks `name` up in the dumped (merged, migrated) config.
fn check_served(main_path: &Path, dump: &str, name: &str) -> Result<()> {
    let not_served = |detail: String| ContainerdError::NotServed {
        path: main_path.to_path_buf(),
        name: name.to_string(),
        detail,
    };
    let doc = toml_edit::Document::parse(dump)
        .map_err(|e| not_served(format!("its `config dump` output does not parse: {e}")))?;
    let root = doc.as_table();
    let version = root
        .get("version")
        .and_then(toml_edit::Item::as_integer)
        .unwrap_or(2);
    let schema = Schema::from_declared(main_path, version)
        .map_err(|_| not_served(format!("its dump has version {version}")))?;
    let mut item = doc.as_item();
    for key in schema.runtimes_path() {
        item = item.get(key).ok_or_else(|| {
            not_served(format!("the dump has no {key} on the way to the runtimes"))
        })?;
    }
    match item.get(name) {
        Some(_) => Ok(()),
        None => Err(not_served(format!(
            "the dump's runtimes are {}",
            item.as_table_like()
                .map(|t| t
                    .iter()
                    .map(|(k, _)| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_file() {
        let err = parses(Path::new("/etc/containerd/config.toml"), "[plugins\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("containerd config /etc/containerd/config.toml is not valid TOML"),
            "{err}"
        );
        parses(
            Path::new("/x/config.toml.tmpl"),
            "{{ template \"base\" . }}\n[a]\n",
        )
        .unwrap();
    }

    #[test]
    fn imports_are_pointed_at_the_candidate() {
        let text = "version = 3\nimports = [\"/etc/containerd/conf.d/k.toml\", \"/other.toml\"]\n";
        let out = point_import_at(
            Path::new("/etc/containerd/config.toml"),
            text,
            Path::new("/etc/containerd/conf.d/k.toml"),
            Path::new("/etc/containerd/.tmp-x.toml"),
        )
        .unwrap();
        assert!(
            out.contains("[\"/etc/containerd/.tmp-x.toml\", \"/other.toml\"]"),
            "{out}"
        );
        let out = point_import_at(
            Path::new("/c.toml"),
            "version = 3\n",
            Path::new("/k.toml"),
            Path::new("/t.toml"),
        )
        .unwrap();
        assert!(out.contains("imports = [\"/t.toml\"]"), "{out}");
    }

    #[test]
    fn the_reason_is_containerds_last_line() {
        let stderr = "time=\"x\" level=warning msg=\"a\"\ncontainerd: failed to load TOML: x\n";
        assert_eq!(reason(stderr), "containerd: failed to load TOML: x");
    }

    #[test]
    fn runtimes_are_looked_up_in_the_dump() {
        let dump = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\nruntime_type = 'x'\n";
        let path = Path::new("/c.toml");
        check_served(path, dump, "runc").unwrap();
        let err = check_served(path, dump, "kata").unwrap_err().to_string();
        assert!(err.contains("runtimes are runc"), "{err}");
    }
}
