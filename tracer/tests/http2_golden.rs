//! Golden byte-stream tests for the HTTP/2 parser.
//!
//! Each case under `tests/fixtures/http2/` is three files: `NAME.req` and
//! `NAME.resp`, the raw bytes the client and the server sent, and
//! `NAME.expect`, which says how to feed them and what must come out. The
//! streams are fed in the recorded steps, one byte per piece, split once at
//! every byte boundary, in random-sized pieces, and through `Reassembler`
//! with chunks swapped and tails truncated; every way must give the same
//! exchanges and counters. Most fixtures are recordings of real servers and
//! clients (see `README.md` there); their expectations come from an
//! independent decoder and the servers' own logs.
//!
//! `NAME.expect`, one directive per line, `#` starts a comment:
//!
//! ```text
//! streams OTHER                       the byte streams are OTHER.req and
//!                                     OTHER.resp (a variation on a recording)
//! side server|client                  which end the traced process is (server)
//! mode fresh|midstream                Start given to the parser (fresh)
//! gap req|resp 120..140               these bytes arrive as Piece::Gap
//! hole req|resp 120 999000            a Piece::Gap of 999000 bytes that are not
//!                                     in the file arrives just before byte 120
//!                                     (with it: `resp@120` is its tick)
//! feed req|resp 0..52                 delivery order, by byte range ("52.." = to
//!                                     the end; each direction in order); default:
//!                                     all requests, then all responses
//! close no                            do not call on_close at the end
//! variants whole|nosplit              feed only whole steps / skip the split at
//!                                     every byte (for long recordings)
//! exchange GET /a 200 req@0 resp@79   an expected HTTP exchange, in order: the
//!                                     byte offsets of the request's first byte
//!                                     and of the byte that completed it
//!                                     (`req@N` also names the end when a client
//!                                     reset did; `resp@close`; `?` skips it);
//!                                     `""` is an empty method or path
//! exchange grpc pkg.Svc Method 0 req@0 resp@79
//!                                     an expected gRPC call; `-` for no status
//!   ... reset|closed|timeout          a trailing word: the exchange's failure
//! exchanges 200 GET / 200             that many exchanges alike, timestamps
//!                                     not checked
//! counters resyncs=0 unmatched_requests=0 unmatched_responses=0 partial=0
//! verdict speaks|unknown|done
//! ```
//!
//! Timestamps: every piece fed gets the next tick, so `req@N` means "the
//! tick of the piece that carried request byte N".

use std::{fmt::Write as _, fs, ops::Range, path::Path};

