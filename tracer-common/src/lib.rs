//! Types that cross the kernel/user boundary: ring-buffer events, the socket
//! map's value and the per-CPU stats indices. The kernel programs
//! (tracer-ebpf) write them; the daemon (tracer) reads them. Every type is
//! `#[repr(C)]`, carries no `bool` or data-carrying enum, pads explicitly and
//! asserts its size at compile time, so both sides agree byte for byte.
#![no_std]

use core::mem::size_of;

/// Hard upper bound on the bytes captured from one syscall. The runtime limit
/// (`CAPTURE_LIMIT` global, set at load time) may be lower, never higher;
/// connections whose protocol pipelines many messages per syscall are
/// raised to it (the `CAPTURES` map). 16 KiB: what libpq, hiredis and the
/// MySQL client read or write at once.
pub const MAX_CAPTURE: usize = 16384;

/// Bytes a chunk of a connection that does not pipeline (HTTP/1.x,
/// unrecognised) is captured to while its CPU's ring is more than half
/// full or the daemon is short of memory (`stat::CAPTURE_SHED`): enough for the head of most HTTP/1.x
/// messages, so that payload is given up before whole events are.
pub const SHED_CAPTURE: usize = 512;

/// Default runtime capture limit in bytes.
pub const DEFAULT_CAPTURE: u32 = 4096;
/// Ring buffers the kernel side spreads its events over: CPU `c` writes to
/// ring `c % rings in use`, so CPUs do not contend for one ring's lock and
/// positions. The loader uses one per CPU up to this many.
pub const MAX_RINGS: usize = 16;
/// Where `EventHeader::ts_ns` sits in every record: the daemon merges the
/// rings by it.
pub const TS_OFFSET: usize = 16;

/// The timestamp every record starts with, if the record is long enough.
pub fn record_ts(record: &[u8]) -> Option<u64> {
    let bytes = record.get(TS_OFFSET..TS_OFFSET + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}
/// Length of a kernel task name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// What an event is; the first byte of every ring-buffer record.
pub mod kind {
    /// A chunk of payload read or written on a traced socket.
    pub const DATA: u8 = 1;
    /// A TCP connection was accepted or connected.
    pub const OPEN: u8 = 2;
    /// A traced socket was closed.
    pub const CLOSE: u8 = 3;
    /// A process (thread group) exited; its sockets are gone without `close`.
    pub const PROC_EXIT: u8 = 4;
    /// A TCP segment seen by the socket filter on an interface
    /// ([`PacketEvent`](crate::PacketEvent)).
    pub const PACKET: u8 = 5;
}

/// TCP header flags, as in the segment's flags byte.
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The kernel's `skb->pkt_type` values the socket filter sees.
pub mod pkt_type {
    /// Addressed to this host (received).
    pub const HOST: u8 = 0;
    /// Seen on its way out of an interface.
    pub const OUTGOING: u8 = 4;
}

/// Direction of a data chunk, seen from the traced process.
pub mod direction {
    /// Bytes the process read from the socket.
    pub const INGRESS: u8 = 0;
    /// Bytes the process wrote to the socket.
    pub const EGRESS: u8 = 1;
}

/// Which end of the connection the traced process is.
pub mod role {
    pub const UNKNOWN: u8 = 0;
    /// The socket came from `accept`: the process serves.
    pub const SERVER: u8 = 1;
    /// The socket came from `connect`: the process is the client.
    pub const CLIENT: u8 = 2;
}

/// Indices of the per-CPU `STATS` array: every kernel-side loss is counted here.
pub mod stat {
    /// `bpf_ringbuf_output` failed: the ring buffer was full, the event is lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// The socket table was full: a new connection is not traced.
    pub const CONN_MAP_FULL: u32 = 1;
    /// A chunk was longer than the capture limit; the rest is a counted gap.
    pub const TRUNCATED: u32 = 2;
    /// A vectored I/O had more segments than the kernel side walks.
    pub const IOV_TRUNCATED: u32 = 3;
    /// Reading the payload or the syscall arguments from memory failed.
    pub const READ_FAILED: u32 = 4;
    /// The kernel side stopped following an HTTP/2 connection's frames (a
    /// header split before its length was whole, chunks of one direction
    /// handled out of order by two threads, more frames in one syscall
    /// than it walks): headers beyond a syscall's capture are no longer
    /// found on that connection.
    pub const FRAMES_LOST: u32 = 5;
    /// A chunk was captured to `SHED_CAPTURE` bytes only, because its
    /// CPU's ring was more than half full or the daemon was short of memory
    /// (90% of its budget in use): under pressure payload is shed before
    /// whole events are. The rest of the chunk is a counted gap.
    pub const CAPTURE_SHED: u32 = 6;
    /// A chunk's position, taken from its socket's TCP sequence counter,
    /// lay behind bytes already handed out for that direction: two threads
    /// moved bytes on one socket at once without a lock between them, and
    /// the later syscall's exit saw the other's bytes too. The overlapping
    /// chunk is delivered where the counter says; the reassembler keeps the
    /// first bytes it got for each position.
    pub const POSITION_OVERLAP: u32 = 7;
    /// The packet path's ring was full: a segment is lost.
    pub const PACKET_RINGBUF_FULL: u32 = 8;
    /// A segment carried more payload than the capture limit; the rest is
    /// a counted gap.
    pub const PACKET_TRUNCATED: u32 = 9;
    /// A packet the socket filter could not read as TCP over IP (headers
    /// cut short, an IPv6 extension chain longer than it walks) or an IP
    /// fragment: skipped.
    pub const PACKET_MALFORMED: u32 = 10;
    /// Number of counters.
    pub const COUNT: u32 = 11;
    /// Metric label of each counter, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_full",
        "conn_map_full",
        "truncated",
        "iov_truncated",
        "read_failed",
        "frames_lost",
        "capture_shed",
        "position_overlap",
        "packet_ringbuf_full",
        "packet_truncated",
        "packet_malformed",
    ];
}

