//! From events to exchanges: the connection table (`conntrack`), each
//! direction's bytes put in order (`reassembly`, with the HTTP/2 frame
//! headers the kernel found beyond a capture placed by `frame_heads`), and
//! the finished exchanges handed to the sinks (`records`).

pub mod conntrack;
pub mod frame_heads;
pub mod reassembly;
pub mod records;
