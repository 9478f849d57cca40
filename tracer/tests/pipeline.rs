//! Black-box tests of the user-space pipeline (`conntrack::Pipeline`).
//!
//! Every test builds ring-buffer records byte for byte as the kernel side
//! writes them (the `repr(C)` layouts of `tracer-common`, serialized field by
//! field in native byte order, so a layout change breaks these tests loudly),
//! feeds them to `Pipeline::handle`, and looks at what came out: the records
//! a recording `Sink` received, the pipeline's counters, and the calls a fake
//! `KernelSockets` saw.
//!
//! Several tests here (process exit, repeated OPEN, known ports, adopted
//! names) were written against defects found in `conntrack.rs` and guard
//! their fixes.

use std::{
    collections::HashMap,
    mem::size_of,
    sync::{Arc, Mutex},
};

use tracer::{
    metadata::{procfs::ExistingConn, Identities},
    pipeline::conntrack::{FlowAt, KernelSockets, Pipeline},
    pipeline::records::{Record, Sink},
    protocols::{Failure, Protocol, Side},
    source::events::{Event, Opened, Source},
    source::packets::{FixedOwners, Flows},
};
/// Index of HTTP/1's counters in `Counters::parser`.
const HTTP1: usize = Protocol::Http1 as usize;

use tracer_common::{
    conn_key, direction, kind, role, ConnEvent, ConnInfo, DataEvent, EventHeader, FlowKey,
    SockAddr, Tuple, AF_INET, COMM_LEN, PACKET_CONN_ID_BITS, USER_CONN_ID_BIT,
};

// ---------------------------------------------------------------------------
// Record builders: the bytes the kernel puts in the ring buffer.
// ---------------------------------------------------------------------------

/// A pid above any possible `pid_max` (at most 2^22): /proc/PID/exe never
/// exists, so the service name falls back to the comm of the OPEN event.
const DEAD: u32 = 4_000_000_000;

const IN: u8 = direction::INGRESS;
const OUT: u8 = direction::EGRESS;

fn put_header(out: &mut Vec<u8>, event_kind: u8, tgid: u32, conn_id: u64, ts: u64) {
    out.push(event_kind);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&tgid.to_ne_bytes());
    out.extend_from_slice(&conn_id.to_ne_bytes());
    out.extend_from_slice(&ts.to_ne_bytes());
    assert_eq!(out.len(), size_of::<EventHeader>());
}

fn put_addr(out: &mut Vec<u8>, addr: &SockAddr) {
    out.extend_from_slice(&addr.addr);
    out.extend_from_slice(&addr.port.to_ne_bytes());
    out.extend_from_slice(&addr.family.to_ne_bytes());
}

/// `ConnEvent` of the given kind (OPEN or CLOSE).
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per field of the kernel record"
)]
fn conn_event(
    event_kind: u8,
    conn_id: u64,
    tgid: u32,
    fd: i32,
    conn_role: u8,
    tuple: &Tuple,
    ts: u64,
    comm: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_of::<ConnEvent>());
    put_header(&mut out, event_kind, tgid, conn_id, ts);
    put_addr(&mut out, &tuple.local);
    put_addr(&mut out, &tuple.remote);
    out.extend_from_slice(&fd.to_ne_bytes());
    out.extend_from_slice(&tgid.to_ne_bytes()); // pid: the leader's thread
    out.push(conn_role);
    out.extend_from_slice(&[0; 7]);
    let mut name = [0u8; COMM_LEN];
    let bytes = comm.as_bytes();
    let n = bytes.len().min(COMM_LEN - 1);
    name[..n].copy_from_slice(&bytes[..n]);
    out.extend_from_slice(&name);
    out.extend_from_slice(&0u64.to_ne_bytes());
    out.extend_from_slice(&0u64.to_ne_bytes());
    assert_eq!(out.len(), size_of::<ConnEvent>());
    out
}

/// A CLOSE carrying the kernel's byte counts per direction (ingress,
/// egress), as the kernel side sends it.
fn close_after(
    conn_id: u64,
    tgid: u32,
    fd: i32,
    tuple: &Tuple,
    ts: u64,
    bytes: [u64; 2],
) -> Vec<u8> {
    let mut out = close(conn_id, tgid, fd, tuple, ts);
    let at = size_of::<ConnEvent>() - 16;
    out[at..at + 8].copy_from_slice(&bytes[0].to_ne_bytes());
    out[at + 8..].copy_from_slice(&bytes[1].to_ne_bytes());
    out
}

fn open(
    conn_id: u64,
    tgid: u32,
    fd: i32,
    conn_role: u8,
    tuple: &Tuple,
    ts: u64,
    comm: &str,
) -> Vec<u8> {
    conn_event(kind::OPEN, conn_id, tgid, fd, conn_role, tuple, ts, comm)
}

fn close(conn_id: u64, tgid: u32, fd: i32, tuple: &Tuple, ts: u64) -> Vec<u8> {
    conn_event(kind::CLOSE, conn_id, tgid, fd, role::UNKNOWN, tuple, ts, "")
}

/// `DataEvent` followed by the captured bytes; `orig_len` is what the
/// syscall moved (>= `payload.len()` when the capture was truncated).
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per field of the kernel record"
)]
fn data(
    conn_id: u64,
    tgid: u32,
    fd: i32,
    dir: u8,
    pos: u64,
    ts: u64,
    payload: &[u8],
    orig_len: u32,
) -> Vec<u8> {
    data_raw(
        conn_id,
        tgid,
        fd,
        dir,
        pos,
        ts,
        payload,
        orig_len,
        payload.len() as u32,
    )
}

/// Like `data`, with `cap_len` given separately (to build corrupt records).
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per field of the kernel record"
)]
fn data_raw(
    conn_id: u64,
    tgid: u32,
    fd: i32,
    dir: u8,
    pos: u64,
    ts: u64,
    payload: &[u8],
    orig_len: u32,
    cap_len: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_of::<DataEvent>() + payload.len());
    put_header(&mut out, kind::DATA, tgid, conn_id, ts);
    out.extend_from_slice(&pos.to_ne_bytes());
    out.extend_from_slice(&tgid.to_ne_bytes()); // pid
    out.extend_from_slice(&fd.to_ne_bytes());
    out.extend_from_slice(&orig_len.to_ne_bytes());
    out.extend_from_slice(&cap_len.to_ne_bytes());
    out.push(dir);
    out.extend_from_slice(&[0; 7]);
    assert_eq!(out.len(), size_of::<DataEvent>());
    out.extend_from_slice(payload);
    out
}

fn proc_exit(tgid: u32, ts: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_of::<EventHeader>());
    put_header(&mut out, kind::PROC_EXIT, tgid, 0, ts);
    out
}

fn v4(a: [u8; 4], port: u16) -> SockAddr {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&a);
    SockAddr {
        addr,
        port,
        family: AF_INET,
    }
}

/// local 10.0.0.1:`local_port`, remote 10.0.0.2:`remote_port`.
fn tuple(local_port: u16, remote_port: u16) -> Tuple {
    Tuple {
        local: v4([10, 0, 0, 1], local_port),
        remote: v4([10, 0, 0, 2], remote_port),
    }
}

// ---------------------------------------------------------------------------
// Sink and fake kernel.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Recorded(Vec<Record>);

impl Sink for Recorded {
    fn record(&mut self, record: &Record) {
        self.0.push(record.clone());
    }
}

/// What the fake kernel saw and what it answers.
#[derive(Default)]
struct KernelState {
    /// The socket table.
    table: HashMap<u64, ConnInfo>,
    /// Answer of `adopt` (when the key is not already in the table).
    adopt_ok: bool,
    forgets: Vec<u64>,
    adopts: Vec<(u64, ConnInfo)>,
    lookups: Vec<u64>,
    /// What the pipeline told the kernel to cover (true) or uncover.
    /// `narrow`ed (true) and `cover`ed (false) flows.
    covers: Vec<(FlowAt, bool)>,
}

