//! The daemon's Prometheus metrics (OpenMetrics text on `/metrics`).
//!
//! Names say what they count (OpenMetrics rules: counters end in `_total`, a unit is the name's
//! last word before it and has a `# UNIT` line); the table and the renames are in
//! `docs/daemon.md`, "Operations endpoint".

use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub class: String,
    /// `registry` (the reference resolved to the installed version) or `disk` (a gate, a pod's
    /// annotation or a repair took the intact installed version without asking the registry).
    pub checked: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub class: String,
    /// `select-source`, `mutate-runtime` or `admit`.
    pub hook: &'static str,
    /// `allow`, `skip` or `deny`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    pub class: String,
    /// `ready` or `failed`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub class: String,
    /// What went wrong: `pull_failed`, `install_refused`, `denied_by_policy`, … (the
    /// reconciler's `EnsureError::kind`).
    pub kind: &'static str,
}

/// How containerd's config sync ended, as `containerd_config_applies_total{result}` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigApplied {
    /// Nothing to write: containerd already had the stanzas.
    Unchanged,
    /// Written, and containerd restarted onto it.
    Restarted,
    /// Written; containerd still runs the old config (restart method `none`).
    Pending,
    Failed,
}

impl ConfigApplied {
    fn label(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Restarted => "restarted",
            Self::Pending => "pending",
            Self::Failed => "failed",
        }
    }
}

type ClassHistograms = Family<ClassLabels, Histogram, fn() -> Histogram>;
type GateHistograms = Family<GateLabels, Histogram, fn() -> Histogram>;
type BuildInfo = Info<Vec<(&'static str, &'static str)>>;

fn download_histogram() -> Histogram {
    // 0.25 s … ~17 min: a small artifact from a local mirror up to a GPU rootfs over a WAN.
    Histogram::new(exponential_buckets(0.25, 2.0, 13))
}

