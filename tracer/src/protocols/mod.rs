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
    /// 101 when the connection switched protocols.
    pub status: u16,
    /// Timestamp (ns, CLOCK_MONOTONIC) of the first byte of the request.
    pub start_ns: u64,
    /// Timestamp (ns) of the chunk that completed the response.
    pub end_ns: u64,
}

/// Loss and anomaly counts a parser reports; the caller turns them into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParserCounters {
    /// Malformed input was skipped up to the next plausible message start.
    pub resyncs: u64,
    /// A request that never got a response (connection closed first, or lost).
    pub unmatched_requests: u64,
    /// A response with no request waiting for it.
    pub unmatched_responses: u64,
}
