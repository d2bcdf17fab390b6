//! Fixtures of the store's unit tests.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::ArtifactStore;
use crate::artifacts::kataconf;
use crate::artifacts::progress::NoProgress;
use crate::artifacts::pull_secrets::PullSecrets;
use crate::artifacts::registry::RetryPolicy;
use crate::artifacts::settings::StoreSettings;
use crate::artifacts::state::{self, ClassState, FileRecord};
use crate::config::{Limits, Registries, RuntimeClass};

pub(super) const DEFAULT: &str = kataconf::DEFAULT_CONFIG_NAME;

pub(super) const CONFIG: &str = "[hypervisor.qemu]\nkernel = \"/opt/kata/share/vmlinux.container\"\nimage = \"/opt/kata/share/kata-containers.img\"\n";

pub(super) fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

pub(super) fn store(dir: &Path) -> ArtifactStore {
    let settings = StoreSettings {
        artifacts_dir: dir.join("artifacts"),
        pull_secrets_dir: dir.join("secrets"),
        registries: Registries::default(),
        limits: Limits::default(),
        parallel_layers: 1,
        retry: RetryPolicy::default(),
        allowed_host_paths: Vec::new(),
        allowed_keys: Vec::new(),
        allowed_arguments: Vec::new(),
        hosts_dirs: Vec::new(),
    };
    // Mounted secrets only, wherever the tests run (even in a pod).
    let secrets = PullSecrets::files(&settings.pull_secrets_dir);
    ArtifactStore::with_pull_secrets(settings, Arc::new(NoProgress), secrets)
}

/// A class as k8s-kata-manager's config gives it (no `runtime`), or with `runtime`.
pub(super) fn class(runtime: &str) -> RuntimeClass {
    let text = format!(
        "runtimeClasses:\n- {{name: gpu, artifacts: {{url: nvcr.io/nvidia/kata:1, pullSecret: ngc}}{runtime}}}\n"
    );
    let config =
        crate::config::parse_str(&text, Path::new("c.yaml"), crate::config::FileKind::Trusted)
            .unwrap_or_else(|e| panic!("{e}"));
    config.runtime_classes[0].clone()
}

/// A staged tree with `tomls` at its top (each a kata configuration) and the files they name.
pub(super) fn staged(dir: &Path, tomls: &[&str]) -> PathBuf {
    let root = dir.join("staging/tree");
    fs::create_dir_all(root.join("share")).expect("mkdir");
    fs::write(root.join("share/vmlinux.container"), "k").expect("kernel");
    fs::write(root.join("share/kata-containers.img"), "i").expect("image");
    for name in tomls {
        fs::write(root.join(name), CONFIG).expect("toml");
    }
    root
}

/// What the install records for the staged tree, as `install` would build it.
pub(super) fn record(
    class: &RuntimeClass,
    path: PathBuf,
    files: BTreeMap<String, FileRecord>,
) -> ClassState {
    let digest = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ClassState {
        class: class.name.clone(),
        reference: class.artifacts.url.as_str().to_owned(),
        resolved_digest: digest.clone(),
        manifest_digest: digest,
        path,
        installed_at: 1,
        files,
        blobs: Vec::new(),
        kata_configs: Vec::new(),
        kata_version: None,
        previous: Vec::new(),
        retired: Vec::new(),
        versions: BTreeMap::new(),
        rejected: Vec::new(),
        served_by: None,
        signed_by: None,
        binaries_from_version: false,
        kata_settings: Vec::new(),
        config_file: None,
    }
}

/// Log lines written while `work` runs (on this thread: a current-thread runtime's).
pub(super) fn logs<T>(work: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, work);
    let text =
        String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    (out, text)
}

/// An installed class: `<artifactsDir>/.store/<digest>` with a top-level toml, the link, the
/// record.
pub(super) fn installed_version(
    store: &ArtifactStore,
    class: &RuntimeClass,
    c: char,
    alias: bool,
) -> ClassState {
    let artifacts = &store.settings().artifacts_dir;
    let version = artifacts.join(".store").join(digest(c));
    fs::create_dir_all(&version).expect("version");
    fs::write(version.join("configuration-qemu.toml"), CONFIG).expect("toml");
    if alias {
        std::os::unix::fs::symlink("configuration-qemu.toml", version.join(DEFAULT))
            .expect("alias");
    }
    let link = artifacts.join(&class.name);
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(Path::new(".store").join(digest(c)), &link).expect("link");
    let mut state = record(class, version, BTreeMap::new());
    state.config_file = alias.then(|| "configuration-qemu.toml".to_owned());
    state::write(artifacts, &state).expect("record");
    state
}
