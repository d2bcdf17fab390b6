//! Where the e2e binaries are (see `integration/scripts/fetch-deps.sh`) and the skip mechanism.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::Version;

/// Image reference of the locally built sandbox image.
pub const PAUSE_IMAGE_REF: &str = "registry.k8s.io/pause:3.10";

/// Set to `1` (CI does) to turn every skip into a test failure.
pub const REQUIRE_E2E_ENV: &str = "KNM_REQUIRE_E2E";

/// Paths of everything the e2e tests run, all absolute.
#[derive(Debug, Clone)]
pub struct Deps {
    /// The cache directory (`KNM_CACHE`, default `<repo>/.cache/e2e`).
    pub cache: PathBuf,
    /// containerd 2.1 (Debian sid): a directory with `bin/containerd`, `bin/ctr`,
    /// `bin/containerd-shim-runc-v2`.
    pub containerd_2_1: PathBuf,
    /// containerd 1.7 (Debian trixie), same layout.
    pub containerd_1_7: PathBuf,
    /// containerd 1.6 (Debian bookworm, no NRI), same layout.
    pub containerd_1_6: PathBuf,
    /// The `runc` binary (Debian bookworm).
    pub runc: PathBuf,
    /// The `docker-registry` binary (CNCF distribution 2.8, Debian trixie).
    pub registry: PathBuf,
    /// The `oras` binary (Debian trixie).
    pub oras: PathBuf,
    /// `htpasswd` (a wrapper that finds its libapr next to it).
    pub htpasswd: PathBuf,
    /// `KNM_COSIGN`: the `cosign` binary (2.5, Debian trixie), which signs artifacts in the test
    /// registry (see [`crate::cosign`]), or why there is none. Only the signature tests need it:
    /// they skip (fail under `KNM_REQUIRE_E2E=1`) through [`crate::Cosign::require`].
    pub cosign: Result<PathBuf, SkipReason>,
    /// OCI image archive of the sandbox image, importable with `ctr images import`.
    pub pause_image: PathBuf,
    /// Its reference, `registry.k8s.io/pause:3.10`.
    pub pause_image_ref: String,
    /// Debian package versions of the containerds, when env.sh names them.
    pub versions: HashMap<Version, String>,
    /// A real guest to boot, or why there is none.
    pub guest: Result<Guest, SkipReason>,
}

/// A guest that really boots (`integration/scripts/build-guest.sh`): Debian's kernel and a
/// busybox initramfs whose `/init` prints `KNM-GUEST-BOOTED` and powers off; and the hypervisor.
#[derive(Debug, Clone)]
pub struct Guest {
    /// `KNM_GUEST_VMLINUX`: Debian bookworm's kernel (package `linux-image-*-amd64`),
    /// uncompressed as kata's guest kernels are (`vmlinux`: qemu boots it directly, through
    /// its PVH entry).
    pub kernel: PathBuf,
    /// `KNM_GUEST_INITRD`.
    pub initrd: PathBuf,
    /// `KNM_QEMU`: bookworm's `qemu-system-x86_64`.
    pub qemu: PathBuf,
}

/// Why the e2e tests cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipReason(pub String);

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SkipReason {}

/// The repository root (this crate's parent directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// An example policy as `policies-wasm/build.sh` builds it (`name` without `.wasm`), which the
/// test script builds before the tests: a missing one fails the test that needs it.
pub fn built_policy(name: &str) -> PathBuf {
    let built = repo_root()
        .join("policies-wasm/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        built.is_file(),
        "{} missing: run policies-wasm/build.sh",
        built.display()
    );
    built
}

/// `KNM_CACHE`, or `<repo>/.cache/e2e`.
pub fn default_cache_dir() -> PathBuf {
    match std::env::var_os("KNM_CACHE") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => repo_root().join(".cache").join("e2e"),
    }
}

/// Parses the `export KEY='value'` lines of env.sh (quotes optional, comments ignored).
fn parse_env_sh(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
            .unwrap_or(value);
        out.insert(key.trim().to_string(), value.to_string());
    }
    out
}

