//! TLS termination with real clients (curl, rustls, a hand-made TLS 1.1 ClientHello),
//! certificate rotation and SNI, and HTTP/2 and TLS to upstreams.

mod support;

use http::StatusCode;
use std::process::Command;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn curl(pki: &TestPki, port: u16, flag: &str) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", flag, "--cacert"])
        .arg(&pki.ca_path)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args([
            "-w",
            "\n%{http_version}",
            &format!("https://localhost:{port}/"),
        ]);
    let out = run_cmd(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {flag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, version) = text.rsplit_once('\n').unwrap();
    (body.to_string(), version.to_string())
}

#[tokio::test]
async fn curl_over_tls_with_http2_and_http1() {
    let pki = TestPki::new();
    let cert = pki.issue(&["localhost"], "a");
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&tls_yaml(&origin, &cert, "")).await;
    let port = proxy.addr.port();
    assert_eq!(
        curl(&pki, port, "--http2").await,
        ("stable".into(), "2".into())
    );
    assert_eq!(
        curl(&pki, port, "--http1.1").await,
        ("stable".into(), "1.1".into())
    );
    let seen = origin.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], format!("localhost:{port}").as_str());
}

/// A client that offers no ALPN may speak either protocol, HTTP/2 with prior knowledge: the
/// first bytes decide (the preface), as on a plain listener. And an HTTP/2 connection that goes
/// away while a request waits for its upstream ends that request, counted as the client's doing.
#[tokio::test]
async fn tls_without_alpn_serves_http1_and_http2_with_prior_knowledge() {
    let pki = TestPki::new();
    let cert = pki.issue(&["localhost"], "a");
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&tls_yaml(&origin, &cert, "")).await;
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let sni = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = pki.client(&[]).connect(sni, tcp).await.expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        tls
    };

    let mut tls = connect().await;
    for _ in 0..2 {
        let answer = http1_over(&mut tls).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("stable"), "{answer}");
    }

    let (client, conn) = h2::client::handshake(connect().await).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let get = |path: &str| {
        http::Request::get(format!("https://localhost{path}"))
            .body(())
            .unwrap()
    };
    let (resp, _) = client.send_request(get("/"), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);

    let (resp, _) = client.send_request(get("/sleep/60000"), true).unwrap();
    wait_for("the origin to see the request", || {
        origin.seen().iter().any(|r| r.uri.path() == "/sleep/60000")
    })
    .await;
    assert_eq!(proxy.metric_value("canaryd_in_flight_requests"), 1.0);
    conn.abort();
    drop((resp, client));
    wait_for("the request to end with its connection", || {
        proxy.metric_value("canaryd_in_flight_requests") == 0.0
    })
    .await;
    let closed = "canaryd_downstream_errors_total{route=\"app\",kind=\"client_closed\"}";
    assert_eq!(proxy.metric(closed), Some(1.0));
}

/// A ClientHello offering at most TLS 1.1 (no supported_versions extension).
fn client_hello_tls11() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
    body.extend([0x01, 0x00]);
    let mut hs = vec![0x01, 0x00];
    hs.extend((body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_accepted() {
    // Hand-made, because today's OpenSSL clients refuse to offer TLS 1.1 themselves.
    let pki = TestPki::new();
    let cert = pki.issue(&["localhost"], "a");
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&tls_yaml(&origin, &cert, "")).await;

    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&client_hello_tls11()).await.unwrap();
    let mut reply = vec![0u8; 7];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut reply))
        .await
        .expect("server answered")
        .unwrap();
    assert_eq!(
        reply[0], 0x15,
        "an alert record, not a ServerHello: {reply:?}"
    );
    assert_eq!(reply[5], 2, "a fatal alert: {reply:?}");
    // rustls answers handshake_failure (40); protocol_version (70) would be as good.
    assert!([40, 70].contains(&reply[6]), "alert {reply:?}");

    // A client limited to TLS 1.2 gets through.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(pki.ca_der.clone()))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

/// Handshake with SNI `name`; the leaf certificate the server sent, and the open stream.
async fn handshake(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    name: &str,
) -> (
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let sni = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = pki
        .client(&[b"http/1.1"])
        .connect(sni, tcp)
        .await
        .expect("handshake");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (leaf, tls)
}

