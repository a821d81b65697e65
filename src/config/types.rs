//! The validated runtime types: what a [`Config`] holds once `validate` has accepted it,
//! with their small impls (`Display`, parsing and matching helpers). The `Default` impls
//! that carry default values are in `defaults`.

use http::HeaderName;
use http::uri::Authority;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One validation problem, tied to the field that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `routes[0].versions.canary.weight`.
    pub field: String,
    /// What was wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one config document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A validated configuration: every value here has been checked and means what it says.
#[derive(Debug, Clone)]
pub struct Config {
    /// Empty only in a fleet controller's file.
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub proxy: ProxySettings,
    pub routes: Vec<RouteConfig>,
    pub analysis: AnalysisSettings,
    /// A fleet controller's file (`canaryd controller`): the replicas it drives. Such a file
    /// needs no listeners and no endpoints (its versions are names).
    pub controller: Option<ControllerSettings>,
}

/// `controller:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerSettings {
    pub targets: Targets,
    /// Sent to the replicas as `Authorization: Bearer`; env `CANARYD_TARGET_TOKEN` otherwise.
    pub token: Option<Secret>,
    /// How often every replica is reconciled (and DNS re-resolved).
    pub interval: Duration,
    /// The controller's rollout state.
    pub state_file: PathBuf,
}

/// Where the replicas are.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Admin base URLs.
    List(Vec<http::Uri>),
    /// `host:port` resolved every interval; every address is a replica's admin listener.
    Dns { host: String, port: u16 },
}

/// Thresholds of the canary analysis endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisSettings {
    /// Below this many requests in the window a version is "inconclusive".
    pub min_requests: u64,
    /// Percentage points the success rate may trail the primary's before "fail".
    pub max_success_rate_drop_pp: f64,
    /// p99 ratio (version / primary) above which latency is a "fail"…
    pub max_p99_ratio: f64,
    /// …unless the absolute p99 difference is below this.
    pub latency_floor: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: SocketAddr,
    /// TLS termination; `None` = clear text (HTTP/1.1 and h2c).
    pub tls: Option<TlsFiles>,
}

/// Where a TLS listener's certificates live. Loaded (and reloaded) by `tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni: Vec<SniFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniFiles {
    pub host: HostMatch,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How canaryd talks to a version's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Upstream {
    pub protocol: Protocol,
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// HTTP/1.1 (ALPN http/1.1 over TLS).
    #[default]
    Http1,
    /// HTTP/2: prior knowledge in clear text, ALPN h2 over TLS. gRPC needs this.
    H2,
    /// Over TLS, whatever ALPN picks (h2 preferred); in clear text, HTTP/1.1.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// CA bundle to trust; `None` = the built-in web PKI roots.
    pub ca: Option<PathBuf>,
    /// SNI / expected certificate name; `None` = the endpoint's host.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
    /// Bearer token required by `/api/v1/*` when set.
    pub token: Option<Secret>,
}

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Add `x-canaryd-version` to responses, naming the version that served.
    pub version_header: bool,
    /// Emit one structured access-log event per request.
    pub access_log: bool,
    /// Most open downstream connections across all listeners (excess waits in the backlog).
    pub max_connections: usize,
    /// First byte and complete request headers must arrive within this (slowloris).
    pub header_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing what is left.
    pub drain_timeout: Duration,
    /// A downstream connection with nothing in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Proxies in front of canaryd whose `X-Forwarded-For` entries are trusted.
    pub trusted_hops: u32,
    /// Defaults for routes that set no `timeouts`.
    pub timeouts: Timeouts,
    /// Upgrade protocols for routes that set no `upgrades`.
    pub upgrades: Upgrades,
    /// Where rollout state is kept across restarts (required by a route with a `rollout`).
    pub state_file: Option<std::path::PathBuf>,
    /// A replica of a fleet: `/readyz` answers 503 until a fleet controller has given it the
    /// current rollout state (`PUT /api/v1/synced`), so a restarted pod does not take traffic
    /// with stale weights.
    pub wait_for_controller: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    /// Longest silence inside a request or response body.
    pub idle: Duration,
}

