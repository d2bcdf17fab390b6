//! The daemon's NRI side against real containerd 2.1 and 1.7: registration, Synchronize, pod
//! events, containerd restarts, the launched mode and bad peers.

use std::path::Path;
use std::time::{Duration, Instant};

use kata_nri_integration::{
    Containerd, ContainerdOptions, FileSource, NO_KERNEL_MODULES, PluginOptions, PluginProcess,
    PodSpec, TEST_HANDLER, Version, e2e_guard, run_to_completion,
};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_knm-under-test");
const PREPARE: &str = "kata-nri-manager.io/prepare";
/// A pod annotation value that must never reach the log.
const POD_SECRET: &str = "pod-annotation-s3cret-9f2c";

fn pod_events(plugin: &PluginProcess, event: &str, pod_name: &str) -> Vec<Value> {
    plugin
        .events()
        .into_iter()
        .filter(|e| e["message"] == "pod" && e["event"] == event)
        .filter(|e| {
            e["pod"]
                .as_str()
                .is_some_and(|p| p.ends_with(&format!("/{pod_name}")))
        })
        .collect()
}

async fn wait_pod_event(plugin: &PluginProcess, event: &str, pod_name: &str) -> Value {
    let wanted = format!("/{pod_name}");
    plugin
        .wait_for_events(1, Duration::from_secs(10), |e| {
            e["message"] == "pod"
                && e["event"] == event
                && e["pod"].as_str().is_some_and(|p| p.ends_with(&wanted))
        })
        .await
        .unwrap()
        .remove(0)
}

async fn registers(version: Version) {
    let deps = e2e_guard!();
    let cd = Containerd::start(&deps, version, ContainerdOptions::default())
        .await
        .unwrap();
    let opts = PluginOptions::default();
    let mark = cd.log_mark();
    let plugin = PluginProcess::start(Path::new(PLUGIN), cd.nri_socket(), &opts).unwrap();
    cd.wait_nri_registered(&opts.full_name(), mark, Duration::from_secs(10))
        .await
        .unwrap();
    plugin
        .wait_registered(1, Duration::from_secs(5))
        .await
        .unwrap();
    // Configure's log line follows the registration's by a moment: wait for it.
    let configured = plugin
        .wait_for_events(1, Duration::from_secs(5), |e| {
            e["message"] == "configured by the runtime"
        })
        .await
        .unwrap();
    assert_eq!(configured.len(), 1, "{}", plugin.log());
    assert_eq!(configured[0]["runtime"], "containerd");
}

#[tokio::test]
async fn registers_with_containerd_2_1() {
    registers(Version::V2_1).await;
}

#[tokio::test]
async fn registers_with_containerd_1_7() {
    registers(Version::V1_7).await;
}

async fn sees_pods_in_synchronize_and_events(version: Version) {
    let deps = e2e_guard!();
    let cd = Containerd::start(&deps, version, ContainerdOptions::default())
        .await
        .unwrap();
    let mut cri = cd.cri().await.unwrap();
    let before = PodSpec::new("before")
        .namespace("team-a")
        .handler(TEST_HANDLER)
        .annotation(PREPARE, "kata-qemu");
    let before_id = cri.run_pod(&before).await.unwrap();

    let plugin = PluginProcess::start(
        Path::new(PLUGIN),
        cd.nri_socket(),
        &PluginOptions::default(),
    )
    .unwrap();
    let synced = wait_pod_event(&plugin, "Synchronize", "before").await;
    assert_eq!(synced["pod_id"], before_id.as_str());
    assert_eq!(synced["pod"], "team-a/before");
    assert_eq!(synced["runtime_handler"], TEST_HANDLER);
    let keys = synced["annotation_keys"].as_str().unwrap();
    assert!(keys.contains(&format!("\"{PREPARE}\"")), "{keys}");
    assert_eq!(synced["prepare"], "kata-qemu");

    let after = PodSpec::new("after")
        .handler(TEST_HANDLER)
        .annotation(PREPARE, "kata-clh,kata-qemu")
        .annotation("example.com/token", POD_SECRET);
    let after_id = cri.run_pod(&after).await.unwrap();
    let run = wait_pod_event(&plugin, "RunPodSandbox", "after").await;
    assert_eq!(run["pod_id"], after_id.as_str());
    assert_eq!(run["runtime_handler"], TEST_HANDLER);
    assert_eq!(run["prepare"], "kata-clh,kata-qemu", "{run}");
    assert!(
        run["annotation_keys"]
            .as_str()
            .unwrap()
            .contains("\"example.com/token\""),
        "{run}"
    );
    assert!(
        !plugin.log().contains(POD_SECRET),
        "an annotation's value reached the log"
    );

    cri.stop_pod(&after_id).await.unwrap();
    wait_pod_event(&plugin, "StopPodSandbox", "after").await;
    cri.remove_pod(&after_id).await.unwrap();
    wait_pod_event(&plugin, "RemovePodSandbox", "after").await;
    // Each event arrives exactly once.
    for event in ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"] {
        assert_eq!(pod_events(&plugin, event, "after").len(), 1, "{event}");
    }
}

