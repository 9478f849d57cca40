//! Golden packet streams through `Flows` into a real `Pipeline`: what
//! comes out is the exchanges the HTTP parser finds, so a wrong position,
//! role, base or close shows up as a missing or extra exchange.

use std::{
    collections::HashMap,
    mem::{offset_of, size_of},
};

use tracer_common::{
    kind, tcp_flag, EventHeader, PacketEvent, SockAddr, AF_INET, AF_INET6, PACKET_CONN_ID_BITS,
};

use super::*;
use crate::{
    metadata::Identities,
    pipeline::{
        conntrack::Pipeline,
        records::{Record, Sink},
    },
    protocols::Call,
};

const SERVER_TGID: u32 = 4242;
const ACK: u8 = tcp_flag::ACK;
const PSH_ACK: u8 = tcp_flag::PSH | tcp_flag::ACK;

#[derive(Default)]
struct Collect(Vec<Record>);

impl Sink for Collect {
    fn record(&mut self, record: &Record) {
        self.0.push(record.clone());
    }
}

fn v4(a: [u8; 4], port: u16) -> SockAddr {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&a);
    SockAddr {
        addr,
        port,
        family: AF_INET,
    }
}

fn v6(last: u8, port: u16) -> SockAddr {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&[0xfd, 0, 0, 1]);
    addr[15] = last;
    SockAddr {
        addr,
        port,
        family: AF_INET6,
    }
}

