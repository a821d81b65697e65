//! Our own HTTP/1.1 server loop, for plain connections and TLS ones that agreed on HTTP/1.1 by
//! ALPN. The common request — HTTP/1.1, no body, no upgrade, no `Expect`, no `TE` — is read,
//! routed and answered in the connection's task without hyper; at the first message that is
//! anything else, the connection is handed to hyper's HTTP/1 server for the rest of its life,
//! with the bytes read so far, so two parsers never interpret the same bytes.
//!
//! Why: hyper's server side was ~12.5k of the ~33.4k instructions of a proxied keep-alive
//! request (callgrind), and most of the per-connection set-up of a new one. Here a request is
//! parsed in place and answered with one `send` of its head and body (docs/performance.md).
//!
//! What keeps it as strict as hyper's path (the request smuggling concerns):
//! - Heads are parsed by `httparse` with hyper's configuration, the parser hyper itself uses,
//!   and only a head hyper reads as a complete request without a body is served here: any
//!   `Content-Length` or `Transfer-Encoding`, HTTP/1.0, CONNECT, `Upgrade`, `Expect`, `TE`, a
//!   head over hyper's limits and every parse error go to hyper — behind the framing guard
//!   ([`super::h1guard`]), exactly as before, so they get hyper's and the guard's answers.
//! - Of the guard's rules, the ones that can apply to a head without a body are `httparse`'s
//!   own (obs-fold, whitespace before a colon, control bytes) but one: a bare LF ends a line
//!   for `httparse`, so it is checked here, and such a head goes to the guard, which refuses it.
//! - `differential::check` feeds the same bytes to this parser and to hyper's path (guard and
//!   server) and fails on any request served here that hyper's path reads differently, or not
//!   at all (fuzz target `h1_own`; the unit test replays mutated pipelines and the seeds).
//! - Responses are framed by hyper's rules (`role.rs`, `encode_headers`): `Content-Length`
//!   from the header or the body's exact size, else chunked; no body for HEAD, 204 and 304;
//!   `connection: close` when the client asked for it or the server drains; a body that ends
//!   short or fails closes the connection.
//! - As with hyper (`allow_half_close` off), a client that closes its side while its request
//!   is in flight cancels the request; bytes of a next request arriving meanwhile are read
//!   ahead and served after it.

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod differential;

use super::H1_MAX_BUF;
use crate::proxy::headers::{list_ends_with, list_has};
use crate::proxy::{self, ConnInfo, Inbound, body::ProxyBody};
use crate::state::State;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// hyper's limits: header fields per head (`DEFAULT_MAX_HEADERS`) and the request target's
/// length (`MAX_URI_LEN`, beyond which hyper answers 414).
const MAX_HEADERS: usize = 100;
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// The field map kept between requests is dropped past this many fields' room.
const MAX_SPARE_FIELDS: usize = 16;

/// Room made for a read (hyper's first read buffer is 8 KiB too).
const READ_CHUNK: usize = 8 * 1024;

/// Room reserved for a response head: hyper's first write buffer is 8 KiB; a proxied
/// head with its `date`, `server` and a few fields is well under 1 KiB.
const HEAD_ROOM: usize = 1024;

/// Body data up to this size is copied behind the head (one `writev` entry less); larger
/// frames are written from their own buffer.
const COPY_MAX: usize = 8 * 1024;

/// How a connection left this loop.
pub(super) enum Ended {
    /// Closed, or to be closed: by the client, an error, the drain or the idle timeout.
    Closed,
    /// Idle past the linger with nothing read: the socket is parked until `deadline`.
    Idle(Instant),
    /// A message hyper serves: it takes the connection, these bytes first.
    Handoff(Bytes),
    /// The connection starts with HTTP/2's preface (or what was read of it, then an error):
    /// our HTTP/2 server takes it, these bytes first. Only with [`Conn::preface`].
    Preface(Bytes),
    /// No request head arrived in time (counted by the caller).
    HeaderTimeout,
}

/// One connection, as the accept loop hands it over: plain TCP, or TLS that did not agree on
/// HTTP/2 by ALPN.
pub(super) struct Conn<'a, S> {
    pub stream: &'a mut S,
    /// Nagle's algorithm on the socket so far.
    pub nagle: Nagle,
    /// Whether the first bytes may be HTTP/2's preface (prior knowledge, on a plain connection
    /// or TLS without ALPN): looked for in the first head that is not one served here. Read
    /// as the first request, not peeked at first: a peek was one more system call and timer
    /// per connection.
    pub preface: bool,
    pub state: &'a Arc<State>,
    pub info: &'a ConnInfo,
    pub header_timeout: Duration,
    pub idle: Duration,
    /// Idle this long between requests, the connection is handed back to be parked (plain
    /// connections); `None`: it waits for its next request until `idle`.
    pub linger: Option<Duration>,
    pub drain: &'a mut watch::Receiver<bool>,
}

