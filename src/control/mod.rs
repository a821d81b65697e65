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
//!
//! Every operation takes typed arguments and returns a typed result or a [`ControlError`]
//! saying what went wrong; reading requests, writing JSON and choosing status codes is the
//! admin API's business (`admin`).

pub mod watch;

use crate::analysis;
use crate::config::raw::{RawMirror, RawRule, RawWhen};
use crate::config::{
    Admin, Condition, Config, ConfigError, Errors, FieldError, Listener, RouteConfig, RuleConfig,
    StickyKey, Weight, validate_mirror, validate_rule,
};
use crate::metrics::ReloadResult;
use crate::state::{Snapshot, State};
use crate::tls::TlsListener;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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

/// What a rejected reload was reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Certificate,
    Config,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejected::Certificate => "certificate",
            Rejected::Config => "config",
        })
    }
}

/// Why a control operation changed nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlError {
    /// No route has this name.
    UnknownRoute(String),
    /// The route has no runtime rule of this name (file rules cannot be deleted).
    NoRuntimeRule { route: String, name: String },
    /// `DELETE` of a runtime mirror that does not exist.
    NoRuntimeMirror { route: String, name: String },
    /// A weight names a version the route does not have; `known` lists the ones it has.
    UnknownVersion {
        route: String,
        version: String,
        known: Vec<String>,
    },
    /// A weight for the primary, which always gets what the others leave.
    PrimaryWeight { version: String },
    /// A weight that is not a percentage from 0 to 100 with at most two decimals.
    BadWeight { version: String, reason: String },
    /// The rule, or the config composed with the change, is invalid: every field at fault.
    Invalid(ConfigError),
    /// A reload found errors; `generation` is the one still in force.
    ReloadRejected {
        what: Rejected,
        generation: u64,
        error: ConfigError,
    },
    /// canaryd was started without a config file (e.g. `canaryd demo`).
    NoConfigFile,
    /// A window range that cannot be served (empty, or older than what is kept).
    BadRange(String),
    /// A controller's layer that cannot be taken (own rollout block, stale revision).
    LayerRefused(String),
    /// No controller's layer on this route.
    NoLayer(String),
    /// The route is translated from a Kubernetes object (`source`): whatever edits that
    /// object (Flagger, Argo Rollouts, kubectl) owns its weights and matches.
    Owned { route: String, source: String },
}

impl ControlError {
    /// The fields at fault, each naming what was wrong; empty when no field is.
    pub fn fields(&self) -> Vec<FieldError> {
        let field = |field: &str, message: String| {
            vec![FieldError {
                field: field.to_string(),
                message,
            }]
        };
        match self {
            ControlError::UnknownRoute(_)
            | ControlError::NoRuntimeRule { .. }
            | ControlError::NoRuntimeMirror { .. }
            | ControlError::NoConfigFile => Vec::new(),
            ControlError::UnknownVersion {
                route,
                version,
                known,
            } => field(
                version,
                format!("unknown version; route `{route}` has: {}", known.join(", ")),
            ),
            ControlError::PrimaryWeight { version } => field(
                version,
                "is the primary version; it receives whatever the others leave, set the others"
                    .to_string(),
            ),
            ControlError::BadWeight { version, reason } => field(version, reason.clone()),
            ControlError::Invalid(e) | ControlError::ReloadRejected { error: e, .. } => {
                e.errors.clone()
            }
            ControlError::BadRange(m) => field("from", m.clone()),
            ControlError::LayerRefused(_)
            | ControlError::NoLayer(_)
            | ControlError::Owned { .. } => Vec::new(),
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::UnknownRoute(route) => write!(f, "no route named `{route}`"),
            ControlError::NoRuntimeRule { route, name } => {
                write!(f, "route `{route}` has no runtime rule named `{name}`")
            }
            ControlError::NoRuntimeMirror { route, name } => {
                write!(f, "route `{route}` has no runtime mirror named `{name}`")
            }
            ControlError::UnknownVersion { .. }
            | ControlError::PrimaryWeight { .. }
            | ControlError::BadWeight { .. }
            | ControlError::Invalid(_) => ConfigError {
                errors: self.fields(),
            }
            .fmt(f),
            ControlError::ReloadRejected { what, error, .. } => {
                write!(f, "{what} rejected, the running one is kept: {error}")
            }
            ControlError::NoConfigFile => {
                f.write_str("canaryd was started without a config file; nothing to reload")
            }
            ControlError::BadRange(m) => write!(f, "from: {m}"),
            ControlError::LayerRefused(m) => f.write_str(m),
            ControlError::NoLayer(route) => {
                write!(f, "route `{route}` has no rollout layer from a controller")
            }
            ControlError::Owned { route, source } => write!(
                f,
                "route `{route}` comes from {source}; change that object (its controller owns the route's weights and matches), not canaryd's runtime state"
            ),
        }
    }
}

