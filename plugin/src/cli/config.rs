//! `kata-nri-manager config check`.

use std::path::Path;

use anyhow::Result;

/// Loads and validates the config as the daemon would, printing warnings and a summary; every
/// problem is reported at once by the returned error.
///
/// `operator`: the file is a ConfigMap's config, checked without a node file and without the
/// ownership check (a non-root user cannot own a file as root): node-local keys are errors.
/// Chosen by itself when not root and without a node file.
pub fn check(config: &Path, node_config: Option<&Path>, operator: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let operator = operator || (node_config.is_none() && !root);
    let loaded = if operator {
        if !root {
            eprintln!(
                "note: checking {} as an operator config (a ConfigMap's): node-local keys are errors; as root with --node-config, the pair is checked as the daemon loads it",
                config.display()
            );
        }
        crate::config::load_operator(config)?
    } else {
        crate::config::load(config, node_config)?
    };
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let classes: Vec<&str> = loaded
        .config
        .runtime_classes
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    println!(
        "{}: ok ({} runtime class{}{})",
        config.display(),
        classes.len(),
        if classes.len() == 1 { "" } else { "es" },
        if classes.is_empty() {
            String::new()
        } else {
            format!(": {}", classes.join(", "))
        }
    );
    for line in notes(&loaded.config) {
        println!("{line}");
    }
    Ok(())
}

/// What the config leaves to the artifacts: not problems, but worth knowing before a pull.
fn notes(config: &crate::config::Config) -> Vec<String> {
    config
        .runtime_classes
        .iter()
        .filter(|class| class.runtime.config_file.is_none())
        .map(|class| {
            format!(
                "note: {}: runtime.configFile is unset: its ConfigPath will name {}, the artifact's single top-level *.toml (an artifact with several is refused: then set runtime.configFile)",
                class.name,
                crate::artifacts::kata_config_path(&config.artifacts_dir, class, &[]).display()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileKind, parse_str};

    #[test]
    fn classes_without_config_file_get_a_note_naming_their_config_path() {
        let config = parse_str(
            "artifactsDir: /opt/knm/artifacts\n\
             runtimeClasses:\n\
             - {name: kata-gpu, artifacts: {url: nvcr.io/nvidia/kata:1, pullSecret: ngc}}\n\
             - {name: kata-qemu, artifacts: {url: nvcr.io/kata/qemu:1}, runtime: {configFile: configuration-qemu.toml}}\n",
            Path::new("node.yaml"),
            FileKind::Trusted,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            notes(&config),
            [
                "note: kata-gpu: runtime.configFile is unset: its ConfigPath will name /opt/knm/artifacts/kata-gpu/kata-nri-manager.toml, the artifact's single top-level *.toml (an artifact with several is refused: then set runtime.configFile)"
            ]
        );
    }
}
