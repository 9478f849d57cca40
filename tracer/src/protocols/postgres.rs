//! PostgreSQL frontend/backend protocol 3.0, client side, for one connection.
//!
//! Input: the connection's two byte streams as ordered `Piece`s, each tagged
//! with its direction and the timestamp of the syscall that carried it.
//! Output: one `Exchange` per statement the server ran (a statement of a
//! simple Query, an Execute of the extended protocol, a FunctionCall),
//! carrying the statement's verb and single table from `sql`, and the
//! SQLSTATE when the server answered with an error; plus loss counts in
//! `ParserCounters`. Statement text, parameters, rows, user and database
//! names never leave this module, and are not kept beyond what a summary
//! needs.
//!
//! Each direction is a state machine over message framing (a type byte and
//! a 4-byte length that includes itself; the client's first message has no
//! type byte). Only the start of a message that matters is buffered: the
//! text of a Query or Parse up to `MAX_STATEMENT`, the names of Bind,
//! Execute, Describe and Close; an ErrorResponse is scanned for its SQLSTATE
//! and a CommandComplete's tag kept up to `TAG_PREFIX` bytes, without a
//! buffer. Everything else (rows, COPY data, descriptions) is skipped by
//! counting, so gaps inside it cost nothing. A gap or garbage over framing
//! makes the direction resync: the request direction at the next plausible
//! message, the response direction at the next ReadyForQuery.
//!
//! Pairing follows the server, which answers in order: the client's
//! messages become a queue of waiting operations (`Op`), and each response
//! message answers the oldest. A simple Query's statements are answered one
//! CommandComplete (or EmptyQueryResponse, or ErrorResponse) each, then
//! ReadyForQuery; an extended-protocol batch is answered Execute by Execute
//! and ends at the ReadyForQuery that answers its Sync. After an error the
//! server skips the rest of the Query, or the batch up to its Sync; what it
//! skipped is not an exchange. Responses that began before the oldest
//! waiting request did cannot answer it: they answer requests we did not
//! see.
//!
//! Losses (the kernel captures at most a few KiB of each syscall) are
//! inferred from, not guessed at: a ReadyForQuery found after a loss ends
//! the oldest waiting batch, whose unanswered exchanges still count
//! (their answers were lost, not skipped); and a client that does not
//! pipeline reads a whole answer before it sends again, so its next
//! request shows that the answer whose end we lost had ended, and that the
//! next response starts a message.

use std::collections::VecDeque;
use std::sync::Arc;

use super::sql::{self, Dialect};
use super::{
    detect::Detection, Call, ConnParser, DbCall, DbSystem, Exchange, Failure, ParserCounters,
    Piece, Side, Spec, Start, Verdict,
};

/// Statement text buffered per Query or Parse. A longer statement is
/// summarized from its start, which holds the verb and nearly always the
/// table; what follows (VALUES lists, IN lists) is data we must not keep.
const MAX_STATEMENT: usize = 16 * 1024;

/// Room for a statement or portal name in the messages that carry one.
/// Drivers generate short names (`S_1`, `P_0`, `stmtcache_<40 hex>`); a
/// name too long to fit is not remembered, and an Execute through it is
/// named from the server's tag. Names are kept as hashes, not text.
const MAX_NAME: usize = 128;

/// Named prepared statements remembered per connection, oldest forgotten
/// first. JDBC caches 256 statements per connection by default; an
/// Execute of a forgotten statement is still an exchange, named from the
/// server's command tag (and counted `partial`).
const MAX_PREPARED: usize = 256;

/// Named portals remembered per connection. Drivers bind the unnamed
/// portal (kept apart) except for cursors fetched in steps, of which an
/// application holds a few at a time.
const MAX_PORTALS: usize = 32;

/// Operations waiting for the server, per connection. JDBC sends batches
/// of up to about 256 Bind/Execute pairs before its Sync; deeper than this
/// means responses are being lost.
const MAX_WAITING: usize = 512;

/// Statements of one simple Query summarized; later ones are named from
/// their command tags. A migration script may hold thousands.
const MAX_STATEMENTS: usize = 64;

/// Bytes of a CommandComplete tag kept: enough for the longest verb, which
/// is all the tag is used for.
const TAG_PREFIX: usize = 16;

/// Longest believable message: the server reads none longer
/// (`PQ_LARGE_MESSAGE_LIMIT`), and a length beyond it is garbage.
const MAX_MESSAGE: u32 = 1 << 30;

/// The server's limit on a start-up packet (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP: u32 = 10_000;

/// Longest message accepted at a guessed boundary without seeing what
/// follows it: text misread as a length is never this small, and a wrong
/// guess then costs at most this many bytes.
const MAX_GUESS: u32 = 64 * 1024;

/// Request pieces examined on a connection found mid-stream before
/// deciding it does not speak the protocol (so that the next guess gets
/// its turn). A client's write nearly always starts a message; only a
/// long COPY can hold this many that do not.
const MAX_SEEK_PIECES: u32 = 1024;

/// Start-up packet codes (protocol 3.x, and the special requests).
const PROTOCOL_3: u32 = 3 << 16;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// ReadyForQuery without its status byte: `Z`, length 5.
const READY_PREFIX: u64 = 0x5A_0000_0005;

/// SQLSTATE reported when an ErrorResponse carried none we could read
/// (`internal_error`).
const UNKNOWN_SQLSTATE: &str = "XX000";

/// Operation of an Execute whose statement text we never saw, when the
/// server's tag does not name it either.
const EXECUTE: &str = "EXECUTE";

/// Operation of a FunctionCall message (the fast-path interface libpq uses
/// for large objects): the SQL verb that invokes a routine.
const FUNCTION_CALL: &str = "CALL";

/// Whether a new connection's first client bytes are a PostgreSQL start-up
/// packet (StartupMessage of protocol 3.x, SSLRequest, GSSENCRequest or
/// CancelRequest); None while `bytes` is a prefix of one. (The server never
/// speaks first.)
pub fn starts_like_postgres(bytes: &[u8]) -> Option<bool> {
    // The special requests' whole headers: length, then code.
    const SPECIAL: [[u8; 8]; 3] = [
        [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F],
        [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x30],
        [0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E],
    ];
    // A StartupMessage header, byte by byte: a length of at most
    // MAX_STARTUP (0x2710), then 3 and a minor version below 256.
    let startup_byte = |at: usize, b: u8| match at {
        0 | 1 | 4 | 6 => b == 0,
        2 => b <= 0x27,
        5 => b == 3,
        _ => true,
    };
    let header = bytes.get(..8).unwrap_or(bytes);
    let special = SPECIAL.iter().any(|s| s.starts_with(header));
    let startup = header
        .iter()
        .enumerate()
        .all(|(at, &b)| startup_byte(at, b));
    if !special && !startup {
        return Some(false);
    }
    let [a, b, c, d, ..] = *header else {
        return None;
    };
    if header.len() < 8 {
        return None;
    }
    let len = u32::from_be_bytes([a, b, c, d]);
    Some(special || (9..=MAX_STARTUP).contains(&len))
}

/// What a statement is, for metrics. Cheap to clone: many Executes refer to
/// one prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stmt {
    operation: &'static str,
    collection: Option<Arc<str>>,
}

impl Stmt {
    fn summarize(text: &[u8]) -> Self {
        let summary = sql::summarize(text, Dialect::Postgres);
        Self {
            operation: summary.operation,
            collection: summary.collection.map(Arc::from),
        }
    }

    fn bare(operation: &'static str) -> Self {
        Self {
            operation,
            collection: None,
        }
    }
}

/// One PostgreSQL connection as seen by the traced process.
#[derive(Debug)]
pub struct PgConn {
    side: Side,
    verdict: Verdict,
    req: Stream,
    resp: Stream,
    /// The request body being collected (Query text, names).
    prefix: Prefix,
    /// What the response body being read says.
    reply: Reply,
    /// Operations waiting for the server, oldest first.
    waiting: VecDeque<Op>,
    statements: Names,
    portals: Names,
    /// The unnamed statement and portal, replaced by each Parse and Bind.
    unnamed_statement: Option<Stmt>,
    unnamed_portal: Option<Stmt>,
    /// The client's side of an extended-protocol batch not yet ended by a
    /// Sync: the first Parse/Bind/Describe/Close since its last Execute (an
    /// error answering it is reported against its statement), and the
    /// timestamp of the first message since the last Execute, Sync or
    /// Flush (where the next Execute's exchange starts).
    since_execute: Option<Target>,
    group_start_ns: Option<u64>,
    /// The server reported an error in the open batch: it ignores what the
    /// client sends up to the next Sync.
    discarding: bool,
    /// The start-up phase ended (first ReadyForQuery).
    ready: bool,
    /// The client was seen sending a batch while an earlier one still
    /// waited: a lost ReadyForQuery cannot be inferred from its next
    /// request (see `on_request_while_lost`).
    pipelining: bool,
    /// Responses that began before this answer requests we did not see
    /// (mid-stream); they are dropped uncounted.
    count_from_ns: u64,
    /// Timestamp of the last response piece (data or gap).
    last_response_ns: u64,
    /// Timestamp of the last completion: where an error answering a Sync
    /// (a failed implicit COMMIT) starts.
    last_done_ns: u64,
    /// Request pieces examined while the verdict is unknown.
    seek_pieces: u32,
}

/// A statement the client referred to, and where that request began.
#[derive(Debug, Clone)]
struct Target {
    stmt: Option<Stmt>,
    start_ns: u64,
}

/// One direction's framing state.
#[derive(Debug)]
struct Stream {
    phase: Phase,
    /// Header bytes (type and length, or the start-up length and code)
    /// collected when they span pieces.
    header: [u8; 8],
    header_len: u8,
    /// Type byte of the current message (0 for a start-up packet).
    kind: u8,
    /// Body bytes of the current message still to come.
    left: u32,
    /// Timestamp of the piece holding the current message's first byte.
    start_ns: u64,
    /// Part of the current body was lost to a gap.
    cut: bool,
    /// Headers still to parse before a guessed boundary counts as found:
    /// until then a framing error goes back to seeking without counting.
    tentative: u8,
    /// Response direction seeking ReadyForQuery: the last bytes seen.
    recent: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Request direction before the StartupMessage: untyped packets.
    Startup,
    /// Response direction: the one-byte answer to SSLRequest or
    /// GSSENCRequest.
    EncryptionAnswer,
    /// At a message boundary or inside a header.
    Header,
    /// Inside a message body.
    Body,
    Seek(Seek),
    /// Nothing more to parse.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seek {
    /// Request direction: the next plausible message.
    Message,
    /// Response direction: the next ReadyForQuery.
    Ready,
    /// Response direction: the next piece should start a message (the
    /// client sent a new request after the previous answer was lost).
    NextPiece,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Req,
    Resp,
}

/// The leading bytes of a request message that matter, collected without
/// copying when the message is whole in one piece.
#[derive(Debug, Default)]
struct Prefix {
    buf: Vec<u8>,
    /// NUL terminators seen so far.
    nuls: u8,
    /// The message has been acted on; the rest of its body is skipped.
    done: bool,
}

/// What a response message's body said, read as it passes.
#[derive(Debug, Default, Clone, Copy)]
struct Reply {
    error: ErrorScan,
    tag: [u8; TAG_PREFIX],
    tag_len: u8,
    tag_cut: bool,
}

/// Finds the SQLSTATE (`C` field) of an ErrorResponse byte by byte; the
/// other fields (message, detail: they may quote data) are skipped.
#[derive(Debug, Default, Clone, Copy)]
struct ErrorScan {
    field: Field,
    code: [u8; 5],
    len: u8,
    found: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// At a field's type byte.
    #[default]
    Type,
    /// Inside a field other than the code.
    Skip,
    /// Inside the code field.
    Code,
    /// The field list ended.
    End,
}

/// An operation waiting for the server.
#[derive(Debug)]
enum Op {
    /// An Execute waiting for its completion.
    Execute(Pending),
    /// A simple Query: its statements, then ReadyForQuery.
    Query(Box<QueryOp>),
    /// A FunctionCall: its result (None once answered), then
    /// ReadyForQuery.
    FunctionCall {
        request_ns: u64,
        pending: Option<Pending>,
    },
    /// The end of an extended-protocol batch: ReadyForQuery answers it.
    Sync {
        request_ns: u64,
        /// See `PgConn::since_execute`.
        failed: Option<Target>,
    },
}

/// One exchange waiting for its answer.
#[derive(Debug)]
struct Pending {
    /// None: the statement is unknown (prepared before we saw the
    /// connection, forgotten, or beyond the text we kept).
    stmt: Option<Stmt>,
    /// What an unknown statement the server's tag does not name is
    /// reported as.
    fallback: Fallback,
    start_ns: u64,
    /// A response message for it arrived (its answer is streaming, or was
    /// lost to a gap): it does not time out.
    answered: bool,
    /// Already reported as timed out: its late answer is not reported.
    timed_out: bool,
}

