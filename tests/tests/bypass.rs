//! Positions stay exact whatever moved the bytes (issue 9, item 1): a
//! keep-alive server (`src/bin/bypass_server.rs`) moves its response bodies
//! with splice, sendfile, pwritev2, sendmmsg or io_uring, or consumes request
//! bodies with splice, preadv2, recvmmsg or io_uring, instead of
//! read/write. A tracer that learns a socket's position only from the
//! syscalls it hooks drifts by every body it did not see, takes the next
//! request's head for body bytes and loses that request, and the drift
//! compounds over the connection. Each mode is its own test, so a failure
//! names the syscall.
//!
//! Traffic per test: two servers (bodies of 3000 bytes, under the default
//! 4096-byte capture, and of 100 KiB, mostly a gap), each sent
//! [`CONNECTIONS`] connections of [`REQUESTS_PER_CONNECTION`] requests,
//! alternating GET and POST with a body of the server's body size. The client
//! is this test process (renamed [`CLIENT`]) with plain read/write: either one
//! thread, a request and then its response, or [`WRITER_THREADS`] threads
//! writing whole requests on one shared socket (each in one `write`, under a
//! mutex, as real clients serialise writes) while one more thread reads the
//! responses.
//!
//! Ground truth: the responses the client read completely (status and body
//! checked) and the server's access log, which must agree; the tracer's
//! server and client counts must equal them per method, status and route, no
//! exchange may be invented, and the HTTP/1 parser's resync and unmatched
//! counters must not move.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use tracer_e2e::accesslog::Counts;
use tracer_e2e::net::connect;
use tracer_e2e::tracer::{CLIENT_COUNT, SERVER_COUNT};
use tracer_e2e::{
    exe_service_name, free_port, own_service_name, privileged, read_response, AccessLog, Guard,
    Peer, TestDir, Tracer, Want,
};

const CONNECTIONS: u64 = 2;
const REQUESTS_PER_CONNECTION: u64 = 50;
/// Under the tracer's default 4096-byte capture: the bypassed bytes are ones
/// it would have captured.
const SMALL_BODY: usize = 3000;
/// Far over the capture: the body is mostly a gap.
const LARGE_BODY: usize = 100 << 10;
/// The client-side service name of this test process.
const CLIENT: &str = "e2e-bypass-client";
/// Threads writing requests on one shared connection in the threaded client.
const WRITER_THREADS: usize = 4;
/// The tracer's default capture per syscall. The client reads at most this
/// much at a time: one read spanning several pipelined responses would have
/// the heads past its first 4096 bytes uncaptured, a capture limit that is
/// not what these tests are about.
const CAPTURE_BYTES: usize = 4096;
/// The HTTP/1 parser's counters that must not move for this traffic. They
/// count for the whole host, not per service: other HTTP/1 traffic on the
/// machine during a test (another suite running) moves them too.
const PARSER_TROUBLE: [&str; 2] = ["tracer_parser_resyncs_total", "tracer_unmatched_total"];

#[test]
fn control_response_and_request_bodies_via_write_and_read() {
    check_counts_exact("write", "read", Client::OneThread);
}

#[test]
fn response_bodies_via_splice() {
    check_counts_exact("splice", "read", Client::OneThread);
}

#[test]
fn response_bodies_via_sendfile() {
    check_counts_exact("sendfile", "read", Client::OneThread);
}

#[test]
fn response_bodies_via_pwritev2() {
    check_counts_exact("pwritev2", "read", Client::OneThread);
}

#[test]
fn response_bodies_via_sendmmsg() {
    check_counts_exact("sendmmsg", "read", Client::OneThread);
}

#[test]
fn response_bodies_via_io_uring() {
    check_counts_exact("io_uring", "read", Client::OneThread);
}

#[test]
fn request_bodies_via_splice() {
    check_counts_exact("write", "splice", Client::OneThread);
}

#[test]
fn request_bodies_via_preadv2() {
    check_counts_exact("write", "preadv2", Client::OneThread);
}

#[test]
fn request_bodies_via_recvmmsg() {
    check_counts_exact("write", "recvmmsg", Client::OneThread);
}

#[test]
fn request_bodies_via_io_uring() {
    check_counts_exact("write", "io_uring", Client::OneThread);
}

/// Issue 7: an io_uring server counted exactly by the packet path alone.
#[test]
fn io_uring_server_counted_by_the_packet_path() {
    check_counts("io_uring", "io_uring", Client::OneThread, Source::Packets);
}

