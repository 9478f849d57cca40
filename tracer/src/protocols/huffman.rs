//! The HPACK Huffman code (RFC 7541 section 5.2 and Appendix B): decoding a
//! string literal's octets, or only counting them.
//!
//! Two state machines are built from the code table at compile time. Both
//! walk the code's tree, whose internal nodes are the states:
//!
//! - one reads four bits at a time and says which symbol a step emitted,
//!   for the few values the tracer keeps (a method, a path, the start of a
//!   `content-type`);
//! - one reads a whole byte at a time and says only how many symbols it
//!   emitted, for values needed only for their decoded length (which sizes
//!   the dynamic table): `date`, `server`, `content-length` and the like,
//!   which servers insert into the table on every response. That loop has
//!   no branch per symbol and half the steps, and it is most of the
//!   decoding done.
//!
//! Both refuse the same strings: EOS anywhere, and padding that is not at
//! most seven bits of EOS's prefix (all ones).

/// The octets are not a valid Huffman-coded string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// Decodes `src`, writing the first decoded octets into `out` (as many as
/// it holds); returns the decoded length, which may be more. With `out`
/// empty, the string is only counted (and checked).
pub fn decode(src: &[u8], out: &mut [u8]) -> Result<usize, Invalid> {
    let mut decoded = 0usize;
    let mut state = 0u8;
    for (at, &byte) in src.iter().enumerate() {
        if decoded >= out.len() {
            // The rest only counts.
            let rest = src.get(at..).unwrap_or_default();
            return count(state, rest).map(|n| decoded + n);
        }
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = NIBBLES.steps[usize::from(state)][usize::from(nibble)];
            if step & STEP_FAILS != 0 {
                return Err(Invalid);
            }
            if step & STEP_EMITS != 0 {
                if let Some(slot) = out.get_mut(decoded) {
                    *slot = (step >> 8) as u8;
                }
                decoded += 1;
            }
            state = step as u8;
        }
    }
    if NIBBLES.may_end[usize::from(state)] {
        Ok(decoded)
    } else {
        Err(Invalid)
    }
}

/// Counts the symbols of `src` read from tree node `state`, and checks
/// that the string ends there.
fn count(state: u8, src: &[u8]) -> Result<usize, Invalid> {
    let mut state = state;
    let mut decoded = 0usize;
    // Failure is sticky and checked once at the end: a failed string is
    // refused whatever follows, and the loop stays free of branches.
    let mut failed = 0u16;
    for &byte in src {
        let step = BYTES[usize::from(state)][usize::from(byte)];
        decoded += usize::from((step >> BYTE_COUNT_SHIFT) & 3);
        failed |= step;
        state = step as u8;
    }
    if failed & BYTE_FAILS == 0 && NIBBLES.may_end[usize::from(state)] {
        Ok(decoded)
    } else {
        Err(Invalid)
    }
}

/// The decoding tree has one internal node per symbol but one: 256, so a
/// node fits in a byte. Node 0 is the root.
const NODES: usize = 256;

/// A child in the tree: an internal node, or (with this bit) a symbol.
const LEAF: u16 = 0x8000;

/// A step's low byte is the node reached; these bits say what happened.
const STEP_EMITS: u32 = 1 << 16;
const STEP_FAILS: u32 = 1 << 17;

/// The code as a state machine reading four bits at a time (no code is
/// shorter than five bits, so a step emits at most one symbol).
struct Huffman {
    /// `steps[node][nibble]`: the node reached, and the symbol emitted on
    /// the way (bits 8..16) if `STEP_EMITS`.
    steps: [[u32; 16]; NODES],
    /// Whether a string may end at this node: the root, or up to seven
    /// bits of EOS's prefix (padding).
    may_end: [bool; NODES],
}

/// Built from `CODES` at compile time; a row transcribed wrong (a code
/// that is not prefix-free, or a tree that is not full) fails the build.
static NIBBLES: Huffman = huffman();

