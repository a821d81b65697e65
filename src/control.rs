//! The control plane: file reloads and runtime overrides, composed into one config and
//! applied as a new snapshot.
//!
//! Reload = read → parse → validate → compose with overrides → build → swap. Any error keeps
//! the running snapshot, is logged naming the field, counted in
//! `canaryd_config_reloads_total{result="failure"}` and kept for `GET /api/v1/reload`.
//!
//! Runtime overrides (weights, named rules) sit on top of the file config like Envoy's
//! runtime layer: they survive file reloads until removed. An override whose route or version
//! disappears from the file is dropped with a warning; one that makes the composed config
//! invalid (weights over 100 %) fails the reload instead, so the running config stays.
//!
//! Listeners are never re-bound: a changed `listeners` or `admin` section is reported as
//! "needs restart" and the running one is kept.

use crate::analysis;
use crate::config::raw::{RawRule, RawWhen};
use crate::config::{
    Admin, Config, ConfigError, Errors, FieldError, Listener, RouteConfig, StickyKey, Weight,
    validate_rule,
};
use crate::metrics::ReloadResult;
use crate::state::State;
use crate::tls::TlsListener;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What asked for a reload; logged and shown in the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The file watcher saw a change.
    Watch,
    /// The periodic safety-net re-read.
    Periodic,
    /// SIGHUP.
    Signal,
    /// `POST /api/v1/reload`.
    Api,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied {
        generation: u64,
    },
    /// The file content is what was last seen: nothing to do.
    Unchanged {
        generation: u64,
    },
    Failed(ConfigError),
    /// canaryd was started without a config file (e.g. `canaryd demo`).
    NoFile,
}

/// Reload history for the admin API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    pub generation: u64,
    pub config_file: Option<String>,
    pub reloads_success: u64,
    pub reloads_failure: u64,
    pub last_success: Option<Event>,
    pub last_error: Option<ErrorEvent>,
    /// Set when the file changed a section that only a restart can apply.
    pub needs_restart: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at: String,
    pub trigger: Trigger,
    pub generation: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorEvent {
    pub at: String,
    pub trigger: Trigger,
    pub errors: Vec<FieldErrorJson>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldErrorJson {
    pub field: String,
    pub message: String,
}

impl From<&FieldError> for FieldErrorJson {
    fn from(e: &FieldError) -> Self {
        FieldErrorJson {
            field: e.field.clone(),
            message: e.message.clone(),
        }
    }
}

/// An admin API failure: status, message and the fields at fault. Nothing was changed.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub errors: Vec<FieldError>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    fn bad_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let e = FieldError {
            field: field.into(),
            message: message.into(),
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
            errors: vec![e],
        }
    }

    fn unknown_route(route: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no route named `{route}`"))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "error": self.message,
            "errors": self.errors.iter().map(FieldErrorJson::from).collect::<Vec<_>>(),
        })
    }
}

/// Runtime overrides for every route, by route name.
#[derive(Debug, Clone, Default)]
struct Overrides {
    routes: BTreeMap<String, RouteOverrides>,
}

#[derive(Debug, Clone, Default)]
struct RouteOverrides {
    /// Non-primary version name → weight.
    weights: BTreeMap<String, Weight>,
    /// Named rules, in the order they were first put; evaluated before the file's rules.
    rules: Vec<RawRule>,
}

impl RouteOverrides {
    fn is_empty(&self) -> bool {
        self.weights.is_empty() && self.rules.is_empty()
    }
}

pub struct Control {
    state: Arc<State>,
    path: Option<PathBuf>,
    /// TLS listeners whose certificates reload with the config.
    tls: Vec<Arc<TlsListener>>,
    inner: Mutex<Inner>,
}

/// The parts of a config that only take effect at startup: what is bound, and how
/// connections are accepted. A reload that changes them reports "needs restart" and runs
/// with these values pinned, so the snapshot never claims settings that are not in force.
#[derive(Debug, Clone, PartialEq)]
struct StartupOnly {
    listeners: Vec<Listener>,
    admin: Option<Admin>,
    max_connections: usize,
    header_timeout: Duration,
    drain_timeout: Duration,
    idle_timeout: Duration,
}

impl StartupOnly {
    fn of(c: &Config) -> StartupOnly {
        StartupOnly {
            listeners: c.listeners.clone(),
            admin: c.admin.clone(),
            max_connections: c.proxy.max_connections,
            header_timeout: c.proxy.header_timeout,
            drain_timeout: c.proxy.drain_timeout,
            idle_timeout: c.proxy.idle_timeout,
        }
    }