/// Overwrites a `u32` field of a packet record.
fn set_u32(record: &mut [u8], offset: usize, value: u32) {
    record[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

const PAYLOAD_LEN: usize = offset_of!(PacketEvent, payload_len);
const CAP_LEN: usize = offset_of!(PacketEvent, cap_len);
const IFINDEX: usize = offset_of!(PacketEvent, ifindex);

fn bytes_of<T>(value: &T) -> &[u8] {
    // SAFETY: plain-old-data from tracer-common, read as bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The record the socket filter writes for one segment.
#[expect(clippy::too_many_arguments, reason = "one argument per field")]
fn packet(
    src: SockAddr,
    dst: SockAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    ifindex: u32,
    ts_ns: u64,
) -> Vec<u8> {
    let event = PacketEvent {
        header: EventHeader {
            kind: kind::PACKET,
            ts_ns,
            ..Default::default()
        },
        src,
        dst,
        ifindex,
        seq,
        ack,
        payload_len: payload.len() as u32,
        cap_len: payload.len() as u32,
        flags,
        tcp_header_len: 20,
        ..Default::default()
    };
    let mut record = bytes_of(&event).to_vec();
    record.extend_from_slice(&tcp_header(&src, &dst, seq, ack, flags, payload));
    record.extend_from_slice(payload);
    record
}

/// The event at the front of a record `packet` made.
fn event_of(record: &[u8]) -> PacketEvent {
    // SAFETY: at least one PacketEvent's bytes; plain-old-data.
    unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<PacketEvent>()) }
}

/// The payload of a record `packet` made.
fn payload_of(record: &[u8]) -> &[u8] {
    &record[size_of::<PacketEvent>() + 20..]
}

/// A 20-byte TCP header for a segment, its checksum whole.
fn tcp_header(
    src: &SockAddr,
    dst: &SockAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> [u8; 20] {
    let mut header = [0u8; 20];
    header[0..2].copy_from_slice(&src.port.to_be_bytes());
    header[2..4].copy_from_slice(&dst.port.to_be_bytes());
    header[4..8].copy_from_slice(&seq.to_be_bytes());
    header[8..12].copy_from_slice(&ack.to_be_bytes());
    header[12] = 5 << 4;
    header[13] = flags;
    header[14..16].copy_from_slice(&65535u16.to_be_bytes());
    super::checksum::seal(src, dst, &mut header, payload);
    header
}

/// One TCP connection's segments, with its sequence numbers kept.
struct Conn {
    client: SockAddr,
    server: SockAddr,
    client_isn: u32,
    server_isn: u32,
    /// Next sequence number per side.
    cseq: u32,
    sseq: u32,
    ifindex: u32,
    ts: u64,
}

impl Conn {
    fn new(client: SockAddr, server: SockAddr, client_isn: u32, server_isn: u32) -> Self {
        Self {
            client,
            server,
            client_isn,
            server_isn,
            cseq: client_isn.wrapping_add(1),
            sseq: server_isn.wrapping_add(1),
            ifindex: 2,
            ts: 1_000,
        }
    }

    fn tick(&mut self) -> u64 {
        self.ts += 1_000;
        self.ts
    }

    fn syn(&mut self) -> Vec<u8> {
        let ts = self.tick();
        packet(
            self.client,
            self.server,
            self.client_isn,
            0,
            tcp_flag::SYN,
            &[],
            self.ifindex,
            ts,
        )
    }

    fn syn_ack(&mut self) -> Vec<u8> {
        let ts = self.tick();
        let (seq, ack) = (self.server_isn, self.client_isn.wrapping_add(1));
        packet(
            self.server,
            self.client,
            seq,
            ack,
            tcp_flag::SYN | ACK,
            &[],
            self.ifindex,
            ts,
        )
    }

    /// Segments of at most `mss` bytes carrying `bytes` from one side.
    fn send(&mut self, from_client: bool, bytes: &[u8], mss: usize) -> Vec<Vec<u8>> {
        bytes
            .chunks(mss)
            .map(|chunk| self.segment(from_client, chunk, PSH_ACK))
            .collect()
    }

    fn segment(&mut self, from_client: bool, chunk: &[u8], flags: u8) -> Vec<u8> {
        let ts = self.tick();
        let (src, dst, seq, ack) = if from_client {
            (self.client, self.server, &mut self.cseq, self.sseq)
        } else {
            (self.server, self.client, &mut self.sseq, self.cseq)
        };
        let record = packet(src, dst, *seq, ack, flags, chunk, self.ifindex, ts);
        *seq = seq.wrapping_add(chunk.len() as u32 + u32::from(flags & tcp_flag::FIN != 0));
        record
    }

    fn fin(&mut self, from_client: bool) -> Vec<u8> {
        self.segment(from_client, &[], tcp_flag::FIN | ACK)
    }

    fn rst(&mut self, from_client: bool) -> Vec<u8> {
        self.segment(from_client, &[], tcp_flag::RST | ACK)
    }
}

/// `Flows` feeding a real pipeline, with the events it made.
struct Rig {
    flows: Flows,
    pipe: Pipeline<Collect>,
    opened: Vec<Opened>,
    closed: Vec<(u64, [u64; 2])>,
}

impl Rig {
    /// A rig serving `server`, and a connection to it from `client` whose
    /// handshake it saw.
    fn handshaken(
        client: SockAddr,
        server: SockAddr,
        client_isn: u32,
        server_isn: u32,
    ) -> (Self, Conn) {
        let mut rig = Rig::serving(server);
        let mut conn = Conn::new(client, server, client_isn, server_isn);
        rig.feed(&conn.syn());
        rig.feed(&conn.syn_ack());
        (rig, conn)
    }

    fn new(capacity: usize, owners: FixedOwners) -> Self {
        Self {
            flows: Flows::new(capacity, Box::new(owners)),
            pipe: Pipeline::new(
                capacity,
                Identities::inline(HashMap::new()),
                None,
                Collect::default(),
            ),
            opened: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// The server listens, served by `SERVER_TGID`.
    fn serving(server: SockAddr) -> Self {
        Self::new(1024, FixedOwners::listening(vec![(server, SERVER_TGID)]))
    }

    fn feed(&mut self, record: &[u8]) {
        let Rig {
            flows,
            pipe,
            opened,
            closed,
        } = self;
        flows.on_record(record, &mut |event| {
            match event {
                Event::Opened(open) => opened.push(open),
                Event::Closed { conn_id, bytes, .. } => closed.push((conn_id, bytes)),
                _ => {}
            }
            pipe.on_event(event);
        });
    }

    fn feed_all<'a>(&mut self, records: impl IntoIterator<Item = &'a Vec<u8>>) {
        for record in records {
            self.feed(record);
        }
    }

    /// (method, path, status) of every exchange, checking each was seen
    /// by the packet source from the server's end.
    fn exchanges(&self, server: SockAddr, client: SockAddr) -> Vec<(String, String, u16)> {
        self.pipe
            .sink
            .0
            .iter()
            .map(|record| {
                assert_eq!(record.source, Source::Packets);
                assert_eq!(record.side, Side::Server);
                assert_eq!((record.local, record.remote), (server, client));
                match &record.exchange.call {
                    Call::Http(http) => (http.method.clone(), http.path.clone(), http.status),
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n").into_bytes()
}

/// A response whose body is `body` bytes long.
fn response(status: u16, body: usize) -> Vec<u8> {
    let mut bytes = format!("HTTP/1.1 {status} X\r\nContent-Length: {body}\r\n\r\n").into_bytes();
    bytes.extend(std::iter::repeat_n(b'b', body));
    bytes
}

const CALLS: [(&str, u16); 3] = [("/a", 200), ("/b", 404), ("/c", 201)];

fn expected(calls: &[(&str, u16)]) -> Vec<(String, String, u16)> {
    calls
        .iter()
        .map(|(path, status)| ("GET".to_string(), path.to_string(), *status))
        .collect()
}

/// A keep-alive connection's segments per exchange: the request in one
/// segment, the response in segments of `mss` bytes.
fn exchanges_of(conn: &mut Conn, body: usize, mss: usize) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
    CALLS
        .iter()
        .map(|(path, status)| {
            let req = conn.send(true, &request(path), 1460).remove(0);
            (req, conn.send(false, &response(*status, body), mss))
        })
        .collect()
}

/// The first exchange only.
fn first_exchange(conn: &mut Conn, body: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let req = conn.send(true, &request("/a"), 1460).remove(0);
    (req, conn.send(false, &response(200, body), 1460))
}

fn keep_alive_from_syn_to_fins(client: SockAddr, server: SockAddr) {
    let (mut rig, mut conn) = Rig::handshaken(client, server, 1_000, 90_000);
    assert!(rig.opened.is_empty(), "no flow before payload");
    assert_eq!(rig.flows.handshakes(), 1);
    for (req, resp) in exchanges_of(&mut conn, 100, 60) {
        rig.feed(&req);
        rig.feed_all(&resp);
    }
    rig.feed(&conn.fin(true));
    assert_eq!(rig.flows.flows(), 1);
    rig.feed(&conn.fin(false));
    assert_eq!(rig.exchanges(server, client), expected(&CALLS));
    assert_eq!(rig.opened.len(), 1);
    let open = rig.opened[0];
    assert!(open.from_start);
    assert_eq!(
        (open.tgid, open.fd, open.side),
        (SERVER_TGID, -1, Side::Server)
    );
    assert_eq!(open.conn_id & PACKET_CONN_ID_BITS, PACKET_CONN_ID_BITS);
    let sent = |parts: &[usize]| parts.iter().sum::<usize>() as u64;
    let requests = sent(&CALLS.map(|(p, _)| request(p).len()));
    let responses = sent(&CALLS.map(|(_, s)| response(s, 100).len()));
    assert_eq!(rig.closed, vec![(open.conn_id, [requests, responses])]);
    assert_eq!((rig.flows.flows(), rig.flows.handshakes()), (0, 0));
    assert_eq!(rig.pipe.connections(), 0);
    let c = rig.flows.counters;
    assert_eq!(
        (c.flows_opened, c.flows_closed, c.stale, c.no_flow),
        (1, 1, 0, 0)
    );
    assert_eq!(rig.pipe.counters.reassembly, Default::default());
}

#[test]
fn a_keep_alive_connection_from_syn_to_fins() {
    keep_alive_from_syn_to_fins(v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 8080));
}

#[test]
fn a_keep_alive_connection_over_ipv6() {
    keep_alive_from_syn_to_fins(v6(1, 43210), v6(2, 8080));
}

#[test]
fn reordered_duplicated_and_overlapping_segments_make_the_same_exchanges() {
    let (client, server) = (v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 80));
    let (mut rig, mut conn) = Rig::handshaken(client, server, 7, 70);
    for (req, resp) in exchanges_of(&mut conn, 70, 40) {
        let [s1, s2, s3] = &resp[..] else {
            panic!("{} segments", resp.len())
        };
        // A retransmission covering s1 and s2 in one segment.
        let first = event_of(s1);
        let payload = [payload_of(s1), payload_of(s2)].concat();
        let both = packet(
            first.src,
            first.dst,
            first.seq,
            first.ack,
            first.flags,
            &payload,
            first.ifindex,
            first.header.ts_ns,
        );
        rig.feed(&req);
        rig.feed(&req); // duplicate
        for segment in [s2, s1, &both, s3, s3] {
            rig.feed(segment);
        }
    }
    rig.feed(&conn.fin(false));
    rig.feed(&conn.fin(true));
    assert_eq!(rig.exchanges(server, client), expected(&CALLS));
    let r = rig.pipe.counters.reassembly;
    // Per exchange: the request twice, the retransmission, s3 twice.
    assert_eq!((r.overlaps, r.reordered, r.gaps), (9, 3, 0));
    assert_eq!(rig.closed.len(), 1);
}

/// Both sources: once the hooks announce a connection the packet path
/// sees no more of it, so the handshake it saw before is forgotten then,
/// whether the socket names its peer as IPv4 or as IPv4-mapped IPv6; the
/// RST its socket sends as it closes is the hooks' too, not a segment of no
/// flow.
#[test]
fn a_handshake_the_hooks_took_over_is_forgotten() {
    let (client, server) = (v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 80));
    let mapped = |end: SockAddr| {
        let mut addr = [0; 16];
        addr[10..12].copy_from_slice(&[0xff, 0xff]);
        addr[12..].copy_from_slice(&end.addr[..4]);
        SockAddr {
            addr,
            port: end.port,
            family: AF_INET6,
        }
    };
    for (local, remote) in [(server, client), (mapped(server), mapped(client))] {
        let (mut rig, mut conn) = Rig::handshaken(client, server, 1, 2);
        assert_eq!(rig.flows.handshakes(), 1);
        rig.flows.hooks_trace(&local, &remote);
        assert_eq!(rig.flows.handshakes(), 0);
        rig.feed(&conn.rst(true));
        let c = rig.flows.counters;
        assert_eq!((c.hooked_control, c.no_flow), (1, 0));
    }
    // A flow opened from segments that passed before the cover is dropped
    // when the hooks take it over: no more segments would end it.
    let (mut rig, mut conn) = Rig::handshaken(client, server, 1, 2);
    let (req, _) = first_exchange(&mut conn, 10);
    rig.feed(&req);
    assert_eq!(rig.flows.flows(), 1);
    rig.flows.hooks_trace(&server, &client);
    assert_eq!(rig.flows.flows(), 0);
    // The RST of a tuple the hooks do not trace is one of no flow.
    let mut rig = Rig::serving(server);
    let mut other = Conn::new(v4([10, 0, 0, 9], 1), server, 1, 2);
    rig.flows.hooks_trace(&client, &server);
    rig.feed(&other.rst(true));
    assert_eq!(rig.flows.counters.no_flow, 1);
}

/// A forged segment ahead of each real one (a request for another path,
/// its checksum left as the real one's) is not taken: the real bytes are.
#[test]
fn segments_with_a_bad_checksum_are_not_taken() {
    let (client, server) = (v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 80));
    let (mut rig, mut conn) = Rig::handshaken(client, server, 7, 70);
    for (req, resp) in exchanges_of(&mut conn, 70, 40) {
        let mut forged = req.clone();
        let at = size_of::<PacketEvent>() + 20 + "GET /".len();
        forged[at] = b'x';
        rig.feed(&forged);
        rig.feed(&req);
        for segment in &resp {
            rig.feed(segment);
        }
    }
    rig.feed(&conn.fin(false));
    rig.feed(&conn.fin(true));
    assert_eq!(rig.exchanges(server, client), expected(&CALLS));
    assert_eq!(rig.flows.counters.bad_checksum, CALLS.len() as u64);
    assert_eq!(rig.pipe.counters.reassembly.overlaps, 0);
}

/// A segment that crossed an IPv6 routing header cannot be checked (the
/// pseudo-header names the final destination): it is taken as it is.
#[test]
fn segments_past_a_routing_header_are_not_checked() {
    let (client, server) = (v6(1, 43210), v6(2, 80));
    let (mut rig, mut conn) = Rig::handshaken(client, server, 7, 70);
    for (mut req, resp) in exchanges_of(&mut conn, 70, 40) {
        req[size_of::<PacketEvent>() + 17] ^= 0xff;
        req[offset_of!(PacketEvent, routed)] = 1;
        rig.feed(&req);
        for segment in &resp {
            rig.feed(segment);
        }
    }
    assert_eq!(rig.exchanges(server, client), expected(&CALLS));
    assert_eq!(rig.flows.counters.bad_checksum, 0);
}

#[test]
fn a_segment_missing_from_a_body_costs_that_body_only() {
    let (client, server) = (v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 80));
    let (mut rig, mut conn) = Rig::handshaken(client, server, 5_000, 6_000);
    for (i, (req, resp)) in exchanges_of(&mut conn, 200, 100).into_iter().enumerate() {
        rig.feed(&req);
        for (j, segment) in resp.iter().enumerate() {
            // The second response loses the middle of its body.
            if !(i == 1 && j == 1) {
                rig.feed(segment);
            }
        }
    }
    rig.feed(&conn.fin(true));
    rig.feed(&conn.fin(false));
    let r = rig.pipe.counters.reassembly;
    assert_eq!((r.gaps, r.gap_bytes), (1, 100));
    // A gap inside a body of known length is skipped: the framing holds,
    // and every exchange is still counted.
    assert_eq!(rig.exchanges(server, client), expected(&CALLS));
}

#[test]
fn sequence_numbers_wrap_past_2_to_the_32_mid_body() {
    let (client, server) = (v6(1, 50000), v6(2, 443));
    let mut rig = Rig::serving(server);
    // The server's first response body crosses the wrap.
    let mut conn = Conn::new(client, server, u32::MAX - 30, u32::MAX - 100);
    rig.feed(&conn.syn());
    rig.feed(&conn.syn_ack());
    for (req, resp) in exchanges_of(&mut conn, 300, 64) {
        rig.feed(&req);
        rig.feed_all(&resp);
    }
    assert!(conn.sseq < 10_000 && conn.cseq < 10_000, "both wrapped");
    rig.feed(&conn.fin(true));
    rig.feed(&conn.fin(false));
    assert_eq!(rig.exchanges(server, client), expected(&CALLS));
    let responses = CALLS.map(|(_, s)| response(s, 300).len() as u64);
    assert_eq!(rig.closed[0].1[1], responses.iter().sum::<u64>());
    assert_eq!(rig.pipe.counters.reassembly, Default::default());
    assert_eq!(rig.flows.counters.stale, 0);
}

/// A connection joined in the middle of its first response: the rest of
/// it, then two more exchanges.
fn joined_mid_stream(rig: &mut Rig, client: SockAddr, server: SockAddr) {
    let mut conn = Conn::new(client, server, 100, 200_000);
    let mut all = exchanges_of(&mut conn, 500, 100);
    let (_, first_response) = all.remove(0);
    rig.feed_all(&first_response[3..]);
    for (req, resp) in &all {
        rig.feed(req);
        rig.feed_all(resp);
    }
    rig.feed(&conn.fin(true));
    rig.feed(&conn.fin(false));
    assert_eq!(rig.exchanges(server, client), expected(&CALLS[1..]));
    assert_eq!(rig.opened.len(), 1);
    let open = rig.opened[0];
    assert!(!open.from_start);
    assert_eq!((open.tuple.local, open.tuple.remote), (server, client));
    assert_eq!(rig.flows.counters.flows_mid_stream, 1);
    assert_eq!(rig.flows.flows(), 0);
}

#[test]
fn a_flow_joined_mid_stream_serves_from_its_listening_end() {
    // The server's port is the higher one: only the listener tells.
    let (client, server) = (v4([10, 0, 0, 1], 80), v4([10, 0, 0, 2], 50000));
    let mut rig = Rig::serving(server);
    joined_mid_stream(&mut rig, client, server);
    assert_eq!(rig.opened[0].tgid, SERVER_TGID);
}

#[test]
fn a_flow_joined_mid_stream_without_listeners_serves_from_the_lower_port() {
    let (client, server) = (v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 8080));
    let mut rig = Rig::new(64, FixedOwners::default());
    joined_mid_stream(&mut rig, client, server);
    assert_eq!(rig.opened[0].tgid, 0, "no owner known");
}

