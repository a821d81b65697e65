//! Listeners and connection serving. [`Server::bind`] binds every listener up front (so
//! tests can bind port 0 and read the real address), [`Server::run`] accepts until the
//! shutdown future resolves, then drains open connections.

pub mod h1;
pub mod h1guard;
mod h2;
mod park;
mod tasks;

pub use park::set_heap_release;

use crate::admin::{self, Admin};
use crate::config::{Config, ConfigError};
use crate::control::Control;
use crate::error::DownstreamErrorKind;
use crate::proxy::{self, ConnInfo, GaugeGuard};
use crate::rollout::driver::Rollouts;
use crate::rollout::fleet::Fleet;
use crate::series::Series;
use crate::state::State;
use crate::tls::TlsListener;
use anyhow::Context;
use futures_util::FutureExt as _;
use h1guard::Guarded;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{TryAcquireError, watch};
use tokio::task::JoinSet;

/// HTTP/2 streams one client may have open at once.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams reset by the client before we answered, tolerated at once (rapid reset,
/// CVE-2023-44487): beyond this hyper/h2 sends GOAWAY.
const H2_MAX_PENDING_RESET_STREAMS: usize = 20;
/// Largest HTTP/2 header block accepted (CONTINUATION floods are bounded by it).
const H2_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Largest HTTP/1 request head (hyper's read buffer cap, so also its largest read): beyond it
/// the client gets 431. Same bound as the HTTP/2 header list.
pub(crate) const H1_MAX_BUF: usize = 64 * 1024;

/// The HTTP/2 connection preface (RFC 9113 §3.4): a connection that starts with it (or with the
/// start of it) without having agreed on a protocol by ALPN is served as HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Settings fixed at startup for every listener (a reload cannot change them).
#[derive(Clone)]
struct ConnLimits {
    /// Process-wide cap on open downstream connections.
    slots: Arc<tokio::sync::Semaphore>,
    header_timeout: Duration,
    drain_timeout: Duration,
    idle_timeout: Duration,
}

/// Environment variable holding the admin API bearer token; wins over `admin.token`.
pub const ADMIN_TOKEN_ENV: &str = "CANARYD_ADMIN_TOKEN";

pub struct Server {
    state: Arc<State>,
    control: Arc<Control>,
    /// The routes' rollouts, resumed from the state file at bind so the first request
    /// already sees the rollout's weights.
    rollouts: Arc<Rollouts>,
    /// Each listener with its TLS certificates, if it terminates TLS: one socket per
    /// per-core worker (`SO_REUSEPORT`), or one shared by the whole runtime.
    listeners: Vec<(Vec<TcpListener>, Option<Arc<TlsListener>>)>,
    admin: Option<(TcpListener, Option<String>)>,
    /// The config file watcher, started at bind so that a change written as soon as bind
    /// returns is seen (not left to the 10 s periodic re-read); stopped with the server.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

/// What a process is: a proxy (`canaryd run`) or a fleet controller (`canaryd controller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Proxy,
    Controller,
}

/// `canaryd run --kubernetes` without `--config`: the proxy on port 8080 of every address,
/// the admin API (metrics, analysis) on loopback port 9901.
pub const KUBERNETES_DEFAULTS: &str =
    "listeners:\n  - address: 0.0.0.0:8080\nadmin:\n  address: 127.0.0.1:9901\n";

impl Server {
    /// Bind every listener of `config` and build the first snapshot. No file: reloads are
    /// not possible, runtime overrides are.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        Self::bind_inner(config, None, None, 1, Role::Proxy).await
    }

    /// [`Server::bind`] for `workers` per-core workers: each listener address is bound
    /// `workers` times with `SO_REUSEPORT` (the kernel spreads new connections over the
    /// sockets), and [`Server::run`] serves sockets 1.. on threads of their own, each with a
    /// single-threaded runtime; the caller's runtime serves socket 0.
    pub async fn bind_per_core(config: Config, workers: usize) -> anyhow::Result<Server> {
        Self::bind_inner(config, None, None, workers, Role::Proxy).await
    }

    /// Read, validate and bind the config at `path`; it is watched and reloaded from then on.
    pub async fn bind_file(path: &Path) -> anyhow::Result<Server> {
        Self::bind_file_per_core(path, 1).await
    }

    /// [`Server::bind_file`] with [`Server::bind_per_core`]'s workers.
    pub async fn bind_file_per_core(path: &Path, workers: usize) -> anyhow::Result<Server> {
        Self::bind_file_as(path, workers, Role::Proxy, false).await
    }

    /// `canaryd run --kubernetes`: routes come from Kubernetes objects (the caller starts
    /// the watcher with [`Server::control`]); the file, if any, adds its own routes and
    /// settings and may have no routes. Without a file: [`KUBERNETES_DEFAULTS`].
    pub async fn bind_kubernetes(path: Option<&Path>, workers: usize) -> anyhow::Result<Server> {
        let server = match path {
            Some(p) => Self::bind_file_as(p, workers, Role::Proxy, true).await?,
            None => {
                let config = Config::from_yaml_with(KUBERNETES_DEFAULTS, true)
                    .map_err(|e| anyhow::anyhow!("built-in defaults: {e}"))?;
                Self::bind_inner(config, None, None, workers, Role::Proxy).await?
            }
        };
        server.control.set_kube_mode();
        Ok(server)
    }

    /// `canaryd controller`: the fleet controller of the file at `path` (watched and reloaded
    /// like a proxy's): its admin listener and the rollouts of its routes, carried out on the
    /// replicas its `controller:` section names.
    pub async fn bind_controller(path: &Path) -> anyhow::Result<Server> {
        Self::bind_file_as(path, 1, Role::Controller, false).await
    }

    async fn bind_file_as(
        path: &Path,
        workers: usize,
        role: Role,
        routes_optional: bool,
    ) -> anyhow::Result<Server> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config = Config::from_yaml_with(&text, routes_optional).map_err(|e: ConfigError| {
            anyhow::anyhow!("{}: invalid config:\n{e}", path.display())
        })?;
        // Absolute, so the watcher and reloads do not depend on the working directory.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut server =
            Self::bind_inner(config, Some(path.clone()), Some(&text), workers, role).await?;
        tracing::info!(path = %path.display(), "watching config file");
        server.watcher = Some(crate::control::watch::spawn(server.control.clone())?);
        Ok(server)
    }

    async fn bind_inner(
        config: Config,
        path: Option<PathBuf>,
        text: Option<&str>,
        workers: usize,
        role: Role,
    ) -> anyhow::Result<Server> {
        match (role, config.controller.is_some()) {
            (Role::Proxy, true) => anyhow::bail!(
                "this is a fleet controller's file (it has a `controller:` section and its versions are names): run it with `canaryd controller --config FILE`; `canaryd run` needs a replica's config with listeners and endpoints"
            ),
            (Role::Controller, false) => anyhow::bail!(
                "`canaryd controller` needs a `controller:` section (targets or targets_dns, state_file) naming the replicas it drives; this file has none"
            ),
            _ => {}
        }
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
            let sockets = bind_listener(l.address, workers)
                .await
                .with_context(|| format!("cannot bind listener {}", l.address))?;
            listeners.push((sockets, tls));
        }
        let tls: Vec<Arc<TlsListener>> = listeners.iter().filter_map(|(_, t)| t.clone()).collect();
        let state =
            Arc::new(State::with_workers(config, workers).map_err(|e| anyhow::anyhow!("{e}"))?);
        let control = Arc::new(Control::new(state.clone(), path, text, tls));
        let rollouts = match role {
            Role::Proxy => Rollouts::local(control.clone()),
            Role::Controller => Rollouts::new(
                Box::new(Fleet::connect(control.clone()).await),
                control.clone(),
            ),
        };
        Ok(Server {
            state,
            control,
            rollouts,
            listeners,
            admin,
            watcher: None,
        })
    }

    /// The admin listener's bound address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    pub fn rollouts(&self) -> Arc<Rollouts> {
        self.rollouts.clone()
    }

    /// Actual bound addresses, in config order (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.first()?.local_addr().ok())
            .collect()
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Serve until `shutdown` resolves, then stop accepting and let open connections finish
    /// (HTTP/1 gets `Connection: close`, HTTP/2 a GOAWAY) for up to `proxy.drain_timeout`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let engine = tokio::spawn(self.rollouts.clone().run(admin_stop_rx.clone()));
        let series = Series::new();
        let sampler = tokio::spawn(series.clone().run(
            self.control.clone(),
            self.rollouts.clone(),
            admin_stop_rx.clone(),
        ));
        let admin_task = self.admin.take().map(|(listener, token)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admin listening");
            }
            let admin = Arc::new(Admin {
                control: self.control.clone(),
                rollouts: self.rollouts.clone(),
                series,
                token,
            });
            tokio::spawn(admin::serve(listener, admin, admin_stop_rx))
        });
        let watcher = self.watcher.take();
        let settings = self.state.snapshot().config.proxy.clone();
        let limits = ConnLimits {
            slots: Arc::new(tokio::sync::Semaphore::new(settings.max_connections)),
            header_timeout: settings.header_timeout,
            drain_timeout: settings.drain_timeout,
            idle_timeout: settings.idle_timeout,
        };
        let mut loops = JoinSet::new();
        // Sockets 1.. of each listener, by worker: served on threads of their own.
        let mut per_worker: Vec<Vec<(std::net::TcpListener, Option<Arc<TlsListener>>)>> =
            Vec::new();
        for (sockets, tls) in std::mem::take(&mut self.listeners) {
            let mut sockets = sockets.into_iter();
            let Some(listener) = sockets.next() else {
                continue;
            };
            let addr = listener.local_addr()?;
            tracing::info!(
                %addr,
                tls = tls.is_some(),
                workers = sockets.len() + 1,
                generation = self.state.snapshot().generation,
                "proxy listening"
            );
            // This runtime is worker 0; the threads below are workers 1...
            loops.spawn(accept_loop(
                listener,
                0,
                tls.clone(),
                self.state.clone(),
                limits.clone(),
                stop_rx.clone(),
            ));
            for (i, socket) in sockets.enumerate() {
                if per_worker.len() <= i {
                    per_worker.push(Vec::new());
                }
                // Deregistered from this runtime; the worker's runtime registers it again.
                per_worker[i].push((socket.into_std()?, tls.clone()));
            }
        }
        let mut workers = Vec::new();
        for (i, sockets) in per_worker.into_iter().enumerate() {
            let (state, limits, stop) = (self.state.clone(), limits.clone(), stop_rx.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("canaryd-worker-{}", i + 1))
                    .spawn(move || run_worker(i + 1, sockets, state, limits, stop))
                    .context("cannot start a worker thread")?,
            );
        }
        shutdown.await;
        tracing::info!("shutting down: draining connections");
        // /readyz turns 503 first, then listeners close; the admin stays up during the drain.
        self.state.set_draining();
        let _ = stop_tx.send(true);
        while loops.join_next().await.is_some() {}
        // The workers drain their own connections under the same deadline.
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        if let Some(w) = watcher {
            w.abort();
        }
        let _ = admin_stop_tx.send(true);
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        let _ = engine.await;
        let _ = sampler.await;
        Ok(())
    }
}

