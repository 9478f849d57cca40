//! HTTP/1.x for one connection, both directions.
//!
//! Input: the connection's two byte streams as ordered `Piece`s from
//! `reassembly` (via `conntrack`), each tagged with the direction and the
//! timestamp of the syscall that carried it. Output: one `Exchange` per
//! request answered by a final response, pushed onto the caller's vector,
//! and loss counts in `ParserCounters`.
//!
//! Each direction is a small state machine over message framing: a header
//! (parsed by `httparse`, buffered only when it spans pieces and never
//! beyond `MAX_HEAD`), then a body that is skipped by counting (fixed length,
//! chunked, or until close), never copied. Gaps are fine inside a body and
//! fatal inside a header. When the stream stops making sense the direction
//! resyncs: it counts the event once and skips to the next plausible message
//! start, rather than failing the connection. Header values are looked at
//! only for framing and never stored; only the method and the path without
//! its query leave this module.
//!
//! Requests are queued as their header is parsed and paired with final
//! responses in order. Timestamps keep losses from shifting that pairing: a
//! response that began before the oldest waiting request began cannot be
//! its answer; and requests whose answers were lost are dropped rather than
//! left to pair with the next answer (see `pair`).

use std::collections::VecDeque;

use httparse::{Header, ParserConfig, Status};
use std::mem::MaybeUninit;

use super::{
    detect::Detection, len64, Call, ConnParser, Exchange, Failure, HttpCall, ParserCounters, Piece,
    Side, Spec, Start, Verdict,
};

/// Largest header section we buffer; anything longer is treated as garbage.
const MAX_HEAD: usize = 16 * 1024;

/// Requests waiting for responses, per connection. Deeper than any sane
/// pipeline; reaching it means responses are being lost.
const MAX_WAITING: usize = 64;

/// Headers parsed without a heap allocation; more fall back to the heap.
const INLINE_HEADERS: usize = 64;

/// A header spanning pieces is re-parsed when a new line arrives only
/// while it is shorter than this, so that junk is noticed early without
/// making a long header quadratic; past it, only at its end.
const EARLY_PARSE: usize = 2048;

/// A guessed message start is re-checked against the known starts (method
/// or status-line prefix) while the header is shorter than this.
const PREFIX_CHECK: usize = 24;

/// Longest chunk extension accepted.
const MAX_CHUNK_EXT: u16 = 4096;

/// Longest trailer section accepted.
const MAX_TRAILER: u16 = 16 * 1024;

/// Request-direction pieces examined on a connection of unknown protocol
/// found mid-stream before deciding it is not HTTP.
const MAX_SEEK_PIECES: u16 = 1024;

/// Request pieces of junk a sniffed connection may send before the server's
/// answer, after which it is taken for another protocol.
const MAX_JUNK_PIECES: u16 = 16;

/// How a connection's first bytes are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// New connection of unknown protocol: if it does not start like HTTP,
    /// give up quietly.
    Sniff,
    /// The port is known to serve HTTP: garbage is a resync.
    KnownHttp,
    /// Found already open: skip silently to the first message start.
    MidStream,
}

/// What a connection turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Still sniffing.
    Unknown,
    /// Speaks HTTP/1.x: a request was parsed, or the port is known to.
    Http,
    /// Gave up: stop feeding it.
    NotHttp,
    /// Upgrade or CONNECT done: stop feeding it.
    Upgraded,
}

/// One HTTP/1.x connection as seen by the traced process.
#[derive(Debug)]
pub struct Http1Conn {
    side: Side,
    mode: Mode,
    state: ConnState,
    req: Stream,
    resp: Stream,
    /// Requests whose header was seen, oldest first.
    waiting: VecDeque<Waiting>,
    /// The response whose body is being skipped.
    answer: Option<Answer>,
    /// Waiting requests (or ones about to arrive) believed never to be
    /// answered: one per response lost in the response direction, and one
    /// per unmatched response, whose request may yet arrive late in a burst
    /// (reassembly releasing chunks held behind a lost one). See `pair`.
    stale: u8,
    /// Responses that began before this did not answer a request we saw
    /// (MidStream before its first request); they are dropped uncounted.
    count_from_ns: u64,
    /// Request pieces looked at while the protocol is unknown.
    seek_pieces: u16,
    /// The first request bytes of a sniffed connection were not HTTP: junk
    /// sent to an HTTP server, or another protocol. Nothing is parsed until
    /// the server's answer tells which (see `on_junk_first`).
    junk_first: bool,
    /// The request a 101 switched to HTTP/2 with (`Upgrade: h2c`), until
    /// the dispatcher hands it over.
    h2c: Option<Box<H2cUpgrade>>,
    /// Bytes of the current response's body so far, chunk framing
    /// included, whether seen or lost in a gap: what the server sent after
    /// the header.
    resp_body: u64,
}

/// What HTTP/2 takes over after `Upgrade: h2c`.
#[derive(Debug, PartialEq, Eq)]
pub struct H2cHandover {
    /// Method, path and start of the upgraded request; None if it was
    /// already reported as timed out.
    pub request: Option<(String, String, u64)>,
    /// Response bytes after the 101, and their piece's timestamp.
    pub rest: Vec<u8>,
    pub rest_ts: u64,
}

/// An accepted `Upgrade: h2c`, for the dispatcher to hand to HTTP/2.
#[derive(Debug)]
struct H2cUpgrade {
    request: Waiting,
    /// Response bytes after the 101's header in the same piece (the
    /// server's first HTTP/2 frames), at most `MAX_HEAD`.
    rest: Vec<u8>,
    rest_ts: u64,
}

/// One direction's framing state.
#[derive(Debug)]
struct Stream {
    phase: Phase,
    /// Header bytes spanning pieces; empty, unallocated, otherwise.
    head: Vec<u8>,
    /// Timestamp of the piece holding the current message's first byte.
    start_ns: u64,
    /// Timestamp of the last piece consumed by the current body.
    last_ns: u64,
    /// The current header began at a guessed boundary; on failure go back
    /// to this phase without counting anything.
    tentative: Option<Phase>,
    /// Request direction: the request being read asked to switch protocols.
    upgrading: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// At a message boundary.
    Idle,
    /// Inside a header.
    Head,
    /// Body bytes still to skip.
    Body(u64),
    Chunked(Chunk),
    /// A gap swallowed chunk framing: waiting for the last-chunk marker
    /// (the last bytes seen are kept in `recent`) or for a piece that
    /// starts the next message.
    ChunkLost {
        recent: u64,
    },
    /// Response body delimited by the connection closing.
    UntilClose,
    /// Skipping to a plausible message start.
    Seek(Seek),
    /// Request direction after an Upgrade or CONNECT request: what follows
    /// may be another protocol, so only a piece that starts with a request
    /// is parsed, and nothing counts as an error, until the response says
    /// whether the switch happened.
    AwaitUpgrade,
    /// Nothing more to parse.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seek {
    /// At any byte (after malformed input).
    Anywhere,
    /// Only where a piece starts (mid-stream: a message usually starts
    /// with a syscall, while a body can contain anything).
    PieceStart,
}

/// Chunked transfer coding, one byte of framing at a time, so that framing
/// split across pieces needs no buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: extensions or whitespace, up to the line end.
    Ext {
        value: u64,
        len: u16,
    },
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd {
        cr: bool,
    },
    /// Trailer lines after the last chunk, up to an empty line.
    Trailer {
        line: u16,
        total: u16,
    },
}

enum ChunkStep {
    More,
    Done,
    Invalid,
}

#[derive(Debug)]
struct Waiting {
    method: String,
    path: String,
    start_ns: u64,
    kind: RequestKind,
    /// Already reported as timed out: its late answer is not reported again.
    timed_out: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    Plain,
    /// Its response has no body.
    Head,
    /// A 2xx answer turns the connection into a tunnel.
    Connect,
    /// Carries `Upgrade`: a 101 answer switches protocols.
    Upgrade,
    /// `Upgrade: h2c`: a 101 answer switches to HTTP/2, whose stream 1
    /// carries this request's real response.
    UpgradeH2c,
}

#[derive(Debug)]
struct Answer {
    /// None when no request was waiting: the body is still skipped.
    request: Option<Waiting>,
    status: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Req,
    Resp,
}

/// Why the current message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Malformed,
    Lost,
}

/// What one header parse found.
enum Parsed {
    /// The header was complete and `usize` bytes long; the phase is set.
    Done(usize),
    Partial,
    Invalid,
}

/// How a message's body is delimited, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
    /// Transfer-Encoding without chunked last: length unknown.
    Unknowable,
    /// Contradictory Content-Length values.
    Invalid,
}

struct RequestHead {
    method: String,
    path: String,
    body: Body,
    upgrade: bool,
    /// `Upgrade` offers `h2c` (the value is looked at for that token only).
    h2c: bool,
}

struct ResponseHead {
    status: u16,
    body: Body,
}

/// Methods recognised at a guessed request start: RFC 9110's, PATCH, and
/// the WebDAV, CalDAV and cache extensions seen in practice. `PRI` (the
/// HTTP/2 preface) is deliberately absent.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"MKCALENDAR",
    b"ACL",
    b"BIND",
    b"UNBIND",
    b"REBIND",
    b"LINK",
    b"UNLINK",
    b"PURGE",
    b"QUERY",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"M-SEARCH",
    b"MKWORKSPACE",
    b"VERSION-CONTROL",
    b"BASELINE-CONTROL",
    b"UNCHECKOUT",
    b"UPDATE",
    b"LABEL",
    b"ORDERPATCH",
];

const STATUS_STARTS: [&[u8]; 2] = [b"HTTP/1.1 ", b"HTTP/1.0 "];

