//! Which endpoint serves a pull: the registry's `hosts.toml` endpoints in order, then the
//! upstream. The first that answers with the manifest serves the whole pull (its blobs too);
//! one that is down, answers 404, refuses us or sends a bad manifest is passed over with a
//! warning, and when none serves, the error says what each one answered.

use oci_client::Reference;

use super::error::{ArtifactError, Result};
use super::hosts::{self, Endpoint};
use super::pull_secrets::{Loaded, PullSecrets};
use super::registry::{Registry, RetryPolicy};
use super::settings::StoreSettings;
use crate::config::{OciReference, RuntimeClass};

/// Attempts at an endpoint that has another after it: a mirror that is down should cost a
/// pull seconds, not the full backoff of the last endpoint.
const ATTEMPTS_BEFORE_NEXT: u32 = 2;

/// The endpoint that answered, with what it answered.
pub(crate) struct Served {
    pub registry: Registry,
    /// The reference as this endpoint serves it (a mirror's host, for a mirror).
    pub reference: Reference,
    pub body: bytes::Bytes,
    pub digest: String,
}

/// Fetches the manifest `class`'s source names from the first endpoint that serves it.
///
/// `by_digest`: fetch this digest rather than what the reference names (a repair pulls the
/// recorded version again, never a newer one).
///
/// When an endpoint refuses the class's pull secret (401/403) and that secret is a cached copy
/// read through the Kubernetes API, the Secret is read again and, if it changed (a rotated
/// password), the endpoints are tried once more with it.
pub(crate) async fn resolve(
    class: &RuntimeClass,
    settings: &StoreSettings,
    secrets: &PullSecrets,
    by_digest: Option<&str>,
) -> Result<Served> {
    let source = &class.artifacts.url;
    let registry = source.registry();
    let hosts = hosts::lookup(
        &settings.hosts_dirs,
        registry,
        settings.registries.is_insecure(registry),
    )
    .map_err(|e| ArtifactError::Hosts {
        class: class.name.clone(),
        registry: registry.to_owned(),
        why: e.to_string(),
    })?;
    let digest_only = by_digest.is_some() || source.digest().is_some();
    let candidates: Vec<&Endpoint> = hosts
        .endpoints
        .iter()
        .filter(|endpoint| usable(endpoint, digest_only))
        .collect();
    if candidates.is_empty() {
        return Err(ArtifactError::NoEndpoint {
            class: class.name.clone(),
            reference: source.as_str().to_owned(),
            file: hosts.source.clone().unwrap_or_default(),
        });
    }
    // Read once for every endpoint: the class's secret is broken for all of them alike.
    let secret = secrets.load(class).await?;
    let (result, refused) =
        try_endpoints(class, settings, &candidates, secret.as_ref(), by_digest).await;
    let Some(stale) =
        secret.filter(|stale| refused && result.is_err() && secrets.invalidate(stale))
    else {
        return result;
    };
    // A Secret read after the refusal: a missing or forbidden one now says more than the
    // registry's 401 did.
    let fresh = secrets.load(class).await?;
    if fresh
        .as_ref()
        .is_some_and(|fresh| fresh.same_version(&stale))
    {
        // The registry would refuse the same Secret again.
        return result;
    }
    tracing::warn!(secret = %stale.name, "registry refused the cached pull secret; read it again, retrying the pull with it");
    try_endpoints(class, settings, &candidates, fresh.as_ref(), by_digest)
        .await
        .0
}

