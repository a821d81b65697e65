//! gRPC on the request path: a gRPC call's outcome is its `grpc-status` (in the trailers, or
//! in the headers of a trailers-only response), not its HTTP status, which is 200 for
//! failures too. [`GrpcDone`] counts it once per call, with the version's metric handles.

use crate::error::DownstreamErrorKind;
use crate::metrics::VersionMetrics;
use crate::state::RouteRt;
use crate::upstream::VersionRt;
use crate::upstream::body::BodyError;
use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderName};
use http_body::Frame;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Instant;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC status codes canaryd itself assigns.
pub const GRPC_CANCELLED: u8 = 1;
pub const GRPC_UNKNOWN: u8 = 2;
pub const GRPC_UNAVAILABLE: u8 = 14;

/// A gRPC response, by its content type.
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-status` from headers or trailers; missing or malformed is UNKNOWN.
pub fn grpc_status(h: &HeaderMap) -> u8 {
    h.get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|c| *c <= 16)
        .unwrap_or(GRPC_UNKNOWN)
}

/// The HTTP status a gRPC status corresponds to (google.rpc.Code mapping), for the success
/// rate: a gRPC failure travels as HTTP 200.
pub fn grpc_http_status(code: u8) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500, // 2 UNKNOWN, 13 INTERNAL, 15 DATA_LOSS
    }
}

/// Counts a gRPC call's final status once: from the trailers, or CANCELLED if the client went
/// away first. Holds the version's metric handles and the route's `client_closed` counter.
#[derive(Debug)]
pub struct GrpcDone {
    pending: Option<(Arc<VersionMetrics>, Counter, Instant)>,
}

impl GrpcDone {
    /// The call of a response from `version` of `route`, started at `start`. A trailers-only
    /// response (the status is in its headers) is counted at once.
    pub fn new(
        version: &VersionRt,
        route: &RouteRt,
        start: Instant,
        headers: &HeaderMap,
    ) -> GrpcDone {
        let closed = route.downstream.counter(DownstreamErrorKind::ClientClosed);
        let mut done = GrpcDone {
            pending: Some((version.metrics.clone(), closed.clone(), start)),
        };
        if headers.contains_key(&GRPC_STATUS) {
            done.finish(grpc_status(headers));
        }
        done
    }

    /// A frame of the response body passed (`None`: the body ended).
    pub fn observe(&mut self, frame: &Option<Result<Frame<Bytes>, BodyError>>) {
        match frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    self.finish(grpc_status(trailers));
                }
            }
            // The upstream stream broke: the call did not complete.
            Some(Err(_)) => self.finish(GRPC_UNAVAILABLE),
            // Ended without trailers: no status, which gRPC clients see as UNKNOWN.
            None => self.finish(GRPC_UNKNOWN),
        }
    }

    fn finish(&mut self, code: u8) {
        if let Some((metrics, _, start)) = self.pending.take() {
            let now = Instant::now();
            metrics.grpc(code);
            metrics
                .window
                .record(now, grpc_http_status(code), now - start);
        }
    }
}

impl Drop for GrpcDone {
    /// Dropped before its status passed: the client cancelled the call. CANCELLED is counted
    /// in the gRPC metric, and the client's leaving in `client_closed`; the analysis window
    /// does not see it (it says nothing about the version).
    fn drop(&mut self) {
        if let Some((metrics, closed, _)) = self.pending.take() {
            metrics.grpc(GRPC_CANCELLED);
            closed.inc();
        }
    }
}