/// The operation of an exchange whose statement is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// An Execute of a statement prepared before we saw it.
    Execute,
    /// A statement of a Query beyond the text we kept.
    Other,
}

impl Fallback {
    fn operation(self) -> &'static str {
        match self {
            Fallback::Execute => EXECUTE,
            Fallback::Other => sql::OTHER,
        }
    }
}

impl Pending {
    fn new(stmt: Option<Stmt>, fallback: Fallback, start_ns: u64) -> Self {
        Self {
            stmt,
            fallback,
            start_ns,
            answered: false,
            timed_out: false,
        }
    }
}

#[derive(Debug)]
struct QueryOp {
    request_ns: u64,
    stmts: Vec<Stmt>,
    /// Index in `stmts` of the statement the server is running.
    next: usize,
    /// More statements may follow those in `stmts` (text beyond the cap,
    /// or lost to a gap).
    truncated: bool,
    /// The running statement: the first starts with the Query, each later
    /// one when the previous one completed.
    current: Pending,
    /// The server answered a statement with an error and skips the rest.
    errored: bool,
}

impl Op {
    /// When the client sent it: a response that began earlier is not its.
    fn request_ns(&self) -> u64 {
        match self {
            Op::Execute(p) => p.start_ns,
            Op::Query(q) => q.request_ns,
            Op::FunctionCall { request_ns, .. } | Op::Sync { request_ns, .. } => *request_ns,
        }
    }

    /// Ends a batch: ReadyForQuery answers it.
    fn is_terminator(&self) -> bool {
        !matches!(self, Op::Execute(_))
    }

    /// The exchange it still waits to answer, if any.
    fn pending_mut(&mut self) -> Option<&mut Pending> {
        match self {
            Op::Execute(pending) => Some(pending),
            Op::Query(query) if query.waiting() => Some(&mut query.current),
            Op::FunctionCall { pending, .. } => pending.as_mut(),
            Op::Query(_) | Op::Sync { .. } => None,
        }
    }

    /// Every exchange it still waits to answer, in order: a Query's
    /// running statement, then the statements after it, which would start
    /// at `later_ns`.
    fn into_pending(self, later_ns: u64) -> Vec<Pending> {
        match self {
            Op::Execute(pending)
            | Op::FunctionCall {
                pending: Some(pending),
                ..
            } => vec![pending],
            Op::Query(query) if query.waiting() => {
                let QueryOp {
                    stmts,
                    next,
                    current,
                    ..
                } = *query;
                let later = stmts
                    .into_iter()
                    .skip(next + 1)
                    .map(|stmt| Pending::new(Some(stmt), Fallback::Other, later_ns));
                std::iter::once(current).chain(later).collect()
            }
            Op::Query(_) | Op::FunctionCall { .. } | Op::Sync { .. } => Vec::new(),
        }
    }
}

impl QueryOp {
    /// The server may still answer a statement of this Query.
    fn running(&self) -> bool {
        !self.errored && (self.next < self.stmts.len() || self.truncated)
    }

    /// A statement we know of is still to be answered: it can time out,
    /// fail, or be completed by a loss. (Statements beyond the text we
    /// kept may not exist.)
    fn waiting(&self) -> bool {
        !self.errored && self.next < self.stmts.len()
    }

    /// The running statement completed at `end_ns`: returns it, and the
    /// next one starts.
    fn advance(&mut self, end_ns: u64) -> Pending {
        self.next += 1;
        let following = Pending::new(self.stmts.get(self.next).cloned(), Fallback::Other, end_ns);
        std::mem::replace(&mut self.current, following)
    }
}

/// Remembered statement or portal names: a hash of the name and what it
/// refers to, oldest first.
#[derive(Debug, Default)]
struct Names {
    entries: Vec<(u64, Option<Stmt>)>,
}

impl Names {
    fn get(&self, name: u64) -> Option<&Stmt> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, s)| s.as_ref())
    }

    fn insert(&mut self, name: u64, stmt: Option<Stmt>, cap: usize) {
        self.remove(name);
        if self.entries.len() >= cap {
            self.entries.remove(0);
        }
        self.entries.push((name, stmt));
    }

    fn remove(&mut self, name: u64) {
        self.entries.retain(|(n, _)| *n != name);
    }
}

impl PgConn {
    /// A connection where the traced process is `side`; allocates nothing.
    pub fn new(side: Side, start: Start) -> Self {
        let (req, resp, ready, count_from_ns) = match start {
            Start::Fresh => (Phase::Startup, Phase::Header, false, 0),
            Start::MidStream => (
                Phase::Seek(Seek::Message),
                Phase::Seek(Seek::Ready),
                true,
                u64::MAX,
            ),
        };
        Self {
            side,
            verdict: Verdict::Unknown,
            req: Stream::new(req),
            resp: Stream::new(resp),
            prefix: Prefix::default(),
            reply: Reply::default(),
            waiting: VecDeque::new(),
            statements: Names::default(),
            portals: Names::default(),
            unnamed_statement: None,
            unnamed_portal: None,
            since_execute: None,
            group_start_ns: None,
            discarding: false,
            ready,
            pipelining: false,
            count_from_ns,
            last_response_ns: 0,
            last_done_ns: 0,
            seek_pieces: 0,
        }
    }

    fn stream(&mut self, dir: Dir) -> &mut Stream {
        match dir {
            Dir::Req => &mut self.req,
            Dir::Resp => &mut self.resp,
        }
    }