#[test]
fn several_threads_write_one_connection_while_another_reads() {
    check_counts_exact("write", "read", Client::SharedSocket);
}

/// How the client drives a connection.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// One thread: a request, then its response.
    OneThread,
    /// [`WRITER_THREADS`] writers and one reader on one socket.
    SharedSocket,
}

/// The workload server, stopped when dropped.
struct BypassServer {
    guard: Guard,
    port: u16,
    log: PathBuf,
    service: String,
    /// Routes of this server's traffic start with it: `/small` or `/large`.
    prefix: &'static str,
    body_size: usize,
}

impl BypassServer {
    fn start(
        dir: &TestDir,
        prefix: &'static str,
        body_via: &str,
        request_body_via: &str,
        body_size: usize,
    ) -> Self {
        Self::start_accepting(dir, prefix, body_via, request_body_via, body_size, "std")
    }

    /// `accept`: `std` (`accept4` with an address buffer) or
    /// `without-address` (`accept(fd, NULL, NULL)`).
    fn start_accepting(
        dir: &TestDir,
        prefix: &'static str,
        body_via: &str,
        request_body_via: &str,
        body_size: usize,
        accept: &str,
    ) -> Self {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_bypass_server"));
        let port = free_port();
        let name = format!("bypass-server{}", prefix.replace('/', "-"));
        let log = dir.join(&format!("{name}-access.log"));
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string()])
            .args(["--body-via", body_via])
            .args(["--request-body-via", request_body_via])
            .args(["--body-size", &body_size.to_string()])
            .args(["--accept", accept])
            .arg("--log")
            .arg(&log);
        let mut guard = Guard::spawn(&name, &mut cmd, dir);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listening = tracer_e2e::wait_until(tracer_e2e::wait::START_TIMEOUT, || {
            guard.assert_running();
            tracer_e2e::net::accepts(addr).then_some(())
        });
        assert!(listening.is_some(), "{name} never listened on {addr}");
        Self {
            guard,
            port,
            log,
            service: exe_service_name(&bin),
            prefix,
            body_size,
        }
    }

    /// The requests it answered on this test's routes, per method, status
    /// and route.
    fn tally(&self) -> Counts {
        self.access_log().counts(&format!("{}/", self.prefix))
    }
}

impl Peer for BypassServer {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn service(&self) -> &str {
        &self.service
    }

    fn access_log(&self) -> AccessLog {
        AccessLog::read(&self.log)
    }
}

/// Runs the traffic against a server pair with bodies via `body_via` and
/// request bodies via `request_body_via`, then asserts the tracer's counts
/// equal the ground truth exactly.
fn check_counts_exact(body_via: &str, request_body_via: &str, client: Client) {
    check_counts(body_via, request_body_via, client, Source::Syscalls);
}

/// Which kernel source the tracer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Syscalls,
    /// The packet path alone, on loopback: it sees every byte on the wire
    /// whatever moved it, from both ends (both are local).
    Packets,
}

fn check_counts(body_via: &str, request_body_via: &str, client: Client, source: Source) {
    let test = format!(
        "bypass: bodies via {body_via}, request bodies via {request_body_via}, {client:?}, \
         {source:?}"
    );
    if !privileged(&test) {
        return;
    }
    let dir = TestDir::new(&format!(
        "bypass-{body_via}-{request_body_via}-{client:?}-{source:?}"
    ));
    let rename = format!("{}={CLIENT}", own_service_name());
    let mut args = vec!["--service-name", rename.as_str()];
    if source == Source::Packets {
        args.extend(["--source", "packets", "--interfaces", "lo"]);
    }
    let tracer = Tracer::start(&dir, &args);
    let servers = [("/small", SMALL_BODY), ("/large", LARGE_BODY)]
        .map(|(prefix, size)| BypassServer::start(&dir, prefix, body_via, request_body_via, size));
    let before = tracer.scrape();
    let trouble_before = PARSER_TROUBLE.map(|name| before.count(name, &[("protocol", "http1")]));

    let mut client_tallies = Vec::new();
    for server in &servers {
        let mut tally = Counts::new();
        for _ in 0..CONNECTIONS {
            match client {
                Client::OneThread => one_thread_connection(server, &mut tally),
                Client::SharedSocket => shared_socket_connection(server, &mut tally),
            }
        }
        client_tallies.push(tally);
    }
    for server in &servers {
        tracer.barrier(server);
    }

    let mut wants = Vec::new();
    for (server, client_tally) in servers.iter().zip(&client_tallies) {
        assert_eq!(
            server.tally(),
            *client_tally,
            "{} answered other requests than the client read (server stderr: {})",
            server.guard.name(),
            server.guard.stderr()
        );
        wants.extend(exact_wants(server, client_tally));
    }
    // Nothing invented: the service's total is this traffic and the barriers.
    let served: u64 = client_tallies.iter().flat_map(|t| t.values()).sum();
    wants.push(
        Want::metric(SERVER_COUNT)
            .label("service_name", servers[0].service())
            .is(served + servers.len() as u64),
    );
    for (name, count) in PARSER_TROUBLE.iter().zip(trouble_before) {
        wants.push(Want::metric(name).label("protocol", "http1").is(count));
    }
    tracer.expect(&wants);
}

