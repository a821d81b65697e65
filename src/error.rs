//! Proxy errors and their one mapping to HTTP statuses (the response is built from it in
//! [`crate::proxy`]).
//!
//! Every way a request can fail inside canaryd is a variant here; [`ProxyError::status`] and
//! [`ProxyError::source`] match each one explicitly (no catch-all) so adding a variant forces a
//! decision about its status and about who is at fault. Only upstream faults count against a
//! version (metrics, analysis windows, outlier detection); downstream faults — the client's —
//! count in `canaryd_downstream_errors_total` alone, so one bad client cannot fail a canary.

use http::StatusCode;
use std::time::Duration;

/// nginx's "client closed request": logged, never seen by the client.
pub const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// The body went silent for longer than the route's `timeouts.idle`.
#[derive(Debug, thiserror::Error)]
#[error("body idle for more than {0:?}")]
pub struct IdleTimeout(pub Duration);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request's host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// TCP connect to the endpoint was refused or the address could not be resolved/reached.
    #[error("upstream connect failed")]
    Connect,
    /// TCP connect did not complete within the route's connect timeout.
    #[error("upstream connect timed out")]
    ConnectTimeout,
    /// The upstream did not send response headers within the route's response timeout.
    #[error("upstream response timed out")]
    ResponseTimeout,
    /// The upstream connection broke or spoke invalid HTTP before a response arrived.
    #[error("upstream connection failed before a response")]
    UpstreamReset,
    /// The upstream answered `101 Switching Protocols` to something other than the upgrade
    /// offered (e.g. `h2c` to a WebSocket request, or a 101 nobody asked for).
    #[error("upstream switched to a protocol that was not offered")]
    BadUpgrade,
    /// The client's request body went silent for longer than the route's `timeouts.idle`.
    #[error("request body idle timeout")]
    BodyTimeout,
    /// The client's request body is malformed: broken chunked framing, or shorter than its
    /// `Content-Length` when the client stopped sending.
    #[error("malformed request body")]
    BadBody,
    /// The client went away (connection reset, stream cancelled) before the exchange ended.
    /// Nobody reads the response; the status is nginx's 499 for the access log.
    #[error("client closed the request")]
    ClientClosed,
    /// The request cannot be forwarded as received; the reason is sent to the client.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The version is a Kubernetes Service with no ready endpoint (Gateway API: 503).
    #[error("no ready endpoint for this backend")]
    NoEndpoints,
    /// The version is a Kubernetes backendRef that does not resolve (Gateway API: 500).
    #[error("invalid backend")]
    InvalidBackend,
    /// canaryd could not build what it needed from a valid request (a bug, not a fault of
    /// either side).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Who caused a failure (Pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client: bad framing, too slow, gone.
    Downstream,
    /// The version's endpoint: refused, reset, timed out, bad response.
    Upstream,
    /// canaryd itself.
    Internal,
}

/// Closed set of client failure kinds, the `kind` label of
/// `canaryd_downstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DownstreamErrorKind {
    /// Unparsable request head or body framing, ambiguous `Host`, truncated body.
    BadFraming,
    /// The request body went silent for longer than `timeouts.idle`.
    BodyTimeout,
    /// The client reset or closed before the exchange ended.
    ClientClosed,
    /// No complete request head (or TLS handshake) within `proxy.header_timeout`.
    HeaderTimeout,
}

impl DownstreamErrorKind {
    pub const ALL: [DownstreamErrorKind; 4] = [
        DownstreamErrorKind::BadFraming,
        DownstreamErrorKind::BodyTimeout,
        DownstreamErrorKind::ClientClosed,
        DownstreamErrorKind::HeaderTimeout,
    ];

    /// Position in [`DownstreamErrorKind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        match self {
            DownstreamErrorKind::BadFraming => 0,
            DownstreamErrorKind::BodyTimeout => 1,
            DownstreamErrorKind::ClientClosed => 2,
            DownstreamErrorKind::HeaderTimeout => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DownstreamErrorKind::BadFraming => "bad_framing",
            DownstreamErrorKind::BodyTimeout => "body_timeout",
            DownstreamErrorKind::ClientClosed => "client_closed",
            DownstreamErrorKind::HeaderTimeout => "header_timeout",
        }
    }
}

/// `e` and every error it was caused by, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |s| s.source())
}

/// The client's request body failed; carried through the upstream client's error chain so
/// the exchange is blamed on the client ([`ProxyError::from_exchange`]).
#[derive(Debug, thiserror::Error)]
#[error("client request body failed: {0}")]
pub struct ClientBodyError(pub ProxyError);

