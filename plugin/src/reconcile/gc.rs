//! Garbage collection of the artifacts of classes this node no longer serves.
//!
//! A class's artifacts go only when the class has left the config (or policies stopped serving
//! it here), no known pod of the class exists, the pod list is known (NRI synchronized), and all
//! of that has held for the grace period: a class that comes back, or a pod that shows up,
//! resets the clock.
//!
//! Retired versions of a class that stays (beyond `limits.keepVersions`) go once no sandbox
//! of the class can be running on them ([`sandbox_ages`]), never while an ensure of that class
//! runs (a gate may be waiting on it).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::artifacts::SandboxAge;
use crate::pods::PodRecord;

/// How long a class must be unused before its artifacts are removed, unless configured.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

/// Remembers since when each class has been collectable.
#[derive(Debug)]
pub struct Collector {
    grace: Duration,
    unused_since: HashMap<String, Instant>,
}

impl Collector {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            unused_since: HashMap::new(),
        }
    }

    /// The classes to remove now. `recorded`: classes with installed artifacts; `served`:
    /// classes the node serves; `pods`: the node's pods, `None` when unknown (then nothing is
    /// collected).
    pub fn sweep(
        &mut self,
        recorded: &[String],
        served: &BTreeSet<String>,
        pods: Option<&[PodRecord]>,
        now: Instant,
    ) -> Vec<String> {
        let Some(pods) = pods else {
            self.unused_since.clear();
            return Vec::new();
        };
        let in_use: BTreeSet<&str> = pods.iter().map(|p| p.runtime_handler.as_str()).collect();
        let collectable: BTreeSet<&String> = recorded
            .iter()
            .filter(|class| !served.contains(*class) && !in_use.contains(class.as_str()))
            .collect();
        self.unused_since
            .retain(|class, _| collectable.contains(class));
        let mut due = Vec::new();
        for class in collectable {
            let since = *self.unused_since.entry(class.clone()).or_insert(now);
            if now.duration_since(since) >= self.grace {
                due.push(class.clone());
            }
        }
        due
    }

    /// Forgets a class once removed.
    pub fn removed(&mut self, class: &str) {
        self.unused_since.remove(class);
    }
}

/// The ages of `class`'s sandboxes, for deciding which of its retired versions may still be
/// in use.
pub fn sandbox_ages(pods: &[PodRecord], class: &str) -> Vec<SandboxAge> {
    pods.iter()
        .filter(|pod| pod.runtime_handler == class)
        .map(|pod| SandboxAge {
            created_at_ms: pod.created_at_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(handler: &str) -> PodRecord {
        PodRecord {
            id: handler.into(),
            namespace: "default".into(),
            name: "p".into(),
            runtime_handler: handler.into(),
            annotations: Default::default(),
            created_at_ms: None,
        }
    }

    #[test]
    fn removes_only_unserved_unused_classes_after_the_grace_period() {
        let grace = Duration::from_secs(60);
        let mut gc = Collector::new(grace);
        let recorded = ["gone".to_owned(), "kept".to_owned(), "busy".to_owned()];
        let served: BTreeSet<String> = ["kept".to_owned()].into();
        let pods = [pod("busy"), pod("runc")];
        let t0 = Instant::now();
        assert!(gc.sweep(&recorded, &served, Some(&pods), t0).is_empty());
        assert!(
            gc.sweep(&recorded, &served, Some(&pods), t0 + grace / 2)
                .is_empty()
        );
        assert_eq!(
            gc.sweep(&recorded, &served, Some(&pods), t0 + grace),
            ["gone"]
        );
        // The pod of "busy" goes: its clock starts now, not at t0.
        assert_eq!(
            gc.sweep(&recorded, &served, Some(&[]), t0 + grace),
            ["gone"]
        );
        gc.removed("gone");
        let left = ["busy".to_owned()];
        assert!(
            gc.sweep(&left, &served, Some(&[]), t0 + grace + grace / 2)
                .is_empty()
        );
        assert_eq!(
            gc.sweep(&left, &served, Some(&[]), t0 + grace * 2),
            ["busy"]
        );
    }

    #[test]
    fn unknown_pods_stop_collection_and_reset_clocks() {
        let grace = Duration::from_secs(60);
        let mut gc = Collector::new(grace);
        let recorded = ["gone".to_owned()];
        let served = BTreeSet::new();
        let t0 = Instant::now();
        assert!(gc.sweep(&recorded, &served, Some(&[]), t0).is_empty());
        assert!(gc.sweep(&recorded, &served, None, t0 + grace).is_empty());
        assert!(
            gc.sweep(&recorded, &served, Some(&[]), t0 + grace)
                .is_empty()
        );
        assert_eq!(
            gc.sweep(&recorded, &served, Some(&[]), t0 + grace * 2),
            ["gone"]
        );
    }
}
