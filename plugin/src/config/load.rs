//! Reading the config files: trust, YAML, schema walk, decoding, cross-key rules, and the merge
//! of the node file into the operator file. Every problem of both files is reported together.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::class::RuntimeClass;
use super::decode::{Decoded, decode};
use super::error::{ConfigError, Problems, Result, Warning};
use super::model::Config;
use super::node::{NodeClass, NodeConfig};
use super::sanity;
use super::trust;
use super::validate::{duplicate_names, validate};
use super::walk::{Role, walk_document, walk_operator_document};

/// A config ready to use, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    pub config: Config,
    pub operator_file: PathBuf,
    pub node_file: Option<PathBuf>,
    /// Loads, but probably not what was meant; log them.
    pub warnings: Vec<Warning>,
}

/// What a file given to [`parse_str`] may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Everything, node-local keys included. Only for text whose origin the caller trusts.
    Trusted,
    /// Everything but node-local keys: a ConfigMap.
    Operator,
}

/// Loads `--config` and, when given, `--node-config`.
///
/// With a node file, node-local keys come from it alone: in the operator file each is an error
/// unless the node file sets it to the same value. Without one, the operator file holds them and must be trusted: owned by root and writable by
/// nobody else, nor swappable through its directories.
pub fn load(operator: &Path, node: Option<&Path>) -> Result<LoadedConfig> {
    Loader::new().load(operator, node)
}

/// Loads an operator config alone, as a ConfigMap's: node-local keys are errors, and the file's
/// owner is not checked (nothing node-local can come from it). For `config check` by any user.
pub fn load_operator(operator: &Path) -> Result<LoadedConfig> {
    let text = std::fs::read_to_string(operator).map_err(|source| ConfigError::Io {
        file: operator.to_owned(),
        source,
    })?;
    let config = parse_operator(&text, operator, Role::Operator, None)?;
    let warnings = sanity::warnings(&config, operator);
    Ok(LoadedConfig {
        config,
        operator_file: operator.to_owned(),
        node_file: None,
        warnings,
    })
}

/// Parses and validates config text that was read elsewhere, without the file checks of [`load`].
pub fn parse_str(text: &str, file: &Path, kind: FileKind) -> Result<Config> {
    let role = match kind {
        FileKind::Trusted => Role::Trusted,
        FileKind::Operator => Role::Operator,
    };
    parse_operator(text, file, role, None)
}

/// [`load`] with a different trusted owner: tests run as any user, and a deployment might run the
/// daemon as a dedicated uid.
#[derive(Debug, Clone, Default)]
pub struct Loader {
    /// Root (0) unless told otherwise.
    trusted_owner: u32,
}

impl Loader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The uid that trusted files (and their directories, besides root's) must belong to.
    pub fn trusted_owner(mut self, uid: u32) -> Self {
        self.trusted_owner = uid;
        self
    }

    pub fn load(&self, operator: &Path, node: Option<&Path>) -> Result<LoadedConfig> {
        let role = if node.is_some() {
            Role::Operator
        } else {
            Role::Trusted
        };
        // The node file is walked first: the operator file's node-local keys are checked against
        // what it says.
        let node_walked = node.map(|path| {
            let (trusted, text) = self.read(path, true);
            (path, trusted, text.and_then(|text| walk_node(&text, path)))
        });
        let node_document = node_walked
            .as_ref()
            .and_then(|(_, _, walked)| walked.as_ref().ok())
            .map(|walked| &walked.document);
        let (trusted, text) = self.read(operator, role == Role::Trusted);
        // The node file as written (its walk drops what a node file may not hold, which is
        // exactly what shows a swap).
        if let (Some(node_path), Ok(operator_text)) = (node, &text)
            && let Ok(node_text) = std::fs::read_to_string(node_path)
            && let Ok(node_raw) = serde_yaml::from_str::<Value>(&node_text)
            && let Ok(operator_document) = serde_yaml::from_str::<Value>(operator_text)
            && sanity::swapped(&operator_document, &node_raw)
        {
            return Err(invalid(operator, sanity::swapped_problem(node_path)));
        }
        let config = both(
            trusted,
            text.and_then(|text| parse_operator(&text, operator, role, node_document)),
        )
        .map(|((), config)| config);
        let node_config = node_walked
            .map(|(path, trusted, walked)| {
                both(trusted, walked.and_then(|walked| decode_node(walked, path)))
                    .map(|((), node_config)| (path, node_config))
            })
            .transpose();
        let (mut config, node_config) = both(config, node_config)?;
        let mut warnings = match node_config {
            Some((path, (node_config, origins))) => node_config.apply(&mut config, &origins, path),
            None => Vec::new(),
        };
        warnings.extend(sanity::warnings(&config, operator));
        Ok(LoadedConfig {
            config,
            operator_file: operator.to_owned(),
            node_file: node.map(Path::to_owned),
            warnings,
        })
    }

    /// The trust verdict and the text, apart, so an untrusted file is still checked in full.
    fn read(&self, path: &Path, check_trust: bool) -> (Result<()>, Result<String>) {
        let io_error = |source| ConfigError::Io {
            file: path.to_owned(),
            source,
        };
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(source) => return (Ok(()), Err(io_error(source))),
        };
        let problems = if check_trust {
            trust::problems(path, &file, self.trusted_owner)
        } else {
            Vec::new()
        };
        let trusted = if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Trust {
                file: path.to_owned(),
                problems,
            })
        };
        let mut text = String::new();
        let text = file
            .read_to_string(&mut text)
            .map(|_| text)
            .map_err(io_error);
        (trusted, text)
    }
}

