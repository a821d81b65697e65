//! A read-side guard for HTTP/1 server connections: strict request framing, checked on the
//! bytes before hyper parses them (RFC 9112 §6.3, §2.2, §5.2, §7.1; the request smuggling
//! vectors).
//!
//! hyper is lenient where a proxy must not be: it accepts a request with both
//! `Content-Length` and `Transfer-Encoding` (dropping the length while parsing, so after the
//! parse the conflict is invisible), lines ending in a bare LF, `Content-Length: 5, 5`, and a
//! second `Content-Length` of the same value. A front end that accepts what a back end reads
//! differently is how requests are smuggled. This guard follows the byte stream's message
//! framing itself (heads, fixed-length and chunked bodies, trailers) without copying or
//! holding anything back in the common case, and refuses, before hyper sees the bytes:
//!
//! - `Content-Length` together with `Transfer-Encoding`;
//! - a second or malformed `Content-Length` (lists included);
//! - a `Transfer-Encoding` whose final coding is not `chunked`, or that names `chunked` twice;
//! - `Transfer-Encoding` in an HTTP/1.0 request;
//! - a bare LF anywhere in a head, a chunk-size line or the trailers (CRLF only);
//! - obs-fold (a header line that starts with whitespace) and whitespace before the colon of
//!   a framing header;
//! - a malformed chunk size, chunk data not followed by CRLF, a chunk extension over
//!   [`MAX_CHUNK_EXT`] bytes, trailers over [`MAX_TRAILERS`] bytes.
//!
//! A refused head is replaced by bytes that cannot parse (`\0` is invalid anywhere in a head),
//! so hyper answers 400, forwards nothing and closes; nothing after it is read. A violation
//! inside a body cuts the body there with the same bytes: hyper fails the body, the request
//! is aborted upstream, and the connection closes (never reused after a framing anomaly).
//!
//! Anything the guard does not follow (HTTP/2 prefaces, upgrades and CONNECT, heads over
//! [`MAX_HEAD`], which hyper refuses with 431) turns it into a pass-through, leaving the
//! verdict to hyper, which is safe on those. Header count and size limits are hyper's (100
//! fields, `H1_MAX_BUF`).
//!
//! Because it knows where messages end, the guard is also where an idle keep-alive
//! connection gives hyper's buffers back (see [`IdleGate`]): between two requests, with every
//! response byte written and flushed and nothing to read, it tells hyper the stream ended, so
//! hyper's connection finishes (dropping its 8 KiB read and 8 KiB write buffers) while the
//! socket stays open for the server to serve again when the next request arrives.

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod differential;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A head longer than this is left to hyper (whose own limits reject it).
const MAX_HEAD: usize = 128 * 1024;

/// The longest chunk extension accepted on one chunk-size line (hyper allows 16 KiB in all).
pub const MAX_CHUNK_EXT: u32 = 4096;

/// The largest trailer section accepted, in bytes.
pub const MAX_TRAILERS: u32 = 16 * 1024;

/// What hyper is given in place of a refused head: it cannot parse as any part of one.
const POISON: &[u8] = b"\0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head.
    Head,
    /// Fixed-length body bytes left.
    Fixed(u64),
    /// Chunked body: the chunk-size line (`size` so far; `ext` is 0 before any extension,
    /// else 1 + its length; `cr` once `\r` is seen).
    ChunkSize {
        size: u64,
        digits: u8,
        ext: u32,
        cr: bool,
    },
    /// Chunk data bytes left.
    ChunkData(u64),
    /// The CRLF after chunk data (`cr` once `\r` is seen).
    ChunkEnd { cr: bool },
    /// Trailer section: `line_start` at the start of a line, `cr` after `\r`, `len` so far.
    Trailers {
        line_start: bool,
        cr: bool,
        len: u32,
    },
    /// Not following the stream any more: every byte passes through.
    Opaque,
    /// A violation was found: nothing more is looked at.
    Refused,
}

