//! Shadow traffic (`mirror:`): which requests are copied to the shadow version and how, that
//! the primary's answer never depends on the shadow (dead, hanging, full), the body caps, the
//! comparison of answers, and the runtime mirrors of the admin API. Real HTTP on loopback: the
//! primaries are support origins, the shadows small backends of this file that record every
//! copy with its body.

mod support;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use support::*;
use tokio::net::TcpListener;

/// A request as a [`Backend`] saw it, body included.
#[derive(Debug, Clone)]
struct Got {
    method: Method,
    /// Path and query.
    path: String,
    headers: HeaderMap,
    /// `None`: the body failed before its end (a copy given up is reset, not sent short).
    body: Option<Bytes>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// What a [`Backend`] answers to a request: a JSON body, or `None` to never answer.
type Reply = Arc<dyn Fn(&Got) -> Option<String> + Send + Sync>;

/// A backend answering by a closure (JSON, or never): the shadows and JSON primaries here.
/// It reads each request's whole body before answering and records it.
struct Backend {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    /// Request heads received, counted before the body is read.
    heads: Arc<AtomicUsize>,
    /// The accept loop; aborting it also aborts every open connection.
    task: tokio::task::AbortHandle,
}

impl Backend {
    async fn start(reply: impl Fn(&Got) -> Option<String> + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let heads = Arc::new(AtomicUsize::new(0));
        let reply: Reply = Arc::new(reply);
        let (log, count) = (got.clone(), heads.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let (log, count, reply) = (log.clone(), count.clone(), reply.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (log, count, reply) = (log.clone(), count.clone(), reply.clone());
                        async move {
                            count.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.ok().map(|b| b.to_bytes());
                            let got = Got {
                                method: parts.method,
                                path: parts.uri.path_and_query().unwrap().to_string(),
                                headers: parts.headers,
                                body,
                            };
                            log.lock().unwrap().push(got.clone());
                            let Some(text) = reply(&got) else {
                                return std::future::pending().await;
                            };
                            let mut r = Response::new(full(text));
                            r.headers_mut()
                                .insert(CONTENT_TYPE, "application/json".parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            got,
            heads,
            task: task.abort_handle(),
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request body fed chunk by chunk by the test, without a length (sent chunked).
struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// One route `app`: `stable` (primary) and `canary` (weight 0, the shadow), an admin listener,
/// and `extra` (route keys, indented four spaces).
fn yaml(stable: SocketAddr, canary: SocketAddr, extra: &str) -> String {
    format!(
        r#"listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
routes:
  - name: app
    versions:
      stable: {{ endpoints: ["{stable}"] }}
      canary: {{ endpoints: ["{canary}"], weight: 0 }}
{extra}"#
    )
}

/// `canaryd_mirror_requests_total` of the shadow `canary` for `result`; the series must exist.
fn copies(proxy: &Proxy, result: &str) -> f64 {
    proxy.metric_value(&format!(
        "canaryd_mirror_requests_total{{route=\"app\",version=\"canary\",result=\"{result}\"}}"
    ))
}

/// `canaryd_mirror_diffs_total` of route `app` for `kind`; the series must exist.
fn diffs(proxy: &Proxy, kind: &str) -> f64 {
    proxy.metric_value(&format!(
        "canaryd_mirror_diffs_total{{route=\"app\",kind=\"{kind}\"}}"
    ))
}

/// Every copy's outcome counted so far.
fn copies_counted(proxy: &Proxy) -> f64 {
    ["sent", "dropped_full", "dropped_body", "error"]
        .iter()
        .map(|r| copies(proxy, r))
        .sum()
}

/// The shadow's copies never count as its own traffic: no `canaryd_requests_total` and no
/// upstream error for `canary`.
fn shadow_has_no_request_metrics(proxy: &Proxy) {
    let text = proxy.state.metrics.encode();
    for l in text.lines().filter(|l| {
        l.starts_with("canaryd_requests_total{route=\"app\",version=\"canary\"")
            || l.starts_with("canaryd_upstream_errors_total{route=\"app\",version=\"canary\"")
    }) {
        let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(v, 0.0, "a copy counted as the shadow's own traffic: {l}");
    }
}

/// Poll `f` (bounded) until it gives the same value three times 50 ms apart. Copies go out in
/// tasks of their own, so their counts may still move after the last primary answered, and
/// nothing signals "no more copies are coming".
async fn settled<T: PartialEq + std::fmt::Debug>(what: &str, mut f: impl FnMut() -> T) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut last, mut same) = (f(), 0);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = f();
        same = if now == last { same + 1 } else { 0 };
        last = now;
        if same >= 2 {
            return last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never settled (last {last:?})"
        );
    }
}

/// Copies the support origin `o` received (it serves nothing else in these tests).
fn mirrored(o: &Origin) -> Vec<Seen> {
    o.seen()
        .into_iter()
        .filter(|s| s.headers.contains_key("x-canaryd-mirror"))
        .collect()
}

#[tokio::test]
async fn percent_of_requests_are_copied_marked_and_counted_apart() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&yaml(
        stable.addr,
        canary.addr,
        "    mirror: { to: canary, percent: 25 }\n",
    ))
    .await;
    const N: usize = 2000;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (c, url) = (TestClient::http1(), proxy.url(""));
        tasks.push(tokio::spawn(async move {
            for i in 0..N / 4 {
                let r = c.get(&format!("{url}/item/{t}/{i}"), &[]).await;
                assert_eq!(r.status, StatusCode::OK);
                assert_eq!(
                    (r.body.as_str(), r.header("x-origin")),
                    ("stable", Some("stable"))
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(stable.seen().len(), N, "every request reached the primary");

    // Wait for the copies in flight: the shadow's count and the `sent` counter agree and stop.
    let (seen, sent) = settled("copies", || {
        (canary.seen().len(), copies(&proxy, "sent") as usize)
    })
    .await;
    assert_eq!(seen, sent, "sent counts the copies the shadow answered");
    assert!(
        (N * 18 / 100..=N * 32 / 100).contains(&seen),
        "25 % of {N} requests copied, got {seen}"
    );
    let host = format!("{}-shadow", proxy.addr);
    for s in canary.seen() {
        assert_eq!(s.headers["x-canaryd-mirror"], "1");
        assert_eq!(s.headers["host"], host.as_str());
        assert!(s.uri.path().starts_with("/item/"));
    }
    for r in ["dropped_full", "dropped_body", "error"] {
        assert_eq!(copies(&proxy, r), 0.0, "result {r}");
    }
    let metrics = TestClient::http1()
        .get(&proxy.admin_url("/metrics"), &[])
        .await
        .body;
    for line in [
        format!(
            "canaryd_mirror_requests_total{{route=\"app\",version=\"canary\",result=\"sent\"}} {sent}"
        ),
        format!(
            "canaryd_mirror_responses_total{{route=\"app\",version=\"canary\",code=\"200\"}} {sent}"
        ),
        format!("canaryd_mirror_duration_seconds_count{{route=\"app\",version=\"canary\"}} {sent}"),
        format!("canaryd_requests_total{{route=\"app\",version=\"stable\",code=\"200\"}} {N}"),
    ] {
        assert!(metrics.contains(&line), "missing `{line}` in\n{metrics}");
    }
    shadow_has_no_request_metrics(&proxy);
}

#[tokio::test]
async fn a_dead_shadow_never_changes_the_primary() {
    let stable = Origin::start("stable").await;
    let proxy = Proxy::start(&yaml(
        stable.addr,
        closed_port(),
        "    mirror: { to: canary, percent: 100 }\n",
    ))
    .await;
    let c = TestClient::http1();
    for i in 0..50 {
        let r = c.get(&proxy.url(&format!("/dead/{i}")), &[]).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "stable"));
    }
    wait_for("50 copies counted as errors", || {
        copies(&proxy, "error") == 50.0
    })
    .await;
    assert_eq!(copies(&proxy, "sent"), 0.0);
    assert_eq!(stable.seen().len(), 50);
    shadow_has_no_request_metrics(&proxy);
    // The mirror window counts the failed copies as the 502s a user would have got, so a
    // gate with `source: mirror` fails a dead shadow rather than waiting for data.
    let (s, a) = proxy
        .admin_call(
            "GET",
            "/api/v1/routes/app/analysis?window=60s&source=mirror",
            "",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let shadow = &a["versions"]["canary"];
    assert_eq!(
        (shadow["requests"].as_u64(), shadow["errors_5xx"].as_u64()),
        (Some(50), Some(50)),
        "{a}"
    );
    let (_, live) = proxy
        .admin_call("GET", "/api/v1/routes/app/analysis?window=60s", "")
        .await;
    assert_eq!(live["versions"]["canary"]["requests"], 0, "{live}");
}

#[tokio::test]
async fn a_hanging_shadow_never_delays_the_primary() {
    let stable = Origin::start("stable").await;
    let shadow = Backend::start(|_| None).await;
    // Copies wait for the shadow up to the route's response timeout; each primary must
    // answer in well under it.
    let proxy = Proxy::start(&yaml(
        stable.addr,
        shadow.addr,
        "    timeouts: { response: 3s }\n    mirror: { to: canary, percent: 100 }\n",
    ))
    .await;
    let c = TestClient::http1();
    for i in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_millis(1500),
            c.get(&proxy.url(&format!("/hang/{i}")), &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} waited for the hanging shadow"));
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "stable"));
    }
    // The shadow got every copy and answers none of them.
    wait_for("20 copies at the shadow", || shadow.heads() == 20).await;
    assert_eq!(copies(&proxy, "sent"), 0.0);
    // Past the timeout, each hung copy is given up as an error.
    wait_for("20 hung copies counted as errors", || {
        copies(&proxy, "error") == 20.0
    })
    .await;
    assert_eq!(copies(&proxy, "sent"), 0.0);
    shadow_has_no_request_metrics(&proxy);
}

#[tokio::test]
async fn post_is_copied_only_when_methods_say_so_with_its_body() {
    let primary = || Backend::start(|g| Some(format!("{{\"len\":{}}}", g.body.as_ref()?.len())));
    let c = TestClient::http1();
    let post = |url: String, body: Vec<u8>| {
        let c = c.clone();
        async move {
            let req = Request::post(url).body(full(body)).unwrap();
            c.send(req).await
        }
    };
    let body = |i: usize| -> Vec<u8> {
        (0..20_000 + i)
            .map(|j| b'a' + ((j * 7 + i) % 26) as u8)
            .collect()
    };

    // By default (idempotent methods only) a POST is not copied; a GET is.
    let (stable, shadow) = (primary().await, Backend::start(|_| Some("{}".into())).await);
    let proxy = Proxy::start(&yaml(
        stable.addr,
        shadow.addr,
        "    mirror: { to: canary, percent: 100 }\n",
    ))
    .await;
    for i in 0..5 {
        let r = post(proxy.url(&format!("/order/{i}")), body(i)).await;
        assert_eq!(r.body, format!("{{\"len\":{}}}", 20_000 + i));
    }
    assert_eq!(
        c.get(&proxy.url("/after"), &[]).await.status,
        StatusCode::OK
    );
    wait_for("the GET's copy", || {
        shadow.got().iter().any(|g| g.path == "/after")
    })
    .await;
    let got = settled("copies", || shadow.got().len()).await;
    assert_eq!(got, 1, "only the GET is copied: {:?}", shadow.got());
    assert_eq!(copies(&proxy, "sent"), 1.0);
    drop(proxy);

    // `methods: [POST]`: every POST is copied with the very same body, and a GET no longer.
    let (stable, shadow) = (primary().await, Backend::start(|_| Some("{}".into())).await);
    let proxy = Proxy::start(&yaml(
        stable.addr,
        shadow.addr,
        "    mirror: { to: canary, percent: 100, methods: [POST] }\n",
    ))
    .await;
    assert_eq!(
        c.get(&proxy.url("/before"), &[]).await.status,
        StatusCode::OK
    );
    for i in 0..5 {
        let r = post(proxy.url(&format!("/order/{i}")), body(i)).await;
        assert_eq!(r.body, format!("{{\"len\":{}}}", 20_000 + i));
    }
    wait_for("5 POST copies", || shadow.got().len() >= 5).await;
    let got = settled("copies", || shadow.got().len()).await;
    assert_eq!(got, 5, "the GET is not copied: {:?}", shadow.got());
    for g in shadow.got() {
        assert_eq!(g.method, Method::POST);
        assert_eq!(g.header("x-canaryd-mirror"), Some("1"));
        let i: usize = g.path.strip_prefix("/order/").unwrap().parse().unwrap();
        assert!(
            g.body.as_deref() == Some(&body(i)[..]),
            "copy of /order/{i} has another body"
        );
    }
    for g in stable.got() {
        if let Some(i) = g.path.strip_prefix("/order/") {
            assert_eq!(g.body.as_deref(), Some(&body(i.parse().unwrap())[..]));
        }
    }
    assert_eq!(copies(&proxy, "sent"), 5.0);
}

#[tokio::test]
async fn a_body_over_max_body_is_not_copied_and_the_primary_gets_it_whole() {
    let stable = Origin::start("stable").await;
    let shadow = Backend::start(|_| Some("{}".into())).await;
    let proxy = Proxy::start(&yaml(
        stable.addr,
        shadow.addr,
        "    mirror: { to: canary, percent: 100, methods: [POST], max_body: 64KiB }\n",
    ))
    .await;
    let c = TestClient::http1();
    const BIG: usize = 1024 * 1024 + 1;

    // Announced over the cap: no copy at all.
    let req = Request::post(proxy.url("/sink?case=big"))
        .body(full(vec![b'b'; BIG]))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!((r.status, r.body), (StatusCode::OK, BIG.to_string()));
    assert_eq!(copies(&proxy, "dropped_body"), 1.0);
    // A small one is copied (so the shadow path works), and it is all the shadow saw.
    let req = Request::post(proxy.url("/sink?case=small"))
        .body(full(vec![b's'; 1024]))
        .unwrap();
    assert_eq!(c.send(req).await.body, "1024");
    wait_for("the small copy", || {
        shadow.got().iter().any(|g| g.path == "/sink?case=small")
    })
    .await;
    assert_eq!(shadow.heads(), 1, "the big body reached the shadow");
    let g = &shadow.got()[0];
    assert_eq!(g.path, "/sink?case=small");
    assert_eq!(g.body.as_ref().map(Bytes::len), Some(1024));

    // Chunked (no length): the copy starts, then the body crosses the cap. The copy is given
    // up; the primary gets every byte.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let req = Request::post(proxy.url("/sink?case=chunked"))
        .body(Chunks(rx).boxed())
        .unwrap();
    let upload = tokio::spawn({
        let c = c.clone();
        async move { c.send(req).await }
    });
    let chunk = Bytes::from(vec![b'c'; 16 * 1024]);
    tx.send(chunk.clone()).await.unwrap();
    wait_for("the chunked copy to reach the shadow", || {
        shadow.heads() == 2
    })
    .await;
    let mut total = chunk.len();
    for _ in 0..70 {
        tx.send(chunk.clone()).await.unwrap();
        total += chunk.len();
    }
    drop(tx);
    let r = upload.await.unwrap();
    assert_eq!((r.status, r.body), (StatusCode::OK, total.to_string()));
    wait_for("the chunked copy counted dropped_body", || {
        copies(&proxy, "dropped_body") == 2.0
    })
    .await;
    assert_eq!(copies(&proxy, "sent"), 1.0);
    assert!(
        shadow
            .got()
            .iter()
            .all(|g| g.path != "/sink?case=chunked" || g.body.is_none()),
        "the shadow got a complete body past the cap"
    );
    shadow_has_no_request_metrics(&proxy);
}

#[tokio::test]
async fn copies_beyond_in_flight_and_queue_are_dropped_not_the_primaries() {
    let stable = Origin::start("stable").await;
    let shadow = Backend::start(|_| None).await;
    let proxy = Proxy::start(&yaml(
        stable.addr,
        shadow.addr,
        "    timeouts: { response: 2s }\n    mirror: { to: canary, percent: 100, max_in_flight: 1, queue: 0 }\n",
    ))
    .await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (c, url) = (TestClient::http1(), proxy.url(&format!("/full/{i}")));
        tasks.push(tokio::spawn(async move { c.get(&url, &[]).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "stable"));
    }
    // One copy holds the only slot (the shadow never answers); the rest find no room.
    let dropped = copies(&proxy, "dropped_full");
    assert!(
        dropped >= 1.0,
        "no copy was dropped with 1 slot and no queue"
    );
    wait_for("every copy counted", || copies_counted(&proxy) == 20.0).await;
    assert!(copies(&proxy, "error") >= 1.0);
    assert_eq!(shadow.heads() as f64, 20.0 - copies(&proxy, "dropped_full"));
    // The timed-out copy gave its slot back: the next request is copied again.
    let before = shadow.heads();
    let r = TestClient::http1().get(&proxy.url("/again"), &[]).await;
    assert_eq!(r.body, "stable");
    wait_for("a copy after the slot was freed", || {
        shadow.heads() == before + 1
    })
    .await;
    shadow_has_no_request_metrics(&proxy);
}

#[tokio::test]
async fn differing_answers_are_listed_and_ignored_fields_are_not() {
    // The primary and the shadow agree but for `ts` (always different, ignored) and, on
    // `/diff/...` only, `price`.
    let n = Arc::new(AtomicUsize::new(0));
    let primary = Backend::start({
        let n = n.clone();
        move |_| {
            let ts = n.fetch_add(1, Ordering::SeqCst);
            Some(format!(
                r#"{{"id":7,"price":10,"meta":{{"ts":{ts}}},"ts":{ts}}}"#
            ))
        }
    })
    .await;
    let shadow = Backend::start(move |g| {
        let ts = 1_000_000 + n.fetch_add(1, Ordering::SeqCst);
        let price = if g.path.starts_with("/diff/") { 12 } else { 10 };
        Some(format!(
            r#"{{"ts":{ts},"id":7,"price":{price},"meta":{{"ts":{ts}}}}}"#
        ))
    })
    .await;
    let proxy = Proxy::start(&yaml(
        primary.addr,
        shadow.addr,
        "    mirror:\n      to: canary\n      percent: 100\n      compare: { sample: 100, headers: [content-type], ignore: [ts] }\n",
    ))
    .await;
    let c = TestClient::http1();
    for i in 0..7 {
        let r = c.get(&proxy.url(&format!("/same/{i}")), &[]).await;
        assert!(r.body.contains("\"price\":10"), "{}", r.body);
    }
    for i in 0..5 {
        let r = c.get(&proxy.url(&format!("/diff/{i}")), &[]).await;
        assert!(r.body.contains("\"price\":10"), "{}", r.body);
    }
    wait_for("12 comparisons", || {
        diffs(&proxy, "match") + diffs(&proxy, "body") >= 12.0
    })
    .await;
    assert_eq!(diffs(&proxy, "match"), 7.0);
    assert_eq!(diffs(&proxy, "body"), 5.0);
    assert_eq!(diffs(&proxy, "status"), 0.0);
    assert_eq!(diffs(&proxy, "header"), 0.0);

    let (code, v) = proxy
        .admin_call("GET", "/api/v1/routes/app/mirror/diffs", "")
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["route"], "app");
    assert_eq!(v["compared_last_window"], 12);
    assert_eq!(v["differing_last_window"], 5);
    assert!(v["window_seconds"].as_u64().unwrap() > 0);
    let rate = v["diff_rate"].as_f64().unwrap();
    assert!((rate - 5.0 / 12.0).abs() < 1e-9, "diff_rate {rate}");
    let list = v["diffs"].as_array().unwrap();
    assert_eq!(list.len(), 5, "only the differing pairs are listed: {v}");
    let mut paths: Vec<&str> = list.iter().map(|d| d["path"].as_str().unwrap()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/diff/0", "/diff/1", "/diff/2", "/diff/3", "/diff/4"]
    );
    for d in list {
        assert_eq!(d["method"], "GET");
        assert_eq!(
            (d["primary_status"].as_u64(), d["shadow_status"].as_u64()),
            (Some(200), Some(200))
        );
        assert_eq!(d["kinds"], serde_json::json!(["body"]));
        let text: Vec<&str> = d["diff"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(text.iter().any(|t| t.contains("price")), "{d}");
        assert!(
            !text.iter().any(|t| t.contains("ts")),
            "an ignored field listed: {d}"
        );
    }
    // Newest first.
    let at: Vec<&str> = list.iter().map(|d| d["at"].as_str().unwrap()).collect();
    assert!(
        at.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {at:?}"
    );
}

#[tokio::test]
async fn runtime_mirrors_are_put_and_deleted_through_the_admin_api() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&yaml(stable.addr, canary.addr, "")).await;
    let c = TestClient::http1();
    let dark = [("x-dark", "1")];
    // No mirror yet: nothing is copied.
    assert_eq!(c.get(&proxy.url("/pre"), &dark).await.body, "stable");