#[derive(Clone, Default)]
struct FakeKernel(Arc<Mutex<KernelState>>);

impl KernelSockets for FakeKernel {
    fn forget(&mut self, key: u64, conn_id: u64) {
        let mut k = self.0.lock().unwrap();
        k.forgets.push(key);
        if k.table
            .get(&key)
            .is_some_and(|info| info.conn_id == conn_id)
        {
            k.table.remove(&key);
        }
    }

    fn adopt(&mut self, key: u64, info: &ConnInfo) -> bool {
        let mut k = self.0.lock().unwrap();
        k.adopts.push((key, *info));
        if !k.adopt_ok || k.table.contains_key(&key) {
            return false;
        }
        k.table.insert(key, *info);
        true
    }

    fn lookup(&self, key: u64) -> Option<ConnInfo> {
        let mut k = self.0.lock().unwrap();
        k.lookups.push(key);
        k.table.get(&key).copied()
    }

    fn narrow(&mut self, flow: &FlowAt) {
        self.0.lock().unwrap().covers.push((*flow, true));
    }

    fn cover(&mut self, flow: &FlowAt) {
        self.0.lock().unwrap().covers.push((*flow, false));
    }
}

impl FakeKernel {
    fn state(&self) -> std::sync::MutexGuard<'_, KernelState> {
        self.0.lock().unwrap()
    }
}

// ---------------------------------------------------------------------------
// Harness: a pipeline, its fake kernel, and per-connection positions.
// ---------------------------------------------------------------------------

struct Conn {
    id: u64,
    tgid: u32,
    fd: i32,
    tuple: Tuple,
}

struct Harness {
    p: Pipeline<Recorded>,
    kernel: FakeKernel,
    /// Next byte position per (conn_id, direction).
    pos: HashMap<(u64, u8), u64>,
}

impl Harness {
    fn new() -> Self {
        Self::with(64, HashMap::new())
    }

    fn with(capacity: usize, overrides: HashMap<String, String>) -> Self {
        let kernel = FakeKernel::default();
        let p = Pipeline::new(
            capacity,
            Identities::inline(overrides),
            Some(Box::new(kernel.clone())),
            Recorded::default(),
        );
        Self {
            p,
            kernel,
            pos: HashMap::new(),
        }
    }

    /// With the packet path running too (`--source both`).
    fn with_packet_path() -> Self {
        let mut h = Self::new();
        h.p =
            h.p.with_packets(Flows::new(64, Box::new(FixedOwners::default())));
        h
    }

    fn without_kernel() -> Self {
        let p = Pipeline::new(
            64,
            Identities::inline(HashMap::new()),
            None,
            Recorded::default(),
        );
        Self {
            p,
            kernel: FakeKernel::default(),
            pos: HashMap::new(),
        }
    }

    fn open(&mut self, c: &Conn, conn_role: u8, ts: u64, comm: &str) {
        self.p
            .handle(&open(c.id, c.tgid, c.fd, conn_role, &c.tuple, ts, comm));
    }

    fn server(&mut self, id: u64, tgid: u32, fd: i32, local_port: u16, ts: u64) -> Conn {
        let c = Conn {
            id,
            tgid,
            fd,
            tuple: tuple(local_port, 40000 + fd as u16),
        };
        self.open(&c, role::SERVER, ts, "shopd");
        c
    }

    fn client(&mut self, id: u64, tgid: u32, fd: i32, ts: u64) -> Conn {
        let c = Conn {
            id,
            tgid,
            fd,
            tuple: tuple(40000 + fd as u16, 80),
        };
        self.open(&c, role::CLIENT, ts, "curl");
        c
    }

    /// A fully captured chunk at the direction's next position.
    fn send(&mut self, c: &Conn, dir: u8, ts: u64, bytes: &[u8]) {
        self.send_truncated(c, dir, ts, bytes, bytes.len());
    }

    /// A chunk of which only the first `captured` bytes were copied.
    fn send_truncated(&mut self, c: &Conn, dir: u8, ts: u64, bytes: &[u8], captured: usize) {
        let pos = self.pos.entry((c.id, dir)).or_insert(0);
        let at = *pos;
        *pos += bytes.len() as u64;
        self.p.handle(&data(
            c.id,
            c.tgid,
            c.fd,
            dir,
            at,
            ts,
            &bytes[..captured],
            bytes.len() as u32,
        ));
    }

    /// The chunk passed through the socket but its event was lost.
    fn lose(&mut self, c: &Conn, dir: u8, len: u64) {
        *self.pos.entry((c.id, dir)).or_insert(0) += len;
    }

    fn close(&mut self, c: &Conn, ts: u64) {
        self.p.handle(&close(c.id, c.tgid, c.fd, &c.tuple, ts));
    }

    /// A CLOSE with the kernel's counts: every byte sent or lost so far.
    fn close_counted(&mut self, c: &Conn, ts: u64) {
        let moved = |dir| self.pos.get(&(c.id, dir)).copied().unwrap_or(0);
        let bytes = [moved(IN), moved(OUT)];
        self.p
            .handle(&close_after(c.id, c.tgid, c.fd, &c.tuple, ts, bytes));
    }

    fn records(&self) -> &[Record] {
        &self.p.sink.0
    }

    /// (method, path, status) of every record, in order.
    fn summary(&self) -> Vec<(String, String, u16)> {
        self.records()
            .iter()
            .map(|r| {
                (
                    r.exchange.http().unwrap().method.clone(),
                    r.exchange.http().unwrap().path.clone(),
                    r.exchange.http().unwrap().status,
                )
            })
            .collect()
    }
}

fn ex(method: &str, path: &str, status: u16) -> (String, String, u16) {
    (method.to_owned(), path.to_owned(), status)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n").into_bytes()
}

