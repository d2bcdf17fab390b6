//! The NRI runtime against a fake runtime that behaves as containerd does on the wire: it calls
//! `Configure` and `Synchronize` (in parts) before it answers `RegisterPlugin`, then sends events.
//! The real containerd is exercised in `integration/`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kata_nri_manager::nri::mux::{Multiplexer, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use kata_nri_manager::nri::{
    Container, Event, EventMask, NriError, NriHandler, PluginIdentity, PodEvent, PodSandbox,
    RuntimeInfo, SessionEnd, run_session,
};
use kata_nri_proto::api;
use kata_nri_proto::api_ttrpc::{PluginClient, Runtime, create_runtime};
use tokio::io::AsyncWriteExt;
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Client, Server, TtrpcContext};

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl NriHandler for Recorder {
    fn subscriptions(&self) -> EventMask {
        EventMask::of(&[Event::RunPodSandbox, Event::UpdatePodSandbox])
    }
    fn configured(&self, runtime: &RuntimeInfo) {
        self.calls.lock().unwrap().push(format!(
            "configured {} {:?}",
            runtime.runtime_name, runtime.config
        ));
    }
    fn synchronized(&self, pods: Vec<PodSandbox>, _containers: Vec<Container>) {
        let ids: Vec<_> = pods.iter().map(|p| p.id.as_str()).collect();
        self.calls
            .lock()
            .unwrap()
            .push(format!("synchronized {ids:?}"));
    }
    fn pod_event(&self, event: PodEvent, pod: PodSandbox) {
        self.calls.lock().unwrap().push(format!(
            "{} {} {} {:?}",
            event.as_str(),
            pod.id,
            pod.runtime_handler,
            pod.annotations.get("prepare")
        ));
    }
    fn disconnected(&self) {
        self.calls.lock().unwrap().push("disconnected".into());
    }
}

/// What the fake runtime saw.
#[derive(Default)]
struct FakeRuntime {
    plugin: OnceLock<PluginClient>,
    registered_as: Mutex<Option<(String, String)>>,
    subscribed: Mutex<Option<i32>>,
    sync_more_echo: Mutex<Vec<bool>>,
}

fn pod(id: &str, handler: &str) -> api::PodSandbox {
    let mut pod = api::PodSandbox {
        id: id.into(),
        name: format!("name-{id}"),
        namespace: "default".into(),
        runtime_handler: handler.into(),
        ..Default::default()
    };
    pod.annotations.insert("prepare".into(), "kata-qemu".into());
    pod
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(2).as_nanos() as i64)
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn register_plugin(
        &self,
        _ctx: &TtrpcContext,
        req: api::RegisterPluginRequest,
    ) -> ttrpc::Result<api::Empty> {
        *self.registered_as.lock().unwrap() = Some((req.plugin_name, req.plugin_idx));
        let plugin = self.plugin.get().expect("plugin client set");
        // As containerd: Configure and Synchronize happen before RegisterPlugin is answered.
        let configured = plugin
            .configure(
                ctx(),
                &api::ConfigureRequest {
                    config: "from-conf-file".into(),
                    runtime_name: "fake".into(),
                    runtime_version: "0".into(),
                    ..Default::default()
                },
            )
            .await?;
        *self.subscribed.lock().unwrap() = Some(configured.events);
        for (more, id) in [(true, "a"), (false, "b")] {
            let reply = plugin
                .synchronize(
                    ctx(),
                    &api::SynchronizeRequest {
                        pods: vec![pod(id, "runc")],
                        more,
                        ..Default::default()
                    },
                )
                .await?;
            self.sync_more_echo.lock().unwrap().push(reply.more);
        }
        Ok(api::Empty::default())
    }
}

struct FakeRuntimeEnd {
    runtime: Arc<FakeRuntime>,
    plugin: PluginClient,
    _mux: Multiplexer,
    _server: Server,
}

