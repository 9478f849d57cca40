//! MySQL and MariaDB client/server protocol (the "classic" protocol) for one
//! connection, measured from the client side.
//!
//! Input: the connection's two byte streams as ordered `Piece`s, each tagged
//! with its direction and the timestamp of the syscall that carried it.
//! Output: one `Exchange` per command that gets a response, whose `DbCall`
//! names the statement's verb and single table (from `sql`) or a fixed name
//! for a protocol command, and the server's error number; loss counts in
//! `ParserCounters`. Statement text, parameters, rows, user and schema names
//! never leave this module.
//!
//! Framing: every message is a packet, a 3-byte little-endian length and a
//! sequence id; a payload of 0xFFFFFF bytes continues in the next packet.
//! Payloads are skipped by counting. Only a prefix of a payload is looked
//! at, and copied only when it spans pieces: the statement text of
//! COM_QUERY and COM_STMT_PREPARE up to `MAX_STATEMENT`, the first bytes of
//! a response packet; and the prefix that decided a statement's summary,
//! kept by the statement memo (`sql_memo.rs`). Rows are never copied.
//!
//! The server speaks first: its greeting, the client's handshake response
//! (which says whether TLS or compression follows: then there is nothing to
//! parse), authentication packets up to the server's OK or ERR. Then every
//! command (sequence id 0) gets one response: OK, ERR, a result set (column
//! count, column definitions, rows, a terminator that may announce another
//! result of the same command), a PREPARE_OK with its definition blocks, or
//! nothing at all for a few commands. Commands wait in order for their
//! responses, since MariaDB connectors may pipeline them.
//!
//! Losses: a gap inside a payload is skipped; one over a header loses the
//! framing. Inside rows that is expected (a client's 16 KiB reads captured
//! a few KiB at a time) and framing is found again where a chain of packet
//! headers with consecutive sequence ids starts; elsewhere it is a resync.
//! Since a client (pipelining aside) sends a command only after reading the
//! whole previous response, a new command ends a response whose end was
//! lost, and the response direction resumes at the next piece that starts
//! like that command's answer.

use std::collections::VecDeque;

use super::sql::{self, Dialect, Summary};
use super::sql_memo;
use super::{
    detect::Detection, Call, ConnParser, DbCall, DbSystem, Exchange, Failure, ParserCounters,
    Piece, Side, Spec, Start, Verdict,
};

/// Statement text kept per command while it spans pieces: the verb and the
/// table come first, and a statement of megabytes (a bulk insert) must not
/// cost megabytes per connection. Longer text is summarized from this
/// prefix.
const MAX_STATEMENT: usize = 16 * 1024;

/// Response payload bytes looked at: a greeting's fields end within ~100
/// bytes for any real version string; everything else needs at most 23.
const MAX_RESPONSE_PREFIX: u16 = 128;

/// Buffer capacity kept between packets; a larger buffer (a long statement
/// that spanned pieces) is freed once used, so idle connections hold little.
const KEEP_CAPACITY: usize = 256;

/// Commands waiting for responses. Most clients wait for each answer, but
/// MariaDB Connector/J pipelines batches of up to 100 commands. Reaching
/// this means responses are being lost.
const MAX_WAITING: usize = 128;

/// Prepared statements remembered per connection (id to verb and table).
/// Pool statement caches are usually smaller; an evicted statement then
/// executes as `EXECUTE` with no table.
const MAX_PREPARED: usize = 256;

/// Request pieces examined on a connection found mid-stream before deciding
/// that it is not the classic protocol (or is encrypted).
const MAX_SEEK_PIECES: u16 = 1024;

/// Bytes at the start of a piece tried as a packet start when rows lost
/// their framing. A gap ends at an arbitrary byte of a row, so rows longer
/// than this are not found again (their end comes with the next command).
const MAX_CHAIN_SCAN: usize = 16 * 1024;

/// Consecutive packet headers (each sequence id one more than the last)
/// that prove the framing found again inside rows.
const MIN_CHAIN: usize = 3;

/// Bytes that decide whether a piece start resumes framing: a header and
/// a column count packet (or a command byte and the statement's first).
const PROBE: usize = 14;

/// Query attributes walked before a COM_QUERY's text; clients send a few.
const MAX_ATTRIBUTES: usize = 1024;

/// Lengths a protocol-10 greeting plausibly has.
const GREETING_LEN: std::ops::RangeInclusive<u32> = 16..=1024;

/// A physical packet of this length continues in the next one.
const MAX_PAYLOAD: u32 = 0xFF_FFFF;

/// Operation reported for a login the server refused.
pub const LOGIN_OPERATION: &str = "CONNECT";

// Capability flags (the handshake's).
const CLIENT_COMPRESS: u32 = 0x20;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
const CLIENT_ZSTD_COMPRESSION: u32 = 0x0400_0000;
const CLIENT_QUERY_ATTRIBUTES: u32 = 0x0800_0000;

// Server status flags.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

// Command bytes.
const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_CREATE_DB: u8 = 0x05;
const COM_DROP_DB: u8 = 0x06;
const COM_REFRESH: u8 = 0x07;
const COM_SHUTDOWN: u8 = 0x08;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_INFO: u8 = 0x0a;
const COM_PROCESS_KILL: u8 = 0x0c;
const COM_DEBUG: u8 = 0x0d;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_TABLE_DUMP: u8 = 0x13;
const COM_REGISTER_SLAVE: u8 = 0x15;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_BINLOG_DUMP_GTID: u8 = 0x1e;
const COM_RESET_CONNECTION: u8 = 0x1f;
const COM_CLONE: u8 = 0x20;
const COM_STMT_BULK_EXECUTE: u8 = 0xfa;

/// How the server answers a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Not at all (COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    Nothing,
    /// OK, ERR, EOF, a result set or a LOCAL INFILE request.
    Result,
    /// PREPARE_OK and its definition blocks, or ERR.
    Prepare,
    /// Rows (or column definitions) up to a terminator, or ERR.
    Rows,
    /// Authentication packets up to OK or ERR (COM_CHANGE_USER).
    Auth,
    /// One packet of any content (COM_STATISTICS).
    Single,
    /// The connection turns into a stream no parser follows (replication,
    /// clone).
    Switch,
}

/// What the protocol says about a command byte.
#[derive(Debug, Clone, Copy)]
struct Command {
    /// Operation reported, unless the statement gives one.
    name: &'static str,
    reply: Reply,
    /// Payload lengths (command byte included) a well-formed one has:
    /// checked only when looking for a command after a loss.
    len: (u32, u32),
}

/// The commands a client sends; server-internal ones (COM_SLEEP,
/// COM_TIME, ...) and unknown bytes are garbage.
fn command(code: u8) -> Option<Command> {
    const ANY: u32 = u32::MAX;
    let (name, reply, len) = match code {
        COM_QUIT => ("QUIT", Reply::Nothing, (1, 1)),
        COM_INIT_DB => ("USE", Reply::Result, (2, ANY)),
        COM_QUERY => ("QUERY", Reply::Result, (2, ANY)),
        COM_FIELD_LIST => ("FIELD_LIST", Reply::Rows, (2, ANY)),
        COM_CREATE_DB => ("CREATE", Reply::Result, (2, ANY)),
        COM_DROP_DB => ("DROP", Reply::Result, (2, ANY)),
        COM_REFRESH => ("FLUSH", Reply::Result, (2, 2)),
        COM_SHUTDOWN => ("SHUTDOWN", Reply::Result, (1, 2)),
        COM_STATISTICS => ("STATISTICS", Reply::Single, (1, 1)),
        COM_PROCESS_INFO => ("SHOW", Reply::Result, (1, 1)),
        COM_PROCESS_KILL => ("KILL", Reply::Result, (5, 5)),
        COM_DEBUG => ("DEBUG", Reply::Result, (1, 1)),
        COM_PING => ("PING", Reply::Result, (1, 1)),
        COM_CHANGE_USER => ("CHANGE_USER", Reply::Auth, (2, ANY)),
        COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID | COM_TABLE_DUMP => {
            ("BINLOG_DUMP", Reply::Switch, (3, ANY))
        }
        COM_REGISTER_SLAVE => ("REGISTER_REPLICA", Reply::Result, (5, ANY)),
        COM_STMT_PREPARE => ("PREPARE", Reply::Prepare, (2, ANY)),
        COM_STMT_EXECUTE => ("EXECUTE", Reply::Result, (10, ANY)),
        COM_STMT_BULK_EXECUTE => ("EXECUTE", Reply::Result, (7, ANY)),
        COM_STMT_SEND_LONG_DATA => ("SEND_LONG_DATA", Reply::Nothing, (7, ANY)),
        COM_STMT_CLOSE => ("CLOSE", Reply::Nothing, (5, 5)),
        COM_STMT_RESET => ("STMT_RESET", Reply::Result, (5, 5)),
        COM_SET_OPTION => ("SET_OPTION", Reply::Result, (3, 3)),
        COM_STMT_FETCH => ("FETCH", Reply::Rows, (9, 9)),
        COM_RESET_CONNECTION => ("RESET_CONNECTION", Reply::Result, (1, 1)),
        COM_CLONE => ("CLONE", Reply::Switch, (1, ANY)),
        _ => return None,
    };
    Some(Command { name, reply, len })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Req,
    Resp,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The server's greeting comes first.
    Greeting,
    /// Greeting seen: the client's handshake response (or SSL request).
    Login,
    /// Authentication packets until the server's OK or ERR.
    Auth,
    /// Commands and their responses.
    Commands,
    /// Nothing more to parse.
    Stopped,
}

/// One direction's position in the packet framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// At a packet header; `have` of its 4 bytes are in `Stream::head`.
    Header { have: u8 },
    /// This many payload bytes of the current physical packet to come.
    Payload { left: u32 },
    /// Framing lost: looking for a packet start (see `seek`).
    Lost,
}

/// Prefix bytes wanted from a packet's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Bytes(u16),
    /// Decided by the payload's first byte (see `want_for`).
    ByFirstByte,
}

/// The logical packet being read (physical packets joined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packet {
    /// Sequence id of its first physical packet.
    first_seq: u8,
    /// Sequence id of the latest physical packet.
    seq: u8,
    /// Payload length so far.
    len: u64,
    /// The latest physical packet is full: the payload goes on in the next.
    continues: bool,
    /// Timestamp of the piece holding its first byte.
    start_ns: u64,
    want: Want,
    /// A gap hid part of the wanted prefix.
    cut: bool,
}

impl Packet {
    const NONE: Packet = Packet {
        first_seq: 0,
        seq: 0,
        len: 0,
        continues: false,
        start_ns: 0,
        want: Want::Bytes(0),
        cut: false,
    };
}

/// One direction's framing state.
#[derive(Debug)]
struct Stream {
    frame: Frame,
    head: [u8; 4],
    /// Timestamp of the piece holding the current header's first byte.
    head_ns: u64,
    packet: Packet,
    /// Wanted payload prefix when it spans pieces; otherwise empty.
    prefix: Vec<u8>,
    /// While framing is lost: pieces too short to judge the candidate
    /// start they hold.
    probe: Option<Box<Probe>>,
}

impl Stream {
    fn new(frame: Frame) -> Self {
        Self {
            frame,
            head: [0; 4],
            head_ns: 0,
            packet: Packet::NONE,
            prefix: Vec::new(),
            probe: None,
        }
    }

    /// Takes back the prefix buffer lent out for one packet, keeping its
    /// allocation only if it is small.
    fn restore_prefix(&mut self, mut prefix: Vec<u8>) {
        prefix.clear();
        if prefix.capacity() <= KEEP_CAPACITY && self.prefix.capacity() == 0 {
            self.prefix = prefix;
        }
    }

    fn lose_framing(&mut self) {
        self.frame = Frame::Lost;
        self.packet = Packet::NONE;
        self.prefix = Vec::new();
        self.probe = None;
    }
}

/// Consecutive short pieces at a point where framing may resume, each a
/// candidate message start, held until enough bytes decide (`PROBE`).
/// Judging them as they came keeps the decision independent of how the
/// bytes were split.
#[derive(Debug, Default)]
struct Probe {
    bytes: [u8; PROBE],
    len: usize,
    /// Where each held piece ends in `bytes`, and its timestamp.
    pieces: [(u8, u64); PROBE],
    count: usize,
}

impl Probe {
    /// The held bytes followed by the start of `rest`, and how many.
    fn window(&self, rest: &[u8]) -> ([u8; PROBE], usize) {
        let mut window = self.bytes;
        let added = (PROBE - self.len.min(PROBE)).min(rest.len());
        if let (Some(slot), Some(bytes)) = (
            window.get_mut(self.len..self.len + added),
            rest.get(..added),
        ) {
            slot.copy_from_slice(bytes);
        }
        (window, self.len + added)
    }

    /// Holds `rest` (shorter than what the window lacks).
    fn push(&mut self, rest: &[u8], ts: u64) {
        let (window, filled) = self.window(rest);
        if let Some(end) = self.pieces.get_mut(self.count) {
            self.bytes = window;
            self.len = filled;
            *end = (filled as u8, ts);
            self.count += 1;
        }
    }

    /// Drops the oldest piece; false if none was held.
    fn pop_front(&mut self) -> bool {
        let Some(&(first_end, _)) = self.pieces.get(..self.count).and_then(|p| p.first()) else {
            return false;
        };
        let cut = usize::from(first_end).min(self.len);
        self.bytes.copy_within(cut..self.len, 0);
        self.len -= cut;
        self.pieces.copy_within(1..self.count, 0);
        self.count -= 1;
        for (end, _) in self.pieces.iter_mut().take(self.count) {
            *end -= cut as u8;
        }
        true
    }

