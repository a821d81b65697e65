//! One measurement of a gate: every check judged, the worst result wins (failed > errored >
//! inconclusive > passed).
//!
//! Window checks (`success_rate`, `latency_p99`) read the primary's and the canary's
//! analysis windows over the gate's `window` — only upstream outcomes are in them, so a
//! client's faults never count. A check with fewer than `min_requests` requests on either
//! version is inconclusive: no data never passes and never fails. External checks ask a
//! Prometheus server or a judge (a webhook, e.g. an AI agent); a failure to ask is an error,
//! not a verdict.

use super::http;
use super::machine::{CheckResult, Millis, Outcome};
use crate::analysis::Summary;
use crate::config::{AnalysisSettings, Check, CheckKind, Gate};
use serde::Serialize;
use std::time::Duration;

/// What a measurement judges: both versions' windows, and who is asking.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub route: String,
    pub rollout: String,
    pub step: usize,
    pub gate: String,
    pub window: Duration,
    pub primary: (String, Summary),
    pub canary: (String, Summary),
    /// The canary's most recent upstream failures, oldest first.
    pub canary_failures: Vec<crate::analysis::FailureSample>,
    /// Shadow comparisons in the window: requests = pairs compared, errors = pairs that
    /// differed (`None` where they cannot be read: a fleet).
    pub diffs: Option<Summary>,
}

/// One version's numbers, as a webhook judge receives them.
#[derive(Debug, Serialize)]
struct VersionFacts<'a> {
    name: &'a str,
    requests: u64,
    errors_5xx: u64,
    success_rate: Option<f64>,
    p50_seconds: Option<f64>,
    p99_seconds: Option<f64>,
}

impl<'a> VersionFacts<'a> {
    fn of(name: &'a str, s: &Summary) -> Self {
        VersionFacts {
            name,
            requests: s.requests,
            errors_5xx: s.errors,
            success_rate: s.success_rate().map(|r| r * 100.0),
            p50_seconds: s.quantile(0.5),
            p99_seconds: s.quantile(0.99),
        }
    }
}

/// Judge every check of `gate`; `critical` results carry their flag.
pub async fn measure(
    gate: &Gate,
    settings: &AnalysisSettings,
    ev: &Evidence,
) -> (Outcome, Vec<CheckResult>) {
    let mut results = Vec::with_capacity(gate.checks.len());
    for check in &gate.checks {
        // No data, no verdict: below min_requests a check is inconclusive (a judge is not
        // even asked), whatever kind it is.
        let r = if let Some(r) = too_few(check, gate, ev) {
            r
        } else {
            judge_check(check, settings, ev).await
        };
        results.push(CheckResult {
            critical: check.critical,
            ..r
        });
    }
    let outcome = results
        .iter()
        .fold(Outcome::Passed, |acc, r| acc.worst(r.result));
    (outcome, results)
}

/// One check of a measurement with enough data.
async fn judge_check(check: &Check, settings: &AnalysisSettings, ev: &Evidence) -> CheckResult {
    match &check.kind {
        CheckKind::SuccessRate { .. } | CheckKind::LatencyP99 { .. } => {
            window_check(check, settings, ev)
        }
        CheckKind::DiffRate { max } => diff_rate(*max, ev),
        CheckKind::Prometheus {
            url,
            query,
            min,
            max,
            timeout,
        } => prometheus(url, query, *min, *max, *timeout, ev).await,
        CheckKind::Webhook {
            url,
            min_confidence,
            timeout,
        } => webhook(url, *min_confidence, *timeout, ev).await,
    }
}

pub(super) fn result(
    check: &str,
    result: Outcome,
    value: Option<f64>,
    message: String,
) -> CheckResult {
    CheckResult {
        check: check.to_string(),
        result,
        critical: false,
        value,
        message,
    }
}

