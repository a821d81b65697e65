//! The differential check behind `fuzz/fuzz_targets/h1_differential.rs`: the same bytes go to the
//! [`Framer`] and to hyper's HTTP/1 server (configured as the proxy's), and the two must agree
//! on where every message's head and body end, for as long as the framer follows the stream
//! and has not refused it. hyper may refuse more than the framer (it then closes: nothing
//! can be smuggled), but never see a message boundary the framer does not.
//!
//! Both are fed one byte at a time, so hyper's view of a head's end is exact: with one byte
//! per read, hyper parses a head, and calls the service, on the very byte that ends it. A
//! body's end is compared by its length (the data bytes hyper decoded against the ones the
//! framer counted), and through the next head's end.
//! Compiled for tests and under `cargo fuzz` (`--cfg fuzzing`) only.

use super::{Framer, Verdict};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where one message's head ended (the offset just past it), and its body's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub head_end: usize,
    /// Data bytes of the body; `None` while it has not ended (or, for hyper, failed).
    pub body_len: Option<u64>,
}

/// The framer's reading of `data`: the messages, and where it stopped following (refused or
/// opaque), as the number of bytes fed before the byte that made it stop.
pub fn framer_view(data: &[u8]) -> (Vec<Message>, Option<usize>) {
    let mut f = Framer::default();
    let mut messages: Vec<Message> = Vec::new();
    let mut body_len = 0u64;
    for (i, byte) in data.iter().enumerate() {
        let before = f.progress();
        if before == (Progress::Body { data: true }) {
            body_len += 1;
        }
        if let Verdict::Refuse { .. } = f.feed(std::slice::from_ref(byte)) {
            return (messages, Some(i));
        }
        let after = f.progress();
        if after == Progress::Opaque {
            return (messages, Some(i));
        }
        match (before, after) {
            // A head ended: with no body (straight back to a head) or into its body.
            (Progress::Head { pending }, Progress::Head { pending: 0 }) if pending > 1 => messages
                .push(Message {
                    head_end: i + 1,
                    body_len: Some(0),
                }),
            (Progress::Head { .. }, Progress::Body { .. }) => {
                body_len = 0;
                messages.push(Message {
                    head_end: i + 1,
                    body_len: None,
                })
            }
            (Progress::Body { .. }, Progress::Head { .. }) => {
                if let Some(m) = messages.last_mut() {
                    m.body_len = Some(body_len);
                }
            }
            _ => {}
        }
    }
    (messages, None)
}

/// Where the framer refuses `data` (the offset of the byte that made it refuse), if it does.
/// A stream it stops following (opaque) is not refused: hyper reads on.
pub fn framer_refusal(data: &[u8]) -> Option<usize> {
    let mut f = Framer::default();
    data.iter()
        .position(|byte| matches!(f.feed(std::slice::from_ref(byte)), Verdict::Refuse { .. }))
}

/// Where the framer is, for the differential check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// In a head, `pending` bytes of it seen.
    Head {
        pending: usize,
    },
    /// In a body: `data` in its data bytes (a fixed length, or a chunk's data).
    Body {
        data: bool,
    },
    Opaque,
    Refused,
}

/// Hands out one byte per read and counts them.
struct OneByte {
    data: Bytes,
    at: Rc<RefCell<usize>>,
}

