//! The fleet controller's target (`canaryd controller`): the rollout engine of
//! [`super::driver`] carried out on N canaryd replicas instead of this process's snapshot.
//!
//! - Evidence: every replica's raw counts and latency buckets for one wall-clock range
//!   (`GET /api/v1/routes/{r}/window?from=&to=`), summed, so the fleet's success rate and p99
//!   are what one big proxy would have measured. One replica that cannot be read makes the
//!   evidence unknown, never a pass.
//! - Layers: the rollout's layer is pushed to every replica (`PUT .../rollout-layer` with
//!   `{id, revision, step, weights, rules}`) and read back; a replica is *verified* when it
//!   holds that revision and its effective weights are the layer's (Argo's VerifyWeight).
//!   Every `interval` each replica is checked again, and a restarted or lagging one gets the
//!   layer again. A new layer (an abort too) is pushed to every replica at once, without
//!   waiting for the next interval or for any replica.
//! - Progress needs every current replica verified ([`Target::in_force`]); the ones that are
//!   not are named in the rollout's `fleet` status.
//! - A replica whose every route is verified is told so (`PUT /api/v1/synced`), for replicas
//!   that hold readiness until then (`proxy.wait_for_controller`).

use super::driver::{Applied, Boxed, Found, Target, Windows};
use super::http::call;
use super::machine::InForce;
use super::measure::now_ms;
use crate::analysis::Summary;
use crate::config::{GateSource, Targets};
use crate::control::{Control, PushedLayer};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Env var with the token sent to the replicas (else `controller.token`).
pub const TARGET_TOKEN_ENV: &str = "CANARYD_TARGET_TOKEN";

/// Longest wait for one replica's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A fleet of canaryd replicas, as the rollout engine's [`Target`].
pub struct Fleet {
    shared: Arc<Shared>,
}

struct Shared {
    control: Arc<Control>,
    inner: Mutex<Inner>,
    /// A layer changed: reconcile now.
    kick: Notify,
}

#[derive(Default)]
struct Inner {
    /// Every replica's admin base URL: the list, or the latest DNS answer.
    targets: Vec<String>,
    /// Why the targets could not be resolved the last time (the previous answer is kept).
    resolve_error: Option<String>,
    routes: BTreeMap<String, RouteFleet>,
    /// Layers the replicas held when the controller started, by route (highest revision).
    found: BTreeMap<String, PushedLayer>,
}

#[derive(Default)]
struct RouteFleet {
    /// What every replica must hold; `None`: no layer.
    desired: Option<PushedLayer>,
    /// By target.
    replicas: BTreeMap<String, Replica>,
    /// Requests over the last minute, by target, then version (for the actual share).
    requests: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Where the fleet stands on a route's current layer (`fleet` in the rollout's view).
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// The revision every replica must hold (`null`: no layer).
    pub revision: Option<u64>,
    /// Every current replica verified it: progress may go on.
    pub in_sync: bool,
    /// Each replica that holds progress, and why; a failed DNS answer; no replica at all.
    pub blocked_by: Vec<String>,
    pub replicas: Vec<Replica>,
}

/// Where one replica stands for one route.
#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    pub target: String,
    /// `verified`, `pushing`, `unreachable`, `missing_route`, `refused`, `unverified`.
    pub state: &'static str,
    /// The layer's revision it holds (`null`: none).
    pub revision: Option<u64>,
    pub step: Option<usize>,
    /// Every version's weight in force on it, percent.
    pub effective_weights: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Replica {
    /// Verified the layer every replica must hold now.
    fn holds(&self, desired: Option<&PushedLayer>) -> bool {
        self.state == "verified" && self.revision == desired.map(|d| d.revision)
    }

    fn new(target: &str, state: &'static str, message: Option<String>) -> Replica {
        Replica {
            target: target.to_string(),
            state,
            revision: None,
            step: None,
            effective_weights: BTreeMap::new(),
            message,
        }
    }
}

/// `GET .../rollout-layer` as a replica answers it.
#[derive(Debug, Clone, Deserialize)]
struct Readback {
    id: String,
    revision: u64,
    step: usize,
    weights: BTreeMap<String, f64>,
    #[serde(default)]
    rules: Vec<serde_json::Value>,
    effective_weights: BTreeMap<String, f64>,
}