/// A connection as the loop sees it: plain TCP or TLS.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Whether closing sends a message of its own (TLS's `close_notify`) before the socket
    /// closes. A plain socket's close sends its FIN: `shutdown` first would only be one more
    /// system call per connection that closes after its response.
    const SAYS_GOODBYE: bool;
    /// Turn Nagle's algorithm off (`TCP_NODELAY`).
    fn no_delay(&self);
    /// Write some of `bufs`, as `poll_write_vectored`.
    fn poll_send(
        &mut self,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write_vectored(cx, bufs)
    }
}

impl Transport for tokio::net::TcpStream {
    const SAYS_GOODBYE: bool = false;
    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }

    fn poll_send(
        &mut self,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        super::poll_send(self, cx, bufs)
    }
}

impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    const SAYS_GOODBYE: bool = true;
    fn no_delay(&self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }
}

/// Nagle's algorithm on a connection. It holds back a small write only while data written
/// earlier is unacknowledged, so a connection's first write goes out at once with it on. It
/// is turned off just before the second write (a second response, or a response written in
/// parts): a connection that closes after one response, as every one does with
/// `Connection: close`, never makes the `setsockopt` call. nginx sets `TCP_NODELAY` only when
/// a connection turns keep-alive, for the same reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Nagle {
    /// On, nothing written yet.
    Unwritten,
    /// On, written to: the next write turns it off first.
    Written,
    Off,
}

/// Whether `read` is HTTP/2's connection preface, or the start of it, or starts with it.
pub(super) fn is_preface(read: &[u8]) -> bool {
    let n = read.len().min(super::H2_PREFACE.len());
    n > 0 && read[..n] == super::H2_PREFACE[..n]
}

/// Serve requests until the connection closes, idles or needs hyper.
pub(super) async fn serve<S: Transport>(mut c: Conn<'_, S>) -> Ended {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    // The last response's field map, cleared: the next request's fields go in it (hyper's
    // trick: a map allocated per request costs ~400 instructions).
    let mut spare = HeaderMap::new();
    // The waits between requests persist across them: a new timer and drain watch per
    // request cost ~700 instructions. The linger timer is re-armed lazily, from when the
    // last response was written: a busy connection sees it fire once per linger, not once
    // per request.
    let linger = c.linger.unwrap_or(c.idle).min(c.idle);
    let mut drain = c.drain.clone();
    let mut drained = std::pin::pin!(drain.changed());
    let mut timer = std::pin::pin!(tokio::time::sleep(linger));
    let mut last = Instant::now();
    let mut wait = false;
    let mut nagle = c.nagle;
    loop {
        if wait && buf.is_empty() {
            if *c.drain.borrow() {
                return Ended::Closed;
            }
            // The read itself is the wait: one readiness check per request, not two.
            if buf.capacity() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            let next = std::future::poll_fn(|cx| {
                match std::pin::pin!(c.stream.read_buf(&mut buf)).poll(cx) {
                    Poll::Ready(Ok(1..)) => return Poll::Ready(Next::Ready),
                    // The client closed between requests (or the socket failed).
                    Poll::Ready(_) => return Poll::Ready(Next::Close),
                    Poll::Pending => {}
                }
                if drained.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Close);
                }
                loop {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let due = last + linger;
                    if Instant::now() >= due {
                        return Poll::Ready(if linger >= c.idle {
                            Next::Close
                        } else {
                            Next::Idle(last + c.idle)
                        });
                    }
                    timer.as_mut().reset(due);
                }
            });
            match next.await {
                Next::Ready => {}
                Next::Idle(at) => return Ended::Idle(at),
                Next::Close => return Ended::Closed,
            }
        }
        let first = !wait;
        wait = true;
        let (req, close) = match read_head(&mut c, &mut buf, &mut spare, first).await {
            Head::Request(req, close) => (req, close),
            Head::NotYet => continue,
            Head::Handoff if first && c.preface && is_preface(&buf) => {
                return Ended::Preface(buf.freeze());
            }
            Head::Handoff => return Ended::Handoff(buf.freeze()),
            Head::Closed => return Ended::Closed,
            Head::TimedOut => return Ended::HeaderTimeout,
        };
        let head = req.method() == Method::HEAD;
        // Like hyper, look for the client's end only with nothing read ahead.
        let mut watch = buf.is_empty();
        if watch && buf.capacity() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        let mut answer = std::pin::pin!(proxy::handle(c.state.clone(), c.info.clone(), req));
        let stream = &mut *c.stream;
        let resp = std::future::poll_fn(|cx| {
            if let Poll::Ready(resp) = answer.as_mut().poll(cx) {
                return Poll::Ready(Some(resp));
            }
            if !watch {
                return Poll::Pending;
            }
            // Only the end of the stream counts (hyper's rule: an end of stream in the middle
            // of a message ends the connection, which cancels the request).
            match std::pin::pin!(stream.read_buf(&mut buf)).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(None),
                // The next request's bytes: stop looking (as hyper does once it has read
                // ahead); they are parsed after this response.
                Poll::Ready(Ok(_)) => {
                    watch = false;
                    Poll::Pending
                }
            }
        })
        .await;
        let Some(resp) = resp else {
            return Ended::Closed;
        };
        let close = close || *c.drain.borrow();
        match write_response(
            c.stream, &mut nagle, resp, head, close, &mut out, &mut spare,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                if S::SAYS_GOODBYE {
                    let _ = c.stream.shutdown().await;
                }
                return Ended::Closed;
            }
            Err(_) => return Ended::Closed,
        }
        last = Instant::now();
        if out.capacity() > 2 * COPY_MAX {
            out = Vec::new();
        }
    }
}

