//! Bodies stream through the real binary: 1 GiB up and 1 GiB down while the proxy's peak
//! resident memory stays far below the body size.

mod support;

use support::*;

const GIB: u64 = 1 << 30;
/// Allowed growth of the proxy's peak RSS while 1 GiB passes each way: 1.2 MiB is measured
/// (2026-11-30); 8 MiB leaves room for allocator and buffer-size noise, while buffering even
/// 1 % of a body would fail it.
const MAX_GROWTH_KIB: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_with_flat_memory() {
    let origin = Origin::start("stable").await;
    let yaml = format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nroutes:\n  - name: big\n    versions: {{ stable: {{ endpoints: [\"{}\"] }} }}\n",
        origin.addr
    );
    let proxy = ProxyProcess::start(&yaml);
    let base = format!("http://{}", proxy.addr);
    let c = TestClient::http1();
    // Warm up the connection pools before taking the baseline.
    assert_eq!(c.get(&format!("{base}/"), &[]).await.status, 200);
    let (rss_before, _) = proxy.rss_kib();

    let (status, len) = c.get_len(&format!("{base}/bytes/{GIB}")).await;
    assert_eq!((status.as_u16(), len), (200, GIB));

    let upload = http::Request::post(format!("{base}/sink"))
        .body(http_body_util::BodyExt::boxed(Generated::new(GIB)))
        .unwrap();
    let r = c.send(upload).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, GIB.to_string(), "origin received every byte");

    let (_, peak) = proxy.rss_kib();
    let growth = peak.saturating_sub(rss_before);
    eprintln!("proxy RSS before {rss_before} KiB, peak {peak} KiB, growth {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "proxy peak RSS grew by {growth} KiB while streaming 1 GiB each way"
    );
}

/// An HTTP/2 client that stops reading a download holds the upstream back: canaryd keeps the
/// chunk in hand and what the stream's window lets through, never the body (a reader that
/// stalls on purpose cannot make the proxy buffer for it). Then it reads on and gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2_reader_holds_the_upstream_back() {
    const LEN: u64 = 256 << 20;
    let origin = Origin::start("stable").await;
    let yaml = format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\nroutes:\n  - name: big\n    versions: {{ stable: {{ endpoints: [\"{}\"] }} }}\n",
        origin.addr
    );
    let proxy = ProxyProcess::start(&yaml);
    let mut client = h2_client(proxy.addr).await;
    let get = |path: String| http::Request::get(path).body(()).unwrap();
    // Warm up (pools, buffers) before the baseline.
    let (warm, _) = client
        .send_request(get(format!("http://{}/", proxy.addr)), true)
        .unwrap();
    let mut warm = warm.await.unwrap().into_body();
    while let Some(d) = warm.data().await {
        d.unwrap();
    }
    let (rss_before, _) = proxy.rss_kib();

    let (resp, _) = client
        .send_request(get(format!("http://{}/bytes/{LEN}", proxy.addr)), true)
        .unwrap();
    let mut body = resp.await.unwrap().into_body();
    // Read nothing for a while: a proxy that buffered for a stalled reader would take in
    // hundreds of MiB from the loopback origin by now.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (_, peak) = proxy.rss_kib();
    let growth = peak.saturating_sub(rss_before);
    eprintln!("proxy RSS before {rss_before} KiB, peak while stalled {peak} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "proxy peak RSS grew by {growth} KiB for a reader that stopped reading"
    );

    let mut got = 0u64;
    while let Some(d) = body.data().await {
        let d = d.unwrap();
        got += d.len() as u64;
        body.flow_control().release_capacity(d.len()).unwrap();
    }
    assert_eq!(got, LEN, "the reader got every byte once it read on");
}
