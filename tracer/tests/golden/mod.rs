//! The harness shared by the golden byte-stream tests
//! (`tests/<proto>_golden.rs`, each with `mod golden;`).
//!
//! A case under `tests/fixtures/<proto>/` is `NAME.expect`, which says how to
//! feed two byte streams and what must come out, and (unless it borrows
//! another case's with `streams`) `NAME.req` and `NAME.resp`, the raw bytes
//! of the request and response directions. Every case is fed in the steps
//! its `feed` lines give, one byte per piece, split once at step boundaries
//! (every byte, or a sample: see [`Splits`]), in random-sized pieces, and
//! through `Reassembler` with chunks swapped and gaps as truncated tails;
//! every way must give the same exchanges and counters (and, except through
//! the reassembler, the same timestamps).
//!
//! What differs per protocol, a [`Protocol`] says: how its parser is built,
//! its own directives (how it starts, its `exchange` lines), how an
//! `Exchange` is written for comparison, the final state it is checked for
//! ([`FinalState`]), where steps are split ([`Splits`]), and any extra
//! checks.
//!
//! `NAME.expect`, one directive per line, `#` starts a comment. Directives
//! every protocol reads:
//!
//! ```text
//! streams OTHER                       the byte streams are OTHER.req and
//!                                     OTHER.resp (a variation on a case)
//! side server|client                  which end the traced process is
//!                                     (default: per protocol)
//! from req|resp 120                   bytes before 120 are never delivered
//! gap req|resp 120..140               these bytes arrive as Piece::Gap
//! hole req|resp 120 999000            a Piece::Gap of 999000 bytes that are not
//!                                     in the file arrives just before byte 120
//!                                     (with it: `resp@120` is its tick)
//! feed req|resp 0..52                 delivery order, by byte range ("52.." = to
//!                                     the end; each direction in order); default:
//!                                     all requests, then all responses
//! close no                            do not call on_close at the end
//! variants all|no-split|whole         which ways to feed (all): no-split (also
//!                                     spelt nosplit) skips the single splits
//!                                     (long cases); whole feeds only the steps
//!                                     (cases whose meaning depends on piece
//!                                     boundaries)
//! counters resyncs=0 unmatched_requests=0 unmatched_responses=0 partial=0
//!                                     the parser's counters (unnamed ones: 0)
//! verdict speaks|unknown|done         the parser's verdict at the end (not
//!                                     checked if not given; HTTP/1 has `state`
//!                                     instead)
//! ```
//!
//! Each protocol adds how its parser starts and its `exchange` lines, which
//! name where an exchange starts and ends with the positions below
//! (`req@N`, `resp@N`, `resp@close`, `?`).
//!
//! Timestamps: every piece fed gets the next tick, so `req@N` means "the
//! tick of the piece that carried request byte N" (`resp@N` likewise); the
//! close gets the tick after the last piece (`resp@close`); `?` skips the
//! check.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::{
    fmt::{self, Write as _},
    fs,
    ops::Range,
    path::{Path, PathBuf},
};

use tracer::{
    pipeline::reassembly::{Reassembler, ReassemblyCounters},
    protocols::{
        ConnParser, DbCall, Exchange, Failure, ParserCounters, Piece, Side, Start, Verdict,
    },
};

/// What a protocol's golden tests supply. The implementing type holds the
/// protocol's own settings of a case (how its parser starts, ...), filled
/// by [`Protocol::directive`] from its defaults.
pub trait Protocol: Default + fmt::Debug + Sized {
    /// The folder under `tests/fixtures/`.
    const FIXTURES: &'static str;
    /// `side` when a case does not say.
    const SIDE: Side;
    /// Whether the final state is read before `on_close` (else after).
    const STATE_BEFORE_CLOSE: bool = false;
    /// Where a step is split in two.
    const SPLITS: Splits = Splits::Every;

    type Conn: ConnParser;
    /// The final state a case may expect (`Verdict`, unless the parser
    /// tells more).
    type State: FinalState<Self::Conn>;

