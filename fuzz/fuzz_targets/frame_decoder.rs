//! Fuzzes the NRI frame decoder: arbitrary bytes fed in arbitrary pieces must never panic, never
//! yield more payload than arrived, and a valid frame stream must reassemble exactly.
#![no_main]

use bytes::BytesMut;
use kata_nri_manager::nri::frame::{FrameDecoder, encode_frames};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);

    // 1. Arbitrary bytes, fed `step` bytes at a time.
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut payload_out = 0usize;
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(chunk)) => payload_out += chunk.data.len(),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert!(payload_out <= rest.len());

    // 2. The same bytes as a payload: framed, then decoded in pieces, they come back unchanged.
    let mut wire = BytesMut::new();
    encode_frames(2, rest, &mut wire);
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut joined = Vec::with_capacity(rest.len());
    for piece in wire.chunks(step) {
        buf.extend_from_slice(piece);
        while let Some(chunk) = decoder.decode(&mut buf).expect("valid frames decode") {
            assert_eq!(chunk.conn_id, 2);
            joined.extend_from_slice(&chunk.data);
        }
    }
    assert!(decoder.at_frame_boundary());
    assert_eq!(joined, rest);
});