impl Readback {
    fn layer(&self) -> PushedLayer {
        PushedLayer {
            id: self.id.clone(),
            revision: self.revision,
            step: self.step,
            weights: self.weights.clone(),
            rules: self.rules.clone(),
        }
    }

    /// Holds `d`, and its weights are in force (no override on the replica beats them).
    fn verifies(&self, d: &PushedLayer) -> bool {
        self.id == d.id
            && self.revision == d.revision
            && d.weights.iter().all(|(v, w)| {
                self.effective_weights
                    .get(v)
                    .is_some_and(|e| (e - w).abs() < 0.005)
            })
    }
}

impl Fleet {
    /// Resolve the replicas and read the layers they hold, so a controller that lost its state
    /// file resumes where the fleet is rather than at step 0.
    pub async fn connect(control: Arc<Control>) -> Fleet {
        let shared = Arc::new(Shared {
            control,
            inner: Mutex::new(Inner::default()),
            kick: Notify::new(),
        });
        shared.resolve().await;
        let routes: Vec<String> = shared
            .control
            .state()
            .snapshot()
            .config
            .routes
            .iter()
            .filter(|r| r.rollout.is_some())
            .map(|r| r.name.clone())
            .collect();
        let targets = shared.lock().targets.clone();
        let token = shared.token();
        // Every replica at once: an unreachable one costs one timeout, not one per replica.
        let mut set = tokio::task::JoinSet::new();
        for route in &routes {
            for t in &targets {
                let (t, route, token) = (t.clone(), route.clone(), token.clone());
                set.spawn(async move {
                    let held = read_layer(&t, &route, token.as_deref()).await;
                    (route, held)
                });
            }
        }
        let mut found: BTreeMap<String, PushedLayer> = BTreeMap::new();
        while let Some(Ok((route, held))) = set.join_next().await {
            if let Held::Layer(r) = held {
                if found.get(&route).is_none_or(|f| f.revision < r.revision) {
                    found.insert(route, r.layer());
                }
            }
        }
        shared.lock().found = found;
        Fleet { shared }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn token(&self) -> Option<String> {
        std::env::var(TARGET_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| {
                let snap = self.control.state().snapshot();
                let c = snap.config.controller.as_ref()?;
                c.token.as_ref().map(|t| t.0.clone())
            })
    }

    fn interval(&self) -> Duration {
        self.control
            .state()
            .snapshot()
            .config
            .controller
            .as_ref()
            .map(|c| c.interval)
            .unwrap_or(Duration::from_secs(1))
    }

    /// The targets of the config: the list as written, or every address the name resolves
    /// to now. A failed lookup keeps the previous answer and is reported.
    async fn resolve(&self) {
        let Some(targets) = self
            .control
            .state()
            .snapshot()
            .config
            .controller
            .as_ref()
            .map(|c| c.targets.clone())
        else {
            return;
        };
        let answer = match targets {
            Targets::List(uris) => Ok(uris
                .iter()
                .map(|u| u.to_string().trim_end_matches('/').to_string())
                .collect::<Vec<_>>()),
            Targets::Dns { host, port } => {
                match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(addrs) => {
                        let mut v: Vec<String> = addrs.map(|a| format!("http://{a}")).collect();
                        v.sort();
                        v.dedup();
                        Ok(v)
                    }
                    Err(e) => Err(format!("cannot resolve {host}:{port}: {e}")),
                }
            }
        };
        let mut inner = self.lock();
        match answer {
            Ok(t) => {
                inner.targets = t;
                inner.resolve_error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "fleet targets: keeping the previous answer");
                inner.resolve_error = Some(e);
            }
        }
    }

    /// Check every replica for every route once; push where a replica lags; tell the
    /// replicas whose every route is verified.
    async fn reconcile(self: &Arc<Self>) {
        self.resolve().await;
        let (targets, routes) = {
            let inner = self.lock();
            let routes: Vec<(String, Option<PushedLayer>)> = inner
                .routes
                .iter()
                .map(|(r, f)| (r.clone(), f.desired.clone()))
                .collect();
            (inner.targets.clone(), routes)
        };
        let token = self.token();
        let mut set = tokio::task::JoinSet::new();
        for t in &targets {
            let (t, routes, token, me) = (t.clone(), routes.clone(), token.clone(), self.clone());
            set.spawn(async move {
                let mut all = true;
                for (route, desired) in &routes {
                    let r = sync_one(&t, route, desired.as_ref(), token.as_deref()).await;
                    all &= r.state == "verified";
                    me.record(route, desired.as_ref(), r);
                    let requests = last_minute(&t, route, token.as_deref()).await;
                    if let Some(f) = me.lock().routes.get_mut(route) {
                        f.requests.insert(t.clone(), requests);
                    }
                }
                if all {
                    let url = format!("{t}/api/v1/synced");
                    if let Err(e) = call(Method::PUT, &url, None, token.as_deref(), CALL_TIMEOUT).await {
                        tracing::debug!(target = %t, error = %e, "could not mark the replica synced");
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        // Replicas gone from the answer are no longer waited for.
        let mut inner = self.lock();
        for f in inner.routes.values_mut() {
            f.replicas.retain(|t, _| targets.contains(t));
            f.requests.retain(|t, _| targets.contains(t));
        }
    }

    /// Push `route`'s layer to every replica now, each on its own (an abort waits for none).
    fn push_now(self: &Arc<Self>, route: &str) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // the next reconcile pushes it
        };
        let (targets, desired) = {
            let inner = self.lock();
            let desired = inner.routes.get(route).and_then(|f| f.desired.clone());
            (inner.targets.clone(), desired)
        };
        let token = self.token();
        for t in targets {
            let (route, desired, token, me) = (
                route.to_string(),
                desired.clone(),
                token.clone(),
                self.clone(),
            );
            handle.spawn(async move {
                let r = sync_one(&t, &route, desired.as_ref(), token.as_deref()).await;
                me.record(&route, desired.as_ref(), r);
            });
        }
    }

    /// Keep a replica's answer unless the layer changed since it was asked for.
    fn record(&self, route: &str, asked: Option<&PushedLayer>, r: Replica) {
        let mut inner = self.lock();
        let Some(f) = inner.routes.get_mut(route) else {
            return;
        };
        if f.desired.as_ref().map(|d| d.revision) == asked.map(|d| d.revision) {
            if r.state != "verified" {
                tracing::debug!(%route, target = %r.target, state = r.state, message = r.message.as_deref(), "replica not verified");
            }
            f.replicas.insert(r.target.clone(), r);
        }
    }

    async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(self.interval()) => {}
                _ = self.kick.notified() => {}
            }
        }
    }
}