impl Deps {
    /// Finds the cache and checks that the tests can run: root, env.sh (or the `KNM_*` variables),
    /// every binary present. Environment variables override env.sh entry by entry.
    pub fn from_env() -> Result<Deps, SkipReason> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(SkipReason(
                "e2e tests need root (containerd, runc, overlayfs, cgroups)".into(),
            ));
        }
        let cache = default_cache_dir();
        let env_sh = cache.join("env.sh");
        let from_file = match std::fs::read_to_string(&env_sh) {
            Ok(text) => parse_env_sh(&text),
            Err(_) => HashMap::new(),
        };
        let hint = "run `bash integration/scripts/fetch-deps.sh`";
        let get = |key: &str| -> Result<String, SkipReason> {
            if let Ok(v) = std::env::var(key)
                && !v.is_empty()
            {
                return Ok(v);
            }
            from_file.get(key).cloned().ok_or_else(|| {
                if from_file.is_empty() {
                    SkipReason(format!(
                        "e2e dependencies not found: {} is missing and {key} is not set; {hint}",
                        env_sh.display()
                    ))
                } else {
                    SkipReason(format!(
                        "{key} is neither set nor in {}; {hint}",
                        env_sh.display()
                    ))
                }
            })
        };
        let path = |key: &str, must_contain: &[&str]| -> Result<PathBuf, SkipReason> {
            let p = PathBuf::from(get(key)?);
            let probe: Vec<PathBuf> = if must_contain.is_empty() {
                vec![p.clone()]
            } else {
                must_contain.iter().map(|c| p.join(c)).collect()
            };
            for f in probe {
                if !f.exists() {
                    return Err(SkipReason(format!(
                        "{key}: {} does not exist; {hint}",
                        f.display()
                    )));
                }
            }
            Ok(p)
        };
        let cd = ["bin/containerd", "bin/ctr", "bin/containerd-shim-runc-v2"];
        let mut versions = HashMap::new();
        for v in Version::ALL {
            if let Ok(s) = get(&format!("{}_VERSION", v.env_key())) {
                versions.insert(v, s);
            }
        }
        Ok(Deps {
            containerd_2_1: path(Version::V2_1.env_key(), &cd)?,
            containerd_1_7: path(Version::V1_7.env_key(), &cd)?,
            containerd_1_6: path(Version::V1_6.env_key(), &cd)?,
            runc: path("KNM_RUNC", &[])?,
            registry: path("KNM_REGISTRY", &[])?,
            oras: path("KNM_ORAS", &[])?,
            htpasswd: path("KNM_HTPASSWD", &[])?,
            cosign: path("KNM_COSIGN", &[]),
            pause_image: path("KNM_PAUSE_IMAGE", &[])?,
            pause_image_ref: get("KNM_PAUSE_IMAGE_REF").unwrap_or_else(|_| PAUSE_IMAGE_REF.into()),
            cache: get("KNM_CACHE").map(PathBuf::from).unwrap_or(cache),
            versions,
            guest: (|| {
                Ok(Guest {
                    kernel: path("KNM_GUEST_VMLINUX", &[])?,
                    initrd: path("KNM_GUEST_INITRD", &[])?,
                    qemu: path("KNM_QEMU", &[])?,
                })
            })(),
        })
    }

    /// The directory holding `bin/containerd`, `bin/ctr`, `bin/containerd-shim-runc-v2`.
    pub fn containerd_dir(&self, version: Version) -> &Path {
        match version {
            Version::V2_1 => &self.containerd_2_1,
            Version::V1_7 => &self.containerd_1_7,
            Version::V1_6 => &self.containerd_1_6,
        }
    }

    /// `<containerd_dir>/bin/containerd`.
    pub fn containerd_bin(&self, version: Version) -> PathBuf {
        self.containerd_dir(version).join("bin/containerd")
    }

    /// `<containerd_dir>/bin/ctr`.
    pub fn ctr_bin(&self, version: Version) -> PathBuf {
        self.containerd_dir(version).join("bin/ctr")
    }

    /// `<containerd_dir>/bin/containerd-shim-runc-v2`: the runc shim matching that containerd
    /// (the 2.x shim does not work under 1.7).
    pub fn runc_shim_bin(&self, version: Version) -> PathBuf {
        self.containerd_dir(version)
            .join("bin/containerd-shim-runc-v2")
    }

    /// The directory holding `runc`.
    pub fn runc_dir(&self) -> &Path {
        self.runc.parent().unwrap_or(Path::new("/"))
    }
}

/// The e2e dependencies, or `None` after printing `SKIPPED: <reason>` to stderr.
///
/// With `KNM_REQUIRE_E2E=1` a missing dependency panics instead, so that CI cannot skip silently.
pub fn require_e2e() -> Option<Deps> {
    match Deps::from_env() {
        Ok(deps) => Some(deps),
        Err(reason) => {
            skip(&reason);
            None
        }
    }
}

/// Prints `SKIPPED: <test>: <reason>` to stderr, or panics with the reason when
/// `KNM_REQUIRE_E2E=1`: for a dependency only some tests need (the caller then returns).
pub fn skip(reason: &SkipReason) {
    let test = std::thread::current()
        .name()
        .map(|n| format!("{n}: "))
        .unwrap_or_default();
    if std::env::var(REQUIRE_E2E_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}e2e test cannot run and {REQUIRE_E2E_ENV}=1: {reason}");
    }
    eprintln!("SKIPPED: {test}{reason}");
}

/// `let deps = e2e_guard!();` — the [`Deps`], or return early from the test after printing
/// `SKIPPED: <reason>` (panics instead when `KNM_REQUIRE_E2E=1`).
///
/// In a test returning a value, give the value to return: `e2e_guard!(Ok(()))`.
#[macro_export]
macro_rules! e2e_guard {
    () => {
        match $crate::require_e2e() {
            Some(deps) => deps,
            None => return,
        }
    };
    ($ret:expr) => {
        match $crate::require_e2e() {
            Some(deps) => deps,
            None => return $ret,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_sh() {
        let m =
            parse_env_sh("# comment\nexport A='/x y/z'\nexport B=\"q\"\nC=plain\n\nnot a line\n");
        assert_eq!(m["A"], "/x y/z");
        assert_eq!(m["B"], "q");
        assert_eq!(m["C"], "plain");
        assert_eq!(m.len(), 3);
    }
}
