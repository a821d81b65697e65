//! Runtime state shared by every connection: the current [`Snapshot`] behind one `ArcSwap`,
//! and the pooled upstream clients that outlive snapshots.
//!
//! A request loads the snapshot once and finishes on it, so it never mixes two configs.
//! Applying a config builds a whole new snapshot and swaps it in; upstream pools are keyed by
//! connect timeout and endpoint, so endpoints that did not change keep their warm connections.

use crate::config::Config;
use crate::metrics::{Metrics, VersionMetrics};
use crate::router::Router;
use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pooled HTTP/1.1 client to upstreams. The pool inside is keyed by endpoint authority.
pub type UpstreamClient = Client<HttpConnector, Incoming>;

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
    /// Client whose connector carries this route's connect timeout.
    pub client: UpstreamClient,
    /// Parallel to the route's versions.
    pub versions: Vec<VersionRuntime>,
}

#[derive(Debug)]
pub struct VersionRuntime {
    /// Pre-built `x-canaryd-version` value so responses need no formatting.
    pub header_value: HeaderValue,
    /// Round-robin position over the version's endpoints.
    rr: AtomicUsize,
    /// Metric handles resolved when the snapshot was built.
    pub metrics: VersionMetrics,
}

impl VersionRuntime {
    /// Next endpoint index in round-robin order.
    pub fn next_endpoint(&self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            self.rr.fetch_add(1, Ordering::Relaxed) % n
        }
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
    by_connect_timeout: HashMap<Duration, UpstreamClient>,
    last_generation: u64,
}

impl State {
    pub fn new(config: Config) -> State {
        let metrics = Arc::new(Metrics::new());
        let mut clients = Clients {
            by_connect_timeout: HashMap::new(),
            last_generation: 0,
        };
        let first = clients.build(config, &metrics);
        publish(&metrics, &first);
        State {
            snapshot: ArcSwap::from_pointee(first),
            clients: Mutex::new(clients),
            metrics,
            draining: AtomicBool::new(false),
        }
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
    pub fn apply(&self, config: Config) -> u64 {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let snap = clients.build(config, &self.metrics);
        let generation = snap.generation;
        publish(&self.metrics, &snap);
        self.snapshot.store(Arc::new(snap));
        generation
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
    fn build(&mut self, config: Config, metrics: &Arc<Metrics>) -> Snapshot {
        self.last_generation += 1;
        let router = Router::new(&config);
        let routes = router
            .routes
            .iter()
            .map(|r| RouteRuntime {
                client: self.client(r.timeouts().connect),
                versions: r
                    .config
                    .versions
                    .iter()
                    .map(|v| VersionRuntime {
                        header_value: HeaderValue::from_str(&v.name)
                            .expect("version names are validated to [a-z0-9_-]"),
                        rr: AtomicUsize::new(0),
                        metrics: metrics.version(r.name(), &v.name),
                    })
                    .collect(),
            })
            .collect();
        Snapshot {
            generation: self.last_generation,
            config: Arc::new(config),
            router,
            routes,
        }
    }

    /// The shared client for a connect timeout, created on first use. Kept across reloads so
    /// connection pools survive them.
    fn client(&mut self, connect_timeout: Duration) -> UpstreamClient {
        self.by_connect_timeout
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(connect_timeout));
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .build(connector)
            })
            .clone()
    }
}