use tracer::{
    pipeline::reassembly::{Reassembler, ReassemblyCounters},
    protocols::{
        http2::Http2Conn, Call, ConnParser, Exchange, Failure, ParserCounters, Piece, Side, Start,
        Verdict,
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Req,
    Resp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Byte(usize),
    Close,
    Any,
}

#[derive(Debug)]
struct Expected {
    /// As `describe` writes an exchange.
    call: String,
    req_at: At,
    /// The end, in the response stream or (a client's reset) the request's.
    end_at: (Dir, At),
}

#[derive(Debug)]
struct Case {
    side: Side,
    start: Start,
    req: Vec<u8>,
    resp: Vec<u8>,
    gaps: Vec<(Dir, Range<usize>)>,
    holes: Vec<(Dir, usize, u64)>,
    feeds: Vec<(Dir, Range<usize>)>,
    close: bool,
    variants: Variants,
    exchanges: Vec<Expected>,
    counters: ParserCounters,
    verdict: Option<Verdict>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variants {
    All,
    /// All but the split at every byte, which is quadratic in the length.
    NoSplit,
    Whole,
}

impl Case {
    fn stream(&self, dir: Dir) -> &[u8] {
        match dir {
            Dir::Req => &self.req,
            Dir::Resp => &self.resp,
        }
    }

    /// Outbound flag for `dir` as the traced process sees it.
    fn outbound(&self, dir: Dir) -> bool {
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

fn parse_dir(word: &str, ctx: &str) -> Dir {
    match word {
        "req" => Dir::Req,
        "resp" => Dir::Resp,
        other => panic!("{ctx}: direction must be req or resp, not {other:?}"),
    }
}

fn parse_range(text: &str, len: usize, ctx: &str) -> Range<usize> {
    let (a, b) = text
        .split_once("..")
        .unwrap_or_else(|| panic!("{ctx}: range {text:?} must look like A..B"));
    let num = |s: &str, default: usize| {
        if s.is_empty() {
            default
        } else {
            s.parse()
                .unwrap_or_else(|_| panic!("{ctx}: bad number {s:?}"))
        }
    };
    let range = num(a, 0)..num(b, len);
    assert!(
        range.start <= range.end && range.end <= len,
        "{ctx}: range {text:?} outside a stream of {len} bytes"
    );
    range
}

fn parse_at(text: &str, prefix: &str, ctx: &str) -> At {
    let value = text
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{ctx}: expected {prefix}N, got {text:?}"));
    match value {
        "?" => At::Any,
        "close" => At::Close,
        n => At::Byte(
            n.parse()
                .unwrap_or_else(|_| panic!("{ctx}: bad offset {text:?}")),
        ),
    }
}

/// The end of an exchange: `resp@N`, `req@N` (a client's reset), or
/// `resp@close` / `resp@?`.
fn parse_end(text: &str, ctx: &str) -> (Dir, At) {
    if text.starts_with("req@") {
        (Dir::Req, parse_at(text, "req@", ctx))
    } else {
        (Dir::Resp, parse_at(text, "resp@", ctx))
    }
}

fn word(text: &str) -> &str {
    if text == "\"\"" {
        ""
    } else {
        text
    }
}

fn parse_failure(word: Option<&&str>, ctx: &str) -> Option<Failure> {
    let all = [Failure::Reset, Failure::ConnectionClosed, Failure::Timeout];
    word.map(|w| {
        all.into_iter()
            .find(|f| failure_word(*f) == *w)
            .unwrap_or_else(|| panic!("{ctx}: unknown failure {w:?}"))
    })
}

/// One line per exchange, as the `.expect` files spell them (without the
/// timestamps).
fn describe(call: &Call, failure: Option<Failure>) -> String {
    let call = match call {
        Call::Http(h) => format!("{} {} {}", h.method, h.path, h.status),
        Call::Grpc(g) => {
            let status = g.status.map_or_else(|| "-".to_owned(), |s| s.to_string());
            format!("grpc {} {} {status}", g.service, g.method)
        }
        Call::Db(d) => format!("db {d:?}"),
    };
    describe_failure(call, failure)
}

fn load(dir: &Path, name: &str) -> Case {
    let read = |ext: &str| {
        let path = dir.join(format!("{name}.{ext}"));
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let expect = String::from_utf8(read("expect")).expect("expect files are UTF-8");
    let source = expect
        .lines()
        .find_map(|line| line.strip_prefix("streams "))
        .map_or(name, str::trim);
    let read_stream = |ext: &str| {
        let path = dir.join(format!("{source}.{ext}"));
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let req = read_stream("req");
    let resp = read_stream("resp");
    let mut case = Case {
        side: Side::Server,
        start: Start::Fresh,
        req,
        resp,
        gaps: Vec::new(),
        holes: Vec::new(),
        feeds: Vec::new(),
        close: true,
        variants: Variants::All,
        exchanges: Vec::new(),
        counters: ParserCounters::default(),
        verdict: None,
    };
    for (number, line) in expect.lines().enumerate() {
        let ctx = format!("{name}.expect:{}", number + 1);
        let line = line.split('#').next().unwrap_or_default().trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] | ["streams", _] => {}
            ["side", "server"] => case.side = Side::Server,
            ["side", "client"] => case.side = Side::Client,
            ["mode", "fresh"] => case.start = Start::Fresh,
            ["mode", "midstream"] => case.start = Start::MidStream,
            ["close", "no"] => case.close = false,
            ["variants", "whole"] => case.variants = Variants::Whole,
            ["variants", "nosplit"] => case.variants = Variants::NoSplit,
            ["hole", dir, at, len] => {
                let dir = parse_dir(dir, &ctx);
                let at: usize = at.parse().unwrap_or_else(|_| panic!("{ctx}: bad offset"));
                let len: u64 = len.parse().unwrap_or_else(|_| panic!("{ctx}: bad length"));
                assert!(
                    at < case.stream(dir).len() && len > 0,
                    "{ctx}: hole must precede a byte"
                );
                case.holes.push((dir, at, len));
            }
            ["gap", dir, range] | ["feed", dir, range] => {
                let dir = parse_dir(dir, &ctx);
                let range = parse_range(range, case.stream(dir).len(), &ctx);
                if words[0] == "gap" {
                    case.gaps.push((dir, range));
                } else {
                    case.feeds.push((dir, range));
                }
            }
            ["exchange", "grpc", service, method, status, req_at, end_at, failure @ ..]
                if failure.len() <= 1 =>
            {
                let call = format!("grpc {} {} {status}", word(service), word(method));
                let failure = parse_failure(failure.first(), &ctx);
                case.exchanges.push(Expected {
                    call: describe_failure(call, failure),
                    req_at: parse_at(req_at, "req@", &ctx),
                    end_at: parse_end(end_at, &ctx),
                });
            }
            ["exchange", method, path, status, req_at, end_at, failure @ ..]
                if failure.len() <= 1 =>
            {
                let status: u16 = status
                    .parse()
                    .unwrap_or_else(|_| panic!("{ctx}: bad status"));
                let call = format!("{} {} {status}", word(method), word(path));
                let failure = parse_failure(failure.first(), &ctx);
                case.exchanges.push(Expected {
                    call: describe_failure(call, failure),
                    req_at: parse_at(req_at, "req@", &ctx),
                    end_at: parse_end(end_at, &ctx),
                });
            }
            ["exchanges", count, call @ ..] => {
                let count: usize = count.parse().unwrap_or_else(|_| panic!("{ctx}: bad count"));
                let call: Vec<&str> = call.iter().map(|w| word(w)).collect();
                for _ in 0..count {
                    case.exchanges.push(Expected {
                        call: call.join(" "),
                        req_at: At::Any,
                        end_at: (Dir::Resp, At::Any),
                    });
                }
            }
            ["counters", rest @ ..] => {
                for item in rest {
                    let (key, value) = item
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{ctx}: counters take key=value"));
                    let value: u64 = value.parse().unwrap_or_else(|_| panic!("{ctx}: bad count"));
                    match key {
                        "resyncs" => case.counters.resyncs = value,
                        "unmatched_requests" => case.counters.unmatched_requests = value,
                        "unmatched_responses" => case.counters.unmatched_responses = value,
                        "partial" => case.counters.partial = value,
                        other => panic!("{ctx}: unknown counter {other:?}"),
                    }
                }
            }
            ["verdict", verdict] => {
                case.verdict = Some(match *verdict {
                    "speaks" => Verdict::Speaks,
                    "unknown" => Verdict::Unknown,
                    "done" => Verdict::Done,
                    other => panic!("{ctx}: unknown verdict {other:?}"),
                })
            }
            _ => panic!("{ctx}: cannot read {line:?}"),
        }
    }
    if case.feeds.is_empty() {
        case.feeds = vec![
            (Dir::Req, 0..case.req.len()),
            (Dir::Resp, 0..case.resp.len()),
        ];
    }
    for dir in [Dir::Req, Dir::Resp] {
        let mut next = 0;
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

/// `call` with the trailing failure word of `describe`.
fn describe_failure(call: String, failure: Option<Failure>) -> String {
    match failure {
        None => call,
        Some(f) => format!("{call} {}", failure_word(f)),
    }
}

fn failure_word(failure: Failure) -> &'static str {
    match failure {
        Failure::Reset => "reset",
        Failure::ConnectionClosed => "closed",
        Failure::Timeout => "timeout",
    }
}

/// What one way of feeding a case produced.
struct Run {
    exchanges: Vec<Exchange>,
    counters: ParserCounters,
    verdict: Verdict,
    /// (direction, byte range, tick) of every piece fed.
    pieces: Vec<(Dir, Range<usize>, u64)>,
    close_ts: u64,
}

impl Run {
    fn tick_of(&self, dir: Dir, byte: usize) -> Option<u64> {
        self.pieces
            .iter()
            .find(|(d, r, _)| *d == dir && r.contains(&byte))
            .map(|(_, _, ts)| *ts)
    }
}

/// Feeds `case`, cutting each feed step into syscall-sized pieces with
/// `cut(step index, step range)`.
fn run(case: &Case, cut: &mut dyn FnMut(usize, Range<usize>) -> Vec<Range<usize>>) -> Run {
    let mut conn = Http2Conn::new(case.side, case.start);
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
    let verdict = conn.verdict();
    if case.close {
        conn.on_close(ts, &mut counters, &mut exchanges);
    }
    Run {
        exchanges,
        counters,
        verdict,
        pieces,
        close_ts: ts,
    }
}

/// The tick an expectation names, if it names one.
fn expected_tick(run: &Run, dir: Dir, at: At, errors: &mut String) -> Option<u64> {
    match at {
        At::Byte(n) => {
            let tick = run.tick_of(dir, n);
            if tick.is_none() {
                let _ = writeln!(errors, "no piece of {dir:?} carried byte {n}");
            }
            tick
        }
        At::Close => Some(run.close_ts),
        At::Any => None,
    }
}

/// Compares a run with the expectations; returns a description of every
/// difference.
fn check(case: &Case, run: &Run, timestamps: bool) -> Result<(), String> {
    let mut errors = String::new();
    let got: Vec<String> = run
        .exchanges
        .iter()
        .map(|e| describe(&e.call, e.failure))
        .collect();
    let want: Vec<String> = case.exchanges.iter().map(|e| e.call.clone()).collect();
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
    if let Some(verdict) = case.verdict {
        if run.verdict != verdict {
            let _ = writeln!(errors, "verdict: got {:?}, want {verdict:?}", run.verdict);
        }
    }
    if timestamps && got == want {
        for (i, (e, x)) in run.exchanges.iter().zip(&case.exchanges).enumerate() {
            let start = expected_tick(run, Dir::Req, x.req_at, &mut errors);
            let end = expected_tick(run, x.end_at.0, x.end_at.1, &mut errors);
            if start.is_some_and(|s| s != e.start_ns) {
                let _ = writeln!(
                    errors,
                    "exchange {i}: start_ns {} but request byte {:?} came at {start:?}",
                    e.start_ns, x.req_at
                );
            }
            if end.is_some_and(|s| s != e.end_ns) {
                let _ = writeln!(
                    errors,
                    "exchange {i}: end_ns {} but byte {:?} came at {end:?}",
                    e.end_ns, x.end_at
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
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn random_cuts(rng: &mut XorShift, range: Range<usize>, max: usize) -> Vec<Range<usize>> {
    let mut cuts = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let len = (rng.below(max) + 1).min(range.end - at);
        cuts.push(at..at + len);
        at += len;
    }
    cuts
}

fn whole(_: usize, range: Range<usize>) -> Vec<Range<usize>> {
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
fn run_reassembled(case: &Case, seed: u64) -> (Run, ReassemblyCounters) {
    let mut rng = XorShift::new(seed);
    let mut conn = Http2Conn::new(case.side, case.start);
    let mut counters = ParserCounters::default();
    let mut reassembly = ReassemblyCounters::default();
    let mut exchanges = Vec::new();
    let mut streams = [Reassembler::new(0), Reassembler::new(0)];
    let mut positions = [0u64; 2];
    let mut ts = 0;
    for (dir, range) in &case.feeds {
        let dir = *dir;
        let stream = case.stream(dir);
        // (stream position, file range captured, orig_len), in order; gaps
        // become uncaptured tails or chunks with nothing captured.
        let mut chunks: Vec<(u64, Range<usize>, u64)> = Vec::new();
        for piece in random_cuts(&mut rng, range.clone(), 300) {
            for part in case.parts(dir, piece) {
                let len = part.stream_len();
                let pos = positions[usize::from(dir == Dir::Resp)];
                positions[usize::from(dir == Dir::Resp)] += len;
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
        let stream_index = usize::from(dir == Dir::Resp);
        for (pos, captured, orig) in chunks {
            ts += 1;
            streams[stream_index].push(
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
        let outbound = case.outbound(if index == 0 { Dir::Req } else { Dir::Resp });
        stream.flush(&mut reassembly, &mut |piece| {
            conn.on_piece(outbound, piece, ts, &mut counters, &mut exchanges)
        });
    }
    let verdict = conn.verdict();
    if case.close {
        conn.on_close(ts, &mut counters, &mut exchanges);
    }
    let run = Run {
        exchanges,
        counters,
        verdict,
        pieces: Vec::new(),
        close_ts: ts,
    };
    (run, reassembly)
}

fn fixtures() -> (std::path::PathBuf, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/http2");
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

/// Runs every fixture in every way; reports all failures at once.
fn for_each_case(variant: &str, mut test: impl FnMut(&Case) -> Result<(), String>) {
    let (dir, names) = fixtures();
    let mut failures = String::new();
    for name in &names {
        let case = load(&dir, name);
        if let Err(e) = test(&case) {
            let _ = writeln!(failures, "--- {name} ({variant}):\n{e}");
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn golden_whole() {
    for_each_case("whole steps", |case| {
        check(case, &run(case, &mut whole), true)
    });
}

#[test]
fn golden_byte_by_byte() {
    for_each_case("one byte per piece", |case| {
        if case.variants == Variants::Whole {
            return Ok(());
        }
        let run = run(case, &mut |_, range: Range<usize>| {
            range.map(|i| i..i + 1).collect()
        });
        check(case, &run, true)
    });
}

#[test]
fn golden_split_at_every_boundary() {
    for_each_case("split once at every byte", |case| {
        if case.variants != Variants::All {
            return Ok(());
        }
        for (step, (_, range)) in case.feeds.iter().enumerate() {
            for at in range.start + 1..range.end {
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

#[test]
fn golden_random_pieces() {
    for_each_case("random pieces", |case| {
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

#[test]
fn golden_through_reassembly() {
    for_each_case("reassembled from swapped chunks", |case| {
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

/// Every recording, mutated (bytes changed, dropped as gaps, pieces cut
/// anywhere, directions interleaved at random), in every mode: no panic,
/// and every exchange is well formed.
#[test]
fn mutated_recordings_never_panic() {
    let (dir, names) = fixtures();
    for name in &names {
        let case = load(&dir, name);
        for seed in 1..=30 {
            let mut rng = XorShift::new(seed);
            let mut streams = [case.req.clone(), case.resp.clone()];
            for stream in &mut streams {
                for _ in 0..rng.below(6) {
                    let at = rng.below(stream.len());
                    if let Some(b) = stream.get_mut(at) {
                        *b = rng.next() as u8;
                    }
                }
            }
            let start = if seed % 3 == 0 {
                Start::MidStream
            } else {
                Start::Fresh
            };
            let mut conn = Http2Conn::new(case.side, start);
            let mut counters = ParserCounters::default();
            let mut exchanges = Vec::new();
            let mut at = [0usize; 2];
            let mut ts = 0;
            while at[0] < streams[0].len() || at[1] < streams[1].len() {
                let d = rng.below(2);
                let Some(rest) = streams[d].get(at[d]..).filter(|r| !r.is_empty()) else {
                    continue;
                };
                let max = [3, 30, 700, 5000][rng.below(4)];
                let n = (rng.below(max) + 1).min(rest.len());
                ts += 1;
                let outbound = case.outbound(if d == 0 { Dir::Req } else { Dir::Resp });
                let piece = if rng.below(12) == 0 {
                    Piece::Gap(n as u64)
                } else {
                    Piece::Data(&rest[..n])
                };
                conn.on_piece(outbound, piece, ts, &mut counters, &mut exchanges);
                if rng.below(50) == 0 {
                    conn.expire(ts, rng.next() % 20, &mut exchanges);
                }
                at[d] += n;
            }
            conn.on_close(ts + 1, &mut counters, &mut exchanges);
            for e in &exchanges {
                assert!(e.start_ns <= e.end_ns, "{name} seed {seed}: {e:?}");
                if let Call::Http(h) = &e.call {
                    assert!(!h.path.contains('?'), "{name} seed {seed}: {e:?}");
                }
            }
        }
    }
}
