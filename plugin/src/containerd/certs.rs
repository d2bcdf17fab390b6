//! Where containerd keeps its registry host configuration (`certs.d`): the CRI image service's
//! `registry.config_path`, so that artifact pulls use the mirrors and CAs image pulls use.

use std::path::{Path, PathBuf};

/// `registry.config_path` under the CRI images plugin of config version 3, then of version 2.
const CONFIG_PATH_KEYS: [[&str; 4]; 2] = [
    [
        "plugins",
        "io.containerd.cri.v1.images",
        "registry",
        "config_path",
    ],
    [
        "plugins",
        "io.containerd.grpc.v1.cri",
        "registry",
        "config_path",
    ],
];

/// The certs directories containerd's main config names (`config_path` may be a `:`-separated
/// list), in order; empty when the file is absent, unreadable or names none. Files `imports`
/// pulls in are not read.
pub fn registry_config_dirs(config_path: &Path) -> Vec<PathBuf> {
    let text = match std::fs::read_to_string(config_path) {
        Ok(text) => text,
        Err(e) => {
            // Not fatal: pulls then go to the registry itself, as without a certs dir.
            tracing::debug!(path = %config_path.display(), error = %e, "containerd config not read for registry.config_path");
            return Vec::new();
        }
    };
    match text.parse::<toml_edit::DocumentMut>() {
        Ok(doc) => config_dirs(doc.as_table()),
        Err(e) => {
            tracing::warn!(path = %config_path.display(), error = %e.message().trim(), "containerd config is not valid TOML; its registry.config_path is not used");
            Vec::new()
        }
    }
}

fn config_dirs(root: &toml_edit::Table) -> Vec<PathBuf> {
    for keys in CONFIG_PATH_KEYS {
        let mut item = Some(root as &dyn toml_edit::TableLike);
        let mut value = None;
        for (i, key) in keys.iter().enumerate() {
            let Some(table) = item else { break };
            let next = table.get(key);
            if i + 1 == keys.len() {
                value = next.and_then(|v| v.as_str());
            } else {
                item = next.and_then(|v| v.as_table_like());
            }
        }
        if let Some(value) = value {
            return std::env::split_paths(value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(text: &str) -> Vec<PathBuf> {
        let doc: toml_edit::DocumentMut = text.parse().expect("toml");
        config_dirs(doc.as_table())
    }

    #[test]
    fn reads_config_path_of_both_versions() {
        assert_eq!(
            dirs(
                "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n"
            ),
            [
                PathBuf::from("/etc/containerd/certs.d"),
                PathBuf::from("/etc/docker/certs.d")
            ]
        );
        assert_eq!(
            dirs(
                "version = 2\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"/etc/containerd/certs.d\"\n"
            ),
            [PathBuf::from("/etc/containerd/certs.d")]
        );
        assert!(dirs("version = 3\n").is_empty());
        assert!(
            dirs("[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"\"\n")
                .is_empty()
        );
    }

    #[test]
    fn an_absent_file_names_no_dirs() {
        assert!(registry_config_dirs(Path::new("/nonexistent/config.toml")).is_empty());
    }
}
