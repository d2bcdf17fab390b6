//! Which kata configuration a sandbox gets, and which files it makes kata open, in kata's own
//! order and with kata's own checks, then checked against what kata-nri-manager's store recorded.
//! Line numbers are kata-containers 3.32.0's (the last 3.x; `main` is 4.x).
//!
//! The order is the Go runtime's, `src/runtime/pkg/containerd-shim-v2/create.go`
//! `loadRuntimeConfig` (lines 259-307), run at the sandbox's `Create` (`service.Create` →
//! `create()`), never at `start`: the `io.katacontainers.config_path` annotation
//! (`oci.GetSandboxConfigPath`), then `ConfigPath` of the `runtimeoptions.v1.Options` in
//! `CreateTaskRequest.options`, then `KATA_CONF_FILE` (293-295), then the first default path that
//! exists (`src/runtime/pkg/katautils/config.go` `getDefaultConfigFile`, 2182, over
//! `GetDefaultConfigFilePaths`, 2169). A path that is named but missing fails the sandbox:
//! `decodeConfig` (1783) resolves it with `ResolvePath` and never falls back to the defaults.
//! kata 4.x dropped the annotation and accepts `KATA_CONF_FILE` only for its shipped files, and
//! the Rust runtime (`src/runtime-rs/crates/runtimes/src/manager.rs` `load_config`, 810-855)
//! reads the environment before the options; a stanza's `ConfigPath` wins in every one of them
//! when no pod annotation and no environment override it, which is what kata-nri-manager relies
//! on (it never lets `io.katacontainers.config_path` through a stanza).
//!
//! The hypervisor table and its file keys are read as `updateRuntimeConfigHypervisor` (1431) and
//! `newQemuHypervisorConfig` (926) do: every non-empty file key must resolve; an empty
//! `shared_fs` means `virtio-fs` (`sharedFS`, 644), which needs `virtio_fs_daemon` (1005); image
//! and initrd together, or neither, fail the sandbox (`src/runtime/virtcontainers/
//! hypervisor_config_linux.go` `validateHypervisorConfig`, 31-32). Kata checks `valid_*_paths`
//! only against pod annotations that override a path (`pkg/oci/utils.go`
//! `addHypervisorPathOverrides`), so they are recorded here, not enforced. One check of kata's
//! is left out: `/dev/vhost-vsock` must exist (`utils.SupportsVsocks`), which the test machines
//! lack (the module is not loaded there).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};
use toml_edit::{DocumentMut, Item};

use crate::options::KataOptions;

/// The annotation kata reads before the runtime options (a pod may set it only if the stanza's
/// `pod_annotations` let it through).
pub const CONFIG_PATH_ANNOTATION: &str = "io.katacontainers.config_path";

/// Kata's default configuration paths, first found wins (`GetDefaultConfigFilePaths`), and the
/// kata-deploy build's (`/opt/kata/share/defaults/kata-containers/`).
pub const DEFAULT_PATHS: [&str; 3] = [
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
    "/opt/kata/share/defaults/kata-containers/configuration.toml",
];

/// Everything the sandbox's kata would have used.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    /// Where the configuration came from: `annotation`, `ConfigPath`, `KATA_CONF_FILE`, `default`.
    pub source: &'static str,
    /// The path as named by that source.
    pub config_path: String,
    /// Every file kata opens, by role (`configuration`, `kernel`, `image`/`initrd`, `firmware`,
    /// `hypervisor`, `virtiofsd`).
    pub files: BTreeMap<&'static str, SeenFile>,
    /// The hypervisor table in use (`qemu`, `clh`, …).
    pub hypervisor: String,
    pub shared_fs: String,
    /// `valid_hypervisor_paths` and `valid_virtio_fs_daemon_paths` as set.
    pub valid_paths: BTreeMap<&'static str, Vec<String>>,
    /// The installed version (`sha256:…`) the artifact files all belong to.
    pub version: String,
    /// `<artifactsDir>` of that version.
    pub artifacts_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeenFile {
    /// As the configuration names it.
    pub path: String,
    /// With every symlink resolved.
    pub real: PathBuf,
    pub sha256: String,
    /// The same file as the store's record (`None` for host files outside the store).
    pub recorded: Option<bool>,
}

