//! HTTP/2 (RFC 9113) and gRPC for one connection, both directions.
//!
//! Input: the connection's two byte streams as ordered `Piece`s, each tagged
//! with the direction and the timestamp of the syscall that carried it.
//! Output: one `Exchange` per request stream, pushed onto the caller's
//! vector when the response stream ends (or is reset, times out, or the
//! connection closes first): `Call::Http` with the method, the path without
//! its query and the final `:status`, or `Call::Grpc` with the service,
//! method and `grpc-status` for requests whose `content-type` is gRPC; and
//! loss counts in `ParserCounters`.
//!
//! Each direction is a `Framer`: the client preface, then 9-byte frame
//! headers and payloads. DATA payloads are skipped by counting, never
//! copied, so gaps inside them are harmless. Header blocks (HEADERS or
//! PUSH_PROMISE and their CONTINUATIONs) are decoded by that direction's
//! HPACK `Decoder`, straight from the piece when whole in it and through a
//! capped buffer otherwise. A gap over a frame header loses the framing:
//! the direction counts one resync and seeks the next frame boundary, a
//! plausible frame header followed by another, judged over a bounded window
//! of bytes that may span pieces; from there the held pieces are parsed
//! with their own timestamps. A gap inside a frame loses only its content
//! (a header block, counted as one resync). Either way the HPACK table may
//! have missed insertions, so it becomes partly unknown (`hpack` explains
//! how decoding goes on), and exchanges with fields that could not be
//! resolved are counted as `partial`.
//!
//! The `Framer`s turn bytes into `Event`s; the `Book` keeps the streams in
//! flight and turns events into exchanges. Only the method, the path, the
//! statuses and whether a call is gRPC are kept per stream; no other header
//! value leaves the HPACK decoder.

use std::{borrow::Cow, collections::VecDeque};

use super::http1::request_path;
use super::{
    detect::Detection,
    dispatch::Spec,
    hpack::{Decoder, Headers},
    len64, Call, ConnParser, Exchange, Failure, GrpcCall, HttpCall, ParserCounters, Piece, Side,
    Start, Verdict,
};

/// What a client sends first (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams followed per connection. Servers allow 100 to 250 concurrent
/// streams; four times the largest leaves room for streams waiting on
/// answers that were lost, which overflow then evicts (counted).
const MAX_STREAMS: usize = 1024;

/// Largest header block buffered when it spans pieces: the default
/// SETTINGS_MAX_HEADER_LIST_SIZE of common servers is 16 to 64 KiB. A
/// longer block is counted off undecoded.
const MAX_BLOCK: usize = 64 * 1024;

/// SETTINGS_MAX_FRAME_SIZE until a peer says otherwise.
const DEFAULT_MAX_FRAME: u32 = 16_384;

/// The largest frame the length field allows peers to agree on.
const LARGEST_FRAME: u32 = (1 << 24) - 1;

/// Pieces a connection found mid-stream may go without a plausible frame
/// before it is given up as not HTTP/2. Nearly every HTTP/2 write holds a
/// frame header, so this is many frames' worth; other protocols guessed
/// after this one are not kept waiting long.
const MAX_SEEK_PIECES: u16 = 64;

/// Bytes held while seeking a frame boundary: a frame of the default
/// maximum size and the header after it, so that a guess can be checked
/// against the next frame header.
const SEEK_WINDOW: usize = DEFAULT_MAX_FRAME as usize + 2 * FRAME_HEADER_LEN;

/// Piece starts remembered while seeking: tiny pieces would otherwise
/// hold a mark per byte. Beyond it the oldest pieces merge, and their bytes
/// are parsed under one timestamp.
const SEEK_MARKS: usize = 256;

/// Frames parsed in a row after a seek that confirm the guess.
const CONFIRMING_FRAMES: u8 = 2;

const FRAME_HEADER_LEN: usize = 9;

// Frame types (RFC 9113 section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
// Extension frames seen in practice (RFC 7838, 8336, 9218).
const ALTSVC: u8 = 0xa;
const ORIGIN: u8 = 0xc;
const PRIORITY_UPDATE: u8 = 0x10;

// Frame flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// One HTTP/2 connection as seen by the traced process.
#[derive(Debug)]
pub struct Http2Conn {
    side: Side,
    req: Framer,
    resp: Framer,
    book: Book,
    /// Pieces looked at while seeking framing that was never found.
    seek_pieces: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to server.
    Req,
    /// Server to client.
    Resp,
}

/// What a `Framer` found, for the `Book`.
#[derive(Debug)]
enum Event<'a> {
    /// Whether the request direction began with the client preface.
    Preface(bool),
    /// Frames parse again after a seek.
    Confirmed,
    /// A header block on `stream` (not a PUSH_PROMISE's) ended at `end_ns`;
    /// `headers` is None when it was lost or could not be decoded; lent
    /// from the block, so that the fields kept are moved out, not copied.
    Headers {
        stream: u32,
        end_stream: bool,
        start_ns: u64,
        end_ns: u64,
        headers: Option<&'a mut Headers>,
    },
    /// A DATA frame with END_STREAM ended at `end_ns`.
    DataEnd {
        stream: u32,
        end_ns: u64,
    },
    Reset {
        stream: u32,
        end_ns: u64,
    },
    GoAway {
        last_stream: u32,
    },
    /// The sender's SETTINGS_MAX_FRAME_SIZE: frames it receives may be this
    /// long.
    MaxFrameSize(u32),
    /// Input was lost or malformed: one resync.
    Resync,
    /// Frames of this direction were lost: which ones is unknown.
    FramingLost,
}

/// A 9-byte frame header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FrameHead {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
    reserved: bool,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: stream & 0x7fff_ffff,
            reserved: stream & 0x8000_0000 != 0,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Whether this could be a frame header of `dir` at a guessed position
    /// (strict: a seek must not lock onto payload bytes).
    fn plausible(&self, dir: Dir, max_len: u32) -> bool {
        let client_stream = self.stream % 2 == 1;
        let flags_within = |allowed: u8| self.flags & !allowed == 0;
        let fits = !self.reserved && self.len <= max_len;
        fits && match self.kind {
            DATA => {
                self.stream != 0
                    && (dir == Dir::Resp || client_stream)
                    && flags_within(END_STREAM | PADDED)
            }
            HEADERS => {
                self.stream != 0
                    && (dir == Dir::Resp || client_stream)
                    && flags_within(END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG)
            }
            PRIORITY => self.stream != 0 && self.len == 5 && self.flags == 0,
            RST_STREAM => self.stream != 0 && self.len == 4 && self.flags == 0,
            SETTINGS => {
                self.stream == 0
                    && flags_within(ACK)
                    && self.len.is_multiple_of(6)
                    && !(self.has(ACK) && self.len > 0)
            }
            PUSH_PROMISE => {
                dir == Dir::Resp
                    && client_stream
                    && self.len >= 4
                    && flags_within(END_HEADERS | PADDED)
            }
            PING => self.stream == 0 && self.len == 8 && flags_within(ACK),
            GOAWAY => self.stream == 0 && self.len >= 8 && self.flags == 0,
            WINDOW_UPDATE => self.len == 4 && self.flags == 0,
            CONTINUATION => self.stream != 0 && flags_within(END_HEADERS),
            ALTSVC => dir == Dir::Resp && self.len >= 2 && self.flags == 0,
            ORIGIN => dir == Dir::Resp && self.stream == 0 && self.flags == 0,
            PRIORITY_UPDATE => {
                dir == Dir::Req && self.stream == 0 && self.len >= 4 && self.flags == 0
            }
            _ => false,
        }
    }
}

/// Does `bytes`, the start of what follows a guessed frame, begin like a
/// frame header, as far as it goes?
fn plausible_start(dir: Dir, bytes: &[u8], max_len: u32) -> bool {
    match bytes.first_chunk::<FRAME_HEADER_LEN>() {
        Some(head) => FrameHead::parse(head).plausible(dir, max_len),
        None => {
            let len = bytes
                .iter()
                .take(3)
                .fold(0u32, |len, &b| (len << 8) | u32::from(b));
            let len_ok = bytes.len() < 3 || len <= max_len;
            let kind_ok = bytes.get(3).is_none_or(|&k| {
                k <= CONTINUATION || matches!(k, ALTSVC | ORIGIN | PRIORITY_UPDATE)
            });
            len_ok && kind_ok
        }
    }
}

/// Bytes held while seeking a frame boundary, with where pieces began (to
/// parse them with their own timestamps once a boundary is found). A frame
/// header may straddle pieces, and whether a guess is right shows only at
/// the next frame header, so candidates are judged across pieces.
#[derive(Debug, Default)]
struct Window {
    bytes: Vec<u8>,
    /// (offset in `bytes`, timestamp) of each piece's first byte, in order.
    starts: Vec<(usize, u64)>,
}

/// What a scan of the window found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// A frame starts here.
    Found(usize),
    /// A frame may start here: more bytes will tell.
    Pending(usize),
    Nothing,
}

impl Window {
    fn push(&mut self, bytes: &[u8], ts: u64) {
        if self.starts.len() >= SEEK_MARKS {
            // The two oldest pieces merge, under the older timestamp.
            self.starts.remove(1);
        }
        self.starts.push((self.bytes.len(), ts));
        self.bytes.extend_from_slice(bytes);
    }

    /// The first position where a frame plausibly starts: a plausible
    /// header followed, where its length says, by another; or a piece made
    /// of whole plausible frames (a write of its own); or, when no more
    /// bytes will come (`at_end`), whole frames up to the end. A piece
    /// boundary alone is no evidence: pieces can be a byte long.
    fn scan(&self, dir: Dir, max_len: u32, at_end: bool) -> Scan {
        for at in 0..self.bytes.len() {
            let rest = self.bytes.get(at..).unwrap_or_default();
            let Some(head) = rest.first_chunk::<FRAME_HEADER_LEN>() else {
                if plausible_start(dir, rest, max_len) {
                    return Scan::Pending(at);
                }
                continue;
            };
            let head = FrameHead::parse(head);
            if !head.plausible(dir, max_len) {
                continue;
            }
            let next = FRAME_HEADER_LEN.saturating_add(head.len as usize);
            let whole = |end: usize| self.whole_frames(dir, at, end, max_len);
            match rest.get(next..) {
                Some(after) if after.len() >= FRAME_HEADER_LEN => {
                    let followed = plausible_start(dir, after, max_len);
                    if followed {
                        return Scan::Found(at);
                    }
                }
                Some(after) => {
                    let own_write = self.piece_end(at).is_some_and(whole);
                    if own_write || (at_end && whole(self.bytes.len())) {
                        return Scan::Found(at);
                    }
                    if plausible_start(dir, after, max_len) && !at_end {
                        return Scan::Pending(at);
                    }
                }
                None if next + FRAME_HEADER_LEN <= SEEK_WINDOW && !at_end => {
                    return Scan::Pending(at);
                }
                None => {}
            }
        }
        Scan::Nothing
    }

