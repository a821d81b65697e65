//! The admin listener: `/healthz`, `/readyz`, `/metrics`, the dashboard at `/ui` and the JSON
//! API under `/api/v1`.
//!
//! Access: health, metrics and the dashboard's shell are open (Kubernetes probes and
//! Prometheus need the first two; the shell holds no data). The API
//! requires `Authorization: Bearer <token>` when a token is configured; without a token,
//! state-changing calls are refused unless they come from a loopback peer. canaryd refuses to
//! start with a non-loopback admin address and no token (see `server`).
//!
//! This module is the listener and the routing; `json` reads requests into the control
//! plane's typed arguments and writes its typed results; `error` maps every failure to a
//! status in one place.

mod error;
mod json;
mod ui;

use crate::control::{Control, Trigger};
use crate::rollout::driver::Rollouts;
use crate::rollout::machine::Verb;
use bytes::Bytes;
use error::AdminError;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use json::Generation;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest admin request body accepted.
const MAX_BODY: usize = 64 * 1024;

pub struct Admin {
    pub control: Arc<Control>,
    /// The rollouts of this process (their API, verbs and event stream).
    pub rollouts: Arc<Rollouts>,
    /// Recent history of every route (the dashboard's charts).
    pub series: Arc<crate::series::Series>,
    /// Bearer token for `/api/v1/*`, if any.
    pub token: Option<String>,
}

/// Serve the admin API until `stop` turns true.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            res = listener.accept() => match res {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(handle(&admin, peer, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Constant-time comparison so the token cannot be guessed byte by byte from timing.
fn token_matches(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Admin answers: whole bodies, or the event stream.
pub enum AdminBody {
    Full(Full<Bytes>),
    /// `text/event-stream` frames as the rollout engine publishes them.
    Events(tokio::sync::mpsc::Receiver<Bytes>),
}

impl http_body::Body for AdminBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            AdminBody::Full(b) => std::pin::Pin::new(b).poll_frame(cx),
            AdminBody::Events(rx) => rx
                .poll_recv(cx)
                .map(|f| f.map(|b| Ok(http_body::Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AdminBody::Full(b) => b.is_end_stream(),
            AdminBody::Events(_) => false,
        }
    }

    /// A whole body's length, so it goes out with `Content-Length` rather than chunked.
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            AdminBody::Full(b) => b.size_hint(),
            AdminBody::Events(_) => http_body::SizeHint::default(),
        }
    }
}

async fn handle(admin: &Admin, peer: SocketAddr, req: Request<Incoming>) -> Response<AdminBody> {
    let mut r = if req.method() == Method::GET && req.uri().path() == "/api/v1/events" {
        match authorize(admin, peer, req.method(), req.headers()) {
            Ok(()) => events(admin),
            Err(e) => e.into_response().map(AdminBody::Full),
        }
    } else {
        respond(admin, peer, req)
            .await
            .unwrap_or_else(AdminError::into_response)
            .map(AdminBody::Full)
    };
    ui::secure(r.headers_mut());
    r
}

/// `GET /api/v1/events`: server-sent events of rollout transitions and measurements, read
/// with `fetch` or `curl -N` (a token goes in the `Authorization` header, as for any call).
fn events(admin: &Admin) -> Response<AdminBody> {
    let mut r = Response::new(AdminBody::Events(admin.rollouts.subscribe()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}

async fn respond(
    admin: &Admin,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, AdminError> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET, "/readyz") => {
            return Ok(match admin.control.state().not_ready() {
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
                None => text(StatusCode::OK, "ready\n"),
            });
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(
                admin.control.state().metrics.encode(),
            )));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return Ok(r);
        }
        // Open like the shell: lets the page ask for the token before any call fails with 401.
        // It tells no more than any API call answering 401 would.
        (&Method::GET, "/ui/access") => {
            return Ok(json::ok(&serde_json::json!({
                "token_required": admin.token.is_some(),
            })));
        }
        (&Method::GET, _) => {
            if let Some(r) = ui::asset(&path, req.headers()) {
                return Ok(r);
            }
        }
        _ => {}
    }
    let Some(api_path) = path.strip_prefix("/api/v1/") else {
        return Err(AdminError::NoEndpoint(path));
    };
    authorize(admin, peer, &method, req.headers())?;
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| AdminError::BodyTooLarge)?
        .to_bytes();
    let segments: Vec<&str> = api_path.split('/').filter(|s| !s.is_empty()).collect();
    api(admin, &method, &path, &segments, query.as_deref(), &body)
}

/// The bearer token when one is configured; otherwise changes only from loopback.
fn authorize(
    admin: &Admin,
    peer: SocketAddr,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), AdminError> {
    match &admin.token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            if given.is_some_and(|g| token_matches(g, token.as_bytes())) {
                Ok(())
            } else {
                Err(AdminError::Unauthorized)
            }
        }
        None if method != Method::GET && !peer.ip().is_loopback() => Err(AdminError::Forbidden),
        None => Ok(()),
    }
}

