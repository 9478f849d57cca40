//! Hostile input through the protocol dispatcher, as a new client
//! connection sees it: a length field that claims gigabytes, a RESP reply
//! of a million elements, a PostgreSQL message type that does not exist, an
//! HPACK index out of range, a stream that turns out not to be the protocol
//! it first looked like. Each case checks what it must be counted as (a
//! resync, a partial exchange, or the valid exchanges beside it, exactly),
//! and that the parser's memory stays bounded: a counting allocator measures
//! the heap the case grows, which must stay far below what the input claims.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tracer::pipeline::conntrack::{ParserTally, PROTOCOLS};
use tracer::protocols::{Call, Exchange, Failure, Parser, ParserCounters, Piece, Protocol, Side};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; only
// counts sizes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One case at a time: the peak is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Heap a case may grow by: a few parser buffers, nothing proportional to
/// what the input claims.
const MAX_GROWTH: usize = 512 * 1024;

/// A client connection: requests outbound, responses inbound.
struct Client {
    parser: Parser,
    counters: ParserTally,
    out: Vec<Exchange>,
    tick: u64,
}

impl Client {
    fn new() -> Self {
        Self {
            parser: Parser::detect(Side::Client),
            counters: [ParserCounters::default(); PROTOCOLS],
            out: Vec::new(),
            tick: 0,
        }
    }

    fn piece(&mut self, request: bool, piece: Piece<'_>) {
        self.tick += 1;
        self.parser
            .on_piece(request, piece, self.tick, &mut self.counters, &mut self.out);
    }

    fn req(&mut self, bytes: &[u8]) {
        self.piece(true, Piece::Data(bytes));
    }

    fn resp(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(16 * 1024) {
            self.piece(false, Piece::Data(chunk));
        }
    }

    fn close(&mut self) {
        self.tick += 1;
        self.parser
            .on_close(self.tick, &mut self.counters, &mut self.out);
    }

    fn counters(&self, protocol: Protocol) -> ParserCounters {
        self.counters[protocol.index()]
    }

    /// Operations (databases) or paths (HTTP) of the exchanges so far.
    fn calls(&self) -> Vec<String> {
        self.out
            .iter()
            .map(|e| match &e.call {
                Call::Db(db) => db.operation.clone(),
                Call::Http(http) => format!("{} {}", http.method, http.status),
                Call::Grpc(grpc) => grpc.method.clone(),
            })
            .collect()
    }
}