    /// Where the piece starting at `at` ends, if one starts there.
    fn piece_end(&self, at: usize) -> Option<usize> {
        let index = self
            .starts
            .binary_search_by_key(&at, |&(offset, _)| offset)
            .ok()?;
        Some(self.piece(index)?.0.end)
    }

    /// Whether `bytes[from..end]` is a run of whole plausible frames.
    fn whole_frames(&self, dir: Dir, from: usize, end: usize, max_len: u32) -> bool {
        let mut at = from;
        while at < end {
            let Some(head) = self
                .bytes
                .get(at..end)
                .and_then(|rest| rest.first_chunk::<FRAME_HEADER_LEN>())
            else {
                return false;
            };
            let head = FrameHead::parse(head);
            if !head.plausible(dir, max_len) {
                return false;
            }
            at = at
                .saturating_add(FRAME_HEADER_LEN)
                .saturating_add(head.len as usize);
        }
        at == end
    }

    /// Drops the bytes before `at`.
    fn keep_from(&mut self, at: usize) {
        self.bytes.drain(..at.min(self.bytes.len()));
        let first = self.starts.partition_point(|&(offset, _)| offset < at);
        let piece_starts_there = self.starts.get(first).is_some_and(|&(o, _)| o == at);
        // Otherwise the piece holding byte `at` begins there now.
        let carried = first
            .checked_sub(1)
            .and_then(|i| self.starts.get(i))
            .filter(|_| !piece_starts_there)
            .map(|&(_, ts)| (0, ts));
        let later = self.starts.get(first..).unwrap_or_default().iter();
        let moved = later.map(|&(offset, ts)| (offset - at, ts));
        self.starts = carried.into_iter().chain(moved).collect();
    }

    /// Where the `index`th piece held lies in `bytes`, and its timestamp.
    fn piece(&self, index: usize) -> Option<(std::ops::Range<usize>, u64)> {
        let &(start, ts) = self.starts.get(index)?;
        let end = self
            .starts
            .get(index + 1)
            .map_or(self.bytes.len(), |&(next, _)| next);
        Some((start..end, ts))
    }

