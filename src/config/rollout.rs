//! The validated `routes[].rollout` block: the steps a canary walks, the analysis gates that
//! judge it, and the limits that decide when a gate fails, errs or cannot tell.
//!
//! The engine that walks these steps is [`crate::rollout`]; here is only what the file says,
//! checked, with every default filled in: the types first, then `validate_rollout`, which
//! `validate` calls for each route's `rollout` block.

use super::raw::{
    RawCheck, RawGate, RawHeaderRoute, RawPause, RawRollout, RawRule, RawStep, RawStepShorthand,
    RawSteps,
};
use super::validate::{check_label_name, duration_or, parse_duration, parse_percent};
use super::{Errors, RuleConfig, VersionConfig, WEIGHT_SCALE, Weight, validate_rule};
use std::collections::{BTreeMap, HashMap};
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
    /// A mirror managed by the rollout (Argo's setMirrorRoute), removed with its header
    /// routes.
    SetMirrorRoute {
        name: String,
        mirror: Box<super::MirrorConfig>,
    },
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
    /// Whose numbers the canary is judged by.
    pub source: GateSource,
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

/// `source:` of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GateSource {
    /// The canary's own traffic.
    #[default]
    Live,
    /// The canary as a shadow: its mirror window (the primary stays live).
    Mirror,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// The share (0 to 1) of compared mirror pairs that differed in the window: at most
    /// `max`. `min_requests` counts compared pairs.
    DiffRate { max: f64 },
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
        // Over the Debug form, with the stable hash a state file needs.
        let text = format!("{:?}", self.steps);
        crate::hash::fnv(crate::hash::FNV_OFFSET, text.as_bytes())
    }
}

// Defaults of a gate (`rollout.analysis.<name>`); `min_requests` defaults to the top-level
// `analysis.min_requests`.
const DEFAULT_GATE_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_GATE_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_GATE_COUNT: u32 = 3;
const DEFAULT_ERROR_LIMIT: u32 = 4;
const DEFAULT_PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_WINDOW: Duration = Duration::from_secs(600);

/// Validate `routes[i].rollout` (`field`) against the route's validated `versions`.
/// `default_min_requests` is the top-level `analysis.min_requests`. Every problem goes to
/// `errs`; the spec is returned only when there was none. `proxy.state_file` and the
/// uniqueness of ids across routes are checked by the caller, which sees the whole file.
pub(super) fn validate_rollout(
    raw: &RawRollout,
    versions: &[VersionConfig],
    default_min_requests: u64,
    field: &str,
    errs: &mut Errors,
) -> Option<RolloutSpec> {
    let before = errs.0.len();
    if let Err(m) = check_rollout_id(&raw.id) {
        errs.push(format!("{field}.id"), m);
    }
    let canary = resolve_canary(raw.canary.as_deref(), versions, field, errs);

    // Gate names as written, valid or not, so a gate with a bad value is not also reported
    // as unknown wherever a step names it.
    let mut gate_names: Vec<&str> = Vec::new();
    for (k, _) in raw.analysis.iter().flat_map(|m| &m.0) {
        if !gate_names.contains(&k.as_str()) {
            gate_names.push(k);
        }
    }
    let mut analysis = BTreeMap::new();
    if let Some(gates) = &raw.analysis {
        for (name, g) in &gates.0 {
            let gf = format!("{field}.analysis.{name}");
            let gate = validate_gate(g, default_min_requests, &gf, errs);
            if analysis.insert(name.clone(), gate).is_some() {
                errs.push(gf, format!("gate `{name}` is defined twice"));
            }
        }
    }
    if let Some(b) = &raw.background_analysis {
        check_gate_ref(
            b,
            &gate_names,
            &format!("{field}.background_analysis"),
            errs,
        );
    }

    let steps = match &raw.steps {
        None => {
            errs.push(
                format!("{field}.steps"),
                "is required: list at least one step, or write { step_weight, max_weight, interval }",
            );
            Vec::new()
        }
        Some(RawSteps::List(list)) => {
            if list.is_empty() {
                errs.push(
                    format!("{field}.steps"),
                    "is empty; list at least one step (set_weight, pause, analysis, set_header_route)",
                );
            }
            validate_steps(list, versions, canary, &gate_names, field, errs)
        }
        Some(RawSteps::Shorthand(sh)) => {
            if raw.background_analysis.is_none() {
                errs.push(
                    format!("{field}.steps"),
                    "the { step_weight, max_weight, interval } shorthand has no analysis step, so it \
                     needs background_analysis (a key of rollout.analysis) to judge the canary; set it, \
                     or write the steps as a list",
                );
            }
            expand_shorthand(sh, &format!("{field}.steps"), errs)
        }
    };

    match canary {
        Some(canary) if errs.0.len() == before => Some(RolloutSpec {
            id: raw.id.clone(),
            canary,
            steps,
            background_analysis: raw.background_analysis.clone(),
            analysis,
        }),
        _ => None,
    }
}

