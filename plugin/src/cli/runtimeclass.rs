//! `kata-nri-manager runtimeclass`: the Kubernetes RuntimeClass objects for a config's runtime
//! classes. The Helm chart renders the same objects from its values; CI compares the two
//! (`scripts/validate-deploy.sh`), so they cannot drift apart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::config::{Config, FileKind, RuntimeClass, Toleration, parse_str};

/// The node label the daemon sets once a class is servable on the node (`docs/daemon.md`, "Node
/// labels").
pub const SERVABLE_LABEL_PREFIX: &str = "kata-nri-manager.io/";
pub const SERVABLE_VALUE: &str = "servable";

#[derive(Debug, Args)]
pub struct RuntimeClassArgs {
    /// Operator config (YAML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Node-local config (root-owned YAML), when the operator config is a ConfigMap's.
    #[arg(long, value_name = "FILE")]
    pub node_config: Option<PathBuf>,
}

/// A `node.k8s.io/v1` RuntimeClass, with only the fields we set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeClassObject {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Metadata,
    pub handler: String,
    pub overhead: Overhead,
    pub scheduling: Scheduling,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overhead {
    pub pod_fixed: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    pub node_selector: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Prints one YAML document per runtime class, in the config's order.
///
/// Without `--node-config` the file is read without the ownership check `run` makes: the output
/// uses only keys a ConfigMap may set (names, node selectors), and nothing is acted on, so a CI
/// job or an operator's workstation can render the manifests from any copy of the config. The
/// file is still fully validated. With `--node-config`, both files are loaded as the daemon does.
pub fn run(args: RuntimeClassArgs) -> Result<()> {
    print!("{}", render(&config_of(&args)?)?);
    Ok(())
}

fn config_of(args: &RuntimeClassArgs) -> Result<Config> {
    match &args.node_config {
        Some(node) => {
            let loaded = crate::config::load(&args.config, Some(node))
                .with_context(|| format!("loading config {}", args.config.display()))?;
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(loaded.config)
        }
        None => {
            let text = std::fs::read_to_string(&args.config)
                .with_context(|| format!("reading config {}", args.config.display()))?;
            Ok(parse_str(&text, &args.config, FileKind::Trusted)?)
        }
    }
}

/// The RuntimeClass objects of `config`, as a multi-document YAML stream (empty without classes).
pub fn render(config: &Config) -> Result<String> {
    let mut out = String::new();
    for class in &config.runtime_classes {
        let yaml = serde_yaml::to_string(&object(class))
            .with_context(|| format!("rendering RuntimeClass {}", class.name))?;
        out.push_str("---\n");
        out.push_str(&quote_yaml_1_1_scalars(&yaml));
    }
    Ok(out)
}

/// `yaml` (serde_yaml's block output) with every plain scalar that YAML 1.1 reads as something
/// other than text put in single quotes. serde_yaml writes YAML 1.2, where `yes`, `on` and `1:20`
/// are text; kubectl and the API server's decoder (go-yaml v2) read YAML 1.1, where they are a
/// boolean and a number, and a label value `on` would then fail validation as "not a string".
fn quote_yaml_1_1_scalars(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len() + 16);
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        let (lead, rest) = line.split_at(indent);
        out.push_str(lead);
        match rest.split_once(": ") {
            Some((key, value)) => {
                out.push_str(&quoted_if_not_text(key));
                out.push_str(": ");
                out.push_str(&quoted_if_not_text(value));
            }
            None => match rest.strip_suffix(':') {
                Some(key) => {
                    out.push_str(&quoted_if_not_text(key));
                    out.push(':');
                }
                None => out.push_str(&quoted_if_not_text(rest)),
            },
        }
        out.push('\n');
    }
    out
}

fn quoted_if_not_text(scalar: &str) -> std::borrow::Cow<'_, str> {
    const BOOLEANS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    // 1.1's integers and floats also allow `_` separators and base-60 (`1:20` is 80).
    let numeric_1_1 = scalar.starts_with(|c: char| c.is_ascii_digit())
        && scalar
            .chars()
            .all(|c| c.is_ascii_digit() || "_:.".contains(c))
        && (scalar.contains('_') || scalar.contains(':'));
    if BOOLEANS.contains(&scalar) || numeric_1_1 {
        // Single quotes need no escaping of anything these scalars contain.
        std::borrow::Cow::Owned(format!("'{scalar}'"))
    } else {
        std::borrow::Cow::Borrowed(scalar)
    }
}