/// Bind `addr` once, or `workers` times with `SO_REUSEPORT` for per-core workers (port 0 is
/// resolved by the first socket and shared by the rest).
async fn bind_listener(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<TcpListener>> {
    if workers <= 1 {
        return Ok(vec![TcpListener::bind(addr).await?]);
    }
    let mut sockets = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        addr = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}

/// One per-core worker: a single-threaded runtime on this thread serving its own sockets
/// until the drain, reusing only upstream connections it opened itself.
fn run_worker(
    i: usize,
    sockets: Vec<(std::net::TcpListener, Option<Arc<TlsListener>>)>,
    state: Arc<State>,
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = i, error = %e, "cannot start a worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let mut loops = JoinSet::new();
        for (socket, tls) in sockets {
            match TcpListener::from_std(socket) {
                Ok(l) => {
                    loops.spawn(accept_loop(
                        l,
                        i,
                        tls,
                        state.clone(),
                        limits.clone(),
                        stop.clone(),
                    ));
                }
                Err(e) => tracing::error!(worker = i, error = %e, "cannot register a listener"),
            }
        }
        while loops.join_next().await.is_some() {}
    });
}

async fn accept_loop(
    listener: TcpListener,
    worker: usize,
    tls: Option<Arc<TlsListener>>,
    state: Arc<State>,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    // hyper's HTTP/1 server, for the messages our own loop hands over.
    // No `max_headers`: hyper's default is the same 100 fields (431 beyond), and setting it
    // makes hyper initialise a heap array of that size for every request it parses (3.5 % of
    // all instructions per request, measured with callgrind).
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // A strict head limit (hyper's `max_buf_size` is not one: a read may fill the buffer's
    // spare capacity past it, so whether a head just over it is refused depends on how the
    // reads fell).
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(H1_MAX_BUF)
        .max_header_size(H1_MAX_BUF);
    // HTTP/2 by ALPN or with prior knowledge: our own server (`h2`).
    let h2 = h2::builder(
        H2_MAX_CONCURRENT_STREAMS,
        H2_MAX_PENDING_RESET_STREAMS,
        H2_MAX_HEADER_LIST_SIZE,
    );
    // Every connection task is counted here: the drain waits for them, and what is left after
    // the drain timeout is aborted.
    let conns = tasks::Tasks::new();
    // Idle plain HTTP/1 connections wait here between requests, with no task of their own.
    let (mut lot, to_lot) = park::Lot::new(state.metrics.clone(), limits.idle_timeout);
    let ctx = Arc::new(ConnCtx {
        http1,
        h2,
        tls,
        state,
        limits,
        worker,
        to_lot,
    });
    // Connections watch their own receiver; this one's `changed()` waits across iterations.
    let drain = stop.clone();
    let mut stopped = std::pin::pin!(stop.changed());
    // A place under the connection cap, taken before accepting; at the cap, the wait for one.
    let mut slot = None;
    let mut waiting: Option<Pin<Box<SlotWait>>> = None;
    // One poll over everything the loop waits on, with the waits kept across iterations:
    // a `select!` built each iteration made and dropped a future per branch (the drain's
    // waiter, the lot's waiter and timers, the semaphore's acquire) for every accepted
    // connection, ~9.6k instructions per accept (callgrind, a new connection per request).
    loop {
        let next = std::future::poll_fn(|cx| {
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Accepted::Stop);
            }
            if let Poll::Ready(p) = lot.poll_next(cx) {
                return Poll::Ready(Accepted::Resumed(p));
            }
            if slot.is_none() {
                // At the cap, stop accepting: new clients wait in the kernel's backlog,
                // nothing breaks.
                let wait = match &mut waiting {
                    Some(wait) => wait.as_mut().poll(cx),
                    None => match ctx.limits.slots.clone().try_acquire_owned() {
                        Ok(s) => Poll::Ready(Ok(s)),
                        Err(TryAcquireError::Closed) => return Poll::Ready(Accepted::Stop),
                        Err(TryAcquireError::NoPermits) => {
                            let mut wait = Box::pin(ctx.limits.slots.clone().acquire_owned());
                            let polled = wait.as_mut().poll(cx);
                            waiting = Some(wait);
                            polled
                        }
                    },
                };
                match wait {
                    Poll::Ready(Ok(s)) => {
                        waiting = None;
                        slot = Some(s);
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Accepted::Stop),
                    Poll::Pending => return Poll::Pending,
                }
            }
            listener.poll_accept(cx).map(Accepted::New)
        })
        .await;
        let (stream, peer, permit, resumed) = match next {
            Accepted::Stop => break,
            Accepted::Resumed(p) => {
                // The peer's address is read again rather than kept by every parked socket.
                let Ok(peer) = p.stream.peer_addr() else {
                    continue;
                };
                // Back into tokio's driver for its connection task.
                let stream = match tokio::net::TcpStream::from_std(p.stream) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, %peer, "cannot resume a parked connection");
                        continue;
                    }
                };
                (stream, peer, p.slot, true)
            }
            Accepted::New(Ok((stream, peer))) => {
                // TLS writes its handshake in parts; plain connections turn Nagle's
                // algorithm off at their second write (`h1::Nagle`).
                if ctx.tls.is_some() {
                    let _ = stream.set_nodelay(true);
                }
                (stream, peer, slot.take().expect("a slot"), false)
            }
            Accepted::New(Err(e)) => {
                // EMFILE and friends: back off instead of spinning, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        conns.spawn(serve_connection(
            ctx.clone(),
            stream,
            peer,
            permit,
            resumed,
            drain.clone(),
        ));
    }
    // Parked connections are idle between requests: closing them cuts nothing.
    drop(lot);
    drop(listener);
    let drained = tokio::time::timeout(ctx.limits.drain_timeout, async {
        conns.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "drain timeout reached; closing remaining connections"
        );
        conns.shutdown().await;
    }
}

