//! One test per validation rule: each feeds a config with exactly one problem and checks
//! the error names the right field and says what is wrong.

use super::*;
use std::path::PathBuf;
use std::time::Duration;

const GOOD: &str = r#"
listeners:
  - address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9901
routes:
  - name: shop
    match: { host: shop.example.com, path_prefix: / }
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"], weight: 10 }
    rules:
      - { to: canary, when: { header: { name: x-canary, equals: always } } }
      - { to: stable, when: { header: { name: x-canary, equals: never } } }
      - { to: canary, when: { cookie: { name: canary, equals: always } } }
      - { to: canary, when: { header: { name: x-user-group, matches: "^(beta|staff)$" } } }
    sticky:
      key: { cookie: session }
      assign_cookie: canaryd_uid
"#;

/// Errors for `GOOD` with `from` replaced by `to` (the replacement must apply).
fn errors_with(from: &str, to: &str) -> Vec<FieldError> {
    assert!(GOOD.contains(from), "test bug: {from:?} not in GOOD");
    let text = GOOD.replacen(from, to, 1);
    match Config::from_yaml(&text) {
        Ok(_) => panic!("expected an error after replacing {from:?} with {to:?}"),
        Err(e) => e.errors,
    }
}

#[track_caller]
fn assert_error(errors: &[FieldError], field: &str, needle: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.field == field && e.message.contains(needle)),
        "no error at {field} containing {needle:?}; got:\n{}",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn design_example_is_valid_and_primary_gets_the_rest() {
    let cfg = Config::from_yaml(GOOD).unwrap();
    let r = &cfg.routes[0];
    assert_eq!(r.versions[0].name, "stable");
    assert_eq!(r.versions[0].weight, Weight(9000));
    assert_eq!(r.versions[1].weight, Weight(1000));
    assert_eq!(r.rules.len(), 4);
    assert_eq!(r.host, Some(HostMatch::Exact("shop.example.com".into())));
    assert_eq!(
        cfg.admin.unwrap().address,
        "127.0.0.1:9901".parse().unwrap()
    );
    assert_eq!(r.timeouts, Timeouts::default());
}

#[test]
fn unknown_field_is_rejected_with_its_name() {
    let e = errors_with("weight: 10", "wieght: 10");
    assert!(
        e[0].message.contains("unknown field `wieght`"),
        "{:?}",
        e[0]
    );
    assert!(e[0].field.contains("routes[0]"), "{:?}", e[0]);
}

#[test]
fn yaml_syntax_error_has_a_location() {
    let e = Config::from_yaml("listeners: [\n").unwrap_err().errors;
    assert!(e[0].to_string().contains("line"), "{:?}", e[0]);
}

#[test]
fn listeners_are_required() {
    let e = errors_with("  - address: 127.0.0.1:8080\n", "");
    assert_error(&e, "listeners", "at least one listener");
}

#[test]
fn listener_address_must_be_ip_port() {
    let e = errors_with("address: 127.0.0.1:8080", "address: localhost");
    assert_error(&e, "listeners[0].address", "not an IP:port");
}

#[test]
fn duplicate_listener_is_rejected() {
    let e = errors_with(
        "  - address: 127.0.0.1:8080\n",
        "  - address: 127.0.0.1:8080\n  - address: 127.0.0.1:8080\n",
    );
    assert_error(&e, "listeners[1].address", "listed twice");
}

#[test]
fn tls_listener_paths_and_sni_are_validated() {
    let cfg = Config::from_yaml(&GOOD.replacen(
        "address: 127.0.0.1:8080",
        "address: 127.0.0.1:8443\n    tls: { cert: a.crt, key: a.key, sni: [{ host: \"*.example.com\", cert: b.crt, key: b.key }] }",
        1,
    ))
    .unwrap();
    let tls = cfg.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.cert, PathBuf::from("a.crt"));
    assert_eq!(tls.sni[0].host, HostMatch::Wildcard(".example.com".into()));
    let e = errors_with(
        "address: 127.0.0.1:8080",
        "address: 127.0.0.1:8443\n    tls: { cert: \"\", key: a.key, sni: [{ host: \"http://x\", cert: b, key: c }] }",
    );
    assert_error(&e, "listeners[0].tls.cert", "is empty");
    assert_error(&e, "listeners[0].tls.sni[0].host", "not a host name");
}

#[test]
fn upstream_protocol_and_tls_are_validated() {
    let cfg = Config::from_yaml(&GOOD.replacen(
        "canary: { endpoints: [\"127.0.0.1:9002\"], weight: 10 }",
        "canary: { endpoints: [\"127.0.0.1:9002\"], weight: 10, protocol: h2c, tls: { ca: ca.pem, server_name: api.internal } }",
        1,
    ))
    .unwrap();
    let up = &cfg.routes[0].versions[1].upstream;
    assert_eq!(up.protocol, Protocol::H2);
    assert_eq!(
        up.tls.as_ref().unwrap().server_name.as_deref(),
        Some("api.internal")
    );
    assert_eq!(cfg.routes[0].versions[0].upstream, Upstream::default());
    let e = errors_with("weight: 10 }", "weight: 10, protocol: http3 }");
    assert_error(&e, "routes[0].versions.canary.protocol", "not a protocol");
    let e = errors_with(
        "weight: 10 }",
        "weight: 10, tls: { server_name: \"not a name!\" } }",
    );
    assert_error(
        &e,
        "routes[0].versions.canary.tls.server_name",
        "not a DNS name",
    );
}

#[test]
fn admin_address_is_validated() {
    let e = errors_with("address: 127.0.0.1:9901", "address: nine");
    assert_error(&e, "admin.address", "not an IP:port");
    let e = errors_with("address: 127.0.0.1:9901", "address: 127.0.0.1:8080");
    assert_error(&e, "admin.address", "also a proxy listener");
}

#[test]
fn timeouts_must_be_positive_durations() {
    let base = "listeners:\n  - address: 127.0.0.1:8080\n";
    let e = Config::from_yaml(&format!(
        "{base}proxy: {{ timeouts: {{ connect: soon }} }}\n{}",
        GOOD.split_once("routes:")
            .map(|(_, r)| format!("routes:{r}"))
            .unwrap()
    ))
    .unwrap_err()
    .errors;
    assert_error(&e, "proxy.timeouts.connect", "not a duration");
    let e = errors_with("    sticky:", "    timeouts: { response: 0s }\n    sticky:");
    assert_error(&e, "routes[0].timeouts.response", "greater than zero");
}

#[test]
fn route_timeouts_override_defaults() {
    let text = GOOD.replacen(
        "    sticky:",
        "    timeouts: { response: 250ms }\n    sticky:",
        1,
    );
    let cfg = Config::from_yaml(&text).unwrap();
    assert_eq!(cfg.routes[0].timeouts.response, Duration::from_millis(250));
    assert_eq!(cfg.routes[0].timeouts.connect, DEFAULT_CONNECT_TIMEOUT);
}

#[test]
fn route_name_charset() {
    let e = errors_with("name: shop", "name: Shop Front");
    assert_error(&e, "routes[0].name", "a-z, 0-9");
}

#[test]
fn route_names_are_unique() {
    let route = GOOD.split_once("routes:\n").unwrap().1;
    let second = route.replacen("shop.example.com", "other.example.com", 1);
    let text = format!(
        "{}routes:\n{route}{second}",
        GOOD.split_once("routes:\n").unwrap().0
    );
    let e = Config::from_yaml(&text).unwrap_err().errors;
    assert_error(&e, "routes[1].name", "used twice");
}

