//! Golden byte-stream tests for the Redis parser.
//!
//! Each case under `tests/fixtures/redis/` is `NAME.expect`, which says how
//! to feed two byte streams and what must come out, and (unless it borrows
//! another case's) `NAME.req` and `NAME.resp`, the raw bytes of the request
//! and reply directions. Most streams were recorded from redis-server 7.0
//! and its own clients (redis-benchmark, redis-cli) or a raw-socket script
//! through a recording proxy. The streams are fed whole, one byte per
//! piece, split once at every byte boundary (a sample of them in the big
//! cases), in random-sized pieces, and through `Reassembler` with chunks
//! swapped; every way must give the same exchanges and counters.
//!
//! `NAME.expect`, one directive per line, `#` starts a comment:
//!
//! ```text
//! streams OTHER                        use OTHER.req and OTHER.resp
//! side server|client                   which end the traced process is (client)
//! start fresh|midstream                how the parser starts (fresh)
//! from req|resp 120                    bytes before 120 are never delivered
//! gap req|resp 120..140                these bytes arrive as Piece::Gap
//! hole req|resp 120 999000             a Piece::Gap of 999000 bytes that are
//!                                      not in the file arrives just before
//!                                      byte 120
//! feed req|resp 0..52                  delivery order, by byte range ("52.." =
//!                                      to the end; each direction in order);
//!                                      default: all requests, then all replies
//! close no                             do not call on_close at the end
//! variants whole                       feed only whole steps (for cases whose
//!                                      meaning depends on piece boundaries)
//! exchange GET - req@0 resp@79         an expected exchange, in order: the
//!                                      operation, the error (`-`: none), the
//!                                      byte offsets of the request's first
//!                                      byte and of the byte that completed
//!                                      the reply (or resp@close; `?` skips
//!                                      the timestamp), and optionally
//!                                      `closed` or `timeout` for a failure
//! many 112 SET -                       that many exchanges, timestamps unchecked
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
        redis::RedisConn, Call, ConnParser, Exchange, Failure, ParserCounters, Piece, Side, Start,
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
    operation: String,
    error: Option<String>,
    failure: Option<Failure>,
    req_at: At,
    resp_at: At,
}

