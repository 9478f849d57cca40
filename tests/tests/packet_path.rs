//! The packet path (`--source packets` and `--source both`) against real
//! servers: nginx serving a 2 MiB static file with `sendfile on` (the body
//! never passes through a syscall buffer), counted from the TCP segments on
//! loopback alone, and with both sources on, where the syscall hooks trace
//! every flow and the packet path must skip them (no request counted twice).
//!
//! Ground truth: nginx's access log (requests and `$body_bytes_sent`) and
//! curl's transfers.

use tracer_e2e::net::url;
use tracer_e2e::tracer::{printed_lines, spawn_watch, try_get};
use tracer_e2e::wait::{METRICS_TIMEOUT, START_TIMEOUT};
use tracer_e2e::{curl, privileged, wait_until, Nginx, Peer, TestDir, Tracer, Want};

const SIZE: usize = 2 << 20;

/// Fetches the 2 MiB file `fetches` times over one keep-alive connection.
fn fetch_big_file(dir: &TestDir, nginx: &Nginx, fetches: usize) {
    dir.write(
        "www/big/file.bin",
        tracer_e2e::noise(SIZE, 0x51_7cc1_b727_220a),
    );
    let urls = vec![url(nginx.addr(), "/big/file.bin"); fetches];
    let transfers = curl(&[], &urls);
    assert!(transfers.iter().all(|t| t.status == 200), "{transfers:?}");
    let connects: u32 = transfers.iter().map(|t| t.connects).sum();
    assert_eq!(
        connects, 1,
        "curl should reuse one connection: {transfers:?}"
    );
}

/// What nginx logged for the file.
struct Logged {
    fetches: u64,
    /// The sum of `$body_bytes_sent`.
    body_bytes: u64,
}

/// What nginx logged for the file: every fetch complete (the whole body
/// sent) and 200.
fn logged_fetches(nginx: &Nginx) -> Logged {
    let log = nginx.access_log();
    let entries: Vec<_> = log.under("/big/").collect();
    assert!(
        entries.iter().all(|e| e.completed && e.status == 200),
        "{entries:?}"
    );
    Logged {
        fetches: entries.len() as u64,
        body_bytes: entries.iter().filter_map(|e| e.body_bytes_sent).sum(),
    }
}

/// The response body sizes of `service`'s requests for the file, on the
/// server or client histogram: their count and their sum, as nginx logged.
fn sizes(side: &str, service: &str, logged: &Logged) -> [Want; 2] {
    let family = format!("http_{side}_response_body_size_bytes");
    let want = |what: &str, value: u64| {
        Want::metric(&format!("{family}_{what}"))
            .label("service_name", service)
            .label("http_route", "/big/file.bin")
            .is(value)
    };
    [
        want("count", logged.fetches),
        want("sum", logged.body_bytes),
    ]
}

/// A tracer with `--source source` and `extra`, and nginx serving the file
/// `fetches` times: the test's folder, the tracer and what nginx logged,
/// after a barrier.
fn serve_big_file(
    name: &str,
    extra: &[&str],
    source: &str,
    fetches: usize,
) -> (TestDir, Tracer, Logged) {
    let dir = TestDir::new(name);
    let mut args = vec!["--source", source];
    args.extend_from_slice(extra);
    let tracer = Tracer::start(&dir, &args);
    let nginx = Nginx::start(&dir, "        location /big/ { sendfile on; }\n");
    fetch_big_file(&dir, &nginx, fetches);
    tracer.barrier(&nginx);
    let logged = logged_fetches(&nginx);
    assert_eq!(logged.fetches, fetches as u64, "nginx's access log");
    (dir, tracer, logged)
}

