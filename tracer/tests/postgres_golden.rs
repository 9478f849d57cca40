//! Golden byte-stream tests for the PostgreSQL parser.
//!
//! The cases are under `tests/fixtures/postgres/`: the raw bytes the client
//! sent and received, most recorded from psql and pgbench through a proxy,
//! with their reads as `feed` steps. `golden/mod.rs` says how they are fed
//! (whole, one byte per piece, split once at every byte boundary, in
//! random-sized pieces, through `Reassembler` with chunks swapped and tails
//! truncated: every way must give the same exchanges and counters) and
//! lists the directives every `NAME.expect` may use. The traced process is
//! the client unless `side server` says otherwise. PostgreSQL's own
//! directives:
//!
//! ```text
//! start fresh|midstream               Start given to the parser (fresh)
//! exchange SELECT t 42P01 req@0 resp@79 [closed]
//!                                     an expected exchange, in order: operation,
//!                                     collection (- for none), SQLSTATE (- for
//!                                     none), where it starts and ends (`req@N`
//!                                     or `resp@N` either way; `close`; `?`), and
//!                                     `closed` (`timeout`) when it failed by the
//!                                     close (a timeout)
//! count 35                            the number of exchanges (a cross-check
//!                                     against what the client reported)
//! ```
//!
//! A statement of a simple Query after the first starts at the response
//! byte that completed the one before, hence `resp@N` as a start.

mod golden;

use golden::{
    op_table_error, parse_dir, parse_number, run, whole, with_failure, At, Case, Expected,
    Protocol, StartAs,
};
use tracer::protocols::{postgres::PgConn, Call, Exchange, Side, Verdict};

#[derive(Debug, Default)]
struct Postgres {
    start: StartAs,
    count: Option<usize>,
}

/// A position: `?`, `close`, `req@N` or `resp@N`.
fn parse_at(text: &str, ctx: &str) -> At {
    match text {
        "?" => At::Any,
        "close" => At::Close,
        _ => {
            let (dir, n) = text
                .split_once('@')
                .unwrap_or_else(|| panic!("{ctx}: expected req@N or resp@N, got {text:?}"));
            At::Byte(parse_dir(dir, ctx), parse_number(n, "offset", ctx))
        }
    }
}

impl Protocol for Postgres {
    const FIXTURES: &'static str = "postgres";
    const SIDE: Side = Side::Client;

    type Conn = PgConn;
    type State = Verdict;

    fn conn(&self, side: Side) -> PgConn {
        PgConn::new(side, self.start.0)
    }

    /// `OP TABLE ERROR [closed|timeout]`.
    fn describe(e: &Exchange) -> String {
        let Call::Db(db) = &e.call else {
            return format!("not a database call: {e:?}");
        };
        with_failure(op_table_error(db), e.failure)
    }

    fn directive(case: &mut Case<Self>, words: &[&str], ctx: &str) -> bool {
        match words {
            ["start", start] => case.own.start = StartAs::parse(start, ctx),
            ["exchange", op, table, error, start, end, rest @ ..] => {
                assert!(
                    rest.is_empty() || rest == ["closed"] || rest == ["timeout"],
                    "{ctx}: an exchange ends with `closed` or nothing"
                );
                case.exchanges.push(Expected {
                    text: [*op, *table, *error]
                        .iter()
                        .chain(rest)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" "),
                    start: parse_at(start, ctx),
                    end: parse_at(end, ctx),
                });
            }
            ["count", n] => case.own.count = Some(parse_number(n, "count", ctx)),
            _ => return false,
        }
        true
    }

    fn finish(case: &Case<Self>) {
        if let Some(count) = case.own.count {
            assert_eq!(
                count,
                case.exchanges.len(),
                "{}: `count` disagrees with the exchange lines",
                case.name
            );
        }
    }
}

golden_tests!(Postgres);

/// The pgbench captures: every statement pgbench says it ran is one
/// exchange, whatever the query mode.
#[test]
fn pgbench_statements_are_counted_exactly() {
    for name in ["pgbench_simple", "pgbench_extended", "pgbench_prepared"] {
        let case = golden::load::<Postgres>(name);
        let run = run(&case, &mut whole);
        // 5 transactions of the built-in TPC-B script's 7 statements.
        assert_eq!(run.exchanges.len(), 5 * 7, "{name}");
        let ops: Vec<String> = run.exchanges.iter().map(Postgres::describe).collect();
        for statement in [
            "BEGIN - -",
            "UPDATE pgbench_accounts -",
            "SELECT pgbench_accounts -",
            "UPDATE pgbench_tellers -",
            "UPDATE pgbench_branches -",
            "INSERT pgbench_history -",
            "END - -",
        ] {
            assert_eq!(
                ops.iter().filter(|o| o.as_str() == statement).count(),
                5,
                "{name}: {statement}"
            );
        }
    }
}