/// Cheap test used by the caller: do these bytes start like an HTTP/1
/// request (a known method followed by a space)?
pub fn looks_like_request(bytes: &[u8]) -> bool {
    METHODS
        .iter()
        .any(|m| bytes.starts_with(m) && bytes.get(m.len()) == Some(&b' '))
}

/// Do these bytes start like an HTTP/1.0 or HTTP/1.1 status line?
pub fn looks_like_response(bytes: &[u8]) -> bool {
    STATUS_STARTS.iter().any(|s| bytes.starts_with(s))
}

/// `bytes` is, or could become once more bytes arrive, a message start.
fn could_start(dir: Dir, bytes: &[u8]) -> bool {
    match dir {
        Dir::Req => {
            // Every method starts with an uppercase letter: skip the list
            // quickly on anything else while scanning junk.
            bytes.first().is_some_and(u8::is_ascii_uppercase)
                && METHODS.iter().any(|m| {
                    let n = bytes.len().min(m.len());
                    bytes.get(..n) == m.get(..n)
                        && (bytes.len() <= m.len() || bytes.get(m.len()) == Some(&b' '))
                })
        }
        Dir::Resp => STATUS_STARTS.iter().any(|s| {
            let n = bytes.len().min(s.len());
            bytes.get(..n) == s.get(..n)
        }),
    }
}

fn starts_message(dir: Dir, bytes: &[u8]) -> bool {
    match dir {
        Dir::Req => looks_like_request(bytes),
        Dir::Resp => looks_like_response(bytes),
    }
}

impl Spec for Http1Conn {
    const NAME: &'static str = "http1";

    fn start(side: Side, start: Start) -> Self {
        match start {
            // Detected from a request start; a port known to serve HTTP
            // uses `Mode::KnownHttp` (see `Parser::known`).
            Start::Fresh => Self::new(side, Mode::Sniff),
            Start::MidStream => Self::new(side, Mode::MidStream),
        }
    }

    fn detect(from_client: bool, bytes: &[u8]) -> Detection {
        if !from_client {
            Detection::No
        } else if looks_like_request(bytes) {
            Detection::Yes
        } else if could_start(Dir::Req, bytes) {
            Detection::NeedMore
        } else {
            Detection::No
        }
    }

    fn traced_on(_: Side) -> bool {
        true
    }
}

impl ConnParser for Http1Conn {
    fn on_piece(
        &mut self,
        outbound: bool,
        piece: Piece<'_>,
        ts_ns: u64,
        counters: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        Http1Conn::on_piece(self, outbound, piece, ts_ns, counters, out);
    }

    fn on_close(&mut self, ts_ns: u64, counters: &mut ParserCounters, out: &mut Vec<Exchange>) {
        Http1Conn::on_close(self, ts_ns, counters, out);
    }

    fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<Exchange>) {
        Http1Conn::expire(self, now_ns, timeout_ns, out);
    }

    fn verdict(&self) -> Verdict {
        match self.state {
            ConnState::Unknown => Verdict::Unknown,
            ConnState::Http => Verdict::Speaks,
            ConnState::NotHttp | ConnState::Upgraded => Verdict::Done,
        }
    }
}

impl Http1Conn {
    /// A connection where the traced process is `side`; allocates nothing.
    pub fn new(side: Side, mode: Mode) -> Self {
        let (state, first, count_from_ns) = match mode {
            Mode::Sniff => (ConnState::Unknown, Phase::Idle, 0),
            Mode::KnownHttp => (ConnState::Http, Phase::Idle, 0),
            Mode::MidStream => (ConnState::Unknown, Phase::Seek(Seek::PieceStart), u64::MAX),
        };
        Self {
            side,
            mode,
            state,
            req: Stream::new(first),
            resp: Stream::new(first),
            waiting: VecDeque::new(),
            answer: None,
            stale: 0,
            count_from_ns,
            seek_pieces: 0,
            junk_first: false,
            h2c: None,
            resp_body: 0,
        }
    }

    /// `outbound` = true for bytes the traced process wrote, false for
    /// bytes it read. With `Side::Server` requests are inbound (read) and
    /// responses outbound; with `Side::Client` the reverse.
    pub fn on_piece(
        &mut self,
        outbound: bool,
        piece: Piece<'_>,
        ts_ns: u64,
        counters: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if self.finished() || piece == Piece::Data(&[]) || piece == Piece::Gap(0) {
            return;
        }
        let dir = if outbound == (self.side == Side::Client) {
            Dir::Req
        } else {
            Dir::Resp
        };
        if self.junk_first {
            self.on_junk_first(dir, piece, ts_ns, counters, out);
            return;
        }
        if dir == Dir::Resp
            && self.state == ConnState::Unknown
            && self.mode == Mode::Sniff
            && self.req.phase == Phase::Idle
        {
            // An HTTP server never speaks first: this is MySQL, SMTP, ...
            self.give_up();
            return;
        }
        match piece {
            Piece::Data(bytes) => self.on_data(dir, bytes, ts_ns, false, counters, out),
            Piece::Gap(n) => self.on_gap(dir, n, ts_ns, counters, out),
        }
    }

    /// The connection closed at `ts_ns`: a response delimited by connection
    /// close completes now; requests still waiting are counted unmatched.
    pub fn on_close(&mut self, ts_ns: u64, counters: &mut ParserCounters, out: &mut Vec<Exchange>) {
        if self.state == ConnState::NotHttp {
            return;
        }
        let end_ns = match self.resp.phase {
            Phase::UntilClose | Phase::Body(_) | Phase::Chunked(_) => Some(ts_ns),
            // The body most likely ended unseen long before the close.
            Phase::ChunkLost { .. } => Some(self.resp.last_ns),
            _ => None,
        };
        if let (Some(end_ns), Some(answer)) = (end_ns, self.answer.take()) {
            emit(answer, Some(self.resp_body), end_ns, out);
        }
        // Requests whose answers were lost are not the close's doing.
        let lost = usize::from(self.stale).min(self.waiting.len());
        counters.unmatched_requests += len64(lost);
        for request in std::mem::take(&mut self.waiting).into_iter().skip(lost) {
            fail(request, Failure::ConnectionClosed, ts_ns, out);
        }
        self.stop();
    }

