//! Reads one packet record (`kind::PACKET`): the fixed `PacketEvent`, then
//! the TCP header and the captured payload, checked so that a corrupt record
//! is refused whole rather than read past its end or with an address nobody
//! can match; and the segment's checksum.

use std::mem::size_of;

use tracer_common::{kind, PacketEvent, SockAddr, AF_INET, AF_INET6};

use super::checksum::{self, Checksum};
use crate::source::events::{read_event, Malformed};

/// One TCP segment as the socket filter saw it.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub ts_ns: u64,
    pub src: SockAddr,
    pub dst: SockAddr,
    pub ifindex: u32,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes the segment carried; `payload` may hold fewer.
    pub payload_len: u32,
    pub payload: &'a [u8],
    pub flags: u8,
    pub checksum: Checksum,
}

/// Decodes one packet record: `Malformed` when it is too short, of another
/// kind, claims more captured bytes than it holds or than the segment
/// carried, has a TCP header length TCP cannot have, or names no IP family.
pub fn segment(record: &[u8]) -> Result<Segment<'_>, Malformed> {
    let event = read_event::<PacketEvent>(record)?;
    let header_len = usize::from(event.tcp_header_len);
    if event.header.kind != kind::PACKET
        || event.cap_len > event.payload_len
        || !(20..=60).contains(&header_len)
        || header_len % 4 != 0
    {
        return Err(Malformed);
    }
    let start = size_of::<PacketEvent>();
    let header = record.get(start..start + header_len).ok_or(Malformed)?;
    let payload = (start + header_len)
        .checked_add(event.cap_len as usize)
        .and_then(|end| record.get(start + header_len..end))
        .ok_or(Malformed)?;
    let family = event.src.family;
    if !matches!(family, AF_INET | AF_INET6) || event.dst.family != family {
        return Err(Malformed);
    }
    let (src, dst) = (canonical(event.src), canonical(event.dst));
    Ok(Segment {
        ts_ns: event.header.ts_ns,
        src,
        dst,
        ifindex: event.ifindex,
        seq: event.seq,
        ack: event.ack,
        payload_len: event.payload_len,
        payload,
        flags: event.flags,
        checksum: if event.routed != 0 {
            Checksum::Unchecked
        } else {
            checksum::verdict(&src, &dst, header, payload, event.payload_len)
        },
    })
}

/// An endpoint as a socket names it, as its packets show it: an
/// IPv4-mapped IPv6 address (a dual-stack socket's IPv4 peer) is IPv4.
pub fn as_on_the_wire(mut addr: SockAddr) -> SockAddr {
    let a = addr.addr;
    if addr.family == AF_INET6 && a[..10] == [0; 10] && a[10..12] == [0xff, 0xff] {
        addr.family = AF_INET;
        addr.addr = [0; 16];
        addr.addr[..4].copy_from_slice(&a[12..16]);
    }
    canonical(addr)
}

/// An IPv4 address uses 4 of the 16 bytes: the rest is zeroed so that the
/// same endpoint always compares (and hashes) equal.
fn canonical(mut addr: SockAddr) -> SockAddr {
    if addr.family == AF_INET {
        addr.addr[4..].fill(0);
    }
    addr
}
