//! The bodies of upstream requests: [`RequestBody`] is empty, or the client's body
//! ([`ClientBody`]) streamed through, optionally in a [`Replayable`] slot so a connect failure
//! can hand it to a retry. An enum instead of `BoxBody`, so the hot path pays no allocation
//! per request.
//!
//! Streamed bodies (these, and the response bodies of [`crate::proxy`]) carry an [`Idle`]
//! timer: a body that goes silent for the route's `timeouts.idle` fails instead of holding a
//! connection (and an upstream request) forever.

use crate::error::{ClientBodyError, IdleTimeout};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;

/// Errors of streamed bodies (hyper's own, or our idle timeout).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Idle timer of a streamed body. The timer is only armed (and boxed) when a poll finds no
/// data ready, so a body that arrives in one piece never touches the timer wheel.
#[derive(Debug)]
pub struct Idle {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    pub fn new(limit: Duration) -> Idle {
        Idle { limit, sleep: None }
    }

    /// Poll `inner`; data or end disarms the timer, a pending poll arms it.
    pub fn poll<B>(
        &mut self,
        inner: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>
    where
        B: Body<Data = Bytes> + ?Sized,
        B::Error: Into<BodyError>,
    {
        match inner.poll_frame(cx) {
            Poll::Ready(f) => {
                if let Some(s) = self.sleep.as_mut() {
                    s.as_mut().reset(tokio::time::Instant::now() + self.limit);
                }
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = self.limit;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(IdleTimeout(limit)))))
            }
        }
    }
}

/// How long, and how many bytes, the rest of an HTTP/2 client body is read and discarded
/// after the upstream exchange stopped needing it ([`ClientBody`]).
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 64 * 1024;

/// The client's request body. Dropped before its end — the upstream answered before the
/// client's END_STREAM arrived, typically a body of known length whose END_STREAM comes in a
/// frame of its own — an HTTP/2 body is read to its end for a moment (bounded by
/// `DRAIN_TIME` and `DRAIN_BYTES`) instead of reset: HTTP/2 would otherwise answer a
/// complete response with RST_STREAM(NO_ERROR), which RFC 9113 §8.1 allows but clients such as
/// Python's httpx report as a failed request (16 % of h2c POSTs under load, measured).
#[derive(Debug)]
pub struct ClientBody {
    /// `None` only once dropped.
    body: Option<Incoming>,
    /// The client speaks HTTP/2 (HTTP/1 closes a connection whose body was left unread).
    h2: bool,
}

impl ClientBody {
    pub fn new(body: Incoming, h2: bool) -> ClientBody {
        ClientBody {
            body: Some(body),
            h2,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut().body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        if !self.h2 || body.is_end_stream() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            use http_body_util::BodyExt;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                let mut left = DRAIN_BYTES;
                while let Some(Ok(frame)) = body.frame().await {
                    let n = frame.data_ref().map_or(0, Bytes::len);
                    if n > left {
                        return;
                    }
                    left -= n;
                }
            })
            .await;
        });
    }
}

/// A client body that can be taken back for a retry as long as nothing of it was sent.
#[derive(Debug, Clone)]
pub struct Replayable(Arc<Mutex<Slot>>);

#[derive(Debug)]
struct Slot {
    body: Option<ClientBody>,
    /// A frame has been handed to an upstream: the body can no longer be replayed.
    started: bool,
}

impl Replayable {
    pub fn new(body: ClientBody) -> Replayable {
        Replayable(Arc::new(Mutex::new(Slot {
            body: Some(body),
            started: false,
        })))
    }

    /// The body, if no byte of it has been sent; the next attempt streams it from the start.
    pub fn take_back(&self) -> Option<Replayable> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.started {
            return None;
        }
        slot.body.take().map(Replayable::new)
    }
}

/// Body of an upstream request.
#[derive(Debug)]
pub enum RequestBody {
    /// No body (GET, HEAD, …, or a client body that was empty).
    Empty,
    /// The client's body, streamed as it arrives.
    Stream(ClientBody, Idle),
    /// The client's body behind a [`Replayable`] slot, for requests that may be retried.
    Replayable(Replayable, Idle),
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody::Empty
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = match self.get_mut() {
            RequestBody::Empty => return Poll::Ready(None),
            RequestBody::Stream(b, idle) => ready!(idle.poll(Pin::new(b), cx)),
            RequestBody::Replayable(r, idle) => {
                let mut slot = r.0.lock().unwrap_or_else(|e| e.into_inner());
                let Some(body) = slot.body.as_mut() else {
                    return Poll::Ready(None);
                };
                let frame = ready!(idle.poll(Pin::new(body), cx));
                slot.started = true;
                frame
            }
        };
        // Whatever broke the client's body is the client's fault: mark it so, through the
        // upstream client's error chain, the exchange is not blamed on the version.
        Poll::Ready(
            frame.map(|f| f.map_err(|e| Box::new(ClientBodyError::classify(&*e)) as BodyError)),
        )
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream(b, _) => b.is_end_stream(),
            RequestBody::Replayable(r, _) => {
                let slot = r.0.lock().unwrap_or_else(|e| e.into_inner());
                slot.body.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream(b, _) => b.size_hint(),
            RequestBody::Replayable(r, _) => {
                let slot = r.0.lock().unwrap_or_else(|e| e.into_inner());
                slot.body
                    .as_ref()
                    .map(|b| b.size_hint())
                    .unwrap_or_else(|| SizeHint::with_exact(0))
            }
        }
    }
}
