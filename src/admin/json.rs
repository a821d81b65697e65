//! JSON in and out: request bodies and query strings into the control plane's typed
//! arguments, typed results into response bodies.

use super::error::AdminError;
use crate::analysis;
use crate::config::FieldError;
use crate::config::raw::RawWhen;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Analysis window when the query names none.
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// `v` as pretty JSON and a newline. It goes through [`Value`], whose objects keep their
/// keys sorted: the order the API has always written them in.
pub fn response(status: StatusCode, v: &impl Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_value(v)
        .and_then(|v| serde_json::to_vec_pretty(&v))
        .unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn ok(v: &impl Serialize) -> Response<Full<Bytes>> {
    response(StatusCode::OK, v)
}

/// What every successful change answers.
#[derive(Serialize)]
pub struct Generation {
    pub generation: u64,
}

fn bad(field: &str, message: String) -> AdminError {
    AdminError::BadInput(FieldError {
        field: field.to_string(),
        message,
    })
}

/// A weights body, `{"canary": 25.5}`: an object naming at least one version. The values
/// are read by [`percent`] when the control plane reaches them.
pub fn weights(body: &[u8]) -> Result<BTreeMap<String, Value>, AdminError> {
    let map: BTreeMap<String, Value> = serde_json::from_slice(body).map_err(|e| {
        bad(
            "body",
            format!(
                "must be a JSON object of version name to percent, e.g. {{\"canary\": 25.5}} ({e})"
            ),
        )
    })?;
    if map.is_empty() {
        return Err(bad("body", "names no version".to_string()));
    }
    Ok(map)
}

/// One weight of a weights body: any JSON number.
pub fn percent(v: &Value) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("{v} is not a number"))
}

/// A rule body, `{"to": "canary", "when": {...}}`; `when` as in the config file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    pub to: String,
    pub when: RawWhen,
}

pub fn rule(body: &[u8]) -> Result<RuleBody, AdminError> {
    serde_json::from_slice(body).map_err(|e| {
        bad(
            "body",
            format!(
                "must be a rule like {{\"to\": \"canary\", \"when\": {{\"header\": {{\"name\": \"x-canary\", \"equals\": \"always\"}}}}}} ({e})"
            ),
        )
    })
}

/// `PUT .../mirrors/{name}`: `{to, percent, when, methods}` (Argo's SetMirrorRoute).
pub fn mirror(body: &[u8]) -> Result<crate::config::raw::RawMirror, AdminError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        to: String,
        percent: f64,
        when: Option<serde_json::Value>,
        methods: Option<Vec<String>>,
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        bad(
            "body",
            format!(
                "must be a mirror like {{\"to\": \"canary\", \"percent\": 10, \"when\": {{\"header\": {{\"name\": \"x-shadow\", \"present\": true}}}}, \"methods\": [\"GET\"]}} ({e})"
            ),
        )
    })?;
    Ok(crate::config::raw::RawMirror {
        to: b.to,
        percent: b.percent,
        when: b.when,
        methods: b.methods,
        ..Default::default()
    })
}

/// The analysis query, `?window=60s&min_requests=50`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnalysisQuery {
    pub window: Duration,
    /// `None`: the config's.
    pub min_requests: Option<u64>,
    /// `source=mirror`: the non-primary versions as shadows, from their mirror windows.
    pub source: crate::config::GateSource,
}

/// Parameters are read in order and the first bad one is reported; a repeated one counts
/// as its last value.
pub fn analysis_query(query: Option<&str>) -> Result<AnalysisQuery, AdminError> {
    let mut q = AnalysisQuery {
        window: DEFAULT_WINDOW,
        min_requests: None,
        source: crate::config::GateSource::Live,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "window" => {
                q.window = humantime::parse_duration(v)
                    .ok()
                    .filter(|d| *d >= analysis::SLOT && *d <= analysis::MAX_WINDOW)
                    .ok_or_else(|| {
                        bad(
                            "window",
                            format!(
                                "`{v}` must be a duration from {}s to {}s, e.g. 60s or 5m",
                                analysis::SLOT.as_secs(),
                                analysis::MAX_WINDOW.as_secs()
                            ),
                        )
                    })?;
            }
            "min_requests" => {
                let n = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    bad(
                        "min_requests",
                        format!("`{v}` must be a whole number above 0"),
                    )
                })?;
                q.min_requests = Some(n);
            }
            "source" => {
                q.source = match v {
                    "live" => crate::config::GateSource::Live,
                    "mirror" => crate::config::GateSource::Mirror,
                    _ => {
                        return Err(bad(
                            "source",
                            format!("`{v}` must be live (the default) or mirror"),
                        ));
                    }
                };
            }
            other => {
                return Err(bad(
                    other,
                    "unknown query parameter; use window, min_requests and source".to_string(),
                ));
            }
        }
    }
    Ok(q)
}

/// `GET /api/v1/rollouts`.
#[derive(Serialize)]
pub struct RolloutList {
    pub rollouts: Vec<crate::rollout::driver::RolloutView>,
}

/// A verb's optional body: `{"full": true}` for promote, `{"step": 3}` for resume.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerbArgs {
    #[serde(default)]
    pub full: bool,
    pub step: Option<usize>,
}

pub fn verb_args(body: &[u8]) -> Result<VerbArgs, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(VerbArgs::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        bad(
            "body",
            format!(
                "must be empty, {{\"full\": true}} (promote) or {{\"step\": 2}} (resume) ({e})"
            ),
        )
    })
}

/// `?force=true` on a weights change: take the weights from a rollout (which then pauses).
pub fn force(query: Option<&str>) -> Result<bool, AdminError> {
    let mut force = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("force", "true" | "1" | "") => force = true,
            ("force", "false" | "0") => force = false,
            ("force", v) => return Err(bad("force", format!("`{v}` must be true or false"))),
            (k, _) => {
                return Err(bad(
                    k,
                    "unknown query parameter; weights take only force".to_string(),
                ));
            }
        }
    }
    Ok(force)
}

/// The window query, `?from=UNIX&to=UNIX` (seconds).
pub fn window_query(query: Option<&str>) -> Result<(u64, u64), AdminError> {
    let (mut from, mut to) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = || {
            v.parse::<u64>()
                .map_err(|_| bad(k, format!("`{v}` must be Unix time in whole seconds")))
        };
        match k {
            "from" => from = Some(n()?),
            "to" => to = Some(n()?),
            other => {
                return Err(bad(
                    other,
                    "unknown query parameter; use from and to".to_string(),
                ));
            }
        }
    }
    match (from, to) {
        (Some(f), Some(t)) => Ok((f, t)),
        (None, _) => Err(bad("from", "is required (Unix time, seconds)".to_string())),
        (_, None) => Err(bad("to", "is required (Unix time, seconds)".to_string())),
    }
}

/// A controller's layer, `{id, revision, step, weights, rules}`.
pub fn pushed_layer(body: &[u8]) -> Result<crate::control::PushedLayer, AdminError> {
    serde_json::from_slice(body).map_err(|e| {
        bad(
            "body",
            format!("must be {{\"id\", \"revision\", \"step\", \"weights\": {{\"canary\": 25}}, \"rules\": [...]}} ({e})"),
        )
    })
}
