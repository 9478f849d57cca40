//! Redis, client side: redis-benchmark (one command per round trip, and
//! pipelines of 16), and redis-cli sessions with MULTI/EXEC, error replies
//! and a pub/sub subscription, traced against a real redis-server.
//!
//! Ground truth: the server's own `INFO commandstats` (`calls` plus
//! `rejected_calls` per command), taken before and after over TCP. Every
//! command the clients sent is one `db_client_operation_duration_seconds`
//! observation with `db_system_name="redis"` and the command as
//! `db_operation_name`; the counts per command must equal the server's
//! deltas exactly. `INFO` itself is left out: the second snapshot's own
//! `INFO` reaches the tracer before the server has counted it.

use std::collections::BTreeMap;
use std::process::Command;

use tracer_e2e::databases::{run_ok, Redis};
use tracer_e2e::{privileged, require_tool, wait_until, TestDir, Tracer};

const DB_COUNT: &str = "db_client_operation_duration_seconds_count";

/// The server's counts minus `before`, without INFO.
fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(command, _)| *command != "INFO")
        .map(|(command, n)| {
            (
                command.clone(),
                n - before.get(command).copied().unwrap_or(0),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn redis_commands_counted_exactly_against_commandstats() {
    if !privileged("redis_commands_counted_exactly_against_commandstats") {
        return;
    }
    let dir = TestDir::new("redis");
    let tracer = Tracer::start(&dir, &[]);
    let redis = Redis::start(&dir);
    let port = redis.port().to_string();
    let before = redis.commandstats();

    for pipeline in ["1", "16"] {
        run_ok(
            Command::new(require_tool("redis-benchmark"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-q",
                    "-n",
                    "2000",
                    "-c",
                    "4",
                ])
                .args(["-P", pipeline, "-t", "set,get,incr,lpush,lrange_100,mset"]),
        );
    }
    // A transaction, replies that are errors, and a subscription that
    // receives one message: none of them a hung or unmatched request.
    redis.cli(&["SET", "greeting", "hello"]);
    let out = run_ok(
        Command::new(require_tool("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &port])
            .arg("--no-raw")
            .stdin(std::fs::File::open(dir.write(
                "tx.redis",
                "MULTI\nINCR counter\nLPUSH list a b c\nEXEC\nINCR greeting\nLPUSH greeting x\n",
            ))
            .expect("open the script")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("WRONGTYPE"), "no WRONGTYPE reply:\n{text}");
    let mut subscriber = tracer_e2e::Guard::spawn(
        "redis-subscriber",
        Command::new(require_tool("redis-cli")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "SUBSCRIBE",
            "news",
            "weather",
        ]),
        &dir,
    );
    let published = wait_until(std::time::Duration::from_secs(10), || {
        let receivers = redis.cli(&["PUBLISH", "news", "hi"]);
        (receivers.trim() == "1").then_some(())
    });
    assert!(published.is_some(), "the subscriber never subscribed");
    let after = redis.commandstats();
    let want = delta(&after, &before);
    assert!(want.get("SET").copied().unwrap_or(0) > 4000, "{want:?}");

    let filter = [("db_system_name", "redis")];
    let got = wait_until(tracer_e2e::wait::METRICS_TIMEOUT, || {
        let got: BTreeMap<String, u64> = tracer
            .scrape()
            .count_by(DB_COUNT, &filter, "db_operation_name")
            .into_iter()
            .filter(|(op, _)| op != "INFO")
            .collect();
        (got == want).then_some(got)
    });
    let scrape = tracer.scrape();
    assert!(
        got.is_some(),
        "tracer counts per Redis command differ from INFO commandstats:\nserver: {want:?}\n\
         tracer: {:?}\n{}",
        scrape.count_by(DB_COUNT, &filter, "db_operation_name"),
        scrape.lines("tracer_", &[("protocol", "redis")]),
    );
    // The error replies carry their prefix; nothing timed out or was lost.
    let errors = scrape.count_by(DB_COUNT, &filter, "error_type");
    assert_eq!(errors.get("WRONGTYPE"), Some(&1), "{errors:?}");
    assert_eq!(errors.get("ERR"), Some(&1), "{errors:?}");
    for name in ["tracer_parser_resyncs_total", "tracer_unmatched_total"] {
        assert_eq!(scrape.count(name, &[("protocol", "redis")]), 0, "{name}");
    }
    // The server's own side is not measured: no series name redis-server.
    assert_eq!(
        scrape.count(DB_COUNT, &[("service_name", "redis-server")]),
        0
    );
    subscriber.assert_running();
}
