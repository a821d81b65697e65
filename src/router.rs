//! The routing decision: which route, then which version. Pure: no I/O, no clock; randomness
//! is passed in so every branch is unit-testable and the sticky path is reproducible.
//!
//! Order of decision inside a route: rules (first match wins) → sticky bucket → weighted draw.
//!
//! Sticky assignment is deterministic and monotonic. A user's bucket is
//! `stable_hash(route name, key) mod 10 000`; non-primary versions own consecutive ranges from
//! bucket 0 upwards in listed order and the primary owns the rest. Raising a canary's weight
//! only extends its range, so users move primary → canary and never back, and every replica
//! that loads the same config computes the same answer with no shared state.

use crate::config::{
    Condition, Config, HostMatch, PathMatch, RequestMatch, RouteConfig, RuleConfig, StickyKey,
    Timeouts, ValueTest, WEIGHT_SCALE, Weight,
};
use crate::hash::{FNV_OFFSET, fnv};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue, Method};
use rand::Rng;
use std::net::IpAddr;

/// Size of the sticky bucket space; equal to the weight scale so 0.01 % = one bucket.
pub const BUCKETS: u32 = WEIGHT_SCALE;

/// Routes compiled from one config, ordered most specific first. `T` is what a route
/// carries: the [`Route`] alone here, a route with its runtime in a snapshot (anything that
/// gives its `Route` through `AsRef`), so a decision hands back the route itself.
#[derive(Debug)]
pub struct Router<T = Route> {
    /// Every way to match a route, most specific first: Gateway API's precedence, which for
    /// file routes is nginx's (exact host, then wildcard by suffix length, then no host;
    /// within each, exact path, then longest path prefix; then more method, header and query
    /// conditions; then config order).
    order: Vec<Entry>,
    /// In config order.
    pub routes: Vec<T>,
}

/// One route, ready for the hot path.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    /// Cumulative bucket upper bounds, parallel to `table_versions`: bucket `b` goes to the
    /// first entry whose bound is greater than `b`. Built once per config.
    table_bounds: Vec<u32>,
    table_versions: Vec<usize>,
    /// Distinct cookie names this route's rules and sticky key read, each with its searcher
    /// built once: a request's cookies are looked up by name, at most once per name.
    cookie_names: Vec<CookieName>,
    /// FNV state of `sticky_bucket` after the route name and separator, so each request
    /// hashes only its key.
    sticky_seed: u64,
}

/// A cookie name a route reads, with a substring searcher for it built once per config.
#[derive(Debug)]
struct CookieName {
    name: String,
    finder: memchr::memmem::Finder<'static>,
}

/// Most cookie names one route caches per request; a route that reads more looks the rest up
/// on every read.
const JAR_SLOTS: usize = 8;

/// The cookies a route reads, each looked up lazily the first time a rule or the sticky key
/// asks for it and remembered for the rest of the decision.
struct Jar<'h, 'r> {
    names: &'r [CookieName],
    values: [Option<Option<&'h [u8]>>; JAR_SLOTS],
}

impl<'h, 'r> Jar<'h, 'r> {
    fn new(names: &'r [CookieName]) -> Self {
        Jar {
            names,
            values: [None; JAR_SLOTS],
        }
    }

    fn get(&mut self, headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
        let slot = self.names.iter().position(|n| n.name == name)?;
        if let Some(Some(v)) = self.values.get(slot) {
            return *v;
        }
        let found = find_cookie(headers, &self.names[slot].finder);
        if let Some(cached) = self.values.get_mut(slot) {
            *cached = Some(found);
        }
        found
    }
}

/// Why a version was chosen; printed by `canaryd route` and logged in access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Rule at this index matched.
    Rule(usize),
    /// Sticky key present (or assigned now); its bucket.
    Sticky { bucket: u32 },
    /// No rule and no sticky key: a weighted random draw landed on this bucket.
    Weight { draw: u32 },
}

/// The result of routing one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a, T = Route> {
    /// The route chosen.
    pub route: &'a T,
    /// Index of the version in the route's `versions`.
    pub version: usize,
    pub reason: Reason,
    /// A fresh sticky id to send back in the route's `assign_cookie`.
    pub assign: Option<u128>,
    /// Which of a Kubernetes route's matches matched (`u16::MAX` for a file route): the
    /// prefix a `ReplacePrefixMatch` replaces.
    pub matched: u16,
}

