//! Redis (RESP2 and RESP3) for one connection, measured from the client.
//!
//! Input: the connection's two byte streams as ordered `Piece`s, each
//! tagged with its direction and the timestamp of the syscall that carried
//! it. Output: one `Exchange` per command, its `DbCall` naming the command
//! (`GET`, `HSET`, ...) and, when the server answered with an error, the
//! error's prefix (`WRONGTYPE`); plus loss counts in `ParserCounters`.
//!
//! Each direction is a byte-level state machine over RESP framing that
//! never buffers: lengths and integers are parsed as they pass, strings are
//! skipped by counting (so a bulk of gigabytes costs nothing), aggregates
//! are walked with a small fixed stack of element counts. Only the command
//! name (the first element of a request), an error reply's first word and
//! the kind of a pub/sub message are copied, each into a 33-byte array;
//! keys and values never leave the state machine.
//!
//! Transactions need no special case: MULTI (answered `+OK`), each queued
//! command (answered `+QUEUED`) and EXEC (answered with the array of
//! results) are one exchange each, so the counts match the `calls` of
//! `INFO commandstats`, which counts queued commands when EXEC runs them.
//! The exception: a DISCARDed transaction, or one aborted by a queued
//! command's error (EXECABORT), never runs its commands, so they appear
//! here but not in commandstats (where a command refused while queueing
//! counts as a `rejected_call`).
//!
//! Requests are queued as soon as their command name is read and paired
//! with replies in order. What is not a reply is set aside: RESP3 pushes,
//! pub/sub messages of a subscribed RESP2 connection, the extra
//! confirmations of a (un)subscribe naming several channels, MONITOR's
//! feed. A replica's PSYNC ends the parsing (`Verdict::Done`): what
//! follows is a snapshot and a command stream, not replies. Gaps are
//! harmless inside a string; inside framing they are a loss: the request
//! direction resyncs at the next plausible request, the reply direction
//! gives up the requests it was waiting on (see `lose_replies`) and
//! resumes only for requests sent after the gap.

use std::collections::VecDeque;

use super::{
    detect::Detection, len64, Call, ConnParser, DbCall, DbSystem, Exchange, Failure,
    ParserCounters, Piece, Side, Spec, Start, Verdict,
};

/// Commands waiting for replies, per connection. Multiplexing clients
/// (Lettuce, ioredis) keep hundreds in flight on one connection; a bulk
/// load (`redis-cli --pipe`) sends far more and is measured only in part.
/// At about 56 bytes a command this bounds a connection's queue to 56 KiB.
const MAX_WAITING: usize = 1024;

/// A queue grown past this many entries by a burst is freed once it
/// drains, so that an idle connection does not keep a burst's memory.
const KEEP_CAPACITY: usize = 256;

/// Nesting of reply aggregates followed. Redis 7.0's deepest reply,
/// COMMAND DOCS in RESP3, nests 12 levels (and could come inside EXEC);
/// this leaves room for newer servers and modules. Deeper input is taken
/// for garbage.
const MAX_DEPTH: usize = 32;

/// Longest simple string, error, double or big-number line. Status
/// replies are short (`+OK`) and error messages a sentence; MONITOR lines
/// quote whole commands but are not parsed for anything.
const MAX_LINE: u64 = 64 * 1024;

/// Longest inline command line: Redis's own limit (PROTO_INLINE_MAX_SIZE).
const MAX_INLINE: u64 = 64 * 1024;

/// Longest command name or error prefix reported (the brief's limit).
const MAX_WORD: usize = 32;

/// Bytes kept of a captured string: a word of `MAX_WORD` bytes and the
/// byte after it, which tells whether the word ended there.
const WORD_ROOM: usize = MAX_WORD + 1;

/// Largest string length believed: far beyond the 512 MiB default of
/// proto-max-bulk-len, so a server configured for multi-gigabyte values is
/// still followed (by counting); a longer claim is garbage.
const MAX_BULK_LEN: u64 = 1 << 36;

/// Most elements an aggregate may claim: two per entry of a map or
/// attribute must fit the u32 counters. Walking costs nothing per element,
/// so this only rejects lengths no server sends (two billion).
const MAX_AGGREGATE_LEN: u64 = (u32::MAX / 2) as u64;

/// Most elements a request may claim: Redis refuses more than INT_MAX.
const MAX_ARGS: u64 = i32::MAX as u64;

/// Pieces looked at on a connection found mid-stream before a request is
/// recognised; past it the connection is given up (another protocol, or a
/// subscriber that never sends a command).
const MAX_SEEK_PIECES: u32 = 1024;