    /// A new parser for a case.
    fn conn(&self, side: Side) -> Self::Conn;
    /// An exchange as the protocol's `exchange` lines write it (without
    /// the positions).
    fn describe(exchange: &Exchange) -> String;
    /// Reads a directive of the protocol's own (its start, its `exchange`
    /// lines, ...) into `case`; false if it is not one.
    fn directive(case: &mut Case<Self>, words: &[&str], ctx: &str) -> bool;
    /// Checks a case once all its lines are read.
    fn finish(_case: &Case<Self>) {}
    /// Checks of a run beyond the exchanges, counters, state and ticks.
    fn check_run(_run: &Run<Self>, _errors: &mut String) {}
}

/// A parser's final state, as the directive `DIRECTIVE WORD` expects it.
pub trait FinalState<C>: Copy + PartialEq + fmt::Debug {
    /// `state`, `verdict`, ...
    const DIRECTIVE: &'static str;
    /// The state `conn` is in.
    fn of(conn: &C) -> Self;
    /// The state a directive's word names.
    fn parse(word: &str, ctx: &str) -> Self;
}

/// `verdict speaks|unknown|done`.
impl<C: ConnParser> FinalState<C> for Verdict {
    const DIRECTIVE: &'static str = "verdict";

    fn of(conn: &C) -> Self {
        conn.verdict()
    }

    fn parse(word: &str, ctx: &str) -> Self {
        match word {
            "speaks" => Verdict::Speaks,
            "unknown" => Verdict::Unknown,
            "done" => Verdict::Done,
            other => panic!("{ctx}: unknown verdict {other:?}"),
        }
    }
}

/// How a parser starts, fresh unless a directive says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct StartAs(pub Start);

impl Default for StartAs {
    fn default() -> Self {
        Self(Start::Fresh)
    }
}

impl StartAs {
    /// `fresh|midstream`, the word of a `start` (or `mode`) directive.
    pub fn parse(word: &str, ctx: &str) -> Self {
        Self(match word {
            "fresh" => Start::Fresh,
            "midstream" => Start::MidStream,
            other => panic!("{ctx}: start must be fresh or midstream, not {other:?}"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Req,
    Resp,
}

impl Dir {
    pub fn index(self) -> usize {
        usize::from(self == Dir::Resp)
    }

    fn of_index(index: usize) -> Dir {
        if index == 0 {
            Dir::Req
        } else {
            Dir::Resp
        }
    }

    fn word(self) -> &'static str {
        match self {
            Dir::Req => "req",
            Dir::Resp => "resp",
        }
    }
}

/// Where an exchange is expected to start or end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The tick of the piece that carried this byte.
    Byte(Dir, usize),
    /// The tick of the close.
    Close,
    /// Not checked.
    Any,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Byte(dir, n) => write!(f, "{} byte {n}", dir.word()),
            At::Close => f.write_str("the close"),
            At::Any => f.write_str("?"),
        }
    }
}

/// An expected exchange.
#[derive(Debug)]
pub struct Expected {
    /// As [`Protocol::describe`] writes the exchange.
    pub text: String,
    pub start: At,
    pub end: At,
}

impl Expected {
    /// An exchange whose timestamps are not checked.
    pub fn untimed(text: String) -> Self {
        Self {
            text,
            start: At::Any,
            end: At::Any,
        }
    }
}

/// Which ways a case is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variants {
    All,
    /// All but the single splits, which are quadratic in the length.
    NoSplit,
    /// Only the steps as given.
    Whole,
}

/// Where `golden_split_at_every_boundary` splits a step in two.
#[derive(Debug, Clone, Copy)]
pub enum Splits {
    /// At every byte.
    Every,
    /// Everywhere in a step of up to `4 * edge` bytes; in a longer one
    /// everywhere within `edge` bytes of its ends and at every `stride`th
    /// byte between, to keep the test linear in practice.
    LongStepsSampled { edge: usize, stride: usize },
    /// About `budget` splits a case at most (each re-runs the whole case):
    /// every boundary if the case has few, else the `edge` at each end of a
    /// step and an even spread between (every boundary is still exercised
    /// by the byte-by-byte variant).
    Budget { budget: usize, edge: usize },
}