#[test]
fn duplicate_match_is_rejected() {
    let route = GOOD.split_once("routes:\n").unwrap().1;
    let second = route.replacen("name: shop", "name: shop2", 1);
    let text = format!(
        "{}routes:\n{route}{second}",
        GOOD.split_once("routes:\n").unwrap().0
    );
    let e = Config::from_yaml(&text).unwrap_err().errors;
    assert_error(
        &e,
        "routes[1].match",
        "same host and path_prefix as routes[0]",
    );
}

#[test]
fn host_must_be_a_host_name_or_wildcard() {
    let e = errors_with(
        "host: shop.example.com",
        "host: \"http://shop.example.com:80\"",
    );
    assert_error(&e, "routes[0].match.host", "not a host name");
    let cfg =
        Config::from_yaml(&GOOD.replacen("host: shop.example.com", "host: \"*.Example.com\"", 1))
            .unwrap();
    assert_eq!(
        cfg.routes[0].host,
        Some(HostMatch::Wildcard(".example.com".into()))
    );
}

#[test]
fn path_prefix_starts_with_slash() {
    let e = errors_with("path_prefix: /", "path_prefix: api");
    assert_error(&e, "routes[0].match.path_prefix", "must start with `/`");
}

#[test]
fn versions_are_required() {
    let e = errors_with(
        "      stable: { endpoints: [\"127.0.0.1:9001\"] }\n      canary: { endpoints: [\"127.0.0.1:9002\"], weight: 10 }\n",
        "      {}\n",
    );
    assert!(e.iter().any(|e| e.field.starts_with("routes[0]")), "{e:?}");
}

#[test]
fn version_names_charset_and_unique() {
    let e = errors_with("canary: { endpoints", "Canary!: { endpoints");
    assert_error(&e, "routes[0].versions.Canary!", "version name");
    let e = errors_with("canary: { endpoints", "stable: { endpoints");
    assert_error(&e, "routes[0].versions.stable", "listed twice");
}

#[test]
fn endpoints_are_required_and_host_port() {
    let e = errors_with("endpoints: [\"127.0.0.1:9001\"]", "endpoints: []");
    assert_error(
        &e,
        "routes[0].versions.stable.endpoints",
        "at least one endpoint",
    );
    let e = errors_with("\"127.0.0.1:9001\"", "\"http://127.0.0.1:9001\"");
    assert_error(&e, "routes[0].versions.stable.endpoints[0]", "has a scheme");
    let e = errors_with("\"127.0.0.1:9001\"", "\"127.0.0.1\"");
    assert_error(&e, "routes[0].versions.stable.endpoints[0]", "no port");
    let e = errors_with("\"127.0.0.1:9001\"", "\"127.0.0.1:0\"");
    assert_error(&e, "routes[0].versions.stable.endpoints[0]", "port 0");
    let e = errors_with("\"127.0.0.1:9001\"", "\"a b:80\"");
    assert_error(
        &e,
        "routes[0].versions.stable.endpoints[0]",
        "not host:port",
    );
}

#[test]
fn dns_and_ipv6_endpoints_are_accepted() {
    let text = GOOD.replacen(
        "\"127.0.0.1:9001\"",
        "\"app.default.svc:8080\", \"[::1]:9001\"",
        1,
    );
    let cfg = Config::from_yaml(&text).unwrap();
    assert_eq!(
        cfg.routes[0].versions[0].endpoints[0].to_string(),
        "app.default.svc:8080"
    );
    assert_eq!(
        cfg.routes[0].versions[0].endpoints[1].to_string(),
        "[::1]:9001"
    );
}

#[test]
fn primary_takes_no_weight() {
    let e = errors_with("\"127.0.0.1:9001\"] }", "\"127.0.0.1:9001\"], weight: 90 }");
    assert_error(&e, "routes[0].versions.stable.weight", "primary");
}

#[test]
fn weight_range_and_resolution() {
    let e = errors_with("weight: 10", "weight: 120");
    assert_error(&e, "routes[0].versions.canary.weight", "from 0 to 100");
    let e = errors_with("weight: 10", "weight: -1");
    assert_error(&e, "routes[0].versions.canary.weight", "from 0 to 100");
    let e = errors_with("weight: 10", "weight: 0.001");
    assert_error(&e, "routes[0].versions.canary.weight", "0.01 percent");
    let cfg = Config::from_yaml(&GOOD.replacen("weight: 10", "weight: 0.01", 1)).unwrap();
    assert_eq!(cfg.routes[0].versions[1].weight, Weight(1));
    assert_eq!(cfg.routes[0].versions[0].weight.to_string(), "99.99");
}

#[test]
fn weights_sum_at_most_100() {
    let e = errors_with(
        "      canary: { endpoints: [\"127.0.0.1:9002\"], weight: 10 }\n",
        "      canary: { endpoints: [\"127.0.0.1:9002\"], weight: 60.5 }\n      beta: { endpoints: [\"127.0.0.1:9003\"], weight: 40 }\n",
    );
    assert_error(&e, "routes[0].versions", "sum to 100.50%");
}

#[test]
fn rule_target_must_be_a_version() {
    let e = errors_with(
        "{ to: canary, when: { header: { name: x-canary, equals: always",
        "{ to: canery, when: { header: { name: x-canary, equals: always",
    );
    assert_error(
        &e,
        "routes[0].rules[0].to",
        "unknown version `canery`; this route has: stable, canary",
    );
}

#[test]
fn rule_needs_a_condition() {
    let e = errors_with(
        "{ to: stable, when: { header: { name: x-canary, equals: never } } }",
        "{ to: stable, when: {} }",
    );
    assert_error(&e, "routes[0].rules[1].when", "at least one condition");
}

#[test]
fn header_condition_needs_exactly_one_test() {
    let e = errors_with("{ name: x-canary, equals: always }", "{ name: x-canary }");
    assert_error(&e, "routes[0].rules[0].when.header", "needs one test");
    let e = errors_with(
        "{ name: x-canary, equals: always }",
        "{ name: x-canary, equals: a, present: true }",
    );
    assert_error(&e, "routes[0].rules[0].when.header", "more than one test");
}

#[test]
fn header_name_must_be_valid() {
    let e = errors_with(
        "{ name: x-canary, equals: always }",
        "{ name: \"x canary\", equals: always }",
    );
    assert_error(
        &e,
        "routes[0].rules[0].when.header.name",
        "not a valid HTTP header name",
    );
}

#[test]
fn regex_must_compile() {
    let e = errors_with("\"^(beta|staff)$\"", "\"^(beta|staff$\"");
    assert_error(
        &e,
        "routes[0].rules[3].when.header.matches",
        "not a valid regular expression",
    );
}

#[test]
fn cookie_condition_rules() {
    let e = errors_with(
        "{ name: canary, equals: always }",
        "{ name: \"can ary\", equals: always }",
    );
    assert_error(&e, "routes[0].rules[2].when.cookie.name", "cookie name");
    let e = errors_with(
        "{ name: canary, equals: always }",
        "{ name: canary, present: true }",
    );
    assert!(e[0].message.contains("unknown field `present`"), "{e:?}");
}

#[test]
fn list_of_conditions_is_anded_and_indexed() {
    let text = GOOD.replacen(
        "{ header: { name: x-canary, equals: always } }",
        "{ header: [{ name: x-canary, equals: always }, { name: x-b }] }",
        1,
    );
    let e = Config::from_yaml(&text).unwrap_err().errors;
    assert_error(&e, "routes[0].rules[0].when.header[1]", "needs one test");
}

