//! Our HTTP/1.1 exchange with a pooled clear-text endpoint, for the common request: no body,
//! no upgrade. It runs in the task of the request that needs it: the head goes out in one
//! write, the response head is parsed with `httparse` from the connection's read buffer,
//! and the body is read from the socket as the downstream connection asks for it, frame by
//! frame ([`OwnBody`]). No second task, channel or oneshot per request, which is what
//! hyper's connection-level client costs (its connection task was 13.3k of the 43k
//! instructions of a proxied request, callgrind).
//!
//! Requests with a body, upgrades and CONNECT keep going through hyper's client
//! ([`super::pool`]): a body is written while the response may already be arriving, which
//! is the duplex hyper's connection task exists for.
//!
//! Response framing follows RFC 9112 §6.3, strictly: no body for HEAD, 1xx, 204 and 304; a
//! `Transfer-Encoding` whose final coding is `chunked` is decoded; another
//! `Transfer-Encoding` or neither header reads to the close; a `Content-Length` must be one
//! valid number (equal repeats allowed). Both headers together, `Transfer-Encoding` in
//! HTTP/1.0 or with anything but tokens in it are a 502 (§6.1: the signs of response
//! splitting). A connection goes back to its pool only when the body ended exactly
//! at the end of what was read, and the upstream did not ask to close; anything else (a
//! framing anomaly, bytes after the response, an unread body) closes it.

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod differential;

use super::pool::Pool;
use crate::error::ProxyError;
use crate::proxy::headers::Forwarded;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The longest response head read (hyper's client allows about 400 KiB; a head this long
/// from an upstream is broken).
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// The most trailer fields.
const MAX_TRAILER_FIELDS: usize = 32;
/// Read sizes: at least this much room before a read, at most this much asked for.
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 64 * 1024;
/// The longest chunk-size line (digits and extensions).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The largest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;

/// One connection to an endpoint.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed; empty between exchanges.
    buf: BytesMut,
    /// The request head being written; kept, so its capacity serves the next one.
    out: Vec<u8>,
    /// The response timeout of the exchange in progress, kept with the connection: moved to
    /// each exchange's later deadline, a registered timer is only extended (an atomic
    /// store), where a timer per request was inserted into and removed from tokio's timer
    /// wheel every time (~500 instructions per request).
    timer: Pin<Box<Sleep>>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// The request did not reach the upstream whole, or a reused connection turned out to
    /// be closed before any byte of an answer to an idempotent request: it may go again on
    /// another connection.
    Stale,
    Failed(ProxyError),
}

/// How a response body is framed, and where its reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Fixed-length: bytes left.
    Fixed(u64),
    /// Chunked, at this point.
    Chunked(Chunk),
    /// Until the upstream closes.
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line.
    Size,
    /// Chunk data: bytes left.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// A parsed response head: the response without its body, how the body is framed, and
/// whether the connection may serve another request after it.
struct Head {
    response: Response<()>,
    framing: Framing,
    reusable: bool,
}

impl Conn {
    /// Boxed: it moves with every response (in its body) and through the pool; a pointer
    /// moves cheaper than its 128 bytes, and the box lives as long as the connection.
    pub fn new(stream: TcpStream, deadline: Instant) -> Box<Conn> {
        Box::new(Conn {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        })
    }