    fn pin(&self, c: &mut Config) {
        c.listeners = self.listeners.clone();
        c.admin = self.admin.clone();
        c.proxy.max_connections = self.max_connections;
        c.proxy.header_timeout = self.header_timeout;
        c.proxy.drain_timeout = self.drain_timeout;
        c.proxy.idle_timeout = self.idle_timeout;
    }
}

struct Inner {
    /// The last good config read from the file, with the startup-only parts pinned.
    file: Config,
    /// As the process started; reloads cannot change them.
    startup: StartupOnly,
    /// Hash of the file content last read, good or bad, so unchanged files are skipped.
    last_seen: Option<u64>,
    last_ok: bool,
    overrides: Overrides,
    status: ReloadStatus,
}

fn content_hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Control {
    /// `text` is the file content the running config came from, if any.
    pub fn new(
        state: Arc<State>,
        path: Option<PathBuf>,
        text: Option<&str>,
        tls: Vec<Arc<TlsListener>>,
    ) -> Control {
        let snap = state.snapshot();
        let file = (*snap.config).clone();
        let status = ReloadStatus {
            generation: snap.generation,
            config_file: path.as_ref().map(|p| p.display().to_string()),
            ..ReloadStatus::default()
        };
        Control {
            inner: Mutex::new(Inner {
                startup: StartupOnly::of(&file),
                file,
                last_seen: text.map(content_hash),
                last_ok: true,
                overrides: Overrides::default(),
                status,
            }),
            state,
            path,
            tls,
        }
    }

    /// Every file a reload reads besides the config: TLS certificates and keys.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.tls
            .iter()
            .flat_map(|t| t.paths().into_iter().map(|p| p.to_path_buf()))
            .collect()
    }

    /// Re-read TLS certificates; changed valid ones are swapped in for new handshakes, a bad
    /// one keeps the old certificate and is reported like a bad config.
    pub fn reload_certs(&self, trigger: Trigger) -> Result<usize, ConfigError> {
        let mut swapped = 0;
        let mut errors = Vec::new();
        for t in &self.tls {
            match t.reload() {
                Ok(true) => swapped += 1,
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        if swapped > 0 {
            tracing::info!(
                swapped,
                trigger = trigger_name(trigger),
                "TLS certificates reloaded"
            );
        }
        if errors.is_empty() {
            Ok(swapped)
        } else {
            let e = ConfigError { errors };
            let mut inner = self.lock();
            self.fail(&mut inner, trigger, e.clone());
            Err(e)
        }
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> ReloadStatus {
        let mut s = self.lock().status.clone();
        s.generation = self.state.snapshot().generation;
        s
    }

    /// Read the config file and apply it. `force` re-applies an unchanged file whose last
    /// attempt failed (SIGHUP and the API use it; the watcher does not).
    pub fn reload(&self, trigger: Trigger, force: bool) -> ReloadOutcome {
        let Some(path) = &self.path else {
            return ReloadOutcome::NoFile;
        };
        match std::fs::read_to_string(path) {
            Ok(text) => self.reload_text(&text, trigger, force),
            Err(e) => {
                let err = ConfigError {
                    errors: vec![FieldError {
                        field: path.display().to_string(),
                        message: format!("cannot read config file: {e}"),
                    }],
                };
                let mut inner = self.lock();
                inner.last_seen = None;
                self.fail(&mut inner, trigger, err)
            }
        }
    }

    /// Apply config text that was read from the file.
    pub fn reload_text(&self, text: &str, trigger: Trigger, force: bool) -> ReloadOutcome {
        let hash = content_hash(text);
        let mut inner = self.lock();
        if inner.last_seen == Some(hash) && (inner.last_ok || !force) {
            return ReloadOutcome::Unchanged {
                generation: self.state.snapshot().generation,
            };
        }
        inner.last_seen = Some(hash);
        let mut config = match Config::from_yaml(text) {
            Ok(c) => c,
            Err(e) => return self.fail(&mut inner, trigger, e),
        };
        if StartupOnly::of(&config) != inner.startup {
            let msg = "listeners, admin, or proxy max_connections/header_timeout/drain_timeout/idle_timeout changed; restart canaryd to apply them (the running ones are kept)".to_string();
            tracing::warn!(trigger = trigger_name(trigger), "{msg}");
            inner.status.needs_restart = Some(msg);
            inner.startup.pin(&mut config);
        } else {
            inner.status.needs_restart = None;
        }
        let mut overrides = inner.overrides.clone();
        let composed = match compose(&config, &mut overrides) {
            Ok(c) => c,
            Err(e) => return self.fail(&mut inner, trigger, e),
        };
        let generation = match self.state.apply(composed) {
            Ok(g) => g,
            Err(e) => return self.fail(&mut inner, trigger, e),
        };
        inner.file = config;
        inner.overrides = overrides;
        inner.last_ok = true;
        inner.status.reloads_success += 1;
        inner.status.last_success = Some(Event {
            at: now(),
            trigger,
            generation,
        });
        self.state.metrics.reload(ReloadResult::Success);
        tracing::info!(
            generation,
            trigger = trigger_name(trigger),
            "config applied"
        );
        ReloadOutcome::Applied { generation }
    }

    fn fail(&self, inner: &mut Inner, trigger: Trigger, e: ConfigError) -> ReloadOutcome {
        let generation = self.state.snapshot().generation;
        tracing::warn!(
            trigger = trigger_name(trigger),
            kept_generation = generation,
            "config rejected, keeping the running config:\n{e}"
        );
        inner.last_ok = false;
        inner.status.reloads_failure += 1;
        inner.status.last_error = Some(ErrorEvent {
            at: now(),
            trigger,
            errors: e.errors.iter().map(FieldErrorJson::from).collect(),
        });
        self.state.metrics.reload(ReloadResult::Failure);
        ReloadOutcome::Failed(e)
    }

    /// Compose the file config with candidate overrides and apply; on error nothing changes.
    fn apply_overrides(
        &self,
        inner: &mut Inner,
        mut candidate: Overrides,
    ) -> Result<u64, ApiError> {
        let composed = compose(&inner.file, &mut candidate).map_err(|e| ApiError {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
            errors: e.errors,
        })?;
        let generation = self.state.apply(composed).map_err(|e| ApiError {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
            errors: e.errors,
        })?;
        inner.overrides = candidate;
        tracing::info!(generation, "runtime override applied");
        Ok(generation)
    }

    fn file_route<'a>(inner: &'a Inner, route: &str) -> Result<&'a RouteConfig, ApiError> {
        inner
            .file
            .routes
            .iter()
            .find(|r| r.name == route)
            .ok_or_else(|| ApiError::unknown_route(route))
    }

    /// `PUT /api/v1/routes/{route}/weights` with `{"canary": 25.5}`.
    pub fn set_weights(&self, route: &str, body: &[u8]) -> Result<u64, ApiError> {
        let mut inner = self.lock();
        let rc = Self::file_route(&inner, route)?;
        let map: BTreeMap<String, Value> = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_field(
                "body",
                format!("must be a JSON object of version name to percent, e.g. {{\"canary\": 25.5}} ({e})"),
            )
        })?;
        if map.is_empty() {
            return Err(ApiError::bad_field("body", "names no version"));
        }
        let mut weights = BTreeMap::new();
        for (version, value) in &map {
            match rc.versions.iter().position(|v| &v.name == version) {
                None => {
                    let known: Vec<&str> = rc.versions.iter().map(|v| v.name.as_str()).collect();
                    return Err(ApiError::bad_field(
                        version.clone(),
                        format!("unknown version; route `{route}` has: {}", known.join(", ")),
                    ));
                }
                Some(0) => {
                    return Err(ApiError::bad_field(
                        version.clone(),
                        "is the primary version; it receives whatever the others leave, set the others",
                    ));
                }
                Some(_) => {}
            }
            let p = value.as_f64().ok_or_else(|| {
                ApiError::bad_field(version.clone(), format!("{value} is not a number"))
            })?;
            let w = Weight::from_percent(p).map_err(|m| ApiError::bad_field(version.clone(), m))?;
            weights.insert(version.clone(), w);
        }
        let mut candidate = inner.overrides.clone();
        candidate
            .routes
            .entry(route.to_string())
            .or_default()
            .weights
            .extend(weights);
        self.apply_overrides(&mut inner, candidate)
    }

    /// `PUT /api/v1/routes/{route}/rules/{name}` with `{"to": "canary", "when": {...}}`.
    pub fn put_rule(&self, route: &str, name: &str, body: &[u8]) -> Result<u64, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RuleBody {
            to: String,
            when: RawWhen,
        }
        let mut inner = self.lock();
        let rc = Self::file_route(&inner, route)?;
        let body: RuleBody = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_field(
                "body",
                format!(
                    "must be a rule like {{\"to\": \"canary\", \"when\": {{\"header\": {{\"name\": \"x-canary\", \"equals\": \"always\"}}}}}} ({e})"
                ),
            )
        })?;
        let raw = RawRule {
            name: Some(name.to_string()),
            to: body.to,
            when: body.when,
        };
        let mut errs = Errors::default();
        if validate_rule(&raw, &rc.versions, "rule", &mut errs).is_none() {
            let e = ConfigError { errors: errs.0 };
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
                errors: e.errors,
            });
        }
        let mut candidate = inner.overrides.clone();
        let rules = &mut candidate.routes.entry(route.to_string()).or_default().rules;
        match rules.iter_mut().find(|r| r.name.as_deref() == Some(name)) {
            Some(existing) => *existing = raw,
            None => rules.push(raw),
        }
        self.apply_overrides(&mut inner, candidate)
    }

    /// `DELETE /api/v1/routes/{route}/rules/{name}`.
    pub fn delete_rule(&self, route: &str, name: &str) -> Result<u64, ApiError> {
        let mut inner = self.lock();
        Self::file_route(&inner, route)?;
        let mut candidate = inner.overrides.clone();
        let removed = candidate.routes.get_mut(route).is_some_and(|o| {
            let before = o.rules.len();
            o.rules.retain(|r| r.name.as_deref() != Some(name));
            o.rules.len() != before
        });
        if !removed {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("route `{route}` has no runtime rule named `{name}`"),
            ));
        }
        candidate.routes.retain(|_, o| !o.is_empty());
        self.apply_overrides(&mut inner, candidate)
    }

    /// `DELETE /api/v1/routes/{route}/overrides`: back to the file's weights and rules.
    pub fn clear_overrides(&self, route: &str) -> Result<u64, ApiError> {
        let mut inner = self.lock();
        Self::file_route(&inner, route)?;
        let mut candidate = inner.overrides.clone();
        candidate.routes.remove(route);
        self.apply_overrides(&mut inner, candidate)
    }

    /// `GET /api/v1/routes[/{route}]`: the effective config with the source of each value.
    pub fn routes_json(&self, only: Option<&str>) -> Result<Value, ApiError> {
        let inner = self.lock();
        let snap = self.state.snapshot();
        let mut routes = Vec::new();
        for rc in &snap.config.routes {
            if only.is_some_and(|o| o != rc.name) {
                continue;
            }
            let ov = inner.overrides.routes.get(&rc.name);
            let file = inner.file.routes.iter().find(|r| r.name == rc.name);
            routes.push(route_json(rc, ov, file));
        }
        match only {
            Some(name) if routes.is_empty() => Err(ApiError::unknown_route(name)),
            Some(_) => {
                let mut r = routes.pop().unwrap_or(Value::Null);
                r["generation"] = json!(snap.generation);
                Ok(r)
            }
            None => Ok(json!({ "generation": snap.generation, "routes": routes })),
        }
    }
}

