//! The one response body type the proxy returns: either the upstream's body streamed through
//! as it arrives, or a small fixed body for errors. An enum instead of `BoxBody` so the hot
//! path pays no allocation per response.

use crate::proxy::GrpcDone;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the upstream, frame by frame (data and trailers), never buffered whole.
    Upstream(Incoming),
    /// A gRPC response: streamed like `Upstream`, and its `grpc-status` trailer is counted
    /// when it passes (a gRPC failure is an HTTP 200).
    Grpc(Incoming, GrpcDone),
    /// A complete small body; `None` once sent.
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(b.into()))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Grpc(b, done) => {
                let frame = ready!(Pin::new(b).poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(trailers) = f.trailers_ref() {
                            done.finish(crate::proxy::grpc_status(trailers));
                        }
                    }
                    // The upstream stream broke: the call did not complete.
                    Some(Err(_)) => done.finish(crate::proxy::GRPC_UNAVAILABLE),
                    // Ended without trailers: no status, which gRPC clients see as UNKNOWN.
                    None => done.finish(crate::proxy::GRPC_UNKNOWN),
                }
                Poll::Ready(frame)
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) | ProxyBody::Grpc(b, _) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) | ProxyBody::Grpc(b, _) => b.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
