//! Validation: [`RawConfig`] → [`Config`], reporting every problem as a [`FieldError`] named
//! by its field path. [`Config::from_yaml`] and [`Config::from_file`] start here, and
//! [`validate_rule`] is shared with runtime rules from the admin API.

use super::defaults::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
use super::raw::*;
use super::rollout::validate_rollout;
use super::types::{
    Admin, AnalysisSettings, CompareConfig, Condition, Config, ConfigError, ControllerSettings,
    Endpoint, FieldError, HealthCheck, HostMatch, Listener, MirrorConfig, OutlierPolicy, Protocol,
    ProxySettings, RetryPolicy, RouteConfig, RuleConfig, Secret, SniFiles, StickyConfig, StickyKey,
    Targets, Timeouts, TlsFiles, Upgrades, Upstream, UpstreamTls, ValueTest, VersionConfig,
    WEIGHT_SCALE, Weight,
};
use http::HeaderName;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Config {
    /// Parse and validate a YAML document, reporting every problem found.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with(text, false)
    }

    /// [`Config::from_yaml`]; with `routes_optional`, a file without routes is valid (its
    /// routes come from Kubernetes objects, `canaryd run --kubernetes`).
    pub fn from_yaml_with(text: &str, routes_optional: bool) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| ConfigError {
            errors: vec![yaml_error(e)],
        })?;
        Config::validate(raw, routes_optional)
    }

    /// Read a file and validate it; I/O errors are reported like validation errors.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            errors: vec![FieldError {
                field: path.display().to_string(),
                message: format!("cannot read config file: {e}"),
            }],
        })?;
        Config::from_yaml(&text)
    }
}

fn yaml_error(e: serde_yaml_ng::Error) -> FieldError {
    // serde_yaml_ng prefixes the message with the field path it was in (`routes[0]: …`).
    let msg = e.to_string();
    match msg.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => FieldError {
            field: path.to_string(),
            message: rest.to_string(),
        },
        _ => FieldError {
            field: "(document)".to_string(),
            message: msg,
        },
    }
}

/// Accumulates errors while validating so one run reports all of them.
#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        Config::validate(raw, false)
    }
}

impl Config {
    fn validate(raw: RawConfig, routes_optional: bool) -> Result<Config, ConfigError> {
        let mut errs = Errors::default();

        // A fleet controller's file: no listeners, versions are names.
        let controller = raw
            .controller
            .as_ref()
            .and_then(|c| validate_controller(c, &mut errs));
        let names_only = raw.controller.is_some();
        if raw.listeners.is_empty() && !names_only {
            errs.push(
                "listeners",
                "at least one listener is required, e.g. `listeners: [{ address: 0.0.0.0:8080 }]`",
            );
        }
        let mut listeners = Vec::new();
        let mut seen_addrs = HashSet::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let field = format!("listeners[{i}]");
            let tls = l
                .tls
                .as_ref()
                .and_then(|t| validate_tls(t, &format!("{field}.tls"), &mut errs));
            match parse_socket_addr(&l.address) {
                Ok(a) => {
                    // Port 0 asks the OS for a free port, so two of them never collide.
                    if a.port() != 0 && !seen_addrs.insert(a) {
                        errs.push(format!("{field}.address"), format!("{a} is listed twice"));
                    }
                    listeners.push(Listener { address: a, tls });
                }
                Err(m) => errs.push(format!("{field}.address"), m),
            }
        }

        let admin = match &raw.admin {
            None => None,
            Some(a) => match parse_socket_addr(&a.address) {
                Ok(address) => {
                    if address.port() != 0 && seen_addrs.contains(&address) {
                        errs.push(
                            "admin.address",
                            format!("{address} is also a proxy listener"),
                        );
                    }
                    let token = match a.token.as_deref() {
                        Some("") => {
                            errs.push("admin.token", "is empty; remove it or set a secret value");
                            None
                        }
                        Some(t) => Some(Secret(t.to_string())),
                        None => None,
                    };
                    Some(Admin { address, token })
                }
                Err(m) => {
                    errs.push("admin.address", m);
                    None
                }
            },
        };