/// Tries `candidates` in order; also says whether one of them refused the credentials (or
/// anonymous access: a Secret with no entry for a registry may have gained one).
async fn try_endpoints(
    class: &RuntimeClass,
    settings: &StoreSettings,
    candidates: &[&Endpoint],
    secret: Option<&Loaded>,
    by_digest: Option<&str>,
) -> (Result<Served>, bool) {
    let source = &class.artifacts.url;
    let mut failures = Vec::new();
    let mut refused = false;
    for (i, endpoint) in candidates.iter().enumerate() {
        let last = i + 1 == candidates.len();
        let retry = if last {
            settings.retry
        } else {
            RetryPolicy {
                attempts: settings.retry.attempts.min(ATTEMPTS_BEFORE_NEXT),
                ..settings.retry
            }
        };
        let result = fetch(class, source, endpoint, settings, secret, retry, by_digest).await;
        refused |= matches!(
            result,
            Err(ArtifactError::Unauthorized { .. } | ArtifactError::Forbidden { .. })
        );
        match result {
            Ok(served) => {
                tracing::info!(served_by = %endpoint.host, mirror = endpoint.mirror, digest = %served.digest, "manifest resolved");
                return (Ok(served), refused);
            }
            // The class's secret is broken for every endpoint alike.
            Err(e @ ArtifactError::PullSecret { .. } | e @ ArtifactError::PullSecretApi { .. }) => {
                return (Err(e), refused);
            }
            // Without mirrors the registry's own error is the clearest.
            Err(e) if candidates.len() == 1 => return (Err(e), refused),
            Err(e) => {
                if !last {
                    tracing::warn!(endpoint = %endpoint.host, mirror = endpoint.mirror, error = %e, "endpoint did not serve the manifest; trying the next");
                }
                failures.push(format!(
                    "{}: {}",
                    endpoint.label(),
                    without_prefix(&e, class)
                ));
            }
        }
    }
    let error = ArtifactError::Endpoints {
        class: class.name.clone(),
        reference: source.as_str().to_owned(),
        tried: failures.join("; "),
    };
    (Err(error), refused)
}

/// Whether `endpoint` may serve this pull: it must be addressable, serve blobs, and resolve
/// tags unless the reference has a digest (containerd's capability rules).
fn usable(endpoint: &Endpoint, by_digest: bool) -> bool {
    if !endpoint.ignored.is_empty() {
        // Once per endpoint and settings: every pull reads hosts.toml again, and the same
        // warning on each would bury the others.
        type Warned = std::collections::HashSet<(String, Vec<&'static str>)>;
        static WARNED: std::sync::LazyLock<std::sync::Mutex<Warned>> =
            std::sync::LazyLock::new(Default::default);
        let first = WARNED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((endpoint.host.clone(), endpoint.ignored.clone()));
        if first {
            tracing::warn!(endpoint = %endpoint.host, settings = ?endpoint.ignored, "hosts.toml settings not applied to artifact pulls");
        } else {
            tracing::debug!(endpoint = %endpoint.host, settings = ?endpoint.ignored, "hosts.toml settings not applied to artifact pulls");
        }
    }
    if let Some(why) = &endpoint.unusable {
        tracing::warn!(endpoint = %endpoint.host, reason = %why, "hosts.toml endpoint skipped");
        return false;
    }
    endpoint.pull && (by_digest || endpoint.resolve)
}

async fn fetch(
    class: &RuntimeClass,
    source: &OciReference,
    endpoint: &Endpoint,
    settings: &StoreSettings,
    secret: Option<&Loaded>,
    retry: RetryPolicy,
    by_digest: Option<&str>,
) -> Result<Served> {
    let registry = Registry::connect(class, source, endpoint, &settings.registries, secret, retry)?;
    let mut reference = registry.reference(source);
    if let Some(digest) = by_digest {
        reference = reference.clone_with_digest(digest.to_owned());
    }
    let (body, digest) = registry.manifest(&reference).await?;
    Ok(Served {
        registry,
        reference,
        body,
        digest,
    })
}

/// An endpoint's error without the `pulling <class>: ` every message starts with, for a list.
fn without_prefix(error: &ArtifactError, class: &RuntimeClass) -> String {
    let text = error.to_string();
    text.strip_prefix(&format!("pulling {}: ", class.name))
        .map(str::to_owned)
        .unwrap_or(text)
}