fn check_name(kind: &CheckKind) -> &'static str {
    match kind {
        CheckKind::SuccessRate { .. } => "success_rate",
        CheckKind::LatencyP99 { .. } => "latency_p99",
        CheckKind::Prometheus { .. } => "prometheus",
        CheckKind::Webhook { .. } => "webhook",
        CheckKind::DiffRate { .. } => "diff_rate",
    }
}

/// `diff_rate`: the share of compared mirror pairs that differed (enough pairs: checked by
/// [`too_few`]).
fn diff_rate(max: f64, ev: &Evidence) -> CheckResult {
    let Some(d) = ev.diffs.as_ref().filter(|d| d.requests > 0) else {
        return result(
            "diff_rate",
            Outcome::Inconclusive,
            None,
            "no shadow comparisons to judge (is the route mirrored, with compare.sample > 0?)"
                .into(),
        );
    };
    let rate = d.errors as f64 / d.requests as f64;
    let text = format!(
        "{} of {} compared pairs differed ({:.2} %, max {:.2} %)",
        d.errors,
        d.requests,
        rate * 100.0,
        max * 100.0
    );
    let outcome = if rate > max {
        Outcome::Failed
    } else {
        Outcome::Passed
    };
    result("diff_rate", outcome, Some(rate), text)
}

/// Inconclusive when either version has fewer requests in the window than the check's
/// `min_requests` (the gate's unless the check sets its own).
fn too_few(check: &Check, gate: &Gate, ev: &Evidence) -> Option<CheckResult> {
    let min_requests = check.min_requests.unwrap_or(gate.min_requests);
    if matches!(check.kind, CheckKind::DiffRate { .. }) {
        let compared = ev.diffs.as_ref().map_or(0, |d| d.requests);
        return (compared < min_requests).then(|| {
            result(
                "diff_rate",
                Outcome::Inconclusive,
                None,
                format!(
                    "{compared} mirror pairs compared in the last {}, fewer than min_requests {min_requests}",
                    humantime::format_duration(ev.window)
                ),
            )
        });
    }
    [&ev.canary, &ev.primary]
        .into_iter()
        .find(|(_, s)| s.requests < min_requests)
        .map(|(n, s)| {
            result(
                check_name(&check.kind),
                Outcome::Inconclusive,
                None,
                format!(
                    "{n} has {} requests in the last {}, fewer than min_requests {min_requests}",
                    s.requests,
                    humantime::format_duration(ev.window)
                ),
            )
        })
}

/// `success_rate` or `latency_p99` over the windows (both versions have enough requests).
pub fn window_check(check: &Check, st: &AnalysisSettings, ev: &Evidence) -> CheckResult {
    let name = check_name(&check.kind);
    let ((pn, p), (cn, c)) = (&ev.primary, &ev.canary);
    match &check.kind {
        CheckKind::SuccessRate {
            min,
            max_drop_vs_primary,
        } => {
            let cr = c.success_rate().unwrap_or(1.0) * 100.0;
            let pr = p.success_rate().unwrap_or(1.0) * 100.0;
            let drop = max_drop_vs_primary.unwrap_or(st.max_success_rate_drop_pp);
            let mut why = Vec::new();
            if let Some(m) = min.filter(|m| cr < *m) {
                why.push(format!("{cn} success rate {cr:.2} % is below min {m} %"));
            }
            if pr - cr > drop {
                why.push(format!("{cn} success rate {cr:.2} % is {:.2} points below {pn}'s {pr:.2} % (allowed: {drop})", pr - cr));
            }
            verdict(name, cr, why, format!("{cn} {cr:.2} %, {pn} {pr:.2} %"))
        }
        CheckKind::LatencyP99 {
            max,
            max_ratio_vs_primary,
        } => {
            let cp = c.quantile(0.99).unwrap_or(0.0);
            let pp = p.quantile(0.99).unwrap_or(0.0);
            let ratio = max_ratio_vs_primary.unwrap_or(st.max_p99_ratio);
            let mut why = Vec::new();
            if let Some(m) = max.filter(|m| cp > m.as_secs_f64()) {
                why.push(format!(
                    "{cn} p99 {:.1} ms is above max {:.1} ms",
                    cp * 1e3,
                    m.as_secs_f64() * 1e3
                ));
            }
            if pp > 0.0 && cp / pp > ratio && cp - pp > st.latency_floor.as_secs_f64() {
                why.push(format!(
                    "{cn} p99 {:.1} ms is {:.2}x {pn}'s {:.1} ms (allowed: {ratio}x)",
                    cp * 1e3,
                    cp / pp,
                    pp * 1e3
                ));
            }
            verdict(
                name,
                cp,
                why,
                format!("{cn} p99 {:.1} ms, {pn} {:.1} ms", cp * 1e3, pp * 1e3),
            )
        }
        _ => unreachable!("window_check is only called for window checks"),
    }
}

