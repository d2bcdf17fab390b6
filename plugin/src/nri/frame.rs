//! Framing of NRI's connection multiplexer (containerd/nri `pkg/net/multiplex`).
//!
//! Every frame is an 8-byte header — connection id then payload length, both u32 big-endian —
//! followed by the payload. Frames carry arbitrary slices of each connection's byte stream, so the
//! decoder hands out payload pieces as they arrive instead of waiting for whole frames: a peer that
//! announces a huge frame never makes us allocate it.

use bytes::{Buf, Bytes, BytesMut};

/// Size of a frame header on the wire.
pub const HEADER_LEN: usize = 8;

/// Largest payload we put in one frame. containerd reads frames through a 4 KiB buffer and drops
/// the plugin when a frame is larger, so every outgoing frame must stay within this.
pub const MAX_OUTGOING_PAYLOAD: usize = 4096;

/// Largest payload we accept in one incoming frame. containerd itself never sends more than 4 KiB
/// per frame; a header announcing more than this means the peer is not an NRI runtime or the
/// stream is corrupt, and we stop before trusting the length.
pub const MAX_INCOMING_PAYLOAD: u32 = 1 << 20;

/// Errors in the incoming frame stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "frame for connection {conn_id} announces {len} bytes, more than the {max} an NRI runtime sends: the peer is not an NRI runtime or the stream is corrupt"
    )]
    TooLarge { conn_id: u32, len: u32, max: u32 },
}

/// Writes the header of a frame carrying `len` payload bytes for `conn_id`.
pub fn encode_header(conn_id: u32, len: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_OUTGOING_PAYLOAD);
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&conn_id.to_be_bytes());
    // Lengths fit: callers never exceed MAX_OUTGOING_PAYLOAD.
    header[4..].copy_from_slice(&(len as u32).to_be_bytes());
    header
}

/// Splits `payload` into frames of at most [`MAX_OUTGOING_PAYLOAD`] bytes for `conn_id`,
/// appending them (headers included) to `out`.
pub fn encode_frames(conn_id: u32, payload: &[u8], out: &mut BytesMut) {
    for chunk in payload.chunks(MAX_OUTGOING_PAYLOAD) {
        out.extend_from_slice(&encode_header(conn_id, chunk.len()));
        out.extend_from_slice(chunk);
    }
}

/// A piece of one connection's byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub conn_id: u32,
    pub data: Bytes,
}

/// Incremental decoder of the incoming frame stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// The frame being received: its connection and the payload bytes still to come.
    current: Option<(u32, u32)>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next payload piece out of `buf`, or `None` when more input is needed.
    ///
    /// Empty frames are consumed silently. After an error the stream cannot be resynchronised.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, FrameError> {
        loop {
            match self.current {
                Some((conn_id, remaining)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = buf.len().min(remaining as usize);
                    let data = buf.split_to(take).freeze();
                    // take <= remaining, which is a u32.
                    let left = remaining - take as u32;
                    self.current = (left > 0).then_some((conn_id, left));
                    return Ok(Some(Chunk { conn_id, data }));
                }
                None => {
                    if buf.len() < HEADER_LEN {
                        return Ok(None);
                    }
                    let conn_id = buf.get_u32();
                    let len = buf.get_u32();
                    if len > MAX_INCOMING_PAYLOAD {
                        return Err(FrameError::TooLarge {
                            conn_id,
                            len,
                            max: MAX_INCOMING_PAYLOAD,
                        });
                    }
                    if len > 0 {
                        self.current = Some((conn_id, len));
                    }
                }
            }
        }
    }

    /// True when the decoder is between frames, i.e. the stream may end here cleanly.
    pub fn at_frame_boundary(&self) -> bool {
        self.current.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn decode_all(input: &[u8], splits: &[usize]) -> Result<BTreeMap<u32, Vec<u8>>, FrameError> {
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut streams: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut pos = 0;
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (input.len() + 1)).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        for cut in cuts {
            if cut < pos {
                continue;
            }
            buf.extend_from_slice(&input[pos..cut]);
            pos = cut;
            while let Some(chunk) = decoder.decode(&mut buf)? {
                streams
                    .entry(chunk.conn_id)
                    .or_default()
                    .extend_from_slice(&chunk.data);
            }
        }
        Ok(streams)
    }

    #[test]
    fn header_is_big_endian_id_then_length() {
        assert_eq!(encode_header(1, 0x0102), [0, 0, 0, 1, 0, 0, 1, 2]);
        assert_eq!(encode_header(2, 4096), [0, 0, 0, 2, 0, 0, 0x10, 0]);
    }

    #[test]
    fn outgoing_frames_never_exceed_4096_payload_bytes() {
        for size in [0usize, 1, 4095, 4096, 4097, 8192, 10_000, 65_537] {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut out = BytesMut::new();
            encode_frames(2, &payload, &mut out);
            let mut frames = 0;
            let mut rest = &out[..];
            let mut joined = Vec::new();
            while !rest.is_empty() {
                let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
                assert_eq!(&rest[..4], &2u32.to_be_bytes());
                assert!(len <= MAX_OUTGOING_PAYLOAD, "frame of {len} bytes");
                joined.extend_from_slice(&rest[HEADER_LEN..HEADER_LEN + len]);
                rest = &rest[HEADER_LEN + len..];
                frames += 1;
            }
            assert_eq!(joined, payload);
            assert_eq!(frames, size.div_ceil(MAX_OUTGOING_PAYLOAD));
        }
    }

    #[test]
    fn header_announcing_4_gib_is_refused_without_allocating() {
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        let err = FrameDecoder::new().decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                conn_id: 1,
                len: u32::MAX,
                max: MAX_INCOMING_PAYLOAD
            }
        );
        assert!(err.to_string().contains("not an NRI runtime"));
    }

    #[test]
    fn partial_frame_is_reported_as_mid_frame() {
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0, 0, 10, 1, 2][..]);
        let mut decoder = FrameDecoder::new();
        let chunk = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(chunk.data.as_ref(), &[1, 2]);
        assert!(!decoder.at_frame_boundary());
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    }

    proptest! {
        /// Any interleaving of frames for two connections, cut at arbitrary points, reassembles
        /// into the two original byte streams.
        #[test]
        fn reassembles_any_split(
            messages in proptest::collection::vec((1u32..=2, proptest::collection::vec(any::<u8>(), 0..9000)), 0..8),
            splits in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let mut wire = BytesMut::new();
            let mut expected: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
            for (conn, payload) in &messages {
                encode_frames(*conn, payload, &mut wire);
                if !payload.is_empty() {
                    expected.entry(*conn).or_default().extend_from_slice(payload);
                }
            }
            let got = decode_all(&wire, &splits).unwrap();
            prop_assert_eq!(got, expected);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(input in proptest::collection::vec(any::<u8>(), 0..2000),
                                splits in proptest::collection::vec(any::<usize>(), 0..10)) {
            let _ = decode_all(&input, &splits);
        }
    }
}