/// Both values, or every error of either.
fn both<A, B>(a: Result<A>, b: Result<B>) -> Result<(A, B)> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(a), Err(b)) => {
            let mut all = Vec::new();
            for error in [a, b] {
                match error {
                    ConfigError::Several(errors) => all.extend(errors),
                    error => all.push(error),
                }
            }
            Err(ConfigError::Several(all))
        }
    }
}

fn parse_yaml(text: &str, file: &Path) -> Result<Value> {
    let alone = |message: String| {
        let mut problems = Problems::default();
        problems.push("", message);
        invalid(file, problems)
    };
    if let Some(message) = sanity::too_large(text) {
        return Err(alone(message));
    }
    let document: Value = serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml {
        file: file.to_owned(),
        source,
    })?;
    match sanity::kubernetes_object(&document) {
        Some(message) => Err(alone(message)),
        None => Ok(document),
    }
}

fn invalid(file: &Path, problems: Problems) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        problems: problems.into_vec(),
    }
}

/// `node`: the node file's walked document, when there is one to check node-local keys against.
fn parse_operator(text: &str, file: &Path, role: Role, node: Option<&Value>) -> Result<Config> {
    let mut document = parse_yaml(text, file)?;
    let mut problems = Problems::default();
    match node {
        Some(node) if role == Role::Operator => {
            walk_operator_document(&mut document, node, &mut problems);
        }
        _ => walk_document(&mut document, role, &mut problems),
    }
    let Some(Decoded { mut top, classes }) =
        decode::<Config, RuntimeClass>(document, &mut problems)
    else {
        return Err(invalid(file, problems));
    };
    let (origins, classes): (Vec<usize>, Vec<RuntimeClass>) = classes.into_iter().unzip();
    if classes.len() > sanity::MAX_CLASSES {
        problems.push(
            "runtimeClasses",
            format!(
                "{} classes; at most {} (each is a containerd runtime, a RuntimeClass and a directory of artifacts on every node)",
                classes.len(),
                sanity::MAX_CLASSES
            ),
        );
    }
    top.runtime_classes = classes;
    let indexed: Vec<(usize, &RuntimeClass)> =
        origins.iter().copied().zip(&top.runtime_classes).collect();
    validate(&top, &indexed, role, &mut problems);
    if problems.is_empty() {
        Ok(top)
    } else {
        Err(invalid(file, problems))
    }
}

/// The node file after the schema walk: what it validly sets, and its problems so far.
struct WalkedNode {
    document: Value,
    problems: Problems,
}

fn walk_node(text: &str, file: &Path) -> Result<WalkedNode> {
    let mut document = parse_yaml(text, file)?;
    let mut problems = Problems::default();
    walk_document(&mut document, Role::Node, &mut problems);
    Ok(WalkedNode { document, problems })
}

/// The node config and the file index of each of its runtime classes.
fn decode_node(walked: WalkedNode, file: &Path) -> Result<(NodeConfig, Vec<usize>)> {
    let WalkedNode {
        document,
        mut problems,
    } = walked;
    let Some(Decoded { mut top, classes }) =
        decode::<NodeConfig, NodeClass>(document, &mut problems)
    else {
        return Err(invalid(file, problems));
    };
    let (origins, classes): (Vec<usize>, Vec<NodeClass>) = classes.into_iter().unzip();
    let names: Vec<(usize, &str)> = origins
        .iter()
        .copied()
        .zip(classes.iter().map(|c| c.name.as_str()))
        .collect();
    duplicate_names(&names, &mut problems);
    for (origin, class) in origins.iter().zip(&classes) {
        class.trusts_what_it_runs(*origin, &mut problems);
    }
    top.runtime_classes = classes;
    if problems.is_empty() {
        Ok((top, origins))
    } else {
        Err(invalid(file, problems))
    }
}
