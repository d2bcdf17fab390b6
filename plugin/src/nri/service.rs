//! The `Plugin` ttrpc service: turns the runtime's calls into [`NriHandler`] calls.
//!
//! Every method answers at once and never fails: an error returned to containerd would fail the
//! pod, and a slow answer stalls every pod on the node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kata_nri_proto::api;
use kata_nri_proto::api_ttrpc::{Plugin, create_plugin};
use tokio::sync::Notify;
use tracing::{debug, info};
use ttrpc::r#async::{Service, TtrpcContext};

use super::events::{Container, Event, EventMask, PodEvent, PodSandbox, RuntimeInfo};
use super::handler::NriHandler;

/// The methods we serve. For every other method ttrpc answers `UNIMPLEMENTED`, which is what
/// makes an NRI v0.12 runtime fall back to `StateChange` for pod events (the generated defaults
/// would answer `NOT_FOUND`, which the runtime treats as a failure).
const SERVED_METHODS: [&str; 4] = ["Configure", "Synchronize", "Shutdown", "StateChange"];

pub(crate) struct PluginService {
    handler: Arc<dyn NriHandler>,
    shutdown: Arc<Notify>,
    /// Parts of a `Synchronize` that came with `more = true`, joined until the last one.
    pending_sync: Mutex<(Vec<PodSandbox>, Vec<Container>)>,
}

impl PluginService {
    pub(crate) fn new(handler: Arc<dyn NriHandler>, shutdown: Arc<Notify>) -> Self {
        Self {
            handler,
            shutdown,
            pending_sync: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    /// The ttrpc service map, limited to the methods we serve.
    pub(crate) fn into_services(self) -> HashMap<String, Service> {
        let mut services = create_plugin(Arc::new(self));
        for service in services.values_mut() {
            service
                .methods
                .retain(|name, _| SERVED_METHODS.contains(&name.as_str()));
        }
        services
    }
}

#[async_trait]
impl Plugin for PluginService {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        let runtime = RuntimeInfo {
            runtime_name: req.runtime_name,
            runtime_version: req.runtime_version,
            nri_version: Some(req.NRI_version).filter(|v| !v.is_empty()),
            config: req.config,
        };
        let wanted = self.handler.subscriptions();
        let offered = wanted.intersect(EventMask::supported_by(runtime.nri_version.as_deref()));
        if offered != wanted {
            info!(
                wanted = wanted.bits(),
                subscribed = offered.bits(),
                "the runtime's NRI version does not know some wanted events; not subscribing to them"
            );
        }
        self.handler.configured(&runtime);
        Ok(api::ConfigureResponse {
            // The mask fits in the low 14 bits.
            events: offered.bits() as i32,
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        let complete = {
            let mut pending = self.pending_sync.lock().unwrap_or_else(|e| e.into_inner());
            pending.0.extend(req.pods.into_iter().map(pod_from_wire));
            pending
                .1
                .extend(req.containers.into_iter().map(container_from_wire));
            (!req.more).then(|| std::mem::take(&mut *pending))
        };
        match complete {
            Some((pods, containers)) => self.handler.synchronized(pods, containers),
            None => debug!("synchronize: more parts to come"),
        }
        Ok(api::SynchronizeResponse {
            more: req.more,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::Empty) -> ttrpc::Result<api::Empty> {
        info!("the runtime sent Shutdown");
        self.shutdown.notify_one();
        Ok(api::Empty::default())
    }

    async fn state_change(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateChangeEvent,
    ) -> ttrpc::Result<api::Empty> {
        let event = Event::try_from(req.event.value()).ok();
        match (event.and_then(PodEvent::from_event), req.pod.into_option()) {
            (Some(pod_event), Some(pod)) => self.handler.pod_event(pod_event, pod_from_wire(pod)),
            _ => debug!(event = req.event.value(), "ignoring state change"),
        }
        Ok(api::Empty::default())
    }
}

fn pod_from_wire(pod: api::PodSandbox) -> PodSandbox {
    PodSandbox {
        id: pod.id,
        name: pod.name,
        uid: pod.uid,
        namespace: pod.namespace,
        runtime_handler: pod.runtime_handler,
        labels: pod.labels.into_iter().collect(),
        annotations: pod.annotations.into_iter().collect(),
    }
}

fn container_from_wire(c: api::Container) -> Container {
    Container {
        id: c.id,
        pod_sandbox_id: c.pod_sandbox_id,
        name: c.name,
    }
}
