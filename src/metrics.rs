//! Prometheus metrics, exported in text format at `GET /metrics` on the admin listener.
//!
//! Label handles are resolved when a snapshot is built ([`VersionMetrics`]), never by
//! formatting strings per request: recording a request is a few relaxed atomic adds. Status
//! codes are resolved lazily, once per (route, version, code) per snapshot, into a fixed table.
//! Labels come only from config names and closed enums.
//!
//! The latency histogram is our own lock-free one ([`LatencyHistogram`]): prometheus-client's
//! `Histogram` takes a mutex on every observation, which we do not want on the request path.

pub mod nginx;

use crate::analysis::Window;
use crate::error::{DownstreamErrorKind, UpstreamErrorKind};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: 1 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub version: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub route: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub route: String,
    pub version: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DownstreamErrorLabels {
    /// Empty when the request was refused before routing (or never became one).
    pub route: String,
    pub kind: &'static str,
}

/// `canaryd_downstream_errors_total` handles of one route, by kind, resolved per snapshot.
#[derive(Clone, Debug)]
pub struct DownstreamCounters([Counter; 4]);

impl DownstreamCounters {
    pub fn count(&self, kind: DownstreamErrorKind) {
        self.0[kind.index()].inc();
    }

    /// The handle of one kind, for a body that counts itself when dropped early.
    pub fn counter(&self, kind: DownstreamErrorKind) -> &Counter {
        &self.0[kind.index()]
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub route: String,
    pub version: String,
    pub grpc_status: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Outcome of a config reload attempt, a closed label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
}

impl ReloadResult {
    fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

/// A histogram with fixed buckets and atomic counters. Cloning shares the counters.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// Non-cumulative counts; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// Bucket bounds in nanoseconds, for integer comparison on the hot path.
const BUCKET_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS
            .iter()
            .position(|&b| nanos <= b)
            .unwrap_or(BUCKET_NANOS.len());
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0f64, 0u64); LATENCY_BUCKETS.len() + 1];
        for (i, slot) in buckets.iter_mut().enumerate() {
            let upper = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            *slot = (upper, self.inner.buckets[i].load(Ordering::Relaxed));
        }
        // Count from the buckets so `_count` always equals the +Inf bucket in one scrape.
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Every metric canaryd exports, registered once per process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<VersionLabels, LatencyHistogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    downstream_errors: Family<DownstreamErrorLabels, Counter>,
    /// `canaryd_downstream_errors_total{route=""}`: connections and requests that failed
    /// before a route was chosen. Resolved once, so they are exported as zeros from the start.
    unrouted: DownstreamCounters,
    grpc: Family<GrpcLabels, Counter>,
    route_weight: Family<VersionLabels, Gauge<f64, AtomicU64>>,
    /// 1 for each route's primary version (absent for the others), for PromQL joins.
    route_primary: Family<VersionLabels, Gauge>,
    config_generation: Gauge,
    reloads: Family<ResultLabels, Counter>,
    ejections: Family<VersionLabels, Counter>,
    unavailable: Family<VersionLabels, Gauge>,
    fallbacks: Family<VersionLabels, Counter>,
    retries: Family<VersionLabels, Counter>,
    /// Open downstream connections (all listeners).
    pub open_connections: Gauge,
    /// Of those, keep-alive connections parked between requests with no buffers held.
    pub parked_connections: Gauge,
    /// Requests being proxied right now.
    pub in_flight: Gauge,
    /// Weight series published by the last snapshot (`Family` cannot be iterated), so
    /// versions removed by a reload stop being exported.
    published_weights: std::sync::Mutex<Vec<VersionLabels>>,
    /// Analysis windows by (route, version); they outlive snapshots so reloads keep history.
    windows: std::sync::Mutex<std::collections::HashMap<VersionLabels, Arc<Window>>>,
    /// `canaryd_rollout_*`.
    pub rollout: RolloutMetrics,
    /// `canaryd_mirror_*`.
    pub mirror: MirrorMetrics,
    /// ingress-nginx's names, for routes translated from Ingresses.
    pub nginx: Arc<nginx::NginxMetrics>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorResultLabels {
    pub route: String,
    pub version: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorCodeLabels {
    pub route: String,
    pub version: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiffLabels {
    pub route: String,
    pub kind: &'static str,
}

/// Shadow traffic: its own counters and windows, never the version's request metrics, so a
/// sick shadow changes nothing users' traffic is judged or routed by.
#[derive(Default)]
pub struct MirrorMetrics {
    requests: Family<MirrorResultLabels, Counter>,
    responses: Family<MirrorCodeLabels, Counter>,
    duration: Family<VersionLabels, LatencyHistogram>,
    diffs: Family<DiffLabels, Counter>,
    /// Mirror windows by (route, shadow version), for `source=mirror` analysis and gates.
    windows: std::sync::Mutex<std::collections::HashMap<VersionLabels, Arc<Window>>>,
    /// Comparisons by route: a "request" per compared pair, an "error" per differing one.
    diff_windows: std::sync::Mutex<std::collections::HashMap<String, Arc<Window>>>,
}

/// What became of a copy: `sent` (the shadow answered), `dropped_full` (no room in the
/// mirror's concurrency and queue, or it fell behind the primary's body), `dropped_body` (the
/// body is over `max_body`), `error` (the shadow could not be reached or failed to answer).
pub const MIRROR_RESULTS: [&str; 4] = ["sent", "dropped_full", "dropped_body", "error"];

/// Kinds of comparison outcome: `match`, or what differed.
pub const DIFF_KINDS: [&str; 4] = ["match", "status", "header", "body"];

impl MirrorMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "mirror_requests",
            "Mirrored copies by route, shadow version and result (sent, dropped_full, dropped_body, error)",
            self.requests.clone(),
        );
        registry.register(
            "mirror_responses",
            "Shadow answers by route, shadow version and HTTP status code",
            self.responses.clone(),
        );
        registry.register(
            "mirror_duration_seconds",
            "Time from sending a copy to the shadow's response headers",
            self.duration.clone(),
        );
        registry.register(
            "mirror_diffs",
            "Shadow comparisons by route and outcome (match, status, header, body)",
            self.diffs.clone(),
        );
    }

    /// Every result and diff kind of a route at 0, so `rate()` sees zeros, not gaps.
    pub fn declare(&self, route: &str, version: &str) {
        for result in MIRROR_RESULTS {
            let _ = self.requests.get_or_create(&MirrorResultLabels {
                route: route.to_string(),
                version: version.to_string(),
                result,
            });
        }
        for kind in DIFF_KINDS {
            let _ = self.diffs.get_or_create(&DiffLabels {
                route: route.to_string(),
                kind,
            });
        }
    }

    /// One comparison: `kinds` empty is a match.
    pub fn compared(&self, route: &str, kinds: &[&'static str]) {
        let count = |kind| {
            self.diffs
                .get_or_create(&DiffLabels {
                    route: route.to_string(),
                    kind,
                })
                .inc()
        };
        if kinds.is_empty() {
            count("match");
        } else {
            kinds.iter().for_each(|k| {
                count(k);
            });
        }
        // A differing pair is recorded as an "error" of the diff window.
        let status = if kinds.is_empty() { 200 } else { 500 };
        self.diff_window(route)
            .record(std::time::Instant::now(), status, Duration::ZERO);
    }

    /// The mirror window of `(route, version)`.
    pub fn window(&self, route: &str, version: &str) -> Arc<Window> {
        let key = VersionLabels {
            route: route.to_string(),
            version: version.to_string(),
        };
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// The comparisons of `route`: requests = pairs compared, errors = pairs that differed.
    pub fn diff_window(&self, route: &str) -> Arc<Window> {
        self.diff_windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.to_string())
            .or_default()
            .clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaStateLabels {
    pub route: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoutePhaseLabels {
    pub route: String,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutWeightLabels {
    pub route: String,
    /// `set` (what the rollout asks for) or `actual` (the canary's share of the last minute).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeasurementLabels {
    pub route: String,
    pub gate: String,
    pub result: &'static str,
}

/// Rollout metrics: labels are route and gate names from the config and closed enums.
#[derive(Debug, Default)]
pub struct RolloutMetrics {
    phase: Family<RoutePhaseLabels, Gauge>,
    step: Family<RouteLabels, Gauge>,
    weight: Family<RolloutWeightLabels, Gauge<f64, AtomicU64>>,
    measurements: Family<MeasurementLabels, Counter>,
    transitions: Family<RoutePhaseLabels, Counter>,
    replicas: Family<ReplicaStateLabels, Gauge>,
}

/// Where a fleet controller's replica can stand for a route, as exported.
pub const REPLICA_STATES: [&str; 6] = [
    "verified",
    "pushing",
    "unverified",
    "unreachable",
    "missing_route",
    "refused",
];

/// Every phase a rollout can be in, as exported.
pub const ROLLOUT_PHASES: [&str; 6] = [
    "pending",
    "progressing",
    "paused",
    "aborted",
    "succeeded",
    "superseded",
];

impl RolloutMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "rollout_phase",
            "1 for the phase each route's rollout is in, 0 for the others",
            self.phase.clone(),
        );
        registry.register(
            "rollout_step",
            "Index of the step each route's rollout is at",
            self.step.clone(),
        );
        registry.register(
            "rollout_weight",
            "Canary share of each rollout, percent: kind=set (the step's), kind=actual (last minute)",
            self.weight.clone(),
        );
        registry.register(
            "rollout_measurements",
            "Analysis measurements by route, gate and result",
            self.measurements.clone(),
        );
        registry.register(
            "rollout_transitions",
            "Rollout phase changes by route and the phase entered",
            self.transitions.clone(),
        );
        registry.register(
            "rollout_replicas",
            "Fleet controller: replicas by where they stand on the route's current layer",
            self.replicas.clone(),
        );
    }

    /// A fleet controller's replicas of `route`, counted by state.
    pub fn replicas<'a>(&self, route: &str, states: impl Iterator<Item = &'a str>) {
        let mut counts = [0i64; REPLICA_STATES.len()];
        for s in states {
            if let Some(i) = REPLICA_STATES.iter().position(|k| *k == s) {
                counts[i] += 1;
            }
        }
        for (state, n) in REPLICA_STATES.into_iter().zip(counts) {
            let labels = ReplicaStateLabels {
                route: route.to_string(),
                state,
            };
            self.replicas.get_or_create(&labels).set(n);
        }
    }

    /// Where a route's rollout is now.
    pub fn state(
        &self,
        route: &str,
        phase: &'static str,
        step: usize,
        set: f64,
        actual: Option<f64>,
    ) {
        for p in ROLLOUT_PHASES {
            let labels = RoutePhaseLabels {
                route: route.to_string(),
                phase: p,
            };
            self.phase.get_or_create(&labels).set(i64::from(p == phase));
        }
        let r = RouteLabels {
            route: route.to_string(),
        };
        self.step.get_or_create(&r).set(step as i64);
        let w = |kind| RolloutWeightLabels {
            route: route.to_string(),
            kind,
        };
        self.weight.get_or_create(&w("set")).set(set);
        if let Some(a) = actual {
            self.weight.get_or_create(&w("actual")).set(a);
        }
    }

    pub fn measured(&self, route: &str, gate: &str, result: &'static str) {
        self.measurements
            .get_or_create(&MeasurementLabels {
                route: route.to_string(),
                gate: gate.to_string(),
                result,
            })
            .inc();
    }

    pub fn transition(&self, route: &str, phase: &'static str) {
        self.transitions
            .get_or_create(&RoutePhaseLabels {
                route: route.to_string(),
                phase,
            })
            .inc();
    }

    /// The route has no rollout any more: its series go.
    pub fn forget(&self, route: &str) {
        for p in ROLLOUT_PHASES {
            self.phase.remove(&RoutePhaseLabels {
                route: route.to_string(),
                phase: p,
            });
        }
        self.step.remove(&RouteLabels {
            route: route.to_string(),
        });
        for kind in ["set", "actual"] {
            self.weight.remove(&RolloutWeightLabels {
                route: route.to_string(),
                kind,
            });
        }
        for state in REPLICA_STATES {
            self.replicas.remove(&ReplicaStateLabels {
                route: route.to_string(),
                state,
            });
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("canaryd");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<VersionLabels, LatencyHistogram>::default();
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let downstream_errors = Family::<DownstreamErrorLabels, Counter>::default();
        let grpc = Family::<GrpcLabels, Counter>::default();
        let route_weight = Family::<VersionLabels, Gauge<f64, AtomicU64>>::default();
        let route_primary = Family::<VersionLabels, Gauge>::default();
        let config_generation = Gauge::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let ejections = Family::<VersionLabels, Counter>::default();
        let unavailable = Family::<VersionLabels, Gauge>::default();
        let fallbacks = Family::<VersionLabels, Counter>::default();
        let retries = Family::<VersionLabels, Counter>::default();
        let open_connections = Gauge::default();
        let parked_connections = Gauge::default();
        let in_flight = Gauge::default();
        registry.register(
            "requests",
            "Proxied requests by route, version and HTTP status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request arrival to the upstream's response headers, by route and version",
            duration.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failures talking to upstreams by route, version and kind (connect, timeout, reset)",
            upstream_errors.clone(),
        );
        registry.register(
            "downstream_errors",
            "Client failures by route and kind (bad_framing, body_timeout, client_closed, \
             header_timeout); never counted against a version",
            downstream_errors.clone(),
        );
        registry.register(
            "grpc_responses",
            "gRPC calls by route, version and final grpc-status (a gRPC failure is HTTP 200)",
            grpc.clone(),
        );
        registry.register(
            "route_weight",
            "Effective weight of each version, percent",
            route_weight.clone(),
        );
        registry.register(
            "route_primary",
            "1 for the primary (stable) version of each route",
            route_primary.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the config in force",
            config_generation.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reload attempts by result",
            reloads.clone(),
        );
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected by outlier detection, by route and version",
            ejections.clone(),
        );
        registry.register(
            "endpoints_unavailable",
            "Endpoints now ejected or failing their health check, by route and version",
            unavailable.clone(),
        );
        registry.register(
            "fallback_requests",
            "Requests for a version with no available endpoint that the primary served instead",
            fallbacks.clone(),
        );
        registry.register(
            "retries",
            "Upstream attempts after the first, by route and version",
            retries.clone(),
        );
        registry.register(
            "open_connections",
            "Open downstream connections",
            open_connections.clone(),
        );
        registry.register(
            "parked_connections",
            "Open downstream HTTP/1 keep-alive connections idle long enough to hold no buffers (waiting for their next request on the socket alone)",
            parked_connections.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being proxied now",
            in_flight.clone(),
        );
        // Both results exist from the start so `rate()` and alerts see a zero, not a gap.
        for r in [ReloadResult::Success, ReloadResult::Failure] {
            let _ = reloads.get_or_create(&ResultLabels { result: r.as_str() });
        }
        let unrouted = downstream_counters(&downstream_errors, "");
        let rollout = RolloutMetrics::default();
        rollout.register(&mut registry);
        let mirror = MirrorMetrics::default();
        mirror.register(&mut registry);
        Metrics {
            rollout,
            mirror,
            nginx: Arc::new(nginx::NginxMetrics::new()),
            registry,
            requests,
            duration,
            upstream_errors,
            downstream_errors,
            unrouted,
            grpc,
            route_weight,
            route_primary,
            config_generation,
            reloads,
            ejections,
            unavailable,
            fallbacks,
            retries,
            open_connections,
            parked_connections,
            in_flight,
            published_weights: std::sync::Mutex::new(Vec::new()),
            windows: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.nginx.registry);
        let _ = encode_eof(&mut out);
        out
    }

    pub fn reload(&self, result: ReloadResult) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn set_generation(&self, generation: u64) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Publish the effective weights (and primaries) of a new snapshot, removing versions
    /// that are gone. Items: (route, version, weight percent, is primary).
    pub fn set_weights<'a>(&self, weights: impl Iterator<Item = (&'a str, &'a str, f64, bool)>) {
        let mut keep = Vec::new();
        for (route, version, w, primary) in weights {
            let labels = VersionLabels {
                route: route.to_string(),
                version: version.to_string(),
            };
            self.route_weight.get_or_create(&labels).set(w);
            if primary {
                self.route_primary.get_or_create(&labels).set(1);
            } else {
                self.route_primary.remove(&labels);
            }
            keep.push(labels);
        }
        let mut last = self
            .published_weights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for old in last.iter().filter(|l| !keep.contains(l)) {
            self.route_weight.remove(old);
            self.route_primary.remove(old);
        }
        *last = keep;
    }

    /// Resolve the client-failure handles of one route (`""`: before routing).
    pub fn downstream(&self, route: &str) -> DownstreamCounters {
        downstream_counters(&self.downstream_errors, route)
    }

    /// Count a client failure of a connection that never became a routed request.
    pub fn downstream_error(&self, kind: DownstreamErrorKind) {
        self.unrouted.count(kind);
    }

    /// Resolve the per-request handles of one (route, version).
    pub fn version(self: &Arc<Self>, route: &str, version: &str) -> VersionMetrics {
        self.version_with(route, version, None)
    }

    /// [`Metrics::version`] for a version of a route translated from an Ingress, which also
    /// counts under ingress-nginx's names with these labels.
    pub fn version_with(
        self: &Arc<Self>,
        route: &str,
        version: &str,
        nginx: Option<nginx::NginxLabels>,
    ) -> VersionMetrics {
        let labels = VersionLabels {
            route: route.to_string(),
            version: version.to_string(),
        };
        let upstream_errors = UpstreamErrorKind::ALL.map(|k| {
            self.upstream_errors
                .get_or_create_owned(&UpstreamErrorLabels {
                    route: route.to_string(),
                    version: version.to_string(),
                    kind: k.as_str(),
                })
        });
        let window = self
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(labels.clone())
            .or_default()
            .clone();
        VersionMetrics {
            window,
            duration: self.duration.get_or_create_owned(&labels),
            ejections: self.ejections.get_or_create_owned(&labels),
            unavailable: self.unavailable.get_or_create_owned(&labels),
            fallbacks: self.fallbacks.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            labels,
            codes: (0..CODE_SLOTS).map(|_| OnceLock::new()).collect(),
            grpc: std::array::from_fn(|_| OnceLock::new()),
            upstream_errors,
            shadow: OnceLock::new(),
            nginx: nginx.map(|l| self.nginx.handles(l)),
            metrics: self.clone(),
        }
    }
}

