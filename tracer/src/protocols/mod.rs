//! Application protocol parsers. Each parser sees one connection's two byte
//! streams, in order, as `Piece`s from `reassembly`, and answers with finished
//! request/response exchanges. Only HTTP/1.x exists today.

pub mod http1;

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

/// One request paired with its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Request method as sent (`GET`, `POST`, ...).
    pub method: String,
    /// Request target path with the query string and fragment removed.
    pub path: String,
    /// Final response status code: never 100 or 103 (interim responses);
    /// 101 when the connection switched protocols; 0 when there was no
    /// response (see `failure`).
    pub status: u16,
    /// Why the request got no response, when it got none.
    pub failure: Option<Failure>,
    /// Timestamp (ns, CLOCK_MONOTONIC) of the first byte of the request.
    pub start_ns: u64,
    /// Timestamp (ns) of the chunk that completed the response.
    pub end_ns: u64,
}

/// Why a request has no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Nothing came back within the request timeout.
    Timeout,
    /// The connection closed (or was reset) first.
    ConnectionClosed,
}

impl Failure {
    /// OpenTelemetry's `error.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ConnectionClosed => "connection_closed",
        }
    }
}

/// Loss and anomaly counts a parser reports; the caller turns them into metrics.
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
}
