//! Which layout containerd's config file uses, where the runtime stanzas and the NRI section live
//! in it, and whether the file is one that k3s or rke2 regenerate on every start.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::{ContainerdError, Result};

/// containerd's NRI plugin section (the same id in config versions 2 and 3).
pub const NRI_PLUGIN: &str = "io.containerd.nri.v1.nri";

/// The config schema: where containerd looks for runtime stanzas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    /// `version = 2`, containerd 1.x: `plugins."io.containerd.grpc.v1.cri".containerd.runtimes`.
    V2,
    /// `version = 3`, containerd 2.x: `plugins."io.containerd.cri.v1.runtime".containerd.runtimes`.
    V3,
}

impl Schema {
    /// The value of the top-level `version` key for this schema.
    pub fn version(self) -> i64 {
        match self {
            Schema::V2 => 2,
            Schema::V3 => 3,
        }
    }

    /// The id of the CRI plugin that holds the runtime stanzas.
    pub fn cri_runtime_plugin(self) -> &'static str {
        match self {
            Schema::V2 => "io.containerd.grpc.v1.cri",
            Schema::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    /// Key path from the document root to the table of runtime stanzas.
    pub fn runtimes_path(self) -> [&'static str; 4] {
        [
            "plugins",
            self.cri_runtime_plugin(),
            "containerd",
            "runtimes",
        ]
    }

    /// Key path from the document root to the NRI section.
    pub fn nri_path(self) -> [&'static str; 2] {
        ["plugins", NRI_PLUGIN]
    }

    /// Whether containerd runs NRI when the config says nothing: 1.7 needs `disable = false`.
    pub fn nri_enabled_by_default(self) -> bool {
        matches!(self, Schema::V3)
    }

    /// The quote containerd's own `config default` uses for plugin ids in headers, so that a
    /// header we add to a file looks like the ones containerd wrote.
    pub(crate) fn header_quote(self) -> char {
        match self {
            Schema::V2 => '"',
            Schema::V3 => '\'',
        }
    }

    /// The schema a config file with this `version` uses.
    pub fn from_declared(path: &Path, version: i64) -> Result<Self> {
        match version {
            2 => Ok(Schema::V2),
            3 => Ok(Schema::V3),
            version => Err(ContainerdError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            }),
        }
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "version {}", self.version())
    }
}

/// containerd's release, as far as the schema cares: the major and minor number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerdVersion {
    pub major: u32,
    pub minor: u32,
}

impl ContainerdVersion {
    pub fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// The schema a config file without `version` is written in for this release: containerd
    /// 1.x reads version 2 (at most), 2.x writes version 3.
    pub fn default_schema(self) -> Schema {
        if self.major >= 2 {
            Schema::V3
        } else {
            Schema::V2
        }
    }

    /// Reads the version out of `containerd --version`'s output
    /// (`containerd github.com/containerd/containerd/v2 2.1.9 <commit>`): the first word that
    /// parses as a version.
    pub fn from_version_output(output: &str) -> Result<Self> {
        output
            .split_whitespace()
            .find_map(|word| word.parse().ok())
            .ok_or_else(|| ContainerdError::ContainerdVersion(output.trim().to_string()))
    }
}

impl FromStr for ContainerdVersion {
    type Err = ContainerdError;

    /// Accepts `2.1.9`, `v1.7.24`, and distribution versions such as `1.7.24~ds1-6+deb13u1`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || ContainerdError::ContainerdVersion(s.to_string());
        let digits = s.strip_prefix('v').unwrap_or(s);
        let mut parts = digits.split(['.', '~', '+', '-']);
        let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        Ok(Self { major, minor })
    }
}

