//! The packet path from its records to exchanges: segments of a few flows
//! (IPv4 and IPv6, over two interfaces; some with both ends local, so seen
//! from each) with any flags, sequence numbers
//! near or far from the last, payloads cut anywhere, through the flow table
//! (`tracer::source::packets`) into the whole pipeline, now and then with
//! a wrong checksum; now and then a raw record for the decoder alone. Checks beyond "no panic, no hang": the
//! flow and handshake tables and the views stay within their capacity, and
//! the pipeline never evicts a live view.
#![no_main]

use std::collections::HashMap;
use std::mem::size_of;

use libfuzzer_sys::fuzz_target;
use tracer::metadata::Identities;
use tracer::pipeline::conntrack::Pipeline;
use tracer::pipeline::records::{Record, Sink};
use tracer::source::packets::{checksum, FixedOwners, Flows};
use tracer_common::{kind, EventHeader, PacketEvent, SockAddr, AF_INET, AF_INET6};

struct Discard;

impl Sink for Discard {
    fn record(&mut self, _: &Record) {}
}

/// Small, so that eviction runs too: four flows, two of them with two
/// views, do not fit.
const CAPACITY: usize = 3;

fn end(v6: bool, host: u8, port: u16) -> SockAddr {
    let mut addr = [0; 16];
    if v6 {
        addr[0] = 0xfd;
        addr[15] = host;
    } else {
        addr[..4].copy_from_slice(&[10, 0, 0, host]);
    }
    SockAddr {
        addr,
        port,
        family: if v6 { AF_INET6 } else { AF_INET },
    }
}

fn record(event: &PacketEvent, header: &[u8], payload: &[u8]) -> Vec<u8> {
    // SAFETY: repr(C) with explicit padding fields: every byte initialised.
    let head = unsafe {
        std::slice::from_raw_parts(
            (event as *const PacketEvent).cast::<u8>(),
            size_of::<PacketEvent>(),
        )
    };
    let mut out = head.to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(payload);
    out
}

fuzz_target!(|data: &[u8]| {
    // The servers (port 80 of host 1) listen here, their process unknown.
    // The clients of flows 0 and 3 are local too: those flows have two
    // views.
    let mut owners = FixedOwners::listening(vec![(end(false, 1, 80), 0), (end(true, 1, 80), 0)]);
    for flow in [0u8, 3] {
        let v6 = flow == 3;
        let client = end(v6, 2 + flow, 40000 + u16::from(flow));
        owners = owners.with_client(&client, &end(v6, 1, 80), 100 + u32::from(flow));
    }
    let mut pipeline = Pipeline::new(CAPACITY, Identities::inline(HashMap::new()), None, Discard)
        .with_packets(Flows::new(CAPACITY, Box::new(owners)));
    // Per (flow, direction): the next sequence number.
    let mut next = [[0x7fff_fff0u32; 2]; 4];
    let mut ts = 1_000u64;
    let mut rest = data;
    while rest.len() >= 8 {
        let (op, tail) = rest.split_at(8);
        rest = tail;
        ts += u64::from(op[7]) * 1_000_000;
        if op[0] == 0xff {
            // A raw record of the next bytes, for the decoder.
            let len = usize::from(op[1]).min(rest.len());
            let (raw, tail) = rest.split_at(len);
            rest = tail;
            let mut raw = raw.to_vec();
            if let Some(first) = raw.first_mut() {
                *first = kind::PACKET;
            }
            pipeline.handle(&raw);
            continue;
        }
        let flow = usize::from(op[0] & 3);
        let from_server = op[0] & 4 != 0;
        let v6 = flow == 3;
        let (client, server) = (end(v6, 2 + flow as u8, 40000 + flow as u16), end(v6, 1, 80));
        let (src, dst) = if from_server {
            (server, client)
        } else {
            (client, server)
        };
        let dir = &mut next[flow][usize::from(from_server)];
        let seq = match op[1] >> 6 {
            0 => *dir,
            1 => dir.wrapping_sub(u32::from(op[2])),
            2 => dir.wrapping_add(u32::from(op[2]) * 100),
            _ => u32::from_le_bytes([op[2], op[3], op[4], op[1]]),
        };
        let payload_len = u32::from(op[5]) * if op[1] & 0x20 != 0 { 64 } else { 1 };
        let cap_len = (u32::from(op[6]) * 4)
            .min(payload_len)
            .min(rest.len() as u32);
        let (payload, tail) = rest.split_at(cap_len as usize);
        rest = tail;
        let flags = op[1] & 0x17; // FIN, SYN, RST, ACK
        *dir = seq
            .wrapping_add(payload_len)
            .wrapping_add(u32::from(flags & 0x03 != 0));
        let event = PacketEvent {
            header: EventHeader {
                kind: kind::PACKET,
                ts_ns: ts,
                ..Default::default()
            },
            src,
            dst,
            ifindex: 2 + u32::from(op[0] >> 7),
            seq,
            ack: next[flow][usize::from(!from_server)],
            payload_len,
            cap_len,
            flags,
            pkt_type: 0,
            tcp_header_len: 20,
            routed: op[4] & 1,
        };
        let mut header = [0u8; 20];
        header[0..2].copy_from_slice(&src.port.to_be_bytes());
        header[2..4].copy_from_slice(&dst.port.to_be_bytes());
        header[4..8].copy_from_slice(&event.seq.to_be_bytes());
        header[8..12].copy_from_slice(&event.ack.to_be_bytes());
        header[12] = 5 << 4;
        header[13] = flags;
        checksum::seal(&src, &dst, &mut header, payload);
        if op[0] & 8 != 0 {
            header[17] ^= op[3] | 1;
        }
        pipeline.handle(&record(&event, &header, payload));
        let flows = pipeline.packets().expect("the packet path runs");
        assert!(flows.flows() <= CAPACITY, "{} flows", flows.flows());
        assert!(flows.views() <= CAPACITY, "{} views", flows.views());
        // The flow table makes room for its views itself: the pipeline
        // never has to push a live one out.
        assert_eq!(pipeline.counters.evictions, 0);
        assert!(
            flows.handshakes() <= CAPACITY,
            "{} handshakes",
            flows.handshakes()
        );
    }
    pipeline.expire_requests(ts + 600_000_000_000, 30_000_000_000);
});
