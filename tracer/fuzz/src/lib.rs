//! What the fuzz targets share: a fuzz input read as a script of one
//! connection (its bytes in both directions, gaps, a close), and that
//! script played into a parser or turned into the ring-buffer records the
//! kernel side would write for it.
//!
//! The script's format (the seeds `cargo xtask fuzz` writes from the golden
//! fixtures use it too):
//!
//! - byte 0, settings: bit 0 set = the traced process is the client (else
//!   the server); bit 1 = the connection is picked up mid-stream (where a
//!   target knows the difference); bit 2 = raw records (`pipeline` only);
//! - then steps, each a control byte `c` and its operands:
//!   - `c & 0x80`: the traced process wrote these bytes (else it read them);
//!   - `(c >> 5) & 3` = 0 or 1: data, the next byte is its length, then
//!     that many bytes (fewer at the end of the input);
//!   - 2: a gap, the next two bytes (little endian) its length, shifted
//!     left 16 more bits when `c & 0x10` (gigabyte holes);
//!   - 3: the connection closes when `c & 1`, else time passes (the
//!     parser's timeout fires), and the script goes on.

use tracer::pipeline::conntrack::{ParserTally, PROTOCOLS};
use tracer::protocols::{Exchange, Parser, ParserCounters, Piece, Side};

/// One step of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Data { outbound: bool, bytes: &'a [u8] },
    Gap { outbound: bool, len: u64 },
    Close,
    Expire,
}

/// The settings byte and the steps after it.
pub fn script(data: &[u8]) -> (u8, Steps<'_>) {
    match data.split_first() {
        Some((&settings, rest)) => (settings, Steps(rest)),
        None => (0, Steps(&[])),
    }
}

/// The side the settings byte names.
pub fn side(settings: u8) -> Side {
    if settings & 1 != 0 {
        Side::Client
    } else {
        Side::Server
    }
}

/// The steps of a script, in order.
pub struct Steps<'a>(&'a [u8]);

impl<'a> Iterator for Steps<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        let (&c, rest) = self.0.split_first()?;
        let outbound = c & 0x80 != 0;
        let step = match (c >> 5) & 3 {
            0 | 1 => {
                let (&len, rest) = rest.split_first().unwrap_or((&0, &[]));
                let len = usize::from(len).min(rest.len());
                let (bytes, rest) = rest.split_at(len);
                self.0 = rest;
                return Some(Step::Data { outbound, bytes });
            }
            2 => {
                let lo = rest.first().copied().unwrap_or(0);
                let hi = rest.get(1).copied().unwrap_or(0);
                self.0 = rest.get(2..).unwrap_or_default();
                let mut len = u64::from(u16::from_le_bytes([lo, hi]));
                if c & 0x10 != 0 {
                    len <<= 16;
                }
                return Some(Step::Gap { outbound, len });
            }
            _ if c & 1 != 0 => Step::Close,
            _ => Step::Expire,
        };
        self.0 = rest;
        Some(step)
    }
}

/// Plays a script into the parser `make` builds for the script's side.
/// Whatever the bytes, the parser must not panic, and what it reports must
/// be well formed: every exchange ends no earlier than it starts.
pub fn drive(data: &[u8], make: impl FnOnce(Side) -> Parser) {
    let (settings, steps) = script(data);
    let mut parser = make(side(settings));
    let mut counters: ParserTally = [ParserCounters::default(); PROTOCOLS];
    let mut out: Vec<Exchange> = Vec::new();
    let mut tick = 0u64;
    for step in steps {
        tick += 1_000;
        match step {
            Step::Data { outbound, bytes } => {
                parser.on_piece(outbound, Piece::Data(bytes), tick, &mut counters, &mut out);
            }
            Step::Gap { outbound, len } => {
                parser.on_piece(outbound, Piece::Gap(len), tick, &mut counters, &mut out);
            }
            Step::Close => parser.on_close(tick, &mut counters, &mut out),
            Step::Expire => {
                tick += 1_000_000;
                parser.expire(tick, 500_000, &mut out);
            }
        }
        let _ = parser.verdict();
        check(&out);
        out.clear();
    }
    parser.on_close(tick + 1, &mut counters, &mut out);
    check(&out);
}

fn check(exchanges: &[Exchange]) {
    for e in exchanges {
        assert!(
            e.end_ns >= e.start_ns,
            "an exchange ends before it starts: {e:?}"
        );
    }
}
