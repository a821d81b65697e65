//! Canary analysis: per-version request counts, success rate and latency percentiles over a
//! sliding window, and the verdict "is the canary worse than the primary?".
//!
//! Each (route, version) has a [`Window`]: a ring of 5-second slots covering 10 minutes, each
//! with request and 5xx counts and a log-spaced latency histogram. Recording is lock-free
//! (one slot lookup, three relaxed adds). Windows live as long as the process, not a snapshot,
//! so weight changes and reloads during a rollout do not reset the evidence.
//!
//! A version with fewer requests than `min_requests` in the window is reported as
//! "inconclusive" with the reason; its rates and percentiles are `null`, never a silent 0/NaN.

use crate::config::AnalysisSettings;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Width of one slot.
pub const SLOT: Duration = Duration::from_secs(5);
/// Longest window a query may ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(600);
/// Slots in the ring: the max window plus the slot being filled.
const SLOTS: usize = (MAX_WINDOW.as_secs() / SLOT.as_secs()) as usize + 1;

/// Number of latency buckets (the last is overflow).
const NB: usize = 76;

/// Upper bounds in microseconds: 100 µs growing by 1.2× per bucket (about 60 s at the top).
const BOUNDS_US: [u64; NB - 1] = {
    let mut b = [0u64; NB - 1];
    let mut v = 100.0f64;
    let mut i = 0;
    while i < NB - 1 {
        b[i] = v as u64;
        v *= 1.2;
        i += 1;
    }
    b
};

struct Slot {
    /// Slot number (since the window was created, plus one) this slot currently holds; 0 = empty.
    epoch: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
    /// Largest latency seen, in µs: caps interpolation in the top occupied bucket.
    max_us: AtomicU64,
    latency: [AtomicU64; NB],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            epoch: AtomicU64::new(0),
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Sliding-window statistics of one (route, version).
pub struct Window {
    origin: Instant,
    /// Unix time (seconds) of `origin` when the slots are aligned to wall-clock multiples of
    /// [`SLOT`]; `None` for a window with an arbitrary origin (tests).
    origin_unix: Option<u64>,
    slots: Box<[Slot]>,
    /// The last few upstream failures, for a judge to read (only failures take the lock).
    failures: std::sync::Mutex<std::collections::VecDeque<FailureSample>>,
}

/// Failures kept per (route, version).
const KEEP_FAILURES: usize = 20;

/// One upstream failure of a version: what a judge reads next to the numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FailureSample {
    /// Unix time, milliseconds.
    pub at: u64,
    pub status: u16,
    /// Request path (at most 200 bytes), no query string.
    pub path: String,
    /// `connect`, `timeout`, `reset`, `bad_response`; `None` for a 5xx the upstream sent.
    pub error: Option<&'static str>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Window")
    }
}

impl Default for Window {
    /// A window whose slots start at Unix-time multiples of [`SLOT`], so the windows of
    /// several processes cover the same wall-clock seconds and can be summed.
    fn default() -> Self {
        let now = Instant::now();
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let into_slot = Duration::from_nanos((since_epoch.as_nanos() % SLOT.as_nanos()) as u64);
        match now.checked_sub(into_slot) {
            Some(origin) => Window {
                origin_unix: Some((since_epoch - into_slot).as_secs()),
                ..Window::new(origin)
            },
            None => Window::new(now),
        }
    }
}

/// Totals over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    max_us: u64,
    latency: [u64; NB],
}