    /// The pieces held, in order, with their timestamps.
    fn pieces(&self) -> impl Iterator<Item = (&[u8], u64)> {
        (0..self.starts.len()).filter_map(|i| {
            let (range, ts) = self.piece(i)?;
            Some((self.bytes.get(range)?, ts))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Matching the client preface; this many bytes matched.
    Preface(u8),
    /// Reading a frame header into `head`.
    Head,
    /// Reading fixed fields at a payload's start into `fields`.
    Fields,
    /// Header block fragment bytes (then `pad` bytes of padding).
    Fragment,
    /// Skipping the rest of the payload.
    Skip,
    /// Looking for a frame boundary.
    Seek,
    /// Nothing more to parse.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Headers {
        end_stream: bool,
    },
    /// Decoded only to keep the table in step: pushed responses are not
    /// requests we count.
    PushPromise,
}

/// A header block being received.
#[derive(Debug)]
struct Block {
    stream: u32,
    kind: BlockKind,
    /// Timestamp of the piece holding its HEADERS frame's first byte.
    start_ns: u64,
    /// Fragments that spanned pieces; empty, unallocated, otherwise.
    bytes: Vec<u8>,
    /// Bytes were lost or beyond `MAX_BLOCK`: it cannot be decoded.
    lost: bool,
    /// Decoded already, straight from the piece: whether that succeeded.
    decoded: Option<bool>,
    /// What decoding found, filled in place: a `Headers` returned by value
    /// and copied on was slow to read back.
    headers: Headers,
}

/// One direction's framing state.
#[derive(Debug)]
struct Framer {
    dir: Dir,
    phase: Phase,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    /// The frame being read, once its header is whole.
    frame: FrameHead,
    /// Timestamp of the piece holding the current frame's first byte.
    frame_ts: u64,
    /// Payload bytes of the current frame not yet read.
    left: u32,
    /// Padding at the end of the payload (within `left`).
    pad: u32,
    fields: [u8; 8],
    fields_len: usize,
    /// At most 9: a byte keeps the struct small.
    fields_need: u8,
    /// The header block in progress; between frames, one waiting for its
    /// CONTINUATION. Boxed: most of the time there is none.
    block: Option<Box<Block>>,
    /// The last block's box, emptied, for the next one: a connection
    /// carries a header block per request and per response, and reusing
    /// the box saves an allocation each.
    spare: Option<Box<Block>>,
    hpack: Decoder,
    /// Framing is trusted: from the start of a fresh connection, or once
    /// frames parsed in a row after a mid-stream seek. Before then losses
    /// are not counted: there was nothing to lose.
    confirmed: bool,
    /// Frames parsed since the last seek.
    frames: u8,
    /// Only while seeking a boundary.
    seeking: Option<Box<Seeking>>,
    /// Timestamp of the piece being read.
    now: u64,
}

#[derive(Debug, Default)]
struct Seeking {
    /// The bytes that may hold the next frame.
    window: Window,
    /// Bytes from a boundary just found, to be parsed before going on.
    replay: Window,
}

impl Framer {
    fn new(dir: Dir, phase: Phase, hpack: Decoder, confirmed: bool) -> Self {
        Self {
            dir,
            phase,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            frame: FrameHead::default(),
            frame_ts: 0,
            left: 0,
            pad: 0,
            fields: [0; 8],
            fields_len: 0,
            fields_need: 0,
            block: None,
            spare: None,
            hpack,
            confirmed,
            frames: 0,
            seeking: None,
            now: 0,
        }
    }

    fn stop(&mut self) {
        self.phase = Phase::Stopped;
        self.block = None;
        self.spare = None;
        self.seeking = None;
        self.hpack = Decoder::unknown();
    }

    /// Reads `bytes`; `max_frame` is the receiving end's
    /// SETTINGS_MAX_FRAME_SIZE, if seen.
    fn on_data(
        &mut self,
        bytes: &[u8],
        ts: u64,
        max_frame: Option<u32>,
        emit: &mut dyn FnMut(Event<'_>),
    ) {
        self.parse(bytes, ts, max_frame, emit);
        self.drain_replay(max_frame, emit);
    }

    /// No more bytes will come: frames waiting in the seek window for the
    /// next frame header to confirm them are taken if they end with it.
    fn finish(&mut self, max_frame: Option<u32>, emit: &mut dyn FnMut(Event<'_>)) {
        if self.phase == Phase::Seek {
            self.scan_window(max_frame, true);
            self.drain_replay(max_frame, emit);
        }
    }

    /// A boundary found by seeking: parses from there, piece by piece as
    /// the bytes came. Seeking again in there may find another.
    fn drain_replay(&mut self, max_frame: Option<u32>, emit: &mut dyn FnMut(Event<'_>)) {
        let mut replay = self.take_replay();
        let mut piece = 0;
        while let Some((range, ts)) = replay.piece(piece) {
            self.parse(
                replay.bytes.get(range).unwrap_or_default(),
                ts,
                max_frame,
                emit,
            );
            piece += 1;
            let mut found = self.take_replay();
            if !found.bytes.is_empty() {
                for (bytes, ts) in replay.pieces().skip(piece) {
                    found.push(bytes, ts);
                }
                replay = found;
                piece = 0;
            }
        }
        if self.phase != Phase::Seek {
            self.seeking = None;
        }
    }

    fn take_replay(&mut self) -> Window {
        self.seeking
            .as_mut()
            .map(|s| std::mem::take(&mut s.replay))
            .unwrap_or_default()
    }

    /// Reads one piece's bytes.
    fn parse(
        &mut self,
        bytes: &[u8],
        ts: u64,
        max_frame: Option<u32>,
        emit: &mut dyn FnMut(Event<'_>),
    ) {
        self.now = ts;
        let mut rest = bytes;
        while !rest.is_empty() {
            let before = self.phase;
            let used = match self.phase {
                Phase::Stopped => rest.len(),
                Phase::Preface(matched) => self.preface(rest, matched, emit),
                Phase::Head => self.read_head(rest, ts, max_frame, emit),
                Phase::Fields => self.read_fields(rest, emit),
                Phase::Fragment => self.read_fragment(rest, emit),
                Phase::Skip => self.skip(len64(rest.len()), emit),
                Phase::Seek => self.seek(rest, ts, max_frame),
            };
            // Never spin on input the state machine cannot place.
            let stuck = used == 0 && self.phase == before;
            debug_assert!(!stuck, "http2 framer made no progress in {before:?}");
            let used = if stuck { rest.len() } else { used };
            rest = rest.get(used..).unwrap_or_default();
        }
    }

    /// `n` bytes passed uncaptured, at `ts`.
    fn on_gap(&mut self, n: u64, ts: u64, emit: &mut dyn FnMut(Event<'_>)) {
        self.now = ts;
        let mut gap = n;
        // One gap is one loss event, however much it swallows.
        let mut counted = false;
        while gap > 0 {
            match self.phase {
                Phase::Stopped => return,
                Phase::Seek => {
                    // Guesses cannot be checked across lost bytes.
                    self.seeking = None;
                    return;
                }
                Phase::Preface(_) | Phase::Head => {
                    self.lose_framing(!counted, emit);
                    return;
                }
                Phase::Fields | Phase::Fragment => {
                    // The frame's length is known: only its content is lost.
                    if self.frame.kind == HEADERS
                        || self.frame.kind == PUSH_PROMISE
                        || self.frame.kind == CONTINUATION
                    {
                        counted |= self.lose_block(emit);
                    }
                    self.phase = Phase::Skip;
                }
                Phase::Skip => {
                    let used = self.skip(gap, emit);
                    gap -= len64(used);
                }
            }
        }
    }

    fn preface(&mut self, rest: &[u8], matched: u8, emit: &mut dyn FnMut(Event<'_>)) -> usize {
        let expected = PREFACE.get(usize::from(matched)..).unwrap_or_default();
        let n = rest.len().min(expected.len());
        if rest.get(..n) != expected.get(..n) {
            self.phase = Phase::Stopped;
            emit(Event::Preface(false));
            return rest.len();
        }
        let matched = usize::from(matched) + n;
        if matched == PREFACE.len() {
            self.phase = Phase::Head;
            emit(Event::Preface(true));
        } else {
            self.phase = Phase::Preface(u8::try_from(matched).unwrap_or(u8::MAX));
        }
        n
    }

    /// Takes `rest` into the seek window; once a boundary is found there,
    /// the bytes from it wait in `replay`.
    fn seek(&mut self, rest: &[u8], ts: u64, max_frame: Option<u32>) -> usize {
        self.seeking.get_or_insert_default().window.push(rest, ts);
        self.scan_window(max_frame, false);
        rest.len()
    }

    fn scan_window(&mut self, max_frame: Option<u32>, at_end: bool) {
        let max_len = max_frame.unwrap_or(DEFAULT_MAX_FRAME);
        let Some(seeking) = self.seeking.as_mut() else {
            return;
        };
        match seeking.window.scan(self.dir, max_len, at_end) {
            Scan::Found(at) => {
                seeking.window.keep_from(at);
                seeking.replay = std::mem::take(&mut seeking.window);
                self.phase = Phase::Head;
                self.head_len = 0;
                self.frames = 0;
            }
            Scan::Pending(at) => seeking.window.keep_from(at),
            Scan::Nothing => seeking.window = Window::default(),
        }
    }

    fn read_head(
        &mut self,
        rest: &[u8],
        ts: u64,
        max_frame: Option<u32>,
        emit: &mut dyn FnMut(Event<'_>),
    ) -> usize {
        if self.head_len == 0 {
            self.frame_ts = ts;
            // The whole header in this piece, as it nearly always is: read
            // in place (copying it in and reading it back stalled).
            if let Some(head) = rest.first_chunk::<FRAME_HEADER_LEN>() {
                self.begin_frame(FrameHead::parse(head), max_frame, emit);
                // A payload skipped whole (DATA, WINDOW_UPDATE, ...) is
                // skipped now, as the next turn of `parse` would, without
                // that turn: frames come several to a write.
                let payload = rest.len() - FRAME_HEADER_LEN;
                if self.phase == Phase::Skip && len64(payload) >= u64::from(self.left) {
                    return FRAME_HEADER_LEN + self.skip(u64::from(self.left), emit);
                }
                return FRAME_HEADER_LEN;
            }
        }
        let take = rest.len().min(FRAME_HEADER_LEN - self.head_len);
        let (Some(dst), Some(src)) = (
            self.head.get_mut(self.head_len..self.head_len + take),
            rest.get(..take),
        ) else {
            return rest.len();
        };
        dst.copy_from_slice(src);
        self.head_len += take;
        if self.head_len == FRAME_HEADER_LEN {
            self.head_len = 0;
            self.begin_frame(FrameHead::parse(&self.head), max_frame, emit);
        }
        take
    }

    fn begin_frame(
        &mut self,
        frame: FrameHead,
        max_frame: Option<u32>,
        emit: &mut dyn FnMut(Event<'_>),
    ) {
        if frame.len > max_frame.unwrap_or(LARGEST_FRAME) {
            // Not a frame this peer may send: the framing is off.
            self.lose_framing(true, emit);
            return;
        }
        let continues = self
            .block
            .as_ref()
            .is_some_and(|b| frame.kind == CONTINUATION && b.stream == frame.stream);
        let interrupted = self.block.is_some() && !continues;
        if interrupted {
            // A header block must be followed by its CONTINUATIONs only.
            self.lose_block(emit);
            self.finish_block(emit);
        }
        self.frame = frame;
        self.left = frame.len;
        self.pad = 0;
        self.phase = Phase::Skip;
        match frame.kind {
            HEADERS => {
                let end_stream = frame.has(END_STREAM);
                self.open_block(BlockKind::Headers { end_stream });
                let priority = if frame.has(PRIORITY_FLAG) { 5 } else { 0 };
                self.expect_fields(usize::from(frame.has(PADDED)) + priority, emit);
            }
            PUSH_PROMISE => {
                self.open_block(BlockKind::PushPromise);
                self.expect_fields(usize::from(frame.has(PADDED)) + 4, emit);
            }
            CONTINUATION if continues => self.phase = Phase::Fragment,
            CONTINUATION => {
                // Its HEADERS was never seen (lost, or before we started):
                // what it inserted into the table is unknown. Right after
                // a seek, or after the block it broke, that was counted.
                if self.frames > 0 && !interrupted {
                    self.count_resync(emit);
                }
                self.hpack.forget();
            }
            SETTINGS if frame.has(ACK) || frame.len == 0 => {}
            SETTINGS if frame.len.is_multiple_of(6) => self.expect_fields(6, emit),
            RST_STREAM if frame.len == 4 => self.expect_fields(4, emit),
            GOAWAY if frame.len >= 8 => self.expect_fields(4, emit),
            SETTINGS | RST_STREAM | GOAWAY => self.count_resync(emit),
            // DATA, PING, PRIORITY, WINDOW_UPDATE, acknowledgements and
            // unknown types: skipped.
            _ => {}
        }
        self.settle(emit);
    }

    fn open_block(&mut self, kind: BlockKind) {
        let block = Block {
            stream: self.frame.stream,
            kind,
            start_ns: self.frame_ts,
            bytes: Vec::new(),
            lost: false,
            decoded: None,
            headers: Headers::default(),
        };
        self.block = Some(match self.spare.take() {
            Some(mut spare) => {
                *spare = block;
                spare
            }
            None => Box::new(block),
        });
    }

    /// The payload starts with `need` bytes of fixed fields.
    fn expect_fields(&mut self, need: usize, emit: &mut dyn FnMut(Event<'_>)) {
        if len64(need) > u64::from(self.left) {
            self.malformed(emit);
            return;
        }
        self.fields_len = 0;
        self.fields_need = u8::try_from(need).unwrap_or(u8::MAX);
        self.phase = Phase::Fields;
    }

    fn read_fields(&mut self, rest: &[u8], emit: &mut dyn FnMut(Event<'_>)) -> usize {
        let take = rest
            .len()
            .min(usize::from(self.fields_need).saturating_sub(self.fields_len));
        let (Some(dst), Some(src)) = (
            self.fields.get_mut(self.fields_len..self.fields_len + take),
            rest.get(..take),
        ) else {
            self.malformed(emit);
            return 0;
        };
        dst.copy_from_slice(src);
        self.fields_len += take;
        self.left = self
            .left
            .saturating_sub(u32::try_from(take).unwrap_or(u32::MAX));
        self.settle(emit);
        take
    }

    fn on_fields(&mut self, emit: &mut dyn FnMut(Event<'_>)) {
        let f = self.fields;
        self.phase = Phase::Skip;
        match self.frame.kind {
            HEADERS | PUSH_PROMISE => {
                let pad = if self.frame.has(PADDED) {
                    u32::from(f[0])
                } else {
                    0
                };
                if pad > self.left {
                    self.malformed(emit);
                } else {
                    self.pad = pad;
                    self.phase = Phase::Fragment;
                }
            }
            SETTINGS => {
                let id = u16::from_be_bytes([f[0], f[1]]);
                let value = u32::from_be_bytes([f[2], f[3], f[4], f[5]]);
                if id == SETTINGS_MAX_FRAME_SIZE
                    && (DEFAULT_MAX_FRAME..=LARGEST_FRAME).contains(&value)
                {
                    emit(Event::MaxFrameSize(value));
                }
                // SETTINGS_HEADER_TABLE_SIZE only bounds the size updates
                // the peer's encoder may send; those are followed as sent.
                if self.left > 0 {
                    self.fields_len = 0;
                    self.phase = Phase::Fields;
                }
            }
            RST_STREAM => emit(Event::Reset {
                stream: self.frame.stream,
                end_ns: self.now,
            }),
            GOAWAY => emit(Event::GoAway {
                last_stream: u32::from_be_bytes([f[0], f[1], f[2], f[3]]) & 0x7fff_ffff,
            }),
            _ => {}
        }
    }

    fn read_fragment(&mut self, rest: &[u8], emit: &mut dyn FnMut(Event<'_>)) -> usize {
        let fragment = self.left.saturating_sub(self.pad);
        let n = rest
            .len()
            .min(usize::try_from(fragment).unwrap_or(usize::MAX));
        let chunk = rest.get(..n).unwrap_or_default();
        let whole = len64(n) == u64::from(fragment) && self.frame.has(END_HEADERS);
        if let Some(block) = self.block.as_mut() {
            if block.lost {
            } else if whole && block.bytes.is_empty() && block.decoded.is_none() {
                // The whole block is in this piece: no copy.
                let decoded = self.hpack.decode(chunk, &mut block.headers);
                block.decoded = Some(decoded.is_ok());
            } else if block.bytes.len() + n > MAX_BLOCK {
                block.lost = true;
                block.bytes = Vec::new();
            } else {
                block.bytes.extend_from_slice(chunk);
            }
        }
        self.left -= u32::try_from(n).unwrap_or(self.left);
        self.settle(emit);
        n
    }

    /// Skips up to `n` payload bytes; returns how many.
    fn skip(&mut self, n: u64, emit: &mut dyn FnMut(Event<'_>)) -> usize {
        let used = n.min(u64::from(self.left));
        self.left -= u32::try_from(used).unwrap_or(self.left);
        self.settle(emit);
        usize::try_from(used).unwrap_or(usize::MAX)
    }

    /// Moves past the parts of the payload that are done.
    fn settle(&mut self, emit: &mut dyn FnMut(Event<'_>)) {
        if self.phase == Phase::Fields && self.fields_len >= usize::from(self.fields_need) {
            self.on_fields(emit);
        }
        if self.phase == Phase::Fragment && self.left <= self.pad {
            self.phase = Phase::Skip;
        }
        if self.phase == Phase::Skip && self.left == 0 {
            self.end_frame(emit);
        }
    }

    fn end_frame(&mut self, emit: &mut dyn FnMut(Event<'_>)) {
        let frame = self.frame;
        self.phase = Phase::Head;
        self.frames = self.frames.saturating_add(1);
        if self.frames == CONFIRMING_FRAMES {
            self.confirmed = true;
            emit(Event::Confirmed);
        }
        match frame.kind {
            DATA if frame.has(END_STREAM) => emit(Event::DataEnd {
                stream: frame.stream,
                end_ns: self.now,
            }),
            HEADERS | PUSH_PROMISE | CONTINUATION if frame.has(END_HEADERS) => {
                self.finish_block(emit);
            }
            _ => {}
        }
    }

    /// Decodes the finished block and reports it.
    fn finish_block(&mut self, emit: &mut dyn FnMut(Event<'_>)) {
        let Some(mut block) = self.block.take() else {
            return;
        };
        let decoded = match block.decoded {
            Some(decoded) => decoded,
            None if block.lost => {
                self.hpack.forget();
                false
            }
            None => self.hpack.decode(&block.bytes, &mut block.headers).is_ok(),
        };
        if let BlockKind::Headers { end_stream } = block.kind {
            emit(Event::Headers {
                stream: block.stream,
                end_stream,
                start_ns: block.start_ns,
                end_ns: self.now,
                headers: decoded.then_some(&mut block.headers),
            });
        }
        // A buffer that spanned pieces is freed, as the block would be: only
        // the box is kept.
        block.bytes = Vec::new();
        self.spare = Some(block);
    }

    /// The header block in progress lost bytes; returns whether that was
    /// counted (once per block).
    fn lose_block(&mut self, emit: &mut dyn FnMut(Event<'_>)) -> bool {
        self.hpack.forget();
        match self.block.as_mut() {
            Some(block) if !block.lost => {
                block.lost = true;
                block.bytes = Vec::new();
                block.decoded = None;
                self.count_resync(emit);
                true
            }
            _ => false,
        }
    }

    /// The frame's content contradicts its header: skip the frame, losing
    /// a header block it carried.
    fn malformed(&mut self, emit: &mut dyn FnMut(Event<'_>)) {
        if !self.lose_block(emit) {
            self.count_resync(emit);
        }
        self.phase = Phase::Skip;
    }

    /// Frame boundaries are lost: seek the next one. A header block in
    /// progress is reported lost (its frame header was seen), and the table
    /// may have missed insertions.
    fn lose_framing(&mut self, count: bool, emit: &mut dyn FnMut(Event<'_>)) {
        if count {
            self.count_resync(emit);
        }
        if let Some(block) = self.block.as_mut() {
            block.lost = true;
        }
        self.finish_block(emit);
        self.hpack.forget();
        if self.confirmed {
            emit(Event::FramingLost);
        }
        self.phase = Phase::Seek;
        self.head_len = 0;
        self.frames = 0;
    }

    fn count_resync(&self, emit: &mut dyn FnMut(Event<'_>)) {
        if self.confirmed {
            emit(Event::Resync);
        }
    }
}

/// The request a stream carries, as far as its header block was decoded.
#[derive(Debug, Clone)]
struct Request {
    /// None: unknown (the block was lost, or the field unresolved).
    method: Option<Cow<'static, str>>,
    path: Option<String>,
    /// `content-type` is gRPC; None: unknown.
    grpc: Option<bool>,
}

/// What the response header blocks of a stream said so far.
#[derive(Debug, Default)]
struct Response {
    /// A response block arrived that was not interim.
    final_seen: bool,
    status: Option<u16>,
    grpc: Option<bool>,
    grpc_status: Option<u32>,
    /// A response block was lost, undecodable or had unresolved fields.
    unknown: bool,
}

/// A HEADERS block from the client, for `Book::on_request`.
struct RequestBlock<'a> {
    end_stream: bool,
    start_ns: u64,
    end_ns: u64,
    headers: Option<&'a mut Headers>,
}

#[derive(Debug)]
struct Stream {
    id: u32,
    start_ns: u64,
    /// When the request was sent in full (END_STREAM): from then on the
    /// stream waits for its response. A client still streaming is not.
    sent_ns: Option<u64>,
    /// None for a response whose request we did not see (counted when its
    /// headers came); followed only so it is not counted again.
    request: Option<Request>,
    response: Response,
    /// Reported as timed out: a late end is not reported again.
    timed_out: bool,
    /// Response frames were lost while this stream waited: its answer may
    /// be among them.
    response_lost: bool,
}

/// The streams in flight and what ends them.
#[derive(Debug)]
struct Book {
    verdict: Verdict,
    mid_stream: bool,
    /// Ordered by id. Streams mostly end oldest first, so removal at the
    /// front is the common case.
    streams: VecDeque<Stream>,
    /// The highest client stream whose request HEADERS we saw.
    highest_request: u32,
    /// The first one (mid-stream: lower streams predate us).
    first_request: Option<u32>,
    /// Request framing was lost after this stream: the streams opened
    /// until the next request we see had their requests lost.
    lost_after: Option<u32>,
    /// Those streams, once the next request is seen: (after, before).
    lost_requests: Option<(u32, u32)>,
    /// A GOAWAY said streams above this were not processed.
    refused_above: Option<u32>,
    /// SETTINGS_MAX_FRAME_SIZE for frames of each direction, once sent by
    /// the receiving end.
    max_frame: [Option<u32>; 2],
}

impl Http2Conn {
    /// A connection where the traced process is `side`; allocates nothing.
    pub fn new(side: Side, start: Start) -> Self {
        match start {
            Start::Fresh => Self::build(
                side,
                Framer::new(Dir::Req, Phase::Preface(0), Decoder::new(), true),
                Framer::new(Dir::Resp, Phase::Head, Decoder::new(), true),
                Book::new(Verdict::Unknown, false),
            ),
            Start::MidStream => Self::build(
                side,
                Framer::new(Dir::Req, Phase::Seek, Decoder::unknown(), false),
                Framer::new(Dir::Resp, Phase::Seek, Decoder::unknown(), false),
                Book::new(Verdict::Unknown, true),
            ),
        }
    }

    /// A connection that switched from HTTP/1.1 by `Upgrade: h2c`: stream
    /// 1 is the upgrading request (`method`, `path`, first byte at
    /// `start_ns`), whose response is still to come. After the 101 the
    /// client sends the preface, the server its SETTINGS and that response.
    pub fn upgraded(side: Side, method: String, path: String, start_ns: u64) -> Self {
        let mut conn = Self::build(
            side,
            Framer::new(Dir::Req, Phase::Preface(0), Decoder::new(), true),
            Framer::new(Dir::Resp, Phase::Head, Decoder::new(), true),
            Book::new(Verdict::Speaks, false),
        );
        conn.book.highest_request = 1;
        conn.book.first_request = Some(1);
        conn.book.streams.push_back(Stream {
            id: 1,
            start_ns,
            sent_ns: Some(start_ns),
            request: Some(Request {
                method: Some(Cow::Owned(method)),
                path: Some(request_path(&path)),
                grpc: Some(false),
            }),
            response: Response::default(),
            timed_out: false,
            response_lost: false,
        });
        conn
    }

    fn build(side: Side, req: Framer, resp: Framer, book: Book) -> Self {
        Self {
            side,
            req,
            resp,
            book,
            seek_pieces: 0,
        }
    }

    fn stop(&mut self) {
        self.req.stop();
        self.resp.stop();
        self.book.streams = VecDeque::new();
    }
}

impl Spec for Http2Conn {
    const NAME: &'static str = "http2";

    fn start(side: Side, start: Start) -> Self {
        Self::new(side, start)
    }

    /// The client preface; or, from a server that speaks first, its
    /// SETTINGS frame on stream 0 (its half of the preface).
    fn detect(from_client: bool, bytes: &[u8]) -> Detection {
        let expected: &[u8] = if from_client { PREFACE } else { &[0, 0] };
        let n = bytes.len().min(expected.len());
        if bytes.get(..n) != expected.get(..n) {
            return Detection::No;
        }
        if from_client {
            return if bytes.len() >= PREFACE.len() {
                Detection::Yes
            } else {
                Detection::NeedMore
            };
        }
        let Some(head) = bytes.first_chunk::<FRAME_HEADER_LEN>() else {
            return Detection::NeedMore;
        };
        let head = FrameHead::parse(head);
        if head.kind == SETTINGS && !head.has(ACK) && head.plausible(Dir::Resp, DEFAULT_MAX_FRAME) {
            Detection::Yes
        } else {
            Detection::No
        }
    }

    fn traced_on(_: Side) -> bool {
        true
    }
}

impl ConnParser for Http2Conn {
    fn on_piece(
        &mut self,
        outbound: bool,
        piece: Piece<'_>,
        ts_ns: u64,
        counters: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if self.book.verdict == Verdict::Done || matches!(piece, Piece::Data([]) | Piece::Gap(0)) {
            return;
        }
        let dir = if outbound == (self.side == Side::Client) {
            Dir::Req
        } else {
            Dir::Resp
        };
        let framer = match dir {
            Dir::Req => &mut self.req,
            Dir::Resp => &mut self.resp,
        };
        let seeking = framer.phase == Phase::Seek;
        let book = &mut self.book;
        let max_frame = book.max_frame[dir as usize];
        let mut emit = |event: Event| book.apply(dir, event, counters, out);
        match piece {
            Piece::Data(bytes) => framer.on_data(bytes, ts_ns, max_frame, &mut emit),
            Piece::Gap(n) => framer.on_gap(n, ts_ns, &mut emit),
        }
        if seeking && self.book.verdict == Verdict::Unknown && matches!(piece, Piece::Data(_)) {
            self.seek_pieces = self.seek_pieces.saturating_add(1);
            if self.seek_pieces > MAX_SEEK_PIECES {
                self.book.verdict = Verdict::Done;
            }
        }
        if self.book.verdict == Verdict::Done {
            self.stop();
        }
    }

    fn on_close(&mut self, ts_ns: u64, counters: &mut ParserCounters, out: &mut Vec<Exchange>) {
        if self.book.verdict != Verdict::Done {
            for dir in [Dir::Req, Dir::Resp] {
                let framer = match dir {
                    Dir::Req => &mut self.req,
                    Dir::Resp => &mut self.resp,
                };
                let book = &mut self.book;
                let max_frame = book.max_frame[dir as usize];
                framer.finish(max_frame, &mut |event| {
                    book.apply(dir, event, counters, out)
                });
            }
            self.book.close(ts_ns, counters, out);
        }
        self.stop();
    }

    fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<Exchange>) {
        let Some(cutoff) = now_ns.checked_sub(timeout_ns) else {
            return;
        };
        for stream in &mut self.book.streams {
            let waiting = stream.request.is_some() && !stream.response.final_seen;
            let since = stream.sent_ns.filter(|_| waiting && !stream.timed_out);
            if since.is_some_and(|sent| sent <= cutoff) {
                stream.timed_out = true;
                if let Some(request) = stream.request.clone() {
                    let failure = Some(Failure::Timeout);
                    let (exchange, _) =
                        exchange(request, &stream.response, stream.start_ns, failure, now_ns);
                    out.push(exchange);
                }
            }
        }
    }

    fn verdict(&self) -> Verdict {
        self.book.verdict
    }
}

impl Book {
    fn new(verdict: Verdict, mid_stream: bool) -> Self {
        Self {
            verdict,
            mid_stream,
            streams: VecDeque::new(),
            highest_request: 0,
            first_request: None,
            lost_after: None,
            lost_requests: None,
            refused_above: None,
            // Seen from its start, a connection keeps the default until a
            // SETTINGS frame we read raises it; found mid-stream, the size
            // in force is unknown and any length is taken.
            max_frame: if mid_stream {
                [None; 2]
            } else {
                [Some(DEFAULT_MAX_FRAME); 2]
            },
        }
    }

    fn apply(
        &mut self,
        dir: Dir,
        event: Event<'_>,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        match (dir, event) {
            (_, Event::Preface(true) | Event::Confirmed) => {
                if self.verdict == Verdict::Unknown {
                    self.verdict = Verdict::Speaks;
                }
            }
            (_, Event::Preface(false)) => self.verdict = Verdict::Done,
            (_, Event::Resync) => c.resyncs += 1,
            (Dir::Req, Event::MaxFrameSize(size)) => {
                self.max_frame[Dir::Resp as usize] = Some(size)
            }
            (Dir::Resp, Event::MaxFrameSize(size)) => {
                self.max_frame[Dir::Req as usize] = Some(size)
            }
            (Dir::Req, Event::FramingLost) => {
                self.lost_after.get_or_insert(self.highest_request);
            }
            (Dir::Resp, Event::FramingLost) => {
                for stream in &mut self.streams {
                    stream.response_lost = true;
                    stream.response.unknown = true;
                }
            }
            (
                Dir::Req,
                Event::Headers {
                    stream,
                    end_stream,
                    start_ns,
                    end_ns,
                    headers,
                },
            ) => {
                let block = RequestBlock {
                    end_stream,
                    start_ns,
                    end_ns,
                    headers,
                };
                self.on_request(stream, block, c);
            }
            (
                Dir::Resp,
                Event::Headers {
                    stream,
                    end_stream,
                    end_ns,
                    headers,
                    ..
                },
            ) => self.on_response(stream, end_stream, headers, end_ns, c, out),
            (Dir::Resp, Event::DataEnd { stream, end_ns }) => self.end(stream, end_ns, c, out),
            (_, Event::Reset { stream, end_ns }) => self.reset(stream, end_ns, c, out),
            (Dir::Resp, Event::GoAway { last_stream }) => self.go_away(last_stream),
            (Dir::Req, Event::DataEnd { stream, end_ns }) => self.request_sent(stream, end_ns),
            // A client's GOAWAY is about pushed streams.
            (Dir::Req, Event::GoAway { .. }) => {}
        }
    }

    fn find(&self, id: u32) -> Result<usize, usize> {
        // Streams mostly end oldest first and open above the newest: the
        // ends answer most lookups without a search.
        match (self.streams.front(), self.streams.back()) {
            (None, _) | (_, None) => Err(0),
            (Some(front), _) if front.id == id => Ok(0),
            (_, Some(back)) if back.id < id => Err(self.streams.len()),
            _ => self.streams.binary_search_by_key(&id, |s| s.id),
        }
    }

    /// A HEADERS block from the client.
    fn on_request(&mut self, id: u32, block: RequestBlock<'_>, c: &mut ParserCounters) {
        if id.is_multiple_of(2) {
            return;
        }
        let at = match self.find(id) {
            Ok(at) => {
                if self.streams.get(at).is_some_and(|s| s.request.is_none()) {
                    // Its response came first and was counted unmatched.
                    self.streams.remove(at);
                } else if block.end_stream {
                    // The request's trailers.
                    self.request_sent(id, block.end_ns);
                }
                return;
            }
            Err(at) => at,
        };
        if id <= self.highest_request || self.refused_above.is_some_and(|last| id > last) {
            // A stream already ended (trailers after the response), or
            // one the server said it will not process.
            return;
        }
        if let Some(after) = self.lost_after.take() {
            self.lost_requests = Some((after, id));
        }
        self.highest_request = id;
        self.first_request.get_or_insert(id);
        let stream = Stream {
            id,
            start_ns: block.start_ns,
            sent_ns: block.end_stream.then_some(block.end_ns),
            request: Some(Request::from(block.headers)),
            response: Response::default(),
            timed_out: false,
            response_lost: false,
        };
        self.insert(at, stream, c);
    }

    /// The request on stream `id` was sent in full at `end_ns`.
    fn request_sent(&mut self, id: u32, end_ns: u64) {
        if let Some(stream) = self.find(id).ok().and_then(|at| self.streams.get_mut(at)) {
            stream.sent_ns.get_or_insert(end_ns);
        }
    }

    /// Inserts at `at`, making room first if the table is full.
    fn insert(&mut self, at: usize, stream: Stream, c: &mut ParserCounters) {
        let mut at = at;
        if self.streams.len() >= MAX_STREAMS {
            // The longest-waiting request is the one most likely never to
            // be answered; unanswered orphans before it.
            let victim = self
                .streams
                .iter()
                .position(|s| s.request.is_none())
                .or_else(|| {
                    let waiting = self.streams.iter().filter(|s| !s.response.final_seen);
                    let oldest = waiting.min_by_key(|s| s.start_ns)?.id;
                    self.find(oldest).ok()
                })
                .unwrap_or(0);
            if self
                .streams
                .get(victim)
                .is_some_and(|s| s.request.is_some() && !s.timed_out)
            {
                c.unmatched_requests += 1;
            }
            if self.streams.remove(victim).is_some() && victim < at {
                at -= 1;
            }
        }
        self.streams.insert(at.min(self.streams.len()), stream);
    }

    /// Whether a response on an unknown stream answers a request we should
    /// have seen (its request was lost), rather than one that predates us
    /// or a stream already ended.
    fn answers_lost_request(&self, id: u32) -> bool {
        if self.mid_stream && self.first_request.is_none_or(|first| id < first) {
            return false;
        }
        id > self.highest_request
            || self
                .lost_requests
                .is_some_and(|(after, before)| id > after && id < before)
    }

    /// A HEADERS block from the server.
    fn on_response(
        &mut self,
        id: u32,
        end_stream: bool,
        headers: Option<&mut Headers>,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if id.is_multiple_of(2) {
            // A pushed response.
            return;
        }
        let Ok(at) = self.find(id) else {
            if self.answers_lost_request(id) && self.refused_above.is_none_or(|last| id <= last) {
                c.unmatched_responses += 1;
                if !end_stream {
                    let orphan = Stream {
                        id,
                        start_ns: ts,
                        sent_ns: None,
                        request: None,
                        response: Response::default(),
                        timed_out: false,
                        response_lost: false,
                    };
                    let at = self.find(id).unwrap_or_else(|at| at);
                    self.insert(at, orphan, c);
                }
            }
            return;
        };
        if let Some(stream) = self.streams.get_mut(at) {
            stream.response_lost = false;
            stream.response.add(headers);
        }
        if end_stream {
            self.end(id, ts, c, out);
        }
    }

    /// The response stream `id` ended at `ts`.
    fn end(&mut self, id: u32, ts: u64, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        if let Some(stream) = self.find(id).ok().and_then(|at| self.streams.remove(at)) {
            report(stream, None, ts, c, out);
        }
    }

    fn reset(&mut self, id: u32, ts: u64, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        if let Some(stream) = self.find(id).ok().and_then(|at| self.streams.remove(at)) {
            report(stream, Some(Failure::Reset), ts, c, out);
        }
    }

    /// The server will not process streams above `last`: the client
    /// retries them elsewhere, so they are dropped uncounted.
    fn go_away(&mut self, last: u32) {
        self.streams.retain(|s| s.id <= last);
        self.refused_above = Some(self.refused_above.map_or(last, |l| l.min(last)));
    }

    fn close(&mut self, ts: u64, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        for stream in std::mem::take(&mut self.streams) {
            if stream.request.is_none() || stream.timed_out {
                continue;
            }
            if stream.response_lost {
                // Its answer was most likely lost, not cut by the close.
                c.unmatched_requests += 1;
            } else {
                report(stream, Some(Failure::ConnectionClosed), ts, c, out);
            }
        }
    }
}

impl Request {
    /// The request `headers` said; its method and path are moved out.
    fn from(headers: Option<&mut Headers>) -> Self {
        let Some(h) = headers else {
            return Self {
                method: None,
                path: None,
                grpc: None,
            };
        };
        // A field the block did not have is known to be absent, unless the
        // block had fields we could not resolve.
        fn known<T: Default>(field: Option<T>, unresolved: bool) -> Option<T> {
            match field {
                Some(value) => Some(value),
                None if unresolved => None,
                None => Some(T::default()),
            }
        }
        Self {
            method: known(h.method.take(), h.unresolved),
            path: known(h.path.take().map(into_request_path), h.unresolved),
            grpc: h.grpc.or((!h.unresolved).then_some(false)),
        }
    }
}

impl Response {
    /// One more response header block (None: lost or undecodable).
    fn add(&mut self, headers: Option<&mut Headers>) {
        let Some(h) = headers else {
            // Interim or final, we cannot tell; a later block may still
            // carry the final status.
            self.unknown = true;
            self.final_seen = true;
            return;
        };
        self.unknown |= h.unresolved;
        match h.status {
            Some(status) if (100..200).contains(&status) && status != 101 => {}
            Some(status) => {
                if self.status.is_none() {
                    self.status = Some(status);
                }
                self.final_seen = true;
            }
            // Trailers, or a block whose status was unresolved.
            None => self.final_seen = true,
        }
        if self.grpc.is_none() {
            self.grpc = h.grpc;
        }
        if self.grpc_status.is_none() {
            self.grpc_status = h.grpc_status;
        }
    }
}

/// Reports `stream`'s exchange unless it was reported already, counting it
/// as partial if a field could not be known.
fn report(
    stream: Stream,
    failure: Option<Failure>,
    end_ns: u64,
    c: &mut ParserCounters,
    out: &mut Vec<Exchange>,
) {
    if stream.timed_out {
        return;
    }
    let Some(request) = stream.request else {
        return;
    };
    let (exchange, partial) = exchange(request, &stream.response, stream.start_ns, failure, end_ns);
    if partial {
        c.partial += 1;
    }
    out.push(exchange);
}

/// The exchange of a request and what its response said, and whether a
/// field of it could not be known.
fn exchange(
    request: Request,
    response: &Response,
    start_ns: u64,
    failure: Option<Failure>,
    end_ns: u64,
) -> (Exchange, bool) {
    // Unknown from the request: a gRPC response says so by its
    // content-type or grpc-status, and a response fully seen without
    // either is not gRPC. Failing both, the request's shape is a guess.
    let known = request.grpc.or_else(|| {
        let fully_seen = response.final_seen && !response.unknown;
        response
            .grpc
            .or(response.grpc_status.map(|_| true))
            .or(fully_seen.then_some(false))
    });
    let (grpc, guessed) = match known {
        Some(grpc) => (grpc, false),
        None => (looks_like_grpc(&request), true),
    };
    // A finished response must have had a status; one cut short may not.
    let status_unknown = response.status.is_none() && (failure.is_none() || response.unknown);
    let (call, partial) = if grpc {
        let path_unknown = request.path.is_none();
        let (service, method) = request.path.map(grpc_names).unwrap_or_default();
        let grpc_status_unknown = response.grpc_status.is_none() && response.unknown;
        let call = Call::Grpc(GrpcCall {
            service,
            method,
            status: response.grpc_status,
        });
        (call, guessed || path_unknown || grpc_status_unknown)
    } else {
        let unknown = request.method.is_none() || request.path.is_none() || guessed;
        let call = Call::Http(HttpCall {
            method: request.method.unwrap_or_default().into_owned(),
            path: request.path.unwrap_or_default(),
            status: response.status.unwrap_or(0),
        });
        (call, unknown || status_unknown)
    };
    let exchange = Exchange {
        call,
        failure,
        start_ns,
        end_ns: end_ns.max(start_ns),
        response_body_bytes: None,
    };
    (exchange, partial)
}

/// A POST to `/package.Service/Method`, for a request whose content-type
/// could not be decoded.
fn looks_like_grpc(request: &Request) -> bool {
    let Some(path) = request.path.as_deref().and_then(|p| p.strip_prefix('/')) else {
        return false;
    };
    let shaped = path.split_once('/').is_some_and(|(service, method)| {
        service.contains('.') && !method.is_empty() && !method.contains(['/', '.'])
    });
    shaped && request.method.as_deref() == Some("POST")
}

/// `package.Service` and `Method` from a gRPC path `/package.Service/Method`.
/// The service is cut from the path's own allocation: one copy, not two.
/// Searched for as bytes: '/' is one, and a char-wise search or removal
/// decoded every character on the way.
fn grpc_names(path: String) -> (String, String) {
    let mut service = path;
    let last_slash = service.bytes().rposition(|b| b == b'/');
    let method = match last_slash.filter(|&slash| slash > 0) {
        Some(slash) => {
            let method = service.get(slash + 1..).unwrap_or_default().to_owned();
            service.truncate(slash);
            method
        }
        None => String::new(),
    };
    if service.starts_with('/') {
        service.drain(..1);
    }
    (service, method)
}

/// `request_path` of a `:path` that is usually one already (HPACK removed
/// its query and cut it): then it is kept as is, not copied. Checked byte
/// by byte: both characters are ASCII, and a search for either of two
/// chars decoded every character.
fn into_request_path(target: String) -> String {
    let is_path = target.starts_with('/')
        && target.len() <= super::http1::MAX_PATH
        && !target.bytes().any(|b| b == b'?' || b == b'#');
    if is_path {
        target
    } else {
        request_path(&target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One connection under test, with a clock that ticks per piece.
    type Conn = crate::testutil::Driver<Http2Conn>;

    impl Conn {
        fn new(side: Side, start: Start) -> Self {
            Self::with(Http2Conn::new(side, start), side)
        }

        /// A fresh server-side connection past the preface and SETTINGS.
        fn server() -> Self {
            let mut t = Self::new(Side::Server, Start::Fresh);
            t.req(PREFACE);
            t.req(&settings(&[]));
            t.resp(&settings(&[]));
            t
        }

        /// The exchanges so far, one line each.
        fn got(&self) -> Vec<String> {
            self.out.iter().map(summary).collect()
        }

        /// (resyncs, unmatched requests, unmatched responses, partial).
        fn counts(&self) -> (u64, u64, u64, u64) {
            (
                self.c.resyncs,
                self.c.unmatched_requests,
                self.c.unmatched_responses,
                self.c.partial,
            )
        }
    }

    fn summary(e: &Exchange) -> String {
        let failure = e
            .failure
            .map(|f| format!(" {}", f.as_str()))
            .unwrap_or_default();
        match &e.call {
            Call::Http(h) => format!("{} {} {}{failure}", h.method, h.path, h.status),
            Call::Grpc(g) => {
                let status = g.status.map_or("-".to_owned(), |s| s.to_string());
                format!("grpc {}/{} {status}{failure}", g.service, g.method)
            }
            Call::Db(_) => "db".to_owned(),
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let payload: Vec<u8> = entries
            .iter()
            .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
            .collect();
        frame(SETTINGS, 0, 0, &payload)
    }

    /// A literal field without indexing, new name (RFC 7541 6.2.2).
    fn lit(name: &str, value: &str) -> Vec<u8> {
        literal(0x00, name, value)
    }

    /// A literal field with incremental indexing, new name (6.2.1).
    fn lit_indexed(name: &str, value: &str) -> Vec<u8> {
        literal(0x40, name, value)
    }

    fn literal(prefix: u8, name: &str, value: &str) -> Vec<u8> {
        assert!(name.len() < 127 && value.len() < 127);
        let mut out = vec![prefix, name.len() as u8];
        out.extend(name.as_bytes());
        out.push(value.len() as u8);
        out.extend(value.as_bytes());
        out
    }

    fn block(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    const GET: &[u8] = &[0x82]; // :method GET (static 2)
    const POST: &[u8] = &[0x83]; // :method POST (static 3)
    const STATUS_200: &[u8] = &[0x88];
    const STATUS_404: &[u8] = &[0x8d];

    fn get(stream: u32, path: &str) -> Vec<u8> {
        headers(stream, END_STREAM, &block(&[GET, &lit(":path", path)]))
    }

    fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        frame(HEADERS, flags | END_HEADERS, stream, block)
    }

    fn data(stream: u32, flags: u8, len: usize) -> Vec<u8> {
        frame(DATA, flags, stream, &vec![b'x'; len])
    }

    fn ok(stream: u32) -> Vec<u8> {
        headers(stream, END_STREAM, STATUS_200)
    }

    fn grpc_request(stream: u32, path: &str) -> Vec<u8> {
        let fields = block(&[
            POST,
            &lit(":path", path),
            &lit("content-type", "application/grpc"),
        ]);
        let mut out = headers(stream, 0, &fields);
        out.extend(data(stream, END_STREAM, 7));
        out
    }

    fn grpc_response(stream: u32, status: &str) -> Vec<u8> {
        let mut out = headers(
            stream,
            0,
            &block(&[STATUS_200, &lit("content-type", "application/grpc")]),
        );
        out.extend(data(stream, 0, 12));
        out.extend(headers(stream, END_STREAM, &lit("grpc-status", status)));
        out
    }

    #[test]
    fn request_and_response_with_timestamps() {
        let mut t = Conn::server();
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
        let start = t.req(&get(1, "/a?secret=1"));
        let mut response = headers(1, 0, STATUS_200);
        response.extend(data(1, 0, 100));
        t.resp(&response);
        let end = t.resp(&data(1, END_STREAM, 5));
        assert_eq!(t.got(), ["GET /a 200"]);
        assert_eq!((t.out[0].start_ns, t.out[0].end_ns), (start, end));
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn preface_byte_by_byte_and_its_absence() {
        let mut t = Conn::new(Side::Client, Start::Fresh);
        for b in PREFACE.chunks(1) {
            assert_eq!(t.conn.verdict(), Verdict::Unknown);
            t.req(b);
        }
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
        t.req(&get(1, "/x"));
        t.resp(&ok(1));
        assert_eq!(t.got(), ["GET /x 200"]);

        let mut t = Conn::new(Side::Server, Start::Fresh);
        t.req(b"PRI * HTTP/1.1\r\n");
        assert_eq!(t.conn.verdict(), Verdict::Done);
        t.req(&get(1, "/x"));
        t.resp(&ok(1));
        t.close();
        assert!(t.out.is_empty());
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn server_speaking_first_is_fine() {
        let mut t = Conn::new(Side::Server, Start::Fresh);
        t.resp(&settings(&[(SETTINGS_MAX_FRAME_SIZE, 32768)]));
        t.req(PREFACE);
        t.req(&get(1, "/"));
        t.resp(&ok(1));
        assert_eq!(t.got(), ["GET / 200"]);
    }

    #[test]
    fn grpc_unary_streaming_and_trailers_only() {
        let mut t = Conn::server();
        t.req(&grpc_request(1, "/helloworld.Greeter/SayHello"));
        t.req(&grpc_request(3, "/pkg.Feed/Watch?x"));
        // Server streaming: several messages, then trailers.
        let mut stream = headers(
            3,
            0,
            &block(&[STATUS_200, &lit("content-type", "application/grpc+proto")]),
        );
        for _ in 0..3 {
            stream.extend(data(3, 0, 20));
        }
        t.resp(&stream);
        t.resp(&grpc_response(1, "0"));
        assert_eq!(t.got(), ["grpc helloworld.Greeter/SayHello 0"]);
        t.resp(&headers(3, END_STREAM, &lit("grpc-status", "14")));
        // Trailers-only: an error without a body.
        t.req(&grpc_request(5, "/pkg.Svc/Missing"));
        let trailers_only = block(&[
            STATUS_200,
            &lit("content-type", "application/grpc"),
            &lit("grpc-status", "5"),
            &lit("grpc-message", "not found"),
        ]);
        t.resp(&headers(5, END_STREAM, &trailers_only));
        assert_eq!(
            t.got(),
            [
                "grpc helloworld.Greeter/SayHello 0",
                "grpc pkg.Feed/Watch 14",
                "grpc pkg.Svc/Missing 5"
            ]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn interleaved_streams_complete_in_any_order() {
        let mut t = Conn::server();
        let mut requests = Vec::new();
        for (id, path) in [(1, "/one"), (3, "/two"), (5, "/three")] {
            requests.extend(get(id, path));
        }
        t.req(&requests);
        let mut responses = headers(5, 0, STATUS_404);
        responses.extend(headers(1, 0, STATUS_200));
        responses.extend(data(5, 0, 3));
        responses.extend(data(1, END_STREAM, 3));
        responses.extend(ok(3));
        responses.extend(data(5, END_STREAM, 0));
        t.resp(&responses);
        assert_eq!(t.got(), ["GET /one 200", "GET /two 200", "GET /three 404"]);
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut t = Conn::server();
        t.req(&headers(
            1,
            0,
            &block(&[POST, &lit(":path", "/up"), &lit("expect", "100-continue")]),
        ));
        t.resp(&headers(1, 0, &lit(":status", "100")));
        t.req(&data(1, END_STREAM, 10));
        t.resp(&headers(1, 0, &lit(":status", "103")));
        t.resp(&headers(1, END_STREAM, &lit(":status", "201")));
        assert_eq!(t.got(), ["POST /up 201"]);
    }

    #[test]
    fn continuation_padding_and_priority() {
        let mut t = Conn::server();
        let fields = block(&[GET, &lit(":path", "/split"), &lit("user-agent", "test")]);
        let (a, b) = fields.split_at(4);
        let (b, c) = b.split_at(5);
        let mut bytes = frame(HEADERS, END_STREAM, 1, a);
        bytes.extend(frame(CONTINUATION, 0, 1, b));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        t.req(&bytes);
        // Padded, with priority fields.
        let mut payload = vec![3]; // pad length
        payload.extend([0x80, 0, 0, 1, 200]); // exclusive dependency on 1, weight
        payload.extend(block(&[GET, &lit(":path", "/padded")]));
        payload.extend([0, 0, 0]);
        t.req(&frame(
            HEADERS,
            END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
            3,
            &payload,
        ));
        // A padded DATA frame ends a response.
        t.resp(&headers(3, 0, STATUS_200));
        t.resp(&frame(DATA, END_STREAM | PADDED, 3, &[2, b'h', b'i', 0, 0]));
        t.resp(&headers(1, 0, STATUS_404));
        t.resp(&frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]));
        t.resp(&frame(PING, 0, 0, &[0; 8]));
        t.resp(&frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
        t.resp(&frame(0xfa, 0xff, 7, b"unknown extension frame"));
        t.resp(&data(1, END_STREAM, 0));
        assert_eq!(t.got(), ["GET /padded 200", "GET /split 404"]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn header_block_interrupted_is_lost() {
        let mut t = Conn::server();
        let fields = block(&[GET, &lit_indexed(":path", "/lost")]);
        let mut bytes = frame(HEADERS, END_STREAM, 1, &fields[..3]);
        // Not a CONTINUATION: the block is lost, and the table with it.
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        bytes.extend(get(3, "/next"));
        t.req(&bytes);
        t.resp(&ok(1));
        t.resp(&ok(3));
        assert_eq!(t.got(), ["  200", "GET /next 200"]);
        assert_eq!(t.counts(), (1, 0, 0, 1));
    }

    #[test]
    fn push_promise_keeps_the_table_in_step() {
        let mut t = Conn::server();
        t.req(&get(1, "/page"));
        // The server pushes /style.css: its PUSH_PROMISE block inserts an
        // entry, which the next response refers to.
        let mut promise = vec![0, 0, 0, 2];
        promise.extend(block(&[
            GET,
            &lit_indexed("x-pushed", "yes"),
            &lit(":path", "/style.css"),
        ]));
        let mut bytes = frame(PUSH_PROMISE, END_HEADERS, 1, &promise);
        bytes.extend(headers(2, 0, STATUS_200));
        bytes.extend(data(2, END_STREAM, 30));
        // 0xbe: dynamic entry 62 (x-pushed), then :status 404 indexed by
        // a literal with incremental indexing.
        bytes.extend(headers(
            1,
            END_STREAM,
            &[0xbe, 0x48, 0x03, b'4', b'0', b'4'],
        ));
        t.resp(&bytes);
        t.req(&get(3, "/again"));
        // 0xbe now names ":status: 404", inserted by the response above.
        t.resp(&headers(3, END_STREAM, &[0xbe]));
        assert_eq!(t.got(), ["GET /page 404", "GET /again 404"]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn reset_streams() {
        let mut t = Conn::server();
        t.req(&get(1, "/cancelled"));
        t.req(&frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        t.req(&grpc_request(3, "/pkg.Svc/Stream"));
        t.resp(&headers(
            3,
            0,
            &block(&[STATUS_200, &lit("content-type", "application/grpc")]),
        ));
        t.resp(&frame(RST_STREAM, 0, 3, &[0, 0, 0, 2]));
        // Reset after the response ended: nothing more.
        t.req(&get(5, "/done"));
        t.resp(&ok(5));
        t.resp(&frame(RST_STREAM, 0, 5, &[0, 0, 0, 0]));
        t.req(&frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
        assert_eq!(
            t.got(),
            [
                "GET /cancelled 0 stream_reset",
                "grpc pkg.Svc/Stream - stream_reset",
                "GET /done 200"
            ]
        );
        // Late frames of a reset stream are not counted.
        t.resp(&ok(1));
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn goaway_drops_unprocessed_streams_silently() {
        let mut t = Conn::server();
        for id in [1, 3, 5, 7] {
            t.req(&get(id, "/r"));
        }
        let mut goaway = vec![0, 0, 0, 3];
        goaway.extend([0, 0, 0, 0]);
        goaway.extend(b"debug data");
        t.resp(&frame(GOAWAY, 0, 0, &goaway));
        t.req(&get(9, "/in-flight"));
        t.resp(&ok(1));
        t.close();
        assert_eq!(t.got(), ["GET /r 200", "GET /r 0 connection_closed"]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn close_and_timeouts() {
        let mut t = Conn::server();
        t.req(&get(1, "/slow"));
        t.req(&get(3, "/streaming"));
        t.resp(&headers(3, 0, STATUS_200));
        let mut out = Vec::new();
        t.conn.expire(1_000, 5_000_000_000, &mut out);
        assert!(out.is_empty());
        t.conn.expire(u64::MAX / 2, 5_000_000_000, &mut out);
        // Only the stream still waiting for its response times out.
        assert_eq!(
            out.iter().map(summary).collect::<Vec<_>>(),
            ["GET /slow 0 timeout"]
        );
        t.conn.expire(u64::MAX / 2 + 1, 5_000_000_000, &mut out);
        assert_eq!(out.len(), 1);
        // The late answer is not reported again.
        t.resp(&ok(1));
        t.close();
        assert_eq!(t.got(), ["GET /streaming 200 connection_closed"]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn a_request_still_being_sent_is_not_waiting() {
        let mut t = Conn::server();
        // Client streaming: the answer comes after the last message.
        let fields = block(&[
            POST,
            &lit(":path", "/p.S/Upload"),
            &lit("content-type", "application/grpc"),
        ]);
        t.req(&headers(1, 0, &fields));
        t.req(&data(1, 0, 10));
        let mut out = Vec::new();
        t.conn.expire(u64::MAX / 2, 5_000_000_000, &mut out);
        assert!(out.is_empty());
        t.req(&data(1, END_STREAM, 10));
        t.conn.expire(u64::MAX / 2, 5_000_000_000, &mut out);
        let got: Vec<_> = out.iter().map(summary).collect();
        assert_eq!(got, ["grpc p.S/Upload - timeout"]);
    }

    #[test]
    fn gap_inside_data_is_fine() {
        let mut t = Conn::server();
        t.req(&headers(1, 0, &block(&[POST, &lit(":path", "/upload")])));
        let body = data(1, END_STREAM, 10_000);
        t.req(&body[..100]);
        t.req_gap(9_000);
        t.req(&body[9_100..]);
        let response = data(1, END_STREAM, 5000);
        t.resp(&headers(1, 0, STATUS_200));
        t.resp(&response[..50]);
        let end = t.resp_gap(response.len() as u64 - 50);
        t.req(&get(3, "/next"));
        t.resp(&ok(3));
        assert_eq!(t.got(), ["POST /upload 200", "GET /next 200"]);
        assert_eq!(t.out[0].end_ns, end);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn gap_over_frame_headers_resyncs_and_degrades() {
        let mut t = Conn::server();
        // An indexed path, referred to later.
        t.req(&headers(
            1,
            END_STREAM,
            &block(&[GET, &lit_indexed(":path", "/indexed")]),
        ));
        t.resp(&ok(1));
        // Lost: whatever the client sent here may have added entries.
        t.req_gap(300);
        t.req(&headers(5, END_STREAM, &[0x82, 0xbe]));
        t.req(&get(7, "/literal"));
        t.resp(&ok(5));
        t.resp(&ok(7));
        // Stream 3 went by in the gap: its response is unmatched.
        t.resp(&ok(3));
        assert_eq!(
            t.got(),
            ["GET /indexed 200", "GET  200", "GET /literal 200"]
        );
        assert_eq!(t.counts(), (1, 0, 1, 1));
    }

    #[test]
    fn lost_response_frames_are_unmatched_at_close() {
        let mut t = Conn::server();
        t.req(&get(1, "/a"));
        t.req(&get(3, "/b"));
        t.resp(&headers(1, 0, STATUS_200));
        t.resp_gap(500);
        t.resp(&ok(3));
        t.close();
        assert_eq!(t.got(), ["GET /b 200"]);
        assert_eq!(t.counts(), (1, 1, 0, 0));
    }

    #[test]
    fn gap_inside_a_header_block_loses_only_the_block() {
        let mut t = Conn::server();
        let request = get(1, "/will-be-lost");
        t.req(&request[..12]);
        t.req_gap(5);
        t.req(&request[17..]);
        t.req(&get(3, "/fine"));
        t.resp(&ok(1));
        t.resp(&ok(3));
        assert_eq!(t.got(), ["  200", "GET /fine 200"]);
        assert_eq!(t.counts(), (1, 0, 0, 1));
    }

    #[test]
    fn a_response_block_that_cannot_be_decoded_still_counts() {
        let mut t = Conn::server();
        t.req(&get(1, "/x"));
        // Index 70 into an empty table.
        t.resp(&headers(1, 0, &[0x80 | 70]));
        t.resp(&data(1, END_STREAM, 2));
        assert_eq!(t.got(), ["GET /x 0"]);
        assert_eq!(t.counts(), (0, 0, 0, 1));
        // The table is unknown from there: static entries still decode.
        t.req(&get(3, "/y"));
        t.resp(&ok(3));
        assert_eq!(t.got()[1], "GET /y 200");
    }

    #[test]
    fn oversized_header_block_is_counted_off() {
        let mut t = Conn::server();
        let mut fields = block(&[GET, &lit(":path", "/big")]);
        while fields.len() <= MAX_BLOCK {
            fields.extend(lit_indexed("cookie", &"c".repeat(100)));
        }
        let mut bytes = Vec::new();
        let mut chunks = fields.chunks(16_000).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let kind = if first { HEADERS } else { CONTINUATION };
            let flags = if last { END_HEADERS } else { 0 } | if first { END_STREAM } else { 0 };
            bytes.extend(frame(kind, flags, 1, chunk));
            first = false;
        }
        for piece in bytes.chunks(4096) {
            t.req(piece);
        }
        t.resp(&ok(1));
        assert_eq!(t.got(), ["  200"]);
        assert_eq!(t.counts(), (0, 0, 0, 1));
        assert!(t.conn.req.hpack.is_degraded());
    }

    #[test]
    fn frame_longer_than_allowed_is_a_resync() {
        let mut t = Conn::server();
        // The server allows 16384 (said explicitly).
        t.resp(&settings(&[(SETTINGS_MAX_FRAME_SIZE, 16_384)]));
        t.req(&get(1, "/a"));
        let mut bytes = frame(DATA, 0, 1, &[]);
        bytes[..3].copy_from_slice(&[0, 0x80, 0]); // 32768
        t.req(&bytes);
        t.req(&[0x41; 100]);
        t.req(&get(3, "/b"));
        t.resp(&ok(1));
        t.resp(&ok(3));
        assert_eq!(t.got(), ["GET /a 200", "GET /b 200"]);
        assert_eq!(t.counts(), (1, 0, 0, 0));
        // A larger limit, once announced, is accepted.
        t.resp(&settings(&[(SETTINGS_MAX_FRAME_SIZE, 65_536)]));
        t.req(&headers(5, 0, &block(&[POST, &lit(":path", "/c")])));
        t.req(&data(5, END_STREAM, 40_000));
        t.resp(&ok(5));
        assert_eq!(t.got()[2], "POST /c 200");
        assert_eq!(t.counts(), (1, 0, 0, 0));
    }

    #[test]
    fn mid_stream_degrades_and_counts_only_what_it_saw() {
        let mut t = Conn::new(Side::Server, Start::MidStream);
        // The tail of a DATA payload, then a response to a request we
        // never saw.
        t.req(b"\x17\x42tail of some payload bytes");
        let mut bytes = data(1, 0, 10);
        bytes.extend(data(1, END_STREAM, 0));
        t.resp(&bytes);
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
        // Requests referring to the dynamic table built before we came.
        let mut requests = headers(9, END_STREAM, &[0x82, 0xc0]);
        requests.extend(headers(
            11,
            END_STREAM,
            &block(&[GET, &lit(":path", "/known")]),
        ));
        t.req(&requests);
        t.resp(&ok(7));
        t.resp(&headers(9, END_STREAM, &[0xbf]));
        t.resp(&ok(11));
        t.close();
        assert_eq!(t.got(), ["GET  0", "GET /known 200"]);
        assert_eq!(t.counts(), (0, 0, 0, 1));
    }

    #[test]
    fn mid_stream_gives_up_on_other_protocols() {
        let mut t = Conn::new(Side::Server, Start::MidStream);
        for _ in 0..=MAX_SEEK_PIECES {
            assert_ne!(t.conn.verdict(), Verdict::Done);
            t.req(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
        }
        assert_eq!(t.conn.verdict(), Verdict::Done);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn upgraded_connection_answers_stream_one() {
        let mut t = Conn::with(
            Http2Conn::upgraded(Side::Server, "GET".into(), "/up?q=1".into(), 5),
            Side::Server,
        );
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
        t.req(PREFACE);
        t.req(&settings(&[]));
        t.resp(&settings(&[]));
        t.resp(&headers(1, 0, STATUS_200));
        let end = t.resp(&data(1, END_STREAM, 10));
        t.req(&get(3, "/next"));
        t.resp(&ok(3));
        assert_eq!(t.got(), ["GET /up 200", "GET /next 200"]);
        assert_eq!((t.out[0].start_ns, t.out[0].end_ns), (5, end));
    }

    #[test]
    fn streams_are_capped() {
        let mut t = Conn::server();
        let mut bytes = Vec::new();
        for i in 0..MAX_STREAMS + 10 {
            bytes.extend(get(2 * i as u32 + 1, "/s"));
        }
        t.req(&bytes);
        assert_eq!(t.conn.book.streams.len(), MAX_STREAMS);
        assert_eq!(t.c.unmatched_requests, 10);
        t.close();
        assert_eq!(t.out.len(), MAX_STREAMS);
        assert_eq!(t.c.unmatched_requests, 10);
    }

    #[test]
    fn client_side_sees_the_same() {
        let mut t = Conn::new(Side::Client, Start::Fresh);
        t.req(PREFACE);
        t.req(&grpc_request(1, "/a.B/C"));
        t.resp(&grpc_response(1, "0"));
        assert_eq!(t.got(), ["grpc a.B/C 0"]);
    }

    #[test]
    fn detection() {
        assert_eq!(Http2Conn::detect(true, PREFACE), Detection::Yes);
        assert_eq!(Http2Conn::detect(true, &PREFACE[..5]), Detection::NeedMore);
        assert_eq!(Http2Conn::detect(true, b"PRI * HTTP/1.1"), Detection::No);
        assert_eq!(Http2Conn::detect(true, b"GET / HTTP/1.1"), Detection::No);
        assert_eq!(
            Http2Conn::detect(false, &settings(&[(4, 65535)])),
            Detection::Yes
        );
        assert_eq!(Http2Conn::detect(false, &[0, 0, 6]), Detection::NeedMore);
        assert_eq!(
            Http2Conn::detect(false, b"J\x00\x00\x00\n8.0"),
            Detection::No
        );
        assert_eq!(
            Http2Conn::detect(false, &frame(PING, 0, 0, &[0; 8])),
            Detection::No
        );
    }

    #[test]
    fn paths() {
        assert_eq!(request_path("/a/b?x=1#f"), "/a/b");
        assert_eq!(request_path("http://host:8080/p?q"), "/p");
        assert_eq!(request_path("*"), "*");
        assert_eq!(
            grpc_names("/pkg.Svc/Method".into()),
            ("pkg.Svc".into(), "Method".into())
        );
        assert_eq!(grpc_names("/odd".into()), ("odd".into(), String::new()));
    }

    #[test]
    fn per_connection_state_is_small() {
        let size = std::mem::size_of::<Http2Conn>();
        // Thousands of connections each hold one.
        assert!(size <= 448, "Http2Conn is {size} bytes");
        let t = Http2Conn::new(Side::Server, Start::MidStream);
        assert!(t.req.seeking.is_none() && t.book.streams.capacity() == 0);
    }

    /// Valid frames, mutations, junk and gaps in random pieces: no panic,
    /// bounded state, sane exchanges.
    #[test]
    fn fuzz_never_panics_and_stays_bounded() {
        let parts: Vec<Vec<u8>> = vec![
            PREFACE.to_vec(),
            settings(&[(1, 0), (SETTINGS_MAX_FRAME_SIZE, 20_000)]),
            get(1, "/a"),
            get(3, "/b?c"),
            grpc_request(5, "/p.S/M"),
            grpc_response(5, "0"),
            ok(1),
            ok(3),
            headers(7, END_STREAM, &[0xbe, 0xbf, 0x3f, 0xe1, 0x1f]),
            headers(9, 0, &lit_indexed(":path", "/x")),
            frame(HEADERS, END_STREAM, 11, &[0x82]),
            frame(CONTINUATION, END_HEADERS, 11, &lit(":path", "/c")),
            frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]),
            frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]),
            frame(
                PUSH_PROMISE,
                END_HEADERS | PADDED,
                1,
                &[1, 0, 0, 0, 2, 0x82, 0],
            ),
            frame(PING, ACK, 0, &[1; 8]),
            data(1, END_STREAM, 30),
            frame(DATA, PADDED, 3, &[200, 1, 2]),
            vec![0xff; 12],
            vec![0, 0, 0, 0],
        ];
        for seed in 1..400u64 {
            let mut rng = crate::testutil::XorShift(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
            let start = if rng.below_usize(3) == 0 {
                Start::MidStream
            } else {
                Start::Fresh
            };
            let side = if rng.below_usize(2) == 0 {
                Side::Server
            } else {
                Side::Client
            };
            let mut conn = Http2Conn::new(side, start);
            let mut c = ParserCounters::default();
            let mut out = Vec::new();
            let mut ts = 0;
            for round in 0..rng.below_usize(120) {
                ts += 1;
                let outbound = rng.below_usize(2) == 0;
                if rng.below_usize(10) == 0 {
                    let n = rng.next() % [3, 100, 100_000, u64::MAX][rng.below_usize(4)];
                    conn.on_piece(outbound, Piece::Gap(n), ts, &mut c, &mut out);
                    continue;
                }
                let mut bytes = Vec::new();
                if round == 0 && rng.below_usize(4) != 0 {
                    bytes.extend_from_slice(PREFACE);
                }
                for _ in 0..rng.below_usize(4) + 1 {
                    bytes.extend_from_slice(&parts[rng.below_usize(parts.len())]);
                }
                rng.corrupt(&mut bytes);
                crate::testutil::feed_in_random_pieces(
                    &mut conn, &mut rng, outbound, &bytes, ts, &mut c, &mut out,
                );
                if rng.below_usize(20) == 0 {
                    conn.expire(ts, rng.below(5), &mut out);
                }
                for framer in [&conn.req, &conn.resp] {
                    assert!(framer
                        .block
                        .as_ref()
                        .is_none_or(|b| b.bytes.len() <= MAX_BLOCK));
                }
                assert!(conn.book.streams.len() <= MAX_STREAMS);
            }
            conn.on_close(ts + 1, &mut c, &mut out);
            for e in &out {
                assert!(e.start_ns <= e.end_ns, "seed {seed}: {e:?}");
                if let Call::Http(h) = &e.call {
                    assert!(!h.path.contains('?'), "seed {seed}: {e:?}");
                }
            }
        }
    }

    /// Pure noise in every mode.
    #[test]
    fn random_bytes_never_panic() {
        for seed in 1..300u64 {
            let mut rng = crate::testutil::XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let start = if seed % 2 == 0 {
                Start::MidStream
            } else {
                Start::Fresh
            };
            let mut conn = Http2Conn::new(Side::Server, start);
            let mut c = ParserCounters::default();
            let mut out = Vec::new();
            for ts in 0..50 {
                let len = rng.below_usize(300);
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if rng.below_usize(2) == 0 {
                    // Small lengths and known types make frames more likely.
                    for b in bytes.iter_mut().step_by(3) {
                        *b &= 0x0f;
                    }
                }
                conn.on_piece(
                    rng.below_usize(2) == 0,
                    Piece::Data(&bytes),
                    ts,
                    &mut c,
                    &mut out,
                );
            }
            conn.on_close(100, &mut c, &mut out);
        }
    }
}
