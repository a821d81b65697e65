//! A real Prometheus scrapes canaryd while traffic flows; the PromQL we ship (recording rules,
//! the alert, the Flagger MetricTemplates and the Argo AnalysisTemplate queries) is evaluated
//! through Prometheus's HTTP API and checked against what was sent.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, installed by .ci/run). Without
//! it the test fails under CI and says it skipped elsewhere.
//!
//! Rates go through Prometheus's `rate()` extrapolation, which scales each series by a
//! slightly different factor at the window edges; ratios are therefore checked to ±0.02
//! (the error measured here is under 0.002), single-series ratios exactly.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> Option<String> {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| "prometheus".to_string())
}

/// Percent-encode a query parameter value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    fn start(bin: &str, target: std::net::SocketAddr) -> Prometheus {
        Self::start_at(bin, target, closed_port())
    }

    /// Listening on `addr` (a port picked by `closed_port`, known before canaryd starts).
    fn start_at(bin: &str, target: std::net::SocketAddr, addr: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = Path::new(ROOT).join("deploy/prometheus/rules.yml");
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: canaryd\n    static_configs: [{{ targets: [\"{target}\"] }}]\n",
            rules.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            base: format!("http://{addr}"),
            _dir: dir,
        }
    }

    async fn query(&self, q: &str) -> Vec<(Value, f64)> {
        let url = format!("{}/api/v1/query?query={}", self.base, enc(q));
        let r = TestClient::http1().get(&url, &[]).await;
        let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        assert_eq!(v["status"], "success", "query {q} failed: {}", r.body);
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let val = s["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (s["metric"].clone(), val)
            })
            .collect()
    }

    /// One value of a query that returns a single series.
    async fn scalar(&self, q: &str) -> f64 {
        let r = self.query(q).await;
        assert_eq!(r.len(), 1, "expected one series from {q}, got {r:?}");
        r[0].1
    }

    /// Poll a query until `ok` holds for its results (bounded).
    async fn wait(&self, what: &str, q: &str, ok: impl Fn(&[(Value, f64)]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ready = TestClient::http1()
                .try_get(&format!("{}/-/ready", self.base))
                .await
                .is_some_and(|r| r.status == 200);
            if ready && ok(&self.query(q).await) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what} ({q})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every `query:` in a multi-document YAML file, in order.
fn queries(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
    let mut out = Vec::new();
    fn walk(v: &serde_yaml_ng::Value, out: &mut Vec<String>) {
        match v {
            serde_yaml_ng::Value::Mapping(m) => {
                for (k, v) in m {
                    if k.as_str() == Some("query") {
                        out.push(v.as_str().unwrap().to_string());
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_yaml_ng::Value::Sequence(s) => s.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc).unwrap();
        walk(&v, &mut out);
    }
    out
}

fn alert_expr(name: &str) -> String {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/rules.yml")).unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    for g in v["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            if r["alert"].as_str() == Some(name) {
                return r["expr"].as_str().unwrap().to_string();
            }
        }
    }
    panic!("no alert {name}");
}

#[track_caller]
fn near(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} ± {tol}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_promql_agrees_with_the_traffic_sent() {
    let Some(bin) = prometheus_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "prometheus is not installed; .ci/run must install the Debian package `prometheus`"
            );
        }
        eprintln!(
            "SKIPPED: prometheus is not installed (apt-get install prometheus); CI runs this test"
        );
        return;
    };
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let route = |name: &str| {
        format!(
            "  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    versions:\n      stable: {{ endpoints: [\"{}\"] }}\n      canary: {{ endpoints: [\"{}\"], weight: 0 }}\n    rules:\n      - {{ to: canary, when: {{ header: {{ name: x-canary, equals: always }} }} }}\n",
            stable.addr, canary.addr
        )
    };
    // Shaped like the route canaryd makes of rule 0 of Flagger's HTTPRoute `default/podinfo`
    // (docs/kubernetes.md): versions named after the Services.
    let podinfo = format!(
        "  - name: default-podinfo-0\n    match: {{ path_prefix: /podinfo }}\n    versions:\n      podinfo-primary: {{ endpoints: [\"{}\"] }}\n      podinfo-canary: {{ endpoints: [\"{}\"], weight: 0 }}\n    rules:\n      - {{ to: podinfo-canary, when: {{ header: {{ name: x-canary, equals: always }} }} }}\n",
        stable.addr, canary.addr
    );
    let yaml = format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\nroutes:\n{}{}{podinfo}",
        route("app"),
        route("api")
    );
    let proxy = Proxy::start(&yaml).await;
    let prom = Prometheus::start(&bin, proxy.admin.unwrap());
    let c = TestClient::http1();
    let send = |path: &'static str, canary: bool, n: usize| {
        let (c, url) = (c.clone(), proxy.url(path));
        async move {
            let h: &[(&str, &str)] = if canary {
                &[("x-canary", "always")]
            } else {
                &[]
            };
            for _ in 0..n {
                c.get(&url, h).await;
            }
        }
    };

    // Warm-up: every series exists before the measured traffic, so rate() sees it whole.
    send("/app", false, 1).await;
    send("/app/status/500", false, 1).await;
    send("/app", true, 1).await;
    send("/api", false, 1).await;
    send("/api", true, 1).await;
    send("/api/status/500", true, 1).await;
    send("/podinfo", false, 1).await;
    send("/podinfo/status/500", false, 1).await;
    send("/podinfo", true, 1).await;
    prom.wait(
        "two scrapes",
        "count_over_time(canaryd_config_generation[1m])",
        |r| r.first().is_some_and(|(_, v)| *v >= 2.0),
    )
    .await;

    // The mix: app stable 28 ok + 2 × 500, app canary 10 ok; api stable 20 ok, api canary 5 ok + 5 × 500.
    send("/app", false, 28).await;
    send("/app/status/500", false, 2).await;
    send("/app", true, 10).await;
    send("/api", false, 20).await;
    send("/api", true, 5).await;
    send("/api/status/500", true, 5).await;
    // podinfo: primary 2 ok + 2 × 500, canary 4 ok.
    send("/podinfo", false, 2).await;
    send("/podinfo/status/500", false, 2).await;
    send("/podinfo", true, 4).await;
    prom.wait("all requests scraped", "sum(canaryd_requests_total)", |r| {
        r.first().is_some_and(|(_, v)| *v == 87.0)
    })
    .await;
    // One more scrape after the last change, so the window ends on a flat counter.
    prom.wait(
        "a later scrape",
        "count_over_time(canaryd_config_generation[1m])",
        |_| true,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Flagger MetricTemplates: {{ target }} = route, {{ interval }} = window.
    let flagger = queries("deploy/flagger/metric-templates.yaml");
    assert_eq!(flagger.len(), 2, "{flagger:?}");
    let fl = |q: &str, route: &str| {
        q.replace("{{ target }}", route)
            .replace("{{ interval }}", "1m")
    };
    near(
        prom.scalar(&fl(&flagger[0], "app")).await,
        100.0,
        1e-9,
        "flagger success rate, app canary",
    );
    near(
        prom.scalar(&fl(&flagger[0], "api")).await,
        50.0,
        2.0,
        "flagger success rate, api canary",
    );
    let p99_ms = prom.scalar(&fl(&flagger[1], "app")).await;
    assert!(p99_ms > 0.0 && p99_ms < 1000.0, "flagger p99 ms {p99_ms}");

    // Flagger MetricTemplates for the gatewayapi provider: {{ namespace }}, {{ service }}.
    let gw = queries("deploy/flagger/gatewayapi-metric-templates.yaml");
    assert_eq!(gw.len(), 2, "{gw:?}");
    let gq = |q: &str| {
        q.replace("{{ namespace }}", "default")
            .replace("{{ service }}", "podinfo")
            .replace("{{ interval }}", "1m")
    };
    near(
        prom.scalar(&gq(&gw[0])).await,
        100.0,
        1e-9,
        "flagger gatewayapi success rate, podinfo canary (its primary is at 50)",
    );
    let p99_ms = prom.scalar(&gq(&gw[1])).await;
    assert!(
        p99_ms > 0.0 && p99_ms < 1000.0,
        "flagger gatewayapi p99 ms {p99_ms}"
    );

    // Argo Rollouts AnalysisTemplate (Prometheus provider).
    let argo = queries("deploy/argo/analysis-templates.yaml");
    assert_eq!(argo.len(), 2, "{argo:?}");
    let ar = |q: &str, route: &str, version: &str| {
        q.replace("{{args.route}}", route)
            .replace("{{args.version}}", version)
    };
    near(
        prom.scalar(&ar(&argo[0], "app", "canary")).await,
        1.0,
        1e-9,
        "argo success, app canary",
    );
    near(
        prom.scalar(&ar(&argo[0], "app", "stable")).await,
        28.0 / 30.0,
        0.02,
        "argo success, app stable",
    );
    let p99 = prom.scalar(&ar(&argo[1], "app", "canary")).await;
    assert!(p99 > 0.0 && p99 < 0.5, "argo p99 s {p99}");

    // Recording rules, as Prometheus evaluated them.
    let sr = "canaryd:route_version:success_rate:rate1m";
    prom.wait(
        "recorded success rate",
        &format!("{sr}{{route=\"api\",version=\"canary\"}}"),
        |r| r.first().is_some_and(|(_, v)| (v - 0.5).abs() <= 0.02),
    )
    .await;
    near(
        prom.scalar(&format!("{sr}{{route=\"app\",version=\"stable\"}}"))
            .await,
        28.0 / 30.0,
        0.02,
        "recorded app stable",
    );
    near(
        prom.scalar(&format!("{sr}{{route=\"api\",version=\"stable\"}}"))
            .await,
        1.0,
        1e-9,
        "recorded api stable",
    );
    let rps = "canaryd:route_version:requests:rate1m";
    let s = prom
        .scalar(&format!("{rps}{{route=\"app\",version=\"stable\"}}"))
        .await;
    let k = prom
        .scalar(&format!("{rps}{{route=\"app\",version=\"canary\"}}"))
        .await;
    near(s / k, 3.0, 0.3, "app stable:canary request ratio");
    let p99 = prom
        .scalar("canaryd:route_version:request_duration_seconds:p99_1m{route=\"app\",version=\"stable\"}")
        .await;
    assert!(p99 > 0.0 && p99 < 0.5, "recorded p99 {p99}");

    // The alert fires for api's canary (50% errors vs 0%), not for app's (better than stable).
    let firing = prom
        .query(&alert_expr("CanarydCanaryErrorRateAbovePrimary"))
        .await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].0["route"], "api");
    assert_eq!(firing[0].0["version"], "canary");
    prom.wait(
        "the alert pending in Prometheus",
        "ALERTS{alertname=\"CanarydCanaryErrorRateAbovePrimary\"}",
        |r| r.len() == 1 && r[0].0["route"] == "api" && r[0].0["alertstate"] == "pending",
    )
    .await;
}

