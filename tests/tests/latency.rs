//! Durations: the Python peer sleeps 100 ms before answering `/slow`, so every
//! exchange lasts between 0.1 s and 0.25 s. On both sides (service
//! `python3.x`, server; `curl`, client) the `le="0.1"` bucket must hold none
//! of them and `le="0.25"` all of them. A tracer that timed the wrong events
//! (only the response write, say, or request-to-first-byte of a later read)
//! or mis-bucketed would put them elsewhere. The sums must match curl's own
//! clock (`time_total - time_pretransfer`) to within a millisecond a
//! request on the client side, and the server side must lie inside the
//! client's.

use tracer_e2e::net::url;
use tracer_e2e::tracer::{CLIENT_COUNT, SERVER_COUNT};
use tracer_e2e::{curl, privileged, Peer, PyServer, TestDir, Tracer, Want};

const REQUESTS: u64 = 8;
/// How far, per request, the tracer's durations may lie from curl's own:
/// the time a hooked syscall takes to return, and Python parsing a request.
const TOLERANCE_S: f64 = 0.001;

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

    // The sums against curl's own clock: the client side measures what curl
    // measures (request sent to response read), up to the time a syscall
    // takes to return; the server side lies inside it, short of it by the
    // loopback transfer and the interpreter's parsing.
    let curl_s: f64 = transfers.iter().map(|t| t.exchange_s).sum();
    let scrape = tracer.scrape();
    let sum = |name: &str, service: &str| {
        scrape.sum(
            &name.replace("_count", "_sum"),
            &[("service_name", service), ("http_route", "/slow")],
        )
    };
    let client_s = sum(CLIENT_COUNT, "curl");
    let server_s = sum(SERVER_COUNT, service);
    let per_request_ms = |s: f64| s * 1000.0 / REQUESTS as f64;
    let report = format!(
        "per request: curl {:.3} ms, tracer client side {:.3} ms, server side {:.3} ms",
        per_request_ms(curl_s),
        per_request_ms(client_s),
        per_request_ms(server_s)
    );
    eprintln!("{report}");
    assert!(
        (client_s - curl_s).abs() <= REQUESTS as f64 * TOLERANCE_S,
        "client side differs from curl's clock by more than {TOLERANCE_S} s a request; {report}"
    );
    // The server's read can return on another CPU a little before the
    // client's write does: a tenth of the tolerance the other way.
    let inside = client_s - server_s;
    assert!(
        (-(REQUESTS as f64) * TOLERANCE_S / 10.0..=REQUESTS as f64 * TOLERANCE_S).contains(&inside),
        "server side not inside the client's exchange; {report}"
    );
}
