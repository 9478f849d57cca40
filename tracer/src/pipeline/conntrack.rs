//! Connection tracking: takes the typed events of either source
//! (`source::events`; the syscall hooks' records are decoded on the way in),
//! keeps one bounded table of live connections keyed by connection id, feeds each
//! direction's bytes through `reassembly` into the connection's protocol
//! parser, and hands finished exchanges to a `Sink` as `Record`s. It also
//! tells the kernel to stop tracing connections that turn out not to speak a
//! protocol we parse, and adopts connections that predate the tracer.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use rustc_hash::FxBuildHasher;
use tracer_common::{conn_key, kind, role, ConnInfo, FlowKey, SockAddr, Tuple, USER_CONN_ID_BIT};

use crate::{
    metadata::{
        procfs::{netns_of, ExistingConn},
        Identities, PeerService, Slot,
    },
    pipeline::frame_heads,
    pipeline::reassembly::{Reassembler, ReassemblyCounters},
    pipeline::records::{ip_of, Record, Sink},
    protocols::{Exchange, Parser, ParserCounters, Piece, Protocol, Side, Verdict},
    source::events::{self, Data, Event, Malformed, Opened, Source},
    source::packets::Flows,
};

/// The kernel's socket table, as far as the pipeline needs it.
pub trait KernelSockets {
    /// Stop tracing this socket, if it is still connection `conn_id` (the
    /// fd may already belong to a newer connection).
    fn forget(&mut self, key: u64, conn_id: u64);
    /// Start tracing a socket the kernel did not see open; false if it
    /// already traces it or the table is full.
    fn adopt(&mut self, key: u64, info: &ConnInfo) -> bool;
    /// What the kernel knows of this socket.
    fn lookup(&self, key: u64) -> Option<ConnInfo>;
    /// Both sources: the packet path skips the flows the hooks trace
    /// (`COVERED`). The hooks cover a flow in every namespace as they
    /// announce it, and the kernel uncovers it when its socket closes; the
    /// daemon narrows a loopback flow the hooks announced to its namespace
    /// (see `FlowAt`), if the kernel still has it (a closed socket's entry
    /// must not come back).
    fn narrow(&mut self, _flow: &FlowAt) {}
    /// Covers a connection adopted at start-up, which the hooks never
    /// announced.
    fn cover(&mut self, _flow: &FlowAt) {}
}

/// Counts the pipeline keeps; the daemon turns them into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub data_events: u64,
    pub open_events: u64,
    pub close_events: u64,
    pub exit_events: u64,
    pub event_bytes: u64,
    /// A record too short or of an unknown kind.
    pub decode_errors: u64,
    /// Data for a connection neither we nor the kernel know.
    pub unknown_conn: u64,
    /// Connections pushed out of a full table.
    pub evictions: u64,
    /// Records older than one already handled: the rings' merge by time was
    /// overtaken (see `rings`).
    pub late_events: u64,
    /// Exchanges dropped because too many waited for their process's
    /// identity.
    pub pending_full: u64,
    /// Views of flows the packet path saw (one per local end) that the
    /// syscall hooks trace too, dropped from the packet side (its segments
    /// passed before the kernel knew).
    pub packet_flows_covered: u64,
    pub reassembly: ReassemblyCounters,
    /// Per protocol, indexed by [`Protocol::index`].
    pub parser: ParserTally,
}

/// Parser counters of every protocol.
pub type ParserTally = [ParserCounters; PROTOCOLS];

/// Number of registered protocols.
pub const PROTOCOLS: usize = Protocol::ALL.len();

/// Per-connection state.
struct Conn {
    tgid: u32,
    fd: i32,
    side: Side,
    source: Source,
    tuple: Tuple,
    /// Filled by the metadata stage; records wait for it.
    identity: Slot,
    /// The callee (client side) and when it was looked up: at the first
    /// exchange, and again while it is unknown (the caches may still fill).
    peer: Option<(Option<Arc<PeerService>>, u64)>,
    streams: [Reassembler; 2],
    parser: Parser,
    last_ns: u64,
    /// This server port's protocol is already recorded.
    port_known: bool,
    /// The network namespace of a loopback flow (see `FlowAt`).
    netns: u32,
}