/// What the accept loop's wait ended with.
enum Accepted {
    /// The server stops (or the connection cap's semaphore closed).
    Stop,
    /// A parked connection's next request (or its peer's close) arrived.
    Resumed(park::Parked),
    /// `accept` returned.
    New(std::io::Result<(tokio::net::TcpStream, SocketAddr)>),
}

/// The wait for a place under the connection cap.
type SlotWait = dyn Future<Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>>
    + Send;

/// What every connection of one accept loop shares.
struct ConnCtx {
    /// HTTP/1 connections from the first message our own loop does not serve.
    http1: hyper::server::conn::http1::Builder,
    /// HTTP/2 by ALPN, or with prior knowledge (the preface, without ALPN).
    h2: ::h2::server::Builder,
    /// Asked for an acceptor per connection: certificates reload.
    tls: Option<Arc<TlsListener>>,
    state: Arc<State>,
    limits: ConnLimits,
    worker: usize,
    to_lot: park::ToLot,
}

/// One connection's task: a new one, or a parked one whose next request has arrived
/// (`resumed`). It serves until hyper's connection ends; a plain HTTP/1 connection released
/// while idle then goes to the parking lot, and the task ends.
async fn serve_connection(
    ctx: Arc<ConnCtx>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
    resumed: bool,
    mut drain: watch::Receiver<bool>,
) {
    let metrics = &ctx.state.metrics;
    let _open = GaugeGuard::new(&metrics.open_connections);
    let acceptor = ctx.tls.as_ref().map(|t| t.acceptor());
    let proto = if acceptor.is_some() { "https" } else { "http" };
    let conn_info = ConnInfo::new(peer, proto, ctx.worker);
    let idle = ctx.limits.idle_timeout;
    // What hyper's connection is doing, made at the handoff: a connection our own loop serves
    // to its end never needs it (one allocation per connection less).
    let activity;
    // A plain connection's socket, kept here while hyper's connection may release it
    // between requests (see `h1guard::IdleGate`).
    let mut plain = None;
    let io = match acceptor {
        None => {
            // Our own loop reads the first request (its header timeout starts now: a client
            // that never sends a byte is closed, and counted, as a header timeout) and serves
            // the common requests; hyper gets the connection at the first it does not (with
            // what was read of it), our HTTP/2 server if it starts with the preface. Boxed:
            // the loop holds a request's future, which would otherwise size every
            // connection's task.
            let mut stream = stream;
            let own = h1::serve(h1::Conn {
                stream: &mut stream,
                // Written to already if parked (its Nagle state is not kept: turned off again
                // at its next write, if it was).
                nagle: if resumed {
                    h1::Nagle::Written
                } else {
                    h1::Nagle::Unwritten
                },
                // A parked connection spoke HTTP/1 already.
                preface: !resumed,
                state: &ctx.state,
                info: &conn_info,
                header_timeout: ctx.limits.header_timeout,
                idle,
                linger: Some(LINGER),
                drain: &mut drain,
            });
            let before = match Box::pin(own).await {
                h1::Ended::Closed => return,
                h1::Ended::HeaderTimeout => {
                    tracing::debug!(%peer, "request head not complete in time; closing");
                    metrics.downstream_error(DownstreamErrorKind::HeaderTimeout);
                    return;
                }
                h1::Ended::Idle(deadline) => {
                    park(&ctx, stream, slot, deadline, &drain);
                    return;
                }
                h1::Ended::Handoff(read) => read,
                h1::Ended::Preface(read) => {
                    let _ = stream.set_nodelay(true);
                    let io = Io::Plain(Arc::new(stream), read);
                    return Box::pin(serve_h2(&ctx, io, conn_info, drain)).await;
                }
            };
            // hyper writes as it pleases.
            let _ = stream.set_nodelay(true);
            let stream = Arc::new(stream);
            plain = Some(stream.clone());
            activity = Arc::new(ConnActivity::default());
            Guarded::new(Io::Plain(stream, before)).with_gate(activity.clone())
        }
        // Boxed: inline, the handshake's state (rustls' connection) would size every
        // connection's task.
        Some(acceptor) => {
            let shake = handshake(acceptor, stream, peer, ctx.limits.header_timeout, metrics);
            let Some((mut tls, alpn)) = Box::pin(shake).await else {
                return;
            };
            if alpn == Alpn::H2 {
                let io = Io::Tls(tls, bytes::Bytes::new());
                return Box::pin(serve_h2(&ctx, io, conn_info, drain)).await;
            }
            // HTTP/1.1, agreed by ALPN or not: our own loop serves it, as on a plain
            // connection (it is not parked: rustls keeps its session). Without ALPN a client
            // may speak HTTP/2 with prior knowledge: the loop looks for the preface then.
            let own = h1::serve(h1::Conn {
                stream: &mut *tls,
                // Turned off before the handshake.
                nagle: h1::Nagle::Off,
                preface: alpn == Alpn::None,
                state: &ctx.state,
                info: &conn_info,
                header_timeout: ctx.limits.header_timeout,
                idle,
                linger: None,
                drain: &mut drain,
            });
            let before = match Box::pin(own).await {
                h1::Ended::Closed | h1::Ended::Idle(_) => return,
                h1::Ended::HeaderTimeout => {
                    tracing::debug!(%peer, "request head not complete in time; closing");
                    metrics.downstream_error(DownstreamErrorKind::HeaderTimeout);
                    return;
                }
                h1::Ended::Preface(read) => {
                    let io = Io::Tls(tls, read);
                    return Box::pin(serve_h2(&ctx, io, conn_info, drain)).await;
                }
                h1::Ended::Handoff(read) => read,
            };
            activity = Arc::new(ConnActivity::default());
            Guarded::new(Io::Tls(tls, before))
        }
    };
    let (st, act) = (ctx.state.clone(), activity.clone());
    // Not boxed for HTTP/1: hyper keeps a slot of this future's size (about 3.6 KiB) per
    // connection, which a parked connection gives back with the rest of hyper's connection,
    // while boxing it would cost every request an allocation (+500 instructions per
    // request, callgrind).
    // A combinator, not an `async` block: that kept its own copy of the request head.
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let guard = RequestGuard::start(act.clone());
        proxy::handle(
            st.clone(),
            conn_info.clone(),
            req.map(proxy::Inbound::Hyper),
        )
        .map(move |resp| Ok::<_, Infallible>(guard.responded(resp)))
    });
    let linger = plain.as_ref().map(|_| LINGER);
    // Straight to hyper's HTTP/1 connection, not hyper-util's auto builder: that would first
    // read the start of the stream to look for HTTP/2's preface and give it back through a
    // rewinding reader, so hyper's first read got those bytes alone and its next read grew
    // the buffer it had just made (a realloc copying 8 KiB): ~9k instructions per new
    // connection, and per parked connection resumed (callgrind, a new connection per
    // request). Our own loop has looked for the preface already.
    let conn = Box::pin(
        ctx.http1
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades(),
    );
    let served = drive(conn, activity.clone(), idle, linger, drain.clone());
    if let Err(e) = Box::pin(served).await {
        tracing::debug!(error = %e, %peer, "connection ended with error");
        if let Some(kind) = connection_fault(&e) {
            metrics.downstream_error(kind);
        }
        return;
    }
    // Released between requests (idle past the linger, nothing in flight or unread): park.
    let Some(stream) = plain.filter(|_| activity.take_released()) else {
        return;
    };
    if let (Some(deadline), Ok(stream)) = (activity.idle_deadline(idle), Arc::try_unwrap(stream)) {
        park(&ctx, stream, slot, deadline, &drain);
    }
}

