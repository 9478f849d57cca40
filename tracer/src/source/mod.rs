//! The kernel sources: decodes what they hand over into typed events
//! (`events`), loads and attaches the programs (`loader`, with field
//! offsets from the kernel's BTF in `btf`), reads the
//! per-CPU rings in place and merges them by time (`rings`), and drives the
//! pipeline from them (`ingest`). The packet path's records, TCP segments
//! seen on the interfaces (`packet_sockets`), become the same events in
//! `packets`.

pub mod btf;
pub mod events;
pub mod ingest;
pub mod loader;
pub mod packet_sockets;
pub mod packets;
pub mod rings;
