use super::*;
use crate::config::Config;
use crate::k8s::objects::SERVICE_NAME_LABEL;
use crate::router::Router;
use serde_json::{Value, json};

fn proxy() -> ProxySettings {
    Config::from_yaml_with("listeners: [{address: \"127.0.0.1:0\"}]\n", true)
        .unwrap()
        .proxy
}

fn ingress(name: &str, service: &str, annotations: Value, class: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"ingressClassName": class, "rules": [{"host": "app.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": service, "port": {"number": 80}}}}
        ]}}]}
    })
}

fn world(ingresses: Vec<Value>) -> World {
    let mut w = World::default();
    for (svc, ip) in [("podinfo", "127.0.0.2"), ("podinfo-canary", "127.0.0.3")] {
        let s = serde_json::from_value(json!({
            "metadata": {"name": svc, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        w.services.insert(format!("default/{svc}"), s);
        let slice = serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-a"), "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip]}],
            "ports": [{"name": "http", "port": 9000}]
        }))
        .unwrap();
        w.put_slice(format!("default/{svc}-a"), slice);
    }
    for (n, i) in ingresses.into_iter().enumerate() {
        let mut i: Ingress = serde_json::from_value(i).unwrap();
        i.metadata.creation_timestamp = format!("2026-12-01T00:00:0{n}Z");
        w.ingresses.insert(i.metadata.key(), i);
    }
    w
}

fn canary(annotations: Value) -> Value {
    let mut a = json!({"nginx.ingress.kubernetes.io/canary": "true"});
    for (k, v) in annotations.as_object().unwrap() {
        a[format!("nginx.ingress.kubernetes.io/{k}")] = v.clone();
    }
    ingress("podinfo-canary", "podinfo-canary", a, "canaryd")
}

fn run(w: &World) -> IngressTranslation {
    translate(w, "canaryd", &[], &[], &proxy())
}

/// Which version serves a request with these headers, over `n` draws: canary count.
fn canary_share(t: &IngressTranslation, headers: &[(&str, &str)], n: usize) -> usize {
    let mut cfg =
        Config::from_yaml_with("listeners: [{address: \"127.0.0.1:0\"}]\n", true).unwrap();
    cfg.routes = t.routes.clone();
    let router = Router::new(&cfg);
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let mut rng = rand::rng();
    (0..n)
        .filter(|_| {
            let d = router
                .decide_for(
                    Some("app.example.com"),
                    &crate::router::Line::parse("/x", &http::Method::GET),
                    &h,
                    None,
                    &mut rng,
                )
                .unwrap();
            d.version == 1
        })
        .count()
}

#[test]
fn a_canary_ingress_merges_into_the_main_one_with_its_weight() {
    let w = world(vec![
        ingress("podinfo", "podinfo", json!({}), "canaryd"),
        canary(json!({"canary-weight": "30"})),
    ]);
    let t = run(&w);
    assert_eq!(
        t.routes.len(),
        1,
        "the canary Ingress is not a route of its own"
    );
    let r = &t.routes[0];
    assert_eq!(r.name, "default-podinfo-0");
    let shares: Vec<(&str, u32)> = r
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.weight.0))
        .collect();
    assert_eq!(shares, vec![("podinfo", 7000), ("podinfo-canary", 3000)]);
    let n = r.kube.as_ref().unwrap().nginx.as_ref().unwrap();
    assert_eq!(n.ingress, "podinfo");
    assert_eq!(
        n.services[1],
        ("podinfo-canary".into(), "default-podinfo-canary-80".into())
    );
    assert_eq!(n.services[0].1, "", "the primary's `canary` label is empty");
    assert!(t.problems.is_empty(), "{:?}", t.problems);
}

