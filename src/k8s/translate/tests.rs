use super::*;
use crate::config::{Config, Unservable};
use crate::router::Router;
use serde_json::json;

fn world(routes: Vec<Value>) -> World {
    let mut w = World::default();
    let class: super::super::objects::GatewayClass = serde_json::from_value(json!({
        "metadata": {"name": "canaryd"},
        "spec": {"controllerName": CONTROLLER_NAME}
    }))
    .unwrap();
    w.classes.insert("canaryd".into(), class);
    let other: super::super::objects::GatewayClass = serde_json::from_value(json!({
        "metadata": {"name": "other"},
        "spec": {"controllerName": "example.com/other"}
    }))
    .unwrap();
    w.classes.insert("other".into(), other);
    for (name, class) in [("gw", "canaryd"), ("foreign", "other")] {
        let gw: Gateway = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "generation": 1},
            "spec": {"gatewayClassName": class, "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"}
            ]}
        }))
        .unwrap();
        w.gateways.insert(format!("default/{name}"), gw);
    }
    for (svc, ip, ready) in [
        ("stable", "127.0.0.2", true),
        ("canary", "127.0.0.3", true),
        ("empty", "127.0.0.4", false),
    ] {
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": svc, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        w.services.insert(format!("default/{svc}"), s);
        let slice = serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-abc"), "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}}],
            "ports": [{"name": "http", "port": 9000}]
        }))
        .unwrap();
        w.put_slice(format!("default/{svc}-abc"), slice);
    }
    for (i, r) in routes.into_iter().enumerate() {
        let mut r: HttpRoute = serde_json::from_value(r).unwrap();
        if r.metadata.creation_timestamp.is_empty() {
            r.metadata.creation_timestamp = format!("2026-12-01T00:00:0{i}Z");
        }
        w.routes.insert(r.metadata.key(), r);
    }
    w
}

fn route(name: &str, rules: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "generation": 2},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": rules}
    })
}

fn backend(name: &str, weight: i64) -> Value {
    json!({"name": name, "port": 80, "weight": weight})
}

fn proxy() -> ProxySettings {
    Config::from_yaml_with("listeners: [{address: \"127.0.0.1:0\"}]\n", true)
        .unwrap()
        .proxy
}

fn run(w: &World) -> Translation {
    translate(w, &[], &proxy(), &BTreeMap::new())
}

fn accepted(t: &Translation, key: &str) -> (bool, String) {
    let c = &t.route_status[key].parents[0].1[0];
    (c.status, c.reason.clone())
}

#[test]
fn weights_become_shares_of_their_sum_with_the_primary_first() {
    let w = world(vec![route(
        "shop",
        json!([{"backendRefs": [backend("stable", 70), backend("canary", 30), backend("empty", 0)]}]),
    )]);
    let t = run(&w);
    assert_eq!(t.routes.len(), 1);
    let r = &t.routes[0];
    assert_eq!(r.name, "default-shop-0");
    let shares: Vec<(&str, u32)> = r
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.weight.0))
        .collect();
    assert_eq!(
        shares,
        vec![("stable", 7000), ("canary", 3000), ("empty", 0)]
    );
    assert_eq!(r.versions[0].endpoints[0].to_string(), "127.0.0.2:9000");
    let k = r.kube.as_ref().unwrap();
    assert_eq!(
        k.unservable,
        vec![None, None, Some(Unservable::NoEndpoints)]
    );
    assert_eq!(accepted(&t, "default/shop"), (true, "Accepted".into()));
    assert_eq!(t.route_status["default/shop"].generation, 2);
    // Uneven weights still add up to exactly 100 %.
    let w = world(vec![route(
        "odd",
        json!([{"backendRefs": [backend("stable", 1), backend("canary", 2)]}]),
    )]);
    let t = run(&w);
    let total: u32 = t.routes[0].versions.iter().map(|v| v.weight.0).sum();
    assert_eq!(total, WEIGHT_SCALE);
    assert_eq!(t.routes[0].versions[1].weight.0, 6666);
}

#[test]
fn the_primary_annotation_names_the_stable_backend() {
    let mut r = route(
        "shop",
        json!([{"backendRefs": [backend("canary", 10), backend("stable", 90)]}]),
    );
    r["metadata"]["annotations"] = json!({PRIMARY_ANNOTATION: "stable"});
    let t = run(&world(vec![r]));
    assert_eq!(t.routes[0].versions[0].name, "stable");
    assert_eq!(t.routes[0].versions[0].weight.0, 9000);
}

