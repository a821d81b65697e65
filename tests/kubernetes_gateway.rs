//! canaryd as a Gateway API implementation (issue 21), driven the way Flagger's `gatewayapi`
//! router and Argo Rollouts' Gateway API plugin drive it: the built binary runs
//! `canaryd run --kubernetes` against the fake API server (tests/k8s/fake_apiserver.py, proven
//! faithful with kubectl and the Python client by tests/kubernetes_fake.rs), the test writes
//! the objects with the exact requests those controllers send (GET, then a PUT of the whole
//! object with the resourceVersion read; docs/design/research-flagger.md and
//! research-argo.md), and asserts what reaches two echo backends on 127.0.0.2 and 127.0.0.3,
//! the status conditions the controllers wait for, a watch cut mid-stream and a compacted
//! history, and an invalid object that must not replace the last good routes.
#![cfg(feature = "kubernetes")]

mod support;

use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use support::{Origin, ProxyProcess, TestClient, eventually, full};

struct Fake {
    child: Child,
    base: String,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_fake() -> Fake {
    start_fake_on(0)
}

fn start_fake_on(port: u16) -> Fake {
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/k8s/fake_apiserver.py"
        ))
        .args(["--port", &port.to_string(), "--bookmark-seconds", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the fake API server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    Fake {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// The API as Flagger's and Argo's clients use it: JSON in, JSON out.
struct Kube {
    base: String,
    client: TestClient,
}

impl Kube {
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if body.is_none() {
            req = req.header("content-length", "0");
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let resp = self.client.send(req.body(full(body)).unwrap()).await;
        let v = serde_json::from_str(&resp.body).unwrap_or(Value::Null);
        (resp.status, v)
    }

    async fn create(&self, collection: &str, obj: Value) -> Value {
        let (s, v) = self.call(Method::POST, collection, Some(&obj)).await;
        assert_eq!(s, StatusCode::CREATED, "POST {collection}: {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
        v
    }

    /// What Flagger's `Update` and Argo's plugin do: GET, change, PUT the whole object with
    /// the resourceVersion read; on a 409 (canaryd wrote the status in between), again, as
    /// client-go's RetryOnConflict does (5 tries).
    async fn update(&self, path: &str, change: impl Fn(&mut Value)) -> Value {
        for _ in 0..5 {
            let mut obj = self.get(path).await;
            change(&mut obj);
            let (s, v) = self.call(Method::PUT, path, Some(&obj)).await;
            if s == StatusCode::CONFLICT {
                continue;
            }
            assert_eq!(s, StatusCode::OK, "PUT {path}: {v}");
            return v;
        }
        panic!("PUT {path}: 5 conflicts in a row");
    }

    /// What Argo's nginx router does: a JSON merge patch (`application/merge-patch+json`).
    async fn merge_patch(&self, path: &str, patch: Value) -> Value {
        let req = Request::patch(format!("{}{path}", self.base))
            .header("content-type", "application/merge-patch+json")
            .body(full(patch.to_string()))
            .unwrap();
        let resp = self.client.send(req).await;
        assert_eq!(resp.status, StatusCode::OK, "PATCH {path}: {}", resp.body);
        serde_json::from_str(&resp.body).unwrap()
    }

    async fn delete(&self, path: &str) {
        let (s, v) = self.call(Method::DELETE, path, None).await;
        assert_eq!(s, StatusCode::OK, "DELETE {path}: {v}");
    }

    /// Poll `path` until `cond` holds (at most 20 s).
    async fn wait(&self, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        eventually(what, 20, || async {
            let v = self.get(path).await;
            if cond(&v) {
                Ok(v)
            } else {
                Err(format!("{v:#}"))
            }
        })
        .await
    }
}

const GW: &str = "/apis/gateway.networking.k8s.io/v1";
const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/podinfo";

/// Our entry in `status.parents` for Flagger's parentRef, if any.
fn our_parent(route: &Value) -> Option<&Value> {
    route["status"]["parents"].as_array()?.iter().find(|p| {
        p["controllerName"] == "canaryd.io/gateway-controller"
            && p["parentRef"] == route["spec"]["parentRefs"][0]
    })
}

fn condition<'a>(conds: &'a Value, kind: &str) -> Option<&'a Value> {
    conds.as_array()?.iter().find(|c| c["type"] == kind)
}

/// Flagger's `GetRoutes` gate: the parent status for the spec's parentRef (compared with
/// DeepEqual) has `Accepted=True` observed at the current generation.
fn flagger_ready(route: &Value) -> bool {
    our_parent(route)
        .and_then(|p| condition(&p["conditions"], "Accepted"))
        .is_some_and(|c| {
            c["status"] == "True" && c["observedGeneration"] == route["metadata"]["generation"]
        })
}

/// Observed at the current generation, whatever the verdict.
fn observed(route: &Value) -> bool {
    our_parent(route)
        .and_then(|p| condition(&p["conditions"], "Accepted"))
        .is_some_and(|c| c["observedGeneration"] == route["metadata"]["generation"])
}

fn backend(name: &str, weight: Option<u32>) -> Value {
    let mut b = json!({"group": "", "kind": "Service", "name": name, "port": 9898});
    if let Some(w) = weight {
        b["weight"] = json!(w);
    }
    b
}

/// The rule Flagger's SetRoutes writes (the whole spec is rebuilt each time).
fn flagger_spec(primary: u32, canary: u32) -> Value {
    json!({
        "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "namespace": "default"}],
        "hostnames": ["www.example.com"],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [backend("podinfo-primary", Some(primary)), backend("podinfo-canary", Some(canary)), backend("podinfo-idle", Some(0))]
        }]
    })
}