impl Window {
    pub fn new(origin: Instant) -> Window {
        Window {
            origin,
            origin_unix: None,
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            failures: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Keep one upstream failure (the oldest kept one goes).
    pub fn note_failure(&self, status: u16, path: &str, error: Option<&'static str>) {
        let mut end = path.len().min(200);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        let sample = FailureSample {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            status,
            path: path[..end].to_string(),
            error,
        };
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() == KEEP_FAILURES {
            f.pop_front();
        }
        f.push_back(sample);
    }

    /// The failures kept, oldest first.
    pub fn recent_failures(&self) -> Vec<FailureSample> {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.iter().cloned().collect()
    }

    fn slot_number(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs() / SLOT.as_secs() + 1
    }

    /// Count one response. `status` ≥ 500 is an error.
    pub fn record(&self, now: Instant, status: u16, latency: Duration) {
        let n = self.slot_number(now);
        let slot = &self.slots[(n % SLOTS as u64) as usize];
        let epoch = slot.epoch.load(Ordering::Acquire);
        if epoch != n {
            if epoch > n {
                return; // A newer slot already took this place: this sample is too old.
            }
            // First writer of a new slot recycles it. A racing increment may land just
            // before the reset and be lost: acceptable for a statistical window.
            if slot
                .epoch
                .compare_exchange(epoch, n, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.total.store(0, Ordering::Relaxed);
                slot.errors.store(0, Ordering::Relaxed);
                slot.max_us.store(0, Ordering::Relaxed);
                for b in &slot.latency {
                    b.store(0, Ordering::Relaxed);
                }
            }
        }
        slot.total.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        slot.max_us.fetch_max(us, Ordering::Relaxed);
        let b = BOUNDS_US.partition_point(|&bound| bound < us);
        slot.latency[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Totals over the last `window` (rounded up to whole slots, including the current one).
    pub fn summary(&self, now: Instant, window: Duration) -> Summary {
        let n = self.slot_number(now);
        let k = window
            .as_secs()
            .div_ceil(SLOT.as_secs())
            .clamp(1, SLOTS as u64 - 1);
        let oldest = n.saturating_sub(k);
        let mut s = Summary::empty();
        for slot in self.slots.iter() {
            let e = slot.epoch.load(Ordering::Acquire);
            if e != 0 && e >= oldest && e <= n {
                s.add_slot(slot);
            }
        }
        s
    }
}

impl Window {
    /// Totals of the slots that start in the Unix-time range `[from, to)` (seconds): the raw
    /// material the fleet controller sums across replicas. Slots start at multiples of
    /// [`SLOT`], so every replica's slots cover the same seconds. Errs for a window without
    /// a wall-clock origin, an empty range, or one reaching back past what is kept.
    pub fn range(&self, from: u64, to: u64, now: Instant) -> Result<Summary, String> {
        let origin = self
            .origin_unix
            .ok_or_else(|| "this window is not aligned to wall-clock time".to_string())?;
        if from >= to {
            return Err(format!("from {from} must be before to {to}"));
        }
        let step = SLOT.as_secs();
        let current = self.slot_number(now);
        // Slot n covers [origin + (n-1)·SLOT, origin + n·SLOT).
        let first = from.saturating_sub(origin).div_ceil(step) + 1;
        let last = (to.saturating_sub(origin)).div_ceil(step).min(current);
        // Before this process recorded (a restarted replica) or past the history kept: not
        // zeros, which would undercount a fleet, but an answer that says it cannot tell.
        if from < origin {
            return Err(format!(
                "from {from} is before this process started recording (Unix {origin})"
            ));
        }
        let oldest_kept = current.saturating_sub(SLOTS as u64 - 2).max(1);
        if first < oldest_kept {
            return Err(format!(
                "from {from} is older than the {} s of history kept",
                MAX_WINDOW.as_secs()
            ));
        }
        let mut s = Summary::empty();
        for slot in self.slots.iter() {
            let e = slot.epoch.load(Ordering::Acquire);
            if e != 0 && e >= first && e <= last {
                s.add_slot(slot);
            }
        }
        Ok(s)
    }
}

impl Summary {
    /// No requests.
    pub fn empty() -> Summary {
        Summary {
            requests: 0,
            errors: 0,
            max_us: 0,
            latency: [0; NB],
        }
    }

    fn add_slot(&mut self, slot: &Slot) {
        self.requests += slot.total.load(Ordering::Relaxed);
        self.errors += slot.errors.load(Ordering::Relaxed);
        self.max_us = self.max_us.max(slot.max_us.load(Ordering::Relaxed));
        for (acc, b) in self.latency.iter_mut().zip(&slot.latency) {
            *acc += b.load(Ordering::Relaxed);
        }
    }

    /// Upper bounds of the latency buckets in µs (the last bucket, not listed, is overflow).
    pub fn bounds_us() -> &'static [u64] {
        &BOUNDS_US
    }

    /// Requests per latency bucket (one more than [`Summary::bounds_us`]).
    pub fn latency_counts(&self) -> &[u64] {
        &self.latency
    }

    /// The largest latency seen, in µs.
    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// A summary from raw parts (as a replica serves them); `latency` must have one count per
    /// bucket.
    pub fn from_parts(
        requests: u64,
        errors: u64,
        max_us: u64,
        latency: &[u64],
    ) -> Result<Summary, String> {
        let latency: [u64; NB] = latency
            .try_into()
            .map_err(|_| format!("{} latency buckets, expected {NB}", latency.len()))?;
        Ok(Summary {
            requests,
            errors,
            max_us,
            latency,
        })
    }

    /// Add another summary's counts: the fleet's window is the sum of the replicas'.
    pub fn merge(&mut self, other: &Summary) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.max_us = self.max_us.max(other.max_us);
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    /// Share of non-5xx responses; `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| (self.requests - self.errors) as f64 / self.requests as f64)
    }

    /// Latency quantile in seconds, interpolated inside its bucket; `None` without data.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &c) in self.latency.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let lo = if i == 0 { 0 } else { BOUNDS_US[i - 1] } as f64;
                // No sample exceeds the max seen, so interpolate up to it at most.
                let hi = BOUNDS_US
                    .get(i)
                    .copied()
                    .unwrap_or(u64::MAX)
                    .min(self.max_us) as f64;
                let hi = hi.max(lo);
                let frac = (rank - seen as f64) / c as f64;
                return Some((lo + (hi - lo) * frac) / 1e6);
            }
            seen += c;
        }
        None
    }
}

