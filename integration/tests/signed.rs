//! cosign signatures (`artifacts.verify.cosignKey`) made by Debian's real `cosign` 2.5 in the
//! local `docker-registry`, checked by kata-nri-manager's `pull`: a signed version installs;
//! unsigned, another key's signature, a payload tampered with in the registry's storage and a
//! signature of another digest are each refused with one line, nothing of the version is
//! fetched, and the installed version stays current.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use kata_nri_integration::{Cosign, Registry, RegistryOptions, e2e_guard};

const CLASS: &str = "kata-signed";
const REPO: &str = "kata/signed";

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// `kata-nri-manager pull` of the class at `url`, checked with `key`.
    fn pull(&self, registry: &Registry, url: &str, key: &Path) -> Output {
        let config = self.dir.path().join("config.yaml");
        let text = format!(
            "artifactsDir: {}\nregistries: {{insecure: [\"{}\"]}}\nruntimeClasses:\n- name: {CLASS}\n  artifacts:\n    url: {url}\n    verify: {{cosignKey: {}}}\n",
            self.artifacts().display(),
            registry.host(),
            key.display()
        );
        fs::write(&config, text).expect("config");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("mode");
        std::process::Command::new(env!("CARGO_BIN_EXE_knm-under-test"))
            .args(["pull", "--config"])
            .arg(&config)
            .output()
            .expect("run pull")
    }

    /// The version the class's link points at.
    fn current(&self) -> Option<String> {
        fs::read_link(self.artifacts().join(CLASS))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    fn record(&self) -> serde_json::Value {
        let bytes = fs::read(
            self.artifacts()
                .join(".state")
                .join(format!("{CLASS}.json")),
        )
        .expect("install record");
        serde_json::from_slice(&bytes).expect("record is JSON")
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The one `error:` line a refused pull prints.
#[track_caller]
fn refusal(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "pull succeeded: {}",
        stderr(output)
    );
    let text = stderr(output);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    errors[0].to_owned()
}

#[test]
fn only_a_version_signed_by_the_nodes_key_for_its_own_digest_is_installed() {
    let deps = e2e_guard!();
    let Some(cosign) = Cosign::require(&deps) else {
        return;
    };
    let registry = Registry::start(&deps, RegistryOptions::plain()).expect("registry");
    let node = Node {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let ours = cosign.generate_key_pair("ours").expect("key");
    let theirs = cosign.generate_key_pair("theirs").expect("key");
    let host = registry.host();
    let one = registry
        .push_files(&format!("{REPO}:1"), &[("vmlinux", b"kernel one")])
        .expect("push 1");
    let two = registry
        .push_files(&format!("{REPO}:2"), &[("vmlinux", b"kernel two")])
        .expect("push 2");
    let url_one = format!("{host}/{REPO}:1");
    let url_two = format!("{host}/{REPO}:2");

    // Unsigned: refused before any blob of the version is fetched.
    let gets = registry.blob_gets();
    let line = refusal(&node.pull(&registry, &url_one, &ours.public));
    assert!(
        line.contains(&format!(
            "unsigned: no cosign signature at {REPO}:sha256-{}.sig",
            &one[7..]
        )),
        "{line}"
    );
    assert!(line.contains(&one), "{line}");
    assert_eq!(registry.blob_gets(), gets, "nothing of the version fetched");
    assert_eq!(node.current(), None, "nothing installed");

    // Signed by a key the node does not trust.
    cosign
        .sign(&theirs, &format!("{host}/{REPO}@{one}"))
        .expect("sign with theirs");
    let line = refusal(&node.pull(&registry, &url_one, &ours.public));
    assert!(
        line.contains(&format!(
            "signature does not verify with cosign key {}",
            ours.public.display()
        )),
        "{line}"
    );
    assert_eq!(node.current(), None);

    // Signed again by ours (cosign adds a layer): any one signature by the node's key will do.
    cosign
        .sign(&ours, &format!("{host}/{REPO}@{one}"))
        .expect("sign with ours");
    cosign
        .verify(&ours, &format!("{host}/{REPO}@{one}"))
        .expect("cosign itself agrees");
    let output = node.pull(&registry, &url_one, &ours.public);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(node.current().as_deref(), Some(one.as_str()));
    let fingerprint = node.record()["signedBy"]
        .as_str()
        .expect("the record names the key")
        .to_owned();
    assert!(fingerprint.starts_with("sha256:"), "{fingerprint}");

    // A valid signature by our key, but of version one, tagged as version two's.
    registry
        .copy_signature(REPO, &one, &two)
        .expect("copy signature");
    let line = refusal(&node.pull(&registry, &url_two, &ours.public));
    assert!(
        line.contains(&format!("the signature is for {one}, not for {two}")),
        "{line}"
    );
    assert_eq!(node.current().as_deref(), Some(one.as_str()), "one stays");

    // Version three signed by our key, then its payload changed in the registry's storage.
    let three = registry
        .push_files(&format!("{REPO}:3"), &[("vmlinux", b"kernel three")])
        .expect("push 3");
    cosign
        .sign(&ours, &format!("{host}/{REPO}@{three}"))
        .expect("sign three");
    registry
        .tamper_signature_payload(REPO, &three)
        .expect("tamper");
    let line = refusal(&node.pull(&registry, &format!("{host}/{REPO}:3"), &ours.public));
    assert!(line.contains("tampered with in the registry"), "{line}");
    assert_eq!(node.current().as_deref(), Some(one.as_str()), "one stays");

    // A changed key makes the installed version be checked again: signed by neither of the
    // keys that signed it, it is refused.
    let stranger = cosign.generate_key_pair("stranger").expect("key");
    let line = refusal(&node.pull(&registry, &url_one, &stranger.public));
    assert!(line.contains("does not verify with cosign key"), "{line}");
    assert_eq!(node.current().as_deref(), Some(one.as_str()), "one stays");
}