impl Splits {
    /// The split points of step `range` of `case`.
    fn points<P: Protocol>(self, case: &Case<P>, range: &Range<usize>) -> Vec<usize> {
        let inner = range.start + 1..range.end;
        match self {
            Splits::Every => inner.collect(),
            Splits::LongStepsSampled { edge, stride } => {
                let long = range.len() > 4 * edge;
                inner
                    .filter(|&at| {
                        !long
                            || at < range.start + edge
                            || at + edge > range.end
                            || (at - range.start).is_multiple_of(stride)
                    })
                    .collect()
            }
            Splits::Budget { budget, edge } => {
                let boundaries: usize = case.feeds.iter().map(|(_, r)| r.len()).sum();
                let stride = boundaries.div_ceil(budget).max(1);
                inner
                    .clone()
                    .filter(|&at| {
                        at < inner.start + edge || at + edge >= inner.end || at % stride == 0
                    })
                    .collect()
            }
        }
    }
}

/// One fixture, read.
#[derive(Debug)]
pub struct Case<P: Protocol> {
    pub name: String,
    pub side: Side,
    pub req: Vec<u8>,
    pub resp: Vec<u8>,
    /// Per direction, the first byte delivered.
    pub from: [usize; 2],
    pub gaps: Vec<(Dir, Range<usize>)>,
    pub holes: Vec<(Dir, usize, u64)>,
    pub feeds: Vec<(Dir, Range<usize>)>,
    pub close: bool,
    pub variants: Variants,
    pub exchanges: Vec<Expected>,
    pub counters: ParserCounters,
    pub state: Option<P::State>,
    /// The protocol's own settings.
    pub own: P,
}

impl<P: Protocol> Case<P> {
    pub fn stream(&self, dir: Dir) -> &[u8] {
        match dir {
            Dir::Req => &self.req,
            Dir::Resp => &self.resp,
        }
    }

    /// Outbound flag for `dir` as the traced process sees it.
    pub fn outbound(&self, dir: Dir) -> bool {
        (dir == Dir::Req) == (self.side == Side::Client)
    }

    /// Is byte `at` of `dir` inside a declared gap?
    fn gap_end(&self, dir: Dir, at: usize) -> Option<usize> {
        self.gaps
            .iter()
            .find(|(d, r)| *d == dir && r.contains(&at))
            .map(|(_, r)| r.end)
    }

    /// The next gap or hole start in `dir` after `at`, if before `end`.
    fn next_gap(&self, dir: Dir, at: usize, end: usize) -> usize {
        let gaps = self
            .gaps
            .iter()
            .filter(|(d, _)| *d == dir)
            .map(|(_, r)| r.start);
        let holes = self
            .holes
            .iter()
            .filter(|(d, ..)| *d == dir)
            .map(|(_, h, _)| *h);
        gaps.chain(holes)
            .filter(|&start| start > at && start < end)
            .min()
            .unwrap_or(end)
    }

    /// What one piece of `dir` covering file bytes `piece` delivers, in
    /// order: file bytes, declared gaps and holes.
    fn parts(&self, dir: Dir, piece: Range<usize>) -> Vec<Part> {
        let mut parts = Vec::new();
        let mut at = piece.start;
        while at < piece.end {
            for (_, _, len) in self.holes.iter().filter(|(d, h, _)| *d == dir && *h == at) {
                parts.push(Part::Hole(*len));
            }
            let end = match self.gap_end(dir, at) {
                Some(end) => {
                    let end = self.next_gap(dir, at, end.min(piece.end));
                    parts.push(Part::Gap(at..end));
                    end
                }
                None => {
                    let end = self.next_gap(dir, at, piece.end);
                    parts.push(Part::Data(at..end));
                    end
                }
            };
            at = end;
        }
        parts
    }
}

