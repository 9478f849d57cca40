//! Chunked transfer encoding over keep-alive: the Python peer streams a
//! ~1.1 MiB body in 400 chunks of 1 B to 12 kB (each chunk one write, many
//! larger than the tracer's 4096-byte capture), and curl fetches it several
//! times on one connection. The end of each response is known only from the
//! chunked framing, so a tracer that lost track of it would merge responses
//! or never finish one, and the counts would be off.
//!
//! Ground truth: python's access log (server) and curl's transfers (client;
//! one connection for all of them, checked through curl's `num_connects`).

use tracer_e2e::net::url;
use tracer_e2e::{curl, privileged, Peer, PyServer, TestDir, Tracer, Want};

const FETCHES: u64 = 5;

#[test]
fn chunked_responses_over_keepalive_counted_exactly() {
    if !privileged("chunked_responses_over_keepalive_counted_exactly") {
        return;
    }
    let dir = TestDir::new("chunked");
    let tracer = Tracer::start(&dir, &[]);
    let py = PyServer::start(&dir);

    let urls = vec![url(py.addr(), "/chunked"); FETCHES as usize];
    let transfers = curl(&[], &urls);
    assert!(transfers.iter().all(|t| t.status == 200), "{transfers:?}");
    let connects: u32 = transfers.iter().map(|t| t.connects).sum();
    assert_eq!(
        connects, 1,
        "curl should reuse one connection: {transfers:?}"
    );

    tracer.barrier(&py);
    assert_eq!(
        py.access_log().under("/chunked").count() as u64,
        FETCHES,
        "python's access log"
    );
    tracer.expect(&[
        Want::server(py.service(), "/chunked").is(FETCHES),
        Want::server(py.service(), "/chunked")
            .method("GET")
            .status(200)
            .is(FETCHES),
        Want::client("curl", "/chunked").is(FETCHES),
        Want::client("curl", "/chunked")
            .method("GET")
            .status(200)
            .is(FETCHES),
    ]);
}
