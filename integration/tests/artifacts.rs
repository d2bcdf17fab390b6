//! Artifacts end to end (issue 3): pulls from a real `docker-registry` on loopback, pushed with
//! `oras`, through the library (`ArtifactStore`) and the `pull` command.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kata_nri_integration::registry::layer;
use kata_nri_integration::tarball;
use kata_nri_integration::{
    Account, CutProxy, LyingRegistry, Registry, RegistryOptions, TokenService, e2e_guard,
};
use kata_nri_manager::artifacts::{
    ArtifactStore, KATA_VERSION_ANNOTATION, RetryPolicy, StoreSettings,
};
use kata_nri_manager::config::{
    Artifacts, KataConfig, Limits, Registries, RuntimeClass, RuntimeSettings, VersionSkew,
};
use sha2::{Digest as _, Sha256};

const PASSWORD: &str = "s3cret-Pa55word-for-knm";
const USER: &str = "knm";
const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A node's directories for one test: artifactsDir and pullSecretsDir.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("knm-artifacts-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    fn secrets(&self) -> PathBuf {
        self.dir.path().join("pull-secrets")
    }

    /// Writes `<pullSecretsDir>/<name>/.dockerconfigjson` as a mounted Secret would be.
    fn secret(&self, name: &str, registry: &str, user: &str, password: &str) {
        let dir = self.secrets().join(name);
        fs::create_dir_all(&dir).expect("secret dir");
        let config = serde_json::json!({"auths": {
            format!("https://{registry}"): {"username": user, "password": password}
        }});
        fs::write(dir.join(".dockerconfigjson"), config.to_string()).expect("secret");
    }

    fn settings(&self, insecure: &[String], ca_file: Option<PathBuf>) -> StoreSettings {
        StoreSettings {
            artifacts_dir: self.artifacts(),
            pull_secrets_dir: self.secrets(),
            registries: Registries {
                allowed: vec![],
                insecure: insecure.to_vec(),
                ca_file,
                hosts_dir: None,
            },
            limits: Limits::default(),
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
        }
    }

    /// `<node>/certs.d`, the node's containerd host directory for the mirror tests.
    fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// Writes `<certs.d>/<registry>/hosts.toml`; returns its directory.
    fn hosts_toml(&self, registry: &str, text: &str) -> PathBuf {
        let dir = self.certs_dir().join(registry);
        fs::create_dir_all(&dir).expect("hosts dir");
        fs::write(dir.join("hosts.toml"), text).expect("hosts.toml");
        dir
    }

    /// A store that reads the node's certs.d (as `registries.hostsDir` would make it).
    fn store_with_hosts(&self, insecure: &[String]) -> ArtifactStore {
        ArtifactStore::new(StoreSettings {
            hosts_dirs: vec![self.certs_dir()],
            ..self.settings(insecure, None)
        })
    }

    fn store_for(&self, registry: &Registry) -> ArtifactStore {
        ArtifactStore::new(self.settings(&[registry.host()], None))
    }

    /// Every path under artifactsDir with what it is (file digest, link target, dir).
    fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(&self.artifacts(), Path::new(""), &mut out);
        out
    }
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = fs::read_dir(root.join(rel)) else {
        return;
    };
    for entry in entries.flatten() {
        let child = rel.join(entry.file_name());
        let path = root.join(&child);
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let what = if meta.file_type().is_symlink() {
            format!("link:{}", fs::read_link(&path).expect("link").display())
        } else if meta.is_dir() {
            walk(root, &child, out);
            format!("dir:{:o}", meta.mode() & 0o7777)
        } else {
            format!(
                "file:{:o}:{}",
                meta.mode() & 0o7777,
                sha256(&fs::read(&path).expect("read"))
            )
        };
        out.insert(child.display().to_string(), what);
    }
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn class(name: &str, url: &str) -> RuntimeClass {
    RuntimeClass {
        name: name.into(),
        node_selector: BTreeMap::new(),
        overhead: Default::default(),
        tolerations: Vec::new(),
        provision: Default::default(),
        update_policy: Default::default(),
        version_skew: Default::default(),
        artifacts: Artifacts {
            url: url.parse().expect("reference"),
            pull_secret: None,
            digest: None,
            verify: None,
        },
        runtime: RuntimeSettings::default(),
    }
}

fn with_secret(mut class: RuntimeClass, secret: &str) -> RuntimeClass {
    class.artifacts.pull_secret = Some(secret.into());
    class
}

/// Deterministic bytes that do not compress (so sizes mean transfer sizes).
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

const CONFIG: &str = "# kata configuration for the test\n[hypervisor.qemu]\npath = \"/opt/kata/bin/qemu-system-x86_64\"\nkernel = \"/opt/kata/share/kata-containers/vmlinux\" # guest kernel\nimage = \"/opt/kata/share/kata-containers/kata.img\"\n\n[runtime]\nenable_debug = false\n";

/// Three files as kata artifact images carry them: kernel, image, configuration.
fn three_files(seed: u64, big: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("vmlinux", noise(1 << 20, seed)),
        ("kata.img", noise(big, seed + 1)),
        ("configuration-qemu.toml", CONFIG.as_bytes().to_vec()),
    ]
}

