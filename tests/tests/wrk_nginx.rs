//! Load: wrk drives nginx on loopback at full speed for 3 s; the tracer must
//! count every exchange on both ends exactly, with no sampling and no loss.
//!
//! Ground truth:
//! - server side (service `nginx`): nginx's access log, counting the requests
//!   whose response nginx finished sending (`$request_completion` = OK);
//! - client side (service `wrk`): the "N requests in" wrk reports. wrk counts a
//!   request when it has read and parsed its response. When the `-d` timer
//!   fires, up to one request per connection (`-c4`) is still in flight: nginx
//!   answered it (it is in the access log and in the server-side count) but wrk
//!   never read the response, so the exchange never completed on the client
//!   side: it is recorded as `error_type="connection_closed"` with no status,
//!   never as answered. Hence client answered (status 200) == wrk's count
//!   exactly, and the closed ones lie between what nginx answered unread and
//!   the 4 connections (a request nginx had not read yet is closed too).

use std::process::Command;

use tracer_e2e::net::url;
use tracer_e2e::{privileged, require_tool, Nginx, Peer, TestDir, Tracer, Want};

const CONNECTIONS: u64 = 4;

/// `N` from wrk's "N requests in 3.00s, ..." line.
fn wrk_requests(stdout: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no \"N requests in\" line in wrk's output:\n{stdout}"))
}

#[test]
fn wrk_to_nginx_counted_exactly_on_both_sides() {
    if !privileged("wrk_to_nginx_counted_exactly_on_both_sides") {
        return;
    }
    let dir = TestDir::new("wrk");
    let tracer = Tracer::start(&dir, &[]);
    let nginx = Nginx::start(&dir, "");

    let out = Command::new(require_tool("wrk"))
        .args(["-t1", &format!("-c{CONNECTIONS}"), "-d3s"])
        .arg(url(nginx.addr(), "/wrk"))
        .output()
        .expect("run wrk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("Socket errors") && !stdout.contains("Non-2xx"),
        "wrk saw errors, the run is not a clean baseline:\n{stdout}"
    );
    let wrk_count = wrk_requests(&stdout);
    assert!(
        wrk_count > 1000,
        "wrk made only {wrk_count} requests:\n{stdout}"
    );

    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let entries: Vec<_> = log.under("/wrk").collect();
    let served = entries.iter().filter(|e| e.completed).count() as u64;
    assert!(
        entries.iter().all(|e| e.method == "GET" && e.status == 200),
        "nginx answered something other than GET 200 on /wrk"
    );
    println!(
        "wrk: {wrk_count} requests completed; nginx: {} logged, {served} fully sent",
        entries.len()
    );
    assert!(
        served >= wrk_count && served - wrk_count <= CONNECTIONS,
        "ground truths disagree: nginx sent {served} responses, wrk read {wrk_count} \
         (at most {CONNECTIONS} may be in flight at the end)"
    );

    let port = nginx.port().to_string();
    tracer.expect(&[
        Want::server("nginx", "/wrk").is(served),
        Want::server("nginx", "/wrk")
            .method("GET")
            .status(200)
            .label("error_type", "")
            .is(served),
        Want::client("wrk", "/wrk")
            .method("GET")
            .status(200)
            .label("error_type", "")
            .is(wrk_count),
        Want::client("wrk", "/wrk")
            .method("GET")
            .status(200)
            .label("error_type", "")
            .label("server_address", "127.0.0.1")
            .label("server_port", &port)
            .is(wrk_count),
    ]);
    // wrk closes its connections at the end with up to one request each in
    // flight: those are the client's `connection_closed` exchanges, never
    // counted as answered. nginx answered (and logged) the ones it had read.
    let closed = tracer.scrape().count(
        tracer_e2e::tracer::CLIENT_COUNT,
        &[
            ("service_name", "wrk"),
            ("http_route", "/wrk"),
            ("error_type", "connection_closed"),
        ],
    );
    assert!(
        closed >= served - wrk_count && closed <= CONNECTIONS,
        "{closed} requests closed in flight; nginx answered {} that wrk never read, and \
         wrk has {CONNECTIONS} connections",
        served - wrk_count
    );
}