#[test]
fn unresolvable_backends_answer_500_and_say_why() {
    let w = world(vec![route(
        "shop",
        json!([{"backendRefs": [backend("stable", 50), backend("missing", 50)]}]),
    )]);
    let t = run(&w);
    let k = t.routes[0].kube.as_ref().unwrap();
    assert_eq!(k.unservable[1], Some(Unservable::Invalid));
    let resolved = &t.route_status["default/shop"].parents[0].1[1];
    assert_eq!((resolved.kind, resolved.status), ("ResolvedRefs", false));
    assert_eq!(resolved.reason, "BackendNotFound");
    // All weights 0: the rule answers 500.
    let w = world(vec![route(
        "zero",
        json!([{"backendRefs": [backend("stable", 0)]}]),
    )]);
    let t = run(&w);
    assert_eq!(
        t.routes[0].kube.as_ref().unwrap().unservable[0],
        Some(Unservable::Invalid)
    );
}

#[test]
fn routes_of_other_controllers_are_left_alone() {
    let mut r = route("theirs", json!([{"backendRefs": [backend("stable", 1)]}]));
    r["spec"]["parentRefs"] = json!([{"name": "foreign"}]);
    let t = run(&world(vec![r]));
    assert!(t.routes.is_empty());
    assert!(t.route_status.is_empty());
    assert_eq!(t.gateway_status.len(), 1, "only our Gateway gets a status");
}

#[test]
fn an_invalid_spec_is_refused_and_the_last_good_rules_keep_serving() {
    let good = route(
        "shop",
        json!([{"matches": [{"headers": [{"name": "x-a", "type": "RegularExpression", "value": "ok.*"}]}],
                "backendRefs": [backend("stable", 1)]}]),
    );
    let t1 = run(&world(vec![good]));
    assert_eq!(t1.routes.len(), 1);
    let bad = route(
        "shop",
        json!([{"matches": [{"headers": [{"name": "x-a", "type": "RegularExpression", "value": "(unclosed"}]}],
                "backendRefs": [backend("canary", 1)]}]),
    );
    let w = world(vec![bad]);
    let t2 = translate(&w, &[], &proxy(), &t1.good);
    let (ok, reason) = accepted(&t2, "default/shop");
    assert!(!ok);
    assert_eq!(reason, "UnsupportedValue");
    assert_eq!(t2.routes.len(), 1);
    assert_eq!(
        t2.routes[0].versions[0].name, "stable",
        "the last good rules"
    );
    // With nothing good before, nothing is served.
    assert!(run(&w).routes.is_empty());
}

#[test]
fn precedence_follows_gateway_api_not_rule_order() {
    // Argo's plugin appends its header rule after the weighted one; Gateway API precedence
    // (more header matches win) must still send matching requests to it.
    let w = world(vec![route(
        "shop",
        json!([
            {"backendRefs": [backend("stable", 100), backend("canary", 0)]},
            {"name": "canary-route", "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                "headers": [{"name": "X-Canary", "value": "yes"}]}],
             "backendRefs": [backend("canary", 1)]},
            {"matches": [{"path": {"type": "Exact", "value": "/exact"}}],
             "backendRefs": [backend("empty", 1)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api/"}, "method": "POST",
                "queryParams": [{"name": "v", "value": "2"}]}],
             "backendRefs": [backend("canary", 1)]}
        ]),
    )]);
    let t = run(&w);
    let mut cfg =
        Config::from_yaml_with("listeners: [{address: \"127.0.0.1:0\"}]\n", true).unwrap();
    cfg.routes = t.routes;
    let router = Router::new(&cfg);
    let mut rng = rand::rng();
    let pick = |path: &str, method: &http::Method, headers: &http::HeaderMap| {
        let d = router
            .decide_for(
                Some("any.example"),
                &crate::router::Line::parse(path, method),
                headers,
                None,
                &mut rand::rng(),
            )
            .unwrap();
        format!(
            "{}:{}",
            d.route.name(),
            d.route.config.versions[d.version].name
        )
    };
    let _ = &mut rng;
    let none = http::HeaderMap::new();
    let mut canary = http::HeaderMap::new();
    canary.insert("x-canary", "yes".parse().unwrap());
    let get = http::Method::GET;
    let post = http::Method::POST;
    assert_eq!(pick("/", &get, &none), "default-shop-0:stable");
    assert_eq!(pick("/", &get, &canary), "default-shop-1:canary");
    assert_eq!(
        pick("/exact", &get, &canary),
        "default-shop-2:empty",
        "Exact beats headers"
    );
    assert_eq!(pick("/exact/more", &get, &none), "default-shop-0:stable");
    assert_eq!(pick("/api/x?v=2", &post, &none), "default-shop-3:canary");
    assert_eq!(pick("/api?a=1&v=2", &post, &none), "default-shop-3:canary");
    assert_eq!(pick("/api/x?v=3", &post, &none), "default-shop-0:stable");
    assert_eq!(pick("/api/x?v=2", &get, &none), "default-shop-0:stable");
    assert_eq!(
        pick("/apix?v=2", &post, &none),
        "default-shop-0:stable",
        "element-wise prefix"
    );
}

