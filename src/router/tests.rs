//! The routing decision without sockets: exact weight tables, seeded draws, rules, sticky.

use super::*;
use crate::config::Config;
use http::HeaderValue;
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn router(yaml: &str) -> Router {
    Router::new(&Config::from_yaml(yaml).unwrap())
}

fn split(canary: &str) -> String {
    format!(
        r#"
listeners: [{{ address: 127.0.0.1:8080 }}]
routes:
  - name: shop
    versions:
      stable: {{ endpoints: ["127.0.0.1:9001"] }}
      canary: {{ endpoints: ["127.0.0.1:9002"], weight: {canary} }}
    rules:
      - {{ to: canary, when: {{ header: {{ name: X-Canary, equals: always }} }} }}
      - {{ to: stable, when: {{ header: {{ name: x-canary, equals: never }} }} }}
      - {{ to: canary, when: {{ header: {{ name: x-canary, equals: never }} }} }}
      - {{ to: canary, when: {{ cookie: {{ name: canary, equals: always }} }} }}
      - {{ to: canary, when: {{ header: {{ name: x-user-group, matches: "^(beta|staff)$" }} }} }}
      - {{ to: canary, when: {{ cookie: {{ name: tier, matches: "^gold" }} }} }}
      - {{ to: canary, when: {{ header: {{ name: x-debug, present: true }} }} }}
      - {{ to: canary, when: {{ header: [{{ name: x-a, equals: "1" }}, {{ name: x-b, equals: "2" }}], cookie: {{ name: c, equals: "3" }} }} }}
    sticky:
      key: {{ cookie: session }}
      assign_cookie: canaryd_uid
"#
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn version(r: &Router, h: &HeaderMap) -> (String, Reason) {
    let mut rng = SmallRng::seed_from_u64(1);
    let d = r.decide(Some("x"), "/", h, &mut rng).unwrap();
    (d.route.config.versions[d.version].name.clone(), d.reason)
}

#[test]
fn weight_table_gives_each_version_exactly_its_buckets() {
    for (w, canary_buckets) in [
        ("10", 1000),
        ("0.01", 1),
        ("33.33", 3333),
        ("0", 0),
        ("100", 10_000),
    ] {
        let r = router(&split(w));
        let route = &r.routes[0];
        let canary = (0..BUCKETS)
            .filter(|&b| route.version_for_bucket(b) == 1)
            .count();
        assert_eq!(canary, canary_buckets, "weight {w}");
        // Non-primary versions own the bottom of the space.
        if canary_buckets > 0 {
            assert_eq!(route.version_for_bucket(0), 1);
            assert_eq!(route.version_for_bucket(canary_buckets as u32 - 1), 1);
        }
    }
}

#[test]
fn three_versions_own_consecutive_ranges_in_listed_order() {
    let yaml = split("10").replacen(
        "      canary: { endpoints: [\"127.0.0.1:9002\"], weight: 10 }\n",
        "      canary: { endpoints: [\"127.0.0.1:9002\"], weight: 10 }\n      beta: { endpoints: [\"127.0.0.1:9003\"], weight: 5.5 }\n",
        1,
    );
    let r = router(&yaml);
    let route = &r.routes[0];
    assert_eq!(route.version_for_bucket(999), 1);
    assert_eq!(route.version_for_bucket(1000), 2);
    assert_eq!(route.version_for_bucket(1549), 2);
    assert_eq!(route.version_for_bucket(1550), 0);
}

#[test]
fn seeded_draws_are_reproducible_and_match_weights() {
    let r = router(&split("10").replace(
        "    sticky:\n      key: { cookie: session }\n      assign_cookie: canaryd_uid\n",
        "",
    ));
    let h = HeaderMap::new();
    let run = |seed| {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..100_000)
            .map(|_| r.decide(None, "/", &h, &mut rng).unwrap().version)
            .collect::<Vec<_>>()
    };
    let a = run(7);
    assert_eq!(a, run(7), "same seed must give the same sequence");
    assert_ne!(a, run(8));
    let canary = a.iter().filter(|&&v| v == 1).count();
    // 10% of 100k: sd = 95; allow 5 sd.
    assert!((9_525..=10_475).contains(&canary), "canary draws {canary}");
    // A draw's reason records the bucket it landed on.
    let mut rng = SmallRng::seed_from_u64(7);
    let d = r.decide(None, "/", &h, &mut rng).unwrap();
    match d.reason {
        Reason::Weight { draw } => assert_eq!(r.routes[0].version_for_bucket(draw), d.version),
        other => panic!("expected a weight draw, got {other:?}"),
    }
}

#[test]
fn rules_match_each_kind() {
    let r = router(&split("0"));
    let canary = |pairs: &[(&str, &str)]| version(&r, &headers(pairs)).0 == "canary";
    // Weight 0 and a sticky key: only rules can send to canary.
    let s = ("cookie", "session=abc");
    assert!(!canary(&[s]));
    assert!(canary(&[s, ("x-canary", "always")]), "header equals");
    assert!(
        canary(&[s, ("X-CANARY", "always")]),
        "header names are case-insensitive"
    );
    assert!(
        !canary(&[s, ("x-canary", "Always")]),
        "values are case-sensitive"
    );
    assert!(
        canary(&[("cookie", "session=abc; canary=always")]),
        "cookie equals"
    );
    assert!(canary(&[s, ("x-user-group", "staff")]), "header matches");
    assert!(!canary(&[s, ("x-user-group", "staffer")]), "anchored regex");
    assert!(
        canary(&[("cookie", "tier=gold-plus; session=abc")]),
        "cookie matches"
    );
    assert!(canary(&[s, ("x-debug", "")]), "header present");
    assert!(
        canary(&[("cookie", "c=3; session=abc"), ("x-a", "1"), ("x-b", "2")]),
        "AND of three"
    );
    assert!(
        !canary(&[("cookie", "c=3; session=abc"), ("x-a", "1")]),
        "AND needs all"
    );
    assert!(
        canary(&[s, ("x-user-group", "nobody"), ("x-user-group", "beta")]),
        "any value of a repeated header"
    );
}

#[test]
fn header_present_false_means_absent() {
    let r = router(&split("0").replacen(
        "      - { to: canary, when: { header: { name: X-Canary, equals: always } } }\n",
        "      - { to: canary, when: { header: { name: x-legacy, present: false } } }\n",
        1,
    ));
    assert_eq!(version(&r, &headers(&[])).0, "canary");
    assert_eq!(
        version(&r, &headers(&[("x-legacy", "1"), ("cookie", "session=a")])).0,
        "stable"
    );
}

#[test]
fn first_matching_rule_wins_before_sticky_and_weights() {
    let r = router(&split("100"));
    // Weight 100 would send everyone to canary; rule 1 sends `never` to stable first,
    // although rule 2 (same condition, to canary) also matches.
    let (v, reason) = version(
        &r,
        &headers(&[("x-canary", "never"), ("cookie", "session=abc")]),
    );
    assert_eq!((v.as_str(), reason), ("stable", Reason::Rule(1)));
    let (v, reason) = version(&r, &headers(&[("cookie", "session=abc")]));
    assert_eq!(v, "canary");
    assert!(matches!(reason, Reason::Sticky { .. }));
}

#[test]
fn sticky_ignores_the_rng() {
    let r = router(&split("50"));
    let h = headers(&[("cookie", "session=user-42")]);
    let first = r
        .decide(None, "/", &h, &mut SmallRng::seed_from_u64(0))
        .unwrap();
    for seed in 1..200 {
        let d = r
            .decide(None, "/", &h, &mut SmallRng::seed_from_u64(seed))
            .unwrap();
        assert_eq!(d, first);
    }
}

#[test]
fn sticky_is_monotonic_as_weight_grows() {
    let routers: Vec<Router> = ["10", "30", "60"]
        .iter()
        .map(|w| router(&split(w)))
        .collect();
    let mut rng = SmallRng::seed_from_u64(3);
    let mut moved = [0usize; 2];
    for i in 0..20_000 {
        let h = headers(&[("cookie", &format!("session=user-{i}"))]);
        let v: Vec<usize> = routers
            .iter()
            .map(|r| r.decide(None, "/", &h, &mut rng).unwrap().version)
            .collect();
        for step in 0..2 {
            assert!(
                !(v[step] == 1 && v[step + 1] == 0),
                "user-{i} moved canary → stable going from step {step} to {}",
                step + 1
            );
            if v[step] == 0 && v[step + 1] == 1 {
                moved[step] += 1;
            }
        }
    }
    // About 20% and 30% of users move primary → canary at each step.
    assert!((3_600..=4_400).contains(&moved[0]), "{moved:?}");
    assert!((5_500..=6_500).contains(&moved[1]), "{moved:?}");
}

#[test]
fn independently_built_routers_agree_on_100k_keys() {
    let a = router(&split("12.34"));
    let b = router(&split("12.34"));
    let (mut ra, mut rb) = (SmallRng::seed_from_u64(1), SmallRng::seed_from_u64(2));
    let mut canary = 0;
    for i in 0..100_000 {
        let h = headers(&[("cookie", &format!("session={i:x}-key"))]);
        let da = a.decide(None, "/", &h, &mut ra).unwrap();
        let db = b.decide(None, "/", &h, &mut rb).unwrap();
        assert_eq!(da, db, "key {i}");
        canary += usize::from(da.version == 1);
    }
    // The hash spreads keys evenly: 12.34% of 100k, sd = 104.
    assert!((11_820..=12_860).contains(&canary), "{canary}");
}

#[test]
fn sticky_hash_is_pinned() {
    // Part of the product contract: replicas on different releases must agree.
    assert_eq!(
        sticky_bucket("shop", b"user-1"),
        sticky_bucket("shop", b"user-1")
    );
    assert_ne!(
        sticky_bucket("shop", b"user-1"),
        sticky_bucket("cart", b"user-1")
    );
    assert_ne!(sticky_bucket("ab", b"c"), sticky_bucket("a", b"bc"));
    let pinned = [
        sticky_bucket("shop", b"user-1"),
        sticky_bucket("shop", b""),
        sticky_bucket("", b"x"),
    ];
    assert_eq!(
        pinned, PINNED_BUCKETS,
        "the sticky hash changed: every sticky user would move"
    );
    // What a request actually gets (the request path hashes from a precomputed seed, not
    // through `sticky_bucket`): the same pinned bucket, and the same as `sticky_bucket` for
    // any key.
    let r = router(&split("10"));
    let rng = SmallRng::seed_from_u64(7);
    let bucket_of = |key: &str| {
        let h = headers(&[("cookie", &format!("session={key}"))]);
        match r.decide(None, "/", &h, &mut rng.clone()).unwrap().reason {
            Reason::Sticky { bucket } => bucket,
            other => panic!("not sticky: {other:?}"),
        }
    };
    assert_eq!(bucket_of("user-1"), PINNED_BUCKETS[0]);
    for i in 0..200 {
        let key = format!("k{i}");
        assert_eq!(
            bucket_of(&key),
            sticky_bucket("shop", key.as_bytes()),
            "{key}"
        );
    }
}

/// Recorded from the first release; never update without a migration plan.
const PINNED_BUCKETS: [u32; 3] = [9972, 1440, 7113];

#[test]
fn new_user_gets_an_id_that_keeps_them_in_place() {
    let r = router(&split("50"));
    let mut rng = SmallRng::seed_from_u64(9);
    for _ in 0..200 {
        let d = r.decide(None, "/", &HeaderMap::new(), &mut rng).unwrap();
        let id = d.assign.expect("no key: an id is assigned");
        let again = headers(&[("cookie", &format!("canaryd_uid={}", format_id(id)))]);
        let d2 = r.decide(None, "/", &again, &mut rng).unwrap();
        assert_eq!(d2.version, d.version);
        assert_eq!(d2.assign, None, "the assigned cookie is the fallback key");
        assert_eq!(d2.reason, d.reason);
    }
}

#[test]
fn no_assign_cookie_and_no_key_falls_back_to_a_draw() {
    let r = router(&split("50").replace("      assign_cookie: canaryd_uid\n", ""));
    let d = r
        .decide(
            None,
            "/",
            &HeaderMap::new(),
            &mut SmallRng::seed_from_u64(1),
        )
        .unwrap();
    assert!(matches!(d.reason, Reason::Weight { .. }));
    assert_eq!(d.assign, None);
}

#[test]
fn header_sticky_key() {
    let r = router(&split("50").replace("key: { cookie: session }", "key: { header: X-User-Id }"));
    let h = headers(&[("x-user-id", "alice")]);
    let d = r
        .decide(None, "/", &h, &mut SmallRng::seed_from_u64(1))
        .unwrap();
    assert_eq!(
        d.reason,
        Reason::Sticky {
            bucket: sticky_bucket("shop", b"alice")
        }
    );
}

#[test]
fn cookie_parsing() {
    let h = headers(&[
        ("cookie", "xsession=1; session = \"two\" ;a=b"),
        ("cookie", "session=3"),
    ]);
    assert_eq!(cookie(&h, "session"), Some(&b"two"[..]));
    assert_eq!(cookie(&h, "xsession"), Some(&b"1"[..]));
    assert_eq!(cookie(&h, "sess"), None);
    assert_eq!(
        cookie(&headers(&[("cookie", "flag; k=v")]), "k"),
        Some(&b"v"[..])
    );
}

const HOSTS: &str = r#"
listeners: [{ address: 127.0.0.1:8080 }]
routes:
  - name: fallback
    versions: { v: { endpoints: ["127.0.0.1:1"] } }
  - name: wild
    match: { host: "*.example.com" }
    versions: { v: { endpoints: ["127.0.0.1:1"] } }
  - name: wild-deeper
    match: { host: "*.eu.example.com" }
    versions: { v: { endpoints: ["127.0.0.1:1"] } }
  - name: shop
    match: { host: shop.example.com }
    versions: { v: { endpoints: ["127.0.0.1:1"] } }
  - name: shop-api
    match: { host: shop.example.com, path_prefix: /api }
    versions: { v: { endpoints: ["127.0.0.1:1"] } }
  - name: api-any-host
    match: { path_prefix: /api }
    versions: { v: { endpoints: ["127.0.0.1:1"] } }
"#;

#[test]
fn most_specific_route_wins() {
    let r = router(HOSTS);
    let sel = |host: Option<&str>, path| {
        r.select(host, path, &http::Method::GET, &HeaderMap::new())
            .map(|i| r.routes[i].name().to_string())
    };
    assert_eq!(
        sel(Some("shop.example.com"), "/api/v1").as_deref(),
        Some("shop-api")
    );
    assert_eq!(
        sel(Some("SHOP.Example.COM"), "/cart").as_deref(),
        Some("shop")
    );
    assert_eq!(
        sel(Some("www.example.com"), "/api").as_deref(),
        Some("wild")
    );
    assert_eq!(
        sel(Some("a.eu.example.com"), "/").as_deref(),
        Some("wild-deeper")
    );
    assert_eq!(
        sel(Some("example.com"), "/api").as_deref(),
        Some("api-any-host"),
        "wildcard needs a subdomain"
    );
    assert_eq!(sel(Some("other.org"), "/").as_deref(), Some("fallback"));
    assert_eq!(sel(None, "/").as_deref(), Some("fallback"));
}

#[test]
fn no_route_when_nothing_matches() {
    let r = router(&HOSTS.replacen(
        "  - name: fallback\n    versions: { v: { endpoints: [\"127.0.0.1:1\"] } }\n",
        "",
        1,
    ));
    assert_eq!(
        r.select(
            Some("other.org"),
            "/",
            &http::Method::GET,
            &HeaderMap::new()
        ),
        None
    );
}

#[test]
fn request_host_prefers_authority_and_strips_port() {
    let h = headers(&[("host", "Shop.example.com:8080")]);
    let origin_form: http::Uri = "/x".parse().unwrap();
    assert_eq!(request_host(&origin_form, &h), Some("Shop.example.com"));
    let absolute: http::Uri = "http://other.example:81/x".parse().unwrap();
    assert_eq!(request_host(&absolute, &h), Some("other.example"));
    assert_eq!(
        request_host(&origin_form, &headers(&[("host", "[::1]:80")])),
        Some("[::1]")
    );
    assert_eq!(request_host(&origin_form, &HeaderMap::new()), None);
}

#[test]
fn cookie_rules_and_sticky_share_one_parse_with_first_occurrence_winning() {
    let r = router(&split("0"));
    // `canary` appears twice: the first value decides, as with a single lookup.
    let h = headers(&[
        ("cookie", "canary=nope; session=s1"),
        ("cookie", "canary=always"),
    ]);
    assert_eq!(version(&r, &h).0, "stable");
    let h = headers(&[("cookie", "canary=always; canary=nope")]);
    assert_eq!(version(&r, &h), ("canary".to_string(), Reason::Rule(3)));
}

#[test]
fn routes_reading_many_cookies_fall_back_to_lookups() {
    let mut yaml = split("0").replace(
        "    sticky:\n      key: { cookie: session }\n      assign_cookie: canaryd_uid\n",
        "",
    );
    let rules: String = (0..10)
        .map(|i| {
            format!(
                "      - {{ to: canary, when: {{ cookie: {{ name: c{i}, equals: \"yes\" }} }} }}\n"
            )
        })
        .collect();
    yaml = yaml.replacen("    rules:\n", &format!("    rules:\n{rules}"), 1);
    let r = router(&yaml);
    assert_eq!(
        version(&r, &headers(&[("cookie", "c9=yes")])),
        ("canary".to_string(), Reason::Rule(9))
    );
    assert_eq!(version(&r, &headers(&[("cookie", "c9=no")])).0, "stable");
}

/// The pair-splitting reading of RFC 6265 that `cookie` must agree with.
fn cookie_by_pairs<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for h in headers.get_all("cookie") {
        for pair in h.as_bytes().split(|&b| b == b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() == name.as_bytes() {
                let v = pair[eq + 1..].trim_ascii();
                return Some(
                    v.strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v),
                );
            }
        }
    }
    None
}

