//! Test helpers shared by unit tests of several modules.

use crate::protocols::{ConnParser, Exchange, ParserCounters, Piece, Side};

/// Small deterministic generator (xorshift64): tests need no `rand` crate
/// and every failure reproduces from its seed.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// `below` for lengths and indices.
    pub fn below_usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Overwrites up to two random bytes of `bytes` with random values.
    pub fn corrupt(&mut self, bytes: &mut [u8]) {
        for _ in 0..self.below_usize(3) {
            let at = self.below_usize(bytes.len());
            if let Some(b) = bytes.get_mut(at) {
                *b = self.next() as u8;
            }
        }
    }
}

/// Feeds `bytes` to `conn` in pieces of random lengths, all at `ts`.
pub fn feed_in_random_pieces<P: ConnParser>(
    conn: &mut P,
    rng: &mut XorShift,
    outbound: bool,
    bytes: &[u8],
    ts: u64,
    c: &mut ParserCounters,
    out: &mut Vec<Exchange>,
) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.below_usize(rest.len()) + 1;
        let (piece, tail) = rest.split_at(n);
        conn.on_piece(outbound, Piece::Data(piece), ts, c, out);
        rest = tail;
    }
}

/// One parser under test, fed piece by piece with a clock that ticks 10
/// per piece; what it reports lands in `out` and `c`.
pub struct Driver<P> {
    pub conn: P,
    pub side: Side,
    pub c: ParserCounters,
    pub out: Vec<Exchange>,
    pub ts: u64,
}

impl<P: ConnParser> Driver<P> {
    /// Drives `conn`, whose traced process is `side`.
    pub fn with(conn: P, side: Side) -> Self {
        Self {
            conn,
            side,
            c: ParserCounters::default(),
            out: Vec::new(),
            ts: 0,
        }
    }

    /// One piece in the request (`request_dir`) or response direction;
    /// returns its tick.
    pub fn feed(&mut self, request_dir: bool, piece: Piece<'_>) -> u64 {
        self.ts += 10;
        let outbound = request_dir == (self.side == Side::Client);
        self.conn
            .on_piece(outbound, piece, self.ts, &mut self.c, &mut self.out);
        self.ts
    }

    pub fn req(&mut self, bytes: &[u8]) -> u64 {
        self.feed(true, Piece::Data(bytes))
    }

    pub fn resp(&mut self, bytes: &[u8]) -> u64 {
        self.feed(false, Piece::Data(bytes))
    }

    pub fn req_gap(&mut self, n: u64) -> u64 {
        self.feed(true, Piece::Gap(n))
    }

    pub fn resp_gap(&mut self, n: u64) -> u64 {
        self.feed(false, Piece::Gap(n))
    }

    pub fn close(&mut self) -> u64 {
        self.ts += 10;
        self.conn.on_close(self.ts, &mut self.c, &mut self.out);
        self.ts
    }
}

/// The registry as text, for assertions.
pub fn encoded(m: &crate::export::metrics::Metrics) -> String {
    m.encode().expect("encoding never fails for these metrics")
}

/// The value of the sample whose line starts with `series` exactly.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Bytes from hex digits, anything else (spaces, newlines) ignored: the
/// RFCs print their examples so.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}
