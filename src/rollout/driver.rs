//! The async driver of the rollouts of one process: it keeps one [`RolloutState`] per route
//! with a `rollout` block, feeds the pure machine ticks, measurement results and operators'
//! verbs, and carries out what comes back — measurements, the route's rollout layer (through
//! [`Control::set_layer`], the same path as runtime overrides, so every request sees one
//! generation), the state file, events and metrics.
//!
//! The route is read and acted on through [`Target`], so the fleet controller can drive remote
//! replicas with the same engine.

use super::fleet::FleetStatus;
use super::machine::{
    Action, Event, InForce, Layer, Measurement, Millis, Outcome, Phase, RolloutState, Transition,
    Verb,
};
use super::measure::{self, Evidence, now_ms};
use crate::analysis::Summary;
use crate::config::{GateSource, RolloutSpec, Step};
use crate::control::{Control, ControlError, RolloutLayer};
use bytes::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often rollouts are stepped (pause ends, due measurements).
pub const TICK: Duration = Duration::from_millis(200);

/// A future the engine can spawn or await.
pub type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Each version's totals, in config order (primary first), or why they cannot be told.
pub type Windows = Result<Vec<(String, Summary)>, String>;

/// A rollout's layer as the engine applies it.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The rollout's id and the step it is at (for a fleet's readback).
    pub id: String,
    pub step: usize,
    pub layer: RolloutLayer,
    /// The header routes as rules are written in a config file (`{name, to, when}`).
    pub rules: Vec<serde_json::Value>,
}

/// A rollout's layer found where the engine drives (a fleet's replicas) when it started.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub id: String,
    pub step: usize,
    /// Version → percent.
    pub weights: BTreeMap<String, f64>,
    /// Names of the header routes in force.
    pub header_routes: Vec<String>,
}

/// Where the engine reads a route's evidence and applies its layer: this process
/// ([`Local`]) or a fleet of replicas ([`super::fleet::Fleet`]).
pub trait Target: Send + Sync + 'static {
    /// Each version's totals over the last `window`. A fleet's are summed over every replica,
    /// and one replica that cannot be read makes them unknown (the measurement inconclusive).
    fn windows(&self, route: &str, window: Duration, source: GateSource) -> Boxed<Windows>;
    /// Each version's totals over the wall-clock slots in `[from, to)` (Unix seconds): the
    /// dashboard's series. A fleet's are summed over every replica.
    fn range(&self, route: &str, from: u64, to: u64) -> Boxed<Windows>;
    /// Shadow comparisons of `route` over the last `window` (requests = pairs compared,
    /// errors = pairs that differed); `None` where they cannot be read.
    fn diffs(&self, route: &str, window: Duration) -> Option<Summary>;
    /// The canary's share of the route's requests over the last minute, percent.
    fn share(&self, route: &str, canary: &str) -> Option<f64>;
    /// Put or remove the route's rollout layer.
    fn apply(&self, route: &str, layer: Option<Applied>) -> Result<(), String>;
    /// Is the layer last applied in force wherever it must be?
    fn in_force(&self, route: &str) -> InForce;
    /// The version's most recent upstream failures (for a webhook judge).
    fn failures(&self, route: &str, version: &str) -> Vec<crate::analysis::FailureSample>;
    /// The layer that was already in force for `route` when the engine started.
    fn found(&self, route: &str) -> Option<Found>;
    /// Where the layer stands on each replica (`fleet` in the rollout's view).
    fn status(&self, route: &str) -> Option<FleetStatus>;
    /// Work of its own the target runs beside the engine until `stop` (a fleet's reconcile).
    fn background(&self, stop: tokio::sync::watch::Receiver<bool>) -> Option<Boxed<()>>;
}

/// This process: its own snapshot and windows.
pub struct Local(pub Arc<Control>);

impl Local {
    /// Each version's window; with `source: mirror`, the non-primary versions' mirror windows.
    fn summaries(
        &self,
        route: &str,
        window: Duration,
        source: GateSource,
    ) -> Option<Vec<(String, Summary)>> {
        let snap = self.0.state().snapshot();
        let inputs =
            crate::control::version_windows(&snap, &self.0.state().metrics, route, window, source)?;
        Some(
            inputs
                .into_iter()
                .map(|v| (v.name.to_string(), v.summary))
                .collect(),
        )
    }
}

