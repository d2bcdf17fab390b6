//! A registry that lies: it answers every manifest request with the bytes a test gives it,
//! whatever their size, with or without announcing their length. distribution itself refuses to
//! store or serve a manifest over 4 MiB, so a hostile registry has to be one of our own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;

use crate::http1::{Response, Server};

/// Serves `/v2/` and `/v2/<repo>/manifests/<anything>` on `127.0.0.1:<port>`, plain HTTP.
pub struct LyingRegistry {
    server: Server,
    manifest_requests: Arc<AtomicUsize>,
}

impl LyingRegistry {
    /// `announce_length: false` sends the body chunked, so only reading it tells its size.
    pub fn serving_manifest(manifest: Vec<u8>, announce_length: bool) -> Result<Self> {
        let manifest_requests = Arc::new(AtomicUsize::new(0));
        let counted = manifest_requests.clone();
        let server = Server::start("lying-registry", move |request| {
            if request.path == "/v2/" {
                return Response::json(200, &serde_json::json!({}));
            }
            if request.path.starts_with("/v2/") && request.path.contains("/manifests/") {
                counted.fetch_add(1, Ordering::Relaxed);
                return Response {
                    status: 200,
                    headers: vec![(
                        "Content-Type".into(),
                        "application/vnd.oci.image.manifest.v1+json".into(),
                    )],
                    body: manifest.clone(),
                    chunked: !announce_length,
                };
            }
            Response::json(
                404,
                &serde_json::json!({"errors": [{"code": "NOT_FOUND", "message": "no such thing"}]}),
            )
        })?;
        Ok(Self {
            server,
            manifest_requests,
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.server.host()
    }

    pub fn manifest_requests(&self) -> usize {
        self.manifest_requests.load(Ordering::Relaxed)
    }
}
