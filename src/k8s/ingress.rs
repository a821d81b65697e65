//! Ingresses of canaryd's class with ingress-nginx's canary annotations → canaryd routes.
//!
//! ingress-nginx's semantics (`balancer.lua`, `route_to_alternative_balancer`), which Flagger's
//! `nginx` provider and Argo Rollouts' nginx router rely on:
//! - an Ingress annotated `nginx.ingress.kubernetes.io/canary: "true"` is not served by itself:
//!   each of its paths merges, as the canary, into the main (non-canary) Ingress path with the
//!   same host and path;
//! - a request goes to the canary by header first (`canary-by-header`: `always` / `never`, or
//!   exactly `canary-by-header-value`, or matching `canary-by-header-pattern`), then by cookie
//!   (`canary-by-cookie`: `always` / `never`), then by weight (`canary-weight` out of
//!   `canary-weight-total`, default 100);
//! - a value that decides nothing falls through to the next test.
//!
//! Each main Ingress path is one route `<namespace>-<name>-<i>` (i counts paths over all rules,
//! then `defaultBackend`); versions are the main path's Service (the primary) and the canary
//! path's Service. Other `nginx.ingress.kubernetes.io/*` annotations are not implemented: they
//! are reported (log and Event), never silently ignored.

use super::objects::{Ingress, IngressBackend, Meta};
use super::translate::{
    Refusal, ServicePortRef, World, file_conflict, host_match, kube_route, resolve_service,
    route_name,
};
use crate::config::{
    Condition, HeaderEdits, KubeRoute, NginxLabels, PathMatch, ProxySettings, RequestMatch,
    RouteConfig, RuleConfig, Unservable, Upstream, ValueTest, VersionConfig, WEIGHT_SCALE, Weight,
};
use http::HeaderName;
use std::collections::BTreeMap;

/// The annotation prefix ingress-nginx reads.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The `nginx.ingress.kubernetes.io/` annotations canaryd implements.
pub const SUPPORTED: [&str; 7] = [
    "canary",
    "canary-weight",
    "canary-weight-total",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
];

/// What the Ingresses of our class mean.
#[derive(Debug, Clone, Default)]
pub struct IngressTranslation {
    pub routes: Vec<RouteConfig>,
    /// `namespace/name` → what is wrong with that Ingress or not implemented (annotations
    /// canaryd does not implement, backends that do not resolve, conflicts), for its Events
    /// and the log.
    pub problems: BTreeMap<String, Vec<Problem>>,
}

/// Something canaryd could not apply as written: an Event's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `UnsupportedAnnotation`, `Unsupported`, `Conflict`, `Invalid` or `BackendNotFound`.
    pub reason: &'static str,
    pub message: String,
}

impl IngressTranslation {
    fn report(&mut self, key: String, reason: &'static str, message: String) {
        self.problems
            .entry(key)
            .or_default()
            .push(Problem { reason, message });
    }
}

/// The class of an Ingress: the legacy annotation first, then `spec.ingressClassName` (as
/// ingress-nginx and Argo Rollouts read it).
pub fn class_of(i: &Ingress) -> Option<&str> {
    i.metadata
        .annotations
        .get("kubernetes.io/ingress.class")
        .map(String::as_str)
        .or(i.spec.ingress_class_name.as_deref())
}

fn annotation<'a>(m: &'a Meta, key: &str) -> Option<&'a str> {
    m.annotations
        .get(&format!("{PREFIX}{key}"))
        .map(|v| v.trim())
}

fn is_canary(i: &Ingress) -> bool {
    annotation(&i.metadata, "canary") == Some("true")
}

/// One served path of an Ingress: host, path, path type, backend.
struct PathRef<'a> {
    host: Option<&'a str>,
    path: &'a str,
    exact: bool,
    backend: &'a IngressBackend,
}

/// The paths of an Ingress in order (rules, then `defaultBackend` as `/` on any host).
fn paths(i: &Ingress) -> Vec<PathRef<'_>> {
    let mut out = Vec::new();
    for rule in &i.spec.rules {
        let Some(http) = &rule.http else { continue };
        for p in &http.paths {
            out.push(PathRef {
                host: rule.host.as_deref().filter(|h| !h.is_empty()),
                path: p.path.as_deref().unwrap_or("/"),
                exact: p.path_type.as_deref() == Some("Exact"),
                backend: &p.backend,
            });
        }
    }
    if let Some(b) = &i.spec.default_backend {
        out.push(PathRef {
            host: None,
            path: "/",
            exact: false,
            backend: b,
        });
    }
    out
}

/// The canary settings of a canary Ingress.
struct Canary<'a> {
    ingress: &'a Ingress,
    backend: &'a IngressBackend,
}

