//! Private by default: secrets sent in every position of HTTP/1.1 and HTTP/2
//! requests, gRPC calls, PostgreSQL and MySQL statements and Redis commands
//! never reach any output of the tracer, while the traffic itself is still
//! counted exactly.
//!
//! The traffic, one test each:
//! - HTTP/1.1 and Redis: curl against nginx with secrets in the path (an
//!   email address, a JWT, a random token, a base64 blob), the query string,
//!   the `Authorization`, `Cookie` and a custom header, and the request
//!   body; and a Redis client sending `AUTH` with a password, then `SET`
//!   and `GET` of a secret key and value.
//! - HTTP/2 and gRPC: the same requests from h2load to nginx over cleartext
//!   HTTP/2 with prior knowledge, four on each connection (nghttp2, curl's
//!   HTTP/2 library too, sends `Authorization` and the short cookie as
//!   never-indexed HPACK literals, the other headers as literals the next
//!   requests refer to by index); and gRPC calls carrying secret
//!   `authorization` and custom metadata and a secret message, which the
//!   server echoes in its replies and, for the calls that fail, in its
//!   `grpc-message` trailer. (A gRPC method name is the API's schema, not
//!   data, and is reported as it is: no secret goes there.)
//! - SQL: a PostgreSQL role logging in with a password sent in clear
//!   (`password` in `pg_hba.conf`), psql running statements with string
//!   and numeric literals (read back in the rows), a COPY of a secret row
//!   and a statement whose error message quotes its literal, and pgbench
//!   executing prepared statements with secret parameters; the mariadb
//!   client with the same kinds of literals and a duplicate-key error
//!   quoting one, and DBD::MariaDB executing server-side prepared
//!   statements with secret parameters. (MariaDB runs without grant
//!   tables, so its login carries no password.)
//!
//! The outputs searched: the whole `/metrics` text, `tracer run`'s and
//! `tracer watch`'s stderr at `--log trace`, and the lines `tracer watch`
//! prints.
//!
//! Ground truth for the counts: the plan of requests (checked against the
//! statuses curl and h2load reported, and nginx's log for HTTP/2), the
//! replies the Redis client read, the gRPC client's tally and the server's
//! log, PostgreSQL's `pg_stat_statements` and MariaDB's `Com_*` counters.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;

use tracer_e2e::databases::{run_ok, Mariadb, Postgres, Redis};
use tracer_e2e::net::{accepts, url};
use tracer_e2e::tracer::{printed_lines, spawn_watch, try_get};
use tracer_e2e::wait::{METRICS_TIMEOUT, START_TIMEOUT};
use tracer_e2e::{
    curl, free_port, privileged, require_tool, wait_until, Guard, Nginx, Peer, TestDir, Tracer,
    Want,
};

/// Path segments that look like personal data or credentials; each must be
/// templated to `{id}`.
const PATH_SECRETS: [&str; 4] = [
    "alice.secret@example.org",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.kq3Rg8VbTnYsP0xZfWm2aLcEuH7dJi4oN6pQ9rS1tU",
    "sYqWbQkLmNvXzRtPaXkGhJ",
    "c2VjcmV0LXBhdGgtYmxvYg==",
];
const QUERY_SECRET: &str = "QuerySecret-4711";
const BEARER_SECRET: &str = "BearerSecret-0815";
const COOKIE_SECRET: &str = "CookieSecret-1234";
/// Short enough (`c=` and it: under 20 bytes) that curl's HTTP/2 library
/// sends the cookie as a never-indexed literal.
const SHORT_COOKIE_SECRET: &str = "CkSecret-97";
const HEADER_SECRET: &str = "ApiKeySecret-5678";
const BODY_SECRET: &str = "BodySecret-9999";
const REDIS_PASSWORD: &str = "RedisPassword-2468";
const REDIS_KEY: &str = "RedisKeySecret-1357";
const REDIS_VALUE: &str = "RedisValueSecret-8642";
const GRPC_BEARER_SECRET: &str = "GrpcBearerSecret-2718";
const GRPC_METADATA_SECRET: &str = "GrpcMetadataSecret-1618";
const GRPC_MESSAGE_SECRET: &str = "GrpcMessageSecret-1414";
const PG_PASSWORD: &str = "PgPassword-7531";
const PG_LITERAL: &str = "PgLiteralSecret-3141";
const PG_NUMBER: &str = "8675309112358";
const PG_UPDATED: &str = "PgUpdatedSecret-2236";
const PG_COPIED: &str = "PgCopiedSecret-1732";
const PG_ERROR: &str = "PgErrorSecret-6931";
const PG_PARAM: &str = "PgParamSecret-5772";
const PG_PARAM_NUMBER: &str = "7392648150273";
const MY_LITERAL: &str = "MyLiteralSecret-4669";
const MY_NUMBER: &str = "5918273645091";
const MY_UPDATED: &str = "MyUpdatedSecret-2502";
const MY_PARAM: &str = "MyParamSecret-6180";

