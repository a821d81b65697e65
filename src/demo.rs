//! `canaryd demo`: a self-contained tour on built-in defaults. Two tiny backends on loopback
//! (they answer with the version they are, and take a fault knob), the real proxy in front of
//! them with an `x-canary: always|never` header rule, and a real rollout of the canary —
//! 10 % → 30 % → 60 % → 100 %, judged from live traffic that a built-in generator sends — with
//! the admin API on 127.0.0.1:9901 to watch it, and a command to break the canary and watch
//! the automatic rollback.

use crate::config::Config;
use crate::server::Server;
use bytes::Bytes;
use http::StatusCode;
use http::{Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;

/// Start a demo backend on an ephemeral loopback port that answers every request with
/// `<name>\n`. Returns its address; the task runs until the runtime stops.
pub async fn start_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    start_backend_on(
        name,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Fault::default(),
    )
    .await
}

/// A demo backend's fault knob: a share of requests answered 500, and added latency. Set at
/// start (`canaryd backend --error-rate 0.3 --latency 100ms`) or at run time with
/// `PUT /fault?error_rate=0.3&latency_ms=100` on the backend itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fault {
    /// 0.0 to 1.0.
    pub error_rate: f64,
    pub latency: std::time::Duration,
}

/// Like [`start_backend`], on a given address, with a starting fault.
pub async fn start_backend_on(
    name: &'static str,
    listen: SocketAddr,
    fault: Fault,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // Error rate in millionths and latency in ms, changed at run time by `PUT /fault`.
    let knob = std::sync::Arc::new((
        AtomicU64::new((fault.error_rate.clamp(0.0, 1.0) * 1e6) as u64),
        AtomicU64::new(fault.latency.as_millis() as u64),
    ));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let knob = knob.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let knob = knob.clone();
                    async move { Ok::<_, Infallible>(answer(name, &knob, &req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer<B>(
    name: &str,
    knob: &(AtomicU64, AtomicU64),
    req: &http::Request<B>,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain"),
        );
        resp
    };
    if req.uri().path() == "/fault" && req.method() == http::Method::PUT {
        for pair in req.uri().query().unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("error_rate", v)) => match v.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => {
                        knob.0.store((r * 1e6) as u64, Ordering::Relaxed)
                    }
                    _ => return text(StatusCode::BAD_REQUEST, "error_rate: 0.0 to 1.0\n".into()),
                },
                Some(("latency_ms", v)) => match v.parse::<u64>() {
                    Ok(ms) => knob.1.store(ms, Ordering::Relaxed),
                    _ => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "latency_ms: whole milliseconds\n".into(),
                        );
                    }
                },
                _ => {}
            }
        }
        let (e, l) = (
            knob.0.load(Ordering::Relaxed),
            knob.1.load(Ordering::Relaxed),
        );
        return text(
            StatusCode::OK,
            format!("{name}: error_rate {} latency_ms {l}\n", e as f64 / 1e6),
        );
    }
    let latency = knob.1.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    let rate = knob.0.load(Ordering::Relaxed);
    if rate > 0 && rand::random_range(0..1_000_000u64) < rate {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{name}: injected fault\n"),
        );
    }
    text(StatusCode::OK, format!("{name}\n"))
}

/// The demo's config, shown to the user so they can copy it.
pub fn demo_config_yaml(
    listen: SocketAddr,
    admin: SocketAddr,
    state_file: &std::path::Path,
    stable: SocketAddr,
    canary: SocketAddr,
) -> String {
    format!(
        r#"listeners:
  - address: {listen}
admin:
  address: {admin}
proxy:
  version_header: true
  state_file: {state}
routes:
  - name: demo
    versions:
      stable: {{ endpoints: ["{stable}"] }}
      canary: {{ endpoints: ["{canary}"], weight: 0 }}
    rules:
      - {{ to: canary, when: {{ header: {{ name: x-canary, equals: always }} }} }}
      - {{ to: stable, when: {{ header: {{ name: x-canary, equals: never }} }} }}
    rollout:
      id: demo-v2
      canary: canary
      steps:
        - set_weight: 10
        - pause: 30s
        - analysis: slo
        - set_weight: 30
        - pause: 15s
        - analysis: slo
        - set_weight: 60
        - pause: 15s
        - analysis: slo
      background_analysis: slo
      analysis:
        slo:
          interval: 5s
          window: 10s
          count: 2
          min_requests: 10
          inconclusive_limit: 3
          checks:
            - success_rate: {{ min: 95 }}
            - latency_p99: {{ max: 500ms }}
"#,
        state = state_file.display()
    )
}

/// A light, steady stream of requests to the proxy (about 20 a second) so the rollout's gates
/// have traffic to judge.
async fn generate_traffic(addr: SocketAddr) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let uri: http::Uri = match format!("http://{addr}/").parse() {
        Ok(u) => u,
        Err(_) => return,
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        tick.tick().await;
        if let Ok(req) = http::Request::get(uri.clone()).body(http_body_util::Empty::new()) {
            if let Ok(resp) = client.request(req).await {
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            }
        }
    }
}

/// Run the demo until `shutdown` resolves.
pub async fn run(
    listen: SocketAddr,
    admin: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let stable = start_backend("stable").await?;
    let canary = start_backend("canary").await?;
    // A fresh state file each run: the demo's rollout always starts at step 0.
    let dir = std::env::temp_dir().join(format!("canaryd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let state = dir.join("state.json");
    let _ = std::fs::remove_file(&state);
    let yaml = demo_config_yaml(listen, admin, &state, stable, canary);
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let server = Server::bind(config).await?;
    let addr = server.local_addrs()[0];
    let admin = server.admin_addr().unwrap_or(admin);
    println!("canaryd demo: stable backend on {stable}, canary backend on {canary}");
    println!("proxy on http://{addr} with this config:\n\n{yaml}");
    println!(
        "A rollout of the canary runs now: 10 % -> 30 % -> 60 % -> 100 % in about two minutes,"
    );
    println!(
        "each step judged every 5 s from the traffic a built-in generator sends (about 20/s)."
    );
    println!("Watch it on the dashboard: http://{admin}/ui");
    println!("  (split, health per version, the rollout's steps, PROMOTE / ABORT buttons), or:");
    println!(
        "  curl -N http://{admin}/api/v1/events                      # transitions and measurements, live"
    );
    println!(
        "  curl -s http://{admin}/api/v1/routes/demo/rollout         # phase, step, weights, measurements"
    );
    println!("  canaryd rollout get demo --admin http://{admin}");
    println!(
        "  for i in $(seq 100); do curl -s http://{addr}/; done | sort | uniq -c    # the split now"
    );
    println!("Break the canary and watch the automatic rollback (the canary goes to 0 %):");
    println!("  curl -X PUT 'http://{canary}/fault?error_rate=0.5'");
    println!("Then: curl -X PUT 'http://{canary}/fault?error_rate=0' and");
    println!("  curl -X POST http://{admin}/api/v1/routes/demo/rollout/retry");
    println!("Also:");
    println!(
        "  curl -s -H 'x-canary: always' http://{addr}/                 # header rule -> canary"
    );
    println!(
        "  curl -s --http2-prior-knowledge http://{addr}/               # h2c on the same port"
    );
    println!("Ctrl-C to stop.");
    let traffic = tokio::spawn(generate_traffic(addr));
    let result = server.run(shutdown).await;
    traffic.abort();
    // The state file is this run's alone (the next run starts afresh anyway): leave no
    // directory behind.
    let _ = std::fs::remove_dir_all(&dir);
    result
}
