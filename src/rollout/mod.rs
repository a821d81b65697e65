//! Progressive rollouts built in: a route's `rollout` block walks its canary through steps
//! (weights, pauses, analysis gates, header routes), promotes it after the last one and rolls
//! it back when a gate fails.
//!
//! - [`driver`]: the async driver of one process's rollouts: ticks, measurements, layers,
//!   the state file, events;
//! - [`machine`]: the pure state machine `(state, event, now) → actions`;
//! - [`measure`]: one measurement of a gate (window checks, Prometheus, webhook judge);
//! - [`http`]: the small outbound HTTP client gates and the CLI use;
//! - [`cli`]: `canaryd rollout`: get, verbs and `status --wait` through the admin API, and
//!   `plan`, a config's rollout timeline.

pub mod cli;
pub mod driver;
pub mod fleet;
pub mod http;
pub mod machine;
pub mod measure;