    /// Whether an idle connection can take a request: nothing to read on it (a readable
    /// idle connection was closed by the upstream, or sent bytes nobody asked for). Costs
    /// a syscall only when tokio has seen it readable.
    pub fn usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                matches!(self.stream.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Send `req` (origin-form, `Host` set, no body) and read the response head by
    /// `deadline` (else a [`ProxyError::ResponseTimeout`]).
    async fn exchange(
        &mut self,
        req: &Request<super::body::RequestBody>,
        forwarded: Option<&Forwarded>,
        reused: bool,
        deadline: Instant,
    ) -> Result<Head, Failure> {
        self.timer.as_mut().reset(deadline);
        let mut timer = self.timer.as_mut();
        let mut io = std::pin::pin!(Self::exchange_io(
            &mut self.stream,
            &mut self.buf,
            &mut self.out,
            req,
            forwarded,
            reused
        ));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = io.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            ready!(timer.as_mut().poll(cx));
            Poll::Ready(Err(Failure::Failed(ProxyError::ResponseTimeout)))
        })
        .await
    }

    async fn exchange_io(
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        req: &Request<super::body::RequestBody>,
        forwarded: Option<&Forwarded>,
        reused: bool,
    ) -> Result<Head, Failure> {
        write_head(out, req, forwarded);
        if stream.write_all(out).await.is_err() {
            return Err(Failure::Stale);
        }
        let head_request = req.method() == Method::HEAD;
        // A reused connection closed under us before any answer: the request can go again
        // when sending it twice is harmless.
        let may_resend = reused && is_idempotent(req.method());
        let mut answered = false;
        loop {
            if !buf.is_empty() {
                answered = true;
                match parse_head(buf, head_request) {
                    Ok(Some(h))
                        if h.response.status().is_informational()
                            && h.response.status() != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        // 100 Continue, 103 Early Hints: the final answer follows.
                        continue;
                    }
                    Ok(Some(h)) => return Ok(h),
                    Ok(None) => {}
                    Err(e) => return Err(Failure::Failed(e)),
                }
                if buf.len() >= MAX_HEAD {
                    tracing::debug!("upstream response head too long");
                    return Err(Failure::Failed(ProxyError::UpstreamReset));
                }
            }
            buf.reserve(READ_MIN);
            match stream.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                result => {
                    if !answered && may_resend {
                        return Err(Failure::Stale);
                    }
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "upstream connection failed before a response");
                    }
                    return Err(Failure::Failed(ProxyError::UpstreamReset));
                }
            }
        }
    }

    /// Read more into the buffer: `Ok(0)` is the upstream's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_MIN {
            let want = usize::try_from(want).unwrap_or(usize::MAX);
            self.buf.reserve(want.clamp(READ_MIN, READ_MAX));
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