enum Next {
    Ready,
    Idle(Instant),
    Close,
}

// The request is moved out once per request; boxing it would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// A request to serve here, and whether the client asked to close after it.
    Request(Request<Inbound>, bool),
    /// The readiness was stale: nothing to read yet.
    NotYet,
    Handoff,
    Closed,
    TimedOut,
}

/// Read until `buf` starts with a complete head, and take it.
/// `first`: the connection's first request (its header timeout starts now: a client may
/// finish a TLS handshake and send nothing).
async fn read_head<S>(
    c: &mut Conn<'_, S>,
    buf: &mut BytesMut,
    spare: &mut HeaderMap,
    first: bool,
) -> Head
where
    S: AsyncRead + Unpin,
{
    // hyper's header timeout, from the first byte of the head.
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match parse(buf, spare) {
                Parsed::Request(req, close) => return Head::Request(req, close),
                Parsed::Partial if buf.len() < H1_MAX_BUF => {}
                Parsed::Partial | Parsed::Hyper => return Head::Handoff,
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        // Through `AsyncRead`, not `try_read`: a read shorter than the room given clears the
        // socket's readiness, so the wait for the next request does not start with a read
        // that finds nothing (one system call per request).
        let read = match c.stream.read_buf(buf).now_or_never() {
            Some(read) => read,
            None if buf.is_empty() && !first => return Head::NotYet,
            None => {
                let at = *deadline.get_or_insert_with(|| Instant::now() + c.header_timeout);
                match tokio::time::timeout_at(at, c.stream.read_buf(buf)).await {
                    Ok(read) => read,
                    Err(_) => return Head::TimedOut,
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {}
        }
    }
}

/// What a parse of the start of the buffer found.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    /// A request served here (its head taken from the buffer), and whether it asked to close.
    Request(Request<Inbound>, bool),
    /// The head is not complete yet.
    Partial,
    /// hyper's: a body, an upgrade, HTTP/1.0, a parse error, a limit reached…
    Hyper,
}

/// Parse the head at the start of `buf` as hyper would, taking it out of `buf` when it is
/// one this loop serves (its fields go into `spare`'s allocation).
pub(crate) fn parse(buf: &mut BytesMut, spare: &mut HeaderMap) -> Parsed {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    if len > H1_MAX_BUF || req.version != Some(1) {
        return Parsed::Hyper;
    }
    // The one framing rule of the guard that `httparse` does not apply to a head: every line
    // ends in CRLF (a bare LF is how some back ends are made to see other boundaries).
    if bare_lf(&buf[..len]) {
        return Parsed::Hyper;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    if method == Method::CONNECT || path.len() > MAX_URI_LEN {
        return Parsed::Hyper;
    }
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let at = s.as_ptr() as usize - base;
        at..at + s.len()
    };
    let path = range(path.as_bytes());
    let mut close = false;
    // Where each field is in the head, so its value can be a slice of it (no copy).
    let mut spans: smallvec::SmallVec<[_; MAX_HEADERS]> = smallvec::SmallVec::new();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        // Only these few change how hyper reads or answers the message.
        let special = matches!(
            name.first(),
            Some(b'c' | b'C' | b't' | b'T' | b'u' | b'U' | b'e' | b'E')
        );
        if special {
            if name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"te")
            {
                return Parsed::Hyper;
            }
            if name.eq_ignore_ascii_case(b"connection") && list_has(h.value, b"close") {
                close = true;
            }
        }
        spans.push((range(name), range(h.value)));
    }
    let head = buf.split_to(len).freeze();
    let request = build(&head, path, &spans, method, spare);
    match request {
        Some(req) => Parsed::Request(req, close),
        None => {
            // hyper answers what `http` refuses (a request target it cannot parse): give the
            // head back in front of the rest.
            let mut back = BytesMut::with_capacity(head.len() + buf.len());
            back.extend_from_slice(&head);
            back.extend_from_slice(buf);
            *buf = back;
            Parsed::Hyper
        }
    }
}

