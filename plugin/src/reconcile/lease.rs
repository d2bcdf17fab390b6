//! Fleet-wide slots (the optional `kube` feature): N Leases `<prefix><i>` in the daemon's own
//! namespace, of which a node takes one before doing what the fleet must not do all at once,
//! holds it (renewed) meanwhile, and gives it back.
//!
//! - Restart slots (`fleet.maxConcurrentRestarts`, `kata-nri-manager-restart-<i>`): a ConfigMap
//!   change reaches every node within a minute, but only that many nodes have containerd down at
//!   once; the others wait their turn.
//! - Pull slots (`fleet.maxConcurrentPulls`, `kata-nri-manager-pull-<i>`): a new artifact rolled
//!   out to every node is downloaded by that many nodes at a time, so the registry is not
//!   stampeded (the store asks through [`crate::artifacts::PullSlots`]).
//!
//! A slot is free when it has no holder, is held by this node (a daemon that died holding it),
//! or its holder stopped renewing it for `leaseDurationSeconds`. Taking a slot is a
//! compare-and-swap on the Lease's `resourceVersion`, so two nodes never both win one.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::artifacts::{HeldSlot, PullSlots, SlotSource};
use crate::config::Fleet;

/// Name prefix of the restart slots.
pub const RESTART_PREFIX: &str = "kata-nri-manager-restart-";
/// Name prefix of the pull slots.
pub const PULL_PREFIX: &str = "kata-nri-manager-pull-";
/// How long a holder that stopped renewing keeps its slot.
const LEASE_DURATION: Duration = Duration::from_secs(30);
/// Wait between rounds when every slot is taken (plus up to as much again of jitter).
const RETRY: Duration = Duration::from_secs(2);

/// What the slots are for: their Leases' prefix and the word logs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotKind {
    pub prefix: &'static str,
    pub what: &'static str,
}

pub const RESTART: SlotKind = SlotKind {
    prefix: RESTART_PREFIX,
    what: "restart",
};
pub const PULL: SlotKind = SlotKind {
    prefix: PULL_PREFIX,
    what: "pull",
};

/// The slots of one kind, as one node takes them.
#[derive(Clone)]
pub struct LeaseSlots {
    leases: Api<Lease>,
    kind: SlotKind,
    holder: String,
    slots: u32,
    /// Wait between rounds when every slot is taken.
    retry: Duration,
    /// Up to this long (random) before the first request.
    jitter: Duration,
}

impl LeaseSlots {
    pub fn new(
        client: Client,
        namespace: &str,
        kind: SlotKind,
        holder: impl Into<String>,
        slots: u32,
    ) -> Self {
        Self {
            leases: Api::namespaced(client, namespace),
            kind,
            holder: holder.into(),
            slots: slots.max(1),
            retry: RETRY,
            // Nodes that got the same ConfigMap update at the same moment do not all ask at once.
            jitter: RETRY,
        }
    }

    /// Sets the wait between rounds.
    pub fn with_retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the most a node waits (at random) before its first request.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// In-cluster credentials, `NODE_NAME` and `POD_NAMESPACE`, or `None` (outside a cluster
    /// there is no fleet to coordinate with).
    pub fn in_cluster(kind: SlotKind, slots: u32) -> Option<Self> {
        let node = std::env::var(crate::cluster::NODE_NAME_ENV)
            .ok()
            .filter(|n| !n.is_empty())?;
        let namespace = std::env::var(crate::cluster::NAMESPACE_ENV)
            .ok()
            .filter(|n| !n.is_empty())?;
        let config = crate::cluster::config()?;
        match Client::try_from(config) {
            Ok(client) => Some(Self::new(client, &namespace, kind, node, slots)),
            Err(e) => {
                warn!(error = %e, what = kind.what, "in-cluster Kubernetes client not built: not coordinated across the fleet");
                None
            }
        }
    }

