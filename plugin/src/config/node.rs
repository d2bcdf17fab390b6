//! The node config (`--node-config`): the node-local keys, in the same shape as the operator
//! file, and how they replace the operator file's values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::class::{FromArtifact, Verify};
use super::duration::Duration;
use super::error::{Problem, Warning};
use super::model::{Config, Restart};
use super::walk::{index, join};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodeConfig {
    pub(super) artifacts_dir: Option<PathBuf>,
    pub(super) pull_secrets_dir: Option<PathBuf>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) registries: NodeRegistries,
    pub(super) containerd: NodeContainerd,
    pub(super) gate: NodeGate,
    pub(super) policies: NodePolicies,
    pub(super) kata_config: NodeKataConfig,
    pub(super) node: NodeHostSetup,
    pub(super) cdi: NodeCdi,
    /// Not node-local (the operator file may set it too): a fact of the node, whose value wins.
    pub(super) listen: Option<SocketAddr>,
    pub(super) runtime_classes: Vec<NodeClass>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodeRegistries {
    pub(super) ca_file: Option<PathBuf>,
    pub(super) hosts_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodeContainerd {
    pub(super) config_path: Option<PathBuf>,
    /// Not node-local (the operator file may set it too): a fact of the node, whose value wins.
    pub(super) address: Option<PathBuf>,
    /// Replaces the operator's `containerd.restart` as a whole: how containerd restarts is a fact
    /// of the node (systemd unit, launched mode's `none`, a command).
    pub(super) restart: Option<Restart>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodeGate {
    pub(super) dir: Option<PathBuf>,
    pub(super) socket: Option<PathBuf>,
    pub(super) timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodePolicies {
    pub(super) dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodeKataConfig {
    pub(super) allowed_host_paths: Option<Vec<PathBuf>>,
    pub(super) allowed_keys: Option<Vec<String>>,
    pub(super) allowed_arguments: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodeHostSetup {
    pub(super) kernel_modules: Option<Vec<String>>,
    pub(super) modprobe: Option<Vec<String>>,
    pub(super) modprobe_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodeCdi {
    pub(super) dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NodeClass {
    pub(super) name: String,
    #[serde(default)]
    pub(super) artifacts: NodeArtifacts,
    #[serde(default)]
    pub(super) runtime: NodeRuntime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodeArtifacts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) verify: Option<Verify>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(super) struct NodeRuntime {
    /// Not node-local: the operator file may name a kata runtime type; the node file any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) runtime_type: Option<String>,
    pub(super) runtime_path: Option<PathBuf>,
    pub(super) adopt: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) from_artifact: Option<FromArtifact>,
}

impl NodeClass {
    pub(super) fn trusts_what_it_runs(&self, origin: usize, problems: &mut super::error::Problems) {
        super::validate::runs_only_trusted_binaries(
            self.runtime.from_artifact.as_ref(),
            self.artifacts.verify.as_ref(),
            self.runtime.runtime_path.as_deref(),
            &index("runtimeClasses", origin),
            problems,
        );
    }
}

impl NodeConfig {
    /// Puts the node's values into `config`. Node-local keys of `config` are still defaults here
    /// (the walk dropped any the operator file had, after checking they agree with this file),
    /// so a key the node file leaves out keeps its default. `listen` and `containerd.address`
    /// replace the operator file's values when set.
    /// `origins` are the file indexes of `runtime_classes`, for the warnings' paths.
    pub(super) fn apply(self, config: &mut Config, origins: &[usize], file: &Path) -> Vec<Warning> {
        fn set<T>(target: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *target = value;
            }
        }
        set(&mut config.artifacts_dir, self.artifacts_dir);
        set(&mut config.pull_secrets_dir, self.pull_secrets_dir);
        set(&mut config.state_dir, self.state_dir);
        config.registries.ca_file = self.registries.ca_file;
        config.registries.hosts_dir = self.registries.hosts_dir;
        set(
            &mut config.containerd.config_path,
            self.containerd.config_path,
        );
        set(&mut config.containerd.address, self.containerd.address);
        set(&mut config.containerd.restart, self.containerd.restart);
        set(&mut config.gate.dir, self.gate.dir);
        set(&mut config.gate.socket, self.gate.socket);
        set(&mut config.gate.timeout, self.gate.timeout);
        set(&mut config.policies.dir, self.policies.dir);
        set(
            &mut config.kata_config.allowed_host_paths,
            self.kata_config.allowed_host_paths,
        );
        set(
            &mut config.kata_config.allowed_keys,
            self.kata_config.allowed_keys,
        );
        set(
            &mut config.kata_config.allowed_arguments,
            self.kata_config.allowed_arguments,
        );
        set(&mut config.listen, self.listen);
        set(&mut config.node.kernel_modules, self.node.kernel_modules);
        config.node.modprobe = self.node.modprobe;
        config.node.modprobe_root = self.node.modprobe_root;
        set(&mut config.cdi.dir, self.cdi.dir);

        let mut warnings = Vec::new();
        for (node_class, origin) in self.runtime_classes.into_iter().zip(origins) {
            let target = config
                .runtime_classes
                .iter_mut()
                .find(|c| c.name == node_class.name);
            match target {
                Some(class) => {
                    if let Some(runtime_type) = node_class.runtime.runtime_type {
                        class.runtime.runtime_type = runtime_type;
                    }
                    class.runtime.runtime_path = node_class.runtime.runtime_path;
                    class.runtime.adopt = node_class.runtime.adopt;
                    class.runtime.from_artifact = node_class.runtime.from_artifact;
                    class.artifacts.verify = node_class.artifacts.verify;
                }
                // Not an error: the operator may drop a class before every node file follows.
                None => warnings.push(Warning {
                    file: file.to_owned(),
                    problem: Problem::new(
                        join(&index("runtimeClasses", *origin), "name"),
                        format!(
                            "class {:?} is not in the operator config; its settings here are unused",
                            node_class.name
                        ),
                    ),
                }),
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::CommandRestart;

    fn operator_config() -> Config {
        serde_yaml::from_str(
            "runtimeClasses:\n- {name: kata-qemu, artifacts: {url: nvcr.io/x:1}}\n- {name: kata-clh, artifacts: {url: nvcr.io/y:1}}\n",
        )
        .expect("config")
    }

    #[test]
    fn node_values_replace_defaults_and_unset_ones_keep_them() {
        let mut config = operator_config();
        let node = NodeConfig {
            artifacts_dir: Some("/var/lib/kata-artifacts".into()),
            containerd: NodeContainerd {
                config_path: None,
                address: None,
                restart: Some(Restart::Command(CommandRestart {
                    command: vec!["/usr/local/bin/restart-containerd".into()],
                    timeout: Duration::from_secs(30),
                })),
            },
            gate: NodeGate {
                timeout: Some(Duration::from_secs(90)),
                ..NodeGate::default()
            },
            runtime_classes: vec![NodeClass {
                name: "kata-clh".into(),
                artifacts: Default::default(),
                runtime: NodeRuntime {
                    runtime_type: None,
                    runtime_path: Some("/opt/kata/bin/containerd-shim-kata-v2".into()),
                    adopt: true,
                    from_artifact: None,
                },
            }],
            ..NodeConfig::default()
        };
        let warnings = node.apply(&mut config, &[0], Path::new("/etc/node.yaml"));
        assert!(warnings.is_empty());
        let defaults = Config::default();
        assert_eq!(
            config.artifacts_dir,
            PathBuf::from("/var/lib/kata-artifacts")
        );
        assert_eq!(
            config.containerd.config_path,
            defaults.containerd.config_path
        );
        assert_eq!(
            config.containerd.restart.timeout(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(config.gate.timeout, Duration::from_secs(90));
        assert_eq!(config.gate.dir, defaults.gate.dir);
        assert_eq!(config.runtime_classes[0].runtime.runtime_path, None);
        assert!(!config.runtime_classes[0].runtime.adopt);
        assert!(config.runtime_classes[1].runtime.adopt);
        assert_eq!(
            config.runtime_classes[1].runtime.runtime_path,
            Some(PathBuf::from("/opt/kata/bin/containerd-shim-kata-v2"))
        );
    }

    #[test]
    fn classes_only_in_the_node_file_are_a_warning() {
        let mut config = operator_config();
        let node = NodeConfig {
            runtime_classes: vec![NodeClass {
                name: "kata-fc".into(),
                artifacts: Default::default(),
                runtime: NodeRuntime::default(),
            }],
            ..NodeConfig::default()
        };
        let warnings = node.apply(&mut config, &[4], Path::new("/etc/node.yaml"));
        assert_eq!(
            warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "/etc/node.yaml: runtimeClasses[4].name: class \"kata-fc\" is not in the operator config; its settings here are unused"
            ]
        );
    }
}
