//! The config file's shape as data: every key, what its value must be, whether it is required,
//! and which file may set it. The walk (`walk.rs`) checks a document against it before serde
//! sees it, so that all problems are found in one pass and serde never fails.

use super::values;

/// Which file may set a key (`docs/configuration.md`, "Which file holds what").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// Decided by the operator (the ConfigMap); not in the node file.
    Shared,
    /// Names host files or programs: only from a root-owned file.
    NodeLocal,
    /// Structure both files use (`containerd`, `runtimeClasses[].name`, …).
    Both,
}

pub(super) type Check = fn(&str) -> Result<(), String>;

#[derive(Debug)]
pub(super) enum Shape {
    /// A mapping with fixed keys.
    Struct(&'static [Key]),
    /// A mapping whose `tag` key picks the keys of one variant.
    Tagged {
        tag: &'static str,
        variants: &'static [Variant],
    },
    /// `partial`: a bad item does not drop the list (runtime classes are checked one by one).
    List {
        item: &'static Shape,
        partial: bool,
    },
    /// A mapping with free keys.
    Dict {
        key: Option<Check>,
        value: &'static Shape,
    },
    Text(Check),
    Bool,
    /// A non-negative whole number that fits in u32.
    Count,
    Enum(&'static [&'static str]),
    /// A size: text like `8Gi` or a number of bytes.
    Size(Check),
    /// A program and its arguments.
    Argv,
    /// Anything JSON can carry (policy settings).
    Json,
}

#[derive(Debug)]
pub(super) struct Key {
    pub(super) name: &'static str,
    pub(super) shape: Shape,
    pub(super) scope: Scope,
    pub(super) required: bool,
}

#[derive(Debug)]
pub(super) struct Variant {
    pub(super) name: &'static str,
    pub(super) scope: Scope,
    pub(super) keys: &'static [Key],
}

const fn key(name: &'static str, shape: Shape, scope: Scope) -> Key {
    Key {
        name,
        shape,
        scope,
        required: false,
    }
}

const fn required(name: &'static str, shape: Shape, scope: Scope) -> Key {
    Key {
        name,
        shape,
        scope,
        required: true,
    }
}

const PATH: Shape = Shape::Text(values::absolute_path);
const POSITIVE_DURATION: Shape = Shape::Text(values::positive_duration);

use Scope::{Both, NodeLocal, Shared};

const RESTART: Shape = Shape::Tagged {
    tag: "method",
    variants: &[
        Variant {
            name: "systemd",
            scope: Both,
            keys: &[
                key("unit", Shape::Text(values::service_unit), Both),
                key("timeout", POSITIVE_DURATION, Both),
            ],
        },
        Variant {
            name: "command",
            scope: NodeLocal,
            keys: &[
                required("command", Shape::Argv, NodeLocal),
                key("timeout", POSITIVE_DURATION, Both),
            ],
        },
        Variant {
            name: "none",
            scope: Both,
            keys: &[],
        },
    ],
};

const RUNTIME_CLASS: Shape = Shape::Struct(&[
    required("name", Shape::Text(values::class_name), Both),
    key(
        "nodeSelector",
        Shape::Dict {
            key: Some(values::label_key),
            value: &Shape::Text(values::label_value),
        },
        Shared,
    ),
    key(
        "overhead",
        Shape::Struct(&[
            key("cpu", Shape::Text(values::quantity), Shared),
            key("memory", Shape::Text(values::quantity), Shared),
        ]),
        Shared,
    ),
    key(
        "tolerations",
        Shape::List {
            item: &Shape::Struct(&[
                key("key", Shape::Text(values::label_key), Shared),
                key("operator", Shape::Enum(&["Exists", "Equal"]), Shared),
                key("value", Shape::Text(values::label_value), Shared),
                key(
                    "effect",
                    Shape::Enum(&["NoSchedule", "PreferNoSchedule", "NoExecute"]),
                    Shared,
                ),
                key("tolerationSeconds", Shape::Count, Shared),
            ]),
            partial: false,
        },
        Shared,
    ),
    key("provision", Shape::Enum(&["eager", "onDemand"]), Shared),
    key("versionSkew", Shape::Enum(&["warn", "refuse"]), Shared),
    key("updatePolicy", Shape::Text(values::update_policy), Shared),
    required(
        "artifacts",
        Shape::Struct(&[
            required("url", Shape::Text(values::oci_reference), Shared),
            key("pullSecret", Shape::Text(values::secret_name), Shared),
            key("digest", Shape::Text(values::digest), Shared),
            // Which keys the node trusts is the node's decision, like runtimePath.
            key(
                "verify",
                Shape::Struct(&[required("cosignKey", PATH, NodeLocal)]),
                NodeLocal,
            ),
        ]),
        Both,
    ),
    key(
        "runtime",
        Shape::Struct(&[
            // Both files: the operator may name only a kata runtime type, the node file any
            // (validate.rs).
            key("runtimeType", Shape::Text(values::runtime_type), Both),
            key("runtimePath", PATH, NodeLocal),
            key(
                "podAnnotations",
                Shape::List {
                    item: &Shape::Text(values::annotation_pattern),
                    partial: false,
                },
                Shared,
            ),
            key("privilegedWithoutHostDevices", Shape::Bool, Shared),
            key(
                "configFile",
                Shape::Text(values::path_inside_artifacts),
                Shared,
            ),
            // Replacing a stanza the node already has is the node's decision, like runtimePath.
            key("adopt", Shape::Bool, NodeLocal),
            // Running binaries from a registry as root is the node's decision.
            key(
                "fromArtifact",
                Shape::Struct(&[
                    required(
                        "shim",
                        Shape::Text(values::path_inside_artifacts),
                        NodeLocal,
                    ),
                    key("digest", Shape::Text(values::digest), NodeLocal),
                ]),
                NodeLocal,
            ),
        ]),
        Both,
    ),
]);