/// Per-version input to [`analyse`].
pub struct VersionInput<'a> {
    pub name: &'a str,
    pub summary: Summary,
}

/// The analysis document of one route, as `GET /api/v1/routes/{route}/analysis` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub route: String,
    pub generation: u64,
    pub window_seconds: u64,
    pub min_requests: u64,
    /// `None` only for a route without versions, which validation never lets through.
    pub primary: Option<String>,
    pub versions: BTreeMap<String, VersionReport>,
    /// Every non-primary version against the primary.
    pub comparison: BTreeMap<String, Comparison>,
}

/// One version's numbers over the window; `null` rather than a guess below `min_requests`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionReport {
    pub primary: bool,
    pub requests: u64,
    pub errors_5xx: u64,
    pub status: Status,
    pub success_rate: Option<f64>,
    pub latency_seconds: Latency,
    /// Why the version is inconclusive; absent when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Inconclusive,
}

/// Latency quantiles in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// The verdict for one non-primary version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The primary's name.
    pub against: String,
    pub verdict: Verdict,
    /// Every threshold crossed, or why there is no verdict; empty on a pass.
    pub reasons: Vec<String>,
    pub success_rate_delta: Option<f64>,
    pub p99_ratio: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

/// Build the analysis document. `versions[0]` is the primary.
pub fn analyse(
    route: &str,
    generation: u64,
    window: Duration,
    settings: &AnalysisSettings,
    versions: &[VersionInput<'_>],
) -> Report {
    let min = settings.min_requests;
    let by_name = versions
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.to_string(), version_report(i == 0, &v.summary, min)))
        .collect();
    let comparison = match versions.split_first() {
        Some((primary, others)) => others
            .iter()
            .map(|v| (v.name.to_string(), compare(primary, v, settings)))
            .collect(),
        None => BTreeMap::new(),
    };
    Report {
        route: route.to_string(),
        generation,
        window_seconds: window.as_secs(),
        min_requests: min,
        primary: versions.first().map(|v| v.name.to_string()),
        versions: by_name,
        comparison,
    }
}

/// One version's numbers, or `null`s and the reason when it has fewer than `min` requests.
fn version_report(primary: bool, s: &Summary, min: u64) -> VersionReport {
    let enough = s.requests >= min;
    VersionReport {
        primary,
        requests: s.requests,
        errors_5xx: s.errors,
        status: if enough {
            Status::Ok
        } else {
            Status::Inconclusive
        },
        success_rate: if enough { s.success_rate() } else { None },
        latency_seconds: if enough {
            Latency {
                p50: s.quantile(0.5),
                p90: s.quantile(0.9),
                p99: s.quantile(0.99),
            }
        } else {
            Latency::default()
        },
        reason: (!enough).then(|| {
            format!(
                "{} requests in the window, fewer than min_requests {min}",
                s.requests
            )
        }),
    }
}

