//! HTTP/1.1 pipelining: the test process writes 10 requests to nginx in one
//! `write`, then reads the 10 responses. nginx (server) reads them in one go;
//! the client (this test process, named `e2e-pipeliner` through
//! `--service-name`) sends them in one syscall. A tracer that parsed one
//! message per syscall would count 1, not 10, on either side.
//!
//! Ground truth: nginx's access log (10 requests, all on one connection) and
//! the 10 responses read here.

use std::io::{BufReader, Write};

use tracer_e2e::net::{connect, get_request};
use tracer_e2e::{own_service_name, privileged, read_response, Nginx, Peer, TestDir, Tracer, Want};

const PIPELINED: u64 = 10;

#[test]
fn ten_pipelined_requests_in_one_write_count_ten() {
    if !privileged("ten_pipelined_requests_in_one_write_count_ten") {
        return;
    }
    let dir = TestDir::new("pipelining");
    let rename = format!("{}=e2e-pipeliner", own_service_name());
    let tracer = Tracer::start(&dir, &["--service-name", &rename]);
    let nginx = Nginx::start(
        &dir,
        "        location = /pipe { return 200 \"pipelined\\n\"; }\n",
    );

    let mut stream = connect(nginx.addr());
    let burst = get_request("/pipe").repeat(PIPELINED as usize);
    stream
        .write_all(burst.as_bytes())
        .expect("write the pipelined burst");
    let mut reader = BufReader::new(stream);
    for i in 0..PIPELINED {
        let response = read_response(&mut reader, false)
            .unwrap_or_else(|e| panic!("response {i} of the pipeline: {e}"));
        assert_eq!(response.status, 200, "response {i}");
        assert_eq!(response.body_text(), "pipelined\n", "response {i}");
    }
    drop(reader);

    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let entries: Vec<_> = log.under("/pipe").collect();
    assert_eq!(entries.len() as u64, PIPELINED, "nginx's access log");
    assert!(
        entries
            .iter()
            .all(|e| e.connection == entries[0].connection),
        "the requests were not all on one connection: {entries:?}"
    );

    tracer.expect(&[
        Want::server("nginx", "/pipe").is(PIPELINED),
        Want::server("nginx", "/pipe")
            .method("GET")
            .status(200)
            .is(PIPELINED),
        Want::client("e2e-pipeliner", "/pipe").is(PIPELINED),
        Want::client("e2e-pipeliner", "/pipe")
            .method("GET")
            .status(200)
            .label("server_port", &nginx.port().to_string())
            .is(PIPELINED),
    ]);
}
