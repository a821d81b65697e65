//! Upstreams: where a version's requests go, and the resources that reach them.
//!
//! - [`VersionRt`]: one version of one route in a snapshot, with its client, metric handles
//!   and [`EndpointRt`]s (each an authority with its health and, for clear-text HTTP/1.1, our
//!   connection pool);
//! - [`registry`]: the resources that outlive a reload (clients, pools, health, health-check
//!   tasks), handed to each new snapshot while its endpoint stays in the config;
//! - [`pool`]: our HTTP/1.1 connection pool, and [`h1`] the exchange it runs in the request's
//!   task for requests without a body; [`health`]: outlier detection, active health
//!   checks and the endpoint pick that skips what is out of service.

pub mod body;
pub mod h1;
pub mod health;
pub mod pool;
pub mod registry;

use crate::metrics::VersionMetrics;
use body::RequestBody;
use health::EndpointHealth;
use http::HeaderValue;
use http::uri::Authority;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use pool::Pool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Pooled client to upstreams (HTTP/1.1 or HTTP/2, clear text or TLS). The pool inside is
/// keyed by scheme and endpoint authority.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// One version of a route in one snapshot.
#[derive(Debug)]
pub struct VersionRt {
    pub name: String,
    /// The route's first version: it takes what the others leave, and serves `fallback`.
    pub primary: bool,
    /// Metric handles resolved when the snapshot was built; shared with gRPC bodies that
    /// outlive the request.
    pub metrics: Arc<VersionMetrics>,
    pub upstream: Upstream,
    /// Pre-built `x-canaryd-version` value so responses need no formatting.
    pub header_value: HeaderValue,
    pub endpoints: Vec<EndpointRt>,
    /// Round-robin position over the endpoints.
    rr: AtomicUsize,
    /// True while no endpoint is available; shared across reloads so a flip is logged once.
    down: Arc<AtomicBool>,
}

/// How requests reach a version's endpoints.
#[derive(Debug)]
pub struct Upstream {
    /// Client for this version's protocol, TLS settings and the route's connect timeout
    /// (used for every endpoint that has no [`EndpointRt::pool`]).
    pub client: UpstreamClient,
    /// `http` or `https` for upstream request URIs.
    pub scheme: http::uri::Scheme,
    /// HTTP version of upstream requests (HTTP/2 for `protocol: h2c`).
    pub http_version: http::Version,
}

/// One endpoint of a version.
#[derive(Debug)]
pub struct EndpointRt {
    pub authority: Authority,
    /// Shared across reloads while the endpoint stays in the config.
    pub health: Arc<EndpointHealth>,
    /// Our pool, for clear-text HTTP/1.1 versions; `None` for the others, which go through
    /// [`Upstream::client`].
    pub pool: Option<Arc<Pool>>,
}

impl VersionRt {
    pub fn new(
        name: &str,
        primary: bool,
        metrics: Arc<VersionMetrics>,
        upstream: Upstream,
        endpoints: Vec<EndpointRt>,
        down: Arc<AtomicBool>,
    ) -> VersionRt {
        VersionRt {
            name: name.to_string(),
            primary,
            metrics,
            upstream,
            header_value: HeaderValue::from_str(name)
                .expect("version names are validated to [a-z0-9_-]"),
            endpoints,
            rr: AtomicUsize::new(0),
            down,
        }
    }

    /// Next endpoint index in round-robin order, ignoring health.
    pub fn next_endpoint(&self) -> usize {
        let n = self.endpoints.len();
        if n <= 1 {
            0
        } else {
            self.rr.fetch_add(1, Ordering::Relaxed) % n
        }
    }

    /// Next available endpoint in round-robin order (not `skip`), or `None` when every
    /// endpoint is ejected or failing its health check.
    pub fn pick_endpoint(&self, skip: Option<usize>) -> Option<usize> {
        self.pick(self.next_endpoint(), skip)
    }
}
