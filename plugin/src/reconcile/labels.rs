//! Node labels through the Kubernetes API (the optional `kube` feature): a class this node serves
//! gets `kata-nri-manager.io/<class>=servable`, which its RuntimeClass's `scheduling.nodeSelector`
//! names, and the node gets `katacontainers.io/kata-runtime=true` once every served eager class is
//! ready (the label RuntimeClasses written for kata-deploy select on). Each class whose artifacts
//! are installed gets the annotation `kata-nri-manager.io/<class>.digest` with the installed
//! version, so drift across a fleet shows with `kubectl get nodes -o yaml`. Labels and
//! annotations of ours that no longer hold are removed. The rest of the state is in `status`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tracing::{info, warn};

use super::status::{ArtifactState, ClassDecision, StatusBoard};

/// Prefix of the per-class labels and annotations.
pub const CLASS_LABEL_PREFIX: &str = "kata-nri-manager.io/";
/// Suffix of the per-class annotation with the installed digest.
pub const DIGEST_ANNOTATION_SUFFIX: &str = ".digest";
/// The conventional label of a node that runs kata.
pub const KATA_RUNTIME_LABEL: &str = "katacontainers.io/kata-runtime";
/// How often the labels are compared with the status.
const PERIOD: Duration = Duration::from_secs(5);

/// What the node's metadata should say: `Some(value)` to set, `None` to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetadata {
    pub labels: BTreeMap<String, Option<String>>,
    pub annotations: BTreeMap<String, Option<String>>,
}

/// The labels and annotations the status asks for. Every configured class has an entry, so a
/// class that stops being served (or installed) loses its label (or annotation).
pub fn desired(board: &StatusBoard) -> NodeMetadata {
    let report = board.report(&[]);
    let mut wanted = NodeMetadata::default();
    let configured = report.containerd.configured;
    for class in &report.classes {
        let servable = configured && class.decision == ClassDecision::Serve;
        wanted.labels.insert(
            format!("{CLASS_LABEL_PREFIX}{}", class.class),
            servable.then(|| "servable".to_owned()),
        );
        let installed = (class.state == ArtifactState::Ready)
            .then(|| class.digest.clone())
            .flatten();
        wanted.annotations.insert(
            format!(
                "{CLASS_LABEL_PREFIX}{}{DIGEST_ANNOTATION_SUFFIX}",
                class.class
            ),
            installed,
        );
    }
    let kata_ready = !report.classes.is_empty() && board.not_ready().is_none();
    wanted.labels.insert(
        KATA_RUNTIME_LABEL.to_owned(),
        kata_ready.then(|| "true".to_owned()),
    );
    wanted
}

/// Patches a node's labels.
pub struct NodeLabeler {
    nodes: Api<Node>,
    node: String,
}

impl NodeLabeler {
    pub fn new(client: Client, node: impl Into<String>) -> Self {
        Self {
            nodes: Api::all(client),
            node: node.into(),
        }
    }

    /// In-cluster credentials and `NODE_NAME`, or `None` (then no labels are written: the
    /// daemon runs outside Kubernetes).
    pub async fn in_cluster() -> Option<Self> {
        let node = std::env::var(crate::cluster::NODE_NAME_ENV)
            .ok()
            .filter(|n| !n.is_empty())?;
        let config = crate::cluster::config()?;
        match Client::try_from(config) {
            Ok(client) => Some(Self::new(client, node)),
            Err(e) => {
                warn!(error = %e, "in-cluster Kubernetes client not built: no node labels");
                None
            }
        }
    }