/// Can these first bytes of a connection's client direction be a RESP
/// request? `Some(true)`: an array header followed by a bulk-string header
/// (`*<n>\r\n$`), as every client library sends; `Some(false)`: no;
/// `None`: a prefix of one, more bytes needed. Inline commands (`PING\r\n`)
/// are not recognised: text lines are too like other protocols.
fn looks_like_request(bytes: &[u8]) -> Option<bool> {
    let Some(rest) = bytes.strip_prefix(b"*") else {
        return if bytes.is_empty() { None } else { Some(false) };
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 10 {
        return Some(false);
    }
    let after = rest.get(digits..).unwrap_or_default();
    let expected: &[u8] = b"\r\n$";
    let n = after.len().min(expected.len());
    if after.get(..n) != expected.get(..n) || (n > 0 && digits == 0) {
        return Some(false);
    }
    if n < expected.len() {
        return None;
    }
    Some(true)
}

/// One Redis connection as seen by the traced process.
#[derive(Debug)]
pub struct RedisConn {
    side: Side,
    start: Start,
    verdict: Verdict,
    req: Requests,
    resp: Replies,
    /// Commands whose name was read, oldest first.
    waiting: VecDeque<Waiting>,
    /// Replies still to come for commands dropped from the front of a full
    /// queue (already counted unmatched): they come first, and are
    /// consumed without pairing so that no later command takes them.
    skip_replies: u64,
    /// Unmatched replies seen since the last pairing: as many waiting
    /// commands are believed never to be answered (see `pair`).
    stale: u32,
    /// Replies that began before this answer no command we saw (mid-stream,
    /// before the first one); they are dropped uncounted.
    count_from_ns: u64,
    /// The server speaks RESP3 (after `HELLO 3`, or a RESP3-only reply).
    resp3: bool,
    /// MONITOR was accepted: status lines nobody waits for are its feed.
    monitor: bool,
    /// Channels and patterns subscribed, from the last confirmation.
    channels: u64,
    /// Shard channels subscribed (counted apart by Redis 7).
    shard_channels: u64,
    /// Confirmations still owed by the last (un)subscribe that named
    /// several channels; its first confirmation completed it.
    owed: (PubSub, u32),
    /// Pieces seen while seeking the first request mid-stream.
    seek_pieces: u32,
}

/// The request direction: arrays of bulk strings, or inline lines.
#[derive(Debug)]
struct Requests {
    phase: ReqPhase,
    /// Timestamp of the piece holding the current request's first byte.
    start_ns: u64,
    /// Elements in the current request.
    elements: u64,
    /// Elements of the current request not yet complete, the one being
    /// read included.
    left: u64,
    /// The first element: the command name.
    name: Word,
    /// The current request is in the queue (its name was read) but not
    /// complete: it is the queue's last entry.
    queued: bool,
    /// The current request began at a guessed boundary: if it stops
    /// making sense, seek on without counting anything.
    tentative: bool,
    /// Timestamp of the last piece in which the seek skipped bytes.
    skipped_ns: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqPhase {
    /// Between requests.
    Idle,
    /// After `*`: the element count.
    Count(Num),
    /// Expecting the `$` of the next element.
    Dollar,
    /// After `$`: the element's length.
    Length(Num),
    /// The element's bytes and CRLF still to pass.
    Payload(u64),
    /// An inline command (a line of words, as typed into telnet).
    Inline(InlineScan),
    /// Looking for a request start; `line_start`: the next byte begins a
    /// line (or a piece, or follows a gap).
    Seek {
        line_start: bool,
    },
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InlineScan {
    words: u32,
    in_word: bool,
    len: u64,
}

/// The reply direction.
#[derive(Debug)]
struct Replies {
    phase: RespPhase,
    /// Open aggregates: elements left in each (a streamed one is ended by
    /// its terminator instead).
    counts: [u32; MAX_DEPTH],
    frames: [Frame; MAX_DEPTH],
    depth: usize,
    /// A reply is being read (its first byte, maybe an attribute's, seen).
    in_reply: bool,
    /// Timestamp of the piece holding the current reply's first byte.
    start_ns: u64,
    /// Type byte of the current reply's value.
    top_type: u8,
    /// Elements of the current reply's top aggregate completed.
    top_index: u64,
    /// What the bytes being read feed.
    capture: Capture,
    /// An error reply's text, or the kind of a pub/sub array.
    word: Word,
    /// The third element of a pub/sub array, if a non-negative integer:
    /// the subscription count.
    third: Option<u64>,
    current: Current,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespPhase {
    /// Expecting a type byte.
    Type,
    /// A length or integer line after the type byte `ty`.
    Number {
        ty: u8,
        num: Num,
    },
    /// A line of text (`+ - , ( # _ .`); `cr`: its last byte was CR.
    Line {
        ty: u8,
        len: u64,
        cr: bool,
    },
    /// A string's bytes and CRLF still to pass; `chunk`: a part of a
    /// streamed string.
    Blob {
        left: u64,
        chunk: bool,
    },
    /// Lost track: waiting for a piece that starts a reply to a command
    /// sent since.
    Seek,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Aggregate,
    /// Attributes describe the value that follows; they are not an element.
    Attribute,
    /// A push inside another reply (Redis 6 could write an invalidation in
    /// the middle of one): out of band, not an element either.
    Push,
    /// `*?` and the like, ended by `.`.
    Streamed,
    /// `$?`, made of `;` parts, ended by `;0`.
    StreamedString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    Nothing,
    Word,
    Third,
}

/// What the current reply is.
#[derive(Debug)]
enum Current {
    /// Not known yet: nothing read, or only an attribute.
    Undecided,
    /// Its first element decides: a RESP2 array of 2 to 4 elements (maybe
    /// a pub/sub message or confirmation) or a RESP3 push.
    Pending { push: bool, elements: u64 },
    /// An answer, and the command it answers (None: unmatched, or a
    /// command dropped from a full queue).
    Answer(Option<Waiting>),
    /// A subscription confirmation; it completes a command only if it is
    /// that command's first.
    Confirmation {
        cmd: PubSub,
        request: Option<Waiting>,
    },
    /// Not an answer: a push, a pub/sub message, a MONITOR line.
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    op: Op,
    kind: Kind,
    start_ns: u64,
    /// Already reported as timed out: its late answer is not reported again.
    timed_out: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    /// Its reply tells whether the server now speaks RESP3.
    Hello,
    /// Accepted, it turns the reply direction into a feed.
    Monitor,
    /// Accepted, it ends subscriptions, MONITOR and RESP3.
    Reset,
    /// (Un)subscribes from `u32` channels: one confirmation each.
    PubSub(PubSub, u32),
    /// Where the request direction lost its place: an unknown number of
    /// commands went by unseen here, and their replies come before those
    /// of the commands queued after it (see `pair`).
    Barrier,
    /// The command whose tail began a connection found mid-stream, written
    /// in one syscall with the first command recognised: its reply comes
    /// first and is consumed unreported (see `note_skipped`).
    Unseen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PubSub {
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
}

/// A command name in upper case, or `_OTHER` (length 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Op {
    name: [u8; MAX_WORD],
    len: u8,
}

/// The first bytes of a string as it streams past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    bytes: [u8; WORD_ROOM],
    len: u8,
    /// Bytes offered, kept or not; `u64::MAX` once some were lost.
    total: u64,
}

/// A decimal length or integer being read (`-1`, `42`, `?`), up to its CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Num {
    value: u64,
    digits: u8,
    neg: bool,
    streamed: bool,
    cr: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumStep {
    More,
    Value { neg: bool, value: u64 },
    Streamed,
    Invalid,
}

/// Why a direction lost its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Malformed,
    Lost,
}

impl RedisConn {
    /// A connection where the traced process is `side`; allocates nothing.
    pub fn new(side: Side, start: Start) -> Self {
        let (req_phase, resp_phase, count_from_ns) = match start {
            Start::Fresh => (ReqPhase::Idle, RespPhase::Type, 0),
            Start::MidStream => (
                ReqPhase::Seek { line_start: true },
                RespPhase::Seek,
                u64::MAX,
            ),
        };
        Self {
            side,
            start,
            verdict: Verdict::Unknown,
            req: Requests {
                phase: req_phase,
                start_ns: 0,
                elements: 0,
                left: 0,
                name: Word::EMPTY,
                queued: false,
                tentative: false,
                skipped_ns: None,
            },
            resp: Replies {
                phase: resp_phase,
                counts: [0; MAX_DEPTH],
                frames: [Frame::Aggregate; MAX_DEPTH],
                depth: 0,
                in_reply: false,
                start_ns: 0,
                top_type: 0,
                top_index: 0,
                capture: Capture::Nothing,
                word: Word::EMPTY,
                third: None,
                current: Current::Undecided,
            },
            waiting: VecDeque::new(),
            skip_replies: 0,
            stale: 0,
            count_from_ns,
            resp3: false,
            monitor: false,
            channels: 0,
            shard_channels: 0,
            owed: (PubSub::Subscribe, 0),
            seek_pieces: 0,
        }
    }

    fn stopped(&self) -> bool {
        self.verdict == Verdict::Done || self.req.phase == ReqPhase::Stopped
    }

    // ---- request direction ----

    fn request_data(&mut self, bytes: &[u8], ts: u64, c: &mut ParserCounters) {
        if let ReqPhase::Seek { .. } = self.req.phase {
            // A client usually starts a command with a write.
            self.req.phase = ReqPhase::Seek { line_start: true };
        }
        let mut rest = bytes;
        while !rest.is_empty() && !self.stopped() {
            let before = self.req.phase;
            let used = self.request_step(rest, ts, c);
            let stuck = used == 0 && self.req.phase == before;
            debug_assert!(
                !stuck,
                "redis request parser made no progress in {before:?}"
            );
            // Never spin on input the state machine cannot place.
            let used = if stuck { rest.len() } else { used };
            rest = rest.get(used..).unwrap_or_default();
        }
    }

    /// Advances the request direction over the front of `rest`; returns
    /// the bytes used (none only when the phase changed).
    fn request_step(&mut self, rest: &[u8], ts: u64, c: &mut ParserCounters) -> usize {
        let Some(&first) = rest.first() else {
            return 0;
        };
        match self.req.phase {
            ReqPhase::Stopped => rest.len(),
            ReqPhase::Idle => {
                // Redis skips empty inline lines between commands.
                let blank = rest
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
                if blank > 0 {
                    return blank;
                }
                self.begin_request(ts, false);
                if first == b'*' {
                    self.req.phase = ReqPhase::Count(Num::default());
                    return 1;
                }
                if self.start == Start::Fresh && first.is_ascii_alphabetic() {
                    self.req.phase = ReqPhase::Inline(InlineScan {
                        words: 0,
                        in_word: false,
                        len: 0,
                    });
                    return 0;
                }
                self.fail_request(Cause::Malformed, false, ts, c);
                0
            }
            ReqPhase::Count(mut num) => {
                let (used, step) = num.feed(rest);
                self.req.phase = ReqPhase::Count(num);
                match step {
                    NumStep::More => {}
                    NumStep::Value { neg, value } if neg || value == 0 => {
                        if self.req.tentative {
                            self.fail_request(Cause::Malformed, true, ts, c);
                        } else {
                            // Redis ignores an empty or null array.
                            self.req.phase = ReqPhase::Idle;
                        }
                    }
                    NumStep::Value { value, .. } if value <= MAX_ARGS => {
                        self.req.elements = value;
                        self.req.left = value;
                        self.req.phase = ReqPhase::Dollar;
                    }
                    NumStep::Value { .. } => self.fail_request(Cause::Malformed, true, ts, c),
                    NumStep::Streamed | NumStep::Invalid => {
                        self.fail_request(Cause::Malformed, false, ts, c)
                    }
                }
                used
            }
            ReqPhase::Dollar => {
                if first == b'$' {
                    self.req.phase = ReqPhase::Length(Num::default());
                    1
                } else {
                    // A line began here: it may begin a request.
                    self.fail_request(Cause::Malformed, true, ts, c);
                    0
                }
            }
            ReqPhase::Length(mut num) => {
                let (used, step) = num.feed(rest);
                self.req.phase = ReqPhase::Length(num);
                // A guessed start must name a command.
                let limit = if self.req.tentative && self.req.index() == 0 {
                    MAX_WORD as u64
                } else {
                    MAX_BULK_LEN
                };
                match step {
                    NumStep::More => {}
                    NumStep::Value { neg: false, value }
                        if value <= limit && !(self.req.tentative && value == 0) =>
                    {
                        self.req.phase = ReqPhase::Payload(value + 2);
                    }
                    NumStep::Value { .. } => self.fail_request(Cause::Malformed, true, ts, c),
                    NumStep::Streamed | NumStep::Invalid => {
                        self.fail_request(Cause::Malformed, false, ts, c)
                    }
                }
                used
            }
            ReqPhase::Payload(left) => {
                let payload = left.saturating_sub(2);
                let n = rest
                    .len()
                    .min(usize::try_from(payload).unwrap_or(usize::MAX));
                if n > 0 {
                    if self.req.index() == 0 {
                        self.req.name.push(rest.get(..n).unwrap_or_default());
                    }
                    self.req.phase = ReqPhase::Payload(left - len64(n));
                    return n;
                }
                let expected = if left == 2 { b'\r' } else { b'\n' };
                if first != expected {
                    self.fail_request(Cause::Malformed, false, ts, c);
                    return 0;
                }
                if left <= 1 {
                    self.request_element_done(ts, c);
                } else {
                    self.req.phase = ReqPhase::Payload(left - 1);
                }
                1
            }
            ReqPhase::Inline(scan) => self.inline(scan, rest, ts, c),
            ReqPhase::Seek { line_start } => self.seek_request(line_start, rest, ts),
        }
    }

    fn begin_request(&mut self, ts: u64, tentative: bool) {
        let r = &mut self.req;
        r.start_ns = ts;
        r.name = Word::EMPTY;
        r.queued = false;
        r.tentative = tentative;
        r.elements = 0;
        r.left = 0;
    }

    /// The element being read is complete.
    fn request_element_done(&mut self, ts: u64, c: &mut ParserCounters) {
        if self.req.index() == 0 {
            let op = Op::from_name(self.req.name.whole());
            if self.req.tentative && op.is_other() {
                self.fail_request(Cause::Malformed, true, ts, c);
                return;
            }
            if self.req.name.lost() {
                // Part of the name was a gap: a command all the same.
                c.partial += 1;
            }
            if matches!(op.as_bytes(), b"PSYNC" | b"SYNC") {
                // A replica: an RDB file (a string without its CRLF) and
                // then the primary's command stream follow, not replies.
                self.give_up();
                return;
            }
            self.req.tentative = false;
            let args = self.req.elements.saturating_sub(1);
            self.enqueue(op, self.req.start_ns, args, c);
            self.req.queued = true;
        }
        self.req.left = self.req.left.saturating_sub(1);
        if self.req.left == 0 {
            self.request_done();
        } else {
            self.req.phase = ReqPhase::Dollar;
        }
    }

    fn request_done(&mut self) {
        self.req.phase = ReqPhase::Idle;
        self.req.queued = false;
        self.verdict = Verdict::Speaks;
    }

    /// An inline command: words up to a line end. Only its first word is
    /// kept, and the word count for (un)subscribe.
    fn inline(
        &mut self,
        mut scan: InlineScan,
        rest: &[u8],
        ts: u64,
        c: &mut ParserCounters,
    ) -> usize {
        let end = rest.iter().position(|&b| b == b'\n');
        let line = rest.get(..end.unwrap_or(rest.len())).unwrap_or_default();
        scan.len = scan.len.saturating_add(len64(line.len()));
        if scan.len > MAX_INLINE || line.iter().any(|&b| is_control(b)) {
            self.fail_request(Cause::Malformed, false, ts, c);
            return 0;
        }
        for &b in line {
            if matches!(b, b' ' | b'\t' | b'\r') {
                scan.in_word = false;
                continue;
            }
            if !scan.in_word {
                scan.in_word = true;
                scan.words = scan.words.saturating_add(1);
            }
            if scan.words == 1 {
                self.req.name.push(&[b]);
            }
        }
        let Some(end) = end else {
            self.req.phase = ReqPhase::Inline(scan);
            return rest.len();
        };
        if scan.words > 0 {
            let op = Op::from_name(self.req.name.whole());
            let args = u64::from(scan.words - 1);
            self.enqueue(op, self.req.start_ns, args, c);
            self.request_done();
        } else {
            self.req.phase = ReqPhase::Idle;
        }
        end + 1
    }

    /// Skips to a `*` that begins a line; the request parsed from there is
    /// tentative until its command name is read.
    fn seek_request(&mut self, mut line_start: bool, rest: &[u8], ts: u64) -> usize {
        let mut at = 0;
        loop {
            if at > 0 {
                self.req.skipped_ns = Some(ts);
            }
            if line_start && rest.get(at) == Some(&b'*') {
                self.begin_request(ts, true);
                self.req.phase = ReqPhase::Count(Num::default());
                return at + 1;
            }
            let tail = rest.get(at..).unwrap_or_default();
            match tail.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    at += p + 1;
                    line_start = true;
                    if at >= rest.len() {
                        self.req.phase = ReqPhase::Seek { line_start: true };
                        return rest.len();
                    }
                }
                None => {
                    self.req.phase = ReqPhase::Seek { line_start: false };
                    return rest.len();
                }
            }
        }
    }

    fn request_gap(&mut self, len: u64, ts: u64, c: &mut ParserCounters) {
        let mut len = len;
        while len > 0 && !self.stopped() {
            match self.req.phase {
                ReqPhase::Payload(left) => {
                    // Only the CRLF may be in the gap: the name is whole.
                    if self.req.index() == 0 && left > 2 {
                        self.req.name.lose();
                    }
                    if len < left {
                        self.req.phase = ReqPhase::Payload(left - len);
                        return;
                    }
                    len -= left;
                    self.request_element_done(ts, c);
                }
                ReqPhase::Seek { .. } => {
                    self.req.phase = ReqPhase::Seek { line_start: true };
                    return;
                }
                ReqPhase::Stopped => return,
                // Inside framing, or a gap running past the string: whole
                // commands may have gone by unseen.
                _ => {
                    self.fail_request(Cause::Lost, true, ts, c);
                    return;
                }
            }
        }
    }

    /// The request direction lost its place at `ts`: count it once (unless
    /// the start was a guess) and seek the next request start from the
    /// byte that failed, which may itself begin one if `line_start`.
    fn fail_request(&mut self, cause: Cause, line_start: bool, ts: u64, c: &mut ParserCounters) {
        let was = self.req.phase;
        let queued = std::mem::replace(&mut self.req.queued, false);
        self.req.phase = ReqPhase::Seek { line_start };
        if std::mem::replace(&mut self.req.tentative, false) {
            self.req.skipped_ns = Some(self.req.start_ns);
            return;
        }
        if cause == Cause::Malformed
            && self.start == Start::Fresh
            && self.verdict == Verdict::Unknown
        {
            // The detector's guess was wrong: this is not RESP.
            self.give_up();
            return;
        }
        let in_request = matches!(
            was,
            ReqPhase::Count(_)
                | ReqPhase::Dollar
                | ReqPhase::Length(_)
                | ReqPhase::Payload(_)
                | ReqPhase::Inline(_)
        );
        if cause == Cause::Lost && in_request && !queued {
            // The server got the whole command and will answer it; only
            // its name is unknown.
            c.partial += 1;
            self.enqueue(Op::OTHER, self.req.start_ns, 0, c);
        }
        if self.waiting.back().map(|w| w.kind) != Some(Kind::Barrier) {
            self.enqueue(Op::OTHER, ts, 0, c);
            if let Some(last) = self.waiting.back_mut() {
                last.kind = Kind::Barrier;
            }
        }
        c.resyncs += 1;
    }

    /// Queues a command whose name was read.
    fn enqueue(&mut self, op: Op, start_ns: u64, args: u64, c: &mut ParserCounters) {
        if self.count_from_ns == u64::MAX {
            self.count_from_ns = start_ns;
            self.note_skipped(start_ns);
        }
        if self.waiting.len() >= MAX_WAITING {
            // The oldest is dropped: its reply comes first, so it can be
            // recognised and skipped (`skip_replies`); dropping the newest
            // would leave replies to skip behind commands still to come.
            if let Some(old) = self.waiting.pop_front() {
                if old.reported() {
                    c.unmatched_requests += 1;
                }
                if old.kind != Kind::Barrier {
                    self.skip_replies += 1;
                }
            }
        }
        let args = u32::try_from(args).unwrap_or(u32::MAX);
        self.waiting.push_back(Waiting {
            op,
            kind: op.kind(args),
            start_ns,
            timed_out: false,
        });
    }

    /// The first command of a connection found mid-stream is about to be
    /// queued. Bytes skipped before it in the same syscall were the tail of
    /// one command (a whole one would have been recognised) written with
    /// it: a pipelining client, whose reply to that command comes first.
    /// Skipped in an earlier syscall, the tail was written alone, and its
    /// reply began before this command was sent (not ours to pair).
    fn note_skipped(&mut self, start_ns: u64) {
        if self.req.skipped_ns == Some(start_ns) {
            self.waiting.push_back(Waiting {
                op: Op::OTHER,
                kind: Kind::Unseen,
                start_ns,
                timed_out: false,
            });
        }
    }

    // ---- reply direction ----

    fn reply_data(
        &mut self,
        bytes: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if self.resp.phase == RespPhase::Seek {
            // A server usually starts a reply with a write; and a reply to
            // a command cannot begin before the command was sent.
            let awaited = self.waiting.front().is_some_and(|w| w.start_ns <= ts);
            if !awaited || !bytes.first().is_some_and(|&b| starts_reply(b)) {
                return;
            }
            self.resp.phase = RespPhase::Type;
        }
        let mut rest = bytes;
        while !rest.is_empty() && !self.stopped() {
            let before = self.resp.phase;
            let used = self.reply_step(rest, ts, c, out);
            let stuck = used == 0 && self.resp.phase == before;
            debug_assert!(!stuck, "redis reply parser made no progress in {before:?}");
            let used = if stuck { rest.len() } else { used };
            rest = rest.get(used..).unwrap_or_default();
        }
    }

    fn reply_step(
        &mut self,
        rest: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        let Some(&first) = rest.first() else {
            return 0;
        };
        match self.resp.phase {
            RespPhase::Seek | RespPhase::Stopped => rest.len(),
            RespPhase::Type => {
                self.reply_type(first, ts, c, out);
                1
            }
            RespPhase::Number { ty, mut num } => {
                let (used, step) = num.feed(rest);
                self.resp.phase = RespPhase::Number { ty, num };
                match step {
                    NumStep::More => {}
                    NumStep::Invalid => self.fail_reply(Cause::Malformed, ts, c, out),
                    done => self.number_done(ty, done, ts, c, out),
                }
                used.max(1)
            }
            RespPhase::Line { ty, len, cr } => self.line(ty, len, cr, rest, ts, c, out),
            RespPhase::Blob { left, chunk } => {
                let payload = left.saturating_sub(2);
                let n = rest
                    .len()
                    .min(usize::try_from(payload).unwrap_or(usize::MAX));
                if n > 0 {
                    if self.resp.capture == Capture::Word {
                        self.resp.word.push(rest.get(..n).unwrap_or_default());
                    }
                    self.resp.phase = RespPhase::Blob {
                        left: left - len64(n),
                        chunk,
                    };
                    return n;
                }
                let expected = if left == 2 { b'\r' } else { b'\n' };
                if first != expected {
                    self.fail_reply(Cause::Malformed, ts, c, out);
                } else if left <= 1 {
                    self.blob_done(chunk, ts, c, out);
                } else {
                    self.resp.phase = RespPhase::Blob {
                        left: left - 1,
                        chunk,
                    };
                }
                1
            }
        }
    }

    /// A type byte: the start of a value (or of a streamed string's part,
    /// or a streamed aggregate's end).
    fn reply_type(&mut self, ty: u8, ts: u64, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        let frame = self.resp.top_frame();
        let valid = match ty {
            b';' => frame == Some(Frame::StreamedString),
            b'.' => frame == Some(Frame::Streamed),
            _ => frame != Some(Frame::StreamedString) && starts_reply(ty),
        };
        if !valid {
            self.fail_reply(Cause::Malformed, ts, c, out);
            return;
        }
        if self.resp.depth == 0 {
            self.begin_value(ty, ts, c);
        }
        let r = &mut self.resp;
        let first_of_pending = r.depth == 1
            && r.top_index == 0
            && r.frames.first() == Some(&Frame::Aggregate)
            && matches!(r.current, Current::Pending { .. });
        r.capture = match ty {
            b'-' | b'!' if r.depth == 0 => Capture::Word,
            b'$' | b'+' if first_of_pending => Capture::Word,
            b':' if r.depth == 1 && r.top_index == 2 => Capture::Third,
            _ => Capture::Nothing,
        };
        r.phase = match ty {
            b'+' | b'-' | b',' | b'(' | b'#' | b'_' | b'.' => RespPhase::Line {
                ty,
                len: 0,
                cr: false,
            },
            _ => RespPhase::Number {
                ty,
                num: Num::default(),
            },
        };
    }

    /// A value begins at the top level: a new reply, or the value an
    /// attribute described.
    fn begin_value(&mut self, ty: u8, ts: u64, c: &mut ParserCounters) {
        if !self.resp.in_reply {
            let r = &mut self.resp;
            r.in_reply = true;
            r.start_ns = ts;
            r.word = Word::EMPTY;
            r.third = None;
            r.current = Current::Undecided;
        }
        if !matches!(ty, b'+' | b'-' | b':' | b'$' | b'*') {
            // Only a RESP3 server sends these.
            self.resp3 = true;
        }
        match ty {
            // Decided by the value that follows.
            b'|' => {}
            // Decided by its element count.
            b'*' => {}
            b'>' => {
                self.resp.current = Current::Pending {
                    push: true,
                    elements: 0,
                }
            }
            b'+' if self.monitor && self.waiting.is_empty() && self.skip_replies == 0 => {
                self.resp.current = Current::Push;
            }
            _ => self.resp.current = Current::Answer(self.pair(c)),
        }
        if ty != b'|' {
            self.resp.top_type = ty;
        }
    }

    /// A top-level array's element count is known.
    fn classify_array(&mut self, elements: Option<u64>, c: &mut ParserCounters) {
        self.resp.current = match elements {
            // Pub/sub messages and confirmations are arrays of 2 to 4
            // elements in RESP2 (`pong` in subscribed mode is 2).
            Some(n) if !self.resp3 && (2..=4).contains(&n) => Current::Pending {
                push: false,
                elements: n,
            },
            _ => Current::Answer(self.pair(c)),
        };
    }

    fn number_done(
        &mut self,
        ty: u8,
        step: NumStep,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        self.resp.phase = RespPhase::Type;
        let top_level = self.resp.depth == 0;
        match (ty, step) {
            (b':', NumStep::Value { neg, value }) => {
                if self.resp.capture == Capture::Third && !neg {
                    self.resp.third = Some(value);
                }
                self.element_done(ts, c, out);
            }
            (b'$', NumStep::Streamed) => self.open(Frame::StreamedString, 0, ts, c, out),
            // RESP2's null bulk string.
            (
                b'$',
                NumStep::Value {
                    neg: true,
                    value: 1,
                },
            ) => self.element_done(ts, c, out),
            (b'$' | b'!' | b'=', NumStep::Value { neg: false, value }) if value <= MAX_BULK_LEN => {
                self.resp.phase = RespPhase::Blob {
                    left: value + 2,
                    chunk: false,
                };
            }
            (
                b';',
                NumStep::Value {
                    neg: false,
                    value: 0,
                },
            ) => {
                self.resp.depth = self.resp.depth.saturating_sub(1);
                self.element_done(ts, c, out);
            }
            (b';', NumStep::Value { neg: false, value }) if value <= MAX_BULK_LEN => {
                self.resp.phase = RespPhase::Blob {
                    left: value + 2,
                    chunk: true,
                };
            }
            (b'*' | b'%' | b'~' | b'>', NumStep::Streamed) => {
                if top_level && ty == b'*' {
                    self.classify_array(None, c);
                }
                self.open(Frame::Streamed, 0, ts, c, out);
            }
            // RESP2's null array (RESP3 has `_`).
            (
                b'*' | b'%' | b'~' | b'>',
                NumStep::Value {
                    neg: true,
                    value: 1,
                },
            ) => {
                if top_level && ty == b'*' {
                    self.classify_array(None, c);
                }
                self.element_done(ts, c, out);
            }
            (b'*' | b'%' | b'~' | b'>' | b'|', NumStep::Value { neg: false, value })
                if value <= MAX_AGGREGATE_LEN =>
            {
                if top_level && ty == b'*' {
                    self.classify_array(Some(value), c);
                }
                let (frame, count) = match ty {
                    b'%' => (Frame::Aggregate, value * 2),
                    b'|' => (Frame::Attribute, value * 2),
                    b'>' if !top_level => (Frame::Push, value),
                    _ => (Frame::Aggregate, value),
                };
                if count > 0 {
                    self.open(frame, count, ts, c, out);
                } else if frame == Frame::Aggregate {
                    self.element_done(ts, c, out);
                }
            }
            _ => self.fail_reply(Cause::Malformed, ts, c, out),
        }
    }

    /// Enters an aggregate (or a streamed string) of `count` elements.
    fn open(
        &mut self,
        frame: Frame,
        count: u64,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        let Ok(count) = u32::try_from(count) else {
            self.fail_reply(Cause::Malformed, ts, c, out);
            return;
        };
        let r = &mut self.resp;
        let depth = r.depth;
        match (r.counts.get_mut(depth), r.frames.get_mut(depth)) {
            (Some(slot), Some(kind)) => {
                *slot = count;
                *kind = frame;
                r.depth += 1;
                if depth == 0 {
                    r.top_index = 0;
                }
            }
            _ => self.fail_reply(Cause::Malformed, ts, c, out),
        }
    }

    /// A line of text up to its CRLF; only an error's first word or a
    /// pub/sub kind is kept.
    #[expect(
        clippy::too_many_arguments,
        reason = "the line's state travels in the phase, the piece's context beside it"
    )]
    fn line(
        &mut self,
        ty: u8,
        len: u64,
        cr: bool,
        rest: &[u8],
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) -> usize {
        let end = rest.iter().position(|&b| b == b'\n');
        let text = rest.get(..end.unwrap_or(rest.len())).unwrap_or_default();
        let len = len.saturating_add(len64(text.len()));
        let cr = text.last().map_or(cr, |&b| b == b'\r');
        if len > MAX_LINE {
            self.fail_reply(Cause::Malformed, ts, c, out);
            return text.len().max(1);
        }
        if self.resp.capture == Capture::Word {
            self.resp.word.push(text);
        }
        let Some(end) = end else {
            self.resp.phase = RespPhase::Line { ty, len, cr };
            return rest.len();
        };
        // Null and end-of-stream lines are empty; a CRLF ends every line.
        if !cr || (matches!(ty, b'_' | b'.') && len != 1) {
            self.fail_reply(Cause::Malformed, ts, c, out);
            return end + 1;
        }
        self.resp.phase = RespPhase::Type;
        if ty == b'.' {
            self.resp.depth = self.resp.depth.saturating_sub(1);
        }
        self.element_done(ts, c, out);
        end + 1
    }

    fn blob_done(&mut self, chunk: bool, ts: u64, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        self.resp.phase = RespPhase::Type;
        if !chunk {
            self.element_done(ts, c, out);
        }
    }

    /// A value is complete: count it in its aggregate, closing those it
    /// completes, up to the reply itself.
    fn element_done(&mut self, ts: u64, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        loop {
            let Some(top) = self.resp.depth.checked_sub(1) else {
                self.reply_done(ts, out);
                return;
            };
            let frame = self.resp.frames.get(top).copied();
            if matches!(frame, Some(Frame::Streamed | Frame::StreamedString) | None) {
                // Ended by its own terminator.
                return;
            }
            if top == 0 && frame == Some(Frame::Aggregate) {
                self.resp.top_index += 1;
                if self.resp.top_index == 1 {
                    self.classify_pending(c);
                }
            }
            let Some(count) = self.resp.counts.get_mut(top) else {
                return;
            };
            *count = count.saturating_sub(1);
            if *count > 0 {
                return;
            }
            self.resp.depth = top;
            if matches!(frame, Some(Frame::Attribute | Frame::Push)) {
                // Not an element: for an attribute, the value it describes
                // follows.
                return;
            }
        }
    }

    /// The first element of a pending array is read: a pub/sub message or
    /// confirmation, or an answer after all.
    fn classify_pending(&mut self, c: &mut ParserCounters) {
        let Current::Pending { push, elements } = self.resp.current else {
            return;
        };
        let kind = self.resp.word.first_word().unwrap_or_default();
        let message = matches!(
            (kind, elements),
            (b"message" | b"smessage", 3) | (b"pmessage", 4)
        );
        let confirmation = PubSub::from_confirmation(kind).filter(|_| elements == 3 || push);
        let idle = self.skip_replies == 0 && self.waiting.iter().all(|w| w.kind == Kind::Barrier);
        self.resp.current = match confirmation {
            Some(cmd) if push || self.pubsub_context() || idle => self.confirmation(cmd),
            // RESP3 pushes (invalidations, messages) never answer.
            _ if push => Current::Push,
            // An unexpected message-like array with nothing waiting is far
            // more likely a message than an answer to nothing.
            _ if message && (self.subscribed() || idle) => Current::Push,
            _ => Current::Answer(self.pair(c)),
        };
    }

    /// Whether a RESP2 confirmation-shaped array is one.
    fn pubsub_context(&self) -> bool {
        self.subscribed()
            || self.owed.1 > 0
            || self
                .waiting
                .front()
                .is_some_and(|w| matches!(w.kind, Kind::PubSub(..)))
    }

    fn subscribed(&self) -> bool {
        self.channels > 0 || self.shard_channels > 0
    }

    /// A confirmation completes the (un)subscribe it is the first of; the
    /// others are set aside.
    fn confirmation(&mut self, cmd: PubSub) -> Current {
        if self.owed.0 == cmd && self.owed.1 > 0 {
            self.owed.1 -= 1;
            return Current::Confirmation { cmd, request: None };
        }
        let start_ns = self.resp.start_ns;
        let first = self.waiting.front().is_some_and(|w| {
            w.kind.pubsub() == Some(cmd) && w.start_ns <= start_ns && self.skip_replies == 0
        });
        let request = if first { self.pop_waiting() } else { None };
        if let Some(Kind::PubSub(_, channels)) = request.map(|w| w.kind) {
            self.stale = 0;
            // Without channels, UNSUBSCRIBE gets one per subscription, an
            // unknown number: those are set aside as confirmations that
            // complete nothing.
            self.owed = (cmd, channels.saturating_sub(1));
        }
        Current::Confirmation { cmd, request }
    }

    /// The command a reply that began at `resp.start_ns` answers, if any.
    fn pair(&mut self, c: &mut ParserCounters) -> Option<Waiting> {
        if self.skip_replies > 0 {
            self.skip_replies -= 1;
            return None;
        }
        let start_ns = self.resp.start_ns;
        while self.waiting.front().map(|w| w.kind) == Some(Kind::Barrier) {
            if self.waiting.get(1).is_some_and(|w| w.start_ns <= start_ns) {
                // The command after the loss was sent before this reply
                // began: the lost commands are taken to be answered (with
                // pipelining they may not be, and no guess is right).
                self.pop_waiting();
                continue;
            }
            // A reply to a command lost with the gap: explained, so it
            // makes no waiting command stale.
            if start_ns >= self.count_from_ns {
                c.unmatched_responses += 1;
            }
            return None;
        }
        // Commands whose replies went missing would shift every later
        // pairing by one. Which ones they are is a guess: the oldest, as
        // long as a newer one had also been sent before this reply began
        // (with pipelining no guess is right).
        while self.stale > 0 && self.waiting.get(1).is_some_and(|w| w.start_ns <= start_ns) {
            if let Some(old) = self.pop_waiting() {
                if old.reported() {
                    c.unmatched_requests += 1;
                }
            }
            self.stale -= 1;
        }
        if self.waiting.front().is_some_and(|w| w.start_ns <= start_ns) {
            self.stale = 0;
            return self.pop_waiting();
        }
        // Nothing waiting, or the oldest command was sent after this reply
        // began: its own command was lost (or predates us).
        if start_ns >= self.count_from_ns {
            c.unmatched_responses += 1;
            self.stale = self.stale.saturating_add(1);
        }
        None
    }

    fn pop_waiting(&mut self) -> Option<Waiting> {
        let w = self.waiting.pop_front();
        if self.waiting.is_empty() && self.waiting.capacity() > KEEP_CAPACITY {
            self.waiting = VecDeque::new();
        }
        w
    }

    /// The reply is complete at `ts`.
    fn reply_done(&mut self, ts: u64, out: &mut Vec<Exchange>) {
        let current = std::mem::replace(&mut self.resp.current, Current::Undecided);
        self.resp.in_reply = false;
        self.resp.depth = 0;
        self.verdict = Verdict::Speaks;
        match current {
            Current::Answer(Some(w)) => {
                let error = self.resp.error();
                if error.is_none() {
                    match w.kind {
                        // HELLO 3 answers with a map, HELLO 2 with an array.
                        Kind::Hello => self.resp3 = self.resp.top_type == b'%',
                        Kind::Monitor => self.monitor = true,
                        Kind::Reset => {
                            self.resp3 = false;
                            self.monitor = false;
                            self.channels = 0;
                            self.shard_channels = 0;
                            self.owed.1 = 0;
                        }
                        _ => {}
                    }
                }
                emit(w, error, None, ts, out);
            }
            Current::Confirmation { cmd, request } => {
                if let Some(count) = self.resp.third {
                    if cmd.shard() {
                        self.shard_channels = count;
                    } else {
                        self.channels = count;
                    }
                }
                if let Some(w) = request {
                    emit(w, None, None, ts, out);
                }
            }
            Current::Answer(None)
            | Current::Push
            | Current::Pending { .. }
            | Current::Undecided => {}
        }
    }

    fn reply_gap(&mut self, len: u64, ts: u64, c: &mut ParserCounters, out: &mut Vec<Exchange>) {
        let mut len = len;
        while len > 0 && !self.stopped() {
            match self.resp.phase {
                RespPhase::Blob { left, chunk } => {
                    if self.resp.capture == Capture::Word && left > 2 {
                        self.resp.word.lose();
                    }
                    if len < left {
                        self.resp.phase = RespPhase::Blob {
                            left: left - len,
                            chunk,
                        };
                        return;
                    }
                    len -= left;
                    self.blob_done(chunk, ts, c, out);
                }
                RespPhase::Seek | RespPhase::Stopped => return,
                _ => {
                    self.fail_reply(Cause::Lost, ts, c, out);
                    return;
                }
            }
        }
    }

    /// The reply direction lost its place at `ts`: count it once, give up
    /// the commands it was waiting on, and seek a reply to a newer one.
    fn fail_reply(
        &mut self,
        cause: Cause,
        ts: u64,
        c: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if cause == Cause::Malformed
            && self.start == Start::Fresh
            && self.verdict == Verdict::Unknown
        {
            self.give_up();
            return;
        }
        c.resyncs += 1;
        // The reply being read did begin: it answered its command, ending
        // where we lost it.
        let current = std::mem::replace(&mut self.resp.current, Current::Undecided);
        if let Current::Answer(Some(w))
        | Current::Confirmation {
            request: Some(w), ..
        } = current
        {
            emit(w, self.resp.error(), None, ts, out);
        }
        self.lose_replies(c);
        let r = &mut self.resp;
        r.depth = 0;
        r.in_reply = false;
        r.capture = Capture::Nothing;
        r.phase = RespPhase::Seek;
    }

    /// Which replies were lost cannot be known: every command waiting is
    /// counted unmatched (once) and dropped, so that only replies to
    /// commands sent from now on are paired. The command still being sent
    /// stays: its reply cannot have begun.
    fn lose_replies(&mut self, c: &mut ParserCounters) {
        let sending = if self.req.queued
            && self
                .waiting
                .back()
                .is_some_and(|w| w.start_ns == self.req.start_ns)
        {
            self.waiting.pop_back()
        } else {
            None
        };
        let lost = self.waiting.iter().filter(|w| w.reported()).count();
        c.unmatched_requests += len64(lost);
        self.waiting = VecDeque::new();
        self.waiting.extend(sending);
        self.skip_replies = 0;
        self.stale = 0;
        self.owed.1 = 0;
    }

    fn give_up(&mut self) {
        self.verdict = Verdict::Done;
        self.stop();
    }

    fn stop(&mut self) {
        self.req.phase = ReqPhase::Stopped;
        self.req.queued = false;
        self.resp.phase = RespPhase::Stopped;
        self.resp.current = Current::Undecided;
        self.waiting = VecDeque::new();
    }
}