/// The handles of every kind of client failure on `route`.
fn downstream_counters(
    family: &Family<DownstreamErrorLabels, Counter>,
    route: &str,
) -> DownstreamCounters {
    DownstreamCounters(DownstreamErrorKind::ALL.map(|k| {
        family.get_or_create_owned(&DownstreamErrorLabels {
            route: route.to_string(),
            kind: k.as_str(),
        })
    }))
}

/// Status codes 100..=599 get a slot each.
pub(crate) const CODE_SLOTS: usize = 500;

/// Pre-resolved metric handles for one (route, version) in one snapshot.
#[derive(Debug)]
pub struct VersionMetrics {
    labels: VersionLabels,
    /// `canaryd_requests_total` by status code, resolved on the first request with that code.
    codes: Box<[OnceLock<Counter>]>,
    duration: LatencyHistogram,
    /// Indexed like `UpstreamErrorKind::ALL`.
    upstream_errors: [Counter; 4],
    /// `canaryd_grpc_responses_total` by gRPC status 0..=16, resolved on first use.
    grpc: [OnceLock<Counter>; 17],
    /// Sliding window for the analysis endpoint.
    pub window: Arc<Window>,
    ejections: Counter,
    unavailable: Gauge,
    fallbacks: Counter,
    retries: Counter,
    /// The version as a shadow (`canaryd_mirror_*`), resolved on its first copy.
    shadow: OnceLock<Box<ShadowMetrics>>,
    /// ingress-nginx's series, for a version of a route translated from an Ingress.
    nginx: Option<nginx::NginxHandles>,
    metrics: Arc<Metrics>,
}