fn gate_histogram() -> Histogram {
    // 50 ms (a ready class: the daemon only checks) … ~7 min (a cold GPU rootfs pull, about
    // as long as a kubelet waits for a sandbox).
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// Every metric the daemon exports; cheap to share behind an `Arc`. Fields are public for the
/// call sites that only count; the methods keep related series in step.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub downloads: Family<ClassLabels, Counter>,
    pub up_to_date_checks: Family<CheckLabels, Counter>,
    pub source_failures: Family<ClassLabels, Counter>,
    pub download_bytes: Family<ClassLabels, Counter>,
    pub download_seconds: ClassHistograms,
    pub last_successful_pull: Family<ClassLabels, Gauge>,
    pub policy_decisions: Family<DecisionLabels, Counter>,
    pub config_applies: Family<ResultLabels, Counter>,
    pub containerd_restarts: Counter,
    pub restart_pending: Gauge,
    pub nri_events: Family<EventLabels, Counter>,
    pub nri_registrations: Counter,
    pub nri_disconnects: Counter,
    pub nri_connected: Gauge,
    pub gate_requests: Family<GateLabels, Counter>,
    pub gate_wait_seconds: GateHistograms,
    pub ensure_failures: Family<FailureLabels, Counter>,
    pub class_ready: Family<ClassLabels, Gauge>,
    pub gc_removed_classes: Family<ClassLabels, Counter>,
    pub gc_removed_versions: Family<ClassLabels, Counter>,
    /// 1 while the config files on disk are rejected and the daemon runs the config it started
    /// with.
    pub config_rejected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kata_nri_manager");
        registry.register(
            "build",
            "The running kata-nri-manager's version",
            BuildInfo::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let downloads = Family::<ClassLabels, Counter>::default();
        registry.register(
            "artifact_downloads",
            "Artifact versions downloaded, verified and installed",
            downloads.clone(),
        );
        let up_to_date_checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "artifact_up_to_date_checks",
            "Ensures that found the installed version current and downloaded nothing, by what was asked (registry, disk)",
            up_to_date_checks.clone(),
        );
        let source_failures = Family::<ClassLabels, Counter>::default();
        registry.register(
            "artifact_source_failures",
            "Sources of a class whose download or up-to-date check failed (one per source tried)",
            source_failures.clone(),
        );
        let download_bytes = Family::<ClassLabels, Counter>::default();
        registry.register_with_unit(
            "artifact_download",
            "Bytes of artifacts downloaded",
            Unit::Bytes,
            download_bytes.clone(),
        );
        let download_seconds: ClassHistograms = Family::new_with_constructor(download_histogram);
        registry.register_with_unit(
            "artifact_download_duration",
            "Time to download, verify and install a new version of a class's artifacts",
            Unit::Seconds,
            download_seconds.clone(),
        );
        let last_successful_pull = Family::<ClassLabels, Gauge>::default();
        registry.register_with_unit(
            "artifact_last_successful_pull_timestamp",
            "Unix time of the class's last download or up-to-date check against its registry that succeeded",
            Unit::Seconds,
            last_successful_pull.clone(),
        );
        let policy_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Policy chain decisions by class, hook and outcome",
            policy_decisions.clone(),
        );
        let config_applies = Family::<ResultLabels, Counter>::default();
        registry.register(
            "containerd_config_applies",
            "Syncs of the served stanzas into containerd's config, by result (unchanged, restarted, pending, failed)",
            config_applies.clone(),
        );
        let containerd_restarts = Counter::default();
        registry.register(
            "containerd_restarts",
            "containerd restarts onto a new config that containerd came back from serving it",
            containerd_restarts.clone(),
        );
        let restart_pending = Gauge::default();
        registry.register(
            "containerd_restart_pending",
            "1 while containerd's config is written but containerd still runs the old one (restart method none)",
            restart_pending.clone(),
        );
        let nri_events = Family::<EventLabels, Counter>::default();
        registry.register("nri_events", "NRI pod events received", nri_events.clone());
        let nri_registrations = Counter::default();
        registry.register(
            "nri_registrations",
            "Registrations with containerd's NRI (the first and every reconnect)",
            nri_registrations.clone(),
        );
        let nri_disconnects = Counter::default();
        registry.register(
            "nri_disconnects",
            "NRI connections lost",
            nri_disconnects.clone(),
        );
        let nri_connected = Gauge::default();
        registry.register(
            "nri_connected",
            "1 while the daemon is registered with containerd's NRI",
            nri_connected.clone(),
        );
        let gate_requests = Family::<GateLabels, Counter>::default();
        registry.register(
            "gate_requests",
            "Sandbox starts that waited at the shim gate, by class and result",
            gate_requests.clone(),
        );
        let gate_wait_seconds: GateHistograms = Family::new_with_constructor(gate_histogram);
        registry.register_with_unit(
            "gate_wait",
            "Time a sandbox start waited at the shim gate for its class, by class and result",
            Unit::Seconds,
            gate_wait_seconds.clone(),
        );
        let ensure_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "ensure_failures",
            "Requests to make a class ready (a gate, a pod annotation, startup, an update check) that failed, by class and kind",
            ensure_failures.clone(),
        );
        let class_ready = Family::<ClassLabels, Gauge>::default();
        registry.register(
            "class_ready",
            "1 when the class's artifacts are installed and verified",
            class_ready.clone(),
        );
        let gc_removed_classes = Family::<ClassLabels, Counter>::default();
        registry.register(
            "gc_removed_classes",
            "Classes no longer configured whose artifacts garbage collection removed",
            gc_removed_classes.clone(),
        );
        let gc_removed_versions = Family::<ClassLabels, Counter>::default();
        registry.register(
            "gc_removed_versions",
            "Installed versions garbage collection removed: those beyond limits.keepVersions no sandbox runs on, and every version of a class no longer configured",
            gc_removed_versions.clone(),
        );
        let config_rejected = Gauge::default();
        registry.register(
            "config_rejected",
            "1 while the config files on disk are rejected and the daemon runs the config it started with",
            config_rejected.clone(),
        );
        Self {
            registry,
            downloads,
            up_to_date_checks,
            source_failures,
            download_bytes,
            download_seconds,
            last_successful_pull,
            policy_decisions,
            config_applies,
            containerd_restarts,
            restart_pending,
            nri_events,
            nri_registrations,
            nri_disconnects,
            nri_connected,
            gate_requests,
            gate_wait_seconds,
            ensure_failures,
            class_ready,
            gc_removed_classes,
            gc_removed_versions,
            config_rejected,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn decision(&self, class: &str, hook: &'static str, outcome: &'static str) {
        self.policy_decisions
            .get_or_create(&DecisionLabels {
                class: class.to_owned(),
                hook,
                outcome,
            })
            .inc();
    }

    pub fn set_ready(&self, class: &str, ready: bool) {
        self.class_ready
            .get_or_create(&class_labels(class))
            .set(i64::from(ready));
    }

    /// A new version of `class` downloaded and installed: its registry answered, too.
    pub fn downloaded(&self, class: &str, bytes: u64, took: Duration) {
        let labels = class_labels(class);
        self.downloads.get_or_create(&labels).inc();
        self.download_bytes.get_or_create(&labels).inc_by(bytes);
        self.download_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.pull_succeeded(&labels);
    }

    /// The installed version of `class` was current; `registry`: the registry said so (else
    /// the intact files on disk did, and no registry was asked).
    pub fn up_to_date(&self, class: &str, registry: bool) {
        let labels = class_labels(class);
        self.up_to_date_checks
            .get_or_create(&CheckLabels {
                class: class.to_owned(),
                checked: if registry { "registry" } else { "disk" },
            })
            .inc();
        if registry {
            self.pull_succeeded(&labels);
        }
    }

    pub fn source_failed(&self, class: &str) {
        self.source_failures
            .get_or_create(&class_labels(class))
            .inc();
    }

    fn pull_succeeded(&self, labels: &ClassLabels) {
        // A clock before 1970 is a broken node; 0 then reads as "never", which is close enough.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            });
        self.last_successful_pull.get_or_create(labels).set(now);
    }

    /// One containerd config sync: counted by result, a restart as a restart, and the
    /// restart-pending gauge following the status board (a failure leaves it as it was, as the
    /// board does).
    pub fn config_applied(&self, applied: ConfigApplied) {
        self.config_applies
            .get_or_create(&ResultLabels {
                result: applied.label(),
            })
            .inc();
        match applied {
            ConfigApplied::Restarted => {
                self.containerd_restarts.inc();
                self.restart_pending.set(0);
            }
            ConfigApplied::Unchanged => {
                self.restart_pending.set(0);
            }
            ConfigApplied::Pending => {
                self.restart_pending.set(1);
            }
            ConfigApplied::Failed => {}
        }
    }

    /// A gate's answer for `class`, after `waited`.
    pub fn gate_answered(&self, class: &str, ready: bool, waited: Duration) {
        let labels = GateLabels {
            class: class.to_owned(),
            result: if ready { "ready" } else { "failed" },
        };
        self.gate_requests.get_or_create(&labels).inc();
        self.gate_wait_seconds
            .get_or_create(&labels)
            .observe(waited.as_secs_f64());
    }

    pub fn nri_connection(&self, connected: bool) {
        if connected {
            self.nri_registrations.inc();
        } else {
            self.nri_disconnects.inc();
        }
        self.nri_connected.set(i64::from(connected));
    }

    /// Garbage collection removed `versions` versions of `class`; `whole_class`: the class
    /// left the config and all of it went.
    pub fn gc_removed(&self, class: &str, versions: usize, whole_class: bool) {
        let labels = class_labels(class);
        if whole_class {
            self.gc_removed_classes.get_or_create(&labels).inc();
        }
        self.gc_removed_versions
            .get_or_create(&labels)
            .inc_by(u64::try_from(versions).unwrap_or(u64::MAX));
    }
}