impl Spec for RedisConn {
    const NAME: &'static str = "redis";

    fn start(side: Side, start: Start) -> Self {
        Self::new(side, start)
    }

    fn detect(from_client: bool, bytes: &[u8]) -> Detection {
        // A Redis server never speaks first.
        match (from_client, looks_like_request(bytes)) {
            (false, _) | (true, Some(false)) => Detection::No,
            (true, Some(true)) => Detection::Yes,
            (true, None) => Detection::NeedMore,
        }
    }

    fn traced_on(side: Side) -> bool {
        side == Side::Client
    }
}

impl ConnParser for RedisConn {
    fn on_piece(
        &mut self,
        outbound: bool,
        piece: Piece<'_>,
        ts_ns: u64,
        counters: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    ) {
        if self.stopped() || piece == Piece::Data(&[]) || piece == Piece::Gap(0) {
            return;
        }
        if self.start == Start::MidStream && self.count_from_ns == u64::MAX {
            self.seek_pieces += 1;
            if self.seek_pieces > MAX_SEEK_PIECES {
                self.give_up();
                return;
            }
        }
        let request = outbound == (self.side == Side::Client);
        match (request, piece) {
            (true, Piece::Data(bytes)) => self.request_data(bytes, ts_ns, counters),
            (true, Piece::Gap(n)) => self.request_gap(n, ts_ns, counters),
            (false, Piece::Data(bytes)) => self.reply_data(bytes, ts_ns, counters, out),
            (false, Piece::Gap(n)) => self.reply_gap(n, ts_ns, counters, out),
        }
    }

