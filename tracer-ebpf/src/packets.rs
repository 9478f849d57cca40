//! The packet path: a socket filter on AF_PACKET sockets that keeps the TCP
//! segments carrying payload or SYN/FIN/RST, copies their headers' facts, the
//! TCP header itself (for the checksum, checked in user space) and up to the
//! capture limit of payload into a `PacketEvent`, and sends it
//! through the same per-CPU rings as the syscall hooks. It returns 0 for
//! every packet, so the packet socket itself never queues anything: what
//! is not sent through a ring never crosses to user space.
//!
//! The sockets are `SOCK_DGRAM`: the packet starts at its network header
//! whatever the link type, in both directions.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, generated::bpf_skb_load_bytes},
    macros::{map, socket_filter},
    maps::Array,
    programs::SkBuffContext,
};
use core::{ffi::c_void, mem::size_of};
use tracer_common::{
    kind, pkt_type, stat, tcp_flag, EventHeader, FlowKey, PacketEvent, SockAddr, AF_INET, AF_INET6,
    MAX_CAPTURE, SHED_CAPTURE,
};

use crate::{
    capture_limit,
    maps::{count, memory_short, output, ring_under_pressure, COVERED},
    self_netns,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
/// The loopback device's index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// IPv6 extension headers walked before giving up on a packet.
const MAX_EXTENSIONS: usize = 4;

/// One segment being built, one slot per CPU (the loader sizes it to the
/// possible CPUs). Apart from the syscall hooks' `SCRATCH`: a filter run
/// in a softirq may interrupt a hook on the same CPU. The payload area is
/// twice `MAX_CAPTURE` so that a length masked below that always fits (the
/// TCP header, at most 60 bytes, and at most `MAX_CAPTURE` of payload).
#[map]
pub static PACKET_SCRATCH: Array<PacketScratch> = Array::with_max_entries(1, 0);

#[repr(C)]
pub struct PacketScratch {
    pub event: PacketEvent,
    pub data: [u8; 2 * MAX_CAPTURE],
}

#[socket_filter]
pub fn packet_filter(ctx: SkBuffContext) -> i64 {
    let _ = segment(&ctx);
    0
}

/// Where the TCP header starts and where the IP packet ends, with the
/// addresses filled in (ports come with the TCP header).
struct Ip {
    l4: u32,
    end: u32,
    src: SockAddr,
    dst: SockAddr,
    /// An IPv6 routing header was crossed.
    routed: bool,
}

fn segment(ctx: &SkBuffContext) -> Result<(), ()> {
    let skb = ctx.skb.skb;
    // SAFETY: the context the kernel passed; these fields are readable by
    // socket filters.
    let (kind_of_packet, ifindex, protocol, len) = unsafe {
        (
            (*skb).pkt_type as u8,
            (*skb).ifindex,
            (*skb).protocol,
            (*skb).len,
        )
    };
    // Loopback shows every packet twice, leaving and arriving: keep one.
    if ifindex == LOOPBACK_IFINDEX && kind_of_packet == pkt_type::OUTGOING {
        return Ok(());
    }
    let ip = match u16::from_be(protocol as u16) {
        ETH_P_IP => ipv4(ctx, len)?,
        ETH_P_IPV6 => ipv6(ctx, len)?,
        _ => return Ok(()),
    };
    let Some(ip) = ip else {
        return Ok(());
    };
    let tcp: [u8; 20] = load(ctx, ip.l4)?;
    let header_len = u32::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    let payload_at = ip.l4 + header_len;
    if header_len < 20 || payload_at > ip.end || ip.end > len {
        count(stat::PACKET_MALFORMED);
        return Err(());
    }
    // A bare ACK tells nothing: skipped before the map lookup below, as
    // about half of a flow's segments are.
    let payload_len = ip.end - payload_at;
    if payload_len == 0 && flags & (tcp_flag::SYN | tcp_flag::FIN | tcp_flag::RST) == 0 {
        return Ok(());
    }
    let mut src = ip.src;
    let mut dst = ip.dst;
    src.port = u16::from_be_bytes([tcp[0], tcp[1]]);
    dst.port = u16::from_be_bytes([tcp[2], tcp[3]]);
    // SAFETY: plain map lookup.
    if let Some(&netns) = unsafe { COVERED.get(&FlowKey::new(&src, &dst)) } {
        // What this filter sees of a loopback flow is this namespace's.
        if netns == 0 || netns == self_netns() {
            return Ok(());
        }
    }

    // SAFETY: no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let scratch = PACKET_SCRATCH.get_ptr_mut(cpu).ok_or(())?;
    // SAFETY: this CPU's slot; a filter run does not nest on its CPU
    // (transmit runs with bottom halves off, receive in a softirq).
    let scratch: &mut PacketScratch = unsafe { &mut *scratch };
    let mut captured = payload_len.min(capture_limit()).min(MAX_CAPTURE as u32);
    if captured < payload_len {
        count(stat::PACKET_TRUNCATED);
    }
    if captured > SHED_CAPTURE as u32 && (ring_under_pressure() || memory_short()) {
        captured = SHED_CAPTURE as u32;
        count(stat::CAPTURE_SHED);
    }
    // The TCP header and the captured payload, from the header's start.
    // Masked as one less, plus one, so the verifier sees a length from 1 to
    // the data area's size (the helper refuses a possible 0); the header
    // makes it at least 20.
    let len = ((header_len + captured - 1) & (2 * MAX_CAPTURE as u32 - 1)) + 1;
    // SAFETY: the destination spans 2 * MAX_CAPTURE bytes, at least `len`;
    // the helper checks the packet's bounds.
    let rc = unsafe {
        bpf_skb_load_bytes(
            skb as *const c_void,
            ip.l4,
            scratch.data.as_mut_ptr() as *mut c_void,
            len,
        )
    };
    if rc != 0 {
        count(stat::PACKET_MALFORMED);
        return Err(());
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    scratch.event = PacketEvent {
        header: EventHeader {
            kind: kind::PACKET,
            _pad: [0; 3],
            tgid: 0,
            conn_id: 0,
            ts_ns: now,
        },
        src,
        dst,
        ifindex,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        payload_len,
        cap_len: captured,
        flags,
        pkt_type: kind_of_packet,
        tcp_header_len: header_len as u8,
        routed: u8::from(ip.routed),
    };
    let size = size_of::<PacketEvent>() as u32 + len;
    output(
        scratch as *const PacketScratch as *const c_void,
        u64::from(size),
        now,
        stat::PACKET_RINGBUF_FULL,
    );
    Ok(())
}

/// An IPv4 packet's TCP header and end; None for anything but an unfragmented
/// TCP packet (fragments are counted).
fn ipv4(ctx: &SkBuffContext, len: u32) -> Result<Option<Ip>, ()> {
    let h: [u8; 20] = load(ctx, 0)?;
    let header_len = u32::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || header_len < 20 {
        count(stat::PACKET_MALFORMED);
        return Err(());
    }
    if h[9] != IPPROTO_TCP {
        return Ok(None);
    }
    let fragment = u16::from_be_bytes([h[6], h[7]]);
    if fragment & 0x3fff != 0 {
        // A later fragment has no TCP header, a first one not all of the
        // payload; reassembling IP is not worth it for TCP, which avoids
        // fragmenting.
        count(stat::PACKET_MALFORMED);
        return Err(());
    }
    let total = u32::from(u16::from_be_bytes([h[2], h[3]]));
    // A GSO packet beyond 64 KiB (BIG TCP) says 0: it ends where the skb does.
    let end = if total == 0 { len } else { total };
    let mut src = SockAddr {
        family: AF_INET,
        ..SockAddr::default()
    };
    let mut dst = src;
    src.addr[..4].copy_from_slice(&h[12..16]);
    dst.addr[..4].copy_from_slice(&h[16..20]);
    Ok(Some(Ip {
        l4: header_len,
        end,
        src,
        dst,
        routed: false,
    }))
}

/// An IPv6 packet's TCP header (past up to `MAX_EXTENSIONS` extension
/// headers) and end.
fn ipv6(ctx: &SkBuffContext, len: u32) -> Result<Option<Ip>, ()> {
    let h: [u8; 40] = load(ctx, 0)?;
    if h[0] >> 4 != 6 {
        count(stat::PACKET_MALFORMED);
        return Err(());
    }
    let payload = u32::from(u16::from_be_bytes([h[4], h[5]]));
    // A jumbogram (BIG TCP) says 0: it ends where the skb does.
    let end = if payload == 0 { len } else { 40 + payload };
    let mut next = h[6];
    let mut at = 40u32;
    let mut found = false;
    let mut routed = false;
    for _ in 0..MAX_EXTENSIONS {
        match next {
            IPPROTO_TCP => {
                found = true;
                break;
            }
            // Hop-by-hop, routing, destination options: 8-byte units.
            0 | 43 | 60 => {
                routed |= next == 43;
                let ext: [u8; 2] = load(ctx, at)?;
                next = ext[0];
                at += (u32::from(ext[1]) + 1) * 8;
            }
            // Authentication header: 4-byte units.
            51 => {
                let ext: [u8; 2] = load(ctx, at)?;
                next = ext[0];
                at += (u32::from(ext[1]) + 2) * 4;
            }
            44 => {
                count(stat::PACKET_MALFORMED);
                return Err(());
            }
            _ => return Ok(None),
        }
    }
    if !found && next != IPPROTO_TCP {
        count(stat::PACKET_MALFORMED);
        return Err(());
    }
    let mut src = SockAddr {
        family: AF_INET6,
        ..SockAddr::default()
    };
    let mut dst = src;
    src.addr.copy_from_slice(&h[8..24]);
    dst.addr.copy_from_slice(&h[24..40]);
    Ok(Some(Ip {
        l4: at,
        end,
        src,
        dst,
        routed,
    }))
}

/// `N` bytes of the packet at `at`; a packet cut short is counted.
#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, at: u32) -> Result<[u8; N], ()> {
    ctx.skb.load::<[u8; N]>(at as usize).map_err(|_| {
        count(stat::PACKET_MALFORMED);
    })
}