impl std::error::Error for ControlError {}

/// A reload that went through: `{"result": "applied", "generation": 3}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reloaded {
    pub result: Change,
    /// The generation in force afterwards.
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Applied,
    /// The file is what was last applied.
    Unchanged,
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
    /// Named mirrors, in the order they were first put; checked before the file's `mirror`.
    mirrors: Vec<(String, RawMirror)>,
}

impl RouteOverrides {
    fn is_empty(&self) -> bool {
        self.weights.is_empty() && self.rules.is_empty() && self.mirrors.is_empty()
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
    /// Routes translated from Kubernetes objects (`canaryd run --kubernetes`), after the
    /// file's; the last good set.
    kube: Vec<RouteConfig>,
    /// `canaryd run --kubernetes`: the file may have no routes of its own.
    kube_mode: bool,
    /// Rollout layers by route: between the file and the runtime overrides.
    layers: BTreeMap<String, RolloutLayer>,
    overrides: Overrides,
    status: ReloadStatus,
}

/// What a rollout imposes on its route, between the file and the runtime overrides: weights
/// of non-primary versions and header routes. `DELETE .../overrides` leaves it alone. It comes
/// from this process's rollout engine, or from a fleet controller (`PUT .../rollout-layer`).
#[derive(Debug, Clone)]
pub struct RolloutLayer {
    /// Non-primary version name → weight; versions not named keep the file's weight.
    pub weights: BTreeMap<String, Weight>,
    /// Managed header routes (validated against the route, `to` resolved), evaluated after the
    /// runtime rules and before the file's.
    pub rules: Vec<RuleConfig>,
    /// Set by a fleet controller: what it pushed, read back to verify.
    /// Managed mirrors (`set_mirror_route`), checked before the file's `mirror`.
    pub mirrors: Vec<crate::config::MirrorConfig>,
    pub pushed: Option<PushedLayer>,
}

/// A layer as a fleet controller pushes it (`PUT /api/v1/routes/{r}/rollout-layer`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushedLayer {
    /// The rollout's id.
    pub id: String,
    /// Increases with every change the controller makes; an older one is refused.
    pub revision: u64,
    /// The step the fleet is at (for people and the readback).
    pub step: usize,
    /// Non-primary version → percent.
    pub weights: BTreeMap<String, f64>,
    /// Header routes: `{name, to, when}` with `when` as in the config file (kept as sent, for
    /// the readback).
    #[serde(default)]
    pub rules: Vec<serde_json::Value>,
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
                kube: Vec::new(),
                kube_mode: false,
                layers: BTreeMap::new(),
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
        let mut config = match Config::from_yaml_with(text, inner.kube_mode) {
            Ok(c) => c,
            Err(e) => return self.fail(&mut inner, trigger, e),
        };
        if config.controller.is_some() != inner.file.controller.is_some() {
            let message = if config.controller.is_some() {
                "a reload cannot turn this proxy into a fleet controller; run the file with `canaryd controller --config FILE`"
            } else {
                "a fleet controller's file must keep its `controller:` section; a replica's config runs with `canaryd run`"
            };
            let e = ConfigError {
                errors: vec![FieldError {
                    field: "controller".into(),
                    message: message.into(),
                }],
            };
            return self.fail(&mut inner, trigger, e);
        }
        if StartupOnly::of(&config) != inner.startup {
            let msg = "listeners, admin, or proxy max_connections/header_timeout/drain_timeout/idle_timeout changed; restart canaryd to apply them (the running ones are kept)".to_string();
            tracing::warn!(trigger = trigger_name(trigger), "{msg}");
            inner.status.needs_restart = Some(msg);
            inner.startup.pin(&mut config);
        } else {
            inner.status.needs_restart = None;
        }
        let mut overrides = inner.overrides.clone();
        let composed = match compose(&config, &inner.kube, &inner.layers, &mut overrides) {
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
        candidate: Overrides,
    ) -> Result<u64, ControlError> {
        let layers = inner.layers.clone();
        let generation = self.apply_candidate(inner, layers, candidate)?;
        tracing::info!(generation, "runtime override applied");
        Ok(generation)
    }

    /// Compose the file config with candidate rollout layers and overrides and apply; only
    /// then are they kept. On error nothing changes.
    fn apply_candidate(
        &self,
        inner: &mut Inner,
        layers: BTreeMap<String, RolloutLayer>,
        mut overrides: Overrides,
    ) -> Result<u64, ControlError> {
        let composed = compose(&inner.file, &inner.kube, &layers, &mut overrides)
            .map_err(ControlError::Invalid)?;
        let generation = self.state.apply(composed).map_err(ControlError::Invalid)?;
        inner.layers = layers;
        inner.overrides = overrides;
        Ok(generation)
    }