/// The rules Flagger's SetRoutes writes with `analysis.sessionAffinity` (cookie
/// `flagger-cookie`, value `AbCdEfGhIj`): a sticky rule matching the cookie with a regex on
/// the Cookie header, then the weighted rule whose canary backendRef adds the cookie.
fn flagger_sticky_spec(primary: u32, canary: u32) -> Value {
    let mut spec = flagger_spec(primary, canary);
    let weighted = spec["rules"][0].clone();
    let mut sticky = weighted.clone();
    sticky["matches"] = json!([{"path": {"type": "PathPrefix", "value": "/"},
        "headers": [{"name": "Cookie", "type": "RegularExpression", "value": ".*flagger-cookie.*AbCdEfGhIj.*"}]}]);
    sticky["backendRefs"] = json!([
        backend("podinfo-primary", Some(0)),
        backend("podinfo-canary", Some(100))
    ]);
    let mut weighted = weighted;
    weighted["backendRefs"][1]["filters"] = json!([{"type": "ResponseHeaderModifier",
        "responseHeaderModifier": {"add": [{"name": "Set-Cookie", "value": "flagger-cookie=AbCdEfGhIj; Max-Age=86400"}]}}]);
    spec["rules"] = json!([sticky, weighted]);
    spec
}

/// `n` GETs through canaryd with `headers`: how many each backend answered, by body.
async fn spread(proxy: &ProxyProcess, n: usize, headers: &[(&str, &str)]) -> (usize, usize, usize) {
    spread_to(proxy, "www.example.com", n, headers).await
}

