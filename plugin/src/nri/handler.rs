//! What a plugin built on this runtime implements.

use super::events::{Container, EventMask, PodEvent, PodSandbox, RuntimeInfo};

/// Receives what the runtime tells the plugin.
///
/// Every method runs while containerd holds its node-wide NRI lock, so each must return in
/// microseconds: record what happened and hand slow work (pulls, restarts, policy evaluation) to
/// a background task. None can fail a pod: the runtime layer always answers success.
pub trait NriHandler: Send + Sync + 'static {
    /// Pod events wanted. The runtime layer subscribes only to those the runtime knows.
    fn subscriptions(&self) -> EventMask;

    /// The runtime configured the plugin (once per connection, before registration completes).
    fn configured(&self, _runtime: &RuntimeInfo) {}

    /// The pods and containers that existed when the plugin (re)connected, all parts joined.
    fn synchronized(&self, _pods: Vec<PodSandbox>, _containers: Vec<Container>) {}

    /// A pod lifecycle event.
    fn pod_event(&self, _event: PodEvent, _pod: PodSandbox) {}

    /// The connection to the runtime ended (containerd stopped, restarted or dropped us).
    fn disconnected(&self) {}
}
