//! Content-addressed blobs end to end (issue 21): every layer is fetched once per node, whatever
//! class, tag or version brings it; versions are built from `.store/blobs`; a blob goes when
//! the last version naming it goes; a pull killed mid-update leaves the previous version and,
//! after the next start, no blob nobody records. Against a real `docker-registry` on loopback,
//! through a proxy that counts what it serves.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kata_nri_integration::{CutProxy, Registry, RegistryOptions, e2e_guard};
use kata_nri_manager::artifacts::{ArtifactStore, RetryPolicy, StoreSettings};
use kata_nri_manager::config::{
    Artifacts, KataConfig, Limits, Registries, RuntimeClass, RuntimeSettings,
};
use sha2::{Digest as _, Sha256};

const KNM: &str = env!("CARGO_BIN_EXE_knm-under-test");
const REPO: &str = "kata/blobs";
const CONFIG: &str = "[hypervisor.qemu]\npath = \"/opt/kata/bin/qemu-system-x86_64\"\nkernel = \"/opt/kata/share/kata-containers/vmlinux\"\nimage = \"/opt/kata/share/kata-containers/kata.img\"\n";

/// Deterministic bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A kata artifact: kernel, image, configuration.
struct Artifact {
    kernel: Vec<u8>,
    image: Vec<u8>,
}

impl Artifact {
    fn new(kernel_seed: u64, image_seed: u64, image_len: usize) -> Self {
        Self {
            kernel: noise(256 << 10, kernel_seed),
            image: noise(image_len, image_seed),
        }
    }

    fn push(&self, registry: &Registry, tag: &str) -> String {
        registry
            .push_files(
                &format!("{REPO}:{tag}"),
                &[
                    ("vmlinux", &self.kernel),
                    ("kata.img", &self.image),
                    ("configuration-qemu.toml", CONFIG.as_bytes()),
                ],
            )
            .expect("oras push")
    }
}

/// A node's artifactsDir, its store, and a proxy in front of the registry that counts bytes.
struct Node {
    dir: tempfile::TempDir,
    proxy: CutProxy,
}

impl Node {
    async fn new(registry: &Registry) -> Self {
        let upstream = format!("127.0.0.1:{}", registry.port())
            .parse()
            .expect("addr");
        Self {
            dir: tempfile::Builder::new()
                .prefix("knm-blobs-")
                .tempdir()
                .expect("tempdir"),
            proxy: CutProxy::start(upstream).await.expect("proxy"),
        }
    }

    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    fn store(&self, keep_versions: u32) -> ArtifactStore {
        ArtifactStore::new(StoreSettings {
            artifacts_dir: self.artifacts(),
            pull_secrets_dir: self.dir.path().join("secrets"),
            registries: Registries {
                allowed: vec![],
                insecure: vec![self.proxy.host()],
                ca_file: None,
                hosts_dir: None,
            },
            limits: Limits {
                keep_versions,
                ..Limits::default()
            },
            allowed_host_paths: KataConfig::default().allowed_host_paths,
            allowed_keys: Vec::new(),
            allowed_arguments: Vec::new(),
            parallel_layers: 3,
            retry: RetryPolicy {
                attempts: 3,
                backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
            },
            hosts_dirs: vec![],
        })
    }

    fn class(&self, name: &str, tag: &str) -> RuntimeClass {
        RuntimeClass {
            name: name.into(),
            node_selector: BTreeMap::new(),
            overhead: Default::default(),
            tolerations: Vec::new(),
            provision: Default::default(),
            update_policy: Default::default(),
            version_skew: Default::default(),
            artifacts: Artifacts {
                url: format!("{}/{REPO}:{tag}", self.proxy.host())
                    .parse()
                    .expect("reference"),
                pull_secret: None,
                digest: None,
                verify: None,
            },
            runtime: RuntimeSettings::default(),
        }
    }

