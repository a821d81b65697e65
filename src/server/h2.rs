//! Our HTTP/2 server, on the `h2` crate: each stream's request future is polled inside its
//! connection's task (a `FuturesUnordered`), instead of hyper's task per stream.
//!
//! Why (issue 20, docs/performance.md): with hyper's server, every stream cost a spawned
//! task, a boxed request future moved into it, hyper's request/response plumbing and a
//! wake-up of the connection's task from another task; ~6k of the ~41k instructions an
//! HTTP/2 request cost (callgrind). The behaviour follows hyper's server item by item
//! (docs/design/research-hyper-h2-server.md): the same settings, request bodies released as
//! they are read, `NO_ERROR` resets as clean ends, client resets watched while a request
//! waits and while its body streams, connection-specific fields stripped, `date` added,
//! `content-length` from an exact body size, END_STREAM on the last DATA frame (or an empty
//! one), trailers, reset codes from the failure, and GOAWAY for a graceful close.
//!
//! The one deliberate difference: a stream's future ends with its connection (hyper's
//! tasks outlive it, only to fail writing). A stream is dropped when the connection ends,
//! so its upstream request is cancelled with it.

use super::{Answer, ConnActivity, GracefulShutdown, Io, RequestGuard};
use crate::proxy::{self, Inbound, body::ProxyBody};
use crate::upstream::body::H2Body;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use h2::server::{Connection, Handshake, SendResponse};
use h2::{Reason, SendStream};
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// hyper's HTTP/2 server settings, every one set (h2's own defaults differ: 64 KiB windows,
/// no stream limit), with canaryd's limits on streams, resets and header lists.
pub(super) fn builder(
    max_streams: u32,
    max_pending_resets: usize,
    max_header_list: u32,
) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_header_list_size(max_header_list)
        .max_concurrent_streams(max_streams)
        .max_send_buffer_size(400 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .max_pending_accept_reset_streams(max_pending_resets);
    b
}

/// One HTTP/2 connection: the handshake, then accepting streams and polling them, until the
/// client or a graceful shutdown closes it. Each request goes to `handler`.
pub(super) struct Conn<H, F> {
    phase: Phase,
    streams: FuturesUnordered<Stream<F>>,
    handler: H,
    activity: Arc<ConnActivity>,
    /// A graceful shutdown asked for during the handshake, applied once it is done.
    closing: bool,
}

// The connection inline: it is the state of the connection's whole life (and the whole
// future is boxed by its task), while the handshake's is needed once.
#[allow(clippy::large_enum_variant)]
enum Phase {
    Shaking(Pin<Box<Handshake<Io, Bytes>>>),
    Serving(Connection<Io, Bytes>),
}

impl<H, F> Conn<H, F>
where
    H: Fn(Request<Inbound>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    pub(super) fn new(
        builder: &h2::server::Builder,
        io: Io,
        activity: Arc<ConnActivity>,
        handler: H,
    ) -> Self {
        Conn {
            phase: Phase::Shaking(Box::pin(builder.handshake(io))),
            streams: FuturesUnordered::new(),
            handler,
            activity,
            closing: false,
        }
    }
}

impl<H, F> Future for Conn<H, F>
where
    H: Fn(Request<Inbound>) -> F + Unpin,
    F: Future<Output = Response<ProxyBody>>,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Phase::Shaking(shake) = &mut this.phase {
            let mut conn = ready!(shake.as_mut().poll(cx))?;
            if this.closing {
                conn.graceful_shutdown();
            }
            this.phase = Phase::Serving(conn);
        }
        let Phase::Serving(conn) = &mut this.phase else {
            unreachable!("the handshake is done")
        };
        loop {
            let mut progressed = false;
            // Accept eagerly (as hyper does): polling the connection also writes what the
            // streams queued and reads what the client sent.
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        progressed = true;
                        let stream = Stream::new(req, respond, &this.handler, &this.activity);
                        this.streams.push(stream);
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    // Closed (after a GOAWAY, once no stream is left, or by the client).
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            // The streams that can go on; a stream that finished queued its last frames, so
            // the connection is polled again to write them now.
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {
                progressed = true;
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

impl<H: Unpin, F> GracefulShutdown for Conn<H, F> {
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.closing = true;
        if let Phase::Serving(conn) = &mut this.phase {
            conn.graceful_shutdown();
        }
    }
}

pin_project_lite::pin_project! {
    /// One stream: its request's future, then its response being sent.
    #[project = StreamProj]
    enum Stream<F> {
        Handling {
            #[pin]
            fut: F,
            // Both taken when the response is there.
            guard: Option<RequestGuard>,
            respond: Option<SendResponse<Bytes>>,
        },
        Sending {
            send: SendStream<Bytes>,
            body: Answer,
            // A chunk waiting for flow-control capacity, and whether it ends the stream.
            waiting: Option<(Bytes, bool)>,
        },
        Done,
    }
}

impl<F: Future<Output = Response<ProxyBody>>> Stream<F> {
    fn new<H: Fn(Request<Inbound>) -> F>(
        req: Request<h2::RecvStream>,
        respond: SendResponse<Bytes>,
        handler: &H,
        activity: &Arc<ConnActivity>,
    ) -> Self {
        let guard = RequestGuard::start(activity.clone());
        let (parts, recv) = req.into_parts();
        // hyper gives a CONNECT an empty body (its stream is the tunnel's, and no tunnel
        // is offered over HTTP/2 here).
        let body = if recv.is_end_stream() || parts.method == Method::CONNECT {
            Inbound::Empty
        } else {
            // h2 has checked the value (a malformed one resets the stream).
            let length = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse().ok());
            Inbound::H2(H2Body::new(recv, length))
        };
        Stream::Handling {
            fut: handler(Request::from_parts(parts, body)),
            guard: Some(guard),
            respond: Some(respond),
        }
    }
}

