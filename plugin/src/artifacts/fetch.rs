//! The manifest request, sent by us rather than by oci-client, and its retries
//! ([`Registry::manifest`]).
//!
//! oci-client's `pull_manifest_raw` reads the whole body into memory whatever its size, so a
//! hostile registry could make us buffer gigabytes. We send the GET on our own HTTP client (the
//! one blobs use, with containerd's TLS rules: `tls.rs`), refuse a `Content-Length` beyond containerd's cap before
//! reading the body, and stop reading at the cap when no length is announced. A HEAD first
//! would not bound anything: the GET that follows may send something else.
//!
//! Authorization follows the registry's 401 challenge: `Bearer` sends the pull secret's user
//! and password to the token service (the realm) and presents the token it issues; `Basic`
//! sends them to the registry. Doing the exchange here lets errors say who refused and how
//! (oci-client drops a failed token request and reports the registry's plain 401 instead).
//! Blobs go through the same client and authorization (`blob.rs`), so a pull asks the token
//! service once, and again only when that token expires (a long pull).

use std::time::Duration;

use base64::Engine;
use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use reqwest::StatusCode;
use sha2::Digest as _;

use super::auth::Credentials;
use super::challenge::Challenge;
use super::error::ArtifactError;
use super::manifest;
use super::registry::{Failure, Registry};
use super::secret::Secret;

/// containerd's `MaxManifestSize` (`core/remotes/docker/resolver.go`): `4 * 1048 * 1048` bytes
/// (sic: not 4 MiB). containerd refuses to resolve a larger manifest, so a kata artifact that
/// containerd could not pull as an image is refused here too.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1048 * 1048;
/// Error bodies are read only to quote the registry's error codes.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// A token service's answer is a JWT of a few KiB.
const MAX_TOKEN_BODY: u64 = 1 << 20;

