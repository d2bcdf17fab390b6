//! Why artifacts could not be installed. Every message names the runtime class and, where there
//! is one, the registry and reference, and says what an operator can do about it
//! (`docs/artifacts.md` lists them all).

use std::fmt;
use std::path::PathBuf;

use crate::config::ByteSize;

/// The result of artifact operations.
pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// Which credentials were used, for the hint of an authorization error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthHint {
    /// No `pullSecret` is configured for the class.
    Anonymous,
    /// The class's `pullSecret` (a secret name) had an entry for the registry.
    Secret(String),
    /// The class's `pullSecret` has no entry for the registry.
    SecretWithoutEntry(String),
}

impl fmt::Display for AuthHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthHint::Anonymous => f.write_str(
                "the registry needs credentials: set artifacts.pullSecret for this class",
            ),
            AuthHint::Secret(name) => write!(f, "check pullSecret {name:?}"),
            AuthHint::SecretWithoutEntry(name) => write!(
                f,
                "pullSecret {name:?} has no credentials for this registry: add an `auths` entry for it"
            ),
        }
    }
}

impl AuthHint {
    /// What to do when the registry (or its token service) knows who we are, or that we are
    /// anonymous, and still refuses the repository.
    fn forbidden(&self) -> String {
        match self {
            AuthHint::Anonymous => "anonymous pulls of this repository are not allowed: set artifacts.pullSecret for this class".into(),
            AuthHint::Secret(name) => format!(
                "the account of pullSecret {name:?} may not pull this repository: grant it pull access, or use another secret"
            ),
            AuthHint::SecretWithoutEntry(name) => format!(
                "pullSecret {name:?} has no credentials for this registry and anonymous pulls of this repository are not allowed: add an `auths` entry for it"
            ),
        }
    }
}