impl ClientBodyError {
    /// Classify an error of the client's body stream: our idle timer, or hyper's read error.
    pub fn classify(e: &(dyn std::error::Error + 'static)) -> ClientBodyError {
        use std::io::ErrorKind as K;
        let kind = causes(e).find_map(|s| {
            if s.is::<IdleTimeout>() {
                return Some(ProxyError::BodyTimeout);
            }
            s.downcast_ref::<std::io::Error>()
                .map(|io| match io.kind() {
                    // hyper's decoder: EOF before the framing said the body ends, or broken
                    // chunk syntax.
                    K::UnexpectedEof | K::InvalidData | K::InvalidInput => ProxyError::BadBody,
                    _ => ProxyError::ClientClosed,
                })
        });
        // No I/O cause: the connection ended under the body, or an HTTP/2 stream was reset.
        ClientBodyError(kind.unwrap_or(ProxyError::ClientClosed))
    }
}

/// Closed set of upstream failure kinds, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    /// A response that breaks the protocol (a 101 to an upgrade not offered).
    BadResponse,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::BadResponse,
    ];

    /// Position in [`UpstreamErrorKind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        match self {
            UpstreamErrorKind::Connect => 0,
            UpstreamErrorKind::Timeout => 1,
            UpstreamErrorKind::Reset => 2,
            UpstreamErrorKind::BadResponse => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::BadResponse => "bad_response",
        }
    }
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Connect => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamReset => StatusCode::BAD_GATEWAY,
            ProxyError::BadUpgrade => StatusCode::BAD_GATEWAY,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BadBody => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientClosed => CLIENT_CLOSED,
            ProxyError::Internal(_) | ProxyError::InvalidBackend => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ProxyError::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Who is at fault. `NoRoute` is the client's request for something not served here.
    pub fn source(self) -> ErrorSource {
        match self {
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::BadBody
            | ProxyError::BodyTimeout
            | ProxyError::ClientClosed => ErrorSource::Downstream,
            ProxyError::Connect
            | ProxyError::ConnectTimeout
            | ProxyError::ResponseTimeout
            | ProxyError::UpstreamReset
            | ProxyError::BadUpgrade
            | ProxyError::NoEndpoints => ErrorSource::Upstream,
            ProxyError::Internal(_) | ProxyError::InvalidBackend => ErrorSource::Internal,
        }
    }

    /// Which upstream failure this was, if it was one.
    pub fn upstream_kind(self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::BadBody
            | ProxyError::BodyTimeout
            | ProxyError::ClientClosed
            | ProxyError::Internal(_)
            | ProxyError::InvalidBackend => None,
            ProxyError::Connect | ProxyError::NoEndpoints => Some(UpstreamErrorKind::Connect),
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout => {
                Some(UpstreamErrorKind::Timeout)
            }
            ProxyError::UpstreamReset => Some(UpstreamErrorKind::Reset),
            ProxyError::BadUpgrade => Some(UpstreamErrorKind::BadResponse),
        }
    }

    /// Which client failure this was, if it counts as one (a request for a host or path we
    /// do not serve is answered 404 and is nobody's failure).
    pub fn downstream_kind(self) -> Option<DownstreamErrorKind> {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadBody => {
                Some(DownstreamErrorKind::BadFraming)
            }
            ProxyError::BodyTimeout => Some(DownstreamErrorKind::BodyTimeout),
            ProxyError::ClientClosed => Some(DownstreamErrorKind::ClientClosed),
            ProxyError::NoRoute
            | ProxyError::Connect
            | ProxyError::ConnectTimeout
            | ProxyError::ResponseTimeout
            | ProxyError::UpstreamReset
            | ProxyError::BadUpgrade
            | ProxyError::NoEndpoints
            | ProxyError::InvalidBackend
            | ProxyError::Internal(_) => None,
        }
    }

    /// Classify a failed exchange on an open upstream connection: a failure of the client's
    /// request body ([`ClientBodyError`]) is the client's fault; anything else broke the
    /// upstream side.
    pub fn from_exchange(e: &(dyn std::error::Error + 'static)) -> ProxyError {
        causes(e)
            .find_map(|s| s.downcast_ref::<ClientBodyError>().map(|c| c.0))
            .unwrap_or(ProxyError::UpstreamReset)
    }

    /// Classify a client error from hyper-util's pooled client.
    pub fn from_client(e: &hyper_util::client::legacy::Error) -> ProxyError {
        let exchange = ProxyError::from_exchange(e);
        if exchange.source() == ErrorSource::Downstream {
            return exchange;
        }
        if e.is_connect() {
            let timed_out = causes(e).any(|s| {
                s.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            });
            if timed_out {
                ProxyError::ConnectTimeout
            } else {
                ProxyError::Connect
            }
        } else {
            ProxyError::UpstreamReset
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_index_matches_all() {
        for (i, k) in UpstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{}", k.as_str());
        }
        for (i, k) in DownstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{}", k.as_str());
        }
    }

    #[test]
    fn client_body_failures_are_the_clients_fault() {
        use std::io::{Error, ErrorKind};
        let classify = |e: Error| ClientBodyError::classify(&e).0;
        assert_eq!(
            classify(Error::new(ErrorKind::InvalidInput, "chunk")),
            ProxyError::BadBody
        );
        assert_eq!(
            classify(Error::new(ErrorKind::UnexpectedEof, "eof")),
            ProxyError::BadBody
        );
        assert_eq!(
            classify(Error::from(ErrorKind::ConnectionReset)),
            ProxyError::ClientClosed
        );
        // Wrapped anywhere in an upstream client's error chain, it is still the client's.
        #[derive(Debug, thiserror::Error)]
        #[error("user body")]
        struct Outer(#[source] ClientBodyError);
        let outer = Outer(ClientBodyError(ProxyError::BadBody));
        assert_eq!(ProxyError::from_exchange(&outer), ProxyError::BadBody);
        assert_eq!(
            ProxyError::from_exchange(&Error::other("x")),
            ProxyError::UpstreamReset
        );
        for e in [
            ProxyError::BadBody,
            ProxyError::ClientClosed,
            ProxyError::BodyTimeout,
        ] {
            assert_eq!(e.source(), ErrorSource::Downstream);
            assert!(e.downstream_kind().is_some() && e.upstream_kind().is_none());
        }
    }
}
