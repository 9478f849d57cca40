//! A memo of the last few short Huffman strings one HPACK decoder read, with
//! what decoding them gave, so that a value repeated verbatim is not decoded
//! again.
//!
//! Servers insert the same values into the dynamic table on every response
//! (nginx: `server`, `date`, `content-type`, `last-modified`, `etag`), and
//! the table needs each one's decoded length. `date` changes once a second,
//! the others never, so at thousands of responses a second nearly every
//! such string was read moments before. Decoding is a pure function of the
//! raw octets: the same octets give the same length and the same prefix, so
//! a hit answers exactly what [`huffman::decode`] would.

use super::huffman::{self, Invalid};

/// Strings remembered. An nginx response carries five Huffman-coded values
/// that repeat; a few more leave room for a request direction's.
const SLOTS: usize = 8;

/// Longest raw string remembered: a `date` or `last-modified` (29 octets)
/// codes to 22 or so. Longer ones are decoded every time.
const MAX_RAW: usize = 32;

/// Decoded octets remembered per string: the most the decoder keeps of any
/// value it reads this way (a `content-type`'s gRPC prefix). A caller
/// wanting more is not served from the memo.
pub const MAX_KEPT: usize = 16;

/// One remembered string; `raw_len` 0 is an empty slot (an empty string is
/// never looked up).
#[derive(Clone, Copy, Default)]
struct Slot {
    raw_len: u8,
    /// Octets of `prefix` that hold decoded octets: the first ones, as
    /// many as the caller that filled it kept.
    kept: u8,
    /// The decoded length.
    decoded: u16,
    /// The raw string as [`key`] reads it.
    key: Key,
    prefix: [u8; MAX_KEPT],
}

/// Lengths only: the key and prefix are a header value.
impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("raw_len", &self.raw_len)
            .field("decoded", &self.decoded)
            .finish()
    }
}

/// The memo; a fixed size, boxed by its owner until first needed.
#[derive(Debug, Clone, Default)]
pub struct Memo {
    slots: [Slot; SLOTS],
    /// The slot the next new string replaces: the oldest filled.
    next: usize,
}

impl Memo {
    /// [`huffman::decode`], answered from the memo when `src` was decoded
    /// before and as much of its prefix as `out` wants was kept.
    pub fn decode(&mut self, src: &[u8], out: &mut [u8]) -> Result<usize, Invalid> {
        if src.is_empty() || src.len() > MAX_RAW || out.len() > MAX_KEPT {
            return huffman::decode(src, out);
        }
        let key = key(src);
        let hit = self
            .slots
            .iter()
            .find(|slot| usize::from(slot.raw_len) == src.len() && slot.key == key);
        if let Some(slot) = hit {
            let decoded = usize::from(slot.decoded);
            let want = out.len().min(decoded);
            if want <= usize::from(slot.kept) {
                if let (Some(dst), Some(kept)) = (out.get_mut(..want), slot.prefix.get(..want)) {
                    dst.copy_from_slice(kept);
                }
                return Ok(decoded);
            }
        }
        let decoded = huffman::decode(src, out)?;
        self.remember(src, key, out, decoded);
        Ok(decoded)
    }

    /// Keeps `src` and what decoding it wrote into `out` (refused strings
    /// are never kept: they are decoded, and refused, every time). A
    /// string already held, kept with a shorter prefix, is replaced.
    fn remember(&mut self, src: &[u8], key: Key, out: &[u8], decoded: usize) {
        let (Ok(raw_len), Ok(decoded16)) = (u8::try_from(src.len()), u16::try_from(decoded)) else {
            return;
        };
        let kept = out.len().min(decoded);
        let at = self
            .slots
            .iter()
            .position(|slot| slot.raw_len == raw_len && slot.key == key)
            .unwrap_or_else(|| {
                let at = self.next;
                self.next = (self.next + 1) % SLOTS;
                at
            });
        let Some(slot) = self.slots.get_mut(at) else {
            return;
        };
        slot.raw_len = raw_len;
        slot.decoded = decoded16;
        slot.kept = u8::try_from(kept).unwrap_or(0);
        slot.key = key;
        if let (Some(dst), Some(prefix)) = (slot.prefix.get_mut(..kept), out.get(..kept)) {
            dst.copy_from_slice(prefix);
        }
    }
}

/// A raw string of at most `MAX_RAW` octets as four words which, with its
/// length, tell it from any other: read in place, at offsets 8 apart up to
/// the last whole word (overlapping when the length is not a multiple of 8).
/// Comparing these inline was much faster than comparing the octets, by a
/// call to memcmp or through a padded copy (a store the loads then stalled
/// on).
type Key = [u64; 4];