    /// Put (or with `None` remove) `route`'s layer, under the lock the caller holds.
    fn put_layer(
        &self,
        inner: &mut Inner,
        route: &str,
        layer: Option<RolloutLayer>,
    ) -> Result<u64, ControlError> {
        let mut layers = inner.layers.clone();
        match layer {
            Some(l) => layers.insert(route.to_string(), l),
            None => layers.remove(route),
        };
        let overrides = inner.overrides.clone();
        self.apply_candidate(inner, layers, overrides)
    }

    fn file_route<'a>(inner: &'a Inner, route: &str) -> Result<&'a RouteConfig, ControlError> {
        if let Some(k) = inner.kube.iter().find(|r| r.name == route) {
            return Err(ControlError::Owned {
                route: route.to_string(),
                source: k
                    .kube
                    .as_ref()
                    .map_or_else(String::new, |k| k.source.clone()),
            });
        }
        inner
            .file
            .routes
            .iter()
            .find(|r| r.name == route)
            .ok_or_else(|| ControlError::UnknownRoute(route.to_string()))
    }

    /// Fails with [`ControlError::UnknownRoute`] for a route the config does not have. The
    /// admin API checks this before reading a request's body or query, so an unknown route
    /// is reported before bad input.
    pub fn check_route(&self, route: &str) -> Result<(), ControlError> {
        let inner = self.lock();
        if inner.kube.iter().any(|r| r.name == route) {
            return Ok(());
        }
        Self::file_route(&inner, route).map(|_| ())
    }

    /// [`Control::check_route`] for a change: also fails with [`ControlError::Owned`] for a
    /// route translated from a Kubernetes object.
    pub fn check_writable(&self, route: &str) -> Result<(), ControlError> {
        Self::file_route(&self.lock(), route).map(|_| ())
    }

    /// Routes come from Kubernetes too: a reloaded file may have none of its own.
    pub fn set_kube_mode(&self) {
        self.lock().kube_mode = true;
        self.state.wait_for_kubernetes();
    }

    /// Replace the routes translated from Kubernetes objects and apply. On error (a set that
    /// does not compose with the file) nothing changes: the last good set keeps serving.
    pub fn set_kube_routes(&self, routes: Vec<RouteConfig>) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        let mut overrides = inner.overrides.clone();
        let composed = compose(&inner.file, &routes, &inner.layers, &mut overrides)
            .map_err(ControlError::Invalid)?;
        let generation = self.state.apply(composed).map_err(ControlError::Invalid)?;
        inner.kube = routes;
        inner.overrides = overrides;
        self.state.kubernetes_synced();
        Ok(generation)
    }

    /// The file's routes as last loaded (what Kubernetes routes must not collide with).
    pub fn file_routes(&self) -> Vec<RouteConfig> {
        self.lock().file.routes.clone()
    }

    /// Set non-primary weights at runtime; the primary gets the rest. Entries are checked in
    /// name order, each version name before its value, and `percent` reads a value (the
    /// admin API passes its JSON number reader), so the problem reported first does not
    /// depend on how the caller encodes weights. No weights change nothing.
    pub fn set_weights<V>(
        &self,
        route: &str,
        weights: &BTreeMap<String, V>,
        percent: impl Fn(&V) -> Result<f64, String>,
    ) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        let rc = Self::file_route(&inner, route)?;
        let checked = runtime_weights(rc, weights, percent)?;
        if checked.is_empty() {
            return Ok(self.state.snapshot().generation);
        }
        let mut candidate = inner.overrides.clone();
        candidate
            .routes
            .entry(route.to_string())
            .or_default()
            .weights
            .extend(checked);
        self.apply_overrides(&mut inner, candidate)
    }

    /// Add or replace the runtime rule `name`: route to `to` when every condition in `when`
    /// holds. Runtime rules are evaluated before the file's.
    pub fn put_rule(
        &self,
        route: &str,
        name: &str,
        to: String,
        when: RawWhen,
    ) -> Result<u64, ControlError> {
        let raw = RawRule {
            name: Some(name.to_string()),
            to,
            when,
        };
        self.change_route_overrides(route, |rc, o| {
            let mut errs = Errors::default();
            if validate_rule(&raw, &rc.versions, "rule", &mut errs).is_none() {
                return Err(ControlError::Invalid(ConfigError { errors: errs.0 }));
            }
            match o.rules.iter_mut().find(|r| r.name.as_deref() == Some(name)) {
                Some(existing) => *existing = raw,
                None => o.rules.push(raw),
            }
            Ok(())
        })
    }

    /// `PUT /api/v1/routes/{route}/mirrors/{name}`: copy the route's requests (those matching
    /// `when`) to a shadow version; checked before the file's `mirror`.
    pub fn put_mirror(&self, route: &str, name: &str, raw: RawMirror) -> Result<u64, ControlError> {
        self.change_route_overrides(route, |rc, o| {
            let mut errs = Errors::default();
            if validate_mirror(&raw, Some(name), &rc.versions, "mirror", &mut errs).is_none() {
                return Err(ControlError::Invalid(ConfigError { errors: errs.0 }));
            }
            match o.mirrors.iter_mut().find(|(n, _)| n == name) {
                Some(existing) => existing.1 = raw,
                None => o.mirrors.push((name.to_string(), raw)),
            }
            Ok(())
        })
    }

    /// `DELETE /api/v1/routes/{route}/mirrors/{name}`.
    pub fn delete_mirror(&self, route: &str, name: &str) -> Result<u64, ControlError> {
        self.change_route_overrides(route, |_, o| {
            let i = o
                .mirrors
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| ControlError::NoRuntimeMirror {
                    route: route.to_string(),
                    name: name.to_string(),
                })?;
            o.mirrors.remove(i);
            Ok(())
        })
    }

    /// `GET /api/v1/routes/{route}/mirror/diffs`: the last differing pairs of the shadow
    /// comparison, newest first, and the counts so far.
    pub fn mirror_diffs(&self, route: &str) -> Result<MirrorDiffs, ControlError> {
        let snap = self.state.snapshot();
        let rt = snap
            .route(route)
            .ok_or_else(|| ControlError::UnknownRoute(route.to_string()))?;
        let diffs = self
            .state
            .mirror(&rt.route.config.name)
            .map(|m| m.diffs())
            .unwrap_or_default();
        let w = self.state.metrics.mirror.diff_window(route);
        let s = w.summary(Instant::now(), analysis::MAX_WINDOW);
        Ok(MirrorDiffs {
            route: route.to_string(),
            compared_last_window: s.requests,
            differing_last_window: s.errors,
            window_seconds: analysis::MAX_WINDOW.as_secs(),
            diff_rate: (s.requests > 0).then(|| s.errors as f64 / s.requests as f64),
            diffs,
        })
    }

    /// Remove the runtime rule `name`.
    pub fn delete_rule(&self, route: &str, name: &str) -> Result<u64, ControlError> {
        self.change_route_overrides(route, |_, o| {
            let before = o.rules.len();
            o.rules.retain(|r| r.name.as_deref() != Some(name));
            if o.rules.len() == before {
                return Err(ControlError::NoRuntimeRule {
                    route: route.to_string(),
                    name: name.to_string(),
                });
            }
            Ok(())
        })
    }

    /// One change to `route`'s runtime overrides, made by `change` on a copy (given the
    /// file's route to check against) and applied under one lock; on error nothing changes.
    fn change_route_overrides(
        &self,
        route: &str,
        change: impl FnOnce(&RouteConfig, &mut RouteOverrides) -> Result<(), ControlError>,
    ) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        let mut candidate = inner.overrides.clone();
        let rc = Self::file_route(&inner, route)?;
        change(rc, candidate.routes.entry(route.to_string()).or_default())?;
        candidate.routes.retain(|_, o| !o.is_empty());
        self.apply_overrides(&mut inner, candidate)
    }

    /// Drop every runtime override of the route: back to the file's weights and rules.
    pub fn clear_overrides(&self, route: &str) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        Self::file_route(&inner, route)?;
        let mut candidate = inner.overrides.clone();
        candidate.routes.remove(route);
        self.apply_overrides(&mut inner, candidate)
    }

    /// Every route as it runs, with the source of each value.
    /// Put (or with `None` remove) the rollout layer of `route` and apply; on error nothing
    /// changes. Runtime overrides stay on top.
    pub fn set_layer(&self, route: &str, layer: Option<RolloutLayer>) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        self.put_layer(&mut inner, route, layer)
    }

    /// `PUT /api/v1/routes/{route}/rollout-layer`: a fleet controller's layer. Refused for a
    /// route with its own `rollout` block, for an older revision of the same rollout, and for
    /// weights or rules that do not fit the route. The same revision again changes nothing.
    pub fn push_layer(&self, route: &str, pushed: PushedLayer) -> Result<u64, ControlError> {
        // One lock from the revision check to the apply: two pushes cannot interleave.
        let mut inner = self.lock();
        let layer = {
            let rc = Self::file_route(&inner, route)?;
            if rc.rollout.is_some() {
                return Err(ControlError::LayerRefused(format!(
                    "route `{route}` runs its own rollout block; a controller's layer would fight it"
                )));
            }
            if let Some(current) = inner.layers.get(route).and_then(|l| l.pushed.as_ref()) {
                if current.id == pushed.id && current.revision > pushed.revision {
                    return Err(ControlError::LayerRefused(format!(
                        "revision {} of rollout `{}` is older than the {} in force",
                        pushed.revision, pushed.id, current.revision
                    )));
                }
                if *current == pushed {
                    return Ok(self.state.snapshot().generation);
                }
            }
            let weights = runtime_weights(rc, &pushed.weights, |p| Ok(*p))?;
            let mut errs = Errors::default();
            let mut rules = Vec::new();
            for (i, r) in pushed.rules.iter().enumerate() {
                let field = format!("rules[{i}]");
                match serde_json::from_value::<RawRule>(r.clone()) {
                    Ok(raw) => {
                        if let Some(rule) = validate_rule(&raw, &rc.versions, &field, &mut errs) {
                            rules.push(rule);
                        }
                    }
                    Err(e) => errs.push(
                        field,
                        format!("must be a rule like {{\"name\", \"to\", \"when\"}} ({e})"),
                    ),
                }
            }
            if !errs.0.is_empty() {
                return Err(ControlError::Invalid(ConfigError { errors: errs.0 }));
            }
            RolloutLayer {
                weights,
                rules,
                mirrors: Vec::new(),
                pushed: Some(pushed),
            }
        };
        self.put_layer(&mut inner, route, Some(layer))
    }

    /// `GET /api/v1/routes/{route}/rollout-layer`: what a controller pushed, with the weights
    /// in force now (Argo's VerifyWeight reads these).
    pub fn pushed_layer(&self, route: &str) -> Result<PushedLayerView, ControlError> {
        let inner = self.lock();
        Self::file_route(&inner, route)?;
        let pushed = inner
            .layers
            .get(route)
            .and_then(|l| l.pushed.clone())
            .ok_or_else(|| ControlError::NoLayer(route.to_string()))?;
        let snap = self.state.snapshot();
        let effective = snap
            .config
            .routes
            .iter()
            .find(|r| r.name == route)
            .map(|r| {
                r.versions
                    .iter()
                    .map(|v| (v.name.clone(), v.weight.percent()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(PushedLayerView {
            layer: pushed,
            effective_weights: effective,
            generation: snap.generation,
        })
    }

    /// `DELETE /api/v1/routes/{route}/rollout-layer`: the controller let go of the route.
    pub fn drop_pushed_layer(&self, route: &str) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        Self::file_route(&inner, route)?;
        if inner.layers.get(route).is_none_or(|l| l.pushed.is_none()) {
            return Err(ControlError::NoLayer(route.to_string()));
        }
        self.put_layer(&mut inner, route, None)
    }

    /// Remove `route`'s runtime weight overrides (a rollout resumed after a forced weight takes
    /// its weights back); its runtime rules stay.
    pub fn clear_weight_overrides(&self, route: &str) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        let mut candidate = inner.overrides.clone();
        if let Some(o) = candidate.routes.get_mut(route) {
            o.weights.clear();
        }
        candidate.routes.retain(|_, o| !o.is_empty());
        self.apply_overrides(&mut inner, candidate)
    }

    pub fn routes(&self) -> RoutesView {
        let inner = self.lock();
        let snap = self.state.snapshot();
        RoutesView {
            generation: snap.generation,
            routes: snap
                .config
                .routes
                .iter()
                .map(|rc| route_view(&inner, rc))
                .collect(),
        }
    }

    /// One route as it runs, with the source of each value.
    pub fn route(&self, name: &str) -> Result<RouteAt, ControlError> {
        let inner = self.lock();
        let snap = self.state.snapshot();
        let rc = snap
            .config
            .routes
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ControlError::UnknownRoute(name.to_string()))?;
        Ok(RouteAt {
            route: route_view(&inner, rc),
            generation: snap.generation,
        })
    }

    /// Canary analysis of the route over the last `window` (from [`analysis::SLOT`] to
    /// [`analysis::MAX_WINDOW`]; the admin API checks), with the config's `min_requests`
    /// unless one is given.
    pub fn analysis(
        &self,
        route: &str,
        window: Duration,
        min_requests: Option<u64>,
        source: crate::config::GateSource,
    ) -> Result<analysis::Report, ControlError> {
        let snap = self.state.snapshot();
        let inputs = version_windows(&snap, &self.state.metrics, route, window, source)
            .ok_or_else(|| ControlError::UnknownRoute(route.to_string()))?;
        let mut settings = snap.config.analysis.clone();
        if let Some(n) = min_requests {
            settings.min_requests = n;
        }
        Ok(analysis::analyse(
            route,
            snap.generation,
            window,
            &settings,
            &inputs,
        ))
    }

    /// `GET /api/v1/routes/{route}/window?from=&to=`: each version's raw counts and latency
    /// buckets for the slots that start in the Unix-time range `[from, to)`, for a fleet
    /// controller to sum across replicas.
    pub fn window(&self, route: &str, from: u64, to: u64) -> Result<WindowView, ControlError> {
        let snap = self.state.snapshot();
        let rt = snap
            .route(route)
            .ok_or_else(|| ControlError::UnknownRoute(route.to_string()))?;
        let versions = version_ranges(rt, from, to)
            .map_err(ControlError::BadRange)?
            .into_iter()
            .map(|(name, s)| VersionWindow {
                name,
                requests: s.requests,
                errors_5xx: s.errors,
                max_us: s.max_us(),
                latency_counts: s.latency_counts().to_vec(),
            })
            .collect();
        Ok(WindowView {
            route: route.to_string(),
            generation: snap.generation,
            from,
            to,
            slot_seconds: analysis::SLOT.as_secs(),
            latency_bounds_us: analysis::Summary::bounds_us().to_vec(),
            versions,
        })
    }

    /// Re-read the TLS certificates, then the config file; `force` as in [`Control::reload`]
    /// is on, so a file whose last attempt failed is tried again. A rejected certificate
    /// stops before the config file is read.
    pub fn reload_all(&self, trigger: Trigger) -> Result<Reloaded, ControlError> {
        let rejected = |what, error| ControlError::ReloadRejected {
            what,
            generation: self.state.snapshot().generation,
            error,
        };
        self.reload_certs(trigger)
            .map_err(|e| rejected(Rejected::Certificate, e))?;
        match self.reload(trigger, true) {
            ReloadOutcome::Applied { generation } => Ok(Reloaded {
                result: Change::Applied,
                generation,
            }),
            ReloadOutcome::Unchanged { generation } => Ok(Reloaded {
                result: Change::Unchanged,
                generation,
            }),
            ReloadOutcome::Failed(e) => Err(rejected(Rejected::Config, e)),
            ReloadOutcome::NoFile => Err(ControlError::NoConfigFile),
        }
    }
}