/// The tracer's counts `server`'s traffic must have, server and client side:
/// per (method, status, route) of `tally`, per route whatever the status,
/// and (client side) per server port, its barrier included.
fn exact_wants(server: &BypassServer, tally: &Counts) -> Vec<Want> {
    let port = server.port.to_string();
    let mut wants = Vec::new();
    let mut per_route: BTreeMap<&str, u64> = BTreeMap::new();
    for ((method, status, route), &count) in tally {
        *per_route.entry(route).or_default() += count;
        wants.push(
            Want::server(server.service(), route)
                .method(method)
                .status(*status)
                .is(count),
        );
        // The packet path reports a flow from each local end too.
        wants.push(
            Want::client(CLIENT, route)
                .method(method)
                .status(*status)
                .label("server_port", &port)
                .is(count),
        );
    }
    for (route, count) in per_route {
        wants.push(Want::server(server.service(), route).is(count));
        wants.push(Want::client(CLIENT, route).is(count));
    }
    wants.push(
        Want::metric(CLIENT_COUNT)
            .label("service_name", CLIENT)
            .label("server_port", &port)
            .is(tally.values().sum::<u64>() + 1),
    );
    wants
}

/// The requests a connection sends, alternating: GET `<prefix>/fetch`, POST
/// `<prefix>/upload` with a body of the server's body size.
struct Requests {
    get: Vec<u8>,
    post: Vec<u8>,
    get_route: String,
    post_route: String,
    /// The body every response must carry.
    response_body: Vec<u8>,
}

impl Requests {
    fn for_server(server: &BypassServer) -> Self {
        let get_route = format!("{}/fetch", server.prefix);
        let post_route = format!("{}/upload", server.prefix);
        let get = format!("GET {get_route} HTTP/1.1\r\nHost: e2e\r\n\r\n").into_bytes();
        let mut post = format!(
            "POST {post_route} HTTP/1.1\r\nHost: e2e\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\n\r\n",
            server.body_size
        )
        .into_bytes();
        post.extend(tracer_e2e::noise(server.body_size, 0x5eed_b0d1));
        Self {
            get,
            post,
            get_route,
            post_route,
            // The server's body: see src/bin/bypass_server.rs.
            response_body: tracer_e2e::noise(server.body_size, server.body_size as u64),
        }
    }

    /// The `n`th request: (method, route, bytes).
    fn nth(&self, n: u64) -> (&'static str, &str, &[u8]) {
        if n.is_multiple_of(2) {
            ("GET", &self.get_route, &self.get)
        } else {
            ("POST", &self.post_route, &self.post)
        }
    }
}

/// Writes `bytes` with one `write`; a blocking socket takes all of it.
fn write_once(mut stream: &TcpStream, bytes: &[u8]) {
    let written = stream.write(bytes).expect("write a request");
    assert_eq!(written, bytes.len(), "a request took more than one write");
}

/// Reads one response completely, checks it and counts it for `route`.
fn read_and_tally(
    reader: &mut BufReader<&TcpStream>,
    requests: &Requests,
    method: &str,
    route: &str,
    tally: &mut Counts,
) {
    let response = read_response(reader, false)
        .unwrap_or_else(|e| panic!("response to {method} {route}: {e}"));
    assert_eq!(response.status, 200, "{method} {route}");
    assert!(
        response.body == requests.response_body,
        "{method} {route}: the body differs from the server's ({} bytes read)",
        response.body.len()
    );
    *tally
        .entry((method.to_string(), response.status, route.to_string()))
        .or_default() += 1;
}

