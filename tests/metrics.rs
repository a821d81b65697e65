//! Metrics, health and analysis as Prometheus, Flagger and Argo read them: exact values after
//! a known mix of requests, the analysis endpoint's cases, and the access log.

mod support;

use http::StatusCode;
use support::*;

fn yaml(stable: &Origin, canary: &Origin, extra_route: &str) -> String {
    format!(
        r#"listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
routes:
  - name: app
    versions:
      stable: {{ endpoints: ["{}"] }}
      canary: {{ endpoints: ["{}"], weight: 0 }}
    rules:
      - {{ to: canary, when: {{ header: {{ name: x-canary, equals: always }} }} }}
{extra_route}"#,
        stable.addr, canary.addr
    )
}

async fn metrics(proxy: &Proxy) -> String {
    let r = TestClient::http1()
        .get(&proxy.admin_url("/metrics"), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    r.body
}

#[tokio::test]
async fn metric_values_after_a_known_mix_are_exact() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let down = format!(
        "  - name: down\n    match: {{ path_prefix: /down }}\n    versions: {{ v: {{ endpoints: [\"{}\"] }} }}\n",
        closed_port()
    );
    let proxy = Proxy::start(&yaml(&stable, &canary, &down)).await;
    let c = TestClient::http1();
    for _ in 0..28 {
        assert_eq!(c.get(&proxy.url("/"), &[]).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(c.get(&proxy.url("/status/500"), &[]).await.status, 500);
    }
    for _ in 0..10 {
        assert_eq!(
            c.get(&proxy.url("/"), &[("x-canary", "always")]).await.body,
            "canary"
        );
    }
    for _ in 0..3 {
        assert_eq!(c.get(&proxy.url("/down"), &[]).await.status, 502);
    }
    let text = metrics(&proxy).await;
    for line in [
        r#"canaryd_requests_total{route="app",version="stable",code="200"} 28"#,
        r#"canaryd_requests_total{route="app",version="stable",code="500"} 2"#,
        r#"canaryd_requests_total{route="app",version="canary",code="200"} 10"#,
        r#"canaryd_requests_total{route="down",version="v",code="502"} 3"#,
        r#"canaryd_request_duration_seconds_count{route="app",version="stable"} 30"#,
        r#"canaryd_request_duration_seconds_count{route="app",version="canary"} 10"#,
        r#"canaryd_request_duration_seconds_bucket{le="+Inf",route="app",version="stable"} 30"#,
        // Every attempt counts: 3 requests × (first try + the default connect-failure retry).
        r#"canaryd_upstream_errors_total{route="down",version="v",kind="connect"} 6"#,
        r#"canaryd_retries_total{route="down",version="v"} 3"#,
        r#"canaryd_upstream_errors_total{route="app",version="stable",kind="connect"} 0"#,
        r#"canaryd_route_weight{route="app",version="stable"} 100.0"#,
        r#"canaryd_route_weight{route="app",version="canary"} 0.0"#,
        r#"canaryd_route_primary{route="app",version="stable"} 1"#,
        "canaryd_config_generation 1",
        r#"canaryd_config_reloads_total{result="failure"} 0"#,
        "canaryd_in_flight_requests 0",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    assert!(!text.contains(r#"canaryd_route_primary{route="app",version="canary"}"#));
    // The test client holds a keep-alive connection open.
    let open = text
        .lines()
        .find_map(|l| l.strip_prefix("canaryd_open_connections "))
        .unwrap();
    assert!(open.parse::<i64>().unwrap() >= 1, "{open}");
}

#[tokio::test]
async fn weights_and_generation_follow_runtime_changes() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&yaml(&stable, &canary, "")).await;
    let (code, _) = proxy
        .admin_call("PUT", "/api/v1/routes/app/weights", r#"{"canary": 12.5}"#)
        .await;
    assert_eq!(code, StatusCode::OK);
    let text = metrics(&proxy).await;
    assert!(
        text.contains(r#"canaryd_route_weight{route="app",version="canary"} 12.5"#),
        "{text}"
    );
    assert!(
        text.contains(r#"canaryd_route_weight{route="app",version="stable"} 87.5"#),
        "{text}"
    );
    assert!(text.contains("canaryd_config_generation 2"), "{text}");
}

#[tokio::test]
async fn health_endpoints() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&yaml(&stable, &canary, "")).await;
    let c = TestClient::http1();
    let h = c.get(&proxy.admin_url("/healthz"), &[]).await;
    assert_eq!((h.status, h.body.as_str()), (StatusCode::OK, "ok\n"));
    let r = c.get(&proxy.admin_url("/readyz"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ready\n"));
    assert_eq!(
        c.get(&proxy.admin_url("/nope"), &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn analysis_is_inconclusive_then_judges_the_canary() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&yaml(&stable, &canary, "")).await;
    let c = TestClient::http1();
    for _ in 0..30 {
        c.get(&proxy.url("/"), &[]).await;
    }
    for _ in 0..10 {
        c.get(&proxy.url("/"), &[("x-canary", "always")]).await;
    }
    let path = "/api/v1/routes/app/analysis?window=60s&min_requests=20";
    let (code, a) = proxy.admin_call("GET", path, "").await;
    assert_eq!(code, StatusCode::OK, "{a}");
    assert_eq!(a["window_seconds"], 60);
    assert_eq!(a["primary"], "stable");
    assert_eq!(a["versions"]["stable"]["requests"], 30);
    assert_eq!(a["versions"]["stable"]["success_rate"], 1.0);
    assert!(
        a["versions"]["stable"]["latency_seconds"]["p99"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(a["versions"]["canary"]["requests"], 10);
    assert_eq!(a["versions"]["canary"]["status"], "inconclusive");
    assert!(
        a["versions"]["canary"]["success_rate"].is_null(),
        "never a silent 0: {a}"
    );
    assert_eq!(a["comparison"]["canary"]["verdict"], "inconclusive");
    assert!(
        a["comparison"]["canary"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("canary has 10 requests in the window, fewer than min_requests 20"),
        "{a}"
    );

    // 10 more good canary requests: enough data and as good as stable.
    for _ in 0..10 {
        c.get(&proxy.url("/"), &[("x-canary", "always")]).await;
    }
    let (_, a) = proxy.admin_call("GET", path, "").await;
    assert_eq!(a["comparison"]["canary"]["verdict"], "pass", "{a}");
    assert_eq!(a["comparison"]["canary"]["success_rate_delta"], 0.0);

    // Now the canary fails half its requests.
    for _ in 0..20 {
        c.get(&proxy.url("/status/500"), &[("x-canary", "always")])
            .await;
    }
    let (_, a) = proxy.admin_call("GET", path, "").await;
    assert_eq!(a["versions"]["canary"]["errors_5xx"], 20);
    assert_eq!(a["versions"]["canary"]["success_rate"], 0.5);
    assert_eq!(a["comparison"]["canary"]["verdict"], "fail", "{a}");
    assert!(
        a["comparison"]["canary"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("success rate 0.5000")
    );

    // Bad queries name the parameter; unknown routes are 404.
    let (code, v) = proxy
        .admin_call("GET", "/api/v1/routes/app/analysis?window=1h", "")
        .await;
    assert_eq!(
        (code, &v["errors"][0]["field"]),
        (StatusCode::BAD_REQUEST, &"window".into())
    );
    let (code, v) = proxy
        .admin_call("GET", "/api/v1/routes/app/analysis?min_requests=0", "")
        .await;
    assert_eq!(
        (code, &v["errors"][0]["field"]),
        (StatusCode::BAD_REQUEST, &"min_requests".into())
    );
    let (code, v) = proxy
        .admin_call("GET", "/api/v1/routes/app/analysis?windw=1m", "")
        .await;
    assert_eq!(
        (code, &v["errors"][0]["field"]),
        (StatusCode::BAD_REQUEST, &"windw".into())
    );
    let (code, _) = proxy
        .admin_call("GET", "/api/v1/routes/nope/analysis", "")
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn analysis_history_survives_weight_changes() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&yaml(&stable, &canary, "")).await;
    let c = TestClient::http1();
    for _ in 0..5 {
        c.get(&proxy.url("/"), &[]).await;
    }
    proxy
        .admin_call("PUT", "/api/v1/routes/app/weights", r#"{"canary": 50}"#)
        .await;
    let (_, a) = proxy
        .admin_call("GET", "/api/v1/routes/app/analysis", "")
        .await;
    assert_eq!(a["generation"], 2);
    assert_eq!(a["versions"]["stable"]["requests"], 5, "{a}");
}

fn access_yaml(stable: &Origin, canary: &Origin, on: bool) -> String {
    yaml(stable, canary, "").replace(
        "routes:",
        &format!("proxy: {{ access_log: {on} }}\nroutes:"),
    )
}

#[tokio::test]
async fn access_log_is_json_lines_with_the_decision() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proc = ProxyProcess::start_with(
        &access_yaml(&stable, &canary, true),
        &["--log-format", "json"],
    );
    let c = TestClient::http1();
    let url = format!("http://{}/some/path", proc.addr);
    assert_eq!(c.get(&url, &[("x-canary", "always")]).await.status, 200);
    let line = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let found = proc
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("canaryd::access"))
                .cloned();
            if let Some(l) = found {
                break l;
            }
            assert!(std::time::Instant::now() < deadline, "no access log line");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["route"], "app", "{v}");
    assert_eq!(v["version"], "canary");
    assert_eq!(v["reason"], "rule");
    assert_eq!(v["reason_detail"], 0);
    assert_eq!(v["status"], 200);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/some/path");
    assert_eq!(v["upstream"], canary.addr.to_string());
    assert_eq!(v["bytes"], 6);
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn access_log_is_off_by_default() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    // No `access_log` key at all: the default is what is tested.
    let yaml = yaml(&stable, &canary, "");
    assert!(!yaml.contains("access_log"));
    let proc = ProxyProcess::start_with(&yaml, &["--log-format", "json"]);
    let c = TestClient::http1();
    for _ in 0..5 {
        assert_eq!(
            c.get(&format!("http://{}/", proc.addr), &[]).await.status,
            200
        );
    }
    // The admin API answering proves the process handled requests after ours.
    let admin = proc.admin.unwrap();
    assert_eq!(
        c.get(&format!("http://{admin}/healthz"), &[]).await.status,
        200
    );
    let logs = proc.logs.lock().unwrap().clone();
    assert!(
        logs.iter().any(|l| l.contains("proxy listening")),
        "{logs:?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("canaryd::access")),
        "{logs:?}"
    );
}
