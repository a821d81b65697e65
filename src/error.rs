//! Proxy errors and their one mapping to HTTP responses.
//!
//! Every way a request can fail inside canaryd is a variant here; [`ProxyError::status`] matches
//! each one explicitly (no catch-all) so adding a variant forces a decision about its status.

use crate::body::ProxyBody;
use http::{Response, StatusCode, header};

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
    /// The client's request body went silent for longer than the route's `timeouts.idle`.
    #[error("request body idle timeout")]
    BodyTimeout,
    /// The request cannot be forwarded as received; the reason is sent to the client.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

/// Closed set of upstream failure kinds, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 3] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
    ];

    /// Position in [`UpstreamErrorKind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        match self {
            UpstreamErrorKind::Connect => 0,
            UpstreamErrorKind::Timeout => 1,
            UpstreamErrorKind::Reset => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
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
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Which upstream failure this was, if it was one.
    pub fn upstream_kind(self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::NoRoute | ProxyError::BadRequest(_) | ProxyError::BodyTimeout => None,
            ProxyError::Connect => Some(UpstreamErrorKind::Connect),
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout => {
                Some(UpstreamErrorKind::Timeout)
            }
            ProxyError::UpstreamReset => Some(UpstreamErrorKind::Reset),
        }
    }

    /// A short plain-text response; the body says which kind of failure without leaking
    /// upstream addresses.
    pub fn into_response(self) -> Response<ProxyBody> {
        let body = format!("canaryd: {self}\n");
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }

    /// Classify a failed exchange on an open upstream connection: our request body timing
    /// out is the client's fault (408); anything else broke the upstream side.
    pub fn from_exchange(e: &(dyn std::error::Error + 'static)) -> ProxyError {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = src {
            if s.is::<crate::body::IdleTimeout>() {
                return ProxyError::BodyTimeout;
            }
            src = s.source();
        }
        ProxyError::UpstreamReset
    }

    /// Classify a client error from hyper-util's pooled client.
    pub fn from_client(e: &hyper_util::client::legacy::Error) -> ProxyError {
        if ProxyError::from_exchange(e) == ProxyError::BodyTimeout {
            return ProxyError::BodyTimeout;
        }
        if e.is_connect() {
            let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
            while let Some(s) = src {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    if io.kind() == std::io::ErrorKind::TimedOut {
                        return ProxyError::ConnectTimeout;
                    }
                }
                src = s.source();
            }
            ProxyError::Connect
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
    }
}