#[test]
fn sendfile_bodies_counted_from_packets_alone() {
    if !privileged("sendfile_bodies_counted_from_packets_alone") {
        return;
    }
    let (_dir, tracer, logged) =
        serve_big_file("pkt-sendfile", &["--interfaces", "lo"], "packets", 5);
    let [count, sum] = sizes("server", "nginx", &logged);
    let [client_count, client_sum] = sizes("client", "curl", &logged);
    tracer.expect(&[
        Want::server("nginx", "/big/file.bin")
            .method("GET")
            .status(200)
            .is(logged.fetches),
        count,
        sum,
        // Both ends are local: the flow is reported from each, curl's
        // named by the kernel's note of who connected.
        Want::client("curl", "/big/file.bin")
            .status(200)
            .label("server_address", "127.0.0.1")
            .is(logged.fetches),
        client_count,
        client_sum,
        Want::metric("tracer_user_drops_total")
            .label("cause", "packet_malformed")
            .is(0),
        Want::metric("tracer_parser_resyncs_total")
            .label("protocol", "http1")
            .is(0),
    ]);
}

#[test]
fn both_sources_count_each_request_once() {
    if !privileged("both_sources_count_each_request_once") {
        return;
    }
    let (_dir, tracer, logged) = serve_big_file("pkt-both", &[], "both", 3);
    let [server_count, server_sum] = sizes("server", "nginx", &logged);
    let [client_count, client_sum] = sizes("client", "curl", &logged);
    // The syscall hooks trace both ends; the packet path skips the flow.
    tracer.expect(&[
        Want::server("nginx", "/big/file.bin").is(logged.fetches),
        Want::client("curl", "/big/file.bin").is(logged.fetches),
        server_count,
        server_sum,
        client_count,
        client_sum,
        Want::metric("tracer_parser_resyncs_total")
            .label("protocol", "http1")
            .is(0),
    ]);
}

/// With both sources, the hooks cover a connection in the kernel as they
/// announce it (the client's at its handshake's end, before it sends a
/// byte): a connection per request, over before the daemon would read the
/// announcement, still never costs the packet path a payload segment.
#[test]
fn both_sources_cover_short_connections_before_their_first_byte() {
    if !privileged("both_sources_cover_short_connections_before_their_first_byte") {
        return;
    }
    const FETCHES: usize = 6;
    let dir = TestDir::new("pkt-both-short");
    let tracer = Tracer::start(&dir, &["--source", "both", "--interfaces", "lo"]);
    let nginx = Nginx::start(&dir, "        location /big/ { sendfile on; }\n");
    dir.write(
        "www/big/file.bin",
        tracer_e2e::noise(SIZE, 0x5407_7c0e_0000_0001),
    );
    let urls = vec![url(nginx.addr(), "/big/file.bin"); FETCHES];
    let transfers = curl(&["-H", "Connection: close"], &urls);
    assert!(transfers.iter().all(|t| t.status == 200), "{transfers:?}");
    let connects: u32 = transfers.iter().map(|t| t.connects).sum();
    assert_eq!(connects, FETCHES as u32, "one connection per fetch");
    tracer.barrier(&nginx);
    let logged = logged_fetches(&nginx);
    assert_eq!(logged.fetches, FETCHES as u64);
    tracer.expect(&[
        Want::server("nginx", "/big/file.bin").is(logged.fetches),
        Want::client("curl", "/big/file.bin").is(logged.fetches),
        Want::metric("tracer_user_drops_total")
            .label("cause", "packet_flow_covered")
            .is(0),
        // The FIN or RST a socket sends as it closes (past the cover) is
        // the hooks' connection's, not a segment of no flow.
        Want::metric("tracer_user_drops_total")
            .label("cause", "packet_no_flow")
            .is(0),
    ]);
}

