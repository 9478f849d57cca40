//! Frame headers the kernel side found beyond a chunk's captured bytes
//! (`tracer_common::FrameHead`, HTTP/2, see `tracer-ebpf/src/frames.rs`):
//! the chunk is cut into parts, each some captured bytes followed by a gap,
//! so the reassembler and the parser see every header at its exact
//! position and the bytes between as the gaps they are.

use std::mem::size_of;

use tracer_common::{FrameHead, FRAME_HEADER_LEN, MAX_FRAME_HEADS, MAX_FRAME_PAYLOAD};

/// Calls `part(offset, bytes, span)` for each part of a chunk in order:
/// `bytes` captured at `offset` from the chunk's start, the rest of `span`
/// not captured. `payload` is the chunk's captured prefix, `len` the bytes
/// the syscall moved, `heads` what follows the payload in the record:
/// `count` heads, each followed by its `extra` payload bytes. Returns
/// false, calling nothing, when they do not fit the chunk (a corrupt
/// record).
pub fn split(
    payload: &[u8],
    len: u64,
    heads: &[u8],
    count: u8,
    part: &mut dyn FnMut(u64, &[u8], u64),
) -> bool {
    let Some(list) = entries(heads, count, len) else {
        return false;
    };
    let first = list.first().map_or(len, |(h, _)| u64::from(h.offset));
    let kept = payload.len().min(first as usize);
    part(0, &payload[..kept], first);
    for (i, (h, extra)) in list.iter().enumerate() {
        let offset = u64::from(h.offset);
        let next = list.get(i + 1).map_or(len, |(n, _)| u64::from(n.offset));
        let head = &h.head[..usize::from(h.len)];
        if extra.is_empty() {
            part(offset, head, next - offset);
        } else {
            part(offset, head, head.len() as u64);
            let at = offset + head.len() as u64;
            part(at, extra, next - at);
        }
    }
    true
}

/// The heads and their payloads, each within the chunk and after the one
/// before it (the first may start inside the captured bytes: a header
/// across the capture's end, which then stop there).
fn entries(mut bytes: &[u8], count: u8, len: u64) -> Option<Vec<(FrameHead, &[u8])>> {
    let mut list = Vec::with_capacity(usize::from(count));
    let mut end = 0u64;
    for _ in 0..count {
        let raw = bytes.get(..size_of::<FrameHead>())?;
        // SAFETY: `raw` is exactly one FrameHead long; FrameHead is a
        // repr(C) plain-old-data type for which any bit pattern is valid,
        // and the read is unaligned-safe.
        let h = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<FrameHead>()) };
        let extra =
            bytes.get(size_of::<FrameHead>()..size_of::<FrameHead>() + usize::from(h.extra))?;
        bytes = &bytes[size_of::<FrameHead>() + extra.len()..];
        let (offset, n) = (u64::from(h.offset), u64::from(h.len));
        let whole = n == FRAME_HEADER_LEN as u64;
        if offset < end
            || n == 0
            || n > FRAME_HEADER_LEN as u64
            || (!extra.is_empty() && !whole)
            || extra.len() > MAX_FRAME_PAYLOAD
            || offset + n + extra.len() as u64 > len
        {
            return None;
        }
        end = offset + n + extra.len() as u64;
        list.push((h, extra));
    }
    (bytes.is_empty() && list.len() <= MAX_FRAME_HEADS).then_some(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(list: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (offset, bytes, extra) in list {
            let mut h = FrameHead {
                offset: *offset,
                len: bytes.len() as u8,
                extra: extra.len() as u16,
                ..FrameHead::default()
            };
            h.head[..bytes.len()].copy_from_slice(bytes);
            // SAFETY: FrameHead is repr(C) plain old data.
            let raw: [u8; size_of::<FrameHead>()] = unsafe { std::mem::transmute(h) };
            out.extend_from_slice(&raw);
            out.extend_from_slice(extra);
        }
        out
    }

    fn parts(
        payload: &[u8],
        len: u64,
        list: &[(u32, &[u8], &[u8])],
    ) -> Option<Vec<(u64, Vec<u8>, u64)>> {
        let raw = heads(list);
        let mut got = Vec::new();
        split(payload, len, &raw, list.len() as u8, &mut |o, b, s| {
            got.push((o, b.to_vec(), s))
        })
        .then_some(got)
    }

    #[test]
    fn heads_cut_the_chunk_into_bytes_and_gaps() {
        let h1 = [0, 0x40, 0, 0, 0, 0, 0, 0, 1];
        let h2 = [0, 0, 3, 0, 1, 0, 0, 0, 1];
        let got = parts(b"abcdef", 100, &[(20, &h1, b""), (60, &h2[..4], b"")]).unwrap();
        assert_eq!(
            got,
            vec![
                (0, b"abcdef".to_vec(), 20),
                (20, h1.to_vec(), 40),
                (60, h2[..4].to_vec(), 40),
            ]
        );
    }

    #[test]
    fn a_header_block_beyond_the_capture_comes_whole() {
        let headers = [0, 0, 3, 1, 4, 0, 0, 0, 3];
        let data = [0, 0x10, 0, 0, 1, 0, 0, 0, 3];
        let got = parts(
            b"xy",
            5000,
            &[(30, &headers, b"\x88\x5f\x01"), (42, &data, b"")],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                (0, b"xy".to_vec(), 30),
                (30, headers.to_vec(), 9),
                (39, b"\x88\x5f\x01".to_vec(), 3),
                (42, data.to_vec(), 4958),
            ]
        );
    }

    #[test]
    fn a_head_across_the_capture_end_cuts_the_payload_short() {
        let h = [0, 0, 5, 0, 1, 0, 0, 0, 3];
        let got = parts(b"0123456789", 30, &[(7, &h, b"")]).unwrap();
        assert_eq!(got, vec![(0, b"0123456".to_vec(), 7), (7, h.to_vec(), 23)]);
    }

    #[test]
    fn heads_that_do_not_fit_are_refused() {
        let h = [0u8; 9];
        // Beyond the chunk, overlapping (a payload too), out of order,
        // empty, a payload after a partial head.
        assert!(parts(b"ab", 10, &[(5, &h, b"")]).is_none());
        assert!(parts(b"ab", 100, &[(2, &h, b""), (5, &h, b"")]).is_none());
        assert!(parts(b"ab", 100, &[(2, &h, b"abc"), (12, &h, b"")]).is_none());
        assert!(parts(b"ab", 100, &[(40, &h, b""), (20, &h, b"")]).is_none());
        assert!(parts(b"ab", 100, &[(2, &h[..0], b"")]).is_none());
        assert!(parts(b"ab", 100, &[(2, &h[..5], b"x")]).is_none());
        // A count that does not match the bytes.
        let raw = heads(&[(2, &h, b"")]);
        assert!(!split(b"ab", 100, &raw, 2, &mut |_, _, _| {}));
        assert!(!split(b"ab", 100, &raw[..15], 1, &mut |_, _, _| {}));
    }
}
