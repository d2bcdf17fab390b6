//! Runtime class artifacts: pulled from OCI registries, verified while they stream to disk,
//! and installed atomically (`docs/artifacts.md`; the layout is drawn in `docs/architecture.md`,
//! "Store layout").
//!
//! Layout under `artifactsDir`:
//! - `.store/<manifest digest>/`: one installed version, immutable once renamed into place;
//! - `.store/blobs/sha256/<hex>`: every layer once, verified and read-only; versions link
//!   their titled files to them and unpack their tar layers from them (`blobs.rs`);
//! - `.store/<digest>/kata-nri-manager.toml`: a link to the artifact's one top-level `*.toml`,
//!   the configuration of classes without `runtime.configFile` ([`DEFAULT_CONFIG_NAME`]);
//! - `<class>`: a symlink to `.store/<digest>`, switched atomically (temp link + rename);
//! - `.staging/<random>/`: a pull in progress (same filesystem, so the install is a rename);
//!   removed whatever happens;
//! - `.state/<class>.json`: what is installed, with the digests of the files as installed, and
//!   the versions kept for `rollback` and those retired until no sandbox runs on them.
//!
//! [`ArtifactStore::ensure`] makes a class's artifacts current: one manifest request when
//! nothing changed, one pull shared by every concurrent caller otherwise.

mod auth;
mod blob;
mod blobs;
mod challenge;
mod cosign;
mod digest;
mod download;
mod error;
mod fetch;
mod hostpaths;
mod hosts;
mod kataconf;
mod katakeys;
mod manifest;
mod mirrors;
mod paths;
mod progress;
mod pull_secrets;
mod registry;
mod secret;
mod settings;
mod skew;
mod slots;
mod staging;
mod state;
mod store;
mod tls;
mod unpack;
mod versions;

pub use auth::{AuthFileError, Credentials, DockerConfig, canonical_host};
pub use error::{ArtifactError, AuthHint, Result};
pub use fetch::MAX_MANIFEST_BYTES;
pub use kataconf::{
    DEFAULT_CONFIG_NAME, KataConfigError, PATH_KEYS as KATA_PATH_KEYS,
    SETTINGS_DIR as KATA_SETTINGS_DIR, apply_settings as apply_kata_settings,
    config_file as kata_config_file, config_path as kata_config_path,
    settings_fingerprint as kata_settings_fingerprint, settings_path as kata_settings_path,
};
pub use progress::{NoProgress, PullObserver};
pub use pull_secrets::{PullSecretError, PullSecrets};
pub use registry::RetryPolicy;
pub use secret::Secret;
pub use settings::StoreSettings;
pub use skew::{KATA_VERSION_ANNOTATION, Skew};
pub use slots::{HeldSlot, PullSlots, PullTurn, SlotSource};
pub use state::{ClassState, FileRecord, VersionRecord};
pub use store::{ArtifactStore, BlobsCollected, Freshness, Installed, RolledBack};
pub use versions::SandboxAge;
