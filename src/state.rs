//! Runtime state shared by every connection: the current [`Snapshot`] behind one `ArcSwap`,
//! and the pooled upstream clients that outlive snapshots.
//!
//! A request loads the snapshot once and finishes on it, so it never mixes two configs.
//! Applying a config builds a whole new snapshot and swaps it in; upstream pools are keyed by
//! connect timeout and endpoint, so endpoints that did not change keep their warm connections.

use crate::body::RequestBody;
use crate::config::{Config, ConfigError, FieldError, HealthCheck, Protocol, Upstream};
use crate::health::{EndpointHealth, VersionEndpoints};
use crate::metrics::{DownstreamCounters, Metrics, VersionMetrics};
use crate::pool::Pool;
use crate::router::Router;
use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pooled client to upstreams (HTTP/1.1 or HTTP/2, clear text or TLS). The pool inside is
/// keyed by scheme and endpoint authority.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One compiled config generation. Immutable except for round-robin counters.
#[derive(Debug)]
pub struct Snapshot {
    /// Monotonic, starting at 1 for the config the process started with.
    pub generation: u64,
    /// The validated config this snapshot was built from (for the admin API and `route`).
    pub config: Arc<Config>,
    pub router: Router,
    /// Parallel to `router.routes`.
    pub routes: Vec<RouteRuntime>,
}

/// Per-route runtime pieces that are not part of the pure routing decision.
#[derive(Debug)]
pub struct RouteRuntime {
    /// Parallel to the route's versions.
    pub versions: Vec<VersionRuntime>,
    /// Requests of this route in flight, and how many of them are retrying: the retry budget.
    pub active: AtomicUsize,
    pub retrying: AtomicUsize,
    /// Client failures on this route: counted here, never against a version.
    pub downstream: DownstreamCounters,
}

#[derive(Debug)]
pub struct VersionRuntime {
    /// Client for this version's protocol, TLS settings and the route's connect timeout.
    pub client: UpstreamClient,
    /// `http` or `https` for upstream request URIs.
    pub scheme: http::uri::Scheme,
    /// HTTP version of upstream requests (HTTP/2 for `protocol: h2c`).
    pub http_version: http::Version,
    /// Pre-built `x-canaryd-version` value so responses need no formatting.
    pub header_value: HeaderValue,
    /// Round-robin position over the version's endpoints.
    rr: AtomicUsize,
    /// Metric handles resolved when the snapshot was built.
    pub metrics: VersionMetrics,
    /// Health of each endpoint (parallel to the version's endpoints), shared across reloads.
    pub endpoints: VersionEndpoints,
    /// Our own pools, parallel to the endpoints, for clear-text HTTP/1.1 versions; empty
    /// for the others, which go through `client`.
    pub pools: Vec<Arc<Pool>>,
}

impl VersionRuntime {
    /// Next endpoint index in round-robin order, ignoring health.
    pub fn next_endpoint(&self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            self.rr.fetch_add(1, Ordering::Relaxed) % n
        }
    }

    /// The pool of endpoint `i`, when this version uses our HTTP/1.1 pools.
    pub fn pool(&self, i: usize) -> Option<&Arc<Pool>> {
        self.pools.get(i)
    }

    /// Next available endpoint in round-robin order (not `skip`), or `None` when every
    /// endpoint is ejected or failing its health check.
    pub fn pick_endpoint(&self, skip: Option<usize>) -> Option<usize> {
        let start = self.next_endpoint(self.endpoints.health.len());
        self.endpoints.pick(start, skip, &self.metrics)
    }
}

/// Everything connections share.
pub struct State {
    snapshot: ArcSwap<Snapshot>,
    /// Shared clients by connect timeout. The mutex also serialises `apply`, so generations
    /// are stored in the order they are numbered.
    clients: Mutex<Clients>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts: `/readyz` answers 503 so load balancers stop sending.
    draining: AtomicBool,
}

struct Clients {
    by_key: HashMap<(Duration, Upstream), UpstreamClient>,
    last_generation: u64,
    /// Endpoint health by (route, version, endpoint); kept while the endpoint stays in config.
    health: HashMap<HealthKey, Arc<EndpointHealth>>,
    /// "No endpoint available" flags by (route, version), so a flip is logged once.
    down: HashMap<(String, String), Arc<AtomicBool>>,
    /// HTTP/1.1 pools by (connect timeout, endpoint); kept while the endpoint stays in config.
    pools: HashMap<(Duration, String), Arc<Pool>>,
    /// Running active health checks and the settings they were started with.
    checks: HashMap<HealthKey, (HealthCheck, Upstream, tokio::task::AbortHandle)>,
    /// Per-core workers serving requests: each pool keeps an idle list per worker.
    workers: usize,
}