fn verdict(name: &str, value: f64, why: Vec<String>, ok: String) -> CheckResult {
    if why.is_empty() {
        result(name, Outcome::Passed, Some(value), ok)
    } else {
        result(name, Outcome::Failed, Some(value), why.join("; "))
    }
}

/// Replace `{{route}}`, `{{canary}}`, `{{primary}}` and `{{window}}` (Prometheus duration).
fn fill(query: &str, ev: &Evidence) -> String {
    query
        .replace("{{route}}", &ev.route)
        .replace("{{canary}}", &ev.canary.0)
        .replace("{{primary}}", &ev.primary.0)
        .replace("{{window}}", &format!("{}s", ev.window.as_secs()))
}

async fn prometheus(
    url: &str,
    query: &str,
    min: Option<f64>,
    max: Option<f64>,
    timeout: Duration,
    ev: &Evidence,
) -> CheckResult {
    let q = fill(query, ev);
    let full = format!(
        "{}/api/v1/query?query={}",
        url.trim_end_matches('/'),
        http::encode(&q)
    );
    let errored = |m: String| result("prometheus", Outcome::Errored, None, m);
    let (status, body) = match http::call(::http::Method::GET, &full, None, None, timeout).await {
        Ok(r) => r,
        Err(e) => return errored(format!("query failed: {e}")),
    };
    if !status.is_success() {
        return errored(format!(
            "Prometheus answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    let value = match prometheus_value(&body) {
        Ok(v) => v,
        Err(e) => return errored(e),
    };
    let mut why = Vec::new();
    if let Some(m) = min.filter(|m| value < *m) {
        why.push(format!("`{q}` = {value} is below min {m}"));
    }
    if let Some(m) = max.filter(|m| value > *m) {
        why.push(format!("`{q}` = {value} is above max {m}"));
    }
    verdict("prometheus", value, why, format!("`{q}` = {value}"))
}

/// The single number of an instant query's answer (a one-series vector or a scalar).
pub fn prometheus_value(body: &[u8]) -> Result<f64, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            v["error"].as_str().unwrap_or("unknown error")
        ));
    }
    let data = &v["data"];
    let pair = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let r = data["result"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if r.len() != 1 {
                return Err(format!(
                    "the query returned {} series; it must return exactly one",
                    r.len()
                ));
            }
            &r[0]["value"]
        }
        other => {
            return Err(format!(
                "unsupported result type {other:?}; use a query that returns one number"
            ));
        }
    };
    let value: f64 = pair[1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "the answer holds no number".to_string())?;
    if value.is_nan() {
        return Err("the query returned NaN (no data)".into());
    }
    Ok(value)
}

async fn webhook(url: &str, min_confidence: f64, timeout: Duration, ev: &Evidence) -> CheckResult {
    let body = serde_json::json!({
        "route": ev.route,
        "rollout": ev.rollout,
        "step": ev.step,
        "gate": ev.gate,
        "window_seconds": ev.window.as_secs(),
        "primary": VersionFacts::of(&ev.primary.0, &ev.primary.1),
        "canary": VersionFacts::of(&ev.canary.0, &ev.canary.1),
        "canary_recent_failures": ev.canary_failures,
    });
    let errored = |m: String| result("webhook", Outcome::Errored, None, m);
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let (status, answer) =
        match http::call(::http::Method::POST, url, Some(bytes), None, timeout).await {
            Ok(r) => r,
            Err(e) => return errored(format!("the judge did not answer: {e}")),
        };
    if !status.is_success() {
        return errored(format!("the judge answered {status}"));
    }
    judge(&answer, min_confidence)
}