/// Two decisions are the same when they name the same route (route names are unique in a
/// config, so decisions of two routers built from one config compare) and the same outcome.
impl<T: AsRef<Route>> PartialEq for Decision<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.route.as_ref().name() == other.route.as_ref().name()
            && (self.version, self.reason, self.assign)
                == (other.version, other.reason, other.assign)
    }
}

impl<T: AsRef<Route>> Eq for Decision<'_, T> {}

/// What routing reads of a request line: the path, the query apart (as `http::Uri` already
/// holds them, so the proxy splits nothing), the method.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
}

impl<'a> Line<'a> {
    /// From a request target's path with its query.
    pub fn parse(path_and_query: &'a str, method: &'a Method) -> Line<'a> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        Line {
            path,
            query,
            method,
        }
    }

    pub fn of(uri: &'a http::Uri, method: &'a Method) -> Line<'a> {
        Line {
            path: uri.path(),
            query: uri.query(),
            method,
        }
    }
}

/// One (host, match) alternative of a route. A file route has one, its `host` and
/// `path_prefix` ([`ANY`] in both fields); a Kubernetes route one per host and match.
#[derive(Debug, Clone, Copy)]
struct Entry {
    route: u32,
    /// Index into the route's `kube.hosts`; [`ANY`]: the file route's host, or any host.
    host: u16,
    /// Index into the route's `kube.matches`; [`ANY`]: the file route's path prefix.
    matcher: u16,
}

const ANY: u16 = u16::MAX;

/// Precedence of a host: exact, then wildcard by suffix length, then none.
fn host_rank(h: Option<&HostMatch>) -> (u8, usize) {
    match h {
        Some(HostMatch::Exact(_)) => (2, 0),
        Some(HostMatch::Wildcard(s)) => (1, s.len()),
        None => (0, 0),
    }
}

impl Entry {
    /// Sort key, most specific first.
    fn rank(&self, r: &RouteConfig) -> impl Ord + use<> {
        use std::cmp::Reverse;
        let (host, path, method, headers, query) = match &r.kube {
            None => (
                host_rank(r.host.as_ref()),
                (1u8, r.path_prefix.len()),
                false,
                0,
                0,
            ),
            Some(k) => {
                let m = &k.matches[usize::from(self.matcher)];
                let path = match &m.path {
                    PathMatch::Exact(p) => (2, p.len()),
                    // `/` is stored empty; rank it as the one-character prefix it is.
                    PathMatch::Prefix(p) => (1, p.len().max(1)),
                    PathMatch::Regex(_) => (0, 0),
                };
                (
                    host_rank(k.hosts.get(usize::from(self.host))),
                    path,
                    m.method.is_some(),
                    m.headers.len(),
                    m.query.len(),
                )
            }
        };
        (
            Reverse(host),
            Reverse(path),
            Reverse(method),
            Reverse(headers),
            Reverse(query),
            self.route,
            self.matcher,
        )
    }
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let routes: Vec<Route> = config.routes.iter().cloned().map(Route::new).collect();
        let mut order = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let route = i as u32;
            match &r.config.kube {
                None => order.push(Entry {
                    route,
                    host: ANY,
                    matcher: ANY,
                }),
                Some(k) => {
                    let hosts = if k.hosts.is_empty() {
                        vec![ANY]
                    } else {
                        (0..k.hosts.len().min(usize::from(ANY)) as u16).collect()
                    };
                    for host in hosts {
                        for matcher in 0..k.matches.len().min(usize::from(ANY)) as u16 {
                            order.push(Entry {
                                route,
                                host,
                                matcher,
                            });
                        }
                    }
                }
            }
        }
        order.sort_by_cached_key(|e| e.rank(&routes[e.route as usize].config));
        Router { order, routes }
    }

    /// The same routes, each carrying `f(index, route)`: how a snapshot attaches its runtime
    /// to each route while keeping the matching order.
    pub fn map<U>(self, mut f: impl FnMut(usize, Route) -> U) -> Router<U> {
        Router {
            order: self.order,
            routes: self
                .routes
                .into_iter()
                .enumerate()
                .map(|(i, r)| f(i, r))
                .collect(),
        }
    }
}

