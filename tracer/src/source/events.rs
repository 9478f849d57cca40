//! Typed events: what every kernel source hands the pipeline. The syscall
//! hooks' ring-buffer records are decoded here (`decode`); the packet path
//! (`source::packets`) builds the same events from TCP segments. Connection
//! tracking, reassembly and the parsers never see where bytes came from.

use std::mem::size_of;

use tracer_common::{direction, kind, role, ConnEvent, DataEvent, EventHeader, Tuple};

use crate::protocols::Side;

/// Which kernel source saw a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The syscall hooks on the process's own reads and writes.
    Syscalls,
    /// The socket filter on the interfaces' packets.
    Packets,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Syscalls => "syscalls",
            Source::Packets => "packets",
        }
    }
}

/// A connection was opened (or first seen).
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub conn_id: u64,
    pub ts_ns: u64,
    /// The process on the traced end; 0 when unknown.
    pub tgid: u32,
    /// Its descriptor; -1 for a connection no descriptor names (packets).
    pub fd: i32,
    pub side: Side,
    pub tuple: Tuple,
    /// The task name, NUL-padded; empty when unknown.
    pub comm: [u8; 16],
    pub source: Source,
    /// Seen from its first byte; false for a connection picked up
    /// mid-stream, whose parser resyncs at a message boundary.
    pub from_start: bool,
}

/// Bytes of one direction at a stream position.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    pub conn_id: u64,
    pub ts_ns: u64,
    pub tgid: u32,
    pub fd: i32,
    /// Stream position of the first byte.
    pub pos: u64,
    /// Bytes the chunk stands for; `payload` may hold fewer (truncated
    /// capture), and none for a gap of known length.
    pub len: u64,
    /// Written by the traced end (false: read by it).
    pub outbound: bool,
    pub payload: &'a [u8],
    /// HTTP/2 frame heads found beyond the capture (`pipeline::frame_heads`).
    pub frames: u8,
    pub heads: &'a [u8],
}

/// One event of a connection or process.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Opened(Opened),
    Data(Data<'a>),
    /// `bytes`: what moved per direction (inbound, outbound) in all, so
    /// bytes whose events were lost end as a counted gap.
    Closed {
        conn_id: u64,
        ts_ns: u64,
        bytes: [u64; 2],
    },
    ProcessExit {
        tgid: u32,
        ts_ns: u64,
    },
}

impl Event<'_> {
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Opened(open) => open.ts_ns,
            Event::Data(data) => data.ts_ns,
            Event::Closed { ts_ns, .. } | Event::ProcessExit { ts_ns, .. } => *ts_ns,
        }
    }
}

/// A record (of either source) that is too short, of an unknown kind, or
/// whose lengths do not fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Decodes one record of the syscall hooks' rings.
pub fn decode(record: &[u8]) -> Result<Event<'_>, Malformed> {
    match *record.first().ok_or(Malformed)? {
        kind::DATA => {
            let event = read_event::<DataEvent>(record)?;
            let end = size_of::<DataEvent>() + event.cap_len as usize;
            // Frame heads, if any, fill the record's rest.
            let heads_end = if event.frames == 0 { end } else { record.len() };
            let (Some(payload), Some(heads)) = (
                record.get(size_of::<DataEvent>()..end),
                record.get(end..heads_end),
            ) else {
                return Err(Malformed);
            };
            Ok(Event::Data(Data {
                conn_id: event.header.conn_id,
                ts_ns: event.header.ts_ns,
                tgid: event.header.tgid,
                fd: event.fd,
                pos: event.pos,
                len: u64::from(event.orig_len),
                outbound: event.direction == direction::EGRESS,
                payload,
                frames: event.frames,
                heads,
            }))
        }
        kind::OPEN => {
            let event = read_event::<ConnEvent>(record)?;
            Ok(Event::Opened(Opened {
                conn_id: event.header.conn_id,
                ts_ns: event.header.ts_ns,
                tgid: event.header.tgid,
                fd: event.fd,
                side: side_of(event.role),
                tuple: event.tuple,
                comm: event.comm,
                source: Source::Syscalls,
                from_start: true,
            }))
        }
        kind::CLOSE => {
            let event = read_event::<ConnEvent>(record)?;
            Ok(Event::Closed {
                conn_id: event.header.conn_id,
                ts_ns: event.header.ts_ns,
                bytes: event.bytes,
            })
        }
        kind::PROC_EXIT => {
            let header = read_event::<EventHeader>(record)?;
            Ok(Event::ProcessExit {
                tgid: header.tgid,
                ts_ns: header.ts_ns,
            })
        }
        _ => Err(Malformed),
    }
}

/// The side a kernel `role` value stands for: anything but a client is a
/// server.
pub fn side_of(conn_role: u8) -> Side {
    if conn_role == role::CLIENT {
        Side::Client
    } else {
        Side::Server
    }
}

/// Reads a fixed-size event from the front of a record.
pub fn read_event<T: Copy>(record: &[u8]) -> Result<T, Malformed> {
    if record.len() < size_of::<T>() {
        return Err(Malformed);
    }
    // SAFETY: the length is checked above; T is a repr(C) plain-old-data
    // type from tracer-common for which any bit pattern is valid, and the
    // read is unaligned-safe.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_records_whose_lengths_overrun_them_are_malformed() {
        let event = DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                ..Default::default()
            },
            cap_len: 10,
            ..Default::default()
        };
        let mut record = bytes_of(&event).to_vec();
        record.extend_from_slice(&[b'x'; 9]);
        assert_eq!(decode(&record).unwrap_err(), Malformed);
        record.push(b'y');
        match decode(&record) {
            Ok(Event::Data(data)) => assert_eq!(data.payload, b"xxxxxxxxxy"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_kinds_and_short_records_are_malformed() {
        assert_eq!(decode(&[]).unwrap_err(), Malformed);
        assert_eq!(decode(&[kind::OPEN; 12]).unwrap_err(), Malformed);
        assert_eq!(decode(&[99; 64]).unwrap_err(), Malformed);
    }

    fn bytes_of<T>(value: &T) -> &[u8] {
        // SAFETY: plain-old-data from tracer-common, read as bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }
}
