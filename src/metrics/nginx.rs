//! ingress-nginx's request metrics, for routes translated from Ingresses
//! (`canaryd run --kubernetes`): Flagger's `nginx` checks and the Prometheus queries people
//! wrote for ingress-nginx read `nginx_ingress_controller_requests` and
//! `nginx_ingress_controller_response_duration_seconds` by `namespace`, `ingress`, `service`,
//! `canary` and `status`; a canaryd that replaces ingress-nginx keeps them answering.
//!
//! As in ingress-nginx, `ingress` is the main Ingress (a canary Ingress's traffic counts under
//! it) and `canary` is the canary's upstream name `<namespace>-<service>-<port>` when the
//! canary served the request, empty otherwise. `method` and the `controller_*` labels are not
//! exported. The series carry no `_total` suffix (ingress-nginx's names), so they are typed
//! `unknown` rather than `counter`, which would add one.

use super::LatencyHistogram;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NginxLabels {
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub canary: String,
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NginxStatusLabels {
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub canary: String,
    pub path: String,
    pub status: String,
}

/// A monotonic count exported under its own name, with no `_total` added.
#[derive(Debug, Clone, Default)]
pub struct PlainCounter(Arc<AtomicU64>);

impl PlainCounter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl TypedMetric for PlainCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for PlainCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0.load(Ordering::Relaxed) as i64))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// The two families, in their own registry (no `canaryd_` prefix).
#[derive(Debug, Default)]
pub struct NginxMetrics {
    pub registry: Registry,
    requests: Family<NginxStatusLabels, PlainCounter>,
    duration: Family<NginxLabels, LatencyHistogram>,
}

impl NginxMetrics {
    pub fn new() -> NginxMetrics {
        let mut registry = Registry::default();
        let requests = Family::<NginxStatusLabels, PlainCounter>::default();
        let duration = Family::<NginxLabels, LatencyHistogram>::default();
        registry.register(
            "nginx_ingress_controller_requests",
            "Requests of routes translated from Ingresses, as ingress-nginx counts them",
            requests.clone(),
        );
        registry.register(
            "nginx_ingress_controller_response_duration_seconds",
            "Response time of routes translated from Ingresses, as ingress-nginx names it",
            duration.clone(),
        );
        NginxMetrics {
            registry,
            requests,
            duration,
        }
    }

    /// The handles of one version of an Ingress route.
    pub fn handles(self: &Arc<Self>, labels: NginxLabels) -> NginxHandles {
        NginxHandles {
            duration: self.duration.get_or_create_owned(&labels),
            codes: (0..super::CODE_SLOTS).map(|_| OnceLock::new()).collect(),
            labels,
            metrics: self.clone(),
        }
    }
}

/// Pre-resolved handles of one version of an Ingress route (status codes on first use).
#[derive(Debug)]
pub struct NginxHandles {
    labels: NginxLabels,
    codes: Box<[OnceLock<PlainCounter>]>,
    duration: LatencyHistogram,
    metrics: Arc<NginxMetrics>,
}

impl NginxHandles {
    pub fn record(&self, status: u16, elapsed: Duration) {
        let slot = usize::from(status.clamp(100, 599) - 100);
        self.codes[slot]
            .get_or_init(|| {
                let l = &self.labels;
                self.metrics
                    .requests
                    .get_or_create_owned(&NginxStatusLabels {
                        namespace: l.namespace.clone(),
                        ingress: l.ingress.clone(),
                        service: l.service.clone(),
                        canary: l.canary.clone(),
                        path: l.path.clone(),
                        status: status.to_string(),
                    })
            })
            .inc();
        self.duration.observe(elapsed);
    }
}
