//! The request path, as named phases over one `RequestCtx` (Pingora's `ProxyHttp` phases
//! are the model):
//!
//! 1. `route::route`: refuse an ambiguous `Host`, then host/path → route, and rules →
//!    sticky → weights → version (pure, see [`crate::router`]);
//! 2. `route::pick`: an available endpoint of that version, or the primary's with
//!    `fallback`;
//! 3. `request::rewrite_request`: strip hop-by-hop (keeping an allowed
//!    `Upgrade`), add `X-Forwarded-*`, rebuild `Host` from `:authority`;
//! 4. send (the loop in `forward`, the rest in `send::Attempts`): attempts through our
//!    HTTP/1.1 pool or the client, under the route's response timeout, with retries, the retry
//!    budget, body replay and the outcome fed to outlier detection;
//! 5. `response::rewrite_response`: check a 101 and start the tunnel,
//!    strip hop-by-hop, `x-canaryd-version`, the sticky cookie, and the body (streamed
//!    through; a gRPC one counts its status at the trailers);
//! 6. `RequestCtx::record`: metrics by who is at fault, and the access log.
//!
//! The snapshot is loaded once, so the whole request sees one config generation. Every
//! failure is a [`crate::error::ProxyError`], turned into a response in exactly
//! one place.

pub mod body;
mod ctx;
pub mod grpc;
pub mod headers;
mod log;
mod request;
mod response;
mod route;
mod send;

use crate::error::ProxyError;
use crate::state::State;
use crate::upstream::body::{Downstream, H2Body};
use body::ProxyBody;
use ctx::RequestCtx;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use std::net::SocketAddr;
use std::sync::Arc;

/// A downstream request's body: hyper's, our HTTP/2 server's, or none at all (the requests
/// our own HTTP/1 server reads, see `crate::server::h1`, carry no body; anything with one is
/// hyper's).
#[derive(Debug)]
pub enum Inbound {
    Hyper(Incoming),
    H2(H2Body),
    Empty,
}

impl Inbound {
    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Hyper(b) => http_body::Body::is_end_stream(b),
            Inbound::H2(b) => http_body::Body::is_end_stream(b),
            Inbound::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Inbound::Hyper(b) => http_body::Body::size_hint(b),
            Inbound::H2(b) => http_body::Body::size_hint(b),
            Inbound::Empty => http_body::SizeHint::with_exact(0),
        }
    }

    /// The body, unless it is empty.
    fn into_stream(self) -> Option<Downstream> {
        match self {
            Inbound::Hyper(b) if !http_body::Body::is_end_stream(&b) => Some(Downstream::Left(b)),
            Inbound::H2(b) if !http_body::Body::is_end_stream(&b) => Some(Downstream::Right(b)),
            _ => None,
        }
    }
}

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

/// Serve one downstream request. Never fails: errors become responses here.
///
/// Not an `async fn`, nor is [`forward`]: an `async fn` keeps its arguments twice in its
/// future (as captured and as moved into the body), and the request head is 264 bytes. Every
/// request's future is moved whole (into hyper's slot for HTTP/1), so its size is paid on
/// every request.
///
/// It owns the state and connection handles it is given, so the server's service returns it
/// as is (an `async` wrapper there kept another copy of the request head).
#[allow(clippy::manual_async_fn)]
pub fn handle(
    state: Arc<State>,
    conn: ConnInfo,
    req: Request<Inbound>,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
    async move {
        let (state, conn) = (&*state, &conn);
        let _in_flight = GaugeGuard::new(&state.metrics.in_flight);
        let snap = state.snapshot();
        let mut ctx = RequestCtx::new(&snap, &state.metrics, conn, &req);
        let result = forward(&mut ctx, req).await;
        ctx.record(&result);
        match result {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                error_response(e)
            }
        }
    }
}