/// One end of a connection. IPv4 addresses occupy the first 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddr {
    pub addr: [u8; 16],
    /// Port in host byte order.
    pub port: u16,
    /// `AF_INET`, `AF_INET6`, or 0 when unknown.
    pub family: u16,
}

/// Both ends of a connection, as the traced process sees them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub local: SockAddr,
    pub remote: SockAddr,
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u8,
    pub _pad: [u8; 3],
    /// Process (thread group) id.
    pub tgid: u32,
    /// Connection id, unique for the life of the tracer; 0 for process events.
    pub conn_id: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the syscall returned.
    pub ts_ns: u64,
}

const _: () = assert!(core::mem::offset_of!(EventHeader, ts_ns) == TS_OFFSET);

/// A chunk of payload; `cap_len` bytes of payload follow it in the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataEvent {
    pub header: EventHeader,
    /// Byte position of this chunk's first byte within its direction.
    pub pos: u64,
    /// Thread id.
    pub pid: u32,
    pub fd: i32,
    /// Bytes the syscall moved.
    pub orig_len: u32,
    /// Bytes captured (at most the capture limit); `orig_len - cap_len` were not.
    pub cap_len: u32,
    /// One of [`direction`].
    pub direction: u8,
    /// [`FrameHead`]s that follow the captured payload in the record.
    pub frames: u8,
    pub _pad: [u8; 6],
}

/// An HTTP/2 frame header the kernel side found in a chunk beyond its
/// captured bytes, appended to the record after the payload (followed by
/// `extra` bytes of the frame's own payload, for every frame but DATA):
/// with it the daemon keeps a connection's framing, and its header
/// compression, across bytes it never copied (a large response in one
/// syscall).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameHead {
    /// Where the header starts, from the chunk's first byte.
    pub offset: u32,
    /// Bytes of `head` that hold the header: fewer than 9 when the chunk
    /// ended inside it (the rest starts the next chunk, which is captured).
    pub len: u8,
    pub head: [u8; FRAME_HEADER_LEN],
    /// Bytes of the frame's payload that follow this head in the record:
    /// all of it (up to [`MAX_FRAME_PAYLOAD`]) for a frame other than DATA,
    /// or as much as the chunk holds.
    pub extra: u16,
}

/// Bytes of an HTTP/2 frame header.
pub const FRAME_HEADER_LEN: usize = 9;

/// Frame headers appended to one record at most.
pub const MAX_FRAME_HEADS: usize = 32;

