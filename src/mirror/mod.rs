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
use compare::{Capture, Diff, Seen};
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body::Body as _;
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
    pub path_and_query: &'a PathAndQuery,
    /// The client's body: its size, and whether there is one.
    pub body_size: http_body::SizeHint,
    pub body_empty: bool,
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
    let metrics = &rt.metrics.mirror;
    let version = shadow.name.as_str();
    if head.body_size.lower() > m.max_body {
        metrics.result(&rt.route, version, "dropped_body");
        return None;
    }
    let Some(permit) = rt.admit() else {
        metrics.result(&rt.route, version, "dropped_full");
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
    let Some(req) = copy_request(m, shadow, &head, body) else {
        if permit.is_none() {
            rt.queued.fetch_sub(1, Ordering::AcqRel);
        }
        metrics.result(&rt.route, version, "error");
        return None;
    };
    let job = Job {
        rt: rt.clone(),
        version: version.to_string(),
        client: shadow.upstream.client.clone(),
        compare: m.compare.clone(),
        method: head.method.to_string(),
        path: head.path_and_query.to_string(),
        timeout,
    };
    tokio::spawn(job.run(permit, req, primary));
    Some(Started { tee, capture })
}

/// The copy's request: the primary's head, to an available endpoint of the shadow, with
/// `Host` + `host_suffix` and `x-canaryd-mirror: 1`.
fn copy_request(
    m: &MirrorConfig,
    shadow: &VersionRt,
    head: &Head<'_>,
    body: Option<MirrorBody>,
) -> Option<Request<RequestBody>> {
    let ei = shadow
        .pick_endpoint(None)
        .unwrap_or_else(|| shadow.next_endpoint());
    let endpoint = shadow.endpoints.get(ei)?;
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(shadow.upstream.scheme.clone());
    uri.authority = Some(endpoint.authority.clone());
    uri.path_and_query = Some(head.path_and_query.clone());
    let uri = Uri::from_parts(uri).ok()?;
    let mut headers = head.headers.clone();
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
    Some(req)
}

struct Job {
    rt: Arc<MirrorRt>,
    version: String,
    client: crate::upstream::UpstreamClient,
    compare: crate::config::CompareConfig,
    method: String,
    path: String,
    timeout: Duration,
}

impl Job {
    async fn run(
        self,
        permit: Option<OwnedSemaphorePermit>,
        req: Request<RequestBody>,
        primary: Option<oneshot::Receiver<Seen>>,
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
        let metrics = &self.rt.metrics.mirror;
        let (route, version) = (self.rt.route.as_str(), self.version.as_str());
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        let resp = match answer {
            Ok(Ok(r)) => r,
            failed => {
                let why = tee_state.as_deref().and_then(MirrorBody::given_up);
                let result = match why {
                    Some(TEE_TOO_LARGE) => "dropped_body",
                    Some(_) => "dropped_full",
                    None => "error",
                };
                if let Ok(Err(e)) = failed {
                    tracing::debug!(route, version, error = %e, "mirror copy failed");
                }
                metrics.result(route, version, result);
                return;
            }
        };
        let status = resp.status().as_u16();
        metrics.result(route, version, "sent");
        metrics.response(route, version, status, started.elapsed());
        let names = &self.compare.headers;
        let mut shadow = Seen::head(status, resp.headers(), names);
        let max = usize::try_from(self.compare.max_body).unwrap_or(usize::MAX);
        let mut body = resp.into_body();
        // Read to the end and throw away; keep a bounded copy when comparing.
        let read = tokio::time::timeout(self.timeout, async {
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let (Some(d), true) = (f.data_ref(), primary.is_some()) {
                            shadow.data(d, max);
                        }
                    }
                    Err(_) => return false,
                }
            }
            true
        })
        .await;
        shadow.complete = matches!(read, Ok(true)) || body.is_end_stream();
        let Some(primary) = primary else {
            return;
        };
        // The primary's body may still be streaming to a slow client: wait, bounded.
        let Ok(Ok(primary)) = tokio::time::timeout(self.timeout, primary).await else {
            return;
        };
        if !primary.complete {
            return; // The client left or the primary failed: nothing fair to compare.
        }
        let diffs = compare::compare(&self.compare, &primary, &shadow);
        let kinds: Vec<&'static str> = diffs.iter().map(|d| d.0).collect();
        metrics.compared(route, &kinds);
        if diffs.is_empty() {
            return;
        }
        let d = Diff {
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            method: self.method,
            path: self.path,
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
