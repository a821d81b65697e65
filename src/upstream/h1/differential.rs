//! The differential check behind `fuzz/fuzz_targets/h1_response.rs`: the same response bytes
//! go to our exchange's parser (`parse_head`, then the body decoder `step`, the code the
//! proxy runs) and to hyper's HTTP/1 client, and wherever ours reads a complete response,
//! hyper must read the same status, the same body bytes and the same trailers. Ours may
//! refuse more than hyper (the proxy then answers 502 or cuts the body: nothing passes that
//! a stricter reader would not), never less. Compiled for tests and under `cargo fuzz`
//! (`--cfg fuzzing`) only.

use super::{Framing, Step, parse_head, step};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A response as read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub status: u16,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

/// The request a fuzz input answers: its first byte picks HEAD (`H`) or GET (any other).
fn split(data: &[u8]) -> (Method, &[u8]) {
    match data.split_first() {
        Some((b'H', rest)) => (Method::HEAD, rest),
        Some((_, rest)) => (Method::GET, rest),
        None => (Method::GET, data),
    }
}

/// Our reading of `data` as the answer to a `method` request, the upstream closing after
/// it; `None` where ours refuses it or it ends early.
pub fn ours(data: &[u8], method: &Method) -> Option<Read> {
    let mut buf = BytesMut::from(data);
    let head = loop {
        let h = parse_head(&mut buf, method == Method::HEAD).ok()??;
        let status = h.response.status();
        if !status.is_informational() {
            break h;
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // Never asked for: the proxy answers 502 (BadUpgrade).
            return None;
        }
    };
    let mut framing = head.framing;
    let mut read = Read {
        status: head.response.status().as_u16(),
        body: Vec::new(),
        trailers: None,
    };
    loop {
        match step(&mut framing, &mut buf) {
            Step::Data(d) => read.body.extend_from_slice(&d),
            Step::Trailers(t) => read.trailers = Some(t),
            Step::End => return Some(read),
            // Everything has been read: the close ends only a body read to the close.
            Step::More if framing == Framing::Eof => return Some(read),
            Step::More | Step::Fail(_) => return None,
        }
    }
}

/// Serves `data` once the request has been written (before, hyper would take it for an
/// answer nobody asked for), then the end of the stream; takes every write.
struct Replay {
    data: Bytes,
    asked: bool,
    reader: Option<std::task::Waker>,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.asked {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = self.data.len().min(buf.remaining());
        let chunk = self.data.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.asked = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// hyper's client's reading of the same bytes; `None` where it fails.
pub fn theirs(data: &[u8], method: &Method) -> Option<Read> {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
    }
    let io = TokioIo::new(Replay {
        data: Bytes::copy_from_slice(data),
        asked: false,
        reader: None,
    });
    let req = Request::builder()
        .method(method.clone())
        .uri("/")
        .header("host", "upstream")
        .body(Empty::<Bytes>::new())
        .ok()?;
    RT.with(|rt| {
        rt.block_on(async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            let exchange = async {
                let resp = sender.send_request(req).await.ok()?;
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                let mut read = Read {
                    status,
                    body: Vec::new(),
                    trailers: None,
                };
                while let Some(frame) = body.frame().await {
                    let frame = frame.ok()?;
                    match frame.into_data() {
                        Ok(d) => read.body.extend_from_slice(&d),
                        Err(f) => read.trailers = f.into_trailers().ok(),
                    }
                }
                Some(read)
            };
            let (read, _) = tokio::join!(exchange, conn);
            read
        })
    })
}

/// Panics where ours read a complete response that hyper reads differently or not at all.
pub fn check(data: &[u8]) {
    let (method, data) = split(data);
    let Some(mine) = ours(data, &method) else {
        return;
    };
    let input = || String::from_utf8_lossy(data).into_owned();
    let Some(hypers) = theirs(data, &method) else {
        panic!(
            "ours read {mine:?} where hyper's client failed; {method} answered by {:?}",
            input()
        );
    };
    assert_eq!(mine.status, hypers.status, "status; input {:?}", input());
    assert_eq!(
        mine.body,
        hypers.body,
        "body of a {} response; input {:?}",
        mine.status,
        input()
    );
    if hypers.trailers.is_some() {
        assert_eq!(
            mine.trailers,
            hypers.trailers,
            "trailers; input {:?}",
            input()
        );
    }
}