#[test]
fn a_missed_syn_ack_takes_the_servers_start_from_the_clients_ack() {
    let (client, server) = (v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 8080));
    let mut rig = Rig::serving(server);
    let mut conn = Conn::new(client, server, 1, 3_000_000_000);
    rig.feed(&conn.syn());
    for (req, resp) in exchanges_of(&mut conn, 100, 50) {
        rig.feed(&req);
        // The response's segments swapped: its first is not its start.
        rig.feed(&resp[1]);
        rig.feed(&resp[0]);
        rig.feed_all(&resp[2..]);
    }
    rig.feed(&conn.fin(true));
    rig.feed(&conn.fin(false));
    assert!(rig.opened[0].from_start);
    assert_eq!(rig.exchanges(server, client), expected(&CALLS));
    assert_eq!(rig.flows.counters.stale, 0);
    assert_eq!(rig.pipe.counters.reassembly.gaps, 0);
}

#[test]
fn a_reset_ends_the_flow_and_only_a_new_syn_opens_the_tuple_again() {
    let (client, server) = (v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 8080));
    let (mut rig, mut conn) = Rig::handshaken(client, server, 10, 20);
    let (req, resp) = first_exchange(&mut conn, 10);
    rig.feed(&req);
    rig.feed_all(&resp);
    rig.feed(&conn.rst(true));
    assert_eq!(rig.flows.flows(), 0);
    assert_eq!(rig.closed.len(), 1);
    assert_eq!(rig.flows.counters.flows_reset, 1);
    // The response retransmitted after the reset: no new flow.
    rig.feed(&resp[0]);
    assert_eq!(rig.flows.counters.after_close, 1);
    assert_eq!((rig.opened.len(), rig.flows.flows()), (1, 0));
    // A new connection on the same tuple.
    let mut again = Conn::new(client, server, 777_777, 888_888);
    rig.feed(&again.syn());
    rig.feed(&again.syn_ack());
    let (req, resp) = first_exchange(&mut again, 10);
    rig.feed(&req);
    rig.feed_all(&resp);
    rig.feed(&again.fin(false));
    rig.feed(&again.fin(true));
    assert_eq!(rig.opened.len(), 2);
    assert!(rig.opened[1].from_start);
    assert_ne!(rig.opened[0].conn_id, rig.opened[1].conn_id);
    assert_eq!(
        rig.exchanges(server, client),
        expected(&[CALLS[0], CALLS[0]])
    );
    assert_eq!(rig.closed.len(), 2);
    assert_eq!(rig.flows.counters.after_close, 1);
}