/// Runs `case` alone and returns how much the heap grew at its peak.
fn peak_growth(case: impl FnOnce()) -> usize {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    case();
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

#[test]
fn redis_reply_of_a_million_elements_is_walked_in_bounded_memory() {
    let mut input = b"*1000000\r\n".to_vec();
    for _ in 0..1_000_000 {
        input.extend_from_slice(b":1\r\n");
    }
    let grown = peak_growth(|| {
        let mut c = Client::new();
        c.req(b"*3\r\n$6\r\nLRANGE\r\n$1\r\nk\r\n$2\r\n-1\r\n");
        c.resp(&input);
        c.req(b"*1\r\n$4\r\nPING\r\n");
        c.resp(b"+PONG\r\n");
        assert_eq!(c.calls(), ["LRANGE", "PING"]);
        assert_eq!(c.counters(Protocol::Redis), ParserCounters::default());
    });
    assert!(grown < MAX_GROWTH, "grew {grown} bytes over a 4 MB reply");
}

#[test]
fn redis_bulk_claiming_gigabytes_is_skipped_by_counting() {
    let grown = peak_growth(|| {
        let mut c = Client::new();
        c.req(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        c.resp(b"$3000000000\r\nabc");
        // The rest of the value was never captured: a gap of known length.
        c.piece(false, Piece::Gap(3_000_000_000 - 3));
        c.resp(b"\r\n");
        c.req(b"*1\r\n$4\r\nPING\r\n");
        c.resp(b"+PONG\r\n");
        assert_eq!(c.calls(), ["GET", "PING"]);
        assert_eq!(c.counters(Protocol::Redis), ParserCounters::default());
    });
    assert!(grown < MAX_GROWTH, "grew {grown} bytes");
}

#[test]
fn http_text_sent_to_redis_is_read_as_the_inline_commands_redis_itself_sees() {
    // Redis reads any line as an inline command: `GET / HTTP/1.1` is a GET
    // with two arguments (an arity error it counts as a rejected call), and
    // it closes the connection at `Host:` (its cross-protocol guard). The
    // tracer sees the same three requests, and no resync: nothing here is
    // malformed RESP.
    let mut c = Client::new();
    c.req(b"*1\r\n$4\r\nPING\r\n");
    c.resp(b"+PONG\r\n");
    c.req(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    c.resp(b"-ERR wrong number of arguments for 'get' command\r\n");
    c.close();
    assert_eq!(c.calls(), ["PING", "GET", "_OTHER"]);
    let Call::Db(get) = &c.out[1].call else {
        panic!("not a database call: {:?}", c.out[1]);
    };
    assert_eq!(get.error.as_deref(), Some("ERR"));
    assert_eq!(c.out[2].failure, Some(Failure::ConnectionClosed));
    assert_eq!(c.counters(Protocol::Redis), ParserCounters::default());
}

/// A PostgreSQL client past its start-up: trust authentication, ready.
fn postgres_ready() -> Client {
    let mut c = Client::new();
    let mut startup = Vec::new();
    let params = b"user\0postgres\0\0";
    startup.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    startup.extend_from_slice(params);
    c.req(&startup);
    c.resp(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I");
    c
}

fn pg_query(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&(4 + sql.len() as u32 + 1).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

/// CommandComplete `SELECT 1` then ReadyForQuery.
const PG_SELECT_DONE: &[u8] = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";

#[test]
fn postgres_message_type_that_does_not_exist_is_a_resync() {
    let mut c = postgres_ready();
    c.req(b"\x01\0\0\0\x08junk");
    c.req(&pg_query("SELECT 1"));
    c.resp(PG_SELECT_DONE);
    assert_eq!(c.calls(), ["SELECT"]);
    assert_eq!(c.counters(Protocol::Postgres).resyncs, 1);
}

#[test]
fn postgres_length_claiming_gigabytes_is_a_resync_not_an_allocation() {
    let grown = peak_growth(|| {
        let mut c = postgres_ready();
        c.req(b"Q\x7f\xff\xff\xffSELECT");
        c.req(&pg_query("SELECT 1"));
        c.resp(PG_SELECT_DONE);
        assert_eq!(c.calls(), ["SELECT"]);
        assert_eq!(c.counters(Protocol::Postgres).resyncs, 1);
    });
    assert!(grown < MAX_GROWTH, "grew {grown} bytes");
}

/// An HTTP/2 frame: length, type, flags, stream, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const END_STREAM_AND_HEADERS: u8 = 0x05;

/// `:method GET`, `:scheme http`, `:path /` from the static table.
const GET_ROOT: &[u8] = &[0x82, 0x86, 0x84];

#[test]
fn hpack_index_out_of_range_is_a_partial_exchange_never_a_wrong_one() {
    let mut c = Client::new();
    let mut req = PREFACE.to_vec();
    req.extend(frame(SETTINGS, 0, 0, &[]));
    // Stream 1: an indexed field far beyond both tables.
    req.extend(frame(
        HEADERS,
        END_STREAM_AND_HEADERS,
        1,
        &[0xff, 0x80, 0x80, 0x80, 0x08],
    ));
    c.req(&req);
    let mut resp = frame(SETTINGS, 0, 0, &[]);
    resp.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, &[0x88]));
    c.resp(&resp);
    // Stream 3 afterwards decodes from the static table alone.
    c.req(&frame(HEADERS, END_STREAM_AND_HEADERS, 3, GET_ROOT));
    c.resp(&frame(HEADERS, END_STREAM_AND_HEADERS, 3, &[0x88]));
    assert_eq!(c.calls(), [" 200", "GET 200"]);
    assert_eq!(c.counters(Protocol::Http2).partial, 1);
}

#[test]
fn http2_frame_length_beyond_the_maximum_is_a_resync() {
    let grown = peak_growth(|| {
        let mut c = Client::new();
        let mut req = PREFACE.to_vec();
        req.extend(frame(SETTINGS, 0, 0, &[]));
        c.req(&req);
        // The server's SETTINGS leave its maximum frame size at 16 KiB.
        c.resp(&frame(SETTINGS, 0, 0, &[]));
        let mut req = Vec::new();
        // A HEADERS frame claiming 16 MiB - 1: beyond SETTINGS_MAX_FRAME_SIZE.
        req.extend_from_slice(&[0xff, 0xff, 0xff, HEADERS, 0x05, 0, 0, 0, 1]);
        req.extend_from_slice(&[0u8; 64]);
        c.req(&req);
        assert_eq!(c.counters(Protocol::Http2).resyncs, 1);
    });
    assert!(grown < MAX_GROWTH, "grew {grown} bytes");
}

#[test]
fn postgres_stream_that_turns_into_noise_resyncs_and_counts_the_queries_beside_it() {
    let mut c = postgres_ready();
    c.req(&pg_query("SELECT 1"));
    c.resp(PG_SELECT_DONE);
    c.req(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    c.req(&pg_query("SELECT 1"));
    c.resp(PG_SELECT_DONE);
    assert_eq!(c.calls(), ["SELECT", "SELECT"]);
    assert_eq!(c.counters(Protocol::Postgres).resyncs, 1);
}

#[test]
fn http2_stream_that_turns_into_noise_resyncs_and_counts_the_streams_beside_it() {
    let mut c = Client::new();
    let mut req = PREFACE.to_vec();
    req.extend(frame(SETTINGS, 0, 0, &[]));
    req.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, GET_ROOT));
    c.req(&req);
    let mut resp = frame(SETTINGS, 0, 0, &[]);
    resp.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, &[0x88]));
    c.resp(&resp);
    c.req(&[0xff; 40]);
    c.req(&frame(HEADERS, END_STREAM_AND_HEADERS, 3, GET_ROOT));
    c.resp(&frame(HEADERS, END_STREAM_AND_HEADERS, 3, &[0x88]));
    assert_eq!(c.calls(), ["GET 200", "GET 200"]);
    assert_eq!(c.counters(Protocol::Http2).resyncs, 1);
}