type HealthKey = (String, String, String);

impl Drop for Clients {
    fn drop(&mut self) {
        for (_, _, task) in self.checks.values() {
            task.abort();
        }
    }
}

impl State {
    /// Build the first snapshot. Fails only on upstream TLS files that cannot be used.
    pub fn new(config: Config) -> Result<State, ConfigError> {
        State::with_workers(config, 1)
    }

    /// [`State::new`] for `workers` per-core workers (see [`crate::pool::Pool`]).
    pub fn with_workers(config: Config, workers: usize) -> Result<State, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let mut clients = Clients {
            by_key: HashMap::new(),
            last_generation: 0,
            health: HashMap::new(),
            down: HashMap::new(),
            pools: HashMap::new(),
            checks: HashMap::new(),
            workers,
        };
        let first = clients.build(config, &metrics)?;
        publish(&metrics, &first);
        Ok(State {
            snapshot: ArcSwap::from_pointee(first),
            clients: Mutex::new(clients),
            metrics,
            draining: AtomicBool::new(false),
        })
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The snapshot in force now. Hold the `Arc` for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Build a snapshot from a validated config and swap it in; returns its generation.
    /// On error (an upstream CA bundle that cannot be read) nothing changes.
    pub fn apply(&self, config: Config) -> Result<u64, ConfigError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let snap = clients.build(config, &self.metrics)?;
        let generation = snap.generation;
        publish(&self.metrics, &snap);
        self.snapshot.store(Arc::new(snap));
        Ok(generation)
    }
}

/// Export a new snapshot's generation and effective weights.
fn publish(metrics: &Metrics, snap: &Snapshot) {
    metrics.set_generation(snap.generation);
    metrics.set_weights(snap.router.routes.iter().flat_map(|r| {
        r.weights()
            .enumerate()
            .map(move |(i, (v, w))| (r.name(), v, w.percent(), i == 0))
    }));
}

