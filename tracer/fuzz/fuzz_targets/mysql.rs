//! The mysql parser alone, both directions, with gaps, closes and timeouts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::protocols::{Parser, Protocol};

fuzz_target!(|data: &[u8]| {
    tracer_fuzz::drive(data, |side| Parser::known(Protocol::Mysql, side));
});
