//! The daemon's Prometheus metrics (OpenMetrics text on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullLabels {
    pub class: String,
    /// `pulled`, `up_to_date` or `failed`.
    pub result: &'static str,
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

type HistogramFamily = Family<ClassLabels, Histogram, fn() -> Histogram>;

fn pull_histogram() -> Histogram {
    // 0.25 s … ~17 min: a small artifact from a local mirror up to a GPU rootfs over a WAN.
    Histogram::new(exponential_buckets(0.25, 2.0, 13))
}

/// Every metric the daemon exports; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub pulls: Family<PullLabels, Counter>,
    pub pull_bytes: Family<ClassLabels, Counter>,
    pub pull_seconds: HistogramFamily,
    pub policy_decisions: Family<DecisionLabels, Counter>,
    pub containerd_restarts: Family<ResultLabels, Counter>,
    pub nri_events: Family<EventLabels, Counter>,
    pub nri_registrations: Counter,
    pub nri_disconnects: Counter,
    pub gate_requests: Family<GateLabels, Counter>,
    pub ensure_failures: Family<FailureLabels, Counter>,
    pub class_ready: Family<ClassLabels, Gauge>,
    pub gc_removed: Family<ClassLabels, Counter>,
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
        let pulls = Family::<PullLabels, Counter>::default();
        registry.register(
            "artifact_pulls",
            "Artifact ensures by class and result (pulled, up_to_date, failed)",
            pulls.clone(),
        );
        let pull_bytes = Family::<ClassLabels, Counter>::default();
        registry.register(
            "artifact_pull_bytes",
            "Bytes of artifacts downloaded",
            pull_bytes.clone(),
        );
        let pull_seconds: HistogramFamily = Family::new_with_constructor(pull_histogram);
        registry.register(
            "artifact_pull_duration_seconds",
            "Time to pull, verify and install a class's artifacts",
            pull_seconds.clone(),
        );
        let policy_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Policy chain decisions by class, hook and outcome",
            policy_decisions.clone(),
        );
        let containerd_restarts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "containerd_restarts",
            "containerd configuration changes by result (restarted, pending, unchanged, failed)",
            containerd_restarts.clone(),
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
        let gate_requests = Family::<GateLabels, Counter>::default();
        registry.register(
            "gate_requests",
            "Sandbox starts that waited at the shim gate, by class and result",
            gate_requests.clone(),
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
        let gc_removed = Family::<ClassLabels, Counter>::default();
        registry.register(
            "gc_removed",
            "Artifacts of classes no longer configured, removed by garbage collection",
            gc_removed.clone(),
        );
        let config_rejected = Gauge::default();
        registry.register(
            "config_rejected",
            "1 while the config files on disk are rejected and the daemon runs the config it started with",
            config_rejected.clone(),
        );
        Self {
            registry,
            pulls,
            pull_bytes,
            pull_seconds,
            policy_decisions,
            containerd_restarts,
            nri_events,
            nri_registrations,
            nri_disconnects,
            gate_requests,
            ensure_failures,
            class_ready,
            gc_removed,
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
            .get_or_create(&ClassLabels {
                class: class.to_owned(),
            })
            .set(i64::from(ready));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_families_with_labels() {
        let metrics = Metrics::new();
        metrics.decision("kata", "select-source", "deny");
        metrics.set_ready("kata", true);
        metrics.nri_registrations.inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                "kata_nri_manager_policy_decisions_total{class=\"kata\",hook=\"select-source\",outcome=\"deny\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("kata_nri_manager_class_ready{class=\"kata\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kata_nri_manager_nri_registrations_total 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