/// Part of a piece as delivered.
#[derive(Debug, Clone)]
enum Part {
    Data(Range<usize>),
    /// File bytes that arrive as a gap.
    Gap(Range<usize>),
    /// A gap with no bytes in the file.
    Hole(u64),
}

impl Part {
    fn piece<'a>(&self, stream: &'a [u8]) -> Piece<'a> {
        match self {
            Part::Data(r) => Piece::Data(&stream[r.clone()]),
            Part::Gap(r) => Piece::Gap(r.len() as u64),
            Part::Hole(n) => Piece::Gap(*n),
        }
    }

    fn stream_len(&self) -> u64 {
        match self {
            Part::Data(r) | Part::Gap(r) => r.len() as u64,
            Part::Hole(n) => *n,
        }
    }
}

pub fn parse_dir(word: &str, ctx: &str) -> Dir {
    match word {
        "req" => Dir::Req,
        "resp" => Dir::Resp,
        other => panic!("{ctx}: direction must be req or resp, not {other:?}"),
    }
}

pub fn parse_number<T: std::str::FromStr>(text: &str, what: &str, ctx: &str) -> T {
    text.parse()
        .unwrap_or_else(|_| panic!("{ctx}: bad {what} {text:?}"))
}

fn parse_range(text: &str, len: usize, ctx: &str) -> Range<usize> {
    let (a, b) = text
        .split_once("..")
        .unwrap_or_else(|| panic!("{ctx}: range {text:?} must look like A..B"));
    let num = |s: &str, default: usize| {
        if s.is_empty() {
            default
        } else {
            parse_number(s, "number", ctx)
        }
    };
    let range = num(a, 0)..num(b, len);
    assert!(
        range.start <= range.end && range.end <= len,
        "{ctx}: range {text:?} outside a stream of {len} bytes"
    );
    range
}

/// A position in `dir`: `req@N` (`resp@N`), `req@close`, `req@?`.
pub fn parse_at(text: &str, dir: Dir, ctx: &str) -> At {
    let prefix = format!("{}@", dir.word());
    let value = text
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{ctx}: expected {prefix}N, got {text:?}"));
    match value {
        "?" => At::Any,
        "close" => At::Close,
        n => At::Byte(dir, parse_number(n, "offset", ctx)),
    }
}

/// The word an exchange line gives a failure.
pub fn failure_word(failure: Failure) -> &'static str {
    match failure {
        Failure::Reset => "reset",
        Failure::ConnectionClosed => "closed",
        Failure::Timeout => "timeout",
    }
}

/// `text` with the failure's word after it, if there is one.
pub fn with_failure(mut text: String, failure: Option<Failure>) -> String {
    if let Some(failure) = failure {
        text.push(' ');
        text.push_str(failure_word(failure));
    }
    text
}

/// A database call as `OP TABLE ERROR`, `-` for no table or error.
pub fn op_table_error(db: &DbCall) -> String {
    format!(
        "{} {} {}",
        db.operation,
        db.collection.as_deref().unwrap_or("-"),
        db.error.as_deref().unwrap_or("-")
    )
}

/// The path of a fixture folder and the names of its cases, sorted.
pub fn fixtures<P: Protocol>() -> (PathBuf, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(P::FIXTURES);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "expect")
                .then(|| path.file_stem()?.to_str().map(str::to_owned))
                .flatten()
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no fixtures in {}", dir.display());
    (dir, names)
}

/// Reads case `name` of the protocol's fixtures.
pub fn load<P: Protocol>(name: &str) -> Case<P> {
    let (dir, _) = fixtures::<P>();
    load_from(&dir, name)
}

