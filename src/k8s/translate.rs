//! Gateway API objects → canaryd routes, and the status each object should report.
//!
//! Pure: the cluster's objects in, routes and statuses out, so every Gateway API rule is
//! unit-tested without an API server. The watcher (`watch`, feature `kubernetes`) keeps the
//! [`World`] current and applies what comes out.
//!
//! The mapping (docs/kubernetes.md):
//! - each rule of an accepted HTTPRoute is one route named `<namespace>-<name>-<rule index>`
//!   (characters outside `a-z0-9_-` become `_`, hash-suffixed past 64 characters);
//! - each distinct Service among a rule's `backendRefs` is a version named after it; the
//!   primary is the one the annotation `canaryd.io/primary` names, else the first;
//! - a version's share is `weight / sum of weights` (0: no traffic; all 0: 500);
//! - its endpoints are the ready addresses of the Service's EndpointSlices on the port the
//!   backendRef names; none ready: its share answers 503; a backendRef that does not
//!   resolve: 500.

use super::objects::{
    BackendRef, GATEWAY_GROUP, Gateway, GatewayListener, HeaderModifier, HttpRoute, HttpRouteMatch,
    ParentRef, SERVICE_NAME_LABEL, Service,
};
use crate::config::{
    Endpoint, Errors, HeaderEdits, HostMatch, KubeRoute, OutlierPolicy, PathMatch, PathModifier,
    Protocol, ProxySettings, Redirect, RequestMatch, RetryPolicy, Rewrite, RouteConfig, Unservable,
    Upstream, ValueTest, VersionConfig, WEIGHT_SCALE, Weight,
};
use http::{HeaderName, HeaderValue};
use serde_json::Value;
use std::collections::BTreeMap;

/// The `controllerName` of the GatewayClasses canaryd implements (the contract).
pub const CONTROLLER_NAME: &str = "canaryd.io/gateway-controller";
/// Annotation on an HTTPRoute naming the backend that is the primary (stable) version.
pub const PRIMARY_ANNOTATION: &str = "canaryd.io/primary";

/// Every object canaryd reads, keyed by `namespace/name` (GatewayClasses by name).
#[derive(Debug, Clone, Default)]
pub struct World {
    pub classes: BTreeMap<String, super::objects::GatewayClass>,
    pub gateways: BTreeMap<String, Gateway>,
    pub routes: BTreeMap<String, HttpRoute>,
    pub services: BTreeMap<String, Service>,
    /// EndpointSlices by `namespace/name`; change them with [`World::put_slice`] and
    /// [`World::remove_slice`], which keep the index by Service.
    pub(crate) slices: BTreeMap<String, super::objects::EndpointSlice>,
    /// `namespace/service` → keys of its EndpointSlices: a backend reads its own slices, not
    /// every slice of the cluster.
    slices_by_service: BTreeMap<String, std::collections::BTreeSet<String>>,
    pub ingresses: BTreeMap<String, super::objects::Ingress>,
}

impl World {
    pub fn put_slice(&mut self, key: String, slice: super::objects::EndpointSlice) {
        self.remove_slice(&key);
        if let Some(svc) = slice.metadata.labels.get(SERVICE_NAME_LABEL) {
            self.slices_by_service
                .entry(format!("{}/{svc}", slice.metadata.namespace))
                .or_default()
                .insert(key.clone());
        }
        self.slices.insert(key, slice);
    }

    pub fn remove_slice(&mut self, key: &str) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        if let Some(svc) = old.metadata.labels.get(SERVICE_NAME_LABEL) {
            let k = format!("{}/{svc}", old.metadata.namespace);
            if let Some(set) = self.slices_by_service.get_mut(&k) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_by_service.remove(&k);
                }
            }
        }
    }

    pub fn clear_slices(&mut self) {
        self.slices.clear();
        self.slices_by_service.clear();
    }

    /// The EndpointSlices of Service `ns/name`.
    fn slices_of<'a>(
        &'a self,
        ns: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a super::objects::EndpointSlice> + 'a {
        self.slices_by_service
            .get(&format!("{ns}/{name}"))
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }
}

