//! The connection multiplexer: two ttrpc connections over the one NRI socket.
//!
//! Connection 1 carries the `Plugin` service (containerd is the client), connection 2 the `Runtime`
//! service (we are the client). Each logical connection is handed to ttrpc as one end of an
//! in-memory duplex pipe; the driver task moves bytes between those pipes and the socket, cutting
//! outgoing data into frames of at most 4096 payload bytes.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::frame::{self, FrameDecoder, FrameError, MAX_OUTGOING_PAYLOAD};

/// Connection on which the runtime calls the plugin's `Plugin` service.
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// Connection on which the plugin calls the runtime's `Runtime` service.
pub const RUNTIME_SERVICE_CONN: u32 = 2;

/// Buffer of each in-memory pipe between ttrpc and the multiplexer.
const PIPE_CAPACITY: usize = 64 * 1024;

/// Why the multiplexed socket stopped carrying traffic.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("reading from the NRI socket: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing to the NRI socket: {0}")]
    Write(#[source] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(
        "runtime sent data for unknown connection {0}: the peer is not an NRI runtime or speaks another protocol"
    )]
    UnknownConnection(u32),
    #[error("runtime closed the connection in the middle of a frame")]
    Truncated,
}

/// How a healthy multiplexer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuxEnd {
    /// The runtime closed the socket (containerd stopped or dropped the plugin).
    PeerClosed,
    /// Both local connections were closed by us.
    LocalClosed,
}

/// A running multiplexer. Dropping it closes the socket and both logical connections.
pub struct Multiplexer {
    driver: JoinHandle<Result<MuxEnd, MuxError>>,
}

impl Multiplexer {
    /// Starts multiplexing `io` into the connections `conn_ids`, returning the ttrpc-facing end of
    /// each, in the same order.
    pub fn spawn<S, const N: usize>(io: S, conn_ids: [u32; N]) -> (Self, [DuplexStream; N])
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut inner = HashMap::new();
        let outer = conn_ids.map(|id| {
            let (ours, theirs) = tokio::io::duplex(PIPE_CAPACITY);
            inner.insert(id, ours);
            theirs
        });
        let driver = tokio::spawn(drive(io, inner));
        (Self { driver }, outer)
    }

    /// Waits until the socket stops carrying traffic and says why.
    pub async fn closed(&mut self) -> Result<MuxEnd, MuxError> {
        match (&mut self.driver).await {
            Ok(result) => result,
            // The driver never panics by design; a cancelled driver means we were shut down.
            Err(_) => Ok(MuxEnd::LocalClosed),
        }
    }
}

impl Drop for Multiplexer {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn drive<S>(io: S, conns: HashMap<u32, DuplexStream>) -> Result<MuxEnd, MuxError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (socket_rd, socket_wr) = tokio::io::split(io);
    let (frames_tx, frames_rx) = mpsc::channel::<Bytes>(64);
    // Pumps live in the JoinSet so that they are aborted with the driver.
    let mut pumps = JoinSet::new();
    let mut into_conns = HashMap::new();
    for (id, pipe) in conns {
        let (pipe_rd, pipe_wr) = tokio::io::split(pipe);
        pumps.spawn(pump_outgoing(id, pipe_rd, frames_tx.clone()));
        into_conns.insert(id, pipe_wr);
    }
    drop(frames_tx);

    tokio::select! {
        end = read_loop(socket_rd, into_conns) => end,
        end = write_loop(socket_wr, frames_rx) => end,
    }
}

/// Moves one connection's outgoing bytes into frames of at most 4096 payload bytes.
async fn pump_outgoing(
    conn_id: u32,
    mut pipe: ReadHalf<DuplexStream>,
    frames: mpsc::Sender<Bytes>,
) {
    let mut buf = vec![0u8; MAX_OUTGOING_PAYLOAD];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut out = BytesMut::with_capacity(frame::HEADER_LEN + n);
        frame::encode_frames(conn_id, &buf[..n], &mut out);
        if frames.send(out.freeze()).await.is_err() {
            return;
        }
    }
}

async fn write_loop<W>(mut socket: W, mut frames: mpsc::Receiver<Bytes>) -> Result<MuxEnd, MuxError>
where
    W: AsyncWrite + Unpin,
{
    while let Some(frame) = frames.recv().await {
        socket.write_all(&frame).await.map_err(MuxError::Write)?;
    }
    Ok(MuxEnd::LocalClosed)
}

