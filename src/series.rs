//! Recent history of every route for the dashboard and `GET /api/v1/routes/{r}/series`: one
//! point per analysis slot (5 s) for the last 15 minutes — each version's set weight, request
//! count, rate, success rate, p50 and p99, and the shadow comparison when the route mirrors.
//!
//! Nothing is recorded on the request path: a sampler wakes just after each slot boundary and
//! reads the slot that closed from the analysis windows the proxy already fills (through the
//! rollout [`Target`](crate::rollout::driver::Target), so a fleet controller's series are the
//! sum of its replicas', exactly as its gates see them). The dashboard and scripts therefore
//! see the same numbers the rollout is judged on.

use crate::analysis::{SLOT, Summary};
use crate::control::Control;
use crate::rollout::driver::{Rollouts, Windows};
use crate::rollout::measure::now_ms;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Points kept per route: 15 minutes of 5-second slots.
pub const KEEP: usize = 180;

/// How long after a slot boundary the sampler reads the slot that closed (requests that
/// finish right at the boundary have recorded by then).
const SETTLE: Duration = Duration::from_millis(250);

/// One version at one point.
#[derive(Debug, Clone, PartialEq)]
struct VersionPoint {
    name: String,
    /// Set weight (effective, percent) when the point was taken.
    weight: f64,
    summary: Summary,
}

/// One slot of one route.
#[derive(Debug, Clone)]
struct Point {
    /// Unix seconds of the slot's start.
    at: u64,
    versions: Vec<VersionPoint>,
    /// The shadow comparison and the shadows' own answers, when the route mirrors.
    mirror: Option<MirrorPoint>,
}

#[derive(Debug, Clone)]
struct MirrorPoint {
    /// Pairs compared (`requests`) and pairs that differed (`errors`).
    diffs: Summary,
    shadows: Vec<(String, Summary)>,
}

/// The ring buffers of every route.
#[derive(Debug, Default)]
pub struct Series {
    routes: Mutex<BTreeMap<String, VecDeque<Point>>>,
}

/// A route's version when sampled: its name and set weight.
struct VersionNow {
    name: String,
    weight: f64,
}

struct RouteNow {
    name: String,
    versions: Vec<VersionNow>,
    /// Shadow version names, when the route mirrors (this process's traffic only).
    shadows: Option<Vec<String>>,
}

