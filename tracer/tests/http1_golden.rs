//! Golden byte-stream tests for the HTTP/1 parser.
//!
//! The cases are under `tests/fixtures/http1/`; `golden/mod.rs` says how
//! they are fed (whole, one byte per piece, split once at every byte
//! boundary, in random-sized pieces, through `Reassembler` with chunks
//! swapped and tails truncated: every way must give the same exchanges and
//! counters) and lists the directives every `NAME.expect` may use. The
//! traced process is the server unless `side client` says otherwise.
//! HTTP/1's own directives:
//!
//! ```text
//! mode known|sniff|midstream          Mode given to the parser (known)
//! exchange GET /a 200 req@0 resp@79   an expected exchange, in order: the byte
//!                                     offsets of the request's first byte and
//!                                     of the byte that completed the response
//!                                     (or resp@close); `?` (`req@?`) skips the
//!                                     timestamp
//! state http|unknown|not-http|upgraded
//! ```

mod golden;

use golden::{parse_at, parse_number, Case, Dir, Expected, FinalState, Protocol};
use tracer::protocols::{
    http1::{ConnState, Http1Conn, Mode},
    Exchange, Side,
};

#[derive(Debug)]
struct Http1 {
    mode: Mode,
}

impl Default for Http1 {
    fn default() -> Self {
        Self {
            mode: Mode::KnownHttp,
        }
    }
}

impl Protocol for Http1 {
    const FIXTURES: &'static str = "http1";
    const SIDE: Side = Side::Server;

    type Conn = Http1Conn;
    type State = ConnState;

    fn conn(&self, side: Side) -> Http1Conn {
        Http1Conn::new(side, self.mode)
    }

    fn describe(e: &Exchange) -> String {
        let http = e.http().expect("HTTP/1 yields HTTP calls");
        format!("{} {} {}", http.method, http.path, http.status)
    }

    fn directive(case: &mut Case<Self>, words: &[&str], ctx: &str) -> bool {
        match words {
            ["mode", "known"] => case.own.mode = Mode::KnownHttp,
            ["mode", "sniff"] => case.own.mode = Mode::Sniff,
            ["mode", "midstream"] => case.own.mode = Mode::MidStream,
            ["exchange", method, path, status, req_at, resp_at] => {
                let status: u16 = parse_number(status, "status", ctx);
                case.exchanges.push(Expected {
                    text: format!("{method} {path} {status}"),
                    start: parse_at(req_at, Dir::Req, ctx),
                    end: parse_at(resp_at, Dir::Resp, ctx),
                });
            }
            _ => return false,
        }
        true
    }
}

/// `state http|unknown|not-http|upgraded`.
impl FinalState<Http1Conn> for ConnState {
    const DIRECTIVE: &'static str = "state";

    fn of(conn: &Http1Conn) -> Self {
        conn.state()
    }

    fn parse(word: &str, ctx: &str) -> Self {
        match word {
            "http" => ConnState::Http,
            "unknown" => ConnState::Unknown,
            "not-http" => ConnState::NotHttp,
            "upgraded" => ConnState::Upgraded,
            other => panic!("{ctx}: unknown state {other:?}"),
        }
    }
}

golden_tests!(Http1);
