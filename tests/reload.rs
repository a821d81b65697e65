//! Hot reload and runtime control through real HTTP: each real-world write pattern is picked
//! up, bad files keep the running config, runtime overrides work and survive reloads, and
//! 200 reloads under continuous load lose no request.

mod support;

use http::StatusCode;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use support::*;

fn config(stable: &Origin, canary: &Origin, canary_weight: &str, admin: bool) -> String {
    let admin = if admin {
        "admin: { address: \"127.0.0.1:0\" }\n"
    } else {
        ""
    };
    format!(
        r#"listeners: [{{ address: "127.0.0.1:0" }}]
{admin}proxy: {{ version_header: true }}
routes:
  - name: app
    versions:
      stable: {{ endpoints: ["{}"] }}
      canary: {{ endpoints: ["{}"], weight: {canary_weight} }}
"#,
        stable.addr, canary.addr
    )
}

/// Editor style: write a temp file next to the target, then rename over it.
fn write_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Kubernetes ConfigMap layout: `dir/canaryd.yaml → ..data/canaryd.yaml`, `..data → ..ts_N`.
struct ConfigMapDir {
    dir: PathBuf,
    n: usize,
}

impl ConfigMapDir {
    fn new(dir: &Path, text: &str) -> ConfigMapDir {
        let mut cm = ConfigMapDir {
            dir: dir.to_path_buf(),
            n: 0,
        };
        let ts = cm.write_version(text);
        std::os::unix::fs::symlink(&ts, dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/canaryd.yaml", dir.join("canaryd.yaml")).unwrap();
        cm
    }

    fn write_version(&mut self, text: &str) -> String {
        self.n += 1;
        let ts = format!("..2026_11_23_{:06}", self.n);
        std::fs::create_dir(self.dir.join(&ts)).unwrap();
        std::fs::write(self.dir.join(&ts).join("canaryd.yaml"), text).unwrap();
        ts
    }

    /// The kubelet's atomic update: new timestamped dir, `..data_tmp` symlink, rename over `..data`.
    fn update(&mut self, text: &str) {
        let old = std::fs::read_link(self.dir.join("..data")).unwrap();
        let ts = self.write_version(text);
        std::os::unix::fs::symlink(&ts, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(self.dir.join(old)).unwrap();
    }

    fn path(&self) -> PathBuf {
        self.dir.join("canaryd.yaml")
    }
}

async fn served_by(proxy: &Proxy, n: usize) -> Vec<String> {
    let c = TestClient::http1();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.get(&proxy.url("/"), &[]).await.body);
        // The proxy returns its upstream connection to the pool just after the response ends;
        // without a pause the next request can race it and open a second connection, which
        // `upstream_pool_survives_reloads` would mistake for a dropped pool.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    out
}

#[tokio::test]
async fn in_place_write_is_picked_up() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, "0", false)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    assert!(served_by(&proxy, 10).await.iter().all(|b| b == "stable"));
    std::fs::write(&path, config(&stable, &canary, "100", false)).unwrap();
    proxy.wait_watched(2).await;
    assert!(served_by(&proxy, 10).await.iter().all(|b| b == "canary"));
}

#[tokio::test]
async fn rename_write_is_picked_up_repeatedly() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, "0", false)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    // A file watch would go silent after the first rename; the directory watch does not.
    for (i, w) in ["100", "0", "100"].iter().enumerate() {
        write_rename(&path, &config(&stable, &canary, w, false));
        proxy.wait_watched(i as u64 + 2).await;
        let want = if *w == "100" { "canary" } else { "stable" };
        assert!(served_by(&proxy, 5).await.iter().all(|b| b == want));
    }
}

