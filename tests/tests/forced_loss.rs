//! Every way of losing data, forced against real nginx and counted exactly:
//! each test drives one loss cause and asserts, on the tracer's own
//! counters, the change of every loss counter at once (the cause's counter
//! by the exact amount the test can derive, every other one unchanged; the
//! eviction test, which fills a ring on purpose, checks its own counters
//! only), beside the exchanges counted, against nginx's access log and what
//! this process (the client) did.
//!
//! - a full ring (`ringbuf_full`): the daemon is stopped while one
//!   keep-alive connection outruns a 512 KiB ring; each lost event is
//!   counted once in the kernel and its bytes once as a gap in the daemon;
//! - a full socket table (`conn_map_full`, `--max-connections 16`): the
//!   connections past it go untraced, each side counted, the others exact;
//! - a full daemon connection table (`tracer_connection_evictions_total`):
//!   connections whose CLOSE was lost in a full ring are evicted, counted,
//!   and no live one is;
//! - a full backlog of requests on one connection (64): the oldest are
//!   dropped and counted as unmatched;
//! - chunks longer than `--capture-bytes` (`truncated`), vectored writes of
//!   more than 64 segments (`iov_truncated`), payload the kernel side could
//!   not read (`read_failed`).
//!
//! The kernel's counters and the parsers' are per node, not per test: these
//! equalities hold on a machine where nothing else makes TCP traffic while
//! a test runs (as the rest of the suite assumes).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use tracer_e2e::net::{connect, get_request};
use tracer_e2e::wait::METRICS_TIMEOUT;
use tracer_e2e::{
    own_service_name, privileged, read_response, wait_until, Nginx, Peer, Scrape, TestDir, Tracer,
    Want,
};

/// Every loss counter the tracer exports, summed over protocols.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Losses {
    ringbuf_full: u64,
    conn_map_full: u64,
    truncated: u64,
    iov_truncated: u64,
    read_failed: u64,
    frames_lost: u64,
    capture_shed: u64,
    conn_evicted: u64,
    unknown_conn: u64,
    decode_error: u64,
    stream_overlap: u64,
    identity_pending: u64,
    resyncs: u64,
    unmatched_requests: u64,
    unmatched_responses: u64,
    gaps: u64,
    gap_bytes: u64,
    evictions: u64,
    late_events: u64,
}

impl Losses {
    fn read(tracer: &Tracer) -> Self {
        let s = tracer.scrape();
        let kernel = |cause| s.count("tracer_kernel_drops_total", &[("cause", cause)]);
        let user = |cause| s.count("tracer_user_drops_total", &[("cause", cause)]);
        let unmatched = |kind| s.count("tracer_unmatched_total", &[("kind", kind)]);
        Self {
            ringbuf_full: kernel("ringbuf_full"),
            conn_map_full: kernel("conn_map_full"),
            truncated: s.count("tracer_truncated_events_total", &[]),
            iov_truncated: kernel("iov_truncated"),
            read_failed: kernel("read_failed"),
            frames_lost: kernel("frames_lost"),
            capture_shed: kernel("capture_shed"),
            conn_evicted: user("conn_evicted"),
            unknown_conn: user("unknown_conn"),
            decode_error: user("decode_error"),
            stream_overlap: user("stream_overlap"),
            identity_pending: user("identity_pending"),
            resyncs: s.count("tracer_parser_resyncs_total", &[]),
            unmatched_requests: unmatched("request"),
            unmatched_responses: unmatched("response"),
            gaps: s.count("tracer_stream_gaps_total", &[]),
            gap_bytes: s.count("tracer_stream_gap_bytes_total", &[]),
            evictions: s.count("tracer_connection_evictions_total", &[]),
            late_events: s.count("tracer_late_events_total", &[]),
        }
    }