impl Conn {
    /// Streams of a connection seen from its first byte.
    fn from_start() -> [Reassembler; 2] {
        [Reassembler::new(0), Reassembler::new(0)]
    }

    /// Streams of a connection picked up mid-stream: the first chunk of
    /// each sets its position.
    fn mid_stream() -> [Reassembler; 2] {
        [
            Reassembler::resume_anywhere(),
            Reassembler::resume_anywhere(),
        ]
    }
}

/// A packet-path flow without a segment this long ends (a keep-alive
/// connection that speaks again is picked up mid-stream).
const PACKET_FLOW_IDLE_NS: u64 = 300_000_000_000;

/// A flow, and for a loopback flow the network namespace it lives in: a
/// loopback flow never leaves its namespace, so two pods' loopback flows
/// with the same ends are two flows, and the packet path (which sees the
/// tracer's namespace only) must not skip a flow of its own namespace
/// because a pod's has the same ends. Any other flow is seen alike from
/// every namespace it crosses (a pod's flow on the host's veth): 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowAt {
    pub key: FlowKey,
    pub netns: u32,
}

/// The flow of a connection whose both ends are known; `netns` is asked
/// for a loopback one only.
fn flow_of(tuple: &Tuple, netns: impl FnOnce() -> u32) -> Option<FlowAt> {
    if tuple.local.family == 0 || tuple.remote.family == 0 {
        return None;
    }
    Some(FlowAt {
        key: FlowKey::new(&tuple.local, &tuple.remote),
        netns: if is_loopback(&tuple.local) {
            netns()
        } else {
            0
        },
    })
}

