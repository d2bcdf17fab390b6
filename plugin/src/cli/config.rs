//! `kata-nri-manager config check`.

use std::path::Path;

use anyhow::Result;

/// Loads and validates the config as the daemon would, printing warnings and a summary; every
/// problem is reported at once by the returned error.
pub fn check(config: &Path, node_config: Option<&Path>) -> Result<()> {
    let loaded = crate::config::load(config, node_config)?;
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
    Ok(())
}
