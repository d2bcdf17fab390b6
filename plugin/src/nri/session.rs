//! One connection to the runtime: multiplexer, Plugin service, registration, serving until the
//! connection ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kata_nri_proto::api::RegisterPluginRequest;
use kata_nri_proto::api_ttrpc::RuntimeClient;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tracing::{info, warn};
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Client, Server};

use super::error::{NriError, Result};
use super::handler::NriHandler;
use super::identity::PluginIdentity;
use super::mux::{Multiplexer, MuxEnd, MuxError, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use super::service::PluginService;

/// containerd's default registration timeout; it drops a plugin that takes longer.
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the reply to `Shutdown` gets to leave before we close the socket.
const SHUTDOWN_REPLY_GRACE: Duration = Duration::from_millis(100);

/// How long we wait for the ttrpc server's connection tasks after the socket is gone.
const SERVER_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How a registered session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The runtime closed the socket (containerd stopped or restarted).
    PeerClosed,
    /// The runtime sent `Shutdown`.
    Shutdown,
}

/// Registers over `io` and serves the runtime until the connection ends.
///
/// `registered` is called once registration completes, with the time it took.
pub async fn run_session<S>(
    io: S,
    peer: &str,
    identity: &PluginIdentity,
    handler: Arc<dyn NriHandler>,
    registered: impl FnOnce(Duration),
) -> Result<SessionEnd>
where
    S: AsyncRead + AsyncWrite + Send + Sync + 'static,
{
    let started = Instant::now();
    let (mut mux, [plugin_conn, runtime_conn]) =
        Multiplexer::spawn(io, [PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);

    // The runtime calls Configure before it answers RegisterPlugin: serve connection 1 first.
    let shutdown = Arc::new(Notify::new());
    let service = PluginService::new(handler.clone(), shutdown.clone());
    // A listener that yields our one connection and then stays open: ttrpc's accept loop ends
    // when its listener stream ends.
    let incoming = futures::stream::once(async move { Ok(plugin_conn) })
        .chain(futures::stream::pending())
        .boxed();
    let mut server = Server::new()
        .add_listener(Listener::new(incoming))
        .register_service(service.into_services());
    server
        .start()
        .await
        .map_err(|e| NriError::Server(e.to_string()))?;

    let client = RuntimeClient::new(Client::new(Socket::new(runtime_conn)));
    let outcome = async {
        register(&client, &mut mux, peer, identity).await?;
        registered(started.elapsed());
        info!(
            plugin = %identity,
            peer,
            elapsed_us = started.elapsed().as_micros() as u64,
            "registered with the runtime"
        );
        tokio::select! {
            end = mux.closed() => match end? {
                MuxEnd::PeerClosed | MuxEnd::LocalClosed => Ok(SessionEnd::PeerClosed),
            },
            () = shutdown.notified() => {
                // Give ttrpc a moment to deliver the reply to Shutdown before we close the socket;
                // the runtime usually closes it first.
                let _ = tokio::time::timeout(SHUTDOWN_REPLY_GRACE, mux.closed()).await;
                Ok(SessionEnd::Shutdown)
            }
        }
    }
    .await;

    handler.disconnected();
    // Closing the socket ends ttrpc's connection tasks; then the server's accept loop can stop.
    drop(client);
    drop(mux);
    if tokio::time::timeout(SERVER_SHUTDOWN_GRACE, server.shutdown())
        .await
        .is_err()
    {
        warn!("ttrpc server did not stop within {SERVER_SHUTDOWN_GRACE:?}");
    }
    outcome
}

async fn register(
    client: &RuntimeClient,
    mux: &mut Multiplexer,
    peer: &str,
    identity: &PluginIdentity,
) -> Result<()> {
    let request = RegisterPluginRequest {
        plugin_name: identity.name().to_owned(),
        plugin_idx: identity.index().to_owned(),
        ..Default::default()
    };
    let ctx = ttrpc::context::with_timeout(REGISTRATION_TIMEOUT.as_nanos() as i64);
    tokio::select! {
        reply = client.register_plugin(ctx, &request) => match reply {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(status)) => Err(NriError::Refused(status.message().to_owned())),
            // Transport errors mean the socket went away; the multiplexer knows why.
            Err(_) => Err(closed_during_registration(mux, peer).await),
        },
        end = mux.closed() => Err(registration_failure(end, peer)),
        () = tokio::time::sleep(REGISTRATION_TIMEOUT) => Err(NriError::RegistrationTimeout(REGISTRATION_TIMEOUT)),
    }
}

async fn closed_during_registration(mux: &mut Multiplexer, peer: &str) -> NriError {
    match tokio::time::timeout(Duration::from_millis(200), mux.closed()).await {
        Ok(end) => registration_failure(end, peer),
        Err(_) => NriError::ClosedBeforeRegistration {
            peer: peer.to_owned(),
        },
    }
}

/// Why registration failed, given how the socket ended. A reset is a close: a server of another
/// protocol (e.g. containerd's gRPC socket) resets the connection when it reads our frames.
fn registration_failure(end: Result<MuxEnd, MuxError>, peer: &str) -> NriError {
    match end {
        Err(MuxError::Read(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            NriError::ClosedBeforeRegistration {
                peer: peer.to_owned(),
            }
        }
        Err(cause) => NriError::Protocol {
            peer: peer.to_owned(),
            cause,
        },
        Ok(_) => NriError::ClosedBeforeRegistration {
            peer: peer.to_owned(),
        },
    }
}