/// `[a-z0-9._-]`, 1 to 63 characters: the id is a key of the state file.
fn check_rollout_id(id: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&id.len())
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "rollout id `{id}` is not allowed; use 1 to 63 characters from a-z, 0-9, `.`, `_` and `-`"
        ))
    }
}

/// Index of the version the rollout drives: `canary` if given, else the second version.
fn resolve_canary(
    name: Option<&str>,
    versions: &[VersionConfig],
    field: &str,
    errs: &mut Errors,
) -> Option<usize> {
    if versions.len() < 2 {
        errs.push(
            field,
            "a rollout needs at least two versions: the primary (listed first) and the canary it drives",
        );
        return None;
    }
    let Some(name) = name else {
        return Some(1);
    };
    let others: Vec<&str> = versions[1..].iter().map(|v| v.name.as_str()).collect();
    match versions.iter().position(|v| v.name == name) {
        Some(0) => {
            errs.push(
                format!("{field}.canary"),
                format!(
                    "`{name}` is the primary (listed first) and cannot be the canary; use one of: {}",
                    others.join(", ")
                ),
            );
            None
        }
        Some(i) => Some(i),
        None => {
            errs.push(
                format!("{field}.canary"),
                format!(
                    "unknown version `{name}`; this route's non-primary versions are: {}",
                    others.join(", ")
                ),
            );
            None
        }
    }
}

fn check_gate_ref(name: &str, gates: &[&str], field: &str, errs: &mut Errors) {
    if gates.contains(&name) {
        return;
    }
    let known = if gates.is_empty() {
        "rollout.analysis defines no gates".to_string()
    } else {
        format!("rollout.analysis has: {}", gates.join(", "))
    };
    errs.push(field, format!("unknown gate `{name}`; {known}"));
}

fn validate_steps(
    list: &[RawStep],
    versions: &[VersionConfig],
    canary: Option<usize>,
    gates: &[&str],
    field: &str,
    errs: &mut Errors,
) -> Vec<Step> {
    let mut steps = Vec::with_capacity(list.len());
    let mut header_routes: HashMap<&str, usize> = HashMap::new();
    for (i, raw) in list.iter().enumerate() {
        let sf = format!("{field}.steps[{i}]");
        match raw {
            RawStep::SetWeight(p) => match Weight::from_percent(*p) {
                Ok(w) => steps.push(Step::SetWeight(w)),
                Err(m) => errs.push(format!("{sf}.set_weight"), m),
            },
            RawStep::Pause(RawPause::Duration(s)) => {
                if let Some(d) = parse_duration(s, &format!("{sf}.pause"), errs) {
                    steps.push(Step::Pause(Some(d)));
                }
            }
            RawStep::Pause(RawPause::Map { duration: Some(s) }) => {
                if let Some(d) = parse_duration(s, &format!("{sf}.pause.duration"), errs) {
                    steps.push(Step::Pause(Some(d)));
                }
            }
            RawStep::Pause(RawPause::Map { duration: None }) => steps.push(Step::Pause(None)),
            RawStep::Analysis(name) => {
                check_gate_ref(name, gates, &format!("{sf}.analysis"), errs);
                steps.push(Step::Analysis(name.clone()));
            }
            RawStep::SetHeaderRoute(h) => {
                let hf = format!("{sf}.set_header_route");
                match header_routes.get(h.name.as_str()) {
                    Some(j) => errs.push(
                        format!("{hf}.name"),
                        format!(
                            "header route `{}` is already set by steps[{j}]; names must be unique within a rollout",
                            h.name
                        ),
                    ),
                    None => {
                        header_routes.insert(&h.name, i);
                    }
                }
                if let Some(step) = validate_header_route(h, versions, canary, &hf, errs) {
                    steps.push(step);
                }
            }
            RawStep::SetMirrorRoute(m) => {
                let mf = format!("{sf}.set_mirror_route");
                // Header and mirror routes are the rollout's managed routes: one namespace.
                match header_routes.get(m.name.as_str()) {
                    Some(j) => errs.push(
                        format!("{mf}.name"),
                        format!(
                            "managed route `{}` is already set by steps[{j}]; names must be unique within a rollout",
                            m.name
                        ),
                    ),
                    None => {
                        header_routes.insert(&m.name, i);
                    }
                }
                let to =
                    m.to.clone()
                        .or_else(|| canary.and_then(|c| versions.get(c)).map(|v| v.name.clone()))
                        .unwrap_or_default();
                let raw = crate::config::raw::RawMirror {
                    to,
                    percent: m.percent,
                    when: m.when.clone(),
                    methods: m.methods.clone(),
                    ..Default::default()
                };
                if let Some(mirror) =
                    super::validate::validate_mirror(&raw, Some(&m.name), versions, &mf, errs)
                {
                    steps.push(Step::SetMirrorRoute {
                        name: m.name.clone(),
                        mirror: Box::new(mirror),
                    });
                }
            }
        }
    }
    steps
}