#[test]
fn a_flow_seen_on_two_interfaces_counts_once() {
    let (client, server) = (v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 8080));
    let mut rig = Rig::serving(server);
    let mut conn = Conn::new(client, server, 10, 20);
    let mut records = vec![conn.syn(), conn.syn_ack()];
    for (req, resp) in exchanges_of(&mut conn, 100, 60) {
        records.push(req);
        records.extend(resp);
    }
    records.push(conn.fin(true));
    records.push(conn.fin(false));
    for record in &records {
        rig.feed(record);
        // The same segment on the bridge behind the veth.
        let mut copy = record.clone();
        set_u32(&mut copy, IFINDEX, 7);
        rig.feed(&copy);
    }
    assert_eq!(rig.exchanges(server, client), expected(&CALLS));
    assert_eq!(rig.flows.counters.other_interface, records.len() as u64);
    assert_eq!(rig.flows.counters.after_close, 0);
    assert_eq!((rig.opened.len(), rig.closed.len()), (1, 1));
}

#[test]
fn a_syn_flood_never_reaches_the_pipeline() {
    let server = v6(2, 443);
    let mut rig = Rig::new(1024, FixedOwners::listening(vec![(server, SERVER_TGID)]));
    for i in 0..100_000u32 {
        let mut client = v6(0, 1024 + (i % 60_000) as u16);
        client.addr[8..12].copy_from_slice(&i.to_be_bytes());
        rig.feed(&packet(
            client,
            server,
            i,
            0,
            tcp_flag::SYN,
            &[],
            2,
            u64::from(i),
        ));
    }
    assert!(rig.opened.is_empty());
    assert_eq!(rig.pipe.connections(), 0);
    assert_eq!((rig.flows.flows(), rig.flows.handshakes()), (0, 1024));
    assert_eq!(rig.flows.counters.syn_evicted, 100_000 - 1024);
    assert!(rig.flows.handshakes.order_len() <= 2 * 1024 + 65);
    // A real connection still gets through.
    let mut conn = Conn::new(v6(1, 40000), server, 1, 2);
    conn.ts = 1 << 40;
    rig.feed(&conn.syn());
    rig.feed(&conn.syn_ack());
    let (req, resp) = first_exchange(&mut conn, 10);
    rig.feed(&req);
    rig.feed_all(&resp);
    assert_eq!(rig.pipe.sink.0.len(), 1);
}

