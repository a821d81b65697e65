//! Configuration: YAML text → validated runtime types.
//!
//! Two layers, as in rust-rpxy: [`raw`] holds serde types that mirror the file; this module
//! validates them into [`Config`], collecting *every* problem (not just the first) as a
//! [`FieldError`] that names the field path (`routes[0].versions.canary.weight`), what was
//! wrong and what is allowed. `canaryd check` and every reload go through [`Config::from_yaml`],
//! so both reject exactly the same inputs with exactly the same messages.
//!
//! One file per concern, all re-exported here so callers write `config::X` wherever `X` lives:
//! - [`raw`]: the file as written (serde types, unknown fields denied);
//! - `types`: the validated runtime types and their small impls;
//! - `validate`: raw → validated ([`Config::from_yaml`], [`Config::from_file`], the
//!   `validate_*` / `parse_*` / `check_*` functions);
//! - [`rollout`]: the validated `routes[].rollout` types and their validation;
//! - `defaults`: the `DEFAULT_*` constants, [`RETRY_BUDGET_MIN`] and the `Default` impls that
//!   carry default values.

pub mod raw;
mod render;
pub mod rollout;

mod defaults;
mod types;
mod validate;

pub use defaults::{
    DEFAULT_BODY_IDLE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_RESPONSE_TIMEOUT, RETRY_BUDGET_MIN,
};
pub use rollout::{Check, CheckKind, Gate, GateSource, OnInconclusive, RolloutSpec, Step};
pub use types::{
    Admin, AnalysisSettings, CompareConfig, Condition, Config, ConfigError, ControllerSettings,
    Endpoint, FieldError, HeaderEdits, HealthCheck, HostMatch, KubeRoute, Listener, MirrorConfig,
    NginxLabels, OutlierPolicy, PathMatch, PathModifier, Protocol, ProxySettings, Redirect,
    RequestMatch, RetryPolicy, Rewrite, RouteConfig, RuleConfig, Secret, SniFiles, StickyConfig,
    StickyKey, Targets, Timeouts, TlsFiles, Unservable, Upgrades, Upstream, UpstreamTls, ValueTest,
    VersionConfig, WEIGHT_SCALE, Weight,
};
pub use validate::primary_takes_the_rest;
pub(crate) use validate::{Errors, validate_mirror, validate_rule};

#[cfg(test)]
mod tests;
