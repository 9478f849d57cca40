//! HPACK (RFC 7541) header block decoding for one direction of an HTTP/2
//! connection, keeping only what the tracer reports.
//!
//! Input: complete header blocks (a HEADERS or PUSH_PROMISE fragment and its
//! CONTINUATIONs), in the order the encoder wrote them. Output: a
//! [`Headers`] per block: `:method`, `:path` without its query, `:status`,
//! whether `content-type` is gRPC, and `grpc-status`. Every other header is
//! decoded only as far as the dynamic table needs (its size) and dropped.
//!
//! The dynamic table keeps, per entry, its size and the reduced value of
//! the headers above, so no other header value is ever stored. It can be
//! partly unknown: a connection picked up mid-stream, or one that lost a
//! header block, has entries we never saw. Those are modelled as an
//! unknown tail behind the entries inserted since: references into the
//! tail decode as "unresolved", never as a wrong value (see [`Decoder`]).

use std::collections::VecDeque;

/// Largest dynamic table followed, in RFC 7541 size units (name + value +
/// 32 per entry). Peers rarely go beyond the default 4096; a peer allowing
/// more than this costs us resolution of its oldest entries, not memory.
const MAX_TABLE_SIZE: usize = 64 * 1024;

/// The table size a connection starts with (RFC 9113 SETTINGS default).
const DEFAULT_TABLE_SIZE: usize = 4096;

/// Per-entry overhead in RFC 7541 size units (section 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Longest method kept: every registered method is far shorter.
const MAX_METHOD: usize = 32;

/// Longest path kept (before the query is cut): routes are cut at 128
/// bytes downstream, and HTTP/1's parser keeps the same.
pub(super) const MAX_PATH: usize = 512;

/// A name is decoded this far to recognise it; every name we read is
/// shorter.
const MAX_NAME: usize = 16;

/// `content-type` values starting with this (any case) are gRPC.
const GRPC_CONTENT_TYPE: &[u8] = b"application/grpc";

/// What one header block said about the fields the tracer reports. Each is
/// the block's first occurrence; None when absent or unresolved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Headers {
    pub method: Option<String>,
    /// `:path` with the query and fragment removed.
    pub path: Option<String>,
    pub status: Option<u16>,
    /// `content-type` was present: whether it names gRPC.
    pub grpc: Option<bool>,
    pub grpc_status: Option<u32>,
    /// Some field could not be resolved (a reference into the unknown part
    /// of the table, or an unparsable status): any field that is None may
    /// have been that one.
    pub unresolved: bool,
}

/// The block could not be decoded; the table is unknown from here on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undecodable;

/// The header names the tracer reads; the rest are only sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Method,
    Path,
    Status,
    ContentType,
    GrpcStatus,
    Other,
}

impl Name {
    fn of(name: &[u8]) -> Self {
        match name {
            b":method" => Self::Method,
            b":path" => Self::Path,
            b":status" => Self::Status,
            b"content-type" => Self::ContentType,
            b"grpc-status" => Self::GrpcStatus,
            _ => Self::Other,
        }
    }

    /// How many decoded value octets this header needs kept.
    fn keep(self) -> usize {
        match self {
            Self::Method => MAX_METHOD,
            Self::Path => MAX_PATH,
            Self::Status => 4,
            Self::ContentType => GRPC_CONTENT_TYPE.len(),
            Self::GrpcStatus => 11,
            Self::Other => 0,
        }
    }
}

/// A header field reduced to what the tracer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Method(Box<str>),
    Path(Box<str>),
    /// None: not a three-digit status.
    Status(Option<u16>),
    ContentType {
        grpc: bool,
    },
    /// None: not a number.
    GrpcStatus(Option<u32>),
    Other,
    /// From an entry we never saw: not even its name is known.
    Unknown,
}

