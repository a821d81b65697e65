//! The rollout state machine: `(state, event, now) → actions`, pure (no I/O, no clock: `now`
//! is passed in, in Unix milliseconds), so every transition is unit-tested with a fake clock.
//!
//! The async driver ([`super::driver`]) feeds it events (ticks, measurement results, verbs)
//! and carries out what comes back: take a measurement, apply the rollout's layer
//! ([`RolloutState::layer`]) to the live snapshot, write the state file, publish events.
//! Timers are absolute timestamps, so a restart neither extends nor shortens a pause.

use crate::config::{Gate, OnInconclusive, RolloutSpec, Step, WEIGHT_SCALE, Weight};
use serde::{Deserialize, Serialize};

/// Unix time in milliseconds.
pub type Millis = u64;

/// Transitions and measurements kept in the state (older ones fall off).
const KEEP_HISTORY: usize = 50;
const KEEP_MEASUREMENTS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Known, not started yet.
    Pending,
    Progressing,
    Paused,
    Aborted,
    Succeeded,
    /// Replaced by a rollout with another id.
    Superseded,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Aborted => "aborted",
            Phase::Succeeded => "succeeded",
            Phase::Superseded => "superseded",
        }
    }
}

/// Why a rollout is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// A `pause` step (timed, or `pause: {}` until promoted).
    Step,
    /// More inconclusive measurements than `inconclusive_limit`.
    Inconclusive,
    /// An operator paused it, or changed its weights by hand.
    Manual,
    /// `error_limit` errored measurements in a row.
    AnalysisError,
    /// Its steps changed in the file.
    Edited,
    /// The state file exists but could not be read: the canary is held at 0.
    StateLost,
    /// The state file could not be written: weights are held where they are.
    StateUnwritable,
}

/// The result of one measurement; the worst result of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Inconclusive,
    Errored,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Inconclusive => "inconclusive",
            Outcome::Errored => "errored",
            Outcome::Failed => "failed",
        }
    }

    /// failed > errored > inconclusive > passed.
    pub fn worst(self, other: Outcome) -> Outcome {
        fn rank(o: Outcome) -> u8 {
            match o {
                Outcome::Passed => 0,
                Outcome::Inconclusive => 1,
                Outcome::Errored => 2,
                Outcome::Failed => 3,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// One check's result inside a measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// `success_rate`, `latency_p99`, `prometheus`, `webhook`.
    pub check: String,
    pub result: Outcome,
    pub critical: bool,
    /// The number judged (percent, seconds, query value, confidence), when there was one.
    pub value: Option<f64>,
    /// What was measured against what, or what went wrong; a judge's text.
    pub message: String,
}

/// One measurement of a gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub at: Millis,
    pub gate: String,
    pub background: bool,
    /// The step it was taken at.
    pub step: usize,
    pub result: Outcome,
    pub checks: Vec<CheckResult>,
}

impl Measurement {
    /// A failed check marked `critical` aborts at once.
    pub fn critical_failure(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.critical && c.result == Outcome::Failed)
    }
}

/// One transition, for people to read: what changed, why, and who or what caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at: Millis,
    pub from: Phase,
    pub to: Phase,
    pub step: usize,
    /// A pause reason, or a short cause (`promoted`, `analysis_failed`, …).
    pub reason: Option<String>,
    /// `engine`, `api`, `reload`, `start`.
    pub by: String,
    pub message: String,
}

/// Progress of one gate (the inline one of an `analysis` step, or the background one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateRun {
    pub gate: String,
    pub started: Millis,
    /// When the next measurement is due.
    pub next_at: Millis,
    /// A measurement was asked for and has not come back.
    #[serde(default)]
    pub in_flight: bool,
    pub measurements: u32,
    pub passed: u32,
    pub failures: u32,
    pub consecutive_failures: u32,
    pub consecutive_errors: u32,
    pub inconclusive: u32,
}

impl GateRun {
    fn new(gate: &str, g: &Gate, now: Millis) -> GateRun {
        GateRun {
            gate: gate.to_string(),
            started: now,
            next_at: now + ms(g.initial_delay),
            ..GateRun::default()
        }
    }
}