#[test]
fn rule_names_are_unique_and_labelled() {
    let e = errors_with(
        "- { to: canary, when: { cookie",
        "- { name: Bad Name, to: canary, when: { cookie",
    );
    assert_error(&e, "routes[0].rules[2].name", "rule name");
}

#[test]
fn sticky_key_needs_exactly_one_source() {
    let e = errors_with(
        "key: { cookie: session }",
        "key: { cookie: session, header: x-user }",
    );
    assert_error(&e, "routes[0].sticky.key", "exactly one");
    let e = errors_with("key: { cookie: session }", "key: {}");
    assert_error(&e, "routes[0].sticky.key", "exactly one");
    let e = errors_with("assign_cookie: canaryd_uid", "assign_cookie: \"a;b\"");
    assert_error(&e, "routes[0].sticky.assign_cookie", "cookie name");
}

#[test]
fn a_mirror_with_its_defaults_and_every_field() {
    let text = GOOD.replacen(
        "    sticky:",
        "    mirror: { to: canary, percent: 5 }\n    sticky:",
        1,
    );
    let c = Config::from_yaml(&text).unwrap();
    let m = c.routes[0].mirror.as_ref().unwrap();
    assert_eq!((m.to, m.percent), (1, Weight(500)));
    assert_eq!(m.max_body, 1024 * 1024);
    assert_eq!(m.host_suffix, "-shadow");
    assert_eq!(
        m.compare.sample,
        Weight(1000),
        "10 % of copies compared by default"
    );
    assert!(m.copies(&http::Method::GET) && !m.copies(&http::Method::POST));
    let text = GOOD.replacen(
        "    sticky:",
        "    mirror:\n      to: canary\n      percent: 100\n      methods: [post]\n      max_body: 64KiB\n      host_suffix: .shadow\n      when: { header: { name: x-dark, present: true } }\n      compare: { sample: 0, headers: [etag], ignore: [ts, data.id], max_body: 1MiB }\n    sticky:",
        1,
    );
    let c = Config::from_yaml(&text).unwrap();
    let m = c.routes[0].mirror.as_ref().unwrap();
    assert!(m.copies(&http::Method::POST) && !m.copies(&http::Method::GET));
    assert_eq!((m.max_body, m.compare.max_body), (64 * 1024, 1024 * 1024));
    assert_eq!(m.conditions.len(), 1);
    assert_eq!(m.compare.ignore, ["ts", "data.id"]);
}