    /// Requests waiting since before `now_ns - timeout_ns` are reported as
    /// timed out (once); a late answer still pairs with them, unreported.
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<Exchange>) {
        let Some(cutoff) = now_ns.checked_sub(timeout_ns) else {
            return;
        };
        for request in &mut self.waiting {
            if request.start_ns > cutoff {
                break;
            }
            if !request.timed_out {
                request.timed_out = true;
                out.push(Exchange {
                    call: http_call(request.method.clone(), request.path.clone(), 0),
                    failure: Some(Failure::Timeout),
                    start_ns: request.start_ns,
                    end_ns: now_ns,
                    response_body_bytes: None,
                });
            }
        }
    }

    /// After `Upgrade: h2c` was accepted: the upgraded request, whose
    /// response HTTP/2's stream 1 carries, and the response bytes that
    /// followed the 101 in its piece.
    pub fn take_h2c_upgrade(&mut self) -> Option<H2cHandover> {
        let upgrade = self.h2c.take()?;
        let request = upgrade.request;
        Some(H2cHandover {
            request: (!request.timed_out).then_some((
                request.method,
                request.path,
                request.start_ns,
            )),
            rest: upgrade.rest,
            rest_ts: upgrade.rest_ts,
        })
    }

    /// What this connection turned out to be.
    pub fn state(&self) -> ConnState {
        self.state
    }

    fn finished(&self) -> bool {
        matches!(self.state, ConnState::NotHttp | ConnState::Upgraded)
    }

    fn stream(&mut self, dir: Dir) -> &mut Stream {
        match dir {
            Dir::Req => &mut self.req,
            Dir::Resp => &mut self.resp,
        }
    }

    /// The first request of a sniffed connection is being read.
    fn sniffing(&self, dir: Dir) -> bool {
        dir == Dir::Req && self.state == ConnState::Unknown && self.mode == Mode::Sniff
    }

    fn on_data(
        &mut self,
        dir: Dir,
        bytes: &[u8],
        ts: u64,
        rescan: bool,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if !rescan
            && dir == Dir::Req
            && self.state == ConnState::Unknown
            && matches!(self.req.phase, Phase::Seek(_))
        {
            self.seek_pieces = self.seek_pieces.saturating_add(1);
            if self.seek_pieces > MAX_SEEK_PIECES {
                self.give_up();
                return;
            }
        }
        let mut rest = bytes;
        while !rest.is_empty() && !self.finished() {
            let at_start = !rescan && rest.len() == bytes.len();
            let before = self.stream(dir).phase;
            let used = self.step(dir, rest, ts, at_start, rescan, c, out);
            let stuck = used == 0 && self.stream(dir).phase == before;
            debug_assert!(!stuck, "http1 parser made no progress in {before:?}");
            // Never spin on input the state machine cannot place.
            let used = if stuck { rest.len() } else { used };
            rest = rest.get(used..).unwrap_or_default();
        }
        if let Some(upgrade) = self.h2c.as_mut() {
            if dir == Dir::Resp && upgrade.rest.is_empty() && rest.len() <= MAX_HEAD {
                upgrade.rest = rest.to_vec();
            }
        }
    }

    /// Advances one direction over the front of `rest`; returns the bytes
    /// used. Using none is fine only when the phase changed.
    #[expect(
        clippy::too_many_arguments,
        reason = "the per-piece context, passed down rather than stored per connection"
    )]
    fn step(
        &mut self,
        dir: Dir,
        rest: &[u8],
        ts: u64,
        at_start: bool,
        rescan: bool,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        let sniffing = self.sniffing(dir);
        let s = self.stream(dir);
        match s.phase {
            Phase::Stopped => rest.len(),
            Phase::UntilClose => {
                self.add_body(dir, len64(rest.len()));
                rest.len()
            }
            Phase::Idle => {
                // Stray line ends between messages are allowed (RFC 9112
                // section 2.2), and the message starts after them.
                let blank = rest
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
                if blank > 0 {
                    return blank;
                }
                if sniffing && !could_start(dir, rest) {
                    self.wait_for_answer();
                    return rest.len();
                }
                s.phase = Phase::Head;
                s.start_ns = ts;
                s.tentative = None;
                0
            }
            Phase::Head => self.head(dir, rest, ts, c, out),
            Phase::Body(left) => {
                s.last_ns = ts;
                let used = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - len64(used);
                if left > 0 {
                    s.phase = Phase::Body(left);
                }
                self.add_body(dir, len64(used));
                if left == 0 {
                    self.complete(dir, ts, out);
                }
                used
            }
            Phase::Chunked(mut chunk) => {
                s.last_ns = ts;
                let (used, outcome) = chunk.advance(rest);
                s.phase = Phase::Chunked(chunk);
                self.add_body(dir, len64(used));
                match outcome {
                    ChunkStep::More => {}
                    ChunkStep::Done => self.complete(dir, ts, out),
                    ChunkStep::Invalid => {
                        // The header was fine: the response still answers
                        // its request, ending where its framing broke.
                        if dir == Dir::Resp {
                            if let Some(answer) = self.answer.take() {
                                emit(answer, Some(self.resp_body), ts, out);
                            }
                        }
                        self.fail(dir, Cause::Malformed, c);
                    }
                }
                used
            }
            Phase::ChunkLost { recent } => {
                if at_start && starts_message(dir, rest) {
                    let last = s.last_ns;
                    self.complete(dir, last, out);
                    return 0;
                }
                // The last chunk with no trailers, after its data's CRLF.
                const MARKER: u64 = u64::from_be_bytes(*b"\0\r\n0\r\n\r\n");
                const MASK: u64 = (1 << 56) - 1;
                let mut recent = recent;
                for (i, &b) in rest.iter().enumerate() {
                    recent = (recent << 8) | u64::from(b);
                    if recent & MASK == MARKER {
                        self.add_body(dir, len64(i + 1));
                        self.complete(dir, ts, out);
                        return i + 1;
                    }
                }
                s.phase = Phase::ChunkLost { recent };
                s.last_ns = ts;
                self.add_body(dir, len64(rest.len()));
                rest.len()
            }
            Phase::Seek(kind) => {
                let found = if kind == Seek::Anywhere || rescan {
                    (0..rest.len()).find(|&i| could_start(dir, rest.get(i..).unwrap_or_default()))
                } else if at_start && could_start(dir, rest) {
                    Some(0)
                } else {
                    None
                };
                self.begin_guess(dir, found, rest, ts, Phase::Seek(kind))
            }
            Phase::AwaitUpgrade => {
                let found = (at_start && could_start(dir, rest)).then_some(0);
                self.begin_guess(dir, found, rest, ts, Phase::AwaitUpgrade)
            }
        }
    }

    /// Starts a header at a guessed position `found` in `rest`, or skips
    /// `rest` if there is none.
    fn begin_guess(
        &mut self,
        dir: Dir,
        found: Option<usize>,
        rest: &[u8],
        ts: u64,
        resume: Phase,
    ) -> usize {
        let s = self.stream(dir);
        match found {
            Some(at) => {
                s.phase = Phase::Head;
                s.start_ns = ts;
                s.tentative = Some(resume);
                at
            }
            None => rest.len(),
        }
    }

    /// Reads header bytes from the front of `rest`, straight from the piece
    /// when the header is whole in it, through `head` otherwise.
    fn head(
        &mut self,
        dir: Dir,
        rest: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        if self.stream(dir).head.is_empty() {
            let window = rest.get(..MAX_HEAD).unwrap_or(rest);
            return match self.parse(dir, window, ts, c, out) {
                Parsed::Done(n) => n,
                Parsed::Partial if rest.len() < MAX_HEAD => {
                    self.stream(dir).head.extend_from_slice(rest);
                    rest.len()
                }
                Parsed::Partial | Parsed::Invalid => {
                    self.fail(dir, Cause::Malformed, c);
                    // Look for the next start from the following byte on.
                    1
                }
            };
        }
        let guarded = self.sniffing(dir) || self.stream(dir).tentative.is_some();
        let s = self.stream(dir);
        let old = s.head.len();
        let take = rest.len().min(MAX_HEAD.saturating_sub(old));
        let new = rest.get(..take).unwrap_or(rest);
        s.head.extend_from_slice(new);
        // A guessed start that stops looking like one is dropped at once.
        let not_a_start = guarded && old < PREFIX_CHECK && !could_start(dir, &s.head);
        // Parsing on every append would make a header that trickles in
        // quadratic. Parse when it may have ended, while it is short and a
        // line ended (so junk is caught early), or when a byte no header
        // holds arrived (binary junk; the bytes may also follow a complete
        // header, so the parse decides).
        let ended = s
            .head
            .get(old.saturating_sub(2)..)
            .is_some_and(|tail| contains(tail, b"\n\n") || contains(tail, b"\n\r\n"));
        let new_line = old < EARLY_PARSE && new.contains(&b'\n');
        let control = new.iter().any(|&b| is_forbidden(b));
        if !not_a_start && !ended && !new_line && !control && s.head.len() < MAX_HEAD {
            return take;
        }
        let buf = std::mem::take(&mut s.head);
        let parsed = if not_a_start {
            Parsed::Invalid
        } else {
            self.parse(dir, &buf, ts, c, out)
        };
        match parsed {
            Parsed::Done(n) => n.saturating_sub(old).min(take),
            Parsed::Partial if buf.len() < MAX_HEAD => {
                self.stream(dir).head = buf;
                take
            }
            Parsed::Partial | Parsed::Invalid => {
                self.fail(dir, Cause::Malformed, c);
                // The next message may start inside what was buffered.
                self.on_data(dir, buf.get(1..).unwrap_or_default(), ts, true, c, out);
                take
            }
        }
    }

    fn parse(
        &mut self,
        dir: Dir,
        bytes: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> Parsed {
        match dir {
            Dir::Req => match parse_request(bytes) {
                Ok(Status::Complete((n, head))) => {
                    self.on_request(head, c);
                    Parsed::Done(n)
                }
                Ok(Status::Partial) => Parsed::Partial,
                Err(_) => Parsed::Invalid,
            },
            Dir::Resp => match parse_response(bytes) {
                Ok(Status::Complete((n, head))) => {
                    self.on_response(head, ts, c, out);
                    Parsed::Done(n)
                }
                Ok(Status::Partial) => Parsed::Partial,
                Err(_) => Parsed::Invalid,
            },
        }
    }

    fn on_request(&mut self, head: RequestHead, c: &mut ParserCounters) {
        let start_ns = self.req.start_ns;
        self.req.tentative = None;
        self.state = ConnState::Http;
        if self.count_from_ns == u64::MAX {
            self.count_from_ns = start_ns;
        }
        let kind = match head.method.as_str() {
            "HEAD" => RequestKind::Head,
            "CONNECT" => RequestKind::Connect,
            _ if head.h2c => RequestKind::UpgradeH2c,
            _ if head.upgrade => RequestKind::Upgrade,
            _ => RequestKind::Plain,
        };
        if self.waiting.len() >= MAX_WAITING {
            // A backlog this deep means responses are being lost: the
            // oldest request is the one least likely to be answered.
            self.waiting.pop_front();
            c.unmatched_requests += 1;
        }
        self.waiting.push_back(Waiting {
            method: head.method,
            path: head.path,
            start_ns,
            kind,
            timed_out: false,
        });
        self.req.upgrading = matches!(
            kind,
            RequestKind::Connect | RequestKind::Upgrade | RequestKind::UpgradeH2c
        );
        self.req.phase = match head.body {
            Body::None | Body::Length(0) => self.req.after_message(),
            Body::Length(n) => Phase::Body(n),
            Body::Chunked => Phase::Chunked(Chunk::START),
            // A server answers 400 and closes; all we can do is wait for a
            // piece that starts a request.
            Body::Unknowable => Phase::Seek(Seek::PieceStart),
            Body::Invalid => {
                c.resyncs += 1;
                Phase::Seek(Seek::Anywhere)
            }
        };
    }

    fn on_response(
        &mut self,
        head: ResponseHead,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        self.resp.tentative = None;
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim (100 Continue, 103 Early Hints): the final response
            // still follows.
            self.resp.phase = Phase::Idle;
            return;
        }
        let request = self.pair(self.resp.start_ns, c);
        let kind = request.as_ref().map(|w| w.kind);
        let answer = Answer { request, status };
        if status == 101 && kind == Some(RequestKind::UpgradeH2c) {
            // Not answered yet: HTTP/2's stream 1 carries the response.
            self.h2c = answer.request.map(|request| {
                Box::new(H2cUpgrade {
                    request,
                    rest: Vec::new(),
                    rest_ts: ts,
                })
            });
            self.state = ConnState::Upgraded;
            self.stop();
            return;
        }
        if status == 101 || (kind == Some(RequestKind::Connect) && (200..300).contains(&status)) {
            emit(answer, Some(0), ts, out);
            self.state = ConnState::Upgraded;
            self.stop();
            return;
        }
        if matches!(
            kind,
            Some(RequestKind::Connect | RequestKind::Upgrade | RequestKind::UpgradeH2c)
        ) && self.req.phase == Phase::AwaitUpgrade
        {
            // Refused: the client goes on speaking HTTP/1.
            self.req.phase = Phase::Idle;
        }
        self.resp_body = 0;
        let body = if kind == Some(RequestKind::Head) || status == 204 || status == 304 {
            Body::None
        } else {
            head.body
        };
        self.resp.phase = match body {
            Body::None | Body::Length(0) => {
                emit(answer, Some(0), ts, out);
                Phase::Idle
            }
            Body::Length(n) => {
                self.answer = Some(answer);
                Phase::Body(n)
            }
            Body::Chunked => {
                self.answer = Some(answer);
                Phase::Chunked(Chunk::START)
            }
            Body::Unknowable => {
                self.answer = Some(answer);
                Phase::UntilClose
            }
            Body::Invalid => {
                // Contradictory lengths: how much body followed is unknown.
                emit(answer, None, ts, out);
                c.resyncs += 1;
                self.stale = self.stale.saturating_add(1);
                Phase::Seek(Seek::Anywhere)
            }
        };
    }

    /// The waiting request a final response that began at `start_ns`
    /// answers, if any.
    fn pair(&mut self, start_ns: u64, c: &mut ParserCounters) -> Option<Waiting> {
        // Requests whose answers went missing would shift every later
        // pairing on the connection by one. Which waiting requests they are
        // is a guess: the oldest ones, as long as a newer request had also
        // begun before this response (which is then not theirs, unless the
        // client pipelines, when no guess is right).
        while self.stale > 0 && self.waiting.get(1).is_some_and(|w| w.start_ns <= start_ns) {
            self.waiting.pop_front();
            self.stale -= 1;
            c.unmatched_requests += 1;
        }
        if self.waiting.front().is_some_and(|w| w.start_ns <= start_ns) {
            self.stale = 0;
            return self.waiting.pop_front();
        }
        // Nothing waiting, or the oldest waiting request began after this
        // response did: its own request was lost (or predates us).
        if start_ns >= self.count_from_ns {
            c.unmatched_responses += 1;
            self.stale = self.stale.saturating_add(1);
        }
        None
    }

    fn on_gap(
        &mut self,
        dir: Dir,
        len: u64,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let mut left = len;
        while left > 0 && !self.finished() {
            let s = self.stream(dir);
            match s.phase {
                Phase::Body(body) => {
                    s.last_ns = ts;
                    if left < body {
                        s.phase = Phase::Body(body - left);
                        self.add_body(dir, left);
                        return;
                    }
                    left -= body;
                    self.add_body(dir, body);
                    self.complete(dir, ts, out);
                }
                Phase::Chunked(Chunk::Data(data)) if left <= data => {
                    s.last_ns = ts;
                    s.phase = Phase::Chunked(if left == data {
                        Chunk::DataEnd { cr: false }
                    } else {
                        Chunk::Data(data - left)
                    });
                    self.add_body(dir, left);
                    return;
                }
                Phase::Chunked(_) | Phase::ChunkLost { .. } => {
                    s.last_ns = ts;
                    // The gap may end right where the data of a chunk
                    // ended: let the marker match from the next byte.
                    s.phase = Phase::ChunkLost {
                        recent: u64::from(u16::from_be_bytes(*b"\r\n")),
                    };
                    // Some of the gap may be the next message's: unknowable.
                    self.add_body(dir, left);
                    return;
                }
                Phase::UntilClose => {
                    self.add_body(dir, left);
                    return;
                }
                Phase::Seek(_) | Phase::AwaitUpgrade | Phase::Stopped => return,
                Phase::Idle | Phase::Head => {
                    self.fail(dir, Cause::Lost, c);
                    return;
                }
            }
        }
    }

    /// `n` more body bytes in `dir`: counted for responses.
    fn add_body(&mut self, dir: Dir, n: u64) {
        if dir == Dir::Resp {
            self.resp_body = self.resp_body.saturating_add(n);
        }
    }

    /// The current message's last byte has been seen at `end_ns`.
    fn complete(&mut self, dir: Dir, end_ns: u64, out: &mut Vec<Exchange>) {
        match dir {
            Dir::Req => self.req.phase = self.req.after_message(),
            Dir::Resp => {
                self.resp.phase = Phase::Idle;
                if let Some(answer) = self.answer.take() {
                    emit(answer, Some(self.resp_body), end_ns, out);
                }
            }
        }
    }

    /// The message at this point is malformed or lost: count it once and
    /// skip to the next plausible start.
    fn fail(&mut self, dir: Dir, cause: Cause, c: &mut ParserCounters) {
        let sniffing = self.sniffing(dir);
        let unknown = self.state == ConnState::Unknown;
        let s = self.stream(dir);
        s.head = Vec::new();
        if let Some(resume) = s.tentative.take() {
            s.phase = resume;
            return;
        }
        if sniffing {
            match cause {
                // Not HTTP, or junk sent to an HTTP server: the answer tells.
                Cause::Malformed => self.wait_for_answer(),
                // The start was lost: carry on as if found mid-stream.
                Cause::Lost => self.go_mid_stream(),
            }
            return;
        }
        if unknown {
            // Responses before the first request we saw are not ours to
            // count.
            s.phase = Phase::Seek(Seek::PieceStart);
            return;
        }
        c.resyncs += 1;
        s.phase = Phase::Seek(Seek::Anywhere);
        if dir == Dir::Resp {
            self.stale = self.stale.saturating_add(1);
        }
    }

    /// See `junk_first`.
    fn wait_for_answer(&mut self) {
        self.junk_first = true;
        self.stop();
    }

    /// A piece while `junk_first`. An HTTP server answers junk with an HTTP
    /// error response: then the junk was a malformed request (a resync) and
    /// the error answers no request we saw. Any other answer is another
    /// protocol: give up, counting nothing. A request the client sends after
    /// its junk also proves HTTP.
    fn on_junk_first(
        &mut self,
        dir: Dir,
        piece: Piece<'_>,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let Piece::Data(bytes) = piece else {
            return;
        };
        match dir {
            Dir::Resp if looks_like_response(bytes) => {
                c.resyncs += 1;
                c.unmatched_responses += 1;
                self.confirm_http();
                // Skip the rest of this error response.
                self.resp.phase = Phase::Seek(Seek::PieceStart);
            }
            Dir::Req if looks_like_request(bytes) => {
                c.resyncs += 1;
                self.confirm_http();
                self.on_data(dir, bytes, ts, false, c, out);
            }
            Dir::Req => {
                self.seek_pieces = self.seek_pieces.saturating_add(1);
                if self.seek_pieces >= MAX_JUNK_PIECES {
                    self.give_up();
                }
            }
            Dir::Resp => self.give_up(),
        }
    }

    fn confirm_http(&mut self) {
        self.junk_first = false;
        self.state = ConnState::Http;
        self.mode = Mode::KnownHttp;
        for s in [&mut self.req, &mut self.resp] {
            s.phase = Phase::Idle;
        }
    }

    fn give_up(&mut self) {
        self.state = ConnState::NotHttp;
        self.waiting = VecDeque::new();
        self.stop();
    }

    fn go_mid_stream(&mut self) {
        self.mode = Mode::MidStream;
        self.count_from_ns = u64::MAX;
        for s in [&mut self.req, &mut self.resp] {
            s.phase = Phase::Seek(Seek::PieceStart);
            s.head = Vec::new();
            s.tentative = None;
        }
    }

    fn stop(&mut self) {
        self.answer = None;
        for s in [&mut self.req, &mut self.resp] {
            s.phase = Phase::Stopped;
            s.head = Vec::new();
            s.tentative = None;
        }
    }
}

