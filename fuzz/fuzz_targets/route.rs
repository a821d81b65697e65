//! The routing decision on arbitrary requests: host, path, headers and cookies from the
//! input. It never panics, always names a real version, and a sticky decision is the same
//! every time the same key is seen.
#![no_main]

use canaryd::config::Config;
use canaryd::router::{Reason, Router};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use std::sync::OnceLock;

const CONFIG: &str = r#"
listeners: [{ address: "127.0.0.1:8080" }]
routes:
  - name: shop
    match: { host: shop.example.com, path_prefix: /shop }
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"], weight: 12.34 }
      dark: { endpoints: ["127.0.0.1:9003"], weight: 0.01 }
    rules:
      - { to: canary, when: { header: { name: x-canary, equals: always } } }
      - { to: stable, when: { header: { name: x-canary, equals: never } } }
      - { to: dark, when: { cookie: { name: dark, matches: "^(1|yes)$" }, client_ip: [10.0.0.0/8] } }
      - { to: canary, when: { header: { name: x-group, matches: "^(beta|staff)$" } } }
    sticky: { key: { cookie: session }, assign_cookie: uid }
  - name: api
    match: { host: "*.example.com" }
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"], weight: 50 }
    sticky: { key: { header: x-user } }
  - name: rest
    versions: { stable: { endpoints: ["127.0.0.1:9001"] } }
"#;

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| Router::new(&Config::from_yaml(CONFIG).unwrap()))
}

fuzz_target!(|data: &[u8]| {
    // Layout: host \n path \n (name: value \n)* ; the first byte picks the client address.
    let Some((&ip, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let host = lines.next().and_then(|h| std::str::from_utf8(h).ok());
    let path = lines
        .next()
        .and_then(|p| std::str::from_utf8(p).ok())
        .unwrap_or("/");
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) {
            headers.append(n, v);
        }
    }
    let client = Some(std::net::IpAddr::from([10, ip, 0, 1]));
    let r = router();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let method = http::Method::GET;
    let line = canaryd::router::Line::parse(path, &method);
    let Some(d) = r.decide_for(host, &line, &headers, client, &mut rng) else {
        // The catch-all route (prefix `/`) matches every path that is a path.
        assert!(!path.starts_with('/'), "no route for {host:?} {path:?}");
        return;
    };
    assert!(d.version < d.route.config.versions.len());
    if matches!(d.reason, Reason::Sticky { .. }) && d.assign.is_none() {
        let mut other = rand::rngs::SmallRng::seed_from_u64(2);
        let again = r
            .decide_for(host, &line, &headers, client, &mut other)
            .unwrap();
        assert!(std::ptr::eq(again.route, d.route));
        assert_eq!(again.version, d.version);
    }
});
