//! Endpoint health: passive outlier detection (eject an endpoint after consecutive failures,
//! for longer each time it repeats), active health checks, and the endpoint pick that skips
//! what is out of service.
//!
//! Health lives outside snapshots, keyed by (route, version, endpoint), so a reload neither
//! forgets an ejection nor restarts a health check whose settings did not change. The hot
//! path reads two relaxed atomics per endpoint it considers and takes the clock only when an
//! ejection is in force.

use super::{UpstreamClient, VersionRt};
use crate::config::{HealthCheck, OutlierPolicy};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the first call, never 0 (0 means "not ejected").
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// Health of one endpoint of one version of one route.
#[derive(Debug)]
pub struct EndpointHealth {
    /// `route/version/endpoint`, for log lines.
    name: String,
    consecutive_failures: AtomicU32,
    /// [`now_ms`] until which the endpoint is ejected; 0 = in service.
    ejected_until: AtomicU64,
    /// Ejections in a row with no success between; each one lasts longer.
    ejections: AtomicU32,
    /// Back from an ejection and not yet proven: the next failure ejects it again at once.
    probation: AtomicBool,
    /// Verdict of the active health check; true when the route has none.
    check_ok: AtomicBool,
}

impl EndpointHealth {
    pub fn new(name: String) -> EndpointHealth {
        EndpointHealth {
            name,
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            probation: AtomicBool::new(false),
            check_ok: AtomicBool::new(true),
        }
    }

    /// Ejected now (by outlier detection)?
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Failing its active health check?
    pub fn is_check_failing(&self) -> bool {
        !self.check_ok.load(Ordering::Relaxed)
    }

    /// Can take traffic now? An ejection that has run out ends here: the endpoint returns on
    /// probation, and `returned` is set.
    fn available(&self, returned: &mut bool) -> bool {
        if !self.check_ok.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.probation.store(true, Ordering::Relaxed);
            *returned = true;
            tracing::info!(endpoint = %self.name, "ejection over; endpoint back in service on probation");
        }
        true
    }

    /// Set by the active health checker. Returns whether the verdict changed.
    pub fn set_check_ok(&self, ok: bool) -> bool {
        self.check_ok.swap(ok, Ordering::Relaxed) != ok
    }
}

/// The endpoint pick and the outcome of attempts, over one version's endpoints.
impl VersionRt {
    /// The next available endpoint after `start` in round-robin order, skipping `skip`.
    pub fn pick(&self, start: usize, skip: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        let mut returned = false;
        let found = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| Some(i) != skip && self.endpoints[i].health.available(&mut returned));
        if returned {
            self.metrics.set_unavailable(self.unavailable());
        }
        found
    }

    /// How many endpoints cannot take traffic now (ejected or failing their check).
    pub fn unavailable(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| e.health.is_ejected() || e.health.is_check_failing())
            .count()
    }

    /// Record whether the whole version has no available endpoint; a flip is logged once.
    pub fn note_down(&self, down: bool, route: &str, fallback: bool) {
        let version = self.name.as_str();
        // Load first: the steady state writes nothing to this shared flag.
        if self.down.load(Ordering::Relaxed) != down
            && self.down.swap(down, Ordering::Relaxed) != down
        {
            if down {
                tracing::warn!(
                    route,
                    version,
                    fallback,
                    "no endpoint of this version is available{}",
                    if fallback {
                        "; its traffic goes to the primary"
                    } else {
                        ""
                    }
                );
            } else {
                tracing::info!(route, version, "version has an available endpoint again");
            }
        }
    }

    /// An attempt on endpoint `i` succeeded (any response below 500).
    pub fn success(&self, i: usize) {
        let h = &self.endpoints[i].health;
        // Loads first: the common case writes nothing, so no cache line bounces.
        if h.consecutive_failures.load(Ordering::Relaxed) != 0 {
            h.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if h.probation.load(Ordering::Relaxed) {
            h.probation.store(false, Ordering::Relaxed);
            h.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// An attempt on endpoint `i` failed (connect failure, timeout, reset, or a 5xx). Ejects
    /// it when the policy says so and the version's ejection share allows.
    pub fn failure(&self, i: usize, policy: &OutlierPolicy) {
        let metrics = &self.metrics;
        if policy.consecutive_failures == 0 {
            return;
        }
        let h = &self.endpoints[i].health;
        let n = h.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probation = h.probation.swap(false, Ordering::Relaxed);
        if n < policy.consecutive_failures && !probation {
            return;
        }
        if h.ejected_until.load(Ordering::Relaxed) != 0 {
            return; // already out (a concurrent failure got there first)
        }
        let total = self.endpoints.len();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.health.is_ejected())
            .count();
        let share = (total as f64 * policy.max_ejection_percent / 100.0).floor() as usize;
        if ejected >= share.max(1) {
            return;
        }
        let k = h.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = policy
            .base_ejection_time
            .saturating_mul(k)
            .min(policy.max_ejection_time);
        let until = now_ms() + u64::try_from(time.as_millis()).unwrap_or(u64::MAX / 2);
        if h.ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            h.consecutive_failures.store(0, Ordering::Relaxed);
            metrics.ejected();
            metrics.set_unavailable(self.unavailable());
            tracing::warn!(
                endpoint = %h.name,
                failures = n,
                ejection = k,
                seconds = time.as_secs_f64(),
                "endpoint ejected after consecutive failures"
            );
        }
    }
}

/// One active health check loop: GET `check.path` on the endpoint every `interval` until
/// aborted, flipping the endpoint's verdict after the thresholds.
pub async fn check_loop(
    health: std::sync::Arc<EndpointHealth>,
    unavailable: prometheus_client::metrics::gauge::Gauge,
    check: HealthCheck,
    client: UpstreamClient,
    uri: http::Uri,
    host: http::HeaderValue,
) {
    let (mut ok_run, mut fail_run) = (0u32, 0u32);
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = probe_once(&client, &uri, &host, check.timeout).await;
        if ok {
            ok_run += 1;
            fail_run = 0;
        } else {
            fail_run += 1;
            ok_run = 0;
        }
        let verdict = if ok_run >= check.healthy_threshold {
            Some(true)
        } else if fail_run >= check.unhealthy_threshold {
            Some(false)
        } else {
            None
        };
        if let Some(v) = verdict {
            if health.set_check_ok(v) {
                if v {
                    unavailable.dec();
                    tracing::info!(endpoint = %health.name, "health check passing again");
                } else {
                    unavailable.inc();
                    tracing::warn!(endpoint = %health.name, path = %check.path, "health check failing; endpoint out of service");
                }
            }
        }
    }
}

async fn probe_once(
    client: &UpstreamClient,
    uri: &http::Uri,
    host: &http::HeaderValue,
    timeout: Duration,
) -> bool {
    let req = match http::Request::get(uri.clone())
        .header(http::header::HOST, host.clone())
        .header(http::header::USER_AGENT, "canaryd-health-check")
        .body(crate::upstream::body::RequestBody::empty())
    {
        Ok(r) => r,
        Err(_) => return false,
    };
    let send = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status();
        // Read the body so the pooled connection can be reused.
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        Some(status)
    };
    matches!(
        tokio::time::timeout(timeout, send).await,
        Ok(Some(s)) if s.is_success() || s.is_redirection()
    )
}
