//! Raw configuration as written in YAML: serde types that mirror the file one to one.
//!
//! Nothing here is trusted. Every struct denies unknown fields so a typo is an error rather
//! than a silently ignored setting; `super::validate` turns these into runtime types and is
//! the only place that decides what a value means.

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Downstream listeners; at least one.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// Admin listener (metrics, health, API); absent = no admin listener.
    pub admin: Option<RawAdmin>,
    /// Proxy-wide defaults (timeouts, response headers).
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Thresholds for `GET /api/v1/routes/{route}/analysis`.
    #[serde(default)]
    pub analysis: RawAnalysis,
    /// Present in a fleet controller's file (`canaryd controller`): the replicas it drives.
    pub controller: Option<RawController>,
}

/// `controller:`: the canaryd replicas a fleet controller drives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawController {
    /// Admin URLs of the replicas, e.g. `http://10.0.0.5:9901`.
    pub targets: Option<Vec<String>>,
    /// `name:port` resolved every interval (a Kubernetes headless Service: every pod).
    pub targets_dns: Option<String>,
    /// Bearer token sent to the replicas (or env `CANARYD_TARGET_TOKEN`).
    pub token: Option<String>,
    /// Reconcile interval (default 1s).
    pub interval: Option<String>,
    /// Where the controller keeps its rollout state.
    pub state_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    pub min_requests: Option<u64>,
    /// Percentage points the canary's success rate may trail the primary's.
    pub max_success_rate_drop: Option<f64>,
    /// How many times the primary's p99 the canary's p99 may be.
    pub max_p99_ratio: Option<f64>,
    /// p99 differences below this are never a failure, e.g. "5ms".
    pub latency_floor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Certificates chosen by SNI host name; `cert`/`key` serve every other name.
    #[serde(default)]
    pub sni: Vec<RawSniCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniCert {
    /// `shop.example.com` or `*.example.com`.
    pub host: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM bundle of CAs to trust instead of the built-in web PKI roots.
    pub ca: Option<String>,
    /// SNI and certificate name to expect, when it differs from the endpoint host.
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: String,
    /// Bearer token for `/api/v1/*`; `CANARYD_ADMIN_TOKEN` in the environment takes precedence.
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Add `x-canaryd-version: <version>` to every proxied response.
    #[serde(default)]
    pub version_header: bool,
    /// One structured log line per request (target `canaryd::access`).
    #[serde(default)]
    pub access_log: bool,
    /// Most open downstream connections; more wait in the listen backlog.
    pub max_connections: Option<usize>,
    /// A client must send its first byte and complete request headers within this.
    pub header_timeout: Option<String>,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Option<String>,
    /// A downstream connection with no request in flight is closed after this (HTTP/1
    /// keep-alive and HTTP/2 alike).
    pub idle_timeout: Option<String>,
    /// How many proxies in front of canaryd append to `X-Forwarded-For`; the client address
    /// for `client_ip` rules is taken that many hops from the right (0: the TCP peer).
    pub trusted_hops: Option<u32>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// HTTP/1.1 upgrade protocols (`Upgrade` tokens) routes may tunnel; default `[websocket]`.
    pub upgrades: Option<Vec<String>>,
    /// Where rollout state survives restarts; required by any route with a `rollout`.
    pub state_file: Option<String>,
    /// `/readyz` answers 503 until a fleet controller has synced this replica.
    #[serde(default)]
    pub wait_for_controller: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect to an endpoint, e.g. "2s".
    pub connect: Option<String>,
    /// From sending the request to receiving the upstream's response headers, e.g. "30s".
    pub response: Option<String>,
    /// Longest gap between two pieces of a request or response body, e.g. "60s".
    pub idle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Retries after the first attempt (0 turns retries off, connect failures included).
    pub attempts: Option<u32>,
    /// Upstream statuses that are retried for idempotent requests, e.g. [502, 503].
    #[serde(default)]
    pub on_status: Vec<u16>,
    /// Retries in flight may be at most this percent of the route's requests in flight.
    pub budget_percent: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Consecutive connect failures or 5xx that eject an endpoint; 0 turns detection off.
    pub consecutive_failures: Option<u32>,
    /// First ejection lasts this long; each repeat adds it again, up to `max_ejection_time`.
    pub base_ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    /// Never eject more than this percent of a version's endpoints (at least one may go).
    pub max_ejection_percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path requested with GET; a 2xx or 3xx answer is healthy.
    pub path: String,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: RawMatch,
    pub versions: OrderedMap<RawVersion>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub sticky: Option<RawSticky>,
    pub mirror: Option<RawMirror>,
    /// Per-route override of `proxy.timeouts`.
    pub timeouts: Option<RawTimeouts>,
    pub retries: Option<RawRetries>,
    pub outlier_detection: Option<RawOutlier>,
    pub health_check: Option<RawHealthCheck>,
    /// Send a non-primary version's traffic to the primary while none of its endpoints is
    /// available.
    #[serde(default)]
    pub fallback: bool,
    /// Per-route override of `proxy.upgrades`.
    pub upgrades: Option<Vec<String>>,
    /// Progressive delivery: steps, analysis gates, promotion and rollback.
    pub rollout: Option<RawRollout>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub weight: Option<f64>,
    /// Upstream protocol: `http1` (default), `h2c` (HTTP/2 with prior knowledge, or h2 over
    /// TLS), `auto` (ALPN over TLS, HTTP/1.1 in clear text).
    pub protocol: Option<String>,
    /// Connect to the endpoints with TLS (`tls: {}` for defaults).
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Optional name; runtime rules set through the admin API always have one.
    pub name: Option<String>,
    pub to: String,
    pub when: RawWhen,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// One header condition or a list of them (all must hold).
    pub header: Option<OneOrMany<RawHeaderCond>>,
    /// One cookie condition or a list of them (all must hold).
    pub cookie: Option<OneOrMany<RawCookieCond>>,
    /// The client address must be in one of these networks, e.g. [10.0.0.0/8, "::1/128"].
    pub client_ip: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderCond {
    pub name: String,
    pub equals: Option<String>,
    pub matches: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookieCond {
    pub name: String,
    pub equals: Option<String>,
    pub matches: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub key: RawStickyKey,
    pub assign_cookie: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStickyKey {
    pub cookie: Option<String>,
    pub header: Option<String>,
}

/// `routes[].mirror`, and the body of `PUT /api/v1/routes/{r}/mirrors/{name}` (which takes
/// `to`, `percent`, `when` and `methods`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub to: String,
    pub percent: f64,
    /// Only requests matching these conditions (as a rule's `when`) are copied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<RawWhenValue>,
    /// Methods copied; default the idempotent ones (GET, HEAD, OPTIONS, PUT, DELETE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Largest request body copied, e.g. `1MiB` (default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<String>,
    /// Appended to the copy's `Host` (default `-shadow`, as Envoy does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_suffix: Option<String>,
    /// Copies in flight at once, per route (default 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Copies waiting for a free slot, per route (default 128); more are dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<RawCompare>,
}

/// A rule's `when`, kept as written (validated into conditions with [`RawWhen`]).
pub type RawWhenValue = serde_json::Value;

/// `mirror.compare`: the shadow comparison.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    /// Percent of copies compared (default 10; 0 turns comparison off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<f64>,
    /// Response headers compared (default `[content-type]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// JSON fields left out of the comparison: a name (at any depth) or a dotted path from the
    /// top (`data.id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore: Option<Vec<String>>,
    /// Largest response body compared (default `256KiB`); longer ones compare status and
    /// headers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<String>,
}

/// `routes[].rollout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// Identifies the rollout in the state file: `[a-z0-9._-]`, 1 to 63 characters.
    pub id: String,
    /// The version the rollout drives; default: the second version.
    pub canary: Option<String>,
    /// A list of steps or the Flagger shorthand; absent is reported like an empty list.
    pub steps: Option<RawSteps>,
    /// A key of `analysis`, measured from the first step to the end.
    pub background_analysis: Option<String>,
    /// Gate name → gate, in file order (so a name given twice can be reported).
    pub analysis: Option<OrderedMap<RawGate>>,
}