    /// The held pieces in order, with their timestamps.
    fn pieces(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        let mut start = 0;
        self.pieces.iter().take(self.count).map(move |&(end, ts)| {
            let end = usize::from(end);
            let bytes = self.bytes.get(start..end).unwrap_or_default();
            start = end;
            (bytes, ts)
        })
    }
}

/// What the response of the command at the head of the queue needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Its first packet, or the first of the next result after one that
    /// said more follow.
    First,
    /// After a LOCAL INFILE request: the client sends the file, then the
    /// server answers as to a query, sequence ids having moved on.
    Infile,
    /// Column definitions still to come.
    Columns { left: u16 },
    /// After the column definitions: the EOF that ends them (without
    /// DEPRECATE_EOF), a row, or the terminator of an empty result.
    ColumnsEnd,
    /// Rows, up to a terminator or ERR.
    Rows,
    /// COM_CHANGE_USER: auth switch and auth data, up to OK or ERR.
    Auth,
    /// PREPARE_OK's parameter definitions, then `columns` definitions.
    Params { left: u16, columns: u16 },
    /// The EOF after the parameter definitions.
    ParamsEnd { columns: u16 },
    /// PREPARE_OK's column definitions.
    PrepColumns { left: u16 },
    /// The EOF after them.
    PrepColumnsEnd,
}

/// How the response direction finds its framing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Lost inside rows: look for a chain of packet headers in each piece.
    Rows,
    /// Wait for the client's next command; then (`armed`) resume at a
    /// piece that starts like its answer.
    NextCommand { armed: bool },
}

/// Why framing was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Bytes not captured over a header.
    Gap,
    /// Bytes that make no sense here.
    Garbage,
}

/// What the first bytes at a candidate start say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judgement {
    Resume,
    No,
    NeedMore,
}

/// A command waiting for (the end of) its response.
#[derive(Debug)]
struct Waiting {
    command: u8,
    reply: Reply,
    operation: &'static str,
    collection: Option<String>,
    /// COM_STMT_PREPARE: the statement, remembered under its id once the
    /// server accepts it.
    statement: Option<Summary>,
    start_ns: u64,
    /// Sequence id its response begins with.
    resp_seq: u8,
    /// A packet of its response has been read.
    started: bool,
    /// While the response direction is lost: the last response piece seen
    /// since it was sent.
    answered_ns: Option<u64>,
    /// Already reported as timed out: its late answer is not reported.
    timed_out: bool,
}

#[derive(Debug)]
struct Prepared {
    id: u32,
    statement: Summary,
}

/// Negotiated capabilities that change what is parsed; None when not seen
/// (a connection found mid-stream).
#[derive(Debug, Clone, Copy, Default)]
struct Caps {
    /// The server's capability flags, from the greeting. (MariaDB's
    /// extended capabilities need nothing: progress reports are recognised
    /// by their error number, cached metadata by the column count's shape.)
    server: Option<u32>,
    deprecate_eof: Option<bool>,
    query_attributes: Option<bool>,
}

/// One MySQL/MariaDB connection as seen by the traced process.
#[derive(Debug)]
pub struct MysqlConn {
    side: Side,
    phase: Phase,
    verdict: Verdict,
    req: Stream,
    resp: Stream,
    caps: Caps,
    /// Commands sent and not yet answered, oldest first.
    waiting: VecDeque<Waiting>,
    /// What the head's response needs next.
    expect: Expect,
    /// Sequence id the next response packet must carry, when known.
    resp_seq: Option<u8>,
    /// While `resp.frame` is lost.
    recovery: Recovery,
    /// Prepared statements by id, oldest first.
    prepared: Vec<Prepared>,
    /// The latest COM_STMT_PREPARE: MariaDB executes id 0xFFFFFFFF as it.
    last_prepare: Option<Box<Summary>>,
    /// Statements summarized lately: clients repeat theirs with other
    /// literals. Boxed on the first statement.
    statements: Option<Box<sql_memo::Memo>>,
    /// A PREPARE response was ended without knowing whether an EOF closes
    /// its last block (DEPRECATE_EOF unknown): an EOF with this sequence id
    /// right after is part of it.
    trailing_eof: Option<u8>,
    /// Response packets are skipped as unmatched until the next command.
    unexpected: bool,
    /// Start of the latest unmatched response: a command sent before it
    /// arrived late and that response was its answer.
    unexpected_ns: u64,
    /// Start of the handshake response, for a refused login.
    login_ns: u64,
    /// Losses and unmatched messages count (not before a connection found
    /// mid-stream shows its first command).
    counting: bool,
    /// Request pieces seen while looking for the first command.
    seek_pieces: u16,
}

impl MysqlConn {
    /// A connection where the traced process is `side`; allocates nothing.
    pub fn new(side: Side, start: Start) -> Self {
        let mut conn = Self {
            side,
            phase: Phase::Greeting,
            verdict: Verdict::Unknown,
            req: Stream::new(Frame::Header { have: 0 }),
            resp: Stream::new(Frame::Header { have: 0 }),
            caps: Caps::default(),
            waiting: VecDeque::new(),
            expect: Expect::First,
            resp_seq: None,
            recovery: Recovery::NextCommand { armed: false },
            prepared: Vec::new(),
            last_prepare: None,
            statements: None,
            trailing_eof: None,
            unexpected: false,
            unexpected_ns: 0,
            login_ns: 0,
            counting: true,
            seek_pieces: 0,
        };
        if start == Start::MidStream {
            conn.go_mid_stream();
        }
        conn
    }

    fn stream(&mut self, dir: Dir) -> &mut Stream {
        match dir {
            Dir::Req => &mut self.req,
            Dir::Resp => &mut self.resp,
        }
    }

    /// Nothing more to parse: not MySQL, TLS, compression, replication.
    fn stop(&mut self) {
        self.phase = Phase::Stopped;
        self.verdict = Verdict::Done;
        self.release();
    }

    fn release(&mut self) {
        self.req = Stream::new(Frame::Lost);
        self.resp = Stream::new(Frame::Lost);
        self.waiting = VecDeque::new();
        self.prepared = Vec::new();
        self.last_prepare = None;
    }

    /// Skip to the first command, as for a connection found already open.
    fn go_mid_stream(&mut self) {
        self.phase = Phase::Commands;
        self.req.lose_framing();
        self.resp.lose_framing();
        self.recovery = Recovery::NextCommand { armed: false };
        self.expect = Expect::First;
        self.resp_seq = None;
        self.counting = false;
    }

    fn on_data(
        &mut self,
        dir: Dir,
        bytes: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if !self.counting && self.phase == Phase::Commands {
            if looks_like_tls(bytes) {
                self.stop();
                return;
            }
            if dir == Dir::Req {
                self.seek_pieces = self.seek_pieces.saturating_add(1);
                if self.seek_pieces > MAX_SEEK_PIECES {
                    self.stop();
                    return;
                }
            }
        }
        if dir == Dir::Resp {
            self.note_lost_response(ts);
        }
        self.consume(dir, bytes, ts, c, out);
    }

    /// Runs `bytes`, a piece's (or a probe's), through the framing.
    fn consume(
        &mut self,
        dir: Dir,
        bytes: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let mut at = 0;
        let mut stalls = 0;
        while at < bytes.len() && self.phase != Phase::Stopped {
            let rest = bytes.get(at..).unwrap_or_default();
            let used = match self.stream(dir).frame {
                Frame::Header { have } => self.header(dir, have, rest, ts, c, out),
                Frame::Payload { left } => self.payload(dir, left, rest, ts, c, out),
                Frame::Lost => self.seek(dir, rest, at == 0, ts, c, out),
            };
            // Only `seek` returns 0, and then it has left `Lost`; never
            // spin on a state that consumes nothing.
            stalls = if used == 0 { stalls + 1 } else { 0 };
            if stalls > 2 {
                break;
            }
            at += used;
        }
    }

    fn on_gap(
        &mut self,
        dir: Dir,
        n: u64,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if dir == Dir::Resp {
            self.note_lost_response(ts);
        }
        let s = self.stream(dir);
        let left = match s.frame {
            Frame::Lost => {
                s.probe = None;
                return;
            }
            Frame::Header { .. } => return self.lose(dir, Loss::Gap, ts, c),
            Frame::Payload { left } => left,
        };
        if s.packet.want == Want::ByFirstByte {
            // The byte that says what this packet is went uncaptured.
            return self.lose(dir, Loss::Gap, ts, c);
        }
        if let Want::Bytes(want) = s.packet.want {
            s.packet.cut |= s.prefix.len() < usize::from(want);
        }
        if n < u64::from(left) {
            s.frame = Frame::Payload {
                left: left - u32::try_from(n).unwrap_or(0),
            };
            return;
        }
        let beyond = n - u64::from(left);
        s.frame = Frame::Header { have: 0 };
        if s.packet.continues {
            if beyond > 0 {
                self.lose(dir, Loss::Gap, ts, c);
            }
            return;
        }
        let prefix = std::mem::take(&mut s.prefix);
        self.end_packet(dir, &prefix, ts, c, out);
        self.stream(dir).restore_prefix(prefix);
        if beyond > 0 && self.stream(dir).frame == (Frame::Header { have: 0 }) {
            self.lose(dir, Loss::Gap, ts, c);
        }
    }

    /// Reads header bytes; at a complete header, starts the packet.
    fn header(
        &mut self,
        dir: Dir,
        have: u8,
        rest: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        let s = self.stream(dir);
        let have = usize::from(have).min(4);
        if have == 0 {
            s.head_ns = ts;
        }
        let take = (4 - have).min(rest.len());
        let head = match rest {
            // The usual case, a whole header in the piece: read in place.
            &[a, b, c, d, ..] if have == 0 => [a, b, c, d],
            _ => {
                for (slot, &b) in s.head.iter_mut().skip(have).zip(rest) {
                    *slot = b;
                }
                if have + take < 4 {
                    s.frame = Frame::Header {
                        have: (have + take) as u8,
                    };
                    return take;
                }
                s.head
            }
        };
        let [a, b, c2, seq] = head;
        let len = u32::from_le_bytes([a, b, c2, 0]);
        if s.packet.continues {
            if seq != s.packet.seq.wrapping_add(1) {
                self.lose(dir, Loss::Garbage, ts, c);
                return take;
            }
            s.packet.seq = seq;
            s.packet.len += u64::from(len);
            s.packet.continues = len == MAX_PAYLOAD;
            if dir == Dir::Resp && self.resp_seq.is_some() {
                self.resp_seq = Some(seq.wrapping_add(1));
            }
        } else {
            let start_ns = s.head_ns;
            match self.begin_packet(dir, len, seq) {
                Err(loss) => {
                    self.lose(dir, loss, ts, c);
                    return take;
                }
                Ok(want) => {
                    let s = self.stream(dir);
                    s.packet = Packet {
                        first_seq: seq,
                        seq,
                        len: u64::from(len),
                        continues: len == MAX_PAYLOAD,
                        start_ns,
                        want,
                        cut: false,
                    };
                    s.prefix.clear();
                }
            }
            if self.phase == Phase::Stopped {
                return take;
            }
        }
        self.stream(dir).frame = Frame::Payload { left: len };
        if len == 0 {
            self.payload(dir, 0, &[], ts, c, out);
        }
        take
    }

    /// A packet begins: is it plausible here, and how much of it to keep?
    fn begin_packet(&mut self, dir: Dir, len: u32, seq: u8) -> Result<Want, Loss> {
        let capped = |cap: u16| Want::Bytes(cap.min(u16::try_from(len).unwrap_or(cap)));
        match (dir, self.phase) {
            (_, Phase::Stopped) => Ok(Want::Bytes(0)),
            (Dir::Resp, Phase::Greeting) => {
                if seq == 0 && GREETING_LEN.contains(&len) {
                    Ok(capped(MAX_RESPONSE_PREFIX))
                } else {
                    Err(Loss::Garbage)
                }
            }
            (Dir::Req, Phase::Greeting) => {
                // The client spoke first: not this protocol.
                self.stop();
                Ok(Want::Bytes(0))
            }
            (Dir::Req, Phase::Login) => Ok(capped(32)),
            (Dir::Req, Phase::Auth) if seq != 0 => Ok(Want::Bytes(0)),
            (Dir::Req, Phase::Auth) => {
                // A command: authentication ended unseen.
                self.phase = Phase::Commands;
                Ok(Want::ByFirstByte)
            }
            (Dir::Resp, Phase::Login | Phase::Auth) => Ok(Want::ByFirstByte),
            (Dir::Req, Phase::Commands) => {
                let client_data = !self.waiting.is_empty()
                    && matches!(self.expect, Expect::Infile | Expect::Auth);
                match (seq, client_data) {
                    (0, _) => Ok(Want::ByFirstByte),
                    (_, true) => Ok(Want::Bytes(0)),
                    _ => Err(Loss::Garbage),
                }
            }
            (Dir::Resp, Phase::Commands) => {
                if let Some(expected) = self.resp_seq {
                    if seq != expected {
                        return Err(Loss::Garbage);
                    }
                }
                if let Some(head) = self.waiting.front_mut() {
                    head.started = true;
                    if self.expect != Expect::Auth {
                        self.resp_seq = Some(seq.wrapping_add(1));
                    }
                }
                Ok(Want::ByFirstByte)
            }
        }
    }

    /// Prefix bytes needed from a packet starting with `first`.
    fn want_for(&self, dir: Dir, first: u8) -> usize {
        match dir {
            Dir::Req => match first {
                COM_QUERY | COM_STMT_PREPARE => 1 + MAX_STATEMENT,
                COM_STMT_EXECUTE
                | COM_STMT_BULK_EXECUTE
                | COM_STMT_CLOSE
                | COM_STMT_RESET
                | COM_STMT_FETCH
                | COM_STMT_SEND_LONG_DATA => 5,
                _ => 1,
            },
            Dir::Resp => match first {
                // OK status flags follow two length-encoded integers;
                // PREPARE_OK is 13 bytes.
                0x00 | 0xFE => 23,
                // Error number and SQLSTATE marker.
                0xFF => 9,
                // Column count and a metadata flag.
                _ if matches!(self.expect, Expect::First | Expect::Infile) => 10,
                _ => 1,
            },
        }
    }

