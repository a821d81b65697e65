//! `canaryd demo`: a self-contained tour on built-in defaults. Two tiny backends on loopback
//! (they answer with the version they are), and the real proxy in front of them with a 10 %
//! canary and an `x-canary: always|never` header rule.

use crate::config::Config;
use crate::server::Server;
use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Start a demo backend on an ephemeral loopback port that answers every request with
/// `<name>\n`. Returns its address; the task runs until the runtime stops.
pub async fn start_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    start_backend_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Like [`start_backend`], on a given address.
pub async fn start_backend_on(
    name: &'static str,
    listen: SocketAddr,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    let mut resp = Response::new(Full::new(Bytes::from(format!("{name}\n"))));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The demo's config, shown to the user so they can copy it.
pub fn demo_config_yaml(listen: SocketAddr, stable: SocketAddr, canary: SocketAddr) -> String {
    format!(
        r#"listeners:
  - address: {listen}
proxy:
  version_header: true
routes:
  - name: demo
    versions:
      stable: {{ endpoints: ["{stable}"] }}
      canary: {{ endpoints: ["{canary}"], weight: 10 }}
    rules:
      - {{ to: canary, when: {{ header: {{ name: x-canary, equals: always }} }} }}
      - {{ to: stable, when: {{ header: {{ name: x-canary, equals: never }} }} }}
"#
    )
}

/// Run the demo until `shutdown` resolves.
pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let stable = start_backend("stable").await?;
    let canary = start_backend("canary").await?;
    let yaml = demo_config_yaml(listen, stable, canary);
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let server = Server::bind(config).await?;
    let addr = server.local_addrs()[0];
    println!("canaryd demo: stable backend on {stable}, canary backend on {canary}");
    println!("proxy on http://{addr} with this config:\n\n{yaml}");
    println!("Try:");
    println!("  curl -si http://{addr}/ | grep -i -e x-canaryd-version -e '^stable' -e '^canary'");
    println!(
        "  for i in $(seq 100); do curl -s http://{addr}/; done | sort | uniq -c    # about 90 stable / 10 canary"
    );
    println!(
        "  curl -s -H 'x-canary: always' http://{addr}/                           # always canary"
    );
    println!(
        "  curl -s -H 'x-canary: never' http://{addr}/                            # always stable"
    );
    println!(
        "  curl -s --http2-prior-knowledge http://{addr}/                         # h2c on the same port"
    );
    println!("Ctrl-C to stop.");
    server.run(shutdown).await
}
