//! What a schema cannot say about a file: that it is the wrong kind of file altogether (a whole
//! Kubernetes object, the two files swapped), too big to be a config, or a config that loads but
//! probably does not mean what it says (warnings).

use std::path::Path;

use serde_yaml::Value;

use super::error::{Problem, Problems, Warning};
use super::model::Config;

/// The most a config file may hold: a ConfigMap's limit. A bigger file is not a config someone
/// wrote, and the daemon reads it every second.
pub(super) const MAX_FILE_BYTES: usize = 1024 * 1024;

/// The most runtime classes one config may hold: each is a containerd runtime, a RuntimeClass
/// and a directory of artifacts on every node.
pub(super) const MAX_CLASSES: usize = 256;

/// The file's size, when it is over [`MAX_FILE_BYTES`].
pub(super) fn too_large(text: &str) -> Option<String> {
    (text.len() > MAX_FILE_BYTES).then(|| {
        format!(
            "the file is {} bytes; a config is at most {MAX_FILE_BYTES} bytes (1 MiB, a ConfigMap's limit): is this the right file?",
            text.len()
        )
    })
}

/// A whole Kubernetes object (a ConfigMap as `kubectl get -o yaml` prints it) where its config
/// was meant: every top-level key would be unknown, which says nothing useful.
pub(super) fn kubernetes_object(document: &Value) -> Option<String> {
    let kind = document.get("kind")?.as_str()?;
    document.get("apiVersion")?;
    let mut message = format!(
        "this is a Kubernetes {kind} object, not a kata-nri-manager config: pass the config itself"
    );
    if kind == "ConfigMap"
        && let Some(Value::Mapping(data)) = document.get("data")
        && let Some(key) = data.keys().filter_map(Value::as_str).next()
    {
        let name = document
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("NAME");
        message.push_str(&format!(
            ", the value of its data key {key:?} (kubectl get configmap {name} -o jsonpath='{{.data.{}}}' > config.yaml)",
            key.replace('.', "\\.")
        ));
    }
    Some(message)
}

/// Whether `document` names any class's `artifacts.url`: what an operator file has and a node
/// file cannot.
fn names_artifacts(document: &Value) -> bool {
    document
        .get("runtimeClasses")
        .and_then(Value::as_sequence)
        .is_some_and(|classes| {
            classes
                .iter()
                .any(|c| c.get("artifacts").and_then(|a| a.get("url")).is_some())
        })
}

/// The node-local top-level keys a node file typically sets.
const NODE_FILE_KEYS: &[&str] = &[
    "artifactsDir",
    "pullSecretsDir",
    "stateDir",
    "gate",
    "kataConfig",
    "node",
];

/// `--config` and `--node-config` given the other way round: the "operator" file holds node
/// keys and no artifact source while the "node" file names the sources. Reported alone: the
/// dozens of problems the swap causes would hide it.
pub(super) fn swapped(operator: &Value, node: &Value) -> bool {
    let node_like = NODE_FILE_KEYS.iter().any(|k| operator.get(*k).is_some())
        || operator
            .get("containerd")
            .and_then(|c| c.get("configPath"))
            .is_some();
    node_like && !names_artifacts(operator) && names_artifacts(node)
}

pub(super) fn swapped_problem(node: &Path) -> Problems {
    let mut problems = Problems::default();
    problems.push(
        "",
        format!(
            "this looks like a node file (node-local keys, no artifacts.url) while {} names the artifacts: did you swap --config and --node-config? --config takes the operator config (the ConfigMap's), --node-config the node file",
            node.display()
        ),
    );
    problems
}

/// What loads but is probably not meant.
pub(super) fn warnings(config: &Config, file: &Path) -> Vec<Warning> {
    let warn = |path: String, message: String| Warning {
        file: file.to_owned(),
        problem: Problem::new(path, message),
    };
    let mut out = Vec::new();
    if config.runtime_classes.is_empty() {
        out.push(warn(
            "runtimeClasses".into(),
            "no runtime classes: the daemon serves none (and removes the stanzas it wrote before)"
                .into(),
        ));
    }
    for (i, class) in config.runtime_classes.iter().enumerate() {
        let at = |key: &str| format!("runtimeClasses[{i}].{key}");
        let url = &class.artifacts.url;
        if url.tag().is_none() && url.digest().is_none() && class.artifacts.digest.is_none() {
            out.push(warn(
                at("artifacts.url"),
                format!(
                    "{url} has no tag or digest: `latest` is implied, which moves whenever anyone pushes; name a tag or pin a digest"
                ),
            ));
        }
        let servable = format!("kata-nri-manager.io/{}", class.name);
        if class.node_selector.contains_key(&servable) {
            out.push(warn(
                at("nodeSelector"),
                format!(
                    "{servable} is the label the daemon sets where it serves the class: the RuntimeClass always selects {servable}: servable, whatever this says; drop the entry"
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).expect("yaml")
    }

    #[test]
    fn a_configmap_object_names_its_data_key_and_how_to_extract_it() {
        let message = kubernetes_object(&yaml(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: knm-config}\ndata:\n  config.yaml: |\n    runtimeClasses: []\n",
        ))
        .expect("an object");
        assert_eq!(
            message,
            "this is a Kubernetes ConfigMap object, not a kata-nri-manager config: pass the config itself, the value of its data key \"config.yaml\" (kubectl get configmap knm-config -o jsonpath='{.data.config\\.yaml}' > config.yaml)"
        );
        assert_eq!(kubernetes_object(&yaml("kind: x\n")), None);
        assert_eq!(kubernetes_object(&yaml("runtimeClasses: []\n")), None);
    }

    #[test]
    fn swapped_files_are_recognised_only_when_both_sides_fit() {
        let node = yaml("artifactsDir: /a\ncontainerd: {configPath: /c}\n");
        let operator = yaml("runtimeClasses:\n- {name: k, artifacts: {url: nvcr.io/x:1}}\n");
        assert!(swapped(&node, &operator));
        assert!(!swapped(&operator, &node));
        // k8s-kata-manager's file carries artifactsDir and the sources: not a swap.
        let kkm =
            yaml("artifactsDir: /a\nruntimeClasses:\n- {name: k, artifacts: {url: nvcr.io/x:1}}\n");
        assert!(!swapped(&kkm, &node));
    }

    #[test]
    fn too_large_says_the_limit() {
        assert_eq!(too_large("runtimeClasses: []\n"), None);
        let big = "#".repeat(MAX_FILE_BYTES + 1);
        assert!(
            too_large(&big)
                .expect("too large")
                .contains("at most 1048576 bytes")
        );
    }
}