fn ok(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Name this test binary's executable has in /proc/self/exe.
fn own_exe_name() -> String {
    std::fs::read_link("/proc/self/exe")
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(" (deleted)")
        .to_owned()
}

// ---------------------------------------------------------------------------
// Exchanges on healthy connections.
// ---------------------------------------------------------------------------

#[test]
fn server_exchange_becomes_one_record() {
    let mut overrides = HashMap::new();
    overrides.insert(own_exe_name(), "checkout".to_owned());
    let mut h = Harness::with(64, overrides);
    let me = std::process::id();
    // A live tgid: the name comes from /proc/<tgid>/exe, then the override;
    // the comm of the OPEN event ("shopd") is not used.
    let c = h.server(1, me, 5, 8080, 1_000);
    h.send(
        &c,
        IN,
        2_000,
        b"GET /api/items?id=3&x=y#frag HTTP/1.1\r\nHost: shop\r\n\r\n",
    );
    assert!(h.records().is_empty(), "no response yet");
    h.send(&c, OUT, 3_000, &ok(200, "ok"));

    assert_eq!(h.records().len(), 1);
    let r = &h.records()[0];
    assert_eq!(r.side, Side::Server);
    assert_eq!(&*r.identity.service_name, "checkout");
    assert_eq!(r.tgid, me);
    assert_eq!(r.local, c.tuple.local);
    assert_eq!(r.remote, c.tuple.remote);
    assert_eq!(r.exchange.http().unwrap().method, "GET");
    assert_eq!(r.exchange.http().unwrap().path, "/api/items");
    assert_eq!(r.exchange.http().unwrap().status, 200);
    assert_eq!(r.exchange.start_ns, 2_000);
    assert_eq!(r.exchange.end_ns, 3_000);
    assert_eq!(h.p.connections(), 1);
    let counters = h.p.counters;
    assert_eq!(counters.open_events, 1);
    assert_eq!(counters.data_events, 2);
    assert_eq!(counters.decode_errors, 0);
    assert_eq!(counters.unknown_conn, 0);
    assert_eq!(counters.parser[HTTP1], Default::default());
    assert!(h.kernel.state().forgets.is_empty());
}

#[test]
fn live_process_without_override_is_named_after_its_executable() {
    let mut h = Harness::new();
    let c = h.server(1, std::process::id(), 5, 8080, 1_000);
    h.send(&c, IN, 2_000, &get("/"));
    h.send(&c, OUT, 3_000, &ok(204, ""));
    assert_eq!(h.records().len(), 1);
    assert_eq!(&*h.records()[0].identity.service_name, own_exe_name());
}

#[test]
fn dead_process_is_named_after_the_comm_of_its_open_event() {
    let mut overrides = HashMap::new();
    overrides.insert("shopd".to_owned(), "shop".to_owned());
    let mut h = Harness::with(64, overrides);
    let a = h.server(1, DEAD, 5, 8080, 1_000);
    h.send(&a, IN, 2_000, &get("/a"));
    h.send(&a, OUT, 3_000, &ok(200, ""));
    // Another dead process without an override keeps its comm.
    let b = Conn {
        id: 2,
        tgid: DEAD + 1,
        fd: 5,
        tuple: tuple(9090, 1234),
    };
    h.open(&b, role::SERVER, 1_000, "inventory-servi");
    h.send(&b, IN, 2_000, &get("/b"));
    h.send(&b, OUT, 3_000, &ok(200, ""));
    // An empty comm becomes "unknown".
    let e = Conn {
        id: 3,
        tgid: DEAD + 2,
        fd: 5,
        tuple: tuple(9091, 1234),
    };
    h.open(&e, role::SERVER, 1_000, "");
    h.send(&e, IN, 2_000, &get("/e"));
    h.send(&e, OUT, 3_000, &ok(200, ""));

    let names: Vec<&str> = h
        .records()
        .iter()
        .map(|r| &*r.identity.service_name)
        .collect();
    assert_eq!(names, ["shop", "inventory-servi", "unknown"]);
}

#[test]
fn client_exchange_has_requests_egress() {
    let mut h = Harness::new();
    let c = h.client(7, DEAD, 9, 1_000);
    h.send(
        &c,
        OUT,
        2_000,
        b"POST /v1/orders?dry=1 HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\n\r\n{}{}",
    );
    h.send(&c, IN, 5_000, &ok(201, "created"));
    assert_eq!(h.summary(), [ex("POST", "/v1/orders", 201)]);
    let r = &h.records()[0];
    assert_eq!(r.side, Side::Client);
    assert_eq!(&*r.identity.service_name, "curl");
    assert_eq!(r.local.port, c.tuple.local.port);
    assert_eq!(r.remote.port, 80);
    assert_eq!((r.exchange.start_ns, r.exchange.end_ns), (2_000, 5_000));
    assert_eq!(h.p.counters.parser[HTTP1], Default::default());
}

#[test]
fn client_role_reads_are_responses_not_requests() {
    // The same bytes with the roles swapped: a CLIENT that *reads* a request
    // is not speaking HTTP as a client (a server never speaks first), so
    // nothing is recorded.
    let mut h = Harness::new();
    let c = h.client(7, DEAD, 9, 1_000);
    h.send(&c, IN, 2_000, &get("/x"));
    h.send(&c, OUT, 3_000, &ok(200, ""));
    assert!(h.records().is_empty());
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, 0);
}

#[test]
fn keep_alive_three_exchanges_on_one_connection() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    for (i, path) in ["/one", "/two", "/three"].iter().enumerate() {
        let t = 1_000 * (i as u64 + 1);
        h.send(&c, IN, t, &get(path));
        h.send(&c, OUT, t + 500, &ok(200 + i as u16, "body"));
    }
    assert_eq!(
        h.summary(),
        [
            ex("GET", "/one", 200),
            ex("GET", "/two", 201),
            ex("GET", "/three", 202)
        ]
    );
    let times: Vec<(u64, u64)> = h
        .records()
        .iter()
        .map(|r| (r.exchange.start_ns, r.exchange.end_ns))
        .collect();
    assert_eq!(times, [(1_000, 1_500), (2_000, 2_500), (3_000, 3_500)]);
    assert_eq!(h.p.counters.parser[HTTP1], Default::default());
    assert_eq!(h.p.connections(), 1);
}

#[test]
fn pipelined_requests_in_one_chunk() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    let mut reqs = get("/a");
    reqs.extend_from_slice(b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz");
    reqs.extend_from_slice(&get("/c?q"));
    h.send(&c, IN, 1_000, &reqs);
    let mut resps = ok(200, "A");
    resps.extend_from_slice(&ok(201, "BB"));
    h.send(&c, OUT, 2_000, &resps);
    h.send(&c, OUT, 3_000, &ok(404, "no"));
    assert_eq!(
        h.summary(),
        [
            ex("GET", "/a", 200),
            ex("POST", "/b", 201),
            ex("GET", "/c", 404)
        ]
    );
    let ends: Vec<u64> = h.records().iter().map(|r| r.exchange.end_ns).collect();
    assert_eq!(ends, [2_000, 2_000, 3_000]);
    assert!(h.records().iter().all(|r| r.exchange.start_ns == 1_000));
    assert_eq!(h.p.counters.parser[HTTP1], Default::default());
}

#[test]
fn headers_split_across_many_chunks() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    let req = get("/split");
    for (i, piece) in req.chunks(3).enumerate() {
        h.send(&c, IN, 1_000 + i as u64, piece);
    }
    let resp = ok(200, "hello");
    for (i, piece) in resp.chunks(4).enumerate() {
        h.send(&c, OUT, 2_000 + i as u64, piece);
    }
    assert_eq!(h.summary(), [ex("GET", "/split", 200)]);
    let r = &h.records()[0];
    assert_eq!(r.exchange.start_ns, 1_000);
    assert_eq!(
        r.exchange.end_ns,
        2_000 + (resp.len() as u64).div_ceil(4) - 1
    );
}

// ---------------------------------------------------------------------------
// Positions: truncation, loss, reordering.
// ---------------------------------------------------------------------------

#[test]
fn truncated_chunk_inside_a_body_still_pairs() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    // A 10 000-byte upload of which the kernel copied only 64 bytes.
    let mut upload = b"PUT /blob HTTP/1.1\r\nContent-Length: 10000\r\n\r\n".to_vec();
    let head_len = upload.len();
    upload.resize(head_len + 10_000, b'u');
    h.send_truncated(&c, IN, 1_000, &upload, head_len + 64);
    h.send(&c, OUT, 2_000, &ok(204, ""));
    // A 50 000-byte download in two writes, both truncated to 4096 bytes.
    h.send(&c, IN, 3_000, &get("/big"));
    let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n".to_vec();
    let head_len = big.len();
    big.resize(head_len + 50_000, b'd');
    let (first, second) = big.split_at(20_000);
    h.send_truncated(&c, OUT, 4_000, first, 4096);
    h.send_truncated(&c, OUT, 5_000, second, 4096);
    // And the connection goes on.
    h.send(&c, IN, 6_000, &get("/after"));
    h.send(&c, OUT, 7_000, &ok(200, "fine"));

    assert_eq!(
        h.summary(),
        [
            ex("PUT", "/blob", 204),
            ex("GET", "/big", 200),
            ex("GET", "/after", 200)
        ]
    );
    assert_eq!(h.records()[1].exchange.end_ns, 5_000);
    let counters = h.p.counters;
    assert_eq!(counters.parser[HTTP1], Default::default());
    // The uncaptured tail of a truncated chunk is normal, not a lost range.
    assert_eq!(counters.reassembly.gaps, 0);
}