impl Target for Local {
    fn windows(&self, route: &str, window: Duration, source: GateSource) -> Boxed<Windows> {
        let w = self
            .summaries(route, window, source)
            .ok_or_else(|| format!("route `{route}` is gone"));
        Box::pin(std::future::ready(w))
    }

    fn range(&self, route: &str, from: u64, to: u64) -> Boxed<Windows> {
        let snap = self.0.state().snapshot();
        let w = match snap.route(route) {
            None => Err(format!("route `{route}` is gone")),
            Some(r) => crate::control::version_ranges(r, from, to),
        };
        Box::pin(std::future::ready(w))
    }

    fn diffs(&self, route: &str, window: Duration) -> Option<Summary> {
        let w = self.0.state().metrics.mirror.diff_window(route);
        Some(w.summary(Instant::now(), window))
    }

    fn share(&self, route: &str, canary: &str) -> Option<f64> {
        let w = self.summaries(route, Duration::from_secs(60), GateSource::Live)?;
        share_of(w.iter().map(|(n, s)| (n.as_str(), s.requests)), canary)
    }

    fn apply(&self, route: &str, layer: Option<Applied>) -> Result<(), String> {
        self.0
            .set_layer(route, layer.map(|a| a.layer))
            .map(|_| ())
            .map_err(|e: ControlError| e.to_string())
    }

    fn in_force(&self, _route: &str) -> InForce {
        InForce::Immediately
    }

    fn failures(&self, route: &str, version: &str) -> Vec<crate::analysis::FailureSample> {
        let snap = self.0.state().snapshot();
        snap.route(route)
            .and_then(|r| r.versions.iter().find(|v| v.name == version))
            .map(|v| v.metrics.window.recent_failures())
            .unwrap_or_default()
    }

    fn found(&self, _route: &str) -> Option<Found> {
        None
    }

    fn status(&self, _route: &str) -> Option<FleetStatus> {
        None
    }

    fn background(&self, _stop: tokio::sync::watch::Receiver<bool>) -> Option<Boxed<()>> {
        None
    }
}

/// The canary's share of `(version, requests)` counts (a version may come more than once:
/// one per replica), percent with two decimals; `None` without the canary or any request.
pub fn share_of<'a>(counts: impl IntoIterator<Item = (&'a str, u64)>, canary: &str) -> Option<f64> {
    let (mut total, mut c) = (0u64, None);
    for (v, n) in counts {
        total += n;
        if v == canary {
            c = Some(c.unwrap_or(0) + n);
        }
    }
    let c = c?;
    (total > 0).then(|| (c as f64 / total as f64 * 10_000.0).round() / 100.0)
}

/// A rollout verb that cannot be used now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RolloutError {
    #[error("route `{0}` has no rollout")]
    NoRollout(String),
    #[error("`{verb}` does not apply while the rollout is {phase}; it accepts: {}", allowed.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "))]
    NotApplicable {
        verb: &'static str,
        phase: String,
        allowed: Vec<Verb>,
    },
    #[error("step {step} does not exist; the rollout has {steps} steps (0 to {})", steps.saturating_sub(1))]
    NoStep { step: usize, steps: usize },
    #[error(
        "the rollout's state was lost: say where to go on with `resume` and a step ({{\"step\": N}}), or `retry` from step 0"
    )]
    NeedsStep,
}

struct Entry {
    spec: RolloutSpec,
    state: RolloutState,
    primary: String,
    canary: String,
    /// The layer last applied, so it is applied again only when it changes.
    applied: Option<Option<Layer>>,
    /// Versions and endpoints when the rollout started: a succeeded rollout keeps the canary at
    /// 100 % until they change (the new stable is deployed).
    deployed: u64,
    /// The block was removed from the file after the rollout succeeded.
    orphaned: bool,
    /// Succeeded, and the route was redeployed since: the file's weights apply again and the
    /// rollout imposes nothing more.
    released: bool,
}

struct Engine {
    /// Config generation last looked at.
    generation: u64,
    entries: BTreeMap<String, Entry>,
    /// What the state file held at start (by route), until each rollout has taken its own.
    saved: BTreeMap<String, RolloutState>,
    /// The state file could not be read at start: rollouts it would have held are lost.
    lost: Option<String>,
    /// Something changed since the last write.
    dirty: bool,
}