/// Write the head of `req` into `out`, with the `X-Forwarded-*` fields still to add.
fn write_head(
    out: &mut Vec<u8>,
    req: &Request<super::body::RequestBody>,
    forwarded: Option<&Forwarded>,
) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(f) = forwarded {
        f.write(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Methods RFC 9110 §9.2.2 calls idempotent: safe to send twice (a retry on a status, a
/// resend after a reused connection closed before answering).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A response head from the front of `buf` (taken out of it), `None` while incomplete.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, ProxyError> {
    let bad = |what: &str| {
        tracing::debug!(what, "invalid response from upstream");
        ProxyError::UpstreamReset
    };
    // Neither array is initialised up front: zeroing 100 fields cost more than the parse
    // (3.2k instructions per response, callgrind).
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(bad("unparsable head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| bad("status"))?;
    let version = if parsed.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Where each field is in the head, so its value can be a slice of it (no copy).
    let base = buf.as_ptr() as usize;
    let at: smallvec::SmallVec<[(u32, u32, u32, u32); 32]> = parsed
        .headers
        .iter()
        .map(|f| {
            // Within the head, so under MAX_HEAD.
            let name = (f.name.as_ptr() as usize - base) as u32;
            let value = (f.value.as_ptr() as usize - base) as u32;
            (
                name,
                name + f.name.len() as u32,
                value,
                value + f.value.len() as u32,
            )
        })
        .collect();
    let count = at.len();
    let head = buf.split_to(n).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = version == Version::HTTP_10;
    for &(n0, n1, v0, v1) in &at {
        let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| bad("header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(v0..v1)).map_err(|_| bad("header value"))?;
        if name == CONTENT_LENGTH {
            let v = parse_length(value.as_bytes()).ok_or_else(|| bad("content-length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(bad("conflicting content-length"));
            }
            length = Some(v);
        } else if name == TRANSFER_ENCODING {
            // Codings are tokens (RFC 9110 §10.1.4): anything else is not read one way by us
            // and another by the next parser (hyper's client reads a value with a non-ASCII
            // byte as no coding at all; found by the differential fuzzer).
            if !value.as_bytes().iter().all(|b| is_coding_byte(*b)) {
                return Err(bad("transfer-encoding"));
            }
            // The final coding of the last field decides.
            chunked = Some(crate::proxy::headers::list_ends_with(
                value.as_bytes(),
                b"chunked",
            ));
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    if chunked.is_some() && (length.is_some() || version == Version::HTTP_10) {
        // RFC 9112 §6.1: both headers "ought to be handled as an error" (the signature of
        // response splitting), and Transfer-Encoding in HTTP/1.0 is faulty framing.
        return Err(bad("transfer-encoding with content-length, or in HTTP/1.0"));
    }
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let (framing, reusable) = if no_body {
        // A 101's connection belongs to the protocol it switched to: never pooled.
        (Framing::Fixed(0), status != StatusCode::SWITCHING_PROTOCOLS)
    } else {
        match (chunked, length) {
            (Some(true), _) => (Framing::Chunked(Chunk::Size), true),
            (Some(false), _) => (Framing::Eof, false),
            (None, Some(l)) => (Framing::Fixed(l), true),
            (None, None) => (Framing::Eof, false),
        }
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Head {
        response,
        framing,
        reusable: reusable && !close,
    }))
}

/// A byte of a `Transfer-Encoding` list: token characters, commas and whitespace (codings'
/// parameters, `;q=` and the like, are not used in responses).
fn is_coding_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~, \t".contains(&b)
}

/// A `Content-Length` value: digits only (at most 19), or equal repeats in a list.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in v.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// A chunk-size line's size (`line` without its CRLF): hex digits, then optional
/// whitespace and extensions.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    // Only spaces and tabs may follow the digits (`trim_ascii_start` would also pass a CR,
    // which hyper refuses: found by the differential fuzzer).
    let lws = line[digits..]
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    let rest = &line[digits + lws..];
    if !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    // Extensions are ignored, but only visible characters and whitespace pass (a CR or
    // another control byte inside one is where parsers part ways).
    if !rest
        .iter()
        .all(|b| *b == b'\t' || (b' '..=b'~').contains(b) || *b >= 0x80)
    {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// A response body's failure on our connection.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body: {0}")]
pub struct BodyFailure(&'static str);

/// A response body read from its connection by the task that serves the response. At its
/// end the connection goes back to its pool (if it may); dropped before, it closes.
#[derive(Debug)]
pub struct OwnBody {
    /// `None` once the body ended (or failed).
    conn: Option<Box<Conn>>,
    framing: Framing,
    reusable: bool,
    pool: Arc<Pool>,
    worker: usize,
}

impl OwnBody {
    /// The body ended: the connection goes home if it may, else closes.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                self.pool.put_own(self.worker, conn);
            }
        }
    }

    fn fail(
        &mut self,
        what: &'static str,
    ) -> Poll<Option<Result<Frame<Bytes>, super::body::BodyError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(BodyFailure(what)))))
    }

    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing == Framing::Fixed(0)
    }

    pub fn size_hint(&self) -> SizeHint {
        match (self.framing, &self.conn) {
            (_, None) => SizeHint::with_exact(0),
            (Framing::Fixed(n), _) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::body::BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match step(&mut self.framing, &mut conn.buf) {
                Step::Data(data) => {
                    if self.framing == Framing::Fixed(0) {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(t) => {
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Step::End => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Step::Fail(what) => return self.fail(what),
                Step::More => {}
            }
            let want = match self.framing {
                Framing::Fixed(n) | Framing::Chunked(Chunk::Data(n)) => n,
                _ => READ_MIN as u64,
            };
            match ready!(conn.poll_fill(cx, want)) {
                Ok(0) if self.framing == Framing::Eof => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail("connection closed before the body's end"),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "upstream body read failed");
                    return self.fail("connection failed");
                }
            }
        }
    }
}

/// What the body decoder makes of the bytes read so far.
#[derive(Debug)]
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended (`framing` is then `Fixed(0)`).
    End,
    /// More bytes are needed (for `Eof`, the end is the upstream's close).
    More,
    Fail(&'static str),
}

/// The next piece of a body framed by `framing` from the front of `buf` (taken out of it).
/// Pure, so the differential check and the fuzzer run the very code the proxy runs.
fn step(framing: &mut Framing, buf: &mut BytesMut) -> Step {
    loop {
        match framing {
            Framing::Fixed(0) => return Step::End,
            Framing::Fixed(left) | Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Step::More;
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                *left -= n as u64;
                if *framing == Framing::Chunked(Chunk::Data(0)) {
                    *framing = Framing::Chunked(Chunk::DataEnd);
                }
                return Step::Data(data);
            }
            Framing::Eof if buf.is_empty() => return Step::More,
            Framing::Eof => return Step::Data(buf.split().freeze()),
            Framing::Chunked(Chunk::Size) => {
                let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Step::Fail("chunk-size line too long");
                    }
                    return Step::More;
                };
                let Some(line) = buf[..end].strip_suffix(b"\r") else {
                    return Step::Fail("bare LF in a chunk-size line");
                };
                let Some(size) = parse_chunk_size(line) else {
                    return Step::Fail("malformed chunk size");
                };
                buf.advance(end + 1);
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Step::More;
                }
                if &buf[..2] != b"\r\n" {
                    return Step::Fail("chunk data not followed by CRLF");
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *framing = Framing::Fixed(0);
                    return Step::End;
                }
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if buf.len() > MAX_TRAILERS {
                        return Step::Fail("trailers too long");
                    }
                    return Step::More;
                };
                let section = buf.split_to(end + 4);
                let Some(trailers) = parse_trailers(&section) else {
                    return Step::Fail("malformed trailers");
                };
                *framing = Framing::Fixed(0);
                return Step::Trailers(trailers);
            }
        }
    }
}

