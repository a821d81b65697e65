//! Built-in rollouts through real HTTP: the engine walks steps, judges the canary from the
//! proxy's own windows (or a webhook judge), promotes or rolls back, answers verbs, and keeps
//! its state across restarts. Short intervals throughout; no test sleeps out a real pause.

mod support;

use http::StatusCode;
use serde_json::Value;
use std::time::Duration;
use support::*;

/// A route `app` (stable, canary) with an admin listener, a state file and `rollout`.
fn yaml(
    stable: std::net::SocketAddr,
    canary: std::net::SocketAddr,
    state: &std::path::Path,
    rollout: &str,
) -> String {
    format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
proxy: {{ version_header: true, state_file: "{}" }}
routes:
  - name: app
    versions:
      stable: {{ endpoints: ["{stable}"] }}
      canary: {{ endpoints: ["{canary}"], weight: 0 }}
    sticky: {{ key: {{ header: x-user }} }}
    rollout:
{rollout}"#,
        state.display()
    )
}

const GATE: &str = r#"      analysis:
        slo:
          interval: 1s
          window: 5s
          count: 2
          min_requests: 5
          checks:
            - success_rate: { min: 95 }
"#;

/// A proxy in front of `stable` and `canary` with `rollout`, its state file in `dir`.
async fn start(stable: &Origin, canary: &Origin, dir: &tempfile::TempDir, rollout: &str) -> Proxy {
    Proxy::start(&yaml(
        stable.addr,
        canary.addr,
        &dir.path().join("s.json"),
        rollout,
    ))
    .await
}

/// Wait (bounded) for the file reload after the `after`-th, and check the file watcher applied
/// it — not the 10 s periodic re-read, which would hide a broken watcher.
async fn wait_reload(proxy: &Proxy, after: u64) {
    wait_for(&format!("reload {}", after + 1), || {
        proxy.control.status().reloads_success > after
    })
    .await;
    let last = proxy
        .control
        .status()
        .last_success
        .expect("a reload applied");
    assert_eq!(
        last.trigger,
        canaryd::control::Trigger::Watch,
        "not applied by the watcher"
    );
}