/// `steps: [..]` or the Flagger shorthand `steps: { step_weight, max_weight, interval }`.
/// Hand-written rather than `#[serde(untagged)]` so inner errors reach the user.
#[derive(Debug)]
pub enum RawSteps {
    List(Vec<RawStep>),
    Shorthand(RawStepShorthand),
}

impl<'de> Deserialize<'de> for RawSteps {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_;
        impl<'de> Visitor<'de> for V_ {
            type Value = RawSteps;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of steps or { step_weight, max_weight, interval }")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawStepShorthand::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSteps::Shorthand)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<RawStep>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(RawSteps::List)
            }
        }
        d.deserialize_any(V_)
    }
}

/// Flagger-style steps: `set_weight k·step_weight, pause interval` while k·step_weight ≤
/// max_weight.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStepShorthand {
    pub step_weight: f64,
    pub max_weight: f64,
    pub interval: String,
}

/// One step, written as a one-key map (`- set_weight: 5`).
#[derive(Debug)]
pub enum RawStep {
    /// Percent, 0 to 100 with up to two decimals.
    SetWeight(f64),
    Pause(RawPause),
    /// A key of `rollout.analysis`.
    Analysis(String),
    SetHeaderRoute(RawHeaderRoute),
    SetMirrorRoute(RawMirrorRoute),
}

