//! The ring reader's walk over kernel memory (`source::rings`), on a ring
//! laid out as the kernel's: records of any length and flags, headers
//! overwritten with anything, producer positions published ahead of or
//! behind the reader (8-byte aligned, as the kernel's). Every record handed
//! out must fit the ring, and the consumer position must never go back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::source::rings::in_memory::InMemoryRing;
use tracer::source::rings::{Next, BUSY, DISCARD};

fuzz_target!(|data: &[u8]| {
    let Some((&start, mut rest)) = data.split_first() else {
        return;
    };
    // Start anywhere, near the end of the data included (wrap-around).
    let mut ring = InMemoryRing::at(usize::from(start) * 8 * 17);
    let mut freed = ring.consumer_pos();
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(tail.first().copied().unwrap_or(0)) * 4;
        let body = tail.get(1..).unwrap_or_default();
        let body = body.get(..len.min(body.len())).unwrap_or_default();
        rest = tail.get(1 + body.len()..).unwrap_or_default();
        match op % 6 {
            0 | 1 => {
                let flags = match op >> 4 {
                    0 => BUSY,
                    1 => DISCARD,
                    _ => 0,
                };
                ring.push(body, flags);
            }
            2 => {
                // A header holding anything, where the next record goes.
                let word = body
                    .iter()
                    .take(4)
                    .fold(0u32, |w, &b| w << 8 | u32::from(b));
                let at = ring.consumer_pos() + usize::from(op >> 3) * 8;
                ring.set_header(at, word);
            }
            3 => {
                let pos = ring.consumer_pos() + body.len() * 8;
                ring.publish(pos);
            }
            _ => {
                for _ in 0..=op >> 4 {
                    match ring.next_record() {
                        Next::Ready(_) => {
                            let size = ring.size();
                            let taken = ring.take().expect("next said ready");
                            assert!(taken.len() + 8 <= size, "a record longer than the ring");
                        }
                        Next::Busy | Next::Empty => break,
                    }
                }
                ring.commit();
                let now = ring.consumer_pos();
                assert!(now >= freed, "the consumer position went back");
                freed = now;
            }
        }
    }
});
