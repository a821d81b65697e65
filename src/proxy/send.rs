//! Phase `send`: attempts at the target until one answers or no retry is allowed. The loop
//! itself is in [`super::forward`], so the exchange futures live in the request's own future
//! (a nested `async fn` per attempt costs a copy of its whole future per request); here is
//! everything else about attempts. The helpers the loop calls are `#[inline(always)]` for the
//! same reason: out of line, the requests and answers they build are copied on the way back
//! into the request's future (callgrind: +1.4 % instructions per request, 0 % inlined).
//!
//! An attempt goes through our HTTP/1.1 pool (origin-form, a request that never left comes
//! back whole) or the client (absolute URI). Every failed attempt counts on its version, and
//! what the endpoint did (never the client's failures) feeds outlier detection. Another
//! attempt needs the policy (a connect failure: any method; a status in `on_status`: only
//! idempotent requests without a body), something to resend (the request handed back, the
//! body from its replay slot, or no body) and room in the route's retry budget.

use super::ctx::{RequestCtx, Target};
use super::request::Outgoing;
use crate::config::{RETRY_BUDGET_MIN, RetryPolicy};
use crate::error::{ErrorSource, ProxyError};
use crate::state::RouteRt;
use crate::upstream::body::{ClientBody, Idle, Replayable, RequestBody, UpstreamBody};
use crate::upstream::pool::{Lease, Sent};
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Error as ClientError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::error::Elapsed;

pub(super) type Answer = Result<(Response<UpstreamBody>, Option<Lease>), ProxyError>;

/// The state of a request's attempts.
pub(super) struct Attempts<'s> {
    /// This request counts among the route's active requests (the retry budget's base).
    _active: Counted<'s>,
    policy: &'s RetryPolicy,
    idle: Duration,
    no_body: bool,
    /// A status in `on_status` may be retried: idempotent, no body, no upgrade.
    status_retry_ok: bool,
    /// The body for the next attempt.
    body: Option<RequestBody>,
    /// A request that came back unsent from a pool, to go out again as it is.
    returned: Option<Box<Request<RequestBody>>>,
    /// The replay slot of the body the current attempt sends.
    replay: Option<Replayable>,
    /// Retries so far.
    attempt: u32,
    /// Held from the first retry on: this request counts against the retry budget.
    retry_slot: Option<Counted<'s>>,
}

impl<'s> Attempts<'s> {
    /// The attempts of a request to `first`, on its way out as `out`.
    #[inline(always)]
    pub(super) fn new(
        first: Target<'s>,
        out: &Outgoing,
        body: super::Inbound,
        tee: Option<crate::upstream::body::Tee>,
    ) -> Self {
        let rc = first.route.config();
        let first_pooled = first.endpoint().pool.is_some();
        let policy = &rc.retries;
        let idle = rc.timeouts.idle;
        let upgrade = out.upgrade.is_some();
        let body = body.into_stream();
        let no_body = body.is_none();
        // Our pools hand an unsent request back; hyper-util's client does not, so a body bound
        // for it waits in a replayable slot.
        let body = match body {
            None => RequestBody::Empty,
            Some(body) => {
                let body = ClientBody::new(body, out.version >= Version::HTTP_2).with_tee(tee);
                if policy.attempts > 0 && !upgrade && !first_pooled {
                    RequestBody::Replayable(Replayable::new(body), Idle::new(idle))
                } else {
                    RequestBody::Stream(Box::new(body), Idle::new(idle))
                }
            }
        };
        Attempts {
            _active: Counted::new(&first.route.active),
            policy,
            idle,
            no_body,
            status_retry_ok: no_body && crate::upstream::h1::is_idempotent(&out.method) && !upgrade,
            body: Some(body),
            returned: None,
            replay: None,
            attempt: 0,
            retry_slot: None,
        }
    }

    /// The current attempt is the request's first (no retry yet).
    pub(super) fn first(&self) -> bool {
        self.attempt == 0
    }