async fn read_loop<R, W>(mut socket: R, mut conns: HashMap<u32, W>) -> Result<MuxEnd, MuxError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(2 * MAX_OUTGOING_PAYLOAD);
    loop {
        let n = socket.read_buf(&mut buf).await.map_err(MuxError::Read)?;
        if n == 0 {
            return if decoder.at_frame_boundary() && buf.is_empty() {
                Ok(MuxEnd::PeerClosed)
            } else {
                Err(MuxError::Truncated)
            };
        }
        while let Some(chunk) = decoder.decode(&mut buf)? {
            let pipe = conns
                .get_mut(&chunk.conn_id)
                .ok_or(MuxError::UnknownConnection(chunk.conn_id))?;
            // A local connection that has gone away only loses its own bytes; the socket stays up
            // for the other one.
            if pipe.write_all(&chunk.data).await.is_err() {
                conns.remove(&chunk.conn_id);
            }
        }
        if buf.capacity() - buf.len() < MAX_OUTGOING_PAYLOAD {
            buf.reserve(2 * MAX_OUTGOING_PAYLOAD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(conn: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame::encode_frames(conn, payload, &mut out);
        out.to_vec()
    }

    #[tokio::test]
    async fn routes_incoming_frames_to_their_connection() {
        let (mut runtime, plugin) = tokio::io::duplex(1 << 20);
        let (_mux, [mut one, mut two]) = Multiplexer::spawn(plugin, [1, 2]);
        runtime.write_all(&frame_bytes(2, b"to-two")).await.unwrap();
        runtime.write_all(&frame_bytes(1, b"to-one")).await.unwrap();
        let mut got = [0u8; 6];
        one.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"to-one");
        two.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"to-two");
    }

    #[tokio::test]
    async fn large_writes_leave_in_frames_of_at_most_4096_bytes() {
        let (mut runtime, plugin) = tokio::io::duplex(1 << 20);
        let (_mux, [_one, mut two]) = Multiplexer::spawn(plugin, [1, 2]);
        let payload: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        two.write_all(&payload).await.unwrap();
        let mut received = Vec::new();
        while received.len() < payload.len() {
            let mut header = [0u8; 8];
            runtime.read_exact(&mut header).await.unwrap();
            assert_eq!(&header[..4], &2u32.to_be_bytes());
            let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
            assert!(len <= 4096, "frame of {len} bytes");
            let mut body = vec![0u8; len];
            runtime.read_exact(&mut body).await.unwrap();
            received.extend_from_slice(&body);
        }
        assert_eq!(received, payload);
    }

    #[tokio::test]
    async fn peer_close_between_frames_is_a_clean_end() {
        let (runtime, plugin) = tokio::io::duplex(1024);
        let (mut mux, _conns) = Multiplexer::spawn(plugin, [1, 2]);
        drop(runtime);
        assert_eq!(mux.closed().await.unwrap(), MuxEnd::PeerClosed);
    }

    #[tokio::test]
    async fn peer_close_mid_frame_is_reported() {
        let (mut runtime, plugin) = tokio::io::duplex(1024);
        let (mut mux, _conns) = Multiplexer::spawn(plugin, [1, 2]);
        let frame = frame_bytes(1, b"0123456789");
        runtime.write_all(&frame[..12]).await.unwrap();
        drop(runtime);
        assert!(matches!(mux.closed().await, Err(MuxError::Truncated)));
    }

    #[tokio::test]
    async fn unknown_connection_ids_are_refused() {
        let (mut runtime, plugin) = tokio::io::duplex(1024);
        let (mut mux, _conns) = Multiplexer::spawn(plugin, [1, 2]);
        runtime.write_all(&frame_bytes(7, b"x")).await.unwrap();
        let err = mux.closed().await.unwrap_err();
        assert!(matches!(err, MuxError::UnknownConnection(7)), "{err}");
    }

    #[tokio::test]
    async fn dropping_the_multiplexer_closes_the_connections() {
        let (_runtime, plugin) = tokio::io::duplex(1024);
        let (mux, [mut one, _two]) = Multiplexer::spawn(plugin, [1, 2]);
        drop(mux);
        let mut buf = [0u8; 1];
        let n = one.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
    }
}