/// Why a runtime class's artifacts could not be pulled, verified or installed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("pulling {class}: registry {registry} answered {status} for {reference}: {hint}")]
    Unauthorized {
        class: String,
        registry: String,
        reference: String,
        status: u16,
        hint: AuthHint,
    },
    /// Authenticated (or anonymous) and still refused: a 403, a token service that refuses the
    /// scope, or distribution's 401 `insufficient_scope` for a token without pull access.
    #[error(
        "pulling {class}: registry {registry} answered {status} for {reference}{detail}: {}",
        hint.forbidden()
    )]
    Forbidden {
        class: String,
        registry: String,
        reference: String,
        status: u16,
        /// Who refused and how, e.g. ` (insufficient_scope: the token grants no pull)`.
        detail: Box<str>,
        /// Boxed with `detail` to keep the error enum small (clippy's `result_large_err`).
        hint: Box<AuthHint>,
    },
    #[error(
        "pulling {class}: registry {registry} sent a manifest of {}{size} bytes for {reference}, more than the {limit} bytes containerd accepts: refused {} (the artifact is broken or the registry hostile)",
        if *announced { "" } else { "at least " },
        if *announced { "before reading it" } else { "after reading the first bytes beyond the cap" }
    )]
    ManifestTooLarge {
        class: String,
        registry: String,
        reference: String,
        /// The announced `Content-Length`, or what was read before giving up.
        size: u64,
        announced: bool,
        limit: u64,
    },
    #[error(
        "pulling {class}: {reference} not found in registry {registry} (404): check the tag or digest in artifacts.url"
    )]
    NotFound {
        class: String,
        registry: String,
        reference: String,
    },
    #[error("pulling {class}: registry {registry} refused {reference}: {message}")]
    Registry {
        class: String,
        registry: String,
        reference: String,
        message: String,
    },
    #[error(
        "pulling {class}: registry {registry} unreachable for {reference} after {attempts} attempts: {message}{}",
        tls_hint(*.insecure)
    )]
    Unreachable {
        class: String,
        registry: String,
        reference: String,
        attempts: u32,
        message: String,
        /// Whether the registry is listed in `registries.insecure` (reached over plain HTTP).
        insecure: bool,
    },
    #[error(
        "pulling {class}: {reference} resolves to {actual}, but the config pins {pinned}: update artifacts.digest (or the digest in artifacts.url) if the new artifact is intended"
    )]
    PinnedDigestMismatch {
        class: String,
        reference: String,
        pinned: String,
        actual: String,
    },
    #[error(
        "pulling {class}: digest mismatch for layer {layer} of {reference}: registry sent {actual}, manifest says {expected}"
    )]
    DigestMismatch {
        class: String,
        reference: String,
        layer: String,
        expected: String,
        actual: String,
    },
    #[error(
        "pulling {class}: layer {layer} of {reference} is larger than the {expected} bytes its manifest announces: registry sent at least {received}"
    )]
    Oversized {
        class: String,
        reference: String,
        layer: String,
        expected: u64,
        received: u64,
    },
    #[error(
        "pulling {class}: {reference} is {total} ({} bytes), more than limits.maxArtifactBytes {limit} ({} bytes): raise the limit if this artifact is expected",
        total.bytes(), limit.bytes()
    )]
    TooLarge {
        class: String,
        reference: String,
        total: ByteSize,
        limit: ByteSize,
    },
    #[error(
        "pulling {class}: {} has {available} bytes free, {reference} needs {needed} (twice the {total} bytes it adds to the store): free disk space",
        dir.display()
    )]
    NoSpace {
        class: String,
        reference: String,
        dir: PathBuf,
        total: u64,
        needed: u64,
        available: u64,
    },
    #[error("pulling {class}: {reference} has no manifest for {platform} (it has: {available})")]
    NoPlatform {
        class: String,
        reference: String,
        platform: String,
        available: String,
    },
    #[error("pulling {class}: {reference} is not a usable artifact: {why}")]
    BadManifest {
        class: String,
        reference: String,
        why: String,
    },
    #[error("installing {class}: layer {layer} of {reference}: refused {entry:?}: {why}")]
    UnsafeEntry {
        class: String,
        reference: String,
        layer: String,
        entry: String,
        why: String,
    },
    #[error("installing {class}: layer {layer} of {reference} cannot be unpacked: {why}")]
    BadLayer {
        class: String,
        reference: String,
        layer: String,
        why: String,
    },
    #[error("pulling {class}: pullSecret {secret:?} ({}): {why}", path.display())]
    PullSecret {
        class: String,
        secret: String,
        path: PathBuf,
        why: String,
    },
    /// The class's pull secret, read through the Kubernetes API, is absent, forbidden or not a
    /// docker config.
    #[error("pulling {class}: {error}")]
    PullSecretApi {
        class: String,
        error: super::pull_secrets::PullSecretError,
    },
    #[error("pulling {class}: registries.caFile {}: {why}", path.display())]
    CaFile {
        class: String,
        path: PathBuf,
        why: String,
    },
    #[error(
        "pulling {class}: CA {} for registry {registry} (from containerd's hosts.toml or certs.d): {why}",
        path.display()
    )]
    HostCa {
        class: String,
        registry: String,
        path: PathBuf,
        why: String,
    },
    #[error(
        "pulling {class}: registry host configuration for {registry}: {why}: fix the file (containerd's certs.d layout) or set registries.hostsDir"
    )]
    Hosts {
        class: String,
        registry: String,
        why: String,
    },
    #[error(
        "pulling {class}: {} lists no endpoint that can pull {reference}: give one the \"pull\" capability (and \"resolve\" for a tag)",
        file.display()
    )]
    NoEndpoint {
        class: String,
        reference: String,
        file: PathBuf,
    },
    #[error("pulling {class}: no endpoint served {reference}: {tried}")]
    Endpoints {
        class: String,
        reference: String,
        /// What each endpoint answered, in the order they were tried.
        tried: String,
    },
    #[error("pulling {class}: cannot set up a client for registry {registry}: {why}")]
    Client {
        class: String,
        registry: String,
        why: String,
    },
    #[error("installing {class}: kata configuration {}: {why}", file.display())]
    KataConfig {
        class: String,
        file: PathBuf,
        why: String,
    },
    #[error(
        "installing {class}: {} exists and is not a link made by kata-nri-manager: move it away",
        path.display()
    )]
    NotManaged { class: String, path: PathBuf },
    #[error(
        "pulling {class}: {reference} is not under any of registries.allowed ({allowed}): add its registry there or pull from an allowed one"
    )]
    NotAllowed {
        class: String,
        reference: String,
        allowed: String,
    },
    #[error("{class}: {reference} not made current (versionSkew: refuse): {skew}")]
    VersionSkew {
        class: String,
        reference: String,
        skew: Box<super::skew::Skew>,
    },
    #[error("verifying {class}: {reference} ({digest}) is refused: {why}")]
    Signature {
        class: String,
        reference: String,
        digest: String,
        why: String,
    },
    #[error(
        "installing {class}: version {digest} is installed for class {other} {}runtime.fromArtifact, and one version's kata configurations name either the node's programs or its own: give both classes the same setting, or artifacts that differ",
        if *other_from_artifact { "with " } else { "without " }
    )]
    SharedVersion {
        class: String,
        digest: String,
        other: String,
        other_from_artifact: bool,
    },
    #[error("rolling back {class}: {why}")]
    Rollback { class: String, why: String },
    #[error("{class}: not a runtime class of the config (known: {known})")]
    UnknownClass { class: String, known: String },
    #[error("installing {class}: {action} {}", path.display())]
    Io {
        class: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installing {class}: the pull task failed: {why}")]
    Task { class: String, why: String },
}