async fn spread_to(
    proxy: &ProxyProcess,
    host: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> (usize, usize, usize) {
    let client = TestClient::http1();
    let mut counts = (0, 0, 0);
    for _ in 0..n {
        let mut req = Request::get(format!("http://{}/", proxy.addr)).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = client.send(req.body(full("")).unwrap()).await;
        match (r.status, r.body.as_str()) {
            (StatusCode::OK, "primary") => counts.0 += 1,
            (StatusCode::OK, "canary") => counts.1 += 1,
            (status, body) => panic!("unexpected answer {status} {body}"),
        }
    }
    counts
}

/// The weight (percent) canaryd applies to `version` of `route`, once the route exists.
async fn applied_weight(proxy: &ProxyProcess, route: &str, version: &str) -> Option<f64> {
    let r = TestClient::http1()
        .get(
            &format!("http://{}/api/v1/routes/{route}", proxy.admin.unwrap()),
            &[],
        )
        .await;
    let v: Value = serde_json::from_str(&r.body).ok()?;
    v["versions"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == version)?["weight"]
        .as_f64()
}

/// Wait until canaryd applies `weight` to `version` of `route` (Ingresses have no status
/// to wait on; the admin API says what is in force).
async fn wait_weight(proxy: &ProxyProcess, route: &str, version: &str, weight: f64) {
    let what = format!("{route}/{version} at weight {weight}");
    eventually(&what, 20, || async {
        match applied_weight(proxy, route, version).await {
            Some(w) if w == weight => Ok(()),
            got => Err(format!("weight {got:?}")),
        }
    })
    .await
}

/// Wait until a request to web.example.com with `x-user: insider` lands as `want`
/// (primary, canary, other): the A/B header rule applied, or gone.
async fn header_route_sends(proxy: &ProxyProcess, want: (usize, usize, usize), what: &str) {
    eventually(what, 20, || async {
        let got = spread_to(proxy, "web.example.com", 1, &[("x-user", "insider")]).await;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
}

/// A Service named `svc` whose one ready endpoint is `origin`.
async fn service(kube: &Kube, svc: &str, origin: Option<&Origin>) {
    kube.create(
        "/api/v1/namespaces/default/services",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": svc, "namespace": "default"},
               "spec": {"ports": [{"name": "http", "port": 9898, "protocol": "TCP"}]}}),
    )
    .await;
    if let Some(o) = origin {
        kube.create(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": format!("{svc}-x1"), "namespace": "default",
                                "labels": {"kubernetes.io/service-name": svc}},
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": [o.addr.ip().to_string()], "conditions": {"ready": true}}],
                   "ports": [{"name": "http", "port": o.addr.port(), "protocol": "TCP"}]}),
        )
        .await;
    }
}

const INGRESSES: &str = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";

