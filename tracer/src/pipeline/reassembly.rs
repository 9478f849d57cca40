//! Per-direction stream reassembly by byte position.
//!
//! Input comes from `conntrack`: each captured read or write of one direction
//! of a connection, as the position of its first byte in that direction, the
//! bytes the syscall moved (`orig_len`) and the bytes the kernel managed to
//! copy (a prefix, at most the capture limit). Output goes to the
//! connection's protocol parser as `Piece`s in strict stream order: captured
//! bytes as `Piece::Data`, anything that passed uncaptured or was lost as
//! `Piece::Gap`.
//!
//! Chunks of one direction nearly always arrive in order, and then they pass
//! straight through without a copy. Two threads writing the same socket from
//! different CPUs can swap two chunks, and a full ring buffer can lose some;
//! so a chunk that arrives ahead of the expected position is copied into a
//! short reorder list and waits for the missing range. The list is bounded
//! (chunks and bytes): past the bound the hole is declared lost and
//! delivered as a gap, because a lost event never comes back and the parser
//! must not wait for it forever.

use crate::protocols::Piece;

/// Most chunks held while waiting for a missing range. A swap between two
/// CPUs resolves within one or two chunks; more means the range was lost.
const MAX_HELD_CHUNKS: usize = 4;

/// Most captured bytes held per direction, whatever the chunk count.
const MAX_HELD_BYTES: usize = 64 * 1024;

/// Reassembly anomalies, per direction; the caller turns them into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyCounters {
    /// Holes given up on and delivered as gaps (lost events, not the
    /// uncaptured tail of a truncated chunk, which is normal).
    pub gaps: u64,
    /// Bytes in those holes.
    pub gap_bytes: u64,
    /// Chunks wholly or partly behind the delivered position (duplicates,
    /// or late arrivals after their range was declared lost).
    pub overlaps: u64,
    /// Chunks that arrived ahead of the expected position and were held.
    pub reordered: u64,
}

/// One direction's reassembly state.
#[derive(Debug)]
pub struct Reassembler {
    /// Position of the next byte to deliver; `None` until the first chunk
    /// when the stream was joined at an unknown point.
    next: Option<u64>,
    /// Chunks ahead of `next`, sorted by position. Empty (no allocation)
    /// unless chunks actually arrived out of order.
    held: Vec<Held>,
}

/// A copied chunk waiting for the range before it.
#[derive(Debug)]
struct Held {
    pos: u64,
    /// One past the last byte the syscall moved (captured or not).
    end: u64,
    data: Box<[u8]>,
}

impl Reassembler {
    /// Expects the first chunk at `start_pos`.
    pub fn new(start_pos: u64) -> Self {
        Self {
            next: Some(start_pos),
            held: Vec::new(),
        }
    }

    /// Expects whatever position the first chunk carries (connections found
    /// mid-stream).
    pub fn resume_anywhere() -> Self {
        Self {
            next: None,
            held: Vec::new(),
        }
    }