#[test]
fn watch_says_which_source_saw_each_exchange() {
    if !privileged("watch_says_which_source_saw_each_exchange") {
        return;
    }
    const FETCHES: usize = 2;
    for (source, lines_per_fetch, says) in [
        ("packets", 2, "source=packets"),
        ("both", 2, "source=syscalls"),
    ] {
        let dir = TestDir::new(&format!("pkt-watch-{source}"));
        let nginx = Nginx::start(&dir, "        location /big/ { sendfile on; }\n");
        let port = nginx.port().to_string();
        let mut watch = spawn_watch(
            &dir,
            &["--source", source, "--interfaces", "lo", "--port", &port],
        );
        // Ready once it prints: probe until a probe request shows up.
        let ready = wait_until(START_TIMEOUT, || {
            watch.assert_running();
            let _ = try_get(nginx.addr(), "/probe");
            printed_lines(&watch)
                .iter()
                .any(|l| l.contains(" /probe "))
                .then_some(())
        });
        assert!(ready.is_some(), "--source {source}: watch printed nothing");
        fetch_big_file(&dir, &nginx, FETCHES);
        let want = FETCHES * lines_per_fetch;
        let printed = || -> Vec<String> {
            printed_lines(&watch)
                .into_iter()
                .filter(|l| l.contains(" /big/file.bin "))
                .collect()
        };
        let seen = wait_until(METRICS_TIMEOUT, || (printed().len() >= want).then_some(()));
        assert!(seen.is_some(), "--source {source}: {:?}", printed());
        // Longer for a line too many.
        std::thread::sleep(std::time::Duration::from_secs(1));
        let lines = printed();
        assert_eq!(lines.len(), want, "--source {source}: {lines:#?}");
        assert_eq!(logged_fetches(&nginx).fetches, FETCHES as u64);
        assert!(
            lines.iter().all(|l| l.ends_with(says)),
            "--source {source}: {lines:#?}"
        );
    }
}

/// A network namespace with a veth pair whose host end is a port of a
/// bridge holding the host's address: every segment between the host and
/// the namespace shows on two interfaces (the bridge and the veth). Removed
/// on drop.
struct BridgedNamespace {
    name: String,
    bridge: String,
    tag: u8,
}