    /// Skips payload bytes, keeping the wanted prefix; at the packet's end,
    /// hands it on.
    fn payload(
        &mut self,
        dir: Dir,
        left: u32,
        rest: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let chunk = rest.get(..n).unwrap_or_default();
        let packet = self.stream(dir).packet;
        let want = match (packet.want, chunk.first()) {
            (Want::Bytes(want), _) => usize::from(want),
            (Want::ByFirstByte, Some(&first)) => self.want_for(dir, first),
            (Want::ByFirstByte, None) => 0,
        };
        let s = self.stream(dir);
        s.packet.want = Want::Bytes(u16::try_from(want).unwrap_or(u16::MAX));
        s.frame = Frame::Header { have: 0 };
        let whole_here = s.prefix.is_empty()
            && !packet.continues
            && packet.len == u64::from(left)
            && n == chunk.len()
            && u64::try_from(n).is_ok_and(|n| n == u64::from(left));
        if whole_here {
            let body = chunk.get(..want.min(n)).unwrap_or(chunk);
            self.end_packet(dir, body, ts, c, out);
            return n;
        }
        if !packet.cut && s.prefix.len() < want {
            let take = (want - s.prefix.len()).min(n);
            s.prefix
                .extend_from_slice(chunk.get(..take).unwrap_or_default());
        }
        let left = left.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        if left > 0 {
            s.frame = Frame::Payload { left };
            return n;
        }
        if packet.continues {
            return n;
        }
        let prefix = std::mem::take(&mut s.prefix);
        self.end_packet(dir, &prefix, ts, c, out);
        self.stream(dir).restore_prefix(prefix);
        n
    }

    /// A whole packet was read (its prefix in `body`) by the piece at `ts`.
    fn end_packet(
        &mut self,
        dir: Dir,
        body: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let p = self.stream(dir).packet;
        match (dir, self.phase) {
            (Dir::Req, Phase::Login) => self.on_login(p, body),
            (Dir::Req, Phase::Commands) if p.first_seq == 0 => self.on_command(p, body, c, out),
            (Dir::Resp, Phase::Greeting) => self.on_greeting(body),
            (Dir::Resp, Phase::Login | Phase::Auth) => self.on_auth_response(body, ts, out),
            (Dir::Resp, Phase::Commands) => self.on_response(p, body, ts, c, out),
            _ => {}
        }
    }

    /// Framing is lost in `dir` at `ts`.
    fn lose(&mut self, dir: Dir, loss: Loss, ts: u64, c: &mut ParserCounters) {
        self.stream(dir).lose_framing();
        match self.phase {
            Phase::Stopped => {}
            Phase::Greeting if loss == Loss::Garbage => self.stop(),
            Phase::Greeting => self.go_mid_stream(),
            Phase::Login | Phase::Auth => {
                if self.counting {
                    c.resyncs += 1;
                }
                self.go_mid_stream();
            }
            Phase::Commands => match dir {
                Dir::Req => {
                    if self.counting {
                        c.resyncs += 1;
                    }
                }
                Dir::Resp => self.lose_response(loss, ts, c),
            },
        }
    }

    fn lose_response(&mut self, loss: Loss, ts: u64, c: &mut ParserCounters) {
        let in_flight = !self.waiting.is_empty();
        let in_result =
            in_flight && !matches!(self.expect, Expect::First | Expect::Infile | Expect::Auth);
        self.note_lost_response(ts);
        self.recovery = if in_flight && self.expect == Expect::Rows {
            Recovery::Rows
        } else {
            Recovery::NextCommand { armed: false }
        };
        self.resp_seq = None;
        // Rows and definition blocks are skipped anyway: a gap there is
        // expected (large reads are captured in part), and their end is
        // found again.
        if self.counting && !(in_result && loss == Loss::Gap) {
            c.resyncs += 1;
        }
    }

    /// A response piece at `ts` while framing is lost is part of the
    /// answer to the command in flight.
    fn note_lost_response(&mut self, ts: u64) {
        if self.resp.frame != Frame::Lost {
            return;
        }
        if let Some(head) = self.waiting.front_mut() {
            if ts >= head.start_ns {
                head.answered_ns = Some(ts);
            }
        }
    }

    /// Looks for a place to resume in `rest`, which begins a piece when
    /// `at_start`; returns the bytes skipped (0 once resumed).
    fn seek(
        &mut self,
        dir: Dir,
        rest: &[u8],
        at_start: bool,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        if dir == Dir::Resp && self.recovery == Recovery::Rows {
            return self.seek_rows(rest);
        }
        // Commands are written, and answers read, from their start: only
        // a piece start is a candidate.
        if !at_start || !self.may_resume(dir) {
            self.stream(dir).probe = None;
            return rest.len();
        }
        let mut probe = self.stream(dir).probe.take().unwrap_or_default();
        loop {
            let (window, filled) = probe.window(rest);
            match self.judge(dir, window.get(..filled).unwrap_or_default()) {
                Judgement::NeedMore => {
                    probe.push(rest, ts);
                    self.stream(dir).probe = Some(probe);
                    return rest.len();
                }
                Judgement::No => {
                    // The oldest held piece does not start a message: the
                    // next piece start is the next candidate.
                    if !probe.pop_front() {
                        return rest.len();
                    }
                }
                Judgement::Resume => {
                    self.resume(dir);
                    // Bytes of the earlier pieces first, as they came.
                    for (bytes, piece_ts) in probe.pieces() {
                        self.consume(dir, bytes, piece_ts, c, out);
                    }
                    return 0;
                }
            }
        }
    }

    /// Whether a piece start could be where `dir` resumes.
    fn may_resume(&self, dir: Dir) -> bool {
        match dir {
            Dir::Req => true,
            Dir::Resp => {
                self.greeting_possible()
                    || (self.recovery == (Recovery::NextCommand { armed: true })
                        && !self.waiting.is_empty())
            }
        }
    }

    /// A connection found mid-stream may turn out to be at its very start.
    fn greeting_possible(&self) -> bool {
        !self.counting && self.waiting.is_empty()
    }

    /// Does `window`, the first bytes at a candidate start, begin a packet
    /// to resume at? Decided on the header and up to 10 payload bytes, so
    /// that the answer does not depend on how those bytes were split.
    fn judge(&self, dir: Dir, window: &[u8]) -> Judgement {
        let Some(&[a, b, c, _]) = window.get(..4) else {
            return Judgement::NeedMore;
        };
        let len = u32::from_le_bytes([a, b, c, 0]);
        let need = 4 + usize::try_from(len.min(10)).unwrap_or(10);
        let Some(window) = window.get(..need) else {
            return Judgement::NeedMore;
        };
        let yes = match dir {
            Dir::Req => plausible_command(window),
            Dir::Resp => {
                (self.greeting_possible() && looks_like_greeting(window))
                    || self
                        .waiting
                        .front()
                        .is_some_and(|head| plausible_first_response(window, head))
            }
        };
        if yes {
            Judgement::Resume
        } else {
            Judgement::No
        }
    }

    /// Framing resumes at a judged piece start.
    fn resume(&mut self, dir: Dir) {
        self.stream(dir).frame = Frame::Header { have: 0 };
        if dir == Dir::Req {
            return;
        }
        if self.greeting_possible() {
            // Found mid-stream at its very start after all.
            self.phase = Phase::Greeting;
            self.counting = true;
            self.req.lose_framing();
            self.req.frame = Frame::Header { have: 0 };
            return;
        }
        if let Some(head) = self.waiting.front_mut() {
            head.answered_ns = None;
            self.resp_seq = Some(head.resp_seq);
        }
        self.expect = Expect::First;
    }

    /// Rows lost their framing: find it again from a chain of headers
    /// anywhere in the piece.
    fn seek_rows(&mut self, rest: &[u8]) -> usize {
        let Some((at, seq)) = find_chain(rest) else {
            return rest.len();
        };
        self.resp.frame = Frame::Header { have: 0 };
        self.resp_seq = Some(seq);
        self.expect = Expect::Rows;
        if let Some(head) = self.waiting.front_mut() {
            head.answered_ns = None;
        }
        at
    }

    fn on_greeting(&mut self, body: &[u8]) {
        if body.first() != Some(&10) {
            // An ERR instead (too many connections, host blocked) or not
            // MySQL at all: nothing to measure either way.
            self.stop();
            return;
        }
        self.caps.server = greeting_capabilities(body);
        self.phase = Phase::Login;
        self.verdict = Verdict::Speaks;
    }

