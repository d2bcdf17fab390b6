//! containerd's CRI, for what NRI cannot tell: which sandboxes exist (containerd removes the
//! sandboxes of a handler that left its config without NRI events, and NRI may be off; the
//! garbage collector asks CRI before it removes anything), and whether a restarted containerd
//! serves the runtime handlers its new config names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::pods::PodRecord;

mod wire;

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
    #[error("CRI client: {0}")]
    Runtime(String),
    #[error("CRI {call} at {}: {}", address.display(), status.message())]
    Call {
        call: &'static str,
        address: PathBuf,
        status: Box<tonic::Status>,
    },
}

impl CriError {
    /// containerd answers, but without this call (its CRI plugin is disabled, or too old).
    pub fn unimplemented(&self) -> bool {
        matches!(self, CriError::Call { status, .. } if status.code() == tonic::Code::Unimplemented)
    }
}

/// What CRI `Status` says about the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriStatus {
    /// The `RuntimeReady` condition.
    pub runtime_ready: bool,
    /// The runtime handlers containerd serves; empty from containerd before 2.0, which does
    /// not list them.
    pub handlers: Vec<String>,
}

async fn channel(address: &Path) -> Result<Channel, CriError> {
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
    Ok(channel)
}

fn failed(call: &'static str, address: &Path) -> impl FnOnce(tonic::Status) -> CriError {
    let address = address.to_path_buf();
    move |status| CriError::Call {
        call,
        address,
        status: Box::new(status),
    }
}

/// CRI `Status`: whether the runtime is ready and which handlers it serves.
pub async fn status(address: &Path) -> Result<CriStatus, CriError> {
    let request = wire::StatusRequest { verbose: false };
    let response: wire::StatusResponse =
        wire::unary(channel(address).await?, wire::STATUS, request)
            .await
            .map_err(failed("Status", address))?;
    let runtime_ready = response.status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
    });
    Ok(CriStatus {
        runtime_ready,
        handlers: response
            .runtime_handlers
            .into_iter()
            .map(|h| h.name)
            .collect(),
    })
}

/// Every sandbox containerd knows, ready or not.
pub async fn list_sandboxes(address: &Path) -> Result<Vec<PodRecord>, CriError> {
    let response: wire::ListPodSandboxResponse = wire::unary(
        channel(address).await?,
        wire::LIST_POD_SANDBOX,
        wire::ListPodSandboxRequest {},
    )
    .await
    .map_err(failed("ListPodSandbox", address))?;
    Ok(response
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