/// Outcome of looking at newly read bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything passes.
    Pass,
    /// The stream breaks the framing rules: keep the bytes before `at` (complete earlier
    /// messages, or the part of a body before the violation; 0 if the offending head began
    /// in an earlier read) and refuse the rest.
    Refuse { at: usize, why: &'static str },
}

/// Follows HTTP/1 request framing over a byte stream fed in arbitrary pieces.
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// The current head, copied only when it spans reads (otherwise scanned in place).
    partial: Vec<u8>,
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            state: State::Head,
            partial: Vec::new(),
        }
    }
}

/// The body after a head, or why the head is refused.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Fixed(u64),
    Chunked,
    Opaque,
}

impl Framer {
    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    #[cfg(any(test, fuzzing))]
    fn progress(&self) -> differential::Progress {
        use differential::Progress;
        match self.state {
            State::Head => Progress::Head {
                pending: self.partial.len(),
            },
            State::Opaque => Progress::Opaque,
            State::Refused => Progress::Refused,
            State::Fixed(_) | State::ChunkData(_) => Progress::Body { data: true },
            _ => Progress::Body { data: false },
        }
    }

    /// Between two messages: every byte seen so far belongs to complete requests.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Head && self.partial.is_empty()
    }

    fn refuse(&mut self, at: usize, why: &'static str) -> Verdict {
        self.state = State::Refused;
        self.partial = Vec::new();
        Verdict::Refuse { at, why }
    }

    /// Look at the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) -> Verdict {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Opaque | State::Refused => return Verdict::Pass,
                State::Head => match self.head(data, i) {
                    Ok(Some((end, framing))) => {
                        i = end;
                        self.partial.clear();
                        self.state = match framing {
                            Framing::None => State::Head,
                            Framing::Fixed(n) => State::Fixed(n),
                            Framing::Chunked => State::ChunkSize {
                                size: 0,
                                digits: 0,
                                ext: 0,
                                cr: false,
                            },
                            Framing::Opaque => State::Opaque,
                        };
                    }
                    Ok(None) => return Verdict::Pass,
                    Err((at, why)) => return self.refuse(at, why),
                },
                State::Fixed(n) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n {
                        State::Head
                    } else {
                        State::Fixed(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n {
                        State::ChunkEnd { cr: false }
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkSize { .. } | State::ChunkEnd { .. } | State::Trailers { .. } => {
                    match self.body_byte(data[i]) {
                        Ok(next) => self.state = next,
                        Err(why) => return self.refuse(i, why),
                    }
                    i += 1;
                }
            }
        }
        Verdict::Pass
    }

    /// Scan a head from `data[from..]` (after `self.partial`, the part of it read before).
    /// `Ok(Some((end, framing)))` once it is complete (`end` is just past its blank line),
    /// `Ok(None)` when it continues in the next read (what is needed of it is kept);
    /// `Err((at, why))` when it is refused, `at` being where it starts in `data` (0 if it
    /// started in an earlier read).
    fn head(
        &mut self,
        data: &[u8],
        mut from: usize,
    ) -> Result<Option<(usize, Framing)>, (usize, &'static str)> {
        let mut scan = from;
        // The lines of a head that is all in this read, taken as they are found (a head
        // that spans reads is kept whole and read by `framing_of` once complete).
        let mut fields = Fields::default();
        while let Some(off) = memchr::memchr(b'\n', &data[scan..]) {
            let p = scan + off;
            let line_start = scan;
            scan = p + 1;
            // The byte `k` places before the LF in `partial ++ data[from..]`.
            let back = |k: usize| -> Option<u8> {
                if p - from >= k {
                    Some(data[p - k])
                } else {
                    let j = k - (p - from);
                    self.partial.len().checked_sub(j).map(|x| self.partial[x])
                }
            };
            let cut = if self.partial.is_empty() { from } else { 0 };
            if back(1) != Some(b'\r') {
                return Err((cut, "bare LF in the request head"));
            }
            let before_line = self.partial.len() + (p - from) - 1;
            if before_line == 0 {
                // An empty line before the request line (RFC 9112 §2.2 allows them): skip.
                self.partial.clear();
                from = p + 1;
                continue;
            }
            if back(2) == Some(b'\n') {
                let framing = if self.partial.is_empty() {
                    fields.framing()
                } else {
                    self.partial.extend_from_slice(&data[from..p + 1]);
                    framing_of(&self.partial)
                };
                return framing.map(|f| Some((p + 1, f))).map_err(|why| (cut, why));
            }
            if self.partial.is_empty() {
                fields.line(&data[line_start..p - 1]);
            }
        }
        if self.partial.len() + data.len() - from > MAX_HEAD {
            // hyper refuses this with 431 on its own; nothing more to follow.
            self.state = State::Opaque;
            self.partial = Vec::new();
            return Ok(None);
        }
        self.partial.extend_from_slice(&data[from..]);
        Ok(None)
    }

    /// The state after one byte of a chunk-size line, a chunk's CRLF or the trailers.
    fn body_byte(&self, b: u8) -> Result<State, &'static str> {
        Ok(match self.state {
            State::ChunkSize {
                size,
                digits,
                ext,
                cr,
            } => match (b, cr) {
                (b'\n', true) if size == 0 => State::Trailers {
                    line_start: true,
                    cr: false,
                    len: 0,
                },
                (b'\n', true) => State::ChunkData(size),
                (_, true) => return Err("CR without LF in a chunk-size line"),
                (b'\n', false) => return Err("bare LF in a chunk-size line"),
                (b'\r', false) if digits > 0 => State::ChunkSize {
                    size,
                    digits,
                    ext,
                    cr: true,
                },
                (_, false) if ext > 0 => {
                    if ext > MAX_CHUNK_EXT {
                        return Err("chunk extension too long");
                    }
                    State::ChunkSize {
                        size,
                        digits,
                        ext: ext + 1,
                        cr,
                    }
                }
                (b';' | b' ' | b'\t', false) if digits > 0 => State::ChunkSize {
                    size,
                    digits,
                    ext: 1,
                    cr,
                },
                (_, false) => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => State::ChunkSize {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                        ext,
                        cr,
                    },
                    Some(_) => return Err("chunk size too large"),
                    None => return Err("malformed chunk size"),
                },
            },
            State::ChunkEnd { cr } => match (b, cr) {
                (b'\r', false) => State::ChunkEnd { cr: true },
                (b'\n', true) => State::ChunkSize {
                    size: 0,
                    digits: 0,
                    ext: 0,
                    cr: false,
                },
                _ => return Err("chunk data not followed by CRLF"),
            },
            State::Trailers {
                line_start,
                cr,
                len,
            } => {
                if len >= MAX_TRAILERS {
                    return Err("trailers too large");
                }
                let len = len + 1;
                match (b, cr) {
                    (b'\n', true) if line_start => State::Head,
                    (b'\n', true) => State::Trailers {
                        line_start: true,
                        cr: false,
                        len,
                    },
                    (_, true) => return Err("CR without LF in the trailers"),
                    (b'\n', false) => return Err("bare LF in the trailers"),
                    (b'\r', false) => State::Trailers {
                        line_start,
                        cr: true,
                        len,
                    },
                    (b' ' | b'\t', false) if line_start => {
                        return Err("obs-fold in the trailers");
                    }
                    _ => State::Trailers {
                        line_start: false,
                        cr: false,
                        len,
                    },
                }
            }
            _ => unreachable!("body_byte outside a chunked body"),
        })
    }
}

