//! The resources that outlive a reload: upstream clients (by connect timeout and upstream
//! settings), our HTTP/1.1 pools (by connect timeout and endpoint), endpoint health and
//! "version down" flags (by route, version and endpoint) and the running active health
//! checks. Each snapshot build asks for what its config names; whatever the new config no
//! longer names is dropped when the build finishes, so an endpoint that stays keeps its warm
//! connections, its ejection and its health-check verdict across reloads.

use super::health::{EndpointHealth, check_loop};
use super::pool::Pool;
use super::{EndpointRt, Upstream, UpstreamClient, VersionRt};
use crate::config::{
    HealthCheck, Protocol, RouteConfig, Upstream as UpstreamConfig, VersionConfig,
};
use crate::metrics::Metrics;
use http::HeaderValue;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type HealthKey = (String, String, String);

/// See the module documentation.
pub struct Registry {
    clients: HashMap<(Duration, UpstreamConfig), UpstreamClient>,
    health: HashMap<HealthKey, Arc<EndpointHealth>>,
    /// "No endpoint available" flags by (route, version), so a flip is logged once.
    down: HashMap<(String, String), Arc<AtomicBool>>,
    pools: HashMap<(Duration, String), Arc<Pool>>,
    /// Running active health checks and the settings they were started with.
    checks: HashMap<HealthKey, (HealthCheck, UpstreamConfig, tokio::task::AbortHandle)>,
    /// Per-core workers serving requests: each pool keeps an idle list per worker.
    workers: usize,
    /// What the build in progress asked for.
    live_health: HashSet<HealthKey>,
    live_pools: HashSet<(Duration, String)>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for (_, _, task) in self.checks.values() {
            task.abort();
        }
    }
}

impl Registry {
    pub fn new(workers: usize) -> Registry {
        Registry {
            clients: HashMap::new(),
            health: HashMap::new(),
            down: HashMap::new(),
            pools: HashMap::new(),
            checks: HashMap::new(),
            workers,
            live_health: HashSet::new(),
            live_pools: HashSet::new(),
        }
    }

    /// Start building a snapshot: forget what the previous build asked for.
    pub fn begin(&mut self) {
        self.live_health.clear();
        self.live_pools.clear();
    }

    /// The runtime of version `v` of `route`, reusing what an earlier snapshot had. Fails
    /// only when the version's upstream TLS settings cannot be used.
    pub fn version(
        &mut self,
        route: &RouteConfig,
        v: &VersionConfig,
        primary: bool,
        metrics: &Arc<Metrics>,
    ) -> Result<VersionRt, String> {
        let connect = route.timeouts.connect;
        let client = self.client(connect, &v.upstream)?;
        let pooled = v.upstream.protocol == Protocol::Http1 && v.upstream.tls.is_none();
        let endpoints = v
            .endpoints
            .iter()
            .map(|e| {
                let key = (route.name.clone(), v.name.clone(), e.to_string());
                self.live_health.insert(key.clone());
                let health = self
                    .health
                    .entry(key)
                    .or_insert_with(|| {
                        Arc::new(EndpointHealth::new(format!(
                            "{}/{}/{e}",
                            route.name, v.name
                        )))
                    })
                    .clone();
                let pool = pooled.then(|| {
                    let key = (connect, e.to_string());
                    self.live_pools.insert(key.clone());
                    self.pools
                        .entry(key)
                        .or_insert_with(|| {
                            Arc::new(Pool::new(e.authority.clone(), connect, self.workers))
                        })
                        .clone()
                });
                EndpointRt {
                    authority: e.authority.clone(),
                    health,
                    pool,
                }
            })
            .collect();
        let down = self
            .down
            .entry((route.name.clone(), v.name.clone()))
            .or_default()
            .clone();
        let upstream = Upstream {
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
        };
        let nginx = route.kube.as_ref().and_then(|k| {
            let n = k.nginx.as_ref()?;
            let (service, canary) = route
                .versions
                .iter()
                .position(|x| x.name == v.name)
                .and_then(|i| n.services.get(i))?;
            Some(crate::metrics::nginx::NginxLabels {
                namespace: n.namespace.clone(),
                ingress: n.ingress.clone(),
                service: service.clone(),
                canary: canary.clone(),
                path: n.path.clone(),
            })
        });
        let vm = Arc::new(metrics.version_with(&route.name, &v.name, nginx));
        let version = VersionRt::new(&v.name, primary, vm, upstream, endpoints, down);
        version.metrics.set_unavailable(version.unavailable());
        Ok(version)
    }

    /// The build succeeded with these routes: drop what it no longer names, and start or stop
    /// active health checks to match.
    pub fn finish<'a>(&mut self, routes: impl Iterator<Item = (&'a RouteConfig, &'a [VersionRt])>) {
        let live = std::mem::take(&mut self.live_health);
        self.health.retain(|k, _| live.contains(k));
        self.down
            .retain(|(r, v), _| live.iter().any(|k| &k.0 == r && &k.1 == v));
        let live_pools = std::mem::take(&mut self.live_pools);
        self.pools.retain(|k, _| live_pools.contains(k));
        self.sync_checks(routes);
    }

    /// Start the active health checks the new config asks for and stop the ones it no longer
    /// does; a check whose settings did not change keeps running (and its verdict stands).
    /// Without a Tokio runtime (unit tests of `State`) nothing is started.
    fn sync_checks<'a>(
        &mut self,
        routes: impl Iterator<Item = (&'a RouteConfig, &'a [VersionRt])>,
    ) {
        let mut wanted: HashMap<HealthKey, (HealthCheck, UpstreamConfig, &VersionRt, &EndpointRt)> =
            HashMap::new();
        for (rc, versions) in routes {
            let Some(check) = &rc.health_check else {
                continue;
            };
            for (vc, v) in rc.versions.iter().zip(versions) {
                for e in &v.endpoints {
                    wanted.insert(
                        (rc.name.clone(), v.name.clone(), e.authority.to_string()),
                        (check.clone(), vc.upstream.clone(), v, e),
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
        for (key, (check, up, v, e)) in wanted {
            if self.checks.contains_key(&key) {
                continue;
            }
            let uri = http::Uri::builder()
                .scheme(v.upstream.scheme.clone())
                .authority(e.authority.clone())
                .path_and_query(check.path.as_str())
                .build();
            let (Ok(uri), Ok(host)) = (uri, HeaderValue::from_str(e.authority.as_str())) else {
                continue;
            };
            let task = rt.spawn(check_loop(
                e.health.clone(),
                v.metrics.unavailable_gauge(),
                check.clone(),
                v.upstream.client.clone(),
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
        up: &UpstreamConfig,
    ) -> Result<UpstreamClient, String> {
        let key = (connect_timeout, up.clone());
        if let Some(c) = self.clients.get(&key) {
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
        self.clients.insert(key, client.clone());
        Ok(client)
    }
}
