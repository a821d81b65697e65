//! Listeners and connection serving. [`Server::bind`] binds every listener up front (so
//! tests can bind port 0 and read the real address), [`Server::run`] accepts until the
//! shutdown future resolves, then drains open connections.

use crate::admin::{self, Admin};
use crate::config::{Config, ConfigError};
use crate::control::Control;
use crate::proxy::{self, ConnInfo, GaugeGuard};
use crate::state::State;
use crate::tls::TlsListener;
use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// HTTP/2 streams one client may have open at once.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams reset by the client before we answered, tolerated at once (rapid reset,
/// CVE-2023-44487): beyond this hyper/h2 sends GOAWAY.
const H2_MAX_PENDING_RESET_STREAMS: usize = 20;
/// Largest HTTP/2 header block accepted (CONTINUATION floods are bounded by it).
const H2_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Most header fields in one HTTP/1 request.
const H1_MAX_HEADERS: usize = 100;

/// Settings fixed at startup for every listener (a reload cannot change them).
#[derive(Clone)]
struct ConnLimits {
    /// Process-wide cap on open downstream connections.
    slots: Arc<tokio::sync::Semaphore>,
    header_timeout: Duration,
    drain_timeout: Duration,
}

/// Environment variable holding the admin API bearer token; wins over `admin.token`.
pub const ADMIN_TOKEN_ENV: &str = "CANARYD_ADMIN_TOKEN";

/// Longest a client may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Server {
    state: Arc<State>,
    control: Arc<Control>,
    /// Each listener with its TLS certificates, if it terminates TLS.
    listeners: Vec<(TcpListener, Option<Arc<TlsListener>>)>,
    admin: Option<(TcpListener, Option<String>)>,
}

impl Server {
    /// Bind every listener of `config` and build the first snapshot. No file: reloads are
    /// not possible, runtime overrides are.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        Self::bind_inner(config, None, None).await
    }

    /// Read, validate and bind the config at `path`; it is watched and reloaded from then on.
    pub async fn bind_file(path: &Path) -> anyhow::Result<Server> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config = Config::from_yaml(&text).map_err(|e: ConfigError| {
            anyhow::anyhow!("{}: invalid config:\n{e}", path.display())
        })?;
        // Absolute, so the watcher and reloads do not depend on the working directory.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Self::bind_inner(config, Some(path), Some(&text)).await
    }

    async fn bind_inner(
        config: Config,
        path: Option<PathBuf>,
        text: Option<&str>,
    ) -> anyhow::Result<Server> {
        let admin = match &config.admin {
            None => None,
            Some(a) => {
                let token = std::env::var(ADMIN_TOKEN_ENV)
                    .ok()
                    .filter(|t| !t.is_empty())
                    .or_else(|| a.token.as_ref().map(|s| s.0.clone()));
                if !a.address.ip().is_loopback() && token.is_none() {
                    anyhow::bail!(
                        "admin.address {} is not loopback: set admin.token or {ADMIN_TOKEN_ENV} so the admin API is not open to the network",
                        a.address
                    );
                }
                let listener = TcpListener::bind(a.address)
                    .await
                    .with_context(|| format!("cannot bind admin listener {}", a.address))?;
                Some((listener, token))
            }
        };
        let mut listeners = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let tls = match &l.tls {
                Some(files) => Some(Arc::new(
                    TlsListener::load(files, &format!("listeners[{i}].tls"))
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                )),
                None => None,
            };
            let listener = TcpListener::bind(l.address)
                .await
                .with_context(|| format!("cannot bind listener {}", l.address))?;
            listeners.push((listener, tls));
        }
        let tls: Vec<Arc<TlsListener>> = listeners.iter().filter_map(|(_, t)| t.clone()).collect();
        let state = Arc::new(State::new(config).map_err(|e| anyhow::anyhow!("{e}"))?);
        let control = Arc::new(Control::new(state.clone(), path, text, tls));
        Ok(Server {
            state,
            control,
            listeners,
            admin,
        })
    }

    /// The admin listener's bound address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Actual bound addresses, in config order (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Serve until `shutdown` resolves, then stop accepting and let open connections finish
    /// (HTTP/1 gets `Connection: close`, HTTP/2 a GOAWAY) for up to `proxy.drain_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin_task = self.admin.map(|(listener, token)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admin listening");
            }
            let admin = Arc::new(Admin {
                control: self.control.clone(),
                token,
            });
            tokio::spawn(admin::serve(listener, admin, admin_stop_rx))
        });
        let watcher = match self.control.path() {
            Some(path) => {
                tracing::info!(path = %path.display(), "watching config file");
                Some(crate::watch::spawn(self.control.clone())?)
            }
            None => None,
        };
        let settings = self.state.snapshot().config.proxy.clone();
        let limits = ConnLimits {
            slots: Arc::new(tokio::sync::Semaphore::new(settings.max_connections)),
            header_timeout: settings.header_timeout,
            drain_timeout: settings.drain_timeout,
        };
        let mut loops = JoinSet::new();
        for (listener, tls) in self.listeners {
            let addr = listener.local_addr()?;
            tracing::info!(
                %addr,
                tls = tls.is_some(),
                generation = self.state.snapshot().generation,
                "proxy listening"
            );
            loops.spawn(accept_loop(
                listener,
                tls,
                self.state.clone(),
                limits.clone(),
                stop_rx.clone(),
            ));
        }
        shutdown.await;
        tracing::info!("shutting down: draining connections");
        // /readyz turns 503 first, then listeners close; the admin stays up during the drain.
        self.state.set_draining();
        let _ = stop_tx.send(true);
        while loops.join_next().await.is_some() {}
        if let Some(w) = watcher {
            w.abort();
        }
        let _ = admin_stop_tx.send(true);
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsListener>>,
    state: Arc<State>,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(H1_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESET_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_SIZE);
    let graceful = GracefulShutdown::new();

    loop {
        // At the cap, stop accepting: new clients wait in the kernel's backlog, nothing breaks.
        let slot = tokio::select! {
            _ = stop.changed() => break,
            s = limits.slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
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
            proto: if tls.is_some() { "https" } else { "http" },
        };
        let st = state.clone();
        let svc = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(proxy::handle(&st, conn_info, req).await) }
        });
        // Taken now so a shutdown that starts during a TLS handshake still waits for it.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let metrics = state.metrics.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let _open = GaugeGuard::new(&metrics.open_connections);
            let result = match acceptor {
                None => {
                    // hyper's header timer starts with the first request; a client that never
                    // sends a byte would otherwise hold the connection (and a slot) forever.
                    // `peek`, not `readable()`: readiness may be reported before any byte is
                    // there, and hyper's own timer only starts with the first byte.
                    let mut first = [0u8; 1];
                    if !matches!(
                        tokio::time::timeout(header_timeout, stream.peek(&mut first)).await,
                        Ok(Ok(1..))
                    ) {
                        tracing::debug!(%peer, "no request bytes in time; closing");
                        return;
                    }
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}