fn load_from<P: Protocol>(dir: &Path, name: &str) -> Case<P> {
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let expect = String::from_utf8(read(&format!("{name}.expect")))
        .unwrap_or_else(|_| panic!("{name}.expect is not UTF-8"));
    let lines: Vec<(String, Vec<&str>)> = expect
        .lines()
        .enumerate()
        .map(|(number, line)| {
            let line = line.split('#').next().unwrap_or_default();
            let ctx = format!("{name}.expect:{}", number + 1);
            (ctx, line.split_whitespace().collect())
        })
        .collect();
    let streams = lines
        .iter()
        .find_map(|(_, words)| match words.as_slice() {
            ["streams", other] => Some(*other),
            _ => None,
        })
        .unwrap_or(name);
    let mut case = Case {
        name: name.to_owned(),
        side: P::SIDE,
        req: read(&format!("{streams}.req")),
        resp: read(&format!("{streams}.resp")),
        from: [0, 0],
        gaps: Vec::new(),
        holes: Vec::new(),
        feeds: Vec::new(),
        close: true,
        variants: Variants::All,
        exchanges: Vec::new(),
        counters: ParserCounters::default(),
        state: None,
        own: P::default(),
    };
    for (ctx, words) in &lines {
        if !common_directive(&mut case, words, ctx) && !P::directive(&mut case, words, ctx) {
            panic!("{ctx}: cannot read {:?}", words.join(" "));
        }
    }
    P::finish(&case);
    if case.feeds.is_empty() {
        case.feeds = vec![
            (Dir::Req, case.from[0]..case.req.len()),
            (Dir::Resp, case.from[1]..case.resp.len()),
        ];
    }
    for dir in [Dir::Req, Dir::Resp] {
        let mut next = case.from[dir.index()];
        for (_, range) in case.feeds.iter().filter(|(d, _)| *d == dir) {
            assert_eq!(
                range.start, next,
                "{name}: feeds of {dir:?} must follow each other"
            );
            next = range.end;
        }
        assert_eq!(
            next,
            case.stream(dir).len(),
            "{name}: feeds must cover {dir:?}"
        );
    }
    case
}

/// Reads one of the directives every protocol has; false if it is not one.
fn common_directive<P: Protocol>(case: &mut Case<P>, words: &[&str], ctx: &str) -> bool {
    match words {
        [] | ["streams", _] => {}
        ["side", "server"] => case.side = Side::Server,
        ["side", "client"] => case.side = Side::Client,
        ["close", "no"] => case.close = false,
        ["variants", "all"] => case.variants = Variants::All,
        ["variants", "no-split" | "nosplit"] => case.variants = Variants::NoSplit,
        ["variants", "whole"] => case.variants = Variants::Whole,
        ["from", dir, at] => {
            let dir = parse_dir(dir, ctx);
            let at: usize = parse_number(at, "offset", ctx);
            assert!(at <= case.stream(dir).len(), "{ctx}: past the end");
            case.from[dir.index()] = at;
        }
        ["hole", dir, at, len] => {
            let dir = parse_dir(dir, ctx);
            let at: usize = parse_number(at, "offset", ctx);
            let len: u64 = parse_number(len, "length", ctx);
            assert!(
                at < case.stream(dir).len() && len > 0,
                "{ctx}: hole must precede a byte"
            );
            case.holes.push((dir, at, len));
        }
        ["gap" | "feed", dir, range] => {
            let dir = parse_dir(dir, ctx);
            let range = parse_range(range, case.stream(dir).len(), ctx);
            if words[0] == "gap" {
                case.gaps.push((dir, range));
            } else {
                case.feeds.push((dir, range));
            }
        }
        ["counters", rest @ ..] => {
            for item in rest {
                let (key, value) = item
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{ctx}: counters take key=value"));
                let value: u64 = parse_number(value, "count", ctx);
                match key {
                    "resyncs" => case.counters.resyncs = value,
                    "unmatched_requests" => case.counters.unmatched_requests = value,
                    "unmatched_responses" => case.counters.unmatched_responses = value,
                    "partial" => case.counters.partial = value,
                    other => panic!("{ctx}: unknown counter {other:?}"),
                }
            }
        }
        [directive, state] if *directive == P::State::DIRECTIVE => {
            case.state = Some(P::State::parse(state, ctx));
        }
        _ => return false,
    }
    true
}