impl Registry {
    /// Fetches a manifest (by tag or digest), at most [`MAX_MANIFEST_BYTES`]; returns its
    /// body and digest, checked against the reference's digest and the registry's
    /// `Docker-Content-Digest`.
    pub async fn manifest(
        &self,
        reference: &Reference,
    ) -> super::error::Result<(bytes::Bytes, String)> {
        let mut attempt = 1;
        loop {
            match manifest(self, reference).await {
                Ok(found) => return Ok(found),
                Err(Failure::Permanent(e)) => return Err(e),
                Err(Failure::Transient(why)) if attempt >= self.retry.attempts => {
                    return Err(self.context.unreachable(attempt, why));
                }
                Err(Failure::Transient(why)) => {
                    tracing::warn!(runtime_class = %self.context.class, registry = %self.context.registry, attempt, error = %why, "manifest request failed; retrying");
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// One manifest request (with at most one authorization round): the body and its digest.
async fn manifest(
    registry: &Registry,
    reference: &Reference,
) -> Result<(bytes::Bytes, String), Failure> {
    let url = manifest_url(registry, reference);
    let mut response = get(registry, &url).await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        authorize(registry, reference, Challenge::of(&response).as_ref()).await?;
        response = get(registry, &url).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(Failure::Permanent(
                match Challenge::of(&response).filter(Challenge::insufficient_scope) {
                    // distribution's answer when the token service issued a token without pull
                    // access for this repository (it never answers 403 to a token).
                    Some(_) => registry
                        .context
                        .forbidden(401, " (insufficient_scope: the token grants no pull)"),
                    None => registry.context.denied(401),
                },
            ));
        }
    }
    let status = response.status();
    if !status.is_success() {
        // An error body beyond the limit is not quoted; the status still classifies it.
        let body = match read_at_most(registry, response, MAX_ERROR_BODY).await {
            Ok(Ok(body)) => body,
            _ => bytes::Bytes::new(),
        };
        return Err(registry
            .context
            .failure(registry_error(status, &body, &url)));
    }
    if let Some(announced) = response.content_length()
        && announced > MAX_MANIFEST_BYTES
    {
        return Err(Failure::Permanent(too_large(registry, announced, true)));
    }
    let header_digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_at_most(registry, response, MAX_MANIFEST_BYTES)
        .await?
        .map_err(|read| Failure::Permanent(too_large(registry, read, false)))?;
    let digest =
        verify_digest(&body, header_digest.as_deref(), reference.digest()).map_err(|why| {
            Failure::Permanent(
                registry
                    .context
                    .refused(format!("the manifest does not match its digest: {why}")),
            )
        })?;
    Ok((body, digest))
}

/// `<scheme>://<host>/v2/<repo>/manifests/<tag or digest>`, with containerd's `?ns=<registry>`
/// for a mirror (as oci-client builds it).
fn manifest_url(registry: &Registry, reference: &Reference) -> String {
    let target = reference.digest().or(reference.tag()).unwrap_or("latest");
    let ns = reference
        .namespace()
        .map(|ns| format!("?ns={ns}"))
        .unwrap_or_default();
    format!(
        "{}://{}/v2/{}/manifests/{target}{ns}",
        registry.scheme(),
        reference.resolve_registry(),
        reference.repository()
    )
}

async fn get(registry: &Registry, url: &str) -> Result<reqwest::Response, Failure> {
    let mut request = registry
        .http
        .get(url)
        .header(reqwest::header::ACCEPT, manifest::ACCEPTED.join(", "));
    if let Some(authorization) = registry.authorization() {
        request = request.header(reqwest::header::AUTHORIZATION, authorization.expose());
    }
    request.send().await.map_err(|e| transport(registry, &e))
}

/// Sets the registry's authorization as its challenge asks.
pub(super) async fn authorize(
    registry: &Registry,
    reference: &Reference,
    challenge: Option<&Challenge>,
) -> Result<(), Failure> {
    let context = &registry.context;
    let denied = || Failure::Permanent(context.denied(401));
    let Some(challenge) = challenge else {
        return Err(denied());
    };
    match (challenge.scheme.as_str(), &registry.credentials) {
        // A docker config's `registrytoken` is presented as it is; refused, there is no other.
        (_, Credentials::Bearer(_)) => Err(denied()),
        ("bearer", credentials) => {
            let realm = challenge.param("realm").ok_or_else(denied)?;
            let scope = format!("repository:{}:pull", reference.repository());
            let (token, expires_in) = exchange(
                registry,
                credentials,
                realm,
                challenge.param("service"),
                &scope,
            )
            .await?;
            registry.set_authorization(Secret::new(format!("Bearer {}", token.expose())));
            registry.set_renewal(challenge.clone(), expires_in);
            Ok(())
        }
        ("basic", Credentials::Basic { username, password }) => {
            let pair = format!("{username}:{}", password.expose());
            registry.set_authorization(Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )));
            Ok(())
        }
        _ => Err(denied()),
    }
}

/// The Docker token protocol: `GET <realm>?service=…&scope=repository:<repo>:pull`, with the
/// pull secret's user and password as HTTP basic credentials (none for an anonymous pull).
async fn exchange(
    registry: &Registry,
    credentials: &Credentials,
    realm: &str,
    service: Option<&str>,
    scope: &str,
) -> Result<(Secret, Duration), Failure> {
    let context = &registry.context;
    // Shown in errors and logs without its query (the realm is the registry's to choose).
    let shown = realm.split('?').next().unwrap_or(realm).to_owned();
    let mut query = vec![("scope", scope)];
    if let Some(service) = service {
        query.push(("service", service));
    }
    let mut request = registry.http.get(realm).query(&query);
    if let Credentials::Basic { username, password } = credentials {
        // The realm is the registry's to choose; a password goes to it no less securely than
        // to the registry itself.
        if registry.scheme() == "https" && !realm.starts_with("https://") {
            return Err(Failure::Permanent(context.refused(format!(
                "its token service {shown} is not HTTPS: the pull secret's password is not sent there"
            ))));
        }
        request = request.basic_auth(username, Some(password.expose()));
    }
    tracing::debug!(runtime_class = %context.class, registry = %context.registry, realm = %shown, scope, "requesting a registry token");
    let response = request.send().await.map_err(|e| transport(registry, &e))?;
    let status = response.status();
    match status.as_u16() {
        200 => {}
        401 => return Err(Failure::Permanent(context.denied(401))),
        403 => {
            return Err(Failure::Permanent(context.forbidden(
                403,
                &format!(" (its token service {shown} refused the scope {scope})"),
            )));
        }
        408 | 429 | 500..=599 => {
            return Err(Failure::Transient(format!(
                "token service {shown} answered HTTP {status}"
            )));
        }
        _ => {
            return Err(Failure::Permanent(context.refused(format!(
                "its token service {shown} answered HTTP {status}"
            ))));
        }
    }
    let body = read_at_most(registry, response, MAX_TOKEN_BODY)
        .await?
        .map_err(|_| {
            Failure::Permanent(context.refused(format!(
                "its token service {shown} sent an oversized answer"
            )))
        })?;
    // The body holds the token: never quote it.
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<Secret>,
        access_token: Option<Secret>,
        expires_in: Option<u64>,
    }
    let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
        Failure::Permanent(context.refused(format!(
            "its token service {shown} sent something other than a token"
        )))
    })?;
    // The token specification's (and containerd's) default lifetime when none is given.
    let expires_in = Duration::from_secs(answer.expires_in.filter(|s| *s > 0).unwrap_or(60));
    let token = answer
        .token
        .or(answer.access_token)
        .filter(|token| !token.expose().is_empty())
        .ok_or_else(|| {
            Failure::Permanent(
                context.refused(format!("its token service {shown} sent an empty token")),
            )
        })?;
    Ok((token, expires_in))
}