/// One status condition as canaryd computes it (the writer adds times and generations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub kind: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    fn new(kind: &'static str, status: bool, reason: &str, message: impl Into<String>) -> Cond {
        Cond {
            kind,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// What one HTTPRoute reports for the parents canaryd implements.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStatus {
    pub generation: i64,
    /// Each parentRef as written in the spec, with its conditions.
    pub parents: Vec<(Value, Vec<Cond>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayStatus {
    pub generation: i64,
    pub conditions: Vec<Cond>,
    /// Listener name, routes attached, conditions.
    pub listeners: Vec<(String, i64, Vec<Cond>)>,
}

/// What the cluster's objects mean for canaryd.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// In Gateway API tie-break order: oldest HTTPRoute first, then by namespace/name, then
    /// rule index.
    pub routes: Vec<RouteConfig>,
    /// The routes of each HTTPRoute that translated (`namespace/name`): what the next
    /// translation falls back to when that object turns invalid.
    pub good: BTreeMap<String, Vec<RouteConfig>>,
    pub route_status: BTreeMap<String, RouteStatus>,
    pub gateway_status: BTreeMap<String, GatewayStatus>,
    /// GatewayClasses with our controllerName: name → (generation, conditions).
    pub class_status: BTreeMap<String, (i64, Vec<Cond>)>,
}

/// Is this Gateway one of ours (its class names our controller)?
fn ours(world: &World, gw: &Gateway) -> bool {
    world
        .classes
        .get(&gw.spec.gateway_class_name)
        .is_some_and(|c| c.spec.controller_name == CONTROLLER_NAME)
}

/// Translate everything. `file` is the config file's routes: a route that claims the same
/// host and path as one of them is not accepted (the file wins). `previous` is the last
/// translation's `good`: an HTTPRoute whose new spec cannot be served keeps serving its last
/// good rules (and says so in its status), as a bad config file keeps the running config.
pub fn translate(
    world: &World,
    file: &[RouteConfig],
    proxy: &ProxySettings,
    previous: &BTreeMap<String, Vec<RouteConfig>>,
) -> Translation {
    let mut out = Translation::default();
    for (name, c) in &world.classes {
        if c.spec.controller_name == CONTROLLER_NAME {
            out.class_status.insert(
                name.clone(),
                (
                    c.metadata.generation,
                    vec![Cond::new(
                        "Accepted",
                        true,
                        "Accepted",
                        "canaryd implements this class",
                    )],
                ),
            );
        }
    }
    let mut attached: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut routes: Vec<&HttpRoute> = world.routes.values().collect();
    routes.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, a.metadata.key())
            .cmp(&(&b.metadata.creation_timestamp, b.metadata.key()))
    });
    for r in routes {
        translate_route(world, r, file, proxy, previous, &mut out, &mut attached);
    }
    for (key, gw) in &world.gateways {
        if !ours(world, gw) {
            continue;
        }
        let counts = attached.get(key);
        let listeners = gw
            .spec
            .listeners
            .iter()
            .map(|l| {
                let n = counts.and_then(|c| c.get(&l.name)).copied().unwrap_or(0);
                let supported = matches!(l.protocol.as_str(), "HTTP" | "HTTPS");
                let conds = if supported {
                    vec![
                        Cond::new("Accepted", true, "Accepted", "listener accepted"),
                        Cond::new(
                            "Programmed",
                            true,
                            "Programmed",
                            "served on canaryd's listeners",
                        ),
                        Cond::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
                    ]
                } else {
                    vec![
                        Cond::new(
                            "Accepted",
                            false,
                            "UnsupportedProtocol",
                            format!(
                                "canaryd serves HTTP and HTTPS listeners, not {}",
                                l.protocol
                            ),
                        ),
                        Cond::new("Programmed", false, "Invalid", "listener not accepted"),
                        Cond::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
                    ]
                };
                (l.name.clone(), n, conds)
            })
            .collect();
        out.gateway_status.insert(
            key.clone(),
            GatewayStatus {
                generation: gw.metadata.generation,
                conditions: vec![
                    Cond::new("Accepted", true, "Accepted", "accepted by canaryd"),
                    Cond::new(
                        "Programmed",
                        true,
                        "Programmed",
                        "routes are served by canaryd",
                    ),
                ],
                listeners,
            },
        );
    }
    out
}

