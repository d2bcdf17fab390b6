//! The two CRI v1 calls the daemon makes (`runtime.v1.RuntimeService/Status` and
//! `/ListPodSandbox`), as prost messages written by hand: the fields and numbers are those of
//! kubernetes' `cri-api` `api.proto`, so the bytes on the wire are the same as a generated
//! client's. Fields the daemon does not read are left out (protobuf skips unknown fields).
//! Writing them here keeps `protoc` out of the daemon's build.

use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {
    #[prost(bool, tag = "1")]
    pub verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RuntimeStatus>,
    #[prost(message, repeated, tag = "3")]
    pub runtime_handlers: Vec<RuntimeHandler>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeStatus {
    #[prost(message, repeated, tag = "1")]
    pub conditions: Vec<RuntimeCondition>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeCondition {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(bool, tag = "2")]
    pub status: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeHandler {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// No filter: every sandbox. (`PodSandboxFilter filter = 1` is never sent.)
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxResponse {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<PodSandbox>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(int64, tag = "4")]
    pub created_at: i64,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: std::collections::HashMap<String, String>,
    #[prost(string, tag = "7")]
    pub runtime_handler: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
}

pub const STATUS: &str = "/runtime.v1.RuntimeService/Status";
pub const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";

/// One unary call on `channel`, as tonic's generated clients make it.
pub async fn unary<Req, Resp>(
    channel: Channel,
    path: &'static str,
    request: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
    grpc.unary(
        tonic::Request::new(request),
        PathAndQuery::from_static(path),
        ProstCodec::<Req, Resp>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PodSandbox` with every field of `api.proto`, as containerd sends it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct FullPodSandbox {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(message, optional, tag = "2")]
        metadata: Option<FullMetadata>,
        #[prost(int32, tag = "3")]
        state: i32,
        #[prost(int64, tag = "4")]
        created_at: i64,
        #[prost(map = "string, string", tag = "5")]
        labels: std::collections::HashMap<String, String>,
        #[prost(map = "string, string", tag = "6")]
        annotations: std::collections::HashMap<String, String>,
        #[prost(string, tag = "7")]
        runtime_handler: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct FullMetadata {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        uid: String,
        #[prost(string, tag = "3")]
        namespace: String,
        #[prost(uint32, tag = "4")]
        attempt: u32,
    }

    #[test]
    fn a_full_sandbox_decodes_into_the_fields_we_read() {
        use prost::Message;
        let full = FullPodSandbox {
            id: "abc".into(),
            metadata: Some(FullMetadata {
                name: "pod".into(),
                uid: "u-1".into(),
                namespace: "ns".into(),
                attempt: 2,
            }),
            state: 1,
            created_at: 1_700_000_000_000_000_000,
            labels: [("l".to_owned(), "v".to_owned())].into(),
            annotations: [("a".to_owned(), "b".to_owned())].into(),
            runtime_handler: "kata-qemu".into(),
        };
        let ours = PodSandbox::decode(full.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(ours.id, "abc");
        assert_eq!(ours.runtime_handler, "kata-qemu");
        assert_eq!(ours.created_at, 1_700_000_000_000_000_000);
        assert_eq!(ours.annotations.get("a").map(String::as_str), Some("b"));
        let metadata = ours.metadata.expect("metadata");
        assert_eq!(
            (metadata.name.as_str(), metadata.namespace.as_str()),
            ("pod", "ns")
        );
    }
}
