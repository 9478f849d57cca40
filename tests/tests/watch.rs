//! `tracer watch --port PORT`: one line per exchange and side, in the format
//! `<rfc3339> <service>[<pid>] <server|client> peer=<ip:port> <METHOD> <path>
//! <status> <ms>ms`, with the path stripped of its query string and no header
//! value ever printed (requests carry `?secret=...` and a secret header).
//!
//! Ground truth: the curl runs below. With `--port` naming nginx's port, both
//! ends of each exchange pass the filter: exactly one `nginx ... server` line
//! and one `curl ... client` line per request.

use std::net::SocketAddr;

use tracer_e2e::net::url;
use tracer_e2e::tracer::{printed_lines, spawn_watch, try_get};
use tracer_e2e::wait::{METRICS_TIMEOUT, START_TIMEOUT};
use tracer_e2e::{curl, privileged, wait_until, Guard, Nginx, Peer, TestDir};

const SECRET_QUERY: &str = "s3cr3t-query";
const SECRET_HEADER: &str = "hunter2-header";

/// One parsed watch line.
#[derive(Debug)]
struct Line {
    raw: String,
    service: String,
    side: String,
    peer: SocketAddr,
    method: String,
    path: String,
    status: u16,
}

fn parse(raw: &str) -> Result<Line, String> {
    let f: Vec<&str> = raw.split(' ').collect();
    if f.len() != 9 {
        return Err(format!("{} fields, want 9", f.len()));
    }
    let time = f[0].as_bytes();
    let looks_rfc3339 = time.len() >= 20
        && time[4] == b'-'
        && time[7] == b'-'
        && time[10] == b'T'
        && time[13] == b':'
        && (f[0].ends_with('Z') || f[0][19..].contains(['+', '-']));
    if !looks_rfc3339 {
        return Err(format!("time {:?} is not RFC 3339", f[0]));
    }
    let (service, pid) = f[1]
        .strip_suffix(']')
        .and_then(|s| s.split_once('['))
        .ok_or("service[pid] expected")?;
    pid.parse::<u32>().map_err(|_| format!("pid {pid:?}"))?;
    if f[2] != "server" && f[2] != "client" {
        return Err(format!("side {:?}", f[2]));
    }
    let peer = f[3]
        .strip_prefix("peer=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("peer {:?}", f[3]))?;
    let ms = f[7].strip_suffix("ms").and_then(|m| m.parse::<f64>().ok());
    if !ms.is_some_and(|m| m >= 0.0) {
        return Err(format!("duration {:?}", f[7]));
    }
    // The default source: the syscall hooks.
    if f[8] != "source=syscalls" {
        return Err(format!("source {:?}", f[8]));
    }
    Ok(Line {
        raw: raw.to_string(),
        service: service.to_string(),
        side: f[2].to_string(),
        peer,
        method: f[4].to_string(),
        path: f[5].to_string(),
        status: f[6].parse().map_err(|_| format!("status {:?}", f[6]))?,
    })
}

fn has_path(watch: &Guard, path: &str) -> bool {
    printed_lines(watch)
        .iter()
        .any(|l| l.split(' ').nth(5) == Some(path))
}

#[test]
fn watch_prints_one_line_per_exchange_without_query_or_headers() {
    if !privileged("watch_prints_one_line_per_exchange_without_query_or_headers") {
        return;
    }
    let dir = TestDir::new("watch");
    let nginx = Nginx::start(
        &dir,
        "        location = /w/created { return 201 \"created\\n\"; }\n\
                 location = /w/missing { return 404; }\n",
    );
    let port = nginx.port().to_string();
    let mut watch = spawn_watch(&dir, &["--port", &port]);

    // Ready once it prints: probe until a probe request shows up.
    let ready = wait_until(START_TIMEOUT, || {
        watch.assert_running();
        let _ = try_get(nginx.addr(), "/w/probe");
        has_path(&watch, "/w/probe").then_some(())
    });
    assert!(
        ready.is_some(),
        "watch printed nothing; stderr:\n{}",
        watch.stderr()
    );

    let header = format!("X-Api-Key: {SECRET_HEADER}");
    // (method, path as requested, path as printed, status)
    let plan = [
        ("GET", format!("/q?secret={SECRET_QUERY}"), "/q", 200),
        ("POST", "/w/created".to_string(), "/w/created", 201),
        ("GET", "/w/missing".to_string(), "/w/missing", 404),
        (
            "GET",
            format!("/w/items?token={SECRET_QUERY}&a=b"),
            "/w/items",
            200,
        ),
    ];
    for (method, path, _, status) in &plan {
        let got = curl(&["-X", method, "-H", &header], &[url(nginx.addr(), path)]);
        assert_eq!(got[0].status, *status, "{method} {path}");
    }
    // Everything before the end marker is printed once the marker is.
    let _ = try_get(nginx.addr(), "/w/end");
    let done = wait_until(METRICS_TIMEOUT, || has_path(&watch, "/w/end").then_some(()));
    let printed = printed_lines(&watch);
    assert!(
        done.is_some(),
        "watch never printed /w/end; output:\n{}",
        printed.join("\n")
    );

    for raw in &printed {
        assert!(
            !raw.contains(SECRET_QUERY) && !raw.contains(SECRET_HEADER) && !raw.contains('?'),
            "watch printed a query string or a header value: {raw}"
        );
    }
    let parsed: Vec<Line> = printed
        .iter()
        .map(|raw| parse(raw).unwrap_or_else(|e| panic!("bad watch line ({e}): {raw:?}")))
        .collect();
    let nginx_port = nginx.port();
    for (method, requested, path, status) in &plan {
        let of_path: Vec<&Line> = parsed.iter().filter(|l| l.path == *path).collect();
        let server: Vec<_> = of_path.iter().filter(|l| l.side == "server").collect();
        let client: Vec<_> = of_path.iter().filter(|l| l.side == "client").collect();
        let shown: Vec<&str> = of_path.iter().map(|l| l.raw.as_str()).collect();
        assert!(
            server.len() == 1 && client.len() == 1 && of_path.len() == 2,
            "{method} {requested}: want one server and one client line, got:\n{}",
            shown.join("\n")
        );
        let (s, c) = (server[0], client[0]);
        assert!(
            s.service == "nginx" && s.method == *method && s.status == *status,
            "server line for {method} {requested}: {}",
            s.raw
        );
        assert!(
            c.service == "curl" && c.method == *method && c.status == *status,
            "client line for {method} {requested}: {}",
            c.raw
        );
        assert_eq!(c.peer, nginx.addr(), "curl's peer is nginx: {}", c.raw);
        assert!(
            s.peer.ip().is_loopback() && s.peer.port() != nginx_port,
            "nginx's peer is curl's ephemeral port: {}",
            s.raw
        );
    }
    let (status, killed) = watch.terminate();
    assert!(
        !killed && status.success(),
        "watch on SIGTERM: {status}, killed: {killed}"
    );
}
