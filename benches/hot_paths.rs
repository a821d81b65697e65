//! Criterion micro-benchmarks of the per-request hot paths, one per function that runs on
//! every request. Run: `cargo bench --bench hot_paths`. Allocation-freedom of the same paths
//! is asserted (not timed) in tests/alloc.rs.

use canaryd::config::Config;
use canaryd::metrics::Metrics;
use canaryd::router::{self, Router};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const YAML: &str = r#"
listeners: [{ address: 127.0.0.1:8080 }]
routes:
  - name: full
    match: { host: shop.example.com }
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
  - name: api
    match: { host: shop.example.com, path_prefix: /api }
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
  - name: weighted
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"], weight: 10 }
"#;

fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64)"),
    );
    h.insert(
        "accept",
        HeaderValue::from_static("text/html,application/xhtml+xml"),
    );
    h.insert(
        "accept-language",
        HeaderValue::from_static("en-GB,en;q=0.9"),
    );
    h.insert(
        "cookie",
        HeaderValue::from_static(
            "theme=dark; _ga=GA1.2.123; consent=yes; session=4f1c9a7e2b; lang=en",
        ),
    );
    h.insert("x-user-group", HeaderValue::from_static("customers"));
    h
}

fn benches(c: &mut Criterion) {
    let router = Router::new(&Config::from_yaml(YAML).unwrap());
    let mut rng = SmallRng::seed_from_u64(1);
    let browser = browser_headers();
    let mut ruled = browser.clone();
    ruled.insert("x-canary", HeaderValue::from_static("always"));
    let plain = HeaderMap::new();

    c.bench_function("decide/rules+sticky (4 rules miss, cookie key)", |b| {
        b.iter(|| {
            router.decide(
                black_box(Some("shop.example.com")),
                black_box("/cart"),
                &browser,
                &mut rng,
            )
        })
    });
    c.bench_function("decide/first rule matches", |b| {
        b.iter(|| {
            router.decide(
                black_box(Some("shop.example.com")),
                black_box("/cart"),
                &ruled,
                &mut rng,
            )
        })
    });
    c.bench_function("decide/weighted draw only", |b| {
        b.iter(|| {
            router.decide(
                black_box(Some("other.example")),
                black_box("/"),
                &plain,
                &mut rng,
            )
        })
    });
    c.bench_function("match/cookie lookup in 5 cookies", |b| {
        b.iter(|| router::cookie(black_box(&browser), black_box("session")))
    });
    c.bench_function("sticky/bucket hash", |b| {
        b.iter(|| router::sticky_bucket(black_box("full"), black_box(b"4f1c9a7e2b")))
    });
    let metrics = Arc::new(Metrics::new());
    let vm = metrics.version("full", "canary");
    let now = Instant::now();
    vm.record(200, Duration::from_micros(900), Some(now));
    c.bench_function("metrics/record (counter + histogram + window)", |b| {
        b.iter(|| {
            vm.record(
                black_box(200),
                black_box(Duration::from_micros(900)),
                Some(now),
            )
        })
    });
}

criterion_group!(hot, benches);
criterion_main!(hot);