/// How the body after this head is framed (RFC 9112 §6.3), from a complete head whose lines
/// all end in CRLF (a head that spanned reads; one read's head goes line by line through
/// [`Fields`] as the scan finds them).
fn framing_of(head: &[u8]) -> Result<Framing, &'static str> {
    let mut fields = Fields::default();
    let mut pos = 0;
    while let Some(e) = memchr::memchr(b'\n', &head[pos..]) {
        let end = pos + e;
        // Every line ends in CRLF here (the head scan refused bare LFs).
        fields.line(&head[pos..end.saturating_sub(1).max(pos)]);
        pos = end + 1;
    }
    fields.framing()
}

/// What the framing rules need from a head, fed one line at a time (without its CRLF, the
/// request line first, the empty line that ends the head not at all). A violation is kept
/// and reported when the head is complete, as for a head that spans reads: the verdict never
/// depends on where the reads split the stream. Runs for every HTTP/1
/// request, so it looks at a line's first letter before anything else: only
/// `content-length`, `transfer-encoding` and `upgrade` matter (and a leading space or tab,
/// obs-fold, on any line).
#[derive(Debug, Default)]
struct Fields {
    request_line_seen: bool,
    http10: bool,
    /// An upgrade, CONNECT or the HTTP/2 preface: nothing after the head is HTTP/1 framing.
    opaque: bool,
    content_length: Option<u64>,
    codings: Option<Codings>,
    /// The first violation seen.
    refused: Option<&'static str>,
}

