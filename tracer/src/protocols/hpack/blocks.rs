//! A memo of the last few header blocks one HPACK decoder decoded, with what
//! decoding them did, so that a block repeated byte for byte is replayed
//! rather than decoded again.
//!
//! Connections repeat their header blocks whole: a client sends the same
//! request block each time once the table holds its fields, a gRPC server
//! the same response and trailers, nginx the same response block for a
//! second (until its `date` changes). What decoding a block does, the
//! fields it reports and the entries it inserts, follows from its bytes and
//! from the table. A block that never refers to the dynamic table does the
//! same every time; one that does, the same as long as the table has not
//! changed since, so what is kept of it is dropped when the table changes.
//! Replaying inserts the same entries through the same eviction, so the
//! table ends as decoding would have left it. A size update counts as
//! referring to the table.
//!
//! A block is recorded the second time it comes: one seen once (a new
//! path) costs a copy of its bytes, not a copy of what it decoded to.

use super::{Entry, Headers};

/// Blocks remembered: a response's headers and its trailers (gRPC) come
/// in turn on one direction.
const SLOTS: usize = 2;

/// Longest block remembered. Repeated blocks are mostly references into
/// the table, a few octets each; one much longer is decoded every time.
const MAX_BYTES: usize = 256;

/// Most insertions a block may make to be remembered (nginx: four per
/// response).
const MAX_INSERTS: usize = 8;

/// The memo: `SLOTS` blocks of at most `MAX_BYTES` octets.
#[derive(Debug, Default)]
pub(super) struct Blocks {
    slots: [Slot; SLOTS],
    /// The slot the next new block replaces: the older one.
    next: usize,
}

#[derive(Default)]
struct Slot {
    /// The block; empty when the slot is.
    bytes: Vec<u8>,
    /// What decoding it did, once it came a second time.
    decoded: Option<Decoded>,
}

/// What decoding a block did.
#[derive(Debug)]
pub(super) struct Decoded {
    /// It referred to the table: valid until the table changes.
    pub(super) read_table: bool,
    /// The fields it reported, into empty headers.
    pub(super) headers: Headers,
    /// The entries it inserted, in order.
    pub(super) inserts: Vec<Entry>,
}

/// Whether a block came lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// Yes, and what decoding it did, kept in this slot, is what it does
    /// now.
    Decoded(usize),
    /// Yes, in this slot: decode it and record what that does.
    Again(usize),
    /// No.
    New,
}

impl Blocks {
    /// Whether `block` came lately.
    pub(super) fn seen(&self, block: &[u8]) -> Seen {
        match self.slots.iter().position(|slot| same(&slot.bytes, block)) {
            Some(at) if self.decoded(at).is_some() => Seen::Decoded(at),
            Some(at) => Seen::Again(at),
            None => Seen::New,
        }
    }

    /// What decoding the block in `slot` did, if recorded.
    pub(super) fn decoded(&self, slot: usize) -> Option<&Decoded> {
        self.slots.get(slot)?.decoded.as_ref()
    }

    /// The table changed: what blocks that referred to it did is stale.
    /// They are recorded again when they next come.
    pub(super) fn forget_table_readers(&mut self) {
        for slot in &mut self.slots {
            if slot.decoded.as_ref().is_some_and(|d| d.read_table) {
                slot.decoded = None;
            }
        }
    }

    /// A block decoded that did not come lately: kept, if short enough, in
    /// place of the older one.
    pub(super) fn note(&mut self, block: &[u8]) {
        let held = self.slots.iter().any(|slot| same(&slot.bytes, block));
        if block.is_empty() || block.len() > MAX_BYTES || held {
            return;
        }
        let at = self.next;
        self.next = (at + 1) % SLOTS;
        if let Some(slot) = self.slots.get_mut(at) {
            slot.bytes.clear();
            slot.bytes.extend_from_slice(block);
            slot.decoded = None;
        }
    }

    /// What decoding the block in `slot` did, `seen` having said `Again`.
    pub(super) fn record(
        &mut self,
        slot: usize,
        read_table: bool,
        headers: Headers,
        inserts: Vec<Entry>,
    ) {
        if inserts.len() > MAX_INSERTS {
            return;
        }
        if let Some(slot) = self.slots.get_mut(slot) {
            slot.decoded = Some(Decoded {
                read_table,
                headers,
                inserts,
            });
        }
    }
}

/// Lengths only: the bytes may hold header values.
impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("bytes", &self.bytes.len())
            .field("decoded", &self.decoded.is_some())
            .finish()
    }
}

/// Whether `held` is `block`, compared a word at a time inline: the blocks
/// that repeat are short, and a call to memcmp per lookup cost more than
/// the comparison.
fn same(held: &[u8], block: &[u8]) -> bool {
    if held.len() != block.len() {
        return false;
    }
    let word = |chunk: &[u8]| chunk.try_into().map_or(0, u64::from_ne_bytes);
    let (mut a, mut b) = (held.chunks_exact(8), block.chunks_exact(8));
    let words = a.by_ref().zip(b.by_ref()).all(|(x, y)| word(x) == word(y));
    words && a.remainder().iter().zip(b.remainder()).all(|(x, y)| x == y)
}