    fn on_data(
        &mut self,
        dir: Dir,
        bytes: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if dir == Dir::Req
            && self.verdict == Verdict::Unknown
            && self.req.phase == Phase::Seek(Seek::Message)
        {
            self.seek_pieces = self.seek_pieces.saturating_add(1);
            if self.seek_pieces > MAX_SEEK_PIECES {
                self.stop(Verdict::Done);
                return;
            }
        }
        let mut at = 0;
        while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
            if self.verdict == Verdict::Done {
                return;
            }
            let before = self.stream(dir).phase;
            let used = self.step(dir, rest, at == 0, ts, c, out);
            let stuck = used == 0 && self.stream(dir).phase == before;
            debug_assert!(!stuck, "postgres parser made no progress in {before:?}");
            // Never spin on input the state machine cannot place.
            at += if stuck { rest.len() } else { used };
        }
    }

    /// Advances one direction over the front of `rest`; returns the bytes
    /// used. Using none is fine only when the phase changed.
    fn step(
        &mut self,
        dir: Dir,
        rest: &[u8],
        piece_start: bool,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        let s = self.stream(dir);
        match s.phase {
            Phase::Stopped => rest.len(),
            Phase::Header if s.header_len == 0 => match header(rest) {
                // The usual case: a whole header in the piece, read in place
                // rather than byte by byte, and the body that follows it
                // handled in the same step.
                Some((kind, len)) => {
                    self.stream(dir).start_ns = ts;
                    self.on_header(dir, (kind, len, 0), ts, c, out);
                    let body = rest.get(5..).unwrap_or_default();
                    if self.stream(dir).phase == Phase::Body && !body.is_empty() {
                        5 + self.body(dir, body, ts, c, out)
                    } else {
                        5
                    }
                }
                None => self.header_piecewise(dir, rest, ts, c, out),
            },
            Phase::Startup | Phase::Header => self.header_piecewise(dir, rest, ts, c, out),
            Phase::Body => self.body(dir, rest, ts, c, out),
            Phase::EncryptionAnswer => {
                self.on_encryption_answer(rest.first().copied());
                1
            }
            Phase::Seek(Seek::Message) => self.seek_message(dir, rest, piece_start),
            Phase::Seek(Seek::NextPiece) => {
                let s = &mut self.resp;
                match candidate(Dir::Resp, rest, 0, piece_start) {
                    Some(verified) => s.found(verified),
                    None => s.phase = Phase::Seek(Seek::Ready),
                }
                0
            }
            Phase::Seek(Seek::Ready) => self.seek_ready(rest, ts, c, out),
        }
    }

    /// Collects header bytes that may span pieces; acts on the header once
    /// it is complete.
    fn header_piecewise(
        &mut self,
        dir: Dir,
        rest: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        let s = self.stream(dir);
        let used = s.collect_header(rest, ts);
        if s.header_complete() {
            let parsed = s.parsed_header();
            s.header_len = 0;
            self.on_header(dir, parsed, ts, c, out);
        }
        used
    }

    /// A complete header was read: (type byte, length, start-up code) as
    /// `Stream::parsed_header` gives them.
    fn on_header(
        &mut self,
        dir: Dir,
        (kind, len, code): (u8, u32, u32),
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if self.stream(dir).phase == Phase::Startup {
            self.on_startup(len, code, c);
            return;
        }
        let unverified = self.stream(dir).tentative == 2;
        if !plausible(dir, kind, len) || (unverified && len > MAX_GUESS) {
            self.lose(dir, c);
            return;
        }
        let s = self.stream(dir);
        if s.tentative > 0 {
            s.tentative -= 1;
        }
        if s.tentative == 0 && self.verdict == Verdict::Unknown {
            self.verdict = Verdict::Speaks;
        }
        let s = self.stream(dir);
        s.kind = kind;
        s.left = len - 4;
        s.cut = false;
        s.phase = Phase::Body;
        match dir {
            Dir::Req => {
                self.prefix.reset();
                if needs(kind).is_none() {
                    // Nothing to collect (Sync, Flush...): what `act` does,
                    // without lending out an empty buffer.
                    let cut = self.req.cut;
                    self.on_request(kind, &[], cut, c, out);
                    self.prefix.finish();
                }
            }
            // Only these are read (`Reply::read`); resetting for every row
            // would be wasted.
            Dir::Resp if matches!(kind, b'C' | b'E') => self.reply = Reply::default(),
            Dir::Resp => {}
        }
        if self.stream(dir).left == 0 && self.stream(dir).phase == Phase::Body {
            self.end_message(dir, ts, c, out);
        }
    }

    /// The client's first packet (or the one after a refused encryption
    /// request).
    fn on_startup(&mut self, len: u32, code: u32, c: &mut ParserCounters) {
        let looks_like_tls =
            self.req.header.first() == Some(&0x16) && self.req.header.get(1) == Some(&0x03);
        match code {
            SSL_REQUEST | GSSENC_REQUEST if len == 8 => {
                self.verdict = Verdict::Speaks;
                self.resp.phase = Phase::EncryptionAnswer;
            }
            CANCEL_REQUEST if len == 16 => self.stop(Verdict::Done),
            _ if code >> 16 == PROTOCOL_3 >> 16 && (8..=MAX_STARTUP).contains(&len) => {
                self.verdict = Verdict::Speaks;
                // The rest (user, database, options) is skipped unread.
                self.req.kind = 0;
                self.req.left = len - 8;
                self.req.cut = false;
                self.req.phase = if self.req.left == 0 {
                    Phase::Header
                } else {
                    Phase::Body
                };
            }
            // TLS without negotiation (sslnegotiation=direct), or another
            // protocol version: nothing we can follow.
            _ if looks_like_tls || code >> 16 == 2 => self.stop(Verdict::Done),
            // Not a start-up packet: garbage.
            _ => self.lose_startup(c),
        }
    }

    /// The start-up packet was garbage or lost: count it once and carry on
    /// as if the connection was found mid-stream.
    fn lose_startup(&mut self, c: &mut ParserCounters) {
        c.resyncs += 1;
        self.ready = true;
        self.req.header_len = 0;
        self.req.phase = Phase::Seek(Seek::Message);
        self.resp.phase = Phase::Seek(Seek::Ready);
    }

    /// `S` or `G`: the rest is encrypted. `N`: a plaintext start-up packet
    /// follows.
    fn on_encryption_answer(&mut self, answer: Option<u8>) {
        match answer {
            Some(b'N') => {
                self.resp.phase = Phase::Header;
                self.req.phase = Phase::Startup;
            }
            _ => self.stop(Verdict::Done),
        }
    }

    /// Feeds body bytes from the front of `rest` to the current message.
    fn body(
        &mut self,
        dir: Dir,
        rest: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        let s = self.stream(dir);
        let n = rest
            .len()
            .min(usize::try_from(s.left).unwrap_or(usize::MAX));
        let chunk = rest.get(..n).unwrap_or_default();
        s.left -= len32(n);
        let kind = s.kind;
        match dir {
            Dir::Req if kind != 0 && !self.prefix.done => {
                if let Some(need) = needs(kind) {
                    self.collect(kind, need, chunk, c, out);
                }
            }
            Dir::Req => {}
            Dir::Resp => self.reply.read(kind, chunk),
        }
        if self.stream(dir).left == 0 && self.stream(dir).phase == Phase::Body {
            self.end_message(dir, ts, c, out);
        }
        n
    }

    /// Collects a request's leading bytes; acts on them once complete,
    /// straight from the piece when they are whole in it.
    fn collect(
        &mut self,
        kind: u8,
        need: Need,
        chunk: &[u8],
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let last = self.req.left == 0;
        let (take, complete) = self.prefix.wanted(need, chunk);
        let taken = chunk.get(..take).unwrap_or_default();
        if self.prefix.buf.is_empty() && (complete || last) {
            self.prefix.done = true;
            self.on_request(kind, taken, false, c, out);
            return;
        }
        self.prefix.buf.extend_from_slice(taken);
        if complete || last {
            self.act(kind, c, out);
        }
    }

    /// Acts on the collected prefix of the current request.
    fn act(&mut self, kind: u8, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        let mut prefix = std::mem::take(&mut self.prefix);
        let cut = self.req.cut;
        self.on_request(kind, &prefix.buf, cut, c, out);
        prefix.finish();
        self.prefix = prefix;
    }

    /// The current message's last byte was seen (or lost) at `ts`.
    fn end_message(&mut self, dir: Dir, ts: u64, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        self.stream(dir).phase = Phase::Header;
        let kind = self.stream(dir).kind;
        match dir {
            Dir::Req => {
                if kind != 0 && !self.prefix.done {
                    self.act(kind, c, out);
                }
            }
            Dir::Resp => self.on_response(kind, ts, c, out),
        }
    }

    fn on_gap(
        &mut self,
        dir: Dir,
        len: u64,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let s = self.stream(dir);
        match s.phase {
            Phase::Body => {
                s.cut = true;
                if dir == Dir::Resp {
                    self.reply.cut();
                }
                let s = self.stream(dir);
                let left = u64::from(s.left);
                if len < left {
                    s.left -= u32::try_from(len).unwrap_or(u32::MAX);
                    let kind = s.kind;
                    // What follows the gap does not continue the prefix.
                    if dir == Dir::Req && kind != 0 && !self.prefix.done {
                        self.act(kind, c, out);
                    }
                    return;
                }
                s.left = 0;
                self.end_message(dir, ts, c, out);
                if len > left && self.stream(dir).phase == Phase::Header {
                    self.lose(dir, c);
                }
            }
            Phase::Header => self.lose(dir, c),
            Phase::Startup => self.lose_startup(c),
            // Encrypted or not: we cannot tell.
            Phase::EncryptionAnswer => self.stop(Verdict::Done),
            Phase::Seek(seek) => {
                s.recent = 0;
                if seek == Seek::NextPiece {
                    // What follows the gap is not where a message starts.
                    s.phase = Phase::Seek(Seek::Ready);
                }
            }
            Phase::Stopped => {}
        }
    }

    /// The framing of `dir` is lost: count it once, unless it was only a
    /// guess or we never found it, and seek.
    fn lose(&mut self, dir: Dir, c: &mut ParserCounters) {
        let unknown = self.verdict == Verdict::Unknown;
        let s = self.stream(dir);
        let guessed = s.tentative > 0;
        s.tentative = 0;
        s.header_len = 0;
        s.recent = 0;
        if !guessed && !unknown {
            c.resyncs += 1;
        }
        match dir {
            Dir::Req => {
                s.phase = Phase::Seek(Seek::Message);
                self.prefix = Prefix::default();
            }
            Dir::Resp => {
                s.phase = Phase::Seek(Seek::Ready);
                // Its answer is being lost, not late: no timeout.
                if let Some(pending) = self.waiting.front_mut().and_then(Op::pending_mut) {
                    pending.answered = true;
                }
            }
        }
    }

    /// Request direction: skips to the next plausible message.
    fn seek_message(&mut self, dir: Dir, rest: &[u8], piece_start: bool) -> usize {
        let found = (0..rest.len())
            .find_map(|i| candidate(dir, rest, i, piece_start && i == 0).map(|v| (i, v)));
        match found {
            Some((at, verified)) => {
                self.stream(dir).found(verified);
                at
            }
            None => rest.len(),
        }
    }

    /// Response direction: scans for ReadyForQuery followed by a plausible
    /// message or the end of the piece; it ends the oldest waiting batch.
    fn seek_ready(
        &mut self,
        rest: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        let mut recent = self.resp.recent;
        for (i, &b) in rest.iter().enumerate() {
            recent = (recent << 8) | u64::from(b);
            let ready =
                (recent >> 8) & 0xFF_FFFF_FFFF == READY_PREFIX && matches!(b, b'I' | b'T' | b'E');
            let after = rest.get(i + 1..).unwrap_or_default();
            if ready && (after.is_empty() || plausible_start(Dir::Resp, after)) {
                self.resp.recent = 0;
                self.resp.phase = Phase::Header;
                self.resp.tentative = 0;
                if self.verdict == Verdict::Unknown {
                    self.verdict = Verdict::Speaks;
                }
                self.ready = true;
                self.on_ready(ts, ts, true, c, out);
                return i + 1;
            }
        }
        self.resp.recent = recent;
        rest.len()
    }

    // ----- requests -----

    /// A request message's prefix is complete (or as complete as it will
    /// get: `cut` when part of it was lost).
    fn on_request(
        &mut self,
        kind: u8,
        prefix: &[u8],
        cut: bool,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let start_ns = self.req.start_ns;
        if self.discarding && !matches!(kind, b'S' | b'X') {
            // The server ignores it.
            return;
        }
        if matches!(kind, b'P' | b'B' | b'D' | b'C' | b'E') {
            self.group_start_ns.get_or_insert(start_ns);
        }
        match kind {
            b'Q' => self.on_query(prefix, cut, start_ns, c, out),
            b'P' => {
                let (name, rest) = split_name(prefix);
                let text = rest.map(until_nul).unwrap_or_default();
                let stmt = Stmt::summarize(text);
                self.note_target(Some(stmt.clone()), start_ns);
                match name {
                    Some([]) => self.unnamed_statement = Some(stmt),
                    Some(name) => self.statements.insert(hash(name), Some(stmt), MAX_PREPARED),
                    None => {}
                }
            }
            b'B' => {
                let (portal, rest) = split_name(prefix);
                let stmt = rest
                    .and_then(|r| split_name(r).0)
                    .and_then(|n| self.statement(n));
                self.note_target(stmt.clone(), start_ns);
                match portal {
                    Some(name) if !name.is_empty() => {
                        self.portals.insert(hash(name), stmt, MAX_PORTALS)
                    }
                    // An unreadable portal name is most likely the unnamed one.
                    _ => self.unnamed_portal = stmt,
                }
            }
            b'D' | b'C' => {
                let target = prefix.first().copied();
                let name = split_name(prefix.get(1..).unwrap_or_default()).0;
                let described = |conn: &Self| match (target, name) {
                    (Some(b'S'), Some(n)) => conn.statement(n),
                    (Some(b'P'), Some(n)) => conn.portal(n),
                    _ => None,
                };
                self.note_target_with(described, start_ns);
                if kind == b'C' {
                    self.close(target, name);
                }
            }
            b'E' => {
                let stmt = split_name(prefix).0.and_then(|n| self.portal(n));
                let start_ns = self.group_start_ns.take().unwrap_or(start_ns);
                self.since_execute = None;
                self.push(
                    Op::Execute(Pending::new(stmt, Fallback::Execute, start_ns)),
                    c,
                    out,
                );
            }
            b'S' => {
                self.discarding = false;
                self.group_start_ns = None;
                let failed = self.since_execute.take();
                self.push(
                    Op::Sync {
                        request_ns: start_ns,
                        failed,
                    },
                    c,
                    out,
                );
            }
            b'H' => self.group_start_ns = None,
            b'F' => {
                let pending =
                    Pending::new(Some(Stmt::bare(FUNCTION_CALL)), Fallback::Execute, start_ns);
                self.push(
                    Op::FunctionCall {
                        request_ns: start_ns,
                        pending: Some(pending),
                    },
                    c,
                    out,
                );
            }
            b'X' => self.on_request_while_lost(c, out),
            // CopyData, CopyDone, CopyFail, authentication responses.
            _ => {}
        }
    }

    fn on_query(
        &mut self,
        prefix: &[u8],
        cut: bool,
        start_ns: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let text = until_nul(prefix);
        let mut truncated = cut || text.len() == prefix.len();
        let mut stmts = Vec::new();
        for statement in sql::statements(text, Dialect::Postgres) {
            if stmts.len() == MAX_STATEMENTS {
                truncated = true;
                break;
            }
            stmts.push(Stmt::summarize(statement));
        }
        if stmts.is_empty() && !truncated {
            // An empty query is still answered (EmptyQueryResponse).
            stmts.push(Stmt::summarize(b""));
        }
        let current = Pending::new(stmts.first().cloned(), Fallback::Other, start_ns);
        let query = QueryOp {
            request_ns: start_ns,
            stmts,
            next: 0,
            truncated,
            current,
            errored: false,
        };
        self.push(Op::Query(Box::new(query)), c, out);
    }

    /// Remembers the first statement a Parse/Bind/Describe/Close since the
    /// last Execute referred to: an error answering it is reported so.
    fn note_target(&mut self, stmt: Option<Stmt>, start_ns: u64) {
        if self.since_execute.is_none() {
            self.since_execute = Some(Target { stmt, start_ns });
        }
    }

    /// `note_target` for a statement looked up only if it will be kept
    /// (each clone of a statement is an atomic increment).
    fn note_target_with(&mut self, stmt: impl FnOnce(&Self) -> Option<Stmt>, start_ns: u64) {
        if self.since_execute.is_none() {
            let stmt = stmt(self);
            self.since_execute = Some(Target { stmt, start_ns });
        }
    }

    fn statement(&self, name: &[u8]) -> Option<Stmt> {
        if name.is_empty() {
            self.unnamed_statement.clone()
        } else {
            self.statements.get(hash(name)).cloned()
        }
    }

    fn portal(&self, name: &[u8]) -> Option<Stmt> {
        if name.is_empty() {
            self.unnamed_portal.clone()
        } else {
            self.portals.get(hash(name)).cloned()
        }
    }

    fn close(&mut self, target: Option<u8>, name: Option<&[u8]>) {
        match (target, name) {
            (Some(b'S'), Some([])) => self.unnamed_statement = None,
            (Some(b'S'), Some(n)) => self.statements.remove(hash(n)),
            (Some(b'P'), Some([])) => self.unnamed_portal = None,
            (Some(b'P'), Some(n)) => self.portals.remove(hash(n)),
            _ => {}
        }
    }

    /// Queues an operation for the server to answer.
    fn push(&mut self, op: Op, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        if self.count_from_ns == u64::MAX {
            self.count_from_ns = op.request_ns();
        }
        self.on_request_while_lost(c, out);
        if self.waiting.iter().any(Op::is_terminator)
            && matches!(self.resp.phase, Phase::Header | Phase::Body)
        {
            self.pipelining = true;
        }
        if self.waiting.len() >= MAX_WAITING {
            // A backlog this deep means responses are being lost: the
            // oldest operation is the one least likely to be answered.
            if let Some(mut oldest) = self.waiting.pop_front() {
                if oldest.pending_mut().is_some_and(|p| !p.timed_out) {
                    c.unmatched_requests += 1;
                }
            }
        }
        self.waiting.push_back(op);
    }

    /// The client sends a request while the response direction is lost.
    /// A client that does not pipeline reads a batch's whole answer before
    /// sending the next: the batches waiting were answered in the bytes we
    /// lost, by the last response piece; and the next response starts at
    /// the next response piece.
    fn on_request_while_lost(&mut self, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        if self.resp.phase != Phase::Seek(Seek::Ready) {
            return;
        }
        // Clients send queries only after the start-up's ReadyForQuery:
        // if it was lost, the start-up is over anyway.
        self.ready = true;
        if self.pipelining {
            return;
        }
        // Only batches sent before the last response piece can have been
        // answered in it.
        let answered = |op: &Op| op.is_terminator() && op.request_ns() < self.last_response_ns;
        if let Some(last) = self.waiting.iter().rposition(answered) {
            let end_ns = self.last_response_ns;
            for op in self.waiting.drain(..=last) {
                finish_lost(op, end_ns, c, out);
            }
        }
        if self.waiting.is_empty() {
            self.resp.phase = Phase::Seek(Seek::NextPiece);
        }
    }

    // ----- responses -----

    /// A whole response message arrived, its last byte at `end_ns`.
    fn on_response(
        &mut self,
        kind: u8,
        end_ns: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let start_ns = self.resp.start_ns;
        if !self.ready {
            // Authentication and parameters: not replies.
            self.ready = kind == b'Z';
            return;
        }
        match kind {
            // Asynchronous: notices, notifications, parameter changes.
            b'N' | b'A' | b'S' | b'K' | b'R' | b'v' => {}
            b'Z' => self.on_ready(start_ns, end_ns, false, c, out),
            b'C' | b'I' | b's' => self.on_completion(kind, start_ns, end_ns, c, out),
            b'E' => self.on_error(start_ns, end_ns, c, out),
            b'V' => self.on_function_result(start_ns, end_ns, c, out),
            // Replication streams (CopyBothResponse): not followed.
            b'W' => self.stop(Verdict::Done),
            // Part of an answer: descriptions, rows, COPY, ParseComplete...
            _ => {
                if let Some(op) = self.waiting.front_mut() {
                    if op.request_ns() <= start_ns {
                        if let Some(pending) = op.pending_mut() {
                            pending.answered = true;
                        }
                    }
                }
            }
        }
    }

    /// Can this response (begun at `start_ns`) answer the oldest waiting
    /// operation? If not it answers a request we did not see: counted
    /// unmatched, unless that was before we started counting.
    fn answerable(&mut self, start_ns: u64, c: &mut ParserCounters) -> bool {
        if self
            .waiting
            .front()
            .is_some_and(|op| op.request_ns() <= start_ns)
        {
            return true;
        }
        if start_ns >= self.count_from_ns {
            c.unmatched_responses += 1;
        }
        false
    }

    /// CommandComplete, EmptyQueryResponse or PortalSuspended.
    fn on_completion(
        &mut self,
        kind: u8,
        start_ns: u64,
        end_ns: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if !self.answerable(start_ns, c) {
            return;
        }
        self.last_done_ns = end_ns;
        let reply = std::mem::take(&mut self.reply);
        let tag = if kind == b'C' { reply.tag() } else { &[] };
        match self.waiting.front_mut() {
            Some(Op::Execute(_)) => {
                if let Some(Op::Execute(pending)) = self.waiting.pop_front() {
                    report(pending, tag, None, false, end_ns, c, out);
                }
            }
            Some(Op::Query(query)) if !query.errored => {
                let pending = query.advance(end_ns);
                report(pending, tag, None, false, end_ns, c, out);
            }
            // Nothing of this kind was asked for.
            _ => c.unmatched_responses += 1,
        }
    }

    fn on_error(
        &mut self,
        start_ns: u64,
        end_ns: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let code = self.reply.error.code();
        let lost = code.is_none() && self.resp.cut;
        let error = Some(code.map_or_else(|| UNKNOWN_SQLSTATE.to_owned(), str::to_owned));
        let previous_done_ns = std::mem::replace(&mut self.last_done_ns, end_ns);
        match self.waiting.front().map(|op| op.request_ns() <= start_ns) {
            // Nothing sent is waiting: the client's open batch failed
            // (Parse, Describe, Flush, no Sync yet), or the server speaks on
            // its own (shutdown, idle timeout): not a reply.
            None => {
                if let Some(target) = self.since_execute.take() {
                    self.discard_open_batch();
                    let pending = Pending::new(target.stmt, Fallback::Execute, target.start_ns);
                    report(pending, &[], error, lost, end_ns, c, out);
                }
                return;
            }
            Some(false) => {
                if start_ns >= self.count_from_ns {
                    c.unmatched_responses += 1;
                }
                return;
            }
            Some(true) => {}
        }
        let pending = match self.waiting.front_mut() {
            Some(Op::Execute(_)) => {
                let pending = match self.waiting.pop_front() {
                    Some(Op::Execute(pending)) => Some(pending),
                    _ => None,
                };
                self.discard_to_sync();
                pending
            }
            Some(Op::Query(query)) if !query.errored => {
                let running = query.running();
                query.errored = true;
                let mut pending = query.advance(end_ns);
                if !running {
                    // Every statement completed: the implicit COMMIT at
                    // the end of the Query failed.
                    pending.stmt = Some(Stmt::bare("COMMIT"));
                }
                Some(pending)
            }
            Some(Op::FunctionCall { pending, .. }) => pending.take(),
            Some(Op::Sync { failed, request_ns }) => Some(match failed.take() {
                Some(target) => Pending::new(target.stmt, Fallback::Execute, target.start_ns),
                // The batch ran: its implicit COMMIT failed.
                None => Pending::new(
                    Some(Stmt::bare("COMMIT")),
                    Fallback::Execute,
                    (*request_ns).max(previous_done_ns),
                ),
            }),
            Some(Op::Query(_)) | None => None,
        };
        match pending {
            Some(pending) => report(pending, &[], error, lost, end_ns, c, out),
            None => c.unmatched_responses += 1,
        }
    }

    /// After an error in an extended-protocol batch the server skips
    /// everything up to the Sync: those Executes are not exchanges.
    fn discard_to_sync(&mut self) {
        while let Some(op) = self.waiting.front() {
            if matches!(op, Op::Sync { .. }) {
                return;
            }
            self.waiting.pop_front();
        }
        self.discard_open_batch();
    }

    /// The client has not sent the Sync yet: what it sends until then is
    /// skipped too.
    fn discard_open_batch(&mut self) {
        self.discarding = true;
        self.since_execute = None;
        self.group_start_ns = None;
    }

    fn on_function_result(
        &mut self,
        start_ns: u64,
        end_ns: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if !self.answerable(start_ns, c) {
            return;
        }
        self.last_done_ns = end_ns;
        match self.waiting.front_mut() {
            Some(Op::FunctionCall { pending, .. }) if pending.is_some() => {
                if let Some(pending) = pending.take() {
                    report(pending, &[], None, false, end_ns, c, out);
                }
            }
            _ => c.unmatched_responses += 1,
        }
    }

    /// ReadyForQuery ends the oldest batch. `resynced`: found by scanning
    /// after a loss, so the batch's answers we did not see were lost, not
    /// skipped: its exchanges still waiting complete now.
    fn on_ready(
        &mut self,
        start_ns: u64,
        end_ns: u64,
        resynced: bool,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        // The usual case first: the oldest waiting operation is the batch
        // end this answers (what `position` below would find, cheaper).
        if let Some(op) = self.waiting.front() {
            if op.is_terminator() && op.request_ns() <= start_ns {
                if let Some(op) = self.waiting.pop_front() {
                    if resynced {
                        finish_lost(op, end_ns, c, out);
                    } else {
                        drop_unanswered(op, c);
                    }
                }
                return;
            }
        }
        let end = match self.waiting.iter().position(Op::is_terminator) {
            Some(t)
                if self
                    .waiting
                    .get(t)
                    .is_some_and(|op| op.request_ns() <= start_ns) =>
            {
                t + 1
            }
            // No batch end waiting: the Z answers a request we did not see;
            // what it can answer among what we saw is over.
            _ => self
                .waiting
                .iter()
                .take_while(|op| op.request_ns() <= start_ns)
                .count(),
        };
        for op in self.waiting.drain(..end) {
            if resynced {
                finish_lost(op, end_ns, c, out);
            } else {
                drop_unanswered(op, c);
            }
        }
    }

    fn stop(&mut self, verdict: Verdict) {
        self.verdict = verdict;
        self.waiting = VecDeque::new();
        self.statements = Names::default();
        self.portals = Names::default();
        self.unnamed_statement = None;
        self.unnamed_portal = None;
        self.since_execute = None;
        self.prefix = Prefix::default();
        self.req.phase = Phase::Stopped;
        self.resp.phase = Phase::Stopped;
    }
}

