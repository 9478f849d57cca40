//! Golden byte-stream tests for the Redis parser.
//!
//! The cases are under `tests/fixtures/redis/`: most streams were recorded
//! from redis-server 7.0 and its own clients (redis-benchmark, redis-cli)
//! or a raw-socket script through a recording proxy; several cases borrow
//! another's streams (`streams`). `golden/mod.rs` says how they are fed
//! (whole, one byte per piece, split once at step boundaries, in
//! random-sized pieces, through `Reassembler` with chunks swapped: every way
//! must give the same exchanges and counters) and lists the directives
//! every `NAME.expect` may use. The single splits are a sample in the big
//! cases: about 2000 a case, always the 20 at each end of a step. Every
//! exchange must also end no earlier than it starts. The traced process is
//! the client unless `side server` says otherwise. Redis's own directives:
//!
//! ```text
//! start fresh|midstream                how the parser starts (fresh)
//! exchange GET - req@0 resp@79         an expected exchange, in order: the
//!                                      operation, the error (`-`: none), the
//!                                      byte offsets of the request's first
//!                                      byte and of the byte that completed
//!                                      the reply (or resp@close; `req@?`
//!                                      skips the timestamp), and optionally
//!                                      `closed` or `timeout` for a failure
//! many 112 SET -                       that many exchanges, timestamps unchecked
//! ```

mod golden;

use std::fmt::Write as _;

use golden::{
    parse_at, parse_number, with_failure, Case, Dir, Expected, Protocol, Run, Splits, StartAs,
};
use tracer::protocols::{redis::RedisConn, Call, Exchange, Side, Verdict};

#[derive(Debug, Default)]
struct Redis {
    start: StartAs,
}

impl Protocol for Redis {
    const FIXTURES: &'static str = "redis";
    const SIDE: Side = Side::Client;
    // The pipelined fixtures have thousands of boundaries.
    const SPLITS: Splits = Splits::Budget {
        budget: 2000,
        edge: 20,
    };

    type Conn = RedisConn;
    type State = Verdict;

    fn conn(&self, side: Side) -> RedisConn {
        RedisConn::new(side, self.start.0)
    }

    /// `OP ERROR [closed|timeout]`, and the system and collection when they
    /// are not Redis's and none.
    fn describe(e: &Exchange) -> String {
        let Call::Db(db) = &e.call else {
            return format!("not a database call: {e:?}");
        };
        let mut text = format!("{} {}", db.operation, db.error.as_deref().unwrap_or("-"));
        if db.collection.is_some() || db.system.as_str() != "redis" {
            let _ = write!(text, " {:?} {:?}", db.system, db.collection);
        }
        with_failure(text, e.failure)
    }

    fn directive(case: &mut Case<Self>, words: &[&str], ctx: &str) -> bool {
        match words {
            ["start", start] => case.own.start = StartAs::parse(start, ctx),
            ["exchange", op, error, req_at, resp_at, failure @ ..] => {
                assert!(
                    matches!(failure, [] | ["closed"] | ["timeout"]),
                    "{ctx}: failure must be closed or timeout"
                );
                case.exchanges.push(Expected {
                    text: [*op, *error]
                        .iter()
                        .chain(failure)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" "),
                    start: parse_at(req_at, Dir::Req, ctx),
                    end: parse_at(resp_at, Dir::Resp, ctx),
                });
            }
            ["many", count, op, error] => {
                let count: usize = parse_number(count, "count", ctx);
                for _ in 0..count {
                    case.exchanges
                        .push(Expected::untimed(format!("{op} {error}")));
                }
            }
            _ => return false,
        }
        true
    }

    fn check_run(run: &Run<Self>, errors: &mut String) {
        for e in &run.exchanges {
            if e.start_ns > e.end_ns {
                let _ = writeln!(errors, "exchange ends before it starts: {e:?}");
            }
        }
    }
}

golden_tests!(Redis);