/// Each version's window summary, primary first; `None` for an unknown route. The only
/// place the analysis reads the snapshot's layout.
/// Each version's window; with `source: mirror`, the non-primary versions' mirror windows
/// (the primary's traffic is always live).
/// Each version's totals (config order) over the wall-clock slots that start in `[from, to)`,
/// or why they cannot be told (see [`analysis::Window::range`]).
pub(crate) fn version_ranges(
    rt: &crate::state::RouteRt,
    from: u64,
    to: u64,
) -> Result<Vec<(String, analysis::Summary)>, String> {
    let now = Instant::now();
    rt.versions
        .iter()
        .map(|v| Ok((v.name.clone(), v.metrics.window.range(from, to, now)?)))
        .collect()
}

pub(crate) fn version_windows<'s>(
    snap: &'s Snapshot,
    metrics: &crate::metrics::Metrics,
    route: &str,
    window: Duration,
    source: crate::config::GateSource,
) -> Option<Vec<analysis::VersionInput<'s>>> {
    let now = Instant::now();
    Some(
        snap.route(route)?
            .versions
            .iter()
            .map(|v| analysis::VersionInput {
                name: &v.name,
                summary: match source {
                    crate::config::GateSource::Mirror if !v.primary => {
                        metrics.mirror.window(route, &v.name).summary(now, window)
                    }
                    _ => v.metrics.window.summary(now, window),
                },
            })
            .collect(),
    )
}

