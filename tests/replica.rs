//! What a replica serves a fleet controller: `GET /api/v1/routes/{r}/window?from=&to=` (the
//! raw per-version counts and latency buckets of a wall-clock range, which a controller sums
//! across replicas; checked against exactly what was sent through the proxy) and the pushed
//! rollout layer (`PUT/GET/DELETE /api/v1/routes/{r}/rollout-layer`).

mod support;

use http::StatusCode;
use std::time::{SystemTime, UNIX_EPOCH};
use support::*;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_range_holds_exactly_what_each_version_served() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let yaml = split_yaml(
        &stable,
        &canary,
        "0",
        "    rules:\n      - { to: canary, when: { header: { name: x-canary, equals: always } } }\n",
    )
    .replace("proxy:", "admin: { address: \"127.0.0.1:0\" }\nproxy:");
    let proxy = Proxy::start(&yaml).await;
    let from = unix_now() / 5 * 5;
    let c = TestClient::http1();
    for _ in 0..30 {
        assert_eq!(c.get(&proxy.url("/"), &[]).await.status, StatusCode::OK);
    }
    for _ in 0..12 {
        let r = c
            .get(&proxy.url("/status/503"), &[("x-canary", "always")])
            .await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    for _ in 0..8 {
        c.get(&proxy.url("/"), &[("x-canary", "always")]).await;
    }
    let to = unix_now() + 5;
    let (s, v) = proxy
        .admin_call(
            "GET",
            &format!("/api/v1/routes/app/window?from={from}&to={to}"),
            "",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["slot_seconds"], 5);
    let bounds = v["latency_bounds_us"].as_array().unwrap().len();
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions[0]["name"], "stable");
    let count = |i: usize, k: &str| versions[i][k].as_u64().unwrap();
    assert_eq!((count(0, "requests"), count(0, "errors_5xx")), (30, 0));
    assert_eq!((count(1, "requests"), count(1, "errors_5xx")), (20, 12));
    for vv in versions {
        let buckets: Vec<u64> = vv["latency_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(buckets.len(), bounds + 1);
        assert_eq!(
            buckets.iter().sum::<u64>(),
            vv["requests"].as_u64().unwrap()
        );
    }
    // Bad ranges name the problem.
    for (q, field) in [
        (format!("from={to}&to={from}"), "from"),
        ("to=5".to_string(), "from"),
        (format!("from={from}&to=x"), "to"),
        // Before this process recorded anything: it cannot tell (a restarted replica).
        (format!("from={}&to={}", from - 3600, from - 3000), "from"),
    ] {
        let (s, e) = proxy
            .admin_call("GET", &format!("/api/v1/routes/app/window?{q}"), "")
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {e}");
        assert_eq!(e["errors"][0]["field"], field, "{q}: {e}");
    }
    let (s, _) = proxy
        .admin_call("GET", "/api/v1/routes/nope/window?from=0&to=5", "")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_pushed_layer_moves_the_split_reads_back_and_refuses_stale_revisions() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let yaml = split_yaml(&stable, &canary, "0", "")
        .replace("proxy:", "admin: { address: \"127.0.0.1:0\" }\nproxy:");
    let proxy = Proxy::start(&yaml).await;
    let push = |rev: u64, w: f64| {
        format!(
            r#"{{"id": "app-v2", "revision": {rev}, "step": 3, "weights": {{"canary": {w}}},
                "rules": [{{"name": "qa", "to": "canary", "when": {{"header": {{"name": "x-qa", "equals": "1"}}}}}}]}}"#
        )
    };
    let (s, v) = proxy
        .admin_call("PUT", "/api/v1/routes/app/rollout-layer", &push(2, 100.0))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["revision"].as_u64(), v["step"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(v["effective_weights"]["canary"].as_f64(), Some(100.0));
    assert_eq!(v["effective_weights"]["stable"].as_f64(), Some(0.0));
    let c = TestClient::http1();
    assert_eq!(
        c.get(&proxy.url("/"), &[])
            .await
            .header("x-canaryd-version"),
        Some("canary")
    );
    let (_, r) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(r["versions"][1]["weight_source"], "rollout", "{r}");
    assert_eq!(r["rules"][0]["source"], "rollout", "{r}");
    // An older revision of the same rollout is refused; the same one again changes nothing.
    let (s, e) = proxy
        .admin_call("PUT", "/api/v1/routes/app/rollout-layer", &push(1, 0.0))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let g = proxy.generation();
    let (s, _) = proxy
        .admin_call("PUT", "/api/v1/routes/app/rollout-layer", &push(2, 100.0))
        .await;
    assert_eq!((s, proxy.generation()), (StatusCode::OK, g));
    // Weights that do not fit the route are refused naming the version.
    let (s, e) = proxy
        .admin_call(
            "PUT",
            "/api/v1/routes/app/rollout-layer",
            r#"{"id": "app-v2", "revision": 3, "step": 0, "weights": {"stable": 10}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errors"][0]["field"], "stable");
    // DELETE lets go: the file's weights again.
    let (s, _) = proxy
        .admin_call("DELETE", "/api/v1/routes/app/rollout-layer", "")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        c.get(&proxy.url("/"), &[])
            .await
            .header("x-canaryd-version"),
        Some("stable")
    );
    let (s, _) = proxy
        .admin_call("GET", "/api/v1/routes/app/rollout-layer", "")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