impl fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Decides the schema from the file's `version` key (if any) and containerd's release (if known).
///
/// `has_content` says whether the file holds any key at all: a file with settings but no
/// `version` is read by containerd 1.x as version 1, where our stanza would be ignored.
pub fn decide(
    path: &Path,
    declared: Option<i64>,
    containerd: Option<ContainerdVersion>,
    has_content: bool,
) -> Result<Schema> {
    let path_buf = || path.to_path_buf();
    match (declared, containerd) {
        (Some(3), Some(v)) if v.major < 2 => Err(ContainerdError::VersionTooNew {
            path: path_buf(),
            containerd: v.to_string(),
        }),
        (Some(version), _) => Schema::from_declared(path, version),
        (None, Some(v)) if v.major < 2 && has_content => Err(ContainerdError::VersionMissingOnV1 {
            path: path_buf(),
            containerd: v.to_string(),
        }),
        (None, Some(v)) => Ok(v.default_schema()),
        (None, None) => Err(ContainerdError::VersionUnknown { path: path_buf() }),
    }
}

/// Reads the top-level `version` key of a parsed config.
pub fn declared_version(path: &Path, root: &toml_edit::Table) -> Result<Option<i64>> {
    let Some(item) = root.get("version") else {
        return Ok(None);
    };
    item.as_integer()
        .map(Some)
        .ok_or_else(|| ContainerdError::VersionNotInteger {
            path: path.to_path_buf(),
            found: item.to_string().trim().to_string(),
        })
}

/// The program that generated a config file and the template it says to edit instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// `k3s` or `rke2`.
    pub program: String,
    /// The template next to the generated file (`config.toml.tmpl`, `config-v3.toml.tmpl`).
    pub template: PathBuf,
}

/// Recognises the header k3s and rke2 put on the config they regenerate on every start
/// (`# File generated by k3s. DO NOT EDIT. Use config.toml.tmpl instead.`).
///
/// Only the comment lines at the top count: the same sentence inside a value or further down is
/// not a generator's mark.
pub fn generated_by(path: &Path, text: &str) -> Option<Generated> {
    let mut leading_comments = text
        .lines()
        .map(str::trim)
        .take_while(|line| line.is_empty() || line.starts_with('#'));
    leading_comments.find_map(|line| {
        let rest = line.trim_start_matches('#').trim();
        let rest = rest.strip_prefix("File generated by ")?;
        let (program, rest) = rest.split_once(". DO NOT EDIT.")?;
        let template = rest
            .trim()
            .strip_prefix("Use ")?
            .strip_suffix(" instead.")?;
        // The template k3s renders is named in the header as a bare file name next to the output.
        let template = path.parent().unwrap_or(Path::new("")).join(template.trim());
        Some(Generated {
            program: program.trim().to_string(),
            template,
        })
    })
}

/// Whether `path` is a k3s/rke2 template (`*.tmpl`), which we edit in place of the generated file.
pub fn is_template(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "tmpl")
}