/// The rollouts of this process (or of a fleet, driven by the controller); shared by the
/// driver task and the admin API.
pub struct Rollouts {
    target: Box<dyn Target>,
    control: Arc<Control>,
    engine: Mutex<Engine>,
    /// Event-stream subscribers (`GET /api/v1/events`).
    subscribers: Mutex<Vec<mpsc::Sender<Bytes>>>,
    measured: mpsc::UnboundedSender<(String, String, Measurement)>,
    results: Mutex<Option<mpsc::UnboundedReceiver<(String, String, Measurement)>>>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct StateFile {
    version: u32,
    rollouts: BTreeMap<String, RolloutState>,
}

impl Rollouts {
    /// The rollouts of `control`'s config, resumed from the state file if there is one.
    pub fn local(control: Arc<Control>) -> Arc<Rollouts> {
        Rollouts::new(Box::new(Local(control.clone())), control)
    }

    /// The rollouts of `control`'s config carried out on `target`.
    pub fn new(target: Box<dyn Target>, control: Arc<Control>) -> Arc<Rollouts> {
        let (tx, rx) = mpsc::unbounded_channel();
        let path = state_path(&control.state().snapshot().config);
        let (saved, lost) = match path.as_deref().map(read_state) {
            None | Some(Ok(None)) => (BTreeMap::new(), None),
            Some(Ok(Some(s))) => (s, None),
            Some(Err(e)) => (BTreeMap::new(), Some(e)),
        };
        let r = Arc::new(Rollouts {
            target,
            control,
            engine: Mutex::new(Engine {
                generation: 0,
                entries: BTreeMap::new(),
                saved,
                lost,
                dirty: false,
            }),
            subscribers: Mutex::new(Vec::new()),
            measured: tx,
            results: Mutex::new(Some(rx)),
        });
        r.step_all();
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each version's totals of `route` over `[from, to)` where this engine reads evidence.
    pub fn range(&self, route: &str, from: u64, to: u64) -> Boxed<Windows> {
        self.target.range(route, from, to)
    }

    /// Step every rollout until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(mut results) = self
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        if let Some(work) = self.target.background(stop.clone()) {
            tokio::spawn(work);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => self.step_all(),
                Some((route, id, m)) = results.recv() => self.feed(&route, &id, Event::Measured(m)),
            }
        }
    }

    /// Follow the config, then tick every rollout.
    fn step_all(&self) {
        let mut engine = self.lock();
        self.sync(&mut engine);
        let now = now_ms();
        let routes: Vec<String> = engine.entries.keys().cloned().collect();
        for route in routes {
            self.handle(&mut engine, &route, Event::Tick, now);
        }
        self.save(&mut engine);
        self.export(&engine);
    }

    /// Phase, step and weights of every rollout as metrics.
    fn export(&self, engine: &Engine) {
        let metrics = &self.control.state().metrics.rollout;
        for (route, e) in &engine.entries {
            let actual = self.target.share(route, &e.canary);
            if let Some(f) = self.target.status(route) {
                metrics.replicas(route, f.replicas.iter().map(|r| r.state));
            }
            metrics.state(
                route,
                e.state.phase.as_str(),
                e.state.step,
                f64::from(e.state.weight) / 100.0,
                actual,
            );
        }
    }

    fn feed(&self, route: &str, id: &str, event: Event) {
        let mut engine = self.lock();
        if engine.entries.get(route).is_some_and(|e| e.state.id == id) {
            self.handle(&mut engine, route, event, now_ms());
            self.save(&mut engine);
        }
    }