fn trigger_name(t: Trigger) -> &'static str {
    match t {
        Trigger::Watch => "watch",
        Trigger::Periodic => "periodic",
        Trigger::Signal => "signal",
        Trigger::Api => "api",
    }
}

/// File config + rollout layers + overrides → the config to run. Overrides naming a route or
/// version that no longer exists are dropped from `ov` (with a warning); a layer whose route or
/// canary is gone does nothing; anything else invalid is an error.
fn compose(
    file: &Config,
    kube: &[RouteConfig],
    layers: &BTreeMap<String, RolloutLayer>,
    ov: &mut Overrides,
) -> Result<Config, ConfigError> {
    let mut cfg = file.clone();
    for k in kube {
        if cfg.routes.iter().any(|r| r.name == k.name) {
            tracing::warn!(route = %k.name, "the config file has a route of this name; it wins over the Kubernetes one");
        } else {
            cfg.routes.push(k.clone());
        }
    }
    for route in cfg.routes.iter_mut() {
        if let Some(l) = layers.get(&route.name) {
            apply_layer(route, l);
        }
    }
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
            if let Err(total) = crate::config::primary_takes_the_rest(&mut route.versions) {
                errors.push(too_heavy(ri, &route.name, total, "rollout"));
            }
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
            errors.push(too_heavy(
                ri,
                &route.name,
                total,
                "runtime weight overrides",
            ));
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
        let mut runtime_mirrors = Vec::new();
        o.mirrors.retain(|(name, raw)| {
            let mut e = Errors::default();
            let field = format!("overrides.{}.mirrors.{name}", route.name);
            match validate_mirror(raw, Some(name), &route.versions, &field, &mut e) {
                Some(m) => {
                    runtime_mirrors.push(m);
                    true
                }
                None => {
                    tracing::warn!(route = %route.name, "dropping runtime mirror that no longer fits: {}", ConfigError { errors: e.0 });
                    false
                }
            }
        });
        runtime_mirrors.append(&mut route.mirrors);
        route.mirrors = runtime_mirrors;
    }
    ov.routes.retain(|_, o| !o.is_empty());
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError { errors })
    }
}