impl Spec for PgConn {
    const NAME: &'static str = "postgresql";

    fn start(side: Side, start: Start) -> Self {
        Self::new(side, start)
    }

    fn detect(from_client: bool, bytes: &[u8]) -> Detection {
        match (from_client, starts_like_postgres(bytes)) {
            (false, _) | (true, Some(false)) => Detection::No,
            (true, Some(true)) => Detection::Yes,
            (true, None) => Detection::NeedMore,
        }
    }

    fn traced_on(side: Side) -> bool {
        side == Side::Client
    }
}

impl ConnParser for PgConn {
    fn on_piece(
        &mut self,
        outbound: bool,
        piece: Piece<'_>,
        ts_ns: u64,
        counters: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if self.verdict == Verdict::Done || piece == Piece::Data(&[]) || piece == Piece::Gap(0) {
            return;
        }
        let dir = if outbound == (self.side == Side::Client) {
            Dir::Req
        } else {
            Dir::Resp
        };
        if dir == Dir::Resp {
            self.last_response_ns = ts_ns;
        }
        match piece {
            Piece::Data(bytes) => self.on_data(dir, bytes, ts_ns, counters, out),
            Piece::Gap(n) => self.on_gap(dir, n, ts_ns, counters, out),
        }
    }

    fn on_close(&mut self, ts_ns: u64, counters: &mut ParserCounters, out: &mut Vec<Exchange>) {
        let lost = self.resp.phase == Phase::Seek(Seek::Ready);
        for op in std::mem::take(&mut self.waiting) {
            // A Query's later statements never ran.
            let Some(pending) = op.into_pending(ts_ns).into_iter().next() else {
                continue;
            };
            if lost && pending.answered && !pending.timed_out {
                // Its answer was lost: not the close's doing.
                counters.unmatched_requests += 1;
            } else {
                fail(pending, Failure::ConnectionClosed, ts_ns, counters, out);
            }
        }
        let verdict = self.verdict;
        self.stop(verdict);
    }

    fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<Exchange>) {
        let Some(cutoff) = now_ns.checked_sub(timeout_ns) else {
            return;
        };
        for op in &mut self.waiting {
            let Some(pending) = op.pending_mut() else {
                continue;
            };
            if pending.answered || pending.timed_out || pending.start_ns > cutoff {
                continue;
            }
            pending.timed_out = true;
            out.push(exchange(pending, &[], None, Some(Failure::Timeout), now_ns));
        }
    }

    fn verdict(&self) -> Verdict {
        self.verdict
    }
}

impl Stream {
    fn new(phase: Phase) -> Self {
        Self {
            phase,
            header: [0; 8],
            header_len: 0,
            kind: 0,
            left: 0,
            start_ns: 0,
            cut: false,
            tentative: 0,
            recent: 0,
        }
    }

    /// A start-up packet has no type byte but a 4-byte code.
    fn header_size(&self) -> usize {
        if self.phase == Phase::Startup {
            8
        } else {
            5
        }
    }

    fn collect_header(&mut self, rest: &[u8], ts: u64) -> usize {
        let have = usize::from(self.header_len);
        if have == 0 {
            self.start_ns = ts;
        }
        let want = self.header_size().saturating_sub(have);
        let mut used = 0;
        for (slot, &b) in self.header.iter_mut().skip(have).take(want).zip(rest) {
            *slot = b;
            used += 1;
        }
        self.header_len += u8::try_from(used).unwrap_or(0);
        used
    }

    fn header_complete(&self) -> bool {
        usize::from(self.header_len) == self.header_size()
    }

    /// (type byte, length, start-up code) of the collected header.
    fn parsed_header(&self) -> (u8, u32, u32) {
        let [a, b, c, d, e, f, g, h] = self.header;
        if self.phase == Phase::Startup {
            (
                0,
                u32::from_be_bytes([a, b, c, d]),
                u32::from_be_bytes([e, f, g, h]),
            )
        } else {
            (a, u32::from_be_bytes([b, c, d, e]), 0)
        }
    }

    /// A message plausibly starts here: `verified` when what follows it
    /// looked right too.
    fn found(&mut self, verified: bool) {
        self.phase = Phase::Header;
        self.header_len = 0;
        self.recent = 0;
        self.tentative = if verified { 1 } else { 2 };
    }
}

/// How much of a request message's start to collect: up to `nuls` NUL
/// terminators, at most `cap` bytes.
#[derive(Debug, Clone, Copy)]
struct Need {
    nuls: u8,
    cap: usize,
}

/// What matters in a request of type `kind`; None: nothing (the type is
/// enough).
fn needs(kind: u8) -> Option<Need> {
    let (nuls, cap) = match kind {
        // Query: the text.
        b'Q' => (1, MAX_STATEMENT + 1),
        // Parse: statement name, text.
        b'P' => (2, MAX_NAME + 1 + MAX_STATEMENT + 1),
        // Bind: portal name, statement name (not the parameters).
        b'B' => (2, 2 * (MAX_NAME + 1)),
        // Execute: portal name.
        b'E' => (1, MAX_NAME + 1),
        // Describe, Close: 'S' or 'P', then a name.
        b'D' | b'C' => (1, MAX_NAME + 2),
        _ => return None,
    };
    Some(Need { nuls, cap })
}

impl Prefix {
    /// How many bytes of `chunk` to keep, and whether the prefix is then
    /// complete.
    fn wanted(&mut self, need: Need, chunk: &[u8]) -> (usize, bool) {
        let room = need.cap.saturating_sub(self.buf.len());
        let window = chunk.get(..room).unwrap_or(chunk);
        for (i, &b) in window.iter().enumerate() {
            if b == 0 {
                self.nuls = self.nuls.saturating_add(1);
                if self.nuls >= need.nuls {
                    return (i + 1, true);
                }
            }
        }
        (window.len(), window.len() == room)
    }

