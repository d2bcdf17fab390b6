//! Why an ensure did not make a class ready. `Display` is the text the gate prints, the status
//! shows and the logs carry; [`EnsureError::kind`] is a short stable label to branch on.

use crate::gate::Refusal;
use crate::policy::Denial;

/// An ensure that did not make its class ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnsureError {
    /// The class is not in this node's config.
    #[error("runtime class {class:?} is not in kata-nri-manager's config on this node")]
    NotConfigured { class: String },
    /// The plan does not serve the class (a policy said so, or its stanza is unusable).
    #[error("runtime class {class} is not served on this node: {reason}")]
    NotServed { class: String, reason: String },
    /// `admit` refused the asking pod.
    #[error("pod {pod}: {denial}")]
    PodDenied { pod: String, denial: Denial },
    /// `select-source` skipped the class.
    #[error("skipped by policy {policy}: {reason}")]
    SkippedByPolicy { policy: String, reason: String },
    /// `select-source` denied the class.
    #[error("{0}")]
    DeniedByPolicy(Denial),
    /// `select-source` allowed the class but named no source.
    #[error("the policies returned no source")]
    NoSource,
    /// Every source failed, at least one before its artifact was whole on the node (the
    /// registry, the network, the node's pull settings, the disk); one per source, in the order
    /// tried.
    #[error("{}", pull_failures(.failures))]
    PullFailed { failures: Vec<SourceFailure> },
    /// Every source's artifact reached the node intact and was refused at install: its content
    /// is not something kata-nri-manager installs (an unsafe tar entry, an unusable kata
    /// configuration, a version the node's kata cannot run, …). Another pull of the same
    /// artifact fails the same way.
    #[error("{}", pull_failures(.failures))]
    InstallRefused { failures: Vec<SourceFailure> },
    /// The ensure's task ended before it answered (it panicked or was aborted).
    #[error("ensuring {class} did not finish: {reason}")]
    Interrupted { class: String, reason: String },
}

/// One source's failure: its error chain, and whether the artifact was refused at install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFailure {
    pub message: String,
    pub refused: bool,
}

impl SourceFailure {
    pub fn of(error: &crate::artifacts::ArtifactError) -> Self {
        Self {
            message: crate::errors::chain(error),
            refused: error.refused_at_install(),
        }
    }
}

fn pull_failures(failures: &[SourceFailure]) -> String {
    match failures {
        [one] => one.message.clone(),
        all => {
            let messages: Vec<&str> = all.iter().map(|f| f.message.as_str()).collect();
            format!("all {} sources failed: {}", all.len(), messages.join("; "))
        }
    }
}

impl EnsureError {
    /// The error for sources that all failed: `InstallRefused` when every one was refused at
    /// install, else `PullFailed`; `NoSource` when there were none.
    pub fn from_sources(failures: Vec<SourceFailure>) -> Self {
        if failures.is_empty() {
            Self::NoSource
        } else if failures.iter().all(|f| f.refused) {
            Self::InstallRefused { failures }
        } else {
            Self::PullFailed { failures }
        }
    }

    /// A short stable label of what happened, for metrics, status and events.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotConfigured { .. } => "not_configured",
            Self::NotServed { .. } => "not_served",
            Self::PodDenied { .. } => "pod_denied",
            Self::SkippedByPolicy { .. } => "skipped_by_policy",
            Self::DeniedByPolicy(_) => "denied_by_policy",
            Self::NoSource => "no_source",
            Self::PullFailed { .. } => "pull_failed",
            Self::InstallRefused { .. } => "install_refused",
            Self::Interrupted { .. } => "interrupted",
        }
    }

    /// Whether the ensure that failed logged this error itself (once, with the class, the kind
    /// and the installed version): the failures of a pull, which callers sharing that pull must
    /// not log again. The others (the class unknown or not served, a pod refused, an
    /// interrupted task) end before that record and are each caller's to log.
    pub fn logged(&self) -> bool {
        match self {
            Self::SkippedByPolicy { .. }
            | Self::DeniedByPolicy(_)
            | Self::NoSource
            | Self::PullFailed { .. }
            | Self::InstallRefused { .. } => true,
            Self::NotConfigured { .. }
            | Self::NotServed { .. }
            | Self::PodDenied { .. }
            | Self::Interrupted { .. } => false,
        }
    }
}

impl From<EnsureError> for Refusal {
    fn from(error: EnsureError) -> Self {
        Self {
            kind: error.kind(),
            reason: error.to_string(),
            logged: error.logged(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_texts_callers_print() {
        let denial = Denial {
            policy: "10-namespace-gate".into(),
            reason: "namespace not allowed".into(),
            failure: None,
        };
        let cases = [
            (
                EnsureError::NotConfigured { class: "k".into() },
                "runtime class \"k\" is not in kata-nri-manager's config on this node",
            ),
            (
                EnsureError::NotServed {
                    class: "k".into(),
                    reason: "why".into(),
                },
                "runtime class k is not served on this node: why",
            ),
            (
                EnsureError::PodDenied {
                    pod: "ns/p".into(),
                    denial: denial.clone(),
                },
                "pod ns/p: denied by policy 10-namespace-gate: namespace not allowed",
            ),
            (
                EnsureError::SkippedByPolicy {
                    policy: "p".into(),
                    reason: "r".into(),
                },
                "skipped by policy p: r",
            ),
            (
                EnsureError::DeniedByPolicy(denial),
                "denied by policy 10-namespace-gate: namespace not allowed",
            ),
            (EnsureError::NoSource, "the policies returned no source"),
            (
                EnsureError::PullFailed {
                    failures: vec![failure("a", false)],
                },
                "a",
            ),
            (
                EnsureError::InstallRefused {
                    failures: vec![failure("a", true), failure("b", true)],
                },
                "all 2 sources failed: a; b",
            ),
            (
                EnsureError::Interrupted {
                    class: "k".into(),
                    reason: "panicked".into(),
                },
                "ensuring k did not finish: panicked",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text, "{}", error.kind());
        }
    }

    fn failure(message: &str, refused: bool) -> SourceFailure {
        SourceFailure {
            message: message.into(),
            refused,
        }
    }

    #[test]
    fn install_refused_only_when_every_source_was_refused() {
        let kind = |failures: Vec<SourceFailure>| EnsureError::from_sources(failures).kind();
        assert_eq!(kind(vec![]), "no_source");
        assert_eq!(kind(vec![failure("a", true)]), "install_refused");
        assert_eq!(
            kind(vec![failure("a", true), failure("b", true)]),
            "install_refused"
        );
        // A refused mirror and an unreachable upstream: another try may still succeed.
        assert_eq!(
            kind(vec![failure("a", true), failure("b", false)]),
            "pull_failed"
        );
        assert_eq!(kind(vec![failure("a", false)]), "pull_failed");
    }

    #[test]
    fn a_pull_failure_reaches_the_gate_as_already_logged() {
        let pulled = Refusal::from(EnsureError::from_sources(vec![failure("a", false)]));
        assert!(pulled.logged, "the ensure logged it");
        let unknown = Refusal::from(EnsureError::NotConfigured { class: "k".into() });
        assert!(!unknown.logged, "nothing logged it: the gate must");
        assert!(!Refusal::from("bare").logged);
    }
}
