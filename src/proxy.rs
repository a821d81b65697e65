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

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::headers::{self, X_CANARYD_VERSION};
use crate::router::{self, Decision, Reason};
use crate::state::{Snapshot, State};
use http::header::{HOST, SET_COOKIE};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

/// Facts about the downstream connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

thread_local! {
    /// Per-thread fast RNG for unsticky weight draws and new sticky ids; seeded from the OS so
    /// replicas and restarts do not share a sequence.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// What `forward` decided, kept for metrics and the access log even when forwarding fails.
#[derive(Debug, Clone, Copy)]
struct Target {
    route: usize,
    version: usize,
    reason: Reason,
    endpoint: usize,
}

/// Serve one downstream request. Never fails: errors become responses here.
pub async fn handle(state: &State, conn: ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let _in_flight = GaugeGuard::new(&state.metrics.in_flight);
    let snap = state.snapshot();
    // Only copied when the access log is on: nothing is allocated for it otherwise.
    let log_req = snap
        .config
        .proxy
        .access_log
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    let mut target: Option<Target> = None;
    let result = forward(&snap, conn, req, &mut target).await;
    let (status, upstream_kind) = match &result {
        Ok(resp) => (resp.status(), None),
        Err(e) => (e.status(), e.upstream_kind()),
    };
    let now = Instant::now();
    let elapsed = now - start;
    if let Some(t) = target {
        let vm = &snap.routes[t.route].versions[t.version].metrics;
        if let Some(kind) = upstream_kind {
            vm.upstream_error(kind);
        }
        vm.record(status.as_u16(), elapsed, now);
    }
    if let Some((method, path)) = log_req {
        access_log(
            &snap, conn, target, &method, &path, status, elapsed, &result,
        );
    }
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            e.into_response()
        }
    }
}

/// One structured line per request, target `canaryd::access` (JSON with `--log-format json`).
#[allow(clippy::too_many_arguments)]
fn access_log(
    snap: &Snapshot,
    conn: ConnInfo,
    target: Option<Target>,
    method: &http::Method,
    path: &str,
    status: http::StatusCode,
    elapsed: std::time::Duration,
    result: &Result<Response<ProxyBody>, ProxyError>,
) {
    let (route, version, reason, detail, upstream) = match target {
        Some(t) => {
            let r = &snap.router.routes[t.route].config;
            let v = &r.versions[t.version];
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
                Some(v.endpoints[t.endpoint].to_string()),
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

async fn forward(
    snap: &Snapshot,
    conn: ConnInfo,
    req: Request<Incoming>,
    target: &mut Option<Target>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();

    let decision: Decision = {
        let host = router::request_host(&parts.uri, &parts.headers);
        RNG.with(|rng| {
            snap.router.decide(
                host,
                parts.uri.path(),
                &parts.headers,
                &mut *rng.borrow_mut(),
            )
        })
        .ok_or(ProxyError::NoRoute)?
    };
    let route = &snap.router.routes[decision.route];
    let runtime = &snap.routes[decision.route];
    let version = &route.config.versions[decision.version];
    let vrt = &runtime.versions[decision.version];
    let endpoint_index = vrt.next_endpoint(version.endpoints.len());
    let endpoint = &version.endpoints[endpoint_index];
    *target = Some(Target {
        route: decision.route,
        version: decision.version,
        reason: decision.reason,
        endpoint: endpoint_index,
    });

    // The host the client asked for: HTTP/2 carries it as :authority, HTTP/1 as Host.
    let client_host: Option<HeaderValue> = match parts.headers.get(HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        conn.proto,
        client_host.clone(),
    );
    if let Some(h) = client_host {
        // Host passes through unchanged; for HTTP/2 clients it is rebuilt from :authority.
        parts.headers.insert(HOST, h);
    }

    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(endpoint.authority.clone());
    uri.path_and_query = Some(path_and_query);
    parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest)?;
    // Upstreams speak HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;

    let upstream_req = Request::from_parts(parts, body);
    let resp = match tokio::time::timeout(
        route.timeouts().response,
        runtime.client.request(upstream_req),
    )
    .await
    {
        Err(_elapsed) => return Err(ProxyError::ResponseTimeout),
        Ok(Err(e)) => {
            tracing::debug!(error = ?e, endpoint = %endpoint, "upstream request failed");
            return Err(ProxyError::from_client(&e));
        }
        Ok(Ok(r)) => r,
    };

    let (mut rparts, rbody) = resp.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
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
    Ok(Response::from_parts(rparts, ProxyBody::Upstream(rbody)))
}