#[test]
fn a_file_route_on_the_same_host_and_path_wins() {
    let w = world(vec![route(
        "shop",
        json!([{"backendRefs": [backend("stable", 1)]}]),
    )]);
    let file = Config::from_yaml(
        "listeners: [{address: \"127.0.0.1:0\"}]\nroutes:\n- name: web\n  match: {path_prefix: /}\n  versions:\n    v1: {endpoints: [\"127.0.0.1:9\"]}\n",
    )
    .unwrap();
    let t = translate(&w, &file.routes, &proxy(), &BTreeMap::new());
    assert!(t.routes.is_empty());
    assert_eq!(
        accepted(&t, "default/shop"),
        (false, "OverriddenByFile".into())
    );
}

#[test]
fn long_names_are_cut_and_hashed_and_stay_distinct() {
    let a = route_name("default", &"a".repeat(80), 0);
    let b = route_name("default", &"a".repeat(80), 1);
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
    assert_eq!(route_name("team.x", "Shop.v2", 3), "team_x-shop_v2-3");
}

#[test]
fn listener_hostnames_narrow_the_routes_hosts() {
    let mut w = world(vec![]);
    let gw = w.gateways.get_mut("default/gw").unwrap();
    gw.spec.listeners[0].hostname = Some("*.example.com".into());
    let mut r = route("shop", json!([{"backendRefs": [backend("stable", 1)]}]));
    r["spec"]["hostnames"] = json!(["shop.example.com", "other.test"]);
    let r: HttpRoute = serde_json::from_value(r).unwrap();
    w.routes.insert("default/shop".into(), r);
    let t = run(&w);
    let k = t.routes[0].kube.as_ref().unwrap();
    assert_eq!(k.hosts, vec![HostMatch::Exact("shop.example.com".into())]);
    assert_eq!(t.gateway_status["default/gw"].listeners[0].1, 1);
    let mut r2 = route("nomatch", json!([{"backendRefs": [backend("stable", 1)]}]));
    r2["spec"]["hostnames"] = json!(["other.test"]);
    let r2: HttpRoute = serde_json::from_value(r2).unwrap();
    w.routes.insert("default/nomatch".into(), r2);
    let t = run(&w);
    assert_eq!(
        accepted(&t, "default/nomatch"),
        (false, "NoMatchingListenerHostname".into())
    );
}

#[test]
fn rule_timeouts_bound_the_response() {
    let w = world(vec![route(
        "shop",
        json!([{"backendRefs": [backend("stable", 1)], "timeouts": {"request": "10s", "backendRequest": "2s500ms"}},
               {"backendRefs": [backend("stable", 1)], "timeouts": {"request": "0s"}},
               {"backendRefs": [backend("stable", 1)], "timeouts": {"request": "soon"}}]),
    )]);
    let t = run(&w);
    let (ok, reason) = accepted(&t, "default/shop");
    assert!(
        !ok && reason == "UnsupportedValue",
        "an unparsable duration is refused"
    );
    let w = world(vec![route(
        "shop",
        json!([{"backendRefs": [backend("stable", 1)], "timeouts": {"request": "10s", "backendRequest": "2s500ms"}},
               {"backendRefs": [backend("stable", 1)], "timeouts": {"request": "0s"}}]),
    )]);
    let t = run(&w);
    assert_eq!(
        t.routes[0].timeouts.response,
        std::time::Duration::from_millis(2500)
    );
    assert_eq!(t.routes[1].timeouts.response, proxy().timeouts.response);
}