fn push_three(registry: &Registry, repo_tag: &str, files: &[(&'static str, Vec<u8>)]) -> String {
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    registry.push_files(repo_tag, &refs).expect("oras push")
}

/// The configuration as we expect it installed: kernel and image in the version's directory.
fn rewritten_config(version_dir: &Path) -> String {
    CONFIG
        .replace(
            "/opt/kata/share/kata-containers/vmlinux\"",
            &format!("{}/vmlinux\"", version_dir.display()),
        )
        .replace(
            "/opt/kata/share/kata-containers/kata.img\"",
            &format!("{}/kata.img\"", version_dir.display()),
        )
}

fn assert_installed(node: &Node, class: &str, digest: &str, files: &[(&'static str, Vec<u8>)]) {
    let link = node.artifacts().join(class);
    assert_eq!(
        fs::read_link(&link).expect("class link"),
        Path::new(".store").join(digest)
    );
    let version = node.artifacts().join(".store").join(digest);
    for (name, content) in files {
        let installed = fs::read(link.join(name)).expect("installed file");
        if name.ends_with(".toml") {
            assert_eq!(
                String::from_utf8_lossy(&installed),
                rewritten_config(&version)
            );
        } else {
            assert!(installed == *content, "{name} differs from what was pushed");
        }
    }
    let state = node
        .artifacts()
        .join(".state")
        .join(format!("{class}.json"));
    assert_eq!(fs::metadata(&state).expect("state").mode() & 0o777, 0o600);
    assert_eq!(
        fs::metadata(state.parent().expect("dir"))
            .expect("dir")
            .mode()
            & 0o777,
        0o700
    );
    assert!(
        !node.artifacts().join(".staging").exists(),
        "staging left behind"
    );
}

/// Polls `f` until true (the registry writes its access log line after the response).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A refused pull leaves a fresh artifactsDir empty and an installed version untouched.
async fn assert_refused(
    node: &Node,
    store: &ArtifactStore,
    good: &RuntimeClass,
    bad: &RuntimeClass,
    expected: &[&str],
) -> String {
    let fresh = store.ensure(bad).await.expect_err("refused");
    assert!(
        node.snapshot().is_empty(),
        "left behind: {:?}",
        node.snapshot()
    );
    store.ensure(good).await.expect("good version");
    let before = node.snapshot();
    let error = store.ensure(bad).await.expect_err("refused").to_string();
    assert_eq!(node.snapshot(), before, "the installed version changed");
    assert_eq!(error, fresh.to_string());
    for part in expected {
        assert!(error.contains(part), "{error:?} should contain {part:?}");
    }
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_a_three_file_artifact_from_a_plain_registry() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let files = three_files(1, 3 << 20);
    let digest = push_three(&registry, "kata/artifacts:1", &files);
    let node = Node::new();
    let store = node.store_for(&registry);
    let class = class(
        "kata-qemu",
        &format!("{}/kata/artifacts:1", registry.host()),
    );

    let installed = store.ensure(&class).await.expect("pull");
    assert!(installed.pulled);
    assert_eq!(installed.digest, digest);
    assert_eq!(
        installed.kata_configs,
        vec!["configuration-qemu.toml".to_string()]
    );
    assert_installed(&node, "kata-qemu", &digest, &files);
    let config =
        fs::read(node.artifacts().join("kata-qemu/configuration-qemu.toml")).expect("config");
    assert_eq!(
        installed.files["configuration-qemu.toml"].sha256,
        sha256(&config),
        "digest recorded after the rewrite"
    );
    assert_eq!(installed.files["kata.img"].sha256, sha256(&files[1].1));
    eventually("3 blob GETs", || registry.blob_gets() == 3).await;

    // Nothing changed: one manifest request, no blob transfer.
    let manifests = registry.manifest_requests();
    let again = store.ensure(&class).await.expect("up to date");
    assert!(!again.pulled);
    assert_eq!(again.digest, digest);
    eventually("the manifest request", || {
        registry.manifest_requests() == manifests + 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.blob_gets(), 3, "a re-run must not fetch blobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_tls_registry_with_basic_auth() {
    let deps = e2e_guard!();
    let registry =
        Registry::start(&deps, RegistryOptions::tls_with_auth(USER, PASSWORD)).expect("registry");
    let files = three_files(2, 2 << 20);
    let digest = push_three(&registry, "kata/artifacts:tls", &files);
    let node = Node::new();
    node.secret("my-secret", &registry.host(), USER, PASSWORD);
    let store = ArtifactStore::new(node.settings(&[], Some(registry.ca_file())));
    let url = format!("{}/kata/artifacts:tls", registry.host());

    let installed = store
        .ensure(&with_secret(class("kata-tls", &url), "my-secret"))
        .await
        .expect("pull over TLS with basic auth");
    assert_eq!(installed.digest, digest);
    assert_installed(&node, "kata-tls", &digest, &files);

    // Without the CA the certificate is not trusted, and the error says where a CA goes.
    let untrusted = ArtifactStore::new(node.settings(&[], None));
    let error = untrusted
        .ensure(&with_secret(class("kata-untrusted", &url), "my-secret"))
        .await
        .expect_err("untrusted certificate")
        .to_string();
    assert!(error.contains("registries.caFile"), "{error}");
    assert!(!error.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpacks_a_tar_bundle_keeping_modes() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let config = "[hypervisor.qemu]\npath = \"/opt/kata/bin/qemu-system-x86_64\"\nkernel = \"/opt/kata/share/kata-containers/vmlinux.container\"\nimage = \"/opt/kata/share/kata-containers/kata-containers.img\"\n";
    let bundle = gzip(&tar_of(&[
        Entry::dir("opt/kata/bin/", 0o755),
        Entry::file(
            "opt/kata/bin/containerd-shim-kata-v2",
            0o755,
            b"#!/bin/sh\nexit 0\n",
        ),
        Entry::dir("opt/kata/libexec/", 0o750),
        Entry::file("opt/kata/libexec/virtiofsd", 0o755, b"elf"),
        Entry::file(
            "opt/kata/share/kata-containers/vmlinux-6.1",
            0o644,
            &noise(4096, 3),
        ),
        Entry::symlink(
            "opt/kata/share/kata-containers/vmlinux.container",
            "vmlinux-6.1",
        ),
        Entry::file(
            "opt/kata/share/kata-containers/kata-containers.img",
            0o640,
            &noise(8192, 4),
        ),
        Entry::file(
            "opt/kata/share/defaults/kata-containers/configuration-qemu.toml",
            0o644,
            config.as_bytes(),
        ),
    ]));
    let extra = zstd::encode_all(
        tar_of(&[Entry::file("opt/kata/bin/kata-monitor", 0o700, b"monitor")]).as_slice(),
        3,
    )
    .expect("zstd");
    let (gz, gz_size) = registry.push_blob("kata/bundle", &bundle).expect("blob");
    let (zst, zst_size) = registry.push_blob("kata/bundle", &extra).expect("blob");
    let digest = registry
        .push_image(
            "kata/bundle:1",
            &[
                layer(&gz, gz_size, TAR_GZIP, None),
                layer(&zst, zst_size, TAR_ZSTD, None),
            ],
        )
        .expect("manifest");

    let node = Node::new();
    let store = node.store_for(&registry);
    let installed = store
        .ensure(&class(
            "kata-bundle",
            &format!("{}/kata/bundle:1", registry.host()),
        ))
        .await
        .expect("pull");
    assert_eq!(installed.digest, digest);
    let root = node.artifacts().join("kata-bundle");
    let mode = |rel: &str| fs::symlink_metadata(root.join(rel)).expect(rel).mode() & 0o7777;
    assert_eq!(mode("opt/kata/bin/containerd-shim-kata-v2"), 0o755);
    assert_eq!(mode("opt/kata/libexec"), 0o750);
    assert_eq!(mode("opt/kata/libexec/virtiofsd"), 0o755);
    assert_eq!(
        mode("opt/kata/share/kata-containers/kata-containers.img"),
        0o640
    );
    assert_eq!(mode("opt/kata/bin/kata-monitor"), 0o700);
    assert_eq!(
        fs::read_link(root.join("opt/kata/share/kata-containers/vmlinux.container")).expect("link"),
        Path::new("vmlinux-6.1")
    );
    let version = node.artifacts().join(".store").join(&digest);
    let rel_config = "opt/kata/share/defaults/kata-containers/configuration-qemu.toml";
    let installed_config = fs::read_to_string(root.join(rel_config)).expect("config");
    assert_eq!(
        installed_config,
        config.replace(
            "\"/opt/kata/share",
            &format!("\"{}/opt/kata/share", version.display())
        )
    );
    assert_eq!(installed.kata_configs, vec![rel_config.to_string()]);
    assert_eq!(
        installed.files[rel_config].sha256,
        sha256(installed_config.as_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_blob_tampered_in_the_registry() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    push_three(&registry, "kata/artifacts:good", &three_files(10, 1 << 20));
    let bad_files = three_files(20, 1 << 20);
    push_three(&registry, "kata/artifacts:bad", &bad_files);
    let blob = registry.blob_path(&sha256(&bad_files[1].1));
    let mut tampered = fs::read(&blob).expect("blob");
    tampered[1000] ^= 0xff;
    fs::write(&blob, &tampered).expect("tamper");

    let node = Node::new();
    let store = node.store_for(&registry);
    let host = registry.host();
    let error = assert_refused(
        &node,
        &store,
        &class("kata-qemu", &format!("{host}/kata/artifacts:good")),
        &class("kata-qemu", &format!("{host}/kata/artifacts:bad")),
        &[
            "pulling kata-qemu: digest mismatch for layer kata.img",
            "registry sent sha256:",
            "manifest says",
        ],
    )
    .await;
    assert!(error.contains(&sha256(&tampered)), "{error}");
    assert!(error.contains(&sha256(&bad_files[1].1)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_wrong_credentials() {
    let deps = e2e_guard!();
    let registry =
        Registry::start(&deps, RegistryOptions::tls_with_auth(USER, PASSWORD)).expect("registry");
    push_three(&registry, "kata/artifacts:1", &three_files(30, 1 << 20));
    let node = Node::new();
    node.secret("my-secret", &registry.host(), USER, PASSWORD);
    node.secret("wrong-secret", &registry.host(), USER, "not-the-password");
    let store = ArtifactStore::new(node.settings(&[], Some(registry.ca_file())));
    let url = format!("{}/kata/artifacts:1", registry.host());
    let error = assert_refused(
        &node,
        &store,
        &with_secret(class("kata-qemu", &url), "my-secret"),
        &with_secret(class("kata-qemu", &url), "wrong-secret"),
        &[
            &format!(
                "pulling kata-qemu: registry {} answered 401",
                registry.host()
            ),
            "check pullSecret \"wrong-secret\"",
        ],
    )
    .await;
    assert!(!error.contains("not-the-password") && !error.contains(PASSWORD));
    // No secret at all: the error says to configure one.
    let error = store
        .ensure(&class("kata-anon", &url))
        .await
        .expect_err("anonymous")
        .to_string();
    assert!(error.contains("set artifacts.pullSecret"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_missing_tag_and_a_pinned_digest_that_does_not_match() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let digest = push_three(&registry, "kata/artifacts:1", &three_files(40, 1 << 20));
    let node = Node::new();
    let store = node.store_for(&registry);
    let url = format!("{}/kata/artifacts:1", registry.host());
    let good = class("kata-qemu", &url);
    assert_refused(
        &node,
        &store,
        &good,
        &class(
            "kata-qemu",
            &format!("{}/kata/artifacts:nope", registry.host()),
        ),
        &["not found in registry", "(404)"],
    )
    .await;

    let node = Node::new();
    let store = node.store_for(&registry);
    let pin = format!("sha256:{}", "0".repeat(64));
    let mut pinned = class("kata-qemu", &url);
    pinned.artifacts.digest = Some(pin.parse().expect("digest"));
    assert_refused(
        &node,
        &store,
        &good,
        &pinned,
        &[&format!("resolves to {digest}, but the config pins {pin}")],
    )
    .await;
    // The right pin is accepted.
    let mut right = class("kata-qemu", &url);
    right.artifacts.digest = Some(digest.parse().expect("digest"));
    store
        .ensure(&right)
        .await
        .expect("pinned to the right digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_titles_and_tar_entries_that_escape() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    push_three(&registry, "kata/artifacts:good", &three_files(50, 1 << 16));
    let (blob, size) = registry
        .push_blob("kata/artifacts", b"payload")
        .expect("blob");
    let mut cases = Vec::new();
    for title in ["../x", "/etc/x", "a/../../x"] {
        let tag = format!("title-{}", cases.len());
        registry
            .push_image(
                &format!("kata/artifacts:{tag}"),
                &[layer(&blob, size, "application/x-test", Some(title))],
            )
            .expect("manifest");
        cases.push((tag, title.to_string()));
    }
    for (name, entries) in [
        ("dotdot", vec![Entry::file("../x", 0o644, b"x")]),
        ("absolute", vec![Entry::file("/etc/x", 0o644, b"x")]),
        ("symlink-out", vec![Entry::symlink("etc", "/etc")]),
        ("symlink-up", vec![Entry::symlink("a/up", "../../..")]),
        (
            "hardlink-out",
            vec![Entry::hardlink("passwd", "/etc/passwd")],
        ),
    ] {
        let (blob, size) = registry
            .push_blob("kata/artifacts", &gzip(&tar_of(&entries)))
            .expect("blob");
        let tag = format!("tar-{name}");
        registry
            .push_image(
                &format!("kata/artifacts:{tag}"),
                &[layer(&blob, size, TAR_GZIP, None)],
            )
            .expect("manifest");
        cases.push((tag, entries[0].name.clone()));
    }
    for (tag, entry) in cases {
        let node = Node::new();
        let store = node.store_for(&registry);
        let host = registry.host();
        assert_refused(
            &node,
            &store,
            &class("kata-qemu", &format!("{host}/kata/artifacts:good")),
            &class("kata-qemu", &format!("{host}/kata/artifacts:{tag}")),
            &["installing kata-qemu: layer", &format!("refused {entry:?}")],
        )
        .await;
    }
    assert!(!Path::new("/etc/x").exists() && !Path::new("/x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_layer_beyond_the_size_limit_before_downloading() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    push_three(&registry, "kata/artifacts:good", &three_files(60, 1 << 16));
    let (blob, _) = registry
        .push_blob("kata/artifacts", b"small")
        .expect("blob");
    let huge = 100_000_000_000u64;
    registry
        .push_image(
            "kata/artifacts:huge",
            &[layer(&blob, huge, "application/x-test", Some("huge"))],
        )
        .expect("manifest");
    let node = Node::new();
    let store = node.store_for(&registry);
    let host = registry.host();
    let gets = registry.blob_gets();
    assert_refused(
        &node,
        &store,
        &class("kata-qemu", &format!("{host}/kata/artifacts:good")),
        &class("kata-qemu", &format!("{host}/kata/artifacts:huge")),
        &["(100000000000 bytes), more than limits.maxArtifactBytes 8Gi (8589934592 bytes)"],
    )
    .await;
    eventually("the good version's 3 blob GETs", || {
        registry.blob_gets() == gets + 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        registry.blob_gets(),
        gets + 3,
        "nothing of the huge layer was fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_mid_blob_fails_cleanly_then_a_retry_succeeds() {
    let deps = e2e_guard!();
    let mut registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let files = three_files(70, 32 << 20);
    let digest = push_three(&registry, "kata/artifacts:big", &files);
    let proxy = CutProxy::start(([127, 0, 0, 1], registry.port()).into())
        .await
        .expect("proxy");
    let node = Node::new();
    let mut settings = node.settings(&[proxy.host()], None);
    settings.retry = RetryPolicy {
        attempts: 2,
        backoff: Duration::from_millis(300),
        max_backoff: Duration::from_millis(300),
    };
    let store = ArtifactStore::new(settings);
    let class = class("kata-qemu", &format!("{}/kata/artifacts:big", proxy.host()));

    proxy.cut_once_after(4 << 20);
    let pull = tokio::spawn({
        let store = store.clone();
        let class = class.clone();
        async move { store.ensure(&class).await }
    });
    proxy.wait_cut().await;
    registry.kill();
    let error = pull
        .await
        .expect("task")
        .expect_err("registry down")
        .to_string();
    assert!(
        error.contains(&format!(
            "pulling kata-qemu: registry {} unreachable",
            proxy.host()
        )),
        "{error}"
    );
    assert!(error.contains("after 2 attempts"), "{error}");
    assert!(
        node.snapshot().is_empty(),
        "left behind: {:?}",
        node.snapshot()
    );

    registry.restart().expect("registry back");
    let installed = store.ensure(&class).await.expect("retry succeeds");
    assert_eq!(installed.digest, digest);
    assert_installed(&node, "kata-qemu", &digest, &files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_short_is_resumed() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let files = three_files(80, 16 << 20);
    let digest = push_three(&registry, "kata/artifacts:big", &files);
    let proxy = CutProxy::start(([127, 0, 0, 1], registry.port()).into())
        .await
        .expect("proxy");
    let node = Node::new();
    let store = ArtifactStore::new(node.settings(&[proxy.host()], None));
    proxy.cut_once_after(4 << 20);
    let installed = store
        .ensure(&class(
            "kata-qemu",
            &format!("{}/kata/artifacts:big", proxy.host()),
        ))
        .await
        .expect("resumed");
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(installed.digest, digest);
    assert_installed(&node, "kata-qemu", &digest, &files);
    // The retry asked for the rest only.
    eventually("the resumed GET", || registry.blob_gets() == 4).await;
    assert!(
        registry.log().contains("\" 206 "),
        "no ranged request in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_ensures_make_one_pull() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let files = three_files(90, 8 << 20);
    let digest = push_three(&registry, "kata/artifacts:1", &files);
    let node = Node::new();
    let store = node.store_for(&registry);
    let class = Arc::new(class(
        "kata-qemu",
        &format!("{}/kata/artifacts:1", registry.host()),
    ));
    let results = futures::future::join_all((0..50).map(|_| {
        let store = store.clone();
        let class = Arc::clone(&class);
        tokio::spawn(async move { store.ensure(&class).await })
    }))
    .await;
    for result in results {
        let installed = result.expect("task").expect("ensure");
        assert_eq!(installed.digest, digest);
    }
    assert_installed(&node, "kata-qemu", &digest, &files);
    eventually("3 blob GETs", || registry.blob_gets() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(registry.blob_gets(), 3, "exactly one set of blob GETs");
    assert_eq!(
        registry.manifest_requests(),
        1,
        "one manifest request for all 50"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_command_never_prints_secrets() {
    let deps = e2e_guard!();
    let registry =
        Registry::start(&deps, RegistryOptions::tls_with_auth(USER, PASSWORD)).expect("registry");
    let files = three_files(100, 1 << 20);
    let digest = push_three(&registry, "kata/artifacts:1", &files);
    let node = Node::new();
    let url = format!("{}/kata/artifacts:1", registry.host());
    let run = |secret: &str| {
        let config = node.dir.path().join(format!("config-{secret}.yaml"));
        let text = format!(
            "artifactsDir: {}\npullSecretsDir: {}\nregistries:\n  caFile: {}\nruntimeClasses:\n  - name: kata-qemu\n    artifacts:\n      url: {url}\n      pullSecret: {secret}\n",
            node.artifacts().display(),
            node.secrets().display(),
            registry.ca_file().display()
        );
        let mut file = fs::File::create(&config).expect("config");
        file.write_all(text.as_bytes()).expect("write");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("mode");
        std::process::Command::new(env!("CARGO_BIN_EXE_knm-under-test"))
            .args(["pull", "--config"])
            .arg(&config)
            .args(["--output", "json"])
            // Everything every crate logs, reqwest and hyper included.
            .env("RUST_LOG", "trace")
            .output()
            .expect("run pull")
    };
    node.secret("right", &registry.host(), USER, PASSWORD);
    node.secret("wrong", &registry.host(), USER, "wrong-Pa55word-xyz");

    let failed = run("wrong");
    assert!(!failed.status.success());
    let ok = run("right");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "pull failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
    assert_eq!(report[0]["class"], "kata-qemu");
    assert_eq!(report[0]["digest"], digest.as_str());
    assert_eq!(report[0]["reference"], url.as_str());
    assert!(report[0]["files"]["kata.img"]["sha256"].is_string());
    assert!(report[0]["bytes"].as_u64().expect("bytes") > 1 << 20);
    assert!(report[0]["duration"].is_number());

    let failed_stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        failed_stderr.contains("error: pulling kata-qemu: registry"),
        "{failed_stderr}"
    );
    assert!(
        failed_stderr.contains("answered 401")
            && failed_stderr.contains("check pullSecret \"wrong\"")
    );
    let everything = [&failed.stdout, &failed.stderr, &ok.stdout, &ok.stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect::<String>();
    assert!(everything.len() > 10_000, "trace logs were captured");
    for secret in [PASSWORD, "wrong-Pa55word-xyz"] {
        assert!(
            !everything.contains(secret),
            "{secret} appears in the output"
        );
    }
    // Nor their base64 forms in Authorization headers.
    for pair in [
        format!("{USER}:{PASSWORD}"),
        format!("{USER}:wrong-Pa55word-xyz"),
    ] {
        assert!(
            !everything.contains(&base64(pair.as_bytes())),
            "base64 credentials in the output"
        );
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A tar entry written with raw headers, so hostile names reach the archive unchanged.
struct Entry {
    name: String,
    kind: tar::EntryType,
    mode: u32,
    data: Vec<u8>,
    link: Option<String>,
}

impl Entry {
    fn file(name: &str, mode: u32, data: &[u8]) -> Self {
        Self {
            name: name.into(),
            kind: tar::EntryType::Regular,
            mode,
            data: data.to_vec(),
            link: None,
        }
    }

    fn dir(name: &str, mode: u32) -> Self {
        Self {
            name: name.into(),
            kind: tar::EntryType::Directory,
            mode,
            data: vec![],
            link: None,
        }
    }

    fn symlink(name: &str, target: &str) -> Self {
        Self {
            name: name.into(),
            kind: tar::EntryType::Symlink,
            mode: 0o777,
            data: vec![],
            link: Some(target.into()),
        }
    }

    fn hardlink(name: &str, target: &str) -> Self {
        Self {
            name: name.into(),
            kind: tar::EntryType::Link,
            mode: 0o644,
            data: vec![],
            link: Some(target.into()),
        }
    }
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let raw: Vec<tarball::Entry<'_>> = entries
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.kind,
                e.mode,
                e.data.as_slice(),
                e.link.as_deref(),
            )
        })
        .collect();
    tarball::tar_of(&raw)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "knm-test",
            ])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN), as CI has"
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_too_small_refuses_before_downloading_with_the_numbers() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    push_three(
        &registry,
        "kata/artifacts:small",
        &three_files(80, 64 << 10),
    );
    push_three(&registry, "kata/artifacts:big", &three_files(81, 3 << 20));
    let node = Node::new();
    let _disk = Tmpfs::mount(&node.artifacts(), "8m");
    let store = node.store_for(&registry);
    let host = registry.host();
    let small = class("kata-qemu", &format!("{host}/kata/artifacts:small"));
    let big = class("kata-qemu", &format!("{host}/kata/artifacts:big"));
    let gets = registry.blob_gets();

    let error = store.ensure(&big).await.expect_err("refused").to_string();
    assert!(
        node.snapshot().is_empty(),
        "left behind: {:?}",
        node.snapshot()
    );
    store.ensure(&small).await.expect("the small version fits");
    let before = node.snapshot();
    let again = store.ensure(&big).await.expect_err("refused").to_string();
    assert_eq!(node.snapshot(), before, "the installed version changed");

    for error in [&error, &again] {
        // "… has A bytes free, … needs N (twice the T bytes it adds to the store): free disk space"
        let number_after = |word: &str| -> u64 {
            let rest = &error[error
                .find(word)
                .unwrap_or_else(|| panic!("{word:?} in {error}"))
                + word.len()..];
            rest.trim_start_matches(['(', ' '])
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a number after {word:?} in {error}"))
        };
        let available = error
            .split(" bytes free")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("free bytes in {error}"));
        let needed = number_after(" needs ");
        let total = number_after("twice the ");
        assert!(error.ends_with("free disk space"), "{error}");
        assert!(
            error.contains(&node.artifacts().display().to_string()),
            "{error}"
        );
        assert_eq!(needed, 2 * total, "{error}");
        // What the big version adds: its kernel and image (the configuration, once stored, is
        // shared with the small version).
        assert!(total >= 4 << 20, "the big version's size: {error}");
        assert!(available < needed && available <= 8 << 20, "{error}");
    }
    eventually("the small version's 3 blob GETs", || {
        registry.blob_gets() == gets + 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        registry.blob_gets(),
        gets + 3,
        "nothing of the big version was fetched"
    );
}

/// A stand-in kata shim that answers `--version` as kata does.
/// A stand-in shim at `<dir>/containerd-shim-kata-v2`, installed as a package manager does
/// (a new file renamed over the old): the store asks a shim for its version once per file.
fn kata_shim(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join("containerd-shim-kata-v2");
    let new = dir.join(".containerd-shim-kata-v2.new");
    fs::write(
        &new,
        format!(
            "#!/bin/sh\necho 'Kata Containers containerd shim (Golang): id: \"io.containerd.kata.v2\", version: {version}, commit: 0'\n"
        ),
    )
    .expect("shim");
    fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::rename(&new, &path).expect("install shim");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_skew_is_refused_before_downloading_or_reported_per_the_config() {
    let deps = e2e_guard!();
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let files = three_files(90, 4 << 10);
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    let requirement = format!("{KATA_VERSION_ANNOTATION}=3.3.0");
    registry
        .push_annotated("kata/artifacts:needs-3.3", &refs, &[&requirement])
        .expect("push");
    let node = Node::new();
    let store = node.store_for(&registry);
    fs::create_dir_all(node.dir.path().join("bin")).expect("bin");
    let shim = kata_shim(&node.dir.path().join("bin"), "3.2.0");
    let mut class = class(
        "kata-qemu",
        &format!("{}/kata/artifacts:needs-3.3", registry.host()),
    );
    class.runtime.runtime_path = Some(shim.clone());
    class.version_skew = VersionSkew::Refuse;
    let gets = registry.blob_gets();

    let error = store.ensure(&class).await.expect_err("refused").to_string();
    assert!(
        error.ends_with(&format!(
            "not made current (versionSkew: refuse): the artifact needs kata 3.3.0; {} is kata 3.2.0",
            shim.display()
        )),
        "{error}"
    );
    assert!(
        node.snapshot().is_empty(),
        "left behind: {:?}",
        node.snapshot()
    );

    // No real shim at all: said as such.
    let mut shimless = class.clone();
    shimless.runtime.runtime_path = Some(node.dir.path().join("bin/absent"));
    let error = store
        .ensure(&shimless)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("the artifact needs kata 3.3.0, and the real shim")
            && error.contains("bin/absent is not there"),
        "{error}"
    );
    assert_eq!(registry.blob_gets(), gets, "nothing downloaded for a skew");

    // versionSkew: warn installs and reports; a matching shim reports nothing.
    class.version_skew = VersionSkew::Warn;
    let installed = store.ensure(&class).await.expect("installed");
    assert!(installed.pulled);
    assert_eq!(
        installed.version_skew.as_deref(),
        Some(
            format!(
                "the artifact needs kata 3.3.0; {} is kata 3.2.0",
                shim.display()
            )
            .as_str()
        )
    );
    kata_shim(&node.dir.path().join("bin"), "3.3.0");
    let again = store.ensure(&class).await.expect("up to date");
    assert!(!again.pulled);
    assert_eq!(again.version_skew, None);
}

// ---- mirrors (containerd's hosts.toml) ----

/// A loopback `host:port` where nothing listens: an upstream that is down.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

/// The state record's `servedBy`.
fn served_by(node: &Node, class: &str) -> Option<String> {
    store_record(node, class)["servedBy"]
        .as_str()
        .map(str::to_owned)
}

fn store_record(node: &Node, class: &str) -> serde_json::Value {
    let path = node.artifacts().join(format!(".state/{class}.json"));
    serde_json::from_slice(&fs::read(path).expect("state")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_a_plain_mirror_while_the_upstream_is_down() {
    let deps = e2e_guard!();
    let mirror = Registry::start(&deps, RegistryOptions::plain()).expect("mirror");
    let files = three_files(31, 2 << 20);
    let digest = push_three(&mirror, "kata/artifacts:1", &files);
    let upstream = closed_port();
    let node = Node::new();
    node.hosts_toml(
        &upstream,
        &format!(
            "server = \"http://{upstream}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    );
    // registries.insecure is not needed: the scheme in hosts.toml decides.
    let store = node.store_with_hosts(&[]);
    let class = class("kata-mirror", &format!("{upstream}/kata/artifacts:1"));

    let installed = store.ensure(&class).await.expect("pull through the mirror");
    assert_eq!(installed.digest, digest);
    assert_eq!(installed.served_by.as_deref(), Some(mirror.host().as_str()));
    assert_installed(&node, "kata-mirror", &digest, &files);
    assert_eq!(served_by(&node, "kata-mirror"), Some(mirror.host()));
    eventually("3 blob GETs on the mirror", || mirror.blob_gets() == 3).await;
    let log = mirror.log();
    assert!(
        log.contains(&format!("ns={upstream}")),
        "containerd's ns parameter names the upstream: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_is_down_falls_back_to_the_upstream() {
    let deps = e2e_guard!();
    let upstream = Registry::start(&deps, RegistryOptions::plain()).expect("upstream");
    let files = three_files(32, 1 << 20);
    let digest = push_three(&upstream, "kata/artifacts:1", &files);
    let down = closed_port();
    let node = Node::new();
    node.hosts_toml(
        &upstream.host(),
        &format!("[host.\"http://{down}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    );
    let store = node.store_with_hosts(&[upstream.host()]);
    let class = class(
        "kata-fallback",
        &format!("{}/kata/artifacts:1", upstream.host()),
    );

    let installed = store
        .ensure(&class)
        .await
        .expect("fallback to the upstream");
    assert_eq!(installed.digest, digest);
    assert_eq!(
        installed.served_by.as_deref(),
        Some(upstream.host().as_str())
    );
    assert_installed(&node, "kata-fallback", &digest, &files);
    eventually("3 blob GETs upstream", || upstream.blob_gets() == 3).await;

    // Both down: the error says what each endpoint answered, in order.
    drop(upstream);
    let error = store
        .ensure(&class)
        .await
        .expect_err("nothing serves")
        .to_string();
    let mirror_at = error.find(&format!("mirror {down}:")).expect(&error);
    let upstream_at = error.find("upstream 127.0.0.1:").expect(&error);
    assert!(mirror_at < upstream_at, "{error}");
    assert!(error.contains("no endpoint served"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_mirror_with_its_ca_in_hosts_toml_and_credentials_for_the_mirror_only() {
    let deps = e2e_guard!();
    let mirror =
        Registry::start(&deps, RegistryOptions::tls_with_auth(USER, PASSWORD)).expect("mirror");
    let files = three_files(33, 1 << 20);
    let digest = push_three(&mirror, "kata/artifacts:tls", &files);
    let upstream = closed_port();
    let node = Node::new();
    let dir = node.hosts_toml(
        &upstream,
        &format!(
            "[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"mirror-ca.pem\"\n",
            mirror.host()
        ),
    );
    // Relative to the hosts.toml's directory, as containerd reads it.
    fs::copy(mirror.ca_file(), dir.join("mirror-ca.pem")).expect("ca");
    // The pull secret has credentials for the mirror only.
    node.secret("mirror-secret", &mirror.host(), USER, PASSWORD);
    let store = node.store_with_hosts(&[]);
    let anonymous = class("kata-anon", &format!("{upstream}/kata/artifacts:tls"));
    let class = with_secret(
        class("kata-tls-mirror", &format!("{upstream}/kata/artifacts:tls")),
        "mirror-secret",
    );

    let installed = store
        .ensure(&class)
        .await
        .expect("pull from the TLS mirror");
    assert_eq!(installed.digest, digest);
    assert_eq!(installed.served_by.as_deref(), Some(mirror.host().as_str()));
    assert_installed(&node, "kata-tls-mirror", &digest, &files);
    eventually("3 blob GETs on the mirror", || mirror.blob_gets() == 3).await;

    // Without credentials the mirror refuses, and the error says so for the mirror by name.
    let error = store
        .ensure(&anonymous)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains(&format!("mirror {}", mirror.host())),
        "{error}"
    );
    assert!(error.contains("401"), "{error}");
    assert!(!error.contains(PASSWORD));
}

// Token auth (the protocol of Docker Hub, GHCR, Quay, Harbor): a real `docker-registry` with
// `auth: token`, and the harness's token service signing what each account may do.

const TOKEN_PASSWORD: &str = "t0ken-Pa55word-for-knm";
const PUSHER_PASSWORD: &str = "pusher-Pa55word-for-knm";

/// `puller` may pull `kata/artifacts`, `stranger` only `kata/other`, `blocked` is refused by
/// the service outright; `pusher` is what `oras` pushes with.
fn token_service() -> TokenService {
    TokenService::start(BTreeMap::from([
        ("pusher".to_owned(), Account::admin(PUSHER_PASSWORD)),
        (
            "puller".to_owned(),
            Account::pulls(TOKEN_PASSWORD, &["kata/artifacts"]),
        ),
        (
            "stranger".to_owned(),
            Account::pulls(TOKEN_PASSWORD, &["kata/other"]),
        ),
        ("blocked".to_owned(), Account::refused(TOKEN_PASSWORD)),
    ]))
    .expect("token service")
}

fn token_registry(deps: &kata_nri_integration::Deps, service: &TokenService) -> Registry {
    Registry::start(
        deps,
        RegistryOptions::plain_with_tokens(service, "pusher", PUSHER_PASSWORD),
    )
    .expect("registry with token auth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_a_token_and_says_who_refused_what() {
    let deps = e2e_guard!();
    let service = token_service();
    let registry = token_registry(&deps, &service);
    let files = three_files(40, 1 << 20);
    let digest = push_three(&registry, "kata/artifacts:1", &files);
    let node = Node::new();
    let host = registry.host();
    node.secret("puller", &host, "puller", TOKEN_PASSWORD);
    node.secret("wrong", &host, "puller", "not-the-t0ken-password");
    node.secret("stranger", &host, "stranger", TOKEN_PASSWORD);
    node.secret("blocked", &host, "blocked", TOKEN_PASSWORD);
    let store = node.store_for(&registry);
    let url = format!("{host}/kata/artifacts:1");
    let good = with_secret(class("kata-qemu", &url), "puller");

    let installed = store.ensure(&good).await.expect("pull with a token");
    assert_eq!(installed.digest, digest);
    assert_installed(&node, "kata-qemu", &digest, &files);
    let asked = service.requests();
    let exchanges: Vec<_> = asked
        .iter()
        .filter(|r| r.user.as_deref() == Some("puller"))
        .collect();
    // Once per pull: the blobs go through oci-client, which is handed the same token.
    assert!(
        matches!(exchanges.as_slice(), [r] if r.scopes == ["repository:kata/artifacts:pull"]
            && r.status == 200),
        "one token request, with the pull secret and the pull scope only: {asked:?}"
    );
    fs::remove_dir_all(node.artifacts()).expect("clean artifactsDir");

    let realm_refused = format!("its token service {} refused", service.realm());
    let may_not = |secret: &str| {
        format!("the account of pullSecret \"{secret}\" may not pull this repository")
    };
    for (secret, expected) in [
        // The token service does not know the password.
        ("wrong", vec!["answered 401", "check pullSecret \"wrong\""]),
        // A token that grants no pull of this repository: distribution's 401.
        (
            "stranger",
            vec!["answered 401", "insufficient_scope", &may_not("stranger")],
        ),
        // The token service refuses the account.
        (
            "blocked",
            vec!["answered 403", &realm_refused, &may_not("blocked")],
        ),
    ] {
        let bad = with_secret(class("kata-qemu", &url), secret);
        let error = assert_refused(&node, &store, &good, &bad, &expected).await;
        assert!(!error.contains("not-the-t0ken-password") && !error.contains(TOKEN_PASSWORD));
        fs::remove_dir_all(node.artifacts()).expect("clean artifactsDir");
    }

    // Anonymous: the service issues a token that grants nothing.
    let error = store
        .ensure(&class("kata-anon", &url))
        .await
        .expect_err("anonymous")
        .to_string();
    assert!(
        error.contains("anonymous pulls of this repository are not allowed")
            && error.contains("set artifacts.pullSecret"),
        "{error}"
    );

    // An HTTPS registry whose realm is plain HTTP: the password is not sent there.
    let tls = Registry::start(
        &deps,
        RegistryOptions {
            tls: true,
            ..RegistryOptions::plain_with_tokens(&service, "pusher", PUSHER_PASSWORD)
        },
    )
    .expect("TLS registry with token auth");
    push_three(&tls, "kata/artifacts:1", &files);
    node.secret("puller-tls", &tls.host(), "puller", TOKEN_PASSWORD);
    let before = service.requests().len();
    let store = ArtifactStore::new(node.settings(&[], Some(tls.ca_file())));
    let error = store
        .ensure(&with_secret(
            class("kata-tls", &format!("{}/kata/artifacts:1", tls.host())),
            "puller-tls",
        ))
        .await
        .expect_err("plain-HTTP realm")
        .to_string();
    assert!(
        error.contains(&format!(
            "its token service {} is not HTTPS: the pull secret's password is not sent there",
            service.realm()
        )),
        "{error}"
    );
    assert_eq!(
        service.requests().len(),
        before,
        "nothing sent to the realm"
    );
}

/// The token we were issued for the manifest is handed to oci-client for the blobs; when it
/// expires in the middle of a pull, oci-client exchanges the pull secret again rather than
/// presenting the stale token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_during_a_pull_is_exchanged_again() {
    let deps = e2e_guard!();
    let lifetime = Duration::from_secs(2);
    let service = TokenService::start(BTreeMap::from([
        ("pusher".to_owned(), Account::admin(PUSHER_PASSWORD)),
        (
            "brief".to_owned(),
            Account::pulls(TOKEN_PASSWORD, &["kata/artifacts"]).expiring_after(lifetime),
        ),
    ]))
    .expect("token service");
    let registry = token_registry(&deps, &service);
    let files = three_files(110, 1 << 20);
    let digest = push_three(&registry, "kata/artifacts:1", &files);
    let proxy = CutProxy::start(([127, 0, 0, 1], registry.port()).into())
        .await
        .expect("proxy");
    let node = Node::new();
    node.secret("brief", &proxy.host(), "brief", TOKEN_PASSWORD);
    // One layer at a time, so the layers after the stalled one are asked for after the token
    // has expired.
    let store = ArtifactStore::new(StoreSettings {
        parallel_layers: 1,
        ..node.settings(&[proxy.host()], None)
    });
    proxy.hold_after(256 << 10);
    let class = with_secret(
        class("kata-qemu", &format!("{}/kata/artifacts:1", proxy.host())),
        "brief",
    );
    let pull = tokio::spawn({
        let store = store.clone();
        async move { store.ensure(&class).await }
    });
    eventually("a layer held mid-transfer", || proxy.held() > 0).await;
    let exchanges = || {
        service
            .requests()
            .into_iter()
            .filter(|r| r.user.as_deref() == Some("brief") && r.status == 200)
            .count()
    };
    assert_eq!(
        exchanges(),
        1,
        "the first layer was asked for with the manifest's token: {:?}",
        service.requests()
    );
    // `exp` is in whole seconds: one more makes sure the token has expired.
    tokio::time::sleep(lifetime + Duration::from_secs(1)).await;
    proxy.release();
    let installed = pull
        .await
        .expect("task")
        .expect("pull after the token expired");
    assert_eq!(installed.digest, digest);
    assert_installed(&node, "kata-qemu", &digest, &files);
    assert!(
        exchanges() >= 2,
        "the pull secret was exchanged again after the first token expired: {:?}",
        service.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_token_passwords_never_reach_the_logs() {
    let deps = e2e_guard!();
    let service = token_service();
    let registry = token_registry(&deps, &service);
    push_three(&registry, "kata/artifacts:1", &three_files(41, 1 << 20));
    let node = Node::new();
    let host = registry.host();
    node.secret("puller", &host, "puller", TOKEN_PASSWORD);
    node.secret("wrong", &host, "puller", "wrong-t0ken-Pa55word");
    let run = |secret: &str| {
        let config = node.dir.path().join(format!("config-{secret}.yaml"));
        let text = format!(
            "artifactsDir: {}\npullSecretsDir: {}\nregistries:\n  insecure: [\"{host}\"]\nruntimeClasses:\n  - name: kata-qemu\n    artifacts:\n      url: {host}/kata/artifacts:1\n      pullSecret: {secret}\n",
            node.artifacts().display(),
            node.secrets().display(),
        );
        fs::write(&config, text).expect("config");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("mode");
        std::process::Command::new(env!("CARGO_BIN_EXE_knm-under-test"))
            .args(["pull", "--config"])
            .arg(&config)
            .args(["--output", "json"])
            .env("RUST_LOG", "trace")
            .output()
            .expect("run pull")
    };

    let failed = run("wrong");
    let ok = run("puller");
    assert!(
        ok.status.success(),
        "pull failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!failed.status.success());
    let failed_stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        failed_stderr.contains("answered 401") && failed_stderr.contains("check pullSecret"),
        "{failed_stderr}"
    );
    let everything = [&failed.stdout, &failed.stderr, &ok.stdout, &ok.stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect::<String>();
    assert!(everything.len() > 10_000, "trace logs were captured");
    let issued = service.issued();
    assert!(
        !issued.is_empty(),
        "the successful pull used a token: {:?}",
        service.requests()
    );
    for token in &issued {
        // The signature alone is enough to replay a token; look for it as well as the whole.
        let signature = token.rsplit('.').next().expect("jwt");
        assert!(
            !everything.contains(signature),
            "an issued token appears in the output"
        );
    }
    for secret in [TOKEN_PASSWORD, "wrong-t0ken-Pa55word"] {
        assert!(
            !everything.contains(secret),
            "{secret} appears in the output"
        );
    }
    for pair in [
        format!("puller:{TOKEN_PASSWORD}"),
        "puller:wrong-t0ken-Pa55word".to_owned(),
    ] {
        assert!(
            !everything.contains(&base64(pair.as_bytes())),
            "base64 credentials in the output"
        );
    }
}

/// A valid image manifest of more than containerd's 4,393,216 bytes (an annotation pads it).
fn oversized_manifest() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
        },
        "layers": [],
        "annotations": {"padding": "x".repeat(4_400_000)},
    }))
    .expect("manifest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_manifest_beyond_containerds_cap_from_a_registry_or_a_mirror() {
    let deps = e2e_guard!();
    let big = oversized_manifest();
    // Announced: refused on its Content-Length. Chunked: refused once the cap is read.
    for (announce, expected) in [
        (true, format!("sent a manifest of {} bytes", big.len())),
        (false, "sent a manifest of at least ".to_owned()),
    ] {
        let liar = LyingRegistry::serving_manifest(big.clone(), announce).expect("liar");
        let node = Node::new();
        let store = ArtifactStore::new(node.settings(&[liar.host()], None));
        let error = store
            .ensure(&class(
                "kata-qemu",
                &format!("{}/kata/artifacts:1", liar.host()),
            ))
            .await
            .expect_err("oversized manifest")
            .to_string();
        assert!(
            error.contains(&format!("registry {} {expected}", liar.host()))
                && error.contains("more than the 4393216 bytes containerd accepts"),
            "{error}"
        );
        assert_eq!(liar.manifest_requests(), 1, "refused without retrying");
        assert!(node.snapshot().is_empty(), "{:?}", node.snapshot());
    }

    // The same from a mirror: the mirror is named, the upstream serves, and what is installed
    // is the upstream's.
    let upstream = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let files = three_files(42, 1 << 20);
    let digest = push_three(&upstream, "kata/artifacts:1", &files);
    let mirror = LyingRegistry::serving_manifest(big, true).expect("liar");
    let node = Node::new();
    node.hosts_toml(
        &upstream.host(),
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    );
    let store = node.store_with_hosts(&[upstream.host()]);
    let class = class(
        "kata-mirror",
        &format!("{}/kata/artifacts:1", upstream.host()),
    );
    let installed = store.ensure(&class).await.expect("the upstream serves");
    assert_eq!(installed.digest, digest);
    assert_eq!(
        installed.served_by.as_deref(),
        Some(upstream.host().as_str())
    );
    assert_installed(&node, "kata-mirror", &digest, &files);
    assert_eq!(mirror.manifest_requests(), 1);

    // Upstream gone: the error says what the mirror sent.
    drop(upstream);
    fs::remove_dir_all(node.artifacts()).expect("clean artifactsDir");
    let error = store
        .ensure(&class)
        .await
        .expect_err("nothing serves")
        .to_string();
    assert!(
        error.contains(&format!("mirror {}:", mirror.host()))
            && error.contains("more than the 4393216 bytes containerd accepts"),
        "{error}"
    );
    assert!(node.snapshot().is_empty(), "{:?}", node.snapshot());
}