/// Pre-resolved `canaryd_mirror_*` handles of one shadow version: a copy records without
/// allocating or locking once its status code has been seen.
#[derive(Debug)]
struct ShadowMetrics {
    /// Indexed like [`MIRROR_RESULTS`].
    results: [Counter; 4],
    codes: Box<[OnceLock<Counter>]>,
    duration: LatencyHistogram,
    window: Arc<Window>,
}

impl VersionMetrics {
    fn shadow(&self) -> &ShadowMetrics {
        self.shadow.get_or_init(|| {
            let (route, version) = (&self.labels.route, &self.labels.version);
            let mirror = &self.metrics.mirror;
            Box::new(ShadowMetrics {
                results: MIRROR_RESULTS.map(|result| {
                    mirror.requests.get_or_create_owned(&MirrorResultLabels {
                        route: route.clone(),
                        version: version.clone(),
                        result,
                    })
                }),
                codes: (0..CODE_SLOTS).map(|_| OnceLock::new()).collect(),
                duration: mirror.duration.get_or_create_owned(&self.labels),
                window: mirror.window(route, version),
            })
        })
    }

    /// What became of a copy to this version (one of [`MIRROR_RESULTS`]).
    pub fn mirror_result(&self, result: &'static str) {
        if let Some(i) = MIRROR_RESULTS.iter().position(|r| *r == result) {
            self.shadow().results[i].inc();
        }
    }