impl Field {
    /// The reduced field for `name` with the (possibly cut) value `value`.
    fn new(name: Name, value: &[u8]) -> Self {
        match name {
            Name::Method => Self::Method(String::from_utf8_lossy(value).into()),
            Name::Path => Self::Path(path_without_query(value).into()),
            Name::Status => Self::Status(parse_status(value)),
            Name::ContentType => Self::ContentType {
                grpc: value
                    .get(..GRPC_CONTENT_TYPE.len())
                    .is_some_and(|v| v.eq_ignore_ascii_case(GRPC_CONTENT_TYPE)),
            },
            Name::GrpcStatus => Self::GrpcStatus(parse_decimal(value)),
            Name::Other => Self::Other,
        }
    }

    fn name(&self) -> Option<Name> {
        Some(match self {
            Self::Method(_) => Name::Method,
            Self::Path(_) => Name::Path,
            Self::Status(_) => Name::Status,
            Self::ContentType { .. } => Name::ContentType,
            Self::GrpcStatus(_) => Name::GrpcStatus,
            Self::Other => Name::Other,
            Self::Unknown => return None,
        })
    }
}

impl Headers {
    /// Records `field` unless an earlier one of its name was recorded.
    fn take(&mut self, field: &Field) {
        match field {
            Field::Method(m) => {
                self.method.get_or_insert_with(|| m.to_string());
            }
            Field::Path(p) => {
                self.path.get_or_insert_with(|| p.to_string());
            }
            Field::Status(Some(s)) => {
                self.status.get_or_insert(*s);
            }
            Field::ContentType { grpc } => {
                self.grpc.get_or_insert(*grpc);
            }
            Field::GrpcStatus(Some(s)) => {
                self.grpc_status.get_or_insert(*s);
            }
            Field::Status(None) | Field::GrpcStatus(None) | Field::Unknown => {
                self.unresolved = true;
            }
            Field::Other => {}
        }
    }
}

/// One dynamic-table entry.
#[derive(Debug, Clone)]
struct Entry {
    /// RFC 7541 size; a lower bound when the name was unknown.
    size: usize,
    /// Length of the name, for literals that reuse it; 0 when unknown.
    name_len: usize,
    field: Field,
}

/// The decoding context of one direction.
///
/// The entries held are always the newest of the encoder's table, in the
/// same order, so an index that reaches one of them names the right entry.
/// Behind them may lie entries we never saw (`unknown_tail`). Eviction
/// keeps that promise by never evicting earlier than the encoder does:
/// sizes are exact or lower bounds, and the maximum assumed is the real
/// one or larger.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    /// The maximum size the encoder last announced, if we saw it.
    announced: Option<usize>,
    /// Entries older than `entries`, unseen, may still be in the table.
    unknown_tail: bool,
}

