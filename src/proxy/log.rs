//! The access log: one structured line per request, target `canaryd::access` (JSON with
//! `--log-format json`), read from the request's context.

use super::body::ProxyBody;
use super::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::router::Reason;
use http::{Method, Response, StatusCode};
use std::time::Duration;

pub(super) fn access(
    ctx: &RequestCtx<'_>,
    method: &Method,
    path: &str,
    status: StatusCode,
    elapsed: Duration,
    result: &Result<Response<ProxyBody>, ProxyError>,
) {
    let (route, version, reason, detail, upstream) = match ctx.target {
        Some(t) => {
            let (reason, detail) = match t.reason {
                Reason::Rule(i) => ("rule", i as u64),
                Reason::Sticky { bucket } => ("sticky", u64::from(bucket)),
                Reason::Weight { draw } => ("weight", u64::from(draw)),
            };
            (
                t.route.name(),
                t.version.name.as_str(),
                reason,
                Some(detail),
                t.version
                    .endpoints
                    .get(t.endpoint)
                    .map(|e| e.authority.as_str()),
            )
        }
        None => ("", "", "no_route", None, None),
    };
    let bytes = result.as_ref().ok().and_then(|r| {
        r.headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    });
    tracing::info!(
        target: "canaryd::access",
        client = %ctx.conn.peer.ip(),
        method = %method,
        path,
        route,
        version,
        reason,
        reason_detail = detail,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1e3,
        bytes,
        upstream,
        "request"
    );
}
