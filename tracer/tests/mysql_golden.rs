//! Golden byte-stream tests for the MySQL/MariaDB parser.
//!
//! Each case under `tests/fixtures/mysql/` is three files: `NAME.req` and
//! `NAME.resp`, the raw bytes the client sent and received (most recorded
//! from MariaDB 10.11 and its clients through a proxy), and `NAME.expect`,
//! which says how to feed them and what must come out. The streams are fed
//! in the recorded steps, one byte per piece, split once at every byte
//! boundary (within 256 bytes of a long step's ends, every 61st byte
//! between), in random-sized pieces, and through `Reassembler` with chunks
//! swapped and tails truncated; every way must give the same exchanges and
//! counters.
//!
//! `NAME.expect`, one directive per line, `#` starts a comment:
//!
//! ```text
//! side client|server                  which end the traced process is (client)
//! start fresh|midstream               Start given to the parser (fresh)
//! gap req|resp 120..140               these bytes arrive as Piece::Gap
//! hole req|resp 120 999000            a Piece::Gap of 999000 bytes that are not
//!                                     in the file arrives just before byte 120
//! feed req|resp 0..52                 delivery order, by byte range ("52.." = to
//!                                     the end; each direction in order); default:
//!                                     all requests, then all responses
//! close no                            do not call on_close at the end
//! variants all|no-split|whole         which ways to feed (all): no-split skips the
//!                                     split at every byte (large cases); whole
//!                                     feeds only the recorded steps (cases whose
//!                                     meaning depends on piece boundaries)
//! exchange SELECT t1 - req@0 resp@79  an expected exchange, in order: operation,
//!                                     table or -, error number or -, optionally
//!                                     `timeout`/`closed`, then the byte offsets of
//!                                     the request's first byte and of the byte
//!                                     that completed the response (or resp@close);
//!                                     `?` skips the timestamp
//! counters resyncs=0 unmatched_requests=0 unmatched_responses=0 partial=0
//! verdict unknown|speaks|done
//! ```
//!
//! Timestamps: every piece fed gets the next tick, so `req@N` means "the
//! tick of the piece that carried request byte N".

use std::{fmt::Write as _, fs, ops::Range, path::Path};

use tracer::{
    pipeline::reassembly::{Reassembler, ReassemblyCounters},
    protocols::{
        mysql::MysqlConn, Call, ConnParser, Exchange, Failure, ParserCounters, Piece, Side, Start,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variants {
    All,
    NoSplit,
    Whole,
}

#[derive(Debug)]
struct Expected {
    /// `OPERATION TABLE ERROR [FAILURE]` as written in the file.
    text: String,
    req_at: At,
    resp_at: At,
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
        "{ctx}: range {text:?} outside 0..{len}"
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
                .unwrap_or_else(|_| panic!("{ctx}: bad offset {n:?}")),
        ),
    }
}