impl Decoder {
    /// A connection's first header block comes next: the table is empty.
    pub fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            announced: Some(DEFAULT_TABLE_SIZE),
            unknown_tail: false,
        }
    }

    /// Header blocks were encoded before this one that we did not see.
    pub fn unknown() -> Self {
        let mut decoder = Self::new();
        decoder.forget();
        decoder.announced = None;
        decoder
    }

    /// Header blocks were lost: what they inserted shifted every index, so
    /// nothing held can be trusted. The announced size is kept: a size
    /// update in a lost block is rare, and a wrong guess here costs
    /// undecodable blocks, never wrong values (see [`Decoder`]).
    pub fn forget(&mut self) {
        self.entries = VecDeque::new();
        self.size = 0;
        self.unknown_tail = true;
    }

    /// Whether references may reach entries we never saw.
    pub fn is_degraded(&self) -> bool {
        self.unknown_tail
    }

    /// Decodes one complete header block. On error the table is forgotten.
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, Undecodable> {
        let mut headers = Headers::default();
        let mut input = Input(block);
        let mut scratch = Vec::new();
        while let Some(&first) = input.0.first() {
            let step = if first & 0x80 != 0 {
                self.indexed(&mut input, &mut headers)
            } else if first & 0xc0 == 0x40 {
                self.literal(&mut input, 6, true, &mut scratch, &mut headers)
            } else if first & 0xe0 == 0x20 {
                input.integer(5).map(|size| self.resize(size))
            } else {
                // Without indexing (0000) or never indexed (0001).
                self.literal(&mut input, 4, false, &mut scratch, &mut headers)
            };
            if step.is_err() {
                self.forget();
                return Err(Undecodable);
            }
        }
        Ok(headers)
    }

    fn indexed(&mut self, input: &mut Input<'_>, headers: &mut Headers) -> Result<(), Undecodable> {
        let index = input.integer(7)?;
        match self.lookup(index)? {
            Lookup::Static(name, value) => headers.take(&Field::new(Name::of(name), value)),
            Lookup::Dynamic(entry) => headers.take(&entry.field),
            Lookup::Unseen => headers.take(&Field::Unknown),
        }
        Ok(())
    }

    fn literal(
        &mut self,
        input: &mut Input<'_>,
        prefix: u8,
        insert: bool,
        scratch: &mut Vec<u8>,
        headers: &mut Headers,
    ) -> Result<(), Undecodable> {
        let index = input.integer(prefix)?;
        // The name: its kind (None when unknown) and length.
        let (name, name_len) = if index == 0 {
            scratch.clear();
            let len = input.string(MAX_NAME, scratch)?;
            (Some(Name::of(scratch)), len)
        } else {
            match self.lookup(index)? {
                Lookup::Static(name, _) => (Some(Name::of(name)), name.len()),
                Lookup::Dynamic(entry) => (entry.field.name(), entry.name_len),
                Lookup::Unseen => (None, 0),
            }
        };
        scratch.clear();
        let keep = name.map_or(0, Name::keep);
        if !insert && keep == 0 && name.is_some() {
            // Nothing to keep and no table entry to size: the value's
            // decoded length is never needed, so it is not decoded (most
            // response headers: date, server, content-length).
            input.skip_string()?;
            return Ok(());
        }
        let value_len = input.string(keep, scratch)?;
        let field = name.map_or(Field::Unknown, |name| Field::new(name, scratch));
        headers.take(&field);
        if insert {
            let size = name_len
                .saturating_add(value_len)
                .saturating_add(ENTRY_OVERHEAD);
            self.insert(Entry {
                size,
                name_len,
                field,
            });
        }
        Ok(())
    }

    fn lookup(&self, index: usize) -> Result<Lookup<'_>, Undecodable> {
        let Some(dynamic) = index.checked_sub(STATIC_TABLE.len() + 1) else {
            let (name, value) = STATIC_TABLE.get(index.wrapping_sub(1)).ok_or(Undecodable)?;
            return Ok(Lookup::Static(name.as_bytes(), value.as_bytes()));
        };
        match self.entries.get(dynamic) {
            Some(entry) => Ok(Lookup::Dynamic(entry)),
            // No table within our bounds holds this many entries.
            None if self.unknown_tail && dynamic < MAX_TABLE_SIZE / ENTRY_OVERHEAD => {
                Ok(Lookup::Unseen)
            }
            None => Err(Undecodable),
        }
    }

    /// The largest size we let the table reach: the announced one, or our
    /// cap when it is unknown or larger.
    fn limit(&self) -> usize {
        self.announced
            .map_or(MAX_TABLE_SIZE, |a| a.min(MAX_TABLE_SIZE))
    }

    /// A dynamic table size update (RFC 7541 section 6.3). One above the
    /// peer's SETTINGS_HEADER_TABLE_SIZE is tolerated: we observe, and the
    /// SETTINGS may not have been seen.
    fn resize(&mut self, size: usize) {
        self.announced = Some(size);
        self.evict(self.limit());
    }

    fn insert(&mut self, entry: Entry) {
        let limit = self.limit();
        if entry.size > limit {
            if self.beyond_cap() {
                // The encoder's table may be large enough to hold it: every
                // index would be off by one from here.
                self.forget();
            } else {
                // Empties the table (RFC 7541 section 4.4).
                self.evict(0);
            }
            return;
        }
        self.evict(limit - entry.size);
        self.size += entry.size;
        self.entries.push_front(entry);
        self.settle();
    }

    /// Whether the encoder's table may be larger than we follow.
    fn beyond_cap(&self) -> bool {
        self.announced.is_none_or(|a| a > MAX_TABLE_SIZE)
    }

    /// Evicts the oldest entries until the table fits in `target`.
    fn evict(&mut self, target: usize) {
        let beyond_cap = self.beyond_cap();
        while self.size > target {
            let Some(old) = self.entries.pop_back() else {
                break;
            };
            self.size -= old.size;
            if beyond_cap {
                // The encoder may keep what we cannot.
                self.unknown_tail = true;
            }
        }
        if target == 0 && !beyond_cap {
            self.unknown_tail = false;
        }
        self.settle();
    }

    /// When the entries we hold leave no room for even the smallest entry
    /// under the announced maximum, no unseen entry can remain behind them.
    fn settle(&mut self) {
        if let Some(announced) = self.announced.filter(|&a| a <= MAX_TABLE_SIZE) {
            if self.size + ENTRY_OVERHEAD > announced {
                self.unknown_tail = false;
            }
        }
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

enum Lookup<'a> {
    Static(&'a [u8], &'a [u8]),
    Dynamic(&'a Entry),
    /// An entry older than those we saw.
    Unseen,
}

/// The unread rest of a header block.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, Undecodable> {
        let (&b, rest) = self.0.split_first().ok_or(Undecodable)?;
        self.0 = rest;
        Ok(b)
    }

    /// An integer with an N-bit prefix (RFC 7541 section 5.1). Values past
    /// u32 are refused: no length or index in a sane block comes near.
    fn integer(&mut self, prefix: u8) -> Result<usize, Undecodable> {
        let mask = (1u64 << prefix) - 1;
        let mut value = u64::from(self.byte()?) & mask;
        if value < mask {
            return usize::try_from(value).map_err(|_| Undecodable);
        }
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            value += u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return u32::try_from(value)
                    .ok()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or(Undecodable);
            }
        }
        Err(Undecodable)
    }

    /// Steps over a string literal without decoding it.
    fn skip_string(&mut self) -> Result<(), Undecodable> {
        let len = self.integer(7)?;
        self.0 = self.0.get(len..).ok_or(Undecodable)?;
        Ok(())
    }

    /// A string literal (RFC 7541 section 5.2): appends up to `keep` decoded
    /// octets to `out` and returns the decoded length.
    fn string(&mut self, keep: usize, out: &mut Vec<u8>) -> Result<usize, Undecodable> {
        let huffman = self.0.first().is_some_and(|b| b & 0x80 != 0);
        let len = self.integer(7)?;
        if len > self.0.len() {
            return Err(Undecodable);
        }
        let (raw, rest) = self.0.split_at(len);
        self.0 = rest;
        if huffman {
            decode_huffman(raw, keep, out)
        } else {
            out.extend_from_slice(raw.get(..keep).unwrap_or(raw));
            Ok(len)
        }
    }
}