#[test]
fn cookie_search_agrees_with_pair_splitting() {
    // Random headers over an alphabet dense in separators, names and their fragments.
    let pieces = [
        "s", "id", "sid", "=", ";", " ", "\t", "\"", "x", "sid=", "; sid", "a=b",
    ];
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let mut values = Vec::new();
        for _ in 0..rng.random_range(1..3) {
            let v: String = (0..rng.random_range(0..12))
                .map(|_| pieces[rng.random_range(0..pieces.len())])
                .collect();
            values.push(v);
        }
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("cookie", v.as_str())).collect();
        let h = headers(&pairs);
        for name in ["sid", "id", "s"] {
            assert_eq!(
                cookie(&h, name),
                cookie_by_pairs(&h, name),
                "{name} in {values:?}"
            );
        }
    }
}

#[test]
fn printed_bucket_ranges_are_the_routing_layout() {
    for canary in ["0", "0.01", "10", "33.33", "100"] {
        let r = router(&split(canary));
        let route = &r.routes[0];
        let ranges: Vec<_> = route.bucket_ranges().collect();
        let covered: u32 = ranges.iter().map(|(_, r)| r.end - r.start).sum();
        assert_eq!(covered, BUCKETS, "{canary}: {ranges:?}");
        for (v, range) in &ranges {
            assert!(!range.is_empty(), "{canary}: {ranges:?}");
            for b in range.clone() {
                assert_eq!(route.version_for_bucket(b), *v, "{canary}: bucket {b}");
            }
        }
    }
}

#[test]
fn host_values_split_into_host_and_port() {
    assert_eq!(
        split_port("shop.example:8080"),
        ("shop.example", Some("8080"))
    );
    assert_eq!(split_port("shop.example"), ("shop.example", None));
    assert_eq!(split_port("[::1]:9"), ("[::1]", Some("9")));
    assert_eq!(split_port("[::1]"), ("[::1]", None));
    assert_eq!(split_port("a:b"), ("a:b", None));
}

/// The sticky id's text is part of the contract (it is hashed into the bucket and sent in the
/// cookie): the hand-written digits are exactly `{id:032x}`.
#[test]
fn sticky_ids_are_32_lowercase_hex_digits() {
    let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
    for id in [0, 1, 15, 16, u128::MAX, u128::MAX - 1, 1 << 127] {
        assert_eq!(format_id(id), format!("{id:032x}"));
    }
    for _ in 0..1000 {
        x = x
            .wrapping_mul(0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645)
            .wrapping_add(1);
        assert_eq!(id_hex(x), format!("{x:032x}").as_bytes());
    }
}