    /// Take the rollout blocks of a new config generation into account.
    fn sync(&self, engine: &mut Engine) {
        let snap = self.control.state().snapshot();
        if snap.generation == engine.generation {
            return;
        }
        engine.generation = snap.generation;
        let now = now_ms();
        let mut seen = Vec::new();
        for rc in &snap.config.routes {
            let Some(spec) = &rc.rollout else { continue };
            seen.push(rc.name.clone());
            let deployed = deployed(rc);
            let mut superseded = None;
            let primary = rc.versions[0].name.clone();
            let canary = rc.versions[spec.canary].name.clone();
            let fingerprint = spec.steps_fingerprint();
            if let Some(e) = engine.entries.get_mut(&rc.name) {
                if e.state.id == spec.id && !e.orphaned {
                    // Analysis edits apply from the next measurement.
                    e.spec = spec.clone();
                    e.canary = canary;
                    if e.state.fingerprint != fingerprint {
                        let actions = e.state.handle(spec, Event::Edited { fingerprint }, now);
                        self.publish_actions(&rc.name, &e.state.id, &actions);
                        engine.dirty = true;
                    }
                    continue;
                }
                let actions = e.state.supersede(&spec.id, now);
                self.publish_actions(&rc.name, &e.state.id, &actions);
                superseded = e.state.history.last().cloned();
            } else if snap.config.controller.is_none() {
                tracing::warn!(
                    route = %rc.name,
                    rollout = %spec.id,
                    "this rollout is judged from this process's own traffic: with more than one replica of canaryd, each would judge part of the traffic and they would disagree; run the rollout in the fleet controller instead (canaryd cannot tell how many replicas run)"
                );
            }
            let mut state = match engine.saved.remove(&rc.name) {
                Some(mut s) if s.id == spec.id => {
                    // A measurement asked for before the restart never came back: ask again.
                    for g in [&mut s.inline, &mut s.background].into_iter().flatten() {
                        g.in_flight = false;
                    }
                    s
                }
                _ => match self.found_state(spec, rc, now) {
                    Some(s) => s,
                    None if engine.lost.is_some() => {
                        let why = engine.lost.clone().unwrap_or_default();
                        tracing::warn!(route = %rc.name, rollout = %spec.id, "state file unreadable: rollout paused (state_lost) with the canary at 0");
                        RolloutState::lost(spec, &why, now)
                    }
                    None => {
                        tracing::info!(route = %rc.name, rollout = %spec.id, "rollout begins at step 0 (no saved state for it)");
                        RolloutState::new(spec)
                    }
                },
            };
            if let Some(t) = superseded {
                state.history.push(t);
            }
            let mut entry = Entry {
                spec: spec.clone(),
                state,
                primary,
                canary,
                applied: None,
                deployed,
                orphaned: false,
                released: false,
            };
            if entry.state.fingerprint != fingerprint {
                let actions = entry.state.handle(spec, Event::Edited { fingerprint }, now);
                self.publish_actions(&rc.name, &spec.id, &actions);
            }
            engine.entries.insert(rc.name.clone(), entry);
            engine.dirty = true;
        }
        // The unreadable file could only hold the rollouts configured at start; ones added
        // later begin at step 0.
        engine.lost = None;
        // Blocks removed from the file: an active rollout is cancelled (the route goes back to
        // its file weights); a succeeded one keeps the canary at 100 % until the route's
        // versions or endpoints change.
        let gone: Vec<String> = engine
            .entries
            .keys()
            .filter(|r| !seen.contains(r))
            .cloned()
            .collect();
        for route in gone {
            let keep = engine.entries.get_mut(&route).is_some_and(|e| {
                let same = snap
                    .config
                    .routes
                    .iter()
                    .find(|r| r.name == route)
                    .is_some_and(|rc| deployed(rc) == e.deployed);
                e.orphaned = true;
                e.state.phase == Phase::Succeeded && same
            });
            if !keep {
                tracing::info!(%route, "rollout block removed: its layer is removed");
                if let Err(e) = self.target.apply(&route, None) {
                    tracing::warn!(%route, error = %e, "could not remove the rollout layer");
                }
                engine.entries.remove(&route);
                self.control.state().metrics.rollout.forget(&route);
                engine.dirty = true;
            }
        }
        // A succeeded rollout whose route was redeployed lets go of the route.
        for (route, e) in engine.entries.iter_mut() {
            if e.state.phase != Phase::Succeeded {
                continue;
            }
            let redeployed = snap
                .config
                .routes
                .iter()
                .find(|r| &r.name == route)
                .is_some_and(|rc| deployed(rc) != e.deployed);
            if redeployed && !e.released {
                tracing::info!(%route, "versions or endpoints changed after the rollout succeeded: the file's weights apply again");
                e.released = true;
                self.apply_layer(route, e);
            }
        }
    }

    /// One event for one route's rollout, and everything that follows from it.
    fn handle(&self, engine: &mut Engine, route: &str, event: Event, now: Millis) {
        let Some(e) = engine.entries.get_mut(route).filter(|e| !e.orphaned) else {
            return;
        };
        let actions = e
            .state
            .handle_in(&e.spec, event, now, self.target.in_force(route));
        for a in &actions {
            if let Action::Measure { gate, background } = a {
                self.start_measurement(route, e, gate, *background);
            }
        }
        self.publish_actions(route, &e.state.id, &actions);
        self.apply_layer(route, e);
        engine.dirty |= !actions.is_empty();
    }

