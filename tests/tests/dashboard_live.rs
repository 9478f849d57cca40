//! The shipped dashboard and alert rules against a real Prometheus (Debian's
//! 2.42) scraping the real tracer while real traffic flows.
//!
//! One node: the stand-in API server (`peers/kube_apiserver.py`) knows a
//! Deployment `shop/checkout`, its ReplicaSet and pod, and a Service whose
//! ClusterIP is a loopback address; the pod's server (`peers/http_server.py`)
//! runs in the pod's kubelet-style cgroup; the test's own client threads
//! (outside any pod) call it through the ClusterIP, so the dashboard's
//! callers-to-callees panels have a named callee. The tracer runs with
//! `--kubeconfig`, `--node-name` and `--request-timeout 2s`; Prometheus
//! scrapes it every second as job `tracer` and evaluates
//! `manifests/monitoring/tracer-rules.yml` every second.
//!
//! Phases, in order (steady 200 traffic flows through all of them):
//!
//! 1. healthy: no alert's expression returns anything about this test's
//!    services or tracers (the tracer is node-wide: other processes of the
//!    machine have series too, and their alerts are not this test's);
//! 2. error storm (half the requests answer 500 or 503):
//!    TracerServiceHighErrorRatio;
//! 3. slow handler (`/hang?s=1.5`): TracerServiceHighLatencyP99;
//! 4. a server that never answers (`/hang?s=30`, abandoned by the client
//!    after 3 s): TracerServiceTimeouts, server and client side;
//! 5. data loss (a second tracer with `--max-connections 16` and 40
//!    connections held open): TracerLosingData (`conn_map_full`);
//! 6. API server outage: TracerKubernetesCacheStale;
//! 7. a third tracer started while the API server is down:
//!    TracerKubernetesNotSynced;
//! 8. the API server back: both Kubernetes tracers list, watch and sync
//!    (the late one looks the pod's ReplicaSet up only now, while the pod
//!    already serves), and both Kubernetes alerts' expressions are quiet
//!    again;
//! 9. that third tracer stopped (its target stays configured): TracerDown.
//!
//! Before each fault, the alert it should raise is checked quiet (the
//! earlier faults stay in the rules' 5 and 10 minute windows, so only the
//! alert at hand can be checked); after it, its expression (the rule's
//! `expr`, run through `/api/v1/query`) must return data for the faulty
//! service or tracer within a deadline, while the fault goes on. After every
//! phase every dashboard expression (`$__rate_interval` = 30s, variables =
//! their All value `.*`) and every variable's selector is run; each must
//! return data in at least one phase. At the end, Prometheus's own rule
//! evaluation must have made every alert pending (the `for:` durations are
//! longer than the test) and report every rule healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_yaml::Value as Yaml;
use tracer_e2e::cgroups::{random_container_id, random_uid, PodCgroup, Qos};
use tracer_e2e::kube::{self, KubeApi, SliceEndpoint};
use tracer_e2e::net::{get_request, read_response};
use tracer_e2e::prom::{
    concrete, has_series, panel_queries, read_dashboard, show, variable_names, variable_queries,
    workspace_file, DashboardQuery, Prometheus, ScrapeJob, DASHBOARD, RULES,
};
use tracer_e2e::tracer::{tracer_bin, try_get};
use tracer_e2e::wait::START_TIMEOUT;
use tracer_e2e::{
    free_port, own_service_name, privileged, wait_until, Guard, Peer, PyServer, TestDir, Tracer,
};

const NODE: &str = "node-live";
const NAMESPACE: &str = "shop";
/// The Deployment, and so the `service_name` of its pod.
const WORKLOAD: &str = "checkout";
const POD: &str = "checkout-5c7d9b8f6d-q4w2e";
const REPLICASET: &str = "checkout-5c7d9b8f6d";
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 60);
const POD_IP: &str = "127.0.0.61";

