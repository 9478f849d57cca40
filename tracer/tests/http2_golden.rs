//! Golden byte-stream tests for the HTTP/2 parser.
//!
//! The cases are under `tests/fixtures/http2/`: the raw bytes the client and
//! the server sent. Most are recordings of real servers and clients (see
//! `README.md` there); their expectations come from an independent decoder
//! and the servers' own logs. `golden/mod.rs` says how they are fed (in the
//! recorded steps, one byte per piece, split once at every byte boundary,
//! in random-sized pieces, through `Reassembler` with chunks swapped and
//! tails truncated: every way must give the same exchanges and counters)
//! and lists the directives every `NAME.expect` may use (`streams OTHER`
//! for a variation on a recording, `variants nosplit` for a long one). The
//! traced process is the server unless `side client` says otherwise. The
//! verdict is read before the close. HTTP/2's own directives:
//!
//! ```text
//! mode fresh|midstream                Start given to the parser (fresh)
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
//! ```
//!
//! Also: every recording, mutated, in every mode, never makes the parser
//! panic or report a malformed exchange.

mod golden;

use golden::{
    failure_word, parse_at, parse_number, with_failure, At, Case, Dir, Expected, Protocol, StartAs,
    XorShift,
};
use tracer::protocols::{
    http2::Http2Conn, Call, ConnParser, Exchange, Failure, ParserCounters, Piece, Side, Start,
    Verdict,
};

#[derive(Debug, Default)]
struct Http2 {
    start: StartAs,
}

/// The end of an exchange: `resp@N`, `req@N` (a client's reset), or
/// `resp@close` / `resp@?`.
fn parse_end(text: &str, ctx: &str) -> At {
    if text.starts_with("req@") {
        parse_at(text, Dir::Req, ctx)
    } else {
        parse_at(text, Dir::Resp, ctx)
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

/// An HTTP exchange line or a gRPC one (`call` is what `describe` writes,
/// without the failure).
fn exchange(call: String, req_at: &str, end_at: &str, failure: &[&str], ctx: &str) -> Expected {
    Expected {
        text: with_failure(call, parse_failure(failure.first(), ctx)),
        start: parse_at(req_at, Dir::Req, ctx),
        end: parse_end(end_at, ctx),
    }
}

impl Protocol for Http2 {
    const FIXTURES: &'static str = "http2";
    const SIDE: Side = Side::Server;
    const STATE_BEFORE_CLOSE: bool = true;

    type Conn = Http2Conn;
    type State = Verdict;

    fn conn(&self, side: Side) -> Http2Conn {
        Http2Conn::new(side, self.start.0)
    }

    /// One line per exchange, as the `.expect` files spell them (without
    /// the timestamps).
    fn describe(e: &Exchange) -> String {
        let call = match &e.call {
            Call::Http(h) => format!("{} {} {}", h.method, h.path, h.status),
            Call::Grpc(g) => {
                let status = g.status.map_or_else(|| "-".to_owned(), |s| s.to_string());
                format!("grpc {} {} {status}", g.service, g.method)
            }
            Call::Db(d) => format!("db {d:?}"),
        };
        with_failure(call, e.failure)
    }

    fn directive(case: &mut Case<Self>, words: &[&str], ctx: &str) -> bool {
        match words {
            ["mode", start] => case.own.start = StartAs::parse(start, ctx),
            ["exchange", "grpc", service, method, status, req_at, end_at, failure @ ..]
                if failure.len() <= 1 =>
            {
                let call = format!("grpc {} {} {status}", word(service), word(method));
                case.exchanges
                    .push(exchange(call, req_at, end_at, failure, ctx));
            }
            ["exchange", method, path, status, req_at, end_at, failure @ ..]
                if failure.len() <= 1 =>
            {
                let status: u16 = parse_number(status, "status", ctx);
                let call = format!("{} {} {status}", word(method), word(path));
                case.exchanges
                    .push(exchange(call, req_at, end_at, failure, ctx));
            }
            ["exchanges", count, call @ ..] => {
                let count: usize = parse_number(count, "count", ctx);
                let call: Vec<&str> = call.iter().map(|w| word(w)).collect();
                for _ in 0..count {
                    case.exchanges.push(Expected::untimed(call.join(" ")));
                }
            }
            _ => return false,
        }
        true
    }
}

golden_tests!(Http2);

/// Every recording, mutated (bytes changed, dropped as gaps, pieces cut
/// anywhere, directions interleaved at random), in every mode: no panic,
/// and every exchange is well formed.
#[test]
fn mutated_recordings_never_panic() {
    let (_, names) = golden::fixtures::<Http2>();
    for name in &names {
        let case = golden::load::<Http2>(name);
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
