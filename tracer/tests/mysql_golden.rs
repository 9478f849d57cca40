//! Golden byte-stream tests for the MySQL/MariaDB parser.
//!
//! The cases are under `tests/fixtures/mysql/`: the raw bytes the client
//! sent and received, most recorded from MariaDB 10.11 and its clients
//! through a proxy. `golden/mod.rs` says how they are fed (in the recorded
//! steps, one byte per piece, split once at step boundaries, in
//! random-sized pieces, through `Reassembler` with chunks swapped and tails
//! truncated: every way must give the same exchanges and counters) and
//! lists the directives every `NAME.expect` may use. A step is split at
//! every byte boundary, except that a step over 1 KiB (rows, mostly) is
//! split only within 256 bytes of its ends and at every 61st byte between.
//! The traced process is the client unless `side server` says otherwise.
//! MySQL's own directives:
//!
//! ```text
//! start fresh|midstream               Start given to the parser (fresh)
//! exchange SELECT t1 - req@0 resp@79  an expected exchange, in order: operation,
//!                                     table or -, error number or -, optionally
//!                                     `timeout`/`closed`, then the byte offsets of
//!                                     the request's first byte and of the byte
//!                                     that completed the response (or resp@close);
//!                                     `?` (`req@?`) skips the timestamp
//! ```

mod golden;

use golden::{
    op_table_error, parse_at, with_failure, Case, Dir, Expected, Protocol, Splits, StartAs,
};
use tracer::protocols::{mysql::MysqlConn, Call, Exchange, Side, Verdict};

#[derive(Debug, Default)]
struct Mysql {
    start: StartAs,
}

impl Protocol for Mysql {
    const FIXTURES: &'static str = "mysql";
    const SIDE: Side = Side::Client;
    // Long steps are rows, mostly.
    const SPLITS: Splits = Splits::LongStepsSampled {
        edge: 256,
        stride: 61,
    };

    type Conn = MysqlConn;
    type State = Verdict;

    fn conn(&self, side: Side) -> MysqlConn {
        MysqlConn::new(side, self.start.0)
    }

    /// `OPERATION TABLE ERROR [FAILURE]`.
    fn describe(e: &Exchange) -> String {
        let Call::Db(db) = &e.call else {
            return format!("{:?}", e.call);
        };
        with_failure(op_table_error(db), e.failure)
    }

    fn directive(case: &mut Case<Self>, words: &[&str], ctx: &str) -> bool {
        match words {
            ["start", start] => case.own.start = StartAs::parse(start, ctx),
            ["exchange", rest @ ..] if rest.len() >= 5 => {
                let (fields, ats) = rest.split_at(rest.len() - 2);
                assert!(
                    fields.len() == 3
                        || (fields.len() == 4 && ["timeout", "closed"].contains(&fields[3])),
                    "{ctx}: exchange OP TABLE ERROR [timeout|closed] req@N resp@M"
                );
                case.exchanges.push(Expected {
                    text: fields.join(" "),
                    start: parse_at(ats[0], Dir::Req, ctx),
                    end: parse_at(ats[1], Dir::Resp, ctx),
                });
            }
            _ => return false,
        }
        true
    }
}

golden_tests!(Mysql);