/// When a failed attempt is tried again, and how much retrying a route may do.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt. Connect failures (nothing reached the upstream) are
    /// retried for every method; `on_status` only for idempotent methods without a body.
    pub attempts: u32,
    pub on_status: Vec<u16>,
    /// Retries in flight ≤ this share of the route's requests in flight (at least
    /// [`RETRY_BUDGET_MIN`](super::RETRY_BUDGET_MIN)), so a failing upstream cannot multiply
    /// its load.
    pub budget_percent: f64,
}

/// Passive outlier detection: endpoints that keep failing are taken out for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    /// 0 = off.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: f64,
}

/// Active health checking of every endpoint of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    /// Ordered; index 0 is the primary (stable) version.
    pub versions: Vec<VersionConfig>,
    pub rules: Vec<RuleConfig>,
    pub sticky: Option<StickyConfig>,
    pub timeouts: Timeouts,
    pub retries: RetryPolicy,
    pub outlier: OutlierPolicy,
    pub health_check: Option<HealthCheck>,
    /// Serve a non-primary version's traffic from the primary while it has no endpoint.
    pub fallback: bool,
    /// HTTP/1.1 upgrade protocols this route tunnels after a 101; any other `Upgrade` is
    /// dropped and the request served as plain HTTP/1.1.
    pub upgrades: Upgrades,
    /// Steps, gates, automatic promotion and rollback (`crate::rollout` runs it).
    pub rollout: Option<super::RolloutSpec>,
    /// The file's shadow traffic (`mirror:`).
    pub mirror: Option<MirrorConfig>,
    /// Named mirrors set at run time (the API's, a rollout's `set_mirror_route`), checked in
    /// order before the file's `mirror`.
    pub mirrors: Vec<MirrorConfig>,
    /// Set on a route translated from a Kubernetes object (an HTTPRoute rule, an Ingress
    /// path): its matches replace `host` and `path_prefix`, and the object's controller owns
    /// it (no rollout block, no runtime overrides).
    pub kube: Option<Box<KubeRoute>>,
}

/// What a Kubernetes-derived route adds to a file route: Gateway API matching, header
/// filters, and which object it came from.
#[derive(Debug, Clone)]
pub struct KubeRoute {
    /// `HTTPRoute default/shop rule 0`, `Ingress default/shop`: for messages and status.
    pub source: String,
    /// Any of these hosts; empty: any host.
    pub hosts: Vec<HostMatch>,
    /// Any of these (each is all-of); never empty.
    pub matches: Vec<RequestMatch>,
    /// Rule-level `RequestHeaderModifier`.
    pub request_headers: HeaderEdits,
    /// Rule-level `ResponseHeaderModifier`.
    pub response_headers: HeaderEdits,
    /// Backend-level `ResponseHeaderModifier`, parallel to the route's versions.
    pub version_response_headers: Vec<HeaderEdits>,
    /// Parallel to the route's versions: why a version cannot serve (its share is answered
    /// with this status and never reaches an endpoint).
    pub unservable: Vec<Option<Unservable>>,
    /// Set for a route translated from an Ingress: the labels of ingress-nginx's metrics.
    pub nginx: Option<Box<NginxLabels>>,
    /// `RequestRedirect`: answered by canaryd, no backend is asked.
    pub redirect: Option<Redirect>,
    /// `URLRewrite`: the upstream request's host and path.
    pub rewrite: Option<Rewrite>,
}

/// Gateway API `RequestRedirect`. Unset parts keep the request's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    /// 301 or 302.
    pub status: u16,
}

/// Gateway API `URLRewrite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<http::HeaderValue>,
    pub path: Option<PathModifier>,
}

/// Gateway API `HTTPPathModifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replace the prefix the request matched (the match must be a `PathPrefix`).
    ReplacePrefixMatch(String),
}