impl AsyncRead for OneByte {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut at = self.at.borrow_mut();
        if *at < self.data.len() && buf.remaining() > 0 {
            buf.put_slice(&self.data[*at..*at + 1]);
            *at += 1;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for OneByte {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// hyper's reading of `data`, served the way the proxy's listener serves HTTP/1.
pub fn hyper_view(data: &[u8]) -> Vec<Message> {
    hyper_requests(data).into_iter().map(|(m, _)| m).collect()
}

/// A request as a parser read it: method, target, version and fields, in order.
pub fn describe<B>(req: &Request<B>) -> String {
    format!(
        "{} {} {:?} {:?}",
        req.method(),
        req.uri(),
        req.version(),
        req.headers()
    )
}

/// [`hyper_view`] with each request as hyper read it ([`describe`], followed by " with a body"
/// when hyper reads one).
pub fn hyper_requests(data: &[u8]) -> Vec<(Message, String)> {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
    }
    let at = Rc::new(RefCell::new(0usize));
    let seen: Arc<Mutex<Vec<(Message, String)>>> = Arc::default();
    let io = OneByte {
        data: Bytes::copy_from_slice(data),
        at: at.clone(),
    };
    let (log, pos) = (seen.clone(), at.clone());
    let svc = service_fn(move |req: Request<Incoming>| {
        // Called as the head is parsed (before the future runs, by when hyper may read on).
        let index = {
            let mut log = log.lock().unwrap();
            log.push((
                Message {
                    head_end: *pos.borrow(),
                    body_len: None,
                },
                // Whether hyper reads a body is known from the head (the body itself may not be
                // read to its end before the input does).
                if http_body::Body::is_end_stream(req.body()) {
                    describe(&req)
                } else {
                    describe(&req) + " with a body"
                },
            ));
            log.len() - 1
        };
        let log = log.clone();
        async move {
            let mut body = req.into_body();
            let mut len = 0u64;
            let ended = loop {
                match body.frame().await {
                    None => break true,
                    Some(Ok(frame)) => len += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Some(Err(_)) => break false,
                }
            };
            if ended {
                log.lock().unwrap()[index].0.body_len = Some(len);
            }
            Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    RT.with(|rt| {
        let local = tokio::task::LocalSet::new();
        local.block_on(rt, async {
            // As the server configures it for plain HTTP/1 (`accept_loop`).
            let _ = hyper::server::conn::http1::Builder::new()
                .max_buf_size(crate::server::H1_MAX_BUF)
                .max_header_size(crate::server::H1_MAX_BUF)
                .serve_connection(TokioIo::new(io), svc)
                .await;
        })
    });
    seen.lock().unwrap().clone()
}

/// Panics where the two readings disagree: every message hyper parsed from bytes the framer
/// let through (before it refused or stepped aside) must be one the framer found, with the
/// same head end, and where hyper's body ended, the framer's ended with as many data bytes
/// (or the framer stopped following inside it).
pub fn check(data: &[u8]) {
    let (ours, stopped) = framer_view(data);
    let passed = stopped.unwrap_or(data.len());
    let input = || String::from_utf8_lossy(data).into_owned();
    for (k, theirs) in hyper_view(data).iter().enumerate() {
        if theirs.head_end > passed {
            break;
        }
        let Some(mine) = ours.get(k) else {
            panic!(
                "hyper parsed message {k} (head ends at {}) that the framer did not see; \
                 framer: {ours:?}, stopped at {stopped:?}, input {:?}",
                theirs.head_end,
                input()
            );
        };
        assert_eq!(
            mine.head_end,
            theirs.head_end,
            "message {k}: head ends differ; input {:?}",
            input()
        );
        match (theirs.body_len, mine.body_len) {
            (Some(a), Some(b)) => assert_eq!(
                a,
                b,
                "message {k}: body lengths differ; input {:?}",
                input()
            ),
            // The framer stopped following inside this body: nothing after it passed.
            (Some(_), None) if stopped.is_some() => break,
            (Some(a), None) => panic!(
                "message {k}: hyper's body ended after {a} bytes, the framer's did not; input {:?}",
                input()
            ),
            // hyper failed the body and closes.
            (None, _) => break,
        }
    }
}

/// `n` cases made from `base` by one to three random byte edits (replace, insert, remove) with
/// bytes of `alphabet`, seeded: the unit tests' small stand-in for the fuzzers.
#[cfg(test)]
pub fn mutations(base: &[Vec<u8>], alphabet: &[u8], n: usize, seed: u64) -> Vec<Vec<u8>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut c = base[rng.random_range(0..base.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..c.len());
                match rng.random_range(0..3) {
                    0 => c[at] = alphabet[rng.random_range(0..alphabet.len())],
                    1 => c.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    _ => {
                        c.remove(at);
                    }
                }
            }
            c
        })
        .collect()
}

/// The committed fuzz seeds in `fuzz/seeds/h1_differential` (minimized from the fuzzers' runs).
#[cfg(test)]
pub fn committed_seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/h1_differential");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("the committed seeds")
        .flatten()
        .map(|entry| std::fs::read(entry.path()).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}