    fn on_close(&mut self, ts_ns: u64, counters: &mut ParserCounters, out: &mut Vec<Exchange>) {
        if self.stopped() {
            return;
        }
        // A reply cut short: its command never got a whole answer.
        let current = std::mem::replace(&mut self.resp.current, Current::Undecided);
        if let Current::Answer(Some(w))
        | Current::Confirmation {
            request: Some(w), ..
        } = current
        {
            emit(w, None, Some(Failure::ConnectionClosed), ts_ns, out);
        }
        // Commands whose replies were lost are not the close's doing.
        let lost = usize::try_from(self.stale).unwrap_or(usize::MAX);
        for (i, w) in std::mem::take(&mut self.waiting).into_iter().enumerate() {
            if i < lost {
                if w.reported() {
                    counters.unmatched_requests += 1;
                }
            } else {
                emit(w, None, Some(Failure::ConnectionClosed), ts_ns, out);
            }
        }
        self.stop();
    }

    fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<Exchange>) {
        let Some(cutoff) = now_ns.checked_sub(timeout_ns) else {
            return;
        };
        for w in &mut self.waiting {
            if w.start_ns > cutoff {
                break;
            }
            if w.reported() {
                emit(*w, None, Some(Failure::Timeout), now_ns, out);
                w.timed_out = true;
            }
        }
    }

    fn verdict(&self) -> Verdict {
        self.verdict
    }
}