    /// One merge patch: `Some` sets a label or annotation, `None` removes it.
    pub async fn apply(&self, wanted: &NodeMetadata) -> kube::Result<()> {
        let patch = serde_json::json!({ "metadata": {
            "labels": wanted.labels,
            "annotations": wanted.annotations,
        } });
        self.nodes
            .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    /// Keeps the node's labels in line with `board` until the future is dropped; a failed patch
    /// is retried at the next period.
    pub async fn run(self, board: Arc<StatusBoard>) {
        let mut applied: Option<NodeMetadata> = None;
        let mut warned = false;
        loop {
            let labels = desired(&board);
            if applied.as_ref() != Some(&labels) {
                match self.apply(&labels).await {
                    Ok(()) => {
                        info!(node = %self.node, labels = ?labels.labels, annotations = ?labels.annotations, "node labels updated");
                        applied = Some(labels);
                        warned = false;
                    }
                    Err(e) if !warned => {
                        warn!(node = %self.node, error = %e, "node labels not updated; retrying");
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(PERIOD).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Provision;
    use crate::reconcile::status::ArtifactState;
    use axum::extract::{Path, State};
    use axum::routing::patch;
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

    /// A fake API server that records each node PATCH and answers with a Node.
    async fn fake_apiserver() -> (String, Seen) {
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route(
                "/api/v1/nodes/{name}",
                patch(
                    |State(seen): State<Seen>,
                     Path(name): Path<String>,
                     headers: axum::http::HeaderMap,
                     body: String| async move {
                        let kind = headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let value: serde_json::Value =
                            serde_json::from_str(&body).unwrap_or_default();
                        seen.lock().unwrap().push((name.clone(), kind, value));
                        let node = serde_json::json!({
                            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}
                        });
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            node.to_string(),
                        )
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    fn board() -> Arc<StatusBoard> {
        Arc::new(StatusBoard::new([
            ("kata-qemu".to_owned(), Provision::Eager),
            ("kata-gpu".to_owned(), Provision::OnDemand),
        ]))
    }

    #[test]
    fn servable_needs_containerd_and_a_serve_decision() {
        let board = board();
        let labels = desired(&board).labels;
        assert_eq!(labels["kata-nri-manager.io/kata-qemu"], None);
        assert_eq!(labels[KATA_RUNTIME_LABEL], None);
        board.update_containerd(|c| c.configured = true);
        board.update_class("kata-gpu", |c| c.decision = ClassDecision::Deny);
        let labels = desired(&board).labels;
        assert_eq!(
            labels["kata-nri-manager.io/kata-qemu"].as_deref(),
            Some("servable")
        );
        assert_eq!(labels["kata-nri-manager.io/kata-gpu"], None);
        // kata-runtime waits for the eager class to be ready.
        assert_eq!(labels[KATA_RUNTIME_LABEL], None);
        board.update_class("kata-qemu", |c| c.state = ArtifactState::Ready);
        assert_eq!(
            desired(&board).labels[KATA_RUNTIME_LABEL].as_deref(),
            Some("true")
        );
    }

    #[test]
    fn the_digest_annotation_follows_the_installed_version() {
        let board = board();
        let key = "kata-nri-manager.io/kata-qemu.digest";
        assert_eq!(desired(&board).annotations[key], None);
        board.update_class("kata-qemu", |c| {
            c.state = ArtifactState::Ready;
            c.digest = Some("sha256:aa".into());
        });
        assert_eq!(
            desired(&board).annotations[key].as_deref(),
            Some("sha256:aa")
        );
        assert_eq!(
            desired(&board).annotations["kata-nri-manager.io/kata-gpu.digest"],
            None
        );
    }

    #[tokio::test]
    async fn labels_reach_the_api_server_as_a_merge_patch() {
        let (url, seen) = fake_apiserver().await;
        let config = kube::Config::new(url.parse().unwrap());
        let labeler = NodeLabeler::new(Client::try_from(config).unwrap(), "node-1");
        let board = board();
        board.update_containerd(|c| c.configured = true);
        board.update_class("kata-qemu", |c| {
            c.state = ArtifactState::Ready;
            c.digest = Some("sha256:aa".into());
        });
        let task = tokio::spawn(labeler.run(board.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no PATCH arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        let (node, kind, body) = seen.lock().unwrap()[0].clone();
        assert_eq!(node, "node-1");
        assert_eq!(kind, "application/merge-patch+json");
        assert_eq!(
            body,
            serde_json::json!({"metadata": {
                "labels": {
                    "kata-nri-manager.io/kata-gpu": "servable",
                    "kata-nri-manager.io/kata-qemu": "servable",
                    "katacontainers.io/kata-runtime": "true",
                },
                "annotations": {
                    "kata-nri-manager.io/kata-gpu.digest": null,
                    "kata-nri-manager.io/kata-qemu.digest": "sha256:aa",
                },
            }})
        );
    }
}