impl<F: Future<Output = Response<ProxyBody>>> Future for Stream<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let StreamProj::Handling {
            fut,
            guard,
            respond,
        } = self.as_mut().project()
        {
            let Poll::Ready(resp) = fut.poll(cx) else {
                // A client's reset while the request waits ends it (its upstream exchange
                // with it); the guard, dropped unanswered, counts it as premature.
                let reset = respond
                    .as_mut()
                    .is_some_and(|r| r.poll_reset(cx).is_ready());
                if reset {
                    self.set(Stream::Done);
                    return Poll::Ready(());
                }
                return Poll::Pending;
            };
            let (Some(guard), Some(mut respond)) = (guard.take(), respond.take()) else {
                unreachable!("a stream answers once")
            };
            let next = match respond_with(&mut respond, guard.responded(resp)) {
                Some((send, body)) => Stream::Sending {
                    send,
                    body,
                    waiting: None,
                },
                None => Stream::Done,
            };
            self.set(next);
        }
        match self.project() {
            StreamProj::Sending {
                send,
                body,
                waiting,
            } => pipe(send, body, waiting, cx),
            _ => Poll::Ready(()),
        }
    }
}

/// Send the response's head; the stream and the body when a body follows.
fn respond_with(
    respond: &mut SendResponse<Bytes>,
    resp: Response<Answer>,
) -> Option<(SendStream<Bytes>, Answer)> {
    let (mut parts, body) = resp.into_parts();
    // h2 resets a stream whose response carries connection-specific fields: the proxy
    // strips them from upstream answers, this catches any added after (header edits).
    proxy::headers::strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::DATE) {
        super::h1::with_date(|d| parts.headers.insert(header::DATE, d.clone()));
    }
    let end = body.is_end_stream();
    if !end && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(n) = body.size_hint().exact() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(send) => (!end).then_some((send, body)),
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 response refused");
            respond.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// Stream the body into the HTTP/2 stream as its window allows (hyper's `PipeToSendStream`):
/// one chunk at a time is held, waiting for capacity, so a slow client holds back the
/// upstream read instead of filling memory.
fn pipe(
    send: &mut SendStream<Bytes>,
    body: &mut Answer,
    waiting: &mut Option<(Bytes, bool)>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        if waiting.is_some() {
            while send.capacity() == 0 {
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(0))) => {}
                    Poll::Ready(Some(Ok(_))) => break,
                    // The stream is gone (reset, or the connection failed).
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => return watch_reset(send, cx),
                }
            }
            let Some((data, end)) = waiting.take() else {
                unreachable!("checked above")
            };
            if send.send_data(data, end).is_err() || end {
                return Poll::Ready(());
            }
            continue;
        }
        let frame = match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return watch_reset(send, cx),
            Poll::Ready(None) => {
                // No END_STREAM on a frame yet: an empty final one.
                let _ = send.send_data(Bytes::new(), true);
                return Poll::Ready(());
            }
            Poll::Ready(Some(Err(e))) => {
                send.send_reset(reason(&*e));
                return Poll::Ready(());
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if data.is_empty() {
                    if send.send_data(data, end).is_err() || end {
                        return Poll::Ready(());
                    }
                } else {
                    // A claim on the window once a chunk is in hand (never before: that
                    // could pin capacity a stream never uses; hyper #4003); h2 raises it to
                    // the chunk's length when the chunk is sent.
                    send.reserve_capacity(1);
                    *waiting = Some((data, end));
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.reserve_capacity(0);
                    let _ = send.send_trailers(trailers);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// Before waiting: a client's reset wakes the stream, which then ends (its body dropped is
/// counted as the client leaving).
fn watch_reset(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<()> {
    send.poll_reset(cx).map(drop)
}

/// The reset code for a body that failed: an HTTP/2 error's own (an upstream stream reset
/// passes its code on), else `INTERNAL_ERROR` (hyper's `h2_reason`).
fn reason(e: &(dyn std::error::Error + 'static)) -> Reason {
    std::iter::successors(Some(e), |e| e.source())
        .find_map(|e| e.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        .unwrap_or(Reason::INTERNAL_ERROR)
}