/// Where a packet flow's view from `side` is kept in `packet_flows` (the
/// client's first, as in the packet path's flows).
fn view(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// 127.0.0.0/8, ::1, and 127.0.0.0/8 mapped into IPv6.
fn is_loopback(addr: &SockAddr) -> bool {
    match ip_of(addr) {
        Some(IpAddr::V4(ip)) => ip.is_loopback(),
        Some(IpAddr::V6(ip)) => ip
            .to_ipv4_mapped()
            .map_or(ip.is_loopback(), |v4| v4.is_loopback()),
        None => false,
    }
}

/// Processes whose network namespace is remembered; past that the cache
/// starts afresh (a read of /proc per process, no state lost).
const MAX_NETNS_CACHED: usize = 16_384;

/// Keys are connection ids and pids we choose or the kernel does: no
/// flooding risk, so skip SipHash on the hot path.
type IdMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// Connections we told the kernel to stop tracing, remembered so that their
/// events already in the ring buffer are dropped quietly, not as unknown.
const MAX_FORGOTTEN: usize = 4096;

/// Most server ports whose protocol is remembered, so that garbage sent to
/// them later counts as a resync rather than as another protocol.
const MAX_KNOWN_PORTS: usize = 4096;

/// The whole user-space pipeline after the ring buffer.
pub struct Pipeline<S: Sink> {
    conns: IdMap<u64, Conn>,
    by_process: IdMap<u32, HashSet<u64, FxBuildHasher>>,
    capacity: usize,
    identities: Identities,
    /// Finished exchanges whose process identity is not resolved yet.
    pending: Vec<(Slot, Record)>,
    /// The protocol each (process, server port) spoke.
    known_ports: HashMap<(u32, u16), Protocol>,
    kernel: Option<Box<dyn KernelSockets + Send>>,
    forgotten: VecDeque<u64>,
    forgotten_set: HashSet<u64, FxBuildHasher>,
    /// Live connections of the syscall hooks per flow (two when both ends
    /// are local), and the packet path's connections of each flow (its
    /// views from the client's end and the server's, 0 for none): one flow
    /// is counted by one source.
    syscall_flows: HashMap<FlowAt, u32, FxBuildHasher>,
    packet_flows: HashMap<FlowAt, [u64; 2], FxBuildHasher>,
    /// The network namespaces of processes with loopback flows, while both
    /// sources run (see `FlowAt`); forgotten when a process exits.
    netns: IdMap<u32, u32>,
    /// This process's network namespace: the packet path's.
    own_netns: u32,
    /// How a process's network namespace is found: /proc.
    netns_of: fn(u32) -> u32,
    /// The packet path's flows, which turn its records into events (taken
    /// out while they hand this pipeline events: see `packet_path`).
    packets: Option<Box<Flows>>,
    /// The packet path runs.
    packet_path: bool,
    /// This process: the packet path's flows of its own are not traced.
    own_tgid: u32,
    next_user_id: u64,
    exchanges: Vec<Exchange>,
    /// Newest record timestamp handled so far.
    newest_ns: u64,
    pub counters: Counters,
    pub sink: S,
}

impl<S: Sink> Pipeline<S> {
    /// `kernel` is None when replaying recorded events (tests, benchmarks).
    pub fn new(
        capacity: usize,
        identities: Identities,
        kernel: Option<Box<dyn KernelSockets + Send>>,
        sink: S,
    ) -> Self {
        Self {
            conns: IdMap::default(),
            by_process: IdMap::default(),
            capacity: capacity.max(1),
            identities,
            pending: Vec::new(),
            known_ports: HashMap::new(),
            kernel,
            forgotten: VecDeque::new(),
            forgotten_set: HashSet::default(),
            syscall_flows: HashMap::default(),
            packet_flows: HashMap::default(),
            netns: IdMap::default(),
            own_netns: 0,
            netns_of,
            packets: None,
            packet_path: false,
            own_tgid: std::process::id(),
            next_user_id: 0,
            exchanges: Vec::new(),
            newest_ns: 0,
            counters: Counters::default(),
            sink,
        }
    }

    /// Live connections in the table.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Reads the packet path's records too (`--source packets|both`).
    pub fn with_packets(mut self, flows: Flows) -> Self {
        self.packets = Some(Box::new(flows));
        self.packet_path = true;
        self.own_netns = (self.netns_of)(self.own_tgid);
        self
    }

    /// Finds processes' network namespaces with `lookup` instead of /proc:
    /// for tests, whose processes are made up.
    pub fn with_netns_lookup(mut self, lookup: fn(u32) -> u32) -> Self {
        self.netns_of = lookup;
        self.own_netns = lookup(self.own_tgid);
        self
    }

    /// The packet path's flows, if it runs.
    pub fn packets(&self) -> Option<&Flows> {
        self.packets.as_deref()
    }

    /// One ring-buffer record, of either source.
    pub fn handle(&mut self, record: &[u8]) {
        self.counters.event_bytes += record.len() as u64;
        if record.first() == Some(&kind::PACKET) {
            if let Some(mut flows) = self.packets.take() {
                flows.on_record(record, &mut |event| self.on_event(event));
                self.packets = Some(flows);
            } else {
                self.counters.decode_errors += 1;
            }
            return;
        }
        match events::decode(record) {
            Ok(event) => self.on_event(event),
            Err(Malformed) => self.counters.decode_errors += 1,
        }
    }

    /// One event, from either source.
    pub fn on_event(&mut self, event: Event<'_>) {
        let ts = event.ts_ns();
        if ts < self.newest_ns {
            self.counters.late_events += 1;
        } else {
            self.newest_ns = ts;
        }
        match event {
            Event::Data(data) => {
                self.counters.data_events += 1;
                self.on_data(&data);
            }
            Event::Opened(open) => {
                self.counters.open_events += 1;
                self.on_open(&open);
            }
            Event::Closed {
                conn_id,
                ts_ns,
                bytes,
            } => {
                self.counters.close_events += 1;
                self.close(conn_id, ts_ns, bytes);
            }
            Event::ProcessExit { tgid, ts_ns } => {
                self.counters.exit_events += 1;
                self.on_process_exit(tgid, ts_ns);
            }
        }
    }

    fn on_open(&mut self, event: &Opened) {
        // The kernel hooks skip the tracer's own sockets; packets name no
        // process, so the packet path's flows of its own are dropped here.
        if event.source == Source::Packets && event.tgid == self.own_tgid {
            self.remember_gone(event.conn_id);
            return;
        }
        let claim = self.claim_flow(
            &event.tuple,
            event.source,
            event.side,
            event.tgid,
            event.conn_id,
            false,
        );
        let Some(netns) = claim else {
            self.counters.packet_flows_covered += 1;
            self.remember_gone(event.conn_id);
            return;
        };
        let side = event.side;
        let tgid = event.tgid;
        let known = match side {
            Side::Server => self
                .known_ports
                .get(&(tgid, event.tuple.local.port))
                .copied(),
            Side::Client => None,
        };
        let (parser, streams) = match (known, event.from_start) {
            (Some(protocol), true) => (Parser::known(protocol, side), Conn::from_start()),
            (None, true) => (Parser::detect(side), Conn::from_start()),
            (_, false) => (Parser::mid_stream(side), Conn::mid_stream()),
        };
        let identity = self.identities.slot(tgid, &event.comm);
        self.insert(
            event.conn_id,
            Conn {
                tgid,
                fd: event.fd,
                side,
                source: event.source,
                tuple: event.tuple,
                identity,
                peer: None,
                streams,
                parser,
                last_ns: event.ts_ns,
                port_known: known.is_some() && event.from_start,
                netns,
            },
        );
    }

    /// Records which source counts this connection's flow: the flow's
    /// network namespace (see `FlowAt`), or None for a packet flow the
    /// syscall hooks already trace. A flow the hooks start tracing takes
    /// over from the packet path's copy, which is dropped without records
    /// (its segments passed before the kernel knew).
    /// `adopted`: a connection found at start-up, not announced by the
    /// hooks (so not covered by them).
    fn claim_flow(
        &mut self,
        tuple: &Tuple,
        source: Source,
        side: Side,
        tgid: u32,
        conn_id: u64,
        adopted: bool,
    ) -> Option<u32> {
        // One source, nothing to share (and no bookkeeping per connection).
        if !self.packet_path {
            return Some(0);
        }
        let Some(flow) = self.flow_at(tuple, source, tgid) else {
            return Some(0);
        };
        match source {
            Source::Syscalls => {
                *self.syscall_flows.entry(flow).or_default() += 1;
                if let Some(kernel) = self.kernel.as_mut() {
                    if adopted {
                        kernel.cover(&flow);
                    } else if flow.netns != 0 {
                        kernel.narrow(&flow);
                    }
                }
                if let Some(flows) = self.packets.as_mut() {
                    flows.hooks_trace(&tuple.local, &tuple.remote);
                }
                let copies = self.packet_flows.remove(&flow).unwrap_or_default();
                for copy in copies.into_iter().filter(|&id| id != 0) {
                    if self.remove(copy).is_some() {
                        self.counters.packet_flows_covered += 1;
                    }
                    self.remember_gone(copy);
                }
                Some(flow.netns)
            }
            Source::Packets if self.syscall_flows.contains_key(&flow) => None,
            Source::Packets => {
                self.packet_flows.entry(flow).or_default()[view(side)] = conn_id;
                Some(flow.netns)
            }
        }
    }

    /// The flow of a connection of `source` opened by `tgid` (see `FlowAt`).
    fn flow_at(&mut self, tuple: &Tuple, source: Source, tgid: u32) -> Option<FlowAt> {
        flow_of(tuple, || match source {
            Source::Packets => self.own_netns,
            Source::Syscalls => {
                if self.netns.len() >= MAX_NETNS_CACHED {
                    self.netns.clear();
                }
                if let Some(&netns) = self.netns.get(&tgid) {
                    return netns;
                }
                // 0: the process is gone already; not remembered, as its
                // pid may come back as another process's.
                let netns = (self.netns_of)(tgid);
                if netns != 0 {
                    self.netns.insert(tgid, netns);
                }
                netns
            }
        })
    }

    /// The connection left the table: its flow is no longer its source's.
    /// Its kernel cover stays until its socket closes there, also when the
    /// hooks gave up on it (no protocol we parse, such as TLS; or evicted):
    /// the packet path would only read it mid-stream for nothing.
    fn release_flow(&mut self, conn_id: u64, conn: &Conn) {
        if !self.packet_path {
            return;
        }
        let Some(flow) = flow_of(&conn.tuple, || conn.netns) else {
            return;
        };
        match conn.source {
            Source::Syscalls => {
                let Some(live) = self.syscall_flows.get_mut(&flow) else {
                    return;
                };
                *live -= 1;
                if *live == 0 {
                    self.syscall_flows.remove(&flow);
                }
            }
            Source::Packets => {
                let Some(views) = self.packet_flows.get_mut(&flow) else {
                    return;
                };
                if views[view(conn.side)] == conn_id {
                    views[view(conn.side)] = 0;
                }
                if *views == [0, 0] {
                    self.packet_flows.remove(&flow);
                }
            }
        }
    }

    fn insert(&mut self, conn_id: u64, conn: Conn) {
        // The same id twice means the first OPEN was for a socket we never
        // saw close: finish it as closed at its last activity.
        if let Some(old) = self.remove(conn_id) {
            let last = old.last_ns;
            self.finish(old, last);
        }
        if self.conns.len() >= self.capacity {
            self.evict_oldest();
        }
        self.by_process
            .entry(conn.tgid)
            .or_default()
            .insert(conn_id);
        self.conns.insert(conn_id, conn);
    }

    /// Drops the least recently active sixteenth of the table at once, so a
    /// table at capacity pays for the scan once per many new connections.
    fn evict_oldest(&mut self) {
        let mut ages: Vec<(u64, u64)> = self.conns.iter().map(|(id, c)| (c.last_ns, *id)).collect();
        let cut = (ages.len() / 16).max(1);
        ages.select_nth_unstable(cut - 1);
        for &(_, id) in &ages[..cut] {
            if let Some(conn) = self.remove(id) {
                self.counters.evictions += 1;
                self.stop_tracing(id, &conn);
                let last = conn.last_ns;
                self.finish(conn, last);
            }
        }
    }

    /// `event.heads`: the frame headers found beyond the capture (see
    /// `frame_heads`), used while the connection may speak HTTP/2.
    fn on_data(&mut self, event: &Data<'_>) {
        let conn_id = event.conn_id;
        if !self.conns.contains_key(&conn_id) {
            if self.forgotten_set.contains(&conn_id) {
                return;
            }
            if !self.adopt_unknown(event) {
                self.counters.unknown_conn += 1;
                // Count each lost connection once and spare the map lookup
                // for its remaining events.
                self.remember_gone(conn_id);
                return;
            }
        }
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let ts = event.ts_ns;
        conn.last_ns = ts;
        let outbound = event.outbound;
        let Conn {
            streams, parser, ..
        } = conn;
        let counters = &mut self.counters;
        let exchanges = &mut self.exchanges;
        let stream = &mut streams[usize::from(outbound)];
        let (payload, len) = (event.payload, event.len);
        let framed = event.frames > 0
            && parser
                .protocol()
                .is_none_or(|p| matches!(p, Protocol::Http1 | Protocol::Http2));
        let mut sink = |piece: Piece<'_>| {
            parser.on_piece(outbound, piece, ts, &mut counters.parser, exchanges)
        };
        let mut placed = false;
        if framed {
            placed = frame_heads::split(
                payload,
                len,
                event.heads,
                event.frames,
                &mut |at, bytes, span| {
                    stream.push(
                        event.pos + at,
                        bytes,
                        span,
                        &mut counters.reassembly,
                        &mut sink,
                    )
                },
            );
            if !placed {
                counters.decode_errors += 1;
            }
        }
        if !placed {
            stream.push(event.pos, payload, len, &mut counters.reassembly, &mut sink);
        }
        match conn.parser.verdict() {
            Verdict::Speaks if !conn.port_known && conn.side == Side::Server => {
                conn.port_known = true;
                if let Some(protocol) = conn.parser.protocol() {
                    if self.known_ports.len() < MAX_KNOWN_PORTS {
                        self.known_ports
                            .insert((conn.tgid, conn.tuple.local.port), protocol);
                    }
                }
            }
            Verdict::Done => {
                // Nothing more we can parse here: stop the kernel copying it.
                if let Some(conn) = self.remove(conn_id) {
                    self.stop_tracing(conn_id, &conn);
                    self.finish(conn, ts);
                }
            }
            _ => {}
        }
        if !self.exchanges.is_empty() {
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                deliver(
                    &mut self.exchanges,
                    &mut self.sink,
                    conn,
                    &self.identities,
                    &mut self.pending,
                    &mut self.counters.pending_full,
                );
            }
        }
    }

    /// Tells the kernel to stop tracing a connection we dropped.
    fn stop_tracing(&mut self, conn_id: u64, conn: &Conn) {
        if let Some(kernel) = self.kernel.as_mut() {
            kernel.forget(conn_key(conn.tgid, conn.fd as u32), conn_id);
        }
        self.remember_gone(conn_id);
    }

    /// Events of this connection still in the ring buffer are expected.
    fn remember_gone(&mut self, conn_id: u64) {
        if self.forgotten.len() >= MAX_FORGOTTEN {
            if let Some(old) = self.forgotten.pop_front() {
                self.forgotten_set.remove(&old);
            }
        }
        if self.forgotten_set.insert(conn_id) {
            self.forgotten.push_back(conn_id);
        }
    }

    /// Data for a connection we have no state for (its OPEN was lost, or it
    /// was evicted): adopt it mid-stream if the kernel still traces it.
    fn adopt_unknown(&mut self, event: &Data<'_>) -> bool {
        let key = conn_key(event.tgid, event.fd as u32);
        let Some(info) = self.kernel.as_ref().and_then(|k| k.lookup(key)) else {
            return false;
        };
        if info.conn_id != event.conn_id {
            return false;
        }
        self.on_open(&Opened {
            conn_id: info.conn_id,
            ts_ns: event.ts_ns,
            tgid: event.tgid,
            fd: event.fd,
            side: events::side_of(info.role),
            tuple: info.tuple,
            comm: [0; 16],
            source: Source::Syscalls,
            from_start: false,
        });
        true
    }

    /// Registers the connections that were open before the tracer started,
    /// so their next requests are counted. Returns how many were adopted.
    pub fn adopt_existing(&mut self, existing: &[ExistingConn]) -> usize {
        let mut adopted = 0;
        for conn in existing {
            self.next_user_id += 1;
            let conn_id = USER_CONN_ID_BIT | self.next_user_id;
            let role = match conn.side {
                Side::Server => role::SERVER,
                Side::Client => role::CLIENT,
            };
            let info = ConnInfo::new(conn_id, conn.tuple, role);
            let key = conn_key(conn.tgid, conn.fd);
            if let Some(kernel) = self.kernel.as_mut() {
                if !kernel.adopt(key, &info) {
                    continue;
                }
            }
            // The hooks trace it from now on: the packet path skips it.
            let netns = self
                .claim_flow(
                    &conn.tuple,
                    Source::Syscalls,
                    conn.side,
                    conn.tgid,
                    conn_id,
                    true,
                )
                .unwrap_or(0);
            let identity = self.identities.slot(conn.tgid, &[0; 16]);
            self.insert(
                conn_id,
                Conn {
                    tgid: conn.tgid,
                    fd: conn.fd as i32,
                    side: conn.side,
                    source: Source::Syscalls,
                    tuple: conn.tuple,
                    identity,
                    peer: None,
                    streams: Conn::from_start(),
                    parser: Parser::mid_stream(conn.side),
                    last_ns: 0,
                    port_known: false,
                    netns,
                },
            );
            adopted += 1;
        }
        adopted
    }

    /// `totals`: the bytes the kernel saw move per direction, in all.
    fn close(&mut self, conn_id: u64, ts_ns: u64, totals: [u64; 2]) {
        // Another thread's write can land after the close in the ring.
        self.remember_gone(conn_id);
        if let Some(conn) = self.remove(conn_id) {
            self.finish_at(conn, ts_ns, Some(totals));
        }
    }

    fn on_process_exit(&mut self, tgid: u32, ts_ns: u64) {
        self.identities.forget(tgid);
        self.netns.remove(&tgid);
        let Some(ids) = self.by_process.remove(&tgid) else {
            return;
        };
        // A reused pid is another program: it must learn its ports anew.
        self.known_ports.retain(|&(t, _), _| t != tgid);
        for id in ids {
            if let Some(conn) = self.conns.remove(&id) {
                self.release_flow(id, &conn);
                self.stop_tracing(id, &conn);
                self.finish(conn, ts_ns);
            }
        }
    }

    /// Takes a connection out of the table (it ended, or the pipeline
    /// gives up on it).
    fn remove(&mut self, conn_id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&conn_id)?;
        self.release_flow(conn_id, &conn);
        if let Some(ids) = self.by_process.get_mut(&conn.tgid) {
            ids.remove(&conn_id);
            if ids.is_empty() {
                self.by_process.remove(&conn.tgid);
            }
        }
        Some(conn)
    }

    /// The connection ended: deliver what reassembly held back, let the
    /// parser complete close-delimited responses, and leave the resulting
    /// exchanges in `self.exchanges` with the connection's context.
    fn finish(&mut self, conn: Conn, ts_ns: u64) {
        self.finish_at(conn, ts_ns, None);
    }

    /// [`Pipeline::finish`], knowing from the CLOSE how many bytes moved
    /// per direction: bytes that never arrived after the last chunk (their
    /// events were lost) are a counted gap, and the parser sees them as
    /// lost rather than as a close in the middle of an exchange.
    fn finish_at(&mut self, mut conn: Conn, ts_ns: u64, totals: Option<[u64; 2]>) {
        let counters = &mut self.counters;
        let exchanges = &mut self.exchanges;
        for (index, stream) in conn.streams.iter_mut().enumerate() {
            let parser = &mut conn.parser;
            let mut sink = |piece: Piece<'_>| {
                parser.on_piece(index == 1, piece, ts_ns, &mut counters.parser, exchanges)
            };
            match totals {
                Some(totals) => stream.close_at(totals[index], &mut counters.reassembly, &mut sink),
                None => stream.flush(&mut counters.reassembly, &mut sink),
            }
        }
        conn.parser.on_close(ts_ns, &mut counters.parser, exchanges);
        deliver(
            &mut self.exchanges,
            &mut self.sink,
            &mut conn,
            &self.identities,
            &mut self.pending,
            &mut self.counters.pending_full,
        );
    }

    /// Reports requests waiting longer than `timeout_ns` at `now_ns`
    /// (CLOCK_MONOTONIC, like the events) as timed out. Called about once a
    /// second: a scan of the table.
    pub fn expire_requests(&mut self, now_ns: u64, timeout_ns: u64) {
        if let Some(mut flows) = self.packets.take() {
            flows.expire(now_ns, PACKET_FLOW_IDLE_NS, &mut |event| {
                self.on_event(event)
            });
            self.packets = Some(flows);
        }
        for conn in self.conns.values_mut() {
            conn.parser.expire(now_ns, timeout_ns, &mut self.exchanges);
            if !self.exchanges.is_empty() {
                deliver(
                    &mut self.exchanges,
                    &mut self.sink,
                    conn,
                    &self.identities,
                    &mut self.pending,
                    &mut self.counters.pending_full,
                );
            }
        }
    }

    /// Hands over the exchanges whose process identity has been resolved
    /// since they finished. Called after every batch of events.
    pub fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let sink = &mut self.sink;
        self.pending.retain_mut(|(slot, record)| match slot.get() {
            Some(identity) => {
                record.identity = identity.clone();
                sink.record(record);
                false
            }
            None => true,
        });
    }

    /// Exchanges waiting for their process's identity.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Processes the metadata stage could not take (its queue was full).
    pub fn identity_queue_full(&self) -> u64 {
        self.identities.queue_full
    }
}