impl Requests {
    /// Index of the element being read.
    fn index(&self) -> u64 {
        self.elements.saturating_sub(self.left)
    }
}

impl Replies {
    fn top_frame(&self) -> Option<Frame> {
        self.depth
            .checked_sub(1)
            .and_then(|top| self.frames.get(top).copied())
    }

    /// The current reply's error prefix, if it is an error.
    fn error(&self) -> Option<String> {
        matches!(self.top_type, b'-' | b'!').then(|| error_code(&self.word))
    }
}

impl Waiting {
    /// Whether this command is still to be reported (or counted) at all.
    fn reported(&self) -> bool {
        !self.timed_out && !matches!(self.kind, Kind::Barrier | Kind::Unseen)
    }
}

impl Kind {
    fn pubsub(self) -> Option<PubSub> {
        match self {
            Kind::PubSub(cmd, _) => Some(cmd),
            _ => None,
        }
    }
}

impl PubSub {
    fn from_command(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"SUBSCRIBE" => Self::Subscribe,
            b"PSUBSCRIBE" => Self::PSubscribe,
            b"SSUBSCRIBE" => Self::SSubscribe,
            b"UNSUBSCRIBE" => Self::Unsubscribe,
            b"PUNSUBSCRIBE" => Self::PUnsubscribe,
            b"SUNSUBSCRIBE" => Self::SUnsubscribe,
            _ => return None,
        })
    }

    fn from_confirmation(kind: &[u8]) -> Option<Self> {
        Some(match kind {
            b"subscribe" => Self::Subscribe,
            b"psubscribe" => Self::PSubscribe,
            b"ssubscribe" => Self::SSubscribe,
            b"unsubscribe" => Self::Unsubscribe,
            b"punsubscribe" => Self::PUnsubscribe,
            b"sunsubscribe" => Self::SUnsubscribe,
            _ => return None,
        })
    }

    /// Shard channels are counted apart from channels and patterns.
    fn shard(self) -> bool {
        matches!(self, Self::SSubscribe | Self::SUnsubscribe)
    }
}

impl Op {
    const OTHER: Op = Op {
        name: [0; MAX_WORD],
        len: 0,
    };

    /// The command name in upper case, if it is one: 1 to 32 letters,
    /// digits, `_`, `-` or `|` (`_OTHER` otherwise: never a key or value
    /// that landed in the first element).
    fn from_name(name: Option<&[u8]>) -> Op {
        let Some(name) = name.filter(|n| (1..=MAX_WORD).contains(&n.len())) else {
            return Op::OTHER;
        };
        if !name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|'))
        {
            return Op::OTHER;
        }
        let mut op = Op::OTHER;
        for (slot, &b) in op.name.iter_mut().zip(name) {
            *slot = b.to_ascii_uppercase();
        }
        op.len = u8::try_from(name.len()).unwrap_or(0);
        op
    }

    fn is_other(&self) -> bool {
        self.len == 0
    }

    fn as_bytes(&self) -> &[u8] {
        self.name.get(..usize::from(self.len)).unwrap_or_default()
    }

    fn as_str(&self) -> &str {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(name) if !name.is_empty() => name,
            _ => "_OTHER",
        }
    }

    fn kind(&self, args: u32) -> Kind {
        match self.as_bytes() {
            b"HELLO" => Kind::Hello,
            b"MONITOR" => Kind::Monitor,
            b"RESET" => Kind::Reset,
            name => PubSub::from_command(name).map_or(Kind::Plain, |cmd| Kind::PubSub(cmd, args)),
        }
    }
}

impl Word {
    const EMPTY: Word = Word {
        bytes: [0; WORD_ROOM],
        len: 0,
        total: 0,
    };

    fn push(&mut self, bytes: &[u8]) {
        let len = usize::from(self.len);
        if let Some(room) = self.bytes.get_mut(len..) {
            let take = room.len().min(bytes.len());
            if let (Some(dst), Some(src)) = (room.get_mut(..take), bytes.get(..take)) {
                dst.copy_from_slice(src);
                self.len += u8::try_from(take).unwrap_or(0);
            }
        }
        self.total = self.total.saturating_add(len64(bytes.len()));
    }

    /// Some of the string's bytes were not captured.
    fn lose(&mut self) {
        self.total = u64::MAX;
    }

    fn lost(&self) -> bool {
        self.total == u64::MAX
    }

    fn kept(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The whole string, if every byte of it was kept.
    fn whole(&self) -> Option<&[u8]> {
        (self.total == u64::from(self.len)).then(|| self.kept())
    }

    /// Up to the first space or CR, if that much was kept.
    fn first_word(&self) -> Option<&[u8]> {
        let kept = self.kept();
        match kept.iter().position(|&b| b == b' ' || b == b'\r') {
            Some(end) => kept.get(..end),
            None => self.whole(),
        }
    }
}

impl Num {
    /// Reads from the front of `bytes`; returns the bytes used (never the
    /// one found invalid, which the caller may look at again).
    fn feed(&mut self, bytes: &[u8]) -> (usize, NumStep) {
        for (i, &b) in bytes.iter().enumerate() {
            let step = self.byte(b);
            match step {
                NumStep::More => {}
                NumStep::Invalid => return (i, step),
                _ => return (i + 1, step),
            }
        }
        (bytes.len(), NumStep::More)
    }

    fn byte(&mut self, b: u8) -> NumStep {
        let fresh = self.digits == 0 && !self.neg && !self.streamed;
        match b {
            _ if self.cr => {
                if b == b'\n' {
                    if self.streamed {
                        NumStep::Streamed
                    } else {
                        NumStep::Value {
                            neg: self.neg,
                            value: self.value,
                        }
                    }
                } else {
                    NumStep::Invalid
                }
            }
            b'-' if fresh => {
                self.neg = true;
                NumStep::More
            }
            b'?' if fresh => {
                self.streamed = true;
                NumStep::More
            }
            b'0'..=b'9' if !self.streamed && self.digits < 19 => {
                self.digits += 1;
                self.value = self.value * 10 + u64::from(b - b'0');
                NumStep::More
            }
            b'\r' if self.digits > 0 || self.streamed => {
                self.cr = true;
                NumStep::More
            }
            _ => NumStep::Invalid,
        }
    }
}

/// Every RESP2 and RESP3 type that can begin a value.
fn starts_reply(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b':'
            | b'$'
            | b'*'
            | b'_'
            | b','
            | b'#'
            | b'!'
            | b'='
            | b'('
            | b'%'
            | b'~'
            | b'>'
            | b'|'
    )
}

/// An error reply's first word if it is 1 to 32 upper-case letters
/// (`WRONGTYPE`, `NOAUTH`, `MOVED`), else `ERR`.
fn error_code(word: &Word) -> String {
    match word.first_word() {
        Some(w) if (1..=MAX_WORD).contains(&w.len()) && w.iter().all(u8::is_ascii_uppercase) => {
            String::from_utf8_lossy(w).into_owned()
        }
        _ => "ERR".to_owned(),
    }
}