    let m = r#"{"to":"canary","percent":100,"when":{"header":{"name":"x-dark","present":true}}}"#;
    let (code, v) = proxy
        .admin_call("PUT", "/api/v1/routes/app/mirrors/dark", m)
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let g = v["generation"].as_u64().expect("generation");
    assert!(proxy.generation() >= g);
    for i in 0..5 {
        assert_eq!(
            c.get(&proxy.url(&format!("/plain/{i}")), &[]).await.body,
            "stable"
        );
    }
    for i in 0..5 {
        let r = c.get(&proxy.url(&format!("/dark/{i}")), &dark).await;
        assert_eq!(r.body, "stable");
    }
    wait_for("5 dark copies", || mirrored(&canary).len() >= 5).await;
    let n = settled("copies", || mirrored(&canary).len()).await;
    assert_eq!(n, 5, "only x-dark requests are copied: {:?}", canary.seen());
    assert_eq!(canary.seen().len(), 5);
    for s in canary.seen() {
        assert!(s.uri.path().starts_with("/dark/"), "{}", s.uri);
        assert_eq!(s.headers["x-dark"], "1");
    }
    assert_eq!(copies(&proxy, "sent"), 5.0);

    let (code, v) = proxy
        .admin_call("DELETE", "/api/v1/routes/app/mirrors/dark", "")
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    for i in 0..5 {
        let r = c.get(&proxy.url(&format!("/gone/{i}")), &dark).await;
        assert_eq!(r.body, "stable");
    }
    let n = settled("copies", || canary.seen().len()).await;
    assert_eq!(n, 5, "copied after DELETE: {:?}", canary.seen());
    assert_eq!(copies(&proxy, "sent"), 5.0);

