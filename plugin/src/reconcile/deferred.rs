//! The NRI handler of a launched plugin before its daemon exists.
//!
//! containerd hands a pre-registered plugin its config (the `.conf` from `plugin_config_path`) in
//! Configure, and sends Synchronize right after: the daemon can only be built once the config has
//! arrived, and must not miss the pods Synchronize reported meanwhile. This handler hands the
//! config over, keeps what arrives until the daemon's handler is installed, then replays it in
//! order and forwards everything after.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

use super::triggers::NriTriggers;
use crate::nri::{
    ConnectionObserver, Container, EventMask, NriHandler, PodEvent, PodSandbox, RuntimeInfo,
};

enum Held {
    Synchronized(Vec<PodSandbox>, Vec<Container>),
    PodEvent(PodEvent, PodSandbox),
}

pub struct DeferredHandler {
    config: Mutex<Option<oneshot::Sender<String>>>,
    target: OnceLock<Arc<NriTriggers>>,
    /// Also the lock that orders installing against forwarding.
    held: Mutex<Vec<Held>>,
}

impl DeferredHandler {
    /// The handler and the receiver of the config containerd sends in Configure.
    pub fn new() -> (Arc<Self>, oneshot::Receiver<String>) {
        let (tx, rx) = oneshot::channel();
        let this = Arc::new(Self {
            config: Mutex::new(Some(tx)),
            target: OnceLock::new(),
            held: Mutex::new(Vec::new()),
        });
        (this, rx)
    }

    fn held(&self) -> MutexGuard<'_, Vec<Held>> {
        // Pushes and drains only: a poisoned lock holds a consistent list.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the daemon's handler and replays what arrived before it, in order.
    pub fn install(&self, target: Arc<NriTriggers>) {
        let mut held = self.held();
        for item in held.drain(..) {
            match item {
                Held::Synchronized(pods, containers) => target.synchronized(pods, containers),
                Held::PodEvent(event, pod) => target.pod_event(event, pod),
            }
        }
        let _ = self.target.set(target);
    }

    fn forward_or_hold(&self, item: Held) {
        let mut held = self.held();
        match self.target.get() {
            Some(target) => match item {
                Held::Synchronized(pods, containers) => target.synchronized(pods, containers),
                Held::PodEvent(event, pod) => target.pod_event(event, pod),
            },
            None => held.push(item),
        }
    }
}

impl NriHandler for DeferredHandler {
    fn subscriptions(&self) -> EventMask {
        // The daemon's handler wants the same (PodInventory's events); fixed before it exists.
        EventMask::of(&crate::pods::SUBSCRIPTIONS)
    }

    fn configured(&self, runtime: &RuntimeInfo) {
        match self.target.get() {
            Some(target) => target.configured(runtime),
            None => crate::pods::log_configured(runtime),
        }
        let sender = self.config.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(sender) = sender {
            let _ = sender.send(runtime.config.clone());
        }
    }

    fn synchronized(&self, pods: Vec<PodSandbox>, containers: Vec<Container>) {
        self.forward_or_hold(Held::Synchronized(pods, containers));
    }

    fn pod_event(&self, event: PodEvent, pod: PodSandbox) {
        self.forward_or_hold(Held::PodEvent(event, pod));
    }

    fn disconnected(&self) {
        if let Some(target) = self.target.get() {
            target.disconnected();
        }
    }
}

impl ConnectionObserver for DeferredHandler {
    fn registered(&self, elapsed: Duration) {
        if let Some(target) = self.target.get() {
            target.registered(elapsed);
        }
    }

    fn connection_lost(&self) {
        if let Some(target) = self.target.get() {
            target.connection_lost();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::PodInventory;
    use crate::reconcile::{Metrics, StatusBoard};

    fn pod(id: &str) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            runtime_handler: "runc".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn hands_over_the_config_and_replays_what_came_before_the_daemon() {
        let (deferred, config) = DeferredHandler::new();
        deferred.configured(&RuntimeInfo {
            config: "runtimeClasses: []\n".into(),
            ..Default::default()
        });
        assert_eq!(config.await.unwrap(), "runtimeClasses: []\n");
        deferred.synchronized(vec![pod("a"), pod("b")], vec![]);
        deferred.pod_event(PodEvent::Remove, pod("a"));

        let inventory = Arc::new(PodInventory::new());
        let (signals, _received) = tokio::sync::mpsc::unbounded_channel();
        let triggers = Arc::new(NriTriggers::new(
            inventory.clone(),
            Default::default(),
            signals,
            Arc::new(Metrics::new()),
            Arc::new(StatusBoard::new([])),
        ));
        deferred.install(triggers);
        let ids: Vec<_> = inventory.snapshot().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["b"]);
        deferred.pod_event(PodEvent::Run, pod("c"));
        assert_eq!(inventory.snapshot().len(), 2);
    }
}