impl Stream {
    fn new(phase: Phase) -> Self {
        Self {
            phase,
            head: Vec::new(),
            start_ns: 0,
            last_ns: 0,
            tentative: None,
            upgrading: false,
        }
    }

    /// Where a request direction goes once a message is fully read.
    fn after_message(&mut self) -> Phase {
        if std::mem::take(&mut self.upgrading) {
            Phase::AwaitUpgrade
        } else {
            Phase::Idle
        }
    }
}

impl Chunk {
    const START: Self = Chunk::Size {
        value: 0,
        digits: 0,
    };

    /// Consumes framing and data from the front of `bytes`.
    fn advance(&mut self, bytes: &[u8]) -> (usize, ChunkStep) {
        let mut used = 0;
        while let Some(rest) = bytes.get(used..).filter(|r| !r.is_empty()) {
            if let Chunk::Data(left) = *self {
                let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                used += n;
                let left = left - len64(n);
                *self = if left == 0 {
                    Chunk::DataEnd { cr: false }
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            let Some(&b) = rest.first() else { break };
            used += 1;
            match self.byte(b) {
                ChunkStep::More => {}
                done_or_invalid => return (used, done_or_invalid),
            }
        }
        (used, ChunkStep::More)
    }

    /// One framing byte (the caller skips data in bulk).
    fn byte(&mut self, b: u8) -> ChunkStep {
        match *self {
            Chunk::Size { value, digits } => match (hex(b), b) {
                (Some(d), _) if digits < 16 => {
                    *self = Chunk::Size {
                        value: (value << 4) | u64::from(d),
                        digits: digits + 1,
                    };
                }
                (_, b'\n') if digits > 0 => self.size_done(value),
                (None, b';' | b' ' | b'\t' | b'\r') if digits > 0 => {
                    *self = Chunk::Ext { value, len: 0 };
                }
                _ => return ChunkStep::Invalid,
            },
            Chunk::Ext { value, len } => match b {
                b'\n' => self.size_done(value),
                _ if is_forbidden(b) || len >= MAX_CHUNK_EXT => return ChunkStep::Invalid,
                _ => {
                    *self = Chunk::Ext {
                        value,
                        len: len + 1,
                    }
                }
            },
            Chunk::Data(left) => {
                *self = match left {
                    0 | 1 => Chunk::DataEnd { cr: false },
                    _ => Chunk::Data(left - 1),
                };
            }
            Chunk::DataEnd { cr } => match b {
                b'\r' if !cr => *self = Chunk::DataEnd { cr: true },
                b'\n' => *self = Chunk::START,
                _ => return ChunkStep::Invalid,
            },
            Chunk::Trailer { line, total } => match b {
                b'\n' if line == 0 => return ChunkStep::Done,
                b'\n' => *self = Chunk::Trailer { line: 0, total },
                b'\r' => {}
                _ if is_forbidden(b) || total >= MAX_TRAILER => return ChunkStep::Invalid,
                _ => {
                    *self = Chunk::Trailer {
                        line: line.saturating_add(1),
                        total: total + 1,
                    }
                }
            },
        }
        ChunkStep::More
    }

    fn size_done(&mut self, value: u64) {
        *self = if value == 0 {
            Chunk::Trailer { line: 0, total: 0 }
        } else {
            Chunk::Data(value)
        };
    }
}

/// Reports a response with `body_bytes` of body (None: not known).
fn emit(answer: Answer, body_bytes: Option<u64>, end_ns: u64, out: &mut Vec<Exchange>) {
    if let Some(request) = answer.request.filter(|r| !r.timed_out) {
        out.push(Exchange {
            call: http_call(request.method, request.path, answer.status),
            failure: None,
            start_ns: request.start_ns,
            end_ns,
            response_body_bytes: body_bytes,
        });
    }
}

fn http_call(method: String, path: String, status: u16) -> Call {
    Call::Http(HttpCall {
        method,
        path,
        status,
    })
}

/// A request that will get no response.
fn fail(request: Waiting, failure: Failure, end_ns: u64, out: &mut Vec<Exchange>) {
    if !request.timed_out {
        out.push(Exchange {
            call: http_call(request.method, request.path, 0),
            failure: Some(failure),
            start_ns: request.start_ns,
            end_ns,
            response_body_bytes: None,
        });
    }
}

/// What we tolerate beyond the RFC: servers and clients in the wild do
/// these, and a tracer observes rather than enforces.
fn config() -> ParserConfig {
    let mut config = ParserConfig::default();
    config
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true);
    config
}

type HeadResult<T> = Result<Status<(usize, T)>, httparse::Error>;

/// Parses with header slots on the stack, or on the heap if there are more.
/// The slots start uninitialised: clearing 64 of them per message cost more
/// than parsing the message.
fn with_headers<T>(
    bytes: &[u8],
    parse: impl for<'b> Fn(&'b [u8], &mut [MaybeUninit<Header<'b>>]) -> HeadResult<T>,
) -> HeadResult<T> {
    let mut inline = [const { MaybeUninit::<Header<'_>>::uninit() }; INLINE_HEADERS];
    match parse(bytes, &mut inline) {
        Err(httparse::Error::TooManyHeaders) => {
            // A header line is at least "a:" and a line end.
            let lines = bytes
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                .min(MAX_HEAD / 3)
                + 1;
            let mut many = Vec::with_capacity(lines);
            many.resize_with(lines, MaybeUninit::uninit);
            parse(bytes, &mut many)
        }
        other => other,
    }
}

fn parse_request(bytes: &[u8]) -> HeadResult<RequestHead> {
    with_headers(bytes, |bytes, headers| {
        let mut req = httparse::Request::new(&mut []);
        Ok(
            match config().parse_request_with_uninit_headers(&mut req, bytes, headers)? {
                Status::Complete(n) => {
                    let method = req.method.unwrap_or_default().to_owned();
                    let path = request_path(req.path.unwrap_or_default());
                    let body = body(req.headers, false);
                    let upgrades = || {
                        req.headers
                            .iter()
                            .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
                    };
                    let upgrade = upgrades().next().is_some();
                    let h2c = upgrades().any(|h| {
                        h.value
                            .split(|&b| b == b',')
                            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"h2c"))
                    });
                    Status::Complete((
                        n,
                        RequestHead {
                            method,
                            path,
                            body,
                            upgrade,
                            h2c,
                        },
                    ))
                }
                Status::Partial => Status::Partial,
            },
        )
    })
}

fn parse_response(bytes: &[u8]) -> HeadResult<ResponseHead> {
    with_headers(bytes, |bytes, headers| {
        let mut resp = httparse::Response::new(&mut []);
        Ok(
            match config().parse_response_with_uninit_headers(&mut resp, bytes, headers)? {
                Status::Complete(n) => Status::Complete((
                    n,
                    ResponseHead {
                        status: resp.code.unwrap_or_default(),
                        body: body(resp.headers, true),
                    },
                )),
                Status::Partial => Status::Partial,
            },
        )
    })
}

/// Body delimitation from the headers (RFC 9112 section 6.3).
fn body(headers: &[Header<'_>], response: bool) -> Body {
    let mut length: Option<u64> = None;
    let mut conflict = false;
    let mut coded = false;
    let mut chunked_last = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|&b| b == b',') {
                match (parse_decimal(trim(part)), length) {
                    (Some(v), None) => length = Some(v),
                    (Some(v), Some(seen)) if v == seen => {}
                    _ => conflict = true,
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in h.value.split(|&b| b == b',').map(trim) {
                if !coding.is_empty() {
                    coded = true;
                    chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
        }
    }
    match (coded, chunked_last, length, conflict) {
        (true, true, ..) => Body::Chunked,
        (true, false, ..) => Body::Unknowable,
        (false, _, _, true) => Body::Invalid,
        (false, _, Some(n), false) => Body::Length(n),
        (false, _, None, false) if response => Body::Unknowable,
        (false, _, None, false) => Body::None,
    }
}

/// Longest path kept per request: up to 64 requests wait per connection on
/// tens of thousands of connections, and routes are cut at 128 bytes anyway.
pub(super) const MAX_PATH: usize = 512;

/// The request target's path: query and fragment removed, and for the
/// absolute form (`http://host/p`) the scheme and authority too; at most
/// `MAX_PATH` bytes, cut at a character boundary. HTTP/2 uses it too.
pub(super) fn request_path(target: &str) -> String {
    let mut path = full_request_path(target);
    if path.len() > MAX_PATH {
        let mut cut = MAX_PATH;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
    }
    path
}

fn full_request_path(target: &str) -> String {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let target = target.get(..end).unwrap_or(target);
    if target.starts_with('/') {
        return target.to_owned();
    }
    if let Some(colon) = target.find("://") {
        let scheme = target.get(..colon).unwrap_or_default();
        if !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            let after = target.get(colon + 3..).unwrap_or_default();
            return match after.find('/') {
                Some(slash) => after.get(slash..).unwrap_or("/").to_owned(),
                None => "/".to_owned(),
            };
        }
    }
    // Authority form (CONNECT host:port) and asterisk form (OPTIONS *).
    target.to_owned()
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = u64::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
        n.checked_mul(10)?.checked_add(d)
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Bytes no header line may hold: controls other than tab and line ends.
fn is_forbidden(b: u8) -> bool {
    (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One connection under test, with a clock that ticks per piece.
    type Conn = crate::testutil::Driver<Http1Conn>;

    impl Conn {
        fn new(side: Side, mode: Mode) -> Self {
            Self::with(Http1Conn::new(side, mode), side)
        }

        fn server() -> Self {
            Self::new(Side::Server, Mode::KnownHttp)
        }

        /// (method, path, status) of the exchanges so far.
        fn got(&self) -> Vec<(&str, &str, u16)> {
            self.out
                .iter()
                .map(|e| {
                    (
                        e.http().unwrap().method.as_str(),
                        e.http().unwrap().path.as_str(),
                        e.http().unwrap().status,
                    )
                })
                .collect()
        }

        fn counts(&self) -> (u64, u64, u64) {
            (
                self.c.resyncs,
                self.c.unmatched_requests,
                self.c.unmatched_responses,
            )
        }
    }

    const OK_EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn request_and_response_starts() {
        assert!(looks_like_request(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_request(b"PROPFIND /x HTTP/1.1"));
        assert!(looks_like_request(b"M-SEARCH * HTTP/1.1"));
        assert!(!looks_like_request(b"GET"));
        assert!(!looks_like_request(b"GETS / HTTP/1.1"));
        assert!(!looks_like_request(b"get / HTTP/1.1"));
        assert!(!looks_like_request(b"PRI * HTTP/2.0\r\n"));
        assert!(!looks_like_request(b"*1\r\n$4\r\nPING\r\n"));
        assert!(!looks_like_request(b""));
        assert!(looks_like_response(b"HTTP/1.1 200 OK"));
        assert!(looks_like_response(b"HTTP/1.0 404 "));
        assert!(!looks_like_response(b"HTTP/2 200"));
        assert!(!looks_like_response(b"HTTP/1.1"));
        assert!(could_start(Dir::Req, b"PO"));
        assert!(could_start(Dir::Req, b"POST"));
        assert!(!could_start(Dir::Req, b"POSTX"));
        assert!(could_start(Dir::Resp, b"HTTP/1"));
        assert!(!could_start(Dir::Resp, b"HTTP/2"));
    }

    #[test]
    fn long_paths_are_cut() {
        let long = format!("/{}é?q=1", "a".repeat(MAX_PATH));
        let path = request_path(&long);
        assert_eq!(path.len(), MAX_PATH);
        assert!(path.starts_with("/aaa"));
    }

    #[test]
    fn paths_lose_query_fragment_and_authority() {
        assert_eq!(request_path("/a/b?x=1#f"), "/a/b");
        assert_eq!(request_path("/a#f?x"), "/a");
        assert_eq!(request_path("http://host:8080/p?q"), "/p");
        assert_eq!(request_path("https://user:pw@host/p/q"), "/p/q");
        assert_eq!(request_path("http://host"), "/");
        assert_eq!(request_path("http://host?q=/x"), "/");
        assert_eq!(request_path("*"), "*");
        assert_eq!(request_path("example.com:443"), "example.com:443");
        assert_eq!(request_path("?only"), "");
    }

    #[test]
    fn framing_headers() {
        let h = |name, value| Header { name, value };
        assert_eq!(
            body(&[h("Content-Length", &b" 12 "[..])], false),
            Body::Length(12)
        );
        assert_eq!(
            body(&[h("content-length", &b"5, 5"[..])], true),
            Body::Length(5)
        );
        assert_eq!(
            body(&[h("Content-Length", &b"5, 6"[..])], true),
            Body::Invalid
        );
        assert_eq!(
            body(
                &[
                    h("Content-Length", &b"5"[..]),
                    h("Content-Length", &b"7"[..])
                ],
                true
            ),
            Body::Invalid
        );
        assert_eq!(
            body(&[h("Content-Length", &b"-1"[..])], true),
            Body::Invalid
        );
        assert_eq!(
            body(
                &[h("Content-Length", &b"99999999999999999999999"[..])],
                true
            ),
            Body::Invalid
        );
        assert_eq!(
            body(
                &[
                    h("Transfer-Encoding", &b"gzip, Chunked"[..]),
                    h("Content-Length", &b"3"[..])
                ],
                true
            ),
            Body::Chunked
        );
        assert_eq!(
            body(&[h("Transfer-Encoding", &b"chunked, gzip"[..])], true),
            Body::Unknowable
        );
        assert_eq!(body(&[], true), Body::Unknowable);
        assert_eq!(body(&[], false), Body::None);
    }

    #[test]
    fn keep_alive_pairs_in_order_with_timestamps() {
        let mut t = Conn::server();
        let t1 = t.req(b"GET /a?secret=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        let t2 = t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        let t3 = t.req(b"DELETE /b HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = t.resp(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\n");
        let t5 = t.resp(b"abc");
        assert_eq!(t.got(), vec![("GET", "/a", 200), ("DELETE", "/b", 404)]);
        assert_eq!((t.out[0].start_ns, t.out[0].end_ns), (t1, t2));
        assert_eq!((t.out[1].start_ns, t.out[1].end_ns), (t3, t5));
        t.close();
        assert_eq!(t.counts(), (0, 0, 0));
        assert_eq!(t.conn.state(), ConnState::Http);
    }

    #[test]
    fn client_side_directions_are_swapped() {
        let mut t = Conn::new(Side::Client, Mode::Sniff);
        t.req(b"GET /c HTTP/1.1\r\n\r\n");
        assert_eq!(t.conn.state(), ConnState::Http);
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/c", 200)]);
    }

    #[test]
    fn pipelined_requests_pair_fifo() {
        let mut t = Conn::server();
        t.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nPOST /3 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiHEAD /4 HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n1\r\ny\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
        assert_eq!(
            t.got(),
            vec![
                ("GET", "/1", 200),
                ("GET", "/2", 201),
                ("POST", "/3", 202),
                ("HEAD", "/4", 200)
            ]
        );
        t.close();
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn bodies_are_counted_off_including_gaps() {
        let mut t = Conn::server();
        t.req(b"POST /up HTTP/1.1\r\nContent-Length: 10000\r\n\r\n0123");
        t.req_gap(9000);
        t.req(&[b'x'; 996]);
        t.req(b"GET /next HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
        t.resp_gap(999_000);
        let end = t.resp(&[b'y'; 1000]);
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("POST", "/up", 200), ("GET", "/next", 200)]);
        assert_eq!(t.out[0].end_ns, end);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn body_completed_by_a_gap() {
        let mut t = Conn::server();
        t.req(b"GET / HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\nabc");
        let end = t.resp_gap(49_997);
        assert_eq!(t.got(), vec![("GET", "/", 200)]);
        assert_eq!(t.out[0].end_ns, end);
    }

    /// Response body sizes as the sender sent them: framing included,
    /// gaps counted, none for HEAD and 204, until the close for a body
    /// without length; split anywhere across pieces.
    #[test]
    fn response_body_sizes_are_the_bytes_after_the_header() {
        let sizes = |t: &Conn| -> Vec<Option<u64>> {
            t.out.iter().map(|e| e.response_body_bytes).collect()
        };
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n";
        let head = chunked.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let framing = chunked.len() - head;
        for split in [1, 7, 47, 60] {
            let mut t = Conn::server();
            t.req(b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\nGET /d HTTP/1.1\r\n\r\nGET /e HTTP/1.1\r\n\r\n");
            let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789".to_vec();
            resp.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n");
            resp.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
            resp.extend_from_slice(chunked);
            resp.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\nab");
            for piece in resp.chunks(split) {
                t.resp(piece);
            }
            // 2998 body bytes lost in a gap still count as sent.
            t.resp_gap(2998);
            assert_eq!(
                sizes(&t),
                [Some(10), Some(0), Some(0), Some(framing as u64), Some(3000)],
                "pieces of {split}"
            );
        }
        let mut t = Conn::server();
        t.req(b"GET /close HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.0 200 OK\r\n\r\nfirst");
        t.resp_gap(100);
        t.resp(b"last");
        t.close();
        assert_eq!(sizes(&t), [Some(109)]);
        // A request that got no response has no size.
        let mut t = Conn::server();
        t.req(b"GET /lost HTTP/1.1\r\n\r\n");
        t.close();
        assert_eq!(sizes(&t), [None]);
    }

    #[test]
    fn chunked_both_ways_with_extensions_and_trailers() {
        let mut t = Conn::server();
        t.req(b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;name=\"v\"\r\nhello\r\n3 ; x\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nA\r\n0123456789\r\n");
        assert!(t.out.is_empty());
        t.resp(b"0\r\nTrailer: a\r\nOther: b\r\n\r\n");
        t.req(b"GET /after HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("PUT", "/c", 200), ("GET", "/after", 200)]);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn chunk_data_in_gaps_and_split_framing() {
        let mut t = Conn::server();
        t.req(b"GET / HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10");
        t.resp(b"00\r\nab");
        t.resp_gap(4094);
        t.resp(b"\r");
        t.resp(b"\n0\r");
        let end = t.resp(b"\n\r\n");
        assert_eq!(t.got(), vec![("GET", "/", 200)]);
        assert_eq!(t.out[0].end_ns, end);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn gap_across_chunk_framing_finds_the_last_chunk() {
        let mut t = Conn::server();
        t.req(b"GET /big HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\nabc");
        // The capture limit cut this write: the chunk's end, the next size
        // line and some of its data went uncaptured.
        t.resp_gap(20_000);
        t.resp(b"more data\r\n0\r");
        let end = t.resp(b"\n\r\n");
        t.req(b"GET /small HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/big", 200), ("GET", "/small", 200)]);
        assert_eq!(t.out[0].end_ns, end);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn gap_across_chunk_framing_ends_at_next_message() {
        let mut t = Conn::server();
        t.req(b"GET /big HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\nabc");
        let last = t.resp_gap(20_000);
        t.req(b"GET /small HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/big", 200), ("GET", "/small", 200)]);
        assert_eq!(t.out[0].end_ns, last);
        // Framing lost at close: the body ended unseen.
        let mut t = Conn::server();
        t.req(b"GET /big HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
        let last = t.resp_gap(20_000);
        t.close();
        assert_eq!(t.out[0].end_ns, last);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn bad_chunk_size_is_a_resync_but_the_response_counts() {
        let mut t = Conn::server();
        t.req(b"GET / HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        t.req(b"GET /2 HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/", 200), ("GET", "/2", 200)]);
        assert_eq!(t.counts(), (1, 0, 0));
    }

    #[test]
    fn responses_without_bodies() {
        let mut t = Conn::server();
        t.req(b"HEAD /h HTTP/1.1\r\n\r\n");
        let t1 = t
            .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nTransfer-Encoding: chunked\r\n\r\n");
        t.req(b"DELETE /d HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
        t.req(b"GET /n HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n");
        t.resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(
            t.got(),
            vec![
                ("HEAD", "/h", 200),
                ("DELETE", "/d", 204),
                ("GET", "/n", 304)
            ]
        );
        assert_eq!(t.out[0].end_ns, t1);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn continue_is_interim() {
        let mut t = Conn::server();
        let start = t.req(b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        t.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
        t.req(b"abc");
        t.resp(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n");
        let end = t.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(t.got(), vec![("POST", "/p", 201)]);
        assert_eq!((t.out[0].start_ns, t.out[0].end_ns), (start, end));
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn switching_protocols_stops_parsing() {
        let mut t = Conn::server();
        t.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        // Frames may race the 101 on the request side: not counted.
        t.req(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        t.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
        assert_eq!(t.conn.state(), ConnState::Upgraded);
        assert_eq!(t.got(), vec![("GET", "/ws", 101)]);
        t.req(b"\x88\x80garbage");
        t.resp(b"garbage");
        t.close();
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn refused_upgrade_goes_on_with_http() {
        let mut t = Conn::server();
        t.req(b"GET /u HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: x\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        t.req(b"GET /v HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/u", 200), ("GET", "/v", 200)]);
        assert_eq!(t.conn.state(), ConnState::Http);
    }

    #[test]
    fn accepted_h2c_upgrade_is_handed_over_unreported() {
        let mut t = Conn::server();
        t.req(
            b"GET /u?q=1 HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n",
        );
        t.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n");
        assert_eq!(t.conn.state(), ConnState::Upgraded);
        assert!(t.got().is_empty(), "stream 1 of HTTP/2 reports it");
        let handover = t.conn.take_h2c_upgrade().expect("the upgraded request");
        let (method, path, _) = handover.request.expect("not timed out");
        assert_eq!((method.as_str(), path.as_str()), ("GET", "/u"));
        assert!(handover.rest.is_empty());
        assert_eq!(t.conn.take_h2c_upgrade(), None);
    }

    #[test]
    fn connect_tunnels() {
        let mut t = Conn::new(Side::Client, Mode::Sniff);
        t.req(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        t.resp(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
        t.req(b"CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n");
        t.resp(b"HTTP/1.1 200 Connection established\r\n\r\n");
        assert_eq!(t.conn.state(), ConnState::Upgraded);
        assert_eq!(
            t.got(),
            vec![
                ("CONNECT", "example.com:443", 407),
                ("CONNECT", "example.com:443", 200)
            ]
        );
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn body_until_close() {
        let mut t = Conn::server();
        t.req(b"GET /old HTTP/1.0\r\n\r\n");
        t.resp(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome");
        t.resp_gap(100);
        t.resp(b"HTTP/1.1 200 looks like a header but is body");
        assert!(t.out.is_empty());
        let end = t.close();
        assert_eq!(t.got(), vec![("GET", "/old", 200)]);
        assert_eq!(t.out[0].end_ns, end);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn header_split_everywhere() {
        let req = b"POST /split?x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbodyGET /two HTTP/1.1\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
        for step in 1..12 {
            let mut t = Conn::server();
            for piece in req.chunks(step) {
                t.req(piece);
            }
            for piece in resp.chunks(step) {
                t.resp(piece);
            }
            assert_eq!(
                t.got(),
                vec![("POST", "/split", 200), ("GET", "/two", 500)],
                "step {step}"
            );
            assert_eq!(t.counts(), (0, 0, 0), "step {step}");
            assert!(t.conn.req.head.capacity() == 0 && t.conn.resp.head.capacity() == 0);
        }
    }

    #[test]
    fn oversized_header_is_malformed() {
        let mut t = Conn::server();
        t.req(b"GET /big HTTP/1.1\r\n");
        let line = [b"X-Filler: ".as_slice(), &[b'a'; 1000], b"\r\n"].concat();
        for _ in 0..20 {
            t.req(&line);
            assert!(t.conn.req.head.len() <= MAX_HEAD);
        }
        assert_eq!(t.c.resyncs, 1);
        t.req(b"\r\n");
        t.req(b"GET /ok HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/ok", 200)]);
        // In one piece too.
        let mut t = Conn::server();
        let big = [
            b"GET /big HTTP/1.1\r\n".as_slice(),
            &line.repeat(20),
            b"\r\n",
        ]
        .concat();
        t.req(&big);
        assert_eq!(t.c.resyncs, 1);
    }

    #[test]
    fn many_headers_fall_back_to_the_heap() {
        let mut t = Conn::server();
        let mut req = b"GET /many HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"Content-Length: 1\r\n\r\nz");
        t.req(&req);
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/many", 200)]);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn garbage_between_requests_is_one_resync() {
        for split in [false, true] {
            let mut t = Conn::server();
            let stream: &[u8] =
                b"GET /a HTTP/1.1\r\n\r\n\x00\x13\xffBINARY junk GE\x01T\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
            if split {
                for b in stream.chunks(1) {
                    t.req(b);
                }
            } else {
                t.req(stream);
            }
            t.resp(OK_EMPTY);
            t.resp(OK_EMPTY);
            assert_eq!(
                t.got(),
                vec![("GET", "/a", 200), ("GET", "/b", 200)],
                "split {split}"
            );
            assert_eq!(t.counts(), (1, 0, 0), "split {split}");
        }
    }

    #[test]
    fn garbage_in_responses_is_one_resync() {
        let mut t = Conn::server();
        t.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nxx\x00yyHTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(t.got(), vec![("GET", "/a", 200), ("GET", "/b", 404)]);
        assert_eq!(t.c.resyncs, 1);
    }

    #[test]
    fn known_http_counts_garbage_at_the_start() {
        let mut t = Conn::server();
        t.req(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        assert_eq!(t.conn.state(), ConnState::Http);
        assert_eq!(t.c.resyncs, 1);
        t.req(b"GET /x HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/x", 200)]);
        assert_eq!(t.c.resyncs, 1);
    }

    #[test]
    fn gap_in_request_header_keeps_later_pairs_right() {
        let mut t = Conn::server();
        t.req(b"GET /1 HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        t.req(b"GET /2 HTTP/1.1\r\nHost:");
        t.req_gap(30);
        t.resp(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        t.req(b"GET /3 HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(t.got(), vec![("GET", "/1", 200), ("GET", "/3", 201)]);
        assert_eq!(t.counts(), (1, 0, 1));
    }

    #[test]
    fn gap_in_response_header_drops_the_unanswered_request() {
        let mut t = Conn::server();
        t.req(b"GET /1 HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nCont");
        t.resp_gap(100);
        t.req(b"GET /2 HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(t.got(), vec![("GET", "/2", 202)]);
        assert_eq!(t.counts(), (1, 1, 0));
        t.close();
        assert_eq!(t.counts(), (1, 1, 0));
    }

    #[test]
    fn lost_response_in_a_pipeline_drops_only_its_request() {
        let mut t = Conn::server();
        t.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 200 OK\r\nContent-");
        t.resp_gap(40);
        t.resp(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
        t.resp(b"HTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(t.got(), vec![("GET", "/2", 202), ("GET", "/3", 203)]);
        assert_eq!(t.counts(), (1, 1, 0));
    }

    /// A lost request chunk makes reassembly hold the next ones and release
    /// them in one burst, after their responses went by unmatched: the
    /// burst must not leave stale requests that shift later pairings.
    #[test]
    fn burst_after_lost_request_chunk_does_not_shift_pairing() {
        use crate::pipeline::reassembly::{Reassembler, ReassemblyCounters};
        let mut t = Conn::server();
        let mut stream = Reassembler::new(0);
        let mut rc = ReassemblyCounters::default();
        let requests: Vec<Vec<u8>> = (1..=7)
            .map(|i| format!("GET /{i} HTTP/1.1\r\n\r\n").into_bytes())
            .collect();
        let mut pos = 0u64;
        for (i, request) in requests.iter().enumerate() {
            t.ts += 10;
            if i != 1 {
                let (conn, c, out, ts) = (&mut t.conn, &mut t.c, &mut t.out, t.ts);
                stream.push(pos, request, request.len() as u64, &mut rc, &mut |p| {
                    conn.on_piece(false, p, ts, c, out)
                });
            }
            pos += request.len() as u64;
            t.resp(OK_EMPTY);
        }
        assert_eq!(rc.gaps, 1);
        assert_eq!(t.got(), vec![("GET", "/1", 200), ("GET", "/7", 200)]);
        // /2 lost; /3 to /6 held while their answers went unmatched.
        assert_eq!(t.counts(), (1, 4, 5));
        t.req(b"GET /8 HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got().last(), Some(&("GET", "/8", 200)));
    }

    #[test]
    fn gap_between_messages_is_a_resync() {
        let mut t = Conn::server();
        t.req(b"GET /1 HTTP/1.1\r\n\r\n");
        t.req_gap(500);
        t.req(b"GET /3 HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/1", 200), ("GET", "/3", 200)]);
        assert_eq!(t.counts(), (1, 0, 0));
    }

    #[test]
    fn unmatched_both_ways() {
        let mut t = Conn::server();
        t.resp(OK_EMPTY);
        assert_eq!(t.counts(), (0, 0, 1));
        t.req(b"GET /1 HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        t.req(b"GET /2 HTTP/1.1\r\n\r\n");
        t.close();
        // The close ends /2's wait: an exchange without a response.
        assert_eq!(t.got(), vec![("GET", "/1", 200), ("GET", "/2", 0)]);
        assert_eq!(t.out[1].failure, Some(Failure::ConnectionClosed));
        assert_eq!(t.counts(), (0, 0, 1));
        assert_eq!(t.conn.waiting.capacity(), 0);
    }

    #[test]
    fn requests_lost_to_a_gap_are_unmatched_not_closed() {
        let mut t = Conn::server();
        t.req(b"GET /1 HTTP/1.1\r\n\r\n");
        t.req(b"GET /2 HTTP/1.1\r\n\r\n");
        // /1's response is lost mid-body: its request is believed unanswered.
        t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nxx");
        t.resp_gap(400);
        t.close();
        let failed: Vec<_> = t.out.iter().filter(|e| e.failure.is_some()).collect();
        assert!(failed.len() <= 1, "{:?}", t.out);
    }

    #[test]
    fn timeout_reports_once_and_late_answer_is_not_counted_again() {
        let mut t = Conn::server();
        t.req(b"GET /slow HTTP/1.1\r\n\r\n");
        let start = t.out.len();
        let mut out = Vec::new();
        // Not yet due.
        t.conn.expire(1_000, 5_000_000_000, &mut out);
        assert!(out.is_empty());
        t.conn.expire(u64::MAX / 2, 5_000_000_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].failure, Some(Failure::Timeout));
        assert_eq!(
            (
                out[0].http().unwrap().method.as_str(),
                out[0].http().unwrap().path.as_str(),
                out[0].http().unwrap().status
            ),
            ("GET", "/slow", 0)
        );
        // Reported once.
        t.conn.expire(u64::MAX / 2 + 1, 5_000_000_000, &mut out);
        assert_eq!(out.len(), 1);
        // The late answer pairs with it silently; the next request pairs right.
        t.resp(OK_EMPTY);
        t.req(b"GET /next HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.out.len() - start, 1);
        assert_eq!(t.got().last(), Some(&("GET", "/next", 200)));
        assert_eq!(t.counts(), (0, 0, 0));
        // A timed-out request is not reported again when the connection closes.
        t.req(b"GET /never HTTP/1.1\r\n\r\n");
        t.conn.expire(u64::MAX / 2 + 2, 5_000_000_000, &mut out);
        assert_eq!(out.len(), 2);
        t.close();
        assert!(t.out.iter().all(|e| e.http().unwrap().path != "/never"));
    }

    #[test]
    fn waiting_queue_is_bounded() {
        let mut t = Conn::server();
        for _ in 0..MAX_WAITING + 6 {
            t.req(b"GET /q HTTP/1.1\r\n\r\n");
        }
        assert_eq!(t.conn.waiting.len(), MAX_WAITING);
        assert_eq!(t.c.unmatched_requests, 6);
        t.close();
        assert_eq!(t.c.unmatched_requests, 6);
        let closed = t
            .out
            .iter()
            .filter(|e| e.failure == Some(Failure::ConnectionClosed));
        assert_eq!(closed.count(), MAX_WAITING);
    }

    #[test]
    fn sniff_gives_up_quietly_on_other_protocols() {
        let cases: &[&[u8]] = &[
            b"*1\r\n$4\r\nPING\r\n",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            b"\x16\x03\x01\x00\xa5\x01",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET key\r\n",
            b"SET key value\r\n",
        ];
        for case in cases {
            for split in [false, true] {
                let mut t = Conn::new(Side::Server, Mode::Sniff);
                if split {
                    for b in case.chunks(1) {
                        t.req(b);
                    }
                } else {
                    t.req(case);
                }
                // Undecided until the server answers (HTTP/2's preface is
                // known at once), and nothing counted.
                assert_ne!(t.conn.state(), ConnState::Http, "{case:?}");
                t.resp(b"+PONG\r\n");
                assert_eq!(t.conn.state(), ConnState::NotHttp, "{case:?}");
                t.close();
                assert_eq!(t.counts(), (0, 0, 0), "{case:?}");
            }
        }
        // A server that speaks first (MySQL, SMTP) is not HTTP either.
        let mut t = Conn::new(Side::Server, Mode::Sniff);
        t.resp(b"220 mail.example.com ESMTP\r\n");
        assert_eq!(t.conn.state(), ConnState::NotHttp);
        let mut t = Conn::new(Side::Client, Mode::Sniff);
        t.resp(b"J\x00\x00\x00\n8.0.36\x00");
        assert_eq!(t.conn.state(), ConnState::NotHttp);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn junk_answered_by_an_http_server_is_a_resync() {
        let mut t = Conn::new(Side::Server, Mode::Sniff);
        t.req(b"\x01\x02garbage\r\n\r\n");
        assert_eq!(t.conn.state(), ConnState::Unknown);
        t.resp(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad");
        assert_eq!(t.conn.state(), ConnState::Http);
        // The junk is a resync; the 400 answers no request we saw.
        assert_eq!(t.counts(), (1, 0, 1));
        // The connection goes on as HTTP.
        t.req(b"GET /after HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/after", 200)]);
        // Junk then a request from the client proves HTTP too.
        let mut t = Conn::new(Side::Client, Mode::Sniff);
        t.req(b"\x00junk");
        t.req(b"GET /x HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/x", 200)]);
        assert_eq!(t.counts(), (1, 0, 0));
        // Endless junk with no answer is given up.
        let mut t = Conn::new(Side::Server, Mode::Sniff);
        for _ in 0..=MAX_JUNK_PIECES {
            t.req(b"\x00junk");
        }
        assert_eq!(t.conn.state(), ConnState::NotHttp);
    }

    #[test]
    fn sniff_accepts_http() {
        let mut t = Conn::new(Side::Server, Mode::Sniff);
        t.req(b"G");
        t.req(b"ET / HTTP/1.1\r\n");
        assert_eq!(t.conn.state(), ConnState::Unknown);
        t.req(b"\r\n");
        assert_eq!(t.conn.state(), ConnState::Http);
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/", 200)]);
    }

    #[test]
    fn sniff_after_a_lost_start_continues_mid_stream() {
        let mut t = Conn::new(Side::Server, Mode::Sniff);
        t.req_gap(300);
        t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(t.conn.state(), ConnState::Unknown);
        t.req(b"GET /later HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("GET", "/later", 200)]);
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn mid_stream_skips_quietly_to_a_boundary() {
        let mut t = Conn::new(Side::Server, Mode::MidStream);
        // The tail of a request body, and a response to a request we never saw.
        t.req(b"ody of an upload that GET / HTTP/1.1 mentions");
        t.resp(b"tail of a body");
        t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(t.conn.state(), ConnState::Unknown);
        t.req(b"GET /first HTTP/1.1\r\n\r\n");
        assert_eq!(t.conn.state(), ConnState::Http);
        t.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
        t.req(b"junk now counts\x00");
        t.close();
        assert_eq!(t.got(), vec![("GET", "/first", 204)]);
        assert_eq!(t.counts(), (1, 0, 0));
    }

    #[test]
    fn mid_stream_response_before_first_request_is_not_counted() {
        let mut t = Conn::new(Side::Server, Mode::MidStream);
        t.req(b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nab");
        // Written before that request was read? Then it is not its answer.
        let mut early = Conn::new(Side::Server, Mode::MidStream);
        early.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        early.req(b"GET /y HTTP/1.1\r\n\r\n");
        early.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(early.got(), vec![("GET", "/y", 201)]);
        assert_eq!(early.counts(), (0, 0, 0));
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("POST", "/x", 200)]);
    }

    #[test]
    fn mid_stream_gives_up_on_endless_non_http() {
        let mut t = Conn::new(Side::Server, Mode::MidStream);
        for _ in 0..=MAX_SEEK_PIECES {
            t.req(b"\x00\x01binary protocol");
        }
        assert_eq!(t.conn.state(), ConnState::NotHttp);
        t.close();
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn conflicting_lengths_are_malformed() {
        let mut t = Conn::server();
        t.req(b"POST /s HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabcGET /t HTTP/1.1\r\n\r\n");
        t.resp(OK_EMPTY);
        t.resp(OK_EMPTY);
        assert_eq!(t.got(), vec![("POST", "/s", 200), ("GET", "/t", 200)]);
        assert_eq!(t.c.resyncs, 1);
    }

    #[test]
    fn per_connection_state_is_small() {
        let size = std::mem::size_of::<Http1Conn>();
        // 280 bytes on x86_64 today; thousands of connections each hold one.
        assert!(size <= 300, "Http1Conn is {size} bytes");
        let t = Http1Conn::new(Side::Server, Mode::Sniff);
        assert_eq!(
            t.req.head.capacity() + t.resp.head.capacity() + t.waiting.capacity(),
            0
        );
    }

    use crate::testutil::XorShift;

    /// Random mixes of valid messages, mutations, junk and gaps in random
    /// pieces: no panic, bounded buffers, and counters that add up.
    #[test]
    fn fuzz_never_panics_and_stays_bounded() {
        let parts: &[&[u8]] = &[
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HEAD / HTTP/1.0\r\n\r\n",
            b"CONNECT h:1 HTTP/1.1\r\n\r\n",
            b"GET /u HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nuntil close",
            b"\r\n",
            b"\x00\xff\x13junk",
            b"GET",
            b"HTTP/1.",
            b"ffffffffffffffffff\r\n",
        ];
        for seed in 1..300u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
            let mode = [Mode::Sniff, Mode::KnownHttp, Mode::MidStream][rng.below_usize(3)];
            let side = if rng.below_usize(2) == 0 {
                Side::Server
            } else {
                Side::Client
            };
            let mut conn = Http1Conn::new(side, mode);
            let mut c = ParserCounters::default();
            let mut out = Vec::new();
            let mut ts = 0;
            for _ in 0..rng.below_usize(80) {
                ts += 1;
                let outbound = rng.below_usize(2) == 0;
                if rng.below_usize(8) == 0 {
                    let n = rng.next() % [3, 100, 100_000, u64::MAX][rng.below_usize(4)];
                    conn.on_piece(outbound, Piece::Gap(n), ts, &mut c, &mut out);
                    continue;
                }
                let mut bytes = Vec::new();
                for _ in 0..rng.below_usize(4) + 1 {
                    bytes.extend_from_slice(parts[rng.below_usize(parts.len())]);
                }
                rng.corrupt(&mut bytes);
                crate::testutil::feed_in_random_pieces(
                    &mut conn, &mut rng, outbound, &bytes, ts, &mut c, &mut out,
                );
                assert!(conn.req.head.len() <= MAX_HEAD && conn.resp.head.len() <= MAX_HEAD);
                assert!(conn.waiting.len() <= MAX_WAITING);
            }
            conn.on_close(ts + 1, &mut c, &mut out);
            for e in &out {
                assert!(e.start_ns <= e.end_ns, "seed {seed}: {e:?}");
                assert!(!e.http().unwrap().path.contains('?'));
            }
        }
    }
}
