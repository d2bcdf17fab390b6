//! containerd's CRI, for what NRI cannot tell: which sandboxes exist. containerd removes the
//! sandboxes of a handler that left its config without NRI events, and NRI may be off; the
//! garbage collector asks CRI before it removes anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::Endpoint;

use crate::pods::PodRecord;

/// How long a CRI call may take before the caller falls back to what NRI said.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connecting to containerd's CRI at {}: {source}", address.display())]
    Connect {
        address: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI ListPodSandbox at {}: {}", address.display(), status.message())]
    Call {
        address: PathBuf,
        status: Box<tonic::Status>,
    },
}

/// Every sandbox containerd knows, ready or not.
pub async fn list_sandboxes(address: &Path) -> Result<Vec<PodRecord>, CriError> {
    let socket = address.to_path_buf();
    let connect = |source| CriError::Connect {
        address: address.to_path_buf(),
        source,
    };
    // The URI is a placeholder: the connector dials the unix socket.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(connect)?;
    let response = RuntimeServiceClient::new(channel)
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .map_err(|status| CriError::Call {
            address: address.to_path_buf(),
            status: Box::new(status),
        })?;
    Ok(response
        .into_inner()
        .items
        .into_iter()
        .map(|pod| {
            let metadata = pod.metadata.unwrap_or_default();
            PodRecord {
                id: pod.id,
                namespace: metadata.namespace,
                name: metadata.name,
                runtime_handler: pod.runtime_handler,
                annotations: pod.annotations.into_iter().collect(),
                created_at_ms: u64::try_from(pod.created_at / 1_000_000).ok(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_absent_socket_is_named() {
        let err = list_sandboxes(Path::new("/nonexistent/containerd.sock"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/containerd.sock"),
            "{err}"
        );
    }
}
