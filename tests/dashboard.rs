//! The dashboard: `GET /api/v1/routes/{r}/series` against the traffic actually sent, the
//! `/ui` shell's access rules and headers, and the page itself driven in real headless
//! Chromium (Debian's `chromium` + playwright-core from npm, both installed by .ci/run; the
//! browser test fails under CI without them and says it skipped elsewhere).

mod support;

use http::StatusCode;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

const TOKEN: &str = "ui-secret";

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

#[tokio::test]
async fn the_shell_is_open_the_data_is_not_and_every_answer_has_a_strict_csp() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let yaml = split_yaml(
        &stable,
        &canary,
        "10",
        &format!("admin: {{ address: \"127.0.0.1:0\", token: {TOKEN} }}\n"),
    );
    let proxy = Proxy::start(&yaml).await;
    let csp = |r: &Resp| {
        r.header("content-security-policy")
            .unwrap_or("")
            .to_string()
    };

    let root = get(&proxy.admin_url("/"), &[]).await;
    assert_eq!(root.status, StatusCode::FOUND);
    assert_eq!(root.header("location"), Some("/ui"));

    let page = get(&proxy.admin_url("/ui"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.contains("/ui/app.js"));
    // No inline script anywhere in the shell: every <script> has a src.
    for tag in page.body.split("<script").skip(1) {
        assert!(
            tag.trim_start().starts_with("src=\"/ui/"),
            "inline script: {tag}"
        );
    }
    let policy = csp(&page);
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(part), "{policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));

    for asset in [
        "/ui/app.js",
        "/ui/app.css",
        "/ui/vendor/uPlot.iife.min.js",
        "/ui/vendor/uPlot.min.css",
    ] {
        let r = get(&proxy.admin_url(asset), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{asset}");
        assert!(!r.body.is_empty());
        assert_eq!(csp(&r), policy, "{asset}");
        let tag = r.header("etag").unwrap().to_string();
        let again = get(&proxy.admin_url(asset), &[("if-none-match", &tag)]).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{asset}");
    }

    // The data behind it follows the API's rules: with a token, reads need it too.
    for path in [
        "/api/v1/routes/app/series",
        "/api/v1/routes",
        "/api/v1/events",
        "/api/v1/reload",
    ] {
        let r = get(&proxy.admin_url(path), &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(csp(&r), policy, "{path}");
    }
    let auth = format!("Bearer {TOKEN}");
    let r = get(
        &proxy.admin_url("/api/v1/routes/app/series"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(csp(&r), policy);
    // Cookies are not a credential.
    let r = get(
        &proxy.admin_url("/api/v1/routes"),
        &[("cookie", &format!("token={TOKEN}; authorization={auth}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    proxy.stop().await;
}

/// Where playwright-core is installed (`npm ci --prefix tests/ui`), and Chromium.
fn browser_tools() -> Option<(std::path::PathBuf, String)> {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let have = ui.join("node_modules/playwright-core").is_dir() && Path::new(&chromium).exists();
    if have {
        return Some((ui, chromium));
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI must run the browser test: install chromium (apt) and `npm ci --prefix tests/ui`"
        );
    }
    eprintln!(
        "SKIPPED: chromium or tests/ui/node_modules missing (apt-get install chromium; npm ci --prefix tests/ui); CI runs this test"
    );
    None
}

#[test]
fn the_dashboard_shows_the_split_and_its_buttons_drive_the_rollout_in_chromium() {
    let Some((ui, chromium)) = browser_tools() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stable, canary) =
        rt.block_on(async { (Origin::start("stable").await, Origin::start("canary").await) });
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0", token: {TOKEN} }}
proxy: {{ version_header: true, state_file: "{state}" }}
routes:
  - name: web
    match: {{ path_prefix: /web }}
    versions:
      stable: {{ endpoints: ["{s}"] }}
      canary: {{ endpoints: ["{c}"], weight: 0 }}
    rollout:
      id: web-v2
      canary: canary
      steps:
        - set_weight: 40
        - pause: {{}}
        - set_weight: 60
        - analysis: slo
      analysis:
        slo:
          initial_delay: 10m
          interval: 1m
          checks:
            - success_rate: {{ min: 90 }}
  - name: plain
    match: {{ path_prefix: /plain }}
    versions:
      stable: {{ endpoints: ["{s}"] }}
      canary: {{ endpoints: ["{c}"], weight: 10 }}
"#,
        s = stable.addr,
        c = canary.addr,
        state = dir.path().join("state.json").display(),
    );
    let proxy = ProxyProcess::start(&yaml);
    // A reload the proxy refuses (and keeps serving): the config panel must show its field.
    std::fs::write(
        &proxy.config_path,
        yaml.replace("weight: 10 }", "weight: 150 }"),
    )
    .unwrap();
    let refused = rt.block_on(async {
        let req = http::Request::post(format!("http://{}/api/v1/reload", proxy.admin.unwrap()))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(full(""))
            .unwrap();
        TestClient::http1().send(req).await
    });
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let field = "routes[1].versions.canary.weight";
    assert!(refused.body.contains(field), "{}", refused.body);
    // Traffic on both routes for as long as the browser runs (bounded: at most 6,000).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, sent, addr) = (stop.clone(), sent.clone(), proxy.addr);
        rt.spawn(async move {
            let client = TestClient::http1();
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 6000 {
                for path in ["/web/a", "/plain/b"] {
                    let _ = client.try_get(&format!("http://{addr}{path}")).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let run = std::process::Command::new("node")
        .arg(ui.join("dashboard.mjs"))
        .args(["--admin", &format!("http://{}", proxy.admin.unwrap())])
        .args([
            "--token",
            TOKEN,
            "--rollout-route",
            "web",
            "--plain-route",
            "plain",
        ])
        .arg("--out")
        .arg(&out)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    stop.store(true, Ordering::Relaxed);
    rt.block_on(traffic).unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "browser run failed:\n{stdout}\n{stderr}"
    );
    eprintln!(
        "screenshots: {}.png, -aborted.png, -mobile.png",
        out.display()
    );

    // What the clicks did, read through the API by this client too.
    rt.block_on(async {
        let admin = proxy.admin.unwrap();
        let auth = format!("Bearer {TOKEN}");
        let r = get(
            &format!("http://{admin}/api/v1/routes/web/rollout"),
            &[("authorization", &auth)],
        )
        .await;
        let v = json(&r);
        assert_eq!(v["phase"], "aborted", "{v}");
        assert_eq!(v["set_weight"], 0.0);
        let by: Vec<&str> = v["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["to"].as_str().unwrap())
            .collect();
        assert!(
            by.ends_with(&["paused", "progressing", "aborted"]),
            "{by:?}"
        );
        let r = get(
            &format!("http://{admin}/api/v1/routes/plain"),
            &[("authorization", &auth)],
        )
        .await;
        let canary = json(&r)["versions"][1].clone();
        assert_eq!(canary["weight"], 35.0, "{canary}");
        assert_eq!(canary["weight_source"], "override");
    });
}

/// Every PromQL expression of a Grafana dashboard (panels nested in rows included), and the
/// template variables' queries.
fn dashboard_queries(d: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(d, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_canaryd_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/canaryd.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    assert_eq!(dashboard["uid"], "canaryd");
    // Every panel reads the dashboard's datasource variable, so it imports anywhere.
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(i) = panels.iter().position(|p| {
        p.get("panels")
            .is_some_and(|c| c.as_array().is_some_and(|c| !c.is_empty()))
    }) {
        let row = panels.remove(i);
        panels.extend(row["panels"].as_array().unwrap());
    }
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            !p["targets"].as_array().unwrap().is_empty(),
            "{}",
            p["title"]
        );
    }

    // A canaryd exporting every family the dashboard may use: a rollout, a mirror, traffic
    // with a 5xx and an upstream error.
    let dir = tempfile::tempdir().unwrap();
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let yaml = split_yaml(
        &stable,
        &canary,
        "0",
        &format!(
            r#"    mirror: {{ to: canary, percent: 100 }}
    rollout:
      id: v2
      steps: [ {{ set_weight: 10 }}, {{ pause: {{}} }} ]
      background_analysis: slo
      analysis: {{ slo: {{ interval: 1h, checks: [ {{ success_rate: {{ min: 90 }} }} ] }} }}
  - name: dead
    match: {{ path_prefix: /dead }}
    versions:
      stable: {{ endpoints: ["{}"] }}
admin: {{ address: "127.0.0.1:0" }}
"#,
            closed_port()
        ),
    )
    .replace(
        "proxy: { version_header: true }",
        &format!(
            "proxy: {{ version_header: true, state_file: \"{}\" }}",
            dir.path().join("s.json").display()
        ),
    );
    let proxy = Proxy::start(&yaml).await;
    let client = TestClient::http1();
    for path in ["/", "/status/500", "/dead/x"] {
        client.get(&proxy.url(path), &[]).await;
    }
    // Copies to the shadow and their comparison are recorded after the primary answered.
    let mut exposition = String::new();
    for _ in 0..100 {
        exposition = get(&proxy.admin_url("/metrics"), &[]).await.body;
        if exposition.contains("canaryd_mirror_requests_total{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Names a query may use: each family's samples (`_total` for counters, `_bucket`,
    // `_sum`, `_count` for histograms), with the labels seen on them.
    let mut names: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for line in exposition.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            let samples: Vec<String> = match kind {
                "counter" => vec![format!("{name}_total")],
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect(),
                _ => vec![name.to_string()],
            };
            for s in samples {
                names.entry(s).or_default();
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            let labels = names.entry(line[..name_end].to_string()).or_default();
            if let Some(rest) = line[name_end..].strip_prefix('{') {
                for pair in rest[..rest.find('}').unwrap()].split(',') {
                    labels.insert(pair.split('=').next().unwrap().to_string());
                }
            }
        }
    }
    let metric = regex::Regex::new(r"\b(canaryd_[a-z0-9_]+)(\{([^}]*)\})?").unwrap();
    let label = regex::Regex::new(r"([a-z_]+)\s*(=~|!~|!=|=)").unwrap();
    let queries = dashboard_queries(&dashboard);
    let mut used = std::collections::BTreeSet::new();
    for q in &queries {
        assert!(
            !q.contains("canaryd:"),
            "recording rules are not canaryd's: {q}"
        );
        for m in metric.captures_iter(q) {
            let name = &m[1];
            let labels = names
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not exported by canaryd (query: {q})"));
            used.insert(name.to_string());
            for l in m
                .get(3)
                .map(|s| s.as_str())
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.trim().is_empty())
            {
                let l = &label
                    .captures(l)
                    .unwrap_or_else(|| panic!("matcher {l} in {q}"))[1];
                // Prometheus adds instance and job when it scrapes.
                if !["instance", "job"].contains(&l) {
                    assert!(
                        labels.contains(l),
                        "{name} has no label {l} (query: {q}; it has {labels:?})"
                    );
                }
            }
        }
    }
    for needed in [
        "canaryd_requests_total",
        "canaryd_request_duration_seconds_bucket",
        "canaryd_route_weight",
        "canaryd_rollout_phase",
        "canaryd_rollout_weight",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    proxy.stop().await;
}