/// Bytes appended to one record after its payload at most: heads and the
/// payloads that follow them.
pub const MAX_FRAME_EXTRA: usize = 4096;

/// The largest payload of a non-DATA frame appended after its head (a
/// header block beyond a capture; a larger one stops the following).
pub const MAX_FRAME_PAYLOAD: usize = 1024;

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `first` starts with the header of a SETTINGS frame on stream 0,
/// as an HTTP/2 server's first bytes do (its connection preface).
pub fn settings_frame(first: &[u8]) -> bool {
    match first {
        [l0, l1, l2, 4, 0, 0, 0, 0, 0, ..] => {
            let len = u32::from_be_bytes([0, *l0, *l1, *l2]);
            len.is_multiple_of(6) && len <= 6 * 64
        }
        _ => false,
    }
}

/// A connection opened or closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub tuple: Tuple,
    pub fd: i32,
    /// Thread id of the caller.
    pub pid: u32,
    /// One of [`role`].
    pub role: u8,
    pub _pad: [u8; 7],
    /// Task name of the caller (NUL padded).
    pub comm: [u8; COMM_LEN],
    /// Bytes moved per [`direction`] so far (on close: in total).
    pub bytes: [u64; 2],
}

/// Value of the kernel's socket table, keyed by [`conn_key`]. Made by
/// [`ConnInfo::new`] (no `Default`: zero would be a frame position).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub conn_id: u64,
    /// Next byte position per [`direction`].
    pub pos: [u64; 2],
    pub tuple: Tuple,
    /// One of [`role`].
    pub role: u8,
    /// Nonzero once the connection's first bytes showed a protocol that
    /// pipelines many messages per syscall ([`pipelines`]), or it switched
    /// protocols ([`switches_protocols`]): it is captured up to
    /// `MAX_CAPTURE` from then on. Written by the kernel side only.
    pub pipelined: u8,
    /// Per direction: the first bytes of an HTTP/2 frame header that a
    /// syscall ended inside before its length was whole.
    pub split: [[u8; 2]; 2],
    /// Per direction: how many bytes of `split` are held.
    pub split_len: [u8; 2],
    /// Per direction: the stream position of the next HTTP/2 frame header,
    /// or [`NO_FRAME`] when the direction's frames are not followed.
    pub next_frame: [u64; 2],
    /// The kernel's `struct sock` of the connection, or 0 when unknown
    /// (offsets missing from the kernel's BTF, a socket adopted mid-stream
    /// before its first chunk): positions then add up syscall results.
    pub sk: u64,
    /// Per [`direction`]: the socket's sequence counter (`copied_seq`,
    /// `write_seq`) at position 0, valid while `sk` is not 0.
    pub seq_base: [u32; 2],
}

/// [`ConnInfo::next_frame`] of a direction not followed as HTTP/2.
pub const NO_FRAME: u64 = u64::MAX;

impl ConnInfo {
    /// A connection at its start, nothing moved yet.
    pub const fn new(conn_id: u64, tuple: Tuple, role: u8) -> Self {
        Self {
            conn_id,
            pos: [0; 2],
            tuple,
            role,
            pipelined: 0,
            split: [[0; 2]; 2],
            split_len: [0; 2],
            next_frame: [NO_FRAME; 2],
            sk: 0,
            seq_base: [0; 2],
        }
    }
}