/// The request a parsed head describes; `None` where `http` refuses a part of it (hyper
/// answers those).
fn build(
    head: &Bytes,
    path: std::ops::Range<usize>,
    spans: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
    method: Method,
    spare: &mut HeaderMap,
) -> Option<Request<Inbound>> {
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    let mut headers = std::mem::take(spare);
    headers.reserve(spans.len());
    for (name, value) in spans {
        let name = HeaderName::from_bytes(&head[name.clone()]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.clone())).ok()?;
        headers.append(name, value);
    }
    let mut req = Request::new(Inbound::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

/// Whether a line of `head` ends in a bare LF. Branch-free over the bytes (the compiler
/// vectorises it): heads are short, and a search per line cost ~400 instructions.
fn bare_lf(head: &[u8]) -> bool {
    let first = head.first() == Some(&b'\n');
    let rest = head[1.min(head.len())..]
        .iter()
        .zip(head)
        .fold(false, |bad, (&b, &before)| {
            bad | ((b == b'\n') & (before != b'\r'))
        });
    first | rest
}

/// How much body a response has, as hyper's dispatcher classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyLen {
    /// Ended already.
    None,
    Known(u64),
    Unknown,
}

/// The body's framing on the wire, and whether the connection closes after it.
#[derive(Debug, PartialEq, Eq)]
struct Encoding {
    /// `None`: chunked. `Some(0)`: no body bytes at all.
    length: Option<u64>,
    last: bool,
}

