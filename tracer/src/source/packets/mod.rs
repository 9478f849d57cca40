//! The packet source: turns the socket filter's TCP segments (`kind::PACKET`
//! records) into the typed events the syscall source produces
//! (`source::events`), so connection tracking, reassembly and the parsers
//! take both alike. Segments are grouped into flows by their 4-tuple; each
//! flow is reported from each of its ends that is local (a view: one
//! connection of the pipeline's, from the server's end or the client's),
//! its sequence numbers become stream positions, its handshake decides
//! where the streams start and which end serves, and its FINs or RST end
//! it.
//!
//! Modules: `decode` reads a record, `checksum` checks a segment captured
//! whole, `position` turns sequence numbers into
//! positions, `bounded` holds the tables a flood must not grow (handshakes
//! in progress, recently closed tuples), `owners` finds the processes
//! behind a flow's ends.

mod bounded;
pub mod checksum;
mod decode;
pub mod owners;
mod position;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use tracer_common::{tcp_flag, SockAddr, Tuple, PACKET_CONN_ID_BITS};

use crate::{
    protocols::Side,
    source::events::{Data, Event, Opened, Source},
};
use bounded::{Bounded, TupleHasher};
use checksum::Checksum;
use decode::Segment;
pub use owners::{FixedOwners, Owners, ProcOwners};
use position::Direction;

/// Most handshakes in progress remembered, whatever the flow capacity: a
/// SYN flood evicts its own entries, never a flow.
const MAX_HANDSHAKES: usize = 65_536;

/// Most recently closed tuples remembered. Retransmissions come within
/// seconds of the close; a busy node closes thousands of flows a second.
const MAX_CLOSED: usize = 16_384;

/// What the packet source saw and dropped; every drop is counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PacketCounters {
    /// Records handed in.
    pub records: u64,
    /// Records too short, of another kind, whose lengths do not fit, or
    /// without an IP family: skipped.
    pub malformed: u64,
    /// Well-formed segments.
    pub segments: u64,
    /// TCP payload bytes those segments carried (captured or not).
    pub payload_bytes: u64,
    /// SYN and SYN-ACK segments remembered.
    pub handshakes: u64,
    /// Flows opened after their handshake (`from_start`).
    pub flows_opened: u64,
    /// Flows first seen mid-stream.
    pub flows_mid_stream: u64,
    /// Flows also reported from their client's end: a local process
    /// connected them.
    pub client_views: u64,
    /// Flows ended by FINs both ways.
    pub flows_closed: u64,
    /// Flows ended by a RST.
    pub flows_reset: u64,
    /// Flows idle past the expiry.
    pub flows_expired: u64,
    /// Flows pushed out of a full table (they end with `Closed`).
    pub flows_evicted: u64,
    /// Handshakes forgotten to make room in their table (a SYN flood).
    pub syn_evicted: u64,
    /// Handshakes idle past the expiry without payload.
    pub syn_expired: u64,
    /// Copies of a flow's segments on an interface other than the one it
    /// was first seen on (a veth and the bridge or uplink behind it):
    /// dropped, so each flow counts once.
    pub other_interface: u64,
    /// Segments too far from their direction's window to place (or before
    /// its start): dropped.
    pub stale: u64,
    /// Segments of a flow already closed (retransmissions): dropped.
    pub after_close: u64,
    /// Retransmitted SYNs or SYN-ACKs of a live flow: nothing new.
    pub duplicate_handshake: u64,
    /// A FIN or RST (or an empty segment) of no known flow: dropped.
    pub no_flow: u64,
    /// A FIN or RST of a connection the syscall hooks trace, sent as its
    /// socket closed (past the kernel's cover): theirs, nothing lost.
    pub hooked_control: u64,
    /// Segments captured whole whose TCP checksum is wrong: the receiver
    /// drops them too (and the sender retransmits), or they were forged.
    pub bad_checksum: u64,
}

/// One end of a flow, without the family (the key holds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct End {
    addr: [u8; 16],
    port: u16,
}

/// A flow's 4-tuple with its ends in a fixed order, so that both
/// directions find the same flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    family: u16,
    lo: End,
    hi: End,
}

impl Key {
    /// The key of a segment, and whether its sender is the `lo` end.
    fn of(segment: &Segment<'_>) -> (Self, bool) {
        Self::between(&segment.src, &segment.dst)
    }