fn key(src: &[u8]) -> Key {
    let word = |at: usize| {
        src.get(at..at + 8)
            .and_then(|w| w.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    match src.len().checked_sub(8) {
        Some(last) => [0, 8, 16, 24].map(|at| word(at.min(last))),
        // Shorter than a word: its octets in one.
        None => [
            src.iter().rev().fold(0, |w, &b| (w << 8) | u64::from(b)),
            0,
            0,
            0,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{protocols::huffman::tests::encode, testutil::hex};

    /// "Mon, 21 Oct 2013 20:13:21 GMT" (RFC 7541 C.6.1).
    const DATE: &str = "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff";
    /// "private".
    const PRIVATE: &str = "aec3 771a 4b";

    #[test]
    fn a_hit_answers_as_decoding_does() {
        let mut memo = Memo::default();
        let date = hex(DATE);
        assert_eq!(memo.decode(&date, &mut []), Ok(29));
        assert_eq!(memo.decode(&date, &mut []), Ok(29));
        assert_eq!(memo.slots.iter().filter(|s| s.raw_len > 0).count(), 1);
        // A prefix wanted beyond what was kept is decoded, then kept.
        let mut out = [0; 4];
        assert_eq!(memo.decode(&date, &mut out), Ok(29));
        assert_eq!(&out, b"Mon,");
        assert_eq!(memo.slots.iter().filter(|s| s.raw_len > 0).count(), 1);
        // Now served from the memo, shorter or as long.
        let mut again = [0; 4];
        assert_eq!(memo.decode(&date, &mut again), Ok(29));
        assert_eq!(&again, b"Mon,");
        let mut short = [0; 2];
        assert_eq!(memo.decode(&date, &mut short), Ok(29));
        assert_eq!(&short, b"Mo");
        // A prefix longer than the string: only the string is written.
        let private = hex(PRIVATE);
        let mut long = [0xaa; MAX_KEPT];
        assert_eq!(memo.decode(&private, &mut long), Ok(7));
        let mut hit = [0xaa; MAX_KEPT];
        assert_eq!(memo.decode(&private, &mut hit), Ok(7));
        assert_eq!(hit, long);
        assert_eq!(&hit[..8], b"private\xaa");
    }

    #[test]
    fn a_different_string_misses() {
        let mut memo = Memo::default();
        let date = hex(DATE);
        assert_eq!(memo.decode(&date, &mut []), Ok(29));
        // The next second: as long, raw and decoded, but other octets.
        let next_second = encode(b"Mon, 21 Oct 2013 20:13:22 GMT");
        assert_eq!(next_second.len(), date.len());
        assert_ne!(next_second, date);
        let mut out = [0; MAX_KEPT];
        assert_eq!(memo.decode(&next_second, &mut out), Ok(29));
        assert_eq!(&out, b"Mon, 21 Oct 2013");
        // A string that starts like a held one.
        let start = encode(b"Mon, 21");
        assert_eq!(memo.decode(&start, &mut out), Ok(7));
        assert_eq!(&out[..7], b"Mon, 21");
    }

    #[test]
    fn refused_strings_are_refused_every_time_and_not_kept() {
        let mut memo = Memo::default();
        let eos = hex("ffff fffc");
        for _ in 0..2 {
            assert_eq!(memo.decode(&eos, &mut []), Err(Invalid));
        }
        assert!(memo.slots.iter().all(|s| s.raw_len == 0));
    }

    #[test]
    fn capacity_is_fixed_and_the_oldest_goes() {
        let mut memo = Memo::default();
        let strings: Vec<Vec<u8>> = (0..SLOTS as u8 + 3).map(|i| vec![i, 0xff]).collect();
        for s in &strings {
            let _ = memo.decode(s, &mut []);
        }
        assert_eq!(memo.slots.len(), SLOTS);
        // The newest are held; every answer still equals decoding's.
        for s in strings.iter().rev() {
            assert_eq!(memo.decode(s, &mut []), huffman::decode(s, &mut []));
        }
    }

    /// Random strings, each looked up several times with prefixes of every
    /// length, against plain decoding.
    #[test]
    fn agrees_with_decoding_on_random_input() {
        let mut rng = crate::testutil::XorShift(0x1234_5678_9abc_def1);
        let mut memo = Memo::default();
        // Mostly valid strings, some refused, some too long to be held.
        let pool: Vec<Vec<u8>> = (0..24)
            .map(|i| {
                let len = rng.below_usize(MAX_RAW + 8);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                match i % 3 {
                    0 => bytes,
                    // Text codes to about as many octets as it has.
                    1 => encode(&bytes.iter().map(|b| b'a' + b % 26).collect::<Vec<_>>()),
                    _ => encode(bytes.get(..len / 4).unwrap_or_default()),
                }
            })
            .collect();
        for _ in 0..20_000 {
            let src = &pool[rng.below_usize(pool.len())];
            let keep = rng.below_usize(MAX_KEPT + 4);
            let mut got = vec![0x55; keep];
            let mut want = vec![0x55; keep];
            assert_eq!(memo.decode(src, &mut got), huffman::decode(src, &mut want));
            if huffman::decode(src, &mut []).is_ok() {
                assert_eq!(got, want, "{src:02x?}");
            }
        }
    }
}