#[test]
fn mirror_errors_name_their_field() {
    let bad = |m: &str| errors_with("    sticky:", &format!("    mirror: {m}\n    sticky:"));
    assert_error(
        &bad("{ to: nope, percent: 5 }"),
        "routes[0].mirror.to",
        "unknown version",
    );
    assert_error(
        &bad("{ to: stable, percent: 5 }"),
        "routes[0].mirror.to",
        "primary",
    );
    assert_error(
        &bad("{ to: canary, percent: 101 }"),
        "routes[0].mirror.percent",
        "",
    );
    assert_error(
        &bad("{ to: canary, percent: 5, max_body: lots }"),
        "routes[0].mirror.max_body",
        "not a size",
    );
    assert_error(
        &bad("{ to: canary, percent: 5, methods: [\"GE T\"] }"),
        "routes[0].mirror.methods[0]",
        "not an HTTP method",
    );
    assert_error(
        &bad("{ to: canary, percent: 5, compare: { ignore: [\"a..b\"] } }"),
        "routes[0].mirror.compare.ignore[0]",
        "dotted path",
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = GOOD
        .replacen("weight: 10", "weight: 101", 1)
        .replacen("path_prefix: /", "path_prefix: x", 1)
        .replacen("address: 127.0.0.1:8080", "address: nope", 1);
    let e = Config::from_yaml(&text).unwrap_err().errors;
    assert_error(&e, "routes[0].versions.canary.weight", "from 0 to 100");
    assert_error(&e, "routes[0].match.path_prefix", "must start");
    assert_error(&e, "listeners[0].address", "not an IP:port");
}

#[test]
fn analysis_thresholds_are_validated() {
    let with = |a: &str| Config::from_yaml(&format!("{GOOD}analysis: {{ {a} }}\n"));
    let cfg =
        with("min_requests: 20, max_success_rate_drop: 0.5, max_p99_ratio: 2, latency_floor: 10ms")
            .unwrap();
    assert_eq!(cfg.analysis.min_requests, 20);
    assert_eq!(cfg.analysis.latency_floor, Duration::from_millis(10));
    assert_eq!(
        Config::from_yaml(GOOD).unwrap().analysis,
        AnalysisSettings::default()
    );
    assert_error(
        &with("min_requests: 0").unwrap_err().errors,
        "analysis.min_requests",
        "at least 1",
    );
    assert_error(
        &with("max_success_rate_drop: 150").unwrap_err().errors,
        "analysis.max_success_rate_drop",
        "percentage points",
    );
    assert_error(
        &with("max_p99_ratio: 0.5").unwrap_err().errors,
        "analysis.max_p99_ratio",
        "at least 1.0",
    );
    assert_error(
        &with("latency_floor: fast").unwrap_err().errors,
        "analysis.latency_floor",
        "not a duration",
    );
}

#[test]
fn admin_token_must_not_be_empty() {
    let e = errors_with(
        "address: 127.0.0.1:9901",
        "address: 127.0.0.1:9901\n  token: \"\"",
    );
    assert_error(&e, "admin.token", "is empty");
}

#[test]
fn connection_limits_and_timeouts_are_validated() {
    let with = |p: &str| {
        Config::from_yaml(&GOOD.replacen("routes:", &format!("proxy: {{ {p} }}\nroutes:"), 1))
    };
    let cfg = with("max_connections: 50, header_timeout: 5s, drain_timeout: 1m").unwrap();
    assert_eq!(cfg.proxy.max_connections, 50);
    assert_eq!(cfg.proxy.header_timeout, Duration::from_secs(5));
    assert_eq!(cfg.proxy.drain_timeout, Duration::from_secs(60));
    let d = Config::from_yaml(GOOD).unwrap().proxy;
    assert_eq!(
        (d.max_connections, d.header_timeout, d.drain_timeout),
        (
            DEFAULT_MAX_CONNECTIONS,
            DEFAULT_HEADER_TIMEOUT,
            DEFAULT_DRAIN_TIMEOUT
        )
    );
    assert_error(
        &with("max_connections: 0").unwrap_err().errors,
        "proxy.max_connections",
        "at least 1",
    );
    assert_error(
        &with("header_timeout: soon").unwrap_err().errors,
        "proxy.header_timeout",
        "not a duration",
    );
    assert_error(
        &with("drain_timeout: 0s").unwrap_err().errors,
        "proxy.drain_timeout",
        "greater than zero",
    );
}

#[test]
fn resilience_settings_parse_with_defaults() {
    let text = GOOD.replace(
        "    sticky:\n",
        "    fallback: true
    timeouts: { idle: 15s }
    retries: { attempts: 2, on_status: [502, 503], budget_percent: 10 }
    outlier_detection: { consecutive_failures: 3, base_ejection_time: 10s }
    health_check: { path: /healthz, interval: 2s }
    sticky:\n",
    );
    let cfg = Config::from_yaml(&text).unwrap();
    let r = &cfg.routes[0];
    assert!(r.fallback);
    assert_eq!(r.timeouts.idle, Duration::from_secs(15));
    assert_eq!(r.timeouts.connect, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(r.retries.attempts, 2);
    assert_eq!(r.retries.on_status, vec![502, 503]);
    assert_eq!(r.retries.budget_percent, 10.0);
    assert_eq!(r.outlier.consecutive_failures, 3);
    assert_eq!(r.outlier.base_ejection_time, Duration::from_secs(10));
    assert_eq!(r.outlier.max_ejection_percent, 50.0);
    let hc = r.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.interval, hc.timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
    assert_eq!((hc.healthy_threshold, hc.unhealthy_threshold), (2, 3));
    // Without the blocks: connect failures are retried once, detection is on, no check.
    let plain = Config::from_yaml(GOOD).unwrap();
    assert_eq!(plain.routes[0].retries, RetryPolicy::default());
    assert_eq!(plain.routes[0].retries.attempts, 1);
    assert!(!plain.routes[0].fallback);
    assert!(plain.routes[0].health_check.is_none());
}

#[test]
fn resilience_settings_are_validated() {
    let at = "    sticky:\n";
    let e = errors_with(
        at,
        "    retries: { attempts: 9, on_status: [404] }\n    sticky:\n",
    );
    assert_error(&e, "routes[0].retries.attempts", "use 0 to 5");
    assert_error(&e, "routes[0].retries.on_status[0]", "404 is not a 5xx");
    let e = errors_with(at, "    retries: { budget_percent: 150 }\n    sticky:\n");
    assert_error(&e, "routes[0].retries.budget_percent", "0 to 100");
    let e = errors_with(
        at,
        "    outlier_detection: { base_ejection_time: 1m, max_ejection_time: 10s }\n    sticky:\n",
    );
    assert_error(
        &e,
        "routes[0].outlier_detection.max_ejection_time",
        "shorter than",
    );
    let e = errors_with(
        at,
        "    health_check: { path: healthz, interval: 1s, timeout: 2s, healthy_threshold: 0 }\n    sticky:\n",
    );
    assert_error(&e, "routes[0].health_check.path", "not a request path");
    assert_error(
        &e,
        "routes[0].health_check.timeout",
        "not be longer than `interval`",
    );
    assert_error(&e, "routes[0].health_check.healthy_threshold", "at least 1");
    let e = errors_with(at, "    timeouts: { idle: soon }\n    sticky:\n");
    assert_error(&e, "routes[0].timeouts.idle", "not a duration");
}

#[test]
fn fallback_needs_a_second_version() {
    let text = GOOD
        .replace(
            "      canary: { endpoints: [\"127.0.0.1:9002\"], weight: 10 }\n",
            "",
        )
        .replace("    rules:\n", "    fallback: true\n    rules:\n")
        .replace("to: canary", "to: stable");
    let e = Config::from_yaml(&text).unwrap_err().errors;
    assert_error(&e, "routes[0].fallback", "at least two versions");
}

#[test]
fn client_ip_rules_and_trusted_hops_are_validated() {
    let ok = GOOD.replace(
        "    rules:\n",
        "    rules:\n      - { to: canary, when: { client_ip: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\"] } }\n",
    );
    let cfg = Config::from_yaml(&ok).unwrap();
    assert!(matches!(
        &cfg.routes[0].rules[0].conditions[0],
        Condition::ClientIp(n) if n.len() == 3
    ));
    let e = errors_with(
        "    rules:\n",
        "    rules:\n      - { to: canary, when: { client_ip: [10.0.0.1/8, nowhere] } }\n",
    );
    assert_error(
        &e,
        "routes[0].rules[0].when.client_ip[0]",
        "did you mean 10.0.0.0/8",
    );
    assert_error(&e, "routes[0].rules[0].when.client_ip[1]", "not a network");
    let e = errors_with(
        "    rules:\n",
        "    rules:\n      - { to: canary, when: { client_ip: [] } }\n",
    );
    assert_error(&e, "routes[0].rules[0].when.client_ip", "is empty");
    let e = errors_with("admin:\n", "proxy: { trusted_hops: 40 }\nadmin:\n");
    assert_error(&e, "proxy.trusted_hops", "0 to 16");
}

#[test]
fn upgrades_default_to_websocket_and_routes_override_them() {
    let cfg = Config::from_yaml(GOOD).unwrap();
    assert_eq!(cfg.proxy.upgrades, Upgrades(vec!["websocket".into()]));
    assert_eq!(cfg.routes[0].upgrades, Upgrades(vec!["websocket".into()]));
    let text = GOOD.replacen(
        "routes:\n",
        "proxy: { upgrades: [WebSocket, Foo/2] }\nroutes:\n",
        1,
    );
    let cfg = Config::from_yaml(&text).unwrap();
    assert_eq!(
        cfg.routes[0].upgrades,
        Upgrades(vec!["websocket".into(), "foo/2".into()]),
        "the proxy list, lowercased, is every route's default"
    );
    let text = GOOD.replacen("    sticky:", "    upgrades: []\n    sticky:", 1);
    let cfg = Config::from_yaml(&text).unwrap();
    assert_eq!(cfg.routes[0].upgrades, Upgrades(vec![]));
}

#[test]
fn h2c_is_never_an_allowed_upgrade() {
    let errs = errors_with(
        "routes:\n",
        "proxy: { upgrades: [websocket, H2C] }\nroutes:\n",
    );
    assert_error(&errs, "proxy.upgrades[1]", "`h2c` is never tunnelled");
    let errs = errors_with("    sticky:", "    upgrades: [h2c]\n    sticky:");
    assert_error(&errs, "routes[0].upgrades[0]", "`h2c` is never tunnelled");
    let errs = errors_with("    sticky:", "    upgrades: [\"web socket\"]\n    sticky:");
    assert_error(
        &errs,
        "routes[0].upgrades[0]",
        "not an upgrade protocol token",
    );
}

#[test]
fn every_error_is_shown_one_per_line_with_its_field() {
    let errs = Config::from_yaml(&GOOD.replacen("weight: 10", "weight: 150", 1).replacen(
        "assign_cookie: canaryd_uid",
        "assign_cookie: \"bad cookie\"",
        1,
    ))
    .unwrap_err();
    let text = errs.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), errs.errors.len(), "{text}");
    assert!(lines.len() >= 2, "{text}");
    for (line, e) in lines.iter().zip(&errs.errors) {
        assert!(line.starts_with(&e.field), "{line}");
    }
}

#[test]
fn the_admin_token_never_prints() {
    let text = GOOD.replacen(
        "  address: 127.0.0.1:9901",
        "  address: 127.0.0.1:9901\n  token: s3cr3t-t0ken",
        1,
    );
    let cfg = Config::from_yaml(&text).unwrap();
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("s3cr3t-t0ken"), "{shown}");
    assert!(shown.contains("Secret(***)"), "{shown}");
}

// ---- routes[].rollout and proxy.state_file ----

/// A rollout using every step form and check kind; the `bg` gate leaves every default.
const ROLLOUT: &str = r#"
listeners:
  - address: 127.0.0.1:8080
proxy:
  state_file: /var/lib/canaryd/state.json
analysis:
  min_requests: 77