    /// The key of the flow from `src` to `dst` (addresses as the decoder
    /// gives them: IPv4 in the first 4 bytes, the rest zero), and whether
    /// `src` is the `lo` end.
    fn between(src: &SockAddr, dst: &SockAddr) -> (Self, bool) {
        let family = src.family;
        let src = End {
            addr: src.addr,
            port: src.port,
        };
        let dst = End {
            addr: dst.addr,
            port: dst.port,
        };
        if src <= dst {
            (
                Self {
                    family,
                    lo: src,
                    hi: dst,
                },
                true,
            )
        } else {
            (
                Self {
                    family,
                    lo: dst,
                    hi: src,
                },
                false,
            )
        }
    }

    fn end(&self, lo: bool) -> SockAddr {
        let end = if lo { self.lo } else { self.hi };
        SockAddr {
            addr: end.addr,
            port: end.port,
            family: self.family,
        }
    }
}

/// Index of a flow's directions (what the client sent, what the server
/// sent) and of its views (from the client's end, from the server's: each
/// end's view is the direction it writes).
const FROM_CLIENT: usize = 0;
const FROM_SERVER: usize = 1;

/// One local end's view of a flow: a connection of the pipeline's, from
/// the server's end or from the client's.
#[derive(Debug, Clone, Copy)]
struct View {
    conn_id: u64,
    tgid: u32,
}

/// A live flow; fixed size (payload is never kept here).
struct Flow {
    /// Its views from the client's end and from the server's, each where
    /// that end is local (indexed like `dirs`).
    views: [Option<View>; 2],
    /// The interface its first segment came on; copies elsewhere are dropped.
    ifindex: u32,
    server_is_lo: bool,
    /// Its handshake was seen: positions count from the first byte.
    from_start: bool,
    dirs: [Direction; 2],
    last_ns: u64,
}

/// What a SYN and SYN-ACK told about a connection that has carried no
/// payload yet.
struct Handshake {
    client_is_lo: bool,
    /// Sequence number of each direction's first byte (ISN + 1).
    client_base: Option<u32>,
    server_base: Option<u32>,
    ifindex: u32,
    ts_ns: u64,
}

/// The flow table of the packet source.
pub struct Flows {
    flows: HashMap<Key, Flow, TupleHasher>,
    /// Most live views, and the views of the live flows.
    capacity: usize,
    views: usize,
    handshakes: Bounded<Key, Handshake>,
    /// Recently closed tuples and the interface they were seen on.
    closed: Bounded<Key, u32>,
    /// Tuples of connections the syscall hooks trace (both sources): the
    /// kernel skips their segments, but not the FIN or RST sent as the
    /// socket closes, which is theirs to count, not a segment of no flow.
    hooked: Bounded<Key, ()>,
    owners: Box<dyn Owners + Send>,
    next_id: u64,
    /// Reused by eviction and expiry: no allocation per segment.
    scratch: Vec<(u64, Key)>,
    pub counters: PacketCounters,
}

impl Flows {
    /// At most `capacity` live views (a flow has one per local end: the
    /// pipeline's connections); `owners` names the processes of their
    /// ends.
    pub fn new(capacity: usize, owners: Box<dyn Owners + Send>) -> Self {
        let capacity = capacity.max(1);
        Self {
            flows: HashMap::default(),
            capacity,
            views: 0,
            handshakes: Bounded::new(capacity.min(MAX_HANDSHAKES)),
            closed: Bounded::new(capacity.min(MAX_CLOSED)),
            hooked: Bounded::new(capacity),
            owners,
            next_id: 0,
            scratch: Vec::new(),
            counters: PacketCounters::default(),
        }
    }

    /// Live flows.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Live views: the pipeline connections of the live flows.
    pub fn views(&self) -> usize {
        self.views
    }

    /// Handshakes waiting for their first payload.
    pub fn handshakes(&self) -> usize {
        self.handshakes.len()
    }