/// Read a judge's `{promote, confidence, analysis}`.
pub fn judge(answer: &[u8], min_confidence: f64) -> CheckResult {
    #[derive(serde::Deserialize)]
    struct Answer {
        promote: bool,
        confidence: f64,
        #[serde(default)]
        analysis: String,
    }
    let a: Answer = match serde_json::from_slice(answer) {
        Ok(a) => a,
        Err(e) => {
            return result(
                "webhook",
                Outcome::Errored,
                None,
                format!("the judge's answer is not {{promote, confidence, analysis}}: {e}"),
            );
        }
    };
    let outcome = if !a.promote {
        Outcome::Failed
    } else if a.confidence < min_confidence {
        Outcome::Inconclusive
    } else {
        Outcome::Passed
    };
    let verdict = if a.promote { "promote" } else { "roll back" };
    result(
        "webhook",
        outcome,
        Some(a.confidence),
        format!(
            "judge says {verdict} (confidence {}): {}",
            a.confidence, a.analysis
        ),
    )
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Window;
    use crate::config::{Check, CheckKind, Gate, OnInconclusive};
    use std::time::Instant;

    fn summary(requests: u64, errors: u64, latency_ms: u64) -> Summary {
        let w = Window::new(Instant::now());
        let now = Instant::now();
        for i in 0..requests {
            let status = if i < errors { 500 } else { 200 };
            w.record(now, status, Duration::from_millis(latency_ms));
        }
        w.summary(now, Duration::from_secs(60))
    }

    fn evidence(primary: Summary, canary: Summary) -> Evidence {
        Evidence {
            route: "app".into(),
            rollout: "r".into(),
            step: 1,
            gate: "g".into(),
            window: Duration::from_secs(60),
            primary: ("stable".into(), primary),
            canary: ("canary".into(), canary),
            canary_failures: Vec::new(),
            diffs: None,
        }
    }

    fn gate(checks: Vec<CheckKind>) -> Gate {
        Gate {
            source: crate::config::GateSource::Live,
            interval: Duration::from_secs(1),
            window: Duration::from_secs(60),
            initial_delay: Duration::ZERO,
            count: 1,
            min_requests: 10,
            checks: checks
                .into_iter()
                .map(|kind| Check {
                    kind,
                    critical: false,
                    min_requests: None,
                })
                .collect(),
            failure_limit: 0,
            consecutive_failure_limit: 0,
            error_limit: 1,
            inconclusive_limit: 0,
            on_inconclusive: OnInconclusive::Pause,
        }
    }

    #[tokio::test]
    async fn the_worst_check_wins_and_no_data_asks_no_judge() {
        let st = AnalysisSettings::default();
        let sr = CheckKind::SuccessRate {
            min: Some(99.0),
            max_drop_vs_primary: None,
        };
        let p99 = CheckKind::LatencyP99 {
            max: Some(Duration::from_millis(50)),
            max_ratio_vs_primary: None,
        };
        let g = gate(vec![sr.clone(), p99.clone()]);
        let (o, r) = measure(&g, &st, &evidence(summary(100, 0, 5), summary(100, 0, 5))).await;
        assert_eq!(o, Outcome::Passed, "{r:?}");
        let (o, r) = measure(&g, &st, &evidence(summary(100, 0, 5), summary(100, 10, 5))).await;
        assert_eq!(
            (o, r[0].result, r[1].result),
            (Outcome::Failed, Outcome::Failed, Outcome::Passed)
        );
        let (o, r) = measure(&g, &st, &evidence(summary(100, 0, 5), summary(100, 0, 200))).await;
        assert_eq!(
            (o, r[1].result),
            (Outcome::Failed, Outcome::Failed),
            "{r:?}"
        );
        // A webhook to a port nothing listens on would be `errored` if it were asked; with
        // too few requests it is not asked: inconclusive.
        let hook = CheckKind::Webhook {
            url: "http://127.0.0.1:9/".into(),
            min_confidence: 0.0,
            timeout: Duration::from_millis(100),
        };
        let (o, r) = measure(
            &gate(vec![hook]),
            &st,
            &evidence(summary(100, 0, 5), summary(3, 0, 5)),
        )
        .await;
        assert_eq!(o, Outcome::Inconclusive, "{r:?}");
        assert!(r[0].message.contains("canary has 3 requests"), "{r:?}");
    }

    #[tokio::test]
    async fn diff_rate_judges_the_compared_pairs_not_the_versions_requests() {
        let st = AnalysisSettings::default();
        let g = gate(vec![CheckKind::DiffRate { max: 0.1 }]);
        // No live canary traffic at all (a dark launch): the pairs decide.
        let mut ev = evidence(summary(100, 0, 5), summary(0, 0, 5));
        ev.diffs = Some(summary(40, 2, 0));
        let (o, r) = measure(&g, &st, &ev).await;
        assert_eq!(o, Outcome::Passed, "{r:?}");
        assert_eq!(r[0].value, Some(0.05));
        ev.diffs = Some(summary(40, 8, 0));
        let (o, r) = measure(&g, &st, &ev).await;
        assert_eq!(o, Outcome::Failed, "{r:?}");
        assert!(r[0].message.contains("8 of 40"), "{r:?}");
        ev.diffs = Some(summary(3, 3, 0));
        let (o, r) = measure(&g, &st, &ev).await;
        assert_eq!(
            o,
            Outcome::Inconclusive,
            "fewer pairs than min_requests: {r:?}"
        );
        ev.diffs = None;
        let (o, _) = measure(&g, &st, &ev).await;
        assert_eq!(o, Outcome::Inconclusive);
    }

    #[test]
    fn prometheus_answers_must_be_one_number() {
        let vector = |n: usize| {
            let series: Vec<String> = (0..n)
                .map(|_| r#"{"metric":{},"value":[1,"0.25"]}"#.to_string())
                .collect();
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
                series.join(",")
            )
        };
        assert_eq!(prometheus_value(vector(1).as_bytes()), Ok(0.25));
        assert!(
            prometheus_value(vector(0).as_bytes())
                .unwrap_err()
                .contains("0 series")
        );
        assert!(
            prometheus_value(vector(2).as_bytes())
                .unwrap_err()
                .contains("2 series")
        );
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#;
        assert_eq!(prometheus_value(scalar.as_bytes()), Ok(3.0));
        let nan = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(prometheus_value(nan.as_bytes()).is_err());
        let bad = r#"{"status":"error","error":"parse error"}"#;
        assert!(
            prometheus_value(bad.as_bytes())
                .unwrap_err()
                .contains("parse error")
        );
    }

    #[test]
    fn a_judge_answer_maps_to_a_result() {
        let j = |s: &str| judge(s.as_bytes(), 70.0).result;
        assert_eq!(
            j(r#"{"promote": false, "confidence": 95, "analysis": "no"}"#),
            Outcome::Failed
        );
        assert_eq!(
            j(r#"{"promote": true, "confidence": 50}"#),
            Outcome::Inconclusive
        );
        assert_eq!(j(r#"{"promote": true, "confidence": 80}"#), Outcome::Passed);
        assert_eq!(j(r#"{"verdict": "ship it"}"#), Outcome::Errored);
        assert!(
            judge(
                br#"{"promote": false, "confidence": 95, "analysis": "errors up"}"#,
                0.0
            )
            .message
            .contains("errors up")
        );
    }
}
