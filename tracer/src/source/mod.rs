//! The kernel source: loads and attaches the programs (`loader`), reads the
//! per-CPU rings in place and merges them by time (`rings`), and drives the
//! pipeline from them (`ingest`).

pub mod ingest;
pub mod loader;
pub mod rings;
