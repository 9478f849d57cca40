//! HTTP/2 cleartext with prior knowledge: h2load drives nginx (its `http2`
//! listener) with many streams in flight per connection.
//!
//! Ground truth: nginx's access log (the requests it answered, by status)
//! and h2load's own "N succeeded" count. HTTP/2 requests land in the same
//! `http_*_request_duration_seconds` families as HTTP/1.x, once each.

use std::process::Command;

use tracer_e2e::databases::run_ok;
use tracer_e2e::{free_port, privileged, require_tool, Nginx, Peer, TestDir, Tracer, Want};

/// `N` of class `class` (`2xx`, `4xx`) from h2load's "status codes: N 2xx,
/// N 3xx, N 4xx, N 5xx" line.
fn status_class(stdout: &str, class: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .and_then(|rest| {
            rest.split(", ")
                .find_map(|part| part.strip_suffix(class)?.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no \"status codes:\" line with {class}:\n{stdout}"))
}

/// `N` from h2load's "requests: ... N succeeded" line.
fn succeeded(stdout: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| w.starts_with("succeeded"))?;
            words.get(at - 1)?.trim_end_matches(',').parse().ok()
        })
        .unwrap_or_else(|| panic!("no \"requests: ... succeeded\" line:\n{stdout}"))
}

#[test]
fn h2load_to_nginx_counted_exactly_on_both_sides() {
    if !privileged("h2load_to_nginx_counted_exactly_on_both_sides") {
        return;
    }
    let dir = TestDir::new("http2");
    let tracer = Tracer::start(&dir, &[]);
    let h2_port = free_port();
    let nginx = Nginx::start(
        &dir,
        &format!(
            "        listen 127.0.0.1:{h2_port} http2;\n\
             \x20       location /h2/missing {{ return 404; }}\n"
        ),
    );
    let base = format!("http://127.0.0.1:{h2_port}");
    let out = run_ok(
        Command::new(require_tool("h2load"))
            .args(["-n", "3000", "-c", "4", "-m", "32"])
            .arg(format!("{base}/h2/items?id=1")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = succeeded(&stdout);
    assert_eq!(
        ok, 3000,
        "h2load did not succeed on every request:\n{stdout}"
    );
    let out = run_ok(
        Command::new(require_tool("h2load"))
            .args(["-n", "200", "-c", "2", "-m", "8"])
            .arg(format!("{base}/h2/missing")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let missing = status_class(&stdout, "4xx");
    // Responses far larger than a syscall's capture: nginx writes many
    // 16 KiB DATA frames per syscall, and the next response's HEADERS
    // behind them; the kernel side follows the frames to find them.
    std::fs::create_dir_all(nginx.root().join("h2")).expect("mkdir");
    std::fs::write(nginx.root().join("h2/large.bin"), vec![b'x'; 300_000]).expect("write");
    let out = run_ok(
        Command::new(require_tool("h2load"))
            .args(["-n", "300", "-c", "2", "-m", "8"])
            .arg(format!("{base}/h2/large.bin")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let large = succeeded(&stdout);
    assert_eq!(
        large, 300,
        "h2load did not succeed on every request:\n{stdout}"
    );
    assert_eq!(
        missing, 200,
        "h2load did not get 200 answers of 404:\n{stdout}"
    );

    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let served = log.under("/h2/items").filter(|e| e.status == 200).count() as u64;
    let not_found = log.under("/h2/missing").filter(|e| e.status == 404).count() as u64;
    let served_large = log
        .under("/h2/large.bin")
        .filter(|e| e.status == 200)
        .count() as u64;
    assert_eq!((served, not_found, served_large), (3000, missing, large));
    tracer.expect(&[
        Want::server("nginx", "/h2/items").status(200).is(served),
        Want::server("nginx", "/h2/items").is(served),
        Want::server("nginx", "/h2/missing")
            .status(404)
            .is(not_found),
        Want::client("h2load", "/h2/items")
            .method("GET")
            .status(200)
            .label("error_type", "")
            .is(ok),
        Want::client("h2load", "/h2/missing")
            .status(404)
            .label("error_type", "404")
            .is(missing),
        Want::server("nginx", "/h2/large.bin")
            .status(200)
            .is(served_large),
        Want::client("h2load", "/h2/large.bin")
            .status(200)
            .is(large),
    ]);
    let scrape = tracer.scrape();
    for name in ["tracer_parser_resyncs_total", "tracer_unmatched_total"] {
        assert_eq!(scrape.count(name, &[("protocol", "http2")]), 0, "{name}");
    }
    assert_eq!(
        scrape.count("tracer_kernel_drops_total", &[("cause", "frames_lost")]),
        0
    );
}