const DB_COUNT: &str = "db_client_operation_duration_seconds_count";
const RPC_SERVER: &str = "rpc_server_duration_seconds_count";
const RPC_CLIENT: &str = "rpc_client_duration_seconds_count";

/// The secret headers of every HTTP request, HTTP/1.1 and HTTP/2 alike.
fn secret_headers() -> [String; 4] {
    [
        format!("Authorization: Bearer {BEARER_SECRET}"),
        format!("Cookie: session={COOKIE_SECRET}"),
        format!("Cookie: c={SHORT_COOKIE_SECRET}"),
        format!("X-Api-Key: {HEADER_SECRET}"),
    ]
}

/// Every secret an HTTP request of these tests carries.
fn http_secrets() -> Vec<&'static str> {
    let mut all = PATH_SECRETS.to_vec();
    all.extend([
        QUERY_SECRET,
        BEARER_SECRET,
        COOKIE_SECRET,
        SHORT_COOKIE_SECRET,
        HEADER_SECRET,
        BODY_SECRET,
    ]);
    all
}

/// `/p/<secret>/x?token=<secret>&a=b` for each path secret.
fn secret_targets(addr: SocketAddr) -> Vec<String> {
    PATH_SECRETS
        .iter()
        .map(|secret| url(addr, &format!("/p/{secret}/x?token={QUERY_SECRET}&a=b")))
        .collect()
}

/// curl's options for `method` with the secret headers (and body).
fn curl_args(method: &str) -> Vec<String> {
    let mut args = vec!["-X".to_string(), method.to_string()];
    for header in secret_headers() {
        args.extend(["-H".to_string(), header]);
    }
    if method == "POST" {
        args.extend(["--data-binary".to_string(), BODY_SECRET.to_string()]);
    }
    args
}

/// One RESP command on `stream`; returns the reply's first line.
fn command(stream: &mut BufReader<TcpStream>, args: &[&str]) -> String {
    let mut out = format!("*{}\r\n", args.len());
    for arg in args {
        out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .get_mut()
        .write_all(out.as_bytes())
        .expect("send to redis");
    let mut line = String::new();
    stream.read_line(&mut line).expect("read redis reply");
    if let Some(len) = line
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        let mut body = String::new();
        while body.len() < len + 2 {
            stream.read_line(&mut body).expect("read bulk reply");
        }
    }
    line
}

/// Lines watch printed whose word `at` (0: time, 4: protocol or method, 5:
/// route or operation) is `word`.
fn printed(watch: &Guard, at: usize, word: &str) -> usize {
    printed_lines(watch)
        .iter()
        .filter(|l| l.split(' ').nth(at) == Some(word))
        .count()
}

fn printed_path(watch: &Guard, path: &str) -> usize {
    printed(watch, 5, path)
}