#[test]
fn malformed_records_are_counted_and_skipped() {
    let (a, b) = (v4([10, 0, 0, 1], 1), v4([10, 0, 0, 2], 2));
    let good = packet(a, b, 1, 1, PSH_ACK, b"hello", 2, 1);
    let cap_overrun = good[..good.len() - 1].to_vec();
    let mut cap_over_payload = good.clone();
    set_u32(&mut cap_over_payload, PAYLOAD_LEN, 4);
    let mut bad_family = good.clone();
    let src_family = offset_of!(PacketEvent, src) + offset_of!(SockAddr, family);
    bad_family[src_family..src_family + 2].copy_from_slice(&3u16.to_ne_bytes());
    let mut mixed_family = good.clone();
    let dst_family = offset_of!(PacketEvent, dst) + offset_of!(SockAddr, family);
    mixed_family[dst_family..dst_family + 2].copy_from_slice(&AF_INET6.to_ne_bytes());
    let mut other_kind = good.clone();
    other_kind[0] = kind::DATA;
    let mut huge_cap = good.clone();
    set_u32(&mut huge_cap, PAYLOAD_LEN, u32::MAX);
    set_u32(&mut huge_cap, CAP_LEN, u32::MAX);
    let mut rig = Rig::new(16, FixedOwners::default());
    for record in [
        &[][..],
        &good[..10],
        &good[..size_of::<PacketEvent>() - 1],
        &cap_overrun[..],
        &cap_over_payload[..],
        &bad_family[..],
        &mixed_family[..],
        &other_kind[..],
        &huge_cap[..],
    ] {
        rig.feed(record);
    }
    let c = rig.flows.counters;
    assert_eq!((c.records, c.malformed, c.segments), (9, 9, 0));
    assert!(rig.opened.is_empty());
    rig.feed(&good);
    assert_eq!((rig.flows.counters.segments, rig.opened.len()), (1, 1));
}

