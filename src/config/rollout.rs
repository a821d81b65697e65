//! The validated `routes[].rollout` block: the steps a canary walks, the analysis gates that
//! judge it, and the limits that decide when a gate fails, errs or cannot tell.
//!
//! The engine that walks these steps is [`crate::rollout`]; here is only what the file says,
//! checked, with every default filled in.

use super::{RuleConfig, Weight};
use std::collections::BTreeMap;
use std::time::Duration;

/// `routes[].rollout`. (Not `PartialEq`: rules hold compiled regexes; compare steps with
/// [`RolloutSpec::steps_fingerprint`].)
#[derive(Debug, Clone)]
pub struct RolloutSpec {
    /// A new id starts a new rollout; the same id with the same steps resumes.
    pub id: String,
    /// Index (in the route's versions) of the version the rollout drives; never 0.
    pub canary: usize,
    /// At least one step. After the last: promotion (the canary takes 100 %, other
    /// non-primary versions 0).
    pub steps: Vec<Step>,
    /// Gate (a key of `analysis`) measured from the first step until the end; a failure
    /// aborts the rollout wherever it is.
    pub background_analysis: Option<String>,
    pub analysis: BTreeMap<String, Gate>,
}

/// One step of a rollout.
#[derive(Debug, Clone)]
pub enum Step {
    /// The canary's share, with the weights' 0.01 resolution.
    SetWeight(Weight),
    /// Wait this long, or (`None`, written `pause: {}`) until promoted.
    Pause(Option<Duration>),
    /// A blocking gate: a key of `analysis`.
    Analysis(String),
    /// A header route managed by the rollout: requests matching `rule` go to the canary
    /// (`rule.to` is the canary). Removed when the rollout aborts, completes or is cancelled.
    SetHeaderRoute { name: String, rule: RuleConfig },
}

/// One analysis gate (`rollout.analysis.<name>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// Time between measurements.
    pub interval: Duration,
    /// What one measurement covers: the last `window` (1 s to 10 min, whole seconds).
    pub window: Duration,
    /// Wait this long after the gate starts before the first measurement.
    pub initial_delay: Duration,
    /// Measurements an inline gate needs before it passes.
    pub count: u32,
    /// Per version per window; fewer and the measurement is inconclusive.
    pub min_requests: u64,
    /// At least one.
    pub checks: Vec<Check>,
    /// The gate fails when failed measurements exceed this.
    pub failure_limit: u32,
    /// …or after this many failed measurements in a row (0: no such limit).
    pub consecutive_failure_limit: u32,
    /// This many errored measurements in a row pause the rollout (`analysis_error`).
    pub error_limit: u32,
    /// Inconclusive measurements past this pause the rollout (`inconclusive`), or with
    /// `on_inconclusive: continue` let the gate pass when nothing failed.
    pub inconclusive_limit: u32,
    pub on_inconclusive: OnInconclusive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInconclusive {
    Pause,
    Continue,
}

/// One check of a gate; `critical` aborts the rollout at the first failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub kind: CheckKind,
    pub critical: bool,
    /// Overrides the gate's `min_requests` for this check.
    pub min_requests: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// Canary success rate (percent): at least `min`, and at most `max_drop_vs_primary`
    /// percentage points below the primary's (default: `analysis.max_success_rate_drop`).
    SuccessRate {
        min: Option<f64>,
        max_drop_vs_primary: Option<f64>,
    },
    /// Canary p99: at most `max`, and at most `max_ratio_vs_primary` × the primary's p99
    /// unless the difference is under `analysis.latency_floor` (default ratio:
    /// `analysis.max_p99_ratio`).
    LatencyP99 {
        max: Option<Duration>,
        max_ratio_vs_primary: Option<f64>,
    },
    /// An instant query to a Prometheus server (`/api/v1/query`); its single value must lie
    /// within `min`..=`max`. `{{route}}`, `{{canary}}`, `{{primary}}` and `{{window}}` in the
    /// query are replaced.
    Prometheus {
        url: String,
        query: String,
        min: Option<f64>,
        max: Option<f64>,
        timeout: Duration,
    },
    /// A judge (a person's service or an AI agent) that reads the evidence and answers
    /// `{promote, confidence, analysis}`; `promote: false` fails, `promote: true` below
    /// `min_confidence` is inconclusive.
    Webhook {
        url: String,
        min_confidence: f64,
        timeout: Duration,
    },
}

impl RolloutSpec {
    /// A stable fingerprint of the steps: the same id with other steps is an edited rollout.
    pub fn steps_fingerprint(&self) -> u64 {
        // FNV-1a over the Debug form: stable across runs (std's hasher is not promised to be),
        // which is what a state file needs.
        let mut f: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("{:?}", self.steps).bytes() {
            f ^= u64::from(b);
            f = f.wrapping_mul(0x0000_0100_0000_01b3);
        }
        f
    }
}
