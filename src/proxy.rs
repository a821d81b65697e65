//! The request path, in phases:
//!
//! 1. load the snapshot once (the whole request sees one config generation);
//! 2. route: host/path → route, then rules → sticky → weights → version (pure, see `router`);
//! 3. pick an endpoint of that version (round robin);
//! 4. rewrite: strip hop-by-hop, add `X-Forwarded-*`, absolute upstream URI, keep `Host`;
//! 5. forward through the pooled client under the route's response-header timeout;
//! 6. response: strip hop-by-hop, optional `x-canaryd-version`, `Set-Cookie` for new sticky ids;
//!    the body streams through untouched.
//!
//! Every failure is a [`ProxyError`], turned into a response in exactly one place.

use crate::body::{ClientBody, ClientGone};
use crate::body::{Idle, ProxyBody, Replayable, RequestBody};
use crate::config::RETRY_BUDGET_MIN;
use crate::error::{DownstreamErrorKind, ErrorSource, ProxyError, UpstreamErrorKind};
use crate::headers::{self, X_CANARYD_VERSION};
use crate::router::{self, Reason};
use crate::state::{RouteRt, Snapshot, State};
use crate::upstream::VersionRt;
use crate::upstream::pool::Lease;
use http::header::{CONTENT_TYPE, HOST, HeaderName, SET_COOKIE, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Facts about the downstream connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The peer address as a header value, rendered once per connection for
    /// `X-Forwarded-For` (formatting it per request was ~3 % of a request's instructions).
    pub peer_header: HeaderValue,
    /// The per-core worker serving the connection (0 in the shared runtime): its requests
    /// use that worker's upstream connections.
    pub worker: usize,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, proto: &'static str, worker: usize) -> ConnInfo {
        ConnInfo {
            peer,
            proto,
            peer_header: headers::ip_header(peer.ip()),
            worker,
        }
    }
}

thread_local! {
    /// Per-thread fast RNG for unsticky weight draws and new sticky ids; seeded from the OS so
    /// replicas and restarts do not share a sequence.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// What `forward` decided, kept for metrics and the access log even when forwarding fails.
#[derive(Debug, Clone, Copy)]
struct Target<'s> {
    route: &'s RouteRt,
    version: &'s VersionRt,
    reason: Reason,
    /// Index in `version.endpoints`.
    endpoint: usize,
}

/// Serve one downstream request. Never fails: errors become responses here.
pub async fn handle(state: &State, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let _in_flight = GaugeGuard::new(&state.metrics.in_flight);
    let snap = state.snapshot();
    // Only copied when the access log is on: nothing is allocated for it otherwise.
    let log_req = snap
        .config
        .proxy
        .access_log
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    let mut pending = Unanswered {
        metrics: &state.metrics,
        target: None,
        answered: false,
    };
    let result = forward(&snap, conn, req, &mut pending.target, start).await;
    pending.answered = true;
    let target = pending.target;
    let status = match &result {
        Ok(resp) => resp.status(),
        Err(e) => e.status(),
    };
    let now = Instant::now();
    let elapsed = now - start;
    // Who is at fault decides where the outcome counts: upstream results (responses of any
    // status, upstream failures) against the version; the client's failures only in
    // `canaryd_downstream_errors_total`, so a bad client cannot make a version look bad.
    match (&result, target) {
        (Err(e), t) if e.source() != ErrorSource::Upstream => {
            if let Some(kind) = e.downstream_kind() {
                client_fault(&state.metrics, t, kind);
            }
            if e.source() == ErrorSource::Internal {
                tracing::warn!(error = %e, "internal error");
            }
        }
        (_, Some(t)) => {
            let vm = &t.version.metrics;
            // A gRPC call's success is known at its trailers: `GrpcDone` feeds the window then.
            let grpc = matches!(&result, Ok(r) if matches!(r.body(), ProxyBody::Grpc(..)));
            vm.record(status.as_u16(), elapsed, (!grpc).then_some(now));
        }
        (_, None) => {}
    }
    if let Some((method, path)) = log_req {
        access_log(conn, target, &method, &path, status, elapsed, &result);
    }
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            e.into_response()
        }
    }
}

