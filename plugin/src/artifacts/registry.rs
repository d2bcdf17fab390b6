//! Talking to one registry endpoint for one class: the client (TLS, CA bundles, plain HTTP only
//! for `registries.insecure` or an `http://` host of containerd's `hosts.toml`), credentials from
//! the class's pull secret for the host contacted, and the translation of registry answers
//! into [`ArtifactError`]s. Manifest requests, with their retries, are `fetch.rs`'s, blob
//! requests `blob.rs`'s, certificate checks `tls.rs`'s.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciErrorCode};

use super::auth::Credentials;
use super::challenge::Challenge;
use super::error::{ArtifactError, AuthHint, Result};
use super::hosts::Endpoint;
use super::pull_secrets::Loaded;
use super::secret::Secret;
use super::tls;
use crate::config::{OciReference, Registries, RuntimeClass};

/// How often and how patiently transient failures (connection errors, 5xx, 429, bodies cut
/// short) are retried. Permanent ones (401, 403, 404, digest mismatch) never are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled each time up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// A failed registry call: what happened and whether trying again may help.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth retrying; the message says what happened.
    Transient(String),
    /// Not worth retrying.
    Permanent(ArtifactError),
}

/// What error messages need to know about the pull.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub class: String,
    pub registry: String,
    pub reference: String,
    pub hint: AuthHint,
    pub insecure: bool,
}

impl Context {
    /// Classifies an error of oci-client.
    pub fn failure(&self, error: OciDistributionError) -> Failure {
        match error {
            OciDistributionError::UnauthorizedError { .. } => Failure::Permanent(self.denied(401)),
            OciDistributionError::AuthenticationFailure(_) => Failure::Permanent(self.denied(401)),
            OciDistributionError::ServerError { code, message, .. } => self.status(code, &message),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let message = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    Failure::Transient(message)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    Failure::Permanent(self.not_found())
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized))
                {
                    Failure::Permanent(self.denied(401))
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Denied)) {
                    Failure::Permanent(self.forbidden(403, ""))
                } else {
                    Failure::Permanent(self.refused(message))
                }
            }
            OciDistributionError::RequestError(e) => {
                let text = crate::errors::chain(&e);
                // A certificate the client does not trust will not become trusted by retrying.
                if text.contains("certificate") {
                    Failure::Permanent(self.unreachable(1, text))
                } else {
                    Failure::Transient(text)
                }
            }
            OciDistributionError::IoError(e) => Failure::Transient(e.to_string()),
            OciDistributionError::DigestError(e) => Failure::Permanent(
                self.refused(format!("the manifest does not match its digest: {e}")),
            ),
            other => Failure::Permanent(self.refused(other.to_string())),
        }
    }

    fn status(&self, code: u16, message: &str) -> Failure {
        match code {
            401 => Failure::Permanent(self.denied(401)),
            403 => Failure::Permanent(self.forbidden(403, "")),
            404 => Failure::Permanent(self.not_found()),
            408 | 429 | 500..=599 => Failure::Transient(format!("HTTP {code}")),
            _ => Failure::Permanent(self.refused(format!("HTTP {code}: {}", message.trim()))),
        }
    }

    pub fn denied(&self, status: u16) -> ArtifactError {
        ArtifactError::Unauthorized {
            class: self.class.clone(),
            registry: self.registry.clone(),
            reference: self.reference.clone(),
            status,
            hint: self.hint.clone(),
        }
    }

    /// The credentials (or anonymous access) were accepted but may not pull the repository.
    /// `detail` follows the reference in the message (who refused, and how).
    pub fn forbidden(&self, status: u16, detail: &str) -> ArtifactError {
        ArtifactError::Forbidden {
            class: self.class.clone(),
            registry: self.registry.clone(),
            reference: self.reference.clone(),
            status,
            detail: detail.into(),
            hint: Box::new(self.hint.clone()),
        }
    }

    fn not_found(&self) -> ArtifactError {
        ArtifactError::NotFound {
            class: self.class.clone(),
            registry: self.registry.clone(),
            reference: self.reference.clone(),
        }
    }

    pub fn refused(&self, message: String) -> ArtifactError {
        ArtifactError::Registry {
            class: self.class.clone(),
            registry: self.registry.clone(),
            reference: self.reference.clone(),
            message,
        }
    }

    pub fn unreachable(&self, attempts: u32, message: String) -> ArtifactError {
        ArtifactError::Unreachable {
            class: self.class.clone(),
            registry: self.registry.clone(),
            reference: self.reference.clone(),
            attempts,
            message,
            insecure: self.insecure,
        }
    }
}

