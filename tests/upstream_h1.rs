//! Our own HTTP/1.1 exchange with pooled upstreams (src/upstream/h1.rs), through real
//! sockets: a scripted origin on loopback answers with exact bytes, so each response
//! framing, the connection-reuse rules and the closed-connection paths meet the proxy the
//! way a real upstream's bytes would. Requests without a body take this path.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted origin does with the `i`-th request (from 0) on a connection.
enum Act {
    /// Write these bytes and keep the connection open.
    Answer(Vec<u8>),
    /// Write these bytes, then close.
    AnswerClose(Vec<u8>),
    /// Close without answering.
    Close,
}

type Script = fn(&str, usize) -> Act;

/// An origin that answers each request head with scripted bytes; it records connections
/// and the request lines it saw (with the connection they came on).
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (connections.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let conn = c.fetch_add(1, Ordering::SeqCst);
                let seen = s.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for i in 0.. {
                        let Some(head) = read_head(&mut sock, &mut buf).await else {
                            return;
                        };
                        let line = head.lines().next().unwrap_or("").to_string();
                        seen.lock().unwrap().push((conn, line.clone()));
                        match script(&line, i) {
                            Act::Answer(b) => {
                                if sock.write_all(&b).await.is_err() {
                                    return;
                                }
                            }
                            Act::AnswerClose(b) => {
                                let _ = sock.write_all(&b).await;
                                return;
                            }
                            Act::Close => return,
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            connections,
            seen,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().clone()
    }

    fn yaml(&self) -> String {
        format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
routes:
  - name: app
    versions:
      stable: {{ endpoints: ["{}"] }}
"#,
            self.addr
        )
    }
}

/// The next request head on `sock` (requests here have no body).
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One request on a connection of its own; everything the proxy sent until it closed.
async fn raw(proxy: &Proxy, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn framings(line: &str, _: usize) -> Act {
    let path = line.split(' ').nth(1).unwrap_or("");
    Act::Answer(match path {
        "/fixed" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello".to_vec(),
        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n".to_vec(),
        "/trailers" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 42\r\n\r\n".to_vec(),
        "/hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(),
        "/split" => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
    })
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_whole_on_one_upstream_connection() {
    let origin = Scripted::start(framings).await;
    let proxy = Proxy::start(&origin.yaml()).await;
    let client = TestClient::http1();
    for _ in 0..3 {
        let r = client.get(&proxy.url("/fixed"), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello"));
        assert_eq!(r.header("x-up"), Some("1"));
        let r = client.get(&proxy.url("/chunked"), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello, world"));
        let r = client.get(&proxy.url("/trailers"), &[]).await;
        assert_eq!(r.body, "abc");
        // 103 is skipped: the client gets the final answer.
        let r = client.get(&proxy.url("/hints"), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
        let r = client.get(&proxy.url("/no-content"), &[]).await;
        assert_eq!(r.status, 204);
        let r = client.get(&proxy.url("/split"), &[]).await;
        let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }
    // HEAD: the length describes a body that never comes; the proxy must not wait for it.
    let head = raw(&proxy, "HEAD", "/head").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase().contains("content-length: 1000"),
        "{head}"
    );
    // Every response ended exactly at its framing, so one upstream connection served all.
    assert_eq!(origin.connections(), 1, "{:?}", origin.seen());
    assert_eq!(origin.seen().len(), 19);
}

fn untrusted(line: &str, _: usize) -> Act {
    let path = line.split(' ').nth(1).unwrap_or("");
    match path {
        // Bytes after the response: the connection cannot be trusted with another request.
        "/extra" => Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged".to_vec()),
        "/close" => Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()),
        // Read to the close: no length, no chunks.
        "/eof" => Act::AnswerClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()),
        _ => Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext".to_vec()),
    }
}

#[tokio::test]
async fn a_connection_is_reused_only_after_a_response_that_ended_cleanly() {
    let origin = Scripted::start(untrusted).await;
    let proxy = Proxy::start(&origin.yaml()).await;
    let client = TestClient::http1();
    // Each untrusted answer comes on the connection the previous `/next` left in the pool.
    let mut expected_connections = 1;
    for (path, body) in [
        ("/extra", "ok"),
        ("/close", "ok"),
        ("/eof", "until the end"),
    ] {
        let r = client.get(&proxy.url(path), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, body), "{path}");
        // The next request goes out on a new connection: never the forged answer.
        let r = client.get(&proxy.url("/next"), &[]).await;
        assert_eq!(r.body, "next", "after {path}");
        expected_connections += 1;
        assert_eq!(
            origin.connections(),
            expected_connections,
            "after {path}: {:?}",
            origin.seen()
        );
    }
}

fn one_per_connection(line: &str, i: usize) -> Act {
    // Answers the first request of each connection; a second one finds it closing (the
    // upstream's keep-alive timeout racing the next request).
    if i > 0 {
        return Act::Close;
    }
    let path = line.split(' ').nth(1).unwrap_or("");
    Act::Answer(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
            path.len()
        )
        .into_bytes(),
    )
}

