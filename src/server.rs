//! Listeners and connection serving. [`Server::bind`] binds every listener up front (so
//! tests can bind port 0 and read the real address), [`Server::run`] accepts until the
//! shutdown future resolves, then drains open connections.

use crate::config::Config;
use crate::proxy::{self, ConnInfo};
use crate::state::State;
use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long open connections get to finish in-flight requests after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Header-read timeout for HTTP/1 requests (slowloris): hyper enforces it only with a timer.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Server {
    state: Arc<State>,
    listeners: Vec<TcpListener>,
}

impl Server {
    /// Bind every listener of `config` and build the first snapshot.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let listener = TcpListener::bind(l.address)
                .await
                .with_context(|| format!("cannot bind listener {}", l.address))?;
            listeners.push(listener);
        }
        Ok(Server {
            state: Arc::new(State::new(config)),
            listeners,
        })
    }

    /// Actual bound addresses, in config order (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Serve until `shutdown` resolves, then stop accepting and let open connections finish
    /// (HTTP/1 gets `Connection: close`, HTTP/2 a GOAWAY) for up to [`DRAIN_TIMEOUT`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();
        for listener in self.listeners {
            let addr = listener.local_addr()?;
            tracing::info!(%addr, generation = self.state.snapshot().generation, "proxy listening");
            loops.spawn(accept_loop(listener, self.state.clone(), stop_rx.clone()));
        }
        shutdown.await;
        tracing::info!("shutting down: draining connections");
        let _ = stop_tx.send(true);
        while loops.join_next().await.is_some() {}
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            res = listener.accept() => match res {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn_info = ConnInfo {
            peer,
            proto: "http",
        };
        let st = state.clone();
        let svc = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(proxy::handle(&st, conn_info, req).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}