impl PathModifier {
    /// The new path of a request for `path` that matched `prefix` (stored without its
    /// trailing `/`; empty for `/`).
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            PathModifier::ReplaceFullPath(p) => p.clone(),
            PathModifier::ReplacePrefixMatch(r) => {
                let rest = prefix.and_then(|p| path.strip_prefix(p)).unwrap_or(path);
                let rest = if r.ends_with('/') {
                    rest.strip_prefix('/').unwrap_or(rest)
                } else {
                    rest
                };
                let out = format!("{r}{rest}");
                if out.is_empty() { "/".to_string() } else { out }
            }
        }
    }
}

/// The labels ingress-nginx puts on `nginx_ingress_controller_requests` and
/// `nginx_ingress_controller_response_duration_seconds`, for a route from an Ingress path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxLabels {
    pub namespace: String,
    /// The main Ingress's name (a canary Ingress's traffic counts under it, as in
    /// ingress-nginx).
    pub ingress: String,
    pub path: String,
    /// Parallel to the route's versions: the Service, and the `canary` label (the
    /// upstream name `<namespace>-<service>-<port>` for the canary, empty for the primary).
    pub services: Vec<(String, String)>,
}

/// Why a Kubernetes backend serves no traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unservable {
    /// The Service exists but has no ready endpoint: 503.
    NoEndpoints,
    /// The backendRef cannot be resolved (no such Service, a kind we do not serve): 500.
    Invalid,
}

