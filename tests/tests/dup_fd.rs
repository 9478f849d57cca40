//! One socket, two file descriptors: the client writes its requests on one fd
//! and reads the responses on a `dup` of it — what Rust's
//! `TcpStream::try_clone` reader/writer split does, and what inetd-style
//! servers do with stdin/stdout. The exchange is one connection on the wire
//! and in nginx's access log, so the tracer must count it on the client side
//! too; a tracer that keys connections by (process, fd) sees requests without
//! responses on one fd and responses without requests on the other.
//!
//! Ground truth: nginx's access log (N requests on one connection) and the N
//! responses read here.

use std::io::{BufReader, Write};

use tracer_e2e::net::{connect, get_request};
use tracer_e2e::{own_service_name, privileged, read_response, Nginx, Peer, TestDir, Tracer, Want};

const REQUESTS: u64 = 5;

#[test]
fn requests_on_one_fd_and_responses_on_its_dup_are_counted() {
    if !privileged("requests_on_one_fd_and_responses_on_its_dup_are_counted") {
        return;
    }
    let dir = TestDir::new("dupfd");
    let rename = format!("{}=e2e-dup", own_service_name());
    let tracer = Tracer::start(&dir, &["--service-name", &rename]);
    let nginx = Nginx::start(&dir, "");

    let mut writer = connect(nginx.addr());
    let mut reader = BufReader::new(writer.try_clone().expect("dup the socket"));
    for i in 0..REQUESTS {
        writer
            .write_all(get_request("/dup").as_bytes())
            .expect("write a request");
        let response = read_response(&mut reader, false).expect("read a response");
        assert_eq!(response.status, 200, "request {i}");
    }
    drop((reader, writer));

    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let entries: Vec<_> = log.under("/dup").collect();
    assert_eq!(entries.len() as u64, REQUESTS, "nginx's access log");
    assert!(
        entries
            .iter()
            .all(|e| e.connection == entries[0].connection),
        "the requests were not all on one connection: {entries:?}"
    );
    tracer.expect(&[
        Want::server("nginx", "/dup").is(REQUESTS),
        Want::client("e2e-dup", "/dup").is(REQUESTS),
        Want::client("e2e-dup", "/dup")
            .method("GET")
            .status(200)
            .is(REQUESTS),
    ]);
}
