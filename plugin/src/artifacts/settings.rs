//! What the artifact store needs from the config ([`StoreSettings`]), shared by the store and the
//! endpoint choice (`mirrors.rs`).

use std::path::PathBuf;

use super::registry::RetryPolicy;
use crate::config::{Config, Limits, Registries};

/// Layers fetched at once: enough to fill a link with a few large files, few enough that the
/// write buffers stay small.
const DEFAULT_PARALLEL_LAYERS: usize = 3;

/// What the store needs from the config, plus knobs tests turn.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub artifacts_dir: PathBuf,
    pub pull_secrets_dir: PathBuf,
    pub registries: Registries,
    pub limits: Limits,
    pub parallel_layers: usize,
    pub retry: RetryPolicy,
    /// `kataConfig.allowedHostPaths`: host files an installed kata configuration may name.
    pub allowed_host_paths: Vec<PathBuf>,
    /// `kataConfig.allowedKeys` and `.allowedArguments`: what the node accepts beyond kata's.
    pub allowed_keys: Vec<String>,
    pub allowed_arguments: Vec<String>,
    /// containerd's certs directories (`<dir>/<host>/hosts.toml`) for mirrors and per-host CAs,
    /// searched in order; empty: every pull goes to the reference's registry.
    pub hosts_dirs: Vec<PathBuf>,
}

impl StoreSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            artifacts_dir: config.artifacts_dir.clone(),
            pull_secrets_dir: config.pull_secrets_dir.clone(),
            registries: config.registries.clone(),
            limits: config.limits.clone(),
            parallel_layers: DEFAULT_PARALLEL_LAYERS,
            retry: RetryPolicy::default(),
            allowed_host_paths: config.kata_config.allowed_host_paths.clone(),
            allowed_keys: config.kata_config.allowed_keys.clone(),
            allowed_arguments: config.kata_config.allowed_arguments.clone(),
            // Ours overrides containerd's, as the node's own statement of what pulls use.
            hosts_dirs: match &config.registries.hosts_dir {
                Some(dir) => vec![dir.clone()],
                None => {
                    crate::containerd::certs::registry_config_dirs(&config.containerd.config_path)
                }
            },
        }
    }
}
