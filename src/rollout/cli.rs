//! `canaryd rollout`: drive and watch a rollout through a running canaryd's admin API
//! (`get`, the verbs, `status --wait` for CI pipelines), and `plan`, the timeline of a config
//! file's rollouts worked out from the file alone.
//!
//! The arguments are declared here (clap derive) so `main.rs` only embeds them; [`run`] does
//! the work and picks the exit code: 0 done, 1 an error or an aborted rollout, 2 a
//! `status --wait` that ran out of time (or whose rollout was superseded).
//!
//! Answers are read into this module's own lenient mirror of the API's `RolloutView`
//! (missing fields default, unknown ones are ignored), so a CLI and a server of neighbouring
//! versions still understand each other.

use super::http;
use crate::config::{Check, CheckKind, Config, Gate, RolloutSpec, RouteConfig, Step};
use ::http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where the admin API is when neither `--admin` nor `CANARYD_ADMIN` says.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9901";
/// Environment variable holding the admin API's bearer token.
pub const TOKEN_ENV: &str = "CANARYD_ADMIN_TOKEN";
/// How often `status --wait` asks.
const POLL: Duration = Duration::from_secs(1);
/// Longest wait for one admin API answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Measurements and transitions `get` shows (the most recent).
const SHOW_LAST: usize = 5;

/// The admin API to talk to.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Admin API of the canaryd running the rollout (`host:port` or a URL).
    #[arg(long, env = "CANARYD_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: String,
}