/// Refuses a file that its generator rewrites on every start: our edit would be lost at the next
/// k3s restart, and with it the runtime handler.
pub fn refuse_generated(path: &Path, text: &str) -> Result<()> {
    if is_template(path) {
        return Ok(());
    }
    match generated_by(path, text) {
        Some(generated) => Err(ContainerdError::GeneratedFile {
            path: path.to_path_buf(),
            program: generated.program,
            template: generated.template,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/containerd/config.toml")
    }

    #[test]
    fn declared_version_wins() {
        let v17 = Some(ContainerdVersion::new(1, 7));
        let v21 = Some(ContainerdVersion::new(2, 1));
        assert_eq!(decide(p(), Some(2), v21, true).unwrap(), Schema::V2);
        assert_eq!(decide(p(), Some(3), v21, true).unwrap(), Schema::V3);
        assert_eq!(decide(p(), Some(2), v17, true).unwrap(), Schema::V2);
        assert_eq!(decide(p(), Some(3), None, true).unwrap(), Schema::V3);
    }

    #[test]
    fn missing_version_is_decided_by_containerd() {
        let v17 = Some(ContainerdVersion::new(1, 7));
        let v20 = Some(ContainerdVersion::new(2, 0));
        assert_eq!(decide(p(), None, v17, false).unwrap(), Schema::V2);
        assert_eq!(decide(p(), None, v20, false).unwrap(), Schema::V3);
        assert_eq!(decide(p(), None, v20, true).unwrap(), Schema::V3);
        let err = decide(p(), None, v17, true).unwrap_err().to_string();
        assert!(err.contains("version 1"), "{err}");
        let err = decide(p(), None, None, false).unwrap_err().to_string();
        assert!(err.contains("no `version`"), "{err}");
    }

    #[test]
    fn version_one_and_unknown_are_refused() {
        let err = decide(p(), Some(1), None, true).unwrap_err().to_string();
        assert!(
            err.contains("version = 1") && err.contains("config migrate"),
            "{err}"
        );
        let err = decide(p(), Some(4), None, true).unwrap_err().to_string();
        assert!(err.contains("version = 4"), "{err}");
        let v17 = Some(ContainerdVersion::new(1, 7));
        let err = decide(p(), Some(3), v17, true).unwrap_err().to_string();
        assert!(err.contains("containerd 1.7 refuses"), "{err}");
    }

    #[test]
    fn containerd_versions_parse() {
        let v: ContainerdVersion = "1.7.24~ds1-6+deb13u1".parse().unwrap();
        assert_eq!(v, ContainerdVersion::new(1, 7));
        let v: ContainerdVersion = "v2.1.9".parse().unwrap();
        assert_eq!(v, ContainerdVersion::new(2, 1));
        let v = ContainerdVersion::from_version_output(
            "containerd github.com/containerd/containerd/v2 2.1.9 \n",
        )
        .unwrap();
        assert_eq!(v, ContainerdVersion::new(2, 1));
        // What the Debian packages print: the version word comes after the module path.
        let v = ContainerdVersion::from_version_output(
            "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1\n",
        )
        .unwrap();
        assert_eq!(v, ContainerdVersion::new(1, 7));
        assert!("two".parse::<ContainerdVersion>().is_err());
    }

    #[test]
    fn paths_per_schema() {
        assert_eq!(
            Schema::V2.runtimes_path(),
            [
                "plugins",
                "io.containerd.grpc.v1.cri",
                "containerd",
                "runtimes"
            ]
        );
        assert_eq!(
            Schema::V3.runtimes_path(),
            [
                "plugins",
                "io.containerd.cri.v1.runtime",
                "containerd",
                "runtimes"
            ]
        );
        assert_eq!(
            Schema::V2.nri_path(),
            ["plugins", "io.containerd.nri.v1.nri"]
        );
        assert!(!Schema::V2.nri_enabled_by_default());
    }

    #[test]
    fn k3s_header_names_the_template() {
        let path = Path::new("/var/lib/rancher/k3s/agent/etc/containerd/config.toml");
        let text = "\n# File generated by k3s. DO NOT EDIT. Use config-v3.toml.tmpl instead.\nversion = 3\n";
        let generated = generated_by(path, text).unwrap();
        assert_eq!(generated.program, "k3s");
        assert_eq!(
            generated.template,
            Path::new("/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl")
        );
        let err = refuse_generated(path, text).unwrap_err().to_string();
        assert!(
            err.contains("config-v3.toml.tmpl") && err.contains("k3s"),
            "{err}"
        );
        // The template itself often keeps the header; it is what we edit.
        let tmpl = Path::new("/var/lib/rancher/rke2/agent/etc/containerd/config.toml.tmpl");
        refuse_generated(
            tmpl,
            "# File generated by rke2. DO NOT EDIT. Use config.toml.tmpl instead.\n",
        )
        .unwrap();
        // The sentence below the first key is not a generator's mark.
        assert!(
            generated_by(
                path,
                "version = 3\n# File generated by k3s. DO NOT EDIT. Use x instead.\n"
            )
            .is_none()
        );
    }
}
