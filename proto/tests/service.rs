//! ttrpc service checks: the method paths are the exact upstream strings, and
//! the status codes a runtime sees for unhandled RPCs.
//!
//! A ttrpc request carries the service ("nri.pkg.api.v1alpha1.Plugin") and
//! the method ("Configure") as two fields; gRPC-style tools print them as
//! "/nri.pkg.api.v1alpha1.Plugin/Configure".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt as _;
use kata_nri_proto::api::{ConfigureRequest, ConfigureResponse, Empty, RegisterPluginRequest};
use kata_nri_proto::api_ttrpc::{Plugin, RuntimeClient, create_plugin};
use protobuf::Message;
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Client, MethodHandler, Server, Service, TtrpcContext};
use ttrpc::{Code, Request, Response};

const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";

/// Every Plugin RPC NRI v0.6.1 .. v0.12.x may call.
const PLUGIN_METHODS: [&str; 18] = [
    // all versions
    "Configure",
    "Synchronize",
    "Shutdown",
    "CreateContainer",
    "UpdateContainer",
    "StopContainer",
    "StateChange",
    // v0.10+
    "UpdatePodSandbox",
    "ValidateContainerAdjustment",
    // v0.12+
    "RunPodSandbox",
    "PostUpdatePodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PostCreateContainer",
    "StartContainer",
    "PostStartContainer",
    "PostUpdateContainer",
    "RemoveContainer",
];

/// Implements Configure; answers UNIMPLEMENTED for RunPodSandbox the way the
/// plugin must; leaves everything else at the generated default.
struct TestPlugin;

#[async_trait]
impl Plugin for TestPlugin {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: ConfigureRequest,
    ) -> ttrpc::Result<ConfigureResponse> {
        assert_eq!(req.runtime_name, "containerd");
        Ok(ConfigureResponse {
            events: 7,
            ..Default::default()
        })
    }

    async fn run_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: kata_nri_proto::api::RunPodSandboxRequest,
    ) -> ttrpc::Result<kata_nri_proto::api::RunPodSandboxResponse> {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            Code::UNIMPLEMENTED,
            "not implemented",
        )))
    }
}

#[test]
fn plugin_service_map_has_upstream_names() {
    let services = create_plugin(Arc::new(TestPlugin));
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        [PLUGIN_SERVICE],
        "service name"
    );
    let mut got: Vec<&str> = services[PLUGIN_SERVICE]
        .methods
        .keys()
        .map(String::as_str)
        .collect();
    got.sort_unstable();
    let mut want = PLUGIN_METHODS.to_vec();
    want.sort_unstable();
    assert_eq!(got, want);
    assert!(services[PLUGIN_SERVICE].streams.is_empty());
}

/// Serves `services` on one end of an in-memory duplex; returns a client on
/// the other end.
async fn serve(services: HashMap<String, Service>) -> (Server, Client) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let incoming = futures::stream::iter([Ok(server_io)]).chain(futures::stream::pending());
    let mut server = Server::new()
        .add_listener(Listener::new(incoming))
        .register_service(services);
    server.start().await.expect("start server");
    (server, Client::new(Socket::new(client_io)))
}

fn raw_request(service: &str, method: &str, payload: Vec<u8>) -> Request {
    Request {
        service: service.to_string(),
        method: method.to_string(),
        payload,
        ..Default::default()
    }
}

fn status_code(err: ttrpc::Error) -> Code {
    match err {
        ttrpc::Error::RpcStatus(s) => s.code.enum_value().expect("known code"),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn plugin_answers_upstream_paths_and_codes() {
    let (_server, client) = serve(create_plugin(Arc::new(TestPlugin))).await;

    // Configure, addressed with the literal upstream strings.
    let req = ConfigureRequest {
        runtime_name: "containerd".into(),
        ..Default::default()
    };
    let resp = client
        .request(raw_request(
            PLUGIN_SERVICE,
            "Configure",
            req.write_to_bytes().unwrap(),
        ))
        .await
        .expect("Configure");
    assert_eq!(resp.payload, [0x10, 0x07]);

    // Overridden to answer UNIMPLEMENTED: what v0.12 needs to fall back to
    // StateChange.
    let err = client
        .request(raw_request(PLUGIN_SERVICE, "RunPodSandbox", Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(status_code(err), Code::UNIMPLEMENTED);

    // Declared but not overridden: the generated default is NOT_FOUND, which
    // v0.12 does NOT treat as "fall back"; the plugin must override these.
    for method in ["StopPodSandbox", "StateChange", "Shutdown"] {
        let err = client
            .request(raw_request(PLUGIN_SERVICE, method, Vec::new()))
            .await
            .unwrap_err();
        assert_eq!(status_code(err), Code::NOT_FOUND, "{method}");
    }

    // A method not in the schema at all: the ttrpc server says UNIMPLEMENTED.
    let err = client
        .request(raw_request(PLUGIN_SERVICE, "SomeFutureRpc", Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(status_code(err), Code::UNIMPLEMENTED);
}

/// Records what the client sent and answers Empty.
struct RecordRegister(Arc<Mutex<Vec<(String, String, RegisterPluginRequest)>>>);

#[async_trait]
impl MethodHandler for RecordRegister {
    async fn handler(&self, _ctx: TtrpcContext, req: Request) -> ttrpc::Result<Response> {
        let body = RegisterPluginRequest::parse_from_bytes(&req.payload).expect("decode request");
        self.0
            .lock()
            .unwrap()
            .push((req.service.clone(), req.method.clone(), body));
        let mut resp = Response::new();
        resp.status = protobuf::MessageField::some(ttrpc::get_status(Code::OK, ""));
        resp.payload = Empty::new().write_to_bytes().unwrap();
        Ok(resp)
    }
}

#[tokio::test]
async fn runtime_client_sends_upstream_path() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    // A hand-built Runtime service keyed by the literal upstream strings, so
    // the generated client is checked against them, not against itself.
    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    methods.insert(
        "RegisterPlugin".to_string(),
        Box::new(RecordRegister(seen.clone())),
    );
    let services = HashMap::from([(
        RUNTIME_SERVICE.to_string(),
        Service {
            methods,
            streams: HashMap::new(),
        },
    )]);
    let (_server, client) = serve(services).await;

    let runtime = RuntimeClient::new(client);
    let req = RegisterPluginRequest {
        plugin_name: "kata-nri-manager".into(),
        plugin_idx: "10".into(),
        ..Default::default()
    };
    runtime
        .register_plugin(ttrpc::context::with_timeout(0), &req)
        .await
        .expect("RegisterPlugin");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, RUNTIME_SERVICE);
    assert_eq!(seen[0].1, "RegisterPlugin");
    assert_eq!(seen[0].2, req);
}