    /// What rose since `before` (counters never fall while the daemon runs).
    fn since(self, before: Self) -> Self {
        let d = |now: u64, then: u64| now.checked_sub(then).expect("a counter fell");
        Self {
            ringbuf_full: d(self.ringbuf_full, before.ringbuf_full),
            conn_map_full: d(self.conn_map_full, before.conn_map_full),
            truncated: d(self.truncated, before.truncated),
            iov_truncated: d(self.iov_truncated, before.iov_truncated),
            read_failed: d(self.read_failed, before.read_failed),
            frames_lost: d(self.frames_lost, before.frames_lost),
            capture_shed: d(self.capture_shed, before.capture_shed),
            conn_evicted: d(self.conn_evicted, before.conn_evicted),
            unknown_conn: d(self.unknown_conn, before.unknown_conn),
            decode_error: d(self.decode_error, before.decode_error),
            stream_overlap: d(self.stream_overlap, before.stream_overlap),
            identity_pending: d(self.identity_pending, before.identity_pending),
            resyncs: d(self.resyncs, before.resyncs),
            unmatched_requests: d(self.unmatched_requests, before.unmatched_requests),
            unmatched_responses: d(self.unmatched_responses, before.unmatched_responses),
            gaps: d(self.gaps, before.gaps),
            gap_bytes: d(self.gap_bytes, before.gap_bytes),
            evictions: d(self.evictions, before.evictions),
            late_events: d(self.late_events, before.late_events),
        }
    }
}

/// Waits until the loss counters rose by exactly `want` since `before`, then
/// asserts it on one last reading. The daemon publishes its counters after
/// each batch of events, so right after a barrier they may still lag.
fn expect_losses(tracer: &Tracer, before: Losses, want: Losses) {
    let _ = wait_until(METRICS_TIMEOUT, || {
        (Losses::read(tracer).since(before) == want).then_some(())
    });
    let got = Losses::read(tracer).since(before);
    assert_eq!(
        got,
        want,
        "loss counters rose by (left) instead of (right) (they are per node: other \
         processes' TCP traffic during the test counts too); tracer internals:\n{}",
        tracer.scrape().lines("tracer_", &[])
    );
}

/// Pins a thread (`tid`, 0 for the calling one) to one CPU: the kernel side
/// writes each event to its CPU's ring, so traffic pinned to one CPU fills
/// one ring, in order.
fn pin(tid: libc::pid_t, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity only read and write it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pin {tid} to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Lets the calling thread run on every CPU again when dropped.
struct Unpin;

impl Drop for Unpin {
    fn drop(&mut self) {
        // SAFETY: as in `pin`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for cpu in 0..libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// CPUs this test process may run on: the ring tests need two.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// nginx's one worker process (the master's only child).
fn nginx_worker(nginx: &Nginx) -> libc::pid_t {
    let master = nginx.pid();
    let children = format!("/proc/{master}/task/{master}/children");
    let pid = wait_until(METRICS_TIMEOUT, || {
        let text = std::fs::read_to_string(&children).ok()?;
        text.split_whitespace().next()?.parse().ok()
    });
    pid.unwrap_or_else(|| panic!("nginx master {master} has no worker"))
}

/// nginx's ends of connections it has not closed yet (established, or
/// closed by this process and not yet by nginx), from the kernel's TCP
/// tables: once nginx has closed a connection, its socket is out of the
/// kernel side's table too.
fn open_at(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|path| {
            let table = std::fs::read_to_string(path).unwrap_or_default();
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let local = f.get(1).and_then(|a| a.rsplit(':').next());
                    let local = local.and_then(|p| u16::from_str_radix(p, 16).ok());
                    // 01: ESTABLISHED, 08: CLOSE_WAIT.
                    local == Some(port) && matches!(f.get(3), Some(&("01" | "08")))
                })
                .count()
        })
        .sum()
}

/// Waits until nginx (on `port`) holds `n` connections open.
fn wait_open(port: u16, n: usize) {
    let done = wait_until(METRICS_TIMEOUT, || (open_at(port) == n).then_some(()));
    assert!(
        done.is_some(),
        "nginx holds {} connections open, not {n}",
        open_at(port)
    );
}

/// The daemon stopped (SIGSTOP) until `resume` or drop: its kernel side
/// goes on writing events, nobody reads the rings.
struct Stopped(libc::pid_t);

impl Stopped {
    fn new(pid: u32) -> Self {
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill(2) on the tracer, our child, which is running.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        // Group stop completes thread by thread: wait for all of them.
        let stopped = wait_until(METRICS_TIMEOUT, || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                .all(|stat| {
                    // The state follows the parenthesised command name.
                    let state = stat
                        .rsplit(')')
                        .next()
                        .and_then(|r| r.trim().chars().next());
                    matches!(state, Some('T' | 't'))
                })
                .then_some(())
        });
        assert!(stopped.is_some(), "the tracer did not stop");
        Self(pid)
    }

    fn resume(self) {}
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the tracer, which the test still holds.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Reads one response off `stream` with plain `read`s into a large buffer:
/// returns its bytes and the length of every `read`, each one event of the
/// kernel side.
fn read_raw(stream: &mut TcpStream) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut reads = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if let Some(end) = response_end(&bytes) {
            assert_eq!(end, bytes.len(), "more than one response arrived");
            return (bytes, reads);
        }
        let n = stream.read(&mut buf).expect("read a response");
        assert!(n > 0, "connection closed inside a response");
        reads.push(n);
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// Where the response at the start of `bytes` ends, once it is whole
/// (framed by Content-Length, as nginx frames every answer here).
fn response_end(bytes: &[u8]) -> Option<usize> {
    let head = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&bytes[..head]).to_ascii_lowercase();
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("nginx frames its answers by Content-Length");
    (bytes.len() >= head + length).then_some(head + length)
}