#[test]
fn a_full_table_evicts_the_least_recently_active_flows() {
    let server = v4([10, 0, 0, 2], 8080);
    let mut rig = Rig::new(16, FixedOwners::listening(vec![(server, SERVER_TGID)]));
    for i in 0..20u16 {
        let client = v4([10, 0, 0, 1], 40000 + i);
        rig.feed(&packet(
            client,
            server,
            1,
            1,
            PSH_ACK,
            &request("/x"),
            2,
            1000 + u64::from(i),
        ));
        // Flow 0 stays active: the next oldest go.
        let first = v4([10, 0, 0, 1], 40000);
        let more = request("/y");
        let at = 1 + request("/x").len() as u32 * (u32::from(i) + 1);
        rig.feed(&packet(
            first,
            server,
            at,
            1,
            PSH_ACK,
            &more,
            2,
            1000 + u64::from(i),
        ));
    }
    assert_eq!(rig.flows.flows(), 16);
    assert_eq!(rig.flows.counters.flows_evicted, 4);
    let evicted: Vec<u64> = rig.closed.iter().map(|(id, _)| *id).collect();
    let expected: Vec<u64> = rig.opened[1..5].iter().map(|o| o.conn_id).collect();
    assert_eq!(evicted, expected);
    assert_eq!(rig.pipe.connections(), 16);
}