    /// Waits for a free slot and takes it; the permit renews it until dropped or released.
    /// API errors are retried: a node waits for its turn rather than risk the fleet.
    pub async fn acquire(&self) -> SlotPermit {
        tokio::time::sleep(jitter(self.jitter)).await;
        let mut waiting_logged = false;
        loop {
            for slot in 0..self.slots {
                let name = format!("{}{slot}", self.kind.prefix);
                match self.try_take(&name).await {
                    Ok(true) => {
                        info!(lease = %name, holder = %self.holder, what = self.kind.what, "slot taken");
                        return SlotPermit::new(self.clone(), name);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(lease = %name, error = %e, what = self.kind.what, "slot not readable; retrying")
                    }
                }
            }
            if !waiting_logged {
                info!(
                    slots = self.slots,
                    what = self.kind.what,
                    "every slot is taken: waiting for another node to finish"
                );
                waiting_logged = true;
            }
            tokio::time::sleep(self.retry + jitter(self.retry)).await;
        }
    }

    /// Takes `name` if it is free; false when another node holds it or won the race.
    async fn try_take(&self, name: &str) -> kube::Result<bool> {
        let now = Timestamp::now();
        let spec = LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        };
        match self.leases.get_opt(name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                match self.leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                if !free(lease.spec.as_ref(), &self.holder, now) {
                    return Ok(false);
                }
                lease.spec = Some(spec);
                // `resourceVersion` stays as read: a node that changed it meanwhile wins.
                match self
                    .leases
                    .replace(name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Renews `name` if this node still holds it.
    async fn renew(&self, name: &str) -> kube::Result<()> {
        let Some(mut lease) = self.leases.get_opt(name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            warn!(lease = %name, what = self.kind.what, "slot lost to another node (it was not renewed in time)");
            return Ok(());
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.leases
            .replace(name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    /// Gives `name` back if this node holds it.
    async fn release(&self, name: &str) -> kube::Result<()> {
        let Some(mut lease) = self.leases.get_opt(name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        self.leases
            .replace(name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl SlotSource for LeaseSlots {
    async fn take(&self) -> Box<dyn HeldSlot> {
        Box::new(self.acquire().await)
    }
}

#[async_trait]
impl HeldSlot for SlotPermit {
    fn name(&self) -> &str {
        &self.name
    }

    async fn give_back(self: Box<Self>) {
        (*self).release().await;
    }
}

/// The store's pull slots in a cluster: `fleet.maxConcurrentPulls` Leases, asked for after up
/// to `fleet.pullJitter`. `None` when the key is 0 (unlimited) or outside a cluster.
pub fn pull_slots(fleet: &Fleet) -> Option<PullSlots> {
    if fleet.max_concurrent_pulls == 0 {
        return None;
    }
    let Some(slots) = LeaseSlots::in_cluster(PULL, fleet.max_concurrent_pulls) else {
        info!(
            "not in a Kubernetes cluster (no in-cluster credentials, NODE_NAME or POD_NAMESPACE): fleet.maxConcurrentPulls is not applied"
        );
        return None;
    };
    info!(
        slots = fleet.max_concurrent_pulls,
        jitter_ms = fleet.pull_jitter.get().as_millis() as u64,
        "downloads take one of the fleet's pull slots"
    );
    Some(PullSlots::new(Arc::new(
        slots.with_jitter(fleet.pull_jitter.get()),
    )))
}

/// A held slot: renewed every third of its duration until released (or dropped, which releases
/// it in the background).
pub struct SlotPermit {
    lease: LeaseSlots,
    name: String,
    renewer: JoinHandle<()>,
    released: bool,
}

impl SlotPermit {
    fn new(lease: LeaseSlots, name: String) -> Self {
        let renewing = (lease.clone(), name.clone());
        let renewer = tokio::spawn(async move {
            let (lease, name) = renewing;
            loop {
                tokio::time::sleep(LEASE_DURATION / 3).await;
                if let Err(e) = lease.renew(&name).await {
                    warn!(lease = %name, error = %e, what = lease.kind.what, "slot not renewed");
                }
            }
        });
        Self {
            lease,
            name,
            renewer,
            released: false,
        }
    }

    /// The slot's Lease name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the slot back now.
    pub async fn release(mut self) {
        self.renewer.abort();
        self.released = true;
        let what = self.lease.kind.what;
        match self.lease.release(&self.name).await {
            Ok(()) => info!(lease = %self.name, what, "slot released"),
            Err(e) => {
                warn!(lease = %self.name, error = %e, what, "slot not released; it expires on its own")
            }
        }
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.renewer.abort();
        if !self.released
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let (lease, name) = (self.lease.clone(), self.name.clone());
            handle.spawn(async move {
                if let Err(e) = lease.release(&name).await {
                    warn!(lease = %name, error = %e, what = lease.kind.what, "slot not released; it expires on its own");
                }
            });
        }
    }
}

/// A slot nobody holds, that this node holds, or whose holder stopped renewing it.
fn free(spec: Option<&LeaseSpec>, holder: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(current) if current == holder => true,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .map_or(LEASE_DURATION.as_secs() as i64, i64::from);
            match &spec.renew_time {
                Some(MicroTime(renewed)) => {
                    now.as_second().saturating_sub(renewed.as_second()) > duration
                }
                None => true,
            }
        }
    }
}

/// A random wait in `0..=max`. `RandomState` is seeded from the OS once per process (and
/// stepped per call), so nodes started by the same rollout in the same millisecond still
/// spread out, without a random-number crate.
fn jitter(max: Duration) -> Duration {
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    max.mul_f64(fraction)
}

/// A permit held by blocking code: released on the runtime it came from when dropped, and
/// waited for, so the next restart's turn starts only after the slot is free.
pub struct HeldOn {
    pub permit: Option<SlotPermit>,
    pub runtime: tokio::runtime::Handle,
}

impl Drop for HeldOn {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.runtime.block_on(permit.release());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    type Store = Arc<Mutex<HashMap<String, serde_json::Value>>>;
    type Reply = (
        StatusCode,
        [(axum::http::HeaderName, &'static str); 1],
        String,
    );

    fn json(code: u16, value: &serde_json::Value) -> Reply {
        (
            StatusCode::from_u16(code).unwrap(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
    }

    fn status(code: u16, reason: &str) -> Reply {
        json(
            code,
            &serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": reason, "reason": reason, "code": code
            }),
        )
    }

    /// A fake API server keeping Leases with resourceVersion checks, as the real one does.
    async fn fake_apiserver() -> (kube::Client, Store) {
        let store: Store = Arc::default();
        let item = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}";
        let list = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";
        let app = axum::Router::new()
            .route(
                item,
                get(
                    |State(store): State<Store>, Path((_, name)): Path<(String, String)>| async move {
                        match store.lock().unwrap().get(&name) {
                            Some(lease) => json(200, lease),
                            None => status(404, "NotFound"),
                        }
                    },
                )
                .put(
                    |State(store): State<Store>,
                     Path((_, name)): Path<(String, String)>,
                     body: String| async move {
                        let mut lease: serde_json::Value = serde_json::from_str(&body).unwrap();
                        let mut store = store.lock().unwrap();
                        let Some(current) = store.get(&name) else {
                            return status(404, "NotFound");
                        };
                        let version = current["metadata"]["resourceVersion"].clone();
                        if lease["metadata"]["resourceVersion"] != version {
                            return status(409, "Conflict");
                        }
                        let next = version.as_str().unwrap().parse::<u64>().unwrap() + 1;
                        lease["metadata"]["resourceVersion"] = next.to_string().into();
                        store.insert(name, lease.clone());
                        json(200, &lease)
                    },
                ),
            )
            .route(
                list,
                axum::routing::post(|State(store): State<Store>, body: String| async move {
                    let mut lease: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let name = lease["metadata"]["name"].as_str().unwrap().to_owned();
                    let mut store = store.lock().unwrap();
                    if store.contains_key(&name) {
                        return status(409, "AlreadyExists");
                    }
                    lease["metadata"]["resourceVersion"] = "1".into();
                    store.insert(name, lease.clone());
                    json(201, &lease)
                }),
            )
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (client, store)
    }

    fn holder(store: &Store, name: &str) -> Option<String> {
        store.lock().unwrap().get(name)?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn one_slot_lets_one_node_restart_at_a_time() {
        let (client, store) = fake_apiserver().await;
        let retry = Duration::from_millis(20);
        let a = LeaseSlots::new(client.clone(), "knm", RESTART, "node-a", 1).with_retry(retry);
        let b = LeaseSlots::new(client, "knm", RESTART, "node-b", 1).with_retry(retry);
        let held = a.acquire().await;
        assert_eq!(held.name(), "kata-nri-manager-restart-0");
        assert_eq!(holder(&store, held.name()).as_deref(), Some("node-a"));
        let waiting = tokio::spawn(async move { b.acquire().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "node-b restarted while node-a held the slot"
        );
        held.release().await;
        let second = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("node-b gets the slot once released")
            .unwrap();
        assert_eq!(holder(&store, second.name()).as_deref(), Some("node-b"));
        second.release().await;
        assert_eq!(holder(&store, "kata-nri-manager-restart-0"), None);
    }

    #[tokio::test]
    async fn two_slots_let_two_nodes_restart_together() {
        let (client, store) = fake_apiserver().await;
        let retry = Duration::from_millis(20);
        let a = LeaseSlots::new(client.clone(), "knm", RESTART, "node-a", 2).with_retry(retry);
        let b = LeaseSlots::new(client, "knm", RESTART, "node-b", 2).with_retry(retry);
        let (first, second) = tokio::time::timeout(
            Duration::from_secs(10),
            futures::future::join(a.acquire(), b.acquire()),
        )
        .await
        .expect("both get a slot");
        assert_ne!(first.name(), second.name());
        assert_eq!(holder(&store, first.name()).as_deref(), Some("node-a"));
        assert_eq!(holder(&store, second.name()).as_deref(), Some("node-b"));
    }

    #[tokio::test]
    async fn pull_slots_let_at_most_n_nodes_download_at_once() {
        let (client, store) = fake_apiserver().await;
        let retry = Duration::from_millis(10);
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let nodes = (0..6).map(|i| {
            let slots = LeaseSlots::new(client.clone(), "knm", PULL, format!("node-{i}"), 2)
                .with_retry(retry)
                .with_jitter(Duration::from_millis(30));
            let pulls = PullSlots::new(Arc::new(slots));
            let (inside, peak) = (inside.clone(), peak.clone());
            async move {
                let turn = pulls.turn().await;
                let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                turn.end().await;
            }
        });
        tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(nodes))
            .await
            .expect("every node gets its turn");
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
        let names: Vec<String> = store.lock().unwrap().keys().cloned().collect();
        assert!(
            names.iter().all(|n| n.starts_with(PULL_PREFIX)),
            "{names:?}"
        );
        assert_eq!(names.len(), 2, "{names:?}");
        for name in names {
            assert_eq!(holder(&store, &name), None, "{name} given back");
        }
    }

    #[test]
    fn jitter_stays_within_its_bound_and_spreads() {
        let max = Duration::from_secs(10);
        let waits: Vec<Duration> = (0..200).map(|_| jitter(max)).collect();
        assert!(waits.iter().all(|w| *w <= max));
        assert!(waits.iter().any(|w| *w < max / 4));
        assert!(waits.iter().any(|w| *w > max * 3 / 4));
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn no_pull_slots_without_a_limit_or_outside_a_cluster() {
        let mut fleet = Fleet::default();
        assert_eq!(fleet.max_concurrent_pulls, 0);
        assert!(pull_slots(&fleet).is_none());
        // The test runs outside a cluster (no NODE_NAME/POD_NAMESPACE set by the harness).
        fleet.max_concurrent_pulls = 1;
        if std::env::var(crate::cluster::NAMESPACE_ENV).is_err() {
            assert!(pull_slots(&fleet).is_none());
        }
    }

    #[test]
    fn a_slot_whose_holder_stopped_renewing_is_free() {
        let now = Timestamp::now();
        let spec = |holder: Option<&str>, renewed_s_ago: i64| LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(30),
            renew_time: Some(MicroTime(
                now.checked_sub(jiff_seconds(renewed_s_ago)).unwrap(),
            )),
            ..LeaseSpec::default()
        };
        assert!(free(None, "me", now));
        assert!(free(Some(&spec(None, 0)), "me", now));
        assert!(free(Some(&spec(Some("me"), 0)), "me", now));
        assert!(!free(Some(&spec(Some("other"), 5)), "me", now));
        assert!(free(Some(&spec(Some("other"), 31)), "me", now));
    }

    fn jiff_seconds(s: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_secs(s)
    }
}