#[tokio::test]
async fn kubernetes_configmap_symlink_swap_is_picked_up() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let mut cm = ConfigMapDir::new(dir.path(), &config(&stable, &canary, "0", false));
    let proxy = Proxy::start_file(&cm.path()).await;
    for (i, w) in ["100", "0"].iter().enumerate() {
        cm.update(&config(&stable, &canary, w, false));
        proxy.wait_watched(i as u64 + 2).await;
        let want = if *w == "100" { "canary" } else { "stable" };
        assert!(served_by(&proxy, 5).await.iter().all(|b| b == want));
    }
}

#[tokio::test]
async fn half_written_file_never_applies() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, "0", true)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    // First prove the watcher is live (on the current-thread test runtime it only starts
    // once this test awaits): a half file written before it existed would test nothing.
    write_rename(&path, &config(&stable, &canary, "1", true));
    proxy.wait_watched(2).await;
    // The new file has two routes; cut after the first it is still a valid config (one that
    // would route /other to 404), so only the guards stop it from applying.
    let second = format!(
        "  - name: other\n    match: {{ path_prefix: /other }}\n    versions: {{ v: {{ endpoints: [\"{}\"] }} }}\n",
        canary.addr
    );
    let full_text = format!("{}{second}", config(&stable, &canary, "100", true));
    let (head, tail) = full_text.split_at(full_text.find("  - name: other").unwrap());
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(head.as_bytes()).unwrap();
    f.flush().unwrap();
    // Far longer than the debounce, and longer than the watcher waits for a file that is
    // unreadable or changing: a writer holding the file open is waited for however long.
    let wait = canaryd::control::watch::UNSETTLED_MAX_WAIT + std::time::Duration::from_millis(500);
    tokio::time::sleep(wait).await;
    assert_eq!(proxy.generation(), 2, "half-written file was applied");
    f.write_all(tail.as_bytes()).unwrap();
    drop(f);
    proxy.wait_watched(3).await;
    let (_, status) = proxy.admin_call("GET", "/api/v1/reload", "").await;
    assert_eq!(status["reloads_success"], 2, "{status}");
    assert_eq!(status["reloads_failure"], 0, "{status}");
    let (_, routes) = proxy.admin_call("GET", "/api/v1/routes", "").await;
    assert_eq!(routes["routes"].as_array().unwrap().len(), 2, "{routes}");
}

#[tokio::test]
async fn invalid_file_keeps_the_running_config_and_counts_a_failure() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, "100", true)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    for (i, bad) in [
        config(&stable, &canary, "150", true),
        "routes: [ this is : not yaml".to_string(),
        config(&stable, &canary, "10", true).replace("canary:", "stable:"),
    ]
    .iter()
    .enumerate()
    {
        write_rename(&path, bad);
        let want = i as u64 + 1;
        let failures = || {
            let m = proxy.state.metrics.encode();
            m.contains(&format!(
                "canaryd_config_reloads_total{{result=\"failure\"}} {want}"
            ))
        };
        wait_for("failure counted", failures).await;
        assert_eq!(proxy.generation(), 1);
        assert!(served_by(&proxy, 5).await.iter().all(|b| b == "canary"));
    }
    let (_, status) = proxy.admin_call("GET", "/api/v1/reload", "").await;
    let err = &status["last_error"];
    assert_eq!(err["trigger"], "watch");
    assert_eq!(
        err["errors"][0]["field"], "routes[0].versions.stable",
        "{status}"
    );
    assert!(err["at"].as_str().unwrap().starts_with("20"), "{status}");
    // Fixing the file applies again and keeps the error history.
    write_rename(&path, &config(&stable, &canary, "0", true));
    proxy.wait_watched(2).await;
    assert!(served_by(&proxy, 5).await.iter().all(|b| b == "stable"));
    let metrics = proxy.state.metrics.encode();
    assert!(metrics.contains("canaryd_config_generation 2"), "{metrics}");
    assert!(metrics.contains("canaryd_config_reloads_total{result=\"success\"} 1"));
}

