//! Small outbound HTTP calls of the control side: gate queries (Prometheus, webhooks) and the
//! `canaryd rollout` CLI. Not the request path: a client per call is fine here (a shared one
//! would keep pooled connections on whichever runtime opened them); the TLS settings, with
//! their root store, are built once.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use std::time::Duration;

/// Largest answer read.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// `method url` with an optional JSON body and bearer token; the status and body, or what went
/// wrong (unreachable, timeout, too large) in words.
pub async fn call(
    method: Method,
    url: &str,
    json: Option<Vec<u8>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let uri: Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let mut req = Request::builder().method(method).uri(uri);
    if json.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    if let Some(t) = token {
        let v =
            HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| "bad token".to_string())?;
        req = req.header(http::header::AUTHORIZATION, v);
    }
    let req = req
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s = format!("{s}: {c}");
                src = c.source();
            }
            s
        })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// Client TLS settings with the web PKI roots, built on first use.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    static TLS: std::sync::OnceLock<Result<rustls::ClientConfig, String>> =
        std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        Ok(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth(),
        )
    })
    .clone()
}

/// Percent-encode a query parameter value.
pub fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