/// Translate the Ingresses of `class`. `taken` holds route names already used (the file's,
/// the HTTPRoutes'): an Ingress route whose name is taken is named `<ns>-<name>-ingress-<i>`.
pub fn translate(
    world: &World,
    class: &str,
    file: &[RouteConfig],
    taken: &[String],
    proxy: &ProxySettings,
) -> IngressTranslation {
    let mut out = IngressTranslation::default();
    let mut ours: Vec<&Ingress> = world
        .ingresses
        .values()
        .filter(|i| class_of(i) == Some(class))
        .collect();
    ours.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, a.metadata.key())
            .cmp(&(&b.metadata.creation_timestamp, b.metadata.key()))
    });
    for i in &ours {
        if !i.spec.tls.is_empty() && !is_canary(i) {
            out.report(
                i.metadata.key(),
                "Unsupported",
                "spec.tls is not applied: canaryd terminates TLS with the certificates of its config file (listeners[].tls, sni) and does not read Secrets".to_string(),
            );
        }
        let unsupported: Vec<&str> = i
            .metadata
            .annotations
            .keys()
            .filter_map(|k| k.strip_prefix(PREFIX))
            .filter(|k| !SUPPORTED.contains(k))
            .collect();
        if !unsupported.is_empty() {
            let list: Vec<String> = unsupported.iter().map(|k| format!("{PREFIX}{k}")).collect();
            out.report(
                i.metadata.key(),
                "UnsupportedAnnotation",
                format!(
                    "annotations canaryd does not implement, not applied: {}",
                    list.join(", ")
                ),
            );
        }
    }
    // Canary paths by (host, path); the oldest canary Ingress wins, as in ingress-nginx.
    let mut canaries: BTreeMap<(Option<&str>, &str), Canary<'_>> = BTreeMap::new();
    for i in ours.iter().filter(|i| is_canary(i)) {
        for p in paths(i) {
            if canaries.contains_key(&(p.host, p.path)) {
                let message = format!(
                    "another canary Ingress already serves host {} path {}; this one is ignored there",
                    p.host.unwrap_or("*"),
                    p.path
                );
                out.report(i.metadata.key(), "Conflict", message);
                continue;
            }
            canaries.insert(
                (p.host, p.path),
                Canary {
                    ingress: i,
                    backend: p.backend,
                },
            );
        }
    }
    let mut used: Vec<String> = taken.to_vec();
    for main in ours.iter().filter(|i| !is_canary(i)) {
        let m = &main.metadata;
        for (idx, p) in paths(main).into_iter().enumerate() {
            let canary = canaries.get(&(p.host, p.path));
            let mut name = route_name(&m.namespace, &m.name, idx);
            if used.contains(&name) {
                name = route_name(&m.namespace, &format!("{}-ingress", m.name), idx);
            }
            let mut unresolved = Vec::new();
            match path_route(world, main, &p, canary, name, proxy, &mut unresolved) {
                Ok(rc) => {
                    for msg in unresolved {
                        out.report(m.key(), "BackendNotFound", msg);
                    }
                    if let Some(msg) = file_conflict(&rc, file) {
                        out.report(m.key(), "Conflict", msg);
                        continue;
                    }
                    used.push(rc.name.clone());
                    out.routes.push(rc);
                }
                Err(msg) => out.report(m.key(), "Invalid", msg),
            }
        }
    }
    out
}

/// A Service backend of an Ingress as a version: its name, endpoints, protocol, whether it
/// can serve, and its ingress-nginx upstream name `<namespace>-<service>-<port>`.
fn version(
    world: &World,
    ns: &str,
    b: &IngressBackend,
    field: &str,
    problems: &mut Vec<String>,
) -> Result<(VersionConfig, Option<Unservable>, String), String> {
    let Some(svc) = &b.service else {
        return Err(format!(
            "{field}: a resource backend is not supported; canaryd routes to Services"
        ));
    };
    let port = match (&svc.port.number, &svc.port.name) {
        (Some(n), _) => ServicePortRef::Number(*n),
        (None, Some(n)) => ServicePortRef::Name(n),
        (None, None) => return Err(format!("{field}: the Service port is missing")),
    };
    let upstream = format!("{ns}-{}-{port}", svc.name);
    let resolved: Result<_, Refusal> = resolve_service(world, ns, &svc.name, port, field);
    let (endpoints, protocol, unservable) = match resolved {
        Ok((eps, proto)) => {
            let un = eps.is_empty().then_some(Unservable::NoEndpoints);
            (eps, proto, un)
        }
        Err((_, msg)) => {
            problems.push(msg);
            (
                Vec::new(),
                crate::config::Protocol::Http1,
                Some(Unservable::Invalid),
            )
        }
    };
    Ok((
        VersionConfig {
            name: super::translate::version_name(&svc.name),
            endpoints,
            weight: Weight(0),
            upstream: Upstream {
                protocol,
                tls: None,
            },
        },
        unservable,
        upstream,
    ))
}