    /// The digests in `.store/blobs/sha256`, and the temp files beside them.
    fn blobs(&self) -> (BTreeSet<String>, usize) {
        let dir = self.artifacts().join(".store/blobs/sha256");
        let mut blobs = BTreeSet::new();
        let mut temps = 0;
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                temps += 1;
            } else {
                blobs.insert(format!("sha256:{name}"));
            }
        }
        (blobs, temps)
    }

    fn blob(&self, content: &[u8]) -> PathBuf {
        let digest = sha256(content);
        self.artifacts()
            .join(".store/blobs/sha256")
            .join(&digest["sha256:".len()..])
    }

    fn record(&self, class: &str) -> serde_json::Value {
        let text = fs::read(self.artifacts().join(format!(".state/{class}.json"))).expect("record");
        serde_json::from_slice(&text).expect("json")
    }

    /// `kata-nri-manager pull` of `class` at `tag`, through the proxy.
    fn pull_command(&self, class: &str, tag: &str) -> Command {
        let config = self.dir.path().join(format!("config-{tag}.yaml"));
        fs::write(
            &config,
            format!(
                "artifactsDir: {}\nregistries:\n  insecure: [\"{}\"]\nlimits:\n  keepVersions: 1\nruntimeClasses:\n  - name: {class}\n    artifacts:\n      url: {}/{REPO}:{tag}\n",
                self.artifacts().display(),
                self.proxy.host(),
                self.proxy.host(),
            ),
        )
        .expect("config");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("mode");
        let mut command = Command::new(KNM);
        command
            .args(["pull", "--output", "json", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            // No containerd here: the retired-version step has nobody to ask, and says so.
            .stdin(Stdio::null());
        command
    }
}

fn same_inode(a: &Path, b: &Path) -> bool {
    let (a, b) = (fs::metadata(a).expect("a"), fs::metadata(b).expect("b"));
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_shared_by_two_classes_on_two_tags_is_downloaded_once() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let one = Artifact::new(1, 10, 4 << 20);
    // Another kernel, the same image: two manifests with a blob in common.
    let two = Artifact {
        kernel: noise(256 << 10, 2),
        image: one.image.clone(),
    };
    let v1 = one.push(&registry, "1");
    let v2 = two.push(&registry, "2");
    assert_ne!(v1, v2);
    let node = Node::new(&registry).await;
    let store = node.store(2);
    let (qemu, clh) = (node.class("kata-qemu", "1"), node.class("kata-clh", "2"));

    // At once: the image both need is one download, whichever class asks first.
    let (a, b) = tokio::join!(store.ensure(&qemu), store.ensure(&clh));
    let (a, b) = (a.expect("qemu"), b.expect("clh"));
    assert_eq!(
        (a.digest.as_str(), b.digest.as_str()),
        (v1.as_str(), v2.as_str())
    );
    // Kernel one, kernel two, the image, the configuration (the same bytes in both).
    eventually("4 blob GETs", || registry.blob_gets() == 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.blob_gets(), 4, "a blob was downloaded twice");
    let image_bytes = one.image.len() as u64;
    assert_eq!(
        a.bytes + b.bytes,
        image_bytes + 2 * (256 << 10) + CONFIG.len() as u64,
        "bytes downloaded, as the two pulls report them"
    );
    let (blobs, temps) = node.blobs();
    assert_eq!(blobs.len(), 4);
    assert_eq!(temps, 0);

    // Both versions' images are the one stored blob, read-only.
    let blob = node.blob(&one.image);
    for version in [&v1, &v2] {
        let image = node
            .artifacts()
            .join(".store")
            .join(version)
            .join("kata.img");
        assert!(
            same_inode(&image, &blob),
            "{version}'s image is not the blob"
        );
        assert_eq!(fs::metadata(&image).expect("image").mode() & 0o7777, 0o444);
        // The configuration was rewritten for its version: a file of its own, not the blob.
        let config = node
            .artifacts()
            .join(".store")
            .join(version)
            .join("configuration-qemu.toml");
        assert!(!same_inode(&config, &node.blob(CONFIG.as_bytes())));
        assert!(
            fs::read_to_string(&config)
                .expect("config")
                .contains(&format!(
                    "{}/kata.img",
                    node.artifacts().join(".store").join(version).display()
                )),
        );
    }
    assert_eq!(
        fs::read(node.blob(CONFIG.as_bytes())).expect("blob"),
        CONFIG.as_bytes(),
        "rewriting a version's configuration changed the stored blob"
    );
    // The records say which blobs each version uses.
    let recorded: Vec<String> =
        serde_json::from_value(node.record("kata-clh")["blobs"].clone()).expect("blobs");
    let mut expected = vec![
        sha256(&two.kernel),
        sha256(&two.image),
        sha256(CONFIG.as_bytes()),
    ];
    expected.sort();
    assert_eq!(recorded, expected);

    // A third class on the first artifact: nothing to download.
    let served = node.proxy.served();
    let third = store
        .ensure(&node.class("kata-fc", "1"))
        .await
        .expect("third");
    assert_eq!(third.bytes, 0);
    assert!(
        node.proxy.served() - served < 16 << 10,
        "{} bytes served for a version already here",
        node.proxy.served() - served
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_fetches_only_the_changed_blob_and_leaves_the_old_version_as_it_was() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let one = Artifact::new(1, 10, 8 << 20);
    let two = Artifact {
        kernel: noise(256 << 10, 2),
        image: one.image.clone(),
    };
    let v1 = one.push(&registry, "latest");
    let node = Node::new(&registry).await;
    let store = node.store(2);
    let class = node.class("kata-qemu", "latest");
    store.ensure(&class).await.expect("v1");
    let old = node.artifacts().join(".store").join(&v1);
    let old_files: BTreeMap<String, Vec<u8>> = ["vmlinux", "kata.img", "configuration-qemu.toml"]
        .iter()
        .map(|f| (f.to_string(), fs::read(old.join(f)).expect("file")))
        .collect();

    // The tag moves to a version that changes only the kernel.
    let v2 = two.push(&registry, "latest");
    let gets = registry.blob_gets();
    let served = node.proxy.served();
    let update = store.ensure(&class).await.expect("v2");
    assert_eq!(update.digest, v2);
    assert!(update.pulled);
    assert_eq!(
        update.bytes,
        two.kernel.len() as u64,
        "only the kernel is downloaded"
    );
    eventually("one more blob GET", || registry.blob_gets() == gets + 1).await;
    let over_the_wire = node.proxy.served() - served;
    assert!(
        over_the_wire as f64 <= 1.05 * two.kernel.len() as f64 + 16384.0,
        "{over_the_wire} bytes served for a {} byte kernel",
        two.kernel.len()
    );
    let link = node.artifacts().join("kata-qemu");
    assert_eq!(fs::read(link.join("vmlinux")).expect("kernel"), two.kernel);
    assert_eq!(fs::read(link.join("kata.img")).expect("image"), one.image);

    // The previous version is as it was: kept for rollback, its files unchanged.
    for (name, content) in &old_files {
        assert_eq!(
            &fs::read(old.join(name)).expect("old file"),
            content,
            "{name}"
        );
    }
    let back = store.rollback(&class).expect("rollback");
    assert_eq!(back.to, v1);
    assert_eq!(fs::read(link.join("vmlinux")).expect("kernel"), one.kernel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_goes_when_its_last_version_goes() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let one = Artifact::new(1, 10, 1 << 20);
    let two = Artifact {
        kernel: noise(256 << 10, 2),
        image: one.image.clone(),
    };
    let v1 = one.push(&registry, "1");
    let v2 = two.push(&registry, "2");
    let node = Node::new(&registry).await;
    // No version kept for rollback: an update retires the old one at once.
    let store = node.store(0);
    let qemu = node.class("kata-qemu", "1");
    store.ensure(&qemu).await.expect("v1");
    // Another class on the first version: its blobs outlive kata-qemu's move.
    let fc = node.class("kata-fc", "1");
    store.ensure(&fc).await.expect("fc");
    store
        .ensure(&node.class("kata-qemu", "2"))
        .await
        .expect("v2");
    assert_eq!(node.record("kata-qemu")["retired"][0], v1.as_str());
    let (blobs, _) = node.blobs();
    assert_eq!(blobs.len(), 4, "{blobs:?}");

    // kata-qemu's retired v1 goes; kata-fc still records it and its kernel.
    assert_eq!(
        store.collect_retired("kata-qemu", &[]).expect("collect"),
        Vec::<String>::new()
    );
    assert!(
        node.blob(&one.kernel).exists(),
        "a blob another class uses was removed"
    );

    // kata-fc goes: v1 has no record left, nor has its kernel; the image v2 uses stays.
    store.remove("kata-fc").expect("remove fc");
    assert!(!node.artifacts().join(".store").join(&v1).exists());
    assert!(
        !node.blob(&one.kernel).exists(),
        "the old kernel's blob outlived its versions"
    );
    assert!(
        node.blob(&one.image).exists(),
        "the image v2 uses was removed"
    );
    assert!(node.blob(&two.kernel).exists());
    let link = node.artifacts().join("kata-qemu");
    assert_eq!(fs::read(link.join("kata.img")).expect("image"), one.image);

    // The last class goes: so does every blob.
    store.remove("kata-qemu").expect("remove qemu");
    assert!(!node.artifacts().join(".store").join(&v2).exists());
    assert_eq!(node.blobs(), (BTreeSet::new(), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_mid_update_keeps_the_previous_version_and_the_next_start_leaves_no_orphan() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let one = Artifact::new(1, 10, 2 << 20);
    let v1 = one.push(&registry, "1");
    // The update changes the kernel (small: it arrives) and the image (held mid-transfer).
    let two = Artifact::new(2, 20, 16 << 20);
    let v2 = two.push(&registry, "2");
    let node = Node::new(&registry).await;

    let out = node
        .pull_command("kata-qemu", "1")
        .output()
        .expect("pull v1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (before, _) = node.blobs();
    let link = node.artifacts().join("kata-qemu");
    let v1_files: BTreeMap<String, Vec<u8>> = ["vmlinux", "kata.img", "configuration-qemu.toml"]
        .iter()
        .map(|f| (f.to_string(), fs::read(link.join(f)).expect("file")))
        .collect();

    // Every connection stalls after 4 MiB: the new image's transfer hangs midway, the new
    // kernel arrives and is stored.
    node.proxy.hold_after(4 << 20);
    let mut update = node
        .pull_command("kata-qemu", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pull v2");
    let kernel_blob = node.blob(&two.kernel);
    eventually("the new kernel stored and the image held", || {
        kernel_blob.exists() && node.proxy.held() > 0
    })
    .await;
    update.kill().expect("kill -9");
    update.wait().expect("reaped");
    node.proxy.release();

    // The previous version is current and whole; what the kill left: the new kernel's blob,
    // named by no record, and the image's temp file.
    assert_eq!(
        fs::read_link(&link).expect("link"),
        Path::new(".store").join(&v1)
    );
    for (name, content) in &v1_files {
        assert_eq!(&fs::read(link.join(name)).expect("file"), content, "{name}");
    }
    assert!(!node.artifacts().join(".store").join(&v2).exists());
    let (left, temps) = node.blobs();
    assert!(left.contains(&sha256(&two.kernel)), "{left:?}");
    assert!(temps >= 1, "no partial download left: {left:?}");

    // The next start (a pull of the installed version): nothing fetched, nothing orphaned.
    let gets = registry.blob_gets();
    let out = node
        .pull_command("kata-qemu", "1")
        .output()
        .expect("pull again");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        node.blobs(),
        (before.clone(), 0),
        "orphans after the next start"
    );
    assert!(
        !node.artifacts().join(".staging").exists(),
        "the killed pull's staging directory is still there"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.blob_gets(), gets);

    // And the update, run again, completes.
    let out = node
        .pull_command("kata-qemu", "2")
        .output()
        .expect("pull v2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_link(&link).expect("link"),
        Path::new(".store").join(&v2)
    );
    assert_eq!(fs::read(link.join("kata.img")).expect("image"), two.image);
}
