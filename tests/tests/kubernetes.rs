//! Pod metadata end to end: the real tracer reads pods, owners, Services and
//! EndpointSlices from a stand-in API server (`peers/kube_apiserver.py`,
//! because no kube-apiserver runs on these machines; it speaks the real
//! list/watch wire protocol) and labels the series of real processes that
//! the test starts in cgroups named the way kubelet names them, so the whole
//! path from pid to cgroup to pod to labels runs for real.
//!
//! Ground truth: each pod server's own access log (exact counts per pod),
//! curl's own results on the client side, and the stand-in's request log
//! (what the tracer asked the API server).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tracer_e2e::cgroups::{random_container_id, random_uid, PodCgroup, Qos};
use tracer_e2e::kube::{self, KubeApi};
use tracer_e2e::net::url;
use tracer_e2e::tracer::{spawn_watch, try_get, SERVER_COUNT};
use tracer_e2e::wait::METRICS_TIMEOUT;
use tracer_e2e::{curl, privileged, wait_until, Peer, PyServer, TestDir, Tracer, Want};

const NODE: &str = "node-e2e";

/// A pod of the test: its API object's identity and its cgroup.
struct TestPod {
    uid: String,
    container: String,
    cgroup: PodCgroup,
}

impl TestPod {
    fn new(qos: Qos, systemd: bool) -> Self {
        let (uid, container) = (random_uid(), random_container_id());
        let cgroup = if systemd {
            PodCgroup::systemd(&uid, &container, qos)
        } else {
            PodCgroup::cgroupfs(&uid, &container, qos)
        };
        Self {
            uid,
            container,
            cgroup,
        }
    }
}

/// The tracer with Kubernetes on, pointed at the stand-in.
fn tracer_with(dir: &TestDir, api: &KubeApi, extra: &[&str]) -> Tracer {
    let kubeconfig = api.kubeconfig().display().to_string();
    let mut args = vec!["--kubeconfig", &kubeconfig, "--node-name", NODE];
    args.extend_from_slice(extra);
    Tracer::start(dir, &args)
}

/// The value of one sample (0 when absent).
fn value(tracer: &Tracer, name: &str, filter: &[(&str, &str)]) -> f64 {
    tracer.scrape().sum(name, filter)
}