#[tokio::test]
async fn an_upstream_closing_an_idle_connection_costs_no_idempotent_request() {
    let origin = Scripted::start(one_per_connection).await;
    let proxy = Proxy::start(&origin.yaml()).await;
    let client = TestClient::http1();
    for i in 0..5 {
        let path = format!("/get-{i}");
        let r = client.get(&proxy.url(&path), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, path.as_str()));
    }
    // Each GET after the first met a connection that closed without answering, and went
    // again on a new one.
    assert_eq!(origin.connections(), 5);
    let resent = origin
        .seen()
        .iter()
        .filter(|(_, l)| l.starts_with("GET"))
        .count();
    assert_eq!(resent, 9, "{:?}", origin.seen());

    // A POST is not sent twice: the same race is the client's 502.
    let r = client.get(&proxy.url("/warm"), &[]).await;
    assert_eq!(r.status, 200);
    let post = raw(&proxy, "POST", "/post").await;
    assert!(post.starts_with("HTTP/1.1 502"), "{post}");
    let posts = origin
        .seen()
        .iter()
        .filter(|(_, l)| l.starts_with("POST"))
        .count();
    assert_eq!(posts, 1);
}

fn broken(line: &str, _: usize) -> Act {
    let path = line.split(' ').nth(1).unwrap_or("");
    match path {
        "/both" => Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()),
        "/two-lengths" => Act::Answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec(),
        ),
        "/garbage" => Act::Answer(b"HTTP/1.1 OK 200\r\n\r\n".to_vec()),
        "/bad-chunk" => Act::Answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
        "/short" => {
            Act::AnswerClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec())
        }
        _ => Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
    }
}

#[tokio::test]
async fn a_broken_response_is_a_502_or_a_cut_body_and_its_connection_is_not_reused() {
    let origin = Scripted::start(broken).await;
    let proxy = Proxy::start(&origin.yaml()).await;
    // Both framing headers: the signature of response splitting, refused (RFC 9112 §6.1).
    for path in ["/two-lengths", "/garbage", "/both"] {
        let r = raw(&proxy, "GET", path).await;
        assert!(r.starts_with("HTTP/1.1 502"), "{path}: {r}");
    }
    assert_eq!(
        proxy.metric_value(
            r#"canaryd_upstream_errors_total{route="app",version="stable",kind="reset"}"#
        ),
        3.0
    );
    // A body that breaks after its head: the client never sees it complete (whether the
    // head was flushed before the connection was cut depends on hyper's write buffer).
    let cut = raw(&proxy, "GET", "/bad-chunk").await;
    assert!(
        cut.is_empty() || (cut.starts_with("HTTP/1.1 200") && !cut.contains("0\r\n\r\n")),
        "a broken body was completed: {cut:?}"
    );
    let short = raw(&proxy, "GET", "/short").await;
    assert!(
        short.is_empty()
            || (short.starts_with("HTTP/1.1 200")
                && short.len() < 10 + short.find("\r\n\r\n").unwrap() + 4),
        "a short body was completed: {short:?}"
    );
    // None of those connections served another request.
    let before = origin.connections();
    let r = TestClient::http1().get(&proxy.url("/fine"), &[]).await;
    assert_eq!(r.body, "ok");
    assert_eq!(origin.connections(), before + 1);
}

fn changing(line: &str, _: usize) -> Act {
    let path = line.split(' ').nth(1).unwrap_or("");
    Act::Answer(match path {
        "/a" => b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-V: one\r\nX-W: same\r\n\r\na".to_vec(),
        "/b" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-V: two\r\nX-W: same\r\n\r\nbb".to_vec(),
        "/c" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nx-v: two\r\nX-Other: same\r\n\r\nc".to_vec()
        }
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
    })
}

/// Responses on one upstream connection that repeat or change their fields: a field whose
/// value, name or name's case changed reaches the client as the upstream sent it.
#[tokio::test]
async fn response_fields_reach_the_client_as_sent_when_the_next_response_changes_them() {
    let origin = Scripted::start(changing).await;
    let proxy = Proxy::start(&origin.yaml()).await;
    let client = TestClient::http1();
    for (path, body, v, w, other) in [
        ("/a", "a", "one", Some("same"), None),
        ("/b", "bb", "two", Some("same"), None),
        ("/c", "c", "two", None, Some("same")),
        ("/a", "a", "one", Some("same"), None),
    ] {
        let r = client.get(&proxy.url(path), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, body), "{path}");
        assert_eq!(r.header("x-v"), Some(v), "{path}");
        assert_eq!(r.header("x-w"), w, "{path}");
        assert_eq!(r.header("x-other"), other, "{path}");
    }
    assert_eq!(origin.connections(), 1, "{:?}", origin.seen());
}
