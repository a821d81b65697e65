//! End-to-end proxying through real HTTP on loopback: splits, rules, sticky, host/path
//! routing, h2c, header rewriting and the error statuses.

mod support;

use support::*;

#[tokio::test]
async fn weights_split_traffic_within_tolerance() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "20", "")).await;
    let client = TestClient::http1();
    let mut n_canary = 0;
    for _ in 0..3000 {
        let r = client.get(&proxy.url("/"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-canaryd-version"), Some(r.body.as_str()));
        n_canary += usize::from(r.body == "canary");
    }
    // 20% of 3000 = 600, sd = 21.9; 5 sd either side.
    assert!(
        (490..=710).contains(&n_canary),
        "canary served {n_canary} of 3000"
    );
    assert_eq!(canary.seen().len(), n_canary);
}

#[tokio::test]
async fn header_and_cookie_rules_override_weights() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let rules = r#"    rules:
      - { to: canary, when: { header: { name: x-canary, equals: always } } }
      - { to: stable, when: { header: { name: x-canary, equals: never } } }
      - { to: canary, when: { cookie: { name: canary, equals: always } } }
      - { to: canary, when: { header: { name: x-user-group, matches: "^(beta|staff)$" } } }
"#;
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "50", rules)).await;
    let c = TestClient::http1();
    let url = proxy.url("/");
    for _ in 0..20 {
        assert_eq!(c.get(&url, &[("x-canary", "always")]).await.body, "canary");
        assert_eq!(c.get(&url, &[("X-Canary", "never")]).await.body, "stable");
        assert_eq!(
            c.get(&url, &[("cookie", "a=b; canary=always")]).await.body,
            "canary"
        );
        assert_eq!(
            c.get(&url, &[("x-user-group", "staff")]).await.body,
            "canary"
        );
        // First match wins: `never` beats the cookie rule below it.
        assert_eq!(
            c.get(&url, &[("x-canary", "never"), ("cookie", "canary=always")])
                .await
                .body,
            "stable"
        );
    }
}

#[tokio::test]
async fn sticky_assignment_keeps_a_user_on_one_version() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let sticky = "    sticky:\n      key: { cookie: session }\n      assign_cookie: canaryd_uid\n";
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "50", sticky)).await;
    let c = TestClient::http1();
    let url = proxy.url("/");
    let mut versions_seen = std::collections::HashSet::new();
    for _ in 0..30 {
        // A new user gets an id cookie; with it they stay put.
        let first = c.get(&url, &[]).await;
        let set_cookie = first
            .header("set-cookie")
            .expect("assign cookie")
            .to_string();
        assert!(set_cookie.starts_with("canaryd_uid="), "{set_cookie}");
        assert!(set_cookie.contains("Path=/") && set_cookie.contains("HttpOnly"));
        let id = set_cookie.split(';').next().unwrap();
        for _ in 0..5 {
            let again = c.get(&url, &[("cookie", id)]).await;
            assert_eq!(again.body, first.body);
            assert_eq!(
                again.header("set-cookie"),
                None,
                "known users get no new id"
            );
        }
        versions_seen.insert(first.body.clone());
        // An existing session key is used as is.
        let s = c.get(&url, &[("cookie", "session=alice")]).await;
        assert_eq!(s.header("set-cookie"), None);
        assert_eq!(
            c.get(&url, &[("cookie", "session=alice")]).await.body,
            s.body
        );
    }
    assert_eq!(versions_seen.len(), 2, "at 50% both versions get new users");
}

#[tokio::test]
async fn host_and_path_select_the_route() {
    let (a, b, c) = (
        Origin::start("shop").await,
        Origin::start("shop-api").await,
        Origin::start("wild").await,
    );
    let yaml = format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
routes:
  - name: shop
    match: {{ host: shop.example.com }}
    versions: {{ stable: {{ endpoints: ["{}"] }} }}
  - name: shop-api
    match: {{ host: shop.example.com, path_prefix: /api }}
    versions: {{ stable: {{ endpoints: ["{}"] }} }}
  - name: wild
    match: {{ host: "*.example.com" }}
    versions: {{ stable: {{ endpoints: ["{}"] }} }}
"#,
        a.addr, b.addr, c.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let cl = TestClient::http1();
    let get = |host: &'static str, path: &'static str| {
        let cl = cl.clone();
        let url = proxy.url(path);
        async move { cl.get(&url, &[("host", host)]).await }
    };
    assert_eq!(get("shop.example.com", "/cart").await.body, "shop");
    assert_eq!(
        get("shop.example.com:8080", "/api/items").await.body,
        "shop-api"
    );
    assert_eq!(get("www.example.com", "/api").await.body, "wild");
    let none = get("other.org", "/").await;
    assert_eq!(none.status, 404);
    assert!(none.body.contains("no route"), "{}", none.body);
    assert_eq!(a.seen().len() + b.seen().len() + c.seen().len(), 3);
}