fn status_of(response: &[u8]) -> u16 {
    std::str::from_utf8(&response[..12])
        .ok()
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("a status line")
}

/// Waits until the daemon tracks exactly `slots` connections, as it must
/// while the kernel's socket table (`--max-connections`) is full, and
/// returns the scrapes that took: each one's connection was refused (this
/// process's side; the daemon's own is never traced).
fn scrapes_while_full(tracer: &Tracer, slots: u64) -> u64 {
    let mut scrapes = 0;
    let full = wait_until(METRICS_TIMEOUT, || {
        scrapes += 1;
        (tracer.scrape().count("tracer_connections", &[]) == slots).then_some(())
    });
    let tracked = tracer.scrape().count("tracer_connections", &[]);
    scrapes += 1;
    assert!(
        full.is_some() && tracked == slots,
        "the daemon tracks {tracked} connections while the kernel's table of {slots} is full"
    );
    scrapes
}

/// The `Want`s of connections that each made one exchange on its own route
/// and registered their sockets in order (connection i's client, then its
/// server) into a table that filled up: the first sockets were traced and
/// count their exchange once, none after. Returns them and how many
/// sockets were traced (read off `scrape`: the first not counted ends it).
fn traced_in_order(scrape: &Scrape, me: &str, routes: &[String]) -> (Vec<Want>, u64) {
    let sides: Vec<Want> = routes
        .iter()
        .flat_map(|route| {
            [
                Want::client(me, route).method("GET").status(200),
                Want::server("nginx", route).method("GET").status(200),
            ]
        })
        .collect();
    let traced = sides.iter().take_while(|w| w.got(scrape) == 1).count();
    let wants = sides
        .into_iter()
        .enumerate()
        .map(|(n, w)| w.is(u64::from(n < traced)))
        .collect();
    (wants, traced as u64)
}