/// The client and credentials for one endpoint of the class's registry (the registry itself or
/// a mirror).
pub(crate) struct Registry {
    /// Our HTTP client: manifests (bounded, see `fetch`), blobs (`blob`), tokens. oci-client's
    /// own takes no TLS configuration of ours (see `tls`), so it sends nothing.
    pub http: reqwest::Client,
    pub credentials: Credentials,
    /// The `Authorization` header manifest and blob requests carry, once a challenge asked for one.
    authorization: Mutex<Option<Secret>>,
    /// The challenge a bearer token answered and when that token expires: blob requests ask for
    /// a new one first once it has, as containerd does (a registry may accept an expired token
    /// for a while, but not for ever).
    renewal: Mutex<Option<(Challenge, Instant)>>,
    pub context: Context,
    pub retry: RetryPolicy,
    /// A mirror: requests go to `context.registry` on behalf of the reference's registry.
    mirror: bool,
}

impl Registry {
    pub fn connect(
        class: &RuntimeClass,
        source: &OciReference,
        endpoint: &Endpoint,
        registries: &Registries,
        secret: Option<&Loaded>,
        retry: RetryPolicy,
    ) -> Result<Self> {
        let registry = endpoint.host.clone();
        // The host contacted, not the reference's: a mirror has credentials of its own.
        let (credentials, hint) = credentials(class, &registry, secret)?;
        let insecure = endpoint.plain_http;
        let mut roots = Vec::new();
        if let Some(ca_file) = &registries.ca_file {
            let data = std::fs::read(ca_file).map_err(|e| ArtifactError::CaFile {
                class: class.name.clone(),
                path: ca_file.clone(),
                why: e.to_string(),
            })?;
            roots.push(data);
        }
        for ca_file in &endpoint.ca_files {
            let data = std::fs::read(ca_file).map_err(|e| ArtifactError::HostCa {
                class: class.name.clone(),
                registry: registry.clone(),
                path: ca_file.clone(),
                why: e.to_string(),
            })?;
            roots.push(data);
        }
        // reqwest is built without a default crypto provider; install ring's once per process
        // (a second install is refused harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client_error = |e: String| ArtifactError::Client {
            class: class.name.clone(),
            registry: registry.clone(),
            why: {
                let files: Vec<String> = registries
                    .ca_file
                    .iter()
                    .chain(&endpoint.ca_files)
                    .map(|p| p.display().to_string())
                    .collect();
                if files.is_empty() {
                    e
                } else {
                    format!("{e} (are {} PEM bundles?)", files.join(", "))
                }
            },
        };
        // hosts.toml is root-owned node configuration, like registries.caFile.
        let http = http_client(endpoint.skip_verify, &roots).map_err(client_error)?;
        // A docker config's `registrytoken` goes to the registry as it is, from the first request.
        let authorization = match &credentials {
            Credentials::Bearer(token) => Some(Secret::new(format!("Bearer {}", token.expose()))),
            _ => None,
        };
        Ok(Self {
            http,
            credentials,
            authorization: Mutex::new(authorization),
            renewal: Mutex::new(None),
            context: Context {
                class: class.name.clone(),
                registry,
                reference: source.as_str().to_owned(),
                hint,
                insecure,
            },
            retry,
            mirror: endpoint.mirror,
        })
    }

    /// oci-client's reference for `source` as this endpoint serves it. For a mirror, requests
    /// go to the mirror (`Reference::resolve_registry`) with containerd's `?ns=<registry>`
    /// parameter.
    pub fn reference(&self, source: &OciReference) -> Reference {
        let mut reference = to_reference(source);
        if self.mirror {
            reference.set_mirror_registry(self.context.registry.clone());
        }
        reference
    }

    /// `tag` in the repository of `source`, as this endpoint serves it (cosign's `.sig` tag).
    pub fn tagged(&self, source: &OciReference, tag: &str) -> Reference {
        let mut reference = Reference::with_tag(
            source.registry().to_owned(),
            source.repository().to_owned(),
            tag.to_owned(),
        );
        if self.mirror {
            reference.set_mirror_registry(self.context.registry.clone());
        }
        reference
    }

    /// `http` or `https` for this endpoint.
    pub fn scheme(&self) -> &'static str {
        if self.context.insecure {
            "http"
        } else {
            "https"
        }
    }

    pub fn authorization(&self) -> Option<Secret> {
        self.authorization
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Remembers that the bearer token just set answers `challenge` for `lifetime`.
    pub fn set_renewal(&self, challenge: Challenge, lifetime: Duration) {
        *self
            .renewal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((challenge, Instant::now() + lifetime));
    }

    /// The challenge to answer again when the bearer token has expired.
    pub fn expired(&self) -> Option<Challenge> {
        self.renewal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .filter(|(_, expires)| Instant::now() >= *expires)
            .map(|(challenge, _)| challenge.clone())
    }

    pub fn set_authorization(&self, value: Secret) {
        *self
            .authorization
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(value);
    }
}