#[tokio::test]
async fn sees_pods_in_synchronize_and_events_2_1() {
    sees_pods_in_synchronize_and_events(Version::V2_1).await;
}

#[tokio::test]
async fn sees_pods_in_synchronize_and_events_1_7() {
    sees_pods_in_synchronize_and_events(Version::V1_7).await;
}

async fn survives_twenty_containerd_restarts(version: Version) {
    let deps = e2e_guard!();
    let mut cd = Containerd::start(&deps, version, ContainerdOptions::default())
        .await
        .unwrap();
    let opts = PluginOptions::default();
    let mut plugin = PluginProcess::start(Path::new(PLUGIN), cd.nri_socket(), &opts).unwrap();
    plugin
        .wait_registered(1, Duration::from_secs(10))
        .await
        .unwrap();

    // Warm up one cycle so that lazily allocated buffers are in the baseline.
    cd.restart().await.unwrap();
    plugin
        .wait_registered(2, Duration::from_secs(5))
        .await
        .unwrap();
    let fds_before = plugin.fd_count().unwrap();
    let rss_before = plugin.rss_kib().unwrap();

    let mut worst = Duration::ZERO;
    for round in 0..20 {
        let mark = cd.log_mark();
        cd.restart().await.unwrap();
        let ready = Instant::now();
        cd.wait_nri_registered(&opts.full_name(), mark, Duration::from_secs(1))
            .await
            .unwrap_or_else(|e| panic!("round {round}: not registered within 1 s: {e:#}"));
        worst = worst.max(ready.elapsed());
    }
    plugin
        .wait_registered(22, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(plugin.is_running());
    let fds_after = plugin.fd_count().unwrap();
    let rss_after = plugin.rss_kib().unwrap();
    eprintln!(
        "{version}: worst re-registration {worst:?}; fds {fds_before} -> {fds_after}; rss {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        fds_after <= fds_before + 1,
        "file descriptors grew: {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after <= rss_before + 4096,
        "memory grew by more than 4 MiB over 20 restarts: {rss_before} KiB -> {rss_after} KiB"
    );
}

#[tokio::test]
async fn survives_twenty_containerd_restarts_2_1() {
    survives_twenty_containerd_restarts(Version::V2_1).await;
}

#[tokio::test]
async fn survives_twenty_containerd_restarts_1_7() {
    survives_twenty_containerd_restarts(Version::V1_7).await;
}

async fn launched_by_containerd(version: Version, idx: &str) {
    let deps = e2e_guard!();
    let full_name = format!("{idx}-kata-nri-manager");
    let log = Path::new("/var/log/kata-nri-manager").join(format!("{full_name}.log"));
    let _ = std::fs::remove_file(&log);
    // A config with no classes whose node-local paths stay in a temp dir (a launched plugin's
    // .conf is trusted and may set them).
    let work = tempfile::tempdir().unwrap();
    let conf = format!(
        "listen: 127.0.0.1:0\nstateDir: {dir}/state\nartifactsDir: {dir}/artifacts\n\
         containerd: {{configPath: {dir}/config.toml}}\n\
         gate: {{dir: {dir}/gate, socket: {dir}/gate.sock}}\n{NO_KERNEL_MODULES}runtimeClasses: []\n",
        dir = work.path().display()
    );
    let opts = ContainerdOptions::default()
        .nri_plugin(&full_name, FileSource::Copy(PLUGIN.into()))
        .nri_plugin_config(
            format!("{full_name}.conf"),
            FileSource::Contents(conf.clone().into_bytes(), 0o600),
        );
    let cd = Containerd::start(&deps, version, opts).await.unwrap();
    cd.wait_nri_registered(&full_name, 0, Duration::from_secs(10))
        .await
        .unwrap();
    // The launched plugin logs to its own file: containerd gives it no stdout or stderr.
    let deadline = Instant::now() + Duration::from_secs(5);
    let configured = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["message"] == "configured by the runtime")
        {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no configure in {}: {text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The config file's contents arrive through Configure.
    assert_eq!(configured["config_bytes"], conf.len());

    // A pod is seen by the launched plugin too.
    let mut cri = cd.cri().await.unwrap();
    cri.run_pod(&PodSpec::new("launched").handler(TEST_HANDLER))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("\"RunPodSandbox\"")
    {
        assert!(
            Instant::now() < deadline,
            "launched plugin saw no RunPodSandbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn launched_by_containerd_2_1() {
    launched_by_containerd(Version::V2_1, "43").await;
}

#[tokio::test]
async fn launched_by_containerd_1_7() {
    launched_by_containerd(Version::V1_7, "44").await;
}

/// The daemon's warning when it cannot reach NRI (other warnings, such as a config's, may come
/// first).
const NRI_RETRY: &str = "cannot connect to the runtime; retrying with backoff";

/// containerd 1.6 has no NRI: it starts and creates no socket. The plugin says so clearly and
/// keeps waiting (no crash loop), logging the problem once rather than at every retry.
#[tokio::test]
async fn no_nri_socket_is_a_clear_error_not_a_crash_loop() {
    let deps = e2e_guard!();
    let cd = Containerd::start(&deps, Version::V1_6, ContainerdOptions::default())
        .await
        .unwrap();
    assert!(!cd.nri_socket().exists());
    let mut plugin = PluginProcess::start(
        Path::new(PLUGIN),
        cd.nri_socket(),
        &PluginOptions::default(),
    )
    .unwrap();
    let warnings = plugin
        .wait_for_events(1, Duration::from_secs(5), |e| {
            e["error"]
                .as_str()
                .is_some_and(|m| m.contains("does not exist"))
        })
        .await
        .unwrap();
    let message = warnings[0]["error"].as_str().unwrap();
    assert!(
        message.contains("containerd 1.6 and older have no NRI"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(plugin.is_running(), "the daemon keeps waiting for NRI");
    let repeated = plugin
        .events_with_message(NRI_RETRY)
        .into_iter()
        .filter(|e| e["level"] == "WARN")
        .count();
    assert_eq!(
        repeated,
        1,
        "warned once, not at every retry: {}",
        plugin.log()
    );
}

/// Pointed at containerd's gRPC socket (HTTP/2, not NRI), the plugin names the problem.
#[tokio::test]
async fn a_socket_that_is_not_nri_is_named() {
    let deps = e2e_guard!();
    let cd = Containerd::start(&deps, Version::V2_1, ContainerdOptions::default())
        .await
        .unwrap();
    let mut plugin =
        PluginProcess::start(Path::new(PLUGIN), cd.address(), &PluginOptions::default()).unwrap();
    let warnings = plugin
        .wait_for_events(1, Duration::from_secs(10), |e| {
            e["level"] == "WARN" && e["message"] == NRI_RETRY
        })
        .await
        .unwrap();
    let message = warnings[0]["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("not containerd's NRI socket") || message.contains("not an NRI runtime"),
        "{message}"
    );
    assert!(plugin.is_running());
}

/// A peer that announces a 4 GiB frame is refused with the numbers, and the plugin redials.
#[tokio::test]
async fn a_peer_announcing_a_4_gib_frame_is_refused() {
    if std::env::var_os("KNM_REQUIRE_E2E").is_none() && !Path::new(PLUGIN).exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("evil.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let accepts = tokio::spawn(async move {
        let mut count = 0;
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            count += 1;
            tokio::io::AsyncWriteExt::write_all(&mut conn, &[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff])
                .await
                .ok();
            if count == 2 {
                return count;
            }
        }
    });
    let mut plugin =
        PluginProcess::start(Path::new(PLUGIN), &socket, &PluginOptions::default()).unwrap();
    let warnings = plugin
        .wait_for_events(1, Duration::from_secs(10), |e| {
            e["level"] == "WARN" && e["message"] == NRI_RETRY
        })
        .await
        .unwrap();
    let message = warnings[0]["error"].as_str().unwrap_or_default();
    assert!(message.contains("4294967295 bytes"), "{message}");
    assert!(message.contains("not an NRI runtime"), "{message}");
    // It redials instead of dying.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), accepts)
            .await
            .unwrap()
            .unwrap(),
        2
    );
    assert!(plugin.is_running());
}

#[tokio::test]
async fn an_invalid_plugin_index_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, kata_nri_integration::EMPTY_CONFIG).unwrap();
    let (code, stderr) = run_to_completion(
        Path::new(PLUGIN),
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--plugin-idx",
            "5",
            "--nri-socket",
            "/nonexistent",
        ],
    )
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(stderr.contains("invalid plugin index \"5\""), "{stderr}");
    assert!(stderr.contains("exactly two digits"), "{stderr}");
}