/// Distinct route segments without digits (the tracer would template those).
fn letters(i: usize) -> String {
    let mut n = i;
    let mut s = String::new();
    loop {
        s.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}

// ---------------------------------------------------------------------------
// The kernel side.
// ---------------------------------------------------------------------------

/// Bytes of every request and every response on the ring test's
/// connection: equal, so that every event of it makes a ring record of the
/// same size (8 + 56 + 512) and, once one no longer fits, none of the later
/// ones do. At most 512 so that a ring more than half full does not shed
/// them (`capture_shed` cuts only longer chunks).
const RING_MESSAGE: usize = 512;

/// Exchanges on the connection while the daemon is stopped: 1,200 events
/// of 576 bytes, where a 512 KiB ring holds 910.
const STOPPED_EXCHANGES: u64 = 300;

/// Exchanges before the stop, counted in full.
const WARM: u64 = 3;

/// A full ring, with the daemon stopped (SIGSTOP) and one keep-alive
/// connection of this process to nginx pinned to one CPU, so that all of
/// its events go to one ring in order. Each exchange is four events of one
/// size: the request written here, read by nginx, the response written by
/// nginx, read here. Once the ring is full every later one is lost: the R
/// events that fit are a prefix, and R alone decides what the daemon can
/// count. With k = R / 4 and r = R % 4, the k exchanges before the first
/// loss are counted on both sides; nginx also counts exchange k+1 when it
/// wrote its response (r = 3); the request seen without its answer on
/// either side (r >= 1 here, r = 2 at nginx) is unmatched. Everything
/// after is lost, and the CLOSE that comes after the daemon resumes tells
/// it how many bytes went by: each of the four streams ends in one gap.
///
/// The test reads k and r off the tracer's exchange counts and asserts
/// that the kernel counted exactly the 4N - R events lost
/// (`ringbuf_full`), that the daemon counted exactly their bytes as gaps,
/// and that no other loss counter moved.
#[test]
fn full_ring_counts_every_lost_event_and_its_bytes() {
    if !privileged("full_ring_counts_every_lost_event_and_its_bytes") {
        return;
    }
    assert!(
        cpus() >= 2,
        "needs two CPUs: one ring to fill, one to resume on"
    );
    let dir = TestDir::new("loss-ring");
    // 1 MiB in all: on two CPUs, two rings of 512 KiB.
    let tracer = Tracer::start(&dir, &["--ring-buffer-mib", "1"]);
    // The answer's body is the query's `p`: its length sets the answer's.
    let nginx = Nginx::start(&dir, "        location = /ring { return 200 $arg_p; }\n");
    let worker = nginx_worker(&nginx);
    let me = own_service_name();

    // The response's head is fixed but for Content-Length's digits (Date
    // has a fixed width): learn it from a 3-digit body, then size both.
    let mut stream = connect(nginx.addr());
    let probe_body = 100;
    let probe = format!(
        "GET /ring?p={} HTTP/1.1\r\nHost: e2e\r\n\r\n",
        "a".repeat(probe_body)
    );
    stream.write_all(probe.as_bytes()).expect("write the probe");
    let (answer, _) = read_raw(&mut stream);
    let head = answer.len() - probe_body;
    let body = RING_MESSAGE - head;
    assert!((100..1000).contains(&body), "a 3-digit body: {body}");
    let fixed = format!(
        "GET /ring?p={} HTTP/1.1\r\nHost: e2e\r\nX-Pad: \r\n\r\n",
        "a".repeat(body)
    );
    let request = format!(
        "GET /ring?p={} HTTP/1.1\r\nHost: e2e\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(body),
        "p".repeat(RING_MESSAGE - fixed.len())
    );
    assert_eq!(request.len(), RING_MESSAGE);
    let exchange = |stream: &mut TcpStream| {
        stream
            .write_all(request.as_bytes())
            .expect("write a request");
        let (answer, reads) = read_raw(stream);
        assert_eq!(status_of(&answer), 200);
        // One read, one event of the same size as the others.
        assert_eq!(reads, [RING_MESSAGE], "the answer came in pieces");
    };
    for _ in 1..WARM {
        exchange(&mut stream);
    }
    tracer.barrier(&nginx);
    let before = Losses::read(&tracer);

    let unpin = Unpin;
    pin(0, 0);
    pin(worker, 0);
    let stopped = Stopped::new(tracer.pid());
    for _ in 0..STOPPED_EXCHANGES {
        exchange(&mut stream);
    }
    stopped.resume();
    // Everything from here on goes to the other ring, which has room.
    pin(0, 1);
    pin(worker, 1);
    drop(stream);
    // Twice: the daemon publishes its counters after each batch of events,
    // and the second barrier's batch comes after the first's.
    tracer.barrier(&nginx);
    tracer.barrier(&nginx);
    drop(unpin);

    let served = nginx.access_log().under("/ring").count() as u64;
    assert_eq!(served, WARM + STOPPED_EXCHANGES, "nginx's access log");
    let scrape = tracer.scrape();
    let ok = |want: Want| want.method("GET").status(200).got(&scrape);
    let client = ok(Want::client(&me, "/ring"));
    let server = ok(Want::server("nginx", "/ring"));
    // No exchange is reported with any other outcome (an error made up
    // from a lost answer, say).
    assert_eq!(Want::client(&me, "/ring").got(&scrape), client);
    assert_eq!(Want::server("nginx", "/ring").got(&scrape), server);
    let k = client - WARM;
    let unmatched =
        scrape.count("tracer_unmatched_total", &[("kind", "request")]) - before.unmatched_requests;
    // r from what it leaves: nginx one exchange ahead (3), or the requests
    // seen unanswered (1 here, or 1 here and 1 at nginx: 2).
    let r = match (server - client, unmatched) {
        (1, 1) => 3,
        (0, u @ 0..=2) => u,
        other => panic!(
            "(nginx's exchanges - this process's, unmatched requests) = {other:?}: no prefix \
             of the events leaves that (was other traffic lost in the ring too?);\n{}",
            scrape.lines("tracer_", &[])
        ),
    };
    assert!(
        k + 2 <= STOPPED_EXCHANGES,
        "the ring never filled: {k} of {STOPPED_EXCHANGES} exchanges went through whole"
    );
    let lost = 4 * STOPPED_EXCHANGES - (4 * k + r);
    eprintln!("full ring: {k} exchanges whole, {r} events of the next, {lost} events lost");
    expect_losses(
        &tracer,
        before,
        Losses {
            ringbuf_full: lost,
            // One hole at the end of each direction on each side, found
            // at close, each parsed as lost input.
            gaps: 4,
            gap_bytes: lost * RING_MESSAGE as u64,
            resyncs: 4,
            // The request seen without its answer: here (r >= 1), and at
            // nginx too (r = 2).
            unmatched_requests: [0, 1, 2, 1][r as usize],
            ..Losses::default()
        },
    );
}

/// Connections held open at once in the socket-table test.
const HELD: usize = 12;

/// `--max-connections 16`: the kernel's socket table holds 16 sockets, and
/// each connection of this process to nginx takes two (the client's at
/// `connect`, nginx's at `accept`). Connections opened one after the other
/// and held open fill it in that order, after whatever sockets of other
/// processes hold (none on a quiet machine: then the first 8 connections);
/// every later socket is refused, untraced and counted (`conn_map_full`).
/// Each connection has its own route, so the test sees exactly which side
/// of which connection was counted. While the table is full, the daemon's
/// own table (`tracer_connections`) holds exactly 16 too: nothing it
/// tracks was let go by the kernel, nothing the kernel traces is missing.
#[test]
fn full_socket_table_counts_each_untraced_connection() {
    if !privileged("full_socket_table_counts_each_untraced_connection") {
        return;
    }
    const SLOTS: u64 = 16;
    let dir = TestDir::new("loss-table");
    let tracer = Tracer::start(&dir, &["--max-connections", &SLOTS.to_string()]);
    let nginx = Nginx::start(&dir, "        location /full/ { return 200 \"ok\\n\"; }\n");
    let me = own_service_name();
    tracer.barrier(&nginx);
    wait_open(nginx.port(), 0);
    let before = Losses::read(&tracer);

    let routes: Vec<String> = (0..HELD).map(|i| format!("/full/{}", letters(i))).collect();
    let mut held = Vec::new();
    for route in &routes {
        let mut stream = connect(nginx.addr());
        stream
            .write_all(get_request(route).as_bytes())
            .expect("write a request");
        // nginx has accepted once it answers: the sides register in turn.
        let (answer, _) = read_raw(&mut stream);
        assert_eq!(status_of(&answer), 200, "{route}");
        held.push(stream);
    }
    let scrapes = scrapes_while_full(&tracer, SLOTS);
    drop(held);
    wait_open(nginx.port(), 0);
    tracer.barrier(&nginx);

    let log = nginx.access_log();
    for route in &routes {
        assert_eq!(log.under(route).count(), 1, "nginx served {route}");
    }
    let (wants, traced) = traced_in_order(&tracer.scrape(), &me, &routes);
    eprintln!("socket table: {traced} of this test's sockets traced, {scrapes} scrapes refused");
    tracer.expect(&wants);
    expect_losses(
        &tracer,
        before,
        Losses {
            conn_map_full: 2 * HELD as u64 - traced + scrapes,
            ..Losses::default()
        },
    );
}

/// Chunks longer than `--capture-bytes`: nginx writes each 3,000-byte
/// answer in one call, this process reads it in calls it counts itself;
/// every one longer than the limit is truncated and counted, the rest of
/// it skipped by Content-Length, and every exchange still counted.
#[test]
fn truncated_chunks_are_counted_and_exchanges_stay_exact() {
    if !privileged("truncated_chunks_are_counted_and_exchanges_stay_exact") {
        return;
    }
    const LIMIT: usize = 1024;
    const EXCHANGES: u64 = 20;
    let dir = TestDir::new("loss-truncated");
    let tracer = Tracer::start(&dir, &["--capture-bytes", &LIMIT.to_string()]);
    let nginx = Nginx::start(
        &dir,
        &format!(
            "        location = /long {{ return 200 \"{}\"; }}\n",
            "b".repeat(3000)
        ),
    );
    let me = own_service_name();
    tracer.barrier(&nginx);
    let before = Losses::read(&tracer);

    let mut stream = connect(nginx.addr());
    let mut long_reads = 0;
    for _ in 0..EXCHANGES {
        stream
            .write_all(get_request("/long").as_bytes())
            .expect("write a request");
        let (answer, reads) = read_raw(&mut stream);
        assert_eq!(status_of(&answer), 200);
        assert!(answer.len() > LIMIT);
        long_reads += reads.iter().filter(|&&n| n > LIMIT).count() as u64;
    }
    drop(stream);
    tracer.barrier(&nginx);

    assert_eq!(nginx.access_log().under("/long").count() as u64, EXCHANGES);
    tracer.expect(&[
        Want::client(&me, "/long").is(EXCHANGES),
        Want::client(&me, "/long")
            .method("GET")
            .status(200)
            .is(EXCHANGES),
        Want::server("nginx", "/long").is(EXCHANGES),
        Want::server("nginx", "/long")
            .method("GET")
            .status(200)
            .is(EXCHANGES),
    ]);
    expect_losses(
        &tracer,
        before,
        Losses {
            // nginx's write of each answer, and this process's long reads.
            truncated: EXCHANGES + long_reads,
            ..Losses::default()
        },
    );
}

/// A vectored write of more segments than the kernel side walks (64): each
/// request is written with one `writev` of 100 segments (the head, then
/// the body a byte per segment), so the capture stops at the 64th segment
/// although the limit would take more; each such write is counted
/// (`iov_truncated`) and the uncaptured rest of the body skipped.
#[test]
fn long_iovec_writes_are_counted_and_exchanges_stay_exact() {
    if !privileged("long_iovec_writes_are_counted_and_exchanges_stay_exact") {
        return;
    }
    const SEGMENTS: usize = 100;
    const EXCHANGES: u64 = 5;
    let dir = TestDir::new("loss-iovec");
    let tracer = Tracer::start(&dir, &[]);
    let nginx = Nginx::start(&dir, "        location = /iov { return 200 \"ok\\n\"; }\n");
    let me = own_service_name();
    tracer.barrier(&nginx);
    let before = Losses::read(&tracer);

    let mut stream = connect(nginx.addr());
    let head = format!(
        "POST /iov HTTP/1.1\r\nHost: e2e\r\nContent-Length: {}\r\n\r\n",
        SEGMENTS - 1
    );
    let body = [b'x'; SEGMENTS - 1];
    for _ in 0..EXCHANGES {
        let mut iov: Vec<libc::iovec> = vec![libc::iovec {
            iov_base: head.as_ptr().cast_mut().cast(),
            iov_len: head.len(),
        }];
        iov.extend(body.iter().map(|b| libc::iovec {
            iov_base: std::ptr::from_ref(b).cast_mut().cast(),
            iov_len: 1,
        }));
        // SAFETY: every segment points into `head` or `body`, alive and
        // unchanged for the call.
        let written = unsafe {
            libc::writev(
                stream.as_raw_fd(),
                iov.as_ptr(),
                libc::c_int::try_from(iov.len()).expect("segments fit"),
            )
        };
        assert_eq!(
            usize::try_from(written).ok(),
            Some(head.len() + body.len()),
            "writev: {}",
            std::io::Error::last_os_error()
        );
        let (answer, _) = read_raw(&mut stream);
        assert_eq!(status_of(&answer), 200);
    }
    drop(stream);
    tracer.barrier(&nginx);

    assert_eq!(nginx.access_log().under("/iov").count() as u64, EXCHANGES);
    tracer.expect(&[
        Want::client(&me, "/iov")
            .method("POST")
            .status(200)
            .is(EXCHANGES),
        Want::server("nginx", "/iov")
            .method("POST")
            .status(200)
            .is(EXCHANGES),
    ]);
    expect_losses(
        &tracer,
        before,
        Losses {
            iov_truncated: EXCHANGES,
            ..Losses::default()
        },
    );
}

/// Payload the kernel side cannot copy: this process discards some answers
/// unread (`recv` into no buffer with `MSG_TRUNC`, which TCP supports), so
/// the bytes moved but there was nothing to copy them from. Each such read
/// is counted (`read_failed`); the answer is lost on this side, which the
/// parser counts (a resync, and its request unmatched); nginx's side and
/// the other exchanges are exact.
#[test]
fn unreadable_payload_is_counted() {
    if !privileged("unreadable_payload_is_counted") {
        return;
    }
    const EXCHANGES: u64 = 8;
    let dir = TestDir::new("loss-read-failed");
    let tracer = Tracer::start(&dir, &[]);
    let nginx = Nginx::start(&dir, "        location = /rf { return 200 \"ok\\n\"; }\n");
    let me = own_service_name();
    tracer.barrier(&nginx);
    let before = Losses::read(&tracer);

    let mut stream = connect(nginx.addr());
    let mut answer_len = 0;
    let mut discarded = 0;
    for i in 0..EXCHANGES {
        stream
            .write_all(get_request("/rf").as_bytes())
            .expect("write a request");
        // Every answer has the same length (Date has a fixed width): read
        // the first, then discard every other one, the last included.
        if i % 2 == 0 {
            let (answer, _) = read_raw(&mut stream);
            assert_eq!(status_of(&answer), 200);
            answer_len = answer.len();
        } else {
            // SAFETY: recv with no buffer: MSG_TRUNC makes TCP drop the
            // bytes instead of copying them.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    std::ptr::null_mut(),
                    answer_len,
                    libc::MSG_TRUNC | libc::MSG_WAITALL,
                )
            };
            assert_eq!(
                usize::try_from(n).ok(),
                Some(answer_len),
                "recv(MSG_TRUNC): {}",
                std::io::Error::last_os_error()
            );
            discarded += 1;
        }
    }
    drop(stream);
    tracer.barrier(&nginx);

    assert_eq!(nginx.access_log().under("/rf").count() as u64, EXCHANGES);
    tracer.expect(&[
        Want::client(&me, "/rf").is(EXCHANGES - discarded),
        Want::client(&me, "/rf")
            .method("GET")
            .status(200)
            .is(EXCHANGES - discarded),
        Want::server("nginx", "/rf")
            .method("GET")
            .status(200)
            .is(EXCHANGES),
    ]);
    expect_losses(
        &tracer,
        before,
        Losses {
            read_failed: discarded,
            resyncs: discarded,
            unmatched_requests: discarded,
            ..Losses::default()
        },
    );
}