/// Bytes no inline command holds: controls other than tab and line ends.
fn is_control(b: u8) -> bool {
    (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f
}

fn emit(
    w: Waiting,
    error: Option<String>,
    failure: Option<Failure>,
    end_ns: u64,
    out: &mut Vec<Exchange>,
) {
    if !w.reported() {
        return;
    }
    out.push(Exchange {
        call: Call::Db(DbCall {
            system: DbSystem::Redis,
            operation: w.op.as_str().to_owned(),
            collection: None,
            error,
        }),
        failure,
        start_ns: w.start_ns,
        end_ns,
        response_body_bytes: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::XorShift;

    /// One connection under test, with a clock that ticks per piece.
    type Conn = crate::testutil::Driver<RedisConn>;

    impl Conn {
        fn new(side: Side, start: Start) -> Self {
            Self::with(RedisConn::new(side, start), side)
        }

        fn client() -> Self {
            Self::new(Side::Client, Start::Fresh)
        }

        /// "OP", "OP ERRCODE", "OP timeout" or "OP closed" per exchange.
        fn got(&self) -> Vec<String> {
            self.out.iter().map(describe).collect()
        }

        /// (resyncs, unmatched requests, unmatched responses).
        fn counts(&self) -> (u64, u64, u64) {
            (
                self.c.resyncs,
                self.c.unmatched_requests,
                self.c.unmatched_responses,
            )
        }
    }

    fn describe(e: &Exchange) -> String {
        let Call::Db(db) = &e.call else {
            return format!("{e:?}");
        };
        assert_eq!((db.system, &db.collection), (DbSystem::Redis, &None));
        let mut text = db.operation.clone();
        if let Some(error) = &db.error {
            text = format!("{text} {error}");
        }
        match e.failure {
            Some(Failure::Timeout) => text.push_str(" timeout"),
            Some(Failure::ConnectionClosed) => text.push_str(" closed"),
            Some(other) => text.push_str(&format!(" {other:?}")),
            None => {}
        }
        text
    }

    /// A command as clients send it: an array of bulk strings.
    fn cmd(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn strs(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn detection() {
        assert_eq!(RedisConn::detect(true, b"*2\r\n$3\r\nGET"), Detection::Yes);
        assert_eq!(RedisConn::detect(true, b"*2\r"), Detection::NeedMore);
        assert_eq!(RedisConn::detect(false, b"*2\r\n$"), Detection::No);
        assert_eq!(RedisConn::detect(true, b"GET / HTTP/1.1"), Detection::No);
        assert!(RedisConn::traced_on(Side::Client) && !RedisConn::traced_on(Side::Server));
        assert_eq!(looks_like_request(b"*1\r\n$4\r\nPING\r\n"), Some(true));
        assert_eq!(looks_like_request(b"*12\r\n$"), Some(true));
        assert_eq!(looks_like_request(b"*1\r"), None);
        assert_eq!(looks_like_request(b"*"), None);
        assert_eq!(looks_like_request(b""), None);
        assert_eq!(looks_like_request(b"*\r\n$"), Some(false));
        assert_eq!(looks_like_request(b"*1\r\n*"), Some(false));
        assert_eq!(looks_like_request(b"GET / HTTP/1.1"), Some(false));
        assert_eq!(looks_like_request(b"*99999999999\r\n$"), Some(false));
    }

    #[test]
    fn operation_is_the_first_element_in_upper_case_or_other() {
        let long = [b'A'; 32];
        let longer = [b'A'; 33];
        let cases: &[(&[u8], &str)] = &[
            (b"get", "GET"),
            (b"HSet", "HSET"),
            (b"client|list", "CLIENT|LIST"),
            (b"my-module_cmd2", "MY-MODULE_CMD2"),
            (&long, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            (&longer, "_OTHER"),
            (b"user:1000", "_OTHER"),
            (b"GE T", "_OTHER"),
            (b"", "_OTHER"),
            (b"caf\xc3\xa9", "_OTHER"),
        ];
        for (name, want) in cases {
            let mut t = Conn::client();
            t.req(&cmd(&[name, b"secret-key"]));
            t.resp(b"+OK\r\n");
            assert_eq!(t.got(), strs(&[want]), "{name:?}");
            assert_eq!(t.counts(), (0, 0, 0));
        }
    }

    #[test]
    fn error_is_the_first_word_in_upper_case_or_err() {
        let word32 = "E".repeat(32);
        let word33 = "E".repeat(33);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"-ERR unknown command\r\n".to_vec(), "ERR"),
            (
                b"-WRONGTYPE Operation against a key\r\n".to_vec(),
                "WRONGTYPE",
            ),
            (b"-NOAUTH Authentication required.\r\n".to_vec(), "NOAUTH"),
            (b"-MOVED 3999 127.0.0.1:6381\r\n".to_vec(), "MOVED"),
            (b"-Error in lower case\r\n".to_vec(), "ERR"),
            (b"-BUSY_GROUP x\r\n".to_vec(), "ERR"),
            (b"-ERR\r\n".to_vec(), "ERR"),
            (b"-\r\n".to_vec(), "ERR"),
            (format!("-{word32} x\r\n").into_bytes(), word32.as_str()),
            (format!("-{word32}\r\n").into_bytes(), word32.as_str()),
            (format!("-{word33} x\r\n").into_bytes(), "ERR"),
            (b"!21\r\nSYNTAX invalid syntax\r\n".to_vec(), "SYNTAX"),
            (b"!0\r\n\r\n".to_vec(), "ERR"),
        ];
        for (reply, want) in &cases {
            for split in [false, true] {
                let mut t = Conn::client();
                t.req(&cmd(&[b"INCR", b"k"]));
                if split {
                    for b in reply.chunks(1) {
                        t.resp(b);
                    }
                } else {
                    t.resp(reply);
                }
                assert_eq!(t.got(), vec![format!("INCR {want}")], "{reply:?}");
                assert_eq!(t.counts(), (0, 0, 0));
            }
        }
    }

    #[test]
    fn timestamps_span_the_request_and_the_reply() {
        let mut t = Conn::client();
        let start = t.req(b"*2\r\n$3\r\nGET\r\n");
        t.req(b"$1\r\nk\r\n");
        t.resp(b"$5\r\nhel");
        let end = t.resp(b"lo\r\n");
        assert_eq!((t.out[0].start_ns, t.out[0].end_ns), (start, end));
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
    }

    /// Letters for `n` (base 26, four digits): a command name or error
    /// code that says which request or reply it was.
    fn tag(n: usize) -> String {
        (0..4)
            .rev()
            .map(|i| char::from(b'A' + ((n / 26usize.pow(i)) % 26) as u8))
            .collect()
    }

    #[test]
    fn a_burst_of_100000_commands_stays_bounded_and_pairs_the_survivors() {
        const BURST: usize = 100_000;
        let mut t = Conn::client();
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        for i in 0..BURST {
            requests.extend_from_slice(&cmd(&[format!("C{}", tag(i)).as_bytes()]));
            replies.extend_from_slice(format!("-X{} no\r\n", tag(i)).as_bytes());
        }
        t.req(&requests);
        assert_eq!(t.conn.waiting.len(), MAX_WAITING);
        assert_eq!(t.c.unmatched_requests, (BURST - MAX_WAITING) as u64);
        t.resp(&replies);
        // The oldest were dropped: their replies came first and were
        // skipped, so every survivor got its own reply.
        let want: Vec<String> = (BURST - MAX_WAITING..BURST)
            .map(|i| format!("C{0} X{0}", tag(i)))
            .collect();
        assert_eq!(t.got(), want);
        assert_eq!(t.counts(), (0, (BURST - MAX_WAITING) as u64, 0));
        // The burst's queue memory is given back.
        assert_eq!(t.conn.waiting.capacity(), 0);
        t.req(&cmd(&[b"PING"]));
        t.resp(b"+PONG\r\n");
        assert_eq!(t.got().last().map(String::as_str), Some("PING"));
    }

    #[test]
    fn subscribe_is_one_exchange_and_messages_are_not_replies() {
        let mut t = Conn::client();
        let mut both = cmd(&[b"SUBSCRIBE", b"a", b"b"]);
        both.extend_from_slice(&cmd(&[b"SUBSCRIBE", b"c"]));
        t.req(&both);
        let first = t.resp(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        t.resp(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n");
        let third = t.resp(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:3\r\n");
        assert_eq!(t.got(), strs(&["SUBSCRIBE", "SUBSCRIBE"]));
        assert_eq!((t.out[0].end_ns, t.out[1].end_ns), (first, third));
        assert_eq!(t.conn.channels, 3);
        for _ in 0..5 {
            t.resp(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n");
            t.resp(b"*4\r\n$8\r\npmessage\r\n$2\r\na*\r\n$2\r\nab\r\n$2\r\nhi\r\n");
        }
        // Hours of silence: a subscription is not a hung request.
        let mut timeouts = Vec::new();
        t.conn.expire(u64::MAX / 2, 1_000, &mut timeouts);
        assert!(timeouts.is_empty());
        // Subscribed-mode PING answers with an array.
        t.req(&cmd(&[b"PING"]));
        t.resp(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        // UNSUBSCRIBE without arguments: one confirmation per channel,
        // then a command pipelined behind it is answered normally.
        let mut both = cmd(&[b"UNSUBSCRIBE"]);
        both.extend_from_slice(&cmd(&[b"GET", b"k"]));
        t.req(&both);
        for (channel, left) in [("a", 2), ("b", 1), ("c", 0)] {
            t.resp(
                format!("*3\r\n$11\r\nunsubscribe\r\n$1\r\n{channel}\r\n:{left}\r\n").as_bytes(),
            );
        }
        assert!(!t.conn.subscribed());
        t.resp(b"$-1\r\n");
        t.close();
        assert_eq!(
            t.got(),
            strs(&["SUBSCRIBE", "SUBSCRIBE", "PING", "UNSUBSCRIBE", "GET"])
        );
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn shard_channels_are_counted_apart() {
        let mut t = Conn::client();
        t.req(&cmd(&[b"SUBSCRIBE", b"a"]));
        t.resp(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        t.req(&cmd(&[b"SSUBSCRIBE", b"s"]));
        t.resp(b"*3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n");
        t.req(&cmd(&[b"UNSUBSCRIBE", b"a"]));
        t.resp(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n");
        // Still subscribed to a shard channel: messages are not replies.
        assert!(t.conn.subscribed());
        t.resp(b"*3\r\n$8\r\nsmessage\r\n$1\r\ns\r\n$1\r\nx\r\n");
        t.req(&cmd(&[b"SUNSUBSCRIBE"]));
        t.resp(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\ns\r\n:0\r\n");
        assert!(!t.conn.subscribed());
        assert_eq!(
            t.got(),
            strs(&["SUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "SUNSUBSCRIBE"])
        );
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn message_shaped_arrays_answer_commands_when_not_subscribed() {
        let mut t = Conn::client();
        t.req(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
        t.resp(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n");
        t.req(&cmd(&[b"EVAL", b"return {'subscribe','x',1}", b"0"]));
        t.resp(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n");
        assert_eq!(t.got(), strs(&["LRANGE", "EVAL"]));
        assert!(!t.conn.subscribed());
        // In RESP3 an array is always an answer, subscribed or not.
        t.req(&cmd(&[b"HELLO", b"3"]));
        t.resp(b"%1\r\n$5\r\nproto\r\n:3\r\n");
        t.req(&cmd(&[b"SUBSCRIBE", b"a"]));
        t.resp(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        t.req(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
        t.resp(b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n");
        t.resp(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n");
        // HELLO 2 goes back to RESP2.
        t.req(&cmd(&[b"HELLO", b"2"]));
        t.resp(b"*2\r\n$5\r\nproto\r\n:2\r\n");
        assert!(!t.conn.resp3);
        assert_eq!(
            t.got(),
            strs(&["LRANGE", "EVAL", "HELLO", "SUBSCRIBE", "LRANGE", "HELLO"])
        );
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn resp3_types_attributes_streams_and_pushes() {
        // (reply, the error it answers with; None: a push, no answer).
        let replies: &[(&[u8], Option<&str>)] = &[
            // An attribute describes the reply that follows it.
            (
                b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039123\r\n:9543892\r\n",
                Some("-"),
            ),
            (b"_\r\n", Some("-")),
            (b",3.14\r\n", Some("-")),
            (b"#t\r\n", Some("-")),
            (b"(3492890328409238509324850943850943825024385\r\n", Some("-")),
            (b"=15\r\ntxt:Some string\r\n", Some("-")),
            (b"~2\r\n+a\r\n+b\r\n", Some("-")),
            // An invalidation push between replies answers nothing.
            (b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n", None),
            (b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n", Some("-")),
            (b"*?\r\n:1\r\n*?\r\n+x\r\n.\r\n:2\r\n.\r\n", Some("-")),
            (b"%?\r\n+a\r\n:1\r\n.\r\n", Some("-")),
            (b"*2\r\n|1\r\n+ttl\r\n:3600\r\n:1\r\n:2\r\n", Some("-")),
            (b"%2\r\n+a\r\n%1\r\n+b\r\n~1\r\n_\r\n+c\r\n*0\r\n", Some("-")),
            // A push inside a reply is not one of its elements.
            (
                b"*2\r\n:1\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n:2\r\n",
                Some("-"),
            ),
            (b"!21\r\nSYNTAX invalid syntax\r\n", Some("SYNTAX")),
            (b"*-1\r\n", Some("-")),
            (b"%0\r\n", Some("-")),
        ];
        let mut want = vec!["HELLO".to_owned()];
        for (_, error) in replies {
            match error {
                Some("-") => want.push("GET".to_owned()),
                Some(code) => want.push(format!("GET {code}")),
                None => {}
            }
        }
        for split in [false, true] {
            let mut t = Conn::client();
            t.req(&cmd(&[b"HELLO", b"3"]));
            t.resp(b"%1\r\n$5\r\nproto\r\n:3\r\n");
            for _ in 1..want.len() {
                t.req(&cmd(&[b"GET", b"k"]));
            }
            for (reply, _) in replies {
                if split {
                    for b in reply.chunks(1) {
                        t.resp(b);
                    }
                } else {
                    t.resp(reply);
                }
            }
            assert_eq!(t.got(), want, "split {split}");
            assert_eq!(t.counts(), (0, 0, 0), "split {split}");
            assert_eq!(t.conn.resp.depth, 0);
        }
    }

    #[test]
    fn huge_strings_are_skipped_by_counting() {
        let mut t = Conn::client();
        // A 4 GB value: its header, a captured start, the rest a gap.
        t.req(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4000000000\r\nxxxx");
        t.req_gap(4_000_000_000 - 4);
        t.req(b"\r\n");
        t.resp(b"+OK\r\n");
        // A 5 GB reply whose gap swallows its CRLF too.
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(b"$5000000000\r\nabc");
        let end = t.resp_gap(5_000_000_000 - 3 + 2);
        assert_eq!(t.got(), strs(&["SET", "GET"]));
        assert_eq!(t.out[1].end_ns, end);
        // Longer than any server allows: garbage.
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(b"$99999999999999\r\n");
        assert_eq!(t.c.resyncs, 1);
        assert_eq!(t.counts(), (1, 0, 0));
    }

    #[test]
    fn a_million_element_reply_is_walked_in_place() {
        let mut t = Conn::client();
        t.req(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
        t.resp(b"*1000000\r\n");
        let element = b":1\r\n$3\r\nabc\r\n*2\r\n+a\r\n_\r\n";
        let chunk: Vec<u8> = element.repeat(1000);
        // 1000 pieces of 1000 triples would be 3 million elements; the
        // array holds a million: give 333,333 triples and one more value.
        for _ in 0..333 {
            t.resp(&chunk);
        }
        t.resp(&element.repeat(333));
        assert!(t.out.is_empty());
        t.resp(b":7\r\n");
        assert_eq!(t.got(), strs(&["LRANGE"]));
        assert_eq!(t.counts(), (0, 0, 0));
        assert_eq!(t.conn.resp.depth, 0);
    }

    #[test]
    fn nesting_beyond_the_limit_is_a_resync() {
        let deep = |levels: usize| {
            let mut reply = b"*1\r\n".repeat(levels);
            reply.extend_from_slice(b":1\r\n");
            reply
        };
        let mut t = Conn::client();
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(&deep(MAX_DEPTH));
        assert_eq!(t.got(), strs(&["GET"]));
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(&deep(MAX_DEPTH + 1));
        assert_eq!(t.counts(), (1, 0, 0));
        // The reply had begun: it answered its command.
        assert_eq!(t.got(), strs(&["GET", "GET"]));
        t.req(&cmd(&[b"PING"]));
        t.resp(b"+PONG\r\n");
        assert_eq!(t.got().last().map(String::as_str), Some("PING"));
        assert_eq!(t.counts(), (1, 0, 0));
    }

    #[test]
    fn lines_are_capped() {
        let mut t = Conn::client();
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(b"+");
        let long = vec![b'a'; 4096];
        for _ in 0..=MAX_LINE / 4096 {
            t.resp(&long);
        }
        assert_eq!(t.counts(), (1, 0, 0));
        // An inline command line too.
        let mut t = Conn::client();
        t.req(b"PING\r\n");
        t.resp(b"+PONG\r\n");
        t.req(b"SET k ");
        for _ in 0..=MAX_INLINE / 4096 {
            t.req(&long);
        }
        assert_eq!(t.counts(), (1, 0, 0));
    }

    #[test]
    fn gaps_inside_strings_are_harmless() {
        let mut t = Conn::client();
        t.req(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nab");
        t.req_gap(8);
        t.req(b"\r\n");
        t.resp(b"+OK\r\n");
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(b"$10\r\na");
        t.resp_gap(9);
        t.resp(b"\r\n");
        assert_eq!(t.got(), strs(&["SET", "GET"]));
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn lost_requests_leave_a_barrier() {
        // Lockstep: a whole command lost; its reply comes before the next
        // command is sent.
        let mut t = Conn::client();
        t.req(&cmd(&[b"GET", b"a"]));
        t.req_gap(27);
        t.resp(b"$1\r\n1\r\n");
        t.resp(b"$1\r\n2\r\n");
        t.req(&cmd(&[b"INCR", b"c"]));
        t.resp(b":3\r\n");
        assert_eq!(t.got(), strs(&["GET", "INCR"]));
        assert_eq!(t.counts(), (1, 0, 1));
        // Pipelined: a write truncated by the capture limit loses commands
        // whose replies come with the others; the next batch pairs right.
        let mut t = Conn::client();
        let mut batch = Vec::new();
        for key in [b"a", b"b", b"c"] {
            batch.extend_from_slice(&cmd(&[b"GET", key]));
        }
        t.req(&batch);
        t.req_gap(2 * 22);
        t.resp(&b"$1\r\nv\r\n".repeat(5));
        let mut next = cmd(&[b"SET", b"k", b"v"]);
        next.extend_from_slice(&cmd(&[b"DEL", b"k"]));
        t.req(&next);
        t.resp(b"+OK\r\n:1\r\n");
        assert_eq!(t.got(), strs(&["GET", "GET", "GET", "SET", "DEL"]));
        assert_eq!(t.counts(), (1, 0, 2));
    }

    #[test]
    fn a_command_whose_name_was_lost_is_other_and_partial() {
        // Cut inside the name, and before it.
        for start in [&b"*2\r\n$3\r\nGE"[..], b"*2\r\n"] {
            let mut t = Conn::client();
            t.req(start);
            t.req_gap(10);
            t.req(&cmd(&[b"PING"]));
            t.resp(b"$1\r\nv\r\n");
            t.resp(b"+PONG\r\n");
            t.close();
            assert_eq!(t.got(), strs(&["_OTHER", "PING"]));
            assert_eq!(t.counts(), (1, 0, 0));
            assert_eq!(t.c.partial, 1);
        }
        // A gap ending with the name: no framing was lost.
        let mut t = Conn::client();
        t.req(b"*2\r\n$3\r\nG");
        t.req_gap(4);
        t.req(b"$1\r\nk\r\n");
        t.resp(b"$1\r\nv\r\n");
        assert_eq!(t.got(), strs(&["_OTHER"]));
        assert_eq!((t.counts(), t.c.partial), ((0, 0, 0), 1));
    }

    #[test]
    fn a_lost_reply_gives_up_the_waiting_commands() {
        let mut t = Conn::client();
        let mut three = cmd(&[b"SET", b"a", b"1"]);
        three.extend_from_slice(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
        three.extend_from_slice(&cmd(&[b"GET", b"b"]));
        t.req(&three);
        t.resp(b"+OK\r\n*3\r\n:1\r\n");
        let lost = t.resp_gap(50);
        // The rest of that read: LRANGE's tail and GET's reply.
        t.resp(b":3\r\n$1\r\nx\r\n");
        assert_eq!(t.got(), strs(&["SET", "LRANGE"]));
        assert_eq!(t.out[1].end_ns, lost);
        assert_eq!(t.counts(), (1, 1, 0));
        // Only replies to commands sent since are paired.
        t.req(&cmd(&[b"DEL", b"a"]));
        t.resp(b":1\r\n");
        assert_eq!(t.got(), strs(&["SET", "LRANGE", "DEL"]));
        t.close();
        assert_eq!(t.counts(), (1, 1, 0));
    }

    #[test]
    fn a_lost_reply_keeps_the_command_still_being_sent() {
        let mut t = Conn::client();
        t.req(&cmd(&[b"GET", b"a"]));
        t.req(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$100\r\n");
        t.resp(b"$1\r\n");
        t.resp_gap(10);
        t.req(&[b'x'; 100]);
        t.req(b"\r\n");
        t.resp(b"+OK\r\n");
        assert_eq!(t.got(), strs(&["GET", "SET"]));
        assert_eq!(t.counts(), (1, 0, 0));
    }

    #[test]
    fn mid_stream_starts_at_a_request_and_ignores_earlier_replies() {
        let mut t = Conn::new(Side::Client, Start::MidStream);
        t.resp(b"$3\r\nold\r\n");
        // The tail of a command, a line that only looks like a start, then
        // a command, in one write: the tail's command is answered first.
        t.req(b"lue\r\n*x\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(t.conn.verdict(), Verdict::Speaks);
        t.resp(b"+OK\r\n");
        t.resp(b"$1\r\nv\r\n");
        assert_eq!(t.got(), strs(&["GET"]));
        assert_eq!(t.counts(), (0, 0, 0));
        // Lockstep: the tail came alone and was answered before the next
        // command was sent.
        let mut t = Conn::new(Side::Client, Start::MidStream);
        t.req(b"lue\r\n");
        t.resp(b"+OK\r\n");
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(b"$1\r\nv\r\n");
        assert_eq!(t.got(), strs(&["GET"]));
        assert_eq!(t.counts(), (0, 0, 0));
        // A reply written before the first command we saw was sent is not
        // its answer, and not counted.
        let mut t = Conn::new(Side::Client, Start::MidStream);
        t.req(b"\r\n");
        t.resp(b"+OK\r\n");
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(b"$1\r\nv\r\n");
        assert_eq!(t.got(), strs(&["GET"]));
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn mid_stream_gives_up_on_endless_non_redis() {
        let mut t = Conn::new(Side::Client, Start::MidStream);
        for _ in 0..=MAX_SEEK_PIECES {
            t.req(b"\x00\x01binary\n*junk");
        }
        assert_eq!(t.conn.verdict(), Verdict::Done);
        t.close();
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn fresh_non_resp_is_done_and_later_garbage_a_resync() {
        for first in [&b"\x16\x03\x01\x02\x00"[..], b"*1\r\n\x00", b"*abc\r\n"] {
            let mut t = Conn::client();
            t.req(first);
            assert_eq!(t.conn.verdict(), Verdict::Done, "{first:?}");
            t.resp(b"+OK\r\n");
            t.close();
            assert!(t.out.is_empty());
            assert_eq!(t.counts(), (0, 0, 0));
        }
        // A server that speaks first, not in RESP.
        let mut t = Conn::client();
        t.resp(b"SSH-2.0-OpenSSH_9.2\r\n");
        assert_eq!(t.conn.verdict(), Verdict::Done);
        // Once it spoke RESP, garbage is a resync.
        let mut t = Conn::client();
        t.req(&cmd(&[b"PING"]));
        t.resp(b"+PONG\r\n");
        t.req(b"\x00\x01junk\r\n*1\r\n$4\r\nPING\r\n");
        t.resp(b"+PONG\r\n");
        assert_eq!(t.got(), strs(&["PING", "PING"]));
        assert_eq!(t.counts(), (1, 0, 0));
        // Inline commands only on a connection seen from its start.
        let mut t = Conn::new(Side::Client, Start::MidStream);
        t.req(&cmd(&[b"PING"]));
        t.req(b"PING\r\n");
        assert_eq!(t.counts(), (1, 0, 0));
    }

    #[test]
    fn close_and_expire() {
        let mut t = Conn::client();
        let start = t.req(&cmd(&[b"BLPOP", b"q", b"0"]));
        let mut out = Vec::new();
        t.conn.expire(start + 5, 10, &mut out);
        assert!(out.is_empty());
        t.conn.expire(start + 10, 10, &mut out);
        t.conn.expire(start + 20, 10, &mut out);
        assert_eq!(
            out.iter().map(describe).collect::<Vec<_>>(),
            strs(&["BLPOP timeout"])
        );
        assert_eq!((out[0].start_ns, out[0].end_ns), (start, start + 10));
        // The late answer is not reported again; the next pairs right.
        t.resp(b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(b"$-1\r\n");
        assert_eq!(t.got(), strs(&["GET"]));
        // A reply cut by the close, and a command still waiting.
        t.req(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
        t.req(&cmd(&[b"GET", b"k"]));
        t.resp(b"*3\r\n:1\r\n");
        let end = t.close();
        assert_eq!(t.got(), strs(&["GET", "LRANGE closed", "GET closed"]));
        assert_eq!(t.out[2].end_ns, end);
        assert_eq!(t.counts(), (0, 0, 0));
        // Nothing after the close.
        t.resp(b"+OK\r\n");
        t.close();
        assert_eq!(t.out.len(), 3);
    }

    #[test]
    fn monitor_feed_is_not_unmatched() {
        let mut t = Conn::client();
        t.req(&cmd(&[b"MONITOR"]));
        t.resp(b"+OK\r\n");
        for _ in 0..3 {
            t.resp(b"+1700000000.123456 [0 127.0.0.1:5555] \"GET\" \"k\"\r\n");
        }
        // RESET ends it: a status line nobody waits for is unmatched again.
        t.req(&cmd(&[b"RESET"]));
        t.resp(b"+RESET\r\n");
        t.resp(b"+OK\r\n");
        t.close();
        assert_eq!(t.got(), strs(&["MONITOR", "RESET"]));
        assert_eq!(t.counts(), (0, 0, 1));
    }

    #[test]
    fn a_replica_connection_is_given_up_at_psync() {
        let mut t = Conn::client();
        t.req(&cmd(&[b"REPLCONF", b"capa", b"psync2"]));
        t.resp(b"+OK\r\n");
        t.req(&cmd(&[b"PSYNC", b"?", b"-1"]));
        assert_eq!(t.conn.verdict(), Verdict::Done);
        t.resp(b"+FULLRESYNC 8de1787ba490483314a4d30f1c628bc5025eb761 0\r\n$4\r\nRDB!");
        t.resp(b"*1\r\n$4\r\nPING\r\n");
        t.close();
        assert_eq!(t.got(), strs(&["REPLCONF"]));
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn reset_leaves_subscribed_mode_and_resp3() {
        let mut t = Conn::client();
        t.req(&cmd(&[b"HELLO", b"3"]));
        t.resp(b"%1\r\n$5\r\nproto\r\n:3\r\n");
        t.req(&cmd(&[b"SUBSCRIBE", b"a"]));
        t.resp(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        assert!(t.conn.resp3 && t.conn.subscribed());
        t.req(&cmd(&[b"RESET"]));
        t.resp(b"+RESET\r\n");
        assert!(!t.conn.resp3 && !t.conn.subscribed());
        // Back in RESP2 and unsubscribed, a message-shaped array answers.
        t.req(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
        t.resp(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert_eq!(t.got(), strs(&["HELLO", "SUBSCRIBE", "RESET", "LRANGE"]));
        assert_eq!(t.counts(), (0, 0, 0));
    }

    #[test]
    fn server_side_mirrors_client_side() {
        let requests = [
            cmd(&[b"SET", b"k", b"v"]),
            cmd(&[b"GET", b"k"]),
            cmd(&[b"INCR", b"k"]),
        ];
        let replies: [&[u8]; 3] = [b"+OK\r\n", b"$1\r\nv\r\n", b"-ERR not an integer\r\n"];
        let mut results = Vec::new();
        for side in [Side::Client, Side::Server] {
            let mut t = Conn::new(side, Start::Fresh);
            for (request, reply) in requests.iter().zip(replies) {
                t.req(request);
                t.resp(reply);
            }
            t.close();
            results.push((t.got(), t.counts()));
        }
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0].0, strs(&["SET", "GET", "INCR ERR"]));
    }

    /// A lost request chunk makes reassembly hold the next ones and release
    /// them in one burst, after their replies went by unmatched: the burst
    /// must not leave stale commands that shift later pairings.
    #[test]
    fn burst_after_lost_request_chunk_does_not_shift_pairing() {
        use crate::pipeline::reassembly::{Reassembler, ReassemblyCounters};
        let mut t = Conn::client();
        let mut stream = Reassembler::new(0);
        let mut rc = ReassemblyCounters::default();
        let requests: Vec<Vec<u8>> = (1..=7)
            .map(|i| cmd(&[format!("CMD{i}").as_bytes()]))
            .collect();
        let mut pos = 0u64;
        for (i, request) in requests.iter().enumerate() {
            t.ts += 10;
            if i != 1 {
                let (conn, c, out, ts) = (&mut t.conn, &mut t.c, &mut t.out, t.ts);
                stream.push(pos, request, request.len() as u64, &mut rc, &mut |p| {
                    conn.on_piece(true, p, ts, c, out)
                });
            }
            pos += request.len() as u64;
            t.resp(b"+OK\r\n");
        }
        assert_eq!(rc.gaps, 1);
        assert_eq!(t.got(), strs(&["CMD1", "CMD7"]));
        // CMD2 lost; CMD3 to CMD6 held while their answers went unmatched.
        assert_eq!(t.counts(), (1, 4, 5));
        t.req(&cmd(&[b"CMD8"]));
        t.resp(b"+OK\r\n");
        assert_eq!(t.got().last().map(String::as_str), Some("CMD8"));
    }

    #[test]
    fn per_connection_state_is_small_and_unallocated() {
        let size = std::mem::size_of::<RedisConn>();
        // Thousands of connections each hold one.
        assert!(size <= 640, "RedisConn is {size} bytes");
        let t = RedisConn::new(Side::Client, Start::Fresh);
        assert_eq!(t.waiting.capacity(), 0);
        assert!(std::mem::size_of::<Waiting>() <= 56);
    }

    /// Random mixes of valid messages, mutations, junk and gaps in random
    /// pieces: no panic, bounded state, and well-formed exchanges.
    #[test]
    fn fuzz_never_panics_and_stays_bounded() {
        let requests: &[&[u8]] = &[
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n",
            b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n",
            b"*1\r\n$11\r\nUNSUBSCRIBE\r\n",
            b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n",
            b"*1\r\n$5\r\nMULTI\r\n",
            b"*1\r\n$4\r\nEXEC\r\n",
            b"*1\r\n$7\r\nMONITOR\r\n",
            b"PING\r\n",
            b"*0\r\n",
            b"\r\n",
            b"*1\r\n$99999999999\r\n",
        ];
        let replies: &[&[u8]] = &[
            b"+OK\r\n",
            b"-WRONGTYPE x\r\n",
            b":42\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n",
            b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n",
            b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n",
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n",
            b"%1\r\n+a\r\n|1\r\n+b\r\n:1\r\n~1\r\n_\r\n",
            b"$?\r\n;2\r\nab\r\n;0\r\n",
            b"*?\r\n:1\r\n.\r\n",
            b"!3\r\nERR\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n",
            b"\x00\xffjunk",
            b"\r\n",
        ];
        for seed in 1..400u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
            let start = [Start::Fresh, Start::MidStream][rng.below_usize(2)];
            let side = [Side::Client, Side::Server][rng.below_usize(2)];
            let mut conn = RedisConn::new(side, start);
            let mut c = ParserCounters::default();
            let mut out = Vec::new();
            let mut ts = 0;
            for _ in 0..rng.below_usize(100) {
                ts += 1 + rng.below(3);
                let request_dir = rng.below_usize(2) == 0;
                let outbound = request_dir == (side == Side::Client);
                match rng.below_usize(12) {
                    0 => {
                        let n = rng.next() % [3, 100, 100_000, u64::MAX][rng.below_usize(4)];
                        conn.on_piece(outbound, Piece::Gap(n), ts, &mut c, &mut out);
                        continue;
                    }
                    1 => {
                        conn.expire(ts, rng.below(20), &mut out);
                        continue;
                    }
                    _ => {}
                }
                let parts = if request_dir { requests } else { replies };
                let mut bytes = Vec::new();
                for _ in 0..rng.below_usize(6) + 1 {
                    bytes.extend_from_slice(parts[rng.below_usize(parts.len())]);
                }
                rng.corrupt(&mut bytes);
                crate::testutil::feed_in_random_pieces(
                    &mut conn, &mut rng, outbound, &bytes, ts, &mut c, &mut out,
                );
                assert!(conn.waiting.len() <= MAX_WAITING);
                assert!(conn.resp.depth <= MAX_DEPTH);
            }
            conn.on_close(ts + 1, &mut c, &mut out);
            assert!(conn.waiting.is_empty());
            for e in &out {
                assert!(e.start_ns <= e.end_ns, "seed {seed}: {e:?}");
                let Call::Db(db) = &e.call else {
                    panic!("seed {seed}: {e:?}")
                };
                let op = db.operation.as_bytes();
                assert!(op == b"_OTHER" || (1..=MAX_WORD).contains(&op.len()));
                assert!(op
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"_-|".contains(b)));
                if let Some(error) = &db.error {
                    assert!((1..=MAX_WORD).contains(&error.len()));
                    assert!(error.bytes().all(|b| b.is_ascii_uppercase()));
                }
            }
        }
    }

    /// Random valid pipelines in random pieces, no loss: every command
    /// gets exactly one exchange, with its own reply, and nothing counts.
    #[test]
    fn every_command_is_accounted_for() {
        let replies: &[&[u8]] = &[
            b"+OK\r\n",
            b":1\r\n",
            b"$3\r\nabc\r\n",
            b"_\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"%1\r\n+k\r\n~1\r\n,1.5\r\n",
            b"|1\r\n+a\r\n+b\r\n#f\r\n",
        ];
        for seed in 1..200u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut t = Conn::client();
            let mut want = Vec::new();
            let mut pending = Vec::new();
            for _ in 0..rng.below_usize(30) + 1 {
                let mut requests = Vec::new();
                let mut answers = Vec::new();
                for _ in 0..rng.below_usize(5) + 1 {
                    let n = want.len();
                    requests.extend_from_slice(&cmd(&[format!("C{}", tag(n)).as_bytes(), b"k"]));
                    if rng.below_usize(4) == 0 {
                        want.push(format!("C{0} E{0}", tag(n)));
                        answers.extend_from_slice(format!("-E{} failed\r\n", tag(n)).as_bytes());
                    } else {
                        want.push(format!("C{}", tag(n)));
                        answers.extend_from_slice(replies[rng.below_usize(replies.len())]);
                    }
                    if rng.below_usize(3) == 0 {
                        answers.extend_from_slice(b">2\r\n$10\r\ninvalidate\r\n_\r\n");
                    }
                }
                for (dir, bytes) in [(true, requests), (false, answers)] {
                    pending.push((dir, bytes));
                }
            }
            for (request_dir, bytes) in pending {
                let mut rest = bytes.as_slice();
                while !rest.is_empty() {
                    let n = rng.below_usize(rest.len().min(40)) + 1;
                    let (piece, tail) = rest.split_at(n);
                    t.feed(request_dir, Piece::Data(piece));
                    rest = tail;
                }
            }
            t.close();
            assert_eq!(t.got(), want, "seed {seed}");
            assert_eq!(t.c, ParserCounters::default(), "seed {seed}");
        }
    }
}
