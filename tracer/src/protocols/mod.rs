//! Application protocol parsers. Each parser sees one connection's two byte
//! streams, in order, as `Piece`s from `reassembly`, and answers with finished
//! request/response exchanges. `detect` infers a new connection's protocol
//! from its first bytes; `Parser` dispatches to the parser it picked.
//!
//! Every parser follows one contract ([`ConnParser`]): it never fails, it
//! answers with a state. Malformed input is counted as a resync and skipped
//! to the next plausible message start; bytes it cannot use (another
//! protocol, an upgrade it does not follow) end with [`Verdict::Done`] so
//! the kernel stops copying the connection.

pub mod detect;
pub mod dispatch;
pub mod hpack;
pub mod http1;
pub mod http2;
mod huffman;
mod huffman_memo;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
mod sql_memo;

pub use dispatch::{Parser, Protocol, Spec};

/// A contiguous run of one direction's bytes, or a run that was not captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes in stream order.
    Data(&'a [u8]),
    /// This many bytes passed but were not captured (truncation, sendfile,
    /// lost events). A parser skipping a body consumes gaps silently; a
    /// parser inside a header must resync.
    Gap(u64),
}

/// Which end of the connection the traced process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The process accepted the connection: it receives requests.
    Server,
    /// The process connected: it sends requests.
    Client,
}

/// How a parser begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the connection's first byte, known (by `detect` or by the server
    /// port's history) to speak this protocol: garbage is a resync.
    Fresh,
    /// Somewhere inside a connection that was open before we saw it: skip
    /// silently to the first plausible message boundary; responses to
    /// requests we did not see are not counted.
    MidStream,
}

/// One request paired with its response (or with its failure to get one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Exchange {
    /// What was asked and answered, in the protocol's own terms.
    pub call: Call,
    /// Why the request got no response, when it got none.
    pub failure: Option<Failure>,
    /// Timestamp (ns, CLOCK_MONOTONIC) of the first byte of the request.
    pub start_ns: u64,
    /// Timestamp (ns) of the chunk that completed the response.
    pub end_ns: u64,
    /// HTTP/1.x: the response body's length as sent, chunk framing
    /// included (what nginx logs as `$body_bytes_sent`); None for other
    /// protocols and for requests that got no response.
    pub response_body_bytes: Option<u64>,
}

/// The protocol-specific part of an exchange: what the metrics stage maps
/// to series. Never holds payload, header values, statement text or keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    /// HTTP/1.x or HTTP/2 (not gRPC).
    Http(HttpCall),
    /// A gRPC call over HTTP/2.
    Grpc(GrpcCall),
    /// A database or cache command (client side).
    Db(DbCall),
}

/// An HTTP request and its final response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpCall {
    /// Request method as sent (`GET`, `POST`, ...).
    pub method: String,
    /// Request target path with the query string and fragment removed.
    pub path: String,
    /// Final response status code: never 100 or 103 (interim responses);
    /// 101 when the connection switched protocols; 0 when there was no
    /// response (see `Exchange::failure`) or it could not be decoded.
    pub status: u16,
}

/// A gRPC call: `/package.Service/Method` and its `grpc-status`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrpcCall {
    /// `package.Service`, from the `:path`.
    pub service: String,
    /// `Method`, from the `:path`.
    pub method: String,
    /// `grpc-status` from the trailers (or a trailers-only response); None
    /// when the call ended without one (reset, connection closed, or a
    /// header block that could not be decoded).
    pub status: Option<u32>,
}

/// Which database an operation went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbSystem {
    Postgres,
    Mysql,
    Redis,
}

impl DbSystem {
    /// OpenTelemetry's `db.system.name` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgresql",
            Self::Mysql => "mysql",
            Self::Redis => "redis",
        }
    }
}

/// One database operation, client side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DbCall {
    pub system: DbSystem,
    /// The SQL verb in upper case (`SELECT`, `INSERT`, `BEGIN`, ...) or the
    /// Redis command in upper case (`GET`, `HSET`, ...); `COPY`, `EXECUTE`
    /// and the like for protocol-level operations. Never statement text.
    pub operation: String,
    /// The one table a simple statement names (`SELECT .. FROM t`,
    /// `INSERT INTO t`, `UPDATE t`, `DELETE FROM t`), else None.
    pub collection: Option<String>,
    /// The server answered with an error: the SQLSTATE (`42P01`), the MySQL
    /// error number (`1146`) or the Redis error prefix (`WRONGTYPE`).
    pub error: Option<String>,
}

impl Exchange {
    /// The HTTP part, for callers that only deal with HTTP (tests, watch).
    pub fn http(&self) -> Option<&HttpCall> {
        match &self.call {
            Call::Http(http) => Some(http),
            _ => None,
        }
    }
}

/// Why a request has no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Nothing came back within the request timeout.
    Timeout,
    /// The connection closed (or was reset) first.
    ConnectionClosed,
    /// The stream was reset (HTTP/2 `RST_STREAM`) before a final response.
    Reset,
}

impl Failure {
    /// OpenTelemetry's `error.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ConnectionClosed => "connection_closed",
            Self::Reset => "stream_reset",
        }
    }
}

/// Loss and anomaly counts a parser reports; the caller turns them into
/// metrics labelled with the parser's protocol.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParserCounters {
    /// Malformed input was skipped up to the next plausible message start.
    pub resyncs: u64,
    /// A request dropped without a response being seen: its answer was
    /// lost (a gap), or the backlog of waiting requests overflowed.
    /// Requests that time out or whose connection closes first are
    /// exchanges with a `failure`, not counted here.
    pub unmatched_requests: u64,
    /// A response with no request waiting for it.
    pub unmatched_responses: u64,
    /// Exchanges reported with fields that could not be decoded, such as
    /// HTTP/2 headers that refer to an HPACK table built before the
    /// connection was picked up.
    pub partial: u64,
}

impl ParserCounters {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &ParserCounters) {
        self.resyncs += other.resyncs;
        self.unmatched_requests += other.unmatched_requests;
        self.unmatched_responses += other.unmatched_responses;
        self.partial += other.partial;
    }
}

/// What a parser has made of its connection so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not sure yet (a mid-stream connection still looking for a message).
    Unknown,
    /// A message of the protocol was parsed: this is the protocol.
    Speaks,
    /// Nothing more to parse here (not the protocol after all, or an
    /// upgrade to something no parser follows): stop feeding it, and the
    /// kernel stops copying it.
    Done,
}

/// The contract every protocol parser meets, for one connection.
pub trait ConnParser {
    /// One piece of one direction. `outbound` is true for bytes the traced
    /// process wrote, false for bytes it read: with `Side::Server` requests
    /// are inbound and responses outbound, with `Side::Client` the reverse.
    /// `ts_ns` is the timestamp of the syscall that carried the bytes.
    /// Finished exchanges are pushed onto `out`.
    fn on_piece(
        &mut self,
        outbound: bool,
        piece: Piece<'_>,
        ts_ns: u64,
        counters: &mut ParserCounters,
        out: &mut Vec<Exchange>,
    );

    /// The connection closed at `ts_ns`: complete what the close completes
    /// and report requests still waiting as `Failure::ConnectionClosed`.
    fn on_close(&mut self, ts_ns: u64, counters: &mut ParserCounters, out: &mut Vec<Exchange>);

    /// Report requests waiting since before `now_ns - timeout_ns` as
    /// `Failure::Timeout`, once each; a late answer is then not reported.
    fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<Exchange>);

    /// What the connection turned out to be.
    fn verdict(&self) -> Verdict;
}

/// A length as the u64 of stream positions.
pub(crate) fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