/// `set_header_route`: its `when` is a rule's `when`, checked by [`validate_rule`] with the
/// canary as `to`.
fn validate_header_route(
    h: &RawHeaderRoute,
    versions: &[VersionConfig],
    canary: Option<usize>,
    field: &str,
    errs: &mut Errors,
) -> Option<Step> {
    let name_ok = match check_label_name(&h.name, "header route name") {
        Ok(()) => true,
        Err(m) => {
            errs.push(format!("{field}.name"), m);
            false
        }
    };
    // Without a resolved canary (already reported) the conditions are still checked, against
    // any version, so their errors show up in the same run.
    let to = canary.or(if versions.is_empty() { None } else { Some(0) })?;
    let rule = RawRule {
        name: None,
        to: versions[to].name.clone(),
        when: h.when.clone(),
    };
    let mut rule = validate_rule(&rule, versions, field, errs)?;
    rule.name = Some(h.name.clone());
    name_ok.then_some(Step::SetHeaderRoute {
        name: h.name.clone(),
        rule,
    })
}

/// Flagger's `{ step_weight: S, max_weight: M, interval: I }`: `set_weight k·S, pause I` for
/// k = 1, 2, … while k·S ≤ M.
fn expand_shorthand(sh: &RawStepShorthand, field: &str, errs: &mut Errors) -> Vec<Step> {
    let positive = |p: f64, f: String, errs: &mut Errors| match Weight::from_percent(p) {
        Ok(Weight(0)) => {
            errs.push(f, "must be greater than 0 (a percentage up to 100)");
            None
        }
        Ok(w) => Some(w),
        Err(m) => {
            errs.push(f, m);
            None
        }
    };
    let step = positive(sh.step_weight, format!("{field}.step_weight"), errs);
    let max = positive(sh.max_weight, format!("{field}.max_weight"), errs);
    let interval = parse_duration(&sh.interval, &format!("{field}.interval"), errs);
    let (Some(step), Some(max), Some(interval)) = (step, max, interval) else {
        return Vec::new();
    };
    if step > max {
        errs.push(
            format!("{field}.step_weight"),
            format!("{step}% is more than max_weight {max}%; use a step of at most max_weight"),
        );
        return Vec::new();
    }
    debug_assert!(max.0 <= WEIGHT_SCALE);
    let mut steps = Vec::new();
    let mut w = step.0;
    while w <= max.0 {
        steps.push(Step::SetWeight(Weight(w)));
        steps.push(Step::Pause(Some(interval)));
        w += step.0;
    }
    steps
}