#[tokio::test]
async fn h2c_client_is_proxied_to_http1_upstream_with_host() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "0", "")).await;
    let r = TestClient::h2c().get(&proxy.url("/h2?q=1"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.body, "stable");
    let seen = stable.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri, "/h2?q=1");
    assert_eq!(seen.headers["host"], proxy.addr.to_string().as_str());
    assert_eq!(
        seen.headers["x-forwarded-host"],
        proxy.addr.to_string().as_str()
    );
}

#[tokio::test]
async fn round_robin_across_endpoints() {
    let (e1, e2) = (Origin::start("e1").await, Origin::start("e2").await);
    let yaml = format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nroutes:\n  - name: r\n    versions: {{ v: {{ endpoints: [\"{}\", \"{}\"] }} }}\n",
        e1.addr, e2.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let c = TestClient::http1();
    let bodies: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(c.get(&proxy.url("/"), &[]).await.body);
        }
        v
    };
    assert_eq!(e1.seen().len(), 3, "{bodies:?}");
    assert_eq!(e2.seen().len(), 3, "{bodies:?}");
    assert_ne!(bodies[0], bodies[1]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "0", "")).await;
    let r = TestClient::http1()
        .get(
            &proxy.url("/hop"),
            &[
                ("connection", "x-secret, keep-alive"),
                ("x-secret", "token"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "gzip"),
                ("upgrade", "h2c-nope"),
                ("x-end-to-end", "kept"),
            ],
        )
        .await;
    let seen = stable.last();
    for h in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            !seen.headers.contains_key(h),
            "{h} reached the origin: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    // Response side: the origin's Connection-named header and Keep-Alive never reach the client.
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-internal"), None);
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-public"), Some("yes"));
}

#[tokio::test]
async fn x_forwarded_headers_and_host_pass_through() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "0", "")).await;
    // Without a body the request goes out through our own exchange (the fields written into
    // the head); with one, through hyper's client (inserted into the map): the same fields,
    // once each, the client's X-Forwarded-For extended and its other two replaced.
    for method in [http::Method::GET, http::Method::POST] {
        let body = if method == http::Method::GET {
            empty()
        } else {
            full("payload")
        };
        let req = http::Request::builder()
            .method(method.clone())
            .uri(proxy.url("/p"))
            .header("host", "shop.example.com")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "gopher")
            .header("x-forwarded-host", "spoofed.example")
            .body(body)
            .unwrap();
        assert_eq!(TestClient::http1().send(req).await.status, 200);
        let seen = stable.last();
        assert_eq!(seen.method, method);
        assert_eq!(seen.headers["host"], "shop.example.com");
        for (name, value) in [
            ("x-forwarded-for", "203.0.113.7, 127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "shop.example.com"),
        ] {
            let all: Vec<_> = seen.headers.get_all(name).iter().collect();
            assert_eq!(all, [value], "{method} {name}");
        }
    }
}

#[tokio::test]
async fn version_header_is_optional() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let yaml = split_yaml(&stable, &canary, "0", "").replace("proxy: { version_header: true }", "");
    let proxy = Proxy::start(&yaml).await;
    let r = TestClient::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.body, "stable");
    assert_eq!(r.header("x-canaryd-version"), None);
}

#[tokio::test]
async fn refused_upstream_is_502() {
    let stable = Origin::start("stable").await;
    let yaml = format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nroutes:\n  - name: r\n    versions:\n      stable: {{ endpoints: [\"{}\"] }}\n      canary: {{ endpoints: [\"{}\"], weight: 100 }}\n",
        stable.addr,
        closed_port()
    );
    let proxy = Proxy::start(&yaml).await;
    let r = TestClient::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(r.body.contains("connect failed"), "{}", r.body);
    assert!(stable.seen().is_empty());
}

#[tokio::test]
async fn slow_upstream_is_504_after_response_timeout() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let extra = "    timeouts: { response: 200ms }\n";
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "0", extra)).await;
    let c = TestClient::http1();
    let r = c.get(&proxy.url("/sleep/3000"), &[]).await;
    assert_eq!(r.status, 504);
    assert!(r.body.contains("timed out"), "{}", r.body);
    // A fast request on the same route still works.
    assert_eq!(c.get(&proxy.url("/sleep/1"), &[]).await.status, 200);
    // The timeout lives with the upstream connection and is moved to each exchange's
    // deadline: after it fired while the connection sat idle, a fast request on it is not
    // timed out, and a slow one still is.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(c.get(&proxy.url("/sleep/1"), &[]).await.status, 200);
    assert_eq!(c.get(&proxy.url("/sleep/3000"), &[]).await.status, 504);
    // A slow request after fast ones (whose deadlines it extends) times out too.
    assert_eq!(c.get(&proxy.url("/sleep/1"), &[]).await.status, 200);
    assert_eq!(c.get(&proxy.url("/sleep/3000"), &[]).await.status, 504);
}