/// What `$__rate_interval` becomes: Grafana's is at least four scrape
/// intervals; 30 s holds many 1 s scrapes and fits the test's phases.
const RATE_INTERVAL: &str = "30s";
/// How long healthy traffic flows before the first checks.
const HEALTHY_FOR: Duration = Duration::from_secs(20);
/// How long an alert's expression gets to return data once its fault flows.
const RAISE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the Kubernetes watches get to come back after the outage (the
/// tracer's re-list backoff doubles up to 30 s).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

const ERROR_RATIO: &str = "TracerServiceHighErrorRatio";
const LATENCY_P99: &str = "TracerServiceHighLatencyP99";
const TIMEOUTS: &str = "TracerServiceTimeouts";
const LOSING_DATA: &str = "TracerLosingData";
const CACHE_STALE: &str = "TracerKubernetesCacheStale";
const NOT_SYNCED: &str = "TracerKubernetesNotSynced";
const DOWN: &str = "TracerDown";
const ALERTS: [&str; 7] = [
    ERROR_RATIO,
    LATENCY_P99,
    TIMEOUTS,
    LOSING_DATA,
    CACHE_STALE,
    NOT_SYNCED,
    DOWN,
];

#[test]
fn dashboard_and_alerts_against_a_live_prometheus() {
    if !privileged("dashboard_and_alerts_against_a_live_prometheus") {
        return;
    }
    let started = Instant::now();
    let dir = TestDir::new("dashboard-live");

    // The cluster: Deployment -> ReplicaSet -> pod, a Service in front.
    let api = KubeApi::start(&dir);
    let (pod_uid, container) = (random_uid(), random_container_id());
    let cgroup = PodCgroup::systemd(&pod_uid, &container, Qos::Burstable);
    let server = PyServer::start_in_pod(&dir, WORKLOAD, &cgroup, WORKLOAD);
    let port = server.port();
    let (deploy_uid, rs_uid) = (random_uid(), random_uid());
    api.apply(&kube::deployment(NAMESPACE, WORKLOAD, &deploy_uid));
    api.apply(&kube::replicaset(
        NAMESPACE,
        REPLICASET,
        &rs_uid,
        Some(("Deployment", WORKLOAD, &deploy_uid)),
    ));
    api.apply(
        &kube::pod(NAMESPACE, POD, NODE, &pod_uid, Some(POD_IP))
            .owner("ReplicaSet", REPLICASET, &rs_uid)
            .container("app", &container)
            .qos(Qos::Burstable)
            .build(),
    );
    api.apply(&kube::service(
        NAMESPACE,
        WORKLOAD,
        &CLUSTER_IP.to_string(),
        port,
    ));
    api.apply(&kube::endpointslice(
        NAMESPACE,
        WORKLOAD,
        port,
        &[SliceEndpoint {
            ip: POD_IP,
            pod: POD,
            pod_uid: &pod_uid,
            node: NODE,
        }],
    ));
    let service = SocketAddr::from((CLUSTER_IP, port));

    let kubeconfig = api.kubeconfig().display().to_string();
    let tracer = Tracer::start(
        &dir,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            NODE,
            "--request-timeout",
            "2s",
        ],
    );
    let main = tracer.metrics_addr().to_string();
    let prometheus = Prometheus::start(
        &dir,
        &[ScrapeJob::new("tracer", &[tracer.metrics_addr()])],
        &[workspace_file(RULES)],
    );
    let me = own_service_name();
    // This test's series: the pod's service, this process as client, and
    // the tracers (every series of a tracer-self alert has their job).
    let mut live = Live::new(
        prometheus,
        &[
            &[("service_namespace", NAMESPACE)],
            &[("service_name", &me)],
            &[("job", "tracer")],
        ],
        started,
    );
    live.prom
        .wait_for_series(
            "up",
            &[("job", "tracer"), ("instance", &main)],
            START_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("the tracer is never scraped: {e}"));

    let checkout = [("service_namespace", NAMESPACE), ("service_name", WORKLOAD)];

    // 1. Healthy: steady 200s through the Service, on a few routes. /hang?s=0
    // gives the /hang route its series before it is slow.
    let traffic = Instant::now();
    let background =
        Load::keep_alive(
            "background",
            service,
            2,
            Duration::from_millis(25),
            |n| match n % 4 {
                0 => "/".to_string(),
                1 => format!("/api/orders/{}", 1000 + n),
                2 => "/api/cart".to_string(),
                _ => "/hang?s=0".to_string(),
            },
        );
    live.prom
        .wait_for_series(
            "http_server_request_duration_seconds_count",
            &checkout,
            START_TIMEOUT,
        )
        .unwrap_or_else(|e| {
            panic!(
                "no series of {NAMESPACE}/{WORKLOAD} in Prometheus: {e}\n{}\ntracer:\n{}",
                live.prom.diagnostics(),
                tracer
                    .scrape()
                    .lines("http_server_request_duration_seconds_count", &[])
            )
        });
    // Traffic for a while, not synchronisation: the rules' rate windows
    // should hold a healthy history before the faults.
    std::thread::sleep(HEALTHY_FOR.saturating_sub(traffic.elapsed()));
    live.quiet(&ALERTS, "healthy");
    live.expect_data(
        "Request rate of the pod's service",
        &format!(
            "sum by (service_namespace, service_name) \
             (rate(http_server_request_duration_seconds_count[{RATE_INTERVAL}])) > 0"
        ),
        &checkout,
    );
    live.expect_data(
        "callers to callees: this test's client calling the Service",
        &format!(
            "sum by (service_name, server_service_namespace, server_service_name) \
             (rate(http_client_request_duration_seconds_count[{RATE_INTERVAL}])) > 0"
        ),
        &[
            ("service_name", &me),
            ("server_service_namespace", NAMESPACE),
            ("server_service_name", WORKLOAD),
        ],
    );
    live.phase_done("healthy");

    // 2. Error storm: half the requests answer 500 or 503.
    live.quiet(&[ERROR_RATIO], "before the error storm");
    let storm = Load::keep_alive("storm", service, 2, Duration::from_millis(5), |n| {
        match n % 4 {
            0 => "/status/500".to_string(),
            1 => "/status/503".to_string(),
            _ => "/api/cart".to_string(),
        }
    });
    live.raise(ERROR_RATIO, &checkout, "error storm");
    let storm = storm.stop();
    assert!(
        storm.count(500) > 0 && storm.count(503) > 0 && storm.count(200) > 0,
        "storm: {storm:?}"
    );
    live.phase_done("error storm");

    // 3. Slow handler: 20 clients each waiting 1.5 s per request.
    live.quiet(&[LATENCY_P99], "before the slow handler");
    let slow = Load::keep_alive("slow", service, 20, Duration::ZERO, |_| {
        "/hang?s=1.5".to_string()
    });
    live.raise(LATENCY_P99, &checkout, "slow handler");
    let slow = slow.stop();
    assert!(slow.count(200) > 0 && slow.failures == 0, "slow: {slow:?}");
    live.phase_done("slow handler");

    // 4. A server that never answers: requests that would wait 30 s, given up
    // by their clients after 3 s; the tracer reports them after 2 s.
    live.quiet(&[TIMEOUTS], "before the server that never answers");
    let hanging = Load::abandoning("hanging", service, 8, Duration::from_secs(3), |_| {
        "/hang?s=30".to_string()
    });
    live.raise(
        TIMEOUTS,
        &[
            ("service_namespace", NAMESPACE),
            ("service_name", WORKLOAD),
            ("side", "server"),
        ],
        "never answers",
    );
    live.raise(
        TIMEOUTS,
        &[("service_name", &me), ("side", "client")],
        "never answers",
    );
    let hanging = hanging.stop();
    assert!(
        hanging.abandoned > 0 && hanging.statuses.is_empty(),
        "hanging: {hanging:?}"
    );
    live.phase_done("never answers");

    // 5. Data loss: a second tracer whose kernel table holds 16 connections
    // (the ones already open fill it), and 40 more connections (80 traced
    // ends on loopback) held open. Prometheus must have its counters before
    // the loss: increase() ignores what a series starts with.
    live.quiet(&[LOSING_DATA], "before the data loss");
    let lossy = Tracer::start(&dir, &["--max-connections", "16"]);
    let lossy_addr = lossy.metrics_addr().to_string();
    live.prom.reconfigure(&[ScrapeJob::new(
        "tracer",
        &[tracer.metrics_addr(), lossy.metrics_addr()],
    )]);
    live.prom
        .wait_for(
            &format!("count_over_time(up{{instance=\"{lossy_addr}\"}}[1m]) >= 2"),
            START_TIMEOUT,
            |r| !r.is_empty(),
        )
        .unwrap_or_else(|e| panic!("the second tracer is never scraped twice: {e}"));
    let held: Vec<TcpStream> = (0..40).map(|_| tracer_e2e::net::connect(service)).collect();
    live.raise(LOSING_DATA, &[("instance", &lossy_addr)], "data loss");
    // ... and for the reason staged: connections the kernel table refused.
    let why = live.prom.wait_for_series(
        "sum by (instance) (increase(tracer_kernel_drops_total{cause=\"conn_map_full\"}[10m])) > 0",
        &[("instance", &lossy_addr)],
        START_TIMEOUT,
    );
    drop(held);
    if let Err(e) = why {
        panic!(
            "{LOSING_DATA} has data but no conn_map_full increase: {e}\ntracer counters:\n{}",
            lossy.scrape().lines("tracer_", &[])
        );
    }
    live.phase_done("data loss");

    // 6. The API server goes down: the tracer's watches with it.
    live.quiet(&[CACHE_STALE, NOT_SYNCED], "before the API outage");
    api.outage(true);
    live.raise(
        CACHE_STALE,
        &[("instance", &main), ("resource", "pods")],
        "cache stale",
    );
    live.phase_done("cache stale");

    // 7. A tracer that starts while the API server is down never syncs (it
    // serves metrics but is not ready).
    let late_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let late = late_addr.to_string();
    let mut cmd = Command::new(tracer_bin());
    cmd.args(["run", "--metrics-addr", &late]).args([
        "--kubeconfig",
        &kubeconfig,
        "--node-name",
        NODE,
    ]);
    let mut late_tracer = Guard::spawn("tracer-late", &mut cmd, &dir);
    let serving = wait_until(START_TIMEOUT, || {
        late_tracer.assert_running();
        try_get(late_addr, "/healthz")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(serving.is_some(), "{}", late_tracer.stderr());
    live.prom.reconfigure(&[ScrapeJob::new(
        "tracer",
        &[tracer.metrics_addr(), lossy.metrics_addr(), late_addr],
    )]);
    live.raise(NOT_SYNCED, &[("instance", &late)], "not synced");
    live.phase_done("not synced");

    // 8. The API server is back: both tracers list, watch and sync, and the
    // Kubernetes alerts go quiet (with every target still answering: a
    // series of a dead target goes stale and quiet too).
    api.outage(false);
    live.wait_quiet(CACHE_STALE, RECOVERY_TIMEOUT, "API server back");
    live.wait_quiet(NOT_SYNCED, RECOVERY_TIMEOUT, "API server back");
    for instance in [&main, &late] {
        live.prom
            .wait_for_series(
                "min by (instance) (tracer_kubernetes_watch_up) == 1 \
                 and on (instance) tracer_kubernetes_synced == 1 \
                 and on (instance) up == 1",
                &[("instance", instance)],
                START_TIMEOUT,
            )
            .unwrap_or_else(|e| {
                panic!(
                    "tracer {instance} is not up, watching and synced after the outage: {e}\n\
                     {}\nthe late tracer's log:\n{}",
                    live.prom.diagnostics(),
                    late_tracer.stderr_tail(20)
                )
            });
    }
    live.phase_done("API back");

    // 9. That tracer goes down (its target stays in the configuration).
    // Every target answered until then.
    live.quiet(&[DOWN], "before a tracer goes down");
    let (status, killed) = late_tracer.terminate();
    assert!(
        status.success() && !killed,
        "the late tracer did not stop cleanly on SIGTERM ({status}, killed: {killed}):\n{}",
        late_tracer.stderr_tail(20)
    );
    live.raise(
        DOWN,
        &[("job", "tracer"), ("instance", &late)],
        "tracer down",
    );
    live.phase_done("tracer down");

    let background = background.stop();
    assert!(
        background.failures == 0 && background.statuses.keys().all(|s| *s == 200),
        "background traffic: {background:?}"
    );
    assert!(
        background.count(200) > 1000,
        "too little background traffic: {background:?}"
    );

    live.assert_every_alert_pending();
    live.assert_rules_healthy();
    live.assert_dashboard_covered();
    // Served by the pod all along, for the record.
    assert!(server.access_log().under("/api/cart").count() > 0);
    eprintln!("dashboard_live: done in {:.1?}", live.started.elapsed());
}

/// Prometheus with the rules' expressions and the dashboard's queries, and
/// what each phase showed.
struct Live {
    prom: Prometheus,
    /// Alert name and its `expr`, from the rules file.
    alerts: BTreeMap<String, String>,
    /// Label filters, one of which every series about this test's own
    /// services or tracers matches: the tracer runs node-wide, so other
    /// processes of the machine (another test's servers, Prometheus) have
    /// series too, and whether they alert is not this test's business.
    ours: Vec<Vec<(String, String)>>,
    /// Dashboard queries, made concrete.
    queries: Vec<(DashboardQuery, String)>,
    /// Per query (same order): the phases where it returned data, and those
    /// where some value was not 0.
    with_data: Vec<Vec<&'static str>>,
    nonzero: Vec<Vec<&'static str>>,
    started: Instant,
    phase_started: Instant,
}

impl Live {
    fn new(prom: Prometheus, ours: &[&[(&str, &str)]], started: Instant) -> Self {
        let rules: Yaml = serde_yaml::from_str(
            &std::fs::read_to_string(workspace_file(RULES)).expect("read the rules file"),
        )
        .expect("the rules file is YAML");
        let mut alerts = BTreeMap::new();
        for group in rules["groups"].as_sequence().expect("groups") {
            for rule in group["rules"].as_sequence().expect("rules") {
                if let (Some(name), Some(expr)) = (rule["alert"].as_str(), rule["expr"].as_str()) {
                    alerts.insert(name.to_string(), expr.to_string());
                }
            }
        }
        let names: BTreeSet<&str> = alerts.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ALERTS.into_iter().collect(),
            "{RULES}: the alerts this test raises"
        );

        let dashboard = read_dashboard(DASHBOARD);
        let variables = variable_names(&dashboard);
        let queries: Vec<(DashboardQuery, String)> = panel_queries(&dashboard)
            .into_iter()
            .chain(variable_queries(&dashboard))
            .map(|q| {
                let expr = q
                    .expr
                    .as_deref()
                    .unwrap_or_else(|| panic!("{}: no expr", q.what));
                let concrete = concrete(expr, &variables, RATE_INTERVAL)
                    .unwrap_or_else(|e| panic!("{}: {e}", q.what));
                (q, concrete)
            })
            .collect();
        let n = queries.len();
        let ours = ours
            .iter()
            .map(|filter| {
                filter
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect();
        Self {
            prom,
            alerts,
            ours,
            queries,
            with_data: vec![Vec::new(); n],
            nonzero: vec![Vec::new(); n],
            started,
            phase_started: Instant::now(),
        }
    }

    fn expr(&self, alert: &str) -> &str {
        self.alerts
            .get(alert)
            .unwrap_or_else(|| panic!("no alert {alert} in {RULES}"))
    }

    fn run(&self, what: &str, promql: &str) -> Vec<Value> {
        self.prom
            .query(promql)
            .unwrap_or_else(|e| panic!("Prometheus rejects {what}: {e}\nexpression:\n{promql}"))
    }

    /// The series of `result` that belong to this test (see [`Live::ours`]).
    fn ours(&self, result: &[Value]) -> Vec<Value> {
        result
            .iter()
            .filter(|s| {
                self.ours
                    .iter()
                    .any(|filter| filter.iter().all(|(k, v)| s["metric"][k] == *v))
            })
            .cloned()
            .collect()
    }

    /// None of `alerts` returns data about this test's services or tracers
    /// now.
    fn quiet(&self, alerts: &[&str], phase: &str) {
        let mut loud = Vec::new();
        for alert in alerts {
            let expr = self.expr(alert);
            let result = self.run(alert, expr);
            let ours = self.ours(&result);
            if !ours.is_empty() {
                loud.push(format!("{alert}:\n{}\nexpr:\n{expr}", show(&ours)));
            } else if !result.is_empty() {
                eprintln!(
                    "dashboard_live: {phase}: {alert} has data about processes this test does \
                     not own (another test's?), ignored:\n{}",
                    show(&result)
                );
            }
        }
        assert!(
            loud.is_empty(),
            "{phase}: alert expressions return data while they should not:\n{}\n{}",
            loud.join("\n"),
            self.context()
        );
    }

    /// Waits until `alert`'s expression returns no data about this test's
    /// services or tracers.
    fn wait_quiet(&self, alert: &str, timeout: Duration, phase: &str) {
        let expr = self.expr(alert);
        if let Err(last) = self
            .prom
            .wait_for(expr, timeout, |r| self.ours(r).is_empty())
        {
            panic!(
                "{phase}: {alert} still has data after {timeout:?}; {last}\nexpr:\n{expr}\n{}",
                self.prom.diagnostics()
            );
        }
    }

    /// Waits until `alert`'s expression returns a series carrying all of
    /// `labels`; returns the result.
    fn raise(&self, alert: &str, labels: &[(&str, &str)], phase: &str) -> Vec<Value> {
        let expr = self.expr(alert);
        let t0 = Instant::now();
        match self.prom.wait_for_series(expr, labels, RAISE_TIMEOUT) {
            Ok(result) => {
                eprintln!(
                    "dashboard_live: {phase}: {alert} has data after {:.1?}:\n{}",
                    t0.elapsed(),
                    show(&result)
                );
                result
            }
            Err(last) => panic!(
                "{phase}: {alert} returned no series with {labels:?} within {RAISE_TIMEOUT:?}; \
                 {last}\nexpr:\n{expr}\n{}",
                self.context()
            ),
        }
    }

    /// What Prometheus holds about errors and losses, and its targets, for
    /// failure messages.
    fn context(&self) -> String {
        let requests = "sum by (service_namespace, service_name, error_type) \
                        (rate(http_server_request_duration_seconds_count[5m]))";
        let drops = "sum by (instance, cause) (increase(tracer_kernel_drops_total[10m])) > 0 \
                     or sum by (instance, cause) (increase(tracer_user_drops_total[10m])) > 0";
        let show_query = |q: &str| match self.prom.query(q) {
            Ok(result) => show(&result),
            Err(e) => e,
        };
        format!(
            "server requests by service and error (rate over 5m):\n{}\n\
             drops by tracer and cause (increase over 10m):\n{}\n{}",
            show_query(requests),
            show_query(drops),
            self.prom.diagnostics()
        )
    }

    /// `promql` returns a series with `labels` (a specific check of a panel).
    fn expect_data(&self, what: &str, promql: &str, labels: &[(&str, &str)]) {
        let result = self.run(what, promql);
        assert!(
            has_series(&result, labels),
            "{what}: no series with {labels:?}:\n{}\nexpression:\n{promql}",
            show(&result)
        );
    }

    /// Runs every dashboard query and notes which returned data.
    fn phase_done(&mut self, phase: &'static str) {
        for (i, (query, promql)) in self.queries.iter().enumerate() {
            let result = self.run(&query.what, promql);
            let (data, nonzero) = match &query.label {
                // A variable: the label has values on the selected series.
                Some(label) => {
                    let values = result
                        .iter()
                        .filter(|s| s["metric"][label].as_str().is_some_and(|v| !v.is_empty()))
                        .count();
                    (values > 0, values > 0)
                }
                None => (
                    !result.is_empty(),
                    result.iter().any(|s| {
                        s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(|v| v != 0.0)
                    }),
                ),
            };
            if data {
                self.with_data[i].push(phase);
            }
            if nonzero {
                self.nonzero[i].push(phase);
            }
        }
        eprintln!(
            "dashboard_live: phase {phase} done in {:.1?} (test at {:.1?})",
            self.phase_started.elapsed(),
            self.started.elapsed()
        );
        self.phase_started = Instant::now();
    }

    /// Prometheus's own evaluation made every alert pending at some point.
    fn assert_every_alert_pending(&self) {
        // The last fault is seconds old: give the rule evaluation (every
        // second) a few rounds.
        let names = |result: &[Value]| -> BTreeSet<String> {
            result
                .iter()
                .filter_map(|s| s["metric"]["alertname"].as_str().map(str::to_string))
                .collect()
        };
        let all = self.prom.wait_for(
            "group by (alertname) (last_over_time(ALERTS{alertstate=\"pending\"}[10m]))",
            Duration::from_secs(15),
            |result| {
                let seen = names(result);
                ALERTS.iter().all(|a| seen.contains(*a))
            },
        );
        if let Err(last) = all {
            panic!("not every alert was ever pending in Prometheus's own rule evaluation; {last}");
        }
    }

    /// Every rule of the file is loaded and evaluates without error.
    fn assert_rules_healthy(&self) {
        let mut alerting = 0;
        let mut bad = Vec::new();
        for group in self.prom.rule_groups() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                if rule["type"] == "alerting" {
                    alerting += 1;
                }
                if rule["health"] != "ok" {
                    bad.push(format!(
                        "{} health={} lastError={}",
                        rule["name"], rule["health"], rule["lastError"]
                    ));
                }
            }
        }
        assert_eq!(alerting, ALERTS.len(), "alerting rules Prometheus loaded");
        assert!(bad.is_empty(), "unhealthy rules:\n{}", bad.join("\n"));
    }

    /// Every dashboard query returned data in at least one phase; prints
    /// which.
    fn assert_dashboard_covered(&self) {
        let mut table = String::new();
        let mut empty = Vec::new();
        for (i, (query, promql)) in self.queries.iter().enumerate() {
            let first = self.with_data[i].first().copied().unwrap_or("NEVER");
            table.push_str(&format!(
                "  {:<60} data: {:<14} non-zero: {}\n",
                query.what,
                first,
                self.nonzero[i].join(", ")
            ));
            if self.with_data[i].is_empty() {
                empty.push(format!(
                    "{}\n    {promql}\n    now: {}",
                    query.what,
                    show(&self.run(&query.what, promql))
                ));
            }
        }
        eprintln!("dashboard_live: dashboard queries, first phase with data:\n{table}");
        assert!(
            empty.is_empty(),
            "dashboard queries that returned no data in any phase:\n{}",
            empty.join("\n")
        );
    }
}

/// What a load's clients got.
#[derive(Debug, Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    /// Connection or protocol errors.
    failures: u64,
    /// Requests given up without an answer (abandoning loads).
    abandoned: u64,
}