impl BridgedNamespace {
    /// Host 10.231.X.1 on the bridge, namespace 10.231.X.2 behind the veth.
    fn create(tag: u8) -> Self {
        let name = format!("trc-ns{tag}");
        let bridge = format!("trc-br{tag}");
        let (host_end, ns_end) = (format!("trc-vh{tag}"), format!("trc-vn{tag}"));
        let this = BridgedNamespace {
            name: name.clone(),
            bridge: bridge.clone(),
            tag,
        };
        this.drop_leftovers();
        for args in [
            vec!["netns", "add", &name],
            vec!["link", "add", &bridge, "type", "bridge"],
            vec![
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ],
            vec!["link", "set", &host_end, "master", &bridge],
            vec!["link", "set", &ns_end, "netns", &name],
            vec!["addr", "add", &format!("10.231.{tag}.1/24"), "dev", &bridge],
            vec!["link", "set", &bridge, "up"],
            vec!["link", "set", &host_end, "up"],
            vec![
                "-n",
                &name,
                "addr",
                "add",
                &format!("10.231.{tag}.2/24"),
                "dev",
                &ns_end,
            ],
            vec!["-n", &name, "link", "set", &ns_end, "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            ip(&args, true);
        }
        this
    }

    fn drop_leftovers(&self) {
        ip(&["netns", "del", &self.name], false);
        ip(&["link", "del", &self.bridge], false);
    }
}

impl Drop for BridgedNamespace {
    fn drop(&mut self) {
        self.drop_leftovers();
    }
}

fn ip(args: &[&str], must: bool) {
    let status = std::process::Command::new(tracer_e2e::require_tool("ip"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(!must || status.success(), "ip {args:?} failed: {status}");
}

/// Serves a page from Python's HTTP server inside `net`, fetches it over
/// the bridge and the veth, and checks that `tracer` (`--source packets`
/// on every interface) counted each request exactly once against the
/// server's own log, and that the segments did show on two interfaces.
fn count_behind_the_veth(dir: &TestDir, tracer: &Tracer, net: &BridgedNamespace) {
    const FETCHES: u64 = 20;
    dir.write("www/page.html", b"<p>behind a veth</p>");
    let port = tracer_e2e::free_port();
    let python = tracer_e2e::peers::python();
    let server_ip = format!("10.231.{}.2", net.tag);
    let mut cmd = std::process::Command::new(tracer_e2e::require_tool("ip"));
    cmd.args(["netns", "exec", &net.name])
        .arg(&python)
        .args(["-m", "http.server", "--bind", &server_ip])
        .arg(port.to_string())
        .arg("--directory")
        .arg(dir.path().join("www"));
    let server = tracer_e2e::Guard::spawn("netns-server", &mut cmd, dir);
    let addr: std::net::SocketAddr = format!("{server_ip}:{port}").parse().unwrap();
    let up = wait_until(START_TIMEOUT, || try_get(addr, "/page.html").ok());
    assert!(up.is_some(), "the server in {} never answered", net.name);

    // HTTP/1.0 server: one connection per request.
    let urls = vec![url(addr, "/page.html"); FETCHES as usize];
    let transfers = curl(&[], &urls);
    assert!(transfers.iter().all(|t| t.status == 200), "{transfers:?}");
    // The server's own log: one line per request it answered.
    let served = |path: &str| {
        server
            .stderr()
            .lines()
            .filter(|l| l.contains(&format!("\"GET {path} HTTP/1.1\" 200")))
            .count() as u64
    };
    let service = tracer_e2e::exe_service_name(&python);
    // Barrier: a last request counted means every earlier one was.
    let _ = try_get(addr, "/barrier.html");
    let barrier = Want::server(&service, "/barrier.html").status(404).is(1);
    let counted = wait_until(METRICS_TIMEOUT, || {
        (barrier.got(&tracer.scrape()) == 1).then_some(())
    });
    assert!(
        counted.is_some(),
        "{}",
        tracer.report(&tracer.scrape(), &[barrier])
    );
    let fetched = served("/page.html");
    assert_eq!(fetched, FETCHES + 1, "the server's log (probe included)");
    // The client's end too: curl in the host's namespace, the server
    // named by its address.
    tracer.expect(&[
        Want::server(&service, "/page.html").status(200).is(fetched),
        Want::client("curl", "/page.html")
            .status(200)
            .label("server_address", &server_ip)
            .is(FETCHES),
    ]);
    // Not a result but the premise: the segments did show on two interfaces.
    let copies = tracer.scrape().count(
        "tracer_user_drops_total",
        &[("cause", "packet_other_interface")],
    );
    assert!(copies > 0, "no segment was seen on a second interface");
}

/// `tracer_packet_interfaces` once it equals `want` (None if it never
/// does within the metrics timeout).
fn interfaces_become(tracer: &Tracer, want: u64) -> Option<u64> {
    wait_until(METRICS_TIMEOUT, || {
        let now = tracer.scrape().count("tracer_packet_interfaces", &[]);
        (now == want).then_some(now)
    })
}

#[test]
fn a_server_behind_a_bridged_veth_counts_once() {
    if !privileged("a_server_behind_a_bridged_veth_counts_once") {
        return;
    }
    let dir = TestDir::new("pkt-veth");
    let net = BridgedNamespace::create(7);
    // Every interface (the default), found at start: the bridge and its
    // veth port both carry the flow.
    let tracer = Tracer::start(&dir, &["--source", "packets"]);
    count_behind_the_veth(&dir, &tracer, &net);
}

/// Without `--interfaces` the tracer follows the interfaces: a bridge and
/// a veth created after it is ready get sockets of their own (counted in
/// `tracer_packet_interfaces`), their traffic is counted exactly once, and
/// their sockets close when they go.
#[test]
fn interfaces_that_appear_later_are_captured_and_released() {
    if !privileged("interfaces_that_appear_later_are_captured_and_released") {
        return;
    }
    let dir = TestDir::new("pkt-veth-later");
    let tracer = Tracer::start(&dir, &["--source", "packets"]);
    let before = tracer.scrape().count("tracer_packet_interfaces", &[]);
    let present = std::fs::read_dir("/sys/class/net").unwrap().count() as u64;
    assert_eq!(before, present, "one socket per interface at start");
    let net = BridgedNamespace::create(8);
    // The bridge and the veth's host end (its other end moved away): wait
    // for their sockets, so the server's first segments are seen.
    assert!(
        interfaces_become(&tracer, before + 2).is_some(),
        "the new bridge and veth were not captured: {} interfaces",
        tracer.scrape().count("tracer_packet_interfaces", &[])
    );
    count_behind_the_veth(&dir, &tracer, &net);
    drop(net);
    assert!(
        interfaces_become(&tracer, before).is_some(),
        "the sockets of the removed bridge and veth stayed: {} interfaces",
        tracer.scrape().count("tracer_packet_interfaces", &[])
    );
    tracer.expect(&[Want::metric("tracer_packet_interface_errors_total").is(0)]);
}
