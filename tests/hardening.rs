//! Hostile or broken clients and shutdown: bad Host headers are refused before anything
//! reaches an upstream, connection limits hold, silent connections are closed, and SIGTERM
//! drains in-flight requests (a second signal exits at once).

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send raw bytes, return the first chunk of the answer.
async fn raw(stream: &mut TcpStream, req: &str) -> String {
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn yaml(origin: &Origin, proxy_extra: &str) -> String {
    format!(
        r#"listeners: [{{ address: "127.0.0.1:0" }}]
proxy: {{ version_header: true{proxy_extra} }}
routes:
  - name: shop
    match: {{ host: shop.example.com }}
    versions: {{ stable: {{ endpoints: ["{0}"] }} }}
  - name: other
    versions: {{ stable: {{ endpoints: ["{0}"] }} }}
"#,
        origin.addr
    )
}

#[tokio::test]
async fn host_header_problems_are_refused_before_the_upstream() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, "")).await;
    for (req, why) in [
        ("GET / HTTP/1.1\r\n\r\n", "missing Host header"),
        (
            "GET / HTTP/1.1\r\nHost: shop.example.com\r\nHost: evil.example\r\n\r\n",
            "more than one Host header",
        ),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let answer = raw(&mut s, req).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{req:?} → {answer}");
        assert!(answer.contains(why), "{answer}");
    }
    assert!(origin.seen().is_empty(), "nothing reached the origin");

    // HTTP/1.0 may omit Host.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(
        raw(&mut s, "GET / HTTP/1.0\r\n\r\n")
            .await
            .starts_with("HTTP/1.0 200")
    );
}

#[tokio::test]
async fn absolute_form_target_overrides_host() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, "")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = raw(
        &mut s,
        "GET http://shop.example.com/cart HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = origin.last();
    assert_eq!(seen.headers["host"], "shop.example.com");
    assert_eq!(seen.uri, "/cart");
}

#[tokio::test]
async fn connection_cap_queues_the_excess_instead_of_failing() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, ", max_connections: 2")).await;
    let req = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut c1 = TcpStream::connect(proxy.addr).await.unwrap();
    let mut c2 = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(raw(&mut c1, req).await.starts_with("HTTP/1.1 200"));
    assert!(raw(&mut c2, req).await.starts_with("HTTP/1.1 200"));
    // A third client waits in the backlog while both slots are held...
    let mut c3 = TcpStream::connect(proxy.addr).await.unwrap();
    c3.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), c3.read(&mut buf)).await;
    assert!(early.is_err(), "third connection served above the cap");
    // ...and is served as soon as one closes.
    drop(c1);
    let n = tokio::time::timeout(Duration::from_secs(10), c3.read(&mut buf))
        .await
        .expect("served after a slot freed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn oversized_request_head_gets_431_and_reaches_nothing() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, "")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let big = "a".repeat(70 * 1024);
    let answer = raw(
        &mut s,
        &format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // 101 header fields: over the count limit.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(&mut s, &format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, ", header_timeout: 300ms")).await;
    // A client that connects and closes without a byte (a TCP health check) is no error.
    drop(TcpStream::connect(proxy.addr).await.unwrap());
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the server closed the silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Counted before the server closed it; the health check, answered long before, not.
    assert_eq!(
        proxy.metric("canaryd_downstream_errors_total{route=\"\",kind=\"header_timeout\"}"),
        Some(1.0)
    );
    // A half-sent request (slowloris) is cut too.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the server closed the slow connection")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Both are the client's fault, counted before any route was chosen.
    wait_for("both header timeouts counted", || {
        proxy.metric("canaryd_downstream_errors_total{route=\"\",kind=\"header_timeout\"}")
            == Some(2.0)
    })
    .await;
}

/// Read until the server closes; panics if it has not within 10 s.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, what: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: the server kept the connection open"))
        .ok();
    buf
}

#[tokio::test]
async fn idle_keep_alive_and_preface_only_h2_connections_are_closed() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, ", idle_timeout: 300ms")).await;
    // HTTP/1.1: one request, then nothing. hyper alone would keep this open forever.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = raw(&mut s, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    read_until_closed(&mut s, "idle HTTP/1.1").await;
    // HTTP/2: the preface and SETTINGS, then nothing. The server says GOAWAY and closes.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let frames = read_until_closed(&mut s, "preface-only HTTP/2").await;
    // Frame type 7 = GOAWAY somewhere in what the server sent.
    let mut at = 0;
    let mut goaway = false;
    while at + 9 <= frames.len() {
        let len = u32::from_be_bytes([0, frames[at], frames[at + 1], frames[at + 2]]) as usize;
        goaway |= frames[at + 3] == 7;
        at += 9 + len;
    }
    assert!(goaway, "no GOAWAY before the close");
    // A connection in use is not idle: a request slower than the idle timeout completes.
    let client = TestClient::http1();
    assert_eq!(client.get(&proxy.url("/sleep/800"), &[]).await.status, 200);
}

