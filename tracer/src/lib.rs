//! The tracer daemon as a library, so tests and benchmarks reach its stages.
//!
//! Data flows one way, a folder per stage:
//!
//! - `source`: loads the kernel programs, reads the per-CPU rings and merges
//!   them by time;
//! - `pipeline`: the connection table decodes the records and keeps
//!   per-connection state, reassembly puts each direction's bytes in order
//!   for `protocols`, and finished exchanges leave as records;
//! - `metadata`: names the processes (executable, container, pod, owner) on
//!   its own thread and finds the connections that predate start-up;
//! - `export`: metrics (served by the HTTP server) and `tracer watch` lines.
//!
//! `app` wires the commands together; `cli` and `config` parse and validate
//! the command line.

pub mod app;
pub mod budget;
pub mod cli;
pub mod config;
pub mod error;
pub mod export;
pub mod metadata;
pub mod pipeline;
pub mod protocols;
pub mod source;
#[cfg(test)]
mod testutil;