/// The whole file, operator's or node's; the role of the file decides which scopes it may use.
pub(super) const CONFIG: Shape = Shape::Struct(&[
    key("artifactsDir", PATH, NodeLocal),
    key("pullSecretsDir", PATH, NodeLocal),
    key("stateDir", PATH, NodeLocal),
    key(
        "registries",
        Shape::Struct(&[
            key(
                "allowed",
                Shape::List {
                    item: &Shape::Text(values::registry_prefix),
                    partial: false,
                },
                Shared,
            ),
            key(
                "insecure",
                Shape::List {
                    item: &Shape::Text(values::registry_host),
                    partial: false,
                },
                Shared,
            ),
            key("caFile", PATH, NodeLocal),
            key("hostsDir", PATH, NodeLocal),
        ]),
        Both,
    ),
    key(
        "limits",
        Shape::Struct(&[
            key(
                "maxArtifactBytes",
                Shape::Size(values::positive_size),
                Shared,
            ),
            key("keepVersions", Shape::Count, Shared),
        ]),
        Shared,
    ),
    key(
        "containerd",
        Shape::Struct(&[
            key("configPath", PATH, NodeLocal),
            key("mode", Shape::Enum(&["auto", "inline", "dropin"]), Shared),
            // containerd's socket is where the node's containerd listens (k3s has its own): the
            // node file may say it too, and its value wins.
            key("address", PATH, Both),
            key("restart", RESTART, Both),
        ]),
        Both,
    ),
    key(
        "nri",
        Shape::Struct(&[
            key("socket", PATH, Shared),
            key("pluginName", Shape::Text(values::plugin_name), Shared),
            key("pluginIdx", Shape::Text(values::plugin_index), Shared),
        ]),
        Shared,
    ),
    key(
        "gate",
        Shape::Struct(&[
            key("dir", PATH, NodeLocal),
            key("socket", PATH, NodeLocal),
            key("timeout", Shape::Text(values::gate_timeout), NodeLocal),
        ]),
        NodeLocal,
    ),
    key(
        "policies",
        Shape::Struct(&[
            key("dir", PATH, NodeLocal),
            key(
                "settings",
                Shape::Dict {
                    key: Some(values::policy_name),
                    value: &Shape::Json,
                },
                Shared,
            ),
            key(
                "failurePolicy",
                Shape::Dict {
                    key: Some(values::policy_name),
                    value: &Shape::Enum(&["deny", "ignore"]),
                },
                Shared,
            ),
            key(
                "limits",
                Shape::Struct(&[
                    key("deadline", POSITIVE_DURATION, Shared),
                    key("memory", Shape::Size(values::positive_size), Shared),
                ]),
                Shared,
            ),
        ]),
        Both,
    ),
    key(
        "annotations",
        Shape::Struct(&[key(
            "allowed",
            Shape::List {
                item: &Shape::Text(values::annotation_pattern),
                partial: false,
            },
            Shared,
        )]),
        Shared,
    ),
    key(
        "kataConfig",
        Shape::Struct(&[
            key(
                "allowedHostPaths",
                Shape::List {
                    item: &PATH,
                    partial: false,
                },
                NodeLocal,
            ),
            key(
                "allowedKeys",
                Shape::List {
                    item: &Shape::Text(values::kata_key),
                    partial: false,
                },
                NodeLocal,
            ),
            key(
                "allowedArguments",
                Shape::List {
                    item: &Shape::Text(values::non_empty),
                    partial: false,
                },
                NodeLocal,
            ),
        ]),
        NodeLocal,
    ),
    // One address per node (the DaemonSet shares the host's network): the node file may set it
    // too, and its value wins.
    key("listen", Shape::Text(values::listen_address), Both),
    key(
        "fleet",
        Shape::Struct(&[
            key("maxConcurrentRestarts", Shape::Count, Shared),
            key("maxConcurrentPulls", Shape::Count, Shared),
            key("pullJitter", Shape::Text(values::duration), Shared),
        ]),
        Shared,
    ),
    // Loading kernel modules runs a host program as root: the node's decision.
    key(
        "node",
        Shape::Struct(&[
            key(
                "kernelModules",
                Shape::List {
                    item: &Shape::Text(values::kernel_module),
                    partial: false,
                },
                NodeLocal,
            ),
            key("modprobe", Shape::Argv, NodeLocal),
            key("modprobeRoot", PATH, NodeLocal),
        ]),
        NodeLocal,
    ),
    key(
        "cdi",
        Shape::Struct(&[
            key("enabled", Shape::Bool, Shared),
            key("kind", Shape::Text(values::cdi_kind), Shared),
            key("pciVendor", Shape::Text(values::pci_vendor), Shared),
            key("dir", PATH, NodeLocal),
        ]),
        Both,
    ),
    key(
        "log",
        Shape::Struct(&[key("format", Shape::Enum(&["text", "json"]), Shared)]),
        Shared,
    ),
    key(
        "runtimeClasses",
        Shape::List {
            item: &RUNTIME_CLASS,
            partial: true,
        },
        Both,
    ),
]);
