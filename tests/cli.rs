//! The built binary: `check`, `route` and `demo` as a user runs them.

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
    let _ = child.kill();
    let _ = child.wait();
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
