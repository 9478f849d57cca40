//! PostgreSQL, client side: pgbench's TPC-B-like script over TCP in the
//! simple, extended and prepared query modes, a pgbench script in pipeline
//! mode (three statements sent before one Sync), and a psql script with
//! multi-statement queries, a COPY and an error, traced against a real
//! PostgreSQL 15.
//!
//! Ground truth: the server's own `pg_stat_statements` (calls per
//! statement, grouped by the statement's verb), reset just before the
//! workload over the Unix socket (which the tracer does not see). It counts
//! the statements that completed; a failed one is checked against the
//! script, which has exactly one. One exception: PostgreSQL 15's
//! `pg_stat_statements` misses most utility statements run through a
//! prepared statement (pgbench `-M prepared` prepares its `BEGIN` and
//! `END`), so those two verbs are checked against pgbench's own count of
//! the transactions it ran, one `BEGIN` and one `END` each.

use std::process::Command;

use tracer_e2e::databases::{run_ok, Postgres};
use tracer_e2e::{privileged, require_tool, wait_until, TestDir, Tracer};

const DB_COUNT: &str = "db_client_operation_duration_seconds_count";

/// `N` from pgbench's "number of transactions actually processed: N/M".
fn processed(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench's output:\n{stdout}"))
}

#[test]
fn pgbench_and_psql_counted_exactly_against_pg_stat_statements() {
    if !privileged("pgbench_and_psql_counted_exactly_against_pg_stat_statements") {
        return;
    }
    let dir = TestDir::new("postgres");
    let tracer = Tracer::start(&dir, &[]);
    let pg = Postgres::start(&dir);
    // Initialise over the socket: its COPY of 100,000 rows is not the point.
    run_ok(
        Command::new(require_tool("pgbench"))
            .args([
                "-i",
                "-s",
                "1",
                "-q",
                "-U",
                "postgres",
                "-p",
                &pg.port().to_string(),
            ])
            .arg("-h")
            .arg(dir.join("pgsock"))
            .env("PGDATABASE", "postgres"),
    );
    pg.psql_socket("SELECT pg_stat_statements_reset()");

    let tcp = pg.tcp_args();
    let mut transactions = 0;
    for mode in ["simple", "extended", "prepared"] {
        let out = run_ok(
            Command::new(require_tool("pgbench"))
                .args(&tcp)
                .args(["-n", "-c", "2", "-t", "150", "-M", mode])
                .env("PGDATABASE", "postgres"),
        );
        transactions += processed(&String::from_utf8_lossy(&out.stdout));
    }
    assert_eq!(transactions, 3 * 2 * 150);
    let pipeline = dir.write(
        "pipeline.sql",
        "\\set aid random(1, 100000)\n\
         \\set delta random(-5000, 5000)\n\
         \\startpipeline\n\
         UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);\n\
         \\endpipeline\n",
    );
    let out = run_ok(
        Command::new(require_tool("pgbench"))
            .args(&tcp)
            .args(["-n", "-c", "2", "-t", "100", "-M", "prepared", "-f"])
            .arg(&pipeline)
            .env("PGDATABASE", "postgres"),
    );
    let pipelined = processed(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(pipelined, 2 * 100);
    let script = dir.write(
        "script.sql",
        "CREATE TABLE items (id int, name text);\n\
         INSERT INTO items VALUES (1, 'a'); INSERT INTO items VALUES (2, 'b');\n\
         COPY items FROM STDIN;\n3\tc\n4\td\n\\.\n\
         SELECT count(*) FROM items;\n\
         SELECT * FROM missing_table;\n\
         UPDATE items SET name = 'z' WHERE id = 1;\n",
    );
    let out = Command::new(require_tool("psql"))
        .args(&tcp)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", "postgres", "-f"])
        .arg(&script)
        .output()
        .expect("run psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing_table"),
        "psql did not fail once: {stderr}"
    );

    let mut want = pg.statement_counts();
    want.insert("BEGIN".into(), transactions);
    want.insert("END".into(), transactions);
    assert!(
        want.get("UPDATE").copied().unwrap_or(0) >= 3 * 2 * 150 * 3,
        "{want:?}"
    );
    let ok = [("db_system_name", "postgresql"), ("error_type", "")];
    let got = wait_until(tracer_e2e::wait::METRICS_TIMEOUT, || {
        let got = tracer.scrape().count_by(DB_COUNT, &ok, "db_operation_name");
        (got == want).then_some(got)
    });
    let scrape = tracer.scrape();
    assert!(
        got.is_some(),
        "tracer counts per statement verb differ from pg_stat_statements:\nserver: {want:?}\n\
         tracer: {:?}\n{}",
        scrape.count_by(DB_COUNT, &ok, "db_operation_name"),
        scrape.lines("tracer_", &[("protocol", "postgresql")]),
    );
    let failed = [("db_system_name", "postgresql"), ("error_type", "42P01")];
    assert_eq!(scrape.count(DB_COUNT, &failed), 1, "the one missing table");
    let tables = scrape.count_by(DB_COUNT, &ok, "db_collection_name");
    assert_eq!(
        tables.get("pgbench_history"),
        Some(&(3 * 2 * 150 + pipelined)),
        "{tables:?}"
    );
    for name in ["tracer_parser_resyncs_total", "tracer_unmatched_total"] {
        assert_eq!(
            scrape.count(name, &[("protocol", "postgresql")]),
            0,
            "{name}"
        );
    }
}
