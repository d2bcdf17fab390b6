//! The operator config and the node config: types, defaults, loading, and every check an
//! operator's file must pass before anything acts on it.
//!
//! Loading reports every problem of both files at once, each with its path in the file
//! (`runtimeClasses[2].artifacts.url: …`). Keys that name host files or programs are node-local:
//! taken only from a root-owned file (the node config, or the operator file when no node config
//! is given), never from a ConfigMap. `docs/configuration.md` lists every key and error.

mod class;
mod decode;
mod duration;
mod error;
mod load;
mod model;
mod names;
mod node;
mod pattern;
mod quantity;
mod reference;
mod sanity;
mod schema;
mod suggest;
mod trust;
mod validate;
mod values;
mod walk;

#[cfg(test)]
mod tests;

pub use class::{
    Artifacts, DEFAULT_KATA_CONFIG, FromArtifact, PodOverhead, Provision, RuntimeClass,
    RuntimeSettings, Toleration, UpdatePolicy, UpdatePolicyError, Verify, VersionSkew,
    is_gpu_class,
};
pub use duration::{Duration, DurationError};
pub use error::{ConfigError, Problem, Result, Warning};
pub use load::{FileKind, LoadedConfig, Loader, load, load_operator, parse_str};
pub use model::{
    Annotations, Cdi, CommandRestart, Config, Containerd, ContainerdMode,
    DEFAULT_ALLOWED_HOST_PATHS, DEFAULT_KERNEL_MODULES, FailurePolicy, Fleet, Gate, KataConfig,
    Limits, Log, LogFormat, NodeSetup, Nri, Policies, PolicyLimits, Registries, Restart,
    SystemdRestart,
};
pub use names::{check_plugin_index, check_plugin_name};
pub use pattern::{AnnotationPattern, CONFIG_PATH_ANNOTATION};
pub use quantity::{ByteSize, ByteSizeError};
pub use reference::{DOCKER_HUB, Digest, DigestError, OciReference, ReferenceError, is_under};