#[tokio::test]
async fn upstream_statuses_and_bodies_pass_through() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "0", "")).await;
    let c = TestClient::http1();
    let r = c.get(&proxy.url("/status/503"), &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (503, "stable"));
    let (status, len) = c.get_len(&proxy.url("/bytes/1000000")).await;
    assert_eq!((status.as_u16(), len), (200, 1_000_000));
    let up = c
        .send(
            http::Request::post(proxy.url("/sink"))
                .body(full(vec![7u8; 300_000]))
                .unwrap(),
        )
        .await;
    assert_eq!(up.body, "300000");
}

#[tokio::test]
async fn shutdown_drains_and_stops_accepting() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "0", "")).await;
    let addr = proxy.addr;
    let c = TestClient::http1();
    let slow = tokio::spawn({
        let c = c.clone();
        let url = proxy.url("/sleep/500");
        async move { c.get(&url, &[]).await }
    });
    // Let the slow request reach the origin before stopping.
    while stable.seen().is_empty() {
        tokio::task::yield_now().await;
    }
    proxy.stop().await;
    assert_eq!(
        slow.await.unwrap().status,
        200,
        "in-flight request completed"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// What is still running when the drain timeout passes is cut: the drain ends, and the
/// client's connection closes without an answer, even though the process (here, the test's
/// runtime) lives on.
#[tokio::test]
async fn the_drain_timeout_cuts_what_is_left() {
    let origin = Origin::start("stable").await;
    let yaml = one_version_yaml(&origin, "proxy: { drain_timeout: 300ms }");
    let proxy = Proxy::start(&yaml).await;
    let url = proxy.url("/sleep/30000");
    let slow = tokio::spawn(async move { TestClient::http1().try_get(&url).await });
    wait_for("request at the origin", || !origin.seen().is_empty()).await;
    tokio::time::timeout(std::time::Duration::from_secs(15), proxy.stop())
        .await
        .expect("the drain did not end at its timeout");
    let cut = tokio::time::timeout(std::time::Duration::from_secs(15), slow)
        .await
        .expect("the client's connection was left open after the drain")
        .unwrap();
    assert!(
        cut.is_none(),
        "a request past the drain timeout was answered: {:?}",
        cut.map(|r| r.status)
    );
}

#[tokio::test]
async fn per_core_workers_share_the_port_and_drain() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start_per_core(&split_yaml(&stable, &canary, "0", ""), 3).await;
    let addr = proxy.addr;
    // One connection per request: the kernel spreads them over the three SO_REUSEPORT
    // sockets, so a worker that did not serve its socket would leave requests hanging.
    for i in 0..60 {
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            TestClient::http1().get(&proxy.url("/"), &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} hung"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "stable");
        // The upstream connection goes back to its pool just after the response ends: the
        // next request must not race it.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Each worker keeps its own upstream connections (no request crosses threads): one
    // connection per worker, as all three served some of the 60 (the kernel's hash leaves
    // one idle about once in 10^10 runs). A shared idle list would reuse one for all.
    let upstream = stable.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        upstream, 3,
        "{upstream} upstream connections for 60 sequential requests over 3 workers"
    );
    // The drain stops every worker's sockets: nothing listens on the port afterwards.
    tokio::time::timeout(std::time::Duration::from_secs(20), proxy.stop())
        .await
        .expect("per-core workers did not finish draining");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// An HTTP/2 client that sends its END_STREAM in a frame of its own, after the upstream has
/// already answered (the body's length was reached): the stream must not be reset. HTTP/2
/// allows RST_STREAM(NO_ERROR) after a complete response, but clients such as Python's httpx
/// then fail the request; canaryd reads the rest of the body instead.
#[tokio::test]
async fn h2_body_whose_end_comes_after_the_response_is_not_reset() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&split_yaml(&origin, &origin, "0", "")).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut ping = conn.ping_pong().unwrap();
    tokio::spawn(conn);
    let mut c = client.ready().await.unwrap();
    let req = http::Request::post(format!("http://{}/sink", proxy.addr))
        .header("content-length", "5")
        .body(())
        .unwrap();
    let (resp, mut body) = c.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"hello"), false)
        .unwrap();
    // The origin answers once it has its 5 bytes; read the whole response.
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut rbody = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = rbody.data().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, b"5");
    // A PING round trip after the response: a reset sent with it has arrived by the PONG.
    ping.ping(h2::Ping::opaque()).await.unwrap();
    body.send_data(bytes::Bytes::new(), true)
        .expect("the stream was reset after a complete response");
    ping.ping(h2::Ping::opaque()).await.unwrap();
}

