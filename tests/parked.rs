//! Idle keep-alive connections give hyper's buffers back and park on the socket alone
//! (`canaryd_parked_connections`), and nothing a client can see changes: the next request on
//! the same connection is served, a request cut in the middle, a response still streaming,
//! pipelined requests and request bodies are never taken for idleness, and a parked
//! connection closes with its client, the idle timeout and the drain. Raw TCP on loopback, so
//! every byte of both directions is the test's.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw HTTP/1.1 client connection, with the bytes read past the last response.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(proxy: &Proxy) -> Raw {
        Raw {
            stream: TcpStream::connect(proxy.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the response came")
            .unwrap();
        assert!(
            n > 0,
            "the proxy closed the connection; had {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn take_until(&mut self, pat: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(pat.len()).position(|w| w == pat) {
                return self.buf.drain(..i + pat.len()).collect();
            }
            self.fill().await;
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill().await;
        }
        self.buf.drain(..n).collect()
    }

    /// One response: status and body (Content-Length or chunked).
    async fn response(&mut self) -> (u16, Vec<u8>) {
        let head = String::from_utf8(self.take_until(b"\r\n\r\n").await).unwrap();
        let status: u16 = head[9..12].parse().unwrap();
        let lower = head.to_ascii_lowercase();
        let body = if let Some(cl) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            self.take(cl.trim().parse().unwrap()).await
        } else if lower.contains("transfer-encoding: chunked") {
            let mut body = Vec::new();
            loop {
                let line = self.take_until(b"\r\n").await;
                let size =
                    usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).unwrap();
                let data = self.take(size + 2).await;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&data[..size]);
            }
            body
        } else {
            Vec::new()
        };
        (status, body)
    }

    async fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        self.response().await
    }

    /// The proxy closed its side: EOF with nothing more.
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn parked(proxy: &Proxy) -> f64 {
    proxy.metric_value("canaryd_parked_connections")
}

async fn wait_parked(proxy: &Proxy, n: f64) {
    wait_for(&format!("{n} parked connections"), || parked(proxy) == n).await;
}