#[tokio::test]
async fn api_reload_reports_applied_and_failure() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, "0", true)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let (code, v) = proxy.admin_call("POST", "/api/v1/reload", "").await;
    assert_eq!((code, &v["result"]), (StatusCode::OK, &"unchanged".into()));
    write_rename(&path, &config(&stable, &canary, "100", true));
    let (code, v) = proxy.admin_call("POST", "/api/v1/reload", "").await;
    assert_eq!(code, StatusCode::OK);
    // The watcher may have applied it first; either way generation 2 is in force.
    assert!(
        v["result"] == "applied" || v["result"] == "unchanged",
        "{v}"
    );
    assert_eq!(v["generation"], 2);
    write_rename(&path, &config(&stable, &canary, "100.001", true));
    let (code, v) = proxy.admin_call("POST", "/api/v1/reload", "").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["errors"][0]["field"], "routes[0].versions.canary.weight");
    assert_eq!(v["generation"], 2);
    assert!(served_by(&proxy, 3).await.iter().all(|b| b == "canary"));
}

/// A proxy's file that gains a `controller:` section is not a proxy's config any more: the
/// reload is refused, naming the field, and the proxy keeps serving.
#[tokio::test]
async fn a_reload_cannot_turn_a_proxy_into_a_fleet_controller() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, "0", true)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let with_controller = format!(
        "controller: {{ targets: [\"http://127.0.0.1:9\"], state_file: {} }}\n{}",
        dir.path().join("s.json").display(),
        config(&stable, &canary, "100", true)
    );
    write_rename(&path, &with_controller);
    let (code, v) = proxy.admin_call("POST", "/api/v1/reload", "").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["errors"][0]["field"], "controller", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("canaryd controller")
    );
    assert!(served_by(&proxy, 3).await.iter().all(|b| b == "stable"));
}

#[tokio::test]
async fn api_reload_without_a_file_is_a_conflict() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&config(&stable, &canary, "0", true)).await;
    let (code, v) = proxy.admin_call("POST", "/api/v1/reload", "").await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
}

#[tokio::test]
async fn runtime_weights_and_rules_override_the_file_and_survive_reloads() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, "0", true)).unwrap();
    let proxy = Proxy::start_file(&path).await;

    let (code, v) = proxy
        .admin_call("PUT", "/api/v1/routes/app/weights", r#"{"canary": 100}"#)
        .await;
    assert_eq!((code, &v["generation"]), (StatusCode::OK, &2.into()), "{v}");
    assert!(served_by(&proxy, 5).await.iter().all(|b| b == "canary"));
    let (_, route) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(route["versions"][1]["weight"], 100.0);
    // The primary gets the rest under runtime overrides too (cargo-mutants found this path
    // unchecked): in the API and in the weight metric.
    assert_eq!(route["versions"][0]["weight"], 0.0);
    assert_eq!(
        proxy.metric_value("canaryd_route_weight{route=\"app\",version=\"stable\"}"),
        0.0
    );
    assert_eq!(route["versions"][1]["weight_source"], "override");
    assert_eq!(route["versions"][1]["file_weight"], 0.0);
    assert_eq!(route["generation"], 2);

    // A named header rule (what Argo Rollouts' setHeaderRoute needs) goes before file rules.
    let rule = r#"{"to": "stable", "when": {"header": {"name": "x-argo", "equals": "stable"}}}"#;
    let (code, _) = proxy
        .admin_call("PUT", "/api/v1/routes/app/rules/argo", rule)
        .await;
    assert_eq!(code, StatusCode::OK);
    let c = TestClient::http1();
    assert_eq!(
        c.get(&proxy.url("/"), &[("x-argo", "stable")]).await.body,
        "stable"
    );

    // A file reload keeps both overrides on top of the new file.
    write_rename(&path, &config(&stable, &canary, "5", true));
    proxy.wait_watched(4).await;
    assert!(served_by(&proxy, 5).await.iter().all(|b| b == "canary"));
    assert_eq!(
        c.get(&proxy.url("/"), &[("x-argo", "stable")]).await.body,
        "stable"
    );
    let (_, route) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(route["versions"][1]["file_weight"], 5.0);
    assert_eq!(route["rules"][0]["name"], "argo");
    assert_eq!(route["rules"][0]["source"], "override");

    // Remove the rule, then every override: back to the file's 5%.
    let (code, _) = proxy
        .admin_call("DELETE", "/api/v1/routes/app/rules/argo", "")
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        c.get(&proxy.url("/"), &[("x-argo", "stable")]).await.body,
        "canary"
    );
    let (code, _) = proxy
        .admin_call("DELETE", "/api/v1/routes/app/overrides", "")
        .await;
    assert_eq!(code, StatusCode::OK);
    let (_, route) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(route["versions"][1]["weight"], 5.0);
    assert_eq!(route["versions"][1]["weight_source"], "file");
    assert!(
        proxy
            .state
            .metrics
            .encode()
            .contains("canaryd_route_weight{route=\"app\",version=\"canary\"} 5.0")
    );
}