// ---------------------------------------------------------------------------
// The daemon's tables.
// ---------------------------------------------------------------------------

/// Requests a connection's parser keeps waiting for their answers (64).
const BACKLOG: u64 = 64;

/// A full backlog: this process writes 80 requests in one `write` and only
/// then reads the answers, and nginx reads them in one `recv` (its header
/// buffer raised to 8 KiB) before it answers the first. Each side of the
/// connection sees them all before the first answer: past 64 the oldest is
/// dropped and counted (unmatched), and so are the answers left over once
/// the backlog is empty. The 64 others are counted on each side.
#[test]
fn full_request_backlog_drops_the_oldest_and_counts_them() {
    if !privileged("full_request_backlog_drops_the_oldest_and_counts_them") {
        return;
    }
    const PIPELINED: u64 = 80;
    let dir = TestDir::new("loss-backlog");
    // nginx answers a pipeline in writes of many answers at once, and this
    // process reads them 8 KiB at a time: the largest capture keeps every
    // head whole, so that the backlog is the only loss.
    let tracer = Tracer::start(&dir, &["--capture-bytes", "16384"]);
    let nginx = Nginx::start(
        &dir,
        "        client_header_buffer_size 8k;\n        \
         location = /deep { return 200 \"ok\\n\"; }\n",
    );
    let me = own_service_name();
    tracer.barrier(&nginx);
    let before = Losses::read(&tracer);

    let mut stream = connect(nginx.addr());
    let burst = get_request("/deep").repeat(PIPELINED as usize);
    // Within the capture limit: the kernel side copies the whole burst.
    assert!(burst.len() <= 16384);
    stream.write_all(burst.as_bytes()).expect("write the burst");
    let mut reader = std::io::BufReader::new(stream);
    for i in 0..PIPELINED {
        let response = read_response(&mut reader, false)
            .unwrap_or_else(|e| panic!("response {i} of the pipeline: {e}"));
        assert_eq!(response.status, 200, "response {i}");
    }
    drop(reader);
    tracer.barrier(&nginx);

    assert_eq!(nginx.access_log().under("/deep").count() as u64, PIPELINED);
    let dropped = PIPELINED - BACKLOG;
    tracer.expect(&[
        Want::client(&me, "/deep").is(BACKLOG),
        Want::client(&me, "/deep")
            .method("GET")
            .status(200)
            .is(BACKLOG),
        Want::server("nginx", "/deep").is(BACKLOG),
        Want::server("nginx", "/deep")
            .method("GET")
            .status(200)
            .is(BACKLOG),
    ]);
    // On each of the two sides.
    expect_losses(
        &tracer,
        before,
        Losses {
            unmatched_requests: 2 * dropped,
            unmatched_responses: 2 * dropped,
            ..Losses::default()
        },
    );
}