    fn last(&self) -> bool {
        self.attempt >= self.policy.attempts
    }

    /// The upstream request of this attempt at `t`.
    #[inline(always)]
    pub(super) fn request(
        &mut self,
        out: &mut Outgoing,
        t: Target<'_>,
    ) -> Result<Request<RequestBody>, ProxyError> {
        let endpoint = t.endpoint();
        let pooled = endpoint.pool.is_some();
        // Pools take origin-form (`/path?q`); hyper-util's client wants the absolute URI.
        let uri = if pooled {
            Uri::from(out.path_and_query.clone())
        } else {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(t.version.upstream.scheme.clone());
            uri.authority = Some(endpoint.authority.clone());
            uri.path_and_query = Some(out.path_and_query.clone());
            Uri::from_parts(uri)
                .map_err(|_| ProxyError::Internal("unusable upstream request target"))?
        };
        self.replay = None;
        let mut req = match self.returned.take() {
            Some(mut r) => {
                *r.uri_mut() = uri;
                *r
            }
            None => self.fresh(out, uri, pooled),
        };
        if !pooled {
            // hyper-util's client: the X-Forwarded-* fields go into the map (our pool writes
            // them into the head itself, see `Pool::send`). Not twice on a later attempt.
            if let Some(f) = &out.forwarded {
                f.apply_once(req.headers_mut());
            }
        }
        // The version's protocol decides, whatever the client spoke.
        *req.version_mut() = t.version.upstream.http_version;
        if pooled && !out.has_host && !req.headers().contains_key(HOST) {
            // HTTP/1.0 without Host: name the endpoint, as hyper-util's client would.
            if let Ok(h) = HeaderValue::from_str(endpoint.authority.as_str()) {
                req.headers_mut().insert(HOST, h);
            }
        }
        Ok(req)
    }

    /// A new request from the outgoing head and the next body.
    #[inline(always)]
    fn fresh(&mut self, out: &mut Outgoing, uri: Uri, pooled: bool) -> Request<RequestBody> {
        let last = self.last();
        let body = self.body.take().unwrap_or(RequestBody::Empty);
        if let RequestBody::Replayable(r, _) = &body {
            if !last {
                self.replay = Some(r.clone());
            }
        }
        // Keep the head for another attempt only when one could need it: a pool gives an
        // unsent request back, so it needs a copy only for status retries.
        let keep =
            !last && (!pooled || (self.status_retry_ok && !self.policy.on_status.is_empty()));
        let mut r = Request::new(body);
        *r.method_mut() = out.method.clone();
        *r.uri_mut() = uri;
        *r.headers_mut() = if keep {
            out.headers.clone()
        } else {
            std::mem::take(&mut out.headers)
        };
        r
    }

    /// The outcome of an exchange through our pool: a request that never left comes back.
    #[inline(always)]
    pub(super) fn pooled(&mut self, r: Sent) -> Answer {
        match r {
            Err(e) => {
                self.returned = e.request;
                Err(e.error)
            }
            Ok(answer) => Ok(answer),
        }
    }

    /// The outcome of an exchange through the client.
    #[inline(always)]
    pub(super) fn client(
        t: Target<'_>,
        r: Result<Result<Response<Incoming>, ClientError>, Elapsed>,
    ) -> Answer {
        match r {
            Err(_elapsed) => Err(ProxyError::ResponseTimeout),
            Ok(Err(e)) => {
                tracing::debug!(error = ?e, endpoint = %t.endpoint().authority, "upstream request failed");
                Err(ProxyError::from_client(&e))
            }
            Ok(Ok(r)) => Ok((r.map(UpstreamBody::Hyper), None)),
        }
    }

