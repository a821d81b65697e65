//! Phase `rewrite_response`: the upstream's response as the client gets it.

use super::body::{ClientGone, ProxyBody};
use super::ctx::{RequestCtx, Target};
use super::grpc::{self, GrpcDone};
use super::request::Upgrade;
use crate::error::{DownstreamErrorKind, ProxyError, UpstreamErrorKind};
use crate::proxy::headers::{self, X_CANARYD_VERSION};
use crate::router;
use crate::upstream::body::{Idle, UpstreamBody};
use crate::upstream::pool::Lease;
use http::header::{SET_COOKIE, UPGRADE};
use http::response::Parts;
use http::{HeaderValue, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Strip hop-by-hop headers (a 101 keeps the protocol it switched to, and starts the tunnel),
/// add `x-canaryd-version` and a new sticky id's cookie; the body streams through (a gRPC
/// one counts its status when it passes).
// Inlined into the request's future so what it builds is not copied back (see `send`).
#[inline(always)]
pub(super) fn rewrite_response(
    ctx: &RequestCtx<'_>,
    resp: Response<UpstreamBody>,
    lease: Option<Lease>,
    upgrade: Option<Upgrade>,
    capture: Option<crate::mirror::compare::Capture>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let t = ctx.target()?;
    let (mut parts, body) = resp.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        switch_protocols(t, &mut parts, upgrade)?;
    } else {
        headers::strip_hop_by_hop(&mut parts.headers);
    }
    if ctx.snap.config.proxy.version_header {
        parts
            .headers
            .insert(&X_CANARYD_VERSION, t.version.header_value.clone());
    }
    if let Some(k) = t.route.config().kube.as_deref() {
        // Gateway API filters: the rule's, then the backend's.
        k.response_headers.apply(&mut parts.headers);
        let v = t
            .route
            .versions
            .iter()
            .position(|v| std::ptr::eq(v, t.version));
        if let Some(edits) = v.and_then(|v| k.version_response_headers.get(v)) {
            edits.apply(&mut parts.headers);
        }
    }
    if let (Some(id), Some(sticky)) = (ctx.assign, &t.route.config().sticky) {
        if let Some(cookie) = &sticky.assign_cookie {
            if let Some(v) = assign_cookie(cookie, id) {
                parts.headers.append(SET_COOKIE, v);
            }
        }
    }
    let idle = Idle::new(t.route.config().timeouts.idle);
    let body = if switching {
        ProxyBody::empty()
    } else if grpc::is_grpc(&parts.headers) {
        let done = GrpcDone::new(t.version, t.route, ctx.start, &parts.headers);
        ProxyBody::Grpc(body, idle, done)
    } else {
        let closed = t
            .route
            .downstream
            .counter(DownstreamErrorKind::ClientClosed);
        let gone = ClientGone::new(closed);
        match capture {
            None => ProxyBody::upstream(body, idle, lease, gone),
            Some(mut c) => {
                use http_body::Body as _;
                c.head(parts.status.as_u16(), &parts.headers);
                if body.is_end_stream() {
                    c.end();
                    ProxyBody::upstream(body, idle, lease, gone)
                } else {
                    ProxyBody::Captured(body, idle, lease, gone, Box::new(c))
                }
            }
        }
    };
    Ok(Response::from_parts(parts, body))
}

/// A 101 only answers an upgrade we offered, to one of the protocols offered; anything else
/// (h2c to a WebSocket request, a 101 nobody asked for) is a broken upstream, and its
/// connection closes with the dropped response.
fn switch_protocols(
    t: Target<'_>,
    parts: &mut Parts,
    upgrade: Option<Upgrade>,
) -> Result<(), ProxyError> {
    let answered = parts.headers.get(UPGRADE).cloned();
    headers::strip_hop_by_hop(&mut parts.headers);
    let offered = upgrade.as_ref().map(|u| u.offered.clone());
    let proto = answered.filter(|p| {
        offered
            .as_ref()
            .is_some_and(|o| headers::upgrade_answers(o, p))
    });
    let down = upgrade.and_then(|u| u.client);
    let up = parts.extensions.remove::<OnUpgrade>();
    let (Some(down), Some(up), Some(proto)) = (down, up, proto) else {
        tracing::debug!(upgrade = ?offered, "101 from upstream does not answer the upgrade offered");
        t.version
            .metrics
            .upstream_error(UpstreamErrorKind::BadResponse);
        return Err(ProxyError::BadUpgrade);
    };
    headers::set_upgrade(&mut parts.headers, proto);
    tokio::spawn(tunnel(down, up));
    Ok(())
}

/// Copy bytes both ways between an upgraded client and upstream until either side closes.
async fn tunnel(down: OnUpgrade, up: OnUpgrade) {
    match tokio::try_join!(down, up) {
        Ok((down, up)) => {
            let (mut d, mut u) = (TokioIo::new(down), TokioIo::new(up));
            if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended with error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

/// The `Set-Cookie` value that gives a new user sticky id `id`, written into one buffer
/// (through `format!` twice it was ~3k instructions and five allocations per new user).
fn assign_cookie(name: &str, id: u128) -> Option<HeaderValue> {
    const ATTRIBUTES: &[u8] = b"; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax";
    let mut v = bytes::BytesMut::with_capacity(name.len() + 1 + 32 + ATTRIBUTES.len());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(b"=");
    v.extend_from_slice(&router::id_hex(id));
    v.extend_from_slice(ATTRIBUTES);
    HeaderValue::from_maybe_shared(v.freeze()).ok()
}

#[cfg(test)]
mod tests {
    /// Byte for byte what `format!` wrote before, for ids across the range.
    #[test]
    fn assigned_cookie_is_unchanged() {
        for id in [
            0,
            1,
            0xabc,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            let want =
                format!("canaryd_uid={id:032x}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax");
            let got = super::assign_cookie("canaryd_uid", id).unwrap();
            assert_eq!(got.as_bytes(), want.as_bytes());
        }
    }
}