        let default_timeouts = validate_timeouts(
            &raw.proxy.timeouts,
            Timeouts::default(),
            "proxy.timeouts",
            &mut errs,
        );
        let max_connections = match raw.proxy.max_connections {
            Some(0) => {
                errs.push("proxy.max_connections", "must be at least 1");
                DEFAULT_MAX_CONNECTIONS
            }
            Some(n) => n,
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let header_timeout = duration_or(
            &raw.proxy.header_timeout,
            "proxy.header_timeout",
            DEFAULT_HEADER_TIMEOUT,
            &mut errs,
        );
        let drain_timeout = duration_or(
            &raw.proxy.drain_timeout,
            "proxy.drain_timeout",
            DEFAULT_DRAIN_TIMEOUT,
            &mut errs,
        );
        let idle_timeout = duration_or(
            &raw.proxy.idle_timeout,
            "proxy.idle_timeout",
            DEFAULT_IDLE_TIMEOUT,
            &mut errs,
        );
        let trusted_hops = match raw.proxy.trusted_hops {
            Some(n) if n > 16 => {
                errs.push(
                    "proxy.trusted_hops",
                    format!("{n} is more proxies than any real chain has; use 0 to 16"),
                );
                0
            }
            n => n.unwrap_or(0),
        };
        let proxy = ProxySettings {
            version_header: raw.proxy.version_header,
            access_log: raw.proxy.access_log,
            max_connections,
            header_timeout,
            drain_timeout,
            idle_timeout,
            trusted_hops,
            timeouts: default_timeouts,
            upgrades: raw
                .proxy
                .upgrades
                .as_deref()
                .map(|u| validate_upgrades(u, "proxy.upgrades", &mut errs))
                .unwrap_or_default(),
            state_file: match raw.proxy.state_file.as_deref() {
                None => None,
                Some(s) if s.trim().is_empty() => {
                    errs.push(
                        "proxy.state_file",
                        "is empty; give the path of the file where rollout state is kept, e.g. /var/lib/canaryd/state.json",
                    );
                    None
                }
                Some(s) => Some(PathBuf::from(s)),
            },
            wait_for_controller: raw.proxy.wait_for_controller,
        };
        let state_file_given = raw.proxy.state_file.is_some() || names_only;

        // Validated before the routes (gates default to its `min_requests`), reported after
        // them as always.
        let mut analysis_errs = Errors::default();
        let analysis = validate_analysis(&raw.analysis, &mut analysis_errs);

        let mut routes = Vec::new();
        let mut names = HashSet::new();
        let mut matches: Vec<(Option<HostMatch>, String, usize)> = Vec::new();
        let mut rollout_ids: HashMap<String, usize> = HashMap::new();
        for (i, r) in raw.routes.into_iter().enumerate() {
            let field = format!("routes[{i}]");
            let has_rollout = r.rollout.is_some();
            let route = validate_route(
                r,
                &field,
                &proxy,
                analysis.min_requests,
                names_only,
                &mut errs,
            );
            // An empty state_file is reported at proxy.state_file, not again here.
            if has_rollout && !state_file_given {
                errs.push(
                    format!("{field}.rollout"),
                    "a rollout needs proxy.state_file (where its state survives restarts)",
                );
            }
            if let Some(route) = route {
                if let Some(ro) = &route.rollout {
                    if let Some(j) = rollout_ids.get(&ro.id) {
                        errs.push(
                            format!("{field}.rollout.id"),
                            format!(
                                "rollout id `{}` is also used by routes[{j}]; ids identify rollouts in the state file and must be unique",
                                ro.id
                            ),
                        );
                    } else {
                        rollout_ids.insert(ro.id.clone(), i);
                    }
                }
                if !names.insert(route.name.clone()) {
                    errs.push(
                        format!("{field}.name"),
                        format!(
                            "route name `{}` is used twice; names must be unique",
                            route.name
                        ),
                    );
                }
                // A controller's routes match no request: only their names count.
                if let Some((_, _, j)) = matches
                    .iter()
                    .filter(|_| !names_only)
                    .find(|(h, p, _)| *h == route.host && *p == route.path_prefix)
                {
                    errs.push(
                        format!("{field}.match"),
                        format!("same host and path_prefix as routes[{j}]; one of them could never match"),
                    );
                }
                matches.push((route.host.clone(), route.path_prefix.clone(), i));
                routes.push(route);
            }
        }
        if routes.is_empty() && errs.0.is_empty() && !routes_optional {
            errs.push("routes", "at least one route is required");
        }

        errs.0.extend(analysis_errs.0);

        if errs.0.is_empty() {
            Ok(Config {
                listeners,
                admin,
                proxy,
                routes,
                analysis,
                controller,
            })
        } else {
            Err(ConfigError { errors: errs.0 })
        }
    }
}

fn validate_analysis(raw: &RawAnalysis, errs: &mut Errors) -> AnalysisSettings {
    let mut a = AnalysisSettings::default();
    if let Some(n) = raw.min_requests {
        if n == 0 {
            errs.push("analysis.min_requests", "must be at least 1");
        } else {
            a.min_requests = n;
        }
    }
    if let Some(d) = raw.max_success_rate_drop {
        if !(0.0..=100.0).contains(&d) {
            errs.push(
                "analysis.max_success_rate_drop",
                format!("{d} is not a number of percentage points from 0 to 100"),
            );
        } else {
            a.max_success_rate_drop_pp = d;
        }
    }
    if let Some(r) = raw.max_p99_ratio {
        if !r.is_finite() || r < 1.0 {
            errs.push(
                "analysis.max_p99_ratio",
                format!("{r} must be a ratio of at least 1.0"),
            );
        } else {
            a.max_p99_ratio = r;
        }
    }
    if let Some(s) = &raw.latency_floor {
        match humantime::parse_duration(s) {
            Ok(d) => a.latency_floor = d,
            Err(e) => errs.push(
                "analysis.latency_floor",
                format!("`{s}` is not a duration ({e}); write e.g. 5ms"),
            ),
        }
    }
    a
}

