//! Errors of loading a config file: every problem is reported with the file and the key it is in,
//! so an operator fixes a ConfigMap in one round instead of one error per restart.

use std::fmt;
use std::path::PathBuf;

/// The result of loading or checking config.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be opened or read.
    #[error("{}: cannot read the file", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML (the cause carries line and column).
    #[error("{}: not valid YAML", file.display())]
    Yaml {
        file: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    /// The file is YAML but breaks the schema or a rule; all problems found, in file order.
    #[error("{}", Lines(file, problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
    /// A file that may hold node-local keys is not protected from non-root users.
    #[error("{}", TrustLines(file, problems))]
    Trust {
        file: PathBuf,
        problems: Vec<String>,
    },
    /// Problems in more than one file (the operator and the node config).
    #[error("{}", ErrorLines(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// Every problem as `(file, problem)`, for callers that render them (e.g. `config check --output json`).
    pub fn problems(&self) -> Vec<(PathBuf, Problem)> {
        match self {
            ConfigError::Invalid { file, problems } => {
                problems.iter().map(|p| (file.clone(), p.clone())).collect()
            }
            ConfigError::Several(errors) => errors.iter().flat_map(ConfigError::problems).collect(),
            ConfigError::Io { .. } | ConfigError::Yaml { .. } | ConfigError::Trust { .. } => {
                Vec::new()
            }
        }
    }
}

/// One rule broken at one place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file, as keys and indexes: `runtimeClasses[2].artifacts.url`; empty for the
    /// whole document.
    pub path: String,
    /// What is wrong and, where it is not obvious, what to do.
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Something that loads but probably is not what the operator meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    pub problem: Problem,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

struct Lines<'a>(&'a PathBuf, &'a [Problem]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.1.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {problem}", self.0.display())?;
        }
        Ok(())
    }
}

struct TrustLines<'a>(&'a PathBuf, &'a [String]);

impl fmt::Display for TrustLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.1.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: not trusted: {problem}", self.0.display())?;
        }
        Ok(())
    }
}

struct ErrorLines<'a>(&'a [ConfigError]);

impl fmt::Display for ErrorLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
            // The one-line variants keep their cause in `source()`, which a list cannot expose.
            if let Some(cause) = std::error::Error::source(error) {
                write!(f, ": {cause}")?;
            }
        }
        Ok(())
    }
}

/// Collects problems while walking or validating, so nothing stops at the first one.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_prints_one_problem_per_line_with_file_and_path() {
        let err = ConfigError::Invalid {
            file: PathBuf::from("/etc/k/config.yaml"),
            problems: vec![
                Problem::new("nri.pluginIdx", "must be exactly two digits, got \"5\""),
                Problem::new("", "expected a mapping at the top of the file"),
            ],
        };
        assert_eq!(
            err.to_string(),
            "/etc/k/config.yaml: nri.pluginIdx: must be exactly two digits, got \"5\"\n\
             /etc/k/config.yaml: expected a mapping at the top of the file"
        );
    }

    #[test]
    fn several_prints_each_error_with_its_cause() {
        let err = ConfigError::Several(vec![
            ConfigError::Io {
                file: PathBuf::from("/a"),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
            },
            ConfigError::Trust {
                file: PathBuf::from("/b"),
                problems: vec!["owned by uid 1000".into()],
            },
        ]);
        assert_eq!(
            err.to_string(),
            "/a: cannot read the file: not found\n/b: not trusted: owned by uid 1000"
        );
    }
}