    let (code, v) = proxy
        .admin_call("DELETE", "/api/v1/routes/app/mirrors/dark", "")
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{v}");

    // Refused mirrors name the field; nothing changes.
    let gen_before = proxy.generation();
    for (body, field, says) in [
        (r#"{"to":"ghost","percent":100}"#, "mirror.to", "ghost"),
        (r#"{"to":"stable","percent":100}"#, "mirror.to", "primary"),
        (r#"{"to":"canary","percent":150}"#, "mirror.percent", ""),
    ] {
        let (code, v) = proxy
            .admin_call("PUT", "/api/v1/routes/app/mirrors/bad", body)
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}: {v}");
        let errors = v["errors"].as_array().unwrap_or_else(|| panic!("{v}"));
        assert!(
            errors
                .iter()
                .any(|e| e["field"] == field && e["message"].as_str().unwrap().contains(says)),
            "{body}: expected an error on {field}: {v}"
        );
    }
    assert_eq!(proxy.generation(), gen_before);
    let (code, _) = proxy
        .admin_call(
            "PUT",
            "/api/v1/routes/nope/mirrors/dark",
            r#"{"to":"canary","percent":100}"#,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_request_already_routed_to_the_shadow_is_not_copied() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&yaml(
        stable.addr,
        canary.addr,
        "    rules:\n      - { to: canary, when: { header: { name: x-canary, equals: always } } }\n    mirror: { to: canary, percent: 100 }\n",
    ))
    .await;
    let c = TestClient::http1();
    for i in 0..5 {
        let r = c
            .get(
                &proxy.url(&format!("/routed/{i}")),
                &[("x-canary", "always")],
            )
            .await;
        assert_eq!(r.body, "canary");
    }
    for i in 0..5 {
        let r = c.get(&proxy.url(&format!("/copied/{i}")), &[]).await;
        assert_eq!(r.body, "stable");
    }
    wait_for("5 copies", || mirrored(&canary).len() >= 5).await;
    let n = settled("canary requests", || canary.seen().len()).await;
    assert_eq!(n, 10, "5 routed + 5 copies: {:?}", canary.seen());
    for s in canary.seen() {
        let copy = s.headers.contains_key("x-canaryd-mirror");
        assert_eq!(copy, s.uri.path().starts_with("/copied/"), "{}", s.uri);
    }
    assert_eq!(copies(&proxy, "sent"), 5.0);
    assert_eq!(stable.seen().len(), 5);
    // The canary's own traffic is the 5 routed requests, not the copies.
    assert_eq!(
        proxy.metric_value("canaryd_requests_total{route=\"app\",version=\"canary\",code=\"200\"}"),
        5.0
    );
}