#[test]
fn lost_chunk_inside_a_header_resyncs_and_later_requests_count() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    h.send(&c, IN, 1_000, &get("/first"));
    h.send(&c, OUT, 1_500, &ok(200, ""));

    // Request 2's header arrives in three syscalls; the middle one's event
    // is lost, so the third chunk arrives ahead of its position.
    let req2 = b"GET /second HTTP/1.1\r\nHost: shop\r\nAccept: */*\r\n\r\n";
    h.send(&c, IN, 2_000, &req2[..10]);
    h.lose(&c, IN, 20);
    h.send(&c, IN, 2_100, &req2[30..]);
    // Reassembly holds chunks ahead of the hole for a while; once it gives
    // up, the hole reaches the parser as a gap inside a header.
    for (i, path) in ["/3", "/4", "/5", "/6"].iter().enumerate() {
        h.send(&c, IN, 3_000 + i as u64, &get(path));
    }
    assert_eq!(h.p.counters.reassembly.gaps, 1);
    assert_eq!(h.p.counters.reassembly.gap_bytes, 20);
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, 1, "{:?}", h.p.counters);

    // Requests after the damage are still parsed and answered.
    h.send(&c, OUT, 4_000, &ok(200, ""));
    for (i, _) in ["/3", "/4", "/5", "/6"].iter().enumerate() {
        h.send(&c, OUT, 4_100 + i as u64, &ok(200, ""));
    }
    h.send(&c, IN, 5_000, &get("/7"));
    h.send(&c, OUT, 5_500, &ok(200, ""));
    // The damaged request is not recorded; every later one is. (Which
    // response each later request pairs with is a guess while requests are
    // pipelined: the answer to the lost one is left over.)
    let paths: Vec<String> = h.summary().into_iter().map(|(_, p, _)| p).collect();
    assert_eq!(paths, ["/first", "/3", "/4", "/5", "/6", "/7"]);
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, 1);
    assert_eq!(h.p.counters.parser[HTTP1].unmatched_responses, 1);
}

#[test]
fn swapped_chunks_are_reordered() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    let req = get("/swapped");
    let (a, b) = req.split_at(7);
    // b arrives first (another CPU), then a.
    h.p.handle(&data(
        c.id,
        c.tgid,
        c.fd,
        IN,
        a.len() as u64,
        1_001,
        b,
        b.len() as u32,
    ));
    h.p.handle(&data(c.id, c.tgid, c.fd, IN, 0, 1_000, a, a.len() as u32));
    h.send(&c, OUT, 2_000, &ok(200, ""));
    assert_eq!(h.summary(), [ex("GET", "/swapped", 200)]);
    assert_eq!(h.p.counters.reassembly.reordered, 1);
    assert_eq!(h.p.counters.reassembly.gaps, 0);
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, 0);
}

// ---------------------------------------------------------------------------
// CLOSE and PROC_EXIT.
// ---------------------------------------------------------------------------

#[test]
fn close_completes_a_close_delimited_response() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    h.send(&c, IN, 1_000, &get("/stream"));
    h.send(
        &c,
        OUT,
        2_000,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome",
    );
    h.send(&c, OUT, 3_000, b" more bytes");
    assert!(h.records().is_empty(), "the body has no end yet");
    h.close(&c, 9_000);
    assert_eq!(h.summary(), [ex("GET", "/stream", 200)]);
    let r = &h.records()[0];
    assert_eq!((r.exchange.start_ns, r.exchange.end_ns), (1_000, 9_000));
    assert_eq!(h.p.counters.close_events, 1);
    assert_eq!(h.p.counters.parser[HTTP1].unmatched_requests, 0);
    assert_eq!(h.p.connections(), 0);
    // The kernel drops the socket itself on close: nothing to forget.
    assert!(h.kernel.state().forgets.is_empty());
}

#[test]
fn close_ends_an_unanswered_request_as_connection_closed() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    h.send(&c, IN, 1_000, &get("/answered"));
    h.send(&c, OUT, 1_500, &ok(200, ""));
    h.send(&c, IN, 2_000, &get("/never"));
    h.close(&c, 3_000);
    assert_eq!(
        h.summary(),
        [ex("GET", "/answered", 200), ex("GET", "/never", 0)]
    );
    let never = &h.records()[1].exchange;
    assert_eq!(never.failure, Some(Failure::ConnectionClosed));
    assert_eq!((never.start_ns, never.end_ns), (2_000, 3_000));
    assert_eq!(h.p.counters.parser[HTTP1].unmatched_requests, 0);
    assert_eq!(h.p.connections(), 0);
    // A CLOSE for a connection no longer known is harmless.
    h.close(&c, 4_000);
    assert_eq!(h.p.counters.close_events, 2);
    assert_eq!(h.p.counters.decode_errors, 0);
}

#[test]
fn close_delivers_chunks_held_behind_a_hole() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    h.send(&c, IN, 1_000, &get("/x"));
    let resp = ok(200, "0123456789");
    let (head, body) = resp.split_at(resp.len() - 10);
    h.send(&c, OUT, 2_000, head);
    h.lose(&c, OUT, 4);
    h.send(&c, OUT, 2_100, &body[4..]);
    assert!(h.records().is_empty(), "the rest is held behind the hole");
    h.close(&c, 5_000);
    // On close the hole is a gap inside the body: the response completes.
    assert_eq!(h.summary(), [ex("GET", "/x", 200)]);
    assert_eq!(h.p.counters.reassembly.gaps, 1);
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, 0);
}

/// Chunks lost after the last one that arrived leave no hole a later chunk
/// could reveal: the kernel's byte counts on the CLOSE do. The lost tail is
/// a counted gap, and the request whose answer was in it is unmatched, not
/// an exchange the close cut short (its server did answer).
#[test]
fn close_counts_the_chunks_lost_after_the_last_one() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    h.send(&c, IN, 1_000, &get("/answered"));
    h.send(&c, OUT, 1_100, &ok(200, "yes"));
    h.send(&c, IN, 2_000, &get("/lost-answer"));
    let answer = ok(200, "lost");
    h.lose(&c, OUT, answer.len() as u64);
    h.lose(&c, IN, get("/lost").len() as u64);
    h.close_counted(&c, 3_000);
    assert_eq!(h.summary(), [ex("GET", "/answered", 200)]);
    let r = h.p.counters.reassembly;
    assert_eq!(
        (r.gaps, r.gap_bytes),
        (2, (answer.len() + get("/lost").len()) as u64)
    );
    let p = h.p.counters.parser[HTTP1];
    assert_eq!(
        (p.resyncs, p.unmatched_requests, p.unmatched_responses),
        (2, 1, 0)
    );

    // Nothing lost: the same counts add nothing.
    let d = h.server(2, DEAD, 6, 8080, 4_000);
    h.send(&d, IN, 4_100, &get("/whole"));
    h.send(&d, OUT, 4_200, &ok(200, ""));
    h.close_counted(&d, 4_300);
    assert_eq!(h.summary().last(), Some(&ex("GET", "/whole", 200)));
    assert_eq!(h.p.counters.reassembly.gaps, 2);
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, 2);
}

#[test]
fn process_exit_finishes_all_its_connections() {
    let mut h = Harness::new();
    let tgid = DEAD + 10;
    let a = h.server(1, tgid, 5, 8080, 100);
    let b = h.server(2, tgid, 6, 8080, 110);
    let d = h.client(3, tgid, 7, 120);
    let other = h.server(4, DEAD + 11, 5, 8080, 130);
    // a: a close-delimited response in flight.
    h.send(&a, IN, 1_000, &get("/a"));
    h.send(&a, OUT, 1_100, b"HTTP/1.0 200 OK\r\n\r\npartial");
    // b: a request with no answer.
    h.send(&b, IN, 1_200, &get("/b"));
    // d: a finished client exchange.
    h.send(&d, OUT, 1_300, &get("/d"));
    h.send(&d, IN, 1_400, &ok(200, ""));
    // other: a request in flight, in another process.
    h.send(&other, IN, 1_500, &get("/other"));
    assert_eq!(h.p.connections(), 4);
    assert_eq!(h.summary(), [ex("GET", "/d", 200)]);

    h.p.handle(&proc_exit(tgid, 5_000));
    assert_eq!(h.p.counters.exit_events, 1);
    assert_eq!(h.p.connections(), 1, "only the other process's connection");
    let mut finished = h.summary();
    finished[1..].sort();
    assert_eq!(
        finished,
        [
            ex("GET", "/d", 200),
            ex("GET", "/a", 200),
            ex("GET", "/b", 0)
        ],
        "the close-delimited response ends at the exit; /b's wait ends there"
    );
    for r in &h.records()[1..] {
        assert_eq!(r.exchange.end_ns, 5_000);
    }
    assert_eq!(h.p.counters.parser[HTTP1].unmatched_requests, 0);
    let mut forgets = h.kernel.state().forgets.clone();
    forgets.sort_unstable();
    assert_eq!(
        forgets,
        [conn_key(tgid, 5), conn_key(tgid, 6), conn_key(tgid, 7)]
    );

    // The other process is unaffected.
    h.send(&other, OUT, 6_000, &ok(200, ""));
    assert_eq!(h.records().len(), 4);
    assert_eq!(h.records()[3].exchange.http().unwrap().path, "/other");
    // An exit of a process without connections is harmless.
    h.p.handle(&proc_exit(DEAD + 99, 7_000));
    assert_eq!(h.p.connections(), 1);
    assert_eq!(h.p.counters.exit_events, 2);
}