impl Clients {
    fn build(&mut self, config: Config, metrics: &Arc<Metrics>) -> Result<Snapshot, ConfigError> {
        let router = Router::new(&config);
        let mut routes = Vec::with_capacity(router.routes.len());
        let mut errors = Vec::new();
        let mut live: Vec<HealthKey> = Vec::new();
        let mut live_pools: Vec<(Duration, String)> = Vec::new();
        // `Router::new` keeps routes in config order, so `ri` is the config index too.
        for (ri, r) in router.routes.iter().enumerate() {
            let mut versions = Vec::with_capacity(r.config.versions.len());
            let connect = r.timeouts().connect;
            for v in &r.config.versions {
                let client = match self.client(connect, &v.upstream) {
                    Ok(c) => c,
                    Err(message) => {
                        errors.push(FieldError {
                            field: format!("routes[{ri}].versions.{}.tls", v.name),
                            message,
                        });
                        continue;
                    }
                };
                let health: Vec<Arc<EndpointHealth>> = v
                    .endpoints
                    .iter()
                    .map(|e| {
                        let key = (r.name().to_string(), v.name.clone(), e.to_string());
                        live.push(key.clone());
                        self.health
                            .entry(key)
                            .or_insert_with(|| {
                                Arc::new(EndpointHealth::new(format!(
                                    "{}/{}/{e}",
                                    r.name(),
                                    v.name
                                )))
                            })
                            .clone()
                    })
                    .collect();
                let down = self
                    .down
                    .entry((r.name().to_string(), v.name.clone()))
                    .or_default()
                    .clone();
                let pooled = v.upstream.protocol == Protocol::Http1 && v.upstream.tls.is_none();
                let pools: Vec<Arc<Pool>> = if pooled {
                    v.endpoints
                        .iter()
                        .map(|e| {
                            let key = (connect, e.to_string());
                            live_pools.push(key.clone());
                            self.pools
                                .entry(key)
                                .or_insert_with(|| {
                                    Arc::new(Pool::new(e.authority.clone(), connect, self.workers))
                                })
                                .clone()
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let vm = metrics.version(r.name(), &v.name);
                let endpoints = VersionEndpoints { health, down };
                vm.set_unavailable(endpoints.unavailable());
                versions.push(VersionRuntime {
                    pools,
                    endpoints,
                    client,
                    scheme: if v.upstream.tls.is_some() {
                        http::uri::Scheme::HTTPS
                    } else {
                        http::uri::Scheme::HTTP
                    },
                    http_version: match v.upstream.protocol {
                        Protocol::H2 => http::Version::HTTP_2,
                        Protocol::Http1 | Protocol::Auto => http::Version::HTTP_11,
                    },
                    header_value: HeaderValue::from_str(&v.name)
                        .expect("version names are validated to [a-z0-9_-]"),
                    rr: AtomicUsize::new(0),
                    metrics: vm,
                });
            }
            routes.push(RouteRuntime {
                downstream: metrics.downstream(r.name()),
                versions,
                active: AtomicUsize::new(0),
                retrying: AtomicUsize::new(0),
            });
        }
        if !errors.is_empty() {
            return Err(ConfigError { errors });
        }
        self.health.retain(|k, _| live.contains(k));
        self.pools.retain(|k, _| live_pools.contains(k));
        self.down
            .retain(|(r, v), _| live.iter().any(|k| &k.0 == r && &k.1 == v));
        self.sync_checks(&router, &routes);
        self.last_generation += 1;
        Ok(Snapshot {
            generation: self.last_generation,
            config: Arc::new(config),
            router,
            routes,
        })
    }

    /// Start the active health checks the new config asks for and stop the ones it no longer
    /// does; a check whose settings did not change keeps running (and its verdict stands).
    /// Without a Tokio runtime (unit tests of `State`) nothing is started.
    fn sync_checks(&mut self, router: &Router, routes: &[RouteRuntime]) {
        let mut wanted: HashMap<HealthKey, (HealthCheck, Upstream, usize, usize, usize)> =
            HashMap::new();
        for (ri, r) in router.routes.iter().enumerate() {
            let Some(check) = &r.config.health_check else {
                continue;
            };
            for (vi, v) in r.config.versions.iter().enumerate() {
                for (ei, e) in v.endpoints.iter().enumerate() {
                    wanted.insert(
                        (r.name().to_string(), v.name.clone(), e.to_string()),
                        (check.clone(), v.upstream.clone(), ri, vi, ei),
                    );
                }
            }
        }
        self.checks.retain(|k, (check, up, task)| {
            let keep = wanted
                .get(k)
                .is_some_and(|(c, u, ..)| c == check && u == up);
            if !keep {
                task.abort();
            }
            keep
        });
        // Endpoints without a check are healthy by definition.
        for (k, h) in &self.health {
            if !wanted.contains_key(k) {
                h.set_check_ok(true);
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for (key, (check, up, ri, vi, ei)) in wanted {
            if self.checks.contains_key(&key) {
                continue;
            }
            let vrt = &routes[ri].versions[vi];
            let endpoint = &router.routes[ri].config.versions[vi].endpoints[ei];
            let uri = http::Uri::builder()
                .scheme(vrt.scheme.clone())
                .authority(endpoint.authority.clone())
                .path_and_query(check.path.as_str())
                .build();
            let (Ok(uri), Ok(host)) = (uri, HeaderValue::from_str(endpoint.authority.as_str()))
            else {
                continue;
            };
            let task = rt.spawn(crate::health::check_loop(
                vrt.endpoints.health[ei].clone(),
                vrt.metrics.unavailable_gauge(),
                check.clone(),
                vrt.client.clone(),
                uri,
                host,
            ));
            self.checks.insert(key, (check, up, task.abort_handle()));
        }
    }

    /// The shared client for a connect timeout and upstream protocol/TLS, created on first
    /// use and kept across reloads so connection pools survive them.
    fn client(
        &mut self,
        connect_timeout: Duration,
        up: &Upstream,
    ) -> Result<UpstreamClient, String> {
        let key = (connect_timeout, up.clone());
        if let Some(c) = self.by_key.get(&key) {
            return Ok(c.clone());
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        // TLS endpoints need `https` URIs; clear text stays plain TCP through the same type.
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match &up.tls {
            Some(tls) => {
                let cfg = crate::tls::client_config(tls)?;
                let b = builder.with_tls_config(cfg).https_or_http();
                let b = match &tls.server_name {
                    Some(name) => {
                        b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
                            rustls_pki_types::ServerName::try_from(name.clone())
                                .map_err(|e| format!("server_name `{name}`: {e}"))?,
                        ))
                    }
                    None => b,
                };
                match up.protocol {
                    Protocol::Http1 => b.enable_http1().wrap_connector(http),
                    Protocol::H2 => b.enable_http2().wrap_connector(http),
                    Protocol::Auto => b.enable_all_versions().wrap_connector(http),
                }
            }
            // Never used for TLS: this client only sees `http` URIs.
            None => builder
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(http),
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if up.protocol == Protocol::H2 {
            b.http2_only(true);
        }
        let client = b.build(connector);
        self.by_key.insert(key, client.clone());
        Ok(client)
    }
}