impl Fields {
    fn line(&mut self, line: &[u8]) {
        if self.opaque || self.refused.is_some() {
            return;
        }
        if let Err(why) = self.check(line) {
            self.refused = Some(why);
        }
    }

    fn check(&mut self, line: &[u8]) -> Result<(), &'static str> {
        if !self.request_line_seen {
            self.request_line_seen = true;
            self.opaque = line.starts_with(b"PRI ") || line.starts_with(b"CONNECT ");
            self.http10 = line.ends_with(b" HTTP/1.0");
            return Ok(());
        }
        let Some(&first) = line.first() else {
            return Ok(());
        };
        if first == b' ' || first == b'\t' {
            return Err("obs-fold (a header line starting with whitespace)");
        }
        if !matches!(first | 0x20, b'c' | b't' | b'u') {
            return Ok(());
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            // Not a header line at all: hyper refuses it.
            return Ok(());
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        let framing_header = |n: &[u8]| {
            n.eq_ignore_ascii_case(b"content-length")
                || n.eq_ignore_ascii_case(b"transfer-encoding")
        };
        if name.last().is_some_and(|b| b" \t".contains(b)) && framing_header(trim(name)) {
            return Err("whitespace before the colon of a framing header");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if self.content_length.is_some() {
                return Err("more than one Content-Length");
            }
            let Some(n) = parse_decimal(value) else {
                return Err("malformed Content-Length");
            };
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.codings.get_or_insert_default().add(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.opaque = true;
        }
        Ok(())
    }

    fn framing(self) -> Result<Framing, &'static str> {
        if let Some(why) = self.refused {
            return Err(why);
        }
        if self.opaque || !self.request_line_seen {
            return Ok(Framing::Opaque);
        }
        match (self.content_length, self.codings) {
            (Some(_), Some(_)) => Err("both Content-Length and Transfer-Encoding"),
            (None, Some(_)) if self.http10 => Err("Transfer-Encoding in an HTTP/1.0 request"),
            (None, Some(codings)) if codings.chunked == 1 && codings.last_chunked => {
                Ok(Framing::Chunked)
            }
            (None, Some(_)) => Err("Transfer-Encoding whose final coding is not chunked"),
            (Some(0), None) | (None, None) => Ok(Framing::None),
            (Some(n), None) => Ok(Framing::Fixed(n)),
        }
    }
}

/// The transfer codings of a request, over all its `Transfer-Encoding` fields in order.
#[derive(Debug, Default)]
struct Codings {
    chunked: u32,
    last_chunked: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) {
        for coding in value.split(|&b| b == b',').map(trim) {
            if coding.is_empty() {
                continue;
            }
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.chunked += u32::from(chunked);
            self.last_chunked = chunked;
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b" \t".contains(b))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b" \t".contains(b))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.len() > 19 {
        return None;
    }
    digits(v)
}