async fn fake_runtime(io: tokio::io::DuplexStream) -> FakeRuntimeEnd {
    let (mux, [plugin_conn, runtime_conn]) =
        Multiplexer::spawn(io, [PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);
    let runtime = Arc::new(FakeRuntime::default());
    let incoming = futures::stream::once(async move { Ok(runtime_conn) })
        .chain(futures::stream::pending())
        .boxed();
    let mut server = Server::new()
        .add_listener(Listener::new(incoming))
        .register_service(create_runtime(runtime.clone()));
    server.start().await.unwrap();
    let plugin = PluginClient::new(Client::new(Socket::new(plugin_conn)));
    runtime.plugin.set(plugin.clone()).ok();
    FakeRuntimeEnd {
        runtime,
        plugin,
        _mux: mux,
        _server: server,
    }
}

#[tokio::test]
async fn registers_configures_synchronizes_and_dispatches_events() {
    let (plugin_io, runtime_io) = tokio::io::duplex(1 << 16);
    let fake = fake_runtime(runtime_io).await;
    let handler = Arc::new(Recorder::default());
    let identity = PluginIdentity::new("kata-nri-manager", "50").unwrap();
    let (registered_tx, registered_rx) = tokio::sync::oneshot::channel();
    let session = tokio::spawn({
        let handler = handler.clone();
        async move {
            run_session(plugin_io, "fake", &identity, handler, |_| {
                registered_tx.send(()).ok();
            })
            .await
        }
    });
    tokio::time::timeout(Duration::from_secs(5), registered_rx)
        .await
        .expect("registered in time")
        .unwrap();

    assert_eq!(
        *fake.runtime.registered_as.lock().unwrap(),
        Some(("kata-nri-manager".into(), "50".into()))
    );
    // UpdatePodSandbox (12) is unknown to a runtime that does not send its NRI version.
    assert_eq!(*fake.runtime.subscribed.lock().unwrap(), Some(1));
    assert_eq!(*fake.runtime.sync_more_echo.lock().unwrap(), [true, false]);

    fake.plugin
        .state_change(
            ctx(),
            &api::StateChangeEvent {
                event: api::Event::RUN_POD_SANDBOX.into(),
                pod: Some(pod("c", "kata-qemu")).into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // v0.12's dedicated RPCs must get UNIMPLEMENTED so that the runtime falls back to StateChange.
    let err = fake
        .plugin
        .run_pod_sandbox(ctx(), &api::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    match err {
        ttrpc::Error::RpcStatus(status) => {
            assert_eq!(status.code(), ttrpc::Code::UNIMPLEMENTED, "{status:?}")
        }
        other => panic!("expected an RPC status, got {other:?}"),
    }

    fake.plugin
        .shutdown(ctx(), &api::Empty::default())
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .expect("session ends after Shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(end, SessionEnd::Shutdown);

    assert_eq!(
        handler.calls(),
        [
            "configured fake \"from-conf-file\"",
            "synchronized [\"a\", \"b\"]",
            "RunPodSandbox c kata-qemu Some(\"kata-qemu\")",
            "disconnected",
        ]
    );
}

#[tokio::test]
async fn a_v0_12_runtime_is_offered_its_newer_events() {
    let (plugin_io, runtime_io) = tokio::io::duplex(1 << 16);
    let (_mux, [plugin_conn, _runtime_conn]) =
        Multiplexer::spawn(runtime_io, [PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);
    let plugin = PluginClient::new(Client::new(Socket::new(plugin_conn)));
    let handler = Arc::new(Recorder::default());
    let identity = PluginIdentity::new("p", "10").unwrap();
    let _session =
        tokio::spawn(
            async move { run_session(plugin_io, "fake", &identity, handler, |_| {}).await },
        );
    let reply = plugin
        .configure(
            ctx(),
            &api::ConfigureRequest {
                NRI_version: "v0.12.2".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.events, 1 | (1 << 11));
}

#[tokio::test]
async fn a_peer_that_closes_mid_message_gets_a_clear_error() {
    let (plugin_io, mut runtime_io) = tokio::io::duplex(1 << 16);
    let handler = Arc::new(Recorder::default());
    let identity = PluginIdentity::new("p", "10").unwrap();
    let session =
        tokio::spawn(
            async move { run_session(plugin_io, "peer", &identity, handler, |_| {}).await },
        );
    // A frame header for connection 1 announcing 100 bytes, then only 3 of them.
    runtime_io
        .write_all(&[0, 0, 0, 1, 0, 0, 0, 100, 1, 2, 3])
        .await
        .unwrap();
    drop(runtime_io);
    let err = tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, NriError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("middle of a frame"), "{err}");
}

#[tokio::test]
async fn a_frame_announcing_4_gib_is_refused() {
    let (plugin_io, mut runtime_io) = tokio::io::duplex(1 << 16);
    let handler = Arc::new(Recorder::default());
    let identity = PluginIdentity::new("p", "10").unwrap();
    let session =
        tokio::spawn(
            async move { run_session(plugin_io, "peer", &identity, handler, |_| {}).await },
        );
    runtime_io
        .write_all(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("4294967295 bytes"), "{err}");
    assert!(err.to_string().contains("not an NRI runtime"), "{err}");
}

#[tokio::test]
async fn a_peer_that_closes_without_registering_is_named() {
    let (plugin_io, runtime_io) = tokio::io::duplex(1 << 16);
    drop(runtime_io);
    let handler = Arc::new(Recorder::default());
    let identity = PluginIdentity::new("p", "10").unwrap();
    let err = run_session(plugin_io, "/run/x.sock", &identity, handler, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, NriError::ClosedBeforeRegistration { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("/run/x.sock is not containerd's NRI socket"),
        "{err}"
    );
}