const fn huffman() -> Huffman {
    let mut child = [[0u16; 2]; NODES];
    let mut depth = [0u8; NODES];
    let mut ones = [false; NODES];
    ones[0] = true;
    let mut nodes = 1;
    let mut symbol = 0;
    while symbol < CODES.len() {
        let (code, len) = CODES[symbol];
        let mut node = 0;
        let mut bit_index = len - 1;
        while bit_index > 0 {
            let bit = ((code >> bit_index) & 1) as usize;
            if child[node][bit] == 0 {
                assert!(nodes < NODES, "HPACK code tree too large");
                child[node][bit] = nodes as u16;
                depth[nodes] = depth[node] + 1;
                ones[nodes] = ones[node] && bit == 1;
                nodes += 1;
            }
            assert!(child[node][bit] & LEAF == 0, "HPACK code not prefix-free");
            node = child[node][bit] as usize;
            bit_index -= 1;
        }
        let bit = (code & 1) as usize;
        assert!(child[node][bit] == 0, "HPACK code not prefix-free");
        child[node][bit] = LEAF | symbol as u16;
        symbol += 1;
    }
    assert!(nodes == NODES, "HPACK code tree not full");
    let mut h = Huffman {
        steps: [[0; 16]; NODES],
        may_end: [false; NODES],
    };
    let mut state = 0;
    while state < NODES {
        h.may_end[state] = state == 0 || (ones[state] && depth[state] <= 7);
        let mut nibble = 0;
        while nibble < 16 {
            let mut node = state;
            let mut step = 0;
            let mut k = 4;
            while k > 0 {
                k -= 1;
                let next = child[node][(nibble >> k) & 1];
                assert!(next != 0, "HPACK code tree not full");
                if next & LEAF == 0 {
                    node = next as usize;
                } else if next & !LEAF == 256 {
                    step |= STEP_FAILS;
                    node = 0;
                } else {
                    step |= STEP_EMITS | ((next & 0xff) as u32) << 8;
                    node = 0;
                }
            }
            h.steps[state][nibble] = step | node as u32;
            nibble += 1;
        }
        state += 1;
    }
    h
}

/// A byte step's bits 8..10: how many symbols it emitted (a byte finishes
/// at most two codes, none being shorter than five bits).
const BYTE_COUNT_SHIFT: u16 = 8;

/// A byte step went through EOS.
const BYTE_FAILS: u16 = 1 << 15;

/// `BYTES[node][byte]`: the node reached after reading `byte` from `node`
/// (low 8 bits), how many symbols were emitted on the way, and whether EOS
/// was; two nibble steps composed. 128 KiB, of which a string touches one
/// entry per byte.
static BYTES: [[u16; 256]; NODES] = byte_steps(&huffman());

const fn byte_steps(nibbles: &Huffman) -> [[u16; 256]; NODES] {
    let mut table = [[0u16; 256]; NODES];
    let mut state = 0;
    while state < NODES {
        let mut byte = 0;
        while byte < 256 {
            let high = nibbles.steps[state][byte >> 4];
            let low = nibbles.steps[(high & 0xff) as usize][byte & 0x0f];
            let emitted = ((high & STEP_EMITS != 0) as u16) + ((low & STEP_EMITS != 0) as u16);
            let fails = (high | low) & STEP_FAILS != 0;
            table[state][byte] = (low & 0xff) as u16
                | emitted << BYTE_COUNT_SHIFT
                | if fails { BYTE_FAILS } else { 0 };
            byte += 1;
        }
        state += 1;
    }
    table
}