fn non_empty_path(s: &str, field: &str, errs: &mut Errors) -> Option<PathBuf> {
    if s.trim().is_empty() {
        errs.push(field, "is empty; give the path of a PEM file");
        None
    } else {
        Some(PathBuf::from(s))
    }
}

/// Paths only: the files are read (and their errors reported against these fields) by
/// `canaryd check` (unless `--skip-files`), at startup and on every reload, in `tls`.
fn validate_tls(t: &RawTls, field: &str, errs: &mut Errors) -> Option<TlsFiles> {
    let cert = non_empty_path(&t.cert, &format!("{field}.cert"), errs);
    let key = non_empty_path(&t.key, &format!("{field}.key"), errs);
    let mut sni = Vec::new();
    for (i, s) in t.sni.iter().enumerate() {
        let f = format!("{field}.sni[{i}]");
        let host = match validate_host(&s.host) {
            Ok(h) => Some(h),
            Err(m) => {
                errs.push(format!("{f}.host"), m);
                None
            }
        };
        let c = non_empty_path(&s.cert, &format!("{f}.cert"), errs);
        let k = non_empty_path(&s.key, &format!("{f}.key"), errs);
        if let (Some(host), Some(cert), Some(key)) = (host, c, k) {
            sni.push(SniFiles { host, cert, key });
        }
    }
    Some(TlsFiles {
        cert: cert?,
        key: key?,
        sni,
    })
}

fn validate_upstream(v: &RawVersion, field: &str, errs: &mut Errors) -> Upstream {
    let protocol = match v.protocol.as_deref() {
        None | Some("http1") => Protocol::Http1,
        Some("h2c") | Some("h2") => Protocol::H2,
        Some("auto") => Protocol::Auto,
        Some(other) => {
            errs.push(
                format!("{field}.protocol"),
                format!(
                    "`{other}` is not a protocol; use http1, h2c (HTTP/2, also over TLS) or auto"
                ),
            );
            Protocol::Http1
        }
    };
    let tls = v.tls.as_ref().map(|t| UpstreamTls {
        ca: t
            .ca
            .as_deref()
            .and_then(|c| non_empty_path(c, &format!("{field}.tls.ca"), errs)),
        server_name: t.server_name.clone(),
    });
    if let Some(UpstreamTls {
        server_name: Some(n),
        ..
    }) = &tls
    {
        if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
            errs.push(
                format!("{field}.tls.server_name"),
                format!("`{n}` is not a DNS name or IP address"),
            );
        }
    }
    Upstream { protocol, tls }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("`{s}` is not an IP:port address, e.g. 0.0.0.0:8080, 127.0.0.1:9901 or [::]:8080")
    })
}

pub(super) fn parse_duration(s: &str, field: &str, errs: &mut Errors) -> Option<Duration> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => {
            errs.push(field, "must be greater than zero");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(
                field,
                format!("`{s}` is not a duration ({e}); write e.g. 500ms, 2s, 1m"),
            );
            None
        }
    }
}

fn validate_timeouts(
    raw: &RawTimeouts,
    base: Timeouts,
    field: &str,
    errs: &mut Errors,
) -> Timeouts {
    Timeouts {
        connect: duration_or(
            &raw.connect,
            &format!("{field}.connect"),
            base.connect,
            errs,
        ),
        response: duration_or(
            &raw.response,
            &format!("{field}.response"),
            base.response,
            errs,
        ),
        idle: duration_or(&raw.idle, &format!("{field}.idle"), base.idle, errs),
    }
}

/// An optional duration field: its value if given and valid, else `default` (an invalid
/// value is reported in `errs`).
pub(super) fn duration_or(
    raw: &Option<String>,
    field: &str,
    default: Duration,
    errs: &mut Errors,
) -> Duration {
    raw.as_deref()
        .and_then(|s| parse_duration(s, field, errs))
        .unwrap_or(default)
}

pub(super) fn parse_percent(p: f64, field: &str, errs: &mut Errors) -> Option<f64> {
    if p.is_finite() && (0.0..=100.0).contains(&p) {
        Some(p)
    } else {
        errs.push(
            field,
            format!("must be a percentage from 0 to 100 (got {p})"),
        );
        None
    }
}