#[test]
fn late_events_after_process_exit_are_dropped_quietly() {
    let mut h = Harness::new();
    let tgid = DEAD + 10;
    let a = h.server(1, tgid, 5, 8080, 100);
    h.send(&a, IN, 1_000, &get("/a"));
    h.p.handle(&proc_exit(tgid, 2_000));
    assert_eq!(h.kernel.state().forgets, [conn_key(tgid, 5)]);
    // Another thread's write, committed to the ring buffer after the exit
    // event (the group leader exits before the other threads do).
    h.send(&a, OUT, 1_900, &ok(200, ""));
    assert_eq!(h.p.counters.unknown_conn, 0, "{:?}", h.p.counters);
}

// ---------------------------------------------------------------------------
// Protocol detection.
// ---------------------------------------------------------------------------

#[test]
fn unknown_protocol_is_dropped_and_forgotten() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 11211, 100);
    h.send(&c, IN, 1_000, b"\x80\x00\x00\x05");
    // Undecided until the server answers: junk to an HTTP server would get
    // an HTTP error back.
    assert_eq!(h.p.connections(), 1);
    h.send(&c, OUT, 1_100, b"\x81\x00\x00\x00");
    assert_eq!(h.p.connections(), 0);
    assert_eq!(h.kernel.state().forgets, [conn_key(DEAD, 5)]);
    // Events already in the ring buffer for it are ignored quietly.
    h.send(&c, IN, 1_200, b"\x80\x00\x00\x05");
    h.send(&c, OUT, 1_300, b"\x81\x00\x00\x00");
    h.close(&c, 2_000);
    assert!(h.records().is_empty());
    let counters = h.p.counters;
    assert_eq!(counters.data_events, 4);
    assert_eq!(counters.unknown_conn, 0);
    assert_eq!(counters.parser[HTTP1], Default::default());
    assert_eq!(counters.decode_errors, 0);
    assert!(
        h.kernel.state().lookups.is_empty(),
        "a forgotten connection is not looked up for adoption"
    );
    assert_eq!(h.kernel.state().forgets.len(), 1);
    assert_eq!(h.p.connections(), 0);
}

#[test]
fn server_speaks_first_in_no_known_protocol_is_given_up() {
    // A client whose peer talks first (an SMTP banner).
    let mut h = Harness::new();
    let c = h.client(3, DEAD, 8, 100);
    h.send(&c, IN, 1_000, b"220 mail.example.com ESMTP\r\n");
    assert_eq!(h.p.connections(), 0);
    assert_eq!(h.kernel.state().forgets, [conn_key(DEAD, 8)]);
    assert_eq!(h.p.counters.parser[HTTP1], Default::default());
}

#[test]
fn database_server_side_is_given_up_at_once_and_its_client_side_kept() {
    // Databases are measured from their clients: the server's own side of
    // a Redis connection is recognised and dropped on its first bytes.
    let mut h = Harness::new();
    let server = h.server(1, DEAD, 5, 6379, 100);
    h.send(&server, IN, 1_000, b"*1\r\n$4\r\nPING\r\n");
    assert_eq!(h.p.connections(), 0);
    assert_eq!(h.kernel.state().forgets, [conn_key(DEAD, 5)]);
    // A MySQL client is kept from the server's greeting on.
    let client = h.client(3, DEAD, 8, 101);
    h.send(&client, IN, 1_100, b"\x4a\x00\x00\x00\x0a8.0.36\x00");
    assert_eq!(h.p.connections(), 1);
}

#[test]
fn tls_client_hello_is_not_http() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 443, 100);
    h.send(
        &c,
        IN,
        1_000,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    );
    h.send(
        &c,
        OUT,
        1_100,
        b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03",
    );
    assert_eq!(h.p.connections(), 0);
    assert_eq!(h.kernel.state().forgets, [conn_key(DEAD, 5)]);
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, 0);
}

/// The hooks cover a routable flow as they announce it and the kernel
/// uncovers it when its socket closes: the daemon has nothing to add, and
/// never uncovers one (TLS) it gives up on, which the packet path must not
/// read instead, nor one that ended (a newer connection on the same ends
/// may hold the entry by then).
#[test]
fn with_both_sources_routable_flows_are_left_to_the_kernel() {
    let mut h = Harness::with_packet_path();
    let tls = h.server(1, DEAD, 5, 443, 100);
    h.send(
        &tls,
        IN,
        1_000,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    );
    h.send(
        &tls,
        OUT,
        1_100,
        b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03",
    );
    assert_eq!(h.p.connections(), 0);
    let web = h.server(2, DEAD, 6, 8080, 200);
    h.send(&web, IN, 2_000, &get("/a"));
    h.send(&web, OUT, 2_100, &ok(200, "a"));
    h.close(&web, 3_000);
    assert!(h.kernel.state().covers.is_empty());
    assert_eq!(h.summary(), [ex("GET", "/a", 200)]);
}

/// Loopback flows never leave their network namespace: each is covered
/// with its process's namespace, so a pod's loopback flow does not hide the
/// packet path's (the tracer's namespace's) flow with the same ends, while
/// a flow on routable addresses is covered in every namespace; a connection
/// adopted at start-up is covered too.
#[test]
fn loopback_flows_are_covered_in_their_own_network_namespace() {
    // Process 7 lives in namespace 111; everything else (the tracer too)
    // in 222.
    fn lookup(tgid: u32) -> u32 {
        if tgid == 7 {
            111
        } else {
            222
        }
    }
    let mut h = Harness::with_packet_path();
    h.p = h.p.with_netns_lookup(lookup);
    let loopback = Tuple {
        local: v4([127, 0, 0, 1], 8080),
        remote: v4([127, 0, 0, 1], 40_001),
    };
    let key = FlowKey::new(&loopback.local, &loopback.remote);
    let pod = Conn {
        id: 1,
        tgid: 7,
        fd: 5,
        tuple: loopback,
    };
    h.open(&pod, role::SERVER, 1_000, "podd");
    // A routable flow of the same process: nothing for the daemon to do.
    h.server(2, 8, 6, 8080, 1_100);
    let adopted = Tuple {
        local: v4([127, 0, 0, 1], 9090),
        remote: v4([127, 0, 0, 1], 40_002),
    };
    h.kernel.state().adopt_ok = true;
    h.p.adopt_existing(&[ExistingConn {
        tgid: 9,
        fd: 3,
        tuple: adopted,
        side: Side::Server,
    }]);
    // The pod's flow is narrowed to its namespace; the adopted one is
    // covered in the daemon's.
    assert_eq!(
        h.kernel.state().covers,
        [
            (FlowAt { key, netns: 111 }, true),
            (
                FlowAt {
                    key: FlowKey::new(&adopted.local, &adopted.remote),
                    netns: 222
                },
                false
            ),
        ]
    );
    // The packet path's copy of a flow with the pod's ends is the tracer's
    // namespace's own flow: counted, not dropped as covered.
    let packet_flow = |conn_id, tuple| {
        Event::Opened(Opened {
            conn_id,
            ts_ns: 2_000,
            tgid: 0,
            fd: -1,
            side: Side::Server,
            tuple,
            comm: [0; 16],
            source: Source::Packets,
            from_start: true,
        })
    };
    h.p.on_event(packet_flow(PACKET_CONN_ID_BITS | 1, loopback));
    assert_eq!(h.p.counters.packet_flows_covered, 0);
    // Its copy of the adopted flow is the hooks': dropped.
    h.p.on_event(packet_flow(PACKET_CONN_ID_BITS | 2, adopted));
    assert_eq!(h.p.counters.packet_flows_covered, 1);
}