/// The RuntimeClass of one class: its handler is the class name (the containerd runtime handler
/// the daemon writes), and it schedules only onto nodes where the daemon reports the class
/// servable, narrowed by the class's own `nodeSelector`. The pod overhead is charged to every pod
/// of the class by the scheduler and kubelet, so a node is not overcommitted by its pods' VMs.
pub fn object(class: &RuntimeClass) -> RuntimeClassObject {
    let (cpu, memory) = class.overhead.resolved(&class.name);
    let mut node_selector = class.node_selector.clone();
    // Ours goes in last: a class's nodeSelector cannot switch the servable check off by naming
    // the same key (the config walk only checks label syntax).
    node_selector.insert(servable_label(&class.name), SERVABLE_VALUE.to_owned());
    RuntimeClassObject {
        api_version: "node.k8s.io/v1",
        kind: "RuntimeClass",
        metadata: Metadata {
            name: class.name.clone(),
            labels: BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "kata-nri-manager".to_owned(),
            )]),
        },
        handler: class.name.clone(),
        overhead: Overhead {
            pod_fixed: BTreeMap::from([("cpu".to_owned(), cpu), ("memory".to_owned(), memory)]),
        },
        scheduling: Scheduling {
            node_selector,
            tolerations: class.tolerations.clone(),
        },
    }
}