/// A plain connection goes to hyper's HTTP/1 server when its first bytes are not HTTP/2's
/// preface, and to the auto builder (which tells the two apart) when they are or could still
/// become it: a preface split across two writes is still HTTP/2, and a request line that only
/// starts like the preface is still HTTP/1.
#[tokio::test]
async fn a_split_preface_is_still_http2_and_a_lookalike_request_is_http1() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, "")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2").await.unwrap();
    // Apart, so the proxy's first look sees only the start (a pause, not a timing assertion).
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b".0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut frame))
        .await
        .expect("no answer to a split preface")
        .unwrap();
    // An HTTP/1 server would have answered "HTTP/1.1 400"; HTTP/2's first frame is SETTINGS.
    assert_eq!(frame[3], 4, "not a SETTINGS frame: {frame:?}");
    // "PRI " and then not the preface: an HTTP/1 request with an unusual method.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = raw(&mut s, "PRI /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        origin.seen().iter().any(|r| r.method == "PRI"),
        "{:?}",
        origin.seen()
    );
    // The preface only counts as a connection's first bytes: after an HTTP/1 request it is a
    // malformed HTTP/1 request, not a switch to HTTP/2.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = raw(&mut s, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let rest = read_until_closed(&mut s, "a preface after a request").await;
    // hyper's HTTP/1 server closes on it without an answer; HTTP/2 would send SETTINGS.
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 4"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_its_handshake_is_closed() {
    let origin = Origin::start("stable").await;
    let pki = TestPki::new();
    let cert = pki.issue(&["localhost"], "server");
    let yaml = tls_yaml(&origin, &cert, "") + "proxy: { header_timeout: 300ms }\n";
    let proxy = Proxy::start(&yaml).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    read_until_closed(&mut s, "silent TLS").await;
    // Half a ClientHello (record header promising more) is cut too.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    read_until_closed(&mut s, "half handshake").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_closes_the_connection() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, "")).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    // Open a stream, reset it a moment later, repeat: each gap is long enough that h2's
    // burst limit (pending accept resets) never triggers, which is the paced variant.
    let mut sent = 0;
    for _ in 0..1000 {
        let ready = tokio::time::timeout(Duration::from_secs(5), client.clone().ready()).await;
        let Ok(Ok(mut c)) = ready else { break };
        let req = http::Request::get(format!("http://{}/sleep/2000", proxy.addr))
            .body(())
            .unwrap();
        let Ok((_resp, mut stream)) = c.send_request(req, true) else {
            break;
        };
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
        stream.send_reset(h2::Reason::CANCEL);
        client = c;
    }
    assert!(
        sent < 1000,
        "a connection resetting every stream was never closed"
    );
    assert!(sent >= 100, "closed after {sent} streams: too eager");
    let _ = tokio::time::timeout(Duration::from_secs(10), conn_task).await;
    // The proxy keeps serving everyone else.
    let client = TestClient::h2c();
    assert_eq!(client.get(&proxy.url("/"), &[]).await.status, 200);
}