routes:
  - name: shop
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"], weight: 0 }
    rollout:
      id: shop-v2
      canary: canary
      steps:
        - set_weight: 5
        - pause: 2m
        - pause: {}
        - analysis: slo
        - set_header_route: { name: qa, when: { header: { name: x-canary, equals: "1" } } }
        - pause: { duration: 30s }
        - set_weight: 12.5
      background_analysis: bg
      analysis:
        slo:
          interval: 10s
          window: 2m
          initial_delay: 15s
          count: 5
          min_requests: 100
          checks:
            - success_rate: { min: 99.0, max_drop_vs_primary: 0.5 }
            - latency_p99: { max: 500ms, max_ratio_vs_primary: 1.25 }
            - prometheus: { url: http://prometheus:9090, query: "sum(rate(errors[1m]))", max: 0.02, min: 0 }
            - webhook: { url: http://judge/a2a/analyze, min_confidence: 70 }
          failure_limit: 1
          consecutive_failure_limit: 2
          error_limit: 6
          inconclusive_limit: 3
          on_inconclusive: continue
        bg:
          checks:
            - success_rate: { min: 80, critical: true, min_requests: 20 }
"#;

/// Errors for `ROLLOUT` with `from` replaced by `to` (the replacement must apply).
fn rollout_errors_with(from: &str, to: &str) -> Vec<FieldError> {
    assert!(ROLLOUT.contains(from), "test bug: {from:?} not in ROLLOUT");
    match Config::from_yaml(&ROLLOUT.replacen(from, to, 1)) {
        Ok(_) => panic!("expected an error after replacing {from:?} with {to:?}"),
        Err(e) => e.errors,
    }
}

fn rollout_with(from: &str, to: &str) -> RolloutSpec {
    assert!(ROLLOUT.contains(from), "test bug: {from:?} not in ROLLOUT");
    let cfg = Config::from_yaml(&ROLLOUT.replacen(from, to, 1)).unwrap();
    cfg.routes[0].rollout.clone().unwrap()
}

const SLO_STEPS: &str = "        - set_weight: 5
        - pause: 2m
        - pause: {}
        - analysis: slo
        - set_header_route: { name: qa, when: { header: { name: x-canary, equals: \"1\" } } }
        - pause: { duration: 30s }
        - set_weight: 12.5
";

#[test]
fn rollout_block_parses_with_defaults_filled() {
    let cfg = Config::from_yaml(ROLLOUT).unwrap();
    assert_eq!(
        cfg.proxy.state_file,
        Some(PathBuf::from("/var/lib/canaryd/state.json"))
    );
    let ro = cfg.routes[0].rollout.as_ref().unwrap();
    assert_eq!(ro.id, "shop-v2");
    assert_eq!(ro.canary, 1);
    assert_eq!(ro.background_analysis.as_deref(), Some("bg"));
    assert_eq!(ro.steps.len(), 7);
    assert!(matches!(ro.steps[0], Step::SetWeight(Weight(500))));
    assert!(matches!(ro.steps[1], Step::Pause(Some(d)) if d == Duration::from_secs(120)));
    assert!(matches!(ro.steps[2], Step::Pause(None)));
    assert!(matches!(&ro.steps[3], Step::Analysis(g) if g == "slo"));
    match &ro.steps[4] {
        Step::SetHeaderRoute { name, rule } => {
            assert_eq!(name, "qa");
            assert_eq!(rule.to, 1, "a header route sends to the canary");
            assert_eq!(rule.name.as_deref(), Some("qa"));
            assert_eq!(rule.conditions.len(), 1);
        }
        s => panic!("{s:?}"),
    }
    assert!(matches!(ro.steps[5], Step::Pause(Some(d)) if d == Duration::from_secs(30)));
    assert!(matches!(ro.steps[6], Step::SetWeight(Weight(1250))));

    let slo = &ro.analysis["slo"];
    assert_eq!(slo.interval, Duration::from_secs(10));
    assert_eq!(slo.window, Duration::from_secs(120));
    assert_eq!(slo.initial_delay, Duration::from_secs(15));
    assert_eq!((slo.count, slo.min_requests), (5, 100));
    assert_eq!(
        (
            slo.failure_limit,
            slo.consecutive_failure_limit,
            slo.error_limit,
            slo.inconclusive_limit
        ),
        (1, 2, 6, 3)
    );
    assert_eq!(slo.on_inconclusive, OnInconclusive::Continue);
    assert_eq!(
        slo.checks[0].kind,
        CheckKind::SuccessRate {
            min: Some(99.0),
            max_drop_vs_primary: Some(0.5)
        }
    );
    assert_eq!(
        slo.checks[1].kind,
        CheckKind::LatencyP99 {
            max: Some(Duration::from_millis(500)),
            max_ratio_vs_primary: Some(1.25)
        }
    );
    assert_eq!(
        slo.checks[2].kind,
        CheckKind::Prometheus {
            url: "http://prometheus:9090".into(),
            query: "sum(rate(errors[1m]))".into(),
            min: Some(0.0),
            max: Some(0.02),
            timeout: Duration::from_secs(5),
        }
    );
    assert_eq!(
        slo.checks[3].kind,
        CheckKind::Webhook {
            url: "http://judge/a2a/analyze".into(),
            min_confidence: 70.0,
            timeout: Duration::from_secs(10),
        }
    );
    assert!(!slo.checks[0].critical);
    assert_eq!(slo.checks[0].min_requests, None);

    // Every default.
    let bg = &ro.analysis["bg"];
    assert_eq!(
        bg,
        &Gate {
            source: crate::config::GateSource::Live,
            interval: Duration::from_secs(30),
            window: Duration::from_secs(60),
            initial_delay: Duration::ZERO,
            count: 3,
            min_requests: 77,
            checks: vec![Check {
                kind: CheckKind::SuccessRate {
                    min: Some(80.0),
                    max_drop_vs_primary: None
                },
                critical: true,
                min_requests: Some(20),
            }],
            failure_limit: 0,
            consecutive_failure_limit: 0,
            error_limit: 4,
            inconclusive_limit: 0,
            on_inconclusive: OnInconclusive::Pause,
        }
    );
}

#[test]
fn gate_min_requests_defaults_to_the_top_level_analysis_setting() {
    let text = ROLLOUT.replacen("analysis:\n  min_requests: 77\n", "", 1);
    let cfg = Config::from_yaml(&text).unwrap();
    let ro = cfg.routes[0].rollout.as_ref().unwrap();
    assert_eq!(
        ro.analysis["bg"].min_requests,
        AnalysisSettings::default().min_requests
    );
}

#[test]
fn rollout_canary_defaults_to_the_second_version() {
    let text = ROLLOUT
        .replacen("      canary: canary\n", "", 1)
        .replacen(
            "      canary: { endpoints: [\"127.0.0.1:9002\"], weight: 0 }\n",
            "      beta: { endpoints: [\"127.0.0.1:9003\"] }\n      canary: { endpoints: [\"127.0.0.1:9002\"], weight: 0 }\n",
            1,
        );
    let cfg = Config::from_yaml(&text).unwrap();
    assert_eq!(cfg.routes[0].rollout.as_ref().unwrap().canary, 1);
    let ro = rollout_with("      canary: canary\n", "      canary: canary\n");
    assert_eq!(ro.canary, 1);
}

#[test]
fn rollout_canary_must_be_a_non_primary_version() {
    let e = rollout_errors_with("canary: canary\n", "canary: stable\n");
    assert_error(&e, "routes[0].rollout.canary", "is the primary");
    let e = rollout_errors_with("canary: canary\n", "canary: canari\n");
    assert_error(&e, "routes[0].rollout.canary", "unknown version `canari`");
    let e = rollout_errors_with(
        "      canary: { endpoints: [\"127.0.0.1:9002\"], weight: 0 }\n",
        "",
    );
    assert_error(&e, "routes[0].rollout", "at least two versions");
}

#[test]
fn flagger_shorthand_expands_to_weights_and_pauses() {
    let ro = rollout_with(
        SLO_STEPS,
        "        { step_weight: 10, max_weight: 50, interval: 1m }\n",
    );
    let minute = Some(Duration::from_secs(60));
    assert_eq!(ro.steps.len(), 10);
    for (k, pair) in ro.steps.chunks(2).enumerate() {
        assert!(
            matches!(pair[0], Step::SetWeight(Weight(w)) if w == 1000 * (k as u32 + 1)),
            "{pair:?}"
        );
        assert!(matches!(pair[1], Step::Pause(d) if d == minute), "{pair:?}");
    }
    // The last weight is the largest multiple not above max_weight.
    let ro = rollout_with(
        SLO_STEPS,
        "        { step_weight: 30, max_weight: 100, interval: 1m }\n",
    );
    assert_eq!(ro.steps.len(), 6);
    assert!(matches!(ro.steps[4], Step::SetWeight(Weight(9000))));
}

#[test]
fn flagger_shorthand_needs_background_analysis() {
    let text = ROLLOUT
        .replacen(
            SLO_STEPS,
            "        { step_weight: 10, max_weight: 50, interval: 1m }\n",
            1,
        )
        .replacen("      background_analysis: bg\n", "", 1);
    let e = Config::from_yaml(&text).unwrap_err().errors;
    assert_error(&e, "routes[0].rollout.steps", "needs background_analysis");
}

#[test]
fn flagger_shorthand_bounds() {
    let short = |s: &str| rollout_errors_with(SLO_STEPS, &format!("        {{ {s} }}\n"));
    let e = short("step_weight: 0, max_weight: 50, interval: 1m");
    assert_error(&e, "routes[0].rollout.steps.step_weight", "greater than 0");
    let e = short("step_weight: 10, max_weight: 0, interval: 1m");
    assert_error(&e, "routes[0].rollout.steps.max_weight", "greater than 0");
    let e = short("step_weight: 10, max_weight: 120, interval: 1m");
    assert_error(&e, "routes[0].rollout.steps.max_weight", "from 0 to 100");
    let e = short("step_weight: 60, max_weight: 50, interval: 1m");
    assert_error(
        &e,
        "routes[0].rollout.steps.step_weight",
        "more than max_weight",
    );
    let e = short("step_weight: 10, max_weight: 50, interval: soon");
    assert_error(&e, "routes[0].rollout.steps.interval", "not a duration");
    let e = short("step_weight: 10, max_weight: 50, interval: 1m, step: 1");
    assert!(e[0].message.contains("unknown field `step`"), "{:?}", e[0]);
}

#[test]
fn rollout_steps_must_not_be_empty() {
    let e = rollout_errors_with(&format!("      steps:\n{SLO_STEPS}"), "      steps: []\n");
    assert_error(&e, "routes[0].rollout.steps", "is empty");
    let e = rollout_errors_with(&format!("      steps:\n{SLO_STEPS}"), "");
    assert_error(&e, "routes[0].rollout.steps", "is required");
}

#[test]
fn rollout_needs_a_state_file() {
    let e = rollout_errors_with(
        "  state_file: /var/lib/canaryd/state.json\n",
        "  access_log: true\n",
    );
    assert_error(
        &e,
        "routes[0].rollout",
        "a rollout needs proxy.state_file (where its state survives restarts)",
    );
    let e = rollout_errors_with(
        "state_file: /var/lib/canaryd/state.json",
        "state_file: \"\"",
    );
    assert_error(&e, "proxy.state_file", "is empty");
    assert!(
        !e.iter().any(|e| e.field == "routes[0].rollout"),
        "an empty state_file is reported once: {e:?}"
    );
}

#[test]
fn state_file_is_parsed_without_rollouts() {
    assert_eq!(Config::from_yaml(GOOD).unwrap().proxy.state_file, None);
    let text = GOOD.replacen(
        "routes:\n",
        "proxy: { state_file: state.json }\nroutes:\n",
        1,
    );
    let cfg = Config::from_yaml(&text).unwrap();
    assert_eq!(cfg.proxy.state_file, Some(PathBuf::from("state.json")));
    let e = errors_with("routes:\n", "proxy: { state_file: \" \" }\nroutes:\n");
    assert_error(&e, "proxy.state_file", "is empty");
}

#[test]
fn rollout_id_charset() {
    let e = rollout_errors_with("id: shop-v2", "id: Shop/v2");
    assert_error(&e, "routes[0].rollout.id", "1 to 63 characters");
    let e = rollout_errors_with("id: shop-v2", &format!("id: {}", "a".repeat(64)));
    assert_error(&e, "routes[0].rollout.id", "1 to 63 characters");
    let ro = rollout_with("id: shop-v2", &format!("id: shop.v2_{}", "a".repeat(55)));
    assert_eq!(ro.id.len(), 63);
    let e = rollout_errors_with("      id: shop-v2\n", "");
    assert!(e[0].message.contains("missing field `id`"), "{:?}", e[0]);
}

#[test]
fn rollout_ids_are_unique_across_routes() {
    let (head, route) = ROLLOUT.split_once("routes:\n").unwrap();
    let second = route.replacen("name: shop", "name: cart", 1).replacen(
        "    versions:",
        "    match: { path_prefix: /cart }\n    versions:",
        1,
    );
    let e = Config::from_yaml(&format!("{head}routes:\n{route}{second}"))
        .unwrap_err()
        .errors;
    assert_error(
        &e,
        "routes[1].rollout.id",
        "rollout id `shop-v2` is also used by routes[0]",
    );
}

#[test]
fn set_weight_range_and_resolution() {
    let e = rollout_errors_with("set_weight: 5\n", "set_weight: 101\n");
    assert_error(&e, "routes[0].rollout.steps[0].set_weight", "from 0 to 100");
    let e = rollout_errors_with("set_weight: 12.5\n", "set_weight: 12.555\n");
    assert_error(&e, "routes[0].rollout.steps[6].set_weight", "two decimals");
}

#[test]
fn pause_forms_are_validated() {
    let e = rollout_errors_with("pause: 2m", "pause: soon");
    assert_error(&e, "routes[0].rollout.steps[1].pause", "not a duration");
    let e = rollout_errors_with("pause: { duration: 30s }", "pause: { duration: 0s }");
    assert_error(
        &e,
        "routes[0].rollout.steps[5].pause.duration",
        "greater than zero",
    );
    let e = rollout_errors_with("pause: {}", "pause: { until: promoted }");
    assert!(e[0].message.contains("unknown field `until`"), "{:?}", e[0]);
}

#[test]
fn analysis_steps_must_name_a_gate() {
    let e = rollout_errors_with("- analysis: slo", "- analysis: sli");
    assert_error(
        &e,
        "routes[0].rollout.steps[3].analysis",
        "unknown gate `sli`; rollout.analysis has: slo, bg",
    );
    let e = rollout_errors_with("background_analysis: bg", "background_analysis: nope");
    assert_error(
        &e,
        "routes[0].rollout.background_analysis",
        "unknown gate `nope`",
    );
    // A gate nobody uses is fine.
    let ro = rollout_with("      background_analysis: bg\n", "");
    assert!(ro.analysis.contains_key("bg"));
}

#[test]
fn header_routes_are_named_uniquely_and_their_conditions_validated() {
    let route = "{ name: qa, when: { header: { name: x-canary, equals: \"1\" } } }";
    let e = rollout_errors_with(
        route,
        "{ name: QA!, when: { header: { name: x-canary, equals: \"1\" } } }",
    );
    assert_error(
        &e,
        "routes[0].rollout.steps[4].set_header_route.name",
        "header route name `QA!`",
    );
    let e = rollout_errors_with("- pause: {}\n", &format!("- set_header_route: {route}\n"));
    assert_error(
        &e,
        "routes[0].rollout.steps[4].set_header_route.name",
        "already set by steps[2]",
    );
    let e = rollout_errors_with("equals: \"1\"", "matches: \"^(1\"");
    assert_error(
        &e,
        "routes[0].rollout.steps[4].set_header_route.when.header.matches",
        "not a valid regular expression",
    );
    let e = rollout_errors_with(
        "when: { header: { name: x-canary, equals: \"1\" } }",
        "when: {}",
    );
    assert_error(
        &e,
        "routes[0].rollout.steps[4].set_header_route.when",
        "at least one condition",
    );
    let e = rollout_errors_with("when: { header:", "when: { heder:");
    assert!(e[0].message.contains("unknown field `heder`"), "{:?}", e[0]);
}

#[test]
fn gate_settings_are_validated() {
    let e = rollout_errors_with("interval: 10s", "interval: 500ms");
    assert_error(&e, "routes[0].rollout.analysis.slo.interval", "1s or more");
    for bad in ["window: 11m", "window: 1500ms", "window: 500ms"] {
        let e = rollout_errors_with("window: 2m", bad);
        assert_error(
            &e,
            "routes[0].rollout.analysis.slo.window",
            "whole seconds from 1s to 10m",
        );
    }
    let e = rollout_errors_with("initial_delay: 15s", "initial_delay: later");
    assert_error(
        &e,
        "routes[0].rollout.analysis.slo.initial_delay",
        "not a duration",
    );
    let ro = rollout_with("initial_delay: 15s", "initial_delay: 0s");
    assert_eq!(ro.analysis["slo"].initial_delay, Duration::ZERO);
    for (from, to, field) in [
        ("count: 5", "count: 0", "count"),
        ("error_limit: 6", "error_limit: 0", "error_limit"),
        ("min_requests: 100", "min_requests: 0", "min_requests"),
    ] {
        let e = rollout_errors_with(from, to);
        assert_error(
            &e,
            &format!("routes[0].rollout.analysis.slo.{field}"),
            "at least 1",
        );
    }
    let e = rollout_errors_with("on_inconclusive: continue", "on_inconclusive: abort");
    assert_error(
        &e,
        "routes[0].rollout.analysis.slo.on_inconclusive",
        "use pause (the default) or continue",
    );
    let e = rollout_errors_with(
        "        bg:\n          checks:\n            - success_rate: { min: 80, critical: true, min_requests: 20 }\n",
        "        bg:\n          checks: []\n",
    );
    assert_error(
        &e,
        "routes[0].rollout.analysis.bg.checks",
        "at least one check",
    );
    let e = rollout_errors_with("failure_limit: 1", "failure_limits: 1");
    assert!(
        e[0].message.contains("unknown field `failure_limits`"),
        "{:?}",
        e[0]
    );
}

#[test]
fn checks_are_validated() {
    let at = "routes[0].rollout.analysis.slo.checks";
    let e = rollout_errors_with(
        "min: 99.0, max_drop_vs_primary: 0.5",
        "min: 101, max_drop_vs_primary: -1",
    );
    assert_error(&e, &format!("{at}[0].success_rate.min"), "from 0 to 100");
    assert_error(
        &e,
        &format!("{at}[0].success_rate.max_drop_vs_primary"),
        "0 or more",
    );
    let e = rollout_errors_with(
        "max: 500ms, max_ratio_vs_primary: 1.25",
        "max: slow, max_ratio_vs_primary: 0",
    );
    assert_error(&e, &format!("{at}[1].latency_p99.max"), "not a duration");
    assert_error(
        &e,
        &format!("{at}[1].latency_p99.max_ratio_vs_primary"),
        "greater than 0",
    );
    let e = rollout_errors_with(
        "url: http://prometheus:9090, query: \"sum(rate(errors[1m]))\", max: 0.02, min: 0",
        "url: prometheus:9090, query: \" \", timeout: 0s",
    );
    assert_error(
        &e,
        &format!("{at}[2].prometheus.url"),
        "not an http:// or https:// URL",
    );
    assert_error(&e, &format!("{at}[2].prometheus.query"), "is empty");
    assert_error(
        &e,
        &format!("{at}[2].prometheus"),
        "set `min`, `max` or both",
    );
    assert_error(
        &e,
        &format!("{at}[2].prometheus.timeout"),
        "greater than zero",
    );
    let e = rollout_errors_with("max: 0.02, min: 0", "max: 0.02, min: 1");
    assert_error(&e, &format!("{at}[2].prometheus.min"), "more than max");
    let e = rollout_errors_with(
        "url: http://judge/a2a/analyze, min_confidence: 70",
        "url: ftp://judge, min_confidence: 170, critical: true, min_requests: 0",
    );
    assert_error(
        &e,
        &format!("{at}[3].webhook.url"),
        "not an http:// or https:// URL",
    );
    assert_error(
        &e,
        &format!("{at}[3].webhook.min_confidence"),
        "from 0 to 100",
    );
    assert_error(&e, &format!("{at}[3].webhook.min_requests"), "at least 1");
    let e = rollout_errors_with("- webhook:", "- judge:");
    assert!(e[0].message.contains("unknown field `judge`"), "{:?}", e[0]);
    let e = rollout_errors_with("min_confidence: 70", "min_confidence: 70, model: gpt");
    assert!(e[0].message.contains("unknown field `model`"), "{:?}", e[0]);
}

#[test]
fn unknown_rollout_keys_and_steps_are_rejected() {
    let e = rollout_errors_with(
        "      canary: canary\n",
        "      canary: canary\n      auto_promote: true\n",
    );
    assert!(
        e[0].message.contains("unknown field `auto_promote`"),
        "{:?}",
        e[0]
    );
    assert!(e[0].field.starts_with("routes[0]"), "{:?}", e[0]);
    let e = rollout_errors_with("- set_weight: 5", "- set_wieght: 5");
    assert!(
        e[0].message.contains("unknown field `set_wieght`"),
        "{:?}",
        e[0]
    );
    assert_eq!(e[0].field, "routes[0].rollout.steps[0]");
    let e = rollout_errors_with(
        "- set_weight: 5\n",
        "- set_weight: 5\n          pause: 2m\n",
    );
    assert!(
        e[0].message
            .contains("exactly one key, but `set_weight` is followed by `pause`"),
        "{:?}",
        e[0]
    );
    let e = rollout_errors_with("- set_weight: 5\n", "- {}\n");
    assert!(e[0].message.contains("a map with one key"), "{:?}", e[0]);
}

#[test]
fn gate_defined_twice_is_rejected() {
    let e = rollout_errors_with(
        "        bg:\n",
        "        slo:\n          checks: [{ success_rate: { min: 1 } }]\n        bg:\n",
    );
    assert_error(
        &e,
        "routes[0].rollout.analysis.slo",
        "gate `slo` is defined twice",
    );
    // The rest of the block then sits under an unknown key; serde stops at the first error.
    let e = rollout_errors_with("      analysis:\n", "      analysis: [slo]\n      rest:\n");
    assert_eq!(e[0].field, "routes[0].rollout.analysis");
    assert!(
        e[0].message
            .contains("expected a mapping of gate name to gate"),
        "{:?}",
        e[0]
    );
}

#[test]
fn every_rollout_error_is_reported_at_once() {
    let text = ROLLOUT
        .replacen("set_weight: 5\n", "set_weight: 101\n", 1)
        .replacen("- analysis: slo", "- analysis: sli", 1)
        .replacen("window: 2m", "window: 1h", 1)
        .replacen("min: 80,", "min: 180,", 1);
    let e = Config::from_yaml(&text).unwrap_err().errors;
    assert_error(&e, "routes[0].rollout.steps[0].set_weight", "from 0 to 100");
    assert_error(&e, "routes[0].rollout.steps[3].analysis", "unknown gate");
    assert_error(&e, "routes[0].rollout.analysis.slo.window", "10m");
    assert_error(
        &e,
        "routes[0].rollout.analysis.bg.checks[0].success_rate.min",
        "from 0 to 100",
    );
}

const CONTROLLER: &str = r#"
controller:
  targets_dns: canaryd-admin.shop.svc.cluster.local:9901
  interval: 2s
  state_file: /var/lib/canaryd-controller/state.json
routes:
  - name: shop
    versions:
      stable: {}
      canary: {}
    rollout:
      id: shop-v2
      steps: [ { set_weight: 10 }, { pause: {} } ]
"#;

#[test]
fn a_controller_file_needs_no_listeners_and_no_endpoints() {
    let c = Config::from_yaml(CONTROLLER).unwrap();
    let ctl = c.controller.unwrap();
    assert_eq!(
        ctl.targets,
        Targets::Dns {
            host: "canaryd-admin.shop.svc.cluster.local".into(),
            port: 9901
        }
    );
    assert_eq!(ctl.interval, Duration::from_secs(2));
    assert!(c.listeners.is_empty());
    assert!(c.routes[0].versions[1].endpoints.is_empty());
    assert!(
        c.routes[0].rollout.is_some(),
        "its state_file is the controller's"
    );
    // Without the section, the same routes need endpoints and listeners again.
    let e = Config::from_yaml(&CONTROLLER.replace("controller:\n  targets_dns: canaryd-admin.shop.svc.cluster.local:9901\n  interval: 2s\n  state_file: /var/lib/canaryd-controller/state.json\n", "")).unwrap_err();
    let fields: Vec<&str> = e.errors.iter().map(|f| f.field.as_str()).collect();
    assert!(fields.contains(&"listeners"), "{fields:?}");
    assert!(
        fields.contains(&"routes[0].versions.stable.endpoints"),
        "{fields:?}"
    );
    assert!(fields.contains(&"routes[0].rollout"), "{fields:?}");
}

#[test]
fn controller_settings_errors_name_their_field() {
    let bad = |section: &str| {
        let y = CONTROLLER.replace(
            "controller:\n  targets_dns: canaryd-admin.shop.svc.cluster.local:9901\n  interval: 2s\n  state_file: /var/lib/canaryd-controller/state.json\n",
            section,
        );
        Config::from_yaml(&y).unwrap_err().errors[0].field.clone()
    };
    assert_eq!(
        bad(
            "controller:\n  targets: [\"http://a:9901\"]\n  targets_dns: b:9901\n  state_file: s\n"
        ),
        "controller"
    );
    assert_eq!(bad("controller:\n  state_file: s\n"), "controller");
    assert_eq!(
        bad("controller:\n  targets: [\"a:9901\"]\n  state_file: s\n"),
        "controller.targets[0]"
    );
    assert_eq!(
        bad("controller:\n  targets_dns: nodns\n  state_file: s\n"),
        "controller.targets_dns"
    );
    assert_eq!(
        bad("controller:\n  targets: [\"http://a:9901\"]\n"),
        "controller.state_file"
    );
    assert_eq!(
        bad("controller:\n  targets: [\"http://a:9901\"]\n  interval: soon\n  state_file: s\n"),
        "controller.interval"
    );
}

#[test]
fn a_controller_file_routes_need_no_match_of_their_own() {
    let two = CONTROLLER.to_string()
        + "  - name: api\n    versions:\n      stable: {}\n      canary: {}\n    rollout:\n      id: api-v2\n      steps: [ { set_weight: 5 } ]\n";
    let c = Config::from_yaml(&two).unwrap();
    assert_eq!(c.routes.len(), 2);
    // In a replica's file the same two routes would shadow each other.
    let e = Config::from_yaml(
        "listeners: [{ address: \"127.0.0.1:0\" }]\nroutes:\n  - name: a\n    versions: { stable: { endpoints: [\"127.0.0.1:9\"] } }\n  - name: b\n    versions: { stable: { endpoints: [\"127.0.0.1:9\"] } }\n",
    )
    .unwrap_err();
    assert_error(&e.errors, "routes[1].match", "same host and path_prefix");
}

#[test]
fn wait_for_controller_is_off_unless_set() {
    let base = "listeners: [{ address: \"127.0.0.1:0\" }]\nroutes:\n  - name: a\n    versions: { stable: { endpoints: [\"127.0.0.1:9\"] } }\n";
    assert!(!Config::from_yaml(base).unwrap().proxy.wait_for_controller);
    let on = format!("proxy: {{ wait_for_controller: true }}\n{base}");
    assert!(Config::from_yaml(&on).unwrap().proxy.wait_for_controller);
}

#[test]
fn set_mirror_route_steps_and_mirror_gates() {
    let r = rollout_with(
        "        - set_weight: 5\n",
        "        - set_mirror_route: { name: dark, percent: 50, when: { header: { name: x-dark, present: true } } }\n        - set_weight: 5\n",
    );
    match &r.steps[0] {
        Step::SetMirrorRoute { name, mirror } => {
            assert_eq!(name, "dark");
            assert_eq!(
                (mirror.to, mirror.percent),
                (1, Weight(5000)),
                "to: the canary"
            );
            assert_eq!(mirror.conditions.len(), 1);
        }
        s => panic!("{s:?}"),
    }
    // A managed route's name is unique across header and mirror routes.
    let e = rollout_errors_with(
        "        - set_weight: 5\n",
        "        - set_mirror_route: { name: qa, percent: 5 }\n        - set_weight: 5\n",
    );
    assert!(
        e.iter().any(|f| f.field.ends_with("set_header_route.name")
            || f.field.ends_with("set_mirror_route.name")),
        "{e:?}"
    );
    let e = rollout_errors_with(
        "        - set_weight: 5\n",
        "        - set_mirror_route: { name: d, percent: 5, to: stable }\n        - set_weight: 5\n",
    );
    assert_error(
        &e,
        "routes[0].rollout.steps[0].set_mirror_route.to",
        "primary",
    );
    // A gate judging the shadow, with a diff_rate check.
    let r = rollout_with(
        "          checks:\n            - success_rate: { min: 80, critical: true, min_requests: 20 }",
        "          source: mirror\n          checks:\n            - diff_rate: { max: 0.05 }",
    );
    let bg = &r.analysis["bg"];
    assert_eq!(bg.source, crate::config::GateSource::Mirror);
    assert_eq!(bg.checks[0].kind, CheckKind::DiffRate { max: 0.05 });
    let e = rollout_errors_with(
        "          checks:\n            - success_rate: { min: 80, critical: true, min_requests: 20 }",
        "          source: shadow\n          checks:\n            - diff_rate: { max: 5 }",
    );
    assert_error(&e, "routes[0].rollout.analysis.bg.source", "live");
    assert_error(
        &e,
        "routes[0].rollout.analysis.bg.checks[0].diff_rate.max",
        "from 0 to 1",
    );
}