/// `canaryd rollout …`. A token, when the admin API wants one, comes from
/// `CANARYD_ADMIN_TOKEN`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RolloutCommand {
    /// Show a route's rollout: phase, steps, weights, pause, measurements, transitions.
    Get {
        route: String,
        /// Print the API's JSON as it came.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// End the pause or gate the rollout waits at; `--full` skips every remaining step.
    Promote {
        route: String,
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Roll back: the canary goes to 0 %.
    Abort {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Start an aborted (or edited) rollout again from step 0.
    Retry {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hold the rollout where it is.
    Pause {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Continue a paused rollout; `--step N` moves it to step N (counted from 0) first.
    Resume {
        route: String,
        #[arg(long)]
        step: Option<usize>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the phase. With `--wait` (for CI): follow the rollout, print each phase change,
    /// exit 0 when it succeeds, 1 when it is aborted, 2 on timeout or when superseded.
    Status {
        route: String,
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits, e.g. `30s`, `10m`, `1h`.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The timeline of every route's rollout in a config file, from the file alone.
    Plan { file: PathBuf },
}

/// Run one `canaryd rollout` command; the process's exit code.
pub fn run(cmd: RolloutCommand) -> ExitCode {
    if let RolloutCommand::Plan { file } = &cmd {
        return match Config::from_file(file) {
            Ok(cfg) => {
                print!("{}", plan(&cfg));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {} error(s)", file.display(), e.errors.len());
                for err in &e.errors {
                    eprintln!("  {err}");
                }
                ExitCode::FAILURE
            }
        };
    }
    let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("canaryd rollout: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    ExitCode::from(rt.block_on(remote(cmd, token)))
}

async fn remote(cmd: RolloutCommand, token: Option<String>) -> u8 {
    let (verb, route, admin, body) = match cmd {
        RolloutCommand::Plan { .. } => unreachable!("plan is handled before"),
        RolloutCommand::Get { route, json, admin } => {
            let api = Api::new(&admin.admin, token);
            return match api.rollout(&route).await {
                Ok(v) => {
                    if json {
                        println!("{}", pretty(&v));
                    } else {
                        print!("{}", summary(&v));
                    }
                    0
                }
                Err(f) => fail(&format!("get {route}"), &f),
            };
        }
        RolloutCommand::Status {
            route,
            wait,
            timeout,
            admin,
        } => {
            let api = Api::new(&admin.admin, token);
            return if wait {
                wait_for(&api, &route, timeout).await
            } else {
                match api.rollout(&route).await {
                    Ok(v) => {
                        println!("{}", phase_line(&view(&v)));
                        0
                    }
                    Err(f) => fail(&format!("status {route}"), &f),
                }
            };
        }
        RolloutCommand::Promote { route, full, admin } => (
            "promote",
            route,
            admin,
            full.then(|| serde_json::json!({ "full": true })),
        ),
        RolloutCommand::Abort { route, admin } => ("abort", route, admin, None),
        RolloutCommand::Retry { route, admin } => ("retry", route, admin, None),
        RolloutCommand::Pause { route, admin } => ("pause", route, admin, None),
        RolloutCommand::Resume { route, step, admin } => (
            "resume",
            route,
            admin,
            step.map(|s| serde_json::json!({ "step": s })),
        ),
    };
    let api = Api::new(&admin.admin, token);
    match api.verb(&route, verb, body).await {
        Ok(v) => {
            print!("{}", summary(&v));
            0
        }
        Err(f) => fail(&format!("{verb} {route}"), &f),
    }
}

/// Print `canaryd rollout <what>: <problem>` on one line; exit code 1.
fn fail(what: &str, f: &Failure) -> u8 {
    eprintln!("canaryd rollout {what}: {f}");
    1
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

// ---------------------------------------------------------------------------------------------
// The admin API

/// A running canaryd's admin API.
struct Api {
    base: String,
    token: Option<String>,
}

/// Why a call gave no rollout.
#[derive(Debug)]
enum Failure {
    /// No answer at all (connection refused, timeout, bad URL).
    Unreachable { base: String, error: String },
    /// An answer other than 200: the API's `error` text and, on a 409, the verbs that apply.
    Refused {
        status: StatusCode,
        error: String,
        verbs: Option<Vec<String>>,
        token_set: bool,
    },
    /// A 200 that is not a rollout.
    BadAnswer(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable { base, error } => write!(
                f,
                "cannot reach the admin API at {base} ({error}); is canaryd running with an admin listener there? (--admin or CANARYD_ADMIN)"
            ),
            Failure::Refused {
                status,
                error,
                verbs,
                token_set,
            } => {
                match *status {
                    StatusCode::NOT_FOUND => write!(f, "not found: {error}")?,
                    StatusCode::CONFLICT => write!(f, "refused: {error}")?,
                    StatusCode::UNAUTHORIZED if *token_set => write!(
                        f,
                        "the admin API refused the token in {TOKEN_ENV} ({error})"
                    )?,
                    StatusCode::UNAUTHORIZED => {
                        write!(f, "the admin API wants a token: set {TOKEN_ENV} ({error})")?
                    }
                    s => write!(f, "{s}: {error}")?,
                }
                // The API's text usually names them already; say it once.
                match verbs.as_deref() {
                    Some([]) => write!(f, " (no verb applies now)"),
                    Some(v) if !error.contains(&v.join(", ")) => {
                        write!(f, " (verbs that apply now: {})", v.join(", "))
                    }
                    _ => Ok(()),
                }
            }
            Failure::BadAnswer(e) => write!(f, "the admin API's answer is not a rollout: {e}"),
        }
    }
}

impl Api {
    fn new(admin: &str, token: Option<String>) -> Api {
        let admin = admin.trim().trim_end_matches('/');
        let base = if admin.contains("://") {
            admin.to_string()
        } else {
            format!("http://{admin}")
        };
        Api { base, token }
    }

    async fn rollout(&self, route: &str) -> Result<Value, Failure> {
        self.rollout_within(route, CALL_TIMEOUT).await
    }

    async fn rollout_within(&self, route: &str, timeout: Duration) -> Result<Value, Failure> {
        let path = format!("/api/v1/routes/{}/rollout", http::encode(route));
        self.call(Method::GET, &path, None, timeout).await
    }

    async fn verb(&self, route: &str, verb: &str, body: Option<Value>) -> Result<Value, Failure> {
        let path = format!("/api/v1/routes/{}/rollout/{verb}", http::encode(route));
        let body = Some(body.unwrap_or_else(|| serde_json::json!({})));
        self.call(Method::POST, &path, body, CALL_TIMEOUT).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, answer) = http::call(method, &url, body, self.token.as_deref(), timeout)
            .await
            .map_err(|error| Failure::Unreachable {
                base: self.base.clone(),
                // hyper-util's wrapper says nothing a user needs.
                error: error
                    .trim_start_matches("client error (Connect): ")
                    .to_string(),
            })?;
        let json: Option<Value> = serde_json::from_slice(&answer).ok();
        if status == StatusCode::OK {
            return match json {
                Some(v) if v.get("phase").is_some() => Ok(v),
                _ => Err(Failure::BadAnswer(
                    String::from_utf8_lossy(&answer).chars().take(200).collect(),
                )),
            };
        }
        let error = json
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&answer);
                let text = text.trim();
                if text.is_empty() {
                    format!("{url} answered {status}")
                } else {
                    text.chars().take(200).collect()
                }
            });
        let verbs = json.as_ref().and_then(|v| v["verbs"].as_array()).map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        });
        Err(Failure::Refused {
            status,
            error,
            verbs,
            token_set: self.token.is_some(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// `status --wait`

/// Follow the rollout until it ends or `timeout` passes: 0 succeeded, 1 aborted (or an error
/// before anything could be followed, or the rollout disappeared), 2 timeout or superseded.
/// Once following, an unreachable admin API (a restart) is retried until the timeout.
async fn wait_for(api: &Api, route: &str, timeout: Duration) -> u8 {
    let deadline = Instant::now() + timeout;
    let what = format!("status {route}");
    let first = match api.rollout(route).await {
        Ok(v) => view(&v),
        Err(f) => return fail(&what, &f),
    };
    println!("{}  {}", clock(now_ms()), phase_line(&first));
    let id = first.id.clone();
    let mut last = first;
    let mut unreachable = false;
    loop {
        match last.phase.as_str() {
            "succeeded" => {
                println!("rollout {id} of route {route} succeeded");
                return 0;
            }
            "aborted" => {
                println!(
                    "rollout {id} of route {route} was aborted: {}",
                    last.message
                );
                return 1;
            }
            "superseded" => {
                eprintln!("canaryd rollout {what}: rollout {id} was superseded");
                return 2;
            }
            _ => {}
        }
        let now = Instant::now();
        if now >= deadline {
            eprintln!(
                "canaryd rollout {what}: timed out after {}: rollout {id} is still {}",
                humantime::format_duration(timeout),
                phase_line(&last)
            );
            return 2;
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
        let within = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_secs(1), CALL_TIMEOUT);
        let next = match api.rollout_within(route, within).await {
            Ok(v) => view(&v),
            Err(f @ Failure::Unreachable { .. }) => {
                if !unreachable {
                    eprintln!("canaryd rollout {what}: {f}; retrying until the timeout");
                }
                unreachable = true;
                continue;
            }
            Err(f) => return fail(&what, &f),
        };
        unreachable = false;
        if next.id != id {
            eprintln!(
                "canaryd rollout {what}: rollout {id} was superseded by rollout {} (a new id in the config)",
                next.id
            );
            return 2;
        }
        for t in new_transitions(&last.history, &next.history) {
            println!(
                "{}  {} at step {}/{}: {} (by {})",
                clock(t.at),
                phase_and_reason(&t.to, t.reason.as_deref()),
                t.step,
                next.steps_total,
                t.message,
                t.by
            );
        }
        if next.step != last.step && next.phase == last.phase {
            println!(
                "{}  {} at step {}/{}",
                clock(now_ms()),
                phase_and_reason(&next.phase, next.reason.as_deref()),
                next.step,
                next.steps_total
            );
        }
        last = next;
    }
}

/// The transitions in `new` after the last one of `old`.
fn new_transitions<'a>(old: &[TransitionV], new: &'a [TransitionV]) -> &'a [TransitionV] {
    let Some(seen) = old.last() else {
        return new;
    };
    match new.iter().rposition(|t| t == seen) {
        Some(i) => &new[i + 1..],
        // The history was trimmed past it: everything later than it.
        None => {
            let from = new.iter().position(|t| t.at > seen.at).unwrap_or(new.len());
            &new[from..]
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What `get` and the verbs print

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct View {
    route: String,
    id: String,
    primary: String,
    canary: String,
    phase: String,
    reason: Option<String>,
    message: String,
    step: usize,
    steps_total: usize,
    steps: Vec<StepV>,
    set_weight: f64,
    actual_weight: Option<f64>,
    pause_remaining_seconds: Option<f64>,
    inline_gate: Option<GateV>,
    background_gate: Option<GateV>,
    measurements: Vec<MeasurementV>,
    history: Vec<TransitionV>,
    verbs: Vec<String>,
    /// On a fleet controller.
    fleet: Option<FleetV>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FleetV {
    revision: Option<u64>,
    in_sync: bool,
    blocked_by: Vec<String>,
    replicas: Vec<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StepV {
    index: usize,
    kind: String,
    weight: Option<f64>,
    seconds: Option<f64>,
    gate: Option<String>,
    name: Option<String>,
    status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GateV {
    gate: String,
    next_at: u64,
    in_flight: bool,
    measurements: u32,
    passed: u32,
    failures: u32,
    inconclusive: u32,
    consecutive_errors: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MeasurementV {
    at: u64,
    gate: String,
    background: bool,
    step: usize,
    result: String,
    checks: Vec<CheckV>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CheckV {
    check: String,
    result: String,
    critical: bool,
    value: Option<f64>,
    message: String,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct TransitionV {
    at: u64,
    from: String,
    to: String,
    step: usize,
    reason: Option<String>,
    by: String,
    message: String,
}

fn view(v: &Value) -> View {
    View::deserialize(v).unwrap_or_default()
}

/// `paused (step)`, `aborted (analysis_failed)`, `progressing`.
fn phase_and_reason(phase: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.is_empty() => format!("{phase} ({r})"),
        _ => phase.to_string(),
    }
}

/// One line: `paused (step) at step 1/3: pause step: waits until promoted`. The phase is the
/// first word, for scripts.
fn phase_line(v: &View) -> String {
    let mut s = format!(
        "{} at step {}/{}",
        phase_and_reason(&v.phase, v.reason.as_deref()),
        v.step,
        v.steps_total
    );
    if !v.message.is_empty() {
        let _ = write!(s, ": {}", v.message);
    }
    s
}

/// The human summary of a rollout (the API's `RolloutView`).
fn summary(json: &Value) -> String {
    let v = view(json);
    let now = now_ms();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "route {}: rollout {} (canary {}, primary {})",
        v.route, v.id, v.canary, v.primary
    );
    let _ = write!(
        o,
        "phase:    {}",
        phase_and_reason(&v.phase, v.reason.as_deref())
    );
    if !v.message.is_empty() {
        let _ = write!(o, ": {}", v.message);
    }
    o.push('\n');
    let done = if v.step >= v.steps_total && v.steps_total > 0 {
        " (every step done)"
    } else {
        ""
    };
    let _ = writeln!(o, "step:     {}/{}{done}", v.step, v.steps_total);
    for s in &v.steps {
        let mark = match s.status.as_str() {
            "current" => "->",
            _ => "  ",
        };
        let _ = writeln!(
            o,
            "  {mark} {:>2}  {:<40} {}",
            s.index,
            describe_step_view(s),
            s.status
        );
    }
    let _ = write!(o, "weight:   set {}%", num(v.set_weight));
    match v.actual_weight {
        Some(a) => {
            let _ = writeln!(o, ", actual {}% of the last minute's requests", num(a));
        }
        None => o.push_str(", actual: no requests in the last minute\n"),
    }
    if let Some(f) = &v.fleet {
        let verified = f
            .replicas
            .iter()
            .filter(|r| r["state"] == "verified")
            .count();
        let _ = writeln!(
            o,
            "fleet:    {verified}/{} replicas verified revision {}{}",
            f.replicas.len(),
            f.revision.map_or("-".to_string(), |r| r.to_string()),
            if f.in_sync {
                ""
            } else {
                "; progress waits for:"
            }
        );
        for b in &f.blocked_by {
            let _ = writeln!(o, "  - {b}");
        }
    }
    if v.phase == "paused" {
        match v.pause_remaining_seconds {
            Some(left) => {
                let left = Duration::from_secs(left.max(0.0).ceil() as u64);
                let _ = writeln!(
                    o,
                    "pause:    {} left, then the next step",
                    humantime::format_duration(left)
                );
            }
            None if v.reason.as_deref() == Some("step") => {
                let _ = writeln!(
                    o,
                    "pause:    until promoted (canaryd rollout promote {})",
                    v.route
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "pause:    until resumed (canaryd rollout resume {})",
                    v.route
                );
            }
        }
    }
    for (which, g) in [
        ("inline", &v.inline_gate),
        ("background", &v.background_gate),
    ] {
        let Some(g) = g else { continue };
        let next = if g.in_flight {
            "measuring now".to_string()
        } else if g.next_at > now {
            format!(
                "next in {}",
                humantime::format_duration(Duration::from_secs((g.next_at - now).div_ceil(1000)))
            )
        } else {
            "next due now".to_string()
        };
        let _ = writeln!(
            o,
            "gate:     {} ({which}): {} measurement(s), {} passed, {} failed, {} inconclusive, {} errored in a row; {next}",
            g.gate, g.measurements, g.passed, g.failures, g.inconclusive, g.consecutive_errors
        );
    }
    if !v.measurements.is_empty() {
        let _ = writeln!(
            o,
            "measurements (last {} of {}):",
            v.measurements.len().min(SHOW_LAST),
            v.measurements.len()
        );
        for m in last(&v.measurements) {
            let bg = if m.background { ", background" } else { "" };
            let _ = writeln!(
                o,
                "  {}  {} at step {}{bg}: {}",
                clock(m.at),
                m.gate,
                m.step,
                m.result
            );
            for c in &m.checks {
                let crit = if c.critical { " (critical)" } else { "" };
                let value = c.value.map(|x| format!(" {}", num(x))).unwrap_or_default();
                let _ = writeln!(
                    o,
                    "      {}{crit} {}{value}: {}",
                    c.check, c.result, c.message
                );
            }
        }
    }
    if !v.history.is_empty() {
        let _ = writeln!(
            o,
            "transitions (last {} of {}):",
            v.history.len().min(SHOW_LAST),
            v.history.len()
        );
        for t in last(&v.history) {
            let _ = writeln!(
                o,
                "  {}  {} -> {} at step {} (by {}): {}",
                clock(t.at),
                t.from,
                phase_and_reason(&t.to, t.reason.as_deref()),
                t.step,
                t.by,
                t.message
            );
        }
    }
    let verbs = if v.verbs.is_empty() {
        "none".to_string()
    } else {
        v.verbs.join(", ")
    };
    let _ = writeln!(o, "verbs:    {verbs}");
    o
}

fn last<T>(items: &[T]) -> &[T] {
    &items[items.len().saturating_sub(SHOW_LAST)..]
}

fn describe_step_view(s: &StepV) -> String {
    match s.kind.as_str() {
        "set_weight" => format!("set_weight {}%", num(s.weight.unwrap_or(0.0))),
        "pause" => match s.seconds {
            Some(secs) => format!(
                "pause {}",
                humantime::format_duration(Duration::from_secs_f64(secs.max(0.0)))
            ),
            None => "pause until promoted".to_string(),
        },
        "analysis" => format!("analysis {}", s.gate.as_deref().unwrap_or("?")),
        "set_header_route" => format!("set_header_route {}", s.name.as_deref().unwrap_or("?")),
        "set_mirror_route" => format!("set_mirror_route {}", s.name.as_deref().unwrap_or("?")),
        other => other.to_string(),
    }
}

/// At most 4 decimals, no trailing zeros: `20`, `99.95`, `0.0123`.
fn num(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Unix milliseconds as `2026-05-01T12:00:01Z`.
fn clock(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

// ---------------------------------------------------------------------------------------------
// `plan`

/// The timeline of every route's rollout in `cfg`: each step with the time it starts when
/// every timed pause and analysis gate takes its nominal time, the gates with their checks,
/// and each gate's worst-case rollback time.
///
/// An analysis step's nominal time is `initial_delay + (count − 1) × interval`: the engine
/// takes the first measurement `initial_delay` after the gate starts and the next ones
/// `interval` apart, and the gate passes with its `count`-th. A `pause: {}` waits for a
/// promote, so the times after it count from that promote.
pub fn plan(cfg: &Config) -> String {
    let mut o = String::new();
    let mut any = false;
    for r in &cfg.routes {
        let Some(spec) = &r.rollout else { continue };
        if any {
            o.push('\n');
        }
        any = true;
        plan_route(&mut o, cfg, r, spec);
    }
    if !any {
        o.push_str("no route has a rollout\n");
    }
    o
}

fn plan_route(o: &mut String, cfg: &Config, r: &RouteConfig, spec: &RolloutSpec) {
    let canary = &r.versions[spec.canary].name;
    let _ = writeln!(
        o,
        "route {}: rollout {}, canary {} (primary {})",
        r.name, spec.id, canary, r.versions[0].name
    );
    let _ = writeln!(o, "  step  starts at      what");
    // Time since the start, or since the promote that ended the last `pause: {}`.
    let mut t = Duration::ZERO;
    let mut after_promote = false;
    let at = |t: Duration, after_promote: bool| {
        let d = humantime::format_duration(t).to_string();
        if after_promote {
            format!("promote+{d}")
        } else {
            d
        }
    };
    for (i, step) in spec.steps.iter().enumerate() {
        let starts = at(t, after_promote);
        let what = match step {
            Step::SetWeight(w) => format!("set_weight {}%", num(w.percent())),
            Step::Pause(Some(d)) => {
                t += *d;
                format!("pause {}", humantime::format_duration(*d))
            }
            Step::Pause(None) => {
                t = Duration::ZERO;
                after_promote = true;
                format!("pause until promoted (canaryd rollout promote {})", r.name)
            }
            Step::Analysis(g) => match spec.analysis.get(g) {
                Some(gate) => {
                    let d = gate_time(gate);
                    t += d;
                    format!(
                        "analysis {g}: {} to pass ({} measurements: initial_delay {} + {} x interval {})",
                        humantime::format_duration(d),
                        gate.count,
                        humantime::format_duration(gate.initial_delay),
                        gate.count.saturating_sub(1),
                        humantime::format_duration(gate.interval)
                    )
                }
                None => format!("analysis {g} (no such gate)"),
            },
            Step::SetHeaderRoute { name, rule } => {
                let conds: Vec<String> = rule.conditions.iter().map(|c| c.to_string()).collect();
                format!(
                    "set_header_route {name}: {} -> {}",
                    conds.join(" and "),
                    r.versions
                        .get(rule.to)
                        .map_or(canary.as_str(), |v| v.name.as_str())
                )
            }
            Step::SetMirrorRoute { name, mirror } => format!(
                "set_mirror_route {name}: {}% of requests copied to {}",
                num(mirror.percent.percent()),
                r.versions
                    .get(mirror.to)
                    .map_or(canary.as_str(), |v| v.name.as_str())
            ),
        };
        let _ = writeln!(o, "  {i:>4}  {starts:<14} {what}");
    }
    let _ = writeln!(
        o,
        "  done  {:<14} promoted: {canary} takes 100%",
        at(t, after_promote)
    );
    if after_promote {
        let _ = writeln!(
            o,
            "  (promote+T: T after the promote that ends the last `pause until promoted`)"
        );
    }
    if let Some(b) = &spec.background_analysis {
        let _ = writeln!(
            o,
            "  background analysis: gate {b}, measured from the first step to the end"
        );
    }
    for (name, gate) in &spec.analysis {
        plan_gate(o, cfg, name, gate);
    }
}

/// How long an inline gate takes when every measurement is conclusive and passes.
fn gate_time(g: &Gate) -> Duration {
    g.initial_delay + g.interval * g.count.saturating_sub(1)
}

fn plan_gate(o: &mut String, cfg: &Config, name: &str, g: &Gate) {
    let _ = writeln!(
        o,
        "  gate {name}: a measurement every {} over the last {}, {} to pass, min {} requests per version",
        humantime::format_duration(g.interval),
        humantime::format_duration(g.window),
        g.count,
        g.min_requests
    );
    for c in &g.checks {
        let _ = writeln!(o, "    - {}", describe_check(cfg, c));
    }
    let worst = g.initial_delay + g.interval * (g.failure_limit + 1);
    let _ = writeln!(
        o,
        "    worst-case rollback: {} = initial_delay {} + (failure_limit {} + 1) x interval {}",
        humantime::format_duration(worst),
        humantime::format_duration(g.initial_delay),
        g.failure_limit,
        humantime::format_duration(g.interval)
    );
    if g.checks.iter().any(|c| c.critical) {
        let _ = writeln!(
            o,
            "    worst-case rollback on a critical check: {} = initial_delay {} + interval {}",
            humantime::format_duration(g.initial_delay + g.interval),
            humantime::format_duration(g.initial_delay),
            humantime::format_duration(g.interval)
        );
    }
}

fn describe_check(cfg: &Config, c: &Check) -> String {
    let mut s = match &c.kind {
        CheckKind::DiffRate { max } => format!(
            "diff_rate: at most {} % of compared mirror pairs differ",
            num(max * 100.0)
        ),
        CheckKind::SuccessRate {
            min,
            max_drop_vs_primary,
        } => {
            let drop = max_drop_vs_primary.unwrap_or(cfg.analysis.max_success_rate_drop_pp);
            let min = min.map(|m| format!("at least {}%, ", num(m)));
            format!(
                "success_rate: {}at most {} percentage points below the primary's",
                min.unwrap_or_default(),
                num(drop)
            )
        }
        CheckKind::LatencyP99 {
            max,
            max_ratio_vs_primary,
        } => {
            let ratio = max_ratio_vs_primary.unwrap_or(cfg.analysis.max_p99_ratio);
            let max = max.map(|m| format!("at most {}, ", humantime::format_duration(m)));
            format!(
                "latency_p99: {}at most {} x the primary's (unless within {})",
                max.unwrap_or_default(),
                num(ratio),
                humantime::format_duration(cfg.analysis.latency_floor)
            )
        }
        CheckKind::Prometheus {
            url,
            query,
            min,
            max,
            ..
        } => {
            let range = match (min, max) {
                (Some(a), Some(b)) => format!("within {}..{}", num(*a), num(*b)),
                (Some(a), None) => format!("at least {}", num(*a)),
                (None, Some(b)) => format!("at most {}", num(*b)),
                (None, None) => "any value".into(),
            };
            format!("prometheus {url}: `{query}` {range}")
        }
        CheckKind::Webhook {
            url,
            min_confidence,
            ..
        } => format!(
            "webhook {url}: promote with confidence at least {}",
            num(*min_confidence)
        ),
    };
    if let Some(m) = c.min_requests {
        let _ = write!(s, " (min {m} requests)");
    }
    if c.critical {
        s.push_str(" [critical: aborts at the first failure]");
    }
    s
}
