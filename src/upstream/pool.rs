//! Connection pool for clear-text HTTP/1.1 upstreams, the common case. A request without a
//! body goes through our own exchange ([`super::h1`]), in the request's task; one with a body
//! (or an upgrade) through hyper's connection-level client (`hyper::client::conn::http1`),
//! which writes the body while the response may already arrive. Each keeps its own idle
//! connections.
//!
//! Why not hyper-util's pooled client here (it still serves h2c and TLS upstreams): per
//! request it hashes a pool key, and when a response body is still streaming it spawns a task
//! that waits to put the connection back. Here a pool is one endpoint's LIFO stack behind a
//! mutex, resolved when the snapshot is built, and the connection goes back from the response
//! body itself when it ends (see [`Lease`]). And a request that never reached the upstream
//! (connect failure, or a pooled connection found closed) comes back whole, so a retry needs
//! no copy of it.

use super::body::{RequestBody, UpstreamBody};
use super::h1::{self, Conn};
use crate::error::ProxyError;
use crate::proxy::headers::Forwarded;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Idle connections are closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept per endpoint.
const MAX_IDLE: usize = 1024;

type Idle<C> = Mutex<VecDeque<(C, Instant)>>;

/// One endpoint's idle connections.
#[derive(Debug)]
pub struct Pool {
    authority: Authority,
    connect_timeout: Duration,
    /// One list per per-core worker (one in all in the shared runtime), indexed by the
    /// worker that serves the request: a worker reuses only connections it opened itself, so
    /// a connection's I/O and the requests on it stay on one thread. Most recently used at
    /// the back (warm caches, and the oldest age out from the front).
    idle: Box<[Idle<SendRequest<RequestBody>>]>,
    /// The same, for connections of our own exchange.
    own: Box<[Idle<Box<Conn>>]>,
}

/// What [`Pool::send`] gives: the response, with the lease of hyper's connection when it
/// served it (ours go back to the pool from their body).
pub type Sent = Result<(Response<UpstreamBody>, Option<Lease>), SendError>;

/// A failed attempt; `request` is the request back when none of it was sent.
#[derive(Debug)]
pub struct SendError {
    pub error: ProxyError,
    /// Boxed: a request comes back only from a failed attempt, and inline it would size
    /// every answer that moves through the request's future (352 bytes, now 200).
    pub request: Option<Box<Request<RequestBody>>>,
}

/// A connection serving one response. [`Lease::release`] returns it to its pool once the
/// response body has ended; dropped otherwise, the connection closes with it.
#[derive(Debug)]
pub struct Lease {
    sender: SendRequest<RequestBody>,
    pool: Arc<Pool>,
    /// The worker whose idle list takes the connection back.
    worker: usize,
}

impl Lease {
    pub fn release(self) {
        self.pool.put(self.worker, self.sender);
    }
}

impl Pool {
    /// A pool for `workers` per-core workers (1 for the shared runtime).
    pub fn new(authority: Authority, connect_timeout: Duration, workers: usize) -> Pool {
        Pool {
            authority,
            connect_timeout,
            idle: (0..workers.max(1))
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            own: (0..workers.max(1))
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
        }
    }

    fn put(&self, worker: usize, sender: SendRequest<RequestBody>) {
        if !sender.is_closed() {
            put(&self.idle, worker, sender);
        }
    }

    fn checkout(&self, worker: usize) -> Option<SendRequest<RequestBody>> {
        checkout(&self.idle, worker, |s| !s.is_closed())
    }

    pub(super) fn put_own(&self, worker: usize, conn: Box<Conn>) {
        put(&self.own, worker, conn);
    }

    pub(super) fn checkout_own(&self, worker: usize) -> Option<Box<Conn>> {
        checkout(&self.own, worker, |c| c.usable())
    }