impl Control {
    /// `GET /api/v1/routes/{route}/analysis?window=60s&min_requests=50`.
    pub fn analysis_json(&self, route: &str, query: Option<&str>) -> Result<Value, ApiError> {
        let snap = self.state.snapshot();
        let ri = snap
            .router
            .routes
            .iter()
            .position(|r| r.name() == route)
            .ok_or_else(|| ApiError::unknown_route(route))?;
        let mut window = std::time::Duration::from_secs(60);
        let mut settings = snap.config.analysis.clone();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "window" => {
                    window = humantime::parse_duration(v)
                        .ok()
                        .filter(|d| *d >= analysis::SLOT && *d <= analysis::MAX_WINDOW)
                        .ok_or_else(|| {
                            ApiError::bad_field(
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
                    settings.min_requests = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        ApiError::bad_field(
                            "min_requests",
                            format!("`{v}` must be a whole number above 0"),
                        )
                    })?;
                }
                other => {
                    return Err(ApiError::bad_field(
                        other.to_string(),
                        "unknown query parameter; use window and min_requests",
                    ));
                }
            }
        }
        let now = std::time::Instant::now();
        let route_cfg = &snap.router.routes[ri].config;
        let inputs: Vec<analysis::VersionInput<'_>> = route_cfg
            .versions
            .iter()
            .zip(&snap.routes[ri].versions)
            .map(|(v, rt)| analysis::VersionInput {
                name: &v.name,
                summary: rt.metrics.window.summary(now, window),
            })
            .collect();
        Ok(json!(analysis::analyse(
            route,
            snap.generation,
            window,
            &settings,
            &inputs,
        )))
    }
}