fn kill(pid: u32, sig: &str) {
    assert!(
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn wait_exit(proc: &mut ProxyProcess, within: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let origin = Origin::start("stable").await;
    let mut proc = ProxyProcess::start(&yaml(&origin, ", drain_timeout: 20s"));
    let url = format!("http://{}/sleep/1500", proc.addr);
    let in_flight =
        tokio::spawn(async move { TestClient::http1().get(&url, &[("host", "a")]).await });
    wait_for("request at the origin", || !origin.seen().is_empty()).await;
    kill(proc.child.id(), "-TERM");
    let r = in_flight.await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "stable"),
        "in-flight request finished"
    );
    assert_eq!(
        wait_exit(&mut proc, Duration::from_secs(20)),
        Some(0),
        "clean exit after the drain"
    );
    assert!(
        TcpStream::connect(proc.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let origin = Origin::start("stable").await;
    let mut proc = ProxyProcess::start(&yaml(&origin, ", drain_timeout: 60s"));
    let url = format!("http://{}/sleep/25000", proc.addr);
    let in_flight =
        tokio::spawn(async move { TestClient::http1().try_get(&url).await.map(|r| r.status) });
    wait_for("request at the origin", || !origin.seen().is_empty()).await;
    kill(proc.child.id(), "-TERM");
    // The first signal starts a drain that would wait for the 25 s request...
    std::thread::sleep(Duration::from_millis(300));
    assert!(proc.child.try_wait().unwrap().is_none(), "still draining");
    kill(proc.child.id(), "-TERM");
    // ...the second ends the process without waiting.
    assert_eq!(wait_exit(&mut proc, Duration::from_secs(10)), Some(130));
    assert!(
        in_flight.await.unwrap().is_none(),
        "the cut request failed, as asked"
    );
}

/// Send `req` in pieces of `piece` bytes; return everything the proxy answered before closing.
async fn raw_split(proxy: &Proxy, req: &[u8], piece: usize) -> String {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for chunk in req.chunks(piece) {
        // The proxy may answer and close before the rest is sent.
        if s.write_all(chunk).await.is_err() {
            break;
        }
        if piece < req.len() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    String::from_utf8_lossy(&read_until_closed(&mut s, "smuggling attempt").await).into_owned()
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, "")).await;
    // The classic CL.TE / TE.CL pair: a front end and a back end that disagree on where the
    // body ends would see a second, smuggled request in it.
    let smuggled = "GET /admin HTTP/1.1\r\nHost: a\r\n\r\n";
    for (order, piece) in [("cl-te", 4096), ("te-cl", 4096), ("cl-te", 1), ("te-cl", 7)] {
        let (first, second) = if order == "cl-te" {
            ("Content-Length: 4", "Transfer-Encoding: chunked")
        } else {
            ("Transfer-Encoding: chunked", "Content-Length: 4")
        };
        let req =
            format!("POST / HTTP/1.1\r\nHost: a\r\n{first}\r\n{second}\r\n\r\n0\r\n\r\n{smuggled}");
        let answer = raw_split(&proxy, req.as_bytes(), piece).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{order}/{piece}: {answer}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{order}: one answer only"
        );
    }
    assert!(origin.seen().is_empty(), "nothing reached the origin");

    // A good request pipelined before the bad one is served; the bad one and anything after
    // it are not.
    let req = format!(
        "GET /ok HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let answer = raw_split(&proxy, req.as_bytes(), 4096).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    let paths: Vec<String> = origin
        .seen()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect();
    assert_eq!(paths, ["/ok"]);

    // Chunked bodies alone and fixed bodies alone keep working on one keep-alive connection,
    // also when a body contains text that looks like headers.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let body = "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let req = format!(
        "POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\nPOST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        body.len(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut s, "pipeline").await).into_owned();
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
}

/// Routes by the host the client asked for, whatever the framing: HTTP/2 `:authority`, an
/// HTTP/1 absolute-form target (which overrides `Host`), or `Host`.
#[tokio::test]
async fn host_routes_see_authority_over_h2_and_absolute_form() {
    let (shop, other) = (Origin::start("shop").await, Origin::start("other").await);
    let proxy = Proxy::start(&format!(
        r#"listeners: [{{ address: "127.0.0.1:0" }}]
routes:
  - name: shop
    match: {{ host: shop.example.com }}
    versions: {{ v: {{ endpoints: ["{}"] }} }}
  - name: other
    versions: {{ v: {{ endpoints: ["{}"] }} }}
"#,
        shop.addr, other.addr
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = raw(
        &mut s,
        "GET http://shop.example.com/cart HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("shop"), "absolute-form: {answer}");
    let answer = raw(
        &mut s,
        "GET http://other.example/cart HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("other"), "absolute-form: {answer}");

    // HTTP/2 has no Host header: the route comes from :authority.
    let client = h2_client(proxy.addr).await;
    for (authority, want) in [("shop.example.com", "shop"), ("other.example", "other")] {
        let mut c = client.clone().ready().await.unwrap();
        let req = http::Request::get(format!("http://{authority}/x"))
            .body(())
            .unwrap();
        let (resp, _) = c.send_request(req, true).unwrap();
        let mut body = resp.await.unwrap().into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(
            String::from_utf8_lossy(&text),
            want,
            "h2 :authority {authority}"
        );
    }
    assert_eq!(shop.last().headers["host"], "shop.example.com");
    assert_eq!(other.last().headers["host"], "other.example");
}

/// The HTTP/2 limits canaryd sets (256 concurrent streams, 64 KiB header lists) are what a
/// client sees, not hyper's defaults (200 streams, 16 KiB).
#[tokio::test]
async fn h2_stream_and_header_list_limits_hold() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, "")).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS arrived (a first request does it).
    let mut c = client.clone().ready().await.unwrap();
    let (resp, _) = c
        .send_request(
            http::Request::get(format!("http://{}/", proxy.addr))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let resp = tokio::select! {
        r = resp => r.unwrap(),
        _ = &mut conn => panic!("connection ended"),
    };
    assert_eq!(resp.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 256);
    tokio::spawn(conn);

    let with_header = |len: usize| {
        http::Request::get(format!("http://{}/h{len}", proxy.addr))
            .header("x-big", "a".repeat(len))
            .body(())
            .unwrap()
    };
    // 32 KiB of header: over hyper's 16 KiB default, within canaryd's 64 KiB.
    let mut c = client.clone().ready().await.unwrap();
    let (resp, _) = c.send_request(with_header(32 * 1024), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(origin.last().uri.path(), "/h32768");
    // 100 KiB: refused, and nothing reaches the origin.
    let mut c = client.clone().ready().await.unwrap();
    let refused = match c.send_request(with_header(100 * 1024), true) {
        Err(_) => true,
        Ok((resp, _)) => match resp.await {
            Err(_) => true,
            Ok(r) => r.status() == 431,
        },
    };
    assert!(refused, "a 100 KiB header list was accepted");
    assert_eq!(origin.last().uri.path(), "/h32768");
}

/// Draining (SIGTERM) closes gracefully: an HTTP/1.1 keep-alive response in flight carries
/// `Connection: close`, an HTTP/2 client gets GOAWAY (no new streams) while its stream in
/// flight still completes.
#[tokio::test]
async fn drain_closes_keep_alive_with_connection_close_and_h2_with_goaway() {
    let origin = Origin::start("stable").await;
    let mut proxy = Proxy::start(&yaml(&origin, "")).await;
    let mut h1 = TcpStream::connect(proxy.addr).await.unwrap();
    h1.write_all(b"GET /sleep/600 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut c = client.clone().ready().await.unwrap();
    let (h2_resp, _) = c
        .send_request(
            http::Request::get(format!("http://{}/sleep/600", proxy.addr))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    wait_for("both requests at the origin", || origin.seen().len() == 2).await;
    proxy.begin_stop();

    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), h1.read_to_end(&mut buf))
        .await
        .expect("keep-alive connection not closed after its response")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");

    // GOAWAY: the client may open no new stream, but the one in flight finishes.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.clone().ready().await {
                Err(_) => return true,
                Ok(mut c) => {
                    let req = http::Request::get(format!("http://{}/late", proxy.addr))
                        .body(())
                        .unwrap();
                    match c.send_request(req, true) {
                        Err(_) => return true,
                        Ok((r, _)) => {
                            if r.await.is_err() {
                                return true;
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no GOAWAY");
    assert!(refused);
    assert_eq!(h2_resp.await.unwrap().status(), 200);
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
}

/// Strict HTTP/1 framing (issue 20): each request whose framing a front end and a back end
/// could read differently is refused with 400 and the connection closed, before anything of
/// it reaches the upstream; the valid request pipelined before it is served, and the request
/// hidden after it never runs. Sent whole and one byte at a time.
#[tokio::test]
async fn ambiguous_framing_is_refused_with_400_and_close() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin, "")).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = "POST /bad HTTP/1.1\r\nHost: a\r\n";
    let heads = [
        format!("{h}Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
        format!("{h}Content-Length: 4, 4\r\n\r\nabcd"),
        format!("{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        format!("{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        "POST /bad HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        format!("{h}X-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("{h}Content-Length : 4\r\n\r\nabcd"),
        "POST /bad HTTP/1.1\nHost: a\nContent-Length: 4\n\nabcd".into(),
        format!("{h}Content-Length: 0\n\r\n"),
    ];
    for bad in &heads {
        for piece in [4096, 1] {
            let req = format!("GET /ok HTTP/1.1\r\nHost: a\r\n\r\n{bad}{smuggled}");
            let answer = raw_split(&proxy, req.as_bytes(), piece).await;
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "{bad:?}/{piece}: {answer}"
            );
            assert!(answer.contains("HTTP/1.1 400"), "{bad:?}/{piece}: {answer}");
            assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{bad:?}: {answer}");
        }
    }
    let paths: Vec<String> = origin
        .seen()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect();
    assert!(paths.iter().all(|p| p == "/ok"), "{paths:?}");

    // A violation inside a chunked body: the head has gone upstream, the body is cut there,
    // the client gets no success and the connection is not reused for what follows.
    let h = "POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let ext = "x".repeat(5000);
    let bodies = [
        format!("{h}4\nabcd\r\n0\r\n\r\n"),
        format!("{h}4\r\nabcdX\r\n0\r\n\r\n"),
        format!("{h}4;{ext}\r\nabcd\r\n0\r\n\r\n"),
        format!("{h}0\r\nX-T: 1\n\r\n"),
    ];
    for bad in &bodies {
        let answer = raw_split(&proxy, format!("{bad}{smuggled}").as_bytes(), 4096).await;
        assert!(!answer.contains(" 200 "), "{bad:?}: {answer}");
        assert!(
            answer.matches("HTTP/1.1 ").count() <= 1,
            "{bad:?}: {answer}"
        );
    }
    assert!(
        origin.seen().iter().all(|s| s.uri.path() != "/smuggled"),
        "nothing after a refused request ran"
    );
}
