//! Requests that never get their response are errors you can see: with
//! `--request-timeout 2s`, a request still waiting after 2 s lands in the
//! duration histograms of both sides with an empty status code and
//! `error_type="timeout"`; a request whose connection closes first gets
//! `error_type="connection_closed"`. A late answer is not counted again.
//!
//! Ground truth: the Python peer's `/hang?s=N` sleeps N seconds before it
//! answers (its access log shows when it did); curl gives up after
//! `--max-time` (exit code 28).

use std::process::Command;

use tracer_e2e::net::url;
use tracer_e2e::tracer::{CLIENT_COUNT, SERVER_COUNT};
use tracer_e2e::{privileged, require_tool, Peer, PyServer, TestDir, Tracer, Want};

/// curl `path` giving up after `max_time` seconds; returns curl's exit code.
fn curl_giving_up(server: &PyServer, path: &str, max_time: &str) -> Option<i32> {
    let out = Command::new(require_tool("curl"))
        .args(["-sS", "-o", "/dev/null", "--max-time", max_time])
        .arg(url(server.addr(), path))
        .output()
        .expect("run curl");
    out.status.code()
}

#[test]
fn unanswered_requests_are_timeouts_or_closed_connections_on_both_sides() {
    if !privileged("unanswered_requests_are_timeouts_or_closed_connections_on_both_sides") {
        return;
    }
    let dir = TestDir::new("timeouts");
    let tracer = Tracer::start(&dir, &["--request-timeout", "2s"]);
    let server = PyServer::start(&dir);
    let curl_name = tracer_e2e::exe_service_name(&require_tool("curl"));

    // Answered after 4 s, 2 s past the timeout; curl waits for it.
    let waited = std::thread::spawn({
        let server_addr = server.addr();
        move || {
            let out = Command::new(require_tool("curl"))
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "8",
                ])
                .arg(format!("http://{server_addr}/hang?s=4"))
                .output()
                .expect("run curl");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    });
    // curl gives up after 1 s and closes; the server answers (into a closed
    // connection) after 3 s.
    assert_eq!(
        curl_giving_up(&server, "/hang-closed?s=3", "1"),
        Some(28),
        "curl timed out"
    );
    assert_eq!(waited.join().expect("curl thread"), "200");
    // The server has answered both by now (and logged them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.access_log().under("/hang").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    tracer.barrier(&server);

    let failed = |metric: &str, service: &str, route: &str, error: &str, n: u64| {
        Want::metric(metric)
            .label("service_name", service)
            .label("http_route", route)
            .label("http_response_status_code", "")
            .label("error_type", error)
            .is(n)
    };
    let py = server.service().to_string();
    tracer.expect(&[
        failed(SERVER_COUNT, &py, "/hang", "timeout", 1),
        failed(SERVER_COUNT, &py, "/hang-closed", "timeout", 1),
        failed(CLIENT_COUNT, &curl_name, "/hang", "timeout", 1),
        failed(
            CLIENT_COUNT,
            &curl_name,
            "/hang-closed",
            "connection_closed",
            1,
        ),
        // The late answers are not counted a second time.
        Want::server(&py, "/hang").is(1),
        Want::server(&py, "/hang-closed").is(1),
        Want::client(&curl_name, "/hang").is(1),
        Want::client(&curl_name, "/hang-closed").is(1),
    ]);
    // A timed-out request's duration is the wait until the timeout was
    // noticed: at least the 2 s timeout, under the 4 s the answer took.
    let scrape = tracer.scrape();
    let filter = [("service_name", py.as_str()), ("http_route", "/hang")];
    let sum = scrape.sum("http_server_request_duration_seconds_sum", &filter);
    assert!((2.0..4.0).contains(&sum), "timeout recorded after {sum} s");
    assert_eq!(
        scrape.count(
            "http_server_request_duration_seconds_bucket",
            &[
                ("service_name", py.as_str()),
                ("http_route", "/hang"),
                ("le", "1.0")
            ]
        ),
        0
    );
}