/// A rollout gate with a `prometheus` check asks a real Prometheus that scrapes canaryd: the
/// canary's 5xx ratio from canaryd's own metrics fails it and the rollout is rolled back.
/// Before Prometheus has data the query returns no series: errored, never passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_gate_rolls_back_a_failing_canary() {
    let Some(bin) = prometheus_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "prometheus is not installed; .ci/run must install the Debian package `prometheus`"
            );
        }
        eprintln!(
            "SKIPPED: prometheus is not installed (apt-get install prometheus); CI runs this test"
        );
        return;
    };
    let stable = Origin::start("stable").await;
    let dir = tempfile::tempdir().unwrap();
    let prom_addr = closed_port();
    let query = r#"sum(rate(canaryd_requests_total{route="{{route}}",version="{{canary}}",code=~"5.."}[10s])) / sum(rate(canaryd_requests_total{route="{{route}}",version="{{canary}}"}[10s]))"#;
    let yaml = format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
proxy: {{ state_file: "{}" }}
routes:
  - name: app
    versions:
      stable: {{ endpoints: ["{}"] }}
      canary: {{ endpoints: ["{}"], weight: 0 }}
    rollout:
      id: app-v2
      steps: [ {{ set_weight: 50 }}, {{ analysis: prom }}, {{ set_weight: 90 }} ]
      analysis:
        prom:
          interval: 1s
          count: 3
          error_limit: 60
          min_requests: 5
          inconclusive_limit: 20
          checks:
            - prometheus: {{ url: "http://{prom_addr}", query: '{query}', max: 0.05 }}