    /// Apply the rollout's layer to its route when it differs from the one last applied. The
    /// file's weights after a succeeded rollout was redeployed are not ours to touch.
    fn apply_layer(&self, route: &str, e: &mut Entry) {
        let layer = if e.released { None } else { e.state.layer() };
        if e.applied.as_ref() == Some(&layer) {
            return;
        }
        let snap = self.control.state().snapshot();
        let rc = snap.config.routes.iter().find(|r| r.name == route);
        let layer_cfg = layer.as_ref().and_then(|l| {
            rc.map(|rc| {
                let layer = control_layer(&e.spec, rc, l);
                Applied {
                    id: e.state.id.clone(),
                    step: e.state.step,
                    rules: layer.rules.iter().map(|r| rule_json(r, rc)).collect(),
                    layer,
                }
            })
        });
        match self.target.apply(route, layer_cfg) {
            Ok(_) => e.applied = Some(layer),
            Err(err) => {
                tracing::warn!(%route, error = %err, "could not apply the rollout's weights")
            }
        }
    }

    fn start_measurement(&self, route: &str, e: &Entry, gate_name: &str, background: bool) {
        let Some(gate) = e.spec.analysis.get(gate_name).cloned() else {
            return;
        };
        let settings = self.control.state().snapshot().config.analysis.clone();
        let windows = self.target.windows(route, gate.window, gate.source);
        let diffs = self.target.diffs(route, gate.window);
        let canary_failures = self.target.failures(route, &e.canary);
        let (primary, canary) = (e.primary.clone(), e.canary.clone());
        let tx = self.measured.clone();
        let (route, id, name, step) = (
            route.to_string(),
            e.state.id.clone(),
            gate_name.to_string(),
            e.state.step,
        );
        tokio::spawn(async move {
            let windows = windows.await.and_then(|w| {
                let find = |name: &str| {
                    w.iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, s)| (name.to_string(), s.clone()))
                        .ok_or_else(|| format!("version `{name}` has no window"))
                };
                Ok((find(&primary)?, find(&canary)?))
            });
            let (result, checks) = match windows {
                Ok((primary, canary)) => {
                    let ev = Evidence {
                        route: route.clone(),
                        rollout: id.clone(),
                        step,
                        gate: name.clone(),
                        window: gate.window,
                        primary,
                        canary,
                        canary_failures,
                        diffs,
                    };
                    measure::measure(&gate, &settings, &ev).await
                }
                // Evidence that cannot be read is no evidence: neither a pass nor a failure.
                Err(why) => (
                    Outcome::Inconclusive,
                    vec![measure::result("window", Outcome::Inconclusive, None, why)],
                ),
            };
            let m = Measurement {
                at: now_ms(),
                gate: name,
                background,
                step,
                result,
                checks,
            };
            let _ = tx.send((route, id, m));
        });
    }

    /// Write the state file if anything changed; a failed write pauses active rollouts.
    fn save(&self, engine: &mut Engine) {
        if !engine.dirty {
            return;
        }
        engine.dirty = false;
        let Some(path) = state_path(&self.control.state().snapshot().config) else {
            return;
        };
        let file = StateFile {
            version: 1,
            rollouts: engine
                .entries
                .iter()
                .map(|(r, e)| (r.clone(), e.state.clone()))
                .chain(engine.saved.iter().map(|(r, s)| (r.clone(), s.clone())))
                .collect(),
        };
        if let Err(err) = write_atomically(&path, &file) {
            tracing::warn!(path = %path.display(), error = %err, "cannot write the rollout state file");
            let now = now_ms();
            for (route, e) in engine.entries.iter_mut() {
                if matches!(e.state.phase, Phase::Progressing | Phase::Paused) {
                    let actions = e
                        .state
                        .handle(&e.spec, Event::WriteFailed(err.clone()), now);
                    self.publish_actions(route, &e.state.id, &actions);
                }
            }
        }
    }

    fn publish_actions(&self, route: &str, id: &str, actions: &[Action]) {
        let metrics = &self.control.state().metrics.rollout;
        for a in actions {
            match a {
                Action::Transitioned(t) => {
                    metrics.transition(route, t.to.as_str());
                    log_transition(route, id, t);
                    self.publish(
                        "transition",
                        &serde_json::json!({ "route": route, "rollout": id, "transition": t }),
                    );
                }
                Action::Recorded(m) => {
                    metrics.measured(route, &m.gate, m.result.as_str());
                    self.publish(
                        "measurement",
                        &serde_json::json!({ "route": route, "rollout": id, "measurement": m }),
                    );
                }
                Action::Measure { .. } => {}
            }
        }
    }

    fn publish(&self, kind: &str, data: &serde_json::Value) {
        let frame = Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| match s.try_send(frame.clone()) {
            Ok(()) => true,
            // A reader that falls this far behind misses events rather than slowing the engine.
            Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// A new event-stream reader: every transition and measurement from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(256);
        let _ = tx.try_send(Bytes::from_static(b": canaryd rollout events\n\n"));
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// Is a rollout driving `route`'s weights now (so hand-set weights would fight it)?
    pub fn drives(&self, route: &str) -> Option<Phase> {
        self.lock()
            .entries
            .get(route)
            .map(|e| e.state.phase)
            .filter(|p| matches!(p, Phase::Progressing | Phase::Paused))
    }

    /// Weights were forced by hand on `route`: its rollout pauses (`manual`).
    pub fn weights_forced(&self, route: &str) {
        let mut engine = self.lock();
        self.handle(&mut engine, route, Event::ManualWeight, now_ms());
        self.save(&mut engine);
    }

    /// An operator's verb. `full` is promote's; `step` is resume's.
    pub fn verb(
        &self,
        route: &str,
        verb: Verb,
        full: bool,
        step: Option<usize>,
    ) -> Result<RolloutView, RolloutError> {
        let mut engine = self.lock();
        self.sync(&mut engine);
        let e = engine
            .entries
            .get(route)
            .filter(|e| !e.orphaned)
            .ok_or_else(|| RolloutError::NoRollout(route.to_string()))?;
        let allowed = e.state.verbs();
        if !allowed.contains(&verb) {
            return Err(RolloutError::NotApplicable {
                verb: verb.as_str(),
                phase: phase_text(&e.state),
                allowed,
            });
        }
        if let Some(s) = step.filter(|s| *s >= e.spec.steps.len()) {
            return Err(RolloutError::NoStep {
                step: s,
                steps: e.spec.steps.len(),
            });
        }
        let reason = e.state.pause_reason();
        let manual = reason == Some(super::machine::PauseReason::Manual);
        // Lost with nothing found: no step to go on from. Found on a fleet: its step.
        if verb == Verb::Resume
            && step.is_none()
            && reason == Some(super::machine::PauseReason::StateLost)
            && e.state.step == 0
            && e.state.weight == 0
        {
            return Err(RolloutError::NeedsStep);
        }
        let event = match verb {
            Verb::Promote => Event::Promote { full },
            Verb::Abort => Event::Abort,
            Verb::Retry => Event::Retry,
            Verb::Pause => Event::Pause,
            Verb::Resume => Event::Resume { step },
        };
        if verb != Verb::Pause && manual {
            // Hand-set weights give way to the rollout's again.
            if let Err(err) = self.control.clear_weight_overrides(route) {
                tracing::warn!(%route, error = %err, "could not clear the weight overrides");
            }
        }
        self.handle(&mut engine, route, event, now_ms());
        self.save(&mut engine);
        self.view_of(&engine, route)
            .ok_or_else(|| RolloutError::NoRollout(route.to_string()))
    }

    /// `GET /api/v1/routes/{route}/rollout`.
    pub fn view(&self, route: &str) -> Result<RolloutView, RolloutError> {
        let mut engine = self.lock();
        self.sync(&mut engine);
        self.view_of(&engine, route)
            .ok_or_else(|| RolloutError::NoRollout(route.to_string()))
    }

    /// `GET /api/v1/rollouts`.
    pub fn views(&self) -> Vec<RolloutView> {
        let mut engine = self.lock();
        self.sync(&mut engine);
        let routes: Vec<String> = engine.entries.keys().cloned().collect();
        routes
            .iter()
            .filter_map(|r| self.view_of(&engine, r))
            .collect()
    }

    fn view_of(&self, engine: &Engine, route: &str) -> Option<RolloutView> {
        let e = engine.entries.get(route)?;
        let s = &e.state;
        let now = now_ms();
        let actual = self.target.share(route, &e.canary);
        Some(RolloutView {
            route: route.to_string(),
            id: s.id.clone(),
            primary: e.primary.clone(),
            canary: e.canary.clone(),
            phase: s.phase,
            reason: s.reason.clone(),
            message: s.message.clone(),
            step: s.step,
            steps_total: e.spec.steps.len(),
            steps: e
                .spec
                .steps
                .iter()
                .enumerate()
                .map(|(i, st)| StepView::of(i, st, s.step))
                .collect(),
            set_weight: f64::from(s.weight) / 100.0,
            actual_weight: actual,
            pause_until: s.pause_until.map(rfc3339),
            pause_remaining_seconds: s.pause_until.map(|u| u.saturating_sub(now) as f64 / 1e3),
            inline_gate: s.inline.clone(),
            background_gate: s.background.clone(),
            measurements: s.measurements.clone(),
            history: s.history.clone(),
            verbs: if e.orphaned { Vec::new() } else { s.verbs() },
            fleet: self.target.status(route),
        })
    }

    /// No saved state for `spec`, but its layer is in force where the engine drives (a
    /// controller restarted without its state file): paused (`state_lost`) at that step.
    fn found_state(
        &self,
        spec: &RolloutSpec,
        rc: &crate::config::RouteConfig,
        now: Millis,
    ) -> Option<RolloutState> {
        let f = self.target.found(&rc.name).filter(|f| f.id == spec.id)?;
        let canary = &rc.versions[spec.canary].name;
        let weight = f
            .weights
            .get(canary)
            .and_then(|p| crate::config::Weight::from_percent(*p).ok())
            .unwrap_or(crate::config::Weight(0));
        tracing::warn!(route = %rc.name, rollout = %spec.id, step = f.step, "no saved state for this rollout, but the replicas hold it: paused (state_lost) at their step");
        Some(RolloutState::found(
            spec,
            f.step,
            weight,
            f.header_routes,
            now,
        ))
    }
}

/// Where rollout state is kept: a controller's `controller.state_file`, a proxy's
/// `proxy.state_file`.
fn state_path(config: &crate::config::Config) -> Option<PathBuf> {
    match &config.controller {
        Some(c) => Some(c.state_file.clone()),
        None => config.proxy.state_file.clone(),
    }
}

/// A managed header route as a rule is written in a config file, `{name, to, when}`, for a
/// fleet's replicas to validate as their own.
fn rule_json(
    rule: &crate::config::RuleConfig,
    route: &crate::config::RouteConfig,
) -> serde_json::Value {
    use crate::config::Condition;
    let mut headers = Vec::new();
    let mut cookies = Vec::new();
    let mut nets = Vec::new();
    for c in &rule.conditions {
        let v = serde_json::to_value(c).unwrap_or_default();
        match c {
            Condition::Header { .. } => headers.push(v["header"].clone()),
            Condition::Cookie { .. } => cookies.push(v["cookie"].clone()),
            Condition::ClientIp(_) => {
                if let Some(a) = v["client_ip"].as_array() {
                    nets.extend(a.iter().cloned());
                }
            }
        }
    }
    let mut when = serde_json::Map::new();
    if !headers.is_empty() {
        when.insert("header".into(), headers.into());
    }
    if !cookies.is_empty() {
        when.insert("cookie".into(), cookies.into());
    }
    if !nets.is_empty() {
        when.insert("client_ip".into(), nets.into());
    }
    serde_json::json!({
        "name": rule.name,
        "to": route.versions.get(rule.to).map(|v| v.name.as_str()),
        "when": when,
    })
}

/// The control layer for a machine layer: the canary's weight (others 0 after a promotion)
/// and its header routes' rules.
fn control_layer(
    spec: &RolloutSpec,
    route: &crate::config::RouteConfig,
    l: &Layer,
) -> RolloutLayer {
    let rules = spec
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::SetHeaderRoute { name, rule } if l.header_routes.contains(name) => {
                Some(rule.clone())
            }
            _ => None,
        })
        .collect();
    let weights = route
        .versions
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, _)| *i == spec.canary || l.others_zero)
        .map(|(i, v)| {
            let w = if i == spec.canary {
                l.canary_weight
            } else {
                crate::config::Weight(0)
            };
            (v.name.clone(), w)
        })
        .collect();
    let mirrors = spec
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::SetMirrorRoute { name, mirror } if l.header_routes.contains(name) => {
                Some((**mirror).clone())
            }
            _ => None,
        })
        .collect();
    RolloutLayer {
        weights,
        rules,
        mirrors,
        pushed: None,
    }
}