/// The user agent oci-client sent when it fetched blobs, kept for registries' logs.
const USER_AGENT: &str = "oci-client/0.18.0";

/// Our HTTP client for manifests, blobs and tokens. With CA files (and verification on), its
/// TLS is [`tls::client_config`]: what reqwest builds from them, plus containerd's acceptance
/// of a server certificate that is exactly one of them.
fn http_client(
    skip_verify: bool,
    roots: &[Vec<u8>],
) -> std::result::Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(Duration::from_secs(10))
        // A stalled transfer is a transient failure, retried (and resumed) like a cut one.
        .read_timeout(Duration::from_secs(60));
    if skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    } else if !roots.is_empty() {
        let configured = tls::certificates(roots).map_err(|e| e.to_string())?;
        let config = tls::client_config(configured).map_err(|e| e.to_string())?;
        builder = builder.tls_backend_preconfigured(config);
    }
    builder.build().map_err(|e| crate::errors::chain(&e))
}

/// oci-client's reference for ours (already normalised: registry, repository, tag, digest).
pub(crate) fn to_reference(source: &OciReference) -> Reference {
    let registry = source.registry().to_owned();
    let repository = source.repository().to_owned();
    match (source.tag(), source.digest()) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.to_owned(), digest.to_string())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_string()),
        (Some(tag), None) => Reference::with_tag(registry, repository, tag.to_owned()),
        (None, None) => Reference::with_tag(registry, repository, "latest".to_owned()),
    }
}