/// Why a route does not attach to a parent: the `Accepted` reason and message.
pub(crate) type Refusal = (&'static str, String);

/// Hosts a route answers for through one parent: any, or these.
#[derive(Debug, Clone, PartialEq)]
enum Hosts {
    Any,
    Some(Vec<String>),
}

/// The more specific of two hostnames when they intersect (`*.a.com` and `x.a.com` →
/// `x.a.com`), else `None`.
fn intersect(a: &str, b: &str) -> Option<String> {
    let a = a.to_ascii_lowercase();
    let b = b.to_ascii_lowercase();
    let covers = |wild: &str, other: &str| match wild.strip_prefix('*') {
        Some(suffix) => other.len() > suffix.len() && other.ends_with(suffix),
        None => wild == other,
    };
    if a == b {
        Some(a)
    } else if covers(&a, &b) {
        Some(b)
    } else if covers(&b, &a) {
        Some(a)
    } else {
        None
    }
}

/// Can `route` attach to `gw` through `parent`? The hosts it answers for, or why not
/// (`reason`, `message`).
fn attach(
    gw: &Gateway,
    parent: &ParentRef,
    route: &HttpRoute,
    attached: &mut BTreeMap<String, i64>,
) -> Result<Hosts, Refusal> {
    let selected: Vec<&GatewayListener> = gw
        .spec
        .listeners
        .iter()
        .filter(|l| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|l| parent.port.is_none_or(|p| p == l.port))
        .collect();
    if selected.is_empty() {
        return Err((
            "NoMatchingParent",
            format!(
                "Gateway {} has no listener{}{}",
                gw.metadata.key(),
                parent
                    .section_name
                    .as_ref()
                    .map(|s| format!(" named {s}"))
                    .unwrap_or_default(),
                parent
                    .port
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default()
            ),
        ));
    }
    let allowed: Vec<&GatewayListener> = selected
        .into_iter()
        .filter(|l| matches!(l.protocol.as_str(), "HTTP" | "HTTPS"))
        .filter(|l| {
            let ar = l.allowed_routes.as_ref();
            let from = ar
                .and_then(|a| a.namespaces.as_ref())
                .and_then(|n| n.from.as_deref())
                .unwrap_or("Same");
            // `Selector` needs namespace labels, which canaryd does not watch: it is
            // treated as `All` (docs/kubernetes.md).
            let ns_ok = from != "Same" || route.metadata.namespace == gw.metadata.namespace;
            let kind_ok = ar.and_then(|a| a.kinds.as_ref()).is_none_or(|kinds| {
                kinds.iter().any(|k| {
                    k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP)
                })
            });
            ns_ok && kind_ok
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            format!(
                "no listener of Gateway {} allows HTTPRoutes from namespace {}",
                gw.metadata.key(),
                route.metadata.namespace
            ),
        ));
    }
    let mut hosts = Vec::new();
    let mut any = false;
    for l in &allowed {
        let before = (any, hosts.len());
        match (&l.hostname, route.spec.hostnames.is_empty()) {
            (None, true) => any = true,
            (None, false) => {
                hosts.extend(route.spec.hostnames.iter().map(|h| h.to_ascii_lowercase()))
            }
            (Some(lh), true) => hosts.push(lh.to_ascii_lowercase()),
            (Some(lh), false) => {
                hosts.extend(route.spec.hostnames.iter().filter_map(|h| intersect(h, lh)))
            }
        }
        if (any, hosts.len()) != before {
            *attached.entry(l.name.clone()).or_default() += 1;
        }
    }
    if any {
        return Ok(Hosts::Any);
    }
    if hosts.is_empty() {
        return Err((
            "NoMatchingListenerHostname",
            format!(
                "no hostname of the route intersects a listener hostname of Gateway {}",
                gw.metadata.key()
            ),
        ));
    }
    hosts.sort();
    hosts.dedup();
    Ok(Hosts::Some(hosts))
}

/// A route name from a Kubernetes object: `a-z0-9_-` only, at most 64 characters.
pub fn route_name(namespace: &str, name: &str, rule: usize) -> String {
    fit(&format!("{namespace}-{name}-{rule}"))
}

/// A version name for a backend (Service names already qualify; other kinds may not).
pub(crate) fn version_name(name: &str) -> String {
    if name.is_empty() {
        "backend".into()
    } else {
        fit(name)
    }
}

/// `full` in canaryd's name alphabet (other characters become `_`), cut to 55 characters
/// and suffixed with a hash of `full` when longer than 64, so long names stay distinct.
fn fit(full: &str) -> String {
    let clean: String = full
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if clean.len() <= 64 {
        return clean;
    }
    let h = crate::hash::fnv(crate::hash::FNV_OFFSET, full.as_bytes().iter());
    format!("{}-{:08x}", &clean[..55], h as u32)
}