/// The path with its query and fragment removed, at most `MAX_PATH` bytes
/// (already cut to that when decoded).
fn path_without_query(value: &[u8]) -> String {
    let end = value
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(value.len());
    let path = value.get(..end.min(MAX_PATH)).unwrap_or(value);
    match std::str::from_utf8(path) {
        Ok(text) => text.to_owned(),
        // Cut inside a character, or not UTF-8 at all.
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(path.get(..e.valid_up_to()).unwrap_or_default()).into_owned()
        }
        Err(_) => String::from_utf8_lossy(path).into_owned(),
    }
}

fn parse_status(value: &[u8]) -> Option<u16> {
    if value.len() != 3 {
        return None;
    }
    parse_decimal(value).and_then(|v| u16::try_from(v).ok())
}

fn parse_decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &b| {
        let d = u32::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
        n.checked_mul(10)?.checked_add(d)
    })
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Huffman-decodes `src` (RFC 7541 section 5.2), appending up to `keep`
/// octets to `out`; returns the decoded length. The padding must be at most
/// seven bits of the EOS code's prefix (all ones), and EOS itself is an
/// error.
fn decode_huffman(src: &[u8], keep: usize, out: &mut Vec<u8>) -> Result<usize, Undecodable> {
    let mut decoded = 0usize;
    let mut state = 0u8;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = HUFFMAN.steps[usize::from(state)][usize::from(nibble)];
            if step & STEP_FAILS != 0 {
                return Err(Undecodable);
            }
            if step & STEP_EMITS != 0 {
                if decoded < keep {
                    out.push((step >> 8) as u8);
                }
                decoded += 1;
            }
            state = step as u8;
        }
    }
    if HUFFMAN.may_end[usize::from(state)] {
        Ok(decoded)
    } else {
        Err(Undecodable)
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
const HUFFMAN: Huffman = huffman();

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
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn huffman(text: &str) -> Result<Vec<u8>, Undecodable> {
        let mut out = Vec::new();
        let bytes = hex(text);
        let n = decode_huffman(&bytes, usize::MAX, &mut out)?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    /// Encodes with the table, for round trips.
    fn encode(text: &[u8]) -> Vec<u8> {
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
        let mut out = Vec::new();
        assert_eq!(decode_huffman(&encode(&all), usize::MAX, &mut out), Ok(256));
        assert_eq!(out, all);
        for b in 0..=255u8 {
            let mut out = Vec::new();
            assert_eq!(decode_huffman(&encode(&[b, b, b]), 2, &mut out), Ok(3));
            assert_eq!(out, [b, b]);
        }
    }

    #[test]
    fn huffman_refuses_bad_padding_and_eos() {
        // '0' is 00000 (5 bits): padded with zeros instead of ones.
        assert_eq!(huffman("00"), Err(Undecodable));
        // A whole byte of ones is more than seven bits of padding.
        assert_eq!(huffman("07ff"), Err(Undecodable));
        // EOS: thirty ones.
        assert_eq!(huffman("ffff fffc"), Err(Undecodable));
        assert_eq!(huffman("ffff ffff"), Err(Undecodable));
    }

    #[test]
    fn integers() {
        // RFC 7541 C.1: 10 and 1337 with 5-bit prefixes, 42 on 8 bits.
        assert_eq!(Input(&[0b0000_1010]).integer(5), Ok(10));
        assert_eq!(
            Input(&[0b0001_1111, 0b1001_1010, 0b0000_1010]).integer(5),
            Ok(1337)
        );
        assert_eq!(Input(&[42]).integer(8), Ok(42));
        assert_eq!(Input(&[0x1f, 0x80]).integer(5), Err(Undecodable));
        assert_eq!(
            Input(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f]).integer(5),
            Err(Undecodable)
        );
        assert_eq!(
            Input(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).integer(5),
            Err(Undecodable)
        );
        assert_eq!(
            Input(&[0x1f, 0xe0, 0xff, 0xff, 0xff, 0x0f]).integer(5),
            Ok(0xffff_ffff)
        );
    }

    fn request(method: &str, path: &str) -> Headers {
        Headers {
            method: Some(method.into()),
            path: Some(path.into()),
            ..Headers::default()
        }
    }

    /// RFC 7541 C.3 and C.4: three requests sharing a table, plain and
    /// Huffman-coded; the table's size after each is as the RFC says.
    #[test]
    fn rfc_request_sequences() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::new();
            assert_eq!(d.decode(&hex(blocks[0])), Ok(request("GET", "/")));
            assert_eq!(d.size, 57);
            assert_eq!(d.decode(&hex(blocks[1])), Ok(request("GET", "/")));
            assert_eq!(d.size, 110);
            assert_eq!(d.decode(&hex(blocks[2])), Ok(request("GET", "/index.html")));
            assert_eq!(d.size, 164);
            assert_eq!(d.entries.len(), 3);
            assert!(!d.is_degraded());
        }
    }

    /// RFC 7541 C.5: responses with a 256-byte table, evicting.
    #[test]
    fn rfc_response_sequence_with_eviction() {
        let mut d = Decoder::new();
        d.resize(256);
        let status = |s| Headers {
            status: Some(s),
            ..Headers::default()
        };
        let first = "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
                     2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
                     6c65 2e63 6f6d";
        assert_eq!(d.decode(&hex(first)), Ok(status(302)));
        assert_eq!((d.size, d.entries.len()), (222, 4));
        assert_eq!(d.decode(&hex("4803 3330 37c1 c0bf")), Ok(status(307)));
        assert_eq!((d.size, d.entries.len()), (222, 4));
        let third = "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
                     54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
                     5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
                     3d31";
        assert_eq!(d.decode(&hex(third)), Ok(status(200)));
        assert_eq!((d.size, d.entries.len()), (215, 3));
    }

    fn literal(prefix: u8, name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![prefix, name.len() as u8];
        out.extend_from_slice(name);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn keeps_only_reported_fields_and_reduces_them() {
        let mut d = Decoder::new();
        let mut block = vec![0x83]; // :method POST
        block.extend(literal(0x40, b":path", b"/pkg.Svc/Call?token=secret#frag"));
        block.extend(literal(0x40, b"content-type", b"Application/GRPC+proto"));
        block.extend(literal(0x40, b"authorization", b"Bearer secret"));
        let h = d.decode(&block).unwrap();
        assert_eq!(h.path.as_deref(), Some("/pkg.Svc/Call"));
        assert_eq!(h.grpc, Some(true));
        assert_eq!(h.method.as_deref(), Some("POST"));
        let stored = format!("{:?}", d.entries);
        assert!(
            !stored.contains("secret") && !stored.contains("Bearer"),
            "{stored}"
        );
        // The indexed entries decode again by reference, sizes exact.
        assert_eq!(d.size, 5 + 31 + 32 + 12 + 22 + 32 + 13 + 13 + 32);
        let h = d.decode(&[0x83, 0xc0, 0xbe, 0xbf]).unwrap();
        assert_eq!(h.path.as_deref(), Some("/pkg.Svc/Call"));
        assert_eq!(h.grpc, Some(true));
        // Trailers.
        let h = d.decode(&literal(0x00, b"grpc-status", b"5")).unwrap();
        assert_eq!(h.grpc_status, Some(5));
        let h = d.decode(&literal(0x10, b"grpc-status", b"x5")).unwrap();
        assert_eq!((h.grpc_status, h.unresolved), (None, true));
    }

    #[test]
    fn out_of_range_index_forgets_the_table() {
        let mut d = Decoder::new();
        assert_eq!(d.decode(&[0xbe]), Err(Undecodable));
        assert!(d.is_degraded());
        // Degraded: the same reference is merely unresolved now.
        let h = d.decode(&[0x82, 0xbe]).unwrap();
        assert_eq!((h.method.as_deref(), h.unresolved), (Some("GET"), true));
        assert_eq!(Decoder::new().decode(&[0x80]), Err(Undecodable));
        assert_eq!(
            Decoder::unknown().decode(&[0xff, 0xff, 0x7f]),
            Err(Undecodable)
        );
    }

    #[test]
    fn degraded_table_resolves_what_it_saw_inserted() {
        let mut d = Decoder::unknown();
        let block = literal(0x40, b":path", b"/new");
        assert_eq!(d.decode(&block).unwrap().path.as_deref(), Some("/new"));
        // 62 is the new entry, 63 is older and unseen.
        let h = d.decode(&[0xbe]).unwrap();
        assert_eq!((h.path.as_deref(), h.unresolved), (Some("/new"), false));
        let h = d.decode(&[0xbf]).unwrap();
        assert_eq!((h.path, h.unresolved), (None, true));
        // A name taken from an unseen entry: the field is unknown, and the
        // new entry (whose name we do not know) is inserted all the same.
        let mut block = vec![0x40 | 0x3f, 0x01]; // name index 63 + 1 = 64 (unseen)
        block.extend([3, b'a', b'b', b'c']);
        let h = d.decode(&block).unwrap();
        assert!(h.unresolved);
        assert_eq!(d.entries.len(), 2);
        let h = d.decode(&[0xbf]).unwrap();
        assert_eq!(h.path.as_deref(), Some("/new"));
        // A size update to zero empties the table for certain.
        assert_eq!(d.decode(&[0x20]), Ok(Headers::default()));
        assert!(!d.is_degraded());
        assert_eq!(d.decode(&[0xbe]), Err(Undecodable));
    }

    #[test]
    fn a_full_known_table_leaves_no_unseen_tail() {
        let mut d = Decoder::unknown();
        assert!(d.decode(&[0x3f, 0xe1, 0x1f]).is_ok()); // size update to 4096
        assert!(d.is_degraded());
        // Value length 127 + 3913 = 4040: an entry of 4073 leaves no room
        // for another of 32.
        let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xc9, 0x1e];
        block.extend(vec![b'x'; 4040]);
        d.decode(&block).unwrap();
        assert!(!d.is_degraded());
        // One of 4065 would have.
        let mut d = Decoder::unknown();
        d.decode(&[0x3f, 0xe1, 0x1f]).unwrap();
        let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e];
        block.extend(vec![b'x'; 4000]);
        d.decode(&block).unwrap();
        assert!(d.is_degraded());
    }

    #[test]
    fn table_size_is_capped() {
        let mut d = Decoder::new();
        // Announce 1 MiB: we follow up to our cap, and the encoder's older
        // entries past it become unknown rather than stored.
        let mut update = vec![0x3f];
        let mut v = (1usize << 20) - 31;
        while v >= 0x80 {
            update.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        update.push(v as u8);
        d.decode(&update).unwrap();
        let value = vec![b'v'; 1000];
        for _ in 0..200 {
            let mut block = vec![0x40, 0x01, b'n', 0x7f, 0xe9, 0x06]; // 127 + 873
            block.extend(&value);
            d.decode(&block).unwrap();
        }
        assert!(d.size <= MAX_TABLE_SIZE);
        assert!(d.is_degraded());
    }

    #[test]
    fn an_entry_too_big_to_follow_forgets_the_table() {
        let mut d = Decoder::unknown();
        d.decode(&literal(0x40, b":path", b"/kept")).unwrap();
        let mut block = vec![0x40, 0x01, b'x', 0x7f];
        let mut v = MAX_TABLE_SIZE - 127;
        while v >= 0x80 {
            block.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        block.push(v as u8);
        block.extend(vec![b'v'; MAX_TABLE_SIZE]);
        d.decode(&block).unwrap();
        // 62 may now be that entry: unknown, not "/kept".
        let h = d.decode(&[0xbe]).unwrap();
        assert_eq!((h.path, h.unresolved), (None, true));
    }

    #[test]
    fn paths_are_cut() {
        assert_eq!(path_without_query(b"/a?b"), "/a");
        assert_eq!(path_without_query(b"/a#b?c"), "/a");
        assert_eq!(path_without_query(b"*"), "*");
        let mut long = vec![b'/'; MAX_PATH - 1];
        long.extend("é".as_bytes());
        assert_eq!(path_without_query(&long).len(), MAX_PATH - 1);
        assert_eq!(path_without_query(b"/\xff"), "/\u{fffd}");
    }

    #[test]
    fn random_blocks_never_panic() {
        let mut rng = crate::testutil::XorShift(0x9E37_79B9_7F4A_7C15);
        for round in 0..20_000 {
            let mut d = if round % 2 == 0 {
                Decoder::new()
            } else {
                Decoder::unknown()
            };
            for _ in 0..4 {
                let len = rng.below_usize(64);
                let block: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let _ = d.decode(&block);
                assert!(d.size <= MAX_TABLE_SIZE);
            }
        }
    }
}
