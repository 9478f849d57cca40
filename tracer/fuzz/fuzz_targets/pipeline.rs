//! The whole user-space pipeline from ring-buffer records: the record
//! decoder, the connection table, reassembly and the parsers. A script (see
//! the crate's documentation) becomes the records the kernel side writes for
//! one connection (open, data with positions, chunks of which nothing was
//! captured, close, and the next connection); with settings bit 2 the input is raw records
//! instead (a length byte, then the record), for the decoder alone.
#![no_main]

use std::collections::HashMap;
use std::mem::size_of;

use libfuzzer_sys::fuzz_target;
use tracer::metadata::Identities;
use tracer::pipeline::conntrack::Pipeline;
use tracer::pipeline::records::{Record, Sink};
use tracer_common::{
    direction, kind, role, ConnEvent, DataEvent, EventHeader, SockAddr, Tuple, AF_INET, COMM_LEN,
};
use tracer_fuzz::{script, side, Step};

struct Discard;

impl Sink for Discard {
    fn record(&mut self, _: &Record) {}
}

/// A pid above any possible `pid_max`: no /proc lookups succeed.
const TGID: u32 = 4_000_000_000;

fn bytes_of<T>(value: &T) -> &[u8] {
    // SAFETY: the event structs are repr(C) with explicit padding fields,
    // so every byte of them is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

fn header(event_kind: u8, conn_id: u64, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind: event_kind,
        _pad: [0; 3],
        tgid: TGID,
        conn_id,
        ts_ns,
    }
}

fn conn_event(event_kind: u8, conn_id: u64, ts_ns: u64, conn_role: u8) -> ConnEvent {
    let addr = |port| SockAddr {
        addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        port,
        family: AF_INET,
    };
    let (local, remote) = if conn_role == role::SERVER {
        (addr(8080), addr(40000))
    } else {
        (addr(40000), addr(8080))
    };
    ConnEvent {
        header: header(event_kind, conn_id, ts_ns),
        tuple: Tuple { local, remote },
        fd: 7,
        pid: TGID,
        role: conn_role,
        _pad: [0; 7],
        comm: *b"fuzzed\0\0\0\0\0\0\0\0\0\0",
        bytes: [0; 2],
    }
}

const _: () = assert!(COMM_LEN == 16);

fuzz_target!(|data: &[u8]| {
    let mut pipeline = Pipeline::new(64, Identities::inline(HashMap::new()), None, Discard);
    let (settings, steps) = script(data);
    if settings & 4 != 0 {
        let mut rest = data.get(1..).unwrap_or_default();
        while let Some((&len, tail)) = rest.split_first() {
            let (record, tail) = tail.split_at(usize::from(len).min(tail.len()));
            pipeline.handle(record);
            rest = tail;
        }
        return;
    }
    let conn_role = match side(settings) {
        tracer::protocols::Side::Client => role::CLIENT,
        tracer::protocols::Side::Server => role::SERVER,
    };
    let mut conn_id = 1;
    let mut ts = 1_000;
    let mut pos = [0u64; 2];
    pipeline.handle(bytes_of(&conn_event(kind::OPEN, conn_id, ts, conn_role)));
    let mut record = Vec::new();
    for step in steps {
        ts += 1_000;
        let (outbound, captured, orig_len) = match step {
            Step::Data { outbound, bytes } => (outbound, bytes, bytes.len() as u64),
            Step::Gap { outbound, len } => (outbound, &[][..], len),
            Step::Close => {
                pipeline.handle(bytes_of(&conn_event(kind::CLOSE, conn_id, ts, conn_role)));
                conn_id += 1;
                pos = [0; 2];
                pipeline.handle(bytes_of(&conn_event(kind::OPEN, conn_id, ts, conn_role)));
                continue;
            }
            Step::Expire => {
                ts += 60_000_000_000;
                pipeline.expire_requests(ts, 30_000_000_000);
                continue;
            }
        };
        let dir = if outbound {
            direction::EGRESS
        } else {
            direction::INGRESS
        };
        let event = DataEvent {
            header: header(kind::DATA, conn_id, ts),
            pos: pos[usize::from(dir)],
            pid: TGID,
            fd: 7,
            orig_len: u32::try_from(orig_len).unwrap_or(u32::MAX),
            cap_len: captured.len() as u32,
            direction: dir,
            frames: 0,
            _pad: [0; 6],
        };
        pos[usize::from(dir)] += u64::from(event.orig_len);
        record.clear();
        record.extend_from_slice(bytes_of(&event));
        record.extend_from_slice(captured);
        pipeline.handle(&record);
    }
    pipeline.handle(bytes_of(&conn_event(
        kind::CLOSE,
        conn_id,
        ts + 1,
        conn_role,
    )));
});