/// Weights given at run time (the API's, a controller's) checked against route `rc`: each names
/// a non-primary version and is a percentage with the weights' resolution. Entries are checked
/// in name order, each version name before its value, and `percent` reads a value, so the
/// problem reported first does not depend on how the caller encodes weights.
fn runtime_weights<V>(
    rc: &RouteConfig,
    weights: &BTreeMap<String, V>,
    percent: impl Fn(&V) -> Result<f64, String>,
) -> Result<BTreeMap<String, Weight>, ControlError> {
    let mut checked = BTreeMap::new();
    for (version, value) in weights {
        match rc.versions.iter().position(|v| &v.name == version) {
            None => {
                return Err(ControlError::UnknownVersion {
                    route: rc.name.clone(),
                    version: version.clone(),
                    known: rc.versions.iter().map(|v| v.name.clone()).collect(),
                });
            }
            Some(0) => {
                return Err(ControlError::PrimaryWeight {
                    version: version.clone(),
                });
            }
            Some(_) => {}
        }
        let w = percent(value)
            .and_then(Weight::from_percent)
            .map_err(|reason| ControlError::BadWeight {
                version: version.clone(),
                reason,
            })?;
        checked.insert(version.clone(), w);
    }
    Ok(checked)
}

/// The weights and header routes of a rollout layer.
fn apply_layer(route: &mut RouteConfig, l: &RolloutLayer) {
    for v in route.versions.iter_mut().skip(1) {
        if let Some(w) = l.weights.get(&v.name) {
            v.weight = *w;
        }
    }
    let mut rules = l.rules.clone();
    rules.append(&mut route.rules);
    route.rules = rules;
    let mut mirrors = l.mirrors.clone();
    mirrors.append(&mut route.mirrors);
    route.mirrors = mirrors;
}