/// What a replica holds for a route.
enum Held {
    Layer(Readback),
    Nothing,
    /// It has no such route.
    NoRoute(String),
    Unreachable(String),
    Refused(String),
}

async fn read_layer(target: &str, route: &str, token: Option<&str>) -> Held {
    let url = format!("{target}/api/v1/routes/{route}/rollout-layer");
    answer_of(call(Method::GET, &url, None, token, CALL_TIMEOUT).await)
}

fn answer_of(r: Result<(StatusCode, bytes::Bytes), String>) -> Held {
    match r {
        Err(e) => Held::Unreachable(e),
        Ok((StatusCode::OK, body)) => match serde_json::from_slice::<Readback>(&body) {
            Ok(l) => Held::Layer(l),
            Err(e) => Held::Refused(format!("unreadable rollout-layer answer: {e}")),
        },
        Ok((status, body)) => {
            let text = error_text(&body);
            if status == StatusCode::NOT_FOUND && text.contains("has no rollout layer") {
                Held::Nothing
            } else if status == StatusCode::NOT_FOUND {
                Held::NoRoute(text)
            } else {
                Held::Refused(format!("{status}: {text}"))
            }
        }
    }
}

/// The `error` of an admin API answer, or the body as text.
fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// Bring one replica's layer for `route` to `desired` and read it back.
async fn sync_one(
    target: &str,
    route: &str,
    desired: Option<&PushedLayer>,
    token: Option<&str>,
) -> Replica {
    let url = format!("{target}/api/v1/routes/{route}/rollout-layer");
    let held = read_layer(target, route, token).await;
    let held = match (held, desired) {
        (Held::Layer(r), Some(d)) if r.verifies(d) => Held::Layer(r),
        (Held::Layer(_) | Held::Nothing, Some(d)) => {
            let body = serde_json::to_vec(d).unwrap_or_default();
            answer_of(call(Method::PUT, &url, Some(body), token, CALL_TIMEOUT).await)
        }
        (Held::Layer(_), None) => {
            match call(Method::DELETE, &url, None, token, CALL_TIMEOUT).await {
                Ok((s, _)) if s.is_success() => Held::Nothing,
                other => answer_of(other),
            }
        }
        (other, _) => other,
    };
    match held {
        Held::Layer(r) => {
            let ok = desired.is_some_and(|d| r.verifies(d));
            let message = (!ok).then(|| match desired {
                Some(d) if r.revision == d.revision => format!(
                    "holds revision {} but its weights in force are {:?} (a runtime override?)",
                    r.revision, r.effective_weights
                ),
                _ => format!("holds revision {} of `{}`", r.revision, r.id),
            });
            Replica {
                target: target.to_string(),
                state: if ok { "verified" } else { "unverified" },
                revision: Some(r.revision),
                step: Some(r.step),
                effective_weights: r.effective_weights,
                message,
            }
        }
        Held::Nothing if desired.is_none() => Replica::new(target, "verified", None),
        Held::Nothing => Replica::new(target, "pushing", Some("holds no layer yet".to_string())),
        Held::NoRoute(m) => Replica::new(target, "missing_route", Some(m)),
        Held::Unreachable(m) => Replica::new(target, "unreachable", Some(m)),
        Held::Refused(m) => Replica::new(target, "refused", Some(m)),
    }
}