#[test]
fn idle_flows_and_handshakes_expire() {
    let (client, server) = (v4([10, 0, 0, 1], 43210), v4([10, 0, 0, 2], 8080));
    let (mut rig, mut conn) = Rig::handshaken(client, server, 10, 20);
    rig.feed(&conn.send(true, &request("/a"), 1460)[0]);
    let now = conn.ts;
    let mut other = Conn::new(v4([10, 0, 0, 3], 5555), server, 1, 2);
    other.ts = now - 1_000;
    rig.feed(&other.syn());
    let Rig {
        flows,
        pipe,
        closed,
        ..
    } = &mut rig;
    let mut out = |event: Event<'_>| {
        if let Event::Closed { conn_id, bytes, .. } = event {
            closed.push((conn_id, bytes));
        }
        pipe.on_event(event);
    };
    flows.expire(now + 5, 10, &mut out);
    assert_eq!((flows.flows(), flows.handshakes()), (1, 1));
    flows.expire(now + 1_000_000, 10, &mut out);
    assert_eq!((flows.flows(), flows.handshakes()), (0, 0));
    let c = flows.counters;
    assert_eq!((c.flows_expired, c.syn_expired), (1, 1));
    assert_eq!(
        rig.closed,
        vec![(rig.opened[0].conn_id, [request("/a").len() as u64, 0])]
    );
    // The request never answered ends as an exchange on close.
    assert_eq!(rig.pipe.sink.0.len(), 1);
    assert_eq!(rig.pipe.connections(), 0);
}

/// Throughput of the whole path (`Flows` into the pipeline and the HTTP
/// parser); the target is a million segments a second per core. Run with
/// `cargo test --release -p tracer --lib throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn throughput() {
    let server = v4([10, 0, 0, 2], 8080);
    let mut records = Vec::new();
    for i in 0..1_000u32 {
        let client = v4([10, 1, (i >> 8) as u8, i as u8], 40_000);
        let mut conn = Conn::new(client, server, i * 7, i * 13);
        conn.ts = u64::from(i) * 1_000_000;
        records.push(conn.syn());
        records.push(conn.syn_ack());
        for _ in 0..50 {
            records.extend(conn.send(true, &request("/items/42"), 1460));
            records.extend(conn.send(false, &response(200, 120), 1460));
        }
        records.push(conn.fin(true));
        records.push(conn.fin(false));
    }
    let mut rig = Rig::serving(server);
    let start = std::time::Instant::now();
    for record in &records {
        let Rig { flows, pipe, .. } = &mut rig;
        flows.on_record(record, &mut |event| pipe.on_event(event));
    }
    let elapsed = start.elapsed();
    assert_eq!(rig.pipe.sink.0.len(), 50_000);
    println!(
        "{} segments in {elapsed:?}: {:.2} million/s",
        records.len(),
        records.len() as f64 / elapsed.as_secs_f64() / 1e6
    );
}

#[test]
fn the_tracers_own_flows_are_not_traced() {
    let (client, server) = (v4([127, 0, 0, 1], 43211), v4([127, 0, 0, 1], 9464));
    let run = |owner: u32| {
        let mut rig = Rig::new(1024, FixedOwners::listening(vec![(server, owner)]));
        let mut conn = Conn::new(client, server, 5_000, 70_000);
        rig.feed(&conn.syn());
        rig.feed(&conn.syn_ack());
        for (req, resp) in exchanges_of(&mut conn, 100, 1460) {
            rig.feed(&req);
            rig.feed_all(&resp);
        }
        (rig.pipe.sink.0.len(), rig.pipe.connections())
    };
    assert_eq!(run(SERVER_TGID), (CALLS.len(), 1), "another process's");
    assert_eq!(run(std::process::id()), (0, 0), "this process's own");
}

const CLIENT_TGID: u32 = 777;