/// A packet flow between two local ends has a view from each; when the
/// hooks announce the flow, both views leave the table.
#[test]
fn both_views_of_a_packet_flow_give_way_to_the_hooks() {
    let mut h = Harness::with_packet_path();
    let server_end = v4([10, 0, 0, 2], 8080);
    let client_end = v4([10, 0, 0, 1], 40_007);
    let view = |conn_id, side, local, remote| {
        Event::Opened(Opened {
            conn_id,
            ts_ns: 1_000,
            tgid: 0,
            fd: -1,
            side,
            tuple: Tuple { local, remote },
            comm: [0; 16],
            source: Source::Packets,
            from_start: true,
        })
    };
    h.p.on_event(view(
        PACKET_CONN_ID_BITS | 1,
        Side::Server,
        server_end,
        client_end,
    ));
    h.p.on_event(view(
        PACKET_CONN_ID_BITS | 2,
        Side::Client,
        client_end,
        server_end,
    ));
    assert_eq!(h.p.connections(), 2);
    let hooked = Conn {
        id: 3,
        tgid: 9,
        fd: 4,
        tuple: Tuple {
            local: client_end,
            remote: server_end,
        },
    };
    h.open(&hooked, role::CLIENT, 2_000, "curl");
    assert_eq!(h.p.counters.packet_flows_covered, 2);
    assert_eq!(h.p.connections(), 1, "the hooks' connection alone");
}

#[test]
fn with_one_source_nothing_is_covered() {
    let mut h = Harness::new();
    let web = h.server(2, DEAD, 6, 8080, 200);
    h.send(&web, IN, 2_000, &get("/a"));
    h.close(&web, 3_000);
    assert!(h.kernel.state().covers.is_empty());
}

#[test]
fn garbage_on_a_port_known_to_serve_http_is_a_resync() {
    let mut h = Harness::new();
    let a = h.server(1, DEAD, 5, 8080, 100);
    h.send(&a, IN, 1_000, &get("/ok"));
    h.send(&a, OUT, 1_100, &ok(200, ""));
    h.close(&a, 1_200);

    // Same process, same local port: now garbage is damage, not another
    // protocol, and the connection stays traced.
    let b = h.server(2, DEAD, 6, 8080, 2_000);
    h.send(
        &b,
        IN,
        2_100,
        b"\x00\x01garbage that is not a request\r\n\r\n",
    );
    assert!(
        h.p.counters.parser[HTTP1].resyncs >= 1,
        "{:?}",
        h.p.counters
    );
    assert_eq!(h.p.connections(), 1);
    assert!(h.kernel.state().forgets.is_empty());
    // A real request after the garbage is still counted.
    h.send(&b, IN, 2_200, &get("/again"));
    h.send(&b, OUT, 2_300, &ok(200, ""));
    assert_eq!(
        h.summary(),
        [ex("GET", "/ok", 200), ex("GET", "/again", 200)]
    );

    // The same garbage on a port not yet known is decided by the answer:
    // another protocol's answer makes it "not HTTP", counting nothing...
    let resyncs = h.p.counters.parser[HTTP1].resyncs;
    let other = h.server(3, DEAD, 7, 9090, 3_000);
    h.send(
        &other,
        IN,
        3_100,
        b"\x00\x01garbage that is not a request\r\n\r\n",
    );
    h.send(&other, OUT, 3_200, b"\x00\x00\x00\x04nope");
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, resyncs);
    assert_eq!(h.kernel.state().forgets, [conn_key(DEAD, 7)]);

    // ... while an HTTP error answer (nginx's 400) makes it a resync on a
    // fresh HTTP server, before it ever served a valid request.
    let fresh = h.server(4, DEAD, 8, 7070, 4_000);
    h.send(&fresh, IN, 4_100, b"\x00\x01garbage\r\n\r\n");
    h.send(
        &fresh,
        OUT,
        4_200,
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, resyncs + 1);
    assert_eq!(h.p.counters.parser[HTTP1].unmatched_responses, 1);
    assert_eq!(h.p.connections(), 2, "b and fresh stay traced");
}

#[test]
fn process_exit_forgets_its_known_http_ports() {
    let mut h = Harness::new();
    let a = h.server(1, DEAD, 5, 8080, 100);
    h.send(&a, IN, 1_000, &get("/ok"));
    h.send(&a, OUT, 1_100, &ok(200, ""));
    h.p.handle(&proc_exit(DEAD, 2_000));
    // The pid is reused by an unrelated program listening on the same port.
    let b = h.server(2, DEAD, 5, 8080, 3_000);
    h.send(&b, IN, 3_100, b"*1\r\n$4\r\nPING\r\n");
    h.send(&b, OUT, 3_200, b"+PONG\r\n");
    assert_eq!(h.p.counters.parser[HTTP1].resyncs, 0);
    assert_eq!(h.p.connections(), 0, "not HTTP: dropped");
}