/// `set_mirror_route: { name, percent, to, when, methods }` (Argo's setMirrorRoute): a
/// mirror managed by the rollout; `to` defaults to the rollout's canary.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirrorRoute {
    pub name: String,
    pub to: Option<String>,
    pub percent: f64,
    pub when: Option<RawWhenValue>,
    pub methods: Option<Vec<String>>,
}

/// `pause: 2m`, `pause: { duration: 2m }`, or `pause: {}` (until promoted).
#[derive(Debug)]
pub enum RawPause {
    /// `pause: 2m`.
    Duration(String),
    /// `pause: { duration: 2m }`, or `pause: {}` (`None`: until promoted).
    Map { duration: Option<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPauseMap {
    duration: Option<String>,
}

impl<'de> Deserialize<'de> for RawPause {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_;
        impl<'de> Visitor<'de> for V_ {
            type Value = RawPause;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 2m, or {} to pause until promoted")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(RawPause::Duration(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawPauseMap::deserialize(de::value::MapAccessDeserializer::new(map)).map(|m| {
                    RawPause::Map {
                        duration: m.duration,
                    }
                })
            }
        }
        d.deserialize_any(V_)
    }
}

/// `set_header_route: { name, when }`: a rule to the canary, managed by the rollout.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderRoute {
    pub name: String,
    pub when: RawWhen,
}

/// `rollout.analysis.<name>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub interval: Option<String>,
    pub window: Option<String>,
    pub initial_delay: Option<String>,
    pub count: Option<u32>,
    /// Default: the top-level `analysis.min_requests`.
    pub min_requests: Option<u64>,
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    pub failure_limit: Option<u32>,
    pub consecutive_failure_limit: Option<u32>,
    pub error_limit: Option<u32>,
    pub inconclusive_limit: Option<u32>,
    /// `pause` or `continue`.
    pub on_inconclusive: Option<String>,
    /// `live` (default): the canary's own traffic; `mirror`: the canary as a shadow, from its
    /// mirror window.
    pub source: Option<String>,
}

/// One check of a gate, written as a one-key map (`- success_rate: { min: 99 }`).
#[derive(Debug)]
pub enum RawCheck {
    SuccessRate(RawSuccessRateCheck),
    LatencyP99(RawLatencyCheck),
    Prometheus(RawPrometheusCheck),
    Webhook(RawWebhookCheck),
    DiffRate(RawDiffRateCheck),
}

/// `diff_rate: { max: 0.1 }`: the share of compared mirror pairs that differed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiffRateCheck {
    pub max: f64,
    #[serde(default)]
    pub critical: bool,
    pub min_requests: Option<u64>,
}

