//! The built binary: `check`, `route`, `demo` and `rollout` as a user runs them.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;
use support::*;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_the_shipped_example_with_a_summary() {
    let out = canaryd()
        .args([
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/canaryd.yaml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config OK"), "{stdout}");
    assert!(
        stdout.contains("route shop: host shop.example.com path_prefix /"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stable        90.00%  127.0.0.1:9001 (primary)"),
        "{stdout}"
    );
    assert!(stdout.contains("canary        10.00%"), "{stdout}");
    assert!(stdout.contains("canary         2.50%"), "{stdout}");
    assert!(
        stdout.contains("sticky: cookie session, assign cookie canaryd_uid"),
        "{stdout}"
    );
}

#[test]
fn check_rejects_with_every_error_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/canaryd.yaml"))
        .unwrap()
        .replacen("weight: 10", "weight: 101", 1)
        .replacen("weight: 2.5", "weight: 2.555", 1)
        .replacen(
            "{ to: canary, when: { cookie",
            "{ to: canari, when: { cookie",
            1,
        )
        .replacen("\"^(beta|staff)$\"", "\"^(beta\"", 1)
        .replacen("\"127.0.0.1:9103\"", "\"127.0.0.1\"", 1);
    let path = write(&dir, "bad.yaml", &text);
    let out = canaryd().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "5 error(s)",
        "routes[0].versions.canary.weight: must be a percentage from 0 to 100",
        "routes[0].rules[2].to: unknown version `canari`",
        "routes[0].rules[3].when.header.matches: `^(beta` is not a valid regular expression",
        "routes[1].versions.canary.weight: 2.555 has more than two decimals",
        "routes[1].versions.canary.endpoints[0]: `127.0.0.1` has no port",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    // Weights that are each valid but sum over 100.
    let good = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/canaryd.yaml"))
        .unwrap();
    let over = good.replacen(
        "      canary: { endpoints: [\"127.0.0.1:9103\"], weight: 2.5 }\n",
        "      canary: { endpoints: [\"127.0.0.1:9103\"], weight: 2.5 }\n      beta: { endpoints: [\"127.0.0.1:9104\"], weight: 98 }\n",
        1,
    );
    assert_ne!(over, good);
    let path = write(&dir, "sum.yaml", &over);
    let out = canaryd().arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("routes[1].versions: weights of the non-primary versions sum to 100.50%"),
        "{stderr}"
    );
}

#[test]
fn check_reports_unreadable_and_unparsable_files() {
    let out = canaryd()
        .args(["check", "/nonexistent/canaryd.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "typo.yaml",
        "listeners: [{ address: 127.0.0.1:1 }]\nroutes:\n  - name: a\n    versoins: {}\n",
    );
    let out = canaryd().arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("unknown field `versoins`") && stderr.contains("line 4"),
        "{stderr}"
    );
}

#[test]
fn check_summarises_a_rollout_and_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "rollout.yaml",
        r#"
listeners: [{ address: 127.0.0.1:1 }]
proxy: { state_file: /var/lib/canaryd/state.json }
routes:
  - name: shop
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"], weight: 0 }
    rollout:
      id: shop-v2
      steps: { step_weight: 10, max_weight: 50, interval: 1m }
      background_analysis: slo
      analysis:
        slo: { checks: [{ success_rate: { min: 99 } }] }
"#,
    );
    let out = canaryd().arg("check").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("state_file: /var/lib/canaryd/state.json"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  rollout shop-v2: 10 steps, canary canary"),
        "{stdout}"
    );
}

