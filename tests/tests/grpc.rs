//! gRPC over HTTP/2: a Python grpcio server and client (Debian's
//! python3-grpcio, generic handlers over raw bytes: `peers/grpc_peer.py`)
//! with unary calls, some failing with NOT_FOUND, server-streaming and
//! client-streaming calls on one channel.
//!
//! Ground truth: the client's own tally (method -> status code -> calls)
//! and the server's log of the calls it finished. Each call is one
//! `rpc_server_duration_seconds` observation on the server and one
//! `rpc_client_duration_seconds` on the client, with the status from the
//! trailers, and never an HTTP observation.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use tracer_e2e::databases::run_ok;
use tracer_e2e::net::accepts;
use tracer_e2e::{free_port, privileged, wait_until, Guard, TestDir, Tracer};

const SERVER: &str = "rpc_server_duration_seconds_count";
const CLIENT: &str = "rpc_client_duration_seconds_count";

/// (method, status) -> calls, from `METHOD CODE` lines.
fn server_log(text: &str) -> BTreeMap<(String, String), u64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        if let Some((method, code)) = line.split_once(' ') {
            *calls
                .entry((method.to_string(), code.to_string()))
                .or_default() += 1;
        }
    }
    calls
}

fn tracer_calls(tracer: &Tracer, name: &str) -> BTreeMap<(String, String), u64> {
    let scrape = tracer.scrape();
    let mut calls = BTreeMap::new();
    for s in scrape.series(name, &[("rpc_service", "shop.Cart")]) {
        let key = (
            s.label("rpc_method").to_string(),
            s.label("rpc_grpc_status_code").to_string(),
        );
        *calls.entry(key).or_default() += s.value as u64;
    }
    calls
}

#[test]
fn grpc_calls_counted_exactly_with_their_status_codes() {
    if !privileged("grpc_calls_counted_exactly_with_their_status_codes") {
        return;
    }
    let dir = TestDir::new("grpc");
    let tracer = Tracer::start(&dir, &[]);
    let python = "/usr/bin/python3";
    let script = tracer_e2e::peers_dir().join("grpc_peer.py");
    let port = free_port();
    let log = dir.join("grpc-server.log");
    let mut server = Guard::spawn(
        "grpc-server",
        Command::new(python)
            .arg(&script)
            .args(["serve", "--port", &port.to_string(), "--log"])
            .arg(&log),
        &dir,
    );
    let up = wait_until(std::time::Duration::from_secs(20), || {
        server.assert_running();
        accepts(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).then_some(())
    });
    assert!(up.is_some(), "the gRPC server never listened");

    let out = run_ok(
        Command::new(python)
            .arg(&script)
            .args(["call", "--port", &port.to_string()])
            .args(["--unary", "200", "--failing", "17", "--streams", "25"]),
    );
    let tally: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the client prints its tally as JSON");
    let mut want = BTreeMap::new();
    for (method, codes) in tally.as_object().expect("an object") {
        for (code, n) in codes.as_object().expect("an object") {
            want.insert((method.clone(), code.clone()), n.as_u64().expect("a count"));
        }
    }
    assert_eq!(want.get(&("Add".into(), "5".into())), Some(&17), "{want:?}");
    let logged = wait_until(std::time::Duration::from_secs(10), || {
        let logged = server_log(&std::fs::read_to_string(&log).unwrap_or_default());
        (logged == want).then_some(())
    });
    assert!(logged.is_some(), "server log and client tally disagree");

    let got = wait_until(tracer_e2e::wait::METRICS_TIMEOUT, || {
        let server = tracer_calls(&tracer, SERVER);
        let client = tracer_calls(&tracer, CLIENT);
        (server == want && client == want).then_some(())
    });
    let scrape = tracer.scrape();
    assert!(
        got.is_some(),
        "gRPC calls differ from the client's tally {want:?}:\nserver side {:?}\nclient side \
         {:?}\n{}",
        tracer_calls(&tracer, SERVER),
        tracer_calls(&tracer, CLIENT),
        scrape.lines("tracer_", &[("protocol", "http2")])
            + &scrape.lines("tracer_kernel_drops", &[])
            + &scrape.lines("tracer_truncated", &[])
            + &scrape.lines("tracer_stream_gap", &[]),
    );
    // Never also counted as HTTP requests.
    for name in [
        "http_server_request_duration_seconds_count",
        "http_client_request_duration_seconds_count",
    ] {
        let grpc_as_http = scrape
            .series(name, &[])
            .filter(|s| s.label("http_route").starts_with("/shop.Cart"))
            .count();
        assert_eq!(grpc_as_http, 0, "{name} holds gRPC calls");
    }
    for name in ["tracer_parser_resyncs_total", "tracer_unmatched_total"] {
        assert_eq!(scrape.count(name, &[("protocol", "http2")]), 0, "{name}");
    }
}
