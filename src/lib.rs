//! canaryd: a traffic-splitting reverse proxy for progressive delivery.
//!
//! # Layout
//! Folders are layers: each imports only from the ones listed after it (no import circles
//! between modules; see docs/lifecycle.md for the request path).
//! - [`server`]: listeners, connection serving (HTTP/1.1 + h2c on one port, TLS), per-core
//!   workers, graceful drain; [`server::h1guard`] refuses ambiguous HTTP/1 framing.
//! - [`admin`]: admin listener: `/healthz`, `/readyz`, `/metrics`, JSON API under `/api/v1`;
//!   reads requests into control's typed arguments, maps every failure to a status in one match.
//! - [`series`]: the last 15 minutes of every route, one point per analysis slot, read from
//!   the analysis windows by a sampler (the dashboard's charts and `GET .../series`).
//! - [`control`]: reloads and runtime overrides composed into one config and applied as a new
//!   snapshot; typed operations and errors, no JSON or status codes. [`control::watch`]: reload
//!   triggers (directory watch with debounce, periodic re-read, SIGHUP).
//! - [`proxy`]: the request path as named phases over a per-request context (route → pick →
//!   rewrite request → send → rewrite response → record), the response body, gRPC accounting,
//!   hop-by-hop and `X-Forwarded-*` headers.
//! - [`state`]: the current [`state::Snapshot`] in one `ArcSwap`: one tree of routes → versions
//!   → endpoints.
//! - [`upstream`]: versions and endpoints at run time, the request bodies sent upstream, our
//!   HTTP/1.1 pool, outlier detection and health checks, and the registry of what outlives a
//!   reload.
//! - [`router`]: the pure routing decision: host/path → route; rules → sticky → weights → version.
//! - [`metrics`]: Prometheus metrics; per-version handles resolved per snapshot, lock-free histogram.
//! - [`analysis`]: sliding-window success rate and latency per version; canary verdicts.
//! - [`error`]: every request failure, who is at fault, and its single mapping to a status.
//! - [`tls`]: rustls termination (SNI, ALPN, hot certificate reload) and upstream TLS configs.
//! - [`config`]: YAML → raw serde types → validated [`config::Config`] (every error names its field).
//! - [`hash`]: FNV-1a, the stable hash of sticky buckets and state-file fingerprints.
//! - [`cli`]: what `canaryd check` and `canaryd route` print; [`demo`]: `canaryd demo`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod hash;
pub mod k8s;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod rollout;
pub mod router;
pub mod series;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