fn validate_retries(raw: &RawRetries, field: &str, errs: &mut Errors) -> RetryPolicy {
    let mut p = RetryPolicy::default();
    if let Some(n) = raw.attempts {
        if n > 5 {
            errs.push(
                format!("{field}.attempts"),
                format!("{n} retries would multiply load on a failing upstream; use 0 to 5"),
            );
        } else {
            p.attempts = n;
        }
    }
    for (i, code) in raw.on_status.iter().enumerate() {
        if !(500..=599).contains(code) {
            errs.push(
                format!("{field}.on_status[{i}]"),
                format!(
                    "{code} is not a 5xx status; only upstream failures (e.g. 502, 503) are retried"
                ),
            );
        }
    }
    p.on_status = raw.on_status.clone();
    if let Some(b) = raw.budget_percent {
        if let Some(b) = parse_percent(b, &format!("{field}.budget_percent"), errs) {
            p.budget_percent = b;
        }
    }
    p
}

fn validate_outlier(raw: &RawOutlier, field: &str, errs: &mut Errors) -> OutlierPolicy {
    let mut p = OutlierPolicy::default();
    if let Some(n) = raw.consecutive_failures {
        p.consecutive_failures = n;
    }
    p.base_ejection_time = duration_or(
        &raw.base_ejection_time,
        &format!("{field}.base_ejection_time"),
        p.base_ejection_time,
        errs,
    );
    p.max_ejection_time = duration_or(
        &raw.max_ejection_time,
        &format!("{field}.max_ejection_time"),
        p.max_ejection_time,
        errs,
    );
    if p.max_ejection_time < p.base_ejection_time {
        errs.push(
            format!("{field}.max_ejection_time"),
            format!(
                "{} is shorter than base_ejection_time {}",
                humantime::format_duration(p.max_ejection_time),
                humantime::format_duration(p.base_ejection_time)
            ),
        );
    }
    if let Some(b) = raw.max_ejection_percent {
        if let Some(b) = parse_percent(b, &format!("{field}.max_ejection_percent"), errs) {
            p.max_ejection_percent = b;
        }
    }
    p
}