/// A request still waiting for its response. hyper drops the request's future when the
/// client closes the connection or resets the HTTP/2 stream first: that is counted as the
/// client's `client_closed`, on the route when one was chosen, never against the version.
struct Unanswered<'a> {
    metrics: &'a crate::metrics::Metrics,
    target: Option<Target<'a>>,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let kind = DownstreamErrorKind::ClientClosed;
            client_fault(self.metrics, self.target, kind);
        }
    }
}

/// Count a client failure on the route it was routed to, or with `route=""` before routing.
fn client_fault(
    metrics: &crate::metrics::Metrics,
    target: Option<Target<'_>>,
    kind: DownstreamErrorKind,
) {
    match target {
        Some(t) => t.route.downstream.count(kind),
        None => metrics.downstream_error(kind),
    }
}

/// One structured line per request, target `canaryd::access` (JSON with `--log-format json`).
#[allow(clippy::too_many_arguments)]
fn access_log(
    conn: &ConnInfo,
    target: Option<Target<'_>>,
    method: &http::Method,
    path: &str,
    status: http::StatusCode,
    elapsed: std::time::Duration,
    result: &Result<Response<ProxyBody>, ProxyError>,
) {
    let (route, version, reason, detail, upstream) = match target {
        Some(t) => {
            let r = t.route.config();
            let v = t.version;
            let (reason, detail) = match t.reason {
                Reason::Rule(i) => ("rule", i as u64),
                Reason::Sticky { bucket } => ("sticky", u64::from(bucket)),
                Reason::Weight { draw } => ("weight", u64::from(draw)),
            };
            (
                r.name.as_str(),
                v.name.as_str(),
                reason,
                Some(detail),
                Some(v.endpoints[t.endpoint].authority.to_string()),
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
        client = %conn.peer.ip(),
        method = %method,
        path,
        route,
        version,
        reason,
        reason_detail = detail,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1e3,
        bytes,
        upstream = upstream.as_deref(),
        "request"
    );
}

/// Increments a gauge now and decrements it when dropped (also on cancellation).
pub struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    pub fn new(g: &'a Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn forward<'s>(
    snap: &'s Arc<Snapshot>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    target: &mut Option<Target<'s>>,
    start: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    check_host(&parts)?;

    let client_ip = headers::client_address(
        &parts.headers,
        conn.peer.ip(),
        snap.config.proxy.trusted_hops,
    );
    // One lookup of `Host` serves routing, X-Forwarded-Host and the upstream request.
    let host_header = parts.headers.get(HOST).cloned();
    let decision = {
        let host = router::host_of(&parts.uri, host_header.as_ref());
        RNG.with(|rng| {
            snap.router.decide_for(
                host,
                parts.uri.path(),
                &parts.headers,
                client_ip,
                &mut *rng.borrow_mut(),
            )
        })
        .ok_or(ProxyError::NoRoute)?
    };
    let runtime: &RouteRt = decision.route;
    let route = &runtime.route;
    let (mut vrt, mut ei) = runtime.choose(&runtime.versions[decision.version], None);
    *target = Some(Target {
        route: runtime,
        version: vrt,
        reason: decision.reason,
        endpoint: ei,
    });

    // The host the client asked for: the target's authority when it has one (HTTP/2
    // :authority, HTTP/1 absolute-form, which RFC 9112 §3.2.2 says replaces Host), else Host.
    let authority_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    // HTTP/1 has exactly one Host (check_host); HTTP/2 may carry any number of them.
    let rebuild_host = authority_host.is_some() || parts.version >= Version::HTTP_2;
    let client_host: Option<HeaderValue> = authority_host.or(host_header);
    let has_host = client_host.is_some();
    // An HTTP/1.1 Upgrade to a protocol the route allows (WebSocket, …) keeps its
    // Upgrade/Connection headers, reduced to the allowed tokens; any other (h2c above all: its
    // tunnel would carry requests we never see) is stripped with the hop-by-hop headers and
    // the request served as plain HTTP/1.1. The client side of the tunnel is taken now, but
    // only switched after the upstream's 101.
    let upgrade = (parts.version == Version::HTTP_11)
        .then(|| headers::allowed_upgrade(&parts.headers, &route.config.upgrades))
        .flatten();
    let client_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<OnUpgrade>());
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = &upgrade {
        headers::set_upgrade(&mut parts.headers, proto.clone());
    }
    headers::add_forwarded(
        &mut parts.headers,
        &conn.peer_header,
        conn.proto,
        client_host.clone(),
    );
    if let (true, Some(h)) = (rebuild_host, client_host) {
        // Host passes through unchanged; for HTTP/2 clients (and absolute-form targets) it is
        // rebuilt from :authority.
        parts.headers.insert(HOST, h);
    }

    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    // Attempts: the first, then retries while the policy, the body and the budget allow.
    let policy = &route.config.retries;
    let idle = route.timeouts().idle;
    let method = parts.method.clone();
    let no_body = body.is_end_stream();
    let body = ClientBody::new(body, parts.version >= Version::HTTP_2);
    let status_retry_ok = no_body && is_idempotent(&method) && upgrade.is_none();
    // Our HTTP/1.1 pools hand an unsent request back; hyper-util's client does not, so a body
    // bound for it waits in a replayable slot.
    let first_pooled = vrt.endpoints[ei].pool.is_some();
    let mut body = Some(if no_body {
        RequestBody::Empty
    } else if policy.attempts > 0 && upgrade.is_none() && !first_pooled {
        RequestBody::Replayable(Replayable::new(body), Idle::new(idle))
    } else {
        RequestBody::Stream(body, Idle::new(idle))
    });
    // A request that came back unsent from a pool, to go out again as it is.
    let mut returned: Option<Request<RequestBody>> = None;
    let _active = Counted::new(&runtime.active);
    let mut retry_slot: Option<Counted> = None;
    let mut attempt = 0u32;
    let (resp, lease, vrt) = loop {
        let endpoint = &vrt.endpoints[ei];
        let pool = endpoint.pool.as_ref();
        let last = attempt >= policy.attempts;
        // Pools take origin-form (`/path?q`); hyper-util's client wants the absolute URI.
        let uri = match pool {
            Some(_) => Uri::from(path_and_query.clone()),
            None => {
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(vrt.upstream.scheme.clone());
                uri.authority = Some(endpoint.authority.clone());
                uri.path_and_query = Some(path_and_query.clone());
                Uri::from_parts(uri)
                    .map_err(|_| ProxyError::Internal("unusable upstream request target"))?
            }
        };
        let mut replay: Option<Replayable> = None;
        let mut upstream_req = match returned.take() {
            Some(mut r) => {
                *r.uri_mut() = uri;
                r
            }
            None => {
                let this_body = body.take().unwrap_or(RequestBody::Empty);
                if let RequestBody::Replayable(r, _) = &this_body {
                    if !last {
                        replay = Some(r.clone());
                    }
                }
                // Keep the head for another attempt only when one could need it: a pool gives
                // an unsent request back, so it needs a copy only for status retries.
                let keep =
                    !last && (pool.is_none() || (status_retry_ok && !policy.on_status.is_empty()));
                let mut r = Request::new(this_body);
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri;
                *r.headers_mut() = if keep {
                    parts.headers.clone()
                } else {
                    std::mem::take(&mut parts.headers)
                };
                r
            }
        };
        // The version's protocol decides, whatever the client spoke.
        *upstream_req.version_mut() = vrt.upstream.http_version;
        if pool.is_some() && !has_host && !upstream_req.headers().contains_key(HOST) {
            // HTTP/1.0 without Host: name the endpoint, as hyper-util's client would.
            if let Ok(h) = HeaderValue::from_str(endpoint.authority.as_str()) {
                upstream_req.headers_mut().insert(HOST, h);
            }
        }
        let timeout = route.timeouts().response;
        let result: Result<(Response<Incoming>, Option<Lease>), ProxyError> = match pool {
            Some(pool) => {
                match tokio::time::timeout(timeout, pool.send(conn.worker, upstream_req)).await {
                    Err(_elapsed) => Err(ProxyError::ResponseTimeout),
                    Ok(Err(e)) => {
                        returned = e.request;
                        Err(e.error)
                    }
                    Ok(Ok((r, lease))) => Ok((r, Some(lease))),
                }
            }
            None => match tokio::time::timeout(timeout, vrt.upstream.client.request(upstream_req))
                .await
            {
                Err(_elapsed) => Err(ProxyError::ResponseTimeout),
                Ok(Err(e)) => {
                    tracing::debug!(error = ?e, endpoint = %endpoint.authority, "upstream request failed");
                    Err(ProxyError::from_client(&e))
                }
                Ok(Ok(r)) => Ok((r, None)),
            },
        };
        let status = match &result {
            Ok((r, _)) => r.status(),
            Err(e) => {
                // Every failed attempt counts, also the ones a retry then hides.
                if let Some(kind) = e.upstream_kind() {
                    vrt.metrics.upstream_error(kind);
                }
                e.status()
            }
        };
        // Outlier detection hears only what the endpoint did: a client's failure is neither.
        let upstream_outcome = !matches!(&result, Err(e) if e.source() != ErrorSource::Upstream);
        if upstream_outcome && status.is_server_error() {
            vrt.failure(ei, &route.config.outlier);
        } else if upstream_outcome {
            vrt.success(ei);
        }
        // Connect failures never reached the upstream: any method may go again. Other
        // failures only for idempotent requests without a body, on the statuses configured.
        let never_sent = returned.is_some()
            || matches!(
                result,
                Err(ProxyError::Connect | ProxyError::ConnectTimeout)
            );
        let retry = !last
            && (never_sent || (status_retry_ok && policy.on_status.contains(&status.as_u16())));
        // What the next attempt sends: the request handed back, the body taken back from its
        // slot, or (no body) a fresh copy of the head.
        let can_resend = returned.is_some()
            || match &replay {
                Some(r) => r.take_back().map(|r| {
                    body = Some(RequestBody::Replayable(r, Idle::new(idle)));
                }),
                None => no_body.then(|| body = Some(RequestBody::Empty)),
            }
            .is_some();
        let budget_ok = retry_slot.is_some() || {
            let active = runtime.active.load(Ordering::Relaxed);
            let allowed =
                ((active as f64 * policy.budget_percent / 100.0) as usize).max(RETRY_BUDGET_MIN);
            runtime.retrying.load(Ordering::Relaxed) < allowed
        };
        match result {
            result if retry && can_resend && budget_ok => {
                tracing::debug!(endpoint = %endpoint.authority, %status, attempt, "retrying");
                if retry_slot.is_none() {
                    retry_slot = Some(Counted::new(&runtime.retrying));
                }
                drop(result);
                attempt += 1;
                vrt.metrics.retry();
                (vrt, ei) = runtime.choose(vrt, Some(ei));
                if let Some(t) = target.as_mut() {
                    t.version = vrt;
                    t.endpoint = ei;
                }
            }
            Err(e) => return Err(e),
            Ok((r, lease)) => break (r, lease, vrt),
        }
    };
    drop(retry_slot);

    let (mut rparts, rbody) = resp.into_parts();
    let switching = rparts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let upgraded_to = switching
        .then(|| rparts.headers.get(UPGRADE).cloned())
        .flatten();
    headers::strip_hop_by_hop(&mut rparts.headers);
    if switching {
        // A 101 only answers an upgrade we offered, to one of the protocols offered; anything
        // else (h2c to a WebSocket request, a 101 nobody asked for) is a broken upstream, and
        // its connection closes with the dropped response.
        let (Some(down), Some(up), Some(proto)) = (
            client_upgrade,
            rparts.extensions.remove::<OnUpgrade>(),
            upgraded_to.filter(|p| {
                upgrade
                    .as_ref()
                    .is_some_and(|o| headers::upgrade_answers(o, p))
            }),
        ) else {
            tracing::debug!(upgrade = ?upgrade, "101 from upstream does not answer the upgrade offered");
            vrt.metrics.upstream_error(UpstreamErrorKind::BadResponse);
            return Err(ProxyError::BadUpgrade);
        };
        headers::set_upgrade(&mut rparts.headers, proto);
        tokio::spawn(tunnel(down, up));
    }
    if snap.config.proxy.version_header {
        rparts
            .headers
            .insert(&X_CANARYD_VERSION, vrt.header_value.clone());
    }
    if let (Some(id), Some(sticky)) = (decision.assign, &route.config.sticky) {
        if let Some(cookie) = &sticky.assign_cookie {
            let v = format!(
                "{cookie}={}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax",
                router::format_id(id)
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                rparts.headers.append(SET_COOKIE, v);
            }
        }
    }
    let is_grpc = rparts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let body = if switching {
        ProxyBody::empty()
    } else if is_grpc {
        let mut done = GrpcDone::new(vrt, runtime, start);
        // Trailers-only response: the status is in the headers.
        if rparts.headers.contains_key(&GRPC_STATUS) {
            done.finish(grpc_status(&rparts.headers));
        }
        ProxyBody::Grpc(rbody, Idle::new(idle), done)
    } else {
        let gone = ClientGone::new(
            runtime
                .downstream
                .counter(DownstreamErrorKind::ClientClosed),
        );
        ProxyBody::upstream(rbody, Idle::new(idle), lease, gone)
    };
    Ok(Response::from_parts(rparts, body))
}

/// Methods RFC 9110 §9.2.2 calls idempotent: safe to send twice.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Increments a counter now and decrements it when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Counted(c)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host (absolute-form may stand in
/// for it); more than one is ambiguous about which site is meant, so both are refused.
fn check_host(parts: &http::request::Parts) -> Result<(), ProxyError> {
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

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC status codes canaryd itself assigns.
pub const GRPC_CANCELLED: u8 = 1;
pub const GRPC_UNKNOWN: u8 = 2;
pub const GRPC_UNAVAILABLE: u8 = 14;

/// `grpc-status` from headers or trailers; missing or malformed is UNKNOWN.
pub fn grpc_status(h: &http::HeaderMap) -> u8 {
    h.get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|c| *c <= 16)
        .unwrap_or(GRPC_UNKNOWN)
}

/// Counts a gRPC call's final status once: from the trailers, or CANCELLED if the client went
/// away first. Holds the version's metric handles and the route's `client_closed` counter.
#[derive(Debug)]
pub struct GrpcDone {
    pending: Option<(Arc<crate::metrics::VersionMetrics>, Counter, Instant)>,
}

impl GrpcDone {
    fn new(version: &VersionRt, route: &RouteRt, start: Instant) -> GrpcDone {
        let closed = route.downstream.counter(DownstreamErrorKind::ClientClosed);
        GrpcDone {
            pending: Some((version.metrics.clone(), closed.clone(), start)),
        }
    }

    pub fn finish(&mut self, code: u8) {
        if let Some((metrics, _, start)) = self.pending.take() {
            let now = Instant::now();
            metrics.grpc(code, now - start, Some(now));
        }
    }
}

impl Drop for GrpcDone {
    /// Dropped before its status passed: the client cancelled the call. CANCELLED is counted
    /// in the gRPC metric, and the client's leaving in `client_closed`; the analysis window
    /// does not see it (it says nothing about the version).
    fn drop(&mut self) {
        if let Some((metrics, closed, start)) = self.pending.take() {
            metrics.grpc(GRPC_CANCELLED, start.elapsed(), None);
            closed.inc();
        }
    }
}