/// Verdict for one non-primary version against the primary.
fn compare(primary: &VersionInput<'_>, v: &VersionInput<'_>, st: &AnalysisSettings) -> Comparison {
    let (p, c) = (&primary.summary, &v.summary);
    let mut reasons = Vec::new();
    for (name, s) in [(primary.name, p), (v.name, c)] {
        if s.requests < st.min_requests {
            reasons.push(format!(
                "{name} has {} requests in the window, fewer than min_requests {}",
                s.requests, st.min_requests
            ));
        }
    }
    if !reasons.is_empty() {
        return Comparison {
            against: primary.name.to_string(),
            verdict: Verdict::Inconclusive,
            reasons,
            success_rate_delta: None,
            p99_ratio: None,
        };
    }
    // Both have data: these are Some.
    let (ps, cs) = (
        p.success_rate().unwrap_or(1.0),
        c.success_rate().unwrap_or(1.0),
    );
    let (pp99, cp99) = (
        p.quantile(0.99).unwrap_or(0.0),
        c.quantile(0.99).unwrap_or(0.0),
    );
    let delta = cs - ps;
    let ratio = if pp99 > 0.0 { Some(cp99 / pp99) } else { None };
    let max_drop = st.max_success_rate_drop_pp / 100.0;
    if delta < -max_drop {
        reasons.push(format!(
            "success rate {:.4} is {:.2} points below {}'s {:.4} (allowed: {})",
            cs,
            -delta * 100.0,
            primary.name,
            ps,
            st.max_success_rate_drop_pp
        ));
    }
    let floor = st.latency_floor.as_secs_f64();
    if let Some(r) = ratio {
        if r > st.max_p99_ratio && cp99 - pp99 > floor {
            reasons.push(format!(
                "p99 {:.1} ms is {:.2}× {}'s {:.1} ms (allowed: {}×)",
                cp99 * 1e3,
                r,
                primary.name,
                pp99 * 1e3,
                st.max_p99_ratio
            ));
        }
    }
    Comparison {
        against: primary.name.to_string(),
        verdict: if reasons.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        reasons,
        success_rate_delta: Some(delta),
        p99_ratio: ratio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AnalysisSettings {
        AnalysisSettings::default()
    }

    #[test]
    fn old_slots_leave_the_window() {
        let t0 = Instant::now();
        let w = Window::new(t0);
        for _ in 0..10 {
            w.record(t0, 200, Duration::from_millis(2));
        }
        w.record(t0 + Duration::from_secs(30), 500, Duration::from_millis(2));
        let now = t0 + Duration::from_secs(31);
        assert_eq!(w.summary(now, Duration::from_secs(60)).requests, 11);
        let recent = w.summary(now, Duration::from_secs(10));
        assert_eq!((recent.requests, recent.errors), (1, 1));
        // A full ring later the slot is recycled, not added to.
        let later = t0 + MAX_WINDOW + SLOT;
        w.record(later, 200, Duration::from_millis(1));
        assert_eq!(w.summary(later, MAX_WINDOW).requests, 2);
    }

    #[test]
    fn quantiles_are_close_to_the_truth() {
        let t0 = Instant::now();
        let w = Window::new(t0);
        // 1..=1000 ms uniformly: p50 ≈ 500 ms, p99 ≈ 990 ms.
        for ms in 1..=1000u64 {
            w.record(t0, 200, Duration::from_millis(ms));
        }
        let s = w.summary(t0, Duration::from_secs(60));
        let p50 = s.quantile(0.5).unwrap();
        let p99 = s.quantile(0.99).unwrap();
        assert!((p50 - 0.5).abs() < 0.05, "{p50}");
        assert!((p99 - 0.99).abs() < 0.06, "{p99}");
        assert_eq!(s.success_rate(), Some(1.0));
    }

    #[test]
    fn empty_summary_has_no_numbers() {
        let w = Window::default();
        let s = w.summary(Instant::now(), Duration::from_secs(60));
        assert_eq!((s.success_rate(), s.quantile(0.5)), (None, None));
    }

    fn filled(n: u64, errors: u64, ms: u64) -> Summary {
        let t0 = Instant::now();
        let w = Window::new(t0);
        for i in 0..n {
            let status = if i < errors { 503 } else { 200 };
            w.record(t0, status, Duration::from_millis(ms));
        }
        w.summary(t0, Duration::from_secs(60))
    }

    #[test]
    fn verdicts() {
        let doc = |p: Summary, c: Summary| {
            let report = analyse(
                "shop",
                3,
                Duration::from_secs(60),
                &settings(),
                &[
                    VersionInput {
                        name: "stable",
                        summary: p,
                    },
                    VersionInput {
                        name: "canary",
                        summary: c,
                    },
                ],
            );
            serde_json::to_value(report).unwrap()
        };
        let d = doc(filled(200, 0, 5), filled(20, 0, 5));
        assert_eq!(d["comparison"]["canary"]["verdict"], "inconclusive");
        assert_eq!(d["versions"]["canary"]["status"], "inconclusive");
        assert!(d["versions"]["canary"]["success_rate"].is_null());
        assert!(
            d["versions"]["canary"]["reason"]
                .as_str()
                .unwrap()
                .contains("20 requests")
        );
        assert_eq!(d["versions"]["stable"]["success_rate"], 1.0);

        let d = doc(filled(200, 0, 5), filled(200, 0, 5));
        assert_eq!(d["comparison"]["canary"]["verdict"], "pass", "{d}");

        let d = doc(filled(200, 1, 5), filled(200, 20, 5));
        assert_eq!(d["comparison"]["canary"]["verdict"], "fail", "{d}");
        assert!(
            d["comparison"]["canary"]["reasons"][0]
                .as_str()
                .unwrap()
                .contains("success rate")
        );

        let d = doc(filled(200, 0, 5), filled(200, 0, 50));
        assert_eq!(d["comparison"]["canary"]["verdict"], "fail", "{d}");
        assert!(
            d["comparison"]["canary"]["reasons"][0]
                .as_str()
                .unwrap()
                .contains("p99")
        );

        // Slower by ratio but under the absolute floor: not a failure.
        let d = doc(filled(200, 0, 1), filled(200, 0, 3));
        assert_eq!(d["comparison"]["canary"]["verdict"], "pass", "{d}");
    }
}