    /// The client's HandshakeResponse41 (or 320, or an SSL request).
    fn on_login(&mut self, p: Packet, body: &[u8]) {
        let Some(mut caps) = u32_at(body, 0) else {
            return self.go_mid_stream();
        };
        if caps & CLIENT_PROTOCOL_41 == 0 {
            caps &= 0xFFFF;
        }
        if caps & CLIENT_SSL != 0 && p.len == 32 {
            // TLS follows.
            return self.stop();
        }
        let effective = caps & self.caps.server.unwrap_or(u32::MAX);
        if effective & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION) != 0 {
            // Compressed packets: another framing, not followed.
            return self.stop();
        }
        self.caps.deprecate_eof = Some(effective & CLIENT_DEPRECATE_EOF != 0);
        self.caps.query_attributes = Some(effective & CLIENT_QUERY_ATTRIBUTES != 0);
        self.login_ns = p.start_ns;
        self.phase = Phase::Auth;
    }

    /// A server packet during authentication: OK ends it, ERR refuses the
    /// login; auth switch and auth-more-data packets go on.
    fn on_auth_response(&mut self, body: &[u8], ts: u64, out: &mut Vec<Exchange>) {
        match body.first() {
            Some(0x00) if self.phase == Phase::Auth => {
                self.phase = Phase::Commands;
                self.expect = Expect::First;
            }
            Some(0xFF) => {
                if self.phase == Phase::Auth {
                    out.push(Exchange {
                        call: Call::Db(DbCall {
                            system: DbSystem::Mysql,
                            operation: LOGIN_OPERATION.to_owned(),
                            collection: None,
                            error: err_code(body).map(|e| e.to_string()),
                        }),
                        failure: None,
                        start_ns: self.login_ns,
                        end_ns: ts.max(self.login_ns),
                        response_body_bytes: None,
                    });
                }
                // The server closes the connection.
                self.phase = Phase::Stopped;
                self.release();
            }
            _ => {}
        }
    }

    /// A command packet (sequence id 0) from the client.
    fn on_command(
        &mut self,
        p: Packet,
        body: &[u8],
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let Some(cmd) = body.first().and_then(|&code| command(code)) else {
            if self.counting {
                c.resyncs += 1;
            }
            self.req.lose_framing();
            return;
        };
        let code = body.first().copied().unwrap_or_default();
        self.counting = true;
        self.end_lost_response(c, out);
        match cmd.reply {
            Reply::Nothing => {
                if code == COM_STMT_CLOSE {
                    if let Some(id) = u32_at(body, 1) {
                        self.prepared.retain(|s| s.id != id);
                    }
                }
                return;
            }
            Reply::Switch => return self.stop(),
            _ => {}
        }
        if p.start_ns < self.unexpected_ns {
            // Its answer went by, unmatched, before it arrived (reassembly
            // released it late).
            c.unmatched_requests += 1;
            return;
        }
        let (operation, collection, statement) = self.describe(code, cmd, p, body, c);
        self.trailing_eof = None;
        self.unexpected = false;
        if self.waiting.len() >= MAX_WAITING {
            c.unmatched_requests += 1;
            return;
        }
        self.waiting.push_back(Waiting {
            command: code,
            reply: cmd.reply,
            operation,
            collection,
            statement,
            start_ns: p.start_ns,
            resp_seq: p.seq.wrapping_add(1),
            started: false,
            answered_ns: None,
            timed_out: false,
        });
        if self.waiting.len() == 1 {
            self.activate_head();
        }
    }

    /// Operation, table and (for PREPARE) statement of a command.
    fn describe(
        &mut self,
        code: u8,
        cmd: Command,
        p: Packet,
        body: &[u8],
        c: &mut ParserCounters,
    ) -> (&'static str, Option<String>, Option<Summary>) {
        let args = body.get(1..).unwrap_or_default();
        let truncated = p.cut || u64::try_from(body.len()).is_ok_and(|n| n < p.len);
        match code {
            COM_QUERY => match query_text(args, self.caps.query_attributes) {
                Some(text) => {
                    let memo = self.statements.get_or_insert_default();
                    let s = statement_summary(text, truncated, memo);
                    (s.operation, s.collection, None)
                }
                None => (sql::OTHER, None, None),
            },
            COM_STMT_PREPARE => {
                let memo = self.statements.get_or_insert_default();
                let s = statement_summary(args, truncated, memo);
                self.last_prepare = Some(Box::new(s.clone()));
                (cmd.name, s.collection.clone(), Some(s))
            }
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => {
                let known = match u32_at(body, 1) {
                    Some(u32::MAX) => self.last_prepare.as_deref().cloned(),
                    Some(id) => self
                        .prepared
                        .iter()
                        .find(|s| s.id == id)
                        .map(|s| s.statement.clone()),
                    None => None,
                };
                match known {
                    Some(s) => (s.operation, s.collection, None),
                    None => {
                        // Prepared before we saw the connection, or evicted.
                        c.partial += 1;
                        (cmd.name, None, None)
                    }
                }
            }
            _ => (cmd.name, None, None),
        }
    }

    /// A command arrived while the response direction had lost its
    /// framing: every earlier response is over (the protocol answers
    /// before the client sends again). The one in flight ends with its
    /// last piece; earlier ones had their answers lost.
    fn end_lost_response(&mut self, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        if self.resp.frame != Frame::Lost {
            return;
        }
        while let Some(w) = self.waiting.pop_front() {
            match w.answered_ns {
                Some(end) => self.report(w, None, None, end, out),
                None if !w.timed_out => c.unmatched_requests += 1,
                None => {}
            }
        }
        self.recovery = Recovery::NextCommand { armed: true };
        self.expect = Expect::First;
        self.resp_seq = None;
    }

    /// The head of the queue starts receiving its response.
    fn activate_head(&mut self) {
        self.expect = Expect::First;
        self.resp_seq = self.waiting.front().map(|w| w.resp_seq);
    }

    /// Reports `w`, answered (or failed) at `end_ns`; its table name moves
    /// into the exchange.
    fn report(
        &mut self,
        mut w: Waiting,
        error: Option<u16>,
        failure: Option<Failure>,
        end_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        if failure.is_none() && self.verdict == Verdict::Unknown {
            self.verdict = Verdict::Speaks;
        }
        if !w.timed_out {
            let collection = w.collection.take();
            out.push(exchange(&w, collection, error, failure, end_ns));
        }
    }

    /// The head's response is complete at `ts`.
    fn finish(&mut self, error: Option<u16>, ts: u64, out: &mut Vec<Exchange>) {
        let Some(w) = self.waiting.pop_front() else {
            return;
        };
        if error.is_none() && matches!(w.command, COM_RESET_CONNECTION | COM_CHANGE_USER) {
            // The server closed the session's prepared statements.
            self.prepared.clear();
        }
        self.report(w, error, None, ts, out);
        self.activate_head();
    }

    /// One result of the head's response ended with `status`.
    fn result_end(&mut self, status: u16, ts: u64, out: &mut Vec<Exchange>) {
        if status & SERVER_MORE_RESULTS_EXISTS != 0 {
            self.expect = Expect::First;
        } else {
            self.finish(None, ts, out);
        }
    }

    fn learn_deprecate_eof(&mut self, value: bool) {
        if self.caps.deprecate_eof.is_none() {
            self.caps.deprecate_eof = Some(value);
        }
    }

    /// A response packet in the command phase.
    fn on_response(
        &mut self,
        p: Packet,
        body: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let Some(reply) = self.waiting.front().map(|w| w.reply) else {
            return self.on_unexpected(p, body, c);
        };
        self.trailing_eof = None;
        let Some(&first) = body.first() else {
            return self.lose(Dir::Resp, Loss::Garbage, ts, c);
        };
        let terminator = first == 0xFE && p.len < u64::from(MAX_PAYLOAD);
        let eof = first == 0xFE && p.len < 7;
        match self.expect {
            Expect::First | Expect::Infile => self.on_first(reply, p, body, ts, c, out),
            Expect::Auth => match first {
                0x00 => self.finish(None, ts, out),
                0xFF => self.finish(err_code(body), ts, out),
                _ => {}
            },
            Expect::Columns { left } => {
                if first == 0xFF {
                    return self.finish(err_code(body), ts, out);
                }
                self.expect = match left.saturating_sub(1) {
                    0 => Expect::ColumnsEnd,
                    left => Expect::Columns { left },
                };
            }
            Expect::ColumnsEnd if eof => {
                self.learn_deprecate_eof(false);
                if eof_status(body) & SERVER_STATUS_CURSOR_EXISTS != 0 {
                    // Rows come with COM_STMT_FETCH.
                    self.finish(None, ts, out);
                } else {
                    self.expect = Expect::Rows;
                }
            }
            Expect::ColumnsEnd if terminator => {
                self.learn_deprecate_eof(true);
                self.result_end(ok_status(body), ts, out);
            }
            Expect::ColumnsEnd if first == 0xFF => self.finish(err_code(body), ts, out),
            Expect::ColumnsEnd => {
                self.learn_deprecate_eof(true);
                self.expect = Expect::Rows;
            }
            Expect::Rows => self.on_row(p, body, ts, out),
            Expect::Params { left, columns } => {
                if first == 0xFF {
                    return self.finish(err_code(body), ts, out);
                }
                match left.saturating_sub(1) {
                    0 => self.prepare_block_end(Some(columns), p, ts, out),
                    left => self.expect = Expect::Params { left, columns },
                }
            }
            Expect::ParamsEnd { columns } if eof => {
                self.learn_deprecate_eof(false);
                self.prepare_columns(columns, ts, out);
            }
            Expect::ParamsEnd { columns }
                if columns > 0 && self.caps.deprecate_eof != Some(false) =>
            {
                // No EOF: this is the first column definition.
                self.learn_deprecate_eof(true);
                self.expect = Expect::PrepColumns { left: columns };
                self.on_response(p, body, ts, c, out);
            }
            Expect::ParamsEnd { .. } | Expect::PrepColumnsEnd if first == 0xFF => {
                self.finish(err_code(body), ts, out)
            }
            Expect::ParamsEnd { .. } => self.lose(Dir::Resp, Loss::Garbage, ts, c),
            Expect::PrepColumns { left } => {
                if first == 0xFF {
                    return self.finish(err_code(body), ts, out);
                }
                match left.saturating_sub(1) {
                    0 => self.prepare_block_end(None, p, ts, out),
                    left => self.expect = Expect::PrepColumns { left },
                }
            }
            Expect::PrepColumnsEnd if eof => {
                self.learn_deprecate_eof(false);
                self.finish(None, ts, out);
            }
            Expect::PrepColumnsEnd => self.lose(Dir::Resp, Loss::Garbage, ts, c),
        }
    }

    /// The first packet of a response, or of the next result.
    fn on_first(
        &mut self,
        reply: Reply,
        p: Packet,
        body: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let first = body.first().copied().unwrap_or_default();
        match (reply, first) {
            (_, 0xFF) => match err_code(body) {
                // A MariaDB progress report, not the answer.
                Some(0xFFFF) => {}
                code => self.finish(code, ts, out),
            },
            (Reply::Single, _) => self.finish(None, ts, out),
            (Reply::Auth, 0x00) => self.finish(None, ts, out),
            (Reply::Auth, _) => {
                // Auth switch or more data: the client answers in turn.
                self.expect = Expect::Auth;
                self.resp_seq = None;
            }
            (Reply::Rows, _) => {
                self.expect = Expect::Rows;
                self.on_row(p, body, ts, out);
            }
            (Reply::Prepare, 0x00) if p.len >= 12 => self.prepare_ok(p, body, ts, out),
            (Reply::Prepare, _) => self.lose(Dir::Resp, Loss::Garbage, ts, c),
            (_, 0x00) => self.result_end(ok_status(body), ts, out),
            (_, 0xFE) if p.len < u64::from(MAX_PAYLOAD) => {
                self.result_end(terminator_status(body, p.len), ts, out)
            }
            (_, 0xFB) => {
                // LOCAL INFILE: the client sends the file, then the server
                // answers; sequence ids move on meanwhile.
                self.expect = Expect::Infile;
                self.resp_seq = None;
            }
            _ => match column_count(body, p.len) {
                Some((_, false)) => self.expect = Expect::ColumnsEnd,
                Some((columns, true)) => self.expect = Expect::Columns { left: columns },
                None => self.lose(Dir::Resp, Loss::Garbage, ts, c),
            },
        }
    }

    fn on_row(&mut self, p: Packet, body: &[u8], ts: u64, out: &mut Vec<Exchange>) {
        match body.first() {
            Some(0xFE) if p.len < u64::from(MAX_PAYLOAD) => {
                self.result_end(terminator_status(body, p.len), ts, out)
            }
            Some(0xFF) => self.finish(err_code(body), ts, out),
            _ => {}
        }
    }

    /// PREPARE_OK: remember the statement under its id; its definition
    /// blocks follow.
    fn prepare_ok(&mut self, p: Packet, body: &[u8], ts: u64, out: &mut Vec<Exchange>) {
        let (Some(id), Some(columns), Some(params)) =
            (u32_at(body, 1), u16_at(body, 5), u16_at(body, 7))
        else {
            return self.finish(None, ts, out);
        };
        if let Some(statement) = self.waiting.front().and_then(|w| w.statement.clone()) {
            self.remember(id, statement);
        }
        // MySQL's optional metadata: a 13th byte 0 means no definitions.
        let metadata = p.len < 13 || body.get(12) != Some(&0);
        if !metadata {
            return self.finish(None, ts, out);
        }
        if params > 0 {
            self.expect = Expect::Params {
                left: params,
                columns,
            };
        } else {
            self.prepare_columns(columns, ts, out);
        }
    }

    /// The column block of a PREPARE response, if any.
    fn prepare_columns(&mut self, columns: u16, ts: u64, out: &mut Vec<Exchange>) {
        if columns > 0 {
            self.expect = Expect::PrepColumns { left: columns };
        } else {
            self.finish(None, ts, out);
        }
    }

    /// A definition block of a PREPARE response ended (the parameter block
    /// when `then_columns`); an EOF follows unless DEPRECATE_EOF.
    fn prepare_block_end(
        &mut self,
        then_columns: Option<u16>,
        p: Packet,
        ts: u64,
        out: &mut Vec<Exchange>,
    ) {
        let more = then_columns.filter(|&n| n > 0);
        match (self.caps.deprecate_eof, then_columns, more) {
            (Some(true), _, Some(columns)) => self.expect = Expect::PrepColumns { left: columns },
            (Some(true), _, None) => self.finish(None, ts, out),
            (Some(false), Some(columns), _) => self.expect = Expect::ParamsEnd { columns },
            (Some(false), None, _) => self.expect = Expect::PrepColumnsEnd,
            // Unknown: the next packet tells (EOF or column definition).
            (None, _, Some(columns)) => self.expect = Expect::ParamsEnd { columns },
            (None, _, None) => {
                // Unknown and nothing after: end it now; an EOF right
                // after still belongs to it.
                self.finish(None, ts, out);
                if self.waiting.is_empty() {
                    self.trailing_eof = Some(p.seq.wrapping_add(1));
                }
            }
        }
    }

    fn remember(&mut self, id: u32, statement: Summary) {
        self.prepared.retain(|s| s.id != id);
        if self.prepared.len() >= MAX_PREPARED {
            self.prepared.remove(0);
        }
        self.prepared.push(Prepared { id, statement });
    }

    /// A response packet with no command waiting.
    fn on_unexpected(&mut self, p: Packet, body: &[u8], c: &mut ParserCounters) {
        if self.trailing_eof.take() == Some(p.first_seq) && body.first() == Some(&0xFE) && p.len < 7
        {
            self.learn_deprecate_eof(false);
            return;
        }
        if self.unexpected && p.first_seq > 1 {
            return;
        }
        self.unexpected = true;
        // A server closing an idle connection says why in an ERR packet
        // (wait_timeout, shutdown): not a lost request's answer.
        if body.first() == Some(&0xFF) {
            return;
        }
        self.unexpected_ns = p.start_ns;
        if self.counting {
            c.unmatched_responses += 1;
        }
    }
}

impl Spec for MysqlConn {
    const NAME: &'static str = "mysql";

    fn start(side: Side, start: Start) -> Self {
        Self::new(side, start)
    }

    /// The server speaks first, with a protocol-10 greeting.
    fn detect(from_client: bool, bytes: &[u8]) -> Detection {
        if from_client {
            Detection::No
        } else {
            detect_greeting(bytes)
        }
    }

    fn traced_on(side: Side) -> bool {
        side == Side::Client
    }
}

impl ConnParser for MysqlConn {
    fn on_piece(
        &mut self,
        outbound: bool,
        piece: Piece<'_>,
        ts_ns: u64,
        counters: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if self.phase == Phase::Stopped || piece == Piece::Data(&[]) || piece == Piece::Gap(0) {
            return;
        }
        let dir = if outbound == (self.side == Side::Client) {
            Dir::Req
        } else {
            Dir::Resp
        };
        match piece {
            Piece::Data(bytes) => self.on_data(dir, bytes, ts_ns, counters, out),
            Piece::Gap(n) => self.on_gap(dir, n, ts_ns, counters, out),
        }
    }

    /// Waiting commands fail with `ConnectionClosed`, except one whose
    /// response was being read without framing: it ended with its last
    /// piece.
    fn on_close(&mut self, ts_ns: u64, counters: &mut ParserCounters, out: &mut Vec<Exchange>) {
        let _ = counters;
        let lost = self.resp.frame == Frame::Lost;
        for (i, w) in std::mem::take(&mut self.waiting).into_iter().enumerate() {
            match w.answered_ns {
                Some(end) if lost && i == 0 => self.report(w, None, None, end, out),
                _ => self.report(w, None, Some(Failure::ConnectionClosed), ts_ns, out),
            }
        }
        self.phase = Phase::Stopped;
        self.release();
    }

    /// Commands whose response has not begun time out (once). A response
    /// read without framing ends with its last piece once nothing more
    /// came for `timeout_ns`.
    fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<Exchange>) {
        let Some(cutoff) = now_ns.checked_sub(timeout_ns) else {
            return;
        };
        if self.resp.frame == Frame::Lost {
            let end = self.waiting.front().and_then(|w| w.answered_ns);
            if let Some(end) = end.filter(|&end| end <= cutoff) {
                if let Some(w) = self.waiting.pop_front() {
                    self.report(w, None, None, end, out);
                }
                self.activate_head();
                self.recovery = Recovery::NextCommand {
                    armed: !self.waiting.is_empty(),
                };
            }
        }
        for w in &mut self.waiting {
            if w.start_ns > cutoff {
                break;
            }
            if w.timed_out || w.started || w.answered_ns.is_some() {
                continue;
            }
            w.timed_out = true;
            // It stays waiting for a late answer: its table name is copied.
            let collection = w.collection.clone();
            out.push(exchange(
                w,
                collection,
                None,
                Some(Failure::Timeout),
                now_ns,
            ));
        }
    }

    fn verdict(&self) -> Verdict {
        self.verdict
    }
}

