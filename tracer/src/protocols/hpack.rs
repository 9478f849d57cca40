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
//! the headers above, so no other header value is kept in it. The memos
//! (`hpack/blocks.rs`, `huffman_memo.rs`) hold recent raw blocks and
//! strings for the life of the connection, in memory only: their `Debug`
//! shows lengths, never bytes, and a block with a never-indexed literal
//! (how encoders mark credentials) is not kept. It can be
//! partly unknown: a connection picked up mid-stream, or one that lost a
//! header block, has entries we never saw. Those are modelled as an
//! unknown tail behind the entries inserted since: references into the
//! tail decode as "unresolved", never as a wrong value (see [`Decoder`]).

use std::{borrow::Cow, collections::VecDeque};

use super::{huffman::Invalid, huffman_memo};

mod blocks;

use blocks::{Blocks, Seen};

/// Largest dynamic table followed, in RFC 7541 size units (name + value +
/// 32 per entry). Peers rarely go beyond the default 4096; a peer allowing
/// more than this costs us resolution of its oldest entries, not memory.
const MAX_TABLE_SIZE: usize = 64 * 1024;

/// The table size a connection starts with (RFC 9113 SETTINGS default).
const DEFAULT_TABLE_SIZE: u32 = 4096;

/// Per-entry overhead in RFC 7541 size units (section 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Longest method kept: every registered method is far shorter.
const MAX_METHOD: usize = 32;

/// Longest path kept (before the query is cut): HTTP/1's.
const MAX_PATH: usize = super::http1::MAX_PATH;

/// A name is decoded this far to recognise it; every name we read is
/// shorter.
const MAX_NAME: usize = 16;

/// `content-type` values starting with this (any case) are gRPC.
const GRPC_CONTENT_TYPE: &[u8] = b"application/grpc";