    /// A copy the shadow failed (refused, reset, no answer in time): the mirror window counts
    /// it as the 502/504 a user would have got, so a dead shadow fails a `source: mirror`
    /// gate instead of leaving it without data.
    pub fn mirror_failed(&self, status: u16, elapsed: Duration) {
        self.shadow()
            .window
            .record(std::time::Instant::now(), status, elapsed);
    }

    /// This version's answer to a copy: `canaryd_mirror_responses_total`, the mirror
    /// duration and window — never the version's own request metrics.
    pub fn mirror_response(&self, status: u16, elapsed: Duration) {
        let s = self.shadow();
        let slot = usize::from(status.clamp(100, 599) - 100);
        s.codes[slot]
            .get_or_init(|| {
                self.metrics
                    .mirror
                    .responses
                    .get_or_create_owned(&MirrorCodeLabels {
                        route: self.labels.route.clone(),
                        version: self.labels.version.clone(),
                        code: status,
                    })
            })
            .inc();
        s.duration.observe(elapsed);
        s.window.record(std::time::Instant::now(), status, elapsed);
    }
    /// Count one response with its status and latency. `window`: when it completed, to feed
    /// the analysis window (`None` for gRPC calls, which feed it from their trailers).
    /// Allocation-free once the status code has been seen on this snapshot.
    pub fn record(&self, status: u16, elapsed: Duration, window: Option<std::time::Instant>) {
        if let Some(now) = window {
            self.window.record(now, status, elapsed);
        }
        let slot = usize::from(status.clamp(100, 599) - 100);
        self.codes[slot]
            .get_or_init(|| {
                self.metrics.requests.get_or_create_owned(&RequestLabels {
                    route: self.labels.route.clone(),
                    version: self.labels.version.clone(),
                    code: status,
                })
            })
            .inc();
        self.duration.observe(elapsed);
        if let Some(n) = &self.nginx {
            n.record(status, elapsed);
        }
    }