/// Fingerprint of a route's versions and endpoints (not weights).
fn deployed(rc: &crate::config::RouteConfig) -> u64 {
    let mut f = crate::hash::FNV_OFFSET;
    for v in &rc.versions {
        let endpoints = v
            .endpoints
            .iter()
            .flat_map(|e| e.authority.as_str().as_bytes().iter().chain(b","));
        f = crate::hash::fnv(f, v.name.as_bytes().iter().chain(endpoints));
        f ^= 0xff;
    }
    f
}

fn phase_text(s: &RolloutState) -> String {
    let p = serde_json::to_value(s.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match &s.reason {
        Some(r) if s.phase == Phase::Paused => format!("{p} ({r})"),
        _ => p,
    }
}

fn log_transition(route: &str, id: &str, t: &Transition) {
    tracing::info!(
        target: "canaryd::rollout",
        route,
        rollout = id,
        from = ?t.from,
        to = ?t.to,
        step = t.step,
        reason = t.reason.as_deref(),
        by = %t.by,
        "{}",
        t.message
    );
}

fn rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The state file: `Ok(None)` when there is none yet (first start).
fn read_state(path: &Path) -> Result<Option<BTreeMap<String, RolloutState>>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no rollout state file yet: first start, rollouts begin at step 0");
            return Ok(None);
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let file: StateFile = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a canaryd state file: {e}", path.display()))?;
    Ok(Some(file.rollouts))
}

