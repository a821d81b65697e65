//! Upstream faults: outlier ejection, fallback to the primary, active health checks, retries
//! and their limits, body idle timeouts, and `client_ip` rules behind trusted proxies. All
//! through real HTTP on loopback against in-process origins that can be killed and restarted.

mod support;

use http::{Request, StatusCode};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of an exported series (`name{labels}`); panics when it is not exported, so a
/// renamed metric or label cannot pass as a zero.
fn metric(proxy: &Proxy, series: &str) -> f64 {
    proxy.metric_value(series)
}

/// `n` GETs from `tasks` concurrent keep-alive clients; (status, serving version) of each.
async fn load(proxy: &Proxy, tasks: usize, n: usize) -> Vec<(StatusCode, String)> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let url = proxy.url("/");
        let client = TestClient::http1();
        set.spawn(async move {
            let mut out = Vec::new();
            for _ in 0..n / tasks {
                let r = client.get(&url, &[]).await;
                let v = r.header("x-canaryd-version").unwrap_or("-").to_string();
                out.push((r.status, v));
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

/// One route `app` whose only version `stable` has these endpoints; `extra` is route YAML.
fn app_route(endpoints: &[std::net::SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nroutes:\n  - name: app\n{extra}    versions:\n      stable: {{ endpoints: [{}] }}\n",
        eps.join(", ")
    )
}

fn failures(results: &[(StatusCode, String)]) -> usize {
    results.iter().filter(|(s, _)| !s.is_success()).count()
}

fn served_by(results: &[(StatusCode, String)], version: &str) -> usize {
    results.iter().filter(|(_, v)| v == version).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_canary_falls_back_to_primary_then_recovers() {
    let stable = Origin::start("stable").await;
    let canary = Origin::start("canary").await;
    let extra = "    fallback: true
    outlier_detection: { consecutive_failures: 2, base_ejection_time: 300ms, max_ejection_time: 1s }
";
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "50", extra)).await;

    let before = load(&proxy, 4, 200).await;
    assert_eq!(failures(&before), 0);
    assert!(served_by(&before, "canary") > 40, "canary serves its share");

    // Crash the canary between two bursts. Only a request in flight at the kill may fail
    // (none is here); the one other way is a request written to a pooled canary connection
    // in the instant before canaryd sees it closed: at most one per concurrent client.
    let canary_addr = canary.addr;
    canary.kill();
    let window = load(&proxy, 4, 100).await;
    assert!(
        failures(&window) <= 4,
        "{} failures in the detection window",
        failures(&window)
    );
    assert!(
        metric(
            &proxy,
            "canaryd_endpoint_ejections_total{route=\"app\",version=\"canary\"}"
        ) >= 1.0,
        "the dead canary endpoint was ejected"
    );

    // After detection: every request succeeds on the primary, including the probes that hit
    // the canary each time its ejection runs out (connect failure → retried on the primary).
    let down = load(&proxy, 4, 400).await;
    assert_eq!(
        failures(&down),
        0,
        "no client-visible failure after detection"
    );
    assert_eq!(served_by(&down, "canary"), 0);
    assert!(
        metric(
            &proxy,
            "canaryd_fallback_requests_total{route=\"app\",version=\"canary\"}"
        ) > 0.0
    );
    assert_eq!(
        metric(
            &proxy,
            "canaryd_endpoints_unavailable{route=\"app\",version=\"canary\"}"
        ),
        1.0
    );
    // Every response labelled stable was served by the stable origin, and only those.
    assert_eq!(
        stable.seen().len(),
        served_by(&before, "stable") + served_by(&window, "stable") + served_by(&down, "stable")
    );

    // Bring it back on the same port: once its ejection ends it takes traffic again.
    let revived = Origin::start_at("canary", canary_addr).await;
    let client = TestClient::http1();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = client.get(&proxy.url("/"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        if r.header("x-canaryd-version") == Some("canary") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "canary never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = load(&proxy, 4, 200).await;
    assert_eq!(failures(&after), 0);
    assert!(
        served_by(&after, "canary") > 40,
        "canary serves its share again"
    );
    assert!(!revived.seen().is_empty());
    assert_eq!(
        metric(
            &proxy,
            "canaryd_endpoints_unavailable{route=\"app\",version=\"canary\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fallback_a_dead_canary_fails_its_share() {
    let stable = Origin::start("stable").await;
    let canary = Origin::start("canary").await;
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "50", "")).await;
    canary.kill();
    let results = load(&proxy, 2, 100).await;
    // No fallback: the canary's users get 502 (the proxy does not silently move them).
    assert!(failures(&results) > 10, "{} failures", failures(&results));
    assert!(
        results
            .iter()
            .all(|(s, _)| *s == StatusCode::OK || *s == StatusCode::BAD_GATEWAY)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_takes_a_version_out_and_back() {
    let stable = Origin::start("stable").await;
    let canary = Origin::start("canary").await;
    let extra = "    fallback: true
    health_check: { path: /healthz, interval: 50ms, timeout: 40ms, healthy_threshold: 1, unhealthy_threshold: 2 }
";
    let proxy = Proxy::start(&split_yaml(&stable, &canary, "50", extra)).await;
    let gauge = "canaryd_endpoints_unavailable{route=\"app\",version=\"canary\"}";

    canary
        .health
        .store(503, std::sync::atomic::Ordering::SeqCst);
    wait_for("canary marked unhealthy", || metric(&proxy, gauge) == 1.0).await;
    let canary_seen = canary.seen().len();
    let out = load(&proxy, 2, 100).await;
    assert_eq!(failures(&out), 0);
    assert_eq!(served_by(&out, "stable"), 100, "all traffic on the primary");
    assert_eq!(
        canary.seen().len(),
        canary_seen,
        "no request reached the unhealthy canary"
    );

    canary
        .health
        .store(200, std::sync::atomic::Ordering::SeqCst);
    wait_for("canary healthy again", || metric(&proxy, gauge) == 0.0).await;
    let out = load(&proxy, 2, 100).await;
    assert!(served_by(&out, "canary") > 20, "canary back in rotation");
}

#[tokio::test]
async fn idempotent_requests_retry_on_configured_status_and_posts_do_not() {
    let origin = Origin::start("o").await;
    let yaml = app_route(
        &[origin.addr],
        "    retries: { attempts: 2, on_status: [503] }\n    outlier_detection: { consecutive_failures: 0 }\n",
    );
    let proxy = Proxy::start(&yaml).await;
    let client = TestClient::http1();

    // GET to an endpoint that always answers 503: first try + 2 retries, then the 503.
    let r = client.get(&proxy.url("/status/503"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        origin.seen().len(),
        3,
        "one attempt and exactly two retries"
    );
    assert_eq!(
        metric(
            &proxy,
            "canaryd_retries_total{route=\"app\",version=\"stable\"}"
        ),
        2.0
    );

    // A POST is not idempotent: it goes once.
    let req = Request::post(proxy.url("/status/503"))
        .body(full("order"))
        .unwrap();
    assert_eq!(
        client.send(req).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(origin.seen().len(), 4);

    // 500 is not in `on_status`.
    client.get(&proxy.url("/status/500"), &[]).await;
    assert_eq!(origin.seen().len(), 5);
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_endpoint_with_the_body() {
    let origin = Origin::start("live").await;
    let dead = closed_port();
    let yaml = app_route(
        &[dead, origin.addr],
        "    outlier_detection: { consecutive_failures: 0 }\n",
    );
    let proxy = Proxy::start(&yaml).await;
    let client = TestClient::http1();
    // Round robin alternates; every POST that first tries the dead endpoint is replayed,
    // body included, on the live one (nothing reached the dead one, so it is safe).
    for i in 0..6 {
        let body = format!("payload-{i}-{}", "x".repeat(10_000));
        let req = Request::post(proxy.url("/sink"))
            .body(full(body.clone()))
            .unwrap();
        let r = client.send(req).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, body.len().to_string(), "the whole body arrived");
    }
    assert!(
        metric(
            &proxy,
            "canaryd_retries_total{route=\"app\",version=\"stable\"}"
        ) >= 3.0
    );
    assert!(
        metric(
            &proxy,
            "canaryd_upstream_errors_total{route=\"app\",version=\"stable\",kind=\"connect\"}"
        ) >= 3.0
    );
}

#[tokio::test]
async fn retries_off_means_one_attempt() {
    let dead = closed_port();
    let yaml = app_route(&[dead], "    retries: { attempts: 0 }\n");
    let proxy = Proxy::start(&yaml).await;
    let r = TestClient::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        metric(
            &proxy,
            "canaryd_retries_total{route=\"app\",version=\"stable\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            &proxy,
            "canaryd_upstream_errors_total{route=\"app\",version=\"stable\",kind=\"connect\"}"
        ),
        1.0
    );
}

fn one_route(origin: &Origin, route_extra: &str, proxy_extra: &str) -> String {
    format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
proxy: {{ version_header: true{proxy_extra} }}
routes:
  - name: app
{route_extra}    versions:
      stable: {{ endpoints: ["{}"] }}
"#,
        origin.addr
    )
}

#[tokio::test]
async fn slow_request_body_is_cut_off() {
    let origin = Origin::start("o").await;
    let proxy = Proxy::start(&one_route(&origin, "    timeouts: { idle: 200ms }\n", "")).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // 10 bytes promised, 1 sent, then silence (the slow-body attack keeps this up forever).
    s.write_all(b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\na")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "connection still open after the idle timeout");
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
}

#[tokio::test]
async fn stalled_response_body_is_cut_off() {
    let origin = Origin::start("o").await;
    let proxy = Proxy::start(&one_route(&origin, "    timeouts: { idle: 200ms }\n", "")).await;
    let client = TestClient::http1();
    // Headers arrive at once; the only chunk would come after 60 s.
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        let r = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<TestBody>()
            .request(
                Request::get(proxy.url("/drip/1/60000"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        http_body_util::BodyExt::collect(r.into_body()).await
    })
    .await
    .expect("stalled body was not cut off");
    assert!(resp.is_err(), "the body ends in an error, not a clean end");
    // The proxy keeps serving.
    assert_eq!(
        client.get(&proxy.url("/"), &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn client_ip_rules_use_only_trusted_forwarded_hops() {
    let stable = Origin::start("stable").await;
    let canary = Origin::start("canary").await;
    let rules = "    rules:
      - { to: canary, when: { client_ip: [10.0.0.0/8, \"2001:db8::/32\"] } }
";
    // No trusted hops: the TCP peer (127.0.0.1) decides; a forged header changes nothing.
    let direct = Proxy::start(&split_yaml(&stable, &canary, "0", rules)).await;
    let client = TestClient::http1();
    let r = client
        .get(&direct.url("/"), &[("x-forwarded-for", "10.1.2.3")])
        .await;
    assert_eq!(r.header("x-canaryd-version"), Some("stable"));

    // One trusted proxy in front: the rightmost entry is the address it saw.
    let yaml = split_yaml(&stable, &canary, "0", rules).replace(
        "proxy: { version_header: true }",
        "proxy: { version_header: true, trusted_hops: 1 }",
    );
    let behind = Proxy::start(&yaml).await;
    for (xff, want) in [
        ("10.1.2.3", "canary"),
        ("2001:db8::7", "canary"),
        // The client wrote 10.1.2.3 itself; the proxy appended the real address.
        ("10.1.2.3, 192.0.2.1", "stable"),
        ("garbage", "stable"),
    ] {
        let r = client
            .get(&behind.url("/"), &[("x-forwarded-for", xff)])
            .await;
        assert_eq!(r.header("x-canaryd-version"), Some(want), "XFF {xff}");
    }
    // Loopback is not in the list: with no header the peer decides.
    let r = client.get(&behind.url("/"), &[]).await;
    assert_eq!(r.header("x-canaryd-version"), Some("stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries_under_concurrency() {
    let origin = Origin::start("o").await;
    let yaml = app_route(
        &[origin.addr],
        "    retries: { attempts: 5, on_status: [503], budget_percent: 0 }\n    outlier_detection: { consecutive_failures: 0 }\n",
    );
    let proxy = Proxy::start(&yaml).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let url = proxy.url("/slow/503/100");
        set.spawn(async move { TestClient::http1().get(&url, &[]).await.status });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // Unbudgeted, 20 failing requests × (1 + 5 attempts) = 120 upstream requests. The budget
    // (0 %, so its floor of 3 retrying requests at a time) lets at most 3 of them retry.
    let seen = origin.seen().len();
    let retries = metric(
        &proxy,
        "canaryd_retries_total{route=\"app\",version=\"stable\"}",
    );
    assert!(seen <= 20 + 3 * 5, "{seen} upstream requests");
    assert!((1.0..=15.0).contains(&retries), "{retries} retries");
    assert_eq!(seen, 20 + retries as usize);
}

#[tokio::test]
async fn ejection_never_takes_more_than_the_configured_share() {
    let (a, b) = (closed_port(), closed_port());
    let yaml = app_route(
        &[a, b],
        "    retries: { attempts: 0 }\n    outlier_detection: { consecutive_failures: 1, max_ejection_percent: 50 }\n",
    );
    let proxy = Proxy::start(&yaml).await;
    let client = TestClient::http1();
    for _ in 0..20 {
        assert_eq!(
            client.get(&proxy.url("/"), &[]).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    // Both endpoints fail every time, but only half of them (one) may be out at once.
    let labels = "{route=\"app\",version=\"stable\"}";
    assert_eq!(
        metric(&proxy, &format!("canaryd_endpoint_ejections_total{labels}")),
        1.0
    );
    assert_eq!(
        metric(&proxy, &format!("canaryd_endpoints_unavailable{labels}")),
        1.0
    );
}
