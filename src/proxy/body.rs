//! The downstream response body, [`ProxyBody`]: the upstream's body streamed through as it
//! arrives (a gRPC one counting its status at the trailers), or a small fixed body for
//! errors. An enum instead of `BoxBody`, so the hot path pays no allocation per request.

use super::grpc::GrpcDone;
use crate::mirror::compare::Capture;
use crate::upstream::body::{BodyError, Idle, UpstreamBody};
use crate::upstream::pool::Lease;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the upstream, frame by frame (data and trailers), never buffered whole.
    /// A pooled HTTP/1 connection goes back to its pool the moment the body ends.
    Upstream(UpstreamBody, Idle, Option<Lease>, ClientGone),
    /// A gRPC response: streamed like `Upstream`, and its `grpc-status` trailer is counted
    /// when it passes (a gRPC failure is an HTTP 200).
    Grpc(UpstreamBody, Idle, GrpcDone),
    /// A complete small body; `None` once sent.
    Full(Option<Bytes>),
    /// Streamed like `Upstream`, with a bounded copy for the shadow comparison.
    Captured(UpstreamBody, Idle, Option<Lease>, ClientGone, Box<Capture>),
}

impl ProxyBody {
    /// An upstream body; an empty one hands its pooled connection back at once. `gone`
    /// counts the client leaving before the body ended.
    pub fn upstream(
        body: UpstreamBody,
        idle: Idle,
        lease: Option<Lease>,
        mut gone: ClientGone,
    ) -> ProxyBody {
        let ended = body.is_end_stream();
        if ended {
            gone.disarm();
        }
        match lease {
            Some(l) if ended => {
                l.release();
                ProxyBody::Upstream(body, idle, None, gone)
            }
            lease => ProxyBody::Upstream(body, idle, lease, gone),
        }
    }

    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(b.into()))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b, idle, lease, gone) => poll_upstream(b, idle, lease, gone, cx),
            ProxyBody::Captured(b, idle, lease, gone, capture) => {
                let frame = ready!(poll_upstream(b, idle, lease, gone, cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            capture.data(d);
                        }
                        if b.is_end_stream() {
                            capture.end();
                        }
                    }
                    None => capture.end(),
                    Some(Err(_)) => {}
                }
                Poll::Ready(frame)
            }
            ProxyBody::Grpc(b, idle, done) => {
                let frame = ready!(idle.poll(Pin::new(b), cx));
                done.observe(&frame);
                Poll::Ready(frame)
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b, ..) | ProxyBody::Grpc(b, ..) | ProxyBody::Captured(b, ..) => {
                b.is_end_stream()
            }
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b, ..) | ProxyBody::Grpc(b, ..) | ProxyBody::Captured(b, ..) => {
                b.size_hint()
            }
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// One frame of an upstream body: a pooled connection goes back when the body ends; the end
/// or an upstream failure disarms the client-gone counter.
fn poll_upstream(
    b: &mut UpstreamBody,
    idle: &mut Idle,
    lease: &mut Option<Lease>,
    gone: &mut ClientGone,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    let frame = ready!(idle.poll(Pin::new(&mut *b), cx));
    let ended = b.is_end_stream();
    if matches!(frame, None | Some(Ok(_))) && ended {
        if let Some(l) = lease.take() {
            l.release();
        }
    }
    // Ended, or broken by the upstream: either way not the client leaving.
    if ended || matches!(frame, None | Some(Err(_))) {
        gone.disarm();
    }
    Poll::Ready(frame)
}

/// Counts `canaryd_downstream_errors_total{kind="client_closed"}` on its route when dropped
/// armed: hyper drops a response body mid-stream when the client resets or closes the
/// connection, and that is the client's doing, not the version's.
#[derive(Debug)]
pub struct ClientGone(Option<Counter>);

impl ClientGone {
    pub fn new(counter: &Counter) -> ClientGone {
        ClientGone(Some(counter.clone()))
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ClientGone {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.inc();
        }
    }
}
