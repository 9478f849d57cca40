//! Hostile input on a traced port: valid traffic, then one connection of pure
//! binary junk, then a connection carrying a valid request, junk, and another
//! request, then valid traffic again. The HTTP/1 parser must count each burst
//! of junk as exactly one resync per traced side (nginx's and this process's:
//! `tracer_parser_resyncs_total{protocol="http1"}`), count nginx's 400 answer
//! to it as a response without a request on each side
//! (`tracer_unmatched_total{kind="response"}`), keep every valid exchange
//! exact before and after, invent nothing, and the daemon must keep serving
//! `/metrics`.
//!
//! Ground truth: nginx's access log. nginx answers junk with 400 and closes
//! the connection (lingering: it reads and discards what comes after), so the
//! request written after the junk is never answered: the log has no entry for
//! `/g/mixed-after`, and neither may the tracer (pairing that request with
//! the earlier 400 would be a wrong exchange).

use std::io::{BufReader, Read, Write};

use tracer_e2e::net::{connect, get_request};
use tracer_e2e::tracer::try_get;
use tracer_e2e::{
    curl, net::url, own_service_name, privileged, read_response, Nginx, Peer, TestDir, Tracer, Want,
};

const RESYNCS: &str = "tracer_parser_resyncs_total";
const UNMATCHED: &str = "tracer_unmatched_total";

/// (resyncs, responses without a request) of the HTTP/1 parser so far.
fn junk_counters(tracer: &Tracer) -> (u64, u64) {
    let scrape = tracer.scrape();
    (
        scrape.count(RESYNCS, &[("protocol", "http1")]),
        scrape.count(UNMATCHED, &[("protocol", "http1"), ("kind", "response")]),
    )
}

/// Asserts what `bursts` bursts of junk, each answered by nginx with a 400,
/// added to the counters since `before`: each traced side (nginx and this
/// process) resyncs once per burst and sees one response without a request.
fn assert_junk_counted(tracer: &Tracer, before: (u64, u64), bursts: u64) {
    let after = junk_counters(tracer);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (2 * bursts, 2 * bursts),
        "(resyncs, unmatched responses) of http1 after {bursts} bursts of junk on two traced \
         sides; tracer internals:\n{}",
        tracer.scrape().lines("tracer_", &[])
    );
}

/// Bytes that are not HTTP: a NUL first (no method starts with it), then
/// xorshift noise.
fn junk(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = tracer_e2e::noise(len, seed);
    bytes[0] = 0;
    bytes
}

#[test]
fn junk_is_resynced_and_valid_exchanges_stay_exact() {
    if !privileged("junk_is_resynced_and_valid_exchanges_stay_exact") {
        return;
    }
    let dir = TestDir::new("garbage");
    let mut tracer = Tracer::start(&dir, &[]);
    let nginx = Nginx::start(&dir, "");
    let before = vec![url(nginx.addr(), "/g/before"); 3];
    curl(&[], &before);
    tracer.barrier(&nginx);
    let before_junk = junk_counters(&tracer);

    // Connection A: junk only. nginx answers 400 and closes.
    let mut a = connect(nginx.addr());
    a.write_all(&junk(4096, 0x5eed)).expect("write junk");
    let mut answer = Vec::new();
    let _ = a.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "nginx's answer to junk: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(80)])
    );
    drop(a);

    // Connection B: a valid exchange, junk, then a request nginx discards.
    let mut b = BufReader::new(connect(nginx.addr()));
    b.get_mut()
        .write_all(get_request("/g/mixed-before").as_bytes())
        .expect("write");
    let first = read_response(&mut b, false).expect("response to the valid request");
    assert_eq!(first.status, 200);
    b.get_mut()
        .write_all(&junk(512, 0xbad))
        .expect("write junk");
    let second = read_response(&mut b, false).expect("nginx's answer to junk");
    assert_eq!(second.status, 400);
    let mut rest = Vec::new();
    let _ = b.read_to_end(&mut rest);
    // nginx may already have closed for good: a failed write is fine here.
    let _ = b
        .get_mut()
        .write_all(get_request("/g/mixed-after").as_bytes());
    drop(b);

    let after = vec![url(nginx.addr(), "/g/after"); 3];
    curl(&[], &after);

    tracer.barrier(&nginx);
    let me = own_service_name();
    let log = nginx.access_log();
    assert!(
        !log.has_path("/g/mixed-after"),
        "nginx answered the request after junk?"
    );
    let mut wants = vec![
        Want::server("nginx", "/g/mixed-after").is(0),
        Want::client("curl", "/g/before")
            .method("GET")
            .status(200)
            .is(3),
        Want::client("curl", "/g/after")
            .method("GET")
            .status(200)
            .is(3),
        // This process was the client of connection B.
        Want::client(&me, "/g/mixed-before")
            .method("GET")
            .status(200)
            .is(1),
        Want::client(&me, "/g/mixed-after").is(0),
    ];
    for ((method, status, route), n) in log.counts("/g/") {
        wants.push(Want::server("nginx", &route).is(n));
        wants.push(
            Want::server("nginx", &route)
                .method(&method)
                .status(status)
                .is(n),
        );
    }
    tracer.expect(&wants);

    assert_junk_counted(&tracer, before_junk, 2);
    tracer.assert_running();
    let health = try_get(tracer.metrics_addr(), "/healthz").expect("GET /healthz");
    assert_eq!(health.status, 200, "/healthz after junk");
}

/// Junk as the very first bytes a freshly started nginx receives: the port is
/// not yet known to serve HTTP, so only nginx's HTTP 400 answer can tell the
/// tracer this was junk sent to an HTTP server and not another protocol.
#[test]
fn junk_to_a_fresh_http_server_is_a_resync() {
    if !privileged("junk_to_a_fresh_http_server_is_a_resync") {
        return;
    }
    let dir = TestDir::new("garbage-fresh");
    let tracer = Tracer::start(&dir, &[]);
    let nginx = Nginx::start(&dir, "");
    let before_junk = junk_counters(&tracer);

    let mut a = connect(nginx.addr());
    a.write_all(&junk(256, 0xf00d)).expect("write junk");
    let mut answer = Vec::new();
    let _ = a.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "nginx's answer to junk"
    );
    drop(a);

    // Valid traffic afterwards is still exact.
    curl(&[], &vec![url(nginx.addr(), "/g/fresh-after"); 2]);
    tracer.barrier(&nginx);
    tracer.expect(&[
        Want::server("nginx", "/g/fresh-after")
            .method("GET")
            .status(200)
            .is(2),
        Want::client("curl", "/g/fresh-after").is(2),
    ]);
    assert_junk_counted(&tracer, before_junk, 1);
}
