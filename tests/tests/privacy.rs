//! Private by default: secrets sent in every position of HTTP/1.1 requests
//! and of Redis commands never reach any output of the tracer, while the
//! traffic itself is still counted exactly. (HTTP/2, gRPC and SQL statement
//! literals are not sent here.)
//!
//! The traffic: curl against nginx with secrets in the path (an email
//! address, a JWT, a random token, a base64 blob), the query string, the
//! `Authorization`, `Cookie` and a custom header, and the request body; and
//! a Redis client sending `AUTH` with a password, then `SET` and `GET` of a
//! secret key and value. The outputs searched: the whole `/metrics` text,
//! `tracer run`'s and `tracer watch`'s stderr at `--log trace`, and the
//! lines `tracer watch` prints.
//!
//! Ground truth for the counts: the plan of requests below (each checked
//! against the status curl reported) and the replies the Redis client read.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use tracer_e2e::databases::Redis;
use tracer_e2e::net::url;
use tracer_e2e::tracer::{printed_lines, spawn_watch, try_get};
use tracer_e2e::wait::{METRICS_TIMEOUT, START_TIMEOUT};
use tracer_e2e::{curl, privileged, wait_until, Guard, Nginx, Peer, TestDir, Tracer, Want};

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
const HEADER_SECRET: &str = "ApiKeySecret-5678";
const BODY_SECRET: &str = "BodySecret-9999";
const REDIS_PASSWORD: &str = "RedisPassword-2468";
const REDIS_KEY: &str = "RedisKeySecret-1357";
const REDIS_VALUE: &str = "RedisValueSecret-8642";

const DB_COUNT: &str = "db_client_operation_duration_seconds_count";

fn all_secrets() -> Vec<&'static str> {
    let mut all = PATH_SECRETS.to_vec();
    all.extend([
        QUERY_SECRET,
        BEARER_SECRET,
        COOKIE_SECRET,
        HEADER_SECRET,
        BODY_SECRET,
        REDIS_PASSWORD,
        REDIS_KEY,
        REDIS_VALUE,
    ]);
    all
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

fn printed_path(watch: &Guard, path: &str) -> usize {
    printed_lines(watch)
        .iter()
        .filter(|l| l.split(' ').nth(5) == Some(path))
        .count()
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
    let port = nginx.port().to_string();
    let redis_port = redis.port().to_string();
    let mut watch = spawn_watch(
        &dir,
        &["--port", &port, "--port", &redis_port, "--log", "trace"],
    );
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

    let headers = [
        format!("Authorization: Bearer {BEARER_SECRET}"),
        format!("Cookie: session={COOKIE_SECRET}"),
        format!("X-Api-Key: {HEADER_SECRET}"),
    ];
    let mut requests = 0;
    for secret in PATH_SECRETS {
        for method in ["GET", "POST"] {
            let mut args = vec!["-X", method];
            for header in &headers {
                args.extend(["-H", header.as_str()]);
            }
            if method == "POST" {
                args.extend(["--data-binary", BODY_SECRET]);
            }
            let target = url(
                nginx.addr(),
                &format!("/p/{secret}/x?token={QUERY_SECRET}&a=b"),
            );
            let got = curl(&args, &[target]);
            assert_eq!(got[0].status, 200, "{method} /p/{secret}/x");
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
    let _ = try_get(nginx.addr(), "/p/end");
    let done = wait_until(METRICS_TIMEOUT, || {
        (printed_path(&watch, "/p/end") == 2).then_some(())
    });
    assert!(
        done.is_some(),
        "watch never printed /p/end; output:\n{}",
        watch.stdout()
    );
    assert_eq!(
        printed_path(&watch, "/p/{id}/x"),
        2 * requests as usize,
        "watch lines for /p/{{id}}/x:\n{}",
        watch.stdout()
    );
    let redis_lines = printed_lines(&watch)
        .iter()
        .filter(|l| l.split(' ').nth(4) == Some("redis"))
        .count();
    assert_eq!(redis_lines, 3, "redis lines:\n{}", watch.stdout());

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
        for secret in all_secrets() {
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