    /// Send `req` (origin-form URI, `Host` set) on one of `worker`'s idle connections or a
    /// new one: our own exchange when it [serves](h1::serves) the request, else hyper's
    /// (then the response comes with its [`Lease`]). `forwarded`: `X-Forwarded-*` fields
    /// still to add (written into the head by ours, inserted into the map for hyper's).
    /// No response head by `deadline` is a [`ProxyError::ResponseTimeout`] (the request is
    /// not handed back: it may have been sent).
    pub async fn send(
        self: &Arc<Self>,
        worker: usize,
        mut req: Request<RequestBody>,
        forwarded: Option<&Forwarded>,
        deadline: tokio::time::Instant,
    ) -> Sent {
        if h1::serves(&req) {
            return match self.send_own(worker, &req, forwarded, deadline).await {
                Ok(r) => Ok((r.map(UpstreamBody::Own), None)),
                Err((error, unsent)) => Err(SendError {
                    error,
                    request: unsent.then(|| Box::new(req)),
                }),
            };
        }
        if let Some(f) = forwarded {
            f.apply_once(req.headers_mut());
        }
        // Boxed: requests with a body are the rarer kind, and inline, this future's state
        // (hyper's ready/send futures and a new connection's handshake) would size every
        // request's future, which HTTP/2 moves into a task of its own per stream.
        let (r, lease) = tokio::time::timeout_at(deadline, Box::pin(self.send_hyper(worker, req)))
            .await
            .map_err(|_| SendError {
                error: ProxyError::ResponseTimeout,
                request: None,
            })??;
        Ok((r.map(UpstreamBody::Hyper), Some(lease)))
    }

    /// [`Pool::send`] through hyper's client.
    async fn send_hyper(
        self: &Arc<Self>,
        worker: usize,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut sender) = self.checkout(worker) {
            // Just released: its connection may still be finishing the last response.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(worker, sender))),
                Err(mut e) => match e.take_message() {
                    // Closed under us before the request went out: try the next one.
                    Some(r) => req = r,
                    None => {
                        tracing::debug!(error = %e.error(), endpoint = %self.authority, "upstream request failed");
                        return Err(SendError {
                            error: ProxyError::from_exchange(e.error()),
                            request: None,
                        });
                    }
                },
            }
        }
        let mut sender = match self.connect().await {
            Ok(s) => s,
            Err(error) => {
                return Err(SendError {
                    error,
                    request: Some(Box::new(req)),
                });
            }
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(worker, sender))),
            Err(mut e) => {
                tracing::debug!(error = %e.error(), endpoint = %self.authority, "upstream request failed");
                Err(SendError {
                    error: ProxyError::from_exchange(e.error()),
                    request: e.take_message().map(Box::new),
                })
            }
        }
    }

    fn lease(self: &Arc<Self>, worker: usize, sender: SendRequest<RequestBody>) -> Lease {
        Lease {
            sender,
            pool: self.clone(),
            worker,
        }
    }

    /// A new connection to the endpoint (`TCP_NODELAY`), within the connect timeout.
    pub(super) async fn connect_tcp(&self) -> Result<tokio::net::TcpStream, ProxyError> {
        let addr = self.authority.as_str();
        let stream =
            match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
            {
                Err(_) => return Err(ProxyError::ConnectTimeout),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, endpoint = addr, "connect failed");
                    return Err(ProxyError::Connect);
                }
                Ok(Ok(s)) => s,
            };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, ProxyError> {
        let stream = self.connect_tcp().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ProxyError::Connect)?;
        let endpoint = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, %endpoint, "upstream connection ended with error");
            }
        });
        Ok(sender)
    }
}

/// Keep `c` on `worker`'s idle list (most recent at the back; the stale leave from the front).
fn put<C>(lists: &[Idle<C>], worker: usize, c: C) {
    let now = Instant::now();
    let mut idle = lists[worker.min(lists.len() - 1)]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    while idle
        .front()
        .is_some_and(|(_, t)| now.duration_since(*t) > IDLE_TIMEOUT)
    {
        idle.pop_front();
    }
    if idle.len() < MAX_IDLE {
        idle.push_back((c, now));
    }
}

/// The most recently used of `worker`'s idle connections that is still `usable`.
fn checkout<C>(lists: &[Idle<C>], worker: usize, usable: impl Fn(&C) -> bool) -> Option<C> {
    let mut idle = lists[worker.min(lists.len() - 1)]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    while let Some((c, t)) = idle.pop_back() {
        if t.elapsed() <= IDLE_TIMEOUT && usable(&c) {
            return Some(c);
        }
    }
    None
}