/// Connections left behind in the full-table test: their CLOSE is lost.
const STALE: usize = 6;

/// Connections opened after them, 16 sockets: the kernel's table full.
const LIVE: usize = 8;

/// A full daemon connection table (`--max-connections 16`, the kernel's
/// and the daemon's). The daemon can hold a connection the kernel has let
/// go only when its CLOSE was lost: the test makes 6 connections (12
/// sockets), stops the daemon, fills the ring past the last byte a CLOSE
/// needs, closes them (their CLOSEs lost), and resumes it. Then 8 new
/// connections fill the kernel's table (16): the daemon, holding the 12
/// stale ones, evicts one per new socket past 16, the least recently
/// active first: exactly the 12 stale ones (`tracer_connection_evictions_total`
/// and `conn_evicted`), and every live exchange is counted on both sides.
#[test]
fn full_connection_table_evicts_only_connections_that_are_gone() {
    if !privileged("full_connection_table_evicts_only_connections_that_are_gone") {
        return;
    }
    assert!(
        cpus() >= 2,
        "needs two CPUs: one ring to fill, one to resume on"
    );
    let dir = TestDir::new("loss-evict");
    let tracer = Tracer::start(&dir, &["--max-connections", "16", "--ring-buffer-mib", "1"]);
    let nginx = Nginx::start(
        &dir,
        "        location /stale/ { return 200 \"ok\\n\"; }\n        \
         location /live/ { return 200 \"ok\\n\"; }\n        \
         location = /fill { return 200 $arg_p; }\n",
    );
    let worker = nginx_worker(&nginx);
    let me = own_service_name();
    let port = nginx.port();

    let exchange = |stream: &mut TcpStream, request: &str| {
        stream
            .write_all(request.as_bytes())
            .expect("write a request");
        let (answer, _) = read_raw(stream);
        assert_eq!(status_of(&answer), 200, "{request}");
    };
    let unpin = Unpin;
    pin(0, 0);
    pin(worker, 0);
    let stale: Vec<TcpStream> = (0..STALE)
        .map(|i| {
            let mut stream = connect(nginx.addr());
            exchange(&mut stream, &get_request(&format!("/stale/{}", letters(i))));
            stream
        })
        .collect();
    // The filler: a 7th connection (14 sockets of 16, so the barrier's two
    // still fit).
    let mut filler = connect(nginx.addr());
    let fill = get_request(&format!("/fill?p={}", "f".repeat(400)));
    exchange(&mut filler, &fill);
    tracer.barrier(&nginx);
    let before = Losses::read(&tracer);
    wait_open(port, STALE + 1);

    let stopped = Stopped::new(tracer.pid());
    // 1,600 events of about 600 bytes in a 512 KiB ring: full. Then bytes
    // one at a time (72-byte events, nginx reading them as they come)
    // until less room is left than one: a CLOSE needs 120.
    for _ in 0..400 {
        exchange(&mut filler, &fill);
    }
    for byte in b"GET /fill-".iter() {
        filler.write_all(&[*byte]).expect("write a byte");
    }
    drop(stale);
    wait_open(port, 1);
    stopped.resume();
    pin(0, 1);
    pin(worker, 1);
    drop(filler);
    wait_open(port, 0);

    let routes: Vec<String> = (0..LIVE).map(|i| format!("/live/{}", letters(i))).collect();
    let live: Vec<TcpStream> = routes
        .iter()
        .map(|route| {
            let mut stream = connect(nginx.addr());
            exchange(&mut stream, &get_request(route));
            stream
        })
        .collect();
    let scrapes = scrapes_while_full(&tracer, 16);
    drop(live);
    wait_open(port, 0);
    drop(unpin);
    tracer.barrier(&nginx);

    let log = nginx.access_log();
    for route in &routes {
        assert_eq!(log.under(route).count(), 1, "nginx served {route}");
    }
    // All 16 sockets on a quiet machine; fewer if other processes' held
    // slots of the kernel's table (their connections then count among the
    // least recently active too).
    let (wants, traced) = traced_in_order(&tracer.scrape(), &me, &routes);
    tracer.expect(&wants);
    let got = Losses::read(&tracer).since(before);
    let stale_sockets = 2 * STALE as u64;
    assert_eq!(
        (got.evictions, got.conn_evicted, got.conn_map_full),
        (
            stale_sockets,
            stale_sockets,
            2 * LIVE as u64 - traced + scrapes
        ),
        "(evictions, conn_evicted, conn_map_full): the stale connections, and no live one; \
         tracer internals:\n{}",
        tracer.scrape().lines("tracer_", &[])
    );
}