    /// One `kind::PACKET` record; the events it makes go to `out`.
    pub fn on_record(&mut self, record: &[u8], out: &mut dyn FnMut(Event<'_>)) {
        self.counters.records += 1;
        let Ok(segment) = decode::segment(record) else {
            self.counters.malformed += 1;
            return;
        };
        if segment.checksum == Checksum::Bad {
            self.counters.bad_checksum += 1;
            return;
        }
        self.counters.segments += 1;
        self.counters.payload_bytes += u64::from(segment.payload_len);
        let (key, src_is_lo) = Key::of(&segment);
        let flags = segment.flags;
        if flags & tcp_flag::SYN != 0 {
            let kept = self.on_handshake(key, src_is_lo, &segment, out);
            if !kept || segment.payload_len == 0 {
                return;
            }
        }
        if !self.flows.contains_key(&key) {
            if segment.payload_len == 0 {
                self.control_without_flow(key, &segment);
                return;
            }
            if !self.open(key, src_is_lo, &segment, out) {
                return;
            }
        }
        self.drive(key, src_is_lo, &segment, out);
    }

    /// The syscall hooks trace the connection between `x` and `y` (both
    /// sources run): its segments stop coming here, so a handshake seen
    /// before the hooks covered it is done with, not left to expire, and
    /// its closing FIN or RST is not a segment of no flow.
    pub fn hooks_trace(&mut self, x: &SockAddr, y: &SockAddr) {
        let (key, _) = Key::between(&decode::as_on_the_wire(*x), &decode::as_on_the_wire(*y));
        self.handshakes.remove(&key);
        // A flow opened from segments that passed before the cover: the
        // pipeline dropped its copy, and no more segments come to end it.
        if let Some(flow) = self.flows.remove(&key) {
            self.views -= flow.views.iter().flatten().count();
        }
        self.hooked.insert(key, ());
    }

    /// Flows idle for more than `idle_ns` at `now_ns` end with `Closed`;
    /// handshakes as old are forgotten. Called about once a second.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64, out: &mut dyn FnMut(Event<'_>)) {
        let mut idle = std::mem::take(&mut self.scratch);
        idle.clear();
        idle.extend(
            self.flows
                .iter()
                .filter(|(_, flow)| now_ns.saturating_sub(flow.last_ns) > idle_ns)
                .map(|(key, flow)| (flow.last_ns, *key)),
        );
        for &(_, key) in &idle {
            // Not remembered as closed: an idle keep-alive connection that
            // speaks again is picked up mid-stream.
            self.close(key, now_ns, false, out);
            self.counters.flows_expired += 1;
        }
        self.scratch = idle;
        let expired = self
            .handshakes
            .retain(|h| now_ns.saturating_sub(h.ts_ns) <= idle_ns);
        self.counters.syn_expired += expired as u64;
    }

