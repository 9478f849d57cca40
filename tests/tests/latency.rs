//! Durations: the Python peer sleeps 100 ms before answering `/slow`, so every
//! exchange lasts between 0.1 s and 0.25 s. On both sides (service
//! `python3.x`, server; `curl`, client) the `le="0.1"` bucket must hold none
//! of them and `le="0.25"` all of them. A tracer that timed the wrong events
//! (only the response write, say, or request-to-first-byte of a later read)
//! or mis-bucketed would put them elsewhere.

use tracer_e2e::net::url;
use tracer_e2e::tracer::SERVER_COUNT;
use tracer_e2e::{curl, privileged, Peer, PyServer, TestDir, Tracer, Want};

const REQUESTS: u64 = 8;

#[test]
fn slow_handler_lands_between_100_and_250_ms() {
    if !privileged("slow_handler_lands_between_100_and_250_ms") {
        return;
    }
    let dir = TestDir::new("latency");
    let tracer = Tracer::start(&dir, &[]);
    let py = PyServer::start(&dir);

    let urls = vec![url(py.addr(), "/slow"); REQUESTS as usize];
    let transfers = curl(&[], &urls);
    assert!(transfers.iter().all(|t| t.status == 200), "{transfers:?}");

    tracer.barrier(&py);
    let log = py.access_log();
    assert_eq!(
        log.under("/slow").count() as u64,
        REQUESTS,
        "python's access log"
    );

    let service = py.service();
    let server = || Want::server(service, "/slow").method("GET").status(200);
    let client = || Want::client("curl", "/slow").method("GET").status(200);
    tracer.expect(&[
        server().is(REQUESTS),
        server().bucket("0.1").is(0),
        server().bucket("0.25").is(REQUESTS),
        server().bucket("+Inf").is(REQUESTS),
        client().is(REQUESTS),
        client().bucket("0.1").is(0),
        client().bucket("0.25").is(REQUESTS),
    ]);

    let scrape = tracer.scrape();
    let sum = scrape.sum(
        &SERVER_COUNT.replace("_count", "_sum"),
        &[("service_name", service), ("http_route", "/slow")],
    );
    let floor = REQUESTS as f64 * 0.1;
    assert!(
        (floor..floor * 2.5).contains(&sum),
        "server-side duration sum {sum} s for {REQUESTS} requests of >= 100 ms each"
    );
}