"#,
        dir.path().join("s.json").display(),
        stable.addr,
        closed_port(),
    );
    let proxy = Proxy::start(&yaml).await;
    let _prom = Prometheus::start_at(&bin, proxy.admin.unwrap(), prom_addr);
    let load = {
        let url = proxy.url("/");
        tokio::spawn(async move {
            let c = TestClient::http1();
            for _ in 0..20_000 {
                let _ = c.try_get(&url).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut last = Value::Null;
    for _ in 0..240 {
        let (_, v) = proxy
            .admin_call("GET", "/api/v1/routes/app/rollout", "")
            .await;
        last = v;
        if last["phase"] == "aborted" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    load.abort();
    assert_eq!(last["phase"], "aborted", "{last}");
    let ms = last["measurements"].as_array().unwrap();
    let failed = ms
        .iter()
        .find(|m| m["result"] == "failed")
        .expect("a failed measurement");
    let check = &failed["checks"][0];
    assert_eq!(check["check"], "prometheus");
    assert!(check["value"].as_f64().unwrap() > 0.05, "{check}");
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .contains("canaryd_requests_total{route=\"app\",version=\"canary\""),
        "{check}"
    );
    // Nothing passed before the data was there.
    assert!(ms.iter().all(|m| m["result"] != "passed"), "{last}");
}
