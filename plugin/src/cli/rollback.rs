//! `kata-nri-manager rollback --config FILE [--node-config FILE] CLASS`: switches a runtime
//! class back to its previous installed version, without network and without touching
//! containerd (its stanza names the class's link, which is what changes).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::artifacts::{ArtifactError, ArtifactStore, StoreSettings};

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Operator config (YAML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Node-local config (root-owned YAML) holding the keys the operator config may not set.
    #[arg(long, value_name = "FILE")]
    pub node_config: Option<PathBuf>,
    /// The runtime class to switch back.
    #[arg(value_name = "CLASS")]
    pub class: String,
}

pub fn run(args: RollbackArgs) -> Result<()> {
    let loaded = crate::config::load(&args.config, args.node_config.as_deref())
        .with_context(|| format!("loading config {}", args.config.display()))?;
    let config = loaded.config;
    let class = config
        .runtime_classes
        .iter()
        .find(|c| c.name == args.class)
        .ok_or_else(|| ArtifactError::UnknownClass {
            class: args.class.clone(),
            known: config
                .runtime_classes
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let store = ArtifactStore::new(StoreSettings::from_config(&config));
    let done = store.rollback(class)?;
    println!(
        "{}: rolled back from {} to {}; new sandboxes start on {}, running ones keep their version; run rollback again to undo",
        done.class, done.from, done.to, done.to
    );
    Ok(())
}
