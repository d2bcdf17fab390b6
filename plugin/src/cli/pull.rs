//! `kata-nri-manager pull --config FILE [--node-config FILE] [CLASS…] [--output json]`: makes
//! runtime classes' artifacts current, as the daemon would, with a progress bar per layer on a
//! terminal, plain log lines otherwise, or one JSON document for scripts.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::Output;
use super::logging::{self, LogFormat};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::artifacts::{ArtifactError, ArtifactStore, Installed, PullObserver, StoreSettings};
use crate::config::RuntimeClass;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Operator config (YAML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Node-local config (root-owned YAML) holding the keys the operator config may not set.
    #[arg(long, value_name = "FILE")]
    pub node_config: Option<PathBuf>,
    /// Runtime classes to pull [default: every class of the config].
    #[arg(value_name = "CLASS")]
    pub classes: Vec<String>,
    /// `text` for people, `json` for scripts (one document on stdout).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Log format (stderr) [default: the config's log.format, else text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Pulls the chosen classes at once; fails (after reporting every class) if any failed.
pub async fn run(args: PullArgs) -> Result<()> {
    let bars = args.output == Output::Text && std::io::stderr().is_terminal();
    // Logging waits for the config, whose log.format it follows: a config that does not load
    // is this command's error, printed on its own.
    let loaded = crate::config::load(&args.config, args.node_config.as_deref())
        .with_context(|| format!("loading config {}", args.config.display()))?;
    let format = args
        .log_format
        .unwrap_or_else(|| loaded.config.log.format.into());
    logging::init_stderr(format, if bars { "warn" } else { "info" });
    for warning in &loaded.warnings {
        tracing::warn!(%warning, "config");
    }
    let config = loaded.config;
    let classes = select(&config.runtime_classes, &args.classes)?;

    let observer: Arc<dyn PullObserver> = if bars {
        Arc::new(Bars::default())
    } else {
        Arc::new(LogLines)
    };
    let store = ArtifactStore::with_observer(StoreSettings::from_config(&config), observer);
    // `pull` is what an eager ensure does: in a cluster it waits for a pull slot as the daemon
    // would (a node's image running `pull` at boot is one of the fleet too).
    #[cfg(feature = "kube")]
    if let Some(slots) = crate::reconcile::lease::pull_slots(&config.fleet) {
        store.use_pull_slots(slots);
    }
    sweep_interrupted(&store);
    let results = futures::future::join_all(classes.iter().map(|class| store.ensure(class))).await;

    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (class, result) in classes.iter().zip(results) {
        match result {
            Ok(installed) => {
                if args.output == Output::Text {
                    println!("{}", summary(&installed));
                }
                report.push(serde_json::to_value(&installed)?);
            }
            Err(error) => {
                report.push(serde_json::json!({"class": class.name, "error": error.to_string()}));
                failures.push(error);
            }
        }
    }
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    collect_retired(&store, &config.containerd.address).await;
    match failures.len() {
        0 => Ok(()),
        1 => Err(anyhow::Error::new(failures.remove(0))),
        n => {
            for error in &failures[..n - 1] {
                eprintln!("error: {error}");
            }
            Err(anyhow::Error::new(failures.remove(n - 1)))
                .context(format!("{n} of {} runtime classes failed", classes.len()))
        }
    }
}

/// Removes what an interrupted pull (this command or the daemon killed mid-pull) left: its
/// staging directory and the blobs no version records. Both skip whatever a pull running now
/// (the daemon's) still uses.
fn sweep_interrupted(store: &ArtifactStore) {
    match store.sweep_staging() {
        Ok(removed) => {
            for dir in removed {
                tracing::info!(dir = %dir.display(), "removed what an interrupted pull left behind");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot sweep interrupted pulls' staging directories"),
    }
    if let Err(e) = store.collect_blobs() {
        tracing::warn!(error = %e, "cannot collect unreferenced blobs");
    }
}

/// Removes versions beyond `limits.keepVersions` that no sandbox can be running on, when
/// containerd's CRI says which sandboxes exist; otherwise they wait for the daemon (or a later
/// pull) to know.
async fn collect_retired(store: &ArtifactStore, cri_address: &std::path::Path) {
    let classes = store.classes_with_retired_versions();
    if classes.is_empty() {
        return;
    }
    let pods = match crate::containerd::cri::list_sandboxes(cri_address).await {
        Ok(pods) => pods,
        Err(e) => {
            tracing::info!(error = %e, "older versions kept: which sandboxes run on them is unknown without containerd's CRI");
            return;
        }
    };
    for class in classes {
        let ages = crate::reconcile::gc::sandbox_ages(&pods, &class);
        match store.collect_retired(&class, &ages) {
            Ok(versions) if !versions.is_empty() => {
                tracing::info!(runtime_class = %class, ?versions, "older versions removed")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(runtime_class = %class, error = %e, "older versions not removed")
            }
        }
    }
}

/// The classes named on the command line, in that order, or all of them.
fn select<'a>(all: &'a [RuntimeClass], names: &[String]) -> Result<Vec<&'a RuntimeClass>> {
    if names.is_empty() {
        if all.is_empty() {
            bail!("the config has no runtimeClasses");
        }
        return Ok(all.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            all.iter().find(|c| &c.name == name).ok_or_else(|| {
                anyhow::Error::new(ArtifactError::UnknownClass {
                    class: name.clone(),
                    known: all
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            })
        })
        .collect()
}

fn summary(installed: &Installed) -> String {
    let verb = match (&installed.held_back, installed.pulled) {
        (Some(_), _) => "kept (rolled back)",
        (None, true) => "installed",
        (None, false) => "up to date",
    };
    format!(
        "{}: {verb} {} ({} files, {} bytes in {:.1}s) at {}",
        installed.class,
        installed.digest,
        installed.files.len(),
        installed.bytes,
        installed.duration.as_secs_f64(),
        installed.link.display()
    )
}

/// Progress bars on a terminal, one per layer.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<(String, String), ProgressBar>>,
}

impl Default for Bars {
    fn default() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Bars {
    fn bar(&self, class: &str, layer: &str) -> Option<ProgressBar> {
        self.bars
            .lock()
            .ok()?
            .get(&(class.to_owned(), layer.to_owned()))
            .cloned()
    }
}

impl PullObserver for Bars {
    fn layer_started(&self, class: &str, layer: &str, size: u64, resumed_at: u64) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let bar = bars
            .entry((class.to_owned(), layer.to_owned()))
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(size));
                let style = ProgressStyle::with_template(
                    "{prefix:30!} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(format!("{class} {layer}"));
                bar
            });
        bar.set_position(resumed_at);
    }

    fn layer_progress(&self, class: &str, layer: &str, bytes: u64) {
        if let Some(bar) = self.bar(class, layer) {
            bar.inc(bytes);
        }
    }

    fn layer_retry(&self, class: &str, layer: &str, attempt: u32, why: &str) {
        if let Some(bar) = self.bar(class, layer) {
            bar.set_message(format!("retry {attempt}: {why}"));
        }
    }

    fn layer_done(&self, class: &str, layer: &str) {
        if let Some(bar) = self.bar(class, layer) {
            bar.finish_with_message("verified");
        }
    }
}

/// Plain log lines (not a terminal: CI logs, journald).
struct LogLines;

impl PullObserver for LogLines {
    fn layer_started(&self, class: &str, layer: &str, size: u64, resumed_at: u64) {
        tracing::info!(
            runtime_class = class,
            layer,
            size,
            resumed_at,
            "layer transfer started"
        );
    }

    fn layer_done(&self, class: &str, layer: &str) {
        tracing::info!(runtime_class = class, layer, "layer verified");
    }
}
