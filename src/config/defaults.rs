//! Default values: the `DEFAULT_*` constants, [`RETRY_BUDGET_MIN`] and the `Default` impls
//! that fill in what a config file leaves out.

use super::types::{AnalysisSettings, OutlierPolicy, RetryPolicy, Timeouts, Upgrades};
use std::time::Duration;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Retries a route may always have in flight, whatever its budget says.
pub const RETRY_BUDGET_MIN: usize = 3;

impl Default for AnalysisSettings {
    fn default() -> Self {
        AnalysisSettings {
            min_requests: 50,
            max_success_rate_drop_pp: 1.0,
            max_p99_ratio: 1.5,
            latency_floor: Duration::from_millis(5),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            response: DEFAULT_RESPONSE_TIMEOUT,
            idle: DEFAULT_BODY_IDLE_TIMEOUT,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            on_status: Vec::new(),
            budget_percent: 20.0,
        }
    }
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50.0,
        }
    }
}

impl Default for Upgrades {
    fn default() -> Self {
        Upgrades(vec!["websocket".to_string()])
    }
}
