//! The harness itself: containerd starts, runs a pod under a runc-backed test handler, keeps it
//! across a restart, and cleans up. No plugin involved.

use std::time::{Duration, Instant};

use kata_nri_integration::{
    Containerd, ContainerdOptions, PodSandboxState, PodSpec, RuntimeHandler, TEST_HANDLER, Version,
    cri_status, e2e_guard,
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