/// Serve an HTTP/2 connection to its end with our own server (`h2`), under `drive`'s idle
/// timeout, drain and premature-reset rules.
async fn serve_h2(ctx: &ConnCtx, io: Io, info: ConnInfo, drain: watch::Receiver<bool>) {
    let peer = info.peer;
    let activity = Arc::new(ConnActivity::default());
    let state = ctx.state.clone();
    let conn = h2::Conn::new(&ctx.h2, io, activity.clone(), move |req| {
        proxy::handle(state.clone(), info.clone(), req)
    });
    if let Err(e) = drive(conn, activity, ctx.limits.idle_timeout, None, drain).await {
        tracing::debug!(error = %e, %peer, "HTTP/2 connection ended with error");
    }
}

/// Hand an idle plain connection to the parking lot, to be served again when its next
/// request arrives (or closed at `deadline`). Closed instead while the server drains.
fn park(
    ctx: &ConnCtx,
    stream: tokio::net::TcpStream,
    slot: tokio::sync::OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
    drain: &watch::Receiver<bool>,
) {
    if *drain.borrow() {
        return;
    }
    // Out of tokio's driver: the lot watches it in an epoll set of its own.
    let Ok(stream) = stream.into_std() else {
        return;
    };
    // Fails only when the lot is gone (the drain): the socket closes, between requests.
    let _ = ctx.to_lot.send(park::Parked {
        stream,
        slot,
        deadline,
    });
}

