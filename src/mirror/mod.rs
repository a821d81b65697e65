//! Shadow traffic (dark launches): copies of a route's requests sent to a shadow version whose
//! answers are read, measured, compared with the primary's and thrown away.
//!
//! The primary never waits for, fails with or changes because of its copy:
//! - the copy is decided with the route (runtime mirrors first, then the file's `mirror`; never
//!   a request already routed to the shadow; idempotent methods unless `methods` says
//!   otherwise; `percent` of the rest) and admitted only if the route's mirror has a free slot
//!   or room in its queue — else it is dropped and counted;
//! - its body is teed as the primary's streams ([`crate::upstream::body::Tee`]): a body over
//!   `max_body`, or a copy that falls behind, gives up the copy, never the primary;
//! - it goes through the shadow version's own client (not the primary's pooled connections),
//!   in a task of its own, and its outcome lands only in `canaryd_mirror_*` and the mirror
//!   window: never the version's request metrics, its analysis window, retries or outlier
//!   detection, so a sick shadow cannot eject endpoints real users need.
//!
//! [`compare`]: for a sampled share of copies, the primary's answer against the shadow's.

pub mod compare;

use crate::config::{MirrorConfig, WEIGHT_SCALE};
use crate::metrics::Metrics;
use crate::upstream::VersionRt;
use crate::upstream::body::{MirrorBody, RequestBody, TEE_TOO_LARGE, tee};
use crate::upstream::pool::Pool;
use compare::{Capture, Diff, Seen};
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Differing pairs kept per route for `GET /api/v1/routes/{r}/mirror/diffs`.
pub const KEEP_DIFFS: usize = 50;

/// `x-canaryd-mirror: 1` on every copy, so the shadow can tell.
pub const X_CANARYD_MIRROR: &str = "x-canaryd-mirror";

/// A route's mirroring: its concurrency and queue, and the differences seen. Outlives
/// snapshots (a reload keeps in-flight copies counted and the diffs).
pub struct MirrorRt {
    route: String,
    slots: Arc<Semaphore>,
    pub max_in_flight: usize,
    queued: AtomicUsize,
    pub queue: usize,
    diffs: Mutex<VecDeque<Diff>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MirrorRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorRt")
            .field("route", &self.route)
            .field("max_in_flight", &self.max_in_flight)
            .field("queue", &self.queue)
            .finish()
    }
}

impl MirrorRt {
    pub fn new(route: &str, max_in_flight: usize, queue: usize, metrics: Arc<Metrics>) -> MirrorRt {
        MirrorRt {
            route: route.to_string(),
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            queued: AtomicUsize::new(0),
            queue,
            diffs: Mutex::new(VecDeque::new()),
            metrics,
        }
    }

    /// The last differing pairs, newest first.
    pub fn diffs(&self) -> Vec<Diff> {
        let d = self.diffs.lock().unwrap_or_else(|e| e.into_inner());
        d.iter().rev().cloned().collect()
    }

    /// A slot now, `Some(None)` for a place in the queue, `None` when both are full.
    fn admit(&self) -> Option<Option<OwnedSemaphorePermit>> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(Some(p));
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(None)
    }
}

/// The mirror a request is copied to, if any: the first runtime mirror whose conditions
/// hold, else the file's; not when the request already goes to its shadow, nor for a method
/// it does not copy; then a `percent` draw.
pub fn choose<'a>(
    route: &'a crate::state::RouteRt,
    chosen: usize,
    method: &Method,
    matches: impl Fn(&MirrorConfig) -> bool,
) -> Option<&'a MirrorConfig> {
    route.mirror.as_ref()?;
    let rc = route.config();
    let m = rc
        .mirrors
        .iter()
        .chain(rc.mirror.iter())
        .find(|m| matches(m))?;
    if m.to == chosen || !m.copies(method) {
        return None;
    }
    let draw = rand::random_range(0..WEIGHT_SCALE);
    (draw < m.percent.0).then_some(m)
}

/// What the primary carries for its copy: the body tee and the capture of its answer.
pub struct Started {
    pub tee: Option<crate::upstream::body::Tee>,
    pub capture: Option<Capture>,
}

/// The request head the copy sends.
pub struct Head<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// `X-Forwarded-*` fields not yet in `headers`.
    pub forwarded: Option<&'a crate::proxy::headers::Forwarded>,
    pub path_and_query: &'a PathAndQuery,
    /// The client's body: its size, and whether there is one.
    pub body_size: http_body::SizeHint,
    pub body_empty: bool,
    /// The per-core worker serving the request (whose pooled connections the copy uses).
    pub worker: usize,
}