fn too_heavy(ri: usize, route: &str, total: Weight, with: &str) -> FieldError {
    FieldError {
        field: format!("routes[{ri}].versions"),
        message: format!(
            "with the {with} of route `{route}` the non-primary weights sum to {total}%, more than 100%",
        ),
    }
}

/// `GET /api/v1/routes/{route}/rollout-layer`.
#[derive(Debug, Clone, Serialize)]
pub struct PushedLayerView {
    #[serde(flatten)]
    pub layer: PushedLayer,
    /// Every version's weight in force now, percent (the primary's included).
    pub effective_weights: BTreeMap<String, f64>,
    pub generation: u64,
}

/// `GET /api/v1/routes/{route}/mirror/diffs`.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorDiffs {
    pub route: String,
    /// Pairs compared and pairs that differed over the last `window_seconds`.
    pub compared_last_window: u64,
    pub differing_last_window: u64,
    pub window_seconds: u64,
    pub diff_rate: Option<f64>,
    /// The last differing pairs, newest first.
    pub diffs: Vec<crate::mirror::compare::Diff>,
}

/// `GET /api/v1/routes/{route}/window`: raw per-version counts of a wall-clock range.
#[derive(Debug, Clone, Serialize)]
pub struct WindowView {
    pub route: String,
    pub generation: u64,
    pub from: u64,
    pub to: u64,
    /// Slots start at Unix-time multiples of this; the range covers the slots starting in it.
    pub slot_seconds: u64,
    /// Upper bounds of the latency buckets in µs; the last count is the overflow bucket.
    pub latency_bounds_us: Vec<u64>,
    /// In config order, the primary first.
    pub versions: Vec<VersionWindow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionWindow {
    pub name: String,
    pub requests: u64,
    pub errors_5xx: u64,
    pub max_us: u64,
    pub latency_counts: Vec<u64>,
}

/// `GET /api/v1/routes`: every route and the generation they are from.
#[derive(Debug, Clone, Serialize)]
pub struct RoutesView {
    pub generation: u64,
    pub routes: Vec<RouteView>,
}

/// `GET /api/v1/routes/{route}`: one route, plus the generation it is from.
#[derive(Debug, Clone, Serialize)]
pub struct RouteAt {
    #[serde(flatten)]
    pub route: RouteView,
    pub generation: u64,
}

/// A route as it runs: the file config with the runtime overrides on top.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: MatchView,
    pub versions: Vec<VersionView>,
    pub rules: Vec<RuleView>,
    pub sticky: Option<StickyView>,
    pub timeouts: TimeoutsView,
    pub fallback: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatchView {
    /// `None`: any host.
    pub host: Option<String>,
    pub path_prefix: String,
    /// For a route translated from a Kubernetes object, which one (its matches are that
    /// object's, not `host` and `path_prefix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    pub name: String,
    pub primary: bool,
    pub endpoints: Vec<String>,
    /// Effective weight, percent.
    pub weight: f64,
    pub weight_source: Source,
    /// The weight in the file, under any override.
    pub file_weight: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    /// Evaluation order: runtime rules first.
    pub index: usize,
    pub name: Option<String>,
    pub to: String,
    pub when: Vec<Condition>,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize)]
