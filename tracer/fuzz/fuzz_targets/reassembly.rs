//! The reassembler with chunks in any order, overlapping, duplicated,
//! truncated, far ahead or near the top of the position space. The stream
//! is known (byte `p` is `stream_byte(p)`), so every byte delivered can be
//! checked against its position: pieces must come strictly in order, gaps
//! must be exactly as long as what they stand for, and no byte may be
//! delivered at the wrong position.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::pipeline::reassembly::{Reassembler, ReassemblyCounters};
use tracer::protocols::Piece;

fn stream_byte(p: u64) -> u8 {
    (p ^ (p >> 8) ^ (p >> 16)).wrapping_mul(0x9e37_79b9) as u8
}

fuzz_target!(|data: &[u8]| {
    let mut reassembler = Reassembler::new(0);
    let mut counters = ReassemblyCounters::default();
    // Where the next delivered byte must be, in u128 so that huge gaps
    // cannot wrap it.
    let mut cursor: u128 = 0;
    let mut frontier: u64 = 0;
    for op in data.chunks_exact(4) {
        let (flags, a, b, c) = (op[0], u64::from(op[1]), u64::from(op[2]), u64::from(op[3]));
        let pos = match flags & 3 {
            0 => frontier,
            1 => frontier.saturating_sub(a),
            2 => frontier.saturating_add(a * 64),
            _ => u64::MAX - a,
        };
        let orig_len = if flags & 4 != 0 { b * 1024 } else { b };
        let cap_len = c.min(orig_len).min(u64::MAX - pos);
        let captured: Vec<u8> = (0..cap_len).map(|i| stream_byte(pos + i)).collect();
        frontier = frontier.max(pos.saturating_add(orig_len));
        reassembler.push(
            pos,
            &captured,
            orig_len,
            &mut counters,
            &mut |piece| match piece {
                Piece::Data(bytes) => {
                    for (i, &byte) in bytes.iter().enumerate() {
                        let at = cursor + i as u128;
                        assert_eq!(
                            byte,
                            stream_byte(at as u64),
                            "byte delivered at {at} is not the stream's"
                        );
                    }
                    cursor += bytes.len() as u128;
                }
                Piece::Gap(len) => cursor += u128::from(len),
            },
        );
        assert!(
            cursor <= u128::from(frontier),
            "delivered up to {cursor}, beyond every chunk pushed (up to {frontier})"
        );
    }
});
