//! Who is at fault: a client that breaks its request body, stops sending, resets the
//! connection mid-upload or mid-download, or leaves before the response, is counted in
//! `canaryd_downstream_errors_total{route,kind}` and never against the version that served it
//! (no `canaryd_requests_total` error, no upstream error, nothing in the analysis window).
//! Raw TCP clients on loopback, so each failure is exactly the one named.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn yaml(origin: &Origin) -> String {
    format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
routes:
  - name: app
    timeouts: {{ idle: 300ms }}
    versions:
      stable: {{ endpoints: ["{}"] }}
"#,
        origin.addr
    )
}

fn downstream(kind: &str) -> String {
    format!("canaryd_downstream_errors_total{{route=\"app\",kind=\"{kind}\"}}")
}

/// Nothing counted against the version: no request series but the `ok` codes, no upstream
/// error, no failure in the analysis window.
async fn version_is_clean(proxy: &Proxy, ok_codes: &[u16]) {
    let text = proxy.state.metrics.encode();
    for l in text.lines().filter(|l| {
        l.starts_with("canaryd_requests_total{route=\"app\"")
            || l.starts_with("canaryd_upstream_errors_total{route=\"app\"")
    }) {
        let ok = ok_codes
            .iter()
            .any(|c| l.contains(&format!("code=\"{c}\"")));
        assert!(ok || l.ends_with(" 0"), "counted against the version: {l}");
    }
    let (code, analysis) = proxy
        .admin_call("GET", "/api/v1/routes/app/analysis?min_requests=1", "")
        .await;
    assert_eq!(code, 200, "{analysis}");
    let errors = analysis["versions"]["stable"]["errors_5xx"].as_u64();
    assert_eq!(errors, Some(0), "analysis window: {analysis}");
    let requests = analysis["versions"]["stable"]["requests"].as_u64().unwrap();
    assert_eq!(requests as usize, ok_codes.len().min(1), "{analysis}");
}

/// Send `head` and what follows, then read what the server answers until it closes.
async fn exchange(proxy: &Proxy, bytes: &[u8], half_close: bool) -> String {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the proxy neither answered nor closed")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Wait (bounded) until exactly one `client_closed` is counted on the route.
async fn client_closed_counted(proxy: &Proxy) {
    wait_for("client_closed counted", || {
        proxy.metric(&downstream("client_closed")) == Some(1.0)
    })
    .await;
}

/// Reset the connection (RST, not FIN): a client that crashed or gave up.
fn reset(s: TcpStream) {
    s.set_zero_linger().unwrap();
    drop(s);
}

/// Send a malformed body; the client (still reading) gets 400 and it counts as `bad_framing`.
async fn malformed_body_is_a_400(request: &[u8], half_close: bool) {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin)).await;
    let answer = exchange(&proxy, request, half_close).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "got {answer:?}");
    assert_eq!(proxy.metric_value(&downstream("bad_framing")), 1.0);
    version_is_clean(&proxy, &[]).await;
}

#[tokio::test]
async fn broken_chunk_framing_is_a_400_counted_on_the_client() {
    // A valid first chunk, then a size line that is not hex.
    malformed_body_is_a_400(
        b"POST /sink HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n",
        false,
    )
    .await;
}

#[tokio::test]
async fn truncated_body_is_a_400_counted_on_the_client() {
    // 100 bytes promised, 10 sent, then the client's side of the connection ends.
    malformed_body_is_a_400(
        b"POST /sink HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n0123456789",
        true,
    )
    .await;
}

#[tokio::test]
async fn slow_body_is_a_408_counted_on_the_client() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\na")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("still open after the idle timeout")
        .ok();
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 408"), "got {answer:?}");
    assert_eq!(proxy.metric_value(&downstream("body_timeout")), 1.0);
    version_is_clean(&proxy, &[]).await;
}

#[tokio::test]
async fn reset_mid_upload_is_counted_on_the_client() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nhost: a\r\ncontent-length: 1000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    // The upload is under way at the origin before the client resets.
    wait_for("the origin to see the upload", || !origin.seen().is_empty()).await;
    reset(s);
    client_closed_counted(&proxy).await;
    version_is_clean(&proxy, &[]).await;
}

