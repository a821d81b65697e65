//! Differential fuzzing of our own HTTP/1 server's parser (src/server/h1.rs) against hyper's
//! path (the framing guard, then hyper's server): a request our loop would serve that hyper's
//! path reads differently, or not at all, is a crash. See `src/server/h1/differential.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    canaryd::server::h1::differential::check(data);
});