fn translate_route(
    world: &World,
    r: &HttpRoute,
    file: &[RouteConfig],
    proxy: &ProxySettings,
    previous: &BTreeMap<String, Vec<RouteConfig>>,
    out: &mut Translation,
    attached: &mut BTreeMap<String, BTreeMap<String, i64>>,
) {
    let ns = &r.metadata.namespace;
    let mut parents: Vec<(Value, Result<Hosts, Refusal>)> = Vec::new();
    for pv in &r.spec.parent_refs {
        let p = ParentRef::parse(pv, ns);
        if p.group != GATEWAY_GROUP || p.kind != "Gateway" {
            continue;
        }
        let key = format!("{}/{}", p.namespace, p.name);
        let Some(gw) = world.gateways.get(&key) else {
            continue;
        };
        if !ours(world, gw) {
            continue;
        }
        let mut counts = BTreeMap::new();
        let result = attach(gw, &p, r, &mut counts);
        if result.is_ok() {
            let total = attached.entry(key).or_default();
            for (l, n) in counts {
                *total.entry(l).or_default() += n;
            }
        }
        parents.push((pv.clone(), result));
    }
    if parents.is_empty() {
        return;
    }
    // The hosts the route answers for: the union over the parents that accept it.
    let mut hosts: Option<Hosts> = None;
    for (_, res) in &parents {
        if let Ok(h) = res {
            hosts = Some(match (hosts.take(), h) {
                (Some(Hosts::Any), _) | (_, Hosts::Any) => Hosts::Any,
                (Some(Hosts::Some(mut a)), Hosts::Some(b)) => {
                    a.extend(b.iter().cloned());
                    a.sort();
                    a.dedup();
                    Hosts::Some(a)
                }
                (None, h) => h.clone(),
            });
        }
    }
    let mut refused: Option<Refusal> = None;
    let mut unresolved: Vec<Refusal> = Vec::new();
    let mut built = Vec::new();
    if let Some(hosts) = &hosts {
        for (i, rule) in r.spec.rules.iter().enumerate() {
            match translate_rule(world, r, i, rule, hosts, proxy, &mut unresolved) {
                Ok(rc) => built.push(rc),
                Err(e) => {
                    refused.get_or_insert(("UnsupportedValue", e));
                }
            }
        }
        if refused.is_none() {
            if let Some(m) = built.iter().find_map(|rc| file_conflict(rc, file)) {
                refused = Some(("OverriddenByFile", m));
            }
        }
    }
    let key = r.metadata.key();
    let mut serve = None;
    match &mut refused {
        None if hosts.is_some() => serve = Some(built),
        Some(("UnsupportedValue", msg)) => {
            if let Some(last) = previous.get(&key) {
                msg.push_str("; its last good rules keep serving");
                serve = Some(last.clone());
            }
        }
        _ => {}
    }
    let resolved = match unresolved.first() {
        None => Cond::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "all backendRefs resolved",
        ),
        Some((reason, _)) => Cond::new(
            "ResolvedRefs",
            false,
            reason,
            unresolved
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let statuses = parents
        .into_iter()
        .map(|(pv, res)| {
            let accepted = match (&res, &refused) {
                (Err((reason, msg)), _) => Cond::new("Accepted", false, reason, msg.clone()),
                (Ok(_), Some((reason, msg))) => Cond::new("Accepted", false, reason, msg.clone()),
                (Ok(_), None) => Cond::new("Accepted", true, "Accepted", "served by canaryd"),
            };
            (pv, vec![accepted, resolved.clone()])
        })
        .collect();
    out.route_status.insert(
        key.clone(),
        RouteStatus {
            generation: r.metadata.generation,
            parents: statuses,
        },
    );
    if let Some(routes) = serve {
        for rc in &routes {
            let mut rc = rc.clone();
            // `team-x/shop` and `team/x-shop` both make `team-x-shop-0`: the younger one
            // gets its source's hash appended, so names stay unique and stable.
            if out.routes.iter().any(|r| r.name == rc.name) {
                let source = rc.kube.as_ref().map_or("", |k| k.source.as_str());
                let h = crate::hash::fnv(crate::hash::FNV_OFFSET, source.as_bytes().iter());
                let base: String = rc.name.chars().take(55).collect();
                rc.name = format!("{base}-{:08x}", h as u32);
            }
            out.routes.push(rc);
        }
        out.good.insert(key, routes);
    }
}

/// A file route claiming the same host and path as one of `rc`'s plain path matches.
pub(crate) fn file_conflict(rc: &RouteConfig, file: &[RouteConfig]) -> Option<String> {
    let k = rc.kube.as_ref()?;
    for f in file {
        let f_path = f.path_prefix.trim_end_matches('/');
        let host_clash = match &f.host {
            None => k.hosts.is_empty(),
            Some(h) => k.hosts.contains(h),
        };
        let path_clash = k.matches.iter().any(|m| {
            matches!(&m.path, PathMatch::Prefix(p) if p == f_path)
                && m.method.is_none()
                && m.headers.is_empty()
                && m.query.is_empty()
        });
        if host_clash && path_clash {
            return Some(format!(
                "the config file's route `{}` serves the same host and path; the file wins",
                f.name
            ));
        }
    }
    None
}

/// One rule → one route. `Err` is why the rule cannot be served (the route is then not
/// accepted); backend problems go to `unresolved` and are answered 500 for their share.
fn translate_rule(
    world: &World,
    r: &HttpRoute,
    index: usize,
    rule: &super::objects::HttpRouteRule,
    hosts: &Hosts,
    proxy: &ProxySettings,
    unresolved: &mut Vec<(&'static str, String)>,
) -> Result<RouteConfig, String> {
    let ns = &r.metadata.namespace;
    let at = format!("spec.rules[{index}]");
    let default_match = [HttpRouteMatch::default()];
    let specs: &[HttpRouteMatch] = if rule.matches.is_empty() {
        &default_match
    } else {
        &rule.matches
    };
    let matches = specs
        .iter()
        .enumerate()
        .map(|(j, m)| request_match(m, &format!("{at}.matches[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;

    // Versions: one per distinct backend, weights summed.
    struct Backend {
        name: String,
        weight: u64,
        endpoints: Vec<Endpoint>,
        protocol: Protocol,
        unservable: Option<Unservable>,
        response: HeaderEdits,
    }
    let mut backends: Vec<Backend> = Vec::new();
    for (j, b) in rule.backend_refs.iter().enumerate() {
        let field = format!("{at}.backendRefs[{j}]");
        let mut response = HeaderEdits::default();
        for (f_i, f) in b.filters.iter().enumerate() {
            match f.kind.as_str() {
                "ResponseHeaderModifier" => {
                    let m = f.response_header_modifier.as_ref().ok_or_else(|| {
                        format!("{field}.filters[{f_i}]: responseHeaderModifier is missing")
                    })?;
                    merge_edits(&mut response, m, &format!("{field}.filters[{f_i}]"))?;
                }
                other => {
                    return Err(format!(
                        "{field}.filters[{f_i}]: filter type {other} on a backendRef is not supported by canaryd (ResponseHeaderModifier is)"
                    ));
                }
            }
        }
        let weight = b.weight.unwrap_or(1).max(0) as u64;
        let resolved = resolve(world, ns, b, &field);
        let (name, endpoints, protocol, unservable) = match resolved {
            Ok((eps, proto)) => {
                let un = eps.is_empty().then_some(Unservable::NoEndpoints);
                (version_name(&b.name), eps, proto, un)
            }
            Err((reason, msg)) => {
                unresolved.push((reason, msg));
                (
                    version_name(&b.name),
                    Vec::new(),
                    Protocol::Http1,
                    Some(Unservable::Invalid),
                )
            }
        };
        if let Some(prev) = backends.iter_mut().find(|x| x.name == name) {
            prev.weight += weight;
            continue;
        }
        backends.push(Backend {
            name,
            weight,
            endpoints,
            protocol,
            unservable,
            response,
        });
    }
    if backends.is_empty() {
        backends.push(Backend {
            name: "no-backend".into(),
            weight: 0,
            endpoints: Vec::new(),
            protocol: Protocol::Http1,
            unservable: Some(Unservable::Invalid),
            response: HeaderEdits::default(),
        });
    }
    if let Some(p) = r.metadata.annotations.get(PRIMARY_ANNOTATION) {
        if let Some(i) = backends.iter().position(|b| b.name == *p) {
            let primary = backends.remove(i);
            backends.insert(0, primary);
        }
    }
    // Shares in 0.01 % units by cumulative floors, so they add up to exactly 100 %:
    // non-primary versions first, the primary takes the rest.
    let total: u64 = backends.iter().map(|b| b.weight).sum();
    let mut shares = vec![0u32; backends.len()];
    let mut cum = 0u64;
    let mut floor_prev = 0u64;
    for (i, b) in backends.iter().enumerate().skip(1) {
        cum += b.weight;
        let floor = (cum * u64::from(WEIGHT_SCALE))
            .checked_div(total)
            .unwrap_or(0);
        shares[i] = (floor - floor_prev) as u32;
        floor_prev = floor;
    }
    shares[0] = WEIGHT_SCALE - floor_prev as u32;
    if total == 0 {
        // Gateway API: every backend at weight 0 → 500 for the whole rule.
        backends[0].unservable = Some(Unservable::Invalid);
    }

    let mut request_headers = HeaderEdits::default();
    let mut response_headers = HeaderEdits::default();
    let mut mirror_raw = None;
    let mut redirect = None;
    let mut rewrite = None;
    for (f_i, f) in rule.filters.iter().enumerate() {
        let field = format!("{at}.filters[{f_i}]");
        match f.kind.as_str() {
            "RequestHeaderModifier" => merge_edits(
                &mut request_headers,
                f.request_header_modifier
                    .as_ref()
                    .ok_or_else(|| format!("{field}: requestHeaderModifier is missing"))?,
                &field,
            )?,
            "ResponseHeaderModifier" => merge_edits(
                &mut response_headers,
                f.response_header_modifier
                    .as_ref()
                    .ok_or_else(|| format!("{field}: responseHeaderModifier is missing"))?,
                &field,
            )?,
            "RequestMirror" => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or_else(|| format!("{field}: requestMirror is missing"))?;
                mirror_raw = Some((m.clone(), field));
            }
            "RequestRedirect" => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| format!("{field}: requestRedirect is missing"))?;
                redirect = Some(request_redirect(r, &matches, &field)?);
            }
            "URLRewrite" => {
                let r = f
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(|| format!("{field}: urlRewrite is missing"))?;
                let hostname = r
                    .hostname
                    .as_deref()
                    .map(|h| {
                        HeaderValue::from_str(h).map_err(|_| {
                            format!("{field}.urlRewrite.hostname: `{h}` is not a host")
                        })
                    })
                    .transpose()?;
                let path = r
                    .path
                    .as_ref()
                    .map(|p| path_modifier(p, &matches, &format!("{field}.urlRewrite.path")))
                    .transpose()?;
                rewrite = Some(Rewrite { hostname, path });
            }
            other => {
                return Err(format!(
                    "{field}: filter type {other} is not supported by canaryd (RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, RequestRedirect and URLRewrite are)"
                ));
            }
        }
    }
    if redirect.is_some() && rewrite.is_some() {
        return Err(format!(
            "{at}.filters: RequestRedirect and URLRewrite cannot both be set"
        ));
    }

    let mut versions: Vec<VersionConfig> = Vec::new();
    let mut unservable = Vec::new();
    let mut version_response_headers = Vec::new();
    for (b, share) in backends.into_iter().zip(shares) {
        versions.push(VersionConfig {
            name: b.name,
            endpoints: b.endpoints,
            weight: Weight(share),
            upstream: Upstream {
                protocol: b.protocol,
                tls: None,
            },
        });
        unservable.push(b.unservable);
        version_response_headers.push(b.response);
    }

    let mut mirror = None;
    if let Some((m, field)) = mirror_raw {
        let b = &m.backend_ref;
        let (endpoints, protocol) =
            resolve(world, ns, b, &format!("{field}.requestMirror.backendRef"))
                .map_err(|(_, msg)| msg)?;
        let name = version_name(&b.name);
        if !versions.iter().any(|v| v.name == name) {
            versions.push(VersionConfig {
                name: name.clone(),
                endpoints,
                weight: Weight(0),
                upstream: Upstream {
                    protocol,
                    tls: None,
                },
            });
            unservable.push(None);
            version_response_headers.push(HeaderEdits::default());
        }
        let percent = match (&m.percent, &m.fraction) {
            (Some(p), _) => *p as f64,
            (None, Some(f)) => {
                let d = f.denominator.unwrap_or(100).max(1);
                f.numerator as f64 * 100.0 / d as f64
            }
            (None, None) => 100.0,
        };
        let raw = crate::config::raw::RawMirror {
            to: name,
            percent: (percent.clamp(0.0, 100.0) * 100.0).round() / 100.0,
            methods: Some(
                ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            ..Default::default()
        };
        let mut errs = Errors::default();
        mirror = crate::config::validate_mirror(&raw, None, &versions, &field, &mut errs);
        if let Some(e) = errs.0.first() {
            return Err(e.to_string());
        }
    }

    let mut route = kube_route(
        route_name(ns, &r.metadata.name, index),
        versions,
        proxy,
        KubeRoute {
            source: format!("HTTPRoute {} rule {index}", r.metadata.key()),
            hosts: match hosts {
                Hosts::Any => Vec::new(),
                Hosts::Some(h) => h.iter().filter_map(|h| host_match(h)).collect(),
            },
            matches,
            request_headers,
            response_headers,
            version_response_headers,
            unservable,
            nginx: None,
            redirect,
            rewrite,
        },
    );
    route.mirror = mirror;
    // `backendRequest` bounds each attempt, `request` the whole exchange; canaryd's response
    // timeout is per attempt, so the tighter of the two applies ("0s": no bound from it).
    if let Some(t) = &rule.timeouts {
        let mut tightest = None;
        for (name, v) in [
            ("request", &t.request),
            ("backendRequest", &t.backend_request),
        ] {
            let Some(v) = v else { continue };
            let d = humantime::parse_duration(v)
                .map_err(|_| format!("{at}.timeouts.{name}: `{v}` is not a duration"))?;
            if !d.is_zero() {
                tightest = Some(tightest.map_or(d, |t: std::time::Duration| t.min(d)));
            }
        }
        if let Some(d) = tightest {
            route.timeouts.response = d;
        }
    }
    Ok(route)
}

/// A route translated from a Kubernetes object: `kube` decides its matching; the rest is the
/// file's defaults (`proxy` timeouts and upgrades, default retries and outlier detection).
pub(crate) fn kube_route(
    name: String,
    versions: Vec<VersionConfig>,
    proxy: &ProxySettings,
    kube: KubeRoute,
) -> RouteConfig {
    RouteConfig {
        name,
        host: None,
        path_prefix: "/".into(),
        versions,
        rules: Vec::new(),
        sticky: None,
        timeouts: proxy.timeouts,
        retries: RetryPolicy::default(),
        outlier: OutlierPolicy::default(),
        health_check: None,
        fallback: false,
        upgrades: proxy.upgrades.clone(),
        rollout: None,
        mirror: None,
        mirrors: Vec::new(),
        kube: Some(Box::new(kube)),
    }
}

pub(crate) fn host_match(h: &str) -> Option<HostMatch> {
    match h.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') => Some(HostMatch::Wildcard(suffix.to_string())),
        Some(_) => None,
        None => Some(HostMatch::Exact(h.to_string())),
    }
}

fn request_redirect(
    r: &super::objects::RequestRedirect,
    matches: &[RequestMatch],
    field: &str,
) -> Result<Redirect, String> {
    let status = match r.status_code.unwrap_or(302) {
        s @ (301 | 302) => s as u16,
        s => {
            return Err(format!(
                "{field}.requestRedirect.statusCode: {s}; Gateway API allows 301 and 302"
            ));
        }
    };
    let scheme = match r.scheme.as_deref() {
        None => None,
        Some(s @ ("http" | "https")) => Some(s.to_string()),
        Some(s) => {
            return Err(format!(
                "{field}.requestRedirect.scheme: `{s}`; http or https"
            ));
        }
    };
    let port = r
        .port
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{field}.requestRedirect.port: {p} is not a port"))
        })
        .transpose()?;
    let path = r
        .path
        .as_ref()
        .map(|p| path_modifier(p, matches, &format!("{field}.requestRedirect.path")))
        .transpose()?;
    Ok(Redirect {
        scheme,
        hostname: r.hostname.clone(),
        port,
        path,
        status,
    })
}

