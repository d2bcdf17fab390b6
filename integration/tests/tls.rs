//! TLS as containerd does it (issue 22): a registry serving a self-signed certificate made the way
//! Docker's documentation shows (`openssl req -x509 … -addext subjectAltName=…`, `CA:TRUE`) is
//! trusted with that certificate as the CA, as containerd and `oras` trust it; a certificate
//! that is not exactly a configured one, or not for the registry's name, still is not.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_nri_integration::registry::self_signed_certificate;
use kata_nri_integration::{Registry, RegistryOptions, e2e_guard};
use kata_nri_manager::artifacts::{ArtifactStore, RetryPolicy, StoreSettings};
use kata_nri_manager::config::{
    Artifacts, KataConfig, Limits, Registries, RuntimeClass, RuntimeSettings,
};

const PASSWORD: &str = "s3cret-Pa55word-for-knm";
const USER: &str = "knm";
const CONFIG: &str = "[hypervisor.qemu]\npath = \"/opt/kata/bin/qemu-system-x86_64\"\nkernel = \"/opt/kata/share/kata-containers/vmlinux\"\nimage = \"/opt/kata/share/kata-containers/kata.img\"\n";

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("knm-tls-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// `<pullSecretsDir>/secret/.dockerconfigjson` for `registry`.
    fn secret(&self, registry: &str) {
        let dir = self.dir.path().join("pull-secrets/secret");
        fs::create_dir_all(&dir).expect("secret dir");
        let config = serde_json::json!({"auths": {
            format!("https://{registry}"): {"username": USER, "password": PASSWORD}
        }});
        fs::write(dir.join(".dockerconfigjson"), config.to_string()).expect("secret");
    }

    /// A store with `ca_file` as `registries.caFile`.
    fn store(&self, ca_file: &Path) -> ArtifactStore {
        ArtifactStore::new(StoreSettings {
            artifacts_dir: self.artifacts(),
            pull_secrets_dir: self.dir.path().join("pull-secrets"),
            registries: Registries {
                allowed: vec![],
                insecure: vec![],
                ca_file: Some(ca_file.to_owned()),
                hosts_dir: None,
            },
            limits: Limits::default(),
            allowed_host_paths: KataConfig::default().allowed_host_paths,
            allowed_keys: Vec::new(),
            allowed_arguments: Vec::new(),
            parallel_layers: 3,
            retry: RetryPolicy {
                attempts: 2,
                backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
            },
            hosts_dirs: vec![],
        })
    }
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
            pull_secret: Some("secret".into()),
            digest: None,
            verify: None,
        },
        runtime: RuntimeSettings::default(),
    }
}

/// Pushes kernel, image and configuration (with `oras`, the registry's certificate as its CA:
/// Go accepts it); returns the manifest digest.
fn push(registry: &Registry, kernel: &[u8]) -> String {
    let image: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i * 7 % 251) as u8).collect();
    registry
        .push_files(
            "kata/artifacts:tls",
            &[
                ("vmlinux", kernel),
                ("kata.img", &image),
                ("configuration-qemu.toml", CONFIG.as_bytes()),
            ],
        )
        .expect("oras push with the self-signed certificate as CA")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusts_a_self_signed_ca_certificate_configured_as_the_ca() {
    let deps = e2e_guard!();
    let registry = Registry::start(
        &deps,
        RegistryOptions::self_signed_with_auth("IP:127.0.0.1", USER, PASSWORD),
    )
    .expect("registry");
    let certificate = fs::read_to_string(registry.ca_file()).expect("certificate");
    let digest = push(&registry, b"kernel");
    let url = format!("{}/kata/artifacts:tls", registry.host());
    let node = Node::new();
    node.secret(&registry.host());

    // The certificate is CA:TRUE, as OpenSSL makes it without a configuration of its own.
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(registry.ca_file())
        .output()
        .expect("openssl x509");
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "{certificate}"
    );

    // The certificate itself as registries.caFile: manifest, token-less basic auth, blobs.
    let installed = node
        .store(&registry.ca_file())
        .ensure(&class("kata-self-signed", &url))
        .await
        .expect("pull with the registry's own certificate as CA");
    assert_eq!(installed.digest, digest);
    let link = node.artifacts().join("kata-self-signed");
    assert_eq!(fs::read(link.join("vmlinux")).expect("kernel"), b"kernel");
    assert!(registry.blob_gets() >= 3, "blobs came over TLS too");

    // The same certificate in a bundle after another CA: exact match against any of them.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("other.pem");
    self_signed_certificate(&dir.path().join("other.key"), &other, "IP:127.0.0.1")
        .expect("another certificate");
    let bundle = dir.path().join("bundle.pem");
    fs::write(
        &bundle,
        fs::read_to_string(&other).expect("other") + &certificate,
    )
    .expect("bundle");
    node.store(&bundle)
        .ensure(&class("kata-bundle", &url))
        .await
        .expect("pull with the certificate second in a bundle");

    // Another self-signed CA:TRUE certificate for the same name is not the registry's: refused,
    // with the rule in the error, and not retried.
    let error = node
        .store(&other)
        .ensure(&class("kata-other-ca", &url))
        .await
        .expect_err("another certificate as CA")
        .to_string();
    assert!(
        error.contains("CaUsedAsEndEntity")
            && error.contains("not exactly one of the configured CA certificates"),
        "{error}"
    );
    assert!(error.contains("after 1 attempts"), "{error}");
    assert!(!error.contains(PASSWORD), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_configured_self_signed_certificate_for_another_name() {
    let deps = e2e_guard!();
    // Served on 127.0.0.1, made for another address.
    let registry = Registry::start(
        &deps,
        RegistryOptions::self_signed_with_auth("IP:127.0.0.2,DNS:registry.test", USER, PASSWORD),
    )
    .expect("registry");
    let node = Node::new();
    node.secret(&registry.host());
    let error = node
        .store(&registry.ca_file())
        .ensure(&class(
            "kata-wrong-name",
            &format!("{}/kata/artifacts:tls", registry.host()),
        ))
        .await
        .expect_err("a certificate for another name")
        .to_string();
    assert!(
        error.contains("certificate not valid for name") && error.contains("127.0.0.1"),
        "{error}"
    );
    assert!(error.contains("after 1 attempts"), "{error}");
}