fn exchange(
    w: &Waiting,
    collection: Option<String>,
    error: Option<u16>,
    failure: Option<Failure>,
    end_ns: u64,
) -> Exchange {
    Exchange {
        call: Call::Db(DbCall {
            system: DbSystem::Mysql,
            operation: w.operation.to_owned(),
            collection,
            error: error.map(|e| e.to_string()),
        }),
        failure,
        start_ns: w.start_ns,
        end_ns: end_ns.max(w.start_ns),
        response_body_bytes: None,
    }
}

/// Do a server's first bytes start a protocol-10 greeting: a plausible
/// length, sequence id 0, protocol 10, and a version string of printable
/// ASCII starting with a digit, up to its NUL (or 16 characters of it)?
fn detect_greeting(bytes: &[u8]) -> Detection {
    let header = [0u8, 0, 0, 0, 10];
    for (i, &b) in bytes.iter().enumerate().take(header.len()) {
        let fits = match i {
            0..=2 => true,
            _ => header.get(i) == Some(&b),
        };
        if !fits {
            return Detection::No;
        }
    }
    if let Some(&[a, b, c]) = bytes.get(..3) {
        if !GREETING_LEN.contains(&u32::from_le_bytes([a, b, c, 0])) {
            return Detection::No;
        }
    }
    // Enough of a version string decides too: the caller holds only a
    // few dozen bytes.
    const CONVINCING: usize = 16;
    let version = bytes.get(5..).unwrap_or_default();
    for (i, &b) in version.iter().enumerate() {
        match b {
            0 if i > 0 => return Detection::Yes,
            _ if i >= CONVINCING => return Detection::Yes,
            b'0'..=b'9' => {}
            0x21..=0x7E if i > 0 => {}
            _ => return Detection::No,
        }
    }
    Detection::NeedMore
}

/// Whether `bytes` hold the start of a greeting (a connection found
/// mid-stream that is only beginning).
fn looks_like_greeting(bytes: &[u8]) -> bool {
    detect_greeting(bytes) != Detection::No && bytes.len() > 5
}

/// A TLS record header: an encrypted connection found mid-stream.
fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
}

/// Server capability flags from a greeting.
fn greeting_capabilities(body: &[u8]) -> Option<u32> {
    let version_end = body.get(1..)?.iter().position(|&b| b == 0)?;
    let rest = body.get(version_end + 2..)?;
    // Thread id (4), scramble (8), filler (1), then the low flags.
    let low = u16_at(rest, 13)?;
    let high = u16_at(rest, 18).unwrap_or(0);
    Some(u32::from(low) | u32::from(high) << 16)
}

/// Could `bytes` (a piece after lost framing) start with a command?
fn plausible_command(bytes: &[u8]) -> bool {
    let &[a, b, c, 0, code, ref text @ ..] = bytes else {
        return false;
    };
    let Some(cmd) = command(code) else {
        return false;
    };
    let len = u32::from_le_bytes([a, b, c, 0]);
    if len < cmd.len.0 || len > cmd.len.1 {
        return false;
    }
    match code {
        COM_QUERY | COM_STMT_PREPARE | COM_INIT_DB => text.first().is_none_or(|&t| {
            // SQL starts with a word, a comment, a parenthesis or space;
            // 0 is an empty query-attribute block.
            t.is_ascii_alphabetic()
                || t.is_ascii_whitespace()
                || matches!(t, b'(' | b'/' | b'#' | b'-' | b'`' | b'{' | b'_' | 0)
        }),
        _ => true,
    }
}

/// Could `bytes` (a piece after lost framing) start with `head`'s answer?
fn plausible_first_response(bytes: &[u8], head: &Waiting) -> bool {
    let &[a, b, c, seq, first, ..] = bytes else {
        return false;
    };
    let len = u32::from_le_bytes([a, b, c, 0]);
    if seq != head.resp_seq || len == 0 {
        return false;
    }
    let payload = bytes.get(4..).unwrap_or_default();
    match (head.reply, first) {
        (Reply::Single, _) => true,
        (_, 0xFF) => (3..0xFFFF).contains(&len),
        (Reply::Auth, _) => matches!(first, 0x00 | 0xFE | 0x01),
        (Reply::Prepare, _) => first == 0x00 && len >= 12,
        (Reply::Rows, _) => matches!(first, 0x00 | 0x03 | 0xFE),
        (_, 0x00) => (7..MAX_PAYLOAD).contains(&len),
        (_, 0xFE) => len < 0xFFFF,
        (_, 0xFB) => true,
        _ => column_count(payload, u64::from(len)).is_some(),
    }
}

/// Where framing resumes in `bytes` after rows lost it: the first offset
/// where at least `MIN_CHAIN` headers follow each other with consecutive
/// sequence ids, or where headers lead exactly to the end of `bytes` with a
/// terminator or ERR last. Returns the offset and its sequence id.
fn find_chain(bytes: &[u8]) -> Option<(usize, u8)> {
    (0..bytes.len().min(MAX_CHAIN_SCAN))
        .find(|&start| chain_at(bytes, start))
        .and_then(|start| Some((start, *bytes.get(start + 3)?)))
}

fn chain_at(bytes: &[u8], start: usize) -> bool {
    let mut at = start;
    let mut links = 0;
    let mut seq: Option<u8> = None;
    loop {
        let Some(&[a, b, c, s]) = bytes.get(at..at + 4) else {
            return links >= MIN_CHAIN;
        };
        if seq.is_some_and(|prev| s != prev.wrapping_add(1)) {
            return false;
        }
        let len = u32::from_le_bytes([a, b, c, 0]);
        if len == 0 {
            return false;
        }
        links += 1;
        if links >= MIN_CHAIN {
            return true;
        }
        let end = at + 4 + len as usize;
        let payload = bytes.get(at + 4..).unwrap_or_default();
        if end == bytes.len() && ends_result(payload, len) {
            return true;
        }
        if end >= bytes.len() {
            return false;
        }
        at = end;
        seq = Some(s);
    }
}

/// A whole packet that ends a result: an EOF, an OK-style terminator of a
/// plausible size, or an ERR with its SQLSTATE marker.
fn ends_result(payload: &[u8], len: u32) -> bool {
    match payload {
        [0xFE, ..] => len == 5 || (7..=1024).contains(&len),
        [0xFF, _, _, b'#', ..] => len >= 9,
        _ => false,
    }
}

