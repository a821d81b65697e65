//! Phase `rewrite_request`: the downstream request's head becomes what every upstream attempt
//! sends ([`Outgoing`]).

use super::ctx::RequestCtx;
use crate::proxy::headers;
use http::header::HOST;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Version};
use hyper::upgrade::OnUpgrade;

/// The request head as sent upstream, kept for every attempt.
pub(super) struct Outgoing {
    pub method: Method,
    pub headers: HeaderMap,
    pub path_and_query: PathAndQuery,
    /// The client's HTTP version (an HTTP/2 client's body is drained differently).
    pub version: Version,
    /// The client named a host (`Host` or `:authority`); without one, HTTP/1.1 attempts name
    /// the endpoint.
    pub has_host: bool,
    pub upgrade: Option<Upgrade>,
    /// The `X-Forwarded-*` fields, not yet in `headers` (see [`headers::Forwarded`]); `None`
    /// once they are.
    pub forwarded: Option<headers::Forwarded>,
}

/// An HTTP/1.1 upgrade the route allows, offered upstream.
pub(super) struct Upgrade {
    /// The `Upgrade` value offered, reduced to the allowed protocols.
    pub offered: HeaderValue,
    /// The client side of the tunnel, switched only after the upstream's 101.
    pub client: Option<OnUpgrade>,
}

/// Strip hop-by-hop headers (keeping an allowed upgrade), add `X-Forwarded-*`, and keep the
/// client's host: `Host` passes through unchanged, and is rebuilt from the target's authority
/// when it has one (HTTP/2 `:authority`, HTTP/1 absolute-form, which RFC 9112 §3.2.2 says
/// replaces Host). `host` is the request's `Host` header.
// Inlined into the request's future so what it builds is not copied back (see `send`).
#[inline(always)]
pub(super) fn rewrite_request(
    ctx: &RequestCtx<'_>,
    mut parts: Parts,
    host: Option<HeaderValue>,
) -> Outgoing {
    let authority_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    // HTTP/1 has exactly one Host (checked when routing); HTTP/2 may carry any number.
    let rebuild_host = authority_host.is_some() || parts.version >= Version::HTTP_2;
    let client_host: Option<HeaderValue> = authority_host.or(host);
    let has_host = client_host.is_some();
    let upgrade = upgrade(ctx, &mut parts);
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = &upgrade {
        headers::set_upgrade(&mut parts.headers, u.offered.clone());
    }
    let forwarded = headers::Forwarded::take(
        &mut parts.headers,
        &ctx.conn.peer_header,
        ctx.conn.proto,
        client_host.clone(),
    );
    if let (true, Some(h)) = (rebuild_host, client_host) {
        parts.headers.insert(HOST, h);
    }
    let mut path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut forwarded = Some(forwarded);
    if let Some(t) = ctx.target {
        if let Some(k) = t.route.config().kube.as_deref() {
            // The route's header filters see (and may edit) the X-Forwarded-* fields.
            if let Some(f) = forwarded.take() {
                f.apply(&mut parts.headers);
            }
            k.request_headers.apply(&mut parts.headers);
            if let Some(rw) = &k.rewrite {
                if let Some(h) = &rw.hostname {
                    parts.headers.insert(HOST, h.clone());
                }
                if let Some(m) = &rw.path {
                    let new = super::route::modified_target(
                        m,
                        t.route.config(),
                        ctx.matched,
                        path_and_query.path(),
                        path_and_query.query(),
                    );
                    if let Ok(pq) = PathAndQuery::try_from(new) {
                        path_and_query = pq;
                    }
                }
            }
        }
    }
    Outgoing {
        path_and_query,
        method: parts.method,
        headers: parts.headers,
        version: parts.version,
        has_host,
        upgrade,
        forwarded,
    }
}

/// An HTTP/1.1 Upgrade to a protocol the route allows (WebSocket, …) keeps its
/// Upgrade/Connection headers, reduced to the allowed tokens; any other (h2c above all: its
/// tunnel would carry requests we never see) is stripped with the hop-by-hop headers and the
/// request served as plain HTTP/1.1. The client side of the tunnel is taken now.
fn upgrade(ctx: &RequestCtx<'_>, parts: &mut Parts) -> Option<Upgrade> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let allowed = &ctx.target.as_ref()?.route.config().upgrades;
    let offered = headers::allowed_upgrade(&parts.headers, allowed)?;
    Some(Upgrade {
        offered,
        client: parts.extensions.remove::<OnUpgrade>(),
    })
}