/// Reads a body, at most `limit` bytes; `Ok(Err(n))` when it goes beyond (n: bytes read).
pub(super) async fn read_at_most(
    registry: &Registry,
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Result<bytes::Bytes, u64>, Failure> {
    let capacity = response.content_length().unwrap_or(0).min(limit);
    let mut body = bytes::BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport(registry, &e))?
    {
        let read = (body.len() + chunk.len()) as u64;
        if read > limit {
            return Ok(Err(read));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body.freeze()))
}

fn too_large(registry: &Registry, size: u64, announced: bool) -> ArtifactError {
    let context = &registry.context;
    ArtifactError::ManifestTooLarge {
        class: context.class.clone(),
        registry: context.registry.clone(),
        reference: context.reference.clone(),
        size,
        announced,
        limit: MAX_MANIFEST_BYTES,
    }
}

/// A connection error, a timeout or a body cut short: retried, except an untrusted certificate.
pub(super) fn transport(registry: &Registry, error: &reqwest::Error) -> Failure {
    let text = crate::errors::chain(error);
    if text.contains("certificate") {
        Failure::Permanent(registry.context.unreachable(1, text))
    } else {
        Failure::Transient(text)
    }
}

/// The error oci-client would make of this answer, so that one classification serves both.
pub(super) fn registry_error(status: StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    let message = String::from_utf8_lossy(body).into_owned();
    if status.is_client_error()
        && let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body)
    {
        return OciDistributionError::RegistryError {
            envelope,
            url: url.to_owned(),
        };
    }
    OciDistributionError::ServerError {
        code: status.as_u16(),
        url: url.to_owned(),
        message,
    }
}

/// Checks the body against the reference's digest and the registry's `Docker-Content-Digest`
/// (when they name an algorithm we know); returns the canonical digest (the reference's,
/// else the header's, else the body's sha256).
fn verify_digest(
    body: &[u8],
    header: Option<&str>,
    reference: Option<&str>,
) -> Result<String, String> {
    for expected in [reference, header].into_iter().flatten() {
        let actual = digest_of(body, expected)?;
        if actual != expected {
            return Err(format!("expected {expected}, got {actual}"));
        }
    }
    Ok(match reference.or(header) {
        Some(digest) => digest.to_owned(),
        None => format!("sha256:{}", super::digest::hex(&sha2::Sha256::digest(body))),
    })
}

/// The digest of `body` with the algorithm `like` names.
fn digest_of(body: &[u8], like: &str) -> Result<String, String> {
    let (algorithm, _) = like
        .split_once(':')
        .ok_or_else(|| format!("{like:?} is not a digest"))?;
    let hex = match algorithm {
        "sha256" => super::digest::hex(&sha2::Sha256::digest(body)),
        "sha384" => super::digest::hex(&sha2::Sha384::digest(body)),
        "sha512" => super::digest::hex(&sha2::Sha512::digest(body)),
        other => return Err(format!("unsupported digest algorithm {other:?}")),
    };
    Ok(format!("{algorithm}:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerds_cap() {
        assert_eq!(MAX_MANIFEST_BYTES, 4_393_216);
    }

    #[test]
    fn digests_are_checked_against_the_reference_and_the_header() {
        let body = b"{}";
        let good = format!(
            "sha256:{}",
            super::super::digest::hex(&sha2::Sha256::digest(body))
        );
        assert_eq!(verify_digest(body, None, None), Ok(good.clone()));
        assert_eq!(
            verify_digest(body, Some(&good), Some(&good)),
            Ok(good.clone())
        );
        let bad = format!("sha256:{}", "0".repeat(64));
        assert!(verify_digest(body, Some(&bad), None).is_err());
        assert!(verify_digest(body, None, Some(&bad)).is_err());
        assert!(verify_digest(body, Some("md5:x"), None).is_err());
        let sha512 = digest_of(body, "sha512:").expect("sha512");
        assert_eq!(verify_digest(body, Some(&good), Some(&sha512)), Ok(sha512));
    }
}
