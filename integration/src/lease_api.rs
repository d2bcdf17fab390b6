//! A fake Kubernetes API server that keeps `coordination.k8s.io/v1` Leases (GET, POST, PUT with
//! `resourceVersion` conflicts, as the real one), for many `kata-nri-manager` processes on one
//! machine: each is a "node" pointed at it with `KATA_NRI_MANAGER_TEST_KUBE_API`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// The variable that points a process at this server (the daemon's test seam).
pub const TEST_API_ENV: &str = "KATA_NRI_MANAGER_TEST_KUBE_API";

#[derive(Default)]
struct Store {
    leases: Mutex<HashMap<String, Value>>,
    requests: AtomicUsize,
}

type Reply = (StatusCode, [(header::HeaderName, &'static str); 1], String);

fn reply(code: StatusCode, value: &Value) -> Reply {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}

fn status(code: StatusCode, reason: &str) -> Reply {
    reply(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": reason, "reason": reason, "code": code.as_u16()
        }),
    )
}

/// The server on `127.0.0.1:<port>`; stops with the runtime it was started on.
pub struct FakeLeaseApi {
    url: String,
    store: Arc<Store>,
}

impl FakeLeaseApi {
    pub async fn start() -> Result<Self> {
        let store: Arc<Store> = Arc::default();
        let item = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}";
        let list = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";
        let app = axum::Router::new()
            .route(item, get(read).put(replace))
            .route(list, post(create))
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, store })
    }

    /// `http://127.0.0.1:<port>`, the value of [`TEST_API_ENV`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// API requests served so far.
    pub fn requests(&self) -> usize {
        self.store.requests.load(Ordering::SeqCst)
    }

    /// Lease names and their holders now.
    pub fn holders(&self) -> HashMap<String, Option<String>> {
        self.store
            .leases
            .lock()
            .map(|leases| {
                leases
                    .iter()
                    .map(|(name, lease)| {
                        let holder = lease["spec"]["holderIdentity"].as_str().map(str::to_owned);
                        (name.clone(), holder)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets every Lease (between scenarios).
    pub fn clear(&self) {
        if let Ok(mut leases) = self.store.leases.lock() {
            leases.clear();
        }
    }
}

async fn read(State(store): State<Arc<Store>>, Path((_, name)): Path<(String, String)>) -> Reply {
    store.requests.fetch_add(1, Ordering::SeqCst);
    let Ok(leases) = store.leases.lock() else {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    };
    match leases.get(&name) {
        Some(lease) => reply(StatusCode::OK, lease),
        None => status(StatusCode::NOT_FOUND, "NotFound"),
    }
}

async fn replace(
    State(store): State<Arc<Store>>,
    Path((_, name)): Path<(String, String)>,
    body: String,
) -> Reply {
    store.requests.fetch_add(1, Ordering::SeqCst);
    let Ok(mut lease) = serde_json::from_str::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest");
    };
    let Ok(mut leases) = store.leases.lock() else {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    };
    let Some(current) = leases.get(&name) else {
        return status(StatusCode::NOT_FOUND, "NotFound");
    };
    let version = current["metadata"]["resourceVersion"].clone();
    if lease["metadata"]["resourceVersion"] != version {
        return status(StatusCode::CONFLICT, "Conflict");
    }
    let next = version
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    lease["metadata"]["resourceVersion"] = next.to_string().into();
    leases.insert(name, lease.clone());
    reply(StatusCode::OK, &lease)
}

async fn create(State(store): State<Arc<Store>>, body: String) -> Reply {
    store.requests.fetch_add(1, Ordering::SeqCst);
    let Ok(mut lease) = serde_json::from_str::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest");
    };
    let Some(name) = lease["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest");
    };
    let Ok(mut leases) = store.leases.lock() else {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    };
    if leases.contains_key(&name) {
        return status(StatusCode::CONFLICT, "AlreadyExists");
    }
    lease["metadata"]["resourceVersion"] = "1".into();
    leases.insert(name, lease.clone());
    reply(StatusCode::CREATED, &lease)
}