/// A failure as the client sees it: its status, and a short plain-text body that says which
/// kind of failure without leaking upstream addresses.
fn error_response(e: ProxyError) -> Response<ProxyBody> {
    let body = format!("canaryd: {e}\n");
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The phases, in order; the first failure ends the request.
#[allow(clippy::manual_async_fn)]
fn forward<'a, 'b>(
    ctx: &'a mut RequestCtx<'b>,
    req: Request<Inbound>,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'a
where
    'b: 'a,
{
    async move {
        // Routing in a block of its own: what it reads (the head's parts, the decision) is gone
        // before the first wait, so the future does not keep it.
        let (mut out, body, mirror) = {
            let (parts, body) = req.into_parts();
            // One lookup of `Host` serves routing, X-Forwarded-Host and the upstream request.
            let host = parts.headers.get(HOST).cloned();
            let decision = route::route(ctx, &parts, host.as_ref())?;
            if decision.route.config().kube.is_some() {
                if let Some(resp) = route::redirect(ctx, &decision, &parts, host.as_ref()) {
                    return Ok(resp);
                }
            }
            route::pick(ctx, &decision)?;
            let mirror = route::mirror(ctx, &decision, &parts);
            (request::rewrite_request(ctx, parts, host), body, mirror)
        };
        // Phase `send`: attempts until one answers or no retry is allowed (see `send`).
        let first = ctx.target()?;
        let timeout = first.route.config().timeouts.response;
        let worker = ctx.conn.worker;
        let copy = mirror.and_then(|m| start_mirror(first.route, m, &out, &body, timeout, worker));
        let (tee, capture) = copy.map_or((None, None), |c| (c.tee, c.capture));
        let mut attempts = send::Attempts::new(first, &out, body, tee);
        let (resp, lease) = loop {
            let t = ctx.target()?;
            let req = attempts.request(&mut out, t)?;
            let answer = match &t.endpoint().pool {
                Some(pool) => {
                    // The first attempt's clock is the request's own (one clock read less).
                    let from = if attempts.first() {
                        tokio::time::Instant::from_std(ctx.start)
                    } else {
                        tokio::time::Instant::now()
                    };
                    let sent = pool.send(worker, req, out.forwarded.as_ref(), from + timeout);
                    attempts.pooled(sent.await)
                }
                None => {
                    let client = &t.version.upstream.client;
                    send::Attempts::client(
                        t,
                        tokio::time::timeout(timeout, client.request(req)).await,
                    )
                }
            };
            if !attempts.settle(ctx, t, &answer, &out.path_and_query) {
                break answer?;
            }
        };
        drop(attempts);
        response::rewrite_response(ctx, resp, lease, out.upgrade, capture)
    }
}

/// Start the copy of this request for mirror `m` (out of line: only mirrored requests pay
/// for it).
#[inline(never)]
fn start_mirror(
    route: &crate::state::RouteRt,
    m: &crate::config::MirrorConfig,
    out: &request::Outgoing,
    body: &Inbound,
    timeout: std::time::Duration,
    worker: usize,
) -> Option<crate::mirror::Started> {
    let rt = route.mirror.as_ref()?;
    if out.upgrade.is_some() {
        return None; // A tunnel is not a request that can be copied.
    }
    crate::mirror::start(
        rt,
        m,
        &route.versions[m.to],
        timeout,
        crate::mirror::Head {
            method: &out.method,
            headers: &out.headers,
            forwarded: out.forwarded.as_ref(),
            path_and_query: &out.path_and_query,
            body_size: body.size_hint(),
            body_empty: body.is_end_stream(),
            worker,
        },
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::body::RequestBody;
    use crate::upstream::pool::Pool;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Arc<State>, ConnInfo, Request<Inbound>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    fn send_size<'a, F, Fut>(_: F) -> usize
    where
        F: FnOnce(
            &'a Arc<Pool>,
            usize,
            Request<RequestBody>,
            Option<&'a headers::Forwarded>,
            tokio::time::Instant,
        ) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every request's future is moved whole: into hyper's slot for HTTP/1 (HTTP/2 boxes it).
    /// What keeps it small: the rare paths (a new upstream connection, hyper's client for
    /// requests with a body) are boxed, and neither `handle` nor `forward` is an `async fn`
    /// (which keeps its arguments twice). Debug build: 4,384 bytes, 3,616 with the rare paths
    /// boxed, 3,056, then 2,432 with the upstream connection, a request handed back and a
    /// client body boxed; the upstream send 1,800 before, 1,024, now 888.
    #[test]
    fn a_requests_future_stays_small() {
        let handle = future_size(handle);
        let send = send_size(Pool::send);
        eprintln!("handle: {handle} B, upstream send: {send} B");
        assert!(handle <= 2560, "a request's future grew to {handle} B");
        assert!(send <= 1024, "the upstream send's future grew to {send} B");
        // What moves through the request's future by value, several times per request
        // (memcpy was ~9 % of a request's instructions): the upstream connection lives in a
        // box, a request handed back by a failed attempt and a client body too.
        use crate::upstream::pool::Sent;
        let (answer, response) = (size_of::<Sent>(), size_of::<Response<ProxyBody>>());
        let upstream_request = size_of::<Request<RequestBody>>();
        assert!(answer <= 200, "an upstream answer is {answer} B");
        assert!(response <= 240, "a response is {response} B");
        assert!(
            upstream_request <= 264,
            "an upstream request is {upstream_request} B"
        );
        // Every request moves its body handle several times: our HTTP/2 server's may not
        // make it larger than hyper's alone.
        let (inbound, hyper) = (size_of::<Inbound>(), size_of::<Incoming>());
        assert!(
            inbound <= hyper,
            "Inbound is {inbound} B, hyper's body {hyper} B"
        );
    }
}