#[test]
fn header_then_cookie_then_weight_as_ingress_nginx_decides() {
    let w = world(vec![
        ingress("podinfo", "podinfo", json!({}), "canaryd"),
        canary(
            json!({"canary-weight": "100", "canary-by-header": "x-canary", "canary-by-cookie": "beta"}),
        ),
    ]);
    let t = run(&w);
    assert_eq!(
        canary_share(&t, &[("x-canary", "never")], 50),
        0,
        "never wins over weight 100"
    );
    assert_eq!(
        canary_share(&t, &[("x-canary", "never"), ("cookie", "beta=always")], 50),
        0,
        "the header is tested before the cookie"
    );
    assert_eq!(canary_share(&t, &[("cookie", "beta=never")], 50), 0);
    assert_eq!(
        canary_share(&t, &[("x-canary", "maybe")], 50),
        50,
        "falls through to the weight"
    );

    let w = world(vec![
        ingress("podinfo", "podinfo", json!({}), "canaryd"),
        canary(json!({"canary-by-header": "x-user", "canary-by-header-value": "insider"})),
    ]);
    let t = run(&w);
    assert_eq!(canary_share(&t, &[("x-user", "insider")], 30), 30);
    assert_eq!(
        canary_share(&t, &[("x-user", "always")], 30),
        0,
        "with a value, always means nothing"
    );
    assert_eq!(
        canary_share(&t, &[], 30),
        0,
        "weight 0 without the annotation"
    );

    let w = world(vec![
        ingress("podinfo", "podinfo", json!({}), "canaryd"),
        canary(json!({"canary-by-header": "user-agent", "canary-by-header-pattern": "Firefox"})),
    ]);
    let t = run(&w);
    assert_eq!(
        canary_share(&t, &[("user-agent", "Mozilla/5.0 Firefox/140")], 30),
        30,
        "unanchored, like ngx.re.match"
    );
    assert_eq!(canary_share(&t, &[("user-agent", "curl/8")], 30), 0);
}

#[test]
fn weight_total_scales_the_weight() {
    let w = world(vec![
        ingress("podinfo", "podinfo", json!({}), "canaryd"),
        canary(json!({"canary-weight": "250", "canary-weight-total": "1000"})),
    ]);
    assert_eq!(run(&w).routes[0].versions[1].weight.0, 2500);
    // A total under 100 is ignored (ingress-nginx): 30 of 100.
    let w = world(vec![
        ingress("podinfo", "podinfo", json!({}), "canaryd"),
        canary(json!({"canary-weight": "30", "canary-weight-total": "50"})),
    ]);
    assert_eq!(run(&w).routes[0].versions[1].weight.0, 3000);
}

#[test]
fn other_nginx_annotations_are_reported_not_ignored() {
    let w = world(vec![ingress(
        "podinfo",
        "podinfo",
        json!({"nginx.ingress.kubernetes.io/proxy-body-size": "8m", "nginx.ingress.kubernetes.io/rewrite-target": "/"}),
        "canaryd",
    )]);
    let t = run(&w);
    let p = &t.problems["default/podinfo"];
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].reason, "UnsupportedAnnotation");
    assert!(
        p[0].message
            .contains("nginx.ingress.kubernetes.io/proxy-body-size"),
        "{p:?}"
    );
    assert!(
        p[0].message
            .contains("nginx.ingress.kubernetes.io/rewrite-target"),
        "{p:?}"
    );
    // TLS in the Ingress is reported, not pretended.
    let mut with_tls = ingress("podinfo", "podinfo", json!({}), "canaryd");
    with_tls["spec"]["tls"] = json!([{"hosts": ["app.example.com"], "secretName": "app-tls"}]);
    let t = run(&world(vec![with_tls]));
    assert_eq!(t.problems["default/podinfo"][0].reason, "Unsupported");
    assert_eq!(t.routes.len(), 1, "the rest of the Ingress is still served");
}

#[test]
fn only_our_class_is_served_and_taken_names_are_not_reused() {
    let mut other = ingress("theirs", "podinfo", json!({}), "nginx");
    other["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": "nginx"});
    let mut legacy = ingress(
        "legacy",
        "podinfo",
        json!({"kubernetes.io/ingress.class": "canaryd"}),
        "nginx",
    );
    legacy["spec"]["rules"][0]["host"] = json!("legacy.example.com");
    let w = world(vec![other, legacy]);
    let t = run(&w);
    let names: Vec<&str> = t.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["default-legacy-0"],
        "the annotation decides the class first"
    );
    let t = translate(
        &w,
        "canaryd",
        &[],
        &["default-legacy-0".to_string()],
        &proxy(),
    );
    assert_eq!(t.routes[0].name, "default-legacy-ingress-0");
}