fn path_route(
    world: &World,
    main: &Ingress,
    p: &PathRef<'_>,
    canary: Option<&Canary<'_>>,
    name: String,
    proxy: &ProxySettings,
    problems: &mut Vec<String>,
) -> Result<RouteConfig, String> {
    let m = &main.metadata;
    let field = format!("Ingress {} path {}", m.key(), p.path);
    let (primary, primary_un, _) = version(world, &m.namespace, p.backend, &field, problems)?;
    let mut versions = vec![primary];
    let mut unservable = vec![primary_un];
    let mut services = vec![(versions[0].name.clone(), String::new())];
    let mut rules = Vec::new();
    if let Some(c) = canary {
        let cm = &c.ingress.metadata;
        let cfield = format!("canary Ingress {} path {}", cm.key(), p.path);
        let (mut v, un, up) = version(world, &cm.namespace, c.backend, &cfield, problems)?;
        if v.name == versions[0].name {
            return Err(format!(
                "{cfield}: the canary names the main Ingress's own Service {}",
                v.name
            ));
        }
        let num = |key: &str| -> Result<Option<u32>, String> {
            annotation(cm, key)
                .map(|s| {
                    s.parse::<u32>()
                        .map_err(|_| format!("{cfield}: {PREFIX}{key} `{s}` is not a whole number"))
                })
                .transpose()
        };
        let weight = num("canary-weight")?.unwrap_or(0);
        let total = num("canary-weight-total")?
            .filter(|t| *t >= 100)
            .unwrap_or(100);
        let share = u64::from(weight.min(total)) * u64::from(WEIGHT_SCALE) / u64::from(total);
        v.weight = Weight(share as u32);
        rules = canary_rules(cm, &cfield)?;
        services.push((v.name.clone(), up));
        versions.push(v);
        unservable.push(un);
    }
    // The primary takes the rest.
    let others: u32 = versions.iter().skip(1).map(|v| v.weight.0).sum();
    versions[0].weight = Weight(WEIGHT_SCALE - others.min(WEIGHT_SCALE));
    let path = if p.exact {
        PathMatch::Exact(p.path.to_string())
    } else {
        PathMatch::Prefix(p.path.trim_end_matches('/').to_string())
    };
    let n = versions.len();
    let mut route = kube_route(
        name,
        versions,
        proxy,
        KubeRoute {
            source: format!("Ingress {}", m.key()),
            hosts: p.host.and_then(host_match).into_iter().collect(),
            matches: vec![RequestMatch {
                path,
                method: None,
                headers: Vec::new(),
                query: Vec::new(),
            }],
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            version_response_headers: vec![HeaderEdits::default(); n],
            unservable,
            nginx: Some(Box::new(NginxLabels {
                namespace: m.namespace.clone(),
                ingress: m.name.clone(),
                path: p.path.to_string(),
                services,
            })),
            redirect: None,
            rewrite: None,
        },
    );
    route.rules = rules;
    Ok(route)
}

/// Header rules, then cookie rules, in ingress-nginx's order; the canary is version 1.
fn canary_rules(cm: &Meta, field: &str) -> Result<Vec<RuleConfig>, String> {
    let rule = |name: &str, to: usize, c: Condition| RuleConfig {
        name: Some(name.to_string()),
        to,
        conditions: vec![c],
    };
    let mut rules = Vec::new();
    if let Some(h) = annotation(cm, "canary-by-header").filter(|h| !h.is_empty()) {
        let name = HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| format!("{field}: {PREFIX}canary-by-header `{h}` is not a header name"))?;
        let header = |test| Condition::Header {
            name: name.clone(),
            test,
        };
        if let Some(v) = annotation(cm, "canary-by-header-value").filter(|v| !v.is_empty()) {
            rules.push(rule(
                "canary-by-header-value",
                1,
                header(ValueTest::Equals(v.to_string())),
            ));
        } else if let Some(p) = annotation(cm, "canary-by-header-pattern").filter(|p| !p.is_empty())
        {
            // ingress-nginx: `ngx.re.match(value, pattern)`, an unanchored search.
            let re = regex::bytes::Regex::new(p).map_err(|e| {
                format!(
                    "{field}: {PREFIX}canary-by-header-pattern is not a regular expression: {e}"
                )
            })?;
            rules.push(rule(
                "canary-by-header-pattern",
                1,
                header(ValueTest::Matches(re)),
            ));
        } else {
            rules.push(rule(
                "canary-by-header",
                1,
                header(ValueTest::Equals("always".into())),
            ));
            rules.push(rule(
                "canary-by-header-never",
                0,
                header(ValueTest::Equals("never".into())),
            ));
        }
    }
    if let Some(c) = annotation(cm, "canary-by-cookie").filter(|c| !c.is_empty()) {
        let cookie = |v: &str| Condition::Cookie {
            name: c.to_string(),
            test: ValueTest::Equals(v.to_string()),
        };
        rules.push(rule("canary-by-cookie", 1, cookie("always")));
        rules.push(rule("canary-by-cookie-never", 0, cookie("never")));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests;