/// How long an unknown callee stays unknown before the cluster caches are
/// asked again (they may have been filling when the connection began).
const PEER_RETRY_NS: u64 = 5_000_000_000;

/// Exchanges waiting for identities past which the process's resolver is
/// told to stop waiting for its pod and answer with what it knows.
const HURRY_PENDING: usize = 16384;

/// Exchanges kept waiting for identities at most; past it they are dropped
/// and counted (`tracer_user_drops_total{cause="identity_pending"}`). The
/// hurried resolver answers long before a busy process gets here.
const MAX_PENDING: usize = 262_144;

/// Stands in for the identity of a record waiting for it; replaced before
/// the record reaches a sink.
static PLACEHOLDER: std::sync::LazyLock<Arc<crate::metadata::Identity>> =
    std::sync::LazyLock::new(|| {
        Arc::new(crate::metadata::Identity {
            exe: Arc::from(""),
            service_name: Arc::from(""),
            container_id: None,
            partial: false,
            pod: None,
        })
    });

fn placeholder_identity() -> Arc<crate::metadata::Identity> {
    PLACEHOLDER.clone()
}

/// Hands a connection's finished exchanges to the sink, or keeps them
/// until the process's identity is resolved: a series is never published
/// without its pod.
fn deliver<S: Sink>(
    exchanges: &mut Vec<Exchange>,
    sink: &mut S,
    conn: &mut Conn,
    identities: &Identities,
    pending: &mut Vec<(Slot, Record)>,
    pending_full: &mut u64,
) {
    let now = conn.last_ns;
    let peer = match (&conn.peer, conn.side) {
        (_, Side::Server) => None,
        (Some((Some(peer), _)), _) => Some(peer.clone()),
        (Some((None, at)), _) if now.saturating_sub(*at) < PEER_RETRY_NS => None,
        (_, Side::Client) => {
            let peer = ip_of(&conn.tuple.remote).and_then(|ip| identities.peer(ip));
            conn.peer = Some((peer.clone(), now));
            peer
        }
    };
    let identity = conn.identity.get().cloned();
    for exchange in exchanges.drain(..) {
        let record = Record {
            side: conn.side,
            identity: identity.clone().unwrap_or_else(placeholder_identity),
            peer_service: peer.clone(),
            tgid: conn.tgid,
            source: conn.source,
            local: conn.tuple.local,
            remote: conn.tuple.remote,
            exchange,
        };
        if identity.is_some() {
            sink.record(&record);
        } else if pending.len() < MAX_PENDING {
            if pending.len() >= HURRY_PENDING {
                conn.identity.hurry();
            }
            pending.push((conn.identity.clone(), record));
        } else {
            *pending_full += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The table holds one `Conn` per traced end, tens of thousands on a
    /// busy node, in a hash table with room to spare: the parser's state is
    /// boxed, so a connection costs the table what it holds for all
    /// protocols, not the largest parser's size.
    #[test]
    fn a_connection_in_the_table_is_small() {
        let size = std::mem::size_of::<super::Conn>();
        // 240 bytes on x86_64 today.
        assert!(size <= 256, "Conn is {size} bytes");
    }
}
