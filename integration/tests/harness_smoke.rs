//! The harness itself: containerd starts, runs a pod under a runc-backed test handler, keeps it
//! across a restart, and cleans up. No plugin involved.

use std::time::{Duration, Instant};

use kata_nri_integration::{
    Containerd, ContainerdOptions, Cosign, PodSandboxState, PodSpec, Registry, RegistryOptions,
    RuntimeHandler, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, TEST_HANDLER, Version,
    cri_status, e2e_guard, signature_tag,
};

async fn pod_survives_restart(version: Version) {
    let deps = e2e_guard!();
    let t = Instant::now();
    let mut cd = Containerd::start(&deps, version, ContainerdOptions::default())
        .await
        .expect("containerd starts");
    eprintln!("{version}: ready with pause image in {:?}", t.elapsed());
    assert!(cd.nri_socket().exists(), "{version} creates its NRI socket");

    let mut cri = cd.cri().await.unwrap();
    let status = cri.status().await.unwrap();
    assert!(status.runtime_ready(), "{:?}", status.conditions);
    if version == Version::V2_1 {
        assert!(
            status.runtime_handlers.iter().any(|h| h == TEST_HANDLER),
            "2.1 reports its handlers: {:?}",
            status.runtime_handlers
        );
    }

    let pod = PodSpec::new("smoke")
        .handler(TEST_HANDLER)
        .annotation("example.com/a", "b")
        .label("app", "smoke");
    let t = Instant::now();
    let id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    eprintln!("{version}: RunPodSandbox in {:?}", t.elapsed());
    let st = cri.pod_status(&id).await.unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(st.runtime_handler, TEST_HANDLER);
    assert_eq!(
        st.annotations.get("example.com/a").map(String::as_str),
        Some("b")
    );

    let old_pid = cd.pid();
    let t = Instant::now();
    cd.restart().await.expect("restart");
    eprintln!("{version}: restarted in {:?}", t.elapsed());
    assert_ne!(cd.pid(), old_pid);
    assert!(cd.nri_socket().exists(), "NRI socket recreated");

    let mut cri = cd.cri().await.unwrap();
    assert_eq!(
        cri.pod_state(&id).await.unwrap(),
        PodSandboxState::SandboxReady,
        "pod survives the restart"
    );
    let pods = cri.list_pods().await.unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, id);

    cri.stop_pod(&id).await.unwrap();
    assert_eq!(
        cri.pod_state(&id).await.unwrap(),
        PodSandboxState::SandboxNotready
    );
    cri.remove_pod(&id).await.unwrap();
    assert!(cri.list_pods().await.unwrap().is_empty());

    // An unconfigured handler fails with containerd's own words.
    let err = cri
        .run_pod(&PodSpec::new("nohandler").handler("no-such-handler"))
        .await
        .unwrap_err();
    let status = cri_status(&err).expect("a CRI error");
    assert!(
        status
            .message()
            .contains("no runtime for \"no-such-handler\" is configured"),
        "{err}"
    );

    cd.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn containerd_2_1_pod_survives_restart() {
    pod_survives_restart(Version::V2_1).await;
}

#[tokio::test]
async fn containerd_1_7_pod_survives_restart() {
    pod_survives_restart(Version::V1_7).await;
}

#[tokio::test]
async fn containerd_1_6_has_no_nri_socket() {
    let deps = e2e_guard!();
    let cd = Containerd::start(&deps, Version::V1_6, ContainerdOptions::default())
        .await
        .expect("containerd 1.6 starts with an NRI section in its config");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !cd.nri_socket().exists(),
        "containerd 1.6 has no NRI: {} must not exist",
        cd.nri_socket().display()
    );
    assert!(!cd.nri_socket().parent().unwrap().join("nri.sock").exists());
    cd.shutdown().await.unwrap();
}

/// Drop cleans up pods left running, even with containerd stopped at that point.
#[tokio::test]
async fn drop_cleans_up_live_pods() {
    let deps = e2e_guard!();
    let mut cd = Containerd::start(&deps, Version::V2_1, ContainerdOptions::default())
        .await
        .unwrap();
    let mut cri = cd.cri().await.unwrap();
    let id = cri
        .run_pod(&PodSpec::new("left-behind").handler(TEST_HANDLER))
        .await
        .unwrap();
    let dir = cd.dir().to_path_buf();
    let socket = kata_nri_integration::containerd::shim_socket(cd.address(), "k8s.io", &id);
    cd.stop().await.unwrap();
    drop(cri);
    drop(cd);
    assert!(!dir.exists(), "temp dir removed");
    assert!(!socket.exists(), "shim socket {} removed", socket.display());
}