fn path_modifier(
    p: &super::objects::PathModifierSpec,
    matches: &[RequestMatch],
    field: &str,
) -> Result<PathModifier, String> {
    match p.kind.as_str() {
        "ReplaceFullPath" => Ok(PathModifier::ReplaceFullPath(
            p.replace_full_path.clone().unwrap_or_else(|| "/".into()),
        )),
        "ReplacePrefixMatch" => {
            if !matches
                .iter()
                .all(|m| matches!(m.path, PathMatch::Prefix(_)))
            {
                return Err(format!(
                    "{field}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"
                ));
            }
            Ok(PathModifier::ReplacePrefixMatch(
                p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()),
            ))
        }
        other => Err(format!("{field}.type: {other} is not a path modifier")),
    }
}

fn request_match(m: &HttpRouteMatch, field: &str) -> Result<RequestMatch, String> {
    let kind = m
        .path
        .as_ref()
        .and_then(|p| p.kind.as_deref())
        .unwrap_or("PathPrefix");
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.as_deref())
        .unwrap_or("/");
    if !value.starts_with('/') && kind != "RegularExpression" {
        return Err(format!("{field}.path.value: `{value}` must start with /"));
    }
    let path = match kind {
        "Exact" => PathMatch::Exact(value.to_string()),
        "PathPrefix" => PathMatch::Prefix(value.trim_end_matches('/').to_string()),
        "RegularExpression" => PathMatch::Regex(
            regex::Regex::new(&format!("^(?:{value})$"))
                .map_err(|e| format!("{field}.path.value: invalid regular expression: {e}"))?,
        ),
        other => {
            return Err(format!(
                "{field}.path.type: {other} is not a path match type"
            ));
        }
    };
    let method = m
        .method
        .as_deref()
        .map(|s| {
            http::Method::from_bytes(s.as_bytes())
                .map_err(|_| format!("{field}.method: `{s}` is not a method"))
        })
        .transpose()?;
    let mut headers: Vec<(HeaderName, ValueTest)> = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let f = format!("{field}.headers[{i}]");
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("{f}.name: `{}` is not a header name", h.name))?;
        // Gateway API: only the first match of a given name counts.
        if headers.iter().any(|(n, _)| *n == name) {
            continue;
        }
        headers.push((name, value_test(h.kind.as_deref(), &h.value, &f)?));
    }
    let mut query: Vec<(String, ValueTest)> = Vec::new();
    for (i, q) in m.query_params.iter().enumerate() {
        let f = format!("{field}.queryParams[{i}]");
        if query.iter().any(|(n, _)| *n == q.name) {
            continue;
        }
        query.push((q.name.clone(), value_test(q.kind.as_deref(), &q.value, &f)?));
    }
    Ok(RequestMatch {
        path,
        method,
        headers,
        query,
    })
}