/// Requests per version on one replica over the last minute (for the actual share); empty
/// when it cannot tell.
async fn last_minute(target: &str, route: &str, token: Option<&str>) -> BTreeMap<String, u64> {
    let url = format!("{target}/api/v1/routes/{route}/analysis?window=60s");
    let Ok((StatusCode::OK, body)) = call(Method::GET, &url, None, token, CALL_TIMEOUT).await
    else {
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v["versions"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v["requests"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// One replica's window of `route` for `[from, to)`.
#[derive(Deserialize)]
struct WindowAnswer {
    versions: Vec<VersionAnswer>,
}

#[derive(Deserialize)]
struct VersionAnswer {
    name: String,
    requests: u64,
    errors_5xx: u64,
    max_us: u64,
    latency_counts: Vec<u64>,
}

async fn window_of(
    target: &str,
    route: &str,
    from: u64,
    to: u64,
    token: Option<&str>,
) -> Result<Vec<(String, Summary)>, String> {
    let url = format!("{target}/api/v1/routes/{route}/window?from={from}&to={to}");
    let (status, body) = call(Method::GET, &url, None, token, CALL_TIMEOUT)
        .await
        .map_err(|e| format!("replica {target} cannot be read: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!(
            "replica {target} has no window for [{from}, {to}): {status}: {}",
            error_text(&body)
        ));
    }
    let w: WindowAnswer = serde_json::from_slice(&body)
        .map_err(|e| format!("replica {target}: unreadable window: {e}"))?;
    w.versions
        .into_iter()
        .map(|v| {
            Summary::from_parts(v.requests, v.errors_5xx, v.max_us, &v.latency_counts)
                .map(|s| (v.name, s))
                .map_err(|e| format!("replica {target}: {e}"))
        })
        .collect()
}

impl Target for Fleet {
    fn windows(&self, route: &str, window: Duration, source: GateSource) -> Boxed<Windows> {
        if source == GateSource::Mirror {
            return Box::pin(std::future::ready(Err(
                "a gate with `source: mirror` reads a process's own mirror window; a fleet controller cannot sum those (yet): run it in the replica".to_string(),
            )));
        }
        let to = now_ms() / 1000;
        self.range(route, to.saturating_sub(window.as_secs().max(1)), to)
    }

    fn range(&self, route: &str, from: u64, to: u64) -> Boxed<Windows> {
        let (targets, resolve_error) = {
            let inner = self.shared.lock();
            (inner.targets.clone(), inner.resolve_error.clone())
        };
        let token = self.shared.token();
        let route = route.to_string();
        Box::pin(async move {
            if let Some(e) = resolve_error {
                return Err(e);
            }
            if targets.is_empty() {
                return Err("no replica to read".into());
            }
            let mut set = tokio::task::JoinSet::new();
            for t in targets {
                let (route, token) = (route.clone(), token.clone());
                set.spawn(async move { window_of(&t, &route, from, to, token.as_deref()).await });
            }
            // Summed in config order, as the replicas list them.
            let mut sum: Vec<(String, Summary)> = Vec::new();
            while let Some(r) = set.join_next().await {
                let versions = r.map_err(|e| e.to_string())??;
                for (name, s) in versions {
                    match sum.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, acc)) => acc.merge(&s),
                        None => sum.push((name, s)),
                    }
                }
            }
            Ok(sum)
        })
    }

    fn diffs(&self, _route: &str, _window: Duration) -> Option<Summary> {
        None
    }

    fn share(&self, route: &str, canary: &str) -> Option<f64> {
        let inner = self.shared.lock();
        let f = inner.routes.get(route)?;
        let counts = f.requests.values().flatten();
        super::driver::share_of(counts.map(|(v, n)| (v.as_str(), *n)), canary)
    }

    fn apply(&self, route: &str, layer: Option<Applied>) -> Result<(), String> {
        {
            let mut inner = self.shared.lock();
            let floor = inner.found.get(route).map_or(0, |f| f.revision);
            let f = inner.routes.entry(route.to_string()).or_default();
            let last = f.desired.as_ref().map_or(floor, |d| d.revision.max(floor));
            f.desired = layer.map(|a| PushedLayer {
                id: a.id,
                // Increases with every change, across restarts too (wall clock, and never below
                // what the replicas hold).
                revision: now_ms().max(last + 1),
                step: a.step,
                weights: a
                    .layer
                    .weights
                    .iter()
                    .map(|(v, w)| (v.clone(), w.percent()))
                    .collect(),
                rules: a.rules,
            });
            for r in f.replicas.values_mut() {
                r.state = "pushing";
            }
        }
        self.shared.push_now(route);
        self.shared.kick.notify_one();
        Ok(())
    }

    fn in_force(&self, route: &str) -> InForce {
        let inner = self.shared.lock();
        let Some(f) = inner.routes.get(route) else {
            return InForce::Verified(false);
        };
        let desired = f.desired.as_ref();
        InForce::Verified(
            inner.resolve_error.is_none()
                && !inner.targets.is_empty()
                && inner
                    .targets
                    .iter()
                    .all(|t| f.replicas.get(t).is_some_and(|r| r.holds(desired))),
        )
    }

    fn failures(&self, _route: &str, _version: &str) -> Vec<crate::analysis::FailureSample> {
        // A webhook judge of a fleet gets the numbers, not the replicas' failure samples.
        Vec::new()
    }

    fn found(&self, route: &str) -> Option<Found> {
        let inner = self.shared.lock();
        let l = inner.found.get(route)?;
        Some(Found {
            id: l.id.clone(),
            step: l.step,
            weights: l.weights.clone(),
            header_routes: l
                .rules
                .iter()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect(),
        })
    }

    fn status(&self, route: &str) -> Option<FleetStatus> {
        let inner = self.shared.lock();
        let f = inner.routes.get(route);
        let replicas: Vec<Replica> = inner
            .targets
            .iter()
            .map(|t| {
                f.and_then(|f| f.replicas.get(t))
                    .cloned()
                    .unwrap_or_else(|| {
                        Replica::new(t, "pushing", Some("not checked yet".to_string()))
                    })
            })
            .collect();
        let desired = f.and_then(|f| f.desired.as_ref());
        let mut blocked_by: Vec<String> = replicas
            .iter()
            .filter(|r| !r.holds(desired))
            .map(|r| {
                format!(
                    "{}: {}{}",
                    r.target,
                    r.state,
                    r.message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                )
            })
            .collect();
        if let Some(e) = &inner.resolve_error {
            blocked_by.push(e.clone());
        }
        if inner.targets.is_empty() {
            blocked_by.push("no replica found".to_string());
        }
        Some(FleetStatus {
            revision: desired.map(|d| d.revision),
            in_sync: blocked_by.is_empty(),
            blocked_by,
            replicas,
        })
    }

    fn background(&self, stop: tokio::sync::watch::Receiver<bool>) -> Option<Boxed<()>> {
        Some(Box::pin(self.shared.clone().run(stop)))
    }
}