/// A decimal number of digits only (no sign, no space, not empty), `None` past `u64`: how
/// hyper reads a `Content-Length` value (`headers::from_digits`).
pub(crate) fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether an idle connection may give its buffers back now. Asked only when the guard knows
/// it is safe for the stream: at a message boundary, everything written has been flushed,
/// and the socket has nothing to read. The server answers from what it knows besides: no
/// request in flight (its response body included) and idle long enough.
pub trait IdleGate: Send + Sync {
    /// May the connection end here (hyper sees the end of the stream)? `true` is final: the
    /// gate then counts the connection as released.
    fn release_now(&self) -> bool;
    /// Did it end that way (the socket must stay open)?
    fn released(&self) -> bool;
    /// Bytes arrived: whatever was decided about idleness is stale.
    fn active(&self);
    /// The stream stopped being requests the guard follows (HTTP/2, an upgrade, framing it
    /// leaves to hyper): it will never be released.
    fn never(&self);
}

/// An HTTP/1 server connection's stream with the [`Framer`] watching what is read.
pub struct Guarded<S> {
    inner: S,
    framer: Framer,
    /// Poison bytes still to hand over (when the read buffer had no room for all of them).
    poison_left: &'static [u8],
    /// After the poison: nothing more is read from the client.
    closed: bool,
    /// Set on a plain connection that may be parked between requests.
    gate: Option<std::sync::Arc<dyn IdleGate>>,
    /// Nothing written since the last successful flush (hyper flushes only an empty buffer).
    flushed: bool,
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Guarded<S> {
        Guarded {
            inner,
            framer: Framer::default(),
            poison_left: &[],
            closed: false,
            gate: None,
            flushed: true,
        }
    }

    /// A stream that may end between two requests when `gate` says so (see [`IdleGate`]).
    pub fn with_gate(mut self, gate: std::sync::Arc<dyn IdleGate>) -> Guarded<S> {
        self.gate = Some(gate);
        self
    }