/// The client's fault behind a connection that hyper ended with an error before any request
/// was routed: a head that did not arrive within `header_timeout` (hyper answered 408), or one
/// that does not parse (400, 431; the framing guard's refusals land here too). Other endings
/// (resets, failed writes) were counted by the request they interrupted, if any.
fn connection_fault(e: &(dyn std::error::Error + 'static)) -> Option<DownstreamErrorKind> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_timeout() {
        Some(DownstreamErrorKind::HeaderTimeout)
    } else if e.is_parse() || e.is_parse_too_large() {
        Some(DownstreamErrorKind::BadFraming)
    } else {
        None
    }
}

/// Run one connection to its end. Three things close it early: the server draining (HTTP/1
/// finishes the response in progress and closes, HTTP/2 sends GOAWAY and finishes its
/// streams), nothing in flight for `idle` (the same graceful close), and a premature-reset
/// flood (dropped at once).
async fn drive<C, E>(
    conn: C,
    activity: Arc<ConnActivity>,
    idle: Duration,
    linger: Option<Duration>,
    mut drain: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>> + GracefulShutdown,
{
    use std::task::{Context, Poll};
    let mut conn = std::pin::pin!(conn);
    let mut closing = *drain.borrow();
    if closing {
        conn.as_mut().shutdown_gracefully();
    }
    let mut drained = std::pin::pin!(drain.changed());
    let mut idle_timer = std::pin::pin!(tokio::time::sleep(idle));
    // Idle this long, a plain HTTP/1 connection gives hyper's buffers back (it is released
    // at its next wait for a request, and parked). Re-armed lazily, like `idle_timer`: a
    // busy connection costs one timer event per `linger`, not one per request.
    let mut linger_timer = std::pin::pin!(tokio::time::sleep(linger.unwrap_or(idle)));
    let mut flood = std::pin::pin!(activity.flood.notified());
    // Closing because idle: the peer gets `idle` again to finish the goodbye (an HTTP/2
    // client that never acknowledges the GOAWAY ping would otherwise keep it open).
    let mut idle_closing = false;
    // The side futures (drain, idle timer, flood) get a waker of their own that marks them
    // due, so the many wake-ups that are only the connection's (every request) poll just
    // the connection: a `select!` here polled all four each time, ~2 % of a request.
    let side = Arc::new(SideWake::default());
    // Due at first, so the first poll registers every side future.
    side.due.store(true, Ordering::Release);
    let side_waker = std::task::Waker::from(side.clone());
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if !side.due.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            side.set_task(cx.waker());
            let mut scx = Context::from_waker(&side_waker);
            if flood.as_mut().poll(&mut scx).is_ready() {
                tracing::warn!(
                    streams = activity.streams.load(Ordering::Relaxed),
                    reset = activity.premature.load(Ordering::Relaxed),
                    "closing connection: most of its streams were reset before a response (rapid reset)"
                );
                return Poll::Ready(Ok(()));
            }
            let mut acted = false;
            if !closing && drained.as_mut().poll(&mut scx).is_ready() {
                closing = true;
                acted = true;
                conn.as_mut().shutdown_gracefully();
            }
            if (!closing || idle_closing) && idle_timer.as_mut().poll(&mut scx).is_ready() {
                if idle_closing {
                    tracing::debug!("idle connection did not close in time; dropping it");
                    return Poll::Ready(Ok(()));
                }
                acted = true;
                match activity.idle_deadline(idle) {
                    None => {
                        closing = true;
                        idle_closing = true;
                        conn.as_mut().shutdown_gracefully();
                        idle_timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + idle);
                    }
                    Some(at) => idle_timer.as_mut().reset(at),
                }
            }
            if let Some(linger) = linger
                && !closing
                && linger_timer.as_mut().poll(&mut scx).is_ready()
            {
                acted = true;
                let now = tokio::time::Instant::now();
                let at = if activity.never_parks.load(Ordering::Relaxed) {
                    // HTTP/2, an upgrade, framing the guard does not follow: this connection
                    // never parks. Far enough that the idle timeout or the drain comes first.
                    now + idle + idle
                } else {
                    match activity.idle_deadline(linger) {
                        None => {
                            activity.release.store(true, Ordering::Relaxed);
                            now + linger
                        }
                        Some(at) => at,
                    }
                };
                linger_timer.as_mut().reset(at);
            }
            if !acted {
                return Poll::Pending;
            }
            // Something changed: poll the connection again and re-arm what was reset.
            side.due.store(true, Ordering::Release);
        }
    })
    .await
}