#[test]
fn upgrade_stops_tracing_the_connection() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    h.send(
        &c,
        IN,
        1_000,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    h.send(
        &c,
        OUT,
        1_100,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(h.summary(), [ex("GET", "/ws", 101)]);
    assert_eq!(h.p.connections(), 0);
    assert_eq!(h.kernel.state().forgets, [conn_key(DEAD, 5)]);
    // Websocket frames still in the ring buffer are dropped quietly.
    h.send(
        &c,
        IN,
        1_200,
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
    );
    assert_eq!(h.p.counters.unknown_conn, 0);
    assert_eq!(h.p.counters.parser[HTTP1], Default::default());
    assert_eq!(h.records().len(), 1);
}

// ---------------------------------------------------------------------------
// Capacity.
// ---------------------------------------------------------------------------

#[test]
fn full_table_evicts_the_least_recently_active() {
    let mut h = Harness::with(16, HashMap::new());
    let conns: Vec<Conn> = (0..40u64)
        .map(|i| h.server(100 + i, DEAD, 10 + i as i32, 8080, 1_000 + i * 10))
        .collect();
    let counters = h.p.counters;
    assert!(counters.evictions > 0);
    assert!(h.p.connections() <= 16, "{}", h.p.connections());
    assert_eq!(counters.evictions as usize + h.p.connections(), 40);
    let forgets = h.kernel.state().forgets.clone();
    assert_eq!(forgets.len() as u64, counters.evictions);
    // The oldest went first, and the newest is still tracked.
    assert!(forgets.contains(&conn_key(DEAD, 10)));
    assert!(!forgets.contains(&conn_key(DEAD, 49)));
    let newest = &conns[39];
    h.send(newest, IN, 5_000, &get("/newest"));
    h.send(newest, OUT, 5_100, &ok(200, ""));
    assert_eq!(h.summary(), [ex("GET", "/newest", 200)]);
    // Events of an evicted connection are dropped quietly.
    h.send(&conns[0], IN, 5_200, &get("/evicted"));
    assert_eq!(h.p.counters.unknown_conn, 0);
    assert!(h.p.connections() <= 16);
}

#[test]
fn activity_protects_a_connection_from_eviction() {
    let mut h = Harness::with(16, HashMap::new());
    let first = h.server(1, DEAD, 3, 8080, 1_000);
    h.send(&first, IN, 1_001, &get("/slow"));
    for i in 0..40u64 {
        h.server(100 + i, DEAD, 10 + i as i32, 8080, 2_000 + i * 10);
        // The first connection stays the most recently active.
        h.send(&first, IN, 2_005 + i * 10, b"\r\n");
    }
    assert!(!h.kernel.state().forgets.contains(&conn_key(DEAD, 3)));
    h.send(&first, OUT, 9_000, &ok(200, ""));
    assert_eq!(h.summary(), [ex("GET", "/slow", 200)]);
}

#[test]
fn eviction_finishes_the_exchange_in_flight() {
    let mut h = Harness::with(1, HashMap::new());
    let a = h.server(1, DEAD, 5, 8080, 100);
    h.send(&a, IN, 1_000, &get("/a"));
    h.send(&a, OUT, 1_100, b"HTTP/1.1 200 OK\r\n\r\nuntil close");
    let _b = h.server(2, DEAD, 6, 8080, 2_000);
    assert_eq!(h.p.counters.evictions, 1);
    assert_eq!(h.p.connections(), 1);
    assert_eq!(h.summary(), [ex("GET", "/a", 200)]);
    // Ended at its last activity, not at the time of the eviction.
    assert_eq!(h.records()[0].exchange.end_ns, 1_100);
    assert_eq!(h.kernel.state().forgets, [conn_key(DEAD, 5)]);
}

// ---------------------------------------------------------------------------
// Connections we did not see open.
// ---------------------------------------------------------------------------

fn kernel_entry(h: &Harness, tgid: u32, fd: u32, conn_id: u64, conn_role: u8, t: Tuple) {
    h.kernel
        .state()
        .table
        .insert(conn_key(tgid, fd), ConnInfo::new(conn_id, t, conn_role));
}

#[test]
fn unknown_connection_the_kernel_traces_is_adopted_mid_stream() {
    let mut h = Harness::new();
    let t = tuple(8080, 5555);
    kernel_entry(&h, DEAD, 9, 77, role::SERVER, t);
    let c = Conn {
        id: 77,
        tgid: DEAD,
        fd: 9,
        tuple: t,
    };
    // Its OPEN was lost; we join in the middle of a response body, at some
    // arbitrary position.
    h.pos.insert((77, OUT), 123_456);
    h.pos.insert((77, IN), 9_999);
    h.send(
        &c,
        OUT,
        1_000,
        b"...rest of some body, HTTP/1.1 200 OK\r\n\r\n",
    );
    assert_eq!(h.p.connections(), 1);
    assert_eq!(h.p.counters.unknown_conn, 0);
    assert_eq!(h.kernel.state().lookups, [conn_key(DEAD, 9)]);
    // The next request boundary is counted.
    h.send(&c, IN, 2_000, &get("/next?x"));
    h.send(&c, OUT, 2_500, &ok(200, "fine"));
    h.send(&c, IN, 3_000, &get("/again"));
    h.send(&c, OUT, 3_500, &ok(500, ""));
    assert_eq!(
        h.summary(),
        [ex("GET", "/next", 200), ex("GET", "/again", 500)]
    );
    let r = &h.records()[0];
    assert_eq!(r.side, Side::Server);
    assert_eq!(r.local, t.local);
    assert_eq!(r.remote, t.remote);
    assert_eq!(
        &*r.identity.service_name, "unknown",
        "no /proc entry and no comm"
    );
    assert_eq!(h.p.counters.parser[HTTP1], Default::default());
}

#[test]
fn unknown_client_connection_is_adopted_with_its_role() {
    let mut h = Harness::new();
    let t = tuple(45678, 80);
    kernel_entry(&h, DEAD, 4, 88, role::CLIENT, t);
    let c = Conn {
        id: 88,
        tgid: DEAD,
        fd: 4,
        tuple: t,
    };
    h.pos.insert((88, OUT), 1_000);
    h.pos.insert((88, IN), 2_000);
    h.send(&c, OUT, 1_000, &get("/from-client"));
    h.send(&c, IN, 1_500, &ok(200, ""));
    assert_eq!(h.summary(), [ex("GET", "/from-client", 200)]);
    assert_eq!(h.records()[0].side, Side::Client);
}

#[test]
fn unknown_connection_with_another_id_in_the_kernel_is_not_adopted() {
    let mut h = Harness::new();
    // The fd was reused: the kernel's entry belongs to a newer connection.
    kernel_entry(&h, DEAD, 9, 78, role::SERVER, tuple(8080, 1));
    h.p.handle(&data(77, DEAD, 9, IN, 0, 1_000, &get("/x"), 33));
    assert_eq!(h.p.counters.unknown_conn, 1);
    assert_eq!(h.p.connections(), 0);
    // Nor one the kernel does not know at all.
    h.p.handle(&data(79, DEAD, 10, IN, 0, 1_000, &get("/y"), 33));
    assert_eq!(h.p.counters.unknown_conn, 2);
    assert_eq!(h.p.connections(), 0);
    assert!(h.records().is_empty());
    assert_eq!(
        h.kernel.state().lookups,
        [conn_key(DEAD, 9), conn_key(DEAD, 10)]
    );
}

#[test]
fn unknown_connection_without_a_kernel_is_counted() {
    let mut h = Harness::without_kernel();
    h.p.handle(&data(5, DEAD, 9, IN, 0, 1_000, &get("/x"), 33));
    h.p.handle(&data(5, DEAD, 9, IN, 33, 1_001, &get("/y"), 33));
    // Counted once per lost connection, not once per event.
    assert_eq!(h.p.counters.unknown_conn, 1);
    assert_eq!(h.p.connections(), 0);
}

#[test]
fn existing_connection_is_adopted_with_a_user_id() {
    let mut h = Harness::new();
    h.kernel.state().adopt_ok = true;
    let t = tuple(8080, 6000);
    let existing = [
        ExistingConn {
            tgid: DEAD,
            fd: 12,
            tuple: t,
            side: Side::Server,
        },
        ExistingConn {
            tgid: DEAD,
            fd: 13,
            tuple: tuple(50000, 443),
            side: Side::Client,
        },
    ];
    assert_eq!(h.p.adopt_existing(&existing), 2);
    assert_eq!(h.p.connections(), 2);
    let adopts = h.kernel.state().adopts.clone();
    assert_eq!(adopts.len(), 2);
    let (key, info) = adopts[0];
    assert_eq!(key, conn_key(DEAD, 12));
    assert_ne!(info.conn_id & USER_CONN_ID_BIT, 0);
    assert_eq!(info.pos, [0, 0]);
    assert_eq!(info.role, role::SERVER);
    assert_eq!(info.tuple, t);
    assert_eq!(adopts[1].1.role, role::CLIENT);
    assert_ne!(adopts[0].1.conn_id, adopts[1].1.conn_id);

    // The kernel now reports that socket's bytes under the adopted id,
    // counting positions from 0 at adoption; the first bytes are the end
    // of a response already under way.
    let c = Conn {
        id: info.conn_id,
        tgid: DEAD,
        fd: 12,
        tuple: t,
    };
    h.send(
        &c,
        OUT,
        1_000,
        b"tail of a body\r\n\r\nHTTP/1.1 200 not really\r\n\r\n",
    );
    h.send(&c, OUT, 1_100, b"more of that body");
    h.send(&c, IN, 2_000, &get("/next"));
    h.send(&c, OUT, 2_500, &ok(200, "ok"));
    assert_eq!(h.summary(), [ex("GET", "/next", 200)]);
    let r = &h.records()[0];
    assert_eq!(r.side, Side::Server);
    assert_eq!((r.exchange.start_ns, r.exchange.end_ns), (2_000, 2_500));
    assert_eq!(h.p.counters.parser[HTTP1], Default::default());
    assert_eq!(h.p.counters.unknown_conn, 0);
}

#[test]
fn existing_connection_the_kernel_refuses_is_not_adopted() {
    let mut h = Harness::new();
    h.kernel.state().adopt_ok = false;
    let existing = [ExistingConn {
        tgid: DEAD,
        fd: 12,
        tuple: tuple(8080, 6000),
        side: Side::Server,
    }];
    assert_eq!(h.p.adopt_existing(&existing), 0);
    assert_eq!(h.p.connections(), 0);
    assert_eq!(h.kernel.state().adopts.len(), 1);
    let id = h.kernel.state().adopts[0].1.conn_id;
    assert_ne!(id & USER_CONN_ID_BIT, 0);
    h.p.handle(&data(id, DEAD, 12, IN, 0, 1_000, &get("/x"), 33));
    assert_eq!(h.p.counters.unknown_conn, 1);
}

#[test]
fn existing_connections_without_a_kernel_are_adopted() {
    let mut h = Harness::without_kernel();
    let existing = [ExistingConn {
        tgid: DEAD,
        fd: 12,
        tuple: tuple(8080, 6000),
        side: Side::Server,
    }];
    assert_eq!(h.p.adopt_existing(&existing), 1);
    assert_eq!(h.p.connections(), 1);
}

// ---------------------------------------------------------------------------
// Malformed records.
// ---------------------------------------------------------------------------

#[test]
fn malformed_records_are_counted_not_fatal() {
    let mut h = Harness::new();
    let good = data(1, DEAD, 5, IN, 0, 1_000, b"GET / HTTP/1.1\r\n\r\n", 18);
    let mut bad: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![kind::DATA],
        good[..size_of::<DataEvent>() - 1].to_vec(),
        vec![kind::OPEN; 50],
        open(1, DEAD, 5, role::SERVER, &tuple(1, 2), 1, "x")[..size_of::<ConnEvent>() - 1].to_vec(),
        close(1, DEAD, 5, &tuple(1, 2), 1)[..size_of::<ConnEvent>() - 1].to_vec(),
        proc_exit(DEAD, 1)[..size_of::<EventHeader>() - 1].to_vec(),
        vec![0; 200],
        vec![0xff; 200],
        vec![kind::PROC_EXIT + 1; size_of::<ConnEvent>()],
    ];
    // Payload shorter than cap_len claims.
    bad.push(data_raw(1, DEAD, 5, IN, 0, 1_000, b"GET", 100, 100));
    bad.push(data_raw(1, DEAD, 5, IN, 0, 1_000, b"", 0, u32::MAX));
    let n = bad.len() as u64;
    for record in &bad {
        h.p.handle(record);
    }
    let counters = h.p.counters;
    assert_eq!(counters.decode_errors, n, "{counters:?}");
    assert_eq!(counters.unknown_conn, 0);
    assert_eq!(counters.open_events + counters.close_events, 0);
    assert_eq!(counters.exit_events, 0);
    assert_eq!(h.p.connections(), 0);
    assert!(h.kernel.state().lookups.is_empty());
    assert!(h.records().is_empty());
    assert_eq!(
        counters.event_bytes,
        bad.iter().map(|r| r.len() as u64).sum::<u64>()
    );

    // The pipeline still works afterwards.
    let c = h.server(1, DEAD, 5, 8080, 2_000);
    h.send(&c, IN, 2_100, &get("/fine"));
    h.send(&c, OUT, 2_200, &ok(200, ""));
    assert_eq!(h.summary(), [ex("GET", "/fine", 200)]);
}