/// Start the copy of a request to `m` (admitted or dropped and counted). The task sends it
/// when a slot is free, reads the shadow's answer and, when sampled, compares it with what
/// the primary's [`Capture`] saw.
pub fn start(
    rt: &Arc<MirrorRt>,
    m: &MirrorConfig,
    shadow: &VersionRt,
    timeout: Duration,
    head: Head<'_>,
) -> Option<Started> {
    let metrics = &shadow.metrics;
    if head.body_size.lower() > m.max_body {
        metrics.mirror_result("dropped_body");
        return None;
    }
    let Some(permit) = rt.admit() else {
        metrics.mirror_result("dropped_full");
        return None;
    };
    let (tee, body) = if head.body_empty {
        (None, None)
    } else {
        let (t, b) = tee(m.max_body, head.body_size);
        (Some(t), Some(b))
    };
    let compare = rand::random_range(0..WEIGHT_SCALE) < m.compare.sample.0;
    let (capture, primary) = if compare {
        let (tx, rx) = oneshot::channel();
        (
            Some(Capture::new(
                tx,
                m.compare.max_body,
                m.compare.headers.clone(),
            )),
            Some(rx),
        )
    } else {
        (None, None)
    };
    let Some((req, pool)) = copy_request(m, shadow, &head, body) else {
        if permit.is_none() {
            rt.queued.fetch_sub(1, Ordering::AcqRel);
        }
        metrics.mirror_result("error");
        return None;
    };
    let compare = primary.map(|primary| Comparison {
        cfg: m.compare.clone(),
        method: head.method.to_string(),
        path: head.path_and_query.to_string(),
        primary,
    });
    let job = Job {
        rt: rt.clone(),
        metrics: shadow.metrics.clone(),
        client: shadow.upstream.client.clone(),
        pool,
        worker: head.worker,
        timeout,
    };
    tokio::spawn(job.run(permit, req, compare));
    Some(Started { tee, capture })
}

/// The copy's request: the primary's head, to an available endpoint of the shadow, with
/// `Host` + `host_suffix` and `x-canaryd-mirror: 1`.
fn copy_request(
    m: &MirrorConfig,
    shadow: &VersionRt,
    head: &Head<'_>,
    body: Option<MirrorBody>,
) -> Option<(Request<RequestBody>, Option<Arc<Pool>>)> {
    let ei = shadow
        .pick_endpoint(None)
        .unwrap_or_else(|| shadow.next_endpoint());
    let endpoint = shadow.endpoints.get(ei)?;
    // Through the endpoint's HTTP/1.1 pool when it has one (origin-form, as the primary's
    // requests), else the version's client (absolute URI).
    let uri = if endpoint.pool.is_some() {
        Uri::from(head.path_and_query.clone())
    } else {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(shadow.upstream.scheme.clone());
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = Some(head.path_and_query.clone());
        Uri::from_parts(uri).ok()?
    };
    let mut headers = head.headers.clone();
    if let Some(f) = head.forwarded {
        f.apply(&mut headers);
    }
    let host = headers
        .get(HOST)
        .map(|h| h.as_bytes().to_vec())
        .unwrap_or_else(|| endpoint.authority.as_str().as_bytes().to_vec());
    let mut shadow_host = host;
    shadow_host.extend_from_slice(m.host_suffix.as_bytes());
    if let Ok(h) = HeaderValue::from_bytes(&shadow_host) {
        headers.insert(HOST, h);
    }
    headers.insert(X_CANARYD_MIRROR, HeaderValue::from_static("1"));
    let mut req = Request::new(body.map_or(RequestBody::Empty, RequestBody::Mirror));
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    *req.version_mut() = shadow.upstream.http_version;
    Some((req, endpoint.pool.clone()))
}

struct Job {
    rt: Arc<MirrorRt>,
    metrics: Arc<crate::metrics::VersionMetrics>,
    client: crate::upstream::UpstreamClient,
    /// The endpoint's pool, and the worker whose idle list the connection comes from.
    pool: Option<Arc<Pool>>,
    worker: usize,
    timeout: Duration,
}

/// A sampled copy: what the comparison needs (only these pay for it).
struct Comparison {
    cfg: crate::config::CompareConfig,
    method: String,
    path: String,
    primary: oneshot::Receiver<Seen>,
}