/// Everything about one rollout that must survive a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub id: String,
    /// [`RolloutSpec::steps_fingerprint`] of the steps it was started with.
    pub fingerprint: u64,
    pub phase: Phase,
    /// Pause reason (snake_case) or abort cause.
    pub reason: Option<String>,
    pub message: String,
    /// Index of the current step; `steps.len()` once every step is done.
    pub step: usize,
    /// The canary's share set by the rollout, in weight units (0.01 %).
    pub weight: u32,
    /// Managed header routes in force, by name (their rules are the steps').
    pub header_routes: Vec<String>,
    /// End of a timed pause step.
    pub pause_until: Option<Millis>,
    pub inline: Option<GateRun>,
    pub background: Option<GateRun>,
    pub history: Vec<Transition>,
    pub measurements: Vec<Measurement>,
}

/// What the driver must do after an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Take a measurement of this gate (the answer comes back as [`Event::Measured`]).
    Measure { gate: String, background: bool },
    /// The phase changed (publish it; the state and the layer changed too).
    Transitioned(Transition),
    /// A measurement was recorded.
    Recorded(Measurement),
}

/// What can happen to a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed: advance steps, start due measurements.
    Tick,
    Measured(Measurement),
    Promote {
        full: bool,
    },
    Abort,
    Retry,
    Pause,
    /// Continue; `step` moves to that step first (the way out of `state_lost`).
    Resume {
        step: Option<usize>,
    },
    /// Someone forced a weight by hand: the rollout stops driving it.
    ManualWeight,
    /// The state file could not be written.
    WriteFailed(String),
    /// The file changed this rollout's steps (same id).
    Edited {
        fingerprint: u64,
    },
}

/// The verbs an operator can use, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    Promote,
    Abort,
    Retry,
    Pause,
    Resume,
}

impl Verb {
    pub const ALL: [Verb; 5] = [
        Verb::Promote,
        Verb::Abort,
        Verb::Retry,
        Verb::Pause,
        Verb::Resume,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Promote => "promote",
            Verb::Abort => "abort",
            Verb::Retry => "retry",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
        }
    }

    pub fn parse(s: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Whether the layer a rollout last set is in force wherever it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InForce {
    /// Applied as soon as it is set (one process): steps follow one another at once.
    Immediately,
    /// Pushed to a fleet of replicas: `true` once every one of them verified it. Progress (the
    /// next step, the end of a pause, promotion) waits for it, and a step that changes the
    /// layer is the last one taken before the fleet verifies it (Argo's VerifyWeight).
    Verified(bool),
}

/// The weights and header routes a rollout imposes on its route, between the file and the
/// runtime overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// The canary's share.
    pub canary_weight: Weight,
    /// Set other non-primary versions to 0 (after promotion).
    pub others_zero: bool,
    /// Names of the `set_header_route` and `set_mirror_route` steps in force.
    pub header_routes: Vec<String>,
}

