//! Differential fuzzing of our upstream HTTP/1.1 response reader against hyper's client: the
//! same bytes (the first picks HEAD or GET) go to both, and a response ours reads to its end
//! that hyper reads differently, or not at all, is a crash. See
//! `src/upstream/h1/differential.rs` and docs/performance.md (how to run it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    canaryd::upstream::h1::differential::check(data);
});