impl<T: AsRef<Route>> Router<T> {
    /// Pick the route for a host (port stripped, any case), a path with its query, a method
    /// and headers: its index in `routes`.
    pub fn select(
        &self,
        host: Option<&str>,
        path_and_query: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<usize> {
        let line = Line::parse(path_and_query, method);
        self.select_match(host, &line, headers)
            .map(|(route, _)| route)
    }

    /// [`Router::select`], with which of the route's Gateway API matches matched
    /// ([`Decision::matched`]).
    fn select_match(
        &self,
        host: Option<&str>,
        line: &Line<'_>,
        headers: &HeaderMap,
    ) -> Option<(usize, u16)> {
        let (path, query, method) = (line.path, line.query, line.method);
        self.order.iter().find_map(|e| {
            let r = self.routes[e.route as usize].as_ref();
            let hit = match &r.config.kube {
                None => r.matches(host, path),
                Some(k) => {
                    let host_ok = match k.hosts.get(usize::from(e.host)) {
                        None => true,
                        Some(m) => host.is_some_and(|h| m.matches(h)),
                    };
                    host_ok
                        && request_matches(
                            &k.matches[usize::from(e.matcher)],
                            path,
                            query,
                            method,
                            headers,
                        )
                }
            };
            hit.then_some((e.route as usize, e.matcher))
        })
    }

    /// The full decision for a GET with no known client address (`client_ip` rules do not
    /// match): route, then version.
    pub fn decide<R: Rng + ?Sized>(
        &self,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
        rng: &mut R,
    ) -> Option<Decision<'_, T>> {
        self.decide_for(host, &Line::parse(path, &Method::GET), headers, None, rng)
    }

    /// The full decision for a request from `client` (the address `client_ip` rules test).
    pub fn decide_for<R: Rng + ?Sized>(
        &self,
        host: Option<&str>,
        line: &Line<'_>,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        rng: &mut R,
    ) -> Option<Decision<'_, T>> {
        let (i, matched) = self.select_match(host, line, headers)?;
        let route = &self.routes[i];
        let (version, reason, assign) = route.as_ref().decide(headers, client, rng);
        Some(Decision {
            route,
            version,
            reason,
            assign,
            matched,
        })
    }
}

impl AsRef<Route> for Route {
    fn as_ref(&self) -> &Route {
        self
    }
}

impl Route {
    pub fn new(config: RouteConfig) -> Route {
        let mut table_bounds = Vec::with_capacity(config.versions.len());
        let mut table_versions = Vec::with_capacity(config.versions.len());
        let mut upper = 0u32;
        for (i, v) in config.versions.iter().enumerate().skip(1) {
            if v.weight.0 > 0 {
                upper += v.weight.0;
                table_bounds.push(upper);
                table_versions.push(i);
            }
        }
        table_bounds.push(BUCKETS);
        table_versions.push(0);
        let mut cookie_names: Vec<CookieName> = Vec::new();
        let mut add = |n: &str| {
            if !cookie_names.iter().any(|c| c.name == n) {
                cookie_names.push(CookieName {
                    name: n.to_string(),
                    finder: memchr::memmem::Finder::new(n.as_bytes()).into_owned(),
                });
            }
        };
        let mirrors = config.mirrors.iter().chain(config.mirror.iter());
        let conditions = config
            .rules
            .iter()
            .flat_map(|r| &r.conditions)
            .chain(mirrors.flat_map(|m| &m.conditions));
        for c in conditions {
            if let Condition::Cookie { name, .. } = c {
                add(name);
            }
        }
        if let Some(s) = &config.sticky {
            if let StickyKey::Cookie(c) = &s.key {
                add(c);
            }
            if let Some(c) = &s.assign_cookie {
                add(c);
            }
        }
        let sticky_seed = fnv(FNV_OFFSET, config.name.as_bytes().iter().chain(&[0xff]));
        Route {
            config,
            table_bounds,
            table_versions,
            cookie_names,
            sticky_seed,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Do all of `conditions` hold for this request (a mirror's `when`)?
    pub fn conditions_hold(
        &self,
        conditions: &[Condition],
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> bool {
        let mut jar = Jar::new(&self.cookie_names);
        conditions
            .iter()
            .all(|c| condition_matches(c, headers, client, &mut jar))
    }

    pub fn timeouts(&self) -> Timeouts {
        self.config.timeouts
    }

    /// Effective weight of each version, in config order.
    pub fn weights(&self) -> impl Iterator<Item = (&str, Weight)> {
        self.config
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.weight))
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.config.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(m), Some(req)) => m.matches(req),
        };
        host_ok && path.starts_with(self.config.path_prefix.as_str())
    }

