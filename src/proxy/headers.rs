//! Header rewriting between downstream and upstream: hop-by-hop stripping (RFC 9110 §7.6.1)
//! and the `X-Forwarded-*` family.

use crate::config::Upgrades;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_CANARYD_VERSION: HeaderName = HeaderName::from_static("x-canaryd-version");

/// Connection-specific fields that never cross a proxy (RFC 9110 §7.6.1, the legacy
/// `Keep-Alive` / `Proxy-Connection`, and h2c's `HTTP2-Settings`, RFC 9113 §3.2.1), built once.
/// `Connection` must stay first and `TE` at [`TE_SLOT`] (`strip_hop_by_hop` keeps a bit per entry).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];
const TE_SLOT: usize = 3;

/// Remove hop-by-hop headers, including every header that `Connection` names.
/// `TE: trailers` survives because gRPC over HTTP/2 needs it end to end.
///
/// One pass over the names first: most messages carry none of these (or only
/// `Connection: keep-alive`), and hashing all six names to remove them cost more than looking.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for k in headers.keys() {
        // Only names of these lengths can be hop-by-hop: most fields are ruled out here.
        if matches!(k.as_str().len(), 2 | 7 | 10 | 14 | 16 | 17) {
            if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
                present |= 1 << i;
            }
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Names listed in `Connection` other than the usual tokens: allocation only for those.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| {
                !t.eq_ignore_ascii_case(b"close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| t.eq_ignore_ascii_case(h.as_str().as_bytes()))
            })
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let keep_te_trailers = present & (1 << TE_SLOT) != 0
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| list_has(v.as_bytes(), b"trailers"));
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The protocols of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`) that
/// `allowed` permits, in the client's order, as one `Upgrade` value; `None` when the request
/// asks for no upgrade or only for protocols that are not allowed (`h2c` never is), so it is
/// served as plain HTTP/1.1. Allocates only for requests that ask to upgrade.
pub fn allowed_upgrade(headers: &HeaderMap, allowed: &Upgrades) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| list_has(v.as_bytes(), b"upgrade"));
    if !asks {
        return None;
    }
    let mut out: Vec<u8> = Vec::new();
    for t in headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| allowed.allows(t))
    {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(t);
    }
    if out.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&out).ok()
}

/// Does a `101`'s `Upgrade` value name exactly one of the protocols we `offered`?
pub fn upgrade_answers(offered: &HeaderValue, answered: &HeaderValue) -> bool {
    list_has(offered.as_bytes(), answered.as_bytes().trim_ascii())
}

/// Whether a comma-separated field value (`Connection`, `TE`, `Upgrade`…) names `token`, in
/// any case.
pub fn list_has(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the last element of a comma-separated field value is `token`, in any case (the
/// final coding of `Transfer-Encoding` decides the framing).
pub fn list_ends_with(value: &[u8], token: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Re-add the two headers an upgrade needs after hop-by-hop stripping removed them.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// An address as a header value (for `X-Forwarded-For`), rendered once per connection.
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let len = match ip.to_canonical() {
        // By hand: `Display` through `fmt::write` cost ~1.3k instructions, paid once per
        // connection (callgrind, a new connection per request).
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let mut digits = itoa::Buffer::new();
                let d = digits.format(octet).as_bytes();
                buf[len..len + d.len()].copy_from_slice(d);
                len += d.len();
            }
            len
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut w = &mut buf[..];
            let _ = write!(w, "{v6}");
            48 - w.len()
        }
    };
    // Shared bytes: each request's copy of the value is a reference-count increment.
    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&buf[..len]))
        .expect("an IP address is a valid header value")
}

/// The client address that `client_ip` rules test. With `trusted_hops` = 0 it is the TCP
/// peer. With N > 0, N proxies in front of canaryd each appended the address they saw, so
/// the client is the N-th `X-Forwarded-For` entry from the right (or the leftmost when the
/// chain is shorter). Entries further left were written by the client and are never trusted;
/// an unparsable entry gives `None`, which no `client_ip` rule matches.
pub fn client_address(headers: &HeaderMap, peer: IpAddr, trusted_hops: u32) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return Some(peer);
    }
    let entries = || {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
    };
    let total = entries().count();
    if total == 0 {
        return Some(peer);
    }
    let index = total.saturating_sub(trusted_hops as usize);
    let raw = entries().nth(index)?;
    let text = std::str::from_utf8(raw).ok()?.trim();
    text.parse::<IpAddr>()
        .ok()
        // `[v6]:port` and `v4:port` forms, as some proxies write them.
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// A request's `X-Forwarded-*` values, kept beside its headers until an attempt goes out:
/// our upstream HTTP/1.1 exchange writes them straight into the request head; every other
/// path inserts them into the header map ([`Forwarded::apply`]). Inserting three new names
/// into the map hyper sized to the request's own fields grows it (a rehash): 2.3k of a
/// request's 35.8k instructions (callgrind).
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The client address appended to the `X-Forwarded-For` the client sent, if any.
    pub for_: HeaderValue,
    pub proto: HeaderValue,
    /// The host the client asked for; `None` sends no `X-Forwarded-Host`.
    pub host: Option<HeaderValue>,
}

impl Forwarded {
    /// Take the `X-Forwarded-*` fields out of `headers` (one pass over the names, and the
    /// client's own are removed only when present) and compute what goes upstream: the
    /// client address appended to its `X-Forwarded-For`, our `X-Forwarded-Proto`, and
    /// `X-Forwarded-Host` = the host the client asked for.
    pub fn take(
        headers: &mut HeaderMap,
        client: &HeaderValue,
        proto: &'static str,
        host: Option<HeaderValue>,
    ) -> Forwarded {
        let (mut xff, mut others) = (false, false);
        for name in headers.keys() {
            if *name == X_FORWARDED_FOR {
                xff = true;
            } else if *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST {
                others = true;
            }
        }
        let for_ = if xff {
            // Several XFF headers are joined by the comma-list rule before we append.
            let mut joined: Vec<u8> = Vec::with_capacity(64);
            for v in headers.get_all(&X_FORWARDED_FOR) {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.as_bytes());
            headers.remove(&X_FORWARDED_FOR);
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone())
        } else {
            client.clone()
        };
        if others {
            headers.remove(&X_FORWARDED_PROTO);
            headers.remove(&X_FORWARDED_HOST);
        }
        Forwarded {
            for_,
            proto: HeaderValue::from_static(proto),
            host,
        }
    }

    /// Insert the fields into `headers` (which [`Forwarded::take`] left without them).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.reserve(3);
        headers.insert(&X_FORWARDED_FOR, self.for_.clone());
        headers.insert(&X_FORWARDED_PROTO, self.proto.clone());
        if let Some(h) = &self.host {
            headers.insert(&X_FORWARDED_HOST, h.clone());
        }
    }

    /// [`Forwarded::apply`] unless `headers` already have them: a request that came back
    /// unsent (for a retry, or another connection) got them the first time.
    pub fn apply_once(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(&X_FORWARDED_FOR) {
            self.apply(headers);
        }
    }

    /// The fields as head lines, for a request head being written.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut line = |name: &HeaderName, v: &HeaderValue| {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        line(&X_FORWARDED_FOR, &self.for_);
        line(&X_FORWARDED_PROTO, &self.proto);
        if let Some(h) = &self.host {
            line(&X_FORWARDED_HOST, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret , Foo"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn http2_settings_is_hop_by_hop_even_when_connection_does_not_name_it() {
        let mut h = HeaderMap::new();
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQCAAAAAAIAAAAA"),
        );
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn only_allowed_upgrade_tokens_are_offered() {
        let allowed = Upgrades(vec!["websocket".into(), "foo/2".into()]);
        let req = |conn: &'static str, up: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_static(conn));
            h.insert("upgrade", HeaderValue::from_static(up));
            h
        };
        let offered = |h: &HeaderMap| allowed_upgrade(h, &allowed);
        assert_eq!(offered(&req("Upgrade", "WebSocket")).unwrap(), "WebSocket");
        assert_eq!(offered(&req("upgrade, HTTP2-Settings", "h2c")), None);
        assert_eq!(
            offered(&req("keep-alive, Upgrade", "h2c, websocket , foo/2")).unwrap(),
            "websocket, foo/2"
        );
        assert_eq!(
            offered(&req("keep-alive", "websocket")),
            None,
            "no Connection: upgrade"
        );
        assert_eq!(offered(&req("upgrade", "foo")), None, "version must match");
        let v = HeaderValue::from_static;
        assert!(upgrade_answers(&v("websocket, foo/2"), &v(" WEBSOCKET")));
        assert!(!upgrade_answers(&v("websocket"), &v("h2c")));
        assert!(!upgrade_answers(&v("websocket"), &v("websocket, h2c")));
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn client_address_counts_trusted_hops_from_the_right() {
        let peer: IpAddr = "10.9.9.9".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(client_address(&h, peer, 0), ip("10.9.9.9"));
        assert_eq!(client_address(&h, peer, 1), ip("10.0.0.2"));
        assert_eq!(client_address(&h, peer, 2), ip("1.2.3.4"));
        // A chain shorter than the configured hops: the leftmost entry.
        assert_eq!(client_address(&h, peer, 5), ip("6.6.6.6"));
        let mut bad = HeaderMap::new();
        bad.insert(&X_FORWARDED_FOR, HeaderValue::from_static("unknown"));
        assert_eq!(client_address(&bad, peer, 1), None);
        let mut ported = HeaderMap::new();
        ported.insert(&X_FORWARDED_FOR, HeaderValue::from_static("[::1]:443"));
        assert_eq!(client_address(&ported, peer, 1), ip("::1"));
        assert_eq!(client_address(&HeaderMap::new(), peer, 1), ip("10.9.9.9"));
    }

    #[test]
    fn ip_header_writes_addresses_as_display_does() {
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.12.1",
            "192.168.100.9",
            "255.255.255.255",
            "::1",
            "2001:db8::8:800:200c:417a",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(ip_header(ip), ip.to_canonical().to_string().as_str(), "{a}");
        }
        // An IPv4-mapped peer (a dual-stack listener) is written as IPv4.
        assert_eq!(ip_header("::ffff:1.2.3.4".parse().unwrap()), "1.2.3.4");
    }

    #[test]
    fn xff_appends_to_all_existing_values() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        Forwarded::take(
            &mut h,
            &ip_header("127.0.0.1".parse().unwrap()),
            "http",
            Some(HeaderValue::from_static("a.example")),
        )
        .apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }

    #[test]
    fn forwarded_fields_are_taken_out_and_written_once() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let f = Forwarded::take(&mut h, &HeaderValue::from_static("10.0.0.1"), "http", None);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut out = Vec::new();
        f.write(&mut out);
        assert_eq!(
            out,
            b"x-forwarded-for: 1.1.1.1, 10.0.0.1\r\nx-forwarded-proto: http\r\n"
        );
        f.apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.1");
        assert!(!h.contains_key("x-forwarded-host"));
    }
}