/// The records of `rig`'s pipeline from `side`: (method, path, status).
fn calls_from(rig: &Rig, side: Side) -> Vec<(String, String, u16)> {
    rig.pipe
        .sink
        .0
        .iter()
        .filter(|record| record.side == side)
        .map(|record| match &record.exchange.call {
            Call::Http(http) => (http.method.clone(), http.path.clone(), http.status),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// A keep-alive connection from SYN to FINs, with the owners given, and
/// the bytes each side sent.
fn through(owners: FixedOwners, client: SockAddr, server: SockAddr) -> (Rig, [u64; 2]) {
    let mut rig = Rig::new(1024, owners);
    let mut conn = Conn::new(client, server, 5_000, 60_000);
    rig.feed(&conn.syn());
    rig.feed(&conn.syn_ack());
    for (req, resp) in exchanges_of(&mut conn, 100, 60) {
        rig.feed(&req);
        rig.feed_all(&resp);
    }
    rig.feed(&conn.fin(true));
    rig.feed(&conn.fin(false));
    let sent = |parts: &[usize]| parts.iter().sum::<usize>() as u64;
    let requests = sent(&CALLS.map(|(p, _)| request(p).len()));
    let responses = sent(&CALLS.map(|(_, s)| response(s, 100).len()));
    (rig, [requests, responses])
}

#[test]
fn a_flow_between_two_local_ends_is_reported_from_each() {
    let (client, server) = (v4([127, 0, 0, 1], 50000), v4([127, 0, 0, 1], 8080));
    let owners = FixedOwners::listening(vec![(server, SERVER_TGID)]).with_client(
        &client,
        &server,
        CLIENT_TGID,
    );
    let (rig, [requests, responses]) = through(owners, client, server);
    assert_eq!(calls_from(&rig, Side::Server), expected(&CALLS));
    assert_eq!(calls_from(&rig, Side::Client), expected(&CALLS));
    let [server_view, client_view] = rig.opened[..] else {
        panic!("{:?}", rig.opened)
    };
    assert_eq!(
        (server_view.side, server_view.tgid, server_view.tuple.local),
        (Side::Server, SERVER_TGID, server)
    );
    assert_eq!(
        (client_view.side, client_view.tgid),
        (Side::Client, CLIENT_TGID)
    );
    assert_eq!(
        (client_view.tuple.local, client_view.tuple.remote),
        (client, server)
    );
    assert_ne!(server_view.conn_id, client_view.conn_id);
    // (inbound, outbound) as each end sees them.
    assert_eq!(
        rig.closed,
        vec![
            (client_view.conn_id, [responses, requests]),
            (server_view.conn_id, [requests, responses]),
        ]
    );
    assert_eq!(rig.flows.counters.client_views, 1);
    assert_eq!(rig.pipe.connections(), 0);
}

#[test]
fn a_local_client_of_a_remote_server_is_reported_from_its_end_only() {
    let (client, server) = (v4([10, 0, 0, 1], 50000), v4([10, 9, 9, 9], 80));
    // A local process listens on every address of port 80: not the
    // remote server's.
    let owners = FixedOwners::listening(vec![(v4([0, 0, 0, 0], 80), SERVER_TGID)]).with_client(
        &client,
        &server,
        CLIENT_TGID,
    );
    let (rig, _) = through(owners, client, server);
    assert_eq!(calls_from(&rig, Side::Server), []);
    assert_eq!(calls_from(&rig, Side::Client), expected(&CALLS));
    assert!(rig
        .pipe
        .sink
        .0
        .iter()
        .all(|r| (r.tgid, r.local, r.remote) == (CLIENT_TGID, client, server)));
}

#[test]
fn a_flow_with_no_local_end_known_is_reported_from_its_server_end() {
    let (client, server) = (v4([10, 0, 0, 1], 50000), v4([10, 9, 9, 9], 80));
    let (rig, _) = through(FixedOwners::default(), client, server);
    assert_eq!(calls_from(&rig, Side::Server), expected(&CALLS));
    assert_eq!(calls_from(&rig, Side::Client), []);
    assert_eq!(rig.opened[0].tgid, 0, "no process known");
    assert_eq!(rig.flows.counters.client_views, 0);
}

/// Each flow between two local ends is two connections of the pipeline's:
/// the flow table counts views against its capacity, so it ends its own
/// oldest flows first and the pipeline never pushes out a live view.
#[test]
fn views_count_against_the_capacity() {
    const CAPACITY: usize = 16;
    let server = v4([127, 0, 0, 1], 8080);
    let clients: Vec<SockAddr> = (0..12).map(|i| v4([127, 0, 0, 1], 50_000 + i)).collect();
    let owners = clients.iter().fold(
        FixedOwners::listening(vec![(server, SERVER_TGID)]),
        |owners, client| owners.with_client(client, &server, CLIENT_TGID),
    );
    let mut rig = Rig::new(CAPACITY, owners);
    let mut conns: Vec<Conn> = clients
        .iter()
        .enumerate()
        .map(|(i, &client)| Conn::new(client, server, 1_000 * i as u32, 7))
        .collect();
    for conn in &mut conns {
        rig.feed(&conn.syn());
        rig.feed(&conn.syn_ack());
        let (req, resp) = first_exchange(conn, 10);
        rig.feed(&req);
        rig.feed_all(&resp);
    }
    assert!(rig.pipe.connections() <= CAPACITY);
    assert!(
        rig.flows.counters.flows_evicted > 0,
        "the flow table made room"
    );
    assert_eq!(
        rig.pipe.counters.evictions, 0,
        "the pipeline never pushed out a live view"
    );
    assert_eq!(rig.pipe.counters.unknown_conn, 0);
    // Every exchange seen from both ends.
    assert_eq!(calls_from(&rig, Side::Server).len(), 12);
    assert_eq!(calls_from(&rig, Side::Client).len(), 12);
}
