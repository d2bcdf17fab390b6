//! The daemon's NRI handler: records pods (in-use tracking) and turns what pods say into work
//! for the reconciler. Every hook runs under containerd's node-wide NRI lock, so it only
//! records and sends on an unbounded channel: no I/O, no waiting, never an error.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::{EventLabels, Metrics};
use super::status::StatusBoard;
use crate::nri::{
    ConnectionObserver, Container, EventMask, NriHandler, PodEvent, PodSandbox, RuntimeInfo,
};
use crate::pods::PodInventory;
use crate::policy::PodInfo;

pub use crate::pods::PREPARE_ANNOTATION;

/// Work a pod hands to the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSignal {
    /// The pod's prepare annotation names these classes.
    Prepare { classes: Vec<String>, pod: PodInfo },
    /// A sandbox of this class runs: its artifacts are in use.
    InUse { class: String },
}

/// The classes a prepare annotation names, in order, without blanks or repeats.
pub fn parse_prepare(value: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    value
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && seen.insert(*c))
        .map(str::to_owned)
        .collect()
}

/// What a pod asks of us.
pub fn signals(pod: &PodSandbox, classes: &BTreeSet<String>) -> Vec<PodSignal> {
    let mut out = Vec::new();
    if let Some(value) = pod.annotations.get(PREPARE_ANNOTATION) {
        let named = parse_prepare(value);
        if !named.is_empty() {
            out.push(PodSignal::Prepare {
                classes: named,
                pod: PodInfo {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    annotations: pod.annotations.clone(),
                },
            });
        }
    }
    if classes.contains(&pod.runtime_handler) {
        out.push(PodSignal::InUse {
            class: pod.runtime_handler.clone(),
        });
    }
    out
}

/// The NRI handler and connection observer of the daemon.
pub struct NriTriggers {
    inventory: Arc<PodInventory>,
    classes: BTreeSet<String>,
    signals: UnboundedSender<PodSignal>,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
}

impl NriTriggers {
    pub fn new(
        inventory: Arc<PodInventory>,
        classes: BTreeSet<String>,
        signals: UnboundedSender<PodSignal>,
        metrics: Arc<Metrics>,
        board: Arc<StatusBoard>,
    ) -> Self {
        Self {
            inventory,
            classes,
            signals,
            metrics,
            board,
        }
    }

    fn send(&self, pod: &PodSandbox) {
        for signal in signals(pod, &self.classes) {
            // The receiver lives as long as the daemon; a send after shutdown has no one to tell.
            let _ = self.signals.send(signal);
        }
    }
}

impl NriHandler for NriTriggers {
    fn subscriptions(&self) -> EventMask {
        self.inventory.subscriptions()
    }

    fn configured(&self, runtime: &RuntimeInfo) {
        self.inventory.configured(runtime);
    }

    fn synchronized(&self, pods: Vec<PodSandbox>, containers: Vec<Container>) {
        for pod in &pods {
            self.send(pod);
        }
        self.inventory.synchronized(pods, containers);
        self.board.update_nri(|n| n.synchronized = true);
    }

    fn pod_event(&self, event: PodEvent, pod: PodSandbox) {
        self.metrics
            .nri_events
            .get_or_create(&EventLabels {
                event: event.as_str(),
            })
            .inc();
        if event == PodEvent::Run {
            self.send(&pod);
        }
        self.inventory.pod_event(event, pod);
    }

    fn disconnected(&self) {
        self.inventory.disconnected();
    }
}

impl ConnectionObserver for NriTriggers {
    fn registered(&self, _elapsed: Duration) {
        // The session logs the registration itself.
        self.metrics.nri_connection(true);
        self.board.update_nri(|n| {
            n.connected = true;
            n.registrations += 1;
        });
    }

    fn connection_lost(&self) {
        self.metrics.nri_connection(false);
        self.board.update_nri(|n| n.connected = false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(handler: &str, prepare: Option<&str>) -> PodSandbox {
        let mut pod = PodSandbox {
            id: "id".into(),
            name: "p".into(),
            namespace: "team-a".into(),
            runtime_handler: handler.into(),
            ..Default::default()
        };
        if let Some(value) = prepare {
            pod.annotations
                .insert(PREPARE_ANNOTATION.into(), value.into());
        }
        pod
    }

    #[test]
    fn prepare_lists_are_trimmed_and_deduplicated() {
        assert_eq!(parse_prepare(" a, b,,a ,c"), ["a", "b", "c"]);
        assert!(parse_prepare(" , ").is_empty());
    }

    #[test]
    fn pods_signal_preparation_and_use() {
        let classes: BTreeSet<String> = ["kata-qemu".to_owned()].into();
        assert!(signals(&pod("runc", None), &classes).is_empty());
        assert_eq!(
            signals(&pod("kata-qemu", None), &classes),
            [PodSignal::InUse {
                class: "kata-qemu".into()
            }]
        );
        let prepared = signals(&pod("runc", Some("kata-qemu,kata-clh")), &classes);
        match &prepared[..] {
            [PodSignal::Prepare { classes, pod }] => {
                assert_eq!(classes, &["kata-qemu", "kata-clh"]);
                assert_eq!(pod.namespace, "team-a");
            }
            other => panic!("{other:?}"),
        }
    }
}
