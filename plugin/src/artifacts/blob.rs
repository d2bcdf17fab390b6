//! The blob request, sent on our own HTTP client like the manifest's ([`Registry::blob`]).
//!
//! oci-client builds its HTTP client itself from its `ClientConfig` and takes no TLS
//! configuration of ours, so it could not check certificates as containerd does (see
//! [`tls`](super::tls)); blobs go through the same client, TLS settings and authorization as
//! manifests. The caller streams and verifies the body (`download.rs`, `store/signature.rs`).

use oci_client::Reference;
use reqwest::StatusCode;

use super::challenge::Challenge;
use super::fetch::{authorize, read_at_most, registry_error, transport};
use super::registry::{Failure, Registry};

/// Error bodies are read only to quote the registry's error codes.
const MAX_ERROR_BODY: u64 = 64 << 10;

impl Registry {
    /// `GET /v2/<repo>/blobs/<digest>`, from byte `offset` when given (a `Range` request): the
    /// response, 200 (the whole blob) or 206 (from `offset`). A 401 is answered once, as for
    /// manifests: the challenge's token (or basic credentials) is then presented, also on the
    /// next blobs; a token is asked for again once its `expires_in` has passed (a long pull).
    pub(crate) async fn blob(
        &self,
        reference: &Reference,
        digest: &str,
        offset: Option<u64>,
    ) -> Result<reqwest::Response, Failure> {
        let url = blob_url(self, reference, digest);
        if let Some(challenge) = self.expired() {
            tracing::debug!(runtime_class = %self.context.class, registry = %self.context.registry, "registry token expired; asking for another");
            authorize(self, reference, Some(&challenge)).await?;
        }
        let mut response = get(self, &url, offset).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            authorize(self, reference, Challenge::of(&response).as_ref()).await?;
            response = get(self, &url, offset).await?;
            if response.status() == StatusCode::UNAUTHORIZED {
                return Err(Failure::Permanent(self.context.denied(401)));
            }
        }
        let status = response.status();
        if status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT {
            return Ok(response);
        }
        let body = match read_at_most(self, response, MAX_ERROR_BODY).await {
            Ok(Ok(body)) => body,
            _ => bytes::Bytes::new(),
        };
        Err(self.context.failure(registry_error(status, &body, &url)))
    }
}

impl Registry {
    /// A whole blob, at most `limit` bytes: `Ok(Err(n))` when it goes beyond (n: bytes read).
    /// Not verified: that is the caller's.
    pub(crate) async fn blob_at_most(
        &self,
        reference: &Reference,
        digest: &str,
        limit: u64,
    ) -> Result<Result<bytes::Bytes, u64>, Failure> {
        let response = self.blob(reference, digest, None).await?;
        read_at_most(self, response, limit).await
    }
}

/// `<scheme>://<host>/v2/<repo>/blobs/<digest>`, with containerd's `?ns=<registry>` for a
/// mirror (the URL oci-client builds).
fn blob_url(registry: &Registry, reference: &Reference, digest: &str) -> String {
    let ns = reference
        .namespace()
        .map(|ns| format!("?ns={ns}"))
        .unwrap_or_default();
    format!(
        "{}://{}/v2/{}/blobs/{digest}{ns}",
        registry.scheme(),
        reference.resolve_registry(),
        reference.repository()
    )
}

async fn get(
    registry: &Registry,
    url: &str,
    offset: Option<u64>,
) -> Result<reqwest::Response, Failure> {
    // A redirect (to a storage backend) keeps the Range header; reqwest drops Authorization
    // when it leaves the registry's host, as containerd does.
    let mut request = registry.http.get(url);
    if let Some(offset) = offset {
        request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    if let Some(authorization) = registry.authorization() {
        request = request.header(reqwest::header::AUTHORIZATION, authorization.expose());
    }
    request.send().await.map_err(|e| transport(registry, &e))
}