fn value_test(kind: Option<&str>, value: &str, field: &str) -> Result<ValueTest, String> {
    match kind.unwrap_or("Exact") {
        "Exact" => Ok(ValueTest::Equals(value.to_string())),
        // Anchored, as Envoy's: Argo's prefix match is written `prefix.*`.
        "RegularExpression" => regex::bytes::Regex::new(&format!("^(?:{value})$"))
            .map(ValueTest::Matches)
            .map_err(|e| format!("{field}.value: invalid regular expression: {e}")),
        other => Err(format!("{field}.type: {other} is not a match type")),
    }
}

fn merge_edits(into: &mut HeaderEdits, m: &HeaderModifier, field: &str) -> Result<(), String> {
    let pair = |nv: &super::objects::NameValue| -> Result<(HeaderName, HeaderValue), String> {
        let n = HeaderName::from_bytes(nv.name.as_bytes())
            .map_err(|_| format!("{field}: `{}` is not a header name", nv.name))?;
        let v = HeaderValue::from_str(&nv.value).map_err(|_| {
            format!(
                "{field}: the value of {} is not a valid header value",
                nv.name
            )
        })?;
        Ok((n, v))
    };
    for nv in &m.set {
        into.set.push(pair(nv)?);
    }
    for nv in &m.add {
        into.add.push(pair(nv)?);
    }
    for n in &m.remove {
        into.remove.push(
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("{field}: `{n}` is not a header name"))?,
        );
    }
    Ok(())
}

