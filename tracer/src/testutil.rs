//! Test helpers shared by unit tests of several modules.

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