fn trigger_name(t: Trigger) -> &'static str {
    match t {
        Trigger::Watch => "watch",
        Trigger::Periodic => "periodic",
        Trigger::Signal => "signal",
        Trigger::Api => "api",
    }
}

/// File config + overrides → the config to run. Overrides naming a route or version that no
/// longer exists are dropped from `ov` (with a warning); anything else invalid is an error.
fn compose(file: &Config, ov: &mut Overrides) -> Result<Config, ConfigError> {
    let mut cfg = file.clone();
    ov.routes.retain(|name, _| {
        let keep = cfg.routes.iter().any(|r| &r.name == name);
        if !keep {
            tracing::warn!(route = %name, "route is gone from the config; dropping its runtime overrides");
        }
        keep
    });
    let mut errors = Vec::new();
    for (ri, route) in cfg.routes.iter_mut().enumerate() {
        let Some(o) = ov.routes.get_mut(&route.name) else {
            continue;
        };
        o.weights.retain(|v, _| {
            let keep = route.versions.iter().skip(1).any(|x| &x.name == v);
            if !keep {
                tracing::warn!(route = %route.name, version = %v, "version is gone or now primary; dropping its weight override");
            }
            keep
        });
        for (v, w) in &o.weights {
            if let Some(x) = route.versions.iter_mut().find(|x| &x.name == v) {
                x.weight = *w;
            }
        }
        if let Err(total) = crate::config::primary_takes_the_rest(&mut route.versions) {
            errors.push(FieldError {
                field: format!("routes[{ri}].versions"),
                message: format!(
                    "with the runtime weight overrides of route `{}` the non-primary weights sum to {total}%, more than 100%",
                    route.name,
                ),
            });
        }
        let mut runtime_rules = Vec::new();
        o.rules.retain(|raw| {
            let mut e = Errors::default();
            let field = format!("overrides.{}.rules.{}", route.name, raw.name.as_deref().unwrap_or("?"));
            match validate_rule(raw, &route.versions, &field, &mut e) {
                Some(r) => {
                    runtime_rules.push(r);
                    true
                }
                None => {
                    tracing::warn!(route = %route.name, "dropping runtime rule that no longer fits: {}", ConfigError { errors: e.0 });
                    false
                }
            }
        });
        runtime_rules.append(&mut route.rules);
        route.rules = runtime_rules;
    }
    ov.routes.retain(|_, o| !o.is_empty());
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError { errors })
    }
}

