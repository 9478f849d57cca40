//! From events to exchanges: the connection table (`conntrack`), each
//! direction's bytes put in order (`reassembly`), and the finished exchanges
//! handed to the sinks (`records`).

pub mod conntrack;
pub mod reassembly;
pub mod records;