fn tls_hint(insecure: bool) -> &'static str {
    if insecure {
        ""
    } else {
        " (TLS is used: a plain-HTTP registry must be listed in registries.insecure; a private CA goes in registries.caFile)"
    }
}

impl ArtifactError {
    /// The runtime class the error is about.
    pub fn class(&self) -> &str {
        match self {
            ArtifactError::Unauthorized { class, .. }
            | ArtifactError::Forbidden { class, .. }
            | ArtifactError::ManifestTooLarge { class, .. }
            | ArtifactError::NotFound { class, .. }
            | ArtifactError::Registry { class, .. }
            | ArtifactError::Unreachable { class, .. }
            | ArtifactError::PinnedDigestMismatch { class, .. }
            | ArtifactError::DigestMismatch { class, .. }
            | ArtifactError::Oversized { class, .. }
            | ArtifactError::TooLarge { class, .. }
            | ArtifactError::NoSpace { class, .. }
            | ArtifactError::NoPlatform { class, .. }
            | ArtifactError::BadManifest { class, .. }
            | ArtifactError::UnsafeEntry { class, .. }
            | ArtifactError::BadLayer { class, .. }
            | ArtifactError::PullSecret { class, .. }
            | ArtifactError::PullSecretApi { class, .. }
            | ArtifactError::CaFile { class, .. }
            | ArtifactError::HostCa { class, .. }
            | ArtifactError::Hosts { class, .. }
            | ArtifactError::NoEndpoint { class, .. }
            | ArtifactError::Endpoints { class, .. }
            | ArtifactError::Client { class, .. }
            | ArtifactError::KataConfig { class, .. }
            | ArtifactError::NotManaged { class, .. }
            | ArtifactError::NotAllowed { class, .. }
            | ArtifactError::UnknownClass { class, .. }
            | ArtifactError::Rollback { class, .. }
            | ArtifactError::Signature { class, .. }
            | ArtifactError::SharedVersion { class, .. }
            | ArtifactError::VersionSkew { class, .. }
            | ArtifactError::Io { class, .. }
            | ArtifactError::Task { class, .. } => class,
        }
    }

    /// The artifact reached the node whole and as its manifest says, and its content is
    /// refused: pulling it again fails the same way, from any mirror that serves the same bytes.
    /// Everything else (the registry, the network, the node's pull settings, the disk) may pass
    /// on another try or another source.
    pub fn refused_at_install(&self) -> bool {
        matches!(
            self,
            ArtifactError::TooLarge { .. }
                | ArtifactError::NoPlatform { .. }
                | ArtifactError::BadManifest { .. }
                | ArtifactError::UnsafeEntry { .. }
                | ArtifactError::BadLayer { .. }
                | ArtifactError::KataConfig { .. }
                | ArtifactError::VersionSkew { .. }
                | ArtifactError::Signature { .. }
                | ArtifactError::SharedVersion { .. }
        )
    }
}
