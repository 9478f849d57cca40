//! Multi-megabyte bodies, where the tracer captures only the first bytes of
//! each syscall (or nothing: nginx serves static files with `sendfile`, which
//! the tracer sees as a gap of known length) and must skip the rest by
//! Content-Length without losing the message boundaries:
//! - a 5 MiB static file fetched several times on one keep-alive connection;
//! - 3 MiB POST bodies through nginx (`proxy_pass`, so nginx really reads the
//!   body and forwards it) to the Python peer, which reads them whole — once
//!   plain, once with `Expect: 100-continue`, where nginx's interim
//!   `100 Continue` must not be taken for the final response.
//!
//! Ground truth: nginx's and python's access logs, and curl's transfers.

use tracer_e2e::net::url;
use tracer_e2e::{curl, privileged, Nginx, Peer, PyServer, TestDir, Tracer, Want};

#[test]
fn five_mib_static_file_over_one_keepalive_connection() {
    if !privileged("five_mib_static_file_over_one_keepalive_connection") {
        return;
    }
    const FETCHES: u64 = 4;
    const SIZE: usize = 5 << 20;
    let dir = TestDir::new("bigfile");
    let tracer = Tracer::start(&dir, &[]);
    let nginx = Nginx::start(&dir, "        location /big/ { sendfile on; }\n");
    dir.write(
        "www/big/file.bin",
        tracer_e2e::noise(SIZE, 0x9e37_79b9_7f4a_7c15),
    );

    let urls = vec![url(nginx.addr(), "/big/file.bin"); FETCHES as usize];
    let transfers = curl(&[], &urls);
    assert!(transfers.iter().all(|t| t.status == 200), "{transfers:?}");
    let connects: u32 = transfers.iter().map(|t| t.connects).sum();
    assert_eq!(
        connects, 1,
        "curl should reuse one connection: {transfers:?}"
    );

    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let entries: Vec<_> = log.under("/big/").collect();
    assert_eq!(entries.len() as u64, FETCHES, "nginx's access log");
    assert!(
        entries.iter().all(|e| e.completed && e.status == 200),
        "{entries:?}"
    );

    tracer.expect(&[
        Want::server("nginx", "/big/file.bin").is(FETCHES),
        Want::server("nginx", "/big/file.bin")
            .method("GET")
            .status(200)
            .is(FETCHES),
        Want::client("curl", "/big/file.bin").is(FETCHES),
        Want::client("curl", "/big/file.bin")
            .method("GET")
            .status(200)
            .is(FETCHES),
    ]);
}

#[test]
fn three_mib_uploads_through_nginx_proxy() {
    if !privileged("three_mib_uploads_through_nginx_proxy") {
        return;
    }
    const PLAIN: u64 = 2;
    const SIZE: usize = 3 << 20;
    let dir = TestDir::new("upload");
    let tracer = Tracer::start(&dir, &[]);
    let py = PyServer::start(&dir);
    let nginx = Nginx::start(
        &dir,
        &format!(
            "        location /upload/ {{ client_max_body_size 10m; proxy_pass http://127.0.0.1:{}; }}\n",
            py.port()
        ),
    );
    let body = dir.write("body.bin", tracer_e2e::noise(SIZE, 0x9e37_79b9_7f4a_7c15));
    let data = format!("@{}", body.display());

    // Both uploads on one connection; `Expect:` turns curl's default
    // 100-continue handshake off for these.
    let urls = vec![url(nginx.addr(), "/upload/plain"); PLAIN as usize];
    let transfers = curl(&["--data-binary", &data, "-H", "Expect:"], &urls);
    assert!(transfers.iter().all(|t| t.status == 200), "{transfers:?}");
    let transfers = curl(
        &["--data-binary", &data, "-H", "Expect: 100-continue"],
        &[url(nginx.addr(), "/upload/expect")],
    );
    assert_eq!(transfers[0].status, 200, "{transfers:?}");

    tracer.barrier(&nginx);
    tracer.barrier(&py);
    let nginx_log = nginx.access_log();
    let py_log = py.access_log();
    for (route, n) in [("/upload/plain", PLAIN), ("/upload/expect", 1)] {
        for (who, log) in [("nginx", &nginx_log), ("python", &py_log)] {
            let entries: Vec<_> = log.under(route).collect();
            assert_eq!(
                entries.len() as u64,
                n,
                "{who}'s access log for {route}: {entries:?}"
            );
            assert!(
                entries
                    .iter()
                    .all(|e| e.method == "POST" && e.status == 200),
                "{who}'s access log for {route}: {entries:?}"
            );
        }
    }

    let py_port = py.port().to_string();
    let mut wants = Vec::new();
    for (route, n) in [("/upload/plain", PLAIN), ("/upload/expect", 1)] {
        let post = |w: Want| w.method("POST").status(200).is(n);
        wants.extend([
            Want::server("nginx", route).is(n),
            post(Want::server("nginx", route)),
            Want::client("curl", route).is(n),
            post(Want::client("curl", route)),
            // nginx forwarding the body to python.
            Want::client("nginx", route).is(n),
            post(Want::client("nginx", route))
                .label("server_address", "127.0.0.1")
                .label("server_port", &py_port),
            Want::server(py.service(), route).is(n),
            post(Want::server(py.service(), route)),
        ]);
    }
    tracer.expect(&wants);
}