fn wait_for_value(tracer: &Tracer, name: &str, filter: &[(&str, &str)], want: f64) {
    let ok = wait_until(METRICS_TIMEOUT, || {
        (value(tracer, name, filter) == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "{name}{filter:?} never became {want}; tracer metrics:\n{}",
        tracer.scrape().lines("tracer_kubernetes", &[])
    );
}

fn get_n(server: &PyServer, path: &str, n: usize) {
    let got = curl(&[], &vec![url(server.addr(), path); n]);
    assert!(got.iter().all(|t| t.status == 200), "{got:?}");
}

#[test]
fn pod_series_carry_pod_workload_and_callee_labels() {
    if !privileged("pod_series_carry_pod_workload_and_callee_labels") {
        return;
    }
    pod_and_callee_labels("k8s-labels", &[]);
}

/// The packet path names the same processes, pods and callees: the server
/// by its listening socket, the client by the kernel's note of who
/// connected, the callee by its address.
#[test]
fn packet_path_series_carry_pod_workload_and_callee_labels() {
    if !privileged("packet_path_series_carry_pod_workload_and_callee_labels") {
        return;
    }
    pod_and_callee_labels(
        "k8s-labels-pkt",
        &["--source", "packets", "--interfaces", "lo"],
    );
}

fn pod_and_callee_labels(name: &str, tracer_args: &[&str]) {
    let dir = TestDir::new(name);
    let api = KubeApi::start(&dir);
    // Deployment web -> ReplicaSet web-7d9f8b6c5d -> pod, systemd driver.
    let web = TestPod::new(Qos::Burstable, true);
    let (deploy_uid, rs_uid) = (random_uid(), random_uid());
    api.apply(&kube::deployment("shop", "web", &deploy_uid));
    api.apply(&kube::replicaset(
        "shop",
        "web-7d9f8b6c5d",
        &rs_uid,
        Some(("Deployment", "web", &deploy_uid)),
    ));
    api.apply(
        &kube::pod(
            "shop",
            "web-7d9f8b6c5d-x2k9p",
            NODE,
            &web.uid,
            Some("127.0.0.3"),
        )
        .owner("ReplicaSet", "web-7d9f8b6c5d", &rs_uid)
        .container("app", &web.container)
        .build(),
    );
    // A second replica of the same ReplicaSet (API object only): its owner
    // comes from the cache filled by the first.
    api.apply(
        &kube::pod(
            "shop",
            "web-7d9f8b6c5d-q8w7e",
            NODE,
            &random_uid(),
            Some("127.0.0.12"),
        )
        .owner("ReplicaSet", "web-7d9f8b6c5d", &rs_uid)
        .build(),
    );
    // The Service "storefront" has ClusterIP 127.0.0.2; a host-network pod
    // has this node's address 127.0.0.4, which must not name it as callee.
    api.apply(&kube::service("shop", "storefront", "127.0.0.2", 80));
    api.apply(
        &kube::pod(
            "kube-system",
            "node-agent",
            NODE,
            &random_uid(),
            Some("127.0.0.4"),
        )
        .host_network(true)
        .host_ip("127.0.0.4")
        .build(),
    );
    // A bare pod (no owner) on the cgroupfs driver: its name is its service.
    let bare = TestPod::new(Qos::Guaranteed, false);
    api.apply(
        &kube::pod("tools", "debug-shell", NODE, &bare.uid, Some("127.0.0.5"))
            .container("shell", &bare.container)
            .build(),
    );

    let tracer = tracer_with(&dir, &api, tracer_args);
    let server = PyServer::start_in_pod(&dir, "web", &web.cgroup, "web");
    let bare_server = PyServer::start_in_pod(&dir, "debug", &bare.cgroup, "debug-shell");
    let port = server.addr().port();
    let via = |ip: [u8; 4]| SocketAddr::from((Ipv4Addr::from(ip), port));
    curl(&[], &vec![url(server.addr(), "/direct"); 3]);
    curl(&[], &vec![url(via([127, 0, 0, 2]), "/via-service"); 4]);
    curl(&[], &vec![url(via([127, 0, 0, 3]), "/via-pod"); 2]);
    curl(&[], &vec![url(via([127, 0, 0, 4]), "/via-host"); 5]);
    get_n(&bare_server, "/bare", 6);
    tracer.barrier(&server);
    tracer.barrier(&bare_server);

    let log = server.access_log();
    let web_labels = [
        ("service_name", "web"),
        ("service_namespace", "shop"),
        ("k8s_namespace_name", "shop"),
        ("k8s_pod_name", "web-7d9f8b6c5d-x2k9p"),
        ("k8s_container_name", "app"),
        ("k8s_node_name", NODE),
        ("k8s_owner_name", "web"),
        ("k8s_deployment_name", "web"),
    ];
    let mut wants = Vec::new();
    for route in ["/direct", "/via-service", "/via-pod", "/via-host"] {
        let mut want = Want::metric(SERVER_COUNT).label("http_route", route);
        for (k, v) in web_labels {
            want = want.label(k, v);
        }
        wants.push(want.is(log.under(route).count() as u64));
    }
    let mut bare_want = Want::server("debug-shell", "/bare")
        .label("k8s_pod_name", "debug-shell")
        .label("k8s_owner_name", "debug-shell")
        .label("k8s_container_name", "shell")
        .label("service_namespace", "tools");
    bare_want = bare_want.is(bare_server.access_log().under("/bare").count() as u64);
    wants.push(bare_want);
    // Client side: curl runs outside any pod; the callee is named when the
    // address is a Service's ClusterIP or a pod's IP, never for the node's.
    let curl_name = tracer_e2e::exe_service_name(&tracer_e2e::require_tool("curl"));
    let callee = |route: &str, service: &str, namespace: &str, n: u64| {
        Want::client(&curl_name, route)
            .label("server_service_name", service)
            .label("server_service_namespace", namespace)
            .is(n)
    };
    wants.push(callee("/via-service", "storefront", "shop", 4));
    wants.push(callee("/via-pod", "web", "shop", 2));
    wants.push(callee("/via-host", "", "", 5));
    wants.push(callee("/direct", "", "", 3));
    tracer.expect(&wants);
    let scrape = tracer.scrape();
    // No series of the pod's process without its pod, and none for a
    // statefulset/daemonset kind it is not.
    assert_eq!(
        scrape.count(
            SERVER_COUNT,
            &[
                ("service_name", &server_exe(&server)),
                ("http_route", "/direct")
            ]
        ),
        0
    );
    assert!(scrape
        .series(SERVER_COUNT, &[("k8s_pod_name", "web-7d9f8b6c5d-x2k9p")])
        .all(|s| s.label("k8s_statefulset_name").is_empty()));
    // Processes outside pods keep today's labels only.
    for s in scrape.series(
        "http_client_request_duration_seconds_count",
        &[("service_name", &curl_name)],
    ) {
        assert!(s.label("k8s_pod_name").is_empty() && s.label("service_namespace").is_empty());
    }

    // What the tracer asked: this node's pods only, owners as metadata.
    let requests = api.requests();
    let pod_calls: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/api/v1/pods")
        .collect();
    assert!(!pod_calls.is_empty(), "the tracer never listed pods");
    for r in &pod_calls {
        assert_eq!(
            r.param("fieldSelector").as_deref(),
            Some("spec.nodeName=node-e2e"),
            "{r:?}"
        );
    }
    let rs_gets: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/apis/apps/v1/namespaces/shop/replicasets/web-7d9f8b6c5d")
        .collect();
    assert_eq!(rs_gets.len(), 1, "one cached owner lookup: {rs_gets:?}");
    assert!(
        rs_gets[0].accept.contains("as=PartialObjectMetadata"),
        "{:?}",
        rs_gets[0]
    );
    assert!(
        requests.iter().all(|r| r.method == "GET"),
        "the tracer only reads"
    );
    wait_for_value(
        &tracer,
        "tracer_kubernetes_cache_objects",
        &[("resource", "pods")],
        4.0,
    );
    assert_eq!(value(&tracer, "tracer_kubernetes_synced", &[]), 1.0);
}

/// The service name the tracer gives the pod server's executable when it
/// has no pod: what must never appear for a process in a pod.
fn server_exe(server: &PyServer) -> String {
    tracer_e2e::exe_service_name(std::path::Path::new(&format!("/proc/{}/exe", server.pid())))
}

#[test]
fn pod_created_after_the_tracer_is_labelled_from_its_first_request() {
    if !privileged("pod_created_after_the_tracer_is_labelled_from_its_first_request") {
        return;
    }
    let dir = TestDir::new("k8s-late-pod");
    let api = KubeApi::start(&dir);
    let tracer = tracer_with(&dir, &api, &[]);
    // The process starts and serves before the API server has its pod, as
    // when the watch lags: its exchanges wait for the pod, none is published
    // under the bare executable's name.
    let ledger = TestPod::new(Qos::BestEffort, true);
    let server = PyServer::start_in_pod(&dir, "ledger", &ledger.cgroup, "ledger");
    get_n(&server, "/early", 7);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        tracer
            .scrape()
            .count(SERVER_COUNT, &[("http_route", "/early")]),
        0,
        "published before its pod was known"
    );
    let sts_uid = random_uid();
    api.apply(&kube::statefulset("finance", "ledger-db", &sts_uid));
    api.apply(
        &kube::pod(
            "finance",
            "ledger-db-0",
            NODE,
            &ledger.uid,
            Some("127.0.0.6"),
        )
        .owner("StatefulSet", "ledger-db", &sts_uid)
        .container("db", &ledger.container)
        .annotation("resource.opentelemetry.io/service.name", "ledger")
        .annotation("resource.opentelemetry.io/service.namespace", "payments")
        .label("app.kubernetes.io/name", "not-this-one")
        .build(),
    );
    get_n(&server, "/later", 4);
    tracer.barrier(&server);
    let log = server.access_log();
    let labelled = |route: &str| {
        Want::server("ledger", route)
            .label("service_namespace", "payments")
            .label("k8s_namespace_name", "finance")
            .label("k8s_pod_name", "ledger-db-0")
            .label("k8s_statefulset_name", "ledger-db")
            .label("k8s_owner_name", "ledger-db")
            .label("k8s_container_name", "db")
            .is(log.under(route).count() as u64)
    };
    tracer.expect(&[labelled("/early"), labelled("/later")]);
    assert_eq!(log.under("/early").count(), 7);
    // Every series with these routes carries the pod.
    let scrape = tracer.scrape();
    for route in ["/early", "/later"] {
        assert_eq!(
            scrape.count(SERVER_COUNT, &[("http_route", route), ("k8s_pod_name", "")]),
            0,
            "a series of {route} without its pod:\n{}",
            scrape.lines(SERVER_COUNT, &[("http_route", route)])
        );
    }
}

#[test]
fn deleted_pod_series_are_removed_after_the_grace_period() {
    if !privileged("deleted_pod_series_are_removed_after_the_grace_period") {
        return;
    }
    let dir = TestDir::new("k8s-delete");
    let api = KubeApi::start(&dir);
    let job = TestPod::new(Qos::BestEffort, false);
    let (cron_uid, job_uid) = (random_uid(), random_uid());
    api.apply(&kube::cronjob("batch", "nightly", &cron_uid));
    api.apply(&kube::job(
        "batch",
        "nightly-29000000",
        &job_uid,
        Some(("CronJob", "nightly", &cron_uid)),
    ));
    api.apply(
        &kube::pod(
            "batch",
            "nightly-29000000-abcde",
            NODE,
            &job.uid,
            Some("127.0.0.7"),
        )
        .owner("Job", "nightly-29000000", &job_uid)
        .container("run", &job.container)
        .build(),
    );
    let tracer = tracer_with(&dir, &api, &["--pod-grace-period", "2s"]);
    let server = PyServer::start_in_pod(&dir, "nightly", &job.cgroup, "nightly");
    get_n(&server, "/a", 2);
    get_n(&server, "/b", 3);
    tracer.barrier(&server);
    let pod = [("k8s_pod_name", "nightly-29000000-abcde")];
    tracer.expect(&[
        Want::server("nightly", "/a")
            .label("k8s_cronjob_name", "nightly")
            .label("k8s_owner_name", "nightly")
            .is(2),
        Want::server("nightly", "/b")
            .label("k8s_pod_name", pod[0].1)
            .is(3),
    ]);
    // Series of the pod: /a, /b and the barrier.
    let series = tracer.scrape().series(SERVER_COUNT, &pod).count();
    assert_eq!(series, 3);
    drop(server);
    api.delete("Pod", "batch", "nightly-29000000-abcde");
    let gone = wait_until(METRICS_TIMEOUT, || {
        (tracer.scrape().series(SERVER_COUNT, &pod).count() == 0).then_some(())
    });
    assert!(gone.is_some(), "the deleted pod's series stayed");
    assert_eq!(
        value(&tracer, "tracer_series_removed_total", &[]),
        series as f64
    );
    assert_eq!(
        value(
            &tracer,
            "tracer_kubernetes_cache_objects",
            &[("resource", "pods")]
        ),
        0.0
    );
}

#[test]
fn api_outage_and_410_keep_counts_exact_and_labels() {
    if !privileged("api_outage_and_410_keep_counts_exact_and_labels") {
        return;
    }
    let dir = TestDir::new("k8s-outage");
    let api = KubeApi::start(&dir);
    let web = TestPod::new(Qos::Burstable, true);
    api.apply(
        &kube::pod("shop", "cart-0", NODE, &web.uid, Some("127.0.0.8"))
            .label("app.kubernetes.io/name", "cart")
            .container("cart", &web.container)
            .build(),
    );
    let tracer = tracer_with(&dir, &api, &[]);
    let server = PyServer::start_in_pod(&dir, "cart", &web.cgroup, "cart");
    get_n(&server, "/before", 5);
    tracer.barrier(&server);

    api.outage(true);
    wait_for_value(
        &tracer,
        "tracer_kubernetes_watch_up",
        &[("resource", "pods")],
        0.0,
    );
    // Traffic during the outage, including a new process of the same pod.
    get_n(&server, "/during", 9);
    let second = PyServer::start_in_pod(&dir, "cart-2", &web.cgroup, "cart");
    get_n(&second, "/during-new-process", 3);
    tracer.barrier(&server);
    tracer.barrier(&second);
    let cart = |route: &str, n: usize| {
        Want::server("cart", route)
            .label("k8s_pod_name", "cart-0")
            .label("k8s_container_name", "cart")
            .is(n as u64)
    };
    tracer.expect(&[
        cart("/before", server.access_log().under("/before").count()),
        cart("/during", server.access_log().under("/during").count()),
        cart(
            "/during-new-process",
            second.access_log().under("/during-new-process").count(),
        ),
    ]);
    assert!(
        value(
            &tracer,
            "tracer_kubernetes_errors_total",
            &[("resource", "pods")]
        ) > 0.0
    );

    // Back, with the history compacted: resuming the watch gets 410 Gone and
    // the tracer lists again.
    let restarts = value(
        &tracer,
        "tracer_kubernetes_watch_restarts_total",
        &[("resource", "pods")],
    );
    api.clear_requests();
    api.compact();
    api.outage(false);
    wait_for_value(
        &tracer,
        "tracer_kubernetes_watch_up",
        &[("resource", "pods")],
        1.0,
    );
    let relisted = wait_until(METRICS_TIMEOUT, || {
        api.requests()
            .iter()
            .any(|r| r.path == "/api/v1/pods" && !r.is_watch())
            .then_some(())
    });
    assert!(
        relisted.is_some(),
        "no re-list after 410: {:?}",
        api.requests()
    );
    assert!(
        value(
            &tracer,
            "tracer_kubernetes_watch_restarts_total",
            &[("resource", "pods")]
        ) > restarts
    );
    get_n(&server, "/after", 2);
    tracer.barrier(&server);
    tracer.expect(&[cart("/after", 2)]);

    // Without an outage: the history is compacted and the watch ends
    // cleanly; resuming it from the old resourceVersion gets 410 Gone, and
    // the tracer lists again.
    let watched = wait_until(METRICS_TIMEOUT, || {
        api.requests()
            .iter()
            .any(|r| r.path == "/api/v1/pods" && r.is_watch())
            .then_some(())
    });
    assert!(watched.is_some(), "the tracer never watched again");
    api.clear_requests();
    api.compact();
    let relisted = wait_until(METRICS_TIMEOUT, || {
        let requests = api.requests();
        let gone = requests
            .iter()
            .any(|r| r.path == "/api/v1/pods" && r.is_watch() && r.status == 200);
        let listed = requests
            .iter()
            .any(|r| r.path == "/api/v1/pods" && !r.is_watch());
        (gone && listed).then_some(())
    });
    assert!(
        relisted.is_some(),
        "no re-list after 410 Gone: {:?}",
        api.requests()
    );
    get_n(&server, "/after-410", 3);
    tracer.barrier(&server);
    tracer.expect(&[cart("/after-410", 3)]);
}

#[test]
fn readyz_waits_for_the_pod_cache() {
    if !privileged("readyz_waits_for_the_pod_cache") {
        return;
    }
    let dir = TestDir::new("k8s-readyz");
    let api = KubeApi::start(&dir);
    api.outage_503(true);
    let kubeconfig = api.kubeconfig().display().to_string();
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, tracer_e2e::free_port()));
    let mut cmd = std::process::Command::new(tracer_e2e::tracer::tracer_bin());
    cmd.args(["run", "--metrics-addr", &metrics.to_string()])
        .args(["--kubeconfig", &kubeconfig, "--node-name", NODE]);
    let mut guard = tracer_e2e::Guard::spawn("tracer", &mut cmd, &dir);
    // Live (metrics served) but not ready while the API server fails.
    let live = wait_until(METRICS_TIMEOUT, || {
        guard.assert_running();
        try_get(metrics, "/healthz")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(live.is_some(), "{}", guard.stderr());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        try_get(metrics, "/readyz").map(|r| r.status).ok(),
        Some(503)
    );
    let body = try_get(metrics, "/metrics").expect("metrics").body_text();
    assert!(body.contains("tracer_kubernetes_synced 0"), "{body}");
    api.outage_503(false);
    let ready = wait_until(Duration::from_secs(40), || {
        try_get(metrics, "/readyz").ok().filter(|r| r.status == 200)
    });
    assert!(ready.is_some(), "never ready after the API came back");
}