/// A handler whose `runtime_path` is a wrapper script: containerd runs it for the sandbox, and
/// the pod starts once it execs the version's real runc shim.
async fn runtime_path_wrapper_runs(version: Version) {
    let deps = e2e_guard!();
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("calls");
    let wrapper = marker_dir.path().join("shim-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            deps.runc_shim_bin(version).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let opts = ContainerdOptions::default()
        .handler(RuntimeHandler::runc("kata-wrapped").runtime_path(&wrapper));
    let cd = Containerd::start(&deps, version, opts).await.unwrap();
    let mut cri = cd.cri().await.unwrap();
    let id = cri
        .run_pod(&PodSpec::new("wrapped").handler("kata-wrapped"))
        .await
        .expect("pod through the wrapper");
    assert_eq!(
        cri.pod_state(&id).await.unwrap(),
        PodSandboxState::SandboxReady
    );
    let calls = std::fs::read_to_string(&marker).unwrap();
    assert!(
        calls
            .lines()
            .any(|l| l.contains(&format!("-id {id} start"))),
        "wrapper called for the sandbox: {calls}"
    );
    cd.shutdown().await.unwrap();
}

#[tokio::test]
async fn containerd_2_1_runtime_path_wrapper() {
    runtime_path_wrapper_runs(Version::V2_1).await;
}

#[tokio::test]
async fn containerd_1_7_runtime_path_wrapper() {
    runtime_path_wrapper_runs(Version::V1_7).await;
}

/// Containers in a pod (the pause image doubles as a container image: it runs `/pause`).
#[tokio::test]
async fn container_runs_in_pod() {
    let deps = e2e_guard!();
    let cd = Containerd::start(&deps, Version::V2_1, ContainerdOptions::default())
        .await
        .unwrap();
    let mut cri = cd.cri().await.unwrap();
    let pod = PodSpec::new("with-container").handler(TEST_HANDLER);
    let pod_id = cri.run_pod(&pod).await.unwrap();
    let spec = kata_nri_integration::ContainerSpec::new("c", &deps.pause_image_ref);
    let id = cri.create_container(&pod_id, &pod, &spec).await.unwrap();
    cri.start_container(&id).await.unwrap();
    let st = cri.container_status(&id).await.unwrap();
    assert_eq!(
        st.state,
        kata_nri_integration::cri_api::ContainerState::ContainerRunning as i32
    );
    cri.stop_container(&id, 1).await.unwrap();
    cri.remove_container(&id).await.unwrap();
    assert!(cri.list_containers().await.unwrap().is_empty());
    cd.shutdown().await.unwrap();
}

/// Real cosign signatures in the test registry (Debian's cosign 2.5, `KNM_COSIGN`): signed by
/// digest, stored the legacy way under `sha256-<hex>.sig`, verified by cosign with the key and
/// not with another; and the registry helpers that forge signatures do what they say: a copied
/// signature names the other digest, and a payload edited in storage is served as it is, under
/// its old digest.
#[test]
fn cosign_signs_in_the_test_registry() {
    use base64::Engine as _;
    use sha2::{Digest as _, Sha256};

    let deps = e2e_guard!();
    let Some(cosign) = Cosign::require(&deps) else {
        return;
    };
    let registry = Registry::start(&deps, RegistryOptions::plain()).unwrap();
    let repo = "signed/guest";
    let digest = registry
        .push_files(&format!("{repo}:v1"), &[("vmlinux", b"a kernel")])
        .unwrap();
    let other_digest = registry
        .push_files(&format!("{repo}:v2"), &[("vmlinux", b"another kernel")])
        .unwrap();
    let reference = format!("{}/{repo}@{digest}", registry.host());
    let other_reference = format!("{}/{repo}@{other_digest}", registry.host());

    let t = Instant::now();
    let key = cosign.generate_key_pair("signer").unwrap();
    let stranger = cosign.generate_key_pair("stranger").unwrap();
    eprintln!("cosign generate-key-pair x2 in {:?}", t.elapsed());
    assert!(
        key.public_pem()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    assert!(
        cosign.generate_key_pair("signer").is_err(),
        "names are not reused"
    );

    let t = Instant::now();
    cosign.sign(&key, &reference).expect("cosign sign");
    eprintln!("cosign sign in {:?}", t.elapsed());
    assert!(
        cosign
            .sign(&key, &format!("{}/{repo}:v1", registry.host()))
            .is_err()
    );

    // The signature manifest, under the digest's tag.
    let sig = registry.signature_manifest(repo, &digest).unwrap();
    let layers = sig["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{sig}");
    assert_eq!(layers[0]["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
    let signature = layers[0]["annotations"][SIGNATURE_ANNOTATION]
        .as_str()
        .expect("signature annotation");
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .expect("base64 signature");
    assert_eq!(der[0], 0x30, "an ECDSA signature is a DER sequence");
    let payload_digest = registry.signature_payload_digest(repo, &digest).unwrap();
    assert_eq!(layers[0]["digest"], payload_digest.as_str());
    let answer = registry
        .get(&format!("/v2/{repo}/blobs/{payload_digest}"))
        .unwrap();
    assert_eq!(answer.status, 200);
    let payload: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        payload["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    assert_eq!(
        payload["critical"]["identity"]["docker-reference"],
        format!("{}/{repo}", registry.host())
    );
    assert_eq!(
        payload["critical"]["type"],
        "cosign container image signature"
    );

    // cosign's own verdicts.
    let t = Instant::now();
    cosign
        .verify(&key, &reference)
        .expect("verifies with the key");
    eprintln!("cosign verify in {:?}", t.elapsed());
    let err = cosign.verify(&stranger, &reference).unwrap_err();
    eprintln!("another key: {err:#}");
    assert!(err.to_string().contains("invalid signature"), "{err:#}");
    assert!(
        cosign.verify(&key, &other_reference).is_err(),
        "v2 is not signed"
    );

    // A signature of another digest: the copy is byte for byte the same manifest, and cosign
    // refuses it for v2.
    let copied = registry
        .copy_signature(repo, &digest, &other_digest)
        .unwrap();
    assert_eq!(
        registry.signature_manifest(repo, &other_digest).unwrap(),
        sig
    );
    assert_eq!(
        copied,
        format!(
            "sha256:{:x}",
            Sha256::digest(
                registry
                    .manifest_bytes(&format!("{repo}:{}", signature_tag(&digest)))
                    .unwrap()
            )
        )
    );
    let err = cosign.verify(&key, &other_reference).unwrap_err();
    eprintln!("signature of another digest: {err:#}");
    assert!(
        err.to_string()
            .contains(&format!("invalid or missing digest in claim: {digest}")),
        "{err:#}"
    );

    // put_signature_manifest replaces it: without the annotation there is no signature.
    let mut unsigned = sig.clone();
    unsigned["layers"][0]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(SIGNATURE_ANNOTATION);
    registry
        .put_signature_manifest(repo, &other_digest, &unsigned)
        .unwrap();
    assert_eq!(
        registry.signature_manifest(repo, &other_digest).unwrap(),
        unsigned
    );
    let err = cosign.verify(&key, &other_reference).unwrap_err();
    eprintln!("no signature annotation: {err:#}");
    assert!(err.to_string().contains("missing"), "{err:#}");

    // The payload edited in storage: distribution serves the new bytes under the old digest.
    registry.tamper_signature_payload(repo, &digest).unwrap();
    let answer = registry
        .get(&format!("/v2/{repo}/blobs/{payload_digest}"))
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("docker-content-digest"),
        Some(payload_digest.as_str()),
        "{:?}",
        answer.headers
    );
    assert_ne!(
        format!("sha256:{:x}", Sha256::digest(&answer.body)),
        payload_digest
    );
    let served: serde_json::Value = serde_json::from_slice(&answer.body).expect("still JSON");
    assert_ne!(
        served["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    let err = cosign.verify(&key, &reference).unwrap_err();
    eprintln!("tampered payload: {err:#}");
    assert!(
        err.to_string().contains("error verifying sha256 checksum"),
        "{err:#}"
    );

    // cosign's requests are not counted as the plugin's (the two blob GETs are `get`'s).
    assert_eq!(registry.manifest_requests(), 0);
    assert_eq!(registry.blob_gets(), 2);
}