/// What one way of feeding a case produced.
pub struct Run<P: Protocol> {
    pub exchanges: Vec<Exchange>,
    pub counters: ParserCounters,
    pub state: P::State,
    /// (direction, byte range, tick) of every piece fed.
    pub pieces: Vec<(Dir, Range<usize>, u64)>,
    pub close_ts: u64,
}

impl<P: Protocol> Run<P> {
    fn tick_of(&self, dir: Dir, byte: usize) -> Option<u64> {
        self.pieces
            .iter()
            .find(|(d, r, _)| *d == dir && r.contains(&byte))
            .map(|(_, _, ts)| *ts)
    }

    /// The tick an expectation names, if it names one.
    fn expected_tick(&self, at: At, errors: &mut String) -> Option<u64> {
        match at {
            At::Byte(dir, n) => {
                let tick = self.tick_of(dir, n);
                if tick.is_none() {
                    let _ = writeln!(errors, "no piece of {dir:?} carried byte {n}");
                }
                tick
            }
            At::Close => Some(self.close_ts),
            At::Any => None,
        }
    }
}

/// Closes the parser as the case says, reading its final state when the
/// protocol reads it.
fn finish_run<P: Protocol>(
    case: &Case<P>,
    mut conn: P::Conn,
    ts: u64,
    counters: &mut ParserCounters,
    exchanges: &mut Vec<Exchange>,
) -> P::State {
    let before = P::State::of(&conn);
    if case.close {
        conn.on_close(ts, counters, exchanges);
    }
    if P::STATE_BEFORE_CLOSE {
        before
    } else {
        P::State::of(&conn)
    }
}

/// How a feed step is cut into pieces: `cut(step index, step range)`.
pub type Cut<'a> = dyn FnMut(usize, Range<usize>) -> Vec<Range<usize>> + 'a;

/// Feeds `case`, cutting each feed step into syscall-sized pieces with
/// `cut`.
pub fn run<P: Protocol>(case: &Case<P>, cut: &mut Cut<'_>) -> Run<P> {
    let mut conn = case.own.conn(case.side);
    let mut counters = ParserCounters::default();
    let mut exchanges = Vec::new();
    let mut pieces = Vec::new();
    let mut ts = 0;
    for (index, (dir, range)) in case.feeds.iter().enumerate() {
        let dir = *dir;
        let stream = case.stream(dir);
        for piece in cut(index, range.clone()) {
            assert!(piece.start >= range.start && piece.end <= range.end && !piece.is_empty());
            ts += 1;
            // A piece crossing a declared gap is fed as data and gap parts
            // carrying the same tick, as one syscall would be.
            for part in case.parts(dir, piece.clone()) {
                conn.on_piece(
                    case.outbound(dir),
                    part.piece(stream),
                    ts,
                    &mut counters,
                    &mut exchanges,
                );
            }
            pieces.push((dir, piece, ts));
        }
    }
    ts += 1;
    let state = finish_run(case, conn, ts, &mut counters, &mut exchanges);
    Run {
        exchanges,
        counters,
        state,
        pieces,
        close_ts: ts,
    }
}