/// Waker of `drive`'s side futures: marks them due and wakes the connection's task.
#[derive(Default)]
struct SideWake {
    due: std::sync::atomic::AtomicBool,
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl SideWake {
    fn set_task(&self, w: &std::task::Waker) {
        let mut t = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !t.as_ref().is_some_and(|old| old.will_wake(w)) {
            *t = Some(w.clone());
        }
    }
}

impl std::task::Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }
}

/// `graceful_shutdown` of hyper's connection types, behind one name so `drive` is generic.
trait GracefulShutdown {
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<S, B> GracefulShutdown
    for hyper::server::conn::http1::UpgradeableConnection<TokioIo<Guarded<Io>>, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// What a TLS client and canaryd agreed on by ALPN.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Alpn {
    H2,
    Http1,
    /// No ALPN: either, and a client may speak HTTP/2 with prior knowledge.
    None,
}

/// The TLS handshake, with the same allowance as request headers; `None` when it failed.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    metrics: &crate::metrics::Metrics,
) -> Option<(
    Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    Alpn,
)> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let alpn = match s.get_ref().1.alpn_protocol() {
                Some(b"h2") => Alpn::H2,
                Some(b"http/1.1") => Alpn::Http1,
                _ => Alpn::None,
            };
            Some((Box::new(s), alpn))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            metrics.downstream_error(DownstreamErrorKind::HeaderTimeout);
            None
        }
    }
}

