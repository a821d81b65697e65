//! The hot pure paths allocate nothing: the routing decision (rules + sticky + weights) and
//! recording a request's metrics. Counted with a global allocator, per thread: only the
//! measuring thread's allocations count, so the test harness's other threads (and anything
//! else the process runs) cannot make it flaky.

use canaryd::config::Config;
use canaryd::metrics::Metrics;
use canaryd::router::Router;
use http::{HeaderMap, HeaderValue};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Counting;

thread_local! {
    // `const` initialisers: reading them never allocates (no lazy init in the allocator).
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: during thread teardown the locals may be gone; nothing is measured then.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCS.with(|n| n.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    ALLOCS.with(Cell::get)
}

#[test]
fn the_counter_sees_an_allocation() {
    // Without this the zero below could come from a counter that never counts.
    let n = allocations(|| drop(std::hint::black_box(vec![1u8; 16])));
    assert_eq!(n, 1);
}

const YAML: &str = r#"
listeners: [{ address: 127.0.0.1:8080 }]
routes:
  - name: sticky
    match: { host: shop.example.com }
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"], weight: 10 }
    rules:
      - { to: canary, when: { header: { name: x-canary, equals: always } } }
      - { to: canary, when: { header: { name: x-user-group, matches: "^(beta|staff)$" } } }
      - { to: canary, when: { cookie: { name: canary, equals: always } } }
    sticky:
      key: { cookie: session }
      assign_cookie: canaryd_uid
  - name: weighted
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"], weight: 10 }
"#;

#[test]
fn routing_decision_and_metric_recording_allocate_nothing() {
    let router = Router::new(&Config::from_yaml(YAML).unwrap());
    let mut rng = SmallRng::seed_from_u64(1);
    let mut sticky = HeaderMap::new();
    sticky.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; session=user-42"),
    );
    sticky.insert("x-user-group", HeaderValue::from_static("customers"));
    let mut ruled = HeaderMap::new();
    ruled.insert("x-user-group", HeaderValue::from_static("staff"));
    let plain = HeaderMap::new();

    // Warm-up: the regex engine builds its per-thread cache on first use.
    router.decide(Some("shop.example.com"), "/", &sticky, &mut rng);
    router.decide(Some("shop.example.com"), "/", &ruled, &mut rng);

    let n = allocations(|| {
        for _ in 0..10_000 {
            let a = router.decide(Some("shop.example.com"), "/cart", &sticky, &mut rng);
            let b = router.decide(Some("SHOP.example.com"), "/", &ruled, &mut rng);
            let c = router.decide(Some("other.example"), "/", &plain, &mut rng);
            assert!(a.is_some() && b.is_some() && c.is_some());
        }
    });
    assert_eq!(n, 0, "routing decisions allocated {n} times");

    let metrics = Arc::new(Metrics::new());
    let vm = metrics.version("sticky", "canary");
    let now = Instant::now();
    vm.record(200, Duration::from_millis(3), Some(now));
    vm.record(503, Duration::from_millis(3), Some(now));
    let n = allocations(|| {
        for i in 0..10_000u64 {
            let status = if i % 10 == 0 { 503 } else { 200 };
            vm.record(status, Duration::from_micros(i), Some(now));
        }
    });
    assert_eq!(n, 0, "metric recording allocated {n} times");
    assert!(
        metrics
            .encode()
            .contains(r#"canaryd_requests_total{route="sticky",version="canary",code="200"} 9001"#)
    );
}