async fn http1_over(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn replace_file(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test]
async fn certificate_rotation_without_restart_and_bad_certs_keep_the_old_one() {
    let pki = TestPki::new();
    let live = pki.issue(&["localhost"], "live");
    let first_der = live.der.clone();
    let origin = Origin::start("stable").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd.yaml");
    std::fs::write(&path, tls_yaml(&origin, &live, "")).unwrap();
    let proxy = Proxy::start_file(&path).await;

    let (leaf, mut old_conn) = handshake(&pki, proxy.addr, "localhost").await;
    assert_eq!(leaf, first_der);

    // Rotate: new key first, then the certificate, each by rename.
    let next = pki.issue(&["localhost"], "next");
    replace_file(&next.key, &live.key);
    replace_file(&next.cert, &live.cert);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (leaf, _) = handshake(&pki, proxy.addr, "localhost").await;
        if leaf == next.der {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotated certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection made before the rotation keeps working on its certificate.
    assert!(http1_over(&mut old_conn).await.starts_with("HTTP/1.1 200"));

    // A broken certificate is rejected and the running one stays.
    std::fs::write(live.cert.with_extension("tmp"), "not a certificate").unwrap();
    std::fs::rename(live.cert.with_extension("tmp"), &live.cert).unwrap();
    wait_for("certificate rejected", || {
        proxy
            .state
            .metrics
            .encode()
            .contains("canaryd_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    let (leaf, _) = handshake(&pki, proxy.addr, "localhost").await;
    assert_eq!(leaf, next.der, "old certificate kept");
    let (_, status) = proxy.admin_call("GET", "/api/v1/reload", "").await;
    assert_eq!(
        status["last_error"]["errors"][0]["field"], "listeners[0].tls.cert",
        "{status}"
    );
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let pki = TestPki::new();
    let default = pki.issue(&["localhost"], "default");
    let shop = pki.issue(&["*.example.com"], "shop");
    let origin = Origin::start("stable").await;
    let sni = format!(
        ", sni: [{{ host: \"*.example.com\", cert: \"{}\", key: \"{}\" }}]",
        shop.cert.display(),
        shop.key.display()
    );
    let proxy = Proxy::start(&tls_yaml(&origin, &default, &sni)).await;
    assert_eq!(
        handshake(&pki, proxy.addr, "shop.example.com").await.0,
        shop.der
    );
    assert_eq!(
        handshake(&pki, proxy.addr, "localhost").await.0,
        default.der
    );
}

/// The error `Server::bind` refuses a valid-looking config with.
async fn bind_error(yaml: &str) -> String {
    let config = canaryd::config::Config::from_yaml(yaml).unwrap();
    match canaryd::server::Server::bind(config).await {
        Ok(_) => panic!("bind should have failed"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn missing_certificate_files_refuse_to_start_naming_the_field() {
    let origin = Origin::start("stable").await;
    let pki = TestPki::new();
    let mut cert = pki.issue(&["localhost"], "a");
    cert.key = pki.dir.path().join("absent.key");
    let err = bind_error(&tls_yaml(&origin, &cert, "")).await;
    assert!(
        err.contains("listeners[0].tls.key") && err.contains("absent.key"),
        "{err}"
    );
    // A key that does not belong to the certificate.
    let other = pki.issue(&["localhost"], "b");
    let mut mixed = pki.issue(&["localhost"], "c");
    mixed.key = other.key;
    let err = bind_error(&tls_yaml(&origin, &mixed, "")).await;
    assert!(
        err.contains("listeners[0].tls.key") && err.contains("does not match"),
        "{err}"
    );
}

fn upstream_yaml(origin: &Origin, extra: &str) -> String {
    format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nroutes:\n  - name: app\n    versions:\n      stable: {{ endpoints: [\"{}\"]{extra} }}\n",
        origin.addr
    )
}

#[tokio::test]
async fn h2c_upstream_speaks_http2() {
    let origin = Origin::start("stable").await;
    let proxy = Proxy::start(&upstream_yaml(&origin, ", protocol: h2c")).await;
    let r = TestClient::http1().get(&proxy.url("/x"), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "stable"));
    assert_eq!(origin.last().version, http::Version::HTTP_2);
}

#[tokio::test]
async fn tls_upstreams_with_a_ca_bundle_and_alpn() {
    let pki = TestPki::new();
    let cert = pki.issue(&["backend.internal"], "backend");
    let origin = Origin::start_tls("secure", &cert).await;
    let tls = format!(
        ", tls: {{ ca: \"{}\", server_name: backend.internal }}",
        pki.ca_path.display()
    );
    for (protocol, want) in [
        ("", http::Version::HTTP_11),
        (", protocol: auto", http::Version::HTTP_2),
        (", protocol: h2c", http::Version::HTTP_2),
    ] {
        let proxy = Proxy::start(&upstream_yaml(&origin, &format!("{tls}{protocol}"))).await;
        let r = TestClient::http1().get(&proxy.url("/"), &[]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "secure"),
            "{protocol}"
        );
        let seen = origin.last();
        assert_eq!(seen.version, want, "{protocol}");
        // hyper-util's client carries TLS upstreams: the X-Forwarded-* fields are inserted
        // into its header map (our own exchange writes them into the head), once each.
        for (name, value) in [
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
        ] {
            let all: Vec<_> = seen.headers.get_all(name).iter().collect();
            assert_eq!(all, [value], "{protocol} {name}");
        }
    }
    // Without the CA the upstream certificate is not trusted: 502, nothing reaches it.
    let before = origin.seen().len();
    let proxy = Proxy::start(&upstream_yaml(
        &origin,
        ", tls: { server_name: backend.internal }",
    ))
    .await;
    let r = TestClient::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(origin.seen().len(), before);
}
