//! Methods, statuses, routes and address families: separate curl runs against
//! nginx over IPv4 and IPv6 — GET 200, POST 201, GET 404, GET 503 — each
//! (method, status, route) a different count, so a label mix-up shows.
//!
//! Ground truth: nginx's access log for the server side (service `nginx`,
//! `error_type` = the status for >= 500 only); for the client side (service
//! `curl`, `error_type` set for >= 400, `server_address` ::1 or 127.0.0.1) the
//! plan of curl runs below, each checked against the status curl reported.
//! Routes drop the query string and template numeric segments
//! (`/c/items/42?x=1` → `/c/items/{id}`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tracer_e2e::net::url;
use tracer_e2e::{curl, privileged, template_route, Nginx, Peer, TestDir, Tracer, Want};

const LOCATIONS: &str = r#"
        location = /c/created { return 201 "created\n"; }
        location = /c/missing { return 404; }
        location = /c/unavailable { return 503; }
"#;

#[test]
fn curl_methods_and_statuses_over_ipv4_and_ipv6() {
    if !privileged("curl_methods_and_statuses_over_ipv4_and_ipv6") {
        return;
    }
    let dir = TestDir::new("curl");
    let tracer = Tracer::start(&dir, &[]);
    let nginx = Nginx::start(&dir, LOCATIONS);
    let (v4, v6) = (nginx.addr(), nginx.addr_v6());

    // (method, path, status, address, runs): every run is its own curl process.
    let plan: [(&str, &str, u16, SocketAddr, u64); 10] = [
        ("GET", "/c/ok", 200, v4, 3),
        ("GET", "/c/ok", 200, v6, 2),
        ("GET", "/c/items/42?x=1", 200, v4, 1),
        ("GET", "/c/items/7", 200, v6, 1),
        ("POST", "/c/created", 201, v4, 2),
        ("POST", "/c/created", 201, v6, 1),
        ("GET", "/c/missing", 404, v4, 4),
        ("GET", "/c/unavailable", 503, v4, 2),
        ("GET", "/c/unavailable", 503, v6, 3),
        ("GET", "/c/missing", 404, v6, 5),
    ];
    // (method, status, route, address) → runs, for the client side.
    let mut client: BTreeMap<(&str, u16, String, String), u64> = BTreeMap::new();
    for (method, path, status, addr, runs) in plan {
        for _ in 0..runs {
            let extra: &[&str] = if method == "POST" {
                &["-d", "name=value"]
            } else {
                &[]
            };
            let got = curl(extra, &[url(addr, path)]);
            assert_eq!(got[0].status, status, "{method} {path} via {addr}");
        }
        *client
            .entry((method, status, template_route(path), addr.ip().to_string()))
            .or_default() += runs;
    }

    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let server = log.counts("/c/");
    // The access log agrees with the plan (else the harness is wrong).
    let planned: u64 = plan.iter().map(|p| p.4).sum();
    assert_eq!(
        server.values().sum::<u64>(),
        planned,
        "access log vs plan: {server:?}"
    );

    let port = nginx.port().to_string();
    let mut wants = Vec::new();
    let mut route_totals: BTreeMap<String, u64> = BTreeMap::new();
    for ((method, status, route), n) in &server {
        let error_type = if *status >= 500 {
            status.to_string()
        } else {
            String::new()
        };
        wants.push(
            Want::server("nginx", route)
                .method(method)
                .status(*status)
                .label("error_type", &error_type)
                .is(*n),
        );
        *route_totals.entry(route.clone()).or_default() += n;
    }
    for (route, n) in &route_totals {
        wants.push(Want::server("nginx", route).is(*n));
        wants.push(Want::client("curl", route).is(*n));
    }
    for ((method, status, route, address), n) in &client {
        let error_type = if *status >= 400 {
            status.to_string()
        } else {
            String::new()
        };
        wants.push(
            Want::client("curl", route)
                .method(method)
                .status(*status)
                .label("error_type", &error_type)
                .label("server_address", address)
                .label("server_port", &port)
                .is(*n),
        );
    }
    tracer.expect(&wants);
}