/// Compares a run with the expectations; returns a description of every
/// difference.
pub fn check<P: Protocol>(case: &Case<P>, run: &Run<P>, timestamps: bool) -> Result<(), String> {
    let mut errors = String::new();
    let got: Vec<String> = run.exchanges.iter().map(P::describe).collect();
    let want: Vec<String> = case.exchanges.iter().map(|e| e.text.clone()).collect();
    if got != want {
        let _ = writeln!(errors, "exchanges: got {got:#?}, want {want:#?}");
    }
    if run.counters != case.counters {
        let _ = writeln!(
            errors,
            "counters: got {:?}, want {:?}",
            run.counters, case.counters
        );
    }
    if let Some(state) = case.state {
        if run.state != state {
            let _ = writeln!(
                errors,
                "{}: got {:?}, want {state:?}",
                P::State::DIRECTIVE,
                run.state
            );
        }
    }
    P::check_run(run, &mut errors);
    if timestamps && got == want {
        for (i, (e, x)) in run.exchanges.iter().zip(&case.exchanges).enumerate() {
            let start = run.expected_tick(x.start, &mut errors);
            let end = run.expected_tick(x.end, &mut errors);
            if start.is_some_and(|s| s != e.start_ns) {
                let _ = writeln!(
                    errors,
                    "exchange {i}: start_ns {} but {} came at {start:?}",
                    e.start_ns, x.start
                );
            }
            if end.is_some_and(|s| s != e.end_ns) {
                let _ = writeln!(
                    errors,
                    "exchange {i}: end_ns {} but {} came at {end:?}",
                    e.end_ns, x.end
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Deterministic generator: no `rand` dependency for tests.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `range` cut into pieces of 1 to `max` bytes.
pub fn random_cuts(rng: &mut XorShift, range: Range<usize>, max: usize) -> Vec<Range<usize>> {
    let mut cuts = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let len = (rng.below(max) + 1).min(range.end - at);
        cuts.push(at..at + len);
        at += len;
    }
    cuts
}

/// A step as one piece.
pub fn whole(_: usize, range: Range<usize>) -> Vec<Range<usize>> {
    if range.is_empty() {
        Vec::new()
    } else {
        vec![range]
    }
}

/// Feeds the case through one `Reassembler` per direction: random chunks,
/// gaps as uncaptured tails or capture-less chunks, neighbours swapped.
/// Ticks then depend on the reordering, so only exchanges and counters are
/// compared.
pub fn run_reassembled<P: Protocol>(case: &Case<P>, seed: u64) -> (Run<P>, ReassemblyCounters) {
    let mut rng = XorShift::new(seed);
    let mut conn = case.own.conn(case.side);
    let mut counters = ParserCounters::default();
    let mut reassembly = ReassemblyCounters::default();
    let mut exchanges = Vec::new();
    let mut streams = case.from.map(|from| Reassembler::new(from as u64));
    let mut positions = case.from.map(|from| from as u64);
    let mut ts = 0;
    for (dir, range) in &case.feeds {
        let dir = *dir;
        let stream = case.stream(dir);
        let index = dir.index();
        // (stream position, file range captured, orig_len), in order; gaps
        // become uncaptured tails or chunks with nothing captured.
        let mut chunks: Vec<(u64, Range<usize>, u64)> = Vec::new();
        for piece in random_cuts(&mut rng, range.clone(), 300) {
            for part in case.parts(dir, piece) {
                let len = part.stream_len();
                let pos = positions[index];
                positions[index] += len;
                match (part, chunks.last_mut()) {
                    (Part::Data(r), _) => chunks.push((pos, r, len)),
                    (_, Some(last)) if last.0 + last.2 == pos && rng.below(2) == 0 => last.2 += len,
                    _ => chunks.push((pos, 0..0, len)),
                }
            }
        }
        // Swap disjoint neighbours only: a chunk late by more than the
        // reorder bound is, by design, declared lost.
        let mut i = 1;
        while i < chunks.len() {
            if rng.below(4) == 0 {
                chunks.swap(i - 1, i);
                i += 1;
            }
            i += 1;
        }
        let outbound = case.outbound(dir);
        for (pos, captured, orig) in chunks {
            ts += 1;
            streams[index].push(
                pos,
                &stream[captured],
                orig,
                &mut reassembly,
                &mut |piece| conn.on_piece(outbound, piece, ts, &mut counters, &mut exchanges),
            );
        }
    }
    ts += 1;
    for (index, stream) in streams.iter_mut().enumerate() {
        let outbound = case.outbound(Dir::of_index(index));
        stream.flush(&mut reassembly, &mut |piece| {
            conn.on_piece(outbound, piece, ts, &mut counters, &mut exchanges)
        });
    }
    let state = finish_run(case, conn, ts, &mut counters, &mut exchanges);
    let run = Run {
        exchanges,
        counters,
        state,
        pieces: Vec::new(),
        close_ts: ts,
    };
    (run, reassembly)
}

/// Runs `test` on every fixture; reports all failures at once.
pub fn for_each_case<P: Protocol>(
    variant: &str,
    mut test: impl FnMut(&Case<P>) -> Result<(), String>,
) {
    let (dir, names) = fixtures::<P>();
    let mut failures = String::new();
    for name in &names {
        let case = load_from::<P>(&dir, name);
        if let Err(e) = test(&case) {
            let _ = writeln!(failures, "--- {name} ({variant}):\n{e}");
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

/// Every case fed in its steps, each step one piece.
pub fn golden_whole<P: Protocol>() {
    for_each_case::<P>("whole steps", |case| {
        check(case, &run(case, &mut whole), true)
    });
}

/// Every case one byte per piece.
pub fn golden_byte_by_byte<P: Protocol>() {
    for_each_case::<P>("one byte per piece", |case| {
        if case.variants == Variants::Whole {
            return Ok(());
        }
        let run = run(case, &mut |_, range: Range<usize>| {
            range.map(|i| i..i + 1).collect()
        });
        check(case, &run, true)
    });
}

/// Every case with one step split in two, at every point [`Splits`] gives.
pub fn golden_split_at_every_boundary<P: Protocol>() {
    for_each_case::<P>("split once at every byte", |case| {
        if case.variants != Variants::All {
            return Ok(());
        }
        for (step, (_, range)) in case.feeds.iter().enumerate() {
            for at in P::SPLITS.points(case, range) {
                let run = run(case, &mut |index, r: Range<usize>| {
                    if index == step {
                        vec![r.start..at, at..r.end]
                    } else {
                        whole(index, r)
                    }
                });
                check(case, &run, true).map_err(|e| format!("step {step} split at {at}:\n{e}"))?;
            }
        }
        Ok(())
    });
}

/// Every case in random-sized pieces, 40 seeds.
pub fn golden_random_pieces<P: Protocol>() {
    for_each_case::<P>("random pieces", |case| {
        if case.variants == Variants::Whole {
            return Ok(());
        }
        for seed in 1..=40 {
            let mut rng = XorShift::new(seed);
            let max = [2, 7, 64, 1500][(seed % 4) as usize];
            let run = run(case, &mut |_, r| random_cuts(&mut rng, r, max));
            check(case, &run, true).map_err(|e| format!("seed {seed}:\n{e}"))?;
        }
        Ok(())
    });
}

/// Every case through `Reassembler`, 40 seeds: the reassembler must lose
/// nothing.
pub fn golden_through_reassembly<P: Protocol>() {
    for_each_case::<P>("reassembled from swapped chunks", |case| {
        if case.variants == Variants::Whole {
            return Ok(());
        }
        for seed in 1..=40 {
            let (run, reassembly) = run_reassembled(case, seed);
            check(case, &run, false).map_err(|e| format!("seed {seed}:\n{e}"))?;
            if reassembly.gaps != 0 || reassembly.overlaps != 0 {
                return Err(format!("seed {seed}: reassembly lost data: {reassembly:?}"));
            }
        }
        Ok(())
    });
}

/// The five golden tests for protocol `$protocol`, as `#[test]`s of the
/// file that invokes this.
#[macro_export]
macro_rules! golden_tests {
    ($protocol:ty) => {
        #[test]
        fn golden_whole() {
            $crate::golden::golden_whole::<$protocol>();
        }

        #[test]
        fn golden_byte_by_byte() {
            $crate::golden::golden_byte_by_byte::<$protocol>();
        }

        #[test]
        fn golden_split_at_every_boundary() {
            $crate::golden::golden_split_at_every_boundary::<$protocol>();
        }

        #[test]
        fn golden_random_pieces() {
            $crate::golden::golden_random_pieces::<$protocol>();
        }

        #[test]
        fn golden_through_reassembly() {
            $crate::golden::golden_through_reassembly::<$protocol>();
        }
    };
}
