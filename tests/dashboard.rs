//! The dashboard's data: `GET /api/v1/routes/{r}/series` against the traffic actually sent.

mod support;

use http::StatusCode;
use std::time::{Duration, Instant};
use support::*;

async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    TestClient::http1().get(url, headers).await
}

fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// Sum a series column (nulls count as nothing).
fn column_sum(v: &serde_json::Value) -> f64 {
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_counts_what_each_version_served() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let yaml = split_yaml(
        &stable,
        &canary,
        "0",
        r#"    rules:
      - { to: canary, when: { header: { name: x-canary, equals: always } } }
admin: { address: "127.0.0.1:0" }
"#,
    );
    let proxy = Proxy::start(&yaml).await;
    let client = TestClient::http1();
    for _ in 0..50 {
        assert_eq!(client.get(&proxy.url("/"), &[]).await.status, 200);
    }
    let canary_hdr = [("x-canary", "always")];
    for _ in 0..20 {
        assert_eq!(client.get(&proxy.url("/"), &canary_hdr).await.status, 200);
        let r = client.get(&proxy.url("/status/500"), &canary_hdr).await;
        assert_eq!(r.status, 500);
    }
    // Points close every 5 s: wait until the slots holding these requests are in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let series = loop {
        let r = get(&proxy.admin_url("/api/v1/routes/app/series"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let v = json(&r);
        let total: f64 = v["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| column_sum(&c["requests"]))
            .sum();
        if total >= 90.0 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(series["route"], "app");
    assert_eq!(series["interval_seconds"], 5);
    assert_eq!(series["keep_seconds"], 900);
    let at = series["at"].as_array().unwrap();
    assert!(!at.is_empty());
    assert!(at.iter().all(|t| t.as_u64().unwrap() % 5 == 0), "{at:?}");
    let version = |name: &str| {
        series["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {series}"))
            .clone()
    };
    let (s, c) = (version("stable"), version("canary"));
    assert_eq!(column_sum(&s["requests"]), 50.0);
    assert_eq!(column_sum(&c["requests"]), 40.0);
    for col in [
        "requests",
        "rate",
        "success_rate",
        "p50_seconds",
        "p99_seconds",
        "weight",
    ] {
        assert_eq!(s[col].as_array().unwrap().len(), at.len(), "{col}");
    }
    // Rates are requests per second of a 5-second slot.
    assert!((column_sum(&s["rate"]) * 5.0 - 50.0).abs() < 1e-6);
    // Success: every stable answer, half the canary's (weighted by requests per point).
    let weighted = |col: &serde_json::Value| {
        let (req, ok) = (
            col["requests"].as_array().unwrap(),
            col["success_rate"].as_array().unwrap(),
        );
        req.iter()
            .zip(ok)
            .filter_map(|(r, s)| Some(r.as_f64()? * s.as_f64()? / 100.0))
            .sum::<f64>()
    };
    assert!((weighted(&s) - 50.0).abs() < 1e-6);
    assert!((weighted(&c) - 20.0).abs() < 1e-6, "{c}");
    let p99 = c["p99_seconds"].as_array().unwrap();
    assert!(
        p99.iter()
            .any(|v| v.as_f64().is_some_and(|x| x > 0.0 && x < 5.0))
    );
    assert!(s["weight"].as_array().unwrap().iter().all(|w| *w == 100.0));
    // 50 of 90 requests in the last minute.
    let share = &series["share_last_minute"];
    assert!(
        (share["stable"].as_f64().unwrap() - 55.56).abs() < 0.01,
        "{share}"
    );
    assert!(
        (share["canary"].as_f64().unwrap() - 44.44).abs() < 0.01,
        "{share}"
    );
    assert!(series["mirror"].is_null());

    let r = get(&proxy.admin_url("/api/v1/routes/nope/series"), &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    drop(client);
    proxy.stop().await;
}
