//! The exposition works with a real Prometheus (Debian's 2.42): it scrapes the
//! daemon every second (negotiating OpenMetrics), and its query API must show
//! the nginx series with the exact count from nginx's access log. A format
//! Prometheus rejects (bad `# UNIT`, missing `# EOF`, a bad label) shows up as
//! `up == 0` and no series.

use std::process::Command;

use serde_json::Value;
use tracer_e2e::net::url;
use tracer_e2e::tracer::try_get;
use tracer_e2e::wait::START_TIMEOUT;
use tracer_e2e::{
    curl, free_port, privileged, require_tool, wait_until, Guard, Nginx, Peer, TestDir, Tracer,
};

const REQUESTS: u64 = 7;

/// Runs an instant query; the `data.result` array.
fn query(prom: std::net::SocketAddr, promql: &str) -> Vec<Value> {
    let path = format!("/api/v1/query?query={promql}");
    let Ok(response) = try_get(prom, &path) else {
        return Vec::new();
    };
    let json: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The value of the series whose labels include all of `labels`.
fn value_of(result: &[Value], labels: &[(&str, &str)]) -> Option<String> {
    result
        .iter()
        .find(|s| labels.iter().all(|(k, v)| s["metric"][*k] == *v))
        .and_then(|s| s["value"][1].as_str().map(str::to_string))
}

#[test]
fn real_prometheus_scrapes_exact_nginx_count() {
    if !privileged("real_prometheus_scrapes_exact_nginx_count") {
        return;
    }
    let dir = TestDir::new("prometheus");
    let tracer = Tracer::start(&dir, &[]);
    let nginx = Nginx::start(&dir, "");
    curl(&[], &vec![url(nginx.addr(), "/prom"); REQUESTS as usize]);
    tracer.barrier(&nginx);
    let logged = nginx.access_log().under("/prom").count() as u64;
    assert_eq!(logged, REQUESTS, "nginx's access log");

    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: tracer\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
         static_configs:\n      - targets: ['{}']\n",
        tracer.metrics_addr()
    );
    let config = dir.write("prometheus.yml", config);
    let prom = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(require_tool("prometheus"));
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom}"));
    let mut prometheus = Guard::spawn("prometheus", &mut cmd, &dir);
    let ready = wait_until(START_TIMEOUT, || {
        prometheus.assert_running();
        try_get(prom, "/-/ready").ok().filter(|r| r.status == 200)
    });
    assert!(
        ready.is_some(),
        "prometheus not ready:\n{}",
        prometheus.stderr_tail(30)
    );

    let want = REQUESTS.to_string();
    let labels = [("service_name", "nginx"), ("http_route", "/prom")];
    let seen = wait_until(START_TIMEOUT, || {
        let result = query(prom, "http_server_request_duration_seconds_count");
        (value_of(&result, &labels).as_deref() == Some(want.as_str())).then_some(())
    });
    if seen.is_none() {
        let result = query(prom, "http_server_request_duration_seconds_count");
        let targets = try_get(prom, "/api/v1/targets")
            .map(|r| r.body_text())
            .unwrap_or_default();
        panic!(
            "Prometheus does not show http_server_request_duration_seconds_count\
             {{service_name=\"nginx\",http_route=\"/prom\"}} = {want} after {START_TIMEOUT:?}.\n\
             query result: {result:?}\ntargets: {targets}\n\
             the daemon's own /metrics:\n{}prometheus log:\n{}",
            tracer
                .scrape()
                .lines("http_server_request_duration_seconds_count", &labels),
            prometheus.stderr_tail(20)
        );
    }
    let up = query(prom, "up");
    assert_eq!(
        value_of(&up, &[("job", "tracer")]).as_deref(),
        Some("1"),
        "up{{job=\"tracer\"}}: {up:?}"
    );
}
