//! The admin listener: `/healthz`, `/readyz`, `/metrics` and the JSON API under `/api/v1`.
//!
//! Access: health and metrics are open (Kubernetes probes and Prometheus need them). The API
//! requires `Authorization: Bearer <token>` when a token is configured; without a token,
//! state-changing calls are refused unless they come from a loopback peer. canaryd refuses to
//! start with a non-loopback admin address and no token (see `server`).

use crate::config::ConfigError;
use crate::control::{ApiError, Control, ReloadOutcome, Trigger};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
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

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message.into(), "errors": [] }))
}

fn api_error(e: ApiError) -> Response<Full<Bytes>> {
    json_response(e.status, &e.to_json())
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

async fn handle(admin: &Admin, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            return if admin.control.state().is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            };
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(
                admin.control.state().metrics.encode(),
            )));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return r;
        }
        _ => {}
    }
    let Some(api_path) = path.strip_prefix("/api/v1/") else {
        return error(StatusCode::NOT_FOUND, format!("no admin endpoint {path}"));
    };

    match &admin.token {
        Some(token) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            if !given.is_some_and(|g| token_matches(g, token.as_bytes())) {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "this admin API requires `Authorization: Bearer <token>`",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
        }
        None if method != Method::GET && !peer.ip().is_loopback() => {
            return error(
                StatusCode::FORBIDDEN,
                "state-changing admin calls are accepted only from loopback unless admin.token is set",
            );
        }
        None => {}
    }

    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY} bytes"),
            );
        }
    };
    let segments: Vec<&str> = api_path.split('/').filter(|s| !s.is_empty()).collect();
    let control = &admin.control;
    let result = match (&method, segments.as_slice()) {
        (&Method::POST, ["reload"]) => return reload(control),
        (&Method::GET, ["reload"]) => {
            return json_response(StatusCode::OK, &json!(control.status()));
        }
        (&Method::GET, ["routes"]) => control.routes_json(None),
        (&Method::GET, ["routes", route]) => control.routes_json(Some(route)),
        (&Method::GET, ["routes", route, "analysis"]) => {
            control.analysis_json(route, query.as_deref())
        }
        (&Method::PUT, ["routes", route, "weights"]) => control
            .set_weights(route, &body)
            .map(|g| json!({ "generation": g })),
        (&Method::PUT, ["routes", route, "rules", name]) => control
            .put_rule(route, name, &body)
            .map(|g| json!({ "generation": g })),
        (&Method::DELETE, ["routes", route, "rules", name]) => control
            .delete_rule(route, name)
            .map(|g| json!({ "generation": g })),
        (&Method::DELETE, ["routes", route, "overrides"]) => control
            .clear_overrides(route)
            .map(|g| json!({ "generation": g })),
        (_, ["reload"])
        | (_, ["routes"])
        | (_, ["routes", _])
        | (_, ["routes", _, "weights"])
        | (_, ["routes", _, "analysis"])
        | (_, ["routes", _, "rules", _])
        | (_, ["routes", _, "overrides"]) => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            );
        }
        _ => return error(StatusCode::NOT_FOUND, format!("no admin endpoint {path}")),
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => api_error(e),
    }
}

/// 422 for a rejected reload: what was rejected, every field at fault, and the generation
/// still in force.
fn reload_failure(control: &Control, what: &str, e: &ConfigError) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({
            "result": "failure",
            "generation": control.state().snapshot().generation,
            "error": format!("{what} rejected, the running one is kept: {e}"),
            "errors": e.errors.iter().map(|f| json!({ "field": f.field, "message": f.message })).collect::<Vec<_>>(),
        }),
    )
}

fn reload(control: &Control) -> Response<Full<Bytes>> {
    if let Err(e) = control.reload_certs(Trigger::Api) {
        return reload_failure(control, "certificate", &e);
    }
    match control.reload(Trigger::Api, true) {
        ReloadOutcome::Applied { generation } => json_response(
            StatusCode::OK,
            &json!({ "result": "applied", "generation": generation }),
        ),
        ReloadOutcome::Unchanged { generation } => json_response(
            StatusCode::OK,
            &json!({ "result": "unchanged", "generation": generation }),
        ),
        ReloadOutcome::Failed(e) => reload_failure(control, "config", &e),
        ReloadOutcome::NoFile => error(
            StatusCode::CONFLICT,
            "canaryd was started without a config file; nothing to reload",
        ),
    }
}