/// One `/api/v1` call: read its input, run the control operation, write the result. The
/// route is checked before the input is read, so an unknown route is a 404 whatever the
/// body or query says.
fn api(
    admin: &Admin,
    method: &Method,
    path: &str,
    segments: &[&str],
    query: Option<&str>,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, AdminError> {
    let control: &Control = &admin.control;
    let rollouts = &admin.rollouts;
    let changed = |generation| json::ok(&Generation { generation });
    let controller = control.state().snapshot().config.controller.is_some();
    if controller
        && method != Method::GET
        && matches!(
            segments,
            ["routes", _, "weights" | "rollout-layer" | "overrides"]
                | ["routes", _, "rules" | "mirrors", _]
        )
    {
        return Err(AdminError::OnController(path.to_string()));
    }
    match (method, segments) {
        (&Method::GET, ["rollouts"]) => Ok(json::ok(&json::RolloutList {
            rollouts: rollouts.views(),
        })),
        (&Method::GET, ["routes", route, "rollout"]) => {
            control.check_route(route)?;
            Ok(json::ok(&rollouts.view(route)?))
        }
        (&Method::POST, ["routes", route, "rollout", verb]) => {
            control.check_writable(route)?;
            let Some(verb) = Verb::parse(verb) else {
                return Err(AdminError::NoEndpoint(path.to_string()));
            };
            let args = json::verb_args(body)?;
            Ok(json::ok(&rollouts.verb(route, verb, args.full, args.step)?))
        }
        (&Method::PUT, ["synced"]) => {
            control.state().set_synced();
            Ok(json::ok(&synced(control)))
        }
        (&Method::GET, ["synced"]) => Ok(json::ok(&synced(control))),
        (&Method::POST, ["reload"]) => Ok(json::ok(&control.reload_all(Trigger::Api)?)),
        (&Method::GET, ["reload"]) => Ok(json::ok(&control.status())),
        (&Method::GET, ["routes"]) => Ok(json::ok(&control.routes())),
        (&Method::GET, ["routes", route]) => Ok(json::ok(&control.route(route)?)),
        (&Method::PUT, ["routes", route, "rollout-layer"]) => {
            control.check_writable(route)?;
            let layer = json::pushed_layer(body)?;
            control.push_layer(route, layer)?;
            Ok(json::ok(&control.pushed_layer(route)?))
        }
        (&Method::GET, ["routes", route, "rollout-layer"]) => {
            Ok(json::ok(&control.pushed_layer(route)?))
        }
        (&Method::DELETE, ["routes", route, "rollout-layer"]) => {
            Ok(changed(control.drop_pushed_layer(route)?))
        }
        (&Method::GET, ["routes", route, "window"]) => {
            control.check_route(route)?;
            let (from, to) = json::window_query(query)?;
            Ok(json::ok(&control.window(route, from, to)?))
        }
        (&Method::GET, ["routes", route, "series"]) => {
            control.check_route(route)?;
            Ok(json::ok(&admin.series.view(route)))
        }
        (&Method::GET, ["routes", route, "analysis"]) => {
            control.check_route(route)?;
            let q = json::analysis_query(query)?;
            Ok(json::ok(&control.analysis(
                route,
                q.window,
                q.min_requests,
                q.source,
            )?))
        }
        (&Method::PUT, ["routes", route, "weights"]) => {
            control.check_writable(route)?;
            let force = json::force(query)?;
            let driving = rollouts.drives(route);
            if let (Some(phase), false) = (driving, force) {
                return Err(AdminError::RolloutDrivesWeights {
                    route: route.to_string(),
                    phase,
                });
            }
            let weights = json::weights(body)?;
            let generation = control.set_weights(route, &weights, json::percent)?;
            if driving.is_some() {
                rollouts.weights_forced(route);
            }
            Ok(changed(generation))
        }
        (&Method::PUT, ["routes", route, "rules", name]) => {
            control.check_writable(route)?;
            let rule = json::rule(body)?;
            Ok(changed(control.put_rule(route, name, rule.to, rule.when)?))
        }
        (&Method::DELETE, ["routes", route, "rules", name]) => {
            Ok(changed(control.delete_rule(route, name)?))
        }
        (&Method::PUT, ["routes", route, "mirrors", name]) => {
            control.check_writable(route)?;
            let m = json::mirror(body)?;
            Ok(changed(control.put_mirror(route, name, m)?))
        }
        (&Method::DELETE, ["routes", route, "mirrors", name]) => {
            Ok(changed(control.delete_mirror(route, name)?))
        }
        (&Method::GET, ["routes", route, "mirror", "diffs"]) => {
            Ok(json::ok(&control.mirror_diffs(route)?))
        }
        (&Method::DELETE, ["routes", route, "overrides"]) => {
            Ok(changed(control.clear_overrides(route)?))
        }
        (_, ["reload"])
        | (_, ["synced"])
        | (_, ["rollouts"])
        | (_, ["routes", _, "rollout"])
        | (_, ["routes", _, "rollout", _])
        | (_, ["routes"])
        | (_, ["routes", _])
        | (_, ["routes", _, "weights"])
        | (_, ["routes", _, "analysis"])
        | (_, ["routes", _, "series"])
        | (_, ["routes", _, "window"])
        | (_, ["routes", _, "rollout-layer"])
        | (_, ["routes", _, "rules", _])
        | (_, ["routes", _, "mirrors", _])
        | (_, ["routes", _, "mirror", "diffs"])
        | (_, ["routes", _, "overrides"]) => Err(AdminError::MethodNotAllowed {
            method: method.clone(),
            path: path.to_string(),
        }),
        _ => Err(AdminError::NoEndpoint(path.to_string())),
    }
}

/// `GET/PUT /api/v1/synced`: whether a fleet controller has synced this replica.
fn synced(control: &Control) -> serde_json::Value {
    let state = control.state();
    serde_json::json!({
        "synced": state.is_synced(),
        "wait_for_controller": state.snapshot().config.proxy.wait_for_controller,
        "ready": state.not_ready().is_none(),
    })
}