/// An h2c connection to `proxy` whose client announces small windows (16 KiB per stream and
/// for the connection), so every body larger than that moves only as the receiver releases
/// what it read.
async fn small_window_h2(proxy: &Proxy) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.ready().await.unwrap()
}

/// Read an HTTP/2 response body to its end, releasing its window as it goes.
async fn h2_body(mut body: h2::RecvStream) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the body failed");
        body.flow_control().release_capacity(chunk.len()).unwrap();
        got.extend_from_slice(&chunk);
    }
    got
}

/// Bodies far larger than every HTTP/2 window, both ways and on concurrent streams of one
/// connection: uploads past canaryd's 1 MiB windows arrive whole (canaryd releases what the
/// upstream took), downloads past the client's 16 KiB windows arrive whole (canaryd sends as
/// the client's WINDOW_UPDATEs allow, each stream its share of the connection's window).
#[tokio::test]
async fn h2_bodies_larger_than_every_window_stream_both_ways() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&split_yaml(&origin, &origin, "0", "")).await;
    let client = small_window_h2(&proxy).await;
    const LEN: usize = 3 * 1024 * 1024 + 7;
    let mut calls = Vec::new();
    for i in 0..4 {
        let mut client = client.clone();
        let addr = proxy.addr;
        calls.push(tokio::spawn(async move {
            client = client.ready().await.unwrap();
            if i % 2 == 0 {
                let req = http::Request::post(format!("http://{addr}/sink"))
                    .body(())
                    .unwrap();
                let (resp, mut up) = client.send_request(req, false).unwrap();
                let mut left = LEN;
                while left > 0 {
                    // Send as the proxy's window allows.
                    up.reserve_capacity(left.min(64 * 1024));
                    let n = std::future::poll_fn(|cx| up.poll_capacity(cx))
                        .await
                        .expect("the upload was refused")
                        .unwrap()
                        .min(left);
                    up.send_data(bytes::Bytes::from(vec![b'u'; n]), n == left)
                        .unwrap();
                    left -= n;
                }
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), 200);
                let got = h2_body(resp.into_body()).await;
                assert_eq!(String::from_utf8(got).unwrap(), LEN.to_string());
            } else {
                let req = http::Request::get(format!("http://{addr}/bytes/{LEN}"))
                    .body(())
                    .unwrap();
                let (resp, _) = client.send_request(req, true).unwrap();
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.headers()["content-length"], LEN.to_string().as_str());
                let got = h2_body(resp.into_body()).await;
                assert_eq!(got.len(), LEN);
                assert!(got.iter().all(|&b| b == b'x'));
            }
        }));
    }
    for c in calls {
        tokio::time::timeout(std::time::Duration::from_secs(60), c)
            .await
            .expect("a body stalled: flow control did not move")
            .unwrap();
    }
}

/// What an HTTP/2 answer carries: no connection-specific field (h2 would reset the stream
/// over one), a `date` and a `content-length` even on canaryd's own answers, and the body
/// in full; a HEAD gets the head alone.
#[tokio::test]
async fn h2_answers_carry_date_and_length_and_no_connection_fields() {
    let origin = Origin::start("stable").await;
    let yaml = format!(
        "{}  - name: down\n    match: {{ path_prefix: /down }}\n    versions: {{ v: {{ endpoints: [\"{}\"] }} }}\n",
        split_yaml(&origin, &origin, "0", ""),
        closed_port()
    );
    let proxy = Proxy::start(&yaml).await;
    let mut client = small_window_h2(&proxy).await;
    let mut ask = |method: &str, path: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", proxy.addr))
            .body(())
            .unwrap();
        client.send_request(req, true).unwrap().0
    };
    let hop = ask("GET", "/hop").await.unwrap();
    assert_eq!(hop.status(), 200);
    for gone in [
        "connection",
        "keep-alive",
        "x-internal",
        "transfer-encoding",
    ] {
        assert!(hop.headers().get(gone).is_none(), "{gone} crossed: {hop:?}");
    }
    assert_eq!(hop.headers()["x-public"], "yes");
    assert_eq!(h2_body(hop.into_body()).await, b"stable");

    // canaryd's own answer: no upstream gave it a date or a length.
    let down = ask("GET", "/down").await.unwrap();
    assert_eq!(down.status(), 502);
    assert!(down.headers().contains_key("date"), "{down:?}");
    let length: usize = down.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = h2_body(down.into_body()).await;
    assert_eq!(body.len(), length);
    assert!(String::from_utf8(body).unwrap().starts_with("canaryd: "));

    let head = ask("HEAD", "/bytes/1000").await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "1000");
    assert!(
        head.body().is_end_stream(),
        "a HEAD answer ends with its head"
    );
}
