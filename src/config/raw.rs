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
    #[serde(default)]
    pub timeouts: RawTimeouts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect to an endpoint, e.g. "2s".
    pub connect: Option<String>,
    /// From sending the request to receiving the upstream's response headers, e.g. "30s".
    pub response: Option<String>,
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