async fn rollout(proxy: &Proxy) -> Value {
    let (s, v) = proxy
        .admin_call("GET", "/api/v1/routes/app/rollout", "")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn wait_phase(proxy: &Proxy, phase: &str) -> Value {
    for _ in 0..300 {
        let v = rollout(proxy).await;
        if v["phase"] == phase {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("rollout never reached {phase}: {}", rollout(proxy).await);
}

/// Requests from users `from..to` (sticky by `x-user`); how many the canary served.
async fn canary_share(proxy: &Proxy, users: std::ops::Range<u32>) -> usize {
    let client = TestClient::http1();
    let mut canary = 0;
    for u in users {
        let r = client
            .get(&proxy.url("/"), &[("x-user", &u.to_string())])
            .await;
        assert_eq!(r.status, StatusCode::OK);
        if r.header("x-canaryd-version") == Some("canary") {
            canary += 1;
        }
    }
    canary
}

/// Keep `n` requests a second going to the proxy until the returned guard drops.
fn traffic(proxy: &Proxy) -> tokio::task::AbortHandle {
    let url = proxy.url("/");
    tokio::spawn(async move {
        let client = TestClient::http1();
        for i in 0..20_000u32 {
            let _ = client.try_get(&format!("{url}?i={i}")).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .abort_handle()
}

#[tokio::test]
async fn a_healthy_canary_walks_every_step_and_sticky_users_only_move_to_it() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let steps = "      id: app-v2\n      steps:\n        - set_weight: 20\n        - pause: {}\n        - set_weight: 50\n        - pause: {}\n        - analysis: slo\n";
    let proxy = Proxy::start(&yaml(
        stable.addr,
        canary.addr,
        &dir.path().join("s.json"),
        &format!("{steps}{GATE}"),
    ))
    .await;
    let v = wait_phase(&proxy, "paused").await;
    assert_eq!(
        (
            v["reason"].as_str(),
            v["step"].as_u64(),
            v["set_weight"].as_f64()
        ),
        (Some("step"), Some(1), Some(20.0))
    );
    // 2000 users: 20 % ± 4.5 sd.
    let at20 = canary_share(&proxy, 0..2000).await;
    assert!(
        (400 - 81..=400 + 81).contains(&at20),
        "{at20} of 2000 at 20 %"
    );
    let on_canary: Vec<u32> = {
        let client = TestClient::http1();
        let mut v = Vec::new();
        for u in 0..300u32 {
            let r = client
                .get(&proxy.url("/"), &[("x-user", &u.to_string())])
                .await;
            if r.header("x-canaryd-version") == Some("canary") {
                v.push(u);
            }
        }
        v
    };
    let (s, v) = proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/promote", "")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = wait_phase(&proxy, "paused").await;
    assert_eq!(v["set_weight"].as_f64(), Some(50.0));
    let at50 = canary_share(&proxy, 0..2000).await;
    assert!(
        (1000 - 101..=1000 + 101).contains(&at50),
        "{at50} of 2000 at 50 %"
    );
    // Monotonic: everyone on the canary at 20 % is still there at 50 %.
    let client = TestClient::http1();
    for u in on_canary {
        let r = client
            .get(&proxy.url("/"), &[("x-user", &u.to_string())])
            .await;
        assert_eq!(
            r.header("x-canaryd-version"),
            Some("canary"),
            "user {u} moved back"
        );
    }
    // The gate needs two passing measurements of real traffic, then promotion.
    let load = traffic(&proxy);
    proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/promote", "")
        .await;
    let v = wait_phase(&proxy, "succeeded").await;
    load.abort();
    let passed = v["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["result"] == "passed")
        .count();
    assert!(passed >= 2, "{v}");
    assert_eq!(
        canary_share(&proxy, 0..100).await,
        100,
        "the canary takes 100 % after promotion"
    );
    let (_, r) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(r["versions"][1]["weight_source"], "rollout", "{r}");
    let phases: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(phases.last(), Some(&"succeeded"));
    assert_eq!(
        proxy.metric_value("canaryd_route_weight{route=\"app\",version=\"canary\"}"),
        100.0
    );
    wait_for("the succeeded phase exported", || {
        proxy.metric("canaryd_rollout_phase{route=\"app\",phase=\"succeeded\"}") == Some(1.0)
    })
    .await;
    let m = |s: &str| proxy.metric_value(s);
    assert_eq!(
        m("canaryd_rollout_phase{route=\"app\",phase=\"paused\"}"),
        0.0
    );
    assert_eq!(
        m("canaryd_rollout_transitions_total{route=\"app\",phase=\"paused\"}"),
        2.0
    );
    assert!(
        m("canaryd_rollout_measurements_total{route=\"app\",gate=\"slo\",result=\"passed\"}")
            >= 2.0
    );
    assert_eq!(
        m("canaryd_rollout_weight{route=\"app\",kind=\"set\"}"),
        100.0
    );
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_and_gets_no_traffic_after() {
    let stable = Origin::start("stable").await;
    let dir = tempfile::tempdir().unwrap();
    let r = format!(
        "      id: app-v2\n      steps:\n        - set_weight: 50\n        - analysis: slo\n        - set_weight: 80\n{}",
        GATE.replace("count: 2", "count: 5\n          failure_limit: 1\n          initial_delay: 2s\n          inconclusive_limit: 3")
    );
    // The canary's endpoint refuses connections: every request it gets is a 502.
    let proxy = Proxy::start(&yaml(
        stable.addr,
        closed_port(),
        &dir.path().join("s.json"),
        &r,
    ))
    .await;
    let load = traffic(&proxy);
    let v = wait_phase(&proxy, "aborted").await;
    load.abort();
    assert_eq!(v["reason"], "analysis_failed", "{v}");
    let failed = v["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["result"] == "failed")
        .count();
    assert_eq!(failed, 2, "aborted by measurement failure_limit + 1: {v}");
    assert_eq!(v["set_weight"].as_f64(), Some(0.0));
    assert_eq!(
        canary_share(&proxy, 0..200).await,
        0,
        "no request reaches the canary after the abort"
    );
    assert_eq!(v["verbs"], serde_json::json!(["retry"]));
    // A verb that does not apply: 409 with the ones that do.
    let (s, e) = proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/promote", "")
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["verbs"], serde_json::json!(["retry"]));
    let (s, _) = proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/retry", "")
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = rollout(&proxy).await;
    assert_eq!(
        (v["phase"].as_str(), v["set_weight"].as_f64()),
        (Some("progressing"), Some(50.0)),
        "{v}"
    );
}

#[tokio::test]
async fn a_critical_judge_saying_no_aborts_at_once_with_its_text() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let judge = Judge::start(
        r#"{"promote": false, "confidence": 90, "analysis": "p99 doubled after the deploy"}"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let r = format!(
        "      id: app-v2\n      steps:\n        - set_weight: 10\n        - analysis: judge\n      analysis:\n        judge:\n          interval: 1s\n          initial_delay: 1s\n          min_requests: 5\n          inconclusive_limit: 10\n          checks:\n            - webhook: {{ url: \"http://{}/a2a/analyze\", critical: true }}\n",
        judge.addr
    );
    let proxy = start(&stable, &canary, &dir, &r).await;
    let load = traffic(&proxy);
    let v = wait_phase(&proxy, "aborted").await;
    load.abort();
    assert_eq!(v["measurements"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("p99 doubled after the deploy"),
        "{v}"
    );
    let asked = judge.bodies();
    assert_eq!(asked[0]["route"], "app");
    assert_eq!(asked[0]["canary"]["name"], "canary");
    assert!(
        asked[0]["canary_recent_failures"].is_array(),
        "{}",
        asked[0]
    );
}

#[tokio::test]
async fn no_traffic_pauses_inconclusive_and_never_promotes() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let r = format!(
        "      id: app-v2\n      steps:\n        - set_weight: 10\n        - analysis: slo\n{GATE}"
    );
    let proxy = start(&stable, &canary, &dir, &r).await;
    let v = wait_phase(&proxy, "paused").await;
    assert_eq!(v["reason"], "inconclusive", "{v}");
    assert_eq!(v["set_weight"].as_f64(), Some(10.0));
}

#[tokio::test]
async fn hand_set_weights_answer_409_unless_forced_which_pauses_the_rollout() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let r = "      id: app-v2\n      steps:\n        - set_weight: 10\n        - pause: {}\n";
    let proxy = start(&stable, &canary, &dir, r).await;
    wait_phase(&proxy, "paused").await;
    let (s, e) = proxy
        .admin_call("PUT", "/api/v1/routes/app/weights", r#"{"canary": 40}"#)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, _) = proxy
        .admin_call(
            "PUT",
            "/api/v1/routes/app/weights?force=true",
            r#"{"canary": 40}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = rollout(&proxy).await;
    assert_eq!(v["reason"], "manual", "{v}");
    let (_, r) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(r["versions"][1]["weight"].as_f64(), Some(40.0));
    // resume gives the weights back to the rollout.
    let (s, _) = proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/resume", "")
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, r) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(r["versions"][1]["weight"].as_f64(), Some(10.0), "{r}");
    // DELETE overrides does not touch the rollout's layer.
    proxy
        .admin_call("DELETE", "/api/v1/routes/app/overrides", "")
        .await;
    let (_, r) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(r["versions"][1]["weight"].as_f64(), Some(10.0), "{r}");
}

#[tokio::test]
async fn a_corrupted_state_file_holds_the_canary_at_zero_until_an_operator_acts() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.json");
    std::fs::write(&state, "{ not json").unwrap();
    let r = "      id: app-v2\n      steps:\n        - set_weight: 30\n        - pause: {}\n";
    let proxy = Proxy::start(&yaml(stable.addr, canary.addr, &state, r)).await;
    let v = rollout(&proxy).await;
    assert_eq!(
        (v["phase"].as_str(), v["reason"].as_str()),
        (Some("paused"), Some("state_lost")),
        "{v}"
    );
    assert_eq!(canary_share(&proxy, 0..100).await, 0);
    let (s, e) = proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/resume", "")
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "resume needs a step after a lost state: {e}"
    );
    let (s, _) = proxy
        .admin_call(
            "POST",
            "/api/v1/routes/app/rollout/resume",
            r#"{"step": 1}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = rollout(&proxy).await;
    assert_eq!(
        (v["set_weight"].as_f64(), v["reason"].as_str()),
        (Some(30.0), Some("step")),
        "{v}"
    );
}

#[test]
fn kill_9_mid_pause_and_restart_keeps_the_step_and_the_pause_end() {
    let stable_canary = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.json");
    let addr = stable_canary.local_addr().unwrap();
    let r = "      id: app-v2\n      steps:\n        - set_weight: 25\n        - pause: 1h\n        - set_weight: 60\n";
    let config = yaml(addr, addr, &state, r);
    let read = |p: &ProxyProcess| -> Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let url = format!("http://{}/api/v1/routes/app/rollout", p.admin.unwrap());
            for _ in 0..100 {
                if let Some(r) = TestClient::http1().try_get(&url).await {
                    let v: Value = serde_json::from_str(&r.body).unwrap();
                    if v["phase"] == "paused" {
                        return v;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no paused rollout");
        })
    };
    let mut first = ProxyProcess::start(&config);
    let before = read(&first);
    first.child.kill().unwrap(); // SIGKILL: no shutdown path runs.
    first.child.wait().unwrap();
    let mut second = ProxyProcess::start(&config);
    let after = read(&second);
    second.child.kill().unwrap();
    assert_eq!(
        (before["step"].as_u64(), before["set_weight"].as_f64()),
        (Some(1), Some(25.0))
    );
    assert_eq!(after["step"], before["step"]);
    assert_eq!(
        after["pause_until"], before["pause_until"],
        "the pause neither restarts nor shortens"
    );
    assert_eq!(after["set_weight"], before["set_weight"]);
}

/// A webhook judge on loopback answering a fixed JSON; keeps what it was asked.
struct Judge {
    addr: std::net::SocketAddr,
    asked: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Judge {
    async fn start(answer: &'static str) -> Judge {
        Self::start_after(answer, Duration::ZERO).await
    }

    /// A judge that thinks for `delay` before answering.
    async fn start_after(answer: &'static str, delay: Duration) -> Judge {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
        let log = asked.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let log = log.clone();
                            async move {
                                tokio::time::sleep(delay).await;
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                log.lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                                Ok::<_, std::convert::Infallible>(http::Response::new(full(answer)))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Judge { addr, asked }
    }

    fn bodies(&self) -> Vec<Value> {
        self.asked.lock().unwrap().clone()
    }
}

/// The four reload cases, through the config file and its watcher.
#[tokio::test]
async fn reloads_leave_unrelated_edits_alone_pause_edited_steps_supersede_and_cancel() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.json");
    let path = dir.path().join("canaryd.yaml");
    let steps = "      id: app-v2\n      steps:\n        - set_weight: 10\n        - set_weight: 30\n        - pause: {}\n        - set_weight: 60\n";
    let write = |rollout: &str, extra: &str| {
        let y = yaml(stable.addr, canary.addr, &state, rollout)
            .replace("    sticky:", &format!("{extra}    sticky:"));
        std::fs::write(&path, y).unwrap();
    };
    write(steps, "");
    let proxy = Proxy::start_file(&path).await;
    let v = wait_phase(&proxy, "paused").await;
    assert_eq!(
        (v["step"].as_u64(), v["set_weight"].as_f64()),
        (Some(2), Some(30.0))
    );
    let history = v["history"].as_array().unwrap().len();

    // An unrelated edit: nothing happens to the rollout.
    let reloads = || proxy.control.status().reloads_success;
    let r0 = reloads();
    write(steps, "    fallback: true\n");
    wait_reload(&proxy, r0).await;
    let v = rollout(&proxy).await;
    assert_eq!(
        (v["reason"].as_str(), v["history"].as_array().unwrap().len()),
        (Some("step"), history)
    );

    // Edited steps: paused (edited) at the current weight; resume goes to the first step
    // whose weight is at least 30 %.
    write(
        &steps.replace(
            "set_weight: 60",
            "set_weight: 50\n        - pause: {}\n        - set_weight: 70",
        ),
        "",
    );
    wait_reload(&proxy, r0 + 1).await;
    let v = rollout(&proxy).await;
    assert_eq!(
        (v["reason"].as_str(), v["set_weight"].as_f64()),
        (Some("edited"), Some(30.0)),
        "{v}"
    );
    let (s, _) = proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/resume", "")
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = rollout(&proxy).await;
    assert_eq!(
        (v["step"].as_u64(), v["set_weight"].as_f64()),
        (Some(2), Some(30.0)),
        "{v}"
    );

    // A new id supersedes: the new rollout starts from step 0.
    write(
        &steps
            .replace("app-v2", "app-v3")
            .replace("set_weight: 10", "set_weight: 5"),
        "",
    );
    wait_reload(&proxy, r0 + 2).await;
    let v = wait_phase(&proxy, "paused").await;
    assert_eq!(v["id"], "app-v3");
    assert_eq!(v["history"][0]["to"], "superseded", "{v}");
    assert_eq!(v["history"][1]["message"], "started at step 0", "{v}");

    // Removing the block of an active rollout cancels it: back to the file's weights.
    let plain = yaml(
        stable.addr,
        canary.addr,
        &state,
        "      id: x\n      steps: [ { set_weight: 1 } ]\n",
    );
    let plain = plain.split("    rollout:").next().unwrap().to_string();
    std::fs::write(&path, plain).unwrap();
    wait_reload(&proxy, r0 + 3).await;
    wait_for("the layer removed", || {
        proxy.state.snapshot().config.routes[0].versions[1].weight.0 == 0
    })
    .await;
    let (s, _) = proxy
        .admin_call("GET", "/api/v1/routes/app/rollout", "")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(canary_share(&proxy, 0..100).await, 0);
}

#[tokio::test]
async fn the_event_stream_carries_transitions_and_measurements_as_they_happen() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let r = "      id: app-v2\n      steps:\n        - set_weight: 10\n        - pause: {}\n        - set_weight: 40\n";
    let proxy = start(&stable, &canary, &dir, r).await;
    wait_phase(&proxy, "paused").await;
    let mut s = tokio::net::TcpStream::connect(proxy.admin.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // The stream is open before anything happens: the head and the opening comment.
    while !seen.contains(": canaryd rollout events") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/promote", "")
        .await;
    while !seen.contains("\"to\":\"succeeded\"") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("event: transition"), "{seen}");
    assert!(seen.contains("\"route\":\"app\""), "{seen}");
}

#[tokio::test]
async fn a_judge_that_times_out_errs_and_pauses_after_error_limit() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let judge = Judge::start_after(
        r#"{"promote": true, "confidence": 99}"#,
        Duration::from_secs(5),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let r = format!(
        "      id: app-v2\n      steps:\n        - set_weight: 10\n        - analysis: judge\n      analysis:\n        judge:\n          interval: 1s\n          error_limit: 2\n          initial_delay: 1s\n          min_requests: 5\n          inconclusive_limit: 10\n          checks:\n            - webhook: {{ url: \"http://{}/\", timeout: 300ms }}\n",
        judge.addr
    );
    let proxy = start(&stable, &canary, &dir, &r).await;
    let load = traffic(&proxy);
    let v = wait_phase(&proxy, "paused").await;
    load.abort();
    assert_eq!(v["reason"], "analysis_error", "{v}");
    let ms = v["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{v}");
    assert!(ms.iter().all(|m| m["result"] == "errored"));
    assert!(
        ms[0]["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{v}"
    );
    assert_eq!(
        v["set_weight"].as_f64(),
        Some(10.0),
        "errors hold the weight, never abort"
    );
}

#[tokio::test]
async fn promote_full_skips_the_remaining_steps() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let r = "      id: app-v2\n      steps:\n        - set_weight: 5\n        - pause: 1h\n        - set_weight: 50\n        - pause: {}\n";
    let proxy = start(&stable, &canary, &dir, r).await;
    wait_phase(&proxy, "paused").await;
    let (s, v) = proxy
        .admin_call(
            "POST",
            "/api/v1/routes/app/rollout/promote",
            r#"{"full": true}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["phase"], "succeeded");
    assert_eq!(canary_share(&proxy, 0..50).await, 50);
}

#[tokio::test]
async fn abort_after_forced_weights_takes_the_canary_to_zero() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let r = "      id: app-v2\n      steps:\n        - set_weight: 10\n        - pause: {}\n";
    let proxy = start(&stable, &canary, &dir, r).await;
    wait_phase(&proxy, "paused").await;
    let (s, _) = proxy
        .admin_call(
            "PUT",
            "/api/v1/routes/app/weights?force=true",
            r#"{"canary": 70}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/abort", "")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        canary_share(&proxy, 0..100).await,
        0,
        "the forced 70 % does not outlive the abort"
    );
}

#[tokio::test]
async fn a_succeeded_rollout_lets_go_when_the_route_is_redeployed() {
    let (stable, canary, next) = (
        Origin::start("stable").await,
        Origin::start("canary").await,
        Origin::start("next").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.json");
    let path = dir.path().join("canaryd.yaml");
    let r = "      id: app-v2\n      steps:\n        - set_weight: 10\n        - pause: {}\n";
    std::fs::write(&path, yaml(stable.addr, canary.addr, &state, r)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    wait_phase(&proxy, "paused").await;
    proxy
        .admin_call(
            "POST",
            "/api/v1/routes/app/rollout/promote",
            r#"{"full": true}"#,
        )
        .await;
    assert_eq!(canary_share(&proxy, 0..50).await, 50);
    // The new stable is deployed (the canary's endpoint changes): the file's weights again.
    let reloads = proxy.control.status().reloads_success;
    std::fs::write(&path, yaml(stable.addr, next.addr, &state, r)).unwrap();
    wait_reload(&proxy, reloads).await;
    wait_for("the layer released", || {
        proxy.state.snapshot().config.routes[0].versions[1].weight.0 == 0
    })
    .await;
    // …and stays released through the engine's next ticks.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(canary_share(&proxy, 0..50).await, 0);
}

#[tokio::test]
async fn a_header_route_step_sends_testers_to_the_canary_until_the_abort_removes_it() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let r = "      id: app-v2\n      steps:\n        - set_header_route: { name: qa, when: { header: { name: x-qa, equals: \"1\" } } }\n        - pause: {}\n";
    let proxy = start(&stable, &canary, &dir, r).await;
    wait_phase(&proxy, "paused").await;
    let c = TestClient::http1();
    let version = |r: Resp| r.header("x-canaryd-version").map(str::to_string);
    let url = proxy.url("/");
    assert_eq!(
        version(c.get(&url, &[("x-qa", "1")]).await).as_deref(),
        Some("canary")
    );
    assert_eq!(
        version(c.get(&url, &[]).await).as_deref(),
        Some("stable"),
        "the weight is still 0"
    );
    let (_, r) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(
        (
            r["rules"][0]["name"].as_str(),
            r["rules"][0]["source"].as_str()
        ),
        (Some("qa"), Some("rollout")),
        "{r}"
    );
    proxy
        .admin_call("POST", "/api/v1/routes/app/rollout/abort", "")
        .await;
    assert_eq!(
        version(c.get(&url, &[("x-qa", "1")]).await).as_deref(),
        Some("stable")
    );
}

/// A dark launch: `set_mirror_route` copies the traffic to the canary while it gets none, a
/// `diff_rate` gate judges the shadow comparison (the canary answers differently from the
/// stable), the rollout aborts, and the managed mirror goes with the abort.
#[tokio::test]
async fn a_dark_launch_whose_shadow_differs_is_aborted_and_stops_being_mirrored() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let r = r#"      id: app-v2
      steps:
        - set_mirror_route: { name: dark, percent: 100 }
        - analysis: shadow
        - set_weight: 50
      analysis:
        shadow:
          interval: 1s
          window: 5s
          initial_delay: 1s
          count: 3
          min_requests: 5
          inconclusive_limit: 20
          source: mirror
          checks:
            - diff_rate: { max: 0.1 }
"#;
    let proxy = start(&stable, &canary, &dir, r).await;
    let load = traffic(&proxy);
    // While the gate measures, the canary serves nobody but sees copies.
    wait_for("copies reach the canary", || {
        proxy.metric_value(
            "canaryd_mirror_requests_total{route=\"app\",version=\"canary\",result=\"sent\"}",
        ) >= 20.0
    })
    .await;
    let (s, a) = proxy
        .admin_call(
            "GET",
            "/api/v1/routes/app/analysis?window=60s&source=mirror",
            "",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert!(
        a["versions"]["canary"]["requests"].as_u64().unwrap() > 0,
        "{a}"
    );
    let v = wait_phase(&proxy, "aborted").await;
    load.abort();
    assert_eq!(v["reason"], "analysis_failed", "{v}");
    let m = v["measurements"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(m["checks"][0]["check"], "diff_rate", "{m}");
    assert_eq!(m["checks"][0]["result"], "failed", "{m}");
    // Copies are never the canary's own requests.
    assert_eq!(
        proxy.metric("canaryd_requests_total{route=\"app\",version=\"canary\",code=\"200\"}"),
        None
    );
    // The managed mirror is gone: no more copies.
    let sent = |p: &Proxy| {
        p.metric_value(
            "canaryd_mirror_requests_total{route=\"app\",version=\"canary\",result=\"sent\"}",
        )
    };
    let before = sent(&proxy);
    let client = TestClient::http1();
    for _ in 0..50 {
        assert_eq!(
            client.get(&proxy.url("/"), &[]).await.status,
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sent(&proxy), before);
    let (_, d) = proxy
        .admin_call("GET", "/api/v1/routes/app/mirror/diffs", "")
        .await;
    assert!(d["diffs"][0]["kinds"].to_string().contains("body"), "{d}");
}