#[tokio::test]
async fn reset_mid_download_is_counted_on_the_client() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // 200 chunks of 1 KiB, one every 20 ms: a long download.
    s.write_all(b"GET /drip/200/20 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "no response head"
    );
    reset(s);
    client_closed_counted(&proxy).await;
    // The version answered 200 and was streaming fine: that is all it is credited with.
    assert_eq!(
        proxy.metric_value("canaryd_requests_total{route=\"app\",version=\"stable\",code=\"200\"}"),
        1.0
    );
    version_is_clean(&proxy, &[200]).await;
}

#[tokio::test]
async fn client_gone_before_the_response_is_counted_on_the_client() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /sleep/3000 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    wait_for("the origin to get the request", || {
        !origin.seen().is_empty()
    })
    .await;
    reset(s);
    client_closed_counted(&proxy).await;
    version_is_clean(&proxy, &[]).await;
}

#[tokio::test]
async fn h2_stream_cancelled_mid_upload_is_counted_on_the_client() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin)).await;
    let mut client = h2_client(proxy.addr).await;
    let req = http::Request::post(format!("http://{}/sink", proxy.addr))
        .body(())
        .unwrap();
    let (resp, mut body) = client.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[b'x'; 1024]), false)
        .unwrap();
    wait_for("the origin to see the upload", || !origin.seen().is_empty()).await;
    body.send_reset(h2::Reason::CANCEL);
    drop(resp);
    client_closed_counted(&proxy).await;
    version_is_clean(&proxy, &[]).await;
}

/// A stream the client resets while canaryd waits for the upstream's answer: the request is
/// dropped at once (its upstream exchange with it), not left running until the upstream
/// answers a minute later, and it is the client's doing.
#[tokio::test]
async fn h2_stream_reset_while_the_upstream_thinks_is_counted_on_the_client() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin)).await;
    let mut client = h2_client(proxy.addr).await;
    let req = http::Request::get(format!("http://{}/sleep/60000", proxy.addr))
        .body(())
        .unwrap();
    let (resp, mut stream) = client.send_request(req, true).unwrap();
    wait_for("the origin to see the request", || {
        !origin.seen().is_empty()
    })
    .await;
    assert_eq!(proxy.metric_value("canaryd_in_flight_requests"), 1.0);
    stream.send_reset(h2::Reason::CANCEL);
    drop(resp);
    client_closed_counted(&proxy).await;
    wait_for("the request to end", || {
        proxy.metric_value("canaryd_in_flight_requests") == 0.0
    })
    .await;
    version_is_clean(&proxy, &[]).await;
}

#[tokio::test]
async fn refused_before_routing_counts_with_an_empty_route() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(&origin)).await;
    // Two Host headers: refused before any route is chosen.
    let answer = exchange(
        &proxy,
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "got {answer:?}");
    // A head that does not parse.
    let answer = exchange(&proxy, b"GET / HTTP/1.1\r\nho st: a\r\n\r\n", false).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "got {answer:?}");
    wait_for("both counted", || {
        proxy.metric("canaryd_downstream_errors_total{route=\"\",kind=\"bad_framing\"}")
            == Some(2.0)
    })
    .await;
    assert!(origin.seen().is_empty());
    version_is_clean(&proxy, &[]).await;
}

/// A gRPC call the client cancels mid-stream: CANCELLED in the gRPC metric, the client's
/// leaving in `client_closed`, and nothing in the version's analysis window.
#[tokio::test]
async fn grpc_call_cancelled_by_the_client_is_not_a_version_failure() {
    // An upstream that starts a gRPC response and never finishes it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                    .await;
                let mut rest = [0u8; 64];
                while s.read(&mut rest).await.unwrap_or(0) > 0 {}
            });
        }
    });
    let proxy = Proxy::start(&format!(
        r#"listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
routes:
  - name: app
    versions:
      stable: {{ endpoints: ["{upstream}"] }}
"#
    ))
    .await;
    let mut c = h2_client(proxy.addr).await;
    let req = http::Request::post(format!("http://{}/svc/Call", proxy.addr))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (resp, _) = c.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert!(body.data().await.unwrap().is_ok(), "first message");
    drop(body);
    drop(c);
    client_closed_counted(&proxy).await;
    assert_eq!(
        proxy.metric_value(
            "canaryd_grpc_responses_total{route=\"app\",version=\"stable\",grpc_status=\"1\"}"
        ),
        1.0
    );
    let (_, analysis) = proxy
        .admin_call("GET", "/api/v1/routes/app/analysis?min_requests=1", "")
        .await;
    assert_eq!(analysis["versions"]["stable"]["requests"], 0, "{analysis}");
}