fn load(dir: &Path, name: &str) -> Case {
    let read = |ext: &str| {
        let path = dir.join(format!("{name}.{ext}"));
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let spec = String::from_utf8(read("expect")).expect("expect file is UTF-8");
    let mut case = Case {
        side: Side::Client,
        start: Start::Fresh,
        req: read("req"),
        resp: read("resp"),
        gaps: Vec::new(),
        holes: Vec::new(),
        feeds: Vec::new(),
        close: true,
        variants: Variants::All,
        exchanges: Vec::new(),
        counters: ParserCounters::default(),
        verdict: None,
    };
    for (number, raw) in spec.lines().enumerate() {
        let ctx = format!("{name}.expect:{}", number + 1);
        let line = raw.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["side", "server"] => case.side = Side::Server,
            ["side", "client"] => case.side = Side::Client,
            ["start", "fresh"] => case.start = Start::Fresh,
            ["start", "midstream"] => case.start = Start::MidStream,
            ["gap", dir, range] => {
                let dir = parse_dir(dir, &ctx);
                let range = parse_range(range, case.stream(dir).len(), &ctx);
                case.gaps.push((dir, range));
            }
            ["hole", dir, at, len] => {
                let dir = parse_dir(dir, &ctx);
                let at = at.parse().unwrap_or_else(|_| panic!("{ctx}: bad offset"));
                let len = len.parse().unwrap_or_else(|_| panic!("{ctx}: bad length"));
                case.holes.push((dir, at, len));
            }
            ["feed", dir, range] => {
                let dir = parse_dir(dir, &ctx);
                let range = parse_range(range, case.stream(dir).len(), &ctx);
                case.feeds.push((dir, range));
            }
            ["close", "no"] => case.close = false,
            ["variants", "all"] => case.variants = Variants::All,
            ["variants", "no-split"] => case.variants = Variants::NoSplit,
            ["variants", "whole"] => case.variants = Variants::Whole,
            ["exchange", rest @ ..] if rest.len() >= 5 => {
                let (fields, ats) = rest.split_at(rest.len() - 2);
                assert!(
                    fields.len() == 3
                        || (fields.len() == 4 && ["timeout", "closed"].contains(&fields[3])),
                    "{ctx}: exchange OP TABLE ERROR [timeout|closed] req@N resp@M"
                );
                case.exchanges.push(Expected {
                    text: fields.join(" "),
                    req_at: parse_at(ats[0], "req@", &ctx),
                    resp_at: parse_at(ats[1], "resp@", &ctx),
                });
            }
            ["counters", counts @ ..] => {
                for count in counts {
                    let (key, value) = count
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{ctx}: counter {count:?} must be key=value"));
                    let value = value.parse().unwrap_or_else(|_| panic!("{ctx}: bad count"));
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
                    "unknown" => Verdict::Unknown,
                    "speaks" => Verdict::Speaks,
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

/// An exchange as the expect file writes it.
fn describe(e: &Exchange) -> String {
    let Call::Db(db) = &e.call else {
        return format!("{:?}", e.call);
    };
    let mut text = format!(
        "{} {} {}",
        db.operation,
        db.collection.as_deref().unwrap_or("-"),
        db.error.as_deref().unwrap_or("-")
    );
    match e.failure {
        Some(Failure::Timeout) => text.push_str(" timeout"),
        Some(Failure::ConnectionClosed) => text.push_str(" closed"),
        Some(other) => text.push_str(&format!(" {other:?}")),
        None => {}
    }
    text
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
    let mut conn = MysqlConn::new(case.side, case.start);
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

/// Compares a run with the expectations; returns a description of every
/// difference.
fn check(case: &Case, run: &Run, timestamps: bool) -> Result<(), String> {
    let mut errors = String::new();
    let got: Vec<String> = run.exchanges.iter().map(describe).collect();
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
    if let Some(verdict) = case.verdict {
        if run.verdict != verdict {
            let _ = writeln!(errors, "verdict: got {:?}, want {verdict:?}", run.verdict);
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
                    "exchange {i}: end_ns {} but response byte {:?} came at {end:?}",
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

/// Feeds the case through one `Reassembler` per direction: random chunks,
/// gaps as uncaptured tails or capture-less chunks, neighbours swapped.
/// Ticks then depend on the reordering, so only exchanges and counters are
/// compared.
fn run_reassembled(case: &Case, seed: u64) -> (Run, ReassemblyCounters) {
    let mut rng = XorShift::new(seed);
    let mut conn = MysqlConn::new(case.side, case.start);
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mysql");
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
    for_each_case("recorded steps", |case| {
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

/// Where a step is split in two: everywhere in a step of up to 1 KiB; in
/// a longer one (rows, mostly) everywhere within 256 bytes of its ends and
/// at every 61st byte between, to keep the test linear in practice.
fn split_points(range: Range<usize>) -> impl Iterator<Item = usize> {
    const EDGE: usize = 256;
    let long = range.len() > 4 * EDGE;
    (range.start + 1..range.end).filter(move |&at| {
        !long
            || at < range.start + EDGE
            || at + EDGE > range.end
            || (at - range.start).is_multiple_of(61)
    })
}

#[test]
fn golden_split_at_every_boundary() {
    for_each_case("split once at every byte", |case| {
        if case.variants != Variants::All {
            return Ok(());
        }
        for (step, (_, range)) in case.feeds.iter().enumerate() {
            for at in split_points(range.clone()) {
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