/// One connection, one thread: each request, then its response.
fn one_thread_connection(server: &BypassServer, tally: &mut Counts) {
    let requests = Requests::for_server(server);
    let stream = connect(server.addr());
    let mut reader = BufReader::with_capacity(CAPTURE_BYTES, &stream);
    for n in 0..REQUESTS_PER_CONNECTION {
        let (method, route, bytes) = requests.nth(n);
        write_once(&stream, bytes);
        read_and_tally(&mut reader, &requests, method, route, tally);
    }
}

/// One connection, [`WRITER_THREADS`] writers and one reader. A writer claims
/// a request number, then writes the request and records its (method, route)
/// while holding the mutex, so the reader learns which request each
/// response answers in wire order.
fn shared_socket_connection(server: &BypassServer, tally: &mut Counts) {
    let requests = Requests::for_server(server);
    let stream = connect(server.addr());
    let claimed = AtomicU64::new(0);
    let (sent_tx, sent_rx) = mpsc::channel::<(&'static str, String)>();
    let wire = Mutex::new(sent_tx);
    std::thread::scope(|scope| {
        for _ in 0..WRITER_THREADS {
            scope.spawn(|| loop {
                let n = claimed.fetch_add(1, Ordering::Relaxed);
                if n >= REQUESTS_PER_CONNECTION {
                    return;
                }
                let (method, route, bytes) = requests.nth(n);
                let sent = wire.lock().expect("a writer panicked");
                write_once(&stream, bytes);
                sent.send((method, route.to_string()))
                    .expect("the reader is waiting");
            });
        }
        let mut reader = BufReader::with_capacity(CAPTURE_BYTES, &stream);
        for _ in 0..REQUESTS_PER_CONNECTION {
            let (method, route) = sent_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("no writer sent the next request");
            read_and_tally(&mut reader, &requests, method, &route, tally);
        }
    });
}

/// A server that passes no address buffer to `accept` (as libuv and
/// Node.js do): its connections still carry both ends, those its socket was
/// established with, so `watch --port` shows its side of every exchange
/// and names its peer. (Before, such a connection had no addresses: no
/// port filter matched it, and with `--source both` nothing covered its
/// flow when its client was not hooked.)
#[test]
fn a_server_accepting_without_an_address_buffer_is_named_by_its_ends() {
    if !privileged("a_server_accepting_without_an_address_buffer_is_named_by_its_ends") {
        return;
    }
    let dir = TestDir::new("bypass-accept-without-address");
    let server = BypassServer::start_accepting(
        &dir,
        "/small",
        "write",
        "read",
        SMALL_BODY,
        "without-address",
    );
    let port = server.port.to_string();
    let mut watch =
        tracer_e2e::tracer::spawn_watch(&dir, &["--source", "syscalls", "--port", &port]);
    // Ready once it prints: probe until the client's side of a probe shows
    // (the client's connect names the port either way).
    let ready = tracer_e2e::wait_until(tracer_e2e::wait::START_TIMEOUT, || {
        watch.assert_running();
        let _ = tracer_e2e::tracer::try_get(server.addr(), "/probe");
        tracer_e2e::tracer::printed_lines(&watch)
            .iter()
            .any(|l| l.contains(" client ") && l.contains(" /probe "))
            .then_some(())
    });
    assert!(ready.is_some(), "watch printed nothing");
    let mut tally = Counts::new();
    one_thread_connection(&server, &mut tally);
    assert_eq!(server.tally(), tally, "the server's log");
    let served: u64 = tally.values().sum();
    // The peer is the client's end, not the server's own.
    let own_end = format!(" server peer=127.0.0.1:{port} ");
    let server_side = || {
        tracer_e2e::tracer::printed_lines(&watch)
            .into_iter()
            .filter(|l| l.contains(" server peer=127.0.0.1:") && l.contains(" /small/"))
            .inspect(|l| assert!(!l.contains(&own_end), "{l}"))
            .count() as u64
    };
    let seen = tracer_e2e::wait_until(tracer_e2e::wait::METRICS_TIMEOUT, || {
        (server_side() >= served).then_some(())
    });
    assert!(
        seen.is_some(),
        "{} of {served} server lines: {:#?}",
        server_side(),
        tracer_e2e::tracer::printed_lines(&watch)
    );
    // Longer for a line too many.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server_side(), served);
}
