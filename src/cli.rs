//! What `canaryd check` and `canaryd route` print. Kept in the library so tests and the
//! binary share it; `main.rs` only parses arguments and chooses exit codes.

use crate::config::{Config, ConfigError, FieldError, RuleConfig, Weight};
use crate::router::{self, BUCKETS, Reason, Route, Router};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use std::fmt::Write;

/// The summary `canaryd check` prints for a valid config.
pub fn check_summary(source: &str, cfg: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{source}: config OK");
    let listeners: Vec<String> = cfg
        .listeners
        .iter()
        .map(|l| l.address.to_string())
        .collect();
    match &cfg.controller {
        None => {
            let _ = writeln!(out, "listeners: {}", listeners.join(", "));
        }
        Some(c) => {
            let targets = match &c.targets {
                crate::config::Targets::List(l) => l
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::config::Targets::Dns { host, port } => format!("{host}:{port} (DNS)"),
            };
            let _ = writeln!(
                out,
                "fleet controller: targets {targets}; every {}; state_file {}",
                humantime::format_duration(c.interval),
                c.state_file.display()
            );
        }
    }
    if let Some(a) = &cfg.admin {
        let _ = writeln!(out, "admin: {}", a.address);
    }
    if let Some(f) = &cfg.proxy.state_file {
        let _ = writeln!(out, "state_file: {}", f.display());
    }
    for r in &cfg.routes {
        let host = r
            .host
            .as_ref()
            .map(|h| h.to_string())
            .unwrap_or_else(|| "*".into());
        let _ = writeln!(
            out,
            "route {}: host {} path_prefix {}",
            r.name, host, r.path_prefix
        );
        for (i, v) in r.versions.iter().enumerate() {
            let eps: Vec<String> = v.endpoints.iter().map(|e| e.to_string()).collect();
            let role = if i == 0 { " (primary)" } else { "" };
            let _ = writeln!(
                out,
                "  {:<12} {:>6}%  {}{}",
                v.name,
                v.weight,
                eps.join(", "),
                role
            );
        }
        for (i, rule) in r.rules.iter().enumerate() {
            let _ = writeln!(out, "  rule {i}: {}", describe_rule(rule, r));
        }
        if let Some(s) = &r.sticky {
            let assign = s
                .assign_cookie
                .as_ref()
                .map(|c| format!(", assign cookie {c}"))
                .unwrap_or_default();
            let _ = writeln!(out, "  sticky: {}{}", s.key, assign);
        }
        if let Some(ro) = &r.rollout {
            let _ = writeln!(
                out,
                "  rollout {}: {} steps, canary {}",
                ro.id,
                ro.steps.len(),
                r.versions[ro.canary].name
            );
        }
    }
    out
}

fn describe_rule(rule: &RuleConfig, route: &crate::config::RouteConfig) -> String {
    let conds: Vec<String> = rule.conditions.iter().map(|c| c.to_string()).collect();
    let name = rule
        .name
        .as_ref()
        .map(|n| format!(" [{n}]"))
        .unwrap_or_default();
    format!(
        "{} → {}{}",
        conds.join(" and "),
        route.versions[rule.to].name,
        name
    )
}