#[tokio::test]
async fn bad_admin_requests_change_nothing() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&config(&stable, &canary, "10", true)).await;
    let cases = [
        (
            "PUT",
            "/api/v1/routes/app/weights",
            "{\"canary\": 120}",
            400,
            "canary",
        ),
        (
            "PUT",
            "/api/v1/routes/app/weights",
            "{\"canary\": 1.234}",
            400,
            "canary",
        ),
        (
            "PUT",
            "/api/v1/routes/app/weights",
            "{\"nope\": 1}",
            400,
            "nope",
        ),
        (
            "PUT",
            "/api/v1/routes/app/weights",
            "{\"stable\": 50}",
            400,
            "stable",
        ),
        (
            "PUT",
            "/api/v1/routes/app/weights",
            "{\"canary\": \"5\"}",
            400,
            "canary",
        ),
        ("PUT", "/api/v1/routes/app/weights", "[1, 2]", 400, "body"),
        ("PUT", "/api/v1/routes/app/weights", "{}", 400, "body"),
        (
            "PUT",
            "/api/v1/routes/nope/weights",
            "{\"canary\": 1}",
            404,
            "",
        ),
        (
            "PUT",
            "/api/v1/routes/app/rules/r1",
            "{\"to\": \"ghost\", \"when\": {\"header\": {\"name\": \"a\", \"equals\": \"b\"}}}",
            400,
            "rule.to",
        ),
        (
            "PUT",
            "/api/v1/routes/app/rules/r1",
            "{\"to\": \"canary\", \"when\": {\"header\": {\"name\": \"a\", \"matches\": \"(\"}}}",
            400,
            "rule.when.header.matches",
        ),
        (
            "PUT",
            "/api/v1/routes/app/rules/r1",
            "{\"to\": \"canary\", \"when\": {}}",
            400,
            "rule.when",
        ),
        (
            "PUT",
            "/api/v1/routes/app/rules/Bad%20Name",
            "{\"to\": \"canary\", \"when\": {\"header\": {\"name\": \"a\", \"present\": true}}}",
            400,
            "rule.name",
        ),
        (
            "PUT",
            "/api/v1/routes/app/rules/r1",
            "{\"to\": \"canary\"}",
            400,
            "body",
        ),
        ("DELETE", "/api/v1/routes/app/rules/absent", "", 404, ""),
        ("DELETE", "/api/v1/routes/nope/overrides", "", 404, ""),
        ("GET", "/api/v1/routes/nope", "", 404, ""),
        ("PATCH", "/api/v1/routes/app/weights", "", 405, ""),
        ("GET", "/api/v1/nothing", "", 404, ""),
    ];
    for (method, path, body, status, field) in cases {
        let (code, v) = proxy.admin_call(method, path, body).await;
        assert_eq!(code.as_u16(), status, "{method} {path} {body}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        if !field.is_empty() {
            assert_eq!(
                v["errors"][0]["field"], field,
                "{method} {path} {body}: {v}"
            );
        }
    }
    assert_eq!(proxy.generation(), 1, "nothing was applied");
    let (_, route) = proxy.admin_call("GET", "/api/v1/routes/app", "").await;
    assert_eq!(route["versions"][1]["weight"], 10.0);
    assert_eq!(route["rules"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn weight_overrides_over_100_percent_are_rejected() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let yaml = config(&stable, &canary, "10", true).replace(
        "      canary:",
        &format!(
            "      beta: {{ endpoints: [\"{}\"], weight: 50 }}\n      canary:",
            canary.addr
        ),
    );
    let proxy = Proxy::start(&yaml).await;
    let (code, v) = proxy
        .admin_call("PUT", "/api/v1/routes/app/weights", r#"{"canary": 60}"#)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("sum to 110.00%"),
        "{v}"
    );
    let (code, _) = proxy
        .admin_call(
            "PUT",
            "/api/v1/routes/app/weights",
            r#"{"canary": 60, "beta": 40}"#,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn admin_token_protects_the_api_but_not_probes() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let yaml = config(&stable, &canary, "0", true).replace(
        "admin: { address: \"127.0.0.1:0\" }",
        "admin: { address: \"127.0.0.1:0\", token: s3cret }",
    );
    let proxy = Proxy::start(&yaml).await;
    let (code, _) = proxy.admin_call("GET", "/api/v1/routes", "").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = proxy
        .admin_call("PUT", "/api/v1/routes/app/weights", r#"{"canary": 100}"#)
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(proxy.generation(), 1);
    let c = TestClient::http1();
    let ok = c
        .get(
            &proxy.admin_url("/api/v1/routes"),
            &[("authorization", "Bearer s3cret")],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let wrong = c
        .get(
            &proxy.admin_url("/api/v1/routes"),
            &[("authorization", "Bearer s3creT")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        c.get(&proxy.admin_url("/healthz"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        c.get(&proxy.admin_url("/readyz"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        c.get(&proxy.admin_url("/metrics"), &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn non_loopback_admin_without_token_refuses_to_start() {
    let yaml = "listeners: [{ address: \"127.0.0.1:0\" }]\nadmin: { address: \"0.0.0.0:0\" }\nroutes:\n  - name: r\n    versions: { v: { endpoints: [\"127.0.0.1:1\"] } }\n";
    let config = canaryd::config::Config::from_yaml(yaml).unwrap();
    let err = canaryd::server::Server::bind(config)
        .await
        .err()
        .expect("must refuse");
    let msg = err.to_string();
    assert!(
        msg.contains("admin.address 0.0.0.0:0 is not loopback")
            && msg.contains("CANARYD_ADMIN_TOKEN"),
        "{msg}"
    );
}

#[tokio::test]
async fn listener_changes_need_a_restart_and_are_ignored() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, "0", true)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let moved = config(&stable, &canary, "100", true).replace(
        "listeners: [{ address: \"127.0.0.1:0\" }]",
        "listeners: [{ address: \"127.0.0.1:1\" }]",
    );
    write_rename(&path, &moved);
    proxy.wait_watched(2).await;
    // Routing changes apply; the listener stays where it was bound.
    assert!(served_by(&proxy, 3).await.iter().all(|b| b == "canary"));
    let (_, status) = proxy.admin_call("GET", "/api/v1/reload", "").await;
    assert!(
        status["needs_restart"]
            .as_str()
            .unwrap()
            .contains("restart"),
        "{status}"
    );

    // A restart-only proxy setting stays pinned to its running value through later reloads:
    // the second reload below still differs from what runs and must say so.
    let capped = |w: &str| {
        config(&stable, &canary, w, true).replace(
            "proxy: { version_header: true }",
            "proxy: { version_header: true, max_connections: 5 }",
        )
    };
    for (g, w) in [(3, "50"), (4, "0")] {
        write_rename(&path, &capped(w));
        proxy.wait_watched(g).await;
        let (_, status) = proxy.admin_call("GET", "/api/v1/reload", "").await;
        assert!(
            status["needs_restart"].is_string(),
            "generation {g}: {status}"
        );
        assert_eq!(
            proxy.state.snapshot().config.proxy.max_connections,
            canaryd::config::DEFAULT_MAX_CONNECTIONS,
            "the running cap is what the snapshot reports"
        );
    }
}

#[tokio::test]
async fn upstream_pool_survives_reloads() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, config(&stable, &canary, "0", false)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    served_by(&proxy, 3).await;
    assert_eq!(stable.connections(), 1);
    for (i, w) in ["1", "2", "3"].iter().enumerate() {
        write_rename(
            &path,
            &config(&stable, &canary, w, false).replace("weight: ", "weight: 0.0"),
        );
        proxy.wait_watched(i as u64 + 2).await;
    }
    // Weights changed three times (all ~0%); the pooled connection to stable is reused.
    let served = served_by(&proxy, 20).await;
    let to_stable = served.iter().filter(|b| *b == "stable").count();
    assert!(to_stable >= 19, "{served:?}");
    assert_eq!(
        stable.connections(),
        1,
        "a reload must not drop warm upstream connections"
    );
}

/// The load the soak test runs while reloading; every task stops when `stop` is set.
struct Load {
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn check(
    body: &str,
    status: StatusCode,
    failures: &std::sync::Mutex<Vec<String>>,
    ok: &AtomicUsize,
) {
    if status == StatusCode::OK && (body == "stable" || body == "canary" || body == "beta") {
        ok.fetch_add(1, Ordering::Relaxed);
    } else {
        failures.lock().unwrap().push(format!("{status} {body:?}"));
    }
}

fn start_load(proxy: &Proxy, stop: &Arc<AtomicBool>) -> Load {
    let ok = Arc::new(AtomicUsize::new(0));
    let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    // Keep-alive clients.
    for _ in 0..3 {
        let (url, stop, ok, failures) =
            (proxy.url("/"), stop.clone(), ok.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let c = TestClient::http1();
            while !stop.load(Ordering::Relaxed) {
                let r = c.get(&url, &[("cookie", "session=x")]).await;
                check(&r.body, r.status, &failures, &ok);
            }
        }));
    }
    // A new connection for every request.
    {
        let (url, stop, ok, failures) =
            (proxy.url("/"), stop.clone(), ok.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = TestClient::http1()
                    .get(&url, &[("connection", "close")])
                    .await;
                check(&r.body, r.status, &failures, &ok);
            }
        }));
    }
    // One HTTP/2 connection held open for the whole test.
    {
        let (url, stop, ok, failures) =
            (proxy.url("/"), stop.clone(), ok.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let c = TestClient::h2c();
            while !stop.load(Ordering::Relaxed) {
                let r = c.get(&url, &[]).await;
                check(&r.body, r.status, &failures, &ok);
            }
        }));
    }
    Load {
        ok,
        failures,
        tasks,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_reloads_under_load_lose_nothing() {
    let stable = Origin::start("stable").await;
    let canary = Origin::start("canary").await;
    let beta = Origin::start("beta").await;
    let ghost = Origin::start("ghost").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    let valid = |i: usize| {
        let mut c = config(&stable, &canary, &format!("{}", (i * 7) % 90), true);
        if i % 3 == 0 {
            c.push_str(&format!(
                "    rules:\n      - {{ to: canary, when: {{ header: {{ name: x-r{i}, present: true }} }} }}\n"
            ));
        }
        if i % 4 == 0 {
            c = c.replace(
                "      canary:",
                &format!(
                    "      beta: {{ endpoints: [\"{}\"], weight: 5 }}\n      canary:",
                    beta.addr
                ),
            );
        }
        c
    };
    // Each invalid config would send everything to `ghost` if any part of it were applied.
    let invalid = |i: usize| match i % 3 {
        0 => format!(
            "{}  - name: [broken yaml",
            valid(i).replace(&canary.addr.to_string(), &ghost.addr.to_string())
        ),
        1 => config(&stable, &ghost, "100", true).replace("weight: 100", "weight: 100.5"),
        _ => config(&stable, &ghost, "100", true).replace("name: app", "name: App"),
    };
    std::fs::write(&path, valid(1)).unwrap();
    let proxy = Proxy::start_file(&path).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&proxy, &stop);
    let long_stream = {
        let c = TestClient::http1();
        let url = proxy.url("/drip/400/10");
        tokio::spawn(async move { c.get_len(&url).await })
    };

    let mut expected_failures = 0u64;
    for i in 0..200 {
        let before = proxy.generation();
        if i % 5 == 4 {
            write_rename(&path, &invalid(i));
            expected_failures += 1;
            let want =
                format!("canaryd_config_reloads_total{{result=\"failure\"}} {expected_failures}");
            wait_for(&format!("reload failure at step {i}"), || {
                proxy.state.metrics.encode().contains(&want)
            })
            .await;
        } else {
            if i % 2 == 0 {
                std::fs::write(&path, valid(i + 2)).unwrap();
            } else {
                write_rename(&path, &valid(i + 2));
            }
            wait_for(&format!("generation {} at step {i}", before + 1), || {
                proxy.generation() > before
            })
            .await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load.tasks {
        t.await.unwrap();
    }
    let (status, len) = long_stream.await.unwrap();
    assert_eq!(
        (status.as_u16(), len),
        (200, 400 * 1024),
        "the long stream completed"
    );
    let failures = load.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ghost.seen().is_empty(), "a rejected config served traffic");
    let ok = load.ok.load(Ordering::Relaxed);
    assert!(ok > 200, "load ran: {ok} requests");
    assert_eq!(proxy.generation(), 161, "160 valid reloads applied");
    eprintln!("soak: {ok} requests, 200 reloads, 0 failures");
}

#[tokio::test]
async fn sighup_reloads_the_binary() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proc = ProxyProcess::start(&config(&stable, &canary, "0", true));
    let admin = proc.admin.expect("admin address");
    let status = || async move {
        let r = TestClient::http1()
            .get(&format!("http://{admin}/api/v1/reload"), &[])
            .await;
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
    };
    // A bad file is rejected once by the watcher...
    write_rename(&proc.config_path, &config(&stable, &canary, "101", true));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while status().await["reloads_failure"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never rejected the file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // ...and SIGHUP re-reads it on demand.
    let killed = std::process::Command::new("kill")
        .args(["-HUP", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    while status().await["reloads_failure"] != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let s = status().await;
    assert_eq!(s["last_error"]["trigger"], "signal", "{s}");
    assert_eq!(s["generation"], 1);
    let r = TestClient::http1()
        .get(&format!("http://{}/", proc.addr), &[])
        .await;
    assert_eq!(r.body, "stable", "still serving the old config");
}

#[tokio::test]
async fn readyz_turns_503_while_draining() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let proxy = Proxy::start(&config(&stable, &canary, "0", true)).await;
    let readyz = proxy.admin_url("/readyz");
    let c = TestClient::http1();
    assert_eq!(c.get(&readyz, &[]).await.status, StatusCode::OK);
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), proxy.url("/sleep/1500"));
        async move { c.get(&url, &[]).await }
    });
    wait_for("slow request at origin", || !stable.seen().is_empty()).await;
    let stopping = tokio::spawn(proxy.stop());
    // During the drain the admin stays up and reports not ready.
    let mut saw_503 = false;
    for _ in 0..500 {
        if c.get(&readyz, &[]).await.status == StatusCode::SERVICE_UNAVAILABLE {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(saw_503, "/readyz never reported draining");
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    stopping.await.unwrap();
}
