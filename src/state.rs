//! Runtime state shared by every connection: the current [`Snapshot`] behind one `ArcSwap`.
//!
//! A snapshot is one tree: routes (in the router, which orders them for matching), each with
//! its versions, each with its endpoints. A request loads the snapshot once and finishes on
//! it, so it never mixes two configs. Applying a config builds a whole new tree and swaps it
//! in; what must outlive the swap (clients, pools, health) comes from the upstream
//! [`Registry`], so endpoints that did not change keep their warm connections.

use crate::config::{Config, ConfigError, FieldError, RouteConfig};
use crate::metrics::{DownstreamCounters, Metrics};
use crate::router::{Route, Router};
use crate::upstream::VersionRt;
use crate::upstream::registry::Registry;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One compiled config generation. Immutable except for counters.
#[derive(Debug)]
pub struct Snapshot {
    /// Monotonic, starting at 1 for the config the process started with.
    pub generation: u64,
    /// The validated config this snapshot was built from (for the admin API and `route`).
    pub config: Arc<Config>,
    /// The routes, in config order, with the order they are matched in.
    pub router: Router<RouteRt>,
}

impl Snapshot {
    /// The routes in config order.
    pub fn routes(&self) -> &[RouteRt] {
        &self.router.routes
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<&RouteRt> {
        self.routes().iter().find(|r| r.route.name() == name)
    }
}

/// One route of a snapshot: its routing tables and its versions.
#[derive(Debug)]
pub struct RouteRt {
    /// The pure routing part (config, bucket table, cookie searchers).
    pub route: Route,
    /// In config order: the first is the primary.
    pub versions: Vec<VersionRt>,
    /// Requests of this route in flight, and how many of them are retrying: the retry budget.
    pub active: AtomicUsize,
    pub retrying: AtomicUsize,
    /// Client failures on this route: counted here, never against a version.
    pub downstream: DownstreamCounters,
    /// Its mirroring, when it has a mirror (the file's or a runtime one).
    pub mirror: Option<Arc<crate::mirror::MirrorRt>>,
}

impl AsRef<Route> for RouteRt {
    fn as_ref(&self) -> &Route {
        &self.route
    }
}

impl RouteRt {
    pub fn config(&self) -> &RouteConfig {
        &self.route.config
    }

    pub fn name(&self) -> &str {
        self.route.name()
    }

    /// Why version `v` of a Kubernetes route cannot serve, if it cannot (or has no endpoint
    /// to try at all).
    pub fn unservable(&self, v: usize) -> Option<crate::config::Unservable> {
        let k = self.route.config.kube.as_ref()?;
        k.unservable.get(v).copied().flatten().or_else(|| {
            self.versions[v]
                .endpoints
                .is_empty()
                .then_some(crate::config::Unservable::NoEndpoints)
        })
    }

    /// Endpoint for an attempt at `version` (not endpoint `skip`, which just failed). Skips
    /// ejected and unhealthy endpoints; when the version has none left and the route has
    /// `fallback`, the primary serves instead (counted on the version that could not). When
    /// nothing is available at all, it tries anyway rather than fail without trying (the
    /// "panic mode" of Envoy): ejection is a guess, a request that might succeed is not
    /// refused.
    pub fn choose<'a>(&'a self, v: &'a VersionRt, skip: Option<usize>) -> (&'a VersionRt, usize) {
        let rc = self.config();
        if let Some(ei) = v.pick_endpoint(skip) {
            v.note_down(false, &rc.name, rc.fallback);
            return (v, ei);
        }
        if skip.is_none() || v.pick(0, None).is_none() {
            v.note_down(true, &rc.name, rc.fallback);
        }
        if rc.fallback && !v.primary {
            let primary = &self.versions[0];
            if let Some(ei) = primary.pick_endpoint(None) {
                v.metrics.fallback();
                return (primary, ei);
            }
        }
        match skip {
            Some(s) => (v, (s + 1) % v.endpoints.len()),
            None => (v, v.next_endpoint()),
        }
    }
}

/// Everything connections share.
pub struct State {
    snapshot: ArcSwap<Snapshot>,
    /// What outlives snapshots. The mutex also serialises `apply`, so generations are stored
    /// in the order they are numbered.
    registry: Mutex<Built>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts: `/readyz` answers 503 so load balancers stop sending.
    draining: AtomicBool,
    /// A fleet controller has given this replica the current rollout state.
    synced: AtomicBool,
    /// `canaryd run --kubernetes` before its first routes from the cluster are applied.
    waiting_for_kubernetes: AtomicBool,
}

struct Built {
    registry: Registry,
    last_generation: u64,
    /// Routes' mirroring by route name, kept across snapshots (and after a route's mirror
    /// stops, for its diffs) while the route exists.
    mirrors: std::collections::HashMap<String, Arc<crate::mirror::MirrorRt>>,
}

impl State {
    /// Build the first snapshot. Fails only on upstream TLS files that cannot be used.
    pub fn new(config: Config) -> Result<State, ConfigError> {
        State::with_workers(config, 1)
    }

    /// [`State::new`] for `workers` per-core workers (see [`crate::upstream::pool::Pool`]).
    pub fn with_workers(config: Config, workers: usize) -> Result<State, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let mut built = Built {
            registry: Registry::new(workers),
            last_generation: 0,
            mirrors: std::collections::HashMap::new(),
        };
        let first = built.build(config, &metrics)?;
        publish(&metrics, &first);
        Ok(State {
            snapshot: ArcSwap::from_pointee(first),
            registry: Mutex::new(built),
            metrics,
            draining: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            waiting_for_kubernetes: AtomicBool::new(false),
        })
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The mirroring of `route`, also after its mirror stopped (its last diffs).
    pub fn mirror(&self, route: &str) -> Option<Arc<crate::mirror::MirrorRt>> {
        let built = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        built.mirrors.get(route).cloned()
    }