    /// A gRPC call ended with `code` (0..=16). The analysis window counts it by the HTTP
    /// status the code corresponds to, so UNAVAILABLE is as much a failure as a 503;
    /// `window` is `None` for a call the client abandoned, which says nothing of the version.
    /// Count one gRPC call's final status in `canaryd_grpc_responses_total`.
    pub fn grpc(&self, code: u8) {
        let code = code.min(16);
        self.grpc[usize::from(code)]
            .get_or_init(|| {
                self.metrics.grpc.get_or_create_owned(&GrpcLabels {
                    route: self.labels.route.clone(),
                    version: self.labels.version.clone(),
                    grpc_status: code,
                })
            })
            .inc();
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind.index()].inc();
    }

    /// Outlier detection ejected one of this version's endpoints.
    pub fn ejected(&self) {
        self.ejections.inc();
    }

    /// How many of this version's endpoints cannot take traffic now.
    pub fn set_unavailable(&self, n: usize) {
        self.unavailable.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The `canaryd_endpoints_unavailable` gauge of this version (for health checkers).
    pub fn unavailable_gauge(&self) -> Gauge {
        self.unavailable.clone()
    }

    /// A request decided for this version was served by the primary instead.
    pub fn fallback(&self) {
        self.fallbacks.inc();
    }

    /// Another attempt was made for a request of this version.
    pub fn retry(&self) {
        self.retries.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_text() {
        let m = Arc::new(Metrics::new());
        let v = m.version("shop", "canary");
        let now = std::time::Instant::now();
        v.record(200, Duration::from_micros(500), Some(now));
        v.record(200, Duration::from_millis(3), Some(now));
        v.record(503, Duration::from_secs(20), Some(now));
        let text = m.encode();
        for line in [
            "canaryd_requests_total{route=\"shop\",version=\"canary\",code=\"200\"} 2",
            "canaryd_requests_total{route=\"shop\",version=\"canary\",code=\"503\"} 1",
            "canaryd_request_duration_seconds_bucket{le=\"0.001\",route=\"shop\",version=\"canary\"} 1",
            "canaryd_request_duration_seconds_bucket{le=\"0.005\",route=\"shop\",version=\"canary\"} 2",
            "canaryd_request_duration_seconds_bucket{le=\"10.0\",route=\"shop\",version=\"canary\"} 2",
            "canaryd_request_duration_seconds_bucket{le=\"+Inf\",route=\"shop\",version=\"canary\"} 3",
            "canaryd_request_duration_seconds_count{route=\"shop\",version=\"canary\"} 3",
            "canaryd_config_reloads_total{result=\"failure\"} 0",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }
}