fn validate_health_check(
    raw: &RawHealthCheck,
    field: &str,
    errs: &mut Errors,
) -> Option<HealthCheck> {
    let before = errs.0.len();
    if !raw.path.starts_with('/') || raw.path.parse::<http::uri::PathAndQuery>().is_err() {
        errs.push(
            format!("{field}.path"),
            format!("`{}` is not a request path; write e.g. /healthz", raw.path),
        );
    }
    let interval = duration_or(
        &raw.interval,
        &format!("{field}.interval"),
        Duration::from_secs(5),
        errs,
    );
    let timeout = duration_or(
        &raw.timeout,
        &format!("{field}.timeout"),
        Duration::from_secs(1),
        errs,
    );
    if timeout > interval {
        errs.push(
            format!("{field}.timeout"),
            "must not be longer than `interval`",
        );
    }
    let mut threshold = |v: Option<u32>, name: &str, default: u32| match v {
        Some(0) => {
            errs.push(format!("{field}.{name}"), "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let healthy_threshold = threshold(raw.healthy_threshold, "healthy_threshold", 2);
    let unhealthy_threshold = threshold(raw.unhealthy_threshold, "unhealthy_threshold", 3);
    (errs.0.len() == before).then(|| HealthCheck {
        path: raw.path.clone(),
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}

/// `Upgrade` protocol tokens (RFC 9110 §7.8: `name` or `name/version`), lowercased.
fn validate_upgrades(raw: &[String], field: &str, errs: &mut Errors) -> Upgrades {
    let mut out = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        let ok = !t.is_empty()
            && t.split('/').count() <= 2
            && t.split('/').all(|p| !p.is_empty() && p.chars().all(tchar));
        if !ok {
            errs.push(
                format!("{field}[{i}]"),
                format!("`{t}` is not an upgrade protocol token; write e.g. `websocket`"),
            );
            continue;
        }
        let lower = t.to_ascii_lowercase();
        if lower.split('/').next() == Some("h2c") {
            errs.push(
                format!("{field}[{i}]"),
                "`h2c` is never tunnelled: the client would speak HTTP/2 straight to one upstream, \
                 past routing, rules and metrics; canaryd serves HTTP/2 itself (h2c prior \
                 knowledge or TLS ALPN `h2`), so remove it",
            );
            continue;
        }
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    Upgrades(out)
}

/// Names that become metric labels: short, lowercase, no surprises in PromQL.
pub(super) fn check_label_name(name: &str, what: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}` is not allowed; use 1 to 64 characters from a-z, 0-9, `_` and `-`"
        ))
    }
}

fn check_cookie_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid cookie name (RFC 6265 token)"
        ))
    }
}

fn parse_header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("`{name}` is not a valid HTTP header name"))
}

fn validate_host(h: &str) -> Result<HostMatch, String> {
    let lower = h.to_ascii_lowercase();
    let (wild, rest) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if rest.is_empty() || !rest.split('.').all(label_ok) {
        return Err(format!(
            "`{h}` is not a host name; write `shop.example.com` or a wildcard `*.example.com` (no port, no scheme)"
        ));
    }
    Ok(if wild {
        HostMatch::Wildcard(format!(".{rest}"))
    } else {
        HostMatch::Exact(lower)
    })
}

fn validate_route(
    r: RawRoute,
    field: &str,
    proxy: &ProxySettings,
    min_requests: u64,
    names_only: bool,
    errs: &mut Errors,
) -> Option<RouteConfig> {
    let default_timeouts = proxy.timeouts;
    let before = errs.0.len();
    if let Err(m) = check_label_name(&r.name, "route name") {
        errs.push(format!("{field}.name"), m);
    }

    let host = match &r.match_.host {
        None => None,
        Some(h) => match validate_host(h) {
            Ok(m) => Some(m),
            Err(m) => {
                errs.push(format!("{field}.match.host"), m);
                None
            }
        },
    };
    let path_prefix = r
        .match_
        .path_prefix
        .clone()
        .unwrap_or_else(|| "/".to_string());
    if !path_prefix.starts_with('/') {
        errs.push(
            format!("{field}.match.path_prefix"),
            format!("`{path_prefix}` must start with `/`"),
        );
    }

    let versions = validate_versions(&r.versions, field, names_only, errs);

    let mut rules = Vec::new();
    let mut rule_names = HashSet::new();
    for (i, raw) in r.rules.iter().enumerate() {
        let rf = format!("{field}.rules[{i}]");
        if let Some(rule) = validate_rule(raw, &versions, &rf, errs) {
            if let Some(n) = &rule.name {
                if !rule_names.insert(n.clone()) {
                    errs.push(
                        format!("{rf}.name"),
                        format!("rule name `{n}` is used twice"),
                    );
                }
            }
            rules.push(rule);
        }
    }

    let sticky = r
        .sticky
        .as_ref()
        .and_then(|s| validate_sticky(s, &format!("{field}.sticky"), errs));

    let mirror = r
        .mirror
        .as_ref()
        .and_then(|m| validate_mirror(m, None, &versions, &format!("{field}.mirror"), errs));

    let timeouts = match &r.timeouts {
        Some(t) => validate_timeouts(t, default_timeouts, &format!("{field}.timeouts"), errs),
        None => default_timeouts,
    };
    let retries = r
        .retries
        .as_ref()
        .map(|x| validate_retries(x, &format!("{field}.retries"), errs))
        .unwrap_or_default();
    let outlier = r
        .outlier_detection
        .as_ref()
        .map(|x| validate_outlier(x, &format!("{field}.outlier_detection"), errs))
        .unwrap_or_default();
    let health_check = r
        .health_check
        .as_ref()
        .and_then(|x| validate_health_check(x, &format!("{field}.health_check"), errs));
    if r.fallback && versions.len() < 2 {
        errs.push(
            format!("{field}.fallback"),
            "needs at least two versions: traffic falls back to the first (primary) one",
        );
    }

    let upgrades = match &r.upgrades {
        Some(u) => validate_upgrades(u, &format!("{field}.upgrades"), errs),
        None => proxy.upgrades.clone(),
    };

    let rollout = r.rollout.as_ref().and_then(|ro| {
        validate_rollout(
            ro,
            &versions,
            min_requests,
            &format!("{field}.rollout"),
            errs,
        )
    });

    if errs.0.len() > before {
        return None;
    }
    Some(RouteConfig {
        name: r.name,
        host,
        path_prefix,
        versions,
        rules,
        sticky,
        timeouts,
        retries,
        outlier,
        health_check,
        fallback: r.fallback,
        upgrades,
        rollout,
        mirror,
        mirrors: Vec::new(),
        kube: None,
    })
}

/// Default largest request body a mirror copies.
pub const MIRROR_MAX_BODY: u64 = 1024 * 1024;
/// Default largest response body a comparison reads.
pub const COMPARE_MAX_BODY: u64 = 256 * 1024;

/// `mirror:` of a route, or a runtime mirror (`name`), checked against the route's versions.
/// Public within the crate so the API's mirrors go through exactly the same checks.
pub(crate) fn validate_mirror(
    m: &RawMirror,
    name: Option<&str>,
    versions: &[VersionConfig],
    field: &str,
    errs: &mut Errors,
) -> Option<MirrorConfig> {
    let before = errs.0.len();
    if let Some(n) = name {
        if let Err(e) = check_label_name(n, "mirror name") {
            errs.push(field, e);
        }
    }
    let to = versions.iter().position(|v| v.name == m.to);
    match to {
        None => {
            let known: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
            errs.push(
                format!("{field}.to"),
                format!("unknown version `{}`; this route has: {}", m.to, known.join(", ")),
            );
        }
        Some(0) => errs.push(
            format!("{field}.to"),
            "is the primary version, which already serves these requests; mirror to another version",
        ),
        Some(_) => {}
    }
    let percent = match Weight::from_percent(m.percent) {
        Ok(w) => w,
        Err(e) => {
            errs.push(format!("{field}.percent"), e);
            Weight(0)
        }
    };
    let mut conditions = Vec::new();
    if let Some(when) = &m.when {
        match serde_json::from_value::<RawWhen>(when.clone()) {
            Ok(when) => {
                let rule = RawRule {
                    name: None,
                    to: m.to.clone(),
                    when,
                };
                if let Some(r) = validate_rule(&rule, versions, field, errs) {
                    conditions = r.conditions;
                }
            }
            Err(e) => errs.push(
                format!("{field}.when"),
                format!(
                    "must be conditions as in a rule's `when` (header, cookie, client_ip): {e}"
                ),
            ),
        }
    }
    let methods = m.methods.as_ref().map(|ms| {
        ms.iter()
            .enumerate()
            .filter_map(|(i, s)| {
                match http::Method::from_bytes(s.trim().to_ascii_uppercase().as_bytes()) {
                    Ok(method) => Some(method),
                    Err(_) => {
                        errs.push(
                            format!("{field}.methods[{i}]"),
                            format!("`{s}` is not an HTTP method"),
                        );
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    });
    let size = |s: &Option<String>, default: u64, f: &str, errs: &mut Errors| match s {
        None => default,
        Some(s) => parse_size(s).unwrap_or_else(|e| {
            errs.push(format!("{field}.{f}"), e);
            default
        }),
    };
    let max_body = size(&m.max_body, MIRROR_MAX_BODY, "max_body", errs);
    let host_suffix = m
        .host_suffix
        .clone()
        .unwrap_or_else(|| "-shadow".to_string());
    if http::HeaderValue::from_str(&format!("h{host_suffix}")).is_err() {
        errs.push(
            format!("{field}.host_suffix"),
            "must be text allowed in a Host header",
        );
    }
    let positive = |v: Option<usize>, default: usize, f: &str, errs: &mut Errors| match v {
        Some(0) => {
            errs.push(format!("{field}.{f}"), "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let max_in_flight = positive(m.max_in_flight, 64, "max_in_flight", errs);
    let queue = m.queue.unwrap_or(128);
    let c = m.compare.clone().unwrap_or_default();
    let sample = match Weight::from_percent(c.sample.unwrap_or(10.0)) {
        Ok(w) => w,
        Err(e) => {
            errs.push(format!("{field}.compare.sample"), e);
            Weight(0)
        }
    };
    let mut headers = Vec::new();
    for (i, h) in c
        .headers
        .clone()
        .unwrap_or_else(|| vec!["content-type".to_string()])
        .iter()
        .enumerate()
    {
        match parse_header_name(h) {
            Ok(n) => headers.push(n),
            Err(e) => errs.push(format!("{field}.compare.headers[{i}]"), e),
        }
    }
    let ignore = c.ignore.clone().unwrap_or_default();
    for (i, p) in ignore.iter().enumerate() {
        if p.is_empty() || p.split('.').any(str::is_empty) {
            errs.push(
                format!("{field}.compare.ignore[{i}]"),
                "a JSON field name, or a dotted path such as data.id",
            );
        }
    }
    let compare_max = size(&c.max_body, COMPARE_MAX_BODY, "compare.max_body", errs);
    if errs.0.len() > before {
        return None;
    }
    Some(MirrorConfig {
        name: name.map(str::to_string),
        to: to?,
        percent,
        conditions,
        methods,
        max_body,
        host_suffix,
        max_in_flight,
        queue,
        compare: CompareConfig {
            sample,
            headers,
            ignore,
            max_body: compare_max,
        },
        raw: m.clone(),
    })
}

/// `1048576`, `512KiB`, `1MiB`, `1MB`, `64kb`: a size in bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write bytes or e.g. 512KiB, 1MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return Err(format!("`{s}`: unknown unit; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn validate_versions(
    raw: &OrderedMap<RawVersion>,
    field: &str,
    names_only: bool,
    errs: &mut Errors,
) -> Vec<VersionConfig> {
    let vf = format!("{field}.versions");
    if raw.0.is_empty() {
        errs.push(
            &vf,
            "at least one version is required; the first listed is the primary",
        );
        return Vec::new();
    }
    let mut out: Vec<VersionConfig> = Vec::new();
    let mut seen = HashSet::new();
    for (idx, (name, v)) in raw.0.iter().enumerate() {
        let f = format!("{vf}.{name}");
        if let Err(m) = check_label_name(name, "version name") {
            errs.push(&f, m);
        }
        if !seen.insert(name.as_str()) {
            errs.push(&f, format!("version `{name}` is listed twice"));
        }
        // In a controller's file versions are names: the replicas have the endpoints.
        if v.endpoints.is_empty() && !names_only {
            errs.push(
                format!("{f}.endpoints"),
                "at least one endpoint (host:port) is required",
            );
        }
        let mut endpoints = Vec::new();
        for (j, e) in v.endpoints.iter().enumerate() {
            match Endpoint::parse(e) {
                Ok(ep) => endpoints.push(ep),
                Err(m) => errs.push(format!("{f}.endpoints[{j}]"), m),
            }
        }
        let weight = match (idx, v.weight) {
            (0, Some(_)) => {
                errs.push(
                    format!("{f}.weight"),
                    "the first version is the primary and receives whatever the others leave; set weights only on the other versions",
                );
                Weight(0)
            }
            (_, None) => Weight(0),
            (_, Some(p)) => match Weight::from_percent(p) {
                Ok(w) => w,
                Err(m) => {
                    errs.push(format!("{f}.weight"), m);
                    Weight(0)
                }
            },
        };
        let upstream = validate_upstream(v, &f, errs);
        out.push(VersionConfig {
            name: name.clone(),
            endpoints,
            weight,
            upstream,
        });
    }
    if let Err(total) = primary_takes_the_rest(&mut out) {
        errs.push(
            &vf,
            format!("weights of the non-primary versions sum to {total}%, more than 100%"),
        );
    }
    out
}

/// The weight rule, in one place for the file and the runtime overrides: non-primary versions
/// carry weights, the primary (first) gets the rest. Errs with the non-primary total when it
/// is over 100 %, leaving the weights as they were.
pub fn primary_takes_the_rest(versions: &mut [VersionConfig]) -> Result<(), Weight> {
    let total: u32 = versions.iter().skip(1).map(|v| v.weight.0).sum();
    if total > WEIGHT_SCALE {
        return Err(Weight(total));
    }
    if let Some(primary) = versions.first_mut() {
        primary.weight = Weight(WEIGHT_SCALE - total);
    }
    Ok(())
}

/// Validate one rule against a route's versions. Public within the crate so runtime rules
/// from the admin API go through exactly the same checks as file rules.
pub(crate) fn validate_rule(
    raw: &RawRule,
    versions: &[VersionConfig],
    field: &str,
    errs: &mut Errors,
) -> Option<RuleConfig> {
    let before = errs.0.len();
    if let Some(n) = &raw.name {
        if let Err(m) = check_label_name(n, "rule name") {
            errs.push(format!("{field}.name"), m);
        }
    }
    let to = versions.iter().position(|v| v.name == raw.to);
    if to.is_none() {
        let known: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
        errs.push(
            format!("{field}.to"),
            format!(
                "unknown version `{}`; this route has: {}",
                raw.to,
                known.join(", ")
            ),
        );
    }
    let mut conditions = Vec::new();
    if let Some(hs) = raw.when.header.clone() {
        let hs = hs.into_vec();
        let many = hs.len() > 1;
        for (i, h) in hs.iter().enumerate() {
            let hf = if many {
                format!("{field}.when.header[{i}]")
            } else {
                format!("{field}.when.header")
            };
            let name = match parse_header_name(&h.name) {
                Ok(n) => Some(n),
                Err(m) => {
                    errs.push(format!("{hf}.name"), m);
                    None
                }
            };
            let test = value_test(h.equals.as_ref(), h.matches.as_ref(), h.present, &hf, errs);
            if let (Some(name), Some(test)) = (name, test) {
                conditions.push(Condition::Header { name, test });
            }
        }
    }
    if let Some(cs) = raw.when.cookie.clone() {
        let cs = cs.into_vec();
        let many = cs.len() > 1;
        for (i, c) in cs.iter().enumerate() {
            let cf = if many {
                format!("{field}.when.cookie[{i}]")
            } else {
                format!("{field}.when.cookie")
            };
            if let Err(m) = check_cookie_name(&c.name) {
                errs.push(format!("{cf}.name"), m);
            }
            let test = value_test(c.equals.as_ref(), c.matches.as_ref(), None, &cf, errs);
            if let Some(test) = test {
                conditions.push(Condition::Cookie {
                    name: c.name.clone(),
                    test,
                });
            }
        }
    }
    if let Some(nets) = &raw.when.client_ip {
        let mut parsed = Vec::with_capacity(nets.len());
        for (i, n) in nets.iter().enumerate() {
            match parse_net(n) {
                Ok(net) => parsed.push(net),
                Err(m) => errs.push(format!("{field}.when.client_ip[{i}]"), m),
            }
        }
        if nets.is_empty() {
            errs.push(
                format!("{field}.when.client_ip"),
                "is empty; list networks such as 10.0.0.0/8 or 192.0.2.7",
            );
        }
        conditions.push(Condition::ClientIp(parsed));
    }
    if raw.when.header.is_none() && raw.when.cookie.is_none() && raw.when.client_ip.is_none() {
        errs.push(
            format!("{field}.when"),
            "a rule needs at least one condition (`header`, `cookie` or `client_ip`)",
        );
    }
    match to {
        Some(to) if errs.0.len() == before => Some(RuleConfig {
            name: raw.name.clone(),
            to,
            conditions,
        }),
        _ => None,
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128 network).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    let net: ipnet::IpNet = s.parse().map_err(|_| {
        format!(
            "`{s}` is not a network; write an address or CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32"
        )
    })?;
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn value_test(
    equals: Option<&String>,
    matches: Option<&String>,
    present: Option<bool>,
    field: &str,
    errs: &mut Errors,
) -> Option<ValueTest> {
    let allowed = if present.is_some() || field.contains(".header") {
        "`equals`, `matches` or `present`"
    } else {
        "`equals` or `matches`"
    };
    match (equals, matches, present) {
        (Some(e), None, None) => Some(ValueTest::Equals(e.clone())),
        (None, Some(m), None) => match regex::bytes::Regex::new(m) {
            Ok(re) => Some(ValueTest::Matches(re)),
            Err(e) => {
                // The regex error is multi-line with a caret; keep its last line, the reason.
                let reason = e.to_string();
                let reason = reason
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .to_string();
                errs.push(
                    format!("{field}.matches"),
                    format!("`{m}` is not a valid regular expression: {reason}"),
                );
                None
            }
        },
        (None, None, Some(p)) => Some(ValueTest::Present(p)),
        (None, None, None) => {
            errs.push(field, format!("needs one test: {allowed}"));
            None
        }
        _ => {
            errs.push(
                field,
                format!("has more than one test; use exactly one of {allowed}"),
            );
            None
        }
    }
}

fn validate_sticky(s: &RawSticky, field: &str, errs: &mut Errors) -> Option<StickyConfig> {
    let before = errs.0.len();
    let key = match (&s.key.cookie, &s.key.header) {
        (Some(c), None) => {
            if let Err(m) = check_cookie_name(c) {
                errs.push(format!("{field}.key.cookie"), m);
            }
            Some(StickyKey::Cookie(c.clone()))
        }
        (None, Some(h)) => match parse_header_name(h) {
            Ok(n) => Some(StickyKey::Header(n)),
            Err(m) => {
                errs.push(format!("{field}.key.header"), m);
                None
            }
        },
        _ => {
            errs.push(
                format!("{field}.key"),
                "set exactly one of `cookie: NAME` or `header: NAME`",
            );
            None
        }
    };
    if let Some(c) = &s.assign_cookie {
        if let Err(m) = check_cookie_name(c) {
            errs.push(format!("{field}.assign_cookie"), m);
        }
    }
    match key {
        Some(key) if errs.0.len() == before => Some(StickyConfig {
            key,
            assign_cookie: s.assign_cookie.clone(),
        }),
        _ => None,
    }
}

/// `controller:`: exactly one of `targets` and `targets_dns`, a `state_file`, and an optional
/// `token` and `interval` (default 1 s).
fn validate_controller(c: &RawController, errs: &mut Errors) -> Option<ControllerSettings> {
    let before = errs.0.len();
    let targets = match (&c.targets, &c.targets_dns) {
        (Some(_), Some(_)) | (None, None) => {
            errs.push(
                "controller",
                "give exactly one of `targets` (admin URLs of the replicas) and `targets_dns` (name:port of a headless Service)",
            );
            None
        }
        (Some(list), None) => {
            if list.is_empty() {
                errs.push("controller.targets", "lists no replica");
            }
            let mut urls = Vec::new();
            for (i, t) in list.iter().enumerate() {
                match t.parse::<http::Uri>() {
                    Ok(u)
                        if matches!(u.scheme_str(), Some("http" | "https"))
                            && u.authority().is_some() =>
                    {
                        urls.push(u)
                    }
                    _ => errs.push(
                        format!("controller.targets[{i}]"),
                        format!("`{t}` must be a replica's admin URL, e.g. http://10.0.0.5:9901"),
                    ),
                }
            }
            Some(Targets::List(urls))
        }
        (None, Some(dns)) => match dns.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Some(Targets::Dns {
                    host: host.to_string(),
                    port: port.parse().unwrap_or_default(),
                })
            }
            _ => {
                errs.push(
                    "controller.targets_dns",
                    format!(
                        "`{dns}` must be name:port, e.g. canaryd-admin.shop.svc.cluster.local:9901"
                    ),
                );
                None
            }
        },
    };
    let token = match c.token.as_deref() {
        Some("") => {
            errs.push(
                "controller.token",
                "is empty; omit it or set CANARYD_TARGET_TOKEN instead",
            );
            None
        }
        t => t.map(|t| Secret(t.to_string())),
    };
    let interval = match c.interval.as_deref() {
        None => Some(std::time::Duration::from_secs(1)),
        Some(s) => parse_duration(s, "controller.interval", errs),
    };
    let state_file = match c.state_file.as_deref() {
        Some(s) if !s.trim().is_empty() => Some(PathBuf::from(s)),
        _ => {
            errs.push(
                "controller.state_file",
                "is required: where the controller keeps rollout state across restarts",
            );
            None
        }
    };
    if errs.0.len() != before {
        return None;
    }
    Some(ControllerSettings {
        targets: targets?,
        token,
        interval: interval?,
        state_file: state_file?,
    })
}