impl<T: GracefulShutdown + ?Sized> GracefulShutdown for std::pin::Pin<Box<T>> {
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>) {
        self.get_mut().as_mut().shutdown_gracefully();
    }
}

/// How long a plain HTTP/1 keep-alive connection waits for its next request with hyper's
/// buffers (8 KiB read + 8 KiB write) before giving them back and parking on the socket
/// alone. A busy connection's next request comes sooner, so it never pays for the recycle;
/// an idle one costs about 1 KiB instead of about 24 KiB.
const LINGER: Duration = Duration::from_millis(50);

/// Streams a connection must have opened before the premature-reset rule looks at it.
const PREMATURE_RESET_MIN_STREAMS: u32 = 100;

/// What one downstream connection is doing, for the idle timeout and the premature-reset
/// limit. Updated by each request's [`RequestGuard`]: a few relaxed atomics on a line only
/// this connection touches.
#[derive(Default)]
struct ConnActivity {
    in_flight: AtomicU32,
    /// [`Instant`] offset (ms since `born`) of the last request start or finish.
    last_ms: AtomicU64,
    born: std::sync::OnceLock<Instant>,
    /// Requests (HTTP/2 streams) started, and those dropped before we had a response:
    /// the client reset them (or, on HTTP/1, went away).
    streams: AtomicU32,
    premature: AtomicU32,
    flood: tokio::sync::Notify,
    /// Idle past the linger: the next wait for a request with nothing to read ends hyper's
    /// connection (plain HTTP/1 only).
    release: std::sync::atomic::AtomicBool,
    /// hyper's connection ended that way: the socket stays open, parked.
    released: std::sync::atomic::AtomicBool,
    /// The stream stopped being HTTP/1 requests the guard follows: it never parks.
    never_parks: std::sync::atomic::AtomicBool,
}

impl ConnActivity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether hyper's connection was released (and the socket must be parked); resets both
    /// flags for the next one.
    fn take_released(&self) -> bool {
        self.release.store(false, Ordering::Relaxed);
        self.released.swap(false, Ordering::Relaxed)
    }

    /// `None` when the connection has been idle for `idle`; otherwise when to look again.
    fn idle_deadline(&self, idle: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Some(now + idle);
        }
        let since = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        );
        (since < idle).then(|| now + (idle - since))
    }
}

impl h1guard::IdleGate for ConnActivity {
    fn release_now(&self) -> bool {
        let now =
            self.release.load(Ordering::Relaxed) && self.in_flight.load(Ordering::Relaxed) == 0;
        if now {
            self.released.store(true, Ordering::Relaxed);
        }
        now
    }

    fn released(&self) -> bool {
        self.released.load(Ordering::Relaxed)
    }