    fn reset(&mut self) {
        self.finish();
        self.nuls = 0;
        self.done = false;
    }

    /// The prefix was used: forget it, buffer and all, so that no
    /// statement text outlives its message (and an idle connection holds
    /// no buffer). Most requests are whole in one piece and never use it.
    fn finish(&mut self) {
        self.done = true;
        self.buf = Vec::new();
    }
}

impl Reply {
    fn read(&mut self, kind: u8, chunk: &[u8]) {
        match kind {
            b'E' => self.error.feed(chunk),
            b'C' if !self.tag_cut => {
                let have = usize::from(self.tag_len);
                for (slot, &b) in self.tag.iter_mut().skip(have).zip(chunk) {
                    *slot = b;
                    self.tag_len += 1;
                }
            }
            _ => {}
        }
    }

    /// Part of the body was lost: what follows does not continue what was
    /// read (a code stitched across a gap could be wrong).
    fn cut(&mut self) {
        if !self.error.found {
            self.error.field = Field::End;
        }
        self.tag_cut = true;
    }

    /// The command tag's leading bytes, without the terminator.
    fn tag(&self) -> &[u8] {
        until_nul(
            self.tag
                .get(..usize::from(self.tag_len))
                .unwrap_or_default(),
        )
    }
}

impl ErrorScan {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.found || self.field == Field::End {
                return;
            }
            match (self.field, b) {
                (Field::Type, 0) => self.field = Field::End,
                (Field::Type, b'C') => {
                    self.field = Field::Code;
                    self.len = 0;
                }
                (Field::Type, _) => self.field = Field::Skip,
                (Field::Skip, 0) => self.field = Field::Type,
                (Field::Skip, _) => {}
                (Field::Code, 0) => {
                    self.found = usize::from(self.len) == self.code.len()
                        && self
                            .code
                            .iter()
                            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
                    self.field = Field::Type;
                }
                (Field::Code, _) => {
                    if let Some(slot) = self.code.get_mut(usize::from(self.len)) {
                        *slot = b;
                    }
                    self.len = self.len.saturating_add(1);
                }
                (Field::End, _) => {}
            }
        }
    }

    /// The SQLSTATE, if the message carried a well-formed one.
    fn code(&self) -> Option<&str> {
        self.found
            .then(|| std::str::from_utf8(&self.code).ok())
            .flatten()
    }
}

/// The type byte and length at the start of `bytes`, if it holds 5 bytes.
fn header(bytes: &[u8]) -> Option<(u8, u32)> {
    match bytes {
        [kind, a, b, c, d, ..] => Some((*kind, u32::from_be_bytes([*a, *b, *c, *d]))),
        _ => None,
    }
}

/// The possible lengths of a message of type `kind` in `dir`; None for a
/// type `dir` never carries. Exact for the fixed-size messages, which makes
/// guessed boundaries reliable.
const fn bounds(dir: Dir, kind: u8) -> Option<(u32, u32)> {
    Some(match (dir, kind) {
        (Dir::Req, b'Q' | b'f') => (5, MAX_MESSAGE),
        (Dir::Req, b'P') => (8, MAX_MESSAGE),
        (Dir::Req, b'B') => (12, MAX_MESSAGE),
        (Dir::Req, b'E') => (9, MAX_MESSAGE),
        (Dir::Req, b'D' | b'C') => (6, MAX_MESSAGE),
        (Dir::Req, b'S' | b'H' | b'c' | b'X') => (4, 4),
        (Dir::Req, b'd' | b'p') => (4, MAX_MESSAGE),
        (Dir::Req, b'F') => (14, MAX_MESSAGE),
        (Dir::Resp, b'R' | b'V') => (8, MAX_MESSAGE),
        // Protocol 3.2 allows keys up to 256 bytes.
        (Dir::Resp, b'K') => (12, 8 + 256),
        (Dir::Resp, b'Z') => (5, 5),
        (Dir::Resp, b'S' | b'T' | b'D' | b't') => (6, MAX_MESSAGE),
        (Dir::Resp, b'C' | b'E' | b'N') => (5, MAX_MESSAGE),
        (Dir::Resp, b'I' | b'1' | b'2' | b'3' | b'n' | b's' | b'c') => (4, 4),
        (Dir::Resp, b'A') => (10, MAX_MESSAGE),
        (Dir::Resp, b'G' | b'H' | b'W') => (7, MAX_MESSAGE),
        (Dir::Resp, b'd') => (4, MAX_MESSAGE),
        (Dir::Resp, b'v') => (12, MAX_MESSAGE),
        _ => return None,
    })
}

/// `bounds` for every type byte, request direction then response: looked
/// up for every message header.
const BOUNDS: [[Option<(u32, u32)>; 256]; 2] = {
    let mut table = [[None; 256]; 2];
    let mut kind = 0;
    while kind < 256 {
        table[0][kind] = bounds(Dir::Req, kind as u8);
        table[1][kind] = bounds(Dir::Resp, kind as u8);
        kind += 1;
    }
    table
};

fn plausible(dir: Dir, kind: u8, len: u32) -> bool {
    let table = match dir {
        Dir::Req => &BOUNDS[0],
        Dir::Resp => &BOUNDS[1],
    };
    table[usize::from(kind)].is_some_and(|(min, max)| min <= len && len <= max)
}

/// `bytes` start like a message of `dir` (as far as they go).
fn plausible_start(dir: Dir, bytes: &[u8]) -> bool {
    match header(bytes) {
        Some((kind, len)) => plausible(dir, kind, len),
        None => bytes
            .first()
            .is_some_and(|&kind| bounds(dir, kind).is_some()),
    }
}

/// Does a message plausibly start at `at` in `bytes`? `Some(true)` when it
/// ends exactly at the end of `bytes` or where another plausible message
/// starts; `Some(false)` when it (or its header) runs past the end of
/// `bytes`, which is accepted only where a piece starts (a write usually
/// starts a message) and for a modest length (checked once the header is
/// whole: see `on_header`).
fn candidate(dir: Dir, bytes: &[u8], at: usize, piece_start: bool) -> Option<bool> {
    let rest = bytes.get(at..)?;
    let Some((kind, len)) = header(rest) else {
        let known = rest.first().is_some_and(|&k| bounds(dir, k).is_some());
        return (piece_start && known).then_some(false);
    };
    if !plausible(dir, kind, len) {
        return None;
    }
    let end = usize::try_from(len).ok()?.checked_add(1)?;
    match rest.get(end..) {
        Some([]) => Some(true),
        Some(after) => plausible_start(dir, after).then_some(true),
        None => (piece_start && len <= MAX_GUESS).then_some(false),
    }
}

/// (name, what follows its terminator), when the terminator is there.
fn split_name(bytes: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    match bytes.iter().position(|&b| b == 0) {
        Some(nul) => (bytes.get(..nul), bytes.get(nul + 1..)),
        None => (None, None),
    }
}

/// `bytes` up to its first NUL.
fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes.get(..end).unwrap_or(bytes)
}

/// FNV-1a: names are kept as hashes, not as text.
fn hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The exchange for `pending`, answered at `end_ns`.
fn exchange(
    pending: &Pending,
    tag: &[u8],
    error: Option<String>,
    failure: Option<Failure>,
    end_ns: u64,
) -> Exchange {
    let (operation, collection) = match &pending.stmt {
        Some(stmt) => (
            stmt.operation,
            stmt.collection.as_deref().map(str::to_owned),
        ),
        None => {
            // The server's tag names the command ("INSERT 0 1").
            let named = if tag.is_empty() {
                sql::OTHER
            } else {
                sql::summarize(tag, Dialect::Postgres).operation
            };
            let operation = if named == sql::OTHER {
                pending.fallback.operation()
            } else {
                named
            };
            (operation, None)
        }
    };
    Exchange {
        call: Call::Db(DbCall {
            system: DbSystem::Postgres,
            operation: operation.to_owned(),
            collection,
            error,
        }),
        failure,
        start_ns: pending.start_ns,
        end_ns,
        response_body_bytes: None,
    }
}

/// `pending` was answered at `end_ns` (with an error, or with `tag`).
/// `lost`: a field of the answer (the SQLSTATE) was lost to a gap.
fn report(
    pending: Pending,
    tag: &[u8],
    error: Option<String>,
    lost: bool,
    end_ns: u64,
    c: &mut ParserCounters,
    out: &mut Vec<Exchange>,
) {
    if pending.timed_out {
        return;
    }
    if pending.stmt.is_none() || lost {
        c.partial += 1;
    }
    out.push(exchange(&pending, tag, error, None, end_ns));
}

/// `pending` will get no answer.
fn fail(
    pending: Pending,
    failure: Failure,
    end_ns: u64,
    c: &mut ParserCounters,
    out: &mut Vec<Exchange>,
) {
    if pending.timed_out {
        return;
    }
    if pending.stmt.is_none() {
        c.partial += 1;
    }
    out.push(exchange(&pending, &[], None, Some(failure), end_ns));
}

/// `op`'s batch ended at `end_ns` with its answers lost: what it waited
/// for still ran, without an error we could see. A Query's later
/// statements get no time of their own: the span belongs to the first.
fn finish_lost(op: Op, end_ns: u64, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
    for pending in op.into_pending(end_ns) {
        report(pending, &[], None, false, end_ns, c, out);
    }
}