/// One Gateway API `HTTPRouteMatch`: all of these must hold.
#[derive(Debug, Clone)]
pub struct RequestMatch {
    pub path: PathMatch,
    pub method: Option<http::Method>,
    pub headers: Vec<(HeaderName, ValueTest)>,
    /// Query parameter name (case-sensitive) and test of its first value.
    pub query: Vec<(String, ValueTest)>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix without its trailing `/` (`/abc` matches `/abc`, `/abc/` and
    /// `/abc/d`, not `/abcd`); `/` matches every path.
    Prefix(String),
    /// Anchored: the whole path must match.
    Regex(regex::Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                p.is_empty()
                    || (path.starts_with(p.as_str())
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// `set`, `add` and `remove` of a Gateway API header modifier.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, http::HeaderValue)>,
    pub add: Vec<(HeaderName, http::HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

/// Copies of a route's requests sent to a shadow version, whose answers are read, measured,
/// compared and discarded.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Runtime mirrors are named; the file's is not.
    pub name: Option<String>,
    /// Index of the shadow version.
    pub to: usize,
    /// Share of requests copied.
    pub percent: Weight,
    /// All must hold (AND); empty: every request.
    pub conditions: Vec<Condition>,
    /// Methods copied; `None`: the idempotent ones.
    pub methods: Option<Vec<http::Method>>,
    pub max_body: u64,
    pub host_suffix: String,
    pub max_in_flight: usize,
    pub queue: usize,
    pub compare: CompareConfig,
    /// As written (for the API's readback).
    pub raw: super::raw::RawMirror,
}

/// `mirror.compare`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareConfig {
    /// Share of copies compared with the primary's answer.
    pub sample: Weight,
    pub headers: Vec<HeaderName>,
    /// JSON fields ignored: names at any depth, or dotted paths from the top.
    pub ignore: Vec<String>,
    pub max_body: u64,
}

impl MirrorConfig {
    /// Is `method` copied? By default only idempotent methods are (RFC 9110 §9.2.2, without
    /// TRACE).
    pub fn copies(&self, method: &http::Method) -> bool {
        match &self.methods {
            Some(m) => m.contains(method),
            None => matches!(
                *method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::OPTIONS
                    | http::Method::PUT
                    | http::Method::DELETE
            ),
        }
    }
}

/// A set of HTTP/1.1 `Upgrade` protocol tokens, lowercased (tokens compare case-insensitively).
/// `h2c` is never in it: a tunnelled h2c connection would carry requests canaryd never sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrades(pub Vec<String>);

impl Upgrades {
    /// Is `token` (any case) allowed?
    pub fn allows(&self, token: &[u8]) -> bool {
        self.0
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(token))
    }
}

/// Host part of a route match, lowercased at validation so matching needs no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `shop.example.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

impl HostMatch {
    /// Does a request host (any case, no port) match?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VersionConfig {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// For non-primary versions, the configured share; for the primary, the remainder.
    pub weight: Weight,
    pub upstream: Upstream,
}

/// Resolution of weights: 1 unit = 0.01 percent, so 100 % = 10 000 units. The sticky bucket
/// space has the same size, so every weight maps to an exact number of buckets.
pub const WEIGHT_SCALE: u32 = 10_000;

/// A percentage in hundredths: `Weight(1050)` is 10.50 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Weight(pub u32);

impl Weight {
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// Parse a percentage with at most two decimals, 0 to 100.
    pub fn from_percent(p: f64) -> Result<Weight, String> {
        if !p.is_finite() || !(0.0..=100.0).contains(&p) {
            return Err(format!(
                "must be a percentage from 0 to 100 (got {p}); decimals down to 0.01 are allowed"
            ));
        }
        let scaled = p * 100.0;
        let rounded = scaled.round();
        if (scaled - rounded).abs() > 1e-6 {
            return Err(format!(
                "{p} has more than two decimals; the resolution of weights is 0.01 percent"
            ));
        }
        Ok(Weight(rounded as u32))
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so `{:>6}` aligns weights in `canaryd check` output.
        f.pad(&format!("{}.{:02}", self.0 / 100, self.0 % 100))
    }
}

/// An upstream `host:port`. DNS names are kept as written and resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub authority: Authority,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.authority.as_str())
    }
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if s.contains("://") {
            return Err(format!(
                "`{s}` has a scheme; an endpoint is host:port, e.g. 127.0.0.1:9001 or app.default.svc:8080"
            ));
        }
        let authority: Authority = s.parse().map_err(|_| {
            format!("`{s}` is not host:port, e.g. 127.0.0.1:9001, [::1]:9001 or app.svc:8080")
        })?;
        if authority.as_str().contains('@') {
            return Err(format!("`{s}` carries user info; an endpoint is host:port"));
        }
        match authority.port_u16() {
            None => Err(format!("`{s}` has no port; an endpoint is host:port")),
            Some(0) => Err(format!(
                "`{s}` has port 0; use the port the service listens on"
            )),
            Some(_) if authority.host().is_empty() => Err(format!("`{s}` has no host")),
            Some(_) => Ok(Endpoint { authority }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// Set for runtime rules (admin API) and optionally in the file; shown by `canaryd route`.
    pub name: Option<String>,
    /// Index into the route's versions.
    pub to: usize,
    /// All must hold (AND).
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone)]
pub enum Condition {
    Header {
        name: HeaderName,
        test: ValueTest,
    },
    Cookie {
        name: String,
        test: ValueTest,
    },
    /// The client address (after trusted `X-Forwarded-For` hops) is in one of these.
    ClientIp(Vec<ipnet::IpNet>),
}

#[derive(Debug, Clone)]
pub enum ValueTest {
    Equals(String),
    /// Unanchored search, like nginx `~`; write `^…$` for a full match.
    Matches(regex::bytes::Regex),
    /// `true`: the header is present; `false`: it is absent.
    Present(bool),
}

#[derive(Debug, Clone)]
pub struct StickyConfig {
    pub key: StickyKey,
    /// Cookie holding a random id, set on the response when the key is absent and also read
    /// as the key's fallback so the assigned user stays where the first request sent them.
    pub assign_cookie: Option<String>,
}

#[derive(Debug, Clone)]
pub enum StickyKey {
    Cookie(String),
    Header(HeaderName),
}

impl fmt::Display for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickyKey::Cookie(c) => write!(f, "cookie {c}"),
            StickyKey::Header(h) => write!(f, "header {h}"),
        }
    }
}