    /// Accepts one chunk; calls `sink` zero or more times with pieces
    /// strictly in stream order. `captured.len() as u64 <= orig_len`; the
    /// uncaptured tail (`orig_len - captured.len()`) is delivered as
    /// `Piece::Gap`.
    pub fn push(
        &mut self,
        pos: u64,
        captured: &[u8],
        orig_len: u64,
        counters: &mut ReassemblyCounters,
        sink: &mut dyn FnMut(Piece<'_>),
    ) {
        // A kernel record claiming more captured bytes than the syscall moved
        // is corrupt; believe the bytes, they are what we can parse.
        let orig_len = orig_len.max(len64(captured));
        // Positions near the top of u64 never happen for real; clamping keeps
        // the arithmetic below total instead of wrapping.
        let orig_len = orig_len.min(u64::MAX - pos);
        let captured = prefix(captured, orig_len);
        if orig_len == 0 {
            return;
        }
        let end = pos + orig_len;
        let next = *self.next.get_or_insert(pos);
        if end <= next {
            counters.overlaps += 1;
            return;
        }
        let (pos, captured) = if pos < next {
            counters.overlaps += 1;
            (next, skip(captured, next - pos))
        } else {
            (pos, captured)
        };
        if pos == next {
            deliver(captured, end - pos - len64(captured), sink);
            self.next = Some(end);
            if !self.held.is_empty() {
                self.drain(counters, sink);
            }
            return;
        }
        counters.reordered += 1;
        let at = self.held.partition_point(|h| h.pos <= pos);
        self.held.insert(
            at,
            Held {
                pos,
                end,
                data: captured.into(),
            },
        );
        while self.held.len() > MAX_HELD_CHUNKS || self.held_bytes() > MAX_HELD_BYTES {
            if !self.skip_hole(counters, sink) {
                break;
            }
        }
    }

    /// Connection is closing: deliver anything held back (holes become
    /// `Piece::Gap`).
    pub fn flush(&mut self, counters: &mut ReassemblyCounters, sink: &mut dyn FnMut(Piece<'_>)) {
        while !self.held.is_empty() {
            if !self.skip_hole(counters, sink) {
                break;
            }
        }
        self.held = Vec::new();
    }

    /// Connection closed after `end` bytes in this direction (the kernel's
    /// count): delivers what is held, as [`Reassembler::flush`] does, then
    /// the bytes between the last chunk that arrived and `end` as a gap.
    /// Those are chunks whose events were lost after the last one that came
    /// (a full ring): no later chunk can reveal that hole, only the count.
    pub fn close_at(
        &mut self,
        end: u64,
        counters: &mut ReassemblyCounters,
        sink: &mut dyn FnMut(Piece<'_>),
    ) {
        self.flush(counters, sink);
        // A stream that never delivered a chunk (joined mid-stream) has no
        // position to measure from.
        if let Some(next) = self.next.filter(|&next| end > next) {
            let hole = end - next;
            counters.gaps += 1;
            counters.gap_bytes += hole;
            sink(Piece::Gap(hole));
            self.next = Some(end);
        }
    }

    fn held_bytes(&self) -> usize {
        self.held.iter().map(|h| h.data.len()).sum()
    }

    /// Gives up on the range before the first held chunk: delivers it as a
    /// gap, then whatever became deliverable. False if nothing is held.
    fn skip_hole(
        &mut self,
        counters: &mut ReassemblyCounters,
        sink: &mut dyn FnMut(Piece<'_>),
    ) -> bool {
        let Some(first) = self.held.first() else {
            return false;
        };
        let next = self.next.unwrap_or(first.pos);
        if first.pos > next {
            let hole = first.pos - next;
            counters.gaps += 1;
            counters.gap_bytes += hole;
            sink(Piece::Gap(hole));
        }
        self.next = Some(first.pos.max(next));
        self.drain(counters, sink);
        true
    }

    /// Delivers held chunks that now start at or before `next`.
    fn drain(&mut self, counters: &mut ReassemblyCounters, sink: &mut dyn FnMut(Piece<'_>)) {
        while let Some(first) = self.held.first() {
            let next = self.next.unwrap_or(first.pos);
            if first.pos > next {
                break;
            }
            let chunk = self.held.remove(0);
            if chunk.end <= next {
                counters.overlaps += 1;
                continue;
            }
            let data = if chunk.pos < next {
                counters.overlaps += 1;
                skip(&chunk.data, next - chunk.pos)
            } else {
                &chunk.data
            };
            deliver(data, chunk.end - next - len64(data), sink);
            self.next = Some(chunk.end);
        }
        if self.held.is_empty() {
            // Reordering is rare: give the memory back rather than keep
            // capacity on each of thousands of connections.
            self.held = Vec::new();
        }
    }
}

/// Hands over a chunk's captured bytes, then its uncaptured tail.
fn deliver(data: &[u8], tail: u64, sink: &mut dyn FnMut(Piece<'_>)) {
    if !data.is_empty() {
        sink(Piece::Data(data));
    }
    if tail > 0 {
        sink(Piece::Gap(tail));
    }
}

fn len64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// The first `n` bytes (all of them if there are fewer).
fn prefix(bytes: &[u8], n: u64) -> &[u8] {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    bytes.get(..n).unwrap_or(bytes)
}

/// All but the first `n` bytes (nothing if there are fewer).
fn skip(bytes: &[u8], n: u64) -> &[u8] {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    bytes.get(n..).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a sink saw, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Data(Vec<u8>),
        Gap(u64),
    }

    fn push(
        r: &mut Reassembler,
        c: &mut ReassemblyCounters,
        pos: u64,
        data: &[u8],
        orig: u64,
    ) -> Vec<Got> {
        let mut got = Vec::new();
        r.push(pos, data, orig, c, &mut |p| {
            got.push(match p {
                Piece::Data(d) => Got::Data(d.to_vec()),
                Piece::Gap(n) => Got::Gap(n),
            })
        });
        got
    }

    fn flush(r: &mut Reassembler, c: &mut ReassemblyCounters) -> Vec<Got> {
        let mut got = Vec::new();
        r.flush(c, &mut |p| {
            got.push(match p {
                Piece::Data(d) => Got::Data(d.to_vec()),
                Piece::Gap(n) => Got::Gap(n),
            })
        });
        got
    }

    fn d(b: &[u8]) -> Got {
        Got::Data(b.to_vec())
    }

    #[test]
    fn in_order_passes_through_without_copy() {
        let mut r = Reassembler::new(0);
        let mut c = ReassemblyCounters::default();
        let chunk = b"hello".to_vec();
        let mut seen = None;
        r.push(0, &chunk, 5, &mut c, &mut |p| {
            if let Piece::Data(d) = p {
                seen = Some(d.as_ptr());
            }
        });
        assert_eq!(
            seen,
            Some(chunk.as_ptr()),
            "in-order data must be the caller's slice"
        );
        assert_eq!(push(&mut r, &mut c, 5, b" world", 6), vec![d(b" world")]);
        assert_eq!(c, ReassemblyCounters::default());
        assert_eq!(r.held.capacity(), 0);
    }

    #[test]
    fn truncated_tail_becomes_gap() {
        let mut r = Reassembler::new(100);
        let mut c = ReassemblyCounters::default();
        assert_eq!(
            push(&mut r, &mut c, 100, b"abc", 10),
            vec![d(b"abc"), Got::Gap(7)]
        );
        assert_eq!(push(&mut r, &mut c, 110, b"", 4), vec![Got::Gap(4)]);
        assert_eq!(push(&mut r, &mut c, 114, b"x", 1), vec![d(b"x")]);
        assert_eq!(c, ReassemblyCounters::default(), "truncation is not loss");
    }

    #[test]
    fn swapped_chunks_are_put_back_in_order() {
        let mut r = Reassembler::new(0);
        let mut c = ReassemblyCounters::default();
        assert_eq!(push(&mut r, &mut c, 3, b"def", 3), vec![]);
        assert_eq!(push(&mut r, &mut c, 6, b"gh", 5), vec![]);
        assert_eq!(
            push(&mut r, &mut c, 0, b"abc", 3),
            vec![d(b"abc"), d(b"def"), d(b"gh"), Got::Gap(3)]
        );
        assert_eq!(c.reordered, 2);
        assert_eq!(c.gaps, 0);
        assert_eq!(r.held.capacity(), 0, "memory returned once drained");
    }

    #[test]
    fn partial_fill_keeps_waiting() {
        let mut r = Reassembler::new(0);
        let mut c = ReassemblyCounters::default();
        assert_eq!(push(&mut r, &mut c, 10, b"k", 1), vec![]);
        assert_eq!(push(&mut r, &mut c, 0, b"abcde", 5), vec![d(b"abcde")]);
        assert_eq!(
            push(&mut r, &mut c, 5, b"fghij", 5),
            vec![d(b"fghij"), d(b"k")]
        );
    }

    #[test]
    fn too_many_held_chunks_declares_a_gap() {
        let mut r = Reassembler::new(0);
        let mut c = ReassemblyCounters::default();
        for i in 0..4u64 {
            assert_eq!(push(&mut r, &mut c, 10 + i, b"x", 1), vec![]);
        }
        let got = push(&mut r, &mut c, 14, b"y", 1);
        assert_eq!(
            got,
            vec![Got::Gap(10), d(b"x"), d(b"x"), d(b"x"), d(b"x"), d(b"y")]
        );
        assert_eq!(c.gaps, 1);
        assert_eq!(c.gap_bytes, 10);
        assert_eq!(c.reordered, 5);
        // The lost range arriving late is behind: dropped.
        assert_eq!(push(&mut r, &mut c, 0, b"0123456789", 10), vec![]);
        assert_eq!(c.overlaps, 1);
        assert_eq!(push(&mut r, &mut c, 15, b"z", 1), vec![d(b"z")]);
    }

    #[test]
    fn too_many_held_bytes_declares_a_gap() {
        let mut r = Reassembler::new(0);
        let mut c = ReassemblyCounters::default();
        let big = vec![7u8; 40 * 1024];
        assert_eq!(push(&mut r, &mut c, 100, &big, 40 * 1024), vec![]);
        let got = push(&mut r, &mut c, 100 + 40 * 1024, &big, 40 * 1024);
        assert_eq!(got.len(), 3);
        assert_eq!(got.first(), Some(&Got::Gap(100)));
        assert_eq!(c.gaps, 1);
        assert!(r.held.is_empty());
    }

    #[test]
    fn overlaps_are_trimmed_or_dropped() {
        let mut r = Reassembler::new(0);
        let mut c = ReassemblyCounters::default();
        assert_eq!(push(&mut r, &mut c, 0, b"abcdef", 6), vec![d(b"abcdef")]);
        assert_eq!(push(&mut r, &mut c, 2, b"cd", 2), vec![]);
        assert_eq!(c.overlaps, 1);
        assert_eq!(push(&mut r, &mut c, 4, b"efgh", 4), vec![d(b"gh")]);
        assert_eq!(c.overlaps, 2);
        // Overlap reaching into the uncaptured tail.
        assert_eq!(push(&mut r, &mut c, 6, b"ab", 10), vec![Got::Gap(8)]);
        assert_eq!(c.overlaps, 3);
    }

    #[test]
    fn held_chunks_overlapping_each_other() {
        let mut r = Reassembler::new(0);
        let mut c = ReassemblyCounters::default();
        assert_eq!(push(&mut r, &mut c, 4, b"efgh", 4), vec![]);
        assert_eq!(push(&mut r, &mut c, 2, b"cdef", 4), vec![]);
        assert_eq!(push(&mut r, &mut c, 4, b"efgh", 4), vec![]);
        assert_eq!(
            push(&mut r, &mut c, 0, b"ab", 2),
            vec![d(b"ab"), d(b"cdef"), d(b"gh")]
        );
        assert_eq!(c.overlaps, 2);
    }

    #[test]
    fn resume_anywhere_takes_the_first_position() {
        let mut r = Reassembler::resume_anywhere();
        let mut c = ReassemblyCounters::default();
        assert_eq!(push(&mut r, &mut c, 5000, b"", 0), vec![]);
        assert_eq!(push(&mut r, &mut c, 7000, b"ab", 2), vec![d(b"ab")]);
        assert_eq!(push(&mut r, &mut c, 7002, b"c", 1), vec![d(b"c")]);
        assert_eq!(push(&mut r, &mut c, 6000, b"z", 1), vec![]);
        assert_eq!(c.overlaps, 1);
    }

    #[test]
    fn flush_delivers_held_with_holes_as_gaps() {
        let mut r = Reassembler::new(0);
        let mut c = ReassemblyCounters::default();
        assert_eq!(push(&mut r, &mut c, 0, b"a", 1), vec![d(b"a")]);
        assert_eq!(push(&mut r, &mut c, 5, b"b", 3), vec![]);
        assert_eq!(push(&mut r, &mut c, 10, b"c", 1), vec![]);
        assert_eq!(
            flush(&mut r, &mut c),
            vec![Got::Gap(4), d(b"b"), Got::Gap(2), Got::Gap(2), d(b"c")]
        );
        assert_eq!(c.gaps, 2);
        assert_eq!(c.gap_bytes, 6);
        assert_eq!(flush(&mut r, &mut c), vec![]);
        let mut fresh = Reassembler::resume_anywhere();
        assert_eq!(flush(&mut fresh, &mut c), vec![]);
    }

    #[test]
    fn close_at_counts_the_lost_tail() {
        let mut r = Reassembler::new(0);
        let mut c = ReassemblyCounters::default();
        assert_eq!(push(&mut r, &mut c, 0, b"ab", 2), vec![d(b"ab")]);
        assert_eq!(push(&mut r, &mut c, 5, b"c", 1), vec![]);
        // Held behind a hole of 3, then 4 more bytes that never came.
        let mut got = Vec::new();
        r.close_at(10, &mut c, &mut |p| {
            got.push(match p {
                Piece::Data(d) => Got::Data(d.to_vec()),
                Piece::Gap(n) => Got::Gap(n),
            })
        });
        assert_eq!(got, vec![Got::Gap(3), d(b"c"), Got::Gap(4)]);
        assert_eq!((c.gaps, c.gap_bytes), (2, 7));
        // The kernel's count at or behind what was delivered: nothing lost.
        let mut none = Vec::new();
        r.close_at(10, &mut c, &mut |_| none.push(()));
        r.close_at(3, &mut c, &mut |_| none.push(()));
        assert!(none.is_empty());
        assert_eq!((c.gaps, c.gap_bytes), (2, 7));
        // Joined mid-stream and nothing delivered: no position to count from.
        let mut fresh = Reassembler::resume_anywhere();
        fresh.close_at(500, &mut c, &mut |_| none.push(()));
        assert!(none.is_empty());
    }

    #[test]
    fn hostile_lengths_and_positions() {
        let mut r = Reassembler::new(u64::MAX - 3);
        let mut c = ReassemblyCounters::default();
        // captured longer than orig_len: the bytes win.
        assert_eq!(
            push(&mut r, &mut c, u64::MAX - 3, b"abcdef", 2),
            vec![d(b"abc")]
        );
        assert_eq!(push(&mut r, &mut c, u64::MAX, b"x", u64::MAX), vec![]);
        assert_eq!(push(&mut r, &mut c, 0, b"x", u64::MAX), vec![]);
        let mut r = Reassembler::new(0);
        assert_eq!(push(&mut r, &mut c, u64::MAX - 1, b"zz", 2), vec![]);
        let got = flush(&mut r, &mut c);
        assert_eq!(got, vec![Got::Gap(u64::MAX - 1), d(b"z")]);
    }

    use crate::testutil::XorShift;

    fn stream_byte(pos: u64) -> u8 {
        (pos.wrapping_mul(31) >> 3) as u8
    }

    /// Arbitrary chunks cut from one consistent stream, shuffled, repeated,
    /// truncated and dropped: delivery must stay contiguous and every data
    /// byte must be the stream's byte at that position.
    #[test]
    fn fuzz_delivery_is_contiguous_and_faithful() {
        for seed in 1..400u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let start = rng.below(1 << 20);
            let mut chunks = Vec::new();
            let mut pos = start;
            for _ in 0..rng.below(40) + 1 {
                let len = rng.below(300) + u64::from(rng.below(10) == 0) * 70_000;
                chunks.push((pos, len));
                pos += len;
            }
            for _ in 0..rng.below(6) {
                let i = rng.below(chunks.len() as u64) as usize;
                let j = rng.below(chunks.len() as u64) as usize;
                chunks.swap(i, j);
            }
            let mut ops: Vec<(u64, u64, u64)> = Vec::new();
            for &(p, len) in &chunks {
                match rng.below(10) {
                    0 => {}
                    1 => {
                        ops.push((p, len.min(rng.below(len + 1)), len));
                        ops.push((p, len, len));
                    }
                    2 => {
                        let cut = rng.below(len + 1);
                        ops.push((p + cut, len - cut, len - cut));
                    }
                    3 => ops.push((rng.next(), rng.below(50), rng.next())),
                    _ => ops.push((p, len.min(rng.below(len + 1) + 200), len)),
                }
            }
            let mut r = if rng.below(2) == 0 {
                Reassembler::new(start)
            } else {
                Reassembler::resume_anywhere()
            };
            let mut c = ReassemblyCounters::default();
            let mut cursor: Option<u64> = None;
            let check = |p: Piece<'_>, cursor: &mut Option<u64>, anchor: u64| {
                let at = cursor.get_or_insert(anchor);
                match p {
                    Piece::Data(data) => {
                        assert!(!data.is_empty());
                        for (i, &b) in data.iter().enumerate() {
                            assert_eq!(b, stream_byte(*at + i as u64), "seed {seed}");
                        }
                        *at += data.len() as u64;
                    }
                    Piece::Gap(n) => {
                        assert!(n > 0);
                        *at = at.saturating_add(n);
                    }
                }
            };
            for &(p, cap, orig) in &ops {
                let orig = orig.min(u64::MAX - p);
                let cap = cap.min(orig).min(200_000);
                let bytes: Vec<u8> = (0..cap).map(|i| stream_byte(p + i)).collect();
                let anchor = r.next.unwrap_or(p);
                r.push(p, &bytes, orig, &mut c, &mut |piece| {
                    check(piece, &mut cursor, anchor)
                });
                assert!(r.held.len() <= MAX_HELD_CHUNKS);
                assert!(r.held_bytes() <= MAX_HELD_BYTES);
                if let (Some(cur), Some(next)) = (cursor, r.next) {
                    assert_eq!(cur, next, "seed {seed}");
                }
            }
            let anchor = r.next.unwrap_or(0);
            r.flush(&mut c, &mut |piece| check(piece, &mut cursor, anchor));
            assert!(r.held.is_empty());
        }
    }
}