/// Temp file in the same directory, fsync, rename: a crash leaves the old file or the new.
fn write_atomically(path: &Path, file: &StateFile) -> Result<(), String> {
    use std::io::Write;
    let text = serde_json::to_vec_pretty(file).map_err(|e| e.to_string())?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    f.write_all(&text)
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    f.sync_all()
        .map_err(|e| format!("fsync {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A rollout as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub route: String,
    pub id: String,
    pub primary: String,
    pub canary: String,
    pub phase: Phase,
    /// Pause reason or abort cause.
    pub reason: Option<String>,
    pub message: String,
    /// Index of the current step (`steps_total` once done).
    pub step: usize,
    pub steps_total: usize,
    pub steps: Vec<StepView>,
    /// The canary's share the rollout sets, percent.
    pub set_weight: f64,
    /// The canary's share of the route's requests over the last minute, percent.
    pub actual_weight: Option<f64>,
    pub pause_until: Option<String>,
    pub pause_remaining_seconds: Option<f64>,
    pub inline_gate: Option<super::machine::GateRun>,
    pub background_gate: Option<super::machine::GateRun>,
    pub measurements: Vec<Measurement>,
    pub history: Vec<Transition>,
    /// The verbs that apply now.
    pub verbs: Vec<Verb>,
    /// Driven by a fleet controller: where the layer stands on each replica, and what blocks
    /// progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub index: usize,
    /// `set_weight`, `pause`, `analysis`, `set_header_route`, `set_mirror_route` (its
    /// `weight` is the share copied).
    pub kind: &'static str,
    pub weight: Option<f64>,
    /// Pause length; `null` with kind `pause` = until promoted.
    pub seconds: Option<f64>,
    pub gate: Option<String>,
    pub name: Option<String>,
    /// `done`, `current` or `pending`.
    pub status: &'static str,
}

impl StepView {
    fn of(index: usize, s: &Step, current: usize) -> StepView {
        let mut v = StepView {
            index,
            kind: "",
            weight: None,
            seconds: None,
            gate: None,
            name: None,
            status: match index.cmp(&current) {
                std::cmp::Ordering::Less => "done",
                std::cmp::Ordering::Equal => "current",
                std::cmp::Ordering::Greater => "pending",
            },
        };
        match s {
            Step::SetWeight(w) => {
                v.kind = "set_weight";
                v.weight = Some(w.percent());
            }
            Step::Pause(d) => {
                v.kind = "pause";
                v.seconds = d.map(|d| d.as_secs_f64());
            }
            Step::Analysis(g) => {
                v.kind = "analysis";
                v.gate = Some(g.clone());
            }
            Step::SetHeaderRoute { name, .. } => {
                v.kind = "set_header_route";
                v.name = Some(name.clone());
            }
            Step::SetMirrorRoute { name, mirror } => {
                v.kind = "set_mirror_route";
                v.name = Some(name.clone());
                v.weight = Some(mirror.percent.percent());
            }
        }
        v
    }
}