fn route(args: &[&str]) -> (bool, String) {
    let out = canaryd()
        .args([
            "route",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/canaryd.yaml"),
        ])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn route_explains_rules_sticky_and_draws() {
    let (ok, out) = route(&[
        "--url",
        "http://shop.example.com/cart",
        "--header",
        "X-Canary: always",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("route:   shop"), "{out}");
    assert!(out.contains("version: canary"), "{out}");
    assert!(
        out.contains("rule 0 matched: header x-canary equals \"always\" → canary"),
        "{out}"
    );

    let (ok, out) = route(&[
        "--url",
        "http://shop.example.com/",
        "--cookie",
        "session=alice",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("sticky: key from cookie session; bucket "),
        "{out}"
    );
    assert!(
        out.contains("canary 10.00% (buckets 0-999), stable 90.00% (buckets 1000-9999)"),
        "{out}"
    );
    // Deterministic: the same key gives the same answer every time.
    assert_eq!(
        route(&[
            "--url",
            "http://shop.example.com/",
            "--cookie",
            "session=alice"
        ])
        .1,
        out
    );

    let (ok, out) = route(&["--url", "http://shop.example.com/"]);
    assert!(
        ok && out.contains("a new id is assigned in that cookie"),
        "{out}"
    );

    let (ok, out) = route(&["--url", "http://eu.example.com/api/x"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("route:   api") && out.contains("weight draw"),
        "{out}"
    );

    let (ok, out) = route(&["--url", "http://other.org/"]);
    assert!(
        !ok && out.contains("no route matches host other.org"),
        "{out}"
    );

    let (ok, out) = route(&["--url", "http://shop.example.com/", "--header", "nocolon"]);
    assert!(
        !ok && out.contains("--header: `nocolon` is not name:value"),
        "{out}"
    );
}

#[tokio::test]
async fn demo_serves_a_split_and_the_header_rule() {
    let mut child = canaryd()
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut proxy, mut canary) = (None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("proxy on http://") {
                proxy = Some(rest.split_whitespace().next().unwrap().to_string());
            }
            if let Some(rest) = line.split("canary backend on ").nth(1) {
                canary = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("  curl -N http://") {
                let admin = rest.split('/').next().unwrap().to_string();
                let _ = tx.send((proxy.clone().unwrap(), canary.clone().unwrap(), admin));
            }
        }
    });
    let (addr, canary_backend, admin) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("demo printed its addresses");
    let c = TestClient::http1();
    let url = format!("http://{addr}/");
    let mut canary = 0;
    for _ in 0..2000 {
        let r = c.get(&url, &[]).await;
        assert_eq!(r.status, 200);
        canary += usize::from(r.body == "canary\n");
    }
    // 10% of 2000: mean 200, sd 13.4. ±4.5 sd never passes a doubled or halved weight.
    assert!((140..=260).contains(&canary), "{canary}");
    assert_eq!(
        c.get(&url, &[("x-canary", "always")]).await.body,
        "canary\n"
    );
    assert_eq!(c.get(&url, &[("x-canary", "never")]).await.body, "stable\n");
    // The demo's rollout is live: break the canary with the backend's fault knob and its
    // background analysis rolls it back (built-in traffic, 5 s measurements).
    let rollout_url = format!("http://{admin}/api/v1/routes/demo/rollout");
    let v: serde_json::Value = serde_json::from_str(&c.get(&rollout_url, &[]).await.body).unwrap();
    assert_eq!(v["id"], "demo-v2");
    assert_eq!(v["set_weight"].as_f64(), Some(10.0), "{v}");
    let knob = http::Request::put(format!("http://{canary_backend}/fault?error_rate=1"))
        .body(full(""))
        .unwrap();
    assert_eq!(c.send(knob).await.status, 200);
    let mut phase = String::new();
    for _ in 0..120 {
        let v: serde_json::Value =
            serde_json::from_str(&c.get(&rollout_url, &[]).await.body).unwrap();
        phase = v["phase"].as_str().unwrap_or_default().to_string();
        if phase == "aborted" {
            assert_eq!(v["set_weight"].as_f64(), Some(0.0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        phase, "aborted",
        "the demo's broken canary was not rolled back"
    );
    for _ in 0..50 {
        assert_eq!(c.get(&url, &[]).await.body, "stable\n");
    }
    // Stopped as a user stops it (Ctrl-C, SIGTERM), the demo leaves no state behind.
    let state_dir = std::env::temp_dir().join(format!("canaryd-demo-{}", child.id()));
    assert!(
        state_dir.exists(),
        "{} missing while running",
        state_dir.display()
    );
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exited with {status}");
    assert!(
        !state_dir.exists(),
        "the demo left {} behind",
        state_dir.display()
    );
}

#[test]
fn route_takes_the_client_address_into_account() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        r#"listeners: [{ address: "127.0.0.1:8080" }]
proxy: { trusted_hops: 1 }
routes:
  - name: app
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"] }
    rules:
      - { name: office, to: canary, when: { client_ip: [10.0.0.0/8] } }
"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = canaryd()
            .arg("route")
            .arg(&path)
            .args(["--url", "http://x/"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Direct peer in the network: no XFF, so the peer is the client.
    let out = run(&["--client-ip", "10.1.2.3"]);
    assert!(out.contains("version: canary"), "{out}");
    assert!(out.contains("client_ip in [10.0.0.0/8]"), "{out}");
    // Behind one trusted proxy: the rightmost XFF entry decides, not what the client wrote.
    let out = run(&[
        "--client-ip",
        "192.0.2.1",
        "-H",
        "x-forwarded-for: 10.9.9.9, 192.0.2.50",
    ]);
    assert!(out.contains("version: stable"), "{out}");
    let out = run(&[
        "--client-ip",
        "192.0.2.1",
        "-H",
        "x-forwarded-for: 10.9.9.9",
    ]);
    assert!(out.contains("version: canary"), "{out}");
    // Without an address, client_ip rules cannot match.
    assert!(run(&[]).contains("version: stable"));
}

/// A proxy with an admin listener and a state file whose route `app` has a rollout that waits
/// at `pause: {}` (step 1 of 3) from the start; route `plain` has none.
fn rollout_proxy(state: &tempfile::TempDir) -> ProxyProcess {
    ProxyProcess::start(&format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
proxy: {{ state_file: "{}" }}
routes:
  - name: app
    versions:
      stable: {{ endpoints: ["127.0.0.1:9001"] }}
      canary: {{ endpoints: ["127.0.0.1:9002"], weight: 0 }}
    rollout: {{ id: x, steps: [ {{set_weight: 20}}, {{pause: {{}}}}, {{set_weight: 60}}] }}
  - name: plain
    match: {{ path_prefix: /plain }}
    versions:
      stable: {{ endpoints: ["127.0.0.1:9001"] }}
"#,
        state.path().join("s.json").display()
    ))
}

/// `canaryd rollout ARGS --admin <the proxy's admin>`: exit code, stdout, stderr.
fn rollout(proxy: &ProxyProcess, args: &[&str]) -> (Option<i32>, String, String) {
    let out = canaryd()
        .arg("rollout")
        .args(args)
        .args(["--admin", &format!("http://{}", proxy.admin.unwrap())])
        .env_remove("CANARYD_ADMIN")
        .env_remove("CANARYD_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rollout_get_refuses_a_verb_that_does_not_apply_and_status_waits_for_success() {
    let state = tempfile::tempdir().unwrap();
    let proxy = rollout_proxy(&state);
    let (code, out, err) = rollout(&proxy, &["get", "app"]);
    assert_eq!(code, Some(0), "{out}{err}");
    for needle in [
        "route app: rollout x (canary canary, primary stable)",
        "phase:    paused (step): pause step: waits until promoted",
        "step:     1/3",
        "      0  set_weight 20%",
        "  ->  1  pause until promoted",
        "      2  set_weight 60%",
        "weight:   set 20%",
        "pause:    until promoted (canaryd rollout promote app)",
        "progressing -> paused (step) at step 1 (by engine)",
        "verbs:    promote, abort, resume",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let (code, out, _) = rollout(&proxy, &["get", "app", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["phase"].as_str(), v["step"].as_u64()),
        (Some("paused"), Some(1))
    );

    // A verb that does not apply: exit 1, one line naming the verbs that do.
    let (code, out, err) = rollout(&proxy, &["pause", "app"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("`pause` does not apply while the rollout is paused (step)")
            && err.contains("promote, abort, resume"),
        "{err}"
    );

    let (code, out, err) = rollout(&proxy, &["promote", "app", "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("phase:    succeeded (promoted)"), "{out}");
    assert!(out.contains("step:     3/3 (every step done)"), "{out}");
    let (code, out, err) = rollout(&proxy, &["status", "app", "--wait", "--timeout", "20s"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("rollout x of route app succeeded"), "{out}");
}

#[test]
fn rollout_status_wait_exits_2_on_timeout_and_1_when_aborted_while_it_waits() {
    let state = tempfile::tempdir().unwrap();
    let proxy = rollout_proxy(&state);
    let (code, out, err) = rollout(&proxy, &["status", "app"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "paused (step) at step 1/3: pause step: waits until promoted\n"
    );
    // Waiting at `pause: {}`: nothing moves, the timeout decides.
    let (code, out, err) = rollout(&proxy, &["status", "app", "--wait", "--timeout", "1s"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("timed out after 1s: rollout x is still paused (step) at step 1/3"),
        "{err}"
    );

    // Errors: one line that names the problem, exit 1.
    for (args, needle) in [
        (&["get", "nope"][..], "not found: no route named `nope`"),
        (
            &["get", "plain"][..],
            "not found: route `plain` has no rollout",
        ),
        (
            &["resume", "app", "--step", "9"][..],
            "step 9 does not exist",
        ),
    ] {
        let (code, out, err) = rollout(&proxy, args);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(
            err.contains(needle) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    let out = canaryd()
        .args(["rollout", "get", "app", "--admin"])
        .arg(closed_port().to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot reach the admin API at http://127.0.0.1:") && err.contains("refused"),
        "{err}"
    );

    // Aborted while `status --wait` follows it: the change is printed as it happens, exit 1.
    let mut wait = canaryd()
        .args(["rollout", "status", "app", "--wait", "--timeout", "30s"])
        .env("CANARYD_ADMIN", format!("{}", proxy.admin.unwrap()))
        .env_remove("CANARYD_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(wait.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.ends_with("paused (step) at step 1/3: pause step: waits until promoted"),
        "{first}"
    );
    let (code, out, err) = rollout(&proxy, &["abort", "app"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("phase:    aborted (aborted_by_operator)"),
        "{out}"
    );
    assert!(out.contains("weight:   set 0%"), "{out}");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert_eq!(wait.wait().unwrap().code(), Some(1), "{rest:?}");
    assert!(
        rest[0].ends_with(
            "aborted (aborted_by_operator) at step 1/3: aborted by an operator: the canary is at 0 (by api)"
        ),
        "{rest:?}"
    );
    assert!(
        rest.last()
            .unwrap()
            .contains("rollout x of route app was aborted"),
        "{rest:?}"
    );
    // Already aborted: exit 1 at once.
    let (code, _, _) = rollout(&proxy, &["status", "app", "--wait", "--timeout", "20s"]);
    assert_eq!(code, Some(1));
}

#[test]
fn rollout_plan_prints_the_timeline_and_the_rollback_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "plan.yaml",
        r#"
listeners: [{ address: "127.0.0.1:0" }]
proxy: { state_file: /var/lib/canaryd/state.json }
routes:
  - name: shop
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"], weight: 0 }
    rollout:
      id: shop-v2
      background_analysis: slo
      steps:
        - set_weight: 10
        - pause: 1m
        - set_header_route: { name: beta, when: { header: { name: x-beta, equals: "1" } } }
        - analysis: slo
        - set_weight: 50
        - pause: {}
        - set_weight: 80
        - pause: 30s
      analysis:
        slo:
          interval: 30s
          initial_delay: 30s
          count: 3
          failure_limit: 1
          checks:
            - success_rate: { min: 99 }
            - latency_p99: { max: 500ms, critical: true }
"#,
    );
    let out = canaryd()
        .args(["rollout", "plan"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "route shop: rollout shop-v2, canary canary (primary stable)",
        "     0  0s             set_weight 10%",
        "     1  0s             pause 1m",
        "     2  1m             set_header_route beta: header x-beta equals \"1\" -> canary",
        "     3  1m             analysis slo: 1m 30s to pass (3 measurements: initial_delay 30s + 2 x interval 30s)",
        "     4  2m 30s         set_weight 50%",
        "     5  2m 30s         pause until promoted",
        "     6  promote+0s     set_weight 80%",
        "  done  promote+30s    promoted: canary takes 100%",
        "background analysis: gate slo",
        "- success_rate: at least 99%",
        "- latency_p99: at most 500ms",
        "[critical: aborts at the first failure]",
        "worst-case rollback: 1m 30s = initial_delay 30s + (failure_limit 1 + 1) x interval 30s",
        "worst-case rollback on a critical check: 1m = initial_delay 30s + interval 30s",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // An invalid file: its errors, exit 1.
    let bad = write(&dir, "bad.yaml", "listeners: []\nroutes: nope\n");
    let out = canaryd()
        .args(["rollout", "plan"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error(s)"));
}

/// A fleet controller's file: `check` accepts it (no listeners, versions as names) and says
/// what it drives; `run` refuses it, naming the problem.
#[test]
fn a_controller_file_is_checked_and_run_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.yaml");
    std::fs::write(
        &path,
        "controller:\n  targets: [\"http://127.0.0.1:9901\"]\n  state_file: /tmp/s.json\nroutes:\n  - name: shop\n    versions: { stable: {}, canary: {} }\n    rollout: { id: shop-v2, steps: [ { set_weight: 10 } ] }\n",
    )
    .unwrap();
    let out = canaryd().arg("check").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("fleet controller: targets http://127.0.0.1:9901/"),
        "{stdout}"
    );
    let out = canaryd().args(["run", "-c"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fleet controller's file"), "{stderr}");
    assert!(stderr.contains("canaryd controller --config"), "{stderr}");
    // And the controller refuses a replica's file, naming the missing section.
    let replica = dir.path().join("replica.yaml");
    std::fs::write(
        &replica,
        "listeners: [{ address: \"127.0.0.1:0\" }]\nroutes:\n  - name: shop\n    versions: { stable: { endpoints: [\"127.0.0.1:9\"] } }\n",
    )
    .unwrap();
    let out = canaryd()
        .args(["controller", "-c"])
        .arg(&replica)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a `controller:` section"), "{stderr}");
}
