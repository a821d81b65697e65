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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub to: String,
    pub percent: f64,
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

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V_<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of version name to version")
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