    /// Count what the answer says about the target, and whether another attempt follows
    /// (then the target moves to the next endpoint, or the primary with `fallback`).
    #[inline(always)]
    pub(super) fn settle<'s2>(
        &mut self,
        ctx: &mut RequestCtx<'s2>,
        t: Target<'s2>,
        answer: &Answer,
        target: &http::uri::PathAndQuery,
    ) -> bool
    where
        's2: 's,
    {
        let status = observe(t, answer, target);
        if !self.again(t.route, answer, status) {
            return false;
        }
        tracing::debug!(endpoint = %t.endpoint().authority, %status, attempt = self.attempt, "retrying");
        t.version.metrics.retry();
        let (version, endpoint) = t.route.choose(t.version, Some(t.endpoint));
        ctx.target = Some(Target {
            version,
            endpoint,
            ..t
        });
        true
    }

    /// Whether another attempt follows this answer (and if so, it is counted and prepared).
    fn again(&mut self, route: &'s RouteRt, answer: &Answer, status: StatusCode) -> bool {
        // Connect failures never reached the upstream: any method may go again.
        let never_sent = self.returned.is_some()
            || matches!(
                answer,
                Err(ProxyError::Connect | ProxyError::ConnectTimeout)
            );
        let wanted = !self.last()
            && (never_sent
                || (self.status_retry_ok && self.policy.on_status.contains(&status.as_u16())));
        if !(wanted && self.can_resend() && self.retry_budget(route)) {
            return false;
        }
        self.attempt += 1;
        true
    }

    /// Something to send again: the request handed back, the body taken back from its slot,
    /// or (no body) nothing to take back.
    fn can_resend(&mut self) -> bool {
        if self.returned.is_some() {
            return true;
        }
        match &self.replay {
            Some(r) => match r.take_back() {
                Some(b) => {
                    self.body = Some(RequestBody::Replayable(b, Idle::new(self.idle)));
                    true
                }
                None => false,
            },
            None if self.no_body => {
                self.body = Some(RequestBody::Empty);
                true
            }
            None => false,
        }
    }

    /// Retries in flight on the route stay under `budget_percent` of its active requests
    /// (at least [`RETRY_BUDGET_MIN`]). The first retry of a request takes a slot, kept until
    /// the request ends; taking it is one atomic step, so concurrent requests cannot all see
    /// the last free slot.
    fn retry_budget(&mut self, route: &'s RouteRt) -> bool {
        if self.retry_slot.is_some() {
            return true;
        }
        let active = route.active.load(Ordering::Relaxed);
        let allowed =
            ((active as f64 * self.policy.budget_percent / 100.0) as usize).max(RETRY_BUDGET_MIN);
        let slot = Counted::new(&route.retrying);
        if slot.1 >= allowed {
            return false;
        }
        self.retry_slot = Some(slot);
        true
    }
}

/// What an attempt says about its endpoint: failures count on the version (also the ones a
/// retry then hides), and outlier detection hears only what the endpoint did.
fn observe(t: Target<'_>, answer: &Answer, target: &http::uri::PathAndQuery) -> StatusCode {
    let mut kind = None;
    let status = match answer {
        Ok((r, _)) => r.status(),
        Err(e) => {
            kind = e.upstream_kind();
            if let Some(kind) = kind {
                t.version.metrics.upstream_error(kind);
            }
            e.status()
        }
    };
    let upstream_outcome = !matches!(answer, Err(e) if e.source() != ErrorSource::Upstream);
    if upstream_outcome && status.is_server_error() {
        // Kept for a rollout's judge: what failed, where, and how.
        let window = &t.version.metrics.window;
        window.note_failure(status.as_u16(), target.path(), kind.map(|k| k.as_str()));
        t.version.failure(t.endpoint, &t.route.config().outlier);
    } else if upstream_outcome {
        t.version.success(t.endpoint);
    }
    status
}

/// Increments a counter now (remembering the count before) and decrements it when dropped.
struct Counted<'a>(&'a AtomicUsize, usize);

impl<'a> Counted<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        let before = c.fetch_add(1, Ordering::Relaxed);
        Counted(c, before)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
