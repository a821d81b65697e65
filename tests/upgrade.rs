//! WebSocket (HTTP/1.1 Upgrade) through canaryd with a real client and server
//! (tokio-tungstenite): the version is chosen once at the upgrade request, and an open
//! WebSocket survives config changes.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket echo server answering `<name>:<text>`.
async fn ws_origin(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if ws.send(Message::text(format!("{name}:{t}"))).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_survives_a_reload() {
    let (stable, canary) = (ws_origin("stable").await, ws_origin("canary").await);
    let yaml = format!(
        r#"listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
routes:
  - name: ws
    versions:
      stable: {{ endpoints: ["{stable}"] }}
      canary: {{ endpoints: ["{canary}"], weight: 50 }}
"#
    );
    let proxy = Proxy::start(&yaml).await;
    let rule = r#"{"to": "canary", "when": {"header": {"name": "x-canary", "equals": "always"}}}"#;
    let (code, _) = proxy
        .admin_call("PUT", "/api/v1/routes/ws/rules/pin", rule)
        .await;
    assert_eq!(code, 200);
    let open = |header: bool| {
        let addr = proxy.addr;
        async move {
            let mut req = format!("ws://{addr}/chat").into_client_request().unwrap();
            if header {
                req.headers_mut()
                    .insert("x-canary", "always".parse().unwrap());
            }
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
                .await
                .expect("upgrade");
            assert_eq!(resp.status(), 101);
            ws
        }
    };
    let mut ws = open(true).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("canary:hello")
    );

    // Take the canary out entirely: weight 0 and the rule that pinned this socket gone.
    let before = proxy.generation();
    let (code, _) = proxy
        .admin_call("PUT", "/api/v1/routes/ws/weights", r#"{"canary": 0}"#)
        .await;
    assert_eq!(code, 200);
    let (code, _) = proxy
        .admin_call("DELETE", "/api/v1/routes/ws/rules/pin", "")
        .await;
    assert_eq!(code, 200);
    assert_eq!(proxy.generation(), before + 2);
    // The open socket stays on canary...
    for i in 0..5 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("canary:m{i}"))
        );
    }
    ws.close(None).await.unwrap();

    // ...while a new socket, even with the header, goes to stable: the change applied.
    for header in [true, false] {
        let mut ws = open(header).await;
        ws.send(Message::text("x")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("stable:x"));
    }
}

