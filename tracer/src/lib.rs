//! The tracer daemon as a library, so tests and benchmarks reach its stages.
//!
//! Data flows one way: `ingest` reads ring-buffer records, `conntrack`
//! decodes them and keeps per-connection state, feeding `reassembly`, which
//! hands ordered bytes to `protocols`; finished exchanges become `records`,
//! which go to `metrics` (served by `server`) or `watch` output. `metadata`
//! names the processes (executable, container, pod) off the event loop and
//! finds the connections that predate start-up;
//! `loader` owns the kernel side; `app` wires the commands together.

pub mod app;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod error;
pub mod ingest;
pub mod loader;
pub mod metadata;
pub mod metrics;
pub mod protocols;
pub mod reassembly;
pub mod records;
pub mod rings;
pub mod route;
pub mod server;
#[cfg(test)]
mod testutil;
pub mod watch;