    /// The bucket range each version owns, in table order (non-primary versions from bucket 0
    /// up in listed order, then the primary): the one layout that routing uses and that
    /// `canaryd route` prints. Versions that own no bucket are left out.
    pub fn bucket_ranges(&self) -> impl Iterator<Item = (usize, std::ops::Range<u32>)> + '_ {
        let starts = std::iter::once(0).chain(self.table_bounds.iter().copied());
        starts
            .zip(self.table_bounds.iter().copied())
            .zip(self.table_versions.iter().copied())
            .filter(|((lo, hi), _)| lo < hi)
            .map(|((lo, hi), v)| (v, lo..hi))
    }

    /// Version for a bucket in `0..BUCKETS`.
    pub fn version_for_bucket(&self, bucket: u32) -> usize {
        let i = self
            .table_bounds
            .iter()
            .position(|&b| bucket < b)
            .unwrap_or(self.table_bounds.len() - 1);
        self.table_versions[i]
    }

    /// Rules → sticky → weights. Returns (version index, reason, fresh sticky id to assign).
    pub fn decide<R: Rng + ?Sized>(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        rng: &mut R,
    ) -> (usize, Reason, Option<u128>) {
        let mut jar = Jar::new(&self.cookie_names);
        if let Some(i) = self
            .config
            .rules
            .iter()
            .position(|r| rule_matches(r, headers, client, &mut jar))
        {
            return (self.config.rules[i].to, Reason::Rule(i), None);
        }
        if let Some(sticky) = &self.config.sticky {
            let key = match &sticky.key {
                StickyKey::Cookie(c) => jar.get(headers, c),
                StickyKey::Header(h) => headers.get(h).map(|v| v.as_bytes()),
            };
            let key = key.or_else(|| {
                sticky
                    .assign_cookie
                    .as_deref()
                    .and_then(|c| jar.get(headers, c))
            });
            if let Some(key) = key {
                let bucket = finish_bucket(fnv(self.sticky_seed, key));
                return (
                    self.version_for_bucket(bucket),
                    Reason::Sticky { bucket },
                    None,
                );
            }
            if sticky.assign_cookie.is_some() {
                // New user: mint an id and route by it now, so this first response and every
                // later request carrying the cookie land on the same version.
                let id: u128 = rng.random();
                let bucket = finish_bucket(fnv(self.sticky_seed, &id_hex(id)));
                return (
                    self.version_for_bucket(bucket),
                    Reason::Sticky { bucket },
                    Some(id),
                );
            }
        }
        let draw = rng.random_range(0..BUCKETS);
        (self.version_for_bucket(draw), Reason::Weight { draw }, None)
    }
}

/// The text form of an assigned sticky id, as sent in the cookie (32 hex digits).
pub fn format_id(id: u128) -> String {
    String::from_utf8_lossy(&id_hex(id)).into_owned()
}

/// [`format_id`] on the stack: 32 lowercase hex digits, zero-padded (`{id:032x}`). Every new
/// user's first request hashes it and sends it in a cookie; through `core::fmt` that cost
/// ~1k instructions and an allocation each time.
pub fn id_hex(id: u128) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((id >> (4 * (31 - i))) & 0xf) as usize];
    }
    out
}

fn rule_matches<'h>(
    rule: &RuleConfig,
    headers: &'h HeaderMap,
    client: Option<IpAddr>,
    jar: &mut Jar<'h, '_>,
) -> bool {
    rule.conditions
        .iter()
        .all(|c| condition_matches(c, headers, client, jar))
}

fn condition_matches<'h>(
    cond: &Condition,
    headers: &'h HeaderMap,
    client: Option<IpAddr>,
    jar: &mut Jar<'h, '_>,
) -> bool {
    match cond {
        Condition::ClientIp(nets) => client.is_some_and(|ip| {
            // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
            let ip = ip.to_canonical();
            nets.iter().any(|n| n.contains(&ip))
        }),
        Condition::Header { name, test } => match test {
            ValueTest::Present(want) => headers.contains_key(name) == *want,
            ValueTest::Equals(_) | ValueTest::Matches(_) => header_matches(headers, name, test),
        },
        Condition::Cookie { name, test } => jar
            .get(headers, name)
            .is_some_and(|v| value_matches(test, v)),
    }
}