/// A length-encoded integer and its size; None for NULL (0xFB) and 0xFF.
fn lenenc(bytes: &[u8]) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let mut value = [0u8; 8];
        value.get_mut(..n)?.copy_from_slice(bytes.get(1..1 + n)?);
        Some(u64::from_le_bytes(value))
    };
    match *bytes.first()? {
        b @ 0..=0xFA => Some((u64::from(b), 1)),
        0xFC => Some((le(2)?, 3)),
        0xFD => Some((le(3)?, 4)),
        0xFE => Some((le(8)?, 9)),
        _ => None,
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let &[a, b] = bytes.get(at..at + 2)? else {
        return None;
    };
    Some(u16::from_le_bytes([a, b]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let &[a, b, c, d] = bytes.get(at..at + 4)? else {
        return None;
    };
    Some(u32::from_le_bytes([a, b, c, d]))
}

fn err_code(body: &[u8]) -> Option<u16> {
    u16_at(body, 1)
}

/// Status flags of an OK packet (0x00 or 0xFE header); 0 if cut short.
fn ok_status(body: &[u8]) -> u16 {
    let status = || {
        let rest = body.get(1..)?;
        let (_, affected) = lenenc(rest)?;
        let (_, insert_id) = lenenc(rest.get(affected..)?)?;
        u16_at(rest, affected + insert_id)
    };
    status().unwrap_or(0)
}

/// Status flags of an EOF packet; 0 before protocol 4.1.
fn eof_status(body: &[u8]) -> u16 {
    u16_at(body, 3).unwrap_or(0)
}

/// A 0xFE terminator is an EOF (5 bytes, or 1 before 4.1) or, with
/// DEPRECATE_EOF, an OK packet (at least 7 bytes).
fn terminator_status(body: &[u8], len: u64) -> u16 {
    if len < 7 {
        eof_status(body)
    } else {
        ok_status(body)
    }
}

/// A result set's column count packet, as MySQL or MariaDB shape it:
/// the count alone, MariaDB's count then a metadata flag (cached
/// metadata), or MySQL's metadata flag then the count (optional metadata).
/// The lengths tell them apart; where two readings fit, they agree. At
/// most 65535 columns (the prepared-statement protocol counts in 16 bits).
fn column_count(payload: &[u8], len: u64) -> Option<(u16, bool)> {
    let payload = payload.get(..usize::try_from(len).ok()?)?;
    let plausible = |n: u64| u16::try_from(n).ok().filter(|&n| n > 0);
    if let Some((n, size)) = lenenc(payload) {
        if let Some(n) = plausible(n).filter(|_| size == payload.len()) {
            return Some((n, true));
        }
        if let Some(&flag @ (0 | 1)) = payload.get(size) {
            if let Some(n) = plausible(n).filter(|_| size + 1 == payload.len()) {
                return Some((n, flag == 1));
            }
        }
    }
    if let [flag @ (0 | 1), rest @ ..] = payload {
        if let Some((n, size)) = lenenc(rest) {
            if let Some(n) = plausible(n).filter(|_| size == rest.len()) {
                return Some((n, *flag == 1));
            }
        }
    }
    None
}

/// The statement of a COM_QUERY (after the command byte): behind query
/// attributes when the connection sends them (MySQL 8.0.23+; when unknown,
/// SQL never starts with a control byte). None when they cannot be skipped.
fn query_text(args: &[u8], attributes: Option<bool>) -> Option<&[u8]> {
    let with = attributes.unwrap_or_else(|| args.first().is_some_and(|&b| b < 0x09));
    if with {
        skip_query_attributes(args)
    } else {
        Some(args)
    }
}

/// Parameter count, parameter set count, then for each parameter a NULL
/// bit, a type and a name, then the non-NULL values in binary form.
fn skip_query_attributes(args: &[u8]) -> Option<&[u8]> {
    let (count, a) = lenenc(args)?;
    let (_sets, b) = lenenc(args.get(a..)?)?;
    let mut at = a + b;
    if count == 0 {
        return args.get(at..);
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_ATTRIBUTES)?;
    let nulls = args.get(at..at.checked_add(count.div_ceil(8))?)?;
    at += nulls.len();
    // The types are always sent with attributes.
    if *args.get(at)? != 1 {
        return None;
    }
    at += 1;
    let mut types = at;
    for _ in 0..count {
        at = skip_name(args, at.checked_add(2)?)?;
    }
    for i in 0..count {
        let kind = *args.get(types)?;
        types = skip_name(args, types.checked_add(2)?)?;
        if nulls
            .get(i / 8)
            .is_some_and(|&bits| bits & (1 << (i % 8)) != 0)
        {
            continue;
        }
        at = at.checked_add(binary_value_len(kind, args.get(at..)?)?)?;
    }
    args.get(at..)
}

/// Skips a length-encoded string at `at`.
fn skip_name(bytes: &[u8], at: usize) -> Option<usize> {
    let (n, size) = lenenc(bytes.get(at..)?)?;
    at.checked_add(size)?.checked_add(usize::try_from(n).ok()?)
}

/// Length of a binary-protocol value of column type `kind`.
fn binary_value_len(kind: u8, bytes: &[u8]) -> Option<usize> {
    Some(match kind {
        0x06 => 0,
        0x01 => 1,
        0x02 | 0x0d => 2,
        0x03 | 0x04 | 0x09 => 4,
        0x05 | 0x08 => 8,
        // Dates and times: a length byte, then that many bytes.
        0x07 | 0x0a | 0x0b | 0x0c => 1 + usize::from(*bytes.first()?),
        0x00 | 0x0f | 0x10 | 0xf5..=0xff => skip_name(bytes, 0)?,
        _ => return None,
    })
}

/// Verb and table of a statement, ignoring trailing NULs. A statement cut short (by a gap or the
/// prefix cap) loses its possibly partial last word, and the table must be
/// followed by something, so that a cut right after `FROM a` (maybe `JOIN
/// b` next) names no table. A table of a multi-statement query is not
/// reported: it would be the first statement's only.
fn statement_summary(text: &[u8], truncated: bool, memo: &mut sql_memo::Memo) -> Summary {
    // Some clients (mysqlslap) send the C string's terminating NUL too.
    let text = match text.iter().rposition(|&b| b != 0) {
        Some(last) => text.get(..=last).unwrap_or(text),
        None => &[],
    };
    if !truncated {
        return first_statement(text, memo);
    }
    let whole_words = text
        .iter()
        .rposition(u8::is_ascii_whitespace)
        .and_then(|end| text.get(..end))
        .unwrap_or_default();
    let mut marked = Vec::with_capacity(whole_words.len() + 2);
    marked.extend_from_slice(whole_words);
    marked.extend_from_slice(b" ?");
    first_statement(&marked, memo)
}

fn first_statement(text: &[u8], memo: &mut sql_memo::Memo) -> Summary {
    let mut summary = memo.summarize(text, Dialect::Mysql);
    // Without a semicolon byte there is no second statement (see
    // `sql::statements`); the check skips setting up a tokenizer for it.
    if summary.collection.is_some()
        && text.contains(&b';')
        && sql::statements(text, Dialect::Mysql).nth(1).is_some()
    {
        summary.collection = None;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::XorShift;

    const BASE_CAPS: u32 = CLIENT_PROTOCOL_41 | 0x8000 | 0x1_0000 | 0x2_0000 | 0x8_0000;

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_le_bytes();
        let mut v = vec![len[0], len[1], len[2], seq];
        v.extend_from_slice(payload);
        v
    }

    fn greeting(caps: u32) -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"5.5.5-10.11.6-MariaDB\0");
        p.extend_from_slice(&[7, 0, 0, 0]);
        p.extend_from_slice(b"abcdefgh\0");
        p.extend_from_slice(&(caps as u16).to_le_bytes());
        p.extend_from_slice(&[8, 2, 0]);
        p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        pkt(0, &p)
    }

    fn login(caps: u32) -> Vec<u8> {
        let mut p = caps.to_le_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 1, 8]);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"app\0\0mysql_native_password\0");
        pkt(1, &p)
    }

    fn status(seq: u8, head: u8, status: u16) -> Vec<u8> {
        let [lo, hi] = status.to_le_bytes();
        pkt(seq, &[head, 0, 0, lo, hi, 0, 0])
    }

    fn ok(seq: u8) -> Vec<u8> {
        status(seq, 0x00, 2)
    }

    fn ok_fe(seq: u8, flags: u16) -> Vec<u8> {
        status(seq, 0xFE, flags)
    }

    fn eof(seq: u8, flags: u16) -> Vec<u8> {
        let [lo, hi] = flags.to_le_bytes();
        pkt(seq, &[0xFE, 0, 0, lo, hi])
    }

    fn err(seq: u8, code: u16) -> Vec<u8> {
        let mut p = vec![0xFF];
        p.extend_from_slice(&code.to_le_bytes());
        p.extend_from_slice(b"#42S02Table 'test.missing' doesn't exist");
        pkt(seq, &p)
    }

    fn coldef(seq: u8) -> Vec<u8> {
        pkt(seq, b"\x03def\x04test\x01t\x01t\x01a\x01a\x0c\x08\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00")
    }

    fn row(seq: u8, text: &[u8]) -> Vec<u8> {
        let mut p = vec![text.len() as u8];
        p.extend_from_slice(text);
        pkt(seq, &p)
    }

    fn command(code: u8, args: &[u8]) -> Vec<u8> {
        let mut p = vec![code];
        p.extend_from_slice(args);
        pkt(0, &p)
    }

    fn query(text: &str) -> Vec<u8> {
        command(COM_QUERY, text.as_bytes())
    }

    fn stmt(code: u8, id: u32) -> Vec<u8> {
        let mut args = id.to_le_bytes().to_vec();
        if code == COM_STMT_EXECUTE {
            args.extend_from_slice(&[0, 1, 0, 0, 0]);
        }
        command(code, &args)
    }

    fn prepare_ok(seq: u8, id: u32, columns: u16, params: u16) -> Vec<u8> {
        let mut p = vec![0];
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&columns.to_le_bytes());
        p.extend_from_slice(&params.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        pkt(seq, &p)
    }

    /// A text result of one column and `rows` rows, from sequence id 1.
    fn result(rows: usize, deprecate_eof: bool) -> Vec<u8> {
        let mut v = pkt(1, &[1]);
        v.extend(coldef(2));
        let mut seq = 3;
        if !deprecate_eof {
            v.extend(eof(3, 2));
            seq = 4;
        }
        for i in 0..rows {
            v.extend(row(seq, format!("row{i}").as_bytes()));
            seq += 1;
        }
        v.extend(if deprecate_eof {
            ok_fe(seq, 2)
        } else {
            eof(seq, 2)
        });
        v
    }

    struct Conn {
        conn: MysqlConn,
        c: ParserCounters,
        out: Vec<Exchange>,
        ts: u64,
    }

    type Got = (String, Option<String>, Option<String>);

    impl Conn {
        fn new(start: Start) -> Self {
            Self {
                conn: MysqlConn::new(Side::Client, start),
                c: ParserCounters::default(),
                out: Vec::new(),
                ts: 0,
            }
        }

        /// A connection past authentication.
        fn ready(deprecate_eof: bool) -> Self {
            let caps = BASE_CAPS
                | if deprecate_eof {
                    CLIENT_DEPRECATE_EOF
                } else {
                    0
                };
            let mut t = Self::new(Start::Fresh);
            t.resp(&greeting(caps | CLIENT_SSL));
            assert_eq!(t.conn.verdict(), Verdict::Speaks);
            t.req(&login(caps));
            t.resp(&ok(2));
            assert_eq!(t.conn.phase, Phase::Commands);
            t
        }

        fn feed(&mut self, outbound: bool, piece: Piece<'_>) {
            self.ts += 10;
            self.conn
                .on_piece(outbound, piece, self.ts, &mut self.c, &mut self.out);
        }

        fn req(&mut self, bytes: &[u8]) {
            self.feed(true, Piece::Data(bytes));
        }

        fn resp(&mut self, bytes: &[u8]) {
            self.feed(false, Piece::Data(bytes));
        }

        fn req_gap(&mut self, n: u64) {
            self.feed(true, Piece::Gap(n));
        }

        fn resp_gap(&mut self, n: u64) {
            self.feed(false, Piece::Gap(n));
        }

        fn close(&mut self) {
            self.ts += 10;
            self.conn.on_close(self.ts, &mut self.c, &mut self.out);
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

        fn counts(&self) -> (u64, u64, u64, u64) {
            let c = &self.c;
            (
                c.resyncs,
                c.unmatched_requests,
                c.unmatched_responses,
                c.partial,
            )
        }
    }

    fn op(operation: &str, table: Option<&str>, error: Option<&str>) -> Got {
        (
            operation.to_owned(),
            table.map(str::to_owned),
            error.map(str::to_owned),
        )
    }

    #[test]
    fn ok_err_and_result_sets() {
        for deprecate in [true, false] {
            let mut t = Conn::ready(deprecate);
            t.req(&query("INSERT INTO t VALUES (1)"));
            let start = t.ts;
            t.resp(&ok(1));
            t.req(&query("SELECT * FROM missing"));
            t.resp(&err(1, 1146));
            t.req(&query("SELECT a FROM t"));
            let bytes = result(3, deprecate);
            let (a, b) = bytes.split_at(20);
            t.resp(a);
            t.resp(b);
            assert_eq!(
                t.got(),
                vec![
                    op("INSERT", Some("t"), None),
                    op("SELECT", Some("missing"), Some("1146")),
                    op("SELECT", Some("t"), None),
                ]
            );
            assert_eq!((t.out[0].start_ns, t.out[0].end_ns), (start, start + 10));
            assert_eq!(t.out[2].end_ns, t.ts);
            assert_eq!(t.counts(), (0, 0, 0, 0));
            assert_eq!(t.conn.caps.deprecate_eof, Some(deprecate));
        }
    }

    #[test]
    fn every_byte_split_gives_the_same_exchanges() {
        let mut stream: Vec<(bool, Vec<u8>)> = vec![
            (false, greeting(BASE_CAPS | CLIENT_DEPRECATE_EOF)),
            (true, login(BASE_CAPS | CLIENT_DEPRECATE_EOF)),
            (false, ok(2)),
            (true, query("SELECT a FROM t")),
            (false, result(4, true)),
            (
                true,
                command(COM_STMT_PREPARE, b"UPDATE t SET a = ? WHERE b = ?"),
            ),
        ];
        let mut prep = prepare_ok(1, 9, 0, 2);
        prep.extend(coldef(2));
        prep.extend(coldef(3));
        stream.push((false, prep));
        stream.push((true, stmt(COM_STMT_EXECUTE, 9)));
        stream.push((false, ok(1)));
        let whole = {
            let mut t = Conn::new(Start::Fresh);
            for (outbound, bytes) in &stream {
                t.feed(*outbound, Piece::Data(bytes));
            }
            t.got()
        };
        assert_eq!(
            whole,
            vec![
                op("SELECT", Some("t"), None),
                op("PREPARE", Some("t"), None),
                op("UPDATE", Some("t"), None),
            ]
        );
        for step in 0..stream.len() {
            for at in 1..stream[step].1.len() {
                let mut t = Conn::new(Start::Fresh);
                for (i, (outbound, bytes)) in stream.iter().enumerate() {
                    if i == step {
                        let (a, b) = bytes.split_at(at);
                        t.feed(*outbound, Piece::Data(a));
                        t.feed(*outbound, Piece::Data(b));
                    } else {
                        t.feed(*outbound, Piece::Data(bytes));
                    }
                }
                assert_eq!(t.got(), whole, "step {step} split at {at}");
                assert_eq!(t.counts(), (0, 0, 0, 0), "step {step} split at {at}");
            }
        }
    }

    #[test]
    fn more_results_belong_to_one_command() {
        let mut t = Conn::ready(false);
        t.req(&query("CALL p()"));
        let mut v = pkt(1, &[1]);
        v.extend(coldef(2));
        v.extend(eof(3, 2));
        v.extend(row(4, b"x"));
        v.extend(eof(5, 2 | SERVER_MORE_RESULTS_EXISTS));
        t.resp(&v);
        assert!(t.out.is_empty());
        t.resp(&status(6, 0, 2));
        t.req(&query("SELECT a FROM t; DELETE FROM u"));
        t.resp(&status(1, 0, 2 | SERVER_MORE_RESULTS_EXISTS));
        t.resp(&err(2, 1064));
        assert_eq!(
            t.got(),
            vec![op("CALL", None, None), op("SELECT", None, Some("1064"))]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn prepared_statements_name_their_executions() {
        for deprecate in [true, false] {
            let mut t = Conn::ready(deprecate);
            t.req(&command(COM_STMT_PREPARE, b"SELECT a FROM t WHERE id = ?"));
            let mut v = prepare_ok(1, 7, 1, 1);
            v.extend(coldef(2));
            let mut seq = 3;
            if !deprecate {
                v.extend(eof(3, 2));
                seq = 4;
            }
            v.extend(coldef(seq));
            if !deprecate {
                v.extend(eof(seq + 1, 2));
            }
            t.resp(&v);
            t.req(&stmt(COM_STMT_EXECUTE, 7));
            let mut v = pkt(1, &[1]);
            v.extend(coldef(2));
            let mut seq = 3;
            if !deprecate {
                v.extend(eof(3, 2));
                seq = 4;
            }
            v.extend(pkt(seq, &[0, 0, 1, b'x']));
            v.extend(if deprecate {
                ok_fe(seq + 1, 2)
            } else {
                eof(seq + 1, 2)
            });
            t.resp(&v);
            t.req(&stmt(COM_STMT_CLOSE, 7));
            t.req(&stmt(COM_STMT_EXECUTE, 7));
            t.resp(&err(1, 1243));
            assert_eq!(
                t.got(),
                vec![
                    op("PREPARE", Some("t"), None),
                    op("SELECT", Some("t"), None),
                    op("EXECUTE", None, Some("1243")),
                ]
            );
            // The unknown statement is a partially decoded exchange.
            assert_eq!(t.counts(), (0, 0, 0, 1));
        }
    }

    #[test]
    fn mariadb_direct_execution_uses_the_last_prepare() {
        let mut t = Conn::ready(true);
        // Pipelined: PREPARE and EXECUTE(-1) before any answer.
        let mut v = command(COM_STMT_PREPARE, b"INSERT INTO h (a) VALUES (?)");
        v.extend(stmt(COM_STMT_EXECUTE, u32::MAX));
        t.req(&v);
        let mut v = prepare_ok(1, 3, 0, 1);
        v.extend(coldef(2));
        t.resp(&v);
        t.resp(&ok(1));
        assert_eq!(
            t.got(),
            vec![
                op("PREPARE", Some("h"), None),
                op("INSERT", Some("h"), None)
            ]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn mid_stream_prepare_learns_the_eof_style() {
        let mut t = Conn::new(Start::MidStream);
        t.req(&command(COM_STMT_PREPARE, b"INSERT INTO t VALUES (?)"));
        let mut v = prepare_ok(1, 1, 0, 1);
        v.extend(coldef(2));
        t.resp(&v);
        // Unknown style: ended at the last definition...
        assert_eq!(t.got(), vec![op("PREPARE", Some("t"), None)]);
        // ...and the EOF that follows still belongs to it.
        t.resp(&eof(3, 2));
        assert_eq!(t.conn.caps.deprecate_eof, Some(false));
        t.req(&command(COM_STMT_PREPARE, b"SELECT a FROM t WHERE b = ?"));
        let mut v = prepare_ok(1, 2, 1, 1);
        v.extend(coldef(2));
        v.extend(eof(3, 2));
        v.extend(coldef(4));
        v.extend(eof(5, 2));
        t.resp(&v);
        assert_eq!(t.got().len(), 2);
        assert_eq!(t.counts(), (0, 0, 0, 0));
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
    }

    #[test]
    fn local_infile_is_one_exchange() {
        let mut t = Conn::ready(true);
        t.req(&query("LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t"));
        t.resp(&pkt(1, b"\xfb/tmp/x"));
        t.req(&pkt(2, b"1\n2\n"));
        t.req(&pkt(3, b"3\n"));
        t.req(&pkt(4, b""));
        assert!(t.out.is_empty());
        t.resp(&ok(5));
        t.req(&query("SELECT 1"));
        t.resp(&result(1, true));
        assert_eq!(
            t.got(),
            vec![op("LOAD", None, None), op("SELECT", None, None)]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn tls_and_compression_are_done() {
        let mut t = Conn::new(Start::Fresh);
        t.resp(&greeting(BASE_CAPS | CLIENT_SSL));
        let ssl = pkt(1, &{
            let mut p = (BASE_CAPS | CLIENT_SSL).to_le_bytes().to_vec();
            p.extend_from_slice(&[0; 28]);
            p
        });
        t.req(&ssl);
        assert_eq!(t.conn.verdict(), Verdict::Done);
        t.req(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        t.close();
        assert!(t.out.is_empty());

        let mut t = Conn::new(Start::Fresh);
        t.resp(&greeting(BASE_CAPS | CLIENT_COMPRESS));
        t.req(&login(BASE_CAPS | CLIENT_COMPRESS));
        assert_eq!(t.conn.verdict(), Verdict::Done);

        // Not a greeting at all.
        let mut t = Conn::new(Start::Fresh);
        t.resp(b"220 smtp.example.com ESMTP\r\n");
        assert_eq!(t.conn.verdict(), Verdict::Done);
        let mut t = Conn::new(Start::Fresh);
        t.req(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(t.conn.verdict(), Verdict::Done);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn refused_login_is_reported() {
        let mut t = Conn::new(Start::Fresh);
        t.resp(&greeting(BASE_CAPS));
        t.req(&login(BASE_CAPS));
        let start = t.ts;
        t.resp(&err(2, 1045));
        t.req(&query("SELECT 1"));
        t.close();
        assert_eq!(t.got(), vec![op(LOGIN_OPERATION, None, Some("1045"))]);
        assert_eq!((t.out[0].start_ns, t.out[0].end_ns), (start, start + 10));
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
    }

    #[test]
    fn auth_switch_and_caching_sha2_fast_auth() {
        let mut t = Conn::new(Start::Fresh);
        t.resp(&greeting(BASE_CAPS | CLIENT_DEPRECATE_EOF));
        t.req(&login(BASE_CAPS | CLIENT_DEPRECATE_EOF));
        t.resp(&pkt(
            2,
            b"\xfecaching_sha2_password\0abcdefghijklmnopqrst\0",
        ));
        t.req(&pkt(3, &[7; 32]));
        t.resp(&pkt(4, &[1, 3]));
        t.resp(&ok(5));
        t.req(&query("SELECT 1"));
        t.resp(&result(1, true));
        // Full authentication: public key request and encrypted password.
        t.req(&command(COM_CHANGE_USER, b"other\0\0"));
        t.resp(&pkt(
            1,
            b"\xfecaching_sha2_password\0abcdefghijklmnopqrst\0",
        ));
        t.req(&pkt(2, &[7; 32]));
        t.resp(&pkt(3, &[1, 4]));
        t.req(&pkt(4, &[2]));
        t.resp(&pkt(5, b"\x01-----BEGIN PUBLIC KEY-----"));
        t.req(&pkt(6, &[9; 256]));
        t.resp(&ok(7));
        assert_eq!(
            t.got(),
            vec![op("SELECT", None, None), op("CHANGE_USER", None, None)]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn mid_stream_skips_to_the_first_command() {
        let mut t = Conn::new(Start::MidStream);
        t.resp(&row(17, b"tail of an earlier result"));
        t.resp(&ok_fe(18, 2));
        t.req(b"\x05\x00\x00\x03data of a LOAD DATA LOCAL");
        assert_eq!(t.conn.verdict(), Verdict::Unknown);
        t.req(&query("SELECT a FROM t"));
        t.resp(&result(2, true));
        assert_eq!(t.got(), vec![op("SELECT", Some("t"), None)]);
        assert_eq!(t.counts(), (0, 0, 0, 0));
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
        assert_eq!(t.conn.caps.deprecate_eof, Some(true));
        // From here on, junk counts.
        t.req(b"\x01\x00\x00\x00\x00");
        assert_eq!(t.counts(), (1, 0, 0, 0));
    }

    #[test]
    fn mid_stream_gives_up_on_tls_and_endless_junk() {
        let mut t = Conn::new(Start::MidStream);
        t.resp(b"\x17\x03\x03\x00\x20encrypted");
        assert_eq!(t.conn.verdict(), Verdict::Done);
        let mut t = Conn::new(Start::MidStream);
        for _ in 0..=MAX_SEEK_PIECES {
            t.req(b"\x00\x01binary protocol");
        }
        assert_eq!(t.conn.verdict(), Verdict::Done);
        // A connection caught at its greeting is parsed from there.
        let mut t = Conn::new(Start::MidStream);
        t.resp(&greeting(BASE_CAPS));
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
        t.req(&login(BASE_CAPS));
        t.resp(&ok(2));
        t.req(&command(COM_PING, b""));
        t.resp(&ok(1));
        assert_eq!(t.got(), vec![op("PING", None, None)]);
    }

    /// Rows of a result set: a gap over their headers is found again by
    /// the chain of sequence ids, and the terminator ends the exchange.
    #[test]
    fn gap_inside_rows_is_recovered() {
        let mut t = Conn::ready(true);
        t.req(&query("SELECT a FROM t"));
        let bytes = result(40, true);
        let (head, rest) = bytes.split_at(100);
        let (_, tail) = rest.split_at(150);
        t.resp(head);
        t.resp_gap(150);
        t.resp(tail);
        assert_eq!(t.got(), vec![op("SELECT", Some("t"), None)]);
        assert_eq!(t.out[0].end_ns, t.ts);
        assert_eq!(t.counts(), (0, 0, 0, 0));
        assert_eq!(t.conn.resp.frame, Frame::Header { have: 0 });
        // An error after lost rows is still seen.
        t.req(&query("SELECT a FROM t"));
        let mut bytes = result(40, true);
        let end = bytes.len() - 11;
        bytes.truncate(end);
        bytes.extend(err(43, 1317));
        let (head, rest) = bytes.split_at(100);
        t.resp(head);
        t.resp_gap(150);
        t.resp(rest.get(150..).unwrap());
        assert_eq!(t.got()[1], op("SELECT", Some("t"), Some("1317")));
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    /// When the end of the rows is not seen, the next command ends the
    /// response at its last piece.
    #[test]
    fn lost_rows_end_with_the_next_command() {
        let mut t = Conn::ready(true);
        t.req(&query("SELECT a FROM t"));
        let bytes = result(40, true);
        t.resp(bytes.get(..100).unwrap());
        t.resp_gap(u64::try_from(bytes.len() - 100).unwrap());
        let last = t.ts;
        assert!(t.out.is_empty());
        t.req(&command(COM_PING, b""));
        assert_eq!(t.got(), vec![op("SELECT", Some("t"), None)]);
        assert_eq!(t.out[0].end_ns, last);
        t.resp(&ok(1));
        assert_eq!(t.got()[1], op("PING", None, None));
        assert_eq!(t.counts(), (0, 0, 0, 0));
        // Or with the idle timeout, or the close.
        t.req(&query("SELECT a FROM t"));
        t.resp(bytes.get(..100).unwrap());
        t.resp_gap(500);
        let last = t.ts;
        let mut out = Vec::new();
        t.conn.expire(last + 5, 10, &mut out);
        assert!(out.is_empty());
        t.conn.expire(last + 10, 10, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].failure, out[0].end_ns), (None, last));
        t.req(&query("SELECT a FROM t"));
        t.resp(bytes.get(..100).unwrap());
        t.resp_gap(500);
        let last = t.ts;
        t.close();
        assert_eq!(
            t.out.last().map(|e| (e.failure, e.end_ns)),
            Some((None, last))
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn lost_response_header_resyncs_at_the_next_command() {
        let mut t = Conn::ready(true);
        t.req(&query("UPDATE t SET a = 1"));
        t.resp_gap(11);
        let lost_at = t.ts;
        t.req(&query("DELETE FROM t"));
        // A stale piece of the old response does not start the new one.
        t.resp(b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00");
        t.resp(&err(1, 1451));
        assert_eq!(
            t.got(),
            vec![
                op("UPDATE", Some("t"), None),
                op("DELETE", Some("t"), Some("1451"))
            ]
        );
        assert_eq!(t.out[0].end_ns, lost_at);
        assert_eq!(t.counts(), (1, 0, 0, 0));
        // Garbage where a response should start: a resync; the command
        // gets no error.
        t.req(&query("SELECT 1"));
        t.resp(b"\x05\x00\x00\x09garbage");
        t.req(&command(COM_PING, b""));
        t.resp(&ok(1));
        assert_eq!(t.got().len(), 4);
        assert_eq!(t.counts(), (2, 0, 0, 0));
    }

    #[test]
    fn request_gaps() {
        let mut t = Conn::ready(true);
        // Inside the statement: summarized from what was seen.
        let text = b"SELECT * FROM a JOIN b ON a.id = b.id";
        let mut v = pkt(0, &[&[COM_QUERY][..], text].concat());
        v.truncate(4 + 1 + 16);
        t.req(&v);
        t.req_gap(u64::try_from(text.len() - 16).unwrap());
        t.resp(&result(0, true));
        let text = b"INSERT INTO big VALUES (1, 'long')";
        let mut v = pkt(0, &[&[COM_QUERY][..], text].concat());
        v.truncate(4 + 1 + 25);
        t.req(&v);
        t.req_gap(u64::try_from(text.len() - 25).unwrap());
        t.resp(&ok(1));
        assert_eq!(
            t.got(),
            vec![op("SELECT", None, None), op("INSERT", Some("big"), None)]
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
        // Over a header: resync at the next command.
        t.req_gap(30);
        t.resp(&ok(1));
        t.req(&command(COM_PING, b""));
        t.resp(&ok(1));
        assert_eq!(t.got().last(), Some(&op("PING", None, None)));
        assert_eq!(t.counts(), (1, 0, 1, 0));
    }

    #[test]
    fn multi_packet_payloads() {
        let mut t = Conn::ready(true);
        let text = b"INSERT INTO big VALUES ('";
        let mut first = vec![0xFF, 0xFF, 0xFF, 0, COM_QUERY];
        first.extend_from_slice(text);
        t.req(&first);
        t.req_gap(u64::from(MAX_PAYLOAD) - 1 - u64::try_from(text.len()).unwrap());
        t.req(&pkt(1, b"xyz')"));
        // The response continues the client's sequence ids.
        t.resp(&ok(2));
        assert_eq!(t.got(), vec![op("INSERT", Some("big"), None)]);
        // A row of more than 16 MiB: two packets, not a terminator.
        t.req(&query("SELECT b FROM big"));
        let mut v = pkt(1, &[1]);
        v.extend(coldef(2));
        v.extend_from_slice(&[0xFF, 0xFF, 0xFF, 3, 0xFE]);
        t.resp(&v);
        t.resp_gap(u64::from(MAX_PAYLOAD) - 1);
        t.resp(&pkt(4, &[b'x'; 30]));
        assert_eq!(t.got().len(), 1);
        t.resp(&ok_fe(5, 2));
        assert_eq!(t.got().len(), 2);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn timeout_once_then_close() {
        let mut t = Conn::ready(true);
        t.req(&query("SELECT SLEEP(100)"));
        let start = t.ts;
        let mut out = Vec::new();
        t.conn.expire(start + 5, 10, &mut out);
        assert!(out.is_empty());
        t.conn.expire(start + 10, 10, &mut out);
        t.conn.expire(start + 20, 10, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].failure, Some(Failure::Timeout));
        // The late answer is not reported again; the next command pairs.
        t.resp(&result(1, true));
        t.req(&command(COM_PING, b""));
        t.resp(&ok(1));
        assert_eq!(t.got(), vec![op("PING", None, None)]);
        // A response in progress does not time out; closing fails it.
        t.req(&query("SELECT a FROM t"));
        t.resp(&pkt(1, &[1]));
        t.conn.expire(t.ts + 100, 10, &mut out);
        assert_eq!(out.len(), 1);
        t.close();
        assert_eq!(
            t.out.last().unwrap().failure,
            Some(Failure::ConnectionClosed)
        );
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn waiting_queue_is_bounded() {
        let mut t = Conn::ready(true);
        for _ in 0..MAX_WAITING + 3 {
            t.req(&command(COM_PING, b""));
        }
        assert_eq!(t.conn.waiting.len(), MAX_WAITING);
        assert_eq!(t.c.unmatched_requests, 3);
        t.close();
        assert_eq!(t.out.len(), MAX_WAITING);
        assert!(t
            .out
            .iter()
            .all(|e| e.failure == Some(Failure::ConnectionClosed)));
    }

    #[test]
    fn prepared_statements_are_bounded_and_reset() {
        let mut t = Conn::ready(true);
        for id in 0..=u32::try_from(MAX_PREPARED).unwrap() {
            t.req(&command(COM_STMT_PREPARE, b"DELETE FROM t WHERE a = 1"));
            t.resp(&prepare_ok(1, id, 0, 0));
        }
        assert_eq!(t.conn.prepared.len(), MAX_PREPARED);
        t.req(&stmt(COM_STMT_EXECUTE, 0));
        t.resp(&ok(1));
        t.req(&stmt(COM_STMT_EXECUTE, 1));
        t.resp(&ok(1));
        t.req(&command(COM_RESET_CONNECTION, b""));
        t.resp(&ok(1));
        t.req(&stmt(COM_STMT_EXECUTE, 2));
        t.resp(&ok(1));
        let got = t.got();
        let tail: Vec<_> = got.iter().skip(MAX_PREPARED + 1).collect();
        assert_eq!(
            tail,
            [
                &op("EXECUTE", None, None),
                &op("DELETE", Some("t"), None),
                &op("RESET_CONNECTION", None, None),
                &op("EXECUTE", None, None),
            ]
        );
        assert_eq!(t.counts(), (0, 0, 0, 2));
    }

    #[test]
    fn query_attributes_are_skipped() {
        let caps = BASE_CAPS | CLIENT_DEPRECATE_EOF | CLIENT_QUERY_ATTRIBUTES;
        let mut t = Conn::new(Start::Fresh);
        t.resp(&greeting(caps));
        t.req(&login(caps));
        t.resp(&ok(2));
        t.req(&command(COM_QUERY, b"\x00\x01SELECT a FROM t"));
        t.resp(&ok(1));
        let mut args = vec![2, 1, 0b10, 1];
        args.extend_from_slice(b"\xfe\x00\x02id\x08\x00\x01n");
        args.extend_from_slice(b"\x05trace");
        args.extend_from_slice(b"UPDATE u SET a = 1");
        t.req(&command(COM_QUERY, &args));
        t.resp(&ok(1));
        assert_eq!(
            t.got(),
            vec![op("SELECT", Some("t"), None), op("UPDATE", Some("u"), None)]
        );
        // Unknown capabilities: a control byte cannot start SQL.
        assert_eq!(
            query_text(b"\x00\x01SELECT 1", None),
            Some(&b"SELECT 1"[..])
        );
        assert_eq!(query_text(b"SELECT 1", None), Some(&b"SELECT 1"[..]));
        assert_eq!(query_text(b"\x01\x01\x00\x01\xfe\x00", None), None);
    }

    #[test]
    fn column_count_shapes() {
        assert_eq!(column_count(&[3], 1), Some((3, true)));
        assert_eq!(column_count(&[0xFC, 0x00, 0x01], 3), Some((256, true)));
        // MariaDB cached metadata: count, then flag.
        assert_eq!(column_count(&[3, 0], 2), Some((3, false)));
        assert_eq!(column_count(&[1, 0], 2), Some((1, false)));
        // MySQL optional metadata: flag, then count.
        assert_eq!(column_count(&[0, 5], 2), Some((5, false)));
        assert_eq!(column_count(&[1, 1], 2), Some((1, true)));
        assert_eq!(column_count(&[0], 1), None);
        assert_eq!(column_count(&[0xFB], 1), None);
        assert_eq!(column_count(&[3, 7], 2), None);
        // Metadata skipped: straight to rows (DEPRECATE_EOF).
        let mut t = Conn::ready(true);
        t.req(&stmt(COM_STMT_EXECUTE, 5));
        let mut v = pkt(1, &[1, 0]);
        v.extend(pkt(2, &[0, 0, 1, b'x']));
        v.extend(ok_fe(3, 2));
        t.resp(&v);
        assert_eq!(t.got(), vec![op("EXECUTE", None, None)]);
    }

    #[test]
    fn progress_reports_and_idle_errors_are_not_answers() {
        let mut t = Conn::ready(true);
        t.req(&query("ALTER TABLE t ADD COLUMN c INT"));
        t.resp(&pkt(1, b"\xff\xff\xff\x01\x01\x02\x10\x00\x00\x05stage"));
        t.resp(&ok(2));
        assert_eq!(t.got(), vec![op("ALTER", None, None)]);
        // wait_timeout: the server says why it closes.
        t.resp(&err(0, 4031));
        assert_eq!(t.counts(), (0, 0, 0, 0));
        // An answer to nothing is counted once.
        t.resp(&ok(1));
        t.resp(&ok(2));
        assert_eq!(t.counts(), (0, 0, 1, 0));
    }

    #[test]
    fn late_command_after_its_answer_is_unmatched() {
        let mut t = Conn::ready(true);
        let late = query("SELECT 1");
        let sent = t.ts + 1;
        t.resp(&result(1, true));
        assert_eq!(t.counts(), (0, 0, 1, 0));
        // Reassembly released the command only now, with its own time.
        t.conn
            .on_piece(true, Piece::Data(&late), sent, &mut t.c, &mut t.out);
        assert!(t.conn.waiting.is_empty());
        t.req(&command(COM_PING, b""));
        t.resp(&ok(1));
        assert_eq!(t.got(), vec![op("PING", None, None)]);
        assert_eq!(t.counts(), (0, 1, 1, 0));
    }

    #[test]
    fn cursors_fetch_and_field_lists() {
        let mut t = Conn::ready(false);
        t.req(&stmt(COM_STMT_EXECUTE, 4));
        let mut v = pkt(1, &[1]);
        v.extend(coldef(2));
        v.extend(eof(3, 2 | SERVER_STATUS_CURSOR_EXISTS));
        t.resp(&v);
        t.req(&command(COM_STMT_FETCH, &[4, 0, 0, 0, 10, 0, 0, 0]));
        let mut v = pkt(1, &[0, 0, 1, b'x']);
        v.extend(eof(2, 2 | 0x80));
        t.resp(&v);
        t.req(&command(COM_FIELD_LIST, b"t\0"));
        let mut v = coldef(1);
        v.extend(eof(2, 2));
        t.resp(&v);
        t.req(&command(COM_STATISTICS, b""));
        t.resp(&pkt(1, b"Uptime: 5  Threads: 1"));
        t.req(&command(COM_SET_OPTION, &[1, 0]));
        t.resp(&eof(1, 2));
        t.req(&command(COM_INIT_DB, b"test"));
        t.resp(&ok(1));
        assert_eq!(
            t.got(),
            vec![
                op("EXECUTE", None, None),
                op("FETCH", None, None),
                op("FIELD_LIST", None, None),
                op("STATISTICS", None, None),
                op("SET_OPTION", None, None),
                op("USE", None, None),
            ]
        );
        assert_eq!(t.counts(), (0, 0, 0, 1));
        t.req(&command(COM_QUIT, b""));
        t.close();
        assert_eq!(t.out.len(), 6);
    }

    #[test]
    fn replication_streams_are_not_followed() {
        let mut t = Conn::ready(true);
        t.req(&command(COM_BINLOG_DUMP, &[4, 0, 0, 0, 0, 0, 1, 0, 0, 0]));
        assert_eq!(t.conn.verdict(), Verdict::Done);
    }

    #[test]
    fn greeting_capabilities_are_read() {
        let g = greeting(BASE_CAPS | CLIENT_DEPRECATE_EOF);
        assert!(looks_like_greeting(&g));
        assert_eq!(detect_greeting(&g), Detection::Yes);
        for n in 1..=20 {
            assert_eq!(detect_greeting(&g[..n]), Detection::NeedMore, "{n}");
        }
        assert_eq!(detect_greeting(&g[..22]), Detection::Yes);
        assert_eq!(MysqlConn::detect(true, &g), Detection::No);
        assert_eq!(
            detect_greeting(b"\x4a\x00\x00\x00\x0a8.0.36\x00"),
            Detection::Yes
        );
        assert_eq!(detect_greeting(b"\x4a\x00\x00\x01"), Detection::No);
        assert_eq!(
            detect_greeting(b"\x17\x00\x00\x00\xff\x69\x04"),
            Detection::No
        );
        assert_eq!(detect_greeting(b"SSH-2.0-OpenSSH_9.6\r\n"), Detection::No);
        assert_eq!(detect_greeting(b"220 mail ESMTP\r\n"), Detection::No);
        assert_eq!(
            detect_greeting(b"\x4a\x00\x00\x00\x0a8.0 x\x00"),
            Detection::No
        );
        assert_eq!(
            greeting_capabilities(g.get(4..).unwrap()),
            Some(BASE_CAPS | CLIENT_DEPRECATE_EOF)
        );
        assert!(!looks_like_greeting(b"\x10\x00\x00\x01\x0a5.7"));
        // A client claiming a flag the server lacks does not get it.
        let mut t = Conn::new(Start::Fresh);
        t.resp(&greeting(BASE_CAPS));
        t.req(&login(BASE_CAPS | CLIENT_DEPRECATE_EOF));
        assert_eq!(t.conn.caps.deprecate_eof, Some(false));
    }

    #[test]
    fn per_connection_state_is_small() {
        // 304 bytes on x86_64 today; thousands of connections each hold one.
        let size = std::mem::size_of::<MysqlConn>();
        assert!(size <= 320, "MysqlConn is {size} bytes");
        for start in [Start::Fresh, Start::MidStream] {
            let t = MysqlConn::new(Side::Client, start);
            assert_eq!(
                t.req.prefix.capacity()
                    + t.resp.prefix.capacity()
                    + t.waiting.capacity()
                    + t.prepared.capacity(),
                0
            );
        }
    }

    #[test]
    fn server_side_swaps_directions() {
        let mut t = Conn::new(Start::Fresh);
        t.conn = MysqlConn::new(Side::Server, Start::Fresh);
        // A server reads requests (inbound) and writes responses.
        t.feed(true, Piece::Data(&greeting(BASE_CAPS)));
        t.feed(false, Piece::Data(&login(BASE_CAPS)));
        t.feed(true, Piece::Data(&ok(2)));
        t.feed(false, Piece::Data(&query("DELETE FROM t")));
        t.feed(true, Piece::Data(&ok(1)));
        assert_eq!(t.got(), vec![op("DELETE", Some("t"), None)]);
    }

    #[test]
    fn gap_in_large_prepare_metadata_is_not_a_resync() {
        let mut t = Conn::ready(true);
        t.req(&command(
            COM_STMT_PREPARE,
            b"SELECT * FROM wide WHERE a = ?",
        ));
        let mut v = prepare_ok(1, 5, 100, 1);
        v.extend(coldef(2));
        t.resp(&v);
        t.resp_gap(5000);
        let last = t.ts;
        t.req(&stmt(COM_STMT_EXECUTE, 5));
        t.resp(&ok(1));
        assert_eq!(
            t.got(),
            vec![
                op("PREPARE", Some("wide"), None),
                op("SELECT", Some("wide"), None)
            ]
        );
        assert_eq!(t.out[0].end_ns, last);
        assert_eq!(t.counts(), (0, 0, 0, 0));
    }

    /// Random mixes of valid packets, mutations, junk and gaps in random
    /// pieces: no panic, bounded buffers, sane exchanges.
    #[test]
    fn fuzz_never_panics_and_stays_bounded() {
        let mut prep = prepare_ok(1, 2, 1, 1);
        prep.extend(coldef(2));
        prep.extend(eof(3, 2));
        prep.extend(coldef(4));
        let parts: Vec<(bool, Vec<u8>)> = vec![
            (false, greeting(BASE_CAPS | CLIENT_DEPRECATE_EOF)),
            (true, login(BASE_CAPS | CLIENT_DEPRECATE_EOF)),
            (false, ok(2)),
            (true, query("SELECT a FROM t")),
            (false, result(3, true)),
            (false, result(2, false)),
            (
                true,
                command(COM_STMT_PREPARE, b"SELECT a FROM t WHERE b = ?"),
            ),
            (false, prep),
            (true, stmt(COM_STMT_EXECUTE, 2)),
            (true, stmt(COM_STMT_CLOSE, 2)),
            (false, err(1, 1146)),
            (false, pkt(1, b"\xfbfile")),
            (true, pkt(2, b"data")),
            (false, ok_fe(9, SERVER_MORE_RESULTS_EXISTS)),
            (true, command(COM_PING, b"")),
            (false, pkt(1, &[0xFC, 0x10])),
            (true, b"\xff\xff\xff\x00\x03SELECT".to_vec()),
            (false, b"\x17\x03\x03\x00\x10".to_vec()),
            (true, b"junk".to_vec()),
        ];
        for seed in 1..400u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
            let start = if rng.below(2) == 0 {
                Start::Fresh
            } else {
                Start::MidStream
            };
            let side = if rng.below(4) == 0 {
                Side::Server
            } else {
                Side::Client
            };
            let mut conn = MysqlConn::new(side, start);
            let mut c = ParserCounters::default();
            let mut out = Vec::new();
            let mut ts = 0;
            for _ in 0..rng.below_usize(60) {
                ts += 1 + rng.below(3);
                if rng.below(10) == 0 {
                    let n = rng.next() % [3, 100, 100_000, u64::MAX][rng.below_usize(4)];
                    conn.on_piece(rng.below(2) == 0, Piece::Gap(n), ts, &mut c, &mut out);
                    continue;
                }
                if rng.below(20) == 0 {
                    conn.expire(ts, rng.below(20), &mut out);
                }
                let (mut outbound, mut bytes) = parts[rng.below_usize(parts.len())].clone();
                if side == Side::Server {
                    outbound = !outbound;
                }
                if rng.below(6) == 0 {
                    bytes = (0..rng.below_usize(40)).map(|_| rng.next() as u8).collect();
                }
                rng.corrupt(&mut bytes);
                crate::testutil::feed_in_random_pieces(
                    &mut conn, &mut rng, outbound, &bytes, ts, &mut c, &mut out,
                );
                assert!(conn.req.prefix.len() <= 1 + MAX_STATEMENT);
                assert!(conn.resp.prefix.len() <= usize::from(MAX_RESPONSE_PREFIX));
                assert!(conn.waiting.len() <= MAX_WAITING);
                assert!(conn.prepared.len() <= MAX_PREPARED);
            }
            conn.on_close(ts + 1, &mut c, &mut out);
            for e in &out {
                assert!(e.start_ns <= e.end_ns, "seed {seed}: {e:?}");
                let Call::Db(db) = &e.call else {
                    panic!("seed {seed}: {e:?}")
                };
                assert!(
                    db.operation
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'_'),
                    "seed {seed}: {e:?}"
                );
            }
        }
    }

    /// Random bytes alone, split anywhere, for every start.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let start = if rng.below(2) == 0 {
                Start::Fresh
            } else {
                Start::MidStream
            };
            let mut conn = MysqlConn::new(Side::Client, start);
            let mut c = ParserCounters::default();
            let mut out = Vec::new();
            for ts in 0..rng.below(20) {
                let bytes: Vec<u8> = (0..rng.below_usize(300))
                    .map(|_| rng.next() as u8)
                    .collect();
                conn.on_piece(rng.below(2) == 0, Piece::Data(&bytes), ts, &mut c, &mut out);
            }
            conn.on_close(99, &mut c, &mut out);
        }
    }
}