impl Job {
    async fn run(
        self,
        permit: Option<OwnedSemaphorePermit>,
        req: Request<RequestBody>,
        compare: Option<Comparison>,
    ) {
        let _permit = match permit {
            Some(p) => p,
            None => {
                let p = self.rt.slots.clone().acquire_owned().await;
                self.rt.queued.fetch_sub(1, Ordering::AcqRel);
                match p {
                    Ok(p) => p,
                    Err(_) => return,
                }
            }
        };
        let tee_state = match req.body() {
            RequestBody::Mirror(b) => Some(b.state()),
            _ => None,
        };
        let metrics = &self.metrics;
        let started = Instant::now();
        // One deadline for the whole exchange: the answer's head, then its body read to the
        // end (and thrown away, or kept within the cap when compared).
        let names = compare
            .as_ref()
            .map(|c| c.cfg.headers.as_slice())
            .unwrap_or(&[]);
        let max = compare
            .as_ref()
            .map_or(0, |c| usize::try_from(c.cfg.max_body).unwrap_or(usize::MAX));
        let answered = std::sync::atomic::AtomicBool::new(false);
        let exchange = async {
            let (resp, lease) = match &self.pool {
                Some(pool) => pool
                    .send(
                        self.worker,
                        req,
                        None,
                        tokio::time::Instant::from_std(started) + self.timeout,
                    )
                    .await
                    .map_err(|e| e.error.to_string())?,
                None => (
                    self.client
                        .request(req)
                        .await
                        .map_err(|e| e.to_string())?
                        .map(crate::upstream::body::UpstreamBody::Hyper),
                    None,
                ),
            };
            answered.store(true, Ordering::Relaxed);
            let status = resp.status().as_u16();
            metrics.mirror_result("sent");
            metrics.mirror_response(status, started.elapsed());
            let mut shadow = Seen::head(status, resp.headers(), names);
            let mut body = resp.into_body();
            shadow.complete = true;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let (Some(d), true) = (f.data_ref(), compare.is_some()) {
                            shadow.data(d, max);
                        }
                    }
                    Err(_) => {
                        shadow.complete = false;
                        break;
                    }
                }
            }
            // Read to its end: the connection can serve the next request.
            if let (Some(l), true) = (lease, shadow.complete) {
                l.release();
            }
            Ok::<_, String>(shadow)
        };
        let shadow = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(shadow)) => shadow,
            Ok(Err(e)) => {
                let why = tee_state.as_deref().and_then(MirrorBody::given_up);
                let result = match why {
                    Some(TEE_TOO_LARGE) => "dropped_body",
                    Some(_) => "dropped_full",
                    None => "error",
                };
                tracing::debug!(route = %self.rt.route, error = %e, "mirror copy failed");
                metrics.mirror_result(result);
                if result == "error" {
                    metrics.mirror_failed(502, started.elapsed());
                }
                return;
            }
            // No answer in time (counted `error`), or an answer whose body never ended
            // (counted `sent` already): nothing more to learn from it.
            Err(_) => {
                if !answered.load(Ordering::Relaxed) {
                    metrics.mirror_result("error");
                    metrics.mirror_failed(504, started.elapsed());
                }
                return;
            }
        };
        if let Some(c) = compare {
            self.compare(c, shadow).await;
        }
    }

    async fn compare(self, c: Comparison, shadow: Seen) {
        let route = self.rt.route.as_str();
        // The primary's body may still be streaming to a slow client: wait, bounded.
        let Ok(Ok(primary)) = tokio::time::timeout(self.timeout, c.primary).await else {
            return;
        };
        if !primary.complete || !shadow.complete {
            return; // The client left or a side failed: nothing fair to compare.
        }
        let diffs = compare::compare(&c.cfg, &primary, &shadow);
        let kinds: Vec<&'static str> = diffs.iter().map(|d| d.0).collect();
        self.rt.metrics.mirror.compared(route, &kinds);
        if diffs.is_empty() {
            return;
        }
        let d = Diff {
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            method: c.method,
            path: c.path,
            primary_status: primary.status,
            shadow_status: shadow.status,
            kinds,
            diff: diffs.into_iter().map(|d| d.1).collect(),
        };
        let mut kept = self.rt.diffs.lock().unwrap_or_else(|e| e.into_inner());
        kept.push_back(d);
        while kept.len() > KEEP_DIFFS {
            kept.pop_front();
        }
    }
}