/// Bucket ranges of a route's versions, e.g. `canary 10.00% (buckets 0-999)`.
fn describe_table(route: &Route) -> String {
    route
        .bucket_ranges()
        .map(|(v, r)| {
            format!(
                "{} {}% (buckets {}-{})",
                route.config.versions[v].name,
                Weight(r.end - r.start),
                r.start,
                r.end - 1
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Explain which route and version a request would get, as `canaryd route` prints it.
/// `headers` are `name:value`, `cookies` are `name=value`.
pub fn explain(
    cfg: &Config,
    method: &str,
    url: &str,
    headers: &[String],
    cookies: &[String],
    client_ip: Option<&str>,
) -> Result<String, String> {
    let peer: Option<std::net::IpAddr> = client_ip
        .map(|ip| {
            ip.parse()
                .map_err(|_| format!("--client-ip: `{ip}` is not an IP address"))
        })
        .transpose()?;
    let method: Method = method
        .parse()
        .map_err(|_| format!("--method: `{method}` is not an HTTP method"))?;
    let uri: Uri = url.parse().map_err(|_| {
        format!("--url: `{url}` is not a URL; write e.g. http://shop.example.com/cart")
    })?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header: `{h}` is not name:value"))?;
        let name = HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("--header: `{k}` is not a valid header name"))?;
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| format!("--header: the value of `{k}` is not a valid header value"))?;
        map.append(name, value);
    }
    if !cookies.is_empty() {
        for c in cookies {
            if !c.contains('=') {
                return Err(format!("--cookie: `{c}` is not name=value"));
            }
        }
        let v = HeaderValue::from_str(&cookies.join("; "))
            .map_err(|_| "--cookie: not a valid cookie header value".to_string())?;
        map.append(http::header::COOKIE, v);
    }

    let router = Router::new(cfg);
    let host = router::request_host(&uri, &map);
    let mut rng = rand::rng();
    // The address `client_ip` rules see: the peer, or what trusted proxies put in XFF.
    let client =
        peer.and_then(|p| crate::proxy::headers::client_address(&map, p, cfg.proxy.trusted_hops));
    let line = router::Line::of(&uri, &method);
    let Some(d) = router.decide_for(host, &line, &map, client, &mut rng) else {
        return Err(format!(
            "no route matches host {} path {}: canaryd answers 404",
            host.unwrap_or("(none)"),
            uri.path()
        ));
    };
    let route = d.route;
    let rc = &route.config;
    let mut out = String::new();
    let host_desc = rc
        .host
        .as_ref()
        .map(|h| h.to_string())
        .unwrap_or_else(|| "*".into());
    let _ = writeln!(
        out,
        "route:   {} (host {}, path_prefix {})",
        rc.name, host_desc, rc.path_prefix
    );
    let _ = writeln!(out, "version: {}", rc.versions[d.version].name);
    let why = match d.reason {
        Reason::Rule(i) => format!("rule {i} matched: {}", describe_rule(&rc.rules[i], rc)),
        Reason::Sticky { bucket } => {
            let sticky = rc
                .sticky
                .as_ref()
                .expect("sticky reason implies sticky config");
            let source = if d.assign.is_some() {
                format!(
                    "no {} and no {} cookie: a new id is assigned in that cookie",
                    sticky.key,
                    sticky.assign_cookie.as_deref().unwrap_or("?")
                )
            } else {
                format!("key from {}", sticky.key)
            };
            format!(
                "sticky: {source}; bucket {bucket} of {BUCKETS}; {}",
                describe_table(route)
            )
        }
        Reason::Weight { draw } => format!(
            "weight draw (random per request; no rule matched, no sticky key): this draw landed on bucket {draw}; {}",
            describe_table(route)
        ),
    };
    let _ = writeln!(out, "reason:  {why}");
    Ok(out)
}

/// One canaryd config found in a file: the file itself, or a key of a Kubernetes ConfigMap.
pub struct Found {
    /// `file` or `file: ConfigMap/name key`.
    pub source: String,
    pub text: String,
}

/// The canaryd configs in `text`: the whole file, unless it is a Kubernetes manifest, in which
/// case every `*.yaml`/`*.yml` key of every ConfigMap whose value has `listeners:` or `routes:`.
pub fn find_configs(file: &str, text: &str) -> Vec<Found> {
    let mut found = Vec::new();
    let mut is_manifest = false;
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let Ok(v) = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc) else {
            break;
        };
        if v.get("apiVersion").is_some() && v.get("kind").is_some() {
            is_manifest = true;
        }
        if v.get("kind").and_then(|k| k.as_str()) != Some("ConfigMap") {
            continue;
        }
        let name = v["metadata"]["name"].as_str().unwrap_or("?").to_string();
        if let Some(data) = v.get("data").and_then(|d| d.as_mapping()) {
            for (k, val) in data {
                let (Some(k), Some(val)) = (k.as_str(), val.as_str()) else {
                    continue;
                };
                let yaml_key = k.ends_with(".yaml") || k.ends_with(".yml");
                if yaml_key && (val.contains("listeners:") || val.contains("routes:")) {
                    found.push(Found {
                        source: format!("{file}: ConfigMap/{name} {k}"),
                        text: val.to_string(),
                    });
                }
            }
        }
    }
    if is_manifest {
        found
    } else {
        vec![Found {
            source: file.to_string(),
            text: text.to_string(),
        }]
    }
}

/// Read the files a config points at (TLS certificates and keys, upstream CA bundles) the way
/// startup and reloads do, reporting problems against their fields.
pub fn check_files(cfg: &Config) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let Some(files) = &l.tls {
            if let Err(e) = crate::tls::TlsListener::load(files, &format!("listeners[{i}].tls")) {
                errors.push(e);
            }
        }
    }
    for (ri, r) in cfg.routes.iter().enumerate() {
        for v in &r.versions {
            if let Some(tls) = &v.upstream.tls {
                if let Err(message) = crate::tls::client_config(tls) {
                    errors.push(FieldError {
                        field: format!("routes[{ri}].versions.{}.tls.ca", v.name),
                        message,
                    });
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { errors })
    }
}

/// GET `url` and return its status, within `timeout` (for `canaryd probe`).
pub async fn probe(url: &str, timeout: std::time::Duration) -> Result<http::StatusCode, String> {
    let uri: Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(uri)
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp.status()),
        Ok(Err(e)) => Err(format!("request failed: {e}")),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