fn ms(d: std::time::Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

fn token<T: Serialize>(t: T) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl RolloutState {
    /// A rollout about to start at step 0.
    pub fn new(spec: &RolloutSpec) -> RolloutState {
        RolloutState {
            id: spec.id.clone(),
            fingerprint: spec.steps_fingerprint(),
            phase: Phase::Pending,
            reason: None,
            message: String::new(),
            step: 0,
            weight: 0,
            header_routes: Vec::new(),
            pause_until: None,
            inline: None,
            background: None,
            history: Vec::new(),
            measurements: Vec::new(),
        }
    }

    /// The state file existed but could not be read: hold the canary at 0 until an operator
    /// says where to go on (`resume` with a step, or `retry`). Never a silent restart.
    pub fn lost(spec: &RolloutSpec, why: &str, now: Millis) -> RolloutState {
        let mut s = RolloutState::new(spec);
        s.transition(
            Phase::Paused,
            Some(token(PauseReason::StateLost)),
            "start",
            format!("the state file could not be read ({why}); the canary is held at 0 until `resume` with a step or `retry`"),
            now,
            &mut Vec::new(),
        );
        s
    }

    /// No state of its own, but the fleet's replicas hold this rollout's layer at `step`: hold
    /// them there (same weight, same header routes, so no sticky user moves) until an operator
    /// says to go on (`resume` continues at that step) or start over (`retry`). Never step 0.
    pub fn found(
        spec: &RolloutSpec,
        step: usize,
        weight: Weight,
        header_routes: Vec<String>,
        now: Millis,
    ) -> RolloutState {
        let mut s = RolloutState::new(spec);
        s.step = step.min(spec.steps.len());
        s.weight = weight.0;
        s.header_routes = header_routes;
        s.transition(
            Phase::Paused,
            Some(token(PauseReason::StateLost)),
            "start",
            format!(
                "no saved state, but the replicas hold this rollout at step {} with the canary at {} %: held there until `resume` (continues at that step) or `retry`",
                s.step,
                weight.percent()
            ),
            now,
            &mut Vec::new(),
        );
        s
    }

    /// The layer this rollout imposes now; `None` when it imposes nothing (pending, superseded).
    pub fn layer(&self) -> Option<Layer> {
        match self.phase {
            Phase::Pending | Phase::Superseded => None,
            Phase::Succeeded => Some(Layer {
                canary_weight: Weight(WEIGHT_SCALE),
                others_zero: true,
                header_routes: Vec::new(),
            }),
            Phase::Aborted => Some(Layer {
                canary_weight: Weight(0),
                others_zero: false,
                header_routes: Vec::new(),
            }),
            Phase::Progressing | Phase::Paused => Some(Layer {
                canary_weight: Weight(self.weight),
                others_zero: false,
                header_routes: self.header_routes.clone(),
            }),
        }
    }

    pub fn pause_reason(&self) -> Option<PauseReason> {
        if self.phase != Phase::Paused {
            return None;
        }
        let r = self.reason.as_deref()?;
        serde_json::from_value(serde_json::Value::String(r.to_string())).ok()
    }

    /// The verbs that apply in the current phase.
    pub fn verbs(&self) -> Vec<Verb> {
        let paused = self.pause_reason();
        Verb::ALL
            .into_iter()
            .filter(|v| match v {
                Verb::Promote | Verb::Abort => {
                    matches!(self.phase, Phase::Progressing | Phase::Paused)
                        && paused != Some(PauseReason::StateLost)
                }
                Verb::Pause => self.phase == Phase::Progressing,
                Verb::Resume => self.phase == Phase::Paused,
                Verb::Retry => {
                    self.phase == Phase::Aborted
                        || matches!(paused, Some(PauseReason::Edited | PauseReason::StateLost))
                }
            })
            .collect()
    }

    fn transition(
        &mut self,
        to: Phase,
        reason: Option<String>,
        by: &str,
        message: String,
        now: Millis,
        actions: &mut Vec<Action>,
    ) {
        let t = Transition {
            at: now,
            from: self.phase,
            to,
            step: self.step,
            reason: reason.clone(),
            by: by.to_string(),
            message: message.clone(),
        };
        self.phase = to;
        self.reason = reason;
        self.message = message;
        self.history.push(t.clone());
        if self.history.len() > KEEP_HISTORY {
            self.history.remove(0);
        }
        actions.push(Action::Transitioned(t));
    }

    fn pause(
        &mut self,
        reason: PauseReason,
        by: &str,
        message: String,
        now: Millis,
        a: &mut Vec<Action>,
    ) {
        self.transition(Phase::Paused, Some(token(reason)), by, message, now, a);
    }

    fn abort(&mut self, cause: &str, by: &str, message: String, now: Millis, a: &mut Vec<Action>) {
        self.weight = 0;
        self.header_routes.clear();
        self.pause_until = None;
        self.inline = None;
        self.background = None;
        self.transition(Phase::Aborted, Some(cause.to_string()), by, message, now, a);
    }

    /// A rollout with id `by` replaced this one (a reload changed the id): its last
    /// transition, which the new rollout's history starts with.
    pub fn supersede(&mut self, by: &str, now: Millis) -> Vec<Action> {
        let mut a = Vec::new();
        let message = format!(
            "rollout `{}` (at step {}) was superseded by `{by}`",
            self.id, self.step
        );
        self.transition(
            Phase::Superseded,
            Some("superseded".into()),
            "reload",
            message,
            now,
            &mut a,
        );
        a
    }

    /// Feed one event; returns what the driver must do. The layer applies at once.
    pub fn handle(&mut self, spec: &RolloutSpec, event: Event, now: Millis) -> Vec<Action> {
        self.handle_in(spec, event, now, InForce::Immediately)
    }

    /// [`RolloutState::handle`] for a layer that must be verified before progress.
    pub fn handle_in(
        &mut self,
        spec: &RolloutSpec,
        event: Event,
        now: Millis,
        f: InForce,
    ) -> Vec<Action> {
        let mut a = Vec::new();
        match event {
            Event::Tick => self.tick(spec, now, &mut a, f),
            Event::Measured(m) => self.measured(spec, m, now, &mut a, f),
            Event::Promote { full } => {
                self.pause_until = None;
                self.inline = None;
                if full {
                    self.step = spec.steps.len();
                } else if self.pause_reason() == Some(PauseReason::Edited) {
                    // As `resume` after an edit: never a drop that would move sticky users.
                    self.step = self.first_step_at_least(spec, self.weight);
                } else if self.pause_reason() == Some(PauseReason::Step)
                    || matches!(spec.steps.get(self.step), Some(Step::Analysis(_)))
                {
                    // Promote ends the pause or gate the rollout waits at.
                    self.step += 1;
                }
                let msg = if full {
                    "promoted to 100 %, skipping the remaining steps"
                } else {
                    "promoted past the current step"
                };
                self.transition(
                    Phase::Progressing,
                    Some("promoted".into()),
                    "api",
                    msg.into(),
                    now,
                    &mut a,
                );
                self.tick(spec, now, &mut a, f);
            }
            Event::Abort => self.abort(
                "aborted_by_operator",
                "api",
                "aborted by an operator: the canary is at 0".into(),
                now,
                &mut a,
            ),
            Event::Retry => {
                let history = std::mem::take(&mut self.history);
                let measurements = std::mem::take(&mut self.measurements);
                *self = RolloutState::new(spec);
                self.history = history;
                self.measurements = measurements;
                self.start(spec, "api", "retried from step 0", now, &mut a);
                self.tick(spec, now, &mut a, f);
            }
            Event::Pause => self.pause(
                PauseReason::Manual,
                "api",
                "paused by an operator".into(),
                now,
                &mut a,
            ),
            Event::Resume { step } => self.resume(spec, step, now, &mut a, f),
            Event::ManualWeight => self.pause(
                PauseReason::Manual,
                "api",
                "weights were changed by hand (forced); `resume` gives them back to the rollout"
                    .into(),
                now,
                &mut a,
            ),
            Event::WriteFailed(e) => {
                if self.pause_reason() != Some(PauseReason::StateUnwritable) {
                    self.pause(
                        PauseReason::StateUnwritable,
                        "engine",
                        format!("the state file could not be written ({e}); weights are held"),
                        now,
                        &mut a,
                    );
                }
            }
            Event::Edited { fingerprint } => {
                self.fingerprint = fingerprint;
                if matches!(self.phase, Phase::Progressing | Phase::Paused) {
                    self.inline = None;
                    self.pause(
                        PauseReason::Edited,
                        "reload",
                        "the steps changed in the file; `resume` continues at the first step whose weight is at least the current one, `retry` restarts".into(),
                        now,
                        &mut a,
                    );
                }
            }
        }
        a
    }

    fn start(&mut self, spec: &RolloutSpec, by: &str, msg: &str, now: Millis, a: &mut Vec<Action>) {
        if let Some(g) = &spec.background_analysis {
            if let Some(gate) = spec.analysis.get(g) {
                self.background = Some(GateRun::new(g, gate, now));
            }
        }
        self.transition(Phase::Progressing, None, by, msg.into(), now, a);
    }

    fn resume(
        &mut self,
        spec: &RolloutSpec,
        step: Option<usize>,
        now: Millis,
        a: &mut Vec<Action>,
        f: InForce,
    ) {
        let reason = self.pause_reason();
        if let Some(s) = step {
            self.step = s.min(spec.steps.len());
            self.pause_until = None;
            self.inline = None;
            // The weight is the last one set at or before that step.
            self.weight = spec.steps[..self.step]
                .iter()
                .rev()
                .find_map(|s| match s {
                    Step::SetWeight(w) => Some(w.0),
                    _ => None,
                })
                .unwrap_or(0);
        } else if reason == Some(PauseReason::Edited) {
            // Never a drop that would move sticky users back to the primary.
            self.step = self.first_step_at_least(spec, self.weight);
            self.pause_until = None;
        } else if reason == Some(PauseReason::Step) {
            // Resuming a pause step is what promote does.
            self.step += 1;
            self.pause_until = None;
        }
        for g in [&mut self.inline, &mut self.background]
            .into_iter()
            .flatten()
        {
            g.inconclusive = 0;
            g.consecutive_errors = 0;
            g.in_flight = false;
            g.next_at = g.next_at.max(now);
        }
        if self.background.is_none() {
            if let Some(g) = &spec.background_analysis {
                if let Some(gate) = spec.analysis.get(g) {
                    self.background = Some(GateRun::new(g, gate, now));
                }
            }
        }
        self.transition(
            Phase::Progressing,
            None,
            "api",
            format!("resumed at step {}", self.step),
            now,
            a,
        );
        self.tick(spec, now, a, f);
    }

    /// The first step that sets a weight of at least `weight` (after the last step: promotion).
    fn first_step_at_least(&self, spec: &RolloutSpec, weight: u32) -> usize {
        spec.steps
            .iter()
            .position(|s| matches!(s, Step::SetWeight(w) if w.0 >= weight))
            .unwrap_or(spec.steps.len())
    }

    /// Walk the steps that complete now; start measurements that are due.
    fn tick(&mut self, spec: &RolloutSpec, now: Millis, a: &mut Vec<Action>, f: InForce) {
        if self.phase == Phase::Pending {
            self.start(spec, "engine", "started at step 0", now, a);
        }
        let stepping = |s: &Self| {
            s.phase == Phase::Progressing
                || (s.pause_reason() == Some(PauseReason::Step)
                    && s.pause_until.is_some_and(|u| u <= now))
        };
        // A fleet that has not verified the layer yet holds every step where it is.
        let mut hold = f == InForce::Verified(false);
        let fleet = f != InForce::Immediately;
        while !hold && stepping(self) {
            if self.phase == Phase::Paused {
                // A timed pause ran out.
                self.pause_until = None;
                self.step += 1;
                self.transition(
                    Phase::Progressing,
                    None,
                    "engine",
                    format!("pause over, at step {}", self.step),
                    now,
                    a,
                );
            }
            let Some(step) = spec.steps.get(self.step) else {
                self.succeed(now, a);
                break;
            };
            match step {
                Step::SetWeight(w) => {
                    hold = fleet && self.weight != w.0;
                    self.weight = w.0;
                    self.step += 1;
                }
                Step::SetHeaderRoute { name, .. } | Step::SetMirrorRoute { name, .. } => {
                    if !self.header_routes.contains(name) {
                        self.header_routes.push(name.clone());
                        hold = fleet;
                    }
                    self.step += 1;
                }
                Step::Pause(d) => {
                    self.pause_until = d.map(|d| now + ms(d));
                    let msg = match d {
                        Some(d) => format!("pause step: {}", humantime::format_duration(*d)),
                        None => "pause step: waits until promoted".to_string(),
                    };
                    self.pause(PauseReason::Step, "engine", msg, now, a);
                    break;
                }
                Step::Analysis(g) => {
                    let Some(gate) = spec.analysis.get(g) else {
                        self.step += 1;
                        continue;
                    };
                    let run = self
                        .inline
                        .get_or_insert_with(|| GateRun::new(g, gate, now));
                    if gate_done(run, gate) {
                        self.inline = None;
                        self.step += 1;
                        continue;
                    }
                    if !run.in_flight && run.next_at <= now {
                        run.in_flight = true;
                        a.push(Action::Measure {
                            gate: g.clone(),
                            background: false,
                        });
                    }
                    break;
                }
            }
        }
        // Background analysis runs while the rollout progresses or waits at a pause step.
        let measuring =
            self.phase == Phase::Progressing || self.pause_reason() == Some(PauseReason::Step);
        if let (true, Some(run)) = (measuring, self.background.as_mut()) {
            if !run.in_flight && run.next_at <= now {
                run.in_flight = true;
                a.push(Action::Measure {
                    gate: run.gate.clone(),
                    background: true,
                });
            }
        }
    }

    fn succeed(&mut self, now: Millis, a: &mut Vec<Action>) {
        self.weight = WEIGHT_SCALE;
        self.header_routes.clear();
        self.inline = None;
        self.background = None;
        self.pause_until = None;
        self.transition(
            Phase::Succeeded,
            Some("promoted".into()),
            "engine",
            "every step done: the canary takes 100 %".into(),
            now,
            a,
        );
    }

    fn measured(
        &mut self,
        spec: &RolloutSpec,
        m: Measurement,
        now: Millis,
        a: &mut Vec<Action>,
        f: InForce,
    ) {
        let background = m.background;
        let run = if background {
            self.background.as_mut()
        } else {
            self.inline.as_mut()
        };
        let Some(run) = run.filter(|r| r.gate == m.gate && r.in_flight) else {
            return; // A late answer for a gate that is no longer running.
        };
        let Some(gate) = spec.analysis.get(&m.gate) else {
            return;
        };
        run.in_flight = false;
        run.next_at = now + ms(gate.interval);
        run.measurements += 1;
        let critical = m.critical_failure();
        match m.result {
            Outcome::Passed => {
                run.passed += 1;
                run.consecutive_failures = 0;
                run.consecutive_errors = 0;
            }
            Outcome::Failed => {
                run.failures += 1;
                run.consecutive_failures += 1;
                run.consecutive_errors = 0;
            }
            Outcome::Errored => run.consecutive_errors += 1,
            Outcome::Inconclusive => {
                run.inconclusive += 1;
                run.consecutive_errors = 0;
            }
        }
        let run = run.clone();
        let result = m.result;
        let detail = summary(&m);
        self.measurements.push(m.clone());
        if self.measurements.len() > KEEP_MEASUREMENTS {
            self.measurements.remove(0);
        }
        a.push(Action::Recorded(m));
        let which = if background {
            "background analysis"
        } else {
            "analysis"
        };
        if critical {
            return self.abort(
                "analysis_failed",
                "engine",
                format!("{which} `{}`: a critical check failed ({detail})", run.gate),
                now,
                a,
            );
        }
        if result == Outcome::Failed
            && (run.failures > gate.failure_limit
                || (gate.consecutive_failure_limit > 0
                    && run.consecutive_failures >= gate.consecutive_failure_limit))
        {
            return self.abort(
                "analysis_failed",
                "engine",
                format!(
                    "{which} `{}` failed {} time(s), limit {} ({detail})",
                    run.gate, run.failures, gate.failure_limit
                ),
                now,
                a,
            );
        }
        if result == Outcome::Errored && run.consecutive_errors >= gate.error_limit {
            return self.pause(
                PauseReason::AnalysisError,
                "engine",
                format!(
                    "{which} `{}`: {} errored measurements in a row ({detail})",
                    run.gate, run.consecutive_errors
                ),
                now,
                a,
            );
        }
        if result == Outcome::Inconclusive
            && run.inconclusive > gate.inconclusive_limit
            && gate.on_inconclusive == OnInconclusive::Pause
        {
            return self.pause(
                PauseReason::Inconclusive,
                "engine",
                format!(
                    "{which} `{}`: {} inconclusive measurements, limit {} ({detail})",
                    run.gate, run.inconclusive, gate.inconclusive_limit
                ),
                now,
                a,
            );
        }
        if self.phase == Phase::Progressing {
            self.tick(spec, now, a, f);
        }
    }
}

/// An inline gate passes once `count` measurements were conclusive (passed, or failed
/// within the limits), or — with `on_inconclusive: continue` — once inconclusive ones ran
/// past their limit with nothing failed. No data alone never passes a gate otherwise.
fn gate_done(run: &GateRun, gate: &Gate) -> bool {
    run.passed + run.failures >= gate.count
        || (gate.on_inconclusive == OnInconclusive::Continue
            && run.failures == 0
            && run.inconclusive > gate.inconclusive_limit)
}

fn summary(m: &Measurement) -> String {
    let bad: Vec<String> = m
        .checks
        .iter()
        .filter(|c| c.result != Outcome::Passed)
        .map(|c| format!("{}: {}", c.check, c.message))
        .collect();
    if bad.is_empty() {
        format!("{:?}", m.result).to_lowercase()
    } else {
        bad.join("; ")
    }
}

#[cfg(test)]
mod tests;
