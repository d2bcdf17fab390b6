//! The pods this node runs, as NRI reports them.
//!
//! Filled from NRI hooks, so every method is a short critical section and a log event: nothing
//! here waits on I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tracing::info;

use crate::nri::{Container, Event, EventMask, NriHandler, PodEvent, PodSandbox, RuntimeInfo};

/// A pod annotation naming classes to prepare ahead of time: `"<class>[,<class>…]"`.
pub const PREPARE_ANNOTATION: &str = "kata-nri-manager.io/prepare";

/// The NRI events the daemon subscribes to: the pods' own. The launched plugin's first handler
/// (`reconcile::deferred`) subscribes to the same before the daemon exists.
pub const SUBSCRIPTIONS: [Event; 3] = [
    Event::RunPodSandbox,
    Event::StopPodSandbox,
    Event::RemovePodSandbox,
];

/// What we remember of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub runtime_handler: String,
    pub annotations: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch, when known (CRI says; NRI does not).
    pub created_at_ms: Option<u64>,
}

impl From<PodSandbox> for PodRecord {
    fn from(pod: PodSandbox) -> Self {
        Self {
            id: pod.id,
            namespace: pod.namespace,
            name: pod.name,
            runtime_handler: pod.runtime_handler,
            annotations: pod.annotations,
            created_at_ms: None,
        }
    }
}

/// The live pods by sandbox id.
#[derive(Debug, Default)]
pub struct PodInventory {
    pods: Mutex<HashMap<String, PodRecord>>,
}

impl PodInventory {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the current pods, sorted by id.
    pub fn snapshot(&self) -> Vec<PodRecord> {
        let mut pods: Vec<_> = self.lock().values().cloned().collect();
        pods.sort_by(|a, b| a.id.cmp(&b.id));
        pods
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodRecord>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still safe to use.
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The one log line of a Configure.
pub fn log_configured(runtime: &RuntimeInfo) {
    info!(
        runtime = %runtime.runtime_name,
        runtime_version = %runtime.runtime_version,
        nri_version = runtime.nri_version.as_deref().unwrap_or("unknown (before v0.12)"),
        config_bytes = runtime.config.len(),
        "configured by the runtime"
    );
}

/// Annotation values are the pod author's and may hold anything (tokens included): only the
/// keys are logged, and the value of our own prepare annotation.
fn log_pod(event: &str, pod: &PodRecord) {
    let keys: Vec<&str> = pod.annotations.keys().map(String::as_str).collect();
    info!(
        event,
        pod_id = %pod.id,
        pod = %format_args!("{}/{}", pod.namespace, pod.name),
        runtime_handler = %pod.runtime_handler,
        annotation_keys = ?keys,
        prepare = pod.annotations.get(PREPARE_ANNOTATION).map(String::as_str),
        "pod"
    );
}

impl NriHandler for PodInventory {
    fn subscriptions(&self) -> EventMask {
        EventMask::of(&SUBSCRIPTIONS)
    }

    fn configured(&self, runtime: &RuntimeInfo) {
        log_configured(runtime);
    }

    fn synchronized(&self, pods: Vec<PodSandbox>, containers: Vec<Container>) {
        let records: Vec<PodRecord> = pods.into_iter().map(PodRecord::from).collect();
        for pod in &records {
            log_pod("Synchronize", pod);
        }
        info!(
            pods = records.len(),
            containers = containers.len(),
            "synchronized with the runtime"
        );
        let mut map = self.lock();
        map.clear();
        map.extend(records.into_iter().map(|p| (p.id.clone(), p)));
    }

    fn pod_event(&self, event: PodEvent, pod: PodSandbox) {
        let record = PodRecord::from(pod);
        log_pod(event.as_str(), &record);
        let mut map = self.lock();
        match event {
            PodEvent::Run | PodEvent::Stop => {
                map.insert(record.id.clone(), record);
            }
            PodEvent::Remove => {
                map.remove(&record.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str, handler: &str) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            name: format!("pod-{id}"),
            namespace: "default".into(),
            runtime_handler: handler.into(),
            ..Default::default()
        }
    }

    #[test]
    fn tracks_pods_through_sync_and_events() {
        let inv = PodInventory::new();
        inv.synchronized(vec![pod("a", "runc")], vec![]);
        inv.pod_event(PodEvent::Run, pod("b", "kata-qemu"));
        let ids: Vec<_> = inv.snapshot().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["a", "b"]);
        inv.pod_event(PodEvent::Remove, pod("a", "runc"));
        let snap = inv.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].runtime_handler, "kata-qemu");
        // A new sync replaces what we knew: pods removed while we were away disappear.
        inv.synchronized(vec![pod("c", "runc")], vec![]);
        assert_eq!(inv.snapshot()[0].id, "c");
    }

    #[test]
    fn subscribes_to_pod_events_only() {
        assert_eq!(PodInventory::new().subscriptions().bits(), 0b111);
    }
}