async fn one_origin(extra: &str) -> (Origin, Proxy) {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&one_version_yaml(&origin, extra)).await;
    (origin, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_parks_and_serves_its_next_request_on_the_same_socket() {
    let (origin, proxy) = one_origin("").await;
    let mut c = Raw::connect(&proxy).await;
    assert_eq!(c.get("/a").await, (200, b"stable".to_vec()));
    wait_parked(&proxy, 1.0).await;
    assert_eq!(proxy.metric_value("canaryd_open_connections"), 1.0);
    // The same TCP connection: the origin sees the second request, the client its answer.
    assert_eq!(c.get("/b").await, (200, b"stable".to_vec()));
    assert_eq!(origin.connections(), 1, "one upstream connection, reused");
    assert_eq!(origin.seen().len(), 2);
    // Parks again once idle, any number of times.
    wait_parked(&proxy, 1.0).await;
    assert_eq!(c.get("/c").await, (200, b"stable".to_vec()));
    wait_parked(&proxy, 1.0).await;
    // Closed by the client while parked: nothing left open.
    drop(c);
    wait_parked(&proxy, 0.0).await;
    wait_for("the connection closed", || {
        proxy.metric_value("canaryd_open_connections") == 0.0
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_in_the_middle_a_slow_response_and_a_body_are_not_idleness() {
    let (_origin, proxy) = one_origin("").await;
    let mut c = Raw::connect(&proxy).await;
    assert_eq!(c.get("/warm").await.0, 200);
    wait_parked(&proxy, 1.0).await;

    // Half a head, then well past the linger: not parked (mid-message), then served.
    c.send(b"GET /half HTTP/1.1\r\nHo").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(parked(&proxy), 0.0);
    c.send(b"st: x\r\n\r\n").await;
    assert_eq!(c.response().await, (200, b"stable".to_vec()));

    // A response that streams for ~1 s (6 chunks 150 ms apart): delivered whole.
    let (status, body) = c.get("/drip/6/150").await;
    assert_eq!((status, body.len()), (200, 6 * 1024));

    // A request body sent slowly across the linger: read whole by the origin.
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(parked(&proxy), 0.0);
    c.send(b"world").await;
    assert_eq!(c.response().await, (200, b"10".to_vec()));

    // Chunked, the same.
    c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(parked(&proxy), 0.0);
    c.send(b"0\r\n\r\n").await;
    assert_eq!(c.response().await, (200, b"3".to_vec()));

    // Pipelined, in one write, before and after a park.
    wait_parked(&proxy, 1.0).await;
    c.send(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(c.response().await.0, 200);
    assert_eq!(c.response().await.0, 200);
    wait_parked(&proxy, 1.0).await;
    drop(c);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_closes_at_the_idle_timeout_and_at_the_drain() {
    let (_origin, mut proxy) = one_origin("proxy: { idle_timeout: 1s }").await;
    let mut c = Raw::connect(&proxy).await;
    assert_eq!(c.get("/").await.0, 200);
    wait_parked(&proxy, 1.0).await;
    assert!(
        c.closed().await,
        "the idle timeout closes a parked connection"
    );
    wait_parked(&proxy, 0.0).await;

    let mut d = Raw::connect(&proxy).await;
    assert_eq!(d.get("/").await.0, 200);
    wait_parked(&proxy, 1.0).await;
    proxy.begin_stop();
    assert!(d.closed().await, "the drain closes a parked connection");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_upgraded_streams_are_never_parked() {
    let (_origin, proxy) = one_origin("").await;
    let h2 = TestClient::h2c();
    assert_eq!(h2.get(&proxy.url("/a"), &[]).await.status, 200);
    // Well past the linger: the h2c connection is not HTTP/1 requests the guard follows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(parked(&proxy), 0.0);
    assert_eq!(h2.get(&proxy.url("/b"), &[]).await.status, 200);
    assert_eq!(proxy.metric_value("canaryd_open_connections"), 1.0);
    drop(h2);
    proxy.stop().await;
}

/// Many parked connections share one worker's lot: each is served again on its own socket
/// whichever of them wakes and in any order (slots in the lot are reused), the ones their
/// clients close leave it, and the gauges count exactly what is open and parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_parked_connections_wake_one_by_one_and_leave_when_closed() {
    let (origin, proxy) = one_origin("").await;
    let mut conns = Vec::new();
    for i in 0..40 {
        let mut c = Raw::connect(&proxy).await;
        assert_eq!(c.get(&format!("/first/{i}")).await.0, 200);
        conns.push(c);
    }
    wait_parked(&proxy, 40.0).await;
    // Every third one closes while parked; the others are woken from the last to the first,
    // twice, parking again in between.
    for round in 0..2 {
        for (i, c) in conns.iter_mut().enumerate().rev() {
            let (status, body) = c.get(&format!("/again/{round}/{i}")).await;
            assert_eq!((status, body.as_slice()), (200, &b"stable"[..]), "conn {i}");
        }
        if round == 0 {
            wait_parked(&proxy, 40.0).await;
            let mut kept = Vec::new();
            for (i, c) in conns.into_iter().enumerate() {
                if i % 3 != 0 {
                    kept.push(c);
                } else {
                    drop(c);
                }
            }
            conns = kept;
            wait_parked(&proxy, conns.len() as f64).await;
        }
    }
    assert_eq!(conns.len(), 26);
    wait_parked(&proxy, 26.0).await;
    assert_eq!(proxy.metric_value("canaryd_open_connections"), 26.0);
    // Each request reached the origin once: 40 + 40 + 26.
    assert_eq!(origin.seen().len(), 106);
    drop(conns);
    wait_parked(&proxy, 0.0).await;
    wait_for("all closed", || {
        proxy.metric_value("canaryd_open_connections") == 0.0
    })
    .await;
    proxy.stop().await;
}

static RELEASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_release() {
    RELEASES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Once a burst of connections has parked, the lot gives the heap back (the binary's hook is
/// glibc's `malloc_trim`; here a counter): what the burst's requests used does not stay
/// resident for as long as its connections idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_parked_gives_the_heap_back() {
    canaryd::server::set_heap_release(count_release);
    let (_origin, proxy) = one_origin("").await;
    let before = RELEASES.load(std::sync::atomic::Ordering::SeqCst);
    let mut conns = Vec::new();
    for i in 0..10 {
        let mut c = Raw::connect(&proxy).await;
        assert_eq!(c.get(&format!("/burst/{i}")).await.0, 200);
        conns.push(c);
    }
    wait_parked(&proxy, 10.0).await;
    wait_for("the heap released after the burst parked", || {
        RELEASES.load(std::sync::atomic::Ordering::SeqCst) > before
    })
    .await;
    drop(conns);
    proxy.stop().await;
}