fn route_json(rc: &RouteConfig, ov: Option<&RouteOverrides>, file: Option<&RouteConfig>) -> Value {
    let weight_overridden = |name: &str| ov.is_some_and(|o| o.weights.contains_key(name));
    let any_weight_override = ov.is_some_and(|o| !o.weights.is_empty());
    let versions: Vec<Value> = rc
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let source = if (i == 0 && any_weight_override) || weight_overridden(&v.name) {
                "override"
            } else {
                "file"
            };
            let file_weight = file
                .and_then(|f| f.versions.iter().find(|x| x.name == v.name))
                .map(|x| x.weight.percent());
            json!({
                "name": v.name,
                "primary": i == 0,
                "endpoints": v.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                "weight": v.weight.percent(),
                "weight_source": source,
                "file_weight": file_weight,
            })
        })
        .collect();
    let n_runtime = ov.map_or(0, |o| o.rules.len());
    let rules: Vec<Value> = rc
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "index": i,
                "name": r.name,
                "to": rc.versions[r.to].name,
                "when": r.conditions,
                "source": if i < n_runtime { "override" } else { "file" },
            })
        })
        .collect();
    let sticky = rc.sticky.as_ref().map(|s| {
        let key = match &s.key {
            StickyKey::Cookie(c) => json!({ "cookie": c }),
            StickyKey::Header(h) => json!({ "header": h.as_str() }),
        };
        json!({ "key": key, "assign_cookie": s.assign_cookie })
    });
    json!({
        "name": rc.name,
        "match": {
            "host": rc.host.as_ref().map(|h| h.to_string()),
            "path_prefix": rc.path_prefix,
        },
        "versions": versions,
        "rules": rules,
        "sticky": sticky,
        "timeouts": {
            "connect_ms": rc.timeouts.connect.as_millis() as u64,
            "response_ms": rc.timeouts.response.as_millis() as u64,
            "idle_ms": rc.timeouts.idle.as_millis() as u64,
        },
        "fallback": rc.fallback,
    })
}