    /// A SYN or SYN-ACK: remembered in the handshake table, not as a flow,
    /// so a flood never reaches the pipeline. False when the segment is
    /// dropped.
    fn on_handshake(
        &mut self,
        key: Key,
        src_is_lo: bool,
        segment: &Segment<'_>,
        out: &mut dyn FnMut(Event<'_>),
    ) -> bool {
        let syn_ack = segment.flags & tcp_flag::ACK != 0;
        let first = segment.seq.wrapping_add(1);
        // A new connection on the ends: the hooks' earlier one is over.
        self.hooked.remove(&key);
        if let Some(flow) = self.flows.get(&key) {
            if flow.ifindex != segment.ifindex {
                self.counters.other_interface += 1;
                return false;
            }
            // A SYN-ACK alone cannot start a new connection on a live
            // tuple (its SYN would have come first); a SYN with the ISN the
            // flow started from is the handshake retransmitted.
            let from_client = src_is_lo != flow.server_is_lo;
            let again =
                from_client && flow.from_start && flow.dirs[FROM_CLIENT].base() == Some(first);
            if syn_ack || again {
                self.counters.duplicate_handshake += 1;
                return false;
            }
            // A new connection on the tuple: the old one ended unseen.
            self.close(key, segment.ts_ns, false, out);
        }
        let evicted = match self.handshakes.get_mut(&key) {
            Some(h) if h.ifindex != segment.ifindex => {
                self.counters.other_interface += 1;
                return false;
            }
            Some(h) if syn_ack && h.client_is_lo != src_is_lo => {
                h.server_base = Some(first);
                h.client_base.get_or_insert(segment.ack);
                h.ts_ns = segment.ts_ns;
                false
            }
            Some(h) if !syn_ack && h.client_is_lo == src_is_lo && h.client_base == Some(first) => {
                h.ts_ns = segment.ts_ns;
                false
            }
            _ => {
                let (client_is_lo, client_base, server_base) = if syn_ack {
                    // The client's SYN was missed: the SYN-ACK acknowledges
                    // its ISN + 1.
                    (!src_is_lo, segment.ack, Some(first))
                } else {
                    (src_is_lo, first, None)
                };
                let handshake = Handshake {
                    client_is_lo,
                    client_base: Some(client_base),
                    server_base,
                    ifindex: segment.ifindex,
                    ts_ns: segment.ts_ns,
                };
                self.handshakes.insert(key, handshake)
            }
        };
        // A new connection on a recently closed tuple.
        self.closed.remove(&key);
        self.counters.handshakes += 1;
        self.counters.syn_evicted += u64::from(evicted);
        true
    }

    /// A FIN or RST of a tuple with no live flow.
    fn control_without_flow(&mut self, key: Key, segment: &Segment<'_>) {
        let ends = tcp_flag::FIN | tcp_flag::RST;
        if let Some(h) = self.handshakes.get_mut(&key) {
            if h.ifindex != segment.ifindex {
                self.counters.other_interface += 1;
            } else if segment.flags & ends != 0 {
                // A connection that ended without payload: nothing to report.
                let ifindex = h.ifindex;
                self.handshakes.remove(&key);
                self.closed.insert(key, ifindex);
            }
            return;
        }
        if self.hooked.contains(&key) {
            self.counters.hooked_control += 1;
            return;
        }
        self.count_gone(key, segment);
    }

    /// A segment of a tuple closed recently, or of no flow at all.
    fn count_gone(&mut self, key: Key, segment: &Segment<'_>) {
        match self.closed.get_mut(&key) {
            Some(ifindex) if *ifindex != segment.ifindex => self.counters.other_interface += 1,
            Some(_) => self.counters.after_close += 1,
            None => self.counters.no_flow += 1,
        }
    }

    /// The first payload of a tuple: opens its flow, from its handshake if
    /// one was seen, else mid-stream. False when the segment is dropped.
    fn open(
        &mut self,
        key: Key,
        src_is_lo: bool,
        segment: &Segment<'_>,
        out: &mut dyn FnMut(Event<'_>),
    ) -> bool {
        let handshake = match self.handshakes.get_mut(&key) {
            Some(h) if h.ifindex != segment.ifindex => {
                self.counters.other_interface += 1;
                return false;
            }
            Some(_) => self.handshakes.remove(&key),
            None => None,
        };
        if handshake.is_none() && self.closed.contains(&key) {
            self.count_gone(key, segment);
            return false;
        }
        let start = |base: Option<u32>| base.map(Direction::starting_at).unwrap_or_default();
        let (server_is_lo, from_start, dirs) = match handshake {
            Some(h) => (
                !h.client_is_lo,
                true,
                [start(h.client_base), start(h.server_base)],
            ),
            None => (self.server_end(key, src_is_lo), false, Default::default()),
        };
        let server = key.end(server_is_lo);
        let client = key.end(!server_is_lo);
        let client_owner = self.owners.client(&client, &server);
        // A flow with no end known to be local (traffic the node forwards,
        // or a socket found nowhere) is reported from its server's end, as
        // a process unknown.
        let server_local = client_owner.is_none() || self.owners.serves(&server, &client);
        let server_tgid = server_local.then(|| self.owners.owner(&server).unwrap_or(0));
        let needed = usize::from(server_local) + usize::from(client_owner.is_some());
        // With the packet path alone the pipeline holds no more connections
        // than this table has views, so it never pushes a live view out.
        // (Views it drops at once, such as the tracer's own, are counted
        // here until their flow ends: room is made early, never late.)
        while self.views + needed > self.capacity && !self.flows.is_empty() {
            self.evict(segment.ts_ns, out);
        }
        self.views += needed;
        if from_start {
            self.counters.flows_opened += 1;
        } else {
            self.counters.flows_mid_stream += 1;
        }
        let mut views = [None, None];
        for (end, side, tgid, comm) in [
            (FROM_SERVER, Side::Server, server_tgid, [0; 16]),
            (
                FROM_CLIENT,
                Side::Client,
                client_owner.map(|o| o.tgid),
                client_owner.map_or([0; 16], |o| o.comm),
            ),
        ] {
            let Some(tgid) = tgid else { continue };
            self.next_id += 1;
            let conn_id = PACKET_CONN_ID_BITS | (self.next_id & !PACKET_CONN_ID_BITS);
            let (local, remote) = if end == FROM_SERVER {
                (server, client)
            } else {
                (client, server)
            };
            out(Event::Opened(Opened {
                conn_id,
                ts_ns: segment.ts_ns,
                tgid,
                fd: -1,
                side,
                tuple: Tuple { local, remote },
                comm,
                source: Source::Packets,
                from_start,
            }));
            views[end] = Some(View { conn_id, tgid });
        }
        self.counters.client_views += u64::from(views[FROM_CLIENT].is_some());
        self.flows.insert(
            key,
            Flow {
                views,
                ifindex: segment.ifindex,
                server_is_lo,
                from_start,
                dirs,
                last_ns: segment.ts_ns,
            },
        );
        true
    }

    /// Which end serves a flow first seen mid-stream: the one a local
    /// socket listens on, else the one with the lower port (ephemeral
    /// ports are high). True when it is the `lo` end.
    fn server_end(&mut self, key: Key, src_is_lo: bool) -> bool {
        let (src, dst) = (key.end(src_is_lo), key.end(!src_is_lo));
        let src_serves = match (self.owners.listening(&src), self.owners.listening(&dst)) {
            (true, false) => true,
            (false, true) => false,
            _ => src.port < dst.port,
        };
        src_serves == src_is_lo
    }

    /// A segment of a live flow: its payload as `Data` at its position,
    /// its FIN or RST ending the flow.
    fn drive(
        &mut self,
        key: Key,
        src_is_lo: bool,
        segment: &Segment<'_>,
        out: &mut dyn FnMut(Event<'_>),
    ) {
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        if flow.ifindex != segment.ifindex {
            self.counters.other_interface += 1;
            return;
        }
        let from_server = src_is_lo == flow.server_is_lo;
        let flags = segment.flags;
        // A SYN's payload (TCP Fast Open) starts after the SYN.
        let seq = segment
            .seq
            .wrapping_add(u32::from(flags & tcp_flag::SYN != 0));
        // The server's SYN-ACK was missed: before the server sends, the
        // client acknowledges the server's ISN + 1.
        if flow.from_start
            && !from_server
            && !flow.dirs[FROM_SERVER].known
            && flags & tcp_flag::ACK != 0
        {
            flow.dirs[FROM_SERVER] = Direction::starting_at(segment.ack);
        }
        let dir = &mut flow.dirs[usize::from(from_server)];
        if !dir.known {
            *dir = Direction::starting_at(seq);
        }
        let Some(pos) = dir.place(seq) else {
            self.counters.stale += 1;
            return;
        };
        let len = u64::from(segment.payload_len);
        let end = pos + len;
        dir.high = dir.high.max(end);
        flow.last_ns = flow.last_ns.max(segment.ts_ns);
        if len > 0 {
            for (end, view) in flow.views.iter().enumerate() {
                let Some(view) = view else { continue };
                out(Event::Data(Data {
                    conn_id: view.conn_id,
                    ts_ns: segment.ts_ns,
                    tgid: view.tgid,
                    fd: -1,
                    pos,
                    len,
                    // Written by this view's end.
                    outbound: from_server == (end == FROM_SERVER),
                    payload: segment.payload,
                    frames: 0,
                    heads: &[],
                }));
            }
        }
        if flags & tcp_flag::FIN != 0 {
            dir.fin = Some(end);
        }
        if flags & tcp_flag::RST != 0 {
            self.counters.flows_reset += 1;
            self.close(key, segment.ts_ns, true, out);
        } else if flow.dirs.iter().all(|d| d.fin.is_some()) {
            self.counters.flows_closed += 1;
            self.close(key, segment.ts_ns, true, out);
        }
    }

    /// Ends a flow with `Closed`: each direction's bytes up to its FIN, or
    /// the furthest seen. `remember`: later segments of the tuple are
    /// retransmissions of an ended connection, not a new one mid-stream.
    fn close(&mut self, key: Key, ts_ns: u64, remember: bool, out: &mut dyn FnMut(Event<'_>)) {
        let Some(flow) = self.flows.remove(&key) else {
            return;
        };
        self.views -= flow.views.iter().flatten().count();
        if remember {
            self.closed.insert(key, flow.ifindex);
        }
        let (from_client, from_server) = (
            flow.dirs[FROM_CLIENT].total(),
            flow.dirs[FROM_SERVER].total(),
        );
        for (end, view) in flow.views.iter().enumerate() {
            let Some(view) = view else { continue };
            // (inbound, outbound) as this view's end sees them.
            let bytes = if end == FROM_SERVER {
                [from_client, from_server]
            } else {
                [from_server, from_client]
            };
            out(Event::Closed {
                conn_id: view.conn_id,
                ts_ns,
                bytes,
            });
        }
    }

    /// Ends the least recently active sixteenth of the table at once, so a
    /// full table pays for the scan once per many new flows.
    fn evict(&mut self, ts_ns: u64, out: &mut dyn FnMut(Event<'_>)) {
        let mut ages = std::mem::take(&mut self.scratch);
        ages.clear();
        ages.extend(self.flows.iter().map(|(key, flow)| (flow.last_ns, *key)));
        let cut = (ages.len() / 16).max(1).min(ages.len());
        if cut > 0 {
            ages.select_nth_unstable_by_key(cut - 1, |&(last, _)| last);
        }
        for &(_, key) in &ages[..cut] {
            self.close(key, ts_ns, false, out);
            self.counters.flows_evicted += 1;
        }
        self.scratch = ages;
    }
}