/// `tracer watch --log trace` on nginx's port and `ports`, once it prints
/// nginx's exchanges: the traffic that follows is all seen.
fn start_watch(dir: &TestDir, nginx: &Nginx, ports: &[u16]) -> Guard {
    let mut args = vec!["--log".to_string(), "trace".to_string()];
    for port in [nginx.port()].iter().chain(ports) {
        args.extend(["--port".to_string(), port.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut watch = spawn_watch(dir, &args);
    let ready = wait_until(START_TIMEOUT, || {
        watch.assert_running();
        let _ = try_get(nginx.addr(), "/p/probe");
        (printed_path(&watch, "/p/probe") > 0).then_some(())
    });
    assert!(
        ready.is_some(),
        "watch printed nothing; stderr:\n{}",
        watch.stderr()
    );
    watch
}

/// Waits until watch printed a request sent after all of the test's
/// traffic (one line per side), so that it has printed all of it.
fn watch_caught_up(watch: &Guard, nginx: &Nginx) {
    let _ = try_get(nginx.addr(), "/p/end");
    let done = wait_until(METRICS_TIMEOUT, || {
        (printed_path(watch, "/p/end") == 2).then_some(())
    });
    assert!(
        done.is_some(),
        "watch never printed /p/end; output:\n{}",
        watch.stdout()
    );
}

/// Searches every output of the tracer and of `watch` for every secret,
/// then stops watch, which must exit cleanly.
fn assert_no_output_holds(tracer: &Tracer, mut watch: Guard, secrets: &[&str]) {
    let metrics = try_get(tracer.metrics_addr(), "/metrics")
        .expect("scrape /metrics")
        .body_text();
    let outputs = [
        ("/metrics", metrics),
        ("tracer run's log", tracer.stderr()),
        ("tracer watch's lines", watch.stdout()),
        ("tracer watch's log", watch.stderr()),
    ];
    for (name, text) in &outputs {
        assert!(!text.is_empty() || name.contains("log"), "{name} is empty");
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{name} holds the secret {secret:?}:\n{}",
                text.lines()
                    .filter(|l| l.contains(secret))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    let (status, killed) = watch.terminate();
    assert!(
        !killed && status.success(),
        "watch on SIGTERM: {status}, killed: {killed}"
    );
}

#[test]
fn secrets_in_every_position_reach_no_output() {
    if !privileged("secrets_in_every_position_reach_no_output") {
        return;
    }
    let dir = TestDir::new("privacy");
    let tracer = Tracer::start(&dir, &["--log", "trace"]);
    let nginx = Nginx::start(&dir, "        location /p/ { return 200 \"ok\\n\"; }\n");
    let redis = Redis::start(&dir);
    let watch = start_watch(&dir, &nginx, &[redis.port()]);

    let mut requests = 0;
    for target in secret_targets(nginx.addr()) {
        for method in ["GET", "POST"] {
            let args = curl_args(method);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let got = curl(&args, std::slice::from_ref(&target));
            assert_eq!(got[0].status, 200, "{method} {target}");
            requests += 1;
        }
    }

    let mut client =
        BufReader::new(TcpStream::connect(("127.0.0.1", redis.port())).expect("redis"));
    let auth = command(&mut client, &["AUTH", REDIS_PASSWORD]);
    assert!(
        auth.starts_with("-ERR"),
        "AUTH without a password set: {auth:?}"
    );
    assert_eq!(
        command(&mut client, &["SET", REDIS_KEY, REDIS_VALUE]),
        "+OK\r\n"
    );
    assert!(command(&mut client, &["GET", REDIS_KEY]).starts_with('$'));
    drop(client);

    // The masked route carries the whole count, on both sides.
    tracer.barrier(&nginx);
    tracer.expect(&[
        Want::server("nginx", "/p/{id}/x").is(requests),
        Want::client("curl", "/p/{id}/x").is(requests),
        Want::metric(DB_COUNT)
            .label("db_system_name", "redis")
            .label("db_operation_name", "AUTH")
            .label("error_type", "ERR")
            .is(1),
        Want::metric(DB_COUNT)
            .label("db_system_name", "redis")
            .label("db_operation_name", "SET")
            .is(1),
        Want::metric(DB_COUNT)
            .label("db_system_name", "redis")
            .label("db_operation_name", "GET")
            .is(1),
    ]);
    // Watch masks the path as the route is: one line per side and request.
    watch_caught_up(&watch, &nginx);
    assert_eq!(
        printed_path(&watch, "/p/{id}/x"),
        2 * requests as usize,
        "watch lines for /p/{{id}}/x:\n{}",
        watch.stdout()
    );
    assert_eq!(
        printed(&watch, 4, "redis"),
        3,
        "redis lines:\n{}",
        watch.stdout()
    );

    let mut secrets = http_secrets();
    secrets.extend([REDIS_PASSWORD, REDIS_KEY, REDIS_VALUE]);
    assert_no_output_holds(&tracer, watch, &secrets);
}

/// `N` from the line of h2load's output that starts with `prefix` and
/// has `N word` in it (`requests: ... N succeeded`, `status codes: N 2xx`).
fn h2load_count(stdout: &str, prefix: &str, word: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| {
            let words: Vec<&str> = l.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            let at = words.iter().position(|w| *w == word)?;
            words.get(at.checked_sub(1)?)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {prefix:?} line with \"N {word}\":\n{stdout}"))
}

#[test]
fn http2_and_grpc_secrets_reach_no_output() {
    if !privileged("http2_and_grpc_secrets_reach_no_output") {
        return;
    }
    let dir = TestDir::new("privacy-h2");
    let tracer = Tracer::start(&dir, &["--log", "trace"]);
    let h2_port = free_port();
    let nginx = Nginx::start(
        &dir,
        &format!(
            "        listen 127.0.0.1:{h2_port} http2;\n\
             \x20       location /p/ {{ return 200 \"ok\\n\"; }}\n"
        ),
    );
    let python = "/usr/bin/python3";
    let script = tracer_e2e::peers_dir().join("grpc_peer.py");
    let grpc_port = free_port();
    let grpc_log = dir.join("grpc-server.log");
    let mut server = Guard::spawn(
        "grpc-server",
        Command::new(python)
            .arg(&script)
            .args(["serve", "--port", &grpc_port.to_string(), "--log"])
            .arg(&grpc_log),
        &dir,
    );
    let up = wait_until(START_TIMEOUT, || {
        server.assert_running();
        accepts(SocketAddr::from((Ipv4Addr::LOCALHOST, grpc_port))).then_some(())
    });
    assert!(up.is_some(), "the gRPC server never listened");
    let watch = start_watch(&dir, &nginx, &[h2_port, grpc_port]);

    // h2load (curl 7.88 fails to reuse a prior-knowledge connection): one
    // connection per method, its four requests one at a time, so that from
    // the second on the indexed header fields are sent as references to
    // HPACK's dynamic table.
    let body = dir.write("body", BODY_SECRET);
    let h2 = SocketAddr::from((Ipv4Addr::LOCALHOST, h2_port));
    for method in ["GET", "POST"] {
        let mut cmd = Command::new(require_tool("h2load"));
        cmd.args(["-n", "4", "-c", "1", "-m", "1"]);
        for header in secret_headers() {
            cmd.args(["-H", &header]);
        }
        if method == "POST" {
            cmd.arg("-d").arg(&body);
        }
        let out = run_ok(cmd.args(secret_targets(h2)));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            (
                h2load_count(&stdout, "requests:", "succeeded"),
                h2load_count(&stdout, "status codes:", "2xx")
            ),
            (4, 4),
            "{method}:\n{stdout}"
        );
    }
    let out = run_ok(
        Command::new(python)
            .arg(&script)
            .args(["call", "--port", &grpc_port.to_string()])
            .args(["--unary", "20", "--failing", "5", "--streams", "3"])
            .args(["--message", GRPC_MESSAGE_SECRET])
            .arg(format!(
                "--metadata=authorization=Bearer {GRPC_BEARER_SECRET}"
            ))
            .arg(format!("--metadata=x-api-key={GRPC_METADATA_SECRET}")),
    );
    let tally: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the client prints its tally as JSON");
    let mut calls = BTreeMap::new();
    for (method, codes) in tally.as_object().expect("an object") {
        for (code, n) in codes.as_object().expect("an object") {
            calls.insert((method.clone(), code.clone()), n.as_u64().expect("a count"));
        }
    }
    assert_eq!(
        calls.get(&("Add".into(), "5".into())),
        Some(&5),
        "{calls:?}"
    );
    let logged = wait_until(METRICS_TIMEOUT, || {
        let text = std::fs::read_to_string(&grpc_log).unwrap_or_default();
        let mut logged = BTreeMap::new();
        for line in text.lines() {
            let (method, code) = line.split_once(' ').expect("METHOD CODE");
            *logged
                .entry((method.to_string(), code.to_string()))
                .or_default() += 1;
        }
        (logged == calls).then_some(())
    });
    assert!(logged.is_some(), "server log and client tally disagree");

    // nginx logged the barrier after every request before it.
    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let served = |method: &str| {
        log.under("/p/")
            .filter(|e| e.method == method && e.status == 200 && e.path().ends_with("/x"))
            .count() as u64
    };
    assert_eq!((served("GET"), served("POST")), (4, 4), "nginx's log");
    let requests = 8;
    let mut wants = vec![
        Want::server("nginx", "/p/{id}/x").is(requests),
        Want::client("h2load", "/p/{id}/x").is(requests),
    ];
    let total: u64 = calls.values().sum();
    for name in [RPC_SERVER, RPC_CLIENT] {
        for ((method, code), n) in &calls {
            wants.push(
                Want::metric(name)
                    .label("rpc_service", "shop.Cart")
                    .label("rpc_method", method)
                    .label("rpc_grpc_status_code", code)
                    .is(*n),
            );
        }
        wants.push(Want::metric(name).is(total));
    }
    tracer.expect(&wants);
    watch_caught_up(&watch, &nginx);
    assert_eq!(
        printed_path(&watch, "/p/{id}/x"),
        2 * requests as usize,
        "watch lines for /p/{{id}}/x:\n{}",
        watch.stdout()
    );
    assert_eq!(
        printed(&watch, 4, "grpc"),
        2 * total as usize,
        "grpc lines:\n{}",
        watch.stdout()
    );

    let mut secrets = http_secrets();
    secrets.extend([
        GRPC_BEARER_SECRET,
        GRPC_METADATA_SECRET,
        GRPC_MESSAGE_SECRET,
    ]);
    assert_no_output_holds(&tracer, watch, &secrets);
}

/// Waits until the tracer's operations of `filter` per verb equal `want`.
fn expect_operations(tracer: &Tracer, filter: &[(&str, &str)], want: &BTreeMap<String, u64>) {
    let got = wait_until(METRICS_TIMEOUT, || {
        let got = tracer
            .scrape()
            .count_by(DB_COUNT, filter, "db_operation_name");
        (got == *want).then_some(())
    });
    let scrape = tracer.scrape();
    assert!(
        got.is_some(),
        "{filter:?} per verb differs from the server's statistics:\nserver: {want:?}\n\
         tracer: {:?}\n{}",
        scrape.count_by(DB_COUNT, filter, "db_operation_name"),
        scrape.lines("tracer_", &[]),
    );
}

#[test]
fn sql_secrets_reach_no_output() {
    if !privileged("sql_secrets_reach_no_output") {
        return;
    }
    let dir = TestDir::new("privacy-sql");
    let tracer = Tracer::start(&dir, &["--log", "trace"]);
    let nginx = Nginx::start(&dir, "");
    // alice must send her password in clear over TCP: the first matching
    // line of pg_hba.conf decides.
    let pg = Postgres::start_with_hba(&dir, "host all alice 127.0.0.1/32 password\n");
    let db = Mariadb::start(&dir);
    // Set up over the Unix socket, which is not traced.
    pg.psql_socket(&format!(
        "CREATE TABLE people (id bigint, name text); \
         CREATE ROLE alice LOGIN PASSWORD '{PG_PASSWORD}'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON people TO alice"
    ));
    pg.psql_socket("SELECT pg_stat_statements_reset()");
    let before = db.com_status();
    let watch = start_watch(&dir, &nginx, &[pg.port(), db.port()]);

    let port = pg.port().to_string();
    let alice = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "alice",
        "-d",
        "postgres",
    ];
    // Without the password the server refuses alice: the password below is
    // what logs her in.
    let out = Command::new(require_tool("psql"))
        .args(alice)
        .args(["-w", "-X", "-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .output()
        .expect("run psql");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no password supplied"),
        "alice logged in without her password: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = dir.write(
        "secrets.sql",
        format!(
            "INSERT INTO people VALUES ({PG_NUMBER}, '{PG_LITERAL}');\n\
             SELECT name FROM people WHERE id = {PG_NUMBER};\n\
             SELECT id FROM people WHERE name = '{PG_LITERAL}';\n\
             UPDATE people SET name = '{PG_UPDATED}' WHERE id = {PG_NUMBER};\n\
             COPY people FROM STDIN;\n1\t{PG_COPIED}\n\\.\n\
             SELECT '{PG_ERROR}'::int;\n\
             DELETE FROM people WHERE name = '{PG_UPDATED}';\n"
        ),
    );
    let out = Command::new(require_tool("psql"))
        .args(alice)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-f"])
        .arg(&script)
        .env("PGPASSWORD", PG_PASSWORD)
        .output()
        .expect("run psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("ERROR").count(),
        1,
        "psql did not fail exactly once: {stderr}"
    );
    assert!(stderr.contains(PG_ERROR), "{stderr}");
    // In prepared mode pgbench sends its variables as the parameters of
    // Bind messages, not in the statement text.
    let params = dir.write(
        "params.sql",
        "INSERT INTO people VALUES (:id, :name);\n\
         SELECT id FROM people WHERE name = :name;\n",
    );
    run_ok(
        Command::new(require_tool("pgbench"))
            .args(alice)
            .args(["-n", "-c", "1", "-t", "5", "-M", "prepared", "-f"])
            .arg(&params)
            .arg(format!("--define=id={PG_PARAM_NUMBER}"))
            .arg(format!("--define=name={PG_PARAM}"))
            .env("PGPASSWORD", PG_PASSWORD),
    );

    let mysql_port = db.port().to_string();
    let out = Command::new(require_tool("mariadb"))
        .args([
            "--host=127.0.0.1",
            "--protocol=tcp",
            "--user=root",
            "--force",
        ])
        .arg(format!("--port={mysql_port}"))
        .arg("-e")
        .arg(format!(
            "CREATE DATABASE priv; \
             CREATE TABLE priv.people (id BIGINT PRIMARY KEY, name VARCHAR(64) UNIQUE); \
             INSERT INTO priv.people VALUES ({MY_NUMBER}, '{MY_LITERAL}'); \
             SELECT name FROM priv.people WHERE id = {MY_NUMBER}; \
             SELECT id FROM priv.people WHERE name = '{MY_LITERAL}'; \
             UPDATE priv.people SET name = '{MY_UPDATED}' WHERE id = {MY_NUMBER}; \
             INSERT INTO priv.people VALUES (1, '{MY_UPDATED}'); \
             DELETE FROM priv.people WHERE name = '{MY_UPDATED}';"
        ))
        .output()
        .expect("run mariadb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1062") && stderr.contains(MY_UPDATED),
        "the duplicate did not fail with 1062 naming its value: {stderr}"
    );
    let out = run_ok(
        Command::new(require_tool("perl"))
            .arg(tracer_e2e::peers_dir().join("mysql_prepared.pl"))
            .args([&mysql_port, "3", MY_PARAM]),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("error 1062 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Completed statements per verb, as pg_stat_statements counts them: the
    // script's and pgbench's five transactions of two statements.
    let pg_want = pg.statement_counts();
    let planned: BTreeMap<String, u64> = [
        ("COPY", 1),
        ("DELETE", 1),
        ("INSERT", 1 + 5),
        ("SELECT", 2 + 5),
        ("UPDATE", 1),
    ]
    .map(|(verb, n)| (verb.to_string(), n))
    .into();
    assert_eq!(pg_want, planned, "pg_stat_statements");
    let my_want = Mariadb::verbs_between(&before, &db.com_status());
    tracer.barrier(&nginx);
    expect_operations(
        &tracer,
        &[("db_system_name", "postgresql"), ("error_type", "")],
        &pg_want,
    );
    expect_operations(&tracer, &[("db_system_name", "mysql")], &my_want);
    let scrape = tracer.scrape();
    let pg_errors = scrape.count_by(DB_COUNT, &[("db_system_name", "postgresql")], "error_type");
    assert_eq!(pg_errors.get("22P02"), Some(&1), "{pg_errors:?}");
    assert_eq!(
        pg_errors.len(),
        2,
        "no error but 22P02 besides the successes"
    );
    let my_errors = scrape.count_by(DB_COUNT, &[("db_system_name", "mysql")], "error_type");
    assert_eq!(my_errors.get("1062"), Some(&2), "{my_errors:?}");
    assert_eq!(
        my_errors.len(),
        2,
        "no error but 1062 besides the successes"
    );

    // One line per operation, failed ones too.
    watch_caught_up(&watch, &nginx);
    let pg_total: u64 = pg_want.values().sum::<u64>() + 1;
    let my_total: u64 = my_want.values().sum();
    assert_eq!(
        (
            printed(&watch, 4, "postgresql"),
            printed(&watch, 4, "mysql")
        ),
        (pg_total as usize, my_total as usize),
        "database lines:\n{}",
        watch.stdout()
    );

    assert_no_output_holds(
        &tracer,
        watch,
        &[
            PG_PASSWORD,
            PG_LITERAL,
            PG_NUMBER,
            PG_UPDATED,
            PG_COPIED,
            PG_ERROR,
            PG_PARAM,
            PG_PARAM_NUMBER,
            MY_LITERAL,
            MY_NUMBER,
            MY_UPDATED,
            MY_PARAM,
        ],
    );
}