/// A backendRef's ready endpoints and protocol, or why it does not resolve
/// (`ResolvedRefs` reason, message).
fn resolve(
    world: &World,
    ns: &str,
    b: &BackendRef,
    field: &str,
) -> Result<(Vec<Endpoint>, Protocol), Refusal> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("{field}: canaryd routes to Services, not {kind} of group `{group}`"),
        ));
    }
    if b.namespace.as_deref().is_some_and(|n| n != ns) {
        return Err((
            "RefNotPermitted",
            format!(
                "{field}: Service {}/{} is in another namespace; canaryd does not read ReferenceGrants yet",
                b.namespace.as_deref().unwrap_or(""),
                b.name
            ),
        ));
    }
    let Some(port) = b.port else {
        return Err((
            "UnsupportedValue",
            format!("{field}: port is required for a Service"),
        ));
    };
    resolve_service(world, ns, &b.name, ServicePortRef::Number(port), field)
}

/// A Service port as a reference names it: by number (Gateway API, Ingress `port.number`)
/// or by name (Ingress `port.name`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ServicePortRef<'a> {
    Number(i64),
    Name(&'a str),
}

impl std::fmt::Display for ServicePortRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServicePortRef::Number(n) => write!(f, "{n}"),
            ServicePortRef::Name(n) => f.write_str(n),
        }
    }
}

