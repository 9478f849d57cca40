//! Turns one direction's 32-bit TCP sequence numbers into 64-bit stream
//! positions from the direction's first byte, across wrap-around: the
//! reassembler and the pipeline count in positions that never wrap.

/// How far behind or ahead of the furthest position seen a segment may lie
/// and still be placed. TCP windows are far smaller; a segment further off
/// belongs to another connection on the same tuple, or is garbage, and
/// half the sequence space (2 GiB) would make behind and ahead ambiguous.
pub const WINDOW: u64 = 1 << 30;

/// One direction's sequence space.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direction {
    /// Sequence number of position 0; meaningless until `known`.
    base: u32,
    /// `seq - base` of the furthest position placed, and that position:
    /// every new sequence number is placed relative to it.
    last_rel: u32,
    last_pos: u64,
    /// One past the furthest byte seen (FIN excluded).
    pub high: u64,
    /// Where the direction ended (its FIN's position), once seen.
    pub fin: Option<u64>,
    pub known: bool,
}

impl Direction {
    /// Position 0 is sequence number `base`.
    pub fn starting_at(base: u32) -> Self {
        Self {
            base,
            known: true,
            ..Self::default()
        }
    }

    /// Sequence number of position 0, once known.
    pub fn base(&self) -> Option<u32> {
        self.known.then_some(self.base)
    }

    /// The position of `seq`, or None when it lies more than [`WINDOW`]
    /// from the furthest position seen, or before position 0.
    pub fn place(&mut self, seq: u32) -> Option<u64> {
        let rel = seq.wrapping_sub(self.base);
        // Signed distance in the 32-bit space: wrap-around is just a step.
        let delta = i64::from(rel.wrapping_sub(self.last_rel) as i32);
        if delta.unsigned_abs() > WINDOW {
            return None;
        }
        let pos = self.last_pos.checked_add_signed(delta)?;
        if pos > self.last_pos {
            self.last_rel = rel;
            self.last_pos = pos;
        }
        Some(pos)
    }

    /// Bytes in the direction: up to its FIN, else the furthest seen.
    pub fn total(&self) -> u64 {
        self.fin.unwrap_or(self.high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_run_on_across_the_wrap() {
        let mut dir = Direction::starting_at(u32::MAX - 9);
        assert_eq!(dir.place(u32::MAX - 9), Some(0));
        assert_eq!(dir.place(5), Some(15));
        assert_eq!(dir.place(u32::MAX), Some(9), "behind, across the wrap");
        // Many wraps in steps below the window.
        let mut seq = 5u32;
        let mut pos = 15u64;
        for _ in 0..20 {
            seq = seq.wrapping_add(1 << 29);
            pos += 1 << 29;
            assert_eq!(dir.place(seq), Some(pos));
        }
        assert!(pos > 1 << 33);
    }

    #[test]
    fn segments_far_off_or_before_the_start_are_refused() {
        let mut dir = Direction::starting_at(1000);
        assert_eq!(dir.place(1000 + (1 << 30) + 1), None);
        assert_eq!(dir.place(999), None, "before position 0");
        assert_eq!(dir.place(1000 + (1 << 30)), Some(1 << 30));
        assert_eq!(dir.place(1000), Some(0), "a whole window behind");
        assert_eq!(dir.place(999), None);
    }
}
