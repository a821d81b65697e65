//! The HTTP/1 framing guard on arbitrary byte streams: it never panics, and whether it refuses
//! the stream, and why, does not depend on how the stream is split into reads (the split
//! points come from the input too).
#![no_main]

use canaryd::server::h1guard::{Framer, Verdict};
use libfuzzer_sys::fuzz_target;

fn refusal(stream: &[u8], splits: &[u8]) -> Option<&'static str> {
    let mut f = Framer::default();
    let mut at = 0;
    let mut cuts = splits.iter().map(|&b| usize::from(b) + 1).cycle();
    while at < stream.len() {
        let n = if splits.is_empty() {
            stream.len() - at
        } else {
            cuts.next().unwrap().min(stream.len() - at)
        };
        if let Verdict::Refuse { why, .. } = f.feed(&stream[at..at + n]) {
            return Some(why);
        }
        at += n;
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k).min(rest.len());
    let (splits, stream) = rest.split_at(k);
    let whole = refusal(stream, &[]);
    let pieces = refusal(stream, splits);
    assert_eq!(whole, pieces, "verdict depends on read boundaries");
});