#[test]
fn bad_kubernetes_configuration_is_one_line() {
    if !privileged("bad_kubernetes_configuration_is_one_line") {
        return;
    }
    let dir = TestDir::new("k8s-badconfig");
    let bad = dir.write("kubeconfig", "this: [is not a kubeconfig");
    let (status, _, stderr) = tracer_e2e::tracer::run_cli(
        &dir,
        "tracer",
        &[
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--kubeconfig",
            &bad.display().to_string(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("tracer: error: --kubeconfig"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn watch_filters_by_namespace_and_pod_and_prints_the_pod() {
    if !privileged("watch_filters_by_namespace_and_pod_and_prints_the_pod") {
        return;
    }
    let dir = TestDir::new("k8s-watch");
    let api = KubeApi::start(&dir);
    let (a, b) = (
        TestPod::new(Qos::BestEffort, true),
        TestPod::new(Qos::BestEffort, true),
    );
    for (pod, ns, name, ip) in [
        (&a, "red", "alpha", "127.0.0.9"),
        (&b, "blue", "beta", "127.0.0.10"),
    ] {
        api.apply(
            &kube::pod(ns, name, NODE, &pod.uid, Some(ip))
                .container("c", &pod.container)
                .build(),
        );
    }
    let kubeconfig = api.kubeconfig().display().to_string();
    let mut watch = spawn_watch(
        &dir,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            NODE,
            "--namespace",
            "red",
            "--pod",
            "red/alpha",
            // "process identified" lines: when beta's records stopped waiting.
            "--log",
            "info,tracer=debug,kube_client=off",
        ],
    );
    let tracer = tracer_with(&dir, &api, &[]);
    let sa = PyServer::start_in_pod(&dir, "alpha", &a.cgroup, "alpha");
    let sb = PyServer::start_in_pod(&dir, "beta", &b.cgroup, "beta");
    // The watch attaches its own hooks: wait until it prints anything.
    let printing = wait_until(METRICS_TIMEOUT, || {
        watch.assert_running();
        get_n(&sa, "/ping", 1);
        (!watch.stdout().is_empty()).then_some(())
    });
    assert!(
        printing.is_some(),
        "watch printed nothing: {}",
        watch.stderr()
    );
    get_n(&sa, "/mine", 3);
    get_n(&sb, "/theirs", 4);
    // Beta's records wait in watch's pipeline until watch has identified
    // beta's process (records wait per process for their pod); after that
    // they pass the filter at the next batch. So: wait for watch to name
    // beta's pod, then send alpha a request; once watch prints it, beta's
    // records went through the filter before it, and no /theirs line
    // means the filter held them back.
    let beta_pid = format!("pid={} ", sb.pid());
    let identified = wait_until(METRICS_TIMEOUT, || {
        watch
            .stderr()
            .lines()
            .any(|l| {
                l.contains("process identified")
                    && l.contains(&beta_pid)
                    && l.contains("pod=blue/beta")
            })
            .then_some(())
    });
    assert!(
        identified.is_some(),
        "watch never identified beta's process: {}",
        watch.stderr()
    );
    get_n(&sa, "/last", 1);
    tracer.barrier(&sa);
    tracer.barrier(&sb);
    let out = wait_until(METRICS_TIMEOUT, || {
        let out = watch.stdout();
        out.lines().any(|l| l.contains(" /last ")).then_some(out)
    })
    .unwrap_or_else(|| watch.stdout());
    let server_lines: Vec<&str> = out.lines().filter(|l| l.contains(" server ")).collect();
    assert_eq!(
        server_lines
            .iter()
            .filter(|l| l.contains(" /mine "))
            .count(),
        3,
        "{out}"
    );
    assert!(
        server_lines
            .iter()
            .all(|l| l.contains("alpha[") && l.contains(" pod=red/alpha ")),
        "{out}"
    );
    // The client of both is this process, outside any pod: only alpha's
    // server lines pass the filters.
    assert_eq!(server_lines.len(), out.lines().count(), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" /theirs ")).count(),
        0,
        "{out}"
    );
}
