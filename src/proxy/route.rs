//! Phases `route` and `pick`: which route and version (the pure decision of
//! [`crate::router`]), then which endpoint.

use super::ctx::{RequestCtx, Target};
use crate::config::{MirrorConfig, Unservable};
use crate::error::ProxyError;
use crate::proxy::headers;
use crate::router::{self, Decision};
use crate::state::RouteRt;
use http::header::HOST;
use http::request::Parts;
use http::{HeaderValue, Version};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::cell::RefCell;

thread_local! {
    /// Per-thread fast RNG for unsticky weight draws and new sticky ids; seeded from the OS so
    /// replicas and restarts do not share a sequence.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// Route the request: host (`:authority` or `Host`) and path → route, then rules → sticky →
/// weights → version. `host` is the request's `Host` header.
pub(super) fn route<'s>(
    ctx: &mut RequestCtx<'s>,
    parts: &Parts,
    host: Option<&HeaderValue>,
) -> Result<Decision<'s, RouteRt>, ProxyError> {
    check_host(parts)?;
    let snap = ctx.snap;
    let client_ip = headers::client_address(
        &parts.headers,
        ctx.conn.peer.ip(),
        snap.config.proxy.trusted_hops,
    );
    let host = router::host_of(&parts.uri, host);
    let decision = RNG
        .with(|rng| {
            snap.router.decide_for(
                host,
                &router::Line::of(&parts.uri, &parts.method),
                &parts.headers,
                client_ip,
                &mut *rng.borrow_mut(),
            )
        })
        .ok_or(ProxyError::NoRoute)?;
    ctx.assign = decision.assign;
    ctx.matched = decision.matched;
    Ok(decision)
}

/// The path prefix the request matched, for a `ReplacePrefixMatch`.
pub(super) fn matched_prefix(route: &crate::config::RouteConfig, matched: u16) -> Option<&str> {
    match &route.kube.as_ref()?.matches.get(usize::from(matched))?.path {
        crate::config::PathMatch::Prefix(p) => Some(p),
        _ => None,
    }
}

/// The path and query of a request for `path?query` after a Gateway API path modifier (the
/// redirect's `Location`, the rewritten upstream request): the query is kept.
pub(super) fn modified_target(
    m: &crate::config::PathModifier,
    route: &crate::config::RouteConfig,
    matched: u16,
    path: &str,
    query: Option<&str>,
) -> String {
    let mut out = m.apply(path, matched_prefix(route, matched));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A Gateway API `RequestRedirect`: canaryd answers it, no backend is asked (and no version
/// counts it).
pub(super) fn redirect(
    ctx: &RequestCtx<'_>,
    decision: &Decision<'_, RouteRt>,
    parts: &Parts,
    host: Option<&HeaderValue>,
) -> Option<http::Response<crate::proxy::body::ProxyBody>> {
    let rc = decision.route.config();
    let r = rc.kube.as_ref()?.redirect.as_ref()?;
    let req_host = router::host_of(&parts.uri, host).unwrap_or("");
    let req_port = parts
        .uri
        .authority()
        .and_then(|a| a.port_u16())
        .or_else(|| router::split_port(host?.to_str().ok()?).1?.parse().ok());
    let scheme = r.scheme.as_deref().unwrap_or(ctx.conn.proto);
    // Gateway API: an explicit scheme implies its well-known port unless one is given.
    let port = r.port.or(if r.scheme.is_some() { None } else { req_port });
    let port = port.filter(|p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let mut location = format!("{scheme}://{}", r.hostname.as_deref().unwrap_or(req_host));
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    let (path, query) = (parts.uri.path(), parts.uri.query());
    match &r.path {
        Some(m) => location.push_str(&modified_target(m, rc, decision.matched, path, query)),
        None => location.push_str(parts.uri.path_and_query().map_or(path, |pq| pq.as_str())),
    }
    let mut resp = http::Response::new(crate::proxy::body::ProxyBody::full(""));
    *resp.status_mut() = http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    Some(resp)
}

/// Pick the endpoint of the decided version (or of the primary, with `fallback`): the
/// request's first target. A Kubernetes backend that cannot serve answers its share itself:
/// 503 for a Service with no ready endpoint (counted against the version), 500 for a
/// backendRef that does not resolve.
pub(super) fn pick<'s>(
    ctx: &mut RequestCtx<'s>,
    decision: &Decision<'s, RouteRt>,
) -> Result<(), ProxyError> {
    let route = decision.route;
    if let Some(why) = route.unservable(decision.version) {
        ctx.target = Some(Target {
            route,
            version: &route.versions[decision.version],
            reason: decision.reason,
            endpoint: 0,
        });
        return Err(match why {
            Unservable::NoEndpoints => ProxyError::NoEndpoints,
            Unservable::Invalid => ProxyError::InvalidBackend,
        });
    }
    let (version, endpoint) = route.choose(&route.versions[decision.version], None);
    ctx.target = Some(Target {
        route,
        version,
        reason: decision.reason,
        endpoint,
    });
    Ok(())
}

/// The mirror this request is copied to, if its route has one that applies (see
/// [`crate::mirror::choose`]).
pub(super) fn mirror<'s>(
    ctx: &RequestCtx<'s>,
    decision: &Decision<'s, RouteRt>,
    parts: &Parts,
) -> Option<&'s MirrorConfig> {
    let route = decision.route;
    route.mirror.as_ref()?;
    let client_ip = headers::client_address(
        &parts.headers,
        ctx.conn.peer.ip(),
        ctx.snap.config.proxy.trusted_hops,
    );
    crate::mirror::choose(route, decision.version, &parts.method, |m| {
        route
            .route
            .conditions_hold(&m.conditions, &parts.headers, client_ip)
    })
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host (absolute-form may stand in
/// for it); more than one is ambiguous about which site is meant, so both are refused.
fn check_host(parts: &Parts) -> Result<(), ProxyError> {
    if parts.version >= Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, None) if parts.version == Version::HTTP_11 && parts.uri.authority().is_none() => {
            Err(ProxyError::BadRequest("missing Host header"))
        }
        _ => Ok(()),
    }
}
