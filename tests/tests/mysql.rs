//! MySQL protocol, client side, against a real MariaDB: mysqlslap's
//! generated load (mixed reads and writes, updates, key lookups) over TCP,
//! and the mariadb client running a statement that fails; then prepared
//! statements over the binary protocol (Perl's DBD::MariaDB with
//! server-side prepares, `tests/peers/mysql_prepared.pl`).
//!
//! Ground truth: the server's own `SHOW GLOBAL STATUS` counters (`Com_*`,
//! read over the Unix socket, which the tracer does not see), before and
//! after. Each statement the clients sent is one
//! `db_client_operation_duration_seconds` observation with
//! `db_system_name="mysql"` and its verb as `db_operation_name`; per verb
//! the counts must equal the server's, whatever the statement's outcome
//! (the server counts a statement that then fails, too). The failing one is
//! checked against the script: exactly one error 1146.

use std::collections::BTreeMap;
use std::process::Command;

use tracer_e2e::databases::{run_ok, Mariadb};
use tracer_e2e::{privileged, require_tool, wait_until, Scrape, TestDir, Tracer};

const DB_COUNT: &str = "db_client_operation_duration_seconds_count";

const MYSQL: [(&str, &str); 1] = [("db_system_name", "mysql")];

/// Waits until the tracer's MySQL operations per verb equal `want`, then
/// returns the scrape; fails with both when they never do.
fn counted_per_verb(tracer: &Tracer, want: &BTreeMap<String, u64>) -> Scrape {
    let got = wait_until(tracer_e2e::wait::METRICS_TIMEOUT, || {
        let got = tracer
            .scrape()
            .count_by(DB_COUNT, &MYSQL, "db_operation_name");
        (got == *want).then_some(got)
    });
    let scrape = tracer.scrape();
    assert!(
        got.is_some(),
        "tracer counts per statement verb differ from the Com_* counters:\nserver: {want:?}\n\
         tracer: {:?}\n{}",
        scrape.count_by(DB_COUNT, &MYSQL, "db_operation_name"),
        scrape.lines("tracer_", &[("protocol", "mysql")]),
    );
    scrape
}

#[test]
fn mysqlslap_and_mariadb_counted_exactly_against_com_counters() {
    if !privileged("mysqlslap_and_mariadb_counted_exactly_against_com_counters") {
        return;
    }
    let dir = TestDir::new("mysql");
    let tracer = Tracer::start(&dir, &[]);
    let db = Mariadb::start(&dir);
    let port = db.port().to_string();
    let before = db.com_status();
    for load in ["mixed", "update", "key"] {
        run_ok(
            Command::new(require_tool("mysqlslap"))
                .args(["--host=127.0.0.1", "--protocol=tcp", "--user=root"])
                .arg(format!("--port={port}"))
                .args([
                    "--concurrency=2",
                    "--iterations=1",
                    "--number-of-queries=200",
                ])
                .args([
                    "--auto-generate-sql",
                    "--auto-generate-sql-add-autoincrement",
                ])
                .args(["--number-int-cols=2", "--number-char-cols=2"])
                .arg(format!("--auto-generate-sql-load-type={load}")),
        );
    }
    let out = Command::new(require_tool("mariadb"))
        .args(["--host=127.0.0.1", "--protocol=tcp", "--user=root"])
        .arg(format!("--port={port}"))
        .args(["-e", "SELECT * FROM mysql.missing_table"])
        .output()
        .expect("run mariadb");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1146"),
        "the statement did not fail with 1146"
    );
    let want = Mariadb::verbs_between(&before, &db.com_status());
    assert!(want.get("INSERT").copied().unwrap_or(0) > 100, "{want:?}");

    let scrape = counted_per_verb(&tracer, &want);
    let errors = scrape.count_by(DB_COUNT, &MYSQL, "error_type");
    assert_eq!(errors.get("1146"), Some(&1), "{errors:?}");
    assert_eq!(
        errors.len(),
        2,
        "only the one error besides the successes: {errors:?}"
    );
    for name in ["tracer_parser_resyncs_total", "tracer_unmatched_total"] {
        assert_eq!(scrape.count(name, &[("protocol", "mysql")]), 0, "{name}");
    }
}

#[test]
fn prepared_statements_counted_exactly_against_com_counters() {
    if !privileged("prepared_statements_counted_exactly_against_com_counters") {
        return;
    }
    let dir = TestDir::new("mysql-prepared");
    let tracer = Tracer::start(&dir, &[]);
    let db = Mariadb::start(&dir);
    let before = db.com_status();
    let out = run_ok(
        Command::new(require_tool("perl"))
            .arg(tracer_e2e::peers_dir().join("mysql_prepared.pl"))
            .args([&db.port().to_string(), "300"]),
    );
    let tally: BTreeMap<String, u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, n) = l.rsplit_once(' ')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect();
    let after = db.com_status();
    let want = Mariadb::verbs_between(&before, &after);
    // The client's own tally and the server's agree on what ran.
    for verb in ["INSERT", "SELECT", "UPDATE", "DELETE"] {
        assert_eq!(
            want.get(verb),
            tally.get(verb),
            "{verb}: {want:?} {tally:?}"
        );
    }
    assert_eq!(tally.get("error 1062"), Some(&1), "{tally:?}");
    // Every statement of the script, its CREATE and DROP too, went through
    // COM_STMT_EXECUTE.
    let executed = after["Com_stmt_execute"] - before.get("Com_stmt_execute").unwrap_or(&0);
    let statements: u64 = want
        .iter()
        .filter(|(verb, _)| !["PREPARE", "SET", "STMT_RESET"].contains(&verb.as_str()))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        executed, statements,
        "not all over the binary protocol: {want:?}"
    );

    let scrape = counted_per_verb(&tracer, &want);
    let errors = scrape.count_by(DB_COUNT, &MYSQL, "error_type");
    assert_eq!(errors.get("1062"), Some(&1), "{errors:?}");
    assert_eq!(errors.len(), 2, "only the duplicate key failed: {errors:?}");
    let tables = scrape.count_by(DB_COUNT, &MYSQL, "db_collection_name");
    assert_eq!(
        tables.get("prepared.kv").copied(),
        Some(want["INSERT"] + want["SELECT"] + want["UPDATE"] + want["DELETE"] + 4),
        "every execution of the four statements (and their prepares) names the table: {tables:?}"
    );
    for name in [
        "tracer_parser_resyncs_total",
        "tracer_unmatched_total",
        "tracer_partial_exchanges_total",
    ] {
        assert_eq!(scrape.count(name, &[("protocol", "mysql")]), 0, "{name}");
    }
}