/// Picks the configuration and checks every file it names; `Err` is the one line kata (or the
/// stand-in's stricter check) would fail the sandbox with.
pub fn resolve(
    annotations: &BTreeMap<String, String>,
    options: Option<&KataOptions>,
    kata_conf_file: Option<&str>,
    handler: Option<&str>,
) -> Result<Resolution> {
    let (source, config_path) = choose(annotations, options, kata_conf_file)?;
    let config = Path::new(&config_path);
    let text = fs::read_to_string(config).map_err(|e| {
        anyhow!("cannot read the kata configuration {config_path} (from {source}): {e}")
    })?;
    let doc: DocumentMut = text
        .parse()
        .map_err(|e| anyhow!("{config_path}: not TOML: {e}"))?;
    let (hypervisor, table) = hypervisor_table(&doc, &config_path)?;
    let get = |key: &str| -> Option<String> {
        table
            .get(key)
            .and_then(Item::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let list = |key: &str| -> Vec<String> {
        table
            .get(key)
            .and_then(Item::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };

    let mut files = BTreeMap::new();
    files.insert("configuration", seen(&config_path, "configuration")?);

    let path = get("path")
        .ok_or_else(|| anyhow!("{config_path}: [hypervisor.{hypervisor}] has no path"))?;
    files.insert("hypervisor", executable(&path, "hypervisor path")?);

    let kernel = get("kernel")
        .ok_or_else(|| anyhow!("{config_path}: [hypervisor.{hypervisor}] has no kernel"))?;
    files.insert("kernel", seen(&kernel, "kernel")?);
    match (get("image"), get("initrd")) {
        (Some(_), Some(_)) => bail!(
            "{config_path}: [hypervisor.{hypervisor}] sets both image and initrd; kata refuses that"
        ),
        (None, None) => bail!(
            "{config_path}: [hypervisor.{hypervisor}] sets neither image nor initrd; kata needs one"
        ),
        (Some(image), None) => {
            files.insert("image", seen(&image, "image")?);
        }
        (None, Some(initrd)) => {
            files.insert("initrd", seen(&initrd, "initrd")?);
        }
    }
    if let Some(firmware) = get("firmware") {
        files.insert("firmware", seen(&firmware, "firmware")?);
    }
    let shared_fs = get("shared_fs").unwrap_or_else(|| "virtio-fs".to_owned());
    if shared_fs.starts_with("virtio-fs") {
        let daemon = get("virtio_fs_daemon").ok_or_else(|| {
            anyhow!("{config_path}: shared_fs = {shared_fs:?} but no virtio_fs_daemon")
        })?;
        files.insert("virtiofsd", executable(&daemon, "virtio_fs_daemon")?);
    }
    let valid_paths = ["valid_hypervisor_paths", "valid_virtio_fs_daemon_paths"]
        .into_iter()
        .map(|key| (key, list(key)))
        .filter(|(_, globs)| !globs.is_empty())
        .collect();

    let (artifacts_dir, version) = installed_version(&files, source, &config_path)?;
    check_recorded(&mut files, &artifacts_dir, &version, handler)?;
    Ok(Resolution {
        source,
        config_path,
        files,
        hypervisor,
        shared_fs,
        valid_paths,
        version,
        artifacts_dir,
    })
}

fn choose(
    annotations: &BTreeMap<String, String>,
    options: Option<&KataOptions>,
    kata_conf_file: Option<&str>,
) -> Result<(&'static str, String)> {
    if let Some(path) = annotations
        .get(CONFIG_PATH_ANNOTATION)
        .filter(|p| !p.is_empty())
    {
        return Ok(("annotation", path.clone()));
    }
    if let Some(path) = options.and_then(|o| o.config_path.clone()) {
        return Ok(("ConfigPath", path));
    }
    if let Some(path) = kata_conf_file.filter(|p| !p.is_empty()) {
        return Ok(("KATA_CONF_FILE", path.to_owned()));
    }
    DEFAULT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| ("default", (*p).to_owned()))
        .ok_or_else(|| {
            anyhow!(
                "no kata configuration: the runtime options have no ConfigPath, there is no {CONFIG_PATH_ANNOTATION} annotation, KATA_CONF_FILE is unset, and none of {} exists",
                DEFAULT_PATHS.join(", ")
            )
        })
}

/// The one `[hypervisor.<name>]` table (kata takes whichever it finds; a configuration with two
/// is ambiguous, and kata's shipped files never have two).
fn hypervisor_table<'d>(
    doc: &'d DocumentMut,
    config: &str,
) -> Result<(String, &'d toml_edit::Table)> {
    let tables = doc
        .get("hypervisor")
        .and_then(Item::as_table)
        .ok_or_else(|| anyhow!("{config}: no [hypervisor.*] table"))?;
    let found: Vec<_> = tables
        .iter()
        .filter_map(|(name, item)| item.as_table().map(|t| (name.to_owned(), t)))
        .collect();
    match found.as_slice() {
        [(name, table)] => Ok((name.clone(), *table)),
        [] => bail!("{config}: no [hypervisor.*] table"),
        more => bail!(
            "{config}: {} hypervisor tables ({}); kata uses one",
            more.len(),
            more.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn seen(path: &str, role: &str) -> Result<SeenFile> {
    let real = fs::canonicalize(path).map_err(|e| anyhow!("{role} {path} is missing: {e}"))?;
    if !real.is_file() {
        bail!("{role} {path} is not a regular file");
    }
    let bytes = fs::read(&real).with_context(|| format!("reading {role} {path}"))?;
    Ok(SeenFile {
        path: path.to_owned(),
        real,
        sha256: format!("{:x}", Sha256::digest(&bytes)),
        recorded: None,
    })
}

fn executable(path: &str, role: &str) -> Result<SeenFile> {
    let file = seen(path, role)?;
    let mode = fs::metadata(&file.real)?.permissions().mode();
    if mode & 0o111 == 0 {
        bail!("{role} {path} is not executable");
    }
    Ok(file)
}

/// `<artifactsDir>`, `sha256:<digest>` and the path inside the version of a file installed by
/// kata-nri-manager (`<artifactsDir>/.store/<algo>:<hex>/<rel>`), from its real path.
fn in_store(real: &Path) -> Option<(PathBuf, String, PathBuf)> {
    let parts: Vec<Component> = real.components().collect();
    let at = parts.iter().position(|c| c.as_os_str() == ".store")?;
    let artifacts: PathBuf = parts[..at].iter().collect();
    let version = parts.get(at + 1)?.as_os_str().to_str()?.to_owned();
    let rel: PathBuf = parts[at + 2..].iter().collect();
    Some((artifacts, version, rel))
}

/// The version every artifact file (configuration, kernel, image/initrd, firmware) belongs to:
/// one installed version, never a host file and never a mix of two versions.
fn installed_version(
    files: &BTreeMap<&'static str, SeenFile>,
    source: &str,
    config: &str,
) -> Result<(PathBuf, String)> {
    let mut found: Option<(PathBuf, String)> = None;
    // The guest's files first: what kata would boot is the clearest thing to name.
    for role in ["kernel", "image", "initrd", "firmware", "configuration"] {
        let Some(file) = files.get(role) else {
            continue;
        };
        let Some((dir, version, _)) = in_store(&file.real) else {
            bail!(
                "{role} {} is not an installed artifact file (configuration {config} from {source}): kata would boot what the node has, not what was pulled",
                file.path
            );
        };
        match &found {
            None => found = Some((dir, version)),
            Some((d, v)) if *d == dir && *v == version => {}
            Some((_, v)) => bail!(
                "{role} {} is in version {version}, the configuration's other files in {v}: a sandbox must not mix versions",
                file.path
            ),
        }
    }
    found.ok_or_else(|| anyhow!("no artifact file in the configuration"))
}

/// Every file inside the store must have the size and sha256 the store recorded for its version
/// (the handler's own record first: its kata-settings rendering is recorded only there).
fn check_recorded(
    files: &mut BTreeMap<&'static str, SeenFile>,
    artifacts_dir: &Path,
    version: &str,
    handler: Option<&str>,
) -> Result<()> {
    let recorded = recorded_files(artifacts_dir, version, handler)?;
    for (role, file) in files.iter_mut() {
        let Some((dir, v, rel)) = in_store(&file.real) else {
            continue;
        };
        if dir != artifacts_dir || v != version {
            bail!("{role} {} is in another version ({v})", file.path);
        }
        let key = rel.display().to_string();
        let Some(want) = recorded.get(&key) else {
            bail!(
                "{role} {} ({key} in {version}) is not in the store's record of that version",
                file.path
            );
        };
        // The store records `sha256:<hex>`.
        if want.strip_prefix("sha256:").unwrap_or(want) != file.sha256 {
            bail!(
                "{role} {} is not the file the store installed (sha256 {} on disk, {} recorded)",
                file.path,
                file.sha256,
                want
            );
        }
        file.recorded = Some(true);
    }
    Ok(())
}

/// Path → sha256 of every file the store recorded for `version`, from `<artifactsDir>/.state/`.
fn recorded_files(
    artifacts_dir: &Path,
    version: &str,
    handler: Option<&str>,
) -> Result<BTreeMap<String, String>> {
    let state_dir = artifacts_dir.join(".state");
    let mut records: Vec<PathBuf> = fs::read_dir(&state_dir)
        .with_context(|| format!("reading the store's records in {}", state_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    records.sort_by_key(|p| Some(p.file_stem().and_then(|s| s.to_str())) != handler.map(Some));
    for path in records {
        let Ok(bytes) = fs::read(&path) else { continue };
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let files = if record["manifestDigest"] == version {
            &record["files"]
        } else {
            &record["versions"][version]["files"]
        };
        if let Some(files) = files.as_object() {
            return Ok(files
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v["sha256"].as_str()?.to_owned())))
                .collect());
        }
    }
    bail!(
        "the store has no record of version {version} in {}",
        state_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_wins_over_config_path_and_env() {
        let options = KataOptions {
            config_path: Some("/from/options.toml".into()),
            ..KataOptions::default()
        };
        let mut annotations = BTreeMap::new();
        assert_eq!(
            choose(&annotations, Some(&options), Some("/env.toml")).unwrap(),
            ("ConfigPath", "/from/options.toml".to_owned())
        );
        assert_eq!(
            choose(&annotations, None, Some("/env.toml")).unwrap(),
            ("KATA_CONF_FILE", "/env.toml".to_owned())
        );
        annotations.insert(CONFIG_PATH_ANNOTATION.to_owned(), "/pod.toml".to_owned());
        assert_eq!(
            choose(&annotations, Some(&options), Some("/env.toml")).unwrap(),
            ("annotation", "/pod.toml".to_owned())
        );
    }

    #[test]
    fn store_paths_name_their_version() {
        let (dir, version, rel) =
            in_store(Path::new("/a/artifacts/.store/sha256:ab/sub/vmlinux")).unwrap();
        assert_eq!(dir, Path::new("/a/artifacts"));
        assert_eq!(version, "sha256:ab");
        assert_eq!(rel, Path::new("sub/vmlinux"));
        assert!(in_store(Path::new("/boot/vmlinuz")).is_none());
    }
}