fn class_labels(class: &str) -> ClassLabels {
    ClassLabels {
        class: class.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every family with a sample, so the exposition shows them all.
    fn populated() -> Metrics {
        let metrics = Metrics::new();
        metrics.downloaded("kata", 2048, Duration::from_millis(1500));
        metrics.up_to_date("kata", true);
        metrics.up_to_date("kata", false);
        metrics.source_failed("kata");
        metrics.decision("kata", "select-source", "deny");
        metrics.config_applied(ConfigApplied::Restarted);
        metrics.config_applied(ConfigApplied::Pending);
        metrics
            .nri_events
            .get_or_create(&EventLabels { event: "run" })
            .inc();
        metrics.nri_connection(true);
        metrics.gate_answered("kata", true, Duration::from_millis(70));
        metrics
            .ensure_failures
            .get_or_create(&FailureLabels {
                class: "kata".into(),
                kind: "pull_failed",
            })
            .inc();
        metrics.set_ready("kata", true);
        metrics.gc_removed("old", 2, true);
        metrics.config_rejected.set(0);
        metrics
    }

    #[test]
    fn encodes_families_with_labels() {
        let text = populated().encode();
        for line in [
            "kata_nri_manager_policy_decisions_total{class=\"kata\",hook=\"select-source\",outcome=\"deny\"} 1",
            "kata_nri_manager_class_ready{class=\"kata\"} 1",
            "kata_nri_manager_nri_registrations_total 1",
            "kata_nri_manager_nri_connected 1",
            &format!(
                "kata_nri_manager_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
            "kata_nri_manager_artifact_downloads_total{class=\"kata\"} 1",
            "kata_nri_manager_artifact_download_bytes_total{class=\"kata\"} 2048",
            "kata_nri_manager_artifact_download_duration_seconds_sum{class=\"kata\"} 1.5",
            "kata_nri_manager_artifact_up_to_date_checks_total{class=\"kata\",checked=\"registry\"} 1",
            "kata_nri_manager_artifact_up_to_date_checks_total{class=\"kata\",checked=\"disk\"} 1",
            "kata_nri_manager_artifact_source_failures_total{class=\"kata\"} 1",
            "kata_nri_manager_containerd_config_applies_total{result=\"restarted\"} 1",
            "kata_nri_manager_containerd_config_applies_total{result=\"pending\"} 1",
            "kata_nri_manager_containerd_restarts_total 1",
            "kata_nri_manager_containerd_restart_pending 1",
            "kata_nri_manager_gate_requests_total{class=\"kata\",result=\"ready\"} 1",
            "kata_nri_manager_gate_wait_seconds_bucket{le=\"0.1\",class=\"kata\",result=\"ready\"} 1",
            "kata_nri_manager_gc_removed_classes_total{class=\"old\"} 1",
            "kata_nri_manager_gc_removed_versions_total{class=\"old\"} 2",
            "# UNIT kata_nri_manager_gate_wait_seconds seconds",
            "# UNIT kata_nri_manager_artifact_download_bytes bytes",
            "# UNIT kata_nri_manager_artifact_last_successful_pull_timestamp_seconds seconds",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        let pulled_at: i64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "kata_nri_manager_artifact_last_successful_pull_timestamp_seconds{class=\"kata\"} ",
                )
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no pull time in\n{text}"));
        assert!(pulled_at > 1_700_000_000, "{pulled_at}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn restart_pending_follows_the_config_syncs() {
        let metrics = Metrics::new();
        metrics.config_applied(ConfigApplied::Pending);
        assert_eq!(metrics.restart_pending.get(), 1);
        // A failed sync changes nothing on disk: the written config still waits.
        metrics.config_applied(ConfigApplied::Failed);
        assert_eq!(metrics.restart_pending.get(), 1);
        metrics.config_applied(ConfigApplied::Restarted);
        assert_eq!(metrics.restart_pending.get(), 0);
        assert_eq!(metrics.containerd_restarts.get(), 1);
        metrics.nri_connection(true);
        metrics.nri_connection(false);
        assert_eq!(metrics.nri_connected.get(), 0);
        assert_eq!(metrics.nri_disconnects.get(), 1);
    }

    /// The exposition as a scraper reads it: every family has HELP and TYPE (and UNIT when
    /// its name ends in a unit), samples belong to the family above them with the suffixes
    /// its type allows, and nothing but a counter's samples ends in `_total`.
    #[test]
    fn the_exposition_is_valid_openmetrics() {
        let text = populated().encode();
        let mut families: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
        let mut help_of: Option<String> = None;
        let mut current: Option<(String, String)> = None;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
        for line in &lines[..lines.len() - 1] {
            let words: Vec<&str> = line.splitn(4, ' ').collect();
            match words.as_slice() {
                ["#", "HELP", name, help] => {
                    assert!(!help.is_empty(), "{line}");
                    assert!(help_of.is_none(), "HELP without TYPE before {line}");
                    help_of = Some((*name).to_owned());
                }
                ["#", "TYPE", name, kind] => {
                    assert_eq!(
                        help_of.take().as_deref(),
                        Some(*name),
                        "TYPE without HELP: {line}"
                    );
                    assert!(valid_name(name), "{line}");
                    assert!(!families.contains_key(*name), "family {name} appears twice");
                    if *kind == "counter" {
                        assert!(!name.ends_with("_total"), "{line}");
                    }
                    families.insert((*name).to_owned(), ((*kind).to_owned(), None));
                    current = Some(((*name).to_owned(), (*kind).to_owned()));
                }
                ["#", "UNIT", name, unit] => {
                    let (family, _) = current.as_ref().unwrap_or_else(|| panic!("{line}"));
                    assert_eq!(family, name, "UNIT of another family: {line}");
                    assert!(name.ends_with(&format!("_{unit}")), "{line}");
                    if let Some(entry) = families.get_mut(*name) {
                        entry.1 = Some((*unit).to_owned());
                    }
                }
                _ => {
                    assert!(!line.starts_with('#'), "unknown comment {line}");
                    let (family, kind) = current.as_ref().unwrap_or_else(|| panic!("{line}"));
                    let sample = line
                        .split(['{', ' '])
                        .next()
                        .unwrap_or_else(|| panic!("{line}"));
                    let suffixes: &[&str] = match kind.as_str() {
                        "counter" => &["_total", "_created"],
                        "gauge" => &[""],
                        "histogram" => &["_bucket", "_sum", "_count", "_created"],
                        "info" => &["_info"],
                        other => panic!("unexpected type {other}"),
                    };
                    assert!(
                        suffixes.iter().any(|s| sample == format!("{family}{s}")),
                        "sample {sample} in family {family} ({kind})"
                    );
                    let value = line.rsplit(' ').next().unwrap_or_default();
                    assert!(value.parse::<f64>().is_ok(), "{line}");
                }
            }
        }
        for (name, (kind, unit)) in &families {
            for unit_word in ["seconds", "bytes"] {
                if name.ends_with(&format!("_{unit_word}")) {
                    assert_eq!(unit.as_deref(), Some(unit_word), "{name} has no UNIT");
                }
            }
            if kind == "gauge" {
                assert!(!name.ends_with("_total"), "gauge {name}");
            }
        }
        assert!(families.len() >= 22, "{families:?}");
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
}
