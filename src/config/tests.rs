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
fn mirror_is_refused_until_supported() {
    let e = errors_with(
        "    sticky:",
        "    mirror: { to: canary, percent: 5 }\n    sticky:",
    );
    assert_error(&e, "routes[0].mirror", "not available");
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
