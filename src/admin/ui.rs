//! The dashboard's shell at `/ui`: HTML, script, style and the vendored chart library
//! (uPlot, MIT, `ui/vendor/`), compiled into the binary — no CDN, no build step. The shell is
//! open; everything it shows comes from `/api/v1` calls that carry the operator's token, so
//! the shell itself holds nothing to protect.
//!
//! Every admin response carries [`SECURITY_HEADERS`]: a Content-Security-Policy that allows
//! only this origin's scripts, styles and fetches (no inline script, no remote origin, no
//! framing), `nosniff`, and no referrer.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use std::sync::OnceLock;

/// Sent with every admin response, the API's included.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// Add [`SECURITY_HEADERS`] (kept where a response set its own).
pub fn secure(headers: &mut HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
}

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &[u8] = include_bytes!("../../ui/index.html");

const ASSETS: &[Asset] = &[
    Asset {
        path: "/ui",
        content_type: "text/html; charset=utf-8",
        body: INDEX,
    },
    Asset {
        path: "/ui/",
        content_type: "text/html; charset=utf-8",
        body: INDEX,
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/app.css"),
    },
    Asset {
        path: "/ui/vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/ui/vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uPlot.min.css"),
    },
    Asset {
        path: "/ui/vendor/uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uPlot.LICENSE"),
    },
];

/// Each asset's entity tag (a hash of its bytes), computed once.
fn etags() -> &'static [HeaderValue] {
    static TAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let h = crate::hash::fnv(crate::hash::FNV_OFFSET, a.body);
                HeaderValue::from_str(&format!("\"{h:016x}\"")).expect("hex is a valid header")
            })
            .collect()
    })
}

/// `GET` of a dashboard path: the asset (or 304 when the browser has it), `/` redirected to
/// `/ui`; `None` for any other path.
pub fn asset(path: &str, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    if path == "/" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"the dashboard is at /ui\n")));
        *r.status_mut() = StatusCode::FOUND;
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/ui"));
        return Some(r);
    }
    let i = ASSETS.iter().position(|a| a.path == path)?;
    let (a, tag) = (&ASSETS[i], &etags()[i]);
    let fresh = headers.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii() == tag.as_bytes())
    });
    let mut r = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Full::new(Bytes::from_static(a.body)))
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    // Revalidated every time (a new binary may serve a new page), nearly free with the tag.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, tag.clone());
    Some(r)
}