    /// A fleet controller verified every rollout layer it drives here (`PUT /api/v1/synced`).
    pub fn set_synced(&self) {
        if !self.synced.swap(true, Ordering::SeqCst) {
            tracing::info!("synced by the fleet controller");
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// `/readyz` answers 503 until [`State::kubernetes_synced`]: a pod that just started must
    /// not take traffic before it knows the cluster's routes.
    pub fn wait_for_kubernetes(&self) {
        self.waiting_for_kubernetes.store(true, Ordering::SeqCst);
    }

    /// The cluster's routes are applied (every watched kind was listed).
    pub fn kubernetes_synced(&self) {
        if self.waiting_for_kubernetes.swap(false, Ordering::SeqCst) {
            tracing::info!("first sync with the Kubernetes API applied; ready");
        }
    }

    /// Why `/readyz` answers 503, if it does: shutting down, or waiting for the fleet
    /// controller (`proxy.wait_for_controller`).
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining\n")
        } else if self.waiting_for_kubernetes.load(Ordering::SeqCst) {
            Some("waiting for the first sync with the Kubernetes API (--kubernetes)\n")
        } else if self.snapshot().config.proxy.wait_for_controller && !self.is_synced() {
            Some(
                "waiting for the fleet controller to sync the rollout state (proxy.wait_for_controller)\n",
            )
        } else {
            None
        }
    }

    /// The snapshot in force now. Hold the `Arc` for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Build a snapshot from a validated config and swap it in; returns its generation.
    /// On error (an upstream CA bundle that cannot be read) nothing changes.
    pub fn apply(&self, config: Config) -> Result<u64, ConfigError> {
        let mut built = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let snap = built.build(config, &self.metrics)?;
        let generation = snap.generation;
        publish(&self.metrics, &snap);
        self.snapshot.store(Arc::new(snap));
        Ok(generation)
    }
}

/// Export a new snapshot's generation and effective weights.
fn publish(metrics: &Metrics, snap: &Snapshot) {
    metrics.set_generation(snap.generation);
    metrics.set_weights(snap.routes().iter().map(|r| &r.route).flat_map(|r| {
        r.weights()
            .enumerate()
            .map(move |(i, (v, w))| (r.name(), v, w.percent(), i == 0))
    }));
}

/// The mirroring of route `rc` when it has a mirror: the one it had, unless its concurrency
/// or queue changed (copies in flight keep the old one until they finish).
fn mirror_rt(
    mirrors: &mut std::collections::HashMap<String, Arc<crate::mirror::MirrorRt>>,
    rc: &RouteConfig,
    metrics: &Arc<Metrics>,
) -> Option<Arc<crate::mirror::MirrorRt>> {
    let first = rc.mirrors.first().or(rc.mirror.as_ref())?;
    // The file's settings govern the route's mirroring; runtime mirrors share them.
    let (max_in_flight, queue) = rc
        .mirror
        .as_ref()
        .map_or((first.max_in_flight, first.queue), |m| {
            (m.max_in_flight, m.queue)
        });
    for m in rc.mirrors.iter().chain(rc.mirror.iter()) {
        metrics.mirror.declare(&rc.name, &rc.versions[m.to].name);
    }
    let current = mirrors
        .get(&rc.name)
        .filter(|m| m.max_in_flight == max_in_flight && m.queue == queue);
    if let Some(m) = current {
        return Some(m.clone());
    }
    let m = Arc::new(crate::mirror::MirrorRt::new(
        &rc.name,
        max_in_flight,
        queue,
        metrics.clone(),
    ));
    mirrors.insert(rc.name.clone(), m.clone());
    Some(m)
}

impl Built {
    fn build(&mut self, config: Config, metrics: &Arc<Metrics>) -> Result<Snapshot, ConfigError> {
        let mut errors = Vec::new();
        let registry = &mut self.registry;
        registry.begin();
        let mirrors = &mut self.mirrors;
        // `Router::new` keeps routes in config order, so `ri` is the config index too.
        let router = Router::new(&config).map(|ri, route| {
            let rc = &route.config;
            let mut versions = Vec::with_capacity(rc.versions.len());
            for (vi, v) in rc.versions.iter().enumerate() {
                match registry.version(rc, v, vi == 0, metrics) {
                    Ok(v) => versions.push(v),
                    Err(message) => errors.push(FieldError {
                        field: format!("routes[{ri}].versions.{}.tls", v.name),
                        message,
                    }),
                }
            }
            let mirror = mirror_rt(mirrors, rc, metrics);
            RouteRt {
                downstream: metrics.downstream(route.name()),
                route,
                versions,
                active: AtomicUsize::new(0),
                retrying: AtomicUsize::new(0),
                mirror,
            }
        });
        // Mirrors that stopped (a rollout's, aborted) are kept for their diffs.
        self.mirrors
            .retain(|r, _| config.routes.iter().any(|rc| &rc.name == r));
        if !errors.is_empty() {
            return Err(ConfigError { errors });
        }
        registry.finish(
            router
                .routes
                .iter()
                .map(|r| (r.config(), r.versions.as_slice())),
        );
        self.last_generation += 1;
        Ok(Snapshot {
            generation: self.last_generation,
            config: Arc::new(config),
            router,
        })
    }
}