impl Series {
    pub fn new() -> Arc<Series> {
        Arc::new(Series::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<Point>>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take one point per route every slot until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        control: Arc<Control>,
        rollouts: Arc<Rollouts>,
        mut stop: watch::Receiver<bool>,
    ) {
        let slot_ms = SLOT.as_millis() as u64;
        loop {
            let now = now_ms();
            let boundary = (now / slot_ms + 1) * slot_ms;
            let wait = Duration::from_millis(boundary - now) + SETTLE;
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let to = boundary / 1000;
            self.sample(&control, &rollouts, to - SLOT.as_secs(), to)
                .await;
        }
    }

    /// Read the slot `[from, to)` of every route of the current config and append it.
    pub async fn sample(&self, control: &Control, rollouts: &Rollouts, from: u64, to: u64) {
        let routes = routes_now(control);
        let mut reads = tokio::task::JoinSet::new();
        for (i, r) in routes.iter().enumerate() {
            let read = rollouts.range(&r.name, from, to);
            reads.spawn(async move { (i, read.await) });
        }
        let mut read: Vec<Option<Windows>> = routes.iter().map(|_| None).collect();
        while let Some(Ok((i, w))) = reads.join_next().await {
            read[i] = Some(w);
        }
        let metrics = &control.state().metrics;
        let now = Instant::now();
        let mut all = self.lock();
        all.retain(|name, _| routes.iter().any(|r| r.name == *name));
        for (r, w) in routes.into_iter().zip(read) {
            let windows = match w {
                Some(Ok(w)) => w,
                // A replica that cannot be read, a version created mid-slot: a gap, not zeros.
                Some(Err(e)) => {
                    tracing::debug!(route = %r.name, error = %e, "series: slot not read");
                    continue;
                }
                None => continue,
            };
            let versions = r
                .versions
                .into_iter()
                .map(|v| {
                    let summary = windows
                        .iter()
                        .find(|(n, _)| *n == v.name)
                        .map(|(_, s)| s.clone())
                        .unwrap_or_else(Summary::empty);
                    VersionPoint {
                        name: v.name,
                        weight: v.weight,
                        summary,
                    }
                })
                .collect();
            let mirror = r.shadows.map(|shadows| MirrorPoint {
                diffs: metrics
                    .mirror
                    .diff_window(&r.name)
                    .range(from, to, now)
                    .unwrap_or_else(|_| Summary::empty()),
                shadows: shadows
                    .into_iter()
                    .map(|s| {
                        let w = metrics.mirror.window(&r.name, &s);
                        let summary = w.range(from, to, now).unwrap_or_else(|_| Summary::empty());
                        (s, summary)
                    })
                    .collect(),
            });
            let ring = all.entry(r.name).or_default();
            if ring.back().is_some_and(|p| p.at >= from) {
                continue;
            }
            if ring.len() == KEEP {
                ring.pop_front();
            }
            ring.push_back(Point {
                at: from,
                versions,
                mirror,
            });
        }
    }

    /// The route's points as columns (one array per measure, oldest first); empty columns
    /// for a route with no point yet.
    pub fn view(&self, route: &str) -> SeriesView {
        let all = self.lock();
        let empty = VecDeque::new();
        let ring = all.get(route).unwrap_or(&empty);
        view_of(route, ring)
    }
}

fn routes_now(control: &Control) -> Vec<RouteNow> {
    let snap = control.state().snapshot();
    let controller = snap.config.controller.is_some();
    snap.config
        .routes
        .iter()
        .map(|rc| {
            let mirrors = rc.mirror.iter().chain(&rc.mirrors);
            let mut shadows: Vec<String> = Vec::new();
            for m in mirrors {
                let name = &rc.versions[m.to].name;
                if !shadows.contains(name) {
                    shadows.push(name.clone());
                }
            }
            RouteNow {
                name: rc.name.clone(),
                versions: rc
                    .versions
                    .iter()
                    .map(|v| VersionNow {
                        name: v.name.clone(),
                        weight: v.weight.percent(),
                    })
                    .collect(),
                // A controller carries no traffic: its replicas' copies are theirs to show.
                shadows: (!controller && !shadows.is_empty()).then_some(shadows),
            }
        })
        .collect()
}

/// `GET /api/v1/routes/{r}/series`.
#[derive(Debug, Serialize)]
pub struct SeriesView {
    pub route: String,
    pub interval_seconds: u64,
    pub keep_seconds: u64,
    /// Unix seconds of each point's slot start, oldest first.
    pub at: Vec<u64>,
    /// Every version seen in the kept points (the newest point's order first); `null` in a
    /// column where the version did not exist at that point.
    pub versions: Vec<VersionColumns>,
    /// Each version's share of the route's requests over the last minute (12 points),
    /// percent; `null` without requests.
    pub share_last_minute: BTreeMap<String, Option<f64>>,
    /// Present when the newest point mirrored.
    pub mirror: Option<MirrorColumns>,
}

#[derive(Debug, Default, Serialize)]
pub struct VersionColumns {
    pub name: String,
    /// Set weight, percent.
    pub weight: Vec<Option<f64>>,
    pub requests: Vec<Option<u64>>,
    /// Requests per second over the point's slot.
    pub rate: Vec<Option<f64>>,
    /// Non-5xx share, percent; `null` without requests.
    pub success_rate: Vec<Option<f64>>,
    pub p50_seconds: Vec<Option<f64>>,
    pub p99_seconds: Vec<Option<f64>>,
}

#[derive(Debug, Default, Serialize)]
pub struct MirrorColumns {
    /// Pairs compared and pairs that differed per point.
    pub compared: Vec<Option<u64>>,
    pub differed: Vec<Option<u64>>,
    /// Differing share of the pairs compared, percent; `null` without comparisons.
    pub diff_rate: Vec<Option<f64>>,
    /// The shadows' own answers (requests, success rate, latency), per shadow version.
    pub shadows: Vec<VersionColumns>,
}

/// Points kept in the last minute.
const MINUTE: usize = 12;

fn view_of(route: &str, ring: &VecDeque<Point>) -> SeriesView {
    let mut names: Vec<String> = Vec::new();
    for p in ring.iter().rev() {
        for v in &p.versions {
            if !names.contains(&v.name) {
                names.push(v.name.clone());
            }
        }
    }
    let versions = names
        .iter()
        .map(|name| {
            let mut c = VersionColumns {
                name: name.clone(),
                ..Default::default()
            };
            for p in ring {
                let v = p.versions.iter().find(|v| v.name == *name);
                c.push(v.map(|v| (&v.summary, Some(v.weight))));
            }
            c
        })
        .collect();
    let recent = ring.iter().rev().take(MINUTE);
    let mut counts: BTreeMap<String, u64> = names.iter().map(|n| (n.clone(), 0)).collect();
    for p in recent {
        for v in &p.versions {
            *counts.entry(v.name.clone()).or_default() += v.summary.requests;
        }
    }
    let total: u64 = counts.values().sum();
    let share_last_minute = counts
        .into_iter()
        .map(|(n, c)| {
            let share = (total > 0).then(|| (c as f64 * 10_000.0 / total as f64).round() / 100.0);
            (n, share)
        })
        .collect();
    let mirror = ring
        .back()
        .and_then(|p| p.mirror.as_ref())
        .map(|newest| mirror_columns(ring, newest));
    SeriesView {
        route: route.to_string(),
        interval_seconds: SLOT.as_secs(),
        keep_seconds: SLOT.as_secs() * KEEP as u64,
        at: ring.iter().map(|p| p.at).collect(),
        versions,
        share_last_minute,
        mirror,
    }
}

fn mirror_columns(ring: &VecDeque<Point>, newest: &MirrorPoint) -> MirrorColumns {
    let mut m = MirrorColumns {
        shadows: newest
            .shadows
            .iter()
            .map(|(name, _)| VersionColumns {
                name: name.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    for p in ring {
        let diffs = p.mirror.as_ref().map(|m| &m.diffs);
        m.compared.push(diffs.map(|d| d.requests));
        m.differed.push(diffs.map(|d| d.errors));
        m.diff_rate.push(
            diffs.and_then(|d| {
                (d.requests > 0).then(|| 100.0 * d.errors as f64 / d.requests as f64)
            }),
        );
        for c in &mut m.shadows {
            let s = p
                .mirror
                .as_ref()
                .and_then(|m| m.shadows.iter().find(|(n, _)| *n == c.name));
            c.push(s.map(|(_, s)| (s, None)));
        }
    }
    m
}

impl VersionColumns {
    fn push(&mut self, point: Option<(&Summary, Option<f64>)>) {
        let secs = SLOT.as_secs_f64();
        self.weight.push(point.and_then(|(_, w)| w));
        self.requests.push(point.map(|(s, _)| s.requests));
        self.rate.push(point.map(|(s, _)| s.requests as f64 / secs));
        self.success_rate
            .push(point.and_then(|(s, _)| s.success_rate().map(|r| r * 100.0)));
        self.p50_seconds
            .push(point.and_then(|(s, _)| s.quantile(0.50)));
        self.p99_seconds
            .push(point.and_then(|(s, _)| s.quantile(0.99)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests: u64, errors: u64) -> Summary {
        let mut latency = vec![0u64; Summary::bounds_us().len() + 1];
        latency[10] = requests;
        Summary::from_parts(requests, errors, 1_000, &latency).unwrap()
    }

    fn point(at: u64, stable: u64, canary: Option<u64>) -> Point {
        let mut versions = vec![VersionPoint {
            name: "stable".into(),
            weight: 90.0,
            summary: summary(stable, 0),
        }];
        if let Some(c) = canary {
            versions.push(VersionPoint {
                name: "canary".into(),
                weight: 10.0,
                summary: summary(c, c / 2),
            });
        }
        Point {
            at,
            versions,
            mirror: None,
        }
    }

    #[test]
    fn columns_align_and_a_missing_version_is_null() {
        let ring: VecDeque<Point> = [point(0, 10, None), point(5, 90, Some(10))].into();
        let v = view_of("r", &ring);
        assert_eq!(v.at, vec![0, 5]);
        let names: Vec<&str> = v.versions.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["stable", "canary"]);
        let canary = &v.versions[1];
        assert_eq!(canary.requests, vec![None, Some(10)]);
        assert_eq!(canary.rate, vec![None, Some(2.0)]);
        assert_eq!(canary.success_rate, vec![None, Some(50.0)]);
        assert_eq!(canary.weight, vec![None, Some(10.0)]);
        assert!(canary.p99_seconds[1].is_some());
        // 100 stable + 10 canary in the last minute.
        assert_eq!(v.share_last_minute["canary"], Some(9.09));
        assert_eq!(v.share_last_minute["stable"], Some(90.91));
    }

    #[test]
    fn share_covers_the_last_minute_only() {
        let mut ring = VecDeque::new();
        ring.push_back(point(0, 0, Some(1000)));
        for i in 1..=MINUTE as u64 {
            ring.push_back(point(i * 5, 50, Some(50)));
        }
        let v = view_of("r", &ring);
        assert_eq!(v.share_last_minute["canary"], Some(50.0));
    }
}
