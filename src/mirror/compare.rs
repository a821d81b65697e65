//! The shadow comparison: for a sampled share of copies, the primary's answer (status, chosen
//! headers, and a bounded copy of its body, taken as it streams to the client: [`Capture`])
//! against the shadow's. JSON bodies compare structurally, without the ignored fields; other
//! bodies by length and hash.

use crate::config::CompareConfig;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tokio::sync::oneshot;

/// One side of a comparison.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub status: u16,
    /// The compared headers, in config order (`None`: absent).
    pub headers: Vec<(HeaderName, Option<HeaderValue>)>,
    pub body: BytesMut,
    /// The body went past the comparison's `max_body`.
    pub truncated: bool,
    /// The body ended normally (the client did not leave, the upstream did not fail).
    pub complete: bool,
}

impl Seen {
    pub fn head(status: u16, headers: &HeaderMap, names: &[HeaderName]) -> Seen {
        Seen {
            status,
            headers: names
                .iter()
                .map(|n| (n.clone(), headers.get(n).cloned()))
                .collect(),
            ..Seen::default()
        }
    }

    /// Keep `d` while the body is within `max` bytes.
    pub fn data(&mut self, d: &Bytes, max: usize) {
        if self.truncated {
            return;
        }
        if self.body.len() + d.len() > max {
            self.truncated = true;
            self.body.clear();
        } else {
            self.body.extend_from_slice(d);
        }
    }
}

/// The primary response's side, riding along its body to the client: what passed, sent to
/// the comparator when the body ends (or, incomplete, when it is dropped).
#[derive(Debug)]
pub struct Capture {
    tx: Option<oneshot::Sender<Seen>>,
    seen: Seen,
    max: usize,
    names: Vec<HeaderName>,
}

impl Capture {
    pub fn new(tx: oneshot::Sender<Seen>, max: u64, names: Vec<HeaderName>) -> Capture {
        Capture {
            tx: Some(tx),
            seen: Seen::default(),
            max: usize::try_from(max).unwrap_or(usize::MAX),
            names,
        }
    }

    /// The primary's status and headers, as the upstream answered.
    pub fn head(&mut self, status: u16, headers: &HeaderMap) {
        self.seen = Seen::head(status, headers, &self.names);
    }

    pub fn data(&mut self, d: &Bytes) {
        self.seen.data(d, self.max);
    }

    /// The body ended: hand it to the comparator.
    pub fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.seen.complete = true;
            let _ = tx.send(std::mem::take(&mut self.seen));
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(std::mem::take(&mut self.seen));
        }
    }
}

/// One differing pair, as `GET /api/v1/routes/{r}/mirror/diffs` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub at: String,
    pub method: String,
    pub path: String,
    pub primary_status: u16,
    pub shadow_status: u16,
    /// `status`, `header`, `body`.
    pub kinds: Vec<&'static str>,
    /// What differed, shortly: `status 200 vs 500`, `content-type: "a" vs "b"`,
    /// `$.price: 10 vs 12`.
    pub diff: Vec<String>,
}

/// What differs between the primary's answer and the shadow's: each kind with a short text.
/// Empty: they match. Bodies are compared only when both are complete and within the cap.
pub fn compare(cfg: &CompareConfig, primary: &Seen, shadow: &Seen) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if primary.status != shadow.status {
        out.push((
            "status",
            format!("status {} vs {}", primary.status, shadow.status),
        ));
    }
    for ((name, a), (_, b)) in primary.headers.iter().zip(&shadow.headers) {
        if a != b {
            let show = |v: &Option<HeaderValue>| {
                v.as_ref().map_or("(absent)".to_string(), |v| {
                    format!("{:?}", String::from_utf8_lossy(v.as_bytes()))
                })
            };
            out.push(("header", format!("{name}: {} vs {}", show(a), show(b))));
        }
    }
    if primary.truncated || shadow.truncated || !primary.complete || !shadow.complete {
        return out;
    }
    if let Some(d) = body_diff(cfg, &primary.body, &shadow.body) {
        out.push(("body", d));
    }
    out
}