/// The ready endpoints of Service `ns/name` on `port`, and how to speak to them; or why the
/// reference does not resolve (`ResolvedRefs` reason, message).
pub(crate) fn resolve_service(
    world: &World,
    ns: &str,
    name: &str,
    port: ServicePortRef<'_>,
    field: &str,
) -> Result<(Vec<Endpoint>, Protocol), Refusal> {
    let key = format!("{ns}/{name}");
    let Some(svc) = world.services.get(&key) else {
        return Err((
            "BackendNotFound",
            format!("{field}: Service {key} not found"),
        ));
    };
    if svc.spec.kind.as_deref() == Some("ExternalName") {
        return Err((
            "UnsupportedValue",
            format!("{field}: Service {key} is an ExternalName Service"),
        ));
    }
    let found = svc.spec.ports.iter().find(|p| match port {
        ServicePortRef::Number(n) => p.port == n,
        ServicePortRef::Name(n) => p.name.as_deref() == Some(n),
    });
    let Some(sp) = found else {
        return Err((
            "BackendNotFound",
            format!("{field}: Service {key} has no port {port}"),
        ));
    };
    let protocol = match sp.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") | Some("h2c") | Some("grpc") => Protocol::H2,
        _ => Protocol::Http1,
    };
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for s in world.slices_of(ns, name) {
        if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(target) = s
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""))
            .and_then(|p| p.port)
        else {
            continue;
        };
        for e in &s.endpoints {
            if e.conditions.ready == Some(false) {
                continue;
            }
            for a in &e.addresses {
                let text = if a.contains(':') {
                    format!("[{a}]:{target}")
                } else {
                    format!("{a}:{target}")
                };
                if let Ok(ep) = Endpoint::parse(&text) {
                    if !endpoints.contains(&ep) {
                        endpoints.push(ep);
                    }
                }
            }
        }
    }
    endpoints.sort_by(|a, b| a.authority.as_str().cmp(b.authority.as_str()));
    Ok((endpoints, protocol))
}

#[cfg(test)]
mod tests;