/// RFC 7541 Appendix B: (code, length in bits) per symbol, 256 being EOS.
#[rustfmt::skip]
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), // (  0)
    (0x7fffd8, 23), // (  1)
    (0xfffffe2, 28), // (  2)
    (0xfffffe3, 28), // (  3)
    (0xfffffe4, 28), // (  4)
    (0xfffffe5, 28), // (  5)
    (0xfffffe6, 28), // (  6)
    (0xfffffe7, 28), // (  7)
    (0xfffffe8, 28), // (  8)
    (0xffffea, 24), // (  9)
    (0x3ffffffc, 30), // ( 10)
    (0xfffffe9, 28), // ( 11)
    (0xfffffea, 28), // ( 12)
    (0x3ffffffd, 30), // ( 13)
    (0xfffffeb, 28), // ( 14)
    (0xfffffec, 28), // ( 15)
    (0xfffffed, 28), // ( 16)
    (0xfffffee, 28), // ( 17)
    (0xfffffef, 28), // ( 18)
    (0xffffff0, 28), // ( 19)
    (0xffffff1, 28), // ( 20)
    (0xffffff2, 28), // ( 21)
    (0x3ffffffe, 30), // ( 22)
    (0xffffff3, 28), // ( 23)
    (0xffffff4, 28), // ( 24)
    (0xffffff5, 28), // ( 25)
    (0xffffff6, 28), // ( 26)
    (0xffffff7, 28), // ( 27)
    (0xffffff8, 28), // ( 28)
    (0xffffff9, 28), // ( 29)
    (0xffffffa, 28), // ( 30)
    (0xffffffb, 28), // ( 31)
    (0x14, 6), // ' ' ( 32)
    (0x3f8, 10), // '!' ( 33)
    (0x3f9, 10), // '"' ( 34)
    (0xffa, 12), // '#' ( 35)
    (0x1ff9, 13), // '$' ( 36)
    (0x15, 6), // '%' ( 37)
    (0xf8, 8), // '&' ( 38)
    (0x7fa, 11), // ''' ( 39)
    (0x3fa, 10), // '(' ( 40)
    (0x3fb, 10), // ')' ( 41)
    (0xf9, 8), // '*' ( 42)
    (0x7fb, 11), // '+' ( 43)
    (0xfa, 8), // ',' ( 44)
    (0x16, 6), // '-' ( 45)
    (0x17, 6), // '.' ( 46)
    (0x18, 6), // '/' ( 47)
    (0x0, 5), // '0' ( 48)
    (0x1, 5), // '1' ( 49)
    (0x2, 5), // '2' ( 50)
    (0x19, 6), // '3' ( 51)
    (0x1a, 6), // '4' ( 52)
    (0x1b, 6), // '5' ( 53)
    (0x1c, 6), // '6' ( 54)
    (0x1d, 6), // '7' ( 55)
    (0x1e, 6), // '8' ( 56)
    (0x1f, 6), // '9' ( 57)
    (0x5c, 7), // ':' ( 58)
    (0xfb, 8), // ';' ( 59)
    (0x7ffc, 15), // '<' ( 60)
    (0x20, 6), // '=' ( 61)
    (0xffb, 12), // '>' ( 62)
    (0x3fc, 10), // '?' ( 63)
    (0x1ffa, 13), // '@' ( 64)
    (0x21, 6), // 'A' ( 65)
    (0x5d, 7), // 'B' ( 66)
    (0x5e, 7), // 'C' ( 67)
    (0x5f, 7), // 'D' ( 68)
    (0x60, 7), // 'E' ( 69)
    (0x61, 7), // 'F' ( 70)
    (0x62, 7), // 'G' ( 71)
    (0x63, 7), // 'H' ( 72)
    (0x64, 7), // 'I' ( 73)
    (0x65, 7), // 'J' ( 74)
    (0x66, 7), // 'K' ( 75)
    (0x67, 7), // 'L' ( 76)
    (0x68, 7), // 'M' ( 77)
    (0x69, 7), // 'N' ( 78)
    (0x6a, 7), // 'O' ( 79)
    (0x6b, 7), // 'P' ( 80)
    (0x6c, 7), // 'Q' ( 81)
    (0x6d, 7), // 'R' ( 82)
    (0x6e, 7), // 'S' ( 83)
    (0x6f, 7), // 'T' ( 84)
    (0x70, 7), // 'U' ( 85)
    (0x71, 7), // 'V' ( 86)
    (0x72, 7), // 'W' ( 87)
    (0xfc, 8), // 'X' ( 88)
    (0x73, 7), // 'Y' ( 89)
    (0xfd, 8), // 'Z' ( 90)
    (0x1ffb, 13), // '[' ( 91)
    (0x7fff0, 19), // '\' ( 92)
    (0x1ffc, 13), // ']' ( 93)
    (0x3ffc, 14), // '^' ( 94)
    (0x22, 6), // '_' ( 95)
    (0x7ffd, 15), // '`' ( 96)
    (0x3, 5), // 'a' ( 97)
    (0x23, 6), // 'b' ( 98)
    (0x4, 5), // 'c' ( 99)
    (0x24, 6), // 'd' (100)
    (0x5, 5), // 'e' (101)
    (0x25, 6), // 'f' (102)
    (0x26, 6), // 'g' (103)
    (0x27, 6), // 'h' (104)
    (0x6, 5), // 'i' (105)
    (0x74, 7), // 'j' (106)
    (0x75, 7), // 'k' (107)
    (0x28, 6), // 'l' (108)
    (0x29, 6), // 'm' (109)
    (0x2a, 6), // 'n' (110)
    (0x7, 5), // 'o' (111)
    (0x2b, 6), // 'p' (112)
    (0x76, 7), // 'q' (113)
    (0x2c, 6), // 'r' (114)
    (0x8, 5), // 's' (115)
    (0x9, 5), // 't' (116)
    (0x2d, 6), // 'u' (117)
    (0x77, 7), // 'v' (118)
    (0x78, 7), // 'w' (119)
    (0x79, 7), // 'x' (120)
    (0x7a, 7), // 'y' (121)
    (0x7b, 7), // 'z' (122)
    (0x7ffe, 15), // '{' (123)
    (0x7fc, 11), // '|' (124)
    (0x3ffd, 14), // '}' (125)
    (0x1ffd, 13), // '~' (126)
    (0xffffffc, 28), // (127)
    (0xfffe6, 20), // (128)
    (0x3fffd2, 22), // (129)
    (0xfffe7, 20), // (130)
    (0xfffe8, 20), // (131)
    (0x3fffd3, 22), // (132)
    (0x3fffd4, 22), // (133)
    (0x3fffd5, 22), // (134)
    (0x7fffd9, 23), // (135)
    (0x3fffd6, 22), // (136)
    (0x7fffda, 23), // (137)
    (0x7fffdb, 23), // (138)
    (0x7fffdc, 23), // (139)
    (0x7fffdd, 23), // (140)
    (0x7fffde, 23), // (141)
    (0xffffeb, 24), // (142)
    (0x7fffdf, 23), // (143)
    (0xffffec, 24), // (144)
    (0xffffed, 24), // (145)
    (0x3fffd7, 22), // (146)
    (0x7fffe0, 23), // (147)
    (0xffffee, 24), // (148)
    (0x7fffe1, 23), // (149)
    (0x7fffe2, 23), // (150)
    (0x7fffe3, 23), // (151)
    (0x7fffe4, 23), // (152)
    (0x1fffdc, 21), // (153)
    (0x3fffd8, 22), // (154)
    (0x7fffe5, 23), // (155)
    (0x3fffd9, 22), // (156)
    (0x7fffe6, 23), // (157)
    (0x7fffe7, 23), // (158)
    (0xffffef, 24), // (159)
    (0x3fffda, 22), // (160)
    (0x1fffdd, 21), // (161)
    (0xfffe9, 20), // (162)
    (0x3fffdb, 22), // (163)
    (0x3fffdc, 22), // (164)
    (0x7fffe8, 23), // (165)
    (0x7fffe9, 23), // (166)
    (0x1fffde, 21), // (167)
    (0x7fffea, 23), // (168)
    (0x3fffdd, 22), // (169)
    (0x3fffde, 22), // (170)
    (0xfffff0, 24), // (171)
    (0x1fffdf, 21), // (172)
    (0x3fffdf, 22), // (173)
    (0x7fffeb, 23), // (174)
    (0x7fffec, 23), // (175)
    (0x1fffe0, 21), // (176)
    (0x1fffe1, 21), // (177)
    (0x3fffe0, 22), // (178)
    (0x1fffe2, 21), // (179)
    (0x7fffed, 23), // (180)
    (0x3fffe1, 22), // (181)
    (0x7fffee, 23), // (182)
    (0x7fffef, 23), // (183)
    (0xfffea, 20), // (184)
    (0x3fffe2, 22), // (185)
    (0x3fffe3, 22), // (186)
    (0x3fffe4, 22), // (187)
    (0x7ffff0, 23), // (188)
    (0x3fffe5, 22), // (189)
    (0x3fffe6, 22), // (190)
    (0x7ffff1, 23), // (191)
    (0x3ffffe0, 26), // (192)
    (0x3ffffe1, 26), // (193)
    (0xfffeb, 20), // (194)
    (0x7fff1, 19), // (195)
    (0x3fffe7, 22), // (196)
    (0x7ffff2, 23), // (197)
    (0x3fffe8, 22), // (198)
    (0x1ffffec, 25), // (199)
    (0x3ffffe2, 26), // (200)
    (0x3ffffe3, 26), // (201)
    (0x3ffffe4, 26), // (202)
    (0x7ffffde, 27), // (203)
    (0x7ffffdf, 27), // (204)
    (0x3ffffe5, 26), // (205)
    (0xfffff1, 24), // (206)
    (0x1ffffed, 25), // (207)
    (0x7fff2, 19), // (208)
    (0x1fffe3, 21), // (209)
    (0x3ffffe6, 26), // (210)
    (0x7ffffe0, 27), // (211)
    (0x7ffffe1, 27), // (212)
    (0x3ffffe7, 26), // (213)
    (0x7ffffe2, 27), // (214)
    (0xfffff2, 24), // (215)
    (0x1fffe4, 21), // (216)
    (0x1fffe5, 21), // (217)
    (0x3ffffe8, 26), // (218)
    (0x3ffffe9, 26), // (219)
    (0xffffffd, 28), // (220)
    (0x7ffffe3, 27), // (221)
    (0x7ffffe4, 27), // (222)
    (0x7ffffe5, 27), // (223)
    (0xfffec, 20), // (224)
    (0xfffff3, 24), // (225)
    (0xfffed, 20), // (226)
    (0x1fffe6, 21), // (227)
    (0x3fffe9, 22), // (228)
    (0x1fffe7, 21), // (229)
    (0x1fffe8, 21), // (230)
    (0x7ffff3, 23), // (231)
    (0x3fffea, 22), // (232)
    (0x3fffeb, 22), // (233)
    (0x1ffffee, 25), // (234)
    (0x1ffffef, 25), // (235)
    (0xfffff4, 24), // (236)
    (0xfffff5, 24), // (237)
    (0x3ffffea, 26), // (238)
    (0x7ffff4, 23), // (239)
    (0x3ffffeb, 26), // (240)
    (0x7ffffe6, 27), // (241)
    (0x3ffffec, 26), // (242)
    (0x3ffffed, 26), // (243)
    (0x7ffffe7, 27), // (244)
    (0x7ffffe8, 27), // (245)
    (0x7ffffe9, 27), // (246)
    (0x7ffffea, 27), // (247)
    (0x7ffffeb, 27), // (248)
    (0xffffffe, 28), // (249)
    (0x7ffffec, 27), // (250)
    (0x7ffffed, 27), // (251)
    (0x7ffffee, 27), // (252)
    (0x7ffffef, 27), // (253)
    (0x7fffff0, 27), // (254)
    (0x3ffffee, 26), // (255)
    (0x3fffffff, 30), // EOS (256)
];

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::testutil::hex;

    /// Decodes whole, checking that counting agrees.
    fn huffman(text: &str) -> Result<Vec<u8>, Invalid> {
        let bytes = hex(text);
        let mut out = vec![0; bytes.len() * 8 / 5];
        let result = decode(&bytes, &mut out);
        assert_eq!(count(0, &bytes), result);
        out.truncate(result?);
        Ok(out)
    }

    /// Encodes with the table, for round trips.
    pub(crate) fn encode(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in text {
            let (code, len) = CODES[usize::from(b)];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
        }
        out
    }

    /// The code read a bit at a time against `CODES` itself, sharing
    /// nothing with the tables under test.
    fn reference(src: &[u8]) -> Result<Vec<u8>, Invalid> {
        let symbols: std::collections::HashMap<(u32, u8), usize> =
            CODES.iter().enumerate().map(|(s, &c)| (c, s)).collect();
        let (mut code, mut len) = (0u32, 0u8);
        let mut out = Vec::new();
        for &byte in src {
            for k in (0..8).rev() {
                code = (code << 1) | u32::from((byte >> k) & 1);
                len += 1;
                if let Some(&symbol) = symbols.get(&(code, len)) {
                    if symbol == 256 {
                        return Err(Invalid);
                    }
                    out.push(symbol as u8);
                    (code, len) = (0, 0);
                }
            }
        }
        // Padding: at most seven bits, all ones.
        if len <= 7 && code == (1 << len) - 1 {
            Ok(out)
        } else {
            Err(Invalid)
        }
    }

    #[test]
    fn huffman_rfc_examples() {
        // RFC 7541 C.4.1 to C.4.3 and C.6.1.
        assert_eq!(
            huffman("f1e3 c2e5 f23a 6ba0 ab90 f4ff").unwrap(),
            b"www.example.com"
        );
        assert_eq!(huffman("a8eb 1064 9cbf").unwrap(), b"no-cache");
        assert_eq!(huffman("25a8 49e9 5ba9 7d7f").unwrap(), b"custom-key");
        assert_eq!(huffman("25a8 49e9 5bb8 e8b4 bf").unwrap(), b"custom-value");
        assert_eq!(huffman("6402").unwrap(), b"302");
        assert_eq!(huffman("aec3 771a 4b").unwrap(), b"private");
        assert_eq!(
            huffman("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff").unwrap(),
            b"Mon, 21 Oct 2013 20:13:21 GMT"
        );
        assert_eq!(
            huffman("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3").unwrap(),
            b"https://www.example.com"
        );
        assert_eq!(huffman("").unwrap(), b"");
    }

    #[test]
    fn huffman_round_trips_every_symbol() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = vec![0; 256];
        assert_eq!(decode(&encode(&all), &mut out), Ok(256));
        assert_eq!(out, all);
        assert_eq!(count(0, &encode(&all)), Ok(256));
        for b in 0..=255u8 {
            let mut out = [0; 2];
            assert_eq!(decode(&encode(&[b, b, b]), &mut out), Ok(3));
            assert_eq!(out, [b, b]);
            assert_eq!(count(0, &encode(&[b, b, b])), Ok(3));
            // Every symbol after every other, so each is read from every
            // bit offset.
            for a in [0u8, b'0', b'a', b'/', 0xff] {
                let text = [a, b, a, b, b, a];
                assert_eq!(count(0, &encode(&text)), Ok(6));
                assert_eq!(reference(&encode(&text)).as_deref(), Ok(&text[..]));
            }
        }
    }

    #[test]
    fn huffman_refuses_bad_padding_and_eos() {
        // '0' is 00000 (5 bits): padded with zeros instead of ones.
        assert_eq!(huffman("00"), Err(Invalid));
        // A whole byte of ones is more than seven bits of padding.
        assert_eq!(huffman("07ff"), Err(Invalid));
        // EOS: thirty ones.
        assert_eq!(huffman("ffff fffc"), Err(Invalid));
        assert_eq!(huffman("ffff ffff"), Err(Invalid));
        // EOS followed by valid codes is refused by counting as well.
        let mut eos_first = hex("ffff fffc");
        eos_first.extend(encode(b"abc"));
        assert_eq!(count(0, &eos_first), Err(Invalid));
        assert_eq!(decode(&eos_first, &mut []), Err(Invalid));
    }

    /// Random strings, valid or not: decoding, counting (from the start
    /// and after a kept prefix of every length) and the bit-wise reference
    /// agree on the length and on refusal.
    #[test]
    fn decoders_agree_with_the_reference_on_random_input() {
        let mut rng = crate::testutil::XorShift(0x2545_F491_4F6C_DD1D);
        for round in 0..20_000 {
            let len = rng.below_usize(24);
            let src: Vec<u8> = if round % 2 == 0 {
                // Mostly valid: encoded text, sometimes with a byte flipped.
                let text: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let mut src = encode(&text);
                if round % 6 == 0 && !src.is_empty() {
                    let at = rng.below_usize(src.len());
                    src[at] ^= 1 << rng.below(8);
                }
                src
            } else {
                (0..len).map(|_| rng.next() as u8).collect()
            };
            let expected = reference(&src);
            let want_len = expected.as_ref().map(Vec::len).map_err(|e| *e);
            assert_eq!(count(0, &src), want_len, "{src:02x?}");
            let mut whole = vec![0; src.len() * 8 / 5];
            assert_eq!(decode(&src, &mut whole), want_len, "{src:02x?}");
            if let Ok(text) = &expected {
                assert_eq!(&whole[..text.len()], &text[..]);
            }
            let keep = rng.below_usize(whole.len() + 1);
            let mut kept = vec![0; keep];
            assert_eq!(decode(&src, &mut kept), want_len, "{src:02x?}");
            if let Ok(text) = &expected {
                let n = keep.min(text.len());
                assert_eq!(&kept[..n], &text[..n]);
            }
        }
    }
}
