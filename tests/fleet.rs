//! One rollout across a fleet: several `canaryd run` replicas and one `canaryd controller`,
//! all real processes on loopback. The controller sums the replicas' windows, pushes every
//! step to each replica, verifies it, and re-pushes to restarted ones.

mod support;

use canaryd::rollout::http::call;
use http::{Method, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// A replica's config: route `app` (stable + canary at 0 in the file), sticky on `x-user`,
/// its admin API on `admin`; it holds readiness until the controller synced it.
fn replica_yaml(
    listen: SocketAddr,
    admin: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
) -> String {
    format!(
        r#"
listeners: [{{ address: "{listen}" }}]
admin: {{ address: "{admin}" }}
proxy: {{ version_header: true, wait_for_controller: true }}
routes:
  - name: app
    versions:
      stable: {{ endpoints: ["{stable}"] }}
      canary: {{ endpoints: ["{canary}"], weight: 0 }}
    sticky: {{ key: {{ header: x-user }} }}
"#
    )
}

fn replica(stable: SocketAddr, canary: SocketAddr) -> ProxyProcess {
    let yaml = replica_yaml(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        stable,
        canary,
    );
    ProxyProcess::start(&yaml)
}

/// The controller's file: the replicas' admin URLs, a 300 ms reconcile, and `rollout` (the
/// YAML under `rollout:`, indented by 6).
fn controller_yaml(replicas: &[SocketAddr], state: &std::path::Path, rollout: &str) -> String {
    let targets: Vec<String> = replicas.iter().map(|a| format!("\"http://{a}\"")).collect();
    format!(
        r#"
controller:
  targets: [{}]
  interval: 300ms
  state_file: "{}"
admin: {{ address: "127.0.0.1:0" }}
routes:
  - name: app
    versions: {{ stable: {{}}, canary: {{}} }}
    rollout:
{rollout}"#,
        targets.join(", "),
        state.display()
    )
}

async fn api(admin: SocketAddr, method: Method, path: &str) -> (StatusCode, Value) {
    api_as(admin, method, path, None).await
}

/// An admin call with an optional bearer token.
async fn api_as(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let (s, body) = call(
        method,
        &format!("http://{admin}{path}"),
        None,
        token,
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    (s, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn rollout(ctl: &ProxyProcess) -> Value {
    api(ctl.addr, Method::GET, "/api/v1/routes/app/rollout")
        .await
        .1
}

/// Poll the controller's rollout until `cond` holds (30 s at most).
async fn wait_rollout(ctl: &ProxyProcess, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    support::eventually(what, 30, || async {
        let v = rollout(ctl).await;
        if cond(&v) {
            Ok(v)
        } else {
            Err(format!("{v:#}"))
        }
    })
    .await
}

/// A replica's pushed layer as it reads it back, `Null` without one.
async fn layer(r: SocketAddr) -> (StatusCode, Value) {
    api(r, Method::GET, "/api/v1/routes/app/rollout-layer").await
}

async fn canary_weight(r: SocketAddr) -> Option<f64> {
    layer(r).await.1["effective_weights"]["canary"].as_f64()
}

async fn wait_weight(r: SocketAddr, w: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while canary_weight(r).await != Some(w) {
        assert!(
            Instant::now() < deadline,
            "replica {r} never reached canary {w}: {:?}",
            layer(r).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(admin: SocketAddr) -> u16 {
    call(
        Method::GET,
        &format!("http://{admin}/readyz"),
        None,
        None,
        Duration::from_secs(5),
    )
    .await
    .map(|(s, _)| s.as_u16())
    .unwrap_or(0)
}

fn phase_step(v: &Value) -> (&str, Option<&str>, u64) {
    (
        v["phase"].as_str().unwrap_or(""),
        v["reason"].as_str(),
        v["step"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Share of `n` requests (no sticky key) that the canary served through replica `r`.
async fn canary_share(c: &TestClient, r: &ProxyProcess, n: usize) -> f64 {
    let mut canary = 0;
    for _ in 0..n {
        let resp = c.get(&format!("http://{}/", r.addr), &[]).await;
        assert_eq!(resp.status, StatusCode::OK);
        if resp.header("x-canaryd-version") == Some("canary") {
            canary += 1;
        }
    }
    canary as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_walk_a_rollout_in_lockstep_and_sticky_users_never_move_back() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let replicas: Vec<ProxyProcess> = (0..3).map(|_| replica(stable.addr, canary.addr)).collect();
    // Until a controller has synced them, replicas holding readiness say so.
    for r in &replicas {
        assert_eq!(readyz(r.admin.unwrap()).await, 503);
    }
    let dir = tempfile::tempdir().unwrap();
    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.admin.unwrap()).collect();
    let ctl = ProxyProcess::start_controller(&controller_yaml(
        &admins,
        &dir.path().join("state.json"),
        "      id: app-v2\n      steps: [ { set_weight: 20 }, { pause: 1s }, { set_weight: 50 }, { pause: {} } ]\n",
    ));

    // Sticky users: 40 of them go round the replicas while the weight rises; the version each
    // replica gives each user is recorded in order.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = {
        let (stop, addrs) = (
            stop.clone(),
            replicas.iter().map(|r| r.addr).collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            let c = TestClient::http1();
            let mut seen: HashMap<(usize, u32), Vec<String>> = HashMap::new();
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) && sent < 20_000 {
                for user in 0..40u32 {
                    for (i, a) in addrs.iter().enumerate() {
                        let r = c
                            .get(&format!("http://{a}/"), &[("x-user", &format!("u{user}"))])
                            .await;
                        let v = r.header("x-canaryd-version").unwrap_or("?").to_string();
                        seen.entry((i, user)).or_default().push(v);
                        sent += 1;
                    }
                }
            }
            seen
        })
    };

    let v = wait_rollout(&ctl, "the pause at step 3", |v| {
        phase_step(v) == ("paused", Some("step"), 3)
    })
    .await;
    assert_eq!(v["set_weight"], 50.0);
    assert_eq!(v["fleet"]["in_sync"], true, "{v:#}");
    let revision = v["fleet"]["revision"].as_u64().unwrap();
    // Every replica holds the same revision with the canary at 50, and is ready.
    for a in &admins {
        let (s, l) = layer(*a).await;
        assert_eq!(s, StatusCode::OK, "{l}");
        assert_eq!(l["revision"].as_u64(), Some(revision), "{l}");
        assert_eq!(l["id"], "app-v2");
        assert_eq!(l["effective_weights"]["canary"], 50.0, "{l}");
        assert_eq!(readyz(*a).await, 200);
    }
    // The controller exports where the replicas stand (exported every tick).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = call(
            Method::GET,
            &format!("http://{}/metrics", ctl.addr),
            None,
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let m = String::from_utf8_lossy(&m).into_owned();
        if m.contains("canaryd_rollout_replicas{route=\"app\",state=\"verified\"} 3") {
            assert!(m.contains("canaryd_rollout_replicas{route=\"app\",state=\"unreachable\"} 0"));
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let seen = seen.await.unwrap();
    // Each replica's split follows the step (400 requests: 50 % ± 12).
    let c = TestClient::http1();
    for r in &replicas {
        let share = canary_share(&c, r, 400).await;
        assert!(
            (0.38..=0.62).contains(&share),
            "{} served {share} canary",
            r.addr
        );
    }
    let mut moved_up = 0;
    for ((replica, user), versions) in &seen {
        for w in versions.windows(2) {
            assert!(
                !(w[0] == "canary" && w[1] == "stable"),
                "user u{user} moved canary -> stable on replica {replica}: {versions:?}"
            );
            moved_up += usize::from(w[0] == "stable" && w[1] == "canary");
        }
    }
    assert!(
        moved_up > 0,
        "no sticky user moved to the canary as the weight rose"
    );

    // Promotion reaches every replica.
    let (s, v) = api(ctl.addr, Method::POST, "/api/v1/routes/app/rollout/promote").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_rollout(&ctl, "success", |v| v["phase"] == "succeeded").await;
    for a in &admins {
        wait_weight(*a, 100.0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_broken_on_one_replica_aborts_the_whole_fleet() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    // Replica 3's canary endpoint refuses connections: every canary request there is a 502.
    let replicas = [
        replica(stable.addr, canary.addr),
        replica(stable.addr, canary.addr),
        replica(stable.addr, closed_port()),
    ];
    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.admin.unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    let ctl = ProxyProcess::start_controller(&controller_yaml(
        &admins,
        &dir.path().join("state.json"),
        r#"      id: app-v2
      steps: [ { set_weight: 50 }, { analysis: slo }, { pause: {} } ]
      analysis:
        slo:
          initial_delay: 5s
          interval: 1s
          window: 5s
          count: 3
          min_requests: 10
          inconclusive_limit: 10
          checks:
            - success_rate: { min: 90 }
"#,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addrs) = (
            stop.clone(),
            replicas.iter().map(|r| r.addr).collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            let c = TestClient::http1();
            for _ in 0..5_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                for a in &addrs {
                    let _ = c.try_get(&format!("http://{a}/")).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let v = wait_rollout(&ctl, "the abort", |v| v["phase"] == "aborted").await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(v["reason"], "analysis_failed", "{v:#}");
    // The fleet's canary success rate (about 2/3) failed, though two replicas alone would pass.
    let m = v["measurements"].as_array().unwrap();
    let last = m.last().unwrap();
    assert_eq!(last["result"], "failed", "{last:#}");
    let rate = last["checks"][0]["value"].as_f64().unwrap();
    assert!(
        (40.0..90.0).contains(&rate),
        "fleet canary success rate {rate}"
    );
    for a in &admins {
        wait_weight(*a, 0.0).await;
    }

    // The controller's series (its dashboard) is the replicas' sum, slot by slot.
    let series = |admin: SocketAddr| async move {
        let (status, v) = api(admin, Method::GET, "/api/v1/routes/app/series").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let at: Vec<u64> = v["at"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        let mut counts: HashMap<(u64, String), u64> = HashMap::new();
        for c in v["versions"].as_array().unwrap() {
            for (t, n) in at.iter().zip(c["requests"].as_array().unwrap()) {
                counts.insert(
                    (*t, c["name"].as_str().unwrap().to_string()),
                    n.as_u64().unwrap_or(0),
                );
            }
        }
        (at, counts)
    };
    let (at, fleet) = series(ctl.admin.unwrap()).await;
    let mut summed: HashMap<(u64, String), u64> = HashMap::new();
    let mut common: Vec<u64> = at.clone();
    for a in &admins {
        let (at, counts) = series(*a).await;
        common.retain(|t| at.contains(t));
        for (k, n) in counts {
            *summed.entry(k).or_default() += n;
        }
    }
    let mut compared = 0;
    for t in &common {
        for version in ["stable", "canary"] {
            let k = (*t, version.to_string());
            assert_eq!(fleet.get(&k), summed.get(&k), "slot {t} {version}");
            compared += fleet.get(&k).copied().unwrap_or(0);
        }
    }
    assert!(
        compared > 0,
        "no slot with traffic in common: {at:?} {common:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replica_blocks_progress_not_abort_and_a_restarted_one_converges() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let a = replica(stable.addr, canary.addr);
    // Replica B on fixed ports, so it comes back where the controller looks for it.
    let (b_listen, b_admin) = (closed_port(), closed_port());
    let b_yaml = replica_yaml(b_listen, b_admin, stable.addr, canary.addr);
    let mut b = ProxyProcess::start(&b_yaml);
    let admins = [a.admin.unwrap(), b_admin];
    let dir = tempfile::tempdir().unwrap();
    let ctl = ProxyProcess::start_controller(&controller_yaml(
        &admins,
        &dir.path().join("state.json"),
        "      id: app-v2\n      steps: [ { set_weight: 20 }, { pause: {} }, { set_weight: 60 }, { pause: {} } ]\n",
    ));
    wait_rollout(&ctl, "the first pause", |v| {
        phase_step(v) == ("paused", Some("step"), 1) && v["fleet"]["in_sync"] == true
    })
    .await;

    // B goes away: it is named, and a promotion does not take the next step without it.
    let _ = b.child.kill();
    let _ = b.child.wait();
    let v = wait_rollout(&ctl, "B named unreachable", |v| {
        v["fleet"]["blocked_by"].as_array().is_some_and(|b| {
            b.iter()
                .any(|s| s.as_str().unwrap_or("").contains(&b_admin.to_string()))
        })
    })
    .await;
    assert_eq!(v["fleet"]["in_sync"], false);
    let (s, v) = api(ctl.addr, Method::POST, "/api/v1/routes/app/rollout/promote").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Several reconcile intervals later it still waits for B before the set_weight step.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = rollout(&ctl).await;
    assert_eq!(
        (v["phase"].as_str(), v["step"].as_u64()),
        (Some("progressing"), Some(2)),
        "{v:#}"
    );
    assert_eq!(canary_weight(admins[0]).await, Some(20.0));
    let replicas = v["fleet"]["replicas"].as_array().unwrap();
    let b_state = replicas
        .iter()
        .find(|r| r["target"].as_str().unwrap().contains(&b_admin.to_string()))
        .unwrap();
    assert_eq!(b_state["state"], "unreachable", "{v:#}");

    // B restarts with nothing: the controller gives it the current step, readiness follows,
    // and the rollout goes on to the next pause.
    let restarted = Instant::now();
    b = ProxyProcess::start(&b_yaml);
    wait_rollout(&ctl, "the second pause", |v| {
        phase_step(v) == ("paused", Some("step"), 3)
    })
    .await;
    eprintln!("restarted replica verified after {:?}", restarted.elapsed());
    assert_eq!(canary_weight(b_admin).await, Some(60.0));
    assert_eq!(readyz(b_admin).await, 200);

    // B away again: an abort does not wait for it.
    let _ = b.child.kill();
    let _ = b.child.wait();
    let (s, v) = api(ctl.addr, Method::POST, "/api/v1/routes/app/rollout/abort").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["phase"], "aborted");
    wait_weight(admins[0], 0.0).await;
    // And B, back, gets the aborted layer.
    let _b = ProxyProcess::start(&b_yaml);
    wait_weight(b_admin, 0.0).await;
    let c = TestClient::http1();
    let r = c
        .get(&format!("http://{b_listen}/"), &[("x-user", "u1")])
        .await;
    assert_eq!(r.header("x-canaryd-version"), Some("stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_keeps_the_pause_end_and_without_state_holds_the_fleets_step() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let replicas = [
        replica(stable.addr, canary.addr),
        replica(stable.addr, canary.addr),
    ];
    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.admin.unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let yaml = controller_yaml(
        &admins,
        &state,
        "      id: app-v2\n      steps: [ { set_weight: 30 }, { pause: 60s }, { set_weight: 60 } ]\n",
    );
    let mut ctl = ProxyProcess::start_controller(&yaml);
    let v = wait_rollout(&ctl, "the timed pause", |v| {
        phase_step(v) == ("paused", Some("step"), 1)
    })
    .await;
    let pause_until = v["pause_until"].clone();
    assert!(pause_until.is_string(), "{v:#}");

    // Killed mid-pause and restarted: same step, same pause end.
    let _ = ctl.child.kill();
    let _ = ctl.child.wait();
    ctl = ProxyProcess::start_controller(&yaml);
    let v = rollout(&ctl).await;
    assert_eq!(phase_step(&v), ("paused", Some("step"), 1), "{v:#}");
    assert_eq!(v["pause_until"], pause_until);

    // Killed again and its state file lost: the replicas still hold step 1 at 30 %, so it
    // starts paused (state_lost) there, never back at step 0.
    let _ = ctl.child.kill();
    let _ = ctl.child.wait();
    std::fs::remove_file(&state).unwrap();
    ctl = ProxyProcess::start_controller(&yaml);
    let v = rollout(&ctl).await;
    assert_eq!(phase_step(&v), ("paused", Some("state_lost"), 1), "{v:#}");
    assert_eq!(v["set_weight"], 30.0);
    // A few reconcile intervals later the replicas still serve 30 %.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for a in &admins {
        assert_eq!(canary_weight(*a).await, Some(30.0));
    }
    // `resume` goes on from that step: the pause again, at 30 %.
    let (s, v) = api(ctl.addr, Method::POST, "/api/v1/routes/app/rollout/resume").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = wait_rollout(&ctl, "the pause again", |v| {
        phase_step(v) == ("paused", Some("step"), 1)
    })
    .await;
    assert_eq!(v["set_weight"], 30.0);
}

/// Replicas found by DNS (`targets_dns`), whose admin API needs a token: without the target
/// token nothing moves and the replica says why; with `CANARYD_TARGET_TOKEN` the rollout
/// proceeds. The controller's own API follows `admin.token`, and refuses to set one proxy's
/// weights (it serves no traffic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_found_by_dns_and_reached_with_the_target_token() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let admin = closed_port();
    let yaml = replica_yaml(
        "127.0.0.1:0".parse().unwrap(),
        admin,
        stable.addr,
        canary.addr,
    )
    .replace(
        &format!("admin: {{ address: \"{admin}\" }}"),
        &format!("admin: {{ address: \"{admin}\", token: replica-secret }}"),
    );
    let _r = ProxyProcess::start(&yaml);
    let dir = tempfile::tempdir().unwrap();
    let ctl_yaml = controller_yaml(
        &[admin],
        &dir.path().join("state.json"),
        "      id: app-v2\n      steps: [ { set_weight: 25 }, { pause: {} } ]\n",
    )
    .replace(
        &format!("targets: [\"http://{admin}\"]"),
        &format!("targets_dns: \"localhost:{}\"", admin.port()),
    )
    .replace(
        "admin: { address: \"127.0.0.1:0\" }",
        "admin: { address: \"127.0.0.1:0\", token: controller-secret }",
    );
    let get = |ctl: SocketAddr| async move {
        api_as(
            ctl,
            Method::GET,
            "/api/v1/routes/app/rollout",
            Some("controller-secret"),
        )
        .await
    };

    // No target token: the replica refuses, and the controller says so.
    let ctl = ProxyProcess::start_controller(&ctl_yaml);
    assert_eq!(
        api(ctl.addr, Method::GET, "/api/v1/routes/app/rollout")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(ctl.addr).await.1;
        let blocked = v["fleet"]["blocked_by"].to_string();
        if blocked.contains("401") {
            assert_eq!(v["fleet"]["in_sync"], false);
            break;
        }
        assert!(Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ctl);

    let ctl = ProxyProcess::start_controller_env(
        &ctl_yaml,
        &[("CANARYD_TARGET_TOKEN", "replica-secret")],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let v = get(ctl.addr).await.1;
        if phase_step(&v) == ("paused", Some("step"), 1) {
            break v;
        }
        assert!(Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(v["fleet"]["in_sync"], true, "{v:#}");
    let (s, l) = api_as(
        admin,
        Method::GET,
        "/api/v1/routes/app/rollout-layer",
        Some("replica-secret"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(l["effective_weights"]["canary"], 25.0, "{l}");
    let (s, synced) = api_as(admin, Method::GET, "/api/v1/synced", Some("replica-secret")).await;
    assert_eq!(
        (s, synced["synced"].as_bool()),
        (StatusCode::OK, Some(true))
    );

    // The controller carries no traffic: setting its own weights is refused, with the reason.
    let (s, body) = call(
        Method::PUT,
        &format!("http://{}/api/v1/routes/app/weights", ctl.addr),
        Some(br#"{"canary": 50}"#.to_vec()),
        Some("controller-secret"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(String::from_utf8_lossy(&body).contains("fleet controller"));

    // `canaryd rollout get` shows where the fleet stands.
    let out = canaryd()
        .args([
            "rollout",
            "get",
            "app",
            "--admin",
            &format!("http://{}", ctl.addr),
        ])
        .env("CANARYD_ADMIN_TOKEN", "controller-secret")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fleet:    1/1 replicas verified revision"),
        "{text}"
    );
}