/// Does a request satisfy every condition of a Gateway API match?
fn request_matches(
    m: &RequestMatch,
    path: &str,
    query: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
) -> bool {
    m.path.matches(path)
        && m.method.as_ref().is_none_or(|want| want == method)
        && m.headers
            .iter()
            .all(|(name, test)| header_matches(headers, name, test))
        && m.query.iter().all(|(name, test)| {
            query_param(query, name).is_some_and(|v| value_matches(test, v.as_bytes()))
        })
}

/// Does any value of header `name` pass `test`?
fn header_matches(headers: &HeaderMap, name: &http::HeaderName, test: &ValueTest) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| value_matches(test, v.as_bytes()))
}

/// The first value of query parameter `name` (compared as sent, case-sensitive).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((n, v)) if n == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

fn value_matches(test: &ValueTest, value: &[u8]) -> bool {
    match test {
        ValueTest::Equals(e) => value == e.as_bytes(),
        ValueTest::Matches(re) => re.is_match(value),
        ValueTest::Present(p) => *p,
    }
}

/// Value of the first cookie named `name` across all `Cookie` headers, in order; no allocation.
/// Pairs are split on `;`, names and values lose surrounding whitespace, values lose optional
/// surrounding double quotes (RFC 6265), and pairs without `=` are skipped.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    find_cookie(headers, &memchr::memmem::Finder::new(name.as_bytes()))
}

/// [`cookie`] with the name's searcher built by the caller. Rather than splitting every pair,
/// it searches for the name and checks that the hit is a whole pair name: only `;`, the start
/// and whitespace before it, only whitespace and then `=` after it. (Cookie names are tokens,
/// so a name cannot straddle a `;` or `=`.) Most requests' cookie headers do not contain the
/// name at all, and the SIMD search says so without looking at each pair.
fn find_cookie<'a>(
    headers: &'a HeaderMap,
    finder: &memchr::memmem::Finder<'_>,
) -> Option<&'a [u8]> {
    let len = finder.needle().len();
    for h in headers.get_all(COOKIE) {
        let bytes = h.as_bytes();
        let mut from = 0;
        while let Some(hit) = finder.find(&bytes[from..]) {
            let start = from + hit;
            from = start + 1;
            if !matches!(bytes[..start].trim_ascii_end().last(), None | Some(b';')) {
                continue;
            }
            let after = bytes[start + len..].trim_ascii_start();
            let Some(value) = after.strip_prefix(b"=") else {
                continue;
            };
            let end = memchr::memchr(b';', value).unwrap_or(value.len());
            let value = value[..end].trim_ascii();
            return Some(
                value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value),
            );
        }
    }
    None
}

/// Stable hash of (route, key) into `0..BUCKETS`.
///
/// This function is part of the product contract: changing it reshuffles every sticky user
/// and makes replicas running different releases disagree. FNV-1a over the bytes (with a
/// separator so ("ab","c") ≠ ("a","bc")), then the murmur3 64-bit finalizer for avalanche so
/// the modulo sees well-mixed bits.
pub fn sticky_bucket(route: &str, key: &[u8]) -> u32 {
    finish_bucket(fnv(
        FNV_OFFSET,
        route.as_bytes().iter().chain(&[0xffu8]).chain(key),
    ))
}

/// The murmur3 finalizer, then the bucket.
fn finish_bucket(mut h: u64) -> u32 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(BUCKETS)) as u32
}

/// Host of a request without port: the URI authority (HTTP/2 `:authority`, absolute-form
/// HTTP/1) wins over the `Host` header, as RFC 9112 §3.2.2 requires.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    host_of(uri, headers.get(http::header::HOST))
}

/// [`request_host`] with the `Host` header already looked up.
pub fn host_of<'a>(uri: &'a http::Uri, host: Option<&'a HeaderValue>) -> Option<&'a str> {
    if let Some(a) = uri.authority() {
        return Some(a.host());
    }
    Some(strip_port(host?.to_str().ok()?))
}

fn strip_port(h: &str) -> &str {
    split_port(h).0
}

/// A `Host` value split into the host (an IPv6 address keeps its brackets) and the digits of
/// its port, if it names one.
pub(crate) fn split_port(h: &str) -> (&str, Option<&str>) {
    if h.starts_with('[') {
        // [v6]:port → [v6], port
        return match h.find(']') {
            Some(i) => (&h[..=i], h[i + 1..].strip_prefix(':')),
            None => (h, None),
        };
    }
    match h.rfind(':') {
        Some(i) if h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => (&h[..i], Some(&h[i + 1..])),
        _ => (h, None),
    }
}

#[cfg(test)]
mod tests;