/// The class's credentials for `host` in its pull secret (`None`: it has none) and the hint an
/// authorization error gives.
fn credentials(
    class: &RuntimeClass,
    host: &str,
    secret: Option<&Loaded>,
) -> Result<(Credentials, AuthHint)> {
    let Some(secret) = secret else {
        return Ok((Credentials::Anonymous, AuthHint::Anonymous));
    };
    match secret
        .config
        .lookup(host)
        .map_err(|e| secret.error(class, e))?
    {
        Some(credentials) => Ok((credentials, AuthHint::Secret(secret.name.clone()))),
        None => Ok((
            Credentials::Anonymous,
            AuthHint::SecretWithoutEntry(secret.name.clone()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::pull_secrets::PullSecrets;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetryPolicy::default();
        assert_eq!(retry.delay(1), Duration::from_millis(500));
        assert_eq!(retry.delay(2), Duration::from_secs(1));
        assert_eq!(retry.delay(5), Duration::from_secs(8));
        assert_eq!(retry.delay(40), Duration::from_secs(8));
    }

    #[test]
    fn converts_references() {
        let source: OciReference = "127.0.0.1:5000/kata/artifacts:1.0".parse().expect("ref");
        let reference = to_reference(&source);
        assert_eq!(reference.registry(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "kata/artifacts");
        assert_eq!(reference.tag(), Some("1.0"));
    }

    /// k8s-kata-manager's setup behind a node mirror: the secret holds the upstream's
    /// credentials only, the mirror is asked anonymously, and a secret that is not mounted stops
    /// the pull with a message saying so.
    #[test]
    fn a_secret_for_the_upstream_leaves_an_anonymous_mirror_anonymous() {
        let source: OciReference =
            "stg.nvcr.io/nvidia/cloud-native/kata-gpu-artifacts:ubuntu22.04-525"
                .parse()
                .expect("ref");
        let class: RuntimeClass = serde_yaml::from_str(
            "{name: kata-qemu-nvidia-gpu, artifacts: {url: \"stg.nvcr.io/nvidia/cloud-native/kata-gpu-artifacts:ubuntu22.04-525\", pullSecret: my-pull-secret}}",
        )
        .expect("class");
        let secrets = tempfile::tempdir().expect("tempdir");
        let mut mirror = Endpoint::upstream("127.0.0.1:5000", true);
        mirror.mirror = true;
        let files = PullSecrets::files(secrets.path());
        let connect = |endpoint: &Endpoint| {
            let secret = files.load_file(&class)?;
            Registry::connect(
                &class,
                &source,
                endpoint,
                &Registries::default(),
                secret.as_ref(),
                RetryPolicy::default(),
            )
        };
        let error = connect(&mirror).err().expect("no secret mounted");
        let text = error.to_string();
        assert!(matches!(error, ArtifactError::PullSecret { .. }), "{text}");
        assert!(
            text.starts_with(&format!(
                "pulling kata-qemu-nvidia-gpu: pullSecret \"my-pull-secret\" ({}): no such file",
                secrets
                    .path()
                    .join("my-pull-secret/.dockerconfigjson")
                    .display()
            )),
            "{text}"
        );

        std::fs::create_dir_all(secrets.path().join("my-pull-secret")).expect("mkdir");
        std::fs::write(
            secrets.path().join("my-pull-secret/.dockerconfigjson"),
            r#"{"auths": {"stg.nvcr.io": {"username": "$oauthtoken", "password": "p"}}}"#,
        )
        .expect("secret");
        let registry = connect(&mirror).expect("connect");
        assert!(matches!(registry.credentials, Credentials::Anonymous));
        assert_eq!(registry.scheme(), "http");
        let upstream = connect(&Endpoint::upstream("stg.nvcr.io", false)).expect("connect");
        assert!(
            matches!(upstream.credentials, Credentials::Basic { ref username, .. } if username == "$oauthtoken")
        );
        assert_eq!(upstream.scheme(), "https");
    }

    #[test]
    fn a_mirror_gets_requests_and_credentials_of_its_own() {
        let source: OciReference = "registry.example:5000/kata/artifacts:1.0"
            .parse()
            .expect("ref");
        let class: RuntimeClass = serde_yaml::from_str(
            "{name: kata, artifacts: {url: \"registry.example:5000/kata/artifacts:1.0\", pullSecret: s}}",
        )
        .expect("class");
        let secrets = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(secrets.path().join("s")).expect("mkdir");
        std::fs::write(
            secrets.path().join("s/.dockerconfigjson"),
            r#"{"auths": {"mirror.example:5001": {"username": "m", "password": "p"}}}"#,
        )
        .expect("secret");
        let secret = PullSecrets::files(secrets.path())
            .load_file(&class)
            .expect("secret");
        let mut endpoint = Endpoint::upstream("mirror.example:5001", true);
        endpoint.mirror = true;
        let registry = Registry::connect(
            &class,
            &source,
            &endpoint,
            &Registries::default(),
            secret.as_ref(),
            RetryPolicy::default(),
        )
        .expect("connect");
        let reference = registry.reference(&source);
        assert_eq!(reference.resolve_registry(), "mirror.example:5001");
        assert_eq!(reference.registry(), "registry.example:5000");
        assert!(
            matches!(registry.credentials, Credentials::Basic { ref username, .. } if username == "m")
        );
        assert_eq!(registry.context.hint, AuthHint::Secret("s".into()));

        let upstream = Registry::connect(
            &class,
            &source,
            &Endpoint::upstream("registry.example:5000", false),
            &Registries::default(),
            secret.as_ref(),
            RetryPolicy::default(),
        )
        .expect("connect");
        assert_eq!(
            upstream.reference(&source).resolve_registry(),
            "registry.example:5000"
        );
        assert!(matches!(upstream.credentials, Credentials::Anonymous));
        assert_eq!(
            upstream.context.hint,
            AuthHint::SecretWithoutEntry("s".into())
        );
    }
}