    /// A stream that is known not to be HTTP/1 (TLS with ALPN h2): nothing is inspected.
    pub fn passthrough(inner: S) -> Guarded<S> {
        let mut g = Guarded::new(inner);
        g.framer.state = State::Opaque;
        g
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.poison_left.is_empty() {
            let n = me.poison_left.len().min(buf.remaining());
            buf.put_slice(&me.poison_left[..n]);
            me.poison_left = &me.poison_left[n..];
            return Poll::Ready(Ok(()));
        }
        if me.closed {
            return Poll::Ready(Ok(()));
        }
        if me.framer.is_opaque() {
            if let Some(g) = me.gate.take() {
                g.never();
            }
            return Pin::new(&mut me.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Pending => {
                // Idle between requests with all written: the gate may end hyper's connection
                // here (an empty read is the end of the stream), and the socket is parked.
                if me.flushed
                    && me.framer.at_boundary()
                    && me.gate.as_ref().is_some_and(|g| g.release_now())
                {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
            Poll::Ready(r) => r?,
        }
        if let Some(g) = &me.gate {
            g.active();
        }
        if let Verdict::Refuse { at, why } = me.framer.feed(&buf.filled()[before..]) {
            tracing::debug!("HTTP/1 request refused: {why}");
            // Keep what preceded the violation (earlier requests' bytes, or the part of a body
            // before it), drop the rest, poison.
            buf.set_filled(before + at);
            let n = POISON.len().min(buf.remaining());
            buf.put_slice(&POISON[..n]);
            me.poison_left = &POISON[n..];
            me.closed = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let n = ready!(Pin::new(&mut me.inner).poll_write(cx, buf))?;
        me.flushed &= n == 0;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let n = ready!(Pin::new(&mut me.inner).poll_write_vectored(cx, bufs))?;
        me.flushed &= n == 0;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(Pin::new(&mut me.inner).poll_flush(cx))?;
        me.flushed = true;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        // Released: hyper's connection is over, the socket is not.
        if me.gate.as_ref().is_some_and(|g| g.released()) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Feed `stream` in random pieces; the offset in the stream where it was refused, and why.
    fn refusal(stream: &[u8], seed: u64) -> Option<(usize, &'static str)> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut f = Framer::default();
        let mut at = 0;
        while at < stream.len() {
            let n = rng.random_range(1..=stream.len() - at);
            if let Verdict::Refuse { at: cut, why } = f.feed(&stream[at..at + n]) {
                return Some((at + cut, why));
            }
            at += n;
        }
        None
    }

    fn conflicts(stream: &[u8], seed: u64) -> Option<usize> {
        refusal(stream, seed).map(|(at, _)| at)
    }

    fn find_head_end(data: &[u8]) -> Option<usize> {
        memchr::memmem::find(data, b"\r\n\r\n").map(|p| p + 4)
    }

    const GOOD: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n\
Content-Length: 1\r\nTransfer-En\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
5;ext=1\r\nhello\r\n1A\r\nContent-Length: 5\r\n\r\nxxxxx\r\n0\r\nX-T: 1\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";

    /// The reader hyper sees: a valid request passes untouched, a conflicting head after it
    /// is replaced by bytes that cannot parse, and nothing after them is read; a passthrough
    /// stream (TLS with ALPN h2) is never inspected.
    #[tokio::test]
    async fn the_guarded_stream_poisons_a_conflicting_head() {
        use tokio::io::AsyncReadExt;
        let ok = &b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"[..];
        let bad = &b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..];
        let stream = [ok, bad].concat();
        let mut out = Vec::new();
        Guarded::new(&stream[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        // Bytes of the bad head read before its end was seen may have gone through; the head
        // never completes: it ends in the poison, without its framing headers or body.
        assert!(out.starts_with(ok) && out.ends_with(POISON), "{out:?}");
        let rest = &out[ok.len()..out.len() - POISON.len()];
        assert!(
            bad.starts_with(rest) && !rest.ends_with(b"\r\n\r\n"),
            "{rest:?}"
        );
        assert!(!out.windows(8).any(|w| w == b"chunked\r"), "{out:?}");
        let mut out = Vec::new();
        Guarded::passthrough(&stream[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, stream);
    }

    #[test]
    fn valid_pipelines_pass_however_they_are_split() {
        for seed in 0..500 {
            assert_eq!(conflicts(GOOD, seed), None, "seed {seed}");
        }
    }

    #[test]
    fn both_framing_headers_are_caught_in_either_order_and_any_split() {
        for bad in [
            &b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST /e HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
        ] {
            let mut stream = GOOD.to_vec();
            stream.extend_from_slice(bad);
            let head_len = find_head_end(bad).unwrap();
            for seed in 0..500 {
                // Found in the piece that ends the head: at the head's start, or at the start
                // of that piece when the head began in an earlier one (already handed over).
                let at = conflicts(&stream, seed).expect("conflict missed");
                assert!(
                    (GOOD.len()..GOOD.len() + head_len).contains(&at),
                    "seed {seed}: {at}"
                );
            }
        }
    }

    /// A conflicting head close to hyper's own 64 KiB limit (so hyper would parse it) is
    /// caught too, however it is split: the guard must not step aside for long heads that
    /// hyper still accepts.
    #[test]
    fn a_long_conflicting_head_is_caught() {
        let pad = format!("X-Pad: {}\r\n", "a".repeat(1000)).repeat(60);
        let bad = format!(
            "POST /e HTTP/1.1\r\nHost: x\r\n{pad}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        );
        assert!((60_000..64 * 1024).contains(&bad.len()));
        let mut stream = GOOD.to_vec();
        stream.extend_from_slice(bad.as_bytes());
        for seed in 0..50 {
            assert!(conflicts(&stream, seed).is_some(), "seed {seed}: missed");
        }
    }

    #[test]
    fn unknown_ground_makes_it_step_aside() {
        for opaque in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let mut f = Framer::default();
            assert_eq!(f.feed(opaque), Verdict::Pass);
            assert!(f.is_opaque(), "{:?}", String::from_utf8_lossy(opaque));
            // Whatever follows is not looked at.
            assert_eq!(
                f.feed(
                    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                ),
                Verdict::Pass
            );
        }
    }

    /// Every framing the guard refuses, each after a valid pipeline and however the bytes are
    /// split, with the place it is cut: at the bad head, or at the bad byte of a body.
    #[test]
    fn strict_framing_refuses_each_ambiguity_wherever_the_reads_split_it() {
        let h = "POST /e HTTP/1.1\r\nHost: x\r\n";
        let ext = "x".repeat(MAX_CHUNK_EXT as usize + 1);
        let trailer = format!("X-T: {}\r\n", "t".repeat(MAX_TRAILERS as usize));
        let heads: Vec<(String, &str)> = vec![
            (
                format!("{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
                "more than one",
            ),
            (
                format!("{h}Content-Length: 5, 5\r\n\r\nhello"),
                "malformed Content-Length",
            ),
            (
                format!("{h}Content-Length: +5\r\n\r\nhello"),
                "malformed Content-Length",
            ),
            (
                format!("{h}Content-Length: \r\n\r\n"),
                "malformed Content-Length",
            ),
            (
                format!("{h}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
                "final coding",
            ),
            (
                format!("{h}Transfer-Encoding: gzip\r\n\r\n"),
                "final coding",
            ),
            (
                format!(
                    "{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                ),
                "final coding",
            ),
            (
                format!(
                    "{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"
                ),
                "final coding",
            ),
            (format!("{h}Transfer-Encoding: \r\n\r\n"), "final coding"),
            (
                "POST /e HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
                "HTTP/1.0",
            ),
            (format!("{h}X-A: 1\r\n folded\r\n\r\n"), "obs-fold"),
            (
                format!("{h}Content-Length : 5\r\n\r\nhello"),
                "whitespace before the colon",
            ),
            (
                format!("{h}Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n"),
                "whitespace before the colon",
            ),
            ("GET /e HTTP/1.1\nHost: x\n\n".into(), "bare LF"),
            (format!("{h}Content-Length: 0\n\r\n"), "bare LF"),
            ("\nGET /e HTTP/1.1\r\nHost: x\r\n\r\n".into(), "bare LF"),
            (
                format!("{h}Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
                "both",
            ),
        ];
        for (bad, why) in &heads {
            let mut stream = GOOD.to_vec();
            stream.extend_from_slice(bad.as_bytes());
            for seed in 0..200 {
                let (at, said) = refusal(&stream, seed).unwrap_or_else(|| panic!("missed {bad:?}"));
                assert!(said.contains(why), "{bad:?}: {said}");
                // Cut at the bad head (at the start of the read that held it, when it
                // began in an earlier one): the valid requests before it are kept whole.
                assert!(at <= GOOD.len() + bad.len(), "{bad:?}: {at}");
            }
        }
        let bodies: Vec<(String, &str)> = vec![
            (
                format!("{h}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
                "bare LF in a chunk-size",
            ),
            (
                format!("{h}Transfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n"),
                "CR without LF",
            ),
            (
                format!("{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n"),
                "not followed by CRLF",
            ),
            (
                format!("{h}Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
                "malformed chunk size",
            ),
            (
                format!(
                    "{h}Transfer-Encoding: chunked\r\n\r\n{}\r\n",
                    "f".repeat(16)
                ),
                "too large",
            ),
            (
                format!("{h}Transfer-Encoding: chunked\r\n\r\n5;{ext}\r\nhello\r\n0\r\n\r\n"),
                "extension too long",
            ),
            (
                format!("{h}Transfer-Encoding: chunked\r\n\r\n0\r\n{trailer}\r\n"),
                "trailers too large",
            ),
            (
                format!("{h}Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\n\r\n"),
                "bare LF in the trailers",
            ),
            (
                format!("{h}Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n folded\r\n\r\n"),
                "obs-fold in the trailers",
            ),
        ];
        for (bad, why) in &bodies {
            let head_end = GOOD.len() + find_head_end(bad.as_bytes()).unwrap();
            let mut stream = GOOD.to_vec();
            stream.extend_from_slice(bad.as_bytes());
            for seed in 0..200 {
                let (at, said) = refusal(&stream, seed).unwrap_or_else(|| panic!("missed {bad:?}"));
                assert!(said.contains(why), "{bad:?}: {said}");
                // Cut inside the body, never before its head (which hyper has already taken).
                assert!(
                    at >= head_end,
                    "{bad:?}: cut at {at}, head ends at {head_end}"
                );
            }
        }
    }

    /// What strictness must not refuse: leading empty lines, chunk extensions and trailers
    /// within limits, codings before `chunked`, `Content-Length: 0`, HTTP/1.0 with a length.
    #[test]
    fn strict_framing_still_passes_what_is_valid() {
        let ext = "x".repeat(MAX_CHUNK_EXT as usize - 8);
        let ok = format!(
            "\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi\
POST /c HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n2;a={ext}\r\nhi\r\n0\r\nA: 1\r\nB: 2\r\n\r\n\
POST /d HTTP/1.1\r\nContent-Length:0\r\nX-Folded-Looking: a b\r\n\r\n\
GET /e HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        for seed in 0..300 {
            assert_eq!(refusal(ok.as_bytes(), seed), None, "seed {seed}");
            let mut f = Framer::default();
            f.feed(ok.as_bytes());
            assert!(f.at_boundary());
        }
    }

    /// The differential check (the fuzz target's, see `fuzz/`) over the pipelines above, every
    /// refused case, and seeded mutations of them; plus the fuzz corpus committed in
    /// `fuzz/seeds/h1_differential` (minimized from the fuzzer's runs).
    #[test]
    fn the_framer_and_hyper_agree_on_every_boundary() {
        let mut cases: Vec<Vec<u8>> = vec![GOOD.to_vec()];
        for bad in [
            &b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"GET /e HTTP/1.1\nHost: x\n\nGET /f HTTP/1.1\r\n\r\n",
            b"POST /e HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"\r\n\r\nPOST /e HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
        ] {
            cases.push([GOOD, bad].concat());
        }
        let alphabet =
            b"\r\n :;,0123456789abcdefxXGETPOSTHTTP/1.01chunkedContent-LengthTransfer-Encoding";
        let mutated = differential::mutations(&cases, alphabet, 300, 20);
        cases.extend(mutated);
        cases.extend(differential::committed_seeds());
        for case in &cases {
            differential::check(case);
        }
        // The check is not vacuous: hyper and the framer both see GOOD's four requests, and
        // the bodies of the first three (hyper drops the last when the input ends).
        let (ours, stopped) = differential::framer_view(GOOD);
        assert_eq!((ours.len(), stopped), (4, None));
        let theirs = differential::hyper_view(GOOD);
        assert_eq!(theirs[..3], ours[..3]);
        assert_eq!(theirs[3].head_end, ours[3].head_end);
    }

    /// Found by the h1_framing fuzz target: an obs-fold line in a head that never completes
    /// was refused when the head came in one read, not when it came in pieces. A verdict
    /// waits for the head's end, whatever the reads.
    #[test]
    fn a_verdict_does_not_depend_on_the_reads() {
        let stream = b"nnection:\r\n\r\nGE\xb2 / H/P1.gzipTT1\r\nHo\rx\r\n ciose.gzip\r\nCoTr\ra";
        let whole = {
            let mut f = Framer::default();
            f.feed(stream)
        };
        assert_eq!(whole, Verdict::Pass);
        for seed in 0..200 {
            assert_eq!(refusal(stream, seed), None, "seed {seed}");
        }
        // Completed, the head is refused, in one read or many.
        let done = [&stream[..], b"\r\n\r\n"].concat();
        for seed in 0..200 {
            let (_, why) = refusal(&done, seed).expect("refused once complete");
            assert!(why.contains("obs-fold"), "{why}");
        }
    }
}
