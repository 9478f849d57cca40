//! The exposition works with a real Prometheus (Debian's 2.42): it scrapes the
//! daemon every second (negotiating OpenMetrics), and its query API must show
//! the nginx series with the exact count from nginx's access log. A format
//! Prometheus rejects (bad `# UNIT`, missing `# EOF`, a bad label) shows up as
//! `up == 0` and no series.

use tracer_e2e::net::url;
use tracer_e2e::prom::{value_of, Prometheus, ScrapeJob};
use tracer_e2e::wait::START_TIMEOUT;
use tracer_e2e::{curl, privileged, Nginx, Peer, TestDir, Tracer};

const REQUESTS: u64 = 7;

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

    let prom = Prometheus::start(
        &dir,
        &[ScrapeJob::new("tracer", &[tracer.metrics_addr()])],
        &[],
    );
    let want = REQUESTS.to_string();
    let labels = [("service_name", "nginx"), ("http_route", "/prom")];
    let query = "http_server_request_duration_seconds_count";
    let seen = prom.wait_for(query, START_TIMEOUT, |result| {
        value_of(result, &labels).as_deref() == Some(want.as_str())
    });
    if let Err(last) = seen {
        panic!(
            "Prometheus does not show {query}{{service_name=\"nginx\",http_route=\"/prom\"}} = \
             {want} after {START_TIMEOUT:?}.\n{last}\n{}\nthe daemon's own /metrics:\n{}",
            prom.diagnostics(),
            tracer.scrape().lines(query, &labels),
        );
    }
    let up = prom.query("up").unwrap_or_else(|e| panic!("query up: {e}"));
    assert_eq!(
        value_of(&up, &[("job", "tracer")]).as_deref(),
        Some("1"),
        "up{{job=\"tracer\"}}: {up:?}"
    );
}