/// Write `resp` to the client; `Ok(true)` when the connection may carry another request.
async fn write_response<S: Transport>(
    stream: &mut S,
    nagle: &mut Nagle,
    resp: Response<ProxyBody>,
    head: bool,
    close: bool,
    out: &mut Vec<u8>,
    spare: &mut HeaderMap,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let len = if body.is_end_stream() {
        BodyLen::None
    } else {
        body.size_hint()
            .exact()
            .map_or(BodyLen::Unknown, BodyLen::Known)
    };
    out.clear();
    // Room for the head and a small body at once: grown line by line from empty (a new
    // connection's first response), it was reallocated three times (~1.3k instructions).
    let small_body = match len {
        BodyLen::Known(n) if n <= COPY_MAX as u64 => n as usize,
        _ => 0,
    };
    out.reserve(HEAD_ROOM + small_body);
    let Some(enc) = encode_head(&parts, len, head, close, out) else {
        // A response hyper would refuse to write (conflicting lengths): the client gets
        // nothing and the connection closes, as there.
        return Ok(false);
    };
    // Kept for the next request's fields, unless a response with many made it large.
    if parts.headers.capacity() <= 4 * MAX_SPARE_FIELDS {
        *spare = parts.headers;
        spare.clear();
    }
    let mut left = match enc.length {
        Some(0) => {
            write_all(&mut *stream, nagle, &mut [IoSlice::new(out)]).await?;
            return Ok(!enc.last);
        }
        Some(n) => n,
        None => u64::MAX,
    };
    let chunked = enc.length.is_none();
    loop {
        // The next frame; what is queued goes out while the body has nothing ready.
        let frame = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(Some(f)),
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        let frame = match frame {
            None => {
                write_all(&mut *stream, nagle, &mut [IoSlice::new(out)]).await?;
                out.clear();
                continue;
            }
            Some(None) => break,
            // The upstream's body failed: the client must not take it as complete.
            Some(Some(Err(_))) => {
                write_all(&mut *stream, nagle, &mut [IoSlice::new(out)]).await?;
                return Ok(false);
            }
            Some(Some(Ok(frame))) => frame,
        };
        // Trailers are not sent: the client did not offer `TE: trailers` (hyper's rule).
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            chunk_size(out, data.len());
        } else {
            if data.len() as u64 > left {
                // More than the length said: what fits goes out, then the connection closes.
                data.truncate(left as usize);
                out.extend_from_slice(&data);
                write_all(&mut *stream, nagle, &mut [IoSlice::new(out)]).await?;
                return Ok(false);
            }
            left -= data.len() as u64;
        }
        if data.len() <= COPY_MAX {
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
        } else {
            let crlf: &[u8] = if chunked { b"\r\n" } else { b"" };
            write_all(
                &mut *stream,
                nagle,
                &mut [IoSlice::new(out), IoSlice::new(&data), IoSlice::new(crlf)],
            )
            .await?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    write_all(&mut *stream, nagle, &mut [IoSlice::new(out)]).await?;
    // A body shorter than its length: the client is still waiting for the rest.
    Ok(!enc.last && (chunked || left == 0))
}

/// A chunk's size line.
fn chunk_size(out: &mut Vec<u8>, n: usize) {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = n;
    loop {
        i -= 1;
        hex[i] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The response head, framed by hyper's server rules (`role.rs`, `Server::encode` and
/// `encode_headers`); `None` where hyper refuses the response.
fn encode_head(
    parts: &http::response::Parts,
    mut len: BodyLen,
    head: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Option<Encoding> {
    let mut status = parts.status;
    let mut last = close;
    let mut headers = &parts.headers;
    let empty;
    let informational = status.is_informational();
    if informational {
        // A final response cannot be 1xx: hyper sends a 500 with no fields (not even the
        // client's close) and closes. hyper writes a 101 as it is, without a body; a 101 to
        // a request that asked for no upgrade (every one served here) is an upstream's
        // protocol error (RFC 9110 §15.2.2), so it gets the 500 too.
        status = StatusCode::INTERNAL_SERVER_ERROR;
        len = BodyLen::None;
        last = true;
        empty = HeaderMap::new();
        headers = &empty;
    }
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(r) => out.extend_from_slice(r.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    let no_content = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_chunk = !head && !no_content;
    let can_length = !no_content;
    let mut length: Option<u64> = Some(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    // hyper's state (`encode_headers`): the field whose line is written and not yet ended
    // (`is_name_written`), and whether its `transfer-encoding` lacked a final `chunked`.
    let mut open: Option<&HeaderName> = None;
    let mut te_chunked = true;
    let mut prev_len = None;
    // The client's close, as hyper adds it before encoding (`Conn::enforce_version`): a
    // `close` value appended to a `connection` field that has none, else a field of its own
    // after the others. A 1xx became a 500 without fields: nothing added.
    let add_close = close && !informational;
    // Looked up only when the client asked to close: a lookup per response costs.
    let conn_close = add_close
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| list_has(v.as_bytes(), b"close"));
    let close_value = HeaderValue::from_static("close");
    let mut fields = headers.iter().peekable();
    let mut added = false;
    loop {
        let (name, value) = match fields.next() {
            Some(f) => f,
            None if add_close && !added && !headers.contains_key(header::CONNECTION) => {
                added = true;
                (&header::CONNECTION, &close_value)
            }
            None => break,
        };
        let continues = open == Some(name);
        if !continues {
            close_line(out, open.take(), te_chunked);
        }
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len && !continues {
                    return None;
                }
                match len {
                    BodyLen::Known(n) => {
                        if !continues {
                            length = Some(n);
                            open_line(out, name, value);
                            open = Some(name);
                            wrote_len = true;
                        }
                        continue;
                    }
                    BodyLen::Unknown => {
                        // Digits only, as hyper's encoder reads it: not a list of equal
                        // values, which a reader of responses accepts.
                        let n = super::h1guard::digits(value.as_bytes())?;
                        match prev_len {
                            Some(p) if p != n => return None,
                            Some(_) => {}
                            None => {
                                prev_len = Some(n);
                                length = Some(n);
                                open_line(out, name, value);
                                open = Some(name);
                                wrote_len = true;
                            }
                        }
                        continue;
                    }
                    // No body: the length stays only on an answer to HEAD (a line of its
                    // own, so a second one is a conflict, as in hyper).
                    BodyLen::None if head => wrote_len = true,
                    BodyLen::None => continue,
                }
            }
            header::TRANSFER_ENCODING => {
                if wrote_len && !continues {
                    return None;
                }
                if !can_chunk {
                    continue;
                }
                wrote_len = true;
                length = None;
                te_chunked = list_ends_with(value.as_bytes(), b"chunked");
            }
            header::CONNECTION if list_has(value.as_bytes(), b"close") => last = true,
            header::TRAILER if !can_chunk => continue,
            header::DATE => wrote_date = true,
            _ => {}
        }
        if matches!(
            *name,
            header::CONNECTION | header::TRANSFER_ENCODING | header::TRAILER
        ) {
            if continues {
                out.extend_from_slice(b", ");
                out.extend_from_slice(value.as_bytes());
            } else {
                open_line(out, name, value);
                open = Some(name);
            }
            // The client's close joins the last line of a `connection` field without one.
            let ends = fields.peek().is_none_or(|(next, _)| *next != name);
            if *name == header::CONNECTION && ends && add_close && !conn_close && !added {
                added = true;
                last = true;
                out.extend_from_slice(b", close");
            }
        } else {
            line(out, name, value);
        }
    }
    close_line(out, open, te_chunked);
    if !wrote_len {
        match len {
            BodyLen::Unknown if can_chunk => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                length = None;
            }
            // Not chunked where it cannot be (HEAD, 204, 304): no body either (below).
            BodyLen::Unknown => {}
            BodyLen::None | BodyLen::Known(0) => {
                if can_length && !head {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
            }
            BodyLen::Known(n) => {
                if can_length {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                    length = Some(n);
                }
            }
        }
    }
    if !can_chunk {
        length = Some(0);
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(Encoding { length, last })
}

fn line(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    open_line(out, name, value);
    out.extend_from_slice(b"\r\n");
}

/// A line that later values of the same field may continue ([`close_line`] ends it).
fn open_line(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
}

/// End a joined line; a `transfer-encoding` whose last coding is not `chunked` gets it.
fn close_line(out: &mut Vec<u8>, open: Option<&HeaderName>, te_chunked: bool) {
    if let Some(name) = open {
        if *name == header::TRANSFER_ENCODING && !te_chunked {
            out.extend_from_slice(b", chunked");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The `Date` value, formatted once a second per thread (as hyper caches it).
fn date(out: &mut Vec<u8>) {
    with_date(|v| out.extend_from_slice(v.as_bytes()));
}

/// Call `f` with this second's `Date` value, formatted once a second per thread (as hyper
/// caches it); shared by both servers (HTTP/2 clones it: a reference count, no copy).
pub(super) fn with_date<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, value)| {
        if *at != secs {
            let s = httpdate::fmt_http_date(now);
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(s)) {
                *value = v;
            }
            *at = secs;
        }
        f(value)
    })
}

/// Write every byte of `bufs` (a TLS stream's records included: it is flushed).
async fn write_all<S: Transport>(
    stream: &mut S,
    nagle: &mut Nagle,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        // Every write counts, the rest of a partial one too.
        match *nagle {
            Nagle::Unwritten => *nagle = Nagle::Written,
            Nagle::Written => {
                stream.no_delay();
                *nagle = Nagle::Off;
            }
            Nagle::Off => {}
        }
        match std::future::poll_fn(|cx| stream.poll_send(cx, bufs)).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => IoSlice::advance_slices(&mut bufs, n),
        }
    }
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Requests this loop serves, and ones it leaves to hyper, in one pipeline.
    const GOOD: &[u8] =
        b"GET /a?q=1 HTTP/1.1\r\nHost: x\r\nCookie: a=b; c=d\r\nX-Two: 1\r\nX-Two: 2\r\n\r\n\
        \r\nDELETE http://h/b HTTP/1.1\r\nhost: y\r\nConnection: keep-alive\r\n\r\n\
        POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
        GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    /// Nagle's algorithm stays on for a connection's first write (nothing unacknowledged for
    /// it to wait for, and no `setsockopt` for a connection that closes after one response)
    /// and is off from the second, the rest of a partial write included.
    #[tokio::test]
    async fn nagle_is_turned_off_at_a_connections_second_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut nagle = Nagle::Unwritten;
        write_all(&mut server, &mut nagle, &mut [IoSlice::new(b"one ")])
            .await
            .unwrap();
        assert!(!server.nodelay().unwrap(), "off before the first write");
        assert_eq!(nagle, Nagle::Written);
        write_all(&mut server, &mut nagle, &mut [IoSlice::new(b"two")])
            .await
            .unwrap();
        assert!(server.nodelay().unwrap(), "still on at the second write");
        assert_eq!(nagle, Nagle::Off);
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two");
    }

    /// The differential check (the fuzz target's, `h1_own`) over pipelines with mutations and
    /// over `fuzz/seeds/h1_differential`: every request served here is one hyper's path reads
    /// the same way.
    #[test]
    fn every_request_served_here_is_read_the_same_by_hypers_path() {
        let mut cases: Vec<Vec<u8>> = vec![GOOD.to_vec()];
        for odd in [
            &b"GET /e HTTP/1.1\nHost: x\n\n"[..],
            b"GET /e HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /e HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /e HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
            b"GET /e HTTP/1.1\r\nHost: x\r\n Folded: 1\r\n\r\n",
            b"GET /e HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /e\x7f HTTP/1.1\r\n\r\n",
        ] {
            cases.push([&GOOD[..GOOD.len() - 60], odd].concat());
            cases.push([odd, GOOD].concat());
        }
        let alphabet =
            b"\r\n :;,/?#%\t\x00\x7f\xff0123456789GETPOSTHTTP/1.01closeContent-LengthUpgradeHost";
        let mutated = crate::server::h1guard::differential::mutations(&cases, alphabet, 400, 21);
        cases.extend(mutated);
        cases.extend(crate::server::h1guard::differential::committed_seeds());
        for case in &cases {
            differential::check(case);
        }
        // Not vacuous: GOOD's first two requests are served here (the POST goes to hyper).
        let served = differential::own_view(GOOD);
        assert_eq!(served.len(), 2, "{served:?}");
        assert!(
            served[1].1.starts_with("DELETE http://h/b HTTP/1.1"),
            "{served:?}"
        );
    }

    fn head(status: u16, fields: &[(&str, &str)]) -> http::response::Parts {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in fields {
            r.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r.into_parts().0
    }

    /// The head as written, without its `date` line, and its framing.
    fn encoded(
        parts: &http::response::Parts,
        len: BodyLen,
        head_req: bool,
        close: bool,
    ) -> (String, Option<Encoding>) {
        let mut out = Vec::new();
        let enc = encode_head(parts, len, head_req, close, &mut out);
        let text = String::from_utf8(out).unwrap();
        let text = text
            .split("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n");
        (text, enc)
    }

    /// A body that has not ended before it is polled, of `exact` length if known (an
    /// upstream's, as `ProxyBody` gives it: a known length of 0 is not an ended body).
    struct TestBody {
        data: Option<Bytes>,
        exact: Option<u64>,
    }

    impl Body for TestBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            self.exact.map_or_else(
                http_body::SizeHint::default,
                http_body::SizeHint::with_exact,
            )
        }
    }

    /// The head hyper's HTTP/1 server writes for a response of `status` and `fields` with a
    /// body of `len`, to a GET (or HEAD) that asked to close or not, without its `date` line;
    /// `None` when it writes no head before closing.
    async fn hyper_head(
        status: u16,
        fields: &[(&str, &str)],
        len: BodyLen,
        head_req: bool,
        close: bool,
    ) -> Option<String> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let parts = head(status, fields);
        let svc = hyper::service::service_fn(move |_req| {
            let body: http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> =
                match len {
                    BodyLen::None => http_body_util::Empty::new().boxed(),
                    BodyLen::Known(n) => TestBody {
                        data: (n > 0).then(|| Bytes::from(vec![b'x'; n as usize])),
                        exact: Some(n),
                    }
                    .boxed(),
                    BodyLen::Unknown => TestBody {
                        data: Some(Bytes::from_static(b"xxxxx")),
                        exact: None,
                    }
                    .boxed(),
                };
            let mut r = Response::new(body);
            *r.status_mut() = parts.status;
            *r.headers_mut() = parts.headers.clone();
            std::future::ready(Ok::<_, std::convert::Infallible>(r))
        });
        let conn = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), svc),
        );
        let (mut rd, mut wr) = tokio::io::split(client);
        let method = if head_req { "HEAD" } else { "GET" };
        let close = if close { "connection: close\r\n" } else { "" };
        wr.write_all(format!("{method} / HTTP/1.1\r\nhost: x\r\n{close}\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        conn.abort();
        read.expect("hyper neither wrote a head nor closed");
        let text = String::from_utf8(got).unwrap();
        let end = text.find("\r\n\r\n")?;
        Some(
            text[..end + 2]
                .split("\r\n")
                .filter(|l| !l.starts_with("date: "))
                // hyper's quirk: after a `transfer-encoding` that lacks a final `chunked`,
                // it ends every later joined line (`connection`, `trailer`) with
                // ", chunked" too; ours adds it to `transfer-encoding` alone.
                .map(|l| match l.strip_suffix(", chunked") {
                    Some(rest) if !l.starts_with("transfer-encoding: ") => rest,
                    _ => l,
                })
                .collect::<Vec<_>>()
                .join("\r\n")
                + "\r\n",
        )
    }

    /// Our response heads against hyper's server, over every combination of statuses,
    /// framing fields, body kinds, HEAD and the client's close: the head text must be the
    /// same (without `date`), and where hyper writes no head, ours refuses too.
    #[tokio::test]
    async fn response_heads_match_hypers_server() {
        // Not 101: hyper writes it as it is; ours answers 500 (see `encode_head`).
        let statuses = [100, 103, 200, 201, 204, 205, 304, 404, 503];
        let field_sets: &[&[(&str, &str)]] = &[
            &[],
            &[("x-a", "1"), ("x-b", "2"), ("x-a", "3")],
            &[("content-length", "5")],
            &[("content-length", "3")],
            &[("content-length", "0")],
            &[("content-length", "5"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "5, 5")],
            &[("content-length", "abc")],
            &[("transfer-encoding", "chunked")],
            &[("transfer-encoding", "gzip")],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            &[("connection", "close")],
            &[("connection", "keep-alive")],
            &[("connection", "x-hop"), ("x-hop", "1")],
            &[("connection", "keep-alive"), ("connection", "close")],
            &[("date", "Mon, 01 Jan 2001 00:00:00 GMT")],
            &[("server", "origin"), ("vary", "accept")],
        ];
        let lens = [
            BodyLen::None,
            BodyLen::Known(0),
            BodyLen::Known(5),
            BodyLen::Unknown,
        ];
        let mut compared = 0;
        let mut differ = Vec::new();
        for status in statuses {
            for fields in field_sets {
                for len in lens {
                    // A length field that disagrees with a body of known size: hyper's debug
                    // builds assert (it trusts the field), and with a body of unknown size
                    // the body ends off its length. Neither is a framing rule to compare.
                    let body_size = match len {
                        BodyLen::Known(n) => Some(n),
                        BodyLen::Unknown => Some(5),
                        BodyLen::None => None,
                    };
                    let disagrees = fields.iter().any(|(k, v)| {
                        *k == "content-length"
                            && body_size.is_some_and(|n| v.parse::<u64>().is_ok_and(|v| v != n))
                    });
                    for head_req in [false, true] {
                        if disagrees && !(head_req && len == BodyLen::Known(0)) {
                            continue;
                        }
                        for close in [false, true] {
                            let theirs = hyper_head(status, fields, len, head_req, close).await;
                            let (mine, enc) = encoded(&head(status, fields), len, head_req, close);
                            let case = format!(
                                "status {status}, fields {fields:?}, body {len:?}, HEAD {head_req}, close {close}"
                            );
                            match theirs {
                                Some(theirs) if enc.is_none() => {
                                    differ.push(format!(
                                        "{case}: ours refuses, hyper writes {theirs:?}"
                                    ));
                                }
                                Some(theirs) if mine != theirs => {
                                    differ.push(format!(
                                        "{case}:\n  ours  {mine:?}\n  hyper {theirs:?}"
                                    ));
                                }
                                Some(_) => compared += 1,
                                None if enc.is_some() => {
                                    differ.push(format!(
                                        "{case}: hyper writes nothing, ours {mine:?}"
                                    ));
                                }
                                None => {}
                            }
                        }
                    }
                }
            }
        }
        assert!(
            differ.is_empty(),
            "{} differences:\n{}",
            differ.len(),
            differ.join("\n")
        );
        assert!(compared > 1000, "{compared}");
    }

    /// hyper's framing rules (role.rs, `Server::encode_headers`), case by case.
    #[test]
    fn response_heads_are_framed_by_hypers_rules() {
        let enc = |length, last| Some(Encoding { length, last });
        // A known length from the body, written once.
        let (t, e) = encoded(&head(200, &[("x-a", "1")]), BodyLen::Known(5), false, false);
        assert_eq!(t, "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(e, enc(Some(5), false));
        // Unknown: chunked; the client's close is announced.
        let (t, e) = encoded(&head(201, &[]), BodyLen::Unknown, false, true);
        // (hyper adds the close to the fields before it encodes, so it comes first.)
        assert_eq!(
            t,
            "HTTP/1.1 201 Created\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(e, enc(None, true));
        // A length field with an unknown body frames it.
        let (t, e) = encoded(
            &head(200, &[("content-length", "7")]),
            BodyLen::Unknown,
            false,
            false,
        );
        assert_eq!(t, "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(e, enc(Some(7), false));
        // Conflicting lengths: hyper refuses to write the response.
        let (_, e) = encoded(
            &head(200, &[("content-length", "7"), ("content-length", "8")]),
            BodyLen::Unknown,
            false,
            false,
        );
        assert_eq!(e, None);
        // HEAD keeps the length and sends no body; no implicit zero.
        let (t, e) = encoded(
            &head(200, &[("content-length", "1000")]),
            BodyLen::None,
            true,
            false,
        );
        assert_eq!(t, "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n");
        assert_eq!(e, enc(Some(0), false));
        let (t, _) = encoded(&head(200, &[]), BodyLen::Unknown, true, false);
        assert_eq!(t, "HTTP/1.1 200 OK\r\n\r\n");
        // An empty body elsewhere: `content-length: 0` (not on 204 or 304).
        let (t, _) = encoded(
            &head(200, &[("content-length", "0")]),
            BodyLen::None,
            false,
            false,
        );
        assert_eq!(t, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let (t, e) = encoded(
            &head(204, &[("content-length", "0")]),
            BodyLen::None,
            false,
            false,
        );
        assert_eq!(t, "HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(e, enc(Some(0), false));
        let (t, e) = encoded(
            &head(304, &[("etag", "\"x\"")]),
            BodyLen::Known(10),
            false,
            false,
        );
        assert_eq!(t, "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n");
        assert_eq!(e, enc(Some(0), false));
        // `connection` lines are joined, and a close there ends the connection.
        let (t, e) = encoded(
            &head(200, &[("connection", "x-a"), ("connection", "close")]),
            BodyLen::None,
            false,
            false,
        );
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\nconnection: x-a, close\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(e, enc(Some(0), true));
        // A 1xx cannot be a final response: hyper sends 500 and closes.
        let (t, e) = encoded(&head(103, &[("link", "</a>")]), BodyLen::None, false, false);
        assert_eq!(
            t,
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(e, enc(Some(0), true));
        // The date is written unless the response has one.
        let mut out = Vec::new();
        encode_head(&head(200, &[]), BodyLen::None, false, false, &mut out);
        assert!(String::from_utf8(out).unwrap().contains(" GMT\r\n"));
        let mut out = Vec::new();
        encode_head(
            &head(200, &[("date", "then")]),
            BodyLen::None,
            false,
            false,
            &mut out,
        );
        let t = String::from_utf8(out).unwrap();
        assert_eq!(t.matches("date: ").count(), 1, "{t}");
        assert!(t.contains("date: then\r\n"), "{t}");
    }
}