pub struct StickyView {
    pub key: StickyKeyView,
    pub assign_cookie: Option<String>,
}

/// `{"cookie": "session"}` or `{"header": "x-user-id"}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StickyKeyView {
    Cookie(String),
    Header(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeoutsView {
    pub connect_ms: u64,
    pub response_ms: u64,
    pub idle_ms: u64,
}

/// Where a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    File,
    /// A runtime override (admin API).
    Override,
    /// The route's rollout (its layer sits between the file and the overrides).
    Rollout,
}

/// The running route `rc` with the source of each value, from the overrides and the file.
fn route_view(inner: &Inner, rc: &RouteConfig) -> RouteView {
    let ov = inner.overrides.routes.get(&rc.name);
    let file = inner.file.routes.iter().find(|r| r.name == rc.name);
    let weight_overridden = |name: &str| ov.is_some_and(|o| o.weights.contains_key(name));
    let any_weight_override = ov.is_some_and(|o| !o.weights.is_empty());
    let layer = inner.layers.get(&rc.name);
    let by_layer =
        |i: usize, name: &str| layer.is_some_and(|l| i == 0 || l.weights.contains_key(name));
    let versions = rc
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| VersionView {
            name: v.name.clone(),
            primary: i == 0,
            endpoints: v.endpoints.iter().map(|e| e.to_string()).collect(),
            weight: v.weight.percent(),
            weight_source: if (i == 0 && any_weight_override) || weight_overridden(&v.name) {
                Source::Override
            } else if by_layer(i, &v.name) {
                Source::Rollout
            } else {
                Source::File
            },
            file_weight: file
                .and_then(|f| f.versions.iter().find(|x| x.name == v.name))
                .map(|x| x.weight.percent()),
        })
        .collect();
    let n_runtime = ov.map_or(0, |o| o.rules.len());
    let n_layer = layer.map_or(0, |l| l.rules.len());
    let rules = rc
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| RuleView {
            index: i,
            name: r.name.clone(),
            to: rc.versions[r.to].name.clone(),
            when: r.conditions.clone(),
            source: if i < n_runtime {
                Source::Override
            } else if i < n_runtime + n_layer {
                Source::Rollout
            } else {
                Source::File
            },
        })
        .collect();
    let sticky = rc.sticky.as_ref().map(|s| StickyView {
        key: match &s.key {
            StickyKey::Cookie(c) => StickyKeyView::Cookie(c.clone()),
            StickyKey::Header(h) => StickyKeyView::Header(h.as_str().to_string()),
        },
        assign_cookie: s.assign_cookie.clone(),
    });
    RouteView {
        name: rc.name.clone(),
        matches: MatchView {
            host: rc.host.as_ref().map(|h| h.to_string()),
            path_prefix: rc.path_prefix.clone(),
            kubernetes: rc.kube.as_ref().map(|k| k.source.clone()),
        },
        versions,
        rules,
        sticky,
        timeouts: TimeoutsView {
            connect_ms: rc.timeouts.connect.as_millis() as u64,
            response_ms: rc.timeouts.response.as_millis() as u64,
            idle_ms: rc.timeouts.idle.as_millis() as u64,
        },
        fallback: rc.fallback,
    }
}