// `critical` and `min_requests` are repeated in every check rather than flattened:
// `#[serde(flatten)]` does not work with `deny_unknown_fields`.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSuccessRateCheck {
    pub min: Option<f64>,
    pub max_drop_vs_primary: Option<f64>,
    #[serde(default)]
    pub critical: bool,
    pub min_requests: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatencyCheck {
    pub max: Option<String>,
    pub max_ratio_vs_primary: Option<f64>,
    #[serde(default)]
    pub critical: bool,
    pub min_requests: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheusCheck {
    pub url: String,
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub critical: bool,
    pub min_requests: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookCheck {
    pub url: String,
    pub min_confidence: Option<f64>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub critical: bool,
    pub min_requests: Option<u64>,
}

// serde_yaml_ng reads externally tagged enums only from YAML tags (`!set_weight 5`), so
// the one-key maps of steps and checks are read by hand: the key picks the variant, an
// unknown key is an `unknown field` error like any other, and a second key is an error.

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const KEYS: &[&str] = &[
            "set_weight",
            "pause",
            "analysis",
            "set_header_route",
            "set_mirror_route",
        ];
        struct V_;
        impl<'de> Visitor<'de> for V_ {
            type Value = RawStep;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a step: a map with one key, set_weight, pause, analysis, set_header_route or set_mirror_route",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let key = one_key(&mut map, &self, KEYS)?;
                let step = match key.as_str() {
                    "set_weight" => RawStep::SetWeight(map.next_value()?),
                    "pause" => RawStep::Pause(map.next_value()?),
                    "analysis" => RawStep::Analysis(map.next_value()?),
                    "set_mirror_route" => RawStep::SetMirrorRoute(map.next_value()?),
                    _ => RawStep::SetHeaderRoute(map.next_value()?),
                };
                no_second_key(&mut map, &key, "step")?;
                Ok(step)
            }
        }
        d.deserialize_map(V_)
    }
}

impl<'de> Deserialize<'de> for RawCheck {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const KEYS: &[&str] = &[
            "success_rate",
            "latency_p99",
            "prometheus",
            "webhook",
            "diff_rate",
        ];
        struct V_;
        impl<'de> Visitor<'de> for V_ {
            type Value = RawCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a check: a map with one key, success_rate, latency_p99, prometheus, webhook or diff_rate",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let key = one_key(&mut map, &self, KEYS)?;
                let check = match key.as_str() {
                    "success_rate" => RawCheck::SuccessRate(map.next_value()?),
                    "latency_p99" => RawCheck::LatencyP99(map.next_value()?),
                    "prometheus" => RawCheck::Prometheus(map.next_value()?),
                    "diff_rate" => RawCheck::DiffRate(map.next_value()?),
                    _ => RawCheck::Webhook(map.next_value()?),
                };
                no_second_key(&mut map, &key, "check")?;
                Ok(check)
            }
        }
        d.deserialize_map(V_)
    }
}

/// The key of a one-key map, which must be one of `keys`.
fn one_key<'de, A: MapAccess<'de>>(
    map: &mut A,
    expected: &dyn de::Expected,
    keys: &'static [&'static str],
) -> Result<String, A::Error> {
    match map.next_key::<String>()? {
        None => Err(de::Error::invalid_length(0, expected)),
        Some(k) if keys.contains(&k.as_str()) => Ok(k),
        Some(k) => Err(de::Error::unknown_field(&k, keys)),
    }
}

fn no_second_key<'de, A: MapAccess<'de>>(
    map: &mut A,
    first: &str,
    what: &str,
) -> Result<(), A::Error> {
    match map.next_key::<String>()? {
        None => Ok(()),
        Some(k) => Err(de::Error::custom(format!(
            "a {what} has exactly one key, but `{first}` is followed by `{k}`; put each {what} in its own list item (`- {k}: ...`)"
        ))),
    }
}

/// `x: {..}` or `x: [{..}, {..}]`. Hand-written rather than `#[serde(untagged)]` so the
/// inner error (e.g. "unknown field `presnt`") reaches the user instead of "did not match any
/// variant".
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V_<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a condition or a list of conditions")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(OneOrMany::Many)
            }
        }
        d.deserialize_any(V_(PhantomData))
    }
}

/// A YAML mapping whose key order matters (the first version is the primary) and whose
/// duplicate keys must be reported rather than silently collapsed.
#[derive(Debug)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

/// What an [`OrderedMap`] of these is, for serde's "expected …" in type errors.
pub trait Named {
    const MAPPING: &'static str;
}

impl Named for RawVersion {
    const MAPPING: &'static str = "a mapping of version name to version";
}

impl Named for RawGate {
    const MAPPING: &'static str = "a mapping of gate name to gate";
}

impl<'de, V: Deserialize<'de> + Named> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de> + Named> Visitor<'de> for V_<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(V::MAPPING)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, V)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V_(PhantomData))
    }
}
