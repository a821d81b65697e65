//! The differential check behind `fuzz/fuzz_targets/h1_own.rs`: every request our own HTTP/1
//! server would serve from `data` must be one hyper's path (the framing guard, then hyper's
//! server as the listener configures it) reads from the same bytes, at the same place, without
//! a body and field for field the same. Where our parser hands a message to hyper, hyper
//! serves it (and everything after it) from the same bytes, so that part needs no check.
//! Compiled for tests and under `cargo fuzz` (`--cfg fuzzing`) only.

use super::{Parsed, parse};
use crate::server::h1guard::differential::{describe, framer_refusal, hyper_requests};
use bytes::BytesMut;

/// The requests our parser serves from `data`, in order: where each head ends, and the
/// request as read. Stops at the first message it leaves to hyper, an incomplete head, or a
/// request that asked to close.
pub fn own_view(data: &[u8]) -> Vec<(usize, String)> {
    let mut buf = BytesMut::from(data);
    let mut served = Vec::new();
    while let Parsed::Request(req, close) = parse(&mut buf, &mut http::HeaderMap::new()) {
        served.push((data.len() - buf.len(), describe(&req)));
        if close {
            break;
        }
    }
    served
}

/// Panics where our parser serves a request that hyper's path reads differently, or not at
/// all (refused by the guard, or an error in hyper's reading), or with a body.
pub fn check(data: &[u8]) {
    let ours = own_view(data);
    if ours.is_empty() {
        return;
    }
    let input = || String::from_utf8_lossy(data).into_owned();
    let refused = framer_refusal(data);
    let theirs = hyper_requests(data);
    for (k, (end, mine)) in ours.iter().enumerate() {
        if let Some(at) = refused {
            assert!(
                at >= *end,
                "request {k} (head ends at {end}) is served, but the guard refuses byte {at}; \
                 input {:?}",
                input()
            );
        }
        let Some((message, read)) = theirs.get(k) else {
            panic!(
                "request {k} (head ends at {end}) is served, hyper does not read it; input {:?}",
                input()
            );
        };
        assert_eq!(
            message.head_end,
            *end,
            "request {k}: head ends differ; input {:?}",
            input()
        );
        assert_eq!(
            read,
            mine,
            "request {k} read differently; input {:?}",
            input()
        );
    }
}