#[test]
fn trailing_bytes_and_odd_lengths_are_tolerated() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 100);
    // Bytes after cap_len (ring-buffer records are 8-byte aligned) are ignored.
    let mut rec = data(1, DEAD, 5, IN, 0, 1_000, &get("/pad"), 0);
    let req_len = get("/pad").len() as u64;
    rec.extend_from_slice(&[0xAA; 5]);
    h.p.handle(&rec);
    // orig_len 0 < cap_len: the captured bytes are believed.
    h.pos.insert((1, IN), req_len);
    h.send(&c, OUT, 2_000, &ok(200, ""));
    assert_eq!(h.summary(), [ex("GET", "/pad", 200)]);
    // Trailing bytes after a fixed-size event are fine too.
    let mut exit = proc_exit(DEAD, 3_000);
    exit.extend_from_slice(&[0; 16]);
    h.p.handle(&exit);
    assert_eq!(h.p.counters.decode_errors, 0);
    assert_eq!(h.p.connections(), 0);
}

// ---------------------------------------------------------------------------
// Bookkeeping when an OPEN repeats a live connection id.
// ---------------------------------------------------------------------------

#[test]
fn repeated_open_finishes_the_old_connection_at_a_real_time() {
    let mut h = Harness::new();
    let a = h.server(7, DEAD, 5, 8080, 100);
    h.send(&a, IN, 1_000, &get("/a"));
    h.send(&a, OUT, 2_000, b"HTTP/1.1 200 OK\r\n\r\nuntil close");
    // The same id opens again: the first socket's CLOSE was never seen.
    let _again = h.server(7, DEAD, 5, 8080, 5_000);
    assert_eq!(h.summary(), [ex("GET", "/a", 200)]);
    let e = &h.records()[0].exchange;
    assert!(e.end_ns >= e.start_ns, "{e:?}");
}

#[test]
fn repeated_open_from_another_process_keeps_process_bookkeeping() {
    let mut h = Harness::new();
    let _a = h.server(7, DEAD, 5, 8080, 100);
    let b = h.server(7, DEAD + 1, 6, 9090, 200);
    assert_eq!(h.p.connections(), 1);
    // The first process exits: the connection now belongs to the second.
    h.p.handle(&proc_exit(DEAD, 300));
    assert_eq!(h.p.connections(), 1);
    assert!(
        !h.kernel.state().forgets.contains(&conn_key(DEAD + 1, 6)),
        "the live socket of another process must not be forgotten"
    );
    h.send(&b, IN, 1_000, &get("/b"));
    h.send(&b, OUT, 1_100, &ok(200, ""));
    assert_eq!(h.summary(), [ex("GET", "/b", 200)]);
}

#[test]
fn adoption_without_a_comm_does_not_pin_the_service_name() {
    let mut h = Harness::new();
    let t = tuple(8080, 5555);
    kernel_entry(&h, DEAD, 9, 77, role::SERVER, t);
    h.p.handle(&data(77, DEAD, 9, IN, 0, 1_000, b"x", 1));
    assert_eq!(h.p.connections(), 1);
    // The same (exited, so /proc has nothing) process's next connection
    // carries its comm.
    let c = h.server(2, DEAD, 10, 8080, 2_000);
    h.send(&c, IN, 2_100, &get("/named"));
    h.send(&c, OUT, 2_200, &ok(200, ""));
    assert_eq!(h.summary(), [ex("GET", "/named", 200)]);
    assert_eq!(&*h.records()[0].identity.service_name, "shopd");
}

#[test]
fn an_unknown_connection_is_counted_once_and_looked_up_once() {
    let mut h = Harness::new();
    h.p.handle(&data(90, DEAD, 11, IN, 0, 1_000, &get("/a"), 33));
    h.p.handle(&data(90, DEAD, 11, IN, 33, 2_000, &get("/b"), 33));
    assert_eq!(h.p.counters.unknown_conn, 1);
    assert_eq!(h.kernel.state().lookups, [conn_key(DEAD, 11)]);
}

#[test]
fn events_older_than_one_already_handled_are_counted_late() {
    let mut h = Harness::new();
    let c = h.server(1, DEAD, 5, 8080, 1_000);
    h.send(&c, IN, 5_000, &get("/"));
    // Stamped before the request: a CPU that stalled past the hold-back.
    h.send(&c, OUT, 4_000, &ok(200, ""));
    assert_eq!(h.p.counters.late_events, 1);
    // In order again: nothing more is late.
    h.send(&c, IN, 6_000, &get("/b"));
    h.send(&c, OUT, 7_000, &ok(200, ""));
    assert_eq!(h.p.counters.late_events, 1);
}
