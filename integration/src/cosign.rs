//! Real cosign signatures in the test registry: Debian's `cosign` 2.5 (`KNM_COSIGN`) signs by
//! digest with a key pair it generates, the legacy way, with no transparency log and no network.
//!
//! What `cosign sign` stores (2.5, `--tlog-upload=false`), in the signed artifact's own
//! repository: an OCI image manifest tagged [`signature_tag`] (`sha256-<hex>.sig`) with one layer
//! of media type [`SIMPLE_SIGNING_MEDIA_TYPE`], whose annotation [`SIGNATURE_ANNOTATION`] holds
//! the base64 ECDSA P-256 signature of the layer's blob, the payload:
//! `{"critical":{"identity":{"docker-reference":"<host>/<repo>"},"image":{"docker-manifest-digest":
//! "sha256:…"},"type":"cosign container image signature"},"optional":null}`.
//! [`crate::Registry::signature_manifest`], [`crate::Registry::copy_signature`] and
//! [`crate::Registry::tamper_signature_payload`] read and forge them.
//!
//! ```no_run
//! use kata_nri_integration::{Cosign, Registry, RegistryOptions, e2e_guard};
//!
//! #[test]
//! fn signed() {
//!     let deps = e2e_guard!();
//!     let Some(cosign) = Cosign::require(&deps) else { return };
//!     let registry = Registry::start(&deps, RegistryOptions::plain()).unwrap();
//!     let digest = registry.push_files("a/b:v1", &[("f", b"x")]).unwrap();
//!     let key = cosign.generate_key_pair("test").unwrap();
//!     let reference = format!("{}/a/b@{digest}", registry.host());
//!     cosign.sign(&key, &reference).unwrap();
//!     cosign.verify(&key, &reference).unwrap();
//! }
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Deps, skip};

/// Media type of the layer of a cosign signature manifest.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// Annotation of that layer holding the base64 signature of its blob.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The password of every key pair generated here (`COSIGN_PASSWORD`).
pub const KEY_PASSWORD: &str = "knm-test";

/// How long one cosign command may take before it is killed (each takes well under a second
/// against a loopback registry).
const TIMEOUT: Duration = Duration::from_secs(60);

/// The tag cosign stores the signature of `digest` under: `sha256:<hex>` → `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// A key pair written by `cosign generate-key-pair`: the encrypted private key
/// (`<name>.key`, password [`KEY_PASSWORD`]) and the public key (`<name>.pub`, PEM).
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl KeyPair {
    /// The public key, PEM (`-----BEGIN PUBLIC KEY-----`, ECDSA P-256).
    pub fn public_pem(&self) -> Result<String> {
        fs::read_to_string(&self.public)
            .with_context(|| format!("reading {}", self.public.display()))
    }
}