    fn active(&self) {
        if self.release.load(Ordering::Relaxed) {
            self.release.store(false, Ordering::Relaxed);
        }
    }

    fn never(&self) {
        self.never_parks.store(true, Ordering::Relaxed);
    }
}

/// One request on a connection: counted in flight until dropped; dropped before
/// [`RequestGuard::responded`] means the client reset it first.
struct RequestGuard {
    activity: Arc<ConnActivity>,
    responded: bool,
}

impl RequestGuard {
    fn start(activity: Arc<ConnActivity>) -> RequestGuard {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.streams.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        RequestGuard {
            activity,
            responded: false,
        }
    }

    /// The response is there: the request stays in flight until its body has been sent
    /// (the body carries the guard), so neither the idle timeout nor a release between
    /// requests can fall in the middle of a streaming answer.
    fn responded(mut self, resp: http::Response<proxy::body::ProxyBody>) -> http::Response<Answer> {
        self.responded = true;
        resp.map(|body| Answer { body, _guard: self })
    }
}

/// A response body with its request's [`RequestGuard`], dropped with it.
struct Answer {
    body: proxy::body::ProxyBody,
    _guard: RequestGuard,
}

impl hyper::body::Body for Answer {
    type Data = <proxy::body::ProxyBody as hyper::body::Body>::Data;
    type Error = <proxy::body::ProxyBody as hyper::body::Body>::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.activity;
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
        a.touch();
        if !self.responded {
            // Envoy's rule: once enough streams were opened, a connection whose streams are
            // mostly reset before the response is attacking (CVE-2023-44487 with paced
            // resets, which h2's burst limit does not see). Each reset costs us an upstream
            // request, so the connection goes.
            let premature = a.premature.fetch_add(1, Ordering::Relaxed) + 1;
            let streams = a.streams.load(Ordering::Relaxed);
            if streams >= PREMATURE_RESET_MIN_STREAMS && premature * 2 > streams {
                a.flood.notify_one();
            }
        }
    }
}

/// A downstream connection's byte stream: plain TCP or TLS, one type so every connection
/// is served by the same code.
enum Io {
    /// Shared with the connection's task, which keeps the socket while hyper's connection is
    /// released between requests. Read and written through readiness and `try_*` calls,
    /// which take `&TcpStream`. With the bytes our own HTTP/1 loop read before it handed the
    /// connection to hyper: they are read first.
    Plain(Arc<tokio::net::TcpStream>, bytes::Bytes),
    /// With the bytes our own HTTP/1 loop read, as for `Plain`.
    Tls(
        Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        bytes::Bytes,
    ),
}

/// One operation on a shared plain socket: wait until it is ready, then try it. A
/// `WouldBlock` means the readiness was stale (the `try_*` call cleared it): wait again.
fn when_ready<T>(
    cx: &mut std::task::Context<'_>,
    mut ready: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>>,
    mut op: impl FnMut() -> std::io::Result<T>,
) -> std::task::Poll<std::io::Result<T>> {
    loop {
        std::task::ready!(ready(cx))?;
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            r => return std::task::Poll::Ready(r),
        }
    }
}

/// Write some of `bufs` to a plain socket: `send` for one buffer (a head with a small body
/// copied behind it, the common answer), `sendmsg` for more; not `writev`, whose way through
/// the file layer (position lock, `rw_verify_area`, the iterator set-up) cost 400–500 ns of
/// kernel time per response, of which `send` gives back ~150–250 (perf, keep-alive;
/// docs/performance.md). Our HTTP/1 loop and hyper's connections after a handoff both write
/// through it.
fn poll_send(
    s: &tokio::net::TcpStream,
    cx: &mut std::task::Context<'_>,
    bufs: &[std::io::IoSlice<'_>],
) -> std::task::Poll<std::io::Result<usize>> {
    if let [one] = bufs {
        return when_ready(cx, |cx| s.poll_write_ready(cx), || s.try_write(one));
    }
    when_ready(
        cx,
        |cx| s.poll_write_ready(cx),
        || {
            s.try_io(tokio::io::Interest::WRITABLE, || {
                socket2::SockRef::from(s).send_vectored(bufs)
            })
        },
    )
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(_, before) | Io::Tls(_, before) if !before.is_empty() => {
                let n = before.len().min(buf.remaining());
                buf.put_slice(&before.split_to(n));
                std::task::Poll::Ready(Ok(()))
            }
            Io::Plain(s, _) => when_ready(
                cx,
                |cx| s.poll_read_ready(cx),
                || s.try_read_buf(buf).map(drop),
            ),
            Io::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s, _) => when_ready(cx, |cx| s.poll_write_ready(cx), || s.try_write(buf)),
            Io::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s, _) => poll_send(s, cx, bufs),
            Io::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(..) => true,
            Io::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(..) => std::task::Poll::Ready(Ok(())),
            Io::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s, _) => std::task::Poll::Ready(
                socket2::SockRef::from(s.as_ref()).shutdown(std::net::Shutdown::Write),
            ),
            Io::Tls(s, _) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