fn body_diff(cfg: &CompareConfig, a: &[u8], b: &[u8]) -> Option<String> {
    let json = |s: &[u8]| serde_json::from_slice::<serde_json::Value>(s).ok();
    if let (Some(mut ja), Some(mut jb)) = (json(a), json(b)) {
        for path in &cfg.ignore {
            strip(&mut ja, path);
            strip(&mut jb, path);
        }
        return first_difference("$", &ja, &jb);
    }
    if a == b {
        return None;
    }
    Some(if a.len() != b.len() {
        format!("body length {} vs {}", a.len(), b.len())
    } else {
        format!(
            "bodies of {} bytes differ (fnv {:016x} vs {:016x})",
            a.len(),
            crate::hash::fnv(crate::hash::FNV_OFFSET, a.iter()),
            crate::hash::fnv(crate::hash::FNV_OFFSET, b.iter())
        )
    })
}

/// Remove an ignored field: `a.b.c` from the top, or a plain `name` at any depth.
fn strip(v: &mut serde_json::Value, path: &str) {
    if path.contains('.') {
        let mut parts = path.split('.').peekable();
        let mut cur = v;
        while let Some(p) = parts.next() {
            let Some(obj) = cur.as_object_mut() else {
                return;
            };
            if parts.peek().is_none() {
                obj.remove(p);
                return;
            }
            match obj.get_mut(p) {
                Some(next) => cur = next,
                None => return,
            }
        }
        return;
    }
    match v {
        serde_json::Value::Object(m) => {
            m.remove(path);
            m.values_mut().for_each(|x| strip(x, path));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| strip(x, path)),
        _ => {}
    }
}

/// The first place two JSON values differ, as `path: a vs b`.
fn first_difference(path: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(&p, u, v),
                    (u, v) => Some(format!("{p}: {} vs {}", short(u), short(v))),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(&format!("{path}[{i}]"), u, v)),
        _ if a == b => None,
        _ => Some(format!("{path}: {} vs {}", short(Some(a)), short(Some(b)))),
    }
}

fn short(v: Option<&serde_json::Value>) -> String {
    match v {
        None => "(absent)".to_string(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 60 {
                format!("{}…", s.chars().take(60).collect::<String>())
            } else {
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Weight;

    fn cfg(ignore: &[&str]) -> CompareConfig {
        CompareConfig {
            sample: Weight(1000),
            headers: vec![http::header::CONTENT_TYPE],
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            max_body: 1024,
        }
    }

    fn seen(status: u16, ct: &str, body: &str) -> Seen {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(ct).unwrap(),
        );
        let mut s = Seen::head(status, &h, &[http::header::CONTENT_TYPE]);
        s.data(&Bytes::from(body.to_string()), 1024);
        s.complete = true;
        s
    }

    #[test]
    fn json_compares_structurally_without_the_ignored_fields() {
        let j = "application/json";
        let a = seen(200, j, r#"{"id": 1, "price": 10, "meta": {"ts": 5}}"#);
        // Key order and whitespace do not matter; ignored fields neither.
        let b = seen(200, j, r#"{"meta": {"ts": 9}, "price": 10, "id": 2}"#);
        assert!(compare(&cfg(&["id", "meta.ts"]), &a, &b).is_empty());
        let d = compare(&cfg(&["id"]), &a, &b);
        assert_eq!(d, vec![("body", "$.meta.ts: 5 vs 9".to_string())]);
        let c = seen(200, j, r#"{"id": 1, "price": 12, "meta": {"ts": 5}}"#);
        assert_eq!(
            compare(&cfg(&[]), &a, &c),
            vec![("body", "$.price: 10 vs 12".to_string())]
        );
    }

    #[test]
    fn status_headers_and_other_bodies() {
        let a = seen(200, "text/plain", "hello");
        let b = seen(500, "text/html", "hello!");
        let kinds: Vec<&str> = compare(&cfg(&[]), &a, &b).iter().map(|d| d.0).collect();
        assert_eq!(kinds, ["status", "header", "body"]);
        // A body past the cap is not compared; an incomplete one neither.
        let mut big = seen(200, "text/plain", "x");
        big.data(&Bytes::from(vec![b'y'; 2000]), 1024);
        assert!(big.truncated);
        assert!(compare(&cfg(&[]), &a, &big).is_empty());
        let mut cut = seen(200, "text/plain", "hel");
        cut.complete = false;
        assert!(compare(&cfg(&[]), &a, &cut).is_empty());
    }
}
