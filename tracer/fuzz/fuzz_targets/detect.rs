//! Protocol inference and the dispatch to whichever parser it picks, from a
//! connection's start or picked up mid-stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::protocols::Parser;

fuzz_target!(|data: &[u8]| {
    let mid_stream = data.first().is_some_and(|b| b & 2 != 0);
    tracer_fuzz::drive(data, |side| {
        if mid_stream {
            Parser::mid_stream(side)
        } else {
            Parser::detect(side)
        }
    });
});
