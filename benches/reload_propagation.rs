//! Reload propagation: time from a config file's rename to the first request routed by the
//! new weights. Not a test: it prints figures (median, p90, p99, max).
//!
//! Method: two in-process origins, canaryd in-process watching a temp file. Each round flips
//! the canary weight 0 ↔ 100 by writing a temp file and renaming it over the config (the
//! editor/`kubectl cp` pattern), starts the clock right after `rename(2)` returns, and sends
//! back-to-back keep-alive requests until one is answered by the expected version.
//! The figure includes the watcher's debounce (`watch::DEBOUNCE`) and settle read
//! (`watch::SETTLE`). Rounds: `ROUNDS` env var, default 200.
//!
//! Run: `cargo bench --bench reload_propagation`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;

fn config(stable: &Origin, canary: &Origin, weight: u32) -> String {
    format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nroutes:\n  - name: app\n    versions:\n      stable: {{ endpoints: [\"{}\"] }}\n      canary: {{ endpoints: [\"{}\"], weight: {weight} }}\n",
        stable.addr, canary.addr
    )
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, 0)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let client = TestClient::http1();
    let url = proxy.url("/");
    assert_eq!(client.get(&url, &[]).await.body, "stable");

    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let (weight, want) = if i % 2 == 0 {
            (100, "canary")
        } else {
            (0, "stable")
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, config(&stable, &canary, weight)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let t0 = Instant::now();
        loop {
            if client.get(&url, &[]).await.body == want {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "round {i} never propagated"
            );
        }
        samples.push(t0.elapsed());
    }
    samples.sort();
    let pct =
        |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "reload propagation over {rounds} renames: median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (debounce {} ms + settle {} ms included)",
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(samples[samples.len() - 1]),
        canaryd::control::watch::DEBOUNCE.as_millis(),
        canaryd::control::watch::SETTLE.as_millis(),
    );
}