fn validate_gate(raw: &RawGate, default_min_requests: u64, field: &str, errs: &mut Errors) -> Gate {
    let f = |name: &str| format!("{field}.{name}");
    let interval = duration_or(&raw.interval, &f("interval"), DEFAULT_GATE_INTERVAL, errs);
    if interval < Duration::from_secs(1) {
        errs.push(
            f("interval"),
            format!(
                "{} is too short; measure at most once a second (1s or more)",
                humantime::format_duration(interval)
            ),
        );
    }
    let window = duration_or(&raw.window, &f("window"), DEFAULT_GATE_WINDOW, errs);
    if window < Duration::from_secs(1) || window > MAX_WINDOW || window.subsec_nanos() != 0 {
        errs.push(
            f("window"),
            format!(
                "{} is not allowed; use whole seconds from 1s to 10m",
                humantime::format_duration(window)
            ),
        );
    }
    let initial_delay = match &raw.initial_delay {
        None => Duration::ZERO,
        // Unlike other durations, 0s is allowed: it is the default.
        Some(s) => humantime::parse_duration(s).unwrap_or_else(|e| {
            errs.push(
                f("initial_delay"),
                format!("`{s}` is not a duration ({e}); write e.g. 0s, 30s, 1m"),
            );
            Duration::ZERO
        }),
    };
    let at_least_one = |v: Option<u32>, name: &str, default: u32, errs: &mut Errors| match v {
        Some(0) => {
            errs.push(f(name), "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let count = at_least_one(raw.count, "count", DEFAULT_GATE_COUNT, errs);
    let error_limit = at_least_one(raw.error_limit, "error_limit", DEFAULT_ERROR_LIMIT, errs);
    let min_requests = match raw.min_requests {
        Some(0) => {
            errs.push(f("min_requests"), "must be at least 1");
            default_min_requests
        }
        Some(n) => n,
        None => default_min_requests,
    };
    if raw.checks.is_empty() {
        errs.push(
            f("checks"),
            "at least one check is required: success_rate, latency_p99, prometheus, webhook or diff_rate",
        );
    }
    let checks = raw
        .checks
        .iter()
        .enumerate()
        .map(|(i, c)| validate_check(c, &format!("{field}.checks[{i}]"), errs))
        .collect();
    let on_inconclusive = match raw.on_inconclusive.as_deref() {
        None | Some("pause") => OnInconclusive::Pause,
        Some("continue") => OnInconclusive::Continue,
        Some(other) => {
            errs.push(
                f("on_inconclusive"),
                format!("`{other}` is not allowed; use pause (the default) or continue"),
            );
            OnInconclusive::Pause
        }
    };
    let source = match raw.source.as_deref() {
        None | Some("live") => GateSource::Live,
        Some("mirror") => GateSource::Mirror,
        Some(other) => {
            errs.push(
                f("source"),
                format!("`{other}` is not allowed; use live (the default) or mirror"),
            );
            GateSource::Live
        }
    };
    Gate {
        source,
        interval,
        window,
        initial_delay,
        count,
        min_requests,
        checks,
        failure_limit: raw.failure_limit.unwrap_or(0),
        consecutive_failure_limit: raw.consecutive_failure_limit.unwrap_or(0),
        error_limit,
        inconclusive_limit: raw.inconclusive_limit.unwrap_or(0),
        on_inconclusive,
    }
}

/// `field` is `…checks[i]`; the fields of a check are under its kind, as in the file
/// (`…checks[0].success_rate.min`).
fn validate_check(raw: &RawCheck, field: &str, errs: &mut Errors) -> Check {
    let (kind, critical, min_requests) = match raw {
        RawCheck::SuccessRate(c) => {
            let f = format!("{field}.success_rate");
            let min = c
                .min
                .and_then(|p| parse_percent(p, &format!("{f}.min"), errs));
            let max_drop_vs_primary = c.max_drop_vs_primary.filter(|d| {
                let ok = d.is_finite() && *d >= 0.0;
                if !ok {
                    errs.push(
                        format!("{f}.max_drop_vs_primary"),
                        format!("must be a number of percentage points, 0 or more (got {d})"),
                    );
                }
                ok
            });
            let kind = CheckKind::SuccessRate {
                min,
                max_drop_vs_primary,
            };
            (
                kind,
                c.critical,
                check_min_requests(c.min_requests, &f, errs),
            )
        }
        RawCheck::LatencyP99(c) => {
            let f = format!("{field}.latency_p99");
            let max = c
                .max
                .as_deref()
                .and_then(|s| parse_duration(s, &format!("{f}.max"), errs));
            let max_ratio_vs_primary = c.max_ratio_vs_primary.filter(|r| {
                let ok = r.is_finite() && *r > 0.0;
                if !ok {
                    errs.push(
                        format!("{f}.max_ratio_vs_primary"),
                        format!("must be a ratio greater than 0, e.g. 1.25 (got {r})"),
                    );
                }
                ok
            });
            let kind = CheckKind::LatencyP99 {
                max,
                max_ratio_vs_primary,
            };
            (
                kind,
                c.critical,
                check_min_requests(c.min_requests, &f, errs),
            )
        }
        RawCheck::Prometheus(c) => {
            let f = format!("{field}.prometheus");
            check_http_url(&c.url, &format!("{f}.url"), "http://prometheus:9090", errs);
            if c.query.trim().is_empty() {
                errs.push(
                    format!("{f}.query"),
                    "is empty; write a PromQL instant query that returns one value",
                );
            }
            let finite = |v: Option<f64>, name: &str, errs: &mut Errors| {
                v.filter(|x| {
                    if !x.is_finite() {
                        errs.push(format!("{f}.{name}"), format!("must be a number (got {x})"));
                    }
                    x.is_finite()
                })
            };
            let min = finite(c.min, "min", errs);
            let max = finite(c.max, "max", errs);
            match (c.min, c.max) {
                (None, None) => errs.push(
                    &f,
                    "needs a bound: set `min`, `max` or both (the query's value must lie within them)",
                ),
                (Some(lo), Some(hi)) if lo > hi => errs.push(
                    format!("{f}.min"),
                    format!("{lo} is more than max {hi}; no value could pass"),
                ),
                _ => {}
            }
            let timeout = duration_or(
                &c.timeout,
                &format!("{f}.timeout"),
                DEFAULT_PROMETHEUS_TIMEOUT,
                errs,
            );
            let kind = CheckKind::Prometheus {
                url: c.url.clone(),
                query: c.query.clone(),
                min,
                max,
                timeout,
            };
            (
                kind,
                c.critical,
                check_min_requests(c.min_requests, &f, errs),
            )
        }
        RawCheck::DiffRate(c) => {
            let f = format!("{field}.diff_rate");
            if !(0.0..=1.0).contains(&c.max) {
                errs.push(
                    format!("{f}.max"),
                    format!(
                        "must be a share from 0 to 1, e.g. 0.1 for 10 % (got {})",
                        c.max
                    ),
                );
            }
            (
                CheckKind::DiffRate { max: c.max },
                c.critical,
                check_min_requests(c.min_requests, &f, errs),
            )
        }
        RawCheck::Webhook(c) => {
            let f = format!("{field}.webhook");
            check_http_url(
                &c.url,
                &format!("{f}.url"),
                "http://judge/a2a/analyze",
                errs,
            );
            let min_confidence = c
                .min_confidence
                .and_then(|p| parse_percent(p, &format!("{f}.min_confidence"), errs))
                .unwrap_or(0.0);
            let timeout = duration_or(
                &c.timeout,
                &format!("{f}.timeout"),
                DEFAULT_WEBHOOK_TIMEOUT,
                errs,
            );
            let kind = CheckKind::Webhook {
                url: c.url.clone(),
                min_confidence,
                timeout,
            };
            (
                kind,
                c.critical,
                check_min_requests(c.min_requests, &f, errs),
            )
        }
    };
    Check {
        kind,
        critical,
        min_requests,
    }
}

fn check_min_requests(v: Option<u64>, field: &str, errs: &mut Errors) -> Option<u64> {
    match v {
        Some(0) => {
            errs.push(format!("{field}.min_requests"), "must be at least 1");
            None
        }
        v => v,
    }
}

/// An absolute `http://` or `https://` URL with a host.
fn check_http_url(url: &str, field: &str, example: &str, errs: &mut Errors) {
    let ok = url.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    });
    if !ok {
        errs.push(
            field,
            format!("`{url}` is not an http:// or https:// URL; write e.g. {example}"),
        );
    }
}