/// Byte offsets of the kernel structure fields the kernel side walks to turn
/// a descriptor into its socket and read the socket's sequence counters,
/// taken from the running kernel's BTF by the loader (the `SOCK_OFFSETS`
/// global). All zero: unknown, positions add up syscall results instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `file.private_data` (the `struct socket` of a socket's file)
    pub file_private: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock.sk_protocol` (a plain `u16` since Linux 5.6)
    pub sk_protocol: u32,
    /// `sock.sk_flags` (`__sk_common.skc_flags`), whose `SOCK_DONE` bit says
    /// the peer's FIN arrived (a reset or a local shutdown does not set it)
    pub sk_flags: u32,
    /// `inet_connection_sock.icsk_ulp_ops`: set once an upper layer (kernel
    /// TLS) owns the socket, whose counters then count its records, not the
    /// process's bytes.
    pub icsk_ulp_ops: u32,
    /// `tcp_sock.copied_seq`: the next byte the process will read; one more
    /// once it has read the peer's FIN.
    pub copied_seq: u32,
    /// `tcp_sock.rcv_nxt`: the next byte expected from the peer.
    pub rcv_nxt: u32,
    /// `tcp_sock.write_seq`: one past the last byte the process wrote.
    pub write_seq: u32,
}

impl SockOffsets {
    /// Whether the loader found every field.
    pub const fn known(&self) -> bool {
        self.task_files != 0
            && self.files_fdt != 0
            && self.fdt_fd != 0
            && self.file_private != 0
            && self.socket_sk != 0
            && self.sk_protocol != 0
            && self.sk_flags != 0
            && self.icsk_ulp_ops != 0
            && self.copied_seq != 0
            && self.rcv_nxt != 0
            && self.write_seq != 0
    }
}

/// Bytes [`pipelines`] looks at.
pub const SNIFF_LEN: usize = 8;

/// Whether a direction's first bytes start a protocol that puts many
/// messages in one read or write (a Redis pipeline, PostgreSQL or MySQL
/// results, HTTP/2 frames). For those a truncation loses whole messages,
/// not just a body, so the kernel side captures them up to `MAX_CAPTURE`.
/// The daemon's protocol detection decides what is parsed; this only sizes
/// the capture, so a false positive costs copying, never a wrong count.
pub fn pipelines(first: &[u8; SNIFF_LEN]) -> bool {
    let be32 =
        |at: usize| u32::from_be_bytes([first[at], first[at + 1], first[at + 2], first[at + 3]]);
    // RESP: an array of bulk strings, `*<count>\r\n`.
    let resp = first[0] == b'*' && first[1].is_ascii_digit();
    // PostgreSQL start-up: a length, then protocol 3.x or the SSL/GSS
    // encryption requests.
    let postgres =
        be32(0) < 10_000 && (be32(4) >> 16 == 3 || matches!(be32(4), 80_877_103 | 80_877_104));
    // HTTP/2 client preface, or a server's (its first SETTINGS frame).
    let http2 = first == b"PRI * HT" || (first[3] == 4 && first[4..] == [0; 4]);
    // MySQL greeting: a short first packet, sequence 0, protocol 10.
    let mysql = first[2] == 0 && first[3] == 0 && first[4] == 10;
    resp || postgres || http2 || mysql
}

/// The status line of an HTTP/1.1 protocol switch.
pub const SWITCHING: &[u8; 12] = b"HTTP/1.1 101";

/// Whether a chunk starts with an HTTP/1.1 `101 Switching Protocols`
/// answer: after it the connection speaks another protocol (HTTP/2 from
/// `Upgrade: h2c`, or WebSocket), whose frames are captured like
/// [`pipelines`]' from the next syscall on. A WebSocket costs copying only:
/// the daemon stops tracing what it does not parse.
pub fn switches_protocols(first: &[u8]) -> bool {
    first.starts_with(SWITCHING)
}

/// One TCP segment from the socket filter (`kind::PACKET`), followed by
/// `cap_len` bytes of its payload. Addresses and ports as the segment has
/// them (`src` sent it); sequence numbers in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PacketEvent {
    /// `tgid` and `conn_id` are 0: a packet names no process.
    pub header: EventHeader,
    pub src: SockAddr,
    pub dst: SockAddr,
    /// The interface it was seen on.
    pub ifindex: u32,
    pub seq: u32,
    pub ack: u32,
    /// TCP payload bytes the segment carries.
    pub payload_len: u32,
    /// Payload bytes captured (at most the capture limit).
    pub cap_len: u32,
    /// [`tcp_flag`] bits.
    pub flags: u8,
    /// [`pkt_type`]: received or outgoing.
    pub pkt_type: u8,
    /// Bytes of the TCP header with its options (20 to 60): the header
    /// follows the event, then the `cap_len` captured payload bytes, so
    /// that user space can check a whole segment's checksum.
    pub tcp_header_len: u8,
    /// 1 when the segment crossed an IPv6 routing header: its checksum's
    /// pseudo-header names the final destination, which the IP header does
    /// not, so it cannot be checked.
    pub routed: u8,
}

/// A TCP flow whichever way its segments go: the two ends, the lower
/// (address, port) first, IPv4-mapped IPv6 addresses as IPv4 (a dual-stack
/// socket names its IPv4 peers so; their packets are IPv4). The syscall
/// hooks register the flows they trace under it (`COVERED`), and the packet
/// path skips those.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub low: [u8; 16],
    pub high: [u8; 16],
    pub low_port: u16,
    pub high_port: u16,
}

impl FlowKey {
    #[inline(always)]
    pub fn new(x: &SockAddr, y: &SockAddr) -> FlowKey {
        let mut key = FlowKey::default();
        key.set(x, y);
        key
    }

    /// Makes this the key of the flow between `x` and `y`, in place: the
    /// kernel side builds it in map memory, its stack having room for
    /// little more.
    #[inline(always)]
    pub fn set(&mut self, x: &SockAddr, y: &SockAddr) {
        // Written and swapped, not compared as tuples first.
        self.low = plain_address(x);
        self.high = plain_address(y);
        self.low_port = x.port;
        self.high_port = y.port;
        if self.reversed() {
            core::mem::swap(&mut self.low, &mut self.high);
            core::mem::swap(&mut self.low_port, &mut self.high_port);
        }
    }

    #[inline(always)]
    fn reversed(&self) -> bool {
        let mut i = 0;
        while i < 16 {
            if self.low[i] != self.high[i] {
                return self.low[i] > self.high[i];
            }
            i += 1;
        }
        self.low_port > self.high_port
    }
}

/// A client socket's ends as its packets show them (IPv4-mapped IPv6 as
/// IPv4), its own end first: the key under which the kernel notes which
/// process connected it (`CLIENTS`), since a packet names no process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketEnds {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
}

impl SocketEnds {
    #[inline(always)]
    pub fn new(local: &SockAddr, remote: &SockAddr) -> SocketEnds {
        SocketEnds {
            local: plain_address(local),
            remote: plain_address(remote),
            local_port: local.port,
            remote_port: remote.port,
        }
    }
}

/// The process that connected a client socket, as `CLIENTS` holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientOwner {
    pub tgid: u32,
    /// The connecting task's name, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// The address as `FlowKey` compares it: IPv4-mapped IPv6 as IPv4.
#[inline(always)]
fn plain_address(end: &SockAddr) -> [u8; 16] {
    let a = end.addr;
    let mapped = a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff;
    if end.family == AF_INET6 && mapped {
        [
            a[12], a[13], a[14], a[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]
    } else {
        a
    }
}

/// Key of the socket table: a process's file descriptor.
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// Connection ids made by the daemon for sockets found in /proc at start-up
/// carry this bit, so they never collide with ids the kernel hands out.
pub const USER_CONN_ID_BIT: u64 = 1 << 63;

/// Connection ids the daemon makes for flows the packet path sees carry
/// these bits: apart from the kernel's and from those found in /proc.
pub const PACKET_CONN_ID_BITS: u64 = USER_CONN_ID_BIT | 1 << 62;

/// Kernel-made connection id: a per-CPU counter with the CPU number on top.
#[inline(always)]
pub const fn kernel_conn_id(cpu: u32, counter: u64) -> u64 {
    ((cpu as u64 & 0x7fff) << 48) | (counter & 0xffff_ffff_ffff)
}

const _: () = assert!(size_of::<SockAddr>() == 20);
const _: () = assert!(size_of::<Tuple>() == 40);
const _: () = assert!(size_of::<EventHeader>() == 24);
const _: () = assert!(size_of::<DataEvent>() == 56);
const _: () = assert!(size_of::<ConnEvent>() == 112);
const _: () = assert!(size_of::<ConnInfo>() == 104);
const _: () = assert!(size_of::<PacketEvent>() == 88);
const _: () = assert!(size_of::<FlowKey>() == 36);
const _: () = assert!(size_of::<SocketEnds>() == 36);
const _: () = assert!(size_of::<ClientOwner>() == 20);
const _: () = assert!(size_of::<SockOffsets>() == 48);
const _: () = assert!(MAX_CAPTURE.is_power_of_two());
const _: () = assert!(DEFAULT_CAPTURE as usize <= MAX_CAPTURE);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: repr(C), every field an integer or array of
    // integers, padding explicit, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::ConnInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketEnds {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn header_is_a_prefix_of_every_event() {
        assert_eq!(offset_of!(DataEvent, header), 0);
        assert_eq!(offset_of!(ConnEvent, header), 0);
        assert_eq!(offset_of!(EventHeader, kind), 0);
    }

    #[test]
    fn conn_key_keeps_tgid_and_fd_apart() {
        assert_eq!(conn_key(1, 2), (1 << 32) | 2);
        assert_ne!(conn_key(1, 2), conn_key(2, 1));
    }

    #[test]
    fn kernel_ids_never_carry_the_user_bit() {
        let id = kernel_conn_id(u32::MAX, u64::MAX);
        assert_eq!(id & USER_CONN_ID_BIT, 0);
        assert_ne!(kernel_conn_id(0, 1), kernel_conn_id(1, 1));
    }

    #[test]
    fn pipelining_protocols_are_told_from_http1_and_tls() {
        let yes: [&[u8; SNIFF_LEN]; 5] = [
            b"*3\r\n$3\r\n",
            b"\0\0\0\x54\0\x03\0\0",
            b"\0\0\0\x08\x04\xd2\x16\x2f",
            b"PRI * HT",
            b"\x4a\0\0\0\x0a8.0",
        ];
        for first in yes {
            assert!(pipelines(first), "{first:?}");
        }
        let no: [&[u8; SNIFF_LEN]; 4] = [
            b"GET / HT",
            b"HTTP/1.1",
            b"\x16\x03\x01\x02\0\x01\0\x01",
            b"POST /x ",
        ];
        for first in no {
            assert!(!pipelines(first), "{first:?}");
        }
    }

    #[test]
    fn a_server_preface_is_a_settings_frame_on_stream_0() {
        // nginx's: three settings; an empty one; one with ACK or on a
        // stream is no preface, nor is a length that is no list of settings.
        assert!(settings_frame(&[0, 0, 18, 4, 0, 0, 0, 0, 0, 0, 3]));
        assert!(settings_frame(&[0, 0, 0, 4, 0, 0, 0, 0, 0]));
        assert!(!settings_frame(&[0, 0, 0, 4, 1, 0, 0, 0, 0]));
        assert!(!settings_frame(&[0, 0, 6, 4, 0, 0, 0, 0, 1]));
        assert!(!settings_frame(&[0, 0, 7, 4, 0, 0, 0, 0, 0]));
        assert!(!settings_frame(&[0, 0, 6, 4, 0, 0, 0]));
        assert!(pipelines(&[0, 0, 18, 4, 0, 0, 0, 0]));
    }

    #[test]
    fn only_a_switch_switches() {
        assert!(switches_protocols(b"HTTP/1.1 101 Switching Protocols\r\n"));
        for other in [
            &b"HTTP/1.1 100 Continue\r\n"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.0 101 x",
            b"HTTP/1.1 10",
        ] {
            assert!(!switches_protocols(other), "{other:?}");
        }
    }

    #[test]
    fn stat_names_cover_every_counter() {
        assert_eq!(stat::NAMES.len(), stat::COUNT as usize);
    }

    #[test]
    fn a_flow_key_is_the_same_both_ways_and_for_mapped_addresses() {
        let v4 = |a: [u8; 4], port| {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&a);
            SockAddr {
                addr,
                port,
                family: AF_INET,
            }
        };
        let mapped = |a: [u8; 4], port| {
            let mut addr = [0; 16];
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..].copy_from_slice(&a);
            SockAddr {
                addr,
                port,
                family: AF_INET6,
            }
        };
        let (client, server) = (v4([10, 0, 0, 2], 40000), v4([10, 0, 0, 1], 80));
        let key = FlowKey::new(&client, &server);
        assert_eq!(key, FlowKey::new(&server, &client));
        assert_eq!(key.low_port, 80);
        let seen_by_dual_stack =
            FlowKey::new(&mapped([10, 0, 0, 1], 80), &mapped([10, 0, 0, 2], 40000));
        assert_eq!(key, seen_by_dual_stack);
        assert_ne!(key, FlowKey::new(&client, &v4([10, 0, 0, 1], 81)));
    }
}