impl Tally {
    fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    fn add(&mut self, other: Tally) {
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.failures += other.failures;
        self.abandoned += other.abandoned;
    }
}

/// Client threads of this test process sending GETs to one address until
/// stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// `clients` keep-alive connections, each sending `path(n)` and reading
    /// the answer, then pausing.
    fn keep_alive(
        name: &str,
        addr: SocketAddr,
        clients: usize,
        pause: Duration,
        path: fn(u64) -> String,
    ) -> Self {
        Self::spawn(name, clients, move |stop, client| {
            let mut tally = Tally::default();
            let mut conn: Option<BufReader<TcpStream>> = None;
            let mut n = client as u64;
            while !stop.load(Ordering::Relaxed) {
                let mut reader = match conn.take() {
                    Some(reader) => reader,
                    None => match open(addr, Duration::from_secs(10)) {
                        Ok(stream) => BufReader::new(stream),
                        Err(_) => {
                            tally.failures += 1;
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    },
                };
                let request = get_request(&path(n));
                n += clients as u64;
                if reader.get_mut().write_all(request.as_bytes()).is_err() {
                    tally.failures += 1;
                    continue;
                }
                match read_response(&mut reader, false) {
                    Ok(response) => {
                        *tally.statuses.entry(response.status).or_default() += 1;
                        conn = Some(reader);
                    }
                    Err(_) => tally.failures += 1,
                }
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            tally
        })
    }

    /// `clients` clients, started `after / clients` apart, each sending
    /// `path(n)` on a new connection and closing it `after` later without
    /// an answer.
    fn abandoning(
        name: &str,
        addr: SocketAddr,
        clients: usize,
        after: Duration,
        path: fn(u64) -> String,
    ) -> Self {
        Self::spawn(name, clients, move |stop, client| {
            let mut tally = Tally::default();
            std::thread::sleep(after * client as u32 / clients as u32);
            let mut n = client as u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = open(addr, after) else {
                    tally.failures += 1;
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                let request = get_request(&path(n));
                n += clients as u64;
                if stream.write_all(request.as_bytes()).is_err() {
                    tally.failures += 1;
                    continue;
                }
                let mut byte = [0u8; 1];
                match stream.read(&mut byte) {
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        tally.abandoned += 1;
                    }
                    // An answer (or a close) came: not what this load is for.
                    Ok(_) => *tally.statuses.entry(0).or_default() += 1,
                    Err(_) => tally.failures += 1,
                }
            }
            tally
        })
    }

    fn spawn(
        name: &str,
        clients: usize,
        body: impl Fn(&AtomicBool, usize) -> Tally + Send + Sync + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let body = Arc::new(body);
        let threads = (0..clients)
            .map(|client| {
                let (stop, body) = (Arc::clone(&stop), Arc::clone(&body));
                std::thread::Builder::new()
                    .name(format!("{name}-{client}"))
                    .spawn(move || body(&stop, client))
                    .expect("spawn a client thread")
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the clients (each finishes its request in flight) and sums
    /// their tallies.
    fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for thread in self.threads.drain(..) {
            total.add(thread.join().expect("a client thread panicked"));
        }
        total
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A failing test still ends its clients before the server goes.
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A client connection with read and write timeouts of `timeout`.
fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