/// What one header block said about the fields the tracer reports. Each is
/// the block's first occurrence; None when absent or unresolved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Headers {
    /// Borrowed from the static table (`GET`, `POST`) when it came from
    /// there: most requests' methods are never copied, and a gRPC call's
    /// is dropped.
    pub method: Option<Cow<'static, str>>,
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
    /// A const fn, so that the static table's names are recognised once, at
    /// compile time (`STATIC_NAMES`).
    const fn of(name: &[u8]) -> Self {
        const fn is(name: &[u8], known: &[u8]) -> bool {
            if name.len() != known.len() {
                return false;
            }
            let mut i = 0;
            while i < name.len() {
                if name[i] != known[i] {
                    return false;
                }
                i += 1;
            }
            true
        }
        if is(name, b":method") {
            Self::Method
        } else if is(name, b":path") {
            Self::Path
        } else if is(name, b":status") {
            Self::Status
        } else if is(name, b"content-type") {
            Self::ContentType
        } else if is(name, b"grpc-status") {
            Self::GrpcStatus
        } else {
            Self::Other
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
                grpc: is_grpc(value),
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
    /// Records the field `name` with the (possibly cut) value `value`, as
    /// `take` would record `Field::new(name, value)`, without building the
    /// field (a method or path would be allocated twice).
    fn take_value(&mut self, name: Name, value: &[u8]) {
        match name {
            Name::Method => {
                if self.method.is_none() {
                    self.method = Some(Cow::Owned(String::from_utf8_lossy(value).into_owned()));
                }
            }
            Name::Path => {
                if self.path.is_none() {
                    self.path = Some(path_without_query(value));
                }
            }
            Name::Status => match parse_status(value) {
                Some(s) => {
                    self.status.get_or_insert(s);
                }
                None => self.unresolved = true,
            },
            Name::ContentType => {
                self.grpc.get_or_insert(is_grpc(value));
            }
            Name::GrpcStatus => match parse_decimal(value) {
                Some(s) => {
                    self.grpc_status.get_or_insert(s);
                }
                None => self.unresolved = true,
            },
            Name::Other => {}
        }
    }

    /// Records the static table's `entry`, as `take_value` would its name
    /// and value; a method is borrowed rather than copied.
    fn take_static(&mut self, entry: &'static StaticEntry) {
        match entry.name {
            Name::Method => {
                self.method.get_or_insert(Cow::Borrowed(entry.value));
            }
            name => self.take_value(name, entry.value.as_bytes()),
        }
    }

    /// Records the fields of `other`, another block's, as `take` recorded
    /// them there: unless an earlier one of their name was recorded here.
    fn merge(&mut self, other: &Headers) {
        if self.method.is_none() {
            self.method.clone_from(&other.method);
        }
        if self.path.is_none() {
            self.path.clone_from(&other.path);
        }
        self.status = self.status.or(other.status);
        self.grpc = self.grpc.or(other.grpc);
        self.grpc_status = self.grpc_status.or(other.grpc_status);
        self.unresolved |= other.unresolved;
    }

    /// Records `field` unless an earlier one of its name was recorded.
    fn take(&mut self, field: &Field) {
        match field {
            Field::Method(m) => {
                self.method.get_or_insert_with(|| Cow::Owned(m.to_string()));
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
    /// The maximum size the encoder last announced, if we saw it (a u32,
    /// as every integer decoded: the decoder stays within its budget).
    announced: Option<u32>,
    /// Entries older than `entries`, unseen, may still be in the table.
    unknown_tail: bool,
    /// The table changed since the block memo last looked: what it kept of
    /// blocks that referred to the table is stale.
    changed: bool,
    /// The block being decoded referred to the dynamic table, or updated
    /// its size.
    read_table: bool,
    /// The block being decoded holds a never-indexed literal (RFC 7541
    /// 6.2.3, how encoders mark credentials): it is not kept by the memo.
    sensitive: bool,
    /// The block being decoded is recorded for the memo: its insertions
    /// are kept in `Memo::inserted`.
    recording: bool,
    /// Boxed on the first block, so that a decoder costs nothing until
    /// then.
    memo: Option<Box<Memo>>,
}

/// What a decoder remembers of the blocks it decoded lately, to do less
/// work on those that repeat.
#[derive(Debug, Default)]
struct Memo {
    /// Huffman strings: most values repeat (`huffman_memo`).
    strings: huffman_memo::Memo,
    /// Whole blocks: most repeat too (`blocks`).
    blocks: Blocks,
    /// The entries inserted by the block being recorded.
    inserted: Vec<Entry>,
}

impl Decoder {
    /// A connection's first header block comes next: the table is empty.
    pub fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            announced: Some(DEFAULT_TABLE_SIZE),
            unknown_tail: false,
            changed: false,
            read_table: false,
            sensitive: false,
            recording: false,
            memo: None,
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
        self.changed = true;
        self.entries = VecDeque::new();
        self.size = 0;
        self.unknown_tail = true;
    }

    /// Whether references may reach entries we never saw.
    pub fn is_degraded(&self) -> bool {
        self.unknown_tail
    }

    /// Decodes one complete header block into `headers`, which should be
    /// empty. On error the table is forgotten (and `headers` holds
    /// whatever came before the error).
    ///
    /// A block that came lately is replayed from the memo instead: the same
    /// fields and the same insertions, so the same outcome.
    pub fn decode(&mut self, block: &[u8], headers: &mut Headers) -> Result<(), Undecodable> {
        let memo = self.memo.get_or_insert_default();
        if std::mem::take(&mut self.changed) {
            memo.blocks.forget_table_readers();
        }
        match memo.blocks.seen(block) {
            Seen::Decoded(slot) => {
                self.replay(slot, headers);
                Ok(())
            }
            Seen::Again(slot) if *headers == Headers::default() => {
                self.decode_recording(slot, block, headers)
            }
            Seen::Again(_) | Seen::New => {
                let result = self.decode_fields(block, headers);
                if let (Ok(()), false, Some(memo)) = (result, self.sensitive, self.memo.as_mut()) {
                    memo.blocks.note(block);
                }
                result
            }
        }
    }

    /// Replays what decoding the block in the memo's `slot` did: its
    /// insertions, then its fields.
    fn replay(&mut self, slot: usize, headers: &mut Headers) {
        // Out of `self` while entries are added, and put back.
        let Some(memo) = self.memo.take() else {
            return;
        };
        if let Some(decoded) = memo.blocks.decoded(slot) {
            for entry in &decoded.inserts {
                self.add(entry.clone());
            }
            headers.merge(&decoded.headers);
        }
        self.memo = Some(memo);
    }

    /// Decodes a block that came before and records what that does in the
    /// memo's `slot`.
    fn decode_recording(
        &mut self,
        slot: usize,
        block: &[u8],
        headers: &mut Headers,
    ) -> Result<(), Undecodable> {
        self.recording = true;
        let result = self.decode_fields(block, headers);
        self.recording = false;
        // A block that changed a table it read will not find it the same
        // again: not kept.
        let keep = result.is_ok() && !(self.read_table && self.changed);
        if let (true, Some(memo)) = (keep, self.memo.as_mut()) {
            let inserts = std::mem::take(&mut memo.inserted);
            memo.blocks
                .record(slot, self.read_table, headers.clone(), inserts);
        } else if let Some(memo) = self.memo.as_mut() {
            memo.inserted.clear();
        }
        result
    }

    /// Decodes the block's fields one by one.
    fn decode_fields(&mut self, block: &[u8], headers: &mut Headers) -> Result<(), Undecodable> {
        self.read_table = false;
        self.sensitive = false;
        let mut input = Input(block);
        while let Some(&first) = input.0.first() {
            let step = if first & 0x80 != 0 {
                self.indexed(&mut input, headers)
            } else if first & 0xc0 == 0x40 {
                self.literal(&mut input, 6, true, headers)
            } else if first & 0xe0 == 0x20 {
                self.read_table = true;
                input.integer(5).map(|size| self.resize(size))
            } else {
                // Without indexing (0000) or never indexed (0001).
                self.sensitive |= first & 0xf0 == 0x10;
                self.literal(&mut input, 4, false, headers)
            };
            if step.is_err() {
                self.forget();
                return Err(Undecodable);
            }
        }
        Ok(())
    }

    fn indexed(&mut self, input: &mut Input<'_>, headers: &mut Headers) -> Result<(), Undecodable> {
        let index = input.integer(7)?;
        self.read_table |= index > STATIC_TABLE.len();
        match self.lookup(index)? {
            Lookup::Static(entry) => headers.take_static(entry),
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
        headers: &mut Headers,
    ) -> Result<(), Undecodable> {
        let index = input.integer(prefix)?;
        // The name: its kind (None when unknown) and length.
        let (name, name_len) = if index == 0 {
            let mut kept = [0; MAX_NAME];
            let len = input.string(&mut kept, &mut self.memo)?;
            (Some(Name::of(kept.get(..len).unwrap_or(&kept))), len)
        } else {
            self.read_table |= index > STATIC_TABLE.len();
            match self.lookup(index)? {
                Lookup::Static(entry) => (Some(entry.name), entry.name_len),
                Lookup::Dynamic(entry) => (entry.field.name(), entry.name_len),
                Lookup::Unseen => (None, 0),
            }
        };
        let keep = name.map_or(0, Name::keep);
        if !insert && keep == 0 && name.is_some() {
            // Nothing to keep and no table entry to size: the value's
            // decoded length is never needed, so it is not decoded (most
            // response headers: date, server, content-length).
            input.skip_string()?;
            return Ok(());
        }
        // Only the first `keep` decoded octets are written; a value kept
        // for its length alone is counted (`date` and the like, which
        // servers insert on every response).
        // A path's buffer is zeroed only for a path.
        let mut short = [0; MAX_METHOD];
        let mut long;
        let out: &mut [u8] = if keep <= short.len() {
            short.get_mut(..keep).unwrap_or_default()
        } else {
            long = [0; MAX_PATH];
            long.get_mut(..keep).unwrap_or_default()
        };
        let value_len = input.string(out, &mut self.memo)?;
        let out: &[u8] = out;
        let value = out.get(..value_len).unwrap_or(out);
        match name {
            Some(name) => headers.take_value(name, value),
            None => headers.take(&Field::Unknown),
        }
        if insert {
            self.insert(name, name_len, value, value_len);
        }
        Ok(())
    }

    fn lookup(&self, index: usize) -> Result<Lookup<'_>, Undecodable> {
        let Some(dynamic) = index.checked_sub(STATIC_TABLE.len() + 1) else {
            let entry = STATIC_ENTRIES
                .get(index.wrapping_sub(1))
                .ok_or(Undecodable)?;
            return Ok(Lookup::Static(entry));
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
        self.announced()
            .map_or(MAX_TABLE_SIZE, |a| a.min(MAX_TABLE_SIZE))
    }

    fn announced(&self) -> Option<usize> {
        self.announced
            .map(|a| usize::try_from(a).unwrap_or(usize::MAX))
    }

    /// A dynamic table size update (RFC 7541 section 6.3). One above the
    /// peer's SETTINGS_HEADER_TABLE_SIZE is tolerated: we observe, and the
    /// SETTINGS may not have been seen.
    fn resize(&mut self, size: usize) {
        self.announced = Some(u32::try_from(size).unwrap_or(u32::MAX));
        self.evict(self.limit());
    }

    /// Inserts the field `name` (None: unknown) whose name and value decode
    /// to these lengths, `value` being its kept part. The entry is built
    /// here rather than passed in: a field built by the caller and copied
    /// in stalled on the copy.
    fn insert(&mut self, name: Option<Name>, name_len: usize, value: &[u8], value_len: usize) {
        let entry = Entry {
            size: name_len
                .saturating_add(value_len)
                .saturating_add(ENTRY_OVERHEAD),
            name_len,
            field: name.map_or(Field::Unknown, |name| Field::new(name, value)),
        };
        if let (true, Some(memo)) = (self.recording, self.memo.as_mut()) {
            memo.inserted.push(entry.clone());
        }
        self.add(entry);
    }

    /// Adds `entry` to the table, evicting as the encoder does.
    #[inline]
    fn add(&mut self, entry: Entry) {
        self.changed = true;
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
        self.announced().is_none_or(|a| a > MAX_TABLE_SIZE)
    }

    /// Evicts the oldest entries until the table fits in `target`.
    fn evict(&mut self, target: usize) {
        self.changed = true;
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
        if let Some(announced) = self.announced().filter(|&a| a <= MAX_TABLE_SIZE) {
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
    Static(&'static StaticEntry),
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

    /// A string literal (RFC 7541 section 5.2): writes its first decoded
    /// octets into `out` (as many as it holds) and returns the decoded
    /// length. Huffman-coded ones go through the memo's.
    fn string(
        &mut self,
        out: &mut [u8],
        memo: &mut Option<Box<Memo>>,
    ) -> Result<usize, Undecodable> {
        let huffman = self.0.first().is_some_and(|b| b & 0x80 != 0);
        let len = self.integer(7)?;
        if len > self.0.len() {
            return Err(Undecodable);
        }
        let (raw, rest) = self.0.split_at(len);
        self.0 = rest;
        if huffman {
            memo.get_or_insert_default()
                .strings
                .decode(raw, out)
                .map_err(|Invalid| Undecodable)
        } else {
            let n = len.min(out.len());
            if let (Some(dst), Some(src)) = (out.get_mut(..n), raw.get(..n)) {
                dst.copy_from_slice(src);
            }
            Ok(len)
        }
    }
}

/// Whether a `content-type` value names gRPC.
fn is_grpc(value: &[u8]) -> bool {
    value
        .get(..GRPC_CONTENT_TYPE.len())
        .is_some_and(|v| v.eq_ignore_ascii_case(GRPC_CONTENT_TYPE))
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

/// A static table entry as the decoder uses it.
struct StaticEntry {
    name: Name,
    name_len: usize,
    value: &'static str,
}

/// `STATIC_TABLE` with its names recognised, at compile time.
static STATIC_ENTRIES: [StaticEntry; STATIC_TABLE.len()] = {
    let mut entries = [const {
        StaticEntry {
            name: Name::Other,
            name_len: 0,
            value: "",
        }
    }; STATIC_TABLE.len()];
    let mut i = 0;
    while i < STATIC_TABLE.len() {
        let (name, value) = STATIC_TABLE[i];
        entries[i] = StaticEntry {
            name: Name::of(name.as_bytes()),
            name_len: name.len(),
            value,
        };
        i += 1;
    }
    entries
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::hex;

    impl Decoder {
        /// `decode` into a fresh `Headers`.
        fn decoded(&mut self, block: &[u8]) -> Result<Headers, Undecodable> {
            let mut headers = Headers::default();
            self.decode(block, &mut headers).map(|()| headers)
        }
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
            method: Some(method.to_owned().into()),
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
            assert_eq!(d.decoded(&hex(blocks[0])), Ok(request("GET", "/")));
            assert_eq!(d.size, 57);
            assert_eq!(d.decoded(&hex(blocks[1])), Ok(request("GET", "/")));
            assert_eq!(d.size, 110);
            assert_eq!(
                d.decoded(&hex(blocks[2])),
                Ok(request("GET", "/index.html"))
            );
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
        assert_eq!(d.decoded(&hex(first)), Ok(status(302)));
        assert_eq!((d.size, d.entries.len()), (222, 4));
        assert_eq!(d.decoded(&hex("4803 3330 37c1 c0bf")), Ok(status(307)));
        assert_eq!((d.size, d.entries.len()), (222, 4));
        let third = "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
                     54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
                     5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
                     3d31";
        assert_eq!(d.decoded(&hex(third)), Ok(status(200)));
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
        let h = d.decoded(&block).unwrap();
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
        let h = d.decoded(&[0x83, 0xc0, 0xbe, 0xbf]).unwrap();
        assert_eq!(h.path.as_deref(), Some("/pkg.Svc/Call"));
        assert_eq!(h.grpc, Some(true));
        // Trailers.
        let h = d.decoded(&literal(0x00, b"grpc-status", b"5")).unwrap();
        assert_eq!(h.grpc_status, Some(5));
        let h = d.decoded(&literal(0x10, b"grpc-status", b"x5")).unwrap();
        assert_eq!((h.grpc_status, h.unresolved), (None, true));
    }

    #[test]
    fn out_of_range_index_forgets_the_table() {
        let mut d = Decoder::new();
        assert_eq!(d.decoded(&[0xbe]), Err(Undecodable));
        assert!(d.is_degraded());
        // Degraded: the same reference is merely unresolved now.
        let h = d.decoded(&[0x82, 0xbe]).unwrap();
        assert_eq!((h.method.as_deref(), h.unresolved), (Some("GET"), true));
        assert_eq!(Decoder::new().decoded(&[0x80]), Err(Undecodable));
        assert_eq!(
            Decoder::unknown().decoded(&[0xff, 0xff, 0x7f]),
            Err(Undecodable)
        );
    }

    #[test]
    fn degraded_table_resolves_what_it_saw_inserted() {
        let mut d = Decoder::unknown();
        let block = literal(0x40, b":path", b"/new");
        assert_eq!(d.decoded(&block).unwrap().path.as_deref(), Some("/new"));
        // 62 is the new entry, 63 is older and unseen.
        let h = d.decoded(&[0xbe]).unwrap();
        assert_eq!((h.path.as_deref(), h.unresolved), (Some("/new"), false));
        let h = d.decoded(&[0xbf]).unwrap();
        assert_eq!((h.path, h.unresolved), (None, true));
        // A name taken from an unseen entry: the field is unknown, and the
        // new entry (whose name we do not know) is inserted all the same.
        let mut block = vec![0x40 | 0x3f, 0x01]; // name index 63 + 1 = 64 (unseen)
        block.extend([3, b'a', b'b', b'c']);
        let h = d.decoded(&block).unwrap();
        assert!(h.unresolved);
        assert_eq!(d.entries.len(), 2);
        let h = d.decoded(&[0xbf]).unwrap();
        assert_eq!(h.path.as_deref(), Some("/new"));
        // A size update to zero empties the table for certain.
        assert_eq!(d.decoded(&[0x20]), Ok(Headers::default()));
        assert!(!d.is_degraded());
        assert_eq!(d.decoded(&[0xbe]), Err(Undecodable));
    }

    #[test]
    fn a_full_known_table_leaves_no_unseen_tail() {
        let mut d = Decoder::unknown();
        assert!(d.decoded(&[0x3f, 0xe1, 0x1f]).is_ok()); // size update to 4096
        assert!(d.is_degraded());
        // Value length 127 + 3913 = 4040: an entry of 4073 leaves no room
        // for another of 32.
        let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xc9, 0x1e];
        block.extend(vec![b'x'; 4040]);
        d.decoded(&block).unwrap();
        assert!(!d.is_degraded());
        // One of 4065 would have.
        let mut d = Decoder::unknown();
        d.decoded(&[0x3f, 0xe1, 0x1f]).unwrap();
        let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e];
        block.extend(vec![b'x'; 4000]);
        d.decoded(&block).unwrap();
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
        d.decoded(&update).unwrap();
        let value = vec![b'v'; 1000];
        for _ in 0..200 {
            let mut block = vec![0x40, 0x01, b'n', 0x7f, 0xe9, 0x06]; // 127 + 873
            block.extend(&value);
            d.decoded(&block).unwrap();
        }
        assert!(d.size <= MAX_TABLE_SIZE);
        assert!(d.is_degraded());
    }

    #[test]
    fn an_entry_too_big_to_follow_forgets_the_table() {
        let mut d = Decoder::unknown();
        d.decoded(&literal(0x40, b":path", b"/kept")).unwrap();
        let mut block = vec![0x40, 0x01, b'x', 0x7f];
        let mut v = MAX_TABLE_SIZE - 127;
        while v >= 0x80 {
            block.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        block.push(v as u8);
        block.extend(vec![b'v'; MAX_TABLE_SIZE]);
        d.decoded(&block).unwrap();
        // 62 may now be that entry: unknown, not "/kept".
        let h = d.decoded(&[0xbe]).unwrap();
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

    /// What decoding left that later blocks or callers can see.
    fn state(d: &Decoder) -> String {
        format!(
            "{:?} {} {:?} {}",
            d.entries, d.size, d.announced, d.unknown_tail
        )
    }

    #[test]
    fn a_repeated_block_is_replayed() {
        let mut d = Decoder::new();
        // nginx's response: :status 200, then server, date, content-type
        // and content-length inserted (Huffman-coded where shorter).
        let block = hex(
            "8876 89aa 6355 e580 ae21 2e1f 6196 df69 7e94 0054 be52 2820 09c5 00fd c699 b8c8 \
             54c5 a37f 5f90 1d75 d062 0d26 3d4c 1c89 2a56 426c 28e9 5c01 33",
        );
        let mut plain = Decoder::new();
        for round in 0..4 {
            let h = d.decoded(&block).unwrap();
            plain.memo = None;
            assert_eq!(Ok(h.clone()), plain.decoded(&block));
            assert_eq!(h.status, Some(200));
            assert_eq!(state(&d), state(&plain));
            let seen = d.memo.as_ref().unwrap().blocks.seen(&block);
            // Recorded the second time, replayed from the third.
            assert_eq!(matches!(seen, Seen::Decoded(_)), round >= 1, "{round}");
        }
    }

    /// Blocks from a small pool in random order, so that they repeat: a
    /// decoder with its memos and one without agree on every result and on
    /// the table after each block.
    #[test]
    fn memos_never_change_what_decoding_does() {
        let mut pool = vec![
            hex("8276 89aa 6355 e580 ae21 2e1f 5c01 33"), // inserts, static names
            hex("8886 6196 df69 7e94 0054 be52 2820 09c5 00fd c699 b8c8 54c5 a37f"),
            vec![0xbe, 0xbf],                               // dynamic references
            vec![0x83, 0xc0],                               // and one further back
            vec![0x82, 0x04, 0x03, b'/', b'h', b'2', 0x86], // a path not indexed
            vec![0x3f, 0xe1, 0x1f],                         // a size update to 4096
            vec![0x20],                                     // and to 0
            vec![0x3f, 0x01],                               // and to 32
            vec![0xff, 0xff, 0x7f],                         // undecodable
            vec![0x7e, 0x01, b'x'],                         // a name from the table, inserted
        ];
        pool.push(literal(0x40, b":path", b"/pkg.Svc/Call"));
        pool.push(literal(0x40, b"content-type", b"application/grpc"));
        pool.push(literal(0x40, b":method", b"PUT"));
        let mut rng = crate::testutil::XorShift(0x0DDB_A11C_0FFE_E123);
        for start in [Decoder::new, Decoder::unknown] {
            let (mut d, mut plain) = (start(), start());
            for _ in 0..20_000 {
                let block = &pool[rng.below_usize(pool.len())];
                plain.memo = None;
                assert_eq!(d.decoded(block), plain.decoded(block), "{block:02x?}");
                assert_eq!(state(&d), state(&plain), "{block:02x?}");
            }
        }
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
                let _ = d.decoded(&block);
                assert!(d.size <= MAX_TABLE_SIZE);
            }
        }
    }
}
