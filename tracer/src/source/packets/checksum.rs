//! The TCP checksum of a segment captured whole: a segment whose checksum
//! is wrong is one the receiving kernel drops (its sender retransmits it),
//! or one forged onto the wire, so the packet path must not take its bytes.
//!
//! Segments leaving through a device that computes checksums (loopback,
//! veths, NICs with offload) are seen before that happens: their checksum
//! field holds only the pseudo-header's sum (`CHECKSUM_PARTIAL`). Those are
//! accepted as they are; anything else must sum to all ones.

use tracer_common::{SockAddr, AF_INET};

/// What the checksum says of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The whole segment sums to all ones.
    Valid,
    /// The field holds the pseudo-header's sum, for the device to finish.
    Offloaded,
    /// Neither: the segment is corrupt or forged.
    Bad,
    /// Only part of the payload was captured: nothing to check against.
    Unchecked,
}

/// Checks a segment from `src` to `dst` whose TCP header is `header` (with
/// options) and whose payload is `payload`, of `payload_len` bytes on the
/// wire.
pub fn verdict(
    src: &SockAddr,
    dst: &SockAddr,
    header: &[u8],
    payload: &[u8],
    payload_len: u32,
) -> Checksum {
    if payload.len() as u64 != u64::from(payload_len) {
        return Checksum::Unchecked;
    }
    let Some(field) = header.get(16..18).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return Checksum::Bad;
    };
    let tcp_len = header.len() as u64 + payload.len() as u64;
    let (a, b) = addresses(src, dst);
    let addresses = sum(a) + sum(b);
    let pseudo = addresses + u64::from(IPPROTO_TCP) + split(tcp_len);
    // TCP headers are a multiple of 4 bytes: the payload's words line up.
    if fold(pseudo + sum(header) + sum(payload)) == 0xffff {
        return Checksum::Valid;
    }
    // Some drivers' offload wants the pseudo-header without the length.
    if field == fold(pseudo) || field == fold(addresses + u64::from(IPPROTO_TCP)) {
        return Checksum::Offloaded;
    }
    Checksum::Bad
}

const IPPROTO_TCP: u8 = 6;

/// Fills in `header`'s checksum field for `payload`, whole (as a peer's
/// segment arrives): for building segments in tests and fuzzing.
pub fn seal(src: &SockAddr, dst: &SockAddr, header: &mut [u8], payload: &[u8]) {
    if let Some(field) = header.get_mut(16..18) {
        field.fill(0);
    } else {
        return;
    }
    let (a, b) = addresses(src, dst);
    let len = header.len() as u64 + payload.len() as u64;
    let total = sum(a) + sum(b) + u64::from(IPPROTO_TCP) + split(len) + sum(header) + sum(payload);
    let check = !fold(total);
    if let Some(field) = header.get_mut(16..18) {
        field.copy_from_slice(&check.to_be_bytes());
    }
}

/// The address bytes of the pseudo-header.
fn addresses<'a>(src: &'a SockAddr, dst: &'a SockAddr) -> (&'a [u8], &'a [u8]) {
    if src.family == AF_INET {
        (&src.addr[..4], &dst.addr[..4])
    } else {
        (&src.addr[..], &dst.addr[..])
    }
}

/// A length as the pseudo-header's 16-bit words (IPv6 has 32 bits of it).
fn split(len: u64) -> u64 {
    (len >> 16) + (len & 0xffff)
}

/// One's complement sum of big-endian 16-bit words, an odd last byte padded
/// with zero; carries are folded later.
fn sum(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut total = 0u64;
    for chunk in &mut chunks {
        // Four words at once: their sum cannot overflow 64 bits over any
        // slice shorter than 2^46 bytes.
        let w = u64::from_be_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        total += (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff);
    }
    let mut words = chunks.remainder().chunks(2);
    for word in &mut words {
        total += u64::from(u16::from_be_bytes([
            word[0],
            word.get(1).copied().unwrap_or(0),
        ]));
    }
    total
}

/// Folds the carries back in, down to 16 bits.
fn fold(mut total: u64) -> u16 {
    while total > 0xffff {
        total = (total >> 16) + (total & 0xffff);
    }
    total as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::AF_INET6;

    fn v4(a: [u8; 4], port: u16) -> SockAddr {
        let mut addr = SockAddr {
            family: AF_INET,
            port,
            ..SockAddr::default()
        };
        addr.addr[..4].copy_from_slice(&a);
        addr
    }

    /// A TCP header from `src` to `dst` carrying `payload`, with a whole
    /// checksum or only the pseudo-header's sum (`offloaded`).
    fn segment(src: &SockAddr, dst: &SockAddr, payload: &[u8], offloaded: bool) -> Vec<u8> {
        let mut header = vec![0u8; 20];
        header[0..2].copy_from_slice(&80u16.to_be_bytes());
        header[2..4].copy_from_slice(&40000u16.to_be_bytes());
        header[4..8].copy_from_slice(&12345u32.to_be_bytes());
        header[12] = 5 << 4;
        header[13] = 0x18;
        if offloaded {
            let len = (header.len() + payload.len()) as u64;
            let (a, b) = addresses(src, dst);
            let pseudo = fold(sum(a) + sum(b) + 6 + split(len));
            header[16..18].copy_from_slice(&pseudo.to_be_bytes());
        } else {
            seal(src, dst, &mut header, payload);
        }
        header
    }

    #[test]
    fn whole_and_offloaded_checksums_pass_and_corruption_does_not() {
        let (src, dst) = (v4([10, 0, 0, 1], 80), v4([10, 0, 0, 2], 40000));
        let mut v6src = SockAddr {
            family: AF_INET6,
            ..SockAddr::default()
        };
        v6src.addr[15] = 1;
        let mut v6dst = v6src;
        v6dst.addr[15] = 2;
        v6dst.addr[0] = 0xfe;
        for (src, dst) in [(src, dst), (v6src, v6dst)] {
            for payload in [&b""[..], b"x", b"GET / HTTP/1.1\r\n\r\n", &[0xff; 1001]] {
                let len = payload.len() as u32;
                let header = segment(&src, &dst, payload, false);
                assert_eq!(verdict(&src, &dst, &header, payload, len), Checksum::Valid);
                let partial = segment(&src, &dst, payload, true);
                assert_eq!(
                    verdict(&src, &dst, &partial, payload, len),
                    Checksum::Offloaded
                );
                // One byte changed, in the payload or the header.
                let mut forged = payload.to_vec();
                forged.push(b'!');
                assert_eq!(
                    verdict(&src, &dst, &header, &forged, len + 1),
                    Checksum::Bad
                );
                let mut other = header.clone();
                other[7] ^= 1;
                assert_eq!(verdict(&src, &dst, &other, payload, len), Checksum::Bad);
                // Part of the payload only: nothing to check.
                assert_eq!(
                    verdict(&src, &dst, &other, payload, len + 10),
                    Checksum::Unchecked
                );
            }
        }
    }
}
