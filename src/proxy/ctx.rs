//! [`RequestCtx`]: what the phases learn about one request, and what happens to the request
//! when it ends — answered ([`RequestCtx::record`]) or dropped unanswered.

use super::ConnInfo;
use super::body::ProxyBody;
use crate::error::{DownstreamErrorKind, ErrorSource, ProxyError};
use crate::metrics::Metrics;
use crate::router::Reason;
use crate::state::{RouteRt, Snapshot};
use crate::upstream::{EndpointRt, VersionRt};
use http::{Method, Request, Response};
use std::time::Instant;

/// One request on its way through the phases.
///
/// Dropped before [`record`](Self::record) — hyper drops the request's future when the client
/// closes the connection or resets the HTTP/2 stream first — it counts the client's
/// `client_closed`, on the route when one was chosen, never against the version.
pub struct RequestCtx<'s> {
    pub snap: &'s Snapshot,
    metrics: &'s Metrics,
    pub conn: &'s ConnInfo,
    pub start: Instant,
    /// Method and path, copied only when the access log is on.
    log: Option<(Method, String)>,
    /// What serves the request, once routed; retries move it.
    pub target: Option<Target<'s>>,
    /// A fresh sticky id to send back in the route's `assign_cookie`.
    pub assign: Option<u128>,
    /// Which Gateway API match of the route matched ([`crate::router::Decision::matched`]).
    pub matched: u16,
    answered: bool,
}

/// The route, version and endpoint serving a request.
#[derive(Debug, Clone, Copy)]
pub struct Target<'s> {
    pub route: &'s RouteRt,
    pub version: &'s VersionRt,
    pub reason: Reason,
    /// Index in `version.endpoints`.
    pub endpoint: usize,
}

impl<'s> Target<'s> {
    pub fn endpoint(&self) -> &'s EndpointRt {
        &self.version.endpoints[self.endpoint]
    }
}

impl<'s> RequestCtx<'s> {
    pub fn new<B>(
        snap: &'s Snapshot,
        metrics: &'s Metrics,
        conn: &'s ConnInfo,
        req: &Request<B>,
    ) -> RequestCtx<'s> {
        RequestCtx {
            start: Instant::now(),
            log: snap
                .config
                .proxy
                .access_log
                .then(|| (req.method().clone(), req.uri().path().to_owned())),
            snap,
            metrics,
            conn,
            target: None,
            assign: None,
            matched: u16::MAX,
            answered: false,
        }
    }

    /// The target; only called by phases after `pick`, which sets it.
    pub fn target(&self) -> Result<Target<'s>, ProxyError> {
        self.target
            .ok_or(ProxyError::Internal("no target after pick"))
    }

    /// Count a client failure on the route it was routed to, or with `route=""` before.
    fn client_fault(&self, kind: DownstreamErrorKind) {
        match self.target {
            Some(t) => t.route.downstream.count(kind),
            None => self.metrics.downstream_error(kind),
        }
    }

    /// The request is answered: count the outcome where it belongs and write the access log.
    ///
    /// Who is at fault decides where the outcome counts: upstream results (responses of any
    /// status, upstream failures) against the version; the client's failures only in
    /// `canaryd_downstream_errors_total`, so a bad client cannot make a version look bad.
    pub fn record(&mut self, result: &Result<Response<ProxyBody>, ProxyError>) {
        self.answered = true;
        let status = match result {
            Ok(resp) => resp.status(),
            Err(e) => e.status(),
        };
        let now = Instant::now();
        let elapsed = now - self.start;
        match (result, self.target) {
            (Err(e), _) if e.source() != ErrorSource::Upstream => {
                if let Some(kind) = e.downstream_kind() {
                    self.client_fault(kind);
                }
                if e.source() == ErrorSource::Internal {
                    tracing::warn!(error = %e, "internal error");
                }
            }
            (_, Some(t)) => {
                // A gRPC call's success is known at its trailers: `GrpcDone` feeds the window.
                let grpc = matches!(result, Ok(r) if matches!(r.body(), ProxyBody::Grpc(..)));
                let window = (!grpc).then_some(now);
                t.version.metrics.record(status.as_u16(), elapsed, window);
            }
            (_, None) => {}
        }
        if let Some((method, path)) = &self.log {
            super::log::access(self, method, path, status, elapsed, result);
        }
    }
}

impl Drop for RequestCtx<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.client_fault(DownstreamErrorKind::ClientClosed);
        }
    }
}
