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

/// Errors of streamed bodies (hyper's own, ours, or the idle timeout).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream's response body: read by hyper's client (HTTP/2, TLS, requests with a body,
/// upgrades), or by our own HTTP/1.1 exchange in the request's task.
#[derive(Debug)]
pub enum UpstreamBody {
    Hyper(Incoming),
    Own(super::h1::OwnBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Own(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Own(b) => b.size_hint(),
        }
    }
}

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
    body: Option<Downstream>,
    /// The client speaks HTTP/2 (HTTP/1 closes a connection whose body was left unread).
    h2: bool,
    /// A mirror's copy of the body, fed as the body streams ([`Tee`]).
    tee: Option<Tee>,
}

impl ClientBody {
    pub fn new(body: Downstream, h2: bool) -> ClientBody {
        ClientBody {
            body: Some(body),
            h2,
            tee: None,
        }
    }

    /// Copy the body to a mirror as it streams.
    pub fn with_tee(mut self, tee: Option<Tee>) -> ClientBody {
        self.tee = tee;
        self
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(b) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(&mut *b).poll_frame(cx));
        if let Some(tee) = this.tee.as_mut() {
            let keep = match &frame {
                Some(Ok(f)) => f.data_ref().is_none_or(|d| tee.data(d)),
                // The end, or the client's failure: the copy ends the same way.
                None => {
                    tee.finish();
                    false
                }
                Some(Err(_)) => false,
            };
            if !keep || b.is_end_stream() {
                if b.is_end_stream() {
                    tee.finish();
                }
                this.tee = None;
            }
        }
        Poll::Ready(frame)
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

/// The client's request body as a server read it: hyper's (`Left`: HTTP/1 requests with a
/// body), or a stream of our own HTTP/2 server (`Right`: [`H2Body`]). `Either` delegates
/// every call and boxes errors into a [`BodyError`].
pub type Downstream = http_body_util::Either<Incoming, H2Body>;

/// An HTTP/2 request body, read as hyper reads one: each chunk's flow-control capacity is
/// released as the consumer takes it (the client's window moves at the upstream's pace), the
/// trailers come after the data, and a reset with `NO_ERROR` (the client stopping early
/// because the answer came) is a clean end, not a failure.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    /// What `content-length` announced and has not arrived yet (h2 checks the length);
    /// `UNKNOWN` without one. Not an `Option`: 8 bytes less keep `proxy::Inbound`, which
    /// every request moves, the size of hyper's body alone.
    left: u64,
    data_done: bool,
}

/// [`H2Body::left`] when the request announced no length.
const UNKNOWN: u64 = u64::MAX;

impl H2Body {
    pub fn new(recv: h2::RecvStream, length: Option<u64>) -> H2Body {
        H2Body {
            recv,
            left: length.unwrap_or(UNKNOWN),
            data_done: false,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        let no_error = |e: &h2::Error| e.reason() == Some(h2::Reason::NO_ERROR);
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if this.left != UNKNOWN {
                        this.left = this.left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) if no_error(&e) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(t) => Poll::Ready(t.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if no_error(&e) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            UNKNOWN => SizeHint::default(),
            n => SizeHint::with_exact(n),
        }
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

/// A mirror's copy of a client body ([`MirrorBody`]) ended before the body did.
const TEE_OPEN: u8 = 0;
/// The copy is complete.
const TEE_DONE: u8 = 1;
/// The body grew past the mirror's `max_body`.
pub const TEE_TOO_LARGE: u8 = 2;
/// The copy fell behind the primary (its buffer was full), or the primary's body stopped.
pub const TEE_FELL_BEHIND: u8 = 3;

/// The primary's side of a mirrored body: every data frame the upstream request sends is also
/// offered to the copy, without ever waiting for it. Over `max` bytes, or when the copy's
/// bounded buffer is full, the copy is given up (and reset), never the primary.
#[derive(Debug)]
pub struct Tee {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    state: Arc<std::sync::atomic::AtomicU8>,
    seen: u64,
    max: u64,
}

/// The copy's side: the frames the [`Tee`] passed, then the end — or an error that resets
/// the copy when the tee gave up.
#[derive(Debug)]
pub struct MirrorBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    state: Arc<std::sync::atomic::AtomicU8>,
    size: SizeHint,
}

/// Frames a copy may lag behind the primary's body before it is given up.
const TEE_FRAMES: usize = 32;

/// A body copy for a mirror: at most `max` bytes, `size` as the client announced it.
pub fn tee(max: u64, size: SizeHint) -> (Tee, MirrorBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(TEE_FRAMES);
    let state = Arc::new(std::sync::atomic::AtomicU8::new(TEE_OPEN));
    (
        Tee {
            tx,
            state: state.clone(),
            seen: 0,
            max,
        },
        MirrorBody { rx, state, size },
    )
}

impl Tee {
    /// Offer one data frame; `false` once the copy is given up.
    fn data(&mut self, d: &Bytes) -> bool {
        self.seen += d.len() as u64;
        if self.seen > self.max {
            self.give_up(TEE_TOO_LARGE);
            return false;
        }
        match self.tx.try_send(d.clone()) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.give_up(TEE_FELL_BEHIND);
                false
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn finish(&mut self) {
        self.give_up(TEE_DONE);
    }

    fn give_up(&mut self, why: u8) {
        use std::sync::atomic::Ordering;
        let _ = self
            .state
            .compare_exchange(TEE_OPEN, why, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl Drop for Tee {
    /// Dropped before the end (the upstream answered early, the client went away): the copy
    /// is incomplete, so it is reset rather than sent short.
    fn drop(&mut self) {
        self.give_up(TEE_FELL_BEHIND);
    }
}

impl MirrorBody {
    /// Why the copy was given up, if it was ([`TEE_TOO_LARGE`], [`TEE_FELL_BEHIND`]).
    pub fn given_up(state: &std::sync::atomic::AtomicU8) -> Option<u8> {
        match state.load(std::sync::atomic::Ordering::Acquire) {
            TEE_OPEN | TEE_DONE => None,
            s => Some(s),
        }
    }

    /// The shared state, to read after the exchange.
    pub fn state(&self) -> Arc<std::sync::atomic::AtomicU8> {
        self.state.clone()
    }
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match ready!(this.rx.poll_recv(cx)) {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => match this.state.load(std::sync::atomic::Ordering::Acquire) {
                TEE_DONE => Poll::Ready(None),
                _ => Poll::Ready(Some(Err("the mirror copy of the body was given up".into()))),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

/// Body of an upstream request.
#[derive(Debug)]
pub enum RequestBody {
    /// No body (GET, HEAD, …, or a client body that was empty).
    Empty,
    /// The client's body, streamed as it arrives. Boxed: every request moves a
    /// `RequestBody`, most of them `Empty` (328 bytes for the request, 264 boxed).
    Stream(Box<ClientBody>, Idle),
    /// The client's body behind a [`Replayable`] slot, for requests that may be retried.
    Replayable(Replayable, Idle),
    /// A mirror's copy of the client's body.
    Mirror(MirrorBody),
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
            RequestBody::Mirror(m) => return Pin::new(m).poll_frame(cx),
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
            RequestBody::Mirror(_) => false,
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
            RequestBody::Mirror(m) => m.size_hint(),
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