/// A trailer section (ending in its blank line) as a header map.
fn parse_trailers(section: &[u8]) -> Option<HeaderMap> {
    // CRLF only: httparse takes a bare LF for a line end, hyper's decoder does not (found by
    // the differential fuzzer), so a bare LF is where the two would read different fields.
    let bare_lf = section
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || section[i - 1] != b'\r'));
    if bare_lf {
        return None;
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let httparse::Status::Complete((_, fields)) =
        httparse::parse_headers(section, &mut fields).ok()?
    else {
        return None;
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        map.append(
            HeaderName::from_bytes(f.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(f.value).ok()?,
        );
    }
    Some(map)
}

/// Whether our exchange serves `req`: no body, no upgrade, not CONNECT.
pub fn serves(req: &Request<super::body::RequestBody>) -> bool {
    matches!(req.body(), super::body::RequestBody::Empty)
        && req.method() != Method::CONNECT
        && !req.headers().contains_key(http::header::UPGRADE)
}

impl Pool {
    /// Send a request [`serves`] takes, on one of `worker`'s idle connections of ours or a
    /// new one. `Err(None)`: nothing was sent (a connect failure, or the head did not get
    /// out whole), so the request may go again anywhere.
    pub(super) async fn send_own(
        self: &Arc<Self>,
        worker: usize,
        req: &Request<super::body::RequestBody>,
        forwarded: Option<&Forwarded>,
        deadline: Instant,
    ) -> Result<Response<OwnBody>, (ProxyError, bool)> {
        while let Some(mut conn) = self.checkout_own(worker) {
            match conn.exchange(req, forwarded, true, deadline).await {
                Ok(head) => return Ok(self.respond(worker, conn, head)),
                // Closed under us: the next one, or a new one.
                Err(Failure::Stale) => continue,
                Err(Failure::Failed(e)) => return Err((e, false)),
            }
        }
        // Boxed: a new connection is the rare case (its handshake costs far more than the
        // allocation), and inline its state would size every request's future.
        let stream = tokio::time::timeout_at(deadline, Box::pin(self.connect_tcp()))
            .await
            .map_err(|_| (ProxyError::ResponseTimeout, false))?;
        let mut conn = Conn::new(stream.map_err(|e| (e, true))?, deadline);
        match conn.exchange(req, forwarded, false, deadline).await {
            Ok(head) => Ok(self.respond(worker, conn, head)),
            Err(Failure::Stale) => Err((ProxyError::UpstreamReset, true)),
            Err(Failure::Failed(e)) => Err((e, false)),
        }
    }

    fn respond(self: &Arc<Self>, worker: usize, conn: Box<Conn>, head: Head) -> Response<OwnBody> {
        let mut body = OwnBody {
            conn: Some(conn),
            framing: head.framing,
            reusable: head.reusable,
            pool: self.clone(),
            worker,
        };
        if body.framing == Framing::Fixed(0) {
            // No body: the connection is free at once.
            body.finish();
        }
        head.response.map(|()| body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], head_request: bool) -> Result<Option<Head>, ProxyError> {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf, head_request)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = |raw: &[u8]| head(raw, false).unwrap().unwrap();
        let fixed = h(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!((fixed.framing, fixed.reusable), (Framing::Fixed(5), true));
        let chunked = h(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(chunked.framing, Framing::Chunked(Chunk::Size));
        assert!(chunked.reusable);
        // Both, or chunked in HTTP/1.0: refused.
        assert!(
            head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(
            head(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(
            head(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzi\xff, chunked\r\n\r\n",
                false
            )
            .is_err()
        );
        let other = h(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((other.framing, other.reusable), (Framing::Eof, false));
        let none = h(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((none.framing, none.reusable), (Framing::Eof, false));
        let close = h(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert!(!close.reusable);
        let old = h(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!old.reusable);
        let old_kept = h(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n");
        assert!(old_kept.reusable);
        for no_body in [
            &b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        ] {
            assert_eq!(h(no_body).framing, Framing::Fixed(0));
        }
        let to_head = head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(to_head.framing, Framing::Fixed(0));
        assert!(
            head(b"HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_lengths_and_heads_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"NOTHTTP 200 OK\r\n\r\n",
        ] {
            assert!(
                head(raw, false).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let same = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert_eq!(same.unwrap().unwrap().framing, Framing::Fixed(5));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b"A;name=value"), Some(10));
        assert_eq!(parse_chunk_size(b"A ;x"), Some(10));
        for bad in [
            &b""[..],
            b";x",
            b"g",
            b"1 2",
            b"-1",
            b"11111111111111111",
            b"1;a\rb",
            b"1;\0",
            b"0\r",
        ] {
            assert_eq!(
                parse_chunk_size(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_head_keeps_fields_in_order_and_values_as_sent() {
        let h = head(
            b"HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nX-Custom: v \r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\nrest",
            false,
        )
        .unwrap()
        .unwrap();
        let r = &h.response;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(r.headers()["x-custom"], "v");
    }

    /// The differential check (the fuzz target's, see `fuzz/`) over every response the
    /// tests above use, and the committed seeds `fuzz/seeds/h1_response` (minimized from
    /// the fuzzer's runs).
    #[test]
    fn ours_and_hypers_client_agree_on_every_response() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/h1_response");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/h1_response") {
            let case = std::fs::read(entry.unwrap().path()).unwrap();
            differential::check(&case);
            n += 1;
        }
        assert!(n > 10, "only {n} seeds");
        // The check can fail: a complete response both read, with the same body.
        let good = b"GHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (mine, theirs) = (
            differential::ours(&good[1..], &Method::GET),
            differential::theirs(&good[1..], &Method::GET),
        );
        assert_eq!(mine.as_ref().map(|r| r.body.as_slice()), Some(&b"abc"[..]));
        assert_eq!(mine, theirs);
    }
}
