//! canaryd: a traffic-splitting reverse proxy for progressive delivery.
//!
//! # Layout
//! - [`config`]: YAML → raw serde types → validated [`config::Config`] (every error names its field).
//! - [`router`]: the pure routing decision: host/path → route; rules → sticky → weights → version.
//! - [`state`]: the current [`state::Snapshot`] in one `ArcSwap`, and the upstream client pools.
//! - [`proxy`]: the request path (phases listed there) from downstream request to response.
//! - [`health`]: passive outlier detection, active health checks, the endpoint pick.
//! - [`h1guard`]: refuses HTTP/1 requests with both Content-Length and Transfer-Encoding.
//! - [`headers`]: hop-by-hop stripping and `X-Forwarded-*`.
//! - [`error`]: every request failure and its single mapping to a status code.
//! - [`body`]: the response body type (streamed upstream body or a small fixed one).
//! - [`tls`]: rustls termination (SNI, ALPN, hot certificate reload) and upstream TLS configs.
//! - [`server`]: listeners, connection serving (HTTP/1.1 + h2c on one port), graceful drain.
//! - [`analysis`]: sliding-window success rate and latency per version; canary verdicts.
//! - [`pool`]: our connection pool for clear-text HTTP/1.1 upstreams.
//! - [`metrics`]: Prometheus metrics; per-version handles resolved per snapshot, lock-free histogram.
//! - [`control`]: reloads and runtime overrides composed into one config; reload status. Typed
//!   operations and errors, no JSON or status codes.
//! - [`watch`]: reload triggers: directory watch with debounce, periodic re-read, SIGHUP.
//! - [`admin`]: admin listener: `/healthz`, `/readyz`, `/metrics`, JSON API under `/api/v1`; reads
//!   requests into control's typed arguments, maps every failure to a status in one match.
//! - [`cli`]: what `canaryd check` and `canaryd route` print.
//! - [`demo`]: `canaryd demo`: two demo backends and the proxy on built-in defaults.
#![forbid(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod router;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod watch;
