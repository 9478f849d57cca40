//! A keep-alive connection that predates the tracer: one request is answered
//! on it before the daemon starts, then N more after. The daemon must adopt
//! the connection it never saw open (it scans /proc at start-up) and count
//! exactly N on nginx's side: not N+1 (the old request replayed or a stale
//! half-exchange completed), not N-1 (the first request after start-up lost
//! while the parser synchronises). The client end of that connection is this
//! test process (named `e2e-adopter` through `--service-name`): adopted too,
//! it must count the same N.
//!
//! Ground truth: nginx's access log (N+1 requests on one connection, the last
//! N after the tracer was ready) and the N responses read here.

use std::io::{BufReader, Write};

use tracer_e2e::net::{connect, get_request};
use tracer_e2e::{own_service_name, privileged, read_response, Nginx, Peer, TestDir, Tracer, Want};

const AFTER: u64 = 5;

#[test]
fn keepalive_connection_opened_before_start_counts_only_later_requests() {
    if !privileged("keepalive_connection_opened_before_start_counts_only_later_requests") {
        return;
    }
    count_only_later_requests("preexisting", &[]);
}

/// The packet path picks the connection up mid-stream; its client end is
/// named from the connections found open at start-up (the kernel never saw
/// it connect).
#[test]
fn packet_path_names_both_ends_of_a_connection_opened_before_start() {
    if !privileged("packet_path_names_both_ends_of_a_connection_opened_before_start") {
        return;
    }
    count_only_later_requests(
        "preexisting-pkt",
        &["--source", "packets", "--interfaces", "lo"],
    );
}

fn count_only_later_requests(name: &str, tracer_args: &[&str]) {
    let dir = TestDir::new(name);
    let nginx = Nginx::start(&dir, "");
    // One fd for both directions (no `try_clone`: a dup'd fd is another
    // matter, see dup_fd.rs).
    let mut conn = BufReader::new(connect(nginx.addr()));
    let mut exchange = |path: &str| {
        conn.get_mut()
            .write_all(get_request(path).as_bytes())
            .expect("write a request");
        let response = read_response(&mut conn, false).expect("read a response");
        assert_eq!(response.status, 200, "GET {path}");
    };
    exchange("/pre");

    let rename = format!("{}=e2e-adopter", own_service_name());
    let mut args = vec!["--service-name", rename.as_str()];
    args.extend_from_slice(tracer_args);
    let tracer = Tracer::start(&dir, &args);
    for _ in 0..AFTER {
        exchange("/pre");
    }

    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let entries: Vec<_> = log.under("/pre").collect();
    assert_eq!(entries.len() as u64, AFTER + 1, "nginx's access log");
    assert!(
        entries
            .iter()
            .all(|e| e.connection == entries[0].connection),
        "the requests were not all on one connection: {entries:?}"
    );

    tracer.expect(&[
        Want::server("nginx", "/pre").is(AFTER),
        Want::server("nginx", "/pre")
            .method("GET")
            .status(200)
            .is(AFTER),
        // The other end of the same adopted connection: this process.
        Want::client("e2e-adopter", "/pre").is(AFTER),
    ]);
}