/// ReadyForQuery ended `op`'s batch, read in full, without answering it.
fn drop_unanswered(op: Op, c: &mut ParserCounters) {
    match op {
        Op::Execute(pending)
        | Op::FunctionCall {
            pending: Some(pending),
            ..
        } if !pending.timed_out => c.unmatched_requests += 1,
        // Statements the splitter saw that the server did not run as such
        // (a function body with semicolons in it), and Syncs.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::XorShift;

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(len32(body.len()) + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn cstr(parts: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for part in parts {
            body.extend_from_slice(part);
            body.push(0);
        }
        body
    }

    fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut p = (len32(rest.len()) + 8).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(rest);
        p
    }

    fn startup() -> Vec<u8> {
        packet(PROTOCOL_3, b"user\0app\0database\0shop\0\0")
    }

    fn query(text: &str) -> Vec<u8> {
        msg(b'Q', &cstr(&[text.as_bytes()]))
    }

    fn parse(name: &str, text: &str) -> Vec<u8> {
        let mut body = cstr(&[name.as_bytes(), text.as_bytes()]);
        body.extend_from_slice(&[0, 0]);
        msg(b'P', &body)
    }

    fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        let mut body = cstr(&[portal.as_bytes(), stmt.as_bytes()]);
        // No formats, one text parameter "42", no result formats.
        body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, b'4', b'2', 0, 0]);
        msg(b'B', &body)
    }

    fn describe(target: u8, name: &str) -> Vec<u8> {
        let mut body = vec![target];
        body.extend_from_slice(&cstr(&[name.as_bytes()]));
        msg(b'D', &body)
    }

    fn close(target: u8, name: &str) -> Vec<u8> {
        let mut body = vec![target];
        body.extend_from_slice(&cstr(&[name.as_bytes()]));
        msg(b'C', &body)
    }

    fn execute(portal: &str, max_rows: u32) -> Vec<u8> {
        let mut body = cstr(&[portal.as_bytes()]);
        body.extend_from_slice(&max_rows.to_be_bytes());
        msg(b'E', &body)
    }

    fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    fn flush() -> Vec<u8> {
        msg(b'H', &[])
    }

    /// Parse, Bind, Describe, Execute, Sync of the unnamed statement.
    fn extended(text: &str) -> Vec<u8> {
        [
            parse("", text),
            bind("", ""),
            describe(b'P', ""),
            execute("", 0),
            sync(),
        ]
        .concat()
    }

    fn welcome() -> Vec<u8> {
        [
            msg(b'R', &[0, 0, 0, 0]),
            msg(b'S', &cstr(&[b"server_version", b"15.18"])),
            msg(b'K', &[0, 0, 0, 7, 1, 2, 3, 4]),
            ready(),
        ]
        .concat()
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', &cstr(&[tag.as_bytes()]))
    }

    fn error(code: &str) -> Vec<u8> {
        let mut body = cstr(&[b"SERROR", b"VERROR"]);
        body.push(b'C');
        body.extend_from_slice(&cstr(&[code.as_bytes()]));
        body.extend_from_slice(&cstr(&[b"Mrelation \"secret_table\" does not exist"]));
        body.push(0);
        msg(b'E', &body)
    }

    fn rows(n: usize) -> Vec<u8> {
        let mut r = msg(
            b'T',
            b"\0\x01abalance\0\0\0@\x06\0\x03\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        );
        for _ in 0..n {
            r.extend_from_slice(&msg(b'D', b"\0\x01\0\0\0\x04-591"));
        }
        r
    }

    fn notice() -> Vec<u8> {
        msg(
            b'N',
            &[cstr(&[b"SNOTICE", b"C00000", b"Mhello"]), vec![0]].concat(),
        )
    }

    fn notification() -> Vec<u8> {
        msg(
            b'A',
            &[vec![0, 0, 0, 9], cstr(&[b"chan", b"payload"])].concat(),
        )
    }

    /// One connection under test, with a clock that ticks per piece.
    type Conn = crate::testutil::Driver<PgConn>;

    type Got = (String, Option<String>, Option<String>);

    impl Conn {
        fn new(start: Start) -> Self {
            Self::with(PgConn::new(Side::Client, start), Side::Client)
        }

        /// A fresh connection past its start-up.
        fn ready() -> Self {
            let mut t = Self::new(Start::Fresh);
            t.req(&startup());
            t.resp(&welcome());
            assert_eq!(t.conn.verdict(), Verdict::Speaks);
            t
        }

        fn got(&self) -> Vec<Got> {
            self.out
                .iter()
                .map(|e| match &e.call {
                    Call::Db(db) => (
                        db.operation.clone(),
                        db.collection.clone(),
                        db.error.clone(),
                    ),
                    other => panic!("not a db call: {other:?}"),
                })
                .collect()
        }

        fn times(&self) -> Vec<(u64, u64)> {
            self.out.iter().map(|e| (e.start_ns, e.end_ns)).collect()
        }

        /// (resyncs, unmatched requests, unmatched responses, partial)
        fn counts(&self) -> (u64, u64, u64, u64) {
            (
                self.c.resyncs,
                self.c.unmatched_requests,
                self.c.unmatched_responses,
                self.c.partial,
            )
        }
    }

    fn ok(op: &str, table: Option<&str>) -> Got {
        (op.to_owned(), table.map(str::to_owned), None)
    }

    fn err(op: &str, table: Option<&str>, code: &str) -> Got {
        (
            op.to_owned(),
            table.map(str::to_owned),
            Some(code.to_owned()),
        )
    }

    #[test]
    fn bounds_table_matches_bounds() {
        for kind in 0..=255u8 {
            for (dir, row) in [(Dir::Req, 0), (Dir::Resp, 1)] {
                assert_eq!(BOUNDS[row][usize::from(kind)], bounds(dir, kind));
                for len in [0, 3, 4, 5, 8, 12, 268, MAX_MESSAGE, MAX_MESSAGE + 1] {
                    let expected =
                        bounds(dir, kind).is_some_and(|(min, max)| (min..=max).contains(&len));
                    assert_eq!(plausible(dir, kind, len), expected);
                }
            }
        }
    }

    #[test]
    fn simple_query() {
        let mut t = Conn::ready();
        let sent = t.req(&query(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7",
        ));
        t.resp(&rows(1));
        let done = t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got(), vec![ok("SELECT", Some("pgbench_accounts"))]);
        assert_eq!(t.times(), vec![(sent, done)]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
        assert!(t.conn.waiting.is_empty());
    }

    #[test]
    fn multi_statement_query_pairs_in_order() {
        let mut t = Conn::ready();
        let sent = t.req(&query(
            "BEGIN; UPDATE t SET x = 1 WHERE id = 2; INSERT INTO h VALUES (1); COMMIT",
        ));
        let a = t.resp(&complete("BEGIN"));
        let b = t.resp(&complete("UPDATE 1"));
        let c = t.resp(&[complete("INSERT 0 1"), complete("COMMIT"), ready()].concat());
        assert_eq!(
            t.got(),
            vec![
                ok("BEGIN", None),
                ok("UPDATE", Some("t")),
                ok("INSERT", Some("h")),
                ok("COMMIT", None)
            ]
        );
        // Each later statement starts when the previous one completed.
        assert_eq!(t.times(), vec![(sent, a), (a, b), (b, c), (c, c)]);
    }

    #[test]
    fn error_skips_the_rest_of_the_query() {
        let mut t = Conn::ready();
        t.req(&query("select 1; select * from missing_table; select 2"));
        t.resp(&[rows(1), complete("SELECT 1"), error("42P01"), ready()].concat());
        assert_eq!(
            t.got(),
            vec![
                ok("SELECT", None),
                err("SELECT", Some("missing_table"), "42P01")
            ]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
        // The next query pairs normally.
        t.req(&query("select 3"));
        t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got().len(), 3);
    }

    #[test]
    fn empty_queries_are_answered_and_counted() {
        let mut t = Conn::ready();
        t.req(&query(""));
        t.resp(&[msg(b'I', &[]), ready()].concat());
        t.req(&query(" ; -- nothing\n"));
        t.resp(&[msg(b'I', &[]), ready()].concat());
        assert_eq!(t.got(), vec![ok("_OTHER", None), ok("_OTHER", None)]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn bad_sqlstate_is_internal_error() {
        let mut t = Conn::ready();
        t.req(&query("select 1"));
        let mut bad = cstr(&[b"SERROR", b"Cx1"]);
        bad.push(0);
        t.resp(&[msg(b'E', &bad), ready()].concat());
        t.req(&query("select 1"));
        t.resp(&[msg(b'E', &[0]), ready()].concat());
        assert_eq!(
            t.got(),
            vec![err("SELECT", None, "XX000"), err("SELECT", None, "XX000")]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn extended_protocol_unnamed_statements() {
        let mut t = Conn::ready();
        let sent = t.req(&extended(
            "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
        ));
        t.resp(&[msg(b'1', &[]), msg(b'2', &[]), msg(b'n', &[])].concat());
        let done = t.resp(&complete("UPDATE 1"));
        t.resp(&ready());
        t.req(&extended(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        ));
        t.resp(
            &[
                msg(b'1', &[]),
                msg(b'2', &[]),
                rows(1),
                complete("SELECT 1"),
                ready(),
            ]
            .concat(),
        );
        assert_eq!(
            t.got(),
            vec![
                ok("UPDATE", Some("pgbench_tellers")),
                ok("SELECT", Some("pgbench_accounts"))
            ]
        );
        // The Execute's exchange ends at its completion, not at the Sync's.
        assert_eq!(t.times()[0], (sent, done));
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn prepared_statements_are_remembered() {
        let mut t = Conn::ready();
        t.req(&[parse("P_1", "UPDATE a SET b = $1"), sync()].concat());
        t.resp(&[msg(b'1', &[]), ready()].concat());
        t.req(&[parse("P_2", "SELECT * FROM c WHERE id = $1"), sync()].concat());
        t.resp(&[msg(b'1', &[]), ready()].concat());
        // Preparing alone is not an exchange.
        assert!(t.out.is_empty());
        for _ in 0..3 {
            for (stmt, tag) in [("P_1", "UPDATE 1"), ("P_2", "SELECT 1")] {
                t.req(&[bind("", stmt), describe(b'P', ""), execute("", 0), sync()].concat());
                t.resp(&[msg(b'2', &[]), msg(b'n', &[]), complete(tag), ready()].concat());
            }
        }
        let want: Vec<Got> = (0..3)
            .flat_map(|_| [ok("UPDATE", Some("a")), ok("SELECT", Some("c"))])
            .collect();
        assert_eq!(t.got(), want);
        // Closed: an Execute of it is unknown (named from the tag).
        t.req(&[close(b'S', "P_1"), sync()].concat());
        t.resp(&[msg(b'3', &[]), ready()].concat());
        t.req(&[bind("", "P_1"), execute("", 0), sync()].concat());
        t.resp(&[msg(b'2', &[]), complete("UPDATE 3"), ready()].concat());
        assert_eq!(t.got().last(), Some(&ok("UPDATE", None)));
        assert_eq!(t.counts(), (0, 0, 0, 1));
    }

    #[test]
    fn named_portal_fetched_in_steps() {
        let mut t = Conn::ready();
        t.req(
            &[
                parse("S_1", "SELECT * FROM big"),
                bind("C_1", "S_1"),
                execute("C_1", 100),
                sync(),
            ]
            .concat(),
        );
        t.resp(
            &[
                msg(b'1', &[]),
                msg(b'2', &[]),
                rows(100),
                msg(b's', &[]),
                ready(),
            ]
            .concat(),
        );
        t.req(&[execute("C_1", 100), sync()].concat());
        t.resp(&[rows(3), complete("SELECT 3"), ready()].concat());
        // PortalSuspended answers its Execute too.
        assert_eq!(
            t.got(),
            vec![ok("SELECT", Some("big")), ok("SELECT", Some("big"))]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn pipelined_batches() {
        let mut t = Conn::ready();
        let mut batch = Vec::new();
        for table in ["a", "b", "c"] {
            batch.extend(parse("", &format!("INSERT INTO {table} VALUES ($1)")));
            batch.extend(bind("", ""));
            batch.extend(execute("", 0));
        }
        batch.extend(sync());
        batch.extend(extended("DELETE FROM d"));
        t.req(&batch);
        let mut answer = Vec::new();
        for _ in 0..3 {
            answer.extend([msg(b'1', &[]), msg(b'2', &[]), complete("INSERT 0 1")].concat());
        }
        answer.extend(ready());
        answer.extend(
            [
                msg(b'1', &[]),
                msg(b'2', &[]),
                msg(b'n', &[]),
                complete("DELETE 2"),
            ]
            .concat(),
        );
        answer.extend(ready());
        t.resp(&answer);
        assert_eq!(
            t.got(),
            vec![
                ok("INSERT", Some("a")),
                ok("INSERT", Some("b")),
                ok("INSERT", Some("c")),
                ok("DELETE", Some("d"))
            ]
        );
        assert!(t.conn.waiting.is_empty());
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn error_in_a_pipeline_skips_to_sync() {
        let mut t = Conn::ready();
        let mut batch = Vec::new();
        for text in [
            "SELECT * FROM a",
            "SELECT * FROM missing",
            "UPDATE c SET x = 1",
        ] {
            batch.extend(
                [
                    parse("", text),
                    bind("", ""),
                    describe(b'P', ""),
                    execute("", 0),
                ]
                .concat(),
            );
        }
        batch.extend(sync());
        t.req(&batch);
        // The second Parse fails: its Execute reports the error, the third
        // is skipped by the server.
        t.resp(
            &[
                msg(b'1', &[]),
                msg(b'2', &[]),
                rows(1),
                complete("SELECT 1"),
                error("42P01"),
                ready(),
            ]
            .concat(),
        );
        assert_eq!(
            t.got(),
            vec![
                ok("SELECT", Some("a")),
                err("SELECT", Some("missing"), "42P01")
            ]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
        assert!(t.conn.waiting.is_empty());
        t.req(&extended("SELECT 1"));
        t.resp(
            &[
                msg(b'1', &[]),
                msg(b'2', &[]),
                rows(1),
                complete("SELECT 1"),
                ready(),
            ]
            .concat(),
        );
        assert_eq!(t.got().len(), 3);
    }

    #[test]
    fn error_answering_a_prepare_only_batch() {
        let mut t = Conn::ready();
        let sent = t.req(&[parse("P_1", "SELECT * FROM missing"), sync()].concat());
        let done = t.resp(&[error("42P01"), ready()].concat());
        // Bind of the statement the server never created.
        t.req(&[bind("", "P_1"), describe(b'P', ""), execute("", 0), sync()].concat());
        t.resp(&[error("26000"), ready()].concat());
        assert_eq!(
            t.got(),
            vec![
                err("SELECT", Some("missing"), "42P01"),
                err("SELECT", Some("missing"), "26000")
            ]
        );
        assert_eq!(t.times()[0], (sent, done));
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn error_before_the_sync_discards_until_it() {
        let mut t = Conn::ready();
        // Parse and Describe flushed, no Sync yet.
        let sent = t.req(
            &[
                parse("S_1", "SELECT * FROM missing"),
                describe(b'S', "S_1"),
                flush(),
            ]
            .concat(),
        );
        t.resp(&error("42P01"));
        // The server ignores these until the Sync.
        t.req(&[bind("", "S_1"), execute("", 0), query("select 1")].concat());
        t.req(&sync());
        t.resp(&ready());
        assert_eq!(t.got(), vec![err("SELECT", Some("missing"), "42P01")]);
        assert_eq!(t.times()[0].0, sent);
        assert_eq!(t.counts(), (0, 0, 0, 0));
        assert!(t.conn.waiting.is_empty());
        t.req(&query("select 2"));
        t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got().len(), 2);
    }

    #[test]
    fn failed_commit_at_sync_or_end_of_query() {
        let mut t = Conn::ready();
        t.req(&extended("INSERT INTO child VALUES (1)"));
        t.resp(
            &[
                msg(b'1', &[]),
                msg(b'2', &[]),
                msg(b'n', &[]),
                complete("INSERT 0 1"),
            ]
            .concat(),
        );
        t.resp(&[error("23503"), ready()].concat());
        t.req(&query("INSERT INTO child VALUES (2)"));
        t.resp(&[complete("INSERT 0 1"), error("23503"), ready()].concat());
        assert_eq!(
            t.got(),
            vec![
                ok("INSERT", Some("child")),
                err("COMMIT", None, "23503"),
                ok("INSERT", Some("child")),
                err("COMMIT", None, "23503")
            ]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn copy_in_and_out() {
        let mut t = Conn::ready();
        let sent = t.req(&query("COPY items FROM STDIN"));
        t.resp(&msg(b'G', &[0, 0, 2, 0, 0, 0, 0]));
        t.req(
            &[
                msg(b'd', b"1\tone\n"),
                msg(b'd', b"2\ttwo\n"),
                msg(b'c', &[]),
            ]
            .concat(),
        );
        let done = t.resp(&[complete("COPY 2"), ready()].concat());
        t.req(&query("COPY (SELECT * FROM items) TO STDOUT"));
        t.resp(
            &[
                msg(b'H', &[0, 0, 2, 0, 0, 0, 0]),
                msg(b'd', b"1\tone\n"),
                msg(b'c', &[]),
            ]
            .concat(),
        );
        t.resp(&[complete("COPY 1"), ready()].concat());
        // CopyFail: the server answers with an error.
        t.req(&query("COPY items FROM STDIN"));
        t.resp(&msg(b'G', &[0, 0, 2, 0, 0, 0, 0]));
        t.req(&msg(b'f', b"aborted\0"));
        t.resp(&[error("57014"), ready()].concat());
        assert_eq!(
            t.got(),
            vec![
                ok("COPY", Some("items")),
                ok("COPY", None),
                err("COPY", Some("items"), "57014")
            ]
        );
        assert_eq!(t.times()[0], (sent, done));
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn copy_both_is_not_followed() {
        let mut t = Conn::ready();
        t.req(&query("START_REPLICATION SLOT s LOGICAL 0/0"));
        t.resp(&msg(b'W', &[0, 0, 0]));
        assert_eq!(t.conn.verdict(), Verdict::Done);
        t.resp(&msg(b'd', b"wal"));
        t.close();
        assert!(t.out.is_empty());
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn function_call() {
        let mut t = Conn::ready();
        let mut body = vec![0, 0, 3, 0xe8, 0, 0, 0, 1];
        body.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 1, 0, 0]);
        t.req(&msg(b'F', &body));
        t.resp(&[msg(b'V', &[0, 0, 0, 1, 7]), ready()].concat());
        assert_eq!(t.got(), vec![ok("CALL", None)]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn asynchronous_messages_are_not_replies() {
        let mut t = Conn::ready();
        t.req(&query("LISTEN chan"));
        t.resp(&[complete("LISTEN"), ready()].concat());
        t.resp(
            &[
                notification(),
                notice(),
                msg(b'S', &cstr(&[b"TimeZone", b"UTC"])),
            ]
            .concat(),
        );
        // A LISTENing idle connection waits for nothing: no timeout.
        let mut expired = Vec::new();
        t.conn.expire(u64::MAX / 2, 1_000, &mut expired);
        assert!(expired.is_empty());
        t.req(&query("SELECT 1"));
        t.resp(&[notice(), notification(), complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got(), vec![ok("LISTEN", None), ok("SELECT", None)]);
        // The server ending an idle session is not a reply either.
        t.resp(&error("57P05"));
        t.close();
        assert_eq!(t.got().len(), 2);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn ssl_and_gss_requests() {
        // Refused: plaintext start-up follows.
        let mut t = Conn::new(Start::Fresh);
        t.req(&packet(SSL_REQUEST, &[]));
        t.resp(b"N");
        t.req(&startup());
        t.resp(&welcome());
        t.req(&query("SELECT 1"));
        t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got(), vec![ok("SELECT", None)]);
        // GSS refused, then SSL refused, then plaintext.
        let mut t = Conn::new(Start::Fresh);
        t.req(&packet(GSSENC_REQUEST, &[]));
        t.resp(b"N");
        t.req(&packet(SSL_REQUEST, &[]));
        t.resp(b"N");
        t.req(&startup());
        t.resp(&welcome());
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
        // Accepted: encrypted from here on.
        for (code, answer) in [(SSL_REQUEST, b"S"), (GSSENC_REQUEST, b"G")] {
            let mut t = Conn::new(Start::Fresh);
            t.req(&packet(code, &[]));
            t.resp(answer);
            assert_eq!(t.conn.verdict(), Verdict::Done);
            t.req(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
            t.close();
            assert!(t.out.is_empty());
            assert_eq!(t.counts(), (0, 0, 0, 0));
        }
        // TLS straight away (sslnegotiation=direct), and cancel requests.
        let mut t = Conn::new(Start::Fresh);
        t.req(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        assert_eq!(t.conn.verdict(), Verdict::Done);
        let mut t = Conn::new(Start::Fresh);
        t.req(&packet(CANCEL_REQUEST, &[0, 0, 0, 7, 1, 2, 3, 4]));
        assert_eq!(t.conn.verdict(), Verdict::Done);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn detects_start_up_packets() {
        for first in [
            startup(),
            packet(SSL_REQUEST, &[]),
            packet(GSSENC_REQUEST, &[]),
            packet(CANCEL_REQUEST, &[0; 8]),
            packet(PROTOCOL_3 | 2, b"user\0a\0\0"),
        ] {
            assert_eq!(starts_like_postgres(&first), Some(true), "{first:?}");
            for n in 1..8 {
                assert_eq!(
                    starts_like_postgres(&first[..n]),
                    None,
                    "{first:?} cut at {n}"
                );
            }
        }
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"*1\r\n$4\r\nPING\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01",
            b"\x00\x00\x00\x08\x00\x02\x00\x00",
            b"\x01",
            b"\x00\x01",
        ] {
            assert_eq!(starts_like_postgres(other), Some(false), "{other:?}");
        }
        // Too long for a start-up packet.
        assert_eq!(
            starts_like_postgres(&packet(PROTOCOL_3, &[b'x'; 20_000])),
            Some(false)
        );
    }

    #[test]
    fn startup_errors_are_not_exchanges() {
        let mut t = Conn::new(Start::Fresh);
        t.req(&startup());
        t.resp(&msg(
            b'R',
            &[0, 0, 0, 10, b'S', b'C', b'R', b'A', b'M', 0, 0],
        ));
        t.req(&msg(
            b'p',
            b"SCRAM-SHA-256\0\0\0\0\x20n,,n=,r=abcdefghijklmnopqrstuvwx",
        ));
        t.resp(&[error("28P01")].concat());
        t.close();
        assert!(t.out.is_empty());
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn lost_or_garbled_start_up_carries_on_mid_stream() {
        // The start-up's answer truncated: its ReadyForQuery is lost, but
        // the client's first query proves the start-up over.
        let mut t = Conn::new(Start::Fresh);
        t.req(&startup());
        let w = welcome();
        t.resp(&w[..30]);
        t.resp_gap((w.len() - 30) as u64);
        t.req(&extended("SELECT * FROM a"));
        t.resp(
            &[
                msg(b'1', &[]),
                msg(b'2', &[]),
                msg(b'n', &[]),
                complete("SELECT 0"),
                ready(),
            ]
            .concat(),
        );
        assert_eq!(t.got(), vec![ok("SELECT", Some("a"))]);
        assert_eq!(t.counts(), (1, 0, 0, 0));
        // The start-up packet itself lost.
        let mut t = Conn::new(Start::Fresh);
        t.req_gap(60);
        t.resp(&welcome());
        t.req(&query("select 1"));
        t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got(), vec![ok("SELECT", None)]);
        assert_eq!(t.counts(), (1, 0, 0, 0));
        // Garbage instead of a start-up packet.
        let mut t = Conn::new(Start::Fresh);
        t.req(b"GET / HTTP/1.1\r\n\r\n");
        t.req(&query("select 1"));
        t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got(), vec![ok("SELECT", None)]);
        assert_eq!(t.counts(), (1, 0, 0, 0));
        // Protocol 2 is not followed.
        let mut t = Conn::new(Start::Fresh);
        t.req(&packet(2 << 16, b"user\0app\0\0"));
        assert_eq!(t.conn.verdict(), Verdict::Done);
    }

    #[test]
    fn long_statement_is_summarized_from_its_start() {
        let mut t = Conn::ready();
        let values = "(1, 'x'), ".repeat(5000);
        let text = format!("INSERT INTO bulk VALUES {values}(2, 'y'); SELECT 1");
        assert!(text.len() > MAX_STATEMENT);
        t.req(&query(&text));
        t.resp(&[complete("INSERT 0 5001"), complete("SELECT 1"), ready()].concat());
        // The second statement lay beyond the cap: named from its tag.
        assert_eq!(
            t.got(),
            vec![ok("INSERT", Some("bulk")), ok("SELECT", None)]
        );
        assert_eq!(t.counts(), (0, 0, 0, 1));
        assert_eq!(t.conn.prefix.buf.capacity(), 0);
        let p = format!("INSERT INTO bulk VALUES {values}(2, 'y')");
        t.req(&extended(&p));
        t.resp(
            &[
                msg(b'1', &[]),
                msg(b'2', &[]),
                msg(b'n', &[]),
                complete("INSERT 0 5001"),
                ready(),
            ]
            .concat(),
        );
        assert_eq!(t.got().last(), Some(&ok("INSERT", Some("bulk"))));
    }

    #[test]
    fn gap_inside_a_body_is_harmless() {
        let mut t = Conn::ready();
        let q = query("SELECT doc FROM documents");
        t.req(&q);
        let mut row = vec![0, 1, 0, 0, 0x10, 0];
        row.extend(std::iter::repeat_n(b'x', 0x1000));
        let answer = [rows(0), msg(b'D', &row), complete("SELECT 1"), ready()].concat();
        // The capture of the read ends inside the row; the next read
        // starts after it.
        t.resp(&answer[..100]);
        t.resp_gap(4000);
        t.resp(&answer[4100..]);
        assert_eq!(t.got(), vec![ok("SELECT", Some("documents"))]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
        // A statement cut by a gap is summarized from what was seen.
        let q = query("UPDATE accounts SET note = 'long text here' WHERE id = 1");
        t.req(&q[..25]);
        t.req_gap((q.len() - 25) as u64);
        t.resp(&[complete("UPDATE 1"), ready()].concat());
        assert_eq!(t.got().last(), Some(&ok("UPDATE", Some("accounts"))));
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn error_code_lost_to_a_gap_is_partial() {
        let mut t = Conn::ready();
        t.req(&query("select * from missing"));
        let e = error("42P01");
        t.resp(&e[..8]);
        t.resp_gap((e.len() - 8) as u64);
        t.resp(&ready());
        assert_eq!(t.got(), vec![err("SELECT", Some("missing"), "XX000")]);
        assert_eq!(t.counts(), (0, 0, 0, 1));
    }

    #[test]
    fn response_gap_resyncs_at_ready_for_query() {
        let mut t = Conn::ready();
        let sent = t.req(&query("select 1; select * from big; select 2"));
        let answer = [
            rows(1),
            complete("SELECT 1"),
            rows(40),
            complete("SELECT 40"),
            complete("SELECT 1"),
            ready(),
        ]
        .concat();
        // The first statement's answer is whole; the gap swallows the
        // framing of the second's.
        let first = t.resp(&answer[..63]);
        t.resp_gap(300);
        let z = t.resp(&answer[363..]);
        // The statements whose completions were lost still count, ending
        // at the ReadyForQuery; the span belongs to the first of them.
        assert_eq!(
            t.got(),
            vec![
                ok("SELECT", None),
                ok("SELECT", Some("big")),
                ok("SELECT", None)
            ]
        );
        assert_eq!(t.times(), vec![(sent, first), (first, z), (z, z)]);
        assert_eq!(t.counts(), (1, 0, 0, 0));
        t.req(&query("select 3"));
        t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got().len(), 4);
    }

    #[test]
    fn lost_ready_is_inferred_from_the_next_request() {
        let mut t = Conn::ready();
        let sent = t.req(&query("select * from big"));
        let answer = [rows(300), complete("SELECT 300"), ready()].concat();
        // The read's capture ends at 4096 bytes; the rest (with the
        // ReadyForQuery) is a gap.
        t.resp(&answer[..4096]);
        let last = t.resp_gap((answer.len() - 4096) as u64);
        assert!(t.out.is_empty());
        // Idle meanwhile: the answer was streaming, so no timeout.
        let mut expired = Vec::new();
        t.conn.expire(u64::MAX / 2, 1_000, &mut expired);
        assert!(expired.is_empty());
        t.req(&query("select * from missing"));
        assert_eq!(t.got(), vec![ok("SELECT", Some("big"))]);
        assert_eq!(t.times(), vec![(sent, last)]);
        // The next response starts a message: errors are still seen.
        t.resp(&[error("42P01"), ready()].concat());
        assert_eq!(
            t.got().last(),
            Some(&err("SELECT", Some("missing"), "42P01"))
        );
        assert_eq!(t.counts(), (1, 0, 0, 0));
    }

    #[test]
    fn lost_ready_then_a_gap_scans_for_the_next_ready() {
        let mut t = Conn::ready();
        t.req(&query("select * from big"));
        let answer = [rows(300), complete("SELECT 300"), ready()].concat();
        t.resp(&answer[..4096]);
        t.resp_gap((answer.len() - 4096) as u64);
        t.req(&query("select * from t"));
        // The next answer's start is lost too: it is found by its
        // ReadyForQuery, and completes there.
        t.resp_gap(30);
        let z = t.resp(&[rows(2), complete("SELECT 2"), ready()].concat()[30..]);
        assert_eq!(
            t.got(),
            vec![ok("SELECT", Some("big")), ok("SELECT", Some("t"))]
        );
        assert_eq!(t.times()[1].1, z);
        assert_eq!(t.counts(), (1, 0, 0, 0));
    }

    #[test]
    fn request_gap_resyncs_and_orphans_are_unmatched() {
        let mut t = Conn::ready();
        t.req(&query("select 1"));
        t.resp(&[complete("SELECT 1"), ready()].concat());
        // A request lost with its framing; its answer comes back.
        t.req_gap(40);
        t.resp(&[complete("UPDATE 1"), ready()].concat());
        t.req(&extended("DELETE FROM x"));
        t.resp(
            &[
                msg(b'1', &[]),
                msg(b'2', &[]),
                msg(b'n', &[]),
                complete("DELETE 1"),
                ready(),
            ]
            .concat(),
        );
        assert_eq!(t.got(), vec![ok("SELECT", None), ok("DELETE", Some("x"))]);
        assert_eq!(t.counts(), (1, 0, 1, 0));
    }

    #[test]
    fn request_garbage_resyncs_to_a_plausible_message() {
        let mut t = Conn::ready();
        let mut bytes = b"\x00\xffgarbage Q\x00\x00".to_vec();
        bytes.extend(query("select 1"));
        t.req(&bytes);
        t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got(), vec![ok("SELECT", None)]);
        assert_eq!(t.counts(), (1, 0, 0, 0));
    }

    #[test]
    fn mid_stream_skips_to_boundaries() {
        let mut t = Conn::new(Start::MidStream);
        // The tail of a response to a request we never saw.
        t.resp(b"\x00\x04-591D\x00\x00\x00\x0e\x00\x01\x00\x00\x00\x04-591");
        t.resp(&[complete("SELECT 1"), ready()].concat());
        // A prepared statement from before we started.
        t.req(&[bind("", "P_3"), describe(b'P', ""), execute("", 0), sync()].concat());
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
        t.resp(
            &[
                msg(b'2', &[]),
                msg(b'n', &[]),
                complete("UPDATE 1"),
                ready(),
            ]
            .concat(),
        );
        t.req(&query("select 1"));
        t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got(), vec![ok("UPDATE", None), ok("SELECT", None)]);
        assert_eq!(t.counts(), (0, 0, 0, 1));
    }

    #[test]
    fn mid_stream_inside_a_copy() {
        let mut t = Conn::new(Start::MidStream);
        t.req(b"ta row 17\n");
        t.req(&[msg(b'd', b"row 18\n"), msg(b'c', &[])].concat());
        t.resp(&[complete("COPY 18"), ready()].concat());
        t.req(&query("select 1"));
        t.resp(&[complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got(), vec![ok("SELECT", None)]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn mid_stream_gives_up_on_endless_noise() {
        let mut t = Conn::new(Start::MidStream);
        for _ in 0..=MAX_SEEK_PIECES {
            t.req(b"\x01\x02 not postgres at all");
        }
        assert_eq!(t.conn.verdict(), Verdict::Done);
        t.close();
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn timeout_reports_once_and_late_answer_is_not_counted_again() {
        let mut t = Conn::ready();
        t.req(&query("select pg_sleep(100); select 2"));
        let mut out = Vec::new();
        t.conn.expire(t.ts + 5, 1_000, &mut out);
        assert!(out.is_empty());
        t.conn.expire(u64::MAX / 2, 1_000, &mut out);
        t.conn.expire(u64::MAX / 2 + 1, 1_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].failure, Some(Failure::Timeout));
        // The late answer is not reported; the next statement is.
        t.resp(&[complete("SELECT 1"), complete("SELECT 1"), ready()].concat());
        assert_eq!(t.got(), vec![ok("SELECT", None)]);
        // Pipelined Executes time out each.
        t.req(&[extended("select 1"), extended("select 2")].concat());
        t.conn.expire(u64::MAX / 2 + 2, 1_000, &mut out);
        assert_eq!(out.len(), 3);
        t.close();
        assert_eq!(t.got().len(), 1);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn close_fails_waiting_exchanges() {
        let mut t = Conn::ready();
        t.req(&[extended("select 1"), extended("select 2")].concat());
        t.req(&query("select 3; select 4"));
        t.close();
        // Both Executes, and the Query's running statement (not the one
        // after it, which never ran).
        assert_eq!(t.got().len(), 3);
        assert!(t
            .out
            .iter()
            .all(|e| e.failure == Some(Failure::ConnectionClosed)));
        assert_eq!(t.counts(), (0, 0, 0, 0));
        // An answer lost to a gap is unmatched, not closed.
        let mut t = Conn::ready();
        t.req(&query("select * from big"));
        t.resp(&rows(3));
        t.resp_gap(1000);
        t.close();
        assert!(t.out.is_empty());
        assert_eq!(t.counts(), (1, 1, 0, 0));
    }

    #[test]
    fn waiting_queue_is_bounded() {
        let mut t = Conn::ready();
        let batch: Vec<u8> = (0..MAX_WAITING + 10).flat_map(|_| execute("", 0)).collect();
        t.req(&batch);
        assert_eq!(t.conn.waiting.len(), MAX_WAITING);
        assert_eq!(t.c.unmatched_requests, 10);
        t.close();
        assert_eq!(t.out.len(), MAX_WAITING);
    }

    #[test]
    fn statement_names_are_bounded() {
        let mut t = Conn::ready();
        for i in 0..MAX_PREPARED + 20 {
            t.req(
                &[
                    parse(&format!("s{i}"), "SELECT * FROM t"),
                    bind(&format!("p{i}"), &format!("s{i}")),
                ]
                .concat(),
            );
        }
        assert_eq!(t.conn.statements.entries.len(), MAX_PREPARED);
        assert_eq!(t.conn.portals.entries.len(), MAX_PORTALS);
        // The newest are kept.
        assert!(t
            .conn
            .statement(format!("s{}", MAX_PREPARED + 19).as_bytes())
            .is_some());
        assert!(t.conn.statement(b"s0").is_none());
    }

    #[test]
    fn per_connection_state_is_small() {
        let size = std::mem::size_of::<PgConn>();
        assert!(size <= 448, "PgConn is {size} bytes");
        let t = PgConn::new(Side::Client, Start::Fresh);
        assert_eq!(t.prefix.buf.capacity() + t.waiting.capacity(), 0);
        assert!(
            std::mem::size_of::<Op>() <= 64,
            "Op is {}",
            std::mem::size_of::<Op>()
        );
    }

    #[test]
    fn server_side_is_honoured_too() {
        let mut conn = PgConn::new(Side::Server, Start::Fresh);
        let mut c = ParserCounters::default();
        let mut out = Vec::new();
        conn.on_piece(false, Piece::Data(&startup()), 1, &mut c, &mut out);
        conn.on_piece(true, Piece::Data(&welcome()), 2, &mut c, &mut out);
        conn.on_piece(false, Piece::Data(&query("select 1")), 3, &mut c, &mut out);
        conn.on_piece(
            true,
            Piece::Data(&[complete("SELECT 1"), ready()].concat()),
            4,
            &mut c,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start_ns, out[0].end_ns), (3, 4));
    }

    #[test]
    fn no_statement_text_leaves_the_module() {
        let mut t = Conn::ready();
        t.req(&query(
            "SELECT 'secret value' FROM users WHERE password = 'hunter2'",
        ));
        t.resp(&[error("42501"), ready()].concat());
        let text = format!("{:?}", t.out);
        assert!(!text.contains("secret") && !text.contains("hunter2") && !text.contains("app"));
    }

    /// A conversation with every kind of message, for the fuzz test.
    fn conversation() -> (Vec<u8>, Vec<u8>) {
        let req = [
            startup(),
            query("select 1; select * from t"),
            extended("UPDATE a SET b = 1"),
            [
                parse("P", "SELECT 1"),
                sync(),
                bind("c", "P"),
                execute("c", 5),
                execute("c", 5),
                sync(),
            ]
            .concat(),
            query("COPY t FROM STDIN"),
            msg(b'd', b"1\n"),
            msg(b'c', &[]),
            msg(b'X', &[]),
        ]
        .concat();
        let resp = [
            welcome(),
            rows(2),
            complete("SELECT 2"),
            error("42P01"),
            ready(),
            [
                msg(b'1', &[]),
                msg(b'2', &[]),
                msg(b'n', &[]),
                complete("UPDATE 1"),
                ready(),
            ]
            .concat(),
            [
                msg(b'1', &[]),
                ready(),
                msg(b'2', &[]),
                rows(5),
                msg(b's', &[]),
                rows(1),
                complete("SELECT 1"),
                ready(),
            ]
            .concat(),
            notice(),
            msg(b'G', &[0, 0, 1, 0, 0]),
            complete("COPY 1"),
            ready(),
        ]
        .concat();
        (req, resp)
    }

    #[test]
    fn conversation_parses_whole() {
        let (req, resp) = conversation();
        let mut t = Conn::new(Start::Fresh);
        t.req(&req);
        t.resp(&resp);
        t.close();
        assert_eq!(t.got().len(), 6, "{:?}", t.got());
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    /// Random bytes, random splits, mutated and truncated conversations,
    /// gaps: no panic, bounded state, and sane timestamps.
    #[test]
    fn fuzz_never_panics_and_stays_bounded() {
        let (req, resp) = conversation();
        for seed in 1..1500u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
            let start = if rng.below(3) == 0 {
                Start::MidStream
            } else {
                Start::Fresh
            };
            let mut conn = PgConn::new(Side::Client, start);
            let mut c = ParserCounters::default();
            let mut out = Vec::new();
            let mut streams = [req.clone(), resp.clone()];
            for stream in &mut streams {
                match rng.below(4) {
                    0 => {
                        for _ in 0..rng.below(4) + 1 {
                            let at = rng.below_usize(stream.len());
                            if let Some(b) = stream.get_mut(at) {
                                *b = rng.next() as u8;
                            }
                        }
                    }
                    1 => {
                        *stream = (0..rng.below_usize(600))
                            .map(|_| rng.next() as u8)
                            .collect()
                    }
                    _ => {}
                }
            }
            let mut at = [0usize; 2];
            let mut ts = 0;
            while at[0] < streams[0].len() || at[1] < streams[1].len() {
                ts += 1;
                let dir = rng.below_usize(2);
                let stream = &streams[dir];
                if at[dir] >= stream.len() {
                    continue;
                }
                let n = rng.below_usize(40.min(stream.len() - at[dir])) + 1;
                let piece = if rng.below(10) == 0 {
                    Piece::Gap(n as u64)
                } else {
                    Piece::Data(&stream[at[dir]..at[dir] + n])
                };
                conn.on_piece(dir == 0, piece, ts, &mut c, &mut out);
                at[dir] += n;
                if rng.below(20) == 0 {
                    conn.expire(ts, rng.below(5), &mut out);
                }
                assert!(conn.waiting.len() <= MAX_WAITING);
                assert!(conn.prefix.buf.len() <= MAX_NAME + MAX_STATEMENT + 2);
                assert!(conn.statements.entries.len() <= MAX_PREPARED);
            }
            conn.on_close(ts + 1, &mut c, &mut out);
            for e in &out {
                assert!(e.start_ns <= e.end_ns, "seed {seed}: {e:?}");
            }
        }
    }

    #[test]
    fn fuzz_pure_noise() {
        for seed in 1..300u64 {
            let mut rng = XorShift(seed | 1);
            for start in [Start::Fresh, Start::MidStream] {
                let mut conn = PgConn::new(Side::Client, start);
                let mut c = ParserCounters::default();
                let mut out = Vec::new();
                for ts in 0..200 {
                    let n = rng.below_usize(64) + 1;
                    let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    let piece = match rng.below(8) {
                        0 => Piece::Gap(rng.next() % [10, 5000, u64::MAX][rng.below_usize(3)]),
                        _ => Piece::Data(&bytes),
                    };
                    conn.on_piece(rng.below(2) == 0, piece, ts, &mut c, &mut out);
                }
                conn.on_close(1000, &mut c, &mut out);
            }
        }
    }
}
