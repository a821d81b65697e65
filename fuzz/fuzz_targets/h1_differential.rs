//! Differential fuzzing of the HTTP/1 framing guard against hyper's parser: the same bytes go
//! to both, and any disagreement on where a message's head or body ends (while the guard
//! follows the stream and has not refused it) is a crash. See
//! `src/server/h1guard/differential.rs` and docs/performance.md (how to run it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    canaryd::server::h1guard::differential::check(data);
});