/// `kata-nri-manager.io/<class>`: the node label the daemon sets to `servable`.
pub fn servable_label(class: &str) -> String {
    format!("{SERVABLE_LABEL_PREFIX}{class}")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use serde::Deserialize;

    use super::*;

    fn config(yaml: &str) -> Config {
        parse_str(yaml, Path::new("config.yaml"), FileKind::Operator)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn one_document_per_class_with_handler_overhead_and_selector() {
        let config = config(
            "runtimeClasses:\n\
             - name: kata-qemu\n  artifacts: {url: registry.local:5000/kata/qemu:3.2}\n\
             - name: kata-qemu-nvidia-gpu\n  nodeSelector: {nvidia.com/gpu.present: \"true\"}\n  \
               artifacts: {url: nvcr.io/nvidia/kata:1}\n",
        );
        let text = render(&config).expect("render");
        assert_eq!(
            text,
            "---\n\
             apiVersion: node.k8s.io/v1\n\
             kind: RuntimeClass\n\
             metadata:\n  name: kata-qemu\n  labels:\n    app.kubernetes.io/managed-by: kata-nri-manager\n\
             handler: kata-qemu\n\
             overhead:\n  podFixed:\n    cpu: 250m\n    memory: 320Mi\n\
             scheduling:\n  nodeSelector:\n    kata-nri-manager.io/kata-qemu: servable\n\
             ---\n\
             apiVersion: node.k8s.io/v1\n\
             kind: RuntimeClass\n\
             metadata:\n  name: kata-qemu-nvidia-gpu\n  labels:\n    app.kubernetes.io/managed-by: kata-nri-manager\n\
             handler: kata-qemu-nvidia-gpu\n\
             overhead:\n  podFixed:\n    cpu: '1'\n    memory: 2Gi\n\
             scheduling:\n  nodeSelector:\n    kata-nri-manager.io/kata-qemu-nvidia-gpu: servable\n    \
             nvidia.com/gpu.present: 'true'\n"
        );
    }

    #[test]
    fn a_class_sets_its_own_overhead_and_tolerations() {
        let config = config(
            "runtimeClasses:\n\
             - name: kata-clh\n  overhead: {memory: 512Mi}\n  \
               tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]\n  \
               artifacts: {url: nvcr.io/x:1}\n",
        );
        let object = object(config.class("kata-clh").expect("class"));
        assert_eq!(
            object.overhead.pod_fixed,
            BTreeMap::from([
                ("cpu".to_owned(), "250m".to_owned()),
                ("memory".to_owned(), "512Mi".to_owned()),
            ])
        );
        let text = serde_yaml::to_string(&object).expect("yaml");
        assert!(
            text.contains(
                "  tolerations:\n  - key: nvidia.com/gpu\n    operator: Exists\n    effect: NoSchedule\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_typo_in_overhead_or_tolerations_is_refused_by_config_check() {
        for (yaml, expected) in [
            (
                "overhead: {memory: 320MB}",
                "runtimeClasses[0].overhead.memory",
            ),
            ("overhead: {cpu: fast}", "runtimeClasses[0].overhead.cpu"),
            (
                "tolerations: [{operator: Exist}]",
                "runtimeClasses[0].tolerations[0].operator",
            ),
            (
                "tolerations: [{effect: NoSchedul}]",
                "runtimeClasses[0].tolerations[0].effect",
            ),
        ] {
            let text = format!(
                "runtimeClasses:\n- name: k\n  {yaml}\n  artifacts: {{url: nvcr.io/x:1}}\n"
            );
            let err = parse_str(&text, Path::new("config.yaml"), FileKind::Operator)
                .expect_err(yaml)
                .to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }

    /// kubectl and the API server read YAML 1.1, where `yes`, `on` and `1.10` are not text.
    #[test]
    fn yaml_1_1_booleans_and_numbers_stay_text() {
        let config = config(
            "runtimeClasses:\n- name: k\n  \
               nodeSelector: {a: \"yes\", b: \"on\", c: \"Off\", d: \"y\", e: \"1.10\", f: \"NO\", g: \"0x1F\", h: \"1e3\", i: \"1_000\", j: \"1-20\", on: \"yes-no\"}\n  \
               artifacts: {url: nvcr.io/x:1}\n",
        );
        let text = render(&config).expect("render");
        for line in [
            "a: 'yes'",
            "b: 'on'",
            "c: 'Off'",
            "d: 'y'",
            "e: '1.10'",
            "f: 'NO'",
            "g: '0x1F'",
            "h: '1e3'",
            "i: '1_000'",
            "j: 1-20",
            "'on': yes-no",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn every_document_parses_back_as_yaml() {
        let config = config(
            "runtimeClasses:\n- name: a\n  artifacts: {url: nvcr.io/x:1}\n- name: b\n  artifacts: {url: nvcr.io/y:1}\n",
        );
        let text = render(&config).expect("render");
        let names: Vec<String> = serde_yaml::Deserializer::from_str(&text)
            .map(|doc| {
                let value = serde_yaml::Value::deserialize(doc).expect("document");
                value["metadata"]["name"].as_str().expect("name").to_owned()
            })
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn the_servable_label_cannot_be_overridden_by_the_class_selector() {
        let config = config(
            "runtimeClasses:\n- name: k\n  nodeSelector: {kata-nri-manager.io/k: \"anything\"}\n  artifacts: {url: nvcr.io/x:1}\n",
        );
        let class = config.class("k").expect("class");
        assert_eq!(
            object(class).scheduling.node_selector,
            BTreeMap::from([("kata-nri-manager.io/k".to_owned(), "servable".to_owned())])
        );
    }

    #[test]
    fn without_a_node_file_any_copy_of_the_config_renders_but_is_still_validated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "artifactsDir: /opt/a\nruntimeClasses:\n- name: k\n  artifacts: {url: nvcr.io/x:1}\n",
        )
        .expect("write");
        // Writable by anyone: `run` would refuse it, this command only prints.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let args = RuntimeClassArgs {
            config: path.clone(),
            node_config: None,
        };
        let config = config_of(&args).expect("renders");
        assert_eq!(config.runtime_classes[0].name, "k");

        std::fs::write(
            &path,
            "runtimeClasses:\n- name: Bad_Name\n  artifacts: {url: nvcr.io/x:1}\n",
        )
        .expect("write");
        let err = config_of(&args).expect_err("invalid");
        assert!(
            format!("{err:#}").contains("runtimeClasses[0].name"),
            "{err:#}"
        );
    }

    #[test]
    fn no_classes_print_nothing() {
        assert_eq!(render(&Config::default()).expect("render"), "");
    }
}