/// An Ingress of class canaryd for `host` → `svc`, as a user (or Flagger's clone) writes it.
fn ingress(name: &str, host: &str, svc: &str, annotations: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": "default", "annotations": annotations},
           "spec": {"ingressClassName": "canaryd", "rules": [{"host": host, "http": {"paths": [
               {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": svc, "port": {"number": 9898}}}}]}}]}})
}

/// The value of one series in canaryd's /metrics, 0 when absent.
async fn metric(proxy: &ProxyProcess, series: &str) -> f64 {
    let r = TestClient::http1()
        .get(&format!("http://{}/metrics", proxy.admin.unwrap()), &[])
        .await;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Gateway API's RequestRedirect (Core) and URLRewrite (Flagger writes it for
/// `service.rewrite`), end to end.
async fn filter_flows(kube: &Kube, proxy: &ProxyProcess, primary: &Origin, shadow: &Origin) {
    service(kube, "site", Some(primary)).await;
    service(kube, "site-shadow", Some(shadow)).await;
    kube.create(
        &format!("{GW}/namespaces/default/httproutes"),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "filters", "namespace": "default"},
           "spec": {"parentRefs": [{"name": "gw"}],
                    "hostnames": ["old.example.com", "rw.example.com"],
                    "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {
                 "scheme": "https", "hostname": "new.example.com", "statusCode": 301,
                 "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api/"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {
                 "hostname": "internal.example",
                 "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
             "backendRefs": [{"name": "site", "port": 9898}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/copy"}}],
             "filters": [
                 {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                     "set": [{"name": "X-Env", "value": "gateway"}], "remove": ["X-Secret"]}},
                 {"type": "RequestMirror", "requestMirror": {
                     "backendRef": {"name": "site-shadow", "port": 9898}, "percent": 100}}],
             "backendRefs": [{"name": "site", "port": 9898}]}
        ]}}),
    )
    .await;
    let path = format!("{GW}/namespaces/default/httproutes/filters");
    kube.wait(&path, "the filters route accepted", flagger_ready)
        .await;
    let client = TestClient::http1();
    let r = client
        .get(
            &format!("http://{}/v1/items?page=2", proxy.addr),
            &[("host", "old.example.com")],
        )
        .await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("https://new.example.com/v2/items?page=2")
    );
    let before = primary.seen().len();
    let r = client
        .get(
            &format!("http://{}/api/users?id=7", proxy.addr),
            &[("host", "rw.example.com")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let seen = primary.seen();
    assert_eq!(seen.len(), before + 1);
    let last = seen.last().unwrap();
    assert_eq!(last.uri.path_and_query().unwrap().as_str(), "/users?id=7");
    assert_eq!(last.headers["host"], "internal.example");

    // RequestHeaderModifier on the request; RequestMirror copies every request to the shadow
    // Service, whose answer is discarded.
    let shadow_before = shadow.seen().len();
    let r = client
        .get(
            &format!("http://{}/copy/me", proxy.addr),
            &[("host", "rw.example.com"), ("x-secret", "s3")],
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "primary"));
    let last = primary.last();
    assert_eq!(last.uri.path(), "/copy/me");
    assert_eq!(last.headers["x-env"], "gateway");
    assert!(!last.headers.contains_key("x-secret"));
    eventually("the mirror copy at the shadow", 10, || async {
        let n = shadow.seen().len();
        if n > shadow_before {
            Ok(())
        } else {
            Err(format!("{n} requests"))
        }
    })
    .await;
    assert_eq!(shadow.last().uri.path(), "/copy/me");
}

/// Flagger's `nginx` router, then Argo Rollouts' nginx router, each request as they send it
/// (docs/design/research-flagger.md §2, research-argo.md §1).
async fn ingress_flows(kube: &Kube, proxy: &ProxyProcess, primary: &Origin, canary: &Origin) {
    service(kube, "web", Some(primary)).await;
    service(kube, "web-canary", Some(canary)).await;

    // The user's Ingress, with an annotation canaryd does not implement.
    kube.create(
        INGRESSES,
        ingress(
            "web",
            "web.example.com",
            "web",
            json!({"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}),
        ),
    )
    .await;
    // Flagger's Reconcile: the clone `web-canary`, U's annotations minus the canary ones plus
    // the Flux ones, canary "true" at weight "0".
    kube.create(
        INGRESSES,
        ingress(
            "web-canary",
            "web.example.com",
            "web-canary",
            json!({
                "nginx.ingress.kubernetes.io/proxy-body-size": "8m",
                "kustomize.toolkit.fluxcd.io/reconcile": "disabled",
                "helm.toolkit.fluxcd.io/driftDetection": "disabled",
                "nginx.ingress.kubernetes.io/canary": "true",
                "nginx.ingress.kubernetes.io/canary-weight": "0"
            }),
        ),
    )
    .await;
    wait_weight(proxy, "default-web-0", "web-canary", 0.0).await;
    assert_eq!(
        spread_to(proxy, "web.example.com", 30, &[]).await,
        (30, 0, 0)
    );

    // SetRoutes(_, 30): GET the canary Ingress, set canary-weight, Update.
    let ann = "/apis/networking.k8s.io/v1/namespaces/default/ingresses/web-canary";
    kube.update(ann, |o| {
        o["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] = json!("30");
        o["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary"] = json!("true");
    })
    .await;
    wait_weight(proxy, "default-web-0", "web-canary", 30.0).await;
    let (p, c, _) = spread_to(proxy, "web.example.com", 1000, &[]).await;
    assert!(
        (250..=350).contains(&c),
        "canary got {c} of 1000 (primary {p}) at canary-weight 30"
    );

    // A/B: header and cookie annotations (weight "0" kept, as Flagger leaves it).
    kube.update(ann, |o| {
        let a = &mut o["metadata"]["annotations"];
        a["nginx.ingress.kubernetes.io/canary-weight"] = json!("0");
        a["nginx.ingress.kubernetes.io/canary-by-header"] = json!("x-user");
        a["nginx.ingress.kubernetes.io/canary-by-header-value"] = json!("insider");
        a["nginx.ingress.kubernetes.io/canary-by-cookie"] = json!("flagger");
    })
    .await;
    wait_weight(proxy, "default-web-0", "web-canary", 0.0).await;
    header_route_sends(proxy, (0, 1, 0), "the header rule applied").await;
    let header = spread_to(proxy, "web.example.com", 20, &[("x-user", "insider")]).await;
    assert_eq!(header, (0, 20, 0));
    let cookie = spread_to(
        proxy,
        "web.example.com",
        20,
        &[("cookie", "flagger=always")],
    )
    .await;
    assert_eq!(cookie, (0, 20, 0));
    assert_eq!(
        spread_to(proxy, "web.example.com", 20, &[("x-user", "outsider")]).await,
        (20, 0, 0)
    );

    // Flagger's nginx checks read ingress-nginx's series: the canary's requests under the
    // main Ingress's name with `canary` = the canary upstream.
    let canary_ok = metric(
        proxy,
        "nginx_ingress_controller_requests{namespace=\"default\",ingress=\"web\",service=\"web-canary\",canary=\"default-web-canary-9898\",path=\"/\",status=\"200\"}",
    )
    .await;
    assert_eq!(
        canary_ok,
        (c + 1 + 40) as f64,
        "canary requests counted as ingress-nginx does"
    );
    let count = metric(
        proxy,
        "nginx_ingress_controller_response_duration_seconds_count{namespace=\"default\",ingress=\"web\",service=\"web-canary\",canary=\"default-web-canary-9898\",path=\"/\"}",
    )
    .await;
    assert_eq!(count, canary_ok);

    // Promotion: every canary* annotation stripped, canary "true" at weight "0" again.
    kube.update(ann, |o| {
        let a = o["metadata"]["annotations"].as_object_mut().unwrap();
        a.retain(|k, _| !k.starts_with("nginx.ingress.kubernetes.io/canary"));
        a.insert("nginx.ingress.kubernetes.io/canary".into(), json!("true"));
        a.insert(
            "nginx.ingress.kubernetes.io/canary-weight".into(),
            json!("0"),
        );
    })
    .await;
    header_route_sends(proxy, (1, 0, 0), "the header rule gone").await;

    // The annotation canaryd does not implement is reported on the Ingress, not ignored.
    let events = kube.get("/api/v1/namespaces/default/events").await;
    let reported = events["items"].as_array().unwrap().iter().any(|e| {
        e["involvedObject"]["name"] == "web"
            && e["reason"] == "UnsupportedAnnotation"
            && e["message"].as_str().unwrap().contains("proxy-body-size")
    });
    assert!(reported, "{events:#}");

    // Argo's nginx router: the canary Ingress `<rollout>-<stable ingress>-canary` is created
    // with canary "true" at "0", then each step is a merge patch of canary-weight alone.
    service(kube, "argo-stable", Some(primary)).await;
    service(kube, "argo-canary", Some(canary)).await;
    kube.create(
        INGRESSES,
        ingress("argo", "argo.example.com", "argo-stable", json!({})),
    )
    .await;
    kube.create(
        INGRESSES,
        ingress(
            "rollouts-demo-argo-canary",
            "argo.example.com",
            "argo-canary",
            json!({"nginx.ingress.kubernetes.io/canary": "true",
                   "nginx.ingress.kubernetes.io/canary-weight": "0"}),
        ),
    )
    .await;
    wait_weight(proxy, "default-argo-0", "argo-canary", 0.0).await;
    kube.merge_patch(
        &format!("{INGRESSES}/rollouts-demo-argo-canary"),
        json!({"metadata": {"annotations": {"nginx.ingress.kubernetes.io/canary-weight": "20"}}}),
    )
    .await;
    wait_weight(proxy, "default-argo-0", "argo-canary", 20.0).await;
    let (p, c, _) = spread_to(proxy, "argo.example.com", 1000, &[]).await;
    assert!(
        (150..=250).contains(&c),
        "canary got {c} of 1000 (stable {p}) at canary-weight 20"
    );
}

/// `canaryd run --kubernetes` with a kubeconfig for the API server at `base`.
fn start_canaryd(dir: &tempfile::TempDir, base: &str) -> ProxyProcess {
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{base}\"}}}}]\nusers: [{{name: fake, user: {{token: fake}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]\ncurrent-context: fake\n"
        ),
    )
    .unwrap();
    ProxyProcess::start_kubernetes(
        "listeners: [{address: \"127.0.0.1:0\"}]\nadmin: {address: \"127.0.0.1:0\"}\n",
        &kubeconfig,
    )
}

/// A pod that cannot reach the API server yet must not take traffic: `/readyz` answers 503
/// (and `/healthz` 200) until the first sync, then 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_cluster_is_read() {
    let port = support::closed_port().port();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_canaryd(&dir, &format!("http://127.0.0.1:{port}"));
    let admin = proxy.admin.unwrap();
    let client = TestClient::http1();
    let ready = client.get(&format!("http://{admin}/readyz"), &[]).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    assert!(ready.body.contains("Kubernetes"), "{}", ready.body);
    let healthz = client.get(&format!("http://{admin}/healthz"), &[]).await;
    assert_eq!(healthz.status, StatusCode::OK);
    // The API server comes up: the watchers' backoff retries reach it.
    let _fake = start_fake_on(port);
    eventually("/readyz 200", 30, || async {
        let r = client.get(&format!("http://{admin}/readyz"), &[]).await;
        if r.status == StatusCode::OK {
            Ok(())
        } else {
            Err(r.body)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_and_argo_drive_canaryd_through_httproutes_and_ingresses() {
    let fake = start_fake();
    let kube = Kube {
        base: fake.base.clone(),
        client: TestClient::http1(),
    };
    let primary = Origin::start_at("primary", "127.0.0.2:0".parse().unwrap()).await;
    let canary = Origin::start_at("canary", "127.0.0.3:0".parse().unwrap()).await;

    // The cluster: our GatewayClass, a Gateway, the Services Flagger creates and their
    // EndpointSlices (what the endpoint controller would write).
    kube.create(
        &format!("{GW}/gatewayclasses"),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "canaryd"},
               "spec": {"controllerName": "canaryd.io/gateway-controller"}}),
    )
    .await;
    kube.create(
        &format!("{GW}/namespaces/default/gateways"),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw", "namespace": "default"},
               "spec": {"gatewayClassName": "canaryd",
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    )
    .await;
    for (svc, origin) in [
        ("podinfo-primary", Some(&primary)),
        ("podinfo-canary", Some(&canary)),
        ("podinfo-idle", None),
    ] {
        service(&kube, svc, origin).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let proxy = start_canaryd(&dir, &fake.base);

    // GatewayClass and Gateway are accepted.
    kube.wait(
        &format!("{GW}/gatewayclasses/canaryd"),
        "GatewayClass Accepted",
        |v| {
            condition(&v["status"]["conditions"], "Accepted").is_some_and(|c| c["status"] == "True")
        },
    )
    .await;
    kube.wait(
        &format!("{GW}/namespaces/default/gateways/gw"),
        "Gateway Programmed",
        |v| {
            condition(&v["status"]["conditions"], "Programmed")
                .is_some_and(|c| c["status"] == "True")
        },
    )
    .await;

    // Flagger's Reconcile creates the route at 100/0, then waits for Accepted.
    kube.create(
        &format!("{GW}/namespaces/default/httproutes"),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "podinfo", "namespace": "default",
                            "annotations": {"kustomize.toolkit.fluxcd.io/reconcile": "disabled"}},
               "spec": flagger_spec(100, 0)}),
    )
    .await;
    let r = kube
        .wait(ROUTE, "Flagger's Accepted gate", flagger_ready)
        .await;
    let resolved = condition(&our_parent(&r).unwrap()["conditions"], "ResolvedRefs").unwrap();
    assert_eq!(resolved["status"], "True", "{r:#}");
    assert_eq!(spread(&proxy, 50, &[]).await, (50, 0, 0));

    // SetRoutes(70, 30): GET, rebuild the spec, PUT. The gate holds again at the new
    // generation, then the split is 70/30/0 within 5 % over 1000 requests.
    // Another controller's status entry (for its own Gateway) is never touched.
    let foreign = json!({"parentRef": {"name": "their-gw"}, "controllerName": "example.com/other",
        "conditions": [{"type": "Accepted", "status": "False", "reason": "Pending", "message": "theirs",
                        "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    kube.update(&format!("{ROUTE}/status"), |o| {
        o["status"]["parents"]
            .as_array_mut()
            .unwrap()
            .push(foreign.clone());
    })
    .await;
    let put = kube
        .update(ROUTE, |o| o["spec"] = flagger_spec(70, 30))
        .await;
    assert_eq!(put["metadata"]["generation"], 2);
    let r = kube
        .wait(ROUTE, "gate at generation 2", flagger_ready)
        .await;
    assert!(
        r["status"]["parents"]
            .as_array()
            .unwrap()
            .contains(&foreign),
        "{r:#}"
    );
    let (p, c, _) = spread(&proxy, 1000, &[]).await;
    assert!(
        (250..=350).contains(&c),
        "canary got {c} of 1000 (primary {p}) at weight 30"
    );

    // A runtime override of a Kubernetes route is refused: Flagger owns it.
    let admin = proxy.admin.unwrap();
    let resp = TestClient::http1()
        .send(
            Request::put(format!(
                "http://{admin}/api/v1/routes/default-podinfo-0/weights"
            ))
            .body(full(r#"{"podinfo-canary": 50}"#))
            .unwrap(),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.body);
    assert!(
        resp.body.contains("HTTPRoute default/podinfo rule 0"),
        "{}",
        resp.body
    );

    // Flagger's session affinity: a canary answer sets Flagger's cookie (a backend-level
    // ResponseHeaderModifier), a primary one does not, and the cookie keeps its holder on the
    // canary (a regex match on the Cookie header, ranked above the weighted rule).
    kube.update(ROUTE, |o| o["spec"] = flagger_sticky_spec(50, 50))
        .await;
    kube.wait(ROUTE, "gate with session affinity", flagger_ready)
        .await;
    let client = TestClient::http1();
    let (mut canary_seen, mut primary_seen) = (0, 0);
    for _ in 0..100 {
        let r = client
            .get(
                &format!("http://{}/", proxy.addr),
                &[("host", "www.example.com")],
            )
            .await;
        let cookie = r.header("set-cookie");
        match r.body.as_str() {
            "canary" => {
                canary_seen += 1;
                assert_eq!(cookie, Some("flagger-cookie=AbCdEfGhIj; Max-Age=86400"));
            }
            "primary" => {
                primary_seen += 1;
                assert_eq!(cookie, None, "the primary sets no cookie");
            }
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!(
        canary_seen > 0 && primary_seen > 0,
        "{canary_seen} {primary_seen}"
    );
    let sticky = [("cookie", "session=1; flagger-cookie=AbCdEfGhIj")];
    assert_eq!(spread(&proxy, 30, &sticky).await, (0, 30, 0));
    kube.update(ROUTE, |o| o["spec"] = flagger_spec(70, 30))
        .await;
    kube.wait(ROUTE, "gate back without affinity", flagger_ready)
        .await;

    // Argo's plugin: setHeaderRoute appends a named rule with the canary alone (weight
    // unset: the CRD's default 1) at the END of the rules. Gateway API precedence, not rule
    // order, must send matching requests to it.
    kube.update(ROUTE, |o| {
        let rules = o["spec"]["rules"].as_array_mut().unwrap();
        rules.push(json!({
            "name": "canary-route1",
            "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                         "headers": [{"name": "X-Test", "type": "Exact", "value": "test"}]}],
            "backendRefs": [backend("podinfo-canary", None)]
        }));
    })
    .await;
    kube.wait(ROUTE, "gate after the header route", flagger_ready)
        .await;
    assert_eq!(spread(&proxy, 40, &[("x-test", "test")]).await, (0, 40, 0));

    // An invalid object (a regex that does not compile) is refused in status and does not
    // replace the last good routes: the header route still works.
    kube.update(ROUTE, |o| {
        o["spec"]["rules"][1]["matches"][0]["headers"][0] =
            json!({"name": "X-Test", "type": "RegularExpression", "value": "(unclosed"});
    })
    .await;
    let r = kube
        .wait(ROUTE, "the invalid generation observed", observed)
        .await;
    let accepted = condition(&our_parent(&r).unwrap()["conditions"], "Accepted").unwrap();
    assert_eq!(accepted["status"], "False", "{r:#}");
    assert_eq!(accepted["reason"], "UnsupportedValue");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("regular expression"),
        "{r:#}"
    );
    assert_eq!(spread(&proxy, 20, &[("x-test", "test")]).await, (0, 20, 0));

    // Argo's RemoveManagedRoutes drops the named rule; the route is valid again.
    kube.update(ROUTE, |o| {
        let rules = o["spec"]["rules"].as_array_mut().unwrap();
        rules.retain(|r| r["name"] != "canary-route1");
    })
    .await;
    kube.wait(ROUTE, "valid again", flagger_ready).await;
    let (_, c, _) = spread(&proxy, 40, &[("x-test", "test")]).await;
    assert!(
        c < 40,
        "the header route is gone: {c} of 40 still went to the canary"
    );

    // Every watch is cut mid-stream and the history compacted (the next watch from an old
    // resourceVersion gets 410 Gone): canaryd relists and follows the promotion.
    let (s, _) = kube.call(Method::POST, "/fake/drop-watches", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = kube.call(Method::POST, "/fake/compact", None).await;
    assert_eq!(s, StatusCode::OK);
    kube.update(ROUTE, |o| o["spec"] = flagger_spec(0, 100))
        .await;
    kube.wait(ROUTE, "gate after the relist", flagger_ready)
        .await;
    assert_eq!(spread(&proxy, 30, &[]).await, (0, 30, 0));

    // The canary's endpoints go away: its share answers 503, counted against it.
    kube.delete("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/podinfo-canary-x1")
        .await;
    let client = TestClient::http1();
    eventually("503 from the canary's share", 20, || async {
        let r = client
            .send(
                Request::get(format!("http://{}/", proxy.addr))
                    .header("host", "www.example.com")
                    .body(full(""))
                    .unwrap(),
            )
            .await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    // A host no route claims is not served.
    let r = client
        .send(
            Request::get(format!("http://{}/", proxy.addr))
                .header("host", "other.example.com")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    filter_flows(&kube, &proxy, &primary, &canary).await;
    ingress_flows(&kube, &proxy, &primary, &canary).await;

    // Least privilege: canaryd's requests (its kubeconfig's token; the test sends none) need
    // exactly the ClusterRole shipped in deploy/k8s/gateway/gateway.yaml.
    let (_, requests) = kube.call(Method::GET, "/fake/requests", None).await;
    let used: BTreeSet<(String, String, String)> = requests
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["authorization"] == "Bearer fake")
        .map(|r| {
            access(
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                &r["query"],
            )
        })
        .collect();
    assert_eq!(used, granted(), "requests canaryd made vs the ClusterRole");
}

/// (API group, resource[/subresource], verb) of a request, as RBAC sees it.
fn access(method: &str, path: &str, query: &Value) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.first() {
        Some(&"api") => ("", &parts[2..]),
        Some(&"apis") => (parts[1], &parts[3..]),
        _ => panic!("a non-resource request: {path}"),
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [r] | [r, _] => r.to_string(),
        [r, _, sub] => format!("{r}/{sub}"),
        _ => panic!("unexpected path {path}"),
    };
    let watch = matches!(query["watch"].as_str(), Some("true" | "1"));
    let verb = match (method, rest.len()) {
        ("GET", 1) if watch => "watch",
        ("GET", 1) => "list",
        ("GET", _) => "get",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("POST", _) => "create",
        ("DELETE", _) => "delete",
        _ => panic!("unexpected request {method} {path}"),
    };
    (group.to_string(), resource, verb.to_string())
}

/// Every (group, resource, verb) the shipped ClusterRole grants.
fn granted() -> BTreeSet<(String, String, String)> {
    let text = include_str!("../deploy/k8s/gateway/gateway.yaml");
    let mut out = BTreeSet::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] != "ClusterRole" {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        out.insert((
                            g.as_str().unwrap().to_string(),
                            r.as_str().unwrap().to_string(),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    assert!(!out.is_empty(), "no ClusterRole in gateway.yaml");
    out
}
