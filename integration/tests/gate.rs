//! The shim gate under real containerd: containerd runs the gate link as the class's
//! `runtime_path`; the gate passes ready classes and non-start calls straight to the real shim,
//! makes a sandbox start of an unready class wait for the daemon, and fails the start with the
//! daemon's reason when the class is denied. A scripted daemon stands in for the reconciler here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kata_nri_integration::{
    Containerd, ContainerdOptions, Deps, PodSandboxState, PodSpec, RuntimeHandler, Version,
    cri_status, e2e_guard,
};
use kata_nri_manager::gate::{self, EnsureRequest, Ensurer, GateState, Refusal};

const GATE_BINARY: &str = env!("CARGO_BIN_EXE_knm-gate-under-test");
const CLASS: &str = "kata-gated";

/// A daemon that marks the class ready after a delay, or refuses it, and remembers who asked.
struct Script {
    gate_dir: PathBuf,
    delay: Duration,
    deny: Option<String>,
    asked: Mutex<Vec<EnsureRequest>>,
}

#[derive(Clone)]
struct ScriptedDaemon(Arc<Script>);

impl Ensurer for ScriptedDaemon {
    fn ensure(&self, request: EnsureRequest) -> BoxFuture<'static, Result<(), Refusal>> {
        self.0.asked.lock().unwrap().push(request.clone());
        let me = self.0.clone();
        Box::pin(async move {
            tokio::time::sleep(me.delay).await;
            if let Some(reason) = &me.deny {
                return Err(reason.clone().into());
            }
            let mut state =
                GateState::read(&me.gate_dir, &request.class).map_err(|e| e.to_string())?;
            state.ready = true;
            state.digest = Some("sha256:test".into());
            state.write(&me.gate_dir).map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

struct GatedNode {
    cd: Containerd,
    daemon: Arc<Script>,
    _server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn gated_node(
    deps: &Deps,
    version: Version,
    ready: bool,
    delay: Duration,
    deny: Option<&str>,
) -> GatedNode {
    let dir = tempfile::tempdir().unwrap();
    let gate_dir = dir.path().join("gate");
    let links = gate::links::install(&gate_dir, Path::new(GATE_BINARY), &[CLASS]).unwrap();
    let socket = dir.path().join("run/gate.sock");
    GateState {
        class: CLASS.into(),
        real_shim: deps.runc_shim_bin(version),
        ready,
        digest: None,
        daemon_socket: socket.clone(),
        timeout_ms: 20_000,
        files: Default::default(),
    }
    .write(&gate_dir)
    .unwrap();
    let daemon = Arc::new(Script {
        gate_dir,
        delay,
        deny: deny.map(str::to_owned),
        asked: Mutex::new(Vec::new()),
    });
    let server = tokio::spawn({
        let daemon = daemon.clone();
        async move {
            gate::serve(&socket, Arc::new(ScriptedDaemon(daemon)), Arc::default())
                .await
                .unwrap();
        }
    });
    let opts =
        ContainerdOptions::default().handler(RuntimeHandler::runc(CLASS).runtime_path(&links[0]));
    let cd = Containerd::start(deps, version, opts).await.unwrap();
    GatedNode {
        cd,
        daemon,
        _server: server,
        _dir: dir,
    }
}

async fn a_ready_class_starts_without_asking_the_daemon(version: Version) {
    let deps = e2e_guard!();
    let node = gated_node(&deps, version, true, Duration::ZERO, None).await;
    let mut cri = node.cd.cri().await.unwrap();
    let id = cri
        .run_pod(&PodSpec::new("ready").handler(CLASS))
        .await
        .unwrap();
    assert_eq!(
        cri.pod_state(&id).await.unwrap(),
        PodSandboxState::SandboxReady
    );
    assert!(node.daemon.asked.lock().unwrap().is_empty());
    // delete and the rest go through the gate to the real shim as well.
    cri.stop_pod(&id).await.unwrap();
    cri.remove_pod(&id).await.unwrap();
}

#[tokio::test]
async fn a_ready_class_starts_without_asking_the_daemon_2_1() {
    a_ready_class_starts_without_asking_the_daemon(Version::V2_1).await;
}

#[tokio::test]
async fn a_ready_class_starts_without_asking_the_daemon_1_7() {
    a_ready_class_starts_without_asking_the_daemon(Version::V1_7).await;
}

async fn an_unready_class_waits_for_the_daemon_then_starts(version: Version) {
    let deps = e2e_guard!();
    let delay = Duration::from_millis(1500);
    let node = gated_node(&deps, version, false, delay, None).await;
    let mut cri = node.cd.cri().await.unwrap();
    let started = Instant::now();
    let id = cri
        .run_pod(&PodSpec::new("waits").namespace("team-a").handler(CLASS))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= delay,
        "the start waited for the daemon"
    );
    assert_eq!(
        cri.pod_state(&id).await.unwrap(),
        PodSandboxState::SandboxReady
    );
    let asked = node.daemon.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].class, CLASS);
    assert_eq!(asked[0].sandbox_id.as_deref(), Some(id.as_str()));
    assert_eq!(asked[0].pod_namespace.as_deref(), Some("team-a"));
    assert_eq!(asked[0].pod_name.as_deref(), Some("waits"));
}

#[tokio::test]
async fn an_unready_class_waits_for_the_daemon_then_starts_2_1() {
    an_unready_class_waits_for_the_daemon_then_starts(Version::V2_1).await;
}

#[tokio::test]
async fn an_unready_class_waits_for_the_daemon_then_starts_1_7() {
    an_unready_class_waits_for_the_daemon_then_starts(Version::V1_7).await;
}

#[tokio::test]
async fn a_denied_class_fails_the_start_with_the_reason() {
    let deps = e2e_guard!();
    let reason = "denied by policy 20-namespace-gate: namespace team-b may not use kata-gated";
    let node = gated_node(&deps, Version::V2_1, false, Duration::ZERO, Some(reason)).await;
    let mut cri = node.cd.cri().await.unwrap();
    let err = cri
        .run_pod(&PodSpec::new("denied").namespace("team-b").handler(CLASS))
        .await
        .unwrap_err();
    let status = cri_status(&err).expect("a CRI error");
    assert!(status.message().contains(reason), "{}", status.message());
    assert_eq!(node.daemon.asked.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_missing_daemon_fails_the_start_with_a_clear_error() {
    let deps = e2e_guard!();
    let node = gated_node(&deps, Version::V2_1, false, Duration::ZERO, None).await;
    node._server.abort();
    // The socket file stays but nobody accepts: the same as a daemon that died. The gate waits
    // for it (a restarting daemon) until its timeout, 2 s here, then fails the start.
    let state = GateState::read(&node.daemon.gate_dir, CLASS).unwrap();
    GateState {
        timeout_ms: 2_000,
        ..state
    }
    .write(&node.daemon.gate_dir)
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut cri = node.cd.cri().await.unwrap();
    let err = cri
        .run_pod(&PodSpec::new("nodaemon").handler(CLASS))
        .await
        .unwrap_err();
    let status = cri_status(&err).expect("a CRI error");
    assert!(
        status
            .message()
            .contains("cannot reach the kata-nri-manager daemon"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("(tried for "),
        "{}",
        status.message()
    );
}