#[test]
fn prefix_replacement_follows_gateway_api() {
    use crate::config::PathModifier::*;
    let cases = [
        (
            ReplacePrefixMatch("/bar".into()),
            "/foo/baz",
            Some("/foo"),
            "/bar/baz",
        ),
        (
            ReplacePrefixMatch("/bar".into()),
            "/foo",
            Some("/foo"),
            "/bar",
        ),
        (
            ReplacePrefixMatch("/".into()),
            "/foo/baz",
            Some("/foo"),
            "/baz",
        ),
        (ReplacePrefixMatch("/".into()), "/foo", Some("/foo"), "/"),
        (
            ReplacePrefixMatch("/bar/".into()),
            "/foo/baz",
            Some("/foo"),
            "/bar/baz",
        ),
        (
            ReplacePrefixMatch("/bar".into()),
            "/baz",
            Some(""),
            "/bar/baz",
        ),
        (ReplaceFullPath("/x".into()), "/foo/baz", Some("/foo"), "/x"),
    ];
    for (m, path, prefix, want) in cases {
        assert_eq!(m.apply(path, prefix), want, "{m:?} {path} {prefix:?}");
    }
}

#[test]
fn redirects_and_rewrites_are_checked() {
    let w = world(vec![route(
        "shop",
        json!([{"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}]),
    )]);
    let (ok, reason) = accepted(&run(&w), "default/shop");
    assert!(
        !ok && reason == "UnsupportedValue",
        "ReplacePrefixMatch needs PathPrefix matches"
    );
    let w = world(vec![route(
        "shop",
        json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 307}}]}]),
    )]);
    assert!(
        !accepted(&run(&w), "default/shop").0,
        "307 is not a Gateway API redirect code"
    );
    let w = world(vec![route(
        "shop",
        json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}]),
    )]);
    let t = run(&w);
    let r = t.routes[0].kube.as_ref().unwrap().redirect.clone().unwrap();
    assert_eq!((r.scheme.as_deref(), r.status), (Some("https"), 301));
}

#[test]
fn slices_are_found_by_their_service_and_follow_relabels_and_deletes() {
    let mut w = world(vec![route(
        "shop",
        json!([{"backendRefs": [backend("stable", 50), backend("canary", 50)]}]),
    )]);
    // The canary's slice is relabelled to the stable Service: the canary has no endpoint.
    let mut moved = w.slices["default/canary-abc"].clone();
    moved
        .metadata
        .labels
        .insert(SERVICE_NAME_LABEL.into(), "stable".into());
    w.put_slice("default/canary-abc".into(), moved);
    let t = run(&w);
    let r = &t.routes[0];
    let eps: Vec<String> = r.versions[0]
        .endpoints
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(eps, vec!["127.0.0.2:9000", "127.0.0.3:9000"]);
    assert_eq!(
        r.kube.as_ref().unwrap().unservable[1],
        Some(Unservable::NoEndpoints)
    );
    w.remove_slice("default/canary-abc");
    w.remove_slice("default/stable-abc");
    let t = run(&w);
    assert!(t.routes[0].versions[0].endpoints.is_empty());
}

#[test]
fn names_that_collide_across_namespaces_stay_unique() {
    let mut a = route("shop", json!([{"backendRefs": [backend("stable", 1)]}]));
    a["metadata"]["namespace"] = json!("team-x");
    a["spec"]["parentRefs"] = json!([{"name": "gw", "namespace": "default"}]);
    let mut b = route("x-shop", json!([{"backendRefs": [backend("stable", 1)]}]));
    b["metadata"]["namespace"] = json!("team");
    b["spec"]["parentRefs"] = json!([{"name": "gw", "namespace": "default"}]);
    let mut w = world(vec![a, b]);
    for gw in w.gateways.values_mut() {
        gw.spec.listeners[0].allowed_routes =
            serde_json::from_value(json!({"namespaces": {"from": "All"}})).unwrap();
    }
    let t = run(&w);
    let names: Vec<&str> = t.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 2);
    assert_eq!(names[0], "team-x-shop-0", "the older keeps its name");
    assert!(
        names[1].starts_with("team-x-shop-0-") && names[1].len() <= 64,
        "{names:?}"
    );
}