#[derive(Debug)]
struct Case {
    side: Side,
    start: Start,
    req: Vec<u8>,
    resp: Vec<u8>,
    from: [usize; 2],
    gaps: Vec<(Dir, Range<usize>)>,
    holes: Vec<(Dir, usize, u64)>,
    feeds: Vec<(Dir, Range<usize>)>,
    close: bool,
    all_variants: bool,
    exchanges: Vec<Expected>,
    counters: ParserCounters,
    verdict: Option<Verdict>,
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

fn parse_error(text: &str) -> Option<String> {
    (text != "-").then(|| text.to_owned())
}

fn load(dir: &Path, name: &str) -> Case {
    let expect_path = dir.join(format!("{name}.expect"));
    let expect = fs::read_to_string(&expect_path)
        .unwrap_or_else(|e| panic!("{}: {e}", expect_path.display()));
    let mut streams = name.to_owned();
    let mut lines = Vec::new();
    for (number, line) in expect.lines().enumerate() {
        let ctx = format!("{name}.expect:{}", number + 1);
        let line = line.split('#').next().unwrap_or_default().trim().to_owned();
        if let Some(other) = line.strip_prefix("streams ") {
            streams = other.trim().to_owned();
        } else {
            lines.push((ctx, line));
        }
    }
    let read = |ext: &str| {
        let path = dir.join(format!("{streams}.{ext}"));
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let mut case = Case {
        side: Side::Client,
        start: Start::Fresh,
        req: read("req"),
        resp: read("resp"),
        from: [0, 0],
        gaps: Vec::new(),
        holes: Vec::new(),
        feeds: Vec::new(),
        close: true,
        all_variants: true,
        exchanges: Vec::new(),
        counters: ParserCounters::default(),
        verdict: None,
    };
    for (ctx, line) in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["side", "server"] => case.side = Side::Server,
            ["side", "client"] => case.side = Side::Client,
            ["start", "fresh"] => case.start = Start::Fresh,
            ["start", "midstream"] => case.start = Start::MidStream,
            ["close", "no"] => case.close = false,
            ["variants", "whole"] => case.all_variants = false,
            ["from", dir, at] => {
                let dir = parse_dir(dir, ctx);
                let at: usize = at.parse().unwrap_or_else(|_| panic!("{ctx}: bad offset"));
                assert!(at <= case.stream(dir).len(), "{ctx}: past the end");
                case.from[usize::from(dir == Dir::Resp)] = at;
            }
            ["hole", dir, at, len] => {
                let dir = parse_dir(dir, ctx);
                let at: usize = at.parse().unwrap_or_else(|_| panic!("{ctx}: bad offset"));
                let len: u64 = len.parse().unwrap_or_else(|_| panic!("{ctx}: bad length"));
                assert!(
                    at < case.stream(dir).len() && len > 0,
                    "{ctx}: hole must precede a byte"
                );
                case.holes.push((dir, at, len));
            }
            ["gap", dir, range] | ["feed", dir, range] => {
                let dir = parse_dir(dir, ctx);
                let range = parse_range(range, case.stream(dir).len(), ctx);
                if words[0] == "gap" {
                    case.gaps.push((dir, range));
                } else {
                    case.feeds.push((dir, range));
                }
            }
            ["exchange", op, error, req_at, resp_at, failure @ ..] => {
                let failure = match failure {
                    [] => None,
                    ["closed"] => Some(Failure::ConnectionClosed),
                    ["timeout"] => Some(Failure::Timeout),
                    _ => panic!("{ctx}: failure must be closed or timeout"),
                };
                case.exchanges.push(Expected {
                    operation: (*op).to_owned(),
                    error: parse_error(error),
                    failure,
                    req_at: parse_at(req_at, "req@", ctx),
                    resp_at: parse_at(resp_at, "resp@", ctx),
                });
            }
            ["many", count, op, error] => {
                let count: usize = count.parse().unwrap_or_else(|_| panic!("{ctx}: bad count"));
                for _ in 0..count {
                    case.exchanges.push(Expected {
                        operation: (*op).to_owned(),
                        error: parse_error(error),
                        failure: None,
                        req_at: At::Any,
                        resp_at: At::Any,
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
            (Dir::Req, case.from[0]..case.req.len()),
            (Dir::Resp, case.from[1]..case.resp.len()),
        ];
    }
    for dir in [Dir::Req, Dir::Resp] {
        let mut next = case.from[usize::from(dir == Dir::Resp)];
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
    let mut conn = RedisConn::new(case.side, case.start);
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
    if case.close {
        conn.on_close(ts, &mut counters, &mut exchanges);
    }
    Run {
        exchanges,
        counters,
        verdict: conn.verdict(),
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

fn describe(e: &Exchange) -> String {
    let Call::Db(db) = &e.call else {
        return format!("not a database call: {e:?}");
    };
    let mut text = format!("{} {}", db.operation, db.error.as_deref().unwrap_or("-"));
    if db.collection.is_some() || db.system.as_str() != "redis" {
        let _ = write!(text, " {:?} {:?}", db.system, db.collection);
    }
    match e.failure {
        Some(Failure::ConnectionClosed) => text.push_str(" closed"),
        Some(Failure::Timeout) => text.push_str(" timeout"),
        Some(other) => {
            let _ = write!(text, " {other:?}");
        }
        None => {}
    }
    text
}

fn describe_expected(x: &Expected) -> String {
    let mut text = format!("{} {}", x.operation, x.error.as_deref().unwrap_or("-"));
    match x.failure {
        Some(Failure::ConnectionClosed) => text.push_str(" closed"),
        Some(Failure::Timeout) => text.push_str(" timeout"),
        _ => {}
    }
    text
}

/// Compares a run with the expectations; returns a description of every
/// difference.
fn check(case: &Case, run: &Run, timestamps: bool) -> Result<(), String> {
    let mut errors = String::new();
    let got: Vec<String> = run.exchanges.iter().map(describe).collect();
    let want: Vec<String> = case.exchanges.iter().map(describe_expected).collect();
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
    for e in &run.exchanges {
        if e.start_ns > e.end_ns {
            let _ = writeln!(errors, "exchange ends before it starts: {e:?}");
        }
    }
    if timestamps && got == want {
        for (i, (e, x)) in run.exchanges.iter().zip(&case.exchanges).enumerate() {
            let start = expected_tick(run, Dir::Req, x.req_at, &mut errors);
            let end = expected_tick(run, Dir::Resp, x.resp_at, &mut errors);
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
                    "exchange {i}: end_ns {} but reply byte {:?} came at {end:?}",
                    e.end_ns, x.resp_at
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

/// Most single splits tried per case: each re-runs the whole case, and
/// the pipelined fixtures have thousands of boundaries (every boundary is
/// still exercised by the byte-by-byte variant).
const SPLIT_BUDGET: usize = 2000;

/// Split points tried in a step: every boundary if the case has few, else
/// the 20 at each end of the step and an even spread between.
fn split_points(range: &Range<usize>, case_boundaries: usize) -> Vec<usize> {
    let inner = range.start + 1..range.end;
    let stride = case_boundaries.div_ceil(SPLIT_BUDGET).max(1);
    inner
        .clone()
        .filter(|&at| at < inner.start + 20 || at + 20 >= inner.end || at % stride == 0)
        .collect()
}

/// Feeds the case through one `Reassembler` per direction: random chunks,
/// gaps as uncaptured tails or capture-less chunks, neighbours swapped.
/// Ticks then depend on the reordering, so only exchanges and counters are
/// compared.
fn run_reassembled(case: &Case, seed: u64) -> (Run, ReassemblyCounters) {
    let mut rng = XorShift::new(seed);
    let mut conn = RedisConn::new(case.side, case.start);
    let mut counters = ParserCounters::default();
    let mut reassembly = ReassemblyCounters::default();
    let mut exchanges = Vec::new();
    let mut streams = [
        Reassembler::new(case.from[0] as u64),
        Reassembler::new(case.from[1] as u64),
    ];
    let mut positions = [case.from[0] as u64, case.from[1] as u64];
    let mut ts = 0;
    for (dir, range) in &case.feeds {
        let dir = *dir;
        let stream = case.stream(dir);
        let index = usize::from(dir == Dir::Resp);
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
        let outbound = case.outbound(if index == 0 { Dir::Req } else { Dir::Resp });
        stream.flush(&mut reassembly, &mut |piece| {
            conn.on_piece(outbound, piece, ts, &mut counters, &mut exchanges)
        });
    }
    if case.close {
        conn.on_close(ts, &mut counters, &mut exchanges);
    }
    let run = Run {
        exchanges,
        counters,
        verdict: conn.verdict(),
        pieces: Vec::new(),
        close_ts: ts,
    };
    (run, reassembly)
}

fn fixtures() -> (std::path::PathBuf, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redis");
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
        if !case.all_variants {
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
        if !case.all_variants {
            return Ok(());
        }
        let boundaries = case.feeds.iter().map(|(_, r)| r.len()).sum();
        for (step, (_, range)) in case.feeds.iter().enumerate() {
            for at in split_points(range, boundaries) {
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
        if !case.all_variants {
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
        if !case.all_variants {
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