/// The `cosign` binary with a private HOME, DOCKER_CONFIG and TUF_ROOT under a work directory,
/// and an otherwise empty environment: nothing reads or writes the real home, nothing reaches
/// the network (no transparency log, no TUF root), and no `COSIGN_*` variable of the caller's
/// environment (e.g. `COSIGN_REPOSITORY`) changes where signatures go.
#[derive(Debug)]
pub struct Cosign {
    binary: PathBuf,
    work_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Cosign {
    /// Uses `binary` with `work_dir` (created if missing) for its scratch home (`home/`, `docker/`,
    /// `tuf/`) and the key pairs (`keys/`).
    pub fn new(binary: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Result<Self> {
        let work_dir = work_dir.into();
        for sub in ["home", "docker", "tuf", "keys"] {
            fs::create_dir_all(work_dir.join(sub))
                .with_context(|| format!("creating {}", work_dir.join(sub).display()))?;
        }
        Ok(Self {
            binary: binary.into(),
            work_dir,
            _temp: None,
        })
    }

    /// `deps.cosign` in a fresh temporary work directory (removed on drop), or `None` after
    /// printing `SKIPPED: <test>: <reason>` when there is no cosign (panics instead when
    /// `KNM_REQUIRE_E2E=1`). Panics if the temporary directory cannot be made.
    pub fn require(deps: &Deps) -> Option<Self> {
        match &deps.cosign {
            Ok(binary) => {
                let temp = tempfile::Builder::new()
                    .prefix("knm-cosign-")
                    .tempdir()
                    .expect("a temporary directory for cosign");
                let mut cosign = Self::new(binary, temp.path()).expect("cosign's work directory");
                cosign._temp = Some(temp);
                Some(cosign)
            }
            Err(reason) => {
                skip(reason);
                None
            }
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// A `cosign` command with the scratch environment (`HOME`, `DOCKER_CONFIG`, `TUF_ROOT`,
    /// `COSIGN_PASSWORD`, a minimal `PATH`, nothing else), run in the work directory: for
    /// anything the helpers below do not cover.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.work_dir.join("home"))
            .env("DOCKER_CONFIG", self.work_dir.join("docker"))
            .env("TUF_ROOT", self.work_dir.join("tuf"))
            .env("COSIGN_PASSWORD", KEY_PASSWORD)
            .current_dir(&self.work_dir)
            .stdin(Stdio::null());
        command
    }

    /// Runs `cosign <args>` (killed after 60 s); its stdout, or an error with its exit status,
    /// stdout and stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut command = self.command();
        command.args(args);
        run_bounded(&mut command, &self.work_dir, TIMEOUT)
    }

    /// `cosign generate-key-pair --output-key-prefix <name>`: `keys/<name>.key` and
    /// `keys/<name>.pub` in the work directory. Refuses a name already used (cosign would ask
    /// whether to overwrite).
    pub fn generate_key_pair(&self, name: &str) -> Result<KeyPair> {
        let keys = self.work_dir.join("keys");
        let pair = KeyPair {
            private: keys.join(format!("{name}.key")),
            public: keys.join(format!("{name}.pub")),
        };
        if pair.private.exists() || pair.public.exists() {
            bail!(
                "a key pair named {name:?} exists already in {}",
                keys.display()
            );
        }
        let mut command = self.command();
        command
            .current_dir(&keys)
            .args(["generate-key-pair", "--output-key-prefix", name]);
        run_bounded(&mut command, &self.work_dir, TIMEOUT)?;
        if !pair.private.is_file() || !pair.public.is_file() {
            bail!(
                "cosign generate-key-pair wrote no {name}.key / {name}.pub in {}",
                keys.display()
            );
        }
        Ok(pair)
    }

    /// `cosign sign --key <private> --tlog-upload=false --yes --allow-http-registry
    /// --allow-insecure-registry <reference>`: stores the signature of the manifest
    /// `reference` names (`host/repo@sha256:<hex>`, a digest, not a tag) as
    /// `host/repo:sha256-<hex>.sig`. Plain HTTP registries without auth only.
    pub fn sign(&self, key: &KeyPair, reference_with_digest: &str) -> Result<()> {
        if !reference_with_digest.contains("@sha256:") {
            bail!("sign by digest (host/repo@sha256:<hex>), not {reference_with_digest:?}");
        }
        let private = key.private.to_string_lossy();
        self.run(&[
            "sign",
            "--key",
            &private,
            "--tlog-upload=false",
            "--yes",
            "--allow-http-registry",
            "--allow-insecure-registry",
            reference_with_digest,
        ])
        .map(drop)
    }

    /// `cosign verify --key <public> --insecure-ignore-tlog=true --allow-http-registry
    /// <reference>`: cosign's own verdict, a control for the plugin's. `Ok` when a signature
    /// under the reference's `.sig` tag verifies with the key and claims the reference's digest.
    pub fn verify(&self, key: &KeyPair, reference: &str) -> Result<()> {
        let public = key.public.to_string_lossy();
        self.run(&[
            "verify",
            "--key",
            &public,
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
            reference,
        ])
        .map(drop)
    }
}

/// Runs `command` with stdout and stderr in files under `dir`, killing it after `timeout`. An
/// error names it `cosign <args>` and carries its stderr and stdout.
fn run_bounded(command: &mut Command, dir: &Path, timeout: Duration) -> Result<String> {
    let name = std::iter::once("cosign".to_string())
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out_file = tempfile::NamedTempFile::new_in(dir)?;
    let err_file = tempfile::NamedTempFile::new_in(dir)?;
    command
        .stdout(out_file.reopen()?)
        .stderr(err_file.reopen()?);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", command.get_program().to_string_lossy()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = fs::read_to_string(out_file.path()).unwrap_or_default();
    let stderr = fs::read_to_string(err_file.path()).unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(stdout),
        Some(status) => bail!("`{name}` failed ({status}): {}{stdout}", stderr.trim_end()),
        None => bail!("`{name}` still ran after {timeout:?}, killed: {stderr}{stdout}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_tags() {
        let hex = "ab".repeat(32);
        assert_eq!(
            signature_tag(&format!("sha256:{hex}")),
            format!("sha256-{hex}.sig")
        );
    }
}