/// Read one HTTP/1.1 response with a `content-length` body: (head, body).
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("no response")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn one_route(origin: SocketAddr, route_extra: &str) -> String {
    format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nproxy: {{ version_header: true }}\nroutes:\n  - name: r\n{route_extra}    versions: {{ v: {{ endpoints: [\"{origin}\"] }} }}\n"
    )
}

#[tokio::test]
async fn refused_upgrade_is_a_normal_response() {
    // A plain HTTP origin answers the upgrade request with 200: no tunnel, normal response,
    // and the connection stays HTTP: the next request on it is proxied like any other.
    let origin = Origin::start("plain").await;
    let proxy = Proxy::start(&one_route(origin.addr, "")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "plain");
    let seen = origin.last();
    assert_eq!(
        seen.headers["upgrade"], "websocket",
        "upgrade forwarded to the upstream"
    );
    assert_eq!(seen.headers["connection"], "upgrade");
    s.write_all(b"GET /second HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("x-canaryd-version: v"), "{head}");
    assert_eq!(body, "plain");
    assert_eq!(origin.last().uri.path(), "/second");
}

/// A GET asking to upgrade to `proto`.
async fn upgrade_get(url: String, proto: &str) -> Resp {
    TestClient::http1()
        .get(&url, &[("connection", "Upgrade"), ("upgrade", proto)])
        .await
}

#[tokio::test]
async fn only_upgrades_the_route_allows_are_forwarded() {
    let origin = Origin::start("plain").await;
    // Default `proxy.upgrades` is [websocket], matched case-insensitively.
    let proxy = Proxy::start(&one_route(origin.addr, "")).await;
    let get = |proto| upgrade_get(proxy.url("/"), proto);
    assert_eq!(get("WebSocket").await.status, 200);
    assert_eq!(origin.last().headers["upgrade"], "WebSocket");
    for proto in ["foo", "h2c"] {
        assert_eq!(
            get(proto).await.status,
            200,
            "{proto}: served as plain HTTP/1.1"
        );
        let seen = origin.last();
        assert!(
            !seen.headers.contains_key("upgrade") && !seen.headers.contains_key("connection"),
            "{proto} forwarded: {:?}",
            seen.headers
        );
    }
    // A mixed offer keeps only the allowed protocol.
    assert_eq!(get("h2c, websocket").await.status, 200);
    assert_eq!(origin.last().headers["upgrade"], "websocket");

    // A route's own list replaces the default: `foo` yes, WebSocket no.
    let proxy = Proxy::start(&one_route(origin.addr, "    upgrades: [FOO]\n")).await;
    let get = |proto| upgrade_get(proxy.url("/"), proto);
    get("foo").await;
    assert_eq!(origin.last().headers["upgrade"], "foo");
    get("websocket").await;
    assert!(!origin.last().headers.contains_key("upgrade"));
}

/// An upstream that answers every request with `101` switching to `proto`, then holds the
/// connection; `closed` is set when canaryd closes it.
async fn switching_origin(
    proto: &'static str,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 1];
                while !buf.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    buf.push(b[0]);
                }
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {proto}\r\n\r\n"
                );
                s.write_all(answer.as_bytes()).await.unwrap();
                let mut rest = [0u8; 64];
                while s.read(&mut rest).await.unwrap_or(0) > 0 {}
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

#[tokio::test]
async fn a_101_to_a_protocol_not_offered_is_a_502() {
    let (origin, closed) = switching_origin("h2c").await;
    let proxy = Proxy::start(&one_route(origin, "")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    wait_for("the upstream connection to be closed", || {
        closed.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    assert_eq!(
        proxy.metric_value(
            "canaryd_upstream_errors_total{route=\"r\",version=\"v\",kind=\"bad_response\"}"
        ),
        1.0
    );
    // The same 101 to a request that offered no upgrade at all: 502 as well.
    let r = TestClient::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 502);
}

const H2C_ORIGIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/upgrade/h2c_origin.py");

/// The hypercorn upstream process, killed when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_hypercorn(dir: &std::path::Path) -> Option<(Child, SocketAddr)> {
    let installed = std::process::Command::new("python3")
        .args(["-c", "import hypercorn"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 hypercorn is not installed; .ci/run must `pip install hypercorn`"
        );
        eprintln!("SKIPPED: python3 hypercorn is not installed (pip install hypercorn)");
        return None;
    }
    let port_file = dir.join("h2c.port");
    let child = Child(
        std::process::Command::new("python3")
            .arg(H2C_ORIGIN)
            .arg(&port_file)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            return Some((child, format!("127.0.0.1:{}", p.trim()).parse().unwrap()));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hypercorn did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// h2c smuggling: an upstream that speaks h2c would answer `Upgrade: h2c` with 101, and the
/// client's later requests would go over the tunnel straight to it, past routing and metrics.
/// canaryd never forwards the upgrade, so every request on the connection is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_never_reaches_an_h2c_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_hypercorn, upstream)) = start_hypercorn(dir.path()) else {
        return;
    };
    let proxy = Proxy::start(&format!(
        r#"listeners: [{{ address: "127.0.0.1:0" }}]
proxy: {{ version_header: true }}
routes:
  - name: h
    versions:
      stable: {{ endpoints: ["{upstream}"] }}
      canary: {{ endpoints: ["{upstream}"], weight: 50 }}
"#
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // What `curl --http2 http://…` sends.
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "http/1.1 upgrade=- http2-settings=no\n");
    let n = 20;
    for i in 0..n {
        s.write_all(format!("GET /{i} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("x-canaryd-version: "), "not routed: {head}");
        assert_eq!(body, "http/1.1 upgrade=- http2-settings=no\n");
    }
    let count = |v: &str| {
        proxy
            .metric(&format!(
                "canaryd_requests_total{{route=\"h\",version=\"{v}\",code=\"200\"}}"
            ))
            .unwrap_or(0.0)
    };
    // Every request was routed and counted, one by one, across both versions.
    assert_eq!(count("stable") + count("canary"), f64::from(n + 1));
    assert!(count("stable") > 0.0 && count("canary") > 0.0);
}
